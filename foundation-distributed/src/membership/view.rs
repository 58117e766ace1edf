//! The membership view: a sans-IO state machine in the style of SWIM / memberlist.
//!
//! Each member is known by name, address and role, and by a **generation**
//! `(incarnation, version)`: the incarnation is fixed when the node starts (its start
//! time in µs, so a node restarted under the same name has a larger one), the version is
//! bumped by the member itself to refute a suspicion. A member is [`Status::Alive`],
//! [`Status::Suspect`], [`Status::Dead`] or [`Status::Left`].
//!
//! Rules (memberlist's, with the incarnation in front of the version):
//! * an update with a larger generation replaces what is known;
//! * at the same generation, `Left` > `Dead` > `Suspect` > `Alive` (a suspicion overrides
//!   the alive state it suspects; a confirmation overrides the suspicion);
//! * an update about the local node that suspects it or declares it dead at its current
//!   generation is **refuted**: the local version becomes the update's plus one, and the
//!   node gossips that (an `Alive` with a larger generation overrides everything);
//! * a suspect not refuted within `suspicion_timeout` is declared dead; a dead member is
//!   removed after `dead_removal` and kept as a **tombstone** (its generation) for
//!   `tombstone_ttl`: updates at or below the tombstone's generation are ignored, so stale
//!   gossip cannot resurrect it, while a restart (a larger incarnation) or a refutation is
//!   accepted. A member that left is tombstoned at once.
//!
//! Time is passed in (`now`), so the machine runs the same under tokio's paused time, in a
//! simulator or in tests. The node feeds it gossip and its failure detector's verdicts and
//! acts on the [`ViewEvent`]s it returns.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::topology::Role;

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Up.
    Alive,
    /// Suspected by a failure detector; refutable.
    Suspect,
    /// Declared dead (cluster-wide once gossiped).
    Dead,
    /// Left on purpose.
    Left,
}

/// What one node says about one member: the unit of gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Node name.
    pub name: String,
    /// Address it listens on.
    pub addr: String,
    /// Role.
    pub role: Role,
    /// Start time of that run of the node (µs since the epoch).
    pub incarnation: u64,
    /// Refutation counter within the incarnation.
    pub version: u64,
    /// State.
    pub status: Status,
}

impl Update {
    fn generation(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }

    /// Whether this update overrides `other` (about the same member).
    pub fn overrides(&self, other: &Update) -> bool {
        (self.generation(), self.status) > (other.generation(), other.status)
    }
}

/// What a change to the view means for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewEvent {
    /// A member was added (first seen, or a new incarnation after its tombstone).
    Joined(String),
    /// A member came back with a new incarnation (restarted) while still known.
    Restarted(String),
    /// A member is suspected.
    Suspected(String),
    /// A suspected or dead member refuted (it is alive).
    Alive(String),
    /// A member was declared dead.
    Dead(String),
    /// A member left.
    Left(String),
    /// A dead member was removed from the view (tombstoned).
    Removed(String),
    /// The local node refuted a suspicion or death notice; gossip its new entry.
    Refuted,
}

/// Timing of the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewSettings {
    /// How long a suspicion may stand before the member is declared dead. Default 1 s.
    pub suspicion_timeout: Duration,
    /// How long a dead member stays in the view (marked down) before it is removed.
    /// Default 30 s.
    pub dead_removal: Duration,
    /// How long the tombstone of a removed or departed member is kept. Default 10 min.
    pub tombstone_ttl: Duration,
}

impl Default for ViewSettings {
    fn default() -> Self {
        ViewSettings {
            suspicion_timeout: Duration::from_secs(1),
            dead_removal: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    update: Update,
    since: Instant,
}

/// The membership view of one node. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct View {
    settings: ViewSettings,
    me: Update,
    members: BTreeMap<String, Entry>,
    /// Removed members: generation, and when removed.
    tombstones: HashMap<String, ((u64, u64), Instant)>,
}

impl View {
    /// A view holding only the local node, alive.
    pub fn new(me: Update, settings: ViewSettings) -> Self {
        View {
            settings,
            me,
            members: BTreeMap::new(),
            tombstones: HashMap::new(),
        }
    }

    /// The local node's entry.
    pub fn me(&self) -> &Update {
        &self.me
    }

    /// The settings.
    pub fn settings(&self) -> &ViewSettings {
        &self.settings
    }

    /// The other members (not removed), by name.
    pub fn members(&self) -> impl Iterator<Item = &Update> {
        self.members.values().map(|e| &e.update)
    }

    /// What is known about `name` (not removed; the local node included).
    pub fn get(&self, name: &str) -> Option<&Update> {
        if name == self.me.name {
            return Some(&self.me);
        }
        self.members.get(name).map(|e| &e.update)
    }

    /// Whether `name` is a tombstoned (removed or departed) member.
    pub fn is_tombstoned(&self, name: &str) -> bool {
        self.tombstones.contains_key(name)
    }

    /// Every entry to gossip: the local node and every member not removed.
    pub fn digest(&self) -> Vec<Update> {
        std::iter::once(self.me.clone())
            .chain(self.members.values().map(|e| e.update.clone()))
            .collect()
    }

    /// Applies one gossiped update at `now`; returns what changed.
    pub fn apply(&mut self, u: Update, now: Instant) -> Vec<ViewEvent> {
        if u.name == self.me.name {
            return self.about_me(&u);
        }
        if let Some((generation, _)) = self.tombstones.get(&u.name) {
            if u.generation() <= *generation {
                return Vec::new(); // stale: cannot resurrect
            }
        }
        let name = u.name.clone();
        let mut events = Vec::new();
        match self.members.get(&name) {
            Some(e) if !u.overrides(&e.update) => return events,
            Some(e) => {
                let old = e.update.clone();
                if u.incarnation > old.incarnation {
                    events.push(ViewEvent::Restarted(name.clone()));
                }
                match u.status {
                    Status::Alive if old.status != Status::Alive => {
                        events.push(ViewEvent::Alive(name.clone()))
                    }
                    Status::Suspect if old.status != Status::Suspect => {
                        events.push(ViewEvent::Suspected(name.clone()))
                    }
                    Status::Dead if old.status != Status::Dead => {
                        events.push(ViewEvent::Dead(name.clone()))
                    }
                    _ => {}
                }
            }
            None => {
                if u.status == Status::Left {
                    self.tombstones.insert(name, (u.generation(), now));
                    return events;
                }
                self.tombstones.remove(&name);
                events.push(ViewEvent::Joined(name.clone()));
                match u.status {
                    Status::Suspect => events.push(ViewEvent::Suspected(name.clone())),
                    Status::Dead => events.push(ViewEvent::Dead(name.clone())),
                    _ => {}
                }
            }
        }
        if u.status == Status::Left {
            self.members.remove(&name);
            self.tombstones.insert(name.clone(), (u.generation(), now));
            events.push(ViewEvent::Left(name));
            return events;
        }
        self.members.insert(
            name,
            Entry {
                update: u,
                since: now,
            },
        );
        events
    }

    fn about_me(&mut self, u: &Update) -> Vec<ViewEvent> {
        let refutable = matches!(u.status, Status::Suspect | Status::Dead)
            && u.incarnation == self.me.incarnation
            && u.version >= self.me.version;
        if refutable {
            self.me.version = u.version + 1;
            return vec![ViewEvent::Refuted];
        }
        Vec::new()
    }

    /// The local failure detector suspects `name`: marks it suspect at its current
    /// generation. Returns the update to gossip, if it changed anything.
    pub fn suspect(&mut self, name: &str, now: Instant) -> Option<Update> {
        let e = self.members.get_mut(name)?;
        if e.update.status != Status::Alive {
            return None;
        }
        e.update.status = Status::Suspect;
        e.since = now;
        Some(e.update.clone())
    }

    /// Marks the local node as leaving; returns its goodbye.
    pub fn leave(&mut self) -> Update {
        self.me.status = Status::Left;
        self.me.clone()
    }

    /// Advances timers: suspects past `suspicion_timeout` become dead, dead members past
    /// `dead_removal` are removed (tombstoned), old tombstones are forgotten.
    pub fn tick(&mut self, now: Instant) -> Vec<ViewEvent> {
        let mut events = Vec::new();
        let mut removed = Vec::new();
        for (name, e) in self.members.iter_mut() {
            let age = now.saturating_duration_since(e.since);
            match e.update.status {
                Status::Suspect if age >= self.settings.suspicion_timeout => {
                    e.update.status = Status::Dead;
                    e.since = now;
                    events.push(ViewEvent::Dead(name.clone()));
                }
                Status::Dead if age >= self.settings.dead_removal => removed.push(name.clone()),
                _ => {}
            }
        }
        for name in removed {
            if let Some(e) = self.members.remove(&name) {
                self.tombstones
                    .insert(name.clone(), (e.update.generation(), now));
                events.push(ViewEvent::Removed(name));
            }
        }
        let ttl = self.settings.tombstone_ttl;
        self.tombstones
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, inc: u64, version: u64, status: Status) -> Update {
        Update {
            name: name.into(),
            addr: format!("mem://{name}"),
            role: Role::Peer,
            incarnation: inc,
            version,
            status,
        }
    }

    fn view() -> View {
        View::new(up("a", 1, 0, Status::Alive), ViewSettings::default())
    }

    #[test]
    fn suspicion_is_refuted_by_a_larger_version_and_confirmed_otherwise() {
        let t = Instant::now();
        let mut v = view();
        assert_eq!(
            v.apply(up("b", 5, 0, Status::Alive), t),
            [ViewEvent::Joined("b".into())]
        );
        let s = v.suspect("b", t).unwrap();
        assert_eq!(s.status, Status::Suspect);
        // Stale alive at the same generation does not clear the suspicion.
        assert!(v.apply(up("b", 5, 0, Status::Alive), t).is_empty());
        assert_eq!(
            v.apply(up("b", 5, 1, Status::Alive), t),
            [ViewEvent::Alive("b".into())]
        );
        v.suspect("b", t).unwrap();
        let later = t + v.settings().suspicion_timeout;
        assert_eq!(v.tick(later), [ViewEvent::Dead("b".into())]);
    }

    #[test]
    fn the_local_node_refutes_and_ignores_stale_news() {
        let mut v = view();
        let t = Instant::now();
        assert_eq!(
            v.apply(up("a", 1, 0, Status::Suspect), t),
            [ViewEvent::Refuted]
        );
        assert_eq!(v.me().version, 1);
        assert!(v.apply(up("a", 1, 0, Status::Dead), t).is_empty(), "stale");
        assert_eq!(
            v.apply(up("a", 1, 1, Status::Dead), t),
            [ViewEvent::Refuted]
        );
        assert_eq!(v.me().version, 2);
    }

    #[test]
    fn a_removed_member_is_not_resurrected_but_a_restart_rejoins() {
        let mut v = view();
        let t = Instant::now();
        v.apply(up("b", 5, 3, Status::Alive), t);
        v.apply(up("b", 5, 3, Status::Dead), t);
        let removed_at = t + v.settings().dead_removal;
        assert_eq!(v.tick(removed_at), [ViewEvent::Removed("b".into())]);
        assert!(v.get("b").is_none());
        for stale in [
            up("b", 5, 3, Status::Alive),
            up("b", 5, 2, Status::Alive),
            up("b", 4, 9, Status::Alive),
        ] {
            assert!(v.apply(stale, removed_at).is_empty());
        }
        assert_eq!(
            v.apply(up("b", 6, 0, Status::Alive), removed_at),
            [ViewEvent::Joined("b".into())]
        );
    }

    #[test]
    fn a_restart_while_known_is_reported_and_left_tombstones_at_once() {
        let mut v = view();
        let t = Instant::now();
        v.apply(up("b", 5, 0, Status::Alive), t);
        v.apply(up("b", 5, 0, Status::Dead), t);
        assert_eq!(
            v.apply(up("b", 7, 0, Status::Alive), t),
            [
                ViewEvent::Restarted("b".into()),
                ViewEvent::Alive("b".into())
            ]
        );
        assert_eq!(
            v.apply(up("b", 7, 0, Status::Left), t),
            [ViewEvent::Left("b".into())]
        );
        assert!(v.apply(up("b", 7, 0, Status::Alive), t).is_empty());
        assert!(v.is_tombstoned("b"));
    }
}
