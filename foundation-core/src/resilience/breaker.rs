//! The circuit breaker and the registry of named breakers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::{duration_serde, Protected};
use crate::error::Error;

/// State of a [`CircuitBreaker`].
///
/// Each state carries only the data that makes sense in it, so a breaker cannot be "open
/// with probes in flight" or "closed since a time".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass. `failures` consecutive failures have been seen; at
    /// [`BreakerSettings::failure_threshold`] the breaker opens.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls are rejected with [`Error::CircuitOpen`] until
    /// [`BreakerSettings::reset_timeout`] has passed since `since`.
    Open {
        /// When the breaker opened.
        since: Instant,
    },
    /// Up to [`BreakerSettings::half_open_max_probes`] calls run concurrently as probes;
    /// others are rejected. A failed probe re-opens the breaker;
    /// [`BreakerSettings::success_threshold`] successful probes close it.
    HalfOpen {
        /// Probes admitted and not finished.
        probes_in_flight: u32,
        /// Probes that succeeded since the breaker became half-open.
        successes: u32,
    },
}

impl BreakerState {
    /// The value of the `foundation_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(&self) -> f64 {
        match self {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::HalfOpen { .. } => "half_open",
            BreakerState::Open { .. } => "open",
        }
    }
}

fn default_failure_threshold() -> NonZeroU32 {
    NonZeroU32::new(5).expect("5 is not zero")
}

/// Settings of a [`CircuitBreaker`]. Loads from TOML; durations are written `"30s"`,
/// `"250ms"` or as integer milliseconds. Missing fields take their defaults.
///
/// ```
/// use foundation_core::resilience::BreakerSettings;
/// let s: BreakerSettings = toml::from_str(r#"
///     failure_threshold = 3
///     reset_timeout = "10s"
/// "#).unwrap();
/// assert_eq!(s.failure_threshold.get(), 3);
/// assert_eq!(s.half_open_max_probes.get(), 1);
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open a closed breaker. Default 5.
    pub failure_threshold: NonZeroU32,
    /// How long an open breaker rejects calls before it lets probes through. Default 30 s.
    #[serde(deserialize_with = "duration_serde::deserialize")]
    pub reset_timeout: Duration,
    /// Probes allowed at the same time while half-open. Default 1.
    pub half_open_max_probes: NonZeroU32,
    /// Successful probes needed to close a half-open breaker. Default 1.
    pub success_threshold: NonZeroU32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            reset_timeout: Duration::from_secs(30),
            half_open_max_probes: NonZeroU32::MIN,
            success_threshold: NonZeroU32::MIN,
        }
    }
}

struct BreakerMetrics {
    state: metrics::Gauge,
    to_closed: metrics::Counter,
    to_half_open: metrics::Counter,
    to_open: metrics::Counter,
    rejections: metrics::Counter,
}

impl BreakerMetrics {
    fn new(name: &str) -> Self {
        let transition = |to: &'static str| {
            metrics::counter!(
                "foundation_breaker_transitions_total",
                "breaker" => name.to_owned(),
                "to" => to
            )
        };
        Self {
            state: metrics::gauge!("foundation_breaker_state", "breaker" => name.to_owned()),
            to_closed: transition("closed"),
            to_half_open: transition("half_open"),
            to_open: transition("open"),
            rejections: metrics::counter!(
                "foundation_breaker_rejections_total",
                "breaker" => name.to_owned()
            ),
        }
    }
}

struct Core {
    state: BreakerState,
    /// Bumped on every transition. A permit records the generation it was issued in; an
    /// outcome from an older generation (a slow call admitted before the breaker opened)
    /// is ignored, so it can neither close a re-opened breaker nor count twice.
    generation: u64,
}

struct Inner {
    name: String,
    settings: BreakerSettings,
    core: Mutex<Core>,
    /// Lock-free summary of `core` for the hot path: `generation << 1 | clean`, where
    /// `clean` means the state is `Closed { failures: 0 }`. Written only with `core`'s lock
    /// held, after every change that can affect it.
    ///
    /// Why it is enough: in `Closed { failures: 0 }` every call is admitted and a success
    /// changes nothing, so admission and success need only read this word. Failures and
    /// every other state take the lock.
    fast: AtomicU64,
    metrics: BreakerMetrics,
}

fn fast_word(core: &Core) -> u64 {
    let clean = matches!(core.state, BreakerState::Closed { failures: 0 });
    (core.generation << 1) | u64::from(clean)
}

impl Inner {
    /// Publishes `core` to the hot path. Caller holds the lock.
    fn publish(&self, core: &Core) {
        // Ordering: Release pairs with the Acquire loads in `try_acquire` and `record`.
        self.fast.store(fast_word(core), Ordering::Release);
    }

    /// Moves to `to`. Caller holds the lock.
    fn transition(&self, core: &mut Core, to: BreakerState) {
        core.state = to;
        core.generation += 1;
        self.publish(core);
        self.metrics.state.set(to.gauge_value());
        match to {
            BreakerState::Closed { .. } => &self.metrics.to_closed,
            BreakerState::HalfOpen { .. } => &self.metrics.to_half_open,
            BreakerState::Open { .. } => &self.metrics.to_open,
        }
        .increment(1);
        tracing::debug!(breaker = %self.name, to = to.label(), "circuit breaker transition");
    }

    fn reject(&self, retry_after: Duration) -> Error {
        self.metrics.rejections.increment(1);
        Error::CircuitOpen {
            name: self.name.clone(),
            retry_after,
        }
    }

    #[inline]
    fn record(&self, generation: u64, success: bool) {
        // Hot path: a success on a clean closed breaker of the same generation is a no-op.
        if success && self.fast.load(Ordering::Acquire) == (generation << 1) | 1 {
            return;
        }
        self.record_slow(generation, success);
    }

    #[inline(never)]
    fn record_slow(&self, generation: u64, success: bool) {
        let mut core = self.core.lock();
        if core.generation != generation {
            return;
        }
        let s = &self.settings;
        match (core.state, success) {
            (BreakerState::Closed { failures }, true) => {
                if failures != 0 {
                    core.state = BreakerState::Closed { failures: 0 };
                    self.publish(&core);
                }
            }
            (BreakerState::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= s.failure_threshold.get() {
                    let since = Instant::now();
                    self.transition(&mut core, BreakerState::Open { since });
                } else {
                    core.state = BreakerState::Closed { failures };
                    self.publish(&core);
                }
            }
            (
                BreakerState::HalfOpen {
                    probes_in_flight,
                    successes,
                },
                true,
            ) => {
                let successes = successes + 1;
                if successes >= s.success_threshold.get() {
                    self.transition(&mut core, BreakerState::Closed { failures: 0 });
                } else {
                    core.state = BreakerState::HalfOpen {
                        probes_in_flight: probes_in_flight.saturating_sub(1),
                        successes,
                    };
                }
            }
            (BreakerState::HalfOpen { .. }, false) => {
                let since = Instant::now();
                self.transition(&mut core, BreakerState::Open { since });
            }
            // No permit is issued while open, and entering Open bumps the generation, so
            // an outcome can never match an open breaker's generation.
            (BreakerState::Open { .. }, _) => {}
        }
    }

    /// An unresolved probe permit was dropped: free its slot without counting an outcome.
    fn release_probe(&self, generation: u64) {
        let mut core = self.core.lock();
        if core.generation != generation {
            return;
        }
        if let BreakerState::HalfOpen {
            probes_in_flight,
            successes,
        } = core.state
        {
            core.state = BreakerState::HalfOpen {
                probes_in_flight: probes_in_flight.saturating_sub(1),
                successes,
            };
        }
    }
}

/// A circuit breaker: after repeated failures it stops calling the dependency for a while
/// (fail fast with [`Error::CircuitOpen`]), then lets a bounded number of probe calls
/// through to find out whether the dependency has recovered.
///
/// Cheap to clone; clones share state. While closed with no recent failure, a call costs
/// two atomic loads and no lock or allocation (see the `resilience` bench); failures and
/// the other states go through a `parking_lot` mutex.
///
/// ```
/// use std::time::Duration;
/// use foundation_core::resilience::{BreakerSettings, BreakerState, CircuitBreaker, Protected};
/// use foundation_core::Error;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let settings = BreakerSettings {
///     failure_threshold: 2.try_into().unwrap(),
///     reset_timeout: Duration::from_secs(10),
///     ..BreakerSettings::default()
/// };
/// let breaker = CircuitBreaker::new("payments", settings);
///
/// for _ in 0..2 {
///     let r = breaker.call(async { Err::<(), _>("connection refused") }).await;
///     assert!(matches!(r, Err(Protected::Failed("connection refused"))));
/// }
/// assert!(matches!(breaker.state(), BreakerState::Open { .. }));
///
/// // Open: the future is not run, the caller learns when to come back.
/// let r = breaker.call(async { Ok::<_, &str>(1) }).await;
/// assert!(matches!(r, Err(Protected::Rejected(Error::CircuitOpen { .. }))));
///
/// // Or fall back to a default.
/// let v = breaker
///     .call_with_fallback(async { Ok::<_, &str>(1) }, |_why| async { 0 })
///     .await;
/// assert_eq!(v, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the `breaker` label of its metrics).
    pub fn new(name: impl Into<String>, settings: BreakerSettings) -> Self {
        let name = name.into();
        let metrics = BreakerMetrics::new(&name);
        metrics.state.set(0.0);
        let core = Core {
            state: BreakerState::Closed { failures: 0 },
            generation: 0,
        };
        Self {
            inner: Arc::new(Inner {
                name,
                settings,
                fast: AtomicU64::new(fast_word(&core)),
                core: Mutex::new(core),
                metrics,
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The breaker's settings.
    pub fn settings(&self) -> &BreakerSettings {
        &self.inner.settings
    }

    /// The current state. An open breaker whose reset timeout has passed reports `Open`
    /// until the next call attempt moves it to `HalfOpen`.
    pub fn state(&self) -> BreakerState {
        self.inner.core.lock().state
    }

    /// Asks to make one call. On success the returned permit must be resolved with
    /// [`BreakerPermit::success`] or [`BreakerPermit::failure`] when the call ends.
    ///
    /// Fails with [`Error::CircuitOpen`] when the breaker is open (its `retry_after` is the
    /// time left until probes are allowed) or half-open with all probe slots taken
    /// (`retry_after` is zero: a slot frees as soon as a probe ends).
    #[inline]
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, Error> {
        let inner = &*self.inner;
        // Hot path: a clean closed breaker admits every call; no lock needed.
        let word = inner.fast.load(Ordering::Acquire);
        if word & 1 == 1 {
            return Ok(BreakerPermit {
                inner,
                generation: word >> 1,
                probe: false,
                resolved: false,
            });
        }
        self.try_acquire_slow()
    }

    #[inline(never)]
    fn try_acquire_slow(&self) -> Result<BreakerPermit<'_>, Error> {
        let inner = &*self.inner;
        let mut core = inner.core.lock();
        let probe = match core.state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { since } => {
                let elapsed = Instant::now().saturating_duration_since(since);
                let reset = inner.settings.reset_timeout;
                if elapsed < reset {
                    return Err(inner.reject(reset - elapsed));
                }
                inner.transition(
                    &mut core,
                    BreakerState::HalfOpen {
                        probes_in_flight: 1,
                        successes: 0,
                    },
                );
                true
            }
            BreakerState::HalfOpen {
                probes_in_flight,
                successes,
            } => {
                if probes_in_flight >= inner.settings.half_open_max_probes.get() {
                    return Err(inner.reject(Duration::ZERO));
                }
                core.state = BreakerState::HalfOpen {
                    probes_in_flight: probes_in_flight + 1,
                    successes,
                };
                true
            }
        };
        Ok(BreakerPermit {
            inner,
            generation: core.generation,
            probe,
            resolved: false,
        })
    }

    /// Runs `operation` through the breaker.
    ///
    /// Returns [`Protected::Rejected`] without polling `operation` when the breaker refuses
    /// the call, [`Protected::Failed`] with the operation's error (counted as a failure) or
    /// the operation's value (counted as a success). If the returned future is dropped
    /// before `operation` finishes, nothing is counted and a probe slot is freed.
    pub async fn call<T, E, F>(&self, operation: F) -> Result<T, Protected<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = match self.try_acquire() {
            Ok(permit) => permit,
            Err(rejection) => return Err(Protected::Rejected(rejection)),
        };
        let result = operation.await;
        permit.resolve(result.is_ok());
        result.map_err(Protected::Failed)
    }

    /// Like [`call`](Self::call), but on rejection or failure runs `fallback` with the
    /// reason and returns its value. The fallback's outcome is not counted by the breaker.
    pub async fn call_with_fallback<T, E, F, FB, FBFut>(&self, operation: F, fallback: FB) -> T
    where
        F: Future<Output = Result<T, E>>,
        FB: FnOnce(Protected<E>) -> FBFut,
        FBFut: Future<Output = T>,
    {
        match self.call(operation).await {
            Ok(v) => v,
            Err(why) => fallback(why).await,
        }
    }
}

/// Permission to make one call through a [`CircuitBreaker`], from
/// [`CircuitBreaker::try_acquire`].
///
/// Resolve it with [`success`](Self::success) or [`failure`](Self::failure). **Dropping it
/// unresolved counts nothing**: in the half-open state it frees its probe slot, in the
/// closed state it has no effect. Outcomes reported after the breaker changed state since
/// the permit was issued are ignored.
#[must_use = "resolve the permit with success() or failure()"]
pub struct BreakerPermit<'a> {
    inner: &'a Inner,
    generation: u64,
    probe: bool,
    resolved: bool,
}

impl BreakerPermit<'_> {
    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// [`success`](Self::success) if `ok`, else [`failure`](Self::failure).
    #[inline]
    pub fn resolve(mut self, ok: bool) {
        self.resolved = true;
        self.inner.record(self.generation, ok);
    }

    /// The call succeeded.
    #[inline]
    pub fn success(mut self) {
        self.resolved = true;
        self.inner.record(self.generation, true);
    }

    /// The call failed.
    #[inline]
    pub fn failure(mut self) {
        self.resolved = true;
        self.inner.record(self.generation, false);
    }
}

impl fmt::Debug for BreakerPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("breaker", &self.inner.name)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for BreakerPermit<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.resolved && self.probe {
            self.inner.release_probe(self.generation);
        }
    }
}

/// Named circuit breakers, created on first use. Cheap to clone; clones share breakers.
#[derive(Clone, Debug, Default)]
pub struct BreakerRegistry {
    defaults: BreakerSettings,
    breakers: Arc<RwLock<HashMap<String, CircuitBreaker>>>,
}

impl BreakerRegistry {
    /// A registry whose breakers are created with `defaults`.
    pub fn new(defaults: BreakerSettings) -> Self {
        Self {
            defaults,
            breakers: Arc::default(),
        }
    }

    /// The breaker named `name`, created with the registry's default settings if it does
    /// not exist.
    pub fn get(&self, name: &str) -> CircuitBreaker {
        self.get_or_create(name, || self.defaults.clone())
    }

    /// The breaker named `name`, created with `settings` if it does not exist. An existing
    /// breaker keeps the settings it was created with.
    pub fn get_with(&self, name: &str, settings: BreakerSettings) -> CircuitBreaker {
        self.get_or_create(name, || settings)
    }

    fn get_or_create(
        &self,
        name: &str,
        settings: impl FnOnce() -> BreakerSettings,
    ) -> CircuitBreaker {
        if let Some(b) = self.breakers.read().get(name) {
            return b.clone();
        }
        self.breakers
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| CircuitBreaker::new(name, settings()))
            .clone()
    }

    /// The breaker named `name`, if it exists.
    pub fn find(&self, name: &str) -> Option<CircuitBreaker> {
        self.breakers.read().get(name).cloned()
    }

    /// Forgets the breaker named `name`; clones already handed out keep working.
    pub fn remove(&self, name: &str) -> Option<CircuitBreaker> {
        self.breakers.write().remove(name)
    }

    /// Names and states of all breakers, sorted by name.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut v: Vec<_> = self
            .breakers
            .read()
            .iter()
            .map(|(n, b)| (n.clone(), b.state()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threshold: u32, probes: u32) -> BreakerSettings {
        BreakerSettings {
            failure_threshold: NonZeroU32::new(threshold).unwrap(),
            reset_timeout: Duration::from_secs(10),
            half_open_max_probes: NonZeroU32::new(probes).unwrap(),
            success_threshold: NonZeroU32::MIN,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stale_outcome_from_before_opening_is_ignored() {
        let b = CircuitBreaker::new("stale", settings(1, 1));
        let slow = b.try_acquire().unwrap(); // admitted while closed
        b.try_acquire().unwrap().failure(); // opens
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        slow.success(); // from the closed generation: must not close the breaker
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_its_slot() {
        let b = CircuitBreaker::new("drop", settings(1, 1));
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().unwrap();
        assert!(b.try_acquire().is_err(), "only one probe slot");
        drop(probe);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probes_in_flight: 0,
                successes: 0
            }
        );
        assert!(b.try_acquire().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_consecutive_failures() {
        let b = CircuitBreaker::new("reset", settings(3, 1));
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejection_reports_time_left() {
        let b = CircuitBreaker::new("left", settings(1, 1));
        b.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(4)).await;
        match b.try_acquire() {
            Err(Error::CircuitOpen { name, retry_after }) => {
                assert_eq!(name, "left");
                assert_eq!(retry_after, Duration::from_secs(6));
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        };
    }

    #[test]
    fn settings_reject_zero_and_unknown_fields() {
        assert!(toml::from_str::<BreakerSettings>("failure_threshold = 0").is_err());
        assert!(toml::from_str::<BreakerSettings>("failure_treshold = 3").is_err());
        let s: BreakerSettings = toml::from_str("reset_timeout = 1500").unwrap();
        assert_eq!(s.reset_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn transitions_are_counted_in_metrics() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let b =
            metrics::with_local_recorder(&recorder, || CircuitBreaker::new("m", settings(1, 1)));
        b.try_acquire().unwrap().failure();
        assert!(b.try_acquire().is_err());
        let snap = snapshotter.snapshot().into_vec();
        let find = |name: &str, label: Option<(&str, &str)>| {
            snap.iter()
                .find(|(k, _, _, _)| {
                    k.key().name() == name
                        && label.is_none_or(|(lk, lv)| {
                            k.key().labels().any(|l| l.key() == lk && l.value() == lv)
                        })
                })
                .map(|(_, _, _, v)| v)
        };
        assert_eq!(
            find("foundation_breaker_state", None),
            Some(&DebugValue::Gauge(2.0.into()))
        );
        assert_eq!(
            find("foundation_breaker_transitions_total", Some(("to", "open"))),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            find("foundation_breaker_rejections_total", None),
            Some(&DebugValue::Counter(1))
        );
    }
}
