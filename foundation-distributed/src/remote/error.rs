//! Errors of remote-process operations.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Result alias of the remote-process API.
pub type RemoteResult<T> = std::result::Result<T, RemoteError>;

/// Why a remote `send`, `call`, `monitor`, `link` or name registration failed.
///
/// Codes 5080–5099 (this crate's range, see [`crate::error`]). `#[non_exhaustive]`: match
/// what you act on and keep a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The process's node is declared down, has left, or is not reachable (Erlang's
    /// `noconnection`). Nothing was delivered, or — for a call in flight when the node went
    /// down — whether it was handled is unknown.
    #[error("node `{node}` is down or unreachable")]
    NoConnection {
        /// The node.
        node: String,
    },
    /// Nothing is registered under the name on that node (never was, or it stopped).
    #[error("no process named `{name}` on node `{node}`")]
    NoProcess {
        /// The node.
        node: String,
        /// The name.
        name: String,
    },
    /// The process stopped, or dropped the reply, before answering the call.
    #[error("process `{name}` on node `{node}` did not reply")]
    NoReply {
        /// The node.
        node: String,
        /// The name.
        name: String,
    },
    /// The process's mailbox was full and its policy refuses new messages.
    #[error("mailbox of `{name}` on node `{node}` is full")]
    MailboxFull {
        /// The node.
        node: String,
        /// The name.
        name: String,
    },
    /// No reply within the timeout. The request may still be handled; its late reply is
    /// dropped.
    #[error("call to `{name}` on node `{node}` timed out after {after:?}")]
    Timeout {
        /// The node.
        node: String,
        /// The name.
        name: String,
        /// The timeout.
        after: Duration,
    },
    /// The receiving node could not decode the message as the process's type (the two
    /// sides disagree on the type), or this node could not decode the reply.
    #[error("`{name}` on node `{node}`: undecodable message: {detail}")]
    Undecodable {
        /// The node.
        node: String,
        /// The name.
        name: String,
        /// The decoder's message.
        detail: String,
    },
    /// The message could not be encoded; nothing was sent.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The name is already registered (locally, or cluster-wide by another node).
    #[error("name `{name}` is already registered on node `{node}`")]
    NameTaken {
        /// The name.
        name: String,
        /// The node that holds it.
        node: String,
    },
    /// The remote-process service was shut down.
    #[error("the remote-process service is shut down")]
    Closed,
    /// The node failed to carry the message (no route, a closed link, ...).
    #[error(transparent)]
    Node(#[from] crate::Error),
}

impl RemoteError {
    /// Stable numeric code (5080–5099; a wrapped node error keeps its own).
    pub fn code(&self) -> u16 {
        match self {
            RemoteError::NoConnection { .. } => 5080,
            RemoteError::NoProcess { .. } => 5081,
            RemoteError::NoReply { .. } => 5082,
            RemoteError::MailboxFull { .. } => 5083,
            RemoteError::Timeout { .. } => 5084,
            RemoteError::Undecodable { .. } => 5085,
            RemoteError::Encode(_) => 5086,
            RemoteError::NameTaken { .. } => 5087,
            RemoteError::Closed => 5088,
            RemoteError::Node(e) => e.code(),
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RemoteError::NoConnection { .. }
            | RemoteError::MailboxFull { .. }
            | RemoteError::Timeout { .. } => true,
            RemoteError::Node(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// A short label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            RemoteError::NoConnection { .. } => "noconnection",
            RemoteError::NoProcess { .. } => "noproc",
            RemoteError::NoReply { .. } => "no_reply",
            RemoteError::MailboxFull { .. } => "mailbox_full",
            RemoteError::Timeout { .. } => "timeout",
            RemoteError::Undecodable { .. } => "undecodable",
            RemoteError::Encode(_) => "encode",
            RemoteError::NameTaken { .. } => "name_taken",
            RemoteError::Closed => "closed",
            RemoteError::Node(_) => "node",
        }
    }
}

/// A failure as it crosses the wire, turned into a [`RemoteError`] by the caller's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    NoProcess,
    NoReply,
    MailboxFull,
    Timeout,
    Undecodable(String),
    /// The answering node has too many calls in flight.
    Overloaded,
}

impl Failure {
    pub(crate) fn into_error(self, node: &str, name: &str, after: Duration) -> RemoteError {
        let (node, name) = (node.to_string(), name.to_string());
        match self {
            Failure::NoProcess => RemoteError::NoProcess { node, name },
            Failure::NoReply => RemoteError::NoReply { node, name },
            Failure::MailboxFull => RemoteError::MailboxFull { node, name },
            Failure::Timeout => RemoteError::Timeout { node, name, after },
            Failure::Undecodable(detail) => RemoteError::Undecodable { node, name, detail },
            Failure::Overloaded => RemoteError::Node(crate::Error::Overloaded {
                node,
                what: "remote calls in flight".into(),
            }),
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Failure::NoProcess => "noproc",
            Failure::NoReply => "no_reply",
            Failure::MailboxFull => "mailbox_full",
            Failure::Timeout => "timeout",
            Failure::Undecodable(_) => "undecodable",
            Failure::Overloaded => "overloaded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_range() {
        let (node, name) = (String::new(), String::new());
        let errors = [
            RemoteError::NoConnection { node: node.clone() },
            RemoteError::NoProcess {
                node: node.clone(),
                name: name.clone(),
            },
            RemoteError::NoReply {
                node: node.clone(),
                name: name.clone(),
            },
            RemoteError::MailboxFull {
                node: node.clone(),
                name: name.clone(),
            },
            RemoteError::Timeout {
                node: node.clone(),
                name: name.clone(),
                after: Duration::ZERO,
            },
            RemoteError::Undecodable {
                node: node.clone(),
                name: name.clone(),
                detail: String::new(),
            },
            RemoteError::Encode(String::new()),
            RemoteError::NameTaken { name, node },
            RemoteError::Closed,
        ];
        let mut codes: Vec<u16> = errors.iter().map(RemoteError::code).collect();
        assert!(codes.iter().all(|c| (5080..5100).contains(c)));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
    }
}
