//! The node's HTTP server keeps the old endpoint's limits: 8 KiB heads (431 beyond),
//! GET/HEAD only (405), 404 elsewhere, idle connections closed after the head timeout;
//! readiness follows its flag; a histogram is exported as a histogram.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_intelligence::core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use foundation_intelligence::http::{Endpoints, HttpServer, HEAD_TIMEOUT};

fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

async fn server() -> (HttpServer, Arc<AtomicBool>, Arc<ShardedRecorder>) {
    let recorder = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
    let ready = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints::new(recorder.clone(), ready.clone())
        .health(|| serde_json::json!({ "status": "ok", "node": "t" }));
    let s = HttpServer::start("127.0.0.1:0".parse().unwrap(), endpoints)
        .await
        .unwrap();
    (s, ready, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_limits() {
    let (server, ready, recorder) = server().await;
    let addr = server.local_addr();
    metrics::with_local_recorder(recorder.as_ref(), || {
        metrics::histogram!("foundation_test_seconds").record(0.02);
    });
    let r = tokio::task::spawn_blocking(move || {
        let get = |path: &str| {
            exchange(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
        };
        let metrics = get("/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(
            metrics.contains("foundation_test_seconds_bucket{le=\"0.025\"} 1"),
            "{metrics}"
        );
        assert!(get("/ready").starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::SeqCst);
        assert!(get("/ready").starts_with("HTTP/1.1 200"));
        let health = get("/health");
        assert!(
            health.starts_with("HTTP/1.1 200") && health.contains("\"node\":\"t\""),
            "{health}"
        );
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = exchange(
            addr,
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.contains("foundation_test_seconds_bucket"),
            "HEAD has no body"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        big.extend_from_slice(b"\r\n\r\n");
        let too_big = exchange(addr, &big);
        assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
        // A connection that never sends a head is closed by the server (bounded wait).
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(HEAD_TIMEOUT * 6)).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let n = idle
            .read(&mut buf)
            .expect("closed by the server, not timed out here");
        assert_eq!(n, 0);
        assert!(start.elapsed() < HEAD_TIMEOUT * 6);
    })
    .await;
    server.shutdown().await;
    r.unwrap();
}
