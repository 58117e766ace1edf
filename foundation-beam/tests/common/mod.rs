//! Set-up shared by this crate's integration tests (`mod common;` in each file that uses
//! it; a file uses only some of it, hence the `dead_code` allowance).
#![allow(dead_code)]

use metrics::LocalRecorderGuard;
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tokio::runtime::Runtime;

/// A current-thread runtime (its clock paused when `paused`) and a fresh metrics recorder
/// installed as this thread's default while the returned guard lives: every process the
/// runtime runs records into it, and the snapshotter reads it. (The recorder is leaked:
/// a few hundred bytes per test.)
pub fn recorded_runtime(paused: bool) -> (Runtime, Snapshotter, LocalRecorderGuard<'static>) {
    let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
    let snapshotter = recorder.snapshotter();
    let guard = metrics::set_default_local_recorder(recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    (rt, snapshotter, guard)
}
