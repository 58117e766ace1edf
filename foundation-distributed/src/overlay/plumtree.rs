//! Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007): epidemic broadcast trees.
//!
//! Each node splits its neighbours (the HyParView active view) into **eager** peers, which
//! get every new message in full, and **lazy** peers, which get only its id (`IHave`).
//! All neighbours start eager, so the first broadcast floods; a node that receives a
//! message it already has answers `Prune`, and the sender moves it to lazy. What remains
//! eager is a spanning tree. When a node hears `IHave` for a message that does not arrive
//! in full within `graft_timeout`, it sends `Graft` to the announcer, which re-sends the
//! message and makes the link eager again: the tree repairs itself after failures, the
//! lazy links being the redundancy. With `optimization_threshold`, a node that learns of a
//! message through `IHave` with a hop count that many hops shorter than the eager copy
//! swaps the two links (the paper's tree optimisation).
//!
//! [`Mode::Flood`] turns the pruning off (every neighbour stays eager): eager flooding on
//! the same overlay, the baseline the paper compares with.
//!
//! Like [`hyparview`](super::hyparview), the state machine does no I/O: inputs with the
//! current time in, [`PtOutput`]s out.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::hyparview::PeerId;

type FixedMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
type FixedSet<K> = HashSet<K, foldhash::fast::FixedState>;

/// A broadcast's identity: its origin, the origin's incarnation (so a restarted origin,
/// whose counter starts again, is not taken for its previous run) and the origin's
/// sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId<P> {
    /// The node that published it.
    pub origin: P,
    /// The origin's incarnation (0 where the driver has none, as in the simulator).
    #[serde(default)]
    pub incarnation: u64,
    /// The origin's counter.
    pub seq: u64,
}

/// How payloads spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plumtree: eager tree + lazy ids, prune and graft.
    #[default]
    Plumtree,
    /// Eager flooding: every neighbour gets every payload; no prune, no `IHave`.
    Flood,
}

/// Plumtree parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlumtreeConfig {
    /// Plumtree or the flooding baseline.
    pub mode: Mode,
    /// Wait after the first `IHave` for a missing message before grafting. The paper asks
    /// for a value set from the overlay's diameter and the target recovery latency.
    pub graft_timeout: Duration,
    /// Wait after a `Graft` before grafting the next announcer (paper: about one round
    /// trip to a neighbour, smaller than `graft_timeout`).
    pub graft_retry: Duration,
    /// Swap an eager link for a lazy one when the lazy announcement is this many hops
    /// shorter (paper: 7 in its experiments); `None` disables the optimisation.
    pub optimization_threshold: Option<u16>,
    /// How long payloads stay available for grafts.
    pub cache_retention: Duration,
    /// How long ids of delivered messages are remembered (duplicates suppressed); at least
    /// `cache_retention`.
    pub id_retention: Duration,
    /// Period of the cache eviction timer.
    pub evict_interval: Duration,
    /// A new neighbour is sent the ids (`IHave`) of the messages delivered here within
    /// this window (at most [`RECENT_IDS`]), so a node that joins the tree just after a
    /// broadcast passed grafts it instead of missing it; zero disables. Not in the paper,
    /// which assumes a stable overlay; Partisan's Plumtree exchanges ids periodically for
    /// the same reason.
    pub new_neighbour_window: Duration,
}

/// The most ids announced to a new neighbour (see
/// [`PlumtreeConfig::new_neighbour_window`]).
pub const RECENT_IDS: usize = 64;

impl Default for PlumtreeConfig {
    fn default() -> Self {
        PlumtreeConfig {
            mode: Mode::Plumtree,
            graft_timeout: Duration::from_millis(400),
            graft_retry: Duration::from_millis(200),
            optimization_threshold: Some(7),
            cache_retention: Duration::from_secs(30),
            id_retention: Duration::from_secs(120),
            evict_interval: Duration::from_secs(1),
            new_neighbour_window: Duration::from_secs(5),
        }
    }
}

/// A Plumtree protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PtMessage<P> {
    /// A payload, `round` hops from its origin.
    Gossip {
        /// Its id.
        id: MessageId<P>,
        /// Hops taken so far (0 at the origin's neighbours).
        round: u16,
        /// The application bytes.
        payload: Bytes,
    },
    /// The sender has these messages (lazy push).
    IHave(Vec<(MessageId<P>, u16)>),
    /// Make the link eager again and, with an id, send that message.
    Graft {
        /// The message wanted, if any.
        id: Option<MessageId<P>>,
    },
    /// Make the link lazy.
    Prune,
}

/// A Plumtree timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtTimer<P> {
    /// Graft for this message if it is still missing.
    Graft(MessageId<P>),
    /// Evict old cache entries.
    Evict,
}

/// An input to [`Plumtree::handle`].
#[derive(Debug, Clone)]
pub enum PtInput<P> {
    /// Publish `payload` from this node.
    Broadcast(Bytes),
    /// A message arrived.
    Message {
        /// The sender.
        from: P,
        /// The message.
        msg: PtMessage<P>,
    },
    /// A timer expired.
    Timer(PtTimer<P>),
    /// A neighbour appeared (HyParView's `NeighborUp`).
    NeighborUp(P),
    /// A neighbour went away (HyParView's `NeighborDown`).
    NeighborDown(P),
}

/// An output of [`Plumtree::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtOutput<P> {
    /// Send `msg` to `to`.
    Send {
        /// The receiver.
        to: P,
        /// The message.
        msg: PtMessage<P>,
    },
    /// Deliver `timer` back after `after`.
    SetTimer {
        /// Delay.
        after: Duration,
        /// The timer.
        timer: PtTimer<P>,
    },
    /// A message to hand to the application (once per id).
    Deliver {
        /// Its id.
        id: MessageId<P>,
        /// Hops from the origin (0 for the origin's own message, 1 at its neighbours).
        hops: u16,
        /// The neighbour it came from (the origin itself for local broadcasts).
        from: P,
        /// The bytes.
        payload: Bytes,
    },
}

/// Counters for metrics: monotonic totals since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtStats {
    /// Payloads sent by eager push (including answers to grafts).
    pub eager_sent: u64,
    /// Ids sent by lazy push.
    pub lazy_sent: u64,
    /// Grafts sent.
    pub graft_sent: u64,
    /// Prunes sent.
    pub prune_sent: u64,
    /// Messages delivered to the application.
    pub delivered: u64,
    /// Payloads received that were already delivered.
    pub duplicates: u64,
    /// Grafts given up because no announcer was left.
    pub graft_exhausted: u64,
    /// Grafts received for a payload no longer cached.
    pub graft_miss: u64,
    /// The largest hop count seen on a delivery.
    pub max_hops: u16,
}

/// The Plumtree state machine of one node. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Plumtree<P> {
    me: P,
    incarnation: u64,
    config: PlumtreeConfig,
    eager: BTreeSet<P>,
    lazy: BTreeSet<P>,
    next_seq: u64,
    /// Delivered ids, with when (for eviction in `seen_order`).
    seen: FixedSet<MessageId<P>>,
    seen_order: VecDeque<(Duration, MessageId<P>)>,
    cache: FixedMap<MessageId<P>, (u16, Bytes)>,
    cache_order: VecDeque<(Duration, MessageId<P>)>,
    /// Announced but not received: announcers in arrival order, with their hop counts.
    missing: FixedMap<MessageId<P>, VecDeque<(P, u16)>>,
    started: bool,
    stats: PtStats,
}

impl<P: PeerId> Plumtree<P> {
    /// A node `me` with no neighbours yet.
    pub fn new(me: P, config: PlumtreeConfig) -> Self {
        Plumtree {
            me,
            incarnation: 0,
            config,
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            next_seq: 0,
            seen: FixedSet::default(),
            seen_order: VecDeque::new(),
            cache: FixedMap::default(),
            cache_order: VecDeque::new(),
            missing: FixedMap::default(),
            started: false,
            stats: PtStats::default(),
        }
    }

    /// Sets the incarnation the ids of this node's next broadcasts carry (the driver's
    /// run; default 0).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// The eager peers (the tree links).
    pub fn eager(&self) -> &BTreeSet<P> {
        &self.eager
    }

    /// The lazy peers.
    pub fn lazy(&self) -> &BTreeSet<P> {
        &self.lazy
    }

    /// The counters.
    pub fn stats(&self) -> PtStats {
        self.stats
    }

    /// The parameters.
    pub fn config(&self) -> &PlumtreeConfig {
        &self.config
    }

    /// Switches between Plumtree and flooding; flooding makes every neighbour eager.
    pub fn set_mode(&mut self, mode: Mode) {
        self.config.mode = mode;
        if mode == Mode::Flood {
            let lazy = std::mem::take(&mut self.lazy);
            self.eager.extend(lazy);
        }
    }

    /// Payloads currently cached for grafts.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Feeds one input at time `now`; appends what to do to `out`.
    pub fn handle(&mut self, now: Duration, input: PtInput<P>, out: &mut Vec<PtOutput<P>>) {
        if !self.started {
            self.started = true;
            out.push(PtOutput::SetTimer {
                after: self.config.evict_interval,
                timer: PtTimer::Evict,
            });
        }
        match input {
            PtInput::Broadcast(payload) => {
                let id = MessageId {
                    origin: self.me.clone(),
                    incarnation: self.incarnation,
                    seq: self.next_seq,
                };
                self.next_seq += 1;
                self.remember(now, id.clone(), 0, payload.clone());
                self.stats.delivered += 1;
                out.push(PtOutput::Deliver {
                    id: id.clone(),
                    hops: 0,
                    from: self.me.clone(),
                    payload: payload.clone(),
                });
                self.push(&id, 0, &payload, None, out);
            }
            PtInput::Message { from, msg } => self.on_message(now, from, msg, out),
            PtInput::Timer(PtTimer::Graft(id)) => self.on_graft_timer(id, out),
            PtInput::Timer(PtTimer::Evict) => {
                out.push(PtOutput::SetTimer {
                    after: self.config.evict_interval,
                    timer: PtTimer::Evict,
                });
                self.evict(now);
            }
            PtInput::NeighborUp(p) => {
                if p != self.me {
                    self.lazy.remove(&p);
                    let new = self.eager.insert(p.clone());
                    if new && !self.config.new_neighbour_window.is_zero() {
                        let window = self.config.new_neighbour_window;
                        let recent: Vec<(MessageId<P>, u16)> = self
                            .cache_order
                            .iter()
                            .rev()
                            .take_while(|(at, _)| now.saturating_sub(*at) < window)
                            .filter_map(|(_, id)| self.cache.get(id).map(|(h, _)| (id.clone(), *h)))
                            .take(RECENT_IDS)
                            .collect();
                        if !recent.is_empty() {
                            self.stats.lazy_sent += recent.len() as u64;
                            out.push(PtOutput::Send {
                                to: p,
                                msg: PtMessage::IHave(recent),
                            });
                        }
                    }
                }
            }
            PtInput::NeighborDown(p) => {
                self.eager.remove(&p);
                self.lazy.remove(&p);
                for q in self.missing.values_mut() {
                    q.retain(|(a, _)| *a != p);
                }
            }
        }
    }

    fn is_neighbour(&self, p: &P) -> bool {
        self.eager.contains(p) || self.lazy.contains(p)
    }

    fn on_message(
        &mut self,
        now: Duration,
        from: P,
        msg: PtMessage<P>,
        out: &mut Vec<PtOutput<P>>,
    ) {
        match msg {
            PtMessage::Gossip { id, round, payload } => {
                if self.seen.contains(&id) {
                    self.stats.duplicates += 1;
                    if self.config.mode == Mode::Plumtree && self.eager.remove(&from) {
                        self.lazy.insert(from.clone());
                        self.stats.prune_sent += 1;
                        out.push(PtOutput::Send {
                            to: from,
                            msg: PtMessage::Prune,
                        });
                    }
                    return;
                }
                let hops = round.saturating_add(1);
                self.stats.delivered += 1;
                self.stats.max_hops = self.stats.max_hops.max(hops);
                self.remember(now, id.clone(), hops, payload.clone());
                out.push(PtOutput::Deliver {
                    id: id.clone(),
                    hops,
                    from: from.clone(),
                    payload: payload.clone(),
                });
                let announcers = self.missing.remove(&id);
                if self.is_neighbour(&from) {
                    self.lazy.remove(&from);
                    self.eager.insert(from.clone());
                }
                // Tree optimisation: a lazy path much shorter than the eager one it came
                // by replaces it.
                if let (Some(th), Some(q)) = (self.config.optimization_threshold, announcers) {
                    if let Some((best, r)) = q.iter().min_by_key(|(_, r)| *r).cloned() {
                        if r.saturating_add(th) < round
                            && self.config.mode == Mode::Plumtree
                            && self.lazy.contains(&best)
                        {
                            self.lazy.remove(&best);
                            self.eager.insert(best.clone());
                            self.stats.graft_sent += 1;
                            out.push(PtOutput::Send {
                                to: best,
                                msg: PtMessage::Graft { id: None },
                            });
                            if self.eager.remove(&from) {
                                self.lazy.insert(from.clone());
                                self.stats.prune_sent += 1;
                                out.push(PtOutput::Send {
                                    to: from.clone(),
                                    msg: PtMessage::Prune,
                                });
                            }
                        }
                    }
                }
                self.push(&id, hops, &payload, Some(&from), out);
            }
            PtMessage::IHave(ids) => {
                for (id, round) in ids {
                    if self.seen.contains(&id) {
                        continue;
                    }
                    let q = self.missing.entry(id.clone()).or_default();
                    if q.is_empty() {
                        out.push(PtOutput::SetTimer {
                            after: self.config.graft_timeout,
                            timer: PtTimer::Graft(id),
                        });
                    }
                    if !q.iter().any(|(a, _)| *a == from) {
                        q.push_back((from.clone(), round));
                    }
                }
            }
            PtMessage::Graft { id } => {
                if self.is_neighbour(&from) {
                    self.lazy.remove(&from);
                    self.eager.insert(from.clone());
                }
                if let Some(id) = id {
                    match self.cache.get(&id) {
                        Some((hops, payload)) => {
                            self.stats.eager_sent += 1;
                            out.push(PtOutput::Send {
                                to: from,
                                msg: PtMessage::Gossip {
                                    id,
                                    round: *hops,
                                    payload: payload.clone(),
                                },
                            });
                        }
                        None => self.stats.graft_miss += 1,
                    }
                }
            }
            PtMessage::Prune => {
                if self.eager.remove(&from) {
                    self.lazy.insert(from);
                }
            }
        }
    }

    fn on_graft_timer(&mut self, id: MessageId<P>, out: &mut Vec<PtOutput<P>>) {
        if self.seen.contains(&id) {
            self.missing.remove(&id);
            return;
        }
        let Some(q) = self.missing.get_mut(&id) else {
            return;
        };
        match q.pop_front() {
            Some((peer, _)) => {
                if self.lazy.remove(&peer) {
                    self.eager.insert(peer.clone());
                }
                self.stats.graft_sent += 1;
                out.push(PtOutput::Send {
                    to: peer,
                    msg: PtMessage::Graft {
                        id: Some(id.clone()),
                    },
                });
                out.push(PtOutput::SetTimer {
                    after: self.config.graft_retry,
                    timer: PtTimer::Graft(id),
                });
            }
            None => {
                // Nobody left to ask; a later `IHave` starts over.
                self.missing.remove(&id);
                self.stats.graft_exhausted += 1;
            }
        }
    }

    /// Eager push to the eager peers, lazy push to the lazy ones, except `from`.
    fn push(
        &mut self,
        id: &MessageId<P>,
        hops: u16,
        payload: &Bytes,
        from: Option<&P>,
        out: &mut Vec<PtOutput<P>>,
    ) {
        for p in self.eager.iter().filter(|p| Some(*p) != from) {
            self.stats.eager_sent += 1;
            out.push(PtOutput::Send {
                to: p.clone(),
                msg: PtMessage::Gossip {
                    id: id.clone(),
                    round: hops,
                    payload: payload.clone(),
                },
            });
        }
        if self.config.mode == Mode::Flood {
            return;
        }
        for p in self.lazy.iter().filter(|p| Some(*p) != from) {
            self.stats.lazy_sent += 1;
            out.push(PtOutput::Send {
                to: p.clone(),
                msg: PtMessage::IHave(vec![(id.clone(), hops)]),
            });
        }
    }

    fn remember(&mut self, now: Duration, id: MessageId<P>, hops: u16, payload: Bytes) {
        self.seen.insert(id.clone());
        self.seen_order.push_back((now, id.clone()));
        self.cache.insert(id.clone(), (hops, payload));
        self.cache_order.push_back((now, id));
    }

    fn evict(&mut self, now: Duration) {
        while let Some((at, _)) = self.cache_order.front() {
            if now.saturating_sub(*at) < self.config.cache_retention {
                break;
            }
            let (_, id) = self.cache_order.pop_front().expect("front checked");
            self.cache.remove(&id);
        }
        let keep = self.config.id_retention.max(self.config.cache_retention);
        while let Some((at, _)) = self.seen_order.front() {
            if now.saturating_sub(*at) < keep {
                break;
            }
            let (_, id) = self.seen_order.pop_front().expect("front checked");
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(me: u32, peers: &[u32]) -> Plumtree<u32> {
        let mut p = Plumtree::new(me, PlumtreeConfig::default());
        let mut out = Vec::new();
        for q in peers {
            p.handle(Duration::ZERO, PtInput::NeighborUp(*q), &mut out);
        }
        p
    }

    fn gossip(origin: u32, seq: u64, round: u16) -> PtMessage<u32> {
        PtMessage::Gossip {
            id: MessageId {
                origin,
                incarnation: 0,
                seq,
            },
            round,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn first_copy_is_delivered_and_pushed_a_duplicate_is_pruned() {
        let mut p = pt(0, &[1, 2, 3]);
        let mut out = Vec::new();
        p.handle(
            Duration::ZERO,
            PtInput::Message {
                from: 1,
                msg: gossip(9, 0, 0),
            },
            &mut out,
        );
        let delivered = out
            .iter()
            .filter(|o| matches!(o, PtOutput::Deliver { hops: 1, .. }))
            .count();
        assert_eq!(delivered, 1);
        let pushed: Vec<u32> = out
            .iter()
            .filter_map(|o| match o {
                PtOutput::Send {
                    to,
                    msg: PtMessage::Gossip { round: 1, .. },
                } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(pushed, vec![2, 3], "eager push to all but the sender");
        out.clear();
        p.handle(
            Duration::ZERO,
            PtInput::Message {
                from: 2,
                msg: gossip(9, 0, 3),
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![PtOutput::Send {
                to: 2,
                msg: PtMessage::Prune
            }]
        );
        assert!(p.lazy().contains(&2));
        assert_eq!(p.stats().duplicates, 1);
        assert_eq!(p.stats().prune_sent, 1);
    }

    #[test]
    fn lazy_peers_get_ihave_and_a_missing_message_is_grafted() {
        let mut p = pt(0, &[1, 2]);
        let mut out = Vec::new();
        p.handle(
            Duration::ZERO,
            PtInput::Message {
                from: 2,
                msg: PtMessage::Prune,
            },
            &mut out,
        );
        assert!(p.lazy().contains(&2));
        p.handle(
            Duration::ZERO,
            PtInput::Broadcast(Bytes::from_static(b"m")),
            &mut out,
        );
        assert!(out.contains(&PtOutput::Send {
            to: 2,
            msg: PtMessage::IHave(vec![(
                MessageId {
                    origin: 0,
                    incarnation: 0,
                    seq: 0
                },
                0
            )])
        }));
        out.clear();
        let id = MessageId {
            origin: 7,
            incarnation: 0,
            seq: 3,
        };
        p.handle(
            Duration::ZERO,
            PtInput::Message {
                from: 2,
                msg: PtMessage::IHave(vec![(id.clone(), 2)]),
            },
            &mut out,
        );
        assert_eq!(
            out,
            vec![PtOutput::SetTimer {
                after: PlumtreeConfig::default().graft_timeout,
                timer: PtTimer::Graft(id.clone())
            }]
        );
        out.clear();
        p.handle(
            Duration::from_millis(400),
            PtInput::Timer(PtTimer::Graft(id.clone())),
            &mut out,
        );
        assert!(out.contains(&PtOutput::Send {
            to: 2,
            msg: PtMessage::Graft {
                id: Some(id.clone())
            }
        }));
        assert!(p.eager().contains(&2), "grafting makes the link eager");
        // The graft is answered: delivered once, no more grafts.
        out.clear();
        p.handle(
            Duration::from_millis(450),
            PtInput::Message {
                from: 2,
                msg: PtMessage::Gossip {
                    id: id.clone(),
                    round: 2,
                    payload: Bytes::from_static(b"y"),
                },
            },
            &mut out,
        );
        out.clear();
        p.handle(
            Duration::from_millis(600),
            PtInput::Timer(PtTimer::Graft(id)),
            &mut out,
        );
        assert!(out.is_empty(), "a delivered message is not grafted again");
        assert_eq!(p.stats().graft_sent, 1);
    }

    #[test]
    fn a_graft_is_answered_from_the_cache_until_eviction() {
        let mut p = pt(0, &[1]);
        let mut out = Vec::new();
        p.handle(
            Duration::ZERO,
            PtInput::Broadcast(Bytes::from_static(b"m")),
            &mut out,
        );
        out.clear();
        let id = MessageId {
            origin: 0,
            incarnation: 0,
            seq: 0,
        };
        p.handle(
            Duration::from_secs(1),
            PtInput::Message {
                from: 1,
                msg: PtMessage::Graft {
                    id: Some(id.clone()),
                },
            },
            &mut out,
        );
        assert!(matches!(
            out.as_slice(),
            [PtOutput::Send {
                to: 1,
                msg: PtMessage::Gossip { .. }
            }]
        ));
        p.handle(
            Duration::from_secs(31),
            PtInput::Timer(PtTimer::Evict),
            &mut out,
        );
        assert_eq!(p.cached(), 0);
        out.clear();
        p.handle(
            Duration::from_secs(32),
            PtInput::Message {
                from: 1,
                msg: PtMessage::Graft { id: Some(id) },
            },
            &mut out,
        );
        assert_eq!(p.stats().graft_miss, 1);
    }

    #[test]
    fn flood_mode_never_prunes() {
        let mut p = Plumtree::new(
            0u32,
            PlumtreeConfig {
                mode: Mode::Flood,
                ..PlumtreeConfig::default()
            },
        );
        let mut out = Vec::new();
        for q in [1, 2] {
            p.handle(Duration::ZERO, PtInput::NeighborUp(q), &mut out);
        }
        for from in [1, 2] {
            p.handle(
                Duration::ZERO,
                PtInput::Message {
                    from,
                    msg: gossip(9, 0, 0),
                },
                &mut out,
            );
        }
        assert_eq!(p.stats().prune_sent, 0);
        assert_eq!(p.eager().len(), 2);
    }
}
