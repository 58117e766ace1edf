//! The bounded outbound queue of one connection (bounded in messages and in payload
//! bytes), with optional monotonic supersession and write-combining: a message pushed
//! with [`Queue::push_merging`] is appended to the last queued item of its key when that
//! item was pushed the same way with the same header bytes, so many small messages
//! queued behind a busy writer leave as one frame (D390).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, TryAcquireError};

/// Most payload bytes the queue lets an item grow to by appending messages to it
/// ([`Queue::push_merging`]); a message that does not fit opens a new item.
pub(crate) const MERGE_MAX: usize = 64 * 1024;

/// How many items from the tail [`Queue::push_merging`] looks back for the last item of
/// the message's key (keys that share a connection interleave in its queue).
const MERGE_LOOKBACK: usize = 8;

/// One queued message (or, after [`Queue::push_merging`], several appended into one).
#[derive(Debug)]
pub(crate) struct Item {
    pub key: Option<u64>,
    pub payload: Bytes,
    pub queued: Instant,
    /// Byte permits this item holds while queued (set by the queue).
    pub cost: u32,
    /// Messages pushed into this item: 1, or more once others were appended to it. Each
    /// holds one of the queue's message permits while queued.
    pub messages: u32,
    /// The length of the header that a message appended to this item must start with
    /// (0: nothing is appended to it).
    merge: u32,
    /// While messages are appended: the payload being built (taken out as `payload`
    /// when the item leaves the queue).
    /// (Boxed: it is rare, and keeps `Item`, moved on every push, small.)
    building: Option<Box<BytesMut>>,
}

impl Item {
    pub(crate) fn new(key: Option<u64>, payload: Bytes) -> Self {
        Item {
            key,
            payload,
            queued: Instant::now(),
            cost: 0,
            messages: 1,
            merge: 0,
            building: None,
        }
    }

    /// Payload bytes, appended ones included.
    fn len(&self) -> usize {
        self.building
            .as_ref()
            .map_or(self.payload.len(), |b| b.len())
    }

    /// The payload with every appended message.
    fn seal(&mut self) {
        if let Some(b) = self.building.take() {
            self.payload = (*b).freeze();
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
        u32::try_from(item.len()).map_or(self.max_bytes, |l| l.min(self.max_bytes))
    }

    /// Appends the part of `payload` after its `header` bytes to the last queued item of
    /// the same key (looking back at most [`MERGE_LOOKBACK`] items), if that item takes
    /// appends with the same header, the result stays within [`MERGE_MAX`] and the byte
    /// bound, and a message permit and the byte permits of the appended part are free
    /// now. Never waits. Never on a monotonic queue. Per-key order holds: nothing of the
    /// key is queued after that item; messages of other keys queued after it may now
    /// leave after this one (order across keys is not promised).
    fn try_merge(&self, st: &mut State, key: Option<u64>, payload: &[u8], header: usize) -> bool {
        if self.monotonic || header == 0 || header >= payload.len() {
            return false;
        }
        let Some(tail) = st
            .items
            .iter_mut()
            .rev()
            .take(MERGE_LOOKBACK)
            .find(|i| i.key == key)
        else {
            return false;
        };
        let add = payload.len() - header;
        let cap = MERGE_MAX.min(self.max_bytes as usize);
        if tail.merge as usize != header
            || tail.len() + add > cap
            || tail.payload.get(..header) != payload.get(..header)
        {
            return false;
        }
        let Ok(space) = self.space.try_acquire() else {
            return false;
        };
        // `add` < MERGE_MAX, so it fits a u32.
        let Ok(bytes) = self.bytes.try_acquire_many(add as u32) else {
            return false;
        };
        space.forget();
        bytes.forget();
        let building = tail.building.get_or_insert_with(|| {
            let mut b = BytesMut::with_capacity((4 * tail.payload.len()).max(256).min(cap));
            b.extend_from_slice(&tail.payload);
            Box::new(b)
        });
        building.extend_from_slice(&payload[header..]);
        tail.messages += 1;
        tail.cost += add as u32;
        self.depth.increment(1.0);
        self.queued_bytes.increment(add as f64);
        true
    }

    /// Returns the space of `messages` taken out of the queue.
    fn release(&self, messages: usize, cost: usize, bytes: usize) {
        if messages > 0 {
            self.depth.decrement(messages as f64);
            self.queued_bytes.decrement(bytes as f64);
            self.space.add_permits(messages);
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
        self.queued_bytes.increment(item.len() as f64);
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

    /// Queues `payload`, a message whose first `header` bytes say where it goes: appended
    /// to the last queued item of its key if that one was pushed this way with the same
    /// header and there is room (see `try_merge`; no wait, no wake-up of the writer, one
    /// message permit), otherwise as an item of its own that later messages may be
    /// appended to (waiting for space like [`push`](Self::push)). Per-key order holds:
    /// appends go to the key's last item only. Whoever reads the payload must take a run of messages
    /// after one header for what it is: the node's `SendBatch` frame is made for it.
    pub(crate) async fn push_merging(
        &self,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<(), Refused> {
        match self.merge_now(key, payload, header) {
            Ok(()) => Ok(()),
            Err(Err(refused)) => Err(refused),
            Err(Ok((payload, header))) => self.push(Self::mergeable(key, payload, header)).await,
        }
    }

    /// [`push_merging`](Self::push_merging) without waiting: [`Refused::Full`] when
    /// neither an append nor a new item fits now.
    pub(crate) fn try_push_merging(
        &self,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<(), Refused> {
        match self.merge_now(key, payload, header) {
            Ok(()) => Ok(()),
            Err(Err(refused)) => Err(refused),
            Err(Ok((payload, header))) => self.try_push(Self::mergeable(key, payload, header)),
        }
    }

    /// Appends `payload` (see [`push_merging`](Self::push_merging)) to a waiting item if
    /// it can be done now; `false` (nothing queued) otherwise, also when closed. Takes a
    /// borrowed message, so a caller that encodes into a reused buffer allocates nothing
    /// for a message that is appended.
    pub(crate) fn append_now(&self, key: Option<u64>, payload: &[u8], header: usize) -> bool {
        let mut st = self.state.lock();
        st.closed.is_none() && self.try_merge(&mut st, key, payload, header)
    }

    fn mergeable(key: Option<u64>, payload: Bytes, header: usize) -> Item {
        let mut item = Item::new(key, payload);
        item.merge = u32::try_from(header).unwrap_or(0);
        item
    }

    /// Appends under the lock if possible; otherwise hands the message back (`Ok`) or
    /// the refusal of a closed queue.
    #[allow(clippy::type_complexity)]
    fn merge_now(
        &self,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<(), Result<(Bytes, usize), Refused>> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.closed {
            return Err(Err(Refused::Closed(
                Item::new(key, payload),
                reason.clone(),
            )));
        }
        if self.try_merge(&mut st, key, &payload, header) {
            return Ok(());
        }
        Err(Ok((payload, header)))
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
        let mut item = st.items.pop_front()?;
        let seq = st.popped;
        st.popped += 1;
        if let Some(key) = item.key {
            if self.monotonic && st.latest.get(&key) == Some(&seq) {
                st.latest.remove(&key);
            }
        }
        item.seal();
        self.release(
            item.messages as usize,
            item.cost as usize,
            item.payload.len(),
        );
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
            let Some(mut item) = st.items.pop_front() else {
                break;
            };
            item.seal();
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
            taken += item.messages as usize;
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
        let n: usize = st.items.iter().map(|i| i.messages as usize).sum();
        let bytes: usize = st.items.iter().map(Item::len).sum();
        st.popped += st.items.len() as u64;
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

    /// Messages queued and their payload bytes, read under the lock (for observers).
    pub(crate) fn depth(&self) -> (usize, u64) {
        let st = self.state.lock();
        let bytes = st.items.iter().map(|i| i.len() as u64).sum();
        let messages = st.items.iter().map(|i| i.messages as usize).sum();
        (messages, bytes)
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

    /// A "frame" of header `h` and body `b` (what the node's `SendBatch` looks like to
    /// the queue).
    fn framed(h: &[u8], b: &[u8]) -> Bytes {
        let mut v = h.to_vec();
        v.extend_from_slice(b);
        Bytes::from(v)
    }

    #[tokio::test]
    async fn appends_runs_of_the_same_key_and_header_in_order() {
        let q = queue(100, false);
        q.push_merging(Some(1), framed(b"HH", b"a"), 2)
            .await
            .unwrap();
        q.push_merging(Some(1), framed(b"HH", b"b"), 2)
            .await
            .unwrap();
        q.try_push_merging(Some(1), framed(b"HH", b"c"), 2).unwrap();
        // Another key, another header, a plain push: each opens an item of its own.
        q.push_merging(Some(2), framed(b"HH", b"d"), 2)
            .await
            .unwrap();
        q.push_merging(Some(2), framed(b"GG", b"e"), 2)
            .await
            .unwrap();
        q.try_push(item(Some(2), b"GGf")).unwrap();
        // A plain item takes no appends.
        q.push_merging(Some(2), framed(b"GG", b"g"), 2)
            .await
            .unwrap();
        assert_eq!(q.depth().0, 7, "messages, not items");
        let mut out = VecDeque::new();
        q.take_batch(&mut out, 100, 1 << 20);
        let got: Vec<(Option<u64>, &[u8], u32)> = out
            .iter()
            .map(|i| (i.key, &i.payload[..], i.messages))
            .collect();
        assert_eq!(
            got,
            [
                (Some(1), &b"HHabc"[..], 3),
                (Some(2), b"HHd", 1),
                (Some(2), b"GGe", 1),
                (Some(2), b"GGf", 1),
                (Some(2), b"GGg", 1),
            ]
        );
        assert!(q.is_empty());
        // Taken: the next message opens a new item.
        q.push_merging(Some(1), framed(b"HH", b"h"), 2)
            .await
            .unwrap();
        assert_eq!(q.pop().await.unwrap().payload, &b"HHh"[..]);
    }

    #[tokio::test]
    async fn interleaved_keys_append_to_their_own_last_item() {
        let q = queue(100, false);
        for (k, b) in [(1, b"a"), (2, b"b"), (1, b"c"), (2, b"d"), (1, b"e")] {
            q.try_push_merging(Some(k), framed(b"H", b), 1).unwrap();
        }
        // A plain item of key 1 ends key 1's run: later ones may not jump ahead of it.
        q.try_push(item(Some(1), b"Hf")).unwrap();
        q.try_push_merging(Some(1), framed(b"H", b"g"), 1).unwrap();
        q.try_push_merging(Some(2), framed(b"H", b"h"), 1).unwrap();
        let mut out = VecDeque::new();
        q.take_batch(&mut out, 100, 1 << 20);
        let got: Vec<(Option<u64>, &[u8])> = out.iter().map(|i| (i.key, &i.payload[..])).collect();
        assert_eq!(
            got,
            [
                (Some(1), &b"Hace"[..]),
                (Some(2), b"Hbdh"),
                (Some(1), b"Hf"),
                (Some(1), b"Hg"),
            ]
        );
    }

    #[tokio::test]
    async fn appended_messages_hold_message_and_byte_permits() {
        // Three messages of room: two appends fill it; the fourth waits (backpressure).
        let q = queue(3, false);
        for b in [b"1", b"2", b"3"] {
            q.try_push_merging(None, framed(b"H", b), 1).unwrap();
        }
        assert!(matches!(
            q.try_push_merging(None, framed(b"H", b"4"), 1),
            Err(Refused::Full(_))
        ));
        let waiting = q.push_merging(None, framed(b"H", b"4"), 1);
        tokio::pin!(waiting);
        assert!(futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none());
        // Taking the item returns all three permits at once.
        let first = q.pop().await.unwrap();
        assert_eq!((&first.payload[..], first.messages), (&b"H123"[..], 3));
        waiting.await.unwrap();
        assert_eq!(q.pop().await.unwrap().payload, &b"H4"[..]);

        // The byte bound: 10 bytes, header 1; "H" + 4 + 4 = 9 bytes fit, one more does not
        // go into the item (nor anywhere: the queue is full in bytes).
        let q = Queue::new(100, 10, false, meters());
        q.try_push_merging(None, framed(b"H", b"aaaa"), 1).unwrap();
        q.try_push_merging(None, framed(b"H", b"bbbb"), 1).unwrap();
        assert!(matches!(
            q.try_push_merging(None, framed(b"H", b"cc"), 1),
            Err(Refused::Full(_))
        ));
        assert_eq!(q.depth(), (2, 9));
        assert_eq!(q.pop().await.unwrap().payload, &b"Haaaabbbb"[..]);
        assert_eq!(q.depth(), (0, 0));
    }

    #[tokio::test]
    async fn items_stop_growing_at_the_merge_bound() {
        let q = Queue::new(1 << 16, 1 << 24, false, meters());
        let body = vec![7u8; 1000];
        for _ in 0..100 {
            q.try_push_merging(Some(3), framed(b"HDR", &body), 3)
                .unwrap();
        }
        let mut out = VecDeque::new();
        q.take_batch(&mut out, 1000, usize::MAX);
        let total: u32 = out.iter().map(|i| i.messages).sum();
        assert_eq!(total, 100);
        assert!(out.len() > 1);
        for i in &out {
            assert!(i.payload.len() <= MERGE_MAX, "{}", i.payload.len());
            assert_eq!(&i.payload[..3], b"HDR");
            assert_eq!(i.payload.len(), 3 + 1000 * i.messages as usize);
        }
    }

    #[tokio::test]
    async fn monotonic_and_closed_queues_do_not_append() {
        let q = queue(10, true);
        q.try_push_merging(Some(1), framed(b"H", b"a"), 1).unwrap();
        q.try_push_merging(Some(1), framed(b"H", b"b"), 1).unwrap();
        // Monotonic: the newer message replaced the older instead.
        assert_eq!(q.pop().await.unwrap().payload, &b"Hb"[..]);
        assert!(q.is_empty());

        let q = queue(10, false);
        q.try_push_merging(None, framed(b"H", b"a"), 1).unwrap();
        q.try_push_merging(None, framed(b"H", b"b"), 1).unwrap();
        assert_eq!(q.fail("gone"), 2, "discarded messages, not items");
        assert!(matches!(
            q.try_push_merging(None, framed(b"H", b"c"), 1),
            Err(Refused::Closed(_, r)) if &*r == "gone"
        ));
        assert!(matches!(
            q.push_merging(None, framed(b"H", b"c"), 1).await,
            Err(Refused::Closed(..))
        ));
    }
}
