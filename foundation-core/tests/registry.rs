//! Behaviour of `foundation_core::registry`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foundation_core::registry::{Health, Metadata, Registry};
use foundation_core::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn duplicate_name_is_rejected_and_first_entry_kept() {
    let registry = Registry::new();
    let _first = registry.register("db", 1u32, Metadata::new()).unwrap();
    let err = registry
        .register("db", 2u32, Metadata::new())
        .expect_err("second registration must fail");
    assert!(matches!(err, Error::AlreadyRegistered { ref name } if name == "db"));
    assert_eq!(registry.lookup::<u32>("db").unwrap(), 1);
    assert_eq!(registry.len(), 1);
}

#[tokio::test]
async fn lookup_returns_typed_handle_and_reports_mismatch_and_absence() {
    let registry = Registry::new();
    let (tx, mut rx) = mpsc::channel::<&'static str>(1);
    let _reg = registry.register("queue", tx, Metadata::new()).unwrap();

    let handle = registry
        .lookup::<mpsc::Sender<&'static str>>("queue")
        .unwrap();
    handle.send("hello").await.unwrap();
    assert_eq!(rx.recv().await, Some("hello"));

    match registry.lookup::<String>("queue") {
        Err(Error::HandleTypeMismatch {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, "queue");
            assert!(expected.contains("String"), "{expected}");
            assert!(actual.contains("Sender"), "{actual}");
        }
        other => panic!("expected HandleTypeMismatch, got {other:?}"),
    }
    assert!(matches!(
        registry.lookup::<u32>("nope"),
        Err(Error::ServiceNotFound { ref name }) if name == "nope"
    ));
}

#[tokio::test]
async fn list_shows_names_metadata_and_health_sorted() {
    let registry = Registry::new();
    let _b = registry
        .register("b-cache", (), meta(&[("zone", "eu")]))
        .unwrap();
    let _a = registry
        .register_with_health_check("a-db", (), meta(&[("version", "3")]), || async { Ok(()) })
        .unwrap();

    let list = registry.list();
    let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a-db", "b-cache"]);
    assert_eq!(list[0].metadata, meta(&[("version", "3")]));
    assert_eq!(list[1].metadata, meta(&[("zone", "eu")]));
    assert!(list[0].has_health_check);
    assert!(!list[1].has_health_check);
    assert_eq!(list[0].health, Health::Unknown);

    registry
        .check_health("a-db", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(registry.list()[0].health, Health::Healthy { .. }));
    assert_eq!(
        registry.metadata("b-cache").unwrap(),
        meta(&[("zone", "eu")])
    );
}

#[tokio::test]
async fn unregister_removes_and_reports_unknown_names() {
    let registry = Registry::new();
    let reg = registry.register("svc", 5u8, BTreeMap::new()).unwrap();
    registry.unregister("svc").unwrap();
    assert!(!registry.contains("svc"));
    assert!(!reg.is_registered());
    assert!(matches!(
        registry.unregister("svc"),
        Err(Error::ServiceNotFound { .. })
    ));
    // The name is free again.
    let _again = registry.register("svc", 6u8, BTreeMap::new()).unwrap();
    drop(reg); // the stale guard must not remove the new entry
    assert_eq!(registry.lookup::<u8>("svc").unwrap(), 6);
}

#[tokio::test(start_paused = true)]
async fn wait_for_resolves_at_the_moment_of_registration() {
    let registry = Registry::new();
    let start = Instant::now();
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let h = registry
                .wait_for::<u64>("late", Duration::from_secs(10))
                .await;
            (h, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let _reg = registry.register("other", 0u64, Metadata::new()).unwrap();
    tokio::task::yield_now().await;
    assert!(
        !waiter.is_finished(),
        "another name must not satisfy the wait"
    );
    let _reg = registry.register("late", 99u64, Metadata::new()).unwrap();
    let (h, elapsed) = waiter.await.unwrap();
    assert_eq!(h.unwrap(), 99);
    assert_eq!(elapsed, Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn wait_for_returns_at_once_if_registered_and_times_out_otherwise() {
    let registry = Registry::new();
    let _reg = registry.register("here", 1i32, Metadata::new()).unwrap();
    assert_eq!(
        registry
            .wait_for::<i32>("here", Duration::ZERO)
            .await
            .unwrap(),
        1
    );

    let start = Instant::now();
    let err = registry
        .wait_for::<i32>("never", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { after, .. } if after == Duration::from_secs(2)));
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    let err = registry
        .wait_for::<String>("here", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HandleTypeMismatch { .. }));
}

#[tokio::test(start_paused = true)]
async fn health_check_failure_and_timeout_make_the_service_unhealthy() {
    let registry = Registry::new();
    let _bad = registry
        .register_with_health_check("bad", (), Metadata::new(), || async {
            Err("disk full".to_string())
        })
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let _slow = {
        let calls = calls.clone();
        registry
            .register_with_health_check("slow", (), Metadata::new(), move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                }
            })
            .unwrap()
    };
    let _plain = registry.register("plain", (), Metadata::new()).unwrap();

    match registry.check_health("bad", Duration::from_secs(1)).await {
        Err(Error::Unhealthy { name, reason }) => {
            assert_eq!(name, "bad");
            assert_eq!(reason, "disk full");
        }
        other => panic!("expected Unhealthy, got {other:?}"),
    }

    let start = Instant::now();
    match registry
        .check_health("slow", Duration::from_millis(100))
        .await
    {
        Err(Error::Unhealthy { reason, .. }) => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("expected Unhealthy on timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    registry
        .check_health("plain", Duration::from_millis(1))
        .await
        .unwrap();
    assert!(matches!(
        registry
            .check_health("absent", Duration::from_millis(1))
            .await,
        Err(Error::ServiceNotFound { .. })
    ));

    let health: BTreeMap<_, _> = registry
        .list()
        .into_iter()
        .map(|s| (s.name, s.health))
        .collect();
    assert!(matches!(&health["bad"], Health::Unhealthy { reason, .. } if reason == "disk full"));
    assert!(matches!(&health["slow"], Health::Unhealthy { .. }));
    assert!(matches!(&health["plain"], Health::Healthy { .. }));
}

#[tokio::test]
async fn entry_disappears_when_its_task_returns() {
    let registry = Registry::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let reg = registry.register("worker", 1u8, Metadata::new()).unwrap();
    let task = tokio::spawn(async move {
        let _reg = reg;
        let _ = stop_rx.await;
    });
    tokio::task::yield_now().await;
    assert!(registry.contains("worker"));
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert!(!registry.contains("worker"));
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn entry_disappears_when_its_task_is_aborted_or_panics() {
    let registry = Registry::new();

    let reg = registry.register("aborted", 1u8, Metadata::new()).unwrap();
    let task = tokio::spawn(async move {
        let _reg = reg;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    assert!(registry.contains("aborted"));
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!registry.contains("aborted"));

    let reg = registry.register("panicky", 1u8, Metadata::new()).unwrap();
    let task = tokio::spawn(async move {
        let _reg = reg;
        tokio::task::yield_now().await;
        panic!("service crashed");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(!registry.contains("panicky"));
    assert!(registry.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_name_admit_exactly_one() {
    let registry = Registry::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32u32)
        .map(|i| {
            let registry = registry.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                registry.register("leader", i, Metadata::new())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(reg) => winners.push(reg),
            Err(Error::AlreadyRegistered { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert!(winners[0].is_registered());
}

/// A weak entry hands out the handle while its upgrade succeeds and reads as absent once
/// the service is gone; it never keeps the service alive.
#[test]
fn weak_entries_do_not_keep_the_service_alive() {
    let registry = Registry::new();
    let service = Arc::new(41u32);
    let weak = Arc::downgrade(&service);
    let _registration = registry
        .register_weak("svc", move || weak.upgrade(), BTreeMap::new())
        .unwrap();
    let got: Arc<u32> = registry.lookup("svc").unwrap();
    assert_eq!(*got, 41);
    assert!(matches!(
        registry.lookup::<String>("svc"),
        Err(Error::HandleTypeMismatch { .. })
    ));
    drop(got);
    drop(service);
    assert!(matches!(
        registry.lookup::<Arc<u32>>("svc"),
        Err(Error::ServiceNotFound { .. })
    ));
    assert!(
        registry.contains("svc"),
        "the entry stays until its guard drops"
    );
}
