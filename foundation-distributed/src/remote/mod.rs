//! Remote processes: a beam process exported by name on one node, reached from any node
//! through a typed handle — Erlang's `{Name, Node} ! Msg`.
//!
//! Start a [`Remote`] service on each [`Node`](crate::node::Node). On the node that runs a
//! process, [`Remote::register`] exports its [`Handle`](foundation_beam::Handle) under a
//! name; on any node, [`Remote::process`] gives a [`RemoteRef`] to `(name, node)` with
//! [`send`](RemoteRef::send), [`send_urgent`](RemoteRef::send_urgent),
//! [`send_confirmed`](RemoteRef::send_confirmed), [`call`](RemoteRef::call) with a
//! timeout, [`monitor`](RemoteRef::monitor) and [`link`](RemoteRef::link). Messages are
//! serde types, MessagePack on the wire; a process says which types cross the network by
//! implementing [`RemoteMessage`] for its message type.
//!
//! * **Exits.** A monitor reports the process's exit reason ([`RemoteExitReason`], a
//!   mirror of [`ExitReason`](foundation_beam::ExitReason)), `NoProcess` if nothing is
//!   exported under the name, and `NoConnection` — Erlang's `noconnection` — when the
//!   process's node is declared down or leaves: a crashed node is reported within its
//!   failure detector's bound. Links work across nodes: an abnormal exit on either side
//!   stops the other, and a lost node breaks the link with `noconnection`.
//! * **Failures are errors or counts, never silent.** A call fails promptly when the
//!   process is not there or stops, or when its node is declared down; a message that
//!   does not decode as the process's type is [`RemoteError::Undecodable`] to a caller,
//!   and counted for a sender on both nodes ([`RemoteStats`], `foundation_remote_*`
//!   metrics). [`RemoteRef`] states per method what `Ok` means.
//! * **Order, as in Erlang** (D400). What one node sends to one remote process on the
//!   normal lane — casts, calls, confirmed sends — is handled in the order sent, whatever
//!   the sizes; a monitor's DOWN (or a link's exit) comes after the messages the process
//!   sent to the monitoring node before it exited. The urgent lane (`send_urgent`,
//!   `call_urgent`) keeps its own order and overtakes the normal one. Details in
//!   [`RemoteRef`]'s delivery table.
//! * **Cluster-wide names.** [`Remote::register_global`] claims a name on every node;
//!   [`Remote::whereis`] / [`Remote::global`] find its holder. When a partition heals
//!   with the name claimed on both sides, every node keeps the claim with the smaller
//!   (Lamport clock at registration, node name) — the same winner everywhere, whatever
//!   order the claims arrive in — and the loser's [`GlobalName::lost`] resolves.
//!
//! Built on the node: casts, calls, answers, demonitors and exits travel as signals to
//! the receivers `$remote` (normal lane) and `$remote!urgent` (urgent lane), one keyed
//! path per (node, process) pair; monitor and link set-ups as requests to
//! `$remote/control`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use foundation_distributed::beam::{spawn, Context, Process, Reply};
//! use foundation_distributed::node::{Node, NodeSettings};
//! use foundation_distributed::remote::{Remote, RemoteMessage};
//! use foundation_distributed::transport::{
//!     ClusterSecret, MemoryNetwork, MemoryTransport, Security, TransportSettings,
//! };
//!
//! enum Msg { Add(u64), Get(Reply<u64>) }
//! impl RemoteMessage for Msg {
//!     type Cast = u64;
//!     type Call = ();
//!     type Reply = u64;
//!     fn from_cast(n: u64) -> Self { Msg::Add(n) }
//!     fn from_call(_: (), reply: Reply<u64>) -> Self { Msg::Get(reply) }
//! }
//! struct Counter(u64);
//! impl Process for Counter {
//!     type Message = Msg;
//!     async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Msg>) {
//!         match msg { Msg::Add(n) => self.0 += n, Msg::Get(r) => r.send(self.0) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let net = MemoryNetwork::new();
//! let secret = ClusterSecret::generate(); // shared by the cluster's nodes
//! let node = |name: &'static str| {
//!     let t = MemoryTransport::new(&net, TransportSettings {
//!         cluster: "doc".into(), node: name.into(),
//!         security: Security::Secret(secret.clone()), ..Default::default()
//!     }).unwrap();
//!     let s = NodeSettings { listen: format!("mem://{name}"), ..Default::default() };
//!     Node::start(Arc::new(t), name, s)
//! };
//! let (a, b) = (node("a").await.unwrap(), node("b").await.unwrap());
//! b.join(&[a.addr()]).await.unwrap();
//! while a.members().len() < 2 { tokio::time::sleep(Duration::from_millis(10)).await }
//! let (ra, rb) = (Remote::start(&a), Remote::start(&b));
//!
//! rb.register("counter", &spawn(Counter(0))).unwrap();
//! let counter = ra.process::<Msg>("b", "counter");
//! counter.send(&2).await.unwrap();
//! counter.send_confirmed(&3, Duration::from_secs(5)).await.unwrap();
//! // A call is handled after the messages sent before it (one path per pair).
//! assert_eq!(counter.call(&(), Duration::from_secs(5)).await.unwrap(), 5);
//! # }
//! ```

mod error;
mod exit;
mod handle;
mod metrics;
mod names;
mod service;
mod wire;

pub use error::{RemoteError, RemoteResult};
pub use exit::RemoteExitReason;
pub use handle::{GlobalName, NameLost, Remote, RemoteMonitor, RemoteRef, RemoteStats};
pub(crate) use metrics::describe_metrics;

use foundation_beam::process::Reply;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The message type of a process that can be reached from other nodes: which types cross
/// the network, and how they become the process's own messages.
///
/// A process that takes no calls sets `Call = ()` and `Reply = ()` and drops the reply in
/// `from_call` (a caller then gets [`RemoteError::NoReply`]); one with several kinds of
/// call uses enums for `Call` and `Reply`.
pub trait RemoteMessage: Send + Sized + 'static {
    /// One-way messages ([`RemoteRef::send`]).
    type Cast: Serialize + DeserializeOwned + Send + 'static;
    /// Requests ([`RemoteRef::call`]).
    type Call: Serialize + DeserializeOwned + Send + 'static;
    /// Replies to requests.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The process's message for a cast.
    fn from_cast(msg: Self::Cast) -> Self;

    /// The process's message for a call: it answers through `reply`.
    fn from_call(request: Self::Call, reply: Reply<Self::Reply>) -> Self;
}
