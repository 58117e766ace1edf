//! TLS 1.3 with mutual authentication ([`Security::Tls`](super::Security::Tls)), on
//! rustls with the `ring` crypto provider.
//!
//! Both sides present a certificate issued by the cluster CA; rustls checks the chain,
//! validity period and signatures. The node name is bound to the certificate: each
//! node's certificate carries its name as a DNS subject alternative name, and the name
//! a peer claims in the Foundation handshake (run inside TLS) must be valid for the
//! peer's certificate, or the handshake is refused
//! ([`Refusal::Certificate`](super::Refusal::Certificate)). A node's own certificate is
//! checked against its configured name at start. The client does not know the server's
//! node name before connecting (it dials an address), so the TLS layer checks the chain
//! only and the name is checked one step later, against the name the server claims.
//!
//! Certificates reload without a restart:
//! [`Transport::reload_certificates`](super::Transport::reload_certificates) reads the PEM
//! files again; new connections use them, established ones are not affected, and a failed
//! reload changes nothing.
//!
//! [`dev`] creates a cluster CA and node certificates for development and tests.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::security::TlsSettings;
use crate::{Error, Result};

/// The server name every client sends (SNI) and the TLS layer ignores: the peer's node
/// name is checked against its certificate in the Foundation handshake instead.
const SNI: &str = "foundation.invalid";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(reason: String) -> Error {
    Error::InvalidSettings { reason }
}

/// The loaded configuration; swapped whole on reload.
pub(crate) struct TlsConfigs {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// TLS state of a transport: its settings and the current configuration.
pub(crate) struct TlsState {
    settings: TlsSettings,
    node: String,
    current: ArcSwap<TlsConfigs>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the PEM files; fails with a clear [`Error::InvalidSettings`].
    pub(crate) fn load(settings: &TlsSettings, node: &str) -> Result<Self> {
        let configs = load_configs(settings, node)?;
        Ok(TlsState {
            settings: settings.clone(),
            node: node.to_owned(),
            current: ArcSwap::from_pointee(configs),
        })
    }

    /// Reads the PEM files again and swaps them in; on error nothing changes.
    pub(crate) fn reload(&self) -> Result<()> {
        let configs = load_configs(&self.settings, &self.node)?;
        self.current.store(Arc::new(configs));
        metrics::counter!(super::metric::TLS_RELOADS).increment(1);
        tracing::info!(node = %self.node, "TLS certificates reloaded");
        Ok(())
    }

    pub(crate) fn current(&self) -> Arc<TlsConfigs> {
        self.current.load_full()
    }

    pub(crate) fn server_name() -> ServerName<'static> {
        // A constant, valid DNS name.
        ServerName::try_from(SNI).expect("valid DNS name")
    }
}

fn read_certs(path: &std::path::Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("cannot read TLS {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "TLS {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_configs(settings: &TlsSettings, node: &str) -> Result<TlsConfigs> {
    let ca = read_certs(&settings.ca, "CA file")?;
    let chain = read_certs(&settings.cert, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| {
        bad(format!(
            "cannot read TLS key file {}: {e}",
            settings.key.display()
        ))
    })?;
    if !name_matches(&chain[0], node) {
        return Err(bad(format!(
            "TLS certificate {} is not valid for this node's name `{node}` (it must carry \
             the name as a DNS subject alternative name)",
            settings.cert.display()
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| {
            bad(format!(
                "bad CA certificate in {}: {e}",
                settings.ca.display()
            ))
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let tls_err = |e: rustls::Error| bad(format!("TLS configuration refused: {e}"));

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad(format!("TLS client verifier: {e}")))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err)?;

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| bad(format!("TLS server verifier: {e}")))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(server_verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;

    Ok(TlsConfigs {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}

/// Whether `cert` is valid for the node name `node` (a DNS subject alternative name).
pub(crate) fn name_matches(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Whether `node` can be bound to a certificate (a valid DNS name).
pub(crate) fn valid_node_name(node: &str) -> bool {
    matches!(ServerName::try_from(node), Ok(ServerName::DnsName(_)))
}

/// The server certificate verifier of clients: the full WebPKI check against the
/// cluster CA except the host name, which the Foundation handshake checks against the
/// node name the server claims.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        // WebPKI checks the chain, validity period and usage before the name, so a name
        // error means everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS error inside an I/O error from a TLS stream, if there is one.
pub(crate) fn tls_cause(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Creating a cluster CA and node certificates with `rcgen`, for development, tests and
/// the `foundation` binary's certificate subcommand. Production deployments may use any
/// CA, as long as node certificates carry the node name as a DNS subject alternative
/// name.
///
/// ```
/// use foundation_distributed::transport::tls::dev;
/// use foundation_distributed::transport::{Security, TransportSettings};
///
/// # fn main() -> foundation_distributed::Result<()> {
/// let dir = std::env::temp_dir().join(format!("doc-ca-{}", std::process::id()));
/// let ca = dev::generate_ca(&dir, "demo")?;
/// let tls = dev::issue_node_cert(&ca, "node-1", &dir)?;
/// let settings = TransportSettings {
///     cluster: "demo".into(),
///     node: "node-1".into(),
///     security: Security::Tls(tls),
///     ..Default::default()
/// };
/// assert!(settings.validate().is_ok());
/// # std::fs::remove_dir_all(dir).ok();
/// # Ok(()) }
/// ```
pub mod dev {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use super::super::security::TlsSettings;
    use crate::{Error, Result};

    /// The PEM files of a cluster CA.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CaFiles {
        /// The CA certificate (distribute it to every node).
        pub cert: PathBuf,
        /// The CA private key (keep it off the nodes).
        pub key: PathBuf,
    }

    /// Validity of an issued certificate.
    #[derive(Debug, Clone, Copy)]
    pub struct Validity {
        /// Not valid before.
        pub not_before: SystemTime,
        /// Not valid after.
        pub not_after: SystemTime,
    }

    impl Default for Validity {
        /// From an hour ago (clock skew) to a year from now.
        fn default() -> Self {
            let now = SystemTime::now();
            Validity {
                not_before: now - Duration::from_secs(3600),
                not_after: now + Duration::from_secs(365 * 24 * 3600),
            }
        }
    }

    fn failed(what: &str, e: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("{what}: {e}"))
    }

    fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        use std::io::Write;
        options
            .open(path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .map_err(|e| Error::io(&path.display().to_string(), e))
    }

    /// Creates a cluster CA (ECDSA P-256, valid ten years) and writes `ca.pem` and
    /// `ca.key` (mode 0600) into `dir`, creating it if needed.
    pub fn generate_ca(dir: impl AsRef<Path>, cluster: &str) -> Result<CaFiles> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(&dir.display().to_string(), e))?;
        let key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster} cluster CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "foundation");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let cert = params
            .self_signed(&key)
            .map_err(|e| failed("CA certificate", e))?;
        let files = CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        };
        write(&files.cert, &cert.pem(), false)?;
        write(&files.key, &key.serialize_pem(), true)?;
        Ok(files)
    }

    /// Issues a certificate for `node` (valid from an hour ago for a year) and writes
    /// `<node>.pem` and `<node>.key` into `dir`; returns the [`TlsSettings`] that use
    /// them with the CA.
    pub fn issue_node_cert(ca: &CaFiles, node: &str, dir: impl AsRef<Path>) -> Result<TlsSettings> {
        issue_node_cert_with(ca, node, dir, Validity::default())
    }

    /// [`issue_node_cert`] with an explicit validity (tests use it for expired
    /// certificates).
    pub fn issue_node_cert_with(
        ca: &CaFiles,
        node: &str,
        dir: impl AsRef<Path>,
        validity: Validity,
    ) -> Result<TlsSettings> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(&dir.display().to_string(), e))?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| Error::io(&p.display().to_string(), e))
        };
        let ca_key = KeyPair::from_pem(&read(&ca.key)?).map_err(|e| failed("CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&read(&ca.cert)?, ca_key)
            .map_err(|e| failed("CA certificate", e))?;
        let mut params =
            CertificateParams::new(vec![node.to_owned()]).map_err(|e| failed("node name", e))?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate().map_err(|e| failed("node key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| failed("node certificate", e))?;
        let settings = TlsSettings {
            ca: ca.cert.clone(),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        };
        write(&settings.cert, &cert.pem(), false)?;
        write(&settings.key, &key.serialize_pem(), true)?;
        Ok(settings)
    }
}
