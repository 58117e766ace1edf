//! Set-ups shared by the remote-process tests: in-memory nodes of one cluster, joined.
#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::interpose::Interposer;
use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::remote::Remote;
use foundation_distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
};

/// Transport settings of node `node` in the test cluster (one fixed secret).
pub fn settings(node: &str) -> TransportSettings {
    TransportSettings {
        cluster: "remote-test".into(),
        node: node.into(),
        security: Security::Secret(
            ClusterSecret::from_hex(
                "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f",
            )
            .unwrap(),
        ),
        ..TransportSettings::default()
    }
}

/// Starts node `name` on `net` (listening on `mem://name`), with `faults` interposed.
pub async fn start(net: &MemoryNetwork, name: &str, faults: Option<Arc<Interposer>>) -> Node {
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(net, settings(name)).unwrap());
    let s = NodeSettings {
        listen: format!("mem://{name}"),
        interposer: faults,
        ..NodeSettings::default()
    };
    Node::start(t, name, s).await.unwrap()
}

/// Waits (up to 20 s of test time, polling every 25 ms) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached within 20 s: {what}");
}

/// The members `n` considers up, by name.
pub fn up(n: &Node) -> Vec<String> {
    n.members()
        .into_iter()
        .filter(|m| m.up)
        .map(|m| m.name)
        .collect()
}

/// Two nodes `a` and `b`, joined, each with its remote service.
pub async fn pair(faults: Option<Arc<Interposer>>) -> (Node, Remote, Node, Remote) {
    let net = MemoryNetwork::new();
    let a = start(&net, "a", faults.clone()).await;
    let b = start(&net, "b", faults).await;
    b.join(&[a.addr()]).await.unwrap();
    eventually("joined", || up(&a) == ["a", "b"] && up(&b) == ["a", "b"]).await;
    let (ra, rb) = (Remote::start(&a), Remote::start(&b));
    (a, ra, b, rb)
}
