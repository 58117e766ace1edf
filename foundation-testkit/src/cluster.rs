//! A cluster of [`Node`]s in one process, on the in-memory transport or loopback TCP,
//! with fault injection and connection accounting.
//!
//! ```
//! use std::time::Duration;
//! use foundation_testkit::cluster::{Cluster, ClusterSpec, Net};
//! use foundation_distributed::node::SendOptions;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::start(ClusterSpec::new(3, Net::Memory)).await?;
//! cluster.converge(Duration::from_secs(10)).await?;
//! let mut inbox = cluster.node(2).register::<u32>("inbox");
//! cluster.node(0).send("n2", "inbox", &7u32, SendOptions::default()).await?;
//! assert_eq!(inbox.recv().await.unwrap(), ("n0".to_string(), 7));
//!
//! cluster.partition(&["n0"], &["n1", "n2"]); // fault injection
//! cluster.heal();
//! assert!(cluster.connections_of("n0") >= 2);
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every node sends through the cluster's shared [`Interposer`], so faults are rules on
//! (from, to, channel). [`connections_of`](Cluster::connections_of) counts the
//! connections a node opened plus those opened to it (successful, authenticated ones, each
//! slot once), which is the number of file descriptors the node holds on a real network
//! once its links have settled.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use foundation_distributed::channel::ChannelSettings;
use foundation_distributed::interpose::{Fault, Interposer, Rule, RuleId};
use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::topology::{Role, TopologyKind};
use foundation_distributed::transport::{
    ClusterSecret, Connection, Listener, MemoryNetwork, MemoryTransport, Security, TcpTransport,
    Transport, TransportSettings,
};
use parking_lot::Mutex;

/// Which network the nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// The in-memory transport (`mem://nI`): same framing, handshake and limits as TCP.
    Memory,
    /// Loopback TCP (`127.0.0.1:0`).
    Tcp,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Number of nodes, named `n0`, `n1`, ...
    pub nodes: usize,
    /// The network.
    pub net: Net,
    /// Topology of every node.
    pub topology: TopologyKind,
    /// Nodes `0..servers` get [`Role::Server`], the others [`Role::Client`], when the
    /// topology is client-server or `server_roles` is set; otherwise every node is a
    /// peer.
    pub servers: usize,
    /// Give roles (servers and clients) whatever the starting topology, so that a later
    /// switch to client-server has servers.
    pub server_roles: bool,
    /// Channels of every node.
    pub channels: ChannelSettings,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Capacity of each registered receiver's queue.
    pub receiver_capacity: usize,
}

impl ClusterSpec {
    /// `nodes` full-mesh peers with the default channels.
    pub fn new(nodes: usize, net: Net) -> Self {
        let d = NodeSettings::default();
        ClusterSpec {
            nodes,
            net,
            topology: TopologyKind::FullMesh,
            servers: 1,
            server_roles: false,
            channels: ChannelSettings::default(),
            heartbeat: d.heartbeat,
            receiver_capacity: d.receiver_capacity,
        }
    }

    /// With this topology (and `servers` servers when it is client-server).
    pub fn topology(mut self, topology: TopologyKind, servers: usize) -> Self {
        self.topology = topology;
        self.servers = servers;
        self
    }

    /// Nodes `0..servers` are servers and the others clients, whatever the topology.
    pub fn server_roles(mut self, servers: usize) -> Self {
        self.servers = servers;
        self.server_roles = true;
        self
    }

    /// With these channels.
    pub fn channels(mut self, channels: ChannelSettings) -> Self {
        self.channels = channels;
        self
    }

    /// With this receiver queue capacity.
    pub fn receiver_capacity(mut self, capacity: usize) -> Self {
        self.receiver_capacity = capacity;
        self
    }
}

/// Why the harness could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A node failed to start or join.
    #[error("node {node}: {source}")]
    Node {
        /// The node.
        node: String,
        /// What failed.
        source: foundation_distributed::Error,
    },
    /// Membership did not converge in time.
    #[error("membership did not converge within {after:?}: {detail}")]
    NotConverged {
        /// The time allowed.
        after: Duration,
        /// Who sees whom.
        detail: String,
    },
}

/// Connection slots opened: (from node, to address, channel, index). A slot opened twice
/// (a reconnect, or a duplicate link raced and closed) counts once, so the count is the
/// connections a node holds once links have settled.
#[derive(Debug, Default)]
struct Ledger {
    opened: Mutex<HashSet<(String, String, String, u16)>>,
}

/// A transport that counts the connections its node opens.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Transport>,
    node: String,
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Transport for Counting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn reload_certificates(&self) -> foundation_distributed::Result<()> {
        self.inner.reload_certificates()
    }

    async fn listen(&self, addr: &str) -> foundation_distributed::Result<Listener> {
        self.inner.listen(addr).await
    }

    async fn connect(
        &self,
        addr: &str,
        channel: &str,
        index: u16,
    ) -> foundation_distributed::Result<Connection> {
        let c = self.inner.connect(addr, channel, index).await?;
        self.ledger.opened.lock().insert((
            self.node.clone(),
            addr.to_string(),
            channel.to_string(),
            index,
        ));
        Ok(c)
    }
}

/// A running in-process cluster. Dropping it stops the nodes (their tasks are cancelled);
/// [`shutdown`](Self::shutdown) stops them with goodbyes.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Option<Node>>,
    names: Vec<String>,
    addrs: Vec<String>,
    interposer: Arc<Interposer>,
    ledger: Arc<Ledger>,
    network: Option<MemoryNetwork>,
}

/// The cluster secret every node of this process's harness clusters shares: generated once
/// per process from the OS CSPRNG (a fixed test string would be refused as weak).
fn harness_secret() -> ClusterSecret {
    static SECRET: std::sync::OnceLock<ClusterSecret> = std::sync::OnceLock::new();
    SECRET.get_or_init(ClusterSecret::generate).clone()
}

/// The transport settings the harness uses for node `name`.
pub fn transport_settings(name: &str) -> TransportSettings {
    TransportSettings {
        cluster: "testkit".into(),
        node: name.into(),
        security: Security::Secret(harness_secret()),
        ..TransportSettings::default()
    }
}

impl Cluster {
    /// Starts the nodes and joins each to node 0 (node 0 joins nobody).
    ///
    /// # Errors
    /// [`HarnessError::Node`] if a node fails to start or join.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let network = (spec.net == Net::Memory).then(MemoryNetwork::new);
        let interposer = Arc::new(Interposer::with_seed(0x7e57));
        let ledger = Arc::new(Ledger::default());
        let mut cluster = Cluster {
            nodes: Vec::new(),
            names: Vec::new(),
            addrs: Vec::new(),
            interposer,
            ledger,
            network,
        };
        for i in 0..spec.nodes {
            let name = format!("n{i}");
            let node = cluster.start_node(&spec, i, &name).await?;
            if i > 0 {
                let seed = cluster.addrs[0].clone();
                node.join(&[&seed])
                    .await
                    .map_err(|source| HarnessError::Node {
                        node: name.clone(),
                        source,
                    })?;
            }
            cluster.addrs.push(node.addr().to_string());
            cluster.names.push(name);
            cluster.nodes.push(Some(node));
        }
        Ok(cluster)
    }

    async fn start_node(
        &self,
        spec: &ClusterSpec,
        i: usize,
        name: &str,
    ) -> Result<Node, HarnessError> {
        let err = |source| HarnessError::Node {
            node: name.to_string(),
            source,
        };
        let inner: Arc<dyn Transport> = match &self.network {
            Some(net) => {
                Arc::new(MemoryTransport::new(net, transport_settings(name)).map_err(err)?)
            }
            None => Arc::new(TcpTransport::new(transport_settings(name)).map_err(err)?),
        };
        let transport: Arc<dyn Transport> = Arc::new(Counting {
            inner,
            node: name.to_string(),
            ledger: self.ledger.clone(),
        });
        let roles = spec.server_roles || matches!(spec.topology, TopologyKind::ClientServer { .. });
        let role = match (roles, i < spec.servers) {
            (true, true) => Role::Server,
            (true, false) => Role::Client,
            (false, _) => Role::Peer,
        };
        let settings = NodeSettings {
            listen: match spec.net {
                Net::Memory => format!("mem://{name}"),
                Net::Tcp => "127.0.0.1:0".into(),
            },
            role,
            topology: spec.topology,
            channels: spec.channels.clone(),
            heartbeat: spec.heartbeat,
            receiver_capacity: spec.receiver_capacity,
            interposer: Some(self.interposer.clone()),
            ..NodeSettings::default()
        };
        Node::start(transport, name, settings).await.map_err(err)
    }

    /// Waits until every running node sees every running node up.
    ///
    /// # Errors
    /// [`HarnessError::NotConverged`] after `timeout`, with each node's view.
    pub async fn converge(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let want: Vec<&str> = self.running().map(|n| n.name()).collect();
            let ok = self.running().all(|n| {
                let up: Vec<String> = n
                    .members()
                    .into_iter()
                    .filter(|m| m.up)
                    .map(|m| m.name)
                    .collect();
                want.iter().all(|w| up.iter().any(|u| u == w))
            });
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let detail = self
                    .running()
                    .map(|n| format!("{} sees {}", n.name(), n.members().len()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(HarnessError::NotConverged {
                    after: timeout,
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `i`.
    ///
    /// # Panics
    /// If node `i` does not exist or was killed.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node was killed")
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// Node names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The shared fault injector.
    pub fn interposer(&self) -> &Arc<Interposer> {
        &self.interposer
    }

    /// Drops all traffic between the nodes of `a` and those of `b`, both ways.
    pub fn partition(&self, a: &[&str], b: &[&str]) -> RuleId {
        self.interposer.partition(a, b)
    }

    /// Drops each message from `from` to `to` with `probability` (0..=1).
    pub fn drop_messages(&self, from: &[&str], to: &[&str], probability: f64) -> RuleId {
        self.interposer
            .add(Rule::new(Fault::Drop { probability }).from(from).to(to))
    }

    /// Delays each message from `from` to `to` by a uniform time in `min..=max`.
    pub fn delay_messages(
        &self,
        from: &[&str],
        to: &[&str],
        min: Duration,
        max: Duration,
    ) -> RuleId {
        self.interposer
            .add(Rule::new(Fault::Delay { min, max }).from(from).to(to))
    }

    /// Adds any fault rule (see [`Rule`]).
    pub fn inject(&self, rule: Rule) -> RuleId {
        self.interposer.add(rule)
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        self.interposer.heal();
    }

    /// Crashes node `i`: its tasks stop without a goodbye (peers must detect it).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Connections `name` opened plus those opened to it: each (from, to, channel, index)
    /// slot once, so a reconnect or a raced duplicate link that was closed does not count
    /// twice; a link dropped for good is still counted (the node does not drop links while
    /// both ends live).
    pub fn connections_of(&self, name: &str) -> usize {
        let Some(i) = self.names.iter().position(|n| n == name) else {
            return 0;
        };
        let addr = &self.addrs[i];
        self.ledger
            .opened
            .lock()
            .iter()
            .filter(|(from, to, _, _)| from == name || to == addr)
            .count()
    }

    /// Connections opened in the whole cluster (each counted once, see
    /// [`connections_of`](Self::connections_of)).
    pub fn connections_total(&self) -> usize {
        self.ledger.opened.lock().len()
    }

    /// Shuts every running node down (with goodbyes), each within `deadline`.
    pub async fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(node) = n.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
            }
        }
    }
}
