//! A minimal HTTP/1.1 endpoint for Prometheus scrapes.
//!
//! It answers `GET /metrics` (and `GET /`) with the exposition text and closes the
//! connection; `HEAD` gets the headers only; other methods get 405 and other paths 404.
//! A request head larger than 8 KiB, or one that does not arrive within 5 s, gets 400 /
//! is dropped. At most 32 scrapes are served at once; further connections wait in the
//! kernel's accept queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::recorder::ShardedRecorder;

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONCURRENT: usize = 32;

pub(crate) async fn serve(
    listener: TcpListener,
    recorder: Arc<ShardedRecorder>,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set stays as small as the live ones.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                let recorder = recorder.clone();
                let cancel = cancel.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = handle(stream, &recorder) => {}
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                metrics::counter!("foundation_telemetry_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    conns.shutdown().await;
}

async fn handle(mut stream: TcpStream, recorder: &ShardedRecorder) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Some(end);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let response = match head {
        Ok(Some(end)) => respond(&buf[..end], recorder),
        Ok(None) if buf.len() > MAX_HEAD => plain(400, "Bad Request", "request head too large\n"),
        _ => return,
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn respond(head: &[u8], recorder: &ShardedRecorder) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return plain(405, "Method Not Allowed", "only GET and HEAD\n");
    }
    if path != "/metrics" && path != "/" {
        return plain(404, "Not Found", "metrics are at /metrics\n");
    }
    let body = recorder.render();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method == "GET" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
