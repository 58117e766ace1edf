//! The local demo behind `foundation demo`: a real cluster on loopback and a mixed
//! workload, measured.
//!
//! [`run`] starts `nodes` nodes in this process, each a real [`Node`] on TCP loopback
//! (secret mode: authenticated and encrypted with a freshly generated cluster secret), joined through the first one,
//! each hosting a supervised [`Ecosystem`]. For `duration` it runs, at the same time:
//!
//! * **urgent coordination**: small urgent messages between every pair of nodes
//!   (`coordination` channel) and request/reply calls served by the ecosystems;
//! * **bulk transfers**: 64 KiB messages to the next node (`bulk_data`);
//! * **gossip**: background messages to every peer (`gossip`) and broadcasts along the
//!   topology's tree;
//! * **crashes**: a worker of a random ecosystem is made to panic every 1.5 s; its
//!   supervisor restarts it;
//! * **a hypothesis** ("4 workers cut job latency by half"): measured on an ecosystem of
//!   node `n0`, committed or reverted by Welch's test;
//! * **two rollouts**: `inline-requests` (requests served without the ecosystem hop), and
//!   `faulty-codec`, a feature built to fail 20 % of its calls, which must be rolled back;
//! * **predictive scaling**: a load ramping from 100 to 1000 jobs/s offered to an
//!   ecosystem, resized ahead of the ramp when the forecast is confident (≥ 0.85);
//! * **adaptive topology** on every node (the overlay's smart selector; a switch is agreed
//!   by the whole cluster).
//!
//! One-way latencies are measured from send to receipt (one process, one clock) into
//! HDR histograms per channel; request/reply latencies are round trips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adaptive_topology::{kind_label, AdaptiveTopology, OverlaySelector};
use crate::beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use crate::beam::supervisor::Intensity;
use crate::beam::{Context, Process, Reply};
use crate::core::telemetry::ShardedRecorder;
use crate::distributed::channel::Urgency;
use crate::distributed::node::{Node, NodeSettings, SendOptions};
use crate::distributed::topology::{Role, TopologyKind};
use crate::distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use crate::http::{Endpoints, HttpServer};
use crate::hypothesis::{
    Decision, FnIntervention, Goal, HypothesisEngine, HypothesisSpec, Verdict,
};
use crate::predictive::{Action, PredictiveScaler, ScalingPolicy};
use crate::rollout::{CheckAction, Rollout, RolloutSettings, RolloutState};

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Nodes, 2..=32. Default 3.
    pub nodes: usize,
    /// How long the workload runs. Default 20 s.
    pub duration: Duration,
    /// Initial topology. Default full mesh.
    pub topology: TopologyKind,
    /// Address of the HTTP endpoint. Default `127.0.0.1:0` (any free port).
    pub metrics: SocketAddr,
    /// Show a live progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl DemoOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), DemoError> {
        if !(2..=32).contains(&self.nodes) {
            return Err(DemoError::Options(format!(
                "--nodes {} is outside 2..=32",
                self.nodes
            )));
        }
        if self.topology == TopologyKind::Static {
            return Err(DemoError::Options(
                "--topology static needs configured neighbours; the demo runs full-mesh or client-server".into(),
            ));
        }
        if self.duration < Duration::from_secs(2) {
            return Err(DemoError::Options(
                "--duration must be at least 2s (the hypothesis and rollouts need time)".into(),
            ));
        }
        Ok(())
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 3,
            duration: Duration::from_secs(20),
            topology: TopologyKind::FullMesh,
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            progress: true,
        }
    }
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// A node or the server could not start.
    #[error("starting the demo cluster failed: {0}")]
    Start(String),
}

/// Latency and volume of one kind of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    /// What was measured.
    pub name: String,
    /// Messages delivered (or calls answered).
    pub delivered: u64,
    /// Sends or calls that failed (each also counted in the node's metrics).
    pub failed: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Whether latency is a round trip (else one way).
    pub round_trip: bool,
    /// Failures by reason, where the reason is known.
    pub failure_reasons: Vec<(String, u64)>,
}

/// A rollout's course.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSummary {
    /// Name.
    pub name: String,
    /// Final state.
    pub state: RolloutState,
    /// Percentages it went through.
    pub steps: Vec<f64>,
}

/// One predictive scaling action of the demo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingStep {
    /// Load measured when deciding, jobs/s.
    pub load: f64,
    /// Workers before.
    pub from: usize,
    /// Workers after.
    pub to: usize,
    /// The decision's confidence.
    pub confidence: f64,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Nodes.
    pub nodes: usize,
    /// Time the workload ran.
    pub elapsed: Duration,
    /// Per kind of traffic.
    pub channels: Vec<ChannelStats>,
    /// Topology at the end (of node n0).
    pub topology: TopologyKind,
    /// Topology switches over all nodes.
    pub switches: usize,
    /// Members up as seen by each node at the end.
    pub members_up: Vec<usize>,
    /// Crashes injected.
    pub crashes_injected: u64,
    /// Restarts over all ecosystems.
    pub restarts: u64,
    /// Ecosystems whose coordinator stopped (restart intensity exceeded), with why.
    pub ecosystems_down: Vec<String>,
    /// The hypothesis' verdict, if it finished in time.
    pub hypothesis: Option<Verdict>,
    /// The rollouts.
    pub rollouts: Vec<RolloutSummary>,
    /// Predictive scaling actions on the ramping load.
    pub scaling: Vec<ScalingStep>,
    /// Offered load at the start and at the end of the ramp, jobs/s.
    pub ramp: (f64, f64),
}

#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    sent_ns: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Bulk {
    sent_ns: u64,
    #[serde(with = "serde_bytes_vec")]
    data: Vec<u8>,
}

/// Bytes as a MessagePack bin, not an array of integers.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

const BULK_SIZE: usize = 64 * 1024;
const CRASH: &str = "injected crash (foundation demo)";

enum Job {
    Work {
        cost: Duration,
        reply: Reply<()>,
    },
    /// Fire-and-forget work (the predictive-scaling load).
    Tick,
    Crash,
}

struct Worker;

impl Process for Worker {
    type Message = Job;
    async fn handle(&mut self, job: Job, _: &mut Context<Job>) {
        match job {
            Job::Work { cost, reply } => {
                if !cost.is_zero() {
                    tokio::time::sleep(cost).await;
                }
                reply.send(());
            }
            Job::Tick => {}
            Job::Crash => std::panic::panic_any(CRASH),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// An HDR histogram of microseconds with counters.
struct Meter {
    name: &'static str,
    hist: Mutex<Histogram<u64>>,
    failed: AtomicU64,
    reasons: Mutex<BTreeMap<String, u64>>,
    bytes: AtomicU64,
    round_trip: bool,
}

impl Meter {
    fn new(name: &'static str, round_trip: bool) -> Arc<Meter> {
        Arc::new(Meter {
            name,
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            failed: AtomicU64::new(0),
            reasons: Mutex::new(BTreeMap::new()),
            bytes: AtomicU64::new(0),
            round_trip,
        })
    }

    fn record_us(&self, us: u64, bytes: usize) {
        self.hist.lock().saturating_record(us.max(1));
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn record_since(&self, sent_ns: u64, bytes: usize) {
        self.record_us(now_ns().saturating_sub(sent_ns) / 1000, bytes);
    }

    fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure under its reason (shown in the summary).
    fn fail_because(&self, reason: &str) {
        self.fail();
        let reason: String = reason.chars().take(90).collect();
        *self.reasons.lock().entry(reason).or_insert(0) += 1;
    }

    fn count(&self) -> u64 {
        self.hist.lock().len()
    }

    fn stats(&self) -> ChannelStats {
        let h = self.hist.lock();
        ChannelStats {
            name: self.name.to_string(),
            delivered: h.len(),
            failed: self.failed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            round_trip: self.round_trip,
            failure_reasons: self
                .reasons
                .lock()
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
        }
    }
}

struct Meters {
    urgent: Arc<Meter>,
    request: Arc<Meter>,
    bulk: Arc<Meter>,
    gossip: Arc<Meter>,
    broadcast: Arc<Meter>,
}

/// Silences the panics the demo injects on purpose (they are counted as restarts); other
/// panics still reach the previous hook.
fn install_quiet_crash_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() == Some(&CRASH) {
                return;
            }
            previous(info);
        }));
    });
}

struct DemoNode {
    node: Node,
    eco: Arc<Ecosystem<Worker>>,
}

async fn start_node(
    i: usize,
    nodes: usize,
    secret: &ClusterSecret,
    topology: TopologyKind,
) -> Result<DemoNode, DemoError> {
    // Client-server needs servers: n0 (and n1 from four nodes on); the rest are clients.
    let role = match topology {
        TopologyKind::ClientServer { .. } if i == 0 || (i == 1 && nodes >= 4) => Role::Server,
        TopologyKind::ClientServer { .. } => Role::Client,
        _ => Role::Peer,
    };
    let name = format!("n{i}");
    let settings = TransportSettings {
        cluster: "foundation-demo".into(),
        node: name.clone(),
        security: Security::Secret(secret.clone()),
        ..TransportSettings::default()
    };
    let transport: Arc<dyn Transport> =
        Arc::new(TcpTransport::new(settings).map_err(|e| DemoError::Start(e.to_string()))?);
    let node = Node::start(
        transport,
        &name,
        NodeSettings {
            listen: "127.0.0.1:0".into(),
            topology,
            role,
            ..NodeSettings::default()
        },
    )
    .await
    .map_err(|e| DemoError::Start(format!("node {name}: {e}")))?;
    // Crashes come every 1.5 s, so up to 4 can hit one ecosystem within 5 s: more than
    // the default intensity (3 in 5 s) allows, after which its coordinator would give up
    // and the ecosystem stay down. Allow what the demo injects.
    let spec = EcosystemSpec::new(format!("work.{name}"))
        .workers(Workers::Fixed(2))
        .intensity(Intensity {
            max_restarts: 10,
            period: Duration::from_secs(5),
        });
    let eco = Arc::new(
        Ecosystem::start(spec, |_| Worker)
            .await
            .map_err(|e| DemoError::Start(format!("ecosystem on {name}: {e}")))?,
    );
    Ok(DemoNode { node, eco })
}

/// Runs the demo until `duration` passes or `cancel` fires; returns what it measured.
/// `recorder` is served at `options.metrics` while it runs, with the observer's page at
/// `/` and its views under `/api/` ([`crate::observer`]); `on_listening` is called with
/// the bound address once the endpoint is up.
pub async fn run(
    options: DemoOptions,
    recorder: Arc<ShardedRecorder>,
    cancel: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<DemoSummary, DemoError> {
    options.validate()?;
    install_quiet_crash_hook();
    let _ = epoch();
    let secret = ClusterSecret::generate();

    let mut nodes = Vec::with_capacity(options.nodes);
    for i in 0..options.nodes {
        nodes.push(start_node(i, options.nodes, &secret, options.topology).await?);
    }
    let seed = nodes[0].node.addr().to_string();
    for n in &nodes[1..] {
        n.node
            .join(&[seed.as_str()])
            .await
            .map_err(|e| DemoError::Start(format!("{} joining {seed}: {e}", n.node.name())))?;
    }
    // Wait (bounded) for every node to see every other.
    let want = options.nodes;
    let converge = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if nodes
                .iter()
                .all(|n| n.node.members().iter().filter(|m| m.up).count() == want)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if converge.is_err() {
        tracing::warn!("demo: membership had not converged after 10 s; running anyway");
    }

    let ready = Arc::new(AtomicBool::new(true));
    let names: Vec<String> = nodes.iter().map(|n| n.node.name().to_string()).collect();
    let health_nodes: Vec<Node> = nodes.iter().map(|n| n.node.clone()).collect();
    // Rollouts, checked by their monitors.
    let check = (options.duration / 6).max(Duration::from_millis(500));
    let inline = Rollout::new(
        "inline-requests",
        RolloutSettings {
            initial_percent: 10.0,
            check_interval: check,
            min_samples: 20,
            ..RolloutSettings::default()
        },
    )
    .expect("valid rollout settings");
    let faulty = Rollout::new(
        "faulty-codec",
        RolloutSettings {
            initial_percent: 10.0,
            check_interval: check,
            min_samples: 20,
            ..RolloutSettings::default()
        },
    )
    .expect("valid rollout settings");
    let hypotheses = Arc::new(HypothesisEngine::new());
    // The observer: every node answers `observer.snapshot`; n0's HTTP server shows them all.
    // n0's timeline also shows the rollouts' steps and the hypothesis' verdict (both run
    // on n0); the scaler's decisions go on the last node's.
    let topology_label = crate::adaptive_topology::kind_label(options.topology);
    let mut observers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut o = crate::observer::Observer::new(n.node.clone(), topology_label)
            .recorder(recorder.clone())
            .ecosystem(n.eco.clone());
        if i == 0 {
            o = o
                .rollout(inline.clone())
                .rollout(faulty.clone())
                .hypotheses(hypotheses.clone());
        }
        o.serve();
        observers.push(o);
    }
    let observer = observers.first().cloned();
    let mut endpoints = Endpoints::new(recorder, ready.clone()).health(move || {
        let members: BTreeMap<String, usize> = health_nodes
            .iter()
            .map(|n| {
                (
                    n.name().to_string(),
                    n.members().iter().filter(|m| m.up).count(),
                )
            })
            .collect();
        serde_json::json!({ "status": "ok", "demo": true, "members_up": members })
    });
    if let Some(o) = observer {
        endpoints = endpoints.observer(o);
    }
    let http = HttpServer::start(options.metrics, endpoints)
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?;
    on_listening(http.local_addr());

    let meters = Arc::new(Meters {
        urgent: Meter::new("coordination: urgent messages", false),
        request: Meter::new("coordination: request/reply", true),
        bulk: Meter::new("bulk_data: 64 KiB transfers", false),
        gossip: Meter::new("gossip: background fan-out", false),
        broadcast: Meter::new("broadcast (topology tree)", false),
    });
    let stop = cancel.child_token();
    let mut tasks = JoinSet::new();

    // Receivers and servers on every node.
    for n in &nodes {
        for (name, meter) in [
            ("urgent", meters.urgent.clone()),
            ("gossip", meters.gossip.clone()),
            ("broadcast", meters.broadcast.clone()),
        ] {
            let mut rx = n.node.register::<Stamp>(name);
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = rx.recv() => match m {
                            Some((_, s)) => meter.record_since(s.sent_ns, 8),
                            None => break,
                        },
                    }
                }
            });
        }
        let mut rx = n.node.register::<Bulk>("bulk");
        let (stop2, meter) = (stop.clone(), meters.bulk.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => break,
                    m = rx.recv() => match m {
                        Some((_, b)) => meter.record_since(b.sent_ns, b.data.len()),
                        None => break,
                    },
                }
            }
        });
        let eco = n.eco.clone();
        n.node.serve("work", move |_from, cost_us: u64| {
            let eco = eco.clone();
            async move {
                eco.call(
                    |reply| Job::Work {
                        cost: Duration::from_micros(cost_us),
                        reply,
                    },
                    Duration::from_secs(2),
                )
                .await
                .map_err(|e| e.to_string())
            }
        });
        n.node
            .serve("work-inline", move |_from, _cost_us: u64| async move {
                Ok::<(), String>(())
            });
    }

    tasks.spawn({
        let m = inline.spawn_monitor(stop.clone());
        async move {
            let _ = m.await;
        }
    });
    tasks.spawn({
        let m = faulty.spawn_monitor(stop.clone());
        async move {
            let _ = m.await;
        }
    });

    // Workload generators.
    let all: Vec<Node> = nodes.iter().map(|n| n.node.clone()).collect();
    for (i, n) in nodes.iter().enumerate() {
        let peers: Vec<String> = names.iter().filter(|p| **p != names[i]).cloned().collect();
        // Urgent coordination messages.
        {
            let (node, peers, stop, m) = (
                n.node.clone(),
                peers.clone(),
                stop.clone(),
                meters.urgent.clone(),
            );
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let opts = SendOptions {
                    urgency: Urgency::Urgent,
                    key: None,
                };
                loop {
                    tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                    for p in &peers {
                        if let Err(e) = node
                            .send(p, "urgent", &Stamp { sent_ns: now_ns() }, opts)
                            .await
                        {
                            m.fail_because(&e.to_string());
                        }
                    }
                }
            });
        }
        // Request/reply through the rollouts.
        {
            let (node, peers, stop, m) = (
                n.node.clone(),
                peers.clone(),
                stop.clone(),
                meters.request.clone(),
            );
            let (inline, faulty) = (inline.clone(), faulty.clone());
            let seed = i as u64;
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut seq = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                    seq += 1;
                    let key = format!("{seed}-{seq}");
                    let peer = &peers[rng.random_range(0..peers.len())];
                    let treated = inline.is_enabled(key.as_bytes());
                    let service = if treated { "work-inline" } else { "work" };
                    let start = Instant::now();
                    let r: Result<Result<(), String>, _> = node
                        .request(peer, service, &200u64, Duration::from_secs(2))
                        .await;
                    let took = start.elapsed();
                    let ok = matches!(r, Ok(Ok(())));
                    match &r {
                        Ok(Ok(())) => m.record_us(took.as_micros() as u64, 8),
                        Ok(Err(e)) => m.fail_because(&format!("serving ecosystem: {e}")),
                        Err(e) => m.fail_because(&e.to_string()),
                    }
                    inline.record(treated, took, ok);
                    // The faulty feature: same call, but its new code path fails 20 % of
                    // the time (by design, to show a rollback).
                    let f_treated = faulty.is_enabled(key.as_bytes());
                    let f_ok = ok && !(f_treated && rng.random::<f64>() < 0.2);
                    faulty.record(f_treated, took, f_ok);
                }
            });
        }
        // Bulk transfers to the next node.
        {
            let next = names[(i + 1) % names.len()].clone();
            let (node, stop, m) = (n.node.clone(), stop.clone(), meters.bulk.clone());
            tasks.spawn(async move {
                let data = vec![0xA5u8; BULK_SIZE];
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                loop {
                    tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                    let msg = Bulk {
                        sent_ns: now_ns(),
                        data: data.clone(),
                    };
                    if let Err(e) = node.send(&next, "bulk", &msg, SendOptions::default()).await {
                        m.fail_because(&e.to_string());
                    }
                }
            });
        }
        // Gossip fan-out.
        {
            let (node, peers, stop, m) =
                (n.node.clone(), peers, stop.clone(), meters.gossip.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let opts = SendOptions {
                    urgency: Urgency::Background,
                    key: None,
                };
                loop {
                    tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                    for p in &peers {
                        if let Err(e) = node
                            .send(p, "gossip", &Stamp { sent_ns: now_ns() }, opts)
                            .await
                        {
                            m.fail_because(&e.to_string());
                        }
                    }
                }
            });
        }
    }
    // Broadcasts from n0.
    {
        let (node, stop, m) = (
            nodes[0].node.clone(),
            stop.clone(),
            meters.broadcast.clone(),
        );
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                if let Err(e) = node
                    .broadcast("broadcast", &Stamp { sent_ns: now_ns() })
                    .await
                {
                    m.fail_because(&e.to_string());
                }
            }
        });
    }
    // Crash injection.
    let crashes = Arc::new(AtomicU64::new(0));
    {
        let ecos: Vec<_> = nodes.iter().map(|n| n.eco.clone()).collect();
        let (stop, crashes) = (stop.clone(), crashes.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut tick = tokio::time::interval(Duration::from_millis(1500));
            tick.tick().await;
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                let eco = &ecos[rng.random_range(0..ecos.len())];
                if eco.send(Job::Crash).await.is_ok() {
                    crashes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Adaptive topology on every node, when the user left the choice to it (full mesh,
    // the default): a topology asked for on the command line is kept.
    let mut adaptive = Vec::new();
    let adapt = options.topology == TopologyKind::FullMesh;
    for node in all.iter().filter(|_| adapt) {
        // The overlay's smart selector (size, measured latency, workload; hysteresis);
        // a switch it asks for is agreed by the whole cluster.
        let selector = OverlaySelector::new(
            crate::distributed::overlay::selector::SelectorConfig::default(),
            options.topology,
        )
        .map_err(DemoError::Start)?;
        let a = AdaptiveTopology::new(
            node.clone(),
            options.topology,
            Box::new(selector),
            Duration::from_secs(5),
        );
        adaptive.push(a.spawn(Duration::from_secs(1), stop.clone()));
    }

    // The hypothesis: a dedicated ecosystem on n0 under a steady load of 4 concurrent
    // callers, each job taking 2 ms of (async) work.
    let hyp_eco = Arc::new(
        Ecosystem::start(
            EcosystemSpec::new("hypothesis.n0").workers(Workers::Fixed(1)),
            |_| Worker,
        )
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?,
    );
    let window = Arc::new(Mutex::new((0.0f64, 0u64)));
    for _ in 0..4 {
        let (eco, stop, window) = (hyp_eco.clone(), stop.clone(), window.clone());
        tasks.spawn(async move {
            loop {
                let start = Instant::now();
                let call = eco.call(
                    |reply| Job::Work {
                        cost: Duration::from_millis(2),
                        reply,
                    },
                    Duration::from_secs(2),
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = call => if r.is_ok() {
                        let mut w = window.lock();
                        w.0 += start.elapsed().as_secs_f64() * 1000.0;
                        w.1 += 1;
                    },
                }
            }
        });
    }
    let hypothesis_done: Arc<Mutex<Option<Verdict>>> = Arc::new(Mutex::new(None));
    let hypothesis_phase = Arc::new(AtomicU64::new(0));
    {
        let interval = (options.duration / 40).max(Duration::from_millis(100));
        let spec = HypothesisSpec::new(
            "four-workers-halve-job-latency",
            "job_latency_ms",
            Goal::Decrease,
            0.5,
        )
        .samples(10, 10)
        .interval(interval);
        let (eco_a, eco_r) = (hyp_eco.clone(), hyp_eco.clone());
        let (phase_a, phase_r) = (hypothesis_phase.clone(), hypothesis_phase.clone());
        let (stop, done, window) = (stop.clone(), hypothesis_done.clone(), window.clone());
        let engine = hypotheses.clone();
        tasks.spawn(async move {
            hypothesis_phase_set(&phase_a, 1);
            let mut probe = move || {
                let mut w = window.lock();
                let r = (w.1 > 0).then(|| w.0 / w.1 as f64);
                *w = (0.0, 0);
                r
            };
            let mut change = FnIntervention::new(
                move || {
                    let (eco, phase) = (eco_a.clone(), phase_a.clone());
                    async move {
                        phase.store(2, Ordering::Relaxed);
                        eco.resize(4).await.map_err(|e| e.to_string())
                    }
                },
                move || {
                    let (eco, _phase) = (eco_r.clone(), phase_r.clone());
                    async move { eco.resize(1).await.map_err(|e| e.to_string()) }
                },
            );
            if let Ok(v) = engine
                .run_cancellable(&spec, &mut probe, &mut change, &stop)
                .await
            {
                *done.lock() = Some(v);
            }
        });
    }

    // Predictive scaling: a load ramping from 100 to 1000 jobs/s over the run, offered
    // to an ecosystem on the last node whose workers each plan for 200 jobs/s.
    let scaled = Arc::new(
        Ecosystem::start(
            EcosystemSpec::new(format!("scaled.{}", names[names.len() - 1]))
                .workers(Workers::Fixed(1)),
            |_| Worker,
        )
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?,
    );
    let scaling: Arc<Mutex<Vec<ScalingStep>>> = Arc::new(Mutex::new(Vec::new()));
    let ramp = (100.0, 1000.0);
    {
        let (eco, stop, scaling) = (scaled.clone(), stop.clone(), scaling.clone());
        let total = options.duration.as_secs_f64();
        let timeline = observers.last().cloned();
        tasks.spawn(async move {
            let policy = ScalingPolicy {
                capacity_per_unit: 200.0,
                target_utilization: 1.0,
                min_units: 1,
                max_units: 16,
                horizon: 8,
                confidence: 0.85,
                cooldown: Duration::from_secs(1),
                scale_down_cooldown: Duration::from_secs(5),
                min_history: 8,
                ..ScalingPolicy::default()
            };
            let Ok(mut scaler) = PredictiveScaler::new("demo-ramp", eco.clone(), policy) else {
                return;
            };
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut owed = 0.0f64;
            let mut sent = 0u64;
            let mut window_start = Instant::now();
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                let t = (start.elapsed().as_secs_f64() / total).min(1.0);
                let rate = ramp.0 + (ramp.1 - ramp.0) * t;
                owed += rate * 0.01;
                while owed >= 1.0 {
                    owed -= 1.0;
                    if eco.send(Job::Tick).await.is_ok() {
                        sent += 1;
                    }
                }
                if window_start.elapsed() >= Duration::from_millis(250) {
                    let load = sent as f64 / window_start.elapsed().as_secs_f64();
                    sent = 0;
                    window_start = Instant::now();
                    if let Ok(d) = scaler.observe(load, tokio::time::Instant::now()).await {
                        if let Action::ScaleUp { from, to } | Action::ScaleDown { from, to } =
                            d.action
                        {
                            if let Some(o) = &timeline {
                                o.record(
                                    crate::observer::live::EventKind::Decision,
                                    eco.spec().name.as_str(),
                                    format!(
                                        "predictive scaling: {from} -> {to} workers (load {load:.0}/s)"
                                    ),
                                );
                            }
                            scaling.lock().push(ScalingStep {
                                load,
                                from,
                                to,
                                confidence: d.confidence_up.max(d.confidence_down),
                            });
                        }
                    }
                }
            }
        });
    }

    // Live progress.
    let started = Instant::now();
    let bar = if options.progress {
        let bar = indicatif::ProgressBar::new(options.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let deadline = tokio::time::Instant::now() + options.duration;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let msgs = meters.urgent.count()
            + meters.request.count()
            + meters.bulk.count()
            + meters.gossip.count()
            + meters.broadcast.count();
        let restarts: u64 = nodes.iter().map(|n| n.eco.info().restarts).sum();
        let hyp = match (
            &*hypothesis_done.lock(),
            hypothesis_phase.load(Ordering::Relaxed),
        ) {
            (Some(v), _) => v.decision.label().to_string(),
            (None, 2) => "treatment".into(),
            (None, _) => "baseline".into(),
        };
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "msgs {msgs} | restarts {restarts} | hypothesis {hyp} | rollouts {:.0}% / {:.0}%",
            inline.percent(),
            faulty.percent()
        ));
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    // Stop: workload first, then the servers, ecosystems and nodes, each with a deadline.
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
    let mut switches = 0;
    let mut topology = options.topology;
    for (i, a) in adaptive.into_iter().enumerate() {
        if let Ok(a) = a.await {
            switches += a.switches().iter().filter(|s| s.proposed).count();
            if i == 0 {
                topology = a.current();
            }
        }
    }
    let members_up: Vec<usize> = nodes
        .iter()
        .map(|n| n.node.members().iter().filter(|m| m.up).count())
        .collect();
    // A crash sent just before the stop may still be in a mailbox: give the supervisors
    // a moment (bounded) to handle it, so the counts compare like with like.
    let injected = crashes.load(Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while nodes.iter().map(|n| n.eco.info().restarts).sum::<u64>() < injected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let restarts: u64 = nodes.iter().map(|n| n.eco.info().restarts).sum();
    let ecosystems_down = nodes
        .iter()
        .filter_map(|n| Some(format!("{}: {}", n.eco.spec().name, n.eco.down()?)))
        .collect();
    let rollouts = [&inline, &faulty]
        .iter()
        .map(|r| {
            let mut steps = vec![10.0];
            for c in r.history() {
                match (c.action, &c.state) {
                    (CheckAction::Widened, RolloutState::Active { percent }) => {
                        steps.push(*percent)
                    }
                    (CheckAction::Completed, _) => steps.push(100.0),
                    (CheckAction::RolledBack, _) => steps.push(0.0),
                    _ => {}
                }
            }
            RolloutSummary {
                name: r.name().to_string(),
                state: r.state(),
                steps,
            }
        })
        .collect();
    ready.store(false, Ordering::Release);
    for o in &observers {
        o.shutdown(Duration::from_secs(1)).await;
    }
    http.shutdown().await;
    hyp_eco.shutdown(Duration::from_secs(2)).await;
    scaled.shutdown(Duration::from_secs(2)).await;
    for n in &nodes {
        n.eco.shutdown(Duration::from_secs(2)).await;
    }
    for n in &nodes {
        let _ = tokio::time::timeout(Duration::from_secs(5), n.node.shutdown()).await;
    }
    let hypothesis = *hypothesis_done.lock();
    let scaling = scaling.lock().clone();
    Ok(DemoSummary {
        nodes: options.nodes,
        elapsed,
        channels: [
            &meters.urgent,
            &meters.request,
            &meters.bulk,
            &meters.gossip,
            &meters.broadcast,
        ]
        .iter()
        .map(|m| m.stats())
        .collect(),
        topology,
        switches,
        members_up,
        crashes_injected: crashes.load(Ordering::Relaxed),
        restarts,
        ecosystems_down,
        hypothesis,
        rollouts,
        scaling,
        ramp,
    })
}

fn hypothesis_phase_set(p: &AtomicU64, v: u64) {
    p.store(v, Ordering::Relaxed);
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "Foundation demo: {} nodes on loopback, {:.1} s of mixed workload",
            self.nodes, secs
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<32} {:>9} {:>9} {:>10} {:>10} {:>10} {:>7}",
            "traffic", "delivered", "msg/s", "MB/s", "p50", "p99", "failed"
        )?;
        writeln!(f, "{}", "-".repeat(93))?;
        for c in &self.channels {
            writeln!(
                f,
                "{:<32} {:>9} {:>9.0} {:>10.2} {:>10} {:>10} {:>7}",
                c.name,
                c.delivered,
                c.delivered as f64 / secs,
                c.bytes as f64 / secs / 1e6,
                fmt_us(c.p50_us),
                fmt_us(c.p99_us),
                c.failed
            )?;
        }
        writeln!(
            f,
            "(latency: one way from send to delivery; request/reply: round trip)"
        )?;
        for c in &self.channels {
            for (reason, n) in &c.failure_reasons {
                writeln!(f, "  {} failed {n}×: {reason}", c.name)?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "topology      {} at the end, {} switch(es); members up per node: {:?}",
            kind_label(self.topology),
            self.switches,
            self.members_up
        )?;
        writeln!(
            f,
            "supervision   {} crash(es) injected, {} restart(s)",
            self.crashes_injected, self.restarts
        )?;
        for down in &self.ecosystems_down {
            writeln!(f, "  ecosystem down (its coordinator gave up): {down}")?;
        }
        match &self.hypothesis {
            Some(v) => writeln!(
                f,
                "hypothesis    \"four workers halve job latency\": {} — baseline {:.2} ms, treatment {:.2} ms, improvement {:.0}% (expected 50%), p = {:.2e}",
                match v.decision {
                    Decision::Commit => "COMMITTED",
                    Decision::RevertNoImprovement => "REVERTED (no significant improvement)",
                    Decision::RevertDegraded => "REVERTED (degradation)",
                },
                v.baseline_mean,
                v.treatment_mean,
                v.improvement * 100.0,
                v.p_better
            )?,
            None => writeln!(f, "hypothesis    not decided before the end (run longer: --duration)")?,
        }
        if self.scaling.is_empty() {
            writeln!(
                f,
                "predictive    load ramp {:.0} → {:.0} jobs/s: no action reached confidence 0.85",
                self.ramp.0, self.ramp.1
            )?;
        } else {
            let steps: Vec<String> = self
                .scaling
                .iter()
                .map(|s| {
                    format!(
                        "{}→{} at {:.0}/s (p={:.2})",
                        s.from, s.to, s.load, s.confidence
                    )
                })
                .collect();
            writeln!(
                f,
                "predictive    load ramp {:.0} → {:.0} jobs/s, 200/s per worker: {}",
                self.ramp.0,
                self.ramp.1,
                steps.join(", ")
            )?;
        }
        for r in &self.rollouts {
            let steps: Vec<String> = r.steps.iter().map(|p| format!("{p:.0}%")).collect();
            let state = match &r.state {
                RolloutState::Active { percent } => format!("active at {percent:.0}%"),
                RolloutState::Complete => "COMPLETE".into(),
                RolloutState::RolledBack { reason } => format!("ROLLED BACK ({reason})"),
            };
            writeln!(
                f,
                "rollout       {:<16} {} — {}",
                r.name,
                steps.join(" → "),
                state
            )?;
        }
        Ok(())
    }
}
