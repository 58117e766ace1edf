//! Spawn cost and memory per idle process at 10k, 100k and 1M live processes, beside raw
//! tokio (`tokio::spawn` + `mpsc::channel(1024)`), `ractor` and `kameo`, in one run.
//!
//! Criterion does not suit "N processes alive" scenarios (an iteration would have to keep
//! everything it spawned), so this is a custom harness (`harness = false`). Every
//! measurement runs in a fresh child process (this binary re-executed with `--child`), so
//! the RSS delta of one measurement is not hidden by memory an earlier one freed.
//!
//! `foundation_named_recorder` spawns named processes with Foundation's metrics recorder
//! installed globally (a spawn registers no metric series, whatever the name).
//!
//! In each child: a 2-worker multi-thread runtime; one task spawns `N` idle processes with
//! default options and keeps their handles (as a user would); then it waits for the
//! runtime to settle and reads `VmRSS` from `/proc/self/status`. Reported per process:
//!
//! * `wall ns/spawn (avg)` — wall time of the whole spawn loop / N;
//! * `wall ns/spawn (last 10%)` — wall time of the last 10% of the spawns / (N/10): the
//!   cost of a spawn when about N processes are alive already;
//! * `CPU ns/spawn` — the same with the CPU time of all the process's threads
//!   (`CLOCK_PROCESS_CPUTIME_ID`): on a shared machine wall time also counts time other
//!   programs held the cores, CPU time does not (page faults and first polls included);
//! * `bytes` — RSS after spawning and settling minus RSS before, / N (handles included).
//!
//! Each figure is the median of `SPAWN_BENCH_REPS` runs (default 3). The peer crates run
//! at 1M only if the estimate from their 100k run fits in a third of `MemAvailable` (the
//! machine may be shared); the table
//! says when they were skipped.
//!
//! ```text
//! cargo bench -p foundation-benches --bench spawn
//! SPAWN_BENCH_SIZES=10000,100000 SPAWN_BENCH_IMPLS=tokio,foundation cargo bench -p foundation-benches --bench spawn
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use foundation_beam::process::{spawn, spawn_with, Context, Process, SpawnOptions};
use tokio::sync::mpsc;

const IMPLS: [&str; 5] = [
    "tokio",
    "foundation",
    "foundation_named_recorder",
    "ractor",
    "kameo",
];
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time used by every thread of this process so far, in ns. The machine may be
/// shared: CPU time, unlike wall time, does not count the time other programs held the
/// cores.
fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn mem_available_kb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---- the idle processes ----

struct Idle;

impl Process for Idle {
    type Message = u64;
    async fn handle(&mut self, msg: u64, _: &mut Context<u64>) {
        std::hint::black_box(msg);
    }
}

struct RIdle;

impl ractor::Actor for RIdle {
    type Msg = u64;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<u64>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

#[derive(kameo::Actor)]
struct KIdle;

/// Wall and CPU time of a stretch of spawns.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: Duration,
    cpu_ns: u64,
}

/// Spawns `n` processes with `spawn_one`, keeping what it returns; returns the handles,
/// the cost of the whole loop and the cost of its last 10%.
async fn spawn_many<H, F, Fut>(n: usize, mut spawn_one: F) -> (Vec<H>, Cost, Cost)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = H>,
{
    let mut keep = Vec::with_capacity(n);
    let tail_from = n - n / 10;
    let start = Instant::now();
    let cpu_start = cpu_ns();
    let mut tail_start = start;
    let mut tail_cpu = cpu_start;
    for i in 0..n {
        if i == tail_from {
            tail_start = Instant::now();
            tail_cpu = cpu_ns();
        }
        keep.push(spawn_one().await);
    }
    let end = Instant::now();
    let cpu_end = cpu_ns();
    (
        keep,
        Cost {
            wall: end - start,
            cpu_ns: cpu_end - cpu_start,
        },
        Cost {
            wall: end - tail_start,
            cpu_ns: cpu_end - tail_cpu,
        },
    )
}

/// One measurement, in this (child) process. Prints one `RESULT` line.
fn child(kind: &str, n: usize) {
    let rt = runtime();
    let rss_before = status_kb("VmRSS:").expect("VmRSS");
    let kind_owned = kind.to_string();
    let (keep, total, tail) = rt.block_on(async move {
        rt_spawned(async move {
            let (keep, total, tail): (Box<dyn std::any::Any + Send>, _, _) = match kind_owned
                .as_str()
            {
                "tokio" => {
                    let (k, t, l) = spawn_many(n, || async {
                        let (tx, mut rx) = mpsc::channel::<u64>(1024);
                        tokio::spawn(async move {
                            while let Some(v) = rx.recv().await {
                                std::hint::black_box(v);
                            }
                        });
                        tx
                    })
                    .await;
                    (Box::new(k), t, l)
                }
                "foundation" => {
                    let (k, t, l) = spawn_many(n, || async { spawn(Idle) }).await;
                    (Box::new(k), t, l)
                }
                "foundation_named_recorder" => {
                    // Named processes with Foundation's recorder installed: spawning
                    // registers no series (metrics belong to the group).
                    let telemetry = foundation_core::telemetry::Telemetry::start(
                        foundation_core::telemetry::TelemetrySettings {
                            sample_interval_ms: 0,
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("telemetry");
                    telemetry.install_global().expect("global recorder");
                    let mut i = 0u64;
                    let (k, t, l) =
                        spawn_many(n, || {
                            i += 1;
                            let name = format!("process-{i}");
                            async move {
                                spawn_with(Idle, SpawnOptions::new().name(name)).expect("spawn")
                            }
                        })
                        .await;
                    let series = telemetry
                        .render()
                        .lines()
                        .filter(|l| !l.starts_with('#'))
                        .count();
                    println!("NOTE {n} named processes alive, recorder renders {series} series");
                    (Box::new((k, telemetry)), t, l)
                }
                "ractor" => {
                    let (k, t, l) = spawn_many(n, || async {
                        ractor::Actor::spawn(None, RIdle, ())
                            .await
                            .expect("ractor spawn")
                            .0
                    })
                    .await;
                    (Box::new(k), t, l)
                }
                "kameo" => {
                    use kameo::actor::Spawn;
                    let (k, t, l) = spawn_many(n, || async { KIdle::spawn(KIdle) }).await;
                    (Box::new(k), t, l)
                }
                other => panic!("unknown implementation {other}"),
            };
            // Let every spawned task run its first poll.
            tokio::time::sleep(Duration::from_millis(300)).await;
            (keep, total, tail)
        })
        .await
    });
    let rss_after = status_kb("VmRSS:").expect("VmRSS");
    let bytes = (rss_after.saturating_sub(rss_before) * 1024) as f64 / n as f64;
    println!(
        "RESULT {kind} {n} {:.0} {:.0} {:.0} {:.0} {:.0}",
        total.wall.as_nanos() as f64 / n as f64,
        tail.wall.as_nanos() as f64 / (n / 10) as f64,
        total.cpu_ns as f64 / n as f64,
        tail.cpu_ns as f64 / (n / 10) as f64,
        bytes
    );
    // Tear down without waiting for a million destructors: the figures are taken.
    std::mem::forget(keep);
    std::mem::forget(rt);
    std::process::exit(0);
}

/// Runs `fut` as a task of the runtime (spawning from a worker thread, as user code does).
async fn rt_spawned<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    tokio::spawn(fut).await.expect("spawner task")
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    avg_ns: f64,
    tail_ns: f64,
    cpu_ns: f64,
    tail_cpu_ns: f64,
    bytes: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run_child(kind: &str, n: usize, reps: usize, notes: &mut Vec<String>) -> Option<Figures> {
    let exe = std::env::current_exe().expect("current exe");
    let mut runs = Vec::new();
    for _ in 0..reps {
        let out = Command::new(&exe)
            .args(["--child", kind, &n.to_string()])
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        for note in text.lines().filter(|l| l.starts_with("NOTE ")) {
            notes.push(note[5..].to_string());
        }
        let line = text.lines().find(|l| l.starts_with("RESULT "));
        let Some(line) = line else {
            eprintln!(
                "{kind} {n}: child failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        };
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(3)
            .map(|x| x.parse().expect("number"))
            .collect();
        runs.push(Figures {
            avg_ns: f[0],
            tail_ns: f[1],
            cpu_ns: f[2],
            tail_cpu_ns: f[3],
            bytes: f[4],
        });
    }
    Some(Figures {
        avg_ns: median(runs.iter().map(|r| r.avg_ns).collect()),
        tail_ns: median(runs.iter().map(|r| r.tail_ns).collect()),
        cpu_ns: median(runs.iter().map(|r| r.cpu_ns).collect()),
        tail_cpu_ns: median(runs.iter().map(|r| r.tail_cpu_ns).collect()),
        bytes: median(runs.iter().map(|r| r.bytes).collect()),
    })
}

fn env_list<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let v = std::env::var(name).ok()?;
    Some(v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let kind = &args[i + 1];
        let n: usize = args[i + 2].parse().expect("N");
        child(kind, n);
        return;
    }
    let sizes: Vec<usize> = env_list("SPAWN_BENCH_SIZES").unwrap_or_else(|| SIZES.to_vec());
    let impls: Vec<String> = env_list("SPAWN_BENCH_IMPLS")
        .unwrap_or_else(|| IMPLS.iter().map(|s| s.to_string()).collect());
    let reps: usize = std::env::var("SPAWN_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("spawn: 2-worker runtime, idle processes kept alive, median of {reps} runs, each in a fresh process");
    println!("| live | impl | wall ns/spawn (avg) | wall ns/spawn (last 10%) | CPU ns/spawn (avg) | CPU ns/spawn (last 10%) | bytes/process | CPU avg vs tokio | CPU last 10% vs tokio | wall avg vs tokio | bytes vs tokio |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut bytes_seen: std::collections::HashMap<String, f64> = Default::default();
    let mut notes = Vec::new();
    for &n in &sizes {
        let mut tokio_fig: Option<Figures> = None;
        for kind in &impls {
            let peer = kind == "ractor" || kind == "kameo";
            if peer && n >= 1_000_000 {
                // Only if the estimate from a smaller run fits in a third of the free memory.
                let estimate_kb = bytes_seen
                    .get(kind)
                    .map(|b| b * n as f64 * 1.3 / 1024.0)
                    .unwrap_or(f64::INFINITY);
                let avail = mem_available_kb().unwrap_or(0) as f64;
                if estimate_kb > avail / 3.0 {
                    println!(
                        "| {n} | {kind} | skipped: needs ~{:.1} GB, {:.1} GB available | | | | | | | | |",
                        estimate_kb / 1024.0 / 1024.0,
                        avail / 1024.0 / 1024.0
                    );
                    continue;
                }
            }
            let Some(f) = run_child(kind, n, reps, &mut notes) else {
                println!("| {n} | {kind} | failed | | | | | | | | |");
                continue;
            };
            bytes_seen.insert(kind.clone(), f.bytes);
            if kind == "tokio" {
                tokio_fig = Some(f);
            }
            let ratio = |a: f64, b: Option<f64>| match b {
                Some(b) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!(
                "| {n} | {kind} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                f.avg_ns,
                f.tail_ns,
                f.cpu_ns,
                f.tail_cpu_ns,
                f.bytes,
                ratio(f.cpu_ns, tokio_fig.map(|t| t.cpu_ns)),
                ratio(f.tail_cpu_ns, tokio_fig.map(|t| t.tail_cpu_ns)),
                ratio(f.avg_ns, tokio_fig.map(|t| t.avg_ns)),
                ratio(f.bytes, tokio_fig.map(|t| t.bytes)),
            );
        }
    }
    notes.dedup();
    for note in notes {
        println!("note: {note}");
    }
}
