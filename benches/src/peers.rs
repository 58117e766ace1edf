//! The same counter actor three ways — a Foundation [`Process`], a `ractor` actor and a
//! `kameo` actor — for the side-by-side runs of `benches/actors.rs` and the report.
//!
//! Each takes a start message (how many ticks to expect and whom to tell when the last
//! one is handled), ticks, and an echo request (request/reply). [`Counter`] drives any of
//! them the same way, and [`fire`] and [`round_trips`] are the two measurements.
//!
//! With the `ractor-cluster` feature, ractor's `cluster` feature removes its blanket
//! `ractor::Message` impl, so [`RMsg`] implements it explicitly (local messages only:
//! not serializable, which is ractor's default).

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use foundation_beam::process::{Context, Process, Reply};
use foundation_beam::Handle;
use tokio::sync::{mpsc, oneshot};

/// The timeout of a request/reply call in these measurements (never reached).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a measurement drives a counter: start it, tick it, ask it for an echo. Each
/// implementation uses its crate's plain API; a failure panics (a bench has no error
/// path).
pub trait Counter {
    /// Tells the counter to expect `n` ticks and to signal `done` after the last.
    fn start(&self, n: u64, done: oneshot::Sender<()>) -> impl Future<Output = ()>;
    /// One tick (fire-and-forget).
    fn tick(&self, i: u64) -> impl Future<Output = ()>;
    /// One request/reply round trip.
    fn echo(&self, i: u64) -> impl Future<Output = u64>;
}

/// One fire-and-forget round: `n` ticks sent from this task, timed until the counter has
/// handled the last one.
pub async fn fire<C: Counter>(c: &C, n: u64) -> Duration {
    let (done_tx, done_rx) = oneshot::channel();
    c.start(n, done_tx).await;
    let start = Instant::now();
    for i in 0..n {
        c.tick(i).await;
    }
    done_rx.await.expect("the counter handled the last tick");
    start.elapsed()
}

/// The raw tokio baseline of [`fire`]: `n` values through an `mpsc` channel —
/// unbounded (`send`) or bounded to `capacity` (`send().await`) — to a spawned task that
/// counts them down; timed until it has taken the last one.
pub async fn tokio_fire(n: u64, capacity: Option<usize>) -> Duration {
    let (done_tx, done_rx) = oneshot::channel();
    let start;
    match capacity {
        None => {
            let (tx, rx) = mpsc::unbounded_channel::<u64>();
            tokio::spawn(count_down(n, rx, done_tx));
            start = Instant::now();
            for i in 0..n {
                tx.send(i).expect("receiver alive");
            }
        }
        Some(capacity) => {
            let (tx, rx) = mpsc::channel::<u64>(capacity);
            tokio::spawn(count_down(n, rx, done_tx));
            start = Instant::now();
            for i in 0..n {
                tx.send(i).await.expect("receiver alive");
            }
        }
    }
    done_rx.await.expect("the receiver took the last value");
    start.elapsed()
}

/// A channel's receiving side, bounded or not.
trait Recv: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Option<u64>> + Send;
}

impl Recv for mpsc::Receiver<u64> {
    fn next(&mut self) -> impl Future<Output = Option<u64>> + Send {
        self.recv()
    }
}

impl Recv for mpsc::UnboundedReceiver<u64> {
    fn next(&mut self) -> impl Future<Output = Option<u64>> + Send {
        self.recv()
    }
}

async fn count_down(n: u64, mut rx: impl Recv, done: oneshot::Sender<()>) {
    let mut left = n;
    while let Some(v) = rx.next().await {
        black_box(v);
        left -= 1;
        if left == 0 {
            let _ = done.send(());
            break;
        }
    }
}

/// `n` sequential request/reply round trips, timed.
pub async fn round_trips<C: Counter>(c: &C, n: u64) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        black_box(c.echo(i).await);
    }
    start.elapsed()
}

/// The Foundation counter driven through `Handle::send().await` (and `call`).
impl Counter for Handle<FMsg> {
    async fn start(&self, n: u64, done: oneshot::Sender<()>) {
        self.send(FMsg::Start(n, done))
            .await
            .expect("counter alive");
    }
    async fn tick(&self, i: u64) {
        self.send(FMsg::Tick(i)).await.expect("counter alive");
    }
    async fn echo(&self, i: u64) -> u64 {
        self.call(|r| FMsg::Echo(i, r), CALL_TIMEOUT)
            .await
            .expect("counter answers")
    }
}

/// The Foundation counter driven through `Handle::try_send` (no waiting).
#[derive(Clone)]
pub struct TrySend(pub Handle<FMsg>);

impl Counter for TrySend {
    async fn start(&self, n: u64, done: oneshot::Sender<()>) {
        self.0.try_send(FMsg::Start(n, done)).expect("room");
    }
    async fn tick(&self, i: u64) {
        self.0.try_send(FMsg::Tick(i)).expect("room");
    }
    async fn echo(&self, i: u64) -> u64 {
        self.0.echo(i).await
    }
}

/// The ractor counter: `cast` and `call`.
impl Counter for ractor::ActorRef<RMsg> {
    async fn start(&self, n: u64, done: oneshot::Sender<()>) {
        self.cast(RMsg::Start(n, done)).expect("actor alive");
    }
    async fn tick(&self, i: u64) {
        self.cast(RMsg::Tick(i)).expect("actor alive");
    }
    async fn echo(&self, i: u64) -> u64 {
        let r = self.call(|r| RMsg::Echo(i, r), Some(CALL_TIMEOUT));
        r.await.expect("actor alive").expect("actor answers")
    }
}

/// The kameo counter: `tell` and `ask`.
impl Counter for kameo::actor::ActorRef<KCounter> {
    async fn start(&self, n: u64, done: oneshot::Sender<()>) {
        self.tell(KStart(n, done)).await.expect("actor alive");
    }
    async fn tick(&self, i: u64) {
        self.tell(KTick(i)).await.expect("actor alive");
    }
    async fn echo(&self, i: u64) -> u64 {
        self.ask(KEcho(i)).await.expect("actor answers")
    }
}

// ---- Foundation ----

/// The Foundation counter's messages.
pub enum FMsg {
    /// Expect this many ticks, then signal the sender.
    Start(u64, oneshot::Sender<()>),
    /// One tick.
    Tick(u64),
    /// Answer with the value.
    Echo(u64, Reply<u64>),
}

/// The Foundation counter process.
#[derive(Default)]
pub struct FCounter {
    left: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Process for FCounter {
    type Message = FMsg;
    async fn handle(&mut self, msg: FMsg, _: &mut Context<FMsg>) {
        match msg {
            FMsg::Start(n, done) => {
                self.left = n;
                self.done = Some(done);
            }
            FMsg::Tick(v) => {
                black_box(v);
                self.left -= 1;
                if self.left == 0 {
                    let _ = self.done.take().map(|d| d.send(()));
                }
            }
            FMsg::Echo(v, r) => r.send(v),
        }
    }
}

// ---- ractor ----

/// The ractor counter's messages.
pub enum RMsg {
    /// Expect this many ticks, then signal the sender.
    Start(u64, oneshot::Sender<()>),
    /// One tick.
    Tick(u64),
    /// Answer with the value.
    Echo(u64, ractor::RpcReplyPort<u64>),
}

// With ractor's `cluster` feature the blanket impl is gone; the defaults keep the
// message local.
#[cfg(feature = "ractor-cluster")]
impl ractor::Message for RMsg {}

/// The ractor counter actor; its state is (ticks left, whom to tell).
pub struct RCounter;

impl ractor::Actor for RCounter {
    type Msg = RMsg;
    type State = (u64, Option<oneshot::Sender<()>>);
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ractor::ActorRef<RMsg>,
        _: (),
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok((0, None))
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<RMsg>,
        msg: RMsg,
        state: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            RMsg::Start(n, done) => *state = (n, Some(done)),
            RMsg::Tick(v) => {
                black_box(v);
                state.0 -= 1;
                if state.0 == 0 {
                    let _ = state.1.take().map(|d| d.send(()));
                }
            }
            RMsg::Echo(v, r) => {
                let _ = r.send(v);
            }
        }
        Ok(())
    }
}

// ---- kameo ----

/// The kameo counter actor.
#[derive(kameo::Actor, Default)]
pub struct KCounter {
    left: u64,
    done: Option<oneshot::Sender<()>>,
}

/// Expect this many ticks, then signal the sender.
pub struct KStart(pub u64, pub oneshot::Sender<()>);
/// One tick.
pub struct KTick(pub u64);
/// Answer with the value.
pub struct KEcho(pub u64);

impl kameo::message::Message<KStart> for KCounter {
    type Reply = ();
    async fn handle(&mut self, m: KStart, _: &mut kameo::message::Context<Self, ()>) {
        self.left = m.0;
        self.done = Some(m.1);
    }
}

impl kameo::message::Message<KTick> for KCounter {
    type Reply = ();
    async fn handle(&mut self, m: KTick, _: &mut kameo::message::Context<Self, ()>) {
        black_box(m.0);
        self.left -= 1;
        if self.left == 0 {
            let _ = self.done.take().map(|d| d.send(()));
        }
    }
}

impl kameo::message::Message<KEcho> for KCounter {
    type Reply = u64;
    async fn handle(&mut self, m: KEcho, _: &mut kameo::message::Context<Self, u64>) -> u64 {
        m.0
    }
}
