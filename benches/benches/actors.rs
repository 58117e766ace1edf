//! Processes side by side with raw tokio channels and the actor crates users would pick
//! instead (`ractor`, `kameo`), in one run, on a 2-worker multi-thread runtime.
//!
//! * `fire_and_forget`: one producer sends `N` messages to one consumer; the time until
//!   the consumer has handled the last one. Baselines: `tokio::sync::mpsc::unbounded_channel`
//!   (`send`) and `mpsc::channel(1024)` (`send().await`). Foundation is measured through
//!   the public API both ways: `Handle::try_send` and `Handle::send().await` into an
//!   unbounded mailbox (always room: the async path's own cost), and `send().await` into
//!   the default 1024-per-lane backpressured mailbox (like for like with the bounded
//!   channel: the producer waits for room). `ractor` `cast` and `kameo` `tell` (unbounded
//!   mailboxes) for the peers.
//! * `request_reply`: `N` sequential round trips. Baseline: `mpsc` + `oneshot`. Besides
//!   `Handle::call`, `Ecosystem::call` to a 2-worker round-robin ecosystem of the same
//!   process (its routing: the dispatch pick, the check that the worker runs, delivery).
//! * `spawn_ecosystem_1000`: starting a 1,000-worker ecosystem (until every worker runs:
//!   its `started` hook returned) vs spawning 1,000 tokio tasks with a channel each and
//!   waiting until each has signalled that it runs.
//! * `society_send/<members>`: `Society::try_send` between random members (routing,
//!   counting, then the target's mailbox) per wiring — ring, tree (fan-out 4), mesh (1,000
//!   only: meshes are capped), adaptive with its shortcuts in place — at 1,000 and 10,000
//!   members, beside `Handle::try_send` to the same members (no society) in the same run.
//! * `society_rewire/<members>`: one adaptive rewiring round (`Society::rewire_now`) after
//!   20,000 messages over random pairs, at 1,000 and 10,000 members.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use foundation_beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_beam::mailbox::MemoryStrategy;
use foundation_beam::process::{spawn_with, Context, Process, SpawnOptions};
use foundation_beam::society::{AdaptiveSettings, Envelope, Society, SocietySettings, Topology};
use foundation_beam::Handle;
use foundation_benches::peers::{
    fire, round_trips, tokio_fire, Counter, FCounter, FMsg, KCounter, RCounter, TrySend,
};
use foundation_benches::runtime;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

const N: u64 = 100_000;
const CALLS: u64 = 10_000;
const T: Duration = Duration::from_secs(5);

/// Benches [`fire`] rounds of `counter` as `name`.
fn bench_fire<C: Counter>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, c: &C) {
    g.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += fire(c, N).await;
            }
            total
        })
    });
}

fn fire_and_forget(c: &mut Criterion) {
    use kameo::actor::Spawn;
    let rt = runtime();
    let mut g = c.benchmark_group("fire_and_forget");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);

    for (name, capacity) in [
        ("baseline_tokio_unbounded_mpsc", None),
        ("baseline_tokio_bounded_1024_mpsc_send_await", Some(1024)),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += tokio_fire(N, capacity).await;
                }
                total
            })
        });
    }

    let unbounded = SpawnOptions::new().memory(MemoryStrategy::unbounded());
    let fh = rt.block_on(async { spawn_with(FCounter::default(), unbounded).unwrap() });
    bench_fire(
        &mut g,
        &rt,
        "foundation_process_try_send",
        &TrySend(fh.clone()),
    );
    bench_fire(&mut g, &rt, "foundation_process_send_await", &fh);
    let fb = rt.block_on(async { spawn_with(FCounter::default(), SpawnOptions::new()).unwrap() });
    bench_fire(
        &mut g,
        &rt,
        "foundation_process_send_await_bounded_1024",
        &fb,
    );
    let (rh, _rj) = rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    bench_fire(&mut g, &rt, "ractor_cast", &rh);
    let kh = rt.block_on(async {
        KCounter::spawn_with_mailbox(KCounter::default(), kameo::mailbox::unbounded())
    });
    bench_fire(&mut g, &rt, "kameo_tell", &kh);
    g.finish();
}

/// Benches [`round_trips`] with `counter` as `name`.
fn bench_calls<C: Counter>(g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, c: &C) {
    g.bench_function(name, |b| b.to_async(rt).iter(|| round_trips(c, CALLS)));
}

fn request_reply(c: &mut Criterion) {
    use kameo::actor::Spawn;
    let rt = runtime();
    let mut g = c.benchmark_group("request_reply");
    g.throughput(Throughput::Elements(CALLS));
    g.sample_size(20);

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
    rt.spawn(async move {
        while let Some((v, r)) = rx.recv().await {
            let _ = r.send(v);
        }
    });
    g.bench_function("baseline_tokio_mpsc_oneshot", |b| {
        b.to_async(&rt).iter(|| {
            let tx = tx.clone();
            async move {
                for i in 0..CALLS {
                    let (rtx, rrx) = oneshot::channel();
                    tx.send((i, rtx)).unwrap();
                    black_box(rrx.await.unwrap());
                }
            }
        })
    });

    let unbounded = SpawnOptions::new().memory(MemoryStrategy::unbounded());
    let fh = rt.block_on(async { spawn_with(FCounter::default(), unbounded).unwrap() });
    bench_calls(&mut g, &rt, "foundation_process_call", &fh);
    let spec = EcosystemSpec::new("calls").workers(Workers::Fixed(2));
    let eco = rt.block_on(Ecosystem::start(spec, |_| FCounter::default()));
    let eco = eco.unwrap();
    g.bench_function("foundation_ecosystem_call", |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..CALLS {
                black_box(eco.call(|r| FMsg::Echo(i, r), T).await.unwrap());
            }
        })
    });
    let (rh, _rj) = rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    bench_calls(&mut g, &rt, "ractor_call", &rh);
    let kh = rt.block_on(async {
        KCounter::spawn_with_mailbox(KCounter::default(), kameo::mailbox::unbounded())
    });
    bench_calls(&mut g, &rt, "kameo_ask", &kh);
    g.finish();
}

fn spawn_ecosystem(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("spawn_ecosystem_1000");
    g.sample_size(20);
    g.bench_function("baseline_1000_tokio_tasks_with_channels", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut started = Vec::with_capacity(1000);
                let mut senders = Vec::with_capacity(1000);
                for _ in 0..1000 {
                    let (tx, mut rx) = mpsc::channel::<u64>(1024);
                    let (up_tx, up_rx) = oneshot::channel::<()>();
                    tokio::spawn(async move {
                        let _ = up_tx.send(());
                        while let Some(v) = rx.recv().await {
                            black_box(v);
                        }
                    });
                    started.push(up_rx);
                    senders.push(tx);
                }
                for s in started {
                    s.await.unwrap();
                }
                total += start.elapsed();
                drop(senders);
            }
            total
        })
    });
    g.bench_function("foundation_ecosystem", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let spec = EcosystemSpec::new("bench").workers(Workers::Fixed(1000));
                let eco = Ecosystem::start(spec, |_| FCounter::default())
                    .await
                    .unwrap();
                total += start.elapsed();
                eco.shutdown(T).await;
            }
            total
        })
    });
    g.finish();
}

struct Sink;

impl Process for Sink {
    type Message = Envelope<u64>;
    async fn handle(&mut self, msg: Envelope<u64>, _: &mut Context<Envelope<u64>>) {
        black_box(msg);
    }
}

fn sinks(n: usize) -> Vec<Handle<Envelope<u64>>> {
    (0..n)
        .map(|_| {
            spawn_with(
                Sink,
                SpawnOptions::new().memory(MemoryStrategy::unbounded()),
            )
            .unwrap()
        })
        .collect()
}

/// Pseudo-random member pairs (an LCG: the same sequence every run).
fn pairs(n: usize, count: usize) -> Vec<(usize, usize)> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..count)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) as usize % n, (x >> 13) as usize % n)
        })
        .collect()
}

fn adaptive_settings() -> AdaptiveSettings {
    AdaptiveSettings {
        interval_ms: 3_600_000, // rewired by the bench only
        top_pairs: 8,
        max_degree: 4,
        min_messages: 2,
    }
}

fn society_send(c: &mut Criterion) {
    let rt = runtime();
    for n in [1_000usize, 10_000] {
        let mut g = c.benchmark_group(format!("society_send/{n}"));
        g.throughput(Throughput::Elements(1));
        g.sample_size(20);
        let route = pairs(n, 4096);
        let members = rt.block_on(async { sinks(n) });
        g.bench_function("baseline_handle_try_send", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters as usize {
                    let (_, to) = route[i % route.len()];
                    let _ = black_box(members[to].try_send(Envelope {
                        from: 0,
                        to,
                        hops: 0,
                        msg: i as u64,
                    }));
                }
                start.elapsed()
            })
        });
        let mut wirings = vec![
            ("ring", Topology::Ring),
            ("tree_4", Topology::Tree { fanout: 4 }),
            ("adaptive", Topology::Adaptive),
        ];
        if n <= foundation_beam::society::MAX_MESH_MEMBERS {
            wirings.push(("mesh", Topology::Mesh));
        }
        for (name, topology) in wirings {
            let society = rt.block_on(async {
                let s = Society::start(
                    SocietySettings {
                        name: format!("bench-{name}-{n}"),
                        topology,
                        adaptive: adaptive_settings(),
                    },
                    members.clone(),
                )
                .unwrap();
                if topology == Topology::Adaptive {
                    // Put shortcuts in place: 8 heavy pairs.
                    for k in 0..8 {
                        for _ in 0..10 {
                            let _ = s.try_send(k * 7, n / 2 + k * 13, 0);
                        }
                    }
                    s.rewire_now().await.unwrap();
                }
                s
            });
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        let (from, to) = route[i % route.len()];
                        let _ = black_box(society.try_send(from, to, i as u64));
                    }
                    start.elapsed()
                })
            });
            rt.block_on(society.shutdown());
        }
        g.finish();
    }
}

fn society_rewire(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("society_rewire");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        let society = rt.block_on(async {
            Society::start(
                SocietySettings {
                    name: format!("bench-rewire-{n}"),
                    topology: Topology::Adaptive,
                    adaptive: adaptive_settings(),
                },
                sinks(n),
            )
            .unwrap()
        });
        let traffic = pairs(n, 20_000);
        g.bench_function(format!("{n}_members_20000_msgs"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let society = &society;
                let traffic = &traffic;
                async move {
                    let mut total = Duration::ZERO;
                    for it in 0..iters as usize {
                        for &(a, b) in traffic {
                            let _ = society.try_send(a, b, 0);
                        }
                        // A heavy pair that changes every round, so every round rewires.
                        for _ in 0..40 {
                            let _ = society.try_send(it % 97, n / 2 + it % 89, 0);
                        }
                        let start = Instant::now();
                        black_box(society.rewire_now().await.unwrap());
                        total += start.elapsed();
                    }
                    total
                }
            })
        });
        rt.block_on(society.shutdown());
    }
    g.finish();
}

criterion_group!(
    benches,
    fire_and_forget,
    request_reply,
    spawn_ecosystem,
    society_send,
    society_rewire
);
criterion_main!(benches);
