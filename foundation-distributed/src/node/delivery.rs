//! Application delivery: named receivers and servers, and acknowledged streams.
//!
//! A receiver registered with [`Node::register`](super::Node::register) has a bounded
//! queue. A message arriving for it on a data channel waits for room there: the channel's
//! inbound task stops reading, its connections stop being read, and the sender's channel
//! queue fills, so its `send().await` waits (end-to-end backpressure, no drop). Only
//! messages on `coordination` (node traffic) are never waited for; an application
//! message that arrives there anyway is delivered if there is room and otherwise dropped
//! and counted.
//!
//! Batched receivers ([`Node::register_batched`](super::Node::register_batched),
//! [`Node::register_frames`](super::Node::register_frames)) are handed one item per
//! received frame instead of one `(String, T)` per message: a [`Batch`] (the sender's
//! name, an `Arc<str>` shared by every frame of its connection, and the frame's messages
//! decoded into a `Vec`) or a [`Frame`] (the frame's bytes, not copied, with an iterator
//! over each message's bytes). Their queue is bounded in messages (an item of `k`
//! messages takes `min(k, capacity)` of it: a frame is never split), and a full queue
//! makes the frame wait exactly as above (backpressure, no drop; on `coordination`, no
//! room means the frame's messages are dropped and counted). Undecodable messages are
//! left out of their batch and counted; a frame receiver leaves decoding to its consumer.
//! The queue hands items over through an unbounded tokio channel whose length is bounded
//! by a semaphore of `capacity` permits, taken before an item is queued and given back
//! when the consumer takes it.
//!
//! Acknowledged streams ([`Node::send_acked`](super::Node::send_acked)): per destination,
//! the sender numbers messages and keeps them (a bounded window: a full window makes
//! `send_acked` wait) until a cumulative acknowledgement covers them, resending every
//! `retransmit_after` and after reconnects. The receiver delivers in sequence exactly once
//! per (sender, sender incarnation, sequence), buffers up to a window of out-of-order
//! messages, and acknowledges what it has delivered; a message whose receiver queue is
//! full is neither delivered nor acknowledged (it comes again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::wire::{batch_count, next_message, ReplyError};

/// The fate of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Full,
    Closed,
    Undecodable,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Full => "receiver_full",
            Outcome::Closed => "receiver_closed",
            Outcome::Undecodable => "undecodable",
        }
    }
}

/// A delivery that completed, or must wait for room.
pub(crate) enum Attempt {
    Done(Outcome),
    Wait(BoxFuture<'static, Outcome>),
}

/// Delivers `(from, body)`; `may_wait` allows a [`Attempt::Wait`] when the queue is full.
pub(crate) type Deliver = Arc<dyn Fn(&str, &Bytes, bool) -> Attempt + Send + Sync>;
/// Delivers the `n` messages of a `SendBatch` body from `from` (checked by
/// `wire::batch_count`, which gave `n`), in order: those that find room at once here; at
/// the first full queue (when `may_wait`) the rest by the returned future, in order.
/// Failed deliveries are counted (`foundation_node_dropped_total{reason}`).
pub(crate) type DeliverMany =
    Arc<dyn Fn(&Arc<str>, Bytes, usize, bool) -> Option<BoxFuture<'static, ()>> + Send + Sync>;
/// Serves one request.
pub(crate) type Serve =
    Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<Bytes, ReplyError>> + Send + Sync>;

/// What is registered under a name.
#[derive(Clone)]
pub(crate) enum Slot {
    Receiver(Deliver, DeliverMany),
    Server(Serve),
}

fn dropped(o: Outcome, n: u64) {
    if o != Outcome::Delivered && n > 0 {
        metrics::counter!("foundation_node_dropped_total", "reason" => o.label()).increment(n);
    }
}

/// A receiver of `T` feeding `tx`.
pub(crate) fn receiver<T>(tx: tokio::sync::mpsc::Sender<(String, T)>) -> Slot
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    Slot::Receiver(one(tx.clone()), many(tx))
}

/// Batches: messages are decoded straight from the frame's body (no copy, no
/// per-message slice) and handed over with `try_send` while there is room; a full queue
/// is then waited for in chunks of up to half its capacity (`reserve_many`), so the
/// reading task wakes once per chunk the consumer frees rather than once per message.
fn many<T>(tx: tokio::sync::mpsc::Sender<(String, T)>) -> DeliverMany
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    use tokio::sync::mpsc::error::TrySendError;
    Arc::new(
        move |from: &Arc<str>, body: Bytes, _n: usize, may_wait: bool| {
            let mut at = 0;
            while let Some((m, next)) = next_message(&body, at) {
                at = next;
                let Ok(v) = rmp_serde::from_slice::<T>(m) else {
                    dropped(Outcome::Undecodable, 1);
                    continue;
                };
                match tx.try_send((from.to_string(), v)) {
                    Ok(()) => {}
                    Err(TrySendError::Closed(_)) => {
                        let rest = batch_count(&body[at..]).unwrap_or(0);
                        dropped(Outcome::Closed, 1 + rest as u64);
                        return None;
                    }
                    Err(TrySendError::Full(_)) if !may_wait => dropped(Outcome::Full, 1),
                    Err(TrySendError::Full(first)) => {
                        let tx = tx.clone();
                        let from = from.to_string();
                        return Some(Box::pin(async move {
                            let chunk = (tx.max_capacity() / 2).max(1);
                            let mut first = Some(first);
                            loop {
                                let want = usize::from(first.is_some())
                                    + batch_count(&body[at..]).unwrap_or(0);
                                if want == 0 {
                                    return;
                                }
                                let Ok(permits) = tx.reserve_many(want.min(chunk)).await else {
                                    dropped(Outcome::Closed, want as u64);
                                    return;
                                };
                                for permit in permits {
                                    let item = match first.take() {
                                        Some(item) => Some(item),
                                        None => next_decoded::<T>(&body, &mut at, &from),
                                    };
                                    match item {
                                        Some(item) => permit.send(item),
                                        None => break,
                                    }
                                }
                            }
                        }));
                    }
                }
            }
            None
        },
    )
}

/// The next message of `body` from `at` on that decodes (those that do not are counted);
/// advances `at` past it.
fn next_decoded<T: serde::de::DeserializeOwned>(
    body: &[u8],
    at: &mut usize,
    from: &str,
) -> Option<(String, T)> {
    while let Some((m, next)) = next_message(body, *at) {
        *at = next;
        match rmp_serde::from_slice::<T>(m) {
            Ok(v) => return Some((from.to_string(), v)),
            Err(_) => dropped(Outcome::Undecodable, 1),
        }
    }
    None
}

fn one<T>(tx: tokio::sync::mpsc::Sender<(String, T)>) -> Deliver
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    Arc::new(move |from: &str, body: &Bytes, may_wait: bool| {
        let Ok(v) = rmp_serde::from_slice::<T>(body) else {
            return Attempt::Done(Outcome::Undecodable);
        };
        match tx.try_send((from.to_string(), v)) {
            Ok(()) => Attempt::Done(Outcome::Delivered),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                Attempt::Done(Outcome::Closed)
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => {
                if !may_wait {
                    return Attempt::Done(Outcome::Full);
                }
                let tx = tx.clone();
                Attempt::Wait(Box::pin(async move {
                    match tx.send(item).await {
                        Ok(()) => Outcome::Delivered,
                        Err(_) => Outcome::Closed,
                    }
                }))
            }
        }
    })
}

// ---- batched receivers: one hand-over per frame -------------------------------------

/// The messages of one received frame for a receiver registered with
/// [`Node::register_batched`](super::Node::register_batched): who sent them and the
/// messages themselves, decoded, in the order sent.
///
/// A frame is what the sender's node wrote at once: the messages of a
/// [`send_batch`](super::Node::send_batch) (up to 64 KiB of them per frame), the `send`s
/// to this receiver with one key that were appended to one waiting frame
/// (write-combining), or one message (a large one, an acknowledged one, a broadcast).
/// Messages that did not decode are left out (counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The node that sent the messages (shared by every batch of a connection: cloning it
    /// copies no string).
    pub from: Arc<str>,
    /// The messages, in the order sent (never empty).
    pub messages: Vec<T>,
}

impl<T> IntoIterator for Batch<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.into_iter()
    }
}

/// The messages of one received frame for a receiver registered with
/// [`Node::register_frames`](super::Node::register_frames), not decoded: the frame's
/// bytes (shared, not copied) and an iterator over each message's bytes, which are the
/// MessagePack encoding the sender's `serde` made (`rmp_serde::from_slice` decodes one).
///
/// ```
/// # fn demo(frame: foundation_distributed::node::Frame) {
/// for body in frame.messages() {
///     let v: Result<u64, _> = rmp_serde::from_slice(body);
/// #   let _ = v;
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The node that sent the messages.
    pub from: Arc<str>,
    /// The frame's messages, each a 4-byte big-endian length and that many bytes.
    body: Bytes,
    /// How many messages `body` holds.
    count: usize,
}

impl Frame {
    /// How many messages the frame holds (at least one).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a frame holds at least one message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each message's bytes, in the order sent.
    pub fn messages(&self) -> FrameMessages<'_> {
        FrameMessages {
            body: &self.body,
            at: 0,
            left: self.count,
        }
    }

    /// The frame's bytes as received (see [`messages`](Self::messages) for the layout).
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }
}

/// The messages of a [`Frame`], each as the bytes the sender encoded.
#[derive(Debug, Clone)]
pub struct FrameMessages<'a> {
    body: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Iterator for FrameMessages<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (m, next) = next_message(self.body, self.at)?;
        self.at = next;
        self.left = self.left.saturating_sub(1);
        Some(m)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for FrameMessages<'_> {}

/// An item of a batched queue: the item, and the room it holds (released on receipt).
type Held<I> = (I, u32);

/// The sending side of a batched queue: items of one or more messages each, bounded in
/// messages by `room` (an item of `k` messages holds `min(k, cap)` units, so a frame of
/// more messages than the capacity is never split: it waits until the queue is empty).
struct Feed<I> {
    tx: tokio::sync::mpsc::UnboundedSender<Held<I>>,
    room: Arc<Semaphore>,
    cap: usize,
}

impl<I: Send + 'static> Feed<I> {
    /// Units an item of `n` messages holds.
    fn units(&self, n: usize) -> u32 {
        u32::try_from(n.clamp(1, self.cap)).unwrap_or(u32::MAX)
    }

    /// Hands `item` (of `n` messages) over now if there is room, otherwise (when
    /// `may_wait`) by the returned future once there is; failures are counted.
    fn offer(&self, item: I, n: usize, may_wait: bool) -> Attempt {
        use tokio::sync::TryAcquireError;
        let units = self.units(n);
        match self.room.try_acquire_many(units) {
            Ok(p) => {
                p.forget();
                Attempt::Done(self.put(item, units))
            }
            Err(TryAcquireError::Closed) => Attempt::Done(Outcome::Closed),
            Err(TryAcquireError::NoPermits) if !may_wait => Attempt::Done(Outcome::Full),
            Err(TryAcquireError::NoPermits) => {
                let (tx, room) = (self.tx.clone(), self.room.clone());
                Attempt::Wait(Box::pin(async move {
                    match room.acquire_many(units).await {
                        Ok(p) => {
                            p.forget();
                            match tx.send((item, units)) {
                                Ok(()) => Outcome::Delivered,
                                Err(_) => Outcome::Closed,
                            }
                        }
                        Err(_) => Outcome::Closed,
                    }
                }))
            }
        }
    }

    fn put(&self, item: I, units: u32) -> Outcome {
        match self.tx.send((item, units)) {
            Ok(()) => Outcome::Delivered,
            Err(_) => Outcome::Closed,
        }
    }
}

/// The receiving side of a batched queue.
struct Drain<I> {
    rx: tokio::sync::mpsc::UnboundedReceiver<Held<I>>,
    room: Arc<Semaphore>,
    cap: usize,
}

impl<I> Drain<I> {
    async fn recv(&mut self) -> Option<I> {
        let (item, units) = self.rx.recv().await?;
        self.room.add_permits(units as usize);
        Some(item)
    }

    fn try_recv(&mut self) -> Result<I, tokio::sync::mpsc::error::TryRecvError> {
        let (item, units) = self.rx.try_recv()?;
        self.room.add_permits(units as usize);
        Ok(item)
    }
}

impl<I> Drop for Drain<I> {
    fn drop(&mut self) {
        // Deliveries waiting for room end (counted as `receiver_closed`).
        self.room.close();
    }
}

fn feed<I>(capacity: usize) -> (Feed<I>, Drain<I>) {
    // The semaphore's limit is far above any queue anyone would configure.
    let cap = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(cap));
    (
        Feed {
            tx,
            room: room.clone(),
            cap,
        },
        Drain { rx, room, cap },
    )
}

/// The receiving end of [`Node::register_batched`](super::Node::register_batched): one
/// [`Batch`] per received frame.
///
/// Bounded in **messages**: it holds at most [`capacity`](Self::capacity) messages, except
/// that a frame holding more is not split (it is handed over whole once the receiver is
/// empty), so it holds at most `max(capacity, one frame)` (a frame is at most 64 KiB of
/// encoded messages). A frame that finds no room waits on a data channel (end-to-end
/// backpressure to the sender, nothing dropped; see the [module docs](super)). Dropping
/// the receiver (or registering another receiver or server under its name) ends it;
/// frames arriving later are dropped and counted (`reason="receiver_closed"` or
/// `"no_receiver"`).
pub struct BatchReceiver<T> {
    drain: Drain<Batch<T>>,
}

impl<T> std::fmt::Debug for BatchReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReceiver")
            .field("capacity", &self.drain.cap)
            .finish()
    }
}

impl<T> BatchReceiver<T> {
    /// The next batch; `None` once the receiver was replaced or the node dropped it and
    /// every batch delivered before was taken.
    pub async fn recv(&mut self) -> Option<Batch<T>> {
        self.drain.recv().await
    }

    /// The next batch if one is waiting.
    pub fn try_recv(&mut self) -> Result<Batch<T>, tokio::sync::mpsc::error::TryRecvError> {
        self.drain.try_recv()
    }

    /// The bound in messages (see the [type docs](Self)).
    pub fn capacity(&self) -> usize {
        self.drain.cap
    }
}

/// The receiving end of [`Node::register_frames`](super::Node::register_frames): one
/// [`Frame`] per received frame, bounded as [`BatchReceiver`] is.
pub struct FrameReceiver {
    drain: Drain<Frame>,
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("capacity", &self.drain.cap)
            .finish()
    }
}

impl FrameReceiver {
    /// The next frame; `None` once the receiver was replaced or the node dropped it and
    /// every frame delivered before was taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.drain.recv().await
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&mut self) -> Result<Frame, tokio::sync::mpsc::error::TryRecvError> {
        self.drain.try_recv()
    }

    /// The bound in messages (see [`BatchReceiver`]).
    pub fn capacity(&self) -> usize {
        self.drain.cap
    }
}

/// A batched receiver of `T` of `capacity` messages, and the slot feeding it.
pub(crate) fn batched<T>(capacity: usize) -> (Slot, BatchReceiver<T>)
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (feed, drain) = feed::<Batch<T>>(capacity);
    let feed = Arc::new(feed);
    let one_feed = feed.clone();
    let one: Deliver = Arc::new(move |from: &str, body: &Bytes, may_wait: bool| {
        let Ok(v) = rmp_serde::from_slice::<T>(body) else {
            return Attempt::Done(Outcome::Undecodable);
        };
        let batch = Batch {
            from: from.into(),
            messages: vec![v],
        };
        one_feed.offer(batch, 1, may_wait)
    });
    let many: DeliverMany = Arc::new(move |from: &Arc<str>, body: Bytes, n: usize, may_wait| {
        let mut messages = Vec::with_capacity(n);
        let mut at = 0;
        while let Some((m, next)) = next_message(&body, at) {
            at = next;
            match rmp_serde::from_slice::<T>(m) {
                Ok(v) => messages.push(v),
                Err(_) => dropped(Outcome::Undecodable, 1),
            }
        }
        let k = messages.len();
        if k == 0 {
            return None;
        }
        let batch = Batch {
            from: from.clone(),
            messages,
        };
        settle(feed.offer(batch, k, may_wait), k)
    });
    (Slot::Receiver(one, many), BatchReceiver { drain })
}

/// A frame receiver of `capacity` messages, and the slot feeding it.
pub(crate) fn frames(capacity: usize) -> (Slot, FrameReceiver) {
    let (feed, drain) = feed::<Frame>(capacity);
    let feed = Arc::new(feed);
    let one_feed = feed.clone();
    let one: Deliver = Arc::new(move |from: &str, body: &Bytes, may_wait: bool| {
        // One message outside a batch (acknowledged, broadcast): given the batch layout.
        let Ok(len) = u32::try_from(body.len()) else {
            return Attempt::Done(Outcome::Undecodable);
        };
        let mut v = Vec::with_capacity(super::wire::LEN_PREFIX + body.len());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        let frame = Frame {
            from: from.into(),
            body: Bytes::from(v),
            count: 1,
        };
        one_feed.offer(frame, 1, may_wait)
    });
    let many: DeliverMany = Arc::new(move |from: &Arc<str>, body: Bytes, n: usize, may_wait| {
        let frame = Frame {
            from: from.clone(),
            body,
            count: n,
        };
        settle(feed.offer(frame, n, may_wait), n)
    });
    (Slot::Receiver(one, many), FrameReceiver { drain })
}

/// A batch delivery's attempt as `DeliverMany` reports it: failures of its `n` messages
/// counted, a wait returned.
fn settle(a: Attempt, n: usize) -> Option<BoxFuture<'static, ()>> {
    match a {
        Attempt::Done(o) => {
            dropped(o, n as u64);
            None
        }
        Attempt::Wait(fut) => Some(Box::pin(async move {
            let o = fut.await;
            dropped(o, n as u64);
        })),
    }
}

/// One outgoing acknowledged stream (to one destination).
pub(crate) struct Outgoing {
    pub next: u64,
    pub unacked: VecDeque<(u64, String, Bytes)>,
    pub last_sent: Option<Instant>,
    pub window: Arc<Semaphore>,
}

/// One incoming acknowledged stream (from one sender incarnation).
#[derive(Default)]
pub(crate) struct Incoming {
    /// The next sequence to deliver.
    pub expected: u64,
    /// Out-of-order messages held until the gap fills.
    pub held: BTreeMap<u64, (String, Bytes)>,
}

/// Acknowledged-delivery state of a node.
#[derive(Default)]
pub(crate) struct AckedStreams {
    pub out: Mutex<HashMap<String, Outgoing>>,
    pub inc: Mutex<HashMap<(String, u64), Incoming>>,
}

impl AckedStreams {
    /// The window semaphore of the stream to `to` (created with `window` permits).
    pub fn window(&self, to: &str, window: usize) -> Arc<Semaphore> {
        self.out
            .lock()
            .entry(to.to_string())
            .or_insert_with(|| Outgoing {
                next: 1,
                unacked: VecDeque::new(),
                last_sent: None,
                window: Arc::new(Semaphore::new(window)),
            })
            .window
            .clone()
    }

    /// Queues a message for `to`; returns its sequence and the stream's base.
    pub fn push(&self, to: &str, name: &str, body: Bytes) -> (u64, u64) {
        let mut out = self.out.lock();
        let o = out.get_mut(to).expect("window() first");
        let seq = o.next;
        o.next += 1;
        o.unacked.push_back((seq, name.to_string(), body));
        let base = o.unacked.front().map_or(seq, |(s, _, _)| *s);
        (seq, base)
    }

    /// Drops what `upto` covers; returns how many.
    pub fn acked(&self, to: &str, upto: u64) -> usize {
        let mut out = self.out.lock();
        let Some(o) = out.get_mut(to) else { return 0 };
        let mut n = 0;
        while o.unacked.front().is_some_and(|(s, _, _)| *s <= upto) {
            o.unacked.pop_front();
            n += 1;
        }
        o.window.add_permits(n);
        n
    }

    /// Messages in retransmit buffers.
    pub fn buffered(&self) -> usize {
        self.out.lock().values().map(|o| o.unacked.len()).sum()
    }
}
