//! Two nodes on the in-memory network: a bulk transfer on `bulk_data`, urgent messages on
//! `coordination`, and a state channel that keeps only the latest update per key. Run with
//! `cargo run -p foundation-distributed --example channels`.

use std::sync::Arc;

use bytes::Bytes;
use foundation_distributed::channel::{
    ChannelSettings, ChannelSpec, Channels, Inbox, MessageMeta, Priority, Urgency, BULK_DATA,
};
use foundation_distributed::transport::{
    ClusterSecret, MemoryNetwork, MemoryTransport, Security, Transport, TransportSettings,
};

fn node(network: &MemoryNetwork, name: &str) -> foundation_distributed::Result<Arc<dyn Transport>> {
    let settings = TransportSettings {
        cluster: "example".into(),
        node: name.into(),
        security: Security::Secret(
            ClusterSecret::from_hex(
                "9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f",
            )
            .unwrap(),
        ),
        ..Default::default()
    };
    Ok(Arc::new(MemoryTransport::new(network, settings)?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> foundation_distributed::Result<()> {
    let network = MemoryNetwork::new();
    let (a, b) = (node(&network, "a")?, node(&network, "b")?);
    let settings =
        ChannelSettings::default().with(ChannelSpec::new("state", Priority::Medium, 2).monotonic());

    let mut inbox = Inbox::new(&settings)?;
    inbox.serve(b.listen("mem://b").await?);
    let channels = Channels::builder(a, "mem://b")
        .settings(settings)
        .connect()
        .await?;

    let bulk = channels.sender(BULK_DATA)?;
    for _ in 0..16 {
        bulk.send(None, Bytes::from(vec![0u8; 64 * 1024])).await?;
    }
    let urgent = MessageMeta {
        urgency: Urgency::Urgent,
        ..Default::default()
    };
    println!("urgent messages go to `{}`", channels.route(&urgent));
    channels
        .send_routed(urgent, None, Bytes::from_static(b"stop"))
        .await?;
    let update = MessageMeta {
        monotonic_key: Some(1),
        ..Default::default()
    };
    for v in 0..3u8 {
        channels
            .send_routed(update, None, Bytes::from(vec![v]))
            .await?;
    }

    // Updates still queued when a newer one arrives are superseded: at least the last
    // one (value 2) is delivered.
    let (mut bulk_seen, mut latest) = (0, None);
    while bulk_seen < 16 || latest != Some(2) {
        let m = inbox.recv().await.expect("inbox open");
        match &*m.channel {
            BULK_DATA => bulk_seen += 1,
            "state" => latest = Some(m.payload[0]),
            _ => {}
        }
        if m.payload.len() <= 8 {
            println!(
                "{} on `{}` (connection {}, key {:?}): {:?}",
                m.peer, m.channel, m.connection, m.key, m.payload
            );
        }
    }
    channels.shutdown().await;
    Ok(())
}
