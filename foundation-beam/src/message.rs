//! Message strategies: how a payload travels, chosen per send from size, frequency and
//! urgency, and reported.
//!
//! A [`Messenger`] sends [`Bytes`] payloads to targets (anything that implements
//! [`Deliver`]; every [`Handle<M>`] with `M: From<Payload>` does) and returns a
//! [`SendReport`] saying which [`Strategy`] it used. The choice, first match wins
//! (thresholds are [`StrategySettings`]):
//!
//! 1. **urgent** (`MessageOptions::urgent`) → [`Strategy::Urgent`]: the payload goes
//!    through the target's urgent lane, whatever its normal backlog.
//! 2. **target busy** (backlog ≥ `flow_control_backlog`, or its mailbox refuses the
//!    message as full) → [`Strategy::FlowControlled`] with the options' [`FlowAction`]:
//!    `Drop` (not sent, counted), `Queue` (wait for the backlog to fall below the
//!    threshold, checking after `retry_base_ms`, then twice that, and so on, capped at
//!    `retry_max_ms`, at most `max_retries` times) or `Redirect` (the least loaded
//!    alternative target that is not busy, with the same doubling retries when all are).
//!    Giving up after the last retry is counted and reported (`delivered: false`).
//! 3. **very large** (≥ `table_min_bytes`) or **many targets**
//!    ([`Messenger::broadcast`] to ≥ `table_min_targets`) → [`Strategy::TableRef`]: the
//!    value is stored once in the messenger's [`Table`] and a [`Payload::Table`] (an `Arc`
//!    and a 12-byte [`TableRef`]) is sent; the entry leaves the table when every target
//!    acknowledged it ([`Payload::take`]) or after `table_ttl_ms`, both counted by the
//!    table's metrics. A full table falls back to shared `Bytes` (counted).
//! 4. **large** (≥ `shared_min_bytes`) → [`Strategy::SharedBytes`]: the `Bytes` handle is
//!    sent; the receiver sees the same memory (a reference-count bump per target, never a
//!    copy).
//! 5. otherwise → [`Strategy::Direct`]: the value is moved into the message as is.
//!
//! **Frequency.** The messenger keeps a send rate per target, an exponentially weighted
//! moving average over tokio time with half-life `rate_half_life_ms`. Sends to a target
//! whose rate is at least `high_frequency_per_sec` are reported (`high_frequency: true`)
//! and counted (`foundation_message_high_frequency_total`), so that callers can batch
//! them; the messenger itself does not batch.
//!
//! ```
//! use bytes::Bytes;
//! use foundation_beam::message::{MessageOptions, Messenger, Payload, Strategy, StrategySettings};
//! use foundation_beam::process::spawn_fn;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_beam::Result<()> {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let sink = spawn_fn(move |mut inbox| async move {
//!     while let Some(p) = inbox.recv().await {
//!         let p: Payload = p;
//!         let _ = tx.send(p.take()); // resolves (and acknowledges) a table reference
//!     }
//! });
//! let messenger = Messenger::new(StrategySettings::default())?;
//! let opts = MessageOptions::default();
//!
//! let small = messenger.send_optimized(&sink, Bytes::from_static(b"hi"), &opts).await?;
//! assert_eq!(small.strategy, Strategy::Direct);
//!
//! let big = Bytes::from(vec![1u8; 1 << 20]);
//! let report = messenger.send_optimized(&sink, big.clone(), &opts).await?;
//! assert_eq!(report.strategy, Strategy::SharedBytes);
//!
//! assert_eq!(rx.recv().await.unwrap().unwrap(), Bytes::from_static(b"hi"));
//! let got = rx.recv().await.unwrap().unwrap();
//! assert_eq!(got.as_ptr(), big.as_ptr()); // the same memory
//! messenger.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Metrics
//! | name | kind |
//! |---|---|
//! | `foundation_message_strategy_total{strategy}` | counter, sends by strategy (`direct`, `shared_bytes`, `table_ref`, `urgent`, `flow_controlled`) |
//! | `foundation_message_flow_control_total{action}` | counter, flow-control steps: `drop`, `queue`, `redirect`, `retry`, `gave_up`, `table_fallback` |
//! | `foundation_message_high_frequency_total` | counter, sends to a target above the high-frequency rate |
//!
//! The messenger's table reports under `foundation_table_*{table}`.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::mailbox::{Delivery, SendError};
use crate::process::Handle;
use crate::table::{Ack, Table, TableRef, TableSettings};

/// What a target receives from a [`Messenger`].
#[derive(Clone)]
pub enum Payload {
    /// The bytes themselves ([`Strategy::Direct`], [`Strategy::SharedBytes`],
    /// [`Strategy::Urgent`]).
    Bytes(Bytes),
    /// A reference to the bytes in a table ([`Strategy::TableRef`]).
    Table {
        /// The table holding the value.
        table: Arc<Table>,
        /// The entry.
        reference: TableRef,
        /// Which holder this payload (and every clone of it) acknowledges for.
        holder: Holder,
    },
}

/// One holder of a table reference: the payload delivered to one target, shared by all
/// its clones. A holder acknowledges the entry at most once, however many clones take it.
#[derive(Debug, Clone, Default)]
pub struct Holder(Arc<AtomicBool>);

impl Holder {
    /// A new holder that has not acknowledged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the acknowledgement as given; false if it already was.
    fn claim(&self) -> bool {
        !self.0.swap(true, AtomicOrdering::AcqRel)
    }
}

/// A receiver read a table reference whose entry has left the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "table reference {reference:?} of table `{table}` is no longer valid: its entry expired, \
     was acknowledged by every holder, or was removed"
)]
pub struct PayloadGone {
    /// The table's name.
    pub table: String,
    /// The reference.
    pub reference: TableRef,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Bytes(b) => write!(f, "Payload::Bytes({} bytes)", b.len()),
            Payload::Table {
                table, reference, ..
            } => f
                .debug_struct("Payload::Table")
                .field("table", &table.name())
                .field("reference", reference)
                .finish(),
        }
    }
}

impl Payload {
    /// A table-reference payload with a new [`Holder`].
    pub fn table(table: Arc<Table>, reference: TableRef) -> Self {
        Payload::Table {
            table,
            reference,
            holder: Holder::new(),
        }
    }

    /// The same payload for another holder: inline bytes are shared as they are; a table
    /// reference gets a new [`Holder`], which acknowledges separately. A [`Messenger`]
    /// hands each target its own holder.
    pub fn for_holder(&self) -> Self {
        match self {
            Payload::Bytes(b) => Payload::Bytes(b.clone()),
            Payload::Table {
                table, reference, ..
            } => Payload::table(table.clone(), *reference),
        }
    }

    /// The bytes, without acknowledging a table reference; `None` if the entry has left
    /// the table (expired, acknowledged by every target, removed).
    pub fn get(&self) -> Option<Bytes> {
        match self {
            Payload::Bytes(b) => Some(b.clone()),
            Payload::Table {
                table, reference, ..
            } => table.get(reference),
        }
    }

    /// The bytes, acknowledging a table reference for this payload's holder (the entry
    /// leaves the table after the last expected holder acknowledged; taking several
    /// clones of one holder's payload acknowledges once). `None` if the entry has left the
    /// table; [`try_take`](Self::try_take) says so with an error.
    pub fn take(self) -> Option<Bytes> {
        self.try_take().ok()
    }

    /// Like [`take`](Self::take), with a clear error when the entry has left the table
    /// (expired before this receiver read it, acknowledged by every holder, or removed).
    pub fn try_take(self) -> Result<Bytes, PayloadGone> {
        match self {
            Payload::Bytes(b) => Ok(b),
            Payload::Table {
                table,
                reference,
                holder,
            } => {
                let value = table.get(&reference);
                if value.is_some() && holder.claim() {
                    table.ack(&reference);
                }
                value.ok_or_else(|| PayloadGone {
                    table: table.name().to_owned(),
                    reference,
                })
            }
        }
    }

    /// Acknowledges a table reference for this payload's holder without reading it:
    /// `None` for inline bytes, [`Ack::AlreadyAcknowledged`] if this holder (through any
    /// clone) already did.
    pub fn ack(&self) -> Option<Ack> {
        match self {
            Payload::Bytes(_) => None,
            Payload::Table {
                table,
                reference,
                holder,
            } => {
                if holder.claim() {
                    Some(table.ack(reference))
                } else {
                    Some(Ack::AlreadyAcknowledged)
                }
            }
        }
    }
}

/// Why a target did not take a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its mailbox is full.
    Full,
    /// It has stopped.
    Closed,
}

/// Something a [`Messenger`] can send payloads to.
///
/// Implemented for [`Handle<M>`] where `M: From<Payload>`; implement it for other
/// targets (a channel, a remote peer) as needed.
pub trait Deliver {
    /// A stable key of the target, used for its send rate and in reports.
    fn key(&self) -> u64;
    /// Messages waiting at the target (normal lane and urgent lane).
    fn backlog(&self) -> usize;
    /// Hands the target a payload without waiting. `payload` stays the caller's (a clone
    /// is cheap: a reference-count bump), so a refused payload can be retried elsewhere.
    fn try_deliver(
        &self,
        payload: &Payload,
        urgent: bool,
    ) -> std::result::Result<Delivery, Refused>;
}

impl<M: From<Payload> + Send + 'static> Deliver for Handle<M> {
    fn key(&self) -> u64 {
        self.id().as_u64()
    }

    fn backlog(&self) -> usize {
        Handle::backlog(self)
    }

    fn try_deliver(
        &self,
        payload: &Payload,
        urgent: bool,
    ) -> std::result::Result<Delivery, Refused> {
        let msg = M::from(payload.clone());
        let sent = if urgent {
            self.try_send_urgent(msg)
        } else {
            self.try_send(msg)
        };
        sent.map_err(|e| match e {
            SendError::Full(_) => Refused::Full,
            SendError::Closed(_) => Refused::Closed,
        })
    }
}

/// What to do when the target is busy (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowAction {
    /// Do not send; report and count it.
    Drop,
    /// Wait (doubling delays) until the target has room.
    #[default]
    Queue,
    /// Send to the least loaded alternative that has room (doubling delays if none has).
    Redirect,
}

/// Per-send options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageOptions {
    /// Send through the urgent lane. Default `false`.
    pub urgent: bool,
    /// What to do when the target is busy. Default [`FlowAction::Queue`].
    pub on_busy: FlowAction,
}

impl MessageOptions {
    /// Urgent options.
    pub fn urgent() -> Self {
        MessageOptions {
            urgent: true,
            ..Default::default()
        }
    }

    /// Options with this flow action.
    pub fn on_busy(action: FlowAction) -> Self {
        MessageOptions {
            on_busy: action,
            ..Default::default()
        }
    }
}

/// Thresholds of a [`Messenger`]. Loads from TOML; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StrategySettings {
    /// Payloads of at least this many bytes are reported as [`Strategy::SharedBytes`].
    /// Default 4096.
    pub shared_min_bytes: usize,
    /// Payloads of at least this many bytes go through the table. Default 16 MiB.
    pub table_min_bytes: usize,
    /// A [`Messenger::broadcast`] to at least this many targets goes through the table
    /// (payloads of at least `shared_min_bytes`). Default 4.
    pub table_min_targets: usize,
    /// Lifetime of a table entry that not every target acknowledged, ms. Default 30 000.
    pub table_ttl_ms: u64,
    /// A target with at least this backlog is busy. Default 256.
    pub flow_control_backlog: usize,
    /// First retry delay of `Queue`/`Redirect`, ms (at least 1). Default 1.
    pub retry_base_ms: u64,
    /// Largest retry delay, ms. Default 1000.
    pub retry_max_ms: u64,
    /// Retries before giving up. Default 10.
    pub max_retries: u32,
    /// Half-life of the per-target send rate, ms (at least 1). Default 1000.
    pub rate_half_life_ms: u64,
    /// Rate (sends per second) from which sends are reported as high-frequency.
    /// Default 10 000.
    pub high_frequency_per_sec: f64,
    /// Most targets whose rate is tracked; beyond that the least recently used is
    /// forgotten. Default 4096.
    pub max_tracked_targets: usize,
    /// The table's settings (`name` labels its metrics). Default: name `"messages"`.
    pub table: TableSettings,
}

impl Default for StrategySettings {
    fn default() -> Self {
        StrategySettings {
            shared_min_bytes: 4096,
            table_min_bytes: 16 << 20,
            table_min_targets: 4,
            table_ttl_ms: 30_000,
            flow_control_backlog: 256,
            retry_base_ms: 1,
            retry_max_ms: 1000,
            max_retries: 10,
            rate_half_life_ms: 1000,
            high_frequency_per_sec: 10_000.0,
            max_tracked_targets: 4096,
            table: TableSettings {
                name: "messages".to_owned(),
                ..TableSettings::default()
            },
        }
    }
}

/// How a payload was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Small: the value moved into the message as is.
    Direct,
    /// Large: the `Bytes` handle sent, the memory shared.
    SharedBytes,
    /// Very large or many targets: stored once in the table, a reference sent.
    TableRef,
    /// Through the urgent lane.
    Urgent,
    /// The target was busy; this action was taken.
    FlowControlled(FlowAction),
}

impl Strategy {
    fn index(self) -> usize {
        match self {
            Strategy::Direct => 0,
            Strategy::SharedBytes => 1,
            Strategy::TableRef => 2,
            Strategy::Urgent => 3,
            Strategy::FlowControlled(_) => 4,
        }
    }
}

const STRATEGY_LABELS: [&str; 5] = [
    "direct",
    "shared_bytes",
    "table_ref",
    "urgent",
    "flow_controlled",
];

/// What [`Messenger::send_optimized`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReport {
    /// The strategy used.
    pub strategy: Strategy,
    /// Payload size.
    pub bytes: usize,
    /// Whether a target took the payload (`false`: dropped or given up, counted).
    pub delivered: bool,
    /// Key of the target that took it (an alternative after a redirect).
    pub delivered_to: Option<u64>,
    /// What that target's mailbox did with it.
    pub delivery: Option<Delivery>,
    /// The table entry, for [`Strategy::TableRef`] (and a flow-controlled very large
    /// payload).
    pub table_ref: Option<TableRef>,
    /// The delays waited before each retry, in order.
    pub retry_delays: Vec<Duration>,
    /// The target's send rate including this send, per second.
    pub rate_per_sec: f64,
    /// Whether that rate is at least `high_frequency_per_sec`.
    pub high_frequency: bool,
}

/// What [`Messenger::broadcast`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastReport {
    /// The strategy used for every target.
    pub strategy: Strategy,
    /// Payload size.
    pub bytes: usize,
    /// Targets that took it.
    pub delivered: usize,
    /// Keys of the targets that refused it (full or stopped).
    pub refused: Vec<u64>,
    /// The table entry, for [`Strategy::TableRef`].
    pub table_ref: Option<TableRef>,
}

/// An exponentially weighted send rate.
#[derive(Clone, Copy)]
struct Rate {
    per_sec: f64,
    last: Instant,
}

struct Metrics {
    strategy: [metrics::Counter; 5],
    dropped: metrics::Counter,
    queued: metrics::Counter,
    redirected: metrics::Counter,
    retried: metrics::Counter,
    gave_up: metrics::Counter,
    table_fallback: metrics::Counter,
    high_frequency: metrics::Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let flow = |action: &'static str| metrics::counter!("foundation_message_flow_control_total", "action" => action);
        Metrics {
            strategy: STRATEGY_LABELS
                .map(|s| metrics::counter!("foundation_message_strategy_total", "strategy" => s)),
            dropped: flow("drop"),
            queued: flow("queue"),
            redirected: flow("redirect"),
            retried: flow("retry"),
            gave_up: flow("gave_up"),
            table_fallback: flow("table_fallback"),
            high_frequency: metrics::counter!("foundation_message_high_frequency_total"),
        }
    }

    fn action(&self, action: FlowAction) -> &metrics::Counter {
        match action {
            FlowAction::Drop => &self.dropped,
            FlowAction::Queue => &self.queued,
            FlowAction::Redirect => &self.redirected,
        }
    }
}

/// Sends payloads with a strategy chosen per send. See the [module documentation](self).
///
/// Not `Clone`; share it as `Arc<Messenger>`. It owns its [`Table`] (and the table's
/// sweeper task): dropping the messenger stops the sweeper; payloads already sent keep
/// the table alive (they hold an `Arc`) and expire on access.
pub struct Messenger {
    settings: StrategySettings,
    table: Arc<Table>,
    rates: Mutex<foldhash::HashMap<u64, Rate>>,
    /// `ln 2 / half-life`: the decay constant of the rates, per second.
    lambda: f64,
    m: Metrics,
}

impl fmt::Debug for Messenger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messenger")
            .field("settings", &self.settings)
            .field("table_entries", &self.table.len())
            .finish()
    }
}

impl Messenger {
    /// A messenger with these thresholds; creates its table (and the table's sweeper on
    /// the current tokio runtime).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `retry_base_ms` or `rate_half_life_ms` of 0, a
    /// non-positive `high_frequency_per_sec`, or `max_tracked_targets` of 0; the table's
    /// errors.
    pub fn new(settings: StrategySettings) -> Result<Messenger> {
        if settings.retry_base_ms == 0
            || settings.rate_half_life_ms == 0
            || settings.max_tracked_targets == 0
            || settings.high_frequency_per_sec.is_nan()
            || settings.high_frequency_per_sec <= 0.0
        {
            return Err(Error::InvalidArgument(format!(
                "strategy settings out of range (retry_base_ms, rate_half_life_ms, \
                 max_tracked_targets >= 1, high_frequency_per_sec > 0): {settings:?}"
            )));
        }
        let table = Arc::new(Table::new(settings.table.clone())?);
        let lambda = std::f64::consts::LN_2 * 1000.0 / settings.rate_half_life_ms as f64;
        Ok(Messenger {
            settings,
            table,
            rates: Mutex::new(foldhash::HashMap::default()),
            lambda,
            m: Metrics::new(),
        })
    }

    /// The thresholds.
    pub fn settings(&self) -> &StrategySettings {
        &self.settings
    }

    /// The table holding very large and broadcast payloads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The current send rate to the target with `key`, per second (0 if unknown).
    pub fn rate(&self, key: u64) -> f64 {
        let now = Instant::now();
        self.rates
            .lock()
            .get(&key)
            .map_or(0.0, |r| r.per_sec * self.decay(now - r.last))
    }

    /// Sends `data` to `target` with the strategy the settings and `opts` pick. A busy
    /// target with [`FlowAction::Redirect`] and no alternative is treated like `Queue`.
    ///
    /// # Errors
    /// [`Error::TargetClosed`] if the target (the one chosen) has stopped.
    pub async fn send_optimized<T: Deliver>(
        &self,
        target: &T,
        data: Bytes,
        opts: &MessageOptions,
    ) -> Result<SendReport> {
        self.send_optimized_or(target, &[], data, opts).await
    }

    /// Like [`send_optimized`](Self::send_optimized), with alternatives for
    /// [`FlowAction::Redirect`].
    pub async fn send_optimized_or<T: Deliver>(
        &self,
        target: &T,
        alternatives: &[T],
        data: Bytes,
        opts: &MessageOptions,
    ) -> Result<SendReport> {
        let s = &self.settings;
        let bytes = data.len();
        let (rate_per_sec, high_frequency) = self.observe(target.key());
        let mut report = SendReport {
            strategy: Strategy::Direct,
            bytes,
            delivered: false,
            delivered_to: None,
            delivery: None,
            table_ref: None,
            retry_delays: Vec::new(),
            rate_per_sec,
            high_frequency,
        };
        if opts.urgent {
            report.strategy = Strategy::Urgent;
            let payload = Payload::Bytes(data);
            // A full urgent lane is waited for like a busy target (urgent lanes are
            // normally near-empty; the retry schedule is the same).
            return match target.try_deliver(&payload, true) {
                Ok(d) => {
                    self.count(Strategy::Urgent);
                    Ok(deliver_report(report, target.key(), d))
                }
                Err(Refused::Closed) => Err(Error::TargetClosed {
                    target: target.key(),
                }),
                Err(Refused::Full) => {
                    self.flow_control(target, alternatives, payload, opts, report, true)
                        .await
                }
            };
        }
        let (strategy, payload) = self.shape(data, 1, &mut report);
        report.strategy = strategy;
        if target.backlog() < s.flow_control_backlog {
            match target.try_deliver(&payload, false) {
                Ok(d) => {
                    self.count(strategy);
                    return Ok(deliver_report(report, target.key(), d));
                }
                Err(Refused::Closed) => {
                    self.forget(&payload);
                    return Err(Error::TargetClosed {
                        target: target.key(),
                    });
                }
                Err(Refused::Full) => {}
            }
        }
        self.flow_control(target, alternatives, payload, opts, report, false)
            .await
    }

    /// Sends `data` to every target: through the table (one entry expecting
    /// `targets.len()` acknowledgements) when there are at least `table_min_targets` and
    /// the payload has at least `shared_min_bytes`, else as for a single target (without
    /// flow control: a busy or stopped target is reported in `refused`). The table entry
    /// is acknowledged on behalf of every target that refused it.
    pub fn broadcast<T: Deliver>(&self, targets: &[T], data: Bytes) -> BroadcastReport {
        let mut scratch = SendReport {
            strategy: Strategy::Direct,
            bytes: data.len(),
            delivered: false,
            delivered_to: None,
            delivery: None,
            table_ref: None,
            retry_delays: Vec::new(),
            rate_per_sec: 0.0,
            high_frequency: false,
        };
        let bytes = data.len();
        let (strategy, payload) = self.shape(data, targets.len(), &mut scratch);
        let mut report = BroadcastReport {
            strategy,
            bytes,
            delivered: 0,
            refused: Vec::new(),
            table_ref: scratch.table_ref,
        };
        for target in targets {
            self.observe(target.key());
            // Each target is its own holder: it acknowledges once, whatever it clones.
            let mine = payload.for_holder();
            match target.try_deliver(&mine, false) {
                Ok(_) => {
                    report.delivered += 1;
                    self.count(strategy);
                }
                Err(_) => {
                    mine.ack();
                    report.refused.push(target.key());
                }
            }
        }
        report
    }

    /// Stops the table's sweeper and waits for it.
    pub async fn shutdown(&self) {
        self.table.shutdown().await;
    }

    /// Picks the form of a non-urgent payload from its size and target count.
    fn shape(&self, data: Bytes, targets: usize, report: &mut SendReport) -> (Strategy, Payload) {
        let s = &self.settings;
        let len = data.len();
        let by_table = len >= s.table_min_bytes
            || (targets >= s.table_min_targets.max(2) && len >= s.shared_min_bytes);
        if by_table {
            let acks = NonZeroU32::new(u32::try_from(targets).unwrap_or(u32::MAX).max(1))
                .unwrap_or(NonZeroU32::MIN);
            let ttl = Duration::from_millis(s.table_ttl_ms);
            match self.table.insert_with_acks(data, ttl, acks) {
                Ok(reference) => {
                    report.table_ref = Some(reference);
                    let payload = Payload::table(self.table.clone(), reference);
                    return (Strategy::TableRef, payload);
                }
                Err(e) => {
                    self.m.table_fallback.increment(1);
                    tracing::debug!(error = %e, "message table full; sending shared bytes");
                    return (Strategy::SharedBytes, Payload::Bytes(e.into_value()));
                }
            }
        }
        if len >= s.shared_min_bytes {
            (Strategy::SharedBytes, Payload::Bytes(data))
        } else {
            (Strategy::Direct, Payload::Bytes(data))
        }
    }

    /// The busy path: drop, wait or redirect, with doubling retry delays.
    async fn flow_control<T: Deliver>(
        &self,
        target: &T,
        alternatives: &[T],
        payload: Payload,
        opts: &MessageOptions,
        mut report: SendReport,
        urgent: bool,
    ) -> Result<SendReport> {
        let s = &self.settings;
        let action = opts.on_busy;
        report.strategy = Strategy::FlowControlled(action);
        self.count(report.strategy);
        self.m.action(action).increment(1);
        if action == FlowAction::Drop {
            self.forget(&payload);
            return Ok(report);
        }
        let mut delay = Duration::from_millis(s.retry_base_ms);
        let max_delay = Duration::from_millis(s.retry_max_ms.max(s.retry_base_ms));
        let mut attempt = 0;
        loop {
            // The primary first, then (Redirect) the least loaded alternative with room.
            let mut candidates: Vec<&T> = vec![target];
            if action == FlowAction::Redirect {
                let mut alts: Vec<&T> = alternatives.iter().collect();
                alts.sort_by_key(|t| t.backlog());
                candidates.extend(alts);
            }
            for candidate in candidates {
                if !urgent && candidate.backlog() >= s.flow_control_backlog {
                    continue;
                }
                match candidate.try_deliver(&payload, urgent) {
                    Ok(d) => return Ok(deliver_report(report, candidate.key(), d)),
                    Err(Refused::Closed) if std::ptr::eq(candidate, target) => {
                        if action == FlowAction::Redirect && !alternatives.is_empty() {
                            continue;
                        }
                        self.forget(&payload);
                        return Err(Error::TargetClosed {
                            target: target.key(),
                        });
                    }
                    Err(_) => {}
                }
            }
            if attempt == s.max_retries {
                self.m.gave_up.increment(1);
                self.forget(&payload);
                tracing::debug!(target = target.key(), retries = attempt, "gave up sending");
                return Ok(report);
            }
            attempt += 1;
            self.m.retried.increment(1);
            tokio::time::sleep(delay).await;
            report.retry_delays.push(delay);
            delay = (delay * 2).min(max_delay);
        }
    }

    /// Releases the table entry of a payload nobody will receive.
    fn forget(&self, payload: &Payload) {
        if let Payload::Table {
            table, reference, ..
        } = payload
        {
            table.remove(reference);
        }
    }

    fn count(&self, strategy: Strategy) {
        self.m.strategy[strategy.index()].increment(1);
    }

    fn decay(&self, elapsed: Duration) -> f64 {
        (-self.lambda * elapsed.as_secs_f64()).exp()
    }

    /// Counts one send to `key` in its rate; returns the rate and whether it is high.
    fn observe(&self, key: u64) -> (f64, bool) {
        let now = Instant::now();
        let mut rates = self.rates.lock();
        if rates.len() >= self.settings.max_tracked_targets && !rates.contains_key(&key) {
            // Forget the least recently used target: bounded, and rare (one scan per
            // eviction).
            if let Some((&old, _)) = rates.iter().min_by_key(|(_, r)| r.last) {
                rates.remove(&old);
            }
        }
        let rate = rates.entry(key).or_insert(Rate {
            per_sec: 0.0,
            last: now,
        });
        // Each send adds `lambda` to a rate that decays by exp(-lambda·dt): for sends at a
        // steady r per second it converges to r.
        rate.per_sec = rate.per_sec * self.decay(now - rate.last) + self.lambda;
        rate.last = now;
        let per_sec = rate.per_sec;
        drop(rates);
        let high = per_sec >= self.settings.high_frequency_per_sec;
        if high {
            self.m.high_frequency.increment(1);
        }
        (per_sec, high)
    }
}

fn deliver_report(mut report: SendReport, key: u64, delivery: Delivery) -> SendReport {
    report.delivered = delivery != Delivery::DroppedNewest;
    report.delivered_to = Some(key);
    report.delivery = Some(delivery);
    report
}

/// Registers the HELP text of this module's metrics with the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_message_strategy_total",
        "Payloads sent by a messenger, by strategy."
    );
    metrics::describe_counter!(
        "foundation_message_flow_control_total",
        "Flow-control steps of a messenger (drop, queue, redirect, retry, gave_up, table_fallback)."
    );
    metrics::describe_counter!(
        "foundation_message_high_frequency_total",
        "Sends to a target whose send rate is above the high-frequency threshold."
    );
}
