//! Adaptive topology on real nodes (in-memory transport): the controller switches a
//! node from full mesh to client-server when the cluster outgrows the mesh limit, and
//! application requests keep working across the switch (servers a, b; clients c, d).

mod support;

use std::time::Duration;

use foundation_intelligence::adaptive_topology::{AdaptiveTopology, SizeSelector};
use foundation_intelligence::distributed::node::Node;
use foundation_intelligence::distributed::topology::{Role, TopologyKind};
use foundation_intelligence::distributed::transport::{ClusterSecret, MemoryNetwork};
use tokio::time::Instant;

async fn node(net: &MemoryNetwork, name: &str, role: Role, secret: &ClusterSecret) -> Node {
    support::mem_node::whoami_node(net, "adaptive", name, role, secret).await
}

/// The controller every node runs here: a mesh up to 3 members, then client-server
/// with one server per client; 60 s cooldown.
fn controller(n: &Node) -> AdaptiveTopology {
    AdaptiveTopology::new(
        n.clone(),
        TopologyKind::FullMesh,
        Box::new(SizeSelector {
            mesh_max: 3,
            hysteresis: 1,
            servers_per_client: 1,
        }),
        Duration::from_secs(60),
    )
}

#[tokio::test]
async fn switches_to_client_server_when_the_cluster_outgrows_the_mesh() {
    let net = MemoryNetwork::new();
    let secret = ClusterSecret::generate();
    let a = node(&net, "a", Role::Server, &secret).await;
    let b = node(&net, "b", Role::Server, &secret).await;
    b.join(&[a.addr()]).await.unwrap();
    let mut ctl = controller(&a);
    support::eventually("a sees b", || {
        a.members().iter().filter(|m| m.up).count() == 2
    })
    .await;
    assert_eq!(ctl.evaluate(Instant::now()), None, "2 members fit a mesh");

    let c = node(&net, "c", Role::Client, &secret).await;
    let d = node(&net, "d", Role::Client, &secret).await;
    c.join(&[a.addr()]).await.unwrap();
    d.join(&[a.addr()]).await.unwrap();
    support::eventually("a sees 4 members", || {
        a.members().iter().filter(|m| m.up).count() == 4
    })
    .await;
    let switch = ctl.evaluate(Instant::now()).expect("switched");
    assert_eq!(switch.from, TopologyKind::FullMesh);
    assert_eq!(
        switch.to,
        TopologyKind::ClientServer {
            servers_per_client: 1
        }
    );
    assert_eq!(switch.up, 4);
    assert_eq!(ctl.current(), switch.to);
    // The cooldown holds the next switch back, whatever the selector says.
    assert_eq!(ctl.evaluate(Instant::now()), None);

    // Every node runs its own controller; they all switch.
    for n in [&b, &c, &d] {
        let mut ctl = controller(n);
        support::eventually("the node sees 4 members", || {
            n.members().iter().filter(|m| m.up).count() == 4
        })
        .await;
        assert!(ctl.evaluate(Instant::now()).is_some());
    }

    // Application code is unaffected: requests still reach every node, directly or
    // relayed by a server.
    for (from, n) in [("a", &a), ("c", &c)] {
        for peer in ["a", "b", "c", "d"].into_iter().filter(|p| *p != from) {
            let who: String = n
                .request(peer, "whoami", &(), Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{from} -> {peer}: {e}"));
            assert_eq!(who, peer);
        }
    }
    for n in [&a, &b, &c, &d] {
        n.shutdown().await;
    }
}
