//! HyParView + Plumtree on the deterministic simulator.
//!
//! The default run uses small clusters (fast in debug builds). The 10,000-node runs of the
//! issue ("Must show") are behind the `assumptions` feature and print their tables:
//!
//! ```text
//! cargo test -p foundation-distributed --release --features assumptions \
//!     --test overlay_sim -- --nocapture --test-threads 1
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use foundation_distributed::overlay::plumtree::Mode;
use foundation_distributed::overlay::sim::{Latency, NodeId, Sim, SimConfig};
use foundation_distributed::overlay::swarm::{SwarmInput, SwarmMessage, SwarmOutput, SwarmTimer};
use foundation_distributed::overlay::{PubSub, PubSubError, SwarmConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn built(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(
        n,
        SimConfig {
            seed,
            ..SimConfig::default()
        },
    );
    sim.bootstrap(Duration::from_millis(10));
    sim.run_for(secs(40));
    sim
}

fn random_live(sim: &mut Sim) -> NodeId {
    let live = sim.live();
    let i = sim.rng().random_range(0..live.len());
    live[i]
}

/// Broadcasts from a random live node and lets it settle; (reliability, rmr, last hop).
fn one_broadcast(sim: &mut Sim) -> (f64, f64, u16) {
    let from = random_live(sim);
    let id = sim.broadcast(from, Bytes::from_static(b"payload"));
    sim.run_for(secs(2));
    let r = sim.report(&id);
    (r.reliability(), r.rmr(), r.last_hop)
}

#[test]
fn joins_form_a_connected_overlay_with_views_within_bounds() {
    let sim = built(100, 1);
    let o = sim.overlay_report();
    assert!(o.connected, "{o:?}");
    assert!(o.active.2 <= 5 && o.passive.2 <= 30, "{o:?}");
    assert!(o.active.0 >= 1, "every node has a neighbour: {o:?}");
    assert!(o.active.1 >= 4.0, "active views nearly full: {o:?}");
    assert_eq!(o.asymmetric, 0, "active links are symmetric: {o:?}");
}

#[test]
fn shuffles_fill_the_passive_views() {
    let mut sim = built(100, 2);
    let before = sim.overlay_report().passive.1;
    sim.run_for(secs(120));
    let after = sim.overlay_report().passive.1;
    assert!(
        after > before && after >= 20.0,
        "mean passive view {before:.1} -> {after:.1}"
    );
    let s = sim.node(5).hyparview().stats();
    assert!(s.shuffles >= 10, "{s:?}");
}

#[test]
fn runs_are_deterministic_per_seed() {
    let run = |seed| {
        let mut sim = built(60, seed);
        let r = one_broadcast(&mut sim);
        (
            sim.events(),
            sim.traffic(),
            format!("{:?}", sim.overlay_report()),
            r.2,
        )
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9).0, run(10).0, "another seed, another run");
}

#[test]
fn failed_active_peers_are_replaced_and_broadcast_recovers() {
    let mut sim = Sim::new(
        80,
        SimConfig {
            seed: 3,
            crash_notice: Some(Duration::from_millis(500)),
            ..SimConfig::default()
        },
    );
    sim.bootstrap(Duration::from_millis(10));
    sim.run_for(secs(40));
    one_broadcast(&mut sim);
    sim.crash_fraction(0.4);
    sim.run_for(secs(5));
    let o = sim.overlay_report();
    assert!(o.connected, "{o:?}");
    assert_eq!(o.dead_links, 0, "every dead neighbour replaced: {o:?}");
    assert!(o.active.0 >= 2, "{o:?}");
    let promoted: u64 = sim
        .live()
        .iter()
        .map(|i| sim.node(*i).hyparview().stats().promotions)
        .sum();
    assert!(promoted > 0);
    assert_eq!(one_broadcast(&mut sim).0, 1.0);
}

#[test]
fn plumtree_prunes_to_a_tree_and_flooding_does_not() {
    let mut sim = built(200, 4);
    let mut flood = sim.clone();
    flood.set_broadcast_mode(Mode::Flood);
    for _ in 0..5 {
        one_broadcast(&mut sim);
        one_broadcast(&mut flood);
    }
    let (rel, rmr, _) = one_broadcast(&mut sim);
    let (frel, frmr, _) = one_broadcast(&mut flood);
    assert_eq!((rel, frel), (1.0, 1.0));
    assert!(rmr < 0.1, "plumtree steady-state RMR {rmr}");
    assert!(frmr > 2.0, "flooding RMR {frmr}");
    let prunes: u64 = (0..200)
        .map(|i| sim.node(i).plumtree().stats().prune_sent)
        .sum();
    assert!(prunes > 0);
}

#[test]
fn lost_payloads_are_grafted_from_lazy_peers() {
    // 10% of broadcast messages are lost: the eager tree breaks, IHave + Graft repair it.
    let mut lossy = Sim::new(
        100,
        SimConfig {
            seed: 5,
            loss: 0.1,
            latency: Latency::Fixed(Duration::from_millis(20)),
            ..SimConfig::default()
        },
    );
    lossy.bootstrap(Duration::from_millis(10));
    lossy.run_for(secs(40));
    let mut total = 0.0;
    for _ in 0..10 {
        total += one_broadcast(&mut lossy).0;
    }
    let grafts: u64 = (0..100)
        .map(|i| lossy.node(i).plumtree().stats().graft_sent)
        .sum();
    assert!(grafts > 0, "losses were repaired by grafts");
    assert!(total / 10.0 > 0.99, "mean reliability {}", total / 10.0);
}

/// A tiny driver for [`PubSub`] nodes: a FIFO network with fixed latency.
struct PubSubNet {
    nodes: Vec<PubSub<u32>>,
    rng: SmallRng,
    queue: BTreeMap<(Duration, u64), (u32, String, SwarmInput<u32>)>,
    seq: u64,
    now: Duration,
    delivered: BTreeMap<(u32, String), Vec<Bytes>>,
}

impl PubSubNet {
    fn new(n: u32) -> Self {
        PubSubNet {
            nodes: (0..n)
                .map(|i| PubSub::new(i, SwarmConfig::default()))
                .collect(),
            rng: SmallRng::seed_from_u64(11),
            queue: BTreeMap::new(),
            seq: 0,
            now: Duration::ZERO,
            delivered: BTreeMap::new(),
        }
    }

    fn apply(&mut self, node: u32, out: Vec<(String, SwarmOutput<u32>)>) {
        for (topic, o) in out {
            self.seq += 1;
            match o {
                SwarmOutput::Send { to, msg } => {
                    self.queue.insert(
                        (self.now + Duration::from_millis(10), self.seq),
                        (to, topic, SwarmInput::Message { from: node, msg }),
                    );
                }
                SwarmOutput::SetTimer { after, timer } => {
                    self.queue.insert(
                        (self.now + after, self.seq),
                        (node, topic, SwarmInput::Timer(timer)),
                    );
                }
                SwarmOutput::Deliver { payload, .. } => {
                    self.delivered
                        .entry((node, topic))
                        .or_default()
                        .push(payload);
                }
                _ => {}
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), (node, topic, input)) = entry.remove_entry();
            self.now = at;
            let mut out = Vec::new();
            self.nodes[node as usize].handle(at, &topic, input, &mut self.rng, &mut out);
            self.apply(node, out);
        }
        self.now = until;
    }

    fn subscribe(&mut self, node: u32, topic: &str, via: Option<u32>) {
        let mut out = Vec::new();
        self.nodes[node as usize]
            .subscribe(self.now, topic, via, &mut self.rng, &mut out)
            .unwrap();
        self.apply(node, out);
    }
}

#[test]
fn pubsub_delivers_to_each_subscriber_of_the_topic_once() {
    let mut net = PubSubNet::new(30);
    // Even nodes follow "a", multiples of 3 follow "b".
    net.subscribe(0, "a", None);
    net.subscribe(0, "b", None);
    for i in 1..30u32 {
        if i % 2 == 0 {
            net.subscribe(i, "a", Some(0));
        }
        if i % 3 == 0 {
            net.subscribe(i, "b", Some(0));
        }
        net.run_for(Duration::from_millis(50));
    }
    net.run_for(secs(20));
    let mut out = Vec::new();
    net.nodes[6]
        .publish(
            net.now,
            "a",
            Bytes::from_static(b"to-a"),
            &mut net.rng,
            &mut out,
        )
        .unwrap();
    net.apply(6, out);
    net.run_for(secs(2));
    for i in 0..30u32 {
        let got = net.delivered.get(&(i, "a".to_string())).map_or(0, Vec::len);
        assert_eq!(got, usize::from(i % 2 == 0), "node {i} on topic a");
        assert!(!net.delivered.contains_key(&(i, "b".to_string())));
    }
    // Publishing where not subscribed is refused; unsubscribing stops delivery.
    let mut out = Vec::new();
    assert_eq!(
        net.nodes[1].publish(net.now, "a", Bytes::new(), &mut net.rng, &mut out),
        Err(PubSubError::NotSubscribed("a".into()))
    );
    net.nodes[4]
        .unsubscribe(net.now, "a", &mut net.rng, &mut out)
        .unwrap();
    net.apply(4, out);
    net.run_for(secs(3));
    let mut out = Vec::new();
    net.nodes[0]
        .publish(
            net.now,
            "a",
            Bytes::from_static(b"again"),
            &mut net.rng,
            &mut out,
        )
        .unwrap();
    net.apply(0, out);
    net.run_for(secs(2));
    for i in (0..30u32).step_by(2) {
        let got = net.delivered.get(&(i, "a".to_string())).map_or(0, Vec::len);
        let want = if i == 4 { 1 } else { 2 };
        assert_eq!(got, want, "node {i} after node 4 left topic a");
    }
    // Messages of topic-less peers are counted, not delivered.
    let stray = SwarmInput::Timer(SwarmTimer::Hv(
        foundation_distributed::overlay::hyparview::HvTimer::Shuffle,
    ));
    let mut out = Vec::new();
    net.nodes[1].handle(net.now, "a", stray, &mut net.rng, &mut out);
    net.nodes[1].handle(
        net.now,
        "a",
        SwarmInput::Message {
            from: 0,
            msg: SwarmMessage::Pt(foundation_distributed::overlay::plumtree::PtMessage::Prune),
        },
        &mut net.rng,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(net.nodes[1].unknown_topic(), 1);
}

/// The 10,000-node runs: overlay after joins, reliability after mass failures, RMR and
/// last delivery hop against flooding.
#[cfg(feature = "assumptions")]
mod paper_scale {
    use super::*;

    const N: usize = 10_000;
    const FAILURES: [f64; 7] = [0.10, 0.30, 0.50, 0.70, 0.80, 0.90, 0.95];
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 10;
    /// Virtual time per round: long enough for chains of grafts (400 ms each) to finish.
    const ROUND: Duration = Duration::from_secs(5);

    /// `k` broadcasts from distinct random live nodes at once, then [`ROUND`]; (mean
    /// reliability, worst reliability, mean RMR, largest last delivery hop).
    fn round_of_broadcasts(sim: &mut Sim, k: usize) -> (f64, f64, f64, u16) {
        let mut live = sim.live();
        let k = k.min(live.len());
        for i in 0..k {
            let j = sim.rng().random_range(i..live.len());
            live.swap(i, j);
        }
        let ids: Vec<_> = live[..k]
            .iter()
            .map(|from| sim.broadcast(*from, Bytes::from_static(b"payload")))
            .collect();
        sim.run_for(ROUND);
        let rs: Vec<_> = ids.iter().map(|id| sim.report(id)).collect();
        let mean = rs.iter().map(|r| r.reliability()).sum::<f64>() / k as f64;
        let worst = rs.iter().map(|r| r.reliability()).fold(1.0, f64::min);
        let rmr = rs.iter().map(|r| r.rmr()).sum::<f64>() / k as f64;
        let ldh = rs.iter().map(|r| r.last_hop).max().unwrap_or(0);
        (mean, worst, rmr, ldh)
    }

    fn overlay(seed: u64, crash_notice: Option<Duration>) -> Sim {
        let mut sim = Sim::new(
            N,
            SimConfig {
                seed,
                crash_notice,
                ..SimConfig::default()
            },
        );
        // 10,000 joins, one per millisecond, then 60 s (6 shuffle periods) to settle.
        sim.bootstrap(Duration::from_millis(1));
        sim.run_for(secs(10 + 60));
        sim
    }

    #[test]
    fn ten_thousand_nodes() {
        let t0 = std::time::Instant::now();
        let base = overlay(2007, Some(Duration::from_secs(1)));
        let o = base.overlay_report();
        println!(
            "\n## Overlay after {N} joins ({} events, {:.1} s CPU)\n",
            base.events(),
            t0.elapsed().as_secs_f64()
        );
        println!(
            "| live | components | active min/mean/max | passive min/mean/max | asymmetric links |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {} | {}/{:.2}/{} | {}/{:.2}/{} | {} |",
            o.live,
            o.components,
            o.active.0,
            o.active.1,
            o.active.2,
            o.passive.0,
            o.passive.1,
            o.passive.2,
            o.asymmetric
        );
        assert!(o.connected);
        assert!(o.active.2 <= 5 && o.passive.2 <= 30 && o.active.0 >= 1);

        // Steady state: RMR and last delivery hop, Plumtree against flooding, same overlay.
        println!("\n## Steady state, 20 broadcasts after 5 warm-up ones\n");
        println!("| broadcast | reliability min | RMR mean | last hop mean | last hop max |");
        println!("|---|---|---|---|---|");
        for mode in [Mode::Plumtree, Mode::Flood] {
            let mut sim = base.clone();
            sim.set_broadcast_mode(mode);
            for _ in 0..5 {
                one_broadcast(&mut sim);
            }
            let rs: Vec<(f64, f64, u16)> = (0..20).map(|_| one_broadcast(&mut sim)).collect();
            let rel = rs.iter().map(|r| r.0).fold(1.0, f64::min);
            let rmr = rs.iter().map(|r| r.1).sum::<f64>() / rs.len() as f64;
            let ldh = rs.iter().map(|r| r.2 as f64).sum::<f64>() / rs.len() as f64;
            let ldh_max = rs.iter().map(|r| r.2).max().unwrap();
            println!("| {mode:?} | {rel:.4} | {rmr:.3} | {ldh:.2} | {ldh_max} |");
            assert_eq!(rel, 1.0);
        }

        for (label, notice) in [
            (
                "failure notice after 1 s (connections reset / detector)",
                Some(secs(1)),
            ),
            ("detection on send only", None),
        ] {
            let base = if notice.is_some() {
                base.clone()
            } else {
                overlay(2007, None)
            };
            println!("\n## Reliability after simultaneous failures — {label}\n");
            println!("Round 0 is sent at the instant of the crash; each round is {PER_ROUND} broadcasts from distinct random live nodes at the same instant, then 5 s of virtual time (HyParView repair timer: 1 s; Plumtree graft timeout 400 ms). Cells: mean reliability / mean RMR / largest last delivery hop; the rounds-to columns use the worst of the {PER_ROUND} broadcasts.\n");
            print!("| failed | mode | round 0 |");
            for r in 1..=ROUNDS {
                print!(" {r} |");
            }
            println!(" rounds to ≥ 99% | rounds to 100% | survivor components (largest) |");
            print!("|---|---|---|");
            for _ in 1..=ROUNDS {
                print!("---|");
            }
            println!("---|---|---|");
            for f in FAILURES {
                for mode in [Mode::Plumtree, Mode::Flood] {
                    let t = std::time::Instant::now();
                    let mut sim = base.clone();
                    sim.set_broadcast_mode(mode);
                    for _ in 0..5 {
                        one_broadcast(&mut sim);
                    }
                    sim.crash_fraction(f);
                    let mut cells = Vec::new();
                    let (mut to99, mut to100) = (None, None);
                    for r in 0..=ROUNDS {
                        let (mean, worst, rmr, ldh) = round_of_broadcasts(&mut sim, PER_ROUND);
                        if worst >= 0.99 && to99.is_none() {
                            to99 = Some(r);
                        }
                        if worst >= 1.0 && to100.is_none() {
                            to100 = Some(r);
                        }
                        cells.push(format!("{:.1}% / {rmr:.2} / {ldh}", mean * 100.0));
                    }
                    let o = sim.overlay_report();
                    let show = |x: Option<usize>| x.map_or(format!(">{ROUNDS}"), |r| r.to_string());
                    println!(
                        "| {:.0}% | {mode:?} | {} | {} | {} | {} ({}) |",
                        f * 100.0,
                        cells.join(" | "),
                        show(to99),
                        show(to100),
                        o.components,
                        o.largest_component
                    );
                    eprintln!(
                        "  ({:.0}% {mode:?}: {:.1} s CPU)",
                        f * 100.0,
                        t.elapsed().as_secs_f64()
                    );
                    if (f - 0.5).abs() < 1e-9 && mode == Mode::Plumtree && notice.is_some() {
                        assert!(
                            to99.is_some(),
                            "at 50% failures, ≥ 99% of survivors reached after repair"
                        );
                    }
                }
            }
        }
        println!("\ntotal {:.1} s CPU", t0.elapsed().as_secs_f64());
    }
}
