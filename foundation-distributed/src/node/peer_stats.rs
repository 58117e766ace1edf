//! Read-only per-peer link numbers for observers ([`Node::peer_stats`]).

use serde::{Deserialize, Serialize};

use super::Node;
use crate::channel::ChannelStats;

/// One peer's link, read now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The peer's node name.
    pub peer: String,
    /// Each channel of the link, in the channel table's order.
    pub channels: Vec<ChannelStats>,
}

impl Node {
    /// Every peer whose link is up, by name, with each channel's connections, queue
    /// depth (messages and bytes), what was written since the link came up and how many
    /// messages waited longer than [`LATE_AFTER`](crate::channel::LATE_AFTER).
    ///
    /// Reads counters the sender tasks keep anyway and walks the queues when called;
    /// nothing is sampled in the background. Counters restart from 0 when a link is
    /// replaced (a reconnect).
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let mut out: Vec<PeerStats> = self
            .inner
            .links
            .up_peers()
            .into_iter()
            .filter_map(|l| {
                let c = l.current()?;
                Some(PeerStats {
                    peer: l.peer.clone(),
                    channels: c.stats(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }
}
