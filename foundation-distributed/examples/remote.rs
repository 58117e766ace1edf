//! Remote processes: a counter process on node `b`, used from node `a` over loopback TCP —
//! send, urgent send, call with a timeout, a monitor that reports the exit reason, a link
//! across nodes, and a cluster-wide name.
//!
//! Run with `cargo run -p foundation-distributed --example remote`.

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::beam::{spawn, spawn_fn, Context, ExitReason, Process, Reply};
use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::remote::{Remote, RemoteMessage};
use foundation_distributed::transport::{ClusterSecret, Security, TcpTransport, TransportSettings};
use serde::{Deserialize, Serialize};

/// What other nodes may send the counter.
#[derive(Debug, Serialize, Deserialize)]
enum Command {
    Add(u64),
    Crash,
}

/// The counter's own messages: the remote ones, and calls with a reply.
enum Msg {
    Command(Command),
    Get(Reply<u64>),
}

impl RemoteMessage for Msg {
    type Cast = Command;
    type Call = ();
    type Reply = u64;
    fn from_cast(c: Command) -> Self {
        Msg::Command(c)
    }
    fn from_call(_: (), reply: Reply<u64>) -> Self {
        Msg::Get(reply)
    }
}

struct Counter(u64);

impl Process for Counter {
    type Message = Msg;
    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Msg>) {
        match msg {
            Msg::Command(Command::Add(n)) => self.0 += n,
            Msg::Command(Command::Crash) => ctx.stop(ExitReason::Failed("asked to crash".into())),
            Msg::Get(reply) => reply.send(self.0),
        }
    }
}

async fn node(name: &str, secret: &ClusterSecret) -> Result<Node, Box<dyn std::error::Error>> {
    let transport = TcpTransport::new(TransportSettings {
        cluster: "example".into(),
        node: name.into(),
        security: Security::Secret(secret.clone()),
        ..TransportSettings::default()
    })?;
    Ok(Node::start(Arc::new(transport), name, NodeSettings::default()).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Both nodes share one cluster secret (in production: `ClusterSecret::from_file`).
    let secret = ClusterSecret::generate();
    let (a, b) = (node("a", &secret).await?, node("b", &secret).await?);
    b.join(&[a.addr()]).await?;
    while a.members().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await; // until a has heard of b
    }
    let (ra, rb) = (Remote::start(&a), Remote::start(&b));

    // On b: a counter, exported as "counter" and claimed cluster-wide.
    let counter = spawn(Counter(0));
    let _name = rb.register_global("counter", &counter).await?;

    // On a: reach it by (name, node) and use it.
    let remote = ra.process::<Msg>("b", "counter");
    remote.send(&Command::Add(2)).await?;
    remote.send_urgent(&Command::Add(3)).await?;
    remote
        .send_confirmed(&Command::Add(5), Duration::from_secs(5))
        .await?;
    let total = remote.call(&(), Duration::from_secs(5)).await?;
    println!("counter on b = {total} (sends are at most once; the confirmed one is queued)");

    // Find it by its cluster-wide name once the claim has reached a.
    for _ in 0..100 {
        if ra.whereis("counter").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("cluster-wide `counter` is on {:?}", ra.whereis("counter"));

    // A local process on a linked to it, and a monitor of it.
    let watcher = spawn_fn(
        |mut inbox: foundation_distributed::beam::process::Inbox<()>| async move {
            while inbox.recv().await.is_some() {}
        },
    );
    let mut watcher_exit = watcher.monitor();
    remote.link(&watcher).await?;
    let mut monitor = remote.monitor().await;

    remote.send(&Command::Crash).await?;
    println!("monitor on a: counter exited: {}", monitor.wait().await);
    println!("linked process on a exited: {}", watcher_exit.wait().await);
    match remote.call(&(), Duration::from_secs(5)).await {
        Ok(v) => println!("unexpected answer {v}"),
        Err(e) => println!("a call now fails at once: {e}"),
    }
    println!("stats on a: {:?}", ra.stats());

    rb.shutdown(Duration::from_secs(1)).await;
    ra.shutdown(Duration::from_secs(1)).await;
    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}
