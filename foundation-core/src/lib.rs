//! Foundation L1 — the enhanced core services.
//!
//! Configuration, errors, a local service registry and resilience primitives that any tokio
//! service can use on their own, without the actor runtime of `foundation-beam`. Core
//! services shard their own work with plain tokio tasks: one writer task per configuration
//! namespace, readers that never wait for it.
//!
//! # Modules
//! * [`config`] — namespaced, layered, validated configuration with history and
//!   subscriptions.
//! * [`error`] — the crate's one error enum, with stable codes and retry advice.
//! * [`budget`] — a work budget that makes long loops yield to the scheduler.
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

pub use error::{Error, FrameDirection, Limit, Result};
