//! Typed events with ids, timestamps, correlation and causality.
//!
//! This module currently holds the event record ([`Event`]); streams, subscriptions and the
//! store are being built on it.

mod event;

pub use event::{CorrelationId, Event, EventId, EventType, Priority};
