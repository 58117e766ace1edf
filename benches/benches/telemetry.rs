//! Telemetry benchmarks: counter increments from 2 threads on the same counter, through
//! Foundation's per-thread sharded recorder vs through `metrics-exporter-prometheus`'s own
//! recorder (the baseline), measured in the same run. Also one thread, for reference.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use metrics::{Key, Metadata, Recorder};

const PER_THREAD: u64 = 1_000_000;

fn counter_from(recorder: &dyn Recorder) -> metrics::Counter {
    static META: Metadata<'static> = Metadata::new("bench", metrics::Level::INFO, None);
    recorder.register_counter(&Key::from_static_name("bench_hits_total"), &META)
}

/// Time for `threads` threads to each increment `counter` `PER_THREAD` times, per
/// `iters` rounds.
fn run(counter: &metrics::Counter, threads: usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let barrier = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let c = counter.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    for _ in 0..PER_THREAD {
                        c.increment(black_box(1));
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().unwrap();
        }
        total += start.elapsed();
    }
    total
}

fn counters(c: &mut Criterion) {
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let sharded = ShardedRecorder::new(4, &DEFAULT_BUCKETS, &[]);
    let base = counter_from(&exporter);
    let ours = counter_from(&sharded);
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("counter_increment_{threads}_threads"));
        g.throughput(Throughput::Elements(PER_THREAD * threads as u64));
        g.sample_size(20);
        g.bench_function("baseline_exporter_recorder", |b| {
            b.iter_custom(|n| run(&base, threads, n))
        });
        g.bench_function("foundation_sharded_recorder", |b| {
            b.iter_custom(|n| run(&ours, threads, n))
        });
        g.finish();
    }
    // The merged value must be exact.
    assert!(sharded.render().contains("bench_hits_total"));
}

criterion_group!(benches, counters);
criterion_main!(benches);
