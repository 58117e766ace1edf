//! Remote `call` round trip: a process on node `b` called from node `a` over loopback TCP,
//! through Foundation's [`RemoteRef::call`], beside baselines measured in the same run on
//! the same 2-worker multi-thread runtime:
//!
//! * `beam_local_call`: the same process called on its own node through
//!   `Handle::call` (no network: the floor of the process part);
//! * `node_request`: a `Node::request` round trip to a `serve` handler on `b` (the node
//!   layer alone, no process: the floor of the network part);
//! * `foundation_remote_call`: `RemoteRef::call` a → b (a call signal on the pair's
//!   ordered path, the remote service's dispatcher, the process's mailbox and reply, the
//!   answer back on the urgent lane; D400);
//! * with `--features ractor-cluster`: `ractor_local_call` and `ractor_cluster_remote_call`,
//!   two `ractor_cluster::NodeServer`s in this process over loopback TCP (plaintext), the
//!   remote actor found through a `pg` group and called through its `RemoteActor` stand-in.
//!
//! Foundation's nodes authenticate their links (handshake with the cluster secret);
//! ractor_cluster's here use its cookie handshake without TLS.
//!
//! Run: `cargo bench -p foundation-benches --bench remote` (add
//! `--features ractor-cluster` for the ractor_cluster side; it builds aws-lc-sys).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use foundation_beam::process::{spawn, Context, Process, Reply};
use foundation_benches::runtime;
use foundation_distributed::node::{Node, NodeSettings};
use foundation_distributed::remote::{Remote, RemoteMessage};
use foundation_distributed::transport::{ClusterSecret, Security, TcpTransport, TransportSettings};

const T: Duration = Duration::from_secs(5);

/// The called process: adds one to the request.
enum Msg {
    Bump(u64, Reply<u64>),
}

impl RemoteMessage for Msg {
    type Cast = ();
    type Call = u64;
    type Reply = u64;
    fn from_cast(_: ()) -> Self {
        unreachable!("the bench only calls")
    }
    fn from_call(n: u64, reply: Reply<u64>) -> Self {
        Msg::Bump(n, reply)
    }
}

struct Bumper;

impl Process for Bumper {
    type Message = Msg;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Msg>) {
        let Msg::Bump(n, reply) = msg;
        reply.send(n + 1);
    }
}

static SECRET: std::sync::OnceLock<ClusterSecret> = std::sync::OnceLock::new();

async fn node(name: &str) -> Node {
    let t = TcpTransport::new(TransportSettings {
        cluster: "bench".into(),
        node: name.into(),
        // The default security mode (secret-keyed AEAD), one secret for the bench's nodes.
        security: Security::Secret(SECRET.get_or_init(ClusterSecret::generate).clone()),
        ..TransportSettings::default()
    })
    .expect("settings");
    Node::start(Arc::new(t), name, NodeSettings::default())
        .await
        .expect("node")
}

fn remote_call(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("remote_call");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    let (a, b, ra, rb, local) = rt.block_on(async {
        let (a, b) = (node("a").await, node("b").await);
        b.join(&[a.addr()]).await.expect("join");
        while a.members().len() < 2 || b.members().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (ra, rb) = (Remote::start(&a), Remote::start(&b));
        let local = spawn(Bumper);
        rb.register("bumper", &local).expect("register");
        b.serve("bump", |_from, n: u64| async move { n + 1 });
        (a, b, ra, rb, local)
    });

    g.bench_function("beam_local_call", |bch| {
        let h = local.clone();
        bch.to_async(&rt).iter(|| {
            let h = h.clone();
            async move { black_box(h.call(|r| Msg::Bump(1, r), T).await.unwrap()) }
        })
    });

    g.bench_function("node_request", |bch| {
        let a = a.clone();
        bch.to_async(&rt).iter(|| {
            let a = a.clone();
            async move { black_box(a.request::<u64, u64>("b", "bump", &1, T).await.unwrap()) }
        })
    });

    let r = ra.process::<Msg>("b", "bumper");
    g.bench_function("foundation_remote_call", |bch| {
        bch.to_async(&rt).iter(|| {
            let r = r.clone();
            async move { black_box(r.call(&1, T).await.unwrap()) }
        })
    });

    #[cfg(feature = "ractor-cluster")]
    ractor_side::bench(&rt, &mut g);

    g.finish();
    let stats = ra.stats();
    assert_eq!(stats.failures, 0, "every remote call succeeded: {stats:?}");
    rt.block_on(async {
        ra.shutdown(Duration::from_secs(1)).await;
        rb.shutdown(Duration::from_secs(1)).await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[cfg(feature = "ractor-cluster")]
mod ractor_side {
    //! ractor_cluster's remote call, set up in this process: two node servers on loopback,
    //! one connected to the other, an actor in a `pg` group, called through the
    //! `RemoteActor` stand-in that the node session spawns for it.

    use std::hint::black_box;
    use std::time::Duration;

    use criterion::measurement::WallTime;
    use criterion::BenchmarkGroup;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
    use ractor_cluster::{NodeServer, RactorClusterMessage};

    #[derive(RactorClusterMessage)]
    pub enum PingMsg {
        #[rpc]
        Bump(u64, RpcReplyPort<u64>),
    }

    struct Pong;

    impl Actor for Pong {
        type Msg = PingMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<PingMsg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<PingMsg>,
            msg: PingMsg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let PingMsg::Bump(n, reply) = msg;
            let _ = reply.send(n + 1);
            Ok(())
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    pub(super) fn bench(rt: &tokio::runtime::Runtime, g: &mut BenchmarkGroup<'_, WallTime>) {
        let (local, remote) = rt.block_on(async {
            let (pa, pb) = (free_port(), free_port());
            let server = |port: u16, name: &str| {
                NodeServer::new(
                    port,
                    "bench-cookie".into(),
                    name.into(),
                    "localhost".into(),
                    None,
                    None,
                )
                .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            };
            let (sa, _ja) = Actor::spawn(None, server(pa, "ractor_a"), ())
                .await
                .expect("node server a");
            let (_sb, _jb) = Actor::spawn(None, server(pb, "ractor_b"), ())
                .await
                .expect("node server b");
            let (pong, _jp) = Actor::spawn(Some("pong".into()), Pong, ())
                .await
                .expect("pong");
            ractor::pg::join("bench".into(), vec![pong.get_cell()]);
            // Give the listeners a moment, then connect a → b.
            tokio::time::sleep(Duration::from_millis(200)).await;
            ractor_cluster::client_connect(&sa, format!("127.0.0.1:{pb}"))
                .await
                .expect("connect");
            // Wait until a session has spawned a remote stand-in for `pong`.
            let mut remote = None;
            for _ in 0..500 {
                remote = ractor::pg::get_members(&"bench".to_string())
                    .into_iter()
                    .find(|c| !c.get_id().is_local());
                if remote.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let remote: ActorRef<PingMsg> = remote
                .expect("ractor_cluster synchronised the pg group within 5 s")
                .into();
            (pong, remote)
        });
        // Check it really goes through the stand-in before measuring.
        rt.block_on(async {
            let n = ractor::call_t!(remote, PingMsg::Bump, 5000, 41).expect("remote call");
            assert_eq!(n, 42);
        });

        g.bench_function("ractor_local_call", |bch| {
            let local = local.clone();
            bch.to_async(rt).iter(|| {
                let local = local.clone();
                async move { black_box(ractor::call_t!(local, PingMsg::Bump, 5000, 1).unwrap()) }
            })
        });
        g.bench_function("ractor_cluster_remote_call", |bch| {
            let remote = remote.clone();
            bch.to_async(rt).iter(|| {
                let remote = remote.clone();
                async move { black_box(ractor::call_t!(remote, PingMsg::Bump, 5000, 1).unwrap()) }
            })
        });
    }
}

criterion_group!(benches, remote_call);
criterion_main!(benches);
