//! Transport throughput over loopback TCP, each beside a raw tokio baseline in the same run.
//!
//! * `transport_bulk_64k`: 16 frames of 64 KiB per iteration over one authenticated
//!   connection (`Connection::feed` + `flush`, the receiver acknowledges each batch with a
//!   small frame) vs the same bytes copied through a plain `TcpStream` (`write_all` of each
//!   64 KiB buffer, the reader acknowledges each batch with one byte).
//! * `transport_small_64b`: 1024 frames of 64 bytes per iteration, same pattern, vs raw
//!   4-byte length-prefixed frames written from one buffer and read with a `BufReader`.
//!
//! Both sides of each pair use the same runtime (2 worker threads), the same batch and
//! the same acknowledgement, so the ratio isolates framing, envelope and connection costs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_benches::runtime;
use foundation_benches::tcp::{
    foundation_acked, foundation_batch, raw_acked, raw_batch, settings, BULK, BULK_BATCH, SMALL,
    SMALL_BATCH,
};
use foundation_distributed::transport::{
    ConnectionReceiver, ConnectionSender, Security, TcpTransport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An authenticated plaintext loopback connection whose far end acknowledges every
/// `batch` frames.
async fn ours(batch: usize) -> (ConnectionSender, ConnectionReceiver) {
    let server = TcpTransport::new(settings("server", Security::InsecurePlaintext)).unwrap();
    let client = TcpTransport::new(settings("client", Security::InsecurePlaintext)).unwrap();
    foundation_acked(&client, &server, batch).await
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; BULK]);
    let mut group = c.benchmark_group("transport_bulk_64k");
    group.throughput(Throughput::Bytes((BULK * BULK_BATCH) as u64));
    group.measurement_time(Duration::from_secs(5));

    let (mut tx, mut rx) = rt.block_on(ours(BULK_BATCH));
    group.bench_function("foundation_transport", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    foundation_batch(&mut tx, &mut rx, &payload, BULK_BATCH).await;
                }
                start.elapsed()
            })
        })
    });

    let mut stream = rt.block_on(raw_acked(BULK, BULK_BATCH, false));
    group.bench_function("raw_tokio_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    raw_batch(&mut stream, &payload, BULK_BATCH).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn small(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    let mut group = c.benchmark_group("transport_small_64b");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    group.measurement_time(Duration::from_secs(5));

    let (mut tx, mut rx) = rt.block_on(ours(SMALL_BATCH));
    group.bench_function("foundation_transport", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    foundation_batch(&mut tx, &mut rx, &payload, SMALL_BATCH).await;
                }
                start.elapsed()
            })
        })
    });

    let mut stream = rt.block_on(raw_acked(SMALL, SMALL_BATCH, true));
    let mut wire = Vec::with_capacity((4 + SMALL) * SMALL_BATCH);
    for _ in 0..SMALL_BATCH {
        wire.extend_from_slice(&(SMALL as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    group.bench_function("raw_tokio_length_prefixed", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut ack = [0u8; 1];
                let start = Instant::now();
                for _ in 0..iters {
                    stream.write_all(&wire).await.unwrap();
                    stream.read_exact(&mut ack).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bulk, small);
criterion_main!(benches);
