//! The node protocol: one MessagePack enum, encoded positionally (compact; both ends run
//! the same protocol version, checked by the transport handshake).
//!
//! An application body is not part of the MessagePack value: it follows it, raw, to the
//! end of the frame. Encoding serializes the application value straight after the header
//! (no intermediate buffer); decoding slices the body out of the received frame (no copy).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Update;

/// Why a request failed at the server's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReplyError {
    /// No server registered under the name.
    NoServer(String),
    /// The node's request-handler bound was reached.
    Overloaded(String),
    /// The request or the reply did not (de)serialize.
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// Membership gossip: the sender's view (also sent first on every new link).
    Gossip { members: Vec<Update> },
    /// A heartbeat, carrying the sender's generation (a refutation travels with it).
    Heartbeat { incarnation: u64, version: u64 },
    /// A protocol message of the topology manager.
    Topology { payload: Bytes },
    /// An application message.
    Send {
        to_node: String,
        to_name: String,
        from: String,
        #[serde(skip)]
        body: Bytes,
    },
    /// A request; `incarnation` is the requester's.
    Request {
        id: u64,
        incarnation: u64,
        to_node: String,
        to_name: String,
        from: String,
        #[serde(skip)]
        body: Bytes,
    },
    /// The reply to request `id` of `to_node`, from `from`.
    Reply {
        id: u64,
        to_node: String,
        from: String,
        body: std::result::Result<Bytes, ReplyError>,
    },
    /// A broadcast, identified by (origin, incarnation, id).
    Broadcast {
        origin: String,
        incarnation: u64,
        id: u64,
        to_name: String,
        #[serde(skip)]
        body: Bytes,
    },
    /// An acknowledged message: sequence `seq` of the stream from `from` (at
    /// `incarnation`) to `to_node`; `base` is the oldest sequence the sender still holds.
    Acked {
        to_node: String,
        from: String,
        incarnation: u64,
        seq: u64,
        base: u64,
        to_name: String,
        #[serde(skip)]
        body: Bytes,
    },
    /// Cumulative acknowledgement: `from` has delivered everything up to `upto` of the
    /// stream `to_node` sent at `incarnation`.
    Ack {
        to_node: String,
        from: String,
        incarnation: u64,
        upto: u64,
    },
    /// `from` no longer waits for the reply to its request `id`: abort its handler.
    Cancel {
        id: u64,
        to_node: String,
        from: String,
    },
    /// One or more application messages for one receiver in one frame: the body is, to
    /// its end, a 4-byte big-endian length and that many bytes of one message, repeated
    /// (at least once). [`Node::send`](super::Node::send) sends one message this way and
    /// the outbound queue appends later messages with the same header to it while it
    /// waits (D390); [`Node::send_batch`](super::Node::send_batch) packs many.
    SendBatch {
        to_node: String,
        to_name: String,
        from: String,
        #[serde(skip)]
        body: Bytes,
    },
    /// The coordinated topology switch protocol (`switch.rs`): an epoch announcement,
    /// from the authenticated peer only (never relayed). Last, so that the positions of
    /// the variants before it do not change.
    Switch { payload: Bytes },
}

impl Wire {
    /// The node this message is addressed to, when it is not every node.
    pub(crate) fn to_node(&self) -> Option<&str> {
        match self {
            Wire::Send { to_node, .. }
            | Wire::SendBatch { to_node, .. }
            | Wire::Request { to_node, .. }
            | Wire::Reply { to_node, .. }
            | Wire::Acked { to_node, .. }
            | Wire::Ack { to_node, .. }
            | Wire::Cancel { to_node, .. } => Some(to_node),
            _ => None,
        }
    }

    /// The node that claims to have sent it (for messages that may be relayed).
    pub(crate) fn claimed_sender(&self) -> Option<&str> {
        match self {
            Wire::Send { from, .. }
            | Wire::SendBatch { from, .. }
            | Wire::Request { from, .. }
            | Wire::Reply { from, .. }
            | Wire::Acked { from, .. }
            | Wire::Ack { from, .. }
            | Wire::Cancel { from, .. } => Some(from),
            Wire::Broadcast { origin, .. } => Some(origin),
            _ => None,
        }
    }

    /// The metric label of its kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Wire::Gossip { .. } => "gossip",
            Wire::Heartbeat { .. } => "heartbeat",
            Wire::Topology { .. } => "topology",
            Wire::Send { .. } => "send",
            Wire::Request { .. } => "request",
            Wire::Reply { .. } => "reply",
            Wire::Broadcast { .. } => "broadcast",
            Wire::Acked { .. } => "acked",
            Wire::Ack { .. } => "ack",
            Wire::Cancel { .. } => "cancel",
            Wire::SendBatch { .. } => "send_batch",
            Wire::Switch { .. } => "switch",
        }
    }
}

impl Wire {
    fn body(&self) -> Option<&Bytes> {
        match self {
            Wire::Send { body, .. }
            | Wire::SendBatch { body, .. }
            | Wire::Request { body, .. }
            | Wire::Broadcast { body, .. }
            | Wire::Acked { body, .. } => Some(body),
            _ => None,
        }
    }

    fn body_mut(&mut self) -> Option<&mut Bytes> {
        match self {
            Wire::Send { body, .. }
            | Wire::SendBatch { body, .. }
            | Wire::Request { body, .. }
            | Wire::Broadcast { body, .. }
            | Wire::Acked { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// Encodes `w`, its body (if any) after it.
pub(crate) fn encode(w: &Wire) -> Bytes {
    let body = w.body().map_or(0, Bytes::len);
    let mut v = Vec::with_capacity(48 + body);
    rmp_serde::encode::write(&mut v, w).expect("wire messages always encode");
    if let Some(b) = w.body() {
        v.extend_from_slice(b);
    }
    Bytes::from(v)
}

/// Encodes `w` (whose body is empty) followed by `msg` serialized as its body.
pub(crate) fn encode_with<T: Serialize + ?Sized>(
    w: &Wire,
    msg: &T,
) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut v = Vec::with_capacity(64);
    rmp_serde::encode::write(&mut v, w).expect("wire messages always encode");
    rmp_serde::encode::write(&mut v, msg)?;
    Ok(Bytes::from(v))
}

/// Decodes a frame; the body is a zero-copy slice of `b`.
/// The header of a [`Wire::Send`] or [`Wire::Request`] with borrowed names, encoded
/// exactly as the owned variant (same variant names and positions; the variants before
/// them are never built) so that the hot send paths allocate only the output buffer.
#[derive(Serialize)]
#[allow(dead_code)] // the first three variants only hold the positions of `Wire`'s
pub(crate) enum WireRef<'a> {
    Gossip,
    Heartbeat,
    Topology,
    Send {
        to_node: &'a str,
        to_name: &'a str,
        from: &'a str,
    },
    Request {
        id: u64,
        incarnation: u64,
        to_node: &'a str,
        to_name: &'a str,
        from: &'a str,
    },
}

/// The header of a [`Wire::SendBatch`] with borrowed names, encoded exactly as the owned
/// variant (same position: the variants before it only hold their places).
#[derive(Serialize)]
#[allow(dead_code)]
pub(crate) enum BatchRef<'a> {
    Gossip,
    Heartbeat,
    Topology,
    Send,
    Request,
    Reply,
    Broadcast,
    Acked,
    Ack,
    Cancel,
    SendBatch {
        to_node: &'a str,
        to_name: &'a str,
        from: &'a str,
    },
}

/// Most body bytes [`encode_batches`] puts in one frame (a message larger than this
/// gets a frame of its own). The outbound queue appends messages to a waiting frame up to
/// the same bound (`channel::MERGE_MAX`).
pub(crate) const BATCH_FRAME_BYTES: usize = 64 * 1024;

/// Length of the per-message prefix in a [`Wire::SendBatch`] body.
pub(crate) const LEN_PREFIX: usize = 4;

/// The MessagePack header of a [`Wire::SendBatch`] to `to_name` on `to_node` from `from`,
/// appended to `v`.
fn batch_header(v: &mut Vec<u8>, to_node: &str, to_name: &str, from: &str) {
    let h = BatchRef::SendBatch {
        to_node,
        to_name,
        from,
    };
    rmp_serde::encode::write(v, &h).expect("wire messages always encode");
}

/// Appends `msg`, length-prefixed, to `v`; returns its encoded length.
fn push_message<T: Serialize + ?Sized>(
    v: &mut Vec<u8>,
    msg: &T,
) -> Result<usize, rmp_serde::encode::Error> {
    let at = v.len();
    v.extend_from_slice(&[0; LEN_PREFIX]);
    if let Err(e) = rmp_serde::encode::write(v, msg) {
        v.truncate(at);
        return Err(e);
    }
    let len = v.len() - at - LEN_PREFIX;
    let Ok(len32) = u32::try_from(len) else {
        v.truncate(at);
        return Err(rmp_serde::encode::Error::Syntax(format!(
            "a message of {len} bytes is over the 4 GiB limit of a length prefix"
        )));
    };
    v[at..at + LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
    Ok(len)
}

/// [`encode_one`] into `v` (cleared first); returns the header's length.
pub(crate) fn encode_one_into<T: Serialize + ?Sized>(
    v: &mut Vec<u8>,
    to_node: &str,
    to_name: &str,
    from: &str,
    msg: &T,
) -> Result<usize, rmp_serde::encode::Error> {
    v.clear();
    batch_header(v, to_node, to_name, from);
    let header = v.len();
    push_message(v, msg)?;
    Ok(header)
}

/// Encodes one message as a [`Wire::SendBatch`] frame; also returns the header's length
/// (the bytes a frame with the same destination and sender starts with: what the
/// outbound queue compares before appending the rest to a waiting frame).
pub(crate) fn encode_one<T: Serialize + ?Sized>(
    to_node: &str,
    to_name: &str,
    from: &str,
    msg: &T,
) -> Result<(Bytes, usize), rmp_serde::encode::Error> {
    let mut v = Vec::with_capacity(32 + to_node.len() + to_name.len() + from.len());
    batch_header(&mut v, to_node, to_name, from);
    let header = v.len();
    push_message(&mut v, msg)?;
    Ok((Bytes::from(v), header))
}

/// Encodes `msgs` as [`Wire::SendBatch`] frames of at most [`BATCH_FRAME_BYTES`] of body
/// each (at least one message per frame), in order; also returns the header length of
/// every frame (see [`encode_one`]) and the largest encoded message (what routing by
/// size looks at).
#[allow(clippy::type_complexity)]
pub(crate) fn encode_batches<T: Serialize>(
    to_node: &str,
    to_name: &str,
    from: &str,
    msgs: &[T],
) -> Result<(Vec<Bytes>, usize, usize), rmp_serde::encode::Error> {
    let mut frames = Vec::new();
    let mut largest = 0;
    let mut head = Vec::with_capacity(32);
    batch_header(&mut head, to_node, to_name, from);
    let header = head.len();
    let fresh = |body_hint: usize| {
        let mut v = Vec::with_capacity(header + body_hint);
        v.extend_from_slice(&head);
        v
    };
    let hint = (msgs.len() * 16).min(BATCH_FRAME_BYTES + 64);
    let mut v = fresh(hint);
    for m in msgs {
        let at = v.len();
        let len = push_message(&mut v, m)?;
        largest = largest.max(len);
        let body = v.len() - header;
        if body >= BATCH_FRAME_BYTES {
            // Keep the frame within the bound: the message that crossed it opens the next
            // frame (unless it is alone).
            if at > header && body > BATCH_FRAME_BYTES {
                let mut next = fresh(hint);
                next.extend_from_slice(&v[at..]);
                v.truncate(at);
                frames.push(Bytes::from(std::mem::replace(&mut v, next)));
            } else {
                frames.push(Bytes::from(std::mem::replace(&mut v, fresh(hint))));
            }
        }
    }
    if v.len() > header {
        frames.push(Bytes::from(v));
    }
    Ok((frames, header, largest))
}

/// The bytes of one application batch message as a node writes it in one channel frame
/// (before the channel's key and the transport's envelope): the MessagePack header of a
/// batch for receiver `to_name` on node `to_node` from node `from`, then `body` as
/// given. `body` should be the batch layout [`batch_body`] makes (each message a 4-byte
/// big-endian length and that many bytes); it is not checked, so that tests can forge
/// malformed frames (the receiving node refuses those whole, counted as
/// `foundation_node_dropped_total{reason="undecodable"}`).
///
/// ```
/// use foundation_distributed::node::wire_format::{batch_body, send_batch_frame};
/// let body = batch_body(&[1u64, 2, 3]).unwrap();
/// let frame = send_batch_frame("b", "inbox", "a", &body);
/// assert!(frame.ends_with(&body));
/// ```
pub fn send_batch_frame(to_node: &str, to_name: &str, from: &str, body: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(32 + to_node.len() + to_name.len() + from.len() + body.len());
    batch_header(&mut v, to_node, to_name, from);
    v.extend_from_slice(body);
    Bytes::from(v)
}

/// The body of a batch holding `msgs`, each encoded as the node encodes an application
/// message (MessagePack, as `rmp_serde` does) and prefixed with its length (4 bytes, big
/// endian), in order; see [`send_batch_frame`].
///
/// # Errors
///
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when a message does not
/// serialize (or is over 4 GiB).
pub fn batch_body<T: Serialize>(msgs: &[T]) -> crate::Result<Vec<u8>> {
    let mut v = Vec::new();
    for m in msgs {
        push_message(&mut v, m)
            .map_err(|e| crate::Error::InvalidArgument(format!("cannot encode message: {e}")))?;
    }
    Ok(v)
}

/// The number of messages in a [`Wire::SendBatch`] body; `None` unless it holds one or
/// more length-prefixed messages and nothing else.
pub(crate) fn batch_count(body: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    let mut n = 0usize;
    while at < body.len() {
        let len = body.get(at..at + LEN_PREFIX)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        at = (at + LEN_PREFIX).checked_add(len)?;
        n += 1;
    }
    (at == body.len() && n > 0).then_some(n)
}

/// The messages of a [`Wire::SendBatch`] body checked by [`batch_count`], from offset
/// `at` on: each message's bytes and the offset after it.
pub(crate) fn next_message(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = body.get(at..at + LEN_PREFIX)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let end = (at + LEN_PREFIX).checked_add(len)?;
    Some((body.get(at + LEN_PREFIX..end)?, end))
}

/// [`encode_with`] for a borrowed header.
pub(crate) fn encode_ref_with<T: Serialize + ?Sized>(
    w: &WireRef<'_>,
    msg: &T,
) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut v = Vec::with_capacity(64);
    rmp_serde::encode::write(&mut v, w).expect("wire messages always encode");
    rmp_serde::encode::write(&mut v, msg)?;
    Ok(Bytes::from(v))
}

pub(crate) fn decode(b: &Bytes) -> Option<Wire> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(&b[..]));
    let mut w = Wire::deserialize(&mut de).ok()?;
    let at = usize::try_from(de.position()).ok()?;
    match w.body_mut() {
        Some(body) => *body = b.slice(at..),
        None if at != b.len() => return None,
        None => {}
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_headers_encode_as_the_owned_ones() {
        let owned = Wire::Send {
            to_node: "b".into(),
            to_name: "inbox".into(),
            from: "a".into(),
            body: Bytes::new(),
        };
        let borrowed = WireRef::Send {
            to_node: "b",
            to_name: "inbox",
            from: "a",
        };
        assert_eq!(
            encode_with(&owned, &7u64).unwrap(),
            encode_ref_with(&borrowed, &7u64).unwrap()
        );
        let owned = Wire::Request {
            id: 3,
            incarnation: 9,
            to_node: "b".into(),
            to_name: "srv".into(),
            from: "a".into(),
            body: Bytes::new(),
        };
        let borrowed = WireRef::Request {
            id: 3,
            incarnation: 9,
            to_node: "b",
            to_name: "srv",
            from: "a",
        };
        assert_eq!(
            encode_with(&owned, "q").unwrap(),
            encode_ref_with(&borrowed, "q").unwrap()
        );
    }

    /// The messages of a batch body, decoded.
    fn messages(body: &[u8]) -> Vec<u64> {
        let n = batch_count(body).expect("a well-formed body");
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((m, next)) = next_message(body, at) {
            out.push(rmp_serde::from_slice::<u64>(m).unwrap());
            at = next;
        }
        assert_eq!(out.len(), n);
        out
    }

    #[test]
    fn batches_split_into_bounded_frames_and_come_back_in_order() {
        let msgs: Vec<u64> = (0..20_000).collect();
        let (frames, header, largest) = encode_batches("b", "inbox", "a", &msgs).unwrap();
        assert!(frames.len() > 1, "{} frames", frames.len());
        assert!(largest <= 9);
        let mut got = Vec::new();
        for f in &frames {
            match decode(f).unwrap() {
                Wire::SendBatch {
                    to_node,
                    to_name,
                    from,
                    body,
                } => {
                    assert_eq!((&*to_node, &*to_name, &*from), ("b", "inbox", "a"));
                    assert_eq!(f.len() - body.len(), header);
                    assert!(body.len() <= BATCH_FRAME_BYTES);
                    got.extend(messages(&body));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, msgs);
        // A message larger than the frame bound goes alone.
        let big = vec![vec![7u8; BATCH_FRAME_BYTES + 10], vec![1u8]];
        let (frames, _, largest) = encode_batches("b", "inbox", "a", &big).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(largest > BATCH_FRAME_BYTES);
        // Nothing to send: no frame.
        let (frames, _, _) = encode_batches::<u64>("b", "inbox", "a", &[]).unwrap();
        assert!(frames.is_empty());
    }

    #[test]
    fn one_message_frames_concatenate_into_a_batch() {
        // What the outbound queue does: a frame's messages (all after the header) appended
        // to another frame with the same header make one frame holding both, in order.
        let (first, header) = encode_one("b", "inbox", "a", &1u64).unwrap();
        let (second, header2) = encode_one("b", "inbox", "a", &2u64).unwrap();
        assert_eq!(header, header2);
        assert_eq!(first[..header], second[..header]);
        let mut merged = first.to_vec();
        merged.extend_from_slice(&second[header..]);
        match decode(&Bytes::from(merged)).unwrap() {
            Wire::SendBatch { body, .. } => assert_eq!(messages(&body), [1, 2]),
            other => panic!("{other:?}"),
        }
        // Another destination has another header.
        let (other, _) = encode_one("b", "other", "a", &1u64).unwrap();
        assert_ne!(first[..header], other[..header]);
    }

    #[test]
    fn the_public_encoder_makes_the_frames_the_node_sends() {
        let msgs = [1u64, 300, u64::MAX];
        let (frames, _, _) = encode_batches("b", "inbox", "a", &msgs).unwrap();
        let body = batch_body(&msgs).unwrap();
        assert_eq!(frames, [send_batch_frame("b", "inbox", "a", &body)]);
        let (one, _) = encode_one("b", "inbox", "a", &7u64).unwrap();
        let body = batch_body(&[7u64]).unwrap();
        assert_eq!(one, send_batch_frame("b", "inbox", "a", &body));
    }

    #[test]
    fn malformed_batch_bodies_are_refused() {
        for body in [
            &[][..],                       // no message at all
            &[0, 0, 0, 5, 1, 2][..],       // a message cut short
            &[0, 0, 0, 0, 9][..],          // junk after a message
            &[0, 0][..],                   // a cut length prefix
            &[0xff, 0xff, 0xff, 0xff][..], // a length far past the end
        ] {
            assert_eq!(batch_count(body), None, "{body:?}");
        }
        assert_eq!(batch_count(&[0, 0, 0, 1, 7, 0, 0, 0, 0]), Some(2));
    }

    #[test]
    fn bodies_follow_the_header_and_come_back_as_slices() {
        let w = Wire::Send {
            to_node: "b".into(),
            to_name: "inbox".into(),
            from: "a".into(),
            body: Bytes::new(),
        };
        let bytes = encode_with(&w, &(1u8, "two")).unwrap();
        match decode(&bytes).unwrap() {
            Wire::Send { to_node, body, .. } => {
                assert_eq!(to_node, "b");
                let v: (u8, String) = rmp_serde::from_slice(&body).unwrap();
                assert_eq!(v, (1, "two".to_string()));
            }
            other => panic!("{other:?}"),
        }
        let b = Wire::Broadcast {
            origin: "a".into(),
            incarnation: 7,
            id: 9,
            to_name: "n".into(),
            body: Bytes::from_static(b"raw"),
        };
        match decode(&encode(&b)).unwrap() {
            Wire::Broadcast { id, body, .. } => assert_eq!((id, &body[..]), (9, &b"raw"[..])),
            other => panic!("{other:?}"),
        }
        let hb = encode(&Wire::Heartbeat {
            incarnation: 1,
            version: 2,
        });
        assert!(decode(&hb).is_some());
        let mut trailing = hb.to_vec();
        trailing.push(0);
        assert!(
            decode(&Bytes::from(trailing)).is_none(),
            "junk after a bodiless message"
        );
    }
}
