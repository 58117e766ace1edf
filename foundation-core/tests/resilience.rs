//! Behaviour of `foundation_core::resilience`: breaker, limiter, retry, execute_protected.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation_core::resilience::{
    execute_protected, retry, retry_if, Backoff, BreakerRegistry, BreakerSettings, BreakerState,
    CircuitBreaker, Jitter, LimitSettings, LimiterSettings, Protected, Protections, RateLimiter,
    RetryPolicy,
};
use foundation_core::Error;
use tokio::sync::{watch, Barrier};
use tokio::time::{advance, Instant};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn breaker(threshold: u32, reset: Duration, probes: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        "test",
        BreakerSettings {
            failure_threshold: nz(threshold),
            reset_timeout: reset,
            half_open_max_probes: nz(probes),
            success_threshold: nz(1),
        },
    )
}

async fn fail(b: &CircuitBreaker) {
    let r = b.call(async { Err::<(), _>("boom") }).await;
    assert!(matches!(r, Err(Protected::Failed("boom"))), "{r:?}");
}

/// A limiter whose operations all get `burst` calls per hour (so nothing refills during a
/// test), with `login` limited to 2.
fn limiter(burst: u32) -> RateLimiter<String> {
    let mut settings = LimiterSettings {
        default: LimitSettings {
            rate: nz(burst),
            per: Duration::from_secs(3600),
            burst: None,
        },
        ..LimiterSettings::default()
    };
    settings.operations.insert(
        "login".into(),
        LimitSettings {
            rate: nz(2),
            per: Duration::from_secs(3600),
            burst: None,
        },
    );
    RateLimiter::new("test", &settings).unwrap()
}

// ---------------------------------------------------------------- breaker

#[tokio::test(start_paused = true)]
async fn breaker_goes_closed_open_half_open_closed() {
    let b = breaker(3, Duration::from_secs(10), 1);
    fail(&b).await;
    fail(&b).await;
    assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
    fail(&b).await;
    let opened_at = Instant::now();
    assert_eq!(b.state(), BreakerState::Open { since: opened_at });

    // Open: rejected without running the operation.
    let ran = AtomicU32::new(0);
    let r = b
        .call(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
    assert!(
        matches!(r, Err(Protected::Rejected(Error::CircuitOpen { retry_after, .. })) if retry_after == Duration::from_secs(10))
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    advance(Duration::from_millis(9_999)).await;
    assert!(b.call(async { Ok::<_, ()>(()) }).await.is_err());

    advance(Duration::from_millis(1)).await;
    let r = b
        .call(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(5)
        })
        .await;
    assert_eq!(r.unwrap(), 5);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_the_breaker_for_a_full_reset_timeout() {
    let b = breaker(1, Duration::from_secs(10), 1);
    fail(&b).await;
    advance(Duration::from_secs(10)).await;
    fail(&b).await; // the probe
    let reopened = Instant::now();
    assert_eq!(b.state(), BreakerState::Open { since: reopened });
    match b.call(async { Ok::<_, ()>(()) }).await {
        Err(Protected::Rejected(Error::CircuitOpen { retry_after, .. })) => {
            assert_eq!(retry_after, Duration::from_secs(10));
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    advance(Duration::from_secs(10)).await;
    b.call(async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
}

#[tokio::test(start_paused = true)]
async fn success_threshold_needs_that_many_probe_successes() {
    let b = CircuitBreaker::new(
        "st",
        BreakerSettings {
            failure_threshold: nz(1),
            reset_timeout: Duration::from_secs(1),
            half_open_max_probes: nz(1),
            success_threshold: nz(3),
        },
    );
    fail(&b).await;
    advance(Duration::from_secs(1)).await;
    for successes in 1..3 {
        b.call(async { Ok::<_, ()>(()) }).await.unwrap();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probes_in_flight: 0,
                successes
            }
        );
    }
    b.call(async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
}

/// Many concurrent calls on a half-open breaker: exactly `probes` of them run; the rest are
/// rejected while the probes are in flight.
async fn half_open_admits_exactly(probes: u32, callers: usize) {
    let b = breaker(1, Duration::ZERO, probes);
    fail(&b).await; // open; reset timeout zero → next call finds it half-open

    let (gate_tx, gate_rx) = watch::channel(false);
    let admitted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(callers));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (b, admitted, barrier) = (b.clone(), admitted.clone(), barrier.clone());
            let mut gate = gate_rx.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                b.call(async move {
                    admitted.fetch_add(1, Ordering::SeqCst);
                    // Hold the probe slot until the test opens the gate.
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok::<_, ()>(())
                })
                .await
            })
        })
        .collect();

    // Wait until every caller is either admitted (parked at the gate) or rejected.
    let mut results = Vec::new();
    let mut pending = tasks;
    // (Admitted calls cannot finish before the gate opens; rejected ones finish at once.)
    while admitted.load(Ordering::SeqCst) + pending.iter().filter(|t| t.is_finished()).count()
        < callers
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(admitted.load(Ordering::SeqCst), probes as usize);
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen {
            probes_in_flight: probes,
            successes: 0
        }
    );
    gate_tx.send(true).unwrap();
    for t in pending.drain(..) {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let rejected = results
        .iter()
        .filter(|r| matches!(r, Err(Protected::Rejected(Error::CircuitOpen { .. }))))
        .count();
    assert_eq!(ok, probes as usize);
    assert_eq!(rejected, callers - probes as usize);
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_limit_holds_for_many_concurrent_calls() {
    half_open_admits_exactly(3, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_probe_limit_holds_across_threads() {
    for _ in 0..20 {
        half_open_admits_exactly(2, 64).await;
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_runs_on_failure_and_on_rejection_only() {
    let b = breaker(1, Duration::from_secs(5), 1);
    let v = b
        .call_with_fallback(async { Ok::<_, &str>(1) }, |_| async { -1 })
        .await;
    assert_eq!(v, 1);

    let v = b
        .call_with_fallback(async { Err::<i32, _>("down") }, |why| async move {
            assert!(matches!(why, Protected::Failed("down")));
            -2
        })
        .await;
    assert_eq!(v, -2);

    let ran = AtomicU32::new(0);
    let v = b
        .call_with_fallback(
            async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, &str>(3)
            },
            |why| async move {
                assert!(matches!(
                    why,
                    Protected::Rejected(Error::CircuitOpen { .. })
                ));
                -3
            },
        )
        .await;
    assert_eq!(v, -3);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn breaker_registry_gets_or_creates_by_name() {
    let reg = BreakerRegistry::new(BreakerSettings {
        failure_threshold: nz(1),
        ..BreakerSettings::default()
    });
    let a = reg.get("a");
    fail(&a).await;
    assert!(matches!(reg.get("a").state(), BreakerState::Open { .. }));
    assert_eq!(reg.get("b").state(), BreakerState::Closed { failures: 0 });
    let c = reg.get_with(
        "c",
        BreakerSettings {
            failure_threshold: nz(7),
            ..BreakerSettings::default()
        },
    );
    assert_eq!(c.settings().failure_threshold.get(), 7);
    assert_eq!(reg.get("c").settings().failure_threshold.get(), 7);
    let names: Vec<_> = reg.states().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(reg.find("zzz").is_none());
}

// ---------------------------------------------------------------- limiter

#[tokio::test(start_paused = true)]
async fn limiter_admits_exactly_the_quota_per_key_and_keys_are_independent() {
    let l = limiter(5);
    let alice = "alice".to_string();
    let bob = "bob".to_string();
    let admitted = (0..20)
        .filter(|_| l.check(&alice, "search").is_ok())
        .count();
    assert_eq!(admitted, 5);
    // Other entity, same operation: its own allowance.
    assert_eq!(
        (0..20).filter(|_| l.check(&bob, "search").is_ok()).count(),
        5
    );
    // Same entity, other operation with its own quota.
    assert_eq!(
        (0..20).filter(|_| l.check(&alice, "login").is_ok()).count(),
        2
    );
    match l.check(&alice, "search") {
        Err(Error::RateLimited { key, retry_after }) => {
            assert_eq!(key, "alice/search");
            assert_eq!(retry_after, Duration::from_secs(720)); // 1 call per 3600/5 s
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_admits_exactly_the_quota_under_concurrency() {
    let l = limiter(50);
    let admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (l, admitted) = (l.clone(), admitted.clone());
            tokio::spawn(async move {
                let key = "shared".to_string();
                for _ in 0..100 {
                    if l.check(&key, "search").is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 50);
}

#[tokio::test(start_paused = true)]
async fn until_ready_waits_for_the_allowance() {
    let settings = LimiterSettings {
        default: LimitSettings::per_second(nz(4)),
        ..LimiterSettings::default()
    };
    let l: RateLimiter<u64> = RateLimiter::new("wait", &settings).unwrap();
    let start = Instant::now();
    for _ in 0..4 {
        l.until_ready(&7, "op").await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    l.until_ready(&7, "op").await;
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    l.until_ready(&7, "op").await;
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_dropped_by_cleanup_task() {
    let settings = LimiterSettings {
        default: LimitSettings::per_second(nz(1)),
        ..LimiterSettings::default()
    };
    let l: RateLimiter<u64> = RateLimiter::new("gc", &settings).unwrap();
    for e in 0..1000 {
        l.check(&e, "op").unwrap();
    }
    assert_eq!(l.key_count(), 1000);
    let cleanup = l.spawn_cleanup(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(l.key_count(), 0);
    drop(cleanup);
}

// ---------------------------------------------------------------- retry

fn fast_policy(max: u32) -> RetryPolicy {
    RetryPolicy::new(nz(max)).with_backoff(Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        jitter: Jitter::None,
    })
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_once_on_a_non_retryable_error() {
    let calls = AtomicU32::new(0);
    let r: Result<(), Error> = retry(&fast_policy(5), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::InvalidArgument("bad".into()))
    })
    .await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_stops_after_max_attempts_with_backoff_between() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r: Result<(), Error> = retry(&fast_policy(4), || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::Timeout {
            operation: "x".into(),
            after: Duration::from_secs(1),
        })
    })
    .await;
    assert!(matches!(r, Err(Error::Timeout { .. })));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // 10 + 20 + 40 ms between the four calls, no jitter.
    assert_eq!(start.elapsed(), Duration::from_millis(70));
}

#[tokio::test(start_paused = true)]
async fn retry_honours_the_errors_retry_after_floor() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = retry(&fast_policy(3), || async {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(Error::RateLimited {
                key: "k".into(),
                retry_after: Duration::from_secs(3),
            })
        } else {
            Ok("done")
        }
    })
    .await;
    assert_eq!(r.unwrap(), "done");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn retry_if_uses_the_predicate() {
    let calls = AtomicU32::new(0);
    let r: Result<(), &str> = retry_if(
        &fast_policy(10),
        || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err(if n < 2 { "transient" } else { "fatal" })
        },
        |e| *e == "transient",
    )
    .await;
    assert_eq!(r, Err("fatal"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------- execute_protected

#[tokio::test(start_paused = true)]
async fn rate_limited_call_neither_runs_nor_touches_the_breaker() {
    let b = breaker(1, Duration::from_secs(10), 1);
    let p = Protections::new("charge")
        .rate_limit(limiter(1))
        .breaker(b.clone());
    let key = "alice".to_string();
    let ran = AtomicU32::new(0);
    let op = || async {
        ran.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>("fails")
    };
    assert!(matches!(
        execute_protected(&key, &p, op()).await,
        Err(Protected::Failed("fails"))
    ));
    assert!(matches!(b.state(), BreakerState::Open { .. }));

    // Breaker open *and* limit used up: the limiter answers first.
    let r = execute_protected(&key, &p, op()).await;
    assert!(
        matches!(r, Err(Protected::Rejected(Error::RateLimited { .. }))),
        "{r:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    // A throttled call on a closed breaker does not count as a failure.
    let b = breaker(1, Duration::from_secs(10), 1);
    let p = Protections::new("charge")
        .rate_limit(limiter(1))
        .breaker(b.clone());
    execute_protected(&key, &p, async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    for _ in 0..10 {
        let r = execute_protected(&key, &p, op()).await;
        assert!(matches!(
            r,
            Err(Protected::Rejected(Error::RateLimited { .. }))
        ));
    }
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_does_not_run_the_operation() {
    let b = breaker(1, Duration::from_secs(10), 1);
    let p: Protections<String> = Protections::new("op").breaker(b.clone());
    let key = String::new();
    let _ = execute_protected(&key, &p, async { Err::<(), _>(()) }).await;
    let ran = AtomicU32::new(0);
    let r = execute_protected(&key, &p, async {
        ran.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(())
    })
    .await;
    assert!(matches!(
        r,
        Err(Protected::Rejected(Error::CircuitOpen { .. }))
    ));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_counts_as_a_breaker_failure() {
    let b = breaker(2, Duration::from_secs(10), 1);
    let p: Protections<String> = Protections::new("slow-op")
        .breaker(b.clone())
        .timeout(Duration::from_millis(100));
    let key = String::new();
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, ()>(())
    };
    let start = Instant::now();
    match execute_protected(&key, &p, slow()).await {
        Err(Protected::TimedOut(Error::Timeout { operation, after })) => {
            assert_eq!(operation, "slow-op");
            assert_eq!(after, Duration::from_millis(100));
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
    let _ = execute_protected(&key, &p, slow()).await;
    assert!(matches!(b.state(), BreakerState::Open { .. }));

    // A fast call within the deadline is not affected by the timeout.
    let p: Protections<String> = Protections::new("fast").timeout(Duration::from_millis(100));
    assert_eq!(
        execute_protected(&key, &p, async { Ok::<_, ()>(3) })
            .await
            .unwrap(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_holds_under_concurrency() {
    // 200 concurrent failing calls, 10 allowed by the limiter, a breaker that would open at
    // 1000 failures: exactly 10 run, exactly 10 failures are counted.
    let b = breaker(1000, Duration::from_secs(10), 1);
    let p = Arc::new(
        Protections::new("search")
            .rate_limit(limiter(10))
            .breaker(b.clone()),
    );
    let ran = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (p, ran, barrier) = (p.clone(), ran.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let key = "tenant".to_string();
                execute_protected(&key, &p, async {
                    ran.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Err::<(), _>("backend error")
                })
                .await
            })
        })
        .collect();
    let mut failed = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(Protected::Failed(_)) => failed += 1,
            Err(Protected::Rejected(Error::RateLimited { .. })) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((failed, limited), (10, 190));
    assert_eq!(ran.load(Ordering::SeqCst), 10);
    assert_eq!(b.state(), BreakerState::Closed { failures: 10 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_timeouts_open_the_breaker_and_later_calls_do_not_run() {
    let b = breaker(5, Duration::from_secs(3600), 1);
    let p: Arc<Protections<String>> = Arc::new(
        Protections::new("hang")
            .breaker(b.clone())
            .timeout(Duration::from_millis(20)),
    );
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                execute_protected(&String::new(), &p, std::future::pending::<Result<(), ()>>())
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(Protected::TimedOut(_))));
    }
    assert!(matches!(b.state(), BreakerState::Open { .. }));
    let ran = AtomicU32::new(0);
    let r = execute_protected(&String::new(), &p, async {
        ran.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(())
    })
    .await;
    assert!(r.unwrap_err().is_rejected());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn retry_composes_with_execute_protected() {
    // Quota 1 per hour. Call 1 passes the limiter and fails with a retryable error; retry 1
    // (after 10 ms) is rate limited with retry_after = 1 h - 10 ms, which the retry loop
    // honours instead of its 20 ms backoff; retry 2 passes.
    let p = Protections::new("charge").rate_limit(limiter(1));
    let key = "bob".to_string();
    let ran = AtomicU32::new(0);
    let attempts = AtomicU32::new(0);
    let start = Instant::now();
    let r = retry(&fast_policy(3), || async {
        attempts.fetch_add(1, Ordering::SeqCst);
        execute_protected(&key, &p, async {
            if ran.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::Unhealthy {
                    name: "auth".into(),
                    reason: "warming up".into(),
                })
            } else {
                Ok("token")
            }
        })
        .await
    })
    .await;
    assert_eq!(r.unwrap(), "token");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_breaker_counts_every_concurrent_failure() {
    let b = breaker(1_000_000, Duration::from_secs(10), 1);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    let _ = b.call(async { Err::<(), _>(()) }).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.state(), BreakerState::Closed { failures: 2000 });
    b.call(async { Ok::<_, ()>(()) }).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
}
