//! Foundation L4 — evidence-driven adaptation.
//!
//! This crate will hold hypotheses, predictive scaling, rollouts, experiment guards and
//! the `foundation` node binary (see the workspace's `ARCHITECTURE.md`). Today it
//! re-exports the layers below.
#![warn(missing_docs)]

/// The layer below: `foundation-distributed`.
pub use foundation_distributed as distributed;
/// `foundation-beam`, reached through the layers below.
pub use foundation_distributed::beam;
/// `foundation-core`, reached through the layers below.
pub use foundation_distributed::core;
