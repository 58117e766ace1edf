//! One stream per event type: an inbox with two lanes, a dispatcher task, N workers.
//!
//! ```text
//! emit ──► inbox.urgent ─┐                 ┌─► worker 0: urgent | normal ─► handlers
//!      ──► inbox.normal ─┴─► dispatcher ───┼─► worker 1: urgent | normal ─► handlers
//!                            (hash of the  └─► ...
//!                             correlation id picks the worker)
//! ```
//!
//! Every queue is a bounded `tokio::sync::mpsc` channel. The dispatcher and each worker
//! take from their urgent lane whenever it holds an event (`biased` select). When a
//! worker's normal lane is full, the dispatcher parks the one normal event it holds and
//! keeps forwarding urgent events meanwhile, so a flooded normal lane never delays an
//! urgent event at the dispatcher; it takes no further normal event until the parked one
//! is placed, which keeps the normal lane in order.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::event::{Event, EventType, Priority};
use super::subscribe::{Delivery, Subscriber};

/// Which events of a stream are handled in the order they were queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamOrder {
    /// Events with the same correlation id (and lane) are handled in queue order; flows
    /// run in parallel on the workers (a hash of the correlation id picks the worker).
    #[default]
    PerFlow,
    /// Every event of the stream (per lane) is handled in queue order, one at a time: the
    /// stream runs a single worker whatever `workers` says.
    Total,
    /// No order: events go to the workers in turn, for the most parallelism.
    Unordered,
}

/// Settings of one event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSettings {
    /// Which events are handled in queue order. Default [`StreamOrder::PerFlow`].
    pub order: StreamOrder,
    /// Worker tasks that run handlers. Default 4 (1 under [`StreamOrder::Total`]).
    pub workers: usize,
    /// Events each inbox lane (urgent, normal) holds before `emit` waits. Default 1024.
    pub inbox_capacity: usize,
    /// Events each worker lane (urgent, normal) holds before the dispatcher waits.
    /// Default 64.
    pub worker_capacity: usize,
    /// A worker yields to the other tasks of its thread after this many events (0: only
    /// when tokio's cooperative budget runs out, after about 128). Lower values cut the
    /// latency of urgent events under load, at some throughput cost; see
    /// `benches/benches/events.rs`. Default 4.
    pub yield_every: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            order: StreamOrder::PerFlow,
            workers: 4,
            inbox_capacity: 1024,
            worker_capacity: 64,
            yield_every: 4,
        }
    }
}

/// A point-in-time view of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Worker tasks.
    pub workers: usize,
    /// Urgent events accepted and not yet taken by a worker (inbox and worker lanes).
    pub queued_urgent: u64,
    /// Normal events accepted and not yet taken by a worker.
    pub queued_normal: u64,
    /// Of `queued_urgent`, those already in a worker's lane.
    pub at_workers_urgent: u64,
    /// Of `queued_normal`, those already in a worker's lane.
    pub at_workers_normal: u64,
    /// Urgent events taken by a worker.
    pub dispatched_urgent: u64,
    /// Normal events taken by a worker.
    pub dispatched_normal: u64,
    /// Events dropped (full on `try_emit`, discarded at shutdown).
    pub dropped: u64,
    /// Handler (or filter predicate) invocations that panicked.
    pub handler_panics: u64,
    /// Subscriptions attached.
    pub subscribers: usize,
}

/// Why an event was dropped, the `reason` label of `foundation_events_dropped_total`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DropReason {
    /// `try_emit` found the lane full (the event went back to the caller).
    Full = 0,
    /// Queued when the service shut down, or emitted after.
    Shutdown = 1,
}

/// Per-lane counters: index 0 urgent, 1 normal.
struct Lane {
    dispatched: Counter,
    depth_gauge: Gauge,
    queued: AtomicU64,
    at_workers: AtomicU64,
    dispatched_n: AtomicU64,
}

impl Lane {
    fn new(t: &str, lane: &'static str) -> Self {
        Lane {
            dispatched: metrics::counter!("foundation_events_dispatched_total",
                "type" => t.to_string(), "lane" => lane),
            depth_gauge: metrics::gauge!("foundation_events_queue_depth",
                "type" => t.to_string(), "lane" => lane),
            queued: AtomicU64::new(0),
            at_workers: AtomicU64::new(0),
            dispatched_n: AtomicU64::new(0),
        }
    }
}

/// Pre-registered metric handles and counters of one stream.
pub(crate) struct StreamMetrics {
    pub(crate) emitted: Counter,
    lanes: [Lane; 2],
    dropped: [Counter; 2],
    dropped_n: AtomicU64,
    panics: Counter,
    panics_n: AtomicU64,
}

fn lane_index(p: Priority) -> usize {
    match p {
        Priority::Urgent => 0,
        Priority::Normal => 1,
    }
}

impl StreamMetrics {
    fn new(t: &str) -> Self {
        let dropped = |reason: &'static str| {
            metrics::counter!("foundation_events_dropped_total",
                "type" => t.to_string(), "reason" => reason)
        };
        StreamMetrics {
            emitted: metrics::counter!("foundation_events_emitted_total", "type" => t.to_string()),
            lanes: [Lane::new(t, "urgent"), Lane::new(t, "normal")],
            dropped: [dropped("full"), dropped("shutdown")],
            dropped_n: AtomicU64::new(0),
            panics: metrics::counter!("foundation_events_handler_panics_total", "type" => t.to_string()),
            panics_n: AtomicU64::new(0),
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped[reason as usize].increment(n);
            self.dropped_n.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// An event entered lane `p`.
    pub(crate) fn enqueued(&self, p: Priority) {
        let lane = &self.lanes[lane_index(p)];
        lane.queued.fetch_add(1, Ordering::Relaxed);
        lane.depth_gauge.increment(1.0);
    }

    /// A queued event left lane `p` without being dispatched (dropped).
    fn dequeued(&self, p: Priority) {
        let lane = &self.lanes[lane_index(p)];
        lane.queued.fetch_sub(1, Ordering::Relaxed);
        lane.depth_gauge.decrement(1.0);
    }
}

pub(crate) type Subscribers = ArcSwap<Vec<Arc<Subscriber>>>;

/// What emitters, the dispatcher and the workers of one stream share.
pub(crate) struct StreamShared {
    pub(crate) event_type: EventType,
    pub(crate) metrics: StreamMetrics,
    pub(crate) subscribers: Subscribers,
    workers: usize,
}

/// The emitting side of a stream, held by the `Events` service.
pub(crate) struct Stream {
    pub(crate) shared: Arc<StreamShared>,
    urgent: mpsc::Sender<Event>,
    normal: mpsc::Sender<Event>,
}

impl Stream {
    /// Creates the stream and spawns its dispatcher and workers on `runtime`; the tasks
    /// stop when `cancel` fires or the stream is dropped.
    pub(crate) fn spawn(
        event_type: EventType,
        settings: &StreamSettings,
        subscribers: Vec<Arc<Subscriber>>,
        runtime: &tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> (Stream, Vec<JoinHandle<()>>) {
        let workers = match settings.order {
            StreamOrder::Total => 1,
            _ => settings.workers.max(1),
        };
        let shared = Arc::new(StreamShared {
            metrics: StreamMetrics::new(event_type.as_str()),
            event_type,
            subscribers: ArcSwap::from_pointee(subscribers),
            workers,
        });
        let inbox = settings.inbox_capacity.max(1);
        let (urgent_tx, urgent_rx) = mpsc::channel(inbox);
        let (normal_tx, normal_rx) = mpsc::channel(inbox);
        let mut tasks = Vec::with_capacity(workers + 1);
        let mut lanes = Vec::with_capacity(workers);
        for index in 0..workers {
            let cap = settings.worker_capacity.max(1);
            let (u_tx, u_rx) = mpsc::channel(cap);
            let (n_tx, n_rx) = mpsc::channel(cap);
            lanes.push(WorkerLanes {
                urgent: u_tx,
                normal: n_tx,
            });
            let worker = Worker {
                shared: shared.clone(),
                yield_every: settings.yield_every,
                urgent: u_rx,
                normal: n_rx,
                cancel: cancel.clone(),
            };
            let span =
                tracing::debug_span!("events_worker", event_type = %shared.event_type, index);
            tasks.push(runtime.spawn(worker.run().instrument(span)));
        }
        let dispatcher = Dispatcher {
            shared: shared.clone(),
            urgent: urgent_rx,
            normal: normal_rx,
            workers: lanes,
            order: settings.order,
            next: AtomicU64::new(0),
            parked: None,
            cancel,
        };
        let span = tracing::debug_span!("events_dispatcher", event_type = %shared.event_type);
        tasks.insert(0, runtime.spawn(dispatcher.run().instrument(span)));
        let stream = Stream {
            shared,
            urgent: urgent_tx,
            normal: normal_tx,
        };
        (stream, tasks)
    }

    fn lane(&self, p: Priority) -> &mpsc::Sender<Event> {
        match p {
            Priority::Urgent => &self.urgent,
            Priority::Normal => &self.normal,
        }
    }

    /// Waits for room in the event's lane; `Err` when the stream has stopped.
    pub(crate) async fn reserve(&self, p: Priority) -> Result<mpsc::Permit<'_, Event>, ()> {
        self.lane(p).reserve().await.map_err(|_| ())
    }

    /// Room in the event's lane now, or the reason there is none.
    pub(crate) fn try_reserve(&self, p: Priority) -> Result<mpsc::Permit<'_, Event>, bool> {
        self.lane(p).try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => true,
            mpsc::error::TrySendError::Closed(()) => false,
        })
    }

    pub(crate) fn stats(&self) -> StreamStats {
        let m = &self.shared.metrics;
        let l = |i: usize| &m.lanes[i];
        StreamStats {
            workers: self.shared.workers,
            queued_urgent: l(0).queued.load(Ordering::Relaxed),
            queued_normal: l(1).queued.load(Ordering::Relaxed),
            at_workers_urgent: l(0).at_workers.load(Ordering::Relaxed),
            at_workers_normal: l(1).at_workers.load(Ordering::Relaxed),
            dispatched_urgent: l(0).dispatched_n.load(Ordering::Relaxed),
            dispatched_normal: l(1).dispatched_n.load(Ordering::Relaxed),
            dropped: m.dropped_n.load(Ordering::Relaxed),
            handler_panics: m.panics_n.load(Ordering::Relaxed),
            subscribers: self.shared.subscribers.load().len(),
        }
    }
}

struct WorkerLanes {
    urgent: mpsc::Sender<Event>,
    normal: mpsc::Sender<Event>,
}

struct Dispatcher {
    shared: Arc<StreamShared>,
    urgent: mpsc::Receiver<Event>,
    normal: mpsc::Receiver<Event>,
    workers: Vec<WorkerLanes>,
    order: StreamOrder,
    /// Next worker under [`StreamOrder::Unordered`] (an atomic only so that `worker_for`
    /// can take `&self` inside `select!` arms).
    next: AtomicU64,
    /// A normal event waiting for room in its worker's full normal lane.
    parked: Option<(usize, Event)>,
    cancel: CancellationToken,
}

impl Dispatcher {
    /// The worker for an event. Under `PerFlow` all events of one flow go to the same
    /// worker, which is what keeps them in order.
    fn worker_for(&self, e: &Event) -> usize {
        let n = self.workers.len();
        if n == 1 {
            return 0;
        }
        match self.order {
            StreamOrder::PerFlow | StreamOrder::Total => {
                let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(e.correlation_id);
                (h % n as u64) as usize
            }
            StreamOrder::Unordered => {
                (self.next.fetch_add(1, Ordering::Relaxed) % n as u64) as usize
            }
        }
    }

    fn at_worker(&self, p: Priority) {
        self.shared.metrics.lanes[lane_index(p)]
            .at_workers
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn run(mut self) {
        loop {
            let parked_worker = self.parked.as_ref().map(|(w, _)| *w);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                Some(e) = self.urgent.recv() => {
                    let w = self.worker_for(&e);
                    self.at_worker(Priority::Urgent);
                    // Ordering: awaiting here keeps urgent events in order; a full urgent
                    // lane is backpressure on urgent emitters only.
                    let permit = tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => None,
                        r = self.workers[w].urgent.reserve() => r.ok(),
                    };
                    match permit {
                        Some(permit) => permit.send(e),
                        None => {
                            self.lost(Priority::Urgent, e);
                            break;
                        }
                    }
                }
                permit = reserve_normal(&self.workers, parked_worker), if parked_worker.is_some() => {
                    let (_, e) = self.parked.take().expect("parked event");
                    match permit {
                        Ok(permit) => permit.send(e),
                        Err(()) => {
                            self.lost(Priority::Normal, e);
                            break;
                        }
                    }
                }
                Some(e) = self.normal.recv(), if parked_worker.is_none() => {
                    let w = self.worker_for(&e);
                    self.at_worker(Priority::Normal);
                    match self.workers[w].normal.try_send(e) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(e)) => self.parked = Some((w, e)),
                        Err(mpsc::error::TrySendError::Closed(e)) => {
                            self.lost(Priority::Normal, e);
                            break;
                        }
                    }
                }
                else => break,
            }
        }
        // Dropping `self` discards and counts what is left (see `Drop`).
    }

    /// An event that had reached the worker stage but could not be handed over.
    fn lost(&self, p: Priority, e: Event) {
        self.shared.metrics.lanes[lane_index(p)]
            .at_workers
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.dequeued(p);
        self.shared.metrics.dropped(DropReason::Shutdown, 1);
        drop(e);
    }
}

impl Drop for Dispatcher {
    /// Runs when the task ends or is aborted: everything still queued is dropped and
    /// counted.
    fn drop(&mut self) {
        if let Some((_, e)) = self.parked.take() {
            self.lost(Priority::Normal, e);
        }
        self.urgent.close();
        self.normal.close();
        let m = &self.shared.metrics;
        for (p, rx) in [
            (Priority::Urgent, &mut self.urgent),
            (Priority::Normal, &mut self.normal),
        ] {
            while rx.try_recv().is_ok() {
                m.dequeued(p);
                m.dropped(DropReason::Shutdown, 1);
            }
        }
    }
}

async fn reserve_normal(
    workers: &[WorkerLanes],
    w: Option<usize>,
) -> Result<mpsc::Permit<'_, Event>, ()> {
    match w {
        Some(w) => workers[w].normal.reserve().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

struct Worker {
    shared: Arc<StreamShared>,
    yield_every: u32,
    urgent: mpsc::Receiver<Event>,
    normal: mpsc::Receiver<Event>,
    cancel: CancellationToken,
}

impl Worker {
    async fn run(mut self) {
        let mut handled = 0u32;
        loop {
            let (p, e) = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                Some(e) = self.urgent.recv() => (Priority::Urgent, e),
                Some(e) = self.normal.recv() => (Priority::Normal, e),
                else => break,
            };
            let m = &self.shared.metrics;
            let lane = &m.lanes[lane_index(p)];
            lane.at_workers.fetch_sub(1, Ordering::Relaxed);
            lane.queued.fetch_sub(1, Ordering::Relaxed);
            lane.depth_gauge.decrement(1.0);
            lane.dispatched.increment(1);
            lane.dispatched_n.fetch_add(1, Ordering::Relaxed);
            let subscribers = self.shared.subscribers.load();
            for s in subscribers.iter() {
                // No handler starts once shutdown began; the running one may finish.
                if self.cancel.is_cancelled() {
                    break;
                }
                if let Delivery::Panicked = s.deliver(&e).await {
                    m.panics.increment(1);
                    m.panics_n.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event_type = %self.shared.event_type, subscription = s.id,
                        event = %e.id, "event handler panicked");
                }
            }
            handled = handled.wrapping_add(1);
            if self.yield_every != 0 && handled.is_multiple_of(self.yield_every) {
                // A busy worker would otherwise keep its thread for tokio's whole
                // cooperative budget (128 receives), delaying the dispatcher — and the
                // urgent events it forwards — by that many handler runs.
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for Worker {
    /// Runs when the task ends or is aborted: events left in the worker's lanes are
    /// dropped and counted.
    fn drop(&mut self) {
        self.urgent.close();
        self.normal.close();
        let m = &self.shared.metrics;
        for (p, rx) in [
            (Priority::Urgent, &mut self.urgent),
            (Priority::Normal, &mut self.normal),
        ] {
            while rx.try_recv().is_ok() {
                m.lanes[lane_index(p)]
                    .at_workers
                    .fetch_sub(1, Ordering::Relaxed);
                m.dequeued(p);
                m.dropped(DropReason::Shutdown, 1);
            }
        }
    }
}
