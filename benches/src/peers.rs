//! The same counter actor three ways — a Foundation [`Process`], a `ractor` actor and a
//! `kameo` actor — for the side-by-side runs of `benches/actors.rs` and the report.
//!
//! Each takes a start message (how many ticks to expect and whom to tell when the last
//! one is handled), ticks, and an echo request (request/reply).
//!
//! With the `ractor-cluster` feature, ractor's `cluster` feature removes its blanket
//! `ractor::Message` impl, so [`RMsg`] implements it explicitly (local messages only:
//! not serializable, which is ractor's default).

use std::hint::black_box;

use foundation_beam::process::{Context, Process, Reply};
use tokio::sync::oneshot;

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
