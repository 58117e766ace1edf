//! Guards: an experimental feature behind a circuit breaker, with a fallback.
//!
//! A [`Guard`] runs the experimental path through a core
//! [`CircuitBreaker`]. When the path fails, or
//! the breaker is open (after `failure_threshold` consecutive failures, for
//! `reset_timeout`), the fallback runs instead and its value is returned. Every outcome
//! is counted:
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_guard_calls_total{guard,outcome}` | counter: `ok`, `failed`, `rejected` (breaker open) |
//! | `foundation_guard_fallbacks_total{guard}` | counter |
//!
//! The breaker's own metrics (`foundation_breaker_*{breaker="guard.<name>"}`) show its
//! state and transitions.
//!
//! ```
//! use foundation_intelligence::guard::Guard;
//! use foundation_intelligence::core::resilience::BreakerSettings;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let guard = Guard::new("new-parser", BreakerSettings::default());
//! let v = guard
//!     .call(async { Err::<u32, _>("unsupported input") }, |_why| async { 7 })
//!     .await;
//! assert_eq!(v, 7);
//! assert_eq!(guard.stats().failed, 1);
//! assert_eq!(guard.stats().fallbacks, 1);
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::Counter;

use crate::core::resilience::{BreakerSettings, BreakerState, CircuitBreaker, Protected};

/// Why the fallback ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackReason {
    /// The experimental path ran and failed with this error (displayed).
    Failed(String),
    /// The breaker was open: the experimental path did not run.
    CircuitOpen,
}

/// Counts of a guard's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Experimental path succeeded.
    pub ok: u64,
    /// Experimental path failed.
    pub failed: u64,
    /// Experimental path not run (breaker open).
    pub rejected: u64,
    /// Fallbacks run (`failed + rejected`).
    pub fallbacks: u64,
}

struct Inner {
    name: String,
    breaker: CircuitBreaker,
    ok: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    m_ok: Counter,
    m_failed: Counter,
    m_rejected: Counter,
    m_fallbacks: Counter,
}

/// An experimental feature behind a breaker. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.inner.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Describes the guard metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_guard_calls_total",
        "Calls of guarded experimental features by outcome (ok, failed, rejected by an open breaker)."
    );
    metrics::describe_counter!(
        "foundation_guard_fallbacks_total",
        "Fallbacks run by guards."
    );
}

impl Guard {
    /// A guard named `name`; its breaker is named `guard.<name>`.
    pub fn new(name: impl Into<String>, breaker: BreakerSettings) -> Self {
        let name = name.into();
        let c = |outcome: &'static str| metrics::counter!("foundation_guard_calls_total", "guard" => name.clone(), "outcome" => outcome);
        Guard {
            inner: Arc::new(Inner {
                breaker: CircuitBreaker::new(format!("guard.{name}"), breaker),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                m_ok: c("ok"),
                m_failed: c("failed"),
                m_rejected: c("rejected"),
                m_fallbacks: metrics::counter!("foundation_guard_fallbacks_total", "guard" => name.clone()),
                name,
            }),
        }
    }

    /// The guard's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The breaker's state.
    pub fn state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Outcome counts so far.
    pub fn stats(&self) -> GuardStats {
        let i = &self.inner;
        let (failed, rejected) = (
            i.failed.load(Ordering::Relaxed),
            i.rejected.load(Ordering::Relaxed),
        );
        GuardStats {
            ok: i.ok.load(Ordering::Relaxed),
            failed,
            rejected,
            fallbacks: failed + rejected,
        }
    }

    /// Runs `experimental` through the breaker; on failure or an open breaker runs
    /// `fallback` with the reason and returns its value. If the returned future is
    /// dropped while `experimental` runs, nothing is counted.
    pub async fn call<T, E, F, FB, FBFut>(&self, experimental: F, fallback: FB) -> T
    where
        E: Display,
        F: Future<Output = Result<T, E>>,
        FB: FnOnce(FallbackReason) -> FBFut,
        FBFut: Future<Output = T>,
    {
        let i = &self.inner;
        let reason = match i.breaker.call(experimental).await {
            Ok(v) => {
                i.ok.fetch_add(1, Ordering::Relaxed);
                i.m_ok.increment(1);
                return v;
            }
            Err(Protected::Failed(e)) => {
                i.failed.fetch_add(1, Ordering::Relaxed);
                i.m_failed.increment(1);
                tracing::debug!(guard = %i.name, error = %e, "guard: experimental path failed, using fallback");
                FallbackReason::Failed(e.to_string())
            }
            Err(Protected::Rejected(_)) | Err(Protected::TimedOut(_)) => {
                i.rejected.fetch_add(1, Ordering::Relaxed);
                i.m_rejected.increment(1);
                FallbackReason::CircuitOpen
            }
        };
        i.m_fallbacks.increment(1);
        fallback(reason).await
    }
}
