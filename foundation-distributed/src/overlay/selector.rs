//! Smart topology selection: which overlay fits the cluster now.
//!
//! Pure logic: the caller measures ([`Observation`]: cluster size, median round trip,
//! traffic mix) and calls [`Selector::evaluate`] on an interval with the current time; the
//! selector answers with a [`Decision`]. It does not switch anything itself.
//!
//! # Rules
//!
//! Evaluated in order, on the observation:
//!
//! 1. **Small cluster → full mesh.** `size ≤ full_mesh_max`: one hop to everyone, and the
//!    `n − 1` connections per node are cheap. When the median round trip exceeds
//!    `high_latency`, the limit is multiplied by `high_latency_factor` (each overlay hop
//!    then costs more, so staying one hop away pays for more connections).
//! 2. **Event-driven → pub/sub.** The broadcast/publish share of messages is at least
//!    `event_share`: Plumtree over HyParView (a tree per topic, ids to the rest).
//! 3. **Client-server traffic → client-server.** There are servers and the share of
//!    messages between a client and a server is at least `client_server_share`.
//! 4. **Otherwise → HyParView** (peer-to-peer at scale: bounded views, repair from the
//!    passive view, routing or transient connections to non-neighbours).
//!
//! # Not flapping
//!
//! * **Hysteresis bands**: every threshold is widened by `hysteresis` (a fraction) in the
//!   direction that keeps the current choice. With `full_mesh_max = 32` and 0.25, a full
//!   mesh is left above 40 nodes and re-entered at 24 or fewer.
//! * **Confirmation**: a different choice must win `confirmations` evaluations in a row.
//! * **Cooldown**: no switch within `cooldown` of the previous one.
//!
//! Each switch is recorded with its time and reason ([`Selector::history`], last 64).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A topology the selector can recommend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// Everyone connected to everyone.
    FullMesh,
    /// HyParView partial views.
    HyParView,
    /// Servers in a mesh, clients attached to servers.
    ClientServer,
    /// Plumtree pub/sub over HyParView.
    PubSub,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::FullMesh => "full_mesh",
            Choice::HyParView => "hyparview",
            Choice::ClientServer => "client_server",
            Choice::PubSub => "pubsub",
        })
    }
}

/// What the caller measured over the last interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Live members.
    pub cluster_size: usize,
    /// Members with the server role.
    pub servers: usize,
    /// Median round trip to peers.
    pub median_rtt: Duration,
    /// Share of messages that were broadcasts or publishes, in `[0, 1]`.
    pub broadcast_share: f64,
    /// Share of messages between a client and a server, in `[0, 1]`.
    pub client_server_share: f64,
}

/// Selector thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectorConfig {
    /// Largest cluster run as a full mesh.
    pub full_mesh_max: usize,
    /// Median round trip above which `full_mesh_max` is scaled.
    pub high_latency: Duration,
    /// Scale of `full_mesh_max` under high latency.
    pub high_latency_factor: f64,
    /// Broadcast share from which pub/sub is chosen.
    pub event_share: f64,
    /// Client-server share from which client-server is chosen.
    pub client_server_share: f64,
    /// Width of the hysteresis band, as a fraction of each threshold.
    pub hysteresis: f64,
    /// Consecutive evaluations a new choice must win.
    pub confirmations: u32,
    /// Minimum time between two switches.
    pub cooldown: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            full_mesh_max: 32,
            high_latency: Duration::from_millis(50),
            high_latency_factor: 2.0,
            event_share: 0.5,
            client_server_share: 0.6,
            hysteresis: 0.25,
            confirmations: 3,
            cooldown: Duration::from_secs(300),
        }
    }
}

impl SelectorConfig {
    /// Checks the thresholds; the error names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(format!("hysteresis {} not in [0, 1)", self.hysteresis));
        }
        for (name, v) in [
            ("event_share", self.event_share),
            ("client_server_share", self.client_server_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} {v} not in [0, 1]"));
            }
        }
        if self.high_latency_factor <= 0.0 {
            return Err("high_latency_factor must be positive".into());
        }
        if self.confirmations == 0 {
            return Err("confirmations must be at least 1".into());
        }
        Ok(())
    }
}

/// The answer to one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep the current topology.
    Stay {
        /// It.
        current: Choice,
    },
    /// A different topology wins but is not confirmed yet.
    Pending {
        /// The candidate.
        candidate: Choice,
        /// Consecutive wins so far.
        seen: u32,
        /// Wins needed.
        needed: u32,
    },
    /// A different topology is confirmed but the cooldown runs until `until`.
    CoolingDown {
        /// The candidate.
        candidate: Choice,
        /// When a switch becomes possible.
        until: Duration,
    },
    /// Switch now (recorded in the history; the caller carries it out).
    Switch(SwitchRecord),
}

/// A switch, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchRecord {
    /// When (the `now` given to `evaluate`).
    pub at: Duration,
    /// From.
    pub from: Choice,
    /// To.
    pub to: Choice,
    /// The rule that decided, in words.
    pub reason: String,
}

/// The selector. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Selector {
    config: SelectorConfig,
    current: Choice,
    candidate: Option<(Choice, u32)>,
    last_switch: Option<Duration>,
    history: VecDeque<SwitchRecord>,
}

impl Selector {
    /// A selector whose cluster currently runs `current`.
    pub fn new(config: SelectorConfig, current: Choice) -> Result<Self, String> {
        config.validate()?;
        Ok(Selector {
            config,
            current,
            candidate: None,
            last_switch: None,
            history: VecDeque::new(),
        })
    }

    /// The topology in force (as far as the selector knows).
    pub fn current(&self) -> Choice {
        self.current
    }

    /// The last switches, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &SwitchRecord> {
        self.history.iter()
    }

    /// Tells the selector the cluster switched for another reason (an operator's
    /// `switch_topology`); it counts for the cooldown.
    pub fn switched(&mut self, now: Duration, to: Choice, reason: impl Into<String>) {
        self.record(now, to, reason.into());
    }

    /// What the rules pick for `obs`, with the bands around the current choice, and why.
    pub fn preferred(&self, obs: &Observation) -> (Choice, String) {
        let c = &self.config;
        let h = c.hysteresis;
        // Widen a threshold in the direction that keeps `choice` if it is current.
        let keep = |choice: Choice| choice == self.current;
        let slow = obs.median_rtt > c.high_latency;
        let mut mesh_max = c.full_mesh_max as f64;
        if slow {
            mesh_max *= c.high_latency_factor;
        }
        let mesh_max = if keep(Choice::FullMesh) {
            mesh_max * (1.0 + h)
        } else {
            mesh_max * (1.0 - h)
        };
        if (obs.cluster_size as f64) <= mesh_max {
            return (
                Choice::FullMesh,
                format!(
                    "{} members ≤ {:.0} (full-mesh limit{})",
                    obs.cluster_size,
                    mesh_max,
                    if slow {
                        ", scaled for high latency"
                    } else {
                        ""
                    }
                ),
            );
        }
        let event = if keep(Choice::PubSub) {
            c.event_share * (1.0 - h)
        } else {
            c.event_share * (1.0 + h)
        };
        if obs.broadcast_share >= event.min(1.0) {
            return (
                Choice::PubSub,
                format!(
                    "{} members; broadcast share {:.2} ≥ {:.2}",
                    obs.cluster_size, obs.broadcast_share, event
                ),
            );
        }
        let cs = if keep(Choice::ClientServer) {
            c.client_server_share * (1.0 - h)
        } else {
            c.client_server_share * (1.0 + h)
        };
        if obs.servers > 0 && obs.client_server_share >= cs.min(1.0) {
            return (
                Choice::ClientServer,
                format!(
                    "{} members, {} servers; client-server share {:.2} ≥ {:.2}",
                    obs.cluster_size, obs.servers, obs.client_server_share, cs
                ),
            );
        }
        (
            Choice::HyParView,
            format!(
                "{} members > {:.0}; peer-to-peer traffic (broadcast {:.2}, client-server {:.2})",
                obs.cluster_size, mesh_max, obs.broadcast_share, obs.client_server_share
            ),
        )
    }

    /// Evaluates `obs` at `now`.
    pub fn evaluate(&mut self, now: Duration, obs: &Observation) -> Decision {
        let (want, reason) = self.preferred(obs);
        if want == self.current {
            self.candidate = None;
            return Decision::Stay {
                current: self.current,
            };
        }
        let seen = match self.candidate {
            Some((c, n)) if c == want => n + 1,
            _ => 1,
        };
        self.candidate = Some((want, seen));
        if seen < self.config.confirmations {
            return Decision::Pending {
                candidate: want,
                seen,
                needed: self.config.confirmations,
            };
        }
        if let Some(last) = self.last_switch {
            let until = last + self.config.cooldown;
            if now < until {
                return Decision::CoolingDown {
                    candidate: want,
                    until,
                };
            }
        }
        self.candidate = None;
        Decision::Switch(self.record(now, want, reason))
    }

    fn record(&mut self, now: Duration, to: Choice, reason: String) -> SwitchRecord {
        let r = SwitchRecord {
            at: now,
            from: self.current,
            to,
            reason,
        };
        self.current = to;
        self.last_switch = Some(now);
        if self.history.len() == 64 {
            self.history.pop_front();
        }
        self.history.push_back(r.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(size: usize) -> Observation {
        Observation {
            cluster_size: size,
            servers: 0,
            median_rtt: Duration::from_millis(1),
            broadcast_share: 0.1,
            client_server_share: 0.0,
        }
    }

    fn quick() -> SelectorConfig {
        SelectorConfig {
            confirmations: 1,
            cooldown: Duration::ZERO,
            ..SelectorConfig::default()
        }
    }

    #[test]
    fn the_rules() {
        let s = Selector::new(quick(), Choice::HyParView).unwrap();
        assert_eq!(s.preferred(&obs(10)).0, Choice::FullMesh);
        assert_eq!(s.preferred(&obs(500)).0, Choice::HyParView);
        let events = Observation {
            broadcast_share: 0.9,
            ..obs(500)
        };
        assert_eq!(s.preferred(&events).0, Choice::PubSub);
        let cs = Observation {
            servers: 8,
            client_server_share: 0.95,
            ..obs(500)
        };
        assert_eq!(s.preferred(&cs).0, Choice::ClientServer);
        // Servers are needed for client-server.
        let no_servers = Observation { servers: 0, ..cs };
        assert_eq!(s.preferred(&no_servers).0, Choice::HyParView);
        // High latency raises the full-mesh limit.
        let slow = Observation {
            median_rtt: Duration::from_millis(120),
            ..obs(40)
        };
        assert_eq!(s.preferred(&obs(40)).0, Choice::HyParView);
        assert_eq!(s.preferred(&slow).0, Choice::FullMesh);
    }

    #[test]
    fn hysteresis_keeps_the_current_choice_inside_the_band() {
        let mut s = Selector::new(quick(), Choice::FullMesh).unwrap();
        // Limit 32, band 25%: leave above 40, come back below 24.
        for size in [30, 35, 40] {
            assert_eq!(
                s.evaluate(Duration::ZERO, &obs(size)),
                Decision::Stay {
                    current: Choice::FullMesh
                }
            );
        }
        assert!(matches!(
            s.evaluate(Duration::from_secs(1), &obs(41)),
            Decision::Switch(SwitchRecord {
                to: Choice::HyParView,
                ..
            })
        ));
        for size in [40, 30, 25] {
            assert_eq!(
                s.evaluate(Duration::from_secs(2), &obs(size)),
                Decision::Stay {
                    current: Choice::HyParView
                },
                "size {size}"
            );
        }
        assert!(matches!(
            s.evaluate(Duration::from_secs(3), &obs(24)),
            Decision::Switch(SwitchRecord {
                to: Choice::FullMesh,
                ..
            })
        ));
    }

    #[test]
    fn a_size_oscillating_around_the_limit_does_not_flap() {
        let mut s = Selector::new(SelectorConfig::default(), Choice::FullMesh).unwrap();
        let mut switches = 0;
        for i in 0..1000u64 {
            let size = if i % 2 == 0 { 28 } else { 36 };
            if let Decision::Switch(_) = s.evaluate(Duration::from_secs(i), &obs(size)) {
                switches += 1;
            }
        }
        assert_eq!(switches, 0);
    }

    #[test]
    fn confirmations_and_cooldown_delay_a_switch_and_history_records_it() {
        let cfg = SelectorConfig {
            confirmations: 3,
            cooldown: Duration::from_secs(60),
            ..SelectorConfig::default()
        };
        let mut s = Selector::new(cfg, Choice::FullMesh).unwrap();
        let t = Duration::from_secs;
        assert_eq!(
            s.evaluate(t(0), &obs(100)),
            Decision::Pending {
                candidate: Choice::HyParView,
                seen: 1,
                needed: 3
            }
        );
        // A blip back resets the count.
        assert!(matches!(s.evaluate(t(1), &obs(10)), Decision::Stay { .. }));
        assert!(matches!(
            s.evaluate(t(2), &obs(100)),
            Decision::Pending { seen: 1, .. }
        ));
        assert!(matches!(
            s.evaluate(t(3), &obs(100)),
            Decision::Pending { seen: 2, .. }
        ));
        let Decision::Switch(r) = s.evaluate(t(4), &obs(100)) else {
            panic!("confirmed three times");
        };
        assert_eq!(
            (r.from, r.to, r.at),
            (Choice::FullMesh, Choice::HyParView, t(4))
        );
        assert!(r.reason.contains("100 members"), "{}", r.reason);
        // Straight back: confirmed, but cooling down until 64 s.
        for i in 5..7 {
            s.evaluate(t(i), &obs(5));
        }
        assert_eq!(
            s.evaluate(t(7), &obs(5)),
            Decision::CoolingDown {
                candidate: Choice::FullMesh,
                until: t(64)
            }
        );
        assert!(matches!(s.evaluate(t(64), &obs(5)), Decision::Switch(_)));
        let h: Vec<(Choice, Choice)> = s.history().map(|r| (r.from, r.to)).collect();
        assert_eq!(
            h,
            vec![
                (Choice::FullMesh, Choice::HyParView),
                (Choice::HyParView, Choice::FullMesh)
            ]
        );
        // An operator's switch counts for the cooldown too.
        s.switched(t(100), Choice::ClientServer, "operator");
        assert_eq!(s.current(), Choice::ClientServer);
        assert_eq!(s.history().count(), 3);
    }

    #[test]
    fn bad_config_is_refused() {
        for bad in [
            SelectorConfig {
                hysteresis: 1.5,
                ..SelectorConfig::default()
            },
            SelectorConfig {
                confirmations: 0,
                ..SelectorConfig::default()
            },
            SelectorConfig {
                event_share: -0.1,
                ..SelectorConfig::default()
            },
        ] {
            assert!(Selector::new(bad, Choice::FullMesh).is_err());
        }
    }
}
