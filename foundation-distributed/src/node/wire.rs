//! The node protocol: one MessagePack enum, encoded positionally (compact; both ends run
//! the same protocol version, checked by the transport handshake).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Update;

/// Why a request failed at the server's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReplyError {
    /// No server registered under the name.
    NoServer(String),
    /// The node's request-handler bound was reached.
    Overloaded(String),
    /// The request or the reply did not (de)serialize.
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// Membership gossip: the sender's view (also sent first on every new link).
    Gossip { members: Vec<Update> },
    /// A heartbeat, carrying the sender's generation (a refutation travels with it).
    Heartbeat { incarnation: u64, version: u64 },
    /// A protocol message of the topology manager.
    Topology { payload: Bytes },
    /// An application message.
    Send {
        to_node: String,
        to_name: String,
        from: String,
        body: Bytes,
    },
    /// A request; `incarnation` is the requester's.
    Request {
        id: u64,
        incarnation: u64,
        to_node: String,
        to_name: String,
        from: String,
        body: Bytes,
    },
    /// The reply to request `id` of `to_node`, from `from`.
    Reply {
        id: u64,
        to_node: String,
        from: String,
        body: std::result::Result<Bytes, ReplyError>,
    },
    /// A broadcast, identified by (origin, incarnation, id).
    Broadcast {
        origin: String,
        incarnation: u64,
        id: u64,
        to_name: String,
        body: Bytes,
    },
    /// An acknowledged message: sequence `seq` of the stream from `from` (at
    /// `incarnation`) to `to_node`; `base` is the oldest sequence the sender still holds.
    Acked {
        to_node: String,
        from: String,
        incarnation: u64,
        seq: u64,
        base: u64,
        to_name: String,
        body: Bytes,
    },
    /// Cumulative acknowledgement: `from` has delivered everything up to `upto` of the
    /// stream `to_node` sent at `incarnation`.
    Ack {
        to_node: String,
        from: String,
        incarnation: u64,
        upto: u64,
    },
}

impl Wire {
    /// The node this message is addressed to, when it is not every node.
    pub(crate) fn to_node(&self) -> Option<&str> {
        match self {
            Wire::Send { to_node, .. }
            | Wire::Request { to_node, .. }
            | Wire::Reply { to_node, .. }
            | Wire::Acked { to_node, .. }
            | Wire::Ack { to_node, .. } => Some(to_node),
            _ => None,
        }
    }

    /// The node that claims to have sent it (for messages that may be relayed).
    pub(crate) fn claimed_sender(&self) -> Option<&str> {
        match self {
            Wire::Send { from, .. }
            | Wire::Request { from, .. }
            | Wire::Reply { from, .. }
            | Wire::Acked { from, .. }
            | Wire::Ack { from, .. } => Some(from),
            Wire::Broadcast { origin, .. } => Some(origin),
            _ => None,
        }
    }

    /// The metric label of its kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Wire::Gossip { .. } => "gossip",
            Wire::Heartbeat { .. } => "heartbeat",
            Wire::Topology { .. } => "topology",
            Wire::Send { .. } => "send",
            Wire::Request { .. } => "request",
            Wire::Reply { .. } => "reply",
            Wire::Broadcast { .. } => "broadcast",
            Wire::Acked { .. } => "acked",
            Wire::Ack { .. } => "ack",
        }
    }
}

pub(crate) fn encode(w: &Wire) -> Bytes {
    Bytes::from(rmp_serde::to_vec(w).expect("wire messages always encode"))
}

pub(crate) fn decode(b: &[u8]) -> Option<Wire> {
    rmp_serde::from_slice(b).ok()
}
