//! Keyed rate limiter: GCRA (`governor`) per *(entity, operation)*, on tokio's clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::Quota;
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::duration_serde;
use crate::error::{Error, Result};

/// A `governor` clock that reads `tokio::time::Instant`, so the limiter follows tokio's
/// paused clock in tests (`start_paused`, `time::advance`) and waits with `tokio::time`.
#[derive(Debug, Clone)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

type Keyed<E> = governor::RateLimiter<E, DashMapStateStore<E>, TokioClock, NoOpMiddleware<Nanos>>;

/// One quota: `rate` calls per `per`, with bursts of up to `burst` calls (default `rate`).
///
/// Loads from TOML: `{ rate = 10, per = "1s", burst = 20 }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Calls allowed per `per` in the long run.
    pub rate: NonZeroU32,
    /// The period `rate` refers to.
    #[serde(deserialize_with = "duration_serde::deserialize")]
    pub per: Duration,
    /// Calls allowed at once after a quiet period. Defaults to `rate`.
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
}

impl Default for LimitSettings {
    /// 100 calls per second, bursts of 100.
    fn default() -> Self {
        Self::per_second(NonZeroU32::new(100).expect("100 is not zero"))
    }
}

impl LimitSettings {
    /// `rate` calls per second, bursts of `rate`.
    pub fn per_second(rate: NonZeroU32) -> Self {
        Self {
            rate,
            per: Duration::from_secs(1),
            burst: None,
        }
    }

    /// Sets the burst size.
    pub fn with_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = Some(burst);
        self
    }

    fn quota(&self, operation: &str) -> Result<Quota> {
        let interval = self.per / self.rate.get();
        Quota::with_period(interval)
            .map(|q| q.allow_burst(self.burst.unwrap_or(self.rate)))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "rate limit for `{operation}`: {} per {:?} is finer than a nanosecond",
                    self.rate, self.per
                ))
            })
    }
}

/// Settings of a [`RateLimiter`]: a default quota and quotas per operation.
///
/// ```
/// use foundation_core::resilience::LimiterSettings;
/// let s: LimiterSettings = toml::from_str(r#"
///     default = { rate = 100, per = "1s" }
///     [operations]
///     login = { rate = 5, per = "1m", burst = 3 }
/// "#).unwrap();
/// assert_eq!(s.operations["login"].rate.get(), 5);
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterSettings {
    /// Quota of operations not listed in `operations`.
    pub default: LimitSettings,
    /// Quota per operation name.
    pub operations: BTreeMap<String, LimitSettings>,
}

struct Operation<E: Hash + Eq + Clone> {
    limiter: Keyed<E>,
    rejections: metrics::Counter,
    /// Listed in the settings (kept forever) or created on first use with the default
    /// quota (dropped by `retain_recent` once it holds no key).
    configured: bool,
}

impl<E: Hash + Eq + Clone> Operation<E> {
    fn new(
        limiter: &str,
        operation: &str,
        quota: Quota,
        clock: &TokioClock,
        configured: bool,
    ) -> Self {
        Self {
            limiter: Keyed::dashmap_with_clock(quota, clock.clone()),
            rejections: metrics::counter!(
                "foundation_limiter_rejections_total",
                "limiter" => limiter.to_owned(),
                "operation" => operation.to_owned()
            ),
            configured,
        }
    }
}

struct Inner<E: Hash + Eq + Clone> {
    name: String,
    clock: TokioClock,
    default_quota: Quota,
    /// Operation names come from code, not from remote input, so the fast non-SipHash
    /// hasher is fine here; entity keys (possibly attacker-chosen) keep `governor`'s
    /// default `RandomState`.
    operations: RwLock<HashMap<String, Operation<E>, foldhash::fast::RandomState>>,
    keys: metrics::Gauge,
}

/// A rate limiter keyed by *(entity, operation)*: each entity (user id, IP address, tenant,
/// …) gets its own allowance per operation, and each operation its own quota
/// ([`LimiterSettings::operations`], else [`LimiterSettings::default`]).
///
/// Built on `governor`'s GCRA with a clock that reads `tokio::time`. Cheap to clone; clones
/// share state. A check takes a read lock on the operation table and one `DashMap` shard
/// lock; it allocates only the first time an (entity, operation) pair is seen, and on
/// rejection (for the error's key string).
///
/// # Memory
/// Every entity seen is remembered until [`retain_recent`](Self::retain_recent) drops the
/// ones whose allowance is full again (indistinguishable from new). Call it periodically,
/// or let [`spawn_cleanup`](Self::spawn_cleanup) do it; it also sets the
/// `foundation_limiter_keys` gauge.
pub struct RateLimiter<E = String>
where
    E: Hash + Eq + Clone,
{
    inner: Arc<Inner<E>>,
}

impl<E: Hash + Eq + Clone> Clone for RateLimiter<E> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E: Hash + Eq + Clone> fmt::Debug for RateLimiter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.inner.name)
            .field("operations", &self.inner.operations.read().len())
            .finish()
    }
}

impl<E> RateLimiter<E>
where
    E: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
{
    /// A limiter named `name` (the `limiter` label of its metrics).
    ///
    /// Fails with [`Error::InvalidArgument`] if a quota's interval (`per / rate`) is below
    /// one nanosecond.
    pub fn new(name: impl Into<String>, settings: &LimiterSettings) -> Result<Self> {
        let name = name.into();
        let clock = TokioClock {
            start: Instant::now(),
        };
        let default_quota = settings.default.quota("default")?;
        let mut operations = HashMap::with_capacity_and_hasher(
            settings.operations.len(),
            foldhash::fast::RandomState::default(),
        );
        for (op, limit) in &settings.operations {
            let quota = limit.quota(op)?;
            operations.insert(op.clone(), Operation::new(&name, op, quota, &clock, true));
        }
        let keys = metrics::gauge!("foundation_limiter_keys", "limiter" => name.clone());
        keys.set(0.0);
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                clock,
                default_quota,
                operations: RwLock::new(operations),
                keys,
            }),
        })
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `f` on the operation's limiter, creating it with the default quota on first use.
    fn with_operation<R>(&self, operation: &str, f: impl FnOnce(&Operation<E>) -> R) -> R {
        {
            let ops = self.inner.operations.read();
            if let Some(op) = ops.get(operation) {
                return f(op);
            }
        }
        let mut ops = self.inner.operations.write();
        let op = ops.entry(operation.to_owned()).or_insert_with(|| {
            Operation::new(
                &self.inner.name,
                operation,
                self.inner.default_quota,
                &self.inner.clock,
                false,
            )
        });
        f(op)
    }

    /// Takes one call from `entity`'s allowance for `operation`.
    ///
    /// Returns [`Error::RateLimited`] (key `entity/operation`, `retry_after` = time until a
    /// call would pass) when the allowance is used up; the rejection is counted in
    /// `foundation_limiter_rejections_total`.
    pub fn check(&self, entity: &E, operation: &str) -> Result<()> {
        self.with_operation(operation, |op| match op.limiter.check_key(entity) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                op.rejections.increment(1);
                Err(Error::RateLimited {
                    key: format!("{entity}/{operation}"),
                    retry_after: not_until.wait_time_from(self.inner.clock.now()),
                })
            }
        })
    }

    /// Waits (with `tokio::time::sleep`) until `entity` may call `operation`, then takes
    /// one call from its allowance. Waiting is not counted as a rejection. Wrap it in
    /// `tokio::time::timeout` to bound the wait.
    pub async fn until_ready(&self, entity: &E, operation: &str) {
        loop {
            let wait = self.with_operation(operation, |op| {
                op.limiter
                    .check_key(entity)
                    .map_err(|nu| nu.wait_time_from(self.inner.clock.now()))
            });
            match wait {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Forgets every (entity, operation) whose allowance has been full again for at least
    /// one replenish interval (`governor`'s rule), drops operations
    /// created on first use that hold no key any more, shrinks the tables, and sets the
    /// `foundation_limiter_keys` gauge. Returns the number of keys left.
    ///
    /// Takes the operation table's write lock: checks wait while it runs.
    pub fn retain_recent(&self) -> usize {
        let mut ops = self.inner.operations.write();
        ops.retain(|_, op| {
            op.limiter.retain_recent();
            op.limiter.shrink_to_fit();
            op.configured || !op.limiter.is_empty()
        });
        let keys = ops.values().map(|op| op.limiter.len()).sum::<usize>();
        self.inner.keys.set(keys as f64);
        keys
    }

    /// Number of (entity, operation) keys held now. Also sets the
    /// `foundation_limiter_keys` gauge.
    pub fn key_count(&self) -> usize {
        let keys = self
            .inner
            .operations
            .read()
            .values()
            .map(|op| op.limiter.len())
            .sum::<usize>();
        self.inner.keys.set(keys as f64);
        keys
    }

    /// Spawns a task that calls [`retain_recent`](Self::retain_recent) every `period`.
    ///
    /// The task is owned by the returned [`CleanupTask`]: dropping it aborts the task. The
    /// task holds only a weak reference and also ends when the last limiter clone is
    /// dropped. Must be called inside a tokio runtime.
    pub fn spawn_cleanup(&self, period: Duration) -> CleanupTask {
        let weak: Weak<Inner<E>> = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => {
                        RateLimiter { inner }.retain_recent();
                    }
                    None => return,
                }
            }
        });
        CleanupTask { handle }
    }
}

/// Owner of the periodic clean-up task started by [`RateLimiter::spawn_cleanup`].
///
/// **Dropping it aborts the task.**
#[derive(Debug)]
pub struct CleanupTask {
    handle: JoinHandle<()>,
}

impl CleanupTask {
    /// Whether the task has ended (limiter dropped, or aborted).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Drop for CleanupTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, per: Duration) -> RateLimiter<u64> {
        let settings = LimiterSettings {
            default: LimitSettings {
                rate: NonZeroU32::new(rate).unwrap(),
                per,
                burst: None,
            },
            operations: BTreeMap::new(),
        };
        RateLimiter::new("t", &settings).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn allowance_refills_with_tokio_time() {
        let l = limiter(2, Duration::from_secs(1));
        l.check(&1, "op").unwrap();
        l.check(&1, "op").unwrap();
        let Err(Error::RateLimited { key, retry_after }) = l.check(&1, "op") else {
            panic!("third call must be limited");
        };
        assert_eq!(key, "1/op");
        assert_eq!(retry_after, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        l.check(&1, "op").unwrap();
        assert!(l.check(&1, "op").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn retain_recent_drops_idle_keys_and_dynamic_operations() {
        let l = limiter(1, Duration::from_secs(1));
        for e in 0..100u64 {
            l.check(&e, "dynamic").unwrap();
        }
        assert_eq!(l.key_count(), 100);
        assert_eq!(l.retain_recent(), 100, "allowances not yet refilled");
        // governor keeps a key one replenish interval longer than strictly needed.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.retain_recent(), 0);
        assert!(l.inner.operations.read().is_empty());
    }

    #[test]
    fn sub_nanosecond_quota_is_rejected() {
        let settings = LimiterSettings {
            default: LimitSettings {
                rate: NonZeroU32::new(10).unwrap(),
                per: Duration::from_nanos(1),
                burst: None,
            },
            operations: BTreeMap::new(),
        };
        assert!(matches!(
            RateLimiter::<u64>::new("bad", &settings),
            Err(Error::InvalidArgument(_))
        ));
    }
}
