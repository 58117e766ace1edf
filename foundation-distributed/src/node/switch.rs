//! Coordinated run-time topology switching.
//!
//! [`Node::switch_topology`] does not only swap the local overlay: it proposes the switch
//! to the whole cluster, on the `coordination` channel, under an **epoch** number, and
//! every member applies it.
//!
//! # Protocol
//!
//! * A node's topology state is `(epoch, proposer, kind)`. A start is epoch 0 with the
//!   kind of [`NodeSettings::topology`](super::NodeSettings::topology).
//! * A proposal takes `epoch + 1` with the proposer's name. States are ordered by
//!   `(epoch, proposer)`: of two concurrent proposals of the same epoch, the one whose
//!   proposer's name is greater wins, everywhere — every node converges on the same
//!   state whatever the order the announcements arrive in.
//! * A node that adopts a state (its own proposal or a greater one received) applies it
//!   and passes the announcement on to every peer it holds a live link to (a flood over
//!   the links, each node forwarding once per state). A node that receives a *smaller*
//!   state answers the sender with its own, so a node that missed a switch (a lost
//!   announcement, a partition, a late joiner) catches up; every new link starts with the
//!   sender's state, and every `anti_entropy_every` rounds a node sends its state to one
//!   random peer.
//! * **Make before break**: applying a state builds the new overlay (links to the peers
//!   the new topology wants are started) and keeps every old link. The old links the new
//!   topology does without (not a neighbour, and — under a full view — not a peer it
//!   sends to directly, like a client-server server's clients) are torn down once the new
//!   neighbours are all connected and stable for two rounds, or when `grace` has passed —
//!   and a link to a peer with unacknowledged messages only once they are acknowledged.
//!   A torn-down link is drained (what is queued on it is still written, within
//!   `drain_timeout`). Under HyParView the partial-view link closing waits while a switch
//!   settles.
//! * **Cooldown**: a node proposes no switch within `cooldown` of the last switch it
//!   applied (its own or another node's); it always *adopts* a greater state, or the
//!   cluster would not converge.
//! * **History**: the last `history` switches applied, with epoch, proposer, from, to,
//!   reason, and whether this node proposed it ([`Node::switch_history`]).
//!
//! Acknowledged streams (`send_acked`) do not depend on the path: sequence numbers,
//! retransmission and duplicate suppression are end to end, so a switch loses or
//! duplicates nothing on them. `send`, `request` and broadcasts follow the topology in
//! force at the sender; to a member the topology cannot reach, they go over a transient
//! direct connection (see `direct_hop`), so a partially switched cluster still delivers.
//!
//! # Metrics
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_node_topology_epoch` | gauge |
//! | `foundation_node_topology{kind}` | gauge (1 for the kind in force) |
//! | `foundation_node_topology_switches_total{to, origin="local"\|"remote"}` | counter |
//! | `foundation_node_topology_superseded_total` | counter (a state replaced by a concurrent greater one of the same epoch) |
//! | `foundation_node_links_retired_total` | counter (old links torn down after a switch) |
//! | `foundation_node_links_closed_total{reason}` | counter (links this node closed: `switch`, and from the membership `idle`, `dead`, `forgotten`) |
//! | `foundation_node_channel_table_mismatches_total` | counter (peers refused for another channel table, `table.rs`; their messages: `foundation_node_refused_total{reason="channel_table"}`) |
//! | `foundation_node_direct_hops_total` | counter (sends to a member the topology does not reach, over a direct connection) |

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::wire::{encode, Wire};
use super::{Inner, Node};
use crate::channel::COORDINATION;
use crate::error::{Error, Result};
use crate::membership::Status;
use crate::topology::{Change, Member, Topology, TopologyKind};

/// The partition key of switch messages on `coordination`: the connection membership and
/// topology messages use (key 0), so they keep their order with them (the hello first)
/// and the round-robin spread of the unkeyed coordination messages is left as it is.
pub(crate) const KEY: Option<u64> = Some(0);

/// Settings of coordinated topology switching ([`NodeSettings::switch`](super::NodeSettings::switch)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSettings {
    /// No proposal within this long of the last switch applied. Default 5 s.
    pub cooldown: Duration,
    /// Old links are torn down at the latest this long after a switch (earlier once the
    /// new neighbours are connected and stable). Default 5 s.
    pub grace: Duration,
    /// Deadline for writing what is queued on a torn-down link. Default 2 s.
    pub drain_timeout: Duration,
    /// Send the state to one random peer every this many heartbeat rounds (0: never).
    /// Default 5.
    pub anti_entropy_every: u64,
    /// Switches kept in the history. Default 64.
    pub history: usize,
}

impl Default for SwitchSettings {
    fn default() -> Self {
        SwitchSettings {
            cooldown: Duration::from_secs(5),
            grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            anti_entropy_every: 5,
            history: 64,
        }
    }
}

/// A switch this node applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// The epoch it started.
    pub epoch: u64,
    /// The node that proposed it.
    pub proposer: String,
    /// The topology before.
    pub from: TopologyKind,
    /// The topology after.
    pub to: TopologyKind,
    /// Why (as the proposer gave it).
    pub reason: String,
    /// When this node applied it, since the node started.
    pub at: Duration,
    /// Whether this node proposed it.
    pub local: bool,
}

/// The topology state in force at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyState {
    /// The epoch (0: the topology the node started with).
    pub epoch: u64,
    /// Who proposed it (empty for epoch 0).
    pub proposer: String,
    /// The topology.
    pub kind: TopologyKind,
    /// Whether the old links are still kept (make before break in progress).
    pub settling: bool,
}

/// Why a switch was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// The last switch was applied less than the cooldown ago; nothing changed.
    #[error("topology switch to {kind:?} refused: cooling down for {remaining:?} more (last switch: epoch {epoch})")]
    CoolingDown {
        /// The topology asked for.
        kind: TopologyKind,
        /// Time left before a proposal is accepted.
        remaining: Duration,
        /// The epoch in force.
        epoch: u64,
    },
    /// The node is shut down.
    #[error("node {node} is shut down")]
    ShutDown {
        /// This node.
        node: String,
    },
}

/// An announcement: a topology state, on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announce {
    epoch: u64,
    proposer: String,
    kind: TopologyKind,
    reason: String,
    /// The *sending* node's channel-table summary (`table::summary`), stamped when
    /// sent; empty in the state held (D431).
    #[serde(default)]
    table: String,
}

impl Announce {
    fn key(&self) -> (u64, &str) {
        (self.epoch, &self.proposer)
    }
}

/// Make before break in progress.
#[derive(Debug)]
struct Settling {
    deadline: Instant,
    wanted: BTreeSet<String>,
    stable: u32,
}

#[derive(Debug)]
struct St {
    current: Announce,
    last_switch: Option<Instant>,
    history: VecDeque<SwitchRecord>,
    settling: Option<Settling>,
    /// Peers whose link was torn down by a switch: not watched by the failure detector
    /// while this node holds no link to them (they stop heartbeating us when they tear
    /// down theirs, which must not read as a failure). With the time a link to one of
    /// them was seen again (a transient connection, or a link back to a peer that still
    /// talked to us): it is torn down again after `grace` while the topology does not
    /// want it.
    retired: HashMap<String, Option<Instant>>,
}

/// The switch state of a node.
pub(crate) struct SwitchState {
    st: Mutex<St>,
    /// Peers refused for a different channel table (carried by the state messages).
    pub(super) refused: super::table::Refused,
    started: Instant,
    drains: Mutex<tokio::task::JoinSet<()>>,
}

impl SwitchState {
    pub(crate) fn new(kind: TopologyKind) -> Self {
        set_kind_gauge(None, kind);
        metrics::gauge!("foundation_node_topology_epoch").set(0.0);
        SwitchState {
            st: Mutex::new(St {
                current: Announce {
                    epoch: 0,
                    proposer: String::new(),
                    kind,
                    reason: "start".into(),
                    table: String::new(),
                },
                last_switch: None,
                history: VecDeque::new(),
                settling: None,
                retired: HashMap::new(),
            }),
            refused: Default::default(),
            started: Instant::now(),
            drains: Mutex::new(tokio::task::JoinSet::new()),
        }
    }
}

fn kind_label(kind: TopologyKind) -> &'static str {
    kind.label()
}

fn set_kind_gauge(old: Option<TopologyKind>, new: TopologyKind) {
    if let Some(o) = old {
        metrics::gauge!("foundation_node_topology", "kind" => kind_label(o)).set(0.0);
    }
    metrics::gauge!("foundation_node_topology", "kind" => kind_label(new)).set(1.0);
}

/// Describes the switch metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "foundation_node_topology_epoch",
        "Topology epoch in force (0: the topology the node started with)."
    );
    metrics::describe_gauge!(
        "foundation_node_topology",
        "1 for the topology kind in force, 0 for the others seen."
    );
    metrics::describe_counter!(
        "foundation_node_topology_switches_total",
        "Topology switches applied, by target kind and origin (local: proposed here; remote: adopted)."
    );
    metrics::describe_counter!(
        "foundation_node_topology_superseded_total",
        "Topology states replaced by a concurrent proposal of the same epoch with a greater proposer."
    );
    metrics::describe_counter!(
        "foundation_node_links_retired_total",
        "Links torn down after a topology switch (the new overlay did not want them)."
    );
    metrics::describe_counter!(
        "foundation_node_links_closed_total",
        "Links this node closed, by reason: idle (outside the topology's wants and unused for the grace period), switch (torn down by a topology switch), dead (a member held down, partial view), forgotten (a member that left or was removed)."
    );
    metrics::describe_counter!(
        "foundation_node_channel_table_mismatches_total",
        "Peers found with a channel table other than this node's (their application traffic is refused both ways)."
    );
    metrics::describe_counter!(
        "foundation_node_direct_hops_total",
        "Sends to a member the topology does not reach, over a transient direct connection."
    );
}

impl Node {
    /// Proposes a switch of the whole cluster to `kind`; see
    /// [`switch_topology_because`](Self::switch_topology_because).
    pub fn switch_topology(&self, kind: TopologyKind) -> std::result::Result<u64, SwitchError> {
        self.switch_topology_because(kind, "asked by the application")
    }

    /// Proposes a switch of the whole cluster to `kind`, recording `reason`: applies it
    /// here under the next epoch and announces it on `coordination`; every member applies
    /// it (see `docs/NODE.md`, *Topology switching*). Returns the epoch in force after
    /// the call: a new one, or the current one if `kind` is already in force (nothing
    /// proposed). Application code is unaffected; old links are kept until the new
    /// overlay is connected (or `grace` has passed).
    ///
    /// Fails with [`SwitchError::CoolingDown`] within
    /// [`SwitchSettings::cooldown`] of the last switch applied here (nothing changes).
    pub fn switch_topology_because(
        &self,
        kind: TopologyKind,
        reason: &str,
    ) -> std::result::Result<u64, SwitchError> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() {
            return Err(SwitchError::ShutDown {
                node: inner.name.clone(),
            });
        }
        let ann = {
            let st = inner.switch.st.lock();
            if st.current.kind == kind {
                return Ok(st.current.epoch);
            }
            if let Some(last) = st.last_switch {
                let until = last + inner.settings.switch.cooldown;
                let now = Instant::now();
                if now < until {
                    return Err(SwitchError::CoolingDown {
                        kind,
                        remaining: until - now,
                        epoch: st.current.epoch,
                    });
                }
            }
            Announce {
                epoch: st.current.epoch + 1,
                proposer: inner.name.clone(),
                kind,
                reason: reason.to_string(),
                table: String::new(),
            }
        };
        let epoch = ann.epoch;
        // A greater state may have arrived meanwhile: then it wins, as it would anywhere.
        inner.adopt(ann, None);
        Ok(epoch)
    }

    /// The topology state in force here.
    pub fn topology_state(&self) -> TopologyState {
        let st = self.inner.switch.st.lock();
        TopologyState {
            epoch: st.current.epoch,
            proposer: st.current.proposer.clone(),
            kind: st.current.kind,
            settling: st.settling.is_some(),
        }
    }

    /// The switches applied here, oldest first (the last
    /// [`SwitchSettings::history`]).
    pub fn switch_history(&self) -> Vec<SwitchRecord> {
        self.inner
            .switch
            .st
            .lock()
            .history
            .iter()
            .cloned()
            .collect()
    }

    /// The peers this node holds a live link to (its outgoing connections; the overlay's
    /// neighbours plus transient direct connections and links kept while a switch
    /// settles).
    pub fn connected_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .links
            .up_peers()
            .into_iter()
            .map(|l| l.peer.clone())
            .collect();
        v.sort();
        v
    }
}

impl Inner {
    /// Whether a switch is settling (old links kept: make before break).
    pub(super) fn switch_settling(&self) -> bool {
        self.switch.st.lock().settling.is_some()
    }

    /// Whether the link to `p` is one the topology in force does without: not a
    /// neighbour, and — for a topology with a full view — not a peer it sends to directly
    /// (a client-server server sends to its clients over its own link to them although it
    /// does not dial them). Under a partial view (HyParView) every link outside the active
    /// view is transient.
    fn unneeded(&self, p: &str) -> bool {
        let t = self.topology.lock();
        !t.wanted().contains(p) && (t.kind().is_partial() || t.next_hop(p).as_deref() != Some(p))
    }

    /// The encoded state in force (the first message on a new link, after the view).
    pub(super) fn switch_state_wire(&self) -> bytes::Bytes {
        let ann = self.switch.st.lock().current.clone();
        self.encode_announce(&ann)
    }

    /// Applies `ann` if it is greater than the state in force; passes it on to every
    /// live link except `from`. Returns whether it was applied.
    fn adopt(self: &Arc<Self>, ann: Announce, from: Option<&str>) -> bool {
        let local = from.is_none();
        let wanted = {
            let mut st = self.switch.st.lock();
            if ann.key() <= st.current.key() {
                return false;
            }
            let old = st.current.kind;
            if ann.epoch == st.current.epoch {
                metrics::counter!("foundation_node_topology_superseded_total").increment(1);
            }
            // Rebuild under the state lock, so two adoptions racing apply in order.
            let members: Vec<Member>;
            let dead: Vec<String>;
            {
                let view = self.view.lock();
                members = view
                    .digest()
                    .iter()
                    .filter(|u| u.status != Status::Left)
                    .map(|u| Member::new(u.name.clone(), u.role))
                    .collect();
                dead = view
                    .members()
                    .filter(|u| u.status == Status::Dead)
                    .map(|u| u.name.clone())
                    .collect();
            }
            let mut t =
                Topology::with_tick(ann.kind, &self.name, &members, self.settings.heartbeat);
            for d in dead {
                t.update(Change::Down(d));
            }
            let wanted = t.wanted();
            *self.topology.lock() = t;
            let now = Instant::now();
            let record = SwitchRecord {
                epoch: ann.epoch,
                proposer: ann.proposer.clone(),
                from: old,
                to: ann.kind,
                reason: ann.reason.clone(),
                at: now.saturating_duration_since(self.switch.started),
                local,
            };
            tracing::info!(
                node = %self.name,
                epoch = ann.epoch,
                proposer = %ann.proposer,
                from = ?old,
                to = ?ann.kind,
                reason = %ann.reason,
                "topology switch applied"
            );
            if st.history.len() >= self.settings.switch.history.max(1) {
                st.history.pop_front();
            }
            st.history.push_back(record);
            st.last_switch = Some(now);
            st.settling = Some(Settling {
                deadline: now + self.settings.switch.grace,
                wanted: BTreeSet::new(),
                stable: 0,
            });
            st.current = ann.clone();
            set_kind_gauge(Some(old), ann.kind);
            metrics::gauge!("foundation_node_topology_epoch").set(ann.epoch as f64);
            metrics::counter!(
                "foundation_node_topology_switches_total",
                "to" => kind_label(ann.kind),
                "origin" => if local { "local" } else { "remote" }
            )
            .increment(1);
            wanted
        };
        // Make: links to the new neighbours (the old ones stay until settled).
        for p in &wanted {
            self.ensure_link(p);
        }
        // Pass it on.
        let bytes = self.encode_announce(&ann);
        for l in self.links.up_peers() {
            if Some(l.peer.as_str()) == from {
                continue;
            }
            if l.try_send(COORDINATION, KEY, bytes.clone()).is_err() {
                self.meters.dropped("switch_failed").increment(1);
            }
        }
        true
    }

    /// A switch message from `peer`.
    pub(super) fn on_switch(self: &Arc<Self>, peer: &str, payload: &[u8]) {
        let Ok(mut ann) = rmp_serde::from_slice::<Announce>(payload) else {
            self.meters.dropped("undecodable").increment(1);
            return;
        };
        let theirs = std::mem::take(&mut ann.table);
        let mine = self.switch.st.lock().current.clone();
        if self.check_table(peer, &theirs) {
            // Newly refused: tell it our table, so it refuses us too even if it never
            // links back (it answers once, when it newly refuses us).
            self.send_state(peer, &mine);
        }
        match ann.key().cmp(&mine.key()) {
            std::cmp::Ordering::Greater => {
                self.adopt(ann, Some(peer));
            }
            // The peer is behind: tell it.
            std::cmp::Ordering::Less => self.send_state(peer, &mine),
            std::cmp::Ordering::Equal => {}
        }
    }

    fn send_state(&self, peer: &str, ann: &Announce) {
        self.ensure_link(peer);
        let sent = self
            .links
            .get(peer)
            .map(|l| l.send_or_park(COORDINATION, KEY, self.encode_announce(ann)));
        if !matches!(sent, Some(Ok(()))) {
            self.meters.dropped("switch_failed").increment(1);
        }
    }

    /// Once per heartbeat round: anti-entropy, make-before-break completion, links for
    /// unacknowledged messages, and the failure detector for retired peers.
    pub(super) fn switch_round(self: &Arc<Self>, round: u64) {
        let every = self.settings.switch.anti_entropy_every;
        if every > 0 && round.is_multiple_of(every) {
            let up = self.links.up_peers();
            if let Some(l) = up.choose(&mut rand::rng()) {
                let bytes = self.switch_state_wire();
                if l.try_send(COORDINATION, KEY, bytes).is_err() {
                    self.meters.dropped("switch_failed").increment(1);
                }
            }
        }
        // Unacknowledged messages are retransmitted on the link to their next hop: make
        // sure there is one (a direct hop the topology does not keep a link to).
        let pending: Vec<String> = self
            .acked
            .out
            .lock()
            .iter()
            .filter(|(_, o)| !o.unacked.is_empty())
            .map(|(to, _)| to.clone())
            .collect();
        for to in &pending {
            if let Ok(hop) = self.hop(to) {
                if self.links.get(&hop).is_none_or(|l| l.current().is_none()) {
                    self.ensure_link(&hop);
                }
            }
        }
        self.settle(&pending);
        self.watch_retired(&pending);
    }

    /// Retired peers are not watched while we hold no link to them; a link to one seen
    /// again is torn down again once idle for `grace` (no application traffic) unless the
    /// topology wants it or acknowledged messages to it wait.
    fn watch_retired(&self, unacked: &[String]) {
        let retired: Vec<(String, Option<Instant>)> = {
            let st = self.switch.st.lock();
            if st.retired.is_empty() || st.settling.is_some() {
                return;
            }
            st.retired.iter().map(|(p, t)| (p.clone(), *t)).collect()
        };
        let now = Instant::now();
        for (p, seen) in retired {
            if !self.unneeded(&p) {
                self.switch.st.lock().retired.remove(&p);
                continue;
            }
            if self.links.get(&p).is_none() {
                self.detector.lock().remove(&p);
                if seen.is_some() {
                    self.switch.st.lock().retired.insert(p, None);
                }
                continue;
            }
            match seen {
                None => {
                    self.switch.st.lock().retired.insert(p, Some(now));
                }
                // Carried application traffic this round or the last (a transient
                // direct link in use): its grace starts again (D430).
                Some(_)
                    if self
                        .links
                        .get(&p)
                        .is_some_and(|l| self.links.idle_rounds(&l) <= 1) =>
                {
                    self.switch.st.lock().retired.insert(p, Some(now));
                }
                Some(t) if now - t >= self.settings.switch.grace && !unacked.contains(&p) => {
                    self.retire(&p);
                }
                Some(_) => {}
            }
        }
    }

    /// Completes make before break: once the new neighbours are all connected and the
    /// same for two rounds (or the grace deadline passed), tears down the links the new
    /// topology does without; a link to a peer with unacknowledged messages is left to
    /// `watch_retired`, which tears it down once they are acknowledged.
    fn settle(self: &Arc<Self>, unacked: &[String]) {
        let now = Instant::now();
        let wanted = self.topology.lock().wanted();
        let alive_others = self
            .topology
            .lock()
            .service()
            .alive()
            .len()
            .saturating_sub(1);
        {
            let mut st = self.switch.st.lock();
            let Some(s) = st.settling.as_mut() else {
                return;
            };
            let all_up = wanted
                .iter()
                .all(|p| self.links.get(p).is_some_and(|l| l.current().is_some()));
            if all_up && wanted == s.wanted {
                s.stable += 1;
            } else {
                s.stable = 0;
                s.wanted = wanted.clone();
            }
            let formed = !wanted.is_empty() || alive_others == 0;
            if !(s.stable >= 2 && formed) && now < s.deadline {
                return;
            }
        }
        let linked: Vec<String> = self
            .view
            .lock()
            .members()
            .map(|u| u.name.clone())
            .filter(|p| self.links.get(p).is_some())
            .collect();
        for p in linked {
            if wanted.contains(&p) || !self.unneeded(&p) {
                continue;
            }
            if unacked.contains(&p) {
                // Torn down later (`watch_retired`), once its messages are acknowledged.
                self.switch.st.lock().retired.insert(p, Some(now));
                continue;
            }
            self.retire(&p);
        }
        self.switch.st.lock().settling = None;
    }

    /// Tears down the link to `p`, draining what is queued on it within `drain_timeout`.
    fn retire(&self, p: &str) {
        let channels = self.links.retire(p);
        self.detector.lock().remove(&p.to_string());
        self.switch.st.lock().retired.insert(p.to_string(), None);
        metrics::counter!("foundation_node_links_retired_total").increment(1);
        metrics::counter!("foundation_node_links_closed_total", "reason" => "switch").increment(1);
        let Some(mut c) = channels else { return };
        let until = Instant::now() + self.settings.switch.drain_timeout;
        let cancel = self.cancel.clone();
        let mut drains = self.switch.drains.lock();
        while drains.try_join_next().is_some() {}
        drains.spawn(async move {
            // In-flight sends may still hold the channels for a moment.
            let owned = loop {
                match Arc::try_unwrap(c) {
                    Ok(owned) => break Some(owned),
                    Err(back) => c = back,
                }
                if Instant::now() >= until || cancel.is_cancelled() {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            if let Some(owned) = owned {
                if tokio::time::timeout_at(until, owned.shutdown()).await.is_err() {
                    metrics::counter!("foundation_node_dropped_total", "reason" => "retire_drain_timeout").increment(1);
                }
            }
        });
    }

    /// The next hop to a member the topology does not reach: the member itself, over a
    /// transient direct connection, if it is a member not removed (counted).
    pub(super) fn direct_hop(&self, to: &str) -> Result<String> {
        let known = self.view.lock().get(to).is_some_and(|u| {
            matches!(u.status, Status::Alive | Status::Suspect) && !u.addr.is_empty()
        });
        if known {
            metrics::counter!("foundation_node_direct_hops_total").increment(1);
            Ok(to.to_string())
        } else {
            Err(Error::UnknownNode {
                node: to.to_string(),
            })
        }
    }
}

impl Inner {
    /// `ann` on the wire, stamped with this node's channel-table summary.
    fn encode_announce(&self, ann: &Announce) -> bytes::Bytes {
        let ann = Announce {
            table: self.table_summary(),
            ..ann.clone()
        };
        let payload = rmp_serde::to_vec(&ann).expect("announcements always encode");
        encode(&Wire::Switch {
            payload: payload.into(),
        })
    }
}
