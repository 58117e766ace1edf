//! Behaviour of the event store: retention, queries, causal chains, statistics, and the
//! durable mode's recovery from torn and corrupt segments.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foundation_core::events::{
    CorrelationId, DamageKind, Event, EventStore, Events, EventsSettings, FsyncPolicy, Order,
    Query, Recovery, StoreOptions,
};
use foundation_core::Error;

/// A directory under the system temp dir, unique per test and process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "foundation-events-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn durable(fsync: FsyncPolicy) -> StoreOptions {
    StoreOptions {
        max_age: None,
        fsync,
        ..StoreOptions::default()
    }
}

fn at(e: Event, ts_us: u64) -> Event {
    let mut e = e;
    e.timestamp_us = ts_us;
    e
}

fn ev(t: &str, n: u32) -> Event {
    Event::new(t, &n).unwrap()
}

fn ids(v: &[Event]) -> Vec<u32> {
    v.iter().map(|e| e.payload::<u32>().unwrap()).collect()
}

// ---- retention ----

#[tokio::test(start_paused = true)]
async fn retention_by_count_keeps_the_newest() {
    let store = EventStore::in_memory(StoreOptions {
        max_events: 10,
        max_age: None,
        ..StoreOptions::default()
    });
    for n in 0..25 {
        store.append(&ev("user", n)).unwrap();
    }
    assert_eq!(
        ids(&store.query(&Query::new())),
        (15..25).collect::<Vec<_>>()
    );
    let s = store.stats();
    assert_eq!((s.stored, s.appended_total, s.pruned_total), (10, 25, 15));
}

#[tokio::test(start_paused = true)]
async fn retention_by_age_on_insert_and_on_prune() {
    let store = EventStore::in_memory(StoreOptions {
        max_events: 1000,
        max_age: Some(Duration::from_secs(60)),
        ..StoreOptions::default()
    });
    for n in 0..5 {
        store.append(&ev("user", n)).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    // Ages now 50, 40, 30, 20, 10 s.
    assert_eq!(store.prune(), 0);
    tokio::time::advance(Duration::from_secs(15)).await; // 65, 55, ...
    store.append(&ev("user", 5)).unwrap(); // prunes on insert
    assert_eq!(ids(&store.query(&Query::new())), vec![1, 2, 3, 4, 5]);
    tokio::time::advance(Duration::from_secs(30)).await; // 95, 85, 75, 65, 40, 30
    assert_eq!(store.prune(), 3);
    assert_eq!(ids(&store.query(&Query::new())), vec![4, 5]);
    assert_eq!(store.stats().pruned_total, 4);
}

#[tokio::test(start_paused = true)]
async fn the_service_prunes_periodically_without_new_events() {
    let store = EventStore::in_memory(StoreOptions {
        max_age: Some(Duration::from_secs(30)),
        ..StoreOptions::default()
    });
    let events = Events::with_store(
        EventsSettings {
            prune_interval: Duration::from_secs(5),
            ..EventsSettings::default()
        },
        store.clone(),
    )
    .unwrap();
    for n in 0..3 {
        events.emit(ev("system", n)).await.unwrap();
    }
    assert_eq!(store.len(), 3);
    tokio::time::sleep(Duration::from_secs(36)).await;
    assert_eq!(store.len(), 0, "pruned by the periodic task");
    assert_eq!(store.stats().pruned_total, 3);
    events.shutdown().await;
}

// ---- queries ----

/// 12 events: types user/system/error in turn, timestamps 1000, 2000, ..., two flows.
fn sample(store: &EventStore) -> (CorrelationId, CorrelationId) {
    let (a, b) = (CorrelationId::new(), CorrelationId::new());
    for n in 0..12u32 {
        let t = ["user", "system", "error"][n as usize % 3];
        let flow = if n % 2 == 0 { a } else { b };
        store
            .append(&at(ev(t, n).correlated(flow), u64::from(n + 1) * 1000))
            .unwrap();
    }
    (a, b)
}

fn us(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(t)
}

#[test]
fn queries_by_type_time_correlation_with_limit_offset_and_order() {
    let store = EventStore::in_memory(StoreOptions::default());
    let (a, b) = sample(&store);
    let q = |q: Query| ids(&store.query(&q));

    assert_eq!(q(Query::new()), (0..12).collect::<Vec<_>>());
    assert_eq!(q(Query::new().event_type("user")), vec![0, 3, 6, 9]);
    assert_eq!(q(Query::new().event_type("nothing")), Vec::<u32>::new());
    assert_eq!(q(Query::new().correlation(a)), vec![0, 2, 4, 6, 8, 10]);
    assert_eq!(
        q(Query::new().correlation(CorrelationId::new())),
        Vec::<u32>::new()
    );
    // [3000, 7000) holds events 2..=5.
    assert_eq!(
        q(Query::new().between(us(3000), us(7000))),
        vec![2, 3, 4, 5]
    );
    assert_eq!(q(Query::new().since(us(11_000))), vec![10, 11]);
    assert_eq!(q(Query::new().until(us(2000))), vec![0]);
    // Limit, offset and order.
    assert_eq!(q(Query::new().limit(3)), vec![0, 1, 2]);
    assert_eq!(q(Query::new().offset(10)), vec![10, 11]);
    assert_eq!(q(Query::new().offset(4).limit(2)), vec![4, 5]);
    assert_eq!(
        q(Query::new().order(Order::Descending).limit(3)),
        vec![11, 10, 9]
    );
    assert_eq!(
        q(Query::new().order(Order::Descending).offset(1).limit(2)),
        vec![10, 9]
    );
    assert_eq!(q(Query::new().offset(50)), Vec::<u32>::new());
    assert_eq!(q(Query::new().limit(0)), Vec::<u32>::new());
    // Combinations.
    assert_eq!(
        q(Query::new().event_type("user").correlation(b)),
        vec![3, 9]
    );
    assert_eq!(
        q(Query::new()
            .correlation(a)
            .since(us(4000))
            .order(Order::Descending)
            .limit(2)),
        vec![10, 8]
    );
    assert_eq!(
        q(Query::new()
            .event_type("error")
            .between(us(1), us(9000))
            .offset(1)),
        vec![5]
    );
    // By id.
    let third = &store.query(&Query::new().offset(2).limit(1))[0];
    assert_eq!(store.get(third.id).as_ref(), Some(third));
}

#[test]
fn chain_returns_the_flow_in_causal_order() {
    let store = EventStore::in_memory(StoreOptions::default());
    let flow = CorrelationId::new();
    let root = at(ev("user", 0).correlated(flow), 100);
    let a = at(ev("system", 1).caused_by(&root), 300);
    let b = at(ev("system", 2).caused_by(&root), 200);
    let a1 = at(ev("error", 3).caused_by(&a), 250); // earlier clock than its parent
    let b1 = at(ev("user", 4).caused_by(&b), 400);
    let other = at(ev("user", 5), 150); // another flow
                                        // Stored out of causal order.
    for e in [&b1, &a1, &other, &a, &b, &root] {
        store.append(e).unwrap();
    }
    let chain = store.chain(flow);
    assert_eq!(ids(&chain), vec![0, 2, 1, 3, 4]);
    assert!(store.chain(CorrelationId::new()).is_empty());
}

#[test]
fn statistics_count_types_and_name_oldest_and_newest() {
    let store = EventStore::in_memory(StoreOptions {
        max_events: 10,
        max_age: None,
        ..StoreOptions::default()
    });
    sample(&store);
    let s = store.stats();
    assert_eq!(s.stored, 10);
    assert_eq!(s.appended_total, 12);
    assert_eq!(s.pruned_total, 2);
    assert_eq!(s.by_type["user"], 3); // 3, 6, 9
    assert_eq!(s.by_type["system"], 3); // 4, 7, 10
    assert_eq!(s.by_type["error"], 4); // 2, 5, 8, 11
    assert_eq!(s.oldest.unwrap().1, us(3000));
    assert_eq!(s.newest.unwrap().1, us(12_000));
    assert_eq!(s.segments, 0);
    assert!(!store.is_durable());
}

// ---- durable mode ----

#[test]
fn reopening_restores_every_acknowledged_event_under_each_fsync_policy() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Batch {
            max_records: 7,
            max_delay: Duration::from_millis(50),
        },
        FsyncPolicy::Never,
    ] {
        let dir = TempDir::new("reopen");
        let (store, report) = EventStore::open(dir.path(), durable(policy)).unwrap();
        assert!(report.is_clean());
        assert_eq!((report.segments, report.restored), (0, 0));
        let flow = CorrelationId::new();
        let mut written = Vec::new();
        for n in 0..50 {
            let e = ev(["user", "orders"][n as usize % 2], n).correlated(flow);
            store.append(&e).unwrap();
            written.push(e);
        }
        drop(store); // no explicit sync: acknowledged means written to the OS
        let (store, report) = EventStore::open(dir.path(), durable(policy)).unwrap();
        assert!(report.is_clean(), "{policy:?}: {report:?}");
        assert_eq!(report.restored, 50);
        assert_eq!(store.query(&Query::new()), written, "{policy:?}");
        assert_eq!(store.chain(flow).len(), 50);
        assert!(store.is_durable());
    }
}

#[test]
fn segments_roll_at_the_size_and_pruned_segments_are_deleted() {
    let dir = TempDir::new("roll");
    let opts = StoreOptions {
        segment_bytes: 1024,
        max_events: 40,
        ..durable(FsyncPolicy::Never)
    };
    let (store, _) = EventStore::open(dir.path(), opts.clone()).unwrap();
    for n in 0..30 {
        store.append(&ev("user", n)).unwrap();
    }
    let files = segments(dir.path());
    assert!(files.len() >= 3, "{} segments", files.len());
    assert!(files[..files.len() - 1].iter().all(|f| file_len(f) <= 1024));
    assert_eq!(store.stats().segments, files.len());
    for n in 30..200 {
        store.append(&ev("user", n)).unwrap();
    }
    let per_segment = 30 / (files.len() - 1); // at least this many fit in one
    let files = segments(dir.path());
    // Without deletion 200 events would fill about 200 / per_segment files (28 or so);
    // only those holding the 40 retained events remain: a partial first one, full ones,
    // a partial active one (record sizes vary by a few bytes, so allow one more).
    assert!(
        files.len() <= 40 / per_segment + 3,
        "{} segments of {per_segment}",
        files.len()
    );
    assert!(!files[0].ends_with("events-00000000000000000000.seg"));
    drop(store);
    let (store, report) = EventStore::open(dir.path(), opts).unwrap();
    assert!(report.is_clean());
    assert_eq!(
        ids(&store.query(&Query::new())),
        (160..200).collect::<Vec<_>>()
    );
    assert!(
        report.pruned_on_open < 40,
        "only events of partly pruned segments"
    );
}

#[test]
fn an_oversized_event_is_refused_and_nothing_is_stored() {
    let dir = TempDir::new("large");
    let opts = StoreOptions {
        max_record_bytes: 256,
        ..durable(FsyncPolicy::Always)
    };
    let (store, _) = EventStore::open(dir.path(), opts.clone()).unwrap();
    store.append(&ev("user", 1)).unwrap();
    let big = Event::new("user", &vec![7u8; 1000]).unwrap();
    let e = store.append(&big).unwrap_err();
    assert!(matches!(e, Error::EventTooLarge { max: 256, .. }));
    assert_eq!(e.code(), 1101);
    assert_eq!(store.len(), 1);
    store.append(&ev("user", 2)).unwrap();
    drop(store);
    let (store, report) = EventStore::open(dir.path(), opts).unwrap();
    assert!(report.is_clean());
    assert_eq!(ids(&store.query(&Query::new())), vec![1, 2]);
}

/// Writes `n` events into a fresh store; returns the directory, the events, and the last
/// segment's length before the last record.
fn written(name: &str, n: u32) -> (TempDir, Vec<Event>, u64) {
    let dir = TempDir::new(name);
    let (store, _) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    let events: Vec<Event> = (0..n).map(|i| ev("user", i)).collect();
    for e in &events[..n as usize - 1] {
        store.append(e).unwrap();
    }
    let before_last = file_len(segments(dir.path()).last().unwrap());
    store.append(&events[n as usize - 1]).unwrap();
    (dir, events, before_last)
}

#[test]
fn a_torn_last_record_is_truncated_reported_and_appends_continue() {
    // Inside the record header, at its end, just after, inside the body, one byte short.
    let cuts: [fn(u64) -> u64; 7] = [
        |_| 1,
        |_| 4,
        |_| 7,
        |_| 8,
        |_| 9,
        |len| len / 2,
        |len| len - 1,
    ];
    for cut in cuts {
        let (dir, events, start) = written("torn", 20);
        let record_len = file_len(segments(dir.path()).last().unwrap()) - start;
        let cut = cut(record_len);
        let seg = segments(dir.path()).pop().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(start + cut).unwrap();
        drop(f);

        let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
        assert_eq!(report.problems.len(), 1, "cut {cut}: {report:?}");
        let p = &report.problems[0];
        assert_eq!(
            (p.kind, p.action, p.offset, p.bytes),
            (DamageKind::TornTail, Recovery::Truncated, start, cut),
            "cut {cut}"
        );
        assert_eq!(p.segment, seg);
        assert_eq!(store.query(&Query::new()), events[..19], "cut {cut}");
        assert_eq!(file_len(&seg), start, "the torn bytes are gone");

        // Appends continue after recovery, and the next open is clean.
        let more = ev("user", 100);
        store.append(&more).unwrap();
        drop(store);
        let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
        assert!(report.is_clean(), "cut {cut}: {report:?}");
        let mut expect = events[..19].to_vec();
        expect.push(more);
        assert_eq!(store.query(&Query::new()), expect);
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_is_detected_and_truncated() {
    let (dir, events, start) = written("flip-last", 10);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let at_body = start as usize + 8 + 5;
    data[at_body] ^= 0x40;
    std::fs::write(&seg, &data).unwrap();

    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    assert_eq!(report.problems.len(), 1);
    let p = &report.problems[0];
    assert_eq!(
        (p.kind, p.action, p.offset),
        (DamageKind::BadChecksum, Recovery::Truncated, start)
    );
    assert_eq!(store.query(&Query::new()), events[..9]);
    store.append(&events[9]).unwrap(); // written again, now intact
    drop(store);
    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    assert!(report.is_clean());
    assert_eq!(store.query(&Query::new()), events);
}

#[test]
fn corruption_in_the_middle_of_a_segment_is_skipped_and_reported_on_every_open() {
    let dir = TempDir::new("flip-middle");
    let (store, _) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    let events: Vec<Event> = (0..10).map(|i| ev("user", i)).collect();
    let seg = segments(dir.path()).pop().unwrap();
    let mut starts = Vec::new();
    for e in &events {
        starts.push(file_len(&seg));
        store.append(e).unwrap();
    }
    drop(store);
    let mut data = std::fs::read(&seg).unwrap();
    data[starts[4] as usize + 20] ^= 0x01; // inside the body of event 4
    std::fs::write(&seg, &data).unwrap();

    for round in 0..2 {
        let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
        assert_eq!(report.problems.len(), 1, "round {round}");
        let p = &report.problems[0];
        assert_eq!(
            (p.kind, p.action, p.offset, p.bytes),
            (
                DamageKind::BadChecksum,
                Recovery::Skipped,
                starts[4],
                starts[5] - starts[4]
            )
        );
        let kept: Vec<Event> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(_, e)| e.clone())
            .collect();
        let mut expect = kept;
        if round == 1 {
            expect.push(ev_fixed());
        }
        let got = store.query(&Query::new());
        assert_eq!(got.len(), expect.len());
        assert_eq!(got[..9], expect[..9]);
        if round == 0 {
            store.append(&ev_fixed()).unwrap(); // after the valid tail
        } else {
            assert_eq!(got[9], ev_fixed());
        }
    }
}

/// A deterministic event (fixed id and times) so two rounds can compare it.
fn ev_fixed() -> Event {
    let mut e = ev("user", 999);
    e.id = foundation_core::events::EventId(uuid::Uuid::from_u128(1));
    e.timestamp_us = 42;
    e.monotonic_ns = 42;
    e.correlation_id = CorrelationId(uuid::Uuid::from_u128(2));
    e
}

#[test]
fn damaged_segment_headers_are_reported() {
    let dir = TempDir::new("header");
    let (store, _) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    store.append(&ev("user", 1)).unwrap();
    drop(store);
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    data[0] = b'X';
    std::fs::write(&seg, &data).unwrap();
    // A crash right after creating the next segment: a partial header.
    let next = dir.path().join("events-00000000000000000001.seg");
    std::fs::write(&next, b"FEV").unwrap();

    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    let kinds: Vec<(DamageKind, Recovery)> =
        report.problems.iter().map(|p| (p.kind, p.action)).collect();
    assert_eq!(
        kinds,
        vec![
            (DamageKind::BadHeader, Recovery::Skipped),
            (DamageKind::TornTail, Recovery::Truncated)
        ]
    );
    assert!(store.is_empty());
    store.append(&ev("user", 2)).unwrap();
    drop(store);
    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    assert_eq!(
        report.problems.len(),
        1,
        "the foreign header stays reported"
    );
    assert_eq!(ids(&store.query(&Query::new())), vec![2]);
}

#[test]
fn corrupt_records_are_counted_in_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let (dir, _, start) = written("metric", 5);
    let seg = segments(dir.path()).pop().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(start + 3).unwrap();
    drop(f);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
        assert_eq!(report.problems.len(), 1);
        assert_eq!(store.len(), 4);
    });
    let corrupt = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| k.key().name() == "foundation_events_store_corrupt_records_total")
        .map(|(.., v)| v);
    assert!(matches!(corrupt, Some(DebugValue::Counter(1))));
}

#[tokio::test]
async fn the_service_stores_durably_and_a_restart_restores_the_flow() {
    let dir = TempDir::new("service");
    let flow = CorrelationId::new();
    {
        let (store, _) = EventStore::open(dir.path(), durable(FsyncPolicy::Always)).unwrap();
        let events = Events::with_store(EventsSettings::default(), store).unwrap();
        let first = Event::new("user", &0u32).unwrap().correlated(flow);
        let second = Event::new("orders", &1u32).unwrap().caused_by(&first);
        events.emit(first).await.unwrap();
        events.emit(second).await.unwrap();
        events.shutdown().await;
    }
    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Always)).unwrap();
    assert!(report.is_clean());
    assert_eq!(ids(&store.chain(flow)), vec![0, 1]);
}

/// Many concurrent emits on a durable store that syncs every record, on a single-thread
/// runtime: the writer thread takes them in groups (one sync per group) while the
/// runtime keeps running other tasks; every event is stored, in the store and on disk.
#[tokio::test(flavor = "current_thread")]
async fn durable_appends_are_written_off_the_runtime_in_groups() {
    let dir = TempDir::new("groups");
    {
        let (store, _) = EventStore::open(dir.path(), durable(FsyncPolicy::Always)).unwrap();
        let events = Events::with_store(EventsSettings::default(), store.clone()).unwrap();
        let ticks = std::sync::Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let emits: Vec<_> = (0..200)
            .map(|i| {
                let events = events.clone();
                tokio::spawn(async move { events.emit(ev("user", i)).await })
            })
            .collect();
        for e in emits {
            e.await.unwrap().unwrap();
        }
        assert!(
            ticks.load(Ordering::Relaxed) > 0,
            "the runtime ran other tasks while records were written"
        );
        ticker.abort();
        assert_eq!(store.len(), 200);
        events.shutdown().await;
    }
    let (store, report) = EventStore::open(dir.path(), durable(FsyncPolicy::Never)).unwrap();
    assert_eq!(report.restored, 200);
    assert_eq!(store.len(), 200);
}
