//! Transport throughput over loopback TCP, each beside a raw tokio baseline in the same run.
//!
//! * `transport_bulk_64k`: 16 frames of 64 KiB per iteration over one authenticated
//!   connection (`Connection::feed` + `flush`, the receiver acknowledges each batch with a
//!   small frame) vs the same bytes copied through a plain `TcpStream` (`write_all` of each
//!   64 KiB buffer, the reader acknowledges each batch with one byte).
//! * `transport_small_64b`: 1024 frames of 64 bytes per iteration, same pattern, vs raw
//!   4-byte length-prefixed frames written from one buffer and read with a `BufReader`.
//!
//! Both sides of each pair use the same runtime (2 worker threads), the same batch and
//! the same acknowledgement, so the ratio isolates framing, envelope and connection costs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_distributed::transport::{
    ConnectionReceiver, ConnectionSender, Frame, Security, TcpTransport, Transport,
    TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 64 * 1024;
const BULK_BATCH: usize = 16;
const SMALL: usize = 64;
const SMALL_BATCH: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(node: &str) -> TransportSettings {
    TransportSettings {
        cluster: "bench".into(),
        node: node.into(),
        security: Security::InsecurePlaintext,
        ..Default::default()
    }
}

/// An authenticated loopback connection whose far end acknowledges every `batch` frames.
async fn ours(batch: usize) -> (ConnectionSender, ConnectionReceiver) {
    let server_side = TcpTransport::new(settings("server")).unwrap();
    let client_side = TcpTransport::new(settings("client")).unwrap();
    let mut listener = server_side.listen("127.0.0.1:0").await.unwrap();
    let client = client_side
        .connect(listener.local_addr(), "bulk", 0)
        .await
        .unwrap();
    let mut server = listener.accept().await.unwrap();
    tokio::spawn(async move {
        let _listener = listener;
        let mut seen = 0usize;
        while let Ok(Some(frame)) = server.recv().await {
            if let Frame::Data { .. } = frame {
                seen += 1;
                if seen == batch {
                    seen = 0;
                    if server.send(0, Bytes::from_static(b"ack")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    client.split()
}

async fn ours_batch(
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

/// A plain loopback TCP connection whose far end reads `frame`-byte units (raw bytes,
/// or 4-byte length-prefixed frames when `prefixed`) and acknowledges every `batch`.
async fn raw(frame: usize, batch: usize, prefixed: bool) -> TcpStream {
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

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; BULK]);
    let mut group = c.benchmark_group("transport_bulk_64k");
    group.throughput(Throughput::Bytes((BULK * BULK_BATCH) as u64));
    group.measurement_time(Duration::from_secs(5));

    let (mut tx, mut rx) = rt.block_on(ours(BULK_BATCH));
    group.bench_function("foundation_transport", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    ours_batch(&mut tx, &mut rx, &payload, BULK_BATCH).await;
                }
                start.elapsed()
            })
        })
    });

    let mut stream = rt.block_on(raw(BULK, BULK_BATCH, false));
    group.bench_function("raw_tokio_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut ack = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BULK_BATCH {
                        stream.write_all(&payload).await.unwrap();
                    }
                    stream.read_exact(&mut ack).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn small(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    let mut group = c.benchmark_group("transport_small_64b");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    group.measurement_time(Duration::from_secs(5));

    let (mut tx, mut rx) = rt.block_on(ours(SMALL_BATCH));
    group.bench_function("foundation_transport", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    ours_batch(&mut tx, &mut rx, &payload, SMALL_BATCH).await;
                }
                start.elapsed()
            })
        })
    });

    let mut stream = rt.block_on(raw(SMALL, SMALL_BATCH, true));
    let mut wire = Vec::with_capacity((4 + SMALL) * SMALL_BATCH);
    for _ in 0..SMALL_BATCH {
        wire.extend_from_slice(&(SMALL as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    group.bench_function("raw_tokio_length_prefixed", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut ack = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    stream.write_all(&wire).await.unwrap();
                    stream.read_exact(&mut ack).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bulk, small);
criterion_main!(benches);
