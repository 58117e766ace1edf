//! The comparative report: every layer's scenarios side by side with its peers in one
//! run — Foundation against raw tokio, raw TCP, `ractor` and `kameo` — written as
//! Markdown, JSON and an HTML page with SVG plots.
//!
//! ```text
//! cargo run --release -p foundation-benches --bin report            # full run
//! cargo run --release -p foundation-benches --bin report -- --quick # under 5 minutes
//! cargo run --release -p foundation-benches --bin report -- --out DIR
//! cargo run -p foundation-benches --bin report -- --smoke           # pipeline check
//! ```
//!
//! Output (default `target/report/`): `report.md`, `report.json`, `report.html` (plots
//! inline) and each plot as `plot-<scenario>.svg`.
//! Every figure comes from this run; every ratio is against a baseline measured in the
//! same run; the analysis section is computed from the figures. Peak heap (counting
//! allocator) and peak RSS (`VmHWM`, reset per row) are recorded for every row.
//!
//! **Broadcast reliability against failure rate** ([`broadcast_reliability`]): a
//! HyParView + Plumtree overlay built in the seeded overlay simulator
//! (`foundation_distributed::overlay::sim`, the same one behind the 10,000-node tables of
//! `foundation-distributed/tests/overlay_sim.rs`), a fraction of the nodes crashed at
//! once, then broadcasts from live nodes: the share of live nodes reached by the first
//! broadcasts after the crash and after repair rounds, Plumtree against eager flooding on
//! the same overlay.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foundation_beam::mailbox::MemoryStrategy;
use foundation_beam::message::{MessageOptions, Messenger, Payload, StrategySettings};
use foundation_beam::process::{spawn_fn, spawn_with, SpawnOptions};
use foundation_benches::peers::{
    fire, round_trips, tokio_fire, Counter, FCounter, KCounter, RCounter, TrySend,
};
use foundation_benches::runtime;
use foundation_distributed::channel::ChannelSettings;
use foundation_distributed::overlay::plumtree::Mode;
use foundation_distributed::overlay::sim::{Sim, SimConfig};
use foundation_distributed::topology::TopologyKind;
use foundation_testkit::cluster::Net;
use foundation_testkit::latency::LatencySummary;
use foundation_testkit::memory::{self, PeakAlloc};
use foundation_testkit::scenarios::{self, Encoding};
use plotters::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

// ------------------------------------------------------------------------------------
// Model

#[derive(Debug, Clone, Serialize)]
struct Row {
    system: String,
    value: f64,
    /// Value relative to the scenario's baseline, oriented so that > 1 is better.
    vs_baseline: f64,
    peak_heap_mib: f64,
    peak_rss_mib: Option<f64>,
    detail: String,
}

#[derive(Debug, Clone, Serialize)]
struct Scenario {
    id: &'static str,
    title: &'static str,
    layer: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    baseline: &'static str,
    method: String,
    rows: Vec<Row>,
    /// CDFs to plot: (label, points (µs, fraction)).
    #[serde(skip)]
    cdfs: Vec<(String, Vec<(f64, f64)>)>,
    latency: Vec<(String, LatencySummary)>,
    /// Line series to plot: (label, points (x, y)), with axis names.
    #[serde(skip)]
    lines: Vec<(String, Vec<(f64, f64)>)>,
    line_axes: Option<(&'static str, &'static str)>,
}

impl Scenario {
    fn new(
        id: &'static str,
        title: &'static str,
        layer: &'static str,
        unit: &'static str,
        higher_is_better: bool,
        baseline: &'static str,
        method: String,
    ) -> Self {
        Scenario {
            id,
            title,
            layer,
            unit,
            higher_is_better,
            baseline,
            method,
            rows: Vec::new(),
            cdfs: Vec::new(),
            latency: Vec::new(),
            lines: Vec::new(),
            line_axes: None,
        }
    }

    /// Runs `f` as one row, measuring its peak heap and RSS.
    fn row(&mut self, system: &str, f: impl FnOnce() -> (f64, String)) {
        eprintln!("  {} / {system} ...", self.id);
        memory::reset_rss_peak();
        let start = memory::heap_now();
        memory::reset_heap_peak();
        let (value, detail) = f();
        let peak = memory::heap_peak().saturating_sub(start);
        self.rows.push(Row {
            system: system.to_string(),
            value,
            vs_baseline: f64::NAN,
            peak_heap_mib: peak as f64 / MIB,
            peak_rss_mib: memory::rss_peak_kib().map(|k| k as f64 / 1024.0),
            detail,
        });
    }

    fn finish(&mut self) {
        let base = self
            .rows
            .iter()
            .find(|r| r.system == self.baseline)
            .map(|r| r.value);
        for r in &mut self.rows {
            r.vs_baseline = match base {
                Some(b) if b > 0.0 && r.value > 0.0 => {
                    if self.higher_is_better {
                        r.value / b
                    } else {
                        b / r.value
                    }
                }
                _ => f64::NAN,
            };
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The median of `rounds` runs of `round` on `rt`.
fn median_rounds<F: std::future::Future<Output = Duration>>(
    rt: &tokio::runtime::Runtime,
    rounds: usize,
    mut round: impl FnMut() -> F,
) -> Duration {
    median((0..rounds).map(|_| rt.block_on(round())).collect())
}

// ------------------------------------------------------------------------------------
// Scenarios

struct Sizes {
    messages: u64,
    calls: u64,
    node_messages: u64,
    probes: usize,
    large: u64,
    rounds: usize,
    cluster_sizes: &'static [usize],
    /// Nodes of the simulated overlay (broadcast reliability).
    overlay_nodes: usize,
}

/// What a counter row measures.
#[derive(Clone, Copy)]
enum Measure {
    /// [`fire`] rounds of this many ticks.
    Fire(u64),
    /// [`round_trips`] of this many calls.
    Calls(u64),
}

impl Measure {
    async fn on<C: Counter>(self, c: &C) -> Duration {
        match self {
            Measure::Fire(n) => fire(c, n).await,
            Measure::Calls(n) => round_trips(c, n).await,
        }
    }
}

/// A Foundation counter's row: the process spawned with `memory`, driven through
/// `send().await` when `awaited` (else `try_send`); the median of `rounds`
/// measurements, reported as `show(median)`.
fn foundation_row(
    sc: &mut Scenario,
    label: &str,
    memory: MemoryStrategy,
    awaited: bool,
    m: Measure,
    rounds: usize,
    show: impl Fn(Duration) -> (f64, String),
) {
    sc.row(label, || {
        let rt = runtime();
        let h = rt.block_on(async {
            spawn_with(FCounter::default(), SpawnOptions::new().memory(memory)).expect("spawn")
        });
        let d = if awaited {
            median_rounds(&rt, rounds, || m.on(&h))
        } else {
            let t = TrySend(h.clone());
            median_rounds(&rt, rounds, || m.on(&t))
        };
        h.shutdown();
        show(d)
    });
}

/// The peers' rows: `labels` name the ractor and the kameo row; each runs the median of
/// `rounds` measurements on its own runtime and reports `show(median)`.
fn peer_rows(
    sc: &mut Scenario,
    [ractor_label, kameo_label]: [&str; 2],
    m: Measure,
    rounds: usize,
    show: impl Fn(Duration) -> (f64, String),
) {
    use kameo::actor::Spawn;
    sc.row(ractor_label, || {
        let rt = runtime();
        let (rh, _j) = rt.block_on(async {
            ractor::Actor::spawn(None, RCounter, ())
                .await
                .expect("spawn")
        });
        let d = median_rounds(&rt, rounds, || m.on(&rh));
        rh.stop(None);
        show(d)
    });
    sc.row(kameo_label, || {
        let rt = runtime();
        let kh = rt.block_on(async {
            KCounter::spawn_with_mailbox(KCounter::default(), kameo::mailbox::unbounded())
        });
        show(median_rounds(&rt, rounds, || m.on(&kh)))
    });
}

fn fire_and_forget(s: &Sizes) -> Scenario {
    let n = s.messages;
    let mut sc = Scenario::new(
        "fire_and_forget",
        "Fire-and-forget messages, one producer to one consumer",
        "L2 process",
        "M msg/s",
        true,
        "tokio mpsc (unbounded)",
        format!("{n} messages, time until the consumer handled the last; median of {} rounds; 2-worker runtime", s.rounds),
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64() / 1e6;
    let rounds = s.rounds;
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    sc.row("tokio mpsc (unbounded)", || {
        let d = median_rounds(&runtime(), rounds, || tokio_fire(n, None));
        (rate(d), ms(d))
    });
    for (label, awaited, mem) in [
        (
            "Foundation try_send (unbounded)",
            false,
            MemoryStrategy::unbounded(),
        ),
        (
            "Foundation send().await (bounded 1024)",
            true,
            MemoryStrategy::default(),
        ),
    ] {
        let m = Measure::Fire(n);
        foundation_row(&mut sc, label, mem, awaited, m, rounds, |d| {
            (rate(d), ms(d))
        });
    }
    let labels = ["ractor cast", "kameo tell (unbounded)"];
    peer_rows(&mut sc, labels, Measure::Fire(n), rounds, |d| {
        (rate(d), ms(d))
    });
    sc.finish();
    sc
}

fn request_reply(s: &Sizes) -> Scenario {
    let n = s.calls;
    let mut sc = Scenario::new(
        "request_reply",
        "Request/reply round trips, sequential",
        "L2 process",
        "k calls/s",
        true,
        "tokio mpsc + oneshot",
        format!(
            "{n} sequential calls; median of {} rounds; 2-worker runtime",
            s.rounds
        ),
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64() / 1e3;
    let per_call = |d: Duration| format!("{:.2} us/call", d.as_secs_f64() * 1e6 / n as f64);
    let rounds = s.rounds;
    sc.row("tokio mpsc + oneshot", || {
        let rt = runtime();
        let d = median(
            (0..rounds)
                .map(|_| {
                    rt.block_on(async {
                        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
                        tokio::spawn(async move {
                            while let Some((v, r)) = rx.recv().await {
                                let _ = r.send(v);
                            }
                        });
                        let t = Instant::now();
                        for i in 0..n {
                            let (rtx, rrx) = oneshot::channel();
                            tx.send((i, rtx)).await.expect("alive");
                            black_box(rrx.await.expect("reply"));
                        }
                        t.elapsed()
                    })
                })
                .collect(),
        );
        (rate(d), per_call(d))
    });
    let (mem, m) = (MemoryStrategy::default(), Measure::Calls(n));
    foundation_row(&mut sc, "Foundation call", mem, true, m, rounds, |d| {
        (rate(d), per_call(d))
    });
    let labels = ["ractor call", "kameo ask"];
    peer_rows(&mut sc, labels, Measure::Calls(n), rounds, |d| {
        (rate(d), per_call(d))
    });
    sc.finish();
    sc
}

fn large_in_process(s: &Sizes) -> Scenario {
    let n = s.large * 10;
    let mut sc = Scenario::new(
        "large_in_process",
        "1 MiB payloads to a process",
        "L2 messages",
        "k msg/s",
        true,
        "Foundation send(vec.clone())",
        format!("{n} messages of 1 MiB, at most 64 unhandled; 2-worker runtime"),
    );
    let data = vec![0x5Au8; 1 << 20];
    let bytes = Bytes::from(data.clone());
    let rate = |d: Duration| n as f64 / d.as_secs_f64() / 1e3;
    sc.row("Foundation send(vec.clone())", || {
        let rt = runtime();
        let d = rt.block_on(async {
            let handled = Arc::new(AtomicU64::new(0));
            let h = {
                let handled = handled.clone();
                spawn_fn(move |mut inbox| async move {
                    while let Some(m) = inbox.recv().await {
                        let m: Vec<u8> = m;
                        drop(black_box(m));
                        handled.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let t = Instant::now();
            for i in 0..n {
                while i - handled.load(Ordering::Relaxed) >= 64 {
                    tokio::task::yield_now().await;
                }
                h.send(data.clone()).await.expect("alive");
            }
            while handled.load(Ordering::Relaxed) < n {
                tokio::task::yield_now().await;
            }
            t.elapsed()
        });
        (rate(d), String::new())
    });
    sc.row("Foundation send_optimized(Bytes)", || {
        let rt = runtime();
        let d = rt.block_on(async {
            let handled = Arc::new(AtomicU64::new(0));
            let h = {
                let handled = handled.clone();
                spawn_fn(move |mut inbox| async move {
                    while let Some(p) = inbox.recv().await {
                        let p: Payload = p;
                        drop(black_box(p.take()));
                        handled.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            let m = Messenger::new(StrategySettings::default()).expect("settings");
            let opts = MessageOptions::default();
            let t = Instant::now();
            for i in 0..n {
                while i - handled.load(Ordering::Relaxed) >= 64 {
                    tokio::task::yield_now().await;
                }
                m.send_optimized(&h, bytes.clone(), &opts)
                    .await
                    .expect("alive");
            }
            while handled.load(Ordering::Relaxed) < n {
                tokio::task::yield_now().await;
            }
            let d = t.elapsed();
            m.shutdown().await;
            d
        });
        (rate(d), String::new())
    });
    sc.row("tokio mpsc<Bytes>", || {
        let rt = runtime();
        let d = rt.block_on(async {
            let (tx, mut rx) = mpsc::channel::<Bytes>(64);
            let (dtx, drx) = oneshot::channel();
            tokio::spawn(async move {
                let mut left = n;
                while let Some(b) = rx.recv().await {
                    drop(black_box(b));
                    left -= 1;
                    if left == 0 {
                        let _ = dtx.send(());
                        break;
                    }
                }
            });
            let t = Instant::now();
            for _ in 0..n {
                tx.send(bytes.clone()).await.expect("alive");
            }
            drx.await.expect("done");
            t.elapsed()
        });
        (rate(d), String::new())
    });
    sc.finish();
    sc
}

fn node_small(s: &Sizes) -> Scenario {
    let n = s.node_messages;
    let mut sc = Scenario::new(
        "node_small_messages",
        "64-byte messages between two nodes over loopback TCP",
        "L3 node",
        "k msg/s",
        true,
        "raw TCP (one connection, length-prefixed)",
        format!("{n} messages through Node::send (at most 256 in flight) vs one raw TCP connection with the same framing; median of {} rounds", s.rounds),
    );
    let rounds = s.rounds;
    sc.row("raw TCP (one connection, length-prefixed)", || {
        let rt = runtime();
        let v: Vec<_> = (0..rounds)
            .map(|_| {
                rt.block_on(scenarios::raw_tcp_stream(64, n))
                    .expect("loopback")
            })
            .collect();
        let d = median(v.iter().map(|o| o.elapsed).collect());
        (n as f64 / d.as_secs_f64() / 1e3, String::new())
    });
    for (label, channels) in [
        ("Foundation node, channels", ChannelSettings::default()),
        (
            "Foundation node, single connection",
            scenarios::single_connection_channels(),
        ),
    ] {
        sc.row(label, || {
            let rt = runtime();
            let v: Vec<_> = (0..rounds)
                .map(|_| {
                    rt.block_on(scenarios::stream(
                        Net::Tcp,
                        channels.clone(),
                        Encoding::Bytes,
                        64,
                        n,
                        256,
                    ))
                    .expect("cluster")
                })
                .collect();
            let lost = v.iter().map(|o| n - o.received).sum::<u64>();
            let d = median(v.iter().map(|o| o.elapsed).collect());
            (
                n as f64 / d.as_secs_f64() / 1e3,
                format!("{lost} not received"),
            )
        });
    }
    sc.finish();
    sc
}

fn node_large(s: &Sizes) -> Scenario {
    let n = s.large;
    const SIZE: usize = 256 * 1024;
    let mut sc = Scenario::new(
        "node_large_messages",
        "256 KiB messages between two nodes over loopback TCP",
        "L3 node",
        "MiB/s",
        true,
        "raw TCP (one connection, length-prefixed)",
        format!("{n} messages of 256 KiB through Node::send (at most 8 in flight): as Bytes (MessagePack bin) and as Vec<u8> (serde default: an array of integers)"),
    );
    let mibs = |d: Duration| n as f64 * SIZE as f64 / MIB / d.as_secs_f64();
    sc.row("raw TCP (one connection, length-prefixed)", || {
        let rt = runtime();
        let o = rt
            .block_on(scenarios::raw_tcp_stream(SIZE, n))
            .expect("loopback");
        (mibs(o.elapsed), String::new())
    });
    for (label, enc) in [
        ("Foundation node, Bytes", Encoding::Bytes),
        ("Foundation node, Vec<u8>", Encoding::VecU8),
    ] {
        sc.row(label, || {
            let rt = runtime();
            let o = rt
                .block_on(scenarios::stream(
                    Net::Tcp,
                    ChannelSettings::default(),
                    enc,
                    SIZE,
                    n,
                    8,
                ))
                .expect("cluster");
            (mibs(o.elapsed), format!("{} of {n} received", o.received))
        });
    }
    sc.finish();
    sc
}

fn urgent_during_bulk(s: &Sizes) -> Scenario {
    let mut sc = Scenario::new(
        "urgent_during_bulk",
        "Urgent message latency during a 1 MiB bulk transfer (node API, loopback TCP)",
        "L3 channels",
        "p99 ms",
        false,
        "Foundation node, single connection",
        format!(
            "{} urgent 8-byte Node::send probes every 5 ms while 2 tasks stream 1 MiB messages; latency send to receipt",
            s.probes
        ),
    );
    let probes = s.probes;
    let mut cdfs = Vec::new();
    let mut lat = Vec::new();
    for (label, channels) in [
        (
            "Foundation node, single connection",
            scenarios::single_connection_channels(),
        ),
        ("Foundation node, channels", ChannelSettings::default()),
    ] {
        sc.row(label, || {
            let rt = runtime();
            let o = rt
                .block_on(scenarios::urgent_during_bulk(
                    Net::Tcp,
                    channels,
                    1 << 20,
                    2,
                    probes,
                    Duration::from_millis(5),
                ))
                .expect("cluster");
            let sum = o.urgent.summary();
            cdfs.push((label.to_string(), o.urgent.cdf()));
            lat.push((label.to_string(), sum));
            (
                sum.p99_us / 1e3,
                format!(
                    "p50 {:.2} ms, max {:.2} ms, {} lost, {} refused with an error, bulk {:.0} MiB/s",
                    sum.p50_us / 1e3,
                    sum.max_us / 1e3,
                    o.probes_lost,
                    o.probes_refused,
                    o.bulk_bytes as f64 / MIB / o.elapsed.as_secs_f64()
                ),
            )
        });
    }
    sc.cdfs = cdfs;
    sc.latency = lat;
    sc.finish();
    sc
}

fn topology_footprint(s: &Sizes) -> Scenario {
    let mut sc = Scenario::new(
        "topology_footprint",
        "Connections of the busiest node, by cluster size (in-memory transport)",
        "L3 topology",
        "connections at the largest size",
        false,
        "full mesh",
        format!(
            "clusters of {:?} nodes with the default channels; client-server with 1 server per 8 nodes (at least 2), 1 server per client",
            s.cluster_sizes
        ),
    );
    let sizes = s.cluster_sizes;
    let mut lines = Vec::new();
    for (label, kind) in [
        ("full mesh", TopologyKind::FullMesh),
        (
            "client-server",
            TopologyKind::ClientServer {
                servers_per_client: 1,
            },
        ),
    ] {
        sc.row(label, || {
            let rt = runtime();
            let mut pts = Vec::new();
            let mut detail = Vec::new();
            for &n in sizes {
                let f = rt
                    .block_on(scenarios::footprint(kind, n, (n / 8).max(2)))
                    .expect("cluster");
                pts.push((n as f64, f.max_connections as f64));
                detail.push(format!(
                    "{n}: {} max, {:.1} mean, {:.0} KiB heap/node",
                    f.max_connections,
                    f.mean_connections,
                    f.heap_per_node / 1024.0
                ));
            }
            let last = pts.last().map_or(0.0, |p| p.1);
            lines.push((label.to_string(), pts));
            (last, detail.join("; "))
        });
    }
    sc.lines = lines;
    sc.line_axes = Some(("nodes", "connections of the busiest node"));
    sc.finish();
    sc
}

/// Failure rates of the broadcast-reliability scenario.
const FAILURES: [f64; 7] = [0.10, 0.30, 0.50, 0.70, 0.80, 0.90, 0.95];
/// Broadcasts per round (from distinct random live nodes, sent at the same instant).
const PER_ROUND: usize = 5;
/// Repair rounds after the crash (each [`ROUND`] of virtual time).
const REPAIR_ROUNDS: usize = 5;
/// Virtual time per round: HyParView repair timer 1 s, Plumtree graft timeout 400 ms.
const ROUND: Duration = Duration::from_secs(5);

/// `k` broadcasts from distinct random live nodes at once, then [`ROUND`]; (mean
/// reliability, mean RMR).
fn overlay_round(sim: &mut Sim, k: usize) -> (f64, f64) {
    use rand::Rng;
    let mut live = sim.live();
    let k = k.min(live.len());
    for i in 0..k {
        let j = sim.rng().random_range(i..live.len());
        live.swap(i, j);
    }
    let ids: Vec<_> = live[..k]
        .iter()
        .map(|from| sim.broadcast(*from, Bytes::from_static(b"payload")))
        .collect();
    sim.run_for(ROUND);
    let rs: Vec<_> = ids.iter().map(|id| sim.report(id)).collect();
    let n = k.max(1) as f64;
    (
        rs.iter().map(|r| r.reliability()).sum::<f64>() / n,
        rs.iter().map(|r| r.rmr()).sum::<f64>() / n,
    )
}

/// Broadcast reliability against failure rate, per protocol: one row per (failure rate,
/// protocol) whose value is the reliability after repair, and four plotted series (first
/// broadcast / after repair, Plumtree / flooding).
fn broadcast_reliability(s: &Sizes) -> Scenario {
    let n = s.overlay_nodes;
    let mut sc = Scenario::new(
        "broadcast_reliability",
        "Broadcast reliability against failure rate",
        "L3",
        "% of live nodes reached after repair",
        true,
        "Flooding (same failure rate)",
        format!(
            "{n}-node HyParView + Plumtree overlay in the seeded simulator (seed 2007, latency 5–50 ms, failure notice 1 s after a crash), joins 10 ms apart then 40 s to settle, 5 warm-up broadcasts, then a random fraction crashed at once. Round 0 = {PER_ROUND} broadcasts from distinct random live nodes sent at the instant of the crash (\"first broadcast\"); then {REPAIR_ROUNDS} repair rounds of {PER_ROUND} broadcasts, {} s virtual time each (\"after repair\" = the last round). Reliability = mean share of live nodes reached. Flooding = every node forwards eagerly to its whole active view, on the same overlay",
            ROUND.as_secs()
        ),
    );
    let mut base = Sim::new(
        n,
        SimConfig {
            seed: 2007,
            crash_notice: Some(Duration::from_secs(1)),
            ..SimConfig::default()
        },
    );
    base.bootstrap(Duration::from_millis(10));
    base.run_for(Duration::from_secs(40));
    let mut series: Vec<(String, Vec<(f64, f64)>)> = [
        "Plumtree, first broadcast",
        "Plumtree, after repair",
        "Flooding, first broadcast",
        "Flooding, after repair",
    ]
    .iter()
    .map(|l| (l.to_string(), Vec::new()))
    .collect();
    for f in FAILURES {
        let mut flood_after = f64::NAN;
        for (m, mode) in [(0, Mode::Flood), (1, Mode::Plumtree)] {
            let label = format!(
                "{} @ {:.0}% failed",
                if m == 1 { "Plumtree" } else { "Flooding" },
                f * 100.0
            );
            let mut first = (0.0, 0.0);
            let mut after = (0.0, 0.0);
            sc.row(&label, || {
                let mut sim = base.clone();
                sim.set_broadcast_mode(mode);
                for _ in 0..5 {
                    overlay_round(&mut sim, 1);
                }
                sim.crash_fraction(f);
                first = overlay_round(&mut sim, PER_ROUND);
                after = first;
                for _ in 0..REPAIR_ROUNDS {
                    after = overlay_round(&mut sim, PER_ROUND);
                }
                let o = sim.overlay_report();
                (
                    after.0 * 100.0,
                    format!(
                        "first broadcast {:.1}% (RMR {:.2}); after {REPAIR_ROUNDS} rounds {:.1}% (RMR {:.2}); {} live, {} component(s), largest {}",
                        first.0 * 100.0,
                        first.1,
                        after.0 * 100.0,
                        after.1,
                        o.live,
                        o.components,
                        o.largest_component
                    ),
                )
            });
            let x = f * 100.0;
            let (fi, ai) = if m == 1 { (0, 1) } else { (2, 3) };
            series[fi].1.push((x, first.0 * 100.0));
            series[ai].1.push((x, after.0 * 100.0));
            let row = sc.rows.last_mut().expect("row just pushed");
            if m == 0 {
                flood_after = row.value;
                row.vs_baseline = 1.0;
            } else {
                row.vs_baseline = if flood_after > 0.0 {
                    row.value / flood_after
                } else {
                    f64::NAN
                };
            }
        }
    }
    sc.lines = series;
    sc.line_axes = Some(("% of nodes crashed at once", "% of live nodes reached"));
    sc
}

/// The broadcast-reliability table pivoted (failure rate × protocol × phase), and the
/// analysis computed from it.
fn broadcast_summary(sc: &Scenario) -> (String, Vec<String>) {
    let at = |series: usize, x: f64| {
        sc.lines
            .get(series)
            .and_then(|(_, p)| p.iter().find(|p| (p.0 - x).abs() < 1e-9))
            .map_or(f64::NAN, |p| p.1)
    };
    let mut t = String::from("| failed | Plumtree, first broadcast | Plumtree, after repair | Flooding, first broadcast | Flooding, after repair |\n|---|---|---|---|---|\n");
    for f in FAILURES {
        let x = f * 100.0;
        let _ = writeln!(
            t,
            "| {x:.0}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            at(0, x),
            at(1, x),
            at(2, x),
            at(3, x)
        );
    }
    let mut a = Vec::new();
    for (name, first, after) in [("Plumtree", 0, 1), ("Flooding", 2, 3)] {
        let ok: Vec<f64> = FAILURES
            .iter()
            .map(|f| f * 100.0)
            .filter(|x| at(after, *x) >= 99.0)
            .collect();
        let first_ok: Vec<f64> = FAILURES
            .iter()
            .map(|f| f * 100.0)
            .filter(|x| at(first, *x) >= 99.0)
            .collect();
        let worst = FAILURES
            .iter()
            .map(|f| (f * 100.0, at(after, f * 100.0)))
            .fold((0.0, f64::INFINITY), |m, p| if p.1 < m.1 { p } else { m });
        a.push(format!(
            "**Broadcast ({name})**: the first broadcasts after a simultaneous crash reach ≥ 99% of the survivors up to {} failed; after {REPAIR_ROUNDS} repair rounds up to {}; the lowest after repair is {:.1}% (at {:.0}% failed).",
            first_ok.last().map_or("no tested rate".into(), |x| format!("{x:.0}%")),
            ok.last().map_or("no tested rate".into(), |x| format!("{x:.0}%")),
            worst.1,
            worst.0
        ));
    }
    // Largest difference of the first broadcasts, in either direction.
    let gap = FAILURES
        .iter()
        .map(|f| {
            let x = f * 100.0;
            (x, at(0, x) - at(2, x))
        })
        .fold(
            (0.0, 0.0),
            |m: (f64, f64), p| {
                if p.1.abs() > m.1.abs() {
                    p
                } else {
                    m
                }
            },
        );
    let repaired = if FAILURES
        .iter()
        .all(|f| at(1, f * 100.0) + 0.05 >= at(3, f * 100.0))
    {
        "after repair Plumtree matches or beats flooding at every tested rate"
    } else {
        "after repair Plumtree still trails flooding at some rates (see the table)"
    };
    if gap.1 > 0.05 {
        a.push(format!(
            "**Broadcast**: Plumtree's first broadcast after the crash leads eager flooding most at {:.0}% failed (+{:.1} points): its lazy IHave links let survivors graft the payload around crashed eager peers within the round, where flooding only has the eager links; {repaired}.",
            gap.0, gap.1
        ));
    } else if gap.1 < -0.05 {
        a.push(format!(
            "**Broadcast**: eager flooding's first broadcast after the crash leads Plumtree most at {:.0}% failed (+{:.1} points): Plumtree's eager tree is broken by the crash until grafts (400 ms timeout) and HyParView repairs rebuild it; {repaired}.",
            gap.0, -gap.1
        ));
    } else {
        a.push(format!("**Broadcast**: Plumtree's first broadcast after the crash is within 0.05 points of eager flooding at every tested rate; {repaired}."));
    }
    (t, a)
}

// ------------------------------------------------------------------------------------
// Analysis (computed from the figures)

fn find<'a>(sc: &'a Scenario, system: &str) -> Option<&'a Row> {
    sc.rows.iter().find(|r| r.system == system)
}

fn analysis(scs: &[Scenario]) -> Vec<String> {
    let mut out = Vec::new();
    // Per scenario: where Foundation stands against its baseline and best peer.
    for sc in scs {
        let ours: Vec<&Row> = sc
            .rows
            .iter()
            .filter(|r| r.system.starts_with("Foundation"))
            .collect();
        let peers: Vec<&Row> = sc
            .rows
            .iter()
            .filter(|r| !r.system.starts_with("Foundation"))
            .collect();
        let Some(best_ours) = ours
            .iter()
            .max_by(|a, b| a.vs_baseline.total_cmp(&b.vs_baseline))
        else {
            continue;
        };
        let best_peer = peers
            .iter()
            .filter(|r| r.system != sc.baseline)
            .max_by(|a, b| a.vs_baseline.total_cmp(&b.vs_baseline));
        let mut line = format!(
            "**{}**: best Foundation variant ({}) at {}x the baseline ({})",
            sc.title,
            best_ours.system,
            fmt_v(best_ours.vs_baseline),
            sc.baseline
        );
        if let Some(p) = best_peer {
            let rel = best_ours.vs_baseline / p.vs_baseline;
            let _ = write!(
                line,
                "; {} the best peer ({}, {:.2}x the baseline) by {:.2}x",
                if rel >= 1.0 { "ahead of" } else { "behind" },
                p.system,
                p.vs_baseline,
                if rel >= 1.0 { rel } else { 1.0 / rel }
            );
        }
        line.push('.');
        out.push(line);
    }
    // Bottleneck: the scenario where Foundation is furthest below its baseline.
    let gaps: Vec<(&Scenario, f64)> = scs
        .iter()
        .filter(|s| s.id != "topology_footprint" && s.id != "urgent_during_bulk")
        .filter_map(|s| {
            s.rows
                .iter()
                .filter(|r| r.system.starts_with("Foundation"))
                .map(|r| r.vs_baseline)
                .filter(|v| v.is_finite())
                .max_by(f64::total_cmp)
                .map(|v| (s, v))
        })
        .collect();
    if let Some((s, v)) = gaps.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        out.push(format!(
            "**Largest gap**: {} — the best Foundation variant reaches {}% of {}. This is the first place to optimise.",
            s.title,
            fmt_v(v * 100.0),
            s.baseline
        ));
    }
    // Specific, threshold-driven recommendations.
    if let Some(s) = scs.iter().find(|s| s.id == "node_small_messages") {
        if let (Some(raw), Some(ch), Some(one)) = (
            find(s, "raw TCP (one connection, length-prefixed)"),
            find(s, "Foundation node, channels"),
            find(s, "Foundation node, single connection"),
        ) {
            let per_msg_us = |r: &Row| 1e3 / r.value;
            out.push(format!(
                "Node small-message cost: {:.2} us/msg with channels, {:.2} us/msg on one connection, {:.2} us/msg for raw TCP framing: the node adds {:.2} us per message{}",
                per_msg_us(ch),
                per_msg_us(one),
                per_msg_us(raw),
                per_msg_us(ch) - per_msg_us(raw),
                if ch.value < one.value / 1.1 {
                    format!("; channel separation costs {:.0}% of small-message throughput (above the design's 10% allowance)", (1.0 - ch.value / one.value) * 100.0)
                } else {
                    "; channel separation stays within the design's 10% allowance".into()
                }
            ));
        }
    }
    if let Some(s) = scs.iter().find(|s| s.id == "urgent_during_bulk") {
        if let (Some(ch), Some(one)) = (
            find(s, "Foundation node, channels"),
            find(s, "Foundation node, single connection"),
        ) {
            out.push(format!(
                "Head-of-line blocking: urgent p99 {:.2} ms with channels vs {:.2} ms on one connection ({:.1}x); {}",
                ch.value,
                one.value,
                one.value / ch.value.max(1e-9),
                if ch.value < 10.0 {
                    "within the design's 10 ms bound"
                } else {
                    "ABOVE the design's 10 ms bound: look at the receive path (one inbound task for every channel) and the bulk send path"
                }
            ));
        }
    }
    if let Some(s) = scs.iter().find(|s| s.id == "node_large_messages") {
        if let (Some(b), Some(v)) = (
            find(s, "Foundation node, Bytes"),
            find(s, "Foundation node, Vec<u8>"),
        ) {
            out.push(format!(
                "Large payloads across nodes: Bytes {:.0} MiB/s vs Vec<u8> {:.0} MiB/s ({:.1}x): {}",
                b.value,
                v.value,
                b.value / v.value.max(1e-9),
                if b.value > 2.0 * v.value {
                    "send binary data as bytes::Bytes (or serde_bytes); a Vec<u8> is encoded one integer per byte"
                } else {
                    "the encoding of the payload does not dominate"
                }
            ));
        }
    }
    if let Some(s) = scs.iter().find(|s| s.id == "topology_footprint") {
        if let (Some(m), Some(c)) = (find(s, "full mesh"), find(s, "client-server")) {
            out.push(format!(
                "Topology: at the largest size measured, the busiest node holds {:.0} connections in full mesh and {:.0} in client-server{}",
                m.value,
                c.value,
                if c.value >= m.value * 0.9 {
                    " — client-server does not relieve the busiest node (a server, or the seed every node joined through, keeps a link to every node); an overlay with bounded views is needed to scale further"
                } else {
                    ""
                }
            ));
        }
    }
    // Memory: the row with the largest peak heap.
    if let Some((s, r)) = scs
        .iter()
        .flat_map(|s| s.rows.iter().map(move |r| (s, r)))
        .max_by(|a, b| a.1.peak_heap_mib.total_cmp(&b.1.peak_heap_mib))
    {
        out.push(format!(
            "Peak memory: the largest heap peak was {:.1} MiB ({} in {}){}",
            r.peak_heap_mib,
            r.system,
            s.title,
            if r.peak_heap_mib > 1024.0 {
                " — over 1 GiB held for a transfer of 1 MiB messages: outbound channel queues are bounded in messages (1,024 per connection), not bytes, so large messages pile up; a byte bound on the bulk queues would cap it."
            } else {
                "."
            }
        ));
    }
    out
}

// ------------------------------------------------------------------------------------
// Output

fn fmt_v(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v == 0.0 || v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.5}")
    }
}

/// The assumption verdicts of the last `cargo test -p foundation-testkit --features
/// assumptions` run, if its evidence is in the target directory.
fn evidence() -> Vec<foundation_testkit::assumptions::Evidence> {
    foundation_testkit::assumptions::read_evidence(&foundation_testkit::assumptions::evidence_dir())
        .unwrap_or_default()
}

fn evidence_markdown(ev: &[foundation_testkit::assumptions::Evidence]) -> String {
    let mut s = String::from("## Assumption verdicts (last assumption test run)\n\n");
    if ev.is_empty() {
        s.push_str("No evidence in `target/assumptions/`: run `cargo test -p foundation-testkit --features assumptions --release`.\n\n");
        return s;
    }
    s.push_str("| id | verdict | expected | value | build |\n|---|---|---|---|---|\n");
    for e in ev {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            e.id,
            e.verdict,
            e.expected,
            fmt_v(e.value),
            e.profile
        );
    }
    s.push('\n');
    s
}

fn markdown(scs: &[Scenario], bcast: &Scenario, analysis: &[String], meta: &Meta) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Foundation comparative report\n");
    let _ = writeln!(
        s,
        "Mode: {}; {} cores; {} build; total run {:.0} s; generated at Unix time {}. Ratios are against the baseline of each scenario, measured in the same run, oriented so that > 1 is better.\n",
        meta.mode, meta.cores, meta.profile, meta.seconds, meta.at_unix
    );
    for sc in scs.iter().chain(std::iter::once(bcast)) {
        let _ = writeln!(s, "## {} ({})\n", sc.title, sc.layer);
        let _ = writeln!(s, "{}. Baseline: {}.\n", sc.method, sc.baseline);
        let _ = writeln!(
            s,
            "| system | {} | vs baseline | peak heap MiB | peak RSS MiB | detail |\n|---|---|---|---|---|---|",
            sc.unit
        );
        for r in &sc.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {}x | {} | {} | {} |",
                r.system,
                fmt_v(r.value),
                fmt_v(r.vs_baseline),
                fmt_v(r.peak_heap_mib),
                r.peak_rss_mib.map_or("–".into(), fmt_v),
                r.detail
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "### Broadcast reliability by failure rate (plot `plot-broadcast_reliability.svg`)\n"
    );
    s.push_str(&broadcast_summary(bcast).0);
    s.push('\n');
    s.push_str(&evidence_markdown(&evidence()));
    let _ = writeln!(s, "## Analysis (computed from the figures above)\n");
    for a in analysis {
        let _ = writeln!(s, "* {a}");
    }
    s
}

fn bar_svg(sc: &Scenario) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let h = 70 + 34 * sc.rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (820, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = sc
            .rows
            .iter()
            .map(|r| r.value)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            * 1.15;
        let n = sc.rows.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} ({})", sc.title, sc.unit), ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(290)
            .build_cartesian_2d(0.0..max.max(1e-9), (0..n).into_segmented())?;
        let labels: Vec<String> = sc.rows.iter().map(|r| r.system.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_labels(n)
            .x_desc(sc.unit)
            .draw()?;
        for (i, r) in sc.rows.iter().enumerate() {
            let color = if r.system.starts_with("Foundation") {
                RGBColor(31, 119, 180)
            } else if r.system == sc.baseline {
                RGBColor(120, 120, 120)
            } else {
                RGBColor(255, 127, 14)
            };
            let v = if r.value.is_finite() { r.value } else { 0.0 };
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (v, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{} ({}x)", fmt_v(r.value), fmt_v(r.vs_baseline)),
                (v, SegmentValue::CenterOf(i)),
                ("sans-serif", 12),
            )))?;
        }
        root.present()?;
    }
    Ok(svg)
}

const PALETTE: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn cdf_svg(sc: &Scenario) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = sc
            .cdfs
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.0 / 1e3))
            .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let lo = (lo * 0.8).max(0.001);
        let hi = (hi * 1.2).max(lo * 10.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Urgent latency CDF during a bulk transfer (log scale)",
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("latency, ms")
            .y_desc("fraction of probes")
            .draw()?;
        for (i, (label, pts)) in sc.cdfs.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, y)| (x / 1e3, *y)),
                    c.stroke_width(2),
                ))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn line_svg(sc: &Scenario) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = sc
            .lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.0))
            .fold(1.0f64, f64::max);
        let ymax = sc
            .lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold(1.0f64, f64::max)
            * 1.15;
        let (xd, yd) = sc.line_axes.unwrap_or(("x", "y"));
        let mut chart = ChartBuilder::on(&root)
            .caption(sc.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax)?;
        chart.configure_mesh().x_desc(xd).y_desc(yd).draw()?;
        for (i, (label, pts)) in sc.lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(if sc.id == "broadcast_reliability" {
                // Reliability curves start at 100%: keep the legend off them.
                SeriesLabelPosition::LowerLeft
            } else {
                SeriesLabelPosition::UpperLeft
            })
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// The scenario's plot: latency CDFs, lines, or throughput bars.
fn plot_svg(sc: &Scenario) -> Result<String, Box<dyn std::error::Error>> {
    if !sc.cdfs.is_empty() {
        cdf_svg(sc)
    } else if !sc.lines.is_empty() {
        line_svg(sc)
    } else {
        bar_svg(sc)
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Minimal Markdown emphasis (`**x**`) to HTML.
fn emphasis(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in html_escape(s).split("**").enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<b>{part}</b>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn html(
    scs: &[Scenario],
    bcast: &Scenario,
    analysis: &[String],
    meta: &Meta,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Foundation report</title><style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}}th{{background:#f3f3f3}}.plot{{margin:1em 0}}</style></head><body><h1>Foundation comparative report</h1><p>Mode {}; {} cores; {} build; run {:.0} s; Unix time {}. Ratios against each scenario's baseline from the same run (&gt; 1 is better). Blue: Foundation; grey: baseline; orange: peers.</p>",
        meta.mode, meta.cores, meta.profile, meta.seconds, meta.at_unix
    );
    let _ = write!(h, "<h2>Analysis (computed from the figures)</h2><ul>");
    for a in analysis {
        let _ = write!(h, "<li>{}</li>", emphasis(a));
    }
    let _ = write!(h, "</ul>");
    for sc in scs.iter().chain(std::iter::once(bcast)) {
        let _ = write!(
            h,
            "<h2>{} <small>({})</small></h2><p>{}. Baseline: {}.</p><table><tr><th>system</th><th>{}</th><th>vs baseline</th><th>peak heap MiB</th><th>peak RSS MiB</th><th>detail</th></tr>",
            html_escape(sc.title),
            sc.layer,
            html_escape(&sc.method),
            html_escape(sc.baseline),
            html_escape(sc.unit)
        );
        for r in &sc.rows {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}x</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&r.system),
                fmt_v(r.value),
                fmt_v(r.vs_baseline),
                fmt_v(r.peak_heap_mib),
                r.peak_rss_mib.map_or("–".into(), fmt_v),
                html_escape(&r.detail)
            );
        }
        let _ = write!(h, "</table>");
        let _ = write!(h, "<div class=\"plot\">{}</div>", plot_svg(sc)?);
    }
    let ev = evidence();
    let _ = write!(h, "<h2>Assumption verdicts (last assumption test run)</h2>");
    if ev.is_empty() {
        let _ = write!(h, "<p>No evidence in <code>target/assumptions/</code>.</p>");
    } else {
        let _ = write!(h, "<table><tr><th>id</th><th>verdict</th><th>expected</th><th>value</th><th>build</th><th>measured</th></tr>");
        for e in &ev {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html_escape(&e.id),
                e.verdict,
                e.expected,
                fmt_v(e.value),
                e.profile,
                html_escape(&e.measured)
            );
        }
        let _ = write!(h, "</table>");
    }
    let _ = write!(h, "</body></html>");
    Ok(h)
}

/// A scenario runner.
type ScenarioFn = fn(&Sizes) -> Scenario;

#[derive(Serialize)]
struct Meta {
    mode: &'static str,
    cores: usize,
    profile: &'static str,
    seconds: f64,
    at_unix: u64,
}

#[derive(Serialize)]
struct Json<'a> {
    meta: &'a Meta,
    scenarios: &'a [Scenario],
    analysis: &'a [String],
    broadcast_reliability: &'a Scenario,
}

fn main() {
    let mut quick = false;
    let mut smoke = false;
    let mut out = foundation_testkit::assumptions::target_dir().join("report");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--smoke" => smoke = true,
            "--out" => match args.next() {
                Some(d) => out = PathBuf::from(d),
                None => {
                    eprintln!("report: --out needs a directory");
                    std::process::exit(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: report [--quick | --smoke] [--out DIR]\nRuns the comparative scenarios and writes report.md, report.json and report.html (default target/report/).\n--quick: smaller runs (under 5 minutes on 2 cores); --smoke: tiny runs that only check the pipeline (figures not meaningful).");
                return;
            }
            other => {
                eprintln!("report: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    if !memory::installed() {
        eprintln!("report: the counting allocator is not installed; heap figures would be 0");
        std::process::exit(1);
    }
    let sizes = if smoke {
        Sizes {
            messages: 2_000,
            calls: 200,
            node_messages: 500,
            probes: 10,
            large: 10,
            rounds: 1,
            cluster_sizes: &[2, 3],
            overlay_nodes: 100,
        }
    } else if quick {
        Sizes {
            messages: 200_000,
            calls: 20_000,
            node_messages: 20_000,
            probes: 100,
            large: 100,
            rounds: 3,
            cluster_sizes: &[4, 8, 12],
            overlay_nodes: 1_000,
        }
    } else {
        Sizes {
            messages: 1_000_000,
            calls: 100_000,
            node_messages: 100_000,
            probes: 400,
            large: 400,
            rounds: 5,
            cluster_sizes: &[4, 8, 16, 24],
            overlay_nodes: 3_000,
        }
    };
    let started = Instant::now();
    let runs: [(&str, ScenarioFn); 7] = [
        ("fire_and_forget", fire_and_forget),
        ("request_reply", request_reply),
        ("large_in_process", large_in_process),
        ("node_small_messages", node_small),
        ("node_large_messages", node_large),
        ("urgent_during_bulk", urgent_during_bulk),
        ("topology_footprint", topology_footprint),
    ];
    let mut scs = Vec::new();
    for (name, f) in runs {
        eprintln!("scenario {name}");
        scs.push(f(&sizes));
    }
    eprintln!("scenario broadcast_reliability");
    let bcast = broadcast_reliability(&sizes);
    let mut analysis = analysis(&scs);
    analysis.extend(broadcast_summary(&bcast).1);
    let meta = Meta {
        mode: if smoke {
            "smoke (pipeline check only: figures not meaningful)"
        } else if quick {
            "quick"
        } else {
            "full"
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seconds: started.elapsed().as_secs_f64(),
        at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("report: cannot create {}: {e}", out.display());
        std::process::exit(1);
    }
    let md = markdown(&scs, &bcast, &analysis, &meta);
    let json = serde_json::to_string_pretty(&Json {
        meta: &meta,
        scenarios: &scs,
        analysis: &analysis,
        broadcast_reliability: &bcast,
    })
    .expect("the report serialises");
    let page = match html(&scs, &bcast, &analysis, &meta) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("report: cannot draw the plots: {e}");
            std::process::exit(1);
        }
    };
    for sc in scs.iter().chain(std::iter::once(&bcast)) {
        if let Ok(svg) = plot_svg(sc) {
            let p = out.join(format!("plot-{}.svg", sc.id));
            if let Err(e) = std::fs::write(&p, svg) {
                eprintln!("report: cannot write {}: {e}", p.display());
                std::process::exit(1);
            }
        }
    }
    for (name, body) in [
        ("report.md", md.as_str()),
        ("report.json", json.as_str()),
        ("report.html", page.as_str()),
    ] {
        let p = out.join(name);
        if let Err(e) = std::fs::write(&p, body) {
            eprintln!("report: cannot write {}: {e}", p.display());
            std::process::exit(1);
        }
    }
    println!("{md}");
    eprintln!(
        "wrote {}/report.{{md,json,html}} in {:.0} s",
        out.display(),
        meta.seconds
    );
}
