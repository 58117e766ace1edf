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
//! **Handshake**: the connecting side sends its protocol version, cluster name, node name,
//! advertised address, channel name and connection index with a random nonce; the
//! accepting side answers with its own nonce; each side proves knowledge of the shared
//! [`ClusterSecret`] by an HMAC-SHA256 over the whole transcript and its role, verified in
//! constant time. A wrong secret, cluster or version is refused with a [`Refusal`] on both
//! sides; unauthenticated peers get at most 4 KiB frames and
//! [`handshake_timeout_ms`](TransportSettings::handshake_timeout_ms) to finish. No data
//! frame of an unauthenticated connection is ever delivered. The transport authenticates;
//! it does not encrypt (see `docs/DECISIONS.md`, D62).
//!
//! ```
//! use bytes::Bytes;
//! use foundation_distributed::transport::{
//!     ClusterSecret, Frame, MemoryNetwork, MemoryTransport, Transport, TransportSettings,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> foundation_distributed::Result<()> {
//! let settings = |node: &str| TransportSettings {
//!     cluster: "demo".into(),
//!     node: node.into(),
//!     secret: ClusterSecret::new("a shared secret of 16+ bytes"),
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
//! | `foundation_transport_handshakes_total` | counter, `result` (`ok`, `authentication`, `cluster`, `version`, `timeout`, `protocol`, `busy`, `io`) |
//! | `foundation_transport_frames_total` | counter, `direction` (`in`, `out`) |
//! | `foundation_transport_bytes_total` | counter, `direction` (header included) |
//! | `foundation_transport_frame_errors_total` | counter, `reason` (`oversized`, `undecodable`, `unexpected`) |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod connection;
pub mod frame;
mod handshake;
mod listener;
mod memory;
mod tcp;

pub use connection::{Connection, ConnectionReceiver, ConnectionSender, Frame, Peer};
pub use frame::Envelope;
pub use handshake::{ClusterSecret, Refusal, MIN_SECRET_LEN, PROTOCOL_VERSION};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use tcp::TcpTransport;

use crate::{Error, Result};

/// Metric names.
pub(crate) mod metric {
    pub const CONNECTIONS: &str = "foundation_transport_connections";
    pub const HANDSHAKES: &str = "foundation_transport_handshakes_total";
    pub const FRAMES: &str = "foundation_transport_frames_total";
    pub const BYTES: &str = "foundation_transport_bytes_total";
    pub const FRAME_ERRORS: &str = "foundation_transport_frame_errors_total";
}

/// Opens listeners and connections. Object safe: layers above hold an
/// `Arc<dyn Transport>` and do not care which implementation they got.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// `"tcp"` or `"memory"`: the `transport` label of this transport's metrics.
    fn kind(&self) -> &'static str;

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
    /// The shared cluster secret, at least [`MIN_SECRET_LEN`] bytes. Required.
    pub secret: ClusterSecret,
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
            secret: ClusterSecret::default(),
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
        if self.secret.len() < MIN_SECRET_LEN {
            return bad(format!(
                "cluster secret has {} bytes, at least {MIN_SECRET_LEN} are required",
                self.secret.len()
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
            secret: self.secret.clone(),
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
        "Transport handshakes by result (ok, authentication, cluster, version, timeout, protocol, busy, io)."
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
        "Frames that closed a connection, by reason (oversized, undecodable, unexpected)."
    );
}

/// Everything a transport instance shares with its listeners and connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub settings: TransportSettings,
    pub kind: &'static str,
}

impl Shared {
    pub(crate) fn new(settings: TransportSettings, kind: &'static str) -> Result<Arc<Self>> {
        settings.validate()?;
        Ok(Arc::new(Shared { settings, kind }))
    }

    /// Runs the client side of a handshake over `reader`/`writer` (timeout applied by
    /// the caller).
    pub(crate) async fn client(
        &self,
        reader: connection::BoxRead,
        writer: connection::BoxWrite,
        addr: &str,
        channel: &str,
        index: u16,
    ) -> Result<Connection> {
        let me = Arc::new(self.settings.identity(None));
        let (machine, hello) =
            handshake::ClientHandshake::new(me, channel, index, handshake::nonce());
        let io = connection::HandshakeIo {
            reader,
            writer,
            peer_addr: addr.to_owned(),
            max_frame: self.settings.max_frame,
            transport: self.kind,
        };
        connection::client_handshake(io, machine, hello).await
    }

    /// `fut` bounded by the handshake timeout; a timeout is counted and logged.
    pub(crate) async fn timed<F>(&self, addr: &str, fut: F) -> Result<Connection>
    where
        F: std::future::Future<Output = Result<Connection>>,
    {
        let after = self.settings.handshake_timeout();
        match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(connection::count_failed(
                Error::HandshakeTimeout {
                    addr: addr.to_owned(),
                    after,
                },
                addr,
            )),
        }
    }
}
