//! Behaviour of the transport, each test run on loopback TCP and on the in-memory
//! transport (the latter under tokio's paused time).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foundation_distributed::transport::frame::{self, Envelope, Hello};
use foundation_distributed::transport::{
    ClusterSecret, Frame, MemoryNetwork, MemoryTransport, Refusal, Security, TcpTransport,
    Transport, TransportSettings, PROTOCOL_VERSION,
};
use foundation_distributed::Error;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SECRET: &str = "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f";
const OTHER_SECRET: &str = "3b8e1f7c2d9a4065e7f1c3a5b9d2e8f4a6c1b7d3e9f5a2c8b4d0e6f1a7c3b9d5";

fn secret(hex: &str) -> Security {
    Security::Secret(ClusterSecret::from_hex(hex).unwrap())
}

trait Raw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Raw for T {}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Memory,
}

/// Builds transports of one kind; memory ones share a network.
struct Net {
    kind: Kind,
    network: MemoryNetwork,
}

impl Net {
    fn new(kind: Kind) -> Self {
        Net {
            kind,
            network: MemoryNetwork::new(),
        }
    }

    fn settings(node: &str) -> TransportSettings {
        TransportSettings {
            cluster: "test".into(),
            node: node.into(),
            security: secret(SECRET),
            handshake_timeout_ms: 2000,
            ..Default::default()
        }
    }

    fn with(&self, settings: TransportSettings) -> Arc<dyn Transport> {
        match self.kind {
            Kind::Tcp => Arc::new(TcpTransport::new(settings).unwrap()),
            Kind::Memory => Arc::new(MemoryTransport::new(&self.network, settings).unwrap()),
        }
    }

    fn node(&self, node: &str) -> Arc<dyn Transport> {
        self.with(Self::settings(node))
    }

    fn listen_addr(&self, name: &str) -> String {
        match self.kind {
            Kind::Tcp => "127.0.0.1:0".into(),
            Kind::Memory => format!("mem://{name}"),
        }
    }

    async fn raw(&self, addr: &str) -> Box<dyn Raw> {
        match self.kind {
            Kind::Tcp => Box::new(tokio::net::TcpStream::connect(addr).await.unwrap()),
            Kind::Memory => Box::new(self.network.connect_raw(addr).unwrap()),
        }
    }
}

/// A metric name and its labels.
type MetricKey = (String, Vec<(String, String)>);

/// Metric values seen so far. The debugging recorder resets values on every snapshot,
/// so readings are accumulated here (gauges too: what it reports are deltas).
struct Seen {
    snapshotter: Snapshotter,
    values: RefCell<HashMap<MetricKey, f64>>,
}

fn recorder() -> (DebuggingRecorder, Seen) {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snapshotter: recorder.snapshotter(),
        values: RefCell::new(HashMap::new()),
    };
    (recorder, seen)
}

/// Value of `name{label=value}` (summed over other labels).
fn metric(seen: &Seen, name: &str, label: (&str, &str)) -> f64 {
    let mut values = seen.values.borrow_mut();
    for (key, .., value) in seen.snapshotter.snapshot().into_vec() {
        let labels = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => unreachable!(),
        };
        *values
            .entry((key.key().name().to_owned(), labels))
            .or_default() += v;
    }
    values
        .iter()
        .filter(|((n, labels), _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map(|(_, v)| v)
        .sum()
}

fn handshakes(snap: &Seen, result: &str) -> f64 {
    metric(
        snap,
        "foundation_transport_handshakes_total",
        ("result", result),
    )
}

fn frame_errors(snap: &Seen, reason: &str) -> f64 {
    metric(
        snap,
        "foundation_transport_frame_errors_total",
        ("reason", reason),
    )
}

/// Waits (in small sleeps; virtual under paused time) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

async fn write_envelope(raw: &mut Box<dyn Raw>, envelope: &Envelope) {
    raw.write_all(&frame::encode_to_bytes(envelope))
        .await
        .unwrap();
}

/// The next envelope from a raw stream, `None` at end of stream (or a reset).
async fn read_envelope(raw: &mut Box<dyn Raw>) -> Option<Envelope> {
    let mut header = [0u8; 4];
    raw.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    raw.read_exact(&mut body).await.ok()?;
    Some(frame::decode(Bytes::from(body)).unwrap())
}

/// Reads until the stream ends; returns the envelopes read before it did.
async fn read_to_end(raw: &mut Box<dyn Raw>) -> Vec<Envelope> {
    let mut out = Vec::new();
    while let Some(e) = read_envelope(raw).await {
        out.push(e);
    }
    out
}

fn hello(version: u16, cluster: &str) -> Envelope {
    Envelope::Hello(Hello {
        version,
        cluster: cluster.into(),
        security: "secret".into(),
        node: "raw".into(),
        addr: String::new(),
        channel: "c".into(),
        index: 0,
        nonce: Bytes::from(vec![7u8; 32]),
    })
}

/// A proper peer is accepted and exchanges a frame with the listener.
async fn proper_peer_is_served(
    net: &Net,
    listener: &mut foundation_distributed::transport::Listener,
) {
    let good = net.node("good");
    let mut client = good
        .connect(listener.local_addr(), "control", 0)
        .await
        .unwrap();
    client
        .send(9, Bytes::from_static(b"from good"))
        .await
        .unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(server.peer().node, "good");
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Frame::Data {
            channel: 9,
            payload: Bytes::from_static(b"from good")
        })
    );
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Tcp).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
    };
}

both!(
    round_trip_after_handshake,
    wrong_secret_is_refused_on_both_sides,
    wrong_cluster_is_refused,
    wrong_version_is_refused,
    garbage_closes_the_connection_and_the_listener_keeps_serving,
    oversized_length_prefix_closes_the_connection_and_the_listener_keeps_serving,
    stalled_handshake_is_timed_out,
    data_before_authentication_is_never_delivered,
    oversized_frame_on_an_established_connection_closes_it,
    connections_gauge_follows_open_connections,
    frames_sent_right_after_the_handshake_are_kept,
);

async fn round_trip_after_handshake(kind: Kind) {
    let net = Net::new(kind);
    let (a, b) = (net.node("a"), net.node("b"));
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let mut client = a.connect(listener.local_addr(), "bulk", 3).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(client.peer().node, "b");
    assert_eq!(server.peer().node, "a");
    assert_eq!(
        (server.peer().channel.as_str(), server.peer().index),
        ("bulk", 3)
    );
    assert_eq!(server.peer().version, PROTOCOL_VERSION);

    // Sizes on both sides of the copy threshold, both directions.
    let payloads: Vec<Bytes> = [0usize, 1, 64, 16 * 1024, 16 * 1024 + 1, 300 * 1024]
        .iter()
        .map(|&n| Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>()))
        .collect();
    // Sender and receiver run concurrently: a frame may be larger than the stream buffer.
    let send_all = async {
        for (i, p) in payloads.iter().enumerate() {
            client.feed(i as u32, p.clone()).await.unwrap();
        }
        client.flush().await.unwrap();
    };
    let receive_all = async {
        for (i, p) in payloads.iter().enumerate() {
            let got = server.recv().await.unwrap();
            assert_eq!(
                got,
                Some(Frame::Data {
                    channel: i as u32,
                    payload: p.clone()
                })
            );
        }
    };
    tokio::join!(send_all, receive_all);
    let send_back = async {
        for (i, p) in payloads.iter().enumerate().rev() {
            server.send(100 + i as u32, p.clone()).await.unwrap();
        }
    };
    let receive_back = async {
        for (i, p) in payloads.iter().enumerate().rev() {
            assert_eq!(
                client.recv().await.unwrap(),
                Some(Frame::Data {
                    channel: 100 + i as u32,
                    payload: p.clone()
                })
            );
        }
    };
    tokio::join!(send_back, receive_back);

    let (mut tx, mut rx) = client.split();
    tx.ping(42).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), Some(Frame::Ping(42)));
    server.flush().await.unwrap();
    let (mut stx, mut srx) = server.split();
    stx.pong(42).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), Some(Frame::Pong(42)));

    tx.close("done").await.unwrap();
    assert_eq!(srx.recv().await.unwrap(), None);
    assert_eq!(srx.close_reason(), Some("done"));
}

async fn wrong_secret_is_refused_on_both_sides(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let intruder = net.with(TransportSettings {
        security: secret(OTHER_SECRET),
        ..Net::settings("intruder")
    });
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let err = intruder
        .connect(listener.local_addr(), "c", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                reason: Refusal::Authentication,
                by_peer: true
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // Both sides count it: the intruder's transport and the listener.
    eventually("both sides count the failure", || {
        handshakes(&snap, "authentication") == 2.0
    })
    .await;
    assert_eq!(handshakes(&snap, "ok"), 0.0);
    // The refused peer never reaches accept(): the next accepted is the proper one.
    proper_peer_is_served(&net, &mut listener).await;
    assert_eq!(handshakes(&snap, "ok"), 2.0);
}

async fn wrong_cluster_is_refused(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let stranger = net.with(TransportSettings {
        cluster: "elsewhere".into(),
        ..Net::settings("stranger")
    });
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let err = stranger
        .connect(listener.local_addr(), "c", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                reason: Refusal::Cluster,
                by_peer: true
            }
        ),
        "{err:?}"
    );
    eventually("both sides count the failure", || {
        handshakes(&snap, "cluster") == 2.0
    })
    .await;
    proper_peer_is_served(&net, &mut listener).await;
}

async fn wrong_version_is_refused(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let mut raw = net.raw(listener.local_addr()).await;
    write_envelope(&mut raw, &hello(PROTOCOL_VERSION + 1, "test")).await;
    assert_eq!(
        read_to_end(&mut raw).await,
        vec![Envelope::Refused(Refusal::Version {
            supported: PROTOCOL_VERSION
        })]
    );
    eventually("counted", || handshakes(&snap, "version") == 1.0).await;
    proper_peer_is_served(&net, &mut listener).await;
}

async fn garbage_closes_the_connection_and_the_listener_keeps_serving(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    // A plausible length, then bytes that are no envelope.
    let mut raw = net.raw(listener.local_addr()).await;
    raw.write_all(&[0, 0, 0, 6, 0xc1, 0xff, 0x00, 0x13, 0x37, 0x42])
        .await
        .unwrap();
    assert_eq!(
        read_to_end(&mut raw).await,
        vec![Envelope::Refused(Refusal::Protocol)]
    );
    eventually("counted", || frame_errors(&snap, "undecodable") == 1.0).await;
    assert_eq!(handshakes(&snap, "protocol"), 1.0);
    proper_peer_is_served(&net, &mut listener).await;
}

async fn oversized_length_prefix_closes_the_connection_and_the_listener_keeps_serving(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    // "GET " read as a length is ~1.2 GB: refused from the header alone.
    let mut raw = net.raw(listener.local_addr()).await;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_end(&mut raw).await,
        vec![Envelope::Refused(Refusal::Protocol)]
    );
    let mut raw = net.raw(listener.local_addr()).await;
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        read_to_end(&mut raw).await,
        vec![Envelope::Refused(Refusal::Protocol)]
    );
    eventually("counted", || frame_errors(&snap, "oversized") == 2.0).await;
    proper_peer_is_served(&net, &mut listener).await;
}

async fn stalled_handshake_is_timed_out(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.with(TransportSettings {
        handshake_timeout_ms: 200,
        ..Net::settings("b")
    });
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    // Half a Hello, then silence (slowloris).
    let mut raw = net.raw(listener.local_addr()).await;
    let bytes = frame::encode_to_bytes(&hello(PROTOCOL_VERSION, "test"));
    raw.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    // A second stalled peer that sends nothing at all.
    let mut silent = net.raw(listener.local_addr()).await;
    // The listener drops both: the streams end without any frame.
    assert_eq!(read_to_end(&mut raw).await, vec![]);
    assert_eq!(read_to_end(&mut silent).await, vec![]);
    eventually("counted", || handshakes(&snap, "timeout") == 2.0).await;
    // Meanwhile and afterwards, proper peers are served.
    proper_peer_is_served(&net, &mut listener).await;
}

async fn data_before_authentication_is_never_delivered(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let b = net.node("b");
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let poison = Envelope::Data {
        channel: 9,
        payload: Bytes::from_static(b"unauthenticated"),
    };
    // Data right after Hello, without waiting for the challenge.
    let mut raw = net.raw(listener.local_addr()).await;
    let mut wire = BytesMut::new();
    frame::encode(&hello(PROTOCOL_VERSION, "test"), &mut wire);
    frame::encode(&poison, &mut wire);
    raw.write_all(&wire).await.unwrap();
    let answers = read_to_end(&mut raw).await;
    assert!(matches!(answers[0], Envelope::Challenge(_)), "{answers:?}");
    assert_eq!(answers[1..], [Envelope::Refused(Refusal::Protocol)]);

    // Data pipelined behind a forged proof.
    let mut raw = net.raw(listener.local_addr()).await;
    write_envelope(&mut raw, &hello(PROTOCOL_VERSION, "test")).await;
    assert!(matches!(
        read_envelope(&mut raw).await,
        Some(Envelope::Challenge(_))
    ));
    let mut wire = BytesMut::new();
    frame::encode(
        &Envelope::Proof {
            proof: Bytes::from(vec![0u8; 32]),
        },
        &mut wire,
    );
    frame::encode(&poison, &mut wire);
    raw.write_all(&wire).await.unwrap();
    assert_eq!(
        read_to_end(&mut raw).await,
        vec![Envelope::Refused(Refusal::Authentication)]
    );

    eventually("counted", || {
        handshakes(&snap, "protocol") == 1.0 && handshakes(&snap, "authentication") == 1.0
    })
    .await;
    assert_eq!(frame_errors(&snap, "unexpected"), 1.0);
    // The first connection accepted is the proper peer, and its first frame is its own.
    proper_peer_is_served(&net, &mut listener).await;
}

async fn oversized_frame_on_an_established_connection_closes_it(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new(kind);
    let small = net.with(TransportSettings {
        max_frame: 1024,
        ..Net::settings("small")
    });
    let big = net.node("big");
    let mut listener = small.listen(&net.listen_addr("small")).await.unwrap();
    let mut client = big.connect(listener.local_addr(), "c", 0).await.unwrap();
    let mut server = listener.accept().await.unwrap();

    // The sender refuses locally what exceeds its own limit, and stays usable.
    let mut tiny_sender = small.connect(listener.local_addr(), "c", 1).await.unwrap();
    let err = tiny_sender
        .send(0, Bytes::from(vec![0u8; 2048]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { max: 1024, .. }),
        "{err:?}"
    );
    tiny_sender
        .send(0, Bytes::from_static(b"ok"))
        .await
        .unwrap();

    client.send(1, Bytes::from(vec![1u8; 2048])).await.unwrap();
    let err = server.recv().await.unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { max: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(frame_errors(&snap, "oversized"), 1.0);
    // The connection is closed on both ends.
    assert!(matches!(server.recv().await, Err(Error::Closed { .. })));
    assert_eq!(client.recv().await.unwrap(), None);
    // The listener still serves.
    let mut next = listener.accept().await.unwrap();
    assert_eq!(next.peer().index, 1);
    assert_eq!(
        next.recv().await.unwrap(),
        Some(Frame::Data {
            channel: 0,
            payload: Bytes::from_static(b"ok")
        })
    );
}

async fn connections_gauge_follows_open_connections(kind: Kind) {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let label = match kind {
        Kind::Tcp => "tcp",
        Kind::Memory => "memory",
    };
    let gauge = || {
        metric(
            &snap,
            "foundation_transport_connections",
            ("transport", label),
        )
    };
    let net = Net::new(kind);
    let (a, b) = (net.node("a"), net.node("b"));
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let mut client = a.connect(listener.local_addr(), "c", 0).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(gauge(), 2.0);
    client.send(1, Bytes::from(vec![0u8; 100])).await.unwrap();
    assert!(server.recv().await.unwrap().is_some());
    let framed = frame::encode_to_bytes(&Envelope::Data {
        channel: 1,
        payload: Bytes::from(vec![0u8; 100]),
    });
    let bytes = |d| metric(&snap, "foundation_transport_bytes_total", ("direction", d));
    let frames = |d| metric(&snap, "foundation_transport_frames_total", ("direction", d));
    assert_eq!((frames("out"), frames("in")), (1.0, 1.0));
    // One sealed record around the frame: its 4-byte length and a 16-byte tag.
    assert_eq!(bytes("out"), framed.len() as f64 + 20.0);
    assert_eq!(bytes("in"), framed.len() as f64 + 20.0);
    let (tx, rx) = server.split();
    drop(tx);
    assert_eq!(gauge(), 2.0);
    drop(rx);
    drop(client);
    assert_eq!(gauge(), 0.0);
}

/// Frames that arrive in the same read as the last handshake message are handed to the
/// connection, not lost with the handshake's buffer (on loopback TCP they share a read
/// with `Accepted`; a decoder dropped after the handshake fails this test).
async fn frames_sent_right_after_the_handshake_are_kept(kind: Kind) {
    let net = Net::new(kind);
    let (a, b) = (net.node("a"), net.node("b"));
    let mut listener = b.listen(&net.listen_addr("b")).await.unwrap();
    let addr = listener.local_addr().to_owned();
    let eager_server = async {
        let mut conn = listener.accept().await.unwrap();
        for i in 0..3u32 {
            conn.feed(i, Bytes::from(vec![i as u8; 10])).await.unwrap();
        }
        conn.flush().await.unwrap();
        conn
    };
    let (client, _server) = tokio::join!(a.connect(&addr, "c", 0), eager_server);
    let mut client = client.unwrap();
    for i in 0..3u32 {
        // Bounded so that a lost frame fails the test instead of hanging it.
        let got = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("frame lost after the handshake");
        assert_eq!(
            got.unwrap(),
            Some(Frame::Data {
                channel: i,
                payload: Bytes::from(vec![i as u8; 10])
            })
        );
    }
}

#[tokio::test]
async fn tcp_client_times_out_on_a_silent_server() {
    let (recorder, snap) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        // Keep the stream open, answer nothing.
        std::future::pending::<()>().await;
        drop(stream);
    });
    let a = Net::new(Kind::Tcp).with(TransportSettings {
        handshake_timeout_ms: 200,
        ..Net::settings("a")
    });
    let err = a.connect(&addr, "c", 0).await.unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(handshakes(&snap, "timeout"), 1.0);
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn memory_addresses_are_exclusive_and_released() {
    let net = Net::new(Kind::Memory);
    let b = net.node("b");
    let listener = b.listen("mem://b").await.unwrap();
    assert!(matches!(
        b.listen("mem://b").await,
        Err(Error::AddressInUse { .. })
    ));
    assert!(matches!(
        b.listen("tcp://x:1").await,
        Err(Error::InvalidAddress { .. })
    ));
    assert!(matches!(
        net.node("a").connect("mem://nobody", "c", 0).await,
        Err(Error::NoListener { .. })
    ));
    assert_eq!(net.network.listening(), vec!["b".to_owned()]);
    listener.shutdown().await;
    assert!(net.network.listening().is_empty());
    let _again = b.listen("mem://b").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_listener_stops_its_tasks() {
    let before = foundation_distributed::core::telemetry::live_tasks();
    let net = Net::new(Kind::Memory);
    let b = net.node("b");
    let listener = b.listen("mem://b").await.unwrap();
    // A handshake in progress, owned by the listener.
    let _raw = net.network.connect_raw("mem://b").unwrap();
    eventually("tasks started", || {
        foundation_distributed::core::telemetry::live_tasks() >= before + 2
    })
    .await;
    drop(listener);
    eventually("tasks stopped", || {
        foundation_distributed::core::telemetry::live_tasks() <= before
    })
    .await;
    eventually("name released", || net.network.listening().is_empty()).await;
}

#[test]
fn settings_are_validated() {
    let ok = Net::settings("a");
    assert!(ok.validate().is_ok());
    for bad in [
        TransportSettings {
            security: Security::Secret(ClusterSecret::default()),
            ..ok.clone()
        },
        TransportSettings {
            cluster: String::new(),
            ..ok.clone()
        },
        TransportSettings {
            max_frame: 10,
            ..ok.clone()
        },
        TransportSettings {
            handshake_timeout_ms: 0,
            ..ok.clone()
        },
    ] {
        let err = TcpTransport::new(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidSettings { .. }), "{err:?}");
    }
    assert!(!format!("{ok:?}").contains(SECRET));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Arbitrary bytes, optionally behind a valid Hello, sent to a listening in-memory
    /// node: no panic, nothing is ever accepted, and a proper peer is served afterwards.
    #[test]
    fn arbitrary_bytes_never_yield_a_connection(
        valid_hello in any::<bool>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let net = Net::new(Kind::Memory);
            let b = net.node("b");
            let mut listener = b.listen("mem://b").await.unwrap();
            let mut raw = net.raw("mem://b").await;
            let mut wire = BytesMut::new();
            if valid_hello {
                frame::encode(&hello(PROTOCOL_VERSION, "test"), &mut wire);
            }
            wire.extend_from_slice(&garbage);
            let _ = raw.write_all(&wire).await;
            // Whatever the listener answers, it never reaches accept(): the first
            // connection accepted is the proper peer's.
            proper_peer_is_served(&net, &mut listener).await;
            drop(raw);
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_write_leaves_the_sender_failed_not_torn() {
    let net = Net::new(Kind::Memory);
    let (a, b) = (net.node("a"), net.node("b"));
    let mut listener = b.listen("mem://b").await.unwrap();
    let mut client = a.connect("mem://b", "c", 0).await.unwrap();
    let _server = listener.accept().await.unwrap();
    // The server never reads: a 1 MiB frame cannot fit the 256 KiB stream buffer.
    let big = Bytes::from(vec![0u8; 1 << 20]);
    let sent = tokio::time::timeout(Duration::from_secs(1), client.send(1, big)).await;
    assert!(sent.is_err(), "the write should have been stuck");
    let err = tokio::time::timeout(
        Duration::from_secs(1),
        client.send(2, Bytes::from_static(b"after")),
    )
    .await
    .expect("must fail at once, not write behind a torn frame")
    .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn every_transport_metric_is_described() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    foundation_distributed::describe_metrics();
    let net = Net::new(Kind::Memory);
    let (a, b) = (net.node("a"), net.node("b"));
    let mut listener = b.listen("mem://b").await.unwrap();
    let mut client = a.connect("mem://b", "c", 0).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    client.send(1, Bytes::from_static(b"x")).await.unwrap();
    server.recv().await.unwrap();
    let mut raw = net.raw("mem://b").await;
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    read_to_end(&mut raw).await;
    eventually("frame error recorded", || {
        snapshotter
            .snapshot()
            .into_vec()
            .iter()
            .any(|(k, ..)| k.key().name() == "foundation_transport_frame_errors_total")
    })
    .await;
    let described: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(_, _, help, _)| help.is_some())
        .map(|(k, ..)| k.key().name().to_owned())
        .collect();
    for name in [
        "foundation_transport_connections",
        "foundation_transport_handshakes_total",
        "foundation_transport_frames_total",
        "foundation_transport_bytes_total",
        "foundation_transport_frame_errors_total",
    ] {
        assert!(described.iter().any(|n| n == name), "{name}: {described:?}");
    }
}
