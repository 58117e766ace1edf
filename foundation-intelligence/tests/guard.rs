//! Guards: failures and open circuits are counted and served by the fallback; the
//! breaker closes again after its reset timeout (paused time).

use std::num::NonZeroU32;
use std::time::Duration;

use foundation_intelligence::core::resilience::{BreakerSettings, BreakerState};
use foundation_intelligence::guard::{FallbackReason, Guard};

#[tokio::test(start_paused = true)]
async fn failures_open_the_breaker_and_the_fallback_serves() {
    let guard = Guard::new(
        "experimental-codec",
        BreakerSettings {
            failure_threshold: NonZeroU32::new(3).unwrap(),
            reset_timeout: Duration::from_secs(10),
            ..BreakerSettings::default()
        },
    );
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let v = guard
            .call(async { Err::<&str, _>("boom") }, |why| {
                reasons.push(why);
                async { "fallback" }
            })
            .await;
        assert_eq!(v, "fallback");
    }
    let s = guard.stats();
    assert_eq!((s.ok, s.failed, s.rejected, s.fallbacks), (0, 3, 2, 5));
    assert_eq!(reasons[0], FallbackReason::Failed("boom".into()));
    assert_eq!(reasons[4], FallbackReason::CircuitOpen);
    assert!(matches!(guard.state(), BreakerState::Open { .. }));

    // While open, the experimental path is not even run.
    let mut ran = false;
    let v = guard
        .call(
            async {
                ran = true;
                Ok::<_, String>("new")
            },
            |_| async { "fallback" },
        )
        .await;
    assert_eq!(v, "fallback");
    assert!(!ran);

    // After the reset timeout a probe goes through and closes it.
    tokio::time::advance(Duration::from_secs(11)).await;
    let v = guard
        .call(async { Ok::<_, String>("new") }, |_| async { "fallback" })
        .await;
    assert_eq!(v, "new");
    assert!(matches!(guard.state(), BreakerState::Closed { .. }));
    assert_eq!(guard.stats().ok, 1);
}
