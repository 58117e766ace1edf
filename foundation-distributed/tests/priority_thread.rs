//! The priority thread (D380): used on a multi-thread runtime, serving the high-priority
//! channels (request handlers' first poll runs on it, their spawns go to the
//! application's runtime); off on a `current_thread` runtime and when the setting is off.
//! Its start and stop are in `priority_thread_lifecycle.rs` (a process of its own: the
//! thread is shared by every node of a process).

use std::sync::Arc;
use std::time::Duration;

use foundation_distributed::node::{Node, NodeSettings, SendOptions};
use foundation_distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, TcpTransport, Transport,
    TransportSettings,
};

mod common;

use common::{eventually, up};

fn settings(node: &str, security: Security) -> TransportSettings {
    TransportSettings {
        security,
        ..common::settings_in("test", node)
    }
}

fn secret() -> Security {
    Security::Secret(ClusterSecret::from_hex(common::SECRET).unwrap())
}

fn tcp(node: &str, security: Security) -> Arc<dyn Transport> {
    Arc::new(TcpTransport::new(settings(node, security)).unwrap())
}

/// Names (as Linux shows them: at most 15 bytes) of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Nodes `pa` and `pb` (the transports' names), `b` joined to `a`, both up.
async fn pair(
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    listen: [&str; 2],
    priority_thread: bool,
) -> (Node, Node) {
    start_pair(a, b, listen, priority_thread, ["pa", "pb"]).await
}

/// Nodes `names` on transports `a` and `b` (named alike), `b` joined to `a`, both up.
async fn start_pair(
    a: Arc<dyn Transport>,
    b: Arc<dyn Transport>,
    listen: [&str; 2],
    priority_thread: bool,
    names: [&str; 2],
) -> (Node, Node) {
    let s = |listen: &str| NodeSettings {
        listen: listen.into(),
        priority_thread,
        ..NodeSettings::default()
    };
    let na = Node::start(a, names[0], s(listen[0])).await.unwrap();
    let nb = Node::start(b, names[1], s(listen[1])).await.unwrap();
    nb.join(&[na.addr()]).await.unwrap();
    eventually("both up on both", || {
        up(&na).len() == 2 && up(&nb).len() == 2
    })
    .await;
    (na, nb)
}

/// Where a request handler's synchronous part ran, and where a task it spawned ran.
type Seen = (Option<String>, Option<String>);

/// Serves `where` on `node`: answers with the handler's thread name and the thread name
/// of a task the handler spawns.
fn serve_where(node: &Node) {
    node.serve("where", |_from, _x: u64| {
        let here = std::thread::current().name().map(str::to_string);
        let spawned = tokio::spawn(async { std::thread::current().name().map(str::to_string) });
        async move {
            let there = spawned.await.unwrap();
            (here, there)
        }
    });
}

/// Sends a few bulk messages and a request from `a` to `b`; returns the request's answer.
async fn exercise(a: &Node, b: &Node) -> Seen {
    let to = b.name().to_string();
    let mut inbox = b.register::<Vec<u8>>("bulk");
    for _ in 0..8 {
        a.send(&to, "bulk", &vec![7u8; 256 * 1024], SendOptions::default())
            .await
            .unwrap();
    }
    for _ in 0..8 {
        let (_, m) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.len(), 256 * 1024);
    }
    a.request(&to, "where", &1u64, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_tcp() {
    let (a, b) = start_pair(
        tcp("lifea", secret()),
        tcp("lifeb", secret()),
        ["127.0.0.1:0"; 2],
        true,
        ["lifea", "lifeb"],
    )
    .await;
    assert!(a.has_priority_thread() && b.has_priority_thread());
    assert!(thread_names().iter().any(|n| n == "fprio"));

    serve_where(&b);
    let (here, there) = exercise(&a, &b).await;
    // The handler's first poll runs on the reading task of an urgent connection: on the
    // priority thread (its socket moved there); what it spawns runs on the application's
    // workers.
    assert_eq!(here.as_deref(), Some("fprio"));
    assert!(there.is_some_and(|n| n != "fprio"));
    // Replies come back the same way, many times.
    for i in 0..100u64 {
        let (here, _) = a
            .request::<u64, Seen>("lifeb", "where", &i, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(here.as_deref(), Some("fprio"));
    }

    // From a task on the runtime as well.
    let from_task = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..100u64 {
                let (here, _) = a
                    .request::<u64, Seen>("lifeb", "where", &i, Duration::from_secs(10))
                    .await
                    .unwrap();
                assert_eq!(here.as_deref(), Some("fprio"));
            }
        })
    };
    from_task.await.unwrap();

    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);
    assert!(!a.has_priority_thread() && !b.has_priority_thread());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_memory_transports_work_on_it() {
    let (a, b) = pair(
        tcp("pa", Security::InsecurePlaintext),
        tcp("pb", Security::InsecurePlaintext),
        ["127.0.0.1:0"; 2],
        true,
    )
    .await;
    serve_where(&b);
    assert_eq!(exercise(&a, &b).await.0.as_deref(), Some("fprio"));
    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);

    let net = MemoryNetwork::new();
    let t = |n: &str| -> Arc<dyn Transport> {
        Arc::new(MemoryTransport::new(&net, settings(n, secret())).unwrap())
    };
    let (a, b) = pair(t("pa"), t("pb"), ["mem://pa", "mem://pb"], true).await;
    serve_where(&b);
    assert_eq!(exercise(&a, &b).await.0.as_deref(), Some("fprio"));
    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);
}

/// TLS streams stay registered with the application runtime's I/O driver (only plain TCP
/// sockets move); their tasks still run on the priority thread, and traffic flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_work_on_it() {
    use foundation_distributed::transport::tls::dev;
    let dir = std::env::temp_dir().join(format!("fprio-tls-{}", std::process::id()));
    let ca = dev::generate_ca(dir.join("ca"), "test").unwrap();
    let tls = |n: &str| Security::Tls(dev::issue_node_cert(&ca, n, dir.join(n)).unwrap());
    let (a, b) = start_pair(
        tcp("tlsa", tls("tlsa")),
        tcp("tlsb", tls("tlsb")),
        ["127.0.0.1:0"; 2],
        true,
        ["tlsa", "tlsb"],
    )
    .await;
    assert!(a.has_priority_thread());
    serve_where(&b);
    assert_eq!(exercise(&a, &b).await.0.as_deref(), Some("fprio"));
    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_setting() {
    let (a, b) = pair(
        tcp("pa", secret()),
        tcp("pb", secret()),
        ["127.0.0.1:0"; 2],
        false,
    )
    .await;
    assert!(!a.has_priority_thread() && !b.has_priority_thread());
    serve_where(&b);
    let (here, _) = exercise(&a, &b).await;
    assert!(here.is_some_and(|n| n != "fprio"));
    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);
}

/// On a `current_thread` runtime (the one paused-clock tests use) there is no priority
/// thread: everything runs on the test's thread, under its clock.
#[tokio::test(start_paused = true)]
async fn off_on_a_current_thread_runtime() {
    let net = MemoryNetwork::new();
    let t = |n: &str| -> Arc<dyn Transport> {
        Arc::new(MemoryTransport::new(&net, settings(n, secret())).unwrap())
    };
    let (a, b) = pair(t("pa"), t("pb"), ["mem://pa", "mem://pb"], true).await;
    assert!(!a.has_priority_thread() && !b.has_priority_thread());
    let me = std::thread::current().name().map(str::to_string);
    serve_where(&b);
    let (here, there) = exercise(&a, &b).await;
    assert_eq!(here, me);
    assert_eq!(there, me);
    assert!(a.shutdown_within(Duration::from_secs(10)).await);
    assert!(b.shutdown_within(Duration::from_secs(10)).await);
}
