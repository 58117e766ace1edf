//! The observer's views over a real loopback HTTP server, on a 3-node cluster (in-memory
//! transport): every `/api/*` view answers JSON with this node's real state, and
//! `/api/cluster` gathers the other nodes' snapshots over the cluster.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use foundation_intelligence::core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use foundation_intelligence::distributed::transport::{ClusterSecret, MemoryNetwork};
use foundation_intelligence::http::{Endpoints, HttpServer};
use foundation_intelligence::observer::Observer;
use serde_json::Value;

mod support;
use support::observed::{http_get, json, member, Job, Member};

fn observer(m: &Member, recorder: &Arc<ShardedRecorder>) -> Observer {
    let o = Observer::new(m.node.clone(), "full_mesh")
        .recorder(recorder.clone())
        .ecosystem(m.eco.clone());
    o.serve();
    o
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_answers_with_the_nodes_state_and_the_cluster_is_gathered() {
    let net = MemoryNetwork::new();
    let secret = ClusterSecret::generate();
    let a = member(&net, "observer", "a", &secret, None).await;
    let b = member(&net, "observer", "b", &secret, None).await;
    let c = member(&net, "observer", "c", &secret, None).await;
    b.node.join(&[a.node.addr()]).await.unwrap();
    c.node.join(&[a.node.addr()]).await.unwrap();
    eventually("3 members everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|m| m.node.members().iter().filter(|x| x.up).count() == 3)
    })
    .await;

    let recorder = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
    metrics::with_local_recorder(recorder.as_ref(), || {
        metrics::counter!("foundation_channel_messages_total", "channel" => "urgent", "direction" => "out")
            .increment(5);
        metrics::counter!("foundation_node_links").increment(1);
        metrics::counter!("foundation_channel_messages_total", "channel" => "urgent", "direction" => "out", "node" => "b")
            .increment(9);
    });
    let oa = observer(&a, &recorder);
    observer(&b, &recorder);
    observer(&c, &recorder);

    // A crash on a, restarted by its supervisor, shows in its process view.
    a.eco.send(Job::Tick).await.unwrap();
    for _ in 0..2 {
        a.eco.send(Job::Crash).await.unwrap();
    }
    eventually("a restart", || a.eco.info().restarts >= 1).await;

    let endpoints = Endpoints::new(recorder.clone(), Arc::new(AtomicBool::new(true))).observer(oa);
    let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), endpoints)
        .await
        .unwrap();
    let addr = server.local_addr();

    let node = json(addr, "/api/node").await;
    assert_eq!(node["name"], "a");
    assert_eq!(node["addr"], "mem://a");
    assert_eq!(node["incarnation"], a.node.incarnation());
    assert_eq!(node["topology"], "full_mesh");
    assert_eq!(node["topology_now"], "full_mesh");
    assert_eq!(node["epoch"], 0);
    assert_eq!(node["neighbours"], serde_json::json!(["b", "c"]));
    assert_eq!(node["linked"], serde_json::json!(["b", "c"]));
    assert_eq!(node["plumtree"], Value::Null);
    assert_eq!(node["overlay"], Value::Null);
    assert_eq!(node["switches"], serde_json::json!([]));

    let members = json(addr, "/api/members").await;
    let names: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    for (m, n) in members.as_array().unwrap().iter().zip([&a, &b, &c]) {
        assert_eq!(m["up"], true);
        assert_eq!(m["state"], "Alive");
        assert_eq!(m["incarnation"], n.node.incarnation());
    }

    let channels = json(addr, "/api/channels").await;
    let channels = channels.as_array().unwrap();
    assert_eq!(channels.len(), 1, "only channel series: {channels:?}");
    assert_eq!(channels[0]["metric"], "foundation_channel_messages_total");
    assert_eq!(channels[0]["labels"]["channel"], "urgent");
    assert_eq!(channels[0]["value"], 5.0);

    let procs = json(addr, "/api/processes").await;
    let eco = &procs.as_array().unwrap()[0];
    assert_eq!(eco["name"], "work.a");
    assert_eq!(eco["workers"], 2);
    assert_eq!(eco["omitted"], 0);
    assert!(eco["restarts"].as_u64().unwrap() >= 1, "{eco}");
    assert_eq!(eco["restarts"], a.eco.info().restarts);
    let workers = eco["processes"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (w, info) in workers.iter().zip(a.eco.processes()) {
        assert_eq!(w["id"], info.id.to_string());
        assert!(w["backlog"].is_u64() && w["dropped"].is_u64() && w["rejected"].is_u64());
    }

    // The cluster view: a's page shows b's and c's ecosystems, asked over the cluster.
    let cluster = json(addr, "/api/cluster").await;
    let cluster = cluster.as_array().unwrap();
    let names: Vec<&str> = cluster
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    for e in cluster {
        assert!(e["error"].is_null(), "{e}");
        let name = e["name"].as_str().unwrap();
        assert_eq!(e["snapshot"]["node"]["name"], name);
        assert_eq!(
            e["snapshot"]["ecosystems"][0]["name"],
            format!("work.{name}")
        );
    }
    assert_eq!(
        cluster[1]["snapshot"]["node"]["incarnation"],
        b.node.incarnation()
    );

    // The page: HTML, self-contained (no external scripts), polling /api/cluster.
    let (status, head, body) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"), "{head}");
    assert!(body.contains("<svg") && body.contains("api/cluster"));
    assert!(!body.contains("<script src") && !body.contains("<link"));
    // The metrics stay at /metrics.
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("foundation_channel_messages_total"));

    // A member that leaves is either gone from the view or reported with its error.
    c.node.shutdown().await;
    let cluster = json(addr, "/api/cluster").await;
    for e in cluster.as_array().unwrap() {
        if e["name"] == "c" {
            assert!(e["snapshot"].is_null() && e["error"].is_string(), "{e}");
        }
    }
    server.shutdown().await;
}

/// Two `foundation node` processes: the second node's page shows the first, asked over
/// the (authenticated) cluster link.
#[test]
fn foundation_node_serves_the_observer_and_gathers_the_cluster() {
    use support::{dir, write, RunningNode, SECRET};
    let d = dir("observer");
    write(&d, "cluster.secret", SECRET);
    let cfg = |name: &str| {
        write(
            &d,
            &format!("{name}.toml"),
            &format!("[node]\nname = \"{name}\"\ncluster = \"obs\"\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nsecret_file = \"cluster.secret\"\n"),
        )
    };
    let (c1, c2) = (cfg("o1"), cfg("o2"));
    let n1 = RunningNode::start(&["--config", c1.to_str().unwrap()]);
    let n2 = RunningNode::start(&[
        "--config",
        c2.to_str().unwrap(),
        "--seed",
        n1.listen.as_str(),
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cluster = loop {
        let (status, body) = support::get(&n2.metrics, "/api/cluster");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let answered = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["snapshot"].is_null())
            .count();
        if answered == 2 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "o2 never gathered o1: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let names: Vec<&str> = cluster
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["o2", "o1"], "this node first, then the others");
    for e in cluster.as_array().unwrap() {
        assert_eq!(e["snapshot"]["ecosystems"][0]["name"], "echo");
        assert!(e["snapshot"]["node"]["addr"].is_string());
    }
    let (status, page) = support::get(&n1.metrics, "/");
    assert_eq!(status, 200);
    assert!(page.contains("Foundation observer"));
    assert!(n2.terminate().success());
    assert!(n1.terminate().success());
}
