//! Head-of-line blocking: urgent messages during a bulk transfer, with named channels
//! versus everything on one connection.
//!
//! Two nodes in this process, linked over loopback TCP. While node `a` sends
//! `CHANNELS_BENCH_MIB` MiB (default 256) to `b` in 64 KiB messages, it sends a small
//! urgent message every millisecond carrying its send time; `b` records the one-way
//! latency (both nodes share one clock). Two layouts, the same traffic and queue sizes:
//!
//! * `channels`: bulk on `bulk_data` (2 connections since D422), urgent on `coordination`
//!   (3 connections, high priority);
//! * `one connection`: a single channel of parallelism 1 carries both, so each urgent
//!   message waits behind the bulk messages queued before it.
//!
//! Prints a table; run with `cargo bench -p foundation-benches --bench channels`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foundation_distributed::channel::{
    ChannelSettings, ChannelSpec, Channels, Inbox, Priority, BULK_DATA, COORDINATION,
};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};

const BULK_MESSAGE: usize = 64 * 1024;
/// Outbound queue sizes per connection, in messages, applied to every channel of both
/// layouts: a small one, and the default of `ChannelSpec`.
const QUEUES: [usize; 2] = [64, 1024];

struct Layout {
    name: &'static str,
    settings: ChannelSettings,
    bulk: &'static str,
    urgent: &'static str,
}

struct Outcome {
    seconds: f64,
    latencies: Vec<Duration>,
}

fn transport(node: &str) -> Arc<dyn Transport> {
    Arc::new(
        TcpTransport::new(TransportSettings {
            cluster: "bench".into(),
            node: node.into(),
            security: Security::Secret(
                ClusterSecret::from_hex(
                    "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f",
                )
                .unwrap(),
            ),
            ..Default::default()
        })
        .expect("settings"),
    )
}

async fn run(layout: &Layout, total: usize) -> Outcome {
    let a = transport("a");
    let b = transport("b");
    let listener = b.listen("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().to_owned();
    let mut inbox = Inbox::new(&layout.settings).expect("inbox");
    inbox.serve(listener);
    let channels = Channels::builder(a, &addr)
        .settings(layout.settings.clone())
        .connect()
        .await
        .expect("connect");
    let bulk = channels.sender(layout.bulk).expect("bulk channel");
    let urgent = channels.sender(layout.urgent).expect("urgent channel");
    let epoch = Instant::now();
    let messages = total / BULK_MESSAGE;

    // Urgent messages are 9 bytes: a tag and the send time; bulk ones 64 KiB of zeros.
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut bulk_seen = 0;
        while bulk_seen < messages {
            let m = inbox.recv().await.expect("inbox open");
            if m.payload.len() == 9 {
                let sent = u64::from_be_bytes(m.payload[1..9].try_into().expect("8 bytes"));
                let now = epoch.elapsed().as_nanos() as u64;
                latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
            } else {
                bulk_seen += 1;
            }
        }
        (latencies, epoch.elapsed(), inbox)
    });

    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let mut p = [0u8; 9];
                p[1..].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                urgent
                    .send(None, Bytes::copy_from_slice(&p))
                    .await
                    .expect("urgent send");
            }
        })
    };

    let chunk = Bytes::from(vec![0u8; BULK_MESSAGE]);
    let start = Instant::now();
    for _ in 0..messages {
        bulk.send(None, chunk.clone()).await.expect("bulk send");
    }
    // The inbox lives until the prober has stopped, so its last send finds the link open.
    let (latencies, end, inbox) = receiver.await.expect("receiver");
    done.store(true, Ordering::Relaxed);
    prober.await.expect("prober");
    channels.shutdown().await;
    drop(inbox);
    Outcome {
        seconds: end
            .saturating_sub(start.duration_since(epoch))
            .as_secs_f64()
            .max(1e-9),
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mib: usize = std::env::var("CHANNELS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let total = mib * 1024 * 1024;
    let rounds: usize = std::env::var("CHANNELS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "head-of-line blocking: {mib} MiB in {} KiB messages on loopback TCP, {rounds} rounds per row, urgent 9-byte message every 1 ms, one-way latency",
        BULK_MESSAGE / 1024
    );
    println!(
        "{:<16} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "layout", "queue", "secs", "MiB/s", "urgent", "p50 ms", "p99 ms", "max ms"
    );
    for queue in QUEUES {
        let layouts = [
            Layout {
                name: "channels",
                settings: ChannelSettings {
                    channels: ChannelSettings::default()
                        .channels
                        .into_iter()
                        .map(|s| s.queue_capacity(queue))
                        .collect(),
                    ..Default::default()
                },
                bulk: BULK_DATA,
                urgent: COORDINATION,
            },
            Layout {
                name: "one connection",
                settings: ChannelSettings {
                    channels: vec![
                        ChannelSpec::new("single", Priority::Medium, 1).queue_capacity(queue)
                    ],
                    ..Default::default()
                },
                bulk: "single",
                urgent: "single",
            },
        ];
        let mut p99s = Vec::new();
        for layout in &layouts {
            let mut seconds = 0.0;
            let mut latencies = Vec::new();
            for _ in 0..rounds {
                let o = rt.block_on(run(layout, total));
                seconds += o.seconds;
                latencies.extend(o.latencies);
            }
            latencies.sort();
            let p99 = percentile(&latencies, 0.99);
            p99s.push(p99);
            println!(
                "{:<16} {:>6} {:>8.2} {:>8.0} {:>8} {:>9.3} {:>9.3} {:>9.3}",
                layout.name,
                queue,
                seconds,
                (mib * rounds) as f64 / seconds,
                latencies.len(),
                ms(percentile(&latencies, 0.5)),
                ms(p99),
                ms(latencies.last().copied().unwrap_or_default()),
            );
        }
        println!(
            "  queue {queue}: p99 one connection / channels = {:.1}x",
            p99s[1].as_secs_f64() / p99s[0].as_secs_f64().max(1e-9)
        );
    }
}
