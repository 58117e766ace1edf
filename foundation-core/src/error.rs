//! The one error type of `foundation-core`.
//!
//! Every fallible operation of this crate returns [`Error`]. Variants carry the data a
//! caller needs to act (which namespace and path, which limit, which service), each has
//! a stable numeric [`Error::code`], and [`Error::is_retryable`] /
//! [`Error::retry_delay`] tell whether and when trying again can help.
//!
//! Codes are grouped by area and never reused:
//!
//! | range | area |
//! |---|---|
//! | 1000–1099 | configuration |
//! | 1100–1199 | events (streams, store) |
//! | 1200–1299 | ports and event correlation |
//! | 2000–2099 | service registry |
//! | 3000–3099 | resilience (breaker, limiter, timeouts) |
//! | 9000–9099 | general (shutdown, I/O, encoding) |

use std::time::Duration;

/// Result alias used throughout `foundation-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A limit that an operation exceeded. See [`Error::LimitExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Number of segments in a configuration path.
    PathDepth,
    /// Length in bytes of one path segment.
    SegmentLength,
    /// Encoded size in bytes of one configuration value.
    ValueSize,
    /// Nesting depth of a structured value (tables within tables, arrays within arrays).
    NestingDepth,
    /// Number of keys in one namespace.
    KeyCount,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::PathDepth => "path depth",
            Limit::SegmentLength => "path segment length",
            Limit::ValueSize => "value size",
            Limit::NestingDepth => "nesting depth",
            Limit::KeyCount => "key count",
        })
    }
}

/// Which way a frame was going through a [`crate::port::Port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameDirection {
    /// A request, from this process to the child.
    ToChild,
    /// A reply, from the child to this process.
    FromChild,
}

impl std::fmt::Display for FrameDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameDirection::ToChild => "request",
            FrameDirection::FromChild => "reply",
        })
    }
}

/// Errors of `foundation-core`.
///
/// Marked `#[non_exhaustive]`: match the variants you act on and keep a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- configuration (1000..) ----
    /// A configuration path is empty or malformed (empty segment, bad character).
    #[error("invalid configuration path `{path}`: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace name is empty or malformed.
    #[error("invalid namespace name `{namespace}`: {reason}")]
    InvalidNamespace {
        /// The name as given.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace was created twice.
    #[error("namespace `{namespace}` already exists")]
    NamespaceExists {
        /// The namespace.
        namespace: String,
    },
    /// A namespace that does not exist was named.
    #[error("namespace `{namespace}` does not exist")]
    NamespaceNotFound {
        /// The namespace.
        namespace: String,
    },
    /// No value is stored at this path.
    #[error("no value at `{namespace}:{path}`")]
    KeyNotFound {
        /// The namespace.
        namespace: String,
        /// The path.
        path: String,
    },
    /// The stored value could not be decoded as the requested type.
    #[error("value at `{namespace}:{path}` cannot be read as `{expected}`: {detail}")]
    TypeMismatch {
        /// The namespace.
        namespace: String,
        /// The path.
        path: String,
        /// The requested Rust type.
        expected: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A value could not be encoded to MessagePack.
    #[error("value for `{path}` cannot be encoded: {detail}")]
    Encode {
        /// The path the value was meant for.
        path: String,
        /// The encoder's message.
        detail: String,
    },
    /// A validator registered for the path rejected the update.
    #[error("update of `{namespace}:{path}` rejected by rule `{rule}`: {reason}")]
    Validation {
        /// The namespace.
        namespace: String,
        /// The path that was updated.
        path: String,
        /// The rule that rejected it.
        rule: String,
        /// Why.
        reason: String,
    },
    /// The path lies under a frozen prefix; updates are rejected.
    #[error("`{namespace}:{path}` is frozen (frozen prefix `{frozen}`)")]
    Frozen {
        /// The namespace.
        namespace: String,
        /// The path that was updated.
        path: String,
        /// The frozen prefix that covers it.
        frozen: String,
    },
    /// A configured limit was exceeded.
    #[error("{limit} limit exceeded at `{path}`: {actual} > {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The configured maximum.
        max: usize,
        /// What the operation needed.
        actual: usize,
        /// The path concerned.
        path: String,
    },
    /// A configuration source (file, environment) is malformed. Nothing was applied.
    #[error("{}", source_message(.source_name, .key.as_deref(), *.line, .reason))]
    Source {
        /// The source: `file <path>` or `env <VARIABLE>`.
        source_name: String,
        /// The key concerned, if one could be named.
        key: Option<String>,
        /// 1-based line in the file, for file sources.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The requested version is not in the key's history.
    #[error("version {version} of `{namespace}:{path}` is not in its history")]
    VersionNotFound {
        /// The namespace.
        namespace: String,
        /// The path.
        path: String,
        /// The version asked for.
        version: u64,
    },

    // ---- ports and correlation (1200..) ----
    /// A frame is larger than the port's `max_frame`. For a request (`direction`
    /// [`FrameDirection::ToChild`]) nothing was sent; for a reply the child was killed and
    /// is restarted.
    #[error("port `{port}`: {direction} frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The port's name.
        port: String,
        /// Which way the frame was going.
        direction: FrameDirection,
        /// The frame's length (as declared by its header, for a reply).
        size: usize,
        /// The port's `max_frame`.
        max: usize,
    },
    /// The child broke the framing protocol (a truncated frame, or a reply when no request
    /// was outstanding). The child was killed and is restarted.
    #[error("port `{port}`: protocol violation: {reason}")]
    PortProtocol {
        /// The port's name.
        port: String,
        /// What the child did.
        reason: String,
    },
    /// The child exited or was killed while the request was outstanding. The port restarts
    /// it; the request may or may not have been processed.
    #[error("port `{port}`: child stopped with the request outstanding: {reason}")]
    PortExited {
        /// The port's name.
        port: String,
        /// How it stopped (exit status, signal, or why it was killed).
        reason: String,
    },
    /// The child is being restarted and will not be running before the request's deadline.
    #[error("port `{port}` is restarting; retry in {retry_after:?}")]
    PortRestarting {
        /// The port's name.
        port: String,
        /// Time until the next start attempt.
        retry_after: Duration,
    },
    /// The child failed more often than the restart policy allows; the port is stopped.
    #[error("port `{port}` gave up after {restarts} restarts without a healthy period")]
    PortGaveUp {
        /// The port's name.
        port: String,
        /// Consecutive restarts made before giving up.
        restarts: u32,
    },
    /// The correlator answered with an error, or with a reply that could not be decoded.
    #[error("correlation failed: {reason}")]
    Correlation {
        /// What went wrong.
        reason: String,
    },

    // ---- events (1100..) ----
    /// A new event stream was needed but the configured number of streams is reached.
    #[error("cannot create a stream for event type `{event_type}`: {max} streams exist")]
    TooManyStreams {
        /// The event type that needed a stream.
        event_type: String,
        /// The configured maximum number of streams.
        max: usize,
    },
    /// An event's encoded record is larger than the store accepts.
    #[error("event {id} is {size} bytes encoded; the store accepts at most {max}")]
    EventTooLarge {
        /// The event's id.
        id: String,
        /// Its encoded size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    // ---- registry (2000..) ----
    /// A service with this name is already registered.
    #[error("service `{name}` is already registered")]
    AlreadyRegistered {
        /// The service name.
        name: String,
    },
    /// No service with this name is registered.
    #[error("service `{name}` is not registered")]
    ServiceNotFound {
        /// The service name.
        name: String,
    },
    /// A health check reported the service unhealthy (or did not answer in time).
    #[error("service `{name}` is unhealthy: {reason}")]
    Unhealthy {
        /// The service name.
        name: String,
        /// What the check said.
        reason: String,
    },
    /// A service is registered with a handle of another type than the one asked for.
    #[error("service `{name}` has a handle of type `{actual}`, not `{expected}`")]
    HandleTypeMismatch {
        /// The service name.
        name: String,
        /// The handle type the caller asked for.
        expected: &'static str,
        /// The handle type the service was registered with.
        actual: &'static str,
    },

    // ---- resilience (3000..) ----
    /// The operation did not finish in time.
    #[error("`{operation}` timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The circuit breaker is open; the call was not made.
    #[error("circuit `{name}` is open; retry in {retry_after:?}")]
    CircuitOpen {
        /// The breaker's name.
        name: String,
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The rate limiter rejected the call.
    #[error("rate limit for `{key}` exceeded; retry in {retry_after:?}")]
    RateLimited {
        /// The limited key (`entity/operation`).
        key: String,
        /// Earliest time at which a call can pass.
        retry_after: Duration,
    },

    // ---- general (9000..) ----
    /// The component has shut down and no longer accepts requests.
    #[error("{component} has shut down")]
    Shutdown {
        /// Which component.
        component: &'static str,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An API was used in a way it does not support (bad argument, bad state).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn source_message(source: &str, key: Option<&str>, line: Option<usize>, reason: &str) -> String {
    let mut s = format!("malformed configuration source {source}");
    if let Some(line) = line {
        s.push_str(&format!(" at line {line}"));
    }
    if let Some(key) = key {
        s.push_str(&format!(" (key `{key}`)"));
    }
    s.push_str(": ");
    s.push_str(reason);
    s
}

/// Base delay of [`Error::retry_delay`].
pub const RETRY_BASE: Duration = Duration::from_millis(50);
/// Cap of [`Error::retry_delay`].
pub const RETRY_CAP: Duration = Duration::from_secs(30);

impl Error {
    /// Stable numeric code of this error. Codes are never reused for another meaning.
    pub fn code(&self) -> u16 {
        match self {
            Error::InvalidPath { .. } => 1000,
            Error::InvalidNamespace { .. } => 1001,
            Error::NamespaceExists { .. } => 1002,
            Error::NamespaceNotFound { .. } => 1003,
            Error::KeyNotFound { .. } => 1004,
            Error::TypeMismatch { .. } => 1005,
            Error::Encode { .. } => 1006,
            Error::Validation { .. } => 1007,
            Error::Frozen { .. } => 1008,
            Error::LimitExceeded { .. } => 1009,
            Error::Source { .. } => 1010,
            Error::VersionNotFound { .. } => 1011,
            Error::FrameTooLarge { .. } => 1200,
            Error::PortProtocol { .. } => 1201,
            Error::PortExited { .. } => 1202,
            Error::PortRestarting { .. } => 1203,
            Error::PortGaveUp { .. } => 1204,
            Error::Correlation { .. } => 1210,
            Error::TooManyStreams { .. } => 1100,
            Error::EventTooLarge { .. } => 1101,
            Error::AlreadyRegistered { .. } => 2000,
            Error::ServiceNotFound { .. } => 2001,
            Error::Unhealthy { .. } => 2002,
            Error::HandleTypeMismatch { .. } => 2003,
            Error::Timeout { .. } => 3000,
            Error::CircuitOpen { .. } => 3001,
            Error::RateLimited { .. } => 3002,
            Error::Shutdown { .. } => 9000,
            Error::Io { .. } => 9001,
            Error::InvalidArgument(_) => 9002,
        }
    }

    /// Whether the same call may succeed if made again later.
    ///
    /// True for transient conditions (timeouts, open breakers, rate limits, unhealthy or
    /// not-yet-registered services, interrupted I/O); false for errors in the request
    /// itself, which fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::CircuitOpen { .. }
            | Error::RateLimited { .. }
            | Error::PortProtocol { .. }
            | Error::PortExited { .. }
            | Error::PortRestarting { .. }
            | Error::Unhealthy { .. }
            | Error::ServiceNotFound { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// How long to wait before attempt number `attempt` (0-based) of a retry, or `None`
    /// when the error is not retryable.
    ///
    /// The delay is `RETRY_BASE * 2^attempt`, capped at [`RETRY_CAP`], and never shorter
    /// than the wait the error itself names (`retry_after` of a rate limit or open
    /// breaker). It carries no jitter; [`crate::resilience::Backoff`] adds jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use foundation_core::Error;
    ///
    /// let e = Error::Timeout { operation: "fetch".into(), after: Duration::from_secs(1) };
    /// assert_eq!(e.retry_delay(0), Some(Duration::from_millis(50)));
    /// assert_eq!(e.retry_delay(3), Some(Duration::from_millis(400)));
    /// assert_eq!(e.retry_delay(40), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        if !self.is_retryable() {
            return None;
        }
        let exp = capped_exponential(RETRY_BASE, RETRY_CAP, attempt);
        let floor = match self {
            Error::RateLimited { retry_after, .. }
            | Error::CircuitOpen { retry_after, .. }
            | Error::PortRestarting { retry_after, .. } => *retry_after,
            _ => Duration::ZERO,
        };
        Some(exp.max(floor))
    }
}

/// `base * 2^attempt`, saturating at `cap`.
pub(crate) fn capped_exponential(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let errors = vec![
            Error::InvalidPath {
                path: String::new(),
                reason: String::new(),
            },
            Error::InvalidNamespace {
                namespace: String::new(),
                reason: String::new(),
            },
            Error::NamespaceExists {
                namespace: String::new(),
            },
            Error::NamespaceNotFound {
                namespace: String::new(),
            },
            Error::KeyNotFound {
                namespace: String::new(),
                path: String::new(),
            },
            Error::TypeMismatch {
                namespace: String::new(),
                path: String::new(),
                expected: "u8",
                detail: String::new(),
            },
            Error::Encode {
                path: String::new(),
                detail: String::new(),
            },
            Error::Validation {
                namespace: String::new(),
                path: String::new(),
                rule: String::new(),
                reason: String::new(),
            },
            Error::Frozen {
                namespace: String::new(),
                path: String::new(),
                frozen: String::new(),
            },
            Error::LimitExceeded {
                limit: Limit::ValueSize,
                max: 1,
                actual: 2,
                path: String::new(),
            },
            Error::Source {
                source_name: String::new(),
                key: None,
                line: None,
                reason: String::new(),
            },
            Error::VersionNotFound {
                namespace: String::new(),
                path: String::new(),
                version: 1,
            },
            Error::FrameTooLarge {
                port: String::new(),
                direction: FrameDirection::ToChild,
                size: 2,
                max: 1,
            },
            Error::PortProtocol {
                port: String::new(),
                reason: String::new(),
            },
            Error::PortExited {
                port: String::new(),
                reason: String::new(),
            },
            Error::PortRestarting {
                port: String::new(),
                retry_after: Duration::ZERO,
            },
            Error::PortGaveUp {
                port: String::new(),
                restarts: 1,
            },
            Error::Correlation {
                reason: String::new(),
            },
            Error::TooManyStreams {
                event_type: String::new(),
                max: 1,
            },
            Error::EventTooLarge {
                id: String::new(),
                size: 2,
                max: 1,
            },
            Error::AlreadyRegistered {
                name: String::new(),
            },
            Error::ServiceNotFound {
                name: String::new(),
            },
            Error::Unhealthy {
                name: String::new(),
                reason: String::new(),
            },
            Error::HandleTypeMismatch {
                name: String::new(),
                expected: "a",
                actual: "b",
            },
            Error::Timeout {
                operation: String::new(),
                after: Duration::ZERO,
            },
            Error::CircuitOpen {
                name: String::new(),
                retry_after: Duration::ZERO,
            },
            Error::RateLimited {
                key: String::new(),
                retry_after: Duration::ZERO,
            },
            Error::Shutdown { component: "x" },
            Error::Io {
                context: String::new(),
                source: std::io::Error::other("x"),
            },
            Error::InvalidArgument(String::new()),
        ];
        let mut codes: Vec<u16> = errors.iter().map(Error::code).collect();
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "duplicate error codes");
    }

    #[test]
    fn retry_delay_is_capped_exponential_and_respects_retry_after() {
        let e = Error::RateLimited {
            key: "k".into(),
            retry_after: Duration::from_secs(2),
        };
        assert_eq!(e.retry_delay(0), Some(Duration::from_secs(2)));
        assert_eq!(e.retry_delay(10), Some(RETRY_CAP));
        assert_eq!(e.retry_delay(u32::MAX), Some(RETRY_CAP));
        let e = Error::InvalidPath {
            path: "".into(),
            reason: "".into(),
        };
        assert!(!e.is_retryable());
        assert_eq!(e.retry_delay(0), None);
    }

    #[test]
    fn source_error_names_source_key_and_line() {
        let e = Error::Source {
            source_name: "file app.toml".into(),
            key: Some("db.port".into()),
            line: Some(7),
            reason: "expected an integer".into(),
        };
        assert_eq!(
            e.to_string(),
            "malformed configuration source file app.toml at line 7 (key `db.port`): expected an integer"
        );
    }
}
