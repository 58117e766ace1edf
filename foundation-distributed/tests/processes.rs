//! A cluster of separate OS processes (`foundation-node`) and an in-test node on loopback
//! TCP: membership across processes, requests into a process, and a killed process marked
//! down; a process with the wrong secret never joins.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{MembershipEvent, Node, NodeSettings};
use foundation_distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};

const BIN: &str = env!("CARGO_BIN_EXE_foundation-node");
const SECRET: &str = "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f";

/// Starts a node process and returns it with the address it printed.
fn spawn(name: &str, seed: Option<&str>, secret: &str) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        "procs",
    ])
    .env("FOUNDATION_CLUSTER_SECRET", secret)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    let mut child = cmd.spawn().expect("spawn foundation-node");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .to_string();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    (child, addr)
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes() {
    let (p1, a1) = spawn("p1", None, SECRET);
    let (p2, _a2) = spawn("p2", Some(&a1), SECRET);
    let mut procs = Reaper(vec![p1, p2]);

    let settings = TransportSettings {
        cluster: "procs".into(),
        node: "local".into(),
        security: Security::Secret(ClusterSecret::from_hex(SECRET).unwrap()),
        ..TransportSettings::default()
    };
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings).unwrap());
    let local = Node::start(t, "local", NodeSettings::default())
        .await
        .unwrap();
    local.join(&[&a1]).await.unwrap();
    let up = |n: &Node| {
        n.members()
            .iter()
            .filter(|m| m.up)
            .map(|m| m.name.clone())
            .collect::<Vec<_>>()
    };
    eventually("three members", || up(&local) == ["local", "p1", "p2"]).await;

    let who: String = local
        .request("p2", "whoami", &(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(who, "p2");
    let echo: Vec<u8> = local
        .request("p1", "echo", &vec![1u8, 2, 3], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(echo, vec![1, 2, 3]);

    // An intruder with the wrong secret is refused and never appears.
    let (intruder, _) = spawn(
        "intruder",
        Some(&a1),
        "3b8e1f7c2d9a4065e7f1c3a5b9d2e8f4a6c1b7d3e9f5a2c8b4d0e6f1a7c3b9d5",
    );
    procs.0.push(intruder);

    let mut events = local.subscribe();
    procs.0[1].kill().unwrap(); // p2 crashes: no goodbye
    let _ = procs.0[1].wait();
    let down = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Ok(MembershipEvent::Down(n)) = events.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("p2 marked down");
    assert_eq!(down, "p2");
    assert!(
        !local.members().iter().any(|m| m.name == "intruder"),
        "wrong secret never joins"
    );
    local.shutdown().await;
}
