//! A million processes: a supervised tree of ecosystems, each worker sent one message.
//!
//! A root supervisor supervises `SHARDS` ecosystem supervisors (one-for-one), each of
//! `PER_SHARD` worker processes with default mailboxes. All workers share one metrics
//! group, so a Prometheus scrape sees one set of `group="million"` series however many
//! processes run. The example then sends every worker one message (`Handle::send().await`,
//! the path users call), collects every reply, reads the per-process numbers on demand
//! (backlogs, by handle), and shuts the whole tree down within a deadline.
//!
//! ```text
//! cargo run --release -p foundation-beam --example million
//! cargo run --release -p foundation-beam --example million -- 100000   # fewer processes
//! ```
//!
//! It prints the time of each phase, the size of a metrics scrape (Foundation's recorder
//! is installed: a bounded number of series however many processes run) and the peak
//! resident memory (`VmHWM` of `/proc/self/status`, Linux).

use std::time::{Duration, Instant};

use foundation_beam::core::telemetry::{Telemetry, TelemetrySettings};
use foundation_beam::group::MetricsGroup;
use foundation_beam::mailbox::MemoryStrategy;
use foundation_beam::process::{Context, Handle, Process};
use foundation_beam::supervisor::{Restart, Strategy, SupervisorSpec};
use tokio::sync::mpsc;

/// Processes per ecosystem.
const PER_SHARD: usize = 1_000;
/// The whole shutdown must finish within this.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// A worker: answers each number with its double on the reply channel it carries.
struct Worker;

struct Ping {
    n: u64,
    reply: mpsc::Sender<u64>,
}

impl Process for Worker {
    type Message = Ping;
    async fn handle(&mut self, msg: Ping, _: &mut Context<Ping>) {
        let _ = msg.reply.send(msg.n * 2).await;
    }
}

/// The series count of a scrape, and the group's process gauges and counters.
fn print_metrics(telemetry: &Telemetry) {
    let text = telemetry.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("foundation_process") && l.contains("group=\"million\""))
        .collect();
    println!("metrics: {series} series in a scrape; {}", ours.join(", "));
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.0} MiB", kb as f64 / 1024.0))
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000)
        .max(PER_SHARD);
    let shards = total / PER_SHARD;
    let total = shards * PER_SHARD;
    // Foundation's recorder, installed globally as a node would (scraped by Prometheus).
    let telemetry = Telemetry::start(TelemetrySettings {
        sample_interval_ms: 0,
        ..Default::default()
    })
    .await
    .expect("telemetry");
    telemetry
        .install_global()
        .expect("no other global recorder");
    foundation_beam::describe_metrics();
    let rss_start = status_kb("VmRSS:");
    println!(
        "million: {total} processes = {shards} ecosystems x {PER_SHARD} workers under one root supervisor; {} worker threads",
        tokio::runtime::Handle::current().metrics().num_workers()
    );

    // Spawn: the tree, then start it (the root starts each ecosystem, which starts its
    // workers). Handles are valid from here on; messages sent before a worker runs wait
    // in its mailbox.
    let t = Instant::now();
    let group = MetricsGroup::new("million");
    let mut root = SupervisorSpec::new("million", Strategy::OneForOne);
    let mut workers: Vec<Handle<Ping>> = Vec::with_capacity(total);
    for s in 0..shards {
        let mut eco =
            SupervisorSpec::new(format!("eco-{s}"), Strategy::OneForOne).metrics_group(&group);
        for w in 0..PER_SHARD {
            workers.push(eco.child(
                format!("eco-{s}.worker-{w}"),
                Restart::Permanent,
                MemoryStrategy::default(),
                || Worker,
            ));
        }
        root.supervisor(Restart::Permanent, eco);
    }
    let root = root.start();
    let spawned = t.elapsed();
    println!(
        "spawned  {total} processes (tree built and started; the workers start in the background) in {:>8.1} ms ({:.2} us each); RSS {}",
        spawned.as_secs_f64() * 1e3,
        spawned.as_secs_f64() * 1e6 / total as f64,
        mib(status_kb("VmRSS:"))
    );

    // Send each worker one message and collect every reply.
    let t = Instant::now();
    let (reply_tx, mut reply_rx) = mpsc::channel::<u64>(64 * 1024);
    let collector = tokio::spawn(async move {
        let (mut count, mut sum) = (0usize, 0u64);
        while let Some(v) = reply_rx.recv().await {
            count += 1;
            sum += v;
            if count == total {
                break;
            }
        }
        (count, sum)
    });
    for (i, w) in workers.iter().enumerate() {
        let ping = Ping {
            n: i as u64,
            reply: reply_tx.clone(),
        };
        if w.send(ping).await.is_err() {
            panic!("worker {i} refused its message");
        }
    }
    drop(reply_tx);
    let (count, sum) = collector.await.expect("collector");
    let exchanged = t.elapsed();
    let expected: u64 = (0..total as u64).map(|n| n * 2).sum();
    assert_eq!(
        (count, sum),
        (total, expected),
        "every worker answered once"
    );
    println!(
        "messaged {total} processes and collected {count} replies (includes the workers' start) in {:>8.1} ms ({:.2} us per process)",
        exchanged.as_secs_f64() * 1e3,
        exchanged.as_secs_f64() * 1e6 / total as f64
    );

    // Per-process numbers are read on demand, from the handles (no per-process series).
    let queued: usize = workers.iter().map(|w| w.backlog()).sum();
    let alive = workers.iter().filter(|w| w.is_alive()).count();
    println!("introspection: {alive} workers alive, {queued} messages queued in all");
    print_metrics(&telemetry);

    // Shut the tree down within a deadline: every ecosystem at once, each stopping its
    // workers; then check every worker is gone.
    let t = Instant::now();
    tokio::time::timeout(SHUTDOWN_DEADLINE, root.shutdown_together(SHUTDOWN_DEADLINE))
        .await
        .expect("the tree shuts down within its deadline");
    let stopped = t.elapsed();
    let still_alive = workers.iter().filter(|w| w.is_alive()).count();
    assert_eq!(still_alive, 0, "every worker stopped");
    println!(
        "shut down {total} processes in {:>8.1} ms (deadline {} s); {still_alive} still alive",
        stopped.as_secs_f64() * 1e3,
        SHUTDOWN_DEADLINE.as_secs()
    );
    print_metrics(&telemetry);
    drop(workers);
    let start_kb = rss_start.unwrap_or(0);
    println!(
        "peak RSS (VmHWM) {} (RSS at start {}); {:.0} B per process at peak",
        mib(status_kb("VmHWM:")),
        mib(rss_start),
        status_kb("VmHWM:").map_or(0.0, |hwm| (hwm.saturating_sub(start_kb) * 1024) as f64
            / total as f64)
    );
}
