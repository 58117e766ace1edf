//! Remote-process metrics: pre-registered counters for the hot path, and the same figures
//! as plain atomics for [`RemoteStats`](super::RemoteStats).

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

use super::error::{Failure, RemoteError};

pub(crate) struct Metrics {
    sends: Counter,
    sends_urgent: Counter,
    calls: Counter,
    pub(crate) stats: Stats,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) sends: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) rejected_undecodable: AtomicU64,
    pub(crate) name_conflicts: AtomicU64,
    pub(crate) signals_lost: AtomicU64,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            sends: metrics::counter!("foundation_remote_sends_total", "lane" => "normal"),
            sends_urgent: metrics::counter!("foundation_remote_sends_total", "lane" => "urgent"),
            calls: metrics::counter!("foundation_remote_calls_total"),
            stats: Stats::default(),
        }
    }

    pub(crate) fn sent(&self, urgent: bool) {
        if urgent {
            self.sends_urgent.increment(1);
        } else {
            self.sends.increment(1);
        }
        bump(&self.stats.sends);
    }

    pub(crate) fn called(&self) {
        self.calls.increment(1);
        bump(&self.stats.calls);
    }

    /// An operation of this node failed (returned, or resolved, with `e`).
    pub(crate) fn failed(&self, op: &'static str, e: &RemoteError) {
        metrics::counter!("foundation_remote_failures_total", "op" => op, "reason" => e.label())
            .increment(1);
        bump(&self.stats.failures);
    }

    /// A cast that arrived here was not delivered.
    pub(crate) fn dropped(&self, f: &Failure) {
        metrics::counter!("foundation_remote_dropped_total", "reason" => f.label()).increment(1);
        bump(&self.stats.dropped);
        if matches!(f, Failure::Undecodable(_)) {
            bump(&self.stats.undecodable);
        }
    }

    /// A receiving node reported a cast from this node undelivered.
    pub(crate) fn rejected(&self, f: &Failure) {
        metrics::counter!("foundation_remote_rejected_total", "reason" => f.label()).increment(1);
        bump(&self.stats.rejected);
        if matches!(f, Failure::Undecodable(_)) {
            bump(&self.stats.rejected_undecodable);
        }
    }

    pub(crate) fn name_conflict(&self) {
        metrics::counter!("foundation_remote_name_conflicts_total").increment(1);
        bump(&self.stats.name_conflicts);
    }

    /// A control signal (down, link exit, claim, rejection notice, answer) could not be
    /// sent, or a fence overflowed.
    pub(crate) fn signal_lost(&self, reason: &'static str) {
        metrics::counter!("foundation_remote_signals_lost_total", "reason" => reason).increment(1);
        bump(&self.stats.signals_lost);
    }

    /// An answer arrived for a call no longer waiting (timed out or given up).
    pub(crate) fn late_answer(&self) {
        metrics::counter!("foundation_remote_late_answers_total").increment(1);
    }
}

/// Describes the remote-process metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_remote_sends_total",
        "Remote sends (casts) handed to the node, by mailbox lane."
    );
    metrics::describe_counter!("foundation_remote_calls_total", "Remote calls made.");
    metrics::describe_counter!(
        "foundation_remote_failures_total",
        "Remote operations (send, call, monitor, link, register) that failed, by operation and reason."
    );
    metrics::describe_counter!(
        "foundation_remote_dropped_total",
        "Remote messages that arrived at this node and were not delivered (no process, mailbox full, undecodable)."
    );
    metrics::describe_counter!(
        "foundation_remote_rejected_total",
        "Remote messages sent by this node that the receiving node reported undelivered, by reason."
    );
    metrics::describe_counter!(
        "foundation_remote_name_conflicts_total",
        "Cluster-wide name conflicts settled at this node (after a partition heals)."
    );
    metrics::describe_counter!(
        "foundation_remote_late_answers_total",
        "Answers to remote calls that arrived after the caller stopped waiting (dropped)."
    );
    metrics::describe_counter!(
        "foundation_remote_signals_lost_total",
        "Remote control signals (down, link exit, claims, rejection notices, call answers) that could not be sent (or fences that overflowed), by reason."
    );
}
