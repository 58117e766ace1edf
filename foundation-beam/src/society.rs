//! Societies: member processes wired as a mesh, a ring, a tree, or adaptively.
//!
//! A [`Society`] is a fixed set of member processes (indexed `0..n`, a [`MemberId`]) and a
//! [`Wiring`]: which members are direct neighbours. Members talk through the society:
//! [`Society::send`]`(from, to, msg)` routes the message along a shortest path of the
//! current wiring and reports the number of hops (1 between neighbours, 0 to oneself). The
//! message reaches the target's mailbox as an [`Envelope`] carrying sender, target and hop
//! count. Routing is computed on the wiring, and the message is queued once, in the
//! target's mailbox: intermediate members do not handle it (see D50 in
//! `docs/DECISIONS.md`). The hop count is what the same exchange would cost over links
//! that follow the wiring, which is what L3 maps the wiring onto.
//!
//! Four [`Topology`] kinds:
//!
//! * **mesh** — everyone neighbours everyone (1 hop, `n − 1` neighbours each);
//! * **ring** — `i` neighbours `i ± 1 (mod n)` (up to `n / 2` hops);
//! * **tree** with fan-out `k` — `i`'s parent is `(i − 1) / k`, its children
//!   `k·i + 1 ..= k·i + k` (about `2·log_k n` hops);
//! * **adaptive** — starts as a ring and counts who talks to whom (messages sent through
//!   the society). A rewiring task owned by the society runs every
//!   [`AdaptiveSettings::interval_ms`] (tokio time): each pair's score is halved and this
//!   period's messages are added; the wiring becomes the ring plus, greedily, the
//!   highest-scoring pairs (at least [`AdaptiveSettings::min_messages`], at most
//!   [`AdaptiveSettings::top_pairs`] of them) as direct edges, as long as neither member
//!   exceeds [`AdaptiveSettings::max_degree`]. The ring is always kept, so the wiring
//!   stays connected; pairs that stop talking lose their edge as their score decays.
//!
//! Every change of the wiring is a [`Rewired`] value published on a broadcast channel
//! ([`Society::subscribe`]), an [`Event`] of type `system` (if the society was started
//! with an [`Events`] service, [`Society::start_with_events`]), and an increment of
//! `foundation_society_rewirings_total{society}`.
//!
//! ```
//! use foundation_beam::process::spawn_fn;
//! use foundation_beam::society::{Envelope, Society, SocietySettings, Topology};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_beam::Result<()> {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let members = (0..6)
//!     .map(|_| {
//!         let tx = tx.clone();
//!         spawn_fn(move |mut inbox| async move {
//!             while let Some(env) = inbox.recv().await {
//!                 let env: Envelope<&'static str> = env;
//!                 let _ = tx.send((env.from, env.to, env.hops, env.msg));
//!             }
//!         })
//!     })
//!     .collect();
//! let settings = SocietySettings { name: "six".into(), topology: Topology::Ring, ..Default::default() };
//! let society = Society::start(settings, members)?;
//! assert_eq!(society.neighbours(0)?, vec![1, 5]);
//! let sent = society.send(0, 3, "hello").await.unwrap();
//! assert_eq!(sent.hops, 3); // the far side of a ring of six
//! assert_eq!(rx.recv().await, Some((0, 3, 3, "hello")));
//! society.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Metrics
//! Label `society` (the settings' `name`).
//!
//! | name | kind |
//! |---|---|
//! | `foundation_society_messages_total` | counter, messages sent through the society |
//! | `foundation_society_hops_total` | counter, hops of those messages (sum) |
//! | `foundation_society_hops` | histogram, hops per message |
//! | `foundation_society_rewirings_total` | counter, changes of the wiring |
//! | `foundation_society_edges` | gauge, edges of the current wiring |
//!
//! # Ownership
//! The rewiring task (adaptive societies only) is owned by the [`Society`]: dropping the
//! society cancels it, [`Society::shutdown`] cancels it and waits for it. The members are
//! not stopped by either: the society holds handles to them, and they stop when their
//! last handle is gone (see [`process`](crate::process)).

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use foundation_core::events::{Event, Events};
use foundation_core::telemetry::TaskGuard;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::mailbox::{Delivery, SendError};
use crate::process::Handle;

/// A member of a society: its index, `0..len`, in the order the members were given.
pub type MemberId = usize;

/// Most members a society accepts. The routing table holds `n²` next hops and distances
/// (4 bytes per pair: 4 MiB at this bound).
pub const MAX_MEMBERS: usize = 1024;

/// Rewirings a slow [`Society::subscribe`] receiver may fall behind before it skips some
/// (it then gets `RecvError::Lagged`; [`Society::topology`] always has the current wiring).
const REWIRED_CAPACITY: usize = 64;

/// How the members of a society are wired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// Everyone neighbours everyone.
    Mesh,
    /// Member `i` neighbours `i − 1` and `i + 1` (mod n).
    #[default]
    Ring,
    /// A tree rooted at member 0: `i`'s children are `fanout·i + 1 ..= fanout·i + fanout`.
    Tree {
        /// Children per member (at least 1).
        fanout: usize,
    },
    /// A ring plus direct edges between heavy talkers, rewired periodically.
    Adaptive,
}

/// Settings of the adaptive topology. Loads from TOML; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveSettings {
    /// Period of the rewiring task, milliseconds (at least 1). Default 1000.
    pub interval_ms: u64,
    /// Most talking pairs made direct neighbours at a time. Default 8.
    pub top_pairs: usize,
    /// Most neighbours a member gets, ring included (at least 2). Default 4.
    pub max_degree: usize,
    /// Score a pair needs to get a direct edge: messages of this period plus half the
    /// previous score (at least 1). Default 16.
    pub min_messages: u64,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        AdaptiveSettings {
            interval_ms: 1000,
            top_pairs: 8,
            max_degree: 4,
            min_messages: 16,
        }
    }
}

/// Settings of a [`Society`]. Loads from TOML; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SocietySettings {
    /// Name used as the `society` label of the metrics and in events. Default `"default"`.
    pub name: String,
    /// The wiring. Default ring.
    pub topology: Topology,
    /// Used when `topology` is [`Topology::Adaptive`].
    pub adaptive: AdaptiveSettings,
}

impl Default for SocietySettings {
    fn default() -> Self {
        SocietySettings {
            name: "default".to_owned(),
            topology: Topology::default(),
            adaptive: AdaptiveSettings::default(),
        }
    }
}

/// What a member receives: the message and how it travelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<M> {
    /// The sending member.
    pub from: MemberId,
    /// The receiving member.
    pub to: MemberId,
    /// Hops of the route in the wiring at the time of sending.
    pub hops: u32,
    /// The message.
    pub msg: M,
}

/// Outcome of a successful [`Society::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Hops of the route (0 to oneself, 1 to a neighbour).
    pub hops: u32,
    /// The first member on the route after the sender (the target for a neighbour).
    pub next_hop: MemberId,
    /// What the target's mailbox did with it.
    pub delivery: Delivery,
}

/// Why [`Society::send`] did not deliver; the message comes back.
pub enum SocietySendError<M> {
    /// `from` or `to` is not a member.
    UnknownMember {
        /// The index that is not a member.
        member: MemberId,
        /// The message.
        msg: M,
    },
    /// The target's mailbox refused it (full, or the target stopped).
    Mailbox(SendError<M>),
}

impl<M> SocietySendError<M> {
    /// The message that was not delivered.
    pub fn into_inner(self) -> M {
        match self {
            SocietySendError::UnknownMember { msg, .. } => msg,
            SocietySendError::Mailbox(e) => e.into_inner(),
        }
    }
}

impl<M> fmt::Debug for SocietySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocietySendError::UnknownMember { member, .. } => {
                write!(f, "UnknownMember {{ member: {member} }}")
            }
            SocietySendError::Mailbox(e) => write!(f, "Mailbox({e:?})"),
        }
    }
}

impl<M> fmt::Display for SocietySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocietySendError::UnknownMember { member, .. } => write!(f, "no member {member}"),
            SocietySendError::Mailbox(e) => write!(f, "{e}"),
        }
    }
}

impl<M> std::error::Error for SocietySendError<M> {}

/// A pair of members and its talk score when a rewiring made it direct neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TalkingPair {
    /// The lower member index.
    pub a: MemberId,
    /// The higher member index.
    pub b: MemberId,
    /// Its score (this period's messages plus half the previous score).
    pub score: u64,
}

/// Why the wiring changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RewireReason {
    /// The adaptive topology followed the traffic: these pairs (best first) are the
    /// shortcuts of the new wiring. Empty when every shortcut was dropped.
    Traffic {
        /// The shortcut pairs of the new wiring.
        pairs: Vec<TalkingPair>,
    },
}

/// One change of a society's wiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewired {
    /// The society's name.
    pub society: String,
    /// Edges before, `(a, b)` with `a < b`, sorted.
    pub before: Vec<(MemberId, MemberId)>,
    /// Edges after, same form.
    pub after: Vec<(MemberId, MemberId)>,
    /// Why.
    pub reason: RewireReason,
}

/// Sentinel of the routing table: no route (never stored for a connected wiring).
const NO_ROUTE: u16 = u16::MAX;

/// A wiring: the neighbours of every member and the shortest routes between them.
///
/// Immutable; [`Society::topology`] returns the current one, a rewiring replaces it.
#[derive(Clone, PartialEq, Eq)]
pub struct Wiring {
    topology: Topology,
    adjacency: Vec<Vec<MemberId>>,
    /// `next[s * n + t]`: the first hop from `s` towards `t`.
    next: Vec<u16>,
    /// `dist[s * n + t]`: hops from `s` to `t`.
    dist: Vec<u16>,
}

impl fmt::Debug for Wiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wiring")
            .field("topology", &self.topology)
            .field("members", &self.len())
            .field("edges", &self.edges())
            .finish()
    }
}

impl Wiring {
    fn new(topology: Topology, n: usize, edges: &BTreeSet<(MemberId, MemberId)>) -> Wiring {
        let mut adjacency = vec![Vec::new(); n];
        for &(a, b) in edges {
            adjacency[a].push(b);
            adjacency[b].push(a);
        }
        for list in &mut adjacency {
            list.sort_unstable();
        }
        let mut next = vec![NO_ROUTE; n * n];
        let mut dist = vec![NO_ROUTE; n * n];
        // Breadth-first search from every target t: the member through which s was
        // discovered is s's next hop towards t (the graph is undirected). Neighbours are
        // visited in index order, so routes are deterministic.
        let mut queue = VecDeque::with_capacity(n);
        for t in 0..n {
            dist[t * n + t] = 0;
            next[t * n + t] = t as u16;
            queue.clear();
            queue.push_back(t);
            while let Some(u) = queue.pop_front() {
                let du = dist[u * n + t];
                for &v in &adjacency[u] {
                    if dist[v * n + t] == NO_ROUTE {
                        dist[v * n + t] = du + 1;
                        next[v * n + t] = u as u16;
                        queue.push_back(v);
                    }
                }
            }
        }
        Wiring {
            topology,
            adjacency,
            next,
            dist,
        }
    }

    /// The wiring of a fixed topology (adaptive starts as a ring).
    fn initial(topology: Topology, n: usize) -> Wiring {
        let mut edges = BTreeSet::new();
        match topology {
            Topology::Mesh => {
                for b in 1..n {
                    for a in 0..b {
                        edges.insert((a, b));
                    }
                }
            }
            Topology::Ring | Topology::Adaptive => ring_edges(n, &mut edges),
            Topology::Tree { fanout } => {
                for child in 1..n {
                    edges.insert(((child - 1) / fanout, child));
                }
            }
        }
        Wiring::new(topology, n, &edges)
    }

    /// The topology this wiring belongs to.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.adjacency.len()
    }

    /// Whether there are no members (never true for a society's wiring).
    pub fn is_empty(&self) -> bool {
        self.adjacency.is_empty()
    }

    /// The direct neighbours of `member`, ascending; empty for a non-member.
    pub fn neighbours(&self, member: MemberId) -> &[MemberId] {
        self.adjacency.get(member).map_or(&[], Vec::as_slice)
    }

    /// Every edge once, `(a, b)` with `a < b`, sorted.
    pub fn edges(&self) -> Vec<(MemberId, MemberId)> {
        let mut edges = Vec::new();
        for (a, list) in self.adjacency.iter().enumerate() {
            edges.extend(list.iter().filter(|&&b| b > a).map(|&b| (a, b)));
        }
        edges
    }

    /// Hops of the shortest route from `from` to `to`; `None` if either is not a member
    /// or there is no route.
    pub fn hops(&self, from: MemberId, to: MemberId) -> Option<u32> {
        let n = self.len();
        if from >= n || to >= n {
            return None;
        }
        match self.dist[from * n + to] {
            NO_ROUTE => None,
            d => Some(u32::from(d)),
        }
    }

    /// The shortest route from `from` to `to`, both included; `None` as for
    /// [`hops`](Self::hops).
    pub fn path(&self, from: MemberId, to: MemberId) -> Option<Vec<MemberId>> {
        self.hops(from, to)?;
        let n = self.len();
        let mut path = vec![from];
        let mut at = from;
        while at != to {
            at = usize::from(self.next[at * n + to]);
            path.push(at);
        }
        Some(path)
    }

    /// Whether every member can reach every other.
    pub fn is_connected(&self) -> bool {
        let n = self.len();
        n == 0 || (0..n).all(|s| self.dist[s * n] != NO_ROUTE)
    }

    /// The largest number of neighbours of any member.
    pub fn max_degree(&self) -> usize {
        self.adjacency.iter().map(Vec::len).max().unwrap_or(0)
    }

    fn route(&self, from: MemberId, to: MemberId) -> (u32, MemberId) {
        let n = self.len();
        let i = from * n + to;
        (u32::from(self.dist[i]), usize::from(self.next[i]))
    }
}

fn ring_edges(n: usize, edges: &mut BTreeSet<(MemberId, MemberId)>) {
    for i in 0..n {
        let j = (i + 1) % n;
        if i != j {
            edges.insert((i.min(j), i.max(j)));
        }
    }
}

/// Index of the pair `a < b` in the flat triangle of talk counters.
fn pair_index(a: MemberId, b: MemberId) -> usize {
    b * (b - 1) / 2 + a
}

struct Metrics {
    messages: metrics::Counter,
    hops: metrics::Counter,
    hops_histogram: metrics::Histogram,
    rewirings: metrics::Counter,
    edges: metrics::Gauge,
}

impl Metrics {
    fn new(name: &str) -> Metrics {
        let l = || ("society", name.to_owned());
        Metrics {
            messages: metrics::counter!("foundation_society_messages_total", &[l()]),
            hops: metrics::counter!("foundation_society_hops_total", &[l()]),
            hops_histogram: metrics::histogram!("foundation_society_hops", &[l()]),
            rewirings: metrics::counter!("foundation_society_rewirings_total", &[l()]),
            edges: metrics::gauge!("foundation_society_edges", &[l()]),
        }
    }
}

struct Shared {
    name: String,
    adaptive: AdaptiveSettings,
    wiring: ArcSwap<Wiring>,
    /// Messages per pair since the last rewiring (adaptive only), a flat triangle indexed
    /// by [`pair_index`]: one relaxed add per send, no lock.
    talk: Box<[AtomicU64]>,
    rewired: broadcast::Sender<Rewired>,
    events: Option<Events>,
    m: Metrics,
}

/// A running society. See the [module documentation](self).
///
/// Not `Clone`; share it as `Arc<Society<M>>`. Dropping it stops the rewiring task (not
/// the members).
pub struct Society<M> {
    shared: Arc<Shared>,
    members: Vec<Handle<Envelope<M>>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<M> fmt::Debug for Society<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Society")
            .field("name", &self.shared.name)
            .field("wiring", &**self.shared.wiring.load())
            .finish()
    }
}

impl<M> Drop for Society<M> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<M: Send + 'static> Society<M> {
    /// Starts a society of `members` (member `i` is `members[i]`) wired as
    /// `settings.topology`; an adaptive society starts its rewiring task on the current
    /// tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no members, more than [`MAX_MEMBERS`], a tree
    /// fan-out of 0, adaptive settings out of range, or an adaptive society outside a
    /// tokio runtime.
    pub fn start(settings: SocietySettings, members: Vec<Handle<Envelope<M>>>) -> Result<Self> {
        Self::start_inner(settings, members, None)
    }

    /// Like [`start`](Self::start); every rewiring is also emitted on `events` as an
    /// [`Event`] of type `system` whose payload is the [`Rewired`] value (MessagePack,
    /// named fields).
    pub fn start_with_events(
        settings: SocietySettings,
        members: Vec<Handle<Envelope<M>>>,
        events: Events,
    ) -> Result<Self> {
        Self::start_inner(settings, members, Some(events))
    }

    fn start_inner(
        settings: SocietySettings,
        members: Vec<Handle<Envelope<M>>>,
        events: Option<Events>,
    ) -> Result<Self> {
        let n = members.len();
        let invalid = |what: String| Err(Error::InvalidArgument(what));
        if n == 0 || n > MAX_MEMBERS {
            return invalid(format!(
                "a society needs 1..={MAX_MEMBERS} members, got {n}"
            ));
        }
        if let Topology::Tree { fanout: 0 } = settings.topology {
            return invalid("a tree needs a fan-out of at least 1".into());
        }
        let adaptive = settings.topology == Topology::Adaptive;
        let a = &settings.adaptive;
        if adaptive && (a.interval_ms == 0 || a.max_degree < 2 || a.min_messages == 0) {
            return invalid(format!(
                "adaptive settings out of range (interval_ms >= 1, max_degree >= 2, \
                 min_messages >= 1): {a:?}"
            ));
        }
        let runtime = if adaptive {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => Some(rt),
                Err(_) => return invalid("an adaptive society needs a tokio runtime".into()),
            }
        } else {
            None
        };
        let wiring = Wiring::initial(settings.topology, n);
        let m = Metrics::new(&settings.name);
        m.edges.set(wiring.edges().len() as f64);
        let talk_len = if adaptive { n * (n - 1) / 2 } else { 0 };
        let shared = Arc::new(Shared {
            name: settings.name,
            adaptive: settings.adaptive,
            wiring: ArcSwap::from_pointee(wiring),
            talk: (0..talk_len).map(|_| AtomicU64::new(0)).collect(),
            rewired: broadcast::Sender::new(REWIRED_CAPACITY),
            events,
            m,
        });
        let stop = CancellationToken::new();
        let task = runtime.map(|rt| rt.spawn(rewirer(shared.clone(), stop.clone())));
        Ok(Society {
            shared,
            members,
            stop,
            task: Mutex::new(task),
        })
    }

    /// The society's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never true: a society has at least one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The handle of `member`.
    pub fn member(&self, member: MemberId) -> Option<&Handle<Envelope<M>>> {
        self.members.get(member)
    }

    /// The current wiring.
    pub fn topology(&self) -> Arc<Wiring> {
        self.shared.wiring.load_full()
    }

    /// The current direct neighbours of `member`, ascending.
    pub fn neighbours(&self, member: MemberId) -> Result<Vec<MemberId>> {
        self.check(member)?;
        Ok(self.shared.wiring.load().neighbours(member).to_vec())
    }

    /// Hops from `from` to `to` in the current wiring.
    pub fn hops(&self, from: MemberId, to: MemberId) -> Result<u32> {
        self.check(from)?;
        self.check(to)?;
        Ok(self.shared.wiring.load().route(from, to).0)
    }

    /// Receives every later rewiring.
    pub fn subscribe(&self) -> broadcast::Receiver<Rewired> {
        self.shared.rewired.subscribe()
    }

    /// Sends `msg` from member `from` to member `to` along the current wiring, waiting for
    /// room if the target's mailbox applies backpressure.
    pub async fn send(
        &self,
        from: MemberId,
        to: MemberId,
        msg: M,
    ) -> std::result::Result<Sent, SocietySendError<M>> {
        let (env, next_hop) = match self.route(from, to, msg) {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        let hops = env.hops;
        match self.members[to].send(env).await {
            Ok(delivery) => Ok(Sent {
                hops,
                next_hop,
                delivery,
            }),
            Err(e) => Err(SocietySendError::Mailbox(unwrap_send_error(e))),
        }
    }

    /// Like [`send`](Self::send) without waiting: a full mailbox hands the message back.
    pub fn try_send(
        &self,
        from: MemberId,
        to: MemberId,
        msg: M,
    ) -> std::result::Result<Sent, SocietySendError<M>> {
        let (env, next_hop) = self.route(from, to, msg)?;
        let hops = env.hops;
        match self.members[to].try_send(env) {
            Ok(delivery) => Ok(Sent {
                hops,
                next_hop,
                delivery,
            }),
            Err(e) => Err(SocietySendError::Mailbox(unwrap_send_error(e))),
        }
    }

    /// Stops the rewiring task and waits for it. Sends keep working on the last wiring.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether a rewiring task is running (adaptive societies until shutdown or drop).
    pub fn is_rewiring(&self) -> bool {
        self.task.lock().as_ref().is_some_and(|t| !t.is_finished())
    }

    fn check(&self, member: MemberId) -> Result<()> {
        if member < self.members.len() {
            Ok(())
        } else {
            Err(Error::UnknownMember {
                society: self.shared.name.clone(),
                member,
            })
        }
    }

    /// Routes one message: counts it (and its pair, if adaptive) and wraps it.
    fn route(
        &self,
        from: MemberId,
        to: MemberId,
        msg: M,
    ) -> std::result::Result<(Envelope<M>, MemberId), SocietySendError<M>> {
        let n = self.members.len();
        if from >= n || to >= n {
            let member = if from >= n { from } else { to };
            return Err(SocietySendError::UnknownMember { member, msg });
        }
        let (hops, next_hop) = self.shared.wiring.load().route(from, to);
        if !self.shared.talk.is_empty() && from != to {
            self.shared.talk[pair_index(from.min(to), from.max(to))]
                .fetch_add(1, Ordering::Relaxed);
        }
        let m = &self.shared.m;
        m.messages.increment(1);
        m.hops.increment(u64::from(hops));
        m.hops_histogram.record(f64::from(hops));
        Ok((
            Envelope {
                from,
                to,
                hops,
                msg,
            },
            next_hop,
        ))
    }
}

fn unwrap_send_error<M>(e: SendError<Envelope<M>>) -> SendError<M> {
    match e {
        SendError::Full(env) => SendError::Full(env.msg),
        SendError::Closed(env) => SendError::Closed(env.msg),
    }
}

/// The rewiring task of an adaptive society.
async fn rewirer(shared: Arc<Shared>, stop: CancellationToken) {
    let _guard = TaskGuard::new();
    let interval = Duration::from_millis(shared.adaptive.interval_ms);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scores = vec![0u64; shared.talk.len()];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(rewired) = rewire(&shared, &mut scores) else {
            continue;
        };
        shared.m.rewirings.increment(1);
        tracing::info!(
            society = %shared.name,
            edges = rewired.after.len(),
            "society rewired"
        );
        let _ = shared.rewired.send(rewired.clone());
        if let Some(events) = &shared.events {
            match Event::new("system", &rewired) {
                Ok(event) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = events.emit(event) => if let Err(e) = r {
                            tracing::warn!(society = %shared.name, error = %e, "rewiring event not emitted");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(society = %shared.name, error = %e, "rewiring event not encoded")
                }
            }
        }
    }
}

/// One adaptive step: folds this period's talk into the scores and builds the ring plus
/// the best pairs. Returns the change, if the wiring changed.
fn rewire(shared: &Shared, scores: &mut [u64]) -> Option<Rewired> {
    let settings = &shared.adaptive;
    let current = shared.wiring.load_full();
    let n = current.len();
    let mut candidates = Vec::new();
    for b in 1..n {
        for a in 0..b {
            let i = pair_index(a, b);
            let score = scores[i] / 2 + shared.talk[i].swap(0, Ordering::Relaxed);
            scores[i] = score;
            if score >= settings.min_messages {
                candidates.push(TalkingPair { a, b, score });
            }
        }
    }
    // Best first; ties by lower indices, so a rewiring is a function of the counts.
    candidates.sort_unstable_by(|x, y| y.score.cmp(&x.score).then((x.a, x.b).cmp(&(y.a, y.b))));
    let mut edges = BTreeSet::new();
    ring_edges(n, &mut edges);
    let mut degree = vec![0usize; n];
    for &(a, b) in &edges {
        degree[a] += 1;
        degree[b] += 1;
    }
    let mut pairs = Vec::new();
    for pair in candidates {
        if pairs.len() == settings.top_pairs {
            break;
        }
        let (a, b) = (pair.a, pair.b);
        if edges.contains(&(a, b)) {
            continue; // already neighbours on the ring
        }
        if degree[a] < settings.max_degree && degree[b] < settings.max_degree {
            edges.insert((a, b));
            degree[a] += 1;
            degree[b] += 1;
            pairs.push(pair);
        }
    }
    let before = current.edges();
    let after: Vec<_> = edges.iter().copied().collect();
    if before == after {
        return None;
    }
    let wiring = Wiring::new(Topology::Adaptive, n, &edges);
    debug_assert!(wiring.is_connected());
    shared.m.edges.set(after.len() as f64);
    shared.wiring.store(Arc::new(wiring));
    Some(Rewired {
        society: shared.name.clone(),
        before,
        after,
        reason: RewireReason::Traffic { pairs },
    })
}

/// Registers the HELP text of this module's metrics with the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_society_messages_total",
        "Messages sent between members through a society."
    );
    metrics::describe_counter!(
        "foundation_society_hops_total",
        "Hops travelled by messages sent through a society (sum)."
    );
    metrics::describe_histogram!(
        "foundation_society_hops",
        "Hops per message sent through a society."
    );
    metrics::describe_counter!(
        "foundation_society_rewirings_total",
        "Changes of a society's wiring."
    );
    metrics::describe_gauge!(
        "foundation_society_edges",
        "Edges of a society's current wiring."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_routes_through_the_common_ancestor() {
        let w = Wiring::initial(Topology::Tree { fanout: 2 }, 7);
        assert_eq!(w.path(3, 6), Some(vec![3, 1, 0, 2, 6]));
        assert_eq!(w.hops(3, 4), Some(2));
        assert!(w.is_connected());
    }

    #[test]
    fn pair_index_is_dense() {
        let mut seen = Vec::new();
        for b in 1..6 {
            for a in 0..b {
                seen.push(pair_index(a, b));
            }
        }
        assert_eq!(seen, (0..15).collect::<Vec<_>>());
    }
}
