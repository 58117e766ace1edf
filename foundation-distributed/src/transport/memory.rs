//! The in-memory transport: `tokio::io::duplex` streams on a shared [`MemoryNetwork`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::listener::{spawn_listener, Source};
use super::{Connection, Listener, RawIo, Refusal, Shared, Transport, TransportSettings};
use crate::{Error, Result};

/// Bytes buffered in each direction of an in-memory stream (like a socket buffer).
const STREAM_BUFFER: usize = 256 * 1024;

type Registry = Arc<Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>>;

/// A set of `mem://` names that [`MemoryTransport`]s on it can listen at and connect
/// to. Cheap to clone; clones are the same network. One per simulated cluster.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    listeners: Registry,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names with a live listener, sorted.
    pub fn listening(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listeners
            .lock()
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Opens a raw, unauthenticated stream to the listener at `addr`, speaking no
    /// protocol at all: for tests of misbehaving peers (garbage, stalls, early data).
    pub fn connect_raw(&self, addr: &str) -> Result<DuplexStream> {
        let name = mem_name(addr)?;
        let tx = self
            .listeners
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoListener {
                addr: addr.to_owned(),
            })?;
        let (client, server) = tokio::io::duplex(STREAM_BUFFER);
        tx.try_send(server).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Refused {
                reason: Refusal::Busy,
                by_peer: true,
            },
            mpsc::error::TrySendError::Closed(_) => Error::NoListener {
                addr: addr.to_owned(),
            },
        })?;
        Ok(client)
    }
}

fn mem_name(addr: &str) -> Result<&str> {
    match addr.strip_prefix("mem://") {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Error::InvalidAddress {
            addr: addr.to_owned(),
            reason: "expected mem://<name>",
        }),
    }
}

/// Removes a listener's name from the network when its accept task ends.
pub(crate) struct Registration {
    listeners: Registry,
    name: String,
    tx: mpsc::Sender<DuplexStream>,
}

impl Registration {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut listeners = self.listeners.lock();
        if listeners
            .get(&self.name)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            listeners.remove(&self.name);
        }
    }
}

/// The in-memory transport: the same frames, limits, handshake and authentication as
/// [`TcpTransport`](super::TcpTransport), over in-process streams with 256 KiB of buffer
/// per direction. Works under tokio's paused time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    shared: Arc<Shared>,
}

impl MemoryTransport {
    /// A transport on `network` with validated `settings`.
    pub fn new(network: &MemoryNetwork, settings: TransportSettings) -> Result<Self> {
        Ok(MemoryTransport {
            network: network.clone(),
            shared: Shared::new(settings, "memory")?,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &TransportSettings {
        &self.shared.settings
    }

    /// Reloads TLS certificates without a restart; see
    /// [`Transport::reload_certificates`].
    pub fn reload_certificates(&self) -> Result<()> {
        self.shared.reload_certificates()
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn reload_certificates(&self) -> Result<()> {
        self.shared.reload_certificates()
    }

    async fn listen(&self, addr: &str) -> Result<Listener> {
        let name = mem_name(addr)?.to_owned();
        let backlog = self.shared.settings.max_pending_handshakes.max(16);
        let (tx, rx) = mpsc::channel(backlog);
        {
            let mut listeners = self.network.listeners.lock();
            if listeners.get(&name).is_some_and(|tx| !tx.is_closed()) {
                return Err(Error::AddressInUse {
                    addr: addr.to_owned(),
                });
            }
            listeners.insert(name.clone(), tx.clone());
        }
        let registration = Registration {
            listeners: self.network.listeners.clone(),
            name,
            tx,
        };
        Ok(spawn_listener(
            self.shared.clone(),
            addr.to_owned(),
            Source::Memory(rx, registration),
        ))
    }

    async fn connect(&self, addr: &str, channel: &str, index: u16) -> Result<Connection> {
        let stream = self.network.connect_raw(addr)?;
        self.shared
            .timed(
                addr,
                false,
                self.shared
                    .client(RawIo::Memory(stream), addr, channel, index),
            )
            .await
    }
}
