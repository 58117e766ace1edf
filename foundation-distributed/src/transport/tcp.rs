//! TCP on tokio.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};

use super::listener::{spawn_listener, Source};
use super::{Connection, Listener, RawIo, Shared, Transport, TransportSettings};
use crate::{Error, Result};

/// The TCP transport. Addresses are `host:port` or `tcp://host:port`; listen on port 0
/// to let the system pick one ([`Listener::local_addr`] tells which). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    shared: Arc<Shared>,
}

impl TcpTransport {
    /// A TCP transport with validated `settings`.
    pub fn new(settings: TransportSettings) -> Result<Self> {
        Ok(TcpTransport {
            shared: Shared::new(settings, "tcp")?,
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

fn socket_addr(addr: &str) -> Result<&str> {
    let plain = addr.strip_prefix("tcp://").unwrap_or(addr);
    if plain.is_empty() || plain.contains("://") || !plain.contains(':') {
        return Err(Error::InvalidAddress {
            addr: addr.to_owned(),
            reason: "expected host:port or tcp://host:port",
        });
    }
    Ok(plain)
}

#[async_trait]
impl Transport for TcpTransport {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn reload_certificates(&self) -> Result<()> {
        self.shared.reload_certificates()
    }

    async fn listen(&self, addr: &str) -> Result<Listener> {
        let listener = TcpListener::bind(socket_addr(addr)?)
            .await
            .map_err(|e| Error::io(addr, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io(addr, e))?
            .to_string();
        Ok(spawn_listener(
            self.shared.clone(),
            local,
            Source::Tcp(listener),
        ))
    }

    async fn connect(&self, addr: &str, channel: &str, index: u16) -> Result<Connection> {
        let target = socket_addr(addr)?;
        let shared = &self.shared;
        shared
            .timed(addr, false, async {
                let stream = TcpStream::connect(target)
                    .await
                    .map_err(|e| Error::io(addr, e))?;
                let _ = stream.set_nodelay(true);
                shared
                    .client(RawIo::Tcp(stream), addr, channel, index)
                    .await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(socket_addr("tcp://127.0.0.1:1").unwrap(), "127.0.0.1:1");
        assert_eq!(socket_addr("[::1]:1").unwrap(), "[::1]:1");
        assert!(socket_addr("mem://a").is_err());
        assert!(socket_addr("").is_err());
        assert!(socket_addr("localhost").is_err());
    }
}
