//! Ports: an external program spoken to over its stdin and stdout with length-prefixed
//! frames, like an Erlang port opened with `{packet, 4}`.
//!
//! # Protocol
//! Every message, in both directions, is one **frame**: a 4-byte big-endian unsigned length
//! followed by that many bytes. The child reads request frames from its stdin and writes
//! **exactly one reply frame per request, in request order**, to its stdout. Frames carry
//! no sequence number: the position of a reply in the stream says which request it
//! answers. The child's stderr is free text; each line is forwarded to `tracing` (target
//! `foundation_core::port::stderr`, level WARN, lines cut at
//! [`PortBuilder::max_stderr_line`] bytes) and counted.
//!
//! # Model
//! A [`Port`] is a cheap, cloneable handle to one **owner task**, which owns the child,
//! a writer task feeding the child's stdin and a task forwarding its stderr.
//! [`Port::request`] queues a frame and waits for its reply:
//! * **Limits.** A request larger than [`PortBuilder::max_frame`] is rejected before it is
//!   sent ([`Error::FrameTooLarge`]). A reply whose header announces more than `max_frame`
//!   bytes, a frame cut short by end of stream, or a reply when no request is outstanding
//!   is a protocol violation: the child is killed and restarted, the frame is counted in
//!   `foundation_port_frames_rejected_total`, and the caller the reply was for gets
//!   [`Error::FrameTooLarge`] or [`Error::PortProtocol`].
//! * **Timeouts.** A request not answered within its timeout (30 s by default) returns
//!   [`Error::Timeout`]. Its place in the reply order is kept, so when the late reply
//!   comes it is read and discarded (`foundation_port_late_replies_total`) and later
//!   replies still reach their callers. A child that leaves its oldest outstanding request
//!   unanswered for [`PortBuilder::hang_timeout`] past that request's deadline (and sends
//!   nothing else meanwhile) is considered hung, killed and restarted.
//! * **Crashes.** When the child exits, closes its stdout, or stops reading its stdin,
//!   every outstanding caller gets [`Error::PortExited`] at once, not after its timeout.
//! * **Restarts.** The owner restarts the child after an exponential backoff
//!   ([`RestartPolicy`]): `initial_backoff * 2^(n-1)` for the n-th consecutive failure,
//!   capped at `max_backoff`. A child that ran for `reset_after` resets the count; after
//!   `max_restarts` consecutive restarts the port gives up ([`Error::PortGaveUp`]).
//!   A request made during the backoff waits for the new child if the backoff ends
//!   before the request's deadline, and otherwise fails at once with
//!   [`Error::PortRestarting`] (which says when to retry).
//! * **Shutdown.** [`Port::shutdown`] stops taking requests, lets outstanding ones finish
//!   for up to [`PortBuilder::shutdown_grace`], closes the child's stdin, waits for it to
//!   exit within the same grace and kills it otherwise. Dropping the last handle does the
//!   same in the background. The child is spawned with `kill_on_drop`, so it never
//!   outlives the runtime.
//!
//! # Metrics
//! Labelled `port` (the port's name): `foundation_port_requests_total{result}`,
//! `foundation_port_request_seconds` (histogram), `foundation_port_inflight` (gauge),
//! `foundation_port_restarts_total`, `foundation_port_frames_rejected_total{reason}`,
//! `foundation_port_late_replies_total`, `foundation_port_stderr_lines_total`.
//!
//! [`child`] has the child's side of the protocol for port programs written in Rust.
//!
//! # Example
//! `cat` copies its stdin to its stdout, so it answers every frame with the same frame:
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use foundation_core::port::Port;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> foundation_core::Result<()> {
//! let port = Port::builder("cat")
//!     .request_timeout(Duration::from_secs(5))
//!     .max_frame(1 << 20)
//!     .spawn()?;
//! let reply = port.request(Bytes::from_static(b"ping")).await?;
//! assert_eq!(reply, Bytes::from_static(b"ping"));
//!
//! // Too large to send: rejected before it reaches the child.
//! assert!(port.request(Bytes::from(vec![0u8; 2 << 20])).await.is_err());
//! port.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{capped_exponential, Error, FrameDirection, Result};

/// How a port restarts its child. Plain settings; loads from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    /// Wait before the first restart after a failure. Default 50 ms.
    pub initial_backoff: Duration,
    /// Longest wait between restarts. Default 5 s.
    pub max_backoff: Duration,
    /// A child that ran this long counts as healthy: the next failure starts the backoff
    /// from `initial_backoff` again. Default 10 s.
    pub reset_after: Duration,
    /// Consecutive restarts (without a healthy period between them) after which the port
    /// gives up. Default 10; `u32::MAX` never gives up.
    pub max_restarts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
            max_restarts: 10,
        }
    }
}

/// Default request timeout: 30 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest frame, in either direction: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Where a port's child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PortState {
    /// A child is running and requests are sent to it.
    Running,
    /// The child stopped; a new one starts after the backoff.
    Restarting,
    /// The restart limit was reached; every request fails with [`Error::PortGaveUp`].
    Failed,
    /// The port was shut down.
    Stopped,
}

impl PortState {
    fn from_u8(v: u8) -> PortState {
        match v {
            0 => PortState::Running,
            1 => PortState::Restarting,
            2 => PortState::Failed,
            _ => PortState::Stopped,
        }
    }
}

/// Counters of one port since it was spawned (also exported as metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStats {
    /// Where the child is in its life.
    pub state: PortState,
    /// Process id of the running child, if one runs.
    pub pid: Option<u32>,
    /// Children started after the first one.
    pub restarts: u64,
    /// Frames rejected (oversized requests, oversized, truncated or unexpected replies).
    pub frames_rejected: u64,
    /// Replies read after their caller had given up, and discarded.
    pub late_replies: u64,
    /// Lines the child wrote to stderr.
    pub stderr_lines: u64,
    /// Requests sent to the child and not yet answered (including abandoned ones).
    pub inflight: u64,
}

/// Configures and spawns a [`Port`]. Made by [`Port::builder`].
#[derive(Debug, Clone)]
pub struct PortBuilder {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    name: Option<String>,
    request_timeout: Duration,
    hang_timeout: Option<Duration>,
    max_frame: usize,
    max_inflight: usize,
    max_stderr_line: usize,
    shutdown_grace: Duration,
    restart: RestartPolicy,
}

impl PortBuilder {
    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the child (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The child's working directory (default: inherited).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The port's name in metrics and logs (default: the program's file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Timeout of [`Port::request`] (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long past its deadline the oldest outstanding request may stay unanswered
    /// (with no other frame from the child) before the child is killed as hung
    /// (default: the request timeout).
    pub fn hang_timeout(mut self, timeout: Duration) -> Self {
        self.hang_timeout = Some(timeout);
        self
    }

    /// Largest frame payload in either direction, in bytes (default [`DEFAULT_MAX_FRAME`]).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Most requests sent to the child and not yet answered (default 1024); further
    /// requests wait in a queue of the same size.
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n.max(1);
        self
    }

    /// Longest stderr line forwarded; longer lines are cut (default 4096 bytes).
    pub fn max_stderr_line(mut self, bytes: usize) -> Self {
        self.max_stderr_line = bytes.max(1);
        self
    }

    /// Time [`Port::shutdown`] gives outstanding requests and the child's exit
    /// (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The restart policy (default [`RestartPolicy::default`]).
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Spawns the child and the owner task. Must be called inside a tokio runtime.
    ///
    /// Fails with [`Error::Io`] if the program cannot be started, and with
    /// [`Error::InvalidArgument`] for a zero `max_frame` or a `max_frame` above 4 GiB − 1
    /// (the most a 4-byte header can announce).
    pub fn spawn(self) -> Result<Port> {
        if self.max_frame == 0 || self.max_frame > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "port max_frame must be in 1..=4294967295, got {}",
                self.max_frame
            )));
        }
        let name: Arc<str> = match &self.name {
            Some(n) => Arc::from(n.as_str()),
            None => Arc::from(
                self.program
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| self.program.to_string_lossy().into_owned()),
            ),
        };
        let child = spawn_child(&self).map_err(|source| Error::Io {
            context: format!(
                "spawning port `{name}` ({})",
                self.program.to_string_lossy()
            ),
            source,
        })?;
        let shared = Arc::new(Shared {
            name: name.clone(),
            state: AtomicU8::new(0),
            pid: AtomicU32::new(child.id().unwrap_or(0)),
            restarts: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            late_replies: AtomicU64::new(0),
            stderr_lines: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            gave_up_after: AtomicU32::new(0),
            restart: Notify::new(),
            metrics: PortMetrics::new(&name),
        });
        let (tx, rx) = mpsc::channel(self.max_inflight);
        let cancel = CancellationToken::new();
        let settings = Arc::new(self);
        let owner = Owner {
            settings: settings.clone(),
            shared: shared.clone(),
            rx,
            cancel: cancel.clone(),
            waiting: VecDeque::new(),
        };
        let task = tokio::spawn(owner.run(child));
        Ok(Port {
            inner: Arc::new(Inner {
                shared,
                settings,
                tx,
                cancel,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// A handle to an external program spoken to with 4-byte length-prefixed frames. Cheap
/// to clone; see the [module docs](self) for the protocol and the failure model.
///
/// Dropping the last handle shuts the port down in the background (outstanding requests
/// get [`PortBuilder::shutdown_grace`] to finish, then the child's stdin is closed and the
/// child killed if it has not exited). Call [`Port::shutdown`] to wait for that.
#[derive(Clone)]
pub struct Port {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    settings: Arc<PortBuilder>,
    tx: mpsc::Sender<Request>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("name", &self.inner.shared.name)
            .field("program", &self.inner.settings.program)
            .field("state", &self.state())
            .finish()
    }
}

/// What the handles and the owner task share.
struct Shared {
    name: Arc<str>,
    state: AtomicU8,
    pid: AtomicU32,
    restarts: AtomicU64,
    frames_rejected: AtomicU64,
    late_replies: AtomicU64,
    stderr_lines: AtomicU64,
    inflight: AtomicU64,
    gave_up_after: AtomicU32,
    restart: Notify,
    metrics: PortMetrics,
}

impl Shared {
    fn set_state(&self, s: PortState) {
        let v = match s {
            PortState::Running => 0,
            PortState::Restarting => 1,
            PortState::Failed => 2,
            PortState::Stopped => 3,
        };
        self.state.store(v, Ordering::Release);
    }

    fn state(&self) -> PortState {
        PortState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn reject(&self, counter: &Counter) {
        counter.increment(1);
        self.frames_rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn gave_up(&self) -> Error {
        Error::PortGaveUp {
            port: self.name.to_string(),
            restarts: self.gave_up_after.load(Ordering::Acquire),
        }
    }

    /// The error for a caller whose request cannot reach the owner any more.
    fn closed(&self) -> Error {
        match self.state() {
            PortState::Failed => self.gave_up(),
            _ => Error::Shutdown { component: "port" },
        }
    }
}

/// Pre-registered metric handles of one port.
struct PortMetrics {
    ok: Counter,
    timeout: Counter,
    exited: Counter,
    protocol: Counter,
    too_large: Counter,
    restarting: Counter,
    gave_up: Counter,
    shutdown: Counter,
    request_seconds: Histogram,
    inflight: Gauge,
    restarts: Counter,
    rejected_request_too_large: Counter,
    rejected_reply_too_large: Counter,
    rejected_truncated: Counter,
    rejected_unexpected: Counter,
    late_replies: Counter,
    stderr_lines: Counter,
}

impl PortMetrics {
    fn new(name: &str) -> Self {
        let requests = |result: &'static str| {
            metrics::counter!("foundation_port_requests_total",
                "port" => name.to_string(), "result" => result)
        };
        let rejected = |reason: &'static str| {
            metrics::counter!("foundation_port_frames_rejected_total",
                "port" => name.to_string(), "reason" => reason)
        };
        PortMetrics {
            ok: requests("ok"),
            timeout: requests("timeout"),
            exited: requests("child_exited"),
            protocol: requests("protocol_error"),
            too_large: requests("frame_too_large"),
            restarting: requests("restarting"),
            gave_up: requests("gave_up"),
            shutdown: requests("shutdown"),
            request_seconds: metrics::histogram!("foundation_port_request_seconds", "port" => name.to_string()),
            inflight: metrics::gauge!("foundation_port_inflight", "port" => name.to_string()),
            restarts: metrics::counter!("foundation_port_restarts_total", "port" => name.to_string()),
            rejected_request_too_large: rejected("request_too_large"),
            rejected_reply_too_large: rejected("reply_too_large"),
            rejected_truncated: rejected("truncated"),
            rejected_unexpected: rejected("unexpected_reply"),
            late_replies: metrics::counter!("foundation_port_late_replies_total", "port" => name.to_string()),
            stderr_lines: metrics::counter!("foundation_port_stderr_lines_total", "port" => name.to_string()),
        }
    }

    fn result(&self, r: &Result<Bytes>) -> &Counter {
        match r {
            Ok(_) => &self.ok,
            Err(Error::Timeout { .. }) => &self.timeout,
            Err(Error::PortExited { .. }) => &self.exited,
            Err(Error::PortProtocol { .. }) => &self.protocol,
            Err(Error::FrameTooLarge { .. }) => &self.too_large,
            Err(Error::PortRestarting { .. }) => &self.restarting,
            Err(Error::PortGaveUp { .. }) => &self.gave_up,
            Err(_) => &self.shutdown,
        }
    }
}

struct Request {
    payload: Bytes,
    deadline: Instant,
    reply: oneshot::Sender<Result<Bytes>>,
}

impl Port {
    /// A builder for a port running `program` (looked up in `PATH` if it has no slash).
    pub fn builder(program: impl AsRef<Path>) -> PortBuilder {
        PortBuilder {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            name: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            hang_timeout: None,
            max_frame: DEFAULT_MAX_FRAME,
            max_inflight: 1024,
            max_stderr_line: 4096,
            shutdown_grace: Duration::from_secs(5),
            restart: RestartPolicy::default(),
        }
    }

    /// The port's name (metrics label `port`).
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The largest frame this port sends or accepts.
    pub fn max_frame(&self) -> usize {
        self.inner.settings.max_frame
    }

    /// Where the child is in its life.
    pub fn state(&self) -> PortState {
        self.inner.shared.state()
    }

    /// Counters since the port was spawned.
    pub fn stats(&self) -> PortStats {
        let s = &self.inner.shared;
        let pid = s.pid.load(Ordering::Acquire);
        PortStats {
            state: s.state(),
            pid: (pid != 0).then_some(pid),
            restarts: s.restarts.load(Ordering::Relaxed),
            frames_rejected: s.frames_rejected.load(Ordering::Relaxed),
            late_replies: s.late_replies.load(Ordering::Relaxed),
            stderr_lines: s.stderr_lines.load(Ordering::Relaxed),
            inflight: s.inflight.load(Ordering::Relaxed),
        }
    }

    /// Sends `payload` as one frame and returns the child's reply frame, within the
    /// port's request timeout. See the [module docs](self) for the errors.
    pub async fn request(&self, payload: Bytes) -> Result<Bytes> {
        self.request_with_timeout(payload, self.inner.settings.request_timeout)
            .await
    }

    /// Like [`request`](Self::request) with its own timeout.
    pub async fn request_with_timeout(&self, payload: Bytes, timeout: Duration) -> Result<Bytes> {
        let started = Instant::now();
        let result = self.exchange(payload, started + timeout, timeout).await;
        let m = &self.inner.shared.metrics;
        m.result(&result).increment(1);
        m.request_seconds.record(started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(
        &self,
        payload: Bytes,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Bytes> {
        let shared = &self.inner.shared;
        let max = self.inner.settings.max_frame;
        if payload.len() > max {
            shared.reject(&shared.metrics.rejected_request_too_large);
            return Err(Error::FrameTooLarge {
                port: shared.name.to_string(),
                direction: FrameDirection::ToChild,
                size: payload.len(),
                max,
            });
        }
        match shared.state() {
            PortState::Failed => return Err(shared.gave_up()),
            PortState::Stopped => return Err(Error::Shutdown { component: "port" }),
            _ => {}
        }
        let (reply, rx) = oneshot::channel();
        let request = Request {
            payload,
            deadline,
            reply,
        };
        let exchange = async {
            self.inner
                .tx
                .send(request)
                .await
                .map_err(|_| shared.closed())?;
            rx.await.map_err(|_| shared.closed())?
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                operation: format!("request to port `{}`", shared.name),
                after: timeout,
            }),
        }
    }

    /// Kills the running child (outstanding callers get [`Error::PortExited`]); the owner
    /// restarts it after the backoff. During a backoff, starts the next child now.
    pub fn restart(&self) {
        self.inner.shared.restart.notify_one();
    }

    /// Stops the port: no new requests; outstanding ones get up to the shutdown grace to
    /// finish; then the child's stdin is closed and the child is waited for (killed when
    /// the grace runs out). Returns when the owner task and the child are gone. Later
    /// requests fail with [`Error::Shutdown`]. A second call returns at once.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(port = %self.inner.shared.name, error = %e, "port owner task failed");
            }
        }
    }
}

fn spawn_child(settings: &PortBuilder) -> std::io::Result<Child> {
    let mut cmd = Command::new(&settings.program);
    cmd.args(&settings.args)
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &settings.current_dir {
        cmd.current_dir(dir);
    }
    cmd.spawn()
}

/// How long replies are still read after the child exited or stopped reading (its
/// stdout may hold complete replies, or end inside one).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// A request sent to the child and not yet answered.
struct Pending {
    /// Gone (closed) once the caller timed out or was dropped; the reply is then discarded.
    reply: oneshot::Sender<Result<Bytes>>,
    deadline: Instant,
}

/// Why a child's session ended.
enum End {
    /// Shutdown requested (or every handle dropped).
    Shutdown,
    /// The child failed. `head` is the error for the oldest outstanding caller (if the
    /// failure concerns its reply); everyone else gets `PortExited` with `reason`.
    Failed {
        reason: String,
        head: Option<Error>,
        /// Wait briefly for an exit status before killing (the child is probably exiting).
        exiting: bool,
    },
}

/// The task that owns the child, its pipes and the queue of outstanding requests.
struct Owner {
    settings: Arc<PortBuilder>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    cancel: CancellationToken,
    /// Requests taken from the queue during a backoff, to send to the next child.
    waiting: VecDeque<Request>,
}

impl Owner {
    async fn run(mut self, first: Child) {
        let policy = self.settings.restart.clone();
        let mut child = Some(first);
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let end = match child.take() {
                Some(c) => self.session(c).await,
                None => End::Failed {
                    reason: "child could not be started".into(),
                    head: None,
                    exiting: false,
                },
            };
            if matches!(end, End::Shutdown) {
                break;
            }
            if started.elapsed() >= policy.reset_after {
                failures = 0;
            }
            if failures >= policy.max_restarts {
                tracing::error!(port = %self.shared.name, restarts = failures,
                    "port child keeps failing; giving up");
                self.shared.gave_up_after.store(failures, Ordering::Release);
                self.shared.set_state(PortState::Failed);
                self.drain(|s| s.gave_up());
                return;
            }
            failures += 1;
            let delay =
                capped_exponential(policy.initial_backoff, policy.max_backoff, failures - 1);
            if !self.backoff(delay).await {
                break;
            }
            self.shared.restarts.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.restarts.increment(1);
            match spawn_child(&self.settings) {
                Ok(c) => {
                    self.shared
                        .pid
                        .store(c.id().unwrap_or(0), Ordering::Release);
                    tracing::info!(port = %self.shared.name, attempt = failures, "port child restarted");
                    child = Some(c);
                }
                Err(e) => {
                    tracing::warn!(port = %self.shared.name, error = %e, "port child could not be restarted");
                }
            }
        }
        self.shared.set_state(PortState::Stopped);
        self.drain(|_| Error::Shutdown { component: "port" });
    }

    /// Fails every queued request with `error` and closes the queue.
    fn drain(&mut self, error: impl Fn(&Shared) -> Error) {
        self.rx.close();
        for r in self.waiting.drain(..) {
            let _ = r.reply.send(Err(error(&self.shared)));
        }
        while let Ok(r) = self.rx.try_recv() {
            let _ = r.reply.send(Err(error(&self.shared)));
        }
    }

    /// Waits `delay` before the next start, answering requests meanwhile. Returns false
    /// when the port is shutting down.
    async fn backoff(&mut self, delay: Duration) -> bool {
        self.shared.set_state(PortState::Restarting);
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                _ = self.shared.restart.notified() => return true,
                r = self.rx.recv() => match r {
                    None => return false,
                    Some(r) if r.deadline > until && self.waiting.len() < self.settings.max_inflight => {
                        self.waiting.push_back(r);
                    }
                    Some(r) => {
                        let _ = r.reply.send(Err(Error::PortRestarting {
                            port: self.shared.name.to_string(),
                            retry_after: until.saturating_duration_since(Instant::now()),
                        }));
                    }
                },
            }
        }
    }

    /// Runs one child until it fails or the port shuts down; cleans up after it.
    async fn session(&mut self, mut child: Child) -> End {
        let name = self.shared.name.clone();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Cannot happen: all three are piped in `spawn_child`.
            let _ = child.kill().await;
            return End::Failed {
                reason: "child pipes missing".into(),
                head: None,
                exiting: false,
            };
        };
        self.shared
            .pid
            .store(child.id().unwrap_or(0), Ordering::Release);
        self.shared.set_state(PortState::Running);

        let stderr_task = tokio::spawn(forward_stderr(
            stderr,
            name.clone(),
            self.settings.max_stderr_line,
            self.shared.clone(),
        ));
        // Capacity max_inflight: every queued frame has a `Pending` entry, and there are at
        // most max_inflight of those, so `try_send` below never finds the queue full.
        let (frames, frames_rx) = mpsc::channel::<Bytes>(self.settings.max_inflight);
        let mut writer = tokio::spawn(write_frames(stdin, frames_rx));
        let mut writer_done = false;
        let mut reader = FrameReader::new(stdout, self.settings.max_frame);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let hang_timeout = self
            .settings
            .hang_timeout
            .unwrap_or(self.settings.request_timeout);
        let mut last_frame = Instant::now();
        let mut shutdown_at: Option<Instant> = None;
        // Set when the child exited or stopped reading: replies it wrote before that are
        // still read (and a truncated one detected) until its stdout ends or the deadline.
        let mut dying: Option<(Instant, String)> = None;
        let mut exited = false;

        while let Some(r) = self.waiting.pop_front() {
            self.dispatch(r, &frames, &mut pending);
        }

        let end = loop {
            self.publish_inflight(pending.len());
            if shutdown_at.is_some() && pending.is_empty() {
                break End::Shutdown;
            }
            // Ordering: replies come in request order, so only the oldest outstanding
            // request can show that the child is hung.
            let hang_at = pending
                .front()
                .map(|p| p.deadline.max(last_frame) + hang_timeout);
            let can_send = shutdown_at.is_none()
                && dying.is_none()
                && pending.len() < self.settings.max_inflight;
            let drain_until = dying.as_ref().map(|(at, _)| *at);
            tokio::select! {
                _ = self.cancel.cancelled(), if shutdown_at.is_none() => {
                    shutdown_at = Some(Instant::now() + self.settings.shutdown_grace);
                }
                _ = tokio::time::sleep_until(shutdown_at.unwrap_or_else(Instant::now)), if shutdown_at.is_some() => {
                    break End::Shutdown;
                }
                _ = self.shared.restart.notified() => {
                    break End::Failed { reason: "restart requested".into(), head: None, exiting: false };
                }
                frame = reader.next() => match frame {
                    Ok(Some(bytes)) => {
                        last_frame = Instant::now();
                        match pending.pop_front() {
                            Some(p) => {
                                if p.reply.send(Ok(bytes)).is_err() {
                                    self.shared.late_replies.fetch_add(1, Ordering::Relaxed);
                                    self.shared.metrics.late_replies.increment(1);
                                }
                            }
                            None => {
                                self.shared.reject(&self.shared.metrics.rejected_unexpected);
                                break End::Failed {
                                    reason: format!("unexpected reply frame of {} bytes with no request outstanding", bytes.len()),
                                    head: None,
                                    exiting: false,
                                };
                            }
                        }
                    }
                    Ok(None) => {
                        let reason = dying.take().map_or_else(|| "child closed its stdout".to_string(), |(_, r)| r);
                        break End::Failed { reason, head: None, exiting: true };
                    }
                    Err(ReadError::TooLarge(size)) => {
                        self.shared.reject(&self.shared.metrics.rejected_reply_too_large);
                        break End::Failed {
                            reason: format!("child sent an oversized frame ({size} bytes)"),
                            head: Some(Error::FrameTooLarge {
                                port: name.to_string(),
                                direction: FrameDirection::FromChild,
                                size,
                                max: self.settings.max_frame,
                            }),
                            exiting: false,
                        };
                    }
                    Err(ReadError::Truncated(have)) => {
                        self.shared.reject(&self.shared.metrics.rejected_truncated);
                        let reason = format!("stream ended inside a frame ({have} bytes of it read)");
                        break End::Failed {
                            head: Some(Error::PortProtocol { port: name.to_string(), reason: reason.clone() }),
                            reason,
                            exiting: true,
                        };
                    }
                    Err(ReadError::Io(e)) => break End::Failed { reason: format!("reading the child's stdout: {e}"), head: None, exiting: false },
                },
                status = child.wait(), if !exited => {
                    exited = true;
                    let reason = match status {
                        Ok(s) => describe(s),
                        Err(e) => format!("waiting for the child: {e}"),
                    };
                    dying.get_or_insert((Instant::now() + DRAIN_AFTER_EXIT, reason));
                }
                _ = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {
                    let reason = dying.take().map(|(_, r)| r).unwrap_or_default();
                    break End::Failed { reason, head: None, exiting: true };
                }
                _ = tokio::time::sleep_until(hang_at.unwrap_or_else(Instant::now)), if hang_at.is_some() => {
                    break End::Failed {
                        reason: format!("child hung: no reply for {hang_timeout:?} past the oldest request's deadline"),
                        head: None,
                        exiting: false,
                    };
                }
                res = &mut writer, if !writer_done => {
                    writer_done = true;
                    let reason = match res {
                        Ok(Ok(())) => "child's stdin closed".to_string(),
                        Ok(Err(e)) => format!("writing to the child: {e}"),
                        Err(e) => format!("writer task failed: {e}"),
                    };
                    dying.get_or_insert((Instant::now() + DRAIN_AFTER_EXIT, reason));
                }
                r = self.rx.recv(), if can_send => match r {
                    Some(r) => self.dispatch(r, &frames, &mut pending),
                    // Every handle is gone: shut down as if asked to.
                    None => shutdown_at = Some(Instant::now() + self.settings.shutdown_grace),
                },
            }
        };

        // Teardown. Closing the frame queue lets the writer flush and close the stdin.
        drop(frames);
        let status = match &end {
            End::Shutdown => {
                let deadline = shutdown_at.unwrap_or_else(Instant::now);
                if !writer_done {
                    if tokio::time::timeout_at(deadline, &mut writer)
                        .await
                        .is_err()
                    {
                        writer.abort();
                    }
                    writer_done = true;
                }
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => kill(&mut child).await,
                }
            }
            End::Failed { exiting, .. } => {
                let grace = if *exiting {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => s.ok(),
                    Err(_) => kill(&mut child).await,
                }
            }
        };
        if !writer_done {
            writer.abort();
        }
        self.shared.pid.store(0, Ordering::Release);
        // The child is gone, so its stderr ends soon unless a grandchild holds it open.
        let mut stderr_task = stderr_task;
        if tokio::time::timeout(Duration::from_secs(1), &mut stderr_task)
            .await
            .is_err()
        {
            stderr_task.abort();
        }

        let status_text = status.map(describe);
        match &end {
            End::Shutdown => {
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(Error::Shutdown { component: "port" }));
                }
                tracing::debug!(port = %name, status = ?status_text, "port child stopped");
            }
            End::Failed { reason, .. } => {
                let reason = match &status_text {
                    Some(s) if !reason.contains(s.as_str()) => format!("{reason}; {s}"),
                    _ => reason.clone(),
                };
                tracing::warn!(port = %name, outstanding = pending.len(), %reason, "port child failed");
                let mut head = match end {
                    End::Failed { head, .. } => head,
                    End::Shutdown => None,
                };
                for p in pending.drain(..) {
                    let e = head.take().unwrap_or_else(|| Error::PortExited {
                        port: name.to_string(),
                        reason: reason.clone(),
                    });
                    let _ = p.reply.send(Err(e));
                }
                self.publish_inflight(0);
                return End::Failed {
                    reason,
                    head: None,
                    exiting: false,
                };
            }
        }
        self.publish_inflight(0);
        end
    }

    fn dispatch(&self, r: Request, frames: &mpsc::Sender<Bytes>, pending: &mut VecDeque<Pending>) {
        // Do not send what nobody waits for any more.
        if r.reply.is_closed() || r.deadline <= Instant::now() {
            return;
        }
        match frames.try_send(r.payload) {
            Ok(()) => pending.push_back(Pending {
                reply: r.reply,
                deadline: r.deadline,
            }),
            Err(_) => {
                let _ = r.reply.send(Err(Error::PortExited {
                    port: self.shared.name.to_string(),
                    reason: "the writer to the child's stdin stopped".into(),
                }));
            }
        }
    }

    fn publish_inflight(&self, n: usize) {
        self.shared.inflight.store(n as u64, Ordering::Relaxed);
        self.shared.metrics.inflight.set(n as f64);
    }
}

async fn kill(child: &mut Child) -> Option<ExitStatus> {
    let _ = child.start_kill();
    child.wait().await.ok()
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    format!("stopped ({status})")
}

/// Writes frames to the child's stdin, batching what is queued into one flush. Returns
/// when the queue closes (after closing the stdin) or on the first write error.
async fn write_frames(stdin: ChildStdin, mut frames: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, stdin);
    while let Some(frame) = frames.recv().await {
        write_frame(&mut w, &frame).await?;
        while let Ok(frame) = frames.try_recv() {
            write_frame(&mut w, &frame).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await
}

async fn write_frame(w: &mut BufWriter<ChildStdin>, frame: &[u8]) -> std::io::Result<()> {
    // `max_frame <= u32::MAX` is checked at spawn and each request against `max_frame`.
    w.write_all(&(frame.len() as u32).to_be_bytes()).await?;
    w.write_all(frame).await
}

enum ReadError {
    /// The header announced this many bytes, more than `max_frame`.
    TooLarge(usize),
    /// The stream ended this many bytes into a frame.
    Truncated(usize),
    Io(std::io::Error),
}

/// Smallest read into the frame buffer: enough for many small frames per syscall.
const READ_CHUNK: usize = 8 * 1024;

/// Reads 4-byte big-endian length-prefixed frames.
///
/// Cancel safe: the only await is `read_buf`, which appends to the buffer only when it
/// completes, and the buffer lives in the reader, so a `select!` may drop `next()`.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    async fn next(&mut self) -> std::result::Result<Option<Bytes>, ReadError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.max {
                    return Err(ReadError::TooLarge(len));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                self.buf.reserve((4 + len - self.buf.len()).max(READ_CHUNK));
            } else {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated(self.buf.len()))
                };
            }
        }
    }
}

/// Forwards the child's stderr to `tracing`, one event per line, cut at `max_line` bytes.
async fn forward_stderr(stderr: ChildStderr, port: Arc<str>, max_line: usize, shared: Arc<Shared>) {
    let mut r = BufReader::new(stderr);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut truncated = false;
    loop {
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, consumed, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max_line.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        truncated |= chunk.len() > room;
        r.consume(consumed);
        if complete {
            emit_stderr(&port, &line, truncated, &shared);
            line.clear();
            truncated = false;
        }
    }
    if !line.is_empty() {
        emit_stderr(&port, &line, truncated, &shared);
    }
}

fn emit_stderr(port: &str, line: &[u8], truncated: bool, shared: &Shared) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    tracing::warn!(target: "foundation_core::port::stderr", port, truncated, "{text}");
    shared.stderr_lines.fetch_add(1, Ordering::Relaxed);
    shared.metrics.stderr_lines.increment(1);
}

pub mod child {
    //! The child's side of the protocol, for port programs written in Rust: blocking
    //! reads and writes of 4-byte big-endian length-prefixed frames on any `Read`/`Write`
    //! (normally the locked stdin and stdout). The `foundation-correlator` binary uses it.
    //!
    //! ```
    //! use foundation_core::port::child::{read_frame, write_frame, Incoming};
    //!
    //! let mut input: &[u8] = &[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 1, b'!'];
    //! let mut output = Vec::new();
    //! while let Incoming::Frame(request) = read_frame(&mut input, 16)? {
    //!     write_frame(&mut output, &request)?; // echo
    //! }
    //! assert_eq!(output, [0, 0, 0, 2, b'h', b'i', 0, 0, 0, 1, b'!']);
    //! # Ok::<(), std::io::Error>(())
    //! ```

    use std::io::{self, Read, Write};

    /// What [`read_frame`] read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Incoming {
        /// A complete frame's payload.
        Frame(Vec<u8>),
        /// A frame whose header announced this many bytes, more than the limit. Its body
        /// was read and discarded, so the next frame can be read.
        TooLarge(usize),
        /// The stream ended cleanly, between frames.
        End,
    }

    /// Reads one frame. A stream that ends inside a frame is an
    /// [`io::ErrorKind::UnexpectedEof`] error.
    pub fn read_frame<R: Read>(input: &mut R, max: usize) -> io::Result<Incoming> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match input.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(Incoming::End),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("stream ended inside a frame header ({got} of 4 bytes)"),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > max {
            let skipped = io::copy(&mut input.take(len as u64), &mut io::sink())?;
            if skipped < len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended inside an oversized frame ({skipped} of {len} bytes)"),
                ));
            }
            return Ok(Incoming::TooLarge(len));
        }
        let mut payload = vec![0u8; len];
        input.read_exact(&mut payload)?;
        Ok(Incoming::Frame(payload))
    }

    /// Writes one frame (header and payload; the caller flushes). Fails with
    /// [`io::ErrorKind::InvalidInput`] for a payload over 4 GiB − 1.
    pub fn write_frame<W: Write>(output: &mut W, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB - 1")
        })?;
        output.write_all(&len.to_be_bytes())?;
        output.write_all(payload)
    }
}

/// Describes the port metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "foundation_port_requests_total",
        "Requests made to an external port program, by result."
    );
    describe_counter!(
        "foundation_port_restarts_total",
        "Restarts of an external port program."
    );
    describe_counter!(
        "foundation_port_frames_rejected_total",
        "Frames from a port program rejected, by reason."
    );
    describe_counter!(
        "foundation_port_late_replies_total",
        "Replies that arrived after their request timed out."
    );
    describe_counter!(
        "foundation_port_stderr_lines_total",
        "Lines a port program wrote to stderr."
    );
    describe_gauge!(
        "foundation_port_inflight",
        "Requests waiting for a port program's reply."
    );
    describe_histogram!(
        "foundation_port_request_seconds",
        Unit::Seconds,
        "Round-trip time of port requests."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max: usize) -> Vec<std::result::Result<Bytes, String>> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(Some(b)) => out.push(Ok(b)),
                Ok(None) => return out,
                Err(ReadError::TooLarge(n)) => {
                    out.push(Err(format!("too large {n}")));
                    return out;
                }
                Err(ReadError::Truncated(n)) => {
                    out.push(Err(format!("truncated {n}")));
                    return out;
                }
                Err(ReadError::Io(e)) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frame_reader_splits_frames_and_reports_bad_ones() {
        let input = [&[0, 0, 0, 2][..], b"ab", &[0, 0, 0, 0], &[0, 0, 0, 1], b"c"].concat();
        let frames = read_all(&input, 16).await;
        assert_eq!(
            frames,
            vec![
                Ok(Bytes::from_static(b"ab")),
                Ok(Bytes::new()),
                Ok(Bytes::from_static(b"c"))
            ]
        );
        assert_eq!(
            read_all(&[0xff, 0xff, 0xff, 0xff], 16).await,
            vec![Err("too large 4294967295".into())]
        );
        assert_eq!(
            read_all(&[0, 0, 0, 5, b'x'], 16).await,
            vec![Err("truncated 5".into())]
        );
        assert_eq!(read_all(&[0, 0], 16).await, vec![Err("truncated 2".into())]);
        assert_eq!(
            read_all(&[0, 0, 0, 17], 16).await,
            vec![Err("too large 17".into())]
        );
    }

    #[test]
    fn child_side_reads_what_the_host_side_writes_and_skips_oversized_frames() {
        use child::{read_frame, write_frame, Incoming};
        let mut wire = Vec::new();
        write_frame(&mut wire, b"abc").unwrap();
        write_frame(&mut wire, &[9u8; 40]).unwrap();
        write_frame(&mut wire, b"").unwrap();
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r, 32).unwrap(),
            Incoming::Frame(b"abc".to_vec())
        );
        assert_eq!(read_frame(&mut r, 32).unwrap(), Incoming::TooLarge(40));
        assert_eq!(read_frame(&mut r, 32).unwrap(), Incoming::Frame(Vec::new()));
        assert_eq!(read_frame(&mut r, 32).unwrap(), Incoming::End);
        let mut short: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert_eq!(
            read_frame(&mut short, 32).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        let mut short_oversized: &[u8] = &[0, 0, 1, 0, 1, 2];
        assert!(read_frame(&mut short_oversized, 32).is_err());
        let mut half_header: &[u8] = &[0, 0];
        assert!(read_frame(&mut half_header, 32).is_err());
    }
}
