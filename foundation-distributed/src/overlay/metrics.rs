//! Overlay metrics: view sizes and protocol counters, published from the state machines'
//! stats.
//!
//! The machines keep plain counters ([`HvStats`], [`PtStats`]); a driver owns an
//! [`OverlayMetrics`] (handles registered once, labelled by topic) and calls
//! [`record`](OverlayMetrics::record) after handling inputs or on its tick. Counters are
//! set to the machines' totals (`Counter::absolute`), so recording is idempotent.

use metrics::{describe_counter, describe_gauge, Counter, Gauge};

use super::hyparview::{HvStats, HyParView, PeerId};
use super::plumtree::{Plumtree, PtStats};
use super::swarm::Swarm;

/// Describes the overlay metrics (HELP lines) to the current recorder.
pub fn describe_metrics() {
    describe_gauge!(
        "foundation_overlay_active_view",
        "HyParView active view size (connected broadcast neighbours)"
    );
    describe_gauge!(
        "foundation_overlay_passive_view",
        "HyParView passive view size"
    );
    describe_gauge!(
        "foundation_overlay_eager_peers",
        "Plumtree eager (tree) peers"
    );
    describe_gauge!("foundation_overlay_lazy_peers", "Plumtree lazy peers");
    describe_counter!(
        "foundation_overlay_plumtree_messages_total",
        "Plumtree messages sent, by kind (eager, lazy, graft, prune)"
    );
    describe_counter!(
        "foundation_overlay_plumtree_delivered_total",
        "Broadcasts delivered to the application"
    );
    describe_counter!(
        "foundation_overlay_plumtree_duplicates_total",
        "Broadcast payloads received again (each answered by a prune)"
    );
    describe_counter!(
        "foundation_overlay_plumtree_graft_failures_total",
        "Grafts given up (no announcer left) or unanswerable (payload evicted), by reason"
    );
    describe_gauge!(
        "foundation_overlay_plumtree_max_hops",
        "Largest hop count at which a broadcast was delivered here"
    );
    describe_counter!(
        "foundation_overlay_hyparview_events_total",
        "HyParView events, by kind (shuffle, failure, promotion, eviction, escalation, unanswered_check, neighbor_request)"
    );
}

/// Pre-registered handles for one node's overlay on one topic.
#[derive(Debug, Clone)]
pub struct OverlayMetrics {
    active: Gauge,
    passive: Gauge,
    eager: Gauge,
    lazy: Gauge,
    eager_sent: Counter,
    lazy_sent: Counter,
    graft_sent: Counter,
    prune_sent: Counter,
    delivered: Counter,
    duplicates: Counter,
    graft_exhausted: Counter,
    graft_miss: Counter,
    max_hops: Gauge,
    shuffles: Counter,
    failures: Counter,
    promotions: Counter,
    evictions: Counter,
    escalations: Counter,
    unanswered: Counter,
    requests: Counter,
}

impl OverlayMetrics {
    /// Handles labelled `topic`.
    pub fn new(topic: &str) -> Self {
        let t = topic.to_string();
        let msg = |kind: &'static str| metrics::counter!("foundation_overlay_plumtree_messages_total", "topic" => t.clone(), "kind" => kind);
        let hv = |kind: &'static str| metrics::counter!("foundation_overlay_hyparview_events_total", "topic" => t.clone(), "kind" => kind);
        let graft_fail = |reason: &'static str| metrics::counter!("foundation_overlay_plumtree_graft_failures_total", "topic" => t.clone(), "reason" => reason);
        OverlayMetrics {
            active: metrics::gauge!("foundation_overlay_active_view", "topic" => t.clone()),
            passive: metrics::gauge!("foundation_overlay_passive_view", "topic" => t.clone()),
            eager: metrics::gauge!("foundation_overlay_eager_peers", "topic" => t.clone()),
            lazy: metrics::gauge!("foundation_overlay_lazy_peers", "topic" => t.clone()),
            eager_sent: msg("eager"),
            lazy_sent: msg("lazy"),
            graft_sent: msg("graft"),
            prune_sent: msg("prune"),
            delivered: metrics::counter!("foundation_overlay_plumtree_delivered_total", "topic" => t.clone()),
            duplicates: metrics::counter!("foundation_overlay_plumtree_duplicates_total", "topic" => t.clone()),
            graft_exhausted: graft_fail("no_announcer"),
            graft_miss: graft_fail("evicted"),
            max_hops: metrics::gauge!("foundation_overlay_plumtree_max_hops", "topic" => t.clone()),
            shuffles: hv("shuffle"),
            failures: hv("failure"),
            promotions: hv("promotion"),
            evictions: hv("eviction"),
            escalations: hv("escalation"),
            unanswered: hv("unanswered_check"),
            requests: hv("neighbor_request"),
        }
    }

    /// Publishes a swarm's state and totals.
    pub fn record<P: PeerId>(&self, swarm: &Swarm<P>) {
        self.record_hyparview(swarm.hyparview());
        self.record_plumtree(swarm.plumtree());
    }

    /// Publishes HyParView's view sizes and totals.
    pub fn record_hyparview<P: PeerId>(&self, hv: &HyParView<P>) {
        self.active.set(hv.active().len() as f64);
        self.passive.set(hv.passive().len() as f64);
        let HvStats {
            shuffles,
            failures,
            promotions,
            evictions,
            escalations,
            unanswered_checks,
            neighbor_requests,
            ..
        } = hv.stats();
        self.shuffles.absolute(shuffles);
        self.failures.absolute(failures);
        self.promotions.absolute(promotions);
        self.evictions.absolute(evictions);
        self.escalations.absolute(escalations);
        self.unanswered.absolute(unanswered_checks);
        self.requests.absolute(neighbor_requests);
    }

    /// Publishes Plumtree's peer sets and totals.
    pub fn record_plumtree<P: PeerId>(&self, pt: &Plumtree<P>) {
        self.eager.set(pt.eager().len() as f64);
        self.lazy.set(pt.lazy().len() as f64);
        let PtStats {
            eager_sent,
            lazy_sent,
            graft_sent,
            prune_sent,
            delivered,
            duplicates,
            graft_exhausted,
            graft_miss,
            max_hops,
        } = pt.stats();
        self.eager_sent.absolute(eager_sent);
        self.lazy_sent.absolute(lazy_sent);
        self.graft_sent.absolute(graft_sent);
        self.prune_sent.absolute(prune_sent);
        self.delivered.absolute(delivered);
        self.duplicates.absolute(duplicates);
        self.graft_exhausted.absolute(graft_exhausted);
        self.graft_miss.absolute(graft_miss);
        self.max_hops.set(f64::from(max_hops));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::swarm::{SwarmConfig, SwarmInput};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::time::Duration;

    #[test]
    fn records_views_and_counters_with_the_topic_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let m = OverlayMetrics::new("news");
            let mut s = Swarm::new(0u32, SwarmConfig::default());
            let mut rng = SmallRng::seed_from_u64(1);
            let mut out = Vec::new();
            for p in [1, 2] {
                s.handle(
                    Duration::ZERO,
                    SwarmInput::Message {
                        from: p,
                        msg: crate::overlay::swarm::SwarmMessage::Hv(
                            crate::overlay::hyparview::HvMessage::Neighbor { high: false },
                        ),
                    },
                    &mut rng,
                    &mut out,
                );
            }
            s.handle(
                Duration::ZERO,
                SwarmInput::Broadcast("x".into()),
                &mut rng,
                &mut out,
            );
            m.record(&s);
            m.record(&s); // idempotent
        });
        let snap = snapshotter.snapshot().into_vec();
        let find = |name: &str, kind: Option<&str>| {
            snap.iter()
                .find(|(k, _, _, _)| {
                    k.key().name() == name
                        && k.key()
                            .labels()
                            .any(|l| l.key() == "topic" && l.value() == "news")
                        && kind.is_none_or(|kd| k.key().labels().any(|l| l.value() == kd))
                })
                .map(|(_, _, _, v)| v)
        };
        assert_eq!(
            find("foundation_overlay_active_view", None),
            Some(&DebugValue::Gauge(2.0.into()))
        );
        assert_eq!(
            find("foundation_overlay_plumtree_messages_total", Some("eager")),
            Some(&DebugValue::Counter(2))
        );
        assert_eq!(
            find("foundation_overlay_plumtree_delivered_total", None),
            Some(&DebugValue::Counter(1))
        );
    }
}
