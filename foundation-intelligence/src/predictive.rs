//! Predictive scaling: forecast a load metric, act only on confident forecasts.
//!
//! [`Holt`] is Holt's linear-trend exponential smoothing with prediction intervals (the
//! variance of the h-step forecast of the equivalent ETS(A,A,N) model, from the mean
//! squared one-step error). A [`Planner`] turns a forecast into a decision for something
//! [`Scalable`] — an [`Ecosystem`] resizes its workers:
//!
//! * each unit handles `capacity_per_unit` of load at `target_utilization`;
//! * **scale up** when the forecast `horizon` readings ahead exceeds the current capacity
//!   with probability ≥ `confidence` (default 0.85), to the smallest unit count that holds
//!   the forecast's `confidence` quantile;
//! * **scale down** when the forecast stays below the capacity of one unit fewer with
//!   probability ≥ `confidence`, to the smallest count that still holds that quantile;
//! * otherwise **hold**; nothing happens during `cooldown` after an action (no scale-down
//!   during the longer `scale_down_cooldown`), or before `min_history` readings.
//!
//! Time is passed in (`now`): the planner has no clock. [`PredictiveScaler`] applies the
//! decisions to its target and logs every one with its confidence (`tracing`: actions at
//! info, holds at debug) and in metrics:
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_predictive_decisions_total{scaler,action}` | counter: `scale_up`, `scale_down`, `hold`, `cooldown`, `warmup`, `failed` |
//! | `foundation_predictive_forecast{scaler}` | gauge: forecast load at the horizon |
//! | `foundation_predictive_confidence{scaler}` | gauge: the larger of the up / down confidences |
//! | `foundation_predictive_units{scaler}` | gauge: units after the decision |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::beam::ecosystem::Ecosystem;
use crate::beam::Process;
use crate::stats::{normal_cdf, normal_quantile};

/// Smoothing parameters of [`Holt`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HoltSettings {
    /// Level smoothing, in (0, 1]. Default 0.5.
    pub alpha: f64,
    /// Trend smoothing, in [0, 1]. Default 0.2.
    pub beta: f64,
}

impl Default for HoltSettings {
    fn default() -> Self {
        HoltSettings {
            alpha: 0.5,
            beta: 0.2,
        }
    }
}

/// A forecast: mean and standard deviation of the predicted value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Predicted value.
    pub mean: f64,
    /// Standard deviation of the prediction error.
    pub std_dev: f64,
}

impl Forecast {
    /// P(value > x).
    pub fn prob_above(&self, x: f64) -> f64 {
        if self.std_dev <= 0.0 {
            return if self.mean > x { 1.0 } else { 0.0 };
        }
        1.0 - normal_cdf((x - self.mean) / self.std_dev)
    }

    /// The `p` quantile of the predicted value.
    pub fn quantile(&self, p: f64) -> f64 {
        self.mean + self.std_dev * normal_quantile(p)
    }

    /// The central prediction interval at `level` (0.85 → the 7.5 % and 92.5 % quantiles).
    pub fn interval(&self, level: f64) -> (f64, f64) {
        let tail = (1.0 - level) / 2.0;
        (self.quantile(tail), self.quantile(1.0 - tail))
    }
}

/// One-step errors left out of the error variance while the model settles.
const WARMUP_ERRORS_SKIPPED: usize = 2;

/// Holt's linear-trend exponential smoothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Holt {
    settings: HoltSettings,
    level: f64,
    trend: f64,
    n: usize,
    sse: f64,
    errors: usize,
}

impl Holt {
    /// An empty model.
    pub fn new(settings: HoltSettings) -> Self {
        Holt {
            settings,
            level: 0.0,
            trend: 0.0,
            n: 0,
            sse: 0.0,
            errors: 0,
        }
    }

    /// Readings taken.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether no reading has been taken.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Takes one reading (non-finite readings are ignored).
    pub fn observe(&mut self, y: f64) {
        if !y.is_finite() {
            return;
        }
        let HoltSettings { alpha, beta } = self.settings;
        match self.n {
            0 => self.level = y,
            1 => {
                self.trend = y - self.level;
                self.level = y;
            }
            _ => {
                let predicted = self.level + self.trend;
                let err = y - predicted;
                // The first errors reflect the crude initial trend (one difference), not
                // the model: they would inflate the error variance for a long time.
                if self.n >= WARMUP_ERRORS_SKIPPED + 2 {
                    self.sse += err * err;
                    self.errors += 1;
                }
                let level = alpha * y + (1.0 - alpha) * predicted;
                self.trend = beta * (level - self.level) + (1.0 - beta) * self.trend;
                self.level = level;
            }
        }
        self.n += 1;
    }

    /// The forecast `h` readings ahead (h ≥ 1); `None` before five readings (no error
    /// estimate yet: the first two one-step errors, which mostly measure the crude
    /// initial trend, are left out of the error variance).
    pub fn forecast(&self, h: u32) -> Option<Forecast> {
        if self.errors == 0 {
            return None;
        }
        let h = h.max(1);
        let sigma2 = self.sse / self.errors as f64;
        let HoltSettings { alpha, beta } = self.settings;
        // ETS(A,A,N): Var(e_h) = σ² (1 + Σ_{j=1}^{h-1} (α (1 + j β))²).
        let mut factor = 1.0;
        for j in 1..h {
            let c = alpha * (1.0 + f64::from(j) * beta);
            factor += c * c;
        }
        Some(Forecast {
            mean: self.level + f64::from(h) * self.trend,
            std_dev: (sigma2 * factor).sqrt(),
        })
    }
}

/// Settings of a [`Planner`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScalingPolicy {
    /// Load one unit handles at full utilisation (same unit as the metric). Required > 0.
    pub capacity_per_unit: f64,
    /// Share of a unit's capacity to plan for. Default 0.75.
    pub target_utilization: f64,
    /// Fewest units. Default 1.
    pub min_units: usize,
    /// Most units. Default 64.
    pub max_units: usize,
    /// How many readings ahead to forecast. Default 5.
    pub horizon: u32,
    /// Probability a forecast must reach before acting. Default 0.85.
    pub confidence: f64,
    /// No action within this time of the last one. Default 30 s.
    #[serde(with = "secs_f64")]
    pub cooldown: Duration,
    /// No scale-down within this time of the last action (of either kind): shrinking is
    /// cheap to postpone and flapping is expensive. Default 120 s.
    #[serde(with = "secs_f64")]
    pub scale_down_cooldown: Duration,
    /// Readings before the first action. Default 8.
    pub min_history: usize,
    /// The forecaster's smoothing.
    pub holt: HoltSettings,
}

mod secs_f64 {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            capacity_per_unit: 1.0,
            target_utilization: 0.75,
            min_units: 1,
            max_units: 64,
            horizon: 5,
            confidence: 0.85,
            cooldown: Duration::from_secs(30),
            scale_down_cooldown: Duration::from_secs(120),
            min_history: 8,
            holt: HoltSettings::default(),
        }
    }
}

impl ScalingPolicy {
    /// Checks the policy.
    pub fn validate(&self) -> Result<(), ScaleError> {
        let bad = |reason: String| Err(ScaleError::InvalidPolicy { reason });
        if !(self.capacity_per_unit > 0.0 && self.capacity_per_unit.is_finite()) {
            return bad(format!(
                "capacity_per_unit {} must be a positive number",
                self.capacity_per_unit
            ));
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return bad(format!(
                "target_utilization {} is outside (0, 1]",
                self.target_utilization
            ));
        }
        if self.min_units == 0 || self.min_units > self.max_units {
            return bad(format!(
                "need 1 <= min_units ({}) <= max_units ({})",
                self.min_units, self.max_units
            ));
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            return bad(format!(
                "confidence {} is outside (0.5, 1)",
                self.confidence
            ));
        }
        let HoltSettings { alpha, beta } = self.holt;
        if !(alpha > 0.0 && alpha <= 1.0 && (0.0..=1.0).contains(&beta)) {
            return bad(format!(
                "holt smoothing alpha {alpha} / beta {beta} outside (0, 1] / [0, 1]"
            ));
        }
        Ok(())
    }

    fn unit_load(&self) -> f64 {
        self.capacity_per_unit * self.target_utilization
    }
}

/// What a decision does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Grow from `from` to `to` units.
    ScaleUp {
        /// Units before.
        from: usize,
        /// Units after.
        to: usize,
    },
    /// Shrink from `from` to `to` units.
    ScaleDown {
        /// Units before.
        from: usize,
        /// Units after.
        to: usize,
    },
    /// Neither direction reached the confidence threshold.
    Hold,
    /// Within the cooldown of the last action.
    Cooldown,
    /// Not enough readings yet.
    Warmup,
}

impl Action {
    /// The `action` label value.
    pub fn label(&self) -> &'static str {
        match self {
            Action::ScaleUp { .. } => "scale_up",
            Action::ScaleDown { .. } => "scale_down",
            Action::Hold => "hold",
            Action::Cooldown => "cooldown",
            Action::Warmup => "warmup",
        }
    }
}

/// One decision and the forecast behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalingDecision {
    /// The reading just taken.
    pub observed: f64,
    /// The forecast at the horizon, once there is one.
    pub forecast: Option<Forecast>,
    /// P(load at the horizon > current capacity).
    pub confidence_up: f64,
    /// P(load at the horizon < capacity of one unit fewer).
    pub confidence_down: f64,
    /// Units when deciding.
    pub units: usize,
    /// The decision.
    pub action: Action,
}

/// The decision logic: a [`Holt`] forecaster and a [`ScalingPolicy`], no clock, no I/O.
#[derive(Debug, Clone)]
pub struct Planner {
    policy: ScalingPolicy,
    holt: Holt,
    last_action: Option<Instant>,
}

impl Planner {
    /// A planner; fails if the policy is invalid.
    pub fn new(policy: ScalingPolicy) -> Result<Self, ScaleError> {
        policy.validate()?;
        Ok(Planner {
            holt: Holt::new(policy.holt),
            policy,
            last_action: None,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &ScalingPolicy {
        &self.policy
    }

    /// Units needed to hold `load`.
    fn units_for(&self, load: f64) -> usize {
        let n = (load.max(0.0) / self.policy.unit_load()).ceil() as usize;
        n.clamp(self.policy.min_units, self.policy.max_units)
    }

    /// Takes a reading at `now` with `units` currently running and decides. An action
    /// starts the cooldown; call [`abort_action`](Self::abort_action) if carrying it out
    /// failed.
    pub fn observe(&mut self, value: f64, units: usize, now: Instant) -> ScalingDecision {
        self.holt.observe(value);
        let p = &self.policy;
        let forecast = self.holt.forecast(p.horizon);
        let mut d = ScalingDecision {
            observed: value,
            forecast,
            confidence_up: 0.0,
            confidence_down: 0.0,
            units,
            action: Action::Warmup,
        };
        let Some(f) = forecast else {
            return d;
        };
        d.confidence_up = f.prob_above(units as f64 * p.unit_load());
        d.confidence_down = if units > 1 {
            1.0 - f.prob_above((units - 1) as f64 * p.unit_load())
        } else {
            0.0
        };
        if self.holt.len() < p.min_history {
            return d;
        }
        if let Some(last) = self.last_action {
            if now.saturating_duration_since(last) < p.cooldown {
                d.action = Action::Cooldown;
                return d;
            }
        }
        let needed = self.units_for(f.quantile(p.confidence));
        let down_allowed = self
            .last_action
            .is_none_or(|last| now.saturating_duration_since(last) >= p.scale_down_cooldown);
        d.action = if d.confidence_up >= p.confidence && units < p.max_units {
            Action::ScaleUp {
                from: units,
                to: needed.max(units + 1).min(p.max_units),
            }
        } else if d.confidence_down >= p.confidence
            && units > p.min_units
            && needed < units
            && down_allowed
        {
            Action::ScaleDown {
                from: units,
                to: needed,
            }
        } else {
            Action::Hold
        };
        if matches!(d.action, Action::ScaleUp { .. } | Action::ScaleDown { .. }) {
            self.last_action = Some(now);
        }
        d
    }

    /// Forgets the last action's cooldown (its execution failed).
    pub fn abort_action(&mut self) {
        self.last_action = None;
    }
}

/// Something whose capacity is a number of units.
pub trait Scalable: Send + Sync {
    /// Units now.
    fn units(&self) -> usize;
    /// Changes to `n` units.
    fn scale_to(&self, n: usize) -> impl Future<Output = Result<(), String>> + Send;
}

impl<P: Process> Scalable for Ecosystem<P> {
    fn units(&self) -> usize {
        self.info().workers
    }

    async fn scale_to(&self, n: usize) -> Result<(), String> {
        self.resize(n).await.map_err(|e| e.to_string())
    }
}

impl<T: Scalable> Scalable for Arc<T> {
    fn units(&self) -> usize {
        (**self).units()
    }

    fn scale_to(&self, n: usize) -> impl Future<Output = Result<(), String>> + Send {
        (**self).scale_to(n)
    }
}

/// Errors of predictive scaling.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// The policy is invalid.
    #[error("invalid scaling policy: {reason}")]
    InvalidPolicy {
        /// What is wrong.
        reason: String,
    },
    /// The target refused to scale; its unit count is unchanged as far as it reports.
    #[error("scaler `{scaler}`: scaling {from} -> {to} failed: {reason}")]
    ScaleFailed {
        /// The scaler.
        scaler: String,
        /// Units before.
        from: usize,
        /// Units asked for.
        to: usize,
        /// The target's error.
        reason: String,
    },
}

/// Describes the predictive-scaling metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "foundation_predictive_decisions_total",
        "Predictive scaling decisions by action (scale_up, scale_down, hold, cooldown, warmup, failed)."
    );
    describe_gauge!(
        "foundation_predictive_forecast",
        "Forecast load at the planning horizon."
    );
    describe_gauge!(
        "foundation_predictive_confidence",
        "Confidence of the last decision (the larger of the up and down probabilities)."
    );
    describe_gauge!(
        "foundation_predictive_units",
        "Units of the scaled target after the last decision."
    );
}

/// A [`Planner`] applied to a [`Scalable`] target.
#[derive(Debug)]
pub struct PredictiveScaler<S> {
    name: String,
    planner: Planner,
    target: S,
}

impl<S: Scalable> PredictiveScaler<S> {
    /// A scaler named `name` (the `scaler` label) for `target`.
    pub fn new(
        name: impl Into<String>,
        target: S,
        policy: ScalingPolicy,
    ) -> Result<Self, ScaleError> {
        Ok(PredictiveScaler {
            name: name.into(),
            planner: Planner::new(policy)?,
            target,
        })
    }

    /// The target.
    pub fn target(&self) -> &S {
        &self.target
    }

    /// Takes a reading at `now`, decides, carries out a scaling action and logs the
    /// decision with its confidence.
    pub async fn observe(
        &mut self,
        value: f64,
        now: Instant,
    ) -> Result<ScalingDecision, ScaleError> {
        let units = self.target.units();
        let d = self.planner.observe(value, units, now);
        let scaler = self.name.clone();
        if let Some(f) = d.forecast {
            metrics::gauge!("foundation_predictive_forecast", "scaler" => scaler.clone())
                .set(f.mean);
        }
        let confidence = d.confidence_up.max(d.confidence_down);
        metrics::gauge!("foundation_predictive_confidence", "scaler" => scaler.clone())
            .set(confidence);
        let (from, to) = match d.action {
            Action::ScaleUp { from, to } | Action::ScaleDown { from, to } => (from, to),
            _ => {
                tracing::debug!(scaler = %scaler, action = d.action.label(), observed = d.observed, forecast = ?d.forecast.map(|f| f.mean), confidence_up = d.confidence_up, confidence_down = d.confidence_down, units, "predictive scaling: no action");
                metrics::counter!("foundation_predictive_decisions_total", "scaler" => scaler.clone(), "action" => d.action.label()).increment(1);
                metrics::gauge!("foundation_predictive_units", "scaler" => scaler)
                    .set(units as f64);
                return Ok(d);
            }
        };
        if let Err(reason) = self.target.scale_to(to).await {
            self.planner.abort_action();
            metrics::counter!("foundation_predictive_decisions_total", "scaler" => scaler.clone(), "action" => "failed").increment(1);
            tracing::warn!(scaler = %scaler, from, to, error = %reason, "predictive scaling: scaling failed");
            return Err(ScaleError::ScaleFailed {
                scaler,
                from,
                to,
                reason,
            });
        }
        tracing::info!(scaler = %scaler, action = d.action.label(), from, to, observed = d.observed, forecast = ?d.forecast.map(|f| f.mean), confidence, "predictive scaling: high-confidence action");
        metrics::counter!("foundation_predictive_decisions_total", "scaler" => scaler.clone(), "action" => d.action.label()).increment(1);
        metrics::gauge!("foundation_predictive_units", "scaler" => scaler).set(to as f64);
        Ok(d)
    }
}
