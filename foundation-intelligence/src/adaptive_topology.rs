//! Adaptive topology: watch the cluster and switch the overlay when it no longer fits.
//!
//! A [`TopologySelector`] looks at a [`ClusterSnapshot`] and names the topology it wants;
//! [`AdaptiveTopology`] feeds it snapshots of a [`Node`],
//! and switches the node's topology (through
//! [`Node::switch_topology`](crate::distributed::node::Node::switch_topology)) when the
//! selector asks for a different one and the cooldown since the last switch has passed.
//! Application code is unaffected by a switch.
//!
//! [`SizeSelector`] is the built-in selector: full mesh up to `mesh_max` live members,
//! client-server above (only when members with the server role are up), with hysteresis so a cluster hovering at the boundary does not
//! flap. The overlays' smart selector plugs in through the same trait.
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_topology_switches_total{to}` | counter |

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::distributed::node::Node;
use crate::distributed::topology::TopologyKind;

/// What a selector sees.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSnapshot {
    /// Members known (this node included).
    pub members: usize,
    /// Members considered up.
    pub up: usize,
    /// Members up with the server role (client-server needs at least one).
    pub servers: usize,
    /// The topology in force.
    pub current: TopologyKind,
}

/// Picks a topology for a cluster.
pub trait TopologySelector: Send {
    /// The topology wanted for `snapshot` (the current one to stay).
    fn select(&mut self, snapshot: &ClusterSnapshot) -> TopologyKind;
}

/// Full mesh for small clusters, client-server for large ones.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeSelector {
    /// Largest live cluster kept in full mesh. Default 16.
    pub mesh_max: usize,
    /// Members below `mesh_max` needed before going back to full mesh. Default 2.
    pub hysteresis: usize,
    /// Servers per client in client-server. Default 2.
    pub servers_per_client: usize,
}

impl Default for SizeSelector {
    fn default() -> Self {
        SizeSelector {
            mesh_max: 16,
            hysteresis: 2,
            servers_per_client: 2,
        }
    }
}

impl TopologySelector for SizeSelector {
    fn select(&mut self, s: &ClusterSnapshot) -> TopologyKind {
        let cs = TopologyKind::ClientServer {
            servers_per_client: self.servers_per_client.max(1),
        };
        match s.current {
            // Without a server, client-server could not route: stay in the mesh.
            TopologyKind::FullMesh if s.up > self.mesh_max && s.servers > 0 => cs,
            TopologyKind::ClientServer { .. } if s.up + self.hysteresis <= self.mesh_max => {
                TopologyKind::FullMesh
            }
            other => other,
        }
    }
}

/// A switch made.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    /// From.
    pub from: TopologyKind,
    /// To.
    pub to: TopologyKind,
    /// Live members when switching.
    pub up: usize,
}

/// Drives a [`TopologySelector`] for a node.
pub struct AdaptiveTopology {
    node: Node,
    selector: Box<dyn TopologySelector>,
    current: TopologyKind,
    cooldown: Duration,
    last_switch: Option<Instant>,
    switches: Vec<Switch>,
}

impl std::fmt::Debug for AdaptiveTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveTopology")
            .field("node", &self.node.name())
            .field("current", &self.current)
            .field("switches", &self.switches.len())
            .finish()
    }
}

/// Describes the adaptive-topology metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_topology_switches_total",
        "Topology switches made by the adaptive topology controller."
    );
}

impl AdaptiveTopology {
    /// Watches `node`, whose topology is `current` now, switching at most once per
    /// `cooldown`.
    pub fn new(
        node: Node,
        current: TopologyKind,
        selector: Box<dyn TopologySelector>,
        cooldown: Duration,
    ) -> Self {
        AdaptiveTopology {
            node,
            selector,
            current,
            cooldown,
            last_switch: None,
            switches: Vec::new(),
        }
    }

    /// The topology in force.
    pub fn current(&self) -> TopologyKind {
        self.current
    }

    /// The switches made so far.
    pub fn switches(&self) -> &[Switch] {
        &self.switches
    }

    /// Takes a snapshot at `now`, asks the selector, and switches if it wants another
    /// topology and the cooldown has passed. Returns the switch made, if any.
    pub fn evaluate(&mut self, now: Instant) -> Option<Switch> {
        let members = self.node.members();
        let snapshot = ClusterSnapshot {
            members: members.len(),
            up: members.iter().filter(|m| m.up).count(),
            servers: members
                .iter()
                .filter(|m| m.up && m.role == crate::distributed::topology::Role::Server)
                .count(),
            current: self.current,
        };
        let want = self.selector.select(&snapshot);
        if want == self.current {
            return None;
        }
        if let Some(last) = self.last_switch {
            if now.saturating_duration_since(last) < self.cooldown {
                return None;
            }
        }
        self.node.switch_topology(want);
        let s = Switch {
            from: self.current,
            to: want,
            up: snapshot.up,
        };
        tracing::info!(node = %self.node.name(), from = ?s.from, to = ?s.to, up = s.up, "adaptive topology: switched");
        metrics::counter!("foundation_topology_switches_total", "to" => kind_label(want))
            .increment(1);
        self.current = want;
        self.last_switch = Some(now);
        self.switches.push(s.clone());
        Some(s)
    }

    /// Evaluates every `every` until `cancel` fires; the task returns the controller.
    pub fn spawn(
        mut self,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<AdaptiveTopology> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                self.evaluate(Instant::now());
            }
            self
        })
    }
}

/// A short name of a topology kind.
pub fn kind_label(kind: TopologyKind) -> &'static str {
    kind.label()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_selector_switches_with_hysteresis() {
        let mut s = SizeSelector {
            mesh_max: 4,
            hysteresis: 2,
            servers_per_client: 1,
        };
        let snap = |up, current| ClusterSnapshot {
            members: up,
            up,
            servers: 1,
            current,
        };
        assert_eq!(
            s.select(&snap(4, TopologyKind::FullMesh)),
            TopologyKind::FullMesh
        );
        let cs = TopologyKind::ClientServer {
            servers_per_client: 1,
        };
        assert_eq!(s.select(&snap(5, TopologyKind::FullMesh)), cs);
        // 3 live members: inside the hysteresis band, stays client-server.
        assert_eq!(s.select(&snap(3, cs)), cs);
        assert_eq!(s.select(&snap(2, cs)), TopologyKind::FullMesh);
        // No server up: client-server could not route, so the mesh stays.
        let no_servers = ClusterSnapshot {
            servers: 0,
            ..snap(5, TopologyKind::FullMesh)
        };
        assert_eq!(s.select(&no_servers), TopologyKind::FullMesh);
    }
}
