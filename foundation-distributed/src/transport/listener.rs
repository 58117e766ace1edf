//! The accept task shared by both transports.

use std::sync::Arc;
use std::time::Duration;

use foundation_beam::core::telemetry::TaskGuard;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connection::{self, BoxRead, BoxWrite, HandshakeIo};
use super::handshake::{self, ServerHandshake};
use super::{Listener, Refusal, Shared};
use crate::Error;

/// A raw, unauthenticated stream from a listening socket or `mem://` name.
pub(crate) struct RawStream {
    pub reader: BoxRead,
    pub writer: BoxWrite,
    pub peer_addr: String,
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
                let (r, w) = stream.into_split();
                RawStream {
                    reader: Box::new(r),
                    writer: Box::new(w),
                    peer_addr: peer.to_string(),
                }
            })),
            Source::Memory(rx, registration) => rx.recv().await.map(|stream| {
                let (r, w) = tokio::io::split(stream);
                Ok(RawStream {
                    reader: Box::new(r),
                    writer: Box::new(w),
                    peer_addr: format!("{} (client)", registration.name()),
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
        if handshakes.len() >= shared.settings.max_pending_handshakes {
            connection::count_failed(
                Error::Refused {
                    reason: Refusal::Busy,
                    by_peer: false,
                },
                &raw.peer_addr,
            );
            continue;
        }
        let (shared, me, tx) = (shared.clone(), me.clone(), tx.clone());
        handshakes.spawn(async move {
            let _guard = TaskGuard::new();
            let peer_addr = raw.peer_addr.clone();
            let io = HandshakeIo {
                reader: raw.reader,
                writer: raw.writer,
                peer_addr: raw.peer_addr,
                max_frame: shared.settings.max_frame,
                transport: shared.kind,
            };
            let machine = ServerHandshake::new(me, handshake::nonce());
            let served = shared
                .timed(&peer_addr, connection::serve_handshake(io, machine))
                .await;
            // Failures are counted and logged where they happen.
            if let Ok(conn) = served {
                let _ = tx.send(conn).await;
            }
        });
    }
}
