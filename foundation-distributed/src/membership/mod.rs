//! Membership: who is in the cluster, and who has stopped answering.
//!
//! [`PhiAccrual`] and [`FailureDetector`] decide from heartbeat arrival times when a peer
//! is suspected (see [`detector`]).

pub mod detector;

pub use detector::{FailureDetector, PhiAccrual, PhiSettings};
