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

use criterion::{criterion_group, criterion_main, Criterion};
use foundation_benches::runtime;
use foundation_benches::tcp::{settings, BULK_64K, SMALL_64B};
use foundation_distributed::transport::{Security, TcpTransport};

/// Plaintext transports (the framing and connection cost alone) for a client and a
/// server node.
fn plaintext() -> (TcpTransport, TcpTransport) {
    let node = |name| TcpTransport::new(settings(name, Security::InsecurePlaintext)).unwrap();
    (node("client"), node("server"))
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let mut group = BULK_64K.group(c, "transport_bulk_64k", 5);
    let (client, server) = plaintext();
    BULK_64K.bench_foundation(&mut group, &rt, "foundation_transport", (&client, &server));
    BULK_64K.bench_raw(&mut group, &rt, "raw_tokio_tcp", false);
    group.finish();
}

fn small(c: &mut Criterion) {
    let rt = runtime();
    let mut group = SMALL_64B.group(c, "transport_small_64b", 5);
    let (client, server) = plaintext();
    SMALL_64B.bench_foundation(&mut group, &rt, "foundation_transport", (&client, &server));
    SMALL_64B.bench_raw(&mut group, &rt, "raw_tokio_length_prefixed", true);
    group.finish();
}

criterion_group!(benches, bulk, small);
criterion_main!(benches);
