//! The accept task shared by both transports.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use foundation_beam::core::telemetry::TaskGuard;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection;
use super::{Listener, RawIo, Refusal, Shared};
use crate::Error;

/// A raw, unauthenticated stream from a listening socket or `mem://` name.
pub(crate) struct RawStream {
    pub io: RawIo,
    pub peer_addr: String,
    /// The source address (TCP): failed handshakes are rate-limited per address.
    pub ip: Option<IpAddr>,
}

/// Where raw streams come from.
pub(crate) enum Source {
    Tcp(tokio::net::TcpListener),
    Memory(
        mpsc::Receiver<tokio::io::DuplexStream>,
        super::memory::Registration,
    ),
}

impl Source {
    /// The next raw stream; `None` when no more can come.
    async fn next(&mut self) -> Option<std::io::Result<RawStream>> {
        match self {
            Source::Tcp(listener) => Some(listener.accept().await.map(|(stream, peer)| {
                // Frames are written whole and flushed deliberately; Nagle only adds delay.
                let _ = stream.set_nodelay(true);
                RawStream {
                    io: RawIo::Tcp(stream),
                    peer_addr: peer.to_string(),
                    ip: Some(peer.ip()),
                }
            })),
            Source::Memory(rx, registration) => rx.recv().await.map(|stream| {
                Ok(RawStream {
                    io: RawIo::Memory(stream),
                    peer_addr: format!("{} (client)", registration.name()),
                    ip: None,
                })
            }),
        }
    }
}

/// Starts the accept task of a new listener at `addr`.
pub(crate) fn spawn_listener(shared: Arc<Shared>, addr: String, source: Source) -> Listener {
    let (tx, incoming) = mpsc::channel(shared.settings.accept_backlog);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(accept_loop(
        shared,
        addr.clone(),
        source,
        tx,
        cancel.clone(),
    ));
    Listener {
        addr,
        incoming,
        cancel,
        task: Some(task),
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    addr: String,
    mut source: Source,
    tx: mpsc::Sender<connection::Connection>,
    cancel: CancellationToken,
) {
    let _guard = TaskGuard::new();
    let me = Arc::new(shared.settings.identity(Some(&addr)));
    // Dropped with this task: aborts every handshake still running.
    let mut handshakes = JoinSet::new();
    loop {
        let raw = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            next = source.next() => match next {
                None => break,
                Some(Ok(raw)) => raw,
                Some(Err(e)) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(listener = %addr, error = %e, "accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        if let Some(ip) = raw.ip {
            if shared.limiter.refuses(ip) {
                // Closed unread: no handshake work for an address that keeps failing.
                shared.failed(
                    Error::Refused {
                        reason: Refusal::RateLimited,
                        by_peer: false,
                    },
                    &raw.peer_addr,
                    true,
                );
                continue;
            }
        }
        if handshakes.len() >= shared.settings.max_pending_handshakes {
            shared.failed(
                Error::Refused {
                    reason: Refusal::Busy,
                    by_peer: false,
                },
                &raw.peer_addr,
                true,
            );
            continue;
        }
        let (shared, me, tx) = (shared.clone(), me.clone(), tx.clone());
        handshakes.spawn(async move {
            let _guard = TaskGuard::new();
            let peer_addr = raw.peer_addr;
            let served = shared
                .timed(&peer_addr, true, shared.serve(me, raw.io, &peer_addr))
                .await;
            // Failures are counted and logged (rate-limited) by `timed`.
            match served {
                Ok(conn) => {
                    let _ = tx.send(conn).await;
                }
                Err(_) => {
                    if let Some(ip) = raw.ip {
                        shared.limiter.failed(ip);
                    }
                }
            }
        });
    }
}
