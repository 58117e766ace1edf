//! The handshake as two sans-I/O state machines, and the HMAC transcript.
//!
//! ```text
//! client                                   server
//!   Hello{version, cluster, node, addr,
//!         channel, index, nonce_c}   ──►   refuse on version or cluster
//!                                    ◄──   Challenge{version, node, addr, nonce_s,
//!                                                    proof_s = MAC(K, "server" ‖ T)}
//!   verify proof_s (constant time)
//!   Proof{proof_c = MAC(K, "client" ‖ T)} ──► verify proof_c (constant time)
//!                                    ◄──   Accepted
//! ```
//!
//! `T` is every field of `Hello` and `Challenge` except the proofs, each length-prefixed,
//! so it binds both nonces, both names, the channel and the connection index. The role
//! label makes a server proof useless as a client proof (no reflection); fresh nonces on
//! both sides make an old proof useless on a new connection (no replay).

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::frame::{Challenge, Envelope, Hello};
use super::Peer;
use crate::{Error, Result};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Body limit while a connection is unauthenticated: an anonymous peer can make us
/// buffer at most this much.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 4096;

/// Length of each side's random nonce.
pub(crate) const NONCE_LEN: usize = 32;

/// The shortest accepted cluster secret.
pub const MIN_SECRET_LEN: usize = 16;

const DOMAIN: &[u8] = b"foundation-transport handshake v1";

/// Why a handshake was refused. Sent to the peer in a `Refused` frame and carried by
/// [`Error::Refused`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The peers speak different protocol versions; `supported` is the refuser's.
    Version {
        /// The version the refusing side speaks.
        supported: u16,
    },
    /// The peer belongs to another cluster.
    Cluster,
    /// A proof did not verify: the peers do not share the cluster secret.
    Authentication,
    /// The peer broke the protocol (unexpected, oversized or undecodable frame).
    Protocol,
    /// The listener has too many handshakes in progress.
    Busy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Version { supported } => {
                write!(f, "protocol version mismatch (refuser speaks {supported})")
            }
            Refusal::Cluster => f.write_str("cluster name mismatch"),
            Refusal::Authentication => {
                f.write_str("authentication failed (cluster secrets differ)")
            }
            Refusal::Protocol => f.write_str("protocol violation"),
            Refusal::Busy => f.write_str("listener busy"),
        }
    }
}

/// The shared cluster secret. `Debug` never prints it, and it serializes as
/// `"<redacted>"`; it deserializes from a string (its UTF-8 bytes), so settings load
/// from TOML but never write the secret back out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

impl ClusterSecret {
    /// A secret from raw bytes (at least [`MIN_SECRET_LEN`]; 32 random bytes recommended).
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        ClusterSecret(Arc::from(bytes.as_ref()))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty (the default, which settings validation rejects).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for ClusterSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for ClusterSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ClusterSecret::new(s.as_bytes()))
    }
}

/// Who we are in handshakes.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub cluster: String,
    pub node: String,
    pub addr: String,
    pub secret: ClusterSecret,
}

fn field(mac: &mut Hmac<Sha256>, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

/// MAC over the transcript for `role` (`b"server"` or `b"client"`).
fn transcript(secret: &ClusterSecret, role: &[u8], hello: &Hello, ch: &Challenge) -> Hmac<Sha256> {
    let mut mac = secret.mac();
    field(&mut mac, DOMAIN);
    field(&mut mac, role);
    field(&mut mac, &hello.version.to_be_bytes());
    field(&mut mac, hello.cluster.as_bytes());
    field(&mut mac, hello.node.as_bytes());
    field(&mut mac, hello.addr.as_bytes());
    field(&mut mac, hello.channel.as_bytes());
    field(&mut mac, &hello.index.to_be_bytes());
    field(&mut mac, &hello.nonce);
    field(&mut mac, &ch.version.to_be_bytes());
    field(&mut mac, ch.node.as_bytes());
    field(&mut mac, ch.addr.as_bytes());
    field(&mut mac, &ch.nonce);
    mac
}

fn refused(reason: Refusal) -> Error {
    Error::Refused {
        reason,
        by_peer: false,
    }
}

fn unexpected(got: &Envelope, state: &'static str) -> Error {
    Error::UnexpectedFrame {
        got: got.kind(),
        state,
    }
}

/// A fresh random nonce (`rand`'s thread-local CSPRNG).
pub(crate) fn nonce() -> Bytes {
    let bytes: [u8; NONCE_LEN] = rand::random();
    Bytes::copy_from_slice(&bytes)
}

/// What the driver does after feeding a frame to a state machine.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send this frame and keep reading.
    Reply(Envelope),
    /// Send this frame (if any); the peer is authenticated.
    Done(Option<Envelope>, Peer),
}

#[derive(Debug)]
enum ServerState {
    AwaitHello,
    AwaitProof(Box<(Hello, Challenge)>),
    Finished,
}

/// The accepting side.
#[derive(Debug)]
pub(crate) struct ServerHandshake {
    me: Arc<Identity>,
    nonce: Bytes,
    state: ServerState,
}

impl ServerHandshake {
    pub(crate) fn new(me: Arc<Identity>, nonce: Bytes) -> Self {
        ServerHandshake {
            me,
            nonce,
            state: ServerState::AwaitHello,
        }
    }

    /// Feeds one frame from the client. An `Err` ends the handshake.
    pub(crate) fn on_frame(&mut self, envelope: Envelope) -> Result<Step> {
        match (
            std::mem::replace(&mut self.state, ServerState::Finished),
            envelope,
        ) {
            (ServerState::AwaitHello, Envelope::Hello(hello)) => {
                if hello.version != PROTOCOL_VERSION {
                    return Err(refused(Refusal::Version {
                        supported: PROTOCOL_VERSION,
                    }));
                }
                if hello.cluster != self.me.cluster {
                    return Err(refused(Refusal::Cluster));
                }
                if hello.nonce.len() != NONCE_LEN {
                    return Err(refused(Refusal::Protocol));
                }
                let mut challenge = Challenge {
                    version: PROTOCOL_VERSION,
                    node: self.me.node.clone(),
                    addr: self.me.addr.clone(),
                    nonce: self.nonce.clone(),
                    proof: Bytes::new(),
                };
                let proof = transcript(&self.me.secret, b"server", &hello, &challenge)
                    .finalize()
                    .into_bytes();
                challenge.proof = Bytes::copy_from_slice(&proof);
                let reply = Envelope::Challenge(challenge.clone());
                self.state = ServerState::AwaitProof(Box::new((hello, challenge)));
                Ok(Step::Reply(reply))
            }
            (ServerState::AwaitProof(pending), Envelope::Proof { proof }) => {
                let (hello, challenge) = *pending;
                transcript(&self.me.secret, b"client", &hello, &challenge)
                    .verify_slice(&proof)
                    .map_err(|_| refused(Refusal::Authentication))?;
                let peer = Peer {
                    node: hello.node,
                    addr: hello.addr,
                    channel: hello.channel,
                    index: hello.index,
                    version: hello.version,
                };
                Ok(Step::Done(Some(Envelope::Accepted), peer))
            }
            (_, Envelope::Refused(reason)) => Err(Error::Refused {
                reason,
                by_peer: true,
            }),
            (ServerState::AwaitHello, other) => Err(unexpected(&other, "awaiting Hello")),
            (ServerState::AwaitProof(_), other) => Err(unexpected(&other, "awaiting Proof")),
            (ServerState::Finished, other) => Err(unexpected(&other, "finished")),
        }
    }
}

#[derive(Debug)]
enum ClientState {
    AwaitChallenge,
    AwaitAccepted { peer: Peer },
    Finished,
}

/// The connecting side.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    me: Arc<Identity>,
    hello: Hello,
    state: ClientState,
}

impl ClientHandshake {
    /// The state machine and the `Hello` to send first.
    pub(crate) fn new(
        me: Arc<Identity>,
        channel: &str,
        index: u16,
        nonce: Bytes,
    ) -> (Self, Envelope) {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            addr: me.addr.clone(),
            channel: channel.to_owned(),
            index,
            nonce,
        };
        let first = Envelope::Hello(hello.clone());
        (
            ClientHandshake {
                me,
                hello,
                state: ClientState::AwaitChallenge,
            },
            first,
        )
    }

    /// Feeds one frame from the server. An `Err` ends the handshake.
    pub(crate) fn on_frame(&mut self, envelope: Envelope) -> Result<Step> {
        match (
            std::mem::replace(&mut self.state, ClientState::Finished),
            envelope,
        ) {
            (ClientState::AwaitChallenge, Envelope::Challenge(challenge)) => {
                if challenge.version != PROTOCOL_VERSION {
                    return Err(refused(Refusal::Version {
                        supported: PROTOCOL_VERSION,
                    }));
                }
                if challenge.nonce.len() != NONCE_LEN {
                    return Err(refused(Refusal::Protocol));
                }
                transcript(&self.me.secret, b"server", &self.hello, &challenge)
                    .verify_slice(&challenge.proof)
                    .map_err(|_| refused(Refusal::Authentication))?;
                let proof = transcript(&self.me.secret, b"client", &self.hello, &challenge)
                    .finalize()
                    .into_bytes();
                self.state = ClientState::AwaitAccepted {
                    peer: Peer {
                        node: challenge.node,
                        addr: challenge.addr,
                        channel: self.hello.channel.clone(),
                        index: self.hello.index,
                        version: challenge.version,
                    },
                };
                Ok(Step::Reply(Envelope::Proof {
                    proof: Bytes::copy_from_slice(&proof),
                }))
            }
            (ClientState::AwaitAccepted { peer }, Envelope::Accepted) => Ok(Step::Done(None, peer)),
            (_, Envelope::Refused(reason)) => Err(Error::Refused {
                reason,
                by_peer: true,
            }),
            (ClientState::AwaitChallenge, other) => Err(unexpected(&other, "awaiting Challenge")),
            (ClientState::AwaitAccepted { .. }, other) => {
                Err(unexpected(&other, "awaiting Accepted"))
            }
            (ClientState::Finished, other) => Err(unexpected(&other, "finished")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{self, FrameDecoder};
    use proptest::prelude::*;

    fn identity(node: &str, secret: &str) -> Arc<Identity> {
        Arc::new(Identity {
            cluster: "c".into(),
            node: node.into(),
            addr: format!("mem://{node}"),
            secret: ClusterSecret::new(secret),
        })
    }

    const SECRET: &str = "0123456789abcdef-secret";

    /// Runs a client and a server machine against each other.
    fn run(client_secret: &str, server_secret: &str) -> (Result<Peer>, Result<Peer>) {
        let (mut client, hello) =
            ClientHandshake::new(identity("a", client_secret), "ch", 3, nonce());
        let mut server = ServerHandshake::new(identity("b", server_secret), nonce());
        let challenge = match server.on_frame(hello) {
            Ok(Step::Reply(c)) => c,
            other => panic!("{other:?}"),
        };
        let proof = match client.on_frame(challenge) {
            Ok(Step::Reply(p)) => p,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                let s = server.on_frame(Envelope::Refused(Refusal::Authentication));
                return (Err(e), s.map(|_| unreachable!()));
            }
        };
        match server.on_frame(proof) {
            Ok(Step::Done(Some(accepted), server_peer)) => match client.on_frame(accepted) {
                Ok(Step::Done(None, client_peer)) => (Ok(client_peer), Ok(server_peer)),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn matching_secrets_authenticate_both_ways() {
        let (c, s) = run(SECRET, SECRET);
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.node, "b");
        assert_eq!(s.node, "a");
        assert_eq!((s.channel.as_str(), s.index), ("ch", 3));
    }

    #[test]
    fn different_secrets_fail_on_both_sides() {
        let (c, s) = run(SECRET, "another-secret-of-16+");
        assert!(matches!(
            c,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                by_peer: false
            })
        ));
        assert!(matches!(
            s,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                by_peer: true
            })
        ));
    }

    #[test]
    fn reflected_server_proof_is_rejected() {
        let (_client, hello) = ClientHandshake::new(identity("a", SECRET), "ch", 0, nonce());
        let mut server = ServerHandshake::new(identity("b", SECRET), nonce());
        let Ok(Step::Reply(Envelope::Challenge(ch))) = server.on_frame(hello) else {
            panic!()
        };
        // An attacker without the secret echoes the server's own proof back.
        let r = server.on_frame(Envelope::Proof { proof: ch.proof });
        assert!(matches!(
            r,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                ..
            })
        ));
    }

    #[test]
    fn proof_from_another_connection_is_rejected() {
        // A genuine client proof recorded on one connection, replayed on a new one.
        let (mut client, hello) = ClientHandshake::new(identity("a", SECRET), "ch", 0, nonce());
        let mut server = ServerHandshake::new(identity("b", SECRET), nonce());
        let Ok(Step::Reply(ch)) = server.on_frame(hello.clone()) else {
            panic!()
        };
        let Ok(Step::Reply(recorded)) = client.on_frame(ch) else {
            panic!()
        };
        let mut fresh = ServerHandshake::new(identity("b", SECRET), nonce());
        assert!(fresh.on_frame(hello).is_ok());
        assert!(fresh.on_frame(recorded).is_err());
    }

    proptest! {
        /// Arbitrary bytes, decoded as frames and fed to a server machine: no panic, and
        /// without the secret nothing ever authenticates.
        #[test]
        fn garbage_never_authenticates(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut server = ServerHandshake::new(identity("b", SECRET), nonce());
            let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
            let mut rest = &input[..];
            'feed: loop {
                while let Ok(Some(body)) = decoder.next_frame() {
                    let Ok(env) = frame::decode(body) else { break 'feed };
                    match server.on_frame(env) {
                        Ok(Step::Done(..)) => prop_assert!(false, "authenticated garbage"),
                        Ok(Step::Reply(_)) => {}
                        Err(_) => break 'feed,
                    }
                }
                if rest.is_empty() { break; }
                match decoder.push(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(_) => break,
                }
                prop_assert!(decoder.capacity() <= HANDSHAKE_MAX_FRAME + frame::HEADER_LEN);
            }
        }

        /// A valid Hello followed by arbitrary proofs: never authenticated.
        #[test]
        fn forged_proofs_never_authenticate(proof in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (_c, hello) = ClientHandshake::new(identity("a", SECRET), "ch", 0, nonce());
            let mut server = ServerHandshake::new(identity("b", SECRET), nonce());
            prop_assert!(server.on_frame(hello).is_ok());
            let r = server.on_frame(Envelope::Proof { proof: Bytes::from(proof) });
            prop_assert!(r.is_err());
        }
    }
}
