//! Criterion benchmarks for Foundation live in `benches/benches/`; each puts a baseline
//! measured in the same run beside the Foundation code it measures. Run them with
//! `cargo bench -p foundation-benches`.
#![warn(missing_docs)]
