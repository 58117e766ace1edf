//! A sharded table of shared binaries: the ETS-reference idea.
//!
//! On the BEAM a large message is stored once in an ETS table and a small reference is
//! sent instead; the receivers look it up. A [`Table`] does the same for
//! [`Bytes`]: [`Table::insert`] stores a value and returns a [`TableRef`]
//! (12 bytes, `Copy`), [`Table::get`] hands back the value as a reference-count bump, never
//! a copy. An entry leaves the table when
//!
//! * its TTL passes (reads check the deadline; a sweeper task owned by the table reclaims
//!   the memory every `sweep_interval_ms`),
//! * it has received the number of acknowledgements it was inserted with
//!   ([`Table::insert_with_acks`], [`Table::ack`]): "every receiver has read it", or
//! * it is removed explicitly ([`Table::remove`]).
//!
//! A reference to an entry that has left the table returns `None`, also after its slot
//! was reused for a newer value: references carry the slot's generation, and a slot whose
//! generation counter is exhausted is retired rather than reused. A reference from
//! another table returns `None` as well.
//!
//! The table is bounded by entries and by bytes. An insert beyond either bound first
//! sweeps expired entries, then fails with [`InsertError::Full`], which hands the value
//! back and is counted; nothing is dropped silently.
//!
//! ```
//! use std::time::Duration;
//! use std::num::NonZeroU32;
//! use bytes::Bytes;
//! use foundation_beam::table::{Ack, Table, TableSettings};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_beam::core::Result<()> {
//! let table = Table::new(TableSettings { name: "blobs".into(), ..Default::default() })?;
//! let payload = Bytes::from(vec![7u8; 64 * 1024]);
//!
//! // Stored once, read by two receivers, gone after both acknowledged.
//! let r = table
//!     .insert_with_acks(payload.clone(), Duration::from_secs(30), NonZeroU32::new(2).unwrap())
//!     .expect("room in the table");
//! let seen = table.get(&r).expect("present");
//! assert_eq!(seen.as_ptr(), payload.as_ptr()); // the same memory, not a copy
//! assert_eq!(table.ack(&r), Ack::Pending { remaining: 1 });
//! assert_eq!(table.ack(&r), Ack::Removed);
//! assert_eq!(table.get(&r), None);
//! assert_eq!(table.len(), 0);
//! table.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Sharing
//! `Table` is not `Clone`; share it as `Arc<Table>`. Dropping the `Table` stops its
//! sweeper task and frees every entry (values still held by readers stay alive: they
//! are `Bytes`). [`Table::shutdown`] stops the sweeper and waits for it; the table keeps
//! working afterwards, with expiry checked on access and by [`Table::sweep`].
//!
//! # Metrics
//! Every metric carries the label `table` (the settings' `name`).
//!
//! | name | kind |
//! |---|---|
//! | `foundation_table_entries` | gauge, entries stored (expired ones until swept) |
//! | `foundation_table_bytes` | gauge, value bytes stored |
//! | `foundation_table_inserted_total` | counter, entries inserted |
//! | `foundation_table_expired_total` | counter, entries removed because their TTL passed |
//! | `foundation_table_acked_total` | counter, entries removed by their last acknowledgement |
//! | `foundation_table_removed_total` | counter, entries removed by [`Table::remove`] |
//! | `foundation_table_misses_total` | counter, `get`/`ack`/`remove` of a reference that is not in the table |
//! | `foundation_table_rejected_total` | counter, inserts refused because the table was full, label `limit` |
//!
//! `inserted − expired − acked − removed = entries` at every quiescent point.
//! [`describe_metrics`] registers their HELP text.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_core::budget::Budget;
use foundation_core::telemetry::TaskGuard;
use foundation_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest shard count [`TableSettings::shards`] accepts.
pub const MAX_SHARDS: usize = 1024;

/// Expired entries removed per shard lock acquisition by the sweeper.
const SWEEP_BATCH: usize = 256;

/// Settings of a [`Table`]. Loads from TOML; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableSettings {
    /// Name used as the `table` label of the metrics. Default `"default"`.
    pub name: String,
    /// Most entries stored at once (at least 1). Default 1 000 000.
    pub max_entries: usize,
    /// Most value bytes stored at once (at least 1). Default 256 MiB.
    pub max_bytes: usize,
    /// Shards (independent locks); 0 picks four per available CPU. At most
    /// [`MAX_SHARDS`]. Default 0.
    pub shards: usize,
    /// Period of the sweeper task in milliseconds; 0 runs no sweeper (expired entries are
    /// then removed when touched, when an insert finds the table full, or by
    /// [`Table::sweep`]). Default 1000.
    pub sweep_interval_ms: u64,
}

impl Default for TableSettings {
    fn default() -> Self {
        TableSettings {
            name: "default".to_owned(),
            max_entries: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            shards: 0,
            sweep_interval_ms: 1000,
        }
    }
}

/// A reference to one entry of one [`Table`]: table id, slot and generation, 12 bytes.
///
/// Cheap to copy and to send in a message. It does not keep the entry alive: once the
/// entry has expired, been acknowledged or removed, every lookup with it returns `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableRef {
    table: u32,
    slot: u32,
    generation: u32,
}

/// Which bound of a [`Table`] an insert would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capacity {
    /// [`TableSettings::max_entries`].
    Entries,
    /// [`TableSettings::max_bytes`].
    Bytes,
}

impl Capacity {
    fn label(self) -> &'static str {
        match self {
            Capacity::Entries => "entries",
            Capacity::Bytes => "bytes",
        }
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// An insert that the table refused. The value comes back to the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The table is full (after sweeping expired entries).
    #[error("table `{table}` is full: {limit} limit {max} (the insert needed {needed})")]
    Full {
        /// The table's name.
        table: String,
        /// Which bound.
        limit: Capacity,
        /// The configured bound.
        max: usize,
        /// What the table would have held with this value (entries or bytes).
        needed: usize,
        /// The rejected value, handed back.
        value: Bytes,
    },
}

impl InsertError {
    /// The rejected value.
    pub fn into_value(self) -> Bytes {
        match self {
            InsertError::Full { value, .. } => value,
        }
    }
}

/// Outcome of [`Table::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ack {
    /// Acknowledgement counted; the entry waits for `remaining` more.
    Pending {
        /// Acknowledgements still expected.
        remaining: u32,
    },
    /// That was the last expected acknowledgement; the entry is gone.
    Removed,
    /// The reference is not in the table (expired, acknowledged, removed, or from
    /// another table). Counted as a miss.
    Unknown,
    /// Not counted: this holder of a [`Payload`](crate::message::Payload) had already
    /// acknowledged (through this or another clone). Never returned by [`Table::ack`].
    AlreadyAcknowledged,
}

/// A sharded, bounded table of `Bytes` values addressed by [`TableRef`]s.
///
/// See the [module documentation](self). Dropping it stops its sweeper.
pub struct Table {
    inner: Arc<Inner>,
    stop: CancellationToken,
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    id: u32,
    name: String,
    max_entries: usize,
    max_bytes: usize,
    shards: Box<[RwLock<Shard>]>,
    /// Most slots one shard may hold, so that `local * shards + shard` fits in a `u32`.
    max_local: usize,
    entries: AtomicUsize,
    bytes: AtomicUsize,
    m: Metrics,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Deadlines of entries with a TTL, earliest first. Entries that left the table
    /// early stay here until popped or compacted (their generation no longer matches).
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    live_with_deadline: usize,
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

struct Entry {
    value: Bytes,
    deadline: Option<Instant>,
    acks_left: u32,
}

struct Metrics {
    entries: metrics::Gauge,
    bytes: metrics::Gauge,
    inserted: metrics::Counter,
    expired: metrics::Counter,
    acked: metrics::Counter,
    removed: metrics::Counter,
    misses: metrics::Counter,
    rejected_entries: metrics::Counter,
    rejected_bytes: metrics::Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let l = || ("table", name.to_owned());
        let rejected = |limit: Capacity| metrics::counter!("foundation_table_rejected_total", "table" => name.to_owned(), "limit" => limit.label());
        Metrics {
            entries: metrics::gauge!("foundation_table_entries", &[l()]),
            bytes: metrics::gauge!("foundation_table_bytes", &[l()]),
            inserted: metrics::counter!("foundation_table_inserted_total", &[l()]),
            expired: metrics::counter!("foundation_table_expired_total", &[l()]),
            acked: metrics::counter!("foundation_table_acked_total", &[l()]),
            removed: metrics::counter!("foundation_table_removed_total", &[l()]),
            misses: metrics::counter!("foundation_table_misses_total", &[l()]),
            rejected_entries: rejected(Capacity::Entries),
            rejected_bytes: rejected(Capacity::Bytes),
        }
    }
}

/// Why an entry leaves the table; picks the counter.
#[derive(Clone, Copy)]
enum Exit {
    Expired,
    Acked,
    Removed,
}

static NEXT_TABLE_ID: AtomicU32 = AtomicU32::new(1);
static NEXT_THREAD_SEED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Per-thread round robin over the shards: inserts from one thread spread over all
    /// shards, and threads do not share a counter's cache line.
    static SHARD_CURSOR: Cell<usize> = Cell::new(NEXT_THREAD_SEED.fetch_add(7919, Ordering::Relaxed));
}

impl Table {
    /// Creates a table and, when `sweep_interval_ms > 0`, starts its sweeper task on the
    /// current tokio runtime.
    ///
    /// The metric handles are taken from the recorder installed at this point.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a bound is 0, `shards` exceeds [`MAX_SHARDS`],
    /// `max_entries` cannot be addressed with that many shards, or a sweeper is asked for
    /// outside a tokio runtime.
    pub fn new(settings: TableSettings) -> Result<Table> {
        let shards = match settings.shards {
            0 => 4 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(MAX_SHARDS);
        if settings.shards > MAX_SHARDS {
            return Err(Error::InvalidArgument(format!(
                "table `{}`: shards {} exceeds {MAX_SHARDS}",
                settings.name, settings.shards
            )));
        }
        if settings.max_entries == 0 || settings.max_bytes == 0 {
            return Err(Error::InvalidArgument(format!(
                "table `{}`: max_entries and max_bytes must be at least 1",
                settings.name
            )));
        }
        let max_local = u32::MAX as usize / shards;
        if settings.max_entries > max_local / 2 {
            return Err(Error::InvalidArgument(format!(
                "table `{}`: max_entries {} is more than {} shards can address ({})",
                settings.name,
                settings.max_entries,
                shards,
                max_local / 2
            )));
        }
        let runtime = if settings.sweep_interval_ms > 0 {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::InvalidArgument(format!(
                    "table `{}`: a sweeper needs a tokio runtime (or set sweep_interval_ms = 0)",
                    settings.name
                ))
            })?)
        } else {
            None
        };
        let inner = Arc::new(Inner {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            m: Metrics::new(&settings.name),
            name: settings.name,
            max_entries: settings.max_entries,
            max_bytes: settings.max_bytes,
            shards: (0..shards).map(|_| RwLock::new(Shard::default())).collect(),
            max_local,
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let sweeper = runtime.map(|rt| {
            let interval = Duration::from_millis(settings.sweep_interval_ms);
            rt.spawn(sweeper(Arc::clone(&inner), stop.clone(), interval))
        });
        Ok(Table {
            inner,
            stop,
            sweeper: Mutex::new(sweeper),
        })
    }

    /// Stores `value` for `ttl`, to be removed by one [`ack`](Table::ack). A `ttl` too
    /// large to represent means "never expires".
    ///
    /// # Errors
    /// [`InsertError::Full`] when the entry or byte bound would be exceeded even after
    /// sweeping expired entries; the value is handed back.
    pub fn insert(&self, value: Bytes, ttl: Duration) -> Result<TableRef, InsertError> {
        self.insert_with_acks(value, ttl, NonZeroU32::MIN)
    }

    /// Stores `value` for `ttl`; it is removed after `acks` acknowledgements (or when the
    /// TTL passes, whichever comes first).
    ///
    /// # Errors
    /// As [`Table::insert`].
    pub fn insert_with_acks(
        &self,
        value: Bytes,
        ttl: Duration,
        acks: NonZeroU32,
    ) -> Result<TableRef, InsertError> {
        let inner = &*self.inner;
        let size = value.len();
        if let Err((limit, max, needed)) = inner.reserve(size) {
            // Make room from expired entries before refusing.
            if inner.sweep_all(Instant::now()) == 0 || inner.reserve(size).is_err() {
                match limit {
                    Capacity::Entries => inner.m.rejected_entries.increment(1),
                    Capacity::Bytes => inner.m.rejected_bytes.increment(1),
                }
                return Err(InsertError::Full {
                    table: inner.name.clone(),
                    limit,
                    max,
                    needed,
                    value,
                });
            }
        }
        let deadline = Instant::now().checked_add(ttl);
        let n = inner.shards.len();
        let shard_index = SHARD_CURSOR.with(|c| {
            let v = c.get();
            c.set(v.wrapping_add(1));
            v % n
        });
        let mut shard = inner.shards[shard_index].write();
        let local = match shard.free.pop() {
            Some(local) => local as usize,
            None if shard.slots.len() < inner.max_local => {
                shard.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                shard.slots.len() - 1
            }
            None => {
                // Unreachable with validated settings short of ~2^31 slot retirements;
                // refused like any other full table rather than wrapping an index.
                drop(shard);
                inner.release(size);
                inner.m.rejected_entries.increment(1);
                return Err(InsertError::Full {
                    table: inner.name.clone(),
                    limit: Capacity::Entries,
                    max: inner.max_entries,
                    needed: inner.entries.load(Ordering::Relaxed) + 1,
                    value,
                });
            }
        };
        let slot = &mut shard.slots[local];
        let generation = slot.generation;
        slot.entry = Some(Entry {
            value,
            deadline,
            acks_left: acks.get(),
        });
        if let Some(deadline) = deadline {
            shard
                .deadlines
                .push(Reverse((deadline, local as u32, generation)));
            shard.live_with_deadline += 1;
        }
        drop(shard);
        inner.m.inserted.increment(1);
        inner.m.entries.increment(1.0);
        inner.m.bytes.increment(size as f64);
        Ok(TableRef {
            table: inner.id,
            slot: (local * n + shard_index) as u32,
            generation,
        })
    }

    /// The value `r` refers to, as a reference-count bump; `None` if the entry has
    /// expired, been acknowledged or removed, or `r` belongs to another table.
    pub fn get(&self, r: &TableRef) -> Option<Bytes> {
        let inner = &*self.inner;
        let Some((shard_index, local)) = inner.locate(r) else {
            inner.m.misses.increment(1);
            return None;
        };
        let shard = inner.shards[shard_index].read();
        let expired = match shard.entry(local, r.generation) {
            Some(entry) => match entry.deadline {
                Some(deadline) if deadline <= Instant::now() => true,
                _ => return Some(entry.value.clone()),
            },
            None => false,
        };
        drop(shard);
        if expired {
            inner.expire_if_due(shard_index, local, r.generation, Instant::now());
        }
        inner.m.misses.increment(1);
        None
    }

    /// Acknowledges the entry `r` refers to; the last expected acknowledgement removes
    /// it. See [`Ack`].
    pub fn ack(&self, r: &TableRef) -> Ack {
        let inner = &*self.inner;
        let Some((shard_index, local)) = inner.locate(r) else {
            inner.m.misses.increment(1);
            return Ack::Unknown;
        };
        let now = Instant::now();
        let mut shard = inner.shards[shard_index].write();
        let (exit, outcome) = match shard.entry_mut(local, r.generation) {
            None => (None, Ack::Unknown),
            Some(entry) if entry.deadline.is_some_and(|d| d <= now) => {
                (Some(Exit::Expired), Ack::Unknown)
            }
            Some(entry) if entry.acks_left > 1 => {
                entry.acks_left -= 1;
                (
                    None,
                    Ack::Pending {
                        remaining: entry.acks_left,
                    },
                )
            }
            Some(_) => (Some(Exit::Acked), Ack::Removed),
        };
        let taken = exit.map(|exit| (exit, shard.take(local)));
        drop(shard);
        if let Some((exit, entry)) = taken {
            inner.left(exit, entry.value.len());
        }
        if outcome == Ack::Unknown {
            inner.m.misses.increment(1);
        }
        outcome
    }

    /// Removes the entry `r` refers to and returns its value; `None` (a miss) if it is
    /// not in the table.
    pub fn remove(&self, r: &TableRef) -> Option<Bytes> {
        let inner = &*self.inner;
        let found = inner.locate(r).and_then(|(shard_index, local)| {
            let now = Instant::now();
            let mut shard = inner.shards[shard_index].write();
            let entry = shard.entry(local, r.generation)?;
            let exit = match entry.deadline {
                Some(d) if d <= now => Exit::Expired,
                _ => Exit::Removed,
            };
            let entry = shard.take(local);
            drop(shard);
            inner.left(exit, entry.value.len());
            match exit {
                Exit::Removed => Some(entry.value),
                _ => None,
            }
        });
        if found.is_none() {
            inner.m.misses.increment(1);
        }
        found
    }

    /// Removes every entry whose TTL has passed now; returns how many. The sweeper task
    /// does the same in small batches.
    pub fn sweep(&self) -> usize {
        self.inner.sweep_all(Instant::now())
    }

    /// Entries stored, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed)
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value bytes stored (sum of the stored values' lengths).
    pub fn bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// The table's name (the `table` label of its metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bounds: (max entries, max bytes).
    pub fn limits(&self) -> (usize, usize) {
        (self.inner.max_entries, self.inner.max_bytes)
    }

    /// Stops the sweeper task and waits for it to finish. The table stays usable; expiry
    /// is then checked on access, on a full insert and by [`Table::sweep`].
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let handle = self.sweeper.lock().take();
        if let Some(handle) = handle {
            // The sweeper only returns or is aborted; neither is an error worth reporting.
            let _ = handle.await;
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.sweeper.get_mut().take() {
            handle.abort();
        }
        // The entries die with the table: take them off the gauges so that the series of
        // a dropped table does not keep reporting memory it no longer holds.
        let inner = &*self.inner;
        inner
            .m
            .entries
            .decrement(inner.entries.swap(0, Ordering::Relaxed) as f64);
        inner
            .m
            .bytes
            .decrement(inner.bytes.swap(0, Ordering::Relaxed) as f64);
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.inner.name)
            .field("entries", &self.len())
            .field("bytes", &self.bytes())
            .field("max_entries", &self.inner.max_entries)
            .field("max_bytes", &self.inner.max_bytes)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

impl Inner {
    fn locate(&self, r: &TableRef) -> Option<(usize, usize)> {
        if r.table != self.id {
            return None;
        }
        let n = self.shards.len();
        let slot = r.slot as usize;
        Some((slot % n, slot / n))
    }

    /// Claims room for one entry of `size` bytes, or says which bound is in the way.
    fn reserve(&self, size: usize) -> std::result::Result<(), (Capacity, usize, usize)> {
        let max_entries = self.max_entries;
        if let Err(n) = self
            .entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_entries).then_some(n + 1)
            })
        {
            return Err((Capacity::Entries, max_entries, n + 1));
        }
        let max_bytes = self.max_bytes;
        if let Err(b) = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(size).filter(|&t| t <= max_bytes)
            })
        {
            self.entries.fetch_sub(1, Ordering::AcqRel);
            return Err((Capacity::Bytes, max_bytes, b.saturating_add(size)));
        }
        Ok(())
    }

    fn release(&self, size: usize) {
        self.entries.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(size, Ordering::AcqRel);
    }

    /// Bookkeeping after an entry of `size` bytes left the table (lock already released).
    fn left(&self, exit: Exit, size: usize) {
        self.release(size);
        self.m.entries.decrement(1.0);
        self.m.bytes.decrement(size as f64);
        match exit {
            Exit::Expired => self.m.expired.increment(1),
            Exit::Acked => self.m.acked.increment(1),
            Exit::Removed => self.m.removed.increment(1),
        }
    }

    fn expire_if_due(&self, shard_index: usize, local: usize, generation: u32, now: Instant) {
        let mut shard = self.shards[shard_index].write();
        let due = shard
            .entry(local, generation)
            .is_some_and(|e| e.deadline.is_some_and(|d| d <= now));
        if due {
            let entry = shard.take(local);
            drop(shard);
            self.left(Exit::Expired, entry.value.len());
        }
    }

    /// Removes up to `batch` expired entries of one shard under one lock acquisition;
    /// returns (removed, whether more may be due).
    fn sweep_shard(&self, shard_index: usize, now: Instant, batch: usize) -> (usize, bool) {
        let mut shard = self.shards[shard_index].write();
        let mut sizes = 0usize;
        let mut removed = 0usize;
        let mut popped = 0usize;
        let mut more = false;
        while let Some(&Reverse((deadline, local, generation))) = shard.deadlines.peek() {
            if deadline > now {
                break;
            }
            if popped == batch {
                more = true;
                break;
            }
            shard.deadlines.pop();
            popped += 1;
            if shard.entry(local as usize, generation).is_some() {
                let entry = shard.take(local as usize);
                sizes += entry.value.len();
                removed += 1;
            }
        }
        // Entries that left early (acked, removed, expired on access) leave stale
        // deadlines behind; rebuild the heap when they dominate it.
        if shard.deadlines.len() > 2 * shard.live_with_deadline + 1024 {
            shard.compact_deadlines();
        }
        drop(shard);
        if removed > 0 {
            self.entries.fetch_sub(removed, Ordering::AcqRel);
            self.bytes.fetch_sub(sizes, Ordering::AcqRel);
            self.m.entries.decrement(removed as f64);
            self.m.bytes.decrement(sizes as f64);
            self.m.expired.increment(removed as u64);
        }
        (removed, more)
    }

    fn sweep_all(&self, now: Instant) -> usize {
        let mut total = 0;
        for i in 0..self.shards.len() {
            loop {
                let (removed, more) = self.sweep_shard(i, now, SWEEP_BATCH);
                total += removed;
                if !more {
                    break;
                }
            }
        }
        total
    }
}

impl Shard {
    fn entry(&self, local: usize, generation: u32) -> Option<&Entry> {
        self.slots
            .get(local)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.entry.as_ref())
    }

    fn entry_mut(&mut self, local: usize, generation: u32) -> Option<&mut Entry> {
        self.slots
            .get_mut(local)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.entry.as_mut())
    }

    /// Empties an occupied slot and frees it for reuse under the next generation.
    ///
    /// Invariant: a slot's generation only grows, and a slot whose generation reached
    /// `u32::MAX` is retired (never reused), so no reference can ever match a newer entry.
    fn take(&mut self, local: usize) -> Entry {
        let slot = &mut self.slots[local];
        let entry = slot
            .entry
            .take()
            .expect("take() is called on an occupied slot");
        slot.generation += 1;
        if slot.generation < u32::MAX {
            self.free.push(local as u32);
        }
        if entry.deadline.is_some() {
            self.live_with_deadline -= 1;
        }
        entry
    }

    fn compact_deadlines(&mut self) {
        let live: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(local, s)| {
                let deadline = s.entry.as_ref()?.deadline?;
                Some(Reverse((deadline, local as u32, s.generation)))
            })
            .collect();
        self.deadlines = BinaryHeap::from(live);
    }
}

/// The sweeper: every `interval`, removes expired entries shard by shard in batches,
/// yielding between batches so that a large sweep never holds a worker thread.
async fn sweeper(inner: Arc<Inner>, stop: CancellationToken, interval: Duration) {
    let _guard = TaskGuard::new();
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = Budget::new(4);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        for i in 0..inner.shards.len() {
            loop {
                let (_, more) = inner.sweep_shard(i, now, SWEEP_BATCH);
                budget.tick().await;
                if !more {
                    break;
                }
            }
        }
    }
}

/// Registers the HELP text of this module's metrics with the current recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "foundation_table_entries",
        "Entries stored in the table, including expired entries not yet swept."
    );
    describe_gauge!("foundation_table_bytes", "Value bytes stored in the table.");
    describe_counter!(
        "foundation_table_inserted_total",
        "Entries inserted into the table."
    );
    describe_counter!(
        "foundation_table_expired_total",
        "Entries removed because their TTL passed."
    );
    describe_counter!(
        "foundation_table_acked_total",
        "Entries removed by their last expected acknowledgement."
    );
    describe_counter!(
        "foundation_table_removed_total",
        "Entries removed explicitly."
    );
    describe_counter!(
        "foundation_table_misses_total",
        "Lookups, acknowledgements and removals of a reference not in the table."
    );
    describe_counter!(
        "foundation_table_rejected_total",
        "Inserts refused because the table was full, by limit."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_entries: usize, shards: usize) -> TableSettings {
        TableSettings {
            max_entries,
            shards,
            sweep_interval_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn retired_slot_is_never_reused() {
        let table = Table::new(settings(4, 1)).unwrap();
        let r = table
            .insert(Bytes::from_static(b"a"), Duration::MAX)
            .unwrap();
        // Bring the slot to its last generation, then remove the entry living in it.
        table.inner.shards[0].write().slots[0].generation = u32::MAX - 1;
        let last = TableRef {
            generation: u32::MAX - 1,
            ..r
        };
        assert_eq!(table.remove(&last), Some(Bytes::from_static(b"a")));
        let shard = table.inner.shards[0].read();
        assert!(
            shard.free.is_empty(),
            "retired slot went back to the free list"
        );
        assert_eq!(shard.slots[0].generation, u32::MAX);
        drop(shard);
        let next = table
            .insert(Bytes::from_static(b"b"), Duration::MAX)
            .unwrap();
        assert_ne!(next.slot, r.slot);
        assert_eq!(table.get(&last), None);
    }

    #[test]
    fn deadline_heap_is_compacted() {
        let table = Table::new(settings(10_000, 1)).unwrap();
        for _ in 0..5000 {
            let r = table
                .insert(Bytes::from_static(b"x"), Duration::from_secs(60))
                .unwrap();
            assert_eq!(table.ack(&r), Ack::Removed);
        }
        assert_eq!(table.inner.shards[0].read().deadlines.len(), 5000);
        table.sweep();
        assert_eq!(table.inner.shards[0].read().deadlines.len(), 0);
    }

    #[test]
    fn unaddressable_settings_are_rejected() {
        assert!(Table::new(settings(0, 1)).is_err());
        assert!(Table::new(settings(u32::MAX as usize, 2)).is_err());
        assert!(Table::new(settings(10, MAX_SHARDS + 1)).is_err());
        let sweeping = TableSettings {
            sweep_interval_ms: 10,
            ..Default::default()
        };
        // No runtime here: a sweeper cannot be started.
        assert!(Table::new(sweeping).is_err());
    }
}
