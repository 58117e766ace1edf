//! The design's assumptions, measured through the public API. Run with
//! `cargo test -p foundation-testkit --features assumptions` (add `--release` for figures
//! worth quoting); each test writes its evidence under `target/assumptions/` and fails
//! only if the verdict is not the expected one. `cargo run -p foundation-testkit --bin
//! update-assumptions` then rewrites `docs/ASSUMPTIONS.md`.
#![cfg(feature = "assumptions")]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foundation_beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_beam::mailbox::{MemoryStrategy, Overflow};
use foundation_beam::message::{MessageOptions, Messenger, Payload, StrategySettings};
use foundation_beam::process::{spawn_fn, spawn_with, Context, Process, Reply, SpawnOptions};
use foundation_beam::scheduler;
use foundation_core::config::Config;
use foundation_core::telemetry::ShardedRecorder;
use foundation_distributed::channel::ChannelSettings;
use foundation_distributed::node::SendOptions;
use foundation_distributed::topology::TopologyKind;
use foundation_testkit::assumptions::{self as reg, median_of, median_ratio, time_n};
use foundation_testkit::cluster::{Cluster, ClusterSpec, Net};
use foundation_testkit::latency::LatencyRecorder;
use foundation_testkit::memory::{self, PeakAlloc};
use foundation_testkit::scenarios::{self, Encoding};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Measurements run one at a time: tests in one binary run in parallel, and two
/// measurements sharing 2 cores would measure each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// A1: config hot read

#[test]
fn a1_config_hot_read() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let config = Config::new();
    let ns = rt.block_on(async {
        let ns = config.create_namespace("a1").unwrap();
        let t: HashMap<String, u64> = (0..1000).map(|i| (format!("k{i:04}"), i)).collect();
        ns.merge("svc", &t).await.unwrap();
        ns
    });
    let base: RwLock<HashMap<String, Arc<u64>>> = RwLock::new(
        (0..1000u64)
            .map(|i| (format!("svc.k{i:04}"), Arc::new(i)))
            .collect(),
    );
    const N: u64 = 2_000_000;
    let key = "svc.k0500";
    // Baseline and Foundation measured alternately, the ratio taken per pair.
    let (ratio, f, b) = median_ratio(
        7,
        || {
            time_n(N, || {
                drop(black_box(ns.get_arc::<u64>(black_box(key)).unwrap()))
            })
        },
        || {
            time_n(N, || {
                drop(black_box(base.read().get(black_box(key)).cloned()))
            })
        },
    );
    let g = median_of(5, || {
        time_n(N, || {
            black_box(ns.get::<u64>(black_box(key)).unwrap());
        })
    });
    let per = |d: Duration| d.as_nanos() as f64 / N as f64;
    reg::A1
        .judge(
            ratio,
            ratio <= 1.5,
            format!(
                "get_arc {:.1} ns vs baseline {:.1} ns: ratio {ratio:.2}; get (clone of u64) {:.1} ns: ratio {:.2}",
                per(f),
                per(b),
                per(g),
                g.as_secs_f64() / b.as_secs_f64()
            ),
        )
        .figure("get_arc_ns", per(f))
        .figure("baseline_ns", per(b))
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A2: per-core telemetry

fn two_threads(counter: &metrics::Counter) -> Duration {
    let barrier = Arc::new(Barrier::new(3));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let c = counter.clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                for _ in 0..2_000_000 {
                    c.increment(1);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

#[test]
fn a2_per_core_telemetry() {
    let _serial = SERIAL.lock();
    use metrics::{Key, Metadata, Recorder};
    static META: Metadata<'static> = Metadata::new("a2", metrics::Level::INFO, None);
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let sharded = ShardedRecorder::new(4, &[], &[]);
    let base = exporter.register_counter(&Key::from_static_name("a2_total"), &META);
    let ours = sharded.register_counter(&Key::from_static_name("a2_total"), &META);
    let (ratio, b, o) = median_ratio(7, || two_threads(&base), || two_threads(&ours));
    assert!(
        sharded.render().contains("a2_total 28000000"),
        "merged total is exact (7 rounds x 2 threads x 2M)"
    );
    reg::A2
        .judge(
            ratio,
            ratio >= 2.0,
            format!(
                "exporter {:.1} ms, sharded {:.1} ms for 4M increments: {ratio:.1}x",
                ms(b),
                ms(o)
            ),
        )
        .figure("exporter_ms", ms(b))
        .figure("sharded_ms", ms(o))
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A3: mailbox throughput

enum Tick {
    Start(u64, oneshot::Sender<()>),
    One(u64),
}

#[derive(Default)]
struct Sink(u64, Option<oneshot::Sender<()>>);

impl Process for Sink {
    type Message = Tick;
    async fn handle(&mut self, m: Tick, _: &mut Context<Tick>) {
        match m {
            Tick::Start(n, d) => *self = Sink(n, Some(d)),
            Tick::One(v) => {
                black_box(v);
                self.0 -= 1;
                if self.0 == 0 {
                    let _ = self.1.take().map(|d| d.send(()));
                }
            }
        }
    }
}

#[test]
fn a3_mailbox_throughput() {
    let _serial = SERIAL.lock();
    const N: u64 = 200_000;
    let rt = runtime();
    let raw = median_of(5, || {
        rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
            let (dtx, drx) = oneshot::channel();
            tokio::spawn(async move {
                let mut left = N;
                while let Some(v) = rx.recv().await {
                    black_box(v);
                    left -= 1;
                    if left == 0 {
                        let _ = dtx.send(());
                        break;
                    }
                }
            });
            let start = Instant::now();
            for i in 0..N {
                tx.send(i).unwrap();
            }
            drx.await.unwrap();
            start.elapsed()
        })
    });
    let h = rt.block_on(async {
        spawn_with(
            Sink::default(),
            SpawnOptions::new().memory(MemoryStrategy::unbounded()),
        )
        .unwrap()
    });
    let run = |awaited: bool| {
        median_of(5, || {
            rt.block_on(async {
                let (dtx, drx) = oneshot::channel();
                h.try_send(Tick::Start(N, dtx)).unwrap();
                let start = Instant::now();
                for i in 0..N {
                    if awaited {
                        h.send(Tick::One(i)).await.unwrap();
                    } else {
                        h.try_send(Tick::One(i)).unwrap();
                    }
                }
                drx.await.unwrap();
                start.elapsed()
            })
        })
    };
    let try_send = run(false);
    let send = run(true);
    let ratio_try = raw.as_secs_f64() / try_send.as_secs_f64();
    let ratio_send = raw.as_secs_f64() / send.as_secs_f64();
    let ratio = ratio_try.min(ratio_send);
    let rate = |d: Duration| N as f64 / d.as_secs_f64() / 1e6;
    reg::A3
        .judge(
            ratio,
            ratio >= 0.6,
            format!(
                "try_send {:.2} M msg/s ({ratio_try:.2}x), send().await {:.2} M msg/s ({ratio_send:.2}x), raw mpsc {:.2} M msg/s",
                rate(try_send),
                rate(send),
                rate(raw)
            ),
        )
        .figure("try_send_mps", rate(try_send) * 1e6)
        .figure("send_await_mps", rate(send) * 1e6)
        .figure("raw_mpsc_mps", rate(raw) * 1e6)
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A4: binary config storage avoids copying

#[test]
fn a4_config_binary_no_copy() {
    let _serial = SERIAL.lock();
    assert!(memory::installed(), "the counting allocator is installed");
    let rt = runtime();
    let config = Config::new();
    const MIB: usize = 1 << 20;
    let ns = rt.block_on(async {
        let ns = config.create_namespace("a4").unwrap();
        ns.set("small", &0u64).await.unwrap();
        // The largest value the store accepts: 1 MiB encoded.
        ns.set("big", &rmpv::Value::Binary(vec![7; MIB - 16]))
            .await
            .unwrap();
        ns
    });
    // One warm-up read: a typed read may decode once and cache.
    drop(ns.get_arc::<rmpv::Value>("big").unwrap());
    let (raw_peak, _, _) = memory::heap_growth(|| {
        for _ in 0..1000 {
            drop(black_box(ns.get_raw(black_box("big")).unwrap()));
        }
    });
    let (arc_peak, _, _) = memory::heap_growth(|| {
        for _ in 0..1000 {
            drop(black_box(
                ns.get_arc::<rmpv::Value>(black_box("big")).unwrap(),
            ));
        }
    });
    // Writes of another key, each followed by a typed read of the big value: a write
    // that copied the value, or dropped its decoded cache, shows here.
    let (write_peak, _, _) = memory::heap_growth(|| {
        rt.block_on(async {
            for i in 0..100u64 {
                ns.set("small", &i).await.unwrap();
                drop(black_box(ns.get_arc::<rmpv::Value>("big").unwrap()));
            }
        })
    });
    let worst = raw_peak.max(arc_peak).max(write_peak);
    let kib = |b: usize| b as f64 / 1024.0;
    reg::A4
        .judge(
            kib(worst),
            worst <= 64 * 1024,
            format!(
                "peak heap growth: 1,000 get_raw {:.1} KiB, 1,000 get_arc {:.1} KiB, 100 writes of another key + get_arc {:.1} KiB (value: 1,024 KiB)",
                kib(raw_peak),
                kib(arc_peak),
                kib(write_peak)
            ),
        )
        .figure("get_raw_peak_kib", kib(raw_peak))
        .figure("get_arc_peak_kib", kib(arc_peak))
        .figure("write_peak_kib", kib(write_peak))
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A5: urgent lane under load

enum Work {
    Busy,
    Probe(Instant, bool),
}

struct Worker {
    urgent: Arc<Mutex<LatencyRecorder>>,
    normal: Arc<Mutex<LatencyRecorder>>,
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

impl Process for Worker {
    type Message = Work;
    async fn handle(&mut self, m: Work, _: &mut Context<Work>) {
        match m {
            Work::Busy => spin(Duration::from_micros(50)),
            Work::Probe(sent, urgent) => {
                let r = if urgent { &self.urgent } else { &self.normal };
                r.lock().record(sent.elapsed());
            }
        }
    }
}

#[test]
fn a5_urgent_lane_under_load() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let urgent = Arc::new(Mutex::new(LatencyRecorder::new()));
    let normal = Arc::new(Mutex::new(LatencyRecorder::new()));
    rt.block_on(async {
        let h = spawn_with(
            Worker {
                urgent: urgent.clone(),
                normal: normal.clone(),
            },
            SpawnOptions::new().memory(MemoryStrategy::bounded(256, Overflow::Backpressure)),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (h, stop) = (h.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if h.send(Work::Busy).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let normal_prober = {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(4)).await;
                    let _ = h.send(Work::Probe(Instant::now(), false)).await;
                }
            })
        };
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            h.send_urgent(Work::Probe(Instant::now(), true))
                .await
                .unwrap();
        }
        normal_prober.await.unwrap();
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        while h.backlog() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.shutdown();
    });
    let u = urgent.lock().summary();
    let n = normal.lock().summary();
    let p99_ms = u.p99_us / 1e3;
    reg::A5
        .judge(
            p99_ms,
            p99_ms <= 1.0 && u.p99_us * 10.0 <= n.p50_us,
            format!(
                "urgent {}; normal {} (bounded mailbox of 256, 50 us handler)",
                u.describe_ms(),
                n.describe_ms()
            ),
        )
        .figure("urgent_p50_ms", u.p50_us / 1e3)
        .figure("urgent_p99_ms", p99_ms)
        .figure("normal_p50_ms", n.p50_us / 1e3)
        .figure("normal_p99_ms", n.p99_us / 1e3)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A6: worker isolation

enum Iso {
    Probe(Reply<()>),
    Heavy(Reply<Duration>),
}

struct IsoWorker;

impl Process for IsoWorker {
    type Message = Iso;
    async fn handle(&mut self, m: Iso, _: &mut Context<Iso>) {
        match m {
            Iso::Probe(r) => r.send(()),
            Iso::Heavy(r) => {
                let start = Instant::now();
                // A huge allocation and deallocation: 4M boxed entries.
                let v: Vec<Box<u64>> = (0..4_000_000u64).map(Box::new).collect();
                black_box(&v);
                drop(v);
                // Heavy computation, budgeted as the scheduler module documents.
                let _ = scheduler::cpu_intensive(0..200_000u32, |_| spin(Duration::from_micros(1)))
                    .await;
                r.send(start.elapsed());
            }
        }
    }
}

#[test]
fn a6_worker_isolation() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let (lat, heavy) = rt.block_on(async {
        let eco = Ecosystem::start(EcosystemSpec::new("a6").workers(Workers::Fixed(4)), |_| {
            IsoWorker
        })
        .await
        .unwrap();
        let workers = eco.workers();
        let done = Arc::new(AtomicBool::new(false));
        let heavy = {
            let (w, done) = (workers[0].clone(), done.clone());
            tokio::spawn(async move {
                let d = w.call(Iso::Heavy, Duration::from_secs(60)).await.unwrap();
                done.store(true, Ordering::Relaxed);
                d
            })
        };
        let mut lat = LatencyRecorder::new();
        let mut i = 0;
        while !done.load(Ordering::Relaxed) {
            let w = &workers[1 + i % 3];
            i += 1;
            let t = Instant::now();
            w.call(Iso::Probe, Duration::from_secs(10)).await.unwrap();
            lat.record(t.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let heavy = heavy.await.unwrap();
        eco.shutdown(Duration::from_secs(5)).await;
        (lat, heavy)
    });
    let s = lat.summary();
    let p99_ms = s.p99_us / 1e3;
    reg::A6
        .judge(
            p99_ms,
            p99_ms < 10.0,
            format!(
                "sibling calls during worker 0's {:.0} ms of allocation, deallocation and computation: {}",
                ms(heavy),
                s.describe_ms()
            ),
        )
        .figure("sibling_p50_ms", s.p50_us / 1e3)
        .figure("sibling_p99_ms", p99_ms)
        .figure("sibling_max_ms", s.max_us / 1e3)
        .figure("heavy_ms", ms(heavy))
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A7: optimised sending in process

#[test]
fn a7_optimized_send_in_process() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    const N: u64 = 2_000;
    const WINDOW: u64 = 64;
    let data = vec![0x5Au8; 1 << 20];
    let bytes = Bytes::from(data.clone());
    let (standard, optimized) = rt.block_on(async {
        let handled = Arc::new(AtomicU64::new(0));
        let plain = {
            let handled = handled.clone();
            spawn_fn(move |mut inbox| async move {
                while let Some(m) = inbox.recv().await {
                    let m: Vec<u8> = m;
                    drop(black_box(m));
                    handled.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let handled2 = Arc::new(AtomicU64::new(0));
        let sink = {
            let handled = handled2.clone();
            spawn_fn(move |mut inbox| async move {
                while let Some(p) = inbox.recv().await {
                    let p: Payload = p;
                    drop(black_box(p.take()));
                    handled.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let messenger = Messenger::new(StrategySettings::default()).unwrap();
        let opts = MessageOptions::default();
        let mut std_times = Vec::new();
        let mut opt_times = Vec::new();
        for _ in 0..5 {
            let base = handled.load(Ordering::Relaxed);
            let t = Instant::now();
            for i in 0..N {
                while base + i - handled.load(Ordering::Relaxed) >= WINDOW {
                    tokio::task::yield_now().await;
                }
                plain.send(data.clone()).await.unwrap();
            }
            while handled.load(Ordering::Relaxed) < base + N {
                tokio::task::yield_now().await;
            }
            std_times.push(t.elapsed());
            let base = handled2.load(Ordering::Relaxed);
            let t = Instant::now();
            for i in 0..N {
                while base + i - handled2.load(Ordering::Relaxed) >= WINDOW {
                    tokio::task::yield_now().await;
                }
                let r = messenger
                    .send_optimized(&sink, bytes.clone(), &opts)
                    .await
                    .unwrap();
                assert!(r.delivered);
            }
            while handled2.load(Ordering::Relaxed) < base + N {
                tokio::task::yield_now().await;
            }
            opt_times.push(t.elapsed());
        }
        messenger.shutdown().await;
        std_times.sort();
        opt_times.sort();
        (std_times[2], opt_times[2])
    });
    let ratio = standard.as_secs_f64() / optimized.as_secs_f64();
    let per_us = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    reg::A7
        .judge(
            ratio,
            ratio > 2.0,
            format!(
                "1 MiB: send(vec.clone()) {:.2} us/msg, send_optimized {:.2} us/msg: {ratio:.1}x",
                per_us(standard),
                per_us(optimized)
            ),
        )
        .figure("standard_us_per_msg", per_us(standard))
        .figure("optimized_us_per_msg", per_us(optimized))
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A8: optimised sending across nodes

#[test]
fn a8_optimized_send_across_nodes() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    const SIZE: usize = 256 * 1024;
    const N: u64 = 200;
    let run = |enc: Encoding| {
        let mut v: Vec<_> = (0..3)
            .map(|_| {
                rt.block_on(scenarios::stream(
                    Net::Tcp,
                    ChannelSettings::default(),
                    enc,
                    SIZE,
                    N,
                    8,
                ))
                .unwrap()
            })
            .collect();
        v.sort_by_key(|o| o.elapsed);
        v[1]
    };
    let vec = run(Encoding::VecU8);
    let bytes = run(Encoding::Bytes);
    assert_eq!(
        (vec.received, bytes.received),
        (N, N),
        "every message arrived"
    );
    let ratio = vec.elapsed.as_secs_f64() / bytes.elapsed.as_secs_f64();
    let mbps = |o: &scenarios::StreamOutcome| o.rate() * SIZE as f64 / (1 << 20) as f64;
    reg::A8
        .judge(
            ratio,
            ratio > 2.0,
            format!(
                "256 KiB over loopback TCP: Vec<u8> {:.1} MiB/s, Bytes {:.1} MiB/s: {ratio:.1}x",
                mbps(&vec),
                mbps(&bytes)
            ),
        )
        .figure("vec_mib_s", mbps(&vec))
        .figure("bytes_mib_s", mbps(&bytes))
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A9: Partisan-style distribution scales further than full mesh

/// Least squares of `heap = a * nodes + b * connections` (no intercept).
fn fit_two(points: &[(f64, f64, f64)]) -> (f64, f64) {
    let (mut s11, mut s12, mut s22, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (x1, x2, y) in points {
        s11 += x1 * x1;
        s12 += x1 * x2;
        s22 += x2 * x2;
        s1y += x1 * y;
        s2y += x2 * y;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() < 1e-9 {
        return (0.0, 0.0);
    }
    ((s1y * s22 - s2y * s12) / det, (s2y * s11 - s1y * s12) / det)
}

#[test]
fn a9_partisan_scales_further() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    const SIZES: [usize; 3] = [4, 8, 16];
    const FD_BUDGET: f64 = 1024.0;
    const MEM_BUDGET: f64 = 64.0 * 1024.0 * 1024.0;
    let servers = |n: usize| (n / 8).max(2);
    let mut mesh = Vec::new();
    let mut cs = Vec::new();
    for n in SIZES {
        mesh.push(
            rt.block_on(scenarios::footprint(TopologyKind::FullMesh, n, 0))
                .unwrap(),
        );
        cs.push(
            rt.block_on(scenarios::footprint(
                TopologyKind::ClientServer {
                    servers_per_client: 1,
                },
                n,
                servers(n),
            ))
            .unwrap(),
        );
    }
    // Memory model from every measured cluster: heap = a * nodes + b * connections.
    let points: Vec<(f64, f64, f64)> = mesh
        .iter()
        .chain(&cs)
        .map(|f| {
            (
                f.nodes as f64,
                f.mean_connections * f.nodes as f64,
                f.heap_total as f64,
            )
        })
        .collect();
    let (per_node, per_conn) = fit_two(&points);
    let limit = |fps: &[scenarios::Footprint]| {
        let conns = scenarios::fit_line(
            &fps.iter()
                .map(|f| (f.nodes as f64, f.max_connections as f64))
                .collect::<Vec<_>>(),
        );
        let by_fd = scenarios::largest_within(conns, FD_BUDGET, 1_000_000);
        // Memory of the busiest node: per_node + per_conn * its connections.
        let mem = (
            per_node.max(0.0) + per_conn.max(0.0) * conns.0,
            per_conn.max(0.0) * conns.1,
        );
        let by_mem = scenarios::largest_within(mem, MEM_BUDGET, 1_000_000);
        (by_fd.min(by_mem), by_fd, by_mem, conns)
    };
    let (mesh_max, mesh_fd, mesh_mem, mesh_model) = limit(&mesh);
    let (cs_max, cs_fd, cs_mem, cs_model) = limit(&cs);
    let table = |fps: &[scenarios::Footprint]| {
        fps.iter()
            .map(|f| {
                format!(
                    "{} nodes: max {} conns/node, mean {:.1}, heap {:.0} KiB/node",
                    f.nodes,
                    f.max_connections,
                    f.mean_connections,
                    f.heap_per_node / 1024.0
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut e = reg::A9
        .judge(
            cs_max as f64 / mesh_max.max(1) as f64,
            cs_max > mesh_max,
            format!(
                "full mesh [{}]; client-server [{}]; busiest-node connections ~ {:.1} + {:.2} n (mesh) vs {:.1} + {:.2} n (client-server); memory ~ {:.0} KiB/node + {:.1} KiB/connection; largest within 1,024 fds and 64 MiB: full mesh {} (fd {}, mem {}), client-server {} (fd {}, mem {})",
                table(&mesh),
                table(&cs),
                mesh_model.0,
                mesh_model.1,
                cs_model.0,
                cs_model.1,
                per_node / 1024.0,
                per_conn / 1024.0,
                mesh_max,
                mesh_fd,
                mesh_mem,
                cs_max,
                cs_fd,
                cs_mem
            ),
        )
        .figure("mesh_largest", mesh_max as f64)
        .figure("client_server_largest", cs_max as f64)
        .figure("heap_per_connection_kib", per_conn / 1024.0);
    for (m, c) in mesh.iter().zip(&cs) {
        e = e
            .figure(
                &format!("mesh_{}_max_conns", m.nodes),
                m.max_connections as f64,
            )
            .figure(
                &format!("cs_{}_max_conns", c.nodes),
                c.max_connections as f64,
            );
    }
    e.record_and_check();
}

// ---------------------------------------------------------------------------------------
// A10: ecosystems vs one monolithic process, memory

const KEYS: u64 = 20_000;
const UPDATES: u64 = 200_000;

enum Kv {
    Update(u64, u64),
    Read(u64, oneshot::Sender<u64>),
}

#[derive(Default)]
struct Store {
    state: HashMap<u64, Vec<u64>>,
}

impl Process for Store {
    type Message = Kv;
    async fn handle(&mut self, m: Kv, _: &mut Context<Kv>) {
        match m {
            Kv::Update(k, v) => {
                let e = self.state.entry(k).or_default();
                if e.len() == 8 {
                    e.remove(0);
                }
                e.push(v);
            }
            Kv::Read(k, r) => {
                let _ = r.send(self.state.get(&k).map_or(0, |v| v.iter().sum()));
            }
        }
    }
}

fn kv_workload(ecosystem: bool) -> (usize, u64) {
    let rt = runtime();
    let start = memory::heap_now();
    memory::reset_heap_peak();
    let sum = rt.block_on(async {
        let eco = if ecosystem {
            Some(
                Ecosystem::start(EcosystemSpec::new("a10").workers(Workers::Fixed(4)), |_| {
                    Store::default()
                })
                .await
                .unwrap(),
            )
        } else {
            None
        };
        let mono = (!ecosystem).then(|| spawn_with(Store::default(), SpawnOptions::new()).unwrap());
        let eco = Arc::new(eco);
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let (eco, mono) = (eco.clone(), mono.clone());
                tokio::spawn(async move {
                    for i in 0..UPDATES / 4 {
                        let k = (i * 4 + p) % KEYS;
                        match (&*eco, &mono) {
                            (Some(e), _) => {
                                e.send_keyed(&k, Kv::Update(k, i)).await.unwrap();
                            }
                            (None, Some(m)) => {
                                m.send(Kv::Update(k, i)).await.unwrap();
                            }
                            _ => unreachable!(),
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        let mut sum = 0u64;
        for k in 0..KEYS {
            let (tx, rx) = oneshot::channel();
            match (&*eco, &mono) {
                // Reads go to the key's worker, as the updates did.
                (Some(e), _) => e.send_keyed(&k, Kv::Read(k, tx)).await.unwrap(),
                (None, Some(m)) => m.send(Kv::Read(k, tx)).await.unwrap(),
                _ => unreachable!(),
            };
            sum = sum.wrapping_add(rx.await.unwrap());
        }
        if let Some(e) = &*eco {
            e.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(m) = &mono {
            m.shutdown();
        }
        sum
    });
    drop(rt);
    (memory::heap_peak().saturating_sub(start), sum)
}

#[test]
fn a10_ecosystem_memory() {
    let _serial = SERIAL.lock();
    assert!(memory::installed(), "the counting allocator is installed");
    let mono: Vec<(usize, u64)> = (0..3).map(|_| kv_workload(false)).collect();
    let eco: Vec<(usize, u64)> = (0..3).map(|_| kv_workload(true)).collect();
    assert!(
        mono.iter().chain(&eco).all(|r| r.1 == mono[0].1),
        "the same work: every run reads the same sums"
    );
    let mono: Vec<usize> = mono.into_iter().map(|r| r.0).collect();
    let eco: Vec<usize> = eco.into_iter().map(|r| r.0).collect();
    let med = |mut v: Vec<usize>| {
        v.sort_unstable();
        v[1]
    };
    let (m, e) = (med(mono) as f64, med(eco) as f64);
    let reduction = (m - e) / m;
    let mib = |b: f64| b / (1 << 20) as f64;
    reg::A10
        .judge(
            reduction,
            reduction > 0.2,
            format!(
                "peak heap growth: monolith {:.2} MiB, ecosystem of 4 {:.2} MiB: reduction {:.1}%",
                mib(m),
                mib(e),
                reduction * 100.0
            ),
        )
        .figure("monolith_mib", mib(m))
        .figure("ecosystem_mib", mib(e))
        .figure("reduction", reduction)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A11: channel separation, through the node API

#[test]
fn a11_channels_no_hol() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let run = |channels: ChannelSettings| {
        rt.block_on(scenarios::urgent_during_bulk(
            Net::Tcp,
            channels,
            1 << 20,
            2,
            200,
            Duration::from_millis(5),
        ))
        .unwrap()
    };
    let sep = run(ChannelSettings::default());
    let one = run(scenarios::single_connection_channels());
    let (s, o) = (sep.urgent.summary(), one.urgent.summary());
    let p99_ms = s.p99_us / 1e3;
    let mib_s = |h: &scenarios::HolOutcome| {
        h.bulk_bytes as f64 / (1 << 20) as f64 / h.elapsed.as_secs_f64()
    };
    reg::A11
        .judge(
            p99_ms,
            p99_ms < 10.0 && sep.probes_lost == 0,
            format!(
                "urgent during 1 MiB bulk over loopback TCP: channels {} ({} lost, {} refused with an error, bulk {:.0} MiB/s); single connection {} ({} lost, {} refused, bulk {:.0} MiB/s)",
                s.describe_ms(),
                sep.probes_lost,
                sep.probes_refused,
                mib_s(&sep),
                o.describe_ms(),
                one.probes_lost,
                one.probes_refused,
                mib_s(&one)
            ),
        )
        .figure("channels_p50_ms", s.p50_us / 1e3)
        .figure("channels_p99_ms", p99_ms)
        .figure("single_p50_ms", o.p50_us / 1e3)
        .figure("single_p99_ms", o.p99_us / 1e3)
        .figure("channels_bulk_mib_s", mib_s(&sep))
        .figure("single_bulk_mib_s", mib_s(&one))
        .figure("channels_refused", sep.probes_refused as f64)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A12: Partisan-style overhead for small messages

#[test]
fn a12_partisan_overhead_small() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    const N: u64 = 20_000;
    let run = |channels: ChannelSettings| {
        rt.block_on(scenarios::stream(
            Net::Tcp,
            channels,
            Encoding::Bytes,
            64,
            N,
            256,
        ))
        .unwrap()
    };
    // Channels and single connection measured alternately, the ratio taken per pair.
    let mut pairs: Vec<_> = (0..3)
        .map(|_| {
            let sep = run(ChannelSettings::default());
            let one = run(scenarios::single_connection_channels());
            (
                sep.elapsed.as_secs_f64() / one.elapsed.as_secs_f64(),
                sep,
                one,
            )
        })
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, sep, one) = pairs[1];
    let raw = rt.block_on(scenarios::raw_tcp_stream(64, N)).unwrap();
    assert_eq!(
        (sep.received, one.received),
        (N, N),
        "every message arrived"
    );
    let k = |o: &scenarios::StreamOutcome| o.rate() / 1e3;
    reg::A12
        .judge(
            ratio,
            ratio <= 1.1,
            format!(
                "64-byte Node::send over loopback TCP: channels {:.1} k msg/s, single connection {:.1} k msg/s: {ratio:.2}x the time; raw TCP framing {:.1} k msg/s ({:.1}x faster than the node)",
                k(&sep),
                k(&one),
                k(&raw),
                raw.rate() / sep.rate()
            ),
        )
        .figure("channels_kmsg_s", k(&sep))
        .figure("single_kmsg_s", k(&one))
        .figure("raw_tcp_kmsg_s", k(&raw))
        .figure("ratio", ratio)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A13: budgeted CPU work keeps scheduler latency low

fn probe_lateness(budgeted: bool) -> LatencyRecorder {
    let rt = runtime();
    rt.block_on(async {
        let jobs: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    if budgeted {
                        let _ = scheduler::cpu_intensive(0..300_000u32, |_| {
                            spin(Duration::from_micros(1))
                        })
                        .await;
                    } else {
                        for _ in 0..300_000u32 {
                            spin(Duration::from_micros(1));
                        }
                    }
                })
            })
            .collect();
        let mut lat = LatencyRecorder::new();
        while !jobs.iter().all(|j| j.is_finished()) {
            let deadline = Instant::now() + Duration::from_millis(1);
            tokio::time::sleep_until(deadline.into()).await;
            lat.record(Instant::now().saturating_duration_since(deadline));
        }
        for j in jobs {
            j.await.unwrap();
        }
        lat
    })
}

#[test]
fn a13_budgeted_cpu_latency() {
    let _serial = SERIAL.lock();
    let budgeted = probe_lateness(true).summary();
    let plain = probe_lateness(false).summary();
    let p99_ms = budgeted.p99_us / 1e3;
    reg::A13
        .judge(
            p99_ms,
            p99_ms < 10.0,
            format!(
                "1 ms timer lateness while 2 jobs of 300,000 x 1 us run on 2 workers: cpu_intensive {}; plain loop {}",
                budgeted.describe_ms(),
                plain.describe_ms()
            ),
        )
        .figure("budgeted_p99_ms", p99_ms)
        .figure("budgeted_max_ms", budgeted.max_us / 1e3)
        .figure("plain_p99_ms", plain.p99_us / 1e3)
        .record_and_check();
}

// ---------------------------------------------------------------------------------------
// A14: a topology switch loses no message

#[test]
fn a14_topology_switch_no_loss() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    const N: u64 = 2_000;
    let (ok, failed, received, duplicates) = rt.block_on(async {
        let cluster = Cluster::start(
            ClusterSpec::new(5, Net::Memory)
                .server_roles(1)
                .receiver_capacity(4096),
        )
        .await
        .unwrap();
        cluster.converge(Duration::from_secs(20)).await.unwrap();
        let mut rx = cluster.node(4).register::<u64>("seq");
        let sink = tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut dup = 0u64;
            while let Ok(Some((_, i))) =
                tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            {
                if !seen.insert(i) {
                    dup += 1;
                }
            }
            (seen, dup)
        });
        let sender = cluster.node(3).clone();
        let mut ok = std::collections::HashSet::new();
        let mut failed = 0u64;
        for i in 0..N {
            // One node proposes; the switch is agreed by every member (coordinated, with
            // an epoch). The second waits out the switch cooldown.
            if i == N / 4 {
                cluster
                    .node(0)
                    .switch_topology(TopologyKind::ClientServer {
                        servers_per_client: 1,
                    })
                    .expect("switch to client-server");
            }
            if i == 3 * N / 4 {
                let n = cluster.node(1);
                loop {
                    match n.switch_topology(TopologyKind::FullMesh) {
                        Err(foundation_distributed::node::SwitchError::CoolingDown {
                            remaining,
                            ..
                        }) => tokio::time::sleep(remaining).await,
                        r => {
                            r.expect("switch back to full mesh");
                            break;
                        }
                    }
                }
            }
            match sender.send("n4", "seq", &i, SendOptions::default()).await {
                Ok(()) => {
                    ok.insert(i);
                }
                Err(_) => failed += 1,
            }
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (seen, dup) = sink.await.unwrap();
        cluster.shutdown().await;
        let received = ok.iter().filter(|i| seen.contains(i)).count() as u64;
        (ok.len() as u64, failed, received, dup)
    });
    let lost = ok - received;
    reg::A14
        .judge(
            lost as f64,
            lost == 0,
            format!(
                "{N} messages n3 -> n4 while every node switched FullMesh -> ClientServer -> FullMesh: {ok} sent Ok, {failed} refused with an error, {received} received, {lost} lost, {duplicates} duplicates"
            ),
        )
        .figure("sent_ok", ok as f64)
        .figure("refused", failed as f64)
        .figure("lost", lost as f64)
        .figure("duplicates", duplicates as f64)
        .record_and_check();
}
