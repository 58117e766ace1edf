//! Foundation test kit.
//!
//! Shared helpers for Foundation's own tests and for users testing code built on it:
//!
//! * [`assumptions`]: the assumption registry — each design assumption with its source,
//!   measurement, threshold and expected verdict; evidence written under `target/`;
//! * [`cluster`]: N nodes in one process (in-memory or loopback TCP), fault injection,
//!   connection accounting;
//! * [`latency`]: latency recorders with percentiles and CDFs (`hdrhistogram`);
//! * [`memory`]: live/peak heap (with the counting allocator installed) and peak RSS;
//! * [`scenarios`]: the measurements shared by the assumption tests and the report;
//! * [`layers`]: the workspace architecture check.
#![warn(missing_docs)]

pub mod assumptions;
pub mod cluster;
pub mod latency;
pub mod layers;
pub mod memory;
pub mod scenarios;
