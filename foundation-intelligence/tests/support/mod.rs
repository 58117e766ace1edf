//! Helpers shared by this crate's tests: running `foundation`, temp files, a plain
//! HTTP GET, waiting for a condition.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

pub mod mem_node;
pub mod observed;

/// `foundation` with a clean environment.
pub fn foundation() -> Command {
    let mut c = Command::cargo_bin("foundation").expect("the foundation binary is built");
    c.env_remove("RUST_LOG")
        .env_remove("FOUNDATION_CLUSTER_SECRET")
        .env("NO_COLOR", "1");
    c
}

/// A fresh directory for this test process.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("foundation-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` to `dir/file`.
pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// A valid cluster secret file's content.
pub const SECRET: &str = "4a2b1f6ea76c5683f64b35bc244483f3693ce85bd69dc639f1f7a1fe12ddf4e6\n";

/// A running `foundation node`: its process and the addresses it printed.
pub struct RunningNode {
    child: Child,
    /// The HTTP endpoint's address.
    pub metrics: String,
    /// The cluster listen address.
    pub listen: String,
}

impl RunningNode {
    /// Starts `foundation node ARGS` and waits until it printed both addresses.
    pub fn start(args: &[&str]) -> RunningNode {
        Self::start_logging(args, None)
    }

    /// Like [`start`](Self::start), writing the node's stderr (its logs) to `log`.
    pub fn start_logging(args: &[&str], log: Option<&Path>) -> RunningNode {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let mut child = foundation()
            .arg("node")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut metrics, mut listen) = (String::new(), String::new());
        while metrics.is_empty() || listen.is_empty() {
            let line = lines
                .next()
                .expect("the node prints its addresses")
                .unwrap();
            if let Some(m) = line.strip_prefix("metrics http://") {
                metrics = m.trim_end_matches("/metrics").to_string();
            } else if let Some(l) = line.strip_prefix("listening ") {
                listen = l.to_string();
            }
        }
        RunningNode {
            child,
            metrics,
            listen,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the node did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningNode {
    /// A test that fails half-way must not leave its node running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `cond` holds, checking every 25 ms; panics naming `what` after 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached: {what}");
}
