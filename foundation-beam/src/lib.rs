//! Foundation L2 — BEAM-style processes on tokio.
//!
//! Services built from many small processes instead of one big shared object: each
//! [process] is a tokio task owning its state behind a two-lane
//! [mailbox]; [supervisors](supervisor) restart the ones that fail;
//! [ecosystems](ecosystem) run a coordinator and N workers as one resizable unit. The
//! [scheduler] makes CPU-heavy work yield like the BEAM's reductions, and the
//! [table] shares large values by reference, like ETS. [Societies](society) wire members
//! as a mesh, ring, tree or adaptively, and [`message::Messenger`] picks how to send a
//! payload (moved, shared, by table reference, urgent, or flow-controlled).
//!
//! The layer below is re-exported as [`core`].
#![warn(missing_docs)]

pub mod ecosystem;
pub mod error;
pub mod group;
pub mod mailbox;
pub mod message;
pub mod process;
pub mod scheduler;
pub mod society;
pub mod supervisor;
pub mod table;

pub use error::{Error, Result};
/// The layer below: `foundation-core`.
pub use foundation_core as core;
pub use process::{
    spawn, spawn_fn, spawn_with, Context, ExitReason, Handle, Monitor, Process, ProcessId,
    ProcessInfo, Reply, SpawnOptions,
};

/// Describes every metric of this layer and the layers below (the HELP lines of the
/// Prometheus exposition) to the current recorder. Call it once after installing a
/// recorder, or let `foundation_core::telemetry::Telemetry` call the core part.
pub fn describe_metrics() {
    foundation_core::telemetry::describe_foundation_metrics();
    mailbox::describe_metrics();
    supervisor::describe_metrics();
    ecosystem::describe_metrics();
    scheduler::describe_metrics();
    table::describe_metrics();
    society::describe_metrics();
    message::describe_metrics();
}
