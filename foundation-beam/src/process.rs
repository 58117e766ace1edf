//! Processes: tokio tasks that own their state and are reached through handles.
//!
//! A process is a [`Process`] implementation (or a closure, [`spawn_fn`]) running in its
//! own task with a two-lane mailbox ([`crate::mailbox`]). Callers hold a [`Handle`]: cheap to
//! clone, with `send`, `send_urgent`, `call` (request/reply with a timeout), `monitor`,
//! `link` and `kill`. A process ends with an [`ExitReason`] — normal, shutdown, killed, a
//! panic with its message, a linked process's failure, or a failure it reports itself —
//! which monitors receive and links propagate.
//!
//! **What dropping handles does:** when the last handle (every [`Sender`]) of a process is
//! dropped, its mailbox closes; the process handles what is queued and then stops with
//! [`ExitReason::Normal`]. A process is never leaked by dropping handles, and is never
//! stopped while someone can still send to it. A registry entry made by
//! [`SpawnOptions::register_in`] is weak and does not count as a handle: a named process
//! stops like any other when the last handle outside the registry is dropped.
//!
//! ```
//! use std::time::Duration;
//! use foundation_beam::process::{spawn, Context, Process, Reply};
//!
//! enum Msg { Add(u64), Get(Reply<u64>) }
//! struct Counter(u64);
//!
//! impl Process for Counter {
//!     type Message = Msg;
//!     async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Msg>) {
//!         match msg {
//!             Msg::Add(n) => self.0 += n,
//!             Msg::Get(reply) => reply.send(self.0),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let counter = spawn(Counter(0));
//! counter.send(Msg::Add(2)).await.unwrap();
//! counter.send_urgent(Msg::Add(3)).await.unwrap();
//! let total = counter.call(Msg::Get, Duration::from_secs(1)).await.unwrap();
//! assert_eq!(total, 5);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use foundation_core::registry::{Registration, Registry};
use foundation_core::telemetry::TaskGuard;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};
use crate::group::MetricsGroup;
use crate::mailbox::{self, Delivery, MemoryStrategy, Receiver, SendError, Sender};

/// Unique id of a process within this OS process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(u64);

impl ProcessId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ProcessId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// Why a process stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// Its mailbox closed (every handle dropped) and it handled everything queued, or it
    /// stopped itself normally.
    Normal,
    /// It was asked to stop ([`Handle::shutdown`], a supervisor or ecosystem stopping it).
    Shutdown,
    /// It was killed ([`Handle::kill`]).
    Killed,
    /// A handler panicked, with the panic message.
    Panic(String),
    /// A linked process stopped abnormally, so this one was stopped too.
    Linked {
        /// The linked process that failed.
        peer: ProcessId,
        /// Why it failed.
        reason: Box<ExitReason>,
    },
    /// The process reported a failure ([`Context::stop`] with this reason), or a
    /// supervisor gave up (restart intensity exceeded).
    Failed(String),
}

impl ExitReason {
    /// Whether this is a failure (links propagate it, transient children restart).
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panic(m) => write!(f, "panic: {m}"),
            ExitReason::Linked { peer, reason } => {
                write!(f, "linked process {peer} exited: {reason}")
            }
            ExitReason::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A process: state owned by one task, changed only by the messages it handles.
///
/// `handle` runs for one message at a time; a panic in it stops the process with
/// [`ExitReason::Panic`] (a supervisor can restart it).
pub trait Process: Send + 'static {
    /// The messages it handles.
    type Message: Send + 'static;

    /// Handles one message.
    fn handle(
        &mut self,
        msg: Self::Message,
        ctx: &mut Context<Self::Message>,
    ) -> impl Future<Output = ()> + Send;

    /// Runs once before the first message.
    fn started(&mut self, _ctx: &mut Context<Self::Message>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a running process knows about itself.
pub struct Context<M> {
    life: Arc<Life>,
    myself: mailbox::WeakSender<M>,
    stop: Option<ExitReason>,
}

impl<M> Context<M> {
    /// This process's id.
    pub fn id(&self) -> ProcessId {
        self.life.id
    }

    /// This process's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.life.name.as_deref()
    }

    /// A sender to this process's own mailbox (`None` once it is closed). Holding it keeps
    /// the mailbox open, so do not keep it in the process's own state.
    pub fn myself(&self) -> Option<Sender<M>> {
        self.myself.upgrade()
    }

    /// Stops the process after the current message, with `reason`.
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }
}

/// The reply half of a [`Handle::call`]: send the answer with [`Reply::send`].
///
/// A `Reply` dropped unanswered makes the call fail with [`Error::NoReply`] — or with
/// [`Error::Interrupted`] when it is dropped because its process panicked or was killed
/// while holding it (the message being handled, or one kept in the process's state).
pub struct Reply<R>(Option<oneshot::Sender<Answer<R>>>);

/// What travels back to a caller.
pub(crate) enum Answer<R> {
    Value(R),
    /// The process stopped abnormally while it held the reply.
    Interrupted(ExitReason),
}

thread_local! {
    /// Set while an incarnation that ended abnormally drops what it held (see
    /// [`Interrupting`]): a `Reply` dropped then tells its caller why.
    static INTERRUPTED: std::cell::RefCell<Option<ExitReason>> = const { std::cell::RefCell::new(None) };
}

/// While armed, replies dropped on this thread report [`Answer::Interrupted`]; dropping
/// the guard disarms it. Declare it before what it covers: locals drop in reverse order,
/// so what is declared after it drops while it is still armed. (One flag, not the
/// reason, lives in the guard: it sits in every idle process's task.)
pub(crate) struct Interrupting {
    armed: bool,
}

impl Interrupting {
    pub(crate) fn new() -> Self {
        Interrupting { armed: false }
    }

    /// From now until this guard drops (on this thread), dropped replies were
    /// interrupted by `reason`. Nothing awaits while it is armed, so the thread stays
    /// the same.
    pub(crate) fn arm(&mut self, reason: ExitReason) {
        INTERRUPTED.with(|i| *i.borrow_mut() = Some(reason));
        self.armed = true;
    }
}

impl Drop for Interrupting {
    fn drop(&mut self) {
        if self.armed {
            INTERRUPTED.with(|i| *i.borrow_mut() = None);
        }
    }
}

/// Drops `value` (a stopped process's state) so that replies it held report `reason`
/// when the stop was abnormal.
pub(crate) fn drop_stopped<T>(value: T, reason: &ExitReason) {
    let mut guard = Interrupting::new();
    if reason.is_abnormal() {
        guard.arm(reason.clone());
    }
    drop(value);
}

impl<R> Reply<R> {
    pub(crate) fn channel() -> (Reply<R>, oneshot::Receiver<Answer<R>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(Some(tx)), rx)
    }

    /// Answers the call. If the caller gave up (timed out), the answer is dropped.
    pub fn send(mut self, value: R) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Answer::Value(value));
        }
    }

    /// Whether the caller is still waiting.
    pub fn is_waiting(&self) -> bool {
        self.0.as_ref().is_some_and(|tx| !tx.is_closed())
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            // `try_with`: a reply dropped while this thread's locals are torn down.
            let armed = INTERRUPTED.try_with(|i| i.borrow().clone()).ok().flatten();
            let reason = armed.or_else(|| {
                // Dropped while a panic unwinds (a local of the handler): the panic's
                // message is not known yet at this point.
                std::thread::panicking()
                    .then(|| ExitReason::Panic("panicked while holding the reply".into()))
            });
            if let Some(reason) = reason {
                let _ = tx.send(Answer::Interrupted(reason));
            }
        }
    }
}

impl<R> fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

/// Life-cycle state of a process shared by its handles, monitors and links. A supervised
/// child keeps one across restarts.
///
/// One allocation per process: the state sits behind one small lock; the running
/// incarnation's waker (for a kill) sits in an `AtomicWaker`, and one `Notify` wakes
/// monitors when an incarnation exits or has started. (It used to hold a `watch` channel
/// and a `CancellationToken`: three allocations and about 500 bytes more per process.)
pub(crate) struct Life {
    pub(crate) id: ProcessId,
    pub(crate) name: Option<Arc<str>>,
    /// The current incarnation was asked to stop (read on every wake-up, so not under
    /// the lock).
    killed: AtomicBool,
    /// The task of the current incarnation, woken by a kill. One waiter only: the
    /// incarnation's task (or a supervisor's own loop).
    kill_waker: AtomicWaker,
    state: Mutex<LifeState>,
    /// Woken when an incarnation exits or has started.
    changed: Notify,
}

/// Which incarnation runs, why it was asked to stop, and how the last one that stopped
/// ended. Counting incarnations lets a monitor see an exit even when a supervisor restarts
/// the process before the monitor looks.
#[derive(Default)]
struct LifeState {
    incarnation: u64,
    /// Why the current incarnation was asked to stop (taken as its exit reason).
    kill_reason: Option<ExitReason>,
    last_exit: Option<(u64, ExitReason)>,
    /// The last incarnation whose `started` hook returned, plus one (0: none; supervised
    /// children only).
    started: u64,
    links: Vec<Weak<Life>>,
}

impl LifeState {
    fn current_exit(&self) -> Option<&ExitReason> {
        match &self.last_exit {
            Some((inc, reason)) if *inc == self.incarnation => Some(reason),
            _ => None,
        }
    }
}

/// Resolves once the current incarnation is asked to stop ([`Life::killed`]).
pub(crate) struct Killed<'a>(&'a Life);

impl Future for Killed<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let life = self.0;
        if life.killed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        life.kill_waker.register(cx.waker());
        if life.killed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Life {
    pub(crate) fn new(name: Option<Arc<str>>) -> Arc<Life> {
        Arc::new(Life {
            id: ProcessId::next(),
            name,
            killed: AtomicBool::new(false),
            kill_waker: AtomicWaker::new(),
            state: Mutex::new(LifeState::default()),
            changed: Notify::new(),
        })
    }

    /// Stops the current incarnation with `reason` at its next await point.
    pub(crate) fn kill(&self, reason: ExitReason) {
        {
            let mut s = self.state.lock();
            if !self.killed.load(Ordering::Relaxed) && s.kill_reason.is_none() {
                s.kill_reason = Some(reason);
            }
            self.killed.store(true, Ordering::Release);
        }
        self.kill_waker.wake();
    }

    /// Resolves once the current incarnation is asked to stop. Only one task may wait
    /// at a time (the incarnation's own).
    pub(crate) fn killed(&self) -> Killed<'_> {
        Killed(self)
    }

    pub(crate) fn take_kill_reason(&self) -> ExitReason {
        self.state
            .lock()
            .kill_reason
            .take()
            .unwrap_or(ExitReason::Killed)
    }

    /// Prepares for a new incarnation (a supervisor start or restart). A kill of an
    /// incarnation that has ended is spent; a kill made before the process's first
    /// incarnation ran is kept, so that incarnation stops at once (as it would had it
    /// started a moment earlier).
    pub(crate) fn revive(&self) {
        let mut s = self.state.lock();
        if s.current_exit().is_some() {
            self.killed.store(false, Ordering::Release);
            s.kill_reason = None;
        }
        s.incarnation += 1;
    }

    /// Publishes the exit and propagates an abnormal one along links.
    pub(crate) fn finish(&self, reason: ExitReason) {
        if reason.is_abnormal() {
            let links: Vec<Arc<Life>> = self
                .state
                .lock()
                .links
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for peer in links {
                peer.kill(ExitReason::Linked {
                    peer: self.id,
                    reason: Box::new(reason.clone()),
                });
            }
        }
        {
            let mut s = self.state.lock();
            s.last_exit = Some((s.incarnation, reason));
        }
        self.changed.notify_waiters();
    }

    /// Records that the current incarnation's `started` hook returned.
    pub(crate) fn mark_started(&self) {
        {
            let mut s = self.state.lock();
            s.started = s.incarnation + 1;
        }
        self.changed.notify_waiters();
    }

    /// Waits until the current incarnation has run its `started` hook, or has stopped.
    /// Returns whether it is running.
    pub(crate) async fn wait_started(&self) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.state.lock();
                if s.started == s.incarnation + 1 {
                    return true;
                }
                if s.current_exit().is_some() {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Woken when an incarnation exits or has started.
    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Whether an incarnation runs and its `started` hook has returned (supervised
    /// children only: others never report a start).
    pub(crate) fn is_running(&self) -> bool {
        let s = self.state.lock();
        s.current_exit().is_none() && s.started == s.incarnation + 1
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.state.lock().current_exit().cloned()
    }

    pub(crate) fn link(&self, other: &Arc<Life>) {
        self.state.lock().links.push(Arc::downgrade(other));
    }

    pub(crate) fn monitor(self: &Arc<Self>) -> Monitor {
        let incarnation = self.state.lock().incarnation;
        Monitor {
            life: self.clone(),
            incarnation,
        }
    }
}

/// Watches a process's exit: resolves when the incarnation running when the monitor was
/// made stops (at once if it already has), even if a supervisor restarts it right away.
pub struct Monitor {
    life: Arc<Life>,
    incarnation: u64,
}

impl Monitor {
    /// The monitored process.
    pub fn id(&self) -> ProcessId {
        self.life.id
    }

    /// Waits for the process to exit and returns why. Returns at once if it has exited.
    pub async fn wait(&mut self) -> ExitReason {
        loop {
            let notified = self.life.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some((inc, reason)) = &self.life.state.lock().last_exit {
                if *inc >= self.incarnation {
                    return reason.clone();
                }
            }
            notified.await;
        }
    }
}

/// One process's numbers at one moment ([`Handle::info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The process.
    pub id: ProcessId,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Whether its current incarnation runs.
    pub alive: bool,
    /// Why it stopped, if it has.
    pub exit: Option<ExitReason>,
    /// Messages queued and not yet handled.
    pub backlog: usize,
    /// Messages its mailbox dropped so far (policy, or queued when it stopped for good).
    pub dropped: u64,
    /// Messages returned to their senders because its mailbox was full.
    pub rejected: u64,
}

/// Waits for the answer to a call delivered to `process` (until `deadline`, if any).
pub(crate) async fn wait_reply<R>(
    rx: oneshot::Receiver<Answer<R>>,
    deadline: Option<tokio::time::Instant>,
    process: ProcessId,
    timeout: Duration,
) -> Result<R> {
    let answer = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, rx).await {
            Ok(answer) => answer,
            Err(_) => {
                return Err(Error::Timeout {
                    process,
                    after: timeout,
                })
            }
        },
        None => rx.await,
    };
    match answer {
        Ok(Answer::Value(v)) => Ok(v),
        Ok(Answer::Interrupted(reason)) => Err(Error::Interrupted { process, reason }),
        Err(_) => Err(Error::NoReply { process }),
    }
}

/// A handle to a process: send to it, call it, monitor it, link to it, stop it.
///
/// Cheap to clone. See the [module docs](self) for what dropping the last handle does.
pub struct Handle<M> {
    tx: Sender<M>,
    life: Arc<Life>,
}

impl<M> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            tx: self.tx.clone(),
            life: self.life.clone(),
        }
    }
}

impl<M> fmt::Debug for Handle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.life.id)
            .field("name", &self.life.name)
            .field("backlog", &self.tx.backlog())
            .finish()
    }
}

/// The default timeout of [`Handle::call`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl<M: Send + 'static> Handle<M> {
    pub(crate) fn from_parts(tx: Sender<M>, life: Arc<Life>) -> Self {
        Handle { tx, life }
    }

    pub(crate) fn life(&self) -> &Arc<Life> {
        &self.life
    }

    /// The process's id.
    pub fn id(&self) -> ProcessId {
        self.life.id
    }

    /// The process's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.life.name.as_deref()
    }

    /// Sends `msg`, waiting for room if the mailbox is full under `Backpressure`.
    pub async fn send(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.tx.send(msg).await
    }

    /// Sends `msg` without waiting.
    pub fn try_send(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.tx.try_send(msg)
    }

    /// Sends `msg` through the urgent lane: it is handled before any normal message.
    pub async fn send_urgent(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.tx.send_urgent(msg).await
    }

    /// Sends `msg` through the urgent lane without waiting.
    pub fn try_send_urgent(&self, msg: M) -> Result<Delivery, SendError<M>> {
        self.tx.try_send_urgent(msg)
    }

    /// Request/reply: builds a message around a [`Reply`] with `make`, sends it and waits
    /// for the answer. `timeout` bounds the whole call: waiting for room in a full
    /// backpressured mailbox as well as waiting for the reply. A call that times out while
    /// waiting for room never queued its message.
    ///
    /// Errors: [`Error::Timeout`] (the late answer is dropped), [`Error::NoReply`] (the
    /// process dropped the `Reply`, or stopped before handling the message),
    /// [`Error::Interrupted`] (it panicked or was killed while handling the message: it
    /// was delivered and may have been partly handled), [`Error::Stopped`] (it had
    /// stopped; nothing was delivered), or [`Error::MailboxFull`] (full mailbox under
    /// `Reject`/`DropNewest`).
    pub async fn call<R>(&self, make: impl FnOnce(Reply<R>) -> M, timeout: Duration) -> Result<R> {
        self.call_inner(make, timeout, false).await
    }

    /// Like [`call`](Self::call), through the urgent lane.
    pub async fn call_urgent<R>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
    ) -> Result<R> {
        self.call_inner(make, timeout, true).await
    }

    async fn call_inner<R>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
        urgent: bool,
    ) -> Result<R> {
        let timed_out = || Error::Timeout {
            process: self.life.id,
            after: timeout,
        };
        // One deadline covers waiting for room in the mailbox and waiting for the reply.
        // `None`: too far in the future to represent; wait without a deadline.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let (reply, rx) = Reply::channel();
        let msg = make(reply);
        // With room, the message is queued at once (no timer); only a wait for room in a
        // full backpressured mailbox runs under the deadline.
        let sent = match self.tx.push_now(msg, urgent) {
            Ok(sent) => sent,
            Err(msg) => {
                let wait = self.tx.wait_for_room(msg, urgent);
                match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, wait).await {
                        Ok(sent) => sent,
                        // The message was never queued (the wait is cancel-safe).
                        Err(_) => return Err(timed_out()),
                    },
                    None => wait.await,
                }
            }
        };
        match sent {
            Ok(Delivery::DroppedNewest) => {
                return Err(Error::MailboxFull {
                    process: self.life.id,
                })
            }
            Ok(_) => {}
            Err(SendError::Full(_)) => {
                return Err(Error::MailboxFull {
                    process: self.life.id,
                })
            }
            Err(SendError::Closed(_)) => {
                return Err(Error::Stopped {
                    process: self.life.id,
                })
            }
        }
        wait_reply(rx, deadline, self.life.id, timeout).await
    }

    /// Request/reply that never waits for room: queues the request now (through the
    /// urgent lane if `urgent`) and returns the wait for its answer, bounded by `timeout`.
    /// The request takes its place in the mailbox before this returns, so it is ordered
    /// with the messages sent before and after it (a relay that must keep a sender's order
    /// uses this rather than [`call`](Self::call), whose queueing may wait).
    ///
    /// Errors at once: [`Error::MailboxFull`] (a full mailbox, whatever its policy) or
    /// [`Error::Stopped`]; then from the returned future as [`call`](Self::call).
    pub fn try_call<R: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<R>) -> M,
        timeout: Duration,
        urgent: bool,
    ) -> Result<impl Future<Output = Result<R>> + Send + 'static> {
        let process = self.life.id;
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        let (reply, rx) = Reply::channel();
        let pushed = if urgent {
            self.tx.try_send_urgent(make(reply))
        } else {
            self.tx.try_send(make(reply))
        };
        match pushed {
            Ok(Delivery::DroppedNewest) | Err(SendError::Full(_)) => {
                Err(Error::MailboxFull { process })
            }
            Err(SendError::Closed(_)) => Err(Error::Stopped { process }),
            Ok(_) => Ok(wait_reply(rx, deadline, process, timeout)),
        }
    }

    /// A monitor of the process's exit.
    pub fn monitor(&self) -> Monitor {
        self.life.monitor()
    }

    /// Links the two processes: when either stops abnormally, the other is stopped with
    /// [`ExitReason::Linked`]. Links hold no strong reference.
    pub fn link<N: Send + 'static>(&self, other: &Handle<N>) {
        self.life.link(&other.life);
        other.life.link(&self.life);
    }

    /// Stops the process at its next await point with [`ExitReason::Killed`]; queued
    /// messages are dropped (and counted) unless a supervisor restarts it.
    pub fn kill(&self) {
        self.life.kill(ExitReason::Killed);
    }

    /// Stops the process at its next await point with [`ExitReason::Shutdown`].
    pub fn shutdown(&self) {
        self.life.kill(ExitReason::Shutdown);
    }

    /// Whether the process (its current incarnation) is running.
    pub fn is_alive(&self) -> bool {
        self.life.exit_reason().is_none()
    }

    /// Why the process stopped, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.life.exit_reason()
    }

    /// Messages queued and not yet handled.
    pub fn backlog(&self) -> usize {
        self.tx.backlog()
    }

    /// A snapshot of this process's own numbers, read on demand (the per-process view
    /// an observer shows; metrics only carry aggregates per group, see
    /// [`crate::group`]).
    pub fn info(&self) -> ProcessInfo {
        let exit = self.life.exit_reason();
        ProcessInfo {
            id: self.life.id,
            name: self.life.name.as_deref().map(str::to_string),
            alive: exit.is_none(),
            exit,
            backlog: self.tx.backlog(),
            dropped: self.tx.dropped(),
            rejected: self.tx.rejected(),
        }
    }

    /// The mailbox's sending side.
    pub fn sender(&self) -> &Sender<M> {
        &self.tx
    }
}

/// Options of [`spawn_with`].
pub struct SpawnOptions<M> {
    name: Option<String>,
    memory: MemoryStrategy,
    message_size: Option<fn(&M) -> usize>,
    registry: Option<Registry>,
    group: Option<MetricsGroup>,
}

impl<M> Default for SpawnOptions<M> {
    fn default() -> Self {
        SpawnOptions {
            name: None,
            memory: MemoryStrategy::default(),
            message_size: None,
            registry: None,
            group: None,
        }
    }
}

impl<M> fmt::Debug for SpawnOptions<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnOptions")
            .field("name", &self.name)
            .field("memory", &self.memory)
            .field("group", &self.group)
            .finish()
    }
}

impl<M: Send + 'static> SpawnOptions<M> {
    /// Default options: unnamed, a 1024-message mailbox per lane with backpressure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the process (registered under it if a registry is given). The name does not
    /// label metrics: those belong to the process's [group](Self::group).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The metrics group the process's numbers are aggregated into (default:
    /// [`MetricsGroup::default_group`]); see [`crate::group`].
    pub fn group(mut self, group: &MetricsGroup) -> Self {
        self.group = Some(group.clone());
        self
    }

    /// The mailbox's memory strategy.
    pub fn memory(mut self, memory: MemoryStrategy) -> Self {
        self.memory = memory;
        self
    }

    /// How to measure a message for the byte budget (default: `size_of::<M>()`).
    pub fn message_size(mut self, f: fn(&M) -> usize) -> Self {
        self.message_size = Some(f);
        self
    }

    /// Registers the process under its name in `registry` while it runs: `registry.lookup::<Handle<M>>(name)`
    /// returns a handle. The entry is **weak**: it does not keep the process alive. When
    /// the last handle held outside the registry is dropped, the mailbox closes as for
    /// any process, lookups fail from then on, and the process stops (with
    /// [`ExitReason::Normal`] once it has handled what is queued); the entry disappears
    /// when it stops.
    pub fn register_in(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }
}

/// Spawns a process with default options. Needs a tokio runtime.
pub fn spawn<P: Process>(process: P) -> Handle<P::Message> {
    spawn_with(process, SpawnOptions::new()).expect("spawning without a registry cannot fail")
}

/// Spawns a process with options. Fails if the name is taken in the given registry.
pub fn spawn_with<P: Process>(
    process: P,
    options: SpawnOptions<P::Message>,
) -> Result<Handle<P::Message>> {
    let name: Option<Arc<str>> = options.name.as_deref().map(Arc::from);
    let group = match options.group {
        Some(g) => g,
        None => MetricsGroup::default_group(),
    };
    let (tx, rx) = mailbox::channel_in(&group, &options.memory, options.message_size);
    drop(group);
    let life = Life::new(name.clone());
    let handle = Handle {
        tx,
        life: life.clone(),
    };
    let registration = match (&options.registry, &name) {
        (Some(registry), Some(name)) => {
            // A weak entry: the registry must not keep the process alive (see the
            // module docs); a lookup upgrades it while the mailbox is open.
            let weak = rx.weak_sender();
            let weak_life = Arc::downgrade(&life);
            let upgrade = move || {
                let life = weak_life.upgrade()?;
                weak.upgrade().map(|tx| Handle { tx, life })
            };
            Some(Box::new(
                registry
                    .register_weak(name.to_string(), upgrade, Default::default())
                    .map_err(Error::Core)?,
            ))
        }
        (Some(_), None) => {
            return Err(Error::Core(foundation_core::Error::InvalidArgument(
                "a process registered in a registry needs a name".into(),
            )))
        }
        _ => None,
    };
    rx.group().process_started();
    tokio::spawn(process_task(process, rx, life, registration));
    Ok(handle)
}

/// The task of a process spawned by [`spawn_with`]: runs it, then publishes its exit.
// Not an `async fn`: its parameters would be stored twice in the future (as arguments
// and as the locals they are moved into), 472 B instead of 384 B for an idle process.
#[allow(clippy::manual_async_fn)]
fn process_task<P: Process>(
    mut process: P,
    mut rx: Receiver<P::Message>,
    life: Arc<Life>,
    registration: Option<Box<Registration>>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _live = TaskGuard::new();
        let reason = run_in(&mut process, &mut rx, &life, false).await;
        drop_stopped(process, &reason);
        drop(registration);
        rx.group().process_exited(&reason);
        drop(rx); // closes the mailbox; queued messages are counted as dropped
        life.finish(reason);
    }
}

/// Runs one incarnation of `process` on `rx` until it stops; returns why. The mailbox
/// (with anything still queued) stays with the caller for a possible next incarnation.
/// On borrowed state: the caller's future keeps the process and its mailbox, so they are
/// not stored twice in the task (an idle process's task is mostly this future).
///
/// With `report_started`, the incarnation's start is published (see
/// [`Life::wait_started`]) once its `started` hook has returned.
pub(crate) async fn run_in<P: Process>(
    process: &mut P,
    rx: &mut Receiver<P::Message>,
    life: &Arc<Life>,
    report_started: bool,
) -> ExitReason {
    let mut ctx = Context {
        life: life.clone(),
        myself: rx.weak_sender(),
        stop: None,
    };
    let body = async {
        process.started(&mut ctx).await;
        if report_started {
            life.mark_started();
        }
        loop {
            if let Some(reason) = ctx.stop.take() {
                return reason;
            }
            match rx.recv().await {
                Some(msg) => process.handle(msg, &mut ctx).await,
                None if rx.shutdown_requested() => return ExitReason::Shutdown,
                None => return ExitReason::Normal,
            }
        }
    };
    // Declared before `body`, so it is still armed while `body` (with the message being
    // handled) drops at the end of this function.
    let mut interrupting = Interrupting::new();
    let body = std::pin::pin!(AssertUnwindSafe(body).catch_unwind());
    let (reason, finished) = tokio::select! {
        biased;
        _ = life.killed() => (life.take_kill_reason(), false),
        r = body => match r {
            Ok(reason) => (reason, true),
            Err(p) => (ExitReason::Panic(panic_message(&*p)), false),
        },
    };
    if !finished {
        // Panicked or killed mid-way: a reply it held was interrupted.
        interrupting.arm(reason.clone());
    }
    reason
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The mailbox of a closure process ([`spawn_fn`]).
pub struct Inbox<M> {
    rx: Receiver<M>,
}

impl<M> Inbox<M> {
    /// The next message, urgent first; `None` when every handle is gone and the mailbox is
    /// empty — the closure should then return.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await
    }
}

/// Spawns a closure process: `f` receives the process's [`Inbox`] and runs until it
/// returns (normal exit) or panics.
///
/// ```
/// use foundation_beam::process::spawn_fn;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (done_tx, done_rx) = tokio::sync::oneshot::channel();
/// let echo = spawn_fn(|mut inbox| async move {
///     let mut seen = Vec::new();
///     while let Some(n) = inbox.recv().await { seen.push(n) }
///     let _ = done_tx.send(seen);
/// });
/// echo.send(1u32).await.unwrap();
/// echo.send(2).await.unwrap();
/// drop(echo); // last handle: the inbox closes once drained
/// assert_eq!(done_rx.await.unwrap(), vec![1, 2]);
/// # }
/// ```
pub fn spawn_fn<M, F, Fut>(f: F) -> Handle<M>
where
    M: Send + 'static,
    F: FnOnce(Inbox<M>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mailbox::channel_in(
        &MetricsGroup::default_group(),
        &MemoryStrategy::default(),
        None,
    );
    let life = Life::new(None);
    let handle = Handle {
        tx,
        life: life.clone(),
    };
    let group = rx.group().clone();
    group.process_started();
    tokio::spawn(async move {
        let _live = TaskGuard::new();
        let body = AssertUnwindSafe(f(Inbox { rx })).catch_unwind();
        let reason = tokio::select! {
            biased;
            _ = life.killed() => life.take_kill_reason(),
            r = body => match r {
                Ok(()) => ExitReason::Normal,
                Err(p) => ExitReason::Panic(panic_message(&*p)),
            },
        };
        group.process_exited(&reason);
        life.finish(reason);
    });
    handle
}

#[cfg(test)]
mod footprint {
    use super::*;

    struct Idle;

    impl Process for Idle {
        type Message = u64;
        async fn handle(&mut self, msg: u64, _: &mut Context<u64>) {
            std::hint::black_box(msg);
        }
    }

    /// Where the bytes of an idle process go (struct sizes; the allocator rounds each
    /// allocation up, and tokio aligns a task to 128 bytes on x86-64).
    #[tokio::test]
    async fn an_idle_process_is_small() {
        let group = MetricsGroup::default_group();
        let (tx, rx) = mailbox::channel_in::<u64>(&group, &MemoryStrategy::default(), None);
        let life = Life::new(None);
        let task = process_task(Idle, rx, life.clone(), None);
        let sizes = [
            ("task future", std::mem::size_of_val(&task)),
            ("mailbox (Arc'd Shared)", mailbox::shared_size::<u64>()),
            ("life (Arc'd Life)", std::mem::size_of::<Life>() + 16),
            ("handle", std::mem::size_of::<Handle<u64>>()),
        ];
        for (what, size) in sizes {
            println!("{what}: {size} B");
        }
        let task_size = std::mem::size_of_val(&task);
        drop((task, tx));
        assert!(
            std::mem::size_of::<Life>() + 16 <= 224,
            "the life-cycle state should stay small"
        );
        // Future layouts differ in debug builds; the bound is for optimized builds, as
        // users run them (`cargo test --release -p foundation-beam --lib footprint`).
        if !cfg!(debug_assertions) {
            assert!(
                task_size <= 448,
                "an idle process's task future grew to {task_size} B"
            );
        }
    }
}
