//! Cost of the resilience primitives on their hot paths, each beside a baseline measured in
//! the same run:
//!
//! * `breaker_closed`: an async fn called bare vs through a closed `CircuitBreaker`
//!   (`call`), the breaker's permit alone (`try_acquire` + `success`, no future), and
//!   `execute_protected` (limiter + breaker, no timeout);
//! * `limiter_check`: nothing (baseline) vs `RateLimiter::check` on one hot key vs on 1024
//!   keys in turn.
//!
//! Each iteration makes `BATCH` calls; throughput is reported in calls per second.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundation_core::resilience::{
    execute_protected, BreakerSettings, CircuitBreaker, LimitSettings, LimiterSettings,
    Protections, RateLimiter,
};

const BATCH: u64 = 1_000;

/// The operation being protected: cheap, so the bench shows the wrapper's cost.
async fn operation(x: u64) -> Result<u64, ()> {
    Ok(black_box(x).wrapping_mul(3))
}

/// A quota that never rejects during a bench run.
fn unlimited() -> LimiterSettings {
    LimiterSettings {
        default: LimitSettings {
            rate: NonZeroU32::MAX,
            per: Duration::from_secs(3600),
            burst: None,
        },
        ..LimiterSettings::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn breaker_closed(c: &mut Criterion) {
    let rt = runtime();
    let breaker = CircuitBreaker::new("bench", BreakerSettings::default());
    let limiter: RateLimiter<u64> = rt
        .block_on(async { RateLimiter::new("bench", &unlimited()) })
        .unwrap();
    let protections = Protections::new("op")
        .rate_limit(limiter)
        .breaker(breaker.clone());

    let mut group = c.benchmark_group("breaker_closed");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("bare_call", BATCH), |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..BATCH {
                black_box(operation(i).await.unwrap());
            }
        })
    });
    group.bench_function(BenchmarkId::new("breaker_call", BATCH), |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..BATCH {
                black_box(breaker.call(operation(i)).await.unwrap());
            }
        })
    });
    // The breaker's own bookkeeping without the async wrapper of `call`.
    group.bench_function(BenchmarkId::new("permit_only", BATCH), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(&breaker).try_acquire().unwrap().success();
            }
        })
    });
    group.bench_function(
        BenchmarkId::new("execute_protected_limit_breaker", BATCH),
        |b| {
            b.to_async(&rt).iter(|| async {
                for i in 0..BATCH {
                    black_box(
                        execute_protected(&7u64, &protections, operation(i))
                            .await
                            .unwrap(),
                    );
                }
            })
        },
    );
    group.finish();
}

fn limiter_check(c: &mut Criterion) {
    let rt = runtime();
    let limiter: RateLimiter<u64> = rt
        .block_on(async { RateLimiter::new("bench", &unlimited()) })
        .unwrap();

    let mut group = c.benchmark_group("limiter_check");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("nothing", BATCH), |b| {
        b.iter(|| {
            for i in 0..BATCH {
                black_box(black_box(i) & 1023);
            }
        })
    });
    group.bench_function(BenchmarkId::new("check_one_key", BATCH), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(limiter.check(black_box(&7), "op").is_ok());
            }
        })
    });
    group.bench_function(BenchmarkId::new("check_1024_keys", BATCH), |b| {
        b.iter(|| {
            for i in 0..BATCH {
                black_box(limiter.check(&(black_box(i) & 1023), "op").is_ok());
            }
        })
    });
    group.finish();
    assert!(
        limiter.check(&7, "op").is_ok(),
        "bench quota must never reject"
    );
}

criterion_group!(benches, breaker_closed, limiter_check);
criterion_main!(benches);
