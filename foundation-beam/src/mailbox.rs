//! Two-lane mailboxes.
//!
//! A mailbox has an **urgent lane** that is always served before the **normal lane**, a
//! capacity and an [`Overflow`] policy (from the process's [`MemoryStrategy`]), and an
//! optional byte budget. Every message dropped by a policy is counted, per mailbox
//! ([`Sender::dropped`]) and in the process's metrics group
//! (`foundation_mailbox_dropped_total{group,policy}`); the group's backlog is exported as
//! a gauge (`foundation_mailbox_backlog{group}`, see [`crate::group`]).
//!
//! The receiving process takes messages from the shared queue in batches (up to
//! [`BATCH`] per lock) and serves them from a private buffer; before each message it
//! checks an atomic count of urgent messages, so an urgent message waits at most for the
//! message being handled. Senders take the lock once per message; the receiver is woken
//! only when its queue goes from empty to non-empty.
//!
//! **Bounds.** A message counts against its lane's capacity and the byte budget from
//! the moment it is queued until the process takes it out of the mailbox (`recv`); a
//! batch the receiver has moved into its private buffer still counts. So at every instant
//! each lane holds at most `capacity` messages and both lanes together at most
//! `byte_budget` bytes, whatever the interleaving of urgent and normal sends. Under
//! [`Overflow::DropOldest`] the receiver takes one message per lock instead of a batch, so
//! that the oldest queued message is always in reach of the sender that drops it.
//! [`Sender::dropped`] and [`Sender::rejected`] count what the policies did.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::group::{GroupMetrics, MetricsGroup};
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
    pub(crate) fn label(self) -> &'static str {
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
}

/// Describes the mailbox metrics (HELP lines) to the current recorder: they belong to
/// the process's [`MetricsGroup`] (see [`crate::group`]).
pub(crate) fn describe_metrics() {
    crate::group::describe_metrics();
}

pub(crate) struct Shared<M> {
    lanes: Mutex<Lanes<M>>,
    /// Messages in the shared urgent lane; read without the lock before each message.
    urgent_pending: AtomicUsize,
    /// Urgent messages accepted and not yet handed to the process (shared lane plus the
    /// receiver's buffer). Raised by senders under the lock, lowered by the receiver.
    urgent_len: AtomicUsize,
    /// The same for the normal lane.
    normal_len: AtomicUsize,
    /// Bytes of the messages counted in `urgent_len` and `normal_len` (with a budget).
    bytes: AtomicUsize,
    /// Senders waiting for room; the receiver wakes them when it takes a message.
    space_waiters: AtomicUsize,
    /// Messages dropped by the policy (and queued messages dropped with the mailbox).
    dropped: AtomicU64,
    /// Messages returned to their sender because the mailbox was full.
    rejected: AtomicU64,
    /// The receiver's waker (one receiver: an `AtomicWaker` costs a few atomics where a
    /// `Notify` takes a lock).
    recv: AtomicWaker,
    space: Notify,
    closed: AtomicBool,
    /// Closed by a graceful stop rather than by the last sender going away.
    shutdown: AtomicBool,
    senders: AtomicUsize,
    capacity: usize,
    byte_budget: usize,
    overflow: Overflow,
    /// Messages the receiver takes from a shared lane per lock: [`BATCH`], or 1 under
    /// `DropOldest`, whose senders must see every queued message to drop the oldest.
    batch: usize,
    size_of: fn(&M) -> usize,
    /// The series this mailbox's numbers are aggregated into (shared by its group).
    group: Arc<GroupMetrics>,
    /// This mailbox's share of the group's backlog gauge.
    reported: AtomicUsize,
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
            self.shared.recv.wake();
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

/// Creates a mailbox in the default metrics group (`_process` names it in tests only:
/// metrics are never labelled with a process name).
#[cfg(test)]
pub(crate) fn channel<M>(
    _process: &str,
    strategy: &MemoryStrategy,
    size_of: Option<fn(&M) -> usize>,
) -> (Sender<M>, Receiver<M>) {
    channel_in(&MetricsGroup::default_group(), strategy, size_of)
}

/// The heap bytes of a mailbox's shared part (its `Arc` allocation), for footprint
/// tests.
#[cfg(test)]
pub(crate) fn shared_size<M>() -> usize {
    std::mem::size_of::<Shared<M>>() + 2 * std::mem::size_of::<usize>()
}

/// Creates a mailbox whose metrics are aggregated into `group`.
pub(crate) fn channel_in<M>(
    group: &MetricsGroup,
    strategy: &MemoryStrategy,
    size_of: Option<fn(&M) -> usize>,
) -> (Sender<M>, Receiver<M>) {
    let shared = Arc::new(Shared {
        lanes: Mutex::new(Lanes {
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
        }),
        urgent_pending: AtomicUsize::new(0),
        urgent_len: AtomicUsize::new(0),
        normal_len: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        space_waiters: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        recv: AtomicWaker::new(),
        space: Notify::new(),
        closed: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        capacity: strategy.capacity.map_or(usize::MAX, |c| c.max(1)),
        byte_budget: strategy.byte_budget.unwrap_or(usize::MAX),
        overflow: strategy.overflow,
        batch: if strategy.overflow == Overflow::DropOldest {
            1
        } else {
            BATCH
        },
        size_of: size_of.unwrap_or(default_size::<M>),
        group: group.metrics().clone(),
        reported: AtomicUsize::new(0),
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
    #[inline]
    fn accounted(&self) -> bool {
        self.byte_budget != usize::MAX
    }

    #[inline]
    fn lane_len(&self, urgent: bool) -> &AtomicUsize {
        if urgent {
            &self.urgent_len
        } else {
            &self.normal_len
        }
    }

    fn drop_counted(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.group.dropped(self.overflow, n);
    }

    fn reject_counted(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.group.rejected();
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
        // SeqCst pairs with the receiver's decrement and `space_waiters` check: a sender
        // that registered as a waiter and then sees a full lane is woken by the take that
        // makes room.
        let full = self.over(urgent, size);
        let mut delivery = Delivery::Queued;
        if full {
            // A message larger than the whole budget can never fit: no policy can queue it.
            let never_fits = size > self.byte_budget;
            match self.overflow {
                Overflow::Backpressure if may_wait && !never_fits => return Push::Full(msg),
                Overflow::Backpressure | Overflow::Reject => {
                    drop(lanes);
                    self.reject_counted();
                    return Push::Rejected(msg);
                }
                Overflow::DropNewest => {
                    drop(lanes);
                    self.drop_counted(1);
                    return Push::Done(Delivery::DroppedNewest);
                }
                Overflow::DropOldest if never_fits => {
                    drop(lanes);
                    self.drop_counted(1);
                    return Push::Done(Delivery::DroppedNewest);
                }
                Overflow::DropOldest => {
                    // Under DropOldest the receiver takes one message at a time and counts
                    // it as handed out when it takes it, so every queued message is in the
                    // shared lanes. Drop the oldest of this lane until the new one fits;
                    // if the byte budget still does not fit it, the oldest of the other
                    // lane too.
                    let mut dropped = 0u64;
                    while self.over(urgent, size) {
                        if !self.drop_front(&mut lanes, urgent) {
                            break;
                        }
                        dropped += 1;
                    }
                    if self.lane_len(urgent).load(Ordering::SeqCst) < self.capacity {
                        while self.over(urgent, size) {
                            if !self.drop_front(&mut lanes, !urgent) {
                                break;
                            }
                            dropped += 1;
                        }
                    }
                    if dropped > 0 {
                        self.drop_counted(dropped);
                        delivery = Delivery::DroppedOldest;
                    }
                    if self.over(urgent, size) {
                        // Unreachable: with both lanes empty any message within the
                        // budget fits. Refuse rather than exceed a bound.
                        drop(lanes);
                        self.drop_counted(1);
                        return Push::Done(Delivery::DroppedNewest);
                    }
                }
            }
        }
        let was_empty = lanes.urgent.is_empty() && lanes.normal.is_empty();
        if size > 0 {
            self.bytes.fetch_add(size, Ordering::SeqCst);
        }
        let queued = self.lane_len(urgent).fetch_add(1, Ordering::SeqCst) + 1;
        if queued >= 2 && queued.is_power_of_two() {
            // A growing queue (a stuck or slow process) shows in the group's backlog
            // gauge within a factor of two, at O(log n) reports as it fills.
            self.report_backlog();
        }
        if urgent {
            lanes.urgent.push_back(msg);
            self.urgent_pending.fetch_add(1, Ordering::Release);
        } else {
            lanes.normal.push_back(msg);
        }
        drop(lanes);
        if was_empty {
            self.recv.wake();
        }
        Push::Done(delivery)
    }

    /// Whether a message of `size` bytes does not fit in the lane (by count or bytes).
    #[inline]
    fn over(&self, urgent: bool, size: usize) -> bool {
        self.lane_len(urgent).load(Ordering::SeqCst) >= self.capacity
            || self.bytes.load(Ordering::SeqCst).saturating_add(size) > self.byte_budget
    }

    /// Drops the oldest message of a shared lane (caller holds the lock and counts the
    /// drop); false if the lane is empty.
    fn drop_front(&self, lanes: &mut Lanes<M>, urgent: bool) -> bool {
        let lane = if urgent {
            &mut lanes.urgent
        } else {
            &mut lanes.normal
        };
        let Some(old) = lane.pop_front() else {
            return false;
        };
        if self.accounted() {
            self.bytes.fetch_sub((self.size_of)(&old), Ordering::SeqCst);
        }
        self.lane_len(urgent).fetch_sub(1, Ordering::SeqCst);
        if urgent {
            self.urgent_pending.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Accounts one message handed to the process: it no longer counts against the lane's
    /// capacity or the byte budget; a sender waiting for room is woken.
    #[inline]
    fn taken(&self, msg: &M, urgent: bool) {
        self.lane_len(urgent).fetch_sub(1, Ordering::SeqCst);
        if self.accounted() {
            self.bytes.fetch_sub((self.size_of)(msg), Ordering::SeqCst);
        }
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    fn backlog(&self) -> usize {
        self.urgent_len.load(Ordering::Relaxed) + self.normal_len.load(Ordering::Relaxed)
    }

    /// Moves the group's backlog gauge by this mailbox's change since its last report.
    /// Called when the receiver takes a batch or goes idle, and when a sender's push
    /// makes a lane's length a power of two — not per message. Concurrent reports swap
    /// their value in, so the deltas they apply always add up to the last one reported.
    #[inline]
    fn report_backlog(&self) {
        let now = self.backlog();
        if self.reported.load(Ordering::Relaxed) == now {
            return;
        }
        let was = self.reported.swap(now, Ordering::Relaxed);
        self.group.backlog_moved(was, now);
    }
}

/// Counts a sender as waiting for room while it lives (so a cancelled send stops counting).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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

    #[inline]
    fn try_push(&self, msg: M, urgent: bool) -> Result<Delivery, SendError<M>> {
        match self.shared.push(msg, urgent, false) {
            Push::Done(d) => Ok(d),
            Push::Full(m) | Push::Rejected(m) => Err(SendError::Full(m)),
            Push::Closed(m) => Err(SendError::Closed(m)),
        }
    }

    /// Sends, waiting for room if the mailbox is full and its policy is `Backpressure`.
    ///
    /// A message larger than the whole byte budget can never fit and is returned at once
    /// as [`SendError::Full`]. Cancel-safe: dropping the future before it completes drops
    /// the message without queueing it.
    pub async fn send(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.push_wait(msg, false).await
    }

    /// Sends through the urgent lane, waiting for room under `Backpressure`.
    pub async fn send_urgent(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.push_wait(msg, true).await
    }

    #[inline]
    async fn push_wait(&self, msg: M, urgent: bool) -> Result<Delivery, SendError<M>> {
        // Fast path: room (or a policy that never waits) costs one lock, like `try_send`.
        match self.shared.push(msg, urgent, true) {
            Push::Done(d) => Ok(d),
            Push::Closed(m) => Err(SendError::Closed(m)),
            Push::Rejected(m) => Err(SendError::Full(m)),
            Push::Full(m) => self.wait_for_room(m, urgent).await,
        }
    }

    /// The fast path of `send`: `Err(msg)` when the mailbox is full under backpressure
    /// and the caller may wait ([`wait_for_room`](Self::wait_for_room)).
    #[inline]
    pub(crate) fn push_now(
        &self,
        msg: M,
        urgent: bool,
    ) -> Result<Result<Delivery, SendError<M>>, M> {
        match self.shared.push(msg, urgent, true) {
            Push::Done(d) => Ok(Ok(d)),
            Push::Closed(m) => Ok(Err(SendError::Closed(m))),
            Push::Rejected(m) => Ok(Err(SendError::Full(m))),
            Push::Full(m) => Err(m),
        }
    }

    pub(crate) async fn wait_for_room(
        &self,
        mut msg: M,
        urgent: bool,
    ) -> Result<Delivery, SendError<M>> {
        let _waiting = Waiting::new(&self.shared.space_waiters);
        loop {
            // Register interest before trying, so a receiver making room in between is
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

    /// Messages queued and not yet handed to the process (both lanes, including the batch
    /// the process has taken but not yet handled). Never more than twice the capacity
    /// (one capacity per lane).
    pub fn backlog(&self) -> usize {
        self.shared.backlog()
    }

    /// Messages this mailbox dropped so far: by its `DropOldest`/`DropNewest` policy, and
    /// those still queued when its process stopped for good. Also exported as
    /// `foundation_mailbox_dropped_total`.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Messages returned to their sender because the mailbox was full (`Reject`, or
    /// `try_send` under `Backpressure`). Also exported as
    /// `foundation_mailbox_rejected_total`.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
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
        self.shared.recv.wake();
        self.shared.space.notify_waiters();
    }

    /// Bytes queued (as counted for the byte budget, including the batch the process has
    /// taken but not yet handled), when a byte budget is set (0 otherwise).
    pub fn bytes_queued(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

impl<M> Receiver<M> {
    /// The next message, urgent first; `None` once the mailbox is closed and empty.
    /// Cancel-safe: a message is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<M> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<M>> {
        use std::task::Poll;
        if let Some(m) = self.next_ready() {
            return Poll::Ready(Some(m));
        }
        if self.refill() {
            return Poll::Ready(self.next_ready());
        }
        // About to sleep: register first, then look again, so a push in between wakes us.
        self.shared.recv.register(cx.waker());
        if self.refill() {
            return Poll::Ready(self.next_ready());
        }
        if self.shared.closed.load(Ordering::Acquire) {
            // Closed: anything pushed before the close is in the lanes; take it.
            if self.refill() {
                return Poll::Ready(self.next_ready());
            }
            return Poll::Ready(None);
        }
        // Idle: this mailbox's share of the group's backlog gauge goes to what is left.
        self.shared.report_backlog();
        Poll::Pending
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
        if self.urgent.is_empty() && self.shared.urgent_pending.load(Ordering::Acquire) > 0 {
            self.refill();
        }
        let (m, urgent) = match self.urgent.pop_front() {
            Some(m) => (m, true),
            None => (self.normal.pop_front()?, false),
        };
        if self.shared.batch > 1 {
            self.shared.taken(&m, urgent);
        }
        Some(m)
    }

    /// Moves queued messages into the private buffer: up to `batch` urgent ones, and up to
    /// `batch` normal ones when the buffer has none. Returns whether anything was moved.
    ///
    /// The moved messages still count against the capacity and the byte budget until
    /// they are handed out (except under `DropOldest`, which moves one message at a time
    /// and counts it as handed out here, so that its senders see every queued message).
    fn refill(&mut self) -> bool {
        let shared = &*self.shared;
        let mut lanes = shared.lanes.lock();
        let n_urgent = lanes.urgent.len().min(shared.batch);
        let n_normal = if self.normal.is_empty() && n_urgent == 0 {
            lanes.normal.len().min(shared.batch)
        } else {
            0
        };
        if n_urgent + n_normal == 0 {
            return false;
        }
        self.urgent.extend(lanes.urgent.drain(..n_urgent));
        shared
            .urgent_pending
            .store(lanes.urgent.len(), Ordering::Release);
        self.normal.extend(lanes.normal.drain(..n_normal));
        if shared.batch == 1 {
            let (m, urgent) = match self.urgent.back() {
                Some(m) if n_urgent == 1 => (m, true),
                _ => (self.normal.back().expect("one message moved"), false),
            };
            shared.taken(m, urgent);
        }
        drop(lanes);
        shared.report_backlog();
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
        self.shared.backlog()
    }

    /// A sender that does not keep the mailbox open.
    pub(crate) fn weak_sender(&self) -> WeakSender<M> {
        WeakSender {
            shared: self.shared.clone(),
        }
    }

    /// The metrics this mailbox's process is aggregated into.
    pub(crate) fn group(&self) -> &Arc<GroupMetrics> {
        &self.shared.group
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

impl<M> Clone for WeakSender<M> {
    fn clone(&self) -> Self {
        WeakSender {
            shared: self.shared.clone(),
        }
    }
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
        let mut lanes = self.shared.lanes.lock();
        let left = self.urgent.len() + self.normal.len() + lanes.urgent.len() + lanes.normal.len();
        lanes.urgent.clear();
        lanes.normal.clear();
        self.shared.urgent_len.store(0, Ordering::SeqCst);
        self.shared.normal_len.store(0, Ordering::SeqCst);
        self.shared.bytes.store(0, Ordering::SeqCst);
        drop(lanes);
        let was = self.shared.reported.swap(0, Ordering::Relaxed);
        self.shared.group.backlog_moved(was, 0);
        if left > 0 {
            self.shared.drop_counted(left as u64);
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
            4,
            "a message the receiver has batched but not handed out still counts"
        );
        assert!(matches!(tx.try_send(vec![0; 7]), Err(SendError::Full(_))));
        tx.try_send(vec![0; 6]).unwrap();
        assert!(
            matches!(tx.try_send(vec![0; 11]), Err(SendError::Full(_))),
            "larger than the whole budget"
        );
        assert_eq!(tx.rejected(), 3);
    }

    #[tokio::test]
    async fn closed_mailboxes_return_the_message() {
        let (tx, rx) = channel::<u32>("t", &MemoryStrategy::default(), None);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(SendError::Closed(1)));
        assert!(tx.is_closed());
    }

    /// A reference model of a mailbox: per-lane queues in which everything queued counts,
    /// and the overflow policies as documented.
    struct Model {
        urgent: VecDeque<(u32, usize)>,
        normal: VecDeque<(u32, usize)>,
        capacity: usize,
        budget: usize,
        overflow: Overflow,
        dropped: u64,
        rejected: u64,
    }

    impl Model {
        fn bytes(&self) -> usize {
            self.urgent.iter().chain(&self.normal).map(|m| m.1).sum()
        }

        fn lane(&mut self, urgent: bool) -> &mut VecDeque<(u32, usize)> {
            if urgent {
                &mut self.urgent
            } else {
                &mut self.normal
            }
        }

        fn over(&mut self, urgent: bool, size: usize) -> bool {
            self.bytes() + size > self.budget || self.lane(urgent).len() >= self.capacity
        }

        /// `Ok(delivery)` or `Err(())` for a message handed back as full.
        fn send(&mut self, msg: (u32, usize), urgent: bool) -> Result<Delivery, ()> {
            let size = msg.1;
            let mut delivery = Delivery::Queued;
            if self.over(urgent, size) {
                match self.overflow {
                    Overflow::Backpressure | Overflow::Reject => {
                        self.rejected += 1;
                        return Err(());
                    }
                    Overflow::DropNewest => {
                        self.dropped += 1;
                        return Ok(Delivery::DroppedNewest);
                    }
                    Overflow::DropOldest if size > self.budget => {
                        self.dropped += 1;
                        return Ok(Delivery::DroppedNewest);
                    }
                    Overflow::DropOldest => {
                        while self.over(urgent, size) && self.lane(urgent).pop_front().is_some() {
                            self.dropped += 1;
                            delivery = Delivery::DroppedOldest;
                        }
                        while self.over(urgent, size) && self.lane(!urgent).pop_front().is_some() {
                            self.dropped += 1;
                            delivery = Delivery::DroppedOldest;
                        }
                    }
                }
            }
            self.lane(urgent).push_back(msg);
            Ok(delivery)
        }

        fn recv(&mut self) -> Option<(u32, usize)> {
            self.urgent.pop_front().or_else(|| self.normal.pop_front())
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send { urgent: bool, size: usize },
        Recv(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (proptest::bool::weighted(0.3), 1usize..40)
                .prop_map(|(urgent, size)| Op::Send { urgent, size }),
            1 => (1usize..6).prop_map(Op::Recv),
        ]
    }

    fn policy() -> impl proptest::strategy::Strategy<Value = Overflow> {
        proptest::sample::select(vec![
            Overflow::Backpressure,
            Overflow::DropOldest,
            Overflow::DropNewest,
            Overflow::Reject,
        ])
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any interleaving of urgent and normal sends and receives: the mailbox behaves
        /// exactly like the model (same outcomes, same order, same drop and reject
        /// counts), and the bounds hold after every step, counting the receiver's batch.
        #[test]
        fn bounds_and_drop_counts_hold_under_any_interleaving(
            capacity in 1usize..8,
            budget in proptest::option::of(30usize..150),
            overflow in policy(),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut strategy = MemoryStrategy::bounded(capacity, overflow);
            strategy.byte_budget = budget;
            let (tx, mut rx) =
                channel::<(u32, usize)>("prop", &strategy, Some(|m: &(u32, usize)| m.1));
            let mut model = Model {
                urgent: VecDeque::new(),
                normal: VecDeque::new(),
                capacity,
                budget: budget.unwrap_or(usize::MAX),
                overflow,
                dropped: 0,
                rejected: 0,
            };
            let mut next_id = 0u32;
            for op in ops {
                match op {
                    Op::Send { urgent, size } => {
                        next_id += 1;
                        let msg = (next_id, size);
                        let got = if urgent { tx.try_send_urgent(msg) } else { tx.try_send(msg) };
                        let want = model.send(msg, urgent);
                        match (got, want) {
                            (Ok(g), Ok(w)) => proptest::prop_assert_eq!(g, w),
                            (Err(SendError::Full(m)), Err(())) => proptest::prop_assert_eq!(m, msg),
                            (g, w) => proptest::prop_assert!(false, "mailbox {g:?}, model {w:?}"),
                        }
                    }
                    Op::Recv(k) => {
                        for _ in 0..k {
                            proptest::prop_assert_eq!(rx.try_recv(), model.recv());
                        }
                    }
                }
                let shared = &*tx.shared;
                let lanes = shared.lanes.lock();
                // What the mailbox really holds, the receiver's private batch included.
                let held_urgent = lanes.urgent.len() + rx.urgent.len();
                let held_normal = lanes.normal.len() + rx.normal.len();
                let held_bytes: usize = lanes
                    .urgent
                    .iter()
                    .chain(&lanes.normal)
                    .chain(&rx.urgent)
                    .chain(&rx.normal)
                    .map(|m| m.1)
                    .sum();
                drop(lanes);
                proptest::prop_assert!(held_urgent <= capacity && held_normal <= capacity);
                proptest::prop_assert!(held_bytes <= model.budget);
                proptest::prop_assert_eq!(held_urgent, model.urgent.len());
                proptest::prop_assert_eq!(held_normal, model.normal.len());
                proptest::prop_assert_eq!(tx.backlog(), model.urgent.len() + model.normal.len());
                if budget.is_some() {
                    proptest::prop_assert_eq!(tx.bytes_queued(), model.bytes());
                }
                proptest::prop_assert_eq!(tx.dropped(), model.dropped);
                proptest::prop_assert_eq!(tx.rejected(), model.rejected);
            }
        }
    }

    /// The scenario: a slow process, one urgent message among every ten normal
    /// ones, capacity 100 per lane under `Reject`. The mailbox never holds more than its
    /// capacity, rejects the excess, and the normal lane is still served.
    #[test]
    fn urgent_traffic_does_not_lift_the_bound() {
        let (tx, mut rx) =
            channel::<u32>("t", &MemoryStrategy::bounded(100, Overflow::Reject), None);
        let mut received_normal = 0;
        let mut attempts = 0u64;
        let mut received = 0u64;
        for round in 0..2_000u32 {
            for i in 0..10 {
                attempts += 1;
                let _ = tx.try_send(round * 10 + i);
            }
            attempts += 1;
            let _ = tx.try_send_urgent(u32::MAX);
            // The slow process handles two messages per round (urgent ones go first).
            for _ in 0..2 {
                if let Some(m) = rx.try_recv() {
                    received += 1;
                    if m != u32::MAX {
                        received_normal += 1;
                    }
                }
            }
            assert!(tx.backlog() <= 200, "backlog {}", tx.backlog());
            assert!(rx.normal.len() + tx.shared.lanes.lock().normal.len() <= 100);
        }
        assert!(tx.rejected() > 10_000, "rejected {}", tx.rejected());
        assert!(
            received_normal >= 1_900,
            "the normal lane starved: {received_normal}"
        );
        assert_eq!(attempts, received + tx.rejected() + tx.backlog() as u64);
    }

    /// Several threads sending urgent and normal messages while the receiver takes them:
    /// the mailbox never holds more than its bounds, and every message is accounted for.
    #[test]
    fn bounds_hold_with_concurrent_senders() {
        for overflow in [Overflow::DropOldest, Overflow::DropNewest, Overflow::Reject] {
            let strategy = MemoryStrategy::bounded(16, overflow).with_byte_budget(24 * 8);
            let (tx, mut rx) = channel::<u64>("t", &strategy, Some(|_: &u64| 8));
            let senders: Vec<_> = (0..4)
                .map(|t| {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        for i in 0..20_000u64 {
                            let _ = if (i + t) % 7 == 0 {
                                tx.try_send_urgent(i)
                            } else {
                                tx.try_send(i)
                            };
                        }
                    })
                })
                .collect();
            let mut received = 0u64;
            while senders.iter().any(|s| !s.is_finished()) || rx.backlog() > 0 {
                if rx.try_recv().is_some() {
                    received += 1;
                }
                let lanes = tx.shared.lanes.lock();
                let urgent = lanes.urgent.len() + rx.urgent.len();
                let normal = lanes.normal.len() + rx.normal.len();
                drop(lanes);
                assert!(
                    urgent <= 16 && normal <= 16,
                    "{overflow:?}: {urgent} {normal}"
                );
                assert!((urgent + normal) * 8 <= 24 * 8, "{overflow:?}: byte budget");
            }
            for s in senders {
                s.join().unwrap();
            }
            while rx.try_recv().is_some() {
                received += 1;
            }
            assert_eq!(
                4 * 20_000,
                received + tx.dropped() + tx.rejected(),
                "{overflow:?}: every message handled, dropped or rejected"
            );
        }
    }

    /// A backpressured sender waiting for room is woken when the receiver takes a message
    /// from its batch (not only when it refills).
    #[tokio::test]
    async fn waiting_sender_is_woken_by_a_take_from_the_batch() {
        let (tx, mut rx) = channel::<u32>(
            "t",
            &MemoryStrategy::bounded(2, Overflow::Backpressure),
            None,
        );
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let t2 = tx.clone();
        let waiter = tokio::spawn(async move { t2.send(3).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(rx.recv().await, Some(1)); // batch of two taken, one handed out
        waiter.await.unwrap().unwrap();
        assert_eq!(tx.backlog(), 2);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
    }
}
