//! The membership service of a node: feeds the sans-IO [`View`](crate::membership::View)
//! with gossip and with the φ detector's verdicts (φ is fed by heartbeats only), applies
//! the view's events to the topology, the links and the subscribers, and disseminates the
//! view.
//!
//! Two regimes, by [`TopologyKind::is_partial`]:
//!
//! * **Full view** (full mesh, client/server, static): the first message on a new link is
//!   the whole view, a peer that talks to us gets a link back, the whole view goes to a
//!   few random peers every `gossip_every` rounds, every linked peer is watched, and down
//!   members are knocked on. Cost per node grows with the cluster: meant for small ones.
//! * **Partial view** (HyParView): the work per node is bounded by the active view, not
//!   the cluster. The first message on a new link is the node's own entry only (twice
//!   from a node that knows no other member: a joiner asking its contact for the view,
//!   which it then gets once, in chunks; what a node without neighbours hears is not
//!   passed on as news). Updates that change the view are *news*: each node passes each piece of
//!   news once to each active neighbour, batched per round (a flood over the overlay,
//!   `d·n` messages per change), and before any topology message to a peer, so a
//!   forwarded join never names a member the receiver has no address for. Every
//!   `gossip_every` rounds a bounded random sample of the view goes to one neighbour
//!   (anti-entropy for lost news). φ watches the active view only (that is where
//!   failures are detected), and a neighbour it suspects, a suspected candidate, or a
//!   peer a topology message cannot be addressed to is reported to the topology as
//!   unreachable at once (replaced, without waiting for `Down`); the sender's own entry
//!   is news even at a node without neighbours, which keeps its news for its first
//!   one; links the topology does not want are closed once idle for a grace
//!   period (the longer of the shuffle interval and ten heartbeats): a transient direct
//!   link that carries application traffic (a send or a remote call to a member outside
//!   the active view, a reply) stays while it does (D430); no link back to a
//!   peer that merely talks to us; down members are not knocked on (the overlay heals
//!   through the passive view). Memory is O(n) per node: the view itself.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::{IndexedRandom, IteratorRandom};
use tokio::time::Instant;

use super::wire::{encode, Wire};
use super::{Inner, MembershipEvent};
use crate::channel::COORDINATION;
use crate::error::Error;
use crate::membership::{Status, Update, ViewEvent};
use crate::topology::{Change, Member, TopologyKind};

/// Updates per gossip message under a partial view (news batches, view chunks).
const CHUNK: usize = 256;
/// Members in an anti-entropy sample.
const SAMPLE: usize = 32;
/// The partition key of membership news, view transfers and topology messages: one
/// connection per peer, so they arrive in the order sent (news before the topology
/// message that names its members; inbound connections are read concurrently).
const ORDERED: Option<u64> = Some(0);

/// Partial-view state (see the [module docs](self)).
#[derive(Default)]
pub(crate) struct Overlay {
    /// News to pass on, by member, each with the peers known to have it (its sender, and
    /// the peers it went to).
    news: Mutex<HashMap<String, (Update, HashSet<String>)>>,
    /// Peers this module made links to, and since when each has been unwanted and idle.
    touched: Mutex<HashMap<String, Option<Instant>>>,
    /// Members we hold down that talked to us, and when we last told them so.
    told: Mutex<HashMap<String, Instant>>,
}

impl Inner {
    /// Whether the topology keeps a partial view (see the [module docs](self)).
    pub(super) fn partial(&self) -> bool {
        self.topology.lock().kind().is_partial()
    }

    /// The first message on a new link: the whole view, or under a partial view this
    /// node's own entry — twice while it knows no other member, which asks the peer for
    /// its view (a joiner greeting its contact; an in-band request, so a node that does not
    /// know it simply applies the entry twice).
    pub(super) fn hello(&self) -> Vec<Update> {
        if self.partial() {
            let view = self.view.lock();
            let me = view.me().clone();
            if view.members().next().is_none() {
                vec![me.clone(), me]
            } else {
                vec![me]
            }
        } else {
            self.view.lock().digest()
        }
    }

    /// Applies gossiped updates from `peer`.
    pub(super) fn on_gossip(self: &Arc<Self>, peer: &str, members: Vec<Update>) {
        let now = Instant::now();
        let partial = self.partial();
        let mut changed = Vec::new();
        let mut newcomer = false;
        let events = {
            let mut view = self.view.lock();
            // What a node without neighbours hears from others about third members is
            // the cluster's view (a joiner's first view), not news. The sender's own
            // entry is always news: a newcomer greeting a seed that has no neighbour yet
            // is known to nobody else, and the seed's forwarded joins will name it (D370).
            let transfer = partial && self.topology.lock().wanted().is_empty();
            let mut events = Vec::new();
            if partial
                && members.len() == 2
                && members
                    .iter()
                    .all(|u| u.name == peer && u.status == Status::Alive)
            {
                // A view request: a joiner greets with its own entry twice.
                newcomer = true;
            }
            for u in members {
                if !partial || u.name == self.name {
                    events.extend(view.apply(u, now));
                    continue;
                }
                let before = view.get(&u.name).cloned();
                events.extend(view.apply(u.clone(), now));
                if (!transfer || u.name == peer) && view.get(&u.name) != before.as_ref() {
                    changed.push(u);
                }
            }
            events
        };
        self.on_view_events(events);
        if !partial {
            // Links are two-way: a peer that talks to us gets a link back (so each side
            // heartbeats the other whatever the topology).
            self.ensure_link(peer);
            return;
        }
        for u in changed {
            self.add_news(u, Some(peer));
        }
        self.heard_from(peer);
        if newcomer {
            // A joiner greets its contact: it gets the whole view once.
            self.send_view(peer);
        }
    }

    /// Sends the whole view to `peer` in chunks (a joiner's first view).
    fn send_view(&self, peer: &str) {
        let digest = self.view.lock().digest();
        self.ensure_link(peer);
        let Some(link) = self.links.get(peer) else {
            return;
        };
        metrics::counter!("foundation_node_view_transfers_total").increment(1);
        for chunk in digest.chunks(CHUNK) {
            let bytes = encode(&Wire::Gossip {
                members: chunk.to_vec(),
            });
            if link.send_or_park(COORDINATION, ORDERED, bytes).is_err() {
                self.meters.dropped("gossip_full").increment(1);
            }
        }
    }

    /// Queues `u` as news to pass on to the neighbours (partial view only).
    pub(super) fn add_news(&self, u: Update, from: Option<&str>) {
        let mut news = self.overlay.news.lock();
        let (old, has) = news
            .entry(u.name.clone())
            .or_insert_with(|| (u.clone(), HashSet::new()));
        if u.overrides(old) {
            *old = u;
            has.clear();
        }
        if let Some(f) = from {
            has.insert(f.to_string());
        }
    }

    /// Sends `peer` the news it does not have yet (before a topology message to it, so
    /// the members that message names are known there first).
    pub(super) fn news_to(&self, peer: &str) {
        let batch: Vec<Update> = {
            let mut news = self.overlay.news.lock();
            news.values_mut()
                .filter(|(_, has)| !has.contains(peer))
                .map(|(u, has)| {
                    has.insert(peer.to_string());
                    u.clone()
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let Some(link) = self.links.get(peer) else {
            return;
        };
        for chunk in batch.chunks(CHUNK) {
            let bytes = encode(&Wire::Gossip {
                members: chunk.to_vec(),
            });
            if link.send_or_park(COORDINATION, ORDERED, bytes).is_err() {
                self.meters.dropped("gossip_full").increment(1);
            }
        }
    }

    /// Passes the news on to every neighbour that lacks it, and forgets it. A node
    /// without neighbours keeps its news (at most one entry per member) for its first
    /// neighbour: forgetting it lost the members that joined a seed before the seed had
    /// an overlay neighbour (D370).
    fn flush_news(&self, neighbours: &BTreeSet<String>) {
        if neighbours.is_empty() {
            return;
        }
        for p in neighbours {
            self.news_to(p);
        }
        self.overlay.news.lock().clear();
    }

    /// Sends a topology manager's protocol messages: each on the link to its next hop
    /// (made if needed; a partial-view topology talks to peers it holds no link to yet, so
    /// the link holds the message until it is up), on `coordination`, or on a data
    /// channel when it carries a broadcast payload. Under a partial view the peer first
    /// gets the news it lacks. Never waits; what cannot be queued is counted.
    pub(super) fn send_topology(&self, out: Vec<(String, Vec<u8>)>) {
        if out.is_empty() {
            return;
        }
        let partial = self.partial();
        let mut unreachable: Vec<String> = Vec::new();
        for (to, payload) in out {
            let data = self.topology.lock().carries_data(&payload);
            let w = Wire::Topology {
                payload: bytes::Bytes::from(payload),
            };
            let hop = self.hop(&to);
            if partial && hop.is_err() && !unreachable.contains(&to) {
                unreachable.push(to.clone());
            }
            let sent = hop.and_then(|hop| {
                self.ensure_link(&hop);
                if partial {
                    self.news_to(&hop);
                }
                let bytes = encode(&w);
                let channel = if data {
                    self.channel_for(super::SendOptions::default(), bytes.len())
                } else {
                    COORDINATION
                };
                match self.links.get(&hop) {
                    Some(l) => l.send_or_park(channel, ORDERED, bytes),
                    None => Err(Error::NotConnected {
                        node: hop,
                        reason: "no link".into(),
                    }),
                }
            });
            if sent.is_err() {
                self.meters.dropped("topology_failed").increment(1);
            }
        }
        // A partial view that named a peer this node cannot address (unknown, or held
        // down) would keep it as a one-sided neighbour nobody watches: the topology
        // hears it is unreachable and picks another (D370).
        for p in unreachable {
            metrics::counter!("foundation_node_topology_unreachable_total").increment(1);
            let more = self.topology.lock().unreachable(&p);
            self.send_topology(more);
        }
    }

    /// `peer` talked to us directly. Under a partial view, if we hold it suspect or down,
    /// we tell it (at most once per heartbeat interval): a node without neighbours hears no
    /// news, so it would never refute, and nobody would answer it. Its refutation then
    /// reaches us on the link it talks to us on.
    pub(super) fn heard_from(&self, peer: &str) {
        let held = self
            .view
            .lock()
            .get(peer)
            .filter(|u| matches!(u.status, Status::Suspect | Status::Dead))
            .cloned();
        let Some(u) = held else { return };
        if !self.partial() {
            return;
        }
        let now = Instant::now();
        {
            let mut told = self.overlay.told.lock();
            if told
                .get(peer)
                .is_some_and(|t| now.duration_since(*t) < self.settings.heartbeat)
            {
                return;
            }
            told.insert(peer.to_string(), now);
            told.retain(|_, t| now.duration_since(*t) < self.settings.heartbeat * 10);
        }
        let addr = u.addr.clone();
        if addr.is_empty() {
            return;
        }
        let link = self.links.ensure(peer, &addr);
        self.overlay.touched.lock().insert(peer.to_string(), None);
        if link
            .send_or_park(
                COORDINATION,
                None,
                encode(&Wire::Gossip { members: vec![u] }),
            )
            .is_err()
        {
            self.meters.dropped("gossip_full").increment(1);
        }
    }

    /// A heartbeat from `peer`: feeds φ, and carries the peer's generation (a refutation
    /// reaches its neighbours with its next heartbeat).
    pub(super) fn on_heartbeat(self: &Arc<Self>, peer: &str, incarnation: u64, version: u64) {
        let now = Instant::now();
        let newer = {
            let view = self.view.lock();
            let Some(known) = view.get(peer).filter(|_| peer != self.name) else {
                return; // only members are watched
            };
            {
                let mut d = self.detector.lock();
                // Under a partial view only the active neighbours are watched.
                if d.detector(&peer.to_string()).is_some() || !self.partial() {
                    d.heartbeat(&peer.to_string(), now);
                }
            }
            Some(known).and_then(|known| {
                let newer = (incarnation, version) > (known.incarnation, known.version);
                newer.then(|| Update {
                    incarnation,
                    version,
                    status: Status::Alive,
                    ..known.clone()
                })
            })
        };
        if let Some(u) = newer {
            let events = self.view.lock().apply(u, now);
            self.on_view_events(events);
        } else {
            self.heard_from(peer);
        }
    }

    /// Starts (in the background) a link to `peer` if it is a member not removed.
    pub(super) fn ensure_link(&self, peer: &str) {
        if peer == self.name {
            return;
        }
        let addr = self.view.lock().get(peer).map(|u| u.addr.clone());
        if let Some(addr) = addr {
            if addr.is_empty() {
                return;
            }
            let partial = self.partial();
            if partial {
                self.overlay.touched.lock().insert(peer.to_string(), None);
            }
            if self.links.get(peer).is_none()
                && self.detector.lock().detector(&peer.to_string()).is_none()
                && (!partial || self.topology.lock().wanted().contains(peer))
            {
                // A new link: its heartbeats are expected from now on.
                self.watch_fresh(peer);
            }
            let link = self.links.ensure(peer, &addr);
            if link.current().is_none() {
                link.poke();
            }
        }
    }

    pub(super) fn emit(&self, e: MembershipEvent) {
        let _ = self.events.send(e);
    }

    /// Acts on what changed in the view.
    pub(super) fn on_view_events(self: &Arc<Self>, events: Vec<ViewEvent>) {
        if events.is_empty() {
            return;
        }
        let mut gossip_me = false;
        let mut joined = Vec::new();
        for e in events {
            match e {
                ViewEvent::Joined(n) => {
                    joined.push(n.clone());
                    let role = self.view.lock().get(&n).map(|u| u.role);
                    if let Some(role) = role {
                        self.topology
                            .lock()
                            .update(Change::Joined(Member::new(n.clone(), role)));
                    }
                    // Watch it from now on if the topology wants a link to it, so a
                    // member that never heartbeats is suspected too. A member outside a
                    // partial view (HyParView, client/server) is watched once a link to it
                    // is made (`ensure_link`) or it heartbeats: nobody heartbeats a member
                    // it holds no link to, so watching it would declare it down.
                    if self.topology.lock().wanted().contains(&n) {
                        self.watch_fresh(&n);
                    }
                    self.emit(MembershipEvent::Joined(n));
                    self.meters.view_changes.increment(1);
                }
                ViewEvent::Restarted(n) => {
                    // A new run of the node: forget what we measured of the old one.
                    self.rewatch(&n);
                    let current = self.view.lock().get(&n).map_or(0, |u| u.incarnation);
                    self.acked
                        .inc
                        .lock()
                        .retain(|(from, inc), _| *from != n || *inc >= current);
                    if let Some(l) = self.links.get(&n) {
                        l.poke();
                    }
                    self.emit(MembershipEvent::Joined(n));
                }
                ViewEvent::Suspected(n) => {
                    tracing::info!(node = %n, "member suspected");
                    self.meters.suspected.increment(1);
                    if self.partial() && !self.topology.lock().wanted().contains(&n) {
                        // A suspect is a poor candidate: it leaves the passive view, and
                        // a request to it is given up, now rather than a suspicion timeout
                        // (or a neighbour timeout) later. An active neighbour is judged by
                        // this node's own φ, not by the rumour (D372).
                        let more = self.topology.lock().unreachable(&n);
                        self.send_topology(more);
                    }
                }
                ViewEvent::Alive(n) => {
                    self.rewatch(&n);
                    let since = self.down.lock().remove(&n);
                    self.links.routes_changed();
                    if let Some(since) = since {
                        metrics::histogram!("foundation_node_partition_recovery_seconds")
                            .record(since.elapsed().as_secs_f64());
                        self.topology.lock().update(Change::Up(n.clone()));
                        self.emit(MembershipEvent::Up(n));
                    }
                }
                ViewEvent::Dead(n) => {
                    self.detector.lock().remove(&n);
                    if self.partial() && !self.topology.lock().wanted().contains(&n) {
                        // No knocking on down members under a partial view.
                        self.close_link(&n, "dead");
                        self.overlay.touched.lock().remove(&n);
                    }
                    let newly = match self.down.lock().entry(n.clone()) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(Instant::now());
                            true
                        }
                        std::collections::hash_map::Entry::Occupied(_) => false,
                    };
                    self.links.routes_changed();
                    if newly {
                        self.topology.lock().update(Change::Down(n.clone()));
                        tracing::warn!(node = %n, "member down");
                        self.emit(MembershipEvent::Down(n));
                    }
                }
                ViewEvent::Left(n) => {
                    self.forget(&n);
                    self.emit(MembershipEvent::Left(n));
                }
                ViewEvent::Removed(n) => {
                    tracing::info!(node = %n, "dead member removed");
                    self.forget(&n);
                }
                ViewEvent::Refuted => gossip_me = true,
            }
        }
        if gossip_me {
            let me = self.view.lock().me().clone();
            self.meters.refuted.increment(1);
            if self.partial() {
                self.add_news(me.clone(), None);
            }
            self.gossip_all(vec![me]);
        }
        let (wanted, built_in) = {
            let t = self.topology.lock();
            let kind = t.service().kind();
            // Partial views pass joins on as news (see the module docs).
            let built_in = matches!(
                kind,
                TopologyKind::FullMesh | TopologyKind::ClientServer { .. }
            ) || kind.is_partial();
            (t.wanted(), built_in)
        };
        for p in &wanted {
            self.ensure_link(p);
        }
        if !joined.is_empty() && !built_in {
            let mut to = wanted;
            to.extend(self.links.up_peers().into_iter().map(|l| l.peer.clone()));
            to.retain(|p| !joined.contains(p));
            self.announce(&joined, &to);
        }
    }

    /// Passes news of members that joined to every peer it holds a live link to (and the
    /// peers the topology wants), ahead of any topology message that may name them. Over
    /// a partial view (HyParView) the overlay introduces a newcomer (a forwarded join, a
    /// shuffle) to peers that have not heard of it from the periodic gossip yet, and a
    /// node cannot open a link to a member whose address it does not know. Each node
    /// passes a member on once (when it enters its view), on the channel its topology
    /// messages use, so along every link the news arrives before them. Not done for the
    /// built-in full mesh and client/server topologies: they exchange no topology
    /// messages, and in a full mesh the flood would cost n² per join.
    fn announce(&self, joined: &[String], to: &BTreeSet<String>) {
        let news: Vec<Update> = {
            let view = self.view.lock();
            joined.iter().filter_map(|n| view.get(n).cloned()).collect()
        };
        if news.is_empty() {
            return;
        }
        let bytes = encode(&Wire::Gossip { members: news });
        for p in to {
            let sent = self
                .links
                .get(p)
                .map(|l| l.send_or_park(COORDINATION, ORDERED, bytes.clone()));
            if !matches!(sent, Some(Ok(()))) {
                self.meters.dropped("gossip_full").increment(1);
            }
        }
    }

    /// Restarts φ for `n` if it is watched: always in a full view, under a partial view
    /// only if it is an active neighbour.
    fn rewatch(&self, n: &str) {
        if !self.partial() || self.topology.lock().wanted().contains(n) {
            self.watch_fresh(n);
        }
    }

    /// Restarts φ for `n` (new statistics, as if heard from now).
    fn watch_fresh(&self, n: &str) {
        let mut d = self.detector.lock();
        d.remove(&n.to_string());
        d.heartbeat(&n.to_string(), Instant::now());
    }

    fn forget(&self, n: &str) {
        self.close_link(n, "forgotten");
        self.forget_table(n);
        self.overlay.touched.lock().remove(n);
        self.detector.lock().remove(&n.to_string());
        self.down.lock().remove(n);
        self.links.routes_changed();
        self.topology.lock().update(Change::Left(n.to_string()));
        if let Some(o) = self.acked.out.lock().remove(n) {
            // Wakes `send_acked` calls waiting for room towards a member that is gone.
            o.window.close();
        }
        self.acked.inc.lock().retain(|(from, _), _| from != n);
    }

    /// Sends `updates` to every peer with a live link (never waits; a full queue is
    /// counted).
    pub(super) fn gossip_all(&self, updates: Vec<Update>) {
        let bytes = encode(&Wire::Gossip { members: updates });
        for l in self.links.up_peers() {
            if l.try_send(COORDINATION, None, bytes.clone()).is_err() {
                self.meters.dropped("gossip_full").increment(1);
            }
        }
    }

    /// Stops and forgets the link to `peer`, if there is one, counted under `reason`
    /// (`foundation_node_links_closed_total{reason}`): `idle` (outside the topology's
    /// wants and unused for the grace period), `dead` (a member held down outside a
    /// partial view's wants), `forgotten` (a member that left or was removed).
    pub(super) fn close_link(&self, peer: &str, reason: &'static str) {
        if self.links.get(peer).is_some() {
            self.links.remove(peer);
            metrics::counter!("foundation_node_links_closed_total", "reason" => reason)
                .increment(1);
        }
    }

    /// One membership round: φ verdicts, view timers, periodic dissemination.
    pub(super) fn membership_round(self: &Arc<Self>, round: u64) {
        // Links' last-used stamps count membership rounds (D430).
        self.links.next_round();
        let now = Instant::now();
        let partial = self.partial();
        let suspects = self.detector.lock().suspects(now);
        if partial {
            // φ watches the active view only: a neighbour it suspects is replaced now,
            // not a suspicion timeout later, and also when the view already holds it
            // suspect or down (no `Down` would come then) (D371).
            for s in &suspects {
                metrics::counter!("foundation_node_topology_unreachable_total").increment(1);
                let more = self.topology.lock().unreachable(s);
                self.send_topology(more);
            }
        }
        let mut news = Vec::new();
        for s in suspects {
            let u = self.view.lock().suspect(&s, now);
            if let Some(u) = u {
                news.push(u);
                self.on_view_events(vec![ViewEvent::Suspected(s)]);
            }
        }
        if !news.is_empty() {
            if partial {
                for u in &news {
                    self.add_news(u.clone(), None);
                }
            }
            self.gossip_all(news);
        }
        let events = self.view.lock().tick(now);
        self.on_view_events(events);
        if partial {
            self.partial_round(round, now);
            return;
        }
        // Keep knocking on members that are down, so a healed partition is noticed, and
        // on the peers the topology wants.
        let mut knock: Vec<String> = self.topology.lock().wanted().into_iter().collect();
        knock.extend(
            self.view
                .lock()
                .members()
                .filter(|u| u.status == Status::Dead)
                .map(|u| u.name.clone()),
        );
        for p in knock {
            self.ensure_link(&p);
        }
        let every = self.settings.gossip_every.max(1);
        if round.is_multiple_of(every) {
            let digest = self.view.lock().digest();
            let bytes = encode(&Wire::Gossip { members: digest });
            let up = self.links.up_peers();
            let chosen: Vec<_> = up
                .choose_multiple(&mut rand::rng(), self.settings.gossip_fanout.max(1))
                .cloned()
                .collect();
            for l in chosen {
                if l.try_send(COORDINATION, None, bytes.clone()).is_err() {
                    self.meters.dropped("gossip_full").increment(1);
                }
            }
        }
    }

    /// The rest of a round under a partial view: links and φ follow the active view,
    /// unwanted links idle for the grace period close, news goes out, and now and then a
    /// sample of the view.
    fn partial_round(self: &Arc<Self>, round: u64, now: Instant) {
        let (wanted, grace) = {
            let t = self.topology.lock();
            let grace = match t.kind() {
                TopologyKind::HyParView(c) => c.shuffle_interval,
                _ => Duration::ZERO,
            };
            (t.wanted(), grace.max(self.settings.heartbeat * 10))
        };
        for p in &wanted {
            self.ensure_link(p);
        }
        {
            let mut d = self.detector.lock();
            d.retain(|p| wanted.contains(p));
            let watched: HashSet<String> = d.watched().cloned().collect();
            for p in wanted.iter().filter(|p| !watched.contains(*p)) {
                d.heartbeat(p, now);
            }
        }
        let mut close = Vec::new();
        {
            let mut touched = self.overlay.touched.lock();
            for l in self.links.up_peers() {
                touched.entry(l.peer.clone()).or_insert(None);
            }
            touched.retain(|p, since| {
                // Wanted, or carried application traffic this round or the last (a
                // transient direct link in use: a remote call, a send to a member outside
                // the active view): not idle (D430).
                if wanted.contains(p)
                    || self
                        .links
                        .get(p)
                        .is_some_and(|l| self.links.idle_rounds(&l) <= 1)
                {
                    *since = None;
                    return true;
                }
                let t = *since.get_or_insert(now);
                if now.duration_since(t) >= grace {
                    close.push(p.clone());
                    return false;
                }
                true
            });
        }
        if self.switch_settling() {
            close.clear(); // make before break: a topology switch keeps old links (switch.rs)
        }
        for p in close {
            self.close_link(&p, "idle");
        }
        self.flush_news(&wanted);
        let every = self.settings.gossip_every.max(1);
        if round.is_multiple_of(every) {
            let mut rng = rand::rng();
            let Some(to) = wanted.iter().choose(&mut rng).cloned() else {
                return;
            };
            let sample: Vec<Update> = {
                let view = self.view.lock();
                let mut s: Vec<Update> = view
                    .members()
                    .choose_multiple(&mut rng, SAMPLE)
                    .into_iter()
                    .cloned()
                    .collect();
                s.push(view.me().clone());
                s
            };
            if let Some(l) = self.links.get(&to) {
                if l.try_send(
                    COORDINATION,
                    None,
                    encode(&Wire::Gossip { members: sample }),
                )
                .is_err()
                {
                    self.meters.dropped("gossip_full").increment(1);
                }
            }
        }
    }
}

impl super::Node {
    /// The topology in force (its kind and parameters).
    pub fn topology_kind(&self) -> TopologyKind {
        self.inner.topology.lock().kind()
    }

    /// The peers the topology wants this node linked to now: everyone in a full mesh,
    /// the active view under HyParView.
    pub fn neighbours(&self) -> BTreeSet<String> {
        self.inner.topology.lock().wanted()
    }
}
