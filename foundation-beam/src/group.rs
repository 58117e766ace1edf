//! Metric groups: process metrics whose cardinality does not grow with the process count.
//!
//! A node may run a million processes; Prometheus wants a bounded set of label values. So
//! process metrics are never labelled with a process's name or id. Every process belongs
//! to one [`MetricsGroup`] and its mailbox and life-cycle numbers are **aggregated** into
//! the group's series:
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_processes_live{group}` | gauge: processes of the group running now |
//! | `foundation_processes_started_total{group}` | counter: incarnations started |
//! | `foundation_process_exits_total{group,reason}` | counter: exits by reason (`normal`, `shutdown`, `killed`, `panic`, `linked`, `failed`) |
//! | `foundation_mailbox_backlog{group}` | gauge: messages queued in the group's mailboxes (sum) |
//! | `foundation_mailbox_dropped_total{group,policy}` | counter: messages dropped by an overflow policy, or queued when a process stopped for good |
//! | `foundation_mailbox_rejected_total{group}` | counter: messages returned to a sender because a mailbox was full |
//!
//! Gauges are moved by increments and decrements only — each process adds its own change
//! (its backlog is reported when its receiver takes a batch and when it goes idle) — so
//! unrelated processes never overwrite one another's value.
//!
//! Which group:
//! * an [ecosystem](crate::ecosystem)'s workers: the ecosystem's name;
//! * a [supervisor](crate::supervisor)'s process children: the supervisor's name (or the
//!   group given with `SupervisorSpec::metrics_group`);
//! * a process spawned with [`SpawnOptions::group`](crate::process::SpawnOptions::group):
//!   that group, chosen by the user;
//! * any other process: the group `default`.
//!
//! A group registers its series once, when it is made, with the recorder current at that
//! moment (the global one, or a local one set with `metrics::with_local_recorder`); a spawn
//! registers nothing. Per-process numbers (backlog, dropped, rejected, exit reason) are read
//! on demand from handles ([`Handle::backlog`](crate::process::Handle::backlog),
//! [`Sender::dropped`](crate::mailbox::Sender::dropped)) and from
//! [`Ecosystem::processes`](crate::ecosystem::Ecosystem::processes), the source for an
//! observer.
//!
//! ```
//! use foundation_beam::group::MetricsGroup;
//! use foundation_beam::process::{spawn_fn, spawn_with, Context, Process, SpawnOptions};
//!
//! struct Session;
//! impl Process for Session {
//!     type Message = ();
//!     async fn handle(&mut self, _: (), _: &mut Context<()>) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sessions = MetricsGroup::new("sessions"); // one set of series for all of them
//! let handles: Vec<_> = (0..100)
//!     .map(|_| spawn_with(Session, SpawnOptions::new().group(&sessions)).unwrap())
//!     .collect();
//! assert_eq!(sessions.name(), "sessions");
//! # drop(handles);
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use metrics::{Counter, Gauge};

use crate::mailbox::Overflow;
use crate::process::ExitReason;

/// The name of the group of processes spawned without one.
pub const DEFAULT_GROUP: &str = "default";

/// A set of processes that share metric series (see the [module docs](self)).
///
/// Cheap to clone (one `Arc`); every process of the group holds a clone.
#[derive(Clone)]
pub struct MetricsGroup {
    inner: Arc<GroupMetrics>,
}

pub(crate) struct GroupMetrics {
    name: Arc<str>,
    /// By [`Overflow`] policy, in the order of `policy_index`.
    dropped: [Counter; 4],
    rejected: Counter,
    backlog: Gauge,
    live: Gauge,
    started: Counter,
    /// By exit reason, in the order of `reason_index`.
    exits: [Counter; 6],
}

const POLICIES: [Overflow; 4] = [
    Overflow::Backpressure,
    Overflow::DropOldest,
    Overflow::DropNewest,
    Overflow::Reject,
];
const REASONS: [&str; 6] = ["normal", "shutdown", "killed", "panic", "linked", "failed"];

fn policy_index(policy: Overflow) -> usize {
    match policy {
        Overflow::Backpressure => 0,
        Overflow::DropOldest => 1,
        Overflow::DropNewest => 2,
        Overflow::Reject => 3,
    }
}

fn reason_index(reason: &ExitReason) -> usize {
    match reason {
        ExitReason::Normal => 0,
        ExitReason::Shutdown => 1,
        ExitReason::Killed => 2,
        ExitReason::Panic(_) => 3,
        ExitReason::Linked { .. } => 4,
        ExitReason::Failed(_) => 5,
    }
}

impl fmt::Debug for MetricsGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsGroup")
            .field("name", &self.inner.name)
            .finish()
    }
}

thread_local! {
    /// The default group, per recorder (by its address), for this thread.
    static DEFAULT: RefCell<Option<(usize, MetricsGroup)>> = const { RefCell::new(None) };
}

/// The address of the recorder `metrics` uses on this thread now (local, global or no-op).
fn current_recorder() -> usize {
    metrics::with_recorder(|r| r as *const dyn metrics::Recorder as *const () as usize)
}

impl MetricsGroup {
    /// A group named `name`; registers its series with the current recorder. Make one per
    /// set of processes and share it (a clone per spawn): making a group per process
    /// would bring back one set of series per process.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        let name: Arc<str> = name.into();
        let g = || name.to_string();
        let dropped = POLICIES.map(|p| {
            metrics::counter!("foundation_mailbox_dropped_total", "group" => g(), "policy" => p.label())
        });
        let exits = REASONS.map(
            |r| metrics::counter!("foundation_process_exits_total", "group" => g(), "reason" => r),
        );
        let inner = GroupMetrics {
            dropped,
            rejected: metrics::counter!("foundation_mailbox_rejected_total", "group" => g()),
            backlog: metrics::gauge!("foundation_mailbox_backlog", "group" => g()),
            live: metrics::gauge!("foundation_processes_live", "group" => g()),
            started: metrics::counter!("foundation_processes_started_total", "group" => g()),
            exits,
            name,
        };
        MetricsGroup {
            inner: Arc::new(inner),
        }
    }

    /// The group of processes spawned without one, named [`DEFAULT_GROUP`], bound to the
    /// current recorder.
    ///
    /// It is made once per recorder and thread and then reused, so spawning registers
    /// nothing. (A cache keyed by the recorder's address: a local recorder dropped and
    /// another made at the same address on the same thread would be taken for the first.)
    pub fn default_group() -> Self {
        let recorder = current_recorder();
        DEFAULT.with(|d| {
            let mut d = d.borrow_mut();
            match &*d {
                Some((r, g)) if *r == recorder => g.clone(),
                _ => {
                    let g = MetricsGroup::new(DEFAULT_GROUP);
                    *d = Some((recorder, g.clone()));
                    g
                }
            }
        })
    }

    /// The group's name (its `group` label).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn metrics(&self) -> &Arc<GroupMetrics> {
        &self.inner
    }
}

impl GroupMetrics {
    pub(crate) fn dropped(&self, policy: Overflow, n: u64) {
        self.dropped[policy_index(policy)].increment(n);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }

    /// Moves the group's backlog by one mailbox's change from `was` to `now`.
    #[inline]
    pub(crate) fn backlog_moved(&self, was: usize, now: usize) {
        if now > was {
            self.backlog.increment((now - was) as f64);
        } else if was > now {
            self.backlog.decrement((was - now) as f64);
        }
    }

    /// An incarnation of a process of the group starts.
    pub(crate) fn process_started(&self) {
        self.live.increment(1.0);
        self.started.increment(1);
    }

    /// An incarnation stopped with `reason`.
    pub(crate) fn process_exited(&self, reason: &ExitReason) {
        self.live.decrement(1.0);
        self.exits[reason_index(reason)].increment(1);
    }
}

/// Describes the group metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "foundation_processes_live",
        "Processes of a group running now."
    );
    metrics::describe_counter!(
        "foundation_processes_started_total",
        "Process incarnations started in a group (restarts included)."
    );
    metrics::describe_counter!(
        "foundation_process_exits_total",
        "Process incarnations of a group that stopped, by exit reason."
    );
    metrics::describe_counter!(
        "foundation_mailbox_dropped_total",
        "Messages dropped by the overflow policy of a group's mailboxes, or queued when a process stopped for good."
    );
    metrics::describe_counter!(
        "foundation_mailbox_rejected_total",
        "Messages returned to the sender because a mailbox of the group was full."
    );
    metrics::describe_gauge!(
        "foundation_mailbox_backlog",
        "Messages waiting in the mailboxes of a group's processes (sum)."
    );
}
