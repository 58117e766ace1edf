//! Port and correlation benchmarks, each beside its baseline in the same run.
//!
//! * `port_round_trip`: one request and its reply, sequentially, through a port running
//!   `cat` (two pipes and a child process) vs the same 4-byte length-prefixed frames
//!   through an in-process `tokio::io::duplex` pipe answered by an echo task.
//! * `port_pipelined`: 64 requests of 64 bytes outstanding at once (64 caller tasks
//!   through a `cat` port) vs 64 frames written then 64 read on the duplex pipe.
//! * `correlate_10k`: grouping a 10,000-event batch in process (`correlate_events`), the
//!   MessagePack encode + decode of the request alone, and the whole call through the
//!   `foundation-correlator` process (`Correlator::correlate`) when the binary has been
//!   built next to the bench (`cargo build --release -p foundation-core` first).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundation_benches::runtime;
use foundation_core::events::{correlate_events, CorrelateOptions, Correlator, Event};
use foundation_core::port::Port;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

async fn write_frame(w: &mut DuplexStream, payload: &[u8]) {
    w.write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    w.write_all(payload).await.unwrap();
}

async fn read_frame(r: &mut DuplexStream, buf: &mut Vec<u8>) -> bool {
    let mut header = [0u8; 4];
    if r.read_exact(&mut header).await.is_err() {
        return false;
    }
    buf.resize(u32::from_be_bytes(header) as usize, 0);
    r.read_exact(buf).await.is_ok()
}

/// The baseline: a duplex pipe whose far end echoes every frame.
fn duplex_echo(rt: &tokio::runtime::Runtime) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    rt.spawn(async move {
        let mut buf = Vec::new();
        while read_frame(&mut server, &mut buf).await {
            write_frame(&mut server, &buf).await;
        }
    });
    client
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let port = rt.block_on(async { Port::builder("cat").spawn().unwrap() });
    let mut pipe = duplex_echo(&rt);
    let mut g = c.benchmark_group("port_round_trip");
    g.measurement_time(Duration::from_secs(4));
    for size in [64usize, 4096] {
        let payload = Bytes::from(vec![7u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("baseline_duplex_echo", size),
            &payload,
            |b, p| {
                let mut buf = Vec::new();
                b.iter(|| {
                    rt.block_on(async {
                        write_frame(&mut pipe, p).await;
                        assert!(read_frame(&mut pipe, &mut buf).await);
                        black_box(buf.len())
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("foundation_port_cat", size),
            &payload,
            |b, p| {
                b.to_async(&rt)
                    .iter(|| async { black_box(port.request(p.clone()).await.unwrap()) })
            },
        );
    }
    g.finish();
    rt.block_on(port.shutdown());
}

fn pipelined(c: &mut Criterion) {
    const N: usize = 64;
    let rt = runtime();
    let port = rt.block_on(async { Port::builder("cat").spawn().unwrap() });
    let mut pipe = duplex_echo(&rt);
    let payload = Bytes::from(vec![7u8; 64]);
    let mut g = c.benchmark_group("port_pipelined");
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("baseline_duplex_echo_64", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..N {
                    write_frame(&mut pipe, &payload).await;
                }
                for _ in 0..N {
                    assert!(read_frame(&mut pipe, &mut buf).await);
                }
            })
        })
    });
    g.bench_function("foundation_port_cat_64", |b| {
        b.to_async(&rt).iter(|| async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..N {
                let port = port.clone();
                let p = payload.clone();
                set.spawn(async move { port.request(p).await.unwrap() });
            }
            while let Some(r) = set.join_next().await {
                black_box(r.unwrap());
            }
        })
    });
    g.finish();
    rt.block_on(port.shutdown());
}

/// 1,000 flows of 10 events (each a parent chain) plus 1,000 events alone in their flow.
fn batch_10k() -> Vec<Event> {
    let mut batch = Vec::with_capacity(10_000);
    for flow in 0..900u64 {
        let mut parent = Event::new("user", &flow).unwrap();
        parent.timestamp_us = flow * 1_000;
        batch.push(parent.clone());
        for step in 1..10u64 {
            let mut child = Event::new("user", &step).unwrap().caused_by(&parent);
            child.timestamp_us = flow * 1_000 + step;
            batch.push(child.clone());
            parent = child;
        }
    }
    for i in 0..1_000u64 {
        let mut e = Event::new("system", &i).unwrap();
        e.timestamp_us = i * 900;
        batch.push(e);
    }
    batch
}

fn correlate_10k(c: &mut Criterion) {
    let rt = runtime();
    let batch = batch_10k();
    let options = CorrelateOptions::default();
    let mut g = c.benchmark_group("correlate_10k");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(30);
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("in_process_correlate_events", |b| {
        b.iter(|| black_box(correlate_events(black_box(&batch), &options)))
    });
    g.bench_function("baseline_msgpack_encode_decode_only", |b| {
        b.iter(|| {
            let bytes = rmp_serde::to_vec_named(&batch).unwrap();
            black_box(rmp_serde::from_slice::<Vec<Event>>(&bytes).unwrap())
        })
    });
    match rt.block_on(async { Correlator::spawn_next_to_current_exe() }) {
        Ok(correlator) => {
            let groups = rt.block_on(correlator.correlate(&batch)).unwrap();
            assert_eq!(groups, correlate_events(&batch, &options));
            g.bench_function("through_correlator_process", |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(correlator.correlate(&batch).await.unwrap()) })
            });
            rt.block_on(correlator.shutdown());
        }
        Err(e) => eprintln!(
            "correlate_10k/through_correlator_process skipped: {e} \
             (run `cargo build --release -p foundation-core` first)"
        ),
    }
    g.finish();
}

criterion_group!(benches, round_trip, pipelined, correlate_10k);
criterion_main!(benches);
