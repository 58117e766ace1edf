//! The node's HTTP server (axum on hyper): `/metrics`, `/health`, `/ready`.
//!
//! One server per node. It keeps the limits of the minimal endpoint in
//! `foundation_core::telemetry`: a request head larger than 8 KiB is refused (431), a head
//! that does not arrive within 5 s closes the connection (an idle keep-alive connection
//! too), and at most 32 connections are served at once (further ones wait in the kernel's
//! accept queue). Only `GET` and `HEAD` are answered (405 otherwise); unknown paths get 404.
//!
//! * `GET /metrics` (and `/` without the observer) — the Prometheus text format (`version=0.0.4`), histograms
//!   exported as histograms;
//! * `GET /health` — 200 with a JSON body while the process serves (liveness);
//! * `GET /ready` — 200 once the node is started and joined, 503 before and while
//!   shutting down (readiness).
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_http_requests_total{path,status}` | counter (`path`: metrics, health, ready, api, other) |
//! | `foundation_http_request_seconds{path}` | histogram |
//! | `foundation_http_accept_errors_total` | counter |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::core::telemetry::ShardedRecorder;

/// Largest request head accepted, in bytes (hyper's smallest read buffer).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for a request head to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time connections get to finish when the server shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A health report for `/health`.
pub type HealthFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the server answers with.
#[derive(Clone)]
pub struct Endpoints {
    recorder: Arc<ShardedRecorder>,
    ready: Arc<AtomicBool>,
    health: HealthFn,
    observer: Option<crate::observer::Observer>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// `/metrics` renders `recorder`; `/ready` follows `ready`; `/health` answers
    /// `{"status":"ok"}` until [`health`](Self::health) sets a richer report.
    pub fn new(recorder: Arc<ShardedRecorder>, ready: Arc<AtomicBool>) -> Self {
        Endpoints {
            recorder,
            ready,
            health: Arc::new(|| serde_json::json!({ "status": "ok" })),
            observer: None,
        }
    }

    /// Also serves the observer's page at `/` and its JSON views under `/api/`
    /// ([`crate::observer`]); without one, `/` serves the metrics.
    pub fn observer(mut self, observer: crate::observer::Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Sets the `/health` report.
    pub fn health(mut self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        self.health = Arc::new(f);
        self
    }
}

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Describes the HTTP metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "foundation_http_requests_total",
        "HTTP requests answered by the node's server, by path and status."
    );
    describe_histogram!(
        "foundation_http_request_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request."
    );
    describe_counter!(
        "foundation_http_accept_errors_total",
        "Failed accepts on the node's HTTP server."
    );
}

/// A running HTTP server. [`shutdown`](Self::shutdown) stops it; dropping it cancels it
/// without waiting.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn path_label(path: &str) -> &'static str {
    match path {
        "/metrics" | "/" => "metrics",
        "/health" => "health",
        "/ready" => "ready",
        p if p.starts_with("/api/") => "api",
        _ => "other",
    }
}

async fn track(req: Request, next: Next) -> Response {
    let path = path_label(req.uri().path());
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!("foundation_http_request_seconds", "path" => path)
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("foundation_http_requests_total", "path" => path, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

async fn metrics_handler(State(e): State<Endpoints>) -> Response {
    let body = e.recorder.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn health_handler(State(e): State<Endpoints>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        (e.health)().to_string(),
    )
        .into_response()
}

async fn ready_handler(State(e): State<Endpoints>) -> Response {
    if e.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The router (for embedding in another server).
pub fn router(endpoints: Endpoints) -> Router {
    let observer = endpoints.observer.clone();
    let mut r = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler));
    if observer.is_none() {
        r = r.route("/", get(metrics_handler));
    }
    let mut r = r.with_state(endpoints);
    if let Some(o) = observer {
        r = r.merge(o.router());
    }
    r.fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            "not found: the node serves /metrics, /health, /ready (and /, /api/* with the observer)\n",
        )
    })
    .layer(middleware::from_fn(track))
}

impl HttpServer {
    /// Binds `addr` and serves `endpoints` on the current runtime.
    pub async fn start(addr: SocketAddr, endpoints: Endpoints) -> Result<HttpServer, HttpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { addr, source })?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, router(endpoints), cancel.clone()));
        Ok(HttpServer {
            addr: local,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish within [`SHUTDOWN_GRACE`], then closes
    /// every connection.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let _live = crate::core::telemetry::TaskGuard::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                metrics::counter!("foundation_http_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let cancel = cancel.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    // Open connections were told to finish; give them the grace period, then close them.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(100), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}
