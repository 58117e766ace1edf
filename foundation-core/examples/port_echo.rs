//! A port in a few lines: `cat` as an echo server behind 4-byte length-prefixed frames,
//! a request too large to send, and the port's counters.
//!
//! Run with `cargo run -p foundation-core --example port_echo` (needs `cat`, so Unix).

use std::time::Duration;

use bytes::Bytes;
use foundation_core::port::Port;

#[tokio::main(flavor = "current_thread")]
async fn main() -> foundation_core::Result<()> {
    let port = Port::builder("cat")
        .name("echo")
        .request_timeout(Duration::from_secs(5))
        .max_frame(64 * 1024)
        .spawn()?;

    for word in ["hello", "frames", "world"] {
        let reply = port.request(Bytes::from(word)).await?;
        println!("sent {word:?}, got {:?}", String::from_utf8_lossy(&reply));
    }

    match port.request(Bytes::from(vec![0u8; 100_000])).await {
        Err(e) => println!("too large, not sent: {e}"),
        Ok(_) => unreachable!("a request over max_frame is rejected"),
    }

    println!("{:?}", port.stats());
    port.shutdown().await;
    println!("after shutdown: {:?}", port.state());
    Ok(())
}
