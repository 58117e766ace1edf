//! Behaviour of `foundation_beam::table`: zero-copy reads, TTL expiry (paused time),
//! acknowledgements, bounds, stale references, concurrency, metrics, and a model check.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_beam::table::{Ack, Capacity, InsertError, Table, TableRef, TableSettings};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use tokio::time::advance;

const HOUR: Duration = Duration::from_secs(3600);

fn no_sweeper(max_entries: usize, max_bytes: usize, shards: usize) -> TableSettings {
    TableSettings {
        name: "test".into(),
        max_entries,
        max_bytes,
        shards,
        sweep_interval_ms: 0,
    }
}

fn acks(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn get_returns_the_stored_bytes_without_copying() {
    let table = Table::new(no_sweeper(100, 1 << 20, 4)).unwrap();
    let value = Bytes::from(vec![1u8; 4096]);
    let r = table.insert(value.clone(), HOUR).unwrap();
    let got = table.get(&r).unwrap();
    assert_eq!(got, value);
    assert_eq!(got.as_ptr(), value.as_ptr());
    assert_eq!(table.len(), 1);
    assert_eq!(table.bytes(), 4096);
    assert_eq!(std::mem::size_of::<TableRef>(), 12);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_at_their_ttl() {
    let table = Table::new(no_sweeper(100, 1 << 20, 2)).unwrap();
    let short = table
        .insert(Bytes::from_static(b"short"), Duration::from_millis(100))
        .unwrap();
    let long = table
        .insert(Bytes::from_static(b"long"), Duration::from_millis(300))
        .unwrap();
    let forever = table
        .insert(Bytes::from_static(b"forever"), Duration::MAX)
        .unwrap();

    advance(Duration::from_millis(99)).await;
    assert_eq!(table.get(&short).as_deref(), Some(&b"short"[..]));
    advance(Duration::from_millis(1)).await;
    assert_eq!(table.get(&short), None);
    // The read that found it expired removed it.
    assert_eq!(table.len(), 2);
    assert_eq!(table.get(&long).as_deref(), Some(&b"long"[..]));

    advance(Duration::from_millis(250)).await;
    // Not touched since it expired: still stored until a sweep.
    assert_eq!(table.len(), 2);
    assert_eq!(table.sweep(), 1);
    assert_eq!(table.len(), 1);
    assert_eq!(table.bytes(), b"forever".len());
    assert_eq!(table.get(&long), None);
    assert_eq!(table.ack(&long), Ack::Unknown);

    advance(Duration::from_secs(1_000_000)).await;
    assert_eq!(table.get(&forever).as_deref(), Some(&b"forever"[..]));
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_task_reclaims_expired_entries() {
    let table = Table::new(TableSettings {
        sweep_interval_ms: 50,
        ..no_sweeper(100, 1 << 20, 2)
    })
    .unwrap();
    for _ in 0..10 {
        table
            .insert(
                Bytes::from_static(b"0123456789"),
                Duration::from_millis(120),
            )
            .unwrap();
    }
    table.insert(Bytes::from_static(b"keep"), HOUR).unwrap();
    assert_eq!(table.len(), 11);

    // Sweeps at 50 and 100 ms find nothing due; the one at 150 ms removes ten entries.
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert_eq!(table.len(), 11);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(table.len(), 1);
    assert_eq!(table.bytes(), 4);

    // After shutdown the sweeper no longer runs; expiry is left to reads and sweep().
    table.shutdown().await;
    table
        .insert(Bytes::from_static(b"late"), Duration::from_millis(10))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(table.len(), 2);
    assert_eq!(table.sweep(), 1);
    assert_eq!(table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_table_stops_its_sweeper() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let table = Table::new(TableSettings {
        sweep_interval_ms: 10,
        ..no_sweeper(100, 1 << 20, 2)
    })
    .unwrap();
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    drop(table);
    for _ in 0..10 {
        if metrics.num_alive_tasks() == before {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}

#[test]
fn entries_leave_after_the_expected_acknowledgements() {
    let table = Table::new(no_sweeper(100, 1 << 20, 2)).unwrap();
    let r = table
        .insert_with_acks(Bytes::from_static(b"fan-out"), HOUR, acks(3))
        .unwrap();
    assert_eq!(table.ack(&r), Ack::Pending { remaining: 2 });
    assert!(table.get(&r).is_some());
    assert_eq!(table.ack(&r), Ack::Pending { remaining: 1 });
    assert!(table.get(&r).is_some());
    assert_eq!(table.ack(&r), Ack::Removed);
    assert_eq!(table.get(&r), None);
    assert_eq!(table.ack(&r), Ack::Unknown);
    assert!(table.is_empty());
    assert_eq!(table.bytes(), 0);

    // A plain insert expects one acknowledgement.
    let single = table.insert(Bytes::from_static(b"one"), HOUR).unwrap();
    assert_eq!(table.ack(&single), Ack::Removed);
    assert_eq!(table.remove(&single), None);
}

#[test]
fn remove_returns_the_value_once() {
    let table = Table::new(no_sweeper(100, 1 << 20, 2)).unwrap();
    let r = table
        .insert_with_acks(Bytes::from_static(b"v"), HOUR, acks(5))
        .unwrap();
    assert_eq!(table.remove(&r), Some(Bytes::from_static(b"v")));
    assert_eq!(table.remove(&r), None);
    assert_eq!(table.ack(&r), Ack::Unknown);
    assert!(table.is_empty());
}

#[test]
fn inserts_beyond_the_entry_bound_fail_and_return_the_value() {
    let table = Table::new(no_sweeper(2, 1 << 20, 2)).unwrap();
    let a = table.insert(Bytes::from_static(b"a"), HOUR).unwrap();
    table.insert(Bytes::from_static(b"b"), HOUR).unwrap();
    let err = table.insert(Bytes::from_static(b"c"), HOUR).unwrap_err();
    match &err {
        InsertError::Full {
            limit,
            max,
            needed,
            value,
            ..
        } => {
            assert_eq!(*limit, Capacity::Entries);
            assert_eq!((*max, *needed), (2, 3));
            assert_eq!(value, &Bytes::from_static(b"c"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.into_value(), Bytes::from_static(b"c"));
    assert_eq!(table.len(), 2);

    assert_eq!(table.ack(&a), Ack::Removed);
    table.insert(Bytes::from_static(b"c"), HOUR).unwrap();
}

#[test]
fn inserts_beyond_the_byte_bound_fail() {
    let table = Table::new(no_sweeper(100, 10, 2)).unwrap();
    let six = table.insert(Bytes::from_static(b"666666"), HOUR).unwrap();
    let err = table
        .insert(Bytes::from_static(b"55555"), HOUR)
        .unwrap_err();
    assert!(
        matches!(
            err,
            InsertError::Full {
                limit: Capacity::Bytes,
                max: 10,
                needed: 11,
                ..
            }
        ),
        "{err:?}"
    );
    // Exactly at the bound is allowed.
    table.insert(Bytes::from_static(b"4444"), HOUR).unwrap();
    assert_eq!(table.bytes(), 10);
    // A value larger than the whole table never fits.
    assert!(table.insert(Bytes::from(vec![0u8; 11]), HOUR).is_err());
    assert_eq!(table.remove(&six).map(|v| v.len()), Some(6));
    assert_eq!(table.bytes(), 4);
    assert_eq!(table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_table_makes_room_from_expired_entries() {
    let table = Table::new(no_sweeper(2, 1 << 20, 1)).unwrap();
    table
        .insert(Bytes::from_static(b"old"), Duration::from_millis(10))
        .unwrap();
    table.insert(Bytes::from_static(b"kept"), HOUR).unwrap();
    assert!(table.insert(Bytes::from_static(b"new"), HOUR).is_err());
    advance(Duration::from_millis(10)).await;
    let new = table.insert(Bytes::from_static(b"new"), HOUR).unwrap();
    assert_eq!(table.get(&new).as_deref(), Some(&b"new"[..]));
    assert_eq!(table.len(), 2);
}

#[test]
fn stale_references_never_see_a_newer_value() {
    // One shard: the freed slot is the one reused.
    let table = Table::new(no_sweeper(4, 1 << 20, 1)).unwrap();
    let old = table.insert(Bytes::from_static(b"old"), HOUR).unwrap();
    assert_eq!(table.ack(&old), Ack::Removed);
    let new = table.insert(Bytes::from_static(b"new"), HOUR).unwrap();
    assert_ne!(old, new);
    assert_eq!(table.get(&old), None);
    assert_eq!(table.ack(&old), Ack::Unknown);
    assert_eq!(table.remove(&old), None);
    // The stale operations did not touch the new entry.
    assert_eq!(table.get(&new).as_deref(), Some(&b"new"[..]));
    assert_eq!(table.len(), 1);

    // A reference from another table is unknown here, even for the same slot.
    let other = Table::new(no_sweeper(4, 1 << 20, 1)).unwrap();
    let foreign = other.insert(Bytes::from_static(b"foreign"), HOUR).unwrap();
    assert_eq!(table.get(&foreign), None);
    assert_eq!(table.ack(&foreign), Ack::Unknown);
    assert_eq!(other.get(&foreign).as_deref(), Some(&b"foreign"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_gets_and_acks() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 2_000;
    let table = Arc::new(Table::new(no_sweeper(TASKS * PER_TASK, 1 << 30, 4)).unwrap());

    let mut inserters = Vec::new();
    for t in 0..TASKS {
        let table = table.clone();
        inserters.push(tokio::spawn(async move {
            let mut refs = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let value = Bytes::from(format!("{t}:{i}"));
                let r = table.insert_with_acks(value, HOUR, acks(2)).unwrap();
                assert_eq!(table.get(&r).unwrap(), format!("{t}:{i}").as_bytes());
                refs.push(r);
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            refs
        }));
    }
    let mut all: Vec<Vec<TableRef>> = Vec::new();
    for h in inserters {
        all.push(h.await.unwrap());
    }
    assert_eq!(table.len(), TASKS * PER_TASK);
    let all = Arc::new(all);

    // Two acknowledgers per entry, each reading every other task's entries first.
    let mut ackers = Vec::new();
    for t in 0..TASKS {
        for _ in 0..2 {
            let table = table.clone();
            let all = all.clone();
            ackers.push(tokio::spawn(async move {
                let mut removed = 0;
                for (i, r) in all[t].iter().enumerate() {
                    assert_eq!(table.get(r).unwrap(), format!("{t}:{i}").as_bytes());
                    let other = &all[(t + 1) % TASKS][i];
                    // May already be gone: the neighbours are acknowledging too.
                    if let Some(v) = table.get(other) {
                        assert_eq!(v, format!("{}:{i}", (t + 1) % TASKS).as_bytes());
                    }
                    match table.ack(r) {
                        Ack::Removed => removed += 1,
                        Ack::Pending { remaining: 1 } => {}
                        other => panic!("unexpected ack {other:?}"),
                    }
                }
                removed
            }));
        }
    }
    let mut removed = 0;
    for h in ackers {
        removed += h.await.unwrap();
    }
    assert_eq!(removed, TASKS * PER_TASK);
    assert_eq!(table.len(), 0);
    assert_eq!(table.bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_every_way_in_and_out() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    foundation_beam::table::describe_metrics();

    let table = Table::new(TableSettings {
        name: "m".into(),
        ..no_sweeper(3, 1 << 20, 2)
    })
    .unwrap();
    let expiring = table
        .insert(Bytes::from_static(b"12345"), Duration::from_millis(5))
        .unwrap();
    let acked = table.insert(Bytes::from_static(b"ab"), HOUR).unwrap();
    let removed = table.insert(Bytes::from_static(b"xyz"), HOUR).unwrap();
    assert!(table.insert(Bytes::from_static(b"full"), HOUR).is_err());
    table.ack(&acked);
    table.remove(&removed);
    table.get(&acked); // miss
    advance(Duration::from_millis(5)).await;
    table.get(&expiring); // expired on access: a miss and an expiry
    let kept = table.insert(Bytes::from_static(b"kept"), HOUR).unwrap();
    assert!(table.get(&kept).is_some());

    let mut seen: HashMap<String, (f64, bool)> = HashMap::new();
    for (key, _, help, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        assert!(key.labels().any(|l| l.key() == "table" && l.value() == "m"));
        let mut name = key.name().to_owned();
        if let Some(limit) = key.labels().find(|l| l.key() == "limit") {
            name = format!("{name}{{{}}}", limit.value());
        }
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => unreachable!(),
        };
        seen.insert(name, (v, help.is_some()));
    }
    let expect = [
        ("foundation_table_inserted_total", 4.0),
        ("foundation_table_expired_total", 1.0),
        ("foundation_table_acked_total", 1.0),
        ("foundation_table_removed_total", 1.0),
        ("foundation_table_misses_total", 2.0),
        ("foundation_table_rejected_total{entries}", 1.0),
        ("foundation_table_rejected_total{bytes}", 0.0),
        ("foundation_table_entries", 1.0),
        ("foundation_table_bytes", 4.0),
    ];
    for (name, value) in expect {
        assert_eq!(seen.get(name), Some(&(value, true)), "{name}: {seen:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert { len: usize, ttl_ms: u64, acks: u32 },
    Get(usize),
    Ack(usize),
    Remove(usize),
    Advance(u64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..12, 1u64..50, 1u32..4)
            .prop_map(|(len, ttl_ms, acks)| Op::Insert { len, ttl_ms, acks }),
        3 => any::<usize>().prop_map(Op::Get),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Remove),
        2 => (0u64..30).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

/// What the model keeps per entry: value, deadline (ms since start), acks left.
type ModelEntry = (Bytes, u64, u32);

proptest! {
    /// The table behaves like a `HashMap` with deadlines and ack counters, including its
    /// bounds, lazy expiry and the sweep a full insert performs.
    #[test]
    fn table_matches_a_hashmap_model(ops in proptest::collection::vec(op(), 1..120)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            const MAX_ENTRIES: usize = 6;
            const MAX_BYTES: usize = 40;
            let table = Table::new(no_sweeper(MAX_ENTRIES, MAX_BYTES, 2)).unwrap();
            let mut model: HashMap<TableRef, ModelEntry> = HashMap::new();
            let mut refs: Vec<TableRef> = Vec::new();
            let mut now = 0u64;
            let mut counter = 0u8;
            for op in ops {
                match op {
                    Op::Insert { len, ttl_ms, acks: n } => {
                        counter = counter.wrapping_add(1);
                        let value = Bytes::from(vec![counter; len]);
                        let fits = |m: &HashMap<TableRef, ModelEntry>| {
                            m.len() < MAX_ENTRIES
                                && m.values().map(|e| e.0.len()).sum::<usize>() + len <= MAX_BYTES
                        };
                        if !fits(&model) {
                            model.retain(|_, e| e.1 > now);
                        }
                        let expect_ok = fits(&model);
                        let result = table.insert_with_acks(
                            value.clone(),
                            Duration::from_millis(ttl_ms),
                            acks(n),
                        );
                        prop_assert_eq!(result.is_ok(), expect_ok);
                        if let Ok(r) = result {
                            prop_assert!(!model.contains_key(&r), "reference reused");
                            model.insert(r, (value, now + ttl_ms, n));
                            refs.push(r);
                        }
                    }
                    Op::Get(i) if !refs.is_empty() => {
                        let r = refs[i % refs.len()];
                        let expected = match model.get(&r) {
                            Some(e) if e.1 > now => Some(e.0.clone()),
                            Some(_) => {
                                model.remove(&r);
                                None
                            }
                            None => None,
                        };
                        prop_assert_eq!(table.get(&r), expected);
                    }
                    Op::Ack(i) if !refs.is_empty() => {
                        let r = refs[i % refs.len()];
                        let expected = match model.get_mut(&r) {
                            Some(e) if e.1 <= now => {
                                model.remove(&r);
                                Ack::Unknown
                            }
                            Some(e) if e.2 > 1 => {
                                e.2 -= 1;
                                Ack::Pending { remaining: e.2 }
                            }
                            Some(_) => {
                                model.remove(&r);
                                Ack::Removed
                            }
                            None => Ack::Unknown,
                        };
                        prop_assert_eq!(table.ack(&r), expected);
                    }
                    Op::Remove(i) if !refs.is_empty() => {
                        let r = refs[i % refs.len()];
                        let expected = match model.remove(&r) {
                            Some(e) if e.1 > now => Some(e.0),
                            _ => None,
                        };
                        prop_assert_eq!(table.remove(&r), expected);
                    }
                    Op::Advance(ms) => {
                        advance(Duration::from_millis(ms)).await;
                        now += ms;
                    }
                    Op::Sweep => {
                        let before = model.len();
                        model.retain(|_, e| e.1 > now);
                        prop_assert_eq!(table.sweep(), before - model.len());
                    }
                    _ => {}
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(
                    table.bytes(),
                    model.values().map(|e| e.0.len()).sum::<usize>()
                );
            }
            Ok(())
        })?;
    }
}
