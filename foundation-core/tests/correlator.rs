//! Behaviour of event correlation through the `foundation-correlator` binary: the groups
//! on a crafted batch (given in any order), a 10k-event batch, bad input to the binary,
//! and a host that survives a correlator that crashes, hangs or answers garbage.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use foundation_core::events::{
    correlate_events, CorrelateOptions, CorrelateReply, CorrelationGroup, CorrelationId,
    Correlator, Event, EventId, GroupKind,
};
use foundation_core::port::child::{read_frame, write_frame, Incoming};
use foundation_core::Error;
use rand::seq::SliceRandom;

const BIN: &str = env!("CARGO_BIN_EXE_foundation-correlator");

fn ev(t: u64) -> Event {
    let mut e = Event::new("user", &t).unwrap();
    e.timestamp_us = t;
    e
}

struct Crafted {
    batch: Vec<Event>,
    expected: Vec<CorrelationGroup>,
}

/// Two flows with parent chains (one with a child stamped before its parent), five
/// lonely events in two time windows, and one lonely event far away.
fn crafted() -> Crafted {
    let flow_a = CorrelationId::new();
    let a1 = ev(1_000).correlated(flow_a);
    let a5 = ev(999).correlated(flow_a); // same flow, no parent
    let a4 = ev(1_003).caused_by(&a1); // sibling of a2, earlier
    let a2 = ev(1_005).caused_by(&a1);
    let a3 = ev(1_010).caused_by(&a2);
    let b1 = ev(2_000);
    let b2 = ev(1_990).caused_by(&b1); // clock skew: child stamped before its parent
    let x1 = ev(5_000);
    let x2 = ev(5_050);
    let x3 = ev(5_100); // exactly one window (100 µs) after x1: same group
    let x4 = ev(5_150); // beyond x1's window: starts the next group
    let x5 = ev(5_200);
    let x6 = ev(9_000); // alone
    let ids = |es: &[&Event]| es.iter().map(|e| e.id).collect::<Vec<EventId>>();
    let expected = vec![
        CorrelationGroup {
            kind: GroupKind::Correlation(flow_a),
            events: ids(&[&a5, &a1, &a4, &a2, &a3]),
        },
        CorrelationGroup {
            kind: GroupKind::Correlation(b1.correlation_id),
            events: ids(&[&b1, &b2]),
        },
        CorrelationGroup {
            kind: GroupKind::Chain { root: a1.id },
            events: ids(&[&a1, &a4, &a2, &a3]),
        },
        CorrelationGroup {
            kind: GroupKind::Chain { root: b1.id },
            events: ids(&[&b1, &b2]),
        },
        CorrelationGroup {
            kind: GroupKind::TimeWindow {
                start_us: 5_000,
                end_us: 5_100,
            },
            events: ids(&[&x1, &x2, &x3]),
        },
        CorrelationGroup {
            kind: GroupKind::TimeWindow {
                start_us: 5_150,
                end_us: 5_200,
            },
            events: ids(&[&x4, &x5]),
        },
    ];
    Crafted {
        batch: vec![a1, a2, a3, a4, a5, b1, b2, x1, x2, x3, x4, x5, x6],
        expected,
    }
}

fn window_100us() -> CorrelateOptions {
    CorrelateOptions { window_us: 100 }
}

#[tokio::test]
async fn the_correlator_groups_a_crafted_batch_in_any_order() {
    let correlator = Correlator::spawn(BIN).unwrap().with_options(window_100us());
    let Crafted {
        mut batch,
        expected,
    } = crafted();
    let mut rng = rand::rng();
    for round in 0..10 {
        batch.shuffle(&mut rng);
        let groups = correlator.correlate(&batch).await.unwrap();
        assert_eq!(groups, expected, "round {round}");
        assert_eq!(correlate_events(&batch, &window_100us()), expected);
    }
    // A wider window merges the two time groups; a zero window leaves none.
    let wide = correlator
        .correlate_with(&batch, &CorrelateOptions { window_us: 1_000 })
        .await
        .unwrap();
    let windows: Vec<usize> = wide
        .iter()
        .filter(|g| matches!(g.kind, GroupKind::TimeWindow { .. }))
        .map(|g| g.events.len())
        .collect();
    assert_eq!(windows, vec![5]);
    let none = correlator
        .correlate_with(&batch, &CorrelateOptions { window_us: 0 })
        .await
        .unwrap();
    assert!(none
        .iter()
        .all(|g| !matches!(g.kind, GroupKind::TimeWindow { .. })));
    // Empty and single-event batches have no groups.
    assert!(correlator.correlate(&[]).await.unwrap().is_empty());
    assert!(correlator.correlate(&batch[..1]).await.unwrap().is_empty());
    correlator.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_events_keep_parents_before_children() {
    let correlator = Correlator::spawn(BIN).unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for flow in 0..1_000u64 {
        let mut parent = ev(flow * 10_000);
        batch.push(parent.clone());
        for step in 1..10u64 {
            // Timestamps run backwards within a flow: only the links give the order.
            let child = ev(flow * 10_000 + 100 - step).caused_by(&parent);
            batch.push(child.clone());
            parent = child;
        }
    }
    batch.shuffle(&mut rand::rng());
    let parent_of: HashMap<EventId, EventId> = batch
        .iter()
        .filter_map(|e| e.parent_id.map(|p| (e.id, p)))
        .collect();
    let groups = correlator.correlate(&batch).await.unwrap();
    let count = |f: fn(&GroupKind) -> bool| groups.iter().filter(|g| f(&g.kind)).count();
    assert_eq!(count(|k| matches!(k, GroupKind::Correlation(_))), 1_000);
    assert_eq!(count(|k| matches!(k, GroupKind::Chain { .. })), 1_000);
    assert_eq!(count(|k| matches!(k, GroupKind::TimeWindow { .. })), 0);
    for g in &groups {
        assert_eq!(g.events.len(), 10);
        let pos: HashMap<EventId, usize> = g
            .events
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        for id in &g.events {
            if let Some(p) = parent_of.get(id) {
                assert!(pos[p] < pos[id], "parent after child in {:?}", g.kind);
            }
        }
    }
    correlator.shutdown().await;
}

#[test]
fn the_binary_answers_bad_requests_with_error_frames_and_exits_cleanly_at_eof() {
    let mut input = Vec::new();
    write_frame(&mut input, b"\xc1 not a request").unwrap();
    write_frame(&mut input, &[]).unwrap();
    let (batch, expected) = {
        let c = crafted();
        (c.batch, c.expected)
    };
    let request = rmp_serde::to_vec_named(&foundation_core::events::CorrelateRequest {
        events: batch,
        options: window_100us(),
    })
    .unwrap();
    write_frame(&mut input, &request).unwrap();
    write_frame(&mut input, &[0u8; 200]).unwrap(); // over the limit set below
    write_frame(&mut input, b"\x93\x01\x02\x03").unwrap();

    let output = run_binary(&input, &[("FOUNDATION_CORRELATOR_MAX_FRAME", "150")]);
    assert!(output.status.success(), "{output:?}");
    let mut out = &output.stdout[..];
    let mut replies = Vec::new();
    while let Incoming::Frame(f) = read_frame(&mut out, usize::MAX).unwrap() {
        replies.push(rmp_serde::from_slice::<CorrelateReply>(&f).unwrap());
    }
    assert_eq!(replies.len(), 5, "one reply per request");
    assert!(matches!(&replies[0], CorrelateReply::Error(m) if m.contains("undecodable")));
    assert!(matches!(&replies[1], CorrelateReply::Error(_)));
    // The valid request was 1 KB-ish, over 150 bytes too: rejected, stream still in step.
    assert!(matches!(&replies[2], CorrelateReply::Error(m) if m.contains("exceeds")));
    assert!(matches!(&replies[3], CorrelateReply::Error(m) if m.contains("200 bytes")));
    assert!(matches!(&replies[4], CorrelateReply::Error(_)));

    // With the default limit the valid request is answered.
    let mut input = Vec::new();
    write_frame(&mut input, &request).unwrap();
    let output = run_binary(&input, &[]);
    assert!(output.status.success());
    let mut out = &output.stdout[..];
    let Incoming::Frame(f) = read_frame(&mut out, usize::MAX).unwrap() else {
        panic!("no reply")
    };
    assert_eq!(
        rmp_serde::from_slice::<CorrelateReply>(&f).unwrap(),
        CorrelateReply::Groups(expected)
    );

    // Input cut inside a frame: an error exit, reported, no panic.
    let output = run_binary(&[0, 0, 0, 9, 1, 2], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Empty input: a clean exit.
    assert!(run_binary(&[], &[]).status.success());
}

fn run_binary(input: &[u8], env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

struct Marker(std::path::PathBuf);

impl Marker {
    fn new() -> Marker {
        Marker(std::env::temp_dir().join(format!(
            "foundation-correlator-fault-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        )))
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A correlator that injects `fault` on its first request only (across restarts).
fn faulty(fault: &str, marker: &Marker) -> Correlator {
    Correlator::from_builder(
        Correlator::port_builder(BIN)
            .env(
                "FOUNDATION_CORRELATOR_FAULT",
                format!("{fault}:{}", marker.0.display()),
            )
            .request_timeout(Duration::from_secs(20))
            .restart(common::fast_restarts()),
    )
    .unwrap()
    .with_options(window_100us())
}

#[tokio::test]
async fn the_host_survives_a_correlator_that_crashes() {
    let marker = Marker::new();
    let correlator = faulty("crash", &marker);
    let c = crafted();
    let err = correlator.correlate(&c.batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::PortExited { reason, .. } if reason.contains("status 70")),
        "{err:?}"
    );
    assert_eq!(correlator.correlate(&c.batch).await.unwrap(), c.expected);
    assert_eq!(correlator.port().stats().restarts, 1);
    correlator.shutdown().await;
}

#[tokio::test]
async fn the_host_survives_a_correlator_that_hangs() {
    let marker = Marker::new();
    let correlator = Correlator::from_builder(
        Correlator::port_builder(BIN)
            .env(
                "FOUNDATION_CORRELATOR_FAULT",
                format!("hang:{}", marker.0.display()),
            )
            .request_timeout(Duration::from_millis(300))
            .hang_timeout(Duration::from_millis(100))
            .restart(common::fast_restarts()),
    )
    .unwrap()
    .with_options(window_100us());
    let c = crafted();
    let err = correlator.correlate(&c.batch).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    common::eventually("hung correlator replaced", || {
        correlator.port().stats().restarts == 1
    })
    .await;
    assert_eq!(correlator.correlate(&c.batch).await.unwrap(), c.expected);
    correlator.shutdown().await;
}

#[tokio::test]
async fn the_host_survives_a_correlator_that_answers_garbage() {
    let marker = Marker::new();
    let correlator = faulty("garbage", &marker);
    let c = crafted();
    let err = correlator.correlate(&c.batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::Correlation { reason } if reason.contains("undecodable reply")),
        "{err:?}"
    );
    // Garbage makes the host distrust the process: it is restarted.
    common::eventually("garbling correlator replaced", || {
        correlator.port().stats().restarts == 1
    })
    .await;
    assert_eq!(correlator.correlate(&c.batch).await.unwrap(), c.expected);
    correlator.shutdown().await;
}

#[tokio::test]
async fn a_request_the_correlator_rejects_is_an_error_without_a_restart() {
    let correlator = Correlator::from_builder(
        Correlator::port_builder(BIN).env("FOUNDATION_CORRELATOR_MAX_FRAME", "64"),
    )
    .unwrap();
    let c = crafted();
    let err = correlator.correlate(&c.batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::Correlation { reason } if reason.contains("rejected")),
        "{err:?}"
    );
    // Raw garbage through the port is answered with an error frame, not a crash.
    let reply = correlator
        .port()
        .request(Bytes::from_static(b"\xc1"))
        .await
        .unwrap();
    assert!(matches!(
        rmp_serde::from_slice::<CorrelateReply>(&reply).unwrap(),
        CorrelateReply::Error(_)
    ));
    assert_eq!(correlator.port().stats().restarts, 0);
    correlator.shutdown().await;
}

#[tokio::test]
async fn the_binary_is_found_next_to_the_test_executable() {
    let found = Correlator::locate().unwrap();
    assert_eq!(
        found.canonicalize().unwrap(),
        std::path::Path::new(BIN).canonicalize().unwrap()
    );
    let correlator = Correlator::spawn_next_to_current_exe().unwrap();
    assert_eq!(correlator.port().name(), "correlator");
    let c = crafted();
    assert_eq!(
        correlator
            .correlate_with(&c.batch, &window_100us())
            .await
            .unwrap(),
        c.expected
    );
    correlator.shutdown().await;
}

#[tokio::test]
async fn events_correlate_goes_through_the_attached_correlator() {
    let events = foundation_core::events::Events::new().unwrap();
    let parent = Event::new("user", &"order").unwrap();
    let child = Event::new("user", &"paid").unwrap().caused_by(&parent);
    let other = Event::new("system", &"tick").unwrap();
    let batch = vec![child.clone(), other, parent.clone()];
    let e = events.correlate(&batch).await.unwrap_err();
    assert!(e.to_string().contains("no correlator attached"), "{e}");

    for ev in &batch {
        events.emit(ev.clone()).await.unwrap();
    }
    events.attach_correlator(Correlator::spawn(BIN).unwrap());
    let groups = events.correlate(&batch).await.unwrap();
    let with_parent = groups
        .iter()
        .find(|g| g.events.contains(&parent.id))
        .expect("a group holds the parent");
    let pos = |id| with_parent.events.iter().position(|e| *e == id).unwrap();
    assert!(
        pos(parent.id) < pos(child.id),
        "parent before child: {groups:?}"
    );
    events.shutdown().await;
}
