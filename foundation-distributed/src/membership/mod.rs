//! Membership: who is in the cluster, and who has stopped answering.
//!
//! [`PhiAccrual`] and [`FailureDetector`] decide from heartbeat arrival times when a peer
//! is suspected (see [`detector`]); [`View`] is the sans-IO membership state machine
//! (SWIM-style suspicion, refutation by version, dead members removed and tombstoned; see
//! [`view`]).

pub mod detector;
pub mod view;

pub use detector::{FailureDetector, PhiAccrual, PhiSettings};
pub use view::{Status, Update, View, ViewEvent, ViewSettings};
