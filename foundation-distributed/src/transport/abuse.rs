//! Keeping abuse cheap: failed handshakes per source address are rate-limited
//! (`governor`), and handshake failures are logged at most a few times a minute, with
//! a count of those not logged. Every failure is counted in metrics regardless.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

/// Failed handshakes one source address may cause in a burst before it is refused.
pub(crate) const FAILURE_BURST: u32 = 20;
/// Failed handshakes a source address earns back per minute.
pub(crate) const FAILURES_PER_MINUTE: u32 = 60;
/// Handshake-failure log lines per window (the rest are counted into the next line).
pub(crate) const LOG_LINES_PER_WINDOW: u32 = 3;
/// The log window.
pub(crate) const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Penalised addresses remembered at most (older entries are dropped first).
const MAX_PENALISED: usize = 4096;

/// Rate limits failed handshakes per source IP address.
pub(crate) struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their quota, and until when they are refused.
    penalised: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("penalised", &self.penalised.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for FailureLimiter {
    fn default() -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(FAILURES_PER_MINUTE).expect("non-zero"))
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero"));
        FailureLimiter {
            limiter: RateLimiter::keyed(quota),
            penalised: Mutex::new(HashMap::new()),
        }
    }
}

impl FailureLimiter {
    /// Whether a new connection from `ip` is refused before any handshake work.
    pub(crate) fn refuses(&self, ip: IpAddr) -> bool {
        let mut penalised = self.penalised.lock();
        match penalised.get(&ip) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                penalised.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Records a failed handshake from `ip`; over the quota, the address is refused
    /// until it has earned a failure back.
    pub(crate) fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()));
            let mut penalised = self.penalised.lock();
            if penalised.len() >= MAX_PENALISED {
                let now = Instant::now();
                penalised.retain(|_, until| *until > now);
                if penalised.len() >= MAX_PENALISED {
                    // Still full of live entries: forget the one expiring first.
                    if let Some(first) =
                        penalised.iter().min_by_key(|(_, u)| **u).map(|(ip, _)| *ip)
                    {
                        penalised.remove(&first);
                    }
                }
                self.limiter.retain_recent();
            }
            penalised.insert(ip, Instant::now() + wait.max(Duration::from_millis(100)));
        }
    }
}

/// Logs at most [`LOG_LINES_PER_WINDOW`] lines per [`LOG_WINDOW`]; each line carries
/// how many were suppressed before it.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle {
            state: Mutex::new((None, 0, 0)),
        }
    }
}

impl LogThrottle {
    /// `Some(suppressed)` if this event may be logged (with the number of events not
    /// logged since the last line), `None` if it must not.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (start, lines, suppressed) = &mut *state;
        if start.is_none_or(|s| now.duration_since(s) >= LOG_WINDOW) {
            *start = Some(now);
            *lines = 0;
        }
        if *lines < LOG_LINES_PER_WINDOW {
            *lines += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn log_throttle_admits_a_few_per_window_and_counts_the_rest() {
        let t = LogThrottle::default();
        let admitted = (0..1000).filter(|_| t.admit().is_some()).count();
        assert_eq!(admitted, LOG_LINES_PER_WINDOW as usize);
        tokio::time::advance(LOG_WINDOW).await;
        assert_eq!(t.admit(), Some(1000 - u64::from(LOG_LINES_PER_WINDOW)));
    }

    #[test]
    fn a_failing_address_is_refused_after_its_burst_and_others_are_not() {
        let l = FailureLimiter::default();
        let bad: IpAddr = "127.0.0.2".parse().unwrap();
        let good: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..FAILURE_BURST {
            assert!(!l.refuses(bad));
            l.failed(bad);
        }
        l.failed(bad);
        assert!(l.refuses(bad));
        assert!(!l.refuses(good));
    }
}
