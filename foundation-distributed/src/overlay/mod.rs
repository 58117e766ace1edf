//! Gossip overlays: HyParView membership, Plumtree broadcast and pub/sub, a deterministic
//! simulator, and a topology selector.
//!
//! The protocols are state machines without I/O (the shape of quinn-proto, foca and
//! iroh-gossip's `proto`): an input (a message, a timer, a failure) goes in with the
//! current time and a random source; messages to send, timers to set and events come out.
//! The same code runs under [`sim::Sim`] — a seeded discrete-event network on virtual time,
//! fast enough for 10,000 nodes — and under a node's driver.
//!
//! * [`hyparview`] — partial-view membership (active view 5, passive view 30 by default).
//! * [`plumtree`] — epidemic broadcast trees: eager push on a tree, lazy ids, graft, prune.
//! * [`swarm`] — the two combined (HyParView's neighbour changes feed Plumtree), and
//!   [`PubSub`], one swarm per topic.
//! * [`sim`] — the simulator: latency, loss and crash models; reliability, RMR, last
//!   delivery hop.
//! * [`metrics`] — view sizes and eager/lazy/graft/prune counters for Prometheus.
//! * [`service`] — HyParView as a node's [`PeerService`](crate::topology::PeerService).
//! * [`selector`] — picks a topology from cluster size, latency and workload, with
//!   hysteresis and a cooldown.
//!
//! ```
//! use std::time::Duration;
//! use foundation_distributed::overlay::sim::{Sim, SimConfig};
//!
//! // 200 nodes join one by one, then one of them broadcasts.
//! let mut sim = Sim::new(200, SimConfig { seed: 7, ..SimConfig::default() });
//! sim.bootstrap(Duration::from_millis(5));
//! sim.run_for(Duration::from_secs(30));
//! let overlay = sim.overlay_report();
//! assert!(overlay.connected && overlay.active.2 <= 5 && overlay.passive.2 <= 30);
//! let id = sim.broadcast(42, "hello".into());
//! sim.run_for(Duration::from_secs(2));
//! assert_eq!(sim.report(&id).reached, 200);
//! ```

pub mod hyparview;
pub mod metrics;
pub mod plumtree;
pub mod selector;
pub mod service;
pub mod sim;
pub mod swarm;

pub use hyparview::{HyParView, HyParViewConfig, PeerId};
pub use metrics::{describe_metrics, OverlayMetrics};
pub use plumtree::{MessageId, Mode, Plumtree, PlumtreeConfig};
pub use swarm::{PubSub, PubSubError, Swarm, SwarmConfig};
