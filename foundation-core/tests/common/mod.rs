//! Set-up shared by this crate's integration tests (`mod common;` in each file that uses
//! it; a file uses only some of it, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use foundation_core::port::RestartPolicy;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// Runs `f` on a current-thread runtime under a local metrics recorder — every metric
/// handle made inside binds to it — and returns its output with every series recorded,
/// keyed `name{label=value,…}` (labels in their order, those named in `ignore` left
/// out; counters and gauges by value, histograms by sample count).
pub fn with_metrics<F: Future>(
    ignore: &[&str],
    f: impl FnOnce() -> F,
) -> (F::Output, BTreeMap<String, f64>) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    });
    let mut seen = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .filter(|l| !ignore.contains(&l.key()))
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        seen.insert(format!("{}{{{}}}", key.key().name(), labels.join(",")), v);
    }
    (out, seen)
}

/// Waits until `cond` holds, checking every 10 ms; panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A port restart policy for tests: 10 ms first backoff, at most 50 ms, 20 restarts.
pub fn fast_restarts() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        reset_after: Duration::from_secs(60),
        max_restarts: 20,
    }
}
