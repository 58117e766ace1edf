//! The configuration of `foundation node`: one `[node]` table, layered file < environment
//! < command-line flags through [`foundation_core::config`](crate::core::config).
//!
//! ```toml
//! [node]
//! name = "n1"                       # required: unique in the cluster
//! cluster = "demo"                  # peers of another cluster are refused
//! listen = "127.0.0.1:7101"         # cluster traffic
//! seeds = ["127.0.0.1:7102"]        # any members to join through (empty: first node)
//! topology = "full_mesh"            # full_mesh | client_server | static | hyparview
//! servers_per_client = 2            # client_server only
//! role = "peer"                     # peer | server | client
//! metrics = "127.0.0.1:9101"        # /metrics, /health, /ready ("off" to disable)
//! security = "secret"               # secret | tls | insecure-plaintext
//! secret_file = "cluster.secret"    # secret: or FOUNDATION_CLUSTER_SECRET; relative to this file
//! # security = "tls" takes:  ca = "certs/ca.pem"  cert = "certs/n1.pem"  key = "certs/n1.key"
//! workers = 4                       # workers of the hosted `echo` ecosystem
//! ```
//!
//! Every key can also come from the environment as `FOUNDATION_NODE__<KEY>`
//! (`FOUNDATION_NODE__LISTEN=127.0.0.1:7201`), and from the command line (`--listen`),
//! which wins. Unknown keys and tables are errors (a typo must not be silently ignored),
//! and every error names the source — the file (with the line where known), the variable
//! or the flag — and the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::config::{Config, Layer, Namespace};
use crate::distributed::topology::{Role, TopologyKind};

/// The node's settings, after layering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Address for cluster traffic.
    pub listen: String,
    /// Address announced to peers, when it differs from `listen`.
    pub advertise: Option<String>,
    /// Members to join through.
    pub seeds: Vec<String>,
    /// Topology.
    pub topology: TopologyKind,
    /// Role in the topology.
    pub role: Role,
    /// Address of the HTTP endpoint (`/metrics`, `/health`, `/ready`); `None`: off.
    pub metrics: Option<SocketAddr>,
    /// How links are protected.
    pub security: SecurityMode,
    /// File holding the cluster secret (else `FOUNDATION_CLUSTER_SECRET`).
    pub secret_file: Option<PathBuf>,
    /// TLS: the cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// TLS: this node's certificate.
    pub cert: Option<PathBuf>,
    /// TLS: this node's private key.
    pub key: Option<PathBuf>,
    /// Workers of the hosted `echo` ecosystem.
    pub workers: usize,
}

/// How the node's links are authenticated and protected (see the transport's `Security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    /// A shared cluster secret: mutual proof, then AEAD-encrypted frames.
    Secret,
    /// TLS 1.3 with mutual certificates from a cluster CA (`ca`, `cert`, `key`).
    Tls,
    /// No authentication, no encryption: only for a trusted loopback.
    InsecurePlaintext,
}

/// Values given on the command line; `None` / empty leaves the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--seed` (repeatable; replaces the configured list when given).
    pub seeds: Vec<String>,
    /// `--topology`.
    pub topology: Option<String>,
    /// `--role`.
    pub role: Option<String>,
    /// `--metrics` (an address or `off`).
    pub metrics: Option<String>,
    /// `--secret-file`.
    pub secret_file: Option<PathBuf>,
    /// `--security`.
    pub security: Option<String>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--cert`.
    pub cert: Option<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--workers`.
    pub workers: Option<usize>,
}

/// A configuration problem: where it comes from and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct ConfigError {
    /// The source: `file node.toml`, `file node.toml line 3`, `env FOUNDATION_NODE__LISTEN`,
    /// `flag --listen`, or `configuration` when several layers are involved.
    pub source_name: String,
    /// What is wrong, naming the key.
    pub problem: String,
}

const KEYS: [&str; 15] = [
    "name",
    "cluster",
    "listen",
    "advertise",
    "seeds",
    "topology",
    "servers_per_client",
    "role",
    "metrics",
    "security",
    "secret_file",
    "ca",
    "cert",
    "key",
    "workers",
];

const ENV_PREFIX: &str = "FOUNDATION_NODE__";

fn flag_of(key: &str) -> String {
    match key {
        "seeds" => "--seed".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// Where the current value of `key` came from, for error messages.
async fn origin(ns: &Namespace, key: &str, file: Option<&Path>) -> String {
    let layer = ns
        .history(key)
        .await
        .ok()
        .and_then(|h| h.last().map(|e| e.layer));
    match layer {
        Some(Layer::File) => match file {
            Some(f) => format!("file {}", f.display()),
            None => "file".into(),
        },
        Some(Layer::Env) => format!("env {ENV_PREFIX}{}", key.to_ascii_uppercase()),
        Some(Layer::Runtime) => format!("flag {}", flag_of(key)),
        Some(Layer::Default) | None => "default".into(),
    }
}

/// Loads the configuration: defaults, then `file` (if any), then the `FOUNDATION_NODE__*`
/// variables of `env`, then `overrides`. Any problem is one [`ConfigError`] naming its
/// source and key; nothing is partially applied (the result is all or nothing).
pub async fn load<I>(
    file: Option<&Path>,
    env: I,
    overrides: &Overrides,
) -> Result<NodeConfig, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let internal = |e: crate::core::Error| ConfigError {
        source_name: "configuration".into(),
        problem: e.to_string(),
    };
    let config = Config::new();
    let ns = config.create_namespace("node").map_err(internal)?;
    ns.set_default("cluster", "foundation")
        .await
        .map_err(internal)?;
    ns.set_default("listen", "127.0.0.1:7100")
        .await
        .map_err(internal)?;
    ns.set_default("topology", "full_mesh")
        .await
        .map_err(internal)?;
    ns.set_default("servers_per_client", &2u32)
        .await
        .map_err(internal)?;
    ns.set_default("role", "peer").await.map_err(internal)?;
    ns.set_default("metrics", "127.0.0.1:9464")
        .await
        .map_err(internal)?;
    ns.set_default("workers", &4u32).await.map_err(internal)?;
    ns.set_default("security", "secret")
        .await
        .map_err(internal)?;

    if let Some(path) = file {
        let display = format!("file {}", path.display());
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ConfigError {
                source_name: display.clone(),
                problem: format!("cannot read it: {e}"),
            })?;
        config
            .load_toml_str(&display, &text)
            .await
            .map_err(|e| match e {
                crate::core::Error::Source {
                    source_name,
                    key,
                    line,
                    reason,
                } => ConfigError {
                    source_name: match line {
                        Some(l) => format!("{source_name} line {l}"),
                        None => source_name,
                    },
                    problem: match key {
                        Some(k) => format!("key `{k}`: {reason}"),
                        None => format!("malformed TOML: {reason}"),
                    },
                },
                other => ConfigError {
                    source_name: display.clone(),
                    problem: other.to_string(),
                },
            })?;
        let extra: Vec<String> = config
            .namespaces()
            .into_iter()
            .filter(|n| n != "node")
            .collect();
        if !extra.is_empty() {
            return Err(ConfigError {
                source_name: display,
                problem: format!(
                    "unknown table(s) [{}]: the node's settings go in [node]",
                    extra.join("], [")
                ),
            });
        }
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    if !env.is_empty() {
        config.load_env_from(env).await.map_err(|e| match e {
            crate::core::Error::Source {
                source_name,
                key,
                reason,
                ..
            } => ConfigError {
                source_name,
                problem: match key {
                    Some(k) => format!("key `{k}`: {reason}"),
                    None => reason,
                },
            },
            other => internal(other),
        })?;
    }
    let known: BTreeSet<&str> = KEYS.into_iter().collect();
    for key in ns.snapshot().keys("") {
        let top = key.split('.').next().unwrap_or(&key);
        if !known.contains(top) {
            let src = origin(&ns, &key, file).await;
            return Err(ConfigError {
                source_name: src,
                problem: format!("unknown key `node.{key}` (known keys: {})", KEYS.join(", ")),
            });
        }
    }

    // Flags: the run-time layer.
    let flag_err = |flag: &str, e: crate::core::Error| ConfigError {
        source_name: format!("flag {flag}"),
        problem: e.to_string(),
    };
    let o = overrides;
    for (key, value) in [
        ("name", &o.name),
        ("cluster", &o.cluster),
        ("listen", &o.listen),
        ("advertise", &o.advertise),
        ("topology", &o.topology),
        ("role", &o.role),
        ("metrics", &o.metrics),
        ("security", &o.security),
    ] {
        if let Some(v) = value {
            ns.set(key, v.as_str())
                .await
                .map_err(|e| flag_err(&flag_of(key), e))?;
        }
    }
    if !o.seeds.is_empty() {
        ns.set("seeds", &o.seeds)
            .await
            .map_err(|e| flag_err("--seed", e))?;
    }
    for (key, value) in [
        ("secret_file", &o.secret_file),
        ("ca", &o.ca),
        ("cert", &o.cert),
        ("key", &o.key),
    ] {
        if let Some(p) = value {
            ns.set(key, &p.to_string_lossy().into_owned())
                .await
                .map_err(|e| flag_err(&flag_of(key), e))?;
        }
    }
    if let Some(w) = o.workers {
        ns.set("workers", &(w as u64))
            .await
            .map_err(|e| flag_err("--workers", e))?;
    }

    let cfg = read(&ns, file).await;
    config.shutdown().await;
    cfg
}

async fn read(ns: &Namespace, file: Option<&Path>) -> Result<NodeConfig, ConfigError> {
    async fn bad(ns: &Namespace, file: Option<&Path>, key: &str, problem: String) -> ConfigError {
        ConfigError {
            source_name: origin(ns, key, file).await,
            problem: format!("key `node.{key}`: {problem}"),
        }
    }
    macro_rules! get {
        ($key:expr, $ty:ty, $what:expr) => {
            match ns.get::<$ty>($key) {
                Ok(v) => Some(v),
                Err(crate::core::Error::KeyNotFound { .. }) => None,
                Err(_) => return Err(bad(ns, file, $key, format!("expected {}", $what)).await),
            }
        };
    }
    let name = get!("name", String, "a string").unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError {
            source_name: "configuration".into(),
            problem:
                "key `node.name` is required: set `name` in [node], FOUNDATION_NODE__NAME or --name"
                    .into(),
        });
    }
    let cluster = get!("cluster", String, "a string").unwrap_or_default();
    if cluster.is_empty() {
        return Err(bad(ns, file, "cluster", "must not be empty".into()).await);
    }
    let listen =
        get!("listen", String, "an address such as \"127.0.0.1:7100\"").unwrap_or_default();
    if listen.parse::<SocketAddr>().is_err() && !listen.contains(':') {
        return Err(bad(ns, file, "listen", format!("`{listen}` is not HOST:PORT")).await);
    }
    let advertise = get!("advertise", String, "a string");
    let seeds = get!(
        "seeds",
        Vec<String>,
        "a list of addresses, e.g. [\"127.0.0.1:7101\"]"
    )
    .unwrap_or_default();
    for s in &seeds {
        if !s.contains(':') {
            return Err(bad(ns, file, "seeds", format!("seed `{s}` is not HOST:PORT")).await);
        }
    }
    let servers_per_client = get!("servers_per_client", u64, "a positive integer").unwrap_or(2);
    let topology = match get!("topology", String, "a string").as_deref() {
        Some("full_mesh") | None => TopologyKind::FullMesh,
        Some("client_server") => {
            if servers_per_client == 0 {
                return Err(bad(ns, file, "servers_per_client", "must be at least 1".into()).await);
            }
            TopologyKind::ClientServer {
                servers_per_client: servers_per_client as usize,
            }
        }
        Some("static") => TopologyKind::Static,
        Some("hyparview") => TopologyKind::hyparview(),
        Some(other) => {
            return Err(bad(
                ns,
                file,
                "topology",
                format!("`{other}` is not one of full_mesh, client_server, static, hyparview"),
            )
            .await)
        }
    };
    let role = match get!("role", String, "a string").as_deref() {
        Some("peer") | None => Role::Peer,
        Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some(other) => {
            return Err(bad(
                ns,
                file,
                "role",
                format!("`{other}` is not one of peer, server, client"),
            )
            .await)
        }
    };
    let metrics = match get!("metrics", String, "an address or \"off\"").as_deref() {
        Some("off") | Some("") | None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                return Err(bad(
                    ns,
                    file,
                    "metrics",
                    format!("`{a}` is not an IP:PORT address ({e})"),
                )
                .await)
            }
        },
    };
    let secret_file = path(ns, file, "secret_file").await?;
    let ca = path(ns, file, "ca").await?;
    let cert = path(ns, file, "cert").await?;
    let key = path(ns, file, "key").await?;
    let security = match get!("security", String, "a string").as_deref() {
        Some("secret") | None => SecurityMode::Secret,
        Some("tls") => {
            for (k, v) in [("ca", &ca), ("cert", &cert), ("key", &key)] {
                if v.is_none() {
                    return Err(bad(
                        ns,
                        file,
                        "security",
                        format!("`tls` needs `{k}` too (the cluster CA, this node's certificate and key; `foundation gen-certs` makes them)"),
                    )
                    .await);
                }
            }
            SecurityMode::Tls
        }
        Some("insecure-plaintext") => SecurityMode::InsecurePlaintext,
        Some(other) => {
            return Err(bad(
                ns,
                file,
                "security",
                format!("`{other}` is not one of secret, tls, insecure-plaintext"),
            )
            .await)
        }
    };
    let workers = get!("workers", u64, "a positive integer").unwrap_or(4);
    if workers == 0 || workers > 4096 {
        return Err(bad(
            ns,
            file,
            "workers",
            format!("{workers} is outside 1..=4096"),
        )
        .await);
    }
    Ok(NodeConfig {
        name,
        cluster,
        listen,
        advertise,
        seeds,
        topology,
        role,
        metrics,
        security,
        secret_file,
        ca,
        cert,
        key,
        workers: workers as usize,
    })
}

/// A path setting; a relative path given in the file is relative to the file.
async fn path(
    ns: &Namespace,
    file: Option<&Path>,
    key: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let value = match ns.get::<String>(key) {
        Ok(v) => v,
        Err(crate::core::Error::KeyNotFound { .. }) => return Ok(None),
        Err(_) => {
            return Err(ConfigError {
                source_name: origin(ns, key, file).await,
                problem: format!("key `node.{key}`: expected a file path"),
            })
        }
    };
    let layer = ns
        .history(key)
        .await
        .ok()
        .and_then(|h| h.last().map(|e| e.layer));
    let p = PathBuf::from(value);
    Ok(Some(
        match (p.is_relative(), file.and_then(Path::parent), layer) {
            (true, Some(dir), Some(Layer::File)) => dir.join(p),
            _ => p,
        },
    ))
}
