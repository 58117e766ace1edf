//! Subscriptions: filters, handlers and the handle that detaches them.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio::sync::Notify;

use super::event::{CorrelationId, Event, EventType};

type Predicate = Arc<dyn Fn(&Event) -> bool + Send + Sync>;
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Event) -> BoxFuture + Send + Sync>;

/// Which events a subscription receives. Conditions combine with AND; several types
/// combine with OR (an event of any of them passes).
///
/// ```
/// use foundation_core::events::{CorrelationId, Event, Filter};
///
/// let flow = CorrelationId::new();
/// let f = Filter::of_type("user")
///     .or_type("system")
///     .correlated(flow)
///     .when(|e| e.payload::<u32>().is_ok_and(|n| n > 10));
/// assert!(f.matches(&Event::new("system", &11u32)?.correlated(flow)));
/// assert!(!f.matches(&Event::new("system", &9u32)?.correlated(flow)));
/// assert!(!f.matches(&Event::new("error", &11u32)?.correlated(flow)));
/// assert!(!f.matches(&Event::new("user", &11u32)?));
/// # Ok::<(), foundation_core::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Filter {
    pub(crate) types: Vec<String>,
    correlation: Option<CorrelationId>,
    predicates: Vec<Predicate>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("types", &self.types)
            .field("correlation", &self.correlation)
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

impl Filter {
    /// Every event of every type, including types created later.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Events of type `event_type`. An invalid name makes `subscribe` fail.
    pub fn of_type(event_type: &str) -> Self {
        Filter::all().or_type(event_type)
    }

    /// Also events of type `event_type`.
    pub fn or_type(mut self, event_type: &str) -> Self {
        if !self.types.iter().any(|t| t == event_type) {
            self.types.push(event_type.to_string());
        }
        self
    }

    /// Only events of the flow `id`.
    pub fn correlated(mut self, id: CorrelationId) -> Self {
        self.correlation = Some(id);
        self
    }

    /// Only events for which `predicate` returns true. It runs on a stream worker for
    /// every event that passed the other conditions: keep it cheap and non-blocking. A
    /// panicking predicate counts as a handler panic and rejects the event.
    pub fn when(mut self, predicate: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.predicates.push(Arc::new(predicate));
        self
    }

    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event.event_type.as_str()))
            && self.correlation.is_none_or(|c| c == event.correlation_id)
            && self.predicates.iter().all(|p| p(event))
    }

    pub(crate) fn event_types(&self) -> crate::Result<Vec<EventType>> {
        self.types.iter().map(|t| EventType::new(t)).collect()
    }
}

/// What the streams keep of a subscription.
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) filter: Filter,
    handler: Handler,
    active: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// The outcome of offering an event to a subscriber.
pub(crate) enum Delivery {
    Skipped,
    Handled,
    Panicked,
}

impl Subscriber {
    pub(crate) fn new(id: u64, filter: Filter, handler: Handler) -> Self {
        Subscriber {
            id,
            filter,
            handler,
            active: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Runs the handler for `event` if the subscriber is active and its filter passes.
    pub(crate) async fn deliver(&self, event: &Event) -> Delivery {
        // Ordering: in_flight is raised before `active` is read, and `detach` clears
        // `active` before reading in_flight (both SeqCst), so either this call sees the
        // subscriber inactive or `detach` sees the call in flight and waits for it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let outcome = if !self.active.load(Ordering::SeqCst) {
            Delivery::Skipped
        } else {
            match catch_unwind(AssertUnwindSafe(|| self.filter.matches(event))) {
                Err(_) => Delivery::Panicked,
                Ok(false) => Delivery::Skipped,
                Ok(true) => {
                    match catch_unwind(AssertUnwindSafe(|| (self.handler)(event.clone()))) {
                        Err(_) => Delivery::Panicked,
                        Ok(fut) => match (CatchUnwind { fut }).await {
                            Ok(()) => Delivery::Handled,
                            Err(()) => Delivery::Panicked,
                        },
                    }
                }
            }
        };
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
        outcome
    }

    /// Stops further invocations; invocations already running are not interrupted.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::SeqCst);
    }

    /// Waits until no invocation is running (call after `deactivate`).
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Polls a handler's future, turning a panic into `Err(())`.
struct CatchUnwind {
    fut: BoxFuture,
}

impl Future for CatchUnwind {
    type Output = Result<(), ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.fut;
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Removes a subscriber from the streams it is attached to.
pub(crate) trait Detach: Send + Sync {
    fn detach(&self, subscriber: &Arc<Subscriber>);
}

/// A live subscription. Dropping it (or calling [`unsubscribe`](Self::unsubscribe))
/// detaches the handler.
///
/// After `drop` returns the handler is not started again; an invocation already running
/// on a worker finishes (use [`unsubscribe`](Self::unsubscribe) to wait for it). Dropping
/// it after the `Events` service is gone, or outside a runtime, is fine.
pub struct Subscription {
    subscriber: Arc<Subscriber>,
    owner: Weak<dyn Detach>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.subscriber.id)
            .field("filter", &self.subscriber.filter)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(subscriber: Arc<Subscriber>, owner: Weak<dyn Detach>) -> Self {
        Subscription { subscriber, owner }
    }

    /// The subscription's id, unique within its `Events` service.
    pub fn id(&self) -> u64 {
        self.subscriber.id
    }

    /// Whether the handler can still be invoked.
    pub fn is_active(&self) -> bool {
        self.subscriber.active.load(Ordering::SeqCst)
    }

    /// Detaches the handler and waits until no invocation of it is running; after this
    /// returns it never runs again.
    pub async fn unsubscribe(self) {
        self.detach();
        self.subscriber.idle().await;
    }

    fn detach(&self) {
        self.subscriber.deactivate();
        if let Some(owner) = self.owner.upgrade() {
            owner.detach(&self.subscriber);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.detach();
    }
}

pub(crate) fn boxed_handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |e| Box::pin(f(e)) as BoxFuture)
}
