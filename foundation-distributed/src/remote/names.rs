//! Cluster-wide names: who holds a name, and the rule that settles a conflict.
//!
//! Each node is the authority for its own claims: it announces a claim when it registers
//! the name, withdraws it when the process stops or the registration is dropped, and
//! repeats all its claims to a node that joins or comes back up. Every node keeps the
//! claims it has heard of and, when two nodes claim the same name, keeps the **winner**:
//! the claim with the smaller `(clock, node, export)`.
//!
//! `clock` is a Lamport clock: a node registers a name at one more than the largest clock
//! it has seen in any claim. So a name registered after this node heard of another claim
//! always loses to it, and claims made on both sides of a partition (which could not see
//! each other) are ordered by clock, then node name. Every node applies the same rule to
//! the same claims, so all nodes agree on the holder once the claims have spread, whatever
//! order they arrived in. No wall clock is involved.
//!
//! A node that sees the claim of a node declared down or departed drops it (as Erlang's
//! `global` does on `nodedown`): during a partition, each side may register the name
//! again; when the partition heals, the rule above picks one holder and the loser's
//! registration is told ([`GlobalName::lost`](super::GlobalName::lost)).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One node's claim of a cluster-wide name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub(crate) name: String,
    pub(crate) node: String,
    /// Lamport clock at registration.
    pub(crate) clock: u64,
    /// The owner's export id (distinguishes re-registrations by the same node).
    pub(crate) export: u64,
    /// The owner node's incarnation: claims of an earlier run are dropped when a later
    /// run is heard of.
    pub(crate) inc: u64,
}

impl Claim {
    fn rank(&self) -> (u64, &str, u64) {
        (self.clock, &self.node, self.export)
    }

    /// Whether `self` wins against `other` under the conflict rule.
    pub(crate) fn beats(&self, other: &Claim) -> bool {
        self.rank() < other.rank()
    }
}

/// What merging a claim did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Merged {
    /// Nothing held the name; the claim holds it now (or it was already known).
    Holds,
    /// The claim won against the previous holder, which lost the name.
    Replaced { loser: Claim },
    /// The claim lost against the current holder.
    Lost { winner: Claim },
}

/// The claims a node knows, and its Lamport clock.
#[derive(Debug, Default)]
pub(crate) struct Table {
    clock: u64,
    claims: HashMap<String, Claim>,
}

impl Table {
    /// The holder of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Claim> {
        self.claims.get(name)
    }

    /// A new claim by `node` (this node), if nobody holds the name.
    pub(crate) fn claim(
        &mut self,
        name: &str,
        node: &str,
        inc: u64,
        export: u64,
    ) -> Result<Claim, Claim> {
        if let Some(held) = self.claims.get(name) {
            return Err(held.clone());
        }
        self.clock += 1;
        let c = Claim {
            name: name.to_string(),
            node: node.to_string(),
            clock: self.clock,
            export,
            inc,
        };
        self.claims.insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Merges a claim heard from another node.
    pub(crate) fn merge(&mut self, c: Claim) -> Merged {
        self.clock = self.clock.max(c.clock);
        match self.claims.get(&c.name) {
            None => {
                self.claims.insert(c.name.clone(), c);
                Merged::Holds
            }
            Some(held) if *held == c => Merged::Holds,
            Some(held) if c.beats(held) => {
                let loser = self
                    .claims
                    .insert(c.name.clone(), c)
                    .expect("checked above");
                Merged::Replaced { loser }
            }
            Some(held) => Merged::Lost {
                winner: held.clone(),
            },
        }
    }

    /// Withdraws `name` if `node`'s claim with `export` holds it.
    pub(crate) fn release(&mut self, name: &str, node: &str, export: u64) -> bool {
        let matches = self
            .claims
            .get(name)
            .is_some_and(|c| c.node == node && c.export == export);
        if matches {
            self.claims.remove(name);
        }
        matches
    }

    /// Drops every claim of `node` (declared down or departed).
    pub(crate) fn drop_node(&mut self, node: &str) -> usize {
        let before = self.claims.len();
        self.claims.retain(|_, c| c.node != node);
        before - self.claims.len()
    }

    /// Drops the claims of `node` made by a run older than `inc`.
    pub(crate) fn drop_older(&mut self, node: &str, inc: u64) -> usize {
        let before = self.claims.len();
        self.claims.retain(|_, c| c.node != node || c.inc >= inc);
        before - self.claims.len()
    }

    /// The claims `node` owns.
    pub(crate) fn owned_by(&self, node: &str) -> Vec<Claim> {
        self.claims
            .values()
            .filter(|c| c.node == node)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claim(name: &str, node: &str, clock: u64, export: u64) -> Claim {
        Claim {
            name: name.into(),
            node: node.into(),
            clock,
            export,
            inc: 1,
        }
    }

    #[test]
    fn a_later_registration_loses_to_one_it_has_seen() {
        let mut a = Table::default();
        let first = a.claim("leader", "a", 1, 1).unwrap();
        let mut b = Table::default();
        assert_eq!(b.merge(first.clone()), Merged::Holds);
        // `b` cannot claim while `a` holds it; after `a` is dropped it may, with a larger clock.
        assert_eq!(b.claim("leader", "b", 1, 9), Err(first.clone()));
        b.drop_node("a");
        let second = b.claim("leader", "b", 1, 9).unwrap();
        assert!(second.clock > first.clock);
        assert!(first.beats(&second));
    }

    #[test]
    fn partition_claims_are_settled_by_clock_then_node() {
        let mut a = Table::default();
        let mut b = Table::default();
        let ca = a.claim("x", "a", 1, 1).unwrap();
        let cb = b.claim("x", "b", 1, 1).unwrap();
        assert_eq!(ca.clock, cb.clock);
        assert_eq!(a.merge(cb.clone()), Merged::Lost { winner: ca.clone() });
        assert_eq!(b.merge(ca.clone()), Merged::Replaced { loser: cb });
        assert_eq!(a.get("x"), b.get("x"));
    }

    #[test]
    fn release_only_by_the_holder() {
        let mut t = Table::default();
        t.claim("x", "a", 1, 1).unwrap();
        assert!(!t.release("x", "b", 1));
        assert!(!t.release("x", "a", 2));
        assert!(t.release("x", "a", 1));
        assert!(t.get("x").is_none());
    }

    #[test]
    fn claims_of_an_earlier_run_are_dropped() {
        let mut t = Table::default();
        t.claim("x", "a", 5, 1).unwrap();
        assert_eq!(t.drop_older("a", 5), 0);
        assert_eq!(t.drop_older("b", 9), 0);
        assert_eq!(t.drop_older("a", 6), 1);
        assert!(t.get("x").is_none());
    }

    proptest! {
        /// Whatever order the claims arrive in, every node ends with the same holder: the
        /// smallest (clock, node, export).
        #[test]
        fn all_orders_agree(
            claims in proptest::collection::vec((0u64..4, 0usize..4, 0u64..3), 1..8),
            seed in any::<u64>(),
        ) {
            let nodes = ["a", "b", "c", "d"];
            let cs: Vec<Claim> = claims
                .iter()
                .map(|(clock, n, e)| claim("x", nodes[*n], *clock, *e))
                .collect();
            let best = cs.iter().min_by(|x, y| x.rank().cmp(&y.rank())).unwrap().clone();
            let mut forward = Table::default();
            for c in &cs { forward.merge(c.clone()); }
            let mut shuffled = cs.clone();
            let len = shuffled.len();
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            let mut other = Table::default();
            for c in &shuffled { other.merge(c.clone()); }
            prop_assert_eq!(forward.get("x"), Some(&best));
            prop_assert_eq!(other.get("x"), Some(&best));
        }
    }
}
