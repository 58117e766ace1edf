//! Behaviour of `foundation_beam::message`: strategy selection, table references, flow
//! control with doubling retry delays, send rates, metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_beam::mailbox::Delivery;
use foundation_beam::message::{
    Deliver, FlowAction, MessageOptions, Messenger, Payload, Refused, SendReport, Strategy,
    StrategySettings,
};
use foundation_beam::process::spawn_fn;
use foundation_beam::table::{Ack, TableSettings};
use foundation_beam::Handle;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{advance, Instant};

const MS: Duration = Duration::from_millis(1);

/// Small thresholds, no table sweeper (expiry is checked on access).
fn settings() -> StrategySettings {
    StrategySettings {
        shared_min_bytes: 1024,
        table_min_bytes: 64 * 1024,
        table_min_targets: 3,
        table_ttl_ms: 100,
        flow_control_backlog: 10,
        table: TableSettings {
            name: "msg-test".into(),
            sweep_interval_ms: 0,
            ..TableSettings::default()
        },
        ..StrategySettings::default()
    }
}

/// A process that forwards every payload it receives (unresolved) to a channel.
fn sink() -> (Handle<Payload>, mpsc::UnboundedReceiver<Payload>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = spawn_fn(move |mut inbox| async move {
        while let Some(p) = inbox.recv().await {
            let _ = tx.send(p);
        }
    });
    (h, rx)
}

/// A target whose backlog the test sets.
#[derive(Clone)]
struct Probe {
    key: u64,
    backlog: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(Payload, bool)>>>,
}

impl Probe {
    fn new(key: u64, backlog: usize) -> Probe {
        Probe {
            key,
            backlog: Arc::new(AtomicUsize::new(backlog)),
            closed: Arc::new(AtomicBool::new(false)),
            got: Arc::default(),
        }
    }

    fn received(&self) -> usize {
        self.got.lock().len()
    }

    /// Sets the backlog to `to` after `after` (tokio time).
    fn drain_after(&self, after: Duration, to: usize) {
        let backlog = self.backlog.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            backlog.store(to, Ordering::SeqCst);
        });
    }
}

impl Deliver for Probe {
    fn key(&self) -> u64 {
        self.key
    }
    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }
    fn try_deliver(&self, payload: &Payload, urgent: bool) -> Result<Delivery, Refused> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Refused::Closed);
        }
        self.got.lock().push((payload.clone(), urgent));
        Ok(Delivery::Queued)
    }
}

fn bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn size_picks_direct_shared_or_table() {
    let m = Messenger::new(settings()).unwrap();
    let (h, mut rx) = sink();
    let opts = MessageOptions::default();

    let r = m.send_optimized(&h, bytes(64), &opts).await.unwrap();
    assert_eq!(r.strategy, Strategy::Direct);
    assert!(r.delivered);
    assert_eq!(r.delivered_to, Some(h.id().as_u64()));
    assert!(matches!(rx.recv().await.unwrap(), Payload::Bytes(b) if b == bytes(64)));

    let r = m.send_optimized(&h, bytes(4096), &opts).await.unwrap();
    assert_eq!(r.strategy, Strategy::SharedBytes);
    assert!(matches!(rx.recv().await.unwrap(), Payload::Bytes(b) if b.len() == 4096));

    let big = bytes(100 * 1024);
    let r = m.send_optimized(&h, big.clone(), &opts).await.unwrap();
    assert_eq!(r.strategy, Strategy::TableRef);
    let reference = r.table_ref.expect("a table reference");
    match rx.recv().await.unwrap() {
        p @ Payload::Table { .. } => {
            assert_eq!(p.get().unwrap(), big);
            assert_eq!(p.take().unwrap(), big);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The only expected acknowledgement came: the entry is gone.
    assert!(m.table().get(&reference).is_none());
    assert_eq!(m.table().len(), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn shared_bytes_are_not_copied() {
    // Default thresholds: 1 MiB is large (≥ 4 KiB) but not very large (< 16 MiB).
    let m = Messenger::new(StrategySettings::default()).unwrap();
    let (h, mut rx) = sink();
    let data = bytes(1 << 20);
    let r = m
        .send_optimized(&h, data.clone(), &MessageOptions::default())
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::SharedBytes);
    let got = rx.recv().await.unwrap().take().unwrap();
    assert_eq!(got.as_ptr(), data.as_ptr());
    assert_eq!(got.len(), data.len());
}

#[tokio::test]
async fn urgent_goes_through_the_urgent_lane() {
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h: Handle<Payload> = spawn_fn(move |mut inbox| async move {
        let _ = gate_rx.await;
        while let Some(p) = inbox.recv().await {
            let p: Payload = p;
            let _ = tx.send(p.take().unwrap());
        }
    });
    let m = Messenger::new(settings()).unwrap();
    let normal = MessageOptions::default();
    m.send_optimized(&h, Bytes::from_static(b"n1"), &normal)
        .await
        .unwrap();
    m.send_optimized(&h, Bytes::from_static(b"n2"), &normal)
        .await
        .unwrap();
    let r = m
        .send_optimized(&h, Bytes::from_static(b"u"), &MessageOptions::urgent())
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::Urgent);
    gate_tx.send(()).unwrap();
    assert_eq!(rx.recv().await.unwrap(), "u");
    assert_eq!(rx.recv().await.unwrap(), "n1");
    assert_eq!(rx.recv().await.unwrap(), "n2");
}

#[tokio::test]
async fn urgent_ignores_a_busy_normal_lane() {
    let m = Messenger::new(settings()).unwrap();
    let p = Probe::new(1, 1000);
    let r = m
        .send_optimized(&p, bytes(10), &MessageOptions::urgent())
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::Urgent);
    assert!(p.got.lock()[0].1, "sent on the urgent lane");
}

#[tokio::test]
async fn a_stopped_target_is_an_error() {
    let m = Messenger::new(settings()).unwrap();
    let p = Probe::new(7, 0);
    p.closed.store(true, Ordering::SeqCst);
    let e = m
        .send_optimized(&p, bytes(200 * 1024), &MessageOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), 4011);
    // The table entry made for it was released.
    assert_eq!(m.table().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn busy_target_with_drop_drops_at_once() {
    let m = Messenger::new(settings()).unwrap();
    let p = Probe::new(1, 10);
    let start = Instant::now();
    let r = m
        .send_optimized(&p, bytes(10), &MessageOptions::on_busy(FlowAction::Drop))
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::FlowControlled(FlowAction::Drop));
    assert!(!r.delivered);
    assert!(r.retry_delays.is_empty());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(p.received(), 0);
}

#[tokio::test(start_paused = true)]
async fn busy_target_with_queue_waits_with_doubling_delays() {
    let m = Messenger::new(settings()).unwrap();
    let p = Probe::new(1, 50);
    p.drain_after(20 * MS, 0);
    let start = Instant::now();
    let r = m
        .send_optimized(&p, bytes(10), &MessageOptions::on_busy(FlowAction::Queue))
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::FlowControlled(FlowAction::Queue));
    assert!(r.delivered);
    assert_eq!(r.retry_delays, vec![MS, 2 * MS, 4 * MS, 8 * MS, 16 * MS]);
    // Busy at 0, 1, 3, 7 and 15 ms; free when checked at 31 ms.
    assert_eq!(start.elapsed(), 31 * MS);
    assert_eq!(p.received(), 1);
}

#[tokio::test(start_paused = true)]
async fn queue_gives_up_after_the_last_retry_with_capped_delays() {
    let m = Messenger::new(StrategySettings {
        retry_base_ms: 2,
        retry_max_ms: 5,
        max_retries: 4,
        ..settings()
    })
    .unwrap();
    let p = Probe::new(1, 10);
    let start = Instant::now();
    let r = m
        .send_optimized(&p, bytes(200 * 1024), &MessageOptions::default())
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::FlowControlled(FlowAction::Queue));
    assert!(!r.delivered);
    assert_eq!(r.retry_delays, vec![2 * MS, 4 * MS, 5 * MS, 5 * MS]);
    assert_eq!(start.elapsed(), 16 * MS);
    assert_eq!(p.received(), 0);
    // The very large payload's table entry was released when giving up.
    assert!(r.table_ref.is_some());
    assert_eq!(m.table().len(), 0);
}

/// 10 bytes to `primary`, redirected to the least loaded of `alts` when it is busy.
async fn redirect(m: &Messenger, primary: &Probe, alts: &[Probe]) -> SendReport {
    let opts = MessageOptions::on_busy(FlowAction::Redirect);
    m.send_optimized_or(primary, alts, bytes(10), &opts)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn redirect_picks_the_least_loaded_alternative_with_room() {
    let m = Messenger::new(settings()).unwrap();
    let primary = Probe::new(1, 40);
    let alts = vec![Probe::new(2, 30), Probe::new(3, 5), Probe::new(4, 2)];
    let r = redirect(&m, &primary, &alts).await;
    assert_eq!(r.strategy, Strategy::FlowControlled(FlowAction::Redirect));
    assert_eq!(r.delivered_to, Some(4));
    assert!(r.retry_delays.is_empty());
    assert_eq!(
        (
            primary.received(),
            alts[0].received(),
            alts[1].received(),
            alts[2].received()
        ),
        (0, 0, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn redirect_retries_with_doubling_delays_when_everyone_is_busy() {
    let m = Messenger::new(settings()).unwrap();
    let primary = Probe::new(1, 40);
    let alts = vec![Probe::new(2, 30)];
    alts[0].drain_after(5 * MS, 0);
    let start = Instant::now();
    let r = redirect(&m, &primary, &alts).await;
    assert_eq!(r.delivered_to, Some(2));
    assert_eq!(r.retry_delays, vec![MS, 2 * MS, 4 * MS]);
    assert_eq!(start.elapsed(), 7 * MS);
    assert_eq!(primary.received(), 0);
}

#[tokio::test(start_paused = true)]
async fn table_refs_expire_by_ttl() {
    let m = Messenger::new(settings()).unwrap();
    let p = Probe::new(1, 0);
    let r = m
        .send_optimized(&p, bytes(100 * 1024), &MessageOptions::default())
        .await
        .unwrap();
    assert_eq!(r.strategy, Strategy::TableRef);
    let payload = p.got.lock()[0].0.clone();
    advance(99 * MS).await;
    assert!(payload.get().is_some());
    assert_eq!(m.table().len(), 1);
    advance(MS).await;
    assert!(payload.get().is_none());
    assert_eq!(payload.ack(), Some(Ack::Unknown));
    m.table().sweep();
    assert_eq!(m.table().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn broadcast_to_many_stores_once_and_leaves_after_every_ack() {
    let m = Messenger::new(settings()).unwrap();
    let targets: Vec<Probe> = (1..=4).map(|k| Probe::new(k, 0)).collect();
    targets[3].closed.store(true, Ordering::SeqCst);
    let data = bytes(2048);
    let r = m.broadcast(&targets, data.clone());
    assert_eq!(r.strategy, Strategy::TableRef);
    assert_eq!(r.delivered, 3);
    assert_eq!(r.refused, vec![4]);
    assert_eq!(m.table().len(), 1);
    let reference = r.table_ref.unwrap();
    // The refused target's acknowledgement was given on its behalf: three remain.
    for (i, t) in targets[..3].iter().enumerate() {
        let p = t.got.lock()[0].0.clone();
        let got = p.take().unwrap();
        assert_eq!(got.as_ptr(), data.as_ptr(), "stored once, never copied");
        assert_eq!(m.table().get(&reference).is_some(), i < 2);
    }
    assert_eq!(m.table().len(), 0);

    // Few targets: shared bytes, no table.
    let r = m.broadcast(&targets[..2], data.clone());
    assert_eq!(r.strategy, Strategy::SharedBytes);
    assert_eq!(m.table().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn frequent_sends_are_reported() {
    let m = Messenger::new(StrategySettings {
        rate_half_life_ms: 10,
        high_frequency_per_sec: 500.0,
        ..settings()
    })
    .unwrap();
    let fast = Probe::new(1, 0);
    let slow = Probe::new(2, 0);
    let opts = MessageOptions::default();
    let mut last = None;
    for i in 0..200 {
        last = Some(m.send_optimized(&fast, bytes(8), &opts).await.unwrap());
        if i % 100 == 0 {
            m.send_optimized(&slow, bytes(8), &opts).await.unwrap();
        }
        advance(MS).await;
    }
    let last = last.unwrap();
    assert!(last.high_frequency);
    assert!(
        (900.0..1100.0).contains(&last.rate_per_sec),
        "about 1000/s, got {}",
        last.rate_per_sec
    );
    let slow_report = m.send_optimized(&slow, bytes(8), &opts).await.unwrap();
    assert!(!slow_report.high_frequency);
    assert!(slow_report.rate_per_sec < 100.0);
    // Ten half-lives idle: the rate has decayed to about a thousandth.
    advance(100 * MS).await;
    assert!(m.rate(1) < 2.0);
    assert_eq!(m.rate(99), 0.0);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_strategies_and_flow_control() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    foundation_beam::describe_metrics();

    let m = Messenger::new(StrategySettings {
        max_retries: 2,
        ..settings()
    })
    .unwrap();
    let free = Probe::new(1, 0);
    let busy = Probe::new(2, 100);
    let opts = MessageOptions::default();
    m.send_optimized(&free, bytes(8), &opts).await.unwrap();
    m.send_optimized(&free, bytes(8), &opts).await.unwrap();
    m.send_optimized(&free, bytes(2048), &opts).await.unwrap();
    m.send_optimized(&free, bytes(100 * 1024), &opts)
        .await
        .unwrap();
    m.send_optimized(&busy, bytes(8), &MessageOptions::urgent())
        .await
        .unwrap();
    m.send_optimized(&busy, bytes(8), &MessageOptions::on_busy(FlowAction::Drop))
        .await
        .unwrap();
    m.send_optimized(&busy, bytes(8), &opts).await.unwrap(); // 2 retries, gives up
    m.send_optimized_or(
        &busy,
        std::slice::from_ref(&free),
        bytes(8),
        &MessageOptions::on_busy(FlowAction::Redirect),
    )
    .await
    .unwrap();

    let mut seen = HashMap::new();
    for (key, _, help, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if !key.name().starts_with("foundation_message_") {
            continue;
        }
        assert!(help.is_some(), "{} described", key.name());
        let label = key.labels().next().map(|l| l.value().to_owned());
        if let DebugValue::Counter(c) = value {
            seen.insert((key.name().to_owned(), label), c);
        }
    }
    let get = |name: &str, label: &str| {
        seen.get(&(name.to_owned(), Some(label.to_owned())))
            .copied()
            .unwrap_or(0)
    };
    let s = "foundation_message_strategy_total";
    let f = "foundation_message_flow_control_total";
    assert_eq!(get(s, "direct"), 2);
    assert_eq!(get(s, "shared_bytes"), 1);
    assert_eq!(get(s, "table_ref"), 1);
    assert_eq!(get(s, "urgent"), 1);
    assert_eq!(get(s, "flow_controlled"), 3);
    assert_eq!(get(f, "drop"), 1);
    assert_eq!(get(f, "queue"), 1);
    assert_eq!(get(f, "redirect"), 1);
    assert_eq!(get(f, "retry"), 2);
    assert_eq!(get(f, "gave_up"), 1);
    assert_eq!(get(f, "table_fallback"), 0);
}

#[tokio::test]
async fn a_full_table_falls_back_to_shared_bytes() {
    let m = Messenger::new(StrategySettings {
        table: TableSettings {
            name: "tiny".into(),
            max_entries: 1,
            sweep_interval_ms: 0,
            ..TableSettings::default()
        },
        ..settings()
    })
    .unwrap();
    let p = Probe::new(1, 0);
    let opts = MessageOptions::default();
    let first = m
        .send_optimized(&p, bytes(100 * 1024), &opts)
        .await
        .unwrap();
    assert_eq!(first.strategy, Strategy::TableRef);
    let second = m
        .send_optimized(&p, bytes(100 * 1024), &opts)
        .await
        .unwrap();
    assert_eq!(second.strategy, Strategy::SharedBytes);
    assert!(second.delivered);
    assert_eq!(p.received(), 2);
}

#[test]
fn settings_load_from_toml() {
    let s: StrategySettings = toml::from_str(
        "flow_control_backlog = 64\nhigh_frequency_per_sec = 250.0\n[table]\nname = \"blobs\"\n",
    )
    .unwrap();
    assert_eq!(s.flow_control_backlog, 64);
    assert_eq!(s.high_frequency_per_sec, 250.0);
    assert_eq!(s.table.name, "blobs");
    assert_eq!(
        s.shared_min_bytes,
        StrategySettings::default().shared_min_bytes
    );
    let o: MessageOptions = toml::from_str("urgent = true\non_busy = \"redirect\"").unwrap();
    assert_eq!(
        o,
        MessageOptions {
            urgent: true,
            on_busy: FlowAction::Redirect
        }
    );
}

/// Acknowledgements count per holder: a target that clones its payload and takes it
/// twice acknowledges once, so the entry stays for the other holders until each of them
/// has taken it.
#[tokio::test(start_paused = true)]
async fn table_refs_are_acknowledged_per_holder() {
    let m = Messenger::new(settings()).unwrap();
    let targets: Vec<Probe> = (1..=3).map(|k| Probe::new(k, 0)).collect();
    let data = bytes(2048);
    let r = m.broadcast(&targets, data.clone());
    assert_eq!(r.strategy, Strategy::TableRef);
    let reference = r.table_ref.unwrap();
    let payloads: Vec<Payload> = targets.iter().map(|t| t.got.lock()[0].0.clone()).collect();

    // Holder 1 takes its payload twice (two clones) and acknowledges a third time.
    let again = payloads[0].clone();
    assert_eq!(payloads[0].clone().take().unwrap(), data);
    assert_eq!(again.clone().try_take().unwrap(), data);
    assert_eq!(again.ack(), Some(Ack::AlreadyAcknowledged));
    assert!(m.table().get(&reference).is_some(), "others still need it");

    // Holder 2 acknowledges without reading; holder 3 still reads it.
    assert_eq!(payloads[1].ack(), Some(Ack::Pending { remaining: 1 }));
    assert_eq!(payloads[1].ack(), Some(Ack::AlreadyAcknowledged));
    assert_eq!(payloads[2].clone().take().unwrap(), data);
    assert_eq!(m.table().len(), 0, "gone after every holder acknowledged");

    // A late clone now gets a clear error, not a silent `None`.
    let e = payloads[2].clone().try_take().unwrap_err();
    assert_eq!(e.reference, reference);
    assert!(e.to_string().contains("no longer valid"), "{e}");
}

/// A receiver that comes after the entry's TTL gets a clear error naming the table and
/// the reference, even though the other holders never acknowledged.
#[tokio::test(start_paused = true)]
async fn a_receiver_after_expiry_gets_a_clear_error() {
    let m = Messenger::new(settings()).unwrap();
    let targets: Vec<Probe> = (1..=4).map(|k| Probe::new(k, 0)).collect();
    let r = m.broadcast(&targets, bytes(4096));
    assert_eq!(r.strategy, Strategy::TableRef);
    let early = targets[0].got.lock()[0].0.clone();
    assert!(early.try_take().is_ok());
    advance(Duration::from_millis(m.settings().table_ttl_ms)).await;
    let late = targets[1].got.lock()[0].0.clone();
    let e = late.try_take().unwrap_err();
    assert_eq!(e.table, m.table().name());
    assert_eq!(Some(e.reference), r.table_ref);
}
