//! Ecosystems: a coordinator and N supervised workers, run and resized as one unit.
//!
//! The BEAM builds a service from a coordinator process and a pool of workers instead of
//! one big process. An [`Ecosystem`] is that: N worker processes (`Fixed(n)` or one per
//! core) supervised one-for-one by a coordinator task, each with the ecosystem's
//! [`MemoryStrategy`], and a [`Dispatch`] strategy that picks the worker for each message.
//!
//! Messages go from the caller straight into the chosen worker's mailbox (the coordinator
//! is not on the message path); the coordinator starts, restarts, adds and removes workers.
//! [`Ecosystem::resize`] down first takes workers out of dispatch, then lets them finish
//! what is queued before they stop — no queued work is lost — and a send that raced with
//! the resize is re-routed to a remaining worker.
//!
//! # What a call promises
//!
//! [`Ecosystem::call`] delivers its message **at most once**, to one worker:
//!
//! * **Before delivery** nothing is lost by moving the message, so a worker that is
//!   being restarted, or whose mailbox is closed, is passed over for the next running
//!   one (counted in `foundation_ecosystem_rerouted_total`). When no worker runs (all
//!   are being restarted) the call waits, within its timeout, for one to come back; if
//!   none does it fails with [`Error::Unavailable`] — the message was not delivered, so
//!   trying again is safe.
//! * **After delivery** the call is never retried for you: a worker that panics or is
//!   killed while handling the message makes the call fail with
//!   [`Error::Interrupted`] — the message may have been partly handled. (Messages
//!   *queued* for a worker that crashes on another message are kept: the restarted
//!   worker handles them.)
//! * When the coordinator has stopped (shut down, or it gave up because its restart
//!   [`Intensity`] was exceeded — it then stops every worker and restarts none), calls
//!   fail at once with [`Error::EcosystemDown`], which carries the reason.
//!
//! Every failed call is counted in `foundation_ecosystem_call_failures_total` by reason.
//!
//! ```
//! use std::time::Duration;
//! use foundation_beam::ecosystem::{Dispatch, Ecosystem, EcosystemSpec, Workers};
//! use foundation_beam::process::{Context, Process, Reply};
//!
//! struct Square;
//! impl Process for Square {
//!     type Message = (u64, Reply<u64>);
//!     async fn handle(&mut self, (n, reply): Self::Message, _: &mut Context<Self::Message>) {
//!         reply.send(n * n);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_beam::Result<()> {
//! let spec = EcosystemSpec::new("squares").workers(Workers::Fixed(4)).dispatch(Dispatch::RoundRobin);
//! let eco = Ecosystem::start(spec, |_worker| Square).await?;
//! assert_eq!(eco.call(|r| (7, r), Duration::from_secs(1)).await?, 49);
//! eco.resize(2).await?;
//! assert_eq!(eco.info().workers, 2);
//! eco.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::group::MetricsGroup;
use crate::mailbox::{Delivery, MemoryStrategy, SendError};
use crate::process::{self, ExitReason, Handle, Process, ProcessId, ProcessInfo, Reply};
use crate::supervisor::{Intensity, Restart, Strategy, Supervisor, SupervisorSpec};

/// How many workers an ecosystem runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workers {
    /// Exactly this many (at least 1).
    Fixed(usize),
    /// One per available core.
    PerCore,
}

impl Workers {
    fn count(self) -> usize {
        match self {
            Workers::Fixed(n) => n.max(1),
            Workers::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// How an ecosystem picks the worker for a message (its message strategy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Each worker in turn.
    #[default]
    RoundRobin,
    /// The less loaded of two workers (by backlog) — "power of two choices": close to the
    /// least loaded of all at O(1) cost per message.
    LeastLoaded,
    /// By hash of a key ([`Ecosystem::send_keyed`]): messages with equal keys go to the
    /// same worker, in order, while the worker count does not change.
    KeyHash,
}

/// Settings of an ecosystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EcosystemSpec {
    /// Name (labels metrics; workers are named `<name>.worker.<i>`).
    pub name: String,
    /// Worker count.
    pub workers: Workers,
    /// Each worker's mailbox settings.
    pub memory: MemoryStrategy,
    /// Worker choice.
    pub dispatch: Dispatch,
    /// Restart intensity of the coordinator: more restarts than this within its period
    /// and the coordinator gives up — it stops every worker and the ecosystem is down
    /// (see [`Ecosystem::down`]). Set it above the crash rate you expect to ride out.
    pub intensity: Intensity,
}

impl Default for EcosystemSpec {
    fn default() -> Self {
        EcosystemSpec {
            name: "ecosystem".into(),
            workers: Workers::PerCore,
            memory: MemoryStrategy::default(),
            dispatch: Dispatch::RoundRobin,
            intensity: Intensity::default(),
        }
    }
}

impl EcosystemSpec {
    /// Defaults with this name: one worker per core, round-robin, default memory strategy.
    pub fn new(name: impl Into<String>) -> Self {
        EcosystemSpec {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the worker count.
    pub fn workers(mut self, workers: Workers) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the workers' memory strategy.
    pub fn memory(mut self, memory: MemoryStrategy) -> Self {
        self.memory = memory;
        self
    }

    /// Sets the dispatch strategy.
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }
}

/// A snapshot of an ecosystem's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcosystemInfo {
    /// The ecosystem's name.
    pub name: String,
    /// Workers in dispatch.
    pub workers: usize,
    /// Workers running.
    pub alive: usize,
    /// Workers not running (being restarted).
    pub restarting: usize,
    /// Messages queued over all workers.
    pub backlog: usize,
    /// Bytes queued over all workers (with a byte budget; 0 otherwise).
    pub bytes_queued: usize,
    /// Worker restarts so far.
    pub restarts: u64,
}

/// Health derived from [`EcosystemInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every worker is running.
    Healthy,
    /// Some workers are restarting.
    Degraded {
        /// Running workers.
        alive: usize,
        /// Workers in dispatch.
        total: usize,
    },
    /// No worker is running.
    Down,
}

type Factory<P> = Arc<dyn Fn(usize) -> P + Send + Sync>;

/// A running ecosystem. Cheap to share behind an `Arc`; see [`shutdown`](Self::shutdown).
///
/// Dropping it does not stop the workers (they keep serving handles obtained from it);
/// call [`shutdown`](Self::shutdown) to stop them.
pub struct Ecosystem<P: Process> {
    spec: EcosystemSpec,
    workers: ArcSwap<Vec<Handle<P::Message>>>,
    next: AtomicUsize,
    hasher: foldhash::fast::FixedState,
    coordinator: Supervisor,
    factory: Factory<P>,
    resize: tokio::sync::Mutex<()>,
    /// Woken when the worker list changes (a resize).
    resized: Notify,
    rerouted: Counter,
}

impl<P: Process> std::fmt::Debug for Ecosystem<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecosystem")
            .field("info", &self.info())
            .finish()
    }
}

fn worker_name(eco: &str, i: usize) -> String {
    format!("{eco}.worker.{i}")
}

impl<P: Process> Ecosystem<P> {
    /// Starts the coordinator and the workers (`factory(i)` makes worker `i`, and is called
    /// again when it is restarted), and waits until all are running: every worker's
    /// task has started and its [`Process::started`] hook has returned (a worker that
    /// stops while starting is restarted by the coordinator as usual; `start` then does
    /// not wait for it further). Messages sent before a worker runs wait in its mailbox.
    pub async fn start(
        spec: EcosystemSpec,
        factory: impl Fn(usize) -> P + Send + Sync + 'static,
    ) -> Result<Self> {
        let factory: Factory<P> = Arc::new(factory);
        let n = spec.workers.count();
        let mut sup =
            SupervisorSpec::new(format!("{}.coordinator", spec.name), Strategy::OneForOne)
                .intensity(spec.intensity)
                .metrics_group(&MetricsGroup::new(spec.name.as_str()));
        let workers: Vec<Handle<P::Message>> = (0..n)
            .map(|i| {
                let f = factory.clone();
                sup.child(
                    worker_name(&spec.name, i),
                    Restart::Permanent,
                    spec.memory.clone(),
                    move || f(i),
                )
            })
            .collect();
        let coordinator = sup.start();
        for w in &workers {
            w.life().wait_started().await;
        }
        Ok(Ecosystem {
            workers: ArcSwap::from_pointee(workers),
            next: AtomicUsize::new(0),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            rerouted: metrics::counter!("foundation_ecosystem_rerouted_total", "ecosystem" => spec.name.clone()),
            spec,
            coordinator,
            factory,
            resize: tokio::sync::Mutex::new(()),
            resized: Notify::new(),
        })
    }

    /// The ecosystem's settings.
    pub fn spec(&self) -> &EcosystemSpec {
        &self.spec
    }

    fn pick(&self, workers: &[Handle<P::Message>], key: Option<u64>) -> usize {
        let n = workers.len();
        match (self.spec.dispatch, key) {
            (_, Some(h)) => (h % n as u64) as usize,
            (Dispatch::LeastLoaded, None) if n > 1 => {
                let a = self.next.fetch_add(1, Ordering::Relaxed);
                let i = a % n;
                // A second candidate spread by a multiplicative hash of the counter.
                let j = (a.wrapping_mul(0x9E37_79B9) >> 7) % n;
                if workers[j].backlog() < workers[i].backlog() {
                    j
                } else {
                    i
                }
            }
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// From `i` on, the first worker that runs with an open mailbox (`i` itself when
    /// none does). Counts a re-route when it is not `i`.
    fn running_from(&self, workers: &[Handle<P::Message>], i: usize) -> usize {
        let n = workers.len();
        let found = (0..n)
            .map(|k| (i + k) % n)
            .find(|&j| accepts(&workers[j]))
            .unwrap_or(i);
        if found != i {
            self.rerouted.increment(1);
        }
        found
    }

    async fn route(
        &self,
        mut msg: P::Message,
        key: Option<u64>,
        urgent: bool,
    ) -> Result<Delivery, SendError<P::Message>> {
        // A worker taken out by a concurrent resize refuses the message; try the next.
        for _ in 0..4 {
            let workers = self.workers.load();
            let mut i = self.pick(&workers, key);
            if key.is_none() {
                // Unkeyed: a worker being restarted is passed over while another runs
                // (its mailbox would keep the message, but it waits for the restart).
                i = self.running_from(&workers, i);
            }
            let w = &workers[i];
            let r = if urgent {
                w.send_urgent(msg).await
            } else {
                w.send(msg).await
            };
            match r {
                Err(SendError::Closed(m)) => msg = m,
                other => return other,
            }
        }
        Err(SendError::Closed(msg))
    }

    /// Sends `msg` to the worker the dispatch strategy picks (waits for room under
    /// backpressure).
    pub async fn send(&self, msg: P::Message) -> Result<Delivery, SendError<P::Message>> {
        self.route(msg, None, false).await
    }

    /// Sends `msg` through the picked worker's urgent lane.
    pub async fn send_urgent(&self, msg: P::Message) -> Result<Delivery, SendError<P::Message>> {
        self.route(msg, None, true).await
    }

    /// Sends `msg` to the worker for `key` (equal keys, same worker, in order).
    pub async fn send_keyed<K: Hash + ?Sized>(
        &self,
        key: &K,
        msg: P::Message,
    ) -> Result<Delivery, SendError<P::Message>> {
        self.route(msg, Some(self.hasher.hash_one(key)), false)
            .await
    }

    /// Request/reply with a worker: builds the message around a [`Reply`] with `make`,
    /// delivers it to the worker the dispatch strategy picks — or, when that one is being
    /// restarted, its mailbox is closed or full, to the next running one — and waits for
    /// the answer. `timeout` bounds the whole call, including waiting for a worker to
    /// come back when none runs. See the [module docs](self#what-a-call-promises).
    ///
    /// Errors: [`Error::Unavailable`] (no worker ran within `timeout`; not delivered),
    /// [`Error::EcosystemDown`] (the coordinator has stopped; not delivered),
    /// [`Error::Interrupted`] (the worker panicked or was killed while handling the
    /// message: delivered, maybe partly handled, not retried), [`Error::Timeout`] (no
    /// answer in time, or no room in time in a full backpressured mailbox),
    /// [`Error::NoReply`] (the worker dropped the `Reply`), [`Error::MailboxFull`] (every
    /// running worker's mailbox refused it under `Reject`, or `DropNewest` dropped it).
    pub async fn call<R>(
        &self,
        make: impl FnOnce(Reply<R>) -> P::Message,
        timeout: Duration,
    ) -> Result<R> {
        let deadline = Instant::now().checked_add(timeout);
        let (reply, rx) = Reply::channel();
        let result = match self.deliver(make(reply), deadline, timeout).await {
            Ok(worker) => process::wait_reply(rx, deadline, worker, timeout).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            metrics::counter!(
                "foundation_ecosystem_call_failures_total",
                "ecosystem" => self.spec.name.clone(),
                "reason" => failure_label(e),
            )
            .increment(1);
        }
        result
    }

    /// Puts `msg` into the mailbox of a running worker (the picked one first); returns
    /// that worker. Until it returns `Ok`, the message was delivered nowhere.
    async fn deliver(
        &self,
        mut msg: P::Message,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<ProcessId> {
        loop {
            let workers = self.workers.load_full();
            let n = workers.len();
            let first = self.pick(&workers, None);
            let mut passed_over = false;
            let mut wait_for_room = None;
            let mut refused = None;
            for k in 0..n {
                let w = &workers[(first + k) % n];
                if !w.life().is_running() {
                    passed_over = true;
                    continue;
                }
                match w.sender().push_now(msg, false) {
                    Ok(Ok(Delivery::DroppedNewest)) => {
                        return Err(Error::MailboxFull { process: w.id() })
                    }
                    Ok(Ok(_)) => {
                        if passed_over {
                            self.rerouted.increment(1);
                        }
                        return Ok(w.id());
                    }
                    Ok(Err(SendError::Closed(m))) => {
                        msg = m;
                        passed_over = true;
                    }
                    Ok(Err(SendError::Full(m))) => {
                        msg = m;
                        refused.get_or_insert(w.id());
                    }
                    // Full under backpressure: wait for room there if no one else has it.
                    Err(m) => {
                        msg = m;
                        wait_for_room.get_or_insert(w.clone());
                    }
                }
            }
            if let Some(w) = wait_for_room {
                let wait = w.sender().wait_for_room(msg, false);
                let sent = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, wait).await {
                        Ok(sent) => sent,
                        // Never queued: the wait is cancel-safe.
                        Err(_) => {
                            return Err(Error::Timeout {
                                process: w.id(),
                                after: timeout,
                            })
                        }
                    },
                    None => wait.await,
                };
                match sent {
                    Ok(Delivery::DroppedNewest) => {
                        return Err(Error::MailboxFull { process: w.id() })
                    }
                    Ok(_) => return Ok(w.id()),
                    // It closed (or refused) meanwhile: the message is back; pick again.
                    Err(SendError::Closed(m) | SendError::Full(m)) => msg = m,
                }
                continue;
            }
            if let Some(process) = refused {
                return Err(Error::MailboxFull { process });
            }
            self.wait_for_worker(&workers, deadline, timeout).await?;
        }
    }

    /// Waits until a worker of `workers` runs with an open mailbox, the worker list
    /// changes, the coordinator stops ([`Error::EcosystemDown`]) or the deadline passes
    /// ([`Error::Unavailable`]).
    async fn wait_for_worker(
        &self,
        workers: &[Handle<P::Message>],
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<()> {
        let mut down = self.coordinator.monitor();
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            // Register for every change before looking, so none is missed in between.
            let resized = self.resized.notified();
            tokio::pin!(resized);
            resized.as_mut().enable();
            let mut changes: Vec<_> = workers
                .iter()
                .map(|w| {
                    let mut n = Box::pin(w.life().changed().notified());
                    n.as_mut().enable();
                    n
                })
                .collect();
            if let Some(reason) = self.coordinator.exit_reason() {
                return Err(self.down_error(reason));
            }
            if workers.iter().any(accepts) {
                return Ok(());
            }
            tokio::select! {
                _ = futures_util::future::select_all(changes.iter_mut()) => {}
                _ = &mut resized => return Ok(()),
                reason = down.wait() => return Err(self.down_error(reason)),
                _ = &mut expired => {
                    return Err(Error::Unavailable {
                        ecosystem: self.spec.name.clone(),
                        waited: timeout,
                    })
                }
            }
        }
    }

    fn down_error(&self, reason: ExitReason) -> Error {
        Error::EcosystemDown {
            ecosystem: self.spec.name.clone(),
            reason,
        }
    }

    /// Why the ecosystem no longer serves, if it does not: its coordinator was shut
    /// down ([`ExitReason::Shutdown`]) or gave up after its restart intensity was
    /// exceeded ([`ExitReason::Failed`], saying which limit). No worker runs again.
    pub fn down(&self) -> Option<ExitReason> {
        self.coordinator.exit_reason()
    }

    /// Each worker's own numbers (backlog, drops, state), read now, in worker order:
    /// the per-process view an observer shows. Metrics carry only the ecosystem's
    /// aggregates (its metrics group, see [`crate::group`]).
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.workers.load().iter().map(Handle::info).collect()
    }

    /// The workers' handles, in worker order.
    pub fn workers(&self) -> Vec<Handle<P::Message>> {
        self.workers.load().to_vec()
    }

    /// Current state.
    pub fn info(&self) -> EcosystemInfo {
        let workers = self.workers.load();
        let alive = workers.iter().filter(|w| w.is_alive()).count();
        EcosystemInfo {
            name: self.spec.name.clone(),
            workers: workers.len(),
            alive,
            restarting: workers.len() - alive,
            backlog: workers.iter().map(Handle::backlog).sum(),
            bytes_queued: workers.iter().map(|w| w.sender().bytes_queued()).sum(),
            restarts: self.coordinator.restarts(),
        }
    }

    /// Health from [`info`](Self::info).
    pub fn health(&self) -> Health {
        let info = self.info();
        match info.alive {
            0 => Health::Down,
            a if a == info.workers => Health::Healthy,
            a => Health::Degraded {
                alive: a,
                total: info.workers,
            },
        }
    }

    /// Changes the number of workers. Growing starts new workers; shrinking takes the
    /// last workers out of dispatch, lets each handle what is queued (killing it after
    /// `grace` of 30 s), then stops it. Resizes are serialized.
    pub async fn resize(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "an ecosystem needs at least one worker".into(),
            ));
        }
        let _one_at_a_time = self.resize.lock().await;
        let current = self.workers.load_full();
        let cur = current.len();
        if n > cur {
            let mut next = current.to_vec();
            for i in cur..n {
                let f = self.factory.clone();
                let h = self
                    .coordinator
                    .add_child(
                        worker_name(&self.spec.name, i),
                        Restart::Permanent,
                        self.spec.memory.clone(),
                        move || f(i),
                    )
                    .await?;
                next.push(h);
            }
            self.workers.store(Arc::new(next));
            self.resized.notify_waiters();
        } else if n < cur {
            self.workers.store(Arc::new(current[..n].to_vec()));
            self.resized.notify_waiters();
            for i in (n..cur).rev() {
                self.coordinator
                    .remove_child(&worker_name(&self.spec.name, i), Duration::from_secs(30))
                    .await;
            }
        }
        Ok(())
    }

    /// Stops the workers and the coordinator within one deadline, `grace` from now: all
    /// workers are asked at once and drain their queues in parallel; those still running
    /// at the deadline are killed. (Workers are independent, so OTP's one-by-one ordered
    /// shutdown — up to workers × grace — does not apply; see
    /// [`Supervisor::shutdown_together`](crate::supervisor::Supervisor::shutdown_together).)
    pub async fn shutdown(&self, grace: Duration) {
        self.coordinator.shutdown_together(grace).await;
    }
}

/// Whether a worker takes messages now: it runs (not being restarted) and its mailbox
/// is open.
fn accepts<M: Send + 'static>(w: &Handle<M>) -> bool {
    w.life().is_running() && !w.sender().is_closed()
}

fn failure_label(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "timeout",
        Error::Unavailable { .. } => "unavailable",
        Error::EcosystemDown { .. } => "down",
        Error::Interrupted { .. } => "interrupted",
        Error::NoReply { .. } => "no_reply",
        Error::MailboxFull { .. } => "mailbox_full",
        _ => "other",
    }
}

/// Describes the ecosystem metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_ecosystem_rerouted_total",
        "Messages and calls sent to another worker than the one dispatch picked, because that one was being restarted or its mailbox was closed (never after delivery)."
    );
    metrics::describe_counter!(
        "foundation_ecosystem_call_failures_total",
        "Failed Ecosystem::call by reason: unavailable (no worker ran within the timeout; not delivered), down (coordinator stopped; not delivered), interrupted (worker stopped while handling it), timeout, no_reply, mailbox_full."
    );
}
