//! Measurements through the public API, shared by the assumption tests
//! (`tests/assumptions.rs`) and the report (`benches/src/bin/report.rs`). Each returns
//! raw figures; judging them is the caller's business.
//!
//! Every node scenario runs on a [`Cluster`] of two or more nodes in this process and
//! measures what a user calls: [`Node::send`](foundation_distributed::node::Node::send),
//! received through [`Node::register`](foundation_distributed::node::Node::register).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foundation_distributed::channel::{ChannelSettings, Urgency};
use foundation_distributed::node::SendOptions;
use foundation_distributed::topology::TopologyKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::cluster::{Cluster, ClusterSpec, HarnessError, Net};
use crate::latency::LatencyRecorder;
use crate::memory;

/// Urgent send options.
pub const URGENT: SendOptions = SendOptions {
    urgency: Urgency::Urgent,
    key: None,
};

/// A channel table with one channel (`coordination`) of one connection, every route
/// pointing at it: a plain single-connection link, the baseline of channel separation.
pub fn single_connection_channels() -> ChannelSettings {
    ChannelSettings::single_connection()
}

/// Nanoseconds since a process-wide origin: a timestamp both ends of an in-process link
/// can compare.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let o = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(o.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What [`urgent_during_bulk`] measured.
#[derive(Debug, Clone)]
pub struct HolOutcome {
    /// Urgent message latency, send to receipt.
    pub urgent: LatencyRecorder,
    /// Probes sent with `Ok` and not received within 10 s after the last was sent.
    pub probes_lost: u64,
    /// Probes whose `Node::send` returned an error (reported to the caller, not lost).
    pub probes_refused: u64,
    /// Bulk bytes received during the run.
    pub bulk_bytes: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Head-of-line blocking through the node API: node `n0` streams `bulk_size`-byte
/// messages to `n1` from `senders` tasks while `probes` urgent 8-byte messages go every
/// `every`; each probe's latency is send to receipt.
///
/// # Errors
/// If the cluster does not start or converge.
pub async fn urgent_during_bulk(
    net: Net,
    channels: ChannelSettings,
    bulk_size: usize,
    senders: usize,
    probes: usize,
    every: Duration,
) -> Result<HolOutcome, HarnessError> {
    let cluster = Cluster::start(ClusterSpec::new(2, net).channels(channels)).await?;
    cluster.converge(Duration::from_secs(10)).await?;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());
    let mut bulk_rx = b.register::<Bytes>("bulk");
    let mut urgent_rx = b.register::<u64>("urgent");
    let bulk_bytes = Arc::new(AtomicU64::new(0));
    let counted = bulk_bytes.clone();
    let bulk_sink = tokio::spawn(async move {
        while let Some((_, m)) = bulk_rx.recv().await {
            counted.fetch_add(m.len() as u64, Ordering::Relaxed);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![0xA5u8; bulk_size]);
    let mut bulk_tasks = Vec::new();
    for _ in 0..senders {
        let (a, stop, payload) = (a.clone(), stop.clone(), payload.clone());
        bulk_tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if a.send("n1", "bulk", &payload, SendOptions::default())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    // Let the bulk transfer fill the pipes before probing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let urgent = Arc::new(parking_lot::Mutex::new(LatencyRecorder::new()));
    let recorder = {
        let urgent = urgent.clone();
        tokio::spawn(async move {
            while let Some((_, sent)) = urgent_rx.recv().await {
                urgent
                    .lock()
                    .record(Duration::from_nanos(now_ns().saturating_sub(sent)));
            }
        })
    };
    let mut sent_ok = 0u64;
    for _ in 0..probes {
        tokio::time::sleep(every).await;
        if a.send("n1", "urgent", &now_ns(), URGENT).await.is_ok() {
            sent_ok += 1;
        }
    }
    let elapsed = start.elapsed();
    // Stop the bulk transfer; probes still on their way keep the latency they get.
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while urgent.lock().len() < sent_ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder.abort();
    let urgent = urgent.lock().clone();
    for t in bulk_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    bulk_sink.abort();
    cluster.shutdown().await;
    Ok(HolOutcome {
        probes_lost: sent_ok.saturating_sub(urgent.len()),
        probes_refused: probes as u64 - sent_ok,
        urgent,
        bulk_bytes: bulk_bytes.load(Ordering::Relaxed),
        elapsed,
    })
}

/// What [`stream`] measured.
#[derive(Debug, Clone, Copy)]
pub struct StreamOutcome {
    /// Messages received.
    pub received: u64,
    /// Time from the first send to the last receipt.
    pub elapsed: Duration,
}

impl StreamOutcome {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How [`stream`] encodes its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `bytes::Bytes`: a MessagePack `bin`, one copy into the frame.
    Bytes,
    /// `Vec<u8>`: serde's default, a MessagePack array of integers.
    VecU8,
}

/// `n` messages of `size` bytes from `n0` to `n1` through `Node::send` with at most
/// `window` in flight (the sender waits for receipts beyond it, so no receiver queue
/// overflows).
///
/// # Errors
/// If the cluster does not start or converge.
pub async fn stream(
    net: Net,
    channels: ChannelSettings,
    encoding: Encoding,
    size: usize,
    n: u64,
    window: u64,
) -> Result<StreamOutcome, HarnessError> {
    let cluster = Cluster::start(
        ClusterSpec::new(2, net)
            .channels(channels)
            .receiver_capacity(window.max(1) as usize * 2),
    )
    .await?;
    cluster.converge(Duration::from_secs(10)).await?;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let sink = {
        let (received, done) = (received.clone(), done.clone());
        match encoding {
            Encoding::Bytes => {
                let mut rx = b.register::<Bytes>("s");
                tokio::spawn(async move {
                    while let Some((_, m)) = rx.recv().await {
                        std::hint::black_box(m);
                        if received.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            done.notify_one();
                        }
                    }
                })
            }
            Encoding::VecU8 => {
                let mut rx = b.register::<Vec<u8>>("s");
                tokio::spawn(async move {
                    while let Some((_, m)) = rx.recv().await {
                        std::hint::black_box(m);
                        if received.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            done.notify_one();
                        }
                    }
                })
            }
        }
    };
    let bytes = Bytes::from(vec![0xC3u8; size]);
    let vec = vec![0xC3u8; size];
    let start = Instant::now();
    let finished = done.notified();
    tokio::pin!(finished);
    finished.as_mut().enable();
    for i in 0..n {
        while i.saturating_sub(received.load(Ordering::Relaxed)) >= window {
            tokio::task::yield_now().await;
        }
        let r = match encoding {
            Encoding::Bytes => a.send("n1", "s", &bytes, SendOptions::default()).await,
            Encoding::VecU8 => a.send("n1", "s", &vec, SendOptions::default()).await,
        };
        if r.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), finished).await;
    let elapsed = start.elapsed();
    sink.abort();
    cluster.shutdown().await;
    Ok(StreamOutcome {
        received: received.load(Ordering::Relaxed),
        elapsed,
    })
}

/// The plain baseline of [`stream`]: one loopback TCP connection, frames of a 4-byte
/// length and the payload, buffered writer and reader, `n` messages of `size` bytes.
///
/// # Errors
/// I/O errors of the loopback connection.
pub async fn raw_tcp_stream(size: usize, n: u64) -> std::io::Result<StreamOutcome> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let mut r = BufReader::with_capacity(64 * 1024, sock);
        let mut buf = vec![0u8; size];
        let mut got = 0u64;
        while got < n {
            let len = r.read_u32().await? as usize;
            buf.resize(len, 0);
            r.read_exact(&mut buf).await?;
            std::hint::black_box(&buf);
            got += 1;
        }
        Ok::<_, std::io::Error>((got, Instant::now()))
    });
    let sock = tokio::net::TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let mut w = BufWriter::with_capacity(64 * 1024, sock);
    let payload = vec![0xC3u8; size];
    let start = Instant::now();
    for _ in 0..n {
        w.write_u32(size as u32).await?;
        w.write_all(&payload).await?;
    }
    w.flush().await?;
    let (got, end) = reader.await.map_err(std::io::Error::other)??;
    Ok(StreamOutcome {
        received: got,
        elapsed: end - start,
    })
}

/// Connections and memory of a converged cluster.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// Nodes.
    pub nodes: usize,
    /// Most connections (opened by or to it) of one node.
    pub max_connections: usize,
    /// Mean connections per node.
    pub mean_connections: f64,
    /// Heap growth of the whole cluster divided by the nodes (0 without the counting
    /// allocator).
    pub heap_per_node: f64,
    /// Heap growth of the whole cluster.
    pub heap_total: usize,
}

/// Starts `nodes` in-memory nodes with `topology` (client-server: `servers` servers),
/// waits for convergence and for links to settle, and measures its footprint.
///
/// # Errors
/// If the cluster does not start or converge.
pub async fn footprint(
    topology: TopologyKind,
    nodes: usize,
    servers: usize,
) -> Result<Footprint, HarnessError> {
    let before = memory::heap_now();
    let cluster =
        Cluster::start(ClusterSpec::new(nodes, Net::Memory).topology(topology, servers)).await?;
    cluster.converge(Duration::from_secs(30)).await?;
    // Links are opened by heartbeat rounds; wait until the count is stable.
    let mut last = cluster.connections_total();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cluster.connections_total();
        if now == last {
            break;
        }
        last = now;
    }
    let heap_total = memory::heap_now().saturating_sub(before);
    let conns: Vec<usize> = cluster
        .names()
        .iter()
        .map(|n| cluster.connections_of(n))
        .collect();
    let fp = Footprint {
        nodes,
        max_connections: conns.iter().copied().max().unwrap_or(0),
        mean_connections: conns.iter().sum::<usize>() as f64 / nodes.max(1) as f64,
        heap_per_node: heap_total as f64 / nodes.max(1) as f64,
        heap_total,
    };
    cluster.shutdown().await;
    Ok(fp)
}

/// Least-squares line `y = a + b x` through the points; `(a, b)`.
pub fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (points.first().map_or(0.0, |p| p.1), 0.0);
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = if sxx == 0.0 { 0.0 } else { sxy / sxx };
    (my - b * mx, b)
}

/// Largest `n` with `a + b n <= budget` (a linear model of per-node cost in cluster
/// size), capped at `cap`; `cap` when the cost does not grow.
pub fn largest_within(model: (f64, f64), budget: f64, cap: usize) -> usize {
    let (a, b) = model;
    if b <= 0.0 {
        return if a <= budget { cap } else { 0 };
    }
    let n = ((budget - a) / b).floor();
    if n < 0.0 {
        0
    } else {
        (n as usize).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_and_budget() {
        let (a, b) = fit_line(&[(4.0, 54.0), (8.0, 126.0), (16.0, 270.0)]);
        assert!(
            (b - 18.0).abs() < 1e-9 && (a + 18.0).abs() < 1e-9,
            "{a} {b}"
        );
        assert_eq!(largest_within((a, b), 1024.0, 1_000_000), 57);
        assert_eq!(largest_within((10.0, 0.0), 1024.0, 500), 500);
        assert_eq!(largest_within((2000.0, 0.0), 1024.0, 500), 0);
    }
}
