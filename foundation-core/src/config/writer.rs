//! The write side: one writer task per namespace.
//!
//! Every update of a namespace goes through its writer, which applies them one at a time
//! in arrival order. For each it: turns the request into edits of single keys, checks
//! frozen prefixes, table/leaf conflicts, limits and validation rules against the state the
//! update would produce, and only then publishes that state, records history, and
//! notifies subscribers with path, version and size — never the value. A rejected update
//! publishes nothing, so value, version and history stay as they were.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rmpv::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::path::{ancestors, is_under};
use super::store::{Entry, State};
use super::validate::Rule;
use super::value::{self, Leaf};
use super::{Change, ChangeKind, HistoryEntry, Layer, Notice, NsShared, Report};
use crate::budget::Budget;
use crate::error::{Error, Limit, Result};

/// A request to a namespace's writer.
pub(crate) enum Command {
    Apply {
        op: Op,
        layer: Layer,
        dry_run: bool,
        reply: oneshot::Sender<Result<Report>>,
    },
    AddRule {
        path: Arc<str>,
        rule: Rule,
        reply: oneshot::Sender<()>,
    },
    Freeze {
        prefix: Arc<str>,
        frozen: bool,
        reply: oneshot::Sender<()>,
    },
    History {
        path: Arc<str>,
        reply: oneshot::Sender<Vec<HistoryEntry>>,
    },
    Subscribe {
        prefix: Arc<str>,
        tx: mpsc::Sender<Notice>,
        reply: oneshot::Sender<()>,
    },
    /// First phase of a multi-namespace load: check `op` (a dry run) and, if it passes,
    /// hold the namespace — apply nothing else — until `decision` says commit (a sender
    /// for the result arrives) or abort (it is dropped).
    Prepare {
        op: Op,
        layer: Layer,
        reply: oneshot::Sender<Result<Report>>,
        decision: oneshot::Receiver<oneshot::Sender<Result<Report>>>,
    },
}

/// What an `Apply` asks for.
#[derive(Clone)]
pub(crate) enum Op {
    /// Store `leaves` (all at or under `at`). With `replace`, leaves under `at` that are
    /// not among them are removed (a `set`); without, they stay (a merge, a source load).
    Write {
        at: Arc<str>,
        leaves: Vec<Leaf>,
        replace: bool,
    },
    /// Remove the leaf at `at`, or every leaf under it.
    Remove { at: Arc<str> },
    /// Make an earlier version of a leaf current again (as a new version).
    Rollback { path: Arc<str>, version: u64 },
    /// Return every key under the prefix to its value from the layered sources.
    Reset { prefix: Arc<str> },
}

/// One edit of one key, as planned from an `Op`.
struct Edit {
    path: Arc<str>,
    /// `None` removes the key's current value.
    put: Option<(Bytes, Value)>,
    layer: Layer,
    /// Take effect even over a value of a higher layer (used by reset).
    force: bool,
}

/// What the writer knows of a key beyond its current value.
#[derive(Default)]
struct KeyMeta {
    /// Last version assigned. Never goes back, even when the key is removed.
    version: u64,
    /// Layer of the current value; `None` while the key has no value.
    layer: Option<Layer>,
    /// The values the layered sources gave this key (defaults, file, environment).
    sources: [Option<Bytes>; 3],
    history: VecDeque<HistoryEntry>,
}

struct Subscriber {
    prefix: Arc<str>,
    tx: mpsc::Sender<Notice>,
    /// Notices that did not fit in the subscriber's queue since the last delivered one;
    /// reported in-band, in order, as `Notice::Lagged` once there is room.
    missed: u64,
}

/// A planned effective change of one key.
struct Planned {
    path: Arc<str>,
    version: u64,
    raw: Option<Bytes>,
    layer: Option<Layer>,
}

pub(crate) struct Writer {
    shared: Arc<NsShared>,
    meta: HashMap<Arc<str>, KeyMeta>,
    rules: BTreeMap<Arc<str>, Vec<Rule>>,
    frozen: Vec<Arc<str>>,
    subscribers: Vec<Subscriber>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<NsShared>) -> Self {
        Writer {
            shared,
            meta: HashMap::new(),
            rules: BTreeMap::new(),
            frozen: Vec::new(),
            subscribers: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let _live = crate::telemetry::TaskGuard::new();
        loop {
            let cmd = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            self.shared.metrics.queue_depth.set(rx.len() as f64);
            self.handle(cmd).await;
        }
        tracing::debug!(namespace = %self.shared.name, "config writer stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Apply {
                op,
                layer,
                dry_run,
                reply,
            } => {
                let started = Instant::now();
                let result = self.apply(op, layer, dry_run).await;
                if let Err(e) = &result {
                    self.shared.metrics.rejected(e);
                }
                self.shared
                    .metrics
                    .apply_seconds
                    .record(started.elapsed().as_secs_f64());
                let _ = reply.send(result);
            }
            Command::AddRule { path, rule, reply } => {
                self.rules.entry(path).or_default().push(rule);
                let _ = reply.send(());
            }
            Command::Freeze {
                prefix,
                frozen,
                reply,
            } => {
                self.frozen.retain(|p| *p != prefix);
                if frozen {
                    self.frozen.push(prefix);
                }
                let _ = reply.send(());
            }
            Command::Prepare {
                op,
                layer,
                reply,
                decision,
            } => {
                let checked = self.apply(op.clone(), layer, true).await;
                if let Err(e) = &checked {
                    self.shared.metrics.rejected(e);
                }
                let ok = checked.is_ok();
                if reply.send(checked).is_err() || !ok {
                    return;
                }
                // Held: no other command of this namespace runs until the loader decides,
                // so the commit applies to the state that was checked.
                if let Ok(result) = decision.await {
                    let applied = self.apply(op, layer, false).await;
                    if let Err(e) = &applied {
                        self.shared.metrics.rejected(e);
                    }
                    let _ = result.send(applied);
                }
            }
            Command::History { path, reply } => {
                let h = self
                    .meta
                    .get(&path)
                    .map(|m| m.history.iter().cloned().collect());
                let _ = reply.send(h.unwrap_or_default());
            }
            Command::Subscribe { prefix, tx, reply } => {
                self.subscribers.push(Subscriber {
                    prefix,
                    tx,
                    missed: 0,
                });
                self.shared
                    .metrics
                    .subscribers
                    .set(self.subscribers.len() as f64);
                let _ = reply.send(());
            }
        }
    }

    /// Turns an operation into single-key edits against the current state.
    fn edits(&self, state: &State, op: Op, layer: Layer) -> Result<Vec<Edit>> {
        let ns = &self.shared.name;
        let mut edits = Vec::new();
        match op {
            Op::Write {
                at,
                leaves,
                replace,
            } => {
                if replace {
                    let keep: HashSet<&str> = leaves.iter().map(|l| &*l.path).collect();
                    let under = state.entries.contains_key(&at).then(|| at.clone());
                    for path in under.into_iter().chain(state.children(&at).cloned()) {
                        if !keep.contains(&*path) {
                            edits.push(Edit {
                                path,
                                put: None,
                                layer,
                                force: false,
                            });
                        }
                    }
                }
                edits.extend(leaves.into_iter().map(|l| Edit {
                    path: l.path,
                    put: Some((l.raw, l.value)),
                    layer,
                    force: false,
                }));
            }
            Op::Remove { at } => {
                let under = state.entries.contains_key(&at).then(|| at.clone());
                for path in under.into_iter().chain(state.children(&at).cloned()) {
                    edits.push(Edit {
                        path,
                        put: None,
                        layer,
                        force: false,
                    });
                }
                if edits.is_empty() {
                    return Err(Error::KeyNotFound {
                        namespace: ns.to_string(),
                        path: at.to_string(),
                    });
                }
            }
            Op::Rollback { path, version } => {
                let entry = self
                    .meta
                    .get(&path)
                    .and_then(|m| m.history.iter().find(|h| h.version == version))
                    .ok_or_else(|| Error::VersionNotFound {
                        namespace: ns.to_string(),
                        path: path.to_string(),
                        version,
                    })?;
                let value = value::decode_value(&path, &entry.raw)?;
                edits.push(Edit {
                    path,
                    put: Some((entry.raw.clone(), value)),
                    layer,
                    force: true,
                });
            }
            Op::Reset { prefix } => {
                for (path, meta) in &self.meta {
                    if !is_under(path, &prefix) {
                        continue;
                    }
                    let source = meta
                        .sources
                        .iter()
                        .enumerate()
                        .rev()
                        .find_map(|(i, s)| s.as_ref().map(|raw| (Layer::SOURCES[i], raw)));
                    match source {
                        Some((src_layer, raw)) if meta.layer != Some(src_layer) => {
                            let value = value::decode_value(path, raw)?;
                            edits.push(Edit {
                                path: path.clone(),
                                put: Some((raw.clone(), value)),
                                layer: src_layer,
                                force: true,
                            });
                        }
                        None if meta.layer.is_some() => {
                            edits.push(Edit {
                                path: path.clone(),
                                put: None,
                                layer,
                                force: true,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(edits)
    }

    async fn apply(&mut self, op: Op, layer: Layer, dry_run: bool) -> Result<Report> {
        let ns = self.shared.name.clone();
        let limits = self.shared.settings.limits.clone();
        let current = self.shared.state.load_full();
        let edits = self.edits(&current, op, layer)?;
        let mut budget = Budget::new(self.shared.settings.merge_budget);

        // Frozen prefixes cover every layer: a frozen key changes only after unfreeze.
        for e in &edits {
            if let Some(f) = self.frozen.iter().find(|f| is_under(&e.path, f)) {
                return Err(Error::Frozen {
                    namespace: ns.to_string(),
                    path: e.path.to_string(),
                    frozen: f.to_string(),
                });
            }
        }

        // Plan: build the next state on a structural copy of the current one.
        let mut next = (*current).clone();
        let mut planned = Vec::with_capacity(edits.len());
        let mut sources = Vec::new();
        let mut shadowed = 0usize;
        for e in &edits {
            budget.tick().await;
            let meta = self.meta.get(&e.path);
            if let (Some((raw, _)), true) = (&e.put, e.layer.is_source()) {
                sources.push((e.path.clone(), e.layer, raw.clone()));
            }
            let current_layer = meta.and_then(|m| m.layer);
            if !e.force && current_layer.is_some_and(|c| c > e.layer) {
                // Stays hidden for now, but becomes current on reset: its own rules must hold.
                if let Some((_, value)) = &e.put {
                    self.check_leaf_rules(&e.path, value)?;
                }
                shadowed += 1;
                continue;
            }
            let version = meta.map_or(0, |m| m.version) + 1;
            match &e.put {
                Some((raw, _)) => {
                    if let Some(a) = ancestors(&e.path).find(|a| next.entries.contains_key(*a)) {
                        return Err(Error::InvalidPath {
                            path: e.path.to_string(),
                            reason: format!(
                                "`{a}` holds a value, not a table; set or remove `{a}` first"
                            ),
                        });
                    }
                    next.insert(e.path.clone(), Arc::new(Entry::new(version, raw.clone())));
                    planned.push(Planned {
                        path: e.path.clone(),
                        version,
                        raw: Some(raw.clone()),
                        layer: Some(e.layer),
                    });
                }
                None => {
                    if next.remove(&e.path) {
                        planned.push(Planned {
                            path: e.path.clone(),
                            version,
                            raw: None,
                            layer: None,
                        });
                    }
                }
            }
        }
        for p in planned.iter().filter(|p| p.raw.is_some()) {
            if next.has_children(&p.path) {
                return Err(Error::InvalidPath {
                    path: p.path.to_string(),
                    reason: "holds a table; set the table itself to replace it".into(),
                });
            }
        }
        if next.entries.len() > limits.max_keys {
            return Err(Error::LimitExceeded {
                limit: Limit::KeyCount,
                max: limits.max_keys,
                actual: next.entries.len(),
                path: String::new(),
            });
        }
        self.check_rules(&next, &edits, &mut budget).await?;

        let report = Report {
            changed: planned.len(),
            shadowed,
            yields: budget.yields(),
        };
        if dry_run {
            return Ok(report);
        }

        // Commit: publish, then record, then notify.
        self.shared.state.store(Arc::new(next));
        for (path, layer, raw) in sources {
            let meta = self.meta.entry(path).or_default();
            meta.sources[layer as usize] = Some(raw);
        }
        let depth = self.shared.settings.history_depth;
        for p in &planned {
            let meta = self.meta.entry(p.path.clone()).or_default();
            meta.version = p.version;
            meta.layer = p.layer;
            if let (Some(raw), Some(layer)) = (&p.raw, p.layer) {
                while meta.history.len() >= depth.max(1) {
                    meta.history.pop_front();
                }
                meta.history.push_back(HistoryEntry {
                    version: p.version,
                    raw: raw.clone(),
                    layer,
                });
            }
        }
        let m = &self.shared.metrics;
        m.updates.increment(planned.len() as u64);
        m.keys.set(self.shared.state.load().entries.len() as f64);
        self.notify(&ns, &planned, &mut budget).await;
        Ok(report)
    }

    fn check_leaf_rules(&self, path: &str, value: &Value) -> Result<()> {
        for rule in self.rules.get(path).into_iter().flatten() {
            rule.check(value).map_err(|reason| Error::Validation {
                namespace: self.shared.name.to_string(),
                path: path.to_string(),
                rule: rule.to_string(),
                reason,
            })?;
        }
        Ok(())
    }

    async fn check_rules(&self, next: &State, edits: &[Edit], budget: &mut Budget) -> Result<()> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let mut to_check: Vec<&Arc<str>> = Vec::new();
        let mut seen = HashSet::new();
        for e in edits {
            budget.tick().await;
            let here = std::iter::once(&*e.path).chain(ancestors(&e.path));
            for p in here {
                if let Some((k, _)) = self.rules.get_key_value(p) {
                    if seen.insert(k.clone()) {
                        to_check.push(k);
                    }
                }
            }
        }
        for path in to_check {
            let Some(value) = next.value_at(path) else {
                continue;
            };
            for rule in &self.rules[path] {
                rule.check(&value).map_err(|reason| Error::Validation {
                    namespace: self.shared.name.to_string(),
                    path: path.to_string(),
                    rule: rule.to_string(),
                    reason,
                })?;
            }
        }
        Ok(())
    }

    async fn notify(&mut self, ns: &Arc<str>, planned: &[Planned], budget: &mut Budget) {
        let m = &self.shared.metrics;
        let mut closed = false;
        for p in planned {
            let change = Change {
                namespace: ns.clone(),
                path: p.path.clone(),
                version: p.version,
                size: p.raw.as_ref().map_or(0, Bytes::len),
                kind: if p.raw.is_some() {
                    ChangeKind::Set
                } else {
                    ChangeKind::Removed
                },
            };
            for sub in self
                .subscribers
                .iter_mut()
                .filter(|s| is_under(&p.path, &s.prefix))
            {
                budget.tick().await;
                if sub.missed > 0 {
                    match sub.tx.try_send(Notice::Lagged(sub.missed)) {
                        Ok(()) => sub.missed = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            sub.missed += 1;
                            m.dropped.increment(1);
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            closed = true;
                            continue;
                        }
                    }
                }
                match sub.tx.try_send(Notice::Change(change.clone())) {
                    Ok(()) => m.notifications.increment(1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.missed += 1;
                        m.dropped.increment(1);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed || self.subscribers.iter().any(|s| s.tx.is_closed()) {
            self.subscribers.retain(|s| !s.tx.is_closed());
            m.subscribers.set(self.subscribers.len() as f64);
        }
    }
}
