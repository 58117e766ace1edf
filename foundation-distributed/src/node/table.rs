//! Channel-table agreement between linked nodes (D431).
//!
//! Paths that keep an order across connections assume both ends of every hop split a
//! channel into the same connections: a relay re-keys each message with *its* table
//! (`connection_of(key, parallelism)`), and the remote processes' fence (a DOWN or link
//! exit sent as one copy per connection of the normal lane) takes effect behind every
//! earlier message only if each hop maps the copies' connections onto the earlier
//! messages' connections. Nothing in the transport handshake carries the table, so two
//! nodes with different tables could link and silently break those orders.
//!
//! Every node's topology state message (the second message on every new link, and the
//! periodic anti-entropy) carries a summary of its channel table — the channels' names,
//! priorities and parallelism, and the routing options. A node that receives a summary
//! other than its own **refuses the peer's application traffic**: sends, requests,
//! replies and relays to or through it fail with [`Error::ChannelTableMismatch`], what
//! it sends is dropped and counted (`foundation_node_refused_total{reason="channel_table"}`),
//! the refusal is logged once with both tables, and the peer is told this node's table
//! (so it refuses too, even if it never links back). `Node::join` waits for its seed's
//! table and fails with that error when it differs. Membership, heartbeats and the
//! topology protocol still flow: the node stays a member (a partial view routes around
//! it). A summary that agrees again (the peer restarted with the cluster's table) lifts
//! the refusal.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::Inner;
use crate::channel::{ChannelSettings, Priority};
use crate::error::Error;

/// A one-line summary of what of a channel table decides where a message goes: each
/// channel (by name) with its priority and parallelism, and the routing options. Two
/// nodes agree when their summaries are equal.
pub(crate) fn summary(c: &ChannelSettings) -> String {
    let mut channels: Vec<_> = c.channels.iter().collect();
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    let mut s = String::new();
    for (i, spec) in channels.iter().enumerate() {
        let priority = match spec.priority {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        };
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(s, "{sep}{}={priority}x{}", spec.name, spec.parallelism);
    }
    let r = &c.route;
    let _ = write!(
        s,
        "; route: bulk over {} to {}, urgent to {}, background to {}, monotonic to {}, else {}",
        r.bulk_threshold,
        r.bulk_channel,
        r.urgent_channel,
        r.background_channel,
        r.monotonic_channel.as_deref().unwrap_or("-"),
        r.default_channel
    );
    s
}

/// Peers whose channel table differs from this node's, with their summaries.
#[derive(Default)]
pub(crate) struct Refused {
    /// Whether any peer is refused: the only thing the per-message paths read (one
    /// relaxed load) while every table agrees.
    any: AtomicBool,
    peers: Mutex<HashMap<String, String>>,
    /// Peers whose table was checked (for `Node::join`, which waits for its seed's).
    checked: Mutex<HashSet<String>>,
}

impl Refused {
    /// The refused peer's table summary, if `peer` is refused.
    fn get(&self, peer: &str) -> Option<String> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.peers.lock().get(peer).cloned()
    }

    /// Refuses `peer` (table `theirs`); whether it was not refused with that table
    /// already.
    fn refuse(&self, peer: &str, theirs: &str) -> bool {
        let mut peers = self.peers.lock();
        let old = peers.insert(peer.to_string(), theirs.to_string());
        self.any.store(true, Ordering::Relaxed);
        old.as_deref() != Some(theirs)
    }

    /// Lifts a refusal of `peer`; whether there was one.
    fn accept(&self, peer: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let mut peers = self.peers.lock();
        let was = peers.remove(peer).is_some();
        self.any.store(!peers.is_empty(), Ordering::Relaxed);
        was
    }
}

impl Inner {
    /// This node's channel-table summary.
    pub(super) fn table_summary(&self) -> String {
        summary(&self.settings.channels)
    }

    /// Checks the table summary `theirs` that `peer` sent (empty: not said, accepted);
    /// refuses the peer when it differs (see the [module docs](self)). Returns whether
    /// the peer is newly refused (to be told this node's table).
    pub(super) fn check_table(&self, peer: &str, theirs: &str) -> bool {
        if !theirs.is_empty() {
            let mut checked = self.switch.refused.checked.lock();
            if !checked.contains(peer) {
                checked.insert(peer.to_string());
            }
        }
        let ours = self.table_summary();
        if theirs.is_empty() || theirs == ours {
            if self.switch.refused.accept(peer) {
                self.links.routes_changed();
                tracing::info!(peer, "peer's channel table agrees again; traffic accepted");
            }
            return false;
        }
        let newly = self.switch.refused.refuse(peer, theirs);
        self.links.routes_changed();
        if newly {
            metrics::counter!("foundation_node_channel_table_mismatches_total").increment(1);
            tracing::error!(
                peer,
                ours = %ours,
                theirs = %theirs,
                "refusing the application traffic of a peer whose channel table differs \
                 (every node of a cluster needs the same channels, parallelism and routing)"
            );
        }
        newly
    }

    /// Whether `peer`'s table has been checked (it sent a topology state).
    pub(super) fn table_checked(&self, peer: &str) -> bool {
        self.switch.refused.checked.lock().contains(peer)
    }

    /// Forgets what was checked of `peer` (it left or was removed).
    pub(super) fn forget_table(&self, peer: &str) {
        self.switch.refused.checked.lock().remove(peer);
        if self.switch.refused.accept(peer) {
            self.links.routes_changed();
        }
    }

    /// The error for traffic to or through `node`, if it is refused.
    pub(super) fn refused(&self, node: &str) -> Option<Error> {
        let theirs = self.switch.refused.get(node)?;
        Some(Error::ChannelTableMismatch {
            node: node.to_string(),
            ours: self.table_summary(),
            theirs,
        })
    }

    /// Whether an application message from `peer` is refused (counted).
    pub(super) fn refuses_traffic_from(&self, peer: &str) -> bool {
        if self.switch.refused.get(peer).is_none() {
            return false;
        }
        metrics::counter!("foundation_node_refused_total", "reason" => "channel_table")
            .increment(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelSpec;

    #[test]
    fn the_summary_ignores_order_and_queue_sizes_but_not_parallelism() {
        let a = crate::node::default_channels();
        let mut b = a.clone();
        b.channels.reverse();
        for c in &mut b.channels {
            c.queue_capacity += 1;
        }
        assert_eq!(summary(&a), summary(&b));
        let mut c = a.clone();
        c.channels[0].parallelism += 1;
        assert_ne!(summary(&a), summary(&c));
        let d = a.clone().with(ChannelSpec::new("extra", Priority::Low, 1));
        assert_ne!(summary(&a), summary(&d));
        let mut e = a.clone();
        e.route.bulk_threshold += 1;
        assert_ne!(summary(&a), summary(&e));
    }

    #[test]
    fn refusals_are_lifted_and_the_fast_path_follows() {
        let r = Refused::default();
        assert!(r.get("b").is_none());
        assert!(r.refuse("b", "x"));
        assert!(!r.refuse("b", "x"));
        assert!(r.refuse("b", "y"));
        assert_eq!(r.get("b").as_deref(), Some("y"));
        assert!(r.accept("b"));
        assert!(!r.any.load(Ordering::Relaxed));
        assert!(r.get("b").is_none());
    }
}
