//! Behaviour of named channels: on the in-memory transport under tokio's paused time
//! (deterministic), and the ordering and failure tests on loopback TCP as well.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_distributed::channel::{
    route, ChannelSettings, ChannelSpec, Channels, Inbound, Inbox, MessageMeta, Priority,
    RouteOptions, TrySendError, Urgency, BULK_DATA, COORDINATION, DEFAULT_BULK_PARALLELISM, GOSSIP,
};
use foundation_distributed::interpose::{Fault, Interposer, Rule};
use foundation_distributed::transport::{MemoryNetwork, MemoryTransport, TcpTransport, Transport};
use foundation_distributed::Error;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

mod common;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Memory,
}

fn transport(kind: Kind, network: &MemoryNetwork, node: &str) -> Arc<dyn Transport> {
    let settings = common::settings_in("test", node);
    match kind {
        Kind::Tcp => Arc::new(TcpTransport::new(settings).unwrap()),
        Kind::Memory => Arc::new(MemoryTransport::new(network, settings).unwrap()),
    }
}

/// Node `a` linked to node `b`: `a`'s channels and `b`'s inbox.
async fn link(kind: Kind, settings: ChannelSettings) -> (Channels, Inbox) {
    link_with(kind, settings, None).await
}

async fn link_with(
    kind: Kind,
    settings: ChannelSettings,
    interposer: Option<Arc<Interposer>>,
) -> (Channels, Inbox) {
    let network = MemoryNetwork::new();
    let a = transport(kind, &network, "a");
    let b = transport(kind, &network, "b");
    let listener = b
        .listen(match kind {
            Kind::Tcp => "127.0.0.1:0",
            Kind::Memory => "mem://b",
        })
        .await
        .unwrap();
    let addr = listener.local_addr().to_owned();
    let inbox = Inbox::new(&settings).unwrap();
    inbox.serve(listener);
    let mut builder = Channels::builder(a, &addr).settings(settings);
    if let Some(i) = interposer {
        builder = builder.interposer(i, "a");
    }
    (builder.connect().await.unwrap(), inbox)
}

/// A metric name and its labels.
type MetricKey = (String, Vec<(String, String)>);

/// Metric values seen so far (the debugging recorder reports deltas per snapshot).
struct Seen {
    snapshotter: Snapshotter,
    values: RefCell<HashMap<MetricKey, f64>>,
}

fn recorder() -> (DebuggingRecorder, Seen) {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snapshotter: recorder.snapshotter(),
        values: RefCell::new(HashMap::new()),
    };
    (recorder, seen)
}

/// `name` with all of `labels` (summed over the other labels).
fn metric(seen: &Seen, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut values = seen.values.borrow_mut();
    for (key, .., value) in seen.snapshotter.snapshot().into_vec() {
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        let ls = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        *values.entry((key.key().name().to_owned(), ls)).or_default() += v;
    }
    values
        .iter()
        .filter(|((n, ls), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

async fn recv(inbox: &mut Inbox) -> Inbound {
    tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("a message in time")
        .expect("inbox open")
}

async fn order_is_kept_per_channel_and_key(kind: Kind) {
    const SENDERS: u64 = 8;
    const KEYS: u64 = 16;
    const PER_KEY: u32 = 40;
    let (channels, mut inbox) = link(kind, ChannelSettings::default()).await;
    let channels = Arc::new(channels);
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            let coordination = channels.sender(COORDINATION).unwrap();
            let bulk = channels.sender(BULK_DATA).unwrap();
            for seq in 0..PER_KEY {
                for k in 0..KEYS {
                    let key = s * 1000 + k;
                    let payload = Bytes::from(seq.to_be_bytes().to_vec());
                    // Keys alternate between two channels of different parallelism.
                    let sender = if k % 2 == 0 { &coordination } else { &bulk };
                    sender.send(Some(key), payload).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let total = SENDERS * KEYS * u64::from(PER_KEY);
    let mut next: HashMap<(String, u64), u32> = HashMap::new();
    for _ in 0..total {
        let m = recv(&mut inbox).await;
        let key = m.key.expect("keyed");
        let expected_channel = if key % 1000 % 2 == 0 {
            COORDINATION
        } else {
            BULK_DATA
        };
        assert_eq!(&*m.channel, expected_channel);
        assert_eq!(&*m.peer, "a");
        let seq = u32::from_be_bytes(m.payload[..].try_into().unwrap());
        let slot = next.entry((m.channel.to_string(), key)).or_default();
        assert_eq!(seq, *slot, "key {key} on {} out of order", m.channel);
        *slot += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(next.len() as u64, SENDERS * KEYS);
    assert!(next.values().all(|&n| n == PER_KEY));
}

async fn failed_connection_surfaces_an_error_and_is_counted(kind: Kind) {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (channels, inbox) = link(kind, ChannelSettings::default()).await;
    let gossip = channels.sender(GOSSIP).unwrap();
    // The receiving node goes away: its connections close.
    drop(inbox);
    eventually("the sender sees the connection close", || {
        channels.closed_reason(GOSSIP, 0).is_some()
    })
    .await;
    let err = gossip
        .send(None, Bytes::from_static(b"lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChannelClosed { channel, index: 0, .. } if channel == GOSSIP),
        "{err:?}"
    );
    assert_eq!(err.code(), 5042);
    match gossip.try_send(Some(1), Bytes::from_static(b"again")) {
        Err(TrySendError::Closed { payload, key, .. }) => {
            assert_eq!((&payload[..], key), (&b"again"[..], Some(1)));
        }
        other => panic!("{other:?}"),
    }
    let dropped = metric(
        &seen,
        "foundation_channel_dropped_total",
        &[("channel", GOSSIP), ("reason", "closed")],
    );
    assert_eq!(dropped, 2.0);
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Tcp).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
    };
}

both!(
    order_is_kept_per_channel_and_key,
    failed_connection_surfaces_an_error_and_is_counted,
);

#[tokio::test(start_paused = true)]
async fn unkeyed_messages_go_round_robin_and_keyed_ones_stick() {
    let (channels, mut inbox) = link(Kind::Memory, ChannelSettings::default()).await;
    let coordination = channels.sender(COORDINATION).unwrap();
    for i in 0..30u8 {
        coordination.send(None, Bytes::from(vec![i])).await.unwrap();
    }
    let mut per_connection = [0; 3];
    for _ in 0..30 {
        let m = recv(&mut inbox).await;
        assert_eq!(m.key, None);
        per_connection[usize::from(m.connection)] += 1;
    }
    assert_eq!(per_connection, [10, 10, 10]);

    for i in 0..20u8 {
        coordination
            .send(Some(42), Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    let first = recv(&mut inbox).await;
    assert_eq!(first.payload[..], [0]);
    for i in 1..20u8 {
        let m = recv(&mut inbox).await;
        assert_eq!((m.connection, m.payload[0]), (first.connection, i));
    }
    // Many keys use every connection.
    let used: std::collections::HashSet<usize> = (0..100)
        .map(|k| coordination.connection_for(Some(k)))
        .collect();
    assert_eq!(used.len(), 3);
}

/// D422: the default table opens `DEFAULT_BULK_PARALLELISM` (2) `bulk_data` connections
/// per peer, not 5: each is a sender task and a reader task that stay runnable through a
/// bulk transfer, and urgent tasks wait behind them in tokio's first-in-first-out queues.
#[tokio::test(start_paused = true)]
async fn default_bulk_channel_opens_two_connections() {
    // More bulk connections lengthen the urgent tail (D422): measure before raising it.
    const { assert!(DEFAULT_BULK_PARALLELISM <= 2) };
    let (channels, mut inbox) = link(Kind::Memory, ChannelSettings::default()).await;
    let bulk = channels.sender(BULK_DATA).unwrap();
    for key in 0..50u64 {
        bulk.send(Some(key), Bytes::from(vec![1u8; 1024]))
            .await
            .unwrap();
    }
    let mut used = std::collections::HashSet::new();
    for _ in 0..50 {
        let m = recv(&mut inbox).await;
        assert_eq!(&*m.channel, BULK_DATA);
        used.insert(m.connection);
    }
    // Every connection opened was used by some key, and no more were opened.
    assert_eq!(used.len(), usize::from(DEFAULT_BULK_PARALLELISM));
    assert!(used.iter().all(|c| *c < DEFAULT_BULK_PARALLELISM));
}

/// Settings with one channel `state` of one connection whose receiver can be stalled:
/// the inbox holds one message per priority, and the memory stream 256 KiB.
fn stallable(monotonic: bool, queue_capacity: usize) -> ChannelSettings {
    let mut spec = ChannelSpec::new("state", Priority::Medium, 1).queue_capacity(queue_capacity);
    if monotonic {
        spec = spec.monotonic();
    }
    ChannelSettings {
        channels: vec![spec],
        inbox_capacity: 1,
        ..Default::default()
    }
}

/// Fills the pipe from the sender task to the (unread) inbox so that the sender task is
/// stuck writing; returns how many messages were sent to do it.
async fn stall(channels: &Channels) -> usize {
    let state = channels.sender("state").unwrap();
    let big = Bytes::from(vec![7u8; 2 * 1024 * 1024]);
    for _ in 0..3 {
        state.send(None, big.clone()).await.unwrap();
    }
    // Paused time only advances once every task is idle: the sender task is then blocked.
    tokio::time::sleep(Duration::from_millis(50)).await;
    3
}

#[tokio::test(start_paused = true)]
async fn monotonic_channel_keeps_only_the_latest_queued_update() {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (channels, mut inbox) = link(Kind::Memory, stallable(true, 4)).await;
    let blocking = stall(&channels).await;
    let state = channels.sender("state").unwrap();
    for v in 1..=10u8 {
        state.try_send(Some(1), Bytes::from(vec![v])).unwrap();
        if v == 5 {
            state.try_send(Some(2), Bytes::from(vec![50])).unwrap();
        }
    }
    state.send(Some(2), Bytes::from(vec![51])).await.unwrap();
    assert_eq!(
        metric(
            &seen,
            "foundation_channel_superseded_total",
            &[("channel", "state")]
        ),
        10.0
    );
    let mut updates = Vec::new();
    for _ in 0..blocking {
        assert_eq!(recv(&mut inbox).await.key, None);
    }
    for _ in 0..2 {
        let m = recv(&mut inbox).await;
        updates.push((m.key.unwrap(), m.payload[0]));
    }
    // Key 1 was queued first, so it keeps its place; each key shows only its latest value.
    assert_eq!(updates, [(1, 10), (2, 51)]);
    // Nothing else is on the way.
    state.send(Some(3), Bytes::from(vec![99])).await.unwrap();
    assert_eq!(recv(&mut inbox).await.key, Some(3));
}

#[tokio::test(start_paused = true)]
async fn full_queue_applies_backpressure_and_try_send_hands_the_message_back() {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (channels, mut inbox) = link(Kind::Memory, stallable(false, 2)).await;
    let blocking = stall(&channels).await;
    let state = channels.sender("state").unwrap();
    let mut queued = 0;
    let rejected = loop {
        match state.try_send(Some(9), Bytes::from(vec![queued])) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued <= 2, "the queue holds 2 messages");
    };
    assert_eq!(
        rejected,
        TrySendError::Full {
            key: Some(9),
            payload: Bytes::from(vec![queued])
        }
    );
    assert_eq!(
        metric(
            &seen,
            "foundation_channel_dropped_total",
            &[("channel", "state"), ("reason", "full")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &seen,
            "foundation_channel_queue_depth",
            &[("channel", "state")]
        ),
        f64::from(queued)
    );
    // `send` waits while the queue is full...
    let waiting = {
        let state = state.clone();
        tokio::spawn(async move { state.send(Some(9), Bytes::from_static(b"last")).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    // ...and completes once the receiver drains.
    for _ in 0..blocking {
        recv(&mut inbox).await;
    }
    for i in 0..queued {
        assert_eq!(recv(&mut inbox).await.payload[..], [i]);
    }
    waiting.await.unwrap().unwrap();
    assert_eq!(&recv(&mut inbox).await.payload[..], b"last");
}

#[tokio::test(start_paused = true)]
async fn inbox_delivers_higher_priorities_first() {
    let settings = ChannelSettings::default();
    let (channels, mut inbox) = link(Kind::Memory, settings).await;
    channels
        .send(GOSSIP, None, Bytes::from_static(b"low"))
        .await
        .unwrap();
    channels
        .send(BULK_DATA, None, Bytes::from_static(b"medium"))
        .await
        .unwrap();
    channels
        .send(COORDINATION, None, Bytes::from_static(b"high"))
        .await
        .unwrap();
    // Let all three arrive before reading.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let order: Vec<_> = [
        recv(&mut inbox).await,
        recv(&mut inbox).await,
        recv(&mut inbox).await,
    ]
    .into_iter()
    .map(|m| m.payload)
    .collect();
    assert_eq!(order, [&b"high"[..], b"medium", b"low"]);
}

#[tokio::test(start_paused = true)]
async fn routing_rules() {
    let settings =
        ChannelSettings::default().with(ChannelSpec::new("state", Priority::High, 2).monotonic());
    let opts = RouteOptions::default();
    let specs = &settings.channels;
    let r = |meta: MessageMeta<'_>| route(&meta, &opts, specs).to_owned();
    let small = MessageMeta {
        size: 100,
        ..Default::default()
    };
    let large = MessageMeta {
        size: 1025,
        ..Default::default()
    };
    assert_eq!(r(small), COORDINATION);
    assert_eq!(
        r(MessageMeta {
            size: 1024,
            ..small
        }),
        COORDINATION
    );
    assert_eq!(r(large), BULK_DATA);
    assert_eq!(
        r(MessageMeta {
            urgency: Urgency::Urgent,
            ..large
        }),
        COORDINATION
    );
    assert_eq!(
        r(MessageMeta {
            urgency: Urgency::Background,
            ..small
        }),
        GOSSIP
    );
    assert_eq!(
        r(MessageMeta {
            urgency: Urgency::Background,
            ..large
        }),
        BULK_DATA
    );
    assert_eq!(
        r(MessageMeta {
            monotonic_key: Some(3),
            ..large
        }),
        "state"
    );
    // Bulk goes on `bulk_data` whatever the size (a keyed bulk stream stays on one channel).
    assert_eq!(
        r(MessageMeta {
            urgency: Urgency::Bulk,
            ..small
        }),
        BULK_DATA
    );
    assert_eq!(
        r(MessageMeta {
            channel: Some("mine"),
            urgency: Urgency::Urgent,
            ..small
        }),
        "mine"
    );
    // No monotonic channel: the rule is skipped.
    assert_eq!(
        route(
            &MessageMeta {
                monotonic_key: Some(3),
                ..large
            },
            &opts,
            &ChannelSettings::default().channels
        ),
        BULK_DATA
    );

    // `send_routed` uses the same rules and the monotonic key as partition key.
    let (channels, mut inbox) = link(Kind::Memory, settings).await;
    channels
        .send_routed(
            MessageMeta {
                monotonic_key: Some(5),
                ..Default::default()
            },
            None,
            Bytes::from_static(b"s"),
        )
        .await
        .unwrap();
    channels
        .send_routed(MessageMeta::default(), None, Bytes::from(vec![0; 4096]))
        .await
        .unwrap();
    let a = recv(&mut inbox).await;
    let b = recv(&mut inbox).await;
    let mut got = [
        (a.channel.to_string(), a.key),
        (b.channel.to_string(), b.key),
    ];
    got.sort();
    assert_eq!(
        got,
        [(BULK_DATA.to_owned(), None), ("state".to_owned(), Some(5))]
    );
}

#[tokio::test(start_paused = true)]
async fn interposer_drops_on_the_send_path_and_counts() {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let interposer = Arc::new(Interposer::with_seed(1));
    interposer.add(Rule::new(Fault::Partition).channel(GOSSIP));
    let (channels, mut inbox) =
        link_with(Kind::Memory, ChannelSettings::default(), Some(interposer)).await;
    channels
        .send(GOSSIP, None, Bytes::from_static(b"dropped"))
        .await
        .unwrap();
    channels
        .send(COORDINATION, None, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut inbox).await.payload[..], b"kept");
    eventually("the drop is counted", || {
        metric(
            &seen,
            "foundation_channel_dropped_total",
            &[("channel", GOSSIP), ("reason", "interposed")],
        ) == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), inbox.recv())
            .await
            .is_err(),
        "nothing else arrives"
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_count_messages_and_bytes_both_ways() {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (channels, mut inbox) = link(Kind::Memory, ChannelSettings::default()).await;
    for _ in 0..3 {
        channels
            .send(BULK_DATA, Some(1), Bytes::from(vec![1; 2000]))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        recv(&mut inbox).await;
    }
    for direction in ["out", "in"] {
        let labels = [("channel", BULK_DATA), ("direction", direction)];
        assert_eq!(
            metric(&seen, "foundation_channel_messages_total", &labels),
            3.0
        );
        assert_eq!(
            metric(&seen, "foundation_channel_bytes_total", &labels),
            6000.0
        );
    }
    assert_eq!(
        metric(
            &seen,
            "foundation_channel_send_seconds",
            &[("channel", BULK_DATA)]
        ),
        3.0
    );
    channels.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn bad_settings_and_unknown_channels_are_refused() {
    let (channels, _inbox) = link(Kind::Memory, ChannelSettings::default()).await;
    assert!(matches!(
        channels.sender("nope"),
        Err(Error::UnknownChannel { channel }) if channel == "nope"
    ));
    assert!(matches!(
        channels.send("nope", None, Bytes::new()).await,
        Err(Error::UnknownChannel { .. })
    ));
    let twice = ChannelSettings::default().with(ChannelSpec::new(GOSSIP, Priority::Low, 1));
    assert!(matches!(
        twice.validate(),
        Err(Error::InvalidChannel { channel, .. }) if channel == GOSSIP
    ));
    let zero = ChannelSettings::default().with(ChannelSpec::new("z", Priority::Low, 0));
    assert!(matches!(
        Inbox::new(&zero),
        Err(Error::InvalidChannel { channel, .. }) if channel == "z"
    ));
}

#[test]
fn settings_load_from_toml() {
    let settings: ChannelSettings = toml::from_str(
        r#"
        inbox_capacity = 16
        [[channels]]
        name = "coordination"
        priority = "high"
        parallelism = 3
        [[channels]]
        name = "state"
        priority = "low"
        monotonic = true
        "#,
    )
    .unwrap();
    assert_eq!(settings.inbox_capacity, 16);
    assert_eq!(
        settings.channels[1],
        ChannelSpec::new("state", Priority::Low, 1).monotonic()
    );
    assert_eq!(settings.route, RouteOptions::default());
    settings.validate().unwrap();
}

#[tokio::test(start_paused = true)]
async fn inbox_closes_connections_for_unknown_channels() {
    let network = MemoryNetwork::new();
    let a = transport(Kind::Memory, &network, "a");
    let b = transport(Kind::Memory, &network, "b");
    let inbox = Inbox::new(&ChannelSettings::default()).unwrap();
    inbox.serve(b.listen("mem://b").await.unwrap());
    let (_tx, mut rx) = a.connect("mem://b", "nope", 0).await.unwrap().split();
    assert_eq!(rx.recv().await.unwrap(), None);
    assert_eq!(rx.close_reason(), Some("unknown channel"));
    // A link whose table names a channel the peer does not know fails on first use.
    let settings = ChannelSettings::default().with(ChannelSpec::new("nope", Priority::Low, 1));
    let channels = Channels::builder(a, "mem://b")
        .settings(settings)
        .connect()
        .await
        .unwrap();
    eventually("the refused connection is seen closed", || {
        channels.closed_reason("nope", 0).is_some()
    })
    .await;
    assert!(matches!(
        channels.send("nope", None, Bytes::new()).await,
        Err(Error::ChannelClosed { .. })
    ));
    channels
        .send(GOSSIP, None, Bytes::from_static(b"fine"))
        .await
        .unwrap();
}

/// The central claim: a stalled bulk transfer does not hold back coordination messages,
/// whereas on one connection they wait behind it.
#[tokio::test(start_paused = true)]
async fn stalled_bulk_traffic_does_not_block_coordination() {
    let settings = ChannelSettings {
        inbox_capacity: 1,
        ..Default::default()
    };
    let (channels, mut inbox) = link(Kind::Memory, settings).await;
    let bulk = channels.sender(BULK_DATA).unwrap();
    let big = Bytes::from(vec![0u8; 2 * 1024 * 1024]);
    // Three 2 MiB messages per bulk connection: more than the inbox and the streams hold.
    for _ in 0..3 * DEFAULT_BULK_PARALLELISM {
        bulk.send(None, big.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    channels
        .send(COORDINATION, None, Bytes::from_static(b"urgent"))
        .await
        .unwrap();
    // The bulk connections stay stalled (nobody reads); the urgent message gets through
    // and, being high priority, is handed out before the bulk message already waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = recv(&mut inbox).await;
    assert_eq!(
        (&*first.channel, first.payload.len()),
        (COORDINATION, b"urgent".len())
    );

    // The same traffic on one connection: the urgent message waits behind the bulk.
    let single = ChannelSettings {
        channels: vec![ChannelSpec::new("single", Priority::Medium, 1)],
        inbox_capacity: 1,
        ..Default::default()
    };
    let (channels, mut inbox) = link(Kind::Memory, single).await;
    let single = channels.sender("single").unwrap();
    for _ in 0..3 {
        single.send(None, big.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    single
        .send(None, Bytes::from_static(b"urgent"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = recv(&mut inbox).await;
    assert!(first.payload.len() == big.len(), "bulk comes first");
    for _ in 0..2 {
        assert_eq!(recv(&mut inbox).await.payload.len(), big.len());
    }
    assert!(recv(&mut inbox).await.payload[..] == b"urgent"[..]);
}

#[tokio::test(start_paused = true)]
async fn queues_are_bounded_in_bytes_as_well_as_messages() {
    let (recorder, seen) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    // Room for 1000 messages but only 256 KiB.
    let mut settings = stallable(false, 1000);
    settings.channels[0].queue_bytes = 256 * 1024;
    let (channels, _inbox) = link(Kind::Memory, settings).await;
    stall(&channels).await;
    let state = channels.sender("state").unwrap();
    let before = metric(
        &seen,
        "foundation_channel_queue_bytes",
        &[("channel", "state")],
    );
    let chunk = Bytes::from(vec![3u8; 64 * 1024]);
    let mut accepted = 0;
    while state.try_send(None, chunk.clone()).is_ok() {
        accepted += 1;
        assert!(accepted <= 4, "more than 256 KiB queued");
    }
    // Full in bytes, far from full in messages: even one byte more is refused.
    assert!(matches!(
        state.try_send(None, Bytes::from_static(b"x")),
        Err(TrySendError::Full { .. })
    ));
    let after = metric(
        &seen,
        "foundation_channel_queue_bytes",
        &[("channel", "state")],
    );
    assert_eq!(after - before, (accepted * 64 * 1024) as f64);
    drop(channels);
}
