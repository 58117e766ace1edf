//! Latency recorders with percentiles, on [`hdrhistogram`].
//!
//! ```
//! use std::time::Duration;
//! use foundation_testkit::latency::LatencyRecorder;
//!
//! let mut r = LatencyRecorder::new();
//! for us in 1..=1000 {
//!     r.record(Duration::from_micros(us));
//! }
//! let s = r.summary();
//! assert_eq!(s.count, 1000);
//! assert!((s.p50_us - 500.0).abs() < 5.0);
//! assert!((s.p99_us - 990.0).abs() < 10.0);
//! ```

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Records durations (microsecond resolution, 3 significant digits, up to one hour).
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a [`LatencyRecorder`], in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl LatencySummary {
    /// `p50 … p99 … max` in milliseconds, for messages.
    pub fn describe_ms(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_us / 1e3,
            self.p99_us / 1e3,
            self.max_us / 1e3,
            self.count
        )
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static histogram bounds are valid");
        LatencyRecorder { hist }
    }

    /// Records one duration (clamped to 1 µs ..= 1 h).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The value at `quantile` (0..=1), µs.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64
    }

    /// The percentiles.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.hist.len(),
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.hist.max() as f64,
            mean_us: self.hist.mean(),
        }
    }

    /// Points of the cumulative distribution, `(latency µs, fraction ≤ it)`, one per
    /// distinct recorded value bucket; for plots.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.hist.len().max(1) as f64;
        let mut seen = 0u64;
        let mut out = Vec::new();
        for v in self.hist.iter_recorded() {
            seen += v.count_since_last_iteration();
            out.push((v.value_iterated_to() as f64, seen as f64 / total));
        }
        out
    }
}
