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

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_benches::runtime;
use foundation_benches::tcp::{
    bench_foundation, bench_raw, raw_acked, settings, BULK, BULK_BATCH, SMALL, SMALL_BATCH,
};
use foundation_distributed::transport::{Security, TcpTransport};

/// Plaintext transports (the framing and connection cost alone) for a client and a
/// server node.
fn plaintext() -> (TcpTransport, TcpTransport) {
    let node = |name| TcpTransport::new(settings(name, Security::InsecurePlaintext)).unwrap();
    (node("client"), node("server"))
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; BULK]);
    let mut group = c.benchmark_group("transport_bulk_64k");
    group.throughput(Throughput::Bytes((BULK * BULK_BATCH) as u64));
    group.measurement_time(Duration::from_secs(5));
    let (client, server) = plaintext();
    let pair = (&client, &server);
    bench_foundation(
        &mut group,
        &rt,
        "foundation_transport",
        pair,
        &payload,
        BULK_BATCH,
    );
    let stream = rt.block_on(raw_acked(BULK, BULK_BATCH, false));
    bench_raw(
        &mut group,
        &rt,
        "raw_tokio_tcp",
        stream,
        &payload,
        BULK_BATCH,
    );
    group.finish();
}

fn small(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    let mut group = c.benchmark_group("transport_small_64b");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    group.measurement_time(Duration::from_secs(5));
    let (client, server) = plaintext();
    let pair = (&client, &server);
    bench_foundation(
        &mut group,
        &rt,
        "foundation_transport",
        pair,
        &payload,
        SMALL_BATCH,
    );
    // The whole batch as 4-byte length-prefixed frames from one buffer, one write.
    let stream = rt.block_on(raw_acked(SMALL, SMALL_BATCH, true));
    let mut wire = Vec::with_capacity((4 + SMALL) * SMALL_BATCH);
    for _ in 0..SMALL_BATCH {
        wire.extend_from_slice(&(SMALL as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    bench_raw(
        &mut group,
        &rt,
        "raw_tokio_length_prefixed",
        stream,
        &wire,
        1,
    );
    group.finish();
}

criterion_group!(benches, bulk, small);
criterion_main!(benches);
