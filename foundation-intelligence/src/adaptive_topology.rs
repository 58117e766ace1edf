//! Adaptive topology: watch the cluster and switch the overlay when it no longer fits.
//!
//! A [`TopologySelector`] looks at a [`ClusterSnapshot`] and names the topology it wants;
//! [`AdaptiveTopology`] feeds it snapshots of a [`Node`] — members, the round trip it
//! measures to the node's neighbours, the workload the application reports — and, when
//! the selector asks for another topology and the controller's cooldown has passed,
//! proposes the switch to the whole cluster through
//! [`Node::switch_topology_because`](crate::distributed::node::Node::switch_topology_because):
//! the switch is agreed under an epoch and every member applies it (make before break;
//! see `docs/NODE.md`). Application code is unaffected by a switch.
//!
//! Every node may run a controller: they see the same cluster and the node's switch
//! protocol settles concurrent proposals (highest `(epoch, proposer)` wins). A controller
//! follows switches made elsewhere (another node's controller, an operator): its notion
//! of the topology in force is the node's, from the epoch after the one it started at.
//!
//! Selectors:
//!
//! * [`OverlaySelector`] — the overlay's smart
//!   [`Selector`]: cluster size, measured
//!   latency and workload pattern (small → full mesh, event-driven → pub/sub, i.e.
//!   Plumtree over HyParView, client-server traffic → client-server, large peer-to-peer →
//!   HyParView), with hysteresis bands, confirmations and a cooldown so it does not flap.
//! * [`SizeSelector`] — full mesh up to `mesh_max` live members, client-server above
//!   (only when members with the server role are up), with a hysteresis margin.
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_topology_switches_total{to}` | counter (switches proposed by a controller) |
//! | `foundation_topology_switch_refused_total` | counter (proposals the node refused: its switch cooldown) |
//! | `foundation_topology_rtt_seconds` | gauge (median round trip measured to the neighbours) |

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::seq::IndexedRandom;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::distributed::node::Node;
use crate::distributed::overlay::selector::{
    Choice, Decision, Observation, Selector, SelectorConfig,
};
use crate::distributed::overlay::HyParViewConfig;
use crate::distributed::topology::{Role, TopologyKind};

/// The request name a controller's node answers latency probes on.
pub const PROBE: &str = "foundation.adaptive.probe";

/// The workload pattern, as the application reports it (see [`WorkloadHandle`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Workload {
    /// Share of messages that are broadcasts or publishes, in `[0, 1]`.
    pub broadcast_share: f64,
    /// Share of messages between a client and a server, in `[0, 1]`.
    pub client_server_share: f64,
}

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
    /// The epoch of the topology in force.
    pub epoch: u64,
    /// Median round trip measured to the node's neighbours (`None`: not measured yet).
    pub median_rtt: Option<Duration>,
    /// The workload the application reported.
    pub workload: Workload,
    /// Time since the controller started (the selector's clock).
    pub at: Duration,
}

/// Picks a topology for a cluster.
pub trait TopologySelector: Send {
    /// The topology wanted for `snapshot` (the current one to stay).
    fn select(&mut self, snapshot: &ClusterSnapshot) -> TopologyKind;

    /// Why the last [`select`](Self::select) wanted what it did (recorded with the
    /// switch).
    fn reason(&self) -> String {
        "selector".into()
    }
}

/// The overlay's smart selector
/// ([`Selector`]) as a
/// [`TopologySelector`]: its choices map to topology kinds (pub/sub is Plumtree over
/// HyParView, which is how a node broadcasts under HyParView). A topology it cannot
/// choose (`Static`, an application's own) is left alone.
#[derive(Debug, Clone)]
pub struct OverlaySelector {
    selector: Selector,
    hyparview: HyParViewConfig,
    servers_per_client: usize,
    reason: String,
}

impl OverlaySelector {
    /// A selector with `config`, the cluster being in `current` now. Fails (naming the
    /// threshold) on a bad config.
    pub fn new(config: SelectorConfig, current: TopologyKind) -> Result<Self, String> {
        let start = choice_of(current).unwrap_or(Choice::FullMesh);
        Ok(OverlaySelector {
            selector: Selector::new(config, start)?,
            hyparview: HyParViewConfig::default(),
            servers_per_client: 2,
            reason: String::new(),
        })
    }

    /// The HyParView parameters used when HyParView (or pub/sub) is chosen.
    pub fn hyparview(mut self, config: HyParViewConfig) -> Self {
        self.hyparview = config;
        self
    }

    /// Servers per client when client-server is chosen (default 2).
    pub fn servers_per_client(mut self, k: usize) -> Self {
        self.servers_per_client = k.max(1);
        self
    }

    /// The selector (its current choice and switch history).
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    fn kind_of(&self, c: Choice) -> TopologyKind {
        match c {
            Choice::FullMesh => TopologyKind::FullMesh,
            Choice::ClientServer => TopologyKind::ClientServer {
                servers_per_client: self.servers_per_client,
            },
            Choice::HyParView | Choice::PubSub => TopologyKind::HyParView(self.hyparview),
        }
    }
}

/// The selector's choice a topology kind stands for (`None`: not one it picks).
fn choice_of(kind: TopologyKind) -> Option<Choice> {
    match kind {
        TopologyKind::FullMesh => Some(Choice::FullMesh),
        TopologyKind::ClientServer { .. } => Some(Choice::ClientServer),
        TopologyKind::HyParView(_) => Some(Choice::HyParView),
        _ => None,
    }
}

impl TopologySelector for OverlaySelector {
    fn select(&mut self, s: &ClusterSnapshot) -> TopologyKind {
        let Some(in_force) = choice_of(s.current) else {
            self.reason = "topology not chosen by the selector: left alone".into();
            return s.current;
        };
        // The cluster switched for another reason (another controller, an operator):
        // the selector follows (it counts for its cooldown). Pub/sub runs as HyParView.
        let believed = match self.selector.current() {
            Choice::PubSub => Choice::HyParView,
            c => c,
        };
        if believed != in_force {
            self.selector.switched(
                s.at,
                in_force,
                format!("in force at the node (epoch {})", s.epoch),
            );
        }
        let obs = Observation {
            cluster_size: s.up,
            servers: s.servers,
            median_rtt: s.median_rtt.unwrap_or(Duration::ZERO),
            broadcast_share: s.workload.broadcast_share,
            client_server_share: s.workload.client_server_share,
        };
        match self.selector.evaluate(s.at, &obs) {
            Decision::Switch(r) => {
                self.reason = r.reason;
                self.kind_of(r.to)
            }
            d => {
                self.reason = format!("{d:?}");
                s.current
            }
        }
    }

    fn reason(&self) -> String {
        self.reason.clone()
    }
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

    fn reason(&self) -> String {
        format!(
            "size rule: full mesh up to {} live members (hysteresis {})",
            self.mesh_max, self.hysteresis
        )
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
    /// The epoch in force after the proposal (the cluster's, if `to` was in force
    /// already).
    pub epoch: u64,
    /// Why, as the selector gave it (or, for a switch followed, the proposer's reason).
    pub reason: String,
    /// Whether this controller proposed it (`false`: a switch agreed elsewhere — another
    /// node's controller, an operator — that it followed).
    pub proposed: bool,
}

/// Lets the application report its workload pattern to a running controller.
#[derive(Debug, Clone, Default)]
pub struct WorkloadHandle(Arc<Mutex<Workload>>);

impl WorkloadHandle {
    /// Reports the workload (shares are clamped to `[0, 1]`).
    pub fn set(&self, w: Workload) {
        *self.0.lock() = Workload {
            broadcast_share: w.broadcast_share.clamp(0.0, 1.0),
            client_server_share: w.client_server_share.clamp(0.0, 1.0),
        };
    }

    /// The workload last reported.
    pub fn get(&self) -> Workload {
        *self.0.lock()
    }
}

/// Drives a [`TopologySelector`] for a node.
pub struct AdaptiveTopology {
    node: Node,
    selector: Box<dyn TopologySelector>,
    current: TopologyKind,
    epoch_seen: u64,
    cooldown: Duration,
    last_switch: Option<Instant>,
    switches: Vec<Switch>,
    started: Instant,
    rtt: Option<Duration>,
    workload: WorkloadHandle,
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
        "Topology switches proposed by the adaptive topology controller."
    );
    metrics::describe_counter!(
        "foundation_topology_switch_refused_total",
        "Switches the controller wanted that the node refused (its switch cooldown)."
    );
    metrics::describe_gauge!(
        "foundation_topology_rtt_seconds",
        "Median round trip the adaptive controller measured to the node's neighbours."
    );
}

impl AdaptiveTopology {
    /// Watches `node`, whose topology is `current` now, switching at most once per
    /// `cooldown`. Registers the latency probe ([`PROBE`]) on the node.
    pub fn new(
        node: Node,
        current: TopologyKind,
        selector: Box<dyn TopologySelector>,
        cooldown: Duration,
    ) -> Self {
        node.serve(PROBE, |_from, _: ()| async {});
        AdaptiveTopology {
            epoch_seen: node.topology_state().epoch,
            node,
            selector,
            current,
            cooldown,
            last_switch: None,
            switches: Vec::new(),
            started: Instant::now(),
            rtt: None,
            workload: WorkloadHandle::default(),
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

    /// The handle the application reports its workload pattern through.
    pub fn workload(&self) -> WorkloadHandle {
        self.workload.clone()
    }

    /// The median round trip last measured ([`measure_latency`](Self::measure_latency)).
    pub fn median_rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Measures the round trip of a request to up to `peers` random neighbours (an
    /// answer of any kind counts: a peer without a controller answers "no server" after
    /// a full round trip), keeps the median for the next snapshots and returns it.
    /// Neighbours that do not answer within `timeout` are left out.
    pub async fn measure_latency(&mut self, peers: usize, timeout: Duration) -> Option<Duration> {
        let neighbours: Vec<String> = self.node.neighbours().into_iter().collect();
        let chosen: Vec<String> = neighbours
            .choose_multiple(&mut rand::rng(), peers.max(1))
            .cloned()
            .collect();
        let mut samples = Vec::new();
        for p in chosen {
            let start = Instant::now();
            let r: Result<(), _> = self.node.request(&p, PROBE, &(), timeout).await;
            match r {
                Ok(()) | Err(crate::distributed::Error::RemoteFailed { .. }) => {
                    samples.push(start.elapsed())
                }
                Err(_) => {}
            }
        }
        if samples.is_empty() {
            return self.rtt;
        }
        samples.sort();
        let m = samples[samples.len() / 2];
        metrics::gauge!("foundation_topology_rtt_seconds").set(m.as_secs_f64());
        self.rtt = Some(m);
        self.rtt
    }

    /// Takes a snapshot at `now`, asks the selector, and proposes a switch if it wants
    /// another topology and the cooldown has passed. Returns the switch made, if any:
    /// one this controller proposed, or one agreed elsewhere since the last evaluation
    /// that it now follows ([`Switch::proposed`] `false`; it counts for the cooldown).
    /// `None` too when the node refused the proposal (its own switch cooldown).
    pub fn evaluate(&mut self, now: Instant) -> Option<Switch> {
        let state = self.node.topology_state();
        let members = self.node.members();
        if state.epoch != self.epoch_seen {
            // A switch agreed since we last looked: follow it.
            self.epoch_seen = state.epoch;
            if state.kind != self.current {
                let reason = self
                    .node
                    .switch_history()
                    .into_iter()
                    .rev()
                    .find(|r| r.epoch == state.epoch)
                    .map_or_else(String::new, |r| r.reason);
                let s = Switch {
                    from: self.current,
                    to: state.kind,
                    up: members.iter().filter(|m| m.up).count(),
                    epoch: state.epoch,
                    reason,
                    proposed: false,
                };
                tracing::info!(node = %self.node.name(), from = ?s.from, to = ?s.to, epoch = s.epoch, proposer = %state.proposer, "adaptive topology: followed a switch agreed elsewhere");
                self.current = state.kind;
                self.last_switch = Some(now);
                self.switches.push(s.clone());
                return Some(s);
            }
        }
        let snapshot = ClusterSnapshot {
            members: members.len(),
            up: members.iter().filter(|m| m.up).count(),
            servers: members
                .iter()
                .filter(|m| m.up && m.role == Role::Server)
                .count(),
            current: self.current,
            epoch: state.epoch,
            median_rtt: self.rtt,
            workload: self.workload.get(),
            at: now.saturating_duration_since(self.started),
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
        let reason = self.selector.reason();
        let epoch = match self.node.switch_topology_because(want, &reason) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(node = %self.node.name(), error = %e, "adaptive topology: switch refused");
                metrics::counter!("foundation_topology_switch_refused_total").increment(1);
                return None;
            }
        };
        let s = Switch {
            from: self.current,
            to: want,
            up: snapshot.up,
            epoch,
            reason,
            proposed: true,
        };
        tracing::info!(node = %self.node.name(), from = ?s.from, to = ?s.to, up = s.up, epoch, reason = %s.reason, "adaptive topology: switched");
        metrics::counter!("foundation_topology_switches_total", "to" => kind_label(want))
            .increment(1);
        self.current = want;
        self.epoch_seen = epoch;
        self.last_switch = Some(now);
        self.switches.push(s.clone());
        Some(s)
    }

    /// Every `every` until `cancel` fires: measures the latency to up to 3 neighbours,
    /// then evaluates; the task returns the controller.
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
                let probe_timeout = every.max(Duration::from_millis(100));
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.measure_latency(3, probe_timeout) => {}
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
            epoch: 0,
            median_rtt: None,
            workload: Workload::default(),
            at: Duration::ZERO,
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

    fn snap(up: usize, current: TopologyKind, at_s: u64) -> ClusterSnapshot {
        ClusterSnapshot {
            members: up,
            up,
            servers: 0,
            current,
            epoch: 0,
            median_rtt: Some(Duration::from_millis(1)),
            workload: Workload::default(),
            at: Duration::from_secs(at_s),
        }
    }

    fn overlay(cooldown_s: u64) -> OverlaySelector {
        OverlaySelector::new(
            SelectorConfig {
                full_mesh_max: 32,
                hysteresis: 0.25,
                confirmations: 2,
                cooldown: Duration::from_secs(cooldown_s),
                ..SelectorConfig::default()
            },
            TopologyKind::FullMesh,
        )
        .unwrap()
    }

    #[test]
    fn overlay_selector_leaves_the_mesh_above_the_band_after_confirmations() {
        let hv = TopologyKind::hyparview();
        let mut s = overlay(0);
        // Inside the band (32 × 1.25 = 40): stays, however often asked.
        for (t, size) in [33, 38, 40, 39, 40].into_iter().enumerate() {
            assert_eq!(
                s.select(&snap(size, TopologyKind::FullMesh, t as u64)),
                TopologyKind::FullMesh
            );
        }
        // 41 once: pending; 39 resets the confirmation count; 41 twice in a row: switch.
        assert_eq!(
            s.select(&snap(41, TopologyKind::FullMesh, 10)),
            TopologyKind::FullMesh
        );
        assert_eq!(
            s.select(&snap(39, TopologyKind::FullMesh, 11)),
            TopologyKind::FullMesh
        );
        assert_eq!(
            s.select(&snap(41, TopologyKind::FullMesh, 12)),
            TopologyKind::FullMesh
        );
        assert_eq!(s.select(&snap(41, TopologyKind::FullMesh, 13)), hv);
        assert!(s.reason().contains("41 members"), "{}", s.reason());
        // Back down: HyParView kept down to 24 (32 × 0.75); 24 twice goes back.
        for (t, size) in [30, 26, 25, 30].into_iter().enumerate() {
            assert_eq!(s.select(&snap(size, hv, 20 + t as u64)), hv);
        }
        assert_eq!(s.select(&snap(24, hv, 30)), hv);
        assert_eq!(s.select(&snap(24, hv, 31)), TopologyKind::FullMesh);
        assert_eq!(s.selector().history().count(), 2);
    }

    #[test]
    fn overlay_selector_does_not_flap_at_the_boundary() {
        let mut s = overlay(0);
        let mut current = TopologyKind::FullMesh;
        let mut switches = 0;
        // A cluster oscillating 30 <-> 42 every evaluation: never two wins in a row.
        for t in 0..200u64 {
            let size = if t % 2 == 0 { 30 } else { 42 };
            let want = s.select(&snap(size, current, t));
            if want != current {
                switches += 1;
                current = want;
            }
        }
        assert_eq!(switches, 0);
    }

    #[test]
    fn overlay_selector_cooldown_and_following_a_switch_made_elsewhere() {
        let hv = TopologyKind::hyparview();
        let mut s = overlay(60);
        // Another node switched the cluster to HyParView at t = 5 s: the selector follows
        // and its cooldown starts then.
        assert_eq!(s.select(&snap(10, hv, 5)), hv, "cooling down");
        assert_eq!(s.select(&snap(10, hv, 6)), hv, "cooling down");
        assert_eq!(s.selector().current(), Choice::HyParView);
        assert_eq!(s.select(&snap(10, hv, 66)), TopologyKind::FullMesh);
        // Pub/sub for event-driven traffic maps to HyParView (Plumtree over it).
        let mut s = overlay(0);
        let events = ClusterSnapshot {
            workload: Workload {
                broadcast_share: 0.9,
                client_server_share: 0.0,
            },
            ..snap(100, TopologyKind::FullMesh, 0)
        };
        assert_eq!(s.select(&events), TopologyKind::FullMesh);
        assert_eq!(
            s.select(&ClusterSnapshot {
                at: Duration::from_secs(1),
                ..events
            }),
            hv
        );
        assert_eq!(s.selector().current(), Choice::PubSub);
        // Static is not the selector's to change.
        let mut s = overlay(0);
        for t in 0..5 {
            assert_eq!(
                s.select(&snap(100, TopologyKind::Static, t)),
                TopologyKind::Static
            );
        }
    }
}
