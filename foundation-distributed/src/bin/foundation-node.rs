//! A minimal cluster member for multi-process tests and demos.
//!
//! ```text
//! foundation-node --name NAME --listen HOST:PORT [--seed HOST:PORT]... [--cluster NAME]
//! ```
//!
//! The cluster secret (security mode `secret`) comes from the file named by the
//! environment variable `FOUNDATION_CLUSTER_SECRET_FILE`, or from
//! `FOUNDATION_CLUSTER_SECRET` as 64+ hex digits (at least 32 random bytes), never from
//! the command line. The node serves `echo` (returns the
//! request) and `whoami` (returns its name), prints `listening <addr>` once it listens and
//! `members <n>` whenever its view changes, and runs until killed or stdin closes.

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use tokio::io::AsyncReadExt;

struct Args {
    name: String,
    listen: String,
    seeds: Vec<String>,
    cluster: String,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut name, mut listen, mut seeds, mut cluster) =
        (None, None, Vec::new(), "foundation".to_string());
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?),
            "--seed" => seeds.push(value()?),
            "--cluster" => cluster = value()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listen: listen.ok_or("--listen is required")?,
        seeds,
        cluster,
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
    let node_settings = NodeSettings {
        listen: args.listen,
        ..NodeSettings::default()
    };
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
            loop {
                let n = node.members().iter().filter(|m| m.up).count();
                if n != last {
                    println!("members {n}");
                    last = n;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Run until stdin closes (the parent went away) or the process is killed.
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    watcher.abort();
    node.shutdown().await;
}
