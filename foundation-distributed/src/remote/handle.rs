//! The public face: [`Remote`] (one per node), [`RemoteRef`] (a typed handle to a named
//! process on any node), [`RemoteMonitor`] and [`GlobalName`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use foundation_beam::process::Handle;
use tokio::sync::{oneshot, watch};

use super::error::{RemoteError, RemoteResult};
use super::exit::RemoteExitReason;
use super::service::{map_node_error, Shared};
use super::wire::{key_of, ControlReply, Signal, SIGNALS, URGENT_SIGNALS};
use super::RemoteMessage;
use crate::channel::Urgency;
use crate::node::{Node, SendOptions};

/// The remote-process service of one [`Node`]: export local processes by name, reach
/// named processes on any node, hold cluster-wide names.
///
/// Start one per node with [`Remote::start`]. Cheap to clone. It keeps a clone of the
/// node. Dropping the last clone (and every [`RemoteRef`] made from it) stops its tasks;
/// [`shutdown`](Self::shutdown) stops it at once and tells the nodes watching its exports.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("node", &self.shared.me)
            .finish()
    }
}

/// Counters of one node's remote-process service (the same figures are exported as
/// `foundation_remote_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Sends (`send`, `send_urgent`) handed to the node for transmission.
    pub sends: u64,
    /// Calls made.
    pub calls: u64,
    /// Operations of this node that returned (or, for monitors, resolved with) an error.
    pub failures: u64,
    /// Messages that arrived here for a local process and were not delivered (no such
    /// process, mailbox full, undecodable).
    pub dropped: u64,
    /// Of `dropped`: messages that did not decode as the process's type.
    pub undecodable: u64,
    /// Sends from this node that the receiving node reported as not delivered.
    pub rejected: u64,
    /// Of `rejected`: reported undecodable by the receiving node.
    pub rejected_undecodable: u64,
    /// Cluster-wide name conflicts settled at this node.
    pub name_conflicts: u64,
    /// Control signals (down notices, link exits, claims, rejection notices, answers to
    /// calls) that could not be sent, or (fences) that took effect before all their
    /// copies arrived.
    pub signals_lost: u64,
}

/// A cluster-wide name this node lost when a partition healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameLost {
    /// The name.
    pub name: String,
    /// The node whose claim won.
    pub winner: String,
}

impl Remote {
    /// Starts the service on `node`: registers the receivers `$remote`, `$remote!urgent`
    /// and the server `$remote/control` on it. Start one per node (a second one would take
    /// over those names).
    pub fn start(node: &Node) -> Remote {
        Remote {
            shared: Shared::start(node),
        }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// Exports `handle` under `name` on this node, so any node can reach it as
    /// `(name, this node)`. The export holds a clone of the handle, so the process keeps
    /// running while exported (like a registered Erlang process); the export is withdrawn
    /// when the process exits (monitors learn why) or by [`unregister`](Self::unregister).
    ///
    /// Errors: [`RemoteError::NameTaken`] if a running process is exported under `name`.
    pub fn register<M: RemoteMessage>(&self, name: &str, handle: &Handle<M>) -> RemoteResult<()> {
        self.shared
            .export(name, handle)
            .map(|_| ())
            .inspect_err(|e| {
                self.shared.metrics.failed("register", e);
            })
    }

    /// Withdraws the export `name` (the process keeps running); monitors of it resolve
    /// with [`RemoteExitReason::NoProcess`]. Returns whether it was exported.
    pub async fn unregister(&self, name: &str) -> bool {
        self.shared.unexport(name).await
    }

    /// Exports `handle` under `name` and claims `name` cluster-wide: any node can then
    /// find it with [`whereis`](Self::whereis) / [`global`](Self::global).
    ///
    /// Conflicts (see the [`remote`](super) module docs): a claim is refused with
    /// [`RemoteError::NameTaken`] while this node knows another holder. Claims made on
    /// both sides of a partition are settled when it heals by the smaller (Lamport clock
    /// at registration, node name): the loser's [`GlobalName::lost`] resolves, its
    /// process keeps running and stays reachable by its node-local name.
    pub async fn register_global<M: RemoteMessage>(
        &self,
        name: &str,
        handle: &Handle<M>,
    ) -> RemoteResult<GlobalName> {
        if let Some(node) = self.shared.whereis(name) {
            let e = RemoteError::NameTaken {
                name: name.to_string(),
                node,
            };
            self.shared.metrics.failed("register", &e);
            return Err(e);
        }
        let export = self.shared.export(name, handle).inspect_err(|e| {
            self.shared.metrics.failed("register", e);
        })?;
        match self.shared.claim_name(name, export).await {
            Ok(lost) => Ok(GlobalName {
                name: name.to_string(),
                export,
                lost,
                shared: self.shared.clone(),
            }),
            Err(e) => {
                self.shared.unexport(name).await;
                self.shared.metrics.failed("register", &e);
                Err(e)
            }
        }
    }

    /// The node holding the cluster-wide `name`, as this node knows it.
    pub fn whereis(&self, name: &str) -> Option<String> {
        self.shared.whereis(name)
    }

    /// A handle to the holder of the cluster-wide `name`.
    ///
    /// Errors: [`RemoteError::NoProcess`] (with this node's name) if nobody holds it.
    pub fn global<M: RemoteMessage>(&self, name: &str) -> RemoteResult<RemoteRef<M>> {
        match self.shared.whereis(name) {
            Some(node) => Ok(self.process(&node, name)),
            None => Err(RemoteError::NoProcess {
                node: self.shared.me.clone(),
                name: name.to_string(),
            }),
        }
    }

    /// A handle to the process exported as `name` on `node` (Erlang's `{Name, Node}`).
    /// Nothing is checked until it is used; `node` may be this node.
    pub fn process<M: RemoteMessage>(&self, node: &str, name: &str) -> RemoteRef<M> {
        RemoteRef {
            shared: self.shared.clone(),
            node: node.into(),
            name: name.into(),
            key: key_of(node, name),
            _m: PhantomData,
        }
    }

    /// This node's counters.
    pub fn stats(&self) -> RemoteStats {
        let s = &self.shared.metrics.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            sends: get(&s.sends),
            calls: get(&s.calls),
            failures: get(&s.failures),
            dropped: get(&s.dropped),
            undecodable: get(&s.undecodable),
            rejected: get(&s.rejected),
            rejected_undecodable: get(&s.rejected_undecodable),
            name_conflicts: get(&s.name_conflicts),
            signals_lost: get(&s.signals_lost),
        }
    }

    /// Stops the service within about `2 × deadline`: exports are withdrawn and the nodes
    /// monitoring or linked to them are told `noconnection` (best effort within
    /// `deadline`), tasks are stopped (aborted after `deadline`), this node's own monitors
    /// resolve with `noconnection`. Later operations fail with [`RemoteError::Closed`].
    /// The node itself keeps running.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shared.shutdown(deadline).await;
    }
}

/// A typed handle to the process exported as `name` on `node`: send to it, call it,
/// monitor it, link to it. Made by [`Remote::process`] or [`Remote::global`]; cheap to
/// clone. It keeps its node's [`Remote`] service running.
///
/// # Delivery semantics
///
/// | method | `Ok` means | not promised |
/// |---|---|---|
/// | [`send`](Self::send), [`send_urgent`](Self::send_urgent), [`try_send`](Self::try_send) | the message was encoded and the node accepted it for transmission to `node` (at most once; `try_send` fails instead of waiting for room) | delivery: a message that arrives for no process, a full mailbox or as undecodable is dropped there, counted on both nodes ([`RemoteStats::dropped`] there, [`RemoteStats::rejected`] here) |
/// | [`send_confirmed`](Self::send_confirmed) | the message is queued in the process's mailbox | that the process handles it (it may stop first) |
/// | [`call`](Self::call) | the process handled the request and this is its reply | — a timeout leaves unknown whether it was handled |
///
/// # Order (D400)
///
/// Erlang's promise — signals between a pair of processes arrive in the order sent — holds
/// for the pair (this node, the remote process), with two lanes:
///
/// | lane | methods | ordered with | overtakes / overtaken by |
/// |---|---|---|---|
/// | normal | [`send`](Self::send), [`try_send`](Self::try_send), [`send_confirmed`](Self::send_confirmed), [`call`](Self::call), dropping an unfired [`RemoteMonitor`] | each other: handled in the order sent, whatever their sizes (a call after the casts sent before it, before those sent after it) | overtaken by the urgent lane |
/// | urgent | [`send_urgent`](Self::send_urgent), [`call_urgent`](Self::call_urgent) | each other | overtakes every normal-lane message not yet handled: on the wire (its own channel) and in the mailbox (handled first) |
/// | exits | the process's DOWN ([`monitor`](Self::monitor)) and link exit ([`link`](Self::link)) | after every normal-lane message the process's node sent to this node before the exit (so "the message, then the DOWN") | not ordered with urgent-lane messages |
///
/// * "In the order sent" means: sends whose calls do not overlap (one returned before the
///   next began), from any task of this node — the path is the node's, not a task's, so
///   it is stronger than Erlang's per-process promise. Calls still run concurrently: a call
///   does not wait for an earlier call's answer; answers come back on the urgent lane.
/// * How: one partition key per (node, process) pair, and the pair's messages stay on the
///   channel a small message takes (a large one is not moved to `bulk_data`, also at a
///   relay), so they share one connection and one receiving queue. A DOWN or link exit is
///   a fence: one copy on each connection of the normal channel, taking effect when the
///   last arrives. The other way, a local process's link exit goes to the remote process
///   on the pair's path, behind what was sent to it.
/// * A node declared down gives `noconnection` at once to monitors, links and calls: it
///   does not wait for messages in flight (they may still arrive until the link closes,
///   or be lost; sends are at most once).
/// * Order is lost only with the messages themselves: a full mailbox, a missing process
///   or a broken connection drops (and counts) a message; later ones are still handled
///   in order.
pub struct RemoteRef<M> {
    shared: Arc<Shared>,
    node: Arc<str>,
    name: Arc<str>,
    key: u64,
    _m: PhantomData<fn(M)>,
}

impl<M> Clone for RemoteRef<M> {
    fn clone(&self) -> Self {
        RemoteRef {
            shared: self.shared.clone(),
            node: self.node.clone(),
            name: self.name.clone(),
            key: self.key,
            _m: PhantomData,
        }
    }
}

impl<M> fmt::Debug for RemoteRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteRef({}@{})", self.name, self.node)
    }
}

impl<M: RemoteMessage> RemoteRef<M> {
    /// The process's node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The name it is exported under.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_local(&self) -> bool {
        *self.node == *self.shared.me
    }

    fn fail<T>(&self, op: &'static str, e: RemoteError) -> RemoteResult<T> {
        self.shared.metrics.failed(op, &e);
        Err(e)
    }

    fn precheck(&self) -> RemoteResult<()> {
        self.shared.check_open()?;
        if self.shared.is_down(&self.node) {
            return Err(RemoteError::NoConnection {
                node: self.node.to_string(),
            });
        }
        Ok(())
    }

    /// Sends `msg` to the process's normal lane. See the type docs for what `Ok` means.
    ///
    /// Errors: [`RemoteError::NoConnection`] (node down or unknown),
    /// [`RemoteError::Encode`], [`RemoteError::Node`] (the node could not take it).
    pub async fn send(&self, msg: &M::Cast) -> RemoteResult<()> {
        self.cast(msg, false).await
    }

    /// Sends `msg` to the process's urgent lane, on the node's urgent channel: it is
    /// handled before the process's normal messages (see the type docs for the order and
    /// what `Ok` means).
    pub async fn send_urgent(&self, msg: &M::Cast) -> RemoteResult<()> {
        self.cast(msg, true).await
    }

    /// Like [`send`](Self::send) but never waits: fails at once with
    /// [`RemoteError::NoConnection`] when the link towards `node` is not up, and with
    /// [`RemoteError::Node`] wrapping [`Error::Full`](crate::Error::Full) when the node's
    /// queue is full; the node counts either (`foundation_node_dropped_total`).
    pub fn try_send(&self, msg: &M::Cast) -> RemoteResult<()> {
        let Some((to, signal, opts)) = self.prepare(msg, false, "try_send")? else {
            return Ok(());
        };
        self.shared
            .node
            .try_send_pinned(&self.node, to, &signal, opts)
            .or_else(|e| {
                let e = map_node_error(&self.node, &self.name, Duration::ZERO, e);
                self.fail("try_send", e)
            })
    }

    async fn cast(&self, msg: &M::Cast, urgent: bool) -> RemoteResult<()> {
        let op = if urgent { "send_urgent" } else { "send" };
        let Some((to, signal, opts)) = self.prepare(msg, urgent, op)? else {
            return Ok(());
        };
        match self
            .shared
            .node
            .send_pinned(&self.node, to, &signal, opts, true)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = map_node_error(&self.node, &self.name, Duration::ZERO, e);
                self.fail(op, e)
            }
        }
    }

    /// Checks and encodes a cast; delivers it at once if the process is on this node
    /// (`None`), else returns what to hand to the node.
    fn prepare(
        &self,
        msg: &M::Cast,
        urgent: bool,
        op: &'static str,
    ) -> RemoteResult<Option<(&'static str, Signal, SendOptions)>> {
        if let Err(e) = self.precheck() {
            return self.fail(op, e);
        }
        let body = match encode(msg) {
            Ok(b) => b,
            Err(e) => return self.fail(op, e),
        };
        self.shared.metrics.sent(urgent);
        if self.is_local() {
            // At most once, like a remote send: a failure is counted, not returned.
            let _ = self
                .shared
                .deliver(&self.shared.me, &self.name, body, urgent);
            return Ok(None);
        }
        let signal = Signal::Cast {
            to: self.name.to_string(),
            body,
        };
        let (to, opts) = self.lane(urgent);
        Ok(Some((to, signal, opts)))
    }

    /// The receiver and send options of the pair's path on the normal or urgent lane: one
    /// key, one connection, whatever the message (D400).
    fn lane(&self, urgent: bool) -> (&'static str, SendOptions) {
        let (to, urgency) = if urgent {
            (URGENT_SIGNALS, Urgency::Urgent)
        } else {
            (SIGNALS, Urgency::Normal)
        };
        let opts = SendOptions {
            urgency,
            key: Some(self.key),
        };
        (to, opts)
    }

    /// Sends `msg` and waits (up to `timeout`) until it is queued in the process's mailbox.
    ///
    /// Errors: as [`call`](Self::call), with [`RemoteError::MailboxFull`] when the
    /// mailbox refuses it.
    pub async fn send_confirmed(&self, msg: &M::Cast, timeout: Duration) -> RemoteResult<()> {
        let body = match encode(msg) {
            Ok(body) => body,
            Err(e) => return self.fail("send_confirmed", e),
        };
        self.shared.metrics.sent(false);
        match self.ask(body, false, false, timeout).await {
            Ok(ControlReply::Done) => Ok(()),
            Ok(ControlReply::Failed(f)) => {
                let e = f.into_error(&self.node, &self.name, timeout);
                self.fail("send_confirmed", e)
            }
            Ok(_) => self.fail("send_confirmed", self.unexpected()),
            Err(e) => self.fail("send_confirmed", e),
        }
    }

    /// Calls the process with `request` (delivered to its normal lane as
    /// [`RemoteMessage::from_call`], after the messages sent to it before) and waits up to
    /// `timeout` for its reply.
    ///
    /// Fails promptly — without waiting for the timeout — when the process is not
    /// exported there or stops before replying ([`RemoteError::NoProcess`],
    /// [`RemoteError::NoReply`]), and when its node is declared down, before or during the
    /// call ([`RemoteError::NoConnection`]). Other errors: [`RemoteError::Timeout`],
    /// [`RemoteError::MailboxFull`], [`RemoteError::Undecodable`] (the request did not
    /// decode there, or the reply here), [`RemoteError::Encode`], [`RemoteError::Node`].
    pub async fn call(&self, request: &M::Call, timeout: Duration) -> RemoteResult<M::Reply> {
        self.call_inner(request, timeout, false).await
    }

    /// Like [`call`](Self::call), through the process's urgent lane: ordered with
    /// [`send_urgent`](Self::send_urgent)s, ahead of the normal lane (see the type docs).
    pub async fn call_urgent(
        &self,
        request: &M::Call,
        timeout: Duration,
    ) -> RemoteResult<M::Reply> {
        self.call_inner(request, timeout, true).await
    }

    async fn call_inner(
        &self,
        request: &M::Call,
        timeout: Duration,
        urgent: bool,
    ) -> RemoteResult<M::Reply> {
        let body = match encode(request) {
            Ok(body) => body,
            Err(e) => return self.fail("call", e),
        };
        self.shared.metrics.called();
        let answer = match self.ask(body, true, urgent, timeout).await {
            Ok(ControlReply::Answer(bytes)) => bytes,
            Ok(ControlReply::Failed(f)) => {
                let e = f.into_error(&self.node, &self.name, timeout);
                return self.fail("call", e);
            }
            Ok(_) => return self.fail("call", self.unexpected()),
            Err(e) => return self.fail("call", e),
        };
        match rmp_serde::from_slice(&answer) {
            Ok(r) => Ok(r),
            Err(e) => {
                let e = RemoteError::Undecodable {
                    node: self.node.to_string(),
                    name: self.name.to_string(),
                    detail: format!("reply: {e}"),
                };
                self.fail("call", e)
            }
        }
    }

    fn unexpected(&self) -> RemoteError {
        RemoteError::Undecodable {
            node: self.node.to_string(),
            name: self.name.to_string(),
            detail: "unexpected reply kind".into(),
        }
    }

    /// A call (`call`) or confirmed send of `body` on the pair's path (the urgent lane if
    /// `urgent`), local or remote, waiting up to `timeout` for its answer; fails as soon as
    /// the node is declared down.
    async fn ask(
        &self,
        body: bytes::Bytes,
        call: bool,
        urgent: bool,
        timeout: Duration,
    ) -> RemoteResult<ControlReply> {
        self.precheck()?;
        let timed_out = || RemoteError::Timeout {
            node: self.node.to_string(),
            name: self.name.to_string(),
            after: timeout,
        };
        let timeout_ms = call.then(|| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        if self.is_local() {
            let answer = self.shared.accept(&self.name, body, timeout_ms, urgent);
            return tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| timed_out());
        }
        let (id, answer) = self.shared.pending_call(&self.node);
        let _forget = ForgetCall(&self.shared, id);
        let to = self.name.to_string();
        let signal = match timeout_ms {
            Some(timeout_ms) => Signal::Call {
                to,
                call: id,
                timeout_ms,
                body,
            },
            None => Signal::Confirm { to, call: id, body },
        };
        let (receiver, opts) = self.lane(urgent);
        let exchange = async {
            self.shared
                .node
                .send_pinned(&self.node, receiver, &signal, opts, true)
                .await
                .map_err(|e| map_node_error(&self.node, &self.name, timeout, e))?;
            // Dropped unanswered: the service shut down.
            answer.await.map_err(|_| RemoteError::Closed)
        };
        let mut down = self.shared.down_flag(&self.node);
        tokio::select! {
            r = tokio::time::timeout(timeout, exchange) => r.unwrap_or_else(|_| Err(timed_out())),
            _ = down.wait_for(|d| *d) => Err(RemoteError::NoConnection { node: self.node.to_string() }),
        }
    }

    /// Monitors the process: the returned monitor resolves with its exit reason, with
    /// [`RemoteExitReason::NoProcess`] if nothing is exported under the name, or with
    /// [`RemoteExitReason::NoConnection`] if its node is (or is later) declared down,
    /// leaves, or cannot be reached to set the monitor up. A node crash is therefore
    /// reported within that node's failure-detection bound
    /// ([`Node::detection_bound`]).
    pub async fn monitor(&self) -> RemoteMonitor {
        let (id, rx) = self.shared.monitor(&self.node, &self.name).await;
        RemoteMonitor {
            rx,
            id,
            done: None,
            node: self.node.clone(),
            name: self.name.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Links the local process `local` with this remote process, like
    /// [`Handle::link`] across nodes: when the remote process exits abnormally, `local`
    /// is stopped with [`ExitReason::Linked`](foundation_beam::ExitReason::Linked) whose
    /// inner reason is `Failed("remote link to … broke: <remote reason>")`; when `local`
    /// exits abnormally, the remote process is stopped the same way. Losing the node
    /// (declared down or departed) breaks the link with `noconnection` on both sides.
    /// Normal exits end the link without stopping anyone.
    ///
    /// Errors: [`RemoteError::NoProcess`] (not exported, or already exited),
    /// [`RemoteError::NoConnection`]; then nothing is linked.
    pub async fn link<N: Send + 'static>(&self, local: &Handle<N>) -> RemoteResult<()> {
        match self.shared.link(local, &self.node, &self.name).await {
            Ok(()) => Ok(()),
            Err(e) => self.fail("link", e),
        }
    }
}

/// Removes a pending call when its caller is done with it (answered or not).
struct ForgetCall<'a>(&'a Shared, u64);

impl Drop for ForgetCall<'_> {
    fn drop(&mut self) {
        self.0.forget_call(self.1);
    }
}

fn encode<T: serde::Serialize + ?Sized>(v: &T) -> RemoteResult<bytes::Bytes> {
    rmp_serde::to_vec_named(v)
        .map(bytes::Bytes::from)
        .map_err(|e| RemoteError::Encode(e.to_string()))
}

/// Watches a remote process's exit; made by [`RemoteRef::monitor`].
///
/// Dropping it before it fired removes the monitor on the other node (best effort).
pub struct RemoteMonitor {
    rx: oneshot::Receiver<RemoteExitReason>,
    id: u64,
    done: Option<RemoteExitReason>,
    node: Arc<str>,
    name: Arc<str>,
    shared: Arc<Shared>,
}

impl fmt::Debug for RemoteMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteMonitor({}@{})", self.name, self.node)
    }
}

impl RemoteMonitor {
    /// Waits for the process to exit (or its node to be lost) and returns why. Returns
    /// the same reason again if called after it has fired.
    pub async fn wait(&mut self) -> RemoteExitReason {
        if let Some(r) = &self.done {
            return r.clone();
        }
        let r = (&mut self.rx)
            .await
            .unwrap_or_else(|_| RemoteExitReason::NoConnection {
                node: self.node.to_string(),
            });
        if matches!(
            r,
            RemoteExitReason::NoConnection { .. } | RemoteExitReason::NoProcess
        ) {
            let e = match &r {
                RemoteExitReason::NoProcess => RemoteError::NoProcess {
                    node: self.node.to_string(),
                    name: self.name.to_string(),
                },
                _ => RemoteError::NoConnection {
                    node: self.node.to_string(),
                },
            };
            self.shared.metrics.failed("monitor", &e);
        }
        self.done = Some(r.clone());
        r
    }

    /// The reason, if it has fired (does not wait).
    pub fn try_reason(&mut self) -> Option<RemoteExitReason> {
        if self.done.is_none() {
            if let Ok(r) = self.rx.try_recv() {
                self.done = Some(r);
            }
        }
        self.done.clone()
    }
}

impl Drop for RemoteMonitor {
    fn drop(&mut self) {
        if self.done.is_none() {
            self.shared.demonitor(&self.node, &self.name, self.id);
        }
    }
}

/// A cluster-wide name held by this node; made by [`Remote::register_global`].
///
/// Dropping it keeps the claim for as long as the process runs; call
/// [`release`](Self::release) to give the name up earlier.
pub struct GlobalName {
    name: String,
    export: u64,
    lost: watch::Receiver<Option<NameLost>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for GlobalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalName")
            .field("name", &self.name)
            .field("lost", &*self.lost.borrow())
            .finish()
    }
}

impl GlobalName {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this node still holds it (it may lose it when a partition heals).
    pub fn is_held(&self) -> bool {
        self.lost.borrow().is_none()
            && self.shared.whereis(&self.name).as_deref() == Some(&self.shared.me)
    }

    /// Resolves when this node loses the name to another node's claim (after a partition
    /// heals), with the winner. Pending forever while the name is held.
    pub async fn lost(&mut self) -> NameLost {
        loop {
            if let Some(l) = self.lost.borrow_and_update().clone() {
                return l;
            }
            if self.lost.changed().await.is_err() {
                // Released or withdrawn without a conflict: it will never be lost.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Gives the name up cluster-wide (the process stays exported under it locally).
    pub async fn release(self) {
        self.shared.release_name(&self.name, self.export).await;
    }
}
