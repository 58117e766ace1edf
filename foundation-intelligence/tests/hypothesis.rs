//! The hypothesis engine on synthetic metric traces: a true 20 % improvement is
//! committed, a null change and a degradation are reverted (the degradation at once),
//! and the false-commit rate on null changes and the power on a 20 % improvement are
//! measured over many seeds.
//!
//! Traces: a latency-like metric, mean 100 (ms) in the baseline, normal noise with
//! standard deviation 20 (CV 20 %), one reading per interval, 30 readings per window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation_intelligence::hypothesis::{
    Decision, Experiment, FnIntervention, Goal, HypothesisEngine, HypothesisError, HypothesisSpec,
    Intervention, Step, Test, Verdict,
};
use rand::{Rng, SeedableRng};

const BASE: f64 = 100.0;
const NOISE_SD: f64 = 20.0;

/// Box–Muller: one standard normal value.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn spec(test: Test) -> HypothesisSpec {
    HypothesisSpec::new("h", "latency_ms", Goal::Decrease, 0.2)
        .samples(30, 30)
        .interval(Duration::from_secs(1))
        .test(test)
}

/// Runs one experiment on a synthetic trace whose mean is `BASE * factor` once applied.
fn simulate(seed: u64, factor: f64, test: Test) -> (Decision, bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut exp = Experiment::new(spec(test)).unwrap();
    let mut applied = false;
    loop {
        let mean = if applied { BASE * factor } else { BASE };
        match exp.observe(mean + NOISE_SD * normal(&mut rng)) {
            Step::Continue => {}
            Step::Apply => applied = true,
            Step::Decided(v) => return (v.decision, v.early),
        }
    }
}

fn rates(seeds: u64, factor: f64, test: Test) -> (f64, f64, f64) {
    let (mut commit, mut degraded, mut early) = (0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let (d, e) = simulate(seed, factor, test);
        match d {
            Decision::Commit => commit += 1,
            Decision::RevertDegraded => {
                degraded += 1;
                early += u64::from(e);
            }
            Decision::RevertNoImprovement => {}
        }
    }
    let n = seeds as f64;
    (commit as f64 / n, degraded as f64 / n, early as f64 / n)
}

#[test]
fn false_commit_rate_on_null_changes_is_at_most_5_percent_welch() {
    let (commit, degraded, _) = rates(4000, 1.0, Test::Welch);
    println!(
        "Welch, null change, 4000 seeds: false-commit rate {:.2}% (one-sided alpha 2.5%), false degradation reverts {:.2}%",
        commit * 100.0,
        degraded * 100.0
    );
    assert!(commit <= 0.05, "false-commit rate {commit}");
}

#[test]
fn false_commit_rate_on_null_changes_is_at_most_5_percent_bootstrap() {
    let seeds = 300;
    let mut commits = 0;
    for seed in 0..seeds {
        let (d, _) = simulate(
            seed,
            1.0,
            Test::Bootstrap {
                resamples: 1000,
                seed,
            },
        );
        commits += u32::from(d == Decision::Commit);
    }
    let rate = f64::from(commits) / seeds as f64;
    println!(
        "bootstrap, null change, {seeds} seeds: false-commit rate {:.2}%",
        rate * 100.0
    );
    assert!(rate <= 0.05, "false-commit rate {rate}");
}

#[test]
fn detection_power_on_a_20_percent_improvement() {
    let (commit, degraded, _) = rates(4000, 0.8, Test::Welch);
    println!(
        "Welch, true 20% improvement (CV 20%, 30+30 readings), 4000 seeds: power {:.2}%, wrongly reverted as degraded {:.2}%",
        commit * 100.0,
        degraded * 100.0
    );
    // A test this size should find a one-standard-deviation effect almost always.
    assert!(commit >= 0.9, "power {commit}");
    assert_eq!(degraded, 0.0);
}

#[test]
fn degradations_are_caught_early() {
    let (commit, degraded, early) = rates(1000, 1.5, Test::Welch);
    println!(
        "Welch, 50% degradation, 1000 seeds: reverted as degraded {:.1}%, of them before the window ended {:.1}%",
        degraded * 100.0,
        early / degraded.max(1e-9) * 100.0
    );
    assert_eq!(commit, 0.0);
    assert!(degraded >= 0.99);
    assert!(early / degraded >= 0.9);
}

/// A probe over a synthetic trace that follows whether the change is applied.
fn probe(applied: Arc<AtomicBool>, factor: f64, seed: u64) -> impl FnMut() -> Option<f64> + Send {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    move || {
        let mean = if applied.load(Ordering::SeqCst) {
            BASE * factor
        } else {
            BASE
        };
        Some(mean + NOISE_SD * normal(&mut rng))
    }
}

/// An intervention that flips a flag.
struct Toggle(Arc<AtomicBool>);

impl Intervention for Toggle {
    async fn apply(&mut self) -> Result<(), String> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn revert(&mut self) -> Result<(), String> {
        self.0.store(false, Ordering::SeqCst);
        Ok(())
    }
}

fn toggle(applied: &Arc<AtomicBool>) -> Toggle {
    Toggle(applied.clone())
}

/// Runs the Welch spec on `engine` against a probe whose treatment scales the metric by
/// `factor` (noise seeded by `seed`); returns the verdict and whether the change is still
/// applied.
async fn run_welch(engine: &HypothesisEngine, factor: f64, seed: u64) -> (Verdict, bool) {
    let applied = Arc::new(AtomicBool::new(false));
    let v = engine
        .run(
            &spec(Test::Welch),
            &mut probe(applied.clone(), factor, seed),
            &mut toggle(&applied),
        )
        .await
        .unwrap();
    (v, applied.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn engine_commits_a_true_20_percent_improvement() {
    let engine = HypothesisEngine::new();
    let start = tokio::time::Instant::now();
    let (v, applied) = run_welch(&engine, 0.8, 1).await;
    assert_eq!(v.decision, Decision::Commit, "{v:?}");
    assert!(applied, "a committed change stays applied");
    assert!(v.improvement > 0.1 && v.improvement < 0.3, "{v:?}");
    // 60 readings, one per second, on paused time.
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    let h = engine.history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, "commit");
}

#[tokio::test(start_paused = true)]
async fn engine_reverts_a_null_change() {
    let engine = HypothesisEngine::new();
    let (v, applied) = run_welch(&engine, 1.0, 2).await;
    assert_eq!(v.decision, Decision::RevertNoImprovement, "{v:?}");
    assert!(!applied, "reverted");
    assert_eq!(engine.history()[0].outcome, "revert_no_improvement");
}

#[tokio::test(start_paused = true)]
async fn engine_reverts_a_degradation_at_once() {
    let engine = HypothesisEngine::new();
    let start = tokio::time::Instant::now();
    let (v, applied) = run_welch(&engine, 1.5, 3).await;
    assert_eq!(v.decision, Decision::RevertDegraded, "{v:?}");
    assert!(v.early && v.treatment_n < 30, "{v:?}");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(!applied, "reverted");
}

#[tokio::test(start_paused = true)]
async fn cancelling_reverts_an_applied_change() {
    let applied = Arc::new(AtomicBool::new(false));
    let engine = HypothesisEngine::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(40)).await;
        c.cancel();
    });
    let r = engine
        .run_cancellable(
            &spec(Test::Welch),
            &mut probe(applied.clone(), 1.0, 4),
            &mut toggle(&applied),
            &cancel,
        )
        .await;
    assert!(
        matches!(r, Err(HypothesisError::Cancelled { reverted: true, .. })),
        "{r:?}"
    );
    assert!(!applied.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_is_reported_and_nothing_is_decided() {
    let engine = HypothesisEngine::new();
    let mut change = FnIntervention::new(
        || std::future::ready(Err("no permission".to_string())),
        || std::future::ready(Ok(())),
    );
    let flag = Arc::new(AtomicBool::new(false));
    let r = engine
        .run(&spec(Test::Welch), &mut probe(flag, 1.0, 5), &mut change)
        .await;
    assert!(
        matches!(r, Err(HypothesisError::ApplyFailed { ref reason, .. }) if reason == "no permission"),
        "{r:?}"
    );
    assert_eq!(engine.history()[0].outcome, "apply_failed");
}

#[test]
fn invalid_specs_are_refused() {
    let bad = HypothesisSpec::new("h", "m", Goal::Increase, 0.1).samples(2, 30);
    assert!(matches!(
        Experiment::new(bad),
        Err(HypothesisError::InvalidSpec { .. })
    ));
    let bad = HypothesisSpec::new("h", "m", Goal::Increase, 0.1).significance(0.7);
    assert!(Experiment::new(bad).is_err());
}

#[tokio::test(start_paused = true)]
async fn outcomes_are_events() {
    use foundation_intelligence::core::events::{Events, Query};
    use foundation_intelligence::hypothesis::Record;

    let events = Events::new().unwrap();
    let engine = HypothesisEngine::new().with_events(events.clone());
    run_welch(&engine, 0.8, 6).await;
    let stored = events.store().query(&Query::new().event_type("hypothesis"));
    assert_eq!(stored.len(), 1);
    let record: Record = stored[0].payload().unwrap();
    assert_eq!(record.outcome, "commit");
    assert_eq!(record.metric, "latency_ms");
    assert!(record.verdict.unwrap().p_better < 0.025);
    events.shutdown().await;
}
