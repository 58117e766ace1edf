//! Request/reply: pending requests keyed by (server node, id), and the bounded, owned set
//! of request handlers.
//!
//! Ids are per node run; a reply is matched by the node that answered and the id, so a
//! reply from another node (or a stale one) never completes the wrong request. A request
//! future that is dropped (cancelled, timed out) removes its entry at once.
//!
//! Handlers run in a [`JoinSet`] owned by the node, at most `max_concurrent_requests` at a
//! time: a request beyond the bound is answered at once with an "overloaded" error and
//! counted (`foundation_node_requests_total{result="rejected"}`); shutdown aborts the
//! handlers still running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use super::wire::ReplyError;

type Waiter = oneshot::Sender<Result<Bytes, ReplyError>>;

pub(crate) struct Requests {
    next_id: AtomicU64,
    pending: Mutex<HashMap<(String, u64), Waiter>>,
    limit: Arc<Semaphore>,
    running: Mutex<JoinSet<()>>,
    /// Handlers by (requesting node, request id), for cancellation.
    by_request: Mutex<HashMap<(String, u64), AbortHandle>>,
}

/// Removes a pending request when dropped (a cancelled request leaves nothing behind).
pub(crate) struct Pending<'a> {
    requests: &'a Requests,
    key: (String, u64),
}

impl Pending<'_> {
    /// Whether the request is still waiting (not answered).
    pub fn waiting(&self) -> bool {
        self.requests.pending.lock().contains_key(&self.key)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.requests.pending.lock().remove(&self.key);
    }
}

impl Requests {
    pub fn new(max_concurrent: usize) -> Self {
        Requests {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            limit: Arc::new(Semaphore::new(max_concurrent.max(1))),
            running: Mutex::new(JoinSet::new()),
            by_request: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a request to `node`; returns its id, the receiver of the reply and the
    /// guard that unregisters it.
    pub fn start(
        &self,
        node: &str,
    ) -> (
        u64,
        oneshot::Receiver<Result<Bytes, ReplyError>>,
        Pending<'_>,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let key = (node.to_string(), id);
        self.pending.lock().insert(key.clone(), tx);
        (
            id,
            rx,
            Pending {
                requests: self,
                key,
            },
        )
    }

    /// Completes request `id` answered by `from`; false if nobody waits for it.
    pub fn complete(&self, from: &str, id: u64, body: Result<Bytes, ReplyError>) -> bool {
        let waiter = self.pending.lock().remove(&(from.to_string(), id));
        match waiter {
            Some(tx) => tx.send(body).is_ok(),
            None => false,
        }
    }

    /// Requests waiting for a reply.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// A handler slot, if the bound allows one now.
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.clone().try_acquire_owned().ok()
    }

    /// Runs a handler in the owned set.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = self.running.lock();
        while running.try_join_next().is_some() {}
        running.spawn(fut);
    }

    /// Runs the handler of request `id` from `from` in the owned set, cancellable by
    /// [`cancel`](Self::cancel).
    pub fn spawn_handler<F>(&self, from: &str, id: u64, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = self.running.lock();
        while running.try_join_next().is_some() {}
        let handle = running.spawn(fut);
        let mut by = self.by_request.lock();
        by.retain(|_, h| !h.is_finished());
        by.insert((from.to_string(), id), handle);
    }

    /// Aborts the handler of request `id` from `from`, if it still runs.
    pub fn cancel(&self, from: &str, id: u64) -> bool {
        match self.by_request.lock().remove(&(from.to_string(), id)) {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Handlers running now.
    pub fn running(&self) -> usize {
        let mut running = self.running.lock();
        while running.try_join_next().is_some() {}
        running.len()
    }

    /// Aborts every handler; returns the set to wait on.
    pub fn abort_all(&self) -> JoinSet<()> {
        let mut set = std::mem::take(&mut *self.running.lock());
        set.abort_all();
        set
    }
}
