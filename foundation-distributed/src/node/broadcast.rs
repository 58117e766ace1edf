//! Broadcast: deliver-once bookkeeping keyed by (origin, origin's incarnation, id), so a
//! restarted origin (a new incarnation, ids from 1 again) is not taken as already seen;
//! the hand-over to a topology's own broadcast protocol (Plumtree under HyParView); and
//! topics (publish / subscribe) on top of broadcast.
//!
//! Under a partial-view topology, [`Node::broadcast`](super::Node::broadcast) hands the
//! encoded broadcast to the topology's [`publish`](crate::topology::PeerService::publish):
//! Plumtree gives it an id (origin, origin's incarnation, sequence), pushes it eagerly to
//! its tree neighbours and announces its id lazily to the others; receivers deliver what
//! the topology reports delivered, once (the node's own (origin, incarnation, id) check
//! stays as a second guard, across a topology switch).
//!
//! Topics: a topic is a broadcast to a receiver named after the topic. Every node relays
//! it (the broadcast tree spans the cluster); a node without a subscriber drops it without
//! counting a loss (`foundation_node_topic_unsubscribed_total` counts them).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::delivery::Outcome;
use super::wire::{self, Wire};
use super::{Inner, Node};
use crate::error::Result;

/// Receiver names of topics start with this.
const TOPIC_PREFIX: &str = "\u{1f}topic/";

fn topic_slot(topic: &str) -> String {
    format!("{TOPIC_PREFIX}{topic}")
}

type Key = (String, u64, u64);

/// How many broadcast keys are remembered.
const REMEMBERED: usize = 65_536;

pub(crate) struct Broadcasts {
    next_id: AtomicU64,
    seen: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

impl Broadcasts {
    pub fn new() -> Self {
        Broadcasts {
            next_id: AtomicU64::new(1),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records (origin, incarnation, id); false if it was seen already.
    pub fn first_time(&self, origin: &str, incarnation: u64, id: u64) -> bool {
        let mut seen = self.seen.lock();
        let key = (origin.to_string(), incarnation, id);
        if !seen.0.insert(key.clone()) {
            return false;
        }
        seen.1.push_back(key);
        if seen.1.len() > REMEMBERED {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        true
    }
}

impl Inner {
    /// Hands an encoded broadcast to the topology's own broadcast protocol; false if it
    /// has none (the node then sends to the broadcast targets itself).
    pub(super) fn publish_overlay(&self, bytes: &Bytes) -> bool {
        let out = self
            .topology
            .lock()
            .publish(self.incarnation, bytes.clone());
        match out {
            Some(out) => {
                self.send_topology(out);
                true
            }
            None => false,
        }
    }

    /// Delivers the broadcasts the topology's protocol reported delivered; returns a
    /// delivery to wait for (a full receiver on a data channel).
    pub(super) fn deliver_overlay(&self, may_wait: bool) -> Option<BoxFuture<'static, Outcome>> {
        let delivered = self.topology.lock().take_delivered();
        let mut wait = None;
        for d in delivered {
            let Some(Wire::Broadcast {
                origin,
                incarnation,
                id,
                to_name,
                body,
            }) = wire::decode(&d.payload)
            else {
                self.meters.dropped("undecodable").increment(1);
                continue;
            };
            if origin == self.name || !self.broadcasts.first_time(&origin, incarnation, id) {
                continue;
            }
            let w = self.deliver_broadcast(&to_name, &origin, &body, may_wait && wait.is_none());
            if w.is_some() {
                wait = w;
            }
        }
        wait
    }

    /// Delivers a broadcast to its receiver; a topic nobody here subscribes to is not a
    /// loss.
    pub(super) fn deliver_broadcast(
        &self,
        to_name: &str,
        origin: &str,
        body: &Bytes,
        may_wait: bool,
    ) -> Option<BoxFuture<'static, Outcome>> {
        if to_name.starts_with(TOPIC_PREFIX) && !self.slots.read().contains_key(to_name) {
            metrics::counter!("foundation_node_topic_unsubscribed_total").increment(1);
            return None;
        }
        self.deliver(to_name, origin, body, may_wait)
    }
}

impl Node {
    /// The counters of the topology's broadcast protocol (Plumtree's eager and lazy
    /// pushes, grafts, prunes, duplicates, largest hop count) when it has one (HyParView).
    /// The same figures are exported as `foundation_overlay_plumtree_*` metrics.
    pub fn broadcast_stats(&self) -> Option<crate::overlay::plumtree::PtStats> {
        self.inner.topology.lock().broadcast_stats()
    }

    /// The overlay as this node holds it now, under a partial-view topology (HyParView):
    /// its active and passive views and its Plumtree eager (tree) and lazy peers. `None`
    /// under full mesh, client-server and static.
    pub fn overlay_views(&self) -> Option<crate::topology::OverlayViews> {
        self.inner.topology.lock().overlay_views()
    }

    /// Subscribes to `topic`: messages [`publish`](Self::publish)ed on it by other nodes
    /// arrive on the returned receiver as (publishing node, message), each once. A second
    /// subscription replaces the first. Backpressure and decoding are as for
    /// [`register`](Self::register).
    pub fn subscribe_topic<T: DeserializeOwned + Send + 'static>(
        &self,
        topic: &str,
    ) -> mpsc::Receiver<(String, T)> {
        self.register(&topic_slot(topic))
    }

    /// Stops delivering `topic` here; returns whether there was a subscription. Later
    /// messages on it are relayed but not delivered.
    pub fn unsubscribe_topic(&self, topic: &str) -> bool {
        self.inner
            .slots
            .write()
            .remove(&topic_slot(topic))
            .is_some()
    }

    /// Publishes `msg` on `topic`: it reaches every live subscriber on the other nodes
    /// once (a broadcast; see [`broadcast`](Self::broadcast) for what `Ok` means and for
    /// Plumtree under HyParView). A subscription on this node itself does not receive it.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, msg: &T) -> Result<()> {
        self.broadcast(&topic_slot(topic), msg).await
    }
}
