//! What remote-process services say to each other, through the node's public API.
//!
//! One-way signals go through [`Node::send`](crate::node::Node::send) to the receivers
//! [`SIGNALS`] (normal) and [`URGENT_SIGNALS`] (urgent casts); calls and set-up requests
//! (monitor, link, confirmed send) through [`Node::request`](crate::node::Node::request)
//! to the server [`CONTROL`], so each has a reply.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::Failure;
use super::exit::RemoteExitReason;
use super::names::Claim;

/// Receiver of normal signals.
pub(crate) const SIGNALS: &str = "$remote";
/// Receiver of urgent casts (its own queue, so they never wait behind normal ones).
pub(crate) const URGENT_SIGNALS: &str = "$remote!urgent";
/// Server of calls and set-up requests.
pub(crate) const CONTROL: &str = "$remote/control";

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
    /// The process watched by monitor `monitor` (made by the receiving node) exited.
    Down {
        monitor: u64,
        reason: RemoteExitReason,
    },
    /// The other end of link `link` exited with `reason`.
    LinkExit {
        link: LinkId,
        reason: RemoteExitReason,
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
    /// A call to the process registered as `to`; the process answers within `timeout_ms`.
    Call {
        to: String,
        urgent: bool,
        timeout_ms: u64,
        body: Bytes,
    },
    /// A cast whose reply says it was queued in the mailbox.
    Deliver {
        to: String,
        urgent: bool,
        body: Bytes,
    },
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
