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
//!
//! # Feature flags
//! * `assumptions` — compiles the heavy assumption tests
//!   (`cargo test --workspace --features assumptions`).
#![warn(missing_docs)]

pub mod budget;
pub mod config;
pub mod error;
pub mod events;

pub use error::{Error, Limit, Result};
