//! Set-up shared by this crate's integration tests (`mod common;` in each file that uses
//! it; a file uses only some of it, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;

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
