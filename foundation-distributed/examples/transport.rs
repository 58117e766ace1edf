//! Two nodes on loopback TCP: an authenticated exchange, then an intruder with the wrong
//! secret is refused. Run with `cargo run -p foundation-distributed --example transport`.

use bytes::Bytes;
use foundation_distributed::transport::{
    ClusterSecret, Frame, Security, TcpTransport, Transport, TransportSettings,
};

fn settings(node: &str, secret: &ClusterSecret) -> TransportSettings {
    TransportSettings {
        cluster: "example".into(),
        node: node.into(),
        security: Security::Secret(secret.clone()),
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> foundation_distributed::Result<()> {
    // In production every node reads the same file: `ClusterSecret::from_file(path)?`.
    let secret = ClusterSecret::generate();
    let server = TcpTransport::new(settings("server", &secret))?;
    let client = TcpTransport::new(settings("client", &secret))?;
    let intruder = TcpTransport::new(settings("intruder", &ClusterSecret::generate()))?;

    let mut listener = server.listen("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr());

    let mut outbound = client.connect(listener.local_addr(), "control", 0).await?;
    let mut inbound = listener.accept().await?;
    println!(
        "authenticated: {} -> {} on channel {:?}",
        inbound.peer().node,
        outbound.peer().node,
        inbound.peer().channel
    );

    outbound.send(1, Bytes::from_static(b"hello")).await?;
    if let Some(Frame::Data { channel, payload }) = inbound.recv().await? {
        println!("server got {payload:?} on channel {channel}");
        inbound
            .send(channel, Bytes::from_static(b"welcome"))
            .await?;
    }
    if let Some(Frame::Data { payload, .. }) = outbound.recv().await? {
        println!("client got {payload:?}");
    }

    match intruder.connect(listener.local_addr(), "control", 0).await {
        Ok(_) => println!("intruder got in (this must not happen)"),
        Err(e) => println!("intruder refused: {e} (code {})", e.code()),
    }
    outbound.close("bye").await?;
    listener.shutdown().await;
    Ok(())
}
