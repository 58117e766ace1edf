//! Membership through the `Node` API: suspicion refuted, dead members removed and not
//! resurrected, restarts rejoining, a 2|3 partition healing, and no false Down from a
//! silent peer or during a large transfer.
//!
//! The two TCP tests run for a shortened time by default; the full runs of the issue:
//! `FOUNDATION_SILENT_PEER_SECS=60 FOUNDATION_TRANSFER_MIB=256 cargo test --release -p foundation-distributed --test membership`.

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::interpose::{Fault, Interposer, Rule};
use foundation_distributed::membership::{Status, ViewSettings};
use foundation_distributed::node::{MembershipEvent, Node, NodeSettings, SendOptions};
use foundation_distributed::transport::{MemoryNetwork, TcpTransport, Transport};
use tokio::sync::broadcast::error::TryRecvError;

mod common;
use common::{eventually_within, restart, settings, start_with, up};

fn downs(rx: &mut tokio::sync::broadcast::Receiver<MembershipEvent>) -> Vec<String> {
    let mut v = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(MembershipEvent::Down(n)) => v.push(n),
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return v,
        }
    }
}

async fn cluster(net: &MemoryNetwork, names: &[&str], s: NodeSettings) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(start_with(net, name, s.clone()).await);
    }
    for n in &nodes[1..] {
        n.join(&[nodes[0].addr()]).await.unwrap();
    }
    for n in &nodes {
        eventually_within("full membership", 20, || up(n).len() == names.len()).await;
    }
    nodes
}

/// `b`'s heartbeats to `a` are lost (one-way cut): `a` suspects `b`, `b` learns it through
/// `c` and refutes with a larger version, which reaches `a` through `c`'s gossip: `b` is
/// never declared down, though suspected again and again.
#[tokio::test(start_paused = true)]
async fn a_suspicion_is_refuted() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(3));
    let s = NodeSettings {
        interposer: Some(faults.clone()),
        gossip_every: 1,
        view: ViewSettings {
            suspicion_timeout: Duration::from_secs(3),
            ..ViewSettings::default()
        },
        ..NodeSettings::default()
    };
    let nodes = cluster(&net, &["a", "b", "c"], s).await;
    let mut events = nodes[0].subscribe();
    faults.add(Rule::new(Fault::Partition).from(&["b"]).to(&["a"]));
    let mut suspected = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        suspected |= nodes[0].member_status("b") == Some(Status::Suspect);
    }
    assert!(suspected, "a suspected b");
    assert!(downs(&mut events).is_empty(), "b never declared down");
    faults.heal();
    eventually_within("b alive at a", 10, || {
        nodes[0].member_status("b") == Some(Status::Alive)
    })
    .await;
}

/// A crashed member is declared down everywhere, removed after `dead_removal`, and stale
/// gossip does not bring it back.
#[tokio::test(start_paused = true)]
async fn a_dead_member_is_removed_and_not_resurrected() {
    let net = MemoryNetwork::new();
    let s = NodeSettings {
        view: ViewSettings {
            dead_removal: Duration::from_secs(5),
            ..ViewSettings::default()
        },
        ..NodeSettings::default()
    };
    let mut nodes = cluster(&net, &["a", "b", "c"], s).await;
    let c = nodes.pop().unwrap();
    drop(c); // crash: no goodbye
    for n in &nodes {
        eventually_within("c down", 10, || up(n) == ["a", "b"]).await;
    }
    for n in &nodes {
        eventually_within("c removed", 10, || {
            !n.members().iter().any(|m| m.name == "c")
        })
        .await;
    }
    // Gossip keeps flowing (every round) between a and b; c must stay gone.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in &nodes {
            assert!(
                n.member_status("c").is_none(),
                "c resurrected at {}",
                n.name()
            );
        }
    }
}

/// A node restarted under the same name rejoins as a new incarnation.
#[tokio::test(start_paused = true)]
async fn a_restarted_node_rejoins() {
    let net = MemoryNetwork::new();
    let mut nodes = cluster(&net, &["a", "b"], NodeSettings::default()).await;
    let b = nodes.pop().unwrap();
    let old = b.incarnation();
    drop(b);
    eventually_within("b down", 10, || up(&nodes[0]) == ["a"]).await;
    let mut events = nodes[0].subscribe();
    // The memory listener name is released shortly after the old node's drop.
    let b2 = restart(&net, "b").await;
    assert!(b2.incarnation() > old);
    b2.join(&[nodes[0].addr()]).await.unwrap();
    eventually_within("b up again", 10, || up(&nodes[0]) == ["a", "b"]).await;
    let mut rejoined = false;
    while let Ok(e) = events.try_recv() {
        rejoined |= e == MembershipEvent::Joined("b".into());
    }
    assert!(rejoined, "a saw b join again");
    let mut inbox = b2.register::<u8>("x");
    nodes[0]
        .send("b", "x", &1u8, SendOptions::default())
        .await
        .unwrap();
    assert_eq!(inbox.recv().await.unwrap().1, 1);
}

/// Five nodes cut 2|3: each side declares the other down; healed, all converge.
#[tokio::test(start_paused = true)]
async fn five_nodes_partitioned_two_three_then_healed_converge() {
    // The only test in this binary that reads metrics: the global recorder is its own.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the first recorder of this test binary");
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(5));
    let s = NodeSettings {
        interposer: Some(faults.clone()),
        ..NodeSettings::default()
    };
    let names = ["a", "b", "c", "d", "e"];
    let nodes = cluster(&net, &names, s).await;
    let cut = faults.partition(&["a", "b"], &["c", "d", "e"]);
    for n in &nodes[..2] {
        eventually_within("minority sees the majority down", 20, || {
            up(n) == ["a", "b"]
        })
        .await;
    }
    for n in &nodes[2..] {
        eventually_within("majority sees the minority down", 20, || {
            up(n) == ["c", "d", "e"]
        })
        .await;
    }
    faults.remove(cut);
    for n in &nodes {
        eventually_within("healed", 30, || up(n) == names).await;
    }
    // Each side saw each member of the other go down and come back after the heal: at
    // least 2×3 + 3×2 recovery times that took time. (A Down agreed by the other side
    // that arrives after the heal and is refuted at once adds a zero.)
    let recoveries: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "foundation_node_partition_recovery_seconds")
        .flat_map(|(.., v)| match v {
            metrics_util::debugging::DebugValue::Histogram(h) => {
                h.into_iter().map(|x| x.into_inner()).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    assert!(
        recoveries.iter().filter(|s| **s > 0.0).count() >= 12,
        "{recoveries:?}"
    );
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn tcp_node(name: &str) -> Node {
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings(name)).unwrap());
    Node::start(t, name, NodeSettings::default()).await.unwrap()
}

/// A crashed member's address is taken by something that accepts TCP connections and
/// never answers: the healthy nodes keep trying it in the background and never declare
/// each other down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_causes_no_false_down() {
    let secs = env_u64("FOUNDATION_SILENT_PEER_SECS", 8);
    let a = tcp_node("a").await;
    let b = tcp_node("b").await;
    let c = tcp_node("c").await;
    b.join(&[a.addr()]).await.unwrap();
    c.join(&[a.addr()]).await.unwrap();
    for n in [&a, &b, &c] {
        eventually_within("three", 20, || up(n).len() == 3).await;
    }
    let addr = c.addr().to_string();
    drop(c);
    // Take over c's port with a listener that accepts and never answers.
    let mut silent = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => {
                silent = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let silent = silent.expect("rebind c's port");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut ea = a.subscribe();
    let mut eb = b.subscribe();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (da, db) = (downs(&mut ea), downs(&mut eb));
    assert!(!da.contains(&"b".to_string()), "a declared b down: {da:?}");
    assert!(!db.contains(&"a".to_string()), "b declared a down: {db:?}");
    assert_eq!(a.member_status("b"), Some(Status::Alive));
    assert_eq!(b.member_status("a"), Some(Status::Alive));
    hold.abort();
    a.shutdown().await;
    b.shutdown().await;
}

/// No false Down while a large transfer runs between the same two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_down_during_a_large_transfer() {
    let mib = env_u64("FOUNDATION_TRANSFER_MIB", 32);
    let a = tcp_node("a").await;
    let b = tcp_node("b").await;
    b.join(&[a.addr()]).await.unwrap();
    eventually_within("two", 20, || up(&a).len() == 2).await;
    let mut inbox = b.register::<serde_bytes_shim::Blob>("bulk");
    let mut ea = a.subscribe();
    let mut eb = b.subscribe();
    let chunks = mib * 16; // 64 KiB each
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let blob = serde_bytes_shim::Blob(vec![1u8; 64 * 1024]);
            for i in 0..chunks {
                let opts = SendOptions {
                    key: Some(i % 5),
                    ..SendOptions::default()
                };
                a.send("b", "bulk", &blob, opts).await.unwrap();
            }
        })
    };
    for _ in 0..chunks {
        inbox.recv().await.unwrap();
    }
    sender.await.unwrap();
    assert!(downs(&mut ea).is_empty() && downs(&mut eb).is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

mod serde_bytes_shim {
    /// A byte blob serialized as MessagePack `bin` (not an array of integers).
    #[derive(Debug)]
    pub struct Blob(pub Vec<u8>);

    impl serde::Serialize for Blob {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> serde::Deserialize<'de> for Blob {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Blob;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                    Ok(Blob(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                    Ok(Blob(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
