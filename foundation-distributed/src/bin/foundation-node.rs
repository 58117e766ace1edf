//! A minimal cluster member for multi-process tests and demos.
//!
//! ```text
//! foundation-node --name NAME --listen HOST:PORT [--seed HOST:PORT]... [--cluster NAME]
//!                 [--topology full_mesh|hyparview|static] [--switch-cooldown-ms MS]
//! ```
//!
//! The cluster secret (security mode `secret`) comes from the file named by the
//! environment variable `FOUNDATION_CLUSTER_SECRET_FILE`, or from
//! `FOUNDATION_CLUSTER_SECRET` as 64+ hex digits (at least 32 random bytes), never from
//! the command line. The node serves `echo` (returns the
//! request) and `whoami` (returns its name), prints `listening <addr>` once it listens and
//! `members <n>` whenever its view changes, and runs until killed or stdin closes.
//!
//! # Harness commands (one per line on stdin)
//!
//! Used by the multi-process switch tests (`tests/switch_processes.rs`); each answer is
//! one line on stdout.
//!
//! * `switch KIND` — proposes a cluster-wide topology switch; answers `switched EPOCH` or
//!   `switch-error REASON`. Every node prints `epoch EPOCH KIND` when a switch applies.
//! * `broadcast ID` — broadcasts `ID` (a number) to receiver `harness.bc`; every node
//!   that receives one prints `bc ID`.
//! * `load INTERVAL_MS PEER...` — starts sending acknowledged messages (`send_acked`,
//!   receiver `harness.seq`, a sequence number per peer) to each `PEER` every interval.
//! * `stop-load` — stops the load, waits until everything sent is acknowledged, prints
//!   `sent PEER N` per peer, then `load-stopped`.
//! * `report` — prints `recv FROM COUNT DUPLICATES GAPS` per sender, `state EPOCH KIND
//!   CONNECTIONS NEIGHBOURS`, then `report-end`.

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use std::collections::BTreeMap;

use foundation_distributed::topology::TopologyKind;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

struct Args {
    name: String,
    listen: String,
    seeds: Vec<String>,
    cluster: String,
    topology: TopologyKind,
    switch_cooldown: Option<Duration>,
}

fn parse_kind(s: &str) -> Result<TopologyKind, String> {
    match s {
        "full_mesh" => Ok(TopologyKind::FullMesh),
        "hyparview" => Ok(TopologyKind::hyparview()),
        "static" => Ok(TopologyKind::Static),
        other => Err(format!(
            "unknown topology `{other}` (full_mesh, hyparview, static)"
        )),
    }
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut name, mut listen, mut seeds, mut cluster) =
        (None, None, Vec::new(), "foundation".to_string());
    let mut topology = TopologyKind::FullMesh;
    let mut switch_cooldown = None;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?),
            "--seed" => seeds.push(value()?),
            "--cluster" => cluster = value()?,
            "--topology" => topology = parse_kind(&value()?)?,
            "--switch-cooldown-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--switch-cooldown-ms: `{v}` is not a number"))?;
                switch_cooldown = Some(Duration::from_millis(ms));
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listen: listen.ok_or("--listen is required")?,
        seeds,
        cluster,
        topology,
        switch_cooldown,
    })
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("foundation-node: {e}\nusage: foundation-node --name NAME --listen HOST:PORT [--seed HOST:PORT]... [--cluster NAME]");
            std::process::exit(2);
        }
    };
    let secret = match (
        std::env::var("FOUNDATION_CLUSTER_SECRET_FILE"),
        std::env::var("FOUNDATION_CLUSTER_SECRET"),
    ) {
        (Ok(path), _) => ClusterSecret::from_file(path),
        (_, Ok(hex)) => ClusterSecret::from_hex(&hex),
        _ => {
            eprintln!("foundation-node: set FOUNDATION_CLUSTER_SECRET_FILE (a file of 64+ hex digits) or FOUNDATION_CLUSTER_SECRET (64+ hex digits)");
            std::process::exit(2);
        }
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => {
            eprintln!("foundation-node: {e}");
            std::process::exit(2);
        }
    };
    let settings = TransportSettings {
        cluster: args.cluster,
        node: args.name.clone(),
        security: Security::Secret(secret),
        ..TransportSettings::default()
    };
    let transport: Arc<dyn Transport> = match TcpTransport::new(settings) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("foundation-node: {e}");
            std::process::exit(2);
        }
    };
    let mut node_settings = NodeSettings {
        listen: args.listen,
        topology: args.topology,
        receiver_capacity: 65_536,
        ..NodeSettings::default()
    };
    if let Some(c) = args.switch_cooldown {
        node_settings.switch.cooldown = c;
    }
    let node = match Node::start(transport, &args.name, node_settings).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("foundation-node: {e}");
            std::process::exit(1);
        }
    };
    node.serve("echo", |_from, v: Vec<u8>| async move { v });
    let me = args.name.clone();
    node.serve("whoami", move |_from, _: ()| {
        let me = me.clone();
        async move { me }
    });
    println!("listening {}", node.addr());
    let seeds: Vec<&str> = args.seeds.iter().map(String::as_str).collect();
    if !seeds.is_empty() {
        // Seeds may still be starting: retry for a while.
        let mut joined = false;
        for _ in 0..50 {
            if node.join(&seeds).await.is_ok() {
                joined = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !joined {
            eprintln!("foundation-node: could not join through {seeds:?}");
            std::process::exit(1);
        }
    }
    let watcher = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut epoch = 0;
            loop {
                let n = node.members().iter().filter(|m| m.up).count();
                if n != last {
                    println!("members {n}");
                    last = n;
                }
                let st = node.topology_state();
                if st.epoch != epoch {
                    epoch = st.epoch;
                    println!("epoch {} {}", st.epoch, st.kind.label());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut harness = Harness::start(&node);
    // Run until stdin closes (the parent went away) or the process is killed.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        harness.command(line.trim()).await;
    }
    harness.stop_load().await;
    watcher.abort();
    harness.tasks.abort_all();
    node.shutdown().await;
}

/// What a sender heard: next sequence expected, received in order, duplicates, gaps.
#[derive(Default)]
struct Heard {
    next: u64,
    count: u64,
    duplicates: u64,
    gaps: u64,
}

/// The test harness's state in a node process.
struct Harness {
    node: Node,
    heard: Arc<Mutex<BTreeMap<String, Heard>>>,
    sent: Arc<Mutex<BTreeMap<String, u64>>>,
    load: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Harness {
    fn start(node: &Node) -> Harness {
        let mut tasks = tokio::task::JoinSet::new();
        let mut bc = node.register::<u64>("harness.bc");
        tasks.spawn(async move {
            while let Some((_, id)) = bc.recv().await {
                println!("bc {id}");
            }
        });
        let heard: Arc<Mutex<BTreeMap<String, Heard>>> = Arc::default();
        let mut seq = node.register::<u64>("harness.seq");
        let h = heard.clone();
        tasks.spawn(async move {
            while let Some((from, i)) = seq.recv().await {
                let mut map = h.lock();
                let e = map.entry(from).or_default();
                if i < e.next {
                    e.duplicates += 1;
                } else {
                    if i > e.next {
                        e.gaps += 1;
                    }
                    e.count += 1;
                    e.next = i + 1;
                }
            }
        });
        Harness {
            node: node.clone(),
            heard,
            sent: Arc::default(),
            load: Mutex::new(None),
            tasks,
        }
    }

    async fn command(&self, line: &str) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("switch"), Some(kind)) => match parse_kind(kind) {
                Ok(k) => match self.node.switch_topology_because(k, "harness command") {
                    Ok(epoch) => println!("switched {epoch}"),
                    Err(e) => println!("switch-error {e}"),
                },
                Err(e) => println!("switch-error {e}"),
            },
            (Some("broadcast"), Some(id)) => match id.parse::<u64>() {
                Ok(id) => match self.node.broadcast("harness.bc", &id).await {
                    Ok(()) => println!("broadcast-sent {id}"),
                    Err(e) => println!("broadcast-error {e}"),
                },
                Err(_) => println!("broadcast-error `{id}` is not a number"),
            },
            (Some("load"), Some(ms)) => {
                let Ok(ms) = ms.parse::<u64>() else {
                    println!("load-error `{ms}` is not a number");
                    return;
                };
                let peers: Vec<String> = words.map(str::to_string).collect();
                self.start_load(Duration::from_millis(ms.max(1)), peers);
                println!("load-started");
            }
            (Some("stop-load"), None) => {
                self.stop_load().await;
                for (peer, n) in self.sent.lock().iter() {
                    println!("sent {peer} {n}");
                }
                println!("load-stopped");
            }
            (Some("report"), None) => {
                for (from, h) in self.heard.lock().iter() {
                    println!("recv {from} {} {} {}", h.count, h.duplicates, h.gaps);
                }
                let st = self.node.topology_state();
                println!(
                    "state {} {} {} {}",
                    st.epoch,
                    st.kind.label(),
                    self.node.connected_peers().len(),
                    self.node.neighbours().len()
                );
                println!("report-end");
            }
            _ => println!("error unknown command `{line}`"),
        }
    }

    fn start_load(&self, every: Duration, peers: Vec<String>) {
        let cancel = CancellationToken::new();
        let (node, sent, stop) = (self.node.clone(), self.sent.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for p in &peers {
                    match node.send_acked(p, "harness.seq", &i).await {
                        Ok(()) => *sent.lock().entry(p.clone()).or_default() += 1,
                        Err(e) => println!("load-error {p} {e}"),
                    }
                }
                i += 1;
            }
        });
        if let Some((c, _)) = self.load.lock().replace((cancel, task)) {
            c.cancel();
        }
    }

    /// Stops the load and waits (up to 60 s) until every message is acknowledged.
    async fn stop_load(&self) {
        let load = self.load.lock().take();
        if let Some((c, t)) = load {
            c.cancel();
            let _ = t.await;
        }
        for _ in 0..6000 {
            if self.node.load().2 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
