//! Hypotheses: every optimisation is measured, then kept or reverted.
//!
//! A [`HypothesisSpec`] names a metric, the direction that is better ([`Goal`]) and the
//! improvement expected; an [`Intervention`] says how to apply and revert the change; a
//! [`Probe`] reads the metric. [`HypothesisEngine::run`] then:
//!
//! 1. samples a **baseline** window (`baseline_samples` readings, one per
//!    `sample_interval`);
//! 2. **applies** the change;
//! 3. samples a **treatment** window, checking after each reading (from
//!    `min_degradation_samples` on, with Welch's test at `degradation_significance`)
//!    whether the metric has become significantly *worse* — if so it **reverts at once**
//!    ([`Decision::RevertDegraded`]);
//! 4. decides with a one-sided statistical test ([`Test::Welch`] or [`Test::Bootstrap`]):
//!    **commit** when the treatment is significantly better at `significance`, otherwise
//!    **revert** ([`Decision::RevertNoImprovement`], or [`Decision::RevertDegraded`] when it
//!    is significantly worse).
//!
//! Never one reading: the decision is a test on two samples. The readings should be
//! independent-ish aggregates (a mean latency per interval, a rate per interval), not raw
//! per-request values with strong autocorrelation.
//!
//! The decision logic is [`Experiment`], a state machine with no clock and no I/O (feed it
//! readings, it says when to apply and what it decided); the engine drives it on tokio time
//! and records history as metrics, `tracing` events and, with
//! [`HypothesisEngine::with_events`], `foundation_core` events of type `hypothesis`.
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_hypothesis_outcomes_total{hypothesis,outcome}` | counter: `commit`, `revert_no_improvement`, `revert_degraded`, `apply_failed`, `cancelled` |
//! | `foundation_hypothesis_phase{hypothesis}` | gauge: 0 idle, 1 baseline, 2 treatment |
//! | `foundation_hypothesis_improvement_ratio{hypothesis}` | gauge: observed relative improvement of the last decision |
//! | `foundation_hypothesis_p_value{hypothesis}` | gauge: one-sided p-value of the last decision |
//! | `foundation_hypothesis_revert_failures_total{hypothesis}` | counter |
//! | `foundation_hypothesis_samples_rejected_total{hypothesis}` | counter: non-finite readings skipped |
//! | `foundation_hypothesis_events_dropped_total` | counter: history events not emitted (event lane full) |
//!
//! ```
//! use std::time::Duration;
//! use foundation_intelligence::hypothesis::{
//!     Decision, FnIntervention, Goal, HypothesisEngine, HypothesisSpec,
//! };
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // A latency that drops from 10 ms to 8 ms once the change is applied.
//! let applied = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let (a, r, p) = (applied.clone(), applied.clone(), applied.clone());
//! let mut i = 0u32;
//! let mut probe = move || {
//!     i += 1;
//!     let base = if p.load(std::sync::atomic::Ordering::SeqCst) { 8.0 } else { 10.0 };
//!     Some(base + f64::from(i % 3) * 0.1)
//! };
//! let mut change = FnIntervention::new(
//!     move || { a.store(true, std::sync::atomic::Ordering::SeqCst); async { Ok(()) } },
//!     move || { r.store(false, std::sync::atomic::Ordering::SeqCst); async { Ok(()) } },
//! );
//! let spec = HypothesisSpec::new("bigger-batches", "latency_ms", Goal::Decrease, 0.2)
//!     .samples(10, 10)
//!     .interval(Duration::from_millis(100));
//! let engine = HypothesisEngine::new();
//! let verdict = engine.run(&spec, &mut probe, &mut change).await.unwrap();
//! assert_eq!(verdict.decision, Decision::Commit);
//! assert!(applied.load(std::sync::atomic::Ordering::SeqCst));
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foundation_distributed::core::events::{Event, Events};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::stats::{self, TwoSample};

/// Which direction of the metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Higher is better (throughput, hit rate).
    Increase,
    /// Lower is better (latency, error rate, memory).
    Decrease,
}

impl Goal {
    fn sign(self) -> f64 {
        match self {
            Goal::Increase => 1.0,
            Goal::Decrease => -1.0,
        }
    }
}

/// The statistical test that decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Welch's unequal-variance t-test on the two means.
    Welch,
    /// A percentile bootstrap of the difference in means, `resamples` resamples from a
    /// generator seeded with `seed` (reproducible).
    Bootstrap {
        /// Resamples. 2000 is plenty for p-values around 0.01–0.05.
        resamples: u32,
        /// Seed of the resampling generator.
        seed: u64,
    },
}

/// What to test. Build with [`HypothesisSpec::new`] and the setters; every field has a
/// default that suits a metric read once per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HypothesisSpec {
    /// Name (the `hypothesis` label of its metrics).
    pub name: String,
    /// The metric's name (for the record; the [`Probe`] reads it).
    pub metric: String,
    /// Which direction is better.
    pub goal: Goal,
    /// The relative improvement expected (0.2 = 20 %); recorded beside the observed one.
    pub expected_improvement: f64,
    /// Readings in the baseline window. Default 30, at least 3.
    pub baseline_samples: usize,
    /// Readings in the treatment window. Default 30, at least 3.
    pub treatment_samples: usize,
    /// Time between readings. Default 1 s.
    #[serde(with = "millis")]
    pub sample_interval: Duration,
    /// One-sided significance level of the commit decision: the largest chance accepted
    /// of committing a change that does nothing. Default 0.025.
    pub significance: f64,
    /// One-sided significance of the early degradation check, applied after every
    /// treatment reading (many looks, so it is much stricter). Default 0.001.
    pub degradation_significance: f64,
    /// Treatment readings before the early degradation check starts. Default 5.
    pub min_degradation_samples: usize,
    /// The test. Default [`Test::Welch`].
    pub test: Test,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Default for HypothesisSpec {
    fn default() -> Self {
        HypothesisSpec {
            name: "hypothesis".into(),
            metric: String::new(),
            goal: Goal::Decrease,
            expected_improvement: 0.1,
            baseline_samples: 30,
            treatment_samples: 30,
            sample_interval: Duration::from_secs(1),
            significance: 0.025,
            degradation_significance: 0.001,
            min_degradation_samples: 5,
            test: Test::Welch,
        }
    }
}

impl HypothesisSpec {
    /// A hypothesis that changing something moves `metric` in the `goal` direction by
    /// `expected_improvement` (relative), with the default windows and test.
    pub fn new(
        name: impl Into<String>,
        metric: impl Into<String>,
        goal: Goal,
        expected_improvement: f64,
    ) -> Self {
        HypothesisSpec {
            name: name.into(),
            metric: metric.into(),
            goal,
            expected_improvement,
            ..Self::default()
        }
    }

    /// Sets the readings per window.
    pub fn samples(mut self, baseline: usize, treatment: usize) -> Self {
        self.baseline_samples = baseline;
        self.treatment_samples = treatment;
        self
    }

    /// Sets the time between readings.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self
    }

    /// Sets the test.
    pub fn test(mut self, test: Test) -> Self {
        self.test = test;
        self
    }

    /// Sets the commit significance level.
    pub fn significance(mut self, alpha: f64) -> Self {
        self.significance = alpha;
        self
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), HypothesisError> {
        let bad = |reason: String| {
            Err(HypothesisError::InvalidSpec {
                hypothesis: self.name.clone(),
                reason,
            })
        };
        if self.name.is_empty() {
            return bad("the name is empty".into());
        }
        if self.baseline_samples < 3 || self.treatment_samples < 3 {
            return bad(format!(
                "windows need at least 3 readings each (baseline {}, treatment {})",
                self.baseline_samples, self.treatment_samples
            ));
        }
        for (what, a) in [
            ("significance", self.significance),
            ("degradation_significance", self.degradation_significance),
        ] {
            if !(a > 0.0 && a < 0.5) {
                return bad(format!("{what} {a} is outside (0, 0.5)"));
            }
        }
        if self.sample_interval.is_zero() {
            return bad("sample_interval is zero".into());
        }
        if !self.expected_improvement.is_finite() {
            return bad("expected_improvement is not finite".into());
        }
        if let Test::Bootstrap { resamples, .. } = self.test {
            if resamples < 100 {
                return bad(format!(
                    "bootstrap needs at least 100 resamples, got {resamples}"
                ));
            }
        }
        Ok(())
    }
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Significantly better: the change stays.
    Commit,
    /// Not significantly better: the change was reverted.
    RevertNoImprovement,
    /// Significantly worse: the change was reverted (at once, if seen during treatment).
    RevertDegraded,
}

impl Decision {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::RevertNoImprovement => "revert_no_improvement",
            Decision::RevertDegraded => "revert_degraded",
        }
    }
}

/// A decision with the evidence behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// Mean of the baseline window.
    pub baseline_mean: f64,
    /// Mean of the treatment readings taken.
    pub treatment_mean: f64,
    /// Observed relative improvement in the goal's direction (0.2 = 20 % better,
    /// negative = worse).
    pub improvement: f64,
    /// One-sided p-value of "the treatment is better".
    pub p_better: f64,
    /// One-sided p-value of "the treatment is worse".
    pub p_worse: f64,
    /// Baseline readings.
    pub baseline_n: usize,
    /// Treatment readings (fewer than the window when reverted early).
    pub treatment_n: usize,
    /// Whether it was decided before the treatment window was complete.
    pub early: bool,
}

/// What the [`Experiment`] wants next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Keep sampling.
    Continue,
    /// The baseline is complete: apply the change now, then keep sampling.
    Apply,
    /// Decided (revert now unless it is [`Decision::Commit`]).
    Decided(Verdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Baseline,
    Treatment,
    Done,
}

/// The decision logic of one hypothesis, without clock or I/O: feed it one reading per
/// interval with [`observe`](Self::observe).
#[derive(Debug, Clone)]
pub struct Experiment {
    spec: HypothesisSpec,
    phase: Phase,
    baseline: Vec<f64>,
    treatment: Vec<f64>,
}

impl Experiment {
    /// A new experiment; fails if the spec is invalid.
    pub fn new(spec: HypothesisSpec) -> Result<Self, HypothesisError> {
        spec.validate()?;
        Ok(Experiment {
            baseline: Vec::with_capacity(spec.baseline_samples),
            treatment: Vec::with_capacity(spec.treatment_samples),
            spec,
            phase: Phase::Baseline,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &HypothesisSpec {
        &self.spec
    }

    /// Whether the change should be in place now (after [`Step::Apply`], before a
    /// decision).
    pub fn in_treatment(&self) -> bool {
        self.phase == Phase::Treatment
    }

    /// Takes one reading. Non-finite readings are ignored (the engine counts them).
    pub fn observe(&mut self, value: f64) -> Step {
        if !value.is_finite() {
            return Step::Continue;
        }
        match self.phase {
            Phase::Baseline => {
                self.baseline.push(value);
                if self.baseline.len() >= self.spec.baseline_samples {
                    self.phase = Phase::Treatment;
                    Step::Apply
                } else {
                    Step::Continue
                }
            }
            Phase::Treatment => {
                self.treatment.push(value);
                let n = self.treatment.len();
                if n >= self.spec.treatment_samples {
                    self.phase = Phase::Done;
                    return Step::Decided(self.verdict(false));
                }
                if n >= self.spec.min_degradation_samples.max(2) {
                    // The early look always uses Welch's test: it runs after every
                    // reading, and a bootstrap per reading would cost far more.
                    let v = self.verdict_with(true, stats::welch(&self.baseline, &self.treatment));
                    if v.p_worse < self.spec.degradation_significance {
                        self.phase = Phase::Done;
                        return Step::Decided(Verdict {
                            decision: Decision::RevertDegraded,
                            ..v
                        });
                    }
                }
                Step::Continue
            }
            Phase::Done => Step::Continue,
        }
    }

    fn test(&self) -> TwoSample {
        match self.spec.test {
            Test::Welch => stats::welch(&self.baseline, &self.treatment),
            Test::Bootstrap { resamples, seed } => {
                stats::bootstrap(&self.baseline, &self.treatment, resamples, seed)
            }
        }
    }

    /// The verdict on the readings so far (`early`: the window is not complete).
    fn verdict(&self, early: bool) -> Verdict {
        self.verdict_with(early, self.test())
    }

    fn verdict_with(&self, early: bool, r: TwoSample) -> Verdict {
        let (p_better, p_worse) = match self.spec.goal {
            Goal::Increase => (r.p_greater, r.p_less),
            Goal::Decrease => (r.p_less, r.p_greater),
        };
        let b = stats::Summary::of(&self.baseline).mean;
        let t = stats::Summary::of(&self.treatment).mean;
        let improvement = if b != 0.0 {
            self.spec.goal.sign() * (t - b) / b.abs()
        } else {
            self.spec.goal.sign() * (t - b)
        };
        let decision = if p_better < self.spec.significance {
            Decision::Commit
        } else if p_worse < self.spec.significance {
            Decision::RevertDegraded
        } else {
            Decision::RevertNoImprovement
        };
        Verdict {
            decision,
            baseline_mean: b,
            treatment_mean: t,
            improvement,
            p_better,
            p_worse,
            baseline_n: self.baseline.len(),
            treatment_n: self.treatment.len(),
            early,
        }
    }
}

/// Reads the metric a hypothesis is about, once per interval. `None` means no reading
/// this time (the interval is skipped).
pub trait Probe: Send {
    /// One reading.
    fn sample(&mut self) -> Option<f64>;
}

impl<F: FnMut() -> Option<f64> + Send> Probe for F {
    fn sample(&mut self) -> Option<f64> {
        self()
    }
}

/// How to apply and revert the change a hypothesis is about.
pub trait Intervention: Send {
    /// Applies the change.
    fn apply(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Reverts it.
    fn revert(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// An [`Intervention`] from two closures returning futures.
pub struct FnIntervention<A, R> {
    apply: A,
    revert: R,
}

impl<A, R> std::fmt::Debug for FnIntervention<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnIntervention").finish_non_exhaustive()
    }
}

impl<A, R, FA, FR> FnIntervention<A, R>
where
    A: FnMut() -> FA + Send,
    R: FnMut() -> FR + Send,
    FA: Future<Output = Result<(), String>> + Send,
    FR: Future<Output = Result<(), String>> + Send,
{
    /// `apply` applies the change, `revert` reverts it.
    pub fn new(apply: A, revert: R) -> Self {
        FnIntervention { apply, revert }
    }
}

impl<A, R, FA, FR> Intervention for FnIntervention<A, R>
where
    A: FnMut() -> FA + Send,
    R: FnMut() -> FR + Send,
    FA: Future<Output = Result<(), String>> + Send,
    FR: Future<Output = Result<(), String>> + Send,
{
    fn apply(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        (self.apply)()
    }

    fn revert(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        (self.revert)()
    }
}

/// Errors of the hypothesis engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HypothesisError {
    /// The spec is invalid; nothing was applied.
    #[error("hypothesis `{hypothesis}`: invalid spec: {reason}")]
    InvalidSpec {
        /// The hypothesis.
        hypothesis: String,
        /// What is wrong.
        reason: String,
    },
    /// Applying the change failed; nothing needs reverting (the intervention's own
    /// failure semantics apply).
    #[error("hypothesis `{hypothesis}`: applying the change failed: {reason}")]
    ApplyFailed {
        /// The hypothesis.
        hypothesis: String,
        /// The intervention's error.
        reason: String,
    },
    /// The verdict was to revert but reverting failed: **the change may still be in
    /// place**.
    #[error("hypothesis `{hypothesis}`: decided {decision:?} but reverting failed: {reason}")]
    RevertFailed {
        /// The hypothesis.
        hypothesis: String,
        /// What was decided.
        decision: Decision,
        /// The intervention's error.
        reason: String,
    },
    /// Cancelled; a change that had been applied was reverted (`reverted`) or the
    /// revert failed (`reverted == false`, see the log).
    #[error("hypothesis `{hypothesis}` cancelled (change applied and reverted: {reverted})")]
    Cancelled {
        /// The hypothesis.
        hypothesis: String,
        /// Whether an applied change was reverted successfully (true also when nothing
        /// had been applied).
        reverted: bool,
    },
}

/// One finished hypothesis, as kept in the engine's history and emitted as an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The hypothesis name.
    pub name: String,
    /// The metric.
    pub metric: String,
    /// The improvement expected.
    pub expected_improvement: f64,
    /// `commit`, `revert_no_improvement`, `revert_degraded`, `apply_failed`,
    /// `revert_failed` or `cancelled`.
    pub outcome: String,
    /// The verdict, when one was reached.
    pub verdict: Option<Verdict>,
    /// Wall-clock end time, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

/// Runs hypotheses and keeps their history (the last 256). Cheap to share by reference;
/// runs may proceed concurrently (each on its own task or future).
#[derive(Debug)]
pub struct HypothesisEngine {
    history: Mutex<VecDeque<Record>>,
    events: Option<Events>,
}

impl Default for HypothesisEngine {
    fn default() -> Self {
        Self::new()
    }
}

const HISTORY: usize = 256;

/// Describes the hypothesis metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "foundation_hypothesis_outcomes_total",
        "Finished hypotheses by outcome (commit, revert_no_improvement, revert_degraded, apply_failed, revert_failed, cancelled)."
    );
    describe_gauge!(
        "foundation_hypothesis_phase",
        "Phase of a hypothesis: 0 idle, 1 baseline, 2 treatment."
    );
    describe_gauge!(
        "foundation_hypothesis_improvement_ratio",
        "Observed relative improvement at the last decision (negative: worse)."
    );
    describe_gauge!(
        "foundation_hypothesis_p_value",
        "One-sided p-value of 'the treatment is better' at the last decision."
    );
    describe_counter!(
        "foundation_hypothesis_revert_failures_total",
        "Reverts that failed (the change may still be in place)."
    );
    describe_counter!(
        "foundation_hypothesis_samples_rejected_total",
        "Non-finite metric readings skipped."
    );
    describe_counter!(
        "foundation_hypothesis_events_dropped_total",
        "Hypothesis history events not emitted because the event lane was full."
    );
}

impl HypothesisEngine {
    /// An engine with an empty history.
    pub fn new() -> Self {
        HypothesisEngine {
            history: Mutex::new(VecDeque::new()),
            events: None,
        }
    }

    /// Also emits every finished hypothesis as an event of type `hypothesis` (payload:
    /// [`Record`]). Emission never waits: if the lane is full the event is dropped and
    /// counted in `foundation_hypothesis_events_dropped_total`.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    /// The finished hypotheses, oldest first (at most 256).
    pub fn history(&self) -> Vec<Record> {
        self.history.lock().iter().cloned().collect()
    }

    /// Runs `spec` to a decision; see the [module docs](self). Dropping the returned
    /// future while the change is applied leaves it applied — use
    /// [`run_cancellable`](Self::run_cancellable) to stop a run and revert.
    pub async fn run<P: Probe, I: Intervention>(
        &self,
        spec: &HypothesisSpec,
        probe: &mut P,
        intervention: &mut I,
    ) -> Result<Verdict, HypothesisError> {
        self.run_cancellable(spec, probe, intervention, &CancellationToken::new())
            .await
    }

    /// Like [`run`](Self::run); when `cancel` fires, an applied change is reverted and
    /// [`HypothesisError::Cancelled`] returned.
    pub async fn run_cancellable<P: Probe, I: Intervention>(
        &self,
        spec: &HypothesisSpec,
        probe: &mut P,
        intervention: &mut I,
        cancel: &CancellationToken,
    ) -> Result<Verdict, HypothesisError> {
        let mut exp = Experiment::new(spec.clone())?;
        let name = spec.name.clone();
        let phase = metrics::gauge!("foundation_hypothesis_phase", "hypothesis" => name.clone());
        let rejected = metrics::counter!("foundation_hypothesis_samples_rejected_total", "hypothesis" => name.clone());
        phase.set(1.0);
        tracing::info!(hypothesis = %name, metric = %spec.metric, expected = spec.expected_improvement, "hypothesis: sampling baseline");
        let mut tick = tokio::time::interval(spec.sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; readings start one interval in
        let verdict = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let mut reverted = true;
                    if exp.in_treatment() {
                        if let Err(e) = intervention.revert().await {
                            reverted = false;
                            metrics::counter!("foundation_hypothesis_revert_failures_total", "hypothesis" => name.clone()).increment(1);
                            tracing::error!(hypothesis = %name, error = %e, "hypothesis: revert after cancel failed");
                        }
                    }
                    phase.set(0.0);
                    self.finish(spec, "cancelled", None);
                    return Err(HypothesisError::Cancelled { hypothesis: name, reverted });
                }
                _ = tick.tick() => {}
            }
            let Some(value) = probe.sample() else {
                continue;
            };
            if !value.is_finite() {
                rejected.increment(1);
                continue;
            }
            match exp.observe(value) {
                Step::Continue => {}
                Step::Apply => {
                    if let Err(reason) = intervention.apply().await {
                        phase.set(0.0);
                        tracing::warn!(hypothesis = %name, error = %reason, "hypothesis: apply failed");
                        self.finish(spec, "apply_failed", None);
                        return Err(HypothesisError::ApplyFailed {
                            hypothesis: name,
                            reason,
                        });
                    }
                    phase.set(2.0);
                    tracing::info!(hypothesis = %name, "hypothesis: applied, sampling treatment");
                }
                Step::Decided(v) => break v,
            }
        };
        phase.set(0.0);
        metrics::gauge!("foundation_hypothesis_improvement_ratio", "hypothesis" => name.clone())
            .set(verdict.improvement);
        metrics::gauge!("foundation_hypothesis_p_value", "hypothesis" => name.clone())
            .set(verdict.p_better);
        if verdict.decision != Decision::Commit {
            if let Err(reason) = intervention.revert().await {
                metrics::counter!("foundation_hypothesis_revert_failures_total", "hypothesis" => name.clone()).increment(1);
                tracing::error!(hypothesis = %name, error = %reason, decision = ?verdict.decision, "hypothesis: revert failed");
                self.finish(spec, "revert_failed", Some(verdict));
                return Err(HypothesisError::RevertFailed {
                    hypothesis: name,
                    decision: verdict.decision,
                    reason,
                });
            }
        }
        match verdict.decision {
            Decision::Commit => {
                tracing::info!(hypothesis = %name, improvement = verdict.improvement, p = verdict.p_better, "hypothesis: committed")
            }
            Decision::RevertNoImprovement => {
                tracing::warn!(hypothesis = %name, improvement = verdict.improvement, p = verdict.p_better, "hypothesis: no significant improvement, reverted")
            }
            Decision::RevertDegraded => {
                tracing::error!(hypothesis = %name, improvement = verdict.improvement, p_worse = verdict.p_worse, early = verdict.early, "hypothesis: degradation, reverted")
            }
        }
        self.finish(spec, verdict.decision.label(), Some(verdict));
        Ok(verdict)
    }

    fn finish(&self, spec: &HypothesisSpec, outcome: &'static str, verdict: Option<Verdict>) {
        metrics::counter!("foundation_hypothesis_outcomes_total", "hypothesis" => spec.name.clone(), "outcome" => outcome).increment(1);
        let record = Record {
            name: spec.name.clone(),
            metric: spec.metric.clone(),
            expected_improvement: spec.expected_improvement,
            outcome: outcome.to_string(),
            verdict,
            finished_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        if let Some(events) = &self.events {
            let emitted = Event::new("hypothesis", &record)
                .ok()
                .map(|e| events.try_emit(e).is_ok());
            if emitted != Some(true) {
                metrics::counter!("foundation_hypothesis_events_dropped_total").increment(1);
            }
        }
        let mut h = self.history.lock();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(record);
    }
}
