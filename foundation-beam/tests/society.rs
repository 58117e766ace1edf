//! Behaviour of `foundation_beam::society`: wirings, routed sends, adaptive rewiring.

use std::collections::HashMap;
use std::time::Duration;

use foundation_beam::core::events::{Event, Events, Filter};
use foundation_beam::mailbox::{MemoryStrategy, Overflow, SendError};
use foundation_beam::process::{spawn_fn, spawn_with, Context, Process, SpawnOptions};
use foundation_beam::society::{
    AdaptiveSettings, Envelope, RewireReason, Society, SocietySendError, SocietySettings, Topology,
};
use foundation_beam::Handle;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::mpsc;
use tokio::time::advance;

/// The fields of the `system` event payload this test reads.
#[derive(serde::Deserialize)]
struct RewiredPayload {
    society: String,
    before: Vec<(usize, usize)>,
    after: Vec<(usize, usize)>,
}

type Seen = (usize, usize, u32, u32);

/// `n` members that report every envelope they receive.
fn members(n: usize) -> (Vec<Handle<Envelope<u32>>>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handles = (0..n)
        .map(|_| {
            let tx = tx.clone();
            spawn_fn(move |mut inbox| async move {
                while let Some(env) = inbox.recv().await {
                    let env: Envelope<u32> = env;
                    let _ = tx.send((env.from, env.to, env.hops, env.msg));
                }
            })
        })
        .collect();
    (handles, rx)
}

fn settings(name: &str, topology: Topology) -> SocietySettings {
    SocietySettings {
        name: name.into(),
        topology,
        ..Default::default()
    }
}

fn adaptive(name: &str, adaptive: AdaptiveSettings) -> SocietySettings {
    SocietySettings {
        name: name.into(),
        topology: Topology::Adaptive,
        adaptive,
    }
}

fn fast() -> AdaptiveSettings {
    AdaptiveSettings {
        interval_ms: 100,
        top_pairs: 4,
        max_degree: 4,
        min_messages: 5,
    }
}

/// The next pseudo-random pair of members of `n` (a 64-bit LCG over `x`).
fn random_pair(x: &mut u64, n: usize) -> (usize, usize) {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*x >> 33) as usize % n, (*x >> 13) as usize % n)
}

#[tokio::test]
async fn mesh_neighbours_everyone_at_one_hop() {
    let (m, _rx) = members(5);
    let s = Society::start(settings("mesh", Topology::Mesh), m).unwrap();
    assert_eq!(s.neighbours(2).unwrap(), vec![0, 1, 3, 4]);
    for a in 0..5 {
        for b in 0..5 {
            assert_eq!(s.hops(a, b).unwrap(), u32::from(a != b));
        }
    }
    assert_eq!(s.topology().edges().len(), 10);
    assert!(!s.is_rewiring());
}

#[tokio::test]
async fn ring_neighbours_are_the_two_sides() {
    let (m, _rx) = members(6);
    let s = Society::start(settings("ring", Topology::Ring), m).unwrap();
    assert_eq!(s.neighbours(0).unwrap(), vec![1, 5]);
    assert_eq!(s.neighbours(3).unwrap(), vec![2, 4]);
    assert_eq!(s.hops(0, 3).unwrap(), 3);
    assert_eq!(s.hops(1, 5).unwrap(), 2);
    assert_eq!(s.topology().path(0, 3), Some(vec![0, 1, 2, 3]));
    assert_eq!(s.topology().edges().len(), 6);

    let (two, _rx2) = members(2);
    let s2 = Society::start(settings("ring2", Topology::Ring), two).unwrap();
    assert_eq!(s2.neighbours(0).unwrap(), vec![1]);
}

#[tokio::test]
async fn tree_neighbours_are_parent_and_children() {
    let (m, _rx) = members(10);
    let s = Society::start(settings("tree", Topology::Tree { fanout: 3 }), m).unwrap();
    assert_eq!(s.neighbours(0).unwrap(), vec![1, 2, 3]);
    assert_eq!(s.neighbours(1).unwrap(), vec![0, 4, 5, 6]);
    assert_eq!(s.neighbours(3).unwrap(), vec![0]);
    assert_eq!(s.neighbours(9).unwrap(), vec![2]);
    // 4 → 1 → 0 → 2 → 9
    assert_eq!(s.hops(4, 9).unwrap(), 4);
    assert_eq!(s.topology().path(4, 9), Some(vec![4, 1, 0, 2, 9]));
    assert_eq!(s.topology().edges().len(), 9);
}

#[tokio::test]
async fn sends_are_routed_and_report_hops() {
    let (m, mut rx) = members(8);
    let s = Society::start(settings("route", Topology::Ring), m).unwrap();
    let sent = s.send(0, 4, 7).await.unwrap();
    assert_eq!(sent.hops, 4);
    assert_eq!(sent.next_hop, 1);
    assert_eq!(rx.recv().await, Some((0, 4, 4, 7)));

    let sent = s.try_send(2, 3, 8).unwrap();
    assert_eq!((sent.hops, sent.next_hop), (1, 3));
    assert_eq!(rx.recv().await, Some((2, 3, 1, 8)));

    let sent = s.send(5, 5, 9).await.unwrap();
    assert_eq!((sent.hops, sent.next_hop), (0, 5));
    assert_eq!(rx.recv().await, Some((5, 5, 0, 9)));
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_members_and_bad_settings_are_errors() {
    let (m, _rx) = members(3);
    let s = Society::start(settings("bad", Topology::Ring), m).unwrap();
    match s.send(0, 3, 42).await {
        Err(SocietySendError::UnknownMember { member: 3, msg: 42 }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.neighbours(7).unwrap_err().code(), 4010);
    assert!(s.hops(9, 0).is_err());

    assert!(Society::<u32>::start(settings("none", Topology::Ring), Vec::new()).is_err());
    let (m, _rx) = members(3);
    assert!(Society::start(settings("t0", Topology::Tree { fanout: 0 }), m).is_err());
    let (m, _rx) = members(3);
    let zero = AdaptiveSettings {
        interval_ms: 0,
        ..fast()
    };
    assert!(Society::start(adaptive("a0", zero), m).is_err());
}

/// A member that never reads its one-slot mailbox.
struct Stuck;
impl Process for Stuck {
    type Message = Envelope<u32>;
    async fn handle(&mut self, _: Envelope<u32>, _: &mut Context<Envelope<u32>>) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test]
async fn a_refusing_mailbox_hands_the_message_back() {
    let stuck = spawn_with(
        Stuck,
        SpawnOptions::new().memory(MemoryStrategy::bounded(1, Overflow::Reject)),
    )
    .unwrap();
    let (mut m, _rx) = members(1);
    m.push(stuck);
    let s = Society::start(settings("full", Topology::Mesh), m).unwrap();
    // The first is taken into `handle` (and never finishes), the second fills the slot.
    s.try_send(0, 1, 1).unwrap();
    tokio::task::yield_now().await;
    s.try_send(0, 1, 2).unwrap();
    match s.try_send(0, 1, 3) {
        Err(SocietySendError::Mailbox(SendError::Full(3))) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn adaptive_rewiring_makes_heavy_talkers_neighbours() {
    let events = Events::new().unwrap();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let _sub = events
        .subscribe(Filter::of_type("system"), move |e: Event| {
            let ev_tx = ev_tx.clone();
            async move {
                let _ = ev_tx.send(e);
            }
        })
        .unwrap();
    let (m, mut rx) = members(10);
    let s = Society::start_with_events(adaptive("adapt", fast()), m, events.clone()).unwrap();
    let mut rewirings = s.subscribe();
    assert_eq!(s.neighbours(0).unwrap(), vec![1, 9]);
    assert_eq!(s.hops(0, 5).unwrap(), 5);

    for i in 0..20 {
        let sent = s.send(0, 5, i).await.unwrap();
        assert_eq!(sent.hops, 5);
    }
    for _ in 0..20 {
        rx.recv().await.unwrap();
    }
    advance(Duration::from_millis(100)).await;
    let rewired = rewirings.recv().await.unwrap();
    assert_eq!(rewired.society, "adapt");
    assert!(!rewired.before.contains(&(0, 5)));
    assert!(rewired.after.contains(&(0, 5)));
    match &rewired.reason {
        RewireReason::Traffic { pairs } => {
            assert_eq!(pairs.len(), 1);
            assert_eq!((pairs[0].a, pairs[0].b, pairs[0].score), (0, 5, 20));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.neighbours(0).unwrap(), vec![1, 5, 9]);
    assert_eq!(s.hops(0, 5).unwrap(), 1);
    let sent = s.send(5, 0, 99).await.unwrap();
    assert_eq!(sent.hops, 1);
    assert_eq!(rx.recv().await, Some((5, 0, 1, 99)));
    // Shortcuts help their neighbourhood too: 0 → 5 → 6.
    assert_eq!(s.hops(0, 6).unwrap(), 2);

    let event = tokio::time::timeout(Duration::from_secs(5), ev_rx.recv())
        .await
        .expect("a rewiring event")
        .unwrap();
    assert_eq!(event.event_type.as_str(), "system");
    let payload: RewiredPayload = event.payload().unwrap();
    assert_eq!(payload.society, "adapt");
    assert_eq!(payload.before, rewired.before);
    assert_eq!(payload.after, rewired.after);
    s.shutdown().await;
    events.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn quiet_pairs_lose_their_shortcut() {
    let (m, _rx) = members(8);
    let s = Society::start(adaptive("decay", fast()), m).unwrap();
    let mut rewirings = s.subscribe();
    for i in 0..20 {
        s.try_send(2, 6, i).unwrap();
    }
    advance(Duration::from_millis(100)).await;
    assert!(rewirings.recv().await.unwrap().after.contains(&(2, 6)));
    // Score 20 → 10 → 5 → 2: below `min_messages` (5) at the third quiet period.
    advance(Duration::from_millis(100)).await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(s.hops(2, 6).unwrap(), 1);
    advance(Duration::from_millis(100)).await;
    let dropped = rewirings.recv().await.unwrap();
    assert!(!dropped.after.contains(&(2, 6)));
    assert_eq!(dropped.reason, RewireReason::Traffic { pairs: Vec::new() });
    assert_eq!(s.hops(2, 6).unwrap(), 4);
    assert_eq!(s.topology().edges().len(), 8);
}

#[tokio::test(start_paused = true)]
async fn rewiring_keeps_the_ring_and_bounds_the_degree() {
    let settings = AdaptiveSettings {
        interval_ms: 50,
        top_pairs: 100,
        max_degree: 3,
        min_messages: 1,
    };
    let n = 12;
    let (m, _rx) = members(n);
    let s = Society::start(adaptive("bounded", settings), m).unwrap();
    let mut rewirings = s.subscribe();
    // Everyone talks to everyone, 0 and 1 most.
    for a in 0..n {
        for b in 0..n {
            if a != b {
                for _ in 0..(1 + usize::from(a < 2 && b < 2) * 50) {
                    s.try_send(a, b, 0).unwrap();
                }
            }
        }
    }
    advance(Duration::from_millis(50)).await;
    let rewired = rewirings.recv().await.unwrap();
    let wiring = s.topology();
    assert!(wiring.is_connected());
    assert!(wiring.max_degree() <= 3);
    for i in 0..n {
        let ring = (i.min((i + 1) % n), i.max((i + 1) % n));
        assert!(rewired.after.contains(&ring), "ring edge {ring:?} kept");
    }
    // Every member has room for exactly one shortcut; 12 members → 6 shortcuts.
    assert_eq!(rewired.after.len(), n + n / 2);
    for a in 0..n {
        for b in 0..n {
            assert!(wiring.hops(a, b).is_some());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_drop_stop_the_rewiring_task() {
    let (m, _rx) = members(6);
    let s = Society::start(adaptive("stop", fast()), m).unwrap();
    let mut rewirings = s.subscribe();
    assert!(s.is_rewiring());
    s.shutdown().await;
    assert!(!s.is_rewiring());
    for i in 0..20 {
        s.try_send(0, 3, i).unwrap();
    }
    advance(Duration::from_millis(500)).await;
    assert!(matches!(
        rewirings.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    assert_eq!(s.hops(0, 3).unwrap(), 3);

    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let (m, _rx) = members(6);
    let with_members = metrics.num_alive_tasks();
    assert_eq!(with_members, before + 6);
    let s = Society::start(adaptive("dropped", fast()), m).unwrap();
    assert_eq!(metrics.num_alive_tasks(), with_members + 1);
    drop(s); // also drops the member handles: they stop too
    for _ in 0..20 {
        if metrics.num_alive_tasks() == before {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_messages_hops_and_rewirings() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    foundation_beam::describe_metrics();

    let (m, _rx) = members(8);
    let s = Society::start(adaptive("metered", fast()), m).unwrap();
    let mut rewirings = s.subscribe();
    for i in 0..10 {
        s.try_send(0, 4, i).unwrap(); // 4 hops each
    }
    advance(Duration::from_millis(100)).await;
    rewirings.recv().await.unwrap();
    s.try_send(0, 4, 10).unwrap(); // 1 hop now

    let mut seen = HashMap::new();
    for (key, _, help, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if !key.name().starts_with("foundation_society_") {
            continue;
        }
        assert!(key
            .labels()
            .any(|l| l.key() == "society" && l.value() == "metered"));
        assert!(help.is_some(), "{} described", key.name());
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        seen.insert(key.name().to_owned(), v);
    }
    assert_eq!(seen["foundation_society_messages_total"], 11.0);
    assert_eq!(seen["foundation_society_hops_total"], 41.0);
    assert_eq!(seen["foundation_society_hops"], 11.0);
    assert_eq!(seen["foundation_society_rewirings_total"], 1.0);
    assert_eq!(seen["foundation_society_edges"], 9.0);
}

/// Members that drop what they receive.
fn sinks(n: usize) -> Vec<Handle<Envelope<u32>>> {
    (0..n)
        .map(|_| spawn_fn(|mut inbox| async move { while inbox.recv().await.is_some() {} }))
        .collect()
}

/// A 10,000-member adaptive society under heavy traffic over many pairs rewires many
/// times (paused time), every round bounded, and keeps routing along the new wiring.
#[tokio::test(start_paused = true)]
async fn a_10000_member_society_rewires() {
    let n = 10_000;
    let settings = AdaptiveSettings {
        interval_ms: 10,
        top_pairs: 8,
        max_degree: 4,
        min_messages: 2,
    };
    let s = Society::start(adaptive("big", settings), sinks(n)).unwrap();
    let mut x = 1u64;
    for _ in 0..50_000 {
        let (a, b) = random_pair(&mut x, n);
        let _ = s.try_send(a, b, 0);
    }
    for _ in 0..40 {
        s.try_send(0, n / 2, 1).unwrap();
    }
    let rewired = s.rewire_now().await.unwrap().expect("a change");
    assert!(rewired.after.contains(&(0, n / 2)));
    assert_eq!(s.hops(0, n / 2).unwrap(), 1);
    assert_eq!(s.hops(1, n / 2 + 1).unwrap(), 3);
    assert!(s.topology().max_degree() <= 4);
    advance(Duration::from_millis(100)).await;
    s.shutdown().await;
}

/// Wraps a future and measures its longest single poll (the longest stretch it holds the
/// thread) and its number of polls.
#[cfg(feature = "assumptions")]
struct PollTimer<F> {
    inner: std::pin::Pin<Box<F>>,
    longest: Duration,
    polls: u32,
}

#[cfg(feature = "assumptions")]
impl<F: std::future::Future> PollTimer<F> {
    fn new(inner: F) -> Self {
        PollTimer {
            inner: Box::pin(inner),
            longest: Duration::ZERO,
            polls: 0,
        }
    }
}

#[cfg(feature = "assumptions")]
impl<F: std::future::Future> std::future::Future for PollTimer<F> {
    type Output = (F::Output, Duration, u32);
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let start = std::time::Instant::now();
        let r = self.inner.as_mut().poll(cx);
        let took = start.elapsed();
        self.longest = self.longest.max(took);
        self.polls += 1;
        r.map(|out| (out, self.longest, self.polls))
    }
}

/// Runs a 1 ms ticker for `secs` on the current runtime while random traffic goes
/// through `s`; returns (p99, max) lateness of the ticks and messages sent.
#[cfg(feature = "assumptions")]
async fn ticker_under_traffic(
    s: std::sync::Arc<Society<u32>>,
    secs: u64,
) -> (Duration, Duration, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = s.len();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut x = 7u64;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    let (a, b) = random_pair(&mut x, n);
                    let _ = s.try_send(a, b, 0);
                    sent += 1;
                }
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    // `Delay`: a late tick does not make the following ones late; each measures its own
    // stall.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut late = Vec::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let due = ticks.tick().await;
        late.push(due.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    late.sort();
    (late[late.len() * 99 / 100], *late.last().unwrap(), sent)
}

/// Assumption: rewiring a 10,000-member adaptive society, on a single-thread runtime
/// under traffic over tens of thousands of pairs, never holds the thread long: a 1 ms
/// ticker on the same runtime stays under 10 ms late. Measured against the same traffic
/// through a ring (no rewiring) in the same run. Wall clock; run in release:
/// `cargo test --release -p foundation-beam --features assumptions --test society assumption -- --nocapture`.
#[cfg(feature = "assumptions")]
#[test]
fn assumption_rewiring_10000_members_keeps_a_1ms_ticker_under_10ms_late() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = 10_000;
        let ring = std::sync::Arc::new(
            Society::start(settings("ring", Topology::Ring), sinks(n)).unwrap(),
        );
        let (base_p99, base_max, base_sent) = ticker_under_traffic(ring, 2).await;
        let adaptive_settings = AdaptiveSettings {
            interval_ms: 20,
            top_pairs: 8,
            max_degree: 4,
            min_messages: 1,
        };
        let s = std::sync::Arc::new(
            Society::start(adaptive("ticker", adaptive_settings), sinks(n)).unwrap(),
        );
        let mut rewirings = s.subscribe();
        let (p99, max, sent) = ticker_under_traffic(s.clone(), 3).await;
        let mut rounds = 0;
        loop {
            match rewirings.try_recv() {
                Ok(_) => rounds += 1,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => rounds += n,
                Err(_) => break,
            }
        }
        // The rewiring's own share: the longest stretch one round holds the thread (one
        // poll of `rewire_now`), over 20 rounds each after 20,000 messages on random pairs.
        let mut longest = Vec::new();
        let mut x = 11u64;
        for round in 0..20 {
            for _ in 0..20_000 {
                let (a, b) = random_pair(&mut x, n);
                let _ = s.try_send(a, b, 0);
            }
            for _ in 0..3 {
                let _ = s.try_send(round, n / 2 + round, 0);
            }
            let (r, max_poll, polls) = PollTimer::new(s.rewire_now()).await;
            r.unwrap();
            longest.push((max_poll, polls));
        }
        longest.sort();
        let (worst, polls) = longest[longest.len() - 1];
        let median_round = longest[longest.len() / 2].0;
        println!(
            "10,000 members, 1 ms ticker on a current_thread runtime under random traffic: \
             ring (no rewiring) p99 {base_p99:?} max {base_max:?} ({base_sent} msgs); \
             adaptive ({rounds} rewirings) p99 {p99:?} max {max:?} ({sent} msgs); \
             longest single poll of a rewiring round: median over 20 rounds {median_round:?}, \
             worst {worst:?} ({polls} polls in that round)"
        );
        assert!(rounds >= 10, "only {rounds} rewirings happened");
        // A single long poll can be the OS preempting the thread (the machine is shared);
        // the median over rounds is the rewiring's own hold.
        assert!(
            median_round < Duration::from_millis(10),
            "a rewiring round typically held the thread {median_round:?}"
        );
        if base_max >= Duration::from_millis(10) {
            println!(
                "INCONCLUSIVE ticker check: without any rewiring the ticker was already \
                 {base_max:?} late on this machine; the 10 ms bound cannot be judged here"
            );
        } else {
            assert!(
                max < Duration::from_millis(10),
                "ticker {max:?} late with rewiring (p99 {p99:?}); without rewiring: p99 \
                 {base_p99:?}, max {base_max:?}"
            );
        }
    });
}
