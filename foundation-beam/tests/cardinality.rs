//! Process metrics have bounded cardinality: spawning and stopping 10,000 processes —
//! named or not, in the default group or a user-chosen one, in an ecosystem — adds no
//! metric series once each group exists, and the groups' aggregate gauges return to
//! where they were.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use foundation_beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_beam::group::MetricsGroup;
use foundation_beam::process::{spawn, spawn_with, Context, Process, Reply, SpawnOptions};
use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::MetricKind;

struct Echo;

impl Process for Echo {
    type Message = (u64, Reply<u64>);
    async fn handle(&mut self, (n, reply): Self::Message, _: &mut Context<Self::Message>) {
        reply.send(n);
    }
}

type SeriesKey = (String, String, Vec<(String, String)>);
type Series = Vec<(MetricKind, String, Vec<(String, String)>, f64)>;

/// Every series the recorder holds, with its value so far: a `DebuggingRecorder`
/// snapshot resets counters and gauges to 0, so the values read are added up (every
/// gauge here moves by increments and decrements only, so the sum is its value).
#[derive(Default)]
struct Totals(BTreeMap<SeriesKey, (MetricKind, f64)>);

impl Totals {
    fn read(&mut self, s: &Snapshotter) -> Series {
        for (k, _, _, v) in s.snapshot().into_vec() {
            let (kind, key) = k.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            let v = match v {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            let entry = self
                .0
                .entry((format!("{kind:?}"), key.name().to_string(), labels))
                .or_insert((kind, 0.0));
            entry.1 += v;
        }
        self.0
            .iter()
            .map(|((_, name, labels), (kind, v))| (*kind, name.clone(), labels.clone(), *v))
            .collect()
    }
}

fn value(all: &Series, name: &str, group: &str) -> f64 {
    all.iter()
        .filter(|(_, n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == "group" && v == group)
        })
        .map(|s| s.3)
        .sum()
}

const T: Duration = Duration::from_secs(5);

#[test]
fn series_count_stays_constant_while_10000_processes_come_and_go() {
    // The whole test runs on this thread (current-thread runtime), so every spawn and
    // every process sees this recorder.
    let (rt, snapshotter, _local) = common::recorded_runtime(false);
    let mut totals = Totals::default();
    rt.block_on(async {
        let users = MetricsGroup::new("users");
        // One of each kind first, so that every group exists.
        let p = spawn(Echo);
        assert_eq!(p.call(|r| (1, r), T).await.unwrap(), 1);
        let q = spawn_with(Echo, SpawnOptions::new().name("first").group(&users)).unwrap();
        assert_eq!(q.call(|r| (2, r), T).await.unwrap(), 2);
        let spec = EcosystemSpec::new("echoes").workers(Workers::Fixed(4));
        let eco = Ecosystem::start(spec, |_| Echo).await.unwrap();
        assert_eq!(eco.call(|r| (3, r), T).await.unwrap(), 3);

        // Per-process numbers: on demand, from handles and the ecosystem.
        let workers = eco.processes();
        assert_eq!(workers.len(), 4);
        assert!(workers
            .iter()
            .all(|w| w.alive && w.backlog == 0 && w.dropped == 0));
        assert_eq!(q.info().name.as_deref(), Some("first"));

        let before = totals.read(&snapshotter);
        assert!(
            before
                .iter()
                .all(|(_, _, labels, _)| labels.iter().all(|(k, _)| k != "process")),
            "no series is labelled by process: {before:?}"
        );
        let live_default = value(&before, "foundation_processes_live", "default");
        let live_users = value(&before, "foundation_processes_live", "users");
        assert_eq!(live_default, 1.0);
        assert_eq!(live_users, 1.0);
        assert_eq!(value(&before, "foundation_processes_live", "echoes"), 4.0);

        // 10,000 processes: half anonymous, half named (each with its own name), each
        // sent a request and then stopped; the ecosystem grows and shrinks meanwhile.
        let mut handles = Vec::new();
        for i in 0..10_000u64 {
            let h = if i % 2 == 0 {
                spawn(Echo)
            } else {
                spawn_with(
                    Echo,
                    SpawnOptions::new().name(format!("user-{i}")).group(&users),
                )
                .unwrap()
            };
            handles.push(h);
        }
        let during = totals.read(&snapshotter);
        assert_eq!(
            during.len(),
            before.len(),
            "spawning 10,000 processes added series"
        );
        assert_eq!(
            value(&during, "foundation_processes_live", "default"),
            5_001.0
        );
        assert_eq!(
            value(&during, "foundation_processes_live", "users"),
            5_001.0
        );
        for (i, h) in handles.iter().enumerate() {
            assert_eq!(h.call(|r| (i as u64, r), T).await.unwrap(), i as u64);
        }
        eco.resize(8).await.unwrap();
        eco.resize(2).await.unwrap();
        for h in &handles {
            h.shutdown();
        }
        for h in &handles {
            h.monitor().wait().await;
        }
        drop(handles);

        let after = totals.read(&snapshotter);
        let names = |v: &Series| {
            v.iter()
                .map(|(k, n, l, _)| (*k, n.clone(), l.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&after),
            names(&before),
            "the series after 10,000 processes came and went are the series before"
        );
        // The aggregate gauges are back where they were (increments and decrements, never
        // overwritten by one process), and the counters counted every process.
        assert_eq!(
            value(&after, "foundation_processes_live", "default"),
            live_default
        );
        assert_eq!(
            value(&after, "foundation_processes_live", "users"),
            live_users
        );
        assert_eq!(value(&after, "foundation_processes_live", "echoes"), 2.0);
        assert_eq!(
            value(&after, "foundation_processes_started_total", "default"),
            5_001.0
        );
        assert_eq!(
            value(&after, "foundation_process_exits_total", "users"),
            5_000.0
        );
        assert_eq!(value(&after, "foundation_mailbox_backlog", "default"), 0.0);
        assert_eq!(value(&after, "foundation_mailbox_backlog", "users"), 0.0);
        eco.shutdown(T).await;
    });
}

struct Stuck;

impl Process for Stuck {
    type Message = tokio::sync::oneshot::Receiver<()>;
    async fn handle(&mut self, gate: Self::Message, _: &mut Context<Self::Message>) {
        let _ = gate.await;
    }
}

#[test]
fn a_group_backlog_is_the_sum_of_its_processes_not_the_last_writer() {
    let (rt, snapshotter, _local) = common::recorded_runtime(false);
    let mut totals = Totals::default();
    rt.block_on(async {
        let group = MetricsGroup::new("stuck");
        let a = spawn_with(Stuck, SpawnOptions::new().group(&group)).unwrap();
        let b = spawn_with(Stuck, SpawnOptions::new().group(&group)).unwrap();
        let (open_a, gate_a) = tokio::sync::oneshot::channel();
        let (open_b, gate_b) = tokio::sync::oneshot::channel();
        a.send(gate_a).await.unwrap();
        b.send(gate_b).await.unwrap();
        tokio::task::yield_now().await; // both now wait in their first message
        let mut held = Vec::new();
        for _ in 0..8 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            held.push(tx);
            a.send(rx).await.unwrap();
        }
        for _ in 0..4 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            held.push(tx);
            b.send(rx).await.unwrap();
        }
        assert_eq!((a.backlog(), b.backlog()), (8, 4));
        // Queues that grow are reported at each power of two: 8 + 4.
        let now = totals.read(&snapshotter);
        assert_eq!(value(&now, "foundation_mailbox_backlog", "stuck"), 12.0);
        // Release everything: both drain and go idle, and the group's backlog is 0.
        let _ = open_a.send(());
        let _ = open_b.send(());
        drop(held);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!((a.backlog(), b.backlog()), (0, 0));
        let now = totals.read(&snapshotter);
        assert_eq!(value(&now, "foundation_mailbox_backlog", "stuck"), 0.0);
        assert_eq!(value(&now, "foundation_processes_live", "stuck"), 2.0);
        drop((a, b));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let now = totals.read(&snapshotter);
        assert_eq!(value(&now, "foundation_processes_live", "stuck"), 0.0);
        assert_eq!(value(&now, "foundation_process_exits_total", "stuck"), 2.0);
    });
}
