//! How a transport protects its connections: [`Security`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ClusterSecret;
use crate::{Error, Result};

/// How connections are authenticated and protected. There is no unprotected default:
/// the default is [`Security::Secret`] with no secret, which validation refuses until
/// one is set.
///
/// In TOML (the `security` table of [`TransportSettings`](super::TransportSettings)):
///
/// ```toml
/// [security]
/// mode = "tls"                # or "secret", or "insecure-plaintext"
/// ca = "/etc/foundation/ca.pem"
/// cert = "/etc/foundation/node.pem"
/// key = "/etc/foundation/node.key"
/// # mode = "secret" takes: secret_file = "/etc/foundation/cluster.secret"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SecuritySpec", into = "SecuritySpec")]
#[non_exhaustive]
pub enum Security {
    /// TLS 1.3 with mutual authentication against a cluster CA; each node's name is
    /// bound to its certificate (a DNS subject alternative name), and the name a peer
    /// claims in the handshake must match its certificate. Certificates reload without
    /// a restart ([`TcpTransport::reload_certificates`](super::TcpTransport::reload_certificates)).
    Tls(TlsSettings),
    /// A shared secret (≥ 32 random bytes): both sides prove knowledge of it (the client
    /// first), session keys are derived from it and both nonces (HKDF-SHA256), and every
    /// frame after the handshake is encrypted and authenticated (AES-256-GCM) under a
    /// sequence number, so altered, injected, replayed or reordered frames close the
    /// connection.
    Secret(ClusterSecret),
    /// No authentication, no encryption, no integrity: anyone who can reach the port and
    /// knows the cluster name joins, and anyone on the path reads and rewrites traffic.
    /// Only for benchmarks and tests on a trusted loopback.
    InsecurePlaintext,
}

impl Default for Security {
    fn default() -> Self {
        Security::Secret(ClusterSecret::default())
    }
}

impl Security {
    /// The mode's name as it appears in settings, handshakes and metric labels: `tls`,
    /// `secret` or `insecure-plaintext`.
    pub fn mode(&self) -> &'static str {
        match self {
            Security::Tls(_) => "tls",
            Security::Secret(_) => "secret",
            Security::InsecurePlaintext => "insecure-plaintext",
        }
    }

    /// [`Security::Secret`] with the secret read (and checked) from `path`.
    pub fn secret_file(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Security::Secret(ClusterSecret::from_file(path.into())?))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Security::Secret(secret) => secret.check(),
            Security::Tls(tls) => tls.validate(),
            Security::InsecurePlaintext => Ok(()),
        }
    }
}

/// PEM files of [`Security::Tls`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSettings {
    /// The cluster CA certificate(s) every peer's certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate chain (leaf first), issued by the cluster CA with this
    /// node's name as a DNS subject alternative name.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}

impl TlsSettings {
    fn validate(&self) -> Result<()> {
        for (what, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Err(Error::InvalidSettings {
                    reason: format!("TLS `{what}` file is not set"),
                });
            }
        }
        Ok(())
    }
}

/// The TOML shape of [`Security`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecuritySpec {
    mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<PathBuf>,
}

impl TryFrom<SecuritySpec> for Security {
    type Error = String;

    fn try_from(spec: SecuritySpec) -> std::result::Result<Self, String> {
        match spec.mode.as_str() {
            "tls" => {
                let need = |v: Option<PathBuf>, what: &str| {
                    v.ok_or_else(|| format!("security mode `tls` needs `{what}` (a PEM file)"))
                };
                Ok(Security::Tls(TlsSettings {
                    ca: need(spec.ca, "ca")?,
                    cert: need(spec.cert, "cert")?,
                    key: need(spec.key, "key")?,
                }))
            }
            "secret" => {
                let path = spec.secret_file.ok_or(
                    "security mode `secret` needs `secret_file` (a file of 64+ hex digits)",
                )?;
                ClusterSecret::from_file(path)
                    .map(Security::Secret)
                    .map_err(|e| e.to_string())
            }
            "insecure-plaintext" => Ok(Security::InsecurePlaintext),
            other => Err(format!(
                "unknown security mode `{other}` (expected `tls`, `secret` or `insecure-plaintext`)"
            )),
        }
    }
}

impl From<Security> for SecuritySpec {
    fn from(s: Security) -> Self {
        let mut spec = SecuritySpec {
            mode: s.mode().to_owned(),
            ..Default::default()
        };
        match s {
            Security::Tls(t) => {
                spec.ca = Some(t.ca);
                spec.cert = Some(t.cert);
                spec.key = Some(t.key);
            }
            Security::Secret(secret) => {
                spec.secret_file = Some(
                    secret
                        .source()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| "<redacted>".into()),
                );
            }
            Security::InsecurePlaintext => {}
        }
        spec
    }
}
