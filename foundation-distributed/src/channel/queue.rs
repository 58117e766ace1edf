//! The bounded outbound queue of one connection (bounded in messages and in payload
//! bytes), with optional monotonic supersession.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, TryAcquireError};

/// One queued message.
#[derive(Debug)]
pub(crate) struct Item {
    pub key: Option<u64>,
    pub payload: Bytes,
    pub queued: Instant,
    /// Byte permits this item holds while queued (set by the queue).
    pub cost: u32,
}

impl Item {
    pub(crate) fn new(key: Option<u64>, payload: Bytes) -> Self {
        Item {
            key,
            payload,
            queued: Instant::now(),
            cost: 0,
        }
    }
}

/// Why a push was refused; the item comes back.
#[derive(Debug)]
pub(crate) enum Refused {
    Full(Item),
    Closed(Item, Arc<str>),
}

#[derive(Debug)]
struct State {
    items: VecDeque<Item>,
    /// Items popped so far: the sequence number of `items[0]`.
    popped: u64,
    /// Monotonic mode: key → sequence number of its queued item.
    latest: HashMap<u64, u64>,
    closed: Option<Arc<str>>,
}

/// A bounded multi-producer, single-consumer queue.
///
/// Capacity is two semaphores: one permit per message and one per payload byte. A push
/// takes a message permit and `min(len, max_bytes)` byte permits (so a message larger
/// than the byte bound still goes, alone); a pop returns them, so `push().await` waits
/// for space in FIFO order. In monotonic mode a push whose key already has a queued item
/// replaces that item in place (keeping its position, so per-key order holds), needs no
/// permit and takes over the replaced item's byte permits.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    space: Semaphore,
    bytes: Semaphore,
    max_bytes: u32,
    ready: Notify,
    monotonic: bool,
    depth: Gauge,
    queued_bytes: Gauge,
    superseded: Counter,
    /// What this connection's writer wrote, for [`Channels::stats`](super::Channels::stats).
    pub(crate) live: super::stats::LiveCounters,
}

/// Gauges and counters of a queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueMeters {
    /// Messages queued.
    pub depth: Gauge,
    /// Payload bytes queued.
    pub bytes: Gauge,
    /// Messages superseded.
    pub superseded: Counter,
}

impl Queue {
    /// `capacity` messages and `max_bytes` payload bytes (at least 1 each).
    pub(crate) fn new(
        capacity: usize,
        max_bytes: u32,
        monotonic: bool,
        meters: QueueMeters,
    ) -> Self {
        let max_bytes = max_bytes.max(1);
        Queue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(1024)),
                popped: 0,
                latest: HashMap::new(),
                closed: None,
            }),
            space: Semaphore::new(capacity),
            bytes: Semaphore::new(max_bytes as usize),
            max_bytes,
            ready: Notify::new(),
            monotonic,
            depth: meters.depth,
            queued_bytes: meters.bytes,
            superseded: meters.superseded,
            live: super::stats::LiveCounters::default(),
        }
    }

    /// The byte permits `item` needs.
    fn cost(&self, item: &Item) -> u32 {
        u32::try_from(item.payload.len()).map_or(self.max_bytes, |l| l.min(self.max_bytes))
    }

    /// Returns the space of items taken out of the queue.
    fn release(&self, items: usize, cost: usize, bytes: usize) {
        if items > 0 {
            self.depth.decrement(items as f64);
            self.queued_bytes.decrement(bytes as f64);
            self.space.add_permits(items);
            self.bytes.add_permits(cost);
        }
    }

    /// Replaces the queued item of the same key, if monotonic and there is one.
    fn supersede(&self, st: &mut State, mut item: Item) -> Result<(), Item> {
        if !self.monotonic {
            return Err(item);
        }
        let Some(key) = item.key else {
            return Err(item);
        };
        match st.latest.get(&key) {
            Some(&seq) => {
                // Invariant: `latest` only holds sequence numbers of queued items.
                let idx = (seq - st.popped) as usize;
                let old = &mut st.items[idx];
                item.cost = old.cost;
                self.queued_bytes.increment(item.payload.len() as f64);
                self.queued_bytes.decrement(old.payload.len() as f64);
                *old = item;
                self.superseded.increment(1);
                Ok(())
            }
            None => Err(item),
        }
    }

    fn append(&self, st: &mut State, item: Item) {
        let seq = st.popped + st.items.len() as u64;
        if self.monotonic {
            if let Some(key) = item.key {
                st.latest.insert(key, seq);
            }
        }
        self.depth.increment(1.0);
        self.queued_bytes.increment(item.payload.len() as f64);
        st.items.push_back(item);
    }

    /// Queues `item`, waiting for space.
    pub(crate) async fn push(&self, item: Item) -> Result<(), Refused> {
        let item = {
            let mut st = self.state.lock();
            if let Some(reason) = &st.closed {
                return Err(Refused::Closed(item, reason.clone()));
            }
            match self.supersede(&mut st, item) {
                Ok(()) => return Ok(()),
                Err(item) => item,
            }
        };
        let cost = self.cost(&item);
        let permits = match self.space.acquire().await {
            Ok(p) => match self.bytes.acquire_many(cost).await {
                Ok(b) => Some((p, b)),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some((permit, bytes)) = permits else {
            let reason = self.closed().unwrap_or_else(|| "closed".into());
            return Err(Refused::Closed(item, reason));
        };
        self.finish_push(permit, bytes, cost, item)
    }

    /// Queues `item` if there is space now.
    pub(crate) fn try_push(&self, item: Item) -> Result<(), Refused> {
        let item = {
            let mut st = self.state.lock();
            if let Some(reason) = &st.closed {
                return Err(Refused::Closed(item, reason.clone()));
            }
            match self.supersede(&mut st, item) {
                Ok(()) => return Ok(()),
                Err(item) => item,
            }
        };
        let cost = self.cost(&item);
        let permits = self
            .space
            .try_acquire()
            .and_then(|p| self.bytes.try_acquire_many(cost).map(|b| (p, b)));
        match permits {
            Ok((permit, bytes)) => self.finish_push(permit, bytes, cost, item),
            Err(TryAcquireError::NoPermits) => Err(Refused::Full(item)),
            Err(TryAcquireError::Closed) => {
                let reason = self.closed().unwrap_or_else(|| "closed".into());
                Err(Refused::Closed(item, reason))
            }
        }
    }

    fn finish_push(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
        bytes: tokio::sync::SemaphorePermit<'_>,
        cost: u32,
        item: Item,
    ) -> Result<(), Refused> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.closed {
            return Err(Refused::Closed(item, reason.clone()));
        }
        // Another producer may have queued the same key while we waited for space.
        let mut item = match self.supersede(&mut st, item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        permit.forget();
        bytes.forget();
        item.cost = cost;
        self.append(&mut st, item);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    fn take(&self, st: &mut State) -> Option<Item> {
        let item = st.items.pop_front()?;
        let seq = st.popped;
        st.popped += 1;
        if let Some(key) = item.key {
            if self.monotonic && st.latest.get(&key) == Some(&seq) {
                st.latest.remove(&key);
            }
        }
        self.release(1, item.cost as usize, item.payload.len());
        Some(item)
    }

    /// The next item; `None` once closed and drained. Single consumer. Cancel safe: an
    /// item is only taken in the same poll that returns it.
    pub(crate) async fn pop(&self) -> Option<Item> {
        loop {
            {
                let mut st = self.state.lock();
                if let Some(item) = self.take(&mut st) {
                    return Some(item);
                }
                if st.closed.is_some() {
                    return None;
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the
            // check above and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// Moves queued items into `out` (after what it holds) under one lock, until it holds
    /// `max_items` or `max_bytes` of payload; returns the space to producers at once. Never
    /// waits. Single consumer.
    pub(crate) fn take_batch(&self, out: &mut VecDeque<Item>, max_items: usize, max_bytes: usize) {
        let mut bytes: usize = out.iter().map(|i| i.payload.len()).sum();
        let (mut taken, mut cost, mut taken_bytes) = (0usize, 0usize, 0usize);
        let mut st = self.state.lock();
        while out.len() < max_items && bytes < max_bytes {
            let Some(item) = st.items.pop_front() else {
                break;
            };
            let seq = st.popped;
            st.popped += 1;
            if let Some(key) = item.key {
                if self.monotonic && st.latest.get(&key) == Some(&seq) {
                    st.latest.remove(&key);
                }
            }
            bytes += item.payload.len();
            taken_bytes += item.payload.len();
            cost += item.cost as usize;
            taken += 1;
            out.push_back(item);
        }
        drop(st);
        self.release(taken, cost, taken_bytes);
    }

    /// Whether nothing is queued.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.state.lock().items.is_empty()
    }

    /// Refuses further pushes; queued items are still popped.
    pub(crate) fn close(&self, reason: &str) {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            st.closed = Some(reason.into());
        }
        drop(st);
        self.space.close();
        self.bytes.close();
        self.ready.notify_one();
    }

    /// Refuses further pushes and discards what is queued; returns how many were
    /// discarded.
    pub(crate) fn fail(&self, reason: &str) -> usize {
        let mut st = self.state.lock();
        if st.closed.is_none() {
            st.closed = Some(reason.into());
        }
        let n = st.items.len();
        let bytes: usize = st.items.iter().map(|i| i.payload.len()).sum();
        st.popped += n as u64;
        st.items.clear();
        st.latest.clear();
        self.depth.decrement(n as f64);
        self.queued_bytes.decrement(bytes as f64);
        drop(st);
        self.space.close();
        self.bytes.close();
        self.ready.notify_one();
        n
    }

    /// Items queued and their payload bytes, read under the lock (for observers).
    pub(crate) fn depth(&self) -> (usize, u64) {
        let st = self.state.lock();
        let bytes = st.items.iter().map(|i| i.payload.len() as u64).sum();
        (st.items.len(), bytes)
    }

    /// Why the queue closed, if it did.
    pub(crate) fn closed(&self) -> Option<Arc<str>> {
        self.state.lock().closed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: Option<u64>, v: &'static [u8]) -> Item {
        Item::new(key, Bytes::from_static(v))
    }

    fn meters() -> QueueMeters {
        QueueMeters {
            depth: Gauge::noop(),
            bytes: Gauge::noop(),
            superseded: Counter::noop(),
        }
    }

    fn queue(cap: usize, monotonic: bool) -> Queue {
        Queue::new(cap, 1 << 20, monotonic, meters())
    }

    #[tokio::test]
    async fn bounded_in_bytes_as_well_as_messages() {
        let q = Queue::new(100, 10, false, meters());
        q.try_push(item(None, b"0123456")).unwrap();
        // 7 of 10 bytes queued: 4 more do not fit, 3 do.
        assert!(matches!(
            q.try_push(item(None, b"abcd")),
            Err(Refused::Full(_))
        ));
        q.try_push(item(None, b"abc")).unwrap();
        assert!(matches!(
            q.try_push(item(None, b"x")),
            Err(Refused::Full(_))
        ));
        // A waiting push goes once a pop returns the bytes.
        let waiting = q.push(item(None, b"wxyz"));
        tokio::pin!(waiting);
        assert!(futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none());
        assert_eq!(q.pop().await.unwrap().payload, &b"0123456"[..]);
        waiting.await.unwrap();
        // A message larger than the bound goes alone.
        let mut out = VecDeque::new();
        q.take_batch(&mut out, 10, 1 << 20);
        assert_eq!(out.len(), 2);
        q.try_push(item(None, b"larger than ten bytes")).unwrap();
        assert!(matches!(
            q.try_push(item(None, b"y")),
            Err(Refused::Full(_))
        ));
        assert_eq!(q.pop().await.unwrap().payload.len(), 21);
        q.try_push(item(None, b"y")).unwrap();
    }

    #[tokio::test]
    async fn supersedes_in_place_and_keeps_other_keys() {
        let q = queue(4, true);
        q.try_push(item(Some(1), b"a1")).unwrap();
        q.try_push(item(Some(2), b"b1")).unwrap();
        q.try_push(item(Some(1), b"a2")).unwrap();
        q.try_push(item(None, b"n")).unwrap();
        q.try_push(item(Some(1), b"a3")).unwrap();
        let got: Vec<_> = [q.pop().await, q.pop().await, q.pop().await]
            .into_iter()
            .map(|i| i.unwrap().payload)
            .collect();
        assert_eq!(got, [&b"a3"[..], b"b1", b"n"]);
        assert!(q.is_empty());
        // Popped: the next update for key 1 is queued anew.
        q.try_push(item(Some(1), b"a4")).unwrap();
        assert_eq!(q.pop().await.unwrap().payload, &b"a4"[..]);
    }

    #[tokio::test]
    async fn full_returns_the_item_and_fail_discards() {
        let q = queue(1, false);
        q.try_push(item(Some(1), b"x")).unwrap();
        match q.try_push(item(Some(1), b"y")) {
            Err(Refused::Full(i)) => assert_eq!(i.payload, &b"y"[..]),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.fail("gone"), 1);
        assert!(
            matches!(q.try_push(item(None, b"z")), Err(Refused::Closed(_, r)) if &*r == "gone")
        );
        assert!(q.pop().await.is_none());
    }
}
