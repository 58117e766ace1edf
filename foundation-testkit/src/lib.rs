//! Foundation test kit.
//!
//! Shared helpers for Foundation's own tests and for users testing code built on it. It
//! will grow the cluster harness, fault injection, latency probes and the assumption
//! registry; today it holds the workspace architecture check ([`layers`]) and the
//! [assumption registry](assumptions).
#![warn(missing_docs)]

pub mod assumptions;
pub mod layers;
