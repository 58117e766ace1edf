//! The membership service of a node: feeds the sans-IO [`View`](crate::membership::View)
//! with gossip and with the φ detector's verdicts (φ is fed by heartbeats only), applies
//! the view's events to the topology, the links and the subscribers, and disseminates the
//! view periodically.

use std::collections::BTreeSet;
use std::sync::Arc;

use rand::seq::IndexedRandom;
use tokio::time::Instant;

use super::wire::{encode, Wire};
use super::{Inner, MembershipEvent};
use crate::channel::COORDINATION;
use crate::membership::{Status, Update, ViewEvent};
use crate::topology::{Change, Member, TopologyKind};

impl Inner {
    /// Applies gossiped updates from `peer`.
    pub(super) fn on_gossip(self: &Arc<Self>, peer: &str, members: Vec<Update>) {
        let now = Instant::now();
        let events = {
            let mut view = self.view.lock();
            let mut events = Vec::new();
            for u in members {
                events.extend(view.apply(u, now));
            }
            events
        };
        self.on_view_events(events);
        // Links are two-way: a peer that talks to us gets a link back (so each side
        // heartbeats the other whatever the topology).
        self.ensure_link(peer);
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
            self.detector.lock().heartbeat(&peer.to_string(), now);
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
            if self.links.get(peer).is_none()
                && self.detector.lock().detector(&peer.to_string()).is_none()
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
                    self.watch_fresh(&n);
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
                }
                ViewEvent::Alive(n) => {
                    self.watch_fresh(&n);
                    if self.down.lock().remove(&n) {
                        self.topology.lock().update(Change::Up(n.clone()));
                        self.emit(MembershipEvent::Up(n));
                    }
                }
                ViewEvent::Dead(n) => {
                    self.detector.lock().remove(&n);
                    if self.down.lock().insert(n.clone()) {
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
            self.gossip_all(vec![me]);
        }
        let (wanted, built_in) = {
            let t = self.topology.lock();
            let kind = t.service().kind();
            let built_in = matches!(
                kind,
                TopologyKind::FullMesh | TopologyKind::ClientServer { .. }
            );
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
                .map(|l| l.send_or_park(COORDINATION, None, bytes.clone()));
            if !matches!(sent, Some(Ok(()))) {
                self.meters.dropped("gossip_full").increment(1);
            }
        }
    }

    /// Restarts φ for `n` (new statistics, as if heard from now).
    fn watch_fresh(&self, n: &str) {
        let mut d = self.detector.lock();
        d.remove(&n.to_string());
        d.heartbeat(&n.to_string(), Instant::now());
    }

    fn forget(&self, n: &str) {
        self.links.remove(n);
        self.detector.lock().remove(&n.to_string());
        self.down.lock().remove(n);
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

    /// One membership round: φ verdicts, view timers, periodic dissemination.
    pub(super) fn membership_round(self: &Arc<Self>, round: u64) {
        let now = Instant::now();
        let suspects = self.detector.lock().suspects(now);
        let mut news = Vec::new();
        for s in suspects {
            let u = self.view.lock().suspect(&s, now);
            if let Some(u) = u {
                news.push(u);
                self.on_view_events(vec![ViewEvent::Suspected(s)]);
            }
        }
        if !news.is_empty() {
            self.gossip_all(news);
        }
        let events = self.view.lock().tick(now);
        self.on_view_events(events);
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
