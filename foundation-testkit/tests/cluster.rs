//! The cluster harness: nodes converge, faults injected through it take effect and heal,
//! connections are counted, a killed node is detected.

use std::time::Duration;

use foundation_distributed::channel::ChannelSettings;
use foundation_distributed::node::{MembershipEvent, SendOptions};
use foundation_testkit::cluster::{Cluster, ClusterSpec, Net};
use tokio::sync::mpsc;

async fn send_n0_to_n2(cluster: &Cluster, v: u32) {
    let opts = SendOptions::default();
    cluster.node(0).send("n2", "inbox", &v, opts).await.unwrap();
}

async fn assert_nothing_arrives(inbox: &mut mpsc::Receiver<(String, u32)>, why: &str) {
    let r = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
    assert!(r.is_err(), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_sends_partitions_and_heals() {
    let cluster = Cluster::start(ClusterSpec::new(3, Net::Memory))
        .await
        .unwrap();
    cluster.converge(Duration::from_secs(20)).await.unwrap();
    let mut inbox = cluster.node(2).register::<u32>("inbox");
    send_n0_to_n2(&cluster, 1).await;
    assert_eq!(inbox.recv().await.unwrap(), ("n0".to_string(), 1));

    let rule = cluster.partition(&["n0"], &["n2"]);
    send_n0_to_n2(&cluster, 2).await;
    assert_nothing_arrives(&mut inbox, "a partitioned message is not delivered").await;
    cluster.interposer().remove(rule);
    let lossy = cluster.drop_messages(&["n0"], &["n2"], 1.0);
    send_n0_to_n2(&cluster, 4).await;
    assert_nothing_arrives(
        &mut inbox,
        "a message dropped with probability 1 is not delivered",
    )
    .await;
    cluster.interposer().remove(lossy);
    send_n0_to_n2(&cluster, 3).await;
    assert_eq!(inbox.recv().await.unwrap(), ("n0".to_string(), 3));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_connections_per_node() {
    let cluster = Cluster::start(ClusterSpec::new(2, Net::Memory))
        .await
        .unwrap();
    cluster.converge(Duration::from_secs(20)).await.unwrap();
    // Default channels: one connection per unit of each channel's parallelism on each
    // link (3 + 1 + 2 since D422), one link each way once the second node answered the
    // first's hello.
    let per_link: usize = ChannelSettings::default()
        .channels
        .iter()
        .map(|c| usize::from(c.parallelism))
        .sum();
    assert_eq!(
        per_link, 6,
        "the default table changed: update this comment"
    );
    let expected = 2 * per_link;
    for _ in 0..200 {
        if cluster.connections_total() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.connections_total(), expected);
    assert_eq!(cluster.connections_of("n0"), expected);
    assert_eq!(cluster.connections_of("n1"), expected);
    assert_eq!(cluster.connections_of("nobody"), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_reported_down_over_tcp() {
    let mut cluster = Cluster::start(ClusterSpec::new(2, Net::Tcp)).await.unwrap();
    cluster.converge(Duration::from_secs(20)).await.unwrap();
    let mut events = cluster.node(0).subscribe();
    cluster.kill(1);
    let down = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(MembershipEvent::Down(n)) | Ok(MembershipEvent::Left(n)) if n == "n1" => {
                    return true
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(down, Ok(true), "n1 reported down");
    assert_eq!(cluster.running().count(), 1);
    cluster.shutdown().await;
}
