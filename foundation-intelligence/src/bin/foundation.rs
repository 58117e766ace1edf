//! `foundation`: run a Foundation node, or try the local demo.
//!
//! ```text
//! foundation demo                                   # a local cluster and a mixed workload
//! foundation node --config node.toml                # one node of a real cluster
//! foundation node --config node.toml --listen 127.0.0.1:7201 --seed 127.0.0.1:7101
//! ```
//!
//! See `foundation --help` and `foundation <command> --help`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use foundation_intelligence::beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_intelligence::beam::{Context, Process, Reply};
use foundation_intelligence::core::telemetry::{Telemetry, TelemetrySettings};
use foundation_intelligence::demo::{self, DemoOptions};
use foundation_intelligence::distributed::node::{Node, NodeSettings};
use foundation_intelligence::distributed::topology::TopologyKind;
use foundation_intelligence::distributed::transport::tls::dev as certs;
use foundation_intelligence::distributed::transport::{
    ClusterSecret, Security, TcpTransport, TlsSettings, Transport, TransportSettings,
};
use foundation_intelligence::http::{Endpoints, HttpServer};
use foundation_intelligence::node_config::{self, NodeConfig, Overrides, SecurityMode};
use foundation_intelligence::observer::Observer;
use tokio_util::sync::CancellationToken;

const ABOUT: &str = "Run Foundation nodes, or try Foundation in one command.";

const LONG_ABOUT: &str = "\
Run Foundation nodes, or try Foundation in one command.

Foundation brings BEAM-style supervised process ecosystems and Partisan-style
distribution (named parallel channels, switchable overlays) to Rust, with an
evidence-driven control layer (hypotheses, predictive scaling, rollouts) on top.

Start with the demo: it needs no set-up and shows everything at work.";

const AFTER_HELP: &str = "\
Examples:
  foundation demo
      3 nodes on loopback for 20 s: urgent, bulk and gossip traffic, injected
      crashes, a hypothesis and two rollouts; Prometheus metrics while it runs.
  foundation demo --nodes 5 --duration 60s --topology client-server
  foundation node --config n1.toml
      one node of a real cluster; see `foundation node --help` for the file.
  RUST_LOG=debug foundation node --config n1.toml --log-json
  foundation gen-secret cluster.secret
  foundation gen-certs --dir certs n1 n2 n3

Every node serves /metrics (Prometheus), /health and /ready over HTTP.";

#[derive(Parser, Debug)]
#[command(name = "foundation", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// Log filter, in RUST_LOG syntax (`info`, `foundation_distributed=debug,warn`).
    /// Default: `info` for nodes, `warn` for the demo (its summary is the output) with
    /// the distributed layer at `error`.
    #[arg(long, global = true, value_name = "FILTER", env = "RUST_LOG")]
    log: Option<String>,

    /// Write logs as JSON lines (one object per event) instead of text.
    #[arg(long, global = true)]
    log_json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster on loopback and show Foundation at work (no set-up needed).
    #[command(long_about = "\
Start a local cluster on loopback and show Foundation at work.

Runs N real nodes (TCP on 127.0.0.1, authenticated with a fresh secret) in this
process, each hosting a supervised ecosystem, and a mixed workload: urgent
coordination messages and requests, 64 KiB bulk transfers, gossip and
broadcasts, injected worker crashes (restarted by supervisors), a hypothesis
(measured, then committed or reverted) and two rollouts (one healthy, one
faulty by design). Prometheus metrics are served on localhost while it runs;
it ends with a table of throughput and p50/p99 latency per channel.")]
    Demo(DemoArgs),
    /// Run one node of a cluster from a TOML config; flags override the file.
    #[command(long_about = "\
Run one node of a cluster from a TOML config; flags override the file.

Settings are layered: defaults < the file < FOUNDATION_NODE__<KEY> environment
variables < flags. The file has one [node] table:

  [node]
  name = \"n1\"                      # required, unique in the cluster
  cluster = \"demo\"                 # nodes of other clusters are refused
  listen = \"127.0.0.1:7101\"        # cluster traffic
  seeds = [\"127.0.0.1:7102\"]       # members to join through (none: first node)
  topology = \"full_mesh\"           # full_mesh | client_server | static | hyparview
  metrics = \"127.0.0.1:9101\"       # /metrics, /health, /ready (\"off\": none)
  security = \"secret\"              # secret | tls | insecure-plaintext
  secret_file = \"cluster.secret\"   # relative to this file
  # security = \"tls\" takes ca, cert and key files instead

The cluster secret (32+ random bytes as hex, the same on every node; make one
with `foundation gen-secret`) comes from secret_file or the
FOUNDATION_CLUSTER_SECRET environment variable, never from the command line.
TLS material comes from `foundation gen-certs` or any CA that puts the node
name in the certificate. The node hosts an `echo` ecosystem served as `echo`, and
answers `whoami`. It stops cleanly on Ctrl-C or SIGTERM.")]
    Node(Box<NodeArgs>),
    /// Write a new cluster secret file (32 random bytes as 64 hex digits, mode 0600).
    #[command(long_about = "\
Write a new cluster secret file: 32 bytes from the operating system's CSPRNG as
64 hex digits and a newline, mode 0600. An existing file is never overwritten.
Copy the same file to every node and name it in [node] secret_file.")]
    GenSecret {
        /// The file to create.
        #[arg(default_value = "cluster.secret")]
        file: PathBuf,
    },
    /// Create a cluster CA and a certificate for each node (for security = \"tls\").
    #[command(long_about = "\
Create a cluster CA and a certificate for each named node, for security = \"tls\".

Writes DIR/ca.pem and DIR/ca.key (the CA; keep ca.key off the nodes) unless they
exist (then they are reused to issue more node certificates), and DIR/<node>.pem and
DIR/<node>.key for each node (keys mode 0600). Each certificate carries the node name,
which must match the node's `name`. Prints the [node] lines for each node.")]
    GenCerts {
        /// Directory for the files (created if missing).
        #[arg(long, default_value = "certs", value_name = "DIR")]
        dir: PathBuf,
        /// Cluster name (in the CA's common name).
        #[arg(long, default_value = "foundation")]
        cluster: String,
        /// Node names to issue certificates for.
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TopologyArg {
    /// Every node connected to every other.
    #[value(alias = "full_mesh")]
    FullMesh,
    /// Clients connect to servers (n0, and n1 from four nodes on).
    #[value(alias = "client_server")]
    ClientServer,
    /// Only configured neighbours.
    Static,
}

impl TopologyArg {
    fn kind(self) -> TopologyKind {
        match self {
            TopologyArg::FullMesh => TopologyKind::FullMesh,
            TopologyArg::ClientServer => TopologyKind::ClientServer {
                servers_per_client: 2,
            },
            TopologyArg::Static => TopologyKind::Static,
        }
    }
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Nodes to start (2..=32).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How long the workload runs (`20s`, `1m`, `1500ms`, or seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// The topology to start with.
    #[arg(long, value_enum, default_value = "full-mesh")]
    topology: TopologyArg,
    /// Address of the metrics endpoint and observer page (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    metrics: SocketAddr,
    /// Address of the observer page (same server as --metrics; overrides it).
    #[arg(long, value_name = "IP:PORT")]
    observer: Option<SocketAddr>,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// The node's TOML file (optional: environment and flags can give everything).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node name, unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// Cluster name.
    #[arg(long)]
    cluster: Option<String>,
    /// Address for cluster traffic (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address announced to peers, if not the listen address.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// A member to join through (repeat for several; replaces the file's list).
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Topology: full_mesh, client_server or static.
    #[arg(long)]
    topology: Option<String>,
    /// Role: peer, server or client.
    #[arg(long)]
    role: Option<String>,
    /// Address of /metrics, /health and /ready (`off` for none).
    #[arg(long, value_name = "IP:PORT|off")]
    metrics: Option<String>,
    /// Link security: secret, tls or insecure-plaintext.
    #[arg(long, value_name = "MODE")]
    security: Option<String>,
    /// File holding the cluster secret (security = secret).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// The cluster CA certificate (security = tls).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This node's certificate (security = tls).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This node's private key (security = tls).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Workers of the hosted `echo` ecosystem.
    #[arg(long)]
    workers: Option<usize>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 20s, 1m, 1500ms)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Sets up logging; a bad filter is an error.
fn init_logging(filter: &str, json: bool) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log / RUST_LOG `{filter}` is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    r.map_err(|e| format!("cannot set up logging: {e}"))
}

/// SIGINT and SIGTERM, registered when created — before the node announces itself, so a
/// signal sent as soon as it prints its address is not lost to the default action.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
            let int = signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot handle SIGINT: {e}"))?;
            Ok(Signals { term, int })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves when SIGINT or SIGTERM arrives.
    async fn wait(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // The demo's output is its summary; connection churn at shutdown is not news.
        Command::Demo(_) => "warn,foundation_distributed=error",
        Command::Node(_) | Command::GenSecret { .. } | Command::GenCerts { .. } => "info",
    };
    let filter = cli.log.clone().unwrap_or_else(|| default_filter.into());
    if let Err(e) = init_logging(&filter, cli.log_json) {
        eprintln!("foundation: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("foundation: cannot start the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => run_demo(args).await,
            Command::Node(args) => run_node(*args).await,
            Command::GenSecret { file } => gen_secret(&file),
            Command::GenCerts {
                dir,
                cluster,
                nodes,
            } => gen_certs(&dir, &cluster, &nodes),
        }
    });
    // Tasks that ignored their cancellation get a bounded time, then are dropped.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Starts the process-wide recorder (no endpoint of its own: the axum server serves it).
async fn telemetry(labels: &[(&str, &str)]) -> Result<Telemetry, String> {
    let settings = TelemetrySettings {
        listen: None,
        global_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..TelemetrySettings::default()
    };
    let t = Telemetry::start(settings)
        .await
        .map_err(|e| format!("cannot start telemetry: {e}"))?;
    t.install_global()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    foundation_intelligence::describe_metrics();
    Ok(t)
}

async fn run_demo(args: DemoArgs) -> ExitCode {
    let options = DemoOptions {
        nodes: args.nodes,
        duration: args.duration,
        topology: args.topology.kind(),
        metrics: args.observer.unwrap_or(args.metrics),
        progress: true,
    };
    if let Err(e) = options.validate() {
        eprintln!("foundation demo: {e}");
        return ExitCode::from(2);
    }
    let telemetry = match telemetry(&[]).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("foundation demo: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "Starting {} Foundation nodes on 127.0.0.1 ({}), mixed workload for {:?} ...",
        options.nodes,
        foundation_intelligence::adaptive_topology::kind_label(options.topology),
        options.duration
    );
    let mut signals = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("foundation demo: {e}");
            return ExitCode::from(1);
        }
    };
    let cancel = CancellationToken::new();
    let signal = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            signals.wait().await;
            eprintln!("stopping (signal received) ...");
            cancel.cancel();
        })
    };
    let result = demo::run(options, telemetry.recorder().clone(), cancel, |addr| {
        println!("Observer: http://{addr}/   (live cluster view; JSON under /api/)");
        println!(
            "Prometheus metrics: http://{addr}/metrics   (health: /health, readiness: /ready)"
        );
    })
    .await;
    signal.abort();
    telemetry.shutdown().await;
    match result {
        Ok(summary) => {
            println!();
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e @ demo::DemoError::Options(_)) => {
            eprintln!("foundation demo: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("foundation demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// The link security the configuration asks for, with every file checked now so a
/// problem is reported before the node starts, naming the file.
fn security(cfg: &NodeConfig) -> Result<Security, String> {
    match cfg.security {
        SecurityMode::Secret => {
            let secret = match &cfg.secret_file {
                Some(path) => ClusterSecret::from_file(path).map_err(|e| match e {
                    foundation_intelligence::distributed::Error::InvalidSettings { reason } => reason,
                    other => format!("secret file {}: {other}", path.display()),
                })?,
                None => match std::env::var("FOUNDATION_CLUSTER_SECRET") {
                    Ok(v) => ClusterSecret::from_hex(&v)
                        .map_err(|e| format!("FOUNDATION_CLUSTER_SECRET: {e}"))?,
                    Err(_) => {
                        return Err("no cluster secret: set secret_file in [node], --secret-file, or FOUNDATION_CLUSTER_SECRET (the same secret on every node; `foundation gen-secret` makes one)".into())
                    }
                },
            };
            Ok(Security::Secret(secret))
        }
        SecurityMode::Tls => {
            let file = |what: &str, p: &Option<PathBuf>| -> Result<PathBuf, String> {
                let p = p
                    .clone()
                    .ok_or_else(|| format!("security = \"tls\" needs `{what}`"))?;
                std::fs::File::open(&p)
                    .map_err(|e| format!("TLS {what} file {}: cannot read it: {e}", p.display()))?;
                Ok(p)
            };
            Ok(Security::Tls(TlsSettings {
                ca: file("ca", &cfg.ca)?,
                cert: file("cert", &cfg.cert)?,
                key: file("key", &cfg.key)?,
            }))
        }
        SecurityMode::InsecurePlaintext => {
            tracing::warn!("security = insecure-plaintext: links are NOT authenticated or encrypted; anyone who reaches the port joins");
            Ok(Security::InsecurePlaintext)
        }
    }
}

fn gen_secret(file: &Path) -> ExitCode {
    match ClusterSecret::generate_file(file) {
        Ok(_) => {
            println!(
                "wrote a new cluster secret to {} (64 hex digits, mode 0600)\nuse it on every node: secret_file = \"{}\" in [node], or --secret-file",
                file.display(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let why = if file.exists() {
                "it exists already and is not overwritten".to_string()
            } else {
                e.to_string()
            };
            eprintln!("foundation gen-secret: {}: {why}", file.display());
            ExitCode::from(2)
        }
    }
}

fn gen_certs(dir: &Path, cluster: &str, nodes: &[String]) -> ExitCode {
    let fail = |e: String| {
        eprintln!("foundation gen-certs: {e}");
        ExitCode::from(2)
    };
    let existing = certs::CaFiles {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    };
    let ca = if existing.cert.exists() && existing.key.exists() {
        println!("reusing the CA in {}", dir.display());
        existing
    } else {
        match certs::generate_ca(dir, cluster) {
            Ok(ca) => {
                println!(
                    "created the cluster CA: {} (give to every node) and {} (keep it off the nodes)",
                    ca.cert.display(),
                    ca.key.display()
                );
                ca
            }
            Err(e) => return fail(format!("creating the CA in {}: {e}", dir.display())),
        }
    };
    for node in nodes {
        match certs::issue_node_cert(&ca, node, dir) {
            Ok(tls) => println!(
                "\n# {node}\n[node]\nname = \"{node}\"\nsecurity = \"tls\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ),
            Err(e) => return fail(format!("issuing a certificate for `{node}`: {e}")),
        }
    }
    ExitCode::SUCCESS
}

#[derive(Debug)]
enum Echo {
    Call(Vec<u8>, Reply<Vec<u8>>),
}

struct EchoWorker;

impl Process for EchoWorker {
    type Message = Echo;
    async fn handle(&mut self, msg: Echo, _: &mut Context<Echo>) {
        match msg {
            Echo::Call(v, reply) => reply.send(v),
        }
    }
}

async fn run_node(args: NodeArgs) -> ExitCode {
    let overrides = Overrides {
        name: args.name,
        cluster: args.cluster,
        listen: args.listen,
        advertise: args.advertise,
        seeds: args.seeds,
        topology: args.topology,
        role: args.role,
        metrics: args.metrics,
        secret_file: args.secret_file,
        security: args.security,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        workers: args.workers,
    };
    let cfg = match node_config::load(args.config.as_deref(), std::env::vars(), &overrides).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("foundation node: {e}");
            return ExitCode::from(2);
        }
    };
    let transport = match security(&cfg).and_then(|security| {
        TcpTransport::new(TransportSettings {
            cluster: cfg.cluster.clone(),
            node: cfg.name.clone(),
            advertise: cfg.advertise.clone(),
            security,
            ..TransportSettings::default()
        })
        .map_err(|e| format!("transport settings: {e}"))
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("foundation node: {e}");
            return ExitCode::from(2);
        }
    };
    match serve_node(cfg, transport).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("foundation node: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve_node(cfg: NodeConfig, transport: TcpTransport) -> Result<(), String> {
    let mut signals = Signals::register()?;
    let telemetry = telemetry(&[("node", cfg.name.as_str())]).await?;
    let transport: Arc<dyn Transport> = Arc::new(transport);
    let node = Node::start(
        transport,
        &cfg.name,
        NodeSettings {
            listen: cfg.listen.clone(),
            role: cfg.role,
            topology: cfg.topology,
            ..NodeSettings::default()
        },
    )
    .await
    .map_err(|e| format!("cannot start the node on {}: {e}", cfg.listen))?;
    let eco = Arc::new(
        Ecosystem::start(
            EcosystemSpec::new("echo").workers(Workers::Fixed(cfg.workers)),
            |_| EchoWorker,
        )
        .await
        .map_err(|e| format!("cannot start the echo ecosystem: {e}"))?,
    );
    {
        let eco = eco.clone();
        node.serve("echo", move |_from, v: Vec<u8>| {
            let eco = eco.clone();
            async move {
                eco.call(|r| Echo::Call(v, r), Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        let me = cfg.name.clone();
        node.serve("whoami", move |_from, _: ()| {
            let me = me.clone();
            async move { me }
        });
    }
    // Every node answers `observer.snapshot`, so any node's page shows the cluster.
    let observer = Observer::new(node.clone(), format!("{:?}", cfg.topology))
        .recorder(telemetry.recorder().clone())
        .ecosystem(eco.clone());
    observer.serve();
    // The first node (no seeds) is ready as soon as it serves; others once joined.
    let ready = Arc::new(AtomicBool::new(cfg.seeds.is_empty()));
    let http = match cfg.metrics {
        Some(addr) => {
            let (n, e) = (node.clone(), eco.clone());
            let cluster = cfg.cluster.clone();
            let endpoints =
                Endpoints::new(telemetry.recorder().clone(), ready.clone()).health(move || {
                    let members: Vec<_> = n
                        .members()
                        .into_iter()
                        .map(|m| serde_json::json!({ "name": m.name, "addr": m.addr, "up": m.up }))
                        .collect();
                    let info = e.info();
                    serde_json::json!({
                        "status": "ok",
                        "node": n.name(),
                        "cluster": cluster,
                        "members": members,
                        "ecosystems": [{ "name": info.name, "workers": info.workers, "alive": info.alive, "restarts": info.restarts }],
                    })
                });
            let server = HttpServer::start(addr, endpoints.observer(observer.clone()))
                .await
                .map_err(|e| e.to_string())?;
            println!("metrics http://{}/metrics", server.local_addr());
            println!("observer http://{}/", server.local_addr());
            Some(server)
        }
        None => None,
    };
    println!("listening {}", node.addr());
    tracing::info!(node = %cfg.name, cluster = %cfg.cluster, listen = %node.addr(), topology = ?cfg.topology, "node started");

    let stop = CancellationToken::new();
    let joiner = {
        let (node, ready, stop, seeds) =
            (node.clone(), ready.clone(), stop.clone(), cfg.seeds.clone());
        tokio::spawn(async move {
            if seeds.is_empty() {
                return;
            }
            let refs: Vec<&str> = seeds.iter().map(String::as_str).collect();
            let mut delay = Duration::from_millis(100);
            let mut attempts = 0u32;
            loop {
                match node.join(&refs).await {
                    Ok(()) => {
                        tracing::info!(seeds = ?seeds, "joined the cluster");
                        ready.store(true, Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        attempts += 1;
                        if attempts == 1 || attempts.is_multiple_of(10) {
                            tracing::warn!(seeds = ?seeds, error = %e, attempts, "cannot join yet; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        })
    };
    let watcher = {
        let (node, stop) = (node.clone(), stop.clone());
        tokio::spawn(async move {
            let mut events = node.subscribe();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    e = events.recv() => match e {
                        Ok(e) => tracing::info!(event = ?e, up = node.members().iter().filter(|m| m.up).count(), "membership"),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "membership events lagged"),
                        Err(_) => break,
                    },
                }
            }
        })
    };

    signals.wait().await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::Release);
    stop.cancel();
    let _ = joiner.await;
    let _ = watcher.await;
    if tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("node shutdown did not finish within 10 s");
    }
    eco.shutdown(Duration::from_secs(5)).await;
    // Ends the observer's live streams first, so the HTTP server's shutdown need not
    // wait for open pages.
    observer.shutdown(Duration::from_secs(1)).await;
    if let Some(h) = http {
        h.shutdown().await;
    }
    telemetry.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
