//! Resilience primitives: circuit breaker, keyed rate limiter, retry with backoff, and
//! [`execute_protected`] that combines them.
//!
//! * [`CircuitBreaker`] — stops calling a failing dependency for a while, then lets a
//!   bounded number of probes through; [`BreakerRegistry`] holds named breakers.
//! * [`RateLimiter`] — GCRA limits (via `governor`) keyed by *(entity, operation)*, with a
//!   quota per operation and a default one.
//! * [`Backoff`], [`RetryPolicy`], [`retry`] — capped exponential backoff with jitter;
//!   retries only what [`Error::is_retryable`](crate::Error::is_retryable) allows.
//! * [`execute_protected`] with [`Protections`] — rate limit → breaker → timeout, in that
//!   order, returning a [`Protected`] error that tells a protection's rejection from the
//!   operation's own failure.
//!
//! All time is read from `tokio::time`, so tests run with
//! `#[tokio::test(start_paused = true)]` and `tokio::time::advance`.
//!
//! # Metrics
//! * gauge `foundation_breaker_state{breaker}` — 0 closed, 1 half-open, 2 open;
//! * counter `foundation_breaker_transitions_total{breaker,to}`;
//! * counter `foundation_breaker_rejections_total{breaker}`;
//! * counter `foundation_limiter_rejections_total{limiter,operation}`;
//! * gauge `foundation_limiter_keys{limiter}` — keys held, updated by
//!   [`RateLimiter::retain_recent`];
//! * counter `foundation_retry_attempts_total` — retries made (first attempts excluded).
//!
//! Handles on hot paths are registered when the breaker or limiter is created, with the
//! recorder installed at that time.

mod breaker;
mod limiter;
mod protect;
mod retry;

use std::fmt;

use crate::error::Error;

pub use breaker::{BreakerPermit, BreakerRegistry, BreakerSettings, BreakerState, CircuitBreaker};
pub use limiter::{CleanupTask, LimitSettings, LimiterSettings, RateLimiter};
pub use protect::{execute_protected, Protections};
pub use retry::{retry, retry_if, Backoff, Jitter, RetryAdvice, RetryPolicy};

/// The error of a protected call: either a protection stopped it, or the operation itself
/// failed.
///
/// Returned by [`CircuitBreaker::call`] and [`execute_protected`]. The variants differ in
/// what happened to the operation, which matters for non-idempotent work:
///
/// | variant | operation future |
/// |---|---|
/// | [`Rejected`](Self::Rejected) | never polled (rate limited, breaker open) |
/// | [`TimedOut`](Self::TimedOut) | polled, then dropped at the deadline — it may have had effects |
/// | [`Failed`](Self::Failed) | ran to completion and returned its own error |
#[derive(Debug)]
pub enum Protected<E> {
    /// A protection refused the call before it started: [`Error::RateLimited`] or
    /// [`Error::CircuitOpen`].
    Rejected(Error),
    /// The operation did not finish within the deadline ([`Error::Timeout`]) and was
    /// cancelled.
    TimedOut(Error),
    /// The operation ran and returned this error.
    Failed(E),
}

impl<E> Protected<E> {
    /// The protection error, if a protection stopped the call.
    pub fn protection_error(&self) -> Option<&Error> {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) => Some(e),
            Protected::Failed(_) => None,
        }
    }

    /// The operation's own error, if it ran and failed.
    pub fn into_failed(self) -> Option<E> {
        match self {
            Protected::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the operation future was never polled.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Protected::Rejected(_))
    }

    /// Maps the operation's error.
    pub fn map_failed<F>(self, f: impl FnOnce(E) -> F) -> Protected<F> {
        match self {
            Protected::Rejected(e) => Protected::Rejected(e),
            Protected::TimedOut(e) => Protected::TimedOut(e),
            Protected::Failed(e) => Protected::Failed(f(e)),
        }
    }

    /// Collapses into the operation's error type, for callers whose error type absorbs
    /// `foundation_core::Error`.
    pub fn flatten(self) -> E
    where
        E: From<Error>,
    {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) => E::from(e),
            Protected::Failed(e) => e,
        }
    }
}

impl Protected<Error> {
    /// Whether trying again later may help: the protection error's or, for
    /// [`Failed`](Self::Failed), the operation error's [`Error::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) | Protected::Failed(e) => {
                e.is_retryable()
            }
        }
    }
}

impl<E: fmt::Display> fmt::Display for Protected<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protected::Rejected(e) => write!(f, "rejected: {e}"),
            Protected::TimedOut(e) => write!(f, "{e}"),
            Protected::Failed(e) => write!(f, "operation failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Protected<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Protected::Rejected(e) | Protected::TimedOut(e) => Some(e),
            Protected::Failed(e) => Some(e),
        }
    }
}

/// Serde helper: a duration written as a string with a unit (`"250ms"`, `"30s"`, `"2m"`,
/// `"1h"`, `"1500us"`) or as an integer number of milliseconds.
pub(crate) mod duration_serde {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"250ms\", \"30s\", \"2m\" or integer milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_millis(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_millis)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }

    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration `{s}` has no unit (ms, s, m, h, us)"))?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("duration `{s}` does not start with a number"))?;
        let d = match unit.trim() {
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or("too long")?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or("too long")?,
            other => return Err(format!("unknown duration unit `{other}` in `{s}`")),
        };
        Ok(d)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_units_and_rejects_garbage() {
            assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
            assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
            assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
            assert_eq!(parse("7us"), Ok(Duration::from_micros(7)));
            assert!(parse("30").is_err());
            assert!(parse("s").is_err());
            assert!(parse("3 fortnights").is_err());
        }
    }
}

/// Describes the resilience metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "foundation_breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "foundation_breaker_transitions_total",
        "Circuit breaker state transitions, by target state."
    );
    describe_counter!(
        "foundation_breaker_rejections_total",
        "Calls rejected by an open or saturated circuit breaker."
    );
    describe_counter!(
        "foundation_limiter_rejections_total",
        "Calls rejected by a rate limiter."
    );
    describe_gauge!("foundation_limiter_keys", "Keys tracked by a rate limiter.");
    describe_counter!(
        "foundation_retry_attempts_total",
        "Attempts made by retry loops."
    );
}
