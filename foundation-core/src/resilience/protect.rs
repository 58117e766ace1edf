//! `execute_protected`: rate limit → breaker → timeout around one operation.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use super::{CircuitBreaker, Protected, RateLimiter};
use crate::error::Error;

/// Which protections [`execute_protected`] applies to one named operation. Build once,
/// reuse for every call; cloning is cheap (breaker and limiter are shared handles).
///
/// The type parameter is the limiter's entity type (see [`RateLimiter`]).
pub struct Protections<E = String>
where
    E: Hash + Eq + Clone,
{
    operation: String,
    limiter: Option<RateLimiter<E>>,
    breaker: Option<CircuitBreaker>,
    timeout: Option<Duration>,
}

impl<E: Hash + Eq + Clone> Clone for Protections<E> {
    fn clone(&self) -> Self {
        Self {
            operation: self.operation.clone(),
            limiter: self.limiter.clone(),
            breaker: self.breaker.clone(),
            timeout: self.timeout,
        }
    }
}

impl<E: Hash + Eq + Clone> fmt::Debug for Protections<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protections")
            .field("operation", &self.operation)
            .field("limiter", &self.limiter.as_ref().map(|_| ()))
            .field("breaker", &self.breaker.as_ref().map(CircuitBreaker::name))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<E: Hash + Eq + Clone> Protections<E> {
    /// No protection yet for `operation`. The name is the limiter's operation (its quota
    /// and metric label) and the `operation` of [`Error::Timeout`].
    pub fn new(operation: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            limiter: None,
            breaker: None,
            timeout: None,
        }
    }

    /// Rate-limits calls per key with `limiter`, under this operation's quota.
    pub fn rate_limit(mut self, limiter: RateLimiter<E>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Passes calls through `breaker`.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Cancels the operation after `timeout`; a timeout counts as a breaker failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The operation name.
    pub fn operation(&self) -> &str {
        &self.operation
    }
}

/// Runs `operation` for `key` under `protections`, applied in this order:
///
/// 1. **rate limit** — `limiter.check(key, operation)`; a rejection returns
///    [`Protected::Rejected`] with [`Error::RateLimited`] and **does not touch the
///    breaker** (being throttled says nothing about the dependency's health);
/// 2. **breaker** — an open breaker (or full half-open probe slots) returns
///    [`Protected::Rejected`] with [`Error::CircuitOpen`];
/// 3. **timeout** — the operation is polled for at most the timeout; past it the future is
///    dropped and [`Protected::TimedOut`] with [`Error::Timeout`] is returned.
///
/// In cases 1 and 2 `operation` is never polled. The breaker counts a success when the
/// operation returns `Ok`, a failure when it returns `Err` ([`Protected::Failed`]) or
/// times out. If the returned future is itself dropped mid-call, nothing is counted.
///
/// ```
/// use std::time::Duration;
/// use foundation_core::resilience::{
///     execute_protected, BreakerSettings, CircuitBreaker, LimitSettings, LimiterSettings,
///     Protected, Protections, RateLimiter,
/// };
/// use foundation_core::Error;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> foundation_core::Result<()> {
/// let mut limits = LimiterSettings::default();
/// limits.operations.insert("charge".into(), LimitSettings::per_second(1.try_into().unwrap()));
/// let protections = Protections::new("charge")
///     .rate_limit(RateLimiter::new("api", &limits)?)
///     .breaker(CircuitBreaker::new("payments", BreakerSettings::default()))
///     .timeout(Duration::from_millis(200));
///
/// let customer = "alice".to_string();
/// let r = execute_protected(&customer, &protections, async { Ok::<_, std::io::Error>(7) }).await;
/// assert_eq!(r.unwrap(), 7);
///
/// // Second call within the second: throttled, the future does not run.
/// let r = execute_protected(&customer, &protections, async { Ok::<_, std::io::Error>(8) }).await;
/// assert!(matches!(r, Err(Protected::Rejected(Error::RateLimited { .. }))));
///
/// // A slow call times out (and counts as a breaker failure).
/// tokio::time::advance(Duration::from_secs(1)).await;
/// let slow = async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::io::Error>(9)
/// };
/// let r = execute_protected(&customer, &protections, slow).await;
/// assert!(matches!(r, Err(Protected::TimedOut(Error::Timeout { .. }))));
/// # Ok(())
/// # }
/// ```
pub async fn execute_protected<K, T, E, F>(
    key: &K,
    protections: &Protections<K>,
    operation: F,
) -> Result<T, Protected<E>>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    if let Some(limiter) = &protections.limiter {
        limiter
            .check(key, &protections.operation)
            .map_err(Protected::Rejected)?;
    }
    let permit = match &protections.breaker {
        Some(breaker) => Some(breaker.try_acquire().map_err(Protected::Rejected)?),
        None => None,
    };
    let outcome = match protections.timeout {
        Some(after) => match tokio::time::timeout(after, operation).await {
            Ok(result) => result.map_err(Protected::Failed),
            Err(_elapsed) => Err(Protected::TimedOut(Error::Timeout {
                operation: protections.operation.clone(),
                after,
            })),
        },
        None => operation.await.map_err(Protected::Failed),
    };
    if let Some(permit) = permit {
        if outcome.is_ok() {
            permit.success();
        } else {
            permit.failure();
        }
    }
    outcome
}
