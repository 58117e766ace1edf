//! Behaviour of event streams and subscriptions: ordering, lanes, filters, overflow,
//! panicking handlers, and teardown in every order.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use foundation_core::events::{
    CorrelationId, Event, EventId, EventStore, Events, EventsSettings, Filter, StoreOptions,
    StreamOrder, StreamSettings, TryEmitError,
};
use foundation_core::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};

fn settings(workers: usize, inbox: usize, worker_capacity: usize) -> EventsSettings {
    EventsSettings {
        stream: StreamSettings {
            workers,
            inbox_capacity: inbox,
            worker_capacity,
            ..StreamSettings::default()
        },
        ..EventsSettings::default()
    }
}

fn service(s: EventsSettings) -> Events {
    Events::with_store(s, EventStore::in_memory(StoreOptions::default())).unwrap()
}

/// Yields until `cond` holds; panics (instead of hanging) if it never does.
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never became true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_flow_are_handled_in_emit_order() {
    const FLOWS: usize = 16;
    const PER_FLOW: u32 = 100;
    let events = service(settings(4, 64, 8));
    let (tx, mut rx) = mpsc::unbounded_channel::<(CorrelationId, u32)>();
    let _sub = events
        .subscribe(Filter::of_type("orders"), move |e: Event| {
            let tx = tx.clone();
            async move {
                // Uneven handler times so workers interleave.
                let n = e.payload::<u32>().unwrap();
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                tx.send((e.correlation_id, n)).unwrap();
            }
        })
        .unwrap();
    let flows: Vec<CorrelationId> = (0..FLOWS).map(|_| CorrelationId::new()).collect();
    for n in 0..PER_FLOW {
        for f in &flows {
            events
                .emit(Event::new("orders", &n).unwrap().correlated(*f))
                .await
                .unwrap();
        }
    }
    let mut seen: HashMap<CorrelationId, Vec<u32>> = HashMap::new();
    for _ in 0..FLOWS * PER_FLOW as usize {
        let (c, n) = rx.recv().await.unwrap();
        seen.entry(c).or_default().push(n);
    }
    for f in &flows {
        assert_eq!(seen[f], (0..PER_FLOW).collect::<Vec<_>>(), "flow {f}");
    }
    let stats = events.stream_stats("orders").unwrap();
    assert_eq!(stats.dispatched_normal, (FLOWS * PER_FLOW as usize) as u64);
    assert_eq!((stats.queued_normal, stats.dropped), (0, 0));
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_definable_per_stream() {
    let mut s = settings(4, 64, 8);
    s.streams.insert(
        "ledger".into(),
        StreamSettings {
            order: StreamOrder::Total,
            ..s.stream.clone()
        },
    );
    s.streams.insert(
        "metrics".into(),
        StreamSettings {
            order: StreamOrder::Unordered,
            ..s.stream.clone()
        },
    );
    let events = service(s);
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
    let _sub = events
        .subscribe(
            Filter::of_type("ledger").or_type("metrics"),
            move |e: Event| {
                let tx = tx.clone();
                async move {
                    let n = e.payload::<u32>().unwrap();
                    if n % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    tx.send((e.event_type.to_string(), n)).unwrap();
                }
            },
        )
        .unwrap();
    // Every event in its own flow: only Total keeps them in order.
    for n in 0..300u32 {
        events
            .emit(Event::new("ledger", &n).unwrap())
            .await
            .unwrap();
        events
            .emit(Event::new("metrics", &n).unwrap())
            .await
            .unwrap();
    }
    let (mut ledger, mut metrics) = (Vec::new(), Vec::new());
    for _ in 0..600 {
        let (t, n) = rx.recv().await.unwrap();
        if t == "ledger" {
            ledger.push(n)
        } else {
            metrics.push(n)
        }
    }
    assert_eq!(ledger, (0..300).collect::<Vec<_>>(), "total order");
    assert_eq!(events.stream_stats("ledger").unwrap().workers, 1);
    assert_eq!(events.stream_stats("metrics").unwrap().workers, 4);
    metrics.sort_unstable();
    assert_eq!(
        metrics,
        (0..300).collect::<Vec<_>>(),
        "unordered: all handled once"
    );
    events.shutdown().await;
}

/// Runs the lane scenario: one worker, blocked in a handler on `n0`; six normal events
/// fill the worker lane (2), the parked slot (1) and part of the inbox; then `last` is
/// emitted (urgent or not) and the handler released. Returns the handling order.
async fn lane_scenario(last_is_urgent: bool) -> Vec<String> {
    let events = service(settings(1, 4, 2));
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<String>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started = parking_lot::Mutex::new(Some(started_tx));
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let _sub = events
        .subscribe(Filter::of_type("user"), move |e: Event| {
            let label = e.payload::<String>().unwrap();
            let order_tx = order_tx.clone();
            let started = started.lock().take();
            let g = g.clone();
            async move {
                if let Some(s) = started {
                    s.send(()).unwrap();
                    let _ = g.acquire().await.unwrap();
                }
                order_tx.send(label).unwrap();
            }
        })
        .unwrap();
    events
        .emit(Event::new("user", &"n0").unwrap())
        .await
        .unwrap();
    started_rx.await.unwrap();
    for i in 1..=6 {
        events
            .emit(Event::new("user", &format!("n{i}")).unwrap())
            .await
            .unwrap();
    }
    // The dispatcher has filled the worker's normal lane and parked one more.
    until(|| events.stream_stats("user").unwrap().at_workers_normal == 3).await;
    let last = Event::new("user", &"last").unwrap();
    let last = if last_is_urgent { last.urgent() } else { last };
    events.emit(last).await.unwrap();
    if last_is_urgent {
        // It overtook the parked normal event at the dispatcher.
        until(|| events.stream_stats("user").unwrap().at_workers_urgent == 1).await;
    }
    gate.add_permits(1);
    let mut order = Vec::new();
    for _ in 0..8 {
        order.push(order_rx.recv().await.unwrap());
    }
    events.shutdown().await;
    order
}

#[tokio::test]
async fn urgent_event_is_handled_before_queued_normal_events() {
    let order = lane_scenario(true).await;
    assert_eq!(order, ["n0", "last", "n1", "n2", "n3", "n4", "n5", "n6"]);
}

#[tokio::test]
async fn without_the_urgent_lane_the_same_event_waits_its_turn() {
    // The contrast that shows the test above can fail.
    let order = lane_scenario(false).await;
    assert_eq!(order, ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_type_correlation_predicate_and_combinations() {
    let events = service(EventsSettings::default());
    let flow = CorrelationId::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, EventId)>();
    let sub = |name: &'static str, f: Filter| {
        let tx = tx.clone();
        events
            .subscribe(f, move |e: Event| {
                let tx = tx.clone();
                async move { tx.send((name, e.id)).unwrap() }
            })
            .unwrap()
    };
    let big = |e: &Event| e.payload::<u32>().is_ok_and(|n| n >= 100);
    let _subs = vec![
        sub("user", Filter::of_type("user")),
        sub("user|error", Filter::of_type("user").or_type("error")),
        sub("flow", Filter::all().correlated(flow)),
        sub("big", Filter::all().when(big)),
        sub("user&flow", Filter::of_type("user").correlated(flow)),
        sub("user&big", Filter::of_type("user").when(big)),
        sub("flow&big&odd", {
            Filter::all()
                .correlated(flow)
                .when(big)
                .when(|e| e.payload::<u32>().is_ok_and(|n| n % 2 == 1))
        }),
        sub("custom", Filter::of_type("billing")),
        // Last, so it runs after the others on each worker: when it has seen every event,
        // every other subscriber has been offered every event.
        sub("all", Filter::all()),
    ];
    let inputs = [
        ("user", 1u32, true),
        ("user", 100, false),
        ("user", 101, true),
        ("error", 5, true),
        ("error", 200, false),
        ("system", 300, true),
        ("telemetry", 2, false),
        ("billing", 7, true),
        ("billing", 103, true),
    ];
    let mut expected: BTreeMap<&str, Vec<EventId>> = BTreeMap::new();
    for (t, n, in_flow) in inputs {
        let mut e = Event::new(t, &n).unwrap();
        if in_flow {
            e = e.correlated(flow);
        }
        let id = e.id;
        let is_big = n >= 100;
        let checks = [
            ("user", t == "user"),
            ("user|error", t == "user" || t == "error"),
            ("flow", in_flow),
            ("big", is_big),
            ("user&flow", t == "user" && in_flow),
            ("user&big", t == "user" && is_big),
            ("flow&big&odd", in_flow && is_big && n % 2 == 1),
            ("custom", t == "billing"),
            ("all", true),
        ];
        for (name, pass) in checks {
            if pass {
                expected.entry(name).or_default().push(id);
            }
        }
        events.emit(e).await.unwrap();
    }
    let mut got: BTreeMap<&str, Vec<EventId>> = BTreeMap::new();
    let mut all = 0;
    while all < inputs.len() {
        let (name, id) = rx.recv().await.unwrap();
        all += usize::from(name == "all");
        got.entry(name).or_default().push(id);
    }
    for v in got.values_mut().chain(expected.values_mut()) {
        v.sort();
    }
    assert_eq!(got, expected);
    assert!(events.event_types().contains(&"billing".to_string()));
    events.shutdown().await;
}

#[tokio::test]
async fn an_invalid_type_in_a_filter_is_an_error() {
    let events = service(EventsSettings::default());
    let e = events
        .subscribe(Filter::of_type("no spaces"), |_e: Event| async {})
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    events.shutdown().await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let events = service(EventsSettings {
        max_streams: 5,
        ..EventsSettings::default()
    });
    events.emit(Event::new("a", &1).unwrap()).await.unwrap(); // 4 built-in + 1
    let e = events.emit(Event::new("b", &1).unwrap()).await.unwrap_err();
    assert!(matches!(e, Error::TooManyStreams { max: 5, .. }));
    assert_eq!(e.code(), 1100);
    let back = events.try_emit(Event::new("c", &1).unwrap()).unwrap_err();
    assert!(matches!(back, TryEmitError::Refused(_, _)));
    assert!(events.store().query(&Default::default()).len() == 1);
    events.shutdown().await;
}

#[tokio::test]
async fn try_emit_hands_the_event_back_when_the_lane_is_full_and_counts_it() {
    let events = service(settings(1, 2, 1));
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let _sub = events
        .subscribe(Filter::of_type("user"), move |_e: Event| {
            let g = g.clone();
            let h = h.clone();
            async move {
                let _ = g.acquire().await.unwrap();
                h.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let mut accepted = 0;
    let rejected = loop {
        match events.try_emit(Event::new("user", &accepted).unwrap()) {
            Ok(_) => accepted += 1,
            Err(TryEmitError::Full(e)) => break e,
            Err(other) => panic!("unexpected {other:?}"),
        }
        // Let the dispatcher move what it can, so the whole pipeline fills.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    // In the handler (1) + worker lane (1) + parked (1) + inbox (2).
    assert_eq!(accepted, 5);
    assert_eq!(
        rejected.payload::<i32>().unwrap(),
        5,
        "the same event comes back"
    );
    assert_eq!(events.store().len(), 5, "a refused event is not stored");
    let stats = events.stream_stats("user").unwrap();
    assert_eq!(
        (stats.dropped, stats.queued_normal),
        (1, 4),
        "one is in the handler"
    );
    gate.add_permits(5);
    until(|| handled.load(Ordering::SeqCst) == 5).await;
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_waits_for_room_instead_of_dropping() {
    let events = service(settings(2, 1, 1));
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let _sub = events
        .subscribe(Filter::of_type("user"), move |e: Event| {
            let tx = tx.clone();
            async move {
                tokio::task::yield_now().await;
                tx.send(e.payload::<u32>().unwrap()).unwrap();
            }
        })
        .unwrap();
    for i in 0..500u32 {
        events.emit(Event::new("user", &i).unwrap()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..500 {
        got.push(rx.recv().await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    assert_eq!(events.stream_stats("user").unwrap().dropped, 0);
    events.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_counted_and_the_stream_goes_on() {
    let events = service(settings(2, 64, 8));
    let _bad = events
        .subscribe(Filter::of_type("user"), |e: Event| async move {
            if e.payload::<u32>().unwrap() % 2 == 0 {
                panic!("handler bug (expected in this test)");
            }
        })
        .unwrap();
    let _bad_predicate = events
        .subscribe(
            Filter::of_type("user").when(|e| {
                assert!(e.payload::<u32>().unwrap() != 3, "predicate bug (expected)");
                false
            }),
            |_e: Event| async {},
        )
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let _good = events
        .subscribe(Filter::of_type("user"), move |e: Event| {
            let tx = tx.clone();
            async move { tx.send(e.payload::<u32>().unwrap()).unwrap() }
        })
        .unwrap();
    for i in 0..20u32 {
        events.emit(Event::new("user", &i).unwrap()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(rx.recv().await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(events.stream_stats("user").unwrap().handler_panics, 11);
    events.shutdown().await;
}

/// Floods a service with emitters and handlers that yield, then shuts it down; any
/// handler invocation that starts or continues after `shutdown` returned is a violation.
async fn shutdown_round(round: usize) {
    let events = service(settings(1 + round % 4, 8, 2));
    let after_shutdown = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for f in [
        Filter::all(),
        Filter::of_type("user"),
        Filter::of_type("custom").or_type("error"),
    ] {
        let (flag, bad, n) = (after_shutdown.clone(), violations.clone(), handled.clone());
        subs.push(
            events
                .subscribe(f, move |_e: Event| {
                    let (flag, bad, n) = (flag.clone(), bad.clone(), n.clone());
                    async move {
                        if flag.load(Ordering::SeqCst) {
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                        for _ in 0..3 {
                            tokio::task::yield_now().await;
                        }
                        if flag.load(Ordering::SeqCst) {
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .unwrap(),
        );
    }
    let mut emitters = Vec::new();
    for (i, t) in ["user", "custom", "error", "system"]
        .into_iter()
        .enumerate()
    {
        let events = events.clone();
        emitters.push((
            t,
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let e = Event::new(t, &n).unwrap();
                    let e = if (n + i as u64).is_multiple_of(5) {
                        e.urgent()
                    } else {
                        e
                    };
                    match events.emit(e).await {
                        Ok(_) => n += 1,
                        Err(Error::Shutdown { .. }) => return n,
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
            }),
        ));
    }
    until(|| handled.load(Ordering::SeqCst) >= 50).await;
    if round.is_multiple_of(2) {
        subs.pop(); // a handle dropped mid-stream, just before shutdown
    }
    events.shutdown().await;
    after_shutdown.store(true, Ordering::SeqCst);
    let handled_at_shutdown = handled.load(Ordering::SeqCst);
    let by_type = events.store().stats().by_type;
    for (t, e) in emitters {
        // Every acknowledged emit was stored; nothing else was.
        let n = e.await.unwrap();
        assert_eq!(by_type.get(t).copied().unwrap_or(0) as u64, n, "{t}");
    }
    for _ in 0..2_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0, "round {round}");
    assert_eq!(handled.load(Ordering::SeqCst), handled_at_shutdown);
    assert!(events.emit(Event::new("user", &0).unwrap()).await.is_err());
    assert!(matches!(
        events.try_emit(Event::new("user", &0).unwrap()),
        Err(TryEmitError::Shutdown(_))
    ));
    assert!(matches!(
        events.subscribe(Filter::all(), |_e: Event| async {}),
        Err(Error::Shutdown { .. })
    ));
    events.shutdown().await; // idempotent
    drop(subs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_runs_after_shutdown_returns_multi_thread() {
    for round in 0..12 {
        shutdown_round(round).await;
    }
}

#[tokio::test]
async fn no_handler_runs_after_shutdown_returns_current_thread() {
    for round in 0..12 {
        shutdown_round(round).await;
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_a_handler_that_outlives_the_timeout() {
    let events = service(EventsSettings {
        shutdown_timeout: std::time::Duration::from_secs(1),
        ..settings(1, 4, 2)
    });
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started = parking_lot::Mutex::new(Some(started_tx));
    let f = finished.clone();
    let _sub = events
        .subscribe(Filter::of_type("user"), move |_e: Event| {
            let f = f.clone();
            let s = started.lock().take();
            async move {
                if let Some(s) = s {
                    let _ = s.send(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                f.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    events.emit(Event::new("user", &1).unwrap()).await.unwrap();
    events.emit(Event::new("user", &2).unwrap()).await.unwrap();
    started_rx.await.unwrap();
    events.shutdown().await;
    tokio::time::advance(std::time::Duration::from_secs(7200)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the aborted handler never resumed"
    );
    assert_eq!(
        events.stream_stats("user").unwrap().dropped,
        1,
        "the queued one"
    );
}

#[tokio::test]
async fn unsubscribe_waits_for_a_running_invocation_and_stops_further_ones() {
    let events = service(settings(1, 64, 8));
    let detached = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (d, v, c) = (detached.clone(), violations.clone(), calls.clone());
    let sub = events
        .subscribe(Filter::all(), move |_e: Event| {
            let (d, v, c) = (d.clone(), v.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                if d.load(Ordering::SeqCst) {
                    v.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _other = events
        .subscribe(Filter::all(), move |_e: Event| {
            let tx = tx.clone();
            async move { tx.send(()).unwrap() }
        })
        .unwrap();
    for i in 0..20 {
        events.emit(Event::new("user", &i).unwrap()).await.unwrap();
    }
    until(|| calls.load(Ordering::SeqCst) >= 3).await;
    assert!(sub.is_active());
    sub.unsubscribe().await;
    detached.store(true, Ordering::SeqCst);
    let calls_at_detach = calls.load(Ordering::SeqCst);
    for i in 0..20 {
        events
            .emit(Event::new("system", &i).unwrap())
            .await
            .unwrap();
    }
    for _ in 0..40 {
        rx.recv().await.unwrap();
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert_eq!(calls.load(Ordering::SeqCst), calls_at_detach);
    assert!(calls_at_detach < 20);
    assert_eq!(events.stream_stats("user").unwrap().subscribers, 1);
    events.shutdown().await;
}

#[tokio::test]
async fn dropped_handles_stop_receiving_and_streams_created_later_get_wildcards() {
    let events = service(settings(2, 64, 8));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sub = events
        .subscribe(Filter::all(), move |_e: Event| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _last = events
        .subscribe(Filter::all(), move |_e: Event| {
            let tx = tx.clone();
            async move { tx.send(()).unwrap() }
        })
        .unwrap();
    // A type created after both subscriptions still reaches them.
    events.emit(Event::new("late", &1).unwrap()).await.unwrap();
    rx.recv().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    drop(sub);
    for i in 0..10 {
        events.emit(Event::new("late", &i).unwrap()).await.unwrap();
    }
    for _ in 0..10 {
        rx.recv().await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    events.shutdown().await;
}

#[test]
fn dropping_the_service_without_shutdown_in_any_order_does_not_panic() {
    for order in 0..4 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (events, sub) = rt.block_on(async {
            let events = service(settings(2, 16, 4));
            let c = calls.clone();
            let sub = events
                .subscribe(Filter::all(), move |_e: Event| {
                    let c = c.clone();
                    async move {
                        tokio::task::yield_now().await;
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .unwrap();
            for i in 0..30 {
                let _ = events.try_emit(Event::new("user", &i).unwrap());
                let _ = events.try_emit(Event::new("user", &i).unwrap().urgent());
            }
            until(|| calls.load(Ordering::SeqCst) > 0).await;
            (events, sub)
        });
        match order {
            0 => {
                // Service first, inside the runtime, events in flight.
                rt.block_on(async {
                    drop(events);
                    for _ in 0..1_000 {
                        tokio::task::yield_now().await;
                    }
                    let settled = calls.load(Ordering::SeqCst);
                    for _ in 0..1_000 {
                        tokio::task::yield_now().await;
                    }
                    assert_eq!(calls.load(Ordering::SeqCst), settled, "tasks stopped");
                    assert!(settled < 60, "queued events were not all handled");
                });
                drop(sub);
                drop(rt);
            }
            1 => {
                drop(sub);
                drop(events);
                drop(rt);
            }
            2 => {
                // Runtime first: its tasks are dropped, then the handles.
                drop(rt);
                drop(sub);
                drop(events);
            }
            _ => {
                drop(rt);
                drop(events);
                drop(sub);
            }
        }
    }
}

#[test]
fn events_service_needs_a_runtime() {
    let e = Events::new().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
}

#[test]
fn stream_and_drop_metrics_are_recorded() {
    let ((), seen) = common::with_metrics(&[], || async {
        let events = service(settings(1, 1, 1));
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let _sub = events
            .subscribe(Filter::of_type("user"), move |e: Event| {
                let tx = tx.clone();
                async move {
                    if e.payload::<u32>().unwrap() == 1 {
                        panic!("expected test panic");
                    }
                    tx.send(()).unwrap();
                }
            })
            .unwrap();
        events
            .emit(Event::new("user", &0u32).unwrap())
            .await
            .unwrap();
        events
            .emit(Event::new("user", &1u32).unwrap().urgent())
            .await
            .unwrap();
        events
            .emit(Event::new("user", &2u32).unwrap())
            .await
            .unwrap();
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        // Fill: the inbox holds one, the next is refused.
        let mut full = 0;
        for i in 10..20u32 {
            if events.try_emit(Event::new("user", &i).unwrap()).is_err() {
                full += 1;
            }
        }
        assert!(full > 0);
        events.shutdown().await;
    });
    let emitted = seen["foundation_events_emitted_total{type=user}"];
    let full = seen["foundation_events_dropped_total{type=user,reason=full}"];
    let at_shutdown = seen["foundation_events_dropped_total{type=user,reason=shutdown}"];
    let urgent = seen["foundation_events_dispatched_total{type=user,lane=urgent}"];
    let normal = seen["foundation_events_dispatched_total{type=user,lane=normal}"];
    assert_eq!(emitted + full, 13.0, "every try is emitted or refused");
    assert!(full >= 1.0);
    assert_eq!(urgent, 1.0);
    assert_eq!(urgent + normal + at_shutdown, emitted);
    assert_eq!(
        seen["foundation_events_handler_panics_total{type=user}"],
        1.0
    );
    assert_eq!(
        seen["foundation_events_queue_depth{type=user,lane=normal}"],
        0.0
    );
    assert_eq!(seen["foundation_events_stored{}"], emitted);
    assert_eq!(seen["foundation_events_emitted_total{type=system}"], 0.0);
}
