//! Write-combining of small `send`s (D390): while a message waits in its connection's
//! queue, later messages to the same receiver with the same key are appended to its
//! frame. Through the `Node` API: order per (sender, key), backpressure, no loss, and
//! refusal of malformed batch frames.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_distributed::channel::Channels;
use foundation_distributed::node::wire_format::{batch_body, send_batch_frame};
use foundation_distributed::node::{default_channels, Node, NodeSettings, SendOptions, MESSAGES};
use foundation_distributed::transport::{MemoryNetwork, MemoryTransport, Transport};

mod common;

use common::settings;

async fn pair(net: &MemoryNetwork, s: NodeSettings) -> (Node, Node) {
    common::joined_with(net, s).await
}

/// Frames `a` wrote on its `messages` channel to `b`.
fn frames_sent(a: &Node) -> u64 {
    a.peer_stats()
        .iter()
        .filter(|p| p.peer == "b")
        .flat_map(|p| p.channels.iter())
        .filter(|c| c.channel == MESSAGES)
        .map(|c| c.sent_frames)
        .sum()
}

/// Four senders, three keys each, a receiver queue of 8 and a consumer that stalls now
/// and then (so the senders' queues fill and messages are appended to waiting frames):
/// every `send` returns `Ok`, every message arrives exactly once and in order per
/// (sender, key), and far fewer frames than messages were written.
#[tokio::test(start_paused = true)]
async fn appended_sends_arrive_once_in_order_per_sender_and_key() {
    let net = MemoryNetwork::new();
    let s = NodeSettings {
        receiver_capacity: 8,
        ..NodeSettings::default()
    };
    let (a, b) = pair(&net, s).await;
    let mut inbox = b.register::<(u64, u64, u64)>("combined");
    const SENDERS: u64 = 4;
    const KEYS: u64 = 3;
    const PER_SENDER: u64 = 3_000;
    let before = frames_sent(&a);
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let a = a.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let key = i % KEYS;
                let opts = SendOptions {
                    key: Some(key),
                    ..SendOptions::default()
                };
                a.send("b", "combined", &(s, key, i), opts)
                    .await
                    .expect("send returns Ok");
            }
        }));
    }
    let mut last = vec![None::<u64>; (SENDERS * KEYS) as usize];
    let total = SENDERS * PER_SENDER;
    for got in 1..=total {
        let (from, (s, key, i)) = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("a message within 30 s")
            .expect("the receiver is open");
        assert_eq!(from, "a");
        let slot = &mut last[(s * KEYS + key) as usize];
        assert!(
            slot.is_none_or(|p| p < i),
            "sender {s} key {key}: {i} after {slot:?}"
        );
        assert_eq!(i % KEYS, key);
        *slot = Some(i);
        if got % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in senders {
        t.await.unwrap();
    }
    // Every sender's last message per key arrived: with in-order, nothing was skipped.
    for s in 0..SENDERS {
        for key in 0..KEYS {
            let want = (0..PER_SENDER).filter(|i| i % KEYS == key).max();
            assert_eq!(
                last[(s * KEYS + key) as usize],
                want,
                "sender {s} key {key}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(inbox.try_recv().is_err(), "nothing delivered twice");
    let frames = frames_sent(&a) - before;
    assert!(
        frames < total / 4,
        "{frames} frames for {total} messages: the queue did not append"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A stalled receiver: the sender's queue (4 messages of room) fills, appended messages
/// included, and `send` waits instead of dropping; once the consumer reads, everything
/// arrives in order.
#[tokio::test(start_paused = true)]
async fn appended_sends_wait_for_room_instead_of_dropping() {
    let net = MemoryNetwork::new();
    let s = common::tight(4, 2);
    let (a, b) = pair(&net, s).await;
    let mut inbox = b.register::<u64>("stalled");
    // More than the buffers between the two queues hold (the in-memory stream's 256 KiB,
    // the reader's buffer): about 13 bytes a message once appended.
    const N: u64 = 200_000;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let opts = SendOptions {
                key: Some(1),
                ..SendOptions::default()
            };
            for i in 0..N {
                a.send("b", "stalled", &i, opts).await.unwrap();
            }
        })
    };
    // Nobody reads: the sender stops at the bound (receiver queue, inbound frame held,
    // stream buffers, channel queue) instead of running through its messages.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!sender.is_finished(), "send() waited for room");
    for want in 0..N {
        let (_, v) = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("a message within 30 s")
            .unwrap();
        assert_eq!(v, want);
    }
    sender.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

fn batch_frame(from: &str, body: &[u8]) -> Bytes {
    send_batch_frame("a", "inbox", from, body)
}

fn message(v: &str) -> Vec<u8> {
    batch_body(&[v]).unwrap()
}

/// Batch frames whose body does not hold whole length-prefixed messages deliver nothing
/// (not even their well-formed first messages) and leave the link usable; a good one
/// after them is delivered whole, in order.
#[tokio::test(start_paused = true)]
async fn malformed_batch_frames_deliver_nothing() {
    let net = MemoryNetwork::new();
    let (a, _b) = pair(&net, NodeSettings::default()).await;
    let mut inbox = a.register::<String>("inbox");
    let t: Arc<dyn Transport> = Arc::new(MemoryTransport::new(&net, settings("b")).unwrap());
    let link = Channels::builder(t, a.addr())
        .settings(default_channels())
        .connect()
        .await
        .unwrap();
    let one = message("one");
    let mut cut = one.clone();
    cut.extend_from_slice(&message("two")[..5]); // the second message is cut short
    let mut junk = one.clone();
    junk.push(0); // a byte after the last message
    let mut long = one.clone();
    long.extend_from_slice(&u32::MAX.to_be_bytes()); // a length far past the end
    for body in [&cut[..], &junk[..], &long[..], &[][..], &[0, 0][..]] {
        link.send("messages", Some(1), batch_frame("b", body))
            .await
            .unwrap();
    }
    let mut good = message("first");
    good.extend(message("second"));
    link.send("messages", Some(1), batch_frame("b", &good))
        .await
        .unwrap();
    let (from, m) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((from.as_str(), m.as_str()), ("b", "first"));
    assert_eq!(inbox.recv().await.unwrap().1, "second");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(inbox.try_recv().is_err(), "nothing of the malformed frames");
}
