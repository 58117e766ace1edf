//! Set-ups shared by the integration tests: in-memory nodes of one cluster, joined, with
//! their remote-process services; nodes as OS processes ([`procs`]).
#![allow(dead_code)] // each test file uses its own part

pub mod procs;

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::channel::ChannelSettings;
use foundation_distributed::interpose::Interposer;
use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::remote::Remote;
use foundation_distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
};

/// The test clusters' secret (hex).
pub const SECRET: &str = "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f";

/// Transport settings of node `node` in cluster `cluster` with [`SECRET`].
pub fn settings_in(cluster: &str, node: &str) -> TransportSettings {
    TransportSettings {
        cluster: cluster.into(),
        node: node.into(),
        security: Security::Secret(ClusterSecret::from_hex(SECRET).unwrap()),
        ..TransportSettings::default()
    }
}

/// Transport settings of node `node` in the in-memory test cluster.
pub fn settings(node: &str) -> TransportSettings {
    settings_in("remote-test", node)
}

/// Starts node `name` on `net` (listening on `mem://name`), with `faults` interposed.
pub async fn try_start(
    net: &MemoryNetwork,
    name: &str,
    faults: Option<Arc<Interposer>>,
) -> foundation_distributed::Result<Node> {
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(net, settings(name))?);
    let s = NodeSettings {
        listen: format!("mem://{name}"),
        interposer: faults,
        ..NodeSettings::default()
    };
    Node::start(t, name, s).await
}

/// Starts node `name` on `net` (listening on `mem://name`) with the rest of `s`.
pub async fn start_with(net: &MemoryNetwork, name: &str, s: NodeSettings) -> Node {
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(net, settings(name)).unwrap());
    let s = NodeSettings {
        listen: format!("mem://{name}"),
        ..s
    };
    Node::start(t, name, s).await.unwrap()
}

/// Node settings whose `messages` channel queues at most `queue` messages per connection
/// and whose receivers hold `receiver` messages: a stalled consumer fills both soon, so
/// senders must wait (backpressure tests).
pub fn tight(queue: usize, receiver: usize) -> NodeSettings {
    let mut channels = foundation_distributed::node::default_channels();
    for spec in &mut channels.channels {
        if spec.name == foundation_distributed::node::MESSAGES {
            spec.queue_capacity = queue;
        }
    }
    NodeSettings {
        channels,
        receiver_capacity: receiver,
        ..NodeSettings::default()
    }
}

/// Two nodes `a` and `b` on `net` with settings `s`, joined (each sees both up).
pub async fn joined_with(net: &MemoryNetwork, s: NodeSettings) -> (Node, Node) {
    let a = start_with(net, "a", s.clone()).await;
    let b = start_with(net, "b", s).await;
    b.join(&[a.addr()]).await.unwrap();
    eventually("joined", || up(&a) == ["a", "b"] && up(&b) == ["a", "b"]).await;
    (a, b)
}

/// Starts node `name` on `net` again after the old one was dropped (a restart under the
/// same name, a new incarnation), retrying while the in-memory listener name is still
/// held (it is released shortly after the drop); up to 100 tries, 10 ms apart.
pub async fn restart(net: &MemoryNetwork, name: &str) -> Node {
    for _ in 0..100 {
        if let Ok(n) = try_start(net, name, None).await {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} not restarted: its listener name stayed taken");
}

/// [`try_start`], which must succeed.
pub async fn start(net: &MemoryNetwork, name: &str, faults: Option<Arc<Interposer>>) -> Node {
    try_start(net, name, faults).await.unwrap()
}

/// Waits (up to 20 s of test time, polling every 25 ms) until `f` holds.
pub async fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_within(what, 20, f).await;
}

/// Waits (up to `secs` seconds of test time, polling every 25 ms) until `f` holds.
pub async fn eventually_within(what: &str, secs: u64, f: impl FnMut() -> bool) {
    if !holds_within(secs, f).await {
        panic!("not reached within {secs} s: {what}");
    }
}

/// Polls `f` every 25 ms for up to `secs` seconds of test time; whether it came to hold
/// (for a caller that reports the state it found when it did not).
pub async fn holds_within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 40 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// The members `n` considers up, by name.
pub fn up(n: &Node) -> Vec<String> {
    n.members()
        .into_iter()
        .filter(|m| m.up)
        .map(|m| m.name)
        .collect()
}

/// Two nodes `a` and `b` on `net`, joined (each sees both up).
pub async fn joined(net: &MemoryNetwork, faults: Option<Arc<Interposer>>) -> (Node, Node) {
    let a = start(net, "a", faults.clone()).await;
    let b = start(net, "b", faults).await;
    b.join(&[a.addr()]).await.unwrap();
    eventually("joined", || up(&a) == ["a", "b"] && up(&b) == ["a", "b"]).await;
    (a, b)
}

/// Two nodes `a` and `b`, joined, each with its remote service.
pub async fn pair(faults: Option<Arc<Interposer>>) -> (Node, Remote, Node, Remote) {
    let (a, b) = joined(&MemoryNetwork::new(), faults).await;
    let (ra, rb) = (Remote::start(&a), Remote::start(&b));
    (a, ra, b, rb)
}

/// A client-server cluster on a new network: server `s1`, clients `c1` and `c2` (which
/// reach each other only through `s1`), each seeing all three up.
pub async fn client_server(faults: Option<Arc<Interposer>>) -> (Node, Node, Node) {
    client_server_with(faults, NodeSettings::default().channels).await
}

/// [`client_server`] with `channels` as every node's channel table.
pub async fn client_server_with(
    faults: Option<Arc<Interposer>>,
    channels: ChannelSettings,
) -> (Node, Node, Node) {
    use foundation_distributed::topology::{Role, TopologyKind};
    let net = MemoryNetwork::new();
    let node = |name: &'static str, role: Role| {
        let s = NodeSettings {
            role,
            topology: TopologyKind::ClientServer {
                servers_per_client: 1,
            },
            interposer: faults.clone(),
            channels: channels.clone(),
            ..NodeSettings::default()
        };
        start_with(&net, name, s)
    };
    let s1 = node("s1", Role::Server).await;
    let c1 = node("c1", Role::Client).await;
    let c2 = node("c2", Role::Client).await;
    c1.join(&[s1.addr()]).await.unwrap();
    c2.join(&[s1.addr()]).await.unwrap();
    for n in [&s1, &c1, &c2] {
        eventually("membership", || up(n).len() == 3).await;
    }
    (s1, c1, c2)
}
