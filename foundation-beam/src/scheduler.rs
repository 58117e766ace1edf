//! CPU work that shares the runtime: the BEAM's reductions and `erlang:yield` on tokio.
//!
//! The BEAM preempts a process after a fixed number of reductions, so a long computation
//! never starves the other processes of its scheduler. tokio cannot preempt a task: a loop
//! that computes for 500 ms holds its worker thread for 500 ms, and every timer, socket
//! and message handled by that worker waits. The functions here run such work in slices:
//! after every `units` items they yield to tokio through a
//! [`Budget`], so other tasks run between slices.
//!
//! * [`cpu_intensive`] / [`cpu_intensive_with`] process items in the caller's task, one
//!   slice at a time, and return the results in order.
//! * [`spread`] / [`spread_with`] split the items into contiguous parts, run each part as
//!   its own task (so the runtime's worker threads share the work), each part yielding on
//!   its own budget, and join the results in order. The parts are owned by the returned
//!   future: dropping it (a timeout, a `select!` that picks another branch, an aborted
//!   caller) aborts the parts at their next yield.
//!
//! A panicking item does not unwind through the caller: it surfaces as
//! [`WorkError::Panicked`] with the index of the item, and the remaining items are not
//! processed.
//!
//! ```
//! use foundation_beam::core::budget::Budget;
//! use foundation_beam::scheduler::{cpu_intensive_with, spread};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), foundation_beam::scheduler::WorkError> {
//! // In the caller's task, yielding every 1000 items:
//! let mut budget = Budget::new(1000);
//! let squares = cpu_intensive_with(0..10_000u64, &mut budget, |x| x * x).await?;
//! assert_eq!(squares[9_999], 9_999 * 9_999);
//! assert_eq!(budget.yields(), 10);
//!
//! // Across the worker threads (0 parts = one per worker), results still in order:
//! let lengths = spread(vec!["a", "bb", "ccc"], 0, |s: &str| s.len()).await?;
//! assert_eq!(lengths, vec![1, 2, 3]);
//! # Ok(()) }
//! ```
//!
//! # Choosing `units`
//! A slice should take well under a millisecond: `units` ≈ 0.5 ms / (cost of one item).
//! [`DEFAULT_UNITS`](crate::core::budget::DEFAULT_UNITS) (2000) suits items of a few
//! hundred nanoseconds. A yield costs one trip through the tokio scheduler, so with
//! slices of a few hundred microseconds the job's wall time does not change measurably
//! (`benches/benches/scheduler.rs` compares it with a plain loop).
//!
//! # When to use `spawn_blocking` instead
//! Use [`tokio::task::spawn_blocking`] (or a dedicated thread pool) when the work cannot
//! be cut into short items:
//! * one indivisible call that takes long (a C library, compressing or hashing one large
//!   buffer in a single call, a regex over a huge input);
//! * code that blocks the thread rather than computing (synchronous file or network I/O,
//!   a `std::sync` lock held by another thread, `std::thread::sleep`);
//! * work that should not compete with async tasks for the runtime's workers at all (a
//!   multi-second batch job on a latency-sensitive server): the blocking pool has its own
//!   threads, whereas yielding work still takes its share of the workers.
//!
//! Use this module when the work is a sequence of small steps and should be fair to the
//! other tasks of the runtime, and cancellable at any slice boundary, which
//! `spawn_blocking` is not: a blocking closure always runs to completion.
//!
//! # Metrics
//! | name | kind |
//! |---|---|
//! | `foundation_scheduler_yields_total` | counter, yields to the tokio scheduler |
//! | `foundation_scheduler_units_total` | counter, items processed |
//!
//! [`describe_metrics`] registers their HELP text.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use foundation_core::budget::Budget;
use foundation_core::telemetry::TaskGuard;
use tokio::task::JoinSet;

/// Why a scheduled computation did not produce its results.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// The function panicked on the item at `index` (its position in the input).
    /// Items after it were not processed.
    #[error("item {index} panicked: {message}")]
    Panicked {
        /// Position of the item in the input.
        index: usize,
        /// The panic message, when it was a string.
        message: String,
    },
    /// A part spawned by [`spread`] ended without a result: the runtime was shutting
    /// down and cancelled it, or it panicked outside the item function.
    #[error("part {part} ended without a result: {reason}")]
    PartLost {
        /// Index of the part (parts are numbered in input order).
        part: usize,
        /// What the runtime reported.
        reason: String,
    },
}

/// Processes `items` with `f` in the caller's task, yielding to tokio every
/// [`DEFAULT_UNITS`](crate::core::budget::DEFAULT_UNITS) items; returns the results in
/// input order. See [`cpu_intensive_with`] to choose the slice size.
///
/// # Errors
/// [`WorkError::Panicked`] if `f` panics; the items after it are dropped unprocessed.
pub async fn cpu_intensive<I, R, F>(items: I, f: F) -> Result<Vec<R>, WorkError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> R,
{
    let mut budget = Budget::default();
    cpu_intensive_with(items, &mut budget, f).await
}

/// Processes `items` with `f` in the caller's task, spending one unit of `budget` per
/// item (so it yields every `budget.units()` items); returns the results in input order.
///
/// The budget is borrowed so that the caller can read [`Budget::yields`] afterwards, or
/// carry the same budget across several calls of one long job. Dropping the returned
/// future stops the work at the current slice.
///
/// # Errors
/// [`WorkError::Panicked`] if `f` panics; the items after it are dropped unprocessed.
pub async fn cpu_intensive_with<I, R, F>(
    items: I,
    budget: &mut Budget,
    f: F,
) -> Result<Vec<R>, WorkError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> R,
{
    run(items, budget, f, 0).await
}

/// Splits `items` into `parts` contiguous parts (0 = one per runtime worker thread, see
/// [`workers`]), runs each part as a task on the current runtime, each yielding every
/// [`DEFAULT_UNITS`](crate::core::budget::DEFAULT_UNITS) items, and returns all results in
/// input order. See [`spread_with`].
///
/// # Errors
/// As [`spread_with`].
pub async fn spread<T, R, F>(items: Vec<T>, parts: usize, f: F) -> Result<Vec<R>, WorkError>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    spread_with(items, parts, Budget::default(), f).await
}

/// Splits `items` into `parts` contiguous parts (0 = one per runtime worker thread; never
/// more parts than items), runs each part as a task on the current runtime with its own
/// copy of `budget`, and returns all results in input order.
///
/// The parts live in a [`JoinSet`] owned by the returned future: dropping the future
/// aborts every part that has not finished (a part stops at its next yield, so within one
/// slice). When one part fails, the others are aborted the same way.
///
/// Must be called within a tokio runtime (it spawns). On a current-thread runtime the
/// parts interleave on the one thread; the results are the same.
///
/// # Errors
/// * [`WorkError::Panicked`] if `f` panics on an item (index in the whole input).
/// * [`WorkError::PartLost`] if a part was cancelled by the runtime (shutdown).
pub async fn spread_with<T, R, F>(
    items: Vec<T>,
    parts: usize,
    budget: Budget,
    f: F,
) -> Result<Vec<R>, WorkError>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let total = items.len();
    if total == 0 {
        return Ok(Vec::new());
    }
    let parts = if parts == 0 { workers() } else { parts }.clamp(1, total);
    let f = Arc::new(f);
    let mut set = JoinSet::new();
    let mut ids = Vec::with_capacity(parts);
    let mut items = items.into_iter();
    let mut base = 0;
    for part in 0..parts {
        // Sizes differ by at most one item: the first `total % parts` parts take one more.
        let len = total / parts + usize::from(part < total % parts);
        let part_items: Vec<T> = items.by_ref().take(len).collect();
        let f = Arc::clone(&f);
        let mut budget = budget.clone();
        let handle = set.spawn(async move {
            let _guard = TaskGuard::new();
            let result = run(part_items, &mut budget, |item| f(item), base).await;
            (part, result)
        });
        ids.push(handle.id());
        base += len;
    }

    let mut results: Vec<Option<Vec<R>>> = (0..ids.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((part, Ok(values))) => results[part] = Some(values),
            // Returning drops `set`, which aborts the other parts.
            Ok((_, Err(e))) => return Err(e),
            Err(e) => {
                let part = ids
                    .iter()
                    .position(|id| *id == e.id())
                    .unwrap_or(usize::MAX);
                return Err(WorkError::PartLost {
                    part,
                    reason: e.to_string(),
                });
            }
        }
    }
    let mut out = Vec::with_capacity(total);
    for values in results.into_iter().flatten() {
        out.extend(values);
    }
    Ok(out)
}

/// Worker threads of the current tokio runtime (1 outside a runtime or on a
/// current-thread runtime): the part count [`spread`] uses for `parts = 0`.
pub fn workers() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .max(1)
}

/// The loop behind every function of this module. `base` is the index of the first item
/// in the caller's input, so that a panic names the item's position in the whole input.
async fn run<I, R, F>(
    items: I,
    budget: &mut Budget,
    mut f: F,
    base: usize,
) -> Result<Vec<R>, WorkError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> R,
{
    let items = items.into_iter();
    let mut out = Vec::with_capacity(items.size_hint().0);
    let mut meter = Meter::new();
    for (offset, item) in items.enumerate() {
        // AssertUnwindSafe: after a panic we return at once and never touch `f` again;
        // the caller sees the error, not state that `f` left half-updated.
        match catch_unwind(AssertUnwindSafe(|| f(item))) {
            Ok(value) => out.push(value),
            Err(payload) => {
                meter.flush();
                return Err(WorkError::Panicked {
                    index: base + offset,
                    message: panic_message(payload.as_ref()),
                });
            }
        }
        meter.tick(budget).await;
    }
    meter.flush();
    Ok(out)
}

/// Counts units and yields into the metrics, touching the recorder once per slice rather
/// than once per item.
struct Meter {
    yields: metrics::Counter,
    units: metrics::Counter,
    pending_units: u64,
}

impl Meter {
    fn new() -> Self {
        Meter {
            yields: metrics::counter!("foundation_scheduler_yields_total"),
            units: metrics::counter!("foundation_scheduler_units_total"),
            pending_units: 0,
        }
    }

    #[inline]
    async fn tick(&mut self, budget: &mut Budget) {
        self.pending_units += 1;
        let before = budget.yields();
        budget.tick().await;
        if budget.yields() != before {
            self.yields.increment(1);
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending_units > 0 {
            self.units.increment(self.pending_units);
            self.pending_units = 0;
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Registers the HELP text of this module's metrics with the current recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_scheduler_yields_total",
        "Times scheduled CPU work yielded to the tokio scheduler (one per budget slice)."
    );
    metrics::describe_counter!(
        "foundation_scheduler_units_total",
        "Items processed by scheduled CPU work (cpu_intensive, spread)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42u32), "non-string panic payload");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn panic_index_is_offset_by_base() {
        let mut budget = Budget::new(4);
        let err = run(0..10u32, &mut budget, |x| assert!(x != 7, "seven"), 100)
            .await
            .unwrap_err();
        match err {
            WorkError::Panicked { index, message } => {
                assert_eq!(index, 107);
                assert!(message.contains("seven"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
