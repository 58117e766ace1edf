//! The one error type of `foundation-beam`.
//!
//! Mailbox sends return [`SendError`](crate::mailbox::SendError) instead, which hands the
//! unsent message back (like `tokio::sync::mpsc`).

use std::time::Duration;

use crate::process::{ExitReason, ProcessId};

/// Result alias of `foundation-beam`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of `foundation-beam`. Codes continue `foundation-core`'s scheme (4000–4099).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call got no answer in time. The late answer, if any, is dropped.
    #[error("call to process {process} timed out after {after:?}")]
    Timeout {
        /// The process called.
        process: ProcessId,
        /// The timeout.
        after: Duration,
    },
    /// The process had stopped; the message was not delivered.
    #[error("process {process} has stopped")]
    Stopped {
        /// The process.
        process: ProcessId,
    },
    /// The process dropped the reply without answering (or stopped while handling it).
    #[error("process {process} did not reply")]
    NoReply {
        /// The process.
        process: ProcessId,
    },
    /// The mailbox was full and its policy refuses or drops new messages.
    #[error("mailbox of process {process} is full")]
    MailboxFull {
        /// The process.
        process: ProcessId,
    },
    /// An ecosystem or supervisor was asked for something it cannot do.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The ecosystem or supervisor has shut down.
    #[error("{0} has shut down")]
    Shutdown(&'static str),
    /// A society was asked about a member it does not have.
    #[error("society `{society}` has no member {member}")]
    UnknownMember {
        /// The society's name.
        society: String,
        /// The member index asked for.
        member: usize,
    },
    /// A message target has stopped; the message was not delivered.
    #[error("message target {target} has stopped")]
    TargetClosed {
        /// The target's key ([`Deliver::key`](crate::message::Deliver::key)).
        target: u64,
    },
    /// The process stopped — panicked, or was killed — while it held the call's message
    /// (handling it, or keeping its `Reply`). The message **was delivered** and may have
    /// been partly handled, so it is not retried for you: retry only if the request is
    /// idempotent.
    #[error("process {process} stopped ({reason}) while handling the call")]
    Interrupted {
        /// The process.
        process: ProcessId,
        /// Why it stopped.
        reason: ExitReason,
    },
    /// No worker of the ecosystem was running within the call's timeout (all were being
    /// restarted). The message was **not delivered**: trying again is safe.
    #[error("no worker of ecosystem `{ecosystem}` was running within {waited:?}")]
    Unavailable {
        /// The ecosystem's name.
        ecosystem: String,
        /// How long the call waited for a worker.
        waited: Duration,
    },
    /// The ecosystem's coordinator has stopped — it was shut down, or gave up after its
    /// restart intensity was exceeded — so no worker will run again. The message was
    /// not delivered.
    #[error("ecosystem `{ecosystem}` is down: {reason}")]
    EcosystemDown {
        /// The ecosystem's name.
        ecosystem: String,
        /// Why its coordinator stopped.
        reason: ExitReason,
    },
    /// An error of the layer below.
    #[error(transparent)]
    Core(#[from] foundation_core::Error),
}

impl Error {
    /// Stable numeric code.
    pub fn code(&self) -> u16 {
        match self {
            Error::Timeout { .. } => 4000,
            Error::Stopped { .. } => 4001,
            Error::NoReply { .. } => 4002,
            Error::MailboxFull { .. } => 4003,
            Error::InvalidArgument(_) => 4004,
            Error::Shutdown(_) => 4005,
            Error::UnknownMember { .. } => 4010,
            Error::TargetClosed { .. } => 4011,
            Error::Interrupted { .. } => 4012,
            Error::Unavailable { .. } => 4013,
            Error::EcosystemDown { .. } => 4014,
            Error::Core(e) => e.code(),
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::MailboxFull { .. } | Error::Unavailable { .. } => true,
            Error::Core(e) => e.is_retryable(),
            _ => false,
        }
    }
}
