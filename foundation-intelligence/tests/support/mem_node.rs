//! A full-mesh node on the in-memory transport that answers `whoami` with its name:
//! the set-up of the adaptive-topology tests.

use std::sync::Arc;

use foundation_intelligence::distributed::node::{Node, NodeSettings};
use foundation_intelligence::distributed::topology::{Role, TopologyKind};
use foundation_intelligence::distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
};

/// Starts node `name` of cluster `cluster` on `net`, in full mesh with `role`, serving
/// `whoami`.
pub async fn whoami_node(
    net: &MemoryNetwork,
    cluster: &str,
    name: &str,
    role: Role,
    secret: &ClusterSecret,
) -> Node {
    let settings = TransportSettings {
        cluster: cluster.into(),
        node: name.into(),
        security: Security::Secret(secret.clone()),
        ..TransportSettings::default()
    };
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(net, settings).unwrap());
    let n = Node::start(
        t,
        name,
        NodeSettings {
            listen: format!("mem://{name}"),
            role,
            topology: TopologyKind::FullMesh,
            ..NodeSettings::default()
        },
    )
    .await
    .unwrap();
    let me = name.to_string();
    n.serve("whoami", move |_from, _: ()| {
        let me = me.clone();
        async move { me }
    });
    n
}
