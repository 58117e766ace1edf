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
//!   the society; at most [`MAX_TRACKED_PAIRS`] pairs per period). A rewiring task owned
//!   by the society runs every
//!   [`AdaptiveSettings::interval_ms`] (tokio time): each pair's score is halved and this
//!   period's messages are added; the wiring becomes the ring plus, greedily, the
//!   highest-scoring pairs (at least [`AdaptiveSettings::min_messages`], at most
//!   [`AdaptiveSettings::top_pairs`] of them) as direct edges, as long as neither member
//!   exceeds [`AdaptiveSettings::max_degree`]. The ring is always kept, so the wiring
//!   stays connected; pairs that stop talking lose their edge as their score decays.
//!   A rewiring round costs `O(tracked pairs + n)` — never `O(n²)` — and yields to the
//!   runtime every few hundred microseconds of work, so a 10,000-member society rewires
//!   without stalling the tasks around it.
//!
//! Routes are computed per send from the wiring (see [`Wiring`]); no `n²` routing table
//! is kept, so societies scale to [`MAX_MEMBERS`] (meshes to [`MAX_MESH_MEMBERS`]).
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use foundation_core::budget::Budget;
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

/// Most members a society accepts. Routes are computed per send from the wiring (no
/// `n²` table): memory is `O(n)` plus the adaptive shortcuts.
pub const MAX_MEMBERS: usize = 1 << 20;

/// Most members of a [`Topology::Mesh`] society (its `n·(n − 1)/2` edges are stored).
pub const MAX_MESH_MEMBERS: usize = 4096;

/// Most talking pairs an adaptive society tracks between two rewirings. Messages between
/// further pairs are not counted for rewiring (counted in
/// `foundation_society_untracked_messages_total`); this bounds the memory and the work of
/// a rewiring round whatever the traffic.
pub const MAX_TRACKED_PAIRS: usize = 65_536;

/// Shards of the talk counters (one lock each).
const TALK_SHARDS: usize = 64;

/// Units of rewiring work between yields of the rewiring task.
const REWIRE_BUDGET: u32 = 1024;

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

/// A wiring: the neighbours of every member, and what is needed to compute shortest
/// routes without an `n²` table.
///
/// Immutable; [`Society::topology`] returns the current one, a rewiring replaces it.
///
/// Routes: a mesh is one hop; a ring goes the shorter way round (forward on a tie); a
/// tree goes through the lowest common ancestor; an adaptive wiring (a ring plus a few
/// shortcuts) goes either round the ring or through the shortcuts' endpoints
/// ("portals"), whose distances are precomputed (`O(P³)` for `P ≤ 2·top_pairs`
/// portals), so a route costs `O(P²)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Wiring {
    topology: Topology,
    adjacency: Vec<Vec<MemberId>>,
    /// Endpoints of the adaptive shortcuts, ascending.
    portals: Vec<MemberId>,
    /// `portal_dist[i * P + j]`: hops between portals `i` and `j`.
    portal_dist: Vec<u32>,
    /// `portal_next[i * P + j]`: the first member after portal `i` on a shortest route to
    /// portal `j`.
    portal_next: Vec<MemberId>,
    /// The adaptive shortcuts, sorted.
    shortcuts: Vec<(MemberId, MemberId)>,
}

impl fmt::Debug for Wiring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wiring")
            .field("topology", &self.topology)
            .field("members", &self.len())
            .field("portals", &self.portals.len())
            .finish()
    }
}

/// Hops between `a` and `b` round a ring of `n`.
#[inline]
fn ring_dist(n: usize, a: MemberId, b: MemberId) -> usize {
    let d = if b >= a { b - a } else { b + n - a };
    d.min(n - d)
}

/// The neighbour of `a` on a shortest way round the ring towards `b` (forward on a tie).
#[inline]
fn ring_step(n: usize, a: MemberId, b: MemberId) -> MemberId {
    if a == b {
        return a;
    }
    let fwd = if b >= a { b - a } else { b + n - a };
    if fwd <= n - fwd {
        (a + 1) % n
    } else {
        (a + n - 1) % n
    }
}

fn tree_parent(fanout: usize, i: MemberId) -> Option<MemberId> {
    (i > 0).then(|| (i - 1) / fanout)
}

fn tree_depth(fanout: usize, mut i: MemberId) -> usize {
    let mut d = 0;
    while let Some(p) = tree_parent(fanout, i) {
        i = p;
        d += 1;
    }
    d
}

impl Wiring {
    /// A wiring of `topology` over `n` members: the fixed edges of the topology plus
    /// `shortcuts` (adaptive only).
    fn new(topology: Topology, n: usize, shortcuts: &[(MemberId, MemberId)]) -> Wiring {
        let mut adjacency = vec![Vec::new(); n];
        let mut link = |a: MemberId, b: MemberId| {
            adjacency[a].push(b);
            adjacency[b].push(a);
        };
        match topology {
            Topology::Mesh => {
                for b in 1..n {
                    for a in 0..b {
                        link(a, b);
                    }
                }
            }
            Topology::Ring | Topology::Adaptive => {
                for i in 0..n {
                    let j = (i + 1) % n;
                    if i < j || (j == 0 && n > 2) {
                        link(i.min(j), i.max(j));
                    }
                }
            }
            Topology::Tree { fanout } => {
                for child in 1..n {
                    link((child - 1) / fanout, child);
                }
            }
        }
        for &(a, b) in shortcuts {
            link(a, b);
        }
        for list in &mut adjacency {
            list.sort_unstable();
            list.dedup();
        }
        let mut w = Wiring {
            topology,
            adjacency,
            portals: Vec::new(),
            portal_dist: Vec::new(),
            portal_next: Vec::new(),
            shortcuts: shortcuts.to_vec(),
        };
        w.shortcuts.sort_unstable();
        if !shortcuts.is_empty() {
            w.build_portals(n, shortcuts);
        }
        w
    }

    /// The adaptive wiring (ring plus `shortcuts`), built like [`Wiring::new`] but
    /// yielding on `budget` (one unit per member).
    async fn adaptive(n: usize, shortcuts: &[(MemberId, MemberId)], budget: &mut Budget) -> Wiring {
        let mut adjacency = Vec::with_capacity(n);
        for i in 0..n {
            let mut list = match n {
                1 => Vec::new(),
                2 => vec![1 - i],
                _ => vec![(i + n - 1) % n, (i + 1) % n],
            };
            list.sort_unstable();
            adjacency.push(list);
            budget.tick().await;
        }
        for &(a, b) in shortcuts {
            adjacency[a].push(b);
            adjacency[b].push(a);
        }
        for &(a, b) in shortcuts {
            for m in [a, b] {
                adjacency[m].sort_unstable();
                adjacency[m].dedup();
            }
        }
        let mut w = Wiring {
            topology: Topology::Adaptive,
            adjacency,
            portals: Vec::new(),
            portal_dist: Vec::new(),
            portal_next: Vec::new(),
            shortcuts: shortcuts.to_vec(),
        };
        w.shortcuts.sort_unstable();
        if !shortcuts.is_empty() {
            w.build_portals(n, shortcuts);
        }
        w
    }

    /// [`edges`](Self::edges), yielding on `budget` (one unit per member).
    async fn edges_yielding(&self, budget: &mut Budget) -> Vec<(MemberId, MemberId)> {
        let mut edges = Vec::new();
        for (a, list) in self.adjacency.iter().enumerate() {
            edges.extend(list.iter().filter(|&&b| b > a).map(|&b| (a, b)));
            budget.tick().await;
        }
        edges
    }

    /// Floyd–Warshall over the shortcut endpoints: edges are ring distances and the
    /// shortcuts themselves (1 hop).
    fn build_portals(&mut self, n: usize, shortcuts: &[(MemberId, MemberId)]) {
        let mut portals: Vec<MemberId> = shortcuts.iter().flat_map(|&(a, b)| [a, b]).collect();
        portals.sort_unstable();
        portals.dedup();
        let p = portals.len();
        let idx = |m: MemberId| portals.binary_search(&m).expect("a portal");
        let mut dist = vec![0u32; p * p];
        // First H-step from i towards j: (next portal, whether the edge is a shortcut).
        let mut first = vec![(0usize, false); p * p];
        for i in 0..p {
            for j in 0..p {
                dist[i * p + j] = ring_dist(n, portals[i], portals[j]) as u32;
                first[i * p + j] = (j, false);
            }
        }
        for &(a, b) in shortcuts {
            let (i, j) = (idx(a), idx(b));
            if dist[i * p + j] > 1 {
                dist[i * p + j] = 1;
                dist[j * p + i] = 1;
                first[i * p + j] = (j, true);
                first[j * p + i] = (i, true);
            }
        }
        for k in 0..p {
            for i in 0..p {
                for j in 0..p {
                    let via = dist[i * p + k] + dist[k * p + j];
                    if via < dist[i * p + j] {
                        dist[i * p + j] = via;
                        first[i * p + j] = first[i * p + k];
                    }
                }
            }
        }
        let next = (0..p * p)
            .map(|ij| {
                let (i, (w, shortcut)) = (ij / p, first[ij]);
                if shortcut {
                    portals[w]
                } else {
                    ring_step(n, portals[i], portals[w])
                }
            })
            .collect();
        self.portals = portals;
        self.portal_dist = dist;
        self.portal_next = next;
    }

    /// The wiring of a fixed topology (adaptive starts as a ring).
    fn initial(topology: Topology, n: usize) -> Wiring {
        Wiring::new(topology, n, &[])
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

    /// Hops of the shortest route from `from` to `to`; `None` if either is not a member.
    pub fn hops(&self, from: MemberId, to: MemberId) -> Option<u32> {
        let n = self.len();
        if from >= n || to >= n {
            return None;
        }
        Some(self.route(from, to).0)
    }

    /// The shortest route from `from` to `to`, both included; `None` as for
    /// [`hops`](Self::hops).
    pub fn path(&self, from: MemberId, to: MemberId) -> Option<Vec<MemberId>> {
        let hops = self.hops(from, to)?;
        let mut path = vec![from];
        let mut at = from;
        for _ in 0..hops {
            at = self.route(at, to).1;
            path.push(at);
        }
        debug_assert_eq!(at, to);
        Some(path)
    }

    /// Whether every member can reach every other (breadth-first search, `O(n + edges)`).
    pub fn is_connected(&self) -> bool {
        let n = self.len();
        if n == 0 {
            return true;
        }
        let mut seen = vec![false; n];
        let mut queue = VecDeque::from([0]);
        seen[0] = true;
        let mut reached = 1;
        while let Some(u) = queue.pop_front() {
            for &v in &self.adjacency[u] {
                if !seen[v] {
                    seen[v] = true;
                    reached += 1;
                    queue.push_back(v);
                }
            }
        }
        reached == n
    }

    /// The adaptive shortcuts (edges beyond the ring), sorted.
    fn shortcuts(&self) -> Vec<(MemberId, MemberId)> {
        self.shortcuts.clone()
    }

    /// The largest number of neighbours of any member.
    pub fn max_degree(&self) -> usize {
        self.adjacency.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Hops and first hop of a shortest route between two members.
    fn route(&self, from: MemberId, to: MemberId) -> (u32, MemberId) {
        let n = self.len();
        if from == to {
            return (0, to);
        }
        match self.topology {
            Topology::Mesh => (1, to),
            Topology::Tree { fanout } => {
                let (mut a, mut b) = (from, to);
                let (mut da, mut db) = (tree_depth(fanout, a), tree_depth(fanout, b));
                let mut hops = 0;
                // `below`: the ancestor of `to` just under the common ancestor, if the
                // route goes down from `from`.
                let mut below = to;
                while db > da {
                    below = b;
                    b = tree_parent(fanout, b).expect("deeper than the root");
                    db -= 1;
                    hops += 1;
                }
                while da > db {
                    a = tree_parent(fanout, a).expect("deeper than the root");
                    da -= 1;
                    hops += 1;
                }
                while a != b {
                    a = tree_parent(fanout, a).expect("below the root");
                    below = b;
                    b = tree_parent(fanout, b).expect("below the root");
                    hops += 2;
                }
                // `a` is the common ancestor: up if it is above `from`, else down.
                let next = if a == from {
                    below
                } else {
                    tree_parent(fanout, from).expect("not the root")
                };
                (hops, next)
            }
            Topology::Ring | Topology::Adaptive => {
                let direct = ring_dist(n, from, to);
                let p = self.portals.len();
                let mut best = (direct, None);
                if p > 0 {
                    let to_portal: Vec<usize> =
                        self.portals.iter().map(|&v| ring_dist(n, v, to)).collect();
                    for (i, &u) in self.portals.iter().enumerate() {
                        let su = ring_dist(n, from, u);
                        if su >= best.0 {
                            continue;
                        }
                        let row = &self.portal_dist[i * p..(i + 1) * p];
                        for j in 0..p {
                            let d = su + row[j] as usize + to_portal[j];
                            if d < best.0 {
                                best = (d, Some((i, j, u)));
                            }
                        }
                    }
                }
                let next = match best.1 {
                    None => ring_step(n, from, to),
                    Some((_, _, u)) if u != from => ring_step(n, from, u),
                    Some((i, j, _)) => self.portal_next[i * p + j],
                };
                (best.0 as u32, next)
            }
        }
    }
}

/// Key of the pair `a < b` in the talk counters.
#[inline]
fn pair_key(n: usize, a: MemberId, b: MemberId) -> u64 {
    (a as u64) * (n as u64) + b as u64
}

struct Metrics {
    messages: metrics::Counter,
    hops: metrics::Counter,
    hops_histogram: metrics::Histogram,
    rewirings: metrics::Counter,
    edges: metrics::Gauge,
    untracked: metrics::Counter,
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
            untracked: metrics::counter!("foundation_society_untracked_messages_total", &[l()]),
        }
    }
}

struct Shared {
    name: String,
    adaptive: AdaptiveSettings,
    wiring: ArcSwap<Wiring>,
    /// Messages per pair since the last rewiring (adaptive only), sharded by pair, at
    /// most [`MAX_TRACKED_PAIRS`] pairs in all.
    talk: Box<[Mutex<foldhash::HashMap<u64, u64>>]>,
    /// Decayed talk scores per pair (adaptive only); held by one rewiring round at a time.
    scores: tokio::sync::Mutex<foldhash::HashMap<u64, u64>>,
    members: usize,
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
        if settings.topology == Topology::Mesh && n > MAX_MESH_MEMBERS {
            return invalid(format!(
                "a mesh holds at most {MAX_MESH_MEMBERS} members, got {n}"
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
        let talk_shards = if adaptive { TALK_SHARDS } else { 0 };
        let shared = Arc::new(Shared {
            name: settings.name,
            adaptive: settings.adaptive,
            wiring: ArcSwap::from_pointee(wiring),
            talk: (0..talk_shards)
                .map(|_| Mutex::new(foldhash::HashMap::default()))
                .collect(),
            scores: tokio::sync::Mutex::new(foldhash::HashMap::default()),
            members: n,
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

    /// Runs one rewiring round now, as the rewiring task does every `interval_ms`
    /// (decay, then this period's talk), and publishes the change like it. Returns the
    /// change, or `None` if the wiring stayed as it was.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the society is not adaptive.
    pub async fn rewire_now(&self) -> Result<Option<Rewired>> {
        if self.shared.talk.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "society `{}` is not adaptive",
                self.shared.name
            )));
        }
        let rewired = rewire(&self.shared).await;
        if let Some(r) = &rewired {
            publish(&self.shared, r).await;
        }
        Ok(rewired)
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
            self.shared.count_talk(from.min(to), from.max(to));
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

impl Shared {
    /// Counts one message between `a < b` for the next rewiring.
    fn count_talk(&self, a: MemberId, b: MemberId) {
        let key = pair_key(self.members, a, b);
        let shard = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % self.talk.len();
        let mut map = self.talk[shard].lock();
        let cap = MAX_TRACKED_PAIRS / self.talk.len();
        if map.len() < cap {
            *map.entry(key).or_insert(0) += 1;
        } else if let Some(c) = map.get_mut(&key) {
            *c += 1;
        } else {
            drop(map);
            self.m.untracked.increment(1);
        }
    }
}

/// The rewiring task of an adaptive society.
async fn rewirer(shared: Arc<Shared>, stop: CancellationToken) {
    let _guard = TaskGuard::new();
    let interval = Duration::from_millis(shared.adaptive.interval_ms);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(rewired) = rewire(&shared).await else {
            continue;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = publish(&shared, &rewired) => {}
        }
    }
}

/// Tells the world about a rewiring: metric, broadcast, log and event.
async fn publish(shared: &Shared, rewired: &Rewired) {
    shared.m.rewirings.increment(1);
    tracing::info!(
        society = %shared.name,
        edges = rewired.after.len(),
        "society rewired"
    );
    let _ = shared.rewired.send(rewired.clone());
    if let Some(events) = &shared.events {
        match Event::new("system", rewired) {
            Ok(event) => {
                if let Err(e) = events.emit(event).await {
                    tracing::warn!(society = %shared.name, error = %e, "rewiring event not emitted");
                }
            }
            Err(e) => {
                tracing::warn!(society = %shared.name, error = %e, "rewiring event not encoded")
            }
        }
    }
}

/// Most candidate pairs the greedy choice looks at (the best ones).
fn candidate_limit(top_pairs: usize) -> usize {
    top_pairs.saturating_mul(64).max(1024)
}

/// One adaptive step: folds this period's talk into the scores and builds the ring plus
/// the best pairs. Returns the change, if the wiring changed.
///
/// Work: `O(tracked pairs + n)` (never `O(n²)`), yielding to the runtime every
/// [`REWIRE_BUDGET`] units.
async fn rewire(shared: &Shared) -> Option<Rewired> {
    let mut scores = shared.scores.lock().await;
    let scores = &mut *scores;
    let mut budget = Budget::new(REWIRE_BUDGET);
    let settings = &shared.adaptive;
    let current = shared.wiring.load_full();
    let n = current.len();
    // Decay (pairs whose score reaches 0 are forgotten), then add this period's messages.
    for (key, score) in std::mem::take(scores) {
        if score / 2 > 0 {
            scores.insert(key, score / 2);
        }
        budget.tick().await;
    }
    for shard in shared.talk.iter() {
        let fresh = std::mem::take(&mut *shard.lock());
        for (key, count) in fresh {
            *scores.entry(key).or_insert(0) += count;
            budget.tick().await;
        }
    }
    // The best `limit` candidates, kept in a heap whose top is the worst of them.
    let limit = candidate_limit(settings.top_pairs);
    let mut best: BinaryHeap<(Reverse<u64>, (MemberId, MemberId))> =
        BinaryHeap::with_capacity(limit + 1);
    for (&key, &score) in scores.iter() {
        if score >= settings.min_messages {
            let (a, b) = ((key / n as u64) as usize, (key % n as u64) as usize);
            best.push((Reverse(score), (a, b)));
            if best.len() > limit {
                best.pop();
            }
        }
        budget.tick().await;
    }
    // Best first; ties by lower indices, so a rewiring is a function of the counts.
    let mut candidates: Vec<TalkingPair> = best
        .into_iter()
        .map(|(Reverse(score), (a, b))| TalkingPair { a, b, score })
        .collect();
    candidates.sort_unstable_by(|x, y| y.score.cmp(&x.score).then((x.a, x.b).cmp(&(y.a, y.b))));
    let ring_degree = n.saturating_sub(1).min(2);
    let mut degree: foldhash::HashMap<MemberId, usize> = foldhash::HashMap::default();
    let mut shortcuts: Vec<(MemberId, MemberId)> = Vec::new();
    let mut pairs = Vec::new();
    for pair in candidates {
        if pairs.len() == settings.top_pairs {
            break;
        }
        let (a, b) = (pair.a, pair.b);
        if ring_dist(n, a, b) <= 1 {
            continue; // already neighbours on the ring
        }
        let da = ring_degree + degree.get(&a).copied().unwrap_or(0);
        let db = ring_degree + degree.get(&b).copied().unwrap_or(0);
        if da < settings.max_degree && db < settings.max_degree {
            *degree.entry(a).or_insert(0) += 1;
            *degree.entry(b).or_insert(0) += 1;
            shortcuts.push((a, b));
            pairs.push(pair);
        }
    }
    shortcuts.sort_unstable();
    let mut before_shortcuts = current.shortcuts();
    before_shortcuts.sort_unstable();
    if before_shortcuts == shortcuts {
        return None;
    }
    let wiring = Wiring::adaptive(n, &shortcuts, &mut budget).await;
    debug_assert!(n > 10_000 || wiring.is_connected());
    let before = current.edges_yielding(&mut budget).await;
    let after = wiring.edges_yielding(&mut budget).await;
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
    metrics::describe_counter!(
        "foundation_society_untracked_messages_total",
        "Messages between pairs beyond the tracked-pair bound, not counted for rewiring."
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

    /// Breadth-first distances from `s` over the adjacency lists.
    fn bfs(w: &Wiring, s: MemberId) -> Vec<u32> {
        let mut dist = vec![u32::MAX; w.len()];
        dist[s] = 0;
        let mut q = VecDeque::from([s]);
        while let Some(u) = q.pop_front() {
            for &v in w.neighbours(u) {
                if dist[v] == u32::MAX {
                    dist[v] = dist[u] + 1;
                    q.push_back(v);
                }
            }
        }
        dist
    }

    fn check_routes(w: &Wiring) -> Result<(), proptest::test_runner::TestCaseError> {
        for s in 0..w.len() {
            for (t, want) in bfs(w, s).into_iter().enumerate() {
                proptest::prop_assert_eq!(w.hops(s, t), Some(want), "{} -> {}", s, t);
                let path = w.path(s, t).unwrap();
                proptest::prop_assert_eq!(path.len() as u32, want + 1);
                for step in path.windows(2) {
                    proptest::prop_assert!(
                        w.neighbours(step[0]).contains(&step[1]),
                        "{:?} is not an edge",
                        step
                    );
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Routes computed without a table match breadth-first search on every wiring:
        /// ring, tree and adaptive with random shortcuts; every path follows edges.
        #[test]
        fn computed_routes_are_shortest(
            n in 1usize..40,
            fanout in 1usize..4,
            raw in proptest::collection::vec((0usize..40, 0usize..40), 0..8),
        ) {
            check_routes(&Wiring::initial(Topology::Ring, n))?;
            check_routes(&Wiring::initial(Topology::Tree { fanout }, n))?;
            if n <= 12 {
                check_routes(&Wiring::initial(Topology::Mesh, n))?;
            }
            let mut shortcuts: Vec<(MemberId, MemberId)> = raw
                .into_iter()
                .map(|(a, b)| (a % n, b % n))
                .filter(|&(a, b)| a != b && ring_dist(n, a, b) > 1)
                .map(|(a, b)| (a.min(b), a.max(b)))
                .collect();
            shortcuts.sort_unstable();
            shortcuts.dedup();
            let w = Wiring::new(Topology::Adaptive, n, &shortcuts);
            check_routes(&w)?;
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut budget = Budget::new(3);
            let built = rt.block_on(Wiring::adaptive(n, &shortcuts, &mut budget));
            proptest::prop_assert!(built == w, "the yielding builder builds the same wiring");
            let edges = rt.block_on(w.edges_yielding(&mut budget));
            proptest::prop_assert_eq!(edges, w.edges());
        }
    }
}
