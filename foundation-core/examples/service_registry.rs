//! A service registers itself, a client waits for it, and the entry disappears when the
//! service stops. Run with `cargo run -p foundation-core --example service_registry`.

use std::collections::BTreeMap;
use std::time::Duration;

use foundation_core::registry::Registry;
use tokio::sync::{mpsc, oneshot};

type Request = (u64, oneshot::Sender<u64>);

#[tokio::main]
async fn main() -> foundation_core::Result<()> {
    let registry = Registry::new();

    // The service: its Registration guard lives in its task.
    let (tx, mut rx) = mpsc::channel::<Request>(64);
    let metadata = BTreeMap::from([("version".to_string(), "1.0".to_string())]);
    let registration =
        registry.register_with_health_check("squarer", tx, metadata, || async { Ok(()) })?;
    let service = tokio::spawn(async move {
        let _registration = registration;
        for _ in 0..3 {
            let Some((n, reply)) = rx.recv().await else {
                break;
            };
            let _ = reply.send(n * n);
        }
        // Returning drops the guard: the service leaves the registry.
    });

    // A client.
    let squarer = registry
        .wait_for::<mpsc::Sender<Request>>("squarer", Duration::from_secs(1))
        .await?;
    registry
        .check_health("squarer", Duration::from_millis(100))
        .await?;
    for info in registry.list() {
        println!("{} {:?} {:?}", info.name, info.metadata, info.health);
    }
    for n in 1..=3 {
        let (reply_tx, reply_rx) = oneshot::channel();
        squarer.send((n, reply_tx)).await.expect("service running");
        println!("{n}^2 = {}", reply_rx.await.expect("reply"));
    }
    service.await.expect("service task");
    println!(
        "after the service stopped, registered: {}",
        registry.contains("squarer")
    );
    Ok(())
}
