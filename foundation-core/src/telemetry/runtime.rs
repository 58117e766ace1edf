//! Runtime metrics sampled on an interval, and the count of live Foundation tasks.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use metrics::Gauge;
use tokio_util::sync::CancellationToken;

static LIVE_TASKS: AtomicI64 = AtomicI64::new(0);

/// Held by every long-lived task Foundation spawns; counts it in
/// `foundation_tasks_live` while it lives.
#[derive(Debug)]
#[must_use = "the task is counted only while the guard lives"]
pub struct TaskGuard(());

impl TaskGuard {
    /// Counts one more live task until the guard is dropped.
    pub fn new() -> Self {
        LIVE_TASKS.fetch_add(1, Ordering::Relaxed);
        TaskGuard(())
    }
}

impl Default for TaskGuard {
    fn default() -> Self {
        TaskGuard::new()
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        LIVE_TASKS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Number of live Foundation tasks in this process (config writers, dispatchers, ...).
pub fn live_tasks() -> i64 {
    LIVE_TASKS.load(Ordering::Relaxed)
}

/// Resident set size of this process in bytes, from `/proc/self/status` (Linux); `None`
/// where that is not available.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The runtime sampler: gauges registered on creation (so a local recorder can own
/// them), updated by [`Sampler::run`].
pub(crate) struct Sampler {
    handle: tokio::runtime::Handle,
    g: Gauges,
}

/// Describes the runtime metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "foundation_runtime_workers",
        "Worker threads of the tokio runtime."
    );
    describe_gauge!(
        "foundation_runtime_alive_tasks",
        "Tasks alive in the tokio runtime."
    );
    describe_gauge!(
        "foundation_runtime_global_queue_depth",
        "Tasks waiting in the runtime's global queue."
    );
    describe_gauge!(
        "foundation_runtime_worker_busy_ratio",
        "Share of the last sampling interval a worker thread spent busy (0..1)."
    );
    describe_gauge!(
        "foundation_process_resident_memory_bytes",
        Unit::Bytes,
        "Resident set size of the process."
    );
    describe_gauge!(
        "foundation_tasks_live",
        "Long-lived Foundation tasks alive in the process."
    );
    describe_counter!(
        "foundation_telemetry_accept_errors_total",
        "Failed accepts on the metrics endpoint."
    );
}

struct Gauges {
    workers: Gauge,
    alive: Gauge,
    global_queue: Gauge,
    rss: Gauge,
    live: Gauge,
    busy: Vec<Gauge>,
}

impl Sampler {
    /// Registers the gauges with the current recorder.
    pub(crate) fn new(handle: tokio::runtime::Handle) -> Self {
        let workers = handle.metrics().num_workers();
        let g = Gauges {
        workers: metrics::gauge!("foundation_runtime_workers"),
        alive: metrics::gauge!("foundation_runtime_alive_tasks"),
        global_queue: metrics::gauge!("foundation_runtime_global_queue_depth"),
        rss: metrics::gauge!("foundation_process_resident_memory_bytes"),
        live: metrics::gauge!("foundation_tasks_live"),
        busy: (0..workers)
            .map(|w| metrics::gauge!("foundation_runtime_worker_busy_ratio", "worker" => w.to_string()))
            .collect(),
        };
        Sampler { handle, g }
    }

    /// Samples every `interval` until `cancel` fires.
    pub(crate) async fn run(self, interval: Duration, cancel: CancellationToken) {
        let _guard = TaskGuard::new();
        let Sampler { handle, g } = self;
        let m = handle.metrics();
        let workers = g.busy.len();
        let mut last_busy: Vec<Duration> = (0..workers)
            .map(|w| m.worker_total_busy_duration(w))
            .collect();
        let mut last_at = Instant::now();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            let wall = now.duration_since(last_at).as_secs_f64();
            last_at = now;
            g.workers.set(workers as f64);
            g.alive.set(m.num_alive_tasks() as f64);
            g.global_queue.set(m.global_queue_depth() as f64);
            g.live.set(live_tasks() as f64);
            if let Some(rss) = resident_memory_bytes() {
                g.rss.set(rss as f64);
            }
            for (w, gauge) in g.busy.iter().enumerate() {
                let busy = m.worker_total_busy_duration(w);
                let delta = busy.saturating_sub(last_busy[w]).as_secs_f64();
                last_busy[w] = busy;
                if wall > 0.0 {
                    gauge.set((delta / wall).clamp(0.0, 1.0));
                }
            }
        }
    }
}
