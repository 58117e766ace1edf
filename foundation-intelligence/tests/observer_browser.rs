//! End to end in a real browser. Headless Chromium is driven over the DevTools protocol
//! (on a pipe: `--remote-debugging-pipe`, messages separated by NUL bytes; no extra
//! crates): one page stays open, its live stream (server-sent events) updates it, and the
//! test reads the DOM it draws.
//!
//! * `a_killed_worker_shows_as_a_restart_in_the_live_tree`: a 3-node cluster on loopback
//!   TCP in this process, the page of n0; the graph shows 3 answering nodes; a worker of
//!   n1 is killed and the page (without reloading) shows the restart in n1's tree and on
//!   the timeline. Screenshots before and after the kill: `target/observer-before-kill.png`,
//!   `target/observer-after-kill.png`.
//! * `the_demo_page_draws_a_three_node_cluster`: the same page served by
//!   `foundation demo --observer`; screenshot `target/observer-e2e.png`.
//!
//! Needs `chromium` on PATH (Debian: `apt-get install -y chromium`). Without it the tests
//! say so loudly and pass, unless `CI` is set (then they fail).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use foundation_intelligence::beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_intelligence::beam::{Context, Process};
use foundation_intelligence::core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use foundation_intelligence::distributed::channel::Urgency;
use foundation_intelligence::distributed::node::{Node, NodeSettings, SendOptions};
use foundation_intelligence::distributed::transport::{
    ClusterSecret, Security, TcpTransport, Transport, TransportSettings,
};
use foundation_intelligence::http::{Endpoints, HttpServer};
use foundation_intelligence::observer::Observer;

/// Longest wait for the page to show something (generous: the machine is shared).
const PATIENCE: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            let ok = Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then(|| PathBuf::from(b))
        })
}

fn need_chromium() -> Option<PathBuf> {
    let b = chromium();
    if b.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "chromium is not installed and CI is set: install it (apt-get install -y chromium)"
            );
        }
        eprintln!(
            "\n!!!!! SKIPPED observer browser test: chromium not found (apt-get install -y chromium) !!!!!\n"
        );
    }
    b
}

fn artefact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name)
}

/// A headless Chromium with one page, driven over the DevTools pipe.
struct Browser {
    child: Child,
    tx: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch(bin: &PathBuf, width: u32, height: u32) -> Browser {
        // One profile per browser: Chromium hands a second launch on the same profile to
        // the first process and exits.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "foundation-observer-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        // The DevTools pipe is fds 3 (commands in) and 4 (replies out): the shell maps
        // them to our stdin and stdout pipes.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let tx = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (send, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=i).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if send.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            tx,
            rx,
            next: 0,
            session: String::new(),
            _profile: TempDir(profile),
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.page("Page.enable", json!({}));
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        b
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.tx.write_all(&bytes).expect("write to chromium");
        self.tx.flush().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.call(Some(&s), method, params)
    }

    fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `js` in the page; its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.page(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is `true`; the time it took. Panics with `what` and the page's
    /// status line after [`PATIENCE`].
    fn wait_for(&mut self, what: &str, js: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.eval(js) == json!(true) {
                return start.elapsed();
            }
            if start.elapsed() > PATIENCE {
                let status = self.eval(
                    "(document.getElementById('status')||{}).textContent + ' | ' + document.body.innerText.slice(0, 3000)",
                );
                panic!("the page never showed {what}: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &PathBuf) {
        let r = self.page("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

struct Worker;

impl Process for Worker {
    type Message = ();
    async fn handle(&mut self, _: (), _: &mut Context<()>) {}
}

struct Member {
    node: Node,
    eco: Arc<Ecosystem<Worker>>,
    observer: Observer,
}

async fn member(i: usize, secret: &ClusterSecret) -> Member {
    let name = format!("n{i}");
    let settings = TransportSettings {
        cluster: "observer-browser".into(),
        node: name.clone(),
        security: Security::Secret(secret.clone()),
        ..TransportSettings::default()
    };
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(settings).unwrap());
    let node = Node::start(
        t,
        &name,
        NodeSettings {
            listen: "127.0.0.1:0".into(),
            ..NodeSettings::default()
        },
    )
    .await
    .unwrap();
    let eco = Arc::new(
        Ecosystem::start(
            EcosystemSpec::new(format!("work.{name}")).workers(Workers::Fixed(3)),
            |_| Worker,
        )
        .await
        .unwrap(),
    );
    let observer = Observer::new(node.clone(), "full_mesh").ecosystem(eco.clone());
    observer.serve();
    Member {
        node,
        eco,
        observer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_shows_as_a_restart_in_the_live_tree() {
    let Some(bin) = need_chromium() else { return };
    let secret = ClusterSecret::generate();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(member(i, &secret).await);
    }
    for n in &nodes[1..] {
        n.node.join(&[nodes[0].node.addr()]).await.unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    while !nodes
        .iter()
        .all(|n| n.node.members().iter().filter(|m| m.up).count() == 3)
    {
        assert!(Instant::now() < deadline, "membership did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Some traffic on every link, so the channel charts have something to draw.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut traffic = tokio::task::JoinSet::new();
    for n in &nodes {
        let _rx = n.node.register::<Vec<u8>>("sink");
        let node = n.node.clone();
        let peers: Vec<String> = nodes
            .iter()
            .map(|m| m.node.name().to_string())
            .filter(|p| p != node.name())
            .collect();
        let stop = stop.clone();
        traffic.spawn(async move {
            let _rx = _rx;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = 0u64;
            loop {
                tokio::select! { _ = stop.cancelled() => break, _ = tick.tick() => {} }
                i += 1;
                for p in &peers {
                    let urgent = SendOptions {
                        urgency: Urgency::Urgent,
                        key: None,
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        node.send(p, "sink", &vec![1u8; 64], urgent),
                    )
                    .await;
                    // A load that steps every second, so the charts show changes.
                    let size = 512 + ((i / 50) % 6) as usize * 1024;
                    let _ = node.try_send(p, "sink", &vec![2u8; size], SendOptions::default());
                }
            }
        });
    }
    let recorder = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
    let endpoints = Endpoints::new(recorder, Arc::new(AtomicBool::new(true)))
        .observer(nodes[0].observer.clone());
    let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), endpoints)
        .await
        .unwrap();
    let url = format!("http://{}/", server.local_addr());

    let victim = nodes[1].eco.workers()[0].clone();
    let eco1 = nodes[1].eco.clone();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    // The kill happens on the runtime when the browser side asks for it.
    tokio::spawn(async move {
        if tokio::task::spawn_blocking(move || kill_rx.recv())
            .await
            .ok()
            .and_then(Result::ok)
            .is_some()
        {
            victim.kill();
            let _ = killed_tx.send(());
        }
    });
    let shown = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&bin, 1200, 1500);
        b.navigate(&url);
        b.wait_for(
            "3 answering nodes",
            "document.querySelectorAll('circle.node.up').length === 3",
        );
        b.wait_for(
            "the live stream",
            "document.getElementById('status').dataset.mode === 'live'",
        );
        assert!(b.eval("document.body.innerText").as_str().unwrap().contains("3 nodes, 3 answering"));
        for n in ["n0", "n1", "n2"] {
            b.wait_for(
                &format!("{n}'s supervision tree"),
                &format!("!!document.querySelector('.tree[data-node=\"{n}\"]')"),
            );
        }
        // Charts: each node has both links sampled (two samples make a line).
        b.wait_for(
            "channel charts with lines",
            "document.querySelectorAll('#channels polyline').length >= 6",
        );
        // A few seconds of samples, so the screenshot shows lines rather than dots.
        b.wait_for(
            "8 samples in a chart",
            "[...document.querySelectorAll('#channels polyline')].some(p => p.getAttribute('points').split(' ').length >= 8)",
        );
        b.wait_for(
            "per-peer channel tables",
            "document.querySelectorAll('table.peer').length === 6",
        );
        assert_eq!(
            b.eval("document.querySelector('.tree[data-node=\"n1\"]').dataset.restarts"),
            json!("0")
        );
        b.screenshot(&artefact("observer-before-kill.png"));
        let updates_before: u64 = b
            .eval("document.getElementById('status').dataset.updates")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();

        kill_tx.send(()).unwrap();
        killed_rx.recv_timeout(PATIENCE).expect("the worker was killed");
        let took = b.wait_for(
            "the restart in n1's tree",
            "document.querySelector('.tree[data-node=\"n1\"]').dataset.restarts === '1' && document.querySelector('.tree[data-node=\"n1\"]').textContent.includes('restarts 1')",
        );
        b.wait_for(
            "the restart on the timeline",
            "[...document.querySelectorAll('#timeline tr[data-kind=\"restart\"]')].some(r => r.textContent.includes('work.n1'))",
        );
        // Same page, updated by the stream (not reloaded, not polling).
        let updates_after: u64 = b
            .eval("document.getElementById('status').dataset.updates")
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(updates_after > updates_before);
        assert_eq!(
            b.eval("document.getElementById('status').dataset.mode"),
            json!("live")
        );
        b.screenshot(&artefact("observer-after-kill.png"));
        took
    })
    .await
    .unwrap();
    eprintln!("the restart showed in the tree {shown:?} after the kill");
    assert_eq!(eco1.info().restarts, 1);

    stop.cancel();
    while traffic.join_next().await.is_some() {}
    server.shutdown().await;
    for n in &nodes {
        n.observer.shutdown(Duration::from_secs(1)).await;
        n.eco.shutdown(Duration::from_secs(1)).await;
        n.node.shutdown().await;
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_page_draws_a_three_node_cluster() {
    let Some(bin) = need_chromium() else { return };
    let mut demo = Kill(
        Command::new(env!("CARGO_BIN_EXE_foundation"))
            .args(["demo", "--nodes", "3", "--duration", "60s"])
            .args(["--observer", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start foundation demo"),
    );
    // Keep reading its output (a closed pipe would end the demo at its next line).
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("Observer: ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(PATIENCE)
        .expect("the demo printed no observer URL");

    let mut b = Browser::launch(&bin, 1200, 1500);
    b.navigate(&url);
    b.wait_for(
        "3 answering nodes",
        "document.querySelectorAll('circle.node.up').length === 3",
    );
    let text = b.eval("document.body.innerText");
    let text = text.as_str().unwrap();
    assert!(text.contains("3 nodes, 3 answering"), "{text}");
    for n in ["n0", "n1", "n2"] {
        assert!(
            text.contains(&format!("work.{n}.worker.0")),
            "{n}'s workers missing"
        );
    }
    // The demo crashes a worker every 1.5 s: restarts reach the timeline.
    b.wait_for(
        "a restart on the timeline",
        "document.querySelectorAll('#timeline tr[data-kind=\"restart\"]').length > 0",
    );
    b.screenshot(&artefact("observer-e2e.png"));
}
