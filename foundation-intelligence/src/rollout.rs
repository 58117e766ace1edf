//! Percentage rollouts: a feature enabled for a stable share of keys, widened while it
//! is healthy and rolled back when it hurts.
//!
//! [`Rollout::is_enabled`] puts each key in one of 10,000 buckets by a **stable** hash
//! (64-bit FNV-1a of the rollout name and the key bytes — the same on every node, build
//! and platform) and enables the feature for buckets below the current percentage, so a
//! key keeps its assignment while the percentage grows.
//!
//! Callers report each operation with [`Rollout::record`] (treated or not, latency, ok or
//! failed). Every `check_interval`, [`Rollout::check`] compares the treated keys with the
//! control keys over that window:
//!
//! * **roll back** (percentage 0) when the treated median latency is more than
//!   `max_latency_degradation` (default 10 %) above the control median, or the treated error rate is
//!   more than `max_error_rate_increase` (default 0.05 = 5 percentage points) above the
//!   control error rate;
//!   (judged once each group has `max(5, min_samples / 5)` operations);
//! * otherwise, with at least `min_samples` operations in each group, **double** the
//!   percentage (capped at 100 %, which completes the rollout);
//! * with fewer samples, wait (the window keeps accumulating).
//!
//! The error-rate limit is absolute (percentage points): a relative limit on small error
//! rates would react to noise (see D183).
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_rollout_percent{rollout}` | gauge |
//! | `foundation_rollout_operations_total{rollout,group,result}` | counter: group `treated`/`control`, result `ok`/`error` |
//! | `foundation_rollout_transitions_total{rollout,to}` | counter: `widened`, `complete`, `rolled_back` |

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Buckets keys are hashed into: percentages have a resolution of 0.01.
pub const BUCKETS: u32 = 10_000;

/// Settings of a [`Rollout`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutSettings {
    /// Starting percentage, in (0, 100]. Default 10.
    pub initial_percent: f64,
    /// Time between checks of the monitor. Default 60 s.
    #[serde(with = "millis")]
    pub check_interval: Duration,
    /// Largest accepted relative increase of the treated median latency over the control
    /// median. Default 0.10.
    pub max_latency_degradation: f64,
    /// Largest accepted increase of the treated error rate over control, in absolute
    /// terms (0.05 = 5 percentage points). Default 0.05.
    pub max_error_rate_increase: f64,
    /// Operations needed in each group before a window can widen the rollout. Default 50.
    pub min_samples: u64,
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

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            initial_percent: 10.0,
            check_interval: Duration::from_secs(60),
            max_latency_degradation: 0.10,
            max_error_rate_increase: 0.05,
            min_samples: 50,
        }
    }
}

impl RolloutSettings {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let bad = |reason: String| Err(RolloutError::InvalidSettings { reason });
        if !(self.initial_percent > 0.0 && self.initial_percent <= 100.0) {
            return bad(format!(
                "initial_percent {} is outside (0, 100]",
                self.initial_percent
            ));
        }
        if self.check_interval.is_zero() {
            return bad("check_interval is zero".into());
        }
        if !(self.max_latency_degradation >= 0.0 && self.max_error_rate_increase >= 0.0) {
            return bad("degradation limits must be non-negative numbers".into());
        }
        Ok(())
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RolloutState {
    /// Enabled for `percent` % of keys, being monitored.
    Active {
        /// Current percentage.
        percent: f64,
    },
    /// Enabled for every key; no longer monitored.
    Complete,
    /// Disabled for every key after a check found it harmful.
    RolledBack {
        /// Why.
        reason: String,
    },
}

/// What one check found and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Treated operations in the window.
    pub treated: u64,
    /// Control operations in the window.
    pub control: u64,
    /// Relative change of the treated median latency against control (0.1 = 10 % slower).
    pub latency_change: Option<f64>,
    /// Treated error rate minus control error rate.
    pub error_rate_increase: Option<f64>,
    /// The state after the check.
    pub state: RolloutState,
    /// What the check did.
    pub action: CheckAction,
}

/// What a check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckAction {
    /// Not enough samples yet; the window keeps accumulating.
    Wait,
    /// Doubled the percentage.
    Widened,
    /// Reached 100 %.
    Completed,
    /// Rolled back to 0 %.
    RolledBack,
    /// Nothing to do: the rollout is complete or rolled back.
    Idle,
}

/// Errors of rollouts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The settings are invalid.
    #[error("invalid rollout settings: {reason}")]
    InvalidSettings {
        /// What is wrong.
        reason: String,
    },
}

/// One group's operations in the current window: count, errors, latency histogram (µs).
#[derive(Debug, Clone)]
struct Group {
    n: u64,
    errors: u64,
    latency_us: hdrhistogram::Histogram<u64>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            n: 0,
            errors: 0,
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Group {
    fn add(&mut self, latency: Duration, ok: bool) {
        self.n += 1;
        if !ok {
            self.errors += 1;
        }
        self.latency_us
            .saturating_record((latency.as_micros() as u64).max(1));
    }

    /// Median latency in µs: robust to the long tail that makes means of a few hundred
    /// operations swing by more than the 10 % limit.
    fn median_latency(&self) -> f64 {
        self.latency_us.value_at_quantile(0.5) as f64
    }

    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.n.max(1) as f64
    }
}

struct Meters {
    treated_ok: Counter,
    treated_err: Counter,
    control_ok: Counter,
    control_err: Counter,
}

struct Inner {
    name: String,
    settings: RolloutSettings,
    /// Enabled buckets (0..=BUCKETS): the hot path reads only this.
    enabled_below: AtomicU32,
    state: Mutex<RolloutState>,
    window: Mutex<(Group, Group)>,
    history: Mutex<Vec<CheckReport>>,
    meters: Meters,
    percent: metrics::Gauge,
}

/// A percentage rollout. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Rollout {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("name", &self.inner.name)
            .field("state", &*self.inner.state.lock())
            .finish()
    }
}

/// 64-bit FNV-1a: simple, stable across platforms and releases.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn to_buckets(percent: f64) -> u32 {
    ((percent.clamp(0.0, 100.0) / 100.0) * f64::from(BUCKETS)).round() as u32
}

/// Describes the rollout metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "foundation_rollout_percent",
        "Percentage of keys a rollout's feature is enabled for."
    );
    describe_counter!(
        "foundation_rollout_operations_total",
        "Operations reported to a rollout, by group (treated, control) and result (ok, error)."
    );
    describe_counter!(
        "foundation_rollout_transitions_total",
        "Rollout transitions: widened, complete, rolled_back."
    );
}

impl Rollout {
    /// A rollout named `name` at `settings.initial_percent`.
    pub fn new(name: impl Into<String>, settings: RolloutSettings) -> Result<Self, RolloutError> {
        settings.validate()?;
        let name = name.into();
        let op = |group: &'static str, result: &'static str| metrics::counter!("foundation_rollout_operations_total", "rollout" => name.clone(), "group" => group, "result" => result);
        let meters = Meters {
            treated_ok: op("treated", "ok"),
            treated_err: op("treated", "error"),
            control_ok: op("control", "ok"),
            control_err: op("control", "error"),
        };
        let percent = metrics::gauge!("foundation_rollout_percent", "rollout" => name.clone());
        percent.set(settings.initial_percent);
        let state = if settings.initial_percent >= 100.0 {
            RolloutState::Complete
        } else {
            RolloutState::Active {
                percent: settings.initial_percent,
            }
        };
        Ok(Rollout {
            inner: Arc::new(Inner {
                enabled_below: AtomicU32::new(to_buckets(settings.initial_percent)),
                state: Mutex::new(state),
                window: Mutex::new((Group::default(), Group::default())),
                history: Mutex::new(Vec::new()),
                meters,
                percent,
                name,
                settings,
            }),
        })
    }

    /// The rollout's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bucket (0..10,000) of `key` in rollout `name`; stable everywhere.
    pub fn bucket(name: &str, key: &[u8]) -> u32 {
        (fnv1a(&[name.as_bytes(), key]) % u64::from(BUCKETS)) as u32
    }

    /// Whether the feature is enabled for `key` now. One atomic load and a hash.
    #[inline]
    pub fn is_enabled(&self, key: &[u8]) -> bool {
        Self::bucket(&self.inner.name, key) < self.inner.enabled_below.load(Ordering::Relaxed)
    }

    /// The current percentage.
    pub fn percent(&self) -> f64 {
        f64::from(self.inner.enabled_below.load(Ordering::Relaxed)) * 100.0 / f64::from(BUCKETS)
    }

    /// The current state.
    pub fn state(&self) -> RolloutState {
        self.inner.state.lock().clone()
    }

    /// The reports of every check that acted or waited, oldest first.
    pub fn history(&self) -> Vec<CheckReport> {
        self.inner.history.lock().clone()
    }

    /// Reports one operation: whether the key was treated, how long it took, whether it
    /// succeeded.
    pub fn record(&self, treated: bool, latency: Duration, ok: bool) {
        let m = &self.inner.meters;
        match (treated, ok) {
            (true, true) => m.treated_ok.increment(1),
            (true, false) => m.treated_err.increment(1),
            (false, true) => m.control_ok.increment(1),
            (false, false) => m.control_err.increment(1),
        }
        let mut w = self.inner.window.lock();
        if treated {
            w.0.add(latency, ok)
        } else {
            w.1.add(latency, ok)
        }
    }

    fn set_percent(&self, percent: f64) {
        self.inner
            .enabled_below
            .store(to_buckets(percent), Ordering::Relaxed);
        self.inner.percent.set(percent);
    }

    fn transition(&self, to: &'static str) {
        metrics::counter!("foundation_rollout_transitions_total", "rollout" => self.inner.name.clone(), "to" => to).increment(1);
    }

    /// Evaluates the current window and acts (see the [module docs](self)).
    pub fn check(&self) -> CheckReport {
        let s = &self.inner.settings;
        let mut state = self.inner.state.lock();
        let percent = match &*state {
            RolloutState::Active { percent } => *percent,
            other => {
                return CheckReport {
                    treated: 0,
                    control: 0,
                    latency_change: None,
                    error_rate_increase: None,
                    state: other.clone(),
                    action: CheckAction::Idle,
                }
            }
        };
        let (treated, control) = self.inner.window.lock().clone();
        let latency_change = (treated.n > 0 && control.n > 0 && control.median_latency() > 0.0)
            .then(|| treated.median_latency() / control.median_latency() - 1.0);
        let error_rate_increase =
            (treated.n > 0 && control.n > 0).then(|| treated.error_rate() - control.error_rate());
        let mut report = CheckReport {
            treated: treated.n,
            control: control.n,
            latency_change,
            error_rate_increase,
            state: state.clone(),
            action: CheckAction::Wait,
        };
        // Harm is acted on before `min_samples`, but not on a handful of operations.
        let enough_to_judge = (s.min_samples / 5).max(5);
        let judged = treated.n >= enough_to_judge && control.n >= enough_to_judge;
        let degraded = match (error_rate_increase, latency_change) {
            _ if !judged => None,
            (Some(e), _) if e > s.max_error_rate_increase => Some(format!(
                "treated error rate {:+.1} points above control (limit {:.1})",
                e * 100.0,
                s.max_error_rate_increase * 100.0
            )),
            (_, Some(l)) if l > s.max_latency_degradation => Some(format!(
                "treated median latency {:+.1}% against control (limit {:+.1}%)",
                l * 100.0,
                s.max_latency_degradation * 100.0
            )),
            _ => None,
        };
        if let Some(reason) = degraded {
            self.set_percent(0.0);
            tracing::error!(rollout = %self.inner.name, %reason, treated = treated.n, control = control.n, "rollout: rolled back");
            *state = RolloutState::RolledBack { reason };
            self.transition("rolled_back");
            report.action = CheckAction::RolledBack;
        } else if treated.n >= s.min_samples && control.n >= s.min_samples {
            let next = (percent * 2.0).min(100.0);
            self.set_percent(next);
            if next >= 100.0 {
                *state = RolloutState::Complete;
                self.transition("complete");
                report.action = CheckAction::Completed;
                tracing::info!(rollout = %self.inner.name, "rollout: complete (100%)");
            } else {
                *state = RolloutState::Active { percent: next };
                self.transition("widened");
                report.action = CheckAction::Widened;
                tracing::info!(rollout = %self.inner.name, from = percent, to = next, ?latency_change, ?error_rate_increase, "rollout: healthy, widened");
            }
        }
        report.state = state.clone();
        if report.action != CheckAction::Wait {
            *self.inner.window.lock() = (Group::default(), Group::default());
        }
        self.inner.history.lock().push(report.clone());
        report
    }

    /// Runs [`check`](Self::check) every `check_interval` until `cancel` fires or the
    /// rollout is complete or rolled back. The caller owns the returned task.
    pub fn spawn_monitor(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.inner.settings.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if matches!(
                    me.check().action,
                    CheckAction::Completed | CheckAction::RolledBack | CheckAction::Idle
                ) {
                    break;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned values: changing the hash would reassign every key of every rollout.
        assert_eq!(Rollout::bucket("feature", b"user-1"), 9464);
        let mut counts = [0u32; 10];
        for i in 0..100_000u32 {
            counts[(Rollout::bucket("f", &i.to_le_bytes()) / 1000) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn percentage_matches_enabled_share() {
        let r = Rollout::new(
            "share",
            RolloutSettings {
                initial_percent: 25.0,
                ..Default::default()
            },
        )
        .unwrap();
        let on = (0..40_000u32)
            .filter(|i| r.is_enabled(&i.to_le_bytes()))
            .count();
        assert!((9_400..10_600).contains(&on), "{on}");
    }
}
