//! Two-lane mailboxes.
//!
//! A mailbox has an **urgent lane** that is always served before the **normal lane**, a
//! capacity and an [`Overflow`] policy (from the process's [`MemoryStrategy`]), and an
//! optional byte budget. Every message dropped by a policy is counted
//! (`foundation_mailbox_dropped_total{process,policy}`), and the backlog is exported as a
//! gauge (`foundation_mailbox_backlog{process}`).
//!
//! The receiving process takes messages from the shared queue in batches (up to
//! [`BATCH`] per lock) and serves them from a private buffer; before each normal message it
//! checks an atomic count of urgent messages, so an urgent message waits at most for the
//! message being handled. Senders take the lock once per message; the receiver is woken
//! only when its queue goes from empty to non-empty.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Messages a receiver takes from the shared queue per lock.
pub const BATCH: usize = 64;

/// What a bounded mailbox does when a message arrives and it is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The sender waits for room (`send().await`); `try_send` returns the message.
    #[default]
    Backpressure,
    /// The oldest queued message of the lane is dropped (counted) to make room.
    DropOldest,
    /// The new message is dropped (counted).
    DropNewest,
    /// The new message is returned to the sender as an error (counted).
    Reject,
}

impl Overflow {
    fn label(self) -> &'static str {
        match self {
            Overflow::Backpressure => "backpressure",
            Overflow::DropOldest => "drop_oldest",
            Overflow::DropNewest => "drop_newest",
            Overflow::Reject => "reject",
        }
    }
}

/// How a process uses memory: the Rust form of the BEAM's per-process heap settings.
///
/// Rust has no per-process garbage collector to tune; what a process can bound is how
/// much it lets pile up in its mailbox. `capacity` bounds each lane in messages;
/// `byte_budget` bounds the bytes queued (as measured by the size function given to
/// `SpawnOptions::message_size`, default `size_of::<M>()`). Either limit full
/// triggers the `overflow` policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStrategy {
    /// Messages per lane; `None` is unbounded (the backlog is still counted and exported).
    pub capacity: Option<usize>,
    /// What happens when a lane is full.
    pub overflow: Overflow,
    /// Bytes that may be queued in the mailbox; `None` is unlimited.
    pub byte_budget: Option<usize>,
}

impl Default for MemoryStrategy {
    fn default() -> Self {
        MemoryStrategy {
            capacity: Some(1024),
            overflow: Overflow::Backpressure,
            byte_budget: None,
        }
    }
}

impl MemoryStrategy {
    /// An unbounded mailbox (no capacity, no byte budget).
    pub fn unbounded() -> Self {
        MemoryStrategy {
            capacity: None,
            overflow: Overflow::Backpressure,
            byte_budget: None,
        }
    }

    /// A mailbox of `capacity` messages per lane with the given policy.
    pub fn bounded(capacity: usize, overflow: Overflow) -> Self {
        MemoryStrategy {
            capacity: Some(capacity.max(1)),
            overflow,
            byte_budget: None,
        }
    }

    /// Adds a byte budget.
    pub fn with_byte_budget(mut self, bytes: usize) -> Self {
        self.byte_budget = Some(bytes);
        self
    }
}

/// Where a sent message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued.
    Queued,
    /// Queued; the oldest message of the lane was dropped to make room.
    DroppedOldest,
    /// Not queued: the mailbox was full and its policy drops new messages.
    DroppedNewest,
}

/// Why a message could not be sent; the message comes back.
#[derive(PartialEq, Eq)]
pub enum SendError<M> {
    /// The mailbox is full (policy `Reject`, or `try_send` under `Backpressure`).
    Full(M),
    /// The process has stopped; nobody will read the message.
    Closed(M),
}

impl<M> std::fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("Full(..)"),
            SendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<M> std::fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("mailbox full"),
            SendError::Closed(_) => f.write_str("process stopped"),
        }
    }
}

impl<M> std::error::Error for SendError<M> {}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Full(m) | SendError::Closed(m) => m,
        }
    }
}

struct Lanes<M> {
    urgent: VecDeque<M>,
    normal: VecDeque<M>,
    bytes: usize,
}

pub(crate) struct MailboxMetrics {
    dropped: Counter,
    rejected: Counter,
    backlog: Gauge,
}

impl MailboxMetrics {
    pub(crate) fn new(process: &str, overflow: Overflow) -> Self {
        let p = process.to_string();
        MailboxMetrics {
            dropped: metrics::counter!("foundation_mailbox_dropped_total", "process" => p.clone(), "policy" => overflow.label()),
            rejected: metrics::counter!("foundation_mailbox_rejected_total", "process" => p.clone()),
            backlog: metrics::gauge!("foundation_mailbox_backlog", "process" => p),
        }
    }
}

/// Describes the mailbox metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_mailbox_dropped_total",
        "Messages dropped by a mailbox overflow policy."
    );
    metrics::describe_counter!(
        "foundation_mailbox_rejected_total",
        "Messages returned to the sender because a mailbox was full."
    );
    metrics::describe_gauge!(
        "foundation_mailbox_backlog",
        "Messages waiting in a process's mailbox."
    );
}

pub(crate) struct Shared<M> {
    lanes: Mutex<Lanes<M>>,
    /// Messages in the shared urgent lane; read without the lock before each normal message.
    urgent_pending: AtomicUsize,
    /// Messages in both shared lanes plus the receiver's private buffer.
    backlog: AtomicUsize,
    recv: Notify,
    space: Notify,
    closed: AtomicBool,
    /// Closed by a graceful stop rather than by the last sender going away.
    shutdown: AtomicBool,
    senders: AtomicUsize,
    capacity: usize,
    byte_budget: usize,
    overflow: Overflow,
    size_of: fn(&M) -> usize,
    metrics: MailboxMetrics,
}

/// The sending side of a mailbox. Cloning it is cheap; when the last clone is dropped the
/// mailbox closes and the process, once it has handled what is queued, stops normally.
pub struct Sender<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<M> Drop for Sender<M> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closed.store(true, Ordering::Release);
            self.shared.recv.notify_one();
        }
    }
}

/// The receiving side, owned by the process (and handed to its next incarnation when a
/// supervisor restarts it, so queued messages survive the restart).
pub struct Receiver<M> {
    shared: Arc<Shared<M>>,
    urgent: VecDeque<M>,
    normal: VecDeque<M>,
}

fn default_size<M>(_: &M) -> usize {
    std::mem::size_of::<M>()
}

/// Creates a mailbox for a process named `process` (the name labels its metrics).
pub(crate) fn channel<M>(
    process: &str,
    strategy: &MemoryStrategy,
    size_of: Option<fn(&M) -> usize>,
) -> (Sender<M>, Receiver<M>) {
    let shared = Arc::new(Shared {
        lanes: Mutex::new(Lanes {
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
            bytes: 0,
        }),
        urgent_pending: AtomicUsize::new(0),
        backlog: AtomicUsize::new(0),
        recv: Notify::new(),
        space: Notify::new(),
        closed: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        capacity: strategy.capacity.unwrap_or(usize::MAX),
        byte_budget: strategy.byte_budget.unwrap_or(usize::MAX),
        overflow: strategy.overflow,
        size_of: size_of.unwrap_or(default_size::<M>),
        metrics: MailboxMetrics::new(process, strategy.overflow),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
        },
    )
}

enum Push<M> {
    Done(Delivery),
    /// Full under backpressure: the sender may wait for room.
    Full(M),
    /// Full and refused by the policy (or `try_send`): returned to the sender.
    Rejected(M),
    Closed(M),
}

impl<M> Shared<M> {
    fn accounted(&self) -> bool {
        self.byte_budget != usize::MAX
    }

    fn push(&self, msg: M, urgent: bool, may_wait: bool) -> Push<M> {
        let size = if self.accounted() {
            (self.size_of)(&msg)
        } else {
            0
        };
        let mut lanes = self.lanes.lock();
        if self.closed.load(Ordering::Acquire) {
            return Push::Closed(msg);
        }
        let lane_len = if urgent {
            lanes.urgent.len()
        } else {
            lanes.normal.len()
        };
        let full = lane_len >= self.capacity || lanes.bytes.saturating_add(size) > self.byte_budget;
        let mut delivery = Delivery::Queued;
        if full {
            match self.overflow {
                Overflow::Backpressure if may_wait => return Push::Full(msg),
                Overflow::Backpressure | Overflow::Reject => {
                    drop(lanes);
                    self.metrics.rejected.increment(1);
                    return Push::Rejected(msg);
                }
                Overflow::DropNewest => {
                    drop(lanes);
                    self.metrics.dropped.increment(1);
                    return Push::Done(Delivery::DroppedNewest);
                }
                Overflow::DropOldest => {
                    // Make room in this lane: drop its oldest messages until the new one fits.
                    loop {
                        let lane = if urgent {
                            &mut lanes.urgent
                        } else {
                            &mut lanes.normal
                        };
                        let Some(old) = lane.pop_front() else { break };
                        let old_size = if self.accounted() {
                            (self.size_of)(&old)
                        } else {
                            0
                        };
                        lanes.bytes -= old_size;
                        if urgent {
                            self.urgent_pending.fetch_sub(1, Ordering::Relaxed);
                        }
                        self.backlog.fetch_sub(1, Ordering::Relaxed);
                        self.metrics.dropped.increment(1);
                        delivery = Delivery::DroppedOldest;
                        let len = if urgent {
                            lanes.urgent.len()
                        } else {
                            lanes.normal.len()
                        };
                        if len < self.capacity
                            && lanes.bytes.saturating_add(size) <= self.byte_budget
                        {
                            break;
                        }
                    }
                    if lanes.bytes.saturating_add(size) > self.byte_budget {
                        // A single message larger than the whole budget can never fit.
                        drop(lanes);
                        self.metrics.dropped.increment(1);
                        return Push::Done(Delivery::DroppedNewest);
                    }
                }
            }
        }
        let was_empty = lanes.urgent.is_empty() && lanes.normal.is_empty();
        lanes.bytes += size;
        if urgent {
            lanes.urgent.push_back(msg);
            self.urgent_pending.fetch_add(1, Ordering::Release);
        } else {
            lanes.normal.push_back(msg);
        }
        self.backlog.fetch_add(1, Ordering::Relaxed);
        drop(lanes);
        if was_empty {
            self.recv.notify_one();
        }
        Push::Done(delivery)
    }
}

impl<M> Sender<M> {
    /// Sends without waiting. Under `Backpressure` a full mailbox returns the message.
    pub fn try_send(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.try_push(msg, false)
    }

    /// Sends through the urgent lane without waiting.
    pub fn try_send_urgent(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.try_push(msg, true)
    }

    fn try_push(&self, msg: M, urgent: bool) -> Result<Delivery, SendError<M>> {
        match self.shared.push(msg, urgent, false) {
            Push::Done(d) => Ok(d),
            Push::Full(m) | Push::Rejected(m) => Err(SendError::Full(m)),
            Push::Closed(m) => Err(SendError::Closed(m)),
        }
    }

    /// Sends, waiting for room if the mailbox is full and its policy is `Backpressure`.
    pub async fn send(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.push_wait(msg, false).await
    }

    /// Sends through the urgent lane, waiting for room under `Backpressure`.
    pub async fn send_urgent(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.push_wait(msg, true).await
    }

    async fn push_wait(&self, mut msg: M, urgent: bool) -> Result<Delivery, SendError<M>> {
        loop {
            // Register interest before trying, so a receiver freeing room in between is
            // not missed.
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.shared.push(msg, urgent, true) {
                Push::Done(d) => return Ok(d),
                Push::Closed(m) => return Err(SendError::Closed(m)),
                Push::Rejected(m) => return Err(SendError::Full(m)),
                Push::Full(m) => {
                    msg = m;
                    space.await;
                }
            }
        }
    }

    /// Messages queued and not yet handled (both lanes, including the batch the process
    /// holds).
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// Whether the mailbox is closed (the process stopped or is stopping).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether two senders feed the same mailbox.
    pub fn same_mailbox(&self, other: &Sender<M>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Closes the mailbox for a graceful stop: new messages are refused, queued ones are
    /// still handled, then the process stops with `ExitReason::Shutdown`.
    pub fn close_gracefully(&self) {
        let lanes = self.shared.lanes.lock();
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        drop(lanes);
        self.shared.recv.notify_one();
        self.shared.space.notify_waiters();
    }

    /// Bytes queued, when a byte budget is set (0 otherwise).
    pub fn bytes_queued(&self) -> usize {
        self.shared.lanes.lock().bytes
    }
}

impl<M> Receiver<M> {
    /// The next message, urgent first; `None` once the mailbox is closed and empty.
    pub async fn recv(&mut self) -> Option<M> {
        loop {
            if let Some(m) = self.next_ready() {
                return Some(m);
            }
            // About to sleep: hold our own reference so `self` stays free to refill.
            let shared = self.shared.clone();
            let notified = shared.recv.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.refill() {
                continue;
            }
            if self.shared.closed.load(Ordering::Acquire) {
                // Closed: anything pushed before the close is in the lanes; take it.
                if self.refill() {
                    continue;
                }
                return None;
            }
            notified.await;
        }
    }

    /// The next message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<M> {
        self.next_ready().or_else(|| {
            if self.refill() {
                self.next_ready()
            } else {
                None
            }
        })
    }

    #[inline]
    fn next_ready(&mut self) -> Option<M> {
        if self.shared.urgent_pending.load(Ordering::Acquire) > 0 {
            self.refill();
        }
        let m = self
            .urgent
            .pop_front()
            .or_else(|| self.normal.pop_front())?;
        self.shared.backlog.fetch_sub(1, Ordering::Relaxed);
        Some(m)
    }

    /// Moves queued messages into the private buffer: all urgent ones, up to `BATCH`
    /// normal ones. Returns whether anything was moved.
    fn refill(&mut self) -> bool {
        let mut lanes = self.shared.lanes.lock();
        let n_urgent = lanes.urgent.len();
        let n_normal = lanes.normal.len().min(BATCH);
        if n_urgent + n_normal == 0 {
            return false;
        }
        let accounted = self.shared.accounted();
        let mut freed = 0;
        for m in lanes.urgent.drain(..) {
            if accounted {
                freed += (self.shared.size_of)(&m);
            }
            self.urgent.push_back(m);
        }
        self.shared.urgent_pending.store(0, Ordering::Release);
        for m in lanes.normal.drain(..n_normal) {
            if accounted {
                freed += (self.shared.size_of)(&m);
            }
            self.normal.push_back(m);
        }
        lanes.bytes -= freed;
        drop(lanes);
        self.shared
            .metrics
            .backlog
            .set(self.shared.backlog.load(Ordering::Relaxed) as f64);
        if self.shared.capacity != usize::MAX || accounted {
            self.shared.space.notify_waiters();
        }
        true
    }

    /// Closes the mailbox to new messages; queued ones are still delivered by `recv`.
    pub fn close(&self) {
        let _lanes = self.shared.lanes.lock();
        self.shared.closed.store(true, Ordering::Release);
        drop(_lanes);
        self.shared.space.notify_waiters();
    }

    /// A sender for this mailbox (for example, a process sending to itself).
    pub fn sender(&self) -> Sender<M> {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }

    /// Messages queued and not yet handled.
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// A sender that does not keep the mailbox open.
    pub(crate) fn weak_sender(&self) -> WeakSender<M> {
        WeakSender {
            shared: self.shared.clone(),
        }
    }

    /// Whether the mailbox was closed by a graceful stop.
    pub(crate) fn shutdown_requested(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Reopens a mailbox that a stopped incarnation closed, for the next one (a
    /// supervisor restart). Only a graceful-stop close is undone; one caused by every
    /// sender going away is final.
    pub(crate) fn reopen(&self) {
        let _lanes = self.shared.lanes.lock();
        if self.shared.senders.load(Ordering::Acquire) > 0 {
            self.shared.shutdown.store(false, Ordering::Release);
            self.shared.closed.store(false, Ordering::Release);
        }
    }
}

/// A reference to a mailbox that does not keep it open (see `Context::myself`).
pub(crate) struct WeakSender<M> {
    shared: Arc<Shared<M>>,
}

impl<M> WeakSender<M> {
    /// A sender, unless the mailbox is closed.
    pub(crate) fn upgrade(&self) -> Option<Sender<M>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return None;
        }
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        let sender = Sender {
            shared: self.shared.clone(),
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return None; // dropping `sender` undoes the count
        }
        Some(sender)
    }
}

impl<M> Drop for Receiver<M> {
    fn drop(&mut self) {
        self.close();
        // Messages still queued are dropped with the mailbox; count them.
        let left = self.urgent.len() + self.normal.len() + {
            let l = self.shared.lanes.lock();
            l.urgent.len() + l.normal.len()
        };
        if left > 0 {
            self.shared.metrics.dropped.increment(left as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urgent_is_served_before_normal() {
        let (tx, mut rx) = channel::<u32>("t", &MemoryStrategy::unbounded(), None);
        for i in 0..10 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(rx.recv().await, Some(0)); // takes a batch of normal messages
        tx.try_send_urgent(100).unwrap();
        assert_eq!(
            rx.recv().await,
            Some(100),
            "urgent overtakes the buffered batch"
        );
        assert_eq!(rx.recv().await, Some(1));
        drop(tx);
        let rest: Vec<u32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest, (2..10).collect::<Vec<_>>());
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn overflow_policies_count_drops_exactly() {
        let (tx, mut rx) =
            channel::<u32>("t", &MemoryStrategy::bounded(3, Overflow::DropOldest), None);
        let outcomes: Vec<Delivery> = (0..5).map(|i| tx.try_send(i).unwrap()).collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|d| **d == Delivery::DroppedOldest)
                .count(),
            2
        );
        assert_eq!(
            std::iter::from_fn(|| rx.try_recv()).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );

        let (tx, mut rx) =
            channel::<u32>("t", &MemoryStrategy::bounded(3, Overflow::DropNewest), None);
        let outcomes: Vec<Delivery> = (0..5).map(|i| tx.try_send(i).unwrap()).collect();
        assert_eq!(
            outcomes[3..],
            [Delivery::DroppedNewest, Delivery::DroppedNewest]
        );
        assert_eq!(
            std::iter::from_fn(|| rx.try_recv()).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );

        let (tx, _rx) = channel::<u32>("t", &MemoryStrategy::bounded(2, Overflow::Reject), None);
        tx.try_send(0).unwrap();
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(SendError::Full(2)));
    }

    #[tokio::test]
    async fn backpressure_waits_for_room() {
        let (tx, mut rx) = channel::<u32>(
            "t",
            &MemoryStrategy::bounded(1, Overflow::Backpressure),
            None,
        );
        tx.send(1).await.unwrap();
        assert_eq!(tx.try_send(2), Err(SendError::Full(2)));
        let t2 = tx.clone();
        let waiter = tokio::spawn(async move { t2.send(2).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        waiter.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn byte_budget_is_accounted() {
        let strategy = MemoryStrategy::bounded(100, Overflow::Reject).with_byte_budget(10);
        let (tx, mut rx) = channel::<Vec<u8>>("t", &strategy, Some(|v: &Vec<u8>| v.len()));
        tx.try_send(vec![0; 6]).unwrap();
        assert_eq!(tx.bytes_queued(), 6);
        assert!(matches!(tx.try_send(vec![0; 6]), Err(SendError::Full(_))));
        tx.try_send(vec![0; 4]).unwrap();
        assert_eq!(rx.recv().await.unwrap().len(), 6);
        assert_eq!(
            tx.bytes_queued(),
            0,
            "the whole queue is in the receiver's batch"
        );
    }

    #[tokio::test]
    async fn closed_mailboxes_return_the_message() {
        let (tx, rx) = channel::<u32>("t", &MemoryStrategy::default(), None);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(SendError::Closed(1)));
        assert!(tx.is_closed());
    }
}
