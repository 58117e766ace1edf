//! Batched receivers (`Node::register_batched`, `Node::register_frames`): one hand-over per
//! received frame, with the semantics of `register`: every message once, in order per
//! (sender, key), from `send`, `send_batch`, `send_acked` and relays; backpressure instead
//! of loss; undecodable messages counted and left out; the sender's name; the bound in
//! messages. In-memory nodes on paused time.

use std::collections::HashMap;
use std::time::Duration;

use foundation_distributed::node::{BatchReceiver, NodeSettings, SendOptions};
use foundation_distributed::transport::MemoryNetwork;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::Serialize;

mod common;

use common::{eventually, joined_with, start_with, up};

fn keyed(key: u64) -> SendOptions {
    SendOptions {
        key: Some(key),
        ..SendOptions::default()
    }
}

/// The next batch within 30 s of test time.
async fn next<T>(inbox: &mut BatchReceiver<T>) -> foundation_distributed::node::Batch<T> {
    tokio::time::timeout(Duration::from_secs(30), inbox.recv())
        .await
        .expect("a batch within 30 s")
        .expect("the receiver is open")
}

/// Two senders (`b` with `send`, `c` with `send_batch`), three keys each, into one
/// batched receiver of 8 messages on `a` whose consumer pauses now and then: every
/// message arrives exactly once, in order per (sender, key), in batches naming the
/// right sender, and every `send` returned `Ok`.
#[tokio::test(start_paused = true)]
async fn every_message_once_in_order_per_sender_and_key_from_several_senders() {
    let net = MemoryNetwork::new();
    let s = NodeSettings {
        receiver_capacity: 8,
        ..NodeSettings::default()
    };
    let (a, b) = joined_with(&net, s.clone()).await;
    let c = start_with(&net, "c", s).await;
    c.join(&[a.addr()]).await.unwrap();
    for n in [&a, &b, &c] {
        eventually("three up", || up(n).len() == 3).await;
    }
    let mut inbox = a.register_batched::<(String, u64, u64)>("inbox");
    const KEYS: u64 = 3;
    const PER_SENDER: u64 = 3_000;
    let by_send = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let key = i % KEYS;
                b.send("a", "inbox", &("b".to_string(), key, i), keyed(key))
                    .await
                    .expect("send returns Ok");
            }
        })
    };
    let by_batch = {
        let c = c.clone();
        tokio::spawn(async move {
            for key in 0..KEYS {
                let msgs: Vec<(String, u64, u64)> = (0..PER_SENDER)
                    .filter(|i| i % KEYS == key)
                    .map(|i| ("c".to_string(), key, i))
                    .collect();
                for chunk in msgs.chunks(100) {
                    c.send_batch("a", "inbox", chunk, keyed(key))
                        .await
                        .expect("send_batch returns Ok");
                }
            }
        })
    };
    let mut last: HashMap<(String, u64), u64> = HashMap::new();
    let (mut got, mut batches) = (0u64, 0u64);
    while got < 2 * PER_SENDER {
        let batch = next(&mut inbox).await;
        assert!(!batch.messages.is_empty(), "an empty batch");
        batches += 1;
        for (sender, key, i) in batch.messages {
            assert_eq!(&*batch.from, sender, "the batch names its sender");
            assert_eq!(i % KEYS, key);
            if let Some(p) = last.insert((sender.clone(), key), i) {
                assert!(p < i, "{sender} key {key}: {i} after {p}");
            }
            got += 1;
        }
        if batches % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    by_send.await.unwrap();
    by_batch.await.unwrap();
    // Every sender's last message per key arrived: in order, so nothing was skipped.
    for sender in ["b", "c"] {
        for key in 0..KEYS {
            let want = (0..PER_SENDER).filter(|i| i % KEYS == key).max();
            assert_eq!(
                last.get(&(sender.to_string(), key)).copied(),
                want,
                "{sender} key {key}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(inbox.try_recv().is_err(), "nothing delivered twice");
    assert!(
        batches < got,
        "{batches} batches for {got} messages: no batching at all"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// A stalled batched receiver of 4 messages: the sender's `send`s and `send_batch`es
/// wait (its queue fills) instead of dropping; the receiver holds at most its capacity
/// (or one frame); once the consumer reads, everything arrives in order.
#[tokio::test(start_paused = true)]
async fn a_stalled_consumer_holds_the_sender_back_within_its_bound() {
    let net = MemoryNetwork::new();
    let s = common::tight(4, 4);
    let (a, b) = joined_with(&net, s).await;
    let mut inbox = b.register_batched::<u64>("stalled");
    const N: u64 = 200_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while i < N {
                if (i / 1000) % 2 == 0 {
                    a.send("b", "stalled", &i, keyed(1)).await.unwrap();
                    i += 1;
                } else {
                    let msgs: Vec<u64> = (i..i + 10).collect();
                    a.send_batch("b", "stalled", &msgs, keyed(1)).await.unwrap();
                    i += 10;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!sender.is_finished(), "send() waited for room");
    // What the stalled receiver holds: at most its capacity, or a single frame.
    let mut held = Vec::new();
    while let Ok(batch) = inbox.try_recv() {
        held.push(batch.messages);
    }
    let total: usize = held.iter().map(Vec::len).sum();
    assert!(total > 0, "something was delivered before the stall");
    assert!(
        total <= inbox.capacity() || held.len() == 1,
        "held {total} messages in {} batches over a capacity of {}",
        held.len(),
        inbox.capacity()
    );
    let mut want = 0u64;
    for v in held.into_iter().flatten() {
        assert_eq!(v, want);
        want += 1;
    }
    while want < N {
        for v in next(&mut inbox).await.messages {
            assert_eq!(v, want, "in order, nothing lost");
            want += 1;
        }
    }
    sender.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// A frame holding more messages than the receiver's capacity is handed over whole
/// (not split, not refused).
#[tokio::test(start_paused = true)]
async fn a_frame_over_the_capacity_comes_whole() {
    let net = MemoryNetwork::new();
    let s = NodeSettings {
        receiver_capacity: 2,
        ..NodeSettings::default()
    };
    let (a, b) = joined_with(&net, s).await;
    let mut inbox = b.register_batched::<u64>("big");
    let msgs: Vec<u64> = (0..100).collect();
    a.send_batch("b", "big", &msgs, keyed(0)).await.unwrap();
    let batch = next(&mut inbox).await;
    assert_eq!(batch.messages, msgs);
    assert_eq!(&*batch.from, "a");
}

/// Either a number or a string (untagged: encoded as the bare value).
#[derive(Serialize)]
#[serde(untagged)]
enum Mixed {
    N(u64),
    S(String),
}

/// How much `foundation_node_dropped_total{reason}` grew since the last call (a snapshot
/// resets the debugging recorder's counters).
fn dropped(recorder: &metrics_util::debugging::Snapshotter, reason: &str) -> u64 {
    recorder
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == "foundation_node_dropped_total"
                && k.key()
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

/// Messages of a batch that do not decode as the receiver's type are left out and
/// counted (`reason="undecodable"`); the others arrive, in order, in the same batch.
#[tokio::test(start_paused = true)]
async fn undecodable_messages_are_counted_and_the_rest_delivered() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = MemoryNetwork::new();
    let (a, b) = joined_with(&net, NodeSettings::default()).await;
    let mut inbox = b.register_batched::<u64>("nums");
    dropped(&snapshotter, "undecodable"); // from now on
    let msgs: Vec<Mixed> = (0..30u64)
        .map(|i| {
            if i % 3 == 0 {
                Mixed::S(format!("not a number {i}"))
            } else {
                Mixed::N(i)
            }
        })
        .collect();
    a.send_batch("b", "nums", &msgs, keyed(0)).await.unwrap();
    // And one undecodable message on its own, then a good one.
    a.send("b", "nums", "text", keyed(0)).await.unwrap();
    a.send("b", "nums", &1000u64, keyed(0)).await.unwrap();
    let mut got = Vec::new();
    while got.last() != Some(&1000) {
        got.extend(next(&mut inbox).await.messages);
    }
    let want: Vec<u64> = (0..30).filter(|i| i % 3 != 0).chain([1000]).collect();
    assert_eq!(got, want);
    assert_eq!(dropped(&snapshotter, "undecodable"), 11);
    // The zero-copy receiver leaves decoding (and its failures) to the consumer.
    let mut frames = b.register_frames("nums");
    a.send_batch("b", "nums", &msgs, keyed(0)).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(30), frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*frame.from, "a");
    assert_eq!(frame.len(), 30);
    let decoded: Vec<Option<u64>> = frame
        .messages()
        .map(|m| rmp_serde::from_slice(m).ok())
        .collect();
    let want: Vec<Option<u64>> = (0..30).map(|i| (i % 3 != 0).then_some(i)).collect();
    assert_eq!(decoded, want);
    assert_eq!(
        dropped(&snapshotter, "undecodable"),
        0,
        "none counted by the node"
    );
}

/// Relayed messages (client → server → client) name their original sender; acknowledged
/// messages arrive once each, in order; a receiver replaced by another registration ends.
#[tokio::test(start_paused = true)]
async fn relayed_and_acknowledged_messages_and_replacement() {
    let (s1, c1, c2) = common::client_server(None).await;
    let mut inbox = c2.register_batched::<u64>("relayed");
    let msgs: Vec<u64> = (0..500).collect();
    c1.send_batch("c2", "relayed", &msgs, keyed(0))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < msgs.len() {
        let batch = next(&mut inbox).await;
        assert_eq!(&*batch.from, "c1", "relayed by s1, sent by c1");
        got.extend(batch.messages);
    }
    assert_eq!(got, msgs);

    let mut acked = s1.register_batched::<u64>("acked");
    for i in 0..50u64 {
        c1.send_acked("s1", "acked", &i).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let batch = next(&mut acked).await;
        assert_eq!(&*batch.from, "c1");
        got.extend(batch.messages);
    }
    assert_eq!(got, (0..50).collect::<Vec<u64>>());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(acked.try_recv().is_err(), "acknowledged messages come once");

    // Registering the name again ends the first receiver.
    let _second = s1.register_batched::<u64>("acked");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), acked.recv())
            .await
            .expect("ends at once")
            .is_none(),
        "the replaced receiver ends"
    );
    for n in [s1, c1, c2] {
        n.shutdown().await;
    }
}

/// `register_frames` behind a stalled consumer: the sender waits instead of dropping,
/// and once the consumer reads, every message arrives in order.
#[tokio::test(start_paused = true)]
async fn a_stalled_frame_consumer_holds_the_sender_back() {
    let net = MemoryNetwork::new();
    let s = common::tight(4, 4);
    let (a, b) = joined_with(&net, s).await;
    let mut frames = b.register_frames("stalled");
    const N: u64 = 100_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for chunk in (0..N).collect::<Vec<u64>>().chunks(7) {
                a.send_batch("b", "stalled", chunk, keyed(3)).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!sender.is_finished(), "send_batch waited for room");
    let mut want = 0u64;
    while want < N {
        let frame = tokio::time::timeout(Duration::from_secs(30), frames.recv())
            .await
            .expect("a frame within 30 s")
            .expect("open");
        assert_eq!(&*frame.from, "a");
        assert_eq!(frame.messages().len(), frame.len());
        for body in frame.messages() {
            let v: u64 = rmp_serde::from_slice(body).unwrap();
            assert_eq!(v, want, "in order, nothing lost");
            want += 1;
        }
    }
    sender.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// On `coordination` (here every channel folded onto it) the node never waits for a
/// receiver: a full batched receiver's frames are dropped whole and counted
/// (`receiver_full`); what is delivered is in order, and delivered plus dropped is
/// everything sent.
#[tokio::test(start_paused = true)]
async fn on_coordination_a_full_batched_receiver_drops_and_counts() {
    use foundation_distributed::channel::ChannelSettings;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let channels = ChannelSettings::single_connection();
    let s = NodeSettings {
        channels,
        receiver_capacity: 10,
        ..NodeSettings::default()
    };
    let net = MemoryNetwork::new();
    let (a, b) = joined_with(&net, s).await;
    let mut inbox = b.register_batched::<u64>("full");
    dropped(&snapshotter, "receiver_full"); // from now on
    const N: u64 = 1_000;
    for chunk in (0..N).collect::<Vec<u64>>().chunks(5) {
        a.send_batch("b", "full", chunk, keyed(0)).await.unwrap();
        // Each batch its own frame (not appended to a waiting one).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let full = dropped(&snapshotter, "receiver_full");
    let mut got = Vec::new();
    while let Ok(batch) = inbox.try_recv() {
        got.extend(batch.messages);
    }
    assert!(full > 0, "the stalled receiver overflowed");
    assert!(got.len() <= 10, "{} held over a capacity of 10", got.len());
    assert_eq!(got.len() as u64 + full, N, "delivered + counted = sent");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    // The link still works: the receiver has room again.
    a.send_batch("b", "full", &[N], keyed(0)).await.unwrap();
    assert_eq!(next(&mut inbox).await.messages, [N]);
}
