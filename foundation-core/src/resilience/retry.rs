//! Retry with capped exponential backoff and jitter.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use rand::Rng;

use super::{duration_serde, Protected};
use crate::error::{capped_exponential, Error};

/// How a [`Backoff`] randomises its delays, so that many clients that failed together do
/// not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// Uniform in `[0, d]` ("full jitter"): spreads retries the most.
    #[default]
    Full,
    /// Uniform in `[d/2, d]` ("equal jitter"): spreads retries but keeps half the wait.
    Equal,
}

/// Capped exponential backoff: before retry number `n` (0-based) wait
/// `min(cap, base * 2^n)`, randomised by [`Jitter`].
///
/// Loads from TOML: `{ base = "50ms", cap = "30s", jitter = "equal" }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry, before jitter. Default 50 ms
    /// ([`crate::error::RETRY_BASE`]).
    #[serde(deserialize_with = "duration_serde::deserialize")]
    pub base: Duration,
    /// Largest delay. Default 30 s ([`crate::error::RETRY_CAP`]).
    #[serde(deserialize_with = "duration_serde::deserialize")]
    pub cap: Duration,
    /// Randomisation. Default [`Jitter::Full`].
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: crate::error::RETRY_BASE,
            cap: crate::error::RETRY_CAP,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based) without jitter: its upper bound.
    pub fn max_delay(&self, attempt: u32) -> Duration {
        capped_exponential(self.base, self.cap, attempt)
    }

    /// The delay before retry number `attempt` (0-based), jittered with the thread-local
    /// random generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with_rng(attempt, &mut rand::rng())
    }

    /// [`delay`](Self::delay) with a given random generator (for reproducible tests).
    pub fn delay_with_rng<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let max = self.max_delay(attempt);
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        match self.jitter {
            Jitter::None => max,
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos)),
            Jitter::Equal => {
                let half = nanos / 2;
                Duration::from_nanos(half + rng.random_range(0..=nanos - half))
            }
        }
    }
}

/// What to retry and how long to wait: at most `max_attempts` calls in total, separated by
/// [`Backoff`] delays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Calls in total, the first one included. Default 3.
    pub max_attempts: NonZeroU32,
    /// Delays between calls.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::new(3).expect("3 is not zero"),
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    /// A policy of `max_attempts` calls with the default backoff.
    pub fn new(max_attempts: NonZeroU32) -> Self {
        Self {
            max_attempts,
            ..Self::default()
        }
    }

    /// Sets the backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Errors that know whether a retry can help and how long to wait at least.
///
/// Implemented for [`Error`] and for [`Protected<E>`] with `E: RetryAdvice`.
pub trait RetryAdvice {
    /// Whether the same call may succeed later.
    fn is_retryable(&self) -> bool;
    /// The least wait the error names (`retry_after` of a rate limit or open breaker).
    fn retry_after(&self) -> Duration {
        Duration::ZERO
    }
}

impl RetryAdvice for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }

    fn retry_after(&self) -> Duration {
        match self {
            Error::RateLimited { retry_after, .. } | Error::CircuitOpen { retry_after, .. } => {
                *retry_after
            }
            _ => Duration::ZERO,
        }
    }
}

impl<E: RetryAdvice> RetryAdvice for Protected<E> {
    fn is_retryable(&self) -> bool {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) => e.is_retryable(),
            Protected::Failed(e) => e.is_retryable(),
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) => RetryAdvice::retry_after(e),
            Protected::Failed(e) => e.retry_after(),
        }
    }
}

/// Calls `operation` until it succeeds, fails with an error that is not retryable, or
/// `policy.max_attempts` calls have been made; returns the last result.
///
/// Between calls it sleeps (`tokio::time::sleep`) for the jittered backoff delay, but never
/// less than the error's own `retry_after` (see [`Error::retry_delay`]). Each retry (not
/// the first call) increments `foundation_retry_attempts_total`.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use foundation_core::resilience::{retry, RetryPolicy};
/// use foundation_core::Error;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let calls = AtomicU32::new(0);
/// let v = retry(&RetryPolicy::default(), || async {
///     if calls.fetch_add(1, Ordering::Relaxed) == 0 {
///         Err(Error::Timeout { operation: "fetch".into(), after: Duration::from_secs(1) })
///     } else {
///         Ok(42)
///     }
/// })
/// .await;
/// assert_eq!(v.unwrap(), 42);
/// assert_eq!(calls.load(Ordering::Relaxed), 2);
/// # }
/// ```
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, operation: F) -> Result<T, E>
where
    E: RetryAdvice,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    run(policy, operation, |e: &E| {
        e.is_retryable().then(|| e.retry_after())
    })
    .await
}

/// Like [`retry`] for any error type: retries while `should_retry(&error)` is true.
pub async fn retry_if<T, E, F, Fut, P>(
    policy: &RetryPolicy,
    operation: F,
    mut should_retry: P,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: FnMut(&E) -> bool,
{
    run(policy, operation, |e| {
        should_retry(e).then_some(Duration::ZERO)
    })
    .await
}

/// `advice(e)` is `None` to stop, or `Some(floor)` to retry after at least `floor`.
async fn run<T, E, F, Fut, A>(policy: &RetryPolicy, mut operation: F, mut advice: A) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    A: FnMut(&E) -> Option<Duration>,
{
    let attempts_total = metrics::counter!("foundation_retry_attempts_total");
    let mut attempt = 0u32;
    loop {
        let err = match operation().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        attempt += 1;
        if attempt >= policy.max_attempts.get() {
            return Err(err);
        }
        let Some(floor) = advice(&err) else {
            return Err(err);
        };
        let delay = policy.backoff.delay(attempt - 1).max(floor);
        tokio::time::sleep(delay).await;
        attempts_total.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn jitter_stays_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
            let b = Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(500),
                jitter,
            };
            for attempt in 0..20 {
                let max = b.max_delay(attempt);
                assert_eq!(
                    max,
                    Duration::from_millis(10 * (1u64 << attempt.min(6))).min(b.cap)
                );
                for _ in 0..50 {
                    let d = b.delay_with_rng(attempt, &mut rng);
                    assert!(d <= max, "{jitter:?} {d:?} > {max:?}");
                    match jitter {
                        Jitter::None => assert_eq!(d, max),
                        Jitter::Equal => assert!(d >= max / 2),
                        Jitter::Full => {}
                    }
                }
            }
        }
    }

    #[test]
    fn full_jitter_actually_varies() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let a: Vec<_> = (0..10).map(|_| b.delay_with_rng(3, &mut rng)).collect();
        assert!(a.iter().any(|d| *d != a[0]));
    }

    #[test]
    fn policy_loads_from_toml() {
        let p: RetryPolicy = toml::from_str(
            "max_attempts = 5\nbackoff = { base = \"10ms\", cap = \"1s\", jitter = \"equal\" }",
        )
        .unwrap();
        assert_eq!(p.max_attempts.get(), 5);
        assert_eq!(p.backoff.base, Duration::from_millis(10));
        assert_eq!(p.backoff.jitter, Jitter::Equal);
        assert!(toml::from_str::<RetryPolicy>("max_attempts = 0").is_err());
    }
}
