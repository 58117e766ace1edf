//! The process's priority thread (D380) starts with the first node on a multi-thread
//! runtime, is shared by the nodes of the process, and is stopped by the last node's
//! shutdown. Alone in its test binary: the thread is per process.

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};

fn tcp(node: &str) -> Arc<dyn Transport> {
    Arc::new(
        TcpTransport::new(TransportSettings {
            cluster: "test".into(),
            node: node.into(),
            security: Security::Secret(ClusterSecret::generate()),
            ..TransportSettings::default()
        })
        .unwrap(),
    )
}

/// How many threads of this process Linux names `fprio`.
fn priority_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .filter(|n| n.trim() == "fprio")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_the_first_node_and_stops_with_the_last() {
    assert_eq!(priority_threads(), 0);
    let s = NodeSettings {
        listen: "127.0.0.1:0".into(),
        priority_thread: true,
        ..NodeSettings::default()
    };
    let a = Node::start(tcp("la"), "la", s.clone()).await.unwrap();
    let b = Node::start(tcp("lb"), "lb", s.clone()).await.unwrap();
    assert!(a.has_priority_thread() && b.has_priority_thread());
    assert_eq!(priority_threads(), 1, "one thread for the process");

    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(!a.has_priority_thread());
    assert_eq!(priority_threads(), 1, "still used by b");

    assert!(b.shutdown_within(Duration::from_secs(10)).await);
    assert_eq!(
        priority_threads(),
        0,
        "stopped and joined by the last shutdown"
    );

    // A node started later gets a new one.
    let c = Node::start(tcp("lc"), "lc", s).await.unwrap();
    assert!(c.has_priority_thread());
    assert_eq!(priority_threads(), 1);
    assert!(c.shutdown_within(Duration::from_secs(10)).await);
    assert_eq!(priority_threads(), 0);
}
