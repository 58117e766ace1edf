//! What `Ecosystem::call` promises while workers crash and restart (tokio paused time):
//! re-routed before delivery, never retried after it, waits within its timeout when no
//! worker runs, fails at once when the coordinator has given up — and every re-route and
//! failure is counted.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation_beam::ecosystem::{Ecosystem, EcosystemSpec, Health, Workers};
use foundation_beam::process::{Context, ExitReason, Process, Reply};
use foundation_beam::supervisor::Intensity;
use foundation_beam::Error;
use metrics_util::debugging::DebugValue;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

enum Job {
    Echo(u64, Reply<u64>),
    /// Panics (holding no reply).
    Crash,
    /// Panics while holding the call's reply.
    CrashHolding(Reply<u64>),
    /// Drops the reply without answering.
    Ignore(Reply<u64>),
    /// Holds the reply across an await, then panics.
    YieldThenCrash(Reply<u64>),
    /// Never answers.
    Hang(Reply<u64>),
}

/// Counts what each worker handled; restarted workers take `restart_delay` to start.
#[derive(Clone, Default)]
struct Shared {
    starts: Arc<[AtomicUsize; 4]>,
    handled: Arc<[AtomicUsize; 4]>,
    restart_delay: Duration,
}

struct Worker {
    i: usize,
    shared: Shared,
}

impl Process for Worker {
    type Message = Job;

    async fn started(&mut self, _: &mut Context<Job>) {
        // The first start is immediate; restarts take `restart_delay`.
        if self.shared.starts[self.i].fetch_add(1, Ordering::SeqCst) > 0 {
            tokio::time::sleep(self.shared.restart_delay).await;
        }
    }

    async fn handle(&mut self, job: Job, _: &mut Context<Job>) {
        self.shared.handled[self.i].fetch_add(1, Ordering::SeqCst);
        match job {
            Job::Echo(n, reply) => reply.send(n),
            Job::Crash => panic!("injected crash"),
            Job::CrashHolding(reply) => {
                let _held = reply;
                panic!("injected crash while handling a call")
            }
            Job::Ignore(reply) => drop(reply),
            Job::Hang(reply) => {
                std::future::pending::<()>().await;
                drop(reply);
            }
            Job::YieldThenCrash(reply) => {
                tokio::task::yield_now().await;
                if reply.is_waiting() {
                    panic!("injected crash after a yield");
                }
            }
        }
    }
}

impl Shared {
    fn handled(&self, i: usize) -> usize {
        self.handled[i].load(Ordering::SeqCst)
    }
}

async fn ecosystem(workers: usize, shared: &Shared, intensity: Intensity) -> Ecosystem<Worker> {
    let spec = EcosystemSpec::new("calls")
        .workers(Workers::Fixed(workers))
        .intensity(intensity);
    let shared = shared.clone();
    Ecosystem::start(spec, move |i| Worker {
        i,
        shared: shared.clone(),
    })
    .await
    .unwrap()
}

fn generous() -> Intensity {
    Intensity {
        max_restarts: 100,
        period: T,
    }
}

/// Crashes worker `i` and waits until its restart has begun (it is then starting, not
/// running, for `restart_delay`).
async fn crash(eco: &Ecosystem<Worker>, shared: &Shared, i: usize) {
    let before = shared.starts[i].load(Ordering::SeqCst);
    eco.workers()[i].send(Job::Crash).await.unwrap();
    while shared.starts[i].load(Ordering::SeqCst) == before {
        tokio::task::yield_now().await;
    }
}

/// Counters as (name, labels as `key=value`, value).
type Counters = Vec<(String, Vec<String>, u64)>;

/// Runs `f` on a paused current-thread runtime with a local metrics recorder; returns
/// its output and the counters it left, as (name, labels, value).
fn run<F: Future>(f: impl FnOnce() -> F) -> (F::Output, Counters) {
    let (rt, snapshotter, _local) = common::recorded_runtime(true);
    let out = rt.block_on(f());
    let counters = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            DebugValue::Counter(c) => {
                let key = k.key();
                let labels = key.labels().map(|l| format!("{}={}", l.key(), l.value()));
                Some((key.name().to_string(), labels.collect(), c))
            }
            _ => None,
        })
        .collect();
    (out, counters)
}

fn counter(all: &Counters, name: &str, label: Option<&str>) -> u64 {
    all.iter()
        .filter(|(n, labels, _)| n == name && label.is_none_or(|l| labels.iter().any(|x| x == l)))
        .map(|c| c.2)
        .sum()
}

#[test]
fn calls_pass_over_a_restarting_worker_to_a_running_one() {
    let s = slow_restarts();
    let (elapsed, counters) = run(|| async move {
        let eco = ecosystem(2, &s, generous()).await;
        crash(&eco, &s, 0).await;
        assert_eq!(eco.health(), Health::Healthy, "starting counts as alive");
        let start = Instant::now();
        // Round-robin would send every other call to worker 0, which starts in 60 s:
        // each call has 1 s, so one that waited for it would time out.
        for n in 0..10 {
            let r = eco.call(|r| Job::Echo(n, r), Duration::from_secs(1)).await;
            assert_eq!(r.unwrap(), n);
        }
        assert_eq!(s.handled(0), 1, "worker 0 handled only its crash");
        assert_eq!(s.handled(1), 10);
        start.elapsed()
    });
    assert!(
        elapsed < Duration::from_secs(1),
        "no call waited: {elapsed:?}"
    );
    assert!(
        counter(
            &counters,
            "foundation_ecosystem_rerouted_total",
            Some("ecosystem=calls")
        ) >= 5,
        "re-routes are counted: {counters:?}"
    );
    assert_eq!(
        counter(&counters, "foundation_ecosystem_call_failures_total", None),
        0
    );
}

#[test]
fn with_every_worker_restarting_a_call_waits_for_one_within_its_timeout() {
    let s = Shared {
        restart_delay: Duration::from_secs(2),
        ..Shared::default()
    };
    let (_, counters) = run(|| async move {
        let eco = ecosystem(1, &s, generous()).await;

        // The worker is back after 2 s: a call with 5 s waits for it and is answered.
        crash(&eco, &s, 0).await;
        let start = Instant::now();
        assert_eq!(eco.call(|r| Job::Echo(7, r), T).await.unwrap(), 7);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "waited {waited:?}"
        );

        // A call with 1 s gives up before it is back, and its message was never
        // delivered: the restarted worker does not see it.
        crash(&eco, &s, 0).await;
        let handled = s.handled(0);
        let start = Instant::now();
        let r = eco.call(|r| Job::Echo(8, r), Duration::from_secs(1)).await;
        assert!(
            matches!(&r, Err(e @ Error::Unavailable { ecosystem, waited })
                if ecosystem == "calls" && *waited == Duration::from_secs(1) && e.is_retryable()),
            "{r:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(eco.call(|r| Job::Echo(9, r), T).await.unwrap(), 9);
        assert_eq!(s.handled(0), handled + 1, "only the call after the restart");
    });
    assert_eq!(
        counter(
            &counters,
            "foundation_ecosystem_call_failures_total",
            Some("reason=unavailable")
        ),
        1
    );
}

#[test]
fn a_call_whose_worker_crashes_while_handling_it_fails_as_interrupted_and_is_not_retried() {
    let s = Shared::default();
    let (_, counters) = run(|| async move {
        let eco = ecosystem(2, &s, generous()).await;
        let r = eco.call(Job::CrashHolding, T).await;
        match r {
            Err(Error::Interrupted {
                reason: ExitReason::Panic(_),
                ..
            }) => {}
            other => panic!("expected Interrupted, got {other:?}"),
        }
        // Handled once, by one worker: not re-sent to the other.
        assert_eq!(s.handled(0) + s.handled(1), 1);
        // A reply kept in the handler's state (across an await) too.
        let r = eco.call(Job::YieldThenCrash, T).await;
        assert!(
            matches!(
                &r,
                Err(Error::Interrupted {
                    reason: ExitReason::Panic(_),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(s.handled(0) + s.handled(1), 2);
        // The same through a plain handle.
        let w = eco.workers()[1].clone();
        let r = w.call(Job::CrashHolding, T).await;
        assert!(matches!(r, Err(Error::Interrupted { .. })), "{r:?}");
        // A reply dropped without a crash is still `NoReply`.
        let r = w.call(Job::Ignore, T).await;
        assert!(matches!(r, Err(Error::NoReply { .. })), "{r:?}");
    });
    assert_eq!(
        counter(
            &counters,
            "foundation_ecosystem_call_failures_total",
            Some("reason=interrupted")
        ),
        2
    );
}

#[test]
fn messages_queued_behind_a_crash_are_not_interrupted() {
    let s = Shared::default();
    run(|| async move {
        let eco = ecosystem(1, &s, generous()).await;
        let w = eco.workers()[0].clone();
        // The crash and three calls queued behind it: the restarted worker answers all.
        w.send(Job::Crash).await.unwrap();
        let calls = (0..3).map(|n| w.call(move |r| Job::Echo(n, r), T));
        let answers = futures_util::future::join_all(calls).await;
        assert_eq!(
            answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(eco.info().restarts, 1);
    });
}

/// The demo's "11 crashes injected, 10 restarts": the fourth crash of one ecosystem
/// within 5 s exceeded the default intensity (3 in 5 s), so its coordinator gave up —
/// it stopped both workers and restarted none — and every later call to that ecosystem
/// failed. Now those calls fail at once with the reason.
#[test]
fn crashes_beyond_the_intensity_stop_the_ecosystem_and_calls_say_why() {
    let s = Shared::default();
    let (_, counters) = run(|| async move {
        let eco = ecosystem(2, &s, Intensity::default()).await;
        for k in 0..4 {
            if k > 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            eco.workers()[k % 2].send(Job::Crash).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let coordinator_done = async {
            while eco.down().is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(T, coordinator_done).await.unwrap();
        assert_eq!(
            eco.info().restarts,
            3,
            "4 crashes, 3 restarts: the 4th escalated"
        );
        assert_eq!(eco.health(), Health::Down);
        let reason = eco.down().unwrap();
        assert!(
            matches!(&reason, ExitReason::Failed(m) if m.contains("more than 3 restarts")),
            "{reason}"
        );
        let start = Instant::now();
        let r = eco.call(|r| Job::Echo(1, r), T).await;
        assert!(
            matches!(&r, Err(Error::EcosystemDown { ecosystem, reason: ExitReason::Failed(_) }) if ecosystem == "calls"),
            "{r:?}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "fails at once");
    });
    assert_eq!(
        counter(
            &counters,
            "foundation_ecosystem_call_failures_total",
            Some("reason=down")
        ),
        1
    );
}

/// A one-worker ecosystem whose worker crashed and takes 60 s to restart, and a call
/// (timeout `T`) waiting for a worker in a task that returns its result and how long it
/// waited.
async fn a_call_waiting_for_a_worker(
    s: &Shared,
) -> (
    Arc<Ecosystem<Worker>>,
    tokio::task::JoinHandle<(foundation_beam::Result<u64>, Duration)>,
) {
    let eco = Arc::new(ecosystem(1, s, generous()).await);
    crash(&eco, s, 0).await;
    let caller = {
        let eco = eco.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (eco.call(|r| Job::Echo(5, r), T).await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    (eco, caller)
}

fn slow_restarts() -> Shared {
    Shared {
        restart_delay: Duration::from_secs(60),
        ..Shared::default()
    }
}

#[test]
fn calls_waiting_for_a_worker_fail_when_the_ecosystem_shuts_down() {
    let s = slow_restarts();
    run(|| async move {
        let (eco, caller) = a_call_waiting_for_a_worker(&s).await;
        eco.shutdown(Duration::from_secs(1)).await;
        let (r, _) = caller.await.unwrap();
        assert!(
            matches!(
                &r,
                Err(Error::EcosystemDown {
                    reason: ExitReason::Shutdown,
                    ..
                })
            ),
            "{r:?}"
        );
    });
}

#[test]
fn a_resize_wakes_calls_waiting_for_a_worker() {
    let s = slow_restarts();
    run(|| async move {
        let (eco, caller) = a_call_waiting_for_a_worker(&s).await;
        eco.resize(2).await.unwrap();
        let (r, waited) = caller.await.unwrap();
        assert_eq!(r.unwrap(), 5);
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert_eq!(s.handled(1), 1, "the new worker answered");
    });
}

#[test]
fn a_call_whose_worker_is_killed_while_handling_it_fails_as_interrupted() {
    let s = Shared::default();
    run(|| async move {
        let eco = Arc::new(ecosystem(1, &s, generous()).await);
        let caller = {
            let eco = eco.clone();
            tokio::spawn(async move { eco.call(Job::Hang, Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The worker does not drain within the grace, so it is killed mid-call.
        eco.shutdown(Duration::from_secs(1)).await;
        let r = caller.await.unwrap();
        assert!(
            matches!(
                &r,
                Err(Error::Interrupted {
                    reason: ExitReason::Shutdown,
                    ..
                })
            ),
            "{r:?}"
        );
    });
}
