//! An authenticated connection: frame writer and reader halves, and the handshake driver.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Envelope, FrameDecoder, FrameError, ReadError};
use super::handshake::{ClientHandshake, Keys, ServerHandshake, Step, HANDSHAKE_MAX_FRAME};
use super::record::{self, Opener, Sealer, TAG_LEN};

/// What a record adds to the frames it holds: its own length header and the tag.
const RECORD_EXTRA: usize = frame::HEADER_LEN + TAG_LEN;
use super::{metric, Refusal};
use crate::{Error, Result};

pub(crate) type BoxRead = Box<dyn ReadStream>;
pub(crate) type BoxWrite = Box<dyn WriteStream>;

/// The read side of a connection's stream; `Any` so that [`Connection::rehome`] can find
/// a TCP socket inside it.
pub(crate) trait ReadStream: AsyncRead + Send + Unpin + std::any::Any {}
impl<T: AsyncRead + Send + Unpin + std::any::Any> ReadStream for T {}

/// The write side of a connection's stream; see [`ReadStream`].
pub(crate) trait WriteStream: AsyncWrite + Send + Unpin + std::any::Any {}
impl<T: AsyncWrite + Send + Unpin + std::any::Any> WriteStream for T {}

/// Payloads up to this size are copied into the write buffer; larger ones are written
/// from their own memory (header and payload in one vectored write).
const COPY_MAX: usize = 16 * 1024;
/// [`ConnectionSender::feed`] flushes once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// The authenticated peer at the other end of a [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's node name.
    pub node: String,
    /// The address the peer advertised (for a client, where its own node listens; may
    /// be empty).
    pub addr: String,
    /// The channel this connection serves (chosen by the connecting side).
    pub channel: String,
    /// The connection's index among the channel's parallel connections.
    pub index: u16,
    /// The negotiated protocol version.
    pub version: u16,
}

/// A frame received on an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Application data.
    Data {
        /// Channel id.
        channel: u32,
        /// Payload (a zero-copy slice of the receive buffer).
        payload: Bytes,
    },
    /// The peer asks for a [`ConnectionSender::pong`] with the same value. The transport
    /// does not answer pings itself: liveness policy belongs to the layer above.
    Ping(u64),
    /// The answer to one of our pings.
    Pong(u64),
}

/// Per-connection metric handles, registered once; dropping the last half takes the
/// connection off the `foundation_transport_connections` gauge.
#[derive(Debug)]
struct Meters {
    frames_in: Counter,
    frames_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    connections: Gauge,
}

impl Meters {
    fn new(transport: &'static str) -> Arc<Self> {
        let connections = metrics::gauge!(metric::CONNECTIONS, "transport" => transport);
        connections.increment(1.0);
        Arc::new(Meters {
            frames_in: metrics::counter!(metric::FRAMES, "direction" => "in"),
            frames_out: metrics::counter!(metric::FRAMES, "direction" => "out"),
            bytes_in: metrics::counter!(metric::BYTES, "direction" => "in"),
            bytes_out: metrics::counter!(metric::BYTES, "direction" => "out"),
            connections,
        })
    }
}

impl Drop for Meters {
    fn drop(&mut self) {
        self.connections.decrement(1.0);
    }
}

/// What a connection's reader reports when a record fails authentication.
const FORGED: &str =
    "record failed authentication (altered, injected, replayed or reordered); connection closed";

/// Counts and logs a record that failed authentication (AEAD or TLS); the caller closes
/// the connection.
fn forged(peer: &str, detail: &str) -> Error {
    metrics::counter!(metric::FRAME_ERRORS, "reason" => "forged").increment(1);
    tracing::warn!(peer, detail, "closing connection after a forged record");
    Error::Undecodable {
        detail: format!("{FORGED}: {detail}"),
    }
}

/// Whether a TLS error on an established connection means tampering with records.
fn tls_tampering(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::DecryptError
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerMisbehaved(_)
    )
}

/// An I/O error from the stream, or the TLS refusal inside it.
pub(crate) fn stream_error(peer: &str, e: std::io::Error) -> Error {
    match super::tls::tls_cause(&e) {
        Some(tls) => Error::Refused {
            reason: Refusal::Certificate {
                detail: tls.to_string(),
            },
            by_peer: matches!(tls, rustls::Error::AlertReceived(_)),
        },
        None => Error::io(peer, e),
    }
}

/// Counts and logs a frame error; the caller closes the connection.
pub(crate) fn frame_error(e: FrameError, peer: &str) -> Error {
    let e = count_frame_error(e);
    tracing::warn!(peer, error = %e, "closing connection after a bad frame");
    e
}

/// Counts a frame error without logging it (during handshakes, whose failures are
/// logged rate-limited).
fn count_frame_error(e: FrameError) -> Error {
    let reason = match e {
        FrameError::TooLarge { .. } => "oversized",
        FrameError::Undecodable(_) => "undecodable",
    };
    metrics::counter!(metric::FRAME_ERRORS, "reason" => reason).increment(1);
    e.into()
}

fn unexpected_frame(got: &'static str, state: &'static str, peer: &str) -> Error {
    metrics::counter!(metric::FRAME_ERRORS, "reason" => "unexpected").increment(1);
    tracing::warn!(
        peer,
        got,
        state,
        "closing connection after an unexpected frame"
    );
    Error::UnexpectedFrame { got, state }
}

/// An authenticated, framed, bidirectional connection.
///
/// Frames arrive in the order they were sent. Dropping the connection (or both of its
/// halves after [`split`](Self::split)) closes the underlying stream; [`close`](Self::close)
/// tells the peer why first. After any error the connection is unusable: drop it.
#[derive(Debug)]
pub struct Connection {
    sender: ConnectionSender,
    receiver: ConnectionReceiver,
}

impl Connection {
    pub(crate) fn new(
        reader: BoxRead,
        writer: BoxWrite,
        mut decoder: FrameDecoder,
        peer: Peer,
        max_frame: usize,
        transport: &'static str,
        keys: Option<Box<Keys>>,
    ) -> Self {
        let (sealer, opener) = match keys {
            Some(k) => {
                let Keys { sealer, opener } = *k;
                (Some(sealer), Some(opener))
            }
            None => (None, None),
        };
        // A record holds whole frames (headers included, at most `max_frame + 4` bytes of
        // them) and a tag.
        decoder.set_max_frame(max_frame + if opener.is_some() { RECORD_EXTRA } else { 0 });
        let peer = Arc::new(peer);
        let meters = Meters::new(transport);
        Connection {
            sender: ConnectionSender {
                writer,
                buf: BytesMut::with_capacity(FLUSH_AT + TAG_LEN),
                peer: peer.clone(),
                meters: meters.clone(),
                max_frame,
                failed: false,
                sealer,
                record_start: None,
            },
            receiver: ConnectionReceiver {
                reader,
                decoder,
                peer,
                meters,
                closed: None,
                opener,
                plain: BytesMut::new(),
                max_frame,
            },
        }
    }

    /// The authenticated peer.
    pub fn peer(&self) -> &Peer {
        &self.sender.peer
    }

    /// Sends a data frame and flushes. See [`ConnectionSender::send`].
    pub async fn send(&mut self, channel: u32, payload: Bytes) -> Result<()> {
        self.sender.send(channel, payload).await
    }

    /// Queues a data frame, flushing only when the buffer is full. See
    /// [`ConnectionSender::feed`].
    pub async fn feed(&mut self, channel: u32, payload: Bytes) -> Result<()> {
        self.sender.feed(channel, payload).await
    }

    /// Writes out queued frames.
    pub async fn flush(&mut self) -> Result<()> {
        self.sender.flush().await
    }

    /// The next frame; `Ok(None)` once the peer has closed. A bad frame is counted,
    /// logged and returned as an error, and the connection is shut down.
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        let r = self.receiver.recv().await;
        if matches!(
            r,
            Err(Error::FrameTooLarge { .. }
                | Error::Undecodable { .. }
                | Error::UnexpectedFrame { .. })
        ) {
            self.sender.failed = true;
            let _ = self.sender.writer.shutdown().await;
        }
        r
    }

    /// Sends a `Close` frame with `reason` and shuts the stream down.
    pub async fn close(self, reason: &str) -> Result<()> {
        self.sender.close(reason).await
    }

    /// Splits into a sender and a receiver that can be used from different tasks.
    pub fn split(self) -> (ConnectionSender, ConnectionReceiver) {
        (self.sender, self.receiver)
    }

    /// Moves a plain TCP connection's socket (the `secret` and `insecure_plaintext` modes)
    /// to the I/O driver of the runtime this is called in, so that its readiness events
    /// are delivered by that runtime rather than by the one that accepted or connected
    /// it. The channel layer calls it on a priority runtime's thread (D380): the socket of
    /// an urgent connection is then watched by that mostly idle thread, not by worker
    /// threads busy with bulk traffic. Buffered bytes, keys and sequence numbers are kept.
    ///
    /// Other streams (memory, TLS) are returned as they are: their tasks may still run on
    /// the calling runtime; only readiness stays with the original driver.
    ///
    /// Must be called inside a tokio runtime with I/O enabled. Fails only if the socket
    /// cannot be re-registered; the connection is then gone.
    pub(crate) fn rehome(self) -> Result<Connection> {
        use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
        let Connection {
            mut sender,
            mut receiver,
        } = self;
        let is_tcp = {
            let r: &dyn std::any::Any = &*receiver.reader;
            let w: &dyn std::any::Any = &*sender.writer;
            r.is::<OwnedReadHalf>() && w.is::<OwnedWriteHalf>()
        };
        if !is_tcp {
            return Ok(Connection { sender, receiver });
        }
        let r: BoxRead = std::mem::replace(&mut receiver.reader, Box::new(tokio::io::empty()));
        let w: BoxWrite = std::mem::replace(&mut sender.writer, Box::new(tokio::io::sink()));
        let (r, w): (Box<dyn std::any::Any>, Box<dyn std::any::Any>) = (r, w);
        let (Ok(r), Ok(w)) = (
            r.downcast::<OwnedReadHalf>(),
            w.downcast::<OwnedWriteHalf>(),
        ) else {
            unreachable!("checked above");
        };
        let peer = sender.peer.node.clone();
        let stream = r.reunite(*w).map_err(|e| Error::Closed {
            reason: format!("cannot move the connection to another runtime: {e}"),
        })?;
        let stream = stream
            .into_std()
            .and_then(tokio::net::TcpStream::from_std)
            .map_err(|e| Error::io(&peer, e))?;
        let (r, w) = stream.into_split();
        receiver.reader = Box::new(r);
        sender.writer = Box::new(w);
        Ok(Connection { sender, receiver })
    }
}

/// The sending half of a [`Connection`].
///
/// Cancel safety: `send`, `feed` and `flush` are not cancel safe. If one of their futures
/// is dropped while writing, the stream may end inside a frame; the sender then refuses
/// every further call with [`Error::Closed`] and the connection must be dropped.
pub struct ConnectionSender {
    writer: BoxWrite,
    buf: BytesMut,
    peer: Arc<Peer>,
    meters: Arc<Meters>,
    max_frame: usize,
    failed: bool,
    sealer: Option<Sealer>,
    /// Where the record being filled starts in `buf` (sealed mode): its 4-byte length
    /// placeholder, then whole frames.
    record_start: Option<usize>,
}

impl std::fmt::Debug for ConnectionSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSender")
            .field("peer", &self.peer)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl ConnectionSender {
    /// The authenticated peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Queues a data frame and writes everything out.
    ///
    /// A payload that would make the frame larger than `max_frame` is refused with
    /// [`Error::FrameTooLarge`] before anything is written; the connection stays usable.
    pub async fn send(&mut self, channel: u32, payload: Bytes) -> Result<()> {
        self.feed(channel, payload).await?;
        self.flush().await
    }

    /// Queues a data frame; writes only when 64 KiB are buffered or the payload is large.
    /// Call [`flush`](Self::flush) after a batch.
    pub async fn feed(&mut self, channel: u32, payload: Bytes) -> Result<()> {
        self.check_open()?;
        // Body = 7-byte prefix + up to 5 bytes of channel + up to 5 bytes of bin length.
        if payload.len() + 17 > self.max_frame {
            let mut probe = BytesMut::new();
            let total = frame::encode_data_header(channel, payload.len(), &mut probe);
            if total - frame::HEADER_LEN > self.max_frame {
                return Err(Error::FrameTooLarge {
                    len: (total - frame::HEADER_LEN) as u64,
                    max: self.max_frame,
                });
            }
        }
        if self.sealer.is_some() {
            // Frames are gathered into a record, sealed in place when the buffer is
            // flushed (or the record is full): the payload is copied and encrypted there.
            self.open_record(payload.len() + frame::HEADER_LEN + 17)?;
            let total = frame::encode_data_header(channel, payload.len(), &mut self.buf);
            self.buf.extend_from_slice(&payload);
            self.meters.frames_out.increment(1);
            self.meters.bytes_out.increment(total as u64);
            if self.buf.len() >= FLUSH_AT {
                self.flush().await?;
            }
            return Ok(());
        }
        let total = frame::encode_data_header(channel, payload.len(), &mut self.buf);
        self.meters.frames_out.increment(1);
        self.meters.bytes_out.increment(total as u64);
        if payload.len() <= COPY_MAX {
            self.buf.extend_from_slice(&payload);
            if self.buf.len() >= FLUSH_AT {
                self.flush().await?;
            }
            return Ok(());
        }
        // Set while writing: if this future is dropped mid-write the stream holds a torn
        // frame, and every later call must fail instead of writing after it.
        self.failed = true;
        let r = write_two(&mut self.writer, &self.buf, &payload).await;
        self.buf.clear();
        self.failed = false;
        self.io_result(r)
    }

    /// Sends a `Ping` with `value` and flushes.
    pub async fn ping(&mut self, value: u64) -> Result<()> {
        self.control(&Envelope::Ping(value)).await
    }

    /// Answers a [`Frame::Ping`] with the same value, and flushes.
    pub async fn pong(&mut self, value: u64) -> Result<()> {
        self.control(&Envelope::Pong(value)).await
    }

    /// Writes out queued frames.
    pub async fn flush(&mut self) -> Result<()> {
        self.check_open()?;
        self.seal_record()?;
        if !self.buf.is_empty() {
            // See `feed`: a write dropped half-way leaves the sender failed.
            self.failed = true;
            let r = self.writer.write_all(&self.buf).await;
            self.buf.clear();
            self.failed = false;
            self.io_result(r)?;
        }
        let r = self.writer.flush().await;
        self.io_result(r)
    }

    /// Sends a `Close` frame with `reason` and shuts the write side down.
    pub async fn close(mut self, reason: &str) -> Result<()> {
        self.control(&Envelope::Close {
            reason: reason.to_owned(),
        })
        .await?;
        let r = self.writer.shutdown().await;
        self.io_result(r)
    }

    async fn control(&mut self, envelope: &Envelope) -> Result<()> {
        self.check_open()?;
        let encoded = frame::encode_to_bytes(envelope);
        self.open_record(encoded.len())?;
        self.buf.extend_from_slice(&encoded);
        self.meters.frames_out.increment(1);
        self.meters.bytes_out.increment(encoded.len() as u64);
        self.flush().await
    }

    /// Sealed mode: makes sure a record is open in `buf` with room for a frame of at
    /// most `frame_len` bytes (sealing the current one first if it would overflow).
    fn open_record(&mut self, frame_len: usize) -> Result<()> {
        if self.sealer.is_none() {
            return Ok(());
        }
        if let Some(start) = self.record_start {
            let held = self.buf.len() - start - frame::HEADER_LEN;
            if held + frame_len > self.max_frame + frame::HEADER_LEN {
                self.seal_record()?;
            }
        }
        if self.record_start.is_none() {
            self.record_start = Some(self.buf.len());
            self.buf.extend_from_slice(&[0; frame::HEADER_LEN]);
        }
        Ok(())
    }

    /// Sealed mode: seals the open record, if any.
    fn seal_record(&mut self) -> Result<()> {
        let (Some(sealer), Some(start)) = (&mut self.sealer, self.record_start.take()) else {
            return Ok(());
        };
        if sealer.seal_record(&mut self.buf, start).is_err() {
            self.failed = true;
            return Err(Error::Closed {
                reason: "the record sequence number is exhausted".into(),
            });
        }
        self.meters
            .bytes_out
            .increment((frame::HEADER_LEN + TAG_LEN) as u64);
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Closed {
                reason: "an earlier write failed or was cancelled".into(),
            });
        }
        Ok(())
    }

    fn io_result(&mut self, r: std::io::Result<()>) -> Result<()> {
        r.map_err(|e| {
            self.failed = true;
            Error::io(&self.peer.node, e)
        })
    }
}

/// Writes `a` then `b`, with vectored writes where the stream supports them.
async fn write_two(w: &mut BoxWrite, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            w.write(b).await?
        } else {
            w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// The receiving half of a [`Connection`].
///
/// Cancel safety: `recv` is cancel safe; bytes already read stay buffered for the next
/// call, so it can sit in a `select!`.
pub struct ConnectionReceiver {
    reader: BoxRead,
    decoder: FrameDecoder,
    peer: Arc<Peer>,
    meters: Arc<Meters>,
    closed: Option<Closed>,
    opener: Option<Opener>,
    /// Sealed mode: the opened record's frames not yet returned.
    plain: BytesMut,
    max_frame: usize,
}

/// How a receiver ended.
#[derive(Debug)]
enum Closed {
    /// The peer closed: its `Close` reason, or `"end of stream"`.
    Peer(String),
    /// A local error ended the connection.
    Failed(String),
}

impl std::fmt::Debug for ConnectionReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionReceiver")
            .field("peer", &self.peer)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ConnectionReceiver {
    /// The authenticated peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Why the connection closed, once [`recv`](Self::recv) has returned `Ok(None)` or an
    /// error: the peer's `Close` reason, `"end of stream"`, or the local error.
    pub fn close_reason(&self) -> Option<&str> {
        match &self.closed {
            Some(Closed::Peer(reason) | Closed::Failed(reason)) => Some(reason),
            None => None,
        }
    }

    /// The next frame; `Ok(None)` once the peer has closed (a `Close` frame or the end
    /// of the stream). An oversized, undecodable or out-of-protocol frame is counted in
    /// `foundation_transport_frame_errors_total`, logged, and returned as an error;
    /// after an error every call fails with [`Error::Closed`].
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        match &self.closed {
            None => {}
            Some(Closed::Peer(_)) => return Ok(None),
            Some(Closed::Failed(reason)) => {
                return Err(Error::Closed {
                    reason: reason.clone(),
                })
            }
        }
        loop {
            if self.opener.is_some() {
                match record::next_inner_frame(&mut self.plain, self.max_frame) {
                    Ok(Some(body)) => {
                        self.meters.frames_in.increment(1);
                        return self.deliver(body);
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail_frame(e),
                }
            }
            let body = match self.decoder.next_body() {
                Ok(Some(body)) => body,
                Ok(None) => {
                    match self.decoder.read_from(&mut self.reader).await {
                        Ok(0) if self.decoder.buffered() == 0 => {
                            self.closed = Some(Closed::Peer("end of stream".into()));
                            return Ok(None);
                        }
                        Ok(0) => {
                            let e = Error::Closed {
                                reason: "end of stream inside a frame".into(),
                            };
                            return self.fail(e);
                        }
                        Ok(_) => {}
                        Err(ReadError::Frame(e)) => return self.fail_frame(e),
                        Err(ReadError::Io(e)) => {
                            let e = match super::tls::tls_cause(&e) {
                                Some(tls) if tls_tampering(tls) => {
                                    forged(&self.peer.node, &tls.to_string())
                                }
                                Some(tls) => Error::Closed {
                                    reason: format!("TLS: {tls}"),
                                },
                                None => Error::io(&self.peer.node, e),
                            };
                            return self.fail(e);
                        }
                    }
                    continue;
                }
                Err(e) => return self.fail_frame(e),
            };
            self.meters
                .bytes_in
                .increment((body.len() + frame::HEADER_LEN) as u64);
            let mut body = body;
            if let Some(opener) = &mut self.opener {
                if opener.open(&mut body).is_err() {
                    let e = forged(&self.peer.node, "AEAD tag or sequence number mismatch");
                    return self.fail(e);
                }
                self.plain = body;
                continue;
            }
            self.meters.frames_in.increment(1);
            return self.deliver(body);
        }
    }

    /// Decodes one frame body and acts on it.
    fn deliver(&mut self, body: BytesMut) -> Result<Option<Frame>> {
        match frame::decode_mut(body) {
            Ok(Envelope::Data { channel, payload }) => Ok(Some(Frame::Data { channel, payload })),
            Ok(Envelope::Ping(v)) => Ok(Some(Frame::Ping(v))),
            Ok(Envelope::Pong(v)) => Ok(Some(Frame::Pong(v))),
            Ok(Envelope::Close { reason }) => {
                self.closed = Some(Closed::Peer(reason));
                Ok(None)
            }
            Ok(other) => {
                let e = unexpected_frame(other.kind(), "connected", &self.peer.node);
                self.fail(e)
            }
            Err(e) => self.fail_frame(e),
        }
    }

    fn fail_frame(&mut self, e: FrameError) -> Result<Option<Frame>> {
        // Report sealed records in frame terms: the limit the user configured.
        let e = match e {
            FrameError::TooLarge { len, max } if self.opener.is_some() && max > self.max_frame => {
                FrameError::TooLarge {
                    len: len.saturating_sub(RECORD_EXTRA as u64),
                    max: self.max_frame,
                }
            }
            e => e,
        };
        let e = frame_error(e, &self.peer.node);
        self.fail(e)
    }

    fn fail(&mut self, e: Error) -> Result<Option<Frame>> {
        self.closed = Some(Closed::Failed(e.to_string()));
        Err(e)
    }
}

/// Reads the next handshake frame.
async fn read_envelope(
    reader: &mut BoxRead,
    decoder: &mut FrameDecoder,
    peer: &str,
) -> Result<Envelope> {
    loop {
        match decoder.next_frame() {
            Ok(Some(body)) => {
                return frame::decode(body).map_err(count_frame_error);
            }
            Ok(None) => match decoder.read_from(reader).await {
                Ok(0) => {
                    return Err(Error::Closed {
                        reason: "peer closed during the handshake".into(),
                    })
                }
                Ok(_) => {}
                Err(ReadError::Frame(e)) => return Err(count_frame_error(e)),
                Err(ReadError::Io(e)) => return Err(stream_error(peer, e)),
            },
            Err(e) => return Err(count_frame_error(e)),
        }
    }
}

async fn write_envelope(writer: &mut BoxWrite, envelope: &Envelope, peer: &str) -> Result<()> {
    let bytes = frame::encode_to_bytes(envelope);
    writer
        .write_all(&bytes)
        .await
        .map_err(|e| stream_error(peer, e))?;
    writer.flush().await.map_err(|e| stream_error(peer, e))
}

/// The handshake result label of an error.
pub(crate) fn result_label(e: &Error) -> &'static str {
    match e {
        Error::Refused { reason, .. } => match reason {
            Refusal::Version { .. } => "version",
            Refusal::Cluster => "cluster",
            Refusal::Authentication => "authentication",
            Refusal::Busy => "busy",
            Refusal::Security { .. } => "security",
            Refusal::Certificate { .. } => "certificate",
            Refusal::RateLimited => "rate_limited",
            _ => "protocol",
        },
        Error::HandshakeTimeout { .. } => "timeout",
        Error::FrameTooLarge { .. } | Error::Undecodable { .. } | Error::UnexpectedFrame { .. } => {
            "protocol"
        }
        _ => "io",
    }
}

/// What to tell the peer when our side ends a handshake with `e`.
fn refusal_for(e: &Error) -> Option<Refusal> {
    match e {
        Error::Refused {
            reason,
            by_peer: false,
        } => Some(reason.clone()),
        Error::FrameTooLarge { .. } | Error::Undecodable { .. } | Error::UnexpectedFrame { .. } => {
            Some(Refusal::Protocol)
        }
        _ => None,
    }
}

/// Parameters of one handshake, shared by both drivers.
pub(crate) struct HandshakeIo {
    pub reader: BoxRead,
    pub writer: BoxWrite,
    pub peer_addr: String,
    pub max_frame: usize,
    pub transport: &'static str,
}

/// Runs the server side to completion (without a timeout: the caller applies it).
pub(crate) async fn serve_handshake(
    mut io: HandshakeIo,
    mut machine: ServerHandshake,
) -> Result<Connection> {
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let outcome = async {
        loop {
            let envelope = read_envelope(&mut io.reader, &mut decoder, &io.peer_addr).await?;
            match machine.on_frame(envelope)? {
                Step::Reply(reply) => write_envelope(&mut io.writer, &reply, &io.peer_addr).await?,
                Step::Done(reply, peer, keys) => {
                    if let Some(reply) = reply {
                        write_envelope(&mut io.writer, &reply, &io.peer_addr).await?;
                    }
                    return Ok((peer, keys));
                }
            }
        }
    }
    .await;
    finish(io, decoder, outcome).await
}

/// Runs the client side to completion (without a timeout: the caller applies it).
pub(crate) async fn client_handshake(
    mut io: HandshakeIo,
    mut machine: ClientHandshake,
    hello: Envelope,
) -> Result<Connection> {
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let outcome = async {
        write_envelope(&mut io.writer, &hello, &io.peer_addr).await?;
        loop {
            let envelope = read_envelope(&mut io.reader, &mut decoder, &io.peer_addr).await?;
            match machine.on_frame(envelope)? {
                Step::Reply(reply) => write_envelope(&mut io.writer, &reply, &io.peer_addr).await?,
                Step::Done(reply, peer, keys) => {
                    if let Some(reply) = reply {
                        write_envelope(&mut io.writer, &reply, &io.peer_addr).await?;
                    }
                    return Ok((peer, keys));
                }
            }
        }
    }
    .await;
    finish(io, decoder, outcome).await
}

async fn finish(
    mut io: HandshakeIo,
    decoder: FrameDecoder,
    outcome: Result<(Peer, Option<Box<Keys>>)>,
) -> Result<Connection> {
    match outcome {
        Ok((peer, keys)) => {
            metrics::counter!(metric::HANDSHAKES, "result" => "ok").increment(1);
            tracing::debug!(peer = %peer.node, addr = %io.peer_addr, "handshake complete");
            Ok(Connection::new(
                io.reader,
                io.writer,
                decoder,
                peer,
                io.max_frame,
                io.transport,
                keys,
            ))
        }
        Err(e) => {
            if let Some(reason) = refusal_for(&e) {
                // Best effort: the peer may already be gone.
                let _ =
                    write_envelope(&mut io.writer, &Envelope::Refused(reason), &io.peer_addr).await;
                let _ = io.writer.shutdown().await;
            }
            // Counted and logged by the caller (rate-limited).
            Err(e)
        }
    }
}

/// Counts a failed handshake; logs it if `throttle` admits a line.
pub(crate) fn count_failed(
    e: Error,
    peer_addr: &str,
    throttle: &super::abuse::LogThrottle,
) -> Error {
    if matches!(e, Error::UnexpectedFrame { .. }) {
        metrics::counter!(metric::FRAME_ERRORS, "reason" => "unexpected").increment(1);
    }
    let result = result_label(&e);
    metrics::counter!(metric::HANDSHAKES, "result" => result).increment(1);
    if let Some(suppressed) = throttle.admit() {
        tracing::warn!(
            addr = peer_addr,
            result,
            error = %e,
            suppressed,
            "handshake failed ({suppressed} more failures not logged since the last line)"
        );
    }
    e
}
