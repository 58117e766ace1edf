//! A dedicated thread for high-priority channel traffic (D380).
//!
//! tokio schedules tasks first in, first out, without priorities: on a machine with few
//! cores, every wake-up on an urgent request's path (writer, the peer's reader, the
//! reply's writer and reader) waits behind whatever bulk reader and writer polls are
//! queued on the workers, and the sockets' readiness is only looked at between those
//! polls. A [`PriorityThread`] is one OS thread running its own single-threaded tokio
//! runtime with its own I/O driver and timer. [`Channels`](super::Channels) and
//! [`Inbox`](super::Inbox) given its [`handle`](PriorityThread::handle) run the writer and
//! reader tasks of [`Priority::High`](super::Priority::High) channels there and register
//! their TCP sockets with its driver; the thread is idle but for that traffic, so the OS
//! wakes it as soon as an urgent frame arrives or is queued.
//!
//! Nodes share one per process (named `fprio`) when `NodeSettings::priority_thread` is on
//! and they are started on a multi-thread runtime (never on a `current_thread` runtime,
//! so tests on tokio's paused clock keep one clock and stay deterministic); the last node
//! to shut down stops it at the end of `Node::shutdown`.
//!
//! | metric | kind |
//! |---|---|
//! | `foundation_channel_priority_threads` | gauge: priority threads running in the process |
//! | `foundation_channel_priority_nice_total` | counter, `result` (`ok`, `refused`): attempts to raise the thread's priority |

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The gauge of running priority threads.
pub(crate) const THREADS: &str = "foundation_channel_priority_threads";
/// Attempts to set a priority thread's nice value, by result (`ok`, `refused`).
pub(crate) const NICE: &str = "foundation_channel_priority_nice_total";

/// One OS thread running a single-threaded tokio runtime (I/O and time enabled) for
/// high-priority channel tasks. Owned by whoever started it (a node); stopped by
/// [`shutdown`](Self::shutdown) or, without waiting, when dropped. Stopping it drops
/// every task still on it.
#[derive(Debug)]
pub struct PriorityThread {
    handle: Handle,
    stop: CancellationToken,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PriorityThread {
    /// Starts the thread, named `name` (shown by `top -H`, debuggers and panics), and,
    /// with `nice`, asks the OS to run it at that nice value (-20 ..= 19; lower runs
    /// sooner when the CPUs are busy; D381). A refusal (raising priority needs
    /// `CAP_SYS_NICE` or `RLIMIT_NICE`) leaves the thread at the process's priority; it is
    /// logged and counted (`foundation_channel_priority_nice_total{result="refused"}`).
    /// Fails if the runtime or the thread cannot be created (out of resources).
    pub fn start(name: &str, nice: Option<i32>) -> Result<PriorityThread> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .map_err(|e| Error::io(name, e))?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let (tx, exited) = oneshot::channel();
        let token = stop.clone();
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let gauge = metrics::gauge!(THREADS);
                gauge.increment(1.0);
                if let Some(nice) = nice {
                    set_nice(nice);
                }
                let _ = started_tx.send(());
                rt.block_on(token.cancelled());
                // Drops every task still on the runtime, on this thread.
                drop(rt);
                gauge.decrement(1.0);
                let _ = tx.send(());
            })
            .map_err(|e| Error::io(name, e))?;
        // Returns once the thread runs (named, priority set): a few microseconds, once
        // per process in a node's start.
        let _ = started.recv();
        Ok(PriorityThread {
            handle,
            stop,
            exited: Mutex::new(Some(exited)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The runtime's handle: spawn on it (`Handle::spawn`, `JoinSet::spawn_on`).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Whether the thread has not been told to stop yet.
    pub fn is_running(&self) -> bool {
        !self.stop.is_cancelled()
    }

    /// Stops the runtime (dropping the tasks still on it) and waits until `deadline` for
    /// the thread to end. Returns whether it ended in time; if not, it ends on its own
    /// later (its tasks are dropped either way). Calling it again is harmless.
    pub async fn shutdown(&self, deadline: Instant) -> bool {
        self.stop.cancel();
        let exited = self.exited.lock().take();
        let Some(exited) = exited else {
            return self.thread.lock().is_none();
        };
        let ended = tokio::time::timeout_at(deadline, exited).await.is_ok();
        if ended {
            // The thread has sent its last message: joining it does not block for long.
            if let Some(t) = self.thread.lock().take() {
                let _ = t.join();
            }
        }
        ended
    }
}

impl Drop for PriorityThread {
    fn drop(&mut self) {
        // Not joined: the thread ends by itself once its runtime has dropped its tasks.
        self.stop.cancel();
    }
}

/// Sets the calling thread's nice value (Linux: per thread); counts and logs a refusal.
fn set_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    let r = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
    #[cfg(not(target_os = "linux"))]
    let r: std::io::Result<()> = Err(std::io::Error::other("per-thread priority is Linux only"));
    let result = match r {
        Ok(()) => "ok",
        Err(e) => {
            tracing::info!(
                nice,
                error = %e,
                "the priority thread keeps the process's priority (raising it needs CAP_SYS_NICE or RLIMIT_NICE)"
            );
            "refused"
        }
    };
    metrics::counter!(NICE, "result" => result).increment(1);
}

/// The process's shared priority thread, while any node holds it.
static SHARED: parking_lot::Mutex<std::sync::Weak<PriorityThread>> =
    parking_lot::Mutex::new(std::sync::Weak::new());

/// The name of the process's shared priority thread.
pub(crate) const SHARED_NAME: &str = "fprio";

impl PriorityThread {
    /// The process's shared priority thread (named `fprio`), started with `nice` if no
    /// node holds one now. Every node of the process uses the same one: a process runs
    /// one thread for all its nodes' high-priority traffic, however many nodes it
    /// simulates. It stops when the last holder shuts it down or drops it.
    pub(crate) fn shared(nice: Option<i32>) -> Result<Arc<PriorityThread>> {
        let mut shared = SHARED.lock();
        if let Some(p) = shared.upgrade().filter(|p| p.is_running()) {
            return Ok(p);
        }
        let p = Arc::new(PriorityThread::start(SHARED_NAME, nice)?);
        *shared = Arc::downgrade(&p);
        Ok(p)
    }
}

/// Whether a node started from this runtime context should use a priority thread: only
/// on a multi-thread runtime (a `current_thread` runtime, and so tokio's paused clock,
/// keeps everything on itself).
pub(crate) fn wanted_here() -> bool {
    Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn runs_tasks_on_its_own_named_thread_and_stops() {
        let p = PriorityThread::start("fprio-unit", None).unwrap();
        assert!(p.is_running());
        let name = p
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("fprio-unit"));
        // A task still running at shutdown is dropped, not left behind.
        let (tx, rx) = oneshot::channel::<()>();
        p.handle().spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        assert!(p.shutdown(later()).await);
        assert!(!p.is_running());
        assert!(rx.await.is_err(), "the task was dropped with the runtime");
        // Nothing runs on it any more; a second shutdown is harmless.
        assert!(p.handle().spawn(async {}).await.is_err());
        assert!(p.shutdown(later()).await);
    }

    #[tokio::test]
    async fn dropping_it_stops_the_thread() {
        let p = PriorityThread::start("fprio-drop", Some(0)).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        p.handle().spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(p);
        // Resolves once the thread has dropped its runtime's tasks.
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn shared_is_one_thread_until_its_last_holder_lets_go() {
        let a = PriorityThread::shared(None).unwrap();
        let b = PriorityThread::shared(None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        drop(a);
        // The last holder stops it; the next caller gets a new one.
        let b = Arc::try_unwrap(b).expect("the only holder");
        assert!(b.shutdown(later()).await);
        let c = PriorityThread::shared(None).unwrap();
        assert!(c.is_running());
        let name = c
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some(SHARED_NAME));
    }

    #[test]
    fn wanted_only_on_a_multi_thread_runtime() {
        assert!(!wanted_here(), "outside any runtime");
        let ct = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!ct.block_on(async { wanted_here() }));
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(mt.block_on(async { wanted_here() }));
    }
}
