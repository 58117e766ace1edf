//! Transient direct links under a partial-view topology (D430): a link to a member
//! outside the active view (a `send`, a `request`, and the reply back) stays open while
//! it carries application traffic, and closes once idle for the grace period.
//!
//! The topology is a fixed line `a – b – c` run in the partial-view regime (it reports
//! itself as HyParView, so the node's partial-view link sweep applies, with a grace of
//! the shuffle interval, 5 s here), so no shuffle or repair changes who is a neighbour:
//! only the sweep decides which links close. Links opened and closed are read from the
//! node metrics through a recorder local to the test's thread (a paused-clock test runs
//! every node task on that thread), so tests in this binary do not see each other's.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{Node, NodeSettings, SendOptions};
use foundation_distributed::overlay::HyParViewConfig;
use foundation_distributed::topology::{Change, Member, PeerService, Role, Static, TopologyKind};
use foundation_distributed::transport::{MemoryNetwork, MemoryTransport, Transport};
use metrics::LocalRecorderGuard;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::mpsc;

use common::{eventually, settings_in, up};

/// The partial-view link sweep's grace here: the shuffle interval (longer than ten
/// default heartbeats).
const GRACE: Duration = Duration::from_secs(5);

/// A fixed neighbour list run as a partial view (see the module docs).
#[derive(Debug)]
struct FixedPartial(Static);

impl PeerService for FixedPartial {
    fn kind(&self) -> TopologyKind {
        TopologyKind::HyParView(HyParViewConfig {
            shuffle_interval: GRACE,
            ..HyParViewConfig::default()
        })
    }
    fn update(&mut self, change: Change) {
        self.0.update(change);
    }
    fn wanted(&self) -> BTreeSet<String> {
        self.0.wanted()
    }
    fn next_hop(&self, to: &str) -> Option<String> {
        self.0.next_hop(to)
    }
    fn broadcast_targets(&self, from: Option<&str>) -> Vec<String> {
        self.0.broadcast_targets(from)
    }
    fn alive(&self) -> Vec<Member> {
        self.0.alive()
    }
}

async fn node(net: &MemoryNetwork, name: &str, neighbours: &[&str]) -> Node {
    let t: Arc<dyn Transport> =
        Arc::new(MemoryTransport::new(net, settings_in("overlay", name)).unwrap());
    let s = NodeSettings {
        listen: format!("mem://{name}"),
        ..NodeSettings::default()
    };
    let n = Node::start(t, name, s).await.unwrap();
    n.install_topology(Box::new(FixedPartial(Static::new(
        name,
        &[Member::new(name, Role::Peer)],
        neighbours,
    ))));
    n
}

/// Link counters of this test's nodes, since the last look.
struct Links {
    snap: Snapshotter,
    _local: LocalRecorderGuard<'static>,
}

impl Links {
    /// A debugging recorder as the default of this thread (every node task of a
    /// paused-clock test runs on it); leaked, one small recorder per test.
    fn record() -> Self {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        Links {
            snap: recorder.snapshotter(),
            _local: metrics::set_default_local_recorder(recorder),
        }
    }

    /// Since the last call (a snapshot resets the counters): links that came up, and
    /// links closed as `reason` (`foundation_node_links_closed_total{reason}`).
    fn take(&self, reason: &str) -> (u64, u64) {
        let all = self.snap.snapshot().into_vec();
        let count = |name: &str, label: (&str, &str)| -> u64 {
            all.iter()
                .filter(|(k, ..)| {
                    k.key().name() == name
                        && k.key()
                            .labels()
                            .any(|l| l.key() == label.0 && l.value() == label.1)
                })
                .map(|(.., v)| match v {
                    DebugValue::Counter(n) => *n,
                    _ => 0,
                })
                .sum()
        };
        (
            count("foundation_node_link_events_total", ("event", "up")),
            count("foundation_node_links_closed_total", ("reason", reason)),
        )
    }
}

/// The line `a – b – c` on a new network, every node seeing all three up, `c` serving
/// `echo` and receiving on the returned `sink`, with the test's link counters read
/// past the line's own links.
async fn line() -> (Links, [Node; 3], mpsc::Receiver<(String, u64)>) {
    let links = Links::record();
    let net = MemoryNetwork::new();
    let a = node(&net, "a", &["b"]).await;
    let b = node(&net, "b", &["a", "c"]).await;
    let c = node(&net, "c", &["b"]).await;
    a.join(&[b.addr()]).await.unwrap();
    c.join(&[b.addr()]).await.unwrap();
    for n in [&a, &b, &c] {
        eventually("all three up", || up(n) == ["a", "b", "c"]).await;
    }
    assert_eq!(a.neighbours(), BTreeSet::from(["b".to_string()]));
    assert_eq!(c.neighbours(), BTreeSet::from(["b".to_string()]));
    c.serve("echo", |_from: String, x: u64| async move { x });
    let sink = c.register::<u64>("sink");
    tokio::time::sleep(Duration::from_secs(1)).await;
    links.take("idle");
    (links, [a, b, c], sink)
}

/// `from` calls `echo` on node `to` with `i`, which must answer it.
async fn call(from: &Node, to: &str, i: u64) {
    let echoed: u64 = from
        .request(to, "echo", &i, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(echoed, i);
}

/// A node that sends to and calls a member outside its active view every second for
/// 60 s keeps one direct link to it (and the member one back, for the replies): none is
/// closed and reopened. The old sweep closed both every grace period (5 s) in use or
/// not, and the next send opened them again: about 20 opens and closes here. Paused
/// clock.
#[tokio::test(start_paused = true)]
async fn a_transient_link_in_use_stays_open() {
    let (links, [a, b, c], mut sink) = line().await;
    for i in 0..60u64 {
        a.send("c", "sink", &i, SendOptions::default())
            .await
            .unwrap();
        call(&a, "c", i).await;
        assert_eq!(sink.recv().await.unwrap(), ("a".to_string(), i));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        links.take("idle"),
        (2, 0),
        "links opened and closed as idle during 60 s of traffic: one each way expected"
    );
    assert!(a.peer_stats().iter().any(|p| p.peer == "c"));
    assert_eq!(a.neighbours(), BTreeSet::from(["b".to_string()]));
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

/// A transient link still closes once idle: not before the grace period after its last
/// use, and soon after it (a few rounds); the next send opens it again. Paused clock.
#[tokio::test(start_paused = true)]
async fn an_idle_transient_link_closes_after_the_grace() {
    let (links, [a, b, c], mut sink) = line().await;
    // Used for 3 s (longer than nothing, shorter than the grace).
    for i in 0..4u64 {
        call(&a, "c", i).await;
        if i < 3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_eq!(links.take("idle"), (2, 0), "one link each way, none closed");
    // Idle from now: still open a little before the grace has passed...
    tokio::time::sleep(GRACE - Duration::from_millis(500)).await;
    assert_eq!(links.take("idle"), (0, 0), "closed before the grace period");
    assert!(a.peer_stats().iter().any(|p| p.peer == "c"));
    // ... closed (both ways) within a few rounds after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        links.take("idle"),
        (0, 2),
        "idle links not closed after the grace"
    );
    assert!(a.peer_stats().iter().all(|p| p.peer != "c"));
    assert!(c.peer_stats().iter().all(|p| p.peer != "a"));
    // The neighbours' links stay.
    assert!(a.peer_stats().iter().any(|p| p.peer == "b"));
    // The next send opens it again.
    a.send("c", "sink", &7u64, SendOptions::default())
        .await
        .unwrap();
    assert_eq!(sink.recv().await.unwrap(), ("a".to_string(), 7));
    assert_eq!(links.take("idle"), (1, 0));
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

/// After a topology switch that leaves two members without a link between them (a
/// static topology without neighbours: every other member is reached over a direct
/// link), a link in use is not torn down again every `switch.grace` (5 s) — the old
/// `watch_retired` did that for every link to a retired peer, in use or not. Paused
/// clock.
#[tokio::test(start_paused = true)]
async fn a_direct_link_in_use_after_a_switch_stays_open() {
    let links = Links::record();
    let net = MemoryNetwork::new();
    let (a, b) = common::joined_with(&net, NodeSettings::default()).await;
    b.serve("echo", |_from: String, x: u64| async move { x });
    a.switch_topology(TopologyKind::Static).unwrap();
    eventually("both switched", || {
        b.topology_kind() == TopologyKind::Static && b.neighbours().is_empty()
    })
    .await;
    // Make before break settles (its deadline is `switch.grace`), the old links go.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(links.take("switch").1 >= 1, "the switch retired no link");
    for i in 0..30u64 {
        call(&a, "b", i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        links.take("switch").1,
        0,
        "links in use torn down again during 30 s of one call a second"
    );
    for n in [&a, &b] {
        n.shutdown().await;
    }
}
