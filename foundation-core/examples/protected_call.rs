//! A flaky dependency called through a rate limiter, a circuit breaker and a timeout, with
//! retries. Run with `cargo run -p foundation-core --example protected_call`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use foundation_core::resilience::{
    execute_protected, retry, BreakerSettings, CircuitBreaker, LimiterSettings, Protected,
    Protections, RateLimiter, RetryPolicy,
};
use foundation_core::Error;

#[tokio::main]
async fn main() -> foundation_core::Result<()> {
    let limits: LimiterSettings = toml::from_str(
        r#"
        default = { rate = 100, per = "1s" }
        [operations]
        fetch = { rate = 5, per = "1s" }
        "#,
    )
    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let breaker_settings: BreakerSettings =
        toml::from_str("failure_threshold = 3\nreset_timeout = \"200ms\"")
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let breaker = CircuitBreaker::new("backend", breaker_settings);
    let protections = Protections::new("fetch")
        .rate_limit(RateLimiter::new("api", &limits)?)
        .breaker(breaker.clone())
        .timeout(Duration::from_millis(50));

    // The dependency fails its first two calls, then works.
    let calls = AtomicU32::new(0);
    let user = "alice".to_string();
    let result = retry(&RetryPolicy::default(), || async {
        execute_protected(&user, &protections, async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Error::Unhealthy {
                    name: "backend".into(),
                    reason: "warming up".into(),
                }),
                n => Ok(format!("payload after {} calls", n + 1)),
            }
        })
        .await
    })
    .await;
    println!("result: {result:?}; breaker: {:?}", breaker.state());

    // The limiter allows 5 fetches per second per user, 3 of which the retries above used;
    // the rest are rejected without running the operation.
    let mut rejected = 0;
    for _ in 0..10 {
        let r = execute_protected(&user, &protections, async { Ok::<_, Error>(()) }).await;
        if let Err(Protected::Rejected(Error::RateLimited { .. })) = r {
            rejected += 1;
        }
    }
    println!("rate limited: {rejected} of 10");
    Ok(())
}
