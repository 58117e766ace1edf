//! Authenticated, framed connections between nodes: one [`Transport`] trait, two
//! implementations.
//!
//! * [`TcpTransport`]: TCP on tokio, the real one (`127.0.0.1:7000`, `tcp://host:port`).
//! * [`MemoryTransport`]: in-process streams on a [`MemoryNetwork`] (`mem://node-1`), with
//!   the same framing, limits, handshake and authentication, for large simulated
//!   clusters and deterministic tests (it works under tokio's paused time).
//!
//! **Frames** are a 4-byte big-endian length and a MessagePack [`Envelope`]
//! ([`frame`]). A frame larger than [`TransportSettings::max_frame`] (8 MiB by default) is
//! refused before its body is buffered; an oversized or undecodable frame closes that
//! connection, is counted and logged, and the listener keeps serving.
//!
//! **Security** ([`Security`], in [`TransportSettings::security`]) is on by default:
//!
//! * [`Security::Tls`]: TLS 1.3 (rustls, `ring` provider) with mutual authentication
//!   against a cluster CA; each node's name is bound to its certificate and checked
//!   against the name it claims ([`tls`]; [`tls::dev`] creates a CA and certificates).
//! * [`Security::Secret`]: a shared [`ClusterSecret`] of at least 32 random bytes read
//!   from a file; the client proves knowledge first, then the server; session keys come
//!   from HKDF over the secret and both nonces, and every later frame is an AES-256-GCM
//!   record under a sequence number ([`record`]), so altered, injected, replayed or
//!   reordered frames close the connection and are counted.
//! * [`Security::InsecurePlaintext`]: nothing; for benchmarks and trusted loopback tests.
//!
//! The default, `Secret` with no secret, refuses to start until one is given: a node is
//! never unprotected by omission. See `docs/THREAT_MODEL.md`.
//!
//! **Handshake** (run inside TLS in TLS mode): the
//! connecting side sends its protocol version, cluster name, security mode, node name,
//! advertised address, channel name and connection index with a random nonce; the
//! accepting side answers with its own nonce; then the proofs (`secret` mode). A wrong
//! secret, certificate, cluster, mode or version is refused with a [`Refusal`] on both
//! sides; unauthenticated peers get at most 4 KiB frames and
//! [`handshake_timeout_ms`](TransportSettings::handshake_timeout_ms) to finish. No data
//! frame of an unauthenticated connection is ever delivered.
//!
//! **Abuse stays cheap**: at most
//! [`max_pending_handshakes`](TransportSettings::max_pending_handshakes) run at once; a
//! source address whose handshakes keep failing (a burst of 20, then one a second) is
//! refused before any handshake work; failures are logged at most 3 times a minute,
//! each line with the number not logged; all of them are counted.
//!
//! ```
//! use bytes::Bytes;
//! use foundation_distributed::transport::{
//!     ClusterSecret, Frame, MemoryNetwork, MemoryTransport, Security, Transport,
//!     TransportSettings,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> foundation_distributed::Result<()> {
//! // In production: ClusterSecret::from_file("/etc/foundation/cluster.secret")?
//! let secret = ClusterSecret::generate();
//! let settings = |node: &str| TransportSettings {
//!     cluster: "demo".into(),
//!     node: node.into(),
//!     security: Security::Secret(secret.clone()),
//!     ..Default::default()
//! };
//! let network = MemoryNetwork::new();
//! let a = MemoryTransport::new(&network, settings("a"))?;
//! let b = MemoryTransport::new(&network, settings("b"))?;
//!
//! let mut listener = b.listen("mem://b").await?;
//! let mut client = a.connect("mem://b", "control", 0).await?;
//! let mut server = listener.accept().await?;
//! assert_eq!(server.peer().node, "a");
//!
//! client.send(1, Bytes::from_static(b"ping")).await?;
//! assert_eq!(
//!     server.recv().await?,
//!     Some(Frame::Data { channel: 1, payload: Bytes::from_static(b"ping") })
//! );
//! server.send(1, Bytes::from_static(b"pong")).await?;
//! assert!(matches!(client.recv().await?, Some(Frame::Data { .. })));
//! # Ok(()) }
//! ```
//!
//! | metric | kind, labels |
//! |---|---|
//! | `foundation_transport_connections` | gauge, `transport` (`tcp`, `memory`) |
//! | `foundation_transport_handshakes_total` | counter, `result` (`ok`, `authentication`, `certificate`, `security`, `cluster`, `version`, `timeout`, `protocol`, `busy`, `rate_limited`, `io`) |
//! | `foundation_transport_frames_total` | counter, `direction` (`in`, `out`) |
//! | `foundation_transport_bytes_total` | counter, `direction` (header included) |
//! | `foundation_transport_frame_errors_total` | counter, `reason` (`oversized`, `undecodable`, `unexpected`, `forged`) |
//! | `foundation_transport_tls_reloads_total` | counter |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod abuse;
mod connection;
pub mod frame;
mod handshake;
mod listener;
mod memory;
pub mod record;
mod secret;
mod security;
mod tcp;
pub mod tls;

pub use connection::{Connection, ConnectionReceiver, ConnectionSender, Frame, Peer};
pub use frame::Envelope;
pub use handshake::{Refusal, PROTOCOL_VERSION};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use secret::{ClusterSecret, MIN_SECRET_LEN};
pub use security::{Security, TlsSettings};
pub use tcp::TcpTransport;

use crate::{Error, Result};

/// Metric names.
pub(crate) mod metric {
    pub const CONNECTIONS: &str = "foundation_transport_connections";
    pub const HANDSHAKES: &str = "foundation_transport_handshakes_total";
    pub const FRAMES: &str = "foundation_transport_frames_total";
    pub const BYTES: &str = "foundation_transport_bytes_total";
    pub const FRAME_ERRORS: &str = "foundation_transport_frame_errors_total";
    pub const TLS_RELOADS: &str = "foundation_transport_tls_reloads_total";
}

/// Opens listeners and connections. Object safe: layers above hold an
/// `Arc<dyn Transport>` and do not care which implementation they got.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// `"tcp"` or `"memory"`: the `transport` label of this transport's metrics.
    fn kind(&self) -> &'static str;

    /// Reads the TLS certificate, key and CA files again and uses them for new
    /// connections (established ones are unaffected). On error nothing changes. Fails
    /// with [`Error::InvalidArgument`] unless the transport is in [`Security::Tls`] mode.
    fn reload_certificates(&self) -> Result<()>;

    /// Starts accepting connections at `addr`. Handshakes run in the listener's own
    /// tasks, so a slow peer never delays another; [`Listener::accept`] yields only
    /// authenticated connections.
    async fn listen(&self, addr: &str) -> Result<Listener>;

    /// Connects to `addr` and authenticates, announcing `channel` and the connection's
    /// `index` among the channel's parallel connections. Fails with [`Error::Refused`]
    /// (wrong secret, cluster or version, by either side), [`Error::HandshakeTimeout`],
    /// or an I/O error.
    async fn connect(&self, addr: &str, channel: &str, index: u16) -> Result<Connection>;
}

/// Settings of a transport (both implementations). Loads from TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportSettings {
    /// Cluster name; peers of another cluster are refused. Required.
    pub cluster: String,
    /// This node's name. Required.
    pub node: String,
    /// The address this node tells peers it can be reached at; `None` announces the
    /// listener's local address (or nothing, on connections made before listening).
    pub advertise: Option<String>,
    /// How connections are authenticated and protected. The default (a `Secret` with no
    /// secret) is refused by validation: choose a mode. Required.
    pub security: Security,
    /// Largest frame body accepted and sent, in bytes. Default 8 MiB.
    pub max_frame: usize,
    /// Time allowed for the whole handshake (and, when connecting, the TCP connect), in
    /// milliseconds. Default 5000.
    pub handshake_timeout_ms: u64,
    /// Handshakes a listener runs at once; connections beyond are closed and counted
    /// as `busy`. Default 256.
    pub max_pending_handshakes: usize,
    /// Authenticated connections waiting for [`Listener::accept`]; when full, finished
    /// handshakes wait (still bounded by their timeout). Default 64.
    pub accept_backlog: usize,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            cluster: String::new(),
            node: String::new(),
            advertise: None,
            security: Security::default(),
            max_frame: 8 * 1024 * 1024,
            handshake_timeout_ms: 5000,
            max_pending_handshakes: 256,
            accept_backlog: 64,
        }
    }
}

impl TransportSettings {
    /// Checks the settings; every transport constructor calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidSettings { reason });
        if self.cluster.is_empty() {
            return bad("cluster name is empty".into());
        }
        if self.node.is_empty() {
            return bad("node name is empty".into());
        }
        self.security.validate()?;
        if matches!(self.security, Security::Tls(_)) && !tls::valid_node_name(&self.node) {
            return bad(format!(
                "node name `{}` cannot be bound to a TLS certificate: in TLS mode node names \
                 must be valid DNS names (letters, digits, `-`, `.`)",
                self.node
            ));
        }
        if !(64..=u32::MAX as usize).contains(&self.max_frame) {
            return bad(format!(
                "max_frame {} is outside 64..=4294967295",
                self.max_frame
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return bad("handshake_timeout_ms is 0".into());
        }
        if self.max_pending_handshakes == 0 || self.accept_backlog == 0 {
            return bad("max_pending_handshakes and accept_backlog must be at least 1".into());
        }
        Ok(())
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    fn identity(&self, addr: Option<&str>) -> handshake::Identity {
        handshake::Identity {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            addr: self
                .advertise
                .clone()
                .or_else(|| addr.map(str::to_owned))
                .unwrap_or_default(),
            auth: match &self.security {
                Security::Tls(_) => handshake::Auth::Tls,
                Security::Secret(secret) => handshake::Auth::Secret(secret.clone()),
                Security::InsecurePlaintext => handshake::Auth::Plaintext,
            },
        }
    }
}

/// Accepts authenticated connections. Made by [`Transport::listen`].
///
/// Owns an accept task and the handshake tasks it starts. Dropping the listener stops
/// them all (the port or `mem://` name is released shortly after); [`shutdown`](Self::shutdown)
/// does the same and waits. Connections already accepted are not affected.
#[derive(Debug)]
pub struct Listener {
    addr: String,
    incoming: mpsc::Receiver<Connection>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Listener {
    /// The address it listens at (for TCP with port 0, the port chosen).
    pub fn local_addr(&self) -> &str {
        &self.addr
    }

    /// The next authenticated connection. Fails with [`Error::ListenerClosed`] if the
    /// accept task has ended.
    pub async fn accept(&mut self) -> Result<Connection> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| Error::ListenerClosed {
                addr: self.addr.clone(),
            })
    }

    /// Stops accepting, aborts handshakes in progress and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Describes the transport metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        metric::CONNECTIONS,
        "Open authenticated transport connections, by transport."
    );
    describe_counter!(
        metric::HANDSHAKES,
        "Transport handshakes by result (ok, authentication, certificate, security, cluster, version, timeout, protocol, busy, rate_limited, io)."
    );
    describe_counter!(
        metric::FRAMES,
        "Frames on authenticated transport connections, by direction."
    );
    describe_counter!(
        metric::BYTES,
        "Bytes (headers included) on authenticated transport connections, by direction."
    );
    describe_counter!(
        metric::FRAME_ERRORS,
        "Frames that closed a connection, by reason (oversized, undecodable, unexpected, forged: a record that failed authentication)."
    );
    describe_counter!(
        metric::TLS_RELOADS,
        "Successful reloads of TLS certificates without a restart."
    );
}

/// A raw stream before security is applied.
pub(crate) enum RawIo {
    Tcp(tokio::net::TcpStream),
    Memory(tokio::io::DuplexStream),
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

impl RawIo {
    fn split(self) -> (connection::BoxRead, connection::BoxWrite) {
        match self {
            RawIo::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            RawIo::Memory(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }

    fn boxed(self) -> Box<dyn Stream> {
        match self {
            RawIo::Tcp(s) => Box::new(s),
            RawIo::Memory(s) => Box::new(s),
        }
    }
}

type Secured = (
    connection::BoxRead,
    connection::BoxWrite,
    Option<rustls::pki_types::CertificateDer<'static>>,
);

/// Everything a transport instance shares with its listeners and connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: TransportSettings,
    pub kind: &'static str,
    tls: Option<tls::TlsState>,
    pub(crate) limiter: abuse::FailureLimiter,
    inbound_log: abuse::LogThrottle,
    outbound_log: abuse::LogThrottle,
}

impl Shared {
    pub(crate) fn new(settings: TransportSettings, kind: &'static str) -> Result<Arc<Self>> {
        settings.validate()?;
        let tls = match &settings.security {
            Security::Tls(files) => Some(tls::TlsState::load(files, &settings.node)?),
            _ => None,
        };
        Ok(Arc::new(Shared {
            settings,
            kind,
            tls,
            limiter: abuse::FailureLimiter::default(),
            inbound_log: abuse::LogThrottle::default(),
            outbound_log: abuse::LogThrottle::default(),
        }))
    }

    pub(crate) fn reload_certificates(&self) -> Result<()> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err(Error::InvalidArgument(format!(
                "reload_certificates: the transport is in `{}` mode, not `tls`",
                self.settings.security.mode()
            ))),
        }
    }

    /// Counts a failed handshake and logs it (at most a few lines a minute).
    pub(crate) fn failed(&self, e: Error, addr: &str, inbound: bool) -> Error {
        let throttle = if inbound {
            &self.inbound_log
        } else {
            &self.outbound_log
        };
        connection::count_failed(e, addr, throttle)
    }

    /// TLS (when configured) over a raw stream, as the connecting side.
    async fn secure_client(&self, raw: RawIo, addr: &str) -> Result<Secured> {
        let Some(tls) = &self.tls else {
            let (r, w) = raw.split();
            return Ok((r, w, None));
        };
        let connector = tls.current().connector.clone();
        let stream = connector
            .connect(tls::TlsState::server_name(), raw.boxed())
            .await
            .map_err(|e| connection::stream_error(addr, e))?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let (r, w) = tokio::io::split(stream);
        Ok((Box::new(r), Box::new(w), cert))
    }

    /// TLS (when configured) over a raw stream, as the accepting side.
    async fn secure_server(&self, raw: RawIo, addr: &str) -> Result<Secured> {
        let Some(tls) = &self.tls else {
            let (r, w) = raw.split();
            return Ok((r, w, None));
        };
        let acceptor = tls.current().acceptor.clone();
        let stream = acceptor
            .accept(raw.boxed())
            .await
            .map_err(|e| connection::stream_error(addr, e))?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let (r, w) = tokio::io::split(stream);
        Ok((Box::new(r), Box::new(w), cert))
    }

    /// Runs the client side of a connection over `raw`: TLS if configured, then the
    /// handshake (timeout applied by the caller).
    pub(crate) async fn client(
        &self,
        raw: RawIo,
        addr: &str,
        channel: &str,
        index: u16,
    ) -> Result<Connection> {
        let (reader, writer, cert) = self.secure_client(raw, addr).await?;
        let me = Arc::new(self.settings.identity(None));
        let (machine, hello) =
            handshake::ClientHandshake::new(me, channel, index, handshake::nonce(), cert);
        let io = connection::HandshakeIo {
            reader,
            writer,
            peer_addr: addr.to_owned(),
            max_frame: self.settings.max_frame,
            transport: self.kind,
        };
        connection::client_handshake(io, machine, hello).await
    }

    /// Runs the server side of a connection over `raw` (timeout applied by the caller).
    pub(crate) async fn serve(
        &self,
        me: Arc<handshake::Identity>,
        raw: RawIo,
        peer_addr: &str,
    ) -> Result<Connection> {
        let (reader, writer, cert) = self.secure_server(raw, peer_addr).await?;
        let machine = handshake::ServerHandshake::new(me, handshake::nonce(), cert);
        let io = connection::HandshakeIo {
            reader,
            writer,
            peer_addr: peer_addr.to_owned(),
            max_frame: self.settings.max_frame,
            transport: self.kind,
        };
        connection::serve_handshake(io, machine).await
    }

    /// `fut` bounded by the handshake timeout; a failure is counted and logged
    /// (rate-limited).
    pub(crate) async fn timed<F>(&self, addr: &str, inbound: bool, fut: F) -> Result<Connection>
    where
        F: std::future::Future<Output = Result<Connection>>,
    {
        let after = self.settings.handshake_timeout();
        let r = match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::HandshakeTimeout {
                addr: addr.to_owned(),
                after,
            }),
        };
        r.map_err(|e| self.failed(e, addr, inbound))
    }
}
