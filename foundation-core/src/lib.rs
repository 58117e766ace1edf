//! Foundation L1 — the enhanced core services.
//!
//! Configuration, events, errors, a local service registry and resilience primitives that any tokio
//! service can use on their own, without the actor runtime of `foundation-beam`. Core
//! services shard their own work with plain tokio tasks: one writer task per configuration
//! namespace, readers that never wait for it.
//!
//! # Modules
//! * [`config`] — namespaced, layered, validated configuration with history and
//!   subscriptions.
//! * [`events`] — typed events: per-type streams with an urgent lane, filtered
//!   subscriptions, and a bounded, queryable, optionally durable store.
//! * [`error`] — the crate's one error enum, with stable codes and retry advice.
//! * [`budget`] — a work budget that makes long loops yield to the scheduler.
//! * [`registry`] — a local service registry: name → typed handle, with metadata, health
//!   checks, and entries that disappear when their service stops.
//! * [`resilience`] — circuit breaker, keyed rate limiter, retry with backoff and jitter,
//!   and `execute_protected` that combines them.
//! * [`telemetry`] — a per-thread sharded metrics recorder, a Prometheus endpoint and
//!   runtime metrics.
//! * [`events`] — typed events with correlation and causality, and their correlation in
//!   an external process.
//! * [`port`] — an external program spoken to with 4-byte length-prefixed frames,
//!   restarted when it fails.
//!
//! # Binaries
//! * `foundation-correlator` — the event correlator run behind a [`port::Port`] by
//!   [`events::Correlator`].
//!
//! # Feature flags
//! * `assumptions` — compiles the heavy assumption tests
//!   (`cargo test --workspace --features assumptions`).
#![warn(missing_docs)]

pub mod budget;
pub mod config;
pub mod error;
pub mod events;
pub mod port;
pub mod registry;
pub mod resilience;
pub mod telemetry;

pub use error::{Error, FrameDirection, Limit, Result};
