//! Transport security on loopback TCP: a man-in-the-middle that tampers with established
//! connections (secret-keyed AEAD mode and TLS), certificate checks (wrong CA, expired,
//! name mismatch, reload), weak secrets, and a flood of failed handshakes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use foundation_distributed::transport::frame::{self, Envelope, Hello};
use foundation_distributed::transport::tls::dev::{self, CaFiles, Validity};
use foundation_distributed::transport::{
    ClusterSecret, Frame, Refusal, Security, TcpTransport, TlsSettings, Transport,
    TransportSettings, PROTOCOL_VERSION,
};
use foundation_distributed::Error;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// Metrics

type MetricKey = (String, Vec<(String, String)>);

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
            DebugValue::Histogram(_) => continue,
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

fn handshakes(seen: &Seen, result: &str) -> f64 {
    metric(
        seen,
        "foundation_transport_handshakes_total",
        ("result", result),
    )
}

fn forged(seen: &Seen) -> f64 {
    metric(
        seen,
        "foundation_transport_frame_errors_total",
        ("reason", "forged"),
    )
}

// ---------------------------------------------------------------------------------------
// Fixtures

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fd-security-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings(node: &str, security: Security) -> TransportSettings {
    TransportSettings {
        cluster: "sec".into(),
        node: node.into(),
        security,
        handshake_timeout_ms: 5000,
        ..Default::default()
    }
}

fn tcp(node: &str, security: Security) -> TcpTransport {
    TcpTransport::new(settings(node, security)).unwrap()
}

/// A cluster CA in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: CaFiles,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let ca = dev::generate_ca(dir.join("ca"), "sec").unwrap();
        Pki { dir, ca }
    }

    fn node(&self, name: &str) -> TlsSettings {
        dev::issue_node_cert(&self.ca, name, self.dir.join(name)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Secret,
    Tls,
}

/// Two transports (`a` connects, `b` listens) in `mode`; keeps the PKI alive.
fn pair(mode: Mode) -> (TcpTransport, TcpTransport, Option<Pki>) {
    match mode {
        Mode::Secret => {
            let secret = ClusterSecret::generate();
            (
                tcp("a", Security::Secret(secret.clone())),
                tcp("b", Security::Secret(secret)),
                None,
            )
        }
        Mode::Tls => {
            let pki = Pki::new("pair");
            let (a, b) = (pki.node("a"), pki.node("b"));
            (
                tcp("a", Security::Tls(a)),
                tcp("b", Security::Tls(b)),
                Some(pki),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// The man in the middle

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Flip one bit in the body of the next unit.
    FlipBit,
    /// Insert a valid-looking unit of the attacker's own before the next one.
    Inject,
    /// Send a copy of the previous unit (already delivered) before the next one.
    Replay,
    /// Swap the next two units.
    Reorder,
}

/// How the proxy cuts the client → server byte stream into units: Foundation frames
/// (4-byte length) or TLS records (5-byte header, length in bytes 3..5).
#[derive(Clone, Copy, Debug)]
enum Cut {
    Frames,
    TlsRecords,
}

impl Cut {
    fn unit_len(self, buf: &[u8]) -> Option<usize> {
        match self {
            Cut::Frames if buf.len() >= 4 => {
                Some(4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
            }
            Cut::TlsRecords if buf.len() >= 5 => {
                Some(5 + u16::from_be_bytes([buf[3], buf[4]]) as usize)
            }
            _ => None,
        }
    }

    /// A unit that looks right to a parser that cannot check authenticity.
    fn forged_unit(self) -> Vec<u8> {
        match self {
            // A well-formed plaintext Data frame.
            Cut::Frames => frame::encode_to_bytes(&Envelope::Data {
                channel: 1,
                payload: Bytes::from_static(b"INJECTED"),
            })
            .to_vec(),
            // An application-data record of plausible size.
            Cut::TlsRecords => {
                let mut unit = vec![0x17, 0x03, 0x03, 0x00, 0x30];
                unit.extend((0..0x30).map(|i| (i * 37) as u8));
                unit
            }
        }
    }
}

/// A one-connection TCP proxy that forwards both directions and, once armed, applies
/// `attack` to the client → server direction.
struct Mitm {
    addr: String,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Mitm {
    async fn start(target: String, cut: Cut, attack: Attack) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let armed2 = armed.clone();
        let task = tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(target).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let back = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
            });
            let mut buf = BytesMut::new();
            let mut previous: Option<Vec<u8>> = None;
            let mut held: Option<Vec<u8>> = None;
            let mut done = false;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                while let Some(len) = cut.unit_len(&buf) {
                    if buf.len() < len {
                        break;
                    }
                    let mut unit = buf.split_to(len).to_vec();
                    let mut out = Vec::new();
                    if armed2.load(Ordering::SeqCst) && !done {
                        let header = match cut {
                            Cut::Frames => 4,
                            Cut::TlsRecords => 5,
                        };
                        match attack {
                            Attack::FlipBit => {
                                let i = header + (unit.len() - header) / 2;
                                unit[i] ^= 0x10;
                                done = true;
                            }
                            Attack::Inject => {
                                out.extend(cut.forged_unit());
                                done = true;
                            }
                            Attack::Replay => {
                                out.extend(previous.clone().expect("an earlier unit"));
                                done = true;
                            }
                            Attack::Reorder => match held.take() {
                                None => {
                                    held = Some(unit);
                                    continue;
                                }
                                Some(first) => {
                                    out.extend(&unit);
                                    out.extend(first);
                                    done = true;
                                    if sw.write_all(&out).await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                            },
                        }
                    }
                    out.extend(&unit);
                    previous = Some(unit);
                    if sw.write_all(&out).await.is_err() {
                        break;
                    }
                }
                match cr.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = sw.shutdown().await;
            let _ = back.await;
        });
        Mitm { addr, armed, task }
    }
}

/// Connects through a tampering proxy, exchanges one frame, arms the proxy, sends two
/// more, and checks what the server gets: nothing injected, the connection closed, the
/// forged record counted.
async fn tamper(mode: Mode, attack: Attack) {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (a, b, _pki) = pair(mode);
    let mut listener = b.listen("127.0.0.1:0").await.unwrap();
    let cut = match mode {
        Mode::Secret => Cut::Frames,
        Mode::Tls => Cut::TlsRecords,
    };
    let mitm = Mitm::start(listener.local_addr().to_owned(), cut, attack).await;
    let mut client = a.connect(&mitm.addr, "c", 0).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(server.peer().node, "a");

    client.send(1, Bytes::from_static(b"m0")).await.unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Frame::Data {
            channel: 1,
            payload: Bytes::from_static(b"m0")
        })
    );
    mitm.armed.store(true, Ordering::SeqCst);
    // Sent separately: each its own frame / record.
    client.send(1, Bytes::from_static(b"m1")).await.unwrap();
    client.send(1, Bytes::from_static(b"m2")).await.unwrap();

    let mut delivered = Vec::new();
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(10), server.recv())
            .await
            .expect("the server must notice the attack, not hang")
        {
            Ok(Some(Frame::Data { payload, .. })) => delivered.push(payload),
            Ok(other) => break Ok(other),
            Err(e) => break Err(e),
        }
    };
    // Nothing of the attacker's is delivered, nor anything after the attack point
    // (only legitimate frames in order before it).
    let legit = [Bytes::from_static(b"m1"), Bytes::from_static(b"m2")];
    assert!(
        legit.starts_with(&delivered),
        "{mode:?}/{attack:?}: delivered {delivered:?}"
    );
    assert!(
        delivered.len() < 2,
        "{mode:?}/{attack:?}: the attack went unnoticed"
    );
    let err = outcome.expect_err("the connection must fail");
    assert!(
        err.to_string().contains("failed authentication"),
        "{mode:?}/{attack:?}: {err}"
    );
    assert_eq!(forged(&seen), 1.0, "{mode:?}/{attack:?}: counted once");
    // Closed for good on the server side...
    assert!(matches!(server.recv().await, Err(Error::Closed { .. })));
    drop(server);
    // ... and the client sees its connection end.
    let end = tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("the client's connection must end");
    assert!(!matches!(end, Ok(Some(Frame::Data { .. }))), "{end:?}");
    mitm.task.abort();
}

macro_rules! tamper_tests {
    ($($name:ident: $mode:expr, $attack:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                tamper($mode, $attack).await
            }
        )*
    };
}

tamper_tests! {
    secret_mode_flipped_bit_closes: Mode::Secret, Attack::FlipBit;
    secret_mode_injected_frame_closes: Mode::Secret, Attack::Inject;
    secret_mode_replayed_frame_closes: Mode::Secret, Attack::Replay;
    secret_mode_reordered_frames_close: Mode::Secret, Attack::Reorder;
    tls_flipped_bit_closes: Mode::Tls, Attack::FlipBit;
    tls_injected_record_closes: Mode::Tls, Attack::Inject;
    tls_replayed_record_closes: Mode::Tls, Attack::Replay;
    tls_reordered_records_close: Mode::Tls, Attack::Reorder;
}

/// Without an attack the proxy is transparent (so the tests above test the attacks).
#[tokio::test]
async fn an_honest_proxy_changes_nothing() {
    for mode in [Mode::Secret, Mode::Tls] {
        let (a, b, _pki) = pair(mode);
        let mut listener = b.listen("127.0.0.1:0").await.unwrap();
        let cut = match mode {
            Mode::Secret => Cut::Frames,
            Mode::Tls => Cut::TlsRecords,
        };
        let mitm = Mitm::start(listener.local_addr().to_owned(), cut, Attack::FlipBit).await;
        let mut client = a.connect(&mitm.addr, "c", 0).await.unwrap();
        let mut server = listener.accept().await.unwrap();
        for i in 0..20u32 {
            client
                .send(i, Bytes::from(vec![i as u8; 100]))
                .await
                .unwrap();
            assert_eq!(
                server.recv().await.unwrap(),
                Some(Frame::Data {
                    channel: i,
                    payload: Bytes::from(vec![i as u8; 100])
                })
            );
        }
        mitm.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Certificates

async fn refused_by_listener(client: &TcpTransport, server: &TcpTransport) -> (Error, f64) {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut listener = server.listen("127.0.0.1:0").await.unwrap();
    let err = client
        .connect(listener.local_addr(), "c", 0)
        .await
        .unwrap_err();
    // The listener never hands out the connection.
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "a refused peer was accepted");
    // Allow the listener's side to finish counting.
    for _ in 0..100 {
        if handshakes(&seen, "certificate") >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (err, handshakes(&seen, "certificate"))
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (ours, theirs) = (Pki::new("ours"), Pki::new("theirs"));
    let server = tcp("b", Security::Tls(ours.node("b")));
    let intruder = tcp("a", Security::Tls(theirs.node("a")));
    let (err, counted) = refused_by_listener(&intruder, &server).await;
    assert!(
        matches!(
            err,
            Error::Refused {
                reason: Refusal::Certificate { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(counted, 2.0, "both sides count it");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new("expired");
    let server = tcp("b", Security::Tls(pki.node("b")));
    let day = Duration::from_secs(24 * 3600);
    let old = dev::issue_node_cert_with(
        &pki.ca,
        "a",
        pki.dir.join("old"),
        Validity {
            not_before: SystemTime::now() - 30 * day,
            not_after: SystemTime::now() - day,
        },
    )
    .unwrap();
    let client = tcp("a", Security::Tls(old));
    let (err, counted) = refused_by_listener(&client, &server).await;
    let text = err.to_string();
    assert!(
        text.contains("certificate") && text.to_lowercase().contains("expired"),
        "{text}"
    );
    assert!(counted >= 1.0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = Pki::new("name");
    // Locally: a node cannot start with a certificate that is not its own.
    let err = TcpTransport::new(settings("alice", Security::Tls(pki.node("mallory")))).unwrap_err();
    assert!(
        err.to_string()
            .contains("not valid for this node's name `alice`"),
        "{err}"
    );

    // Remotely: a hand-made client with mallory's (valid) certificate claims to be alice.
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = tcp("b", Security::Tls(pki.node("b")));
    let mut listener = server.listen("127.0.0.1:0").await.unwrap();
    let mallory = pki.node("mallory");
    let mut tls = impostor(&mallory, listener.local_addr(), "b").await;
    let hello = Envelope::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: "sec".into(),
        security: "tls".into(),
        node: "alice".into(),
        addr: String::new(),
        channel: "c".into(),
        index: 0,
        nonce: Bytes::from(vec![1u8; 32]),
    });
    tls.write_all(&frame::encode_to_bytes(&hello))
        .await
        .unwrap();
    let mut header = [0u8; 4];
    tls.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    tls.read_exact(&mut body).await.unwrap();
    let answer = frame::decode(Bytes::from(body)).unwrap();
    assert!(
        matches!(&answer, Envelope::Refused(Refusal::Certificate { detail }) if detail.contains("alice")),
        "{answer:?}"
    );
    for _ in 0..100 {
        if handshakes(&seen, "certificate") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handshakes(&seen, "certificate"), 1.0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    );
    // The same certificate claiming its own name is accepted.
    let mut honest = impostor(&mallory, listener.local_addr(), "b").await;
    let hello = match hello {
        Envelope::Hello(h) => Envelope::Hello(Hello {
            node: "mallory".into(),
            ..h
        }),
        _ => unreachable!(),
    };
    honest
        .write_all(&frame::encode_to_bytes(&hello))
        .await
        .unwrap();
    honest.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    honest.read_exact(&mut body).await.unwrap();
    assert!(matches!(
        frame::decode(Bytes::from(body)).unwrap(),
        Envelope::Challenge(_)
    ));
}

/// A raw TLS client (rustls) presenting `creds`, trusting their CA, expecting `server`.
async fn impostor(
    creds: &TlsSettings,
    addr: &str,
    server: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&creds.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&creds.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&creds.key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(server.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn certificates_reload_without_a_restart() {
    let (old_ca, new_ca) = (Pki::new("old"), Pki::new("new"));
    // `a` trusts only the new CA; `b` starts with a certificate from the old one.
    let a = tcp("a", Security::Tls(new_ca.node("a")));
    let b_files = old_ca.node("b");
    let b = tcp("b", Security::Tls(b_files.clone()));
    let mut listener = b.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().to_owned();
    assert!(a.connect(&addr, "c", 0).await.is_err());

    // A broken file: the reload fails and changes nothing.
    std::fs::write(&b_files.cert, "not a certificate").unwrap();
    assert!(b.reload_certificates().is_err());

    // New files from the new CA, in place; the same listener serves with them.
    let fresh = new_ca.node("b");
    for (from, to) in [
        (&fresh.cert, &b_files.cert),
        (&fresh.key, &b_files.key),
        (&fresh.ca, &b_files.ca),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    b.reload_certificates().unwrap();
    let mut client = a.connect(&addr, "c", 0).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    client
        .send(1, Bytes::from_static(b"after reload"))
        .await
        .unwrap();
    assert_eq!(
        server.recv().await.unwrap(),
        Some(Frame::Data {
            channel: 1,
            payload: Bytes::from_static(b"after reload")
        })
    );
    // Not in TLS mode: a clear error.
    let secret = tcp("s", Security::Secret(ClusterSecret::generate()));
    assert!(matches!(
        secret.reload_certificates(),
        Err(Error::InvalidArgument(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Secrets and modes

#[test]
fn a_weak_secret_is_refused_at_start_with_a_clear_message() {
    let dir = temp_dir("weak");
    let cases: [(&str, &[u8]); 4] = [
        ("short", b"0123456789abcdef0123\n"),
        ("password", b"correct horse battery staple, twice over\n"),
        ("pattern", &[0xaa; 64]),
        (
            "hex-pattern",
            b"00112233001122330011223300112233001122330011223300112233001122\n",
        ),
    ];
    for (name, content) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let err = Security::secret_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidSettings { .. }),
            "{name}: {err:?}"
        );
        assert!(
            text.contains("at least 32 bytes of high-entropy random data"),
            "{name}: {text}"
        );
        // Through TOML settings too, naming the requirement.
        let toml = format!(
            "cluster = \"c\"\nnode = \"n\"\n[security]\nmode = \"secret\"\nsecret_file = {:?}\n",
            path.display().to_string()
        );
        let err = toml::from_str::<TransportSettings>(&toml).unwrap_err();
        assert!(
            err.to_string().contains("at least 32 bytes"),
            "{name}: {err}"
        );
    }
    // The default (no secret at all) cannot start.
    let err = TcpTransport::new(TransportSettings {
        cluster: "c".into(),
        node: "n".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("no cluster secret configured"),
        "{err}"
    );

    // A generated secret file works, from TOML as well.
    let good = dir.join("good");
    ClusterSecret::generate_file(&good).unwrap();
    let toml = format!(
        "cluster = \"c\"\nnode = \"n\"\n[security]\nmode = \"secret\"\nsecret_file = {:?}\n",
        good.display().to_string()
    );
    let loaded: TransportSettings = toml::from_str(&toml).unwrap();
    assert!(TcpTransport::new(loaded).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn different_security_modes_are_refused() {
    let secret = ClusterSecret::generate();
    let b = tcp("b", Security::Secret(secret));
    let plain = tcp("a", Security::InsecurePlaintext);
    let mut listener = b.listen("127.0.0.1:0").await.unwrap();
    let err = plain
        .connect(listener.local_addr(), "c", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused {
                reason: Refusal::Security { mode },
                by_peer: true
            } if mode == "secret"
        ),
        "{err:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Floods

/// Counts WARN and ERROR events of the transport.
struct CountWarnings(Arc<AtomicUsize>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::WARN
            && meta
                .target()
                .starts_with("foundation_distributed::transport")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// One connection from 127.0.0.2 that fails its handshake (a forged proof).
async fn failed_handshake(addr: std::net::SocketAddr, i: usize) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut raw = socket.connect(addr).await.unwrap();
    let hello = Envelope::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: "sec".into(),
        security: "secret".into(),
        node: format!("flood-{i}"),
        addr: String::new(),
        channel: "c".into(),
        index: 0,
        nonce: Bytes::from(vec![3u8; 32]),
    });
    let mut wire = BytesMut::new();
    frame::encode(&hello, &mut wire);
    frame::encode(
        &Envelope::Proof {
            proof: Bytes::from(vec![0u8; 32]),
        },
        &mut wire,
    );
    let _ = raw.write_all(&wire).await;
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink).await;
}

/// The same flood against a running `Node`: its members stay up and it keeps answering
/// requests throughout.
#[tokio::test(flavor = "current_thread")]
async fn a_node_keeps_serving_members_through_a_flood() {
    use foundation_distributed::node::{Node, NodeSettings};
    const FLOOD: usize = 1000;
    let lines = Arc::new(AtomicUsize::new(0));
    let _subscriber = tracing::subscriber::set_default(CountWarnings(lines.clone()));
    let secret = ClusterSecret::generate();
    let start = |name: &'static str| {
        let secret = secret.clone();
        async move {
            let t: Arc<dyn Transport> = Arc::new(tcp(name, Security::Secret(secret)));
            Node::start(t, name, NodeSettings::default()).await.unwrap()
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    a.serve("echo", |_from, v: u32| async move { v });
    b.join(&[a.addr()]).await.unwrap();
    let up = |n: &Node| {
        n.members()
            .into_iter()
            .filter(|m| m.up)
            .map(|m| m.name)
            .collect::<Vec<_>>()
    };
    for _ in 0..400 {
        if up(&a) == ["a", "b"] && up(&b) == ["a", "b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        (up(&a), up(&b)),
        (
            vec!["a".to_string(), "b".into()],
            vec!["a".to_string(), "b".into()]
        )
    );
    let addr: std::net::SocketAddr = a.addr().parse().unwrap();
    for i in 0..FLOOD {
        failed_handshake(addr, i).await;
        if i % 100 == 0 {
            let echoed: u32 = b
                .request("a", "echo", &(i as u32), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(echoed, i as u32);
        }
    }
    assert_eq!(up(&a), ["a", "b"], "no member lost during the flood");
    assert_eq!(up(&b), ["a", "b"]);
    let logged = lines.load(Ordering::SeqCst);
    assert!(
        (1..=6).contains(&logged),
        "{logged} transport warnings for {FLOOD} failures"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// 1,000 failed handshakes from one address: a bounded number of log lines, all counted,
/// and a proper peer (from another address) is served throughout.
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_failed_handshakes_is_cheap() {
    const FLOOD: usize = 1000;
    let lines = Arc::new(AtomicUsize::new(0));
    let _subscriber = tracing::subscriber::set_default(CountWarnings(lines.clone()));
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let secret = ClusterSecret::generate();
    let b = tcp("b", Security::Secret(secret.clone()));
    let a = tcp("a", Security::Secret(secret));
    let mut listener = b.listen("127.0.0.1:0").await.unwrap();
    let addr: std::net::SocketAddr = listener.local_addr().parse().unwrap();

    for i in 0..FLOOD {
        failed_handshake(addr, i).await;
        if i % 100 == 0 {
            // Members keep being served during the flood.
            let mut c = a.connect(listener.local_addr(), "c", 0).await.unwrap();
            let mut s = listener.accept().await.unwrap();
            c.send(1, Bytes::from_static(b"member")).await.unwrap();
            assert!(matches!(s.recv().await.unwrap(), Some(Frame::Data { .. })));
        }
    }
    let failed = || {
        handshakes(&seen, "authentication")
            + handshakes(&seen, "rate_limited")
            + handshakes(&seen, "io")
            + handshakes(&seen, "protocol")
    };
    for _ in 0..500 {
        if failed() >= FLOOD as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(failed(), FLOOD as f64, "every failure counted");
    assert!(
        handshakes(&seen, "rate_limited") >= (FLOOD - 100) as f64,
        "the address is refused before handshake work once over its quota: {}",
        handshakes(&seen, "rate_limited")
    );
    let logged = lines.load(Ordering::SeqCst);
    assert!(
        (1..=6).contains(&logged),
        "{logged} warning lines for {FLOOD} failures"
    );
    assert_eq!(handshakes(&seen, "ok"), 2.0 * (FLOOD / 100) as f64);
}

/// Every mode also runs on the in-memory transport (deterministic tests keep working
/// with security on), TLS included.
#[tokio::test(start_paused = true)]
async fn every_mode_runs_on_the_memory_transport() {
    use foundation_distributed::transport::{MemoryNetwork, MemoryTransport};
    let pki = Pki::new("memory");
    let secret = ClusterSecret::generate();
    let modes: Vec<(Security, Security)> = vec![
        (Security::Tls(pki.node("a")), Security::Tls(pki.node("b"))),
        (
            Security::Secret(secret.clone()),
            Security::Secret(secret.clone()),
        ),
        (Security::InsecurePlaintext, Security::InsecurePlaintext),
    ];
    for (i, (sa, sb)) in modes.into_iter().enumerate() {
        let network = MemoryNetwork::new();
        let a = MemoryTransport::new(&network, settings("a", sa)).unwrap();
        let b = MemoryTransport::new(&network, settings("b", sb)).unwrap();
        let addr = format!("mem://b{i}");
        let mut listener = b.listen(&addr).await.unwrap();
        let mut client = a.connect(&addr, "c", 0).await.unwrap();
        let mut server = listener.accept().await.unwrap();
        assert_eq!(
            (client.peer().node.as_str(), server.peer().node.as_str()),
            ("b", "a")
        );
        client.send(3, Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(
            server.recv().await.unwrap(),
            Some(Frame::Data {
                channel: 3,
                payload: Bytes::from_static(b"hi")
            })
        );
    }
}
