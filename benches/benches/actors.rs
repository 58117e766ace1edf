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
//! * `request_reply`: `N` sequential round trips. Baseline: `mpsc` + `oneshot`.
//! * `spawn_ecosystem_1000`: starting a 1,000-worker ecosystem (until every worker runs)
//!   vs spawning 1,000 tokio tasks with a channel each and waiting until they run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_beam::mailbox::MemoryStrategy;
use foundation_beam::process::{spawn_with, Context, Process, Reply, SpawnOptions};
use tokio::sync::{mpsc, oneshot};

const N: u64 = 100_000;
const CALLS: u64 = 10_000;
const T: Duration = Duration::from_secs(5);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- Foundation ----

enum FMsg {
    Start(u64, oneshot::Sender<()>),
    Tick(u64),
    Echo(u64, Reply<u64>),
}

#[derive(Default)]
struct FCounter {
    left: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Process for FCounter {
    type Message = FMsg;
    async fn handle(&mut self, msg: FMsg, _: &mut Context<FMsg>) {
        match msg {
            FMsg::Start(n, done) => {
                self.left = n;
                self.done = Some(done);
            }
            FMsg::Tick(v) => {
                black_box(v);
                self.left -= 1;
                if self.left == 0 {
                    let _ = self.done.take().map(|d| d.send(()));
                }
            }
            FMsg::Echo(v, r) => r.send(v),
        }
    }
}

// ---- ractor ----

enum RMsg {
    Start(u64, oneshot::Sender<()>),
    Tick(u64),
    Echo(u64, ractor::RpcReplyPort<u64>),
}

struct RCounter;

impl ractor::Actor for RCounter {
    type Msg = RMsg;
    type State = (u64, Option<oneshot::Sender<()>>);
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<RMsg>,
        _: (),
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok((0, None))
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<RMsg>,
        msg: RMsg,
        state: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            RMsg::Start(n, done) => *state = (n, Some(done)),
            RMsg::Tick(v) => {
                black_box(v);
                state.0 -= 1;
                if state.0 == 0 {
                    let _ = state.1.take().map(|d| d.send(()));
                }
            }
            RMsg::Echo(v, r) => {
                let _ = r.send(v);
            }
        }
        Ok(())
    }
}

// ---- kameo ----

#[derive(kameo::Actor, Default)]
struct KCounter {
    left: u64,
    done: Option<oneshot::Sender<()>>,
}

struct KStart(u64, oneshot::Sender<()>);
struct KTick(u64);
struct KEcho(u64);

impl kameo::message::Message<KStart> for KCounter {
    type Reply = ();
    async fn handle(&mut self, m: KStart, _: &mut kameo::message::Context<Self, ()>) {
        self.left = m.0;
        self.done = Some(m.1);
    }
}

impl kameo::message::Message<KTick> for KCounter {
    type Reply = ();
    async fn handle(&mut self, m: KTick, _: &mut kameo::message::Context<Self, ()>) {
        black_box(m.0);
        self.left -= 1;
        if self.left == 0 {
            let _ = self.done.take().map(|d| d.send(()));
        }
    }
}

impl kameo::message::Message<KEcho> for KCounter {
    type Reply = u64;
    async fn handle(&mut self, m: KEcho, _: &mut kameo::message::Context<Self, u64>) -> u64 {
        m.0
    }
}

fn fire_and_forget(c: &mut Criterion) {
    use kameo::actor::Spawn;
    let rt = runtime();
    let mut g = c.benchmark_group("fire_and_forget");
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);

    g.bench_function("baseline_tokio_unbounded_mpsc", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
                let (done_tx, done_rx) = oneshot::channel();
                tokio::spawn(async move {
                    let mut left = N;
                    while let Some(v) = rx.recv().await {
                        black_box(v);
                        left -= 1;
                        if left == 0 {
                            let _ = done_tx.send(());
                            break;
                        }
                    }
                });
                let start = Instant::now();
                for i in 0..N {
                    tx.send(i).unwrap();
                }
                done_rx.await.unwrap();
                total += start.elapsed();
            }
            total
        })
    });

    g.bench_function("baseline_tokio_bounded_1024_mpsc_send_await", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (tx, mut rx) = mpsc::channel::<u64>(1024);
                let (done_tx, done_rx) = oneshot::channel();
                tokio::spawn(async move {
                    let mut left = N;
                    while let Some(v) = rx.recv().await {
                        black_box(v);
                        left -= 1;
                        if left == 0 {
                            let _ = done_tx.send(());
                            break;
                        }
                    }
                });
                let start = Instant::now();
                for i in 0..N {
                    tx.send(i).await.unwrap();
                }
                done_rx.await.unwrap();
                total += start.elapsed();
            }
            total
        })
    });

    let fh = rt.block_on(async {
        spawn_with(
            FCounter::default(),
            SpawnOptions::new().memory(MemoryStrategy::unbounded()),
        )
        .unwrap()
    });
    g.bench_function("foundation_process_try_send", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fh = fh.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (done_tx, done_rx) = oneshot::channel();
                    fh.try_send(FMsg::Start(N, done_tx)).unwrap();
                    let start = Instant::now();
                    for i in 0..N {
                        fh.try_send(FMsg::Tick(i)).unwrap();
                    }
                    done_rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });

    g.bench_function("foundation_process_send_await", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fh = fh.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (done_tx, done_rx) = oneshot::channel();
                    fh.send(FMsg::Start(N, done_tx)).await.unwrap();
                    let start = Instant::now();
                    for i in 0..N {
                        fh.send(FMsg::Tick(i)).await.unwrap();
                    }
                    done_rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });

    let fb = rt.block_on(async { spawn_with(FCounter::default(), SpawnOptions::new()).unwrap() });
    g.bench_function("foundation_process_send_await_bounded_1024", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fb = fb.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (done_tx, done_rx) = oneshot::channel();
                    fb.send(FMsg::Start(N, done_tx)).await.unwrap();
                    let start = Instant::now();
                    for i in 0..N {
                        fb.send(FMsg::Tick(i)).await.unwrap();
                    }
                    done_rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });

    let (rh, _rj) = rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    g.bench_function("ractor_cast", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let rh = rh.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (done_tx, done_rx) = oneshot::channel();
                    rh.cast(RMsg::Start(N, done_tx)).unwrap();
                    let start = Instant::now();
                    for i in 0..N {
                        rh.cast(RMsg::Tick(i)).unwrap();
                    }
                    done_rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });

    let kh = rt.block_on(async {
        KCounter::spawn_with_mailbox(KCounter::default(), kameo::mailbox::unbounded())
    });
    g.bench_function("kameo_tell", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let kh = kh.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (done_tx, done_rx) = oneshot::channel();
                    kh.tell(KStart(N, done_tx)).await.unwrap();
                    let start = Instant::now();
                    for i in 0..N {
                        kh.tell(KTick(i)).await.unwrap();
                    }
                    done_rx.await.unwrap();
                    total += start.elapsed();
                }
                total
            }
        })
    });
    g.finish();
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

    let fh = rt.block_on(async {
        spawn_with(
            FCounter::default(),
            SpawnOptions::new().memory(MemoryStrategy::unbounded()),
        )
        .unwrap()
    });
    g.bench_function("foundation_process_call", |b| {
        b.to_async(&rt).iter(|| {
            let fh = fh.clone();
            async move {
                for i in 0..CALLS {
                    black_box(fh.call(|r| FMsg::Echo(i, r), T).await.unwrap());
                }
            }
        })
    });

    let (rh, _rj) = rt.block_on(async { ractor::Actor::spawn(None, RCounter, ()).await.unwrap() });
    g.bench_function("ractor_call", |b| {
        b.to_async(&rt).iter(|| {
            let rh = rh.clone();
            async move {
                for i in 0..CALLS {
                    let r = rh.call(|r| RMsg::Echo(i, r), Some(T)).await.unwrap();
                    black_box(r.unwrap());
                }
            }
        })
    });

    let kh = rt.block_on(async {
        KCounter::spawn_with_mailbox(KCounter::default(), kameo::mailbox::unbounded())
    });
    g.bench_function("kameo_ask", |b| {
        b.to_async(&rt).iter(|| {
            let kh = kh.clone();
            async move {
                for i in 0..CALLS {
                    black_box(kh.ask(KEcho(i)).await.unwrap());
                }
            }
        })
    });
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

criterion_group!(benches, fire_and_forget, request_reply, spawn_ecosystem);
criterion_main!(benches);
