//! The node, measured through the `Node` API on loopback TCP, each figure beside its
//! baseline measured in the same run:
//!
//! 1. **urgent request p99 during a bulk transfer**: while node `a` sends
//!    `NODE_BENCH_MIB` MiB (default 256) to `b` in 64 KiB `send`s, it makes a `request`
//!    to `b` every millisecond; p99 of the round trips, per run, for the node's default
//!    channels and for the same nodes with every channel folded onto one connection
//!    (the baseline). Each run starts a fresh pair of nodes. Each layout is measured
//!    twice: with the requester on the bench's main thread (inside `block_on`, as the
//!    issue's figures were taken) and with the requester in a task spawned on the
//!    runtime's workers (where an application's code usually runs, sharing the workers
//!    with the bulk transfer). A run lasts about 0.1–0.5 s, so it makes about 100–500
//!    requests and its p99 is its second- to fifth-slowest request. The two layouts
//!    alternate (node run 1, one-connection run 1, node run 2, ...), so each pair of
//!    runs shares the same seconds of the machine. `NODE_BENCH_PRIORITY_THREAD=1` turns
//!    the nodes' priority thread (`NodeSettings::priority_thread`, D380, off by default:
//!    D366) on, `=0` off, for an A/B comparison with the same binary.
//!
//!    Per run: seconds, requests, p50/p99/max, and **cpu wait w/m**: how long the
//!    runtime's two workers together (w) and the bench's main thread (m) were runnable
//!    but waiting for a CPU during the run, in ms (`/proc/self/task/*/schedstat`). The
//!    bulk transfer keeps both workers busy on this 2-core machine, so any other busy
//!    process takes a CPU away from a worker, and the requests queued on that worker
//!    wait for it: runs whose workers waited tens of ms are the slow runs (D420).
//!    After each layout's runs, four lines:
//!    * `p99 <= 5 ms in k/n runs`, then the **conservative ratio**: the best (lowest)
//!      one-connection run's p99 over the worst (highest) node run's p99;
//!    * the **median-of-runs ratio**: median one-connection p99 over median node p99;
//!    * the **paired ratio**: for each iteration i, one-connection run i's p99 over node
//!      run i's p99 (the two runs next to each other in time); min and median of those.
//!
//!    `NODE_BENCH_ONE_RUNS` sets the one-connection runs (default: as many as node runs;
//!    3 was the count before D421). `NODE_BENCH_TRACE=1` adds under each run its minor
//!    page faults, the CPU waits, a latency histogram, how many requests took ≥ 0.3 ms
//!    and how many of those had the process's threads waiting for a CPU for at least half
//!    of their round trip (read from `/proc` before and after every request, which costs
//!    a few µs per request: trace runs only), and its four slowest requests with when they
//!    started (ms since the bulk began) and that CPU wait. `NODE_BENCH_BULK_PARALLELISM=n`
//!    opens n `bulk_data` connections in the node layout (default table: 2 since D422,
//!    5 before) for an A/B with the same binary.
//! 2. **small messages**: `NODE_BENCH_SMALL` (default 1,000,000) 8-byte messages `a` →
//!    `b`, counted at `b`'s receiver (zero loss checked), with one `send().await` per
//!    message and with `send_batch` (`NODE_BENCH_BATCH` messages per call, default 1024),
//!    each into four kinds of receiver: `register` with a plain `recv().await` loop,
//!    `register` with `recv_many` (`send_batch` only), `register_batched` (one `Batch`
//!    of decoded messages per frame, the consumer counts them) and `register_frames`
//!    (one undecoded `Frame` per frame, the consumer walks its messages). An idle
//!    watchdog ends a consumer if messages stop coming. Two raw baselines write the same
//!    pre-encoded per-message frames (the node's own bytes for one message,
//!    `node::wire_format`, behind a 4-byte length) over loopback TCP to a reader that
//!    only counts length prefixes: **buffered** (through a 64 KiB `BufWriter`: few, large
//!    writes; the strict baseline, the one the ratio has always been taken against) and
//!    **one write per frame** (one `write_all` per frame on the `TcpStream`: the issue's
//!    literal "raw pre-encoded length-prefixed TCP writes"). Ratios are printed against
//!    both, labelled. Also printed: the receiver floor, the `register` consumer loops fed
//!    `(String, u64)` through a tokio channel in chunks by one task, no node (what
//!    delivery through `register` costs by itself). `NODE_BENCH_PART2_ONLY=1` runs only
//!    this part.
//! 3. **request/reply round trip**: sequential 64-byte `request`s against a raw TCP
//!    64-byte ping-pong.
//!
//! Prints tables; run with `cargo bench -p foundation-benches --bench node`
//! (`NODE_BENCH_RUNS`, default 10, sets the runs of part 1; `NODE_BENCH_EVENT_INTERVAL`
//! sets tokio's `event_interval`, default tokio's 61: how many task polls a busy worker
//! makes between two looks at the I/O driver; `NODE_BENCH_GLOBAL_QUEUE_INTERVAL` sets
//! tokio's `global_queue_interval`, default self-tuned: how many task polls a busy worker
//! makes between two looks at the queue of tasks woken from outside the runtime;
//! `NODE_BENCH_PART1_ONLY=1` stops after part 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_distributed::channel::{ChannelSettings, Urgency};
use foundation_distributed::node::wire_format::{batch_body, send_batch_frame};
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

/// The nodes' settings for part 1: the defaults, except `priority_thread` when
/// `NODE_BENCH_PRIORITY_THREAD` is set (`1` on, `0` off).
fn node_settings() -> NodeSettings {
    let d = NodeSettings::default();
    let mut channels = d.channels.clone();
    // `NODE_BENCH_BULK_PARALLELISM=n`: `bulk_data` on n connections (default table: 2 since
    // D422, 5 before).
    if let Some(n) = std::env::var("NODE_BENCH_BULK_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        for spec in &mut channels.channels {
            if spec.name == foundation_distributed::channel::BULK_DATA {
                spec.parallelism = n;
            }
        }
    }
    NodeSettings {
        channels,
        priority_thread: priority_thread(),
        // `NODE_BENCH_NICE=none` leaves the thread's priority alone; a number sets it.
        priority_thread_nice: match std::env::var("NODE_BENCH_NICE").as_deref() {
            Ok("none") => None,
            Ok(v) => v.parse().ok().or(d.priority_thread_nice),
            Err(_) => d.priority_thread_nice,
        },
        ..d
    }
}

fn priority_thread() -> bool {
    std::env::var("NODE_BENCH_PRIORITY_THREAD")
        .map_or(NodeSettings::default().priority_thread, |v| v != "0")
}

fn one_connection() -> NodeSettings {
    let channels = ChannelSettings::single_connection();
    NodeSettings {
        channels,
        // Bulk messages arrive on `coordination`, where the node never waits for a
        // receiver: make room for all of them so none is dropped.
        receiver_capacity: 1 << 16,
        ..node_settings()
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

/// Where part 1's requester runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Requester {
    /// On the thread calling `block_on` (not a runtime worker).
    Main,
    /// In a task spawned on the runtime's workers.
    Task,
}

/// One request of part 1.
struct Sample {
    /// When it was made, since the bulk transfer began.
    at: Duration,
    /// Its round trip.
    latency: Duration,
    /// How long this process's threads together waited for a CPU meanwhile (only with
    /// `NODE_BENCH_TRACE=1`, else zero).
    cpu_wait: Duration,
}

/// One run of part 1: (seconds, request latencies sorted, and each request in the order
/// made).
async fn urgent_during_bulk(
    settings: NodeSettings,
    mib: usize,
    requester: Requester,
) -> (f64, Vec<Duration>, Vec<Sample>) {
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
                // A keyed bulk transfer says so: a keyed message is not moved to
                // `bulk_data` by its size (D402).
                let opts = SendOptions {
                    urgency: Urgency::Bulk,
                    key: Some((i % 5) as u64),
                };
                a.send("b", "bulk", &blob, opts).await.expect("bulk send");
            }
        })
    };
    // `NODE_BENCH_PROBE=1`: a plain thread wakes a task on the runtime every ms during the
    // run; how long the woken task waits to run is the price of any wake-up from outside
    // the runtime's workers (as a reply read by the priority thread is) during the bulk.
    let probe = (env("NODE_BENCH_PROBE", 0) == 1).then(|| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                if tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        let task = tokio::spawn(async move {
            let mut waits = Vec::new();
            while let Some(t) = rx.recv().await {
                waits.push(t.elapsed());
            }
            waits
        });
        (done, thread, task)
    });
    let requests = {
        let a = a.clone();
        async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            // `NODE_BENCH_TRACE=1`: how long this process's threads waited for a CPU
            // during each request (two readings of /proc per request: trace runs only).
            let per_request = env("NODE_BENCH_TRACE", 0) == 1;
            let waited = || {
                per_request
                    .then(process_run_queue_wait)
                    .unwrap_or(Duration::ZERO)
            };
            while !consumer.is_finished() {
                tick.tick().await;
                let w = waited();
                let t = Instant::now();
                let _: u64 = a
                    .request("b", "ping", &1u64, Duration::from_secs(10))
                    .await
                    .expect("ping");
                let latency = t.elapsed();
                samples.push(Sample {
                    at: t.duration_since(started),
                    latency,
                    cpu_wait: waited().saturating_sub(w),
                });
            }
            samples
        }
    };
    let samples = match requester {
        Requester::Main => requests.await,
        Requester::Task => tokio::spawn(requests).await.expect("requester task"),
    };
    bulk.await.expect("bulk task");
    let secs = started.elapsed().as_secs_f64();
    if let Some((done, thread, task)) = probe {
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
        let mut waits = task.await.expect("probe");
        waits.sort();
        println!(
            "   probe: {} wake-ups from a plain thread: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            waits.len(),
            ms(percentile(&waits, 0.5)),
            ms(percentile(&waits, 0.99)),
            ms(*waits.last().unwrap_or(&Duration::ZERO))
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    (secs, latencies, samples)
}

/// Minor page faults of this process so far (`/proc/self/stat` field 10; 0 if unreadable).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start at state.
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Per thread of this process (by thread id): its name and the nanoseconds it has spent
/// runnable but waiting for a CPU (`/proc/self/task/*/schedstat`, second field).
fn run_queue_waits() -> std::collections::HashMap<String, (String, u64)> {
    let mut waits = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return waits;
    };
    for t in tasks.flatten() {
        let path = t.path();
        let wait = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok());
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(w) = wait {
            let id = t.file_name().to_string_lossy().into_owned();
            waits.insert(id, (name.trim().to_string(), w));
        }
    }
    waits
}

/// How long (ms) the runtime's workers, the bench's main thread (thread id `main_thread`)
/// and the other threads of this process waited for a CPU since `before`.
fn run_queue_wait_since(
    before: &std::collections::HashMap<String, (String, u64)>,
    main_thread: &str,
) -> (f64, f64, f64) {
    let (mut workers, mut main, mut other) = (0u64, 0u64, 0u64);
    for (id, (name, w)) in run_queue_waits() {
        let d = w - before.get(&id).map_or(0, |b| b.1.min(w));
        if id == main_thread {
            main += d;
        } else if name.starts_with("tokio-r") {
            workers += d;
        } else {
            other += d;
        }
    }
    (workers as f64 / 1e6, main as f64 / 1e6, other as f64 / 1e6)
}

/// How long all threads of this process have waited for a CPU so far (the sum of the
/// second fields of `/proc/self/task/*/schedstat`).
fn process_run_queue_wait() -> Duration {
    Duration::from_nanos(run_queue_waits().values().map(|(_, w)| w).sum())
}

/// `NODE_BENCH_TRACE=1`: one run's latencies as a histogram, and its slowest requests
/// with when they started (ms since the bulk began) and their place in the run.
/// Returns (requests ≥ 0.3 ms, those of them with the process's threads waiting for a
/// CPU for at least half of their round trip).
fn trace(samples: &[Sample], faults: u64, waited: (f64, f64, f64)) -> (usize, usize) {
    const EDGES: [f64; 7] = [0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];
    let mut counts = [0usize; EDGES.len() + 1];
    for s in samples {
        let l = ms(s.latency);
        counts[EDGES.iter().position(|e| l < *e).unwrap_or(EDGES.len())] += 1;
    }
    let mut by_latency: Vec<(usize, &Sample)> = samples.iter().enumerate().collect();
    by_latency.sort_by_key(|(_, s)| std::cmp::Reverse(s.latency));
    let slowest: Vec<String> = by_latency
        .iter()
        .take(4)
        .map(|(i, s)| {
            format!(
                "#{} at {:.1} ms: {:.3} ms (cpu wait {:.3} ms)",
                i + 1,
                ms(s.at),
                ms(s.latency),
                ms(s.cpu_wait)
            )
        })
        .collect();
    let slow: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.latency >= Duration::from_micros(300))
        .collect();
    let starved = slow.iter().filter(|s| s.cpu_wait * 2 >= s.latency).count();
    println!(
        "      {faults} minor page faults; waited for a CPU: workers {:.1} ms, main thread {:.1} ms, other threads {:.1} ms; histogram ms <0.1:{} <0.2:{} <0.3:{} <0.5:{} <1:{} <2:{} <5:{} >=5:{}; requests >= 0.3 ms: {}, of which {} with the process's threads waiting for a CPU for at least half of it; slowest {}",
        waited.0,
        waited.1,
        waited.2,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        counts[6],
        counts[7],
        slow.len(),
        starved,
        slowest.join(", ")
    );
    (slow.len(), starved)
}

/// Counts `n` messages from `inbox` as a user's loop would (`recv().await`, or
/// `recv_many` of up to 1024 when `many`; nothing else per message); gives up when
/// nothing arrives for 10 s. Returns how many arrived.
async fn count_with<T: Send + 'static>(
    mut inbox: tokio::sync::mpsc::Receiver<(String, T)>,
    n: usize,
    many: bool,
) -> tokio::task::JoinHandle<usize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        let mut buf = Vec::with_capacity(1024);
        while got < n {
            if many {
                buf.clear();
                match inbox.recv_many(&mut buf, 1024).await {
                    0 => break,
                    k => got += k,
                }
            } else {
                match inbox.recv().await {
                    Some(_) => got += 1,
                    None => break,
                }
            }
            if got % 1024 == 0 || many {
                seen.store(got, Ordering::Relaxed);
            }
        }
        got
    });
    watchdog(consumer, progress)
}

/// Gives `consumer` (which publishes how many messages it has counted in `progress`) up
/// to 10 s without progress; returns how many it counted.
fn watchdog(
    mut consumer: tokio::task::JoinHandle<usize>,
    progress: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let (mut last, mut idle) = (0, 0);
        loop {
            tokio::select! {
                got = &mut consumer => return got.expect("consumer"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now = progress.load(Ordering::Relaxed);
            idle = if now == last { idle + 1 } else { 0 };
            last = now;
            if idle >= 10 {
                consumer.abort();
                return now;
            }
        }
    })
}

/// How part 2's node consumer takes its messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// `register`, one `recv().await` per message.
    Recv,
    /// `register`, `recv_many` of up to 1024.
    RecvMany,
    /// `register_batched`: one `recv().await` per frame, counting its decoded messages.
    Batched,
    /// `register_frames`: one `recv().await` per frame, walking its undecoded messages
    /// (as the raw baseline's reader walks length prefixes).
    Frames,
}

/// Counts `n` messages from `b`'s receiver `name` registered as `how` (nothing else per
/// message); gives up when nothing arrives for 10 s. Returns how many arrived.
async fn count_on(b: &Node, name: &str, n: usize, how: Consumer) -> tokio::task::JoinHandle<usize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    match how {
        Consumer::Recv => count_with(b.register::<u64>(name), n, false).await,
        Consumer::RecvMany => count_with(b.register::<u64>(name), n, true).await,
        Consumer::Batched => {
            let mut inbox = b.register_batched::<u64>(name);
            let progress = Arc::new(AtomicUsize::new(0));
            let seen = progress.clone();
            let consumer = tokio::spawn(async move {
                let mut got = 0;
                while got < n {
                    match inbox.recv().await {
                        Some(batch) => got += batch.messages.len(),
                        None => break,
                    }
                    seen.store(got, Ordering::Relaxed);
                }
                got
            });
            watchdog(consumer, progress)
        }
        Consumer::Frames => {
            let mut inbox = b.register_frames(name);
            let progress = Arc::new(AtomicUsize::new(0));
            let seen = progress.clone();
            let consumer = tokio::spawn(async move {
                let mut got = 0;
                while got < n {
                    match inbox.recv().await {
                        Some(frame) => got += frame.messages().count(),
                        None => break,
                    }
                    seen.store(got, Ordering::Relaxed);
                }
                got
            });
            watchdog(consumer, progress)
        }
    }
}

/// Part 2 through the node: msg/s until the receiver has counted them all; `batch` > 0
/// sends with `send_batch` of that many messages per call; `many`: the consumer takes
/// them as `how` says.
async fn node_small(n: usize, batch: usize, how: Consumer) -> (f64, usize) {
    let (rate, got, _) = node_small_frames(n, batch, how).await;
    (rate, got)
}

/// [`node_small`], also returning how many frames `a` wrote on `messages` for them
/// (write-combining appends many `send`s to one frame while the connection is busy).
async fn node_small_frames(n: usize, batch: usize, how: Consumer) -> (f64, usize, u64) {
    let (a, b) = pair(NodeSettings::default()).await;
    let consumer = count_on(&b, "small", n, how).await;
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
    let frames = a
        .peer_stats()
        .iter()
        .flat_map(|p| p.channels.iter())
        .filter(|c| c.channel == foundation_distributed::node::MESSAGES)
        .map(|c| c.sent_frames)
        .sum();
    a.shutdown().await;
    b.shutdown().await;
    (n as f64 / secs, got, frames)
}

/// Part 2's floor of delivery at the receiver: `n` `(String, u64)` handed to the same
/// consumer loop through a tokio channel of the node's receiver capacity, by one task
/// that reserves room in chunks of half the capacity (`reserve_many`, as the node's
/// receiver does when it waits) and makes a fresh sender `String` per message (as the
/// node must), in the same runtime, with no node, no encoding and no network. What
/// delivery through `register`'s receiver costs by itself.
async fn mpsc_floor(n: usize, many: bool) -> f64 {
    let cap = NodeSettings::default().receiver_capacity;
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    let consumer = count_with(rx, n, many).await;
    let t = Instant::now();
    let from = String::from("a");
    let mut i = 0;
    while i < n {
        let permits = tx
            .reserve_many((cap / 2).max(1).min(n - i))
            .await
            .expect("open");
        for p in permits {
            p.send((from.clone(), i as u64));
            i += 1;
        }
    }
    let got = consumer.await.expect("consumer");
    assert_eq!(got, n);
    n as f64 / t.elapsed().as_secs_f64()
}

/// The bytes of one node message of part 2 (the node's wire encoding of a one-message
/// `SendBatch` of a `u64` from `a` to `b`'s `small`, what `send` produces: header, the
/// message's 4-byte length, the body), plus the 4-byte length prefix, for the raw
/// baseline. (The node's frame adds the transport's envelope and an 8-byte key on top;
/// messages the sender's queue appends to a waiting frame add only their length and
/// body.)
fn small_frame() -> Vec<u8> {
    let body = batch_body(&[123_456u64]).expect("body");
    let payload = send_batch_frame("b", "small", "a", &body);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// The raw baselines' reader: accepts one connection and counts length-prefixed frames
/// (nothing else per frame) until `n` or the end of the stream.
async fn count_frames(listener: TcpListener, n: usize) -> usize {
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
}

/// Part 2's raw baselines: the same pre-encoded length-prefixed frames written over
/// loopback TCP to a reader counting them. `buffered`: through a 64 KiB `BufWriter` (few,
/// large `write` calls; the strict baseline); otherwise one `write_all` per frame on the
/// `TcpStream` (one `write` call per frame; the issue's literal baseline).
async fn raw_small(n: usize, buffered: bool) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(count_frames(listener, n));
    let frame = small_frame();
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let t = Instant::now();
    if buffered {
        write_frames(BufWriter::with_capacity(64 * 1024, s), &frame, n).await;
    } else {
        write_frames(s, &frame, n).await;
    }
    let got = reader.await.expect("reader");
    assert_eq!(got, n);
    n as f64 / t.elapsed().as_secs_f64()
}

/// Writes `frame` `n` times to `w`, then flushes.
async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(mut w: W, frame: &[u8], n: usize) {
    for _ in 0..n {
        w.write_all(frame).await.expect("write");
    }
    w.flush().await.expect("flush");
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

/// Part 2 (small messages), printed.
fn part2(rt: &tokio::runtime::Runtime, small: usize) {
    let batch = env("NODE_BENCH_BATCH", 1024);
    println!(
        "\n2. small messages a -> b, {small} x 8-byte payload, counted at the receiver; load {}",
        load()
    );
    let (rate, got, sframes) = rt.block_on(node_small_frames(small, 0, Consumer::Recv));
    let (brate, bgot) = rt.block_on(node_small(small, batch, Consumer::Recv));
    let (mrate, mgot) = rt.block_on(node_small(small, batch, Consumer::RecvMany));
    let x = rt.block_on(node_small_frames(small, 0, Consumer::Batched));
    let xb = rt.block_on(node_small_frames(small, batch, Consumer::Batched));
    let f = rt.block_on(node_small_frames(small, 0, Consumer::Frames));
    let fb = rt.block_on(node_small_frames(small, batch, Consumer::Frames));
    let raw = rt.block_on(raw_small(small, true));
    let raw1 = rt.block_on(raw_small(small, false));
    let floor = rt.block_on(mpsc_floor(small, false));
    let mfloor = rt.block_on(mpsc_floor(small, true));
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
        "   node send_batch({batch}) with a recv_many consumer: {:.0} msg/s, delivered {mgot}/{small} ({} lost); ratio to raw {:.3}",
        mrate,
        small - mgot,
        mrate / raw
    );
    println!(
        "   receiver floor (the same consumer loop fed (String, u64) through a tokio channel in chunks, no node): recv {:.0} msg/s, recv_many {:.0} msg/s; node send {:.2}x, send_batch {:.2}x, send_batch + recv_many {:.2}x of it",
        floor,
        mfloor,
        rate / floor,
        brate / floor,
        mrate / mfloor
    );
    println!(
        "   raw baselines, same frames: buffered (BufWriter 64 KiB; the strict one) {raw:.0} msg/s; one write_all per frame on the TcpStream (the issue's literal one) {raw1:.0} msg/s"
    );
    println!(
        "   node send().await -> register wrote {sframes} frames for {small} messages (write-combining: the busier the connection, the fewer)"
    );
    for (what, (r, g, frames)) in [
        ("send().await    -> register_batched", x),
        ("send_batch      -> register_batched", xb),
        ("send().await    -> register_frames ", f),
        ("send_batch      -> register_frames ", fb),
    ] {
        println!(
            "   node {what}: {r:>11.0} msg/s, delivered {g}/{small} ({} lost) in {frames} frames; ratio to raw buffered (strict) {:.3}, to raw one write per frame (literal) {:.3}",
            small - g,
            r / raw,
            r / raw1
        );
    }
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
    if let Ok(Ok(n)) = std::env::var("NODE_BENCH_GLOBAL_QUEUE_INTERVAL").map(|v| v.parse::<u32>()) {
        println!("tokio global_queue_interval = {n}");
        builder.global_queue_interval(n);
    }
    let rt = builder.build().expect("runtime");
    if env("NODE_BENCH_PART2_ONLY", 0) == 1 {
        part2(&rt, small);
        println!("   load at the end {}", load());
        return;
    }
    // This thread's id (`<pid>/task/<tid>`): the requester's thread in the `main` runs.
    let main_thread = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();

    println!(
        "1. urgent request p99 while {mib} MiB go a -> b in 64 KiB sends (request every 1 ms); priority thread {} (nice {:?}); load {}",
        if priority_thread() { "on" } else { "off" },
        node_settings().priority_thread_nice,
        load()
    );
    println!(
        "{:<16} {:<9} {:>4} {:>7} {:>8} {:>9} {:>9} {:>9} {:>14} {:>6}",
        "layout",
        "requester",
        "run",
        "secs",
        "requests",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu wait w/m",
        "load"
    );
    let trace_on = env("NODE_BENCH_TRACE", 0) == 1;
    // One run of one layout: prints its row (and its trace), returns its p99.
    let run_once =
        |layout: &str, settings: fn() -> NodeSettings, requester: Requester, run: usize| {
            let faults = minor_faults();
            let waits = run_queue_waits();
            let (secs, l, samples) = rt.block_on(urgent_during_bulk(settings(), mib, requester));
            let faults = minor_faults().saturating_sub(faults);
            let waited = run_queue_wait_since(&waits, &main_thread);
            let p99 = percentile(&l, 0.99);
            println!(
                "{:<16} {:<9} {:>4} {:>7.2} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>14} {:>6}",
                layout,
                match requester {
                    Requester::Main => "main",
                    Requester::Task => "task",
                },
                run + 1,
                secs,
                l.len(),
                ms(percentile(&l, 0.5)),
                ms(p99),
                ms(*l.last().unwrap_or(&Duration::ZERO)),
                format!("{:.1}/{:.1}", waited.0, waited.1),
                load()
            );
            let slow = if trace_on {
                trace(&samples, faults, waited)
            } else {
                (0, 0)
            };
            (p99, slow)
        };
    let one_runs = env("NODE_BENCH_ONE_RUNS", runs).max(1);
    for requester in [Requester::Main, Requester::Task] {
        // Interleaved: node run i, then one-connection run i, so that each pair shares
        // the same seconds of the machine.
        let (mut node_p99, mut one_p99) = (Vec::new(), Vec::new());
        let mut node_slow = (0, 0);
        for i in 0..runs.max(one_runs) {
            if i < runs {
                let (p99, slow) = run_once("node channels", node_settings, requester, i);
                node_p99.push(p99);
                node_slow = (node_slow.0 + slow.0, node_slow.1 + slow.1);
            }
            if i < one_runs {
                one_p99.push(run_once("one connection", one_connection, requester, i).0);
            }
        }
        let mut paired: Vec<f64> = node_p99
            .iter()
            .zip(&one_p99)
            .map(|(n, o)| o.as_secs_f64() / n.as_secs_f64().max(1e-9))
            .collect();
        paired.sort_by(f64::total_cmp);
        node_p99.sort();
        one_p99.sort();
        let within = node_p99
            .iter()
            .filter(|d| **d <= Duration::from_millis(5))
            .count();
        let worst = *node_p99.last().unwrap_or(&Duration::ZERO);
        let best_one = *one_p99.first().unwrap_or(&Duration::ZERO);
        let median = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or(Duration::ZERO);
        let place = match requester {
            Requester::Main => "requester on the main thread",
            Requester::Task => "requester in a spawned task",
        };
        println!(
            "   {place}: p99 <= 5 ms in {within}/{runs} runs; worst node p99 {:.3} ms vs best one-connection p99 {:.3} ms ({} runs): {:.1}x",
            ms(worst),
            ms(best_one),
            one_p99.len(),
            best_one.as_secs_f64() / worst.as_secs_f64().max(1e-9)
        );
        println!(
            "   {place}: median-of-runs p99, node {:.3} ms vs one connection {:.3} ms: {:.1}x",
            ms(median(&node_p99)),
            ms(median(&one_p99)),
            median(&one_p99).as_secs_f64() / median(&node_p99).as_secs_f64().max(1e-9)
        );
        if trace_on {
            println!(
                "   {place}: node requests >= 0.3 ms: {}, of which {} with the process's threads waiting for a CPU for at least half of it, {} without",
                node_slow.0,
                node_slow.1,
                node_slow.0 - node_slow.1
            );
        }
        if !paired.is_empty() {
            println!(
                "   {place}: paired runs (one-connection p99 / node p99 of the same iteration), {} pairs: min {:.1}x, median {:.1}x",
                paired.len(),
                paired[0],
                paired[paired.len() / 2]
            );
        }
    }

    if env("NODE_BENCH_PART1_ONLY", 0) == 1 {
        return;
    }
    part2(&rt, small);

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
