//! Broadcast: deliver-once bookkeeping keyed by (origin, origin's incarnation, id), so a
//! restarted origin (a new incarnation, ids from 1 again) is not taken as already seen.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

type Key = (String, u64, u64);

/// How many broadcast keys are remembered.
const REMEMBERED: usize = 65_536;

pub(crate) struct Broadcasts {
    next_id: AtomicU64,
    seen: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

impl Broadcasts {
    pub fn new() -> Self {
        Broadcasts {
            next_id: AtomicU64::new(1),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records (origin, incarnation, id); false if it was seen already.
    pub fn first_time(&self, origin: &str, incarnation: u64, id: u64) -> bool {
        let mut seen = self.seen.lock();
        let key = (origin.to_string(), incarnation, id);
        if !seen.0.insert(key.clone()) {
            return false;
        }
        seen.1.push_back(key);
        if seen.1.len() > REMEMBERED {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        true
    }
}
