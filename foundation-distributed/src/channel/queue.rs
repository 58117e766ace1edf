//! The bounded outbound queue of one connection, with optional monotonic supersession.

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
/// Capacity is a semaphore: a push takes a permit, a pop returns one, so `push().await`
/// waits for space in FIFO order. In monotonic mode a push whose key already has a queued
/// item replaces that item in place (keeping its position, so per-key order holds) and
/// needs no permit.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    space: Semaphore,
    ready: Notify,
    monotonic: bool,
    depth: Gauge,
    superseded: Counter,
}

impl Queue {
    pub(crate) fn new(capacity: usize, monotonic: bool, depth: Gauge, superseded: Counter) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(1024)),
                popped: 0,
                latest: HashMap::new(),
                closed: None,
            }),
            space: Semaphore::new(capacity),
            ready: Notify::new(),
            monotonic,
            depth,
            superseded,
        }
    }

    /// Replaces the queued item of the same key, if monotonic and there is one.
    fn supersede(&self, st: &mut State, item: Item) -> Result<(), Item> {
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
                st.items[idx] = item;
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
        st.items.push_back(item);
        self.depth.increment(1.0);
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
        let permit = match self.space.acquire().await {
            Ok(p) => p,
            Err(_) => {
                let reason = self
                    .state
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "closed".into());
                return Err(Refused::Closed(item, reason));
            }
        };
        self.finish_push(permit, item)
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
        match self.space.try_acquire() {
            Ok(permit) => self.finish_push(permit, item),
            Err(TryAcquireError::NoPermits) => Err(Refused::Full(item)),
            Err(TryAcquireError::Closed) => {
                let reason = self
                    .state
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "closed".into());
                Err(Refused::Closed(item, reason))
            }
        }
    }

    fn finish_push(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
        item: Item,
    ) -> Result<(), Refused> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.closed {
            return Err(Refused::Closed(item, reason.clone()));
        }
        // Another producer may have queued the same key while we waited for space.
        let item = match self.supersede(&mut st, item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        permit.forget();
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
        self.depth.decrement(1.0);
        self.space.add_permits(1);
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
        let mut taken = 0usize;
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
            taken += 1;
            out.push_back(item);
        }
        drop(st);
        if taken > 0 {
            self.depth.decrement(taken as f64);
            self.space.add_permits(taken);
        }
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
        st.popped += n as u64;
        st.items.clear();
        st.latest.clear();
        self.depth.decrement(n as f64);
        drop(st);
        self.space.close();
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
        Item {
            key,
            payload: Bytes::from_static(v),
            queued: Instant::now(),
        }
    }

    fn queue(cap: usize, monotonic: bool) -> Queue {
        Queue::new(cap, monotonic, Gauge::noop(), Counter::noop())
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
