//! Delivery semantics through the `Node` API: backpressure instead of drops, the lossy
//! `try_send`, acknowledged delivery through lost frames and reset connections, bounded
//! request handlers, cancelled requests, and refused impersonation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_distributed::channel::{ChannelSettings, Channels, Urgency};
use foundation_distributed::interpose::{Fault, Interposer, Rule};
use foundation_distributed::node::{default_channels, Node, NodeSettings, SendOptions};
use foundation_distributed::transport::{MemoryNetwork, MemoryTransport, TcpTransport, Transport};
use foundation_distributed::Error;
use serde::{Deserialize, Serialize};

mod common;

use common::{eventually, settings};

async fn pair(net: &MemoryNetwork, s: NodeSettings) -> (Node, Node) {
    common::joined_with(net, s).await
}

/// A slow receiver (queue of 4, pausing consumer) and a fast sender over loopback TCP:
/// every `send` that returned `Ok` arrives, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_loses_nothing_and_keeps_order() {
    let start = |name: &'static str| async move {
        let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings(name)).unwrap());
        let s = NodeSettings {
            receiver_capacity: 4,
            ..NodeSettings::default()
        };
        Node::start(t, name, s).await.unwrap()
    };
    let a = start("a").await;
    let b = start("b").await;
    b.join(&[a.addr()]).await.unwrap();
    let mut inbox = b.register::<(u64, u64)>("slow");
    const N: u64 = 20_000;
    const KEYS: u64 = 4;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut ok = 0u64;
            for i in 0..N {
                let key = i % KEYS;
                let opts = SendOptions {
                    key: Some(key),
                    ..SendOptions::default()
                };
                if a.send("b", "slow", &(key, i), opts).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        })
    };
    let mut last = [None::<u64>; KEYS as usize];
    let mut got = 0u64;
    while got < N {
        let next = tokio::time::timeout(Duration::from_secs(30), inbox.recv()).await;
        let (from, (key, i)) = next.expect("a message within 30 s").unwrap();
        assert_eq!(from, "a");
        assert!(
            last[key as usize].is_none_or(|p| p < i),
            "key {key}: {i} after {:?}",
            last[key as usize]
        );
        last[key as usize] = Some(i);
        got += 1;
        if got.is_multiple_of(1000) {
            // The consumer pauses now and then.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ok = sender.await.unwrap();
    assert_eq!(ok, N, "every send returned Ok");
    assert_eq!(got, ok, "every Ok delivered");
    a.shutdown().await;
    b.shutdown().await;
}

/// `try_send` never waits: with a tiny channel queue and a stalled receiver it reports
/// `Full` instead of dropping silently.
#[tokio::test(start_paused = true)]
async fn try_send_reports_a_full_queue() {
    let net = MemoryNetwork::new();
    let mut channels = default_channels();
    for c in &mut channels.channels {
        c.queue_capacity = 2;
    }
    channels.inbox_capacity = 2;
    let s = NodeSettings {
        channels,
        receiver_capacity: 1,
        ..NodeSettings::default()
    };
    let (a, b) = pair(&net, s).await;
    let _stalled = b.register::<Vec<u8>>("stalled");
    let mut full = 0;
    let mut ok = 0;
    let payload = vec![7u8; 900];
    for _ in 0..20_000u64 {
        let opts = SendOptions {
            key: Some(1),
            ..SendOptions::default()
        };
        match a.try_send("b", "stalled", &payload, opts) {
            Ok(()) => ok += 1,
            Err(Error::Full { node }) => {
                assert_eq!(node, "b");
                full += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(full > 0, "a stalled receiver fills the queues ({ok} ok)");
    assert_eq!(ok + full, 20_000);
}

/// Acknowledged delivery through an interposer that drops 20% of frames (both ways,
/// every channel) and resets the data connection now and then: every message delivered
/// exactly once, in order.
#[tokio::test(start_paused = true)]
async fn acknowledged_delivery_survives_drops_and_resets() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(7));
    let s = NodeSettings {
        interposer: Some(faults.clone()),
        view: foundation_distributed::membership::ViewSettings {
            suspicion_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        ..NodeSettings::default()
    };
    let (a, b) = pair(&net, s).await;
    let mut inbox = b.register::<u64>("acked");
    faults.add(Rule::new(Fault::Drop { probability: 0.2 }));
    faults.add(Rule::new(Fault::Reset { probability: 0.01 }).channel("messages"));
    const N: u64 = 1_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..N {
                a.send_acked("b", "acked", &i).await.unwrap();
            }
        })
    };
    for i in 0..N {
        let got = tokio::time::timeout(Duration::from_secs(120), inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} within 120 s"))
            .unwrap();
        assert_eq!(got, ("a".to_string(), i), "in order, exactly once");
    }
    sender.await.unwrap();
    faults.heal();
    // Nothing more arrives (no duplicates), and the sender's buffer drains.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(inbox.try_recv().is_err(), "no duplicate delivered");
    eventually("retransmit buffer drained", || a.load().2 == 0).await;
}

/// Request handlers run under the node's bound: beyond it requests are refused with
/// `Overloaded`; shutdown aborts the handlers still running; a cancelled request leaves
/// nothing behind.
#[tokio::test(start_paused = true)]
async fn request_handlers_are_bounded_owned_and_cancellable() {
    let net = MemoryNetwork::new();
    let s = NodeSettings {
        max_concurrent_requests: 2,
        ..NodeSettings::default()
    };
    let (a, b) = pair(&net, s).await;
    b.serve("hang", |_from, _: ()| async {
        std::future::pending::<()>().await;
    });
    // A cancelled request: its entry is gone at once, and its handler on `b` is aborted.
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        a.request::<_, ()>("b", "hang", &(), Duration::from_secs(3600)),
    )
    .await;
    assert!(r.is_err(), "still waiting");
    assert_eq!(a.load().0, 0, "the cancelled request left nothing behind");
    eventually("its handler aborted on b", || b.load().1 == 0).await;

    let mut hanging = Vec::new();
    for _ in 0..2 {
        let a = a.clone();
        hanging.push(tokio::spawn(async move {
            a.request::<_, ()>("b", "hang", &(), Duration::from_secs(3600))
                .await
        }));
    }
    eventually("two handlers running", || b.load().1 == 2).await;
    let e = a
        .request::<_, ()>("b", "hang", &(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Overloaded { .. }), "{e}");

    assert_eq!(a.load().0, 2, "only the spawned requests wait");
    for h in &hanging {
        h.abort();
    }
    eventually("aborted requests removed", || a.load().0 == 0).await;
    eventually("their handlers aborted on b", || b.load().1 == 0).await;

    // A handler still running at shutdown is aborted by it.
    let keep = {
        let a = a.clone();
        tokio::spawn(async move {
            a.request::<_, ()>("b", "hang", &(), Duration::from_secs(3600))
                .await
        })
    };
    eventually("one handler running", || b.load().1 == 1).await;
    assert!(b.shutdown_within(Duration::from_secs(5)).await);
    assert_eq!(b.load().1, 0, "handlers aborted at shutdown");
    keep.abort();
}

#[derive(Serialize, Deserialize)]
#[allow(dead_code)]
enum MirrorWire {
    Gossip {
        members: Vec<()>,
    },
    Heartbeat {
        incarnation: u64,
        version: u64,
    },
    Topology {
        payload: Bytes,
    },
    /// The application body follows the header, raw.
    Send {
        to_node: String,
        to_name: String,
        from: String,
    },
}

fn send_frame(to: &str, from: &str, body: &str) -> Bytes {
    let w = MirrorWire::Send {
        to_node: to.into(),
        to_name: "inbox".into(),
        from: from.into(),
    };
    let mut v = rmp_serde::to_vec(&w).unwrap();
    v.extend(rmp_serde::to_vec(&body.to_string()).unwrap());
    Bytes::from(v)
}

/// A peer that authenticates as `mallory` (it knows the cluster secret but is not a
/// member) and claims to be `b` is refused; the same peer speaking as itself is heard.
#[tokio::test(start_paused = true)]
async fn a_message_claiming_another_sender_is_refused() {
    let net = MemoryNetwork::new();
    let (a, _b) = pair(&net, NodeSettings::default()).await;
    let mut inbox = a.register::<String>("inbox");
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(&net, settings("mallory")).unwrap());
    let channels: ChannelSettings = default_channels();
    let link = Channels::builder(t, a.addr())
        .settings(channels)
        .connect()
        .await
        .unwrap();
    link.send("messages", Some(1), send_frame("a", "b", "forged"))
        .await
        .unwrap();
    link.send("messages", Some(1), send_frame("a", "mallory", "honest"))
        .await
        .unwrap();
    let (from, text) = inbox.recv().await.unwrap();
    assert_eq!((from.as_str(), text.as_str()), ("mallory", "honest"));
    assert!(inbox.try_recv().is_err(), "the forged message was refused");
}

/// `send_acked` waiting for room in its window is released, with an error, when the node
/// shuts down (nothing hangs).
#[tokio::test(start_paused = true)]
async fn a_full_acked_window_fails_at_shutdown() {
    let net = MemoryNetwork::new();
    let faults = Arc::new(Interposer::with_seed(11));
    let s = NodeSettings {
        acked_window: 1,
        interposer: Some(faults.clone()),
        ..NodeSettings::default()
    };
    let (a, b) = pair(&net, s).await;
    let _inbox = b.register::<u64>("acked");
    faults.add(Rule::new(Fault::Drop { probability: 1.0 }).channel("messages"));
    a.send_acked("b", "acked", &1u64).await.unwrap();
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.send_acked("b", "acked", &2u64).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the window is full");
    assert_eq!(a.load().2, 1, "one message held for retransmission");
    a.shutdown().await;
    let e = waiting.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::NodeShutDown { .. }), "{e}");
}

/// An interposer delaying everything `from` sends on `channel` by `by` (paused clock: a
/// message on another path overtakes it for sure).
fn delayed(from: &str, channel: &str, by: Duration) -> Arc<Interposer> {
    let faults = Arc::new(Interposer::with_seed(1));
    faults.add(
        Rule::new(Fault::Delay { min: by, max: by })
            .from(&[from])
            .channel(channel),
    );
    faults
}

/// A receiver of numbered messages of any size.
type Numbered = tokio::sync::mpsc::Receiver<(String, (u64, Vec<u8>))>;

/// `a` and `b` joined, everything `a` sends on `channel` delayed 300 ms; `b`'s receiver
/// `r`.
async fn delayed_pair(channel: &str) -> (Node, Node, Numbered) {
    let net = MemoryNetwork::new();
    let faults = delayed("a", channel, Duration::from_millis(300));
    let (a, b) = common::joined(&net, Some(faults)).await;
    let inbox = b.register::<(u64, Vec<u8>)>("r");
    (a, b, inbox)
}

/// Message `n`, small or (`big`) 4 KiB: over the 1 KiB bulk threshold.
fn sized(n: u64, big: bool) -> (u64, Vec<u8>) {
    (n, vec![7; if big { 4096 } else { 8 }])
}

fn keyed(key: u64, urgency: Urgency) -> SendOptions {
    SendOptions {
        urgency,
        key: Some(key),
    }
}

/// Receives `n` messages from `inbox`; returns their numbers in arrival order.
async fn arrival_order(inbox: &mut Numbered, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let (_, (i, _)) = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("all messages arrive")
            .expect("receiver open");
        seen.push(i);
    }
    seen
}

/// 1..=n.
fn in_order(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// `from` sends 1..=12 to `to`'s receiver `r` with `opts`, every third message 4 KiB.
async fn send_mixed(from: &Node, to: &str, opts: SendOptions) {
    for i in 1..=12u64 {
        from.send(to, "r", &sized(i, i % 3 == 1), opts)
            .await
            .unwrap();
    }
}

/// A keyed stream keeps its order whatever the sizes of its messages (D402): the 4 KiB
/// ones are not moved to `bulk_data` (delayed here, so before D402 the small ones overtook
/// them).
#[tokio::test(start_paused = true)]
async fn a_keyed_stream_keeps_its_order_across_the_bulk_threshold() {
    let (a, _b, mut inbox) = delayed_pair("bulk_data").await;
    send_mixed(&a, "b", keyed(9, Urgency::Normal)).await;
    assert_eq!(arrival_order(&mut inbox, 12).await, in_order(12));
}

/// `Urgency::Bulk` puts a keyed stream on `bulk_data` whatever its sizes, in order: with
/// `messages` delayed, nothing of it goes there.
#[tokio::test(start_paused = true)]
async fn a_keyed_bulk_stream_stays_on_bulk_data_in_order() {
    let (a, _b, mut inbox) = delayed_pair("messages").await;
    send_mixed(&a, "b", keyed(3, Urgency::Bulk)).await;
    // One normal message after the stream, on the delayed `messages`: it comes last.
    a.send("b", "r", &sized(13, false), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(arrival_order(&mut inbox, 13).await, in_order(13));
}

/// What `from`'s link to `to` has sent on `channel` so far.
fn sent_on(from: &Node, to: &str, channel: &str) -> u64 {
    from.peer_stats()
        .into_iter()
        .find(|p| p.peer == to)
        .and_then(|p| p.channels.into_iter().find(|c| c.channel == channel))
        .map_or(0, |c| c.sent_messages)
}

/// Relayed through a server whose `bulk_data` is slow, a keyed stream keeps its order too,
/// and a bulk stream stays on `bulk_data`: the relay passes each message on by the
/// urgency of the channel it came on, never by its size.
#[tokio::test(start_paused = true)]
async fn a_relayed_keyed_stream_keeps_its_order_across_the_bulk_threshold() {
    let faults = delayed("s1", "bulk_data", Duration::from_millis(300));
    let (s1, c1, c2) = common::client_server(Some(faults)).await;
    let mut inbox = c2.register::<(u64, Vec<u8>)>("r");
    send_mixed(&c1, "c2", keyed(4, Urgency::Normal)).await;
    assert_eq!(arrival_order(&mut inbox, 12).await, in_order(12));
    assert_eq!(sent_on(&s1, "c2", "bulk_data"), 0);

    send_mixed(&c1, "c2", keyed(4, Urgency::Bulk)).await;
    assert_eq!(arrival_order(&mut inbox, 12).await, in_order(12));
    // On `bulk_data` from `s1` too (as one or more frames: `c1` packs a keyed stream into
    // waiting frames, and a relay passes frames on whole).
    assert!(sent_on(&s1, "c2", "bulk_data") > 0);
}

/// Unkeyed messages are still routed by size: a large one goes on `bulk_data` (delayed
/// here), so a small one sent after it arrives first.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_large_message_still_goes_on_bulk_data() {
    let (a, _b, mut inbox) = delayed_pair("bulk_data").await;
    let unkeyed = SendOptions::default();
    a.send("b", "r", &sized(1, true), unkeyed).await.unwrap();
    a.send("b", "r", &sized(2, false), unkeyed).await.unwrap();
    assert_eq!(arrival_order(&mut inbox, 2).await, [2, 1]);
}
