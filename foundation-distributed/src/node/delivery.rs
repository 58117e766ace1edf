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
/// Delivers the messages of a `SendBatch` body from `from` (checked by
/// `wire::batch_count`), in order: those that find room at once here; at the first full
/// queue (when `may_wait`) the rest by the returned future, in order. Failed deliveries
/// are counted (`foundation_node_dropped_total{reason}`).
pub(crate) type DeliverMany =
    Arc<dyn Fn(&str, Bytes, bool) -> Option<BoxFuture<'static, ()>> + Send + Sync>;
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
    Arc::new(move |from: &str, body: Bytes, may_wait: bool| {
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
    })
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
