//! Named channels: several parallel connections per peer, so that bulk traffic never
//! blocks urgent traffic (no head-of-line blocking).
//!
//! A [`ChannelSpec`] names a channel and gives its [`Priority`], its `parallelism` (how
//! many connections per peer it opens) and whether it is `monotonic`. The defaults
//! ([`ChannelSettings::default`]) are `coordination` (high, 3 connections), `gossip`
//! (low, 1) and `bulk_data` (medium, [`DEFAULT_BULK_PARALLELISM`]).
//!
//! * [`Channels`] is the sending side towards one peer: it opens every channel's
//!   connections through an `Arc<dyn Transport>` (connection index `0..parallelism`) and
//!   runs one sender task per connection, fed by a queue bounded in messages
//!   (`queue_capacity`) and in payload bytes (`queue_bytes`). [`ChannelSender::send`]
//!   waits for space (backpressure); [`ChannelSender::try_send`] hands the message back.
//! * A message with a partition key goes to connection `hash(key) % parallelism`, so
//!   messages of one key stay in order; a message without a key goes round-robin. One
//!   message is one frame on one connection (large messages are not split), except that
//!   the node's sends may be appended, inside the crate, to a frame of the same key and
//!   header still waiting in the queue (write-combining, D390).
//! * On a monotonic channel a newer message for a key replaces an older one of the same
//!   key that is still queued (in place: per-key order holds), counted in
//!   `foundation_channel_superseded_total`.
//! * [`Inbox`] is the receiving side: it accepts connections (from a
//!   [`Listener`] or one by one) and merges every connection of
//!   every channel into one stream of [`Inbound`] messages. Each priority has its own
//!   bounded queue and [`Inbox::recv`] drains high before medium before low, so urgent
//!   messages overtake bulk ones at the receiver too.
//! * [`route`] picks a channel from a message's [`MessageMeta`] (see its rules).
//! * An [`Interposer`] given to the [`ChannelsBuilder`] is applied on the send path.
//!
//! Compression is not implemented yet: payloads go as they are.
//!
//! A failed connection is not reconnected: its queued messages are dropped and counted
//! (`reason="connection_failed"`), and every later send to it fails with
//! [`Error::ChannelClosed`] (counted, `reason="closed"`). Reconnection belongs to the node
//! layer, which owns peer lifecycles.
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `foundation_channel_messages_total` | counter | `channel`, `direction` (`out`, `in`) |
//! | `foundation_channel_bytes_total` | counter | `channel`, `direction` (payload bytes) |
//! | `foundation_channel_queue_depth` | gauge | `channel` (outbound, all connections) |
//! | `foundation_channel_queue_bytes` | gauge | `channel` (outbound payload bytes, all connections) |
//! | `foundation_channel_dropped_total` | counter | `channel`, `reason` (`full`, `closed`, `connection_failed`, `too_large`, `interposed`, `inbox_closed`, `malformed`) |
//! | `foundation_channel_superseded_total` | counter | `channel` |
//! | `foundation_channel_send_seconds` | histogram | `channel` (queued → written) |
//! | `foundation_channel_priority_threads` | gauge | — (running [`PriorityThread`]s) |
//! | `foundation_channel_priority_nice_total` | counter | `result` (`ok`, `refused`) |
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use foundation_distributed::channel::{ChannelSettings, Channels, Inbox};
//! use foundation_distributed::transport::{
//!     ClusterSecret, Security, MemoryNetwork, MemoryTransport, Transport, TransportSettings,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> foundation_distributed::Result<()> {
//! let network = MemoryNetwork::new();
//! let node = |name: &str| -> foundation_distributed::Result<Arc<dyn Transport>> {
//!     let settings = TransportSettings {
//!         cluster: "demo".into(),
//!         node: name.into(),
//!         security: Security::Secret(ClusterSecret::from_hex("9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f").unwrap()),
//!         ..Default::default()
//!     };
//!     Ok(Arc::new(MemoryTransport::new(&network, settings)?))
//! };
//! let (a, b) = (node("a")?, node("b")?);
//!
//! let settings = ChannelSettings::default();
//! let mut inbox = Inbox::new(&settings)?;
//! inbox.serve(b.listen("mem://b").await?);
//!
//! let channels = Channels::builder(a, "mem://b").settings(settings).connect().await?;
//! channels.send("coordination", Some(7), Bytes::from_static(b"hello")).await?;
//!
//! let msg = inbox.recv().await.expect("a message");
//! assert_eq!((&*msg.channel, msg.key, &msg.payload[..]), ("coordination", Some(7), &b"hello"[..]));
//! channels.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod priority;
mod queue;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use foundation_beam::core::telemetry::TaskGuard;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::interpose::{Action, Interposer};
use crate::transport::{
    Connection, ConnectionReceiver, ConnectionSender, Frame, Listener, Transport,
};
use crate::{Error, Result};
pub(crate) use priority::wanted_here as priority_thread_wanted;
pub use priority::PriorityThread;
use queue::{Item, Queue, QueueMeters, Refused};
pub use stats::{ChannelStats, LATE_AFTER};

pub(crate) mod metric {
    pub const MESSAGES: &str = "foundation_channel_messages_total";
    pub const BYTES: &str = "foundation_channel_bytes_total";
    pub const QUEUE_DEPTH: &str = "foundation_channel_queue_depth";
    pub const QUEUE_BYTES: &str = "foundation_channel_queue_bytes";
    pub const DROPPED: &str = "foundation_channel_dropped_total";
    pub const SUPERSEDED: &str = "foundation_channel_superseded_total";
    pub const SEND_SECONDS: &str = "foundation_channel_send_seconds";
}

/// Data frame tag: no partition key.
const UNKEYED: u32 = 0;
/// Data frame tag: the payload starts with an 8-byte big-endian partition key.
const KEYED: u32 = 1;

/// The name of the default channel for urgent, small control messages.
pub const COORDINATION: &str = "coordination";
/// The name of the default channel for background gossip.
pub const GOSSIP: &str = "gossip";
/// The name of the default channel for large payloads.
pub const BULK_DATA: &str = "bulk_data";

/// How urgent a channel's traffic is. The receiver drains higher priorities first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Control traffic.
    High,
    /// Ordinary and bulk traffic.
    Medium,
    /// Background traffic.
    Low,
}

impl Priority {
    fn slot(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Medium => 1,
            Priority::Low => 2,
        }
    }
}

fn default_queue_capacity() -> usize {
    1024
}

fn default_queue_bytes() -> u32 {
    DEFAULT_QUEUE_BYTES
}

/// Default outbound queue bound per connection in payload bytes: 4 MiB.
pub const DEFAULT_QUEUE_BYTES: u32 = 4 << 20;

/// Connections per peer of the default table's `bulk_data` channel: 2 (5 before D422).
///
/// Why not more: every connection has a sender task on one side and a reader task on the
/// other, and tokio runs woken tasks first in, first out. During a bulk transfer each of
/// them is runnable nearly all the time, each poll moving a 64 KiB frame (tens of µs of
/// sealing or opening and copying), so an urgent connection's reader or writer that wakes
/// up waits behind the bulk tasks queued on its worker. With 5 connections that queue
/// made the sub-millisecond part of the urgent tail (bench part 1, D422); 2 keep some
/// isolation between keys (a stalled key holds one connection of two) and measured the
/// same bulk throughput on this 2-core machine. Deployments that move bulk data over
/// lossy or long links, where parallel TCP streams help, raise `parallelism` in their
/// channel table.
pub const DEFAULT_BULK_PARALLELISM: u16 = 2;

fn default_parallelism() -> u16 {
    1
}

/// One named channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelSpec {
    /// The channel's name (sent in the handshake of each of its connections).
    pub name: String,
    /// Its priority.
    pub priority: Priority,
    /// Connections per peer, at least 1.
    #[serde(default = "default_parallelism")]
    pub parallelism: u16,
    /// Whether a newer message for a key replaces a queued older one.
    #[serde(default)]
    pub monotonic: bool,
    /// Outbound queue capacity per connection, in messages, at least 1.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Outbound queue capacity per connection, in payload bytes, at least 1 (default
    /// [`DEFAULT_QUEUE_BYTES`]). A sender waits when either bound is reached; a message
    /// larger than this is queued alone (it waits for an empty queue).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: u32,
}

impl ChannelSpec {
    /// A channel with `priority` and `parallelism`, not monotonic, 1024 messages and
    /// [`DEFAULT_QUEUE_BYTES`] of queue per connection.
    pub fn new(name: &str, priority: Priority, parallelism: u16) -> Self {
        ChannelSpec {
            name: name.to_owned(),
            priority,
            parallelism,
            monotonic: false,
            queue_capacity: default_queue_capacity(),
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }

    /// Makes the channel monotonic.
    pub fn monotonic(mut self) -> Self {
        self.monotonic = true;
        self
    }

    /// Sets the per-connection queue capacity (messages).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Sets the per-connection queue capacity in payload bytes.
    pub fn queue_bytes(mut self, bytes: u32) -> Self {
        self.queue_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidChannel {
                channel: self.name.clone(),
                reason: reason.to_owned(),
            })
        };
        if self.name.is_empty() {
            return bad("the name is empty");
        }
        if self.parallelism == 0 {
            return bad("parallelism is 0");
        }
        if self.queue_capacity == 0 || self.queue_capacity > tokio::sync::Semaphore::MAX_PERMITS {
            return bad("queue_capacity must be at least 1");
        }
        if self.queue_bytes == 0 {
            return bad("queue_bytes must be at least 1");
        }
        Ok(())
    }
}

/// The channel table, shared by both sides of a link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ChannelSettings {
    /// The channels. Names must be unique.
    pub channels: Vec<ChannelSpec>,
    /// Capacity of each of the [`Inbox`]'s three priority queues, in messages.
    pub inbox_capacity: usize,
    /// Routing options used by [`Channels::send_routed`].
    pub route: RouteOptions,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            channels: vec![
                ChannelSpec::new(COORDINATION, Priority::High, 3),
                ChannelSpec::new(GOSSIP, Priority::Low, 1),
                ChannelSpec::new(BULK_DATA, Priority::Medium, DEFAULT_BULK_PARALLELISM),
            ],
            inbox_capacity: 4096,
            route: RouteOptions::default(),
        }
    }
}

impl ChannelSettings {
    /// One channel (`coordination`) of one connection, every route pointing at it: a
    /// plain single-connection link, the baseline that channel separation is measured
    /// against (benches, tests).
    pub fn single_connection() -> Self {
        ChannelSettings {
            channels: vec![ChannelSpec::new(COORDINATION, Priority::High, 1)],
            route: RouteOptions {
                bulk_channel: COORDINATION.into(),
                background_channel: COORDINATION.into(),
                urgent_channel: COORDINATION.into(),
                default_channel: COORDINATION.into(),
                ..RouteOptions::default()
            },
            ..ChannelSettings::default()
        }
    }

    /// Adds a channel.
    pub fn with(mut self, spec: ChannelSpec) -> Self {
        self.channels.push(spec);
        self
    }

    /// Checks every spec and that names are unique.
    pub fn validate(&self) -> Result<()> {
        if self.inbox_capacity == 0 {
            return Err(Error::InvalidSettings {
                reason: "inbox_capacity is 0".into(),
            });
        }
        for (i, spec) in self.channels.iter().enumerate() {
            spec.validate()?;
            if self.channels[..i].iter().any(|s| s.name == spec.name) {
                return Err(Error::InvalidChannel {
                    channel: spec.name.clone(),
                    reason: "defined twice".into(),
                });
            }
        }
        Ok(())
    }
}

/// How urgent a message is, for [`route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    /// Must not wait behind anything.
    Urgent,
    /// Ordinary.
    #[default]
    Normal,
    /// May wait.
    Background,
    /// A large transfer: goes on `bulk_channel` whatever its size, so a keyed stream of
    /// bulk data keeps its order even when some of its messages are small.
    Bulk,
}

/// What [`route`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageMeta<'a> {
    /// A channel named by the caller: always wins.
    pub channel: Option<&'a str>,
    /// Payload size in bytes.
    pub size: usize,
    /// Urgency.
    pub urgency: Urgency,
    /// Set for a state update that supersedes earlier ones of the same key.
    pub monotonic_key: Option<u64>,
}

/// Options of [`route`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RouteOptions {
    /// Messages larger than this go to `bulk_channel`.
    pub bulk_threshold: usize,
    /// Urgent messages.
    pub urgent_channel: String,
    /// Large messages.
    pub bulk_channel: String,
    /// Background messages.
    pub background_channel: String,
    /// State updates; `None`: the first monotonic channel of the table, if any.
    pub monotonic_channel: Option<String>,
    /// Everything else.
    pub default_channel: String,
}

impl Default for RouteOptions {
    fn default() -> Self {
        RouteOptions {
            bulk_threshold: 1024,
            urgent_channel: COORDINATION.into(),
            bulk_channel: BULK_DATA.into(),
            background_channel: GOSSIP.into(),
            monotonic_channel: None,
            default_channel: COORDINATION.into(),
        }
    }
}

/// Picks the channel for a message. The first rule that applies wins:
///
/// 1. a channel named in `meta.channel`;
/// 2. [`Urgency::Urgent`] → `urgent_channel` (`coordination`), whatever the size;
///    [`Urgency::Bulk`] → `bulk_channel` (`bulk_data`), whatever the size;
/// 3. a `monotonic_key` (a state update) → `monotonic_channel`, or else the first
///    monotonic channel in `channels` (skipped when there is none);
/// 4. `size > bulk_threshold` (1 KiB) → `bulk_channel` (`bulk_data`);
/// 5. [`Urgency::Background`] → `background_channel` (`gossip`);
/// 6. otherwise `default_channel` (`coordination`).
pub fn route<'a>(
    meta: &MessageMeta<'a>,
    opts: &'a RouteOptions,
    channels: &'a [ChannelSpec],
) -> &'a str {
    if let Some(c) = meta.channel {
        return c;
    }
    if meta.urgency == Urgency::Urgent {
        return &opts.urgent_channel;
    }
    if meta.urgency == Urgency::Bulk {
        return &opts.bulk_channel;
    }
    if meta.monotonic_key.is_some() {
        if let Some(c) = &opts.monotonic_channel {
            return c;
        }
        if let Some(spec) = channels.iter().find(|s| s.monotonic) {
            return &spec.name;
        }
    }
    if meta.size > opts.bulk_threshold {
        return &opts.bulk_channel;
    }
    if meta.urgency == Urgency::Background {
        return &opts.background_channel;
    }
    &opts.default_channel
}

/// Pre-registered metric handles of one channel.
#[derive(Debug)]
struct Meters {
    messages_out: Counter,
    bytes_out: Counter,
    dropped_full: Counter,
    dropped_closed: Counter,
    dropped_failed: Counter,
    dropped_too_large: Counter,
    dropped_interposed: Counter,
    send_seconds: Histogram,
}

impl Meters {
    fn new(channel: &str) -> Self {
        let ch = channel.to_owned();
        let dropped = |reason: &'static str| counter!(metric::DROPPED, "channel" => ch.clone(), "reason" => reason);
        Meters {
            messages_out: counter!(metric::MESSAGES, "channel" => ch.clone(), "direction" => "out"),
            bytes_out: counter!(metric::BYTES, "channel" => ch.clone(), "direction" => "out"),
            dropped_full: dropped("full"),
            dropped_closed: dropped("closed"),
            dropped_failed: dropped("connection_failed"),
            dropped_too_large: dropped("too_large"),
            dropped_interposed: dropped("interposed"),
            send_seconds: histogram!(metric::SEND_SECONDS, "channel" => ch),
        }
    }
}

/// A message handed back by [`ChannelSender::try_send`].
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// The connection's queue is full.
    Full {
        /// The partition key.
        key: Option<u64>,
        /// The payload.
        payload: Bytes,
    },
    /// The connection has closed or failed.
    Closed {
        /// The partition key.
        key: Option<u64>,
        /// The payload.
        payload: Bytes,
        /// Why it closed.
        reason: String,
    },
}

impl TrySendError {
    /// The rejected payload.
    pub fn into_payload(self) -> Bytes {
        match self {
            TrySendError::Full { payload, .. } | TrySendError::Closed { payload, .. } => payload,
        }
    }
}

impl std::fmt::Display for TrySendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrySendError::Full { .. } => f.write_str("channel queue is full"),
            TrySendError::Closed { reason, .. } => write!(f, "channel connection closed: {reason}"),
        }
    }
}

impl std::error::Error for TrySendError {}

#[derive(Debug)]
struct ChannelState {
    spec: ChannelSpec,
    queues: Vec<Arc<Queue>>,
    next: AtomicUsize,
    meters: Arc<Meters>,
}

impl ChannelState {
    fn pick(&self, key: Option<u64>) -> usize {
        let n = self.queues.len();
        match key {
            Some(k) => connection_of(k, n),
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    fn closed_error(&self, index: usize, reason: &str) -> Error {
        self.meters.dropped_closed.increment(1);
        Error::ChannelClosed {
            channel: self.spec.name.clone(),
            index: index as u16,
            reason: reason.to_owned(),
        }
    }
}

/// The connection (`0..parallelism`) of a channel that messages with partition key `key`
/// take.
pub(crate) fn connection_of(key: u64, parallelism: usize) -> usize {
    // Fibonacci hashing spreads sequential keys; the high bits are the good ones.
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % parallelism.max(1) as u64) as usize
}

/// A cheap, cloneable handle that sends on one channel of a [`Channels`].
///
/// Holding one does not keep the connections open: after [`Channels`] is dropped or shut
/// down, sends fail with [`Error::ChannelClosed`].
#[derive(Debug, Clone)]
pub struct ChannelSender {
    state: Arc<ChannelState>,
}

impl ChannelSender {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.state.spec.name
    }

    /// Which connection (`0..parallelism`) a message with `key` goes to; `None` (no key)
    /// advances the round-robin cursor.
    pub fn connection_for(&self, key: Option<u64>) -> usize {
        self.state.pick(key)
    }

    /// Queues a message, waiting while its connection's queue is full. With a key the
    /// message goes to the key's connection (per-key order), without one round-robin.
    ///
    /// Returns once queued, not once written. Fails with [`Error::ChannelClosed`] if the
    /// connection has closed or failed.
    pub async fn send(&self, key: Option<u64>, payload: Bytes) -> Result<()> {
        let index = self.state.pick(key);
        let large = payload.len() >= SENDER_YIELD_AT && self.state.spec.priority != Priority::High;
        let item = Item::new(key, payload);
        match self.state.queues[index].push(item).await {
            Ok(()) => {
                if large {
                    // See `SENDER_YIELD_AT`.
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
            // `push` waits for space, so a refusal means the queue is closed.
            Err(Refused::Closed(_, reason)) => Err(self.state.closed_error(index, &reason)),
            Err(Refused::Full(_)) => Err(self.state.closed_error(index, "queue refused")),
        }
    }

    /// [`send`](Self::send) of a message whose first `header` bytes name where it goes:
    /// while it waits in the queue, later messages sent this way with the same key and
    /// the same header bytes are appended to it (their bytes after the header), so they
    /// leave as one frame (see `queue::Queue::push_merging`; D390). For payload formats
    /// made for it (the node's `SendBatch`).
    pub(crate) async fn send_merging(
        &self,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<()> {
        let index = self.state.pick(key);
        let yields = self.yields_after(payload.len() - header.min(payload.len()));
        match self.state.queues[index]
            .push_merging(key, payload, header)
            .await
        {
            Ok(()) => {
                if yields {
                    // As `send` does: see `SENDER_YIELD_AT`.
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
            Err(Refused::Closed(_, reason)) => Err(self.state.closed_error(index, &reason)),
            Err(Refused::Full(_)) => Err(self.state.closed_error(index, "queue refused")),
        }
    }

    /// Appends `payload` to a waiting message as [`send_merging`](Self::send_merging)
    /// would, if that can be done now: `Some(yield)`, where `yield` says the caller must
    /// yield to the scheduler once before going on, as `send` does for a large message on
    /// a medium- or low-priority channel (`SENDER_YIELD_AT`); `None` (nothing queued)
    /// otherwise.
    pub(crate) fn append_now(
        &self,
        key: Option<u64>,
        payload: &[u8],
        header: usize,
    ) -> Option<bool> {
        let index = self.state.pick(key);
        self.state.queues[index]
            .append_now(key, payload, header)
            .then(|| self.yields_after(payload.len() - header.min(payload.len())))
    }

    /// Whether a send of a message of `len` bytes yields once queued (`SENDER_YIELD_AT`).
    fn yields_after(&self, len: usize) -> bool {
        len >= SENDER_YIELD_AT && self.state.spec.priority != Priority::High
    }

    /// [`try_send`](Self::try_send) with the appending of
    /// [`send_merging`](Self::send_merging).
    pub(crate) fn try_send_merging(
        &self,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<(), TrySendError> {
        let index = self.state.pick(key);
        let r = self.state.queues[index].try_push_merging(key, payload, header);
        self.refused(r)
    }

    /// Queues a message if its connection's queue has space now; otherwise hands it back.
    /// A full queue is counted as a drop (`reason="full"`), as is a closed connection.
    pub fn try_send(&self, key: Option<u64>, payload: Bytes) -> Result<(), TrySendError> {
        let index = self.state.pick(key);
        let item = Item::new(key, payload);
        let r = self.state.queues[index].try_push(item);
        self.refused(r)
    }

    fn refused(&self, r: Result<(), Refused>) -> Result<(), TrySendError> {
        match r {
            Ok(()) => Ok(()),
            Err(Refused::Full(item)) => {
                self.state.meters.dropped_full.increment(1);
                Err(TrySendError::Full {
                    key: item.key,
                    payload: item.payload,
                })
            }
            Err(Refused::Closed(item, reason)) => {
                self.state.meters.dropped_closed.increment(1);
                Err(TrySendError::Closed {
                    key: item.key,
                    payload: item.payload,
                    reason: reason.to_string(),
                })
            }
        }
    }
}

/// Builds a [`Channels`]; see [`Channels::builder`].
#[derive(Debug)]
pub struct ChannelsBuilder {
    transport: Arc<dyn Transport>,
    addr: String,
    settings: ChannelSettings,
    interposer: Option<(Arc<Interposer>, String)>,
    priority: Option<tokio::runtime::Handle>,
}

impl ChannelsBuilder {
    /// Runs the sender tasks of [`Priority::High`] channels on `runtime` (a
    /// [`PriorityThread`]'s) instead of the caller's, and moves their TCP sockets to its
    /// I/O driver, so urgent messages are written without waiting behind bulk tasks
    /// (D380).
    pub fn priority_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.priority = Some(runtime);
        self
    }

    /// The channel table (default: [`ChannelSettings::default`]).
    pub fn settings(mut self, settings: ChannelSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Applies `interposer` to every message before it is written, as sent from
    /// `local_node` to the peer (named by its handshake). `Drop` discards the message
    /// (counted, `reason="interposed"`); `Deliver` waits `delay` on that connection and
    /// writes `copies` copies.
    pub fn interposer(mut self, interposer: Arc<Interposer>, local_node: &str) -> Self {
        self.interposer = Some((interposer, local_node.to_owned()));
        self
    }

    /// Validates the settings and opens every connection of every channel. Fails (and
    /// closes what was opened) if any connection fails.
    pub async fn connect(self) -> Result<Channels> {
        self.settings.validate()?;
        let cancel = CancellationToken::new();
        let ended = CancellationToken::new();
        // Stops the sender tasks already started if a later connection fails.
        let armed = cancel.clone().drop_guard();
        let mut tasks = Vec::new();
        let mut by_name = HashMap::new();
        let mut peer = String::new();
        for spec in &self.settings.channels {
            let meters = Arc::new(Meters::new(&spec.name));
            let queue_meters = QueueMeters {
                depth: gauge!(metric::QUEUE_DEPTH, "channel" => spec.name.clone()),
                bytes: gauge!(metric::QUEUE_BYTES, "channel" => spec.name.clone()),
                superseded: counter!(metric::SUPERSEDED, "channel" => spec.name.clone()),
            };
            let mut queues = Vec::with_capacity(spec.parallelism.into());
            for index in 0..spec.parallelism {
                let conn = self
                    .transport
                    .connect(&self.addr, &spec.name, index)
                    .await?;
                peer = conn.peer().node.clone();
                let queue = Arc::new(Queue::new(
                    spec.queue_capacity,
                    spec.queue_bytes,
                    spec.monotonic,
                    queue_meters.clone(),
                ));
                let interpose = self.interposer.as_ref().map(|(i, local)| Interpose {
                    interposer: i.clone(),
                    from: local.clone(),
                    to: conn.peer().node.clone(),
                    channel: spec.name.clone(),
                });
                let mut writer = Writer {
                    queue: queue.clone(),
                    batch: VecDeque::with_capacity(BATCH_ITEMS),
                    meters: meters.clone(),
                    interpose,
                    fairness: Fairness::new(spec.priority),
                };
                let token = cancel.clone();
                let ended = ended.clone();
                let on = self
                    .priority
                    .as_ref()
                    .filter(|_| spec.priority == Priority::High);
                let rehome = on.is_some();
                let task = async move {
                    let _guard = TaskGuard::new();
                    let conn = if rehome { conn.rehome() } else { Ok(conn) };
                    tokio::select! {
                        _ = token.cancelled() => {
                            let lost = writer.queue.fail("channels dropped") + writer.batch_messages();
                            writer.meters.dropped_failed.increment(lost as u64);
                        }
                        _ = async {
                            match conn {
                                Ok(conn) => {
                                    let (tx, rx) = conn.split();
                                    writer.run(tx, rx).await;
                                }
                                Err(e) => {
                                    writer.failed(&e.to_string());
                                }
                            }
                        } => {}
                    }
                    ended.cancel();
                };
                tasks.push(match on {
                    Some(rt) => rt.spawn(task),
                    None => tokio::spawn(task),
                });
                queues.push(queue);
            }
            let state = Arc::new(ChannelState {
                spec: spec.clone(),
                queues,
                next: AtomicUsize::new(0),
                meters,
            });
            by_name.insert(spec.name.clone(), ChannelSender { state });
        }
        armed.disarm();
        Ok(Channels {
            peer,
            by_name,
            route: self.settings.route.clone(),
            specs: self.settings.channels,
            cancel,
            ended,
            tasks,
        })
    }
}

#[derive(Debug)]
struct Interpose {
    interposer: Arc<Interposer>,
    from: String,
    to: String,
    channel: String,
}

/// The sender task of one connection.
struct Writer {
    queue: Arc<Queue>,
    /// Messages taken from the queue and not yet written.
    batch: VecDeque<Item>,
    meters: Arc<Meters>,
    interpose: Option<Interpose>,
    fairness: Fairness,
}

/// Payload bytes a medium- or low-priority task moves before yielding to the scheduler.
///
/// Why: a socket with room and a queue with items never make a task wait, so without a
/// voluntary yield a bulk task runs until tokio's co-operative budget (128 operations,
/// several ms of 64 KiB copies) is spent, and the high-priority tasks on the same worker
/// wait that long. High-priority tasks never yield voluntarily.
const YIELD_EVERY: usize = 64 * 1024;

/// A [`ChannelSender::send`] of at least this many payload bytes on a medium- or
/// low-priority channel yields to the scheduler once queued (D382). Why: while queues
/// have room, `send` never waits, so a task sending large messages in a loop runs until
/// tokio's co-operative budget is spent (up to 128 sends: milliseconds of encoding and
/// copying 64 KiB messages), and every task woken meanwhile for that worker waits that
/// long — among them a requester whose reply the priority thread has read. Smaller
/// messages never yield here, so the small-message path is unchanged.
const SENDER_YIELD_AT: usize = 16 * 1024;

/// Voluntary yielding of one task (see [`YIELD_EVERY`]).
#[derive(Debug)]
struct Fairness {
    enabled: bool,
    moved: usize,
}

impl Fairness {
    fn new(priority: Priority) -> Self {
        Fairness {
            enabled: priority != Priority::High,
            moved: 0,
        }
    }

    async fn moved(&mut self, bytes: usize) {
        if !self.enabled {
            return;
        }
        self.moved += bytes;
        if self.moved >= YIELD_EVERY {
            self.moved = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Most messages a sender task takes from its queue at once (one lock, one return of
/// queue space) before writing them; see [`Writer::run`].
const BATCH_ITEMS: usize = 64;

/// Most payload bytes a sender task takes from its queue at once (at least one message).
const BATCH_BYTES: usize = 64 * 1024;

impl Writer {
    /// Takes messages in batches (one queue lock per batch), writes them into the
    /// connection's buffer and flushes once the queue is empty. A medium- or
    /// low-priority task yields once before that flush and writes what was queued
    /// meanwhile with the same flush: a producer that keeps pace with the writer then
    /// shares one write (and one wake-up of the peer's reader) among many messages
    /// instead of paying a system call each. High-priority tasks flush at once.
    async fn run(&mut self, mut tx: ConnectionSender, mut rx: ConnectionReceiver) {
        let peer = tx.peer().clone();
        let coalesce = self.fairness.enabled;
        let reason = 'run: loop {
            // Only wait on the receiver while idle: the peer sends nothing on a channel
            // connection but pings and `Close`, and a write must not be cancelled.
            let item = tokio::select! {
                biased;
                item = self.queue.pop() => match item {
                    Some(item) => item,
                    None => {
                        let _ = tx.close("shutdown").await;
                        return;
                    }
                },
                frame = rx.recv() => match frame {
                    Ok(Some(Frame::Ping(v))) => match tx.pong(v).await {
                        Ok(()) => continue,
                        Err(e) => break e.to_string(),
                    },
                    Ok(Some(_)) => continue,
                    Ok(None) => break format!("closed by peer: {}", rx.close_reason().unwrap_or("")),
                    Err(e) => break e.to_string(),
                },
            };
            self.batch.push_back(item);
            let mut yielded = false;
            loop {
                self.queue
                    .take_batch(&mut self.batch, BATCH_ITEMS, BATCH_BYTES);
                if self.batch.is_empty() {
                    if coalesce && !yielded {
                        yielded = true;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    break;
                }
                // Written front to back; what is left here when a write fails (or the
                // task is stopped) is counted as lost with the queue's remainder. One
                // clock reading per batch for the queued → written histogram.
                let now = std::time::Instant::now();
                while let Some(item) = self.batch.pop_front() {
                    let len = item.payload.len();
                    if let Err(e) = self.write(&mut tx, item, now).await {
                        break 'run e.to_string();
                    }
                    self.fairness.moved(len).await;
                }
            }
            if let Err(e) = tx.flush().await {
                break e.to_string();
            }
        };
        let lost = self.failed(&reason);
        tracing::warn!(
            peer = %peer.node,
            channel = %peer.channel,
            index = peer.index,
            lost,
            %reason,
            "channel connection failed"
        );
    }

    /// Messages in the taken batch (a frame with appended messages counts each, D390).
    fn batch_messages(&self) -> usize {
        self.batch.iter().map(|i| i.messages as usize).sum()
    }

    /// Fails the queue and counts what it and the batch held; returns that number.
    fn failed(&mut self, reason: &str) -> usize {
        let lost = self.queue.fail(reason) + self.batch_messages();
        self.batch.clear();
        self.meters.dropped_failed.increment(lost as u64);
        lost
    }

    async fn write(
        &self,
        tx: &mut ConnectionSender,
        item: Item,
        now: std::time::Instant,
    ) -> Result<()> {
        let mut copies = 1;
        if let Some(i) = &self.interpose {
            match i.interposer.decide(&i.from, &i.to, &i.channel) {
                Action::Drop => {
                    self.meters
                        .dropped_interposed
                        .increment(item.messages.into());
                    return Ok(());
                }
                Action::Reset => {
                    self.meters
                        .dropped_interposed
                        .increment(item.messages.into());
                    return Err(Error::Closed {
                        reason: "reset by the interposer".into(),
                    });
                }
                Action::Deliver { copies: c, delay } => {
                    copies = c;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        let len = item.payload.len() as u64;
        let messages = u64::from(item.messages);
        let (tag, body) = match item.key {
            None => (UNKEYED, item.payload),
            Some(key) => {
                let mut b = BytesMut::with_capacity(8 + item.payload.len());
                b.put_u64(key);
                b.extend_from_slice(&item.payload);
                (KEYED, b.freeze())
            }
        };
        for _ in 0..copies {
            match tx.feed(tag, body.clone()).await {
                Ok(()) => {}
                // Refused before anything was written: the connection stays usable.
                Err(Error::FrameTooLarge { .. }) => {
                    self.meters.dropped_too_large.increment(messages);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            self.meters.messages_out.increment(1);
            self.meters.bytes_out.increment(len);
        }
        let waited = now.saturating_duration_since(item.queued);
        self.meters.send_seconds.record(waited.as_secs_f64());
        self.queue
            .live
            .written(copies.into(), messages, len, waited);
        Ok(())
    }
}

/// The sending side of a link to one peer: every channel's connections and their sender
/// tasks.
///
/// Dropping it stops the sender tasks at once (queued messages are dropped and counted,
/// `reason="connection_failed"`); [`shutdown`](Self::shutdown) drains the queues first.
#[derive(Debug)]
pub struct Channels {
    peer: String,
    by_name: HashMap<String, ChannelSender>,
    specs: Vec<ChannelSpec>,
    route: RouteOptions,
    cancel: CancellationToken,
    /// Cancelled when the first connection fails or closes.
    ended: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Channels {
    /// Starts building the link to the peer listening at `addr`.
    pub fn builder(transport: Arc<dyn Transport>, addr: &str) -> ChannelsBuilder {
        ChannelsBuilder {
            transport,
            addr: addr.to_owned(),
            settings: ChannelSettings::default(),
            interposer: None,
            priority: None,
        }
    }

    /// The peer's node name, from the handshake.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The channel table.
    pub fn specs(&self) -> &[ChannelSpec] {
        &self.specs
    }

    /// A sending handle for channel `name`: look it up once, send many times.
    pub fn sender(&self, name: &str) -> Result<ChannelSender> {
        self.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownChannel {
                channel: name.to_owned(),
            })
    }

    /// See `ChannelSender::append_now`; `None` for an unknown channel.
    pub(crate) fn append_now(
        &self,
        name: &str,
        key: Option<u64>,
        payload: &[u8],
        header: usize,
    ) -> Option<bool> {
        self.by_name
            .get(name)
            .and_then(|s| s.append_now(key, payload, header))
    }

    /// Sends on channel `name`; see `ChannelSender::send_merging`.
    pub(crate) async fn send_merging(
        &self,
        name: &str,
        key: Option<u64>,
        payload: Bytes,
        header: usize,
    ) -> Result<()> {
        match self.by_name.get(name) {
            Some(s) => s.send_merging(key, payload, header).await,
            None => Err(Error::UnknownChannel {
                channel: name.to_owned(),
            }),
        }
    }

    /// Sends on channel `name`; see [`ChannelSender::send`].
    pub async fn send(&self, name: &str, key: Option<u64>, payload: Bytes) -> Result<()> {
        match self.by_name.get(name) {
            Some(s) => s.send(key, payload).await,
            None => Err(Error::UnknownChannel {
                channel: name.to_owned(),
            }),
        }
    }

    /// The channel [`route`] picks for `meta` with this link's options and table.
    pub fn route<'a>(&'a self, meta: &MessageMeta<'a>) -> &'a str {
        route(meta, &self.route, &self.specs)
    }

    /// Sends on the channel [`route`] picks (`meta.size` is taken from the payload;
    /// the key is `meta.monotonic_key`, or `key` if that is `None`).
    pub async fn send_routed(
        &self,
        mut meta: MessageMeta<'_>,
        key: Option<u64>,
        payload: Bytes,
    ) -> Result<()> {
        meta.size = payload.len();
        let key = meta.monotonic_key.or(key);
        let name = route(&meta, &self.route, &self.specs).to_owned();
        self.send(&name, key, payload).await
    }

    /// Stops accepting messages, lets every sender task write what is queued and close
    /// its connection, and waits for them.
    ///
    /// This waits as long as the peer takes to read; to bound it, wrap it in
    /// `tokio::time::timeout`: when the timeout drops the future, the `Channels` inside is
    /// dropped, which stops the tasks at once (remaining messages are counted as dropped).
    pub async fn shutdown(mut self) {
        for s in self.by_name.values() {
            for q in &s.state.queues {
                q.close("shut down");
            }
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Resolves once any connection of this link has failed or closed (the link is then
    /// unusable for the messages routed to that connection: the node layer replaces it).
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// Whether any connection of this link has failed or closed.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Whether connection `index` of channel `name` has closed, and why.
    pub fn closed_reason(&self, name: &str, index: usize) -> Option<String> {
        let s = self.by_name.get(name)?;
        s.state.queues.get(index)?.closed().map(|r| r.to_string())
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A message received on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The sending node.
    pub peer: Arc<str>,
    /// The channel it came on.
    pub channel: Arc<str>,
    /// The index (`0..parallelism`) of the connection it came on.
    pub connection: u16,
    /// Its partition key, if it had one.
    pub key: Option<u64>,
    /// The payload.
    pub payload: Bytes,
}

/// What an inbox made by [`Inbox::with_handler`] calls with each received message, on
/// the task reading the message's connection. A returned future is awaited by that task
/// before it reads the next message of the connection (backpressure to the sender);
/// messages of other connections go on meanwhile.
pub type InboundHandler =
    Arc<dyn Fn(Inbound) -> Option<futures_util::future::BoxFuture<'static, ()>> + Send + Sync>;

/// Where an inbox channel's messages go.
#[derive(Clone)]
enum Out {
    /// A queue read by another task.
    Queue(mpsc::Sender<Inbound>),
    /// Handled on the reading task itself.
    Handler(InboundHandler),
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Queue(_) => f.write_str("Queue"),
            Out::Handler(_) => f.write_str("Handler"),
        }
    }
}

#[derive(Debug)]
struct InboxChannel {
    priority: Priority,
    /// Where this channel's messages go: its priority's queue, its own, or a handler.
    out: Out,
    messages_in: Counter,
    bytes_in: Counter,
    dropped_inbox_closed: Counter,
    dropped_malformed: Counter,
}

#[derive(Debug)]
struct InboxShared {
    channels: HashMap<String, Arc<InboxChannel>>,
    /// Held so that [`Inbox::recv`] waits rather than ends while the inbox lives.
    _queues: [mpsc::Sender<Inbound>; 3],
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// Where the reading tasks of [`Priority::High`] channels run, if not on the caller's
    /// runtime (see [`Inbox::set_priority_runtime`]).
    priority: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// The receiving side: merges every accepted channel connection into one stream.
///
/// Connections for channels not in the table are closed (`reason="unknown channel"`).
/// A full priority queue makes the connections feeding it wait (backpressure to the
/// sender), never the other priorities. Dropping the inbox stops its accept and reader
/// tasks.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<InboxShared>,
    queues: [mpsc::Receiver<Inbound>; 3],
}

impl Inbox {
    /// An inbox for the channels of `settings`.
    pub fn new(settings: &ChannelSettings) -> Result<Inbox> {
        settings.validate()?;
        let cap = settings.inbox_capacity;
        let (h, hr) = mpsc::channel(cap);
        let (m, mr) = mpsc::channel(cap);
        let (l, lr) = mpsc::channel(cap);
        let queues = [h, m, l];
        let channels = Self::channels(settings, |spec| {
            Out::Queue(queues[spec.priority.slot()].clone())
        });
        Ok(Inbox {
            shared: Arc::new(InboxShared {
                channels,
                _queues: queues,
                cancel: CancellationToken::new(),
                tasks: Mutex::new(JoinSet::new()),
                priority: std::sync::OnceLock::new(),
            }),
            queues: [hr, mr, lr],
        })
    }

    /// An inbox whose channels each have their own queue of `inbox_capacity` messages,
    /// returned beside it by name, so that each channel can be decoded by its own task
    /// and a slow consumer of one channel never delays another. [`recv`](Self::recv) on
    /// this inbox yields nothing: read the returned receivers. A full channel queue makes
    /// that channel's connections wait (backpressure to the senders).
    #[allow(clippy::type_complexity)]
    pub fn per_channel(
        settings: &ChannelSettings,
    ) -> Result<(Inbox, Vec<(String, mpsc::Receiver<Inbound>)>)> {
        settings.validate()?;
        let cap = settings.inbox_capacity;
        let mut receivers = Vec::new();
        let mut senders = HashMap::new();
        for spec in &settings.channels {
            let (tx, rx) = mpsc::channel(cap);
            senders.insert(spec.name.clone(), tx);
            receivers.push((spec.name.clone(), rx));
        }
        let channels = Self::channels(settings, |spec| Out::Queue(senders[&spec.name].clone()));
        let (h, hr) = mpsc::channel(1);
        let (m, mr) = mpsc::channel(1);
        let (l, lr) = mpsc::channel(1);
        let inbox = Inbox {
            shared: Arc::new(InboxShared {
                channels,
                _queues: [h, m, l],
                cancel: CancellationToken::new(),
                tasks: Mutex::new(JoinSet::new()),
                priority: std::sync::OnceLock::new(),
            }),
            queues: [hr, mr, lr],
        };
        Ok((inbox, receivers))
    }

    /// An inbox that hands each message to `handler` on the task reading its connection
    /// (no queue and no task switch between reading and handling; see
    /// [`InboundHandler`]). Messages of one connection are handled in order; those of
    /// different connections (of one channel too) concurrently. [`recv`](Self::recv) on
    /// this inbox yields nothing.
    pub fn with_handler(settings: &ChannelSettings, handler: InboundHandler) -> Result<Inbox> {
        settings.validate()?;
        let channels = Self::channels(settings, |_| Out::Handler(handler.clone()));
        let (h, hr) = mpsc::channel(1);
        let (m, mr) = mpsc::channel(1);
        let (l, lr) = mpsc::channel(1);
        Ok(Inbox {
            shared: Arc::new(InboxShared {
                channels,
                _queues: [h, m, l],
                cancel: CancellationToken::new(),
                tasks: Mutex::new(JoinSet::new()),
                priority: std::sync::OnceLock::new(),
            }),
            queues: [hr, mr, lr],
        })
    }

    fn channels(
        settings: &ChannelSettings,
        out: impl Fn(&ChannelSpec) -> Out,
    ) -> HashMap<String, Arc<InboxChannel>> {
        settings
            .channels
            .iter()
            .map(|spec| {
                let ch = spec.name.clone();
                let dropped = |reason: &'static str| {
                    counter!(metric::DROPPED, "channel" => ch.clone(), "reason" => reason)
                };
                let c = InboxChannel {
                    priority: spec.priority,
                    out: out(spec),
                    messages_in: counter!(metric::MESSAGES, "channel" => ch.clone(), "direction" => "in"),
                    bytes_in: counter!(metric::BYTES, "channel" => ch.clone(), "direction" => "in"),
                    dropped_inbox_closed: dropped("inbox_closed"),
                    dropped_malformed: dropped("malformed"),
                };
                (spec.name.clone(), Arc::new(c))
            })
            .collect()
    }

    /// Accepts every connection of `listener` until the inbox is dropped.
    pub fn serve(&self, mut listener: Listener) {
        let shared = self.shared.clone();
        let cancel = self.shared.cancel.clone();
        self.shared.tasks.lock().spawn(async move {
            let _guard = TaskGuard::new();
            loop {
                let conn = tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = listener.accept() => match c {
                        Ok(c) => c,
                        Err(_) => return,
                    },
                };
                attach(&shared, conn);
            }
        });
    }

    /// Reads the connections of [`Priority::High`] channels accepted from now on on
    /// `runtime` (a [`PriorityThread`]'s), with their TCP sockets moved to its I/O driver
    /// (D380). Set once; later calls are ignored (returns `false`).
    pub fn set_priority_runtime(&self, runtime: tokio::runtime::Handle) -> bool {
        self.shared.priority.set(runtime).is_ok()
    }

    /// Reads `conn` (an accepted channel connection) into this inbox.
    pub fn attach(&self, conn: Connection) {
        attach(&self.shared, conn);
    }

    /// The next message, higher priorities first; `None` once nothing can arrive any more
    /// (never while the inbox lives, as it holds the senders itself).
    pub async fn recv(&mut self) -> Option<Inbound> {
        let [h, m, l] = &mut self.queues;
        tokio::select! {
            biased;
            Some(x) = h.recv() => Some(x),
            Some(x) = m.recv() => Some(x),
            Some(x) = l.recv() => Some(x),
            else => None,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

fn attach(shared: &Arc<InboxShared>, conn: Connection) {
    let channel = shared.channels.get(&conn.peer().channel).cloned();
    let cancel = shared.cancel.clone();
    let out = channel.as_ref().map(|c| c.out.clone());
    let on = shared
        .priority
        .get()
        .filter(|_| {
            channel
                .as_ref()
                .is_some_and(|c| c.priority == Priority::High)
        })
        .cloned();
    let rehome = on.is_some();
    let mut tasks = shared.tasks.lock();
    while tasks.try_join_next().is_some() {}
    let task = async move {
        let _guard = TaskGuard::new();
        let (Some(channel), Some(out)) = (channel, out) else {
            tracing::warn!(
                peer = %conn.peer().node,
                channel = %conn.peer().channel,
                "refusing a connection for an unknown channel"
            );
            let _ = conn.close("unknown channel").await;
            return;
        };
        let conn = if rehome {
            match conn.rehome() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot move a connection to the priority thread");
                    return;
                }
            }
        } else {
            conn
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = read(conn, channel, out) => {}
        }
    };
    match on {
        Some(rt) => tasks.spawn_on(task, &rt),
        None => tasks.spawn(task),
    };
}

async fn read(conn: Connection, meters: Arc<InboxChannel>, out: Out) {
    let peer: Arc<str> = conn.peer().node.as_str().into();
    let name: Arc<str> = conn.peer().channel.as_str().into();
    let connection = conn.peer().index;
    let (mut tx, mut rx) = conn.split();
    let mut fairness = Fairness::new(meters.priority);
    loop {
        let (tag, mut payload) = match rx.recv().await {
            Ok(Some(Frame::Data { channel, payload })) => (channel, payload),
            Ok(Some(Frame::Ping(v))) => {
                if tx.pong(v).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Frame::Pong(_))) => continue,
            Ok(None) | Err(_) => return,
        };
        let key = match tag {
            UNKEYED => None,
            KEYED if payload.len() >= 8 => {
                let k = payload.split_to(8);
                Some(u64::from_be_bytes(k[..].try_into().expect("8 bytes")))
            }
            _ => {
                meters.dropped_malformed.increment(1);
                let _ = tx.close("malformed channel message").await;
                return;
            }
        };
        meters.messages_in.increment(1);
        meters.bytes_in.increment(payload.len() as u64);
        let msg = Inbound {
            peer: peer.clone(),
            channel: name.clone(),
            connection,
            key,
            payload,
        };
        let len = msg.payload.len();
        match &out {
            Out::Queue(q) => {
                if q.send(msg).await.is_err() {
                    meters.dropped_inbox_closed.increment(1);
                    return;
                }
            }
            Out::Handler(h) => {
                if let Some(wait) = h(msg) {
                    wait.await;
                }
            }
        }
        fairness.moved(len).await;
    }
}

pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        metric::MESSAGES,
        "Channel messages, by channel and direction (out: written, in: received)."
    );
    describe_counter!(
        metric::BYTES,
        "Channel payload bytes, by channel and direction."
    );
    describe_gauge!(
        metric::QUEUE_DEPTH,
        "Messages queued for sending, by channel (all connections to all peers)."
    );
    describe_gauge!(
        metric::QUEUE_BYTES,
        "Payload bytes queued for sending, by channel (all connections to all peers)."
    );
    describe_counter!(
        metric::DROPPED,
        "Channel messages not delivered, by channel and reason (full, closed, connection_failed, too_large, interposed, inbox_closed, malformed)."
    );
    describe_counter!(
        metric::SUPERSEDED,
        "Queued messages replaced by a newer one of the same key on a monotonic channel."
    );
    describe_gauge!(
        priority::THREADS,
        "Priority threads (high-priority channel tasks off the application runtime, D380) running in the process."
    );
    describe_counter!(
        priority::NICE,
        "Attempts to set a priority thread's nice value, by result (ok, refused: the thread keeps the process's priority)."
    );
    describe_histogram!(
        metric::SEND_SECONDS,
        "Time from queueing a channel message to writing it to its connection, by channel."
    );
}
