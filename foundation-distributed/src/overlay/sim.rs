//! A deterministic discrete-event simulator for [`Swarm`]s (HyParView + Plumtree).
//!
//! Nodes are numbered `0..n` and run the real protocol state machines; the simulator is
//! their network and clock. Everything is a function of the seed: one random source
//! (latency, loss, random choices in the protocols), a time-ordered event queue with a
//! sequence number breaking ties, and no wall clock. Running the same scenario twice gives
//! the same numbers.
//!
//! Models:
//! * **Latency**: each message is delivered after a delay drawn from [`Latency`]; links
//!   are FIFO (a message never overtakes an earlier one on the same directed link), as on
//!   the TCP connections HyParView assumes.
//! * **Loss**: each broadcast (Plumtree) message is dropped with probability
//!   [`SimConfig::loss`], silently, to exercise Plumtree's graft repair; membership
//!   (HyParView) messages are dropped with [`SimConfig::membership_loss`] (0 by default:
//!   the paper runs HyParView over reliable connections).
//! * **Crashes**: a crashed node stops; messages to it vanish. With
//!   [`SimConfig::detect_on_send`], the sender of a message to a crashed node is told the
//!   peer failed one latency later (a TCP connection reset). With
//!   [`SimConfig::crash_notice`], every live node holding the crashed node in its active
//!   view is told after that delay (connections break; a failure detector fires).
//!
//! Broadcasts are tracked by id: who delivered, at which hop, and how many payload copies
//! live nodes received, from which [`BroadcastReport`] computes reliability, relative
//! message redundancy (RMR = m / (n − 1) − 1, the Plumtree paper's metric, where m counts
//! payload messages received and n the nodes reached) and the last delivery hop.
//!
//! ```
//! use std::time::Duration;
//! use foundation_distributed::overlay::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(50, SimConfig::default());
//! sim.bootstrap(Duration::from_millis(10));
//! sim.run_for(Duration::from_secs(20));
//! assert!(sim.overlay_report().connected);
//! let id = sim.broadcast(0, b"hello".to_vec().into());
//! sim.run_for(Duration::from_secs(2));
//! assert_eq!(sim.report(&id).reliability(), 1.0);
//! ```
//!
//! Speed: 10,000 nodes join, stabilise for 60 virtual seconds and carry a broadcast in a few
//! seconds of CPU time in release builds (see `tests/overlay_sim.rs`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::plumtree::{MessageId, PtMessage};
use super::swarm::{Swarm, SwarmConfig, SwarmInput, SwarmMessage, SwarmOutput, SwarmTimer};

/// A simulated node's id.
pub type NodeId = u32;

/// Message delay model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this delay.
    Fixed(Duration),
    /// Uniform in `[min, max]`.
    Uniform {
        /// Smallest delay.
        min: Duration,
        /// Largest delay.
        max: Duration,
    },
}

/// Simulator parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the one random source.
    pub seed: u64,
    /// Message delay.
    pub latency: Latency,
    /// Probability that a broadcast (Plumtree) message is lost.
    pub loss: f64,
    /// Probability that a membership (HyParView) message is lost.
    pub membership_loss: f64,
    /// A send to a crashed node reports the failure to the sender one latency later.
    pub detect_on_send: bool,
    /// When a node crashes, live nodes with it in their active view learn it after this
    /// delay; `None` leaves detection to sends.
    pub crash_notice: Option<Duration>,
    /// The protocols' parameters (the same on every node).
    pub swarm: SwarmConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency: Latency::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_millis(50),
            },
            loss: 0.0,
            membership_loss: 0.0,
            detect_on_send: true,
            crash_notice: None,
            swarm: SwarmConfig::default(),
        }
    }
}

#[derive(Clone)]
enum Event {
    Join {
        node: NodeId,
        contact: NodeId,
    },
    Message {
        from: NodeId,
        to: NodeId,
        msg: SwarmMessage<NodeId>,
    },
    Timer {
        node: NodeId,
        timer: SwarmTimer<NodeId>,
    },
    Failed {
        node: NodeId,
        peer: NodeId,
    },
}

#[derive(Clone)]
struct Entry {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone)]
struct Track {
    delivered: Vec<u16>, // hop + 1 per node; 0 = not delivered
    payloads_received: u64,
}

/// Message counts by kind, over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// HyParView messages sent.
    pub membership: u64,
    /// Plumtree payload messages sent.
    pub gossip: u64,
    /// Plumtree `IHave`, `Graft` and `Prune` messages sent.
    pub control: u64,
    /// Messages lost to the loss model.
    pub lost: u64,
    /// Messages sent to crashed nodes.
    pub to_crashed: u64,
    /// Isolated nodes given a new contact by the seed service.
    pub rejoins: u64,
}

/// What became of one broadcast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BroadcastReport {
    /// Live nodes now.
    pub live: usize,
    /// Live nodes that delivered it (the origin included).
    pub reached: usize,
    /// Payload messages received by live nodes.
    pub payloads: u64,
    /// The largest hop count at which a live node delivered it.
    pub last_hop: u16,
}

impl BroadcastReport {
    /// Share of live nodes reached.
    pub fn reliability(&self) -> f64 {
        if self.live == 0 {
            return 0.0;
        }
        self.reached as f64 / self.live as f64
    }

    /// Relative message redundancy, m / (n − 1) − 1 (0 for a perfect tree).
    pub fn rmr(&self) -> f64 {
        if self.reached <= 1 {
            return 0.0;
        }
        self.payloads as f64 / (self.reached - 1) as f64 - 1.0
    }
}

/// Shape of the overlay formed by the live nodes' active views.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayReport {
    /// Live nodes.
    pub live: usize,
    /// Connected components of the (undirected) active-view graph among live nodes.
    pub components: usize,
    /// One component.
    pub connected: bool,
    /// Size of the largest component.
    pub largest_component: usize,
    /// Smallest, mean and largest active view (entries pointing at crashed nodes count).
    pub active: (usize, f64, usize),
    /// Smallest, mean and largest passive view.
    pub passive: (usize, f64, usize),
    /// Active-view entries not reciprocated by the peer (among live nodes).
    pub asymmetric: usize,
    /// Active-view entries that point at crashed nodes.
    pub dead_links: usize,
}

/// The simulator. See the [module docs](self). Cloning copies the whole network, queue
/// and random state: the clone continues exactly as the original would (run several
/// scenarios from one built overlay).
#[derive(Clone)]
pub struct Sim {
    config: SimConfig,
    rng: SmallRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    nodes: Vec<Swarm<NodeId>>,
    alive: Vec<bool>,
    out: Vec<SwarmOutput<NodeId>>,
    tracks: HashMap<MessageId<NodeId>, Track>,
    traffic: Traffic,
    events: u64,
    last_origin_id: Option<MessageId<NodeId>>,
    /// Arrival time of the last message on each directed link (FIFO links).
    links: HashMap<(NodeId, NodeId), u64>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Sim {
    /// `n` nodes, none joined yet.
    pub fn new(n: usize, config: SimConfig) -> Self {
        let nodes = (0..n as NodeId)
            .map(|i| Swarm::new(i, config.swarm.clone()))
            .collect();
        Sim {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            alive: vec![true; n],
            out: Vec::new(),
            tracks: HashMap::new(),
            traffic: Traffic::default(),
            events: 0,
            last_origin_id: None,
            links: HashMap::new(),
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// Number of nodes (live or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s protocol state.
    pub fn node(&self, i: NodeId) -> &Swarm<NodeId> {
        &self.nodes[i as usize]
    }

    /// Whether node `i` is up.
    pub fn is_alive(&self, i: NodeId) -> bool {
        self.alive[i as usize]
    }

    /// The live nodes.
    pub fn live(&self) -> Vec<NodeId> {
        (0..self.nodes.len() as NodeId)
            .filter(|i| self.alive[*i as usize])
            .collect()
    }

    /// Message counts so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The random source (to pick scenario inputs reproducibly).
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Node 0 starts the overlay; node `i` joins through a random earlier node at
    /// `i * stagger`.
    pub fn bootstrap(&mut self, stagger: Duration) {
        let start = self.now;
        self.schedule_at(
            start,
            Event::Timer {
                node: 0,
                timer: SwarmTimer::Hv(super::hyparview::HvTimer::Repair),
            },
        );
        for i in 1..self.nodes.len() as NodeId {
            let contact = self.rng.random_range(0..i);
            let at = start + stagger.as_nanos() as u64 * i as u64;
            self.schedule_at(at, Event::Join { node: i, contact });
        }
    }

    /// Switches every node's broadcast between Plumtree and eager flooding (the overlay is
    /// untouched), to compare the two on the same overlay.
    pub fn set_broadcast_mode(&mut self, mode: super::plumtree::Mode) {
        for n in &mut self.nodes {
            n.set_broadcast_mode(mode);
        }
    }

    /// Node `node` joins through `contact` now.
    pub fn join(&mut self, node: NodeId, contact: NodeId) {
        self.schedule_at(self.now, Event::Join { node, contact });
    }

    /// Crashes `node`: it stops at once.
    pub fn crash(&mut self, node: NodeId) {
        self.crash_all(&[node]);
    }

    /// Crashes a random `fraction` of the live nodes at once; returns them.
    pub fn crash_fraction(&mut self, fraction: f64) -> Vec<NodeId> {
        let mut live = self.live();
        let k = ((live.len() as f64) * fraction).round() as usize;
        for i in 0..k.min(live.len()) {
            let j = self.rng.random_range(i..live.len());
            live.swap(i, j);
        }
        live.truncate(k);
        self.crash_all(&live);
        live
    }

    fn crash_all(&mut self, victims: &[NodeId]) {
        for v in victims {
            self.alive[*v as usize] = false;
        }
        if let Some(delay) = self.config.crash_notice {
            let at = self.now + delay.as_nanos() as u64;
            for i in 0..self.nodes.len() {
                if !self.alive[i] {
                    continue;
                }
                let dead: Vec<NodeId> = self.nodes[i]
                    .hyparview()
                    .active()
                    .iter()
                    .copied()
                    .filter(|p| !self.alive[*p as usize])
                    .collect();
                for peer in dead {
                    self.schedule_at(
                        at,
                        Event::Failed {
                            node: i as NodeId,
                            peer,
                        },
                    );
                }
            }
        }
    }

    /// Node `from` publishes `payload` now; returns the id to pass to
    /// [`report`](Self::report).
    pub fn broadcast(&mut self, from: NodeId, payload: Bytes) -> MessageId<NodeId> {
        assert!(self.alive[from as usize], "node {from} is crashed");
        self.deliver_input(from, SwarmInput::Broadcast(payload));
        // The origin's own delivery registered the track.
        self.last_origin_id
            .take()
            .expect("a broadcast delivers at its origin")
    }

    /// What became of broadcast `id` so far.
    pub fn report(&self, id: &MessageId<NodeId>) -> BroadcastReport {
        let live = self.alive.iter().filter(|a| **a).count();
        let Some(t) = self.tracks.get(id) else {
            return BroadcastReport {
                live,
                reached: 0,
                payloads: 0,
                last_hop: 0,
            };
        };
        let mut reached = 0;
        let mut last = 0;
        for (i, d) in t.delivered.iter().enumerate() {
            if *d > 0 && self.alive[i] {
                reached += 1;
                last = last.max(*d - 1);
            }
        }
        BroadcastReport {
            live,
            reached,
            payloads: t.payloads_received,
            last_hop: last,
        }
    }

    /// The overlay formed by live nodes' active views.
    pub fn overlay_report(&self) -> OverlayReport {
        let n = self.nodes.len();
        let live: Vec<usize> = (0..n).filter(|i| self.alive[*i]).collect();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        let (mut amin, mut asum, mut amax) = (usize::MAX, 0usize, 0usize);
        let (mut pmin, mut psum, mut pmax) = (usize::MAX, 0usize, 0usize);
        let mut asymmetric = 0;
        let mut dead_links = 0;
        for &i in &live {
            let hv = self.nodes[i].hyparview();
            let a = hv.active().len();
            let p = hv.passive().len();
            amin = amin.min(a);
            amax = amax.max(a);
            asum += a;
            pmin = pmin.min(p);
            pmax = pmax.max(p);
            psum += p;
            for &q in hv.active() {
                let q = q as usize;
                if !self.alive[q] {
                    dead_links += 1;
                    continue;
                }
                if !self.nodes[q].hyparview().is_active(&(i as NodeId)) {
                    asymmetric += 1;
                }
                let (ri, rq) = (find(&mut parent, i), find(&mut parent, q));
                if ri != rq {
                    parent[ri] = rq;
                }
            }
        }
        let mut sizes: HashMap<usize, usize> = HashMap::new();
        for &i in &live {
            *sizes.entry(find(&mut parent, i)).or_default() += 1;
        }
        let count = live.len().max(1) as f64;
        OverlayReport {
            live: live.len(),
            components: sizes.len(),
            connected: sizes.len() == 1,
            largest_component: sizes.values().copied().max().unwrap_or(0),
            active: (
                if live.is_empty() { 0 } else { amin },
                asum as f64 / count,
                amax,
            ),
            passive: (
                if live.is_empty() { 0 } else { pmin },
                psum as f64 / count,
                pmax,
            ),
            asymmetric,
            dead_links,
        }
    }

    /// Runs events until virtual time `until` (inclusive); the clock ends at `until`.
    pub fn run_until(&mut self, until: Duration) {
        let until = until.as_nanos() as u64;
        while self.queue.peek().is_some_and(|e| e.at <= until) {
            let e = self.queue.pop().expect("peeked");
            self.now = e.at;
            self.dispatch(e.event);
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    fn schedule_at(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            event,
        });
    }

    fn latency(&mut self) -> u64 {
        match self.config.latency {
            Latency::Fixed(d) => d.as_nanos() as u64,
            Latency::Uniform { min, max } => {
                let (a, b) = (min.as_nanos() as u64, max.as_nanos() as u64);
                if b <= a {
                    a
                } else {
                    self.rng.random_range(a..=b)
                }
            }
        }
    }

    fn dispatch(&mut self, event: Event) {
        self.events += 1;
        match event {
            Event::Join { node, contact } => {
                if self.alive[node as usize] {
                    self.deliver_input(node, SwarmInput::Join(contact));
                }
            }
            Event::Timer { node, timer } => {
                if self.alive[node as usize] {
                    self.deliver_input(node, SwarmInput::Timer(timer));
                }
            }
            Event::Failed { node, peer } => {
                if self.alive[node as usize] {
                    self.deliver_input(node, SwarmInput::PeerFailed(peer));
                }
            }
            Event::Message { from, to, msg } => {
                if !self.alive[to as usize] {
                    self.traffic.to_crashed += 1;
                    if self.config.detect_on_send {
                        let at = self.now + self.latency();
                        self.schedule_at(
                            at,
                            Event::Failed {
                                node: from,
                                peer: to,
                            },
                        );
                    }
                    return;
                }
                if let SwarmMessage::Pt(PtMessage::Gossip { id, .. }) = &msg {
                    if let Some(t) = self.tracks.get_mut(id) {
                        t.payloads_received += 1;
                    }
                }
                self.deliver_input(to, SwarmInput::Message { from, msg });
            }
        }
    }

    fn deliver_input(&mut self, node: NodeId, input: SwarmInput<NodeId>) {
        let now = Duration::from_nanos(self.now);
        let mut out = std::mem::take(&mut self.out);
        self.nodes[node as usize].handle(now, input, &mut self.rng, &mut out);
        for o in out.drain(..) {
            match o {
                SwarmOutput::Send { to, msg } => {
                    let loss = match &msg {
                        SwarmMessage::Hv(_) => {
                            self.traffic.membership += 1;
                            self.config.membership_loss
                        }
                        SwarmMessage::Pt(PtMessage::Gossip { .. }) => {
                            self.traffic.gossip += 1;
                            self.config.loss
                        }
                        SwarmMessage::Pt(_) => {
                            self.traffic.control += 1;
                            self.config.loss
                        }
                    };
                    if loss > 0.0 && self.rng.random_bool(loss) {
                        self.traffic.lost += 1;
                        continue;
                    }
                    let at = self.now + self.latency();
                    let last = self.links.entry((node, to)).or_insert(0);
                    let at = at.max(*last);
                    *last = at;
                    self.schedule_at(
                        at,
                        Event::Message {
                            from: node,
                            to,
                            msg,
                        },
                    );
                }
                SwarmOutput::SetTimer { after, timer } => {
                    let at = self.now + after.as_nanos() as u64;
                    self.schedule_at(at, Event::Timer { node, timer });
                }
                SwarmOutput::Deliver { id, hops, .. } => {
                    let n = self.nodes.len();
                    if hops == 0 {
                        self.last_origin_id = Some(id.clone());
                    }
                    let t = self.tracks.entry(id).or_insert_with(|| Track {
                        delivered: vec![0; n],
                        payloads_received: 0,
                    });
                    t.delivered[node as usize] = hops.saturating_add(1);
                }
                SwarmOutput::Isolated => {
                    // The seed service: a random live node (not this one).
                    let live = self.alive.iter().filter(|a| **a).count();
                    if live > 1 {
                        let contact = loop {
                            let c = self.rng.random_range(0..self.nodes.len() as NodeId);
                            if c != node && self.alive[c as usize] {
                                break c;
                            }
                        };
                        self.traffic.rejoins += 1;
                        self.schedule_at(self.now, Event::Join { node, contact });
                    }
                }
                SwarmOutput::NeighborUp(_) | SwarmOutput::NeighborDown(_) => {}
            }
        }
        self.out = out;
    }
}
