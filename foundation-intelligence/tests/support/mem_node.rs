//! Full-mesh nodes on the in-memory transport for this crate's tests; one that answers
//! `whoami` with its name is the set-up of the adaptive-topology tests.

use std::sync::Arc;

use foundation_intelligence::distributed::node::{Node, NodeSettings};
use foundation_intelligence::distributed::topology::{Role, TopologyKind};
use foundation_intelligence::distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
};

/// Starts node `name` of cluster `cluster` on `net` (listening on `mem://<name>`,
/// authenticated with `secret`), in full mesh, with the rest of `settings`.
pub async fn start(
    net: &MemoryNetwork,
    cluster: &str,
    name: &str,
    secret: &ClusterSecret,
    settings: NodeSettings,
) -> Node {
    let transport = TransportSettings {
        cluster: cluster.into(),
        node: name.into(),
        security: Security::Secret(secret.clone()),
        ..TransportSettings::default()
    };
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(net, transport).unwrap());
    Node::start(
        t,
        name,
        NodeSettings {
            listen: format!("mem://{name}"),
            topology: TopologyKind::FullMesh,
            ..settings
        },
    )
    .await
    .unwrap()
}

/// Starts node `name` of cluster `cluster` on `net`, in full mesh with `role`, serving
/// `whoami`.
pub async fn whoami_node(
    net: &MemoryNetwork,
    cluster: &str,
    name: &str,
    role: Role,
    secret: &ClusterSecret,
) -> Node {
    let settings = NodeSettings {
        role,
        ..NodeSettings::default()
    };
    let n = start(net, cluster, name, secret, settings).await;
    let me = name.to_string();
    n.serve("whoami", move |_from, _: ()| {
        let me = me.clone();
        async move { me }
    });
    n
}
