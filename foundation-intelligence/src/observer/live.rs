//! The observer's live part: per-peer channel samples over the last minutes and a
//! timeline of what changed, taken only while somebody looks.
//!
//! A sampler task takes one [`Sample`] per peer × channel every [`SAMPLE_EVERY`] into a
//! ring of [`HISTORY`] samples, and compares what it reads with the previous tick to
//! put events on the timeline (links up and down, members joining, leaving, restarting
//! or going down, worker restarts, rollout and hypothesis decisions). The task is started
//! by any observer request (a page, an `/api/*` view, a live stream, another node's
//! snapshot request) and runs for [`LEASE`] after the last one; then it stops, so a node
//! nobody looks at pays nothing. What changed meanwhile is caught at the next first tick
//! (counters are compared with the last values seen, so restarts are not lost, only
//! dated late). Rollout steps and hypothesis verdicts from before the first look are
//! shown as well (their histories keep them).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::telemetry::TaskGuard;
use crate::distributed::channel::ChannelStats;
use crate::distributed::node::Node;
use crate::hypothesis::HypothesisEngine;
use crate::rollout::{CheckAction, Rollout, RolloutState};

/// Time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept per peer × channel (5 minutes at [`SAMPLE_EVERY`]).
pub const HISTORY: usize = 300;
/// Peer × channel series kept at most; further ones are counted in
/// [`History::omitted`], not sampled.
pub const MAX_SERIES: usize = 512;
/// Timeline events kept.
pub const TIMELINE: usize = 512;
/// The sampler keeps running this long after the last observer request.
pub const LEASE: Duration = Duration::from_secs(60);
/// Live streams (`/api/events`) served at once; more are refused (503).
pub const MAX_STREAMS: usize = 8;

/// One peer × channel sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// Payload bytes written per second since the previous sample.
    pub bytes_per_sec: f64,
    /// Messages written per second since the previous sample.
    pub messages_per_sec: f64,
    /// Messages queued at the sample.
    pub queued_messages: u64,
    /// Payload bytes queued at the sample.
    pub queued_bytes: u64,
    /// Late messages (see [`ChannelStats::late`]) since the previous sample.
    pub late: u64,
}

/// The samples of one peer × channel, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The peer.
    pub peer: String,
    /// The channel.
    pub channel: String,
    /// Its samples (at most [`HISTORY`]).
    pub samples: Vec<Sample>,
}

/// `/api/history`: every series this node sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Time between samples, in milliseconds.
    pub interval_ms: u64,
    /// Whether the sampler runs now.
    pub sampling: bool,
    /// The series, by peer then channel.
    pub series: Vec<Series>,
    /// Series not kept (beyond [`MAX_SERIES`]).
    pub omitted: usize,
}

/// What a timeline event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A member joined, left, went down, came back or restarted (new incarnation).
    Membership,
    /// A link to a peer came up, went down or was replaced.
    Link,
    /// A topology switch.
    Topology,
    /// Supervised workers restarted (crashes).
    Restart,
    /// A decision: a hypothesis verdict, a rollout step, a scaling decision.
    Decision,
}

/// One timeline event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Sequence number on this node (increasing).
    pub seq: u64,
    /// Wall-clock time it happened (a hypothesis verdict) or was seen (everything else),
    /// milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// Its kind.
    pub kind: EventKind,
    /// What it is about (a member, an ecosystem, a rollout...).
    pub source: String,
    /// What happened.
    pub text: String,
}

/// What the sampler reads: a snapshot of the observer's sources.
#[derive(Clone)]
pub(super) struct Sources {
    pub node: Node,
    /// Each ecosystem's name and restarts so far.
    pub restarts: Vec<Arc<dyn Fn() -> (String, u64) + Send + Sync>>,
    pub rollouts: Vec<Rollout>,
    pub hypotheses: Vec<Arc<HypothesisEngine>>,
}

#[derive(Default)]
struct Prev {
    at: Option<Instant>,
    bytes: u64,
    messages: u64,
    late: u64,
}

#[derive(Default)]
struct State {
    series: BTreeMap<(String, String), VecDeque<Sample>>,
    omitted: BTreeSet<(String, String)>,
    prev: HashMap<(String, String), Prev>,
    timeline: VecDeque<TimelineEvent>,
    next_seq: u64,
    /// Baselines: `None` until the first tick.
    links: Option<BTreeSet<String>>,
    members: Option<BTreeMap<String, (bool, Option<u64>)>>,
    restarts: HashMap<String, u64>,
    rollouts: HashMap<String, usize>,
    hypotheses: u64,
    /// The greatest switch epoch put on the timeline (`None` until the first tick).
    switch_epoch: Option<u64>,
}

struct Slot {
    task: Option<JoinHandle<()>>,
    until: Instant,
}

/// The live state of one observer (shared by its clones).
pub(super) struct Live {
    state: Mutex<State>,
    slot: Mutex<Slot>,
    cancel: CancellationToken,
    streams: AtomicUsize,
    ticks: AtomicU64,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rate(delta: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        delta as f64 / secs
    } else {
        0.0
    }
}

impl Live {
    pub(super) fn new() -> Self {
        Live {
            state: Mutex::new(State::default()),
            slot: Mutex::new(Slot {
                task: None,
                until: Instant::now(),
            }),
            cancel: CancellationToken::new(),
            streams: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    /// Samples taken so far.
    pub(super) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Whether the sampler task runs.
    pub(super) fn sampling(&self) -> bool {
        self.slot
            .lock()
            .task
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Extends the lease and starts the sampler if it does not run (only on a tokio
    /// runtime, and not after [`stop`](Self::stop)).
    pub(super) fn touch(self: &Arc<Self>, src: &Sources) {
        if self.cancel.is_cancelled() {
            return;
        }
        let mut slot = self.slot.lock();
        slot.until = Instant::now() + LEASE;
        if slot.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        slot.task = Some(tokio::spawn(run(
            Arc::downgrade(self),
            src.clone(),
            self.cancel.clone(),
        )));
    }

    /// Stops the sampler and waits (at most `within`) for it.
    pub(super) async fn stop(&self, within: Duration) {
        self.cancel.cancel();
        let task = self.slot.lock().task.take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(within, t).await;
        }
    }

    /// Resolves once [`stop`](Self::stop) was called.
    pub(super) async fn stopped(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether [`stop`](Self::stop) was called.
    pub(super) fn is_stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Counts a live stream; `None` when [`MAX_STREAMS`] are open.
    pub(super) fn open_stream(self: &Arc<Self>) -> Option<StreamGuard> {
        let n = self.streams.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("foundation_observer_streams_refused_total").increment(1);
            return None;
        }
        Some(StreamGuard(self.clone()))
    }

    /// Appends an event to the timeline.
    pub(super) fn record(&self, kind: EventKind, source: &str, text: String) {
        push(&mut self.state.lock(), kind, source, text);
    }

    /// The timeline events after `after` (a sequence number), oldest first.
    pub(super) fn timeline(&self, after: Option<u64>) -> Vec<TimelineEvent> {
        let st = self.state.lock();
        st.timeline
            .iter()
            .filter(|e| after.is_none_or(|a| e.seq > a))
            .cloned()
            .collect()
    }

    /// The last `n` timeline events, oldest first.
    pub(super) fn recent(&self, n: usize) -> Vec<TimelineEvent> {
        let st = self.state.lock();
        let skip = st.timeline.len().saturating_sub(n);
        st.timeline.iter().skip(skip).cloned().collect()
    }

    /// The latest sample of each series (for the per-peer view's rates).
    pub(super) fn latest(&self) -> HashMap<(String, String), Sample> {
        let st = self.state.lock();
        st.series
            .iter()
            .filter_map(|(k, v)| v.back().map(|s| (k.clone(), s.clone())))
            .collect()
    }

    /// Every series.
    pub(super) fn history(&self) -> History {
        let sampling = self.sampling();
        let st = self.state.lock();
        History {
            interval_ms: SAMPLE_EVERY.as_millis() as u64,
            sampling,
            series: st
                .series
                .iter()
                .map(|((peer, channel), v)| Series {
                    peer: peer.clone(),
                    channel: channel.clone(),
                    samples: v.iter().cloned().collect(),
                })
                .collect(),
            omitted: st.omitted.len(),
        }
    }

    /// Takes one sample now and updates the timeline (what the sampler does each tick).
    pub(super) fn sample(&self, src: &Sources) {
        let now = Instant::now();
        let t_ms = now_ms();
        let peers = src.node.peer_stats();
        let members = src.node.members();
        let incarnations: Vec<Option<u64>> = members
            .iter()
            .map(|m| src.node.member_incarnation(&m.name))
            .collect();
        let restarts: Vec<(String, u64)> = src.restarts.iter().map(|f| f()).collect();
        let rollouts: Vec<(String, Vec<_>)> = src
            .rollouts
            .iter()
            .map(|r| (r.name().to_string(), r.history()))
            .collect();
        let hypotheses: Vec<_> = src.hypotheses.iter().flat_map(|h| h.history()).collect();
        let switches = src.node.switch_history();

        let mut st = self.state.lock();
        let st = &mut *st;
        // Channel samples.
        for p in &peers {
            for c in &p.channels {
                sample_channel(st, &p.peer, c, now, t_ms);
            }
        }
        // Links.
        let up: BTreeSet<String> = peers.iter().map(|p| p.peer.clone()).collect();
        if let Some(before) = st.links.replace(up.clone()) {
            for p in up.difference(&before) {
                push(st, EventKind::Link, p, format!("link to {p} up"));
            }
            for p in before.difference(&up) {
                push(st, EventKind::Link, p, format!("link to {p} down"));
            }
        }
        // Members.
        let me = src.node.name();
        let now_members: BTreeMap<String, (bool, Option<u64>)> = members
            .iter()
            .zip(incarnations)
            .filter(|(m, _)| m.name != me)
            .map(|(m, inc)| (m.name.clone(), (m.up, inc)))
            .collect();
        if let Some(before) = st.members.replace(now_members.clone()) {
            for (name, (up, inc)) in &now_members {
                let text = match before.get(name) {
                    None => Some(format!("{name} joined")),
                    Some((was_up, _)) if *was_up && !up => Some(format!("{name} down")),
                    Some((was_up, _)) if !was_up && *up => Some(format!("{name} up again")),
                    Some((_, old)) if old.is_some() && inc.is_some() && old != inc => {
                        Some(format!("{name} restarted (new incarnation)"))
                    }
                    _ => None,
                };
                if let Some(t) = text {
                    push(st, EventKind::Membership, name, t);
                }
            }
            for name in before.keys().filter(|n| !now_members.contains_key(*n)) {
                push(
                    st,
                    EventKind::Membership,
                    name,
                    format!("{name} left the view"),
                );
            }
        }
        // Worker restarts.
        for (eco, n) in restarts {
            match st.restarts.insert(eco.clone(), n) {
                Some(before) if n > before => {
                    let d = n - before;
                    let text = format!(
                        "{d} worker restart{} in {eco} (total {n})",
                        if d == 1 { "" } else { "s" }
                    );
                    push(st, EventKind::Restart, &eco, text);
                }
                _ => {}
            }
        }
        // Rollout steps.
        // Steps taken before the first look are shown too (the history keeps them), marked
        // so, as they are dated at that look.
        for (name, history) in rollouts {
            let seen = st.rollouts.insert(name.clone(), history.len());
            let late = if seen.is_none() {
                " (before the observer looked)"
            } else {
                ""
            };
            for r in history.iter().skip(seen.unwrap_or(0)) {
                let what = match (&r.action, &r.state) {
                    (CheckAction::Widened, RolloutState::Active { percent }) => {
                        format!("rollout {name} widened to {percent}%")
                    }
                    (CheckAction::Completed, _) => format!("rollout {name} complete (100%)"),
                    (CheckAction::RolledBack, RolloutState::RolledBack { reason }) => {
                        format!("rollout {name} rolled back: {reason}")
                    }
                    (CheckAction::RolledBack, _) => format!("rollout {name} rolled back"),
                    _ => continue,
                };
                push(st, EventKind::Decision, &name, format!("{what}{late}"));
            }
        }
        // Topology switches this node applied (its own proposals and those agreed
        // elsewhere), each once; those before the first look are marked so.
        let seen = st.switch_epoch;
        for r in switches.iter().filter(|r| seen.is_none_or(|e| r.epoch > e)) {
            let late = if seen.is_none() {
                " (before the observer looked)"
            } else {
                ""
            };
            let origin = if r.local {
                "proposed here"
            } else {
                "proposed by"
            };
            let by = if r.local {
                String::new()
            } else {
                format!(" {}", r.proposer)
            };
            let why = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            let text = format!(
                "topology {} -> {} (epoch {}, {origin}{by}{why}){late}",
                r.from.label(),
                r.to.label(),
                r.epoch
            );
            push(st, EventKind::Topology, &r.proposer, text);
        }
        let newest = switches.iter().map(|r| r.epoch).max().unwrap_or(0);
        st.switch_epoch = Some(seen.unwrap_or(0).max(newest));
        // Hypothesis verdicts (at the time they were reached, also before the first look).
        let mut newest = st.hypotheses;
        for h in hypotheses {
            if h.finished_at_ms > st.hypotheses {
                newest = newest.max(h.finished_at_ms);
                push_at(
                    st,
                    h.finished_at_ms,
                    EventKind::Decision,
                    &h.name,
                    format!("hypothesis {} on {}: {}", h.name, h.metric, h.outcome),
                );
            }
        }
        st.hypotheses = newest;
        drop(peers);
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

fn push(st: &mut State, kind: EventKind, source: &str, text: String) {
    push_at(st, now_ms(), kind, source, text);
}

fn push_at(st: &mut State, t_ms: u64, kind: EventKind, source: &str, text: String) {
    if st.timeline.len() >= TIMELINE {
        st.timeline.pop_front();
    }
    st.next_seq += 1;
    st.timeline.push_back(TimelineEvent {
        seq: st.next_seq,
        t_ms,
        kind,
        source: source.to_string(),
        text,
    });
}

fn sample_channel(st: &mut State, peer: &str, c: &ChannelStats, now: Instant, t_ms: u64) {
    let key = (peer.to_string(), c.channel.clone());
    if !st.series.contains_key(&key) && st.series.len() >= MAX_SERIES {
        st.omitted.insert(key);
        return;
    }
    let prev = st.prev.entry(key.clone()).or_default();
    // A replaced link starts its counters from 0 again.
    let reset = c.sent_bytes < prev.bytes || c.sent_messages < prev.messages || c.late < prev.late;
    let (bytes_per_sec, messages_per_sec, late) = match prev.at {
        Some(at) if !reset => {
            let secs = now.duration_since(at).as_secs_f64();
            (
                rate(c.sent_bytes - prev.bytes, secs),
                rate(c.sent_messages - prev.messages, secs),
                c.late - prev.late,
            )
        }
        _ => (0.0, 0.0, 0),
    };
    let first = prev.at.is_none();
    *prev = Prev {
        at: Some(now),
        bytes: c.sent_bytes,
        messages: c.sent_messages,
        late: c.late,
    };
    if first {
        // The first reading is only a baseline for the rates.
        st.series.entry(key).or_default();
        return;
    }
    let ring = st.series.entry(key).or_default();
    if ring.len() >= HISTORY {
        ring.pop_front();
    }
    ring.push_back(Sample {
        t_ms,
        bytes_per_sec,
        messages_per_sec,
        queued_messages: c.queued_messages,
        queued_bytes: c.queued_bytes,
        late,
    });
}

/// Counts an open live stream until dropped.
pub(super) struct StreamGuard(Arc<Live>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn run(live: Weak<Live>, src: Sources, cancel: CancellationToken) {
    let _guard = TaskGuard::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(live) = live.upgrade() else { return };
        live.sample(&src);
        let mut slot = live.slot.lock();
        if Instant::now() >= slot.until {
            // Nobody looked for a lease: stop (the next request starts a new task).
            slot.task = None;
            return;
        }
    }
}
