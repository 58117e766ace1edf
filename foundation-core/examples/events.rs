//! Events end to end. Run with `cargo run -p foundation-core --example events`.
//!
//! It opens a durable store in a temporary directory, subscribes to one flow, emits a
//! causal chain with an urgent event in it, reads the chain back in causal order, shuts
//! down, tears the last record as a crash would, and reopens: the report names the damage
//! and every complete event is back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foundation_core::events::{
    CorrelationId, Event, EventStore, Events, EventsSettings, Filter, FsyncPolicy, Query,
    StoreOptions,
};

#[tokio::main]
async fn main() -> foundation_core::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("foundation-events-example-{}", std::process::id()));
    let options = StoreOptions {
        fsync: FsyncPolicy::Always,
        ..StoreOptions::default()
    };
    let (store, report) = EventStore::open(&dir, options.clone())?;
    println!("opened {}: {report:?}", dir.display());
    let events = Events::with_store(EventsSettings::default(), store)?;

    let flow = CorrelationId::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let _sub = events.subscribe(Filter::all().correlated(flow), move |e: Event| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            println!(
                "  handled {:<8} {:?} {}",
                e.event_type.as_str(),
                e.priority,
                e.id
            );
        }
    })?;

    let order = Event::new("orders", &("placed", 42u32))?.correlated(flow);
    let paid = Event::new("orders", &("paid", 42u32))?.caused_by(&order);
    let fraud = Event::new("error", &"card flagged")?
        .caused_by(&paid)
        .urgent();
    let order_id = events.emit(order).await?;
    events.emit(paid).await?;
    events.emit(fraud).await?;
    while handled.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }

    println!("chain of {flow}:");
    for e in events.store().chain(flow) {
        println!("  {:<8} parent {:?}", e.event_type.as_str(), e.parent_id);
    }
    let orders = events.store().query(&Query::new().event_type("orders"));
    assert_eq!(orders[0].id, order_id);
    println!("stats: {:?}", events.store().stats());
    events.shutdown().await;
    drop(events);

    // A crash in the middle of writing the last record.
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| foundation_core::Error::Io {
            context: "listing".into(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let len = std::fs::metadata(last).expect("metadata").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .and_then(|f| f.set_len(len - 5))
        .expect("truncate");

    let (store, report) = EventStore::open(&dir, options)?;
    println!(
        "reopened: {} events restored, problems: {:?}",
        report.restored, report.problems
    );
    assert_eq!(store.len(), 2);
    assert_eq!(report.problems.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
