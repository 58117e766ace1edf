//! The event store: a bounded, queryable history of events, in memory or durable.

use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::event::{CorrelationId, Event, EventId, EventType};
use super::segment::{self, Log, OpenReport};
use crate::error::Result;

/// When a durable store forces appended records to stable storage (`fdatasync`).
///
/// Whatever the policy, [`EventStore::append`] returns `Ok` only after the whole record
/// was handed to the operating system with one `write`, so an acknowledged event survives
/// a crash of the process. The policy decides what survives a crash of the machine
/// (power loss, kernel panic):
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsyncPolicy {
    /// Sync after every record, before `append` returns: every acknowledged event
    /// survives a machine crash.
    Always,
    /// Sync when `max_records` records are unsynced or the oldest unsynced record is
    /// `max_delay` old (checked on each append and by [`EventStore::sync_if_due`], which
    /// the `Events` service calls at least every `max_delay`). A machine crash loses at
    /// most the records appended since the last sync.
    Batch {
        /// Records between syncs.
        max_records: u32,
        /// Longest time a record stays unsynced while appends or ticks happen.
        max_delay: Duration,
    },
    /// Never sync explicitly; the operating system writes back when it chooses.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Batch {
            max_records: 64,
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Settings of an [`EventStore`]: retention for both kinds, files for the durable kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreOptions {
    /// Most events kept; the oldest are pruned beyond it. Default 100,000.
    pub max_events: usize,
    /// Oldest event kept, measured from when it was stored (on tokio's clock), or from
    /// its wall-clock timestamp for events restored from disk. `None` keeps events
    /// regardless of age. Default one hour.
    pub max_age: Option<Duration>,
    /// A durable store starts a new segment file when the current one reaches this size.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest encoded event accepted, in bytes; larger ones are refused with
    /// [`crate::Error::EventTooLarge`]. Default 4 MiB.
    pub max_record_bytes: u32,
    /// When a durable store syncs to stable storage.
    pub fsync: FsyncPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_events: 100_000,
            max_age: Some(Duration::from_secs(3600)),
            segment_bytes: 64 << 20,
            max_record_bytes: 4 << 20,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Order of query results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Oldest first (store order).
    #[default]
    Ascending,
    /// Newest first.
    Descending,
}

/// A query over the store: every condition given must hold; results come in store order
/// (the order of appends, which is timestamp order for events from one emitter) or its
/// reverse, then `offset` matches are skipped and at most `limit` returned.
///
/// ```
/// use foundation_core::events::{Order, Query};
/// let q = Query::new().event_type("user").limit(10).offset(20).order(Order::Descending);
/// # let _ = q;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    event_type: Option<String>,
    correlation: Option<CorrelationId>,
    from_us: Option<u64>,
    until_us: Option<u64>,
    limit: Option<usize>,
    offset: usize,
    order: Order,
}

impl Query {
    /// Matches every event.
    pub fn new() -> Self {
        Query::default()
    }

    /// Only events of this type.
    pub fn event_type(mut self, event_type: &str) -> Self {
        self.event_type = Some(event_type.to_string());
        self
    }

    /// Only events of this flow.
    pub fn correlation(mut self, id: CorrelationId) -> Self {
        self.correlation = Some(id);
        self
    }

    /// Only events whose wall-clock timestamp is in `[from, until)`.
    pub fn between(mut self, from: SystemTime, until: SystemTime) -> Self {
        self.from_us = Some(micros(from));
        self.until_us = Some(micros(until));
        self
    }

    /// Only events whose wall-clock timestamp is at or after `from`.
    pub fn since(mut self, from: SystemTime) -> Self {
        self.from_us = Some(micros(from));
        self
    }

    /// Only events whose wall-clock timestamp is before `until`.
    pub fn until(mut self, until: SystemTime) -> Self {
        self.until_us = Some(micros(until));
        self
    }

    /// At most `n` results.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skip the first `n` matches (in the chosen order).
    pub fn offset(mut self, n: usize) -> Self {
        self.offset = n;
        self
    }

    /// Result order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    fn matches(&self, e: &Event) -> bool {
        self.event_type
            .as_deref()
            .is_none_or(|t| e.event_type.as_str() == t)
            && self.correlation.is_none_or(|c| e.correlation_id == c)
            && self.from_us.is_none_or(|f| e.timestamp_us >= f)
            && self.until_us.is_none_or(|u| e.timestamp_us < u)
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Statistics of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events held now.
    pub stored: usize,
    /// Events held now, per type.
    pub by_type: BTreeMap<String, usize>,
    /// Events appended since the store was created or opened (restored ones excluded).
    pub appended_total: u64,
    /// Events removed by retention since the store was created or opened.
    pub pruned_total: u64,
    /// The oldest event held (store order).
    pub oldest: Option<(EventId, SystemTime)>,
    /// The newest event held.
    pub newest: Option<(EventId, SystemTime)>,
    /// Segment files of a durable store (0 in memory).
    pub segments: usize,
}

struct Entry {
    stored_at: Instant,
    segment: u64,
    event: Arc<Event>,
}

#[derive(Default)]
struct Memory {
    entries: VecDeque<Entry>,
    by_correlation: HashMap<CorrelationId, VecDeque<Arc<Event>>>,
    by_type: HashMap<EventType, usize>,
    appended_total: u64,
    pruned_total: u64,
}

impl Memory {
    fn insert(&mut self, event: Arc<Event>, stored_at: Instant, segment: u64) {
        self.by_correlation
            .entry(event.correlation_id)
            .or_default()
            .push_back(event.clone());
        *self.by_type.entry(event.event_type.clone()).or_default() += 1;
        self.entries.push_back(Entry {
            stored_at,
            segment,
            event,
        });
    }

    fn pop_oldest(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        let e = &entry.event;
        // Entries of one flow are in store order too, so the oldest is at the front.
        if let Some(flow) = self.by_correlation.get_mut(&e.correlation_id) {
            if flow.front().is_some_and(|f| f.id == e.id) {
                flow.pop_front();
            }
            if flow.is_empty() {
                self.by_correlation.remove(&e.correlation_id);
            }
        }
        if let Some(n) = self.by_type.get_mut(&e.event_type) {
            *n -= 1;
            if *n == 0 {
                self.by_type.remove(&e.event_type);
            }
        }
        self.pruned_total += 1;
        Some(entry)
    }

    /// Drops the oldest entries beyond `max_events` or older than `max_age`; returns how
    /// many.
    fn prune(&mut self, opts: &StoreOptions, now: Instant) -> usize {
        let mut n = 0;
        while self.entries.len() > opts.max_events {
            self.pop_oldest();
            n += 1;
        }
        if let Some(max_age) = opts.max_age {
            // stored_at is non-decreasing in store order, so the old ones are in front.
            while self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.stored_at) > max_age)
            {
                self.pop_oldest();
                n += 1;
            }
        }
        n
    }
}

pub(crate) struct StoreMetrics {
    stored: Gauge,
    pruned: Counter,
    pub(crate) corrupt: Counter,
}

impl StoreMetrics {
    fn new() -> Self {
        StoreMetrics {
            stored: metrics::gauge!("foundation_events_stored"),
            pruned: metrics::counter!("foundation_events_pruned_total"),
            corrupt: metrics::counter!("foundation_events_store_corrupt_records_total"),
        }
    }
}

struct State {
    mem: Memory,
}

/// What the store's handles and its writer thread share.
struct Core {
    options: StoreOptions,
    durable: bool,
    /// The events held; lock order: `state` before `log`.
    state: Mutex<State>,
    /// The segment files of a durable store; written only by the writer thread.
    log: Mutex<Option<Log>>,
    metrics: StoreMetrics,
}

struct StoreInner {
    core: Arc<Core>,
    /// Hands records to the writer thread of a durable store. Dropping it (with the last
    /// store clone) ends the thread once it has written what it was given.
    writer: Option<std::sync::mpsc::Sender<Job>>,
}

impl std::ops::Deref for StoreInner {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Most records the writer thread writes (and syncs) as one group.
const MAX_GROUP: usize = 1024;

/// How the writer thread answers an append.
enum Reply {
    Blocking(std::sync::mpsc::SyncSender<Result<()>>),
    Async(tokio::sync::oneshot::Sender<Result<()>>),
}

impl Reply {
    fn send(self, r: Result<()>) {
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(r);
            }
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One append for the writer thread.
struct Job {
    record: Vec<u8>,
    event: Arc<Event>,
    /// When it was appended, on the caller's (tokio) clock.
    at: Instant,
    reply: Reply,
}

/// The writer thread of a durable store: takes every queued record (up to
/// [`MAX_GROUP`]), writes them in order, syncs once for the group as the policy asks
/// (group commit), makes them visible in memory, then answers every appender.
fn write_groups(core: Arc<Core>, rx: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<u64>> = Vec::with_capacity(group.len());
        {
            let mut log = core.log.lock();
            let log = log.as_mut().expect("a durable store has a log");
            for job in &group {
                results.push(log.append_unsynced(&job.record, job.at));
            }
            if let Err(e) = log.sync_by_policy() {
                let reason = e.to_string();
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(crate::Error::Io {
                        context: "syncing the event store".into(),
                        source: std::io::Error::other(reason.clone()),
                    });
                }
            }
        }
        {
            let mut s = core.state.lock();
            let mut now = None;
            for (job, r) in group.iter().zip(&results) {
                if let Ok(segment) = r {
                    s.mem.insert(job.event.clone(), job.at, *segment);
                    s.mem.appended_total += 1;
                    now = Some(job.at);
                }
            }
            if let Some(now) = now {
                let pruned = s.mem.prune(&core.options, now);
                core.after_prune(&mut s, pruned);
            }
        }
        for (job, r) in group.into_iter().zip(results) {
            job.reply.send(r.map(|_| ()));
        }
    }
}

/// A bounded history of events with queries, in memory or backed by segment files.
/// Cheap to clone; clones share the same store.
///
/// Retention: at most [`StoreOptions::max_events`] events, none older than
/// [`StoreOptions::max_age`]; the oldest go first. Pruning runs on every append and
/// whenever [`prune`](Self::prune) is called (the `Events` service calls it periodically).
/// In a durable store a segment file is deleted once every event in it was pruned.
///
/// Reads are synchronous and hold one short lock. A durable store writes its segment
/// files on a dedicated writer thread, owned by the store (it ends when the last clone is
/// dropped, after writing what it was given), in groups: every record queued while a
/// group is written goes into the next one, with one sync per group
/// (group commit). [`append_async`](Self::append_async) waits for its group without
/// blocking the runtime; the `Events` service's `emit` uses it.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("EventStore")
            .field("stored", &s.mem.entries.len())
            .field("durable", &self.inner.durable)
            .finish()
    }
}

impl Default for EventStore {
    fn default() -> Self {
        EventStore::in_memory(StoreOptions::default())
    }
}

impl EventStore {
    /// A store that keeps events in memory only.
    pub fn in_memory(options: StoreOptions) -> Self {
        EventStore {
            inner: Arc::new(StoreInner {
                core: Arc::new(Core {
                    options,
                    durable: false,
                    state: Mutex::new(State {
                        mem: Memory::default(),
                    }),
                    log: Mutex::new(None),
                    metrics: StoreMetrics::new(),
                }),
                writer: None,
            }),
        }
    }

    /// Opens (or creates) a durable store in directory `dir`, restoring every event of
    /// its segment files (then applying retention), and reports what it found.
    ///
    /// Damage never passes silently: a torn or corrupt tail of a segment is truncated
    /// at the last complete record, a corrupt region followed by valid records is
    /// skipped, and each is listed in [`OpenReport::problems`], counted in
    /// `foundation_events_store_corrupt_records_total` and logged. Fails only on I/O
    /// errors (for example an unreadable directory).
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<(EventStore, OpenReport)> {
        let metrics = StoreMetrics::new();
        let (log, restored, mut report) = Log::open(dir.as_ref(), &options)?;
        metrics.corrupt.increment(report.problems.len() as u64);
        for p in &report.problems {
            tracing::warn!(segment = %p.segment.display(), offset = p.offset, bytes = p.bytes,
                kind = ?p.kind, action = ?p.action, "event store damage found on open");
        }
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let mut mem = Memory::default();
        for (segment, event) in restored {
            let age = wall_now
                .duration_since(event.time())
                .unwrap_or(Duration::ZERO);
            if options.max_age.is_some_and(|max| age > max) {
                report.pruned_on_open += 1;
                mem.pruned_total += 1;
                continue;
            }
            let stored_at = now.checked_sub(age).unwrap_or(now);
            mem.insert(Arc::new(event), stored_at, segment);
        }
        // Restored events of different ages may not be in stored_at order; retention by
        // count first, then age pruning walks from the front as usual.
        let before = mem.pruned_total;
        mem.prune(&options, now);
        report.pruned_on_open += (mem.pruned_total - before) as usize;
        report.restored = mem.entries.len();
        mem.pruned_total = report.pruned_on_open as u64;
        let core = Arc::new(Core {
            options,
            durable: true,
            state: Mutex::new(State { mem }),
            log: Mutex::new(Some(log)),
            metrics,
        });
        {
            let mut s = core.state.lock();
            core.delete_dead_segments(&mut s);
            core.metrics.stored.set(s.mem.entries.len() as f64);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_core = core.clone();
        std::thread::Builder::new()
            .name("foundation-events-writer".into())
            .spawn(move || write_groups(thread_core, rx))
            .map_err(|source| crate::Error::Io {
                context: "starting the event store writer thread".into(),
                source,
            })?;
        let store = EventStore {
            inner: Arc::new(StoreInner {
                core,
                writer: Some(tx),
            }),
        };
        Ok((store, report))
    }

    /// The store's options.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Whether events are written to segment files.
    pub fn is_durable(&self) -> bool {
        self.inner.durable
    }

    /// Stores `event`. For a durable store, `Ok` means acknowledged as described in
    /// [`FsyncPolicy`]; on error nothing was stored (a partly written record is cut off).
    ///
    /// A durable store writes on its own writer thread, with group commit; this call
    /// blocks the calling thread until its record's group is written (and synced, as the
    /// policy asks). From async code use [`append_async`](Self::append_async), which
    /// waits without blocking a runtime worker.
    pub fn append(&self, event: &Event) -> Result<()> {
        if let Some(job) = self.job(event)? {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.submit(job(Reply::Blocking(tx)))?;
            return rx.recv().unwrap_or_else(|_| Err(writer_gone()));
        }
        let shared = Arc::new(event.clone());
        let mut s = self.inner.state.lock();
        let now = Instant::now();
        s.mem.insert(shared, now, 0);
        s.mem.appended_total += 1;
        let pruned = s.mem.prune(&self.inner.options, now);
        self.inner.after_prune(&mut s, pruned);
        Ok(())
    }

    /// Like [`append`](Self::append), waiting asynchronously: a durable store's record is
    /// written and synced by the writer thread (together with the records appended
    /// meanwhile: one `fdatasync` per group under [`FsyncPolicy::Always`]), never on the
    /// calling runtime worker. An in-memory store appends at once.
    pub async fn append_async(&self, event: &Event) -> Result<()> {
        match self.job(event)? {
            Some(job) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.submit(job(Reply::Async(tx)))?;
                rx.await.unwrap_or_else(|_| Err(writer_gone()))
            }
            None => self.append(event),
        }
    }

    /// For a durable store: the encoded record, ready to become a job once given a reply.
    #[allow(clippy::type_complexity)]
    fn job(&self, event: &Event) -> Result<Option<impl FnOnce(Reply) -> Job>> {
        if self.inner.writer.is_none() {
            return Ok(None);
        }
        // Encoding and allocation happen on the caller, before the writer sees it.
        let record = segment::encode(event, self.inner.options.max_record_bytes)?;
        let event = Arc::new(event.clone());
        let at = Instant::now();
        Ok(Some(move |reply| Job {
            record,
            event,
            at,
            reply,
        }))
    }

    fn submit(&self, job: Job) -> Result<()> {
        let writer = self.inner.writer.as_ref().expect("durable");
        writer.send(job).map_err(|_| writer_gone())
    }

    /// Applies retention now; returns how many events were pruned.
    pub fn prune(&self) -> usize {
        let mut s = self.inner.state.lock();
        let pruned = s.mem.prune(&self.inner.options, Instant::now());
        self.inner.after_prune(&mut s, pruned);
        pruned
    }

    /// Syncs a durable store if its [`FsyncPolicy::Batch`] delay has passed.
    pub fn sync_if_due(&self) -> Result<()> {
        match self.inner.log.lock().as_mut() {
            Some(log) => log.sync_if_due(),
            None => Ok(()),
        }
    }

    /// Forces every appended record of a durable store to stable storage.
    pub fn sync(&self) -> Result<()> {
        match self.inner.log.lock().as_mut() {
            Some(log) => log.sync(),
            None => Ok(()),
        }
    }

    /// The event with this id, if held.
    pub fn get(&self, id: EventId) -> Option<Event> {
        let s = self.inner.state.lock();
        // A linear scan from the newest end: recent events are the ones usually asked for.
        s.mem
            .entries
            .iter()
            .rev()
            .find(|e| e.event.id == id)
            .map(|e| (*e.event).clone())
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.inner.state.lock().mem.entries.len()
    }

    /// Whether the store holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events matching `query`.
    pub fn query(&self, query: &Query) -> Vec<Event> {
        let s = self.inner.state.lock();
        let limit = query.limit.unwrap_or(usize::MAX);
        let pick = |it: &mut dyn Iterator<Item = &Arc<Event>>| -> Vec<Event> {
            it.filter(|e| query.matches(e))
                .skip(query.offset)
                .take(limit)
                .map(|e| (**e).clone())
                .collect()
        };
        match (query.correlation, query.order) {
            (Some(c), order) => {
                let Some(flow) = s.mem.by_correlation.get(&c) else {
                    return Vec::new();
                };
                match order {
                    Order::Ascending => pick(&mut flow.iter()),
                    Order::Descending => pick(&mut flow.iter().rev()),
                }
            }
            (None, Order::Ascending) => pick(&mut s.mem.entries.iter().map(|e| &e.event)),
            (None, Order::Descending) => pick(&mut s.mem.entries.iter().rev().map(|e| &e.event)),
        }
    }

    /// The flow `correlation` in causal order: every event after its parent (when the
    /// parent is held), and among events whose causes are all listed, the earliest first
    /// (by wall-clock timestamp, then monotonic time, then id). So siblings come in time
    /// order, and an event whose parent was pruned or lives in another flow is treated as
    /// a root.
    pub fn chain(&self, correlation: CorrelationId) -> Vec<Event> {
        let flow: Vec<Arc<Event>> = {
            let s = self.inner.state.lock();
            match s.mem.by_correlation.get(&correlation) {
                Some(f) => f.iter().cloned().collect(),
                None => return Vec::new(),
            }
        };
        causal_order(flow)
    }

    /// Statistics.
    pub fn stats(&self) -> StoreStats {
        let s = self.inner.state.lock();
        let at = |e: Option<&Entry>| e.map(|e| (e.event.id, e.event.time()));
        StoreStats {
            stored: s.mem.entries.len(),
            by_type: s
                .mem
                .by_type
                .iter()
                .map(|(t, n)| (t.as_str().to_string(), *n))
                .collect(),
            appended_total: s.mem.appended_total,
            pruned_total: s.mem.pruned_total,
            oldest: at(s.mem.entries.front()),
            newest: at(s.mem.entries.back()),
            segments: self.inner.log.lock().as_ref().map_or(0, Log::segment_count),
        }
    }
}

fn writer_gone() -> crate::Error {
    crate::Error::Shutdown {
        component: "event store writer",
    }
}

impl Core {
    fn after_prune(&self, s: &mut State, pruned: usize) {
        if pruned > 0 {
            self.metrics.pruned.increment(pruned as u64);
            self.delete_dead_segments(s);
        }
        self.metrics.stored.set(s.mem.entries.len() as f64);
    }

    fn delete_dead_segments(&self, s: &mut State) {
        if let Some(log) = self.log.lock().as_mut() {
            let oldest_live = s.mem.entries.front().map(|e| e.segment);
            if let Err(e) = log.delete_segments_before(oldest_live) {
                tracing::warn!(error = %e, "event store could not delete a pruned segment");
            }
        }
    }
}

/// Kahn's topological sort with a min-heap on time: parents first, otherwise earliest.
fn causal_order(flow: Vec<Arc<Event>>) -> Vec<Event> {
    type Key = std::cmp::Reverse<(u64, u64, EventId, usize)>;
    let key = |i: usize, e: &Event| std::cmp::Reverse((e.timestamp_us, e.monotonic_ns, e.id, i));
    let index: HashMap<EventId, usize> = flow.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); flow.len()];
    let mut ready: BinaryHeap<Key> = BinaryHeap::new();
    for (i, e) in flow.iter().enumerate() {
        match e.parent_id.and_then(|p| index.get(&p)).filter(|&&p| p != i) {
            Some(&p) => children[p].push(i),
            None => ready.push(key(i, e)),
        }
    }
    let mut out = Vec::with_capacity(flow.len());
    let mut done = vec![false; flow.len()];
    while let Some(std::cmp::Reverse((.., i))) = ready.pop() {
        done[i] = true;
        out.push((*flow[i]).clone());
        for &c in &children[i] {
            ready.push(key(c, &flow[c]));
        }
    }
    // A parent cycle (only possible in forged data) leaves events unreached: append them in
    // time order rather than lose them.
    let mut rest: Vec<usize> = (0..flow.len()).filter(|&i| !done[i]).collect();
    rest.sort_by_key(|&i| key(i, &flow[i]).0);
    out.extend(rest.into_iter().map(|i| (*flow[i]).clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str, ts: u64) -> Event {
        let mut e = Event::new(t, &ts).unwrap();
        e.timestamp_us = ts;
        e
    }

    #[test]
    fn causal_order_puts_parents_first_and_siblings_by_time() {
        let root = ev("user", 10);
        // The child has an earlier timestamp than its parent (clock step): still after it.
        let a = ev("user", 5).caused_by(&root);
        let b = ev("user", 30).caused_by(&root);
        let a1 = ev("user", 40).caused_by(&a);
        let b1 = ev("user", 35).caused_by(&b);
        let flow: Vec<Arc<Event>> = [&b1, &a1, &b, &a, &root]
            .iter()
            .map(|e| Arc::new((*e).clone()))
            .collect();
        let ids: Vec<EventId> = causal_order(flow).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![root.id, a.id, b.id, b1.id, a1.id]);
    }

    #[test]
    fn causal_order_keeps_events_of_a_forged_cycle() {
        let mut x = ev("user", 1);
        let mut y = ev("user", 2);
        x.parent_id = Some(y.id);
        y.parent_id = Some(x.id);
        let out = causal_order(vec![Arc::new(x.clone()), Arc::new(y.clone())]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, x.id);
    }

    #[tokio::test(start_paused = true)]
    async fn count_and_age_retention() {
        let store = EventStore::in_memory(StoreOptions {
            max_events: 3,
            max_age: Some(Duration::from_secs(10)),
            ..StoreOptions::default()
        });
        for i in 0..5 {
            store.append(&ev("user", i)).unwrap();
        }
        assert_eq!(store.len(), 3);
        assert_eq!(store.stats().pruned_total, 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        store.append(&ev("user", 9)).unwrap();
        assert_eq!(store.len(), 1, "the three old ones aged out on insert");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.prune(), 1);
        assert!(store.is_empty());
        assert_eq!(store.stats().pruned_total, 6);
    }
}
