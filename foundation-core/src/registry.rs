//! A local service registry: name → typed handle, with metadata and health.
//!
//! A [`Registry`] maps service names to handles (any `Clone + Send + Sync + 'static` value,
//! typically an `mpsc::Sender` or an `Arc` of a client). Callers get the handle back with
//! its type: [`Registry::lookup::<H>`](Registry::lookup) returns an `H` or
//! [`Error::HandleTypeMismatch`] when the service was registered with another type.
//!
//! # Entries disappear when their service stops
//!
//! [`Registry::register`] returns a [`Registration`] guard. The entry lives exactly as long
//! as the guard: **dropping the guard removes the entry** (and only that entry — if the
//! name was unregistered and registered again meanwhile, the newer entry is left alone).
//! Move the guard into the task that serves the requests; when the task returns, panics or
//! is aborted, its locals are dropped and the service leaves the registry by itself. No
//! background task is involved.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use foundation_core::registry::Registry;
//! use tokio::sync::mpsc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> foundation_core::Result<()> {
//! let registry = Registry::new();
//! let (tx, mut rx) = mpsc::channel::<String>(16);
//! let registration = registry.register("greeter", tx, BTreeMap::new())?;
//! let server = tokio::spawn(async move {
//!     let _registration = registration; // the entry lives as long as this task
//!     while let Some(name) = rx.recv().await {
//!         if name == "stop" {
//!             break;
//!         }
//!     }
//! });
//!
//! let greeter = registry
//!     .wait_for::<mpsc::Sender<String>>("greeter", Duration::from_secs(1))
//!     .await?;
//! greeter.send("stop".into()).await.unwrap();
//! server.await.unwrap();
//! assert!(registry.lookup::<mpsc::Sender<String>>("greeter").is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//! * gauge `foundation_registry_services` — number of registered services;
//! * counter `foundation_registry_registrations_total` — successful registrations;
//! * counter `foundation_registry_health_checks_total{result}` — health checks by result
//!   (`healthy`, `unhealthy`, `timeout`).

use std::any::{type_name, Any};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Service metadata: free-form string pairs (version, zone, protocol, …).
pub type Metadata = BTreeMap<String, String>;

type HealthFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;
type HealthCheckFn = Arc<dyn Fn() -> HealthFuture + Send + Sync>;

/// Last known health of a service, as recorded by [`Registry::check_health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Never checked since registration.
    Unknown,
    /// The last check passed (or the service has no check).
    Healthy {
        /// When the check finished.
        checked_at: Instant,
    },
    /// The last check failed or did not answer in time.
    Unhealthy {
        /// What the check said, or that it timed out.
        reason: String,
        /// When the check finished.
        checked_at: Instant,
    },
}

/// One row of [`Registry::list`].
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The service name.
    pub name: String,
    /// The metadata given at registration.
    pub metadata: Metadata,
    /// Last known health.
    pub health: Health,
    /// Rust type name of the handle (for diagnostics only; not stable across compilers).
    pub handle_type: &'static str,
    /// Whether the service was registered with a health check.
    pub has_health_check: bool,
}

type Upgrade = Box<dyn Fn() -> Option<Box<dyn Any + Send + Sync>> + Send + Sync>;

/// What an entry holds: the handle itself, or a way to get one while the service lives.
enum Stored {
    Strong(Box<dyn Any + Send + Sync>),
    /// A weak entry ([`Registry::register_weak`]): does not keep the service alive.
    Weak(Upgrade),
}

struct Entry {
    id: u64,
    handle: Stored,
    handle_type: &'static str,
    metadata: Metadata,
    health_check: Option<HealthCheckFn>,
    health: Health,
}

struct RegistryMetrics {
    services: metrics::Gauge,
    registrations: metrics::Counter,
    checks_healthy: metrics::Counter,
    checks_unhealthy: metrics::Counter,
    checks_timeout: metrics::Counter,
}

impl RegistryMetrics {
    fn new() -> Self {
        let check = |result: &'static str| metrics::counter!("foundation_registry_health_checks_total", "result" => result);
        Self {
            services: metrics::gauge!("foundation_registry_services"),
            registrations: metrics::counter!("foundation_registry_registrations_total"),
            checks_healthy: check("healthy"),
            checks_unhealthy: check("unhealthy"),
            checks_timeout: check("timeout"),
        }
    }
}

struct Inner {
    services: RwLock<HashMap<String, Entry>>,
    /// Woken (all waiters) after every registration; see `wait_for`.
    registered: Notify,
    next_id: AtomicU64,
    metrics: RegistryMetrics,
}

impl Inner {
    /// Removes `name` if it still holds the entry with `id`. Returns whether it did.
    fn remove_if(&self, name: &str, id: Option<u64>) -> bool {
        let mut services = self.services.write();
        let matches = services
            .get(name)
            .is_some_and(|e| id.is_none_or(|id| e.id == id));
        if matches {
            services.remove(name);
            self.metrics.services.set(services.len() as f64);
        }
        matches
    }
}

/// A local service registry. Cheap to clone: clones share the same entries.
///
/// Metric handles are registered with the `metrics` recorder that is installed when the
/// registry is created.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        let metrics = RegistryMetrics::new();
        metrics.services.set(0.0);
        Self {
            inner: Arc::new(Inner {
                services: RwLock::new(HashMap::new()),
                registered: Notify::new(),
                next_id: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    /// Registers `handle` under `name`, without a health check.
    ///
    /// Returns the [`Registration`] guard that keeps the entry alive; dropping it removes
    /// the entry. Fails with [`Error::AlreadyRegistered`] if the name is taken and with
    /// [`Error::InvalidArgument`] if it is empty.
    pub fn register<H>(
        &self,
        name: impl Into<String>,
        handle: H,
        metadata: Metadata,
    ) -> Result<Registration>
    where
        H: Clone + Send + Sync + 'static,
    {
        self.insert(
            name.into(),
            Stored::Strong(Box::new(handle)),
            type_name::<H>(),
            metadata,
            None,
        )
    }

    /// Registers a **weak** entry under `name`: the registry keeps `upgrade`, not a
    /// handle, and [`lookup`](Self::lookup) calls it. While `upgrade` returns `Some`, the
    /// entry behaves like a [`register`](Self::register)ed one; when it returns `None` (the
    /// service is gone), lookups fail with [`Error::ServiceNotFound`] as if the entry had
    /// been removed. Use it for handles whose service stops when the last *user* handle
    /// goes away (processes): the registry then never keeps the service alive.
    ///
    /// `upgrade` runs under the registry's read lock and must be cheap and non-blocking.
    /// Otherwise like [`register`](Self::register) (the guard still removes the entry).
    pub fn register_weak<H, F>(
        &self,
        name: impl Into<String>,
        upgrade: F,
        metadata: Metadata,
    ) -> Result<Registration>
    where
        H: Clone + Send + Sync + 'static,
        F: Fn() -> Option<H> + Send + Sync + 'static,
    {
        let upgrade: Upgrade =
            Box::new(move || upgrade().map(|h| Box::new(h) as Box<dyn Any + Send + Sync>));
        self.insert(
            name.into(),
            Stored::Weak(upgrade),
            type_name::<H>(),
            metadata,
            None,
        )
    }

    /// Registers `handle` under `name` with a health check, run by
    /// [`check_health`](Self::check_health).
    ///
    /// The check returns `Ok(())` when the service is healthy and `Err(reason)` otherwise.
    /// Otherwise like [`register`](Self::register).
    pub fn register_with_health_check<H, F, Fut>(
        &self,
        name: impl Into<String>,
        handle: H,
        metadata: Metadata,
        health_check: F,
    ) -> Result<Registration>
    where
        H: Clone + Send + Sync + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let check: HealthCheckFn = Arc::new(move || Box::pin(health_check()) as HealthFuture);
        self.insert(
            name.into(),
            Stored::Strong(Box::new(handle)),
            type_name::<H>(),
            metadata,
            Some(check),
        )
    }

    fn insert(
        &self,
        name: String,
        handle: Stored,
        handle_type: &'static str,
        metadata: Metadata,
        health_check: Option<HealthCheckFn>,
    ) -> Result<Registration> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "service name must not be empty".into(),
            ));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut services = self.inner.services.write();
            if services.contains_key(&name) {
                return Err(Error::AlreadyRegistered { name });
            }
            services.insert(
                name.clone(),
                Entry {
                    id,
                    handle,
                    handle_type,
                    metadata,
                    health_check,
                    health: Health::Unknown,
                },
            );
            self.inner.metrics.services.set(services.len() as f64);
        }
        self.inner.metrics.registrations.increment(1);
        self.inner.registered.notify_waiters();
        Ok(Registration {
            inner: Arc::clone(&self.inner),
            name,
            id,
        })
    }

    /// The handle registered under `name`, as an `H`.
    ///
    /// Fails with [`Error::ServiceNotFound`] or, if the handle has another type,
    /// [`Error::HandleTypeMismatch`].
    pub fn lookup<H>(&self, name: &str) -> Result<H>
    where
        H: Clone + Send + Sync + 'static,
    {
        let services = self.inner.services.read();
        let entry = services.get(name).ok_or_else(|| Error::ServiceNotFound {
            name: name.to_owned(),
        })?;
        let mismatch = || Error::HandleTypeMismatch {
            name: name.to_owned(),
            expected: type_name::<H>(),
            actual: entry.handle_type,
        };
        match &entry.handle {
            Stored::Strong(h) => h.downcast_ref::<H>().cloned().ok_or_else(mismatch),
            Stored::Weak(upgrade) => {
                if entry.handle_type != type_name::<H>() {
                    return Err(mismatch());
                }
                match upgrade() {
                    Some(h) => h.downcast::<H>().map(|h| *h).map_err(|_| mismatch()),
                    None => Err(Error::ServiceNotFound {
                        name: name.to_owned(),
                    }),
                }
            }
        }
    }

    /// Waits until a service named `name` is registered and returns its handle.
    ///
    /// Resolves immediately if it is already registered; otherwise wakes on each
    /// registration (no polling). Fails with [`Error::Timeout`] after `timeout`, and with
    /// [`Error::HandleTypeMismatch`] as soon as the name is registered with another type.
    pub async fn wait_for<H>(&self, name: &str, timeout: Duration) -> Result<H>
    where
        H: Clone + Send + Sync + 'static,
    {
        // `None`: the timeout is too long to represent; wait without a deadline.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            // Ordering: enable the waiter *before* looking, so a registration between the
            // look-up and the await still wakes us.
            let notified = self.inner.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.lookup::<H>(name) {
                Err(Error::ServiceNotFound { .. }) => {}
                other => return other,
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(Error::Timeout {
                            operation: format!("wait for service `{name}`"),
                            after: timeout,
                        });
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Removes the entry for `name`, whoever registered it. Its [`Registration`] guard
    /// becomes inert. Fails with [`Error::ServiceNotFound`] if there is none.
    pub fn unregister(&self, name: &str) -> Result<()> {
        if self.inner.remove_if(name, None) {
            Ok(())
        } else {
            Err(Error::ServiceNotFound {
                name: name.to_owned(),
            })
        }
    }

    /// Whether a service named `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.services.read().contains_key(name)
    }

    /// Number of registered services.
    pub fn len(&self) -> usize {
        self.inner.services.read().len()
    }

    /// Whether no service is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Metadata of `name`.
    pub fn metadata(&self, name: &str) -> Result<Metadata> {
        self.inner
            .services
            .read()
            .get(name)
            .map(|e| e.metadata.clone())
            .ok_or_else(|| Error::ServiceNotFound {
                name: name.to_owned(),
            })
    }

    /// All services, sorted by name, with metadata and last known health.
    pub fn list(&self) -> Vec<ServiceInfo> {
        let services = self.inner.services.read();
        let mut out: Vec<ServiceInfo> = services
            .iter()
            .map(|(name, e)| ServiceInfo {
                name: name.clone(),
                metadata: e.metadata.clone(),
                health: e.health.clone(),
                handle_type: e.handle_type,
                has_health_check: e.health_check.is_some(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Runs the health check of `name`, giving it at most `timeout`, and records the result
    /// (see [`ServiceInfo::health`]).
    ///
    /// A service registered without a check is healthy while it is registered. Returns
    /// `Ok(())` when healthy, [`Error::Unhealthy`] when the check fails *or does not answer
    /// within `timeout`* (the reason says which; the check's future is dropped), and
    /// [`Error::ServiceNotFound`] for an unknown name. No lock is held while the check
    /// runs.
    pub async fn check_health(&self, name: &str, timeout: Duration) -> Result<()> {
        let (id, check) = {
            let services = self.inner.services.read();
            let entry = services.get(name).ok_or_else(|| Error::ServiceNotFound {
                name: name.to_owned(),
            })?;
            (entry.id, entry.health_check.clone())
        };
        let outcome = match check {
            None => Ok(()),
            Some(check) => match tokio::time::timeout(timeout, check()).await {
                Ok(result) => result.map_err(|reason| (reason, false)),
                Err(_) => Err((
                    format!("health check did not answer within {timeout:?}"),
                    true,
                )),
            },
        };
        let m = &self.inner.metrics;
        let checked_at = Instant::now();
        let health = match &outcome {
            Ok(()) => {
                m.checks_healthy.increment(1);
                Health::Healthy { checked_at }
            }
            Err((reason, timed_out)) => {
                if *timed_out {
                    m.checks_timeout.increment(1);
                } else {
                    m.checks_unhealthy.increment(1);
                }
                Health::Unhealthy {
                    reason: reason.clone(),
                    checked_at,
                }
            }
        };
        // Record only on the entry we checked: it may have been replaced meanwhile.
        if let Some(entry) = self.inner.services.write().get_mut(name) {
            if entry.id == id {
                entry.health = health;
            }
        }
        outcome.map_err(|(reason, _)| Error::Unhealthy {
            name: name.to_owned(),
            reason,
        })
    }
}

/// Keeps a service's registry entry alive; returned by [`Registry::register`].
///
/// **Dropping it removes the entry** it created. If that entry is already gone (explicit
/// [`Registry::unregister`]) or the name now belongs to a newer registration, drop does
/// nothing. Dropping never blocks on anything but the registry's short write lock and
/// spawns no task. Keep the guard inside the task that serves the service so that the entry
/// disappears when the task ends, panics or is aborted.
#[must_use = "dropping the Registration removes the service from the registry at once"]
pub struct Registration {
    inner: Arc<Inner>,
    name: String,
    id: u64,
}

impl Registration {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the entry created by this registration is still in the registry.
    pub fn is_registered(&self) -> bool {
        self.inner
            .services
            .read()
            .get(&self.name)
            .is_some_and(|e| e.id == self.id)
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.remove_if(&self.name, Some(self.id));
    }
}

/// Describes the registry metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "foundation_registry_services",
        "Services registered in the local registry."
    );
    describe_counter!(
        "foundation_registry_registrations_total",
        "Successful service registrations."
    );
    describe_counter!(
        "foundation_registry_health_checks_total",
        "Health checks run, by result."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_guard_does_not_remove_newer_entry() {
        let registry = Registry::new();
        let old = registry.register("svc", 1u32, Metadata::new()).unwrap();
        registry.unregister("svc").unwrap();
        assert!(!old.is_registered());
        let new = registry.register("svc", 2u32, Metadata::new()).unwrap();
        drop(old);
        assert_eq!(registry.lookup::<u32>("svc").unwrap(), 2);
        assert!(new.is_registered());
        drop(new);
        assert!(registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_accepts_an_unrepresentable_timeout() {
        let registry = Registry::new();
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.wait_for::<u8>("x", Duration::MAX).await })
        };
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let _reg = registry.register("x", 3u8, Metadata::new()).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
    }

    #[test]
    fn empty_name_is_rejected() {
        let registry = Registry::new();
        assert!(matches!(
            registry.register("", 1u8, Metadata::new()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn metrics_follow_registrations() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let registry = metrics::with_local_recorder(&recorder, Registry::new);
        let a = registry.register("a", 1u8, Metadata::new()).unwrap();
        let _b = registry.register("b", 1u8, Metadata::new()).unwrap();
        drop(a);
        let snap = snapshotter.snapshot().into_hashmap();
        let value = |name: &str| {
            snap.iter()
                .find(|(k, _)| k.key().name() == name)
                .map(|(_, (_, _, v))| v)
        };
        assert_eq!(
            value("foundation_registry_services"),
            Some(&DebugValue::Gauge(1.0.into()))
        );
        assert_eq!(
            value("foundation_registry_registrations_total"),
            Some(&DebugValue::Counter(2))
        );
    }
}
