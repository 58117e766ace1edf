//! Remote processes on the in-memory transport (paused time where timing matters): send,
//! urgent send, call, timeouts, monitors (normal, abnormal, `noproc`, `noconnection` within
//! the detector's bound), prompt failure of calls to dead processes and nodes, links
//! across nodes, cluster-wide name conflicts after a partition heals, undecodable messages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, joined, pair, restart, up};
use foundation_distributed::beam::{spawn, spawn_fn, Context, ExitReason, Handle, Process, Reply};
use foundation_distributed::interpose::Interposer;
use foundation_distributed::node::{MembershipEvent, Node, NodeSettings};
use foundation_distributed::remote::{
    Remote, RemoteError, RemoteExitReason, RemoteMessage, RemoteRef,
};
use foundation_distributed::transport::MemoryNetwork;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

// ---- a test process ---------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Cast {
    Add(u64),
    Stop,
    Fail,
    Panic,
    /// Blocks the process until the test opens its gate.
    Wait,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Call {
    Get,
    /// Never answered.
    Hang,
    /// Panics while handling the call.
    Panic,
}

enum Msg {
    Cast(Cast),
    Call(Call, Reply<u64>),
}

impl RemoteMessage for Msg {
    type Cast = Cast;
    type Call = Call;
    type Reply = u64;
    fn from_cast(c: Cast) -> Self {
        Msg::Cast(c)
    }
    fn from_call(c: Call, reply: Reply<u64>) -> Self {
        Msg::Call(c, reply)
    }
}

#[derive(Default)]
struct Worker {
    total: u64,
    log: Arc<Mutex<Vec<u64>>>,
    gate: Option<oneshot::Receiver<()>>,
    hung: Vec<Reply<u64>>,
}

impl Process for Worker {
    type Message = Msg;
    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Msg>) {
        match msg {
            Msg::Cast(Cast::Add(n)) => {
                self.total += n;
                self.log.lock().push(n);
            }
            Msg::Cast(Cast::Stop) => ctx.stop(ExitReason::Normal),
            Msg::Cast(Cast::Fail) => ctx.stop(ExitReason::Failed("asked to fail".into())),
            Msg::Cast(Cast::Panic) => panic!("boom"),
            Msg::Cast(Cast::Wait) => {
                if let Some(g) = self.gate.take() {
                    let _ = g.await;
                }
            }
            Msg::Call(Call::Get, r) => r.send(self.total),
            Msg::Call(Call::Hang, r) => self.hung.push(r),
            Msg::Call(Call::Panic, _) => panic!("boom in a call"),
        }
    }
}

/// A message type that disagrees with `Msg` about what crosses the wire.
enum Other {}

impl RemoteMessage for Other {
    type Cast = String;
    type Call = String;
    type Reply = u64;
    fn from_cast(_: String) -> Self {
        unreachable!("only used to send")
    }
    fn from_call(_: String, _: Reply<u64>) -> Self {
        unreachable!("only used to call")
    }
}

// ---- helpers ----------------------------------------------------------------------------

fn worker() -> (Handle<Msg>, Arc<Mutex<Vec<u64>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let h = spawn(Worker {
        log: log.clone(),
        ..Worker::default()
    });
    (h, log)
}

const T: Duration = Duration::from_secs(5);

/// A local process that does nothing until its handles are dropped.
fn idle() -> Handle<()> {
    spawn_fn(
        |mut inbox: foundation_distributed::beam::process::Inbox<()>| async move {
            while inbox.recv().await.is_some() {}
        },
    )
}

/// A worker exported as `name` on `rb`'s node `b`, reached from `ra`, linked to a new idle
/// local process: (the worker's handle, the remote handle, the local process).
async fn linked_worker(
    ra: &Remote,
    rb: &Remote,
    name: &str,
) -> (Handle<Msg>, RemoteRef<Msg>, Handle<()>) {
    let (w, _) = worker();
    rb.register(name, &w).unwrap();
    let r = ra.process::<Msg>("b", name);
    let local = idle();
    r.link(&local).await.unwrap();
    (w, r, local)
}

/// Nodes `a` and `b` on `net` with their remote services, and a worker exported as
/// `worker` on `b` (kept running by its export).
async fn worker_on_b(net: &MemoryNetwork) -> (Node, Remote, Node, Remote) {
    let (a, b) = joined(net, None).await;
    let (ra, rb) = (Remote::start(&a), Remote::start(&b));
    rb.register("worker", &worker().0).unwrap();
    (a, ra, b, rb)
}

/// The reason inside a link exit (panics on any other reason).
fn link_exit(reason: ExitReason) -> String {
    match reason {
        ExitReason::Linked { reason, .. } => reason.to_string(),
        other => panic!("expected a link exit, got {other}"),
    }
}

/// How long after a crash the node declares a peer down, at most (see
/// `Node::detection_bound`): the detector's bound, the suspicion timeout, one round.
fn declared_down_within(bound: Duration) -> Duration {
    let s = NodeSettings::default();
    bound + s.view.suspicion_timeout + 2 * s.heartbeat
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn send_send_urgent_and_call_reach_a_process_on_another_node() {
    let (_a, ra, _b, rb) = pair(None).await;
    let (gate_tx, gate_rx) = oneshot::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = spawn(Worker {
        log: log.clone(),
        gate: Some(gate_rx),
        ..Worker::default()
    });
    rb.register("worker", &w).unwrap();
    let r = ra.process::<Msg>("b", "worker");
    assert_eq!((r.node(), r.name()), ("b", "worker"));

    // Block the process, queue normal messages, then an urgent one: the urgent one is
    // handled first, and the normal ones keep their order.
    r.send(&Cast::Wait).await.unwrap();
    for n in 1..=3 {
        r.send(&Cast::Add(n)).await.unwrap();
    }
    eventually("three queued", || w.backlog() == 3).await;
    r.send_urgent(&Cast::Add(100)).await.unwrap();
    eventually("urgent queued", || w.backlog() == 4).await;
    gate_tx.send(()).unwrap();
    assert_eq!(r.call(&Call::Get, T).await.unwrap(), 106);
    assert_eq!(*log.lock(), [100, 1, 2, 3]);

    r.send_confirmed(&Cast::Add(4), T).await.unwrap();
    r.try_send(&Cast::Add(5)).unwrap();
    eventually("try_send delivered", || log.lock().len() == 6).await;
    assert_eq!(r.call_urgent(&Call::Get, T).await.unwrap(), 115);

    // The same handle works for a process on this node.
    let (local, _) = worker();
    ra.register("local", &local).unwrap();
    let l = ra.process::<Msg>("a", "local");
    l.send(&Cast::Add(7)).await.unwrap();
    assert_eq!(l.call(&Call::Get, T).await.unwrap(), 7);

    let s = ra.stats();
    assert_eq!((s.sends, s.calls, s.failures), (8, 3, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_and_reports_it() {
    let (_a, ra, _b, rb) = pair(None).await;
    let (w, _) = worker();
    rb.register("worker", &w).unwrap();
    let r = ra.process::<Msg>("b", "worker");
    let started = Instant::now();
    let e = r
        .call(&Call::Hang, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RemoteError::Timeout { after, .. } if after == Duration::from_secs(2)),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(e.is_retryable());
    assert_eq!(ra.stats().failures, 1);
    // The process is still there.
    assert_eq!(r.call(&Call::Get, T).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn calls_to_dead_or_missing_processes_fail_promptly() {
    let (_a, ra, _b, rb) = pair(None).await;
    let long = Duration::from_secs(60);

    let missing = ra.process::<Msg>("b", "nobody");
    let started = Instant::now();
    let e = missing.call(&Call::Get, long).await.unwrap_err();
    assert!(matches!(e, RemoteError::NoProcess { .. }), "{e}");

    // A process that stops is withdrawn: a call fails at once, not after the timeout.
    let (w, _) = worker();
    rb.register("worker", &w).unwrap();
    let r = ra.process::<Msg>("b", "worker");
    let mut m = r.monitor().await;
    r.send(&Cast::Stop).await.unwrap();
    assert_eq!(m.wait().await, RemoteExitReason::Normal);
    let e = r.call(&Call::Get, long).await.unwrap_err();
    assert!(matches!(e, RemoteError::NoProcess { .. }), "{e}");

    // A process that dies while handling the call: the caller learns at once.
    let (w2, _) = worker();
    rb.register("fragile", &w2).unwrap();
    let e = ra
        .process::<Msg>("b", "fragile")
        .call(&Call::Panic, long)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::NoReply { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn monitors_report_normal_and_abnormal_exits_and_noproc() {
    let (_a, ra, _b, rb) = pair(None).await;
    for (name, cast, want) in [
        ("normal", Cast::Stop, RemoteExitReason::Normal),
        (
            "failed",
            Cast::Fail,
            RemoteExitReason::Failed("asked to fail".into()),
        ),
        (
            "panicked",
            Cast::Panic,
            RemoteExitReason::Panic("boom".into()),
        ),
    ] {
        let (w, _) = worker();
        rb.register(name, &w).unwrap();
        let r = ra.process::<Msg>("b", name);
        let mut m = r.monitor().await;
        assert_eq!(m.try_reason(), None);
        r.send(&cast).await.unwrap();
        assert_eq!(m.wait().await, want, "{name}");
        assert_eq!(m.wait().await, want, "asking again gives the same reason");
        // A monitor set up after the exit: nothing is exported under the name any more.
        let mut late = r.monitor().await;
        assert_eq!(late.wait().await, RemoteExitReason::NoProcess);
    }
    // A killed process.
    let (w, _) = worker();
    rb.register("killed", &w).unwrap();
    let mut m = ra.process::<Msg>("b", "killed").monitor().await;
    w.kill();
    assert_eq!(m.wait().await, RemoteExitReason::Killed);
}

#[tokio::test(start_paused = true)]
async fn a_killed_node_gives_monitors_links_and_calls_noconnection_within_the_detector_bound() {
    let net = MemoryNetwork::new();
    let (a, ra, b, rb) = worker_on_b(&net).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let the detector learn the rhythm
    let bound = a.detection_bound("b").expect("a watches b");

    let r = ra.process::<Msg>("b", "worker");
    let mut m = r.monitor().await;
    let linked = idle();
    let mut linked_exit = linked.monitor();
    r.link(&linked).await.unwrap();
    let killed_at = Instant::now();
    drop(rb);
    drop(b); // no goodbye: a crash
    let reason = m.wait().await;
    let took = killed_at.elapsed();
    assert_eq!(reason, RemoteExitReason::NoConnection { node: "b".into() });
    let limit = declared_down_within(bound);
    assert!(
        took <= limit,
        "noconnection after {took:?}; detector bound {bound:?}, limit {limit:?}"
    );

    // A new call fails at once.
    let e = r
        .call(&Call::Get, Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RemoteError::NoConnection { ref node } if node == "b"),
        "{e}"
    );
    // The link broke with noconnection.
    let reason = link_exit(linked_exit.wait().await);
    assert!(reason.contains("noconnection"), "{reason}");
    // New monitors of the lost node resolve at once.
    assert_eq!(
        r.monitor().await.wait().await,
        RemoteExitReason::NoConnection { node: "b".into() }
    );
}

#[tokio::test(start_paused = true)]
async fn links_propagate_abnormal_exits_across_nodes_both_ways() {
    let (_a, ra, _b, rb) = pair(None).await;

    // Remote failure → local process stopped with a link exit carrying the remote reason.
    let (_w1, r1, local) = linked_worker(&ra, &rb, "w1").await;
    let mut local_exit = local.monitor();
    r1.send(&Cast::Panic).await.unwrap();
    let reason = link_exit(local_exit.wait().await);
    assert!(reason.contains("panic: boom"), "{reason}");

    // Local failure → remote process stopped.
    let (_w2, r2, local) = linked_worker(&ra, &rb, "w2").await;
    let mut remote_exit = r2.monitor().await;
    local.kill();
    match remote_exit.wait().await {
        RemoteExitReason::Linked { reason, .. } => {
            assert!(reason.to_string().contains("killed"), "{reason}")
        }
        other => panic!("expected a link exit, got {other}"),
    }

    // Normal exits do not propagate.
    let (_w3, r3, local) = linked_worker(&ra, &rb, "w3").await;
    let mut m3 = r3.monitor().await;
    r3.send(&Cast::Stop).await.unwrap();
    assert_eq!(m3.wait().await, RemoteExitReason::Normal);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(local.is_alive());

    // Linking to nothing fails and links nothing.
    let e = ra
        .process::<Msg>("b", "nobody")
        .link(&local)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::NoProcess { .. }), "{e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(local.is_alive());
}

#[tokio::test(start_paused = true)]
async fn a_name_claimed_on_both_sides_of_a_partition_is_settled_when_it_heals() {
    let faults = Arc::new(Interposer::with_seed(7));
    let (a, ra, b, rb) = pair(Some(faults.clone())).await;

    // Before the partition a name is unique cluster-wide.
    let (wa0, _) = worker();
    let _warm = ra.register_global("warmup", &wa0).await.unwrap();
    eventually("b learns the claim", || {
        rb.whereis("warmup").as_deref() == Some("a")
    })
    .await;
    let (wb0, _) = worker();
    let e = rb.register_global("warmup", &wb0).await.unwrap_err();
    assert!(
        matches!(e, RemoteError::NameTaken { ref node, .. } if node == "a"),
        "{e}"
    );

    let cut = faults.partition(&["a"], &["b"]);
    eventually("split", || up(&a) == ["a"] && up(&b) == ["b"]).await;

    // Each side registers `leader`; `b` first (Lamport clock 2), then `a` after another
    // registration (clock 3): the older registration wins even though "a" < "b".
    let (wb, _) = worker();
    let mut on_b = rb.register_global("leader", &wb).await.unwrap();
    let (wa1, _) = worker();
    let _other = ra.register_global("other", &wa1).await.unwrap();
    let (wa, _) = worker();
    let mut on_a = ra.register_global("leader", &wa).await.unwrap();
    // And `tie` at the same clock on both sides (4: `b` registers one more name first):
    // the node name decides.
    let (wpad, _) = worker();
    let _pad = rb.register_global("pad", &wpad).await.unwrap();
    let (wt_a, _) = worker();
    let (wt_b, _) = worker();
    let tie_a = ra.register_global("tie", &wt_a).await.unwrap();
    let mut tie_b = rb.register_global("tie", &wt_b).await.unwrap();
    assert!(on_a.is_held() && on_b.is_held() && tie_a.is_held() && tie_b.is_held());

    faults.remove(cut);
    let within = Duration::from_secs(20);
    let lost = tokio::time::timeout(within, on_a.lost())
        .await
        .expect("a told");
    assert_eq!((lost.name.as_str(), lost.winner.as_str()), ("leader", "b"));
    let lost = tokio::time::timeout(within, tie_b.lost())
        .await
        .expect("b told");
    assert_eq!((lost.name.as_str(), lost.winner.as_str()), ("tie", "a"));
    for r in [&ra, &rb] {
        eventually("agreement", || {
            r.whereis("leader").as_deref() == Some("b")
                && r.whereis("tie").as_deref() == Some("a")
                && r.whereis("warmup").as_deref() == Some("a")
        })
        .await;
    }
    assert!(on_b.is_held() && tie_a.is_held());
    assert!(!on_a.is_held() && !tie_b.is_held());
    assert!(ra.stats().name_conflicts >= 1 && rb.stats().name_conflicts >= 1);
    // The loser keeps running and stays reachable by its node-local name.
    let via_global = ra.global::<Msg>("leader").unwrap();
    assert_eq!(via_global.node(), "b");
    via_global.send_confirmed(&Cast::Add(5), T).await.unwrap();
    assert_eq!(
        ra.process::<Msg>("b", "leader")
            .call(&Call::Get, T)
            .await
            .unwrap(),
        5
    );
    assert!(wa.is_alive());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), on_b.lost())
            .await
            .is_err(),
        "the winner is not told it lost"
    );

    // When the holder stops, the name is free again everywhere.
    wb.kill();
    for r in [&ra, &rb] {
        eventually("released", || r.whereis("leader").is_none()).await;
    }
}

#[tokio::test(start_paused = true)]
async fn undecodable_messages_are_an_error_to_a_caller_and_counted_for_a_sender() {
    let (_a, ra, _b, rb) = pair(None).await;
    let (w, _) = worker();
    rb.register("worker", &w).unwrap();
    let wrong = ra.process::<Other>("b", "worker");

    let e = wrong.call(&"get".to_string(), T).await.unwrap_err();
    assert!(matches!(e, RemoteError::Undecodable { .. }), "{e}");

    // A send returns Ok (it was handed to the node); the drop is counted on both nodes.
    wrong.send(&"add".to_string()).await.unwrap();
    eventually("counted", || {
        rb.stats().undecodable == 1 && ra.stats().rejected_undecodable == 1
    })
    .await;
    assert_eq!(rb.stats().dropped, 1);
    let e = wrong
        .send_confirmed(&"add".to_string(), T)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Undecodable { .. }), "{e}");
    // The process is unaffected.
    let right = ra.process::<Msg>("b", "worker");
    assert_eq!(right.call(&Call::Get, T).await.unwrap(), 0);

    // Sends to nothing are counted too.
    ra.process::<Msg>("b", "nobody")
        .send(&Cast::Add(1))
        .await
        .unwrap();
    eventually("noproc counted", || ra.stats().rejected == 2).await;
}

#[tokio::test(start_paused = true)]
async fn register_refuses_a_taken_name_and_shutdown_closes_the_service() {
    let (_a, ra, _b, rb) = pair(None).await;
    let (w, _) = worker();
    rb.register("worker", &w).unwrap();
    let (w2, _) = worker();
    let e = rb.register("worker", &w2).unwrap_err();
    assert!(matches!(e, RemoteError::NameTaken { .. }), "{e}");
    let r = ra.process::<Msg>("b", "worker");
    let mut m = r.monitor().await;
    assert!(rb.unregister("worker").await);
    assert_eq!(m.wait().await, RemoteExitReason::NoProcess);
    assert!(w.is_alive(), "unregistering leaves the process running");
    rb.register("worker", &w2).unwrap();
    let mut m = r.monitor().await;
    rb.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        m.wait().await,
        RemoteExitReason::NoConnection { node: "b".into() }
    );
    let e = rb
        .process::<Msg>("a", "x")
        .send(&Cast::Stop)
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Closed), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_fails_with_noconnection_when_the_node_becomes_unreachable() {
    let faults = Arc::new(Interposer::with_seed(3));
    let (a, ra, _b, rb) = pair(Some(faults.clone())).await;
    let (w, _) = worker();
    rb.register("worker", &w).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // let the detector learn the rhythm
    let bound = a.detection_bound("b").expect("a watches b");
    let r = ra.process::<Msg>("b", "worker");
    let mut m = r.monitor().await;
    let pending = {
        let r = r.clone();
        tokio::spawn(async move { r.call(&Call::Hang, Duration::from_secs(600)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cut_at = Instant::now();
    let _cut = faults.partition(&["a"], &["b"]);
    let result = pending.await.unwrap();
    let took = cut_at.elapsed();
    assert!(
        matches!(result, Err(RemoteError::NoConnection { .. })),
        "{result:?}"
    );
    let limit = declared_down_within(bound);
    assert!(
        took <= limit,
        "failed after {took:?}; detector bound {bound:?}, limit {limit:?}"
    );
    assert_eq!(
        m.wait().await,
        RemoteExitReason::NoConnection { node: "b".into() }
    );
    assert!(w.is_alive(), "the process itself is fine, only unreachable");
}

#[tokio::test(start_paused = true)]
async fn monitors_and_links_work_for_a_process_on_this_node_too() {
    let (_a, ra, _b, _rb) = pair(None).await;
    let (w, _) = worker();
    ra.register("here", &w).unwrap();
    let r = ra.process::<Msg>("a", "here");
    let mut m = r.monitor().await;
    let local = idle();
    let mut local_exit = local.monitor();
    r.link(&local).await.unwrap();
    r.send(&Cast::Fail).await.unwrap();
    assert_eq!(
        m.wait().await,
        RemoteExitReason::Failed("asked to fail".into())
    );
    let reason = link_exit(local_exit.wait().await);
    assert!(reason.contains("asked to fail"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_node_restarted_before_it_is_declared_down_ends_monitors_of_its_earlier_run() {
    let net = MemoryNetwork::new();
    let (a, ra, b, rb) = worker_on_b(&net).await;
    let r = ra.process::<Msg>("b", "worker");
    let mut m = r.monitor().await;
    let mut events = a.subscribe();

    // Crash b and start it again at once, under the same name (a new incarnation).
    let old = b.incarnation();
    drop(rb);
    drop(b);
    let b2 = restart(&net, "b").await;
    assert!(b2.incarnation() > old);
    let _rb2 = Remote::start(&b2);
    b2.join(&[a.addr()]).await.unwrap();

    let reason = tokio::time::timeout(Duration::from_secs(30), m.wait())
        .await
        .expect("the monitor of the earlier run resolves");
    assert_eq!(reason, RemoteExitReason::NoConnection { node: "b".into() });
    let mut saw = Vec::new();
    while let Ok(e) = events.try_recv() {
        saw.push(e);
    }
    assert!(
        !saw.iter().any(|e| matches!(e, MembershipEvent::Down(_))),
        "resolved by the restart, not by a Down: {saw:?}"
    );
    // The new run has no `worker`.
    let e = r.call(&Call::Get, T).await.unwrap_err();
    assert!(matches!(e, RemoteError::NoProcess { .. }), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_process_is_reachable_through_a_relay_in_a_client_server_topology() {
    let (s1, c1, c2) = common::client_server(None).await;
    let (_rs, r1, r2) = (Remote::start(&s1), Remote::start(&c1), Remote::start(&c2));
    let (w, _) = worker();
    r2.register("worker", &w).unwrap();
    let r = r1.process::<Msg>("c2", "worker");
    r.send_confirmed(&Cast::Add(3), T).await.unwrap();
    assert_eq!(r.call(&Call::Get, T).await.unwrap(), 3);
    let mut m = r.monitor().await;
    r.send(&Cast::Stop).await.unwrap();
    assert_eq!(m.wait().await, RemoteExitReason::Normal);
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    metrics_util::debugging::DebugValue,
)>;

/// The sum of counter `name` with all of `labels` in `snapshot`.
fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn sends_calls_and_failures_are_in_the_metrics() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (_a, ra, _b, rb) = pair(None).await;
    let (w, log) = worker();
    rb.register("worker", &w).unwrap();
    let r = ra.process::<Msg>("b", "worker");
    r.send(&Cast::Add(1)).await.unwrap();
    r.send_urgent(&Cast::Add(1)).await.unwrap();
    // A call comes after the normal send before it; the urgent one overtook both.
    assert_eq!(r.call(&Call::Get, T).await.unwrap(), 2);
    assert_eq!(*log.lock(), [1, 1]);
    let _ = ra.process::<Msg>("b", "nobody").call(&Call::Get, T).await;
    ra.process::<Other>("b", "worker")
        .send(&"x".to_string())
        .await
        .unwrap();
    eventually("rejection reported back", || ra.stats().rejected == 1).await;
    // One snapshot (the debugging recorder reports what changed since the last one).
    let snap: Snapshot = snapshotter.snapshot().into_vec();
    let c = |name: &str, labels: &[(&str, &str)]| counter(&snap, name, labels);
    assert_eq!(c("foundation_remote_sends_total", &[("lane", "normal")]), 2);
    assert_eq!(c("foundation_remote_sends_total", &[("lane", "urgent")]), 1);
    assert_eq!(c("foundation_remote_calls_total", &[]), 2);
    assert_eq!(
        c(
            "foundation_remote_failures_total",
            &[("op", "call"), ("reason", "noproc")]
        ),
        1
    );
    assert_eq!(
        c(
            "foundation_remote_dropped_total",
            &[("reason", "undecodable")]
        ),
        1
    );
    assert_eq!(
        c(
            "foundation_remote_rejected_total",
            &[("reason", "undecodable")]
        ),
        1
    );
}
