//! Loopback TCP harnesses for the transport and security benches: a Foundation
//! connection and a raw tokio `TcpStream`, each with a far end that acknowledges every
//! batch, so that both sides of a ratio pay for the same round trip per batch.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
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

/// A workload of the transport and security benches: acknowledged batches of `batch`
/// frames of `frame` bytes each.
#[derive(Debug, Clone, Copy)]
pub struct Batches {
    /// Bytes per frame.
    pub frame: usize,
    /// Frames per acknowledged batch.
    pub batch: usize,
    /// Report throughput in bytes (else in frames).
    pub in_bytes: bool,
}

/// 16 frames of 64 KiB per batch, throughput in bytes.
pub const BULK_64K: Batches = Batches {
    frame: BULK,
    batch: BULK_BATCH,
    in_bytes: true,
};

/// 1024 frames of 64 bytes per batch, throughput in frames.
pub const SMALL_64B: Batches = Batches {
    frame: SMALL,
    batch: SMALL_BATCH,
    in_bytes: false,
};

impl Batches {
    /// One frame's payload.
    pub fn payload(&self) -> Bytes {
        Bytes::from(vec![0x5a; self.frame])
    }

    /// A benchmark group named `name` measuring one batch per iteration for `secs`.
    pub fn group<'a>(
        &self,
        c: &'a mut Criterion,
        name: &str,
        secs: u64,
    ) -> BenchmarkGroup<'a, WallTime> {
        let mut group = c.benchmark_group(name);
        group.throughput(if self.in_bytes {
            Throughput::Bytes((self.frame * self.batch) as u64)
        } else {
            Throughput::Elements(self.batch as u64)
        });
        group.measurement_time(Duration::from_secs(secs));
        group
    }

    /// Benches, as `name`, batches over a [`foundation_acked`] connection from `client`
    /// to `server`.
    pub fn bench_foundation(
        &self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        rt: &Runtime,
        name: &str,
        (client, server): (&TcpTransport, &TcpTransport),
    ) {
        let (payload, batch) = (self.payload(), self.batch);
        let (mut tx, mut rx) = rt.block_on(foundation_acked(client, server, batch));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        foundation_batch(&mut tx, &mut rx, &payload, batch).await;
                    }
                    start.elapsed()
                })
            })
        });
    }

    /// Benches, as `name`, the raw baseline over a [`raw_acked`] stream: each frame
    /// written as is (`prefixed` false), or the whole batch as 4-byte length-prefixed
    /// frames from one buffer in one write; then the one-byte acknowledgement.
    pub fn bench_raw(
        &self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        rt: &Runtime,
        name: &str,
        prefixed: bool,
    ) {
        let payload = self.payload();
        let (chunk, writes) = if prefixed {
            let mut wire = Vec::with_capacity((4 + self.frame) * self.batch);
            for _ in 0..self.batch {
                wire.extend_from_slice(&(self.frame as u32).to_be_bytes());
                wire.extend_from_slice(&payload);
            }
            (wire, 1)
        } else {
            (payload.to_vec(), self.batch)
        };
        let mut stream = rt.block_on(raw_acked(self.frame, self.batch, prefixed));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        raw_batch(&mut stream, &chunk, writes).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
}
