//! Sending to a node that is not a neighbour: over a transient direct connection, or
//! routed through the overlay (one relay hop). Measured through the `Node` API on
//! loopback TCP (request round trips and connection counts) — figures for decision D303.
//!
//! The default run checks the behaviour (a request to a non-neighbour succeeds either
//! way, and which connections it costs). The measurement:
//!
//! ```text
//! cargo test -p foundation-distributed --release --test switch_routing -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::topology::{Role, TopologyKind};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};

const SECRET: &str = "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f";

async fn start(name: &str, role: Role, topology: TopologyKind) -> Node {
    let settings = TransportSettings {
        cluster: format!("routing-{topology:?}"),
        node: name.into(),
        security: Security::Secret(ClusterSecret::from_hex(SECRET).unwrap()),
        ..TransportSettings::default()
    };
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings).unwrap());
    let n = Node::start(
        t,
        name,
        NodeSettings {
            listen: "127.0.0.1:0".into(),
            role,
            topology,
            ..NodeSettings::default()
        },
    )
    .await
    .unwrap();
    n.serve("echo", |_from, v: u64| async move { v });
    n
}

/// One server and `clients` clients, all joined through the server.
async fn cluster(clients: usize, topology: TopologyKind) -> Vec<Node> {
    let s = start("s0", Role::Server, topology).await;
    let mut nodes = vec![s];
    for i in 0..clients {
        let c = start(&format!("c{i}"), Role::Client, topology).await;
        c.join(&[nodes[0].addr()]).await.unwrap();
        nodes.push(c);
    }
    let n = nodes.len();
    for _ in 0..400 {
        if nodes
            .iter()
            .all(|x| x.members().iter().filter(|m| m.up).count() == n)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    nodes
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn rtts(from: &Node, to: &str, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let r: u64 = from
            .request(to, "echo", &i, Duration::from_secs(5))
            .await
            .unwrap();
        v.push(t.elapsed());
        assert_eq!(r, i);
    }
    v
}

const CS: TopologyKind = TopologyKind::ClientServer {
    servers_per_client: 1,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_neighbour_is_reached_routed_or_direct() {
    // Routed: client to client through the server, no new connection.
    let routed = cluster(2, CS).await;
    let before = routed[1].connected_peers();
    assert_eq!(before, ["s0"]);
    assert_eq!(rtts(&routed[1], "c1", 3).await.len(), 3);
    assert_eq!(
        routed[1].connected_peers(),
        ["s0"],
        "relayed, no direct link"
    );
    // Direct: Static relays nothing; the node opens a transient direct connection.
    let direct = cluster(2, TopologyKind::Static).await;
    assert!(direct[1].neighbours().is_empty());
    assert!(!direct[1].connected_peers().contains(&"c1".to_string()));
    assert_eq!(rtts(&direct[1], "c1", 3).await.len(), 3);
    assert!(direct[1].connected_peers().contains(&"c1".to_string()));
    for n in routed.iter().chain(&direct) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture (release)"]
async fn measure_direct_versus_routed() {
    const CLIENTS: usize = 9;
    const N: usize = 2_000;
    // Routed through one relay (the server).
    let routed = cluster(CLIENTS, CS).await;
    let _ = rtts(&routed[1], "c1", 200).await; // warm up
    let mut r = rtts(&routed[1], "c1", N).await;
    let routed_conns = routed[1].connected_peers().len();
    // Direct: a transient connection to each other client, first contact timed.
    let direct = cluster(CLIENTS, TopologyKind::Static).await;
    let mut first = Vec::new();
    for i in 1..CLIENTS {
        first.push(rtts(&direct[1], &format!("c{i}"), 1).await[0]);
    }
    let _ = rtts(&direct[1], "c1", 200).await;
    let mut d = rtts(&direct[1], "c1", N).await;
    let direct_conns = direct[1].connected_peers().len();
    println!(
        "routed via 1 relay: p50 {:?} p99 {:?}; connections at the sender {}",
        pct(&mut r, 0.5),
        pct(&mut r, 0.99),
        routed_conns
    );
    println!(
        "direct (transient connection): p50 {:?} p99 {:?}; first contact (connect + handshake + request) p50 {:?} max {:?} over {} peers; connections at the sender {}",
        pct(&mut d, 0.5),
        pct(&mut d, 0.99),
        pct(&mut first, 0.5),
        pct(&mut first, 1.0),
        first.len(),
        direct_conns
    );
    for n in routed.iter().chain(&direct) {
        n.shutdown().await;
    }
}
