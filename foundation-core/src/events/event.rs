//! The event record.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Unique id of an event: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new, unique, time-ordered id.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Correlation id shared by every event of one causal flow: a random UUID v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(pub Uuid);

impl CorrelationId {
    /// A new random correlation id.
    pub fn new() -> Self {
        CorrelationId(Uuid::new_v4())
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        CorrelationId::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The type of an event: one of the built-in types or an application-defined name.
/// Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(Arc<str>);

impl TryFrom<String> for EventType {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        EventType::new(&name)
    }
}

impl From<EventType> for String {
    fn from(t: EventType) -> String {
        t.0.to_string()
    }
}

impl EventType {
    /// Built-in type for user actions.
    pub const USER: &'static str = "user";
    /// Built-in type for system happenings.
    pub const SYSTEM: &'static str = "system";
    /// Built-in type for errors.
    pub const ERROR: &'static str = "error";
    /// Built-in type for telemetry.
    pub const TELEMETRY: &'static str = "telemetry";
    /// The built-in types.
    pub const BUILT_IN: [&'static str; 4] =
        [Self::USER, Self::SYSTEM, Self::ERROR, Self::TELEMETRY];

    /// A type named `name` (non-empty; ASCII letters, digits, `_`, `-`, `.`).
    pub fn new(name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(EventType(Arc::from(name)))
        } else {
            Err(Error::InvalidArgument(format!(
                "event type `{name}`: use 1-128 ASCII letters, digits, `_`, `-` or `.`"
            )))
        }
    }

    /// The type's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn built_in(name: &'static str) -> Self {
        EventType(Arc::from(name))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which lane of its stream an event travels in.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Priority {
    /// The normal lane.
    #[default]
    Normal,
    /// The urgent lane, always served before the normal lane.
    Urgent,
}

/// Nanoseconds on a monotonic clock whose zero is the first event of this process.
/// Orders events of one process even when the wall clock steps; meaningless across
/// processes.
fn monotonic_nanos() -> u64 {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    let anchor = *ANCHOR.get_or_init(Instant::now);
    u64::try_from(anchor.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// An event: what happened, when, and in which causal flow.
///
/// Build one and hand it on in one expression — every builder step takes and returns the
/// event by value:
///
/// ```
/// use foundation_core::events::{CorrelationId, Event, Priority};
///
/// let flow = CorrelationId::new();
/// let order = Event::new("user", &("order", 42u32))?.correlated(flow);
/// let paid = Event::new("user", &("paid", 42u32))?.caused_by(&order).urgent();
/// assert_eq!(paid.correlation_id, flow);
/// assert_eq!(paid.parent_id, Some(order.id));
/// assert_eq!(paid.priority, Priority::Urgent);
/// assert_eq!(paid.payload::<(String, u32)>()?, ("paid".to_string(), 42));
/// # Ok::<(), foundation_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, time-ordered id.
    pub id: EventId,
    /// The event's type; it selects the stream.
    pub event_type: EventType,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Monotonic time within the emitting process, nanoseconds (see [`Event`] docs).
    pub monotonic_ns: u64,
    /// The causal flow this event belongs to.
    pub correlation_id: CorrelationId,
    /// The event that caused this one, if any.
    pub parent_id: Option<EventId>,
    /// Lane within the stream.
    pub priority: Priority,
    /// The payload, MessagePack-encoded (a binary on the wire).
    pub payload: Bytes,
}

impl Event {
    /// A new event of type `event_type` with a serialisable payload, a fresh id and
    /// correlation id, and the current time. Fails only for a malformed type name or a
    /// payload that cannot be encoded.
    pub fn new<P: Serialize + ?Sized>(event_type: &str, payload: &P) -> Result<Event> {
        let event_type = match EventType::BUILT_IN.iter().find(|b| **b == event_type) {
            Some(b) => EventType::built_in(b),
            None => EventType::new(event_type)?,
        };
        let payload = rmp_serde::to_vec_named(payload).map_err(|e| Error::Encode {
            path: format!("event payload ({event_type})"),
            detail: e.to_string(),
        })?;
        Ok(Event::with_raw_payload(event_type, Bytes::from(payload)))
    }

    /// A new event whose payload is already MessagePack-encoded.
    pub fn with_raw_payload(event_type: EventType, payload: Bytes) -> Event {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Event {
            id: EventId::new(),
            event_type,
            timestamp_us: u64::try_from(wall.as_micros()).unwrap_or(u64::MAX),
            monotonic_ns: monotonic_nanos(),
            correlation_id: CorrelationId::new(),
            parent_id: None,
            priority: Priority::Normal,
            payload,
        }
    }

    /// Puts the event in the flow `id`.
    pub fn correlated(mut self, id: CorrelationId) -> Event {
        self.correlation_id = id;
        self
    }

    /// Makes `parent` this event's cause: same flow, `parent_id` set.
    pub fn caused_by(mut self, parent: &Event) -> Event {
        self.correlation_id = parent.correlation_id;
        self.parent_id = Some(parent.id);
        self
    }

    /// Sends the event through the urgent lane.
    pub fn urgent(mut self) -> Event {
        self.priority = Priority::Urgent;
        self
    }

    /// Decodes the payload as `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        rmp_serde::from_slice(&self.payload).map_err(|e| Error::TypeMismatch {
            namespace: "events".into(),
            path: format!("{} payload of {}", self.event_type, self.id),
            expected: std::any::type_name::<T>(),
            detail: e.to_string(),
        })
    }

    /// Wall-clock time of the event.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.timestamp_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_messagepack() {
        let parent = Event::new("orders", &vec![1u8, 2, 3]).unwrap();
        let child = Event::new("error", &"boom")
            .unwrap()
            .caused_by(&parent)
            .urgent();
        let bytes = rmp_serde::to_vec_named(&child).unwrap();
        let back: Event = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, child);
        assert_eq!(back.payload::<String>().unwrap(), "boom");
        assert!(child.id > parent.id, "v7 ids sort by creation");
        assert!(child.monotonic_ns >= parent.monotonic_ns);
    }

    #[test]
    fn bad_types_and_payload_reads_are_errors() {
        assert!(Event::new("bad type!", &1).is_err());
        assert!(Event::new("", &1).is_err());
        let e = Event::new("user", &"text").unwrap();
        assert!(matches!(
            e.payload::<u64>(),
            Err(Error::TypeMismatch { .. })
        ));
    }
}
