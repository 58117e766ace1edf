//! The observer: a read-only, live view of a node and its cluster over the node's HTTP
//! server.
//!
//! Views are computed when asked; the only background work is the sampler of [`live`],
//! which runs while somebody looks (a request within the last [`live::LEASE`]) and stops
//! otherwise:
//!
//! * `GET /api/node` — name, address, incarnation, topology (as started and in force,
//!   with its epoch), neighbours and live links, Plumtree counters, switch history;
//! * `GET /api/members` — the members this node knows, with their state and incarnation;
//! * `GET /api/channels` — the channel counters the node's recorder holds
//!   (`foundation_channel_*` series, by channel and direction);
//! * `GET /api/peers` — per peer × channel: connections, queue depth (messages and
//!   bytes), bytes/s and messages/s (from the last sample), head-of-line incidents
//!   (urgent messages that waited longer than
//!   [`LATE_AFTER`](crate::distributed::channel::LATE_AFTER) to be written), from
//!   [`Node::peer_stats`];
//! * `GET /api/history` — the samples of every peer × channel over the last
//!   [`live::HISTORY`] seconds;
//! * `GET /api/timeline` — link and membership changes, worker restarts, rollout steps and
//!   hypothesis verdicts (and whatever [`Observer::record`] is given: topology switches,
//!   scaling decisions); `?after=SEQ` for the newer ones;
//! * `GET /api/processes` — the hosted ecosystems and each worker's numbers (backlog,
//!   drops, rejections, exit reason) from [`Ecosystem::processes`];
//! * `GET /api/cluster` — every up member's snapshot, gathered over the cluster by a
//!   request to the `observer.snapshot` server each observed node registers
//!   ([`Observer::serve`]); a member that does not answer within [`GATHER_TIMEOUT`] is
//!   listed with its error, not left out;
//! * `GET /api/events` — the same cluster view pushed as server-sent events (`event:
//!   cluster`) every [`STREAM_EVERY`]; at most [`live::MAX_STREAMS`] at once;
//! * `GET /` — a small page (embedded HTML/JS/SVG, no external assets) drawing the cluster
//!   graph with links coloured by load, each node's supervision tree, a sortable process
//!   table, per-peer channel charts and the timeline, live from `/api/events` (polling
//!   `/api/cluster` if the stream fails).
//!
//! Metric: `foundation_observer_streams_refused_total` (counter), live streams refused
//! because [`live::MAX_STREAMS`] were open.

pub mod live;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::beam::ecosystem::Ecosystem;
use crate::beam::Process;
use crate::core::telemetry::ShardedRecorder;
use crate::distributed::channel::ChannelStats;
use crate::distributed::node::{Node, SwitchRecord};
use crate::hypothesis::HypothesisEngine;
use crate::rollout::Rollout;
use live::{EventKind, History, Live, Sources, TimelineEvent};

/// Describes the observer's metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_observer_streams_refused_total",
        "Live streams (/api/events) refused because the most allowed were open."
    );
}

/// Name of the request server every observed node registers.
pub const SNAPSHOT_SERVICE: &str = "observer.snapshot";
/// Workers listed per ecosystem; beyond it the busiest (largest backlog) are kept and the
/// rest counted in [`EcosystemView::omitted`], so a snapshot stays far below a frame.
pub const MAX_PROCESSES_SHOWN: usize = 1000;
/// Time a member gets to answer a snapshot request.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// Time between two events of a live stream (`/api/events`).
pub const STREAM_EVERY: Duration = Duration::from_secs(1);
/// Timeline events each node's snapshot carries (the newest).
pub const SNAPSHOT_TIMELINE: usize = 100;

const PAGE: &str = include_str!("page.html");

/// The node itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Address it listens on.
    pub addr: String,
    /// This run's incarnation.
    pub incarnation: u64,
    /// The topology it was started with.
    pub topology: String,
    /// The topology in force now (`full_mesh`, `client_server`, `static`, `hyparview`).
    #[serde(default)]
    pub topology_now: String,
    /// The epoch of the topology in force (0: the one it started with).
    #[serde(default)]
    pub epoch: u64,
    /// The peers the topology wants it linked to: every member in a full mesh, the
    /// active view under HyParView.
    #[serde(default)]
    pub neighbours: Vec<String>,
    /// The peers it holds a live link to now (neighbours, links kept while a switch
    /// settles, transient direct links).
    #[serde(default)]
    pub linked: Vec<String>,
    /// Its Plumtree counters, under HyParView (`None` under other topologies).
    #[serde(default)]
    pub plumtree: Option<crate::distributed::overlay::plumtree::PtStats>,
    /// Its overlay views under HyParView: active, passive, and the Plumtree tree's eager
    /// and lazy peers (`None` under other topologies).
    #[serde(default)]
    pub overlay: Option<crate::distributed::topology::OverlayViews>,
    /// The topology switches it applied, oldest first.
    #[serde(default)]
    pub switches: Vec<SwitchRecord>,
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// Role in the topology.
    pub role: String,
    /// Up (alive or suspected).
    pub up: bool,
    /// Membership state (`Alive`, `Suspect`, `Down`...).
    pub state: String,
    /// Its incarnation as this node last heard it.
    pub incarnation: Option<u64>,
}

/// One channel series from the node's recorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSample {
    /// Metric name (`foundation_channel_messages_total`...).
    pub metric: String,
    /// Its labels (`channel`, `direction`, ...).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One channel of a link, with its rates from the last sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerChannelView {
    /// The link's counters, read now.
    pub stats: ChannelStats,
    /// Head-of-line incidents: on a high-priority channel, its late messages (urgent
    /// messages held back longer than
    /// [`LATE_AFTER`](crate::distributed::channel::LATE_AFTER)); 0 on other channels.
    pub hol_incidents: u64,
    /// Payload bytes written per second over the last sample, once there is one.
    pub bytes_per_sec: Option<f64>,
    /// Messages written per second over the last sample, once there is one.
    pub messages_per_sec: Option<f64>,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's name.
    pub peer: String,
    /// Whether the link to it is up.
    pub linked: bool,
    /// Its channels (empty when the link is not up).
    pub channels: Vec<PeerChannelView>,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessView {
    /// Process id.
    pub id: String,
    /// Its name, if any.
    pub name: Option<String>,
    /// Whether it runs.
    pub alive: bool,
    /// Why it stopped, if it has.
    pub exit: Option<String>,
    /// Messages queued.
    pub backlog: usize,
    /// Messages its mailbox dropped.
    pub dropped: u64,
    /// Messages refused because its mailbox was full.
    pub rejected: u64,
}

/// A hosted ecosystem (a supervisor and its workers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcosystemView {
    /// Ecosystem name.
    pub name: String,
    /// Workers in dispatch.
    pub workers: usize,
    /// Workers running.
    pub alive: usize,
    /// Messages queued over all workers.
    pub backlog: usize,
    /// Worker restarts so far.
    pub restarts: u64,
    /// Each worker (at most [`MAX_PROCESSES_SHOWN`], in worker order).
    pub processes: Vec<ProcessView>,
    /// Workers not listed (beyond [`MAX_PROCESSES_SHOWN`]; the busiest are listed).
    pub omitted: usize,
}

/// Everything one node shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node.
    pub node: NodeView,
    /// Its members.
    pub members: Vec<MemberView>,
    /// Its channel counters.
    pub channels: Vec<ChannelSample>,
    /// Its ecosystems.
    pub ecosystems: Vec<EcosystemView>,
    /// Its links, per peer and channel.
    #[serde(default)]
    pub peers: Vec<PeerView>,
    /// Its newest timeline events (at most [`SNAPSHOT_TIMELINE`]).
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
}

/// One member's entry in `/api/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEntry {
    /// Member name.
    pub name: String,
    /// Its snapshot, if it answered.
    pub snapshot: Option<Snapshot>,
    /// Why not, if it did not.
    pub error: Option<String>,
}

type EcoFn = Arc<dyn Fn() -> EcosystemView + Send + Sync>;

/// What a node shows. Cheap to clone; the clones share the sampler and the timeline,
/// which stop when the last clone is dropped or at [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Observer {
    node: Node,
    topology: String,
    recorder: Option<Arc<ShardedRecorder>>,
    ecosystems: Vec<EcoFn>,
    src: Sources,
    live: Arc<Live>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("node", &self.node.name())
            .field("ecosystems", &self.ecosystems.len())
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// Observes `node`, started with `topology` (shown as given).
    pub fn new(node: Node, topology: impl Into<String>) -> Self {
        Observer {
            src: Sources {
                node: node.clone(),
                restarts: Vec::new(),
                rollouts: Vec::new(),
                hypotheses: Vec::new(),
            },
            node,
            topology: topology.into(),
            recorder: None,
            ecosystems: Vec::new(),
            live: Arc::new(Live::new()),
        }
    }

    /// Puts `rollout`'s steps (widened, complete, rolled back) on the timeline.
    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.src.rollouts.push(rollout);
        self
    }

    /// Puts `engine`'s verdicts on the timeline.
    pub fn hypotheses(mut self, engine: Arc<HypothesisEngine>) -> Self {
        self.src.hypotheses.push(engine);
        self
    }

    /// Puts an event on this node's timeline: the hook for what the observer does not
    /// find by itself (topology switches from `Node::switch_topology`'s callers,
    /// scaling decisions of a [`PredictiveScaler`](crate::predictive::PredictiveScaler)).
    pub fn record(&self, kind: EventKind, source: &str, text: impl Into<String>) {
        self.live.record(kind, source, text.into());
    }

    /// Stops the sampler (waiting at most `within` for it) and ends the live streams; the
    /// views keep answering, without new samples. Call it before shutting the HTTP server
    /// down, whose graceful shutdown otherwise waits its grace period for open streams.
    pub async fn shutdown(&self, within: Duration) {
        self.live.stop(within).await;
    }

    /// Samples taken so far by this observer's sampler (or [`sample_now`](Self::sample_now)).
    pub fn samples_taken(&self) -> u64 {
        self.live.ticks()
    }

    /// Whether the sampler runs now (somebody looked within [`live::LEASE`]).
    pub fn sampling(&self) -> bool {
        self.live.sampling()
    }

    /// Takes one sample and updates the timeline now, as the sampler does every
    /// [`live::SAMPLE_EVERY`] (for tests and embedders driving their own clock).
    pub fn sample_now(&self) {
        self.live.sample(&self.src);
    }

    /// Starts the sampler, or keeps it running, for [`live::LEASE`] from now: what every
    /// observer request does (for embedders serving their own views).
    pub fn keep_sampling(&self) {
        self.live.touch(&self.src);
    }

    fn touch(&self) {
        self.keep_sampling();
    }

    /// Each peer: the link's channels with their rates from the last sample; members
    /// without a link are listed with `linked: false`.
    pub fn peers(&self) -> Vec<PeerView> {
        let latest = self.live.latest();
        let stats = self.node.peer_stats();
        let mut out: Vec<PeerView> = stats
            .into_iter()
            .map(|p| PeerView {
                channels: p
                    .channels
                    .into_iter()
                    .map(|c| {
                        let s = latest.get(&(p.peer.clone(), c.channel.clone()));
                        PeerChannelView {
                            hol_incidents: if c.priority == "high" { c.late } else { 0 },
                            bytes_per_sec: s.map(|s| s.bytes_per_sec),
                            messages_per_sec: s.map(|s| s.messages_per_sec),
                            stats: c,
                        }
                    })
                    .collect(),
                peer: p.peer,
                linked: true,
            })
            .collect();
        let me = self.node.name();
        for m in self.node.members() {
            if m.name != me && !out.iter().any(|p| p.peer == m.name) {
                out.push(PeerView {
                    peer: m.name,
                    linked: false,
                    channels: Vec::new(),
                });
            }
        }
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// Every peer × channel series sampled so far.
    pub fn history(&self) -> History {
        self.live.history()
    }

    /// The timeline, oldest first (only events after sequence number `after`, if given).
    pub fn timeline(&self, after: Option<u64>) -> Vec<TimelineEvent> {
        self.live.timeline(after)
    }

    /// Reads channel counters from `recorder` (without one, `/api/channels` is empty).
    pub fn recorder(mut self, recorder: Arc<ShardedRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Shows `eco` under `/api/processes`.
    pub fn ecosystem<P: Process>(mut self, eco: Arc<Ecosystem<P>>) -> Self {
        let e = eco.clone();
        self.src.restarts.push(Arc::new(move || {
            let info = e.info();
            (info.name, info.restarts)
        }));
        self.ecosystems.push(Arc::new(move || {
            let info = eco.info();
            let (processes, omitted) = busiest(
                eco.processes()
                    .into_iter()
                    .map(|p| ProcessView {
                        id: p.id.to_string(),
                        name: p.name,
                        alive: p.alive,
                        exit: p.exit.map(|e| e.to_string()),
                        backlog: p.backlog,
                        dropped: p.dropped,
                        rejected: p.rejected,
                    })
                    .collect(),
                MAX_PROCESSES_SHOWN,
            );
            EcosystemView {
                name: info.name,
                workers: info.workers,
                alive: info.alive,
                backlog: info.backlog,
                restarts: info.restarts,
                processes,
                omitted,
            }
        }));
        self
    }

    /// Registers the [`SNAPSHOT_SERVICE`] request server on the node, so other nodes'
    /// observers can show this one.
    pub fn serve(&self) {
        let me = self.clone();
        self.node.serve(SNAPSHOT_SERVICE, move |_from, _: ()| {
            let me = me.clone();
            async move {
                me.touch();
                me.snapshot()
            }
        });
    }

    /// The node.
    pub fn node_view(&self) -> NodeView {
        NodeView {
            name: self.node.name().to_string(),
            addr: self.node.addr().to_string(),
            incarnation: self.node.incarnation(),
            topology: self.topology.clone(),
            topology_now: self.node.topology_kind().label().to_string(),
            epoch: self.node.topology_state().epoch,
            neighbours: self.node.neighbours().into_iter().collect(),
            linked: self.node.connected_peers(),
            plumtree: self.node.broadcast_stats(),
            overlay: self.node.overlay_views(),
            switches: self.node.switch_history(),
        }
    }

    /// The members.
    pub fn members(&self) -> Vec<MemberView> {
        self.node
            .members()
            .into_iter()
            .map(|m| MemberView {
                state: self
                    .node
                    .member_status(&m.name)
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "Unknown".into()),
                incarnation: self.node.member_incarnation(&m.name),
                role: format!("{:?}", m.role),
                up: m.up,
                name: m.name,
                addr: m.addr,
            })
            .collect()
    }

    /// The channel series of the recorder, read now (series labelled with another
    /// `node` left out).
    pub fn channels(&self) -> Vec<ChannelSample> {
        match &self.recorder {
            Some(r) => {
                // A recorder shared by several nodes labels each series with its node.
                let me = self.node.name();
                let mut v = parse_series(&r.render(), "foundation_channel_");
                v.retain(|s| s.labels.get("node").is_none_or(|n| n == me));
                v
            }
            None => Vec::new(),
        }
    }

    /// The ecosystems, read now.
    pub fn ecosystems(&self) -> Vec<EcosystemView> {
        self.ecosystems.iter().map(|f| f()).collect()
    }

    /// Everything, read now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.node_view(),
            members: self.members(),
            channels: self.channels(),
            ecosystems: self.ecosystems(),
            peers: self.peers(),
            timeline: self.live.recent(SNAPSHOT_TIMELINE),
        }
    }

    /// This node's snapshot and every other up member's, asked for concurrently over the
    /// cluster (each within [`GATHER_TIMEOUT`]).
    pub async fn cluster(&self) -> Vec<ClusterEntry> {
        let me = self.node.name().to_string();
        let mut out = vec![ClusterEntry {
            name: me.clone(),
            snapshot: Some(self.snapshot()),
            error: None,
        }];
        let others: Vec<String> = self
            .node
            .members()
            .into_iter()
            .filter(|m| m.name != me)
            .map(|m| m.name)
            .collect();
        let asks = others.into_iter().map(|name| {
            let node = self.node.clone();
            async move {
                let r: Result<Snapshot, _> = node
                    .request(&name, SNAPSHOT_SERVICE, &(), GATHER_TIMEOUT)
                    .await;
                match r {
                    Ok(s) => ClusterEntry {
                        name,
                        snapshot: Some(s),
                        error: None,
                    },
                    Err(e) => ClusterEntry {
                        name,
                        snapshot: None,
                        error: Some(e.to_string()),
                    },
                }
            }
        });
        out.extend(futures_util::future::join_all(asks).await);
        out
    }

    /// The observer's routes (`/`, `/api/...`), to merge into the node's router.
    pub fn router(self) -> Router {
        async fn view<T: Serialize>(o: &Observer, f: impl FnOnce(&Observer) -> T) -> Response {
            o.touch();
            json(&f(o))
        }
        Router::new()
            .route(
                "/",
                get(|State(o): State<Observer>| async move {
                    o.touch();
                    page().await
                }),
            )
            .route(
                "/api/node",
                get(|State(o): State<Observer>| async move { view(&o, Observer::node_view).await }),
            )
            .route(
                "/api/members",
                get(|State(o): State<Observer>| async move { view(&o, Observer::members).await }),
            )
            .route(
                "/api/channels",
                get(|State(o): State<Observer>| async move { view(&o, Observer::channels).await }),
            )
            .route(
                "/api/peers",
                get(|State(o): State<Observer>| async move { view(&o, Observer::peers).await }),
            )
            .route(
                "/api/history",
                get(|State(o): State<Observer>| async move { view(&o, Observer::history).await }),
            )
            .route(
                "/api/timeline",
                get(
                    |State(o): State<Observer>, uri: axum::http::Uri| async move {
                        match after_param(uri.query()) {
                            Ok(after) => view(&o, |o| o.timeline(after)).await,
                            Err(bad) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                format!("bad `after`: {bad:?} is not a sequence number\n"),
                            )
                                .into_response(),
                        }
                    },
                ),
            )
            .route(
                "/api/processes",
                get(
                    |State(o): State<Observer>| async move { view(&o, Observer::ecosystems).await },
                ),
            )
            .route(
                "/api/cluster",
                get(|State(o): State<Observer>| async move {
                    o.touch();
                    json(&o.cluster().await)
                }),
            )
            .route("/api/events", get(events))
            .with_state(self)
    }
}

/// `after=SEQ` of a query string; any other parameter is ignored.
fn after_param(query: Option<&str>) -> Result<Option<u64>, String> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("after=") {
            return v.parse().map(Some).map_err(|_| v.to_string());
        }
    }
    Ok(None)
}

/// `/api/events`: the cluster view every [`STREAM_EVERY`], as server-sent events.
async fn events(State(o): State<Observer>) -> Response {
    let Some(guard) = o.live.open_stream() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many live streams (at most {}); poll /api/cluster instead\n",
                live::MAX_STREAMS
            ),
        )
            .into_response();
    };
    o.touch();
    let stream = futures_util::stream::unfold((o, guard, true), |(o, guard, first)| async move {
        // The stream ends when the observer is shut down (so the HTTP server's graceful
        // shutdown does not wait for it).
        if !first {
            tokio::select! {
                _ = o.live.stopped() => return None,
                _ = tokio::time::sleep(STREAM_EVERY) => {}
            }
        }
        if o.live.is_stopped() {
            return None;
        }
        o.touch();
        let cluster = o.cluster().await;
        let ev = match serde_json::to_string(&cluster) {
            Ok(data) => Event::default().event("cluster").data(data),
            Err(e) => Event::default()
                .event("error")
                .data(format!("cannot encode the view: {e}")),
        };
        Some((Ok::<_, Infallible>(ev), (o, guard, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Keeps the `max` workers with the largest backlog (in their original order); returns
/// them and how many were left out.
fn busiest(mut all: Vec<ProcessView>, max: usize) -> (Vec<ProcessView>, usize) {
    if all.len() <= max {
        return (all, 0);
    }
    let omitted = all.len() - max;
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(all[i].backlog));
    let mut keep = vec![false; all.len()];
    for &i in &order[..max] {
        keep[i] = true;
    }
    let mut i = 0;
    all.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    (all, omitted)
}

/// A JSON response (axum's `json` feature is off in this workspace).
fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the view: {e}\n"),
        )
            .into_response(),
    }
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

/// Parses Prometheus text lines whose metric name starts with `prefix` (histogram
/// buckets and comments skipped).
fn parse_series(text: &str, prefix: &str) -> Vec<ChannelSample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.starts_with(prefix) {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric.ends_with("_bucket") {
            continue;
        }
        let mut map = BTreeMap::new();
        for pair in split_labels(labels) {
            if let Some((k, v)) = pair.split_once('=') {
                map.insert(k.to_string(), v.trim_matches('"').replace("\\\"", "\""));
            }
        }
        out.push(ChannelSample {
            metric: metric.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// Splits `a="x",b="y,z"` at commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: usize, backlog: usize) -> ProcessView {
        ProcessView {
            id: id.to_string(),
            name: None,
            alive: true,
            exit: None,
            backlog,
            dropped: 0,
            rejected: 0,
        }
    }

    #[test]
    fn keeps_the_busiest_workers_in_order() {
        let all: Vec<_> = [3, 9, 0, 7, 1]
            .iter()
            .enumerate()
            .map(|(i, &b)| worker(i, b))
            .collect();
        let (kept, omitted) = busiest(all.clone(), 2);
        assert_eq!(omitted, 3);
        assert_eq!(
            kept.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["1", "3"]
        );
        assert_eq!(busiest(all.clone(), 5), (all, 0));
    }

    #[test]
    fn parses_channel_series() {
        let text = "# HELP foundation_channel_messages_total x\n\
            foundation_channel_messages_total{channel=\"urgent\",direction=\"out\",node=\"a,b\"} 42\n\
            foundation_channel_send_seconds_bucket{channel=\"urgent\",le=\"0.1\"} 3\n\
            foundation_channel_queue_depth 7\n\
            foundation_node_links 2\n";
        let s = parse_series(text, "foundation_channel_");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].metric, "foundation_channel_messages_total");
        assert_eq!(s[0].labels["channel"], "urgent");
        assert_eq!(s[0].labels["node"], "a,b");
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].metric, "foundation_channel_queue_depth");
        assert!(s[1].labels.is_empty());
    }
}
