//! The φ-accrual failure detector (Hayashibara et al., 2004), as Akka and Cassandra use it.
//!
//! Instead of a fixed timeout, the detector learns the distribution of a peer's heartbeat
//! inter-arrival times (a sliding window: mean and standard deviation) and reports
//! φ = −log10(P(a heartbeat arrives later than now)). φ = 1 means a 10 % chance that the
//! peer is in fact alive, φ = 8 a 10⁻⁸ chance. A peer is *suspected* when φ exceeds the
//! threshold. The normal distribution's tail is computed with the logistic approximation
//! used by Akka.
//!
//! ```
//! use std::time::Duration;
//! use foundation_distributed::membership::{PhiAccrual, PhiSettings};
//! use tokio::time::Instant;
//!
//! let mut d = PhiAccrual::new(PhiSettings::default());
//! let start = Instant::now();
//! for i in 0..10 {
//!     d.heartbeat(start + Duration::from_millis(1000 * i));
//! }
//! let last = start + Duration::from_secs(9);
//! assert!(d.is_available(last + Duration::from_millis(1100)));
//! assert!(!d.is_available(last + Duration::from_secs(10)));
//! // The time after the last heartbeat at which the peer will be suspected:
//! assert!(d.detection_bound() < Duration::from_secs(10));
//! ```

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Settings of a [`PhiAccrual`] detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhiSettings {
    /// φ above which a peer is suspected. Default 8.
    pub threshold: f64,
    /// Inter-arrival samples kept. Default 100.
    pub window: usize,
    /// Floor of the standard deviation, in milliseconds, so that a very regular peer is not
    /// suspected after a tiny delay. Default 100.
    pub min_std_dev_ms: u64,
    /// Pause tolerated on top of the learned mean (GC-like stalls), in milliseconds.
    /// Default 0.
    pub acceptable_pause_ms: u64,
    /// Interval assumed before two heartbeats have been seen, in milliseconds. Default 1000.
    pub first_heartbeat_estimate_ms: u64,
}

impl Default for PhiSettings {
    fn default() -> Self {
        PhiSettings {
            threshold: 8.0,
            window: 100,
            min_std_dev_ms: 100,
            acceptable_pause_ms: 0,
            first_heartbeat_estimate_ms: 1000,
        }
    }
}

/// A φ-accrual detector for one peer.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    settings: PhiSettings,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl PhiAccrual {
    /// A detector that has seen no heartbeat yet.
    pub fn new(settings: PhiSettings) -> Self {
        let mut d = PhiAccrual {
            settings,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        };
        // Seed with the first-heartbeat estimate (mean m, std m/4), as Akka does, so the
        // detector works from the second heartbeat on.
        let m = d.settings.first_heartbeat_estimate_ms.max(1) as f64;
        d.push(m - m / 4.0);
        d.push(m + m / 4.0);
        d
    }

    fn push(&mut self, ms: f64) {
        if self.intervals.len() >= self.settings.window.max(2) {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.intervals.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Records a heartbeat received at `at`.
    pub fn heartbeat(&mut self, at: Instant) {
        if let Some(last) = self.last {
            let ms = at.saturating_duration_since(last).as_secs_f64() * 1e3;
            self.push(ms);
        }
        self.last = Some(at);
    }

    fn mean_std(&self) -> (f64, f64) {
        let n = self.intervals.len().max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let std = var.sqrt().max(self.settings.min_std_dev_ms as f64);
        (mean + self.settings.acceptable_pause_ms as f64, std)
    }

    /// φ at `now`; 0 before the first heartbeat.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let elapsed = now.saturating_duration_since(last).as_secs_f64() * 1e3;
        let (mean, std) = self.mean_std();
        phi(elapsed, mean, std)
    }

    /// Whether φ at `now` is at or below the threshold (true before any heartbeat).
    pub fn is_available(&self, now: Instant) -> bool {
        self.phi(now) <= self.settings.threshold
    }

    /// How long after the last heartbeat φ crosses the threshold with the current
    /// statistics: the detector's bound on detecting a stopped peer.
    pub fn detection_bound(&self) -> Duration {
        let (mean, std) = self.mean_std();
        // φ grows monotonically with the elapsed time: bisect.
        let (mut lo, mut hi) = (0.0f64, mean + 100.0 * std);
        for _ in 0..64 {
            let mid = (lo + hi) / 2.0;
            if phi(mid, mean, std) > self.settings.threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Duration::from_secs_f64(hi / 1e3)
    }

    /// When the last heartbeat arrived.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last
    }
}

/// φ for `elapsed` ms since the last heartbeat, with inter-arrival mean and std (ms).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// φ-accrual detectors for a set of peers.
#[derive(Debug, Clone)]
pub struct FailureDetector<K> {
    settings: PhiSettings,
    peers: HashMap<K, PhiAccrual>,
}

impl<K: Hash + Eq + Clone> FailureDetector<K> {
    /// An empty detector.
    pub fn new(settings: PhiSettings) -> Self {
        FailureDetector {
            settings,
            peers: HashMap::new(),
        }
    }

    /// Records a heartbeat from `peer` (starting to watch it).
    pub fn heartbeat(&mut self, peer: &K, at: Instant) {
        self.peers
            .entry(peer.clone())
            .or_insert_with(|| PhiAccrual::new(self.settings.clone()))
            .heartbeat(at);
    }

    /// Stops watching `peer`.
    pub fn remove(&mut self, peer: &K) {
        self.peers.remove(peer);
    }

    /// φ of `peer`, if watched.
    pub fn phi(&self, peer: &K, now: Instant) -> Option<f64> {
        self.peers.get(peer).map(|d| d.phi(now))
    }

    /// The watched peers whose φ exceeds the threshold at `now`.
    pub fn suspects(&self, now: Instant) -> Vec<K> {
        self.peers
            .iter()
            .filter(|(_, d)| !d.is_available(now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The detector of `peer`, if watched.
    pub fn detector(&self, peer: &K) -> Option<&PhiAccrual> {
        self.peers.get(peer)
    }

    /// Keeps watching only the peers for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.peers.retain(|k, _| keep(k));
    }

    /// The watched peers.
    pub fn watched(&self) -> impl Iterator<Item = &K> {
        self.peers.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(every_ms: u64, n: u64) -> (PhiAccrual, Instant) {
        let mut d = PhiAccrual::new(PhiSettings::default());
        let t0 = Instant::now();
        for i in 0..n {
            d.heartbeat(t0 + Duration::from_millis(every_ms * i));
        }
        (d, t0 + Duration::from_millis(every_ms * (n - 1)))
    }

    #[test]
    fn phi_grows_with_silence() {
        let (d, last) = regular(200, 50);
        let mut prev = -1.0;
        for ms in [0u64, 100, 200, 300, 500, 800, 1500] {
            let p = d.phi(last + Duration::from_millis(ms));
            assert!(p >= prev, "phi must not decrease: {p} after {prev}");
            prev = p;
        }
        assert!(d.is_available(last + Duration::from_millis(250)));
        assert!(!d.is_available(last + Duration::from_secs(3)));
    }

    #[test]
    fn detection_bound_is_where_the_verdict_flips() {
        let (d, last) = regular(100, 100);
        let bound = d.detection_bound();
        assert!(d.is_available(last + bound - Duration::from_millis(5)));
        assert!(!d.is_available(last + bound + Duration::from_millis(5)));
        // With the 100 ms std floor and a 100 ms mean, the bound is a few hundred ms.
        assert!(
            bound > Duration::from_millis(200) && bound < Duration::from_secs(2),
            "{bound:?}"
        );
    }

    #[test]
    fn irregular_peers_get_more_slack() {
        let (steady, _) = regular(500, 60);
        let mut jittery = PhiAccrual::new(PhiSettings::default());
        let mut t = Instant::now();
        for i in 0..60u64 {
            t += Duration::from_millis(if i % 2 == 0 { 100 } else { 900 });
            jittery.heartbeat(t);
        }
        assert!(jittery.detection_bound() > steady.detection_bound());
    }

    #[test]
    fn registry_reports_suspects() {
        let mut fd = FailureDetector::new(PhiSettings::default());
        let t0 = Instant::now();
        for i in 0..50 {
            let at = t0 + Duration::from_millis(100 * i);
            fd.heartbeat(&"a", at);
            if i < 10 {
                fd.heartbeat(&"b", at);
            }
        }
        // `b` has been silent for 4 s, `a` for 100 ms.
        let now = t0 + Duration::from_millis(5000);
        assert_eq!(fd.suspects(now), vec!["b"]);
        fd.remove(&"b");
        assert!(fd.suspects(now).is_empty());
    }
}
