//! Overlay topologies: which peers a node keeps connections to, and how a message reaches
//! a node it is not connected to — behind one trait, switchable at run time.
//!
//! A [`PeerService`] is a state machine fed with membership changes. It answers three
//! questions the node layer asks on every send: [`wanted`](PeerService::wanted) (the
//! connections to hold), [`next_hop`](PeerService::next_hop) (direct, through a relay, or
//! unreachable) and [`broadcast_targets`](PeerService::broadcast_targets) (who gets a
//! broadcast from here, and who a node forwards one to). Gossip-based managers (HyParView,
//! Plumtree) also exchange protocol messages of their own through
//! [`on_message`](PeerService::on_message) and [`tick`](PeerService::tick), which the node
//! delivers; the full mesh, client/server and static managers need none.
//!
//! * [`FullMesh`] — everyone connects to everyone; for small clusters.
//! * [`ClientServer`] — servers form a full mesh; each client connects to `k` servers
//!   chosen by rendezvous hashing (so every node computes the same choice), and traffic
//!   between clients is relayed by servers.
//! * [`Static`] — a fixed neighbour list; no relaying.
//! * [`TopologyKind::HyParView`] — partial views ([`HyParViewService`]): a handful of
//!   neighbours per node, repaired from a passive view; broadcasts through Plumtree over
//!   them ([`publish`](PeerService::publish)). For large clusters.
//!
//! [`HyParViewService`]: crate::overlay::service::HyParViewService
//!
//! Application code addresses nodes by name and never sees the topology; [`Topology`]
//! swaps the manager at run time, carrying the membership over.
//!
//! ```
//! use foundation_distributed::topology::{Member, Role, Topology, TopologyKind};
//!
//! let members = vec![
//!     Member::new("s1", Role::Server), Member::new("s2", Role::Server),
//!     Member::new("c1", Role::Client), Member::new("c2", Role::Client),
//! ];
//! let mut t = Topology::new(TopologyKind::FullMesh, "c1", &members);
//! assert_eq!(t.next_hop("c2").as_deref(), Some("c2"));
//! t.switch(TopologyKind::ClientServer { servers_per_client: 1 });
//! let relay = t.next_hop("c2").unwrap();
//! assert!(relay.starts_with('s'), "client traffic goes through a server");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hash};

use serde::{Deserialize, Serialize};

/// A node's role, for topologies that distinguish them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A peer of equal standing (full mesh, HyParView).
    Peer,
    /// A server in a client-server topology.
    Server,
    /// A client in a client-server topology.
    Client,
}

/// A cluster member as the topology sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node's unique name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Member {
    /// A member.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        Member {
            name: name.into(),
            role,
        }
    }
}

/// A membership change fed to a [`PeerService`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joined (or changed role).
    Joined(Member),
    /// A node left on purpose.
    Left(String),
    /// A node is suspected down (failure detector).
    Down(String),
    /// A node suspected down answers again.
    Up(String),
}

/// Which topology.
///
/// New kinds may be added: the enum is `#[non_exhaustive]`, so a `match` outside this crate
/// needs a wildcard arm.
///
/// ```
/// use foundation_distributed::overlay::HyParViewConfig;
/// use foundation_distributed::topology::TopologyKind;
///
/// let kind = TopologyKind::HyParView(HyParViewConfig {
///     active_capacity: 4,
///     ..HyParViewConfig::default()
/// });
/// assert!(kind.is_partial());
/// assert!(!TopologyKind::FullMesh.is_partial());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TopologyKind {
    /// [`FullMesh`].
    FullMesh,
    /// [`ClientServer`], each client connected to this many servers.
    ClientServer {
        /// Servers each client connects to (at least 1).
        servers_per_client: usize,
    },
    /// [`Static`] with no neighbours configured (set them with [`Static::new`]).
    Static,
    /// HyParView partial views ([`HyParViewService`](crate::overlay::service::HyParViewService)):
    /// each node holds connections to its active view only (default 5 peers) and keeps a
    /// passive view (default 30) to repair it; broadcasts go through Plumtree over the
    /// active view. For large peer-to-peer clusters.
    #[serde(rename = "hyparview")]
    HyParView(crate::overlay::HyParViewConfig),
}

impl TopologyKind {
    /// HyParView with the paper's parameters.
    pub fn hyparview() -> Self {
        TopologyKind::HyParView(crate::overlay::HyParViewConfig::default())
    }

    /// Whether the topology keeps a partial view: the node links to the peers it
    /// [wants](PeerService::wanted) only, closes other links after a grace period,
    /// heartbeats and watches only its neighbours, and spreads membership news over its
    /// neighbours instead of to everyone.
    pub fn is_partial(&self) -> bool {
        matches!(self, TopologyKind::HyParView(_))
    }

    /// A short name (`full_mesh`, `client_server`, `static`, `hyparview`), for metrics
    /// labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            TopologyKind::FullMesh => "full_mesh",
            TopologyKind::ClientServer { .. } => "client_server",
            TopologyKind::Static => "static",
            TopologyKind::HyParView(_) => "hyparview",
        }
    }
}

/// A peer-service manager. See the [module docs](self).
pub trait PeerService: Send + Sync + std::fmt::Debug {
    /// Which topology this is.
    fn kind(&self) -> TopologyKind;
    /// Applies a membership change.
    fn update(&mut self, change: Change);
    /// The peers this node should hold connections to now.
    fn wanted(&self) -> BTreeSet<String>;
    /// The peer to hand a message for `to` to: `to` itself when directly connected, a
    /// relay otherwise, `None` when `to` is unknown, down, or unreachable.
    fn next_hop(&self, to: &str) -> Option<String>;
    /// The peers a broadcast goes to from here: the originator's targets when `from` is
    /// `None`, otherwise the peers to forward to after receiving it from `from`.
    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String>;
    /// The known members that are not down.
    fn alive(&self) -> Vec<Member>;

    /// Handles a protocol message of this manager from peer `from` (gossip-based managers
    /// such as HyParView exchange join, shuffle and repair messages); returns the messages
    /// to send in answer, as (peer, payload). The node delivers them on `coordination`.
    /// Managers without a protocol keep the default, which ignores them.
    fn on_message(&mut self, _from: &str, _payload: &[u8]) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }

    /// Called once per heartbeat round (periodic shuffles, repairs); returns messages to
    /// send, as (peer, payload).
    fn tick(&mut self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }

    /// Spreads a broadcast with the manager's own protocol (Plumtree under HyParView):
    /// `payload` is the node's encoded broadcast, `incarnation` the node's run (carried in
    /// the broadcast's id). Returns the protocol messages to send, or `None` when the
    /// manager has no broadcast protocol (the default): the node then sends the broadcast
    /// to [`broadcast_targets`](Self::broadcast_targets) itself.
    fn publish(
        &mut self,
        _incarnation: u64,
        _payload: bytes::Bytes,
    ) -> Option<Vec<(String, Vec<u8>)>> {
        None
    }

    /// Broadcasts the manager's protocol delivered since the last call (each once), for
    /// the node to hand to its receivers.
    fn take_delivered(&mut self) -> Vec<Delivered> {
        Vec::new()
    }

    /// Whether an outgoing protocol message carries application data (a broadcast
    /// payload): the node sends those on a data channel rather than on `coordination`.
    fn carries_data(&self, _payload: &[u8]) -> bool {
        false
    }

    /// The broadcast protocol's counters (eager, lazy, graft, prune, ...), for managers
    /// that have one.
    fn broadcast_stats(&self) -> Option<crate::overlay::plumtree::PtStats> {
        None
    }

    /// The overlay's views (active, passive, broadcast tree), for managers that keep
    /// partial views.
    fn overlay_views(&self) -> Option<OverlayViews> {
        None
    }

    /// The node cannot reach `peer` for this manager: its failure detector suspects it,
    /// or a protocol message to it could not be sent (an unknown member, one held down).
    /// Not a membership change (a suspicion may be refuted): a manager keeping partial
    /// views replaces it as a neighbour at once. The default ignores it.
    /// Returns the messages to send, as [`tick`](Self::tick) does.
    fn unreachable(&mut self, _peer: &str) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// A partial-view overlay as one node holds it now ([`Node::overlay_views`](crate::node::Node::overlay_views)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayViews {
    /// HyParView's active view: the peers it is linked to.
    pub active: Vec<String>,
    /// HyParView's passive view: candidates to replace a failed active peer.
    pub passive: Vec<String>,
    /// Plumtree's eager peers: the edges of the broadcast tree (payloads pushed).
    pub eager: Vec<String>,
    /// Plumtree's lazy peers: edges off the tree (message ids only, grafted on a loss).
    pub lazy: Vec<String>,
}

/// A broadcast delivered by a manager's own broadcast protocol (see
/// [`PeerService::publish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The neighbour it came from.
    pub from: String,
    /// Hops from its origin.
    pub hops: u16,
    /// The node's encoded broadcast, as given to `publish` at the origin.
    pub payload: bytes::Bytes,
}

/// What every manager here keeps: the local node and the members with their state.
#[derive(Debug, Clone)]
struct View {
    local: String,
    members: BTreeMap<String, (Member, bool)>,
}

impl View {
    fn new(local: &str, members: &[Member]) -> Self {
        let mut v = View {
            local: local.to_string(),
            members: BTreeMap::new(),
        };
        for m in members {
            v.apply(Change::Joined(m.clone()));
        }
        v
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Joined(m) => {
                self.members.insert(m.name.clone(), (m, true));
            }
            Change::Left(n) => {
                self.members.remove(&n);
            }
            Change::Down(n) => {
                if let Some(e) = self.members.get_mut(&n) {
                    e.1 = false;
                }
            }
            Change::Up(n) => {
                if let Some(e) = self.members.get_mut(&n) {
                    e.1 = true;
                }
            }
        }
    }

    fn is_alive(&self, name: &str) -> bool {
        self.members.get(name).is_some_and(|(_, up)| *up)
    }

    fn alive(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|(_, up)| *up).map(|(m, _)| m)
    }

    fn others(&self) -> impl Iterator<Item = &Member> {
        self.alive().filter(move |m| m.name != self.local)
    }

    fn role_of(&self, name: &str) -> Option<Role> {
        self.members.get(name).map(|(m, _)| m.role)
    }
}

/// Everyone connected to everyone.
#[derive(Debug, Clone)]
pub struct FullMesh {
    view: View,
}

impl FullMesh {
    /// A full mesh seen from `local`.
    pub fn new(local: &str, members: &[Member]) -> Self {
        FullMesh {
            view: View::new(local, members),
        }
    }
}

impl PeerService for FullMesh {
    fn kind(&self) -> TopologyKind {
        TopologyKind::FullMesh
    }

    fn update(&mut self, change: Change) {
        self.view.apply(change);
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.view.others().map(|m| m.name.clone()).collect()
    }

    fn next_hop(&self, to: &str) -> Option<String> {
        (to != self.view.local && self.view.is_alive(to)).then(|| to.to_string())
    }

    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        match from {
            None => self.wanted().into_iter().collect(),
            Some(_) => Vec::new(), // the originator reached everyone directly
        }
    }

    fn alive(&self) -> Vec<Member> {
        self.view.alive().cloned().collect()
    }
}

/// Servers in a full mesh; clients connected to `k` servers; client traffic relayed.
#[derive(Debug, Clone)]
pub struct ClientServer {
    view: View,
    servers_per_client: usize,
}

impl ClientServer {
    /// A client-server topology seen from `local`.
    pub fn new(local: &str, members: &[Member], servers_per_client: usize) -> Self {
        ClientServer {
            view: View::new(local, members),
            servers_per_client: servers_per_client.max(1),
        }
    }

    /// The servers `client` connects to, best first: rendezvous (highest-random-weight)
    /// hashing over the alive servers, so every node computes the same answer and a
    /// server failure moves only its own clients.
    pub fn home_servers(&self, client: &str) -> Vec<String> {
        let hasher = foldhash::fast::FixedState::with_seed(0x7011_0c0d);
        let mut servers: Vec<(u64, &str)> = self
            .view
            .alive()
            .filter(|m| m.role == Role::Server)
            .map(|m| (hasher.hash_one((client, m.name.as_str())), m.name.as_str()))
            .collect();
        servers.sort_unstable_by(|a, b| b.cmp(a));
        servers
            .into_iter()
            .take(self.servers_per_client)
            .map(|(_, s)| s.to_string())
            .collect()
    }

    fn local_role(&self) -> Role {
        self.view.role_of(&self.view.local).unwrap_or(Role::Client)
    }

    fn servers(&self) -> impl Iterator<Item = &Member> {
        self.view.others().filter(|m| m.role == Role::Server)
    }

    /// Clients whose first home server is this server.
    fn own_clients(&self) -> Vec<String> {
        self.view
            .alive()
            .filter(|m| m.role != Role::Server)
            .filter(|m| {
                self.home_servers(&m.name).first().map(String::as_str)
                    == Some(self.view.local.as_str())
            })
            .map(|m| m.name.clone())
            .collect()
    }
}

impl PeerService for ClientServer {
    fn kind(&self) -> TopologyKind {
        TopologyKind::ClientServer {
            servers_per_client: self.servers_per_client,
        }
    }

    fn update(&mut self, change: Change) {
        self.view.apply(change);
    }

    fn wanted(&self) -> BTreeSet<String> {
        match self.local_role() {
            // Servers dial servers; clients dial in.
            Role::Server => self.servers().map(|m| m.name.clone()).collect(),
            _ => self.home_servers(&self.view.local).into_iter().collect(),
        }
    }

    fn next_hop(&self, to: &str) -> Option<String> {
        if to == self.view.local || !self.view.is_alive(to) {
            return None;
        }
        let to_role = self.view.role_of(to)?;
        match self.local_role() {
            Role::Server => match to_role {
                Role::Server => Some(to.to_string()),
                _ => {
                    let homes = self.home_servers(to);
                    if homes.contains(&self.view.local) {
                        Some(to.to_string())
                    } else {
                        homes.into_iter().next()
                    }
                }
            },
            _ => {
                let mine = self.home_servers(&self.view.local);
                if mine.iter().any(|s| s == to) {
                    Some(to.to_string())
                } else {
                    mine.into_iter().next()
                }
            }
        }
    }

    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        match self.local_role() {
            Role::Server => {
                let from_role = from.and_then(|f| self.view.role_of(f));
                let mut out: Vec<String> = if from_role == Some(Role::Server) {
                    Vec::new() // another server already reached every server
                } else {
                    self.servers().map(|m| m.name.clone()).collect()
                };
                out.extend(
                    self.own_clients()
                        .into_iter()
                        .filter(|c| Some(c.as_str()) != from),
                );
                out
            }
            _ => match from {
                None => self
                    .home_servers(&self.view.local)
                    .into_iter()
                    .take(1)
                    .collect(),
                Some(_) => Vec::new(),
            },
        }
    }

    fn alive(&self) -> Vec<Member> {
        self.view.alive().cloned().collect()
    }
}

/// A fixed neighbour list: connect to these, reach only these.
#[derive(Debug, Clone)]
pub struct Static {
    view: View,
    neighbours: BTreeSet<String>,
}

impl Static {
    /// A static topology: `local` connects to `neighbours` only.
    pub fn new(local: &str, members: &[Member], neighbours: &[&str]) -> Self {
        Static {
            view: View::new(local, members),
            neighbours: neighbours.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl PeerService for Static {
    fn kind(&self) -> TopologyKind {
        TopologyKind::Static
    }

    fn update(&mut self, change: Change) {
        self.view.apply(change);
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.neighbours
            .iter()
            .filter(|n| self.view.is_alive(n))
            .cloned()
            .collect()
    }

    fn next_hop(&self, to: &str) -> Option<String> {
        (self.neighbours.contains(to) && self.view.is_alive(to)).then(|| to.to_string())
    }

    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        match from {
            None => self.wanted().into_iter().collect(),
            Some(_) => Vec::new(),
        }
    }

    fn alive(&self) -> Vec<Member> {
        self.view.alive().cloned().collect()
    }
}

/// The tick interval assumed by [`Topology::new`]: the node's default heartbeat.
pub const DEFAULT_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// The topology in force at a node, replaceable at run time.
#[derive(Debug)]
pub struct Topology {
    local: String,
    tick: std::time::Duration,
    service: Box<dyn PeerService>,
}

impl Topology {
    /// A topology of `kind` seen from `local`, ticked every [`DEFAULT_TICK`].
    pub fn new(kind: TopologyKind, local: &str, members: &[Member]) -> Self {
        Self::with_tick(kind, local, members, DEFAULT_TICK)
    }

    /// A topology of `kind` seen from `local` whose [`tick`](Self::tick) is called every
    /// `tick` (the node's heartbeat interval); protocol timers (HyParView's shuffle and
    /// repair) are counted in ticks.
    pub fn with_tick(
        kind: TopologyKind,
        local: &str,
        members: &[Member],
        tick: std::time::Duration,
    ) -> Self {
        Topology {
            local: local.to_string(),
            tick,
            service: build(kind, local, members, tick),
        }
    }

    /// Replaces the manager with one of `kind`, keeping the alive members.
    pub fn switch(&mut self, kind: TopologyKind) {
        let members = self.service.alive();
        self.service = build(kind, &self.local, &members, self.tick);
    }

    /// Which topology is in force.
    pub fn kind(&self) -> TopologyKind {
        self.service.kind()
    }

    /// The manager in force, to mutate (tests, custom managers).
    pub fn service_mut(&mut self) -> &mut dyn PeerService {
        self.service.as_mut()
    }

    /// Installs a custom manager (a [`Static`] list, or an application's own).
    pub fn install(&mut self, service: Box<dyn PeerService>) {
        self.service = service;
    }

    /// The manager in force.
    pub fn service(&self) -> &dyn PeerService {
        self.service.as_ref()
    }

    /// See [`PeerService::update`].
    pub fn update(&mut self, change: Change) {
        self.service.update(change);
    }

    /// See [`PeerService::unreachable`].
    pub fn unreachable(&mut self, peer: &str) -> Vec<(String, Vec<u8>)> {
        self.service.unreachable(peer)
    }

    /// See [`PeerService::next_hop`].
    pub fn next_hop(&self, to: &str) -> Option<String> {
        self.service.next_hop(to)
    }

    /// See [`PeerService::wanted`].
    pub fn wanted(&self) -> BTreeSet<String> {
        self.service.wanted()
    }

    /// See [`PeerService::broadcast_targets`].
    pub fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        self.service.broadcast_targets(from)
    }

    /// See [`PeerService::on_message`].
    pub fn on_message(&mut self, from: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
        self.service.on_message(from, payload)
    }

    /// See [`PeerService::tick`].
    pub fn tick(&mut self) -> Vec<(String, Vec<u8>)> {
        self.service.tick()
    }

    /// See [`PeerService::publish`].
    pub fn publish(
        &mut self,
        incarnation: u64,
        payload: bytes::Bytes,
    ) -> Option<Vec<(String, Vec<u8>)>> {
        self.service.publish(incarnation, payload)
    }

    /// See [`PeerService::take_delivered`].
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        self.service.take_delivered()
    }

    /// See [`PeerService::carries_data`].
    pub fn carries_data(&self, payload: &[u8]) -> bool {
        self.service.carries_data(payload)
    }

    /// See [`PeerService::broadcast_stats`].
    pub fn broadcast_stats(&self) -> Option<crate::overlay::plumtree::PtStats> {
        self.service.broadcast_stats()
    }

    /// See [`PeerService::overlay_views`].
    pub fn overlay_views(&self) -> Option<OverlayViews> {
        self.service.overlay_views()
    }
}

fn build(
    kind: TopologyKind,
    local: &str,
    members: &[Member],
    tick: std::time::Duration,
) -> Box<dyn PeerService> {
    match kind {
        TopologyKind::FullMesh => Box::new(FullMesh::new(local, members)),
        TopologyKind::ClientServer { servers_per_client } => {
            Box::new(ClientServer::new(local, members, servers_per_client))
        }
        TopologyKind::Static => Box::new(Static::new(local, members, &[])),
        TopologyKind::HyParView(config) => Box::new(
            crate::overlay::service::HyParViewService::new(local, members, config, tick),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn cluster(servers: usize, clients: usize) -> Vec<Member> {
        (0..servers)
            .map(|i| Member::new(format!("s{i}"), Role::Server))
            .chain((0..clients).map(|i| Member::new(format!("c{i}"), Role::Client)))
            .collect()
    }

    fn views(kind: TopologyKind, members: &[Member]) -> BTreeMap<String, Topology> {
        members
            .iter()
            .map(|m| (m.name.clone(), Topology::new(kind, &m.name, members)))
            .collect()
    }

    /// Follows next hops from `from` to `to`; the hop count, or None if it loops or stalls.
    fn route(nodes: &BTreeMap<String, Topology>, from: &str, to: &str) -> Option<usize> {
        let mut at = from.to_string();
        for hops in 1..=8 {
            let next = nodes[&at].next_hop(to)?;
            // A hop must use a connection one of the two sides wants.
            assert!(
                nodes[&at].wanted().contains(&next) || nodes[&next].wanted().contains(&at),
                "{at} -> {next} is not a connection"
            );
            if next == to {
                return Some(hops);
            }
            at = next;
        }
        None
    }

    /// Floods a broadcast from `origin`; how many times each node received it.
    fn flood(nodes: &BTreeMap<String, Topology>, origin: &str) -> BTreeMap<String, usize> {
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        let mut queue: VecDeque<(String, String)> = nodes[origin]
            .broadcast_targets(None)
            .into_iter()
            .map(|t| (origin.to_string(), t))
            .collect();
        while let Some((from, to)) = queue.pop_front() {
            *got.entry(to.clone()).or_default() += 1;
            for next in nodes[&to].broadcast_targets(Some(&from)) {
                queue.push_back((to.clone(), next));
            }
        }
        got
    }

    #[test]
    fn full_mesh_connects_everyone_and_delivers_in_one_hop() {
        let m = cluster(0, 6)
            .into_iter()
            .map(|m| Member::new(m.name, Role::Peer))
            .collect::<Vec<_>>();
        let nodes = views(TopologyKind::FullMesh, &m);
        for a in nodes.keys() {
            assert_eq!(nodes[a].wanted().len(), 5);
            for b in nodes.keys().filter(|b| *b != a) {
                assert_eq!(route(&nodes, a, b), Some(1));
            }
            let got = flood(&nodes, a);
            assert_eq!(got.len(), 5);
            assert!(got.values().all(|n| *n == 1), "each node exactly once");
        }
    }

    #[test]
    fn client_server_relays_client_traffic_through_servers() {
        let m = cluster(3, 12);
        let nodes = views(
            TopologyKind::ClientServer {
                servers_per_client: 1,
            },
            &m,
        );
        for c in (0..12).map(|i| format!("c{i}")) {
            let wanted = nodes[&c].wanted();
            assert_eq!(wanted.len(), 1);
            assert!(
                wanted.iter().all(|s| s.starts_with('s')),
                "clients dial servers only"
            );
        }
        for a in nodes.keys() {
            for b in nodes.keys().filter(|b| *b != a) {
                let hops = route(&nodes, a, b).unwrap_or_else(|| panic!("{a} cannot reach {b}"));
                assert!(hops <= 3, "{a} -> {b} took {hops} hops");
            }
        }
        for origin in ["c0", "s1"] {
            let got = flood(&nodes, origin);
            assert_eq!(
                got.len(),
                14,
                "a broadcast from {origin} reaches every other node"
            );
            assert!(got.values().all(|n| *n == 1), "exactly once: {got:?}");
        }
    }

    #[test]
    fn down_nodes_are_avoided_and_clients_move_to_another_server() {
        let m = cluster(3, 6);
        let mut nodes = views(
            TopologyKind::ClientServer {
                servers_per_client: 1,
            },
            &m,
        );
        let home = nodes["c0"].wanted().into_iter().next().unwrap();
        for t in nodes.values_mut() {
            t.update(Change::Down(home.clone()));
        }
        let new_home = nodes["c0"].wanted().into_iter().next().unwrap();
        assert_ne!(new_home, home);
        assert_eq!(route(&nodes, "c0", "c1").map(|h| h <= 3), Some(true));
        assert_eq!(
            nodes["c1"].next_hop(&home),
            None,
            "down nodes are unreachable"
        );
    }

    #[test]
    fn switching_keeps_membership_and_static_lists_do_not_relay() {
        let m = cluster(2, 2);
        let mut t = Topology::new(
            TopologyKind::ClientServer {
                servers_per_client: 2,
            },
            "c0",
            &m,
        );
        assert_eq!(t.wanted().len(), 2);
        t.switch(TopologyKind::FullMesh);
        assert_eq!(t.wanted().len(), 3);
        assert_eq!(t.next_hop("c1").as_deref(), Some("c1"));
        t.install(Box::new(Static::new("c0", &m, &["s0"])));
        assert_eq!(t.next_hop("c1"), None);
        assert_eq!(t.next_hop("s0").as_deref(), Some("s0"));
        assert_eq!(t.service().kind(), TopologyKind::Static);
    }
}
