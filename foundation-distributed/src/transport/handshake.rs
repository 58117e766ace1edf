//! The handshake as two sans-I/O state machines, the HMAC transcript and the key
//! schedule of [`Security::Secret`](super::Security::Secret).
//!
//! ```text
//! client                                   server
//!   Hello{version, cluster, security,
//!         node, addr, channel, index,
//!         nonce_c}                   ──►   refuse on version, cluster or security mode;
//!                                          (tls) refuse unless the client's certificate
//!                                          is valid for the node name it claims
//!                                    ◄──   Challenge{version, security, node, addr, nonce_s}
//!   (tls) refuse unless the server's
//!   certificate is valid for its name
//!   Proof{proof_c}                   ──►   (secret) verify proof_c (constant time)
//!                                    ◄──   Accepted{proof_s}
//!   (secret) verify proof_s
//! ```
//!
//! In `secret` mode `proof_c = MAC(K, "client" ‖ T)` and `proof_s = MAC(K, "server" ‖ T)`
//! (HMAC-SHA256 keyed with the cluster secret), where `T` is every field of `Hello` and
//! `Challenge`, each length-prefixed, so it binds both nonces, both names, both security
//! modes, the channel and the connection index. **The server proves nothing before the
//! client has**: its `Challenge` carries only a fresh nonce, so a stranger who connects
//! learns nothing to test guesses of the secret against. The role label makes one
//! side's proof useless as the other's (no reflection); fresh nonces make an old proof
//! useless on a new connection (no replay). Session keys are then derived with
//! HKDF-SHA256 from the secret, salted with both nonces, bound to `SHA-256(T)`
//! ([`record`](super::record)). In `tls` and `insecure-plaintext` mode the proofs are
//! empty: TLS authenticated the peers already, plaintext does not authenticate.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::frame::{Challenge, Envelope, Hello};
use super::record::{self, Opener, Sealer};
use super::{ClusterSecret, Peer};
use crate::{Error, Result};

/// The protocol version this build speaks. Version 2: the client proves first, session
/// keys and sealed records in `secret` mode, security modes in the handshake. Version 3:
/// the node's messages for batched sends, coordinated topology switches and partial-view
/// membership (a version-2 node is refused at the handshake with a clear error instead of
/// dropping those messages as undecodable). Version 4: the node's `SendBatch` carries no
/// count (its messages run to the end of the frame, so the sender's queue can append to
/// a waiting frame, D390), and `send` uses it for single messages too.
pub const PROTOCOL_VERSION: u16 = 4;

/// Body limit while a connection is unauthenticated: an anonymous peer can make us
/// buffer at most this much.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 4096;

/// Length of each side's random nonce.
pub(crate) const NONCE_LEN: usize = 32;

const DOMAIN: &[u8] = b"foundation-transport handshake v2";

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
    /// The peers use different security modes; `mode` is the refuser's.
    Security {
        /// The refusing side's security mode (`tls`, `secret`, `insecure-plaintext`).
        mode: String,
    },
    /// The source address failed too many handshakes recently; the connection was
    /// closed before any handshake work (never sent: the connection is just closed).
    RateLimited,
    /// TLS failed (unknown CA, expired or malformed certificate, ...), or a
    /// certificate is not valid for the node name its holder claims.
    Certificate {
        /// What was wrong.
        detail: String,
    },
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
            Refusal::Security { mode } => {
                write!(f, "security mode mismatch (refuser uses `{mode}`)")
            }
            Refusal::Certificate { detail } => write!(f, "certificate refused: {detail}"),
            Refusal::RateLimited => f.write_str("too many failed handshakes from this address"),
        }
    }
}

/// How this side authenticates.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    Tls,
    Secret(ClusterSecret),
    Plaintext,
}

impl Auth {
    fn mode(&self) -> &'static str {
        match self {
            Auth::Tls => "tls",
            Auth::Secret(_) => "secret",
            Auth::Plaintext => "insecure-plaintext",
        }
    }
}

/// Who we are in handshakes.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub cluster: String,
    pub node: String,
    pub addr: String,
    pub auth: Auth,
}

/// Session keys of a `secret`-mode connection.
#[derive(Debug)]
pub(crate) struct Keys {
    pub sealer: Sealer,
    pub opener: Opener,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The transcript `T`: every field of both messages, length-prefixed.
fn transcript(hello: &Hello, ch: &Challenge) -> Vec<u8> {
    let mut t = Vec::with_capacity(256);
    field(&mut t, DOMAIN);
    field(&mut t, &hello.version.to_be_bytes());
    field(&mut t, hello.cluster.as_bytes());
    field(&mut t, hello.security.as_bytes());
    field(&mut t, hello.node.as_bytes());
    field(&mut t, hello.addr.as_bytes());
    field(&mut t, hello.channel.as_bytes());
    field(&mut t, &hello.index.to_be_bytes());
    field(&mut t, &hello.nonce);
    field(&mut t, &ch.version.to_be_bytes());
    field(&mut t, ch.security.as_bytes());
    field(&mut t, ch.node.as_bytes());
    field(&mut t, ch.addr.as_bytes());
    field(&mut t, &ch.nonce);
    t
}

/// `MAC(K, role ‖ T)`.
fn mac(secret: &ClusterSecret, role: &[u8], t: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose())
        .expect("HMAC accepts any key length");
    mac.update(&(role.len() as u64).to_be_bytes());
    mac.update(role);
    mac.update(t);
    mac
}

/// `(client → server, server → client)` keys of a connection.
fn session_keys(secret: &ClusterSecret, hello: &Hello, ch: &Challenge) -> ([u8; 32], [u8; 32]) {
    let hash = Sha256::digest(transcript(hello, ch));
    record::derive(secret.expose(), &hello.nonce, &ch.nonce, &hash)
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

/// Refuses unless `cert` (the peer's TLS certificate) is valid for `node`.
fn check_name(cert: Option<&CertificateDer<'static>>, node: &str) -> Result<()> {
    match cert {
        Some(cert) if super::tls::name_matches(cert, node) => Ok(()),
        Some(_) => Err(refused(Refusal::Certificate {
            detail: format!(
                "the peer's certificate is not valid for the node name it claims, `{node}`"
            ),
        })),
        None => Err(refused(Refusal::Certificate {
            detail: "the peer presented no certificate".into(),
        })),
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
    /// Send this frame (if any); the peer is authenticated; seal with these keys.
    Done(Option<Envelope>, Peer, Option<Box<Keys>>),
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
    peer_cert: Option<CertificateDer<'static>>,
    state: ServerState,
}

impl ServerHandshake {
    /// `peer_cert`: the client's TLS certificate (TLS mode).
    pub(crate) fn new(
        me: Arc<Identity>,
        nonce: Bytes,
        peer_cert: Option<CertificateDer<'static>>,
    ) -> Self {
        ServerHandshake {
            me,
            nonce,
            peer_cert,
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
                if hello.security != self.me.auth.mode() {
                    return Err(refused(Refusal::Security {
                        mode: self.me.auth.mode().into(),
                    }));
                }
                if hello.nonce.len() != NONCE_LEN {
                    return Err(refused(Refusal::Protocol));
                }
                if let Auth::Tls = self.me.auth {
                    check_name(self.peer_cert.as_ref(), &hello.node)?;
                }
                let challenge = Challenge {
                    version: PROTOCOL_VERSION,
                    security: self.me.auth.mode().into(),
                    node: self.me.node.clone(),
                    addr: self.me.addr.clone(),
                    nonce: self.nonce.clone(),
                };
                let reply = Envelope::Challenge(challenge.clone());
                self.state = ServerState::AwaitProof(Box::new((hello, challenge)));
                Ok(Step::Reply(reply))
            }
            (ServerState::AwaitProof(pending), Envelope::Proof { proof }) => {
                let (hello, challenge) = *pending;
                let (accepted, keys) = match &self.me.auth {
                    Auth::Secret(secret) => {
                        let t = transcript(&hello, &challenge);
                        mac(secret, b"client", &t)
                            .verify_slice(&proof)
                            .map_err(|_| refused(Refusal::Authentication))?;
                        let proof_s = mac(secret, b"server", &t).finalize().into_bytes();
                        let (c2s, s2c) = session_keys(secret, &hello, &challenge);
                        (
                            Bytes::copy_from_slice(&proof_s),
                            Some(Box::new(Keys {
                                sealer: Sealer::new(&s2c),
                                opener: Opener::new(&c2s),
                            })),
                        )
                    }
                    Auth::Tls | Auth::Plaintext => (Bytes::new(), None),
                };
                let peer = Peer {
                    node: hello.node,
                    addr: hello.addr,
                    channel: hello.channel,
                    index: hello.index,
                    version: hello.version,
                };
                Ok(Step::Done(
                    Some(Envelope::Accepted { proof: accepted }),
                    peer,
                    keys,
                ))
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
    AwaitAccepted(Box<(Challenge, Peer)>),
    Finished,
}

/// The connecting side.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    me: Arc<Identity>,
    hello: Hello,
    peer_cert: Option<CertificateDer<'static>>,
    state: ClientState,
}

impl ClientHandshake {
    /// The state machine and the `Hello` to send first. `peer_cert`: the server's TLS
    /// certificate (TLS mode).
    pub(crate) fn new(
        me: Arc<Identity>,
        channel: &str,
        index: u16,
        nonce: Bytes,
        peer_cert: Option<CertificateDer<'static>>,
    ) -> (Self, Envelope) {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster: me.cluster.clone(),
            security: me.auth.mode().into(),
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
                peer_cert,
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
                if challenge.security != self.me.auth.mode() {
                    return Err(refused(Refusal::Security {
                        mode: self.me.auth.mode().into(),
                    }));
                }
                if challenge.nonce.len() != NONCE_LEN {
                    return Err(refused(Refusal::Protocol));
                }
                let proof = match &self.me.auth {
                    Auth::Secret(secret) => {
                        let t = transcript(&self.hello, &challenge);
                        Bytes::copy_from_slice(&mac(secret, b"client", &t).finalize().into_bytes())
                    }
                    Auth::Tls => {
                        check_name(self.peer_cert.as_ref(), &challenge.node)?;
                        Bytes::new()
                    }
                    Auth::Plaintext => Bytes::new(),
                };
                let peer = Peer {
                    node: challenge.node.clone(),
                    addr: challenge.addr.clone(),
                    channel: self.hello.channel.clone(),
                    index: self.hello.index,
                    version: challenge.version,
                };
                self.state = ClientState::AwaitAccepted(Box::new((challenge, peer)));
                Ok(Step::Reply(Envelope::Proof { proof }))
            }
            (ClientState::AwaitAccepted(pending), Envelope::Accepted { proof }) => {
                let (challenge, peer) = *pending;
                let keys = match &self.me.auth {
                    Auth::Secret(secret) => {
                        let t = transcript(&self.hello, &challenge);
                        mac(secret, b"server", &t)
                            .verify_slice(&proof)
                            .map_err(|_| refused(Refusal::Authentication))?;
                        let (c2s, s2c) = session_keys(secret, &self.hello, &challenge);
                        Some(Box::new(Keys {
                            sealer: Sealer::new(&c2s),
                            opener: Opener::new(&s2c),
                        }))
                    }
                    Auth::Tls | Auth::Plaintext => None,
                };
                Ok(Step::Done(None, peer, keys))
            }
            (_, Envelope::Refused(reason)) => Err(Error::Refused {
                reason,
                by_peer: true,
            }),
            (ClientState::AwaitChallenge, other) => Err(unexpected(&other, "awaiting Challenge")),
            (ClientState::AwaitAccepted(_), other) => Err(unexpected(&other, "awaiting Accepted")),
            (ClientState::Finished, other) => Err(unexpected(&other, "finished")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{self, FrameDecoder};
    use proptest::prelude::*;

    fn identity(node: &str, secret: &ClusterSecret) -> Arc<Identity> {
        Arc::new(Identity {
            cluster: "c".into(),
            node: node.into(),
            addr: format!("mem://{node}"),
            auth: Auth::Secret(secret.clone()),
        })
    }

    thread_local! {
        static SECRET_TL: ClusterSecret = ClusterSecret::generate();
    }

    #[allow(non_snake_case)]
    fn SECRET() -> ClusterSecret {
        SECRET_TL.with(Clone::clone)
    }

    /// Runs a client and a server machine against each other.
    fn run(
        client_secret: &ClusterSecret,
        server_secret: &ClusterSecret,
    ) -> (Result<Peer>, Result<Peer>) {
        let (mut client, hello) =
            ClientHandshake::new(identity("a", client_secret), "ch", 3, nonce(), None);
        let mut server = ServerHandshake::new(identity("b", server_secret), nonce(), None);
        let challenge = match server.on_frame(hello) {
            Ok(Step::Reply(c)) => c,
            other => panic!("{other:?}"),
        };
        let proof = match client.on_frame(challenge) {
            Ok(Step::Reply(p)) => p,
            Ok(other) => panic!("{other:?}"),
            Err(e) => panic!("{e:?}"),
        };
        match server.on_frame(proof) {
            Ok(Step::Done(Some(accepted), server_peer, Some(_))) => {
                match client.on_frame(accepted) {
                    Ok(Step::Done(None, client_peer, Some(_))) => {
                        (Ok(client_peer), Ok(server_peer))
                    }
                    other => panic!("{other:?}"),
                }
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                // The server refuses first; the client hears why.
                let c = client.on_frame(Envelope::Refused(Refusal::Authentication));
                (c.map(|_| unreachable!()), Err(e))
            }
        }
    }

    #[test]
    fn matching_secrets_authenticate_both_ways() {
        let (c, s) = run(&SECRET(), &SECRET());
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.node, "b");
        assert_eq!(s.node, "a");
        assert_eq!((s.channel.as_str(), s.index), ("ch", 3));
    }

    #[test]
    fn different_secrets_fail_on_both_sides() {
        let (c, s) = run(&SECRET(), &ClusterSecret::generate());
        assert!(matches!(
            c,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                by_peer: true
            })
        ));
        assert!(matches!(
            s,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                by_peer: false
            })
        ));
    }

    #[test]
    fn the_server_proves_nothing_before_the_client_has() {
        let (_client, hello) =
            ClientHandshake::new(identity("a", &SECRET()), "ch", 0, nonce(), None);
        let mut server = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
        let Ok(Step::Reply(Envelope::Challenge(ch))) = server.on_frame(hello) else {
            panic!()
        };
        // The challenge holds names and a nonce, nothing computed from the secret.
        let encoded = frame::encode_to_bytes(&Envelope::Challenge(ch.clone()));
        assert!(encoded.len() < 4 + 80 + ch.node.len() + ch.addr.len());
        // A client without the secret gets a refusal and no proof.
        let r = server.on_frame(Envelope::Proof {
            proof: Bytes::from_static(&[0; 32]),
        });
        assert!(matches!(
            r,
            Err(Error::Refused {
                reason: Refusal::Authentication,
                ..
            })
        ));
    }

    #[test]
    fn reflected_client_proof_is_rejected_by_the_client() {
        // A fake server that echoes the client's own proof as its Accepted proof.
        let (mut client, hello) =
            ClientHandshake::new(identity("a", &SECRET()), "ch", 0, nonce(), None);
        let mut server = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
        let Ok(Step::Reply(ch)) = server.on_frame(hello) else {
            panic!()
        };
        let Ok(Step::Reply(Envelope::Proof { proof })) = client.on_frame(ch) else {
            panic!()
        };
        let r = client.on_frame(Envelope::Accepted { proof });
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
        let (mut client, hello) =
            ClientHandshake::new(identity("a", &SECRET()), "ch", 0, nonce(), None);
        let mut server = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
        let Ok(Step::Reply(ch)) = server.on_frame(hello.clone()) else {
            panic!()
        };
        let Ok(Step::Reply(recorded)) = client.on_frame(ch) else {
            panic!()
        };
        let mut fresh = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
        assert!(fresh.on_frame(hello).is_ok());
        assert!(fresh.on_frame(recorded).is_err());
    }

    proptest! {
        /// Arbitrary bytes, decoded as frames and fed to a server machine: no panic, and
        /// without the secret nothing ever authenticates.
        #[test]
        fn garbage_never_authenticates(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut server = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
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
            let (_c, hello) = ClientHandshake::new(identity("a", &SECRET()), "ch", 0, nonce(), None);
            let mut server = ServerHandshake::new(identity("b", &SECRET()), nonce(), None);
            prop_assert!(server.on_frame(hello).is_ok());
            let r = server.on_frame(Envelope::Proof { proof: Bytes::from(proof) });
            prop_assert!(r.is_err());
        }
    }
}
