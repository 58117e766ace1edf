//! Foundation L3 — Partisan-style distribution.
//!
//! Nodes talk over a [`transport`]: authenticated, length-prefixed MessagePack frames on
//! TCP, or on an in-memory network with the same semantics for simulated clusters.
//! [`membership`] decides who has failed (φ-accrual), [`discovery`] finds seeds, and
//! [`interpose`] injects faults for tests, [`topology`] decides which peers to connect
//! to and how to relay (full mesh, client-server, static), [`channel`] runs named
//! channels of parallel connections per peer (no head-of-line blocking), and [`node`]
//! puts it all together as a running cluster member (see the
//! workspace's `ARCHITECTURE.md`). The layers below are re-exported as [`beam`] and
//! [`core`].
#![warn(missing_docs)]

pub mod channel;
pub mod discovery;
pub mod error;
pub mod interpose;
pub mod membership;
pub mod node;
pub mod overlay;
pub mod remote;
pub mod topology;
pub mod transport;

pub use error::{Error, Result};
/// The layer below: `foundation-beam`.
pub use foundation_beam as beam;
/// `foundation-core`, reached through the layer below.
pub use foundation_beam::core;

/// Describes every metric of this layer and the layers below (the HELP lines of the
/// Prometheus exposition) to the current recorder. Call it once after installing a
/// recorder.
pub fn describe_metrics() {
    foundation_beam::describe_metrics();
    transport::describe_metrics();
    channel::describe_metrics();
    interpose::describe_metrics();
    node::describe_metrics();
    remote::describe_metrics();
    overlay::describe_metrics();
}
