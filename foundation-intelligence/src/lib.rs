//! Foundation L4 — evidence-driven adaptation, and the `foundation` binary.
//!
//! Every optimisation is a hypothesis that is measured, then kept or reverted; scaling
//! acts on confident forecasts only; features roll out to a growing share of keys while
//! they stay healthy; experimental paths run behind breakers. The `foundation` binary
//! runs a node (`foundation node --config node.toml`) and the local demo
//! (`foundation demo`).
//!
//! # Modules
//! * [`hypothesis`] — baseline → apply → sample → commit or revert, decided by Welch's
//!   t-test or a bootstrap.
//! * [`predictive`] — Holt's linear trend with prediction intervals; scales a
//!   [`Scalable`](predictive::Scalable) (an ecosystem) only above a confidence threshold.
//! * [`rollout`] — percentage rollouts by stable hashing; widened when healthy, rolled
//!   back on latency or error-rate degradation.
//! * [`guard`] — experimental features behind a circuit breaker with a fallback.
//! * [`adaptive_topology`] — switches a node's topology as the cluster changes.
//! * [`stats`] — the tests and quantiles the engines decide with.
//! * [`http`] — the node's HTTP server (axum): `/metrics`, `/health`, `/ready`.
//! * [`node_config`] — the node's configuration: file < environment < flags.
//! * [`demo`] — the local demo cluster behind `foundation demo`.
//!
//! The layers below are re-exported as [`distributed`], [`beam`] and [`core`].
#![warn(missing_docs)]

pub mod adaptive_topology;
pub mod demo;
pub mod guard;
pub mod http;
pub mod hypothesis;
pub mod node_config;
pub mod observer;
pub mod predictive;
pub mod rollout;
pub mod stats;

/// The layer below: `foundation-distributed`.
pub use foundation_distributed as distributed;
/// `foundation-beam`, reached through the layers below.
pub use foundation_distributed::beam;
/// `foundation-core`, reached through the layers below.
pub use foundation_distributed::core;

/// Describes every metric of this layer and the layers below (the HELP lines of the
/// Prometheus exposition) to the current recorder.
pub fn describe_metrics() {
    foundation_distributed::describe_metrics();
    hypothesis::describe_metrics();
    predictive::describe_metrics();
    rollout::describe_metrics();
    guard::describe_metrics();
    adaptive_topology::describe_metrics();
    http::describe_metrics();
    observer::describe_metrics();
}
