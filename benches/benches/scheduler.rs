//! Does a CPU-heavy job starve the runtime? A 1 ms ticker's lateness while CPU jobs run,
//! with and without the work budget of `foundation_beam::scheduler`.
//!
//! Runtime: multi-thread, 2 worker threads. One job is ~500 ms of CPU on one thread
//! (items of ~1 µs, calibrated at start). Because there are two workers, a single
//! non-yielding job would leave the other worker free for the ticker and show nothing;
//! each scenario therefore runs **two** jobs at once, so that both workers are occupied:
//!
//! * `idle`: no job, the ticker alone (the timer's floor);
//! * `plain loop`: two tasks, each a plain `for` loop over its items (no yield);
//! * `cpu_intensive`: two tasks, each `cpu_intensive_with` over the same items, yielding
//!   every `UNITS` items (~0.25 ms);
//! * `spread`: one `spread` call over both jobs' items, one part per worker.
//!
//! The ticker is a task that sleeps 1 ms in a loop and records how late each wake-up is
//! (elapsed − 1 ms). Columns: ticks seen during the jobs, p50 / p99 / worst lateness, and
//! the wall time until both jobs are done. Each scenario runs `ROUNDS` times.
//!
//! Run with `cargo bench -p foundation-benches --bench scheduler`. This is a program, not
//! a criterion bench: the quantity is a latency distribution under load, which criterion's
//! per-iteration timing does not measure.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_beam::core::budget::Budget;
use foundation_beam::scheduler::{cpu_intensive_with, spread_with};

/// Items per yield: ~0.25 ms slices with ~1 µs items.
const UNITS: u32 = 250;
/// Target CPU time of one job.
const JOB: Duration = Duration::from_millis(500);
const ROUNDS: usize = 3;
const TICK: Duration = Duration::from_millis(1);

static ITERS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// `iters` rounds of a 64-bit mixer.
fn mix(seed: u64, iters: u32) -> u64 {
    let mut x = black_box(seed);
    for _ in 0..iters {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x ^= x >> 33;
    }
    x
}

/// One unit of CPU work, ~1 µs once calibrated.
fn work(seed: u64) -> u64 {
    mix(seed, *ITERS.get().expect("calibrated"))
}

/// Time of one call of `f`: the best of five averages over `n` calls, so that a moment
/// of competition for the CPU (the machine is shared) does not skew the calibration.
fn time_per_call(n: u32, f: impl Fn(u64) -> u64) -> Duration {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for i in 0..n {
                black_box(f(i as u64));
            }
            start.elapsed() / n
        })
        .min()
        .expect("five samples")
}

/// Fixes the mixer rounds for ~1 µs per item; returns the item count of a `JOB`-long job.
fn calibrate() -> usize {
    const PROBE: u32 = 256;
    let probe = time_per_call(20_000, |x| mix(x, PROBE));
    let iters = (PROBE as f64 * 1_000.0 / probe.as_nanos().max(1) as f64).max(1.0) as u32;
    ITERS.set(iters).expect("calibrated once");
    let per_item = time_per_call(20_000, work);
    (JOB.as_nanos() / per_item.as_nanos().max(1)) as usize
}

#[derive(Clone, Copy)]
enum Scenario {
    Idle,
    Plain,
    Budgeted,
    Spread,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle (no job)",
            Scenario::Plain => "2 x plain loop",
            Scenario::Budgeted => "2 x cpu_intensive",
            Scenario::Spread => "spread, 2 parts",
        }
    }
}

struct Row {
    ticks: usize,
    p50: Duration,
    p99: Duration,
    worst: Duration,
    wall: Duration,
}

async fn run(scenario: Scenario, items: usize) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut late = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                tokio::time::sleep(TICK).await;
                let woke = Instant::now();
                late.push((woke, woke.duration_since(start).saturating_sub(TICK)));
            }
            late
        }
    });
    // Let the ticker settle before the load starts.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let inputs: Vec<u64> = (0..items as u64).collect();
    let start = Instant::now();
    match scenario {
        Scenario::Idle => tokio::time::sleep(JOB).await,
        Scenario::Plain => {
            let jobs: Vec<_> = (0..2)
                .map(|_| {
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::with_capacity(inputs.len());
                        for x in inputs {
                            out.push(work(x));
                        }
                        out
                    })
                })
                .collect();
            for job in jobs {
                black_box(job.await.unwrap());
            }
        }
        Scenario::Budgeted => {
            let jobs: Vec<_> = (0..2)
                .map(|_| {
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        let mut budget = Budget::new(UNITS);
                        cpu_intensive_with(inputs, &mut budget, work).await.unwrap()
                    })
                })
                .collect();
            for job in jobs {
                black_box(job.await.unwrap());
            }
        }
        Scenario::Spread => {
            let mut both = inputs.clone();
            both.extend_from_slice(&inputs);
            black_box(
                spread_with(both, 2, Budget::new(UNITS), work)
                    .await
                    .unwrap(),
            );
        }
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Keep the ticks that woke while the jobs ran (or after: a tick starved by the jobs
    // wakes when they end).
    let mut late: Vec<Duration> = ticker
        .await
        .unwrap()
        .into_iter()
        .filter(|(woke, _)| *woke >= start)
        .map(|(_, late)| late)
        .collect();
    late.sort_unstable();
    let pct = |p: f64| late[((late.len() - 1) as f64 * p) as usize];
    Row {
        ticks: late.len(),
        p50: pct(0.50),
        p99: pct(0.99),
        worst: *late.last().unwrap(),
        wall,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1_000.0)
}

fn main() {
    let items = calibrate();
    let per_item = JOB / items as u32;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "scheduler bench: 2 workers, {items} items/job (~{} ns/item), {ROUNDS} rounds, cpu_intensive units = {UNITS}",
        per_item.as_nanos()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    println!(
        "{:<20} {:>5} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "round", "ticks", "p50 ms", "p99 ms", "worst ms", "wall ms"
    );
    // Rounds outside, scenarios inside: a burst of load from elsewhere on the machine
    // then hits every scenario alike rather than all rounds of one.
    for round in 1..=ROUNDS {
        for scenario in [
            Scenario::Idle,
            Scenario::Plain,
            Scenario::Budgeted,
            Scenario::Spread,
        ] {
            let row = rt.block_on(run(scenario, items));
            println!(
                "{:<20} {:>5} {:>6} {:>10} {:>10} {:>10} {:>10}",
                scenario.name(),
                round,
                row.ticks,
                ms(row.p50),
                ms(row.p99),
                ms(row.worst),
                ms(row.wall)
            );
        }
    }
}
