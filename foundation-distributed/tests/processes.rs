//! A cluster of separate OS processes (`foundation-node`) and an in-test node on loopback
//! TCP: membership across processes, requests into a process, and a killed process marked
//! down; a process with the wrong secret never joins.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::procs::{NodeProc, Procs};
use common::{eventually, settings_in, up, SECRET};
use foundation_distributed::node::{MembershipEvent, Node, NodeSettings};
use foundation_distributed::transport::{TcpTransport, Transport};

/// Starts node process `name` of the cluster `procs` with the secret `secret`.
fn spawn(name: &str, seed: Option<&str>, secret: &str) -> NodeProc {
    NodeProc::spawn(name, seed, "procs", secret, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes() {
    let p1 = spawn("p1", None, SECRET);
    let a1 = p1.addr.clone();
    let p2 = spawn("p2", Some(&a1), SECRET);
    let mut procs = Procs(vec![p1, p2]);

    let settings = settings_in("procs", "local");
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings).unwrap());
    let local = Node::start(t, "local", NodeSettings::default())
        .await
        .unwrap();
    local.join(&[&a1]).await.unwrap();
    eventually("three members", || up(&local) == ["local", "p1", "p2"]).await;

    let who: String = local
        .request("p2", "whoami", &(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(who, "p2");
    let echo: Vec<u8> = local
        .request("p1", "echo", &vec![1u8, 2, 3], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(echo, vec![1, 2, 3]);

    // An intruder with the wrong secret is refused and never appears.
    let intruder = spawn(
        "intruder",
        Some(&a1),
        "3b8e1f7c2d9a4065e7f1c3a5b9d2e8f4a6c1b7d3e9f5a2c8b4d0e6f1a7c3b9d5",
    );
    procs.0.push(intruder);

    let mut events = local.subscribe();
    procs.0[1].child.kill().unwrap(); // p2 crashes: no goodbye
    let _ = procs.0[1].child.wait();
    let down = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(MembershipEvent::Down(n)) = events.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("p2 marked down");
    assert_eq!(down, "p2");
    assert!(
        !local.members().iter().any(|m| m.name == "intruder"),
        "wrong secret never joins"
    );
    local.shutdown().await;
}
