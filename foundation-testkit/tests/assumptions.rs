//! The design's assumptions, measured. Run with
//! `cargo test --workspace --features assumptions`; each test writes its evidence into
//! `docs/ASSUMPTIONS.md` and fails only if the verdict is not the expected one.
#![cfg(feature = "assumptions")]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use foundation_beam::mailbox::MemoryStrategy;
use foundation_beam::process::{spawn_with, Context, Process, SpawnOptions};
use foundation_core::config::Config;
use foundation_core::telemetry::ShardedRecorder;
use foundation_testkit::assumptions::{median_of, time_n, Assumption, Verdict};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};

/// Measurements run one at a time: tests in one binary run in parallel, and two
/// measurements sharing 2 cores would measure each other.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const A1: Assumption = Assumption {
    id: "A1-config-hot-read",
    claim: "a typed config read of a hot key costs at most 1.5x a parking_lot::RwLock<HashMap<String, Arc<T>>> read",
    threshold: "median time ratio foundation/baseline <= 1.5 (1,000 keys, 2M reads, median of 5)",
    expected: Verdict::Confirmed,
};

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
    let b = median_of(5, || {
        time_n(N, || {
            drop(black_box(base.read().get(black_box(key)).cloned()))
        })
    });
    let f = median_of(5, || {
        time_n(N, || {
            drop(black_box(ns.get_arc::<u64>(black_box(key)).unwrap()))
        })
    });
    let g = median_of(5, || {
        time_n(N, || {
            black_box(ns.get::<u64>(black_box(key)).unwrap());
        })
    });
    let ratio = f.as_secs_f64() / b.as_secs_f64();
    let per = |d: Duration| d.as_nanos() as f64 / N as f64;
    A1.judge(
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
    .record_and_check();
}

const A2: Assumption = Assumption {
    id: "A2-sharded-counters",
    claim: "per-thread sharded counters make increments from 2 threads at least 2x faster than the Prometheus exporter's own recorder",
    threshold: "time ratio exporter/sharded >= 2.0 (2 threads x 2M increments of one counter, median of 5)",
    expected: Verdict::Confirmed,
};

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
fn a2_sharded_counters() {
    let _serial = SERIAL.lock();
    use metrics::{Key, Metadata, Recorder};
    static META: Metadata<'static> = Metadata::new("a2", metrics::Level::INFO, None);
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let sharded = ShardedRecorder::new(4, &[], &[]);
    let base = exporter.register_counter(&Key::from_static_name("a2_total"), &META);
    let ours = sharded.register_counter(&Key::from_static_name("a2_total"), &META);
    let b = median_of(5, || two_threads(&base));
    let o = median_of(5, || two_threads(&ours));
    let ratio = b.as_secs_f64() / o.as_secs_f64();
    assert!(
        sharded.render().contains("a2_total 20000000"),
        "merged total is exact"
    );
    A2.judge(
        ratio,
        ratio >= 2.0,
        format!(
            "exporter {:.1} ms, sharded {:.1} ms for 4M increments: {ratio:.1}x",
            b.as_secs_f64() * 1e3,
            o.as_secs_f64() * 1e3
        ),
    )
    .record_and_check();
}

const A3: Assumption = Assumption {
    id: "A3-mailbox-throughput",
    claim: "a process mailbox carries fire-and-forget messages at >= 0.6x the rate of a raw tokio unbounded mpsc channel",
    threshold: "throughput ratio >= 0.6 (1 producer, 1 consumer, 200k messages, 2-worker runtime, median of 5)",
    expected: Verdict::Confirmed,
};

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
    let ours = median_of(5, || {
        rt.block_on(async {
            let (dtx, drx) = oneshot::channel();
            h.try_send(Tick::Start(N, dtx)).unwrap();
            let start = Instant::now();
            for i in 0..N {
                h.try_send(Tick::One(i)).unwrap();
            }
            drx.await.unwrap();
            start.elapsed()
        })
    });
    let ratio = raw.as_secs_f64() / ours.as_secs_f64();
    let rate = |d: Duration| N as f64 / d.as_secs_f64() / 1e6;
    A3.judge(
        ratio,
        ratio >= 0.6,
        format!(
            "process {:.1} M msg/s, raw mpsc {:.1} M msg/s: {ratio:.2}x",
            rate(ours),
            rate(raw)
        ),
    )
    .record_and_check();
}

const A4: Assumption = Assumption {
    id: "A4-raw-config-reads-do-not-copy",
    claim: "get_raw of a 1 MiB configuration value costs about the same as of a 16-byte value (a reference-count bump, never a copy)",
    threshold: "time ratio 1MiB/16B <= 2.0 (1M reads, median of 5)",
    expected: Verdict::Confirmed,
};

#[test]
fn a4_raw_reads_do_not_copy() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let config = Config::new();
    let ns = rt.block_on(async {
        let ns = config.create_namespace("a4").unwrap();
        ns.set("small", &"0123456789abcde").await.unwrap();
        ns.set("big", &rmpv::Value::Binary(vec![7; (1 << 20) - 16]))
            .await
            .unwrap();
        ns
    });
    const N: u64 = 1_000_000;
    let small = median_of(5, || {
        time_n(N, || {
            drop(black_box(ns.get_raw(black_box("small")).unwrap()))
        })
    });
    let big = median_of(5, || {
        time_n(N, || drop(black_box(ns.get_raw(black_box("big")).unwrap())))
    });
    let ratio = big.as_secs_f64() / small.as_secs_f64();
    A4.judge(
        ratio,
        ratio <= 2.0,
        format!(
            "1 MiB {:.1} ns, 16 B {:.1} ns: ratio {ratio:.2}",
            big.as_nanos() as f64 / N as f64,
            small.as_nanos() as f64 / N as f64
        ),
    )
    .record_and_check();
}

const A5: Assumption = Assumption {
    id: "A5-urgent-lane",
    claim: "an urgent message is handled ahead of a flooded normal lane: at least 10x sooner than the same message sent normally",
    threshold: "time ratio normal/urgent >= 10 (10,000 queued normal messages of ~1 us work each, median of 5)",
    expected: Verdict::Confirmed,
};

enum Work {
    Busy,
    Probe(Instant, oneshot::Sender<Duration>),
}

struct Worker;

impl Process for Worker {
    type Message = Work;
    async fn handle(&mut self, m: Work, _: &mut Context<Work>) {
        match m {
            Work::Busy => {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(1) {
                    std::hint::spin_loop();
                }
            }
            Work::Probe(sent, reply) => {
                let _ = reply.send(sent.elapsed());
            }
        }
    }
}

#[test]
fn a5_urgent_lane() {
    let _serial = SERIAL.lock();
    let rt = runtime();
    let h = rt.block_on(async {
        spawn_with(
            Worker,
            SpawnOptions::new().memory(MemoryStrategy::unbounded()),
        )
        .unwrap()
    });
    let probe = |urgent: bool| {
        rt.block_on(async {
            for _ in 0..10_000 {
                h.try_send(Work::Busy).unwrap();
            }
            let (tx, rx) = oneshot::channel();
            let msg = Work::Probe(Instant::now(), tx);
            if urgent {
                h.try_send_urgent(msg).unwrap();
            } else {
                h.try_send(msg).unwrap();
            }
            let d = rx.await.unwrap();
            while h.backlog() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            d
        })
    };
    let urgent = median_of(5, || probe(true));
    let normal = median_of(5, || probe(false));
    let ratio = normal.as_secs_f64() / urgent.as_secs_f64();
    A5.judge(
        ratio,
        ratio >= 10.0,
        format!(
            "urgent {:.1} us, normal {:.1} us behind 10,000 messages: {ratio:.0}x",
            urgent.as_secs_f64() * 1e6,
            normal.as_secs_f64() * 1e6
        ),
    )
    .record_and_check();
}
