//! What remote-process services say to each other, through the node's public API.
//!
//! Everything between a pair (this node, a remote process) that must keep its order —
//! casts, calls, confirmed sends, demonitors, and the process's DOWN and link exits —
//! is a [`Signal`] sent through [`Node::send_pinned`](crate::node::Node) to the receiver
//! [`SIGNALS`] (normal lane) or [`URGENT_SIGNALS`] (urgent lane), keyed by the target
//! (one connection per pair, whatever the message size; see D400). Answers to calls come
//! back as [`Signal::Answer`] on the urgent lane. Monitor and link set-ups are requests
//! (through [`Node::request`](crate::node::Node::request)) to the server [`CONTROL`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::Failure;
use super::exit::RemoteExitReason;
use super::names::Claim;

/// Receiver of normal signals.
pub(crate) const SIGNALS: &str = "$remote";
/// Receiver of the urgent lane (urgent casts and calls, answers; its own queue, so they
/// never wait behind normal ones).
pub(crate) const URGENT_SIGNALS: &str = "$remote!urgent";
/// Server of monitor and link set-up requests.
pub(crate) const CONTROL: &str = "$remote/control";

/// Partition key of the pair (this node, the process `name` on `node`): everything this
/// node sends to it that must keep its order takes this key (D400).
pub(crate) fn key_of(node: &str, name: &str) -> u64 {
    // FNV-1a: stable, cheap, and good enough to spread targets over connections.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Identifies a cross-node link: the node that made it and its id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct LinkId {
    pub(crate) origin: String,
    pub(crate) id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Signal {
    /// A message for the process registered as `to`.
    Cast { to: String, body: Bytes },
    /// Call `call` (the sending node's id) of the process registered as `to`, on the lane
    /// it arrives on; the process answers within `timeout_ms`, the answer comes back as
    /// [`Signal::Answer`].
    Call {
        to: String,
        call: u64,
        timeout_ms: u64,
        body: Bytes,
    },
    /// A cast whose [`Signal::Answer`] says whether it was queued in the mailbox.
    Confirm { to: String, call: u64, body: Bytes },
    /// The answer to call (or confirmed send) `call` of the receiving node.
    Answer { call: u64, reply: ControlReply },
    /// The process watched by monitor `monitor` (made by the receiving node) exited.
    /// Sent as `fence` copies, one per connection of the normal lane: it takes effect
    /// when the last arrives, behind everything sent before it on that lane.
    Down {
        monitor: u64,
        reason: RemoteExitReason,
        fence: u32,
    },
    /// The other end of link `link` exited with `reason` (in `fence` copies, as `Down`).
    LinkExit {
        link: LinkId,
        reason: RemoteExitReason,
        fence: u32,
    },
    /// The monitor is no longer wanted.
    Demonitor { to: String, monitor: u64 },
    /// A cast to `to` from the receiving node was not delivered.
    Rejected { to: String, failure: Failure },
    /// Cluster-wide names the sending node claims.
    Claims { claims: Vec<Claim> },
    /// The sending node withdraws its claim.
    Release { name: String, export: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Watch `to`; report its exit as `Signal::Down { monitor }`. `inc` is the
    /// requesting node's incarnation.
    Monitor { to: String, monitor: u64, inc: u64 },
    /// Link `to` with the process at the other end of `link`.
    Link { to: String, link: LinkId, inc: u64 },
    /// Which run of the node is this? (Answered with `ControlReply::Incarnation`.)
    Whoami,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ControlReply {
    /// Done (monitor or link installed, message queued).
    Done,
    /// The answer to a call.
    Answer(Bytes),
    /// The process has already exited with this reason (monitor, link).
    Exited(RemoteExitReason),
    /// It failed.
    Failed(Failure),
    /// Installed (monitor, link), or the answer to `Whoami`: the answering node's
    /// incarnation, so a later restart of it is recognised.
    Incarnation(u64),
}
