//! Arbitrary bytes from an unauthenticated peer to an in-memory listener (paused time):
//! no panic, and the first connection accepted is always the proper peer's.
#![no_main]

use bytes::Bytes;
use foundation_distributed::transport::{
    ClusterSecret, Security, Frame, MemoryNetwork, MemoryTransport, Transport, TransportSettings,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn settings(node: &str) -> TransportSettings {
    TransportSettings {
        cluster: "fuzz".into(),
        node: node.into(),
        security: Security::Secret(ClusterSecret::from_hex("9f1c2e4b7a6d8053c1e2f4a9b8d7c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f").unwrap()),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let network = MemoryNetwork::new();
        let server = MemoryTransport::new(&network, settings("server")).unwrap();
        let good = MemoryTransport::new(&network, settings("good")).unwrap();
        let mut listener = server.listen("mem://server").await.unwrap();
        let mut raw = network.connect_raw("mem://server").unwrap();
        let _ = raw.write_all(data).await;
        let mut client = good.connect("mem://server", "c", 0).await.unwrap();
        client.send(1, Bytes::from_static(b"ok")).await.unwrap();
        let mut accepted = listener.accept().await.unwrap();
        assert_eq!(accepted.peer().node, "good");
        assert_eq!(
            accepted.recv().await.unwrap(),
            Some(Frame::Data { channel: 1, payload: Bytes::from_static(b"ok") })
        );
    });
});
