//! Configuration benchmarks, each beside its baseline in the same run.
//!
//! * `config_get_hot_key`: a typed read of a hot key in a 1,000-key namespace vs a read
//!   of a `parking_lot::RwLock<HashMap<String, Arc<u64>>>` holding the same keys.
//! * `config_get_raw`: `get_raw` of a 1 MiB value vs a 16-byte value.
//! * `config_update_notify`: `set` of one key with 1,000 draining subscribers vs with
//!   none, and vs a baseline of a locked map write plus a `tokio::sync::broadcast` to
//!   1,000 draining receivers.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_benches::runtime;
use foundation_core::config::{Config, ConfigSettings, Namespace, RecvError};
use parking_lot::RwLock;

const KEYS: usize = 1_000;
const HOT: &str = "svc.k000500";

fn populated(rt: &tokio::runtime::Runtime, config: &Config) -> Namespace {
    rt.block_on(async {
        let ns = config.create_namespace("bench").unwrap();
        let table: HashMap<String, u64> =
            (0..KEYS).map(|i| (format!("k{i:06}"), i as u64)).collect();
        ns.merge("svc", &table).await.unwrap();
        ns
    })
}

fn get_hot_key(c: &mut Criterion) {
    let rt = runtime();
    let config = Config::new();
    let ns = populated(&rt, &config);
    let baseline: RwLock<HashMap<String, Arc<u64>>> = RwLock::new(
        (0..KEYS)
            .map(|i| (format!("svc.k{i:06}"), Arc::new(i as u64)))
            .collect(),
    );
    assert_eq!(ns.get::<u64>(HOT).unwrap(), 500);

    let mut g = c.benchmark_group("config_get_hot_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_rwlock_hashmap_arc", |b| {
        b.iter(|| black_box(baseline.read().get(black_box(HOT)).cloned()))
    });
    g.bench_function("foundation_get_arc", |b| {
        b.iter(|| black_box(ns.get_arc::<u64>(black_box(HOT)).unwrap()))
    });
    g.bench_function("foundation_get_clone", |b| {
        b.iter(|| black_box(ns.get::<u64>(black_box(HOT)).unwrap()))
    });
    g.finish();
}

fn get_raw(c: &mut Criterion) {
    let rt = runtime();
    let config = Config::new();
    let ns = rt.block_on(async {
        let ns = config.create_namespace("raw").unwrap();
        ns.set("small", &"0123456789abcde").await.unwrap(); // 16 bytes encoded
        let big = rmpv::Value::Binary(vec![0xab; (1 << 20) - 16]);
        ns.set("big", &big).await.unwrap();
        ns
    });
    assert_eq!(ns.get_raw("small").unwrap().len(), 16);
    assert!(ns.get_raw("big").unwrap().len() > 1_000_000);

    let mut g = c.benchmark_group("config_get_raw");
    g.throughput(Throughput::Elements(1));
    g.bench_function("value_16_bytes", |b| {
        b.iter(|| black_box(ns.get_raw(black_box("small")).unwrap()))
    });
    g.bench_function("value_1_mib", |b| {
        b.iter(|| black_box(ns.get_raw(black_box("big")).unwrap()))
    });
    g.finish();
}

fn update_notify(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1_000;
    let rt = runtime();
    let settings = ConfigSettings {
        subscriber_capacity: 4096,
        ..ConfigSettings::default()
    };
    let config = Config::with_settings(settings).unwrap();
    let (quiet, loud) = rt.block_on(async {
        let quiet = config.create_namespace("quiet").unwrap();
        let loud = config.create_namespace("loud").unwrap();
        for _ in 0..SUBSCRIBERS {
            let mut sub = loud.subscribe("hot").await.unwrap();
            tokio::spawn(async move {
                loop {
                    match sub.recv().await {
                        Ok(c) => {
                            black_box(c);
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => break,
                    }
                }
            });
        }
        (quiet, loud)
    });

    let map: Arc<RwLock<HashMap<String, Bytes>>> = Arc::default();
    let (tx, _) = tokio::sync::broadcast::channel::<(Arc<str>, u64, usize)>(4096);
    rt.block_on(async {
        for _ in 0..SUBSCRIBERS {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError as B;
                while let Ok(()) | Err(B::Lagged(_)) = rx.recv().await.map(|c| {
                    black_box(c);
                }) {}
            });
        }
    });
    let key: Arc<str> = Arc::from("hot.value");

    let mut g = c.benchmark_group("config_update_notify");
    g.throughput(Throughput::Elements(1));
    let mut v = 0u64;
    g.bench_function("baseline_lock_write_broadcast_1000", |b| {
        b.to_async(&rt).iter(|| {
            v += 1;
            let bytes = Bytes::from(v.to_be_bytes().to_vec());
            let size = bytes.len();
            map.write().insert(key.to_string(), bytes);
            let _ = tx.send((key.clone(), v, size));
            async {}
        })
    });
    g.bench_function("foundation_set_0_subscribers", |b| {
        b.to_async(&rt)
            .iter(|| async { quiet.set("hot.value", &black_box(7u64)).await.unwrap() })
    });
    g.bench_function("foundation_set_1000_subscribers", |b| {
        b.to_async(&rt)
            .iter(|| async { loud.set("hot.value", &black_box(7u64)).await.unwrap() })
    });
    g.finish();
}

criterion_group!(benches, get_hot_key, get_raw, update_notify);
criterion_main!(benches);
