//! The node, measured through the `Node` API on loopback TCP, each figure beside its
//! baseline measured in the same run:
//!
//! 1. **urgent request p99 during a bulk transfer**: while node `a` sends
//!    `NODE_BENCH_MIB` MiB (default 256) to `b` in 64 KiB `send`s, it makes a `request`
//!    to `b` every millisecond; p99 of the round trips, per run, for the node's default
//!    channels and for the same nodes with every channel folded onto one connection.
//! 2. **small messages**: `NODE_BENCH_SMALL` (default 1,000,000) 8-byte messages `a` →
//!    `b`, counted at `b`'s receiver (zero loss checked), once with one `send().await`
//!    per message and once with `send_batch` (`NODE_BENCH_BATCH` messages per call,
//!    default 1024), against raw length-prefixed TCP writes of the same pre-encoded
//!    per-message frames (buffered writes, one reader counting frames).
//! 3. **request/reply round trip**: sequential 64-byte `request`s against a raw TCP
//!    64-byte ping-pong.
//!
//! Prints tables; run with `cargo bench -p foundation-benches --bench node`
//! (`NODE_BENCH_RUNS`, default 10, sets the runs of part 1; `NODE_BENCH_EVENT_INTERVAL`
//! sets tokio's `event_interval`, default tokio's 61: how many task polls a busy worker
//! makes between two looks at the I/O driver).

use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_distributed::channel::{ChannelSettings, ChannelSpec, Priority, COORDINATION};
use foundation_distributed::node::{Node, NodeSettings, SendOptions};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};

/// The 1-minute load average (the machine may be shared: printed beside each part).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The security mode of the bench's links: the default (secret-keyed AEAD), or plaintext
/// with `FOUNDATION_BENCH_INSECURE=1` to compare the cost of encryption.
fn security() -> Security {
    static SECRET: std::sync::OnceLock<ClusterSecret> = std::sync::OnceLock::new();
    if std::env::var("FOUNDATION_BENCH_INSECURE").is_ok_and(|v| v == "1") {
        Security::InsecurePlaintext
    } else {
        Security::Secret(SECRET.get_or_init(ClusterSecret::generate).clone())
    }
}

fn transport(node: &str) -> Arc<dyn Transport> {
    Arc::new(
        TcpTransport::new(TransportSettings {
            cluster: "bench".into(),
            node: node.into(),
            security: security(),
            ..Default::default()
        })
        .expect("settings"),
    )
}

async fn pair(settings: NodeSettings) -> (Node, Node) {
    let a = Node::start(transport("a"), "a", settings.clone())
        .await
        .expect("a");
    let b = Node::start(transport("b"), "b", settings).await.expect("b");
    b.join(&[a.addr()]).await.expect("join");
    // Both links up.
    for _ in 0..500 {
        if a.members().iter().filter(|m| m.up).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, b)
}

/// A byte blob serialized as MessagePack `bin`.
struct Blob(Vec<u8>);

impl serde::Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn one_connection() -> NodeSettings {
    let mut channels = ChannelSettings {
        channels: vec![ChannelSpec::new(COORDINATION, Priority::High, 1)],
        ..ChannelSettings::default()
    };
    let r = &mut channels.route;
    r.urgent_channel = COORDINATION.into();
    r.bulk_channel = COORDINATION.into();
    r.background_channel = COORDINATION.into();
    r.default_channel = COORDINATION.into();
    NodeSettings {
        channels,
        // Bulk messages arrive on `coordination`, where the node never waits for a
        // receiver: make room for all of them so none is dropped.
        receiver_capacity: 1 << 16,
        ..NodeSettings::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One run of part 1: (seconds, request latencies).
async fn urgent_during_bulk(settings: NodeSettings, mib: usize) -> (f64, Vec<Duration>) {
    let (a, b) = pair(settings).await;
    b.serve("ping", |_from, x: u64| async move { x });
    let mut inbox = b.register::<Blob>("bulk");
    let chunks = mib * 16;
    let consumer = tokio::spawn(async move {
        for _ in 0..chunks {
            inbox.recv().await.expect("bulk");
        }
    });
    let started = Instant::now();
    let bulk = {
        let a = a.clone();
        tokio::spawn(async move {
            let blob = Blob(vec![1u8; 64 * 1024]);
            for i in 0..chunks {
                let opts = SendOptions {
                    key: Some((i % 5) as u64),
                    ..SendOptions::default()
                };
                a.send("b", "bulk", &blob, opts).await.expect("bulk send");
            }
        })
    };
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while !consumer.is_finished() {
        tick.tick().await;
        let t = Instant::now();
        let _: u64 = a
            .request("b", "ping", &1u64, Duration::from_secs(10))
            .await
            .expect("ping");
        latencies.push(t.elapsed());
    }
    bulk.await.expect("bulk task");
    let secs = started.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    latencies.sort();
    (secs, latencies)
}

/// Part 2 through the node: msg/s until the receiver has counted them all; `batch` > 0
/// sends with `send_batch` of that many messages per call.
async fn node_small(n: usize, batch: usize) -> (f64, usize) {
    let (a, b) = pair(NodeSettings::default()).await;
    let mut inbox = b.register::<u64>("small");
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        got
    });
    let t = Instant::now();
    if batch == 0 {
        for i in 0..n {
            let opts = SendOptions {
                key: Some((i % 2) as u64),
                ..SendOptions::default()
            };
            a.send("b", "small", &(i as u64), opts).await.expect("send");
        }
    } else {
        let mut msgs = Vec::with_capacity(batch);
        let mut i = 0;
        while i < n {
            msgs.clear();
            msgs.extend((i..(i + batch).min(n)).map(|v| v as u64));
            let opts = SendOptions {
                key: Some(((i / batch) % 2) as u64),
                ..SendOptions::default()
            };
            a.send_batch("b", "small", &msgs, opts)
                .await
                .expect("send_batch");
            i += msgs.len();
        }
    }
    let got = consumer.await.expect("consumer");
    let secs = t.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    (n as f64 / secs, got)
}

/// The bytes of one node message of part 2 (the node's wire encoding of a one-message
/// `SendBatch` of a `u64` from `a` to `b`'s `small`, what `send` produces: header, the
/// message's 4-byte length, the body), plus the 4-byte length prefix, for the raw
/// baseline. (The node's frame adds the transport's envelope and an 8-byte key on top;
/// messages the sender's queue appends to a waiting frame add only their length and
/// body.)
fn small_frame() -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum Wire {
        Gossip,
        Heartbeat,
        Topology,
        Send,
        Request,
        Reply,
        Broadcast,
        Acked,
        Ack,
        Cancel,
        SendBatch {
            to_node: String,
            to_name: String,
            from: String,
        },
    }
    let w = Wire::SendBatch {
        to_node: "b".into(),
        to_name: "small".into(),
        from: "a".into(),
    };
    let mut payload = rmp_serde::to_vec(&w).expect("wire");
    let body = rmp_serde::to_vec(&123_456u64).expect("body");
    payload.extend((body.len() as u32).to_be_bytes());
    payload.extend(body);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// Part 2 baseline: raw length-prefixed TCP writes of pre-encoded frames.
async fn raw_small(n: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        let (mut have, mut got) = (0usize, 0usize);
        while got < n {
            let r = s.read(&mut buf[have..]).await.expect("read");
            if r == 0 {
                break;
            }
            have += r;
            let mut at = 0;
            while have - at >= 4 {
                let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
                if have - at < 4 + len {
                    break;
                }
                at += 4 + len;
                got += 1;
            }
            buf.copy_within(at..have, 0);
            have -= at;
        }
        got
    });
    let frame = small_frame();
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut w = BufWriter::with_capacity(64 * 1024, s);
    let t = Instant::now();
    for _ in 0..n {
        w.write_all(&frame).await.expect("write");
    }
    w.flush().await.expect("flush");
    let got = reader.await.expect("reader");
    assert_eq!(got, n);
    n as f64 / t.elapsed().as_secs_f64()
}

/// Part 3 through the node: mean, p50 and p99 of sequential 64-byte requests.
async fn node_rtt(n: usize) -> (Duration, Duration, Duration) {
    let (a, b) = pair(NodeSettings::default()).await;
    b.serve("echo", |_from, x: Blob| async move { x });
    let payload = Blob(vec![5u8; 64]);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: Blob = a
            .request("b", "echo", &payload, Duration::from_secs(5))
            .await
            .expect("echo");
        v.push(t.elapsed());
    }
    a.shutdown().await;
    b.shutdown().await;
    let mean = v.iter().sum::<Duration>() / n as u32;
    v.sort();
    (mean, percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Part 3 baseline: raw TCP 64-byte ping-pong (mean, p50, p99).
async fn raw_rtt(n: usize) -> (Duration, Duration, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let mut buf = [5u8; 64];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&buf).await.expect("write");
        c.read_exact(&mut buf).await.expect("read");
        v.push(t.elapsed());
    }
    drop(c);
    let _ = server.await;
    let mean = v.iter().sum::<Duration>() / n as u32;
    v.sort();
    (mean, percentile(&v, 0.5), percentile(&v, 0.99))
}

fn main() {
    let mib = env("NODE_BENCH_MIB", 256);
    let runs = env("NODE_BENCH_RUNS", 10);
    let small = env("NODE_BENCH_SMALL", 1_000_000);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if let Ok(Ok(n)) = std::env::var("NODE_BENCH_EVENT_INTERVAL").map(|v| v.parse::<u32>()) {
        println!("tokio event_interval = {n}");
        builder.event_interval(n);
    }
    let rt = builder.build().expect("runtime");

    println!(
        "1. urgent request p99 while {mib} MiB go a -> b in 64 KiB sends (request every 1 ms); load {}",
        load()
    );
    println!(
        "{:<16} {:>4} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "layout", "run", "secs", "requests", "p50 ms", "p99 ms", "max ms"
    );
    let mut node_p99 = Vec::new();
    for run in 0..runs {
        let (secs, l) = rt.block_on(urgent_during_bulk(NodeSettings::default(), mib));
        let p99 = percentile(&l, 0.99);
        node_p99.push(p99);
        println!(
            "{:<16} {:>4} {:>7.2} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            "node channels",
            run + 1,
            secs,
            l.len(),
            ms(percentile(&l, 0.5)),
            ms(p99),
            ms(*l.last().unwrap_or(&Duration::ZERO))
        );
    }
    let one_runs = runs.clamp(1, 3);
    let mut one_p99 = Vec::new();
    for run in 0..one_runs {
        let (secs, l) = rt.block_on(urgent_during_bulk(one_connection(), mib));
        let p99 = percentile(&l, 0.99);
        one_p99.push(p99);
        println!(
            "{:<16} {:>4} {:>7.2} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            "one connection",
            run + 1,
            secs,
            l.len(),
            ms(percentile(&l, 0.5)),
            ms(p99),
            ms(*l.last().unwrap_or(&Duration::ZERO))
        );
    }
    node_p99.sort();
    one_p99.sort();
    let within = node_p99
        .iter()
        .filter(|d| **d <= Duration::from_millis(5))
        .count();
    let worst = *node_p99.last().unwrap_or(&Duration::ZERO);
    let best_one = *one_p99.first().unwrap_or(&Duration::ZERO);
    println!(
        "   p99 <= 5 ms in {within}/{runs} runs; worst node p99 {:.3} ms vs best one-connection p99 {:.3} ms: {:.1}x",
        ms(worst),
        ms(best_one),
        best_one.as_secs_f64() / worst.as_secs_f64().max(1e-9)
    );

    let batch = env("NODE_BENCH_BATCH", 1024);
    println!(
        "\n2. small messages a -> b, {small} x 8-byte payload, counted at the receiver; load {}",
        load()
    );
    let (rate, got) = rt.block_on(node_small(small, 0));
    let (brate, bgot) = rt.block_on(node_small(small, batch));
    let raw = rt.block_on(raw_small(small));
    println!(
        "   node send().await: {:.0} msg/s, delivered {got}/{small} ({} lost); node send_batch({batch}): {:.0} msg/s, delivered {bgot}/{small} ({} lost); raw pre-encoded TCP frames ({} bytes each): {:.0} msg/s; ratio send {:.3}, send_batch {:.3}",
        rate,
        small - got,
        brate,
        small - bgot,
        small_frame().len(),
        raw,
        rate / raw,
        brate / raw
    );

    println!(
        "\n3. request/reply round trip, 64-byte payload, sequential; load {}",
        load()
    );
    let n = 20_000;
    let (raw_mean, raw_p50, raw_p99) = rt.block_on(raw_rtt(n));
    let (node_mean, node_p50, node_p99) = rt.block_on(node_rtt(n));
    println!(
        "   node request: mean {:.1} us, p50 {:.1} us, p99 {:.1} us; raw TCP ping-pong: mean {:.1} us, p50 {:.1} us, p99 {:.1} us; ratio (mean) {:.2}, (p50) {:.2}",
        node_mean.as_secs_f64() * 1e6,
        node_p50.as_secs_f64() * 1e6,
        node_p99.as_secs_f64() * 1e6,
        raw_mean.as_secs_f64() * 1e6,
        raw_p50.as_secs_f64() * 1e6,
        raw_p99.as_secs_f64() * 1e6,
        node_mean.as_secs_f64() / raw_mean.as_secs_f64(),
        node_p50.as_secs_f64() / raw_p50.as_secs_f64()
    );
    println!("   load at the end {}", load());
}
