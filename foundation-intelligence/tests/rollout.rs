//! Rollouts on paused time: a healthy feature is widened 10 → 20 → 40 → 80 → 100 %, a
//! faulty one (errors or latency) is rolled back within one check interval.

use std::time::Duration;

use foundation_intelligence::rollout::{CheckAction, Rollout, RolloutSettings, RolloutState};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

fn settings() -> RolloutSettings {
    RolloutSettings {
        initial_percent: 10.0,
        check_interval: Duration::from_secs(10),
        min_samples: 50,
        ..RolloutSettings::default()
    }
}

/// Traffic: 50 requests per 100 ms with keys `req-<i>`; treated requests have mean
/// latency `treated_ms` and error rate `treated_err`, control ones 10 ms and 1 %.
fn traffic(
    rollout: Rollout,
    treated_ms: f64,
    treated_err: f64,
    seed: u64,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut i = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            for _ in 0..50 {
                i += 1;
                let treated = rollout.is_enabled(format!("req-{i}").as_bytes());
                let (ms, err) = if treated {
                    (treated_ms, treated_err)
                } else {
                    (10.0, 0.01)
                };
                let latency = ms * rng.random_range(0.8..1.2);
                let ok = rng.random::<f64>() >= err;
                rollout.record(treated, Duration::from_secs_f64(latency / 1000.0), ok);
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn widens_a_healthy_feature_until_complete() {
    let rollout = Rollout::new("healthy", settings()).unwrap();
    let cancel = CancellationToken::new();
    let gen = traffic(rollout.clone(), 10.0, 0.01, 1, cancel.clone());
    let monitor = rollout.spawn_monitor(cancel.clone());
    tokio::time::sleep(Duration::from_secs(45)).await;
    cancel.cancel();
    gen.await.unwrap();
    monitor.await.unwrap();
    let steps: Vec<_> = rollout
        .history()
        .iter()
        .map(|r| (r.action, r.state.clone()))
        .collect();
    println!("{steps:?}");
    assert_eq!(rollout.state(), RolloutState::Complete);
    assert_eq!(rollout.percent(), 100.0);
    let widened: Vec<_> = rollout
        .history()
        .iter()
        .filter(|r| r.action == CheckAction::Widened)
        .filter_map(|r| match r.state {
            RolloutState::Active { percent } => Some(percent),
            _ => None,
        })
        .collect();
    assert_eq!(widened, vec![20.0, 40.0, 80.0]);
}

async fn rolled_back_within_one_interval(treated_ms: f64, treated_err: f64, seed: u64) -> String {
    let rollout = Rollout::new("faulty", settings()).unwrap();
    let cancel = CancellationToken::new();
    let gen = traffic(
        rollout.clone(),
        treated_ms,
        treated_err,
        seed,
        cancel.clone(),
    );
    let start = tokio::time::Instant::now();
    let monitor = rollout.spawn_monitor(cancel.clone());
    // The monitor stops itself once it has rolled back.
    monitor.await.unwrap();
    let took = start.elapsed();
    cancel.cancel();
    gen.await.unwrap();
    assert!(
        took <= Duration::from_secs(10),
        "rolled back after {took:?}"
    );
    assert_eq!(rollout.percent(), 0.0);
    assert!((0..1000).all(|i| !rollout.is_enabled(format!("req-{i}").as_bytes())));
    match rollout.state() {
        RolloutState::RolledBack { reason } => reason,
        s => panic!("not rolled back: {s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rolls_back_a_feature_with_more_errors_within_its_check_interval() {
    let reason = rolled_back_within_one_interval(10.0, 0.20, 2).await;
    assert!(reason.contains("error rate"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn rolls_back_a_slower_feature_within_its_check_interval() {
    let reason = rolled_back_within_one_interval(12.5, 0.01, 3).await;
    assert!(reason.contains("latency"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_small_latency_change_within_the_limit_is_widened() {
    let rollout = Rollout::new("slightly-slower", settings()).unwrap();
    let cancel = CancellationToken::new();
    let gen = traffic(rollout.clone(), 10.5, 0.01, 4, cancel.clone());
    tokio::time::sleep(Duration::from_secs(11)).await;
    let r = rollout.check();
    cancel.cancel();
    gen.await.unwrap();
    // The first scheduled check would have happened at 10 s; here we check by hand.
    assert_eq!(r.action, CheckAction::Widened, "{r:?}");
}

#[test]
fn invalid_settings_are_refused() {
    assert!(Rollout::new(
        "x",
        RolloutSettings {
            initial_percent: 0.0,
            ..settings()
        }
    )
    .is_err());
    assert!(Rollout::new(
        "x",
        RolloutSettings {
            check_interval: Duration::ZERO,
            ..settings()
        }
    )
    .is_err());
}
