//! A tour of Foundation's core services. Run with
//! `cargo run -p foundation-core --example core_services`.

use std::time::Duration;

use foundation_core::budget::Budget;
use foundation_core::Error;

#[tokio::main]
async fn main() {
    // A long loop that yields to the scheduler every 1024 units of work.
    let mut budget = Budget::new(1024);
    let mut acc = 0u64;
    for i in 0..1_000_000u64 {
        acc = acc.wrapping_add(i * i);
        budget.tick().await;
    }
    println!(
        "budget: summed 1e6 squares ({acc}), yielded {} times",
        budget.yields()
    );

    // Errors carry stable codes and retry advice.
    let e = Error::Timeout {
        operation: "fetch user".into(),
        after: Duration::from_secs(2),
    };
    println!(
        "error {}: {e}; retryable={}, delays={:?}",
        e.code(),
        e.is_retryable(),
        (0..4)
            .map(|a| e.retry_delay(a).unwrap())
            .collect::<Vec<_>>()
    );
}
