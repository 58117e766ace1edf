//! Namespaced, layered, validated configuration.
//!
//! A [`Config`] holds any number of namespaces, created by the application at run time.
//! Each [`Namespace`] is a tree of values addressed by dot-separated paths
//! (`db.pool.size`); setting a nested path creates the tables above it, and setting a
//! struct at `db` stores one leaf per field below it.
//!
//! # Model
//! * **Reads never wait.** A namespace's state is an immutable, structurally shared
//!   snapshot published atomically; [`Namespace::get`] loads it without a lock. Values are
//!   stored encoded (MessagePack [`Bytes`]); the first typed read of a value decodes it and
//!   caches the result beside it, so a hot typed read does not decode again.
//!   [`Namespace::get_raw`] returns the stored bytes without copying.
//! * **One writer per namespace.** Updates are applied in arrival order by the
//!   namespace's writer task, which checks frozen paths, limits and validation rules
//!   against the state the update would produce and publishes it only if all pass. A
//!   rejected update leaves every value and version unchanged.
//! * **Notifications carry path, version and size — never the value.** Subscribers of a
//!   prefix receive [`Change`]s in version order; one whose queue is full is told how many
//!   it missed ([`RecvError::Lagged`]), and the drop is counted.
//! * **Layers.** Each key has a value per source: defaults < TOML file < environment
//!   (`FOUNDATION_<NAMESPACE>__<PATH>`) < run-time updates. A lower layer never overrides a
//!   higher one; [`Namespace::reset`] drops run-time updates and returns to the sources.
//!   A malformed source is reported with source, key and line and changes nothing.
//! * **History.** Every key keeps its last versions ([`ConfigSettings::history_depth`]);
//!   [`Namespace::rollback`] makes an earlier one current again, as a new version.
//! * **Limits.** Path depth, segment length, value size (1 MiB by default), nesting depth
//!   and key count are bounded ([`Limits`]); a violation is an [`Error::LimitExceeded`].
//!
//! # Example
//! ```
//! use foundation_core::config::{Config, Rule};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Pool { size: u32, timeout_ms: u64 }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_core::Result<()> {
//! let config = Config::new();
//! let app = config.create_namespace("app")?;
//! app.add_rule("db.pool.size", Rule::range(1.0, 64.0)).await;
//!
//! app.set("db.pool", &Pool { size: 8, timeout_ms: 500 }).await?;
//! assert_eq!(app.get::<u32>("db.pool.size")?, 8);
//!
//! let mut changes = app.subscribe("db").await?;
//! app.set("db.pool.size", &16u32).await?;
//! let change = changes.recv().await.unwrap();
//! assert_eq!((&*change.path, change.version), ("db.pool.size", 2));
//!
//! // Rejected: out of range. Nothing changes.
//! assert!(app.set("db.pool.size", &100u32).await.is_err());
//! assert_eq!(app.get::<Pool>("db.pool")?, Pool { size: 16, timeout_ms: 500 });
//! # Ok(()) }
//! ```

mod path;
mod source;
mod store;
mod validate;
mod value;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics::{Counter, Gauge, Histogram};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::error::{Error, Result};
/// The dynamic MessagePack value that validation rules inspect (re-exported `rmpv::Value`).
pub use rmpv::Value;
pub use validate::{CustomFn, Kind, Rule};
use writer::{Command, Op, Writer};

/// Size limits of a configuration. A violation is an [`Error::LimitExceeded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Most segments in a path (`a.b.c` has 3). Default 16.
    pub max_path_depth: usize,
    /// Longest path segment, in bytes. Default 64.
    pub max_segment_len: usize,
    /// Largest encoded value of one leaf, in bytes. Default 1 MiB.
    pub max_value_size: usize,
    /// Deepest nesting of arrays and maps inside one leaf value. Default 32.
    pub max_nesting_depth: usize,
    /// Most keys (leaves) in one namespace. Default 1,000,000.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_path_depth: 16,
            max_segment_len: 64,
            max_value_size: 1 << 20,
            max_nesting_depth: 32,
            max_keys: 1_000_000,
        }
    }
}

/// Settings of a [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigSettings {
    /// Size limits.
    pub limits: Limits,
    /// Versions kept per key for [`Namespace::history`] and rollback (at least 1).
    /// Default 16.
    pub history_depth: usize,
    /// Notices queued per subscriber before it lags. Default 1024.
    pub subscriber_capacity: usize,
    /// Updates queued per namespace writer before `set` waits. Default 1024.
    pub writer_queue: usize,
    /// Units of work (leaves) between yields of long merges and loads. Default 1024.
    pub merge_budget: u32,
    /// Prefix of configuration environment variables. Default `FOUNDATION_`.
    pub env_prefix: String,
}

impl ConfigSettings {
    /// Checks every setting: each limit, `history_depth`, `subscriber_capacity`,
    /// `writer_queue` and `merge_budget` must be at least 1.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        let l = &self.limits;
        let checks: [(&str, usize); 9] = [
            ("limits.max_path_depth", l.max_path_depth),
            ("limits.max_segment_len", l.max_segment_len),
            ("limits.max_value_size", l.max_value_size),
            ("limits.max_nesting_depth", l.max_nesting_depth),
            ("limits.max_keys", l.max_keys),
            ("history_depth", self.history_depth),
            ("subscriber_capacity", self.subscriber_capacity),
            ("writer_queue", self.writer_queue),
            ("merge_budget", self.merge_budget as usize),
        ];
        for (name, value) in checks {
            if value == 0 {
                return Err(Error::InvalidArgument(format!(
                    "configuration setting `{name}` must be at least 1, got 0"
                )));
            }
        }
        Ok(())
    }
}

impl Default for ConfigSettings {
    fn default() -> Self {
        ConfigSettings {
            limits: Limits::default(),
            history_depth: 16,
            subscriber_capacity: 1024,
            writer_queue: 1024,
            merge_budget: 1024,
            env_prefix: "FOUNDATION_".into(),
        }
    }
}

/// Where a key's current value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// [`Namespace::set_default`].
    Default = 0,
    /// A TOML file or document.
    File = 1,
    /// An environment variable.
    Env = 2,
    /// A run-time update (`set`, `merge`, `rollback`).
    Runtime = 3,
}

impl Layer {
    const SOURCES: [Layer; 3] = [Layer::Default, Layer::File, Layer::Env];

    fn is_source(self) -> bool {
        self != Layer::Runtime
    }
}

/// One version in a key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The version this value had.
    pub version: u64,
    /// The encoded value.
    pub raw: Bytes,
    /// Where it came from.
    pub layer: Layer,
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys whose current value changed (set or removed).
    pub changed: usize,
    /// Keys given a source value that stays hidden under a higher layer's value.
    pub shadowed: usize,
    /// Times the writer yielded to the scheduler while applying it.
    pub yields: u64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It has a new value.
    Set,
    /// Its value was removed.
    Removed,
}

/// A change notification. It names the key and version; read the value with `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The key's path.
    pub path: Arc<str>,
    /// The key's new version.
    pub version: u64,
    /// Encoded size of the new value in bytes (0 when removed).
    pub size: usize,
    /// Set or removed.
    pub kind: ChangeKind,
}

pub(crate) enum Notice {
    Change(Change),
    Lagged(u64),
}

/// Why [`Subscription::recv`] returned no change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// This many changes did not fit in the subscription's queue and were dropped (and
    /// counted in `foundation_config_notifications_dropped_total`). Later changes follow.
    #[error("subscriber lagged and missed {0} changes")]
    Lagged(u64),
    /// The namespace's writer stopped; no more changes will come.
    #[error("configuration writer stopped")]
    Closed,
}

/// A stream of [`Change`]s under a prefix, in the order the writer applied them.
///
/// Dropping it unsubscribes; the writer notices at its next notification.
pub struct Subscription {
    rx: mpsc::Receiver<Notice>,
}

impl Subscription {
    /// The next change; [`RecvError::Lagged`] reports changes dropped at that point in the
    /// stream because this subscriber's queue was full.
    pub async fn recv(&mut self) -> std::result::Result<Change, RecvError> {
        match self.rx.recv().await {
            Some(Notice::Change(c)) => Ok(c),
            Some(Notice::Lagged(n)) => Err(RecvError::Lagged(n)),
            None => Err(RecvError::Closed),
        }
    }

    /// Like [`recv`](Self::recv) but returns `None` at once if no notice is queued.
    pub fn try_recv(&mut self) -> Option<std::result::Result<Change, RecvError>> {
        match self.rx.try_recv() {
            Ok(Notice::Change(c)) => Some(Ok(c)),
            Ok(Notice::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(RecvError::Closed)),
        }
    }
}

/// Pre-registered metric handles of one namespace.
pub(crate) struct NsMetrics {
    /// `foundation_config_rejected_total` by reason, in the order of [`REJECT_REASONS`].
    rejected: [Counter; REJECT_REASONS.len()],
    updates: Counter,
    notifications: Counter,
    dropped: Counter,
    keys: Gauge,
    subscribers: Gauge,
    queue_depth: Gauge,
    apply_seconds: Histogram,
}

/// Describes the configuration metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "foundation_config_updates_total",
        "Configuration keys changed by applied updates."
    );
    describe_counter!(
        "foundation_config_rejected_total",
        "Configuration updates rejected, by reason."
    );
    describe_counter!(
        "foundation_config_notifications_total",
        "Change notifications delivered to subscribers."
    );
    describe_counter!(
        "foundation_config_notifications_dropped_total",
        "Change notifications dropped because a subscriber's queue was full."
    );
    describe_gauge!(
        "foundation_config_keys",
        "Keys (leaves) in a configuration namespace."
    );
    describe_gauge!(
        "foundation_config_subscribers",
        "Subscribers of a configuration namespace."
    );
    describe_gauge!(
        "foundation_config_writer_queue_depth",
        "Updates queued for a namespace writer."
    );
    describe_histogram!(
        "foundation_config_apply_seconds",
        Unit::Seconds,
        "Time a namespace writer spent applying one request."
    );
}

/// Reasons a configuration update is rejected, as metric labels.
const REJECT_REASONS: [&str; 6] = [
    "validation",
    "frozen",
    "limit",
    "path",
    "not_found",
    "other",
];

impl NsMetrics {
    fn new(namespace: &Arc<str>) -> Self {
        let ns = namespace.to_string();
        NsMetrics {
            rejected: REJECT_REASONS.map(|reason| {
                metrics::counter!("foundation_config_rejected_total", "namespace" => ns.clone(), "reason" => reason)
            }),
            updates: metrics::counter!("foundation_config_updates_total", "namespace" => ns.clone()),
            notifications: metrics::counter!("foundation_config_notifications_total", "namespace" => ns.clone()),
            dropped: metrics::counter!("foundation_config_notifications_dropped_total", "namespace" => ns.clone()),
            keys: metrics::gauge!("foundation_config_keys", "namespace" => ns.clone()),
            subscribers: metrics::gauge!("foundation_config_subscribers", "namespace" => ns.clone()),
            queue_depth: metrics::gauge!("foundation_config_writer_queue_depth", "namespace" => ns.clone()),
            apply_seconds: metrics::histogram!("foundation_config_apply_seconds", "namespace" => ns),
        }
    }

    /// Counts a rejected update by reason.
    fn rejected(&self, e: &Error) {
        let reason = match e {
            Error::Validation { .. } => 0,
            Error::Frozen { .. } => 1,
            Error::LimitExceeded { .. } => 2,
            Error::InvalidPath { .. } => 3,
            Error::KeyNotFound { .. } | Error::VersionNotFound { .. } => 4,
            _ => 5,
        };
        self.rejected[reason].increment(1);
    }
}

/// What a namespace's writer and readers share.
pub(crate) struct NsShared {
    name: Arc<str>,
    state: ArcSwap<store::State>,
    settings: Arc<ConfigSettings>,
    metrics: NsMetrics,
}

/// A handle to one namespace: cheap to clone, reads without waiting, updates through
/// the namespace's writer task.
///
/// The writer stops when [`Config::shutdown`] is called or the last [`Config`] clone is
/// dropped; after that a `Namespace` still reads its last state, and updates fail with
/// [`Error::Shutdown`].
#[derive(Clone)]
pub struct Namespace {
    shared: Arc<NsShared>,
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.shared.name)
            .field("keys", &self.shared.state.load().entries.len())
            .finish()
    }
}

/// A consistent view of a namespace at one instant: reads from it never see a later
/// update, and all of an update or none of it.
#[derive(Clone)]
pub struct Snapshot {
    namespace: Arc<str>,
    state: Arc<store::State>,
}

impl Snapshot {
    /// Typed read; see [`Namespace::get`].
    pub fn get<T>(&self, path: &str) -> Result<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.state.get(&self.namespace, path)
    }

    /// Typed read without cloning; see [`Namespace::get_arc`].
    pub fn get_arc<T>(&self, path: &str) -> Result<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.state.get_arc(&self.namespace, path)
    }

    /// Encoded bytes; see [`Namespace::get_raw`].
    pub fn get_raw(&self, path: &str) -> Result<Bytes> {
        self.state.get_raw(&self.namespace, path)
    }

    /// The version of the leaf at `path`, if it has a value.
    pub fn version(&self, path: &str) -> Option<u64> {
        self.state.version(path)
    }

    /// Leaf paths at or under `prefix` (`""` for all), in order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        if prefix.is_empty() {
            return self.state.keys.iter().map(|k| k.to_string()).collect();
        }
        let own = self
            .state
            .entries
            .contains_key(prefix)
            .then(|| prefix.to_string());
        own.into_iter()
            .chain(self.state.children(prefix).map(|k| k.to_string()))
            .collect()
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.state.entries.len()
    }

    /// Whether the namespace holds no value.
    pub fn is_empty(&self) -> bool {
        self.state.entries.is_empty()
    }
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A consistent view for several reads.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespace: self.shared.name.clone(),
            state: self.shared.state.load_full(),
        }
    }

    /// Reads the value at `path` as `T` (a clone of the cached decoded value).
    ///
    /// `path` may name a leaf or a table (then the table is rebuilt from its leaves and
    /// decoded, which is slower and not cached). Never waits for the writer.
    pub fn get<T>(&self, path: &str) -> Result<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.shared.state.load().get(&self.shared.name, path)
    }

    /// Reads the value at `path` as a shared `Arc<T>`, without cloning `T`.
    pub fn get_arc<T>(&self, path: &str) -> Result<Arc<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.shared.state.load().get_arc(&self.shared.name, path)
    }

    /// The stored MessagePack bytes of the leaf at `path` — a reference-count bump, never
    /// a copy. For a table, the encoding of the table rebuilt from its leaves.
    pub fn get_raw(&self, path: &str) -> Result<Bytes> {
        self.shared.state.load().get_raw(&self.shared.name, path)
    }

    /// The version of the leaf at `path`, if it has a value.
    pub fn version(&self, path: &str) -> Option<u64> {
        self.shared.state.load().version(path)
    }

    fn path(&self, path: &str) -> Result<Arc<str>> {
        path::parse(path, &self.shared.settings.limits)
    }

    fn prefix(&self, prefix: &str) -> Result<Arc<str>> {
        if prefix.is_empty() {
            Ok(Arc::from(""))
        } else {
            self.path(prefix)
        }
    }

    async fn request<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Command) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let shutdown = || Error::Shutdown {
            component: "configuration writer",
        };
        self.tx.send(make(tx)).await.map_err(|_| shutdown())?;
        rx.await.map_err(|_| shutdown())
    }

    async fn apply(&self, op: Op, layer: Layer, dry_run: bool) -> Result<Report> {
        self.request(|reply| Command::Apply {
            op,
            layer,
            dry_run,
            reply,
        })
        .await?
    }

    async fn leaves<T: Serialize + ?Sized>(&self, at: &str, value: &T) -> Result<Vec<value::Leaf>> {
        let v = value::to_value(at, value)?;
        if at.is_empty() && !value::is_table(&v) {
            return Err(Error::InvalidPath {
                path: String::new(),
                reason: "the namespace root holds a table; give a table or a path".into(),
            });
        }
        let mut budget = Budget::new(self.shared.settings.merge_budget);
        let mut out = Vec::new();
        value::flatten(at, v, &self.shared.settings.limits, &mut budget, &mut out).await?;
        Ok(out)
    }

    /// Sets the value at `path`, replacing what was there: a table value replaces the
    /// whole table (leaves below `path` that the new value lacks are removed). Waits for
    /// the writer to apply it; on error nothing changed.
    pub async fn set<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<Report> {
        let at = self.path(path)?;
        let leaves = self.leaves(&at, value).await?;
        self.apply(
            Op::Write {
                at,
                leaves,
                replace: true,
            },
            Layer::Runtime,
            false,
        )
        .await
    }

    /// Sets the leaf at `path` from already encoded MessagePack bytes (one value; a map is
    /// stored as one leaf, not flattened). The bytes are checked to hold exactly one value.
    pub async fn set_raw(&self, path: &str, raw: Bytes) -> Result<Report> {
        let at = self.path(path)?;
        let limits = &self.shared.settings.limits;
        if raw.len() > limits.max_value_size {
            return Err(Error::LimitExceeded {
                limit: crate::error::Limit::ValueSize,
                max: limits.max_value_size,
                actual: raw.len(),
                path: at.to_string(),
            });
        }
        let v = value::decode_value(&at, &raw)?;
        let mut leaf = value::leaf(at.to_string(), v, limits)?;
        leaf.raw = raw;
        self.apply(
            Op::Write {
                at,
                leaves: vec![leaf],
                replace: true,
            },
            Layer::Runtime,
            false,
        )
        .await
    }

    /// Deep-merges `value` into the table at `path`: its leaves are set, others stay.
    /// Very large values (100k+ keys) are flattened and applied in slices that yield to
    /// the scheduler every [`ConfigSettings::merge_budget`] leaves.
    pub async fn merge<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<Report> {
        let at = self.prefix(path)?;
        let leaves = self.leaves(&at, value).await?;
        self.apply(
            Op::Write {
                at,
                leaves,
                replace: false,
            },
            Layer::Runtime,
            false,
        )
        .await
    }

    /// Sets the default (lowest layer) value at `path`, merged like [`merge`](Self::merge).
    /// It becomes current only where no file, environment or run-time value exists.
    pub async fn set_default<T: Serialize + ?Sized>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<Report> {
        let at = self.prefix(path)?;
        let leaves = self.leaves(&at, value).await?;
        self.apply(
            Op::Write {
                at,
                leaves,
                replace: false,
            },
            Layer::Default,
            false,
        )
        .await
    }

    /// Removes the leaf at `path`, or every leaf under it.
    pub async fn remove(&self, path: &str) -> Result<Report> {
        let at = self.path(path)?;
        self.apply(Op::Remove { at }, Layer::Runtime, false).await
    }

    /// Registers a validation rule for `path` (a leaf, or a table checked as a whole).
    /// It applies to updates from now on; current values are not re-checked.
    pub async fn add_rule(&self, path: &str, rule: Rule) {
        if let Ok(path) = self.path(path) {
            let _ = self
                .request(|reply| Command::AddRule { path, rule, reply })
                .await;
        }
    }

    /// Freezes every key at or under `prefix` (`""` for the whole namespace): updates from
    /// any layer are rejected with [`Error::Frozen`] until [`unfreeze`](Self::unfreeze).
    pub async fn freeze(&self, prefix: &str) -> Result<()> {
        let prefix = self.prefix(prefix)?;
        self.request(|reply| Command::Freeze {
            prefix,
            frozen: true,
            reply,
        })
        .await
    }

    /// Lifts a [`freeze`](Self::freeze) of exactly this prefix.
    pub async fn unfreeze(&self, prefix: &str) -> Result<()> {
        let prefix = self.prefix(prefix)?;
        self.request(|reply| Command::Freeze {
            prefix,
            frozen: false,
            reply,
        })
        .await
    }

    /// The kept versions of the leaf at `path`, oldest first.
    pub async fn history(&self, path: &str) -> Result<Vec<HistoryEntry>> {
        let path = self.path(path)?;
        self.request(|reply| Command::History { path, reply }).await
    }

    /// Makes `version` of the leaf at `path` current again, as a new version. Validators
    /// and frozen prefixes apply as to any update.
    pub async fn rollback(&self, path: &str, version: u64) -> Result<Report> {
        let path = self.path(path)?;
        self.apply(Op::Rollback { path, version }, Layer::Runtime, false)
            .await
    }

    /// Drops run-time updates at or under `prefix` (`""` for all): each key returns to its
    /// value from the highest source layer (environment > file > defaults), and keys that
    /// no source gave are removed.
    pub async fn reset(&self, prefix: &str) -> Result<Report> {
        let prefix = self.prefix(prefix)?;
        self.apply(Op::Reset { prefix }, Layer::Runtime, false)
            .await
    }

    /// Subscribes to changes of keys at or under `prefix` (`""` for all). Changes applied
    /// after this returns are delivered, in order.
    pub async fn subscribe(&self, prefix: &str) -> Result<Subscription> {
        let prefix = self.prefix(prefix)?;
        let (tx, rx) = mpsc::channel(self.shared.settings.subscriber_capacity.max(1));
        self.request(|reply| Command::Subscribe { prefix, tx, reply })
            .await?;
        Ok(Subscription { rx })
    }
}

struct ConfigInner {
    settings: Arc<ConfigSettings>,
    namespaces: RwLock<HashMap<Arc<str>, Namespace>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for ConfigInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The configuration service: a set of namespaces. Cheap to clone.
///
/// Namespaces need a tokio runtime (each has a writer task). Dropping the last clone stops
/// every writer; see [`Namespace`].
#[derive(Clone)]
pub struct Config {
    inner: Arc<ConfigInner>,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("namespaces", &self.namespaces())
            .finish()
    }
}

/// What loading a source did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The source (`file <path>`, `env`, or the name given).
    pub source: String,
    /// Leaves read from it.
    pub leaves: usize,
    /// Keys whose current value changed.
    pub changed: usize,
    /// Keys whose source value stays hidden under a higher layer.
    pub shadowed: usize,
    /// Namespaces it touched (created if new).
    pub namespaces: Vec<String>,
}

impl Config {
    /// A configuration with default settings.
    pub fn new() -> Self {
        Config::with_valid_settings(ConfigSettings::default())
    }

    /// A configuration with these settings.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first setting out of range (see
    /// [`ConfigSettings::validate`]).
    pub fn with_settings(settings: ConfigSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Config::with_valid_settings(settings))
    }

    fn with_valid_settings(settings: ConfigSettings) -> Self {
        Config {
            inner: Arc::new(ConfigInner {
                settings: Arc::new(settings),
                namespaces: RwLock::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ConfigSettings {
        &self.inner.settings
    }

    /// Creates a namespace; an error if it exists or the name is malformed, or if called
    /// outside a tokio runtime.
    pub fn create_namespace(&self, name: &str) -> Result<Namespace> {
        self.open(name, false)
    }

    /// The existing namespace `name`.
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        self.inner
            .namespaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NamespaceNotFound {
                namespace: name.to_string(),
            })
    }

    /// The namespace `name`, created if it does not exist.
    pub fn namespace_or_create(&self, name: &str) -> Result<Namespace> {
        self.open(name, true)
    }

    /// Names of all namespaces, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .namespaces
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    fn open(&self, name: &str, existing_ok: bool) -> Result<Namespace> {
        path::check_segment(name, self.inner.settings.limits.max_segment_len).map_err(
            |reason| Error::InvalidNamespace {
                namespace: name.to_string(),
                reason,
            },
        )?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("configuration namespaces need a tokio runtime".into())
        })?;
        let mut map = self.inner.namespaces.write();
        if let Some(ns) = map.get(name) {
            return if existing_ok {
                Ok(ns.clone())
            } else {
                Err(Error::NamespaceExists {
                    namespace: name.to_string(),
                })
            };
        }
        if self.inner.cancel.is_cancelled() {
            return Err(Error::Shutdown {
                component: "configuration",
            });
        }
        let name: Arc<str> = Arc::from(name);
        let shared = Arc::new(NsShared {
            name: name.clone(),
            state: ArcSwap::from_pointee(store::State::empty()),
            settings: self.inner.settings.clone(),
            metrics: NsMetrics::new(&name),
        });
        let (tx, rx) = mpsc::channel(self.inner.settings.writer_queue.max(1));
        let writer = Writer::new(shared.clone());
        let task = runtime.spawn(writer.run(rx, self.inner.cancel.child_token()));
        let mut tasks = self.inner.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        let ns = Namespace { shared, tx };
        map.insert(name, ns.clone());
        Ok(ns)
    }

    /// Loads a TOML document as the file layer. `source` names it in errors.
    pub async fn load_toml_str(&self, source: &str, text: &str) -> Result<LoadReport> {
        let parsed = source::parse_toml(source, text, &self.inner.settings.limits)?;
        self.load(source, parsed, Layer::File).await
    }

    /// Loads a TOML file as the file layer.
    pub async fn load_file(&self, file: impl AsRef<std::path::Path>) -> Result<LoadReport> {
        let file = file.as_ref();
        let source = format!("file {}", file.display());
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| Error::Source {
                source_name: source.clone(),
                key: None,
                line: None,
                reason: e.to_string(),
            })?;
        self.load_toml_str(&source, &text).await
    }

    /// Loads the process environment's configuration variables as the environment layer.
    /// A variable with the prefix whose name or value is not valid UTF-8 is an error.
    pub async fn load_env(&self) -> Result<LoadReport> {
        let prefix = self.inner.settings.env_prefix.clone();
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let (Some(k), v) = (k.to_str(), v) else {
                continue;
            };
            if !k.starts_with(&prefix) {
                continue;
            }
            let v = v.into_string().map_err(|_| Error::Source {
                source_name: format!("env {k}"),
                key: None,
                line: None,
                reason: "value is not valid UTF-8".into(),
            })?;
            vars.push((k.to_string(), v));
        }
        self.load_env_from(vars).await
    }

    /// Loads the given variables as the environment layer (for tests and embedding).
    pub async fn load_env_from<I>(&self, vars: I) -> Result<LoadReport>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let parsed = source::parse_env(
            &self.inner.settings.env_prefix,
            vars,
            &self.inner.settings.limits,
        )?;
        self.load("env", parsed, Layer::Env).await
    }

    /// Applies parsed sources all-or-nothing across namespaces, even with concurrent
    /// writers: a two-phase commit. The namespaces are taken in name order (so concurrent
    /// loads cannot deadlock); each writer checks its batch and, if it passes, holds the
    /// namespace — no `set`, `freeze` or other update runs there — until every namespace
    /// has passed; then all commit, each to the very state it checked. If one fails, the
    /// held ones are released unchanged. Namespaces created for the load are removed again
    /// if it fails.
    async fn load(&self, source: &str, parsed: source::Parsed, layer: Layer) -> Result<LoadReport> {
        let mut report = LoadReport {
            source: source.to_string(),
            ..Default::default()
        };
        let mut created = Vec::new();
        let mut targets = Vec::new();
        for (name, leaves) in parsed {
            let existed = self.inner.namespaces.read().contains_key(name.as_str());
            let ns = self.namespace_or_create(&name)?;
            if !existed {
                created.push(name.clone());
            }
            report.leaves += leaves.len();
            targets.push((ns, leaves));
        }
        targets.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        // Phase 1: check and hold each namespace in turn.
        let mut held = Vec::with_capacity(targets.len());
        let mut failure = None;
        for (ns, leaves) in &targets {
            let op = Op::Write {
                at: Arc::from(""),
                leaves: leaves.iter().map(|l| l.leaf.clone()).collect(),
                replace: false,
            };
            let (decide, decision) = oneshot::channel();
            let checked = ns
                .request(|reply| Command::Prepare {
                    op,
                    layer,
                    reply,
                    decision,
                })
                .await
                .and_then(|r| r);
            match checked {
                Ok(_) => held.push(decide),
                Err(e) => {
                    failure = Some(locate(source, ns.name(), leaves, e));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            drop(held); // releases the held namespaces unchanged
            let mut map = self.inner.namespaces.write();
            for name in created {
                map.remove(name.as_str());
            }
            return Err(e);
        }
        // Phase 2: every namespace passed and is held; commit all.
        let mut results = Vec::with_capacity(held.len());
        for decide in held {
            let (tx, rx) = oneshot::channel();
            let _ = decide.send(tx);
            results.push(rx);
        }
        for ((ns, leaves), rx) in targets.iter().zip(results) {
            let r = rx
                .await
                .map_err(|_| Error::Shutdown {
                    component: "configuration writer",
                })?
                .map_err(|e| locate(source, ns.name(), leaves, e))?;
            report.changed += r.changed;
            report.shadowed += r.shadowed;
            report.namespaces.push(ns.name().to_string());
        }
        Ok(report)
    }

    /// Stops every namespace writer and waits for them. Reads keep working; updates fail
    /// with [`Error::Shutdown`].
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Turns a writer's rejection of a source batch into a source error naming the source,
/// the key and (for files) the line.
fn locate(source: &str, namespace: &str, leaves: &[source::SourcedLeaf], e: Error) -> Error {
    let path = match &e {
        Error::Validation { path, .. }
        | Error::Frozen { path, .. }
        | Error::InvalidPath { path, .. }
        | Error::LimitExceeded { path, .. } => Some(path.clone()),
        _ => None,
    };
    let leaf = path.as_deref().and_then(|p| {
        leaves.iter().find(|l| &*l.leaf.path == p).or_else(|| {
            leaves
                .iter()
                .find(|l| path::is_under(&l.leaf.path, p) || path::is_under(p, &l.leaf.path))
        })
    });
    let source_name = match leaf.and_then(|l| l.origin.as_deref()) {
        Some(var) => format!("env {var}"),
        None => source.to_string(),
    };
    Error::Source {
        source_name,
        key: path.map(|p| format!("{namespace}:{p}")),
        line: leaf.and_then(|l| l.line),
        reason: e.to_string(),
    }
}
