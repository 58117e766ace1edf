//! Why a remote process is gone, as a monitor or a link on another node learns it.

use std::fmt;

use foundation_beam::ExitReason;
use serde::{Deserialize, Serialize};

/// Why a monitored (or linked) remote process is gone.
///
/// The first six variants mirror [`ExitReason`]: the process stopped and its node said
/// why. The last two are Erlang's `noproc` and `noconnection`: nothing was registered
/// under the name when the monitor was set up, or the process's node was declared down,
/// left, or could not be reached — the process may still be running there, but this
/// node will not hear from it again through this monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteExitReason {
    /// It stopped normally (its mailbox closed, or it stopped itself).
    Normal,
    /// It was asked to stop.
    Shutdown,
    /// It was killed.
    Killed,
    /// A handler panicked, with the panic message.
    Panic(String),
    /// A process linked to it failed, so it was stopped too.
    Linked {
        /// The linked process that failed, as its node displays it.
        peer: String,
        /// Why that process failed.
        reason: Box<RemoteExitReason>,
    },
    /// It reported a failure, or its supervisor gave up.
    Failed(String),
    /// Nothing was registered under the name on that node (Erlang's `noproc`).
    NoProcess,
    /// Its node was declared down, left the cluster, or could not be reached (Erlang's
    /// `noconnection`). The process itself may still be running.
    NoConnection {
        /// The node.
        node: String,
    },
}

impl RemoteExitReason {
    /// Whether this is a failure. `NoConnection` and `NoProcess` count as failures (a
    /// link propagates them), like Erlang's `noconnection` and `noproc` exit signals.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, RemoteExitReason::Normal | RemoteExitReason::Shutdown)
    }
}

impl From<&ExitReason> for RemoteExitReason {
    fn from(r: &ExitReason) -> Self {
        match r {
            ExitReason::Normal => RemoteExitReason::Normal,
            ExitReason::Shutdown => RemoteExitReason::Shutdown,
            ExitReason::Killed => RemoteExitReason::Killed,
            ExitReason::Panic(m) => RemoteExitReason::Panic(m.clone()),
            ExitReason::Linked { peer, reason } => RemoteExitReason::Linked {
                peer: peer.to_string(),
                reason: Box::new(RemoteExitReason::from(&**reason)),
            },
            ExitReason::Failed(m) => RemoteExitReason::Failed(m.clone()),
            // `ExitReason` is non-exhaustive: a reason added later crosses as its text.
            other => RemoteExitReason::Failed(other.to_string()),
        }
    }
}

impl fmt::Display for RemoteExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteExitReason::Normal => f.write_str("normal"),
            RemoteExitReason::Shutdown => f.write_str("shutdown"),
            RemoteExitReason::Killed => f.write_str("killed"),
            RemoteExitReason::Panic(m) => write!(f, "panic: {m}"),
            RemoteExitReason::Linked { peer, reason } => {
                write!(f, "linked process {peer} exited: {reason}")
            }
            RemoteExitReason::Failed(m) => write!(f, "failed: {m}"),
            RemoteExitReason::NoProcess => f.write_str("noproc"),
            RemoteExitReason::NoConnection { node } => write!(f, "noconnection: node `{node}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_beam_reasons_and_round_trips() {
        let r = RemoteExitReason::from(&ExitReason::Panic("boom".into()));
        assert_eq!(r, RemoteExitReason::Panic("boom".into()));
        assert!(r.is_abnormal());
        assert!(!RemoteExitReason::from(&ExitReason::Normal).is_abnormal());
        for r in [
            r,
            RemoteExitReason::NoConnection { node: "b".into() },
            RemoteExitReason::Linked {
                peer: "<3>".into(),
                reason: Box::new(RemoteExitReason::Killed),
            },
        ] {
            let bytes = rmp_serde::to_vec_named(&r).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<RemoteExitReason>(&bytes).unwrap(),
                r
            );
        }
    }
}
