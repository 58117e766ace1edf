//! A tour of Foundation's core services. Run with
//! `cargo run -p foundation-core --example core_services`.
//!
//! It layers configuration from defaults, a TOML document and the environment, watches a
//! prefix for changes, shows a rejected update leaving the value alone, rolls back, and
//! merges a 100,000-key table while a ticker keeps running.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use foundation_core::budget::Budget;
use foundation_core::config::{Config, Rule};
use foundation_core::Error;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Http {
    port: u16,
    workers: u32,
}

#[tokio::main]
async fn main() -> foundation_core::Result<()> {
    let config = Config::new();
    let app = config.create_namespace("app")?;
    app.add_rule("http.workers", Rule::range(1.0, 256.0)).await;

    // Layers: defaults < file < environment < run time.
    app.set_default(
        "http",
        &Http {
            port: 80,
            workers: 2,
        },
    )
    .await?;
    config
        .load_toml_str("file app.toml", "[app.http]\nport = 8080\n")
        .await?;
    config
        .load_env_from([("FOUNDATION_APP__HTTP__WORKERS".into(), "8".into())])
        .await?;
    println!("config: http = {:?}", app.get::<Http>("http")?);

    // Subscribers get path, version and size — never the value.
    let mut changes = app.subscribe("http").await?;
    app.set("http.workers", &16u32).await?;
    let c = changes.recv().await.expect("one change");
    println!(
        "config: changed {} to version {} ({} bytes)",
        c.path, c.version, c.size
    );

    // A rejected update changes nothing.
    match app.set("http.workers", &10_000u32).await {
        Err(e @ Error::Validation { .. }) => println!("config: rejected (code {}): {e}", e.code()),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // A malformed source names its line and changes nothing.
    let e = config
        .load_toml_str("file bad.toml", "[app.http]\nworkers = 0\n")
        .await
        .unwrap_err();
    println!("config: {e}");
    println!("config: workers still {}", app.get::<u32>("http.workers")?);

    // History and rollback.
    let history = app.history("http.workers").await?;
    let first = history.first().expect("history").version;
    app.rollback("http.workers", first).await?;
    println!(
        "config: rolled back to version {first}; workers = {}",
        app.get::<u32>("http.workers")?
    );

    // A 100k-key merge yields to the scheduler, so other tasks keep running.
    let ticker = tokio::spawn(async {
        let mut worst = Duration::ZERO;
        let mut last = Instant::now();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            worst = worst.max(last.elapsed());
            last = Instant::now();
        }
        worst
    });
    let table: BTreeMap<String, u64> = (0..100_000u64).map(|i| (format!("k{i}"), i)).collect();
    let started = Instant::now();
    let report = app.merge("bulk", &table).await?;
    println!(
        "config: merged {} keys in {:?}, writer yielded {} times; ticker worst gap {:?}",
        report.changed,
        started.elapsed(),
        report.yields,
        ticker.await.expect("ticker")
    );

    // Work budgets make any long loop cooperative.
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
        (0..4).filter_map(|a| e.retry_delay(a)).collect::<Vec<_>>()
    );
    config.shutdown().await;
    Ok(())
}
