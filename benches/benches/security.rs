//! The cost of transport security on loopback TCP, each mode beside its baseline in the
//! same run.
//!
//! * `security_bulk_64k`: 16 frames of 64 KiB per iteration over one connection
//!   (`feed` + `flush`, the receiver acknowledges each batch with a small frame) in
//!   `tls`, `secret` (AES-256-GCM records) and `insecure_plaintext` mode, vs the same
//!   bytes through a plain tokio `TcpStream` (`raw_tokio_tcp`, one-byte ack per batch).
//!   Goal: encrypted modes ≥ 0.6× raw TCP.
//! * `security_small_64b`: 1024 frames of 64 bytes per iteration, same pattern, in the
//!   three modes. Goal: encrypted modes ≥ 0.7× the plaintext mode.
//! * `security_handshake`: one `connect` + `accept` (TCP connect, TLS if any, the
//!   Foundation handshake) per iteration in each mode, beside a bare TCP connect + accept.
//!
//! Run: `cargo bench -p foundation-benches --bench security`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_distributed::transport::tls::dev;
use foundation_distributed::transport::{
    ClusterSecret, ConnectionReceiver, ConnectionSender, Frame, Listener, Security, TcpTransport,
    Transport, TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The modes measured, with transports for a client and a server node.
struct Modes {
    dir: std::path::PathBuf,
    modes: Vec<(&'static str, TcpTransport, TcpTransport)>,
}

impl Drop for Modes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(node: &str, security: Security) -> TransportSettings {
    TransportSettings {
        cluster: "bench".into(),
        node: node.into(),
        security,
        ..Default::default()
    }
}

fn modes() -> Modes {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fd-bench-security-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let ca = dev::generate_ca(dir.join("ca"), "bench").unwrap();
    let tls = |node: &str| {
        let files = dev::issue_node_cert(&ca, node, dir.join(node)).unwrap();
        TcpTransport::new(settings(node, Security::Tls(files))).unwrap()
    };
    let secret = ClusterSecret::generate();
    let keyed =
        |node: &str| TcpTransport::new(settings(node, Security::Secret(secret.clone()))).unwrap();
    let plain =
        |node: &str| TcpTransport::new(settings(node, Security::InsecurePlaintext)).unwrap();
    let modes = vec![
        ("tls", tls("client"), tls("server")),
        ("secret_aead", keyed("client"), keyed("server")),
        ("insecure_plaintext", plain("client"), plain("server")),
    ];
    Modes { dir, modes }
}

/// A loopback connection whose far end acknowledges every `batch` frames.
async fn ours(
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

/// A plain loopback TCP connection whose far end acknowledges every `frame * batch`
/// bytes with one byte.
async fn raw(frame: usize, batch: usize) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    server.set_nodelay(true).unwrap();
    tokio::spawn(async move {
        let (mut r, mut w) = server.into_split();
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
    });
    client
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let modes = modes();
    let payload = Bytes::from(vec![0x5a; BULK]);
    let mut group = c.benchmark_group("security_bulk_64k");
    group.throughput(Throughput::Bytes((BULK * BULK_BATCH) as u64));
    group.measurement_time(Duration::from_secs(4));

    for (name, client, server) in &modes.modes {
        let (mut tx, mut rx) = rt.block_on(ours(client, server, BULK_BATCH));
        group.bench_function(*name, |b| {
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
    }

    let mut stream = rt.block_on(raw(BULK, BULK_BATCH));
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
    let modes = modes();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    let mut group = c.benchmark_group("security_small_64b");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    group.measurement_time(Duration::from_secs(4));
    for (name, client, server) in &modes.modes {
        let (mut tx, mut rx) = rt.block_on(ours(client, server, SMALL_BATCH));
        group.bench_function(*name, |b| {
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
    }
    group.finish();
}

async fn one_handshake(client: &TcpTransport, listener: &mut Listener) {
    let addr = listener.local_addr().to_owned();
    let (conn, accepted) = tokio::join!(client.connect(&addr, "c", 0), listener.accept());
    drop((conn.unwrap(), accepted.unwrap()));
}

fn handshake(c: &mut Criterion) {
    let rt = runtime();
    let modes = modes();
    let mut group = c.benchmark_group("security_handshake");
    group.measurement_time(Duration::from_secs(4));
    for (name, client, server) in &modes.modes {
        let mut listener = rt.block_on(server.listen("127.0.0.1:0")).unwrap();
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        one_handshake(client, &mut listener).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    group.bench_function("raw_tcp_connect", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let (conn, accepted) =
                        tokio::join!(TcpStream::connect(addr), listener.accept());
                    drop((conn.unwrap(), accepted.unwrap()));
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bulk, small, handshake);
criterion_main!(benches);
