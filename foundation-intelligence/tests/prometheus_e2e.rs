//! Real scraping: a real Prometheus server (Debian package `prometheus`) scrapes two
//! running `foundation node` processes on loopback, and its HTTP API answers with
//! Foundation series — including `foundation_http_request_seconds`, exported and stored
//! as a histogram (`_bucket` series with `le`, metadata type `histogram`).
//!
//! Needs the `prometheus` server binary on the PATH (`.ci/run` installs it). Without it
//! the test is skipped with a loud message — unless `CI` is set, where it fails.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{dir, get, write, RunningNode, SECRET};

/// The Prometheus server process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_available() -> bool {
    match Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) => s.success(),
        Err(_) => false,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(work: &Path, targets: &[&str]) -> Prometheus {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = write(
        work,
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: foundation\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let log = work.join("prometheus.log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prometheus starts");
    Prometheus { child, addr, log }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs an API path; `None` while Prometheus is not answering yet.
fn api(p: &Prometheus, path: &str) -> Option<Value> {
    if std::net::TcpStream::connect(&p.addr).is_err() {
        return None;
    }
    let (status, body) = get(&p.addr, path);
    if status != 200 {
        return None;
    }
    // The body may be chunked: take the JSON object between the outer braces.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end]).ok()
}

fn query(p: &Prometheus, q: &str) -> Vec<Value> {
    api(p, &format!("/api/v1/query?query={}", encode(q)))
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// Polls `f` until it returns `Some`, for at most `limit` (a bound on waiting for the
/// scrapes, not a timing assertion).
fn wait_for<T>(what: &str, p: &Prometheus, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "timed out waiting for {what}; prometheus log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_foundation_nodes() {
    if !prometheus_available() {
        if std::env::var_os("CI").is_some() {
            panic!("the prometheus server binary is required in CI (Debian package `prometheus`; .ci/run installs it)");
        }
        eprintln!();
        eprintln!(
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        eprintln!("!! SKIPPED prometheus_scrapes_foundation_nodes: no `prometheus` binary on the PATH. !!");
        eprintln!(
            "!! Install it (apt-get install prometheus) or run .ci/run; with CI set this fails. !!"
        );
        eprintln!(
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        return;
    }
    let work = dir("prometheus-e2e");
    let _ = std::fs::remove_dir_all(work.join("data"));
    write(&work, "cluster.secret", SECRET);
    let cfg = |name: &str, seeds: &str| {
        write(
            &work,
            &format!("{name}.toml"),
            &format!(
                "[node]\nname = \"{name}\"\ncluster = \"e2e\"\nlisten = \"127.0.0.1:0\"\n\
                 metrics = \"127.0.0.1:0\"\nsecret_file = \"cluster.secret\"\nseeds = [{seeds}]\n"
            ),
        )
    };
    let n1 = RunningNode::start(&["--config", cfg("n1", "").to_str().unwrap()]);
    let seed = format!("\"{}\"", n1.listen);
    let n2 = RunningNode::start(&["--config", cfg("n2", &seed).to_str().unwrap()]);

    let prom = start_prometheus(&work, &[&n1.metrics, &n2.metrics]);
    let limit = Duration::from_secs(90);

    // Both targets scraped and up.
    wait_for("both targets up", &prom, limit, || {
        let up = query(&prom, "up{job=\"foundation\"}");
        (up.len() == 2 && up.iter().all(|s| s["value"][1] == "1")).then_some(())
    });

    // Foundation series, labelled by node.
    let workers = wait_for("foundation_runtime_workers", &prom, limit, || {
        let r = query(&prom, "foundation_runtime_workers");
        (r.len() == 2).then_some(r)
    });
    let mut nodes: Vec<String> = workers
        .iter()
        .map(|s| s["metric"]["node"].as_str().unwrap_or("").to_string())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"]);

    // A histogram exported as a histogram: bucket series with `le`, and the metadata
    // Prometheus stored for it says `histogram`.
    let buckets = wait_for(
        "foundation_http_request_seconds buckets",
        &prom,
        limit,
        || {
            // Each node's histogram appears from its second scrape on (a scrape's own
            // timing is recorded after its answer): wait for both nodes.
            let r = query(
                &prom,
                "foundation_http_request_seconds_bucket{path=\"metrics\"}",
            );
            (r.len() >= 2 * 12).then_some(r)
        },
    );
    assert!(
        buckets.iter().any(|s| s["metric"]["le"] == "+Inf"),
        "{buckets:?}"
    );
    assert!(
        buckets.len() >= 2 * 12,
        "11 buckets + +Inf per node: {}",
        buckets.len()
    );
    let meta = wait_for(
        "metadata of foundation_http_request_seconds",
        &prom,
        limit,
        || {
            let v = api(
                &prom,
                "/api/v1/metadata?metric=foundation_http_request_seconds",
            )?;
            v["data"]["foundation_http_request_seconds"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned()
        },
    );
    assert_eq!(meta[0]["type"], "histogram", "{meta:?}");
    // And PromQL's histogram functions work on it.
    let p90 = wait_for("histogram_quantile over the scrapes", &prom, limit, || {
        let r = query(
            &prom,
            "histogram_quantile(0.9, sum by (le) (rate(foundation_http_request_seconds_bucket{path=\"metrics\"}[10s])))",
        );
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    });
    println!("p90 of /metrics answers, from Prometheus: {:.6} s", p90);

    // The cluster traffic between the two nodes shows up too.
    wait_for("channel messages between the nodes", &prom, limit, || {
        let r = query(
            &prom,
            "sum(foundation_channel_messages_total{direction=\"out\"}) > 0",
        );
        (!r.is_empty()).then_some(())
    });

    drop(prom);
    assert!(n2.terminate().success());
    assert!(n1.terminate().success());
}
