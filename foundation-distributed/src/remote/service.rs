//! The per-node remote-process service: exported processes, monitors and links this node
//! holds, the cluster-wide name table, and the tasks that serve them.
//!
//! Tasks (all owned by [`Shared::tasks`], stopped by [`Shared::cancel`], aborted when the
//! service is dropped):
//! * two dispatchers, one per signal receiver (normal, urgent): decode-and-`try_send` into
//!   mailboxes (calls too, so they keep their place among the casts), never awaiting
//!   another peer;
//! * one answering task per call in flight (bounded by [`CALLS_IN_FLIGHT`]): waits for
//!   the process's reply and sends it back;
//! * the outbound task and one sender per peer: send queued control signals (down
//!   notices, link exits, claims, rejection notices) so no inbound path awaits network
//!   I/O, and a peer whose link is down holds up only its own signals;
//! * the membership task: node down/left → `noconnection` for monitors and links there,
//!   their names dropped; node up/joined → this node's claims sent to it;
//! * one exit watcher per exported process and per link end this node made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use foundation_beam::mailbox::{Delivery, SendError};
use foundation_beam::process::{spawn, Context, ExitReason, Handle, Monitor, Process, Reply};
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::{Failure, RemoteError, RemoteResult};
use super::exit::RemoteExitReason;
use super::metrics::Metrics;
use super::names::{Claim, Merged, Table};
use super::wire::{
    key_of, Control, ControlReply, LinkId, Signal, CONTROL, SIGNALS, URGENT_SIGNALS,
};
use super::{NameLost, RemoteMessage};
use crate::channel::Urgency;
use crate::node::{MembershipEvent, Node, SendOptions};

/// Capacity of the outbound control-signal queue; a signal that finds it full is dropped
/// and counted (`foundation_remote_signals_lost_total{reason="queue_full"}`).
const OUTBOUND_QUEUE: usize = 4096;

/// Calls (and confirmed sends) from other nodes being answered at once; beyond, a call is
/// refused with [`Failure::Overloaded`].
pub(crate) const CALLS_IN_FLIGHT: usize = 4096;

/// Fenced signals collected at once (each waiting for its last copies); beyond, a new
/// one takes effect at its first copy (counted,
/// `foundation_remote_signals_lost_total{reason="fence_overflow"}`).
const FENCES_MAX: usize = 4096;

/// How a control signal travels to its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Normal lane, any connection (no order needed).
    Any,
    /// Normal lane, behind what was sent with this key (a pair's path).
    Key(u64),
    /// Normal lane, one copy per connection: behind everything sent before it.
    Fence,
}

/// A fenced signal being collected: (sending node, what).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Fenced {
    Down(u64),
    Link(LinkId),
}

/// A call (or confirmed send) of this node waiting for its answer.
struct PendingCall {
    node: String,
    tx: oneshot::Sender<ControlReply>,
}

type CastFn = Box<dyn Fn(Bytes, bool) -> Result<(), Failure> + Send + Sync>;
/// Queues a call in the mailbox now (or fails now); the future is its answer.
type CallFn = Box<
    dyn Fn(Bytes, bool, Duration) -> Result<BoxFuture<'static, Result<Bytes, Failure>>, Failure>
        + Send
        + Sync,
>;
type LinkFn = Box<dyn Fn(&Handle<ProxyExit>) + Send + Sync>;
type MonitorFn = Box<dyn Fn() -> Monitor + Send + Sync>;

/// A process exported under a name on this node.
pub(crate) struct Export {
    pub(crate) id: u64,
    cast: CastFn,
    call: CallFn,
    link: LinkFn,
    monitor: MonitorFn,
    watchers: Mutex<Watchers>,
}

enum Watchers {
    Running(Vec<Watcher>),
    Exited(RemoteExitReason),
}

/// A node watching an export; `inc` is that node's incarnation when it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watcher {
    Monitor {
        node: String,
        id: u64,
        inc: u64,
    },
    Link {
        node: String,
        link: LinkId,
        inc: u64,
    },
}

impl Watcher {
    fn node(&self) -> &str {
        match self {
            Watcher::Monitor { node, .. } | Watcher::Link { node, .. } => node,
        }
    }

    fn inc(&self) -> u64 {
        match self {
            Watcher::Monitor { inc, .. } | Watcher::Link { inc, .. } => *inc,
        }
    }
}

/// This node's end of a cross-node link: a local stand-in process linked (beam link) to
/// the local process; stopping it with a reason propagates that reason as a link exit.
struct LinkEnd {
    node: String,
    /// The other node's incarnation (`None` while the link is being set up).
    inc: Option<u64>,
    proxy: Handle<ProxyExit>,
}

/// A monitor this node made of a process on `node`.
struct MonitorEnd {
    node: String,
    /// The other node's incarnation (`None` while the monitor is being set up).
    inc: Option<u64>,
    tx: oneshot::Sender<RemoteExitReason>,
}

/// The stand-in's only message: the remote end exited with this reason.
pub(crate) struct ProxyExit(RemoteExitReason);

struct LinkProxy {
    remote: String,
}

impl Process for LinkProxy {
    type Message = ProxyExit;

    async fn handle(&mut self, msg: ProxyExit, ctx: &mut Context<ProxyExit>) {
        ctx.stop(ExitReason::Failed(format!(
            "remote link to {} broke: {}",
            self.remote, msg.0
        )));
    }
}

/// A cluster-wide name held by this node.
struct Held {
    export: u64,
    lost: watch::Sender<Option<NameLost>>,
}

pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) me: String,
    exports: RwLock<HashMap<String, Arc<Export>>>,
    next_id: AtomicU64,
    monitors: Mutex<HashMap<u64, MonitorEnd>>,
    links: Mutex<HashMap<LinkId, LinkEnd>>,
    down: Mutex<HashMap<String, watch::Sender<bool>>>,
    names: Mutex<Table>,
    held: Mutex<HashMap<String, Held>>,
    outbound: mpsc::Sender<(String, Signal, Route)>,
    /// This node's calls waiting for answers, by id.
    calls: Mutex<HashMap<u64, PendingCall>>,
    /// Copies of fenced signals received so far, by (sender, signal).
    fences: Mutex<HashMap<(String, Fenced), u32>>,
    /// Room for answering calls from other nodes.
    answering: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    closed: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping the JoinSet aborts the tasks; cancelling first lets them end cleanly.
        self.cancel.cancel();
    }
}

/// Removes and returns the entries of `map` whose value is `pred`.
fn take_where<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    pred: impl Fn(&V) -> bool,
) -> Vec<V> {
    let keys: Vec<K> = map
        .iter()
        .filter(|(_, v)| pred(v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter().filter_map(|k| map.remove(&k)).collect()
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Failure> {
    rmp_serde::from_slice(b).map_err(|e| Failure::Undecodable(e.to_string()))
}

fn call_failure(e: foundation_beam::Error) -> Failure {
    match e {
        foundation_beam::Error::Timeout { .. } => Failure::Timeout,
        foundation_beam::Error::MailboxFull { .. } => Failure::MailboxFull,
        foundation_beam::Error::Stopped { .. } => Failure::NoProcess,
        _ => Failure::NoReply,
    }
}

fn mailbox_result<M>(r: Result<Delivery, SendError<M>>) -> Result<(), Failure> {
    match r {
        Ok(Delivery::DroppedNewest) | Err(SendError::Full(_)) => Err(Failure::MailboxFull),
        Ok(_) => Ok(()),
        Err(SendError::Closed(_)) => Err(Failure::NoProcess),
    }
}

/// Maps a node-level failure of a request/send to `node` to a remote error.
pub(crate) fn map_node_error(
    node: &str,
    name: &str,
    after: Duration,
    e: crate::Error,
) -> RemoteError {
    match e {
        crate::Error::RequestTimeout { .. } => RemoteError::Timeout {
            node: node.to_string(),
            name: name.to_string(),
            after,
        },
        crate::Error::UnknownNode { .. } | crate::Error::NotConnected { .. } => {
            RemoteError::NoConnection {
                node: node.to_string(),
            }
        }
        crate::Error::NodeShutDown { .. } => RemoteError::Closed,
        e => RemoteError::Node(e),
    }
}

impl Shared {
    /// Starts the service on `node`: registers its receivers and server, starts its tasks.
    pub(crate) fn start(node: &Node) -> Arc<Shared> {
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        // Subscribe before reading the members, so no event falls between the two.
        let events = node.subscribe();
        let normal = node.register::<Signal>(SIGNALS);
        let urgent = node.register::<Signal>(URGENT_SIGNALS);
        let shared = Arc::new(Shared {
            node: node.clone(),
            me: node.name().to_string(),
            exports: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            monitors: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            names: Mutex::new(Table::default()),
            held: Mutex::new(HashMap::new()),
            outbound: out_tx,
            calls: Mutex::new(HashMap::new()),
            fences: Mutex::new(HashMap::new()),
            answering: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
            metrics: Arc::new(Metrics::new()),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
            closed: AtomicBool::new(false),
        });
        for m in node.members() {
            if !m.up {
                shared.set_down(&m.name, true);
            }
        }
        let weak = Arc::downgrade(&shared);
        node.serve(CONTROL, move |from: String, c: Control| {
            let weak = weak.clone();
            async move {
                match weak.upgrade() {
                    Some(s) if !s.closed.load(Ordering::Acquire) => s.on_control(from, c),
                    _ => ControlReply::Failed(Failure::NoProcess),
                }
            }
        });
        shared.spawn(dispatch(Arc::downgrade(&shared), normal, false));
        shared.spawn(dispatch(Arc::downgrade(&shared), urgent, true));
        shared.spawn(outbound(Arc::downgrade(&shared), out_rx));
        shared.spawn(membership(Arc::downgrade(&shared), events));
        shared
    }

    /// Spawns an owned task that ends when the service is cancelled.
    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        let mut tasks = self.tasks.lock();
        while tasks.try_join_next().is_some() {} // reap finished ones
        tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {}
                _ = f => {}
            }
        });
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn check_open(&self) -> RemoteResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(RemoteError::Closed)
        } else {
            Ok(())
        }
    }

    // ---- node state -------------------------------------------------------------------

    fn set_down(&self, node: &str, down: bool) {
        let mut map = self.down.lock();
        match map.get(node) {
            Some(tx) => {
                tx.send_if_modified(|d| std::mem::replace(d, down) != down);
            }
            None if down => {
                map.insert(node.to_string(), watch::Sender::new(true));
            }
            None => {}
        }
    }

    /// A receiver of `node`'s down flag (true: declared down or departed).
    pub(crate) fn down_flag(&self, node: &str) -> watch::Receiver<bool> {
        let mut map = self.down.lock();
        match map.get(node) {
            Some(tx) => tx.subscribe(),
            None => {
                let tx = watch::Sender::new(false);
                let rx = tx.subscribe();
                map.insert(node.to_string(), tx);
                rx
            }
        }
    }

    pub(crate) fn is_down(&self, node: &str) -> bool {
        self.down.lock().get(node).is_some_and(|tx| *tx.borrow())
    }

    /// `node` was declared down or left: everything that depends on it learns
    /// `noconnection`, and its names are dropped.
    fn on_node_down(&self, node: &str) {
        self.set_down(node, true);
        self.end_ties(node, |n, _| n == node);
        self.names.lock().drop_node(node);
        self.fences.lock().retain(|(from, _), _| from != node);
    }

    /// `node` runs as incarnation `inc`: monitors, links and watchers that belong to an
    /// earlier run of it are gone with that run (`noconnection`), and so are its claims.
    fn on_node_restarted(&self, node: &str, inc: u64) {
        self.end_ties(node, |n, i| n == node && i.is_some_and(|i| i < inc));
        self.names.lock().drop_older(node, inc);
    }

    /// Ends with `noconnection` for `node` this node's monitors and links, and forgets the
    /// watchers of its exports, whose (node, incarnation) is `gone` (an incarnation not
    /// known yet is `None`).
    fn end_ties(&self, node: &str, gone: impl Fn(&str, Option<u64>) -> bool) {
        let reason = RemoteExitReason::NoConnection {
            node: node.to_string(),
        };
        for m in take_where(&mut self.monitors.lock(), |e| gone(&e.node, e.inc)) {
            let _ = m.tx.send(reason.clone());
        }
        for l in take_where(&mut self.links.lock(), |e| gone(&e.node, e.inc)) {
            let _ = l.proxy.try_send_urgent(ProxyExit(reason.clone()));
        }
        let exports: Vec<Arc<Export>> = self.exports.read().values().cloned().collect();
        for e in exports {
            if let Watchers::Running(w) = &mut *e.watchers.lock() {
                w.retain(|w| !gone(w.node(), Some(w.inc())));
            }
        }
    }

    /// Asks `node` which run it is, then forgets what belonged to earlier runs. Spawned
    /// when the membership reports it joined (which it also does for a restart).
    fn probe_incarnation(self: &Arc<Self>, node: String) {
        let weak = Arc::downgrade(self);
        let n = self.node.clone();
        self.spawn(async move {
            let r = n
                .request::<_, ControlReply>(&node, CONTROL, &Control::Whoami, SETUP_TIMEOUT)
                .await;
            if let (Ok(ControlReply::Incarnation(inc)), Some(s)) = (r, weak.upgrade()) {
                s.on_node_restarted(&node, inc);
            }
        });
    }

    fn on_node_up(&self, node: &str) {
        self.set_down(node, false);
        let claims = self.names.lock().owned_by(&self.me);
        if !claims.is_empty() {
            self.signal(node, Signal::Claims { claims }, Route::Any);
        }
    }

    /// Sends a control signal to `node` (handled at once if that is this node), waiting
    /// for room in the outbound queue but not for the network.
    async fn send_signal(&self, node: String, s: Signal, route: Route) {
        if node == self.me {
            self.on_signal(node, s, false);
        } else if self.outbound.send((node, s, route)).await.is_err() {
            self.metrics.signal_lost("closed");
        }
    }

    /// Queues a control signal for `node` without waiting; counted if the queue is full.
    fn signal(&self, node: &str, s: Signal, route: Route) {
        if self
            .outbound
            .try_send((node.to_string(), s, route))
            .is_err()
        {
            self.metrics.signal_lost("queue_full");
        }
    }

    fn up_peers(&self) -> Vec<String> {
        self.node
            .members()
            .into_iter()
            .filter(|m| m.up && m.name != self.me)
            .map(|m| m.name)
            .collect()
    }

    // ---- exports ----------------------------------------------------------------------

    /// Exports `handle` under `name`.
    pub(crate) fn export<M: RemoteMessage>(
        self: &Arc<Self>,
        name: &str,
        handle: &Handle<M>,
    ) -> RemoteResult<u64> {
        self.check_open()?;
        let id = self.next_id();
        let h = handle.clone();
        let cast: CastFn = Box::new(move |bytes, urgent| {
            let msg = M::from_cast(decode::<M::Cast>(&bytes)?);
            mailbox_result(if urgent {
                h.try_send_urgent(msg)
            } else {
                h.try_send(msg)
            })
        });
        let h = handle.clone();
        let call: CallFn = Box::new(move |bytes, urgent, timeout| {
            let req = decode::<M::Call>(&bytes)?;
            let make = |reply: Reply<M::Reply>| M::from_call(req, reply);
            let answer = h.try_call(make, timeout, urgent).map_err(call_failure)?;
            Ok(Box::pin(async move {
                match answer.await {
                    Ok(answer) => rmp_serde::to_vec_named(&answer)
                        .map(Bytes::from)
                        .map_err(|e| Failure::Undecodable(format!("cannot encode reply: {e}"))),
                    Err(e) => Err(call_failure(e)),
                }
            }) as BoxFuture<'static, _>)
        });
        let h = handle.clone();
        let link: LinkFn = Box::new(move |proxy| h.link(proxy));
        let h = handle.clone();
        let monitor: MonitorFn = Box::new(move || h.monitor());
        let export = Arc::new(Export {
            id,
            cast,
            call,
            link,
            monitor,
            watchers: Mutex::new(Watchers::Running(Vec::new())),
        });
        {
            let mut exports = self.exports.write();
            if let Some(old) = exports.get(name) {
                if matches!(*old.watchers.lock(), Watchers::Running(_)) {
                    return Err(RemoteError::NameTaken {
                        name: name.to_string(),
                        node: self.me.clone(),
                    });
                }
            }
            exports.insert(name.to_string(), export);
        }
        let mut monitor = handle.monitor();
        let weak = Arc::downgrade(self);
        let name = name.to_string();
        self.spawn(async move {
            let reason = monitor.wait().await;
            if let Some(s) = weak.upgrade() {
                s.on_export_exit(&name, id, RemoteExitReason::from(&reason))
                    .await;
            }
        });
        Ok(id)
    }

    /// Withdraws the export `name` (any id when `id` is `None`); watchers learn `reason`.
    pub(crate) async fn on_export_exit(&self, name: &str, id: u64, reason: RemoteExitReason) {
        let export = {
            let mut exports = self.exports.write();
            match exports.get(name) {
                Some(e) if e.id == id => exports.remove(name),
                _ => None,
            }
        };
        let Some(export) = export else { return };
        let watchers = match std::mem::replace(
            &mut *export.watchers.lock(),
            Watchers::Exited(reason.clone()),
        ) {
            Watchers::Running(w) => w,
            Watchers::Exited(_) => Vec::new(),
        };
        for w in watchers {
            let (node, s) = match w {
                Watcher::Monitor { node, id, .. } => (
                    node,
                    Signal::Down {
                        monitor: id,
                        reason: reason.clone(),
                        fence: 1,
                    },
                ),
                Watcher::Link { node, link, .. } => {
                    // Our end's stand-in is no longer needed (a failure has already
                    // reached it through the beam link).
                    self.links.lock().remove(&link);
                    (
                        node,
                        Signal::LinkExit {
                            link,
                            reason: reason.clone(),
                            fence: 1,
                        },
                    )
                }
            };
            // Fenced: behind every message the process sent to that node before it
            // exited, whichever of its processes they went to (D400).
            self.send_signal(node, s, Route::Fence).await;
        }
        self.release_names_of(id).await;
    }

    async fn release_names_of(&self, export: u64) {
        let names: Vec<String> = {
            let mut held = self.held.lock();
            let names: Vec<String> = held
                .iter()
                .filter(|(_, h)| h.export == export)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &names {
                held.remove(n);
            }
            names
        };
        for name in names {
            self.release_name(&name, export).await;
        }
    }

    pub(crate) async fn release_name(&self, name: &str, export: u64) {
        {
            let mut held = self.held.lock();
            if held.get(name).is_some_and(|h| h.export == export) {
                held.remove(name);
            }
        }
        if !self.names.lock().release(name, &self.me, export) {
            return;
        }
        for peer in self.up_peers() {
            let s = Signal::Release {
                name: name.to_string(),
                export,
            };
            if self.outbound.send((peer, s, Route::Any)).await.is_err() {
                self.metrics.signal_lost("closed");
            }
        }
    }

    /// Removes the export `name` from this node (the process keeps running).
    pub(crate) async fn unexport(&self, name: &str) -> bool {
        let id = self.exports.read().get(name).map(|e| e.id);
        match id {
            Some(id) => {
                self.on_export_exit(name, id, RemoteExitReason::NoProcess)
                    .await;
                true
            }
            None => false,
        }
    }

    pub(crate) fn export_of(&self, name: &str) -> Option<Arc<Export>> {
        self.exports.read().get(name).cloned()
    }

    // ---- cluster-wide names -----------------------------------------------------------

    pub(crate) async fn claim_name(
        &self,
        name: &str,
        export: u64,
    ) -> RemoteResult<watch::Receiver<Option<NameLost>>> {
        let claim = self
            .names
            .lock()
            .claim(name, &self.me, self.node.incarnation(), export)
            .map_err(|held| RemoteError::NameTaken {
                name: name.to_string(),
                node: held.node,
            })?;
        let (tx, rx) = watch::channel(None);
        self.held
            .lock()
            .insert(name.to_string(), Held { export, lost: tx });
        for peer in self.up_peers() {
            let s = Signal::Claims {
                claims: vec![claim.clone()],
            };
            if self.outbound.send((peer, s, Route::Any)).await.is_err() {
                self.metrics.signal_lost("closed");
            }
        }
        Ok(rx)
    }

    pub(crate) fn whereis(&self, name: &str) -> Option<String> {
        self.names.lock().get(name).map(|c| c.node.clone())
    }

    fn merge_claims(&self, from: &str, claims: Vec<Claim>) {
        let mut answer = Vec::new();
        if let Some(newest) = claims
            .iter()
            .filter(|c| c.node == from)
            .map(|c| c.inc)
            .max()
        {
            self.names.lock().drop_older(from, newest);
        }
        for c in claims {
            if c.node != from {
                // Only a name's owner announces its claims.
                self.metrics.signal_lost("foreign_claim");
                continue;
            }
            let merged = self.names.lock().merge(c);
            match merged {
                Merged::Holds => {}
                Merged::Replaced { loser } => {
                    self.metrics.name_conflict();
                    if loser.node == self.me {
                        self.lose(&loser, from);
                    }
                }
                Merged::Lost { winner } => {
                    self.metrics.name_conflict();
                    if winner.node == self.me {
                        answer.push(winner);
                    }
                }
            }
        }
        if !answer.is_empty() {
            // Tell the loser who won, so it gives the name up even if it never hears the
            // winner's claim otherwise.
            self.signal(from, Signal::Claims { claims: answer }, Route::Any);
        }
    }

    fn lose(&self, loser: &Claim, winner: &str) {
        let held = {
            let mut held = self.held.lock();
            match held.get(&loser.name) {
                Some(h) if h.export == loser.export => held.remove(&loser.name),
                _ => None,
            }
        };
        if let Some(h) = held {
            tracing::info!(name = %loser.name, winner, "cluster-wide name lost to another node");
            let _ = h.lost.send(Some(NameLost {
                name: loser.name.clone(),
                winner: winner.to_string(),
            }));
        }
    }

    // ---- inbound ----------------------------------------------------------------------

    /// Delivers a cast to the export `to`; a failure is counted and reported back.
    pub(crate) fn deliver(
        &self,
        from: &str,
        to: &str,
        body: Bytes,
        urgent: bool,
    ) -> Result<(), Failure> {
        let r = match self.export_of(to) {
            Some(e) => (e.cast)(body, urgent),
            None => Err(Failure::NoProcess),
        };
        if let Err(f) = &r {
            self.metrics.dropped(f);
            if from != self.me {
                self.signal(
                    from,
                    Signal::Rejected {
                        to: to.to_string(),
                        failure: f.clone(),
                    },
                    Route::Any,
                );
            }
        }
        r
    }

    /// Registers a call (or confirmed send) of this node to `node`: its id and the
    /// receiver of its answer. [`forget_call`](Self::forget_call) removes it.
    pub(crate) fn pending_call(&self, node: &str) -> (u64, oneshot::Receiver<ControlReply>) {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let node = node.to_string();
        self.calls.lock().insert(id, PendingCall { node, tx });
        (id, rx)
    }

    /// Forgets call `id` (answered, timed out, or given up).
    pub(crate) fn forget_call(&self, id: u64) {
        self.calls.lock().remove(&id);
    }

    /// Whether the last copy of a fenced signal has arrived (`fence` copies in all).
    fn fence_passed(&self, from: &str, what: Fenced, fence: u32) -> bool {
        if fence <= 1 {
            return true;
        }
        let mut fences = self.fences.lock();
        let key = (from.to_string(), what.clone());
        if fences.len() >= FENCES_MAX && !fences.contains_key(&key) {
            // Too many incomplete fences (lost copies, or a peer misbehaving): act now,
            // losing only the order, and count it.
            drop(fences);
            self.metrics.signal_lost("fence_overflow");
            return true;
        }
        let seen = fences.entry(key).or_insert(0);
        *seen += 1;
        if *seen < fence {
            return false;
        }
        fences.remove(&(from.to_string(), what));
        true
    }

    fn on_signal(&self, from: String, s: Signal, urgent: bool) {
        match s {
            Signal::Cast { to, body } => {
                let _ = self.deliver(&from, &to, body, urgent);
            }
            Signal::Call {
                to,
                call,
                timeout_ms,
                body,
            } => {
                let answer = self.accept(&to, body, Some(timeout_ms), urgent);
                self.answer(from, call, answer);
            }
            Signal::Confirm { to, call, body } => {
                let answer = self.accept(&to, body, None, urgent);
                self.answer(from, call, answer);
            }
            Signal::Answer { call, reply } => {
                let pending = {
                    let mut calls = self.calls.lock();
                    match calls.get(&call) {
                        Some(p) if p.node == from => calls.remove(&call),
                        _ => None,
                    }
                };
                match pending {
                    Some(p) => {
                        let _ = p.tx.send(reply);
                    }
                    None => self.metrics.late_answer(),
                }
            }
            Signal::Down {
                monitor,
                reason,
                fence,
            } => {
                if !self.fence_passed(&from, Fenced::Down(monitor), fence) {
                    return;
                }
                let m = self.monitors.lock().remove(&monitor);
                if let Some(m) = m.filter(|m| m.node == from) {
                    let _ = m.tx.send(reason);
                }
            }
            Signal::LinkExit {
                link,
                reason,
                fence,
            } => {
                if !self.fence_passed(&from, Fenced::Link(link.clone()), fence) {
                    return;
                }
                let end = {
                    let mut links = self.links.lock();
                    match links.get(&link) {
                        Some(e) if e.node == from => links.remove(&link),
                        _ => None,
                    }
                };
                if let Some(end) = end {
                    if reason.is_abnormal() {
                        let _ = end.proxy.try_send_urgent(ProxyExit(reason));
                    }
                }
            }
            Signal::Demonitor { to, monitor } => {
                if let Some(e) = self.export_of(&to) {
                    if let Watchers::Running(w) = &mut *e.watchers.lock() {
                        w.retain(|w| {
                            !matches!(w, Watcher::Monitor { node, id, .. }
                                if *node == from && *id == monitor)
                        });
                    }
                }
            }
            Signal::Rejected { failure, .. } => self.metrics.rejected(&failure),
            Signal::Claims { claims } => self.merge_claims(&from, claims),
            Signal::Release { name, export } => {
                self.names.lock().release(&name, &from, export);
            }
        }
    }

    /// Starts a call (`timeout_ms` set) or a confirmed send of `body` to the export `to`:
    /// queued in its mailbox now, in order with the casts, or failed now. The returned
    /// future (which does not hold the service) is the answer.
    pub(crate) fn accept(
        &self,
        to: &str,
        body: Bytes,
        timeout_ms: Option<u64>,
        urgent: bool,
    ) -> BoxFuture<'static, ControlReply> {
        let Some(timeout_ms) = timeout_ms else {
            // The caller gets a failure as an error; it is counted here too.
            let reply = match self.deliver(&self.me.clone(), to, body, urgent) {
                Ok(()) => ControlReply::Done,
                Err(f) => ControlReply::Failed(f),
            };
            return Box::pin(std::future::ready(reply));
        };
        let started = match self.export_of(to) {
            Some(e) => (e.call)(body, urgent, Duration::from_millis(timeout_ms)),
            None => Err(Failure::NoProcess),
        };
        match started {
            Ok(answer) => Box::pin(async move {
                match answer.await {
                    Ok(bytes) => ControlReply::Answer(bytes),
                    Err(f) => ControlReply::Failed(f),
                }
            }),
            Err(f) => Box::pin(std::future::ready(ControlReply::Failed(f))),
        }
    }

    /// Sends `answer` to call `call` of `from` once it is ready (on the urgent lane, from
    /// an owned task), or refuses the call if too many are being answered.
    fn answer(&self, from: String, call: u64, answer: BoxFuture<'static, ControlReply>) {
        let permit = self.answering.clone().try_acquire_owned();
        let (node, metrics) = (self.node.clone(), self.metrics.clone());
        self.spawn(async move {
            let reply = match permit {
                Ok(_permit) => answer.await,
                Err(_) => ControlReply::Failed(Failure::Overloaded),
            };
            let opts = SendOptions {
                urgency: Urgency::Urgent,
                key: None,
            };
            let s = Signal::Answer { call, reply };
            // A lost answer leaves the caller to its timeout (or its node-down error).
            if node
                .send_pinned(&from, URGENT_SIGNALS, &s, opts, true)
                .await
                .is_err()
            {
                metrics.signal_lost("answer_failed");
            }
        });
    }

    /// Handles a control request (monitor and link set-ups).
    pub(crate) fn on_control(&self, from: String, c: Control) -> ControlReply {
        match c {
            Control::Whoami => ControlReply::Incarnation(self.node.incarnation()),
            Control::Monitor { to, monitor, inc } => {
                let Some(e) = self.export_of(&to) else {
                    return ControlReply::Exited(RemoteExitReason::NoProcess);
                };
                let mut w = e.watchers.lock();
                match &mut *w {
                    Watchers::Running(w) => {
                        w.push(Watcher::Monitor {
                            node: from,
                            id: monitor,
                            inc,
                        });
                        ControlReply::Incarnation(self.node.incarnation())
                    }
                    Watchers::Exited(r) => ControlReply::Exited(r.clone()),
                }
            }
            Control::Link { to, link, inc } => {
                let Some(e) = self.export_of(&to) else {
                    return ControlReply::Exited(RemoteExitReason::NoProcess);
                };
                let proxy = spawn(LinkProxy {
                    remote: format!("a process on node `{from}`"),
                });
                let mut w = e.watchers.lock();
                match &mut *w {
                    Watchers::Running(w) => {
                        (e.link)(&proxy);
                        w.push(Watcher::Link {
                            node: from.clone(),
                            link: link.clone(),
                            inc,
                        });
                        self.links.lock().insert(
                            link,
                            LinkEnd {
                                node: from,
                                inc: Some(inc),
                                proxy,
                            },
                        );
                        ControlReply::Incarnation(self.node.incarnation())
                    }
                    Watchers::Exited(r) => ControlReply::Exited(r.clone()),
                }
            }
        }
    }

    // ---- this node's monitors and links of remote processes -----------------------------

    /// Sets up a monitor of `name` on `node`; the receiver resolves with the exit reason.
    pub(crate) async fn monitor(
        self: &Arc<Self>,
        node: &str,
        name: &str,
    ) -> (u64, oneshot::Receiver<RemoteExitReason>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id();
        let no_connection = RemoteExitReason::NoConnection {
            node: node.to_string(),
        };
        if self.check_open().is_err() || self.is_down(node) {
            let _ = tx.send(no_connection);
            return (id, rx);
        }
        // Registered before asking, so a `Down` racing the reply still finds it.
        self.monitors.lock().insert(
            id,
            MonitorEnd {
                node: node.to_string(),
                inc: None,
                tx,
            },
        );
        let c = Control::Monitor {
            to: name.to_string(),
            monitor: id,
            inc: self.node.incarnation(),
        };
        if node == self.me {
            // Local: the same bookkeeping, without the network.
            let reply = self.on_control(self.me.clone(), c);
            self.settle_monitor(id, reply);
            return (id, rx);
        }
        let r = self
            .node
            .request::<_, ControlReply>(node, CONTROL, &c, SETUP_TIMEOUT)
            .await;
        match r {
            Ok(reply) => self.settle_monitor(id, reply),
            Err(e) => {
                tracing::debug!(node, name, error = %e, "monitor set-up failed: noconnection");
                if let Some(m) = self.monitors.lock().remove(&id) {
                    let _ = m.tx.send(no_connection);
                }
            }
        }
        (id, rx)
    }

    fn settle_monitor(&self, id: u64, reply: ControlReply) {
        let reason = match reply {
            ControlReply::Incarnation(inc) => {
                if let Some(m) = self.monitors.lock().get_mut(&id) {
                    m.inc = Some(inc);
                }
                return;
            }
            ControlReply::Exited(r) => r,
            _ => RemoteExitReason::NoProcess,
        };
        if let Some(m) = self.monitors.lock().remove(&id) {
            let _ = m.tx.send(reason);
        }
    }

    /// Forgets monitor `id` of `name` on `node` (the `RemoteMonitor` was dropped unfired).
    pub(crate) fn demonitor(&self, node: &str, name: &str, id: u64) {
        if self.monitors.lock().remove(&id).is_none() {
            return;
        }
        let s = Signal::Demonitor {
            to: name.to_string(),
            monitor: id,
        };
        if node == self.me {
            self.on_signal(self.me.clone(), s, false);
        } else {
            // On the pair's path: behind the casts and calls sent to it before.
            self.signal(node, s, Route::Key(key_of(node, name)));
        }
    }

    /// Links `local` with `name` on `node`.
    pub(crate) async fn link<N: Send + 'static>(
        self: &Arc<Self>,
        local: &Handle<N>,
        node: &str,
        name: &str,
    ) -> RemoteResult<()> {
        self.check_open()?;
        if self.is_down(node) {
            return Err(RemoteError::NoConnection {
                node: node.to_string(),
            });
        }
        if node == self.me {
            return self.link_local(local, name);
        }
        let link = LinkId {
            origin: self.me.clone(),
            id: self.next_id(),
        };
        let proxy = spawn(LinkProxy {
            remote: format!("`{name}` on node `{node}`"),
        });
        local.link(&proxy);
        self.links.lock().insert(
            link.clone(),
            LinkEnd {
                node: node.to_string(),
                inc: None,
                proxy,
            },
        );
        let c = Control::Link {
            to: name.to_string(),
            link: link.clone(),
            inc: self.node.incarnation(),
        };
        let reply = self
            .node
            .request::<_, ControlReply>(node, CONTROL, &c, SETUP_TIMEOUT)
            .await;
        let err = match reply {
            Ok(ControlReply::Incarnation(inc)) => {
                if let Some(end) = self.links.lock().get_mut(&link) {
                    end.inc = Some(inc);
                }
                None
            }
            Ok(ControlReply::Failed(f)) => Some(f.into_error(node, name, SETUP_TIMEOUT)),
            Ok(_) => Some(RemoteError::NoProcess {
                node: node.to_string(),
                name: name.to_string(),
            }),
            Err(e) => Some(map_node_error(node, name, SETUP_TIMEOUT, e)),
        };
        if let Some(e) = err {
            // Dropping the stand-in's last handle ends it normally: no exit propagates.
            self.links.lock().remove(&link);
            return Err(e);
        }
        let mut monitor: Monitor = local.monitor();
        let weak = Arc::downgrade(self);
        let node = node.to_string();
        let key = key_of(&node, name);
        self.spawn(async move {
            let reason = monitor.wait().await;
            let Some(s) = weak.upgrade() else { return };
            // Still linked: tell the other end (it stops its process if this was a failure,
            // or just forgets the link if it was normal).
            if s.links.lock().remove(&link).is_some() {
                let sig = Signal::LinkExit {
                    link,
                    reason: RemoteExitReason::from(&reason),
                    fence: 1,
                };
                // On the pair's path: behind what was sent to that process before.
                s.send_signal(node, sig, Route::Key(key)).await;
            }
        });
        Ok(())
    }

    /// Links `local` with the process exported as `name` on this node: one stand-in
    /// linked to both, so an abnormal exit of either reaches the other through it.
    fn link_local<N: Send + 'static>(&self, local: &Handle<N>, name: &str) -> RemoteResult<()> {
        let no_process = || RemoteError::NoProcess {
            node: self.me.clone(),
            name: name.to_string(),
        };
        let export = self.export_of(name).ok_or_else(no_process)?;
        let proxy = spawn(LinkProxy {
            remote: format!("`{name}` on this node"),
        });
        {
            let w = export.watchers.lock();
            if matches!(*w, Watchers::Exited(_)) {
                return Err(no_process());
            }
            (export.link)(&proxy);
        }
        local.link(&proxy);
        let (mut lm, mut em, mut pm) = (local.monitor(), (export.monitor)(), proxy.monitor());
        self.spawn(async move {
            let _keep = proxy; // the stand-in lives while both ends do
            let abnormal = tokio::select! {
                r = lm.wait() => r.is_abnormal(),
                r = em.wait() => r.is_abnormal(),
            };
            if abnormal {
                // The failure is on its way through the stand-in; let it pass.
                pm.wait().await;
            }
        });
        Ok(())
    }

    // ---- shutdown ---------------------------------------------------------------------

    /// Stops the service: exports withdrawn (their watchers told `noconnection` for this
    /// node, within `deadline`), tasks stopped.
    pub(crate) async fn shutdown(&self, deadline: Duration) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = RemoteExitReason::NoConnection {
            node: self.me.clone(),
        };
        let exports: Vec<(String, Arc<Export>)> = self.exports.write().drain().collect();
        let mut notices = Vec::new();
        for (_, e) in exports {
            if let Watchers::Running(w) =
                std::mem::replace(&mut *e.watchers.lock(), Watchers::Exited(reason.clone()))
            {
                for w in w {
                    match w {
                        Watcher::Monitor { node, id, .. } => notices.push((
                            node,
                            Signal::Down {
                                monitor: id,
                                reason: reason.clone(),
                                fence: 1,
                            },
                        )),
                        Watcher::Link { node, link, .. } => notices.push((
                            node,
                            Signal::LinkExit {
                                link,
                                reason: reason.clone(),
                                fence: 1,
                            },
                        )),
                    }
                }
            }
        }
        let node = self.node.clone();
        let send_all = async move {
            for (peer, s) in notices {
                if peer != node.name() {
                    let _ = transmit(&node, &peer, s, Route::Fence).await;
                }
            }
        };
        let _ = tokio::time::timeout(deadline, send_all).await;
        self.cancel.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        let _ = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        for (_, m) in self.monitors.lock().drain() {
            let _ = m.tx.send(RemoteExitReason::NoConnection {
                node: m.node.clone(),
            });
        }
        self.links.lock().clear();
        // Calls waiting for answers fail with `Closed` (their senders are dropped).
        self.calls.lock().clear();
    }
}

/// Timeout of monitor and link set-up requests.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

async fn dispatch(weak: Weak<Shared>, mut rx: mpsc::Receiver<(String, Signal)>, urgent: bool) {
    while let Some((from, s)) = rx.recv().await {
        let Some(shared) = weak.upgrade() else { return };
        shared.on_signal(from, s, urgent);
    }
}

/// Capacity of each peer's signal queue behind the outbound dispatcher.
const PEER_QUEUE: usize = 256;

/// Hands queued signals to one sender task per peer, so a peer whose link is down (the
/// node waits for it) does not hold up signals to the others.
async fn outbound(weak: Weak<Shared>, mut rx: mpsc::Receiver<(String, Signal, Route)>) {
    let mut peers: HashMap<String, mpsc::Sender<(Signal, Route)>> = HashMap::new();
    while let Some((peer, s, route)) = rx.recv().await {
        let Some(shared) = weak.upgrade() else { return };
        if peer == shared.me {
            continue;
        }
        let tx = peers.entry(peer.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            shared.spawn(peer_sender(weak.clone(), peer, rx));
            tx
        });
        if tx.try_send((s, route)).is_err() {
            shared.metrics.signal_lost("queue_full");
        }
    }
}

async fn peer_sender(weak: Weak<Shared>, peer: String, mut rx: mpsc::Receiver<(Signal, Route)>) {
    while let Some((s, route)) = rx.recv().await {
        let Some(shared) = weak.upgrade() else { return };
        let node = shared.node.clone();
        drop(shared);
        if transmit(&node, &peer, s, route).await.is_err() {
            if let Some(shared) = weak.upgrade() {
                shared.metrics.signal_lost("send_failed");
            }
        }
    }
}

/// Sends a control signal to `peer` on the normal lane, the way `route` says; a fenced
/// one (`Down`, `LinkExit`) as one copy per connection of the lane.
async fn transmit(node: &Node, peer: &str, mut s: Signal, route: Route) -> crate::Result<()> {
    let keys = match route {
        Route::Any => vec![None],
        Route::Key(k) => vec![Some(k)],
        Route::Fence => node
            .fence_keys(Urgency::Normal)
            .into_iter()
            .map(Some)
            .collect(),
    };
    let copies = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    if let Signal::Down { fence, .. } | Signal::LinkExit { fence, .. } = &mut s {
        *fence = if route == Route::Fence { copies } else { 1 };
    }
    for key in keys {
        let opts = SendOptions {
            urgency: Urgency::Normal,
            key,
        };
        // Fence copies are not appended to earlier frames: each stays behind its connection.
        node.send_pinned(peer, SIGNALS, &s, opts, route != Route::Fence)
            .await?;
    }
    Ok(())
}

async fn membership(weak: Weak<Shared>, mut events: broadcast::Receiver<MembershipEvent>) {
    loop {
        let e = events.recv().await;
        let Some(shared) = weak.upgrade() else { return };
        match e {
            Ok(MembershipEvent::Down(n) | MembershipEvent::Left(n)) => shared.on_node_down(&n),
            Ok(MembershipEvent::Up(n)) => shared.on_node_up(&n),
            Ok(MembershipEvent::Joined(n)) => {
                // New, or a new run of a node we knew: what we held for an earlier run of
                // it is gone (found out by asking it which run it is).
                shared.on_node_up(&n);
                shared.probe_incarnation(n);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Missed events: take the node's current view as the truth.
                let members = shared.node.members();
                for m in &members {
                    if m.name == shared.me {
                        continue;
                    }
                    if m.up {
                        shared.on_node_up(&m.name);
                    } else {
                        shared.on_node_down(&m.name);
                    }
                }
                let known: Vec<String> = shared.down.lock().keys().cloned().collect();
                for n in known {
                    if !members.iter().any(|m| m.name == n) {
                        shared.on_node_down(&n);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
