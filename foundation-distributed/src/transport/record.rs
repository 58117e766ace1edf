//! Sealed records of [`Security::Secret`](super::Security::Secret) connections.
//!
//! After the handshake frames travel in *records*: a 4-byte big-endian length, then one
//! or more whole frames (each with its own 4-byte length; at most `max_frame + 4` bytes
//! of them) encrypted with AES-256-GCM (`ring`, the provider TLS uses too), then the
//! 16-byte tag. The sender fills a record until it flushes, so a batch of small frames
//! costs one seal and one open. The record length covers ciphertext and tag and is the
//! associated data; the nonce is the
//! direction's 64-bit sequence number (starting at 0, never sent), so a record that is
//! altered, injected, replayed, dropped before a later one, or reordered fails to open,
//! and the connection closes. Each direction has its own key, derived with HKDF-SHA256
//! from the cluster secret, both nonces and a hash of the handshake transcript, so keys
//! are fresh per connection and a record cannot be reflected back to its sender.

use bytes::{Buf, BytesMut};
use hkdf::Hkdf;

use super::frame::{FrameError, HEADER_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;

/// Bytes the tag adds to every record.
pub const TAG_LEN: usize = 16;

const KEY_INFO: &[u8] = b"foundation-transport v2 session keys";

/// A record that did not open: altered, injected, replayed or reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged;

/// One direction's keys and sequence numbers.
struct Direction {
    key: LessSafeKey,
    seq: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Self {
        Direction {
            // A 32-byte key for AES-256: cannot fail.
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")),
            seq: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, Forged> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.seq.to_be_bytes());
        // 2^64 records would wrap the nonce: refuse instead (never reached in practice).
        self.seq = self.seq.checked_add(1).ok_or(Forged)?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Encrypts outgoing records of one connection.
pub struct Sealer(Direction);

/// Decrypts incoming records of one connection.
pub struct Opener(Direction);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(seq {})", self.0.seq)
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener(seq {})", self.0.seq)
    }
}

/// Derives the two directions' keys: `(client → server, server → client)`.
pub(crate) fn derive(
    secret: &[u8],
    nonce_client: &[u8],
    nonce_server: &[u8],
    transcript_hash: &[u8],
) -> ([u8; 32], [u8; 32]) {
    let mut salt = Vec::with_capacity(nonce_client.len() + nonce_server.len());
    salt.extend_from_slice(nonce_client);
    salt.extend_from_slice(nonce_server);
    let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
    let mut okm = [0u8; 64];
    let mut info = KEY_INFO.to_vec();
    info.extend_from_slice(transcript_hash);
    // 64 bytes is far below HKDF-SHA256's limit of 8160.
    hk.expand(&info, &mut okm).expect("64-byte HKDF output");
    let mut c2s = [0u8; 32];
    let mut s2c = [0u8; 32];
    c2s.copy_from_slice(&okm[..32]);
    s2c.copy_from_slice(&okm[32..]);
    (c2s, s2c)
}

impl Sealer {
    /// A sealer with `key`, starting at sequence number 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer(Direction::new(key))
    }

    /// Seals the record that starts at `start` in `buf` (a 4-byte length placeholder,
    /// then the plaintext to the end of `buf`) in place: writes the length (including
    /// the tag), encrypts the plaintext and appends the tag.
    pub fn seal_record(&mut self, buf: &mut BytesMut, start: usize) -> Result<(), Forged> {
        let body_len = buf.len() - start - 4;
        let record_len = u32::try_from(body_len + TAG_LEN).map_err(|_| Forged)?;
        let header = record_len.to_be_bytes();
        buf[start..start + 4].copy_from_slice(&header);
        let nonce = self.0.next_nonce()?;
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut buf[start + 4..])
            .map_err(|_| Forged)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Takes the next frame body out of an opened record's plaintext; `None` when the record
/// is used up. A frame that is truncated, crosses the record's end or exceeds
/// `max_frame` is an error (the peer authenticated the record, so it is broken, not
/// forged).
pub(crate) fn next_inner_frame(
    plain: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<BytesMut>, FrameError> {
    if plain.is_empty() {
        return Ok(None);
    }
    if plain.len() < HEADER_LEN {
        return Err(FrameError::Undecodable(
            "truncated frame header inside a record".into(),
        ));
    }
    let len = u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: max_frame,
        });
    }
    if plain.len() - HEADER_LEN < len {
        return Err(FrameError::Undecodable(
            "frame crosses the end of its record".into(),
        ));
    }
    let mut body = plain.split_to(HEADER_LEN + len);
    body.advance(HEADER_LEN);
    Ok(Some(body))
}

impl Opener {
    /// An opener with `key`, starting at sequence number 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Opener(Direction::new(key))
    }

    /// Opens one record body (ciphertext and tag, as the frame decoder returns it) in
    /// place, leaving the plaintext (whole frames). Every call consumes a sequence number,
    /// so after one failure every later record fails too: close the connection.
    pub fn open(&mut self, record: &mut BytesMut) -> Result<(), Forged> {
        if record.len() < TAG_LEN {
            // Still consume the sequence number: the stream is out of step from here on.
            let _ = self.0.next_nonce();
            return Err(Forged);
        }
        let header = (record.len() as u32).to_be_bytes();
        let nonce = self.0.next_nonce()?;
        let plain = self
            .0
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[..])
            .map_err(|_| Forged)?
            .len();
        record.truncate(plain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{self, Envelope, FrameDecoder};
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    const KEY: [u8; 32] = [9; 32];

    /// Seals `envs` as records of `per_record` frames each.
    fn sealed_in(envs: &[Envelope], per_record: usize) -> BytesMut {
        let mut sealer = Sealer::new(&KEY);
        let mut wire = BytesMut::new();
        for chunk in envs.chunks(per_record.max(1)) {
            let start = wire.len();
            wire.extend_from_slice(&[0; 4]);
            for e in chunk {
                frame::encode(e, &mut wire);
            }
            sealer.seal_record(&mut wire, start).unwrap();
        }
        wire
    }

    fn sealed(envs: &[Envelope]) -> BytesMut {
        sealed_in(envs, 1)
    }

    /// Feeds `wire` through a frame decoder (limit `max + TAG_LEN`) and an opener; the
    /// envelopes opened before the first failure, and whether one happened.
    fn open_all(wire: &[u8], max: usize) -> (Vec<Envelope>, bool) {
        let mut decoder = FrameDecoder::new(max + HEADER_LEN + TAG_LEN);
        let mut opener = Opener::new(&KEY);
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            loop {
                match decoder.next_body() {
                    Ok(Some(mut body)) => {
                        if opener.open(&mut body).is_err() {
                            return (out, true);
                        }
                        loop {
                            match next_inner_frame(&mut body, max) {
                                Ok(Some(f)) => match frame::decode_mut(f) {
                                    Ok(e) => out.push(e),
                                    Err(_) => return (out, true),
                                },
                                Ok(None) => break,
                                Err(_) => return (out, true),
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return (out, true),
                }
            }
            assert!(decoder.capacity() <= max + TAG_LEN + 2 * HEADER_LEN);
            if rest.is_empty() {
                return (out, false);
            }
            match decoder.push(rest) {
                Ok(n) => rest = &rest[n..],
                Err(_) => return (out, true),
            }
        }
    }

    fn data(i: u8) -> Envelope {
        Envelope::Data {
            channel: u32::from(i),
            payload: Bytes::from(vec![i; 10 + i as usize]),
        }
    }

    #[test]
    fn round_trip() {
        let envs: Vec<_> = (0..5).map(data).collect();
        for per_record in 1..=5 {
            let (out, failed) = open_all(&sealed_in(&envs, per_record), 1024);
            assert!(!failed);
            assert_eq!(out, envs);
        }
    }

    #[test]
    fn replay_and_reorder_fail() {
        let envs: Vec<_> = (0..3).map(data).collect();
        let wire = sealed(&envs);
        let len0 = 4 + u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        // Replay record 0 after itself.
        let mut replay = wire[..len0].to_vec();
        replay.extend_from_slice(&wire[..len0]);
        let (out, failed) = open_all(&replay, 1024);
        assert!(failed);
        assert_eq!(out, envs[..1]);
        // Record 1 before record 0.
        let mut swapped = wire[len0..].to_vec();
        swapped.extend_from_slice(&wire[..len0]);
        let (out, failed) = open_all(&swapped, 1024);
        assert!(failed);
        assert!(out.is_empty());
    }

    #[test]
    fn keys_differ_by_direction_and_nonce() {
        let (a, b) = derive(&[1; 32], &[2; 32], &[3; 32], b"t");
        assert_ne!(a, b);
        let (c, _) = derive(&[1; 32], &[2; 32], &[4; 32], b"t");
        assert_ne!(a, c);
    }

    proptest! {
        /// Arbitrary bytes into the record decoder: no panic, bounded buffer, nothing opens.
        #[test]
        fn garbage_never_opens(
            max in 64usize..4096,
            input in proptest::collection::vec(any::<u8>(), 0..8192),
        ) {
            let (out, _) = open_all(&input, max);
            prop_assert!(out.is_empty());
        }

        /// Valid records with one byte flipped: the frames before it open intact, nothing
        /// after it is delivered, no panic.
        #[test]
        fn a_flipped_bit_stops_delivery_there(
            n in 1usize..6,
            per_record in 1usize..4,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let envs: Vec<_> = (0..n as u8).map(data).collect();
            let mut wire = sealed_in(&envs, per_record).to_vec();
            let i = at.index(wire.len());
            wire[i] ^= 1 << bit;
            let (out, failed) = open_all(&wire, 1024);
            prop_assert!(failed || out.len() < n, "the flip went unnoticed");
            prop_assert!(out.len() < n);
            prop_assert_eq!(&out[..], &envs[..out.len()]);
        }

        /// A peer holding the key seals arbitrary plaintext: the frames inside are parsed
        /// without panic; anything malformed is an error, never an over-long frame.
        #[test]
        fn sealed_garbage_is_refused_without_panic(
            plain in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut sealer = Sealer::new(&KEY);
            let mut wire = BytesMut::from(&[0u8; 4][..]);
            wire.extend_from_slice(&plain);
            sealer.seal_record(&mut wire, 0).unwrap();
            let mut opener = Opener::new(&KEY);
            let mut body = wire.split_off(HEADER_LEN);
            prop_assert!(opener.open(&mut body).is_ok());
            prop_assert_eq!(&body[..], &plain[..]);
            while let Ok(Some(f)) = next_inner_frame(&mut body, 256) {
                prop_assert!(f.len() <= 256);
                let _ = frame::decode_mut(f);
            }
        }

        /// Valid records then garbage: the records open, the garbage never does.
        #[test]
        fn valid_then_garbage(
            n in 0usize..5,
            garbage in proptest::collection::vec(any::<u8>(), 1..1024),
        ) {
            let envs: Vec<_> = (0..n as u8).map(data).collect();
            let mut wire = sealed(&envs).to_vec();
            wire.extend_from_slice(&garbage);
            let (out, _) = open_all(&wire, 1024);
            prop_assert_eq!(&out[..], &envs[..]);
        }
    }
}
