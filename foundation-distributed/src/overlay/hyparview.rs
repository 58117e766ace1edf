//! HyParView (Leitão, Pereira, Rodrigues, DSN 2007): a partial-view membership protocol.
//!
//! Each node keeps a small **active view** (the peers it holds connections to, symmetric,
//! used for broadcast) and a larger **passive view** (contacts kept warm by periodic
//! shuffles, used to replace failed active peers). The protocol:
//!
//! * **Join**: a new node sends `Join` to a contact. The contact adds it to its active view
//!   and sends `ForwardJoin(new, ARWL)` to its other active peers. Each `ForwardJoin` takes
//!   a random walk: at `ttl == PRWL` the new node enters the passive view of the node on the
//!   walk; when `ttl == 0` (or that node has a single active peer) it enters the active view
//!   there, and the walk stops.
//! * **Neighbor**: a node missing active peers asks a passive peer with `Neighbor`; *high*
//!   priority (sent when the active view is empty) must be accepted, *low* priority is
//!   accepted only when the receiver has room. A rejected or failed candidate is replaced
//!   by another; failed ones leave the passive view.
//! * **Disconnect**: a node that evicts an active peer to make room tells it, and the
//!   evicted peer moves the evicter to its passive view.
//! * **Shuffle**: periodically a node sends itself plus `ka` active and `kp` passive peers
//!   on a random walk of `shuffle_walk` hops; the node where the walk ends answers with as
//!   many of its passive peers, and both merge what they got into their passive views,
//!   evicting first the entries they sent.
//! * **Symmetry check** (ours): with each shuffle, a node sends a low-priority `Neighbor`
//!   to each active peer; a peer that no longer holds the link and has no room refuses,
//!   and the one-sided link is dropped; a peer that does not answer within
//!   `neighbor_timeout` counts as failed. Needed where the transport may reorder messages
//!   or a failure goes unreported.
//! * **Escalation** (ours): a node with fewer than half its active slots filled whose
//!   low-priority requests were refused since the last repair tick sends one high-priority
//!   request on the next tick, so a small group surrounded by full nodes is not left cut
//!   off.
//!
//! The state machine does no I/O and reads no clock or randomness of its own: the driver
//! passes each [`HvInput`] with the current time and a random source, and carries out the
//! [`HvOutput`]s (send, set a timer, report a neighbour up or down). Timers carry a token so
//! a stale one is ignored. [`Sim`](super::sim::Sim) drives it on virtual time; a node
//! drives it through a [`PeerService`](crate::topology::PeerService) adapter.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// What a peer identifier must offer: cheap to clone, ordered (for deterministic
/// iteration), hashable, printable.
pub trait PeerId: Clone + Ord + Hash + Debug + Send + Sync + 'static {}
impl<T: Clone + Ord + Hash + Debug + Send + Sync + 'static> PeerId for T {}

/// HyParView parameters. Defaults are the paper's (section 5, 10,000 nodes) where it gives
/// one; timer values are ours (the paper counts in simulation cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct HyParViewConfig {
    /// Active view capacity (paper: 5, i.e. log10(n) + c with c = 1 at 10,000 nodes).
    pub active_capacity: usize,
    /// Passive view capacity (paper: 30, i.e. k · (log10(n) + c) with k = 6).
    pub passive_capacity: usize,
    /// Active random walk length, ARWL (paper: 6): hops a `ForwardJoin` walks.
    pub active_walk: u8,
    /// Passive random walk length, PRWL (paper: 3): the hop at which the walk's node adds
    /// the joiner to its passive view.
    pub passive_walk: u8,
    /// Hops a `Shuffle` walks before it is answered (paper: the ARWL, 6).
    pub shuffle_walk: u8,
    /// Active peers included in a shuffle, ka (paper: 3).
    pub shuffle_active: usize,
    /// Passive peers included in a shuffle, kp (paper: 4).
    pub shuffle_passive: usize,
    /// Period of the shuffle.
    pub shuffle_interval: Duration,
    /// Period of the repair timer, which retries filling an active view that is short of
    /// peers (candidates that rejected us are tried again only after it fires).
    pub repair_interval: Duration,
    /// How long a `Neighbor` request may stay unanswered before the candidate counts as
    /// failed.
    pub neighbor_timeout: Duration,
    /// Repair ticks an active view may stay short of its capacity before the node
    /// escalates anyway (one high-priority request, or a rejoin when no candidate is
    /// left), even with half its slots or more filled: a small group whose members hold
    /// one another but whose every other candidate is full would otherwise stay cut off
    /// for good. 0 disables (escalation only below half).
    pub escalate_after: u32,
}

impl Default for HyParViewConfig {
    fn default() -> Self {
        HyParViewConfig {
            active_capacity: 5,
            passive_capacity: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_walk: 6,
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_interval: Duration::from_secs(10),
            repair_interval: Duration::from_secs(1),
            neighbor_timeout: Duration::from_secs(3),
            escalate_after: 30,
        }
    }
}

impl HyParViewConfig {
    /// Checks the parameters; the error names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if self.active_capacity == 0 {
            return Err("active_capacity must be at least 1".into());
        }
        if self.passive_walk > self.active_walk {
            return Err(format!(
                "passive_walk ({}) must not exceed active_walk ({})",
                self.passive_walk, self.active_walk
            ));
        }
        if self.shuffle_interval.is_zero() || self.repair_interval.is_zero() {
            return Err("shuffle_interval and repair_interval must be non-zero".into());
        }
        Ok(())
    }
}

/// A HyParView protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HvMessage<P> {
    /// The sender asks to join through the receiver.
    Join,
    /// `joiner` is new; walk on, adding it to views along the way.
    ForwardJoin {
        /// The node that joined.
        joiner: P,
        /// Hops left.
        ttl: u8,
    },
    /// The sender asks to become an active peer of the receiver.
    Neighbor {
        /// High priority (the sender has no active peer) must be accepted.
        high: bool,
    },
    /// Answer to `Neighbor`.
    NeighborReply {
        /// Whether the receiver is now an active peer of the sender.
        accepted: bool,
    },
    /// The sender removed the receiver from its active view.
    Disconnect {
        /// The sender stays up (the receiver keeps it as a passive peer); `false` when it
        /// leaves the overlay.
        alive: bool,
    },
    /// A shuffle on its random walk.
    Shuffle {
        /// The node that started it (and gets the reply).
        origin: P,
        /// The origin and a sample of its views.
        nodes: Vec<P>,
        /// Hops left.
        ttl: u8,
    },
    /// The answer to a shuffle: a sample of the answering node's passive view.
    ShuffleReply {
        /// The sample.
        nodes: Vec<P>,
    },
}

/// A HyParView timer. Tokens make stale timers harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvTimer<P> {
    /// Periodic shuffle.
    Shuffle,
    /// Periodic repair of a short active view.
    Repair,
    /// A `Neighbor` request to this peer, sent with this token, timed out.
    NeighborTimeout(P, u64),
}

/// An input to [`HyParView::handle`].
#[derive(Debug, Clone)]
pub enum HvInput<P> {
    /// Join the overlay through `contact`.
    Join(P),
    /// A message arrived from a peer.
    Message {
        /// The sender.
        from: P,
        /// The message.
        msg: HvMessage<P>,
    },
    /// A timer set earlier expired.
    Timer(HvTimer<P>),
    /// The connection to this peer failed or the failure detector reports it down.
    PeerFailed(P),
    /// Leave the overlay (tells the active peers).
    Leave,
}

/// An output of [`HyParView::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HvOutput<P> {
    /// Send `msg` to `to`.
    Send {
        /// The receiver.
        to: P,
        /// The message.
        msg: HvMessage<P>,
    },
    /// Deliver `timer` back after `after`.
    SetTimer {
        /// Delay.
        after: Duration,
        /// The timer.
        timer: HvTimer<P>,
    },
    /// `P` entered the active view (a connection to hold; a broadcast neighbour).
    NeighborUp(P),
    /// `P` left the active view.
    NeighborDown(P),
    /// The node is cut off — both views empty, or fewer than half the active slots filled
    /// and no passive candidate left — and its contact is gone or already a neighbour: the
    /// driver should feed [`HvInput::Join`] with a live member it knows of (a seed, the
    /// node's membership). Emitted on each repair tick while it lasts.
    Isolated,
}

/// Counters for metrics: monotonic totals since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvStats {
    /// `Join` messages handled as the contact.
    pub joins: u64,
    /// `ForwardJoin` messages handled.
    pub forward_joins: u64,
    /// `Neighbor` requests sent.
    pub neighbor_requests: u64,
    /// `Neighbor` requests this node accepted.
    pub neighbor_accepted: u64,
    /// `Neighbor` requests this node rejected.
    pub neighbor_rejected: u64,
    /// Shuffles started.
    pub shuffles: u64,
    /// Active peers evicted to make room (`Disconnect` sent).
    pub evictions: u64,
    /// Peers reported failed.
    pub failures: u64,
    /// Peers promoted from the passive view to the active view after a failure or eviction.
    pub promotions: u64,
    /// High-priority requests sent by a starved node (see the module docs).
    pub escalations: u64,
    /// Active peers dropped because they did not answer a symmetry check.
    pub unanswered_checks: u64,
}

/// The HyParView state machine of one node. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HyParView<P> {
    me: P,
    config: HyParViewConfig,
    active: Vec<P>,
    passive: Vec<P>,
    /// Outstanding `Neighbor` requests: (peer, token).
    pending: Vec<(P, u64)>,
    /// Outstanding symmetry checks of active peers: (peer, token).
    checks: Vec<(P, u64)>,
    /// Candidates that rejected us since the last repair timer.
    rejected: Vec<P>,
    /// Consecutive repair ticks with the active view short of its capacity.
    short_ticks: u32,
    /// What we sent in our last shuffle (evicted first when the reply arrives).
    last_shuffle: Vec<P>,
    /// The contact we joined through, retried when both views run empty.
    contact: Option<P>,
    next_token: u64,
    started: bool,
    left: bool,
    stats: HvStats,
}

impl<P: PeerId> HyParView<P> {
    /// A node `me` that has not joined yet. Call [`handle`](Self::handle) with
    /// [`HvInput::Join`] (or wait to be contacted).
    pub fn new(me: P, config: HyParViewConfig) -> Self {
        HyParView {
            me,
            config,
            active: Vec::new(),
            passive: Vec::new(),
            pending: Vec::new(),
            checks: Vec::new(),
            rejected: Vec::new(),
            short_ticks: 0,
            last_shuffle: Vec::new(),
            contact: None,
            next_token: 0,
            started: false,
            left: false,
            stats: HvStats::default(),
        }
    }

    /// This node.
    pub fn me(&self) -> &P {
        &self.me
    }

    /// The parameters.
    pub fn config(&self) -> &HyParViewConfig {
        &self.config
    }

    /// The active view (connected peers, broadcast neighbours).
    pub fn active(&self) -> &[P] {
        &self.active
    }

    /// The passive view.
    pub fn passive(&self) -> &[P] {
        &self.passive
    }

    /// The counters.
    pub fn stats(&self) -> HvStats {
        self.stats
    }

    /// Whether `peer` is in the active view.
    pub fn is_active(&self, peer: &P) -> bool {
        self.active.contains(peer)
    }

    /// Whether a `Neighbor` request to `peer` is outstanding.
    pub fn is_pending<Q>(&self, peer: &Q) -> bool
    where
        P: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.pending.iter().any(|(p, _)| p.borrow() == peer)
    }

    /// Feeds one input; appends what to do to `out`.
    pub fn handle(&mut self, input: HvInput<P>, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        if self.left {
            return;
        }
        if !self.started {
            self.started = true;
            // Spread the first shuffles so that nodes started together do not shuffle in
            // lock step.
            let first = self
                .config
                .shuffle_interval
                .mul_f64(0.5 + rng.random::<f64>() / 2.0);
            out.push(HvOutput::SetTimer {
                after: first,
                timer: HvTimer::Shuffle,
            });
            out.push(HvOutput::SetTimer {
                after: self.config.repair_interval,
                timer: HvTimer::Repair,
            });
        }
        match input {
            HvInput::Join(contact) => {
                if contact != self.me {
                    self.contact = Some(contact.clone());
                    out.push(HvOutput::Send {
                        to: contact,
                        msg: HvMessage::Join,
                    });
                }
            }
            HvInput::Message { from, msg } => {
                if from != self.me {
                    self.on_message(from, msg, rng, out);
                }
            }
            HvInput::Timer(t) => self.on_timer(t, rng, out),
            HvInput::PeerFailed(p) => self.on_failed(p, rng, out),
            HvInput::Leave => {
                for p in std::mem::take(&mut self.active) {
                    out.push(HvOutput::Send {
                        to: p.clone(),
                        msg: HvMessage::Disconnect { alive: false },
                    });
                    out.push(HvOutput::NeighborDown(p));
                }
                self.passive.clear();
                self.pending.clear();
                self.left = true;
            }
        }
    }

    fn on_message(
        &mut self,
        from: P,
        msg: HvMessage<P>,
        rng: &mut dyn RngCore,
        out: &mut Vec<HvOutput<P>>,
    ) {
        match msg {
            HvMessage::Join => {
                self.stats.joins += 1;
                self.add_active(from.clone(), true, rng, out);
                for p in self.active.iter().filter(|p| **p != from) {
                    out.push(HvOutput::Send {
                        to: p.clone(),
                        msg: HvMessage::ForwardJoin {
                            joiner: from.clone(),
                            ttl: self.config.active_walk,
                        },
                    });
                }
            }
            HvMessage::ForwardJoin { joiner, ttl } => {
                self.stats.forward_joins += 1;
                if joiner == self.me {
                    return;
                }
                if ttl == 0 || self.active.len() <= 1 {
                    self.add_active(joiner, true, rng, out);
                    return;
                }
                if ttl == self.config.passive_walk {
                    self.add_passive(joiner.clone(), &[], rng);
                }
                match pick(&self.active, rng, |p| *p != from && *p != joiner) {
                    Some(next) => out.push(HvOutput::Send {
                        to: next,
                        msg: HvMessage::ForwardJoin {
                            joiner,
                            ttl: ttl - 1,
                        },
                    }),
                    None => self.add_active(joiner, true, rng, out),
                }
            }
            HvMessage::Neighbor { high } => {
                let room = self.active.len() < self.config.active_capacity;
                if self.active.contains(&from) || high || room {
                    self.stats.neighbor_accepted += 1;
                    // Adding answers with an accepting `NeighborReply`.
                    self.add_active_reply(from, rng, out);
                } else {
                    self.stats.neighbor_rejected += 1;
                    out.push(HvOutput::Send {
                        to: from.clone(),
                        msg: HvMessage::NeighborReply { accepted: false },
                    });
                    self.add_passive(from, &[], rng);
                }
            }
            HvMessage::NeighborReply { accepted } => {
                self.checks.retain(|(p, _)| *p != from);
                let was_pending = self.take_pending(&from);
                if accepted {
                    if was_pending || self.active.contains(&from) {
                        if !self.active.contains(&from) {
                            self.stats.promotions += 1;
                        }
                        self.add_active_silent(from, rng, out);
                    } else {
                        // An answer we no longer want (the request timed out meanwhile):
                        // undo the link on the other side.
                        out.push(HvOutput::Send {
                            to: from.clone(),
                            msg: HvMessage::Disconnect { alive: true },
                        });
                        self.add_passive(from, &[], rng);
                    }
                } else {
                    if let Some(i) = self.active.iter().position(|p| *p == from) {
                        // A symmetry check refused: the link was one-sided.
                        self.active.swap_remove(i);
                        out.push(HvOutput::NeighborDown(from.clone()));
                        self.add_passive(from.clone(), &[], rng);
                    }
                    if !self.rejected.contains(&from) {
                        self.rejected.push(from);
                    }
                    // Try the next candidate at once only when short of half the slots;
                    // otherwise the repair tick does (each request may cost the driver a
                    // new connection).
                    if self.active.len() * 2 < self.config.active_capacity {
                        self.fill(rng, out);
                    }
                }
            }
            HvMessage::Disconnect { alive } => {
                self.take_pending(&from);
                if let Some(i) = self.active.iter().position(|p| *p == from) {
                    self.active.swap_remove(i);
                    out.push(HvOutput::NeighborDown(from.clone()));
                }
                if alive {
                    self.add_passive(from, &[], rng);
                } else {
                    self.passive.retain(|p| *p != from);
                }
                self.fill(rng, out);
            }
            HvMessage::Shuffle { origin, nodes, ttl } => {
                if origin == self.me {
                    return;
                }
                let ttl = ttl.saturating_sub(1);
                if ttl > 0 && self.active.len() > 1 {
                    if let Some(next) = pick(&self.active, rng, |p| *p != from && *p != origin) {
                        out.push(HvOutput::Send {
                            to: next,
                            msg: HvMessage::Shuffle { origin, nodes, ttl },
                        });
                        return;
                    }
                }
                let reply = sample(&self.passive, nodes.len(), rng, |p| *p != origin);
                out.push(HvOutput::Send {
                    to: origin,
                    msg: HvMessage::ShuffleReply {
                        nodes: reply.clone(),
                    },
                });
                for n in nodes {
                    self.add_passive(n, &reply, rng);
                }
            }
            HvMessage::ShuffleReply { nodes } => {
                let sent = std::mem::take(&mut self.last_shuffle);
                for n in nodes {
                    self.add_passive(n, &sent, rng);
                }
            }
        }
    }

    fn on_timer(&mut self, t: HvTimer<P>, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        match t {
            HvTimer::Shuffle => {
                out.push(HvOutput::SetTimer {
                    after: self.config.shuffle_interval,
                    timer: HvTimer::Shuffle,
                });
                // Symmetry check: links are meant to be two-sided, but a transport that
                // reorders (parallel connections) can leave one side holding a link the
                // other dropped. A low-priority `Neighbor` to each active peer is accepted
                // where the link stands (or there is room) and refused otherwise, which
                // removes the one-sided link here.
                for p in self.active.clone() {
                    if self.checks.iter().any(|(x, _)| *x == p) {
                        continue;
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    self.checks.push((p.clone(), token));
                    out.push(HvOutput::Send {
                        to: p.clone(),
                        msg: HvMessage::Neighbor { high: false },
                    });
                    out.push(HvOutput::SetTimer {
                        after: self.config.neighbor_timeout,
                        timer: HvTimer::NeighborTimeout(p, token),
                    });
                }
                let Some(to) = pick(&self.active, rng, |_| true) else {
                    return;
                };
                self.stats.shuffles += 1;
                let mut nodes = vec![self.me.clone()];
                nodes.extend(sample(&self.active, self.config.shuffle_active, rng, |p| {
                    *p != to
                }));
                nodes.extend(sample(
                    &self.passive,
                    self.config.shuffle_passive,
                    rng,
                    |_| true,
                ));
                self.last_shuffle = nodes.clone();
                out.push(HvOutput::Send {
                    to,
                    msg: HvMessage::Shuffle {
                        origin: self.me.clone(),
                        nodes,
                        ttl: self.config.shuffle_walk,
                    },
                });
            }
            HvTimer::Repair => {
                out.push(HvOutput::SetTimer {
                    after: self.config.repair_interval,
                    timer: HvTimer::Repair,
                });
                // Starved (fewer than half the active slots) and refused since the last
                // tick: ask one refusing candidate with high priority. Low-priority
                // requests are refused by full nodes, so without this a small group whose
                // neighbours are all full would stay cut off.
                let short = self.active.len() < self.config.active_capacity;
                self.short_ticks = if short { self.short_ticks + 1 } else { 0 };
                let persistent = self.config.escalate_after > 0
                    && self.short_ticks >= self.config.escalate_after;
                let starved = !self.active.is_empty()
                    && (self.active.len() * 2 < self.config.active_capacity || persistent);
                if persistent {
                    self.short_ticks = 0;
                }
                let needy = self.active.len() * 2 < self.config.active_capacity || persistent;
                if starved {
                    let passive = &self.passive;
                    let pending = &self.pending;
                    if let Some(c) = pick(&self.rejected, rng, |p| {
                        passive.contains(p) && !pending.iter().any(|(x, _)| x == p)
                    }) {
                        let token = self.next_token;
                        self.next_token += 1;
                        self.stats.escalations += 1;
                        self.stats.neighbor_requests += 1;
                        self.pending.push((c.clone(), token));
                        out.push(HvOutput::Send {
                            to: c.clone(),
                            msg: HvMessage::Neighbor { high: true },
                        });
                        out.push(HvOutput::SetTimer {
                            after: self.config.neighbor_timeout,
                            timer: HvTimer::NeighborTimeout(c, token),
                        });
                    }
                }
                self.rejected.clear();
                if (self.active.is_empty() || starved)
                    && self.passive.is_empty()
                    && self.pending.is_empty()
                {
                    // Isolated, or starved with no candidate left (a small group cut off
                    // from the rest): join again through the contact, or ask the driver
                    // for one.
                    // The contact is tried once: it may have failed without this node
                    // hearing of it (a node without neighbours hears nothing), so the next
                    // attempt asks the driver for another member.
                    match self.contact.take() {
                        Some(c) if !self.active.contains(&c) => out.push(HvOutput::Send {
                            to: c,
                            msg: HvMessage::Join,
                        }),
                        _ => out.push(HvOutput::Isolated),
                    }
                }
                // A view at half its capacity or more is topped up when a neighbour fails
                // (as in the paper) and when a shortfall lasts (above); retrying every tick
                // would cost a new connection per tick per short node.
                if needy {
                    self.fill(rng, out);
                }
            }
            HvTimer::NeighborTimeout(peer, token) => {
                if let Some(i) = self
                    .pending
                    .iter()
                    .position(|(p, t)| *p == peer && *t == token)
                {
                    self.pending.swap_remove(i);
                    self.passive.retain(|p| *p != peer);
                    self.fill(rng, out);
                } else if let Some(i) = self
                    .checks
                    .iter()
                    .position(|(p, t)| *p == peer && *t == token)
                {
                    // An active peer that does not answer is treated as failed.
                    self.checks.swap_remove(i);
                    if self.active.contains(&peer) {
                        self.stats.unanswered_checks += 1;
                        self.on_failed(peer, rng, out);
                    }
                }
            }
        }
    }

    fn on_failed(&mut self, p: P, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        self.stats.failures += 1;
        if self.contact.as_ref() == Some(&p) {
            self.contact = None;
        }
        self.take_pending(&p);
        self.checks.retain(|(x, _)| *x != p);
        self.passive.retain(|x| *x != p);
        self.rejected.retain(|x| *x != p);
        if let Some(i) = self.active.iter().position(|x| *x == p) {
            self.active.swap_remove(i);
            out.push(HvOutput::NeighborDown(p));
        }
        self.fill(rng, out);
    }

    /// Sends `Neighbor` requests to passive peers until active + pending reaches the
    /// capacity or no untried candidate is left.
    fn fill(&mut self, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        while self.active.len() + self.pending.len() < self.config.active_capacity {
            let pending = &self.pending;
            let rejected = &self.rejected;
            let Some(candidate) = pick(&self.passive, rng, |p| {
                !pending.iter().any(|(x, _)| x == p) && !rejected.contains(p)
            }) else {
                return;
            };
            let token = self.next_token;
            self.next_token += 1;
            self.stats.neighbor_requests += 1;
            self.pending.push((candidate.clone(), token));
            out.push(HvOutput::Send {
                to: candidate.clone(),
                msg: HvMessage::Neighbor {
                    high: self.active.is_empty(),
                },
            });
            out.push(HvOutput::SetTimer {
                after: self.config.neighbor_timeout,
                timer: HvTimer::NeighborTimeout(candidate, token),
            });
        }
    }

    fn take_pending(&mut self, p: &P) -> bool {
        match self.pending.iter().position(|(x, _)| x == p) {
            Some(i) => {
                self.pending.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Makes room (evicting a random active peer) and adds `p`; with `tell`, sends it a
    /// high-priority `Neighbor` so it adds us back.
    fn add_active(&mut self, p: P, tell: bool, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        if p == self.me || self.active.contains(&p) {
            return;
        }
        self.insert_active(p.clone(), rng, out);
        if tell {
            out.push(HvOutput::Send {
                to: p,
                msg: HvMessage::Neighbor { high: true },
            });
        }
    }

    fn add_active_reply(&mut self, p: P, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        if !self.active.contains(&p) {
            // A pending request of our own to the same peer is answered by this link.
            self.take_pending(&p);
            self.insert_active(p.clone(), rng, out);
        }
        out.push(HvOutput::Send {
            to: p,
            msg: HvMessage::NeighborReply { accepted: true },
        });
    }

    fn add_active_silent(&mut self, p: P, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        if p != self.me && !self.active.contains(&p) {
            self.insert_active(p, rng, out);
        }
    }

    fn insert_active(&mut self, p: P, rng: &mut dyn RngCore, out: &mut Vec<HvOutput<P>>) {
        self.passive.retain(|x| *x != p);
        while self.active.len() >= self.config.active_capacity {
            let i = rng.random_range(0..self.active.len());
            let dropped = self.active.swap_remove(i);
            self.stats.evictions += 1;
            out.push(HvOutput::Send {
                to: dropped.clone(),
                msg: HvMessage::Disconnect { alive: true },
            });
            out.push(HvOutput::NeighborDown(dropped.clone()));
            self.add_passive(dropped, &[], rng);
        }
        self.active.push(p.clone());
        out.push(HvOutput::NeighborUp(p));
    }

    /// Adds `p` to the passive view unless it is this node or active; when full, evicts
    /// one of `prefer_evict` if present, a random entry otherwise.
    fn add_passive(&mut self, p: P, prefer_evict: &[P], rng: &mut dyn RngCore) {
        if p == self.me || self.active.contains(&p) || self.passive.contains(&p) {
            return;
        }
        if self.config.passive_capacity == 0 {
            return;
        }
        if self.passive.len() >= self.config.passive_capacity {
            let i = self
                .passive
                .iter()
                .position(|x| prefer_evict.contains(x))
                .unwrap_or_else(|| rng.random_range(0..self.passive.len()));
            self.passive.swap_remove(i);
        }
        self.passive.push(p);
    }
}

/// A random element of `v` satisfying `keep`.
fn pick<P: Clone>(v: &[P], rng: &mut dyn RngCore, keep: impl Fn(&P) -> bool) -> Option<P> {
    let n = v.iter().filter(|p| keep(p)).count();
    if n == 0 {
        return None;
    }
    let k = rng.random_range(0..n);
    v.iter().filter(|p| keep(p)).nth(k).cloned()
}

/// Up to `k` distinct random elements of `v` satisfying `keep`.
fn sample<P: Clone>(v: &[P], k: usize, rng: &mut dyn RngCore, keep: impl Fn(&P) -> bool) -> Vec<P> {
    let mut c: Vec<P> = v.iter().filter(|p| keep(p)).cloned().collect();
    // Partial Fisher-Yates: the first k are a uniform sample.
    let k = k.min(c.len());
    for i in 0..k {
        let j = rng.random_range(i..c.len());
        c.swap(i, j);
    }
    c.truncate(k);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands `hv` message `msg` from `from`.
    fn receive(
        hv: &mut HyParView<u32>,
        from: u32,
        msg: HvMessage<u32>,
        rng: &mut SmallRng,
        out: &mut Vec<HvOutput<u32>>,
    ) {
        hv.handle(HvInput::Message { from, msg }, rng, out);
    }
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn sends(out: &[HvOutput<u32>]) -> Vec<(u32, HvMessage<u32>)> {
        out.iter()
            .filter_map(|o| match o {
                HvOutput::Send { to, msg } => Some((*to, msg.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn contact_adds_the_joiner_and_forwards_the_join_to_its_other_peers() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut hv = HyParView::new(0u32, HyParViewConfig::default());
        let mut out = Vec::new();
        for p in [1, 2, 3] {
            receive(
                &mut hv,
                p,
                HvMessage::Neighbor { high: false },
                &mut rng,
                &mut out,
            );
        }
        out.clear();
        receive(&mut hv, 9, HvMessage::Join, &mut rng, &mut out);
        assert!(hv.is_active(&9));
        let s = sends(&out);
        assert!(s.contains(&(9, HvMessage::Neighbor { high: true })));
        let fj: Vec<u32> = s
            .iter()
            .filter(|(_, m)| matches!(m, HvMessage::ForwardJoin { joiner: 9, ttl: 6 }))
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(fj.len(), 3, "one ForwardJoin per other active peer: {s:?}");
        assert!(out.contains(&HvOutput::NeighborUp(9)));
    }

    #[test]
    fn forward_join_adds_to_passive_at_prwl_and_to_active_at_zero() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut hv = HyParView::new(0u32, HyParViewConfig::default());
        let mut out = Vec::new();
        for p in [1, 2] {
            receive(
                &mut hv,
                p,
                HvMessage::Neighbor { high: false },
                &mut rng,
                &mut out,
            );
        }
        out.clear();
        receive(
            &mut hv,
            1,
            HvMessage::ForwardJoin { joiner: 7, ttl: 3 },
            &mut rng,
            &mut out,
        );
        assert!(hv.passive().contains(&7), "added to passive at ttl == PRWL");
        assert_eq!(
            sends(&out),
            vec![(2, HvMessage::ForwardJoin { joiner: 7, ttl: 2 })],
            "forwarded to an active peer other than the sender"
        );
        out.clear();
        receive(
            &mut hv,
            1,
            HvMessage::ForwardJoin { joiner: 8, ttl: 0 },
            &mut rng,
            &mut out,
        );
        assert!(hv.is_active(&8));
    }

    #[test]
    fn a_full_view_evicts_with_disconnect_and_low_priority_is_rejected() {
        let mut rng = SmallRng::seed_from_u64(3);
        let cfg = HyParViewConfig {
            active_capacity: 2,
            ..HyParViewConfig::default()
        };
        let mut hv = HyParView::new(0u32, cfg);
        let mut out = Vec::new();
        for p in [1, 2] {
            receive(
                &mut hv,
                p,
                HvMessage::Neighbor { high: false },
                &mut rng,
                &mut out,
            );
        }
        out.clear();
        receive(
            &mut hv,
            3,
            HvMessage::Neighbor { high: false },
            &mut rng,
            &mut out,
        );
        assert_eq!(
            sends(&out),
            vec![(3, HvMessage::NeighborReply { accepted: false })]
        );
        assert!(!hv.is_active(&3));
        out.clear();
        receive(
            &mut hv,
            3,
            HvMessage::Neighbor { high: true },
            &mut rng,
            &mut out,
        );
        assert!(hv.is_active(&3), "high priority must be accepted");
        assert_eq!(hv.active().len(), 2);
        let evicted: Vec<u32> = sends(&out)
            .into_iter()
            .filter(|(_, m)| *m == HvMessage::Disconnect { alive: true })
            .map(|(to, _)| to)
            .collect();
        assert_eq!(evicted.len(), 1);
        assert!(
            hv.passive().contains(&evicted[0]),
            "evicted peer kept passive"
        );
        assert_eq!(hv.stats().evictions, 1);
    }

    #[test]
    fn a_failed_active_peer_is_replaced_from_the_passive_view() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut hv = HyParView::new(0u32, HyParViewConfig::default());
        let mut out = Vec::new();
        receive(
            &mut hv,
            1,
            HvMessage::Neighbor { high: false },
            &mut rng,
            &mut out,
        );
        // Passive peers arrive by shuffle reply.
        receive(
            &mut hv,
            1,
            HvMessage::ShuffleReply {
                nodes: vec![5, 6, 7],
            },
            &mut rng,
            &mut out,
        );
        out.clear();
        hv.handle(HvInput::PeerFailed(1), &mut rng, &mut out);
        assert!(out.contains(&HvOutput::NeighborDown(1)));
        let asked: Vec<(u32, HvMessage<u32>)> = sends(&out);
        assert_eq!(asked.len(), 3, "asks every passive peer, active view empty");
        assert!(asked
            .iter()
            .all(|(_, m)| *m == HvMessage::Neighbor { high: true }));
        out.clear();
        receive(
            &mut hv,
            6,
            HvMessage::NeighborReply { accepted: true },
            &mut rng,
            &mut out,
        );
        assert_eq!(hv.active(), &[6]);
        assert_eq!(hv.stats().promotions, 1);
        // A request that times out drops the candidate.
        let token = hv.pending.iter().find(|(p, _)| *p == 5).map(|(_, t)| *t);
        out.clear();
        hv.handle(
            HvInput::Timer(HvTimer::NeighborTimeout(5, token.unwrap())),
            &mut rng,
            &mut out,
        );
        assert!(!hv.passive().contains(&5));
    }

    #[test]
    fn shuffle_walks_then_replies_and_both_sides_merge() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut hv = HyParView::new(0u32, HyParViewConfig::default());
        let mut out = Vec::new();
        receive(
            &mut hv,
            1,
            HvMessage::Neighbor { high: false },
            &mut rng,
            &mut out,
        );
        out.clear();
        // Single active peer: the walk ends here.
        receive(
            &mut hv,
            1,
            HvMessage::Shuffle {
                origin: 20,
                nodes: vec![20, 21, 22],
                ttl: 4,
            },
            &mut rng,
            &mut out,
        );
        assert!(matches!(
            sends(&out).as_slice(),
            [(20, HvMessage::ShuffleReply { .. })]
        ));
        for n in [20, 21, 22] {
            assert!(hv.passive().contains(&n));
        }
        out.clear();
        hv.handle(HvInput::Timer(HvTimer::Shuffle), &mut rng, &mut out);
        let (checks, s): (Vec<_>, Vec<_>) = sends(&out)
            .into_iter()
            .partition(|(_, m)| *m == HvMessage::Neighbor { high: false });
        assert_eq!(checks, vec![(1, HvMessage::Neighbor { high: false })]);
        match s.as_slice() {
            [(
                1,
                HvMessage::Shuffle {
                    origin: 0,
                    nodes,
                    ttl: 6,
                },
            )] => {
                assert_eq!(nodes[0], 0);
                // Itself + the 3 passive peers it has (its one active peer is the target).
                assert_eq!(nodes.len(), 1 + 3);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_refused_symmetry_check_drops_the_one_sided_link() {
        let mut rng = SmallRng::seed_from_u64(6);
        let mut hv = HyParView::new(0u32, HyParViewConfig::default());
        let mut out = Vec::new();
        for p in [1, 2] {
            receive(
                &mut hv,
                p,
                HvMessage::Neighbor { high: false },
                &mut rng,
                &mut out,
            );
        }
        out.clear();
        receive(
            &mut hv,
            2,
            HvMessage::NeighborReply { accepted: false },
            &mut rng,
            &mut out,
        );
        assert_eq!(hv.active(), &[1]);
        assert!(hv.passive().contains(&2));
        assert!(out.contains(&HvOutput::NeighborDown(2)));
    }
}
