//! The wire format: length-prefixed frames carrying MessagePack [`Envelope`]s.
//!
//! A frame is a 4-byte big-endian body length followed by the body; the body is the
//! MessagePack encoding (`rmp-serde`, default configuration) of one [`Envelope`]. Public
//! for tools, fuzzing and protocol tests; applications use
//! [`Connection`](super::Connection).
//!
//! [`FrameDecoder`] checks an announced length against its limit before it reserves a
//! single byte for the body, and its buffer never holds more than `max_frame + 4` bytes
//! of capacity. Data frames take a fast path in both directions that produces and accepts
//! exactly the bytes `rmp-serde` does, without copying the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Refusal;

/// Length of the frame header (a big-endian `u32` body length).
pub const HEADER_LEN: usize = 4;

/// The largest read buffer the decoder allocates ahead of knowing a frame's length.
const READ_CHUNK: usize = 64 * 1024;

/// One message on a connection. Variants are never renamed, reordered in meaning or
/// reused; new variants come with a new [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION) and
/// are only sent to peers that negotiated it. An unknown variant is undecodable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    /// Handshake, client → server: who is connecting, and the client's nonce.
    Hello(Hello),
    /// Handshake, server → client: who answers, the server's nonce and its proof.
    Challenge(Challenge),
    /// Handshake, client → server: the client's proof (empty unless in `secret` mode).
    Proof {
        /// HMAC-SHA256 over the client side of the transcript.
        proof: Bytes,
    },
    /// Handshake, server → client: the client is authenticated; data may flow. In
    /// `secret` mode it carries the server's proof, and every later frame in both
    /// directions is a sealed record.
    Accepted {
        /// HMAC-SHA256 over the server side of the transcript (empty unless in `secret`
        /// mode).
        proof: Bytes,
    },
    /// Handshake refused; the sender closes the connection after this frame.
    Refused(Refusal),
    /// Application data for a channel.
    Data {
        /// Channel id, chosen by the layer above.
        channel: u32,
        /// The payload.
        payload: Bytes,
    },
    /// Liveness probe; the peer is expected to answer with `Pong` of the same value.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// The sender closes the connection.
    Close {
        /// Why.
        reason: String,
    },
}

impl Envelope {
    /// The variant's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Envelope::Hello(_) => "Hello",
            Envelope::Challenge(_) => "Challenge",
            Envelope::Proof { .. } => "Proof",
            Envelope::Accepted { .. } => "Accepted",
            Envelope::Refused(_) => "Refused",
            Envelope::Data { .. } => "Data",
            Envelope::Ping(_) => "Ping",
            Envelope::Pong(_) => "Pong",
            Envelope::Close { .. } => "Close",
        }
    }
}

/// The client's opening handshake message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Cluster the client belongs to.
    pub cluster: String,
    /// The client's security mode (`tls`, `secret`, `insecure-plaintext`).
    pub security: String,
    /// The client's node name.
    pub node: String,
    /// The address the client's node can be reached at (may be empty).
    pub addr: String,
    /// Channel this connection serves.
    pub channel: String,
    /// Index of this connection among the channel's parallel connections.
    pub index: u16,
    /// The client's random nonce.
    pub nonce: Bytes,
}

/// The server's answer to an acceptable [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Protocol version the server speaks.
    pub version: u16,
    /// The server's security mode.
    pub security: String,
    /// The server's node name.
    pub node: String,
    /// The server's advertised address.
    pub addr: String,
    /// The server's random nonce.
    pub nonce: Bytes,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced a body longer than the limit.
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid envelope.
    Undecodable(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::Undecodable(detail) => write!(f, "undecodable frame: {detail}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for crate::Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, max } => crate::Error::FrameTooLarge { len, max },
            FrameError::Undecodable(detail) => crate::Error::Undecodable { detail },
        }
    }
}

/// Splits a byte stream into frame bodies, enforcing a maximum body length.
///
/// Feed it with [`push`](Self::push) (or, inside the crate, straight from a reader) and
/// take frames with [`next_frame`](Self::next_frame). Frame bodies are zero-copy slices
/// of the read buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder accepting bodies of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// The body length limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the body length limit (the handshake runs with a small one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Capacity of the internal buffer in bytes: never more than `max_frame + 4`.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        Ok(self.next_body()?.map(BytesMut::freeze))
    }

    /// The next complete frame body, still mutable: the receive path trims the envelope
    /// prefix off it without touching the reference count again.
    pub(crate) fn next_body(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let Some(len) = self.announced()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut body = self.buf.split_to(HEADER_LEN + len);
        body.advance(HEADER_LEN);
        Ok(Some(body))
    }

    /// Copies as much of `data` as the buffer may take and returns how many bytes that
    /// was; call [`next_frame`](Self::next_frame) until it returns `None`, then push the
    /// rest. Fails like `next_frame` once a header announces an oversized body.
    pub fn push(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        self.make_room()?;
        let n = (self.buf.capacity() - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Reads once from `reader` into the buffer; `Ok(0)` at end of stream.
    pub(crate) async fn read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        reader: &mut R,
    ) -> Result<usize, ReadError> {
        self.make_room().map_err(ReadError::Frame)?;
        reader.read_buf(&mut self.buf).await.map_err(ReadError::Io)
    }

    /// The announced body length of the buffered frame, checked against the limit.
    fn announced(&self) -> Result<Option<usize>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if u64::from(len) > self.max_frame as u64 {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_frame,
            });
        }
        Ok(Some(len as usize))
    }

    /// Ensures spare capacity for the frame being received.
    ///
    // Allocation: the only allocation is `with_capacity(max(needed, chunk))` where
    // `needed` is a header or a frame whose length passed the limit check, and
    // `chunk <= max_frame + 4`; `BytesMut::reserve` is never called because it may round up.
    fn make_room(&mut self) -> Result<(), FrameError> {
        let needed = match self.announced()? {
            Some(len) => HEADER_LEN + len,
            None => HEADER_LEN,
        };
        if self.buf.capacity() > self.buf.len() && self.buf.capacity() >= needed {
            return Ok(());
        }
        let chunk = READ_CHUNK.min(self.max_frame.saturating_add(HEADER_LEN));
        let mut fresh = BytesMut::with_capacity(needed.max(chunk));
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
        Ok(())
    }
}

/// Why reading frames from a stream stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Frame(FrameError),
    Io(std::io::Error),
}

/// Decodes one frame body into an envelope. Trailing bytes are an error.
pub fn decode(body: Bytes) -> Result<Envelope, FrameError> {
    if let Some((channel, start)) = data_fast(&body) {
        return Ok(Envelope::Data {
            channel,
            payload: body.slice(start..),
        });
    }
    decode_general(&body)
}

/// [`decode`] for a body fresh from [`FrameDecoder::next_body`].
pub(crate) fn decode_mut(mut body: BytesMut) -> Result<Envelope, FrameError> {
    if let Some((channel, start)) = data_fast(&body) {
        body.advance(start);
        return Ok(Envelope::Data {
            channel,
            payload: body.freeze(),
        });
    }
    decode_general(&body)
}

fn decode_general(body: &[u8]) -> Result<Envelope, FrameError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let envelope =
        Envelope::deserialize(&mut de).map_err(|e| FrameError::Undecodable(e.to_string()))?;
    if de.position() != body.len() as u64 {
        return Err(FrameError::Undecodable(format!(
            "{} trailing bytes after the envelope",
            body.len() as u64 - de.position()
        )));
    }
    Ok(envelope)
}

/// `{"Data": [channel, payload]}` as `rmp-serde` writes it: fixmap(1), fixstr "Data",
/// fixarray(2).
const DATA_PREFIX: [u8; 7] = [0x81, 0xa4, b'D', b'a', b't', b'a', 0x92];

/// Recognises a data envelope: its channel and where its payload starts; `None` for
/// anything else (which the general decoder then handles, including data frames encoded
/// another valid way).
fn data_fast(body: &[u8]) -> Option<(u32, usize)> {
    let rest = body.strip_prefix(&DATA_PREFIX[..])?;
    let mut cursor = rest;
    let channel: u32 = rmp::decode::read_int(&mut cursor).ok()?;
    let len = rmp::decode::read_bin_len(&mut cursor).ok()? as usize;
    if cursor.len() != len {
        return None;
    }
    Some((channel, body.len() - len))
}

/// Writes the frame header and the envelope prefix of a data frame whose payload of
/// `payload_len` bytes follows; returns the whole frame length (header + body).
pub(crate) fn encode_data_header(channel: u32, payload_len: usize, out: &mut BytesMut) -> usize {
    let mut prefix = [0u8; DATA_PREFIX.len() + 5 + 5];
    let capacity = prefix.len();
    let mut cursor = &mut prefix[..];
    cursor.put_slice(&DATA_PREFIX);
    // Writing to a slice with room to spare cannot fail.
    let _ = rmp::encode::write_uint(&mut cursor, u64::from(channel));
    let _ = rmp::encode::write_bin_len(&mut cursor, payload_len as u32);
    let prefix_len = capacity - cursor.len();
    let body_len = prefix_len + payload_len;
    out.put_u32(body_len as u32);
    out.put_slice(&prefix[..prefix_len]);
    HEADER_LEN + body_len
}

/// Appends one whole frame (header and body) to `out`.
pub fn encode(envelope: &Envelope, out: &mut BytesMut) {
    if let Envelope::Data { channel, payload } = envelope {
        encode_data_header(*channel, payload.len(), out);
        out.put_slice(payload);
        return;
    }
    let start = out.len();
    out.put_u32(0);
    let mut writer = out.writer();
    // Serialising these types into memory cannot fail: no maps with non-string keys,
    // no sequences of unknown length.
    let _ = rmp_serde::encode::write(&mut writer, envelope);
    let out = writer.into_inner();
    let body_len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
}

/// Encodes one whole frame into a new buffer.
pub fn encode_to_bytes(envelope: &Envelope) -> Bytes {
    let mut out = BytesMut::new();
    encode(envelope, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames_of(decoder: &mut FrameDecoder, input: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let bound = decoder.max_frame() + HEADER_LEN;
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            while let Some(f) = decoder.next_frame()? {
                out.push(f);
            }
            if rest.is_empty() {
                return Ok(out);
            }
            let n = decoder.push(rest)?;
            assert!(
                decoder.capacity() <= bound,
                "capacity {}",
                decoder.capacity()
            );
            rest = &rest[n..];
        }
    }

    #[test]
    fn data_fast_path_matches_rmp_serde() {
        for (channel, len) in [(0u32, 0usize), (7, 1), (300, 255), (70_000, 65_536)] {
            let env = Envelope::Data {
                channel,
                payload: Bytes::from(vec![0xab; len]),
            };
            let mut body = rmp_serde::to_vec(&env).unwrap();
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.append(&mut body);
            assert_eq!(&encode_to_bytes(&env)[..], &framed[..]);
            assert!(data_fast(&framed[4..]).is_some());
        }
    }

    #[test]
    fn oversized_header_is_refused_before_any_allocation() {
        let mut d = FrameDecoder::new(1024);
        assert_eq!(d.push(&u32::MAX.to_be_bytes()).unwrap(), 4);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: 1024
            })
        );
        assert!(d.capacity() <= 1024 + HEADER_LEN);
    }

    #[test]
    fn trailing_bytes_and_unknown_variants_are_undecodable() {
        let mut body = rmp_serde::to_vec(&Envelope::Ping(1)).unwrap();
        body.push(0);
        assert!(decode(Bytes::from(body)).is_err());
        let unknown = rmp_serde::to_vec(&"Teleport").unwrap();
        assert!(decode(Bytes::from(unknown)).is_err());
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (any::<u32>(), bytes())
                .prop_map(|(channel, payload)| Envelope::Data { channel, payload }),
            any::<u64>().prop_map(Envelope::Ping),
            any::<u64>().prop_map(Envelope::Pong),
            ".{0,20}".prop_map(|reason| Envelope::Close { reason }),
            bytes().prop_map(|proof| Envelope::Accepted { proof }),
            bytes().prop_map(|proof| Envelope::Proof { proof }),
            (any::<u16>(), ".{0,8}", ".{0,8}", any::<u16>(), bytes()).prop_map(
                |(version, cluster, node, index, nonce)| Envelope::Hello(Hello {
                    version,
                    cluster,
                    security: "secret".into(),
                    node: node.clone(),
                    addr: node,
                    channel: "c".into(),
                    index,
                    nonce,
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(
            max in 0usize..2048,
            input in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut d = FrameDecoder::new(max);
            if let Ok(frames) = frames_of(&mut d, &input) {
                for f in frames {
                    prop_assert!(f.len() <= max);
                    let _ = decode(f);
                }
            }
            prop_assert!(d.capacity() <= max + HEADER_LEN);
        }

        #[test]
        fn valid_prefix_then_garbage(
            envs in proptest::collection::vec(envelope(), 0..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut wire = BytesMut::new();
            for e in &envs {
                encode(e, &mut wire);
            }
            wire.extend_from_slice(&garbage);
            let mut d = FrameDecoder::new(1024);
            let result = frames_of(&mut d, &wire);
            prop_assert!(d.capacity() <= 1024 + HEADER_LEN);
            // Every valid frame in front of the garbage comes out intact and in order.
            let decoded: Vec<Envelope> = match result {
                Ok(frames) => frames.into_iter().map_while(|f| decode(f).ok()).collect(),
                Err(_) => {
                    let mut d = FrameDecoder::new(1024);
                    let mut v = Vec::new();
                    let mut rest = &wire[..];
                    'outer: loop {
                        loop {
                            match d.next_frame() {
                                Ok(Some(f)) => match decode(f) {
                                    Ok(e) => v.push(e),
                                    Err(_) => break 'outer,
                                },
                                Ok(None) => break,
                                Err(_) => break 'outer,
                            }
                        }
                        if rest.is_empty() { break; }
                        match d.push(rest) {
                            Ok(n) => rest = &rest[n..],
                            Err(_) => break,
                        }
                    }
                    v
                }
            };
            prop_assert!(decoded.len() >= envs.len());
            prop_assert_eq!(&decoded[..envs.len()], &envs[..]);
        }

        #[test]
        fn round_trip_and_fast_path_agree(env in envelope()) {
            let framed = encode_to_bytes(&env);
            let body = framed.slice(HEADER_LEN..);
            prop_assert_eq!(&body[..], &rmp_serde::to_vec(&env).unwrap()[..]);
            prop_assert_eq!(decode(body).unwrap(), env);
        }
    }
}
