//! A small observed cluster for the observer's tests: nodes on the in-memory transport,
//! each hosting a two-worker ecosystem whose workers can be made to crash, and JSON
//! reads over a real loopback HTTP connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use foundation_intelligence::beam::ecosystem::{Ecosystem, EcosystemSpec, Workers};
use foundation_intelligence::beam::{Context, Process};
use foundation_intelligence::distributed::interpose::Interposer;
use foundation_intelligence::distributed::node::{Node, NodeSettings};
use foundation_intelligence::distributed::topology::Role;
use foundation_intelligence::distributed::transport::{ClusterSecret, MemoryNetwork};
use serde_json::Value;

/// What a worker is asked to do.
pub enum Job {
    /// Nothing.
    Tick,
    /// Panic (an injected crash).
    Crash,
}

/// A worker that does nothing, or crashes when asked.
pub struct Worker;

impl Process for Worker {
    type Message = Job;
    async fn handle(&mut self, job: Job, _: &mut Context<Job>) {
        match job {
            Job::Tick => {}
            Job::Crash => panic!("injected crash"),
        }
    }
}

/// A node and the ecosystem it hosts.
pub struct Member {
    /// The node.
    pub node: Node,
    /// Its ecosystem `work.<name>`, two workers.
    pub eco: Arc<Ecosystem<Worker>>,
}

/// A full-mesh peer `name` of `cluster` on `net` (`mem://<name>`), with its ecosystem.
pub async fn member(
    net: &MemoryNetwork,
    cluster: &str,
    name: &str,
    secret: &ClusterSecret,
    interposer: Option<Arc<Interposer>>,
) -> Member {
    let settings = NodeSettings {
        role: Role::Peer,
        interposer,
        ..NodeSettings::default()
    };
    let node = super::mem_node::start(net, cluster, name, secret, settings).await;
    let eco = Arc::new(
        Ecosystem::start(
            EcosystemSpec::new(format!("work.{name}")).workers(Workers::Fixed(2)),
            |_| Worker,
        )
        .await
        .unwrap(),
    );
    Member { node, eco }
}

/// `GET path` on `addr` (HTTP/1.1, connection closed): status, head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    })
    .await
    .unwrap()
}

/// `GET path` on `addr`, which must answer 200 with JSON: the document.
pub async fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, head, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{path}: {head}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}
