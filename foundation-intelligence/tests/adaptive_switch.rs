//! The adaptive controller driven by the overlay's smart selector on real nodes
//! (in-memory transport, paused clock): every node runs a controller; the cluster
//! outgrows the full-mesh band, one coordinated switch to HyParView is agreed by every
//! member, the controllers follow it and do not flap, and requests keep working.

mod support;

use std::time::Duration;

use foundation_intelligence::adaptive_topology::{AdaptiveTopology, OverlaySelector};
use foundation_intelligence::distributed::node::Node;
use foundation_intelligence::distributed::overlay::selector::SelectorConfig;
use foundation_intelligence::distributed::overlay::HyParViewConfig;
use foundation_intelligence::distributed::topology::{Role, TopologyKind};
use foundation_intelligence::distributed::transport::{ClusterSecret, MemoryNetwork};
use tokio::time::Instant;

async fn node(net: &MemoryNetwork, name: &str, secret: &ClusterSecret) -> Node {
    support::mem_node::whoami_node(net, "adaptive-switch", name, Role::Peer, secret).await
}

#[tokio::test(start_paused = true)]
async fn controllers_on_every_node_agree_on_one_switch_and_do_not_flap() {
    let net = MemoryNetwork::new();
    let secret = ClusterSecret::generate();
    let names = ["a", "b", "c", "d", "e"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(node(&net, n, &secret).await);
    }
    for n in &nodes[1..] {
        n.join(&[nodes[0].addr()]).await.unwrap();
    }
    for _ in 0..400 {
        if nodes
            .iter()
            .all(|n| n.members().iter().filter(|m| m.up).count() == 5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let hv = HyParViewConfig {
        active_capacity: 2,
        passive_capacity: 4,
        ..HyParViewConfig::default()
    };
    // Full mesh up to 3 members (band: leave above 3.75, come back at 2.25 or fewer).
    let config = SelectorConfig {
        full_mesh_max: 3,
        hysteresis: 0.25,
        confirmations: 2,
        cooldown: Duration::from_secs(30),
        ..SelectorConfig::default()
    };
    let mut controllers: Vec<AdaptiveTopology> = nodes
        .iter()
        .map(|n| {
            let sel = OverlaySelector::new(config.clone(), TopologyKind::FullMesh)
                .unwrap()
                .hyparview(hv);
            AdaptiveTopology::new(
                n.clone(),
                TopologyKind::FullMesh,
                Box::new(sel),
                Duration::from_secs(30),
            )
        })
        .collect();
    let mut proposed = 0;
    for _ in 0..20 {
        for c in &mut controllers {
            c.measure_latency(3, Duration::from_secs(1)).await;
            if c.evaluate(Instant::now()).is_some() {
                proposed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(proposed >= 1, "some controller proposed the switch");
    let want = TopologyKind::HyParView(hv);
    let first = nodes[0].topology_state();
    assert_eq!(first.kind, want);
    for (n, c) in nodes.iter().zip(&controllers) {
        let st = n.topology_state();
        assert_eq!(
            (st.epoch, &st.proposer, st.kind),
            (first.epoch, &first.proposer, want)
        );
        assert_eq!(
            c.current(),
            want,
            "{}'s controller follows the switch",
            n.name()
        );
        assert!(
            c.median_rtt().is_some(),
            "{} measured its neighbours",
            n.name()
        );
        let h = n.switch_history();
        assert_eq!(h.last().unwrap().to, want);
        assert!(h.iter().all(|r| r.epoch == 1), "one epoch: {h:?}");
    }
    // No flapping: 20 more rounds, nothing proposed, epoch unchanged.
    for _ in 0..20 {
        for c in &mut controllers {
            c.measure_latency(3, Duration::from_secs(1)).await;
            assert_eq!(c.evaluate(Instant::now()), None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for n in &nodes {
        assert_eq!(n.topology_state().epoch, first.epoch);
    }
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.name() != a.name()) {
            let who: String = a
                .request(b.name(), "whoami", &(), Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{} -> {}: {e}", a.name(), b.name()));
            assert_eq!(who, b.name());
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
