//! Links: one background task per peer owns connecting, the handshake, reconnecting with
//! capped exponential backoff and jitter, and replacing a failed [`Channels`].
//!
//! Nobody else ever waits for a connection to be made: the user's `send` may wait (a
//! bounded time) for the link to come up; every path that handles inbound traffic or runs
//! the heartbeat only looks at the link's current state and queues without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelSettings, Channels, TrySendError};
use crate::error::{Error, Result};
use crate::interpose::Interposer;
use crate::transport::Transport;
use foundation_beam::core::telemetry::TaskGuard;

/// Messages a link holds while it is not up (see [`Link::send_or_park`]).
pub(crate) const BACKLOG: usize = 256;

/// Called with each new link.
pub(crate) type OnUp = Box<dyn Fn(&str, &Channels) + Send + Sync>;

/// What every link task needs.
pub(crate) struct LinkContext {
    pub me: String,
    pub transport: Arc<dyn Transport>,
    pub channels: ChannelSettings,
    pub interposer: Option<Arc<Interposer>>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Called with each new link (sends the first gossip).
    pub on_up: OnUp,
    /// The node's priority thread's runtime, if it has one: high-priority channels'
    /// sender tasks run there (D380).
    pub priority: Option<tokio::runtime::Handle>,
    /// The node's route epoch (D440): bumped after every change of what decides where a
    /// message to a peer goes (links, their channels, members down, refusals, the
    /// topology), so the per-thread route cache of `send` knows its entries are stale.
    pub route_epoch: Arc<AtomicU64>,
}

/// One peer's link.
pub(crate) struct Link {
    pub peer: String,
    addr: Mutex<String>,
    up: watch::Sender<Option<Arc<Channels>>>,
    wake: Notify,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Messages queued by [`Link::send_or_park`] while the link was not up; sent when
    /// it comes up. At most [`BACKLOG`].
    backlog: Mutex<VecDeque<(String, Option<u64>, Bytes)>>,
    /// The [`Links`] round in which application traffic last went on this link (see
    /// [`Links::used`]); the round it was made in, until then. Shared with `send`'s
    /// route cache (D440), which stamps it without holding the link.
    used: Arc<AtomicU64>,
}

impl Link {
    /// The link's last-used stamp (see [`Links::used`]), for `send`'s route cache.
    pub fn used_stamp(&self) -> &Arc<AtomicU64> {
        &self.used
    }

    /// The live channels, if the link is up.
    pub fn current(&self) -> Option<Arc<Channels>> {
        self.up.borrow().as_ref().filter(|c| !c.is_ended()).cloned()
    }

    /// Waits up to `within` for the link to be up.
    pub async fn ready(&self, within: Duration) -> Result<Arc<Channels>> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        self.wake.notify_one();
        let mut rx = self.up.subscribe();
        let wait = async {
            loop {
                if let Some(c) = rx.borrow_and_update().as_ref().filter(|c| !c.is_ended()) {
                    return Some(c.clone());
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(within, wait).await {
            Ok(Some(c)) => Ok(c),
            _ => Err(Error::NotConnected {
                node: self.peer.clone(),
                reason: format!("no link within {within:?}"),
            }),
        }
    }

    /// Queues `payload` on `channel` if the link is up and the queue has room; never
    /// waits. Failures are counted under `reason`'s kind by the caller.
    pub fn try_send(&self, channel: &str, key: Option<u64>, payload: Bytes) -> Result<()> {
        let Some(c) = self.current() else {
            return Err(Error::NotConnected {
                node: self.peer.clone(),
                reason: "link down".into(),
            });
        };
        let sender = c.sender(channel)?;
        sender.try_send(key, payload).map_err(|e| match e {
            TrySendError::Full { .. } => Error::Full {
                node: self.peer.clone(),
            },
            TrySendError::Closed { reason, .. } => Error::NotConnected {
                node: self.peer.clone(),
                reason,
            },
        })
    }

    /// Like [`try_send`](Self::try_send), but a link that is not up (yet) holds the
    /// message in a bounded backlog, sent as soon as it comes up, and is asked to connect
    /// now. Never waits. For messages that must not be lost to a link still being made
    /// (a topology's protocol messages, broadcast hops, relays): a partial-view topology
    /// changes its neighbours faster than links come up. Fails when the backlog is full.
    ///
    /// Order: messages given to this method reach the connection in the order of the
    /// calls, backlog or not (the backlog's lock is held while it is sent, and a message
    /// goes straight to the connection only while the backlog is empty).
    pub fn send_or_park(&self, channel: &str, key: Option<u64>, payload: Bytes) -> Result<()> {
        let mut backlog = self.backlog.lock();
        if backlog.is_empty() && self.current().is_some() {
            return self.try_send(channel, key, payload);
        }
        if backlog.len() >= BACKLOG {
            return Err(Error::Full {
                node: self.peer.clone(),
            });
        }
        backlog.push_back((channel.to_string(), key, payload));
        metrics::gauge!("foundation_node_link_backlog").increment(1.0);
        // Came up meanwhile: its flush may have run before our push.
        if self.current().is_some() {
            self.flush_locked(&mut backlog);
        } else {
            drop(backlog);
            self.poke();
        }
        Ok(())
    }

    /// Sends the backlog on the live link (never waits); what does not fit is counted.
    fn flush(&self) {
        let mut backlog = self.backlog.lock();
        self.flush_locked(&mut backlog);
    }

    fn flush_locked(&self, backlog: &mut VecDeque<(String, Option<u64>, Bytes)>) {
        if backlog.is_empty() {
            return;
        }
        metrics::gauge!("foundation_node_link_backlog").decrement(backlog.len() as f64);
        for (channel, key, payload) in backlog.drain(..) {
            if self.try_send(&channel, key, payload).is_err() {
                metrics::counter!("foundation_node_dropped_total", "reason" => "backlog_failed")
                    .increment(1);
            }
        }
    }

    /// Asks the task to try now instead of at the end of its backoff.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Updates the address to dial.
    pub fn set_addr(&self, addr: &str) {
        let mut a = self.addr.lock();
        if *a != addr {
            *a = addr.to_string();
        }
    }

    fn stop(&self) -> Option<Arc<Channels>> {
        self.cancel.cancel();
        let dropped = self.backlog.lock().drain(..).count();
        if dropped > 0 {
            metrics::gauge!("foundation_node_link_backlog").decrement(dropped as f64);
            metrics::counter!("foundation_node_dropped_total", "reason" => "backlog_failed")
                .increment(dropped as u64);
        }
        self.up.send_replace(None)
    }
}

/// Every link of a node, by peer name.
pub(crate) struct Links {
    ctx: Arc<LinkContext>,
    map: Mutex<HashMap<String, Arc<Link>>>,
    cancel: CancellationToken,
    /// The round counter [`Link`]s' last-used stamps are taken from
    /// ([`next_round`](Self::next_round), once per membership round).
    round: AtomicU64,
}

impl Links {
    pub fn new(ctx: LinkContext, cancel: CancellationToken) -> Self {
        Links {
            ctx: Arc::new(ctx),
            map: Mutex::new(HashMap::new()),
            cancel,
            round: AtomicU64::new(0),
        }
    }

    /// Marks `link` as carrying application traffic this round (D430). On every send: a
    /// relaxed load of two counters, and a relaxed store at most once per round per link
    /// (no lock, no read-modify-write, the cache line stays shared while the stamp is
    /// current).
    #[inline]
    pub fn used(&self, link: &Link) {
        self.used_stamp(&link.used);
    }

    /// [`used`](Self::used) on a link's stamp ([`Link::used_stamp`]).
    #[inline]
    pub fn used_stamp(&self, stamp: &AtomicU64) {
        let round = self.round.load(Ordering::Relaxed);
        if stamp.load(Ordering::Relaxed) != round {
            stamp.store(round, Ordering::Relaxed);
        }
    }

    /// Starts the next round (called once per membership round).
    pub fn next_round(&self) {
        self.round.fetch_add(1, Ordering::Relaxed);
    }

    /// Whole rounds since `link` last carried application traffic (0: this round; a
    /// link counts as used in the round it was made in).
    pub fn idle_rounds(&self, link: &Link) -> u64 {
        self.round
            .load(Ordering::Relaxed)
            .saturating_sub(link.used.load(Ordering::Relaxed))
    }

    /// The node's route epoch (see [`LinkContext::route_epoch`]).
    pub fn route_epoch(&self) -> &AtomicU64 {
        &self.ctx.route_epoch
    }

    /// Marks the routes as changed (see [`LinkContext::route_epoch`]).
    pub fn routes_changed(&self) {
        self.ctx.route_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, peer: &str) -> Option<Arc<Link>> {
        self.map.lock().get(peer).cloned()
    }

    /// The link to `peer`, started (in the background) if there is none.
    pub fn ensure(&self, peer: &str, addr: &str) -> Arc<Link> {
        let mut map = self.map.lock();
        if let Some(l) = map.get(peer) {
            l.set_addr(addr);
            return l.clone();
        }
        let link = Arc::new(Link {
            peer: peer.to_string(),
            addr: Mutex::new(addr.to_string()),
            up: watch::channel(None).0,
            wake: Notify::new(),
            cancel: self.cancel.child_token(),
            task: Mutex::new(None),
            backlog: Mutex::new(VecDeque::new()),
            used: Arc::new(AtomicU64::new(self.round.load(Ordering::Relaxed))),
        });
        let task = tokio::spawn(run(link.clone(), self.ctx.clone(), None));
        *link.task.lock() = Some(task);
        map.insert(peer.to_string(), link.clone());
        metrics::gauge!("foundation_node_links").set(map.len() as f64);
        drop(map);
        self.routes_changed();
        link
    }

    /// Adopts channels made by the caller (a join) as the link to their peer, unless a
    /// link exists already.
    pub fn adopt(&self, addr: &str, channels: Channels) -> Arc<Link> {
        let peer = channels.peer().to_string();
        let mut map = self.map.lock();
        if let Some(l) = map.get(&peer) {
            if l.current().is_none() {
                l.poke();
            }
            return l.clone();
        }
        let link = Arc::new(Link {
            peer: peer.clone(),
            addr: Mutex::new(addr.to_string()),
            up: watch::channel(None).0,
            wake: Notify::new(),
            cancel: self.cancel.child_token(),
            task: Mutex::new(None),
            backlog: Mutex::new(VecDeque::new()),
            used: Arc::new(AtomicU64::new(self.round.load(Ordering::Relaxed))),
        });
        let task = tokio::spawn(run(link.clone(), self.ctx.clone(), Some(channels)));
        *link.task.lock() = Some(task);
        map.insert(peer, link.clone());
        metrics::gauge!("foundation_node_links").set(map.len() as f64);
        drop(map);
        self.routes_changed();
        link
    }

    /// Stops and forgets the link to `peer` (its queued messages are dropped, counted).
    pub fn remove(&self, peer: &str) {
        let link = self.map.lock().remove(peer);
        if let Some(l) = link {
            drop(l.stop());
        }
        self.routes_changed();
        metrics::gauge!("foundation_node_links").set(self.map.lock().len() as f64);
    }

    /// Takes the link to `peer` out of service without dropping what is queued on it:
    /// returns its channels (if up) for the caller to drain with
    /// [`Channels::shutdown`] under a deadline. Used by a topology switch to tear down
    /// links the new overlay no longer wants.
    pub fn retire(&self, peer: &str) -> Option<Arc<Channels>> {
        let link = self.map.lock().remove(peer);
        let channels = link.and_then(|l| l.stop());
        self.routes_changed();
        metrics::gauge!("foundation_node_links").set(self.map.lock().len() as f64);
        channels
    }

    /// Peers whose link is up.
    pub fn up_peers(&self) -> Vec<Arc<Link>> {
        self.map
            .lock()
            .values()
            .filter(|l| l.current().is_some())
            .cloned()
            .collect()
    }

    /// Stops every link task; returns the live channels (for a graceful drain) and the
    /// tasks to wait for.
    pub fn stop_all(&self) -> (Vec<Arc<Channels>>, Vec<JoinHandle<()>>) {
        let links: Vec<Arc<Link>> = self.map.lock().drain().map(|(_, l)| l).collect();
        self.routes_changed();
        let mut channels = Vec::new();
        let mut tasks = Vec::new();
        for l in links {
            if let Some(c) = l.stop() {
                channels.push(c);
            }
            if let Some(t) = l.task.lock().take() {
                tasks.push(t);
            }
        }
        (channels, tasks)
    }
}

async fn connect(ctx: &LinkContext, addr: &str) -> Result<Channels> {
    let mut builder = Channels::builder(ctx.transport.clone(), addr).settings(ctx.channels.clone());
    if let Some(i) = &ctx.interposer {
        builder = builder.interposer(i.clone(), &ctx.me);
    }
    if let Some(rt) = &ctx.priority {
        builder = builder.priority_runtime(rt.clone());
    }
    builder.connect().await
}

/// Opens the link to `addr` from the caller's task (a join), before the peer's name is
/// known.
pub(crate) async fn connect_addr(links: &Links, addr: &str) -> Result<Arc<Link>> {
    let channels = connect(&links.ctx, addr).await?;
    if channels.peer() == links.ctx.me {
        return Err(Error::InvalidArgument(format!(
            "`{addr}` is this node itself"
        )));
    }
    Ok(links.adopt(addr, channels))
}

async fn run(link: Arc<Link>, ctx: Arc<LinkContext>, mut first: Option<Channels>) {
    let _live = TaskGuard::new();
    let mut delay = ctx.backoff_base;
    loop {
        if link.cancel.is_cancelled() {
            break;
        }
        let attempt = match first.take() {
            Some(c) => Ok(c),
            None => {
                let addr = link.addr.lock().clone();
                tokio::select! {
                    _ = link.cancel.cancelled() => break,
                    r = connect(&ctx, &addr) => r,
                }
            }
        };
        match attempt {
            Ok(c) if c.peer() == link.peer => {
                let c = Arc::new(c);
                (ctx.on_up)(&link.peer, &c);
                link.up.send_replace(Some(c.clone()));
                ctx.route_epoch.fetch_add(1, Ordering::AcqRel);
                link.flush();
                metrics::counter!("foundation_node_link_events_total", "event" => "up")
                    .increment(1);
                delay = ctx.backoff_base;
                tokio::select! {
                    _ = link.cancel.cancelled() => break,
                    _ = c.ended() => {}
                }
                link.up.send_replace(None);
                ctx.route_epoch.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("foundation_node_link_events_total", "event" => "down")
                    .increment(1);
                tracing::debug!(peer = %link.peer, "link down; reconnecting");
            }
            Ok(c) => {
                metrics::counter!("foundation_node_link_events_total", "event" => "wrong_peer")
                    .increment(1);
                tracing::warn!(
                    expected = %link.peer,
                    got = %c.peer(),
                    "address answered with another node's name"
                );
            }
            Err(e) => {
                metrics::counter!("foundation_node_reconnect_failures_total").increment(1);
                tracing::debug!(peer = %link.peer, error = %e, "link attempt failed");
            }
        }
        // Capped exponential backoff with jitter (half to full delay).
        let wait = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            _ = link.cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = link.wake.notified() => {}
        }
        delay = (delay * 2).min(ctx.backoff_max);
    }
}
