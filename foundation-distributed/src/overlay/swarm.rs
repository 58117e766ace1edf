//! A swarm: HyParView and Plumtree combined behind one `handle` call, and [`PubSub`], one
//! swarm per topic.
//!
//! HyParView's `NeighborUp` / `NeighborDown` feed Plumtree's eager set, so the broadcast
//! tree always spans the current active views; a peer failure reported by the transport
//! reaches both machines.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::hyparview::{HvInput, HvMessage, HvOutput, HvTimer, HyParView, HyParViewConfig, PeerId};
use super::plumtree::{MessageId, Plumtree, PlumtreeConfig, PtInput, PtMessage, PtOutput, PtTimer};

/// Parameters of a swarm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwarmConfig {
    /// Membership.
    pub hyparview: HyParViewConfig,
    /// Broadcast.
    pub plumtree: PlumtreeConfig,
}

/// A swarm message: one of the two protocols'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwarmMessage<P> {
    /// Membership.
    Hv(HvMessage<P>),
    /// Broadcast.
    Pt(PtMessage<P>),
}

/// A swarm timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmTimer<P> {
    /// Membership.
    Hv(HvTimer<P>),
    /// Broadcast.
    Pt(PtTimer<P>),
}

/// An input to [`Swarm::handle`].
#[derive(Debug, Clone)]
pub enum SwarmInput<P> {
    /// Join through `contact`.
    Join(P),
    /// Publish bytes.
    Broadcast(Bytes),
    /// A message arrived.
    Message {
        /// The sender.
        from: P,
        /// The message.
        msg: SwarmMessage<P>,
    },
    /// A timer expired.
    Timer(SwarmTimer<P>),
    /// The connection to this peer failed (or it is reported down).
    PeerFailed(P),
    /// Leave the swarm.
    Leave,
}

/// An output of [`Swarm::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmOutput<P> {
    /// Send a message.
    Send {
        /// The receiver.
        to: P,
        /// The message.
        msg: SwarmMessage<P>,
    },
    /// Set a timer.
    SetTimer {
        /// Delay.
        after: Duration,
        /// The timer.
        timer: SwarmTimer<P>,
    },
    /// A broadcast to hand to the application.
    Deliver {
        /// Its id.
        id: MessageId<P>,
        /// Hops from the origin.
        hops: u16,
        /// The neighbour it came from.
        from: P,
        /// The bytes.
        payload: Bytes,
    },
    /// A peer entered the active view.
    NeighborUp(P),
    /// A peer left the active view.
    NeighborDown(P),
    /// See [`HvOutput::Isolated`]: feed [`SwarmInput::Join`] with a live member.
    Isolated,
}

/// HyParView + Plumtree for one node of one swarm.
#[derive(Debug, Clone)]
pub struct Swarm<P> {
    hv: HyParView<P>,
    pt: Plumtree<P>,
    hv_out: Vec<HvOutput<P>>,
    pt_out: Vec<PtOutput<P>>,
}

impl<P: PeerId> Swarm<P> {
    /// Node `me` of a swarm.
    pub fn new(me: P, config: SwarmConfig) -> Self {
        Swarm {
            hv: HyParView::new(me.clone(), config.hyparview),
            pt: Plumtree::new(me, config.plumtree),
            hv_out: Vec::new(),
            pt_out: Vec::new(),
        }
    }

    /// The membership machine.
    pub fn hyparview(&self) -> &HyParView<P> {
        &self.hv
    }

    /// The broadcast machine.
    pub fn plumtree(&self) -> &Plumtree<P> {
        &self.pt
    }

    /// See [`Plumtree::set_incarnation`].
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.pt.set_incarnation(incarnation);
    }

    /// See [`Plumtree::set_mode`].
    pub fn set_broadcast_mode(&mut self, mode: super::plumtree::Mode) {
        self.pt.set_mode(mode);
    }

    /// Feeds one input at `now`; appends what to do to `out`.
    pub fn handle(
        &mut self,
        now: Duration,
        input: SwarmInput<P>,
        rng: &mut dyn RngCore,
        out: &mut Vec<SwarmOutput<P>>,
    ) {
        match input {
            SwarmInput::Join(c) => self.hv_in(now, HvInput::Join(c), rng, out),
            SwarmInput::Broadcast(b) => self.pt_in(now, PtInput::Broadcast(b), out),
            SwarmInput::Message {
                from,
                msg: SwarmMessage::Hv(msg),
            } => self.hv_in(now, HvInput::Message { from, msg }, rng, out),
            SwarmInput::Message {
                from,
                msg: SwarmMessage::Pt(msg),
            } => self.pt_in(now, PtInput::Message { from, msg }, out),
            SwarmInput::Timer(SwarmTimer::Hv(t)) => self.hv_in(now, HvInput::Timer(t), rng, out),
            SwarmInput::Timer(SwarmTimer::Pt(t)) => self.pt_in(now, PtInput::Timer(t), out),
            SwarmInput::PeerFailed(p) => self.hv_in(now, HvInput::PeerFailed(p), rng, out),
            SwarmInput::Leave => self.hv_in(now, HvInput::Leave, rng, out),
        }
    }

    fn hv_in(
        &mut self,
        now: Duration,
        input: HvInput<P>,
        rng: &mut dyn RngCore,
        out: &mut Vec<SwarmOutput<P>>,
    ) {
        let mut hv_out = std::mem::take(&mut self.hv_out);
        self.hv.handle(input, rng, &mut hv_out);
        for o in hv_out.drain(..) {
            match o {
                HvOutput::Send { to, msg } => out.push(SwarmOutput::Send {
                    to,
                    msg: SwarmMessage::Hv(msg),
                }),
                HvOutput::SetTimer { after, timer } => out.push(SwarmOutput::SetTimer {
                    after,
                    timer: SwarmTimer::Hv(timer),
                }),
                HvOutput::NeighborUp(p) => {
                    self.pt_in(now, PtInput::NeighborUp(p.clone()), out);
                    out.push(SwarmOutput::NeighborUp(p));
                }
                HvOutput::NeighborDown(p) => {
                    self.pt_in(now, PtInput::NeighborDown(p.clone()), out);
                    out.push(SwarmOutput::NeighborDown(p));
                }
                HvOutput::Isolated => out.push(SwarmOutput::Isolated),
            }
        }
        self.hv_out = hv_out;
    }

    fn pt_in(&mut self, now: Duration, input: PtInput<P>, out: &mut Vec<SwarmOutput<P>>) {
        let mut pt_out = std::mem::take(&mut self.pt_out);
        self.pt.handle(now, input, &mut pt_out);
        for o in pt_out.drain(..) {
            out.push(match o {
                PtOutput::Send { to, msg } => SwarmOutput::Send {
                    to,
                    msg: SwarmMessage::Pt(msg),
                },
                PtOutput::SetTimer { after, timer } => SwarmOutput::SetTimer {
                    after,
                    timer: SwarmTimer::Pt(timer),
                },
                PtOutput::Deliver {
                    id,
                    hops,
                    from,
                    payload,
                } => SwarmOutput::Deliver {
                    id,
                    hops,
                    from,
                    payload,
                },
            });
        }
        self.pt_out = pt_out;
    }
}

/// A topic name.
pub type Topic = String;

/// Why a [`PubSub`] call was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// Publishing to a topic this node is not subscribed to.
    #[error("not subscribed to topic `{0}`")]
    NotSubscribed(Topic),
    /// Subscribing twice.
    #[error("already subscribed to topic `{0}`")]
    AlreadySubscribed(Topic),
}

/// Publish/subscribe: one [`Swarm`] per topic, so a message published on a topic travels
/// only among that topic's subscribers and reaches each live one once.
///
/// Subscribing joins the topic's swarm through a bootstrap peer (any subscriber; with none,
/// this node starts the swarm and waits to be contacted); unsubscribing leaves it
/// (`Disconnect` to the active peers). Messages and timers are tagged with their topic; a
/// message for a topic this node does not follow is counted in
/// [`unknown_topic`](Self::unknown_topic) and dropped (its sender learns nothing: the
/// overlay repairs around it).
#[derive(Debug)]
pub struct PubSub<P> {
    me: P,
    config: SwarmConfig,
    topics: BTreeMap<Topic, Swarm<P>>,
    buf: Vec<SwarmOutput<P>>,
    unknown_topic: u64,
}

/// An output of [`PubSub`]: a swarm output with its topic.
pub type TopicOutput<P> = (Topic, SwarmOutput<P>);

impl<P: PeerId> PubSub<P> {
    /// A node with no subscriptions.
    pub fn new(me: P, config: SwarmConfig) -> Self {
        PubSub {
            me,
            config,
            topics: BTreeMap::new(),
            buf: Vec::new(),
            unknown_topic: 0,
        }
    }

    /// Subscribed topics.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.keys()
    }

    /// The swarm of `topic`, if subscribed.
    pub fn swarm(&self, topic: &str) -> Option<&Swarm<P>> {
        self.topics.get(topic)
    }

    /// Messages received for topics not subscribed to.
    pub fn unknown_topic(&self) -> u64 {
        self.unknown_topic
    }

    /// Subscribes to `topic`, joining through `bootstrap` if given.
    pub fn subscribe(
        &mut self,
        now: Duration,
        topic: &str,
        bootstrap: Option<P>,
        rng: &mut dyn RngCore,
        out: &mut Vec<TopicOutput<P>>,
    ) -> Result<(), PubSubError> {
        if self.topics.contains_key(topic) {
            return Err(PubSubError::AlreadySubscribed(topic.to_string()));
        }
        let mut swarm = Swarm::new(self.me.clone(), self.config.clone());
        let input = match bootstrap {
            Some(c) => SwarmInput::Join(c),
            // Starts the timers; a swarm of one waits to be joined.
            None => SwarmInput::Timer(SwarmTimer::Hv(HvTimer::Repair)),
        };
        swarm.handle(now, input, rng, &mut self.buf);
        self.topics.insert(topic.to_string(), swarm);
        out.extend(self.buf.drain(..).map(|o| (topic.to_string(), o)));
        Ok(())
    }

    /// Leaves `topic`.
    pub fn unsubscribe(
        &mut self,
        now: Duration,
        topic: &str,
        rng: &mut dyn RngCore,
        out: &mut Vec<TopicOutput<P>>,
    ) -> Result<(), PubSubError> {
        let mut swarm = self
            .topics
            .remove(topic)
            .ok_or_else(|| PubSubError::NotSubscribed(topic.to_string()))?;
        swarm.handle(now, SwarmInput::Leave, rng, &mut self.buf);
        // Only the goodbyes go out; timers of a dropped swarm are moot.
        out.extend(
            self.buf
                .drain(..)
                .filter(|o| matches!(o, SwarmOutput::Send { .. }))
                .map(|o| (topic.to_string(), o)),
        );
        Ok(())
    }

    /// Publishes `payload` on `topic`.
    pub fn publish(
        &mut self,
        now: Duration,
        topic: &str,
        payload: Bytes,
        rng: &mut dyn RngCore,
        out: &mut Vec<TopicOutput<P>>,
    ) -> Result<(), PubSubError> {
        if !self.topics.contains_key(topic) {
            return Err(PubSubError::NotSubscribed(topic.to_string()));
        }
        self.handle(now, topic, SwarmInput::Broadcast(payload), rng, out);
        Ok(())
    }

    /// Feeds an input for `topic` (a message or timer tagged with it).
    pub fn handle(
        &mut self,
        now: Duration,
        topic: &str,
        input: SwarmInput<P>,
        rng: &mut dyn RngCore,
        out: &mut Vec<TopicOutput<P>>,
    ) {
        let Some(swarm) = self.topics.get_mut(topic) else {
            if matches!(input, SwarmInput::Message { .. }) {
                self.unknown_topic += 1;
            }
            return;
        };
        swarm.handle(now, input, rng, &mut self.buf);
        out.extend(self.buf.drain(..).map(|o| (topic.to_string(), o)));
    }

    /// A connection to `peer` failed: every topic hears of it.
    pub fn peer_failed(
        &mut self,
        now: Duration,
        peer: &P,
        rng: &mut dyn RngCore,
        out: &mut Vec<TopicOutput<P>>,
    ) {
        for (topic, swarm) in self.topics.iter_mut() {
            swarm.handle(
                now,
                SwarmInput::PeerFailed(peer.clone()),
                rng,
                &mut self.buf,
            );
            out.extend(self.buf.drain(..).map(|o| (topic.clone(), o)));
        }
    }
}
