//! Nodes: a running cluster member.
//!
//! A [`Node`] listens on a [`Transport`], links to the peers its [`Topology`] wants
//! through named [`channel`](crate::channel)s, keeps membership, and lets application
//! code — the same whatever the topology — register named receivers, `send` to a name on
//! any node (directly or relayed), make requests with a timeout, and `broadcast`.
//!
//! # Parts
//!
//! The node is the composition of parts with one job each (see `docs/NODE.md`):
//!
//! * **links** (`link.rs`): one background task per peer connects, authenticates,
//!   reconnects with capped exponential backoff and jitter, and replaces a failed link.
//!   Nothing else waits for a connection.
//! * **inbound dispatch**: each inbound connection's reading task decodes its messages
//!   and dispatches them by kind itself (no queue, no hand-off to another task), so a
//!   coordination message is never decoded behind a bulk one. Nothing on an inbound path
//!   awaits another peer: relays, forwards, gossip and replies are queued on the target's
//!   link without waiting (a full queue is counted). A full local receiver stalls only
//!   the data connection whose message waits for it (backpressure to that sender).
//! * **membership** (`membership.rs` over [`membership::View`](crate::membership::View)):
//!   gossip, φ fed by heartbeats only, suspicion refuted by version, Down agreed by
//!   gossip, dead members removed after a while and tombstoned, periodic dissemination.
//! * **request/reply** (`request.rs`), **broadcast** (`broadcast.rs`), **application
//!   delivery** and **acknowledged streams** (`delivery.rs`).
//!
//! # Delivery semantics
//!
//! * [`send`](Node::send) returns `Ok` once the message is queued on a live connection
//!   towards the next hop (the link may be waited for up to
//!   [`NodeSettings::link_wait`]). To a live peer, messages from one sender with the same
//!   key and the same [`Urgency`] are delivered in order, whatever their sizes; messages
//!   without a key may be reordered (they spread over the channel's connections). The
//!   channel is picked by urgency ([`RouteOptions`](crate::channel::RouteOptions): `urgent`,
//!   `messages`, `gossip`, and `bulk_data` for [`Urgency::Bulk`]); an *unkeyed* normal or
//!   background message over 1 KiB also goes on `bulk_data`, but a keyed one stays on its
//!   urgency's channel, since order needs one connection (D402). A keyed bulk transfer
//!   that should not share `messages` with small traffic says [`Urgency::Bulk`]. Messages
//!   with one key but different urgencies (an urgent one and a normal one) may arrive in
//!   either order: the urgent lane is there to overtake. Remote process handles keep one
//!   order per pair the same way (D400). The receiver's queue is never overrun: a full
//!   receiver makes the inbound channel wait, which fills the sender's queue, which makes
//!   `send().await` wait (end-to-end backpressure). A message is lost only when its
//!   connection fails (counted in `foundation_channel_dropped_total{reason="connection_failed"}`)
//!   or when it is relayed through a node whose queue to the next hop is full
//!   (`foundation_node_dropped_total{reason="relay_failed"}`).
//! * Receivers: [`register`](Node::register) hands over one `(String, T)` per message;
//!   [`register_batched`](Node::register_batched) one [`Batch`] (shared sender name,
//!   decoded messages) per received frame and [`register_frames`](Node::register_frames)
//!   one undecoded [`Frame`] per received frame, with the same order, backpressure and
//!   counting (bounded in messages).
//! * [`try_send`](Node::try_send) is the lossy variant: it never waits and returns
//!   [`Error::Full`] / [`Error::NotConnected`] (counted) instead.
//! * [`send_acked`](Node::send_acked) survives lost messages and reconnects: it is
//!   retransmitted until acknowledged and delivered exactly once, in order.
//! * Requests and broadcasts carry the sender's incarnation; replies are matched by
//!   (answering node, id). A `request` dropped before its reply (cancelled or timed out)
//!   removes its entry and tells the server, which aborts the handler.
//!
//! Wire messages are MessagePack; application payloads are any serde type.

mod broadcast;
mod delivery;
mod link;
mod membership;
mod peer_stats;
mod request;
mod route;
mod switch;
mod table;
mod wire;

pub use switch::{SwitchError, SwitchRecord, SwitchSettings, TopologyState};

/// The node's wire layout of application batches (what [`Node::send`] and
/// [`Node::send_batch`] write), for tests that forge frames and for benchmarks that
/// measure raw baselines on the node's exact bytes. Applications do not need it.
pub mod wire_format {
    pub use super::wire::{batch_body, send_batch_frame};
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use metrics::Counter;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast as bcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channel::{
    ChannelSettings, ChannelSpec, Inbound, Inbox, MessageMeta, Priority, Urgency, COORDINATION,
};
use crate::error::{Error, Result};
use crate::interpose::Interposer;
use crate::membership::{FailureDetector, PhiSettings, Status, Update, View, ViewSettings};
use crate::topology::{Member, Role, Topology, TopologyKind};
use crate::transport::Transport;
use foundation_beam::core::telemetry::TaskGuard;

use delivery::{AckedStreams, Attempt, Outcome, Slot};
pub use delivery::{Batch, BatchReceiver, Frame, FrameMessages, FrameReceiver};
use link::{LinkContext, Links};
pub use peer_stats::PeerStats;
use request::Requests;
use wire::{
    encode, encode_batches, encode_one, encode_one_into, encode_ref_with, encode_with, ReplyError,
    Wire, WireRef,
};

/// A membership event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node joined the cluster view (also: a node restarted under the same name, a new
    /// incarnation).
    Joined(String),
    /// A node left on purpose.
    Left(String),
    /// A node was declared down (suspected and not refuted within the suspicion timeout,
    /// by this node or by another whose verdict was gossiped).
    Down(String),
    /// A node declared down refuted it (it is alive after all, e.g. a healed partition).
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
    /// Whether it is considered up (alive or merely suspected, not declared down).
    pub up: bool,
}

thread_local! {
    /// Where [`Node::send`] encodes a message before trying to append it to a waiting
    /// frame.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Messages longer than this leave [`SCRATCH`] with its buffer (not copied out), and a
/// buffer grown beyond it is not kept.
const SCRATCH_KEEP: usize = 4096;

/// Requests and replies go urgent, unkeyed.
const URGENT: SendOptions = SendOptions {
    urgency: Urgency::Urgent,
    key: None,
};

/// Options of a [`Node::send`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {
    /// Urgency: urgent goes on the `urgent` channel, bulk on `bulk_data`, background on
    /// `gossip`, normal on `messages`. An unkeyed normal or background message larger
    /// than the bulk threshold (1 KiB) goes on `bulk_data` too; a keyed one does not.
    pub urgency: Urgency,
    /// A partition key: messages with the same key and urgency keep their order, whatever
    /// their sizes (they stay on one connection of their urgency's channel).
    pub key: Option<u64>,
}

/// The node's default channel for application messages.
pub const MESSAGES: &str = "messages";
/// The node's default channel for urgent application messages.
pub const URGENT_CHANNEL: &str = "urgent";

/// The node's default channel table: `coordination` (node traffic, requests and replies;
/// high, 3 connections), `urgent` (urgent application messages; high, 2), `messages`
/// (application messages; medium, 2), `gossip` (background; low, 1) and `bulk_data`
/// (large payloads; medium, 2, 64 messages of queue per connection). Every outbound
/// queue is also bounded in payload bytes (`queue_bytes`, 4 MiB per connection), so a
/// peer holds at most a few MiB per connection whatever the message size. Inbound
/// messages are handled on the reading task (no inbound queue; `inbox_capacity` is
/// unused by the node).
pub fn default_channels() -> ChannelSettings {
    let mut c = ChannelSettings::default();
    for spec in &mut c.channels {
        if spec.name == crate::channel::BULK_DATA {
            spec.queue_capacity = 64;
        }
    }
    c.inbox_capacity = 512;
    c.channels
        .push(ChannelSpec::new(URGENT_CHANNEL, Priority::High, 2));
    c.channels
        .push(ChannelSpec::new(MESSAGES, Priority::Medium, 2));
    c.route.urgent_channel = URGENT_CHANNEL.into();
    c.route.default_channel = MESSAGES.into();
    c
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Address to listen on (`127.0.0.1:0`, `mem://a`).
    pub listen: String,
    /// Role in the topology.
    pub role: Role,
    /// The topology.
    pub topology: TopologyKind,
    /// Channels; must contain `coordination`. Default [`default_channels`].
    pub channels: ChannelSettings,
    /// Heartbeat interval (also the membership round). Default 200 ms.
    pub heartbeat: Duration,
    /// Failure detector settings.
    pub detector: PhiSettings,
    /// Suspicion timeout, removal of dead members, tombstones.
    pub view: ViewSettings,
    /// Full view dissemination every this many rounds, to `gossip_fanout` random
    /// peers. Default 5 and 3.
    pub gossip_every: u64,
    /// See `gossip_every`.
    pub gossip_fanout: usize,
    /// Capacity of each receiver's queue.
    pub receiver_capacity: usize,
    /// How long [`Node::send`] and [`Node::request`] wait for a link that is not up.
    /// Default 5 s.
    pub link_wait: Duration,
    /// First reconnect delay; doubled per failure up to `reconnect_max`, with jitter.
    /// Default 100 ms and 5 s.
    pub reconnect_base: Duration,
    /// See `reconnect_base`.
    pub reconnect_max: Duration,
    /// Request handlers running at once; requests beyond are refused (counted).
    /// Default 1024.
    pub max_concurrent_requests: usize,
    /// Unacknowledged messages kept per destination by [`Node::send_acked`]. Default 256.
    pub acked_window: usize,
    /// Resend unacknowledged messages after this long. Default 200 ms.
    pub retransmit_after: Duration,
    /// Deadline of [`Node::shutdown`]. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Fault injection applied to everything this node sends (tests).
    pub interposer: Option<Arc<Interposer>>,
    /// Coordinated topology switching: cooldown, grace before old links are torn down.
    pub switch: SwitchSettings,
    /// Runs the reader and writer tasks of high-priority channels (`coordination`,
    /// `urgent`: requests, replies, membership) on a priority thread (`fprio`) with its
    /// own tokio runtime and I/O driver, their TCP sockets moved there, so that their
    /// wake-ups never wait behind bulk traffic in the application runtime's run queues
    /// (D380). One thread per process, shared by its nodes; the last node to shut down
    /// stops it at the end of [`Node::shutdown`]. Used only when the node is started on
    /// a multi-thread runtime; on a `current_thread` runtime (and so under tokio's paused
    /// clock) everything runs on the caller's runtime. Inbound handlers (the first poll
    /// of request handlers included) still spawn onto the application's runtime.
    /// Default `false` (every task of the node on the caller's runtime): measured on 2
    /// cores (D366), the thread lowers the urgent p99 of requesters *outside* the
    /// runtime's workers under load, but raises it for requesters in tasks on a runtime
    /// busy with bulk traffic (the usual application) and confines all high-priority
    /// traffic to one thread; turn it on when requests or heartbeats come from outside a
    /// saturated runtime, and measure.
    pub priority_thread: bool,
    /// The nice value the priority thread asks the OS for (Linux; -20 ..= 19, lower is
    /// scheduled sooner when the CPUs are busy), so that it preempts bulk work on a busy
    /// machine (D381); the node that starts the process's thread sets it. Needs `CAP_SYS_NICE` or `RLIMIT_NICE` to go below the process's
    /// own; refused, the thread keeps the process's priority (logged, counted in
    /// `foundation_channel_priority_nice_total{result="refused"}`). `None` leaves it
    /// alone. Default `Some(-10)`.
    pub priority_thread_nice: Option<i32>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            listen: "127.0.0.1:0".into(),
            role: Role::Peer,
            topology: TopologyKind::FullMesh,
            channels: default_channels(),
            heartbeat: Duration::from_millis(200),
            detector: PhiSettings {
                min_std_dev_ms: 50,
                first_heartbeat_estimate_ms: 200,
                ..PhiSettings::default()
            },
            view: ViewSettings::default(),
            gossip_every: 5,
            gossip_fanout: 3,
            receiver_capacity: 1024,
            link_wait: Duration::from_secs(5),
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_concurrent_requests: 1024,
            acked_window: 256,
            retransmit_after: Duration::from_millis(200),
            shutdown_timeout: Duration::from_secs(5),
            interposer: None,
            switch: SwitchSettings::default(),
            priority_thread: false,
            priority_thread_nice: Some(-10),
        }
    }
}

/// Pre-registered node metrics.
struct Meters {
    view_changes: Counter,
    suspected: Counter,
    refuted: Counter,
    refused_identity: Counter,
    requests_rejected: Counter,
    retransmitted: Counter,
    duplicates: Counter,
}

impl Meters {
    fn new() -> Self {
        Meters {
            view_changes: metrics::counter!("foundation_node_view_changes_total"),
            suspected: metrics::counter!("foundation_node_suspected_total"),
            refuted: metrics::counter!("foundation_node_refuted_total"),
            refused_identity: metrics::counter!("foundation_node_refused_total", "reason" => "identity"),
            requests_rejected: metrics::counter!("foundation_node_requests_total", "result" => "rejected"),
            retransmitted: metrics::counter!("foundation_node_retransmitted_total"),
            duplicates: metrics::counter!("foundation_node_duplicates_total"),
        }
    }

    fn dropped(&self, reason: &'static str) -> Counter {
        metrics::counter!("foundation_node_dropped_total", "reason" => reason)
    }
}

pub(crate) struct Inner {
    name: String,
    addr: String,
    incarnation: u64,
    settings: NodeSettings,
    links: Links,
    view: Mutex<View>,
    /// Members declared down, and since when (for the recovery-time histogram).
    down: Mutex<HashMap<String, Instant>>,
    detector: Mutex<FailureDetector<String>>,
    topology: route::TopologyCell,
    /// This node's id in the per-thread route caches (D440).
    id: u64,
    /// Whether `send` uses the route cache (`FOUNDATION_NODE_ROUTE_CACHE`, D440).
    route_cache: bool,
    slots: RwLock<HashMap<String, Slot>>,
    requests: Requests,
    broadcasts: broadcast::Broadcasts,
    acked: AckedStreams,
    events: bcast::Sender<MembershipEvent>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    inbox: Mutex<Option<Inbox>>,
    meters: Meters,
    switch: switch::SwitchState,
    overlay: membership::Overlay,
    /// The process's priority thread (D380), while this node uses it.
    priority: Mutex<Option<Arc<crate::channel::PriorityThread>>>,
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

fn body<T: Serialize + ?Sized>(v: &T) -> Result<Bytes> {
    rmp_serde::to_vec(v).map(Bytes::from).map_err(encode_error)
}

fn encode_error(e: rmp_serde::encode::Error) -> Error {
    Error::InvalidArgument(format!("cannot encode message: {e}"))
}

/// Incarnations handed out in this process, so two nodes started in the same
/// microsecond (or a restart within one) still get distinct, increasing ones.
static LAST_INCARNATION: AtomicU64 = AtomicU64::new(0);

fn next_incarnation() -> u64 {
    let now = incarnation();
    let mut last = LAST_INCARNATION.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_INCARNATION.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(l) => last = l,
        }
    }
}

impl Node {
    /// Starts a node named by `transport`'s settings, listening at `settings.listen`.
    pub async fn start(
        transport: Arc<dyn Transport>,
        name: &str,
        settings: NodeSettings,
    ) -> Result<Node> {
        if !settings
            .channels
            .channels
            .iter()
            .any(|c| c.name == COORDINATION)
        {
            return Err(Error::InvalidSettings {
                reason: "the node's channel table needs a `coordination` channel".into(),
            });
        }
        if settings.heartbeat.is_zero() {
            return Err(Error::InvalidSettings {
                reason: "heartbeat interval is 0".into(),
            });
        }
        settings.channels.validate()?;
        let listener = transport.listen(&settings.listen).await?;
        let addr = listener.local_addr().to_string();
        let me = Update {
            name: name.to_string(),
            addr: addr.clone(),
            role: settings.role,
            incarnation: next_incarnation(),
            version: 0,
            status: Status::Alive,
        };
        let cancel = CancellationToken::new();
        let route_cache = route::route_cache_enabled()?;
        let route_epoch = Arc::new(AtomicU64::new(0));
        let priority = if settings.priority_thread && crate::channel::priority_thread_wanted() {
            Some(crate::channel::PriorityThread::shared(
                settings.priority_thread_nice,
            )?)
        } else {
            None
        };
        // Inbound handlers on the priority thread spawn onto the application's runtime.
        let app = priority.as_ref().map(|_| tokio::runtime::Handle::current());
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let on_up_weak = weak.clone();
            let inbox = Inbox::with_handler(&settings.channels, inbound_handler(weak.clone(), app))
                .expect("channel settings validated above");
            if let Some(p) = &priority {
                inbox.set_priority_runtime(p.handle().clone());
            }
            let ctx = LinkContext {
                me: name.to_string(),
                transport,
                channels: settings.channels.clone(),
                interposer: settings.interposer.clone(),
                backoff_base: settings.reconnect_base.max(Duration::from_millis(1)),
                backoff_max: settings.reconnect_max.max(settings.reconnect_base),
                on_up: Box::new(move |_peer, channels| {
                    // The first message on every new link is our view (membership.rs),
                    // then the topology epoch in force here (a late joiner learns the
                    // cluster's).
                    if let Some(inner) = on_up_weak.upgrade() {
                        let hello = inner.hello();
                        if let Ok(s) = channels.sender(COORDINATION) {
                            // Key 0: the connection membership and topology messages use,
                            // so the hello arrives before them.
                            let _ = s.try_send(Some(0), encode(&Wire::Gossip { members: hello }));
                            let _ = s.try_send(switch::KEY, inner.switch_state_wire());
                        }
                    }
                }),
                priority: priority.as_ref().map(|p| p.handle().clone()),
                route_epoch: route_epoch.clone(),
            };
            Inner {
                name: name.to_string(),
                addr,
                incarnation: me.incarnation,
                links: Links::new(ctx, cancel.child_token()),
                view: Mutex::new(View::new(me, settings.view.clone())),
                down: Mutex::new(HashMap::new()),
                detector: Mutex::new(FailureDetector::new(settings.detector.clone())),
                topology: route::TopologyCell::new(
                    Topology::with_tick(
                        settings.topology,
                        name,
                        &[Member::new(name, settings.role)],
                        settings.heartbeat,
                    ),
                    route_epoch,
                ),
                id: route::next_node_id(),
                route_cache,
                slots: RwLock::new(HashMap::new()),
                requests: Requests::new(settings.max_concurrent_requests),
                broadcasts: broadcast::Broadcasts::new(),
                acked: AckedStreams::default(),
                events: bcast::channel(256).0,
                cancel: cancel.clone(),
                tasks: Mutex::new(Vec::new()),
                inbox: Mutex::new(Some(inbox)),
                meters: Meters::new(),
                switch: switch::SwitchState::new(settings.topology),
                overlay: membership::Overlay::default(),
                settings,
                priority: Mutex::new(priority),
            }
        });
        if let Some(inbox) = inner.inbox.lock().as_ref() {
            inbox.serve(listener);
        }
        let rounds = tokio::spawn(rounds(Arc::downgrade(&inner), cancel.clone()));
        inner.tasks.lock().push(rounds);
        Ok(Node { inner })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether this node runs its high-priority channels on the process's priority thread
    /// (see [`NodeSettings::priority_thread`]); `false` once it has shut down.
    pub fn has_priority_thread(&self) -> bool {
        self.inner
            .priority
            .lock()
            .as_ref()
            .is_some_and(|p| p.is_running())
    }

    /// The address this node listens on.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// This run's incarnation (start time in µs since the epoch; a restart has a larger
    /// one).
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Resolves `seeds` (static addresses and DNS names) and joins through them.
    pub async fn join_seeds(&self, seeds: &crate::discovery::Seeds) -> Result<()> {
        let resolved = seeds.resolve().await;
        let addrs: Vec<String> = resolved.addresses.iter().map(ToString::to_string).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        self.join(&refs).await
    }

    /// Joins the cluster through `seeds` (addresses of any members): links to the first
    /// that answers and sends it this node's view; the views then converge by gossip.
    ///
    /// Fails with [`Error::ChannelTableMismatch`] when the seed's channel table differs
    /// from this node's: the two have exchanged views (this node is a member), but
    /// neither takes the other's application traffic (see `docs/NODE.md`); start this
    /// node again with the cluster's table.
    pub async fn join(&self, seeds: &[&str]) -> Result<()> {
        let mut last = None;
        for seed in seeds {
            match link::connect_addr(&self.inner.links, seed).await {
                Ok(link) => {
                    // Wait (bounded) for the seed's view, so the cluster is known on return.
                    let until = Instant::now() + self.inner.settings.link_wait;
                    let unknown = self.inner.view.lock().get(&link.peer).is_none();
                    while self.inner.view.lock().get(&link.peer).is_none() {
                        if Instant::now() >= until {
                            return Err(Error::NotConnected {
                                node: link.peer.clone(),
                                reason: "the seed sent no view".into(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // And (as long) for its channel table, which follows a view it sent
                    // (a seed known already may not link back under a partial view): a
                    // seed with another table fails the join, with both tables (D431).
                    while unknown && !self.inner.table_checked(&link.peer) && Instant::now() < until
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if let Some(e) = self.inner.refused(&link.peer) {
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument("no seeds given".into())))
    }

    /// The members this node knows (itself included, removed and departed ones not), with
    /// their state.
    pub fn members(&self) -> Vec<MemberInfo> {
        let view = self.inner.view.lock();
        let mut v: Vec<MemberInfo> = view
            .digest()
            .into_iter()
            .filter(|u| u.status != Status::Left)
            .map(|u| MemberInfo {
                up: matches!(u.status, Status::Alive | Status::Suspect),
                name: u.name,
                addr: u.addr,
                role: u.role,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The incarnation of member `name` as this node last heard it (`None`: unknown or
    /// removed); for this node itself, [`incarnation`](Self::incarnation).
    pub fn member_incarnation(&self, name: &str) -> Option<u64> {
        self.inner.view.lock().get(name).map(|u| u.incarnation)
    }

    /// The state of member `name` as this node sees it (`None`: unknown or removed).
    pub fn member_status(&self, name: &str) -> Option<Status> {
        self.inner.view.lock().get(name).map(|u| u.status)
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> bcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// Registers a receiver of `T` messages under `name` (replacing any receiver or
    /// server of that name). Its queue holds `receiver_capacity` messages; when full,
    /// senders are slowed down (see the [module docs](self)), nothing is dropped.
    /// Messages that do not decode as `T` are dropped and counted
    /// (`foundation_node_dropped_total{reason="undecodable"}`). For many small messages,
    /// [`register_batched`](Self::register_batched) hands them over a frame at a time
    /// (no `String` and no queue slot per message).
    pub fn register<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> mpsc::Receiver<(String, T)> {
        let (tx, rx) = mpsc::channel(self.inner.settings.receiver_capacity.max(1));
        self.inner
            .slots
            .write()
            .insert(name.to_string(), delivery::receiver(tx));
        rx
    }

    /// Registers a receiver of `T` messages under `name` (replacing any receiver or
    /// server of that name) that hands them over a frame at a time: one [`Batch`] (the
    /// sender, shared, and the frame's messages, decoded, in order) per received frame,
    /// instead of one `(String, T)` per message as [`register`](Self::register) does. Many
    /// small messages then cost one queue hand-over, one wake-up and one sender name per
    /// frame. Everything else is as for `register`: messages from [`send`](Self::send)
    /// (those appended to one waiting frame come as one batch), [`send_batch`](Self::send_batch),
    /// [`send_acked`](Self::send_acked) (one batch per message), relays; in order per
    /// (sender, key); a full receiver slows the senders down (end-to-end backpressure on
    /// data channels, nothing dropped); messages that do not decode as `T` are left out
    /// of their batch and counted (`foundation_node_dropped_total{reason="undecodable"}`).
    ///
    /// The bound is `receiver_capacity` **messages** (see [`BatchReceiver`] for the one
    /// exception: a frame holding more is handed over whole once the receiver is empty).
    ///
    /// ```no_run
    /// # async fn demo(node: foundation_distributed::node::Node) {
    /// let mut inbox = node.register_batched::<u64>("counts");
    /// let mut total = 0u64;
    /// while let Some(batch) = inbox.recv().await {
    ///     for v in &batch.messages {
    ///         total += v;
    ///     }
    ///     println!("{} messages from {}", batch.messages.len(), batch.from);
    /// }
    /// # }
    /// ```
    pub fn register_batched<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> BatchReceiver<T> {
        let (slot, rx) = delivery::batched(self.inner.settings.receiver_capacity.max(1));
        self.inner.slots.write().insert(name.to_string(), slot);
        rx
    }

    /// Like [`register_batched`](Self::register_batched), but hands each frame over
    /// undecoded: a [`Frame`] is the frame's received bytes (not copied) with an iterator
    /// over each message's bytes (the MessagePack encoding of the value the sender gave
    /// `send` or `send_batch`), for consumers that decode themselves, lazily, or not at
    /// all (a relay, a counter). The node checks a frame's layout (whole length-prefixed
    /// messages, else the frame is dropped and counted as `undecodable`) but not the
    /// messages: undecodable ones are the consumer's to count. Bound and backpressure as
    /// for `register_batched`.
    ///
    /// ```no_run
    /// # async fn demo(node: foundation_distributed::node::Node) {
    /// let mut frames = node.register_frames("counts");
    /// while let Some(frame) = frames.recv().await {
    ///     for body in frame.messages() {
    ///         let v: u64 = rmp_serde::from_slice(body).expect("a u64");
    ///         # let _ = v;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn register_frames(&self, name: &str) -> FrameReceiver {
        let (slot, rx) = delivery::frames(self.inner.settings.receiver_capacity.max(1));
        self.inner.slots.write().insert(name.to_string(), slot);
        rx
    }

    /// Serves requests under `name` with `f`. Handlers run under the node's
    /// `max_concurrent_requests` bound and are aborted at shutdown.
    pub fn serve<Q, R, F, Fut>(&self, name: &str, f: F)
    where
        Q: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(String, Q) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
    {
        let f = Arc::new(f);
        let serve: delivery::Serve = Arc::new(move |from, bytes| {
            let f = f.clone();
            Box::pin(async move {
                let q: Q = rmp_serde::from_slice(&bytes)
                    .map_err(|e| ReplyError::Failed(format!("bad request: {e}")))?;
                let r = f(from, q).await;
                rmp_serde::to_vec(&r)
                    .map(Bytes::from)
                    .map_err(|e| ReplyError::Failed(format!("bad reply: {e}")))
            })
        });
        self.inner
            .slots
            .write()
            .insert(name.to_string(), Slot::Server(serve));
    }

    /// Sends `msg` to receiver `name` on node `node`, directly or through the topology's
    /// relay. Waits for room in the queue (backpressure) and, up to
    /// [`NodeSettings::link_wait`], for the link to come up. See the
    /// [module docs](self) for what `Ok` means.
    ///
    /// While the message waits in its connection's queue, later messages to the same
    /// receiver with the same key are appended to its frame (write-combining, up to
    /// 64 KiB a frame): many small `send`s behind a busy connection cost one frame, one
    /// record and one dispatch at the receiver, and nothing waits for a batch to fill.
    ///
    /// The route to `node` (next hop, its link and live connections) is looked up once
    /// and then remembered by the calling thread until anything that decides it changes
    /// (a member down or up, a refusal, the topology, a link made, remade or retired,
    /// shutdown): errors, relays and order are those of a fresh look-up (D440).
    /// `FOUNDATION_NODE_ROUTE_CACHE=0` in the environment when the node starts turns
    /// this off (`1`, the default, on; any other value fails the start).
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
        opts: SendOptions,
    ) -> Result<()> {
        // Encoded into this thread's reused buffer: a message appended to a waiting frame
        // (the common case while the connection is busy) allocates nothing.
        let mut encoded = None;
        let appended = SCRATCH.with(|cell| {
            let Ok(mut v) = cell.try_borrow_mut() else {
                return Ok(None);
            };
            let header =
                encode_one_into(&mut v, node, name, &self.inner.name, msg).map_err(encode_error)?;
            // A message of a whole frame's size is never appended (the queue's bound is
            // the same 64 KiB): do not look.
            let appended = if v.len() < wire::BATCH_FRAME_BYTES {
                self.inner.append_now(node, &v, header, opts)
            } else {
                None
            };
            if appended.is_none() {
                // A large message leaves with the buffer itself (no copy); a small one is
                // copied out and the buffer kept for the next.
                let payload = if v.len() > SCRATCH_KEEP {
                    Bytes::from(std::mem::take(&mut *v))
                } else {
                    Bytes::copy_from_slice(&v)
                };
                encoded = Some((payload, header));
            }
            if v.capacity() > SCRATCH_KEEP {
                *v = Vec::new();
            }
            Ok::<_, Error>(appended)
        })?;
        if let Some(yields) = appended {
            if yields {
                // As a channel send of a large message does (D382).
                tokio::task::yield_now().await;
            }
            return Ok(());
        }
        let (payload, header) = match encoded {
            Some(e) => e,
            None => encode_one(node, name, &self.inner.name, msg).map_err(encode_error)?,
        };
        let size = payload.len() - header;
        self.inner
            .forward_sized(node, payload, opts, false, size, header)
            .await
    }

    /// Sends every message of `msgs`, in order, to receiver `name` on `node`, packed many
    /// to a frame (at most 64 KiB of messages per frame): one queue slot, one frame and
    /// one dispatch at the receiver per frame instead of per message, so many small
    /// messages cost far less than as many [`send`](Self::send)s. Delivered exactly as
    /// that many `send`s with the same `opts` would be: in order (all frames of one call
    /// keep their order if `opts.key` is set, like any keyed sends), with the same
    /// backpressure; the channel is chosen by `opts` (and, unkeyed, by the largest
    /// message's size). `Ok` means every frame is queued. On an error, the frames queued
    /// before it (a prefix of `msgs`) may still be delivered; nothing after it is sent.
    pub async fn send_batch<T: Serialize>(
        &self,
        node: &str,
        name: &str,
        msgs: &[T],
        opts: SendOptions,
    ) -> Result<()> {
        let (frames, header, largest) =
            encode_batches(node, name, &self.inner.name, msgs).map_err(encode_error)?;
        for frame in frames {
            self.inner
                .forward_sized(node, frame, opts, false, largest, header)
                .await?;
        }
        Ok(())
    }

    /// Like [`send`](Self::send) but never waits: fails with [`Error::Full`] when the
    /// queue is full and [`Error::NotConnected`] when the link is not up. Either is
    /// counted (`foundation_node_dropped_total{reason="try_send_full"|"try_send_not_connected"}`).
    pub fn try_send<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
        opts: SendOptions,
    ) -> Result<()> {
        let (payload, header) =
            encode_one(node, name, &self.inner.name, msg).map_err(encode_error)?;
        let r = self.inner.try_forward_merging(node, payload, header, opts);
        match &r {
            Err(Error::Full { .. }) => self.inner.meters.dropped("try_send_full").increment(1),
            Err(_) => self
                .inner
                .meters
                .dropped("try_send_not_connected")
                .increment(1),
            Ok(()) => {}
        }
        r
    }

    /// Sends `msg` to receiver `name` on `node` with acknowledged delivery: the message is
    /// kept (up to [`NodeSettings::acked_window`] per destination; beyond, this waits)
    /// and resent until `node` acknowledges it, across lost messages and reconnects, and
    /// `node` delivers each exactly once, in the order sent. `Ok` means accepted for
    /// delivery; it is abandoned only if `node` is removed from the membership or leaves
    /// (a call waiting for room then fails with [`Error::UnknownNode`]) or this node shuts
    /// down ([`Error::NodeShutDown`]).
    pub async fn send_acked<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
    ) -> Result<()> {
        if node == self.inner.name {
            return Err(Error::InvalidArgument("sending to this node itself".into()));
        }
        if self.inner.view.lock().get(node).is_none() {
            return Err(Error::UnknownNode {
                node: node.to_string(),
            });
        }
        let body = body(msg)?;
        let window = self
            .inner
            .acked
            .window(node, self.inner.settings.acked_window.max(1));
        let permit = window.acquire_owned().await.map_err(|_| {
            if self.inner.cancel.is_cancelled() {
                Error::NodeShutDown {
                    node: self.inner.name.clone(),
                }
            } else {
                Error::UnknownNode {
                    node: node.to_string(),
                }
            }
        })?;
        permit.forget(); // returned by the acknowledgement
        let (seq, base) = self.inner.acked.push(node, name, body.clone());
        metrics::gauge!("foundation_node_retransmit_buffer").increment(1.0);
        let wire = self.inner.acked_wire(node, seq, base, name, body);
        let _ = self.inner.forward_now(
            node,
            encode(&wire),
            SendOptions {
                urgency: Urgency::Normal,
                key: Some(0),
            },
        );
        if let Some(o) = self.inner.acked.out.lock().get_mut(node) {
            o.last_sent = Some(Instant::now());
        }
        Ok(())
    }

    /// Request/reply with the server registered under `name` on `node`. Dropping the
    /// returned future (or the timeout) removes the request; a late reply is ignored.
    pub async fn request<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        node: &str,
        name: &str,
        msg: &Q,
        timeout: Duration,
    ) -> Result<R> {
        let (id, rx, pending) = self.inner.requests.start(node);
        // Dropped before the reply (cancelled, timed out): tell the server to abort it.
        let _cancel = CancelOnDrop {
            inner: &self.inner,
            pending,
            node,
            id,
        };
        let wire = WireRef::Request {
            id,
            incarnation: self.inner.incarnation,
            to_node: node,
            to_name: name,
            from: &self.inner.name,
        };
        let payload = encode_ref_with(&wire, msg).map_err(encode_error)?;
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.inner.forward(node, payload, URGENT, true))
            .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::RequestTimeout {
                    node: node.to_string(),
                    after: timeout,
                })
            }
        }
        let reply = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                return Err(Error::NodeShutDown {
                    node: self.inner.name.clone(),
                })
            }
            Err(_) => {
                return Err(Error::RequestTimeout {
                    node: node.to_string(),
                    after: timeout,
                });
            }
        };
        let bytes = reply.map_err(|e| match e {
            ReplyError::Overloaded(what) => Error::Overloaded {
                node: node.to_string(),
                what,
            },
            ReplyError::NoServer(reason) | ReplyError::Failed(reason) => Error::RemoteFailed {
                node: node.to_string(),
                reason,
            },
        })?;
        rmp_serde::from_slice(&bytes).map_err(|e| Error::RemoteFailed {
            node: node.to_string(),
            reason: format!("undecodable reply: {e}"),
        })
    }

    /// Broadcasts `msg` to receiver `name` on every node (this one excluded), along the
    /// topology's broadcast tree; each node delivers it once. Waits for room on each
    /// first-hop link that is up; a first hop whose link is still being made holds the
    /// message (bounded) until it is up; one that cannot is skipped (counted).
    ///
    /// Under [`TopologyKind::HyParView`] the broadcast goes through Plumtree over the
    /// active view instead (eager push on a spanning tree, lazy ids to the other
    /// neighbours, graft and prune; see `docs/NODE.md`): this never waits, and a node
    /// that misses the payload grafts it from a neighbour that announced it.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, name: &str, msg: &T) -> Result<()> {
        let id = self.inner.broadcasts.next_id();
        self.inner
            .broadcasts
            .first_time(&self.inner.name, self.inner.incarnation, id);
        let wire = Wire::Broadcast {
            origin: self.inner.name.clone(),
            incarnation: self.inner.incarnation,
            id,
            to_name: name.into(),
            body: Bytes::new(),
        };
        let bytes = encode_with(&wire, msg).map_err(encode_error)?;
        if self.inner.publish_overlay(&bytes) {
            return Ok(()); // the topology's broadcast protocol (Plumtree) carries it
        }
        let targets = self.inner.topology.lock().broadcast_targets(None);
        for t in targets {
            self.inner.ensure_link(&t);
            let link = self.inner.links.get(&t);
            let sent = match link.as_ref().map(|l| (l, l.current())) {
                Some((_, Some(ch))) => {
                    let meta = MessageMeta::default();
                    ch.send_routed(meta, None, bytes.clone()).await.is_ok()
                }
                // Not up yet (a neighbour just chosen): the link holds it until it is.
                Some((l, None)) => {
                    let ch = self.inner.channel_for(SendOptions::default(), bytes.len());
                    l.send_or_park(ch, None, bytes.clone()).is_ok()
                }
                None => false,
            };
            if !sent {
                self.inner.meters.dropped("broadcast_hop_down").increment(1);
            }
        }
        Ok(())
    }

    /// Installs a custom topology manager (an application's own, or a [`Static`] list).
    ///
    /// [`Static`]: crate::topology::Static
    pub fn install_topology(&self, service: Box<dyn crate::topology::PeerService>) {
        self.inner.topology.lock().install(service);
    }

    /// The detector's current bound on detecting a stopped `peer`, if watched. A stopped
    /// peer is declared down at most this long after its last heartbeat plus the
    /// suspicion timeout plus one round.
    pub fn detection_bound(&self, peer: &str) -> Option<Duration> {
        self.inner
            .detector
            .lock()
            .detector(&peer.to_string())
            .map(|d| d.detection_bound())
    }

    /// Requests waiting for a reply, request handlers running, and messages held for
    /// retransmission (for tests and diagnostics).
    pub fn load(&self) -> (usize, usize, usize) {
        (
            self.inner.requests.pending(),
            self.inner.requests.running(),
            self.inner.acked.buffered(),
        )
    }

    /// Says goodbye and stops, within [`NodeSettings::shutdown_timeout`]; see
    /// [`shutdown_within`](Self::shutdown_within).
    pub async fn shutdown(&self) {
        let _ = self
            .shutdown_within(self.inner.settings.shutdown_timeout)
            .await;
    }

    /// Says goodbye to the peers, aborts request handlers, stops every task, and gives
    /// queued messages until `deadline` to be written. Returns `true` if everything
    /// stopped cleanly in time, `false` if the deadline cut the drain short (what was
    /// still queued is dropped and counted).
    pub async fn shutdown_within(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let inner = &self.inner;
        let bye = inner.view.lock().leave();
        inner.gossip_all(vec![bye]);
        inner.cancel.cancel();
        for o in inner.acked.out.lock().values() {
            o.window.close();
        }
        let mut handlers = inner.requests.abort_all();
        let tasks: Vec<_> = std::mem::take(&mut *inner.tasks.lock());
        let (channels, link_tasks) = inner.links.stop_all();
        let mut clean = true;
        let waited = tokio::time::timeout_at(until, async {
            while handlers.join_next().await.is_some() {}
            for t in tasks.into_iter().chain(link_tasks) {
                let _ = t.await;
            }
        })
        .await;
        clean &= waited.is_ok();
        for c in channels {
            match Arc::try_unwrap(c) {
                Ok(c) => {
                    if tokio::time::timeout_at(until, c.shutdown()).await.is_err() {
                        clean = false;
                    }
                }
                Err(_) => clean = false, // still borrowed by an in-flight send: dropped
            }
        }
        drop(inner.inbox.lock().take());
        // The last node of the process to let go of the priority thread stops it.
        let priority = inner.priority.lock().take();
        if let Some(p) = priority {
            if let Ok(p) = Arc::try_unwrap(p) {
                clean &= p.shutdown(until).await;
            }
        }
        clean
    }

    // ---- one ordered path per key, whatever the size (for `remote`) --------------------

    /// [`send`](Self::send) on the channel a *small* message with `opts` takes, whatever
    /// the size of `msg` (a large one is not moved to the bulk channel): messages with one
    /// key then share one connection, so they keep their order whatever their sizes.
    /// With `merge`, it may be appended to a waiting frame of its key like `send`'s
    /// (write-combining: only later messages move ahead, of other keys); without, it
    /// stays behind everything queued before it on its connection (a fence copy).
    pub(crate) async fn send_pinned<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
        opts: SendOptions,
        merge: bool,
    ) -> Result<()> {
        let (payload, header) =
            encode_one(node, name, &self.inner.name, msg).map_err(encode_error)?;
        let header = if merge { header } else { 0 };
        self.inner
            .forward_sized(node, payload, opts, false, 0, header)
            .await
    }

    /// [`try_send`](Self::try_send), pinned like [`send_pinned`](Self::send_pinned)
    /// (without write-combining); failures counted as `try_send` counts them.
    pub(crate) fn try_send_pinned<T: Serialize + ?Sized>(
        &self,
        node: &str,
        name: &str,
        msg: &T,
        opts: SendOptions,
    ) -> Result<()> {
        let (payload, _) = encode_one(node, name, &self.inner.name, msg).map_err(encode_error)?;
        let r = self.inner.forward_now_sized(node, payload, opts, false, 0);
        if let Err(e) = &r {
            let reason = match e {
                Error::Full { .. } => "try_send_full",
                _ => "try_send_not_connected",
            };
            self.inner.meters.dropped(reason).increment(1);
        }
        r
    }

    /// One partition key per connection of the channel [`send_pinned`](Self::send_pinned)
    /// uses with `urgency`: a message sent with each of them (a fence) is, at the peer,
    /// behind every message queued before it on that channel, whatever their keys.
    pub(crate) fn fence_keys(&self, urgency: Urgency) -> Vec<u64> {
        let opts = SendOptions { urgency, key: None };
        let channel = self.inner.channel_for(opts, 0);
        let n = self
            .inner
            .settings
            .channels
            .channels
            .iter()
            .find(|s| s.name == channel)
            .map_or(1, |s| usize::from(s.parallelism.max(1)));
        let mut keys = vec![None; n];
        let mut found = 0;
        let mut k = 0u64;
        while found < n {
            let slot = &mut keys[crate::channel::connection_of(k, n)];
            if slot.is_none() {
                *slot = Some(k);
                found += 1;
            }
            k += 1;
        }
        keys.into_iter().flatten().collect()
    }
}

/// Sends a `Cancel` (without waiting) if the request it guards is dropped unanswered.
struct CancelOnDrop<'a> {
    inner: &'a Inner,
    pending: request::Pending<'a>,
    node: &'a str,
    id: u64,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.pending.waiting() {
            let w = Wire::Cancel {
                id: self.id,
                to_node: self.node.to_string(),
                from: self.inner.name.clone(),
            };
            if self
                .inner
                .forward_now(self.node, encode(&w), URGENT)
                .is_err()
            {
                self.inner.meters.dropped("cancel_failed").increment(1);
            }
        }
    }
}

/// Decodes and dispatches each inbound message on the task that read it from its
/// connection (one task switch less per message than a queue to a dispatching task; see
/// D260). Messages of one connection are handled in order; a delivery that must wait for
/// room in a receiver's queue holds only that connection (backpressure to the sender).
/// From the start of shutdown on, inbound messages are ignored (counted,
/// `reason="shutting_down"`).
fn inbound_handler(
    weak: Weak<Inner>,
    app: Option<tokio::runtime::Handle>,
) -> crate::channel::InboundHandler {
    Arc::new(move |msg: Inbound| {
        // On the priority thread: whatever the handling spawns (request handlers, reply
        // senders) belongs to the application's runtime.
        let _app = app.as_ref().map(tokio::runtime::Handle::enter);
        let inner = weak.upgrade()?;
        if inner.cancel.is_cancelled() {
            inner.meters.dropped("shutting_down").increment(1);
            return None;
        }
        let may_wait = &*msg.channel != COORDINATION;
        let wait = inner.on_inbound(msg, may_wait)?;
        let cancel = inner.cancel.clone();
        drop(inner);
        Some(Box::pin(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                outcome = wait => {
                    if outcome != Outcome::Delivered {
                        metrics::counter!("foundation_node_dropped_total", "reason" => outcome.label()).increment(1);
                    }
                }
            }
        }))
    })
}

/// The heartbeat / membership / retransmission rounds.
async fn rounds(weak: Weak<Inner>, cancel: CancellationToken) {
    let _live = TaskGuard::new();
    let every = match weak.upgrade() {
        Some(i) => i.settings.heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { break };
        round += 1;
        inner.heartbeat_round(round);
    }
}

impl Inner {
    fn is_member(&self, name: &str) -> bool {
        name != self.name && self.view.lock().get(name).is_some()
    }

    /// Whether member `peer` may hand us `wire` on behalf of `claimed`: a member relaying
    /// for another member; for a broadcast, also for an origin not known here yet (not
    /// tombstoned). Over a partial view (HyParView) a broadcast can outrun the membership
    /// gossip that announces its origin; refusing it would cut off every node behind this
    /// one, since each node relays a broadcast only once.
    fn may_relay(&self, peer: &str, claimed: &str, wire: &Wire) -> bool {
        if !self.is_member(peer) || claimed == self.name {
            return false;
        }
        if self.is_member(claimed) {
            return true;
        }
        matches!(wire, Wire::Broadcast { .. }) && !self.view.lock().is_tombstoned(claimed)
    }

    /// Never waits: heartbeats, topology ticks, membership, retransmissions.
    fn heartbeat_round(self: &Arc<Self>, round: u64) {
        let out = self.topology.lock().tick();
        self.send_topology(out);
        let (inc, version) = {
            let v = self.view.lock();
            (v.me().incarnation, v.me().version)
        };
        let beat = encode(&Wire::Heartbeat {
            incarnation: inc,
            version,
        });
        for l in self.links.up_peers() {
            if l.try_send(COORDINATION, None, beat.clone()).is_err() {
                self.meters.dropped("heartbeat_full").increment(1);
            }
        }
        self.membership_round(round);
        self.switch_round(round);
        self.retransmit();
    }

    /// The channel of an application message: by urgency, and for an unkeyed message also
    /// by size (a keyed one is never moved by its size: its key's order needs one
    /// connection, D402).
    pub(crate) fn channel_for(&self, opts: SendOptions, size: usize) -> &str {
        let meta = MessageMeta {
            urgency: opts.urgency,
            size: if opts.key.is_some() { 0 } else { size },
            ..MessageMeta::default()
        };
        crate::channel::route(
            &meta,
            &self.settings.channels.route,
            &self.settings.channels.channels,
        )
    }

    /// The urgency under which a message that came on `channel` is passed on, so a relay
    /// puts it on the same kind of channel (with the default table: the same channel).
    fn urgency_of(&self, channel: &str) -> Urgency {
        let route = &self.settings.channels.route;
        if channel == COORDINATION || channel == route.urgent_channel {
            Urgency::Urgent
        } else if channel == route.bulk_channel {
            Urgency::Bulk
        } else if channel == route.background_channel {
            Urgency::Background
        } else {
            Urgency::Normal
        }
    }

    /// The next hop towards `to`.
    fn hop(&self, to: &str) -> Result<String> {
        self.hop_route(to).map(|(hop, _)| hop)
    }

    /// The next hop towards `to`, and whether it may be cached (not a transient direct
    /// hop, whose permission depends on the view: D440).
    fn hop_route(&self, to: &str) -> Result<(String, bool)> {
        if to == self.name {
            return Err(Error::InvalidArgument("sending to this node itself".into()));
        }
        if self.down.lock().contains_key(to) {
            return Err(Error::NotConnected {
                node: to.to_string(),
                reason: "declared down".into(),
            });
        }
        if let Some(e) = self.refused(to) {
            return Err(e);
        }
        let hop = self.topology.read().next_hop(to);
        let (hop, cacheable) = match hop {
            Some(h) => (h, true),
            // Not reachable through the overlay (a topology without relaying, a
            // partially switched cluster): a transient direct connection.
            None => (self.direct_hop(to)?, false),
        };
        match self.refused(&hop) {
            Some(e) => Err(e),
            None => Ok((hop, cacheable)),
        }
    }

    /// The link to `hop`, started in the background if there is none and its address is
    /// known; `None` when it is not.
    fn link_or_start(&self, hop: &str) -> Option<Arc<link::Link>> {
        if let Some(l) = self.links.get(hop) {
            return Some(l);
        }
        let addr = self.view.lock().get(hop).map(|u| u.addr.clone())?;
        (!addr.is_empty()).then(|| self.links.ensure(hop, &addr))
    }

    /// Sends towards `to`, waiting for the link (bounded) and for queue room. Only for
    /// callers' own tasks.
    async fn forward(
        &self,
        to: &str,
        payload: Bytes,
        opts: SendOptions,
        control: bool,
    ) -> Result<()> {
        let size = payload.len();
        self.forward_sized(to, payload, opts, control, size, 0)
            .await
    }

    /// [`forward`](Self::forward), routing as a message of `size` bytes; `header` > 0
    /// marks a `SendBatch` frame with a header of that length, which the queue may
    /// append later frames of the same header to (`ChannelSender::send_merging`).
    async fn forward_sized(
        &self,
        to: &str,
        payload: Bytes,
        opts: SendOptions,
        control: bool,
        size: usize,
        header: usize,
    ) -> Result<()> {
        let ch = if let Some(ch) = self.cached_route(to) {
            ch
        } else {
            let epoch = self.route_epoch();
            let (hop, cacheable) = self.hop_route(to)?;
            let link = self.link_or_start(&hop).ok_or_else(|| Error::UnknownNode {
                node: to.to_string(),
            })?;
            self.links.used(&link);
            let ch = link.ready(self.settings.link_wait).await?;
            if cacheable {
                self.remember_route(to, epoch, &link, &ch);
            }
            ch
        };
        if control {
            return ch.send(COORDINATION, opts.key, payload).await;
        }
        let channel = self.channel_for(opts, size);
        if header > 0 {
            return ch.send_merging(channel, opts.key, payload, header).await;
        }
        ch.send(channel, opts.key, payload).await
    }

    /// Queues `payload` towards `to` without waiting.
    fn forward_now(&self, to: &str, payload: Bytes, opts: SendOptions) -> Result<()> {
        self.forward_now_on(to, payload, opts, true)
    }

    /// [`forward_now`](Self::forward_now) for node traffic (`control`: urgent goes on
    /// `coordination`) or for application messages (urgent goes on the channel
    /// [`channel_for`](Self::channel_for) picks, `urgent` in the default table, as
    /// `send` does).
    ///
    /// Never waits: a next hop whose link is still being made (or remade) holds the
    /// message in the link's bounded backlog, sent when it comes up (D365); a hop with
    /// no link yet gets one started in the background. It fails only when the hop is
    /// unknown, its queue or backlog is full, or its link has ended.
    fn forward_now_on(
        &self,
        to: &str,
        payload: Bytes,
        opts: SendOptions,
        control: bool,
    ) -> Result<()> {
        let size = payload.len();
        self.forward_now_sized(to, payload, opts, control, size)
    }

    /// [`forward_now_on`](Self::forward_now_on), routing as a message of `size` bytes.
    fn forward_now_sized(
        &self,
        to: &str,
        payload: Bytes,
        opts: SendOptions,
        control: bool,
        size: usize,
    ) -> Result<()> {
        let hop = self.hop(to)?;
        let Some(link) = self.link_or_start(&hop) else {
            return Err(Error::NotConnected {
                node: hop,
                reason: "no link and no known address".into(),
            });
        };
        self.links.used(&link);
        let channel = if control && opts.urgency == Urgency::Urgent {
            COORDINATION
        } else {
            self.channel_for(opts, size)
        };
        link.send_or_park(channel, opts.key, payload)
    }

    /// Appends an application `SendBatch` frame with a header of `header` bytes to a
    /// frame waiting in the queue towards `to` (the one `forward_sized` would use), if
    /// that can be done now without waiting; `false` (nothing sent) otherwise.
    /// Returns `Some(yield)` when appended (see `ChannelSender::append_now`).
    fn append_now(
        &self,
        to: &str,
        payload: &[u8],
        header: usize,
        opts: SendOptions,
    ) -> Option<bool> {
        let channels = if let Some(channels) = self.cached_route(to) {
            channels
        } else {
            let epoch = self.route_epoch();
            let (hop, cacheable) = self.hop_route(to).ok()?;
            let link = self.links.get(&hop)?;
            self.links.used(&link);
            let channels = link.current()?;
            if cacheable {
                self.remember_route(to, epoch, &link, &channels);
            }
            channels
        };
        let channel = self.channel_for(opts, payload.len() - header);
        channels.append_now(channel, opts.key, payload, header)
    }

    /// [`forward_now_on`](Self::forward_now_on) for an application `SendBatch` frame
    /// with a header of `header` bytes, which the queue may append to a waiting frame
    /// (`ChannelSender::try_send_merging`).
    fn try_forward_merging(
        &self,
        to: &str,
        payload: Bytes,
        header: usize,
        opts: SendOptions,
    ) -> Result<()> {
        let hop = self.hop(to)?;
        let link = self.links.get(&hop);
        if let Some(l) = &link {
            self.links.used(l);
        }
        let channels = link.and_then(|l| l.current());
        let Some(channels) = channels else {
            return Err(Error::NotConnected {
                node: hop,
                reason: "link down".into(),
            });
        };
        let channel = self.channel_for(opts, payload.len() - header);
        let sender = channels.sender(channel)?;
        sender
            .try_send_merging(opts.key, payload, header)
            .map_err(|e| match e {
                crate::channel::TrySendError::Full { .. } => Error::Full { node: hop },
                crate::channel::TrySendError::Closed { reason, .. } => {
                    Error::NotConnected { node: hop, reason }
                }
            })
    }

    fn acked_wire(&self, to: &str, seq: u64, base: u64, name: &str, body: Bytes) -> Wire {
        Wire::Acked {
            to_node: to.to_string(),
            from: self.name.clone(),
            incarnation: self.incarnation,
            seq,
            base,
            to_name: name.to_string(),
            body,
        }
    }

    /// Resends unacknowledged messages whose last send is older than `retransmit_after`.
    fn retransmit(&self) {
        let now = Instant::now();
        let after = self.settings.retransmit_after;
        let mut resend = Vec::new();
        {
            let mut out = self.acked.out.lock();
            for (to, o) in out.iter_mut() {
                if o.unacked.is_empty() || o.last_sent.is_some_and(|t| now - t < after) {
                    continue;
                }
                o.last_sent = Some(now);
                let base = o.unacked.front().map_or(0, |(s, _, _)| *s);
                for (seq, name, body) in &o.unacked {
                    resend.push(self.acked_wire(to, *seq, base, name, body.clone()));
                }
            }
        }
        let opts = SendOptions {
            urgency: Urgency::Normal,
            key: Some(0),
        };
        for w in resend {
            let to = w.to_node().unwrap_or_default().to_string();
            if self.forward_now(&to, encode(&w), opts).is_err() {
                break;
            }
            self.meters.retransmitted.increment(1);
        }
    }

    /// Decodes and handles one inbound message; returns a delivery to wait for, if the
    /// receiver's queue is full and waiting is allowed on this channel.
    fn on_inbound(
        self: &Arc<Self>,
        msg: Inbound,
        may_wait: bool,
    ) -> Option<futures_util::future::BoxFuture<'static, Outcome>> {
        let peer: &str = &msg.peer;
        let Some(wire) = wire::decode(&msg.payload) else {
            self.meters.dropped("undecodable").increment(1);
            return None;
        };
        if let Some(claimed) = wire.claimed_sender() {
            // The claimed sender must be the authenticated peer, or the peer a member
            // relaying for another member.
            if claimed != peer && !self.may_relay(peer, claimed, &wire) {
                self.meters.refused_identity.increment(1);
                tracing::warn!(
                    peer,
                    claimed,
                    kind = wire.kind(),
                    "refused: sender is not the authenticated peer"
                );
                return None;
            }
        }
        if !matches!(
            wire,
            Wire::Gossip { .. }
                | Wire::Heartbeat { .. }
                | Wire::Topology { .. }
                | Wire::Switch { .. }
        ) && self.refuses_traffic_from(peer)
        {
            return None; // a peer with another channel table (table.rs, D431)
        }
        if let Some(to) = wire.to_node() {
            if to != self.name {
                // A hop on the message's route: pass the same bytes on, never waiting.
                let to = to.to_string();
                let opts = SendOptions {
                    urgency: self.urgency_of(&msg.channel),
                    key: msg.key,
                };
                // On the same kind of channel it came on (an urgent application message
                // stays off `coordination`).
                let control = &*msg.channel == COORDINATION;
                // A large message that came on the small-message channel (pinned there to
                // keep its key's order, see `Node::send_pinned`) stays on it.
                let size = if *msg.channel == *self.channel_for(opts, 0) {
                    0
                } else {
                    msg.payload.len()
                };
                if let Err(e) =
                    self.forward_now_sized(&to, msg.payload.clone(), opts, control, size)
                {
                    tracing::debug!(from = peer, to = %to, error = %e, "relay dropped");
                    self.meters.dropped("relay_failed").increment(1);
                }
                return None;
            }
        }
        match wire {
            Wire::Heartbeat {
                incarnation,
                version,
            } => self.on_heartbeat(peer, incarnation, version),
            Wire::Gossip { members } => self.on_gossip(peer, members),
            Wire::Topology { payload } => {
                self.heard_from(peer);
                let out = self.topology.lock().on_message(peer, &payload);
                self.send_topology(out);
                // Broadcasts the topology's own protocol delivered (broadcast.rs).
                return self.deliver_overlay(may_wait);
            }
            Wire::Send {
                to_name,
                from,
                body,
                ..
            } => return self.deliver(&to_name, &from, &body, may_wait),
            Wire::SendBatch {
                to_name,
                from,
                body,
                ..
            } => {
                let Some(n) = wire::batch_count(&body) else {
                    self.meters.dropped("undecodable").increment(1);
                    return None;
                };
                let slot = self.slots.read().get(&to_name).cloned();
                let Some(Slot::Receiver(_, many)) = slot else {
                    self.meters.dropped("no_receiver").increment(n as u64);
                    return None;
                };
                // The sender's name: the connection's own (shared, no copy) unless relayed.
                let from: Arc<str> = if from == *msg.peer {
                    msg.peer.clone()
                } else {
                    from.into()
                };
                let wait = many(&from, body, n, may_wait)?;
                return Some(Box::pin(async move {
                    wait.await;
                    Outcome::Delivered
                }));
            }
            Wire::Request {
                id,
                to_name,
                from,
                body,
                ..
            } => self.on_request(id, to_name, from, body),
            Wire::Reply { id, from, body, .. } => {
                if !self.requests.complete(&from, id, body) {
                    self.meters.dropped("late_reply").increment(1);
                }
            }
            Wire::Broadcast {
                origin,
                incarnation,
                id,
                to_name,
                body,
            } => {
                if origin == self.name || !self.broadcasts.first_time(&origin, incarnation, id) {
                    return None;
                }
                let targets = self.topology.lock().broadcast_targets(Some(peer));
                for t in targets.into_iter().filter(|t| *t != origin) {
                    // A neighbour the topology just chose may have no live link yet: the
                    // link holds the hop until it is up (each node relays only once).
                    self.ensure_link(&t);
                    let sent = self.links.get(&t).map(|l| {
                        let ch = self.channel_for(SendOptions::default(), msg.payload.len());
                        l.send_or_park(ch, None, msg.payload.clone())
                    });
                    if !matches!(sent, Some(Ok(()))) {
                        self.meters.dropped("broadcast_relay_failed").increment(1);
                    }
                }
                return self.deliver_broadcast(&to_name, &origin, &body, may_wait);
            }
            Wire::Acked {
                from,
                incarnation,
                seq,
                base,
                to_name,
                body,
                ..
            } => self.on_acked(from, incarnation, seq, base, to_name, body),
            Wire::Cancel { id, from, .. } => {
                if self.requests.cancel(&from, id) {
                    metrics::counter!("foundation_node_requests_total", "result" => "cancelled")
                        .increment(1);
                }
            }
            Wire::Switch { payload } => self.on_switch(peer, &payload),
            Wire::Ack {
                from,
                incarnation,
                upto,
                ..
            } => {
                if incarnation == self.incarnation {
                    let n = self.acked.acked(&from, upto);
                    metrics::gauge!("foundation_node_retransmit_buffer").decrement(n as f64);
                }
            }
        }
        None
    }

    fn deliver(
        &self,
        to_name: &str,
        from: &str,
        body: &Bytes,
        may_wait: bool,
    ) -> Option<futures_util::future::BoxFuture<'static, Outcome>> {
        let slot = self.slots.read().get(to_name).cloned();
        match slot {
            Some(Slot::Receiver(d, _)) => match d(from, body, may_wait) {
                Attempt::Done(Outcome::Delivered) => None,
                Attempt::Done(o) => {
                    self.meters.dropped(o.label()).increment(1);
                    None
                }
                Attempt::Wait(fut) => Some(fut),
            },
            _ => {
                self.meters.dropped("no_receiver").increment(1);
                None
            }
        }
    }

    fn on_request(self: &Arc<Self>, id: u64, to_name: String, from: String, body: Bytes) {
        let slot = self.slots.read().get(&to_name).cloned();
        let refuse = |body: std::result::Result<Bytes, ReplyError>| {
            let w = Wire::Reply {
                id,
                to_node: from.clone(),
                from: self.name.clone(),
                body,
            };
            self.reply_soon(&from, w);
        };
        let Some(Slot::Server(serve)) = slot else {
            refuse(Err(ReplyError::NoServer(format!(
                "no server named `{to_name}` on {}",
                self.name
            ))));
            return;
        };
        let Some(permit) = self.requests.permit() else {
            self.meters.requests_rejected.increment(1);
            refuse(Err(ReplyError::Overloaded(format!(
                "{} request handlers running",
                self.settings.max_concurrent_requests
            ))));
            return;
        };
        let weak = Arc::downgrade(self);
        let mut fut = serve(from.clone(), body);
        // First poll here, on the connection's reading task (D263): a handler that answers
        // at once queues its reply without a task hand-off. One that is not ready goes on
        // in its own owned task (its next poll registers that task's waker). A panic in
        // that first poll is answered as a failure and does not reach the reading task.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let first =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        let ready = match first {
            Ok(std::task::Poll::Ready(r)) => Some(r),
            Ok(std::task::Poll::Pending) => None,
            Err(_) => Some(Err(ReplyError::Failed(
                "the request handler panicked".into(),
            ))),
        };
        if let Some(r) = ready {
            drop(permit);
            metrics::counter!("foundation_node_requests_total", "result" => if r.is_ok() { "ok" } else { "failed" }).increment(1);
            let w = Wire::Reply {
                id,
                to_node: from.clone(),
                from: self.name.clone(),
                body: r,
            };
            self.reply_soon(&from, w);
            return;
        }
        let requester = from.clone();
        self.requests.spawn_handler(&requester, id, async move {
            let _permit = permit;
            let r = fut.await;
            let Some(inner) = weak.upgrade() else { return };
            metrics::counter!("foundation_node_requests_total", "result" => if r.is_ok() { "ok" } else { "failed" }).increment(1);
            let w = Wire::Reply {
                id,
                to_node: from.clone(),
                from: inner.name.clone(),
                body: r,
            };
            // The handler's own task: it may wait for the link and for queue room.
            if inner.forward(&from, encode(&w), URGENT, true).await.is_err() {
                inner.meters.dropped("reply_failed").increment(1);
            }
        });
    }

    /// Sends a reply now if the link is up and its queue has room, otherwise from an owned
    /// task that waits for the link and for room (bounded by the handler limit; beyond it
    /// the reply is dropped, counted).
    fn reply_soon(self: &Arc<Self>, to: &str, w: Wire) {
        match self.forward_now(to, encode(&w), URGENT) {
            Ok(()) => {}
            Err(Error::NotConnected { .. } | Error::Full { .. }) => {
                let Some(permit) = self.requests.permit() else {
                    self.meters.dropped("reply_failed").increment(1);
                    return;
                };
                let weak = Arc::downgrade(self);
                let to = to.to_string();
                self.requests.spawn(async move {
                    let _permit = permit;
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.forward(&to, encode(&w), URGENT, true).await.is_err() {
                        inner.meters.dropped("reply_failed").increment(1);
                    }
                });
            }
            Err(_) => self.meters.dropped("reply_failed").increment(1),
        }
    }

    fn on_acked(
        self: &Arc<Self>,
        from: String,
        incarnation: u64,
        seq: u64,
        base: u64,
        to_name: String,
        body: Bytes,
    ) {
        let window = self.settings.acked_window.max(1) as u64;
        let upto = {
            let mut inc = self.acked.inc.lock();
            let s = inc
                .entry((from.clone(), incarnation))
                .or_insert_with(|| delivery::Incoming {
                    expected: base.max(1),
                    held: Default::default(),
                });
            if seq < s.expected || s.held.contains_key(&seq) {
                self.meters.duplicates.increment(1);
            } else if seq < s.expected + window {
                s.held.insert(seq, (to_name, body));
            } else {
                self.meters.dropped("acked_beyond_window").increment(1);
            }
            // Deliver the contiguous prefix; stop at a full receiver (it comes again).
            while let Some((name, body)) = s.held.get(&s.expected).cloned() {
                let slot = self.slots.read().get(&name).cloned();
                let outcome = match slot {
                    Some(Slot::Receiver(d, _)) => match d(&from, &body, false) {
                        Attempt::Done(o) => o,
                        Attempt::Wait(_) => Outcome::Full,
                    },
                    _ => Outcome::Closed,
                };
                if outcome == Outcome::Full {
                    break;
                }
                if outcome != Outcome::Delivered {
                    self.meters.dropped(outcome.label()).increment(1);
                }
                s.held.remove(&s.expected);
                s.expected += 1;
            }
            s.expected - 1
        };
        let ack = Wire::Ack {
            to_node: from.clone(),
            from: self.name.clone(),
            incarnation,
            upto,
        };
        if self.forward_now(&from, encode(&ack), URGENT).is_err() {
            self.meters.dropped("ack_failed").increment(1);
        }
    }
}

/// Describes the node metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_node_dropped_total",
        "Messages a node dropped, by reason (no_receiver, receiver_closed, undecodable, relay_failed, try_send_full, reply_failed, ...)."
    );
    metrics::describe_counter!(
        "foundation_node_reconnect_failures_total",
        "Failed attempts to link to a peer."
    );
    metrics::describe_counter!(
        "foundation_node_link_events_total",
        "Link state changes, by event (up, down, wrong_peer)."
    );
    metrics::describe_gauge!("foundation_node_links", "Peers with a link task.");
    metrics::describe_counter!(
        "foundation_node_refused_total",
        "Inbound messages refused, by reason (identity: the claimed sender is not the authenticated peer nor relayed by a member)."
    );
    metrics::describe_counter!(
        "foundation_node_requests_total",
        "Requests served, by result (ok, failed, rejected: over max_concurrent_requests)."
    );
    metrics::describe_counter!("foundation_node_suspected_total", "Members suspected.");
    metrics::describe_histogram!(
        "foundation_node_partition_recovery_seconds",
        metrics::Unit::Seconds,
        "Time from a member being declared down until it is up again (a healed partition, a false Down refuted)."
    );
    metrics::describe_counter!(
        "foundation_node_refuted_total",
        "Suspicions of this node it refuted."
    );
    metrics::describe_counter!(
        "foundation_node_view_changes_total",
        "Members added to the view."
    );
    metrics::describe_counter!(
        "foundation_node_retransmitted_total",
        "Acknowledged-delivery messages resent."
    );
    metrics::describe_counter!(
        "foundation_node_duplicates_total",
        "Acknowledged-delivery duplicates suppressed at the receiver."
    );
    metrics::describe_gauge!(
        "foundation_node_retransmit_buffer",
        "Messages held for retransmission (all destinations)."
    );
    switch::describe_metrics();
}
