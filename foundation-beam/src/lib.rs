//! Foundation L2 — BEAM-style process ecosystems on tokio.
//!
//! This crate will hold processes with two-lane mailboxes, supervision, ecosystems,
//! societies, message strategies and the yielding scheduler (see the workspace's
//! `ARCHITECTURE.md`). Today it re-exports the layer below, so that code written against
//! `foundation_beam::core` keeps compiling as the layer grows.
#![warn(missing_docs)]

/// The layer below: `foundation-core`.
pub use foundation_core as core;

pub mod scheduler;
pub mod table;
