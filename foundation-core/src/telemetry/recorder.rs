//! A `metrics::Recorder` sharded per thread, in front of the Prometheus exporter.
//!
//! Counters and histograms are written to a shard owned by the calling thread (a
//! cache-line-padded slot chosen once per thread), so two worker threads incrementing the
//! same counter never write the same cache line. On read ([`ShardedRecorder::render`]) the
//! shards are merged into the `metrics-exporter-prometheus` recorder, which keeps the
//! registry and writes the exposition format. Gauges are set, not summed, so they go to
//! the exporter directly.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::{Mutex, RwLock};

/// Samples a histogram shard buffers before it hands them to the exporter.
const HISTOGRAM_BATCH: usize = 256;

/// Prometheus' default histogram buckets, in seconds.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot number, assigned on first use, round-robin over threads.
#[inline]
fn thread_slot() -> usize {
    THREAD_SLOT.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        s.set(v);
        v
    })
}

/// One counter slot alone on its cache line(s): 128 bytes covers adjacent-line prefetch.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

struct ShardedCounter {
    shards: Box<[Padded]>,
    mask: usize,
    /// Set by `absolute`; the total is `base + sum(shards)`.
    base: AtomicU64,
    absolute_lock: Mutex<()>,
    inner: Counter,
}

impl ShardedCounter {
    fn total(&self) -> u64 {
        self.shards
            .iter()
            .fold(self.base.load(Ordering::Relaxed), |acc, s| {
                acc.wrapping_add(s.0.load(Ordering::Relaxed))
            })
    }

    fn flush(&self) {
        self.inner.absolute(self.total());
    }
}

impl CounterFn for ShardedCounter {
    #[inline]
    fn increment(&self, value: u64) {
        self.shards[thread_slot() & self.mask]
            .0
            .fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        // Rare (counters mirrored from elsewhere). Increments racing with it may be lost,
        // as with any "set" of a counter.
        let _g = self.absolute_lock.lock();
        for s in self.shards.iter() {
            s.0.store(0, Ordering::Relaxed);
        }
        self.base.store(value, Ordering::Relaxed);
    }
}

struct ShardedHistogram {
    shards: Box<[Mutex<Vec<f64>>]>,
    mask: usize,
    inner: Histogram,
}

impl ShardedHistogram {
    fn flush(&self) {
        for shard in self.shards.iter() {
            let batch = std::mem::take(&mut *shard.lock());
            for v in batch {
                self.inner.record(v);
            }
        }
    }
}

impl HistogramFn for ShardedHistogram {
    #[inline]
    fn record(&self, value: f64) {
        let mut shard = self.shards[thread_slot() & self.mask].lock();
        shard.push(value);
        if shard.len() >= HISTOGRAM_BATCH {
            // Bounded: a full shard is handed to the exporter by the recording thread.
            for v in shard.drain(..) {
                self.inner.record(v);
            }
        }
    }
}

/// The sharded recorder. Install it globally with [`super::Telemetry`], or use it
/// locally with `metrics::with_local_recorder` in tests.
pub struct ShardedRecorder {
    inner: PrometheusRecorder,
    handle: PrometheusHandle,
    shards: usize,
    counters: RwLock<HashMap<Key, Arc<ShardedCounter>>>,
    histograms: RwLock<HashMap<Key, Arc<ShardedHistogram>>>,
}

impl std::fmt::Debug for ShardedRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedRecorder")
            .field("shards", &self.shards)
            .field("counters", &self.counters.read().len())
            .field("histograms", &self.histograms.read().len())
            .finish()
    }
}

impl ShardedRecorder {
    /// A recorder with `shards` shards (rounded up to a power of two; at least the number
    /// of threads expected to record concurrently — the runtime's worker threads) and
    /// histogram buckets `buckets` (seconds or any unit; empty: summaries).
    pub fn new(shards: usize, buckets: &[f64], global_labels: &[(String, String)]) -> Self {
        let mut builder = PrometheusBuilder::new();
        if !buckets.is_empty() {
            builder = builder.set_buckets(buckets).expect("non-empty bucket list");
        }
        for (k, v) in global_labels {
            builder = builder.add_global_label(k.clone(), v.clone());
        }
        let inner = builder.build_recorder();
        let handle = inner.handle();
        ShardedRecorder {
            inner,
            handle,
            shards: shards.max(1).next_power_of_two(),
            counters: RwLock::default(),
            histograms: RwLock::default(),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Merges every shard into the exporter and renders the Prometheus text format.
    pub fn render(&self) -> String {
        self.flush();
        self.handle.render()
    }

    /// Merges every shard into the exporter.
    pub fn flush(&self) {
        for c in self.counters.read().values() {
            c.flush();
        }
        for h in self.histograms.read().values() {
            h.flush();
        }
        self.handle.run_upkeep();
    }
}

impl Recorder for ShardedRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if let Some(c) = self.counters.read().get(key) {
            return Counter::from_arc(c.clone());
        }
        let mut map = self.counters.write();
        let c = map.entry(key.clone()).or_insert_with(|| {
            Arc::new(ShardedCounter {
                shards: (0..self.shards).map(|_| Padded::default()).collect(),
                mask: self.shards - 1,
                base: AtomicU64::new(0),
                absolute_lock: Mutex::new(()),
                inner: self.inner.register_counter(key, metadata),
            })
        });
        Counter::from_arc(c.clone())
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if let Some(h) = self.histograms.read().get(key) {
            return Histogram::from_arc(h.clone());
        }
        let mut map = self.histograms.write();
        let h = map.entry(key.clone()).or_insert_with(|| {
            Arc::new(ShardedHistogram {
                shards: (0..self.shards).map(|_| Mutex::new(Vec::new())).collect(),
                mask: self.shards - 1,
                inner: self.inner.register_histogram(key, metadata),
            })
        });
        Histogram::from_arc(h.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_from_many_threads_merge_exactly() {
        let rec = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    metrics::with_local_recorder(&*rec, || {
                        let c = metrics::counter!("t_hits_total", "k" => "v");
                        for _ in 0..10_000 {
                            c.increment(1);
                        }
                        for i in 0..1000 {
                            metrics::histogram!("t_latency_seconds").record(i as f64 / 1000.0);
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = rec.render();
        assert!(text.contains("t_hits_total{k=\"v\"} 60000"), "{text}");
        assert!(text.contains("t_latency_seconds_count 6000"), "{text}");
    }

    #[test]
    fn absolute_sets_the_total() {
        let rec = ShardedRecorder::new(4, &[], &[]);
        metrics::with_local_recorder(&rec, || {
            let c = metrics::counter!("t_abs_total");
            c.increment(5);
            c.absolute(100);
            c.increment(1);
        });
        assert!(rec.render().contains("t_abs_total 101"));
    }
}
