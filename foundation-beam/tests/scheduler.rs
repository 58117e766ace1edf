//! Behaviour of `foundation_beam::scheduler`: order, yields, fairness, panics,
//! cancellation, metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use foundation_beam::core::budget::Budget;
use foundation_beam::scheduler::{
    cpu_intensive, cpu_intensive_with, spread, spread_with, workers, WorkError,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

#[tokio::test(flavor = "current_thread")]
async fn cpu_intensive_returns_results_in_order() {
    let expected: Vec<u32> = (1..5_000u64).map(collatz_steps).collect();
    let got = cpu_intensive(1..5_000u64, collatz_steps).await.unwrap();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_returns_results_in_order_for_any_part_count() {
    let items: Vec<u64> = (1..10_001).collect();
    let expected: Vec<u32> = items.iter().copied().map(collatz_steps).collect();
    for parts in [0, 1, 2, 3, 7, 64, 20_000] {
        let got = spread_with(items.clone(), parts, Budget::new(100), collatz_steps)
            .await
            .unwrap();
        assert_eq!(got, expected, "parts = {parts}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reports_the_runtime_worker_count() {
    assert_eq!(workers(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn yields_once_per_slice() {
    let mut budget = Budget::new(100);
    cpu_intensive_with(0..1_050u32, &mut budget, |x| x + 1)
        .await
        .unwrap();
    assert_eq!(budget.yields(), 10);

    // The same budget carries over: 50 units were left over, 50 more complete a slice.
    cpu_intensive_with(0..50u32, &mut budget, |x| x + 1)
        .await
        .unwrap();
    assert_eq!(budget.yields(), 11);

    let mut every_item = Budget::new(1);
    cpu_intensive_with(0..37u32, &mut every_item, |x| x)
        .await
        .unwrap();
    assert_eq!(every_item.yields(), 37);
}

/// On a current-thread runtime another task can only run when the computation yields:
/// the spawned task gets to run in the middle of the job, not after it.
#[tokio::test(flavor = "current_thread")]
async fn other_tasks_run_between_slices() {
    let flag = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let flag = flag.clone();
        async move { flag.store(true, Ordering::SeqCst) }
    });
    let mut budget = Budget::new(10);
    let seen = cpu_intensive_with(0..1_000u32, &mut budget, |_| flag.load(Ordering::SeqCst))
        .await
        .unwrap();
    let first_seen = seen.iter().position(|s| *s).expect("the other task ran");
    assert!(
        first_seen <= 10,
        "other task first ran at item {first_seen}"
    );
    other.await.unwrap();

    // Contrast: without yielding, the other task cannot run during the loop.
    let flag2 = Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let flag2 = flag2.clone();
        async move { flag2.store(true, Ordering::SeqCst) }
    });
    let seen: Vec<bool> = (0..1_000).map(|_| flag2.load(Ordering::SeqCst)).collect();
    assert!(seen.iter().all(|s| !s));
    other.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn empty_input_gives_empty_output() {
    let mut budget = Budget::new(3);
    let out: Vec<u32> = cpu_intensive_with(Vec::<u32>::new(), &mut budget, |x| x)
        .await
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(budget.yields(), 0);
    let out: Vec<u32> = spread(Vec::<u32>::new(), 0, |x| x).await.unwrap();
    assert!(out.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn panicking_item_is_an_error_and_stops_the_job() {
    let done = AtomicUsize::new(0);
    let err = cpu_intensive(0..100u32, |x| {
        if x == 42 {
            panic!("bad item {x}");
        }
        done.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap_err();
    match err {
        WorkError::Panicked { index, message } => {
            assert_eq!(index, 42);
            assert_eq!(message, "bad item 42");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(done.load(Ordering::SeqCst), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_item_in_a_part_names_its_global_index() {
    let items: Vec<u32> = (0..1_000).collect();
    let err = spread_with(items, 4, Budget::new(16), |x| {
        assert!(x != 777, "item seven-seven-seven");
        x
    })
    .await
    .unwrap_err();
    match err {
        WorkError::Panicked { index, message } => {
            assert_eq!(index, 777);
            assert!(message.contains("seven-seven-seven"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

/// Dropping the future returned by `spread` aborts the parts: they stop processing and
/// drop their remaining items.
#[tokio::test(flavor = "current_thread")]
async fn dropping_spread_stops_its_parts() {
    const TOTAL: usize = 100_000;
    let marker = Arc::new(());
    let items: Vec<Arc<()>> = (0..TOTAL).map(|_| marker.clone()).collect();
    let processed = Arc::new(AtomicUsize::new(0));
    let mut job = Box::pin(spread_with(items, 4, Budget::new(50), {
        let processed = processed.clone();
        move |item: Arc<()>| {
            processed.fetch_add(1, Ordering::SeqCst);
            drop(item);
        }
    }));
    // Drive the job until the parts have made progress.
    while processed.load(Ordering::SeqCst) == 0 {
        tokio::select! {
            biased;
            _ = &mut job => panic!("job finished before it was dropped"),
            _ = tokio::task::yield_now() => {}
        }
    }
    drop(job);

    // Aborted parts are dropped at their next poll, together with their items.
    for _ in 0..1_000 {
        if Arc::strong_count(&marker) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(Arc::strong_count(&marker), 1, "parts still hold items");
    let stopped_at = processed.load(Ordering::SeqCst);
    assert!(stopped_at < TOTAL, "the job ran to completion");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(processed.load(Ordering::SeqCst), stopped_at);
}

#[tokio::test(flavor = "current_thread")]
async fn yields_and_units_are_counted_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    foundation_beam::scheduler::describe_metrics();

    let mut budget = Budget::new(10);
    cpu_intensive_with(0..105u32, &mut budget, |x| x)
        .await
        .unwrap();
    spread_with((0..40u32).collect(), 2, Budget::new(10), |x| x)
        .await
        .unwrap();

    let mut yields = None;
    let mut units = None;
    for (key, _, help, value) in snapshotter.snapshot().into_vec() {
        match (key.key().name(), value) {
            ("foundation_scheduler_yields_total", DebugValue::Counter(v)) => {
                assert!(help.is_some());
                yields = Some(v)
            }
            ("foundation_scheduler_units_total", DebugValue::Counter(v)) => {
                assert!(help.is_some());
                units = Some(v)
            }
            _ => {}
        }
    }
    // 105 items in slices of 10: 10 yields; 2 parts of 20 items: 2 yields each.
    assert_eq!(yields, Some(10 + 4));
    assert_eq!(units, Some(105 + 40));
}
