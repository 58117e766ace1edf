//! Typed events with ids, timestamps, correlation and causality: streams, subscriptions
//! and a bounded, optionally durable store.
//!
//! # Model
//! * **One stream per event type.** The built-in types (`user`, `system`, `error`,
//!   `telemetry`) have a stream from the start; a stream for an application-defined type
//!   is created the first time an event of that type is emitted or subscribed to (at
//!   most [`EventsSettings::max_streams`]). A stream is a dispatcher task and
//!   [`StreamSettings::workers`] worker tasks (default 4) that run the handlers.
//! * **Two lanes.** Each stream, and each of its workers, has an urgent and a normal
//!   lane; whenever an urgent event is queued it is taken before any normal one
//!   ([`Event::urgent`]). A flooded normal lane does not hold up urgent events at the
//!   dispatcher either (see D20 in `docs/DECISIONS.md`).
//! * **Order** is chosen per stream ([`StreamSettings::order`]). By default
//!   ([`StreamOrder::PerFlow`]) events of one type, one correlation id and one lane are
//!   handled in the order they were queued by `emit`/`try_emit` — for a single emitting
//!   task, program order — by every subscription, one at a time: the dispatcher sends all
//!   events of one flow to the same worker (a hash of the correlation id), and a worker
//!   runs the handlers for one event, in subscription order, before taking the next.
//!   Nothing is promised across flows (they run in parallel on different workers), across
//!   types, or between lanes (an urgent event overtakes normal events of its flow).
//!   [`StreamOrder::Total`] extends the promise to every event of the stream and lane (one
//!   worker); [`StreamOrder::Unordered`] drops it (workers in turn).
//! * **Bounded queues.** [`Events::emit`] waits while the event's lane is full
//!   (backpressure); [`Events::try_emit`] hands the event back in
//!   [`TryEmitError::Full`]. Events still queued when the service shuts down are
//!   discarded. Both are counted in `foundation_events_dropped_total{type,reason}` with
//!   reason `full` or `shutdown`.
//! * **Stored, then dispatched.** `emit` waits for room in the lane, appends the event to
//!   the [`EventStore`], and only then queues it, so a dispatched event is always stored
//!   and a failed append dispatches nothing.
//! * **Subscriptions** are async closures with a [`Filter`] (types, correlation id,
//!   predicates). [`Events::subscribe`] returns a [`Subscription`]; dropping it detaches the
//!   handler. A panicking handler is counted
//!   (`foundation_events_handler_panics_total{type}`) and the stream goes on. To consume
//!   events as a stream instead, forward them from a handler into a channel of your
//!   choice.
//! * **Shutdown.** When [`Events::shutdown`] returns, every dispatcher and worker task has
//!   ended: no handler is running and none will start. Dropping the last [`Events`] clone
//!   without shutdown stops the tasks too, but does not wait for a running handler.
//! * **Store.** [`EventStore`] keeps at most [`StoreOptions::max_events`] events, none
//!   older than [`StoreOptions::max_age`], with queries ([`Query`]) by type, time range and
//!   correlation id, [`EventStore::chain`] for a flow in causal order, and statistics.
//!   [`EventStore::open`] makes it durable: records are appended to checksummed segment
//!   files and restored on open (format below; the why in D21 of `docs/DECISIONS.md`).
//!
//! ## Segment format (durable store)
//! ```text
//! file    : header record*
//! header  : "FEVS" | version u16 BE (1) | reserved u16 (0)
//! record  : length u32 BE | crc32 u32 BE over (length bytes ++ body) | body
//! body    : the Event in MessagePack (named fields, the serde form of Event)
//! ```
//! On open, a torn tail (a record cut short) or a damaged last record is truncated, a
//! damaged record followed by valid ones is skipped; every case is returned in
//! [`OpenReport::problems`] and counted in `foundation_events_store_corrupt_records_total`.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use foundation_core::events::{CorrelationId, Event, Events, Filter, Query};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_core::Result<()> {
//! let events = Events::new()?;
//! let seen = Arc::new(AtomicUsize::new(0));
//! let counter = seen.clone();
//! let sub = events.subscribe(Filter::of_type("user"), move |e: Event| {
//!     let counter = counter.clone();
//!     async move {
//!         if e.payload::<String>().is_ok() {
//!             counter.fetch_add(1, Ordering::SeqCst);
//!         }
//!     }
//! })?;
//!
//! let flow = CorrelationId::new();
//! let first = events.emit(Event::new("user", &"signed up")?.correlated(flow)).await?;
//! let parent = events.store().get(first).unwrap();
//! events.emit(Event::new("user", &"paid")?.caused_by(&parent).urgent()).await?;
//!
//! let chain = events.store().chain(flow);
//! assert_eq!(chain.len(), 2);
//! assert_eq!(chain[0].id, first);
//! assert_eq!(events.store().query(&Query::new().event_type("user")).len(), 2);
//!
//! events.shutdown().await; // no handler runs after this
//! assert!(seen.load(Ordering::SeqCst) <= 2);
//! drop(sub);
//! # Ok(()) }
//! ```

mod correlate;
mod event;
mod segment;
mod store;
mod stream;
mod subscribe;

pub use correlate::{
    correlate_events, CorrelateOptions, CorrelateReply, CorrelateRequest, CorrelationGroup,
    Correlator, GroupKind,
};
pub use event::{CorrelationId, Event, EventId, EventType, Priority};
pub use segment::{Damage, DamageKind, OpenReport, Recovery};
pub use store::{EventStore, FsyncPolicy, Order, Query, StoreOptions, StoreStats};
pub use stream::{StreamOrder, StreamSettings, StreamStats};
pub use subscribe::{Filter, Subscription};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};
use stream::{DropReason, Stream};
use subscribe::{Detach, Subscriber};

/// Settings of an [`Events`] service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsSettings {
    /// Settings of every stream without an entry in `streams`.
    pub stream: StreamSettings,
    /// Settings per event type.
    pub streams: HashMap<String, StreamSettings>,
    /// Most streams (event types) the service creates. Default 256.
    pub max_streams: usize,
    /// How often the store is pruned. A durable store with [`FsyncPolicy::Batch`] is
    /// also checked (and pruned) every `max_delay` if that is shorter. Default 1 s.
    pub prune_interval: Duration,
    /// How long [`Events::shutdown`] lets running handlers finish before aborting their
    /// tasks. Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        EventsSettings {
            stream: StreamSettings::default(),
            streams: HashMap::new(),
            max_streams: 256,
            prune_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Why [`Events::try_emit`] did not take an event. Every variant hands the event back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryEmitError {
    /// The event's lane is full. Counted as a drop with reason `full`.
    #[error("event lane full")]
    Full(Event),
    /// The service has shut down.
    #[error("events service has shut down")]
    Shutdown(Event),
    /// The stream or the store refused the event (too many streams, store I/O error,
    /// event too large).
    #[error("event refused: {1}")]
    Refused(Event, Error),
}

impl TryEmitError {
    /// The event that was not emitted.
    pub fn into_event(self) -> Event {
        match self {
            TryEmitError::Full(e) | TryEmitError::Shutdown(e) | TryEmitError::Refused(e, _) => e,
        }
    }
}

struct EventsInner {
    settings: EventsSettings,
    store: EventStore,
    runtime: tokio::runtime::Handle,
    /// Streams by type. The write lock also serialises changes of subscriber lists and
    /// the creation of tasks (so that shutdown sees every task).
    streams: RwLock<HashMap<EventType, Arc<Stream>>>,
    /// Subscriptions without a type condition: attached to every stream, present and future.
    wildcard: Mutex<Vec<Arc<Subscriber>>>,
    next_subscription: AtomicU64,
    /// Whether emits are accepted. An emit holds the read lock from its final check until
    /// its event is in the lane; shutdown closes intake under the write lock before it
    /// stops the tasks, so no acknowledged event can be queued after a dispatcher drained
    /// its lanes.
    intake: RwLock<bool>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown_lock: tokio::sync::Mutex<()>,
    /// The external correlator used by [`Events::correlate`], once attached.
    correlator: Mutex<Option<Correlator>>,
}

impl Drop for EventsInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Detach for EventsInner {
    fn detach(&self, subscriber: &Arc<Subscriber>) {
        let streams = self.streams.write();
        self.wildcard.lock().retain(|s| s.id != subscriber.id);
        for stream in streams.values() {
            let list = &stream.shared.subscribers;
            if list.load().iter().any(|s| s.id == subscriber.id) {
                let kept: Vec<_> = list
                    .load()
                    .iter()
                    .filter(|s| s.id != subscriber.id)
                    .cloned()
                    .collect();
                list.store(Arc::new(kept));
            }
        }
    }
}

/// The events service: streams, subscriptions and the store. Cheap to clone.
///
/// Needs a tokio runtime (each stream runs tasks). Dropping the last clone cancels every
/// task without waiting; call [`shutdown`](Self::shutdown) to wait until no handler runs.
/// A handler that holds a clone of its own `Events` keeps the service alive until
/// `shutdown`.
#[derive(Clone)]
pub struct Events {
    inner: Arc<EventsInner>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("types", &self.event_types())
            .field("store", &self.inner.store)
            .finish()
    }
}

impl Events {
    /// A service with default settings and an in-memory store with default options.
    /// Fails outside a tokio runtime.
    pub fn new() -> Result<Events> {
        Events::with_store(EventsSettings::default(), EventStore::default())
    }

    /// A service with these settings and this store (in memory or durable).
    /// Fails outside a tokio runtime.
    pub fn with_store(settings: EventsSettings, store: EventStore) -> Result<Events> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("the events service needs a tokio runtime".into())
        })?;
        let events = Events {
            inner: Arc::new(EventsInner {
                settings,
                store,
                runtime,
                streams: RwLock::new(HashMap::new()),
                wildcard: Mutex::new(Vec::new()),
                correlator: Mutex::new(None),
                next_subscription: AtomicU64::new(1),
                intake: RwLock::new(true),
                cancel: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                shutdown_lock: tokio::sync::Mutex::new(()),
            }),
        };
        for t in EventType::BUILT_IN {
            events.stream(&EventType::new(t)?)?;
        }
        // Tick often enough to honour a batched fsync's delay as well.
        let every = match events.inner.store.options().fsync {
            FsyncPolicy::Batch { max_delay, .. } if events.inner.store.is_durable() => {
                events.inner.settings.prune_interval.min(max_delay)
            }
            _ => events.inner.settings.prune_interval,
        };
        let pruner = events.inner.runtime.spawn(
            prune_periodically(
                events.inner.store.clone(),
                every,
                events.inner.cancel.clone(),
            )
            .instrument(tracing::debug_span!("events_pruner")),
        );
        events.inner.tasks.lock().push(pruner);
        Ok(events)
    }

    /// The store.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Attaches the external correlator that [`correlate`](Self::correlate) uses
    /// (replacing one attached before).
    pub fn attach_correlator(&self, correlator: Correlator) {
        *self.inner.correlator.lock() = Some(correlator);
    }

    /// Groups `batch` by correlation id, parent chains and closeness in time, in the
    /// external `foundation-correlator` process attached with
    /// [`attach_correlator`](Self::attach_correlator). A correlator that crashes, hangs or
    /// answers garbage gives an error here and is restarted; this service is unaffected.
    pub async fn correlate(&self, batch: &[Event]) -> Result<Vec<CorrelationGroup>> {
        let correlator =
            self.inner
                .correlator
                .lock()
                .clone()
                .ok_or_else(|| Error::Correlation {
                    reason: "no correlator attached (see Events::attach_correlator)".into(),
                })?;
        correlator.correlate(batch).await
    }

    /// The event types that have a stream, sorted.
    pub fn event_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .streams
            .read()
            .keys()
            .map(|t| t.as_str().to_string())
            .collect();
        v.sort();
        v
    }

    /// A view of the stream of `event_type`, if it exists.
    pub fn stream_stats(&self, event_type: &str) -> Option<StreamStats> {
        let t = EventType::new(event_type).ok()?;
        self.inner.streams.read().get(&t).map(|s| s.stats())
    }

    fn shut_down() -> Error {
        Error::Shutdown {
            component: "events service",
        }
    }

    /// The stream of `t`, created if needed.
    fn stream(&self, t: &EventType) -> Result<Arc<Stream>> {
        if let Some(s) = self.inner.streams.read().get(t) {
            return Ok(s.clone());
        }
        let mut streams = self.inner.streams.write();
        self.stream_locked(&mut streams, t)
    }

    fn stream_locked(
        &self,
        streams: &mut HashMap<EventType, Arc<Stream>>,
        t: &EventType,
    ) -> Result<Arc<Stream>> {
        if let Some(s) = streams.get(t) {
            return Ok(s.clone());
        }
        // Checked under the write lock: shutdown cancels, then takes this lock, so no
        // task is created after shutdown collected the tasks.
        if self.inner.cancel.is_cancelled() {
            return Err(Self::shut_down());
        }
        if streams.len() >= self.inner.settings.max_streams {
            return Err(Error::TooManyStreams {
                event_type: t.to_string(),
                max: self.inner.settings.max_streams,
            });
        }
        let settings = self
            .inner
            .settings
            .streams
            .get(t.as_str())
            .unwrap_or(&self.inner.settings.stream);
        let (stream, tasks) = Stream::spawn(
            t.clone(),
            settings,
            self.inner.wildcard.lock().clone(),
            &self.inner.runtime,
            self.inner.cancel.child_token(),
        );
        self.inner.tasks.lock().extend(tasks);
        let stream = Arc::new(stream);
        streams.insert(t.clone(), stream.clone());
        Ok(stream)
    }

    /// Stores `event` and queues it for its stream's subscribers; returns its id.
    ///
    /// Waits while the event's lane is full. Fails with [`Error::Shutdown`] after
    /// shutdown, with [`Error::TooManyStreams`] for a new type beyond the limit, and with
    /// the store's error if the append fails — in every failure case the event was
    /// neither stored nor dispatched.
    pub async fn emit(&self, event: Event) -> Result<EventId> {
        let stream = self.stream(&event.event_type)?;
        let Ok(permit) = stream.reserve(event.priority).await else {
            stream.shared.metrics.dropped(DropReason::Shutdown, 1);
            return Err(Self::shut_down());
        };
        if self.inner.store.is_durable() {
            // Written by the store's writer thread (group commit); this task waits
            // without blocking its runtime worker.
            if !*self.inner.intake.read() {
                stream.shared.metrics.dropped(DropReason::Shutdown, 1);
                return Err(Self::shut_down());
            }
            self.inner.store.append_async(&event).await?;
            return self
                .queue(&stream, permit, event, false)
                .map_err(|(e, _)| e);
        }
        self.queue(&stream, permit, event, true).map_err(|(e, _)| e)
    }

    /// Like [`emit`](Self::emit) but never waits for room: a full lane hands the event
    /// back in [`TryEmitError::Full`]. With a durable store it blocks the calling thread
    /// until the store's writer thread has written (and, per policy, synced) the record;
    /// from async code prefer [`emit`](Self::emit), which waits without blocking.
    // The error hands the event back by value, as tokio's `TrySendError<T>` does; boxing
    // it would allocate on exactly the path that is under pressure.
    #[allow(clippy::result_large_err)]
    pub fn try_emit(&self, event: Event) -> std::result::Result<EventId, TryEmitError> {
        let stream = match self.stream(&event.event_type) {
            Ok(s) => s,
            Err(Error::Shutdown { .. }) => return Err(TryEmitError::Shutdown(event)),
            Err(e) => return Err(TryEmitError::Refused(event, e)),
        };
        self.try_queue(&stream, event)
    }

    #[allow(clippy::result_large_err)] // see `try_emit`
    fn try_queue(
        &self,
        stream: &Stream,
        event: Event,
    ) -> std::result::Result<EventId, TryEmitError> {
        match stream.try_reserve(event.priority) {
            Ok(permit) => self
                .queue(stream, permit, event, true)
                .map_err(|(e, event)| match e {
                    Error::Shutdown { .. } => TryEmitError::Shutdown(event),
                    e => TryEmitError::Refused(event, e),
                }),
            Err(true) => {
                stream.shared.metrics.dropped(DropReason::Full, 1);
                Err(TryEmitError::Full(event))
            }
            Err(false) => {
                stream.shared.metrics.dropped(DropReason::Shutdown, 1);
                Err(TryEmitError::Shutdown(event))
            }
        }
    }

    #[allow(clippy::result_large_err)] // the event goes back to the caller unboxed
    fn queue(
        &self,
        stream: &Stream,
        permit: tokio::sync::mpsc::Permit<'_, Event>,
        event: Event,
        store: bool,
    ) -> std::result::Result<EventId, (Error, Event)> {
        let open = self.inner.intake.read();
        if !*open {
            stream.shared.metrics.dropped(DropReason::Shutdown, 1);
            return Err((Self::shut_down(), event));
        }
        if store {
            if let Err(e) = self.inner.store.append(&event) {
                return Err((e, event));
            }
        }
        let id = event.id;
        let m = &stream.shared.metrics;
        m.emitted.increment(1);
        m.enqueued(event.priority);
        permit.send(event);
        drop(open);
        Ok(id)
    }

    /// Attaches `handler` to the events that pass `filter`: to the streams of the
    /// filter's types (created if needed), or to every stream, present and future, when
    /// the filter names no type.
    ///
    /// The handler is an async closure that receives each event by value. It runs on a
    /// stream worker, for one event at a time per worker, so a slow handler slows its
    /// worker's flows (spawn a task for long work). Fails with [`Error::InvalidArgument`]
    /// for a malformed type name, [`Error::TooManyStreams`] or [`Error::Shutdown`].
    pub fn subscribe<F, Fut>(&self, filter: Filter, handler: F) -> Result<Subscription>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let types = filter.event_types()?;
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber::new(
            id,
            filter,
            subscribe::boxed_handler(handler),
        ));
        let mut streams = self.inner.streams.write();
        if self.inner.cancel.is_cancelled() {
            return Err(Self::shut_down());
        }
        let targets: Vec<Arc<Stream>> = if types.is_empty() {
            self.inner.wildcard.lock().push(subscriber.clone());
            streams.values().cloned().collect()
        } else {
            let new = types.iter().filter(|t| !streams.contains_key(*t)).count();
            if streams.len() + new > self.inner.settings.max_streams {
                return Err(Error::TooManyStreams {
                    event_type: types[0].to_string(),
                    max: self.inner.settings.max_streams,
                });
            }
            types
                .iter()
                .map(|t| self.stream_locked(&mut streams, t))
                .collect::<Result<_>>()?
        };
        for stream in targets {
            let mut list = Vec::clone(&stream.shared.subscribers.load());
            list.push(subscriber.clone());
            stream.shared.subscribers.store(Arc::new(list));
        }
        drop(streams);
        let owner: Weak<dyn Detach> = Arc::downgrade(&self.inner) as Weak<dyn Detach>;
        Ok(Subscription::new(subscriber, owner))
    }

    /// Stops the service and waits for its tasks: no new event is accepted, events still
    /// queued are discarded (counted as dropped with reason `shutdown`; they are in the
    /// store), a handler already running may finish within
    /// [`EventsSettings::shutdown_timeout`] after which its task is aborted, and a
    /// durable store is synced. When this returns no handler is running and none will
    /// start. Calling it again (or concurrently) waits for the first call to finish.
    pub async fn shutdown(&self) {
        let _one_at_a_time = self.inner.shutdown_lock.lock().await;
        // Close intake first and wait out emits in progress, then stop the tasks.
        *self.inner.intake.write() = false;
        self.inner.cancel.cancel();
        // Wait out any stream creation in progress (it checks `cancel` under this lock).
        drop(self.inner.streams.write());
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        let deadline = tokio::time::Instant::now() + self.inner.settings.shutdown_timeout;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                // Returns once the task's future is dropped: nothing of it runs after.
                let _ = task.await;
            }
        }
        if let Err(e) = self.inner.store.sync() {
            tracing::warn!(error = %e, "event store sync at shutdown failed");
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }
}

async fn prune_periodically(store: EventStore, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                store.prune();
                if let Err(e) = store.sync_if_due() {
                    tracing::warn!(error = %e, "event store sync failed");
                }
            }
        }
    }
}

/// Describes the event metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "foundation_events_emitted_total",
        "Events emitted, by type."
    );
    describe_counter!(
        "foundation_events_dispatched_total",
        "Events handed to handlers, by type and lane."
    );
    describe_counter!(
        "foundation_events_dropped_total",
        "Events not dispatched, by type and reason."
    );
    describe_counter!(
        "foundation_events_handler_panics_total",
        "Event handlers or filters that panicked, by type."
    );
    describe_counter!(
        "foundation_events_pruned_total",
        "Events removed from the store by retention."
    );
    describe_counter!(
        "foundation_events_store_corrupt_records_total",
        "Torn or corrupt records found when opening a durable event store."
    );
    describe_gauge!(
        "foundation_events_queue_depth",
        "Events queued in a stream lane."
    );
    describe_gauge!(
        "foundation_events_stored",
        "Events held by the event store."
    );
}
