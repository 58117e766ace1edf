//! `send`'s route cache (D440) never outlives what decided the route: after a member is
//! declared down, after a topology switch, after a link is remade, and after a channel
//! table changes under a name, a send whose route was cached takes the route (or the
//! error) the slow path gives. Paused clock, in-memory transport.

mod common;

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::error::Error;
use foundation_distributed::interpose::{Fault, Interposer, Rule};
use foundation_distributed::node::{default_channels, Node, NodeSettings, SendOptions, MESSAGES};
use foundation_distributed::topology::{Role, TopologyKind};
use foundation_distributed::transport::{MemoryNetwork, MemoryTransport, Transport};

use common::{eventually, joined, settings, start, start_with, up};

const KEYED: SendOptions = SendOptions {
    key: Some(1),
    urgency: foundation_distributed::channel::Urgency::Normal,
};

/// A peer declared down while its link stays up (a partition drops, it does not close):
/// `send` fails at once with `NotConnected`, though its route was cached. With the
/// cache's epoch check removed, the send is queued on the still-open link and returns
/// `Ok`.
#[tokio::test(start_paused = true)]
async fn a_peer_declared_down_is_refused_though_its_route_was_cached() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(3));
    let (a, b) = joined(&net, Some(faults.clone())).await;
    let mut inbox = b.register::<u64>("inbox");
    for i in 0..100u64 {
        a.send("b", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 0..100u64 {
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), i));
    }
    faults.partition(&["a"], &["b"]);
    eventually("a sees b down", || up(&a) == ["a"]).await;
    assert!(
        a.connected_peers().contains(&"b".to_string()),
        "the link to b is still up (the case the cache must not miss)"
    );
    for i in 0..10u64 {
        let e = a.send("b", "inbox", &i, KEYED).await.unwrap_err();
        assert!(
            matches!(&e, Error::NotConnected { node, .. } if node == "b"),
            "{e}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn mesh_node(net: &MemoryNetwork, name: &str, role: Role, faults: &Arc<Interposer>) -> Node {
    start_with(
        net,
        name,
        NodeSettings {
            role,
            topology: TopologyKind::FullMesh,
            interposer: Some(faults.clone()),
            ..NodeSettings::default()
        },
    )
    .await
}

/// Full mesh, then client-server: right after the switch (old links kept while
/// settling, make before break), a client's sends to the other client go through the
/// server, not on the direct link its route cache held. The direct path is cut once the
/// switch is applied, so only relayed messages arrive; with the cache's epoch check
/// removed they go on the (cut) direct link and are lost.
#[tokio::test(start_paused = true)]
async fn after_a_topology_switch_sends_take_the_new_route() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(4));
    let s1 = mesh_node(&net, "s1", Role::Server, &faults).await;
    let c1 = mesh_node(&net, "c1", Role::Client, &faults).await;
    let c2 = mesh_node(&net, "c2", Role::Client, &faults).await;
    c1.join(&[s1.addr()]).await.unwrap();
    c2.join(&[s1.addr()]).await.unwrap();
    for n in [&s1, &c1, &c2] {
        eventually("all three up", || up(n) == ["c1", "c2", "s1"]).await;
    }
    let mut inbox = c2.register::<u64>("inbox");
    // Direct, cached.
    for i in 0..50u64 {
        c1.send("c2", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 0..50u64 {
        assert_eq!(inbox.recv().await.unwrap(), ("c1".to_string(), i));
    }
    assert!(c1.connected_peers().contains(&"c2".to_string()));
    let cs = TopologyKind::ClientServer {
        servers_per_client: 1,
    };
    c1.switch_topology(cs).unwrap();
    for n in [&s1, &c1, &c2] {
        eventually("switched", || n.topology_state().epoch == 1).await;
    }
    faults.partition(&["c1"], &["c2"]);
    for i in 50..100u64 {
        c1.send("c2", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 50..100u64 {
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} not relayed through s1"));
        assert_eq!(got.unwrap(), ("c1".to_string(), i));
    }
    for n in [&s1, &c1, &c2] {
        n.shutdown().await;
    }
}

/// A link remade (every connection reset, then reconnected): sends after it go on the
/// new link and all arrive, in order per key.
#[tokio::test(start_paused = true)]
async fn after_a_link_is_remade_sends_go_on_the_new_link() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(5));
    let (a, b) = joined(&net, Some(faults.clone())).await;
    let mut inbox = b.register::<u64>("inbox");
    for i in 0..50u64 {
        a.send("b", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 0..50u64 {
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), i));
    }
    let reset = faults.add(
        Rule::new(Fault::Reset { probability: 1.0 })
            .from(&["a", "b"])
            .to(&["a", "b"]),
    );
    eventually("the link to b is down", || {
        !a.peer_stats().iter().any(|p| p.peer == "b")
    })
    .await;
    faults.remove(reset);
    eventually("the link to b is back", || {
        a.peer_stats().iter().any(|p| p.peer == "b")
    })
    .await;
    for i in 50..100u64 {
        a.send("b", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 50..100u64 {
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} lost after the link was remade"));
        assert_eq!(got.unwrap(), ("a".to_string(), i));
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// `b` restarts under its name with another channel table: `a`, whose route to `b` was
/// cached, refuses it with `ChannelTableMismatch` on every send once it has seen the new
/// table, and never delivers to it.
#[tokio::test(start_paused = true)]
async fn a_channel_table_mismatch_still_refuses_after_a_cached_route() {
    let net = MemoryNetwork::new();
    let a = start(&net, "a", None).await;
    let b = start(&net, "b", None).await;
    b.join(&[a.addr()]).await.unwrap();
    eventually("joined", || up(&a) == ["a", "b"]).await;
    let mut inbox = b.register::<u64>("inbox");
    for i in 0..20u64 {
        a.send("b", "inbox", &i, KEYED).await.unwrap();
    }
    for i in 0..20u64 {
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), i));
    }
    drop(inbox);
    b.shutdown().await;
    drop(b);
    let mut other = default_channels();
    for spec in &mut other.channels {
        if spec.name == MESSAGES {
            spec.parallelism = 4;
        }
    }
    // The old listener name may still be held: the new `b` listens elsewhere.
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(&net, settings("b")).unwrap());
    let b = Node::start(
        t,
        "b",
        NodeSettings {
            listen: "mem://b-again".into(),
            channels: other,
            ..NodeSettings::default()
        },
    )
    .await
    .unwrap();
    let mut inbox = b.register::<u64>("inbox");
    let _ = b.join(&[a.addr()]).await;
    eventually("a refuses b", || {
        a.members().iter().any(|m| m.name == "b" && m.up)
    })
    .await;
    // Sends until a has the new table (some may still go out before it is known).
    let mut refused = false;
    for _ in 0..200 {
        match a.send("b", "inbox", &0u64, KEYED).await {
            Err(e) if matches!(&e, Error::ChannelTableMismatch { node, .. } if node == "b") => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(refused, "a never refused b's new table");
    while inbox.try_recv().is_ok() {}
    for i in 0..50u64 {
        let e = a.send("b", "inbox", &i, KEYED).await.unwrap_err();
        assert!(
            matches!(&e, Error::ChannelTableMismatch { node, .. } if node == "b"),
            "{e}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(inbox.try_recv().is_err(), "nothing delivered once refused");
    a.shutdown().await;
    b.shutdown().await;
}
