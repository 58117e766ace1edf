//! Cost of `foundation_beam::table::Table` on its hot paths, each beside a baseline
//! measured in the same run: a `parking_lot::RwLock<HashMap<u64, Bytes>>` (the obvious
//! hand-rolled store, one lock, no TTL, no bounds, no metrics).
//!
//! * `table_get`: look up 1024 stored 4 KiB values in turn (a refcount bump each);
//! * `table_insert_ack`: insert a value with a TTL, then remove it (`ack` for the table,
//!   `remove` for the map) — the life of one ETS-style reference.
//!
//! Single-threaded; each iteration makes `BATCH` operations; throughput is in operations
//! per second.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use foundation_beam::table::{Table, TableSettings};
use parking_lot::RwLock;

const BATCH: u64 = 1_024;
const TTL: Duration = Duration::from_secs(3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn table(rt: &tokio::runtime::Runtime) -> Table {
    let _enter = rt.enter();
    Table::new(TableSettings {
        name: "bench".into(),
        ..TableSettings::default()
    })
    .expect("table")
}

fn table_get(c: &mut Criterion) {
    let rt = runtime();
    let table = table(&rt);
    let value = Bytes::from(vec![7u8; 4096]);
    let refs: Vec<_> = (0..BATCH)
        .map(|_| table.insert(value.clone(), TTL).unwrap())
        .collect();
    let map: RwLock<HashMap<u64, Bytes>> =
        RwLock::new((0..BATCH).map(|k| (k, value.clone())).collect());

    let mut group = c.benchmark_group("table_get");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("rwlock_hashmap", BATCH), |b| {
        b.iter(|| {
            for k in 0..BATCH {
                black_box(map.read().get(&k).cloned());
            }
        })
    });
    group.bench_function(BenchmarkId::new("table", BATCH), |b| {
        b.iter(|| {
            for r in &refs {
                black_box(table.get(r));
            }
        })
    });
    group.finish();
}

fn table_insert_ack(c: &mut Criterion) {
    let rt = runtime();
    let table = table(&rt);
    let value = Bytes::from(vec![7u8; 4096]);
    let map: RwLock<HashMap<u64, Bytes>> = RwLock::new(HashMap::new());

    let mut group = c.benchmark_group("table_insert_ack");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(BenchmarkId::new("rwlock_hashmap", BATCH), |b| {
        b.iter(|| {
            for k in 0..BATCH {
                map.write().insert(k, value.clone());
                black_box(map.write().remove(&k));
            }
        })
    });
    group.bench_function(BenchmarkId::new("table", BATCH), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let r = table.insert(value.clone(), TTL).unwrap();
                black_box(table.ack(&r));
            }
        })
    });
    group.finish();
    assert!(table.is_empty(), "every inserted entry was acknowledged");
}

criterion_group!(benches, table_get, table_insert_ack);
criterion_main!(benches);
