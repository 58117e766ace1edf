//! The one error type of `foundation-distributed`.
//!
//! Codes continue the workspace scheme (core 1000–9099, beam 4000–4099) with 5000–5099:
//!
//! | range | area |
//! |---|---|
//! | 5000–5009 | addresses, settings, listeners |
//! | 5010–5019 | frames |
//! | 5020–5029 | handshake |
//! | 5030–5039 | established connections |
//! | 5040–5049 | named channels |
//!
//! Errors of the layers below keep their own codes.

use std::time::Duration;

use crate::transport::Refusal;

/// Result alias of `foundation-distributed`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of `foundation-distributed`.
///
/// Marked `#[non_exhaustive]`: match the variants you act on and keep a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address could not be used with this transport (wrong scheme, no host, ...).
    #[error("invalid address `{addr}`: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Transport settings were rejected; nothing was started.
    #[error("invalid transport settings: {reason}")]
    InvalidSettings {
        /// What is wrong.
        reason: String,
    },
    /// An in-memory address already has a listener.
    #[error("address `{addr}` is already in use")]
    AddressInUse {
        /// The address.
        addr: String,
    },
    /// Nothing listens at the address (in-memory), or its accept backlog is full.
    #[error("no listener accepts connections at `{addr}`")]
    NoListener {
        /// The address.
        addr: String,
    },
    /// The listener has shut down; no more connections will be accepted.
    #[error("listener `{addr}` has shut down")]
    ListenerClosed {
        /// The listener's local address.
        addr: String,
    },
    /// An I/O error on a socket or stream.
    #[error("I/O error with `{addr}`: {source}")]
    Io {
        /// The peer or local address concerned.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A frame announced a length above the limit; the connection was closed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length of the frame body.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// A frame body was not a valid envelope; the connection was closed.
    #[error("undecodable frame: {detail}")]
    Undecodable {
        /// The decoder's message.
        detail: String,
    },
    /// A valid envelope arrived where the protocol does not allow it (for example a data
    /// frame during the handshake); the connection was closed.
    #[error("unexpected `{got}` frame while {state}")]
    UnexpectedFrame {
        /// The kind of envelope received.
        got: &'static str,
        /// What the connection was doing.
        state: &'static str,
    },
    /// The handshake did not complete within the configured timeout.
    #[error("handshake with `{addr}` timed out after {after:?}")]
    HandshakeTimeout {
        /// The peer's address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The handshake was refused, by the peer (it told us why) or by us.
    #[error("handshake refused{}: {reason}", if *.by_peer { " by peer" } else { "" })]
    Refused {
        /// Why.
        reason: Refusal,
        /// `true` if the peer refused us, `false` if we refused the peer.
        by_peer: bool,
    },
    /// The connection is closed (by the peer, with its reason, or after an earlier error).
    #[error("connection closed: {reason}")]
    Closed {
        /// The reason given by the peer, or what happened locally.
        reason: String,
    },
    /// No channel of that name is configured.
    #[error("unknown channel `{channel}`")]
    UnknownChannel {
        /// The name asked for.
        channel: String,
    },
    /// A channel specification was rejected; nothing was started.
    #[error("invalid channel `{channel}`: {reason}")]
    InvalidChannel {
        /// The channel's name.
        channel: String,
        /// What is wrong.
        reason: String,
    },
    /// The connection a message was routed to has closed or failed; the message was not
    /// queued (it is counted in `foundation_channel_dropped_total{reason="closed"}`).
    #[error("channel `{channel}` connection {index} is closed: {reason}")]
    ChannelClosed {
        /// The channel.
        channel: String,
        /// The connection index within the channel.
        index: u16,
        /// Why it closed.
        reason: String,
    },
    /// No route to the node: unknown, down, or not reachable in the current topology.
    #[error("no route to node `{node}`")]
    UnknownNode {
        /// The node.
        node: String,
    },
    /// A request got no reply in time.
    #[error("request to node `{node}` timed out after {after:?}")]
    RequestTimeout {
        /// The node.
        node: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The remote node answered a request with an error.
    #[error("node `{node}` failed the request: {reason}")]
    RemoteFailed {
        /// The node.
        node: String,
        /// What it said.
        reason: String,
    },
    /// An API was used in a way it does not support.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The peer's channel table (channels, parallelism, routing) differs from this
    /// node's: its application traffic is refused both ways (D431). Give every node of
    /// the cluster the same channel table.
    #[error(
        "node `{node}` is refused: its channel table differs (ours: {ours}; theirs: {theirs})"
    )]
    ChannelTableMismatch {
        /// The node.
        node: String,
        /// This node's table, summarised.
        ours: String,
        /// The peer's table, summarised.
        theirs: String,
    },
    /// The peer is a known member but its link is not up (connecting, backing off, or
    /// the member is down); nothing was sent.
    #[error("node `{node}` is not connected: {reason}")]
    NotConnected {
        /// The node.
        node: String,
        /// Why (link state).
        reason: String,
    },
    /// A non-waiting send found the queue full; the message was not sent (counted).
    #[error("queue towards node `{node}` is full")]
    Full {
        /// The node.
        node: String,
    },
    /// The node refused work because a bound was reached (counted).
    #[error("node `{node}` is overloaded: {what}")]
    Overloaded {
        /// The node that refused.
        node: String,
        /// Which bound.
        what: String,
    },
    /// The node has shut down.
    #[error("node `{node}` has shut down")]
    NodeShutDown {
        /// The node.
        node: String,
    },
    /// An error of `foundation-beam`.
    #[error(transparent)]
    Beam(#[from] foundation_beam::Error),
    /// An error of `foundation-core`.
    #[error(transparent)]
    Core(#[from] foundation_beam::core::Error),
}

impl Error {
    /// Stable numeric code (5000–5099 for this crate; lower layers keep theirs).
    pub fn code(&self) -> u16 {
        match self {
            Error::InvalidAddress { .. } => 5000,
            Error::InvalidSettings { .. } => 5001,
            Error::AddressInUse { .. } => 5002,
            Error::NoListener { .. } => 5003,
            Error::ListenerClosed { .. } => 5004,
            Error::Io { .. } => 5005,
            Error::FrameTooLarge { .. } => 5010,
            Error::Undecodable { .. } => 5011,
            Error::UnexpectedFrame { .. } => 5012,
            Error::HandshakeTimeout { .. } => 5020,
            Error::Refused { .. } => 5021,
            Error::Closed { .. } => 5030,
            Error::UnknownChannel { .. } => 5040,
            Error::InvalidChannel { .. } => 5041,
            Error::ChannelClosed { .. } => 5042,
            Error::UnknownNode { .. } => 5050,
            Error::RequestTimeout { .. } => 5051,
            Error::RemoteFailed { .. } => 5052,
            Error::InvalidArgument(_) => 5053,
            Error::NotConnected { .. } => 5054,
            Error::Full { .. } => 5055,
            Error::Overloaded { .. } => 5056,
            Error::NodeShutDown { .. } => 5057,
            Error::ChannelTableMismatch { .. } => 5058,
            Error::Beam(e) => e.code(),
            Error::Core(e) => e.code(),
        }
    }

    /// Whether trying again (typically: reconnecting) can succeed. A refusal for a
    /// wrong secret, cluster or version, a protocol violation and bad settings are not
    /// retryable: the same attempt would fail the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NoListener { .. }
            | Error::Io { .. }
            | Error::HandshakeTimeout { .. }
            | Error::Closed { .. }
            | Error::UnknownNode { .. }
            | Error::NotConnected { .. }
            | Error::Full { .. }
            | Error::Overloaded { .. }
            | Error::RequestTimeout { .. } => true,
            Error::Refused { reason, .. } => matches!(reason, Refusal::Busy),
            Error::Beam(e) => e.is_retryable(),
            Error::Core(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn io(addr: &str, source: std::io::Error) -> Self {
        Error::Io {
            addr: addr.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_range() {
        let errors = [
            Error::InvalidAddress {
                addr: String::new(),
                reason: "",
            },
            Error::InvalidSettings {
                reason: String::new(),
            },
            Error::AddressInUse {
                addr: String::new(),
            },
            Error::NoListener {
                addr: String::new(),
            },
            Error::ListenerClosed {
                addr: String::new(),
            },
            Error::io("", std::io::Error::other("x")),
            Error::FrameTooLarge { len: 0, max: 0 },
            Error::Undecodable {
                detail: String::new(),
            },
            Error::UnexpectedFrame { got: "", state: "" },
            Error::HandshakeTimeout {
                addr: String::new(),
                after: Duration::ZERO,
            },
            Error::Refused {
                reason: Refusal::Authentication,
                by_peer: true,
            },
            Error::Closed {
                reason: String::new(),
            },
            Error::UnknownChannel {
                channel: String::new(),
            },
            Error::InvalidChannel {
                channel: String::new(),
                reason: String::new(),
            },
            Error::ChannelClosed {
                channel: String::new(),
                index: 0,
                reason: String::new(),
            },
        ];
        let mut codes: Vec<u16> = errors.iter().map(Error::code).collect();
        assert!(codes.iter().all(|c| (5000..5100).contains(c)));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
    }

    #[test]
    fn retryability() {
        assert!(Error::HandshakeTimeout {
            addr: String::new(),
            after: Duration::ZERO
        }
        .is_retryable());
        assert!(!Error::Refused {
            reason: Refusal::Authentication,
            by_peer: false
        }
        .is_retryable());
        assert!(Error::Refused {
            reason: Refusal::Busy,
            by_peer: true
        }
        .is_retryable());
        assert!(!Error::FrameTooLarge { len: 9, max: 1 }.is_retryable());
    }
}
