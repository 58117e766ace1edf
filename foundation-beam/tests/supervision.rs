//! Supervision and ecosystems: restarts, strategies, intensity, escalation, resize.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation_beam::ecosystem::{Dispatch, Ecosystem, EcosystemSpec, Health, Workers};
use foundation_beam::process::{Context, ExitReason, Process, Reply};
use foundation_beam::supervisor::{Intensity, Restart, Strategy, SupervisorSpec};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(5);

enum Job {
    Echo(u64, Reply<u64>),
    Panic,
    /// Handled after `gate` opens, then recorded.
    Slow(oneshot::Receiver<()>, u64),
    Done(Reply<Vec<u64>>),
}

struct Worker {
    starts: Arc<AtomicUsize>,
    done: Vec<u64>,
    sink: Option<Arc<parking_lot::Mutex<Vec<u64>>>>,
}

impl Worker {
    fn new(starts: &Arc<AtomicUsize>) -> Self {
        starts.fetch_add(1, Ordering::SeqCst);
        Worker {
            starts: starts.clone(),
            done: Vec::new(),
            sink: None,
        }
    }
}

impl Process for Worker {
    type Message = Job;
    async fn handle(&mut self, msg: Job, _ctx: &mut Context<Job>) {
        match msg {
            Job::Echo(n, r) => {
                if let Some(sink) = &self.sink {
                    sink.lock().push(n);
                }
                r.send(n)
            }
            Job::Panic => panic!(
                "worker failure ({} starts)",
                self.starts.load(Ordering::SeqCst)
            ),
            Job::Slow(gate, n) => {
                let _ = gate.await;
                self.done.push(n);
                if let Some(sink) = &self.sink {
                    sink.lock().push(n);
                }
            }
            Job::Done(r) => r.send(self.done.clone()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_restarted_while_siblings_keep_serving() {
    let starts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut spec = SupervisorSpec::new("sup", Strategy::OneForOne).intensity(Intensity {
        max_restarts: 10,
        period: T,
    });
    let handles = add_children(&mut spec, &starts);
    let sup = spec.start();

    // Siblings answer a stream of requests while worker 0 panics three times.
    let siblings: Vec<_> = handles[1..]
        .iter()
        .cloned()
        .map(|h| {
            tokio::spawn(async move {
                let mut answered = 0;
                for n in 0..300u64 {
                    assert_eq!(h.call(|r| Job::Echo(n, r), T).await.unwrap(), n);
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    for _ in 0..3 {
        let mut m = handles[0].monitor();
        handles[0].send(Job::Panic).await.unwrap();
        assert!(
            matches!(m.wait().await, ExitReason::Panic(msg) if msg.starts_with("worker failure"))
        );
        // The same handle reaches the next incarnation.
        assert_eq!(handles[0].call(|r| Job::Echo(9, r), T).await.unwrap(), 9);
    }
    for s in siblings {
        assert_eq!(s.await.unwrap(), 300, "every sibling request was answered");
    }
    assert_eq!(
        starts[0].load(Ordering::SeqCst),
        4,
        "started once, restarted 3 times"
    );
    assert_eq!(starts[1].load(Ordering::SeqCst), 1);
    assert_eq!(starts[2].load(Ordering::SeqCst), 1);
    assert_eq!(sup.restarts(), 3);
    sup.shutdown(T).await;
    assert!(!sup.is_alive());
}

#[tokio::test]
async fn messages_queued_for_a_failing_worker_survive_its_restart() {
    let starts = Arc::new(AtomicUsize::new(0));
    let mut spec = SupervisorSpec::new("sup", Strategy::OneForOne);
    let s = starts.clone();
    let h = spec.child("w", Restart::Permanent, Default::default(), move || {
        Worker::new(&s)
    });
    let sup = spec.start();
    let (gate, rx) = oneshot::channel();
    h.send(Job::Slow(rx, 0)).await.unwrap();
    h.send(Job::Panic).await.unwrap();
    let mut replies = Vec::new();
    for n in 1..=5 {
        let h = h.clone();
        replies.push(tokio::spawn(
            async move { h.call(|r| Job::Echo(n, r), T).await },
        ));
    }
    tokio::task::yield_now().await;
    gate.send(()).unwrap();
    for (n, r) in replies.into_iter().enumerate() {
        assert_eq!(r.await.unwrap().unwrap(), n as u64 + 1);
    }
    assert_eq!(sup.restarts(), 1);
}

fn three_children(
    strategy: Strategy,
) -> (
    SupervisorSpec,
    Vec<Arc<AtomicUsize>>,
    Vec<foundation_beam::Handle<Job>>,
) {
    let starts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut spec = SupervisorSpec::new("sup", strategy);
    let handles = add_children(&mut spec, &starts);
    (spec, starts, handles)
}

/// Adds one permanent child `c<i>` per counter of `starts`, which counts its starts.
fn add_children(
    spec: &mut SupervisorSpec,
    starts: &[Arc<AtomicUsize>],
) -> Vec<foundation_beam::Handle<Job>> {
    let add = |(i, s): (usize, &Arc<AtomicUsize>)| {
        let s = s.clone();
        spec.child(
            format!("c{i}"),
            Restart::Permanent,
            Default::default(),
            move || Worker::new(&s),
        )
    };
    starts.iter().enumerate().map(add).collect()
}

async fn fail_and_settle(h: &foundation_beam::Handle<Job>) {
    let mut m = h.monitor();
    h.send(Job::Panic).await.unwrap();
    m.wait().await;
    h.call(|r| Job::Echo(0, r), T).await.unwrap();
}

/// Fails the middle one of three children under `strategy`; returns how often each was
/// started.
async fn starts_after_the_middle_child_fails(strategy: Strategy) -> Vec<usize> {
    let (spec, starts, handles) = three_children(strategy);
    let sup = spec.start();
    fail_and_settle(&handles[1]).await;
    for h in &handles {
        h.call(|r| Job::Echo(1, r), T).await.unwrap();
    }
    sup.shutdown(T).await;
    starts.iter().map(|s| s.load(Ordering::SeqCst)).collect()
}

#[tokio::test]
async fn one_for_all_restarts_every_child() {
    let counts = starts_after_the_middle_child_fails(Strategy::OneForAll).await;
    assert_eq!(counts, vec![2, 2, 2]);
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_later_ones() {
    let counts = starts_after_the_middle_child_fails(Strategy::RestForOne).await;
    assert_eq!(counts, vec![1, 2, 2]);
}

#[tokio::test]
async fn transient_and_temporary_children() {
    let starts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    let mut spec = SupervisorSpec::new("sup", Strategy::OneForOne);
    let (s0, s1) = (starts[0].clone(), starts[1].clone());
    let transient = spec.child("t", Restart::Transient, Default::default(), move || {
        Worker::new(&s0)
    });
    let temporary = spec.child("tmp", Restart::Temporary, Default::default(), move || {
        Worker::new(&s1)
    });
    let sup = spec.start();
    fail_and_settle(&transient).await;
    let mut m = transient.monitor();
    transient.shutdown();
    assert_eq!(m.wait().await, ExitReason::Shutdown);
    let mut m = temporary.monitor();
    temporary.send(Job::Panic).await.unwrap();
    m.wait().await;
    tokio::task::yield_now().await;
    let children = sup.children().await;
    assert!(children.iter().all(|c| !c.alive), "{children:?}");
    assert_eq!(
        starts[0].load(Ordering::SeqCst),
        2,
        "restarted after the panic, not after shutdown"
    );
    assert_eq!(
        starts[1].load(Ordering::SeqCst),
        1,
        "temporary: never restarted"
    );
}

#[tokio::test]
async fn exceeding_the_intensity_escalates_to_the_parent() {
    let starts = Arc::new(AtomicUsize::new(0));
    let mut inner = SupervisorSpec::new("inner", Strategy::OneForOne).intensity(Intensity {
        max_restarts: 2,
        period: Duration::from_secs(60),
    });
    let s = starts.clone();
    let flaky = inner.child("flaky", Restart::Permanent, Default::default(), move || {
        Worker::new(&s)
    });
    let mut outer = SupervisorSpec::new("outer", Strategy::OneForOne).intensity(Intensity {
        max_restarts: 0,
        period: Duration::from_secs(60),
    });
    outer.supervisor(Restart::Permanent, inner);
    let top = outer.start();
    let mut top_exit = top.monitor();
    // Two failures are absorbed by `inner`; the third exceeds its intensity, so `inner`
    // fails, and `outer` (allowed no restarts) fails in turn.
    for _ in 0..3 {
        let mut m = flaky.monitor();
        if flaky.send(Job::Panic).await.is_err() {
            break;
        }
        m.wait().await;
    }
    let reason = top_exit.wait().await;
    assert!(
        matches!(&reason, ExitReason::Failed(m) if m.contains("outer")),
        "{reason:?}"
    );
    assert_eq!(
        starts.load(Ordering::SeqCst),
        3,
        "initial start + 2 restarts"
    );
    assert!(!flaky.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizing_down_loses_no_queued_work() {
    let sink = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let starts = Arc::new(AtomicUsize::new(0));
    let (s, k) = (starts.clone(), sink.clone());
    let spec = EcosystemSpec::new("eco")
        .workers(Workers::Fixed(4))
        .dispatch(Dispatch::RoundRobin);
    let eco = Ecosystem::start(spec, move |_| {
        let mut w = Worker::new(&s);
        w.sink = Some(k.clone());
        w
    })
    .await
    .unwrap();
    // Block every worker, queue 400 jobs, shrink to 1 while they are queued, then release.
    let mut gates = Vec::new();
    for w in eco.workers() {
        let (tx, rx) = oneshot::channel();
        w.send(Job::Slow(rx, u64::MAX)).await.unwrap();
        gates.push(tx);
    }
    for n in 0..400u64 {
        let (tx, rx) = oneshot::channel();
        tx.send(()).unwrap();
        eco.send(Job::Slow(rx, n)).await.unwrap();
    }
    assert!(eco.info().backlog >= 400);
    let eco = Arc::new(eco);
    let shrink = {
        let eco = eco.clone();
        tokio::spawn(async move { eco.resize(1).await })
    };
    tokio::task::yield_now().await;
    for g in gates {
        let _ = g.send(());
    }
    shrink.await.unwrap().unwrap();
    assert_eq!(eco.info().workers, 1);
    // Work sent after the resize goes to the remaining worker.
    for n in 400..410u64 {
        eco.call(|r| Job::Echo(n, r), T).await.unwrap();
    }
    let mut done: Vec<u64> = sink
        .lock()
        .iter()
        .copied()
        .filter(|n| *n != u64::MAX)
        .collect();
    done.sort_unstable();
    assert_eq!(
        done,
        (0..410).collect::<Vec<_>>(),
        "every queued job ran exactly once"
    );
    eco.resize(3).await.unwrap();
    assert_eq!(eco.health(), Health::Healthy);
    assert_eq!(eco.info().workers, 3);
    eco.shutdown(T).await;
    assert_eq!(eco.health(), Health::Down);
}

#[tokio::test]
async fn key_hash_keeps_a_key_on_one_worker_and_info_reports_restarts() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let spec = EcosystemSpec::new("keys")
        .workers(Workers::Fixed(3))
        .dispatch(Dispatch::KeyHash);
    let eco = Ecosystem::start(spec, move |_| Worker::new(&s))
        .await
        .unwrap();
    for n in 0..30u64 {
        let (tx, rx) = oneshot::channel();
        tx.send(()).unwrap();
        eco.send_keyed("tenant-a", Job::Slow(rx, n)).await.unwrap();
    }
    let mut per_worker = Vec::new();
    for w in eco.workers() {
        per_worker.push(w.call(Job::Done, T).await.unwrap());
    }
    let holders: Vec<&Vec<u64>> = per_worker.iter().filter(|v| !v.is_empty()).collect();
    assert_eq!(holders.len(), 1, "one worker got every message of the key");
    assert_eq!(*holders[0], (0..30).collect::<Vec<_>>(), "in order");

    let w0 = eco.workers()[0].clone();
    let mut m = w0.monitor();
    w0.send(Job::Panic).await.unwrap();
    m.wait().await;
    w0.call(|r| Job::Echo(1, r), T).await.unwrap();
    assert_eq!(eco.info().restarts, 1);
    assert!(eco.resize(0).await.is_err());
}

fn stuck_worker(starts: &Arc<AtomicUsize>) -> Worker {
    Worker::new(starts)
}

/// 1,000 workers, each stuck in a handler: the ecosystem's shutdown asks them all at once
/// and returns at its one deadline (not 1,000 × grace), with every worker stopped.
#[tokio::test(start_paused = true)]
async fn ecosystem_of_1000_workers_shuts_down_within_one_deadline() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = starts.clone();
    let spec = EcosystemSpec::new("stuck").workers(Workers::Fixed(1000));
    let eco = Ecosystem::start(spec, move |_| stuck_worker(&s))
        .await
        .unwrap();
    let mut gates = Vec::new();
    for w in eco.workers() {
        let (gate, rx) = oneshot::channel();
        w.send(Job::Slow(rx, 0)).await.unwrap();
        gates.push(gate); // never opened
    }
    tokio::task::yield_now().await;
    let grace = Duration::from_secs(2);
    let start = tokio::time::Instant::now();
    eco.shutdown(grace).await;
    let took = start.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_millis(100),
        "{took:?}"
    );
    assert_eq!(eco.info().alive, 0, "every worker stopped");
    assert_eq!(starts.load(Ordering::SeqCst), 1000, "none restarted");

    // Idle workers drain at once: the shutdown does not wait for the deadline.
    let s = starts.clone();
    let spec = EcosystemSpec::new("idle").workers(Workers::Fixed(1000));
    let eco = Ecosystem::start(spec, move |_| stuck_worker(&s))
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    eco.shutdown(grace).await;
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(eco.info().alive, 0);
}

/// OTP's ordered shutdown, with one overall deadline: three stuck children are stopped
/// last-started first, and the whole shutdown ends at the deadline instead of 3 × grace.
#[tokio::test(start_paused = true)]
async fn ordered_shutdown_with_an_overall_deadline() {
    let starts = Arc::new(AtomicUsize::new(0));
    let mut spec = SupervisorSpec::new("ordered", Strategy::OneForOne);
    let children = add_children(&mut spec, &[starts.clone(), starts.clone(), starts.clone()]);
    let sup = spec.start();
    let mut gates = Vec::new();
    for c in &children {
        let (gate, rx) = oneshot::channel();
        c.send(Job::Slow(rx, 0)).await.unwrap();
        gates.push(gate);
    }
    tokio::task::yield_now().await;
    let mut monitors: Vec<_> = children.iter().map(|c| c.monitor()).collect();
    let start = tokio::time::Instant::now();
    sup.shutdown_within(Duration::from_secs(3)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    for m in &mut monitors {
        assert_eq!(m.wait().await, ExitReason::Shutdown);
    }
}

/// A removed child is forgotten: not listed, and its factory (with whatever it
/// captured) is dropped.
#[tokio::test]
async fn removed_children_are_forgotten() {
    let starts = Arc::new(AtomicUsize::new(0));
    let sup = SupervisorSpec::new("forget", Strategy::OneForOne).start();
    let captured = Arc::new(());
    for i in 0..10 {
        let s = starts.clone();
        let c = captured.clone();
        sup.add_child(
            format!("w{i}"),
            Restart::Permanent,
            Default::default(),
            move || {
                let _ = &c;
                Worker::new(&s)
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(Arc::strong_count(&captured), 11);
    for i in 0..10 {
        assert!(sup.remove_child(&format!("w{i}"), T).await);
    }
    assert!(sup.children().await.is_empty());
    assert_eq!(Arc::strong_count(&captured), 1, "factories dropped");
    assert!(!sup.remove_child("w0", T).await);
    sup.shutdown(T).await;
}

struct SlowStarter(Arc<AtomicUsize>);

impl Process for SlowStarter {
    type Message = ();
    async fn started(&mut self, _: &mut Context<()>) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    async fn handle(&mut self, _: (), _: &mut Context<()>) {}
}

/// `Ecosystem::start` returns once every worker runs (its `started` hook returned).
#[tokio::test(start_paused = true)]
async fn ecosystem_start_returns_when_every_worker_runs() {
    let running = Arc::new(AtomicUsize::new(0));
    let r = running.clone();
    let spec = EcosystemSpec::new("starters").workers(Workers::Fixed(100));
    let eco = Ecosystem::start(spec, move |_| SlowStarter(r.clone()))
        .await
        .unwrap();
    assert_eq!(running.load(Ordering::SeqCst), 100);
    assert_eq!(eco.health(), Health::Healthy);
    eco.shutdown(T).await;
}
