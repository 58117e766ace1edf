//! The `foundation` binary as a user meets it: teaching help, one clear message and a
//! non-zero exit for bad flags, config, environment and secret files; a node that serves
//! /metrics, /health and /ready and stops cleanly on SIGTERM; the demo's summary.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{dir, foundation, get, write, RunningNode, SECRET};

/// Runs and returns (exit code, stderr).
fn fails(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn help_teaches_the_commands() {
    let out = foundation().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "demo",
        "node",
        "Examples:",
        "foundation demo --nodes 5",
        "/metrics",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` missing from --help:\n{text}"
        );
    }
    let out = foundation().args(["node", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[node]",
        "secret_file",
        "FOUNDATION_NODE__",
        "--seed",
        "SIGTERM",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` missing from node --help:\n{text}"
        );
    }
}

#[test]
fn bad_flags_are_refused() {
    let (code, err) = fails(foundation().args(["demo", "--bogus"]));
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
    let (code, err) = fails(foundation().args(["demo", "--duration", "5x"]));
    assert_eq!(code, 2);
    assert!(err.contains("5x"), "{err}");
    let (code, err) = fails(foundation().args(["demo", "--nodes", "1"]));
    assert_eq!(code, 2);
    assert!(err.contains("--nodes 1"), "{err}");
    // The example in --help must parse (both spellings).
    for t in ["client-server", "client_server", "full_mesh"] {
        let out = foundation()
            .args(["demo", "--topology", t, "--nodes", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--nodes 1 is outside"),
            "--topology {t} parses: {err}"
        );
    }
    let (code, err) = fails(foundation().args(["demo", "--topology", "static"]));
    assert_eq!(code, 2);
    assert!(err.contains("--topology static"), "{err}");
    let (code, err) = fails(foundation().args(["demo", "--log", "a=[b"]));
    assert_eq!(code, 2);
    assert!(err.contains("not a valid filter"), "{err}");
}

#[test]
fn config_problems_name_the_file_and_the_problem() {
    let d = dir("bad-config");
    let secret = write(&d, "cluster.secret", SECRET);
    let secret = secret.to_str().unwrap();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            write(&d, "malformed.toml", "[node]\nname = \"a\"\nlisten = \n"),
            vec!["malformed.toml line 3", "malformed TOML"],
        ),
        (
            write(
                &d,
                "typo.toml",
                "[node]\nname = \"a\"\nlisen = \"127.0.0.1:1\"\n",
            ),
            vec!["typo.toml", "unknown key `node.lisen`"],
        ),
        (
            write(&d, "type.toml", "[node]\nname = 5\n"),
            vec!["type.toml", "`node.name`", "expected a string"],
        ),
        (
            write(&d, "table.toml", "[nodes]\nname = \"a\"\n"),
            vec!["table.toml", "unknown table(s) [nodes]"],
        ),
        (
            write(
                &d,
                "topology.toml",
                "[node]\nname = \"a\"\ntopology = \"ring\"\n",
            ),
            vec!["topology.toml", "`ring` is not one of"],
        ),
        (
            d.join("missing.toml"),
            vec!["missing.toml", "cannot read it"],
        ),
    ];
    for (file, needles) in cases {
        let (code, err) = fails(
            foundation()
                .args(["node", "--secret-file", secret, "--config"])
                .arg(&file),
        );
        assert_eq!(code, 2, "{}: {err}", file.display());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` missing: {err}");
        }
    }
    // The environment and flags are named as the source of their values.
    let ok = write(&d, "ok.toml", "[node]\nname = \"a\"\nmetrics = \"off\"\n");
    let (code, err) = fails(
        foundation()
            .args(["node", "--secret-file", secret, "--config"])
            .arg(&ok)
            .env("FOUNDATION_NODE__WORKERS", "many"),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("env FOUNDATION_NODE__WORKERS") && err.contains("node.workers"),
        "{err}"
    );
    let (code, err) = fails(
        foundation()
            .args([
                "node",
                "--secret-file",
                secret,
                "--metrics",
                "nowhere",
                "--config",
            ])
            .arg(&ok),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("flag --metrics") && err.contains("nowhere"),
        "{err}"
    );
    let (code, err) = fails(foundation().args(["node", "--secret-file", secret]));
    assert_eq!(code, 2);
    assert!(
        err.contains("node.name") && err.contains("required"),
        "{err}"
    );
}

#[test]
fn secret_problems_name_the_file() {
    let d = dir("bad-secret");
    let cfg = write(
        &d,
        "n.toml",
        "[node]\nname = \"a\"\nmetrics = \"off\"\nsecret_file = \"short.secret\"\n",
    );
    write(&d, "short.secret", "hunter2\n");
    let (code, err) = fails(foundation().args(["node", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("short.secret") && err.contains("at least"),
        "{err}"
    );
    let (code, err) = fails(
        foundation()
            .args(["node", "--secret-file", "/nonexistent/x.secret", "--config"])
            .arg(&cfg),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/x.secret") && err.contains("cannot read"),
        "{err}"
    );
    let none = write(&d, "none.toml", "[node]\nname = \"a\"\nmetrics = \"off\"\n");
    let (code, err) = fails(foundation().args(["node", "--config"]).arg(&none));
    assert_eq!(code, 2);
    assert!(err.contains("no cluster secret"), "{err}");
}

#[test]
fn a_node_serves_metrics_health_and_readiness_and_stops_on_sigterm() {
    let d = dir("node");
    write(&d, "cluster.secret", SECRET);
    let cfg = write(
        &d,
        "n1.toml",
        "[node]\nname = \"n1\"\ncluster = \"cli\"\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nsecret_file = \"cluster.secret\"\n",
    );
    let node = RunningNode::start(&["--config", cfg.to_str().unwrap()]);
    let (status, body) = get(&node.metrics, "/ready");
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "a node without seeds is ready"
    );
    let (status, body) = get(&node.metrics, "/health");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"node\":\"n1\"") && body.contains("\"cluster\":\"cli\""),
        "{body}"
    );
    let (status, body) = get(&node.metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("node=\"n1\""), "global node label");
    assert!(
        body.contains("# TYPE foundation_http_request_seconds histogram"),
        "{body}"
    );
    let (status, _) = get(&node.metrics, "/nope");
    assert_eq!(status, 404);
    let status = node.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn the_demo_prints_its_summary() {
    let out = foundation()
        .args(["demo", "--nodes", "2", "--duration", "3s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Prometheus metrics: http://127.0.0.1:",
        "coordination: urgent messages",
        "bulk_data: 64 KiB transfers",
        "gossip: background fan-out",
        "topology      full_mesh",
        "supervision",
        "hypothesis",
        "rollout       inline-requests",
        "rollout       faulty-codec",
        "predictive    load ramp",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }
    // Every injected crash was restarted: no ecosystem's coordinator gave up.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("supervision"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], numbers[1], "crashes vs restarts: {line}");
    assert!(!stdout.contains("ecosystem down"), "{stdout}");
}

#[test]
fn log_json_writes_one_json_object_per_line() {
    let d = dir("json-logs");
    write(&d, "cluster.secret", SECRET);
    let cfg = write(
        &d,
        "n.toml",
        "[node]\nname = \"j\"\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nsecret_file = \"cluster.secret\"\n",
    );
    let log = d.join("stderr.log");
    let node = RunningNode::start_logging(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--log-json",
            "--log",
            "info",
        ],
        Some(&log),
    );
    assert!(node.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "started and stopped are logged: {text}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        text.contains("node started") && text.contains("stopped"),
        "{text}"
    );
}

#[test]
fn gen_secret_writes_a_private_file_once() {
    let d = dir("gen-secret");
    let file = d.join("cluster.secret");
    let _ = std::fs::remove_file(&file);
    let out = foundation().arg("gen-secret").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let (code, err) = fails(foundation().arg("gen-secret").arg(&file));
    assert_eq!(code, 2);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "not overwritten"
    );
}

#[test]
fn gen_certs_makes_a_tls_cluster_that_joins() {
    let d = dir("gen-certs");
    let certs = d.join("certs");
    let _ = std::fs::remove_dir_all(&certs);
    let out = foundation()
        .args(["gen-certs", "--cluster", "tls-test", "--dir"])
        .arg(&certs)
        .args(["n1", "n2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("security = \"tls\""), "{stdout}");
    for f in ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"] {
        assert!(certs.join(f).exists(), "{f}");
    }
    let tls = |node: &str| -> Vec<String> {
        let p = |f: String| certs.join(f).to_string_lossy().into_owned();
        vec![
            "--name".into(),
            node.into(),
            "--cluster".into(),
            "tls-test".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
            "--security".into(),
            "tls".into(),
            "--ca".into(),
            p("ca.pem".into()),
            "--cert".into(),
            p(format!("{node}.pem")),
            "--key".into(),
            p(format!("{node}.key")),
        ]
    };
    let a1 = tls("n1");
    let n1 = RunningNode::start(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let mut a2 = tls("n2");
    a2.extend(["--seed".to_string(), n1.listen.clone()]);
    let n2 = RunningNode::start(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = get(&n2.metrics, "/health");
        // `/ready` turns 200 once the join has completed, which can come a moment after
        // the member shows up in `/health`: wait for both.
        let ready = get(&n2.metrics, "/ready").0;
        if status == 200
            && ready == 200
            && body.contains("\"name\":\"n1\"")
            && !body.contains("\"up\":false")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n2 never saw n1 over TLS (ready {ready}): {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(n2.terminate().success());
    assert!(n1.terminate().success());

    // A missing certificate file is named before anything starts.
    let mut bad = tls("n1");
    let i = bad.iter().position(|a| a == "--cert").unwrap();
    bad[i + 1] = certs.join("missing.pem").to_string_lossy().into_owned();
    let (code, err) = fails(foundation().arg("node").args(&bad));
    assert_eq!(code, 2);
    assert!(err.contains("missing.pem") && err.contains("cert"), "{err}");
    // `tls` without its files is a config error naming the key.
    let (code, err) = fails(foundation().args([
        "node",
        "--name",
        "x",
        "--metrics",
        "off",
        "--security",
        "tls",
    ]));
    assert_eq!(code, 2);
    assert!(
        err.contains("node.security") && err.contains("`ca`"),
        "{err}"
    );
}
