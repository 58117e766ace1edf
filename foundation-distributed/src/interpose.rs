//! Fault injection: drop, delay, duplicate or partition traffic by peer set and channel.
//!
//! An [`Interposer`] holds rules; the transport asks it, for every message, what to do
//! ([`Interposer::decide`]) and applies the answer. Rules select traffic by sender, receiver
//! and channel; the first matching `Partition` or `Drop` that fires wins, delays add up,
//! duplicates multiply. Randomness comes from a seeded generator, so a test that sets a
//! seed sees the same faults every run. [`Interposer::heal`] removes every rule.
//!
//! ```
//! use std::time::Duration;
//! use foundation_distributed::interpose::{Action, Fault, Interposer, Rule, Select};
//!
//! let net = Interposer::with_seed(7);
//! let cut = net.partition(&["a", "b"], &["c"]);
//! assert_eq!(net.decide("a", "c", "gossip"), Action::Drop);
//! assert_eq!(net.decide("c", "b", "gossip"), Action::Drop);
//! assert_eq!(net.decide("a", "b", "gossip"), Action::deliver());
//! net.remove(cut);
//! net.add(Rule::new(Fault::Delay { min: Duration::from_millis(5), max: Duration::from_millis(5) }).channel("bulk_data"));
//! assert_eq!(net.decide("a", "c", "bulk_data"), Action::Deliver { copies: 1, delay: Duration::from_millis(5) });
//! net.heal();
//! assert_eq!(net.decide("a", "c", "bulk_data"), Action::deliver());
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which nodes a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// Every node.
    Any,
    /// These nodes.
    Nodes(BTreeSet<String>),
}

impl Select {
    fn matches(&self, node: &str) -> bool {
        match self {
            Select::Any => true,
            Select::Nodes(set) => set.contains(node),
        }
    }

    /// A selection of these node names.
    pub fn nodes(names: &[&str]) -> Select {
        Select::Nodes(names.iter().map(|s| s.to_string()).collect())
    }
}

/// A fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Drop each message with this probability (0..=1).
    Drop {
        /// Probability.
        probability: f64,
    },
    /// Delay each message by a uniform random time in `min..=max`.
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Deliver each message twice with this probability.
    Duplicate {
        /// Probability.
        probability: f64,
    },
    /// Drop everything (a network partition, one direction per rule).
    Partition,
    /// Reset the connection carrying the message with this probability (the message is
    /// lost with it, as is everything queued behind it on that connection).
    Reset {
        /// Probability.
        probability: f64,
    },
}

/// A rule: a fault applied to the traffic from `from` to `to` on `channel`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Senders.
    pub from: Select,
    /// Receivers.
    pub to: Select,
    /// The channel, or every channel.
    pub channel: Option<String>,
    /// The fault.
    pub fault: Fault,
}

impl Rule {
    /// A rule applying `fault` to all traffic; narrow it with the builder methods.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            from: Select::Any,
            to: Select::Any,
            channel: None,
            fault,
        }
    }

    /// Only traffic from these nodes.
    pub fn from(mut self, nodes: &[&str]) -> Rule {
        self.from = Select::nodes(nodes);
        self
    }

    /// Only traffic to these nodes.
    pub fn to(mut self, nodes: &[&str]) -> Rule {
        self.to = Select::nodes(nodes);
        self
    }

    /// Only traffic on this channel.
    pub fn channel(mut self, channel: &str) -> Rule {
        self.channel = Some(channel.to_string());
        self
    }

    fn matches(&self, from: &str, to: &str, channel: &str) -> bool {
        self.from.matches(from)
            && self.to.matches(to)
            && self.channel.as_deref().is_none_or(|c| c == channel)
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deliver `copies` copies after `delay`.
    Deliver {
        /// 1, or more when duplicated.
        copies: u8,
        /// Added delay.
        delay: Duration,
    },
    /// Do not deliver.
    Drop,
    /// Do not deliver, and fail the connection that carries it.
    Reset,
}

impl Action {
    /// Deliver once, now.
    pub fn deliver() -> Action {
        Action::Deliver {
            copies: 1,
            delay: Duration::ZERO,
        }
    }
}

/// Handle of a rule, for [`Interposer::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

struct Counters {
    dropped: Counter,
    delayed: Counter,
    duplicated: Counter,
}

/// The set of active fault rules. Cheap to share behind an `Arc`.
pub struct Interposer {
    rules: RwLock<Vec<(RuleId, Rule)>>,
    next: AtomicU64,
    rng: Mutex<StdRng>,
    counters: Counters,
}

impl std::fmt::Debug for Interposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interposer")
            .field("rules", &self.rules.read().len())
            .finish()
    }
}

/// Describes the interposer metrics (HELP lines) to the current recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "foundation_interpose_faults_total",
        "Messages affected by injected faults, by fault."
    );
}

impl Interposer {
    /// An interposer with no rules and a seeded random generator.
    pub fn with_seed(seed: u64) -> Self {
        let c = |fault: &'static str| metrics::counter!("foundation_interpose_faults_total", "fault" => fault);
        Interposer {
            rules: RwLock::new(Vec::new()),
            next: AtomicU64::new(1),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters {
                dropped: c("drop"),
                delayed: c("delay"),
                duplicated: c("duplicate"),
            },
        }
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) -> RuleId {
        let id = RuleId(self.next.fetch_add(1, Ordering::Relaxed));
        self.rules.write().push((id, rule));
        id
    }

    /// Partitions `a` from `b` in both directions (one rule id for both).
    pub fn partition(&self, a: &[&str], b: &[&str]) -> RuleId {
        let id = RuleId(self.next.fetch_add(1, Ordering::Relaxed));
        let mut rules = self.rules.write();
        rules.push((id, Rule::new(Fault::Partition).from(a).to(b)));
        rules.push((id, Rule::new(Fault::Partition).from(b).to(a)));
        id
    }

    /// Removes a rule (both directions of a partition).
    pub fn remove(&self, id: RuleId) {
        self.rules.write().retain(|(r, _)| *r != id);
    }

    /// Removes every rule.
    pub fn heal(&self) {
        self.rules.write().clear();
    }

    /// Whether any rule is active.
    pub fn is_active(&self) -> bool {
        !self.rules.read().is_empty()
    }

    /// Decides the fate of one message from `from` to `to` on `channel`.
    pub fn decide(&self, from: &str, to: &str, channel: &str) -> Action {
        let rules = self.rules.read();
        if rules.is_empty() {
            return Action::deliver();
        }
        let mut copies = 1u8;
        let mut delay = Duration::ZERO;
        let mut rng = self.rng.lock();
        for (_, rule) in rules.iter().filter(|(_, r)| r.matches(from, to, channel)) {
            match &rule.fault {
                Fault::Partition => {
                    self.counters.dropped.increment(1);
                    return Action::Drop;
                }
                Fault::Drop { probability } => {
                    if rng.random_bool(probability.clamp(0.0, 1.0)) {
                        self.counters.dropped.increment(1);
                        return Action::Drop;
                    }
                }
                Fault::Delay { min, max } => {
                    let (lo, hi) = (
                        min.as_nanos() as u64,
                        max.as_nanos().max(min.as_nanos()) as u64,
                    );
                    delay += Duration::from_nanos(rng.random_range(lo..=hi));
                    self.counters.delayed.increment(1);
                }
                Fault::Reset { probability } => {
                    if rng.random_bool(probability.clamp(0.0, 1.0)) {
                        self.counters.dropped.increment(1);
                        return Action::Reset;
                    }
                }
                Fault::Duplicate { probability } => {
                    if rng.random_bool(probability.clamp(0.0, 1.0)) {
                        copies = copies.saturating_add(1);
                        self.counters.duplicated.increment(1);
                    }
                }
            }
        }
        Action::Deliver { copies, delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_are_honoured_and_reproducible() {
        let run = |seed| {
            let net = Interposer::with_seed(seed);
            net.add(Rule::new(Fault::Drop { probability: 0.3 }).from(&["a"]));
            (0..10_000)
                .filter(|_| net.decide("a", "b", "x") == Action::Drop)
                .count()
        };
        let dropped = run(1);
        assert!(
            (2_700..3_300).contains(&dropped),
            "{dropped} of 10000 at p=0.3"
        );
        assert_eq!(run(1), dropped, "same seed, same faults");
        let net = Interposer::with_seed(1);
        net.add(Rule::new(Fault::Drop { probability: 1.0 }).from(&["a"]));
        assert_eq!(
            net.decide("b", "a", "x"),
            Action::deliver(),
            "only traffic from a"
        );
    }

    #[test]
    fn delays_add_up_and_duplicates_multiply() {
        let net = Interposer::with_seed(3);
        let ms = Duration::from_millis;
        net.add(Rule::new(Fault::Delay {
            min: ms(1),
            max: ms(1),
        }));
        net.add(
            Rule::new(Fault::Delay {
                min: ms(2),
                max: ms(2),
            })
            .channel("bulk"),
        );
        net.add(Rule::new(Fault::Duplicate { probability: 1.0 }).to(&["z"]));
        assert_eq!(
            net.decide("a", "b", "gossip"),
            Action::Deliver {
                copies: 1,
                delay: ms(1)
            }
        );
        assert_eq!(
            net.decide("a", "z", "bulk"),
            Action::Deliver {
                copies: 2,
                delay: ms(3)
            }
        );
    }

    #[test]
    fn partitions_are_symmetric_and_heal() {
        let net = Interposer::with_seed(0);
        let id = net.partition(&["a"], &["b", "c"]);
        assert_eq!(net.decide("b", "a", "x"), Action::Drop);
        assert_eq!(net.decide("a", "c", "x"), Action::Drop);
        assert_eq!(net.decide("b", "c", "x"), Action::deliver());
        net.remove(id);
        assert!(!net.is_active());
    }
}
