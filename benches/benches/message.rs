//! Cost of `foundation_beam::message::Messenger::send_optimized` per message, beside
//! baselines measured in the same run. Every variant sends into a process that drops
//! the payload (or acknowledges it, for a table reference):
//!
//! * `send_optimized/1MiB`: a 1 MiB `Bytes` (strategy `SharedBytes`: a refcount bump);
//! * `send_optimized/64B`: a 64-byte `Bytes` (strategy `Direct`) — goal: the 1 MiB send
//!   within 2× of this;
//! * `send_optimized_table_ref/1MiB`: 1 MiB with `table_min_bytes` = 1 MiB (strategy
//!   `TableRef`: table insert, send the reference, the receiver resolves and acknowledges);
//! * `plain_send_vec_clone/1MiB`: `Handle<Vec<u8>>::send(vec.clone())`, a 1 MiB copy per
//!   message — goal: `send_optimized/1MiB` at least 100× faster;
//! * `plain_send_bytes/1MiB`: `Handle<Bytes>::send(bytes.clone())`, the floor without the
//!   messenger (strategy choice, rate tracking, metrics).
//!
//! Runtime: current-thread; sender and process share the thread, so the time per message
//! includes the receiving side. The sender yields every `YIELD_EVERY` messages so that
//! the process drains its mailbox (the backlog stays far below the flow-control threshold);
//! each measurement waits until the process has handled every message.
//! Throughput is one element per message.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundation_beam::message::{MessageOptions, Messenger, Payload, Strategy, StrategySettings};
use foundation_beam::process::spawn_fn;
use foundation_beam::Handle;

const MIB: usize = 1 << 20;
const YIELD_EVERY: u64 = 32;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A process that takes (resolves and acknowledges) and drops every payload, counting.
fn payload_sink(handled: Arc<AtomicU64>) -> Handle<Payload> {
    spawn_fn(move |mut inbox| async move {
        while let Some(p) = inbox.recv().await {
            let p: Payload = p;
            black_box(p.take());
            handled.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// A process that drops every message, counting.
fn plain_sink<M: Send + 'static>(handled: Arc<AtomicU64>) -> Handle<M> {
    spawn_fn(move |mut inbox| async move {
        while let Some(m) = inbox.recv().await {
            drop(black_box(m));
            handled.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Waits until the sink has handled `target` messages in total.
async fn drained(handled: &AtomicU64, target: u64) {
    while handled.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

fn messenger(table_min_bytes: usize) -> Messenger {
    Messenger::new(StrategySettings {
        table_min_bytes,
        ..StrategySettings::default()
    })
    .expect("messenger")
}

fn bench_send_optimized(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    id: BenchmarkId,
    data: Bytes,
    table_min_bytes: usize,
    expect: Strategy,
) {
    let _enter = rt.enter();
    let m = messenger(table_min_bytes);
    let handled = Arc::new(AtomicU64::new(0));
    let sink = payload_sink(handled.clone());
    let opts = MessageOptions::default();
    let check = rt
        .block_on(m.send_optimized(&sink, data.clone(), &opts))
        .expect("send");
    assert_eq!(check.strategy, expect);
    let mut sent = 1u64;
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let r = m.send_optimized(&sink, data.clone(), &opts).await;
                    black_box(r.expect("send"));
                    if i % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                sent += iters;
                drained(&handled, sent).await;
                start.elapsed()
            })
        })
    });
}

fn message_send(c: &mut Criterion) {
    let rt = runtime();
    let big = Bytes::from(vec![7u8; MIB]);
    let small = Bytes::from(vec![7u8; 64]);

    let mut group = c.benchmark_group("message_send");
    group.throughput(Throughput::Elements(1));

    bench_send_optimized(
        &mut group,
        &rt,
        BenchmarkId::new("send_optimized", "1MiB"),
        big.clone(),
        16 * MIB,
        Strategy::SharedBytes,
    );
    bench_send_optimized(
        &mut group,
        &rt,
        BenchmarkId::new("send_optimized", "64B"),
        small,
        16 * MIB,
        Strategy::Direct,
    );
    bench_send_optimized(
        &mut group,
        &rt,
        BenchmarkId::new("send_optimized_table_ref", "1MiB"),
        big.clone(),
        MIB,
        Strategy::TableRef,
    );

    {
        let _enter = rt.enter();
        let handled = Arc::new(AtomicU64::new(0));
        let sink: Handle<Vec<u8>> = plain_sink(handled.clone());
        let vec = vec![7u8; MIB];
        let mut sent = 0u64;
        group.bench_function(BenchmarkId::new("plain_send_vec_clone", "1MiB"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        sink.send(vec.clone()).await.expect("send");
                        if i % YIELD_EVERY == YIELD_EVERY - 1 {
                            tokio::task::yield_now().await;
                        }
                    }
                    sent += iters;
                    drained(&handled, sent).await;
                    start.elapsed()
                })
            })
        });
    }

    {
        let _enter = rt.enter();
        let handled = Arc::new(AtomicU64::new(0));
        let sink: Handle<Bytes> = plain_sink(handled.clone());
        let mut sent = 0u64;
        group.bench_function(BenchmarkId::new("plain_send_bytes", "1MiB"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        sink.send(big.clone()).await.expect("send");
                        if i % YIELD_EVERY == YIELD_EVERY - 1 {
                            tokio::task::yield_now().await;
                        }
                    }
                    sent += iters;
                    drained(&handled, sent).await;
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = message_send
}
criterion_main!(benches);
