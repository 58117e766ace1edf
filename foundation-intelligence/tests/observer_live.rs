//! The observer's live views over a real loopback HTTP server on a 3-node cluster
//! (in-memory transport): `/api/peers` (per peer × channel numbers, head-of-line
//! incidents), `/api/history` (samples), `/api/timeline` (restarts, links, members,
//! recorded decisions), `/api/events` (server-sent events, bounded), and the sampler
//! that only runs while somebody looks (on tokio's paused clock).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use foundation_intelligence::core::telemetry::{ShardedRecorder, DEFAULT_BUCKETS};
use foundation_intelligence::distributed::channel::{Urgency, LATE_AFTER};
use foundation_intelligence::distributed::interpose::{Fault, Interposer, Rule};
use foundation_intelligence::distributed::node::SendOptions;
use foundation_intelligence::distributed::topology::TopologyKind;
use foundation_intelligence::distributed::transport::{ClusterSecret, MemoryNetwork};
use foundation_intelligence::http::{Endpoints, HttpServer};
use foundation_intelligence::observer::live::{EventKind, LEASE, MAX_STREAMS, SAMPLE_EVERY};
use foundation_intelligence::observer::Observer;
use foundation_intelligence::rollout::{CheckAction, Rollout, RolloutSettings};
use serde_json::Value;

mod support;
use support::observed::{http_get, json, member, Member};

async fn cluster(a_interposer: Option<Arc<Interposer>>) -> (Member, Member, Member) {
    let net = MemoryNetwork::new();
    let secret = ClusterSecret::generate();
    let a = member(&net, "observer-live", "a", &secret, a_interposer).await;
    let b = member(&net, "observer-live", "b", &secret, None).await;
    let c = member(&net, "observer-live", "c", &secret, None).await;
    b.node.join(&[a.node.addr()]).await.unwrap();
    c.node.join(&[a.node.addr()]).await.unwrap();
    eventually("3 members and links everywhere", || {
        [&a, &b, &c].iter().all(|m| {
            m.node.members().iter().filter(|x| x.up).count() == 3 && m.node.peer_stats().len() == 2
        })
    })
    .await;
    (a, b, c)
}

fn observer(m: &Member) -> Observer {
    let o = Observer::new(m.node.clone(), "full_mesh").ecosystem(m.eco.clone());
    o.serve();
    o
}

async fn serve(o: Observer) -> HttpServer {
    let recorder = Arc::new(ShardedRecorder::new(2, &DEFAULT_BUCKETS, &[]));
    let endpoints = Endpoints::new(recorder, Arc::new(AtomicBool::new(true))).observer(o);
    HttpServer::start("127.0.0.1:0".parse().unwrap(), endpoints)
        .await
        .unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached: {what}");
}

fn channel<'a>(peers: &'a Value, peer: &str, channel: &str) -> &'a Value {
    peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == peer)
        .unwrap_or_else(|| panic!("no peer {peer}: {peers}"))["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stats"]["channel"] == channel)
        .unwrap_or_else(|| panic!("no channel {channel}: {peers}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_show_connections_queues_rates_and_head_of_line_incidents() {
    // a's urgent messages to b are held 10 × LATE_AFTER each on their connection, so
    // urgent messages queued behind them wait; its ordinary messages to b 20 ms each, so
    // a burst piles up in the queue.
    let net = Arc::new(Interposer::with_seed(1));
    net.add(
        Rule::new(Fault::Delay {
            min: LATE_AFTER * 10,
            max: LATE_AFTER * 10,
        })
        .from(&["a"])
        .to(&["b"])
        .channel("urgent"),
    );
    net.add(
        Rule::new(Fault::Delay {
            min: Duration::from_millis(20),
            max: Duration::from_millis(20),
        })
        .from(&["a"])
        .to(&["b"])
        .channel("messages"),
    );
    let (a, b, c) = cluster(Some(net.clone())).await;
    let _rx_b = b.node.register::<u64>("sink");
    let _rx_c = c.node.register::<u64>("sink");
    let oa = observer(&a);
    observer(&b);
    observer(&c);
    let server = serve(oa.clone()).await;
    let addr = server.local_addr();

    // Before any traffic of ours: every channel of both links, all connections open.
    let peers = json(addr, "/api/peers").await;
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c"]);
    for p in peers.as_array().unwrap() {
        assert_eq!(p["linked"], true);
        let chans: Vec<&str> = p["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["stats"]["channel"].as_str().unwrap())
            .collect();
        assert_eq!(
            chans,
            ["coordination", "gossip", "bulk_data", "urgent", "messages"]
        );
        for ch in p["channels"].as_array().unwrap() {
            assert_eq!(
                ch["stats"]["connections"], ch["stats"]["parallelism"],
                "{ch}"
            );
        }
    }
    assert_eq!(channel(&peers, "b", "urgent")["stats"]["parallelism"], 2);

    // A burst of ordinary messages to b waits in the queue (the writer holds each 20 ms).
    // Each with a key of its own: messages of one key would be appended to one waiting
    // frame (write-combining, D390) and leave the queue together.
    for i in 0..400u64 {
        let own_key = SendOptions {
            key: Some(i),
            ..SendOptions::default()
        };
        a.node.try_send("b", "sink", &i, own_key).unwrap();
    }
    let peers = json(addr, "/api/peers").await;
    let m = channel(&peers, "b", "messages");
    assert!(m["stats"]["queued_messages"].as_u64().unwrap() > 0, "{m}");
    assert!(m["stats"]["queued_bytes"].as_u64().unwrap() > 0, "{m}");
    // Urgent messages to b queued behind held ones: head-of-line incidents on a
    // high-priority channel. One message per connection (2) is taken and held first; the
    // next ones wait in the queues behind them.
    let urgent = SendOptions {
        urgency: Urgency::Urgent,
        key: None,
    };
    for i in 0..2u64 {
        a.node.send("b", "sink", &i, urgent).await.unwrap();
    }
    eventually("the first two taken by their writers", || {
        a.node
            .peer_stats()
            .iter()
            .find(|p| p.peer == "b")
            .and_then(|p| p.channels.iter().find(|c| c.channel == "urgent"))
            .is_some_and(|c| c.queued_messages == 0)
    })
    .await;
    for i in 2..6u64 {
        a.node.send("b", "sink", &i, urgent).await.unwrap();
        a.node.send("c", "sink", &i, urgent).await.unwrap();
    }
    eventually("6 urgent messages written to b", || {
        a.node
            .peer_stats()
            .iter()
            .find(|p| p.peer == "b")
            .and_then(|p| p.channels.iter().find(|c| c.channel == "urgent"))
            .is_some_and(|c| c.sent_messages >= 6)
    })
    .await;
    let peers = json(addr, "/api/peers").await;
    let ub = channel(&peers, "b", "urgent");
    assert!(ub["hol_incidents"].as_u64().unwrap() >= 1, "{ub}");
    assert_eq!(ub["hol_incidents"], ub["stats"]["late"]);
    assert_eq!(ub["stats"]["priority"], "high");
    assert!(ub["stats"]["sent_bytes"].as_u64().unwrap() > 0, "{ub}");
    // Lateness on a medium channel is queueing behind one's own traffic, not HoL.
    eventually("some ordinary messages late", || {
        a.node
            .peer_stats()
            .iter()
            .find(|p| p.peer == "b")
            .and_then(|p| p.channels.iter().find(|c| c.channel == "messages"))
            .is_some_and(|c| c.late > 0)
    })
    .await;
    let peers = json(addr, "/api/peers").await;
    let m = channel(&peers, "b", "messages");
    assert!(m["stats"]["late"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(m["hol_incidents"], 0, "{m}");

    // Rates appear once the sampler has two readings; the history has the samples.
    eventually("two samples", || oa.samples_taken() >= 3).await;
    let peers = json(addr, "/api/peers").await;
    assert!(
        channel(&peers, "b", "messages")["bytes_per_sec"].is_f64(),
        "{peers}"
    );
    let history = json(addr, "/api/history").await;
    assert_eq!(history["interval_ms"], SAMPLE_EVERY.as_millis() as u64);
    assert_eq!(history["sampling"], true);
    let series = history["series"].as_array().unwrap();
    let s = series
        .iter()
        .find(|s| s["peer"] == "b" && s["channel"] == "messages")
        .expect("a series for b/messages");
    let samples = s["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{s}");
    assert!(
        samples
            .iter()
            .any(|x| x["messages_per_sec"].as_f64().unwrap() > 0.0),
        "the burst shows as a rate: {s}"
    );
    assert!(samples.iter().all(|x| x["t_ms"].as_u64().unwrap() > 0));

    // The cluster view carries every node's peers.
    let cl = json(addr, "/api/cluster").await;
    for e in cl.as_array().unwrap() {
        assert_eq!(e["snapshot"]["peers"].as_array().unwrap().len(), 2, "{e}");
    }
    net.heal();
    server.shutdown().await;
    oa.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_shows_restarts_links_members_and_recorded_decisions() {
    let (a, b, c) = cluster(None).await;
    // A rollout that widened once before anybody looked.
    let rollout = Rollout::new(
        "inline",
        RolloutSettings {
            min_samples: 10,
            ..RolloutSettings::default()
        },
    )
    .unwrap();
    let widen = |r: &Rollout| {
        for i in 0..40u32 {
            r.record(i % 2 == 0, Duration::from_millis(5), true);
        }
        r.check()
    };
    assert_eq!(widen(&rollout).action, CheckAction::Widened);
    let oa = observer(&a).rollout(rollout.clone());
    observer(&b);
    observer(&c);
    let server = serve(oa.clone()).await;
    let addr = server.local_addr();
    // The first request starts the sampler; its first tick is the baseline of counters
    // (nothing yet), the rollout's earlier step shown as such.
    assert_eq!(json(addr, "/api/timeline").await, serde_json::json!([]));
    eventually("a baseline", || oa.samples_taken() >= 1).await;
    let tl = oa.timeline(None);
    assert_eq!(tl.len(), 1, "{tl:?}");
    assert_eq!(tl[0].kind, EventKind::Decision);
    assert_eq!(
        tl[0].text,
        "rollout inline widened to 20% (before the observer looked)"
    );
    // A step while somebody looks.
    assert_eq!(widen(&rollout).action, CheckAction::Widened);
    eventually("the second step", || {
        oa.timeline(None)
            .iter()
            .any(|e| e.text == "rollout inline widened to 40%")
    })
    .await;

    // A killed worker is restarted by its supervisor: a restart event.
    a.eco.workers()[1].kill();
    eventually("the restart", || a.eco.info().restarts >= 1).await;
    eventually("the restart on the timeline", || {
        oa.timeline(None)
            .iter()
            .any(|e| e.kind == EventKind::Restart)
    })
    .await;
    let tl = json(addr, "/api/timeline").await;
    let restart = tl
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "restart")
        .unwrap();
    assert_eq!(restart["source"], "work.a");
    assert!(
        restart["text"].as_str().unwrap().contains("restart"),
        "{restart}"
    );

    // A decision recorded by its maker (the hook for switches and scaling decisions).
    oa.record(EventKind::Topology, "a", "switched to hyparview");
    let tl = json(addr, "/api/timeline").await;
    let last = tl.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "topology");
    assert_eq!(last["text"], "switched to hyparview");
    let seq = last["seq"].as_u64().unwrap();
    assert_eq!(
        json(addr, &format!("/api/timeline?after={seq}")).await,
        serde_json::json!([])
    );
    let before = json(addr, &format!("/api/timeline?after={}", seq - 1)).await;
    assert_eq!(before.as_array().unwrap().len(), 1);
    let (status, _, body) = http_get(addr, "/api/timeline?after=soon").await;
    assert_eq!(status, 400, "{body}");

    // c stops: its link goes down and the membership changes.
    c.node.shutdown().await;
    eventually("c's link down on the timeline", || {
        oa.timeline(None)
            .iter()
            .any(|e| e.kind == EventKind::Link && e.source == "c" && e.text.contains("down"))
    })
    .await;
    eventually("c's membership change on the timeline", || {
        oa.timeline(None)
            .iter()
            .any(|e| e.kind == EventKind::Membership && e.source == "c")
    })
    .await;
    // Other nodes' snapshots carry their timelines too.
    let cl = json(addr, "/api/cluster").await;
    assert!(cl[0]["snapshot"]["timeline"].as_array().unwrap().len() >= 3);

    // A topology switch agreed across the cluster shows on every node's timeline, with
    // its epoch and who proposed it.
    b.node
        .switch_topology_because(TopologyKind::hyparview(), "observer test")
        .unwrap();
    let _ = json(addr, "/api/timeline").await; // looking keeps the sampler running
    eventually("the switch on a's timeline", || {
        oa.timeline(None).iter().any(|e| {
            e.kind == EventKind::Topology
                && e.source == "b"
                && e.text
                    == "topology full_mesh -> hyparview (epoch 1, proposed by b: observer test)"
        })
    })
    .await;
    // The node view shows the topology in force, its epoch, the switch and the
    // Plumtree tree's counters.
    let node = json(addr, "/api/node").await;
    assert_eq!(node["topology"], "full_mesh", "as started");
    assert_eq!(node["topology_now"], "hyparview");
    assert_eq!(node["epoch"], 1);
    assert_eq!(node["switches"][0]["proposer"], "b");
    assert!(node["plumtree"].is_object(), "{node}");
    // Under HyParView the overlay's views: a's active view is among the live members
    // (b; c has stopped) once repaired.
    eventually("a's active view", || {
        oa.node_view()
            .overlay
            .is_some_and(|o| o.active == ["b"] && o.eager.iter().all(|p| p == "b"))
    })
    .await;
    server.shutdown().await;
}

/// Reads a server-sent event of type `cluster` from a stream opened with HTTP/1.0 (no
/// chunked framing).
fn read_cluster_event(s: &mut TcpStream, buf: &mut String) -> Value {
    read_cluster_event_after(s, buf).1
}

/// Like [`read_cluster_event`], also returning what came before the event (the head, for
/// the first one).
fn read_cluster_event_after(s: &mut TcpStream, buf: &mut String) -> (String, Value) {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(i) = buf.find("event: cluster\ndata: ") {
            let rest = &buf[i + "event: cluster\ndata: ".len()..];
            if let Some(end) = rest.find("\n\n") {
                let v: Value = serde_json::from_str(&rest[..end]).unwrap();
                let consumed = i + "event: cluster\ndata: ".len() + end + 2;
                let before = buf[..i].to_string();
                buf.drain(..consumed);
                return (before, v);
            }
        }
        let n = s.read(&mut chunk).expect("stream read");
        assert!(n > 0, "stream closed: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_the_cluster_and_are_bounded() {
    let (a, b, c) = cluster(None).await;
    let oa = observer(&a);
    observer(&b);
    observer(&c);
    let server = serve(oa.clone()).await;
    let addr = server.local_addr();

    let open = move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET /api/events HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        s
    };
    let (head, first, second) = tokio::task::spawn_blocking(move || {
        let mut s = open();
        let mut buf = String::new();
        let (head, first) = read_cluster_event_after(&mut s, &mut buf);
        let second = read_cluster_event(&mut s, &mut buf);
        (head, first, second)
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    for v in [&first, &second] {
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(v[1]["snapshot"]["ecosystems"][0]["name"] == "work.b");
    }
    // At most MAX_STREAMS at once: the next one is refused, and a closed one frees its
    // place.
    let streams = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for _ in 0..MAX_STREAMS {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(s, "GET /api/events HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = String::new();
            read_cluster_event(&mut s, &mut buf);
            v.push(s);
        }
        v
    })
    .await
    .unwrap();
    let (status, _, body) = http_get(addr, "/api/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("poll /api/cluster"), "{body}");
    drop(streams);
    let mut ok = false;
    for _ in 0..200 {
        let r = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(s, "GET /api/events HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            String::from_utf8_lossy(&head).into_owned()
        })
        .await
        .unwrap();
        if r.ends_with("200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "closed streams free their places");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_served_as_text_event_stream() {
    let net = MemoryNetwork::new();
    let a = member(
        &net,
        "observer-live",
        "solo",
        &ClusterSecret::generate(),
        None,
    )
    .await;
    let o = observer(&a);
    let server = serve(o.clone()).await;
    let addr = server.local_addr();
    let (mut stream, v) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET /api/events HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = String::new();
        let v = read_cluster_event(&mut s, &mut buf);
        (s, v)
    })
    .await
    .unwrap();
    assert_eq!(v[0]["name"], "solo");
    // Shutting the observer down ends the open stream (the connection closes).
    o.shutdown(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .expect("the stream ends instead of timing out");
    })
    .await
    .unwrap();
    let (status, _, page) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("new EventSource(\"api/events\")"));
    assert!(page.contains("startPolling"), "falls back to polling");
    server.shutdown().await;
}

/// Cheap when nobody looks: without a request the sampler never runs; a request runs it
/// for the lease, then it stops by itself (tokio's paused clock).
#[tokio::test(start_paused = true)]
async fn the_sampler_runs_only_while_somebody_looks() {
    let net = MemoryNetwork::new();
    let a = member(&net, "observer-live", "a", &ClusterSecret::generate(), None).await;
    let o = observer(&a);
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(o.samples_taken(), 0, "nobody looked, nothing sampled");
    assert!(!o.sampling());

    // One look (what every observer request does).
    o.keep_sampling();
    assert!(o.sampling());
    tokio::time::sleep(LEASE + SAMPLE_EVERY * 3).await;
    assert!(!o.sampling(), "stopped after the lease");
    let taken = o.samples_taken();
    let per_lease = LEASE.as_secs() / SAMPLE_EVERY.as_secs();
    assert!(
        (per_lease..=per_lease + 2).contains(&taken),
        "{taken} samples in one lease"
    );
    tokio::time::sleep(LEASE).await;
    assert_eq!(o.samples_taken(), taken, "nothing more while nobody looks");
}
