//! Nodes: a running cluster member.
//!
//! A [`Node`] listens on a [`Transport`], links to the peers its [`Topology`] wants
//! through named [`channel`](crate::channel)s, keeps membership with heartbeats and a
//! φ-accrual [`FailureDetector`], and lets application code — the same whatever the
//! topology — register named receivers, `send` to a name on any node (directly or relayed),
//! make requests with a timeout, and `broadcast`.
//!
//! Wire messages are MessagePack; application payloads are any serde type. Heartbeats and
//! membership go on `coordination`; application messages are routed by size and urgency
//! ([`channel::route`](crate::channel::route)).
//!
//! Membership: a node joins through seeds (addresses); every link starts with a `Hello`
//! carrying the sender's view of the members (name, address, role), so views converge by
//! gossip on every new link. A member whose φ crosses the threshold is reported
//! [`MembershipEvent::Down`]; one heard from again, [`MembershipEvent::Up`]; one that
//! says goodbye, [`MembershipEvent::Left`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelSettings, Channels, Inbound, Inbox, MessageMeta, Urgency};
use crate::error::{Error, Result};
use crate::interpose::Interposer;
use crate::membership::{FailureDetector, PhiSettings};
use crate::topology::{Change, Member, Role, Topology, TopologyKind};
use crate::transport::Transport;
use foundation_beam::core::telemetry::TaskGuard;

/// A membership event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node joined the cluster view.
    Joined(String),
    /// A node left on purpose.
    Left(String),
    /// A node is suspected down (φ above the threshold).
    Down(String),
    /// A node suspected down was heard from again.
    Up(String),
}

/// A member as [`Node::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Address it listens on.
    pub addr: String,
    /// Role in the topology.
    pub role: Role,
    /// Whether it is considered up.
    pub up: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Wire {
    /// The sender's view: (name, address, role, incarnation) per member.
    Hello {
        members: Vec<(String, String, Role, u64)>,
    },
    Heartbeat,
    /// A protocol message of the topology manager.
    Topology {
        payload: Bytes,
    },
    Leave,
    Send {
        to_node: String,
        to_name: String,
        from: String,
        body: Bytes,
    },
    Request {
        id: u64,
        to_node: String,
        to_name: String,
        from: String,
        body: Bytes,
    },
    Reply {
        id: u64,
        to_node: String,
        body: std::result::Result<Bytes, String>,
    },
    Broadcast {
        origin: String,
        id: u64,
        to_name: String,
        body: Bytes,
    },
}

impl Wire {
    /// The node this message must be relayed to, and how, when it is addressed to a node
    /// other than `me`.
    fn relay_to(&self, me: &str) -> Option<(&str, SendOptions)> {
        let (to, opts) = match self {
            Wire::Send { to_node, .. } => (to_node, SendOptions::default()),
            Wire::Request { to_node, .. } | Wire::Reply { to_node, .. } => (to_node, URGENT),
            _ => return None,
        };
        (to != me).then_some((to.as_str(), opts))
    }
}

/// Requests and replies go urgent, unkeyed.
const URGENT: SendOptions = SendOptions {
    urgency: Urgency::Urgent,
    key: None,
};

/// Options of a [`Node::send`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// Urgency (urgent goes on `coordination`, background on `gossip`).
    pub urgency: Urgency,
    /// A partition key: messages with the same key keep their order.
    pub key: Option<u64>,
}

type Handler = Arc<
    dyn Fn(
            String,
            Bytes,
        )
            -> Option<futures_util::future::BoxFuture<'static, std::result::Result<Bytes, String>>>
        + Send
        + Sync,
>;

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Address to listen on (`127.0.0.1:0`, `mem://a`).
    pub listen: String,
    /// Role in the topology.
    pub role: Role,
    /// The topology.
    pub topology: TopologyKind,
    /// Channels.
    pub channels: ChannelSettings,
    /// Heartbeat interval. Default 200 ms.
    pub heartbeat: Duration,
    /// Failure detector settings.
    pub detector: PhiSettings,
    /// Capacity of each receiver's queue.
    pub receiver_capacity: usize,
    /// Fault injection applied to everything this node sends (tests).
    pub interposer: Option<Arc<Interposer>>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            listen: "127.0.0.1:0".into(),
            role: Role::Peer,
            topology: TopologyKind::FullMesh,
            channels: ChannelSettings::default(),
            heartbeat: Duration::from_millis(200),
            detector: PhiSettings {
                min_std_dev_ms: 50,
                first_heartbeat_estimate_ms: 200,
                ..PhiSettings::default()
            },
            receiver_capacity: 1024,
            interposer: None,
        }
    }
}

/// Broadcasts already delivered, by (origin, id), oldest first for eviction.
type SeenBroadcasts = (HashSet<(String, u64)>, VecDeque<(String, u64)>);

struct Inner {
    name: String,
    addr: String,
    transport: Arc<dyn Transport>,
    settings: NodeSettings,
    /// Known members: name → (addr, role, incarnation). The incarnation is the member's
    /// start time (µs since the epoch): a restarted node has a larger one.
    members: RwLock<HashMap<String, (String, Role, u64)>>,
    /// Members that left, with the incarnation that left: gossip about that incarnation
    /// (or an older one) is ignored, so a departed node is not resurrected by a stale
    /// view, while a restart (a newer incarnation) is accepted.
    departed: Mutex<HashMap<String, u64>>,
    down: Mutex<HashSet<String>>,
    links: tokio::sync::Mutex<HashMap<String, Arc<Channels>>>,
    topology: Mutex<Topology>,
    detector: Mutex<FailureDetector<String>>,
    handlers: RwLock<HashMap<String, Handler>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Bytes, String>>>>,
    seen: Mutex<SeenBroadcasts>,
    next_id: AtomicU64,
    events: broadcast::Sender<MembershipEvent>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Reconnect backoff per peer: (next attempt, current delay).
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
}

/// A running cluster member. Cheap to clone; [`shutdown`](Self::shutdown) stops it (and
/// dropping the last clone cancels its tasks).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn encode(w: &Wire) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(w).expect("wire messages always encode"))
}

fn body<T: Serialize + ?Sized>(v: &T) -> Result<Bytes> {
    rmp_serde::to_vec_named(v)
        .map(Bytes::from)
        .map_err(|e| Error::InvalidArgument(format!("cannot encode message: {e}")))
}

impl Node {
    /// Starts a node named by `transport`'s settings, listening at `settings.listen`.
    pub async fn start(
        transport: Arc<dyn Transport>,
        name: &str,
        settings: NodeSettings,
    ) -> Result<Node> {
        let listener = transport.listen(&settings.listen).await?;
        let addr = listener.local_addr().to_string();
        let inbox = Inbox::new(&settings.channels)?;
        inbox.serve(listener);
        let me = Member::new(name, settings.role);
        let inner = Arc::new(Inner {
            name: name.to_string(),
            addr: addr.clone(),
            transport,
            members: RwLock::new(HashMap::from([(
                name.to_string(),
                (addr, settings.role, incarnation()),
            )])),
            departed: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            links: tokio::sync::Mutex::new(HashMap::new()),
            topology: Mutex::new(Topology::new(settings.topology, name, &[me])),
            detector: Mutex::new(FailureDetector::new(settings.detector.clone())),
            handlers: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            next_id: AtomicU64::new(1),
            events: broadcast::channel(256).0,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            backoff: Mutex::new(HashMap::new()),
            settings,
        });
        let node = Node { inner };
        let weak = Arc::downgrade(&node.inner);
        let cancel = node.inner.cancel.clone();
        let receive = tokio::spawn(async move {
            let _live = TaskGuard::new();
            let mut inbox = inbox;
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = inbox.recv() => match m { Some(m) => m, None => break },
                };
                let Some(inner) = weak.upgrade() else { break };
                Node { inner }.on_inbound(msg).await;
            }
        });
        let weak = Arc::downgrade(&node.inner);
        let cancel = node.inner.cancel.clone();
        let every = node.inner.settings.heartbeat;
        let heartbeat = tokio::spawn(async move {
            let _live = TaskGuard::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                Node { inner }.heartbeat_round().await;
            }
        });
        node.inner.tasks.lock().extend([receive, heartbeat]);
        Ok(node)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address this node listens on.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Resolves `seeds` (static addresses and DNS names) and joins through them.
    pub async fn join_seeds(&self, seeds: &crate::discovery::Seeds) -> Result<()> {
        let resolved = seeds.resolve().await;
        let addrs: Vec<String> = resolved.addresses.iter().map(ToString::to_string).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        self.join(&refs).await
    }

    /// Joins the cluster through `seeds` (addresses of any members).
    pub async fn join(&self, seeds: &[&str]) -> Result<()> {
        let mut last = None;
        for seed in seeds {
            match self.link_addr(seed).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no seeds given".into())))
    }

    /// The members this node knows, with their state.
    pub fn members(&self) -> Vec<MemberInfo> {
        let down = self.inner.down.lock().clone();
        let mut v: Vec<MemberInfo> = self
            .inner
            .members
            .read()
            .iter()
            .map(|(n, (a, r, _))| MemberInfo {
                name: n.clone(),
                addr: a.clone(),
                role: *r,
                up: !down.contains(n),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// Switches the topology at run time; application code is unaffected.
    pub fn switch_topology(&self, kind: TopologyKind) {
        self.inner.topology.lock().switch(kind);
    }

    /// Registers a receiver of `T` messages under `name`; messages that do not decode as
    /// `T` are dropped and counted. Messages beyond the queue's capacity are dropped and
    /// counted too.
    pub fn register<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> mpsc::Receiver<(String, T)> {
        let (tx, rx) = mpsc::channel(self.inner.settings.receiver_capacity.max(1));
        let handler: Handler = Arc::new(move |from, bytes| {
            match rmp_serde::from_slice::<T>(&bytes) {
                Ok(v) => {
                    if tx.try_send((from, v)).is_err() {
                        metrics::counter!("foundation_node_dropped_total", "reason" => "receiver_full").increment(1);
                    }
                }
                Err(_) => {
                    metrics::counter!("foundation_node_dropped_total", "reason" => "undecodable")
                        .increment(1)
                }
            }
            None
        });
        self.inner
            .handlers
            .write()
            .insert(name.to_string(), handler);
        rx
    }

    /// Serves requests under `name` with `f`.
    pub fn serve<Q, R, F, Fut>(&self, name: &str, f: F)
    where
        Q: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(String, Q) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |from, bytes| {
            let f = f.clone();
            Some(Box::pin(async move {
                let q: Q =
                    rmp_serde::from_slice(&bytes).map_err(|e| format!("bad request: {e}"))?;
                let r = f(from, q).await;
                rmp_serde::to_vec_named(&r)
                    .map(Bytes::from)
                    .map_err(|e| format!("bad reply: {e}"))
            }))
        });
        self.inner
            .handlers
            .write()
            .insert(name.to_string(), handler);
    }

    /// Sends `msg` to receiver `name` on node `node`, directly or through the topology's
    /// relay.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
        opts: SendOptions,
    ) -> Result<()> {
        let wire = Wire::Send {
            to_node: node.into(),
            to_name: name.into(),
            from: self.inner.name.clone(),
            body: body(msg)?,
        };
        self.forward(node, wire, opts).await
    }

    /// Request/reply with the server registered under `name` on `node`.
    pub async fn request<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        node: &str,
        name: &str,
        msg: &Q,
        timeout: Duration,
    ) -> Result<R> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(id, tx);
        let wire = Wire::Request {
            id,
            to_node: node.into(),
            to_name: name.into(),
            from: self.inner.name.clone(),
            body: body(msg)?,
        };
        if let Err(e) = self.forward(node, wire, URGENT).await {
            self.inner.pending.lock().remove(&id);
            return Err(e);
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(Error::InvalidArgument("node shut down".into())),
            Err(_) => {
                self.inner.pending.lock().remove(&id);
                return Err(Error::RequestTimeout {
                    node: node.to_string(),
                    after: timeout,
                });
            }
        };
        let bytes = reply.map_err(|reason| Error::RemoteFailed {
            node: node.to_string(),
            reason,
        })?;
        rmp_serde::from_slice(&bytes).map_err(|e| Error::RemoteFailed {
            node: node.to_string(),
            reason: format!("undecodable reply: {e}"),
        })
    }

    /// Broadcasts `msg` to receiver `name` on every node (this one excluded), along the
    /// topology's broadcast tree; each node delivers it once.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, name: &str, msg: &T) -> Result<()> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.mark_seen(&self.inner.name, id);
        let wire = Wire::Broadcast {
            origin: self.inner.name.clone(),
            id,
            to_name: name.into(),
            body: body(msg)?,
        };
        let targets = self.inner.topology.lock().broadcast_targets(None);
        for t in targets {
            let _ = self.send_wire(&t, &wire, SendOptions::default()).await;
        }
        Ok(())
    }

    /// Says goodbye to the peers and stops this node's tasks and links.
    pub async fn shutdown(&self) {
        // Stop our own tasks first, so nothing else holds or uses a link.
        self.inner.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        let links: Vec<(String, Arc<Channels>)> = self.inner.links.lock().await.drain().collect();
        for (_, link) in links {
            let _ = link.send("coordination", None, encode(&Wire::Leave)).await;
            // Drain the queues (the goodbye included) before closing; a link still
            // borrowed by a caller's in-flight send is closed when that send ends.
            if let Ok(link) = Arc::try_unwrap(link) {
                link.shutdown().await;
            }
        }
    }

    fn mark_seen(&self, origin: &str, id: u64) -> bool {
        let mut seen = self.inner.seen.lock();
        let key = (origin.to_string(), id);
        if !seen.0.insert(key.clone()) {
            return false;
        }
        seen.1.push_back(key);
        if seen.1.len() > 65_536 {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        true
    }

    fn emit(&self, e: MembershipEvent) {
        let _ = self.inner.events.send(e);
    }

    fn view(&self) -> Vec<(String, String, Role, u64)> {
        self.inner
            .members
            .read()
            .iter()
            .map(|(n, (a, r, i))| (n.clone(), a.clone(), *r, *i))
            .collect()
    }

    /// Links to the node at `addr` (if not linked) and says hello; returns its name.
    async fn link_addr(&self, addr: &str) -> Result<String> {
        let mut builder = Channels::builder(self.inner.transport.clone(), addr)
            .settings(self.inner.settings.channels.clone());
        if let Some(i) = &self.inner.settings.interposer {
            builder = builder.interposer(i.clone(), &self.inner.name);
        }
        let channels = builder.connect().await?;
        let peer = channels.peer().to_string();
        let channels = Arc::new(channels);
        {
            let mut links = self.inner.links.lock().await;
            if links.contains_key(&peer) {
                return Ok(peer); // raced: keep the existing link, drop the new one
            }
            links.insert(peer.clone(), channels.clone());
        }
        channels
            .send(
                "coordination",
                None,
                encode(&Wire::Hello {
                    members: self.view(),
                }),
            )
            .await?;
        Ok(peer)
    }

    async fn link(&self, peer: &str) -> Result<Arc<Channels>> {
        if let Some(l) = self.inner.links.lock().await.get(peer) {
            return Ok(l.clone());
        }
        let addr = self
            .inner
            .members
            .read()
            .get(peer)
            .map(|(a, _, _)| a.clone())
            .ok_or_else(|| Error::UnknownNode {
                node: peer.to_string(),
            })?;
        self.link_addr(&addr).await?;
        self.inner
            .links
            .lock()
            .await
            .get(peer)
            .cloned()
            .ok_or_else(|| Error::UnknownNode {
                node: peer.to_string(),
            })
    }

    async fn send_wire(&self, peer: &str, wire: &Wire, opts: SendOptions) -> Result<()> {
        let link = self.link(peer).await?;
        let payload = encode(wire);
        let meta = MessageMeta {
            urgency: opts.urgency,
            ..MessageMeta::default()
        };
        let r = link.send_routed(meta, opts.key, payload).await;
        if r.is_err() {
            // A failed link is dropped; the next send reconnects.
            self.inner.links.lock().await.remove(peer);
        }
        r
    }

    async fn forward(&self, to: &str, wire: Wire, opts: SendOptions) -> Result<()> {
        if to == self.inner.name {
            return Err(Error::InvalidArgument("sending to this node itself".into()));
        }
        let hop = self
            .inner
            .topology
            .lock()
            .next_hop(to)
            .ok_or_else(|| Error::UnknownNode {
                node: to.to_string(),
            })?;
        self.send_wire(&hop, &wire, opts).await
    }

    async fn on_inbound(&self, msg: Inbound) {
        let peer = msg.peer.to_string();
        self.inner.detector.lock().heartbeat(&peer, Instant::now());
        if self.inner.down.lock().remove(&peer) {
            self.inner.topology.lock().update(Change::Up(peer.clone()));
            self.emit(MembershipEvent::Up(peer.clone()));
        }
        let Ok(wire) = rmp_serde::from_slice::<Wire>(&msg.payload) else {
            metrics::counter!("foundation_node_dropped_total", "reason" => "undecodable")
                .increment(1);
            return;
        };
        // Messages for another node are relayed (this node is a hop on their route).
        if let Some((to, opts)) = wire.relay_to(&self.inner.name) {
            let to = to.to_string();
            if self.forward(&to, wire, opts).await.is_err() {
                metrics::counter!("foundation_node_dropped_total", "reason" => "relay_failed")
                    .increment(1);
            }
            return;
        }
        match wire {
            Wire::Heartbeat => {}
            Wire::Topology { payload } => {
                let out = self.inner.topology.lock().on_message(&peer, &payload);
                self.send_topology(out).await;
            }
            Wire::Hello { members } => {
                self.merge(members).await;
                // Links are two-way: answer a peer that linked to us with our own link, so
                // that each side heartbeats the other whatever the topology.
                let linked = self.inner.links.lock().await.contains_key(&peer);
                if !linked {
                    let _ = self.link(&peer).await;
                }
            }
            Wire::Leave => {
                if let Some((_, _, inc)) = self.inner.members.write().remove(&peer) {
                    self.inner.departed.lock().insert(peer.clone(), inc);
                }
                self.inner.links.lock().await.remove(&peer);
                self.inner.detector.lock().remove(&peer);
                self.inner
                    .topology
                    .lock()
                    .update(Change::Left(peer.clone()));
                self.emit(MembershipEvent::Left(peer));
            }
            Wire::Send {
                to_node: _,
                ref to_name,
                ref from,
                ref body,
            } => {
                let handler = self.inner.handlers.read().get(to_name).cloned();
                match handler {
                    Some(h) => {
                        let _ = h(from.clone(), body.clone());
                    }
                    None => metrics::counter!("foundation_node_dropped_total", "reason" => "no_receiver").increment(1),
                }
            }
            Wire::Request {
                id,
                to_node: _,
                ref to_name,
                ref from,
                ref body,
            } => {
                let handler = self.inner.handlers.read().get(to_name).cloned();
                let from = from.clone();
                let body = body.clone();
                let to_name = to_name.clone();
                let node = self.clone();
                tokio::spawn(async move {
                    let reply = match handler.and_then(|h| h(from.clone(), body)) {
                        Some(fut) => fut.await,
                        None => Err(format!(
                            "no server named `{to_name}` on {}",
                            node.inner.name
                        )),
                    };
                    let w = Wire::Reply {
                        id,
                        to_node: from.clone(),
                        body: reply,
                    };
                    let _ = node.forward(&from, w, URGENT).await;
                });
            }
            Wire::Reply {
                id,
                to_node: _,
                ref body,
            } => {
                if let Some(tx) = self.inner.pending.lock().remove(&id) {
                    let _ = tx.send(body.clone());
                }
            }
            Wire::Broadcast {
                ref origin,
                id,
                ref to_name,
                ref body,
            } => {
                if *origin == self.inner.name || !self.mark_seen(origin, id) {
                    return;
                }
                if let Some(h) = self.inner.handlers.read().get(to_name).cloned() {
                    let _ = h(origin.clone(), body.clone());
                }
                let targets = self.inner.topology.lock().broadcast_targets(Some(&peer));
                for t in targets.into_iter().filter(|t| t != origin) {
                    let _ = self.send_wire(&t, &wire, SendOptions::default()).await;
                }
            }
        }
    }

    /// Merges a peer's view; links to the new members the topology wants.
    async fn merge(&self, members: Vec<(String, String, Role, u64)>) {
        let mut new = Vec::new();
        {
            let departed = self.inner.departed.lock();
            let mut known = self.inner.members.write();
            for (name, addr, role, inc) in members {
                if name == self.inner.name || departed.get(&name).is_some_and(|left| inc <= *left) {
                    continue;
                }
                match known.get(&name) {
                    Some((_, _, have)) if *have >= inc => {}
                    Some(_) => {
                        known.insert(name.clone(), (addr, role, inc)); // restarted
                    }
                    None => {
                        known.insert(name.clone(), (addr, role, inc));
                        new.push(Member::new(name, role));
                    }
                }
            }
        }
        if new.is_empty() {
            return;
        }
        {
            let mut t = self.inner.topology.lock();
            for m in &new {
                t.update(Change::Joined(m.clone()));
            }
        }
        for m in &new {
            self.emit(MembershipEvent::Joined(m.name.clone()));
        }
        // Tell everyone we are linked to about the news, and link where wanted.
        let wanted = self.inner.topology.lock().wanted();
        for peer in wanted {
            let linked = self.inner.links.lock().await.contains_key(&peer);
            if !linked {
                let _ = self.link(&peer).await;
            }
        }
        let links: Vec<Arc<Channels>> = self.inner.links.lock().await.values().cloned().collect();
        let hello = encode(&Wire::Hello {
            members: self.view(),
        });
        for l in links {
            let _ = l.send("coordination", None, hello.clone()).await;
        }
    }

    async fn send_topology(&self, out: Vec<(String, Vec<u8>)>) {
        for (to, payload) in out {
            let w = Wire::Topology {
                payload: Bytes::from(payload),
            };
            let _ = self.send_wire(&to, &w, URGENT).await;
        }
    }

    /// Installs a custom topology manager (an application's own, or a [`Static`] list).
    ///
    /// [`Static`]: crate::topology::Static
    pub fn install_topology(&self, service: Box<dyn crate::topology::PeerService>) {
        self.inner.topology.lock().install(service);
    }

    async fn heartbeat_round(&self) {
        let out = self.inner.topology.lock().tick();
        self.send_topology(out).await;
        let links: Vec<(String, Arc<Channels>)> = self
            .inner
            .links
            .lock()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let beat = encode(&Wire::Heartbeat);
        for (peer, link) in links {
            if link.send("coordination", None, beat.clone()).await.is_err() {
                self.inner.links.lock().await.remove(&peer);
            }
        }
        // Reconnect to wanted peers we lost, and keep knocking on peers marked down, so a
        // healed partition is noticed (their first message marks them up again).
        let mut wanted = self.inner.topology.lock().wanted();
        wanted.extend(self.inner.down.lock().iter().cloned());
        let now = Instant::now();
        for peer in wanted {
            let linked = self.inner.links.lock().await.contains_key(&peer);
            if linked {
                continue;
            }
            // Exponential backoff per peer (heartbeat interval doubling up to 32x), reset
            // by a successful link.
            let due = self
                .inner
                .backoff
                .lock()
                .get(&peer)
                .is_none_or(|(at, _)| *at <= now);
            if !due {
                continue;
            }
            match self.link(&peer).await {
                Ok(_) => {
                    self.inner.backoff.lock().remove(&peer);
                }
                Err(_) => {
                    let base = self.inner.settings.heartbeat;
                    let mut b = self.inner.backoff.lock();
                    let next = b.get(&peer).map_or(base, |(_, d)| (*d * 2).min(base * 32));
                    b.insert(peer, (now + next, next));
                    metrics::counter!("foundation_node_reconnect_failures_total").increment(1);
                }
            }
        }
        let suspects = self.inner.detector.lock().suspects(Instant::now());
        for s in suspects {
            if self.inner.down.lock().insert(s.clone()) {
                self.inner.topology.lock().update(Change::Down(s.clone()));
                self.inner.links.lock().await.remove(&s);
                self.emit(MembershipEvent::Down(s));
            }
        }
    }

    /// The detector's current bound on detecting a stopped `peer`, if watched.
    pub fn detection_bound(&self, peer: &str) -> Option<Duration> {
        self.inner
            .detector
            .lock()
            .detector(&peer.to_string())
            .map(|d| d.detection_bound())
    }
}

/// Describes the node metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_node_dropped_total",
        "Messages a node dropped: no receiver, receiver queue full, or undecodable."
    );
    metrics::describe_counter!(
        "foundation_node_reconnect_failures_total",
        "Failed attempts to link to a peer."
    );
}
