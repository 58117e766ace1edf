//! Foundation L3 — Partisan-style distribution.
//!
//! This crate will hold the authenticated transport, named parallel channels, overlay
//! topologies and membership (see the workspace's `ARCHITECTURE.md`). Today it re-exports
//! the layers below: `foundation_distributed::beam` and `foundation_distributed::core`.
#![warn(missing_docs)]

pub mod discovery;
pub mod interpose;
pub mod membership;

/// The layer below: `foundation-beam`.
pub use foundation_beam as beam;
/// `foundation-core`, reached through the layer below.
pub use foundation_beam::core;

/// Describes every metric of this layer and the layers below (the HELP lines of the
/// Prometheus exposition) to the current recorder.
pub fn describe_metrics() {
    foundation_beam::describe_metrics();
    interpose::describe_metrics();
}
