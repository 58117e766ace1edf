//! Metrics: a per-thread sharded recorder, a Prometheus endpoint, runtime metrics.
//!
//! Foundation reports through the [`metrics`] facade. [`Telemetry`] installs
//! [`ShardedRecorder`] — a recorder whose counters and histograms are sharded per thread
//! and merged on read into `metrics-exporter-prometheus` — serves the Prometheus text
//! format over HTTP, and samples the tokio runtime (workers, alive tasks, global queue
//! depth, per-worker busy ratio), the process RSS and the number of live Foundation tasks.
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_runtime_workers` | gauge |
//! | `foundation_runtime_alive_tasks` | gauge |
//! | `foundation_runtime_global_queue_depth` | gauge |
//! | `foundation_runtime_worker_busy_ratio{worker}` | gauge, 0..1 over the last interval |
//! | `foundation_process_resident_memory_bytes` | gauge |
//! | `foundation_tasks_live` | gauge, tasks holding a [`TaskGuard`] |
//!
//! ```
//! use foundation_core::telemetry::{Telemetry, TelemetrySettings};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_core::Result<()> {
//! let settings = TelemetrySettings { listen: Some("127.0.0.1:0".parse().unwrap()), ..Default::default() };
//! let telemetry = Telemetry::start(settings).await?;
//! metrics::with_local_recorder(telemetry.recorder().as_ref(), || {
//!     metrics::counter!("foundation_demo_requests_total").increment(3);
//! });
//! assert!(telemetry.render().contains("foundation_demo_requests_total 3"));
//! println!("scrape http://{}/metrics", telemetry.local_addr().unwrap());
//! telemetry.shutdown().await;
//! # Ok(()) }
//! ```

mod http;
mod recorder;
mod runtime;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
pub use recorder::{ShardedRecorder, DEFAULT_BUCKETS};
pub use runtime::{live_tasks, resident_memory_bytes, TaskGuard};

/// Settings of [`Telemetry`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// Address of the Prometheus endpoint; `None` serves no endpoint (render by hand).
    pub listen: Option<SocketAddr>,
    /// Recorder shards; 0 picks twice the available parallelism (at least the runtime's
    /// worker threads, with room for blocking threads).
    pub shards: usize,
    /// Interval of the runtime sampler in milliseconds; 0 disables it. Default 1000.
    pub sample_interval_ms: u64,
    /// Histogram buckets; empty renders summaries instead. Default: Prometheus' buckets.
    pub buckets: Vec<f64>,
    /// Labels added to every metric (for example `node`).
    pub global_labels: BTreeMap<String, String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            listen: None,
            shards: 0,
            sample_interval_ms: 1000,
            buckets: DEFAULT_BUCKETS.to_vec(),
            global_labels: BTreeMap::new(),
        }
    }
}

/// The running telemetry service: recorder, endpoint and sampler.
///
/// Dropping it (or [`shutdown`](Self::shutdown)) stops the endpoint and the sampler; a
/// recorder installed globally stays installed (the `metrics` facade cannot uninstall).
pub struct Telemetry {
    recorder: Arc<ShardedRecorder>,
    addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("addr", &self.addr)
            .field("recorder", &self.recorder)
            .finish()
    }
}

/// Describes every metric Foundation's core emits (the HELP lines of the exposition) to
/// the current recorder. [`Telemetry::start`] calls it for its recorder.
pub fn describe_foundation_metrics() {
    crate::config::describe_metrics();
    crate::registry::describe_metrics();
    crate::port::describe_metrics();
    crate::events::describe_metrics();
    crate::resilience::describe_metrics();
    runtime::describe_metrics();
}

/// A handle that installs the shared recorder as the global one.
struct GlobalRecorder(Arc<ShardedRecorder>);

impl metrics::Recorder for GlobalRecorder {
    fn describe_counter(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.0.describe_counter(k, u, d)
    }
    fn describe_gauge(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.0.describe_gauge(k, u, d)
    }
    fn describe_histogram(
        &self,
        k: metrics::KeyName,
        u: Option<metrics::Unit>,
        d: metrics::SharedString,
    ) {
        self.0.describe_histogram(k, u, d)
    }
    fn register_counter(&self, k: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Counter {
        self.0.register_counter(k, m)
    }
    fn register_gauge(&self, k: &metrics::Key, m: &metrics::Metadata<'_>) -> metrics::Gauge {
        self.0.register_gauge(k, m)
    }
    fn register_histogram(
        &self,
        k: &metrics::Key,
        m: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        self.0.register_histogram(k, m)
    }
}

impl Telemetry {
    /// Starts the recorder, the endpoint (if `listen` is set) and the sampler on the
    /// current tokio runtime. The recorder is not installed globally; see
    /// [`install_global`](Self::install_global).
    pub async fn start(settings: TelemetrySettings) -> Result<Telemetry> {
        let shards = match settings.shards {
            0 => 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        if settings.buckets.iter().any(|b| !b.is_finite())
            || !settings.buckets.windows(2).all(|w| w[0] < w[1])
        {
            return Err(Error::InvalidArgument(
                "histogram buckets must be finite and strictly increasing".into(),
            ));
        }
        let labels: Vec<(String, String)> = settings.global_labels.into_iter().collect();
        let recorder = Arc::new(ShardedRecorder::new(shards, &settings.buckets, &labels));
        metrics::with_local_recorder(recorder.as_ref(), describe_foundation_metrics);
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut addr = None;
        if let Some(listen) = settings.listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Error::Io {
                    context: format!("binding the metrics endpoint to {listen}"),
                    source: e,
                })?;
            addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(http::serve(
                listener,
                recorder.clone(),
                cancel.clone(),
            )));
        }
        if settings.sample_interval_ms > 0 {
            let interval = Duration::from_millis(settings.sample_interval_ms);
            let handle = tokio::runtime::Handle::current();
            let rec = recorder.clone();
            let token = cancel.clone();
            // Gauges registered here are bound to this recorder, global or not.
            let sampler =
                metrics::with_local_recorder(rec.as_ref(), || runtime::Sampler::new(handle));
            tasks.push(tokio::spawn(sampler.run(interval, token)));
        }
        Ok(Telemetry {
            recorder,
            addr,
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// Installs the recorder as the process-wide `metrics` recorder. Fails if another
    /// recorder is installed already.
    pub fn install_global(&self) -> Result<()> {
        metrics::set_global_recorder(GlobalRecorder(self.recorder.clone())).map_err(|_| {
            Error::InvalidArgument("a global metrics recorder is already installed".into())
        })
    }

    /// The recorder (for `metrics::with_local_recorder`, or to render by hand).
    pub fn recorder(&self) -> &Arc<ShardedRecorder> {
        &self.recorder
    }

    /// The Prometheus text format of every metric, shards merged.
    pub fn render(&self) -> String {
        self.recorder.render()
    }

    /// The endpoint's bound address, if one is served.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops the endpoint and the sampler and waits for them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
