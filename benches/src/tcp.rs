//! Loopback TCP harnesses for the transport and security benches: a Foundation
//! connection and a raw tokio `TcpStream`, each with a far end that acknowledges every
//! batch, so that both sides of a ratio pay for the same round trip per batch.

use std::time::Instant;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use foundation_distributed::transport::{
    ConnectionReceiver, ConnectionSender, Frame, Security, TcpTransport, Transport,
    TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Bytes per frame of the bulk benches.
pub const BULK: usize = 64 * 1024;
/// Frames per acknowledged batch of the bulk benches.
pub const BULK_BATCH: usize = 16;
/// Bytes per frame of the small-frame benches.
pub const SMALL: usize = 64;
/// Frames per acknowledged batch of the small-frame benches.
pub const SMALL_BATCH: usize = 1024;

/// Transport settings of a bench node in cluster `bench`.
pub fn settings(node: &str, security: Security) -> TransportSettings {
    TransportSettings {
        cluster: "bench".into(),
        node: node.into(),
        security,
        ..Default::default()
    }
}

/// A loopback connection from `client` to `server` whose far end acknowledges every
/// `batch` data frames with one small frame.
pub async fn foundation_acked(
    client: &TcpTransport,
    server: &TcpTransport,
    batch: usize,
) -> (ConnectionSender, ConnectionReceiver) {
    let mut listener = server.listen("127.0.0.1:0").await.unwrap();
    let conn = client
        .connect(listener.local_addr(), "bulk", 0)
        .await
        .unwrap();
    let mut far = listener.accept().await.unwrap();
    tokio::spawn(async move {
        let _listener = listener;
        let mut seen = 0usize;
        while let Ok(Some(frame)) = far.recv().await {
            if let Frame::Data { .. } = frame {
                seen += 1;
                if seen == batch {
                    seen = 0;
                    if far.send(0, Bytes::from_static(b"ack")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    conn.split()
}

/// One batch through [`foundation_acked`]: `n` frames of `payload` (`feed`, then one
/// `flush`), then waits for the acknowledgement.
pub async fn foundation_batch(
    tx: &mut ConnectionSender,
    rx: &mut ConnectionReceiver,
    payload: &Bytes,
    n: usize,
) {
    for _ in 0..n {
        tx.feed(1, payload.clone()).await.unwrap();
    }
    tx.flush().await.unwrap();
    assert!(matches!(rx.recv().await.unwrap(), Some(Frame::Data { .. })));
}

/// A plain loopback TCP connection whose far end reads `frame`-byte units — raw bytes,
/// or 4-byte length-prefixed frames when `prefixed` — and acknowledges every `batch` of
/// them with one byte.
pub async fn raw_acked(frame: usize, batch: usize, prefixed: bool) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    server.set_nodelay(true).unwrap();
    tokio::spawn(async move {
        let (r, mut w) = server.into_split();
        if prefixed {
            let mut r = BufReader::with_capacity(64 * 1024, r);
            let mut body = vec![0u8; frame];
            loop {
                for _ in 0..batch {
                    let Ok(len) = r.read_u32().await else { return };
                    body.resize(len as usize, 0);
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                }
                if w.write_all(&[1]).await.is_err() {
                    return;
                }
            }
        } else {
            let mut r = r;
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = 0usize;
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen += n,
                }
                while seen >= frame * batch {
                    seen -= frame * batch;
                    if w.write_all(&[1]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    client
}

/// One batch through [`raw_acked`] (unprefixed): `n` writes of `payload`, then waits
/// for the one-byte acknowledgement.
pub async fn raw_batch(stream: &mut TcpStream, payload: &[u8], n: usize) {
    for _ in 0..n {
        stream.write_all(payload).await.unwrap();
    }
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await.unwrap();
}

/// Benches, as `name`, acknowledged batches of `batch` frames of `payload` over a
/// [`foundation_acked`] connection from `client` to `server`.
pub fn bench_foundation(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    (client, server): (&TcpTransport, &TcpTransport),
    payload: &Bytes,
    batch: usize,
) {
    let (mut tx, mut rx) = rt.block_on(foundation_acked(client, server, batch));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    foundation_batch(&mut tx, &mut rx, payload, batch).await;
                }
                start.elapsed()
            })
        })
    });
}

/// Benches, as `name`, batches over a [`raw_acked`] stream: `writes` writes of `chunk`,
/// then the one-byte acknowledgement.
pub fn bench_raw(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    mut stream: TcpStream,
    chunk: &[u8],
    writes: usize,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    raw_batch(&mut stream, chunk, writes).await;
                }
                start.elapsed()
            })
        })
    });
}
