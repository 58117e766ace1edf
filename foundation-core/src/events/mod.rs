//! Typed events with ids, timestamps, correlation and causality.
//!
//! This module currently holds the event record ([`Event`]); streams, subscriptions and the
//! store are being built on it.

mod correlate;
mod event;

pub use correlate::{
    correlate_events, CorrelateOptions, CorrelateReply, CorrelateRequest, CorrelationGroup,
    Correlator, GroupKind,
};
pub use event::{CorrelationId, Event, EventId, EventType, Priority};
