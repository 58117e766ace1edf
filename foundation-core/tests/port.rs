//! Behaviour of `foundation_core::port`: framing, ordering, timeouts, crashes, bad frames,
//! restarts, stderr forwarding and shutdown, against real child processes (`cat`, `sh`).
//!
//! Time is real here: a paused tokio clock would fire timeouts while the child is still
//! working. Tests poll with generous limits and assert only on outcomes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foundation_core::port::{Port, PortBuilder, PortState, RestartPolicy};
use foundation_core::{Error, FrameDirection};
use parking_lot::Mutex;

fn sh(script: &str) -> PortBuilder {
    Port::builder("sh")
        .arg("-c")
        .arg(script)
        .restart(common::fast_restarts())
        .request_timeout(Duration::from_secs(20))
}

/// A script that misbehaves with `bad` the first time it runs and echoes (`cat`) in
/// every later run, using a marker file in a fresh temporary directory.
fn once_then_cat(bad: &str) -> (PortBuilder, TempDir) {
    let dir = TempDir::new();
    let marker = dir.0.join("ran");
    let script = format!(
        "if [ -e '{m}' ]; then exec cat; else touch '{m}'; {bad}; fi",
        m = marker.display()
    );
    (sh(&script), dir)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "foundation-port-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The port answers again (echoing `probe`) after exactly one restart; then it is shut
/// down.
async fn recovered_after_one_restart(port: Port, probe: &'static [u8]) {
    let reply = port.request(Bytes::from_static(probe)).await.unwrap();
    assert_eq!(reply, Bytes::from_static(probe));
    assert_eq!(port.stats().restarts, 1);
    port.shutdown().await;
}

#[tokio::test]
async fn cat_round_trips_frames_of_every_size_in_order() {
    let port = Port::builder("cat").max_frame(1 << 20).spawn().unwrap();
    assert_eq!(port.name(), "cat");
    for size in [0usize, 1, 3, 4, 5, 1000, 65_536, 1 << 20] {
        let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        assert_eq!(port.request(payload.clone()).await.unwrap(), payload);
    }
    // 200 concurrent callers: each gets its own reply back.
    let calls = (0..200u32).map(|i| {
        let port = port.clone();
        async move {
            let payload = Bytes::from(format!("request-{i}"));
            (payload.clone(), port.request(payload).await.unwrap())
        }
    });
    for (sent, got) in futures_join_all(calls).await {
        assert_eq!(sent, got);
    }
    assert_eq!(port.stats().restarts, 0);
    assert_eq!(port.stats().state, PortState::Running);
    port.shutdown().await;
}

/// `join_all` without a futures dependency: spawn each on the runtime and await in order.
async fn futures_join_all<F, T>(futs: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_child_that_never_answers_times_out_and_is_restarted_as_hung() {
    // `exec`: the port kills its direct child only, so the sleep must be that child.
    let port = sh("exec sleep 1000")
        .shutdown_grace(Duration::from_millis(100))
        .request_timeout(Duration::from_millis(200))
        .hang_timeout(Duration::from_millis(200))
        .spawn()
        .unwrap();
    let first_pid = port.stats().pid.unwrap();
    let err = port
        .request(Bytes::from_static(b"hello"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    // Nothing came back for the abandoned request: the child is killed as hung.
    common::eventually("hung child restarted", || port.stats().restarts >= 1).await;
    common::eventually("new child running", || {
        port.stats().pid.is_some_and(|p| p != first_pid)
    })
    .await;
    common::eventually("hung child reaped", || !process_exists(first_pid)).await;
    port.shutdown().await;
}

#[tokio::test]
async fn a_late_reply_is_discarded_and_later_replies_stay_in_sync() {
    // cat starts only after 1 s: the first request times out, its reply arrives late.
    let port = sh("sleep 1; exec cat").spawn().unwrap();
    let err = port
        .request_with_timeout(Bytes::from_static(b"first"), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let second = port.request(Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(second, Bytes::from_static(b"second"));
    assert_eq!(port.stats().late_replies, 1);
    assert_eq!(port.stats().restarts, 0, "a slow child is not restarted");
    port.shutdown().await;
}

#[tokio::test]
async fn a_crash_fails_every_pending_caller_at_once_and_the_port_restarts() {
    // First run: read part of the first request, wait for the rest to be queued, exit 3.
    let (builder, _dir) = once_then_cat("head -c 4 >/dev/null; sleep 0.3; exit 3");
    let port = builder.spawn().unwrap();
    let calls = (0..5u32).map(|i| {
        let port = port.clone();
        async move { port.request(Bytes::from(format!("r{i}"))).await }
    });
    // The request timeout is 20 s; every caller must get PortExited, not a timeout.
    for result in futures_join_all(calls).await {
        match result {
            Err(Error::PortExited { reason, .. }) => {
                assert!(reason.contains("status 3"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(port.stats().inflight, 0);
    recovered_after_one_restart(port, b"after").await;
}

#[tokio::test]
async fn an_oversized_reply_is_rejected_counted_and_the_port_recovers() {
    let (builder, _dir) =
        once_then_cat(r"head -c 4 >/dev/null; printf '\377\377\377\377'; exec sleep 1000");
    let port = builder.max_frame(1024).spawn().unwrap();
    let err = port
        .request(Bytes::from_static(b"hello"))
        .await
        .unwrap_err();
    match err {
        Error::FrameTooLarge {
            direction,
            size,
            max,
            ..
        } => {
            assert_eq!(direction, FrameDirection::FromChild);
            assert_eq!(size, u32::MAX as usize);
            assert_eq!(max, 1024);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(port.stats().frames_rejected, 1);
    recovered_after_one_restart(port, b"again").await;
}

#[tokio::test]
async fn a_truncated_reply_is_a_protocol_error_and_the_port_recovers() {
    // Announces 8 bytes, sends 3, exits.
    let (builder, _dir) = once_then_cat(r"head -c 4 >/dev/null; printf '\000\000\000\010abc'");
    let port = builder.spawn().unwrap();
    let err = port
        .request(Bytes::from_static(b"hello"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PortProtocol { reason, .. } if reason.contains("7 bytes")),
        "{err:?}"
    );
    assert_eq!(port.stats().frames_rejected, 1);
    let reply = port.request(Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(reply, Bytes::from_static(b"again"));
    port.shutdown().await;
}

#[tokio::test]
async fn an_unsolicited_frame_is_rejected_and_the_child_restarted() {
    // Speaks before being asked: a reply with no request outstanding.
    let (builder, _dir) = once_then_cat(r"printf '\000\000\000\001x'; exec sleep 1000");
    let port = builder.spawn().unwrap();
    common::eventually("unexpected frame counted", || {
        port.stats().frames_rejected == 1
    })
    .await;
    common::eventually("restarted", || port.stats().restarts == 1).await;
    let reply = port.request(Bytes::from_static(b"ok?")).await.unwrap();
    assert_eq!(reply, Bytes::from_static(b"ok?"));
    port.shutdown().await;
}

#[tokio::test]
async fn an_oversized_request_is_rejected_before_it_is_sent() {
    let port = Port::builder("cat").max_frame(16).spawn().unwrap();
    let pid = port.stats().pid;
    let err = port.request(Bytes::from(vec![7u8; 17])).await.unwrap_err();
    match err {
        Error::FrameTooLarge {
            direction,
            size,
            max,
            ..
        } => {
            assert_eq!((direction, size, max), (FrameDirection::ToChild, 17, 16));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!Error::FrameTooLarge {
        port: String::new(),
        direction: FrameDirection::ToChild,
        size: 17,
        max: 16
    }
    .is_retryable());
    let stats = port.stats();
    assert_eq!(
        (stats.frames_rejected, stats.restarts, stats.pid),
        (1, 0, pid)
    );
    let ok = Bytes::from(vec![7u8; 16]);
    assert_eq!(port.request(ok.clone()).await.unwrap(), ok);
    port.shutdown().await;
}

#[tokio::test]
async fn invalid_settings_and_missing_programs_are_errors() {
    assert!(matches!(
        Port::builder("cat").max_frame(0).spawn(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Port::builder("/nonexistent/foundation-no-such-program").spawn(),
        Err(Error::Io { .. })
    ));
}

#[tokio::test]
async fn restarts_back_off_and_the_port_gives_up_at_the_limit() {
    let port = sh("exit 1")
        .restart(RestartPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            reset_after: Duration::from_secs(60),
            max_restarts: 3,
        })
        .spawn()
        .unwrap();
    common::eventually("gave up", || port.state() == PortState::Failed).await;
    assert_eq!(port.stats().restarts, 3);
    let err = port.request(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(
        matches!(err, Error::PortGaveUp { restarts: 3, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_request_during_a_long_backoff_fails_fast_with_retry_after() {
    let port = sh("exit 1")
        .restart(RestartPolicy {
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(60),
            ..common::fast_restarts()
        })
        .spawn()
        .unwrap();
    common::eventually("restarting", || port.state() == PortState::Restarting).await;
    let err = port
        .request_with_timeout(Bytes::from_static(b"x"), Duration::from_secs(1))
        .await
        .unwrap_err();
    match &err {
        Error::PortRestarting { retry_after, .. } => {
            assert!(*retry_after > Duration::from_secs(1));
            assert!(err.retry_delay(0).unwrap() >= *retry_after);
        }
        other => panic!("unexpected {other:?}"),
    }
    // An explicit restart cuts the backoff short.
    port.restart();
    common::eventually("restarted", || port.stats().restarts == 1).await;
}

#[tokio::test]
async fn restart_replaces_the_child_and_requests_keep_working() {
    let port = Port::builder("cat")
        .restart(common::fast_restarts())
        .spawn()
        .unwrap();
    let pid = port.stats().pid.unwrap();
    port.restart();
    common::eventually("new child", || port.stats().pid.is_some_and(|p| p != pid)).await;
    common::eventually("old child gone", || !process_exists(pid)).await;
    assert_eq!(
        port.request(Bytes::from_static(b"x")).await.unwrap(),
        Bytes::from_static(b"x")
    );
}

#[tokio::test]
async fn shutdown_waits_for_the_child_and_later_requests_fail() {
    let port = Port::builder("cat").spawn().unwrap();
    let pid = port.stats().pid.unwrap();
    assert!(process_exists(pid));
    port.shutdown().await;
    assert!(!process_exists(pid), "child reaped by shutdown");
    assert_eq!(port.state(), PortState::Stopped);
    let err = port.request(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, Error::Shutdown { .. }), "{err:?}");
    port.shutdown().await; // second call returns
}

#[tokio::test]
async fn shutdown_lets_outstanding_requests_finish() {
    let port = sh("sleep 0.3; exec cat").spawn().unwrap();
    let caller = {
        let port = port.clone();
        tokio::spawn(async move { port.request(Bytes::from_static(b"slow")).await })
    };
    common::eventually("in flight", || port.stats().inflight == 1).await;
    port.shutdown().await;
    assert_eq!(caller.await.unwrap().unwrap(), Bytes::from_static(b"slow"));
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_child() {
    let port = Port::builder("cat").spawn().unwrap();
    let pid = port.stats().pid.unwrap();
    let clone = port.clone();
    drop(port);
    assert!(process_exists(pid), "a clone keeps it alive");
    drop(clone);
    common::eventually("child gone after drop", || !process_exists(pid)).await;
}

// ---- stderr forwarding, observed with a minimal tracing subscriber ----

/// One captured event: its fields as (name, value) pairs.
type Fieldset = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fieldset>>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() != "foundation_core::port::stderr" {
            return;
        }
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "current_thread")]
async fn stderr_lines_are_forwarded_to_tracing_and_cut_at_the_limit() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let port = sh("echo 'hello from the child' >&2; printf '%0300d\\n' 0 >&2; printf 'no newline' >&2; exec cat")
        .name("noisy")
        .max_stderr_line(100)
        .spawn()
        .unwrap();
    common::eventually("two stderr lines", || port.stats().stderr_lines == 2).await;
    // Still a working port.
    assert_eq!(
        port.request(Bytes::from_static(b"x")).await.unwrap(),
        Bytes::from_static(b"x")
    );
    let events = capture.0.lock().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(field(&events[0], "message"), "hello from the child");
    assert_eq!(field(&events[0], "port"), "noisy");
    assert_eq!(field(&events[0], "truncated"), "false");
    assert_eq!(field(&events[1], "message"), "0".repeat(100));
    assert_eq!(field(&events[1], "truncated"), "true");
    port.shutdown().await;
    // The last line, without a newline, is emitted when the stream ends.
    let events = capture.0.lock().clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(field(&events[2], "message"), "no newline");
}

#[tokio::test]
async fn a_reply_written_just_before_the_child_exits_is_delivered() {
    // First run: echo exactly one 5-byte request frame (4 + 5 bytes), then exit 3.
    let (builder, _dir) = once_then_cat("head -c 9; exit 3");
    let port = builder.spawn().unwrap();
    let reply = port.request(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(reply, Bytes::from_static(b"hello"));
    common::eventually("restarted after the exit", || port.stats().restarts == 1).await;
    assert_eq!(
        port.request(Bytes::from_static(b"again")).await.unwrap(),
        Bytes::from_static(b"again")
    );
    port.shutdown().await;
}

#[test]
fn requests_rejections_restarts_and_stderr_are_counted_in_metrics() {
    // The port registers its handles when spawned, so spawning under the local recorder
    // binds them to it.
    let ((), seen) = common::with_metrics(&["port"], || async {
        let (builder, _dir) = once_then_cat("echo oops >&2; head -c 4 >/dev/null; exit 3");
        let port = builder.name("m").max_frame(8).spawn().unwrap();
        assert!(port.request(Bytes::from_static(b"x")).await.is_err()); // crash
        assert!(port.request(Bytes::from(vec![0u8; 9])).await.is_err()); // too large
        port.request(Bytes::from_static(b"ok")).await.unwrap();
        port.request(Bytes::from_static(b"ok")).await.unwrap();
        port.shutdown().await;
    });
    let get = |k: &str| seen.get(k).copied().unwrap_or(-1.0);
    assert_eq!(
        get("foundation_port_requests_total{result=ok}"),
        2.0,
        "{seen:?}"
    );
    assert_eq!(
        get("foundation_port_requests_total{result=child_exited}"),
        1.0
    );
    assert_eq!(
        get("foundation_port_requests_total{result=frame_too_large}"),
        1.0
    );
    assert_eq!(
        get("foundation_port_frames_rejected_total{reason=request_too_large}"),
        1.0
    );
    assert_eq!(get("foundation_port_restarts_total{}"), 1.0);
    assert_eq!(get("foundation_port_stderr_lines_total{}"), 1.0);
    assert_eq!(get("foundation_port_request_seconds{}"), 4.0);
    assert_eq!(get("foundation_port_inflight{}"), 0.0);
}
