//! HyParView (and Plumtree over it) as a node's [`PeerService`]: the adapter between the
//! I/O-free [`Swarm`] and the topology hooks the node drives. A node gets it with
//! [`TopologyKind::HyParView`] in its settings or through `switch_topology`.
//!
//! * [`wanted`](PeerService::wanted) is the active view: the node holds connections to
//!   those peers (and closes others after a grace period).
//! * [`publish`](PeerService::publish) runs Plumtree over the active view: eager push on a
//!   spanning tree, lazy `IHave` ids to the other neighbours, graft and prune; deliveries
//!   come back through [`take_delivered`](PeerService::take_delivered).
//!   [`broadcast_targets`](PeerService::broadcast_targets) (a flood over the active view)
//!   remains for broadcasts that arrive as plain node broadcasts, e.g. across a switch.
//! * [`next_hop`](PeerService::next_hop) to a live member outside the active view is the
//!   member itself: the node opens a transient direct connection (shuffle replies need one
//!   too). Routing through the overlay instead is not implemented.
//! * Membership from the node: the contact is a random known member (the first member
//!   that joins, for a node started alone); an isolated node (both views empty, contact
//!   tried) rejoins through a random live member; `Down` and `Left` are reported to
//!   HyParView as failures, which repairs the active view from the passive one.
//! * [`unreachable`](PeerService::unreachable) (φ suspects a neighbour, the membership
//!   suspects a candidate, or the node cannot address a peer): an active neighbour is
//!   dropped at once with a `Disconnect` and replaced; a candidate leaves the passive view
//!   and its request is given up. The member's status is left to the membership.
//! * Protocol messages are one tag byte (HyParView, Plumtree control, Plumtree payload)
//!   and MessagePack; [`carries_data`](PeerService::carries_data) tells the node which to
//!   send on a data channel.
//!
//! Time: the adapter keeps a logical clock advanced by `tick_interval` on each
//! [`tick`](PeerService::tick), which the node calls once per heartbeat; set
//! `tick_interval` to the node's heartbeat interval. HyParView's timers (shuffle, repair,
//! neighbour timeout) and Plumtree's (graft, eviction) are rounded up to whole ticks.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::hyparview::{HvMessage, HvStats, HyParView, HyParViewConfig};
use super::metrics::OverlayMetrics;
use super::plumtree::{Plumtree, PlumtreeConfig, PtMessage};
use super::swarm::{Swarm, SwarmConfig, SwarmInput, SwarmMessage, SwarmOutput, SwarmTimer};
use crate::topology::{Change, Delivered, Member, PeerService, TopologyKind};

/// Envelope tags: the first byte of every protocol message.
const TAG_HV: u8 = 0;
const TAG_PT_CONTROL: u8 = 1;
const TAG_PT_DATA: u8 = 2;

/// HyParView (and Plumtree over it) behind the [`PeerService`] trait. See the
/// [module docs](self).
#[derive(Debug)]
pub struct HyParViewService {
    local: String,
    config: HyParViewConfig,
    swarm: Swarm<String>,
    rng: SmallRng,
    members: BTreeMap<String, (Member, bool)>,
    contacted: bool,
    now: Duration,
    tick_interval: Duration,
    timers: Vec<(Duration, SwarmTimer<String>)>,
    outbox: Vec<(String, Vec<u8>)>,
    delivered: Vec<Delivered>,
    undecodable: u64,
    buf: Vec<SwarmOutput<String>>,
    pending_join: Option<String>,
    metrics: OverlayMetrics,
}

impl HyParViewService {
    /// HyParView at node `local` knowing `members`; `tick` is called every
    /// `tick_interval`. Plumtree runs with its defaults (see
    /// [`with_plumtree`](Self::with_plumtree)).
    pub fn new(
        local: &str,
        members: &[Member],
        config: HyParViewConfig,
        tick_interval: Duration,
    ) -> Self {
        Self::with_plumtree(
            local,
            members,
            config,
            PlumtreeConfig::default(),
            tick_interval,
        )
    }

    /// Like [`new`](Self::new), with Plumtree's parameters. Plumtree's timers (graft,
    /// eviction) are rounded up to whole ticks as well.
    pub fn with_plumtree(
        local: &str,
        members: &[Member],
        config: HyParViewConfig,
        plumtree: PlumtreeConfig,
        tick_interval: Duration,
    ) -> Self {
        let seed = foldhash::fast::FixedState::with_seed(0x4879_5061).hash_one(local);
        let mut s = HyParViewService {
            local: local.to_string(),
            config,
            swarm: Swarm::new(
                local.to_string(),
                SwarmConfig {
                    hyparview: config,
                    plumtree,
                },
            ),
            rng: SmallRng::seed_from_u64(seed),
            members: BTreeMap::new(),
            contacted: false,
            now: Duration::ZERO,
            tick_interval: tick_interval.max(Duration::from_millis(1)),
            timers: Vec::new(),
            outbox: Vec::new(),
            delivered: Vec::new(),
            undecodable: 0,
            buf: Vec::new(),
            pending_join: None,
            metrics: OverlayMetrics::new("node"),
        };
        // Known members are recorded first; the contact is a random one of them (seeded
        // by the name), so a cluster switching to HyParView does not join through one node.
        for m in members {
            s.members.insert(m.name.clone(), (m.clone(), true));
        }
        let others: Vec<String> = s
            .members
            .keys()
            .filter(|n| **n != s.local)
            .cloned()
            .collect();
        if !others.is_empty() {
            let c = others[s.rng.random_range(0..others.len())].clone();
            s.contacted = true;
            s.input(SwarmInput::Join(c));
        }
        s
    }

    /// The membership machine.
    pub fn hyparview(&self) -> &HyParView<String> {
        self.swarm.hyparview()
    }

    /// The broadcast machine.
    pub fn plumtree(&self) -> &Plumtree<String> {
        self.swarm.plumtree()
    }

    /// Its counters.
    pub fn stats(&self) -> HvStats {
        self.swarm.hyparview().stats()
    }

    /// Protocol messages dropped because they did not decode.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    fn encode(msg: &SwarmMessage<String>) -> Option<Vec<u8>> {
        let (tag, body) = match msg {
            SwarmMessage::Hv(m) => (TAG_HV, rmp_serde::to_vec(m)),
            SwarmMessage::Pt(m @ PtMessage::Gossip { .. }) => (TAG_PT_DATA, rmp_serde::to_vec(m)),
            SwarmMessage::Pt(m) => (TAG_PT_CONTROL, rmp_serde::to_vec(m)),
        };
        let body = body.ok()?;
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(tag);
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decode(payload: &[u8]) -> Option<SwarmMessage<String>> {
        let (tag, body) = payload.split_first()?;
        match *tag {
            TAG_HV => rmp_serde::from_slice::<HvMessage<String>>(body)
                .ok()
                .map(SwarmMessage::Hv),
            TAG_PT_CONTROL | TAG_PT_DATA => rmp_serde::from_slice::<PtMessage<String>>(body)
                .ok()
                .map(SwarmMessage::Pt),
            _ => None,
        }
    }

    fn input(&mut self, input: SwarmInput<String>) {
        let mut buf = std::mem::take(&mut self.buf);
        self.swarm.handle(self.now, input, &mut self.rng, &mut buf);
        for o in buf.drain(..) {
            match o {
                SwarmOutput::Send { to, msg } => match Self::encode(&msg) {
                    Some(bytes) => self.outbox.push((to, bytes)),
                    // Our own enums always encode; nothing to send if one ever did not.
                    None => self.undecodable += 1,
                },
                SwarmOutput::SetTimer { after, timer } => {
                    self.timers.push((self.now + after, timer));
                }
                SwarmOutput::Deliver {
                    hops,
                    from,
                    payload,
                    ..
                } => {
                    if from != self.local {
                        self.delivered.push(Delivered {
                            from,
                            hops,
                            payload,
                        });
                    }
                }
                SwarmOutput::Isolated => {
                    // Rejoin through any live member the node knows.
                    let live: Vec<String> = self
                        .members
                        .iter()
                        .filter(|(n, (_, up))| *up && **n != self.local)
                        .map(|(n, _)| n.clone())
                        .collect();
                    if !live.is_empty() {
                        let c = live[self.rng.random_range(0..live.len())].clone();
                        self.pending_join = Some(c);
                    }
                }
                SwarmOutput::NeighborUp(_) | SwarmOutput::NeighborDown(_) => {}
            }
        }
        self.buf = buf;
        if let Some(c) = self.pending_join.take() {
            self.input(SwarmInput::Join(c));
        }
    }
}

impl PeerService for HyParViewService {
    fn kind(&self) -> TopologyKind {
        TopologyKind::HyParView(self.config)
    }

    fn update(&mut self, change: Change) {
        match change {
            Change::Joined(m) => {
                let name = m.name.clone();
                self.members.insert(name.clone(), (m, true));
                if !self.contacted && name != self.local {
                    self.contacted = true;
                    self.input(SwarmInput::Join(name));
                }
            }
            Change::Left(n) => {
                self.members.remove(&n);
                self.input(SwarmInput::PeerFailed(n));
            }
            Change::Down(n) => {
                if let Some(e) = self.members.get_mut(&n) {
                    e.1 = false;
                }
                self.input(SwarmInput::PeerFailed(n));
            }
            Change::Up(n) => {
                if let Some(e) = self.members.get_mut(&n) {
                    e.1 = true;
                }
            }
        }
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.swarm.hyparview().active().iter().cloned().collect()
    }

    fn next_hop(&self, to: &str) -> Option<String> {
        (to != self.local && self.members.get(to).is_some_and(|(_, up)| *up))
            .then(|| to.to_string())
    }

    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        self.swarm
            .hyparview()
            .active()
            .iter()
            .filter(|p| Some(p.as_str()) != from)
            .cloned()
            .collect()
    }

    fn alive(&self) -> Vec<Member> {
        self.members
            .values()
            .filter(|(_, up)| *up)
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn on_message(&mut self, from: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
        match Self::decode(payload) {
            Some(msg) => self.input(SwarmInput::Message {
                from: from.to_string(),
                msg,
            }),
            None => self.undecodable += 1,
        }
        std::mem::take(&mut self.outbox)
    }

    fn tick(&mut self) -> Vec<(String, Vec<u8>)> {
        self.now += self.tick_interval;
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, t) in due {
            self.input(SwarmInput::Timer(t));
        }
        self.metrics.record(&self.swarm);
        std::mem::take(&mut self.outbox)
    }

    fn publish(&mut self, incarnation: u64, payload: Bytes) -> Option<Vec<(String, Vec<u8>)>> {
        self.swarm.set_incarnation(incarnation);
        self.input(SwarmInput::Broadcast(payload));
        Some(std::mem::take(&mut self.outbox))
    }

    fn take_delivered(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.delivered)
    }

    fn carries_data(&self, payload: &[u8]) -> bool {
        payload.first() == Some(&TAG_PT_DATA)
    }

    fn broadcast_stats(&self) -> Option<super::plumtree::PtStats> {
        Some(self.swarm.plumtree().stats())
    }

    /// An active neighbour is dropped at once (told with a `Disconnect`, so a live one
    /// drops its side too and the views stay symmetric) and replaced from the passive
    /// view; a candidate with a request outstanding or in the passive view is dropped
    /// from it. Waiting for the membership's verdict (a suspicion timeout later) kept a
    /// dead neighbour in the view, and one the view already held down was never reported
    /// again (D371).
    fn unreachable(&mut self, peer: &str) -> Vec<(String, Vec<u8>)> {
        let hv = self.swarm.hyparview();
        let active = hv.is_active(&peer.to_string());
        if !active && !hv.passive().iter().any(|p| p == peer) && !hv.is_pending(peer) {
            return Vec::new();
        }
        if active {
            let bye = SwarmMessage::Hv(HvMessage::Disconnect { alive: true });
            if let Some(bytes) = Self::encode(&bye) {
                self.outbox.push((peer.to_string(), bytes));
            }
        }
        self.input(SwarmInput::PeerFailed(peer.to_string()));
        std::mem::take(&mut self.outbox)
    }

    fn overlay_views(&self) -> Option<crate::topology::OverlayViews> {
        let (hv, pt) = (self.swarm.hyparview(), self.swarm.plumtree());
        Some(crate::topology::OverlayViews {
            active: hv.active().to_vec(),
            passive: hv.passive().to_vec(),
            eager: pt.eager().iter().cloned().collect(),
            lazy: pt.lazy().iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Role;
    use std::collections::VecDeque;

    /// Services exchanging payloads through a FIFO queue, one tick per round.
    struct Net {
        nodes: BTreeMap<String, HyParViewService>,
        down: BTreeSet<String>,
    }

    impl Net {
        fn new(n: usize) -> Self {
            let names: Vec<String> = (0..n).map(|i| format!("n{i:03}")).collect();
            let mut nodes = BTreeMap::new();
            for (i, name) in names.iter().enumerate() {
                // Each node knows one earlier node (its seed), like a node joining a cluster.
                let mut known = vec![Member::new(name.clone(), Role::Peer)];
                if i > 0 {
                    known.push(Member::new(names[i / 2].clone(), Role::Peer));
                }
                let s = HyParViewService::new(
                    name,
                    &known,
                    HyParViewConfig::default(),
                    Duration::from_millis(200),
                );
                nodes.insert(name.clone(), s);
            }
            Net {
                nodes,
                down: BTreeSet::new(),
            }
        }

        fn round(&mut self) {
            let mut queue: VecDeque<(String, String, Vec<u8>)> = VecDeque::new();
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for n in &names {
                if self.down.contains(n) {
                    continue;
                }
                for (to, p) in self.nodes.get_mut(n).unwrap().tick() {
                    queue.push_back((n.clone(), to, p));
                }
            }
            while let Some((from, to, p)) = queue.pop_front() {
                if self.down.contains(&to) {
                    // The connection fails: the sender's detector reports it.
                    self.nodes
                        .get_mut(&from)
                        .unwrap()
                        .update(Change::Down(to.clone()));
                    continue;
                }
                for (next, q) in self.nodes.get_mut(&to).unwrap().on_message(&from, &p) {
                    queue.push_back((to.clone(), next, q));
                }
            }
        }

        fn connected(&self) -> bool {
            let live: Vec<&String> = self
                .nodes
                .keys()
                .filter(|n| !self.down.contains(*n))
                .collect();
            let mut seen = BTreeSet::from([live[0].clone()]);
            let mut stack = vec![live[0].clone()];
            while let Some(n) = stack.pop() {
                for p in self.nodes[&n].wanted() {
                    if !self.down.contains(&p) && seen.insert(p.clone()) {
                        stack.push(p);
                    }
                }
            }
            seen.len() == live.len()
        }
    }

    #[test]
    fn services_form_an_overlay_and_repair_it_after_failures() {
        let mut net = Net::new(60);
        for _ in 0..100 {
            net.round();
        }
        assert!(net.connected());
        for s in net.nodes.values() {
            assert!((1..=5).contains(&s.wanted().len()));
            assert!(s.hyparview().passive().len() <= 30);
        }
        // Kill a third; their neighbours are told when they next send to them, or by the
        // failure detector (simulated here).
        let victims: Vec<String> = net.nodes.keys().step_by(3).cloned().collect();
        for v in &victims {
            net.down.insert(v.clone());
        }
        let names: Vec<String> = net.nodes.keys().cloned().collect();
        for n in names.iter().filter(|n| !net.down.contains(*n)) {
            for v in &victims {
                net.nodes
                    .get_mut(n)
                    .unwrap()
                    .update(Change::Down(v.clone()));
            }
        }
        for _ in 0..50 {
            net.round();
        }
        assert!(net.connected());
        for n in names.iter().filter(|n| !net.down.contains(*n)) {
            let w = net.nodes[n].wanted();
            assert!(w.iter().all(|p| !net.down.contains(p)), "{n}: {w:?}");
            assert!(!w.is_empty());
            let targets = net.nodes[n].broadcast_targets(Some(w.iter().next().unwrap()));
            assert_eq!(targets.len(), w.len() - 1);
        }
    }

    #[test]
    fn an_unreachable_neighbour_is_dropped_on_both_sides_and_replaced() {
        let mut net = Net::new(20);
        for _ in 0..60 {
            net.round();
        }
        assert!(net.connected());
        let me = "n000".to_string();
        let peer = net.nodes[&me].wanted().into_iter().next().unwrap();
        let before = net.nodes[&me].wanted().len();
        let out = net.nodes.get_mut(&me).unwrap().unreachable(&peer);
        assert!(!net.nodes[&me].wanted().contains(&peer));
        // The `Disconnect` goes to the peer, which drops its side (a live peer falsely
        // suspected keeps the views symmetric); the slot is refilled from the passive view.
        let mut queue: VecDeque<(String, String, Vec<u8>)> =
            out.into_iter().map(|(to, b)| (me.clone(), to, b)).collect();
        while let Some((from, to, b)) = queue.pop_front() {
            for (next, q) in net.nodes.get_mut(&to).unwrap().on_message(&from, &b) {
                queue.push_back((to.clone(), next, q));
            }
        }
        assert!(!net.nodes[&peer].wanted().contains(&me));
        for _ in 0..10 {
            net.round();
        }
        assert!(net.connected());
        assert!(net.nodes[&me].wanted().len() >= before.min(2));
        for (n, s) in &net.nodes {
            for p in s.wanted() {
                assert!(net.nodes[&p].wanted().contains(n), "{n} -> {p} one-sided");
            }
        }
        // A name that is neither active, pending nor passive is ignored.
        assert!(net
            .nodes
            .get_mut(&me)
            .unwrap()
            .unreachable("nobody")
            .is_empty());
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let mut s = HyParViewService::new(
            "a",
            &[Member::new("a", Role::Peer)],
            HyParViewConfig::default(),
            Duration::from_millis(100),
        );
        assert!(s.on_message("b", b"\xc1 not msgpack").is_empty());
        assert_eq!(s.undecodable(), 1);
        assert!(s.wanted().is_empty());
        assert_eq!(s.next_hop("zz"), None, "unknown members are unreachable");
    }
}
