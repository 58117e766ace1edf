//! Nodes as separate OS processes (the `foundation-node` binary) on loopback TCP: start
//! one, read what it prints, give it commands on stdin; [`Procs`] kills them all when it
//! is dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The node binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_foundation-node");

/// A running node process.
pub struct NodeProc {
    /// Its node name.
    pub name: String,
    /// The address it listens on (as it printed it).
    pub addr: String,
    /// The OS process.
    pub child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NodeProc {
    /// Starts node `name` of `cluster` on `127.0.0.1:0` with the cluster secret `secret`,
    /// joining `seed` if given, with `extra` arguments; returns once it printed its
    /// address. Its later output lines are kept (see [`has`](Self::has)).
    pub fn spawn(
        name: &str,
        seed: Option<&str>,
        cluster: &str,
        secret: &str,
        extra: &[&str],
    ) -> NodeProc {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            cluster,
        ])
        .args(extra)
        .env("FOUNDATION_CLUSTER_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(s) = seed {
            cmd.args(["--seed", s]);
        }
        let mut child = cmd.spawn().expect("spawn foundation-node");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected output {first:?}"))
            .to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap().push(l);
            }
        });
        NodeProc {
            name: name.to_string(),
            addr,
            child,
            stdin,
            lines,
        }
    }

    /// Writes the command line `cmd` to its stdin.
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write a command");
        self.stdin.flush().unwrap();
    }

    /// Whether a line it printed (since the last [`clear`](Self::clear)) satisfies `f`.
    pub fn has(&self, f: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| f(l))
    }

    /// The last line starting with `prefix`.
    pub fn last(&self, prefix: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.starts_with(prefix))
            .cloned()
    }

    /// The lines starting with `prefix` (since the last [`clear`](Self::clear)).
    pub fn all(&self, prefix: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Forgets the lines printed so far.
    pub fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}

/// Node processes, killed (and reaped) when this is dropped.
#[derive(Default)]
pub struct Procs(pub Vec<NodeProc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
