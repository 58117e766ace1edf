//! The route cache of `send` (D440): where a message to a node goes (the next hop's link
//! and its live channels), remembered per thread for as long as nothing that decides the
//! route changes.
//!
//! Routing a message the slow way takes the `down` map's lock, the refusals, the
//! topology's lock (and a `String` for the hop), the link table's lock and the link's
//! watch: per message, most of `send().await`'s cost while the queue takes it (D415).
//! Every change of routing state bumps one counter, the node's *route epoch*, after the
//! change: a member declared down or up again, a refusal made or lifted, any mutable
//! access to the topology (a round, a protocol message, a switch), a link made, replaced,
//! removed or retired, a link's channels up or down, shutdown. An entry is used only
//! while the epoch is the one read *before* it was looked up, so a route is never used
//! after a change that happened before the send began; a send racing a change behaves as
//! if it came just before it. Entries hold a weak reference to the channels (a cache never
//! keeps a link's connections alive) and the link's last-used stamp (D430; stamped on
//! every send, cached or not), and channels that have ended fall back to the slow path.
//! Transient direct hops (a destination outside the overlay) are never cached: whether
//! one is allowed depends on the view, which is not part of the epoch.
//!
//! `FOUNDATION_NODE_ROUTE_CACHE=0` (read once when a node starts) turns the cache off
//! for that node, to compare the two paths in one binary (the node bench's A/B).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};

use super::link::Link;
use super::Inner;
use crate::channel::Channels;
use crate::error::{Error, Result};
use crate::topology::Topology;

/// The environment variable that turns the route cache off (`0`) or on (`1`, the default).
pub(crate) const ROUTE_CACHE_ENV: &str = "FOUNDATION_NODE_ROUTE_CACHE";

/// Entries a thread keeps (over all nodes of the process); the oldest is replaced.
const ROUTES_PER_THREAD: usize = 8;

/// Whether the route cache is on, from [`ROUTE_CACHE_ENV`]; a value other than `0` or
/// `1` is an error.
pub(crate) fn route_cache_enabled() -> Result<bool> {
    match std::env::var(ROUTE_CACHE_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(true),
        Ok(v) if v == "1" => Ok(true),
        Ok(v) if v == "0" => Ok(false),
        Ok(v) => Err(Error::InvalidArgument(format!(
            "{ROUTE_CACHE_ENV} must be 0 or 1, not {v:?}"
        ))),
        Err(std::env::VarError::NotUnicode(v)) => Err(Error::InvalidArgument(format!(
            "{ROUTE_CACHE_ENV} must be 0 or 1, not {v:?}"
        ))),
    }
}

/// Node ids for cache entries (a node's address could be reused by a later node).
static NEXT_NODE_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh id for a node's cache entries.
pub(crate) fn next_node_id() -> u64 {
    NEXT_NODE_ID.fetch_add(1, Ordering::Relaxed)
}

struct Entry {
    node: u64,
    epoch: u64,
    to: String,
    /// The hop's link's last-used stamp (D430), stamped on every cached send.
    used: Arc<AtomicU64>,
    channels: Weak<Channels>,
}

thread_local! {
    static ROUTES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// The node's topology: [`lock`](Self::lock) is for any access, and bumps the route
/// epoch when released if the topology was borrowed mutably through it (an `&mut self`
/// method, an assignment); [`read`](Self::read) is for the router's read-only look-ups.
pub(crate) struct TopologyCell {
    topology: Mutex<Topology>,
    epoch: Arc<AtomicU64>,
}

impl TopologyCell {
    pub fn new(topology: Topology, epoch: Arc<AtomicU64>) -> Self {
        TopologyCell {
            topology: Mutex::new(topology),
            epoch,
        }
    }

    /// The topology, for any access (the route epoch is bumped when the guard is
    /// dropped if it was borrowed mutably).
    pub fn lock(&self) -> TopologyGuard<'_> {
        TopologyGuard {
            guard: self.topology.lock(),
            epoch: &self.epoch,
            mutated: false,
        }
    }

    /// The topology, for a read-only look-up (no bump).
    pub fn read(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock()
    }
}

/// A [`TopologyCell::lock`] guard.
pub(crate) struct TopologyGuard<'a> {
    guard: MutexGuard<'a, Topology>,
    epoch: &'a AtomicU64,
    /// Whether the topology was borrowed mutably through this guard.
    mutated: bool,
}

impl Deref for TopologyGuard<'_> {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.guard
    }
}

impl DerefMut for TopologyGuard<'_> {
    fn deref_mut(&mut self) -> &mut Topology {
        self.mutated = true;
        &mut self.guard
    }
}

impl Drop for TopologyGuard<'_> {
    fn drop(&mut self) {
        // After every change made under the guard (the lock is released just after).
        if self.mutated {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Inner {
    /// The route epoch, read before a slow look-up whose result may be cached.
    pub(super) fn route_epoch(&self) -> u64 {
        self.links.route_epoch().load(Ordering::Acquire)
    }

    /// The cached next hop's live channels towards `to`, if cached under the current
    /// route epoch; the hop's link is stamped as used (`Links::used`, D430).
    pub(super) fn cached_route(&self, to: &str) -> Option<Arc<Channels>> {
        if !self.route_cache {
            return None;
        }
        let epoch = self.route_epoch();
        ROUTES.with(|routes| {
            let routes = routes.try_borrow().ok()?;
            let e = routes.iter().find(|e| e.node == self.id && e.to == to)?;
            if e.epoch != epoch {
                return None;
            }
            let channels = e.channels.upgrade()?;
            if channels.is_ended() {
                return None;
            }
            self.links.used_stamp(&e.used);
            Some(channels)
        })
    }

    /// Caches `link` and `channels` as the route to `to`, found by a slow look-up that
    /// began under route epoch `epoch`.
    pub(super) fn remember_route(
        &self,
        to: &str,
        epoch: u64,
        link: &Arc<Link>,
        channels: &Arc<Channels>,
    ) {
        if !self.route_cache {
            return;
        }
        ROUTES.with(|routes| {
            let Ok(mut routes) = routes.try_borrow_mut() else {
                return;
            };
            let entry = Entry {
                node: self.id,
                epoch,
                to: to.to_string(),
                used: link.used_stamp().clone(),
                channels: Arc::downgrade(channels),
            };
            if let Some(i) = routes.iter().position(|e| e.node == self.id && e.to == to) {
                routes[i] = entry;
                return;
            }
            if routes.len() >= ROUTES_PER_THREAD {
                routes.remove(0);
            }
            routes.push(entry);
        });
    }
}

#[cfg(test)]
mod tests {
    //! Invalidations a public test cannot isolate (each is followed at once by a send,
    //! with no membership round, which would bump the epoch anyway, in between).

    use std::time::Duration;

    use super::*;
    use crate::node::{Node, NodeSettings, SendOptions};
    use crate::transport::{
        ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
    };

    const KEYED: SendOptions = SendOptions {
        key: Some(1),
        urgency: crate::channel::Urgency::Normal,
    };

    async fn pair() -> (Node, Node) {
        let net = MemoryNetwork::new();
        let secret = ClusterSecret::generate();
        let node = |name: &'static str| {
            let t = MemoryTransport::new(
                &net,
                TransportSettings {
                    cluster: "route-cache".into(),
                    node: name.into(),
                    security: Security::Secret(secret.clone()),
                    ..TransportSettings::default()
                },
            )
            .unwrap();
            let t: Arc<dyn Transport> = Arc::new(t);
            let s = NodeSettings {
                listen: format!("mem://{name}"),
                ..NodeSettings::default()
            };
            Node::start(t, name, s)
        };
        let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
        b.join(&[a.addr()]).await.unwrap();
        for _ in 0..400 {
            if a.members().iter().filter(|m| m.up).count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(a.members().iter().filter(|m| m.up).count(), 2);
        (a, b)
    }

    /// A refusal made after the route was cached applies to the next send; lifting it
    /// lets the next send through. Fails with the bumps in `check_table` removed.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_invalidates_a_cached_route() {
        let (a, b) = pair().await;
        let mut inbox = b.register::<u64>("inbox");
        a.send("b", "inbox", &1u64, KEYED).await.unwrap();
        assert!(a.inner.cached_route("b").is_some(), "cached");
        assert!(a.inner.check_table("b", "messages=other"));
        let e = a.send("b", "inbox", &2u64, KEYED).await.unwrap_err();
        assert!(
            matches!(&e, Error::ChannelTableMismatch { node, .. } if node == "b"),
            "{e}"
        );
        assert!(!a.inner.check_table("b", ""));
        a.send("b", "inbox", &3u64, KEYED).await.unwrap();
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), 1));
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), 3));
        a.shutdown().await;
        b.shutdown().await;
    }

    /// A link retired (its channels still alive, draining, not ended) is not used from
    /// the cache: the next send looks the route up again, which makes a new link. Fails
    /// with the bump in `Links::retire` removed (the send then goes on the retired
    /// channels and no new link is made).
    #[tokio::test(start_paused = true)]
    async fn a_retired_link_invalidates_a_cached_route() {
        let (a, b) = pair().await;
        let mut inbox = b.register::<u64>("inbox");
        a.send("b", "inbox", &1u64, KEYED).await.unwrap();
        let cached = a.inner.cached_route("b").expect("cached");
        let retired = a.inner.links.retire("b").expect("the link was up");
        assert!(Arc::ptr_eq(&cached, &retired) && !retired.is_ended());
        drop(cached);
        a.send("b", "inbox", &2u64, KEYED).await.unwrap();
        let link = a
            .inner
            .links
            .get("b")
            .expect("a new link, made by the look-up");
        let now = link.current().expect("up");
        assert!(!Arc::ptr_eq(&now, &retired), "the new link's channels");
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), 1));
        assert_eq!(inbox.recv().await.unwrap(), ("a".to_string(), 2));
        drop(retired);
        a.shutdown().await;
        b.shutdown().await;
    }
}
