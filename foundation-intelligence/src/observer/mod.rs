//! The observer: a read-only, live view of a node and its cluster over the node's HTTP
//! server.
//!
//! Everything is computed when asked (no background task, no cost while nobody looks):
//!
//! * `GET /api/node` — name, address, incarnation, topology;
//! * `GET /api/members` — the members this node knows, with their state and incarnation;
//! * `GET /api/channels` — the channel counters the node's recorder holds
//!   (`foundation_channel_*` series, by channel and direction);
//! * `GET /api/processes` — the hosted ecosystems and each worker's numbers (backlog,
//!   drops, rejections, exit reason) from [`Ecosystem::processes`];
//! * `GET /api/cluster` — every up member's snapshot, gathered over the cluster by a
//!   request to the `observer.snapshot` server each observed node registers
//!   ([`Observer::serve`]); a member that does not answer within [`GATHER_TIMEOUT`] is
//!   listed with its error, not left out;
//! * `GET /` — a small page (embedded HTML/JS/SVG, no external assets) drawing the cluster
//!   graph, each node's ecosystems and a sortable process table, refreshed by polling
//!   `/api/cluster`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::beam::ecosystem::Ecosystem;
use crate::beam::Process;
use crate::core::telemetry::ShardedRecorder;
use crate::distributed::node::Node;

/// Name of the request server every observed node registers.
pub const SNAPSHOT_SERVICE: &str = "observer.snapshot";
/// Workers listed per ecosystem; beyond it the busiest (largest backlog) are kept and the
/// rest counted in [`EcosystemView::omitted`], so a snapshot stays far below a frame.
pub const MAX_PROCESSES_SHOWN: usize = 1000;
/// Time a member gets to answer a snapshot request.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

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

/// What a node shows. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    node: Node,
    topology: String,
    recorder: Option<Arc<ShardedRecorder>>,
    ecosystems: Vec<EcoFn>,
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
            node,
            topology: topology.into(),
            recorder: None,
            ecosystems: Vec::new(),
        }
    }

    /// Reads channel counters from `recorder` (without one, `/api/channels` is empty).
    pub fn recorder(mut self, recorder: Arc<ShardedRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Shows `eco` under `/api/processes`.
    pub fn ecosystem<P: Process>(mut self, eco: Arc<Ecosystem<P>>) -> Self {
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
            async move { me.snapshot() }
        });
    }

    /// The node.
    pub fn node_view(&self) -> NodeView {
        NodeView {
            name: self.node.name().to_string(),
            addr: self.node.addr().to_string(),
            incarnation: self.node.incarnation(),
            topology: self.topology.clone(),
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
        Router::new()
            .route("/", get(page))
            .route(
                "/api/node",
                get(|State(o): State<Observer>| async move { json(&o.node_view()) }),
            )
            .route(
                "/api/members",
                get(|State(o): State<Observer>| async move { json(&o.members()) }),
            )
            .route(
                "/api/channels",
                get(|State(o): State<Observer>| async move { json(&o.channels()) }),
            )
            .route(
                "/api/processes",
                get(|State(o): State<Observer>| async move { json(&o.ecosystems()) }),
            )
            .route(
                "/api/cluster",
                get(|State(o): State<Observer>| async move { json(&o.cluster().await) }),
            )
            .with_state(self)
    }
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
