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

use criterion::{criterion_group, criterion_main, Criterion};
use foundation_benches::runtime;
use foundation_benches::tcp::{settings, BULK_64K, SMALL_64B};
use foundation_distributed::transport::tls::dev;
use foundation_distributed::transport::{
    ClusterSecret, Listener, Security, TcpTransport, Transport,
};
use tokio::net::{TcpListener, TcpStream};

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

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let modes = modes();
    let mut group = BULK_64K.group(c, "security_bulk_64k", 4);
    for (name, client, server) in &modes.modes {
        BULK_64K.bench_foundation(&mut group, &rt, name, (client, server));
    }
    BULK_64K.bench_raw(&mut group, &rt, "raw_tokio_tcp", false);
    group.finish();
}

fn small(c: &mut Criterion) {
    let rt = runtime();
    let modes = modes();
    let mut group = SMALL_64B.group(c, "security_small_64b", 4);
    for (name, client, server) in &modes.modes {
        SMALL_64B.bench_foundation(&mut group, &rt, name, (client, server));
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
