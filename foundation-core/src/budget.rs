//! A work budget for long loops that must not hold a runtime worker thread.
//!
//! The BEAM preempts a process after a fixed number of reductions. tokio cannot preempt a
//! task, so a CPU-heavy loop cooperates instead: it calls [`Budget::tick`] once per unit
//! of work, and every `units` ticks the call yields to the scheduler so that other tasks
//! on the same worker thread run. `foundation-beam` builds its yielding scheduler on this.
//!
//! ```
//! use foundation_core::budget::Budget;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut budget = Budget::new(1024);
//! let mut sum = 0u64;
//! for i in 0..100_000u64 {
//!     sum += i;
//!     budget.tick().await; // yields every 1024 iterations
//! }
//! assert_eq!(sum, 4_999_950_000);
//! assert_eq!(budget.yields(), 100_000 / 1024);
//! # }
//! ```

/// Counts units of work and yields to the tokio scheduler every `units` of them.
#[derive(Debug, Clone)]
pub struct Budget {
    units: u32,
    left: u32,
    yields: u64,
}

/// Units per yield used by [`Budget::default`]: small enough that a unit of a few hundred
/// nanoseconds keeps a slice under a millisecond.
pub const DEFAULT_UNITS: u32 = 2000;

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_UNITS)
    }
}

impl Budget {
    /// A budget that yields every `units` ticks (at least 1).
    pub fn new(units: u32) -> Self {
        let units = units.max(1);
        Budget {
            units,
            left: units,
            yields: 0,
        }
    }

    /// Spend `n` units; yields when the budget is used up, then refills it.
    #[inline]
    pub async fn spend(&mut self, n: u32) {
        if n >= self.left {
            self.left = self.units;
            self.yields += 1;
            tokio::task::yield_now().await;
        } else {
            self.left -= n;
        }
    }

    /// Spend one unit. See [`Budget::spend`].
    #[inline]
    pub async fn tick(&mut self) {
        self.spend(1).await
    }

    /// How many times this budget has yielded.
    pub fn yields(&self) -> u64 {
        self.yields
    }

    /// Units per slice.
    pub fn units(&self) -> u32 {
        self.units
    }
}
