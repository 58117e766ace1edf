//! Supervisors: restart failed processes by a strategy, within a restart intensity.
//!
//! A [`SupervisorSpec`] lists children (processes or other supervisors), each with a
//! [`Restart`] policy, and a [`Strategy`]:
//!
//! * **one-for-one** — only the failed child is restarted;
//! * **one-for-all** — every other child is stopped (last first), then all are started
//!   again in order;
//! * **rest-for-one** — the children started after the failed one are stopped, then it and
//!   they are started again.
//!
//! A restarted child keeps its mailbox: its [`Handle`] stays valid across restarts and the
//! messages queued for it wait for the next incarnation (only the message being handled
//! when it failed is lost). If more than [`Intensity::max_restarts`] restarts happen within
//! [`Intensity::period`], the supervisor stops all children and exits with
//! [`ExitReason::Failed`] — *escalating* to its own supervisor, which applies its strategy
//! in turn.
//!
//! ```
//! use std::time::Duration;
//! use foundation_beam::process::{Context, Process, Reply};
//! use foundation_beam::supervisor::{Restart, Strategy, SupervisorSpec};
//!
//! struct Fragile;
//! impl Process for Fragile {
//!     type Message = (u32, Reply<u32>);
//!     async fn handle(&mut self, (n, reply): (u32, Reply<u32>), _: &mut Context<Self::Message>) {
//!         if n == 0 { panic!("zero") }
//!         reply.send(100 / n);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut spec = SupervisorSpec::new("root", Strategy::OneForOne);
//! let worker = spec.child("fragile", Restart::Permanent, Default::default(), || Fragile);
//! let sup = spec.start();
//! let t = Duration::from_secs(1);
//! assert!(worker.call(|r| (0, r), t).await.is_err()); // it panics...
//! assert_eq!(worker.call(|r| (4, r), t).await.unwrap(), 25); // ...and is restarted
//! assert_eq!(sup.restarts(), 1);
//! sup.shutdown(t).await;
//! # }
//! ```

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use foundation_core::telemetry::TaskGuard;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use metrics::Counter;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::group::MetricsGroup;
use crate::mailbox::{self, MemoryStrategy, Receiver, Sender};
use crate::process::{self, panic_message, ExitReason, Handle, Life, Monitor, Process, ProcessId};

/// Which children a failure restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    #[default]
    OneForOne,
    /// All children.
    OneForAll,
    /// The failed child and those started after it.
    RestForOne,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always, whatever the exit reason.
    #[default]
    Permanent,
    /// Only after an abnormal exit.
    Transient,
    /// Never.
    Temporary,
}

impl Restart {
    fn should_restart(self, reason: &ExitReason) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => reason.is_abnormal(),
            Restart::Temporary => false,
        }
    }
}

/// Restart intensity: at most `max_restarts` restarts within `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intensity {
    /// Restarts allowed within `period`.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// A child of a supervisor, type-erased.
trait Child: Send {
    fn name(&self) -> &str;
    fn life(&self) -> &Arc<Life>;
    fn restart(&self) -> Restart;
    /// Starts a new incarnation; the future resolves with its exit reason.
    fn start(&mut self) -> BoxFuture<'static, ExitReason>;
    /// Closes the mailbox so the child stops after handling what is queued.
    fn close_gracefully(&self);
}

struct ProcessChild<P: Process, F> {
    restart: Restart,
    factory: F,
    /// Keeps the mailbox open while the supervisor lives.
    tx: Sender<P::Message>,
    /// The mailbox between incarnations.
    rx: Arc<Mutex<Option<Receiver<P::Message>>>>,
    life: Arc<Life>,
}

impl<P, F> Child for ProcessChild<P, F>
where
    P: Process,
    F: FnMut() -> P + Send + 'static,
{
    fn name(&self) -> &str {
        // The name lives once, in the life-cycle state (shared with the handles).
        self.life.name.as_deref().unwrap_or_default()
    }

    fn life(&self) -> &Arc<Life> {
        &self.life
    }

    fn restart(&self) -> Restart {
        self.restart
    }

    fn start(&mut self) -> BoxFuture<'static, ExitReason> {
        let Some(rx) = self.rx.lock().take() else {
            // Unreachable by construction: an incarnation returns the mailbox before its
            // exit is reported, and only one runs at a time.
            return futures_util::future::ready(ExitReason::Failed("mailbox still in use".into()))
                .boxed();
        };
        rx.reopen();
        self.life.revive();
        let process = match std::panic::catch_unwind(AssertUnwindSafe(&mut self.factory)) {
            Ok(p) => p,
            Err(payload) => {
                *self.rx.lock() = Some(rx);
                let reason = ExitReason::Panic(format!("factory: {}", panic_message(&*payload)));
                self.life.finish(reason.clone());
                return futures_util::future::ready(reason).boxed();
            }
        };
        rx.group().process_started();
        // As `spawn_incarnation`, but the task owns the process and its mailbox directly
        // (an inner future moved into an outer one would store them twice: an idle
        // child's task would be about 1.5x larger).
        let (life, slot) = (self.life.clone(), self.rx.clone());
        let (done_tx, done_rx) = oneshot::channel();
        let (mut process, mut rx) = (process, rx);
        tokio::spawn(async move {
            let _live = TaskGuard::new();
            let reason = process::run_in(&mut process, &mut rx, &life, true).await;
            process::drop_stopped(process, &reason);
            rx.group().process_exited(&reason);
            *slot.lock() = Some(rx);
            life.finish(reason.clone());
            let _ = done_tx.send(reason);
        });
        async move { done_rx.await.unwrap_or(ExitReason::Killed) }.boxed()
    }

    fn close_gracefully(&self) {
        self.tx.close_gracefully();
    }
}

/// Runs one incarnation of a child in its own task: when `run` ends, puts what it hands
/// back (the mailbox, or a supervisor's children) into `slot` for the next incarnation,
/// publishes the exit, and resolves the returned future with the reason — in that order,
/// so a restart always finds the slot filled.
fn spawn_incarnation<T: Send + 'static>(
    life: Arc<Life>,
    slot: Arc<Mutex<Option<T>>>,
    run: impl std::future::Future<Output = (ExitReason, T)> + Send + 'static,
) -> BoxFuture<'static, ExitReason> {
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let _live = TaskGuard::new();
        let (reason, back) = run.await;
        *slot.lock() = Some(back);
        life.finish(reason.clone());
        let _ = done_tx.send(reason);
    });
    async move { done_rx.await.unwrap_or(ExitReason::Killed) }.boxed()
}

/// A nested supervisor's children between its incarnations.
type ChildrenSlot = Arc<Mutex<Option<Vec<Box<dyn Child>>>>>;

/// A supervisor nested as a child.
struct SupervisorChild {
    name: String,
    restart: Restart,
    config: Arc<SupConfig>,
    children: ChildrenSlot,
    life: Arc<Life>,
    commands: Arc<Mutex<Option<mpsc::Sender<Command>>>>,
}

impl Child for SupervisorChild {
    fn name(&self) -> &str {
        &self.name
    }

    fn life(&self) -> &Arc<Life> {
        &self.life
    }

    fn restart(&self) -> Restart {
        self.restart
    }

    fn start(&mut self) -> BoxFuture<'static, ExitReason> {
        let Some(children) = self.children.lock().take() else {
            return futures_util::future::ready(ExitReason::Failed("children still in use".into()))
                .boxed();
        };
        self.life.revive();
        let (tx, rx) = mpsc::channel(16);
        *self.commands.lock() = Some(tx);
        let config = self.config.clone();
        let life = self.life.clone();
        spawn_incarnation(self.life.clone(), self.children.clone(), async move {
            supervise(config, children, rx, life).await
        })
    }

    fn close_gracefully(&self) {
        if let Some(tx) = self.commands.lock().clone() {
            let _ = tx.try_send(Command::Shutdown {
                plan: StopPlan::ordered(DEFAULT_GRACE),
                done: None,
            });
        }
    }
}

struct SupConfig {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    restarts: AtomicU64,
    metric: Counter,
    /// The metrics group of the process children (made on first use).
    group: OnceLock<MetricsGroup>,
}

/// What a supervisor is told by its handle.
enum Command {
    Children(oneshot::Sender<Vec<ChildInfo>>),
    Add(Box<dyn Child>, oneshot::Sender<usize>),
    /// Stops the child gracefully (drain, then kill after `grace`) and forgets it.
    Remove {
        name: String,
        grace: Duration,
        done: oneshot::Sender<bool>,
    },
    Shutdown {
        plan: StopPlan,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Grace per child when a supervisor stops its children on its own (it was stopped by
/// its own supervisor, or gave up).
const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How a supervisor stops its children.
#[derive(Debug, Clone, Copy)]
enum StopPlan {
    /// OTP's ordered shutdown: last-started first, each drains within `grace` (then is
    /// killed) before the next is asked; with `deadline`, no child waits past it.
    Ordered {
        grace: Duration,
        deadline: Option<Instant>,
    },
    /// All at once: every child drains in parallel until `deadline`, then those still
    /// running are killed.
    Together { deadline: Instant },
}

impl StopPlan {
    fn ordered(grace: Duration) -> Self {
        StopPlan::Ordered {
            grace,
            deadline: None,
        }
    }
}

/// `now + d`, saturating at a far-future instant instead of overflowing.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A child as a supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The child's name.
    pub name: String,
    /// Its process id (stable across restarts).
    pub id: ProcessId,
    /// Whether it is running.
    pub alive: bool,
    /// Why it last stopped, if it is not running.
    pub exit: Option<ExitReason>,
}

/// The description of a supervisor and its children; [`start`](Self::start) runs it.
pub struct SupervisorSpec {
    config: Arc<SupConfig>,
    children: Vec<Box<dyn Child>>,
}

impl std::fmt::Debug for SupervisorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSpec")
            .field("name", &self.config.name)
            .field("strategy", &self.config.strategy)
            .field(
                "children",
                &self
                    .children
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SupervisorSpec {
    /// A supervisor named `name` (labels its metrics) with `strategy` and the default
    /// intensity (3 restarts in 5 s).
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        SupervisorSpec {
            config: Arc::new(SupConfig::new(name.into(), strategy, Intensity::default())),
            children: Vec::new(),
        }
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        let c = &self.config;
        let mut config = SupConfig::new(c.name.clone(), c.strategy, intensity);
        config.group = c.group.clone();
        self.config = Arc::new(config);
        self
    }

    /// The metrics group of this supervisor's process children (see [`crate::group`]);
    /// by default a group named after the supervisor. Set it before adding children: the
    /// children added before keep the group they were given.
    pub fn metrics_group(mut self, group: &MetricsGroup) -> Self {
        let c = &self.config;
        let mut config = SupConfig::new(c.name.clone(), c.strategy, c.intensity);
        config.group = OnceLock::from(group.clone());
        self.config = Arc::new(config);
        self
    }

    /// Adds a process child, started by `factory` (called again for every restart), and
    /// returns its handle, valid across restarts.
    pub fn child<P, F>(
        &mut self,
        name: impl Into<String>,
        restart: Restart,
        memory: MemoryStrategy,
        factory: F,
    ) -> Handle<P::Message>
    where
        P: Process,
        F: FnMut() -> P + Send + 'static,
    {
        let (child, handle) =
            process_child(self.config.group(), name.into(), restart, memory, factory);
        self.children.push(child);
        handle
    }

    /// Adds a nested supervisor. Its failure (intensity exceeded) is a failure of this
    /// child, handled by this supervisor's strategy.
    pub fn supervisor(&mut self, restart: Restart, spec: SupervisorSpec) -> ProcessId {
        let life = Life::new(Some(Arc::from(spec.config.name.as_str())));
        let id = life.id;
        self.children.push(Box::new(SupervisorChild {
            name: spec.config.name.clone(),
            restart,
            config: spec.config,
            children: Arc::new(Mutex::new(Some(spec.children))),
            life,
            commands: Arc::new(Mutex::new(None)),
        }));
        id
    }

    /// Starts the supervisor and its children (in order). Needs a tokio runtime.
    pub fn start(self) -> Supervisor {
        let life = Life::new(Some(Arc::from(self.config.name.as_str())));
        let (tx, rx) = mpsc::channel(64);
        let config = self.config.clone();
        let l = life.clone();
        let children = self.children;
        tokio::spawn(async move {
            let (reason, _children) = supervise(config, children, rx, l.clone()).await;
            l.finish(reason);
        });
        Supervisor {
            config: self.config,
            life,
            commands: tx,
        }
    }
}

fn process_child<P, F>(
    group: &MetricsGroup,
    name: String,
    restart: Restart,
    memory: MemoryStrategy,
    factory: F,
) -> (Box<dyn Child>, Handle<P::Message>)
where
    P: Process,
    F: FnMut() -> P + Send + 'static,
{
    let (tx, rx) = mailbox::channel_in(group, &memory, None);
    let life = Life::new(Some(Arc::from(name)));
    let handle = Handle::from_parts(tx.clone(), life.clone());
    let child = ProcessChild {
        restart,
        factory,
        tx,
        rx: Arc::new(Mutex::new(Some(rx))),
        life,
    };
    (Box::new(child), handle)
}

impl SupConfig {
    fn new(name: String, strategy: Strategy, intensity: Intensity) -> Self {
        let metric =
            metrics::counter!("foundation_supervisor_restarts_total", "supervisor" => name.clone());
        SupConfig {
            name,
            strategy,
            intensity,
            restarts: AtomicU64::new(0),
            metric,
            group: OnceLock::new(),
        }
    }

    fn group(&self) -> &MetricsGroup {
        self.group
            .get_or_init(|| MetricsGroup::new(self.name.as_str()))
    }
}

/// Describes the supervisor metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_supervisor_restarts_total",
        "Child restarts made by a supervisor."
    );
    metrics::describe_counter!(
        "foundation_supervisor_escalations_total",
        "Times a supervisor gave up because its restart intensity was exceeded."
    );
}

/// A running supervisor.
///
/// Dropping it does not stop the supervisor; [`shutdown`](Self::shutdown) does (children
/// last-started first). It stops by itself when its restart intensity is exceeded.
pub struct Supervisor {
    config: Arc<SupConfig>,
    life: Arc<Life>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.config.name)
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl Supervisor {
    /// Restarts made so far.
    pub fn restarts(&self) -> u64 {
        self.config.restarts.load(Ordering::Relaxed)
    }

    /// A monitor of the supervisor's own exit (for example after an escalation).
    pub fn monitor(&self) -> Monitor {
        self.life.monitor()
    }

    /// Whether the supervisor is running.
    pub fn is_alive(&self) -> bool {
        self.life.exit_reason().is_none()
    }

    /// Why the supervisor stopped, if it has: [`ExitReason::Shutdown`] after a
    /// shutdown, [`ExitReason::Failed`] when it gave up because its restart intensity
    /// was exceeded.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.life.exit_reason()
    }

    /// The children and their state.
    pub async fn children(&self) -> Vec<ChildInfo> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Children(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Adds and starts a process child at run time.
    pub async fn add_child<P, F>(
        &self,
        name: impl Into<String>,
        restart: Restart,
        memory: MemoryStrategy,
        factory: F,
    ) -> crate::Result<Handle<P::Message>>
    where
        P: Process,
        F: FnMut() -> P + Send + 'static,
    {
        let (child, handle) =
            process_child(self.config.group(), name.into(), restart, memory, factory);
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Add(child, tx))
            .await
            .map_err(|_| crate::Error::Shutdown("supervisor"))?;
        rx.await.map_err(|_| crate::Error::Shutdown("supervisor"))?;
        Ok(handle)
    }

    /// Stops the child `name` gracefully — its mailbox closes, it handles what is queued,
    /// and is killed if that takes longer than `grace` — and removes it. Returns whether
    /// such a child existed.
    pub async fn remove_child(&self, name: &str, grace: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Remove {
            name: name.to_string(),
            grace,
            done: tx,
        };
        if self.commands.send(cmd).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stops every child, last-started first, each gracefully within `grace` (then
    /// killed), and then the supervisor: OTP's ordered shutdown. It can take up to
    /// `children × grace`; see [`shutdown_within`](Self::shutdown_within) for one overall
    /// deadline and [`shutdown_together`](Self::shutdown_together) for independent
    /// children.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown_with(StopPlan::ordered(grace)).await
    }

    /// Ordered shutdown (last-started first, each child drains before the next is asked)
    /// bounded by one overall deadline `within` from now: a child still draining at the
    /// deadline is killed, and so are the children not yet asked.
    pub async fn shutdown_within(&self, within: Duration) {
        self.shutdown_with(StopPlan::Ordered {
            grace: within,
            deadline: Some(deadline_after(within)),
        })
        .await
    }

    /// Stops every child at once: all drain what is queued in parallel, those still
    /// running `within` from now are killed, then the supervisor stops. For independent
    /// children (a worker pool) this bounds the whole shutdown by one deadline.
    pub async fn shutdown_together(&self, within: Duration) {
        self.shutdown_with(StopPlan::Together {
            deadline: deadline_after(within),
        })
        .await
    }

    async fn shutdown_with(&self, plan: StopPlan) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown {
                plan,
                done: Some(tx),
            })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let _ = self.life.monitor().wait().await;
    }
}

type Running = FuturesUnordered<BoxFuture<'static, (ProcessId, u64, ExitReason)>>;

/// A child and the generation of its current incarnation.
struct Slot {
    child: Box<dyn Child>,
    /// Bumped whenever the supervisor stops the child itself, so that its pending exit is
    /// recognised as expected rather than a failure.
    generation: u64,
}

struct State {
    config: Arc<SupConfig>,
    /// The children in start order. A removed child is taken out (and forgotten); its
    /// pending exit, identified by process id, then matches no slot and is ignored.
    children: Vec<Slot>,
    running: Running,
    recent: VecDeque<Instant>,
}

impl State {
    fn index_of(&self, id: ProcessId) -> Option<usize> {
        self.children.iter().position(|s| s.child.life().id == id)
    }

    fn start(&mut self, i: usize) {
        let slot = &mut self.children[i];
        let gen = slot.generation;
        let id = slot.child.life().id;
        let exit = slot.child.start();
        self.running
            .push(async move { (id, gen, exit.await) }.boxed());
    }

    /// Stops child `i` (drain within `grace`, then kill) and waits for it.
    async fn stop(&mut self, i: usize, grace: Duration) {
        self.children[i].generation += 1;
        let life = self.children[i].child.life().clone();
        if life.exit_reason().is_some() {
            return;
        }
        let mut monitor = life.monitor();
        self.children[i].child.close_gracefully();
        if tokio::time::timeout(grace, monitor.wait()).await.is_err() {
            life.kill(ExitReason::Shutdown);
            monitor.wait().await;
        }
    }

    /// Kills child `i` at once (for restarts of siblings) and waits for it.
    async fn kill(&mut self, i: usize) {
        self.children[i].generation += 1;
        let life = self.children[i].child.life().clone();
        if life.exit_reason().is_some() {
            return;
        }
        let mut monitor = life.monitor();
        life.kill(ExitReason::Shutdown);
        monitor.wait().await;
    }

    async fn stop_all(&mut self, plan: StopPlan) {
        match plan {
            StopPlan::Ordered { grace, deadline } => {
                for i in (0..self.children.len()).rev() {
                    let grace = match deadline {
                        Some(d) => grace.min(d.saturating_duration_since(Instant::now())),
                        None => grace,
                    };
                    self.stop(i, grace).await;
                }
            }
            StopPlan::Together { deadline } => {
                let mut monitors = Vec::with_capacity(self.children.len());
                for slot in &mut self.children {
                    slot.generation += 1;
                    let life = slot.child.life().clone();
                    if life.exit_reason().is_none() {
                        monitors.push((life.monitor(), life));
                        slot.child.close_gracefully();
                    }
                }
                let all = futures_util::future::join_all(monitors.iter_mut().map(|m| m.0.wait()));
                if tokio::time::timeout_at(deadline, all).await.is_err() {
                    for (_, life) in &monitors {
                        if life.exit_reason().is_none() {
                            life.kill(ExitReason::Shutdown);
                        }
                    }
                    futures_util::future::join_all(monitors.iter_mut().map(|m| m.0.wait())).await;
                }
            }
        }
    }

    /// Records a restart; false when the intensity is exceeded.
    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        let period = self.config.intensity.period;
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() as u32 <= self.config.intensity.max_restarts
    }

    fn restart(&mut self, i: usize) {
        self.config.restarts.fetch_add(1, Ordering::Relaxed);
        self.config.metric.increment(1);
        self.start(i);
    }
}

async fn supervise(
    config: Arc<SupConfig>,
    children: Vec<Box<dyn Child>>,
    mut commands: mpsc::Receiver<Command>,
    life: Arc<Life>,
) -> (ExitReason, Vec<Box<dyn Child>>) {
    let _live = TaskGuard::new();
    let n = children.len();
    let mut s = State {
        config,
        children: children
            .into_iter()
            .map(|child| Slot {
                child,
                generation: 0,
            })
            .collect(),
        running: FuturesUnordered::new(),
        recent: VecDeque::new(),
    };
    for i in 0..n {
        s.start(i);
    }
    let reason = loop {
        tokio::select! {
            biased;
            _ = life.killed() => {
                // Stopped by our own supervisor (or killed): stop the children first.
                s.stop_all(StopPlan::ordered(DEFAULT_GRACE)).await;
                break life.take_kill_reason();
            }
            cmd = commands.recv() => match cmd {
                None => {
                    // Every handle is gone: keep supervising until the children stop.
                    if s.running.is_empty() { break ExitReason::Normal }
                    let Some((id, gen, reason)) = s.running.next().await else { break ExitReason::Normal };
                    if let Some(r) = on_exit(&mut s, id, gen, reason).await { break r }
                }
                Some(Command::Children(reply)) => {
                    let info = s.children.iter().map(|slot| {
                        let c = &slot.child;
                        let exit = c.life().exit_reason();
                        ChildInfo { name: c.name().to_string(), id: c.life().id, alive: exit.is_none(), exit }
                    }).collect();
                    let _ = reply.send(info);
                }
                Some(Command::Add(child, reply)) => {
                    s.children.push(Slot { child, generation: 0 });
                    let i = s.children.len() - 1;
                    s.start(i);
                    let _ = reply.send(i);
                }
                Some(Command::Remove { name, grace, done }) => {
                    let found = s.children.iter().position(|slot| slot.child.name() == name);
                    if let Some(i) = found {
                        s.stop(i, grace).await;
                        // Forget it: its factory, mailbox and state go with it.
                        s.children.remove(i);
                    }
                    let _ = done.send(found.is_some());
                }
                Some(Command::Shutdown { plan, done }) => {
                    s.stop_all(plan).await;
                    if let Some(done) = done { let _ = done.send(()); }
                    break ExitReason::Shutdown;
                }
            },
            Some((id, gen, reason)) = s.running.next(), if !s.running.is_empty() => {
                if let Some(r) = on_exit(&mut s, id, gen, reason).await { break r }
            }
        }
    };
    let children = s.children.into_iter().map(|slot| slot.child).collect();
    (reason, children)
}

/// Handles a child's exit; returns the supervisor's own exit reason when it gives up.
async fn on_exit(s: &mut State, id: ProcessId, gen: u64, reason: ExitReason) -> Option<ExitReason> {
    let Some(i) = s.index_of(id) else {
        return None; // removed meanwhile
    };
    if gen != s.children[i].generation {
        return None; // stopped by us on purpose
    }
    let child = &s.children[i].child;
    if !child.restart().should_restart(&reason) {
        tracing::debug!(supervisor = %s.config.name, child = child.name(), %reason, "child stopped; not restarted");
        return None;
    }
    tracing::warn!(supervisor = %s.config.name, child = child.name(), %reason, "child failed; restarting");
    if !s.allow_restart() {
        tracing::error!(
            supervisor = %s.config.name, child = s.children[i].child.name(), %reason,
            max_restarts = s.config.intensity.max_restarts, period = ?s.config.intensity.period,
            "restart intensity exceeded: stopping every child and giving up"
        );
        let i = s.config.intensity;
        metrics::counter!("foundation_supervisor_escalations_total", "supervisor" => s.config.name.clone()).increment(1);
        s.stop_all(StopPlan::ordered(DEFAULT_GRACE)).await;
        return Some(ExitReason::Failed(format!(
            "supervisor {}: more than {} restarts in {:?}",
            s.config.name, i.max_restarts, i.period
        )));
    }
    let n = s.children.len();
    let affected: Vec<usize> = match s.config.strategy {
        Strategy::OneForOne => vec![i],
        Strategy::OneForAll => (0..n).collect(),
        Strategy::RestForOne => (i..n).collect(),
    };
    for &j in affected.iter().rev() {
        if j != i {
            s.kill(j).await;
        }
    }
    s.children[i].generation += 1; // the failed incarnation is done
    for &j in &affected {
        s.restart(j);
    }
    None
}
