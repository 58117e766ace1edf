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
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::group::MetricsGroup;
use crate::mailbox::{Delivery, MemoryStrategy, SendError};
use crate::process::{Handle, Process, ProcessInfo, Reply};
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
    /// Restart intensity of the coordinator.
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
            spec,
            workers: ArcSwap::from_pointee(workers),
            next: AtomicUsize::new(0),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            coordinator,
            factory,
            resize: tokio::sync::Mutex::new(()),
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

    async fn route(
        &self,
        mut msg: P::Message,
        key: Option<u64>,
        urgent: bool,
    ) -> Result<Delivery, SendError<P::Message>> {
        // A worker taken out by a concurrent resize refuses the message; try the next.
        for _ in 0..4 {
            let workers = self.workers.load();
            let w = &workers[self.pick(&workers, key)];
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

    /// Request/reply with the picked worker.
    pub async fn call<R>(
        &self,
        make: impl FnOnce(Reply<R>) -> P::Message,
        timeout: Duration,
    ) -> Result<R> {
        let worker = {
            let workers = self.workers.load();
            workers[self.pick(&workers, None)].clone()
        };
        worker.call(make, timeout).await
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
        } else if n < cur {
            self.workers.store(Arc::new(current[..n].to_vec()));
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
