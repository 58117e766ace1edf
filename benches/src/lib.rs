//! Criterion benchmarks for Foundation live in `benches/benches/`; each puts a baseline
//! measured in the same run beside the Foundation code it measures. Run them with
//! `cargo bench -p foundation-benches`.
//!
//! This library holds what the benches and the report binary (`src/bin/report.rs`)
//! share, so that a figure in the report and one from `cargo bench` measure the same
//! code: the peer actors ([`peers`]), the loopback TCP harnesses ([`tcp`]) and the
//! runtime they run on ([`runtime`]).
#![warn(missing_docs)]

pub mod peers;
pub mod tcp;

/// The runtime the comparative benches run on: multi-thread, 2 workers, I/O and timers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
