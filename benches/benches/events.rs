//! Event stream benchmarks, each beside its baseline in the same run.
//!
//! * `events_emit_to_handler`: events per second from `emit().await` to a handler that
//!   counts them (stored in the in-memory store, dispatched over 4 workers) vs a raw
//!   `tokio::sync::mpsc` channel (capacity 1024) feeding one task that counts the same
//!   events. Each sample emits `iters` events and waits until the last one is handled.
//! * `events_urgent_latency_under_flood`: time from `emit` of a probe event to the start of
//!   its handler while four tasks keep the normal lane of the same stream full (their
//!   handler spins about a microsecond per event). `urgent_lane`: the probe is urgent;
//!   `single_lane_baseline`: the same probe goes through the normal lane, behind the flood.
//!   One probe is outstanding at a time. Criterion reports the mean; the bench also prints
//!   p50/p99/max over every probe it sent and the p99 of the `emit` call alone (store
//!   append and lane; the rest is dispatch), as a table after the group (`eprintln!`).
//! * `events_emit_durable`: `emit().await` throughput into a durable store per fsync policy
//!   (`never`, `batch` = the default 64 records / 100 ms, `always`), with 1 and 16
//!   concurrent emitters (16 lets the writer thread's group commit share one sync among
//!   many records), beside the in-memory store in the same run. Measured until every
//!   `emit` returned (acknowledged per the policy). Files go under the system temp dir.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_benches::runtime;
use foundation_core::events::{
    CorrelationId, Event, EventStore, Events, EventsSettings, Filter, FsyncPolicy, StoreOptions,
    StreamSettings,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

fn service() -> Events {
    let store = EventStore::in_memory(StoreOptions {
        max_events: 100_000,
        max_age: None,
        ..StoreOptions::default()
    });
    Events::with_store(EventsSettings::default(), store).unwrap()
}

/// Events of 64 flows (so all workers are used), cycled by clone.
fn templates() -> Vec<Event> {
    (0..64u32)
        .map(|i| {
            Event::new("bench", &("order", i))
                .unwrap()
                .correlated(CorrelationId::new())
        })
        .collect()
}

/// Counts handled events and wakes the waiter when `target` is reached.
struct Counter {
    n: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Counter {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }
    fn hit(&self) {
        if self.n.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
    fn arm(&self, target: u64) {
        self.n.store(0, Ordering::Release);
        self.target.store(target, Ordering::Release);
    }
}

fn emit_to_handler(c: &mut Criterion) {
    let rt = runtime();
    let templates = templates();

    let mut g = c.benchmark_group("events_emit_to_handler");
    g.throughput(Throughput::Elements(1));

    // Baseline: a raw bounded channel into one task.
    let counter = Counter::new();
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let cc = counter.clone();
    rt.spawn(async move {
        while let Some(e) = rx.recv().await {
            black_box(&e);
            cc.hit();
        }
    });
    g.bench_function("baseline_mpsc_one_task", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                counter.arm(iters);
                let start = Instant::now();
                for i in 0..iters {
                    tx.send(templates[i as usize % 64].clone()).await.unwrap();
                }
                counter.done.notified().await;
                start.elapsed()
            })
        })
    });

    let events = rt.block_on(async { service() });
    let counter = Counter::new();
    let cc = counter.clone();
    let _sub = events
        .subscribe(Filter::of_type("bench"), move |e: Event| {
            let cc = cc.clone();
            async move {
                black_box(&e);
                cc.hit();
            }
        })
        .unwrap();
    g.bench_function("foundation_emit_store_dispatch", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                counter.arm(iters);
                let start = Instant::now();
                for i in 0..iters {
                    events
                        .emit(templates[i as usize % 64].clone())
                        .await
                        .unwrap();
                }
                counter.done.notified().await;
                start.elapsed()
            })
        })
    });
    g.finish();
    rt.block_on(events.shutdown());
}

fn anchor() -> Instant {
    static A: OnceLock<Instant> = OnceLock::new();
    *A.get_or_init(Instant::now)
}

fn since_anchor() -> u64 {
    anchor().elapsed().as_nanos() as u64
}

/// Starts a flooded stream; probe events (payload `(true, emit_time)`) report their
/// emit-to-handler latency on the returned channel.
fn flooded(rt: &tokio::runtime::Runtime) -> (Events, mpsc::UnboundedReceiver<u64>) {
    let settings = EventsSettings {
        stream: StreamSettings {
            workers: 4,
            inbox_capacity: 1024,
            worker_capacity: 64,
            ..StreamSettings::default()
        },
        ..EventsSettings::default()
    };
    let store = EventStore::in_memory(StoreOptions {
        max_events: 10_000,
        max_age: None,
        ..StoreOptions::default()
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let events = rt.block_on(async {
        let events = Events::with_store(settings, store).unwrap();
        let sub = events
            .subscribe(Filter::of_type("load"), move |e: Event| {
                let tx = tx.clone();
                async move {
                    let (probe, _sent): (bool, u64) = e.payload().unwrap();
                    if probe {
                        let _ = tx.send(since_anchor());
                    } else {
                        // About a microsecond of work per flood event.
                        let mut x = 0u64;
                        for i in 0..400 {
                            x = black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                        black_box(x);
                    }
                }
            })
            .unwrap();
        std::mem::forget(sub); // lives until shutdown
        for _ in 0..4 {
            let events = events.clone();
            tokio::spawn(async move {
                while events
                    .emit(
                        Event::new("load", &(false, 0u64))
                            .unwrap()
                            .correlated(CorrelationId::new()),
                    )
                    .await
                    .is_ok()
                {}
            });
        }
        // Let the flood fill the lanes.
        while events.stream_stats("load").unwrap().queued_normal < 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        events
    });
    (events, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO; // the group was filtered out
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn urgent_latency(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("events_urgent_latency_under_flood");
    g.sample_size(20);
    let mut table = Vec::new();
    for (name, urgent) in [("urgent_lane", true), ("single_lane_baseline", false)] {
        let (events, mut rx) = flooded(&rt);
        // Per probe: emit-to-handler, and of it the `emit` call (store append, lane).
        let all = Mutex::new((Vec::new(), Vec::new()));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t0 = since_anchor();
                        let e = Event::new("load", &(true, t0)).unwrap();
                        let e = if urgent { e.urgent() } else { e };
                        events.emit(e).await.unwrap();
                        let t1 = since_anchor();
                        let handled = rx.recv().await.unwrap();
                        let d = Duration::from_nanos(handled.saturating_sub(t0));
                        let mut all = all.lock();
                        all.0.push(d);
                        all.1.push(Duration::from_nanos(t1 - t0));
                        total += d;
                    }
                    total
                })
            })
        });
        rt.block_on(events.shutdown());
        let (mut v, mut emit) = all.into_inner();
        if v.is_empty() {
            continue; // filtered out
        }
        v.sort_unstable();
        emit.sort_unstable();
        table.push((
            name,
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            *v.last().unwrap(),
            percentile(&emit, 0.99),
        ));
    }
    g.finish();
    if table.len() < 2 {
        return; // filtered out
    }
    eprintln!("\nemit-to-handler latency of a probe while the normal lane is flooded");
    eprintln!(
        "{:<22} {:>8} {:>12} {:>12} {:>12} {:>14}",
        "", "probes", "p50", "p99", "max", "p99 of emit()"
    );
    for (name, n, p50, p99, max, emit99) in &table {
        eprintln!("{name:<22} {n:>8} {p50:>12.2?} {p99:>12.2?} {max:>12.2?} {emit99:>14.2?}");
    }
    let (u, s) = (&table[0], &table[1]);
    eprintln!(
        "single-lane / urgent: p50 x{:.1}, p99 x{:.1}\n",
        s.2.as_secs_f64() / u.2.as_secs_f64(),
        s.3.as_secs_f64() / u.3.as_secs_f64()
    );
}

fn emit_durable(c: &mut Criterion) {
    let rt = runtime();
    let templates = Arc::new(templates());
    let mut g = c.benchmark_group("events_emit_durable");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    let policies: [(&str, Option<FsyncPolicy>); 4] = [
        ("in_memory", None),
        ("never", Some(FsyncPolicy::Never)),
        ("batch", Some(FsyncPolicy::default())),
        ("always", Some(FsyncPolicy::Always)),
    ];
    for (name, policy) in policies {
        let dir = std::env::temp_dir().join(format!(
            "foundation-bench-events-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let options = StoreOptions {
            max_events: 100_000,
            max_age: None,
            fsync: policy.unwrap_or(FsyncPolicy::Never),
            ..StoreOptions::default()
        };
        let store = match policy {
            None => EventStore::in_memory(options),
            Some(_) => EventStore::open(&dir, options).unwrap().0,
        };
        let events =
            rt.block_on(async { Events::with_store(EventsSettings::default(), store).unwrap() });
        for emitters in [1u64, 16] {
            g.bench_function(format!("{name}/{emitters}_emitters"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..emitters)
                            .map(|k| {
                                let n = iters / emitters + u64::from(k < iters % emitters);
                                let events = events.clone();
                                let templates = templates.clone();
                                tokio::spawn(async move {
                                    for i in 0..n {
                                        events
                                            .emit(templates[i as usize % 64].clone())
                                            .await
                                            .unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                        start.elapsed()
                    })
                })
            });
        }
        rt.block_on(events.shutdown());
        drop(events);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

criterion_group!(benches, emit_to_handler, urgent_latency, emit_durable);
criterion_main!(benches);
