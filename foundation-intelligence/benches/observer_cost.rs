//! Does the observer cost the node anything when nobody looks?
//!
//! The node small-message benchmark (8-byte `u64`s `a` → `b` with `send().await`, keyed
//! over 2 keys, counted at `b`'s receiver, zero loss checked; as in
//! `benches/benches/node.rs` part 2) on three pairs of nodes on loopback TCP, in one
//! process and one run:
//!
//! * `plain` and `plain'`: two pairs without an observer (`plain'` / `plain` is the A/A
//!   ratio: the noise band between two identical set-ups);
//! * `mounted`: a pair whose nodes both have an [`Observer`] (every view, the
//!   `observer.snapshot` server, the HTTP server with `/`, `/api/*` and `/api/events`)
//!   and nobody connected to it;
//! * `watched` (informational): the `mounted` pair while a live stream (`/api/events`) is
//!   open on `a`'s HTTP server: the sampler runs and a cluster snapshot is gathered every
//!   second.
//!
//! Rounds rotate through the set-ups (so drift hits them alike); each round sends
//! `OBSERVER_BENCH_SMALL` messages (default 200,000), `OBSERVER_BENCH_ROUNDS` rounds per
//! set-up (default 12). Per round *i* the ratio `mounted_i / plain_i` is taken; the
//! report gives the median ratio and its 95 % bootstrap interval, beside the same for
//! `plain'_i / plain_i`. The claim "no measurable cost" holds when the mounted interval
//! overlaps the A/A interval (or contains 1).
//!
//! Run: `cargo bench -p foundation-intelligence --bench observer_cost`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foundation_intelligence::core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use foundation_intelligence::distributed::node::{Node, NodeSettings, SendOptions};
use foundation_intelligence::distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use foundation_intelligence::http::{Endpoints, HttpServer};
use foundation_intelligence::observer::Observer;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn transport(cluster: &str, node: &str, secret: &ClusterSecret) -> Arc<dyn Transport> {
    Arc::new(
        TcpTransport::new(TransportSettings {
            cluster: cluster.into(),
            node: node.into(),
            security: Security::Secret(secret.clone()),
            ..Default::default()
        })
        .expect("settings"),
    )
}

struct Pair {
    a: Node,
    b: Node,
    _observers: Vec<Observer>,
    http: Option<HttpServer>,
}

async fn pair(cluster: &str, observed: bool) -> Pair {
    let secret = ClusterSecret::generate();
    let a = Node::start(
        transport(cluster, "a", &secret),
        "a",
        NodeSettings::default(),
    )
    .await
    .expect("a");
    let b = Node::start(
        transport(cluster, "b", &secret),
        "b",
        NodeSettings::default(),
    )
    .await
    .expect("b");
    b.join(&[a.addr()]).await.expect("join");
    for _ in 0..500 {
        if a.members().iter().filter(|m| m.up).count() == 2 && a.peer_stats().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut observers = Vec::new();
    let mut http = None;
    if observed {
        for n in [&a, &b] {
            let o = Observer::new(n.clone(), "full_mesh");
            o.serve();
            observers.push(o);
        }
        let recorder = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
        let endpoints = Endpoints::new(recorder, Arc::new(AtomicBool::new(true)))
            .observer(observers[0].clone());
        http = Some(
            HttpServer::start("127.0.0.1:0".parse().unwrap(), endpoints)
                .await
                .expect("http"),
        );
    }
    Pair {
        a,
        b,
        _observers: observers,
        http,
    }
}

/// One round: msg/s until `b` has counted all `n`.
async fn round(p: &Pair, n: usize) -> f64 {
    let mut inbox = p.b.register::<u64>("small");
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        got
    });
    let t = Instant::now();
    for i in 0..n {
        let opts = SendOptions {
            key: Some((i % 2) as u64),
            ..SendOptions::default()
        };
        p.a.send("b", "small", &(i as u64), opts)
            .await
            .expect("send");
    }
    let got = consumer.await.expect("consumer");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, n, "lost {} messages", n - got);
    n as f64 / secs
}

/// Opens `/api/events` on `addr` and keeps reading it on a thread until `stop`.
fn watch(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(s, "GET /api/events HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 65536];
        let mut events = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    events += buf[..n]
                        .windows(14)
                        .filter(|w| w == b"event: cluster")
                        .count()
                }
                Err(_) => {}
            }
        }
        events
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of `ratios` and its 95 % bootstrap interval (2,000 resamples, fixed seed).
fn band(ratios: &[f64]) -> (f64, f64, f64) {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut meds = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let mut s: Vec<f64> = (0..ratios.len())
            .map(|_| ratios[(next() % ratios.len() as u64) as usize])
            .collect();
        meds.push(median(&mut s));
    }
    meds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut all = ratios.to_vec();
    (median(&mut all), meds[50], meds[1949])
}

/// The per-message work each connection's writer does for the observer whether or not
/// one is mounted (`channel/stats.rs`, `LiveCounters::written`: single-writer counters,
/// a relaxed load and store each, and a comparison), from 2 threads at once (two
/// connections, each with its own counters): nanoseconds per message.
fn counters_ns() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    #[derive(Default)]
    struct Live {
        messages: AtomicU64,
        bytes: AtomicU64,
        late: AtomicU64,
    }
    let bump = |c: &AtomicU64, by: u64| c.store(c.load(Relaxed) + by, Relaxed);
    let per_thread = 20_000_000u64;
    let t = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|k| {
            std::thread::spawn(move || {
                let live = Arc::new(Live::default());
                for i in 0..per_thread {
                    let live = std::hint::black_box(&live);
                    let waited = Duration::from_nanos(std::hint::black_box(i ^ k));
                    bump(&live.messages, 1);
                    bump(&live.bytes, std::hint::black_box(8));
                    if waited > Duration::from_millis(10) {
                        bump(&live.late, 1);
                    }
                }
                live.messages.load(Relaxed)
            })
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), per_thread);
    }
    t.elapsed().as_nanos() as f64 / per_thread as f64
}

fn main() {
    let n = env("OBSERVER_BENCH_SMALL", 200_000);
    let rounds = env("OBSERVER_BENCH_ROUNDS", 12);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let plain = pair("plain", false).await;
        let plain2 = pair("plain2", false).await;
        let mounted = pair("mounted", true).await;
        // Warm-up: one round each.
        for p in [&plain, &plain2, &mounted] {
            round(p, n / 4).await;
        }
        let (mut r_plain, mut r_plain2, mut r_mounted, mut r_watched) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let addr = mounted.http.as_ref().unwrap().local_addr();
        let mut streamed = 0;
        println!(
            "observer cost: {rounds} rounds x {n} 8-byte messages a -> b, send().await (msg/s)"
        );
        println!(
            "{:>5} {:>12} {:>12} {:>12} {:>12}",
            "round", "plain", "plain'", "mounted", "watched"
        );
        for i in 0..rounds {
            // Rotate the order so slow drift does not favour one set-up.
            let order = [0, 1, 2, 3];
            let mut got = [0.0; 4];
            for k in 0..4 {
                let which = order[(k + i) % 4];
                got[which] = match which {
                    0 => round(&plain, n).await,
                    1 => round(&plain2, n).await,
                    2 => round(&mounted, n).await,
                    _ => {
                        let stop = Arc::new(AtomicBool::new(false));
                        let w = watch(addr, stop.clone());
                        // Let the stream start (and the sampler with it).
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let r = round(&mounted, n).await;
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        streamed += tokio::task::spawn_blocking(move || w.join().unwrap())
                            .await
                            .unwrap();
                        r
                    }
                };
            }
            println!(
                "{:>5} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
                i, got[0], got[1], got[2], got[3]
            );
            r_plain.push(got[0]);
            r_plain2.push(got[1]);
            r_mounted.push(got[2]);
            r_watched.push(got[3]);
        }
        let ratio = |x: &[f64]| -> Vec<f64> { x.iter().zip(&r_plain).map(|(a, b)| a / b).collect() };
        let aa = band(&ratio(&r_plain2));
        let mo = band(&ratio(&r_mounted));
        let wa = band(&ratio(&r_watched));
        println!("\nratio to `plain`, median of per-round ratios [95% bootstrap interval]:");
        println!("  A/A  plain'/plain   {:.3} [{:.3}, {:.3}]  (the noise band)", aa.0, aa.1, aa.2);
        println!("  mounted/plain       {:.3} [{:.3}, {:.3}]  (observer mounted, nobody connected)", mo.0, mo.1, mo.2);
        println!("  watched/plain       {:.3} [{:.3}, {:.3}]  (a live stream open; {streamed} events received)", wa.0, wa.1, wa.2);
        let overlaps = mo.1 <= aa.2 && aa.1 <= mo.2;
        let contains_one = mo.1 <= 1.0 && 1.0 <= mo.2;
        println!(
            "  no measurable cost when nobody looks: {}",
            if overlaps || contains_one {
                "MET (the mounted interval overlaps the A/A band or contains 1)"
            } else {
                "NOT MET (the mounted interval lies outside the A/A band)"
            }
        );
        let ns = counters_ns();
        let mut all = r_plain.clone();
        let per_msg_ns = 1e9 / median(&mut all);
        println!(
            "  always-on per-connection counters: {ns:.1} ns per message (2 writer threads) = {:.2} % of the node's {per_msg_ns:.0} ns per message",
            100.0 * ns / per_msg_ns
        );
        for p in [plain, plain2, mounted] {
            if let Some(h) = &p.http {
                h.shutdown().await;
            }
            p.a.shutdown().await;
            p.b.shutdown().await;
        }
    });
}
