//! Correlation of event batches, computed in an external process.
//!
//! [`Correlator`] runs the `foundation-correlator` binary behind a [`Port`];
//! [`correlate_events`] is the algorithm itself, which the binary runs. The grouping is
//! defined on [`correlate_events`], the wire protocol on [`Correlator`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::{CorrelationId, Event, EventId};
use crate::error::{Error, Result};
use crate::port::{Port, PortBuilder};

/// Options of one correlation request. Plain settings; loads from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorrelateOptions {
    /// Width of a time-window group, in microseconds (see [`correlate_events`]).
    /// Default 100,000 (100 ms).
    pub window_us: u64,
}

impl Default for CorrelateOptions {
    fn default() -> Self {
        CorrelateOptions { window_us: 100_000 }
    }
}

/// Why the events of a [`CorrelationGroup`] belong together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupKind {
    /// They share this correlation id.
    Correlation(CorrelationId),
    /// They form one parent chain (a tree of `parent_id` links) rooted at `root`.
    Chain {
        /// The event that starts the chain.
        root: EventId,
    },
    /// They happened within one window and share no correlation id with any other event
    /// of the batch.
    TimeWindow {
        /// Timestamp of the earliest event, µs since the Unix epoch.
        start_us: u64,
        /// Timestamp of the latest event (at most one window after `start_us`).
        end_us: u64,
    },
}

/// A group of correlated events: their ids, in causal order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelationGroup {
    /// Why they belong together.
    pub kind: GroupKind,
    /// The events' ids, in causal order (parents before children, otherwise by time).
    pub events: Vec<EventId>,
}

/// The request frame of the correlator protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrelateRequest {
    /// The batch to correlate.
    pub events: Vec<Event>,
    /// How to correlate it.
    #[serde(default)]
    pub options: CorrelateOptions,
}

/// Serialises like [`CorrelateRequest`] without owning the events.
#[derive(Serialize)]
struct CorrelateRequestRef<'a> {
    events: &'a [Event],
    options: &'a CorrelateOptions,
}

/// The reply frame of the correlator protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CorrelateReply {
    /// The groups of the batch.
    Groups(Vec<CorrelationGroup>),
    /// The request could not be decoded (or correlated); nothing else is wrong with the
    /// correlator.
    Error(String),
}

/// Groups `events`: by correlation id, by parent chain and by time window.
///
/// # Grouping
/// Only events of the batch are considered; ids outside it are ignored. Every group has
/// at least two events, listed in **causal order**, defined over the whole batch:
/// an event comes after its parent (when the parent is in the batch), and otherwise
/// events are ordered by `(timestamp_us, id)`. (In a forged batch whose parent links
/// form a cycle, the cycle is broken before its earliest event.)
///
/// * [`GroupKind::Correlation`] — all events with the same correlation id, for every
///   correlation id that at least two events of the batch carry.
/// * [`GroupKind::Chain`] — the parent chains: events linked by `parent_id` (in either
///   direction, transitively) form one tree; every tree of two or more events is a group,
///   its root (the event without a parent in the batch) first, parents before children.
///   Chains and correlation groups usually overlap; they answer different questions
///   (which flow, which causes).
/// * [`GroupKind::TimeWindow`] — events close in time that share no correlation id: take
///   the events whose correlation id no other event of the batch carries, in time order;
///   the earliest starts a group, which takes every later such event at most
///   [`CorrelateOptions::window_us`] after it; the first event beyond that starts the next
///   group. So any two events of a time group are at most one window apart, and the
///   grouping is deterministic. Groups of one are dropped.
///
/// Groups come in the order: correlation groups, chains, time groups; each kind ordered
/// by its first event in causal order. The cost is O(n log n) in the batch size (hash
/// maps, one sort, one heap pass): about 4 ms for 10,000 events on the 2-core development
/// machine, about 10 ms through the correlator process including MessagePack both ways
/// (`benches/benches/port.rs`).
///
/// # Example
/// ```
/// use foundation_core::events::{correlate_events, CorrelateOptions, Event, GroupKind};
///
/// let order = Event::new("user", &"order")?;
/// let paid = Event::new("user", &"paid")?.caused_by(&order);
/// let stray = Event::new("system", &"gc")?;
/// let groups = correlate_events(&[paid.clone(), stray, order.clone()], &CorrelateOptions::default());
/// assert_eq!(groups[0].kind, GroupKind::Correlation(order.correlation_id));
/// assert_eq!(groups[0].events, vec![order.id, paid.id]); // parent first
/// assert_eq!(groups[1].kind, GroupKind::Chain { root: order.id });
/// # Ok::<(), foundation_core::Error>(())
/// ```
pub fn correlate_events(events: &[Event], options: &CorrelateOptions) -> Vec<CorrelationGroup> {
    let n = events.len();
    if n < 2 {
        return Vec::new();
    }
    let key = |i: usize| (events[i].timestamp_us, events[i].id);

    // The first event with a given id is the one parent links point to.
    let mut by_id: HashMap<EventId, usize> = HashMap::with_capacity(n);
    for (i, e) in events.iter().enumerate() {
        by_id.entry(e.id).or_insert(i);
    }
    let parent: Vec<Option<usize>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.parent_id
                .and_then(|p| by_id.get(&p).copied())
                .filter(|&p| p != i)
        })
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, p) in parent.iter().enumerate() {
        if let Some(p) = *p {
            children[p].push(i);
        }
    }

    // Causal order: Kahn's algorithm over the parent forest, earliest ready event first.
    // Events never made ready sit on (or below) a parent cycle; the earliest of them is
    // released as if it had no parent, which breaks the cycle.
    let mut by_time: Vec<usize> = (0..n).collect();
    by_time.sort_unstable_by_key(|&i| key(i));
    let mut rank = vec![usize::MAX; n];
    let mut ready: BinaryHeap<Reverse<((u64, EventId), usize)>> = BinaryHeap::new();
    for (i, p) in parent.iter().enumerate() {
        if p.is_none() {
            ready.push(Reverse((key(i), i)));
        }
    }
    let mut next_rank = 0;
    let mut cursor = 0;
    loop {
        let Some(Reverse((_, i))) = ready.pop() else {
            while cursor < n && rank[by_time[cursor]] != usize::MAX {
                cursor += 1;
            }
            if cursor == n {
                break;
            }
            let i = by_time[cursor];
            ready.push(Reverse((key(i), i)));
            continue;
        };
        if rank[i] != usize::MAX {
            continue;
        }
        rank[i] = next_rank;
        next_rank += 1;
        for &c in &children[i] {
            if rank[c] == usize::MAX {
                ready.push(Reverse((key(c), c)));
            }
        }
    }
    let in_causal_order = |mut members: Vec<usize>| -> Vec<usize> {
        members.sort_unstable_by_key(|&i| rank[i]);
        members
    };
    let ids = |members: &[usize]| members.iter().map(|&i| events[i].id).collect::<Vec<_>>();

    // Correlation groups.
    let mut flows: HashMap<CorrelationId, Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        flows.entry(e.correlation_id).or_default().push(i);
    }
    let mut correlation: Vec<Vec<usize>> = flows
        .values()
        .filter(|m| m.len() >= 2)
        .map(|m| in_causal_order(m.clone()))
        .collect();
    correlation.sort_unstable_by_key(|m| rank[m[0]]);

    // Chains: connected components of the parent links.
    let mut dsu = Dsu::new(n);
    for (i, p) in parent.iter().enumerate() {
        if let Some(p) = *p {
            dsu.union(i, p);
        }
    }
    let mut trees: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..n {
        if parent[i].is_some() || !children[i].is_empty() {
            trees.entry(dsu.find(i)).or_default().push(i);
        }
    }
    let mut chains: Vec<Vec<usize>> = trees.into_values().map(in_causal_order).collect();
    chains.sort_unstable_by_key(|m| rank[m[0]]);

    // Time windows over events alone in their flow.
    let mut windows: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    let lonely: Vec<usize> = by_time
        .iter()
        .copied()
        .filter(|&i| flows[&events[i].correlation_id].len() == 1)
        .collect();
    let mut start = 0;
    while start < lonely.len() {
        let t0 = events[lonely[start]].timestamp_us;
        let mut end = start + 1;
        while end < lonely.len() && events[lonely[end]].timestamp_us - t0 <= options.window_us {
            end += 1;
        }
        if end - start >= 2 {
            let t1 = events[lonely[end - 1]].timestamp_us;
            windows.push((t0, t1, in_causal_order(lonely[start..end].to_vec())));
        }
        start = end;
    }

    let mut groups = Vec::with_capacity(correlation.len() + chains.len() + windows.len());
    groups.extend(correlation.iter().map(|m| CorrelationGroup {
        kind: GroupKind::Correlation(events[m[0]].correlation_id),
        events: ids(m),
    }));
    groups.extend(chains.iter().map(|m| CorrelationGroup {
        kind: GroupKind::Chain {
            root: events[m[0]].id,
        },
        events: ids(m),
    }));
    groups.extend(
        windows
            .iter()
            .map(|(start_us, end_us, m)| CorrelationGroup {
                kind: GroupKind::TimeWindow {
                    start_us: *start_us,
                    end_us: *end_us,
                },
                events: ids(m),
            }),
    );
    groups
}

/// Union-find with path halving and union by size.
struct Dsu {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl Dsu {
    fn new(n: usize) -> Self {
        Dsu {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }
}

/// The host side of the correlator: a [`Port`] running `foundation-correlator`.
/// Cheap to clone (clones share the port).
///
/// A correlator that crashes, hangs or answers something undecodable (or groups that
/// name events not in the batch) makes that call fail — with [`Error::PortExited`],
/// [`Error::Timeout`] or [`Error::Correlation`] — and is restarted; the next call goes to
/// the new process. Dropping the last clone shuts the port down (see [`Port`]).
///
/// # Wire protocol
/// One request frame holds a MessagePack [`CorrelateRequest`] (a map with `events` and
/// `options`); the reply frame holds a [`CorrelateReply`]: the groups, or an error
/// message when the request could not be decoded.
///
/// # Example
/// With the binary built, correlate through the correlator process:
/// ```no_run
/// # use foundation_core::events::{Correlator, Event};
/// # #[tokio::main] async fn main() -> foundation_core::Result<()> {
/// let correlator = Correlator::spawn_next_to_current_exe()?;
/// let batch = vec![Event::new("user", &1)?, Event::new("user", &2)?];
/// let groups = correlator.correlate(&batch).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Correlator {
    port: Port,
    options: CorrelateOptions,
}

impl Correlator {
    /// File name of the correlator binary (without the platform's executable suffix).
    pub const BINARY: &'static str = "foundation-correlator";

    /// A port builder for the correlator at `program`, named `correlator`, with the port
    /// defaults; adjust it (timeouts, limits, environment) and pass it to
    /// [`from_builder`](Self::from_builder).
    pub fn port_builder(program: impl AsRef<Path>) -> PortBuilder {
        Port::builder(program).name("correlator")
    }

    /// Starts the correlator binary at `program` with default settings.
    pub fn spawn(program: impl AsRef<Path>) -> Result<Correlator> {
        Correlator::from_builder(Correlator::port_builder(program))
    }

    /// Starts the correlator found by [`locate`](Self::locate).
    pub fn spawn_next_to_current_exe() -> Result<Correlator> {
        Correlator::spawn(Correlator::locate()?)
    }

    /// Finds `foundation-correlator` in the directory of the current executable, or in
    /// its parent (where cargo puts binaries when the current executable is a test in
    /// `target/<profile>/deps`).
    pub fn locate() -> Result<PathBuf> {
        let exe = std::env::current_exe().map_err(|source| Error::Io {
            context: "finding the current executable".into(),
            source,
        })?;
        let file = format!("{}{}", Correlator::BINARY, std::env::consts::EXE_SUFFIX);
        let dir = exe.parent();
        dir.into_iter()
            .chain(dir.and_then(Path::parent))
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Io {
                context: format!("looking for {file} next to {}", exe.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
    }

    /// Spawns the port `builder` describes (it should run `foundation-correlator`).
    pub fn from_builder(builder: PortBuilder) -> Result<Correlator> {
        Ok(Correlator {
            port: builder.spawn()?,
            options: CorrelateOptions::default(),
        })
    }

    /// Uses `options` for [`correlate`](Self::correlate).
    pub fn with_options(mut self, options: CorrelateOptions) -> Self {
        self.options = options;
        self
    }

    /// The port the correlator runs behind (for its stats).
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Correlates `events` with this correlator's options.
    pub async fn correlate(&self, events: &[Event]) -> Result<Vec<CorrelationGroup>> {
        self.correlate_with(events, &self.options).await
    }

    /// Correlates `events` with `options`.
    pub async fn correlate_with(
        &self,
        events: &[Event],
        options: &CorrelateOptions,
    ) -> Result<Vec<CorrelationGroup>> {
        let request =
            rmp_serde::to_vec_named(&CorrelateRequestRef { events, options }).map_err(|e| {
                Error::Encode {
                    path: "correlation request".into(),
                    detail: e.to_string(),
                }
            })?;
        let reply = self.port.request(Bytes::from(request)).await?;
        let groups = match rmp_serde::from_slice::<CorrelateReply>(&reply) {
            Ok(CorrelateReply::Groups(groups)) => groups,
            Ok(CorrelateReply::Error(message)) => {
                return Err(Error::Correlation {
                    reason: format!("the correlator rejected the request: {message}"),
                })
            }
            Err(e) => return Err(self.garbage(format!("undecodable reply: {e}"))),
        };
        let known: HashSet<EventId> = events.iter().map(|e| e.id).collect();
        if let Some(id) = groups
            .iter()
            .flat_map(|g| &g.events)
            .find(|id| !known.contains(id))
        {
            return Err(self.garbage(format!("reply names event {id}, which is not in the batch")));
        }
        Ok(groups)
    }

    /// A correlator that answers nonsense is not trusted with the next request.
    fn garbage(&self, reason: String) -> Error {
        tracing::warn!(port = %self.port.name(), %reason, "correlator answered garbage; restarting it");
        self.port.restart();
        Error::Correlation { reason }
    }

    /// The child's side: answers one request frame with one reply frame. Never panics;
    /// an undecodable request gets a [`CorrelateReply::Error`]. Used by the
    /// `foundation-correlator` binary.
    pub fn answer(request: &[u8]) -> Vec<u8> {
        let reply =
            std::panic::catch_unwind(
                || match rmp_serde::from_slice::<CorrelateRequest>(request) {
                    Ok(req) => CorrelateReply::Groups(correlate_events(&req.events, &req.options)),
                    Err(e) => CorrelateReply::Error(format!("undecodable request: {e}")),
                },
            )
            .unwrap_or_else(|_| {
                CorrelateReply::Error("the correlator failed on this request".into())
            });
        rmp_serde::to_vec_named(&reply).unwrap_or_else(|e| {
            // Only reachable if encoding the groups fails; report that instead.
            rmp_serde::to_vec_named(&CorrelateReply::Error(format!("encoding the reply: {e}")))
                .unwrap_or_default()
        })
    }

    /// Shuts the correlator's port down and waits for the process (see [`Port::shutdown`]).
    pub async fn shutdown(&self) {
        self.port.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    fn at(t: u64) -> Event {
        let mut e = Event::with_raw_payload(EventType::new("t").unwrap(), Bytes::new());
        e.timestamp_us = t;
        e
    }

    #[test]
    fn cycles_in_forged_parent_links_terminate_and_are_broken_at_the_earliest() {
        let mut a = at(10);
        let mut b = at(20);
        let c = at(30);
        a.parent_id = Some(b.id);
        b.parent_id = Some(a.id);
        let mut d = c.clone();
        d.id = EventId::new();
        d.parent_id = Some(d.id); // its own parent: ignored
        let groups = correlate_events(&[b.clone(), a.clone(), c, d], &CorrelateOptions::default());
        let chain = groups
            .iter()
            .find(|g| matches!(g.kind, GroupKind::Chain { .. }))
            .unwrap();
        assert_eq!(chain.kind, GroupKind::Chain { root: a.id });
        assert_eq!(chain.events, vec![a.id, b.id]);
    }

    #[test]
    fn answer_never_panics_and_reports_bad_requests() {
        for bad in [
            &b""[..],
            b"\xc1",
            b"\x81\xa6events\xdd\xff\xff\xff\xff",
            b"\x92\x01",
        ] {
            let reply: CorrelateReply = rmp_serde::from_slice(&Correlator::answer(bad)).unwrap();
            assert!(matches!(reply, CorrelateReply::Error(_)), "{reply:?}");
        }
        let events = vec![at(1), at(2)];
        let req = rmp_serde::to_vec_named(&CorrelateRequestRef {
            events: &events,
            options: &CorrelateOptions::default(),
        })
        .unwrap();
        let reply: CorrelateReply = rmp_serde::from_slice(&Correlator::answer(&req)).unwrap();
        assert_eq!(
            reply,
            CorrelateReply::Groups(vec![CorrelationGroup {
                kind: GroupKind::TimeWindow {
                    start_us: 1,
                    end_us: 2
                },
                events: vec![events[0].id, events[1].id],
            }])
        );
    }
}
