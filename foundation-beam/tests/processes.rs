//! Processes: send, urgent lane, call, exit reasons, monitors, links, names.

use std::time::Duration;

use foundation_beam::core::registry::Registry;
use foundation_beam::mailbox::{MemoryStrategy, Overflow, SendError};
use foundation_beam::process::{
    spawn, spawn_fn, spawn_with, Context, ExitReason, Handle, Process, Reply, SpawnOptions,
};
use foundation_beam::Error;
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(5);

enum Msg {
    Log(u32),
    Wait(oneshot::Receiver<()>),
    Panic(&'static str),
    Stop,
    Get(Reply<Vec<u32>>),
    Ignore(Reply<u32>),
}

#[derive(Default)]
struct Recorder(Vec<u32>);

impl Process for Recorder {
    type Message = Msg;
    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Msg>) {
        match msg {
            Msg::Log(n) => self.0.push(n),
            Msg::Wait(rx) => {
                let _ = rx.await;
            }
            Msg::Panic(m) => panic!("{m}"),
            Msg::Stop => ctx.stop(ExitReason::Failed("asked to".into())),
            Msg::Get(r) => r.send(self.0.clone()),
            Msg::Ignore(reply) => drop(reply),
        }
    }
}

async fn blocked(h: &Handle<Msg>) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel();
    h.send(Msg::Wait(rx)).await.unwrap();
    tx
}

#[tokio::test]
async fn urgent_messages_overtake_queued_normal_ones() {
    let h = spawn(Recorder::default());
    let gate = blocked(&h).await;
    for i in 0..5 {
        h.send(Msg::Log(i)).await.unwrap();
    }
    h.send_urgent(Msg::Log(100)).await.unwrap();
    h.send_urgent(Msg::Log(101)).await.unwrap();
    gate.send(()).unwrap();
    let log = h.call(Msg::Get, T).await.unwrap();
    assert_eq!(log, vec![100, 101, 0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn per_sender_order_is_kept() {
    let h = spawn(Recorder::default());
    let senders: Vec<_> = (0..4u32)
        .map(|s| {
            let h = h.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    h.send(Msg::Log(s * 1000 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let log = h.call(Msg::Get, T).await.unwrap();
    assert_eq!(log.len(), 2000);
    for s in 0..4 {
        let mine: Vec<u32> = log.iter().copied().filter(|v| v / 1000 == s).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "sender {s} reordered");
    }
}

#[tokio::test(start_paused = true)]
async fn calls_time_out_and_report_missing_replies() {
    let h = spawn(Recorder::default());
    let e = h
        .call(Msg::Ignore, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoReply { .. }), "{e}");
    let gate = blocked(&h).await;
    let e = h
        .call(Msg::Get, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    drop(gate);
    assert!(
        h.call(Msg::Get, T).await.unwrap().is_empty(),
        "the late reply was dropped; later calls work"
    );
}

#[tokio::test]
async fn exit_reasons_reach_monitors() {
    let normal = spawn(Recorder::default());
    let mut m = normal.monitor();
    drop(normal);
    assert_eq!(m.wait().await, ExitReason::Normal, "last handle dropped");

    let p = spawn(Recorder::default());
    let mut m = p.monitor();
    p.send(Msg::Panic("boom")).await.unwrap();
    assert_eq!(m.wait().await, ExitReason::Panic("boom".into()));
    assert!(!p.is_alive());
    assert!(matches!(
        p.send(Msg::Log(1)).await,
        Err(SendError::Closed(_))
    ));
    assert!(matches!(
        p.call(Msg::Get, T).await,
        Err(Error::Stopped { .. })
    ));

    let k = spawn(Recorder::default());
    let mut m = k.monitor();
    let _gate = blocked(&k).await;
    k.kill(); // interrupts the handler that is waiting
    assert_eq!(m.wait().await, ExitReason::Killed);

    let s = spawn(Recorder::default());
    let mut m = s.monitor();
    s.shutdown();
    assert_eq!(m.wait().await, ExitReason::Shutdown);

    let f = spawn(Recorder::default());
    let mut m = f.monitor();
    f.send(Msg::Stop).await.unwrap();
    assert_eq!(m.wait().await, ExitReason::Failed("asked to".into()));

    let g = spawn(Recorder::default());
    let mut m = g.monitor();
    g.sender().close_gracefully();
    assert_eq!(m.wait().await, ExitReason::Shutdown);
}

#[tokio::test]
async fn links_propagate_abnormal_exits_only() {
    let a = spawn(Recorder::default());
    let b = spawn(Recorder::default());
    let c = spawn(Recorder::default());
    a.link(&b);
    b.link(&c);
    let (mut ma, mut mb, mut mc) = (a.monitor(), b.monitor(), c.monitor());
    a.send(Msg::Panic("first")).await.unwrap();
    assert_eq!(ma.wait().await, ExitReason::Panic("first".into()));
    let rb = mb.wait().await;
    assert!(
        matches!(&rb, ExitReason::Linked { peer, reason } if *peer == a.id() && **reason == ExitReason::Panic("first".into())),
        "{rb:?}"
    );
    let rc = mc.wait().await;
    assert!(
        matches!(&rc, ExitReason::Linked { peer, .. } if *peer == b.id()),
        "{rc:?}"
    );

    let x = spawn(Recorder::default());
    let y = spawn(Recorder::default());
    x.link(&y);
    let mut mx = x.monitor();
    x.shutdown();
    assert_eq!(mx.wait().await, ExitReason::Shutdown);
    assert!(
        y.call(Msg::Get, T).await.is_ok(),
        "a normal shutdown does not take linked processes down"
    );
}

#[tokio::test]
async fn named_processes_live_in_the_registry_while_they_run() {
    let registry = Registry::new();
    let h = spawn_with(
        Recorder::default(),
        SpawnOptions::new().name("recorder").register_in(&registry),
    )
    .unwrap();
    let found: Handle<Msg> = registry.lookup("recorder").unwrap();
    found.send(Msg::Log(7)).await.unwrap();
    assert_eq!(h.call(Msg::Get, T).await.unwrap(), vec![7]);
    let dup = spawn_with(
        Recorder::default(),
        SpawnOptions::new().name("recorder").register_in(&registry),
    );
    assert!(dup.is_err(), "names are unique");
    let mut m = h.monitor();
    h.kill();
    m.wait().await;
    drop((found, h));
    tokio::task::yield_now().await;
    assert!(
        registry.lookup::<Handle<Msg>>("recorder").is_err(),
        "the entry left with the process"
    );
}

#[tokio::test]
async fn bounded_mailboxes_apply_their_policy() {
    let h = spawn_with(
        Recorder::default(),
        SpawnOptions::new().memory(MemoryStrategy::bounded(2, Overflow::Reject)),
    )
    .unwrap();
    let gate = blocked(&h).await;
    tokio::task::yield_now().await; // the process takes the Wait message and blocks
    h.try_send(Msg::Log(1)).unwrap();
    h.try_send(Msg::Log(2)).unwrap();
    assert!(matches!(
        h.try_send(Msg::Log(3)),
        Err(SendError::Full(Msg::Log(3)))
    ));
    assert!(matches!(
        h.call(Msg::Get, T).await,
        Err(Error::MailboxFull { .. })
    ));
    gate.send(()).unwrap();
    while h.backlog() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.call(Msg::Get, T).await.unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn closure_processes_and_panics() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = spawn_fn(move |mut inbox| async move {
        while let Some(n) = inbox.recv().await {
            if n == 0 {
                panic!("zero");
            }
            tx.send(n * 2).unwrap();
        }
    });
    let mut m = h.monitor();
    h.send(21u32).await.unwrap();
    assert_eq!(rx.recv().await, Some(42));
    h.send(0).await.unwrap();
    assert_eq!(m.wait().await, ExitReason::Panic("zero".into()));
}

/// A call on a stuck process whose backpressured mailbox is full returns by its timeout:
/// the timeout covers waiting for room as well as waiting for the reply (paused time).
#[tokio::test(start_paused = true)]
async fn call_timeout_covers_waiting_for_room() {
    for urgent in [false, true] {
        let h = spawn_with(
            Recorder::default(),
            SpawnOptions::new().memory(MemoryStrategy::bounded(2, Overflow::Backpressure)),
        )
        .unwrap();
        let _gate = blocked(&h).await; // stuck in a handler, forever
        h.send(Msg::Log(1)).await.unwrap();
        h.send(Msg::Log(2)).await.unwrap();
        h.send_urgent(Msg::Log(3)).await.unwrap();
        h.send_urgent(Msg::Log(4)).await.unwrap();
        assert!(matches!(h.try_send(Msg::Log(5)), Err(SendError::Full(_))));
        assert!(matches!(
            h.try_send_urgent(Msg::Log(5)),
            Err(SendError::Full(_))
        ));
        let start = tokio::time::Instant::now();
        let timeout = Duration::from_secs(1);
        let call = if urgent {
            h.call_urgent(Msg::Get, timeout).await
        } else {
            h.call(Msg::Get, timeout).await
        };
        let e = call.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert_eq!(
            start.elapsed(),
            timeout,
            "returned at its deadline, not later"
        );
        assert_eq!(h.backlog(), 4, "the timed-out call queued nothing");
    }
}

#[tokio::test(start_paused = true)]
async fn try_call_queues_now_in_order_or_fails_at_once() {
    let h = spawn_with(
        Recorder::default(),
        SpawnOptions::new().memory(MemoryStrategy::bounded(3, Overflow::Backpressure)),
    )
    .unwrap();
    let gate = blocked(&h).await;
    h.send(Msg::Log(1)).await.unwrap();
    // Queued before this returns: behind `Log(1)`, ahead of `Log(2)`.
    let answer = h.try_call(Msg::Get, T, false).unwrap();
    h.send(Msg::Log(2)).await.unwrap();
    // Full (a backpressured mailbox would make `call` wait): refused at once.
    let e = h.try_call(Msg::Get, T, false).err().unwrap();
    assert!(matches!(e, Error::MailboxFull { .. }), "{e}");
    gate.send(()).unwrap();
    assert_eq!(answer.await.unwrap(), [1]);
    // The urgent lane overtakes queued normal messages.
    let gate = blocked(&h).await;
    h.send(Msg::Log(3)).await.unwrap();
    let urgent = h.try_call(Msg::Get, T, true).unwrap();
    gate.send(()).unwrap();
    assert_eq!(urgent.await.unwrap(), [1, 2]);
    // A stopped process.
    h.send(Msg::Stop).await.unwrap();
    h.monitor().wait().await;
    let e = h.try_call(Msg::Get, T, false).err().unwrap();
    assert!(matches!(e, Error::Stopped { .. }), "{e}");
}

/// The registry holds a weak entry: a named process stops when the last handle held
/// outside the registry is dropped, as for any process, and leaves the registry.
#[tokio::test]
async fn named_processes_stop_when_their_last_handle_is_dropped() {
    let registry = Registry::new();
    let h = spawn_with(
        Recorder::default(),
        SpawnOptions::new().name("weak").register_in(&registry),
    )
    .unwrap();
    let mut monitor = h.monitor();
    // A handle from the registry keeps it alive like any other handle.
    let found: Handle<Msg> = registry.lookup("weak").unwrap();
    drop(h);
    found.send(Msg::Log(1)).await.unwrap();
    assert_eq!(found.call(Msg::Get, T).await.unwrap(), vec![1]);
    assert!(found.is_alive());
    drop(found);
    assert_eq!(monitor.wait().await, ExitReason::Normal);
    assert!(registry.lookup::<Handle<Msg>>("weak").is_err());
    tokio::task::yield_now().await;
    assert!(
        !registry.contains("weak"),
        "the entry left with the process"
    );
    // The name is free again.
    let again = spawn_with(
        Recorder::default(),
        SpawnOptions::new().name("weak").register_in(&registry),
    );
    assert!(again.is_ok());
    // A lookup with the wrong type is still a type mismatch, not "not found".
    assert!(matches!(
        registry.lookup::<Handle<u32>>("weak"),
        Err(foundation_beam::core::Error::HandleTypeMismatch { .. })
    ));
}

/// Assumption: `Handle::send().await` into a mailbox with room runs at ≥ 0.8× a raw
/// tokio unbounded channel (1 producer, 1 consumer, 2-worker runtime). The two are
/// measured in alternation (ABAB…, 100,000 messages per round) so that load on a shared
/// machine hits both alike; the median of the per-round ratios is compared. The claim is
/// about optimised code, so the verdict is given only in an optimised build: `cargo test
/// --profile bench -p foundation-beam --features assumptions --test processes assumption
/// -- --nocapture` (0.94–1.09× over five runs, D364). A debug build (as in `cargo test
/// --workspace --features assumptions`) measures and prints the ratio without a verdict:
/// there `send().await`'s extra code is not optimised away (0.60–0.75×, D364).
#[cfg(feature = "assumptions")]
#[test]
fn assumption_send_await_is_within_0_8_of_a_raw_unbounded_channel() {
    use std::time::Instant;
    const N: u64 = 100_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let consumer = spawn_with(
            CountTo {
                left: 0,
                done: done_tx,
            },
            SpawnOptions::new().memory(MemoryStrategy::unbounded()),
        )
        .unwrap();
        let mut ratios = Vec::new();
        let (mut raw_total, mut ours_total) = (0.0, 0.0);
        for _ in 0..15 {
            // Raw unbounded channel.
            let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
            let (dtx, drx) = oneshot::channel();
            tokio::spawn(async move {
                let mut left = N;
                while let Some(v) = rx.recv().await {
                    std::hint::black_box(v);
                    left -= 1;
                    if left == 0 {
                        let _ = dtx.send(());
                        break;
                    }
                }
            });
            let start = Instant::now();
            for i in 0..N {
                tx.send(i).unwrap();
            }
            drx.await.unwrap();
            let raw = start.elapsed().as_secs_f64();
            // The process, through `send().await`.
            consumer.send(Count::Start(N)).await.unwrap();
            let start = Instant::now();
            for i in 0..N {
                consumer.send(Count::Tick(i)).await.unwrap();
            }
            done_rx.recv().await.unwrap();
            let ours = start.elapsed().as_secs_f64();
            ratios.push(raw / ours);
            raw_total += raw;
            ours_total += ours;
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        println!(
            "send().await vs raw unbounded mpsc, 15 alternating rounds of {N}: median ratio \
             {median:.2}x (min {:.2}, max {:.2}); raw {:.1} M msg/s, send().await {:.1} M msg/s",
            ratios[0],
            ratios[ratios.len() - 1],
            15.0 * N as f64 / raw_total / 1e6,
            15.0 * N as f64 / ours_total / 1e6,
        );
        if cfg!(debug_assertions) {
            println!("debug build: no verdict (the assumption is about optimised code; see the doc comment)");
            return;
        }
        assert!(median >= 0.8, "median ratio {median:.2} < 0.8");
    });
}

#[cfg(feature = "assumptions")]
enum Count {
    Start(u64),
    Tick(u64),
}

#[cfg(feature = "assumptions")]
struct CountTo {
    left: u64,
    done: mpsc::UnboundedSender<()>,
}

#[cfg(feature = "assumptions")]
impl Process for CountTo {
    type Message = Count;
    async fn handle(&mut self, msg: Count, _: &mut Context<Count>) {
        match msg {
            Count::Start(n) => self.left = n,
            Count::Tick(v) => {
                std::hint::black_box(v);
                self.left -= 1;
                if self.left == 0 {
                    let _ = self.done.send(());
                }
            }
        }
    }
}
