//! Nodes whose channel tables differ do not exchange application traffic (D431): a relay
//! re-keys with its own table and the remote processes' fence counts on every hop
//! splitting the normal lane into the same connections, so a node with another table is
//! refused both ways with a clear error, counted, while membership still works. Paused
//! clock, in-memory transport.

mod common;

use std::time::Duration;

use foundation_distributed::error::Error;
use foundation_distributed::node::{default_channels, NodeSettings, SendOptions, MESSAGES};
use foundation_distributed::transport::MemoryNetwork;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use common::{eventually, start_with, up};

/// Counter `name` with label `label` (any labels when `None`) in `recorder`, since its
/// last snapshot.
fn counted(recorder: &DebuggingRecorder, name: &str, label: Option<(&str, &str)>) -> u64 {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == name
                && label.is_none_or(|(key, value)| {
                    k.key()
                        .labels()
                        .any(|l| l.key() == key && l.value() == value)
                })
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

fn is_mismatch(e: &Error, peer: &str) -> bool {
    matches!(e, Error::ChannelTableMismatch { node, ours, theirs }
        if node == peer && ours != theirs && !theirs.is_empty())
}

/// `b` runs the normal lane (`messages`) on 4 connections, `a` and `c` on the default 2.
/// `b`'s join through `a` fails with [`Error::ChannelTableMismatch`], yet all three are
/// members and see each other up; `b` and the others refuse each other's sends and
/// requests with that error, naming both tables; `a` and `c` talk as usual. Without the
/// check the join and the sends "succeed" and `b` receives them.
#[tokio::test(start_paused = true)]
async fn a_node_with_another_channel_table_is_refused_both_ways() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = MemoryNetwork::new();
    let a = start_with(&net, "a", NodeSettings::default()).await;
    let mut other = default_channels();
    for spec in &mut other.channels {
        if spec.name == MESSAGES {
            spec.parallelism = 4;
        }
    }
    let b = start_with(
        &net,
        "b",
        NodeSettings {
            channels: other,
            ..NodeSettings::default()
        },
    )
    .await;
    let c = start_with(&net, "c", NodeSettings::default()).await;
    // Joining through a seed with another table fails, naming both.
    let e = b.join(&[a.addr()]).await.unwrap_err();
    assert!(is_mismatch(&e, "a"), "{e}");
    c.join(&[a.addr()]).await.unwrap();
    for n in [&a, &b, &c] {
        eventually("all three up", || up(n) == ["a", "b", "c"]).await;
        n.serve("echo", |_from: String, x: u64| async move { x });
    }
    let mut at_b = b.register::<u64>("sink");
    let mut at_a = a.register::<u64>("sink");
    // The topology states (which carry the tables) are exchanged on every new link.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let e = a
        .send("b", "sink", &1u64, SendOptions::default())
        .await
        .unwrap_err();
    assert!(is_mismatch(&e, "b"), "{e}");
    assert!(e.to_string().contains("messages=mediumx4"), "{e}");
    let e = b
        .request::<_, u64>("a", "echo", &2u64, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(is_mismatch(&e, "a"), "{e}");
    let e = c
        .request::<_, u64>("b", "echo", &3u64, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(is_mismatch(&e, "b"), "{e}");
    // Nodes with the same table are unaffected.
    let echoed: u64 = c
        .request("a", "echo", &4u64, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(echoed, 4);
    c.send("a", "sink", &5u64, SendOptions::default())
        .await
        .unwrap();
    assert_eq!(at_a.recv().await.unwrap(), ("c".to_string(), 5));
    assert!(at_b.try_recv().is_err(), "b received a refused message");
    // Each of the four ordered pairs across the mismatch found it once.
    assert_eq!(
        counted(
            &recorder,
            "foundation_node_channel_table_mismatches_total",
            None
        ),
        4
    );
    // Membership still works across the mismatch.
    for n in [&a, &b, &c] {
        assert_eq!(up(n), ["a", "b", "c"]);
    }
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}
