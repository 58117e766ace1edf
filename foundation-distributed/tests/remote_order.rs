//! Order between a pair of processes, as Erlang promises it: the casts, calls and confirmed
//! sends from one node to one remote process are handled in the order sent, whatever their
//! sizes; the DOWN (or link exit) of a process comes after the messages it sent before
//! exiting; the
//! urgent lane overtakes the normal one (documented). Each test delays one channel with
//! the interposer (paused clock), so a message on another path would overtake: on the
//! code before D400 (calls on `coordination`, large casts on `bulk_data`, DOWN unkeyed)
//! these tests failed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pair;
use foundation_distributed::beam::{spawn, Context, ExitReason, Process, Reply};
use foundation_distributed::interpose::{Fault, Interposer, Rule};
use foundation_distributed::remote::{Remote, RemoteExitReason, RemoteMessage, RemoteRef};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

/// A note: small, or large enough (4 KiB) to be routed to `bulk_data` by size.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Note {
    Small(u64),
    Big(u64, Vec<u8>),
}

fn big(n: u64) -> Note {
    Note::Big(n, vec![7; 4096])
}

/// A recorder of the notes it handles; a call returns what it has handled so far.
enum Rec {
    Note(u64),
    Log(Reply<Vec<u64>>),
}

impl RemoteMessage for Rec {
    type Cast = Note;
    type Call = ();
    type Reply = Vec<u64>;
    fn from_cast(n: Note) -> Self {
        match n {
            Note::Small(n) | Note::Big(n, _) => Rec::Note(n),
        }
    }
    fn from_call((): (), reply: Reply<Vec<u64>>) -> Self {
        Rec::Log(reply)
    }
}

struct Recorder(Vec<u64>);

impl Process for Recorder {
    type Message = Rec;
    async fn handle(&mut self, msg: Rec, _ctx: &mut Context<Rec>) {
        match msg {
            Rec::Note(n) => self.0.push(n),
            Rec::Log(r) => r.send(self.0.clone()),
        }
    }
}

/// What a [`Farewell`] is told.
enum Go {
    Run,
    Ignore,
}

impl RemoteMessage for Go {
    type Cast = ();
    type Call = ();
    type Reply = ();
    fn from_cast((): ()) -> Self {
        Go::Ignore
    }
    fn from_call((): (), _: Reply<()>) -> Self {
        Go::Ignore
    }
}

/// A process that, when told to, sends its notes (each to the recorder of its index) and
/// stops.
struct Farewell {
    to: Vec<RemoteRef<Rec>>,
    notes: Vec<(usize, Note)>,
    exit: ExitReason,
}

impl Process for Farewell {
    type Message = Go;
    async fn handle(&mut self, msg: Go, ctx: &mut Context<Go>) {
        if let Go::Run = msg {
            for (i, n) in self.notes.drain(..) {
                self.to[i].send(&n).await.unwrap();
            }
            ctx.stop(self.exit.clone());
        }
    }
}

/// Delays every message from `from` on `channel` by `delay` (in order, per connection).
fn delay(from: &str, channel: &str, delay: Duration) -> Arc<Interposer> {
    let faults = Arc::new(Interposer::with_seed(1));
    faults.add(
        Rule::new(Fault::Delay {
            min: delay,
            max: delay,
        })
        .from(&[from])
        .channel(channel),
    );
    faults
}

#[tokio::test(start_paused = true)]
async fn calls_and_confirmed_sends_are_handled_after_the_casts_sent_before_them() {
    let faults = delay("a", "messages", Duration::from_millis(300));
    let (_a, ra, _b, rb) = pair(Some(faults)).await;
    rb.register("rec", &spawn(Recorder(Vec::new()))).unwrap();
    let r = ra.process::<Rec>("b", "rec");

    r.send(&Note::Small(1)).await.unwrap();
    r.send(&Note::Small(2)).await.unwrap();
    // Before D400 the call went as a request on `coordination` and overtook the casts.
    assert_eq!(r.call(&(), T).await.unwrap(), [1, 2]);
    r.send(&Note::Small(3)).await.unwrap();
    r.send_confirmed(&Note::Small(4), T).await.unwrap();
    r.try_send(&Note::Small(5)).unwrap();
    assert_eq!(r.call(&(), T).await.unwrap(), [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn casts_keep_their_order_whatever_their_sizes() {
    // Large messages are routed to `bulk_data` by size; delay it.
    let faults = delay("a", "bulk_data", Duration::from_millis(300));
    let (_a, ra, _b, rb) = pair(Some(faults)).await;
    rb.register("rec", &spawn(Recorder(Vec::new()))).unwrap();
    let r = ra.process::<Rec>("b", "rec");

    r.send(&big(1)).await.unwrap();
    r.send(&Note::Small(2)).await.unwrap();
    r.try_send(&big(3)).unwrap();
    r.send_confirmed(&Note::Small(4), T).await.unwrap();
    r.send(&big(5)).await.unwrap();
    assert_eq!(r.call(&(), T).await.unwrap(), [1, 2, 3, 4, 5]);
}

/// Process `p` on `b` sends `notes` to `recorders` recorders on `a` (each note to the
/// recorder of its index; each recorder on its own pair path), then stops normally; `a`
/// monitors `p`. Returns what the recorders had received when the DOWN arrived, sorted.
async fn notes_seen_at_down(
    faults: Arc<Interposer>,
    notes: Vec<(usize, Note)>,
    recorders: usize,
) -> Vec<u64> {
    let (_a, ra, _b, rb) = pair(Some(faults)).await;
    notes_seen_at_down_between(("a", &ra), ("b", &rb), notes, recorders).await
}

/// [`notes_seen_at_down`] with the recorders on node `a.0` and `p` on node `b.0`.
async fn notes_seen_at_down_between(
    (a, ra): (&str, &Remote),
    (b, rb): (&str, &Remote),
    notes: Vec<(usize, Note)>,
    recorders: usize,
) -> Vec<u64> {
    let names: Vec<String> = (0..recorders).map(|i| format!("rec{i}")).collect();
    for name in &names {
        ra.register(name, &spawn(Recorder(Vec::new()))).unwrap();
    }
    let p = spawn(Farewell {
        to: names.iter().map(|n| rb.process::<Rec>(a, n)).collect(),
        notes,
        exit: ExitReason::Normal,
    });
    rb.register("p", &p).unwrap();
    let mut down = ra.process::<Go>(b, "p").monitor().await;
    p.try_send(Go::Run).unwrap();
    drop(p);
    assert_eq!(down.wait().await, RemoteExitReason::Normal);
    // A local call queues behind whatever had reached the recorder's mailbox.
    let mut seen = Vec::new();
    for name in &names {
        seen.extend(ra.process::<Rec>(a, name).call(&(), T).await.unwrap());
    }
    seen.sort_unstable();
    seen
}

/// Many 16 KiB notes to recorder `heavy`, then one small note to each of the three others
/// (four pair keys, spread over the normal lane's connections): notes 1 to 33.
fn heavy_then_small(heavy: usize) -> Vec<(usize, Note)> {
    let mut notes: Vec<(usize, Note)> = (1..=30)
        .map(|n| (heavy, Note::Big(n, vec![7; 16 * 1024])))
        .collect();
    notes.extend(
        (0..4)
            .filter(|&r| r != heavy)
            .zip(31..)
            .map(|(r, n)| (r, Note::Small(n))),
    );
    notes
}

#[tokio::test(start_paused = true)]
async fn the_down_of_a_process_comes_after_the_large_message_it_sent_before_exiting() {
    let faults = delay("b", "bulk_data", Duration::from_millis(300));
    let seen = notes_seen_at_down(faults, vec![(0, Note::Small(1)), (0, big(2))], 1).await;
    assert_eq!(seen, [1, 2], "the DOWN overtook the process's last message");
}

#[tokio::test(start_paused = true)]
async fn the_down_of_a_process_comes_after_the_many_messages_it_sent_before_exiting_on_every_connection(
) {
    // Every frame on the normal lane is slow. The process sends many 16 KiB messages to
    // one recorder (several frames even when the queue combines waiting messages into
    // 64 KiB frames), then one small one to each of three others (four pair keys, spread
    // over the lane's connections): whichever connection a single DOWN took, in one of
    // the rounds the heavy recorder's connection is another one, still draining. The
    // fenced DOWN waits for all of them.
    for heavy in 0..4 {
        let faults = delay("b", "messages", Duration::from_millis(20));
        let seen = notes_seen_at_down(faults, heavy_then_small(heavy), 4).await;
        assert_eq!(
            seen,
            (1..=33).collect::<Vec<u64>>(),
            "heavy recorder {heavy}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_link_exit_comes_after_the_messages_the_process_sent_before_failing() {
    let faults = delay("b", "bulk_data", Duration::from_millis(300));
    let (_a, ra, _b, rb) = pair(Some(faults)).await;
    ra.register("rec", &spawn(Recorder(Vec::new()))).unwrap();
    let t = spawn(Farewell {
        to: vec![rb.process::<Rec>("a", "rec")],
        notes: vec![(0, Note::Small(1)), (0, big(2))],
        exit: ExitReason::Failed("done".into()),
    });
    rb.register("t", &t).unwrap();
    // A process on `a` linked to `t`: the link exit stops it.
    let linked = spawn(Recorder(Vec::new()));
    ra.process::<Go>("b", "t").link(&linked).await.unwrap();
    let mut stopped = linked.monitor();
    t.try_send(Go::Run).unwrap();
    drop(t);
    assert!(matches!(stopped.wait().await, ExitReason::Linked { .. }));
    let seen = ra.process::<Rec>("a", "rec").call(&(), T).await.unwrap();
    assert_eq!(
        seen,
        [1, 2],
        "the link exit overtook the process's last message"
    );
}

#[tokio::test(start_paused = true)]
async fn the_urgent_lane_overtakes_the_normal_lane_and_keeps_its_own_order() {
    let faults = delay("a", "messages", Duration::from_millis(300));
    let (_a, ra, _b, rb) = pair(Some(faults)).await;
    rb.register("rec", &spawn(Recorder(Vec::new()))).unwrap();
    let r = ra.process::<Rec>("b", "rec");

    r.send(&Note::Small(1)).await.unwrap();
    r.send_urgent(&Note::Small(2)).await.unwrap();
    r.send_urgent(&big(3)).await.unwrap();
    // Urgent: after the urgent casts sent before it, before the delayed normal cast.
    assert_eq!(r.call_urgent(&(), T).await.unwrap(), [2, 3]);
    assert_eq!(r.call(&(), T).await.unwrap(), [2, 3, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_relay_keeps_the_pairs_order() {
    // Clients reach each other through the server; the hop from it is slow on `bulk_data`.
    let faults = delay("s1", "bulk_data", Duration::from_millis(300));
    let (s1, c1, c2) = common::client_server(Some(faults)).await;
    let (_rs, r1, r2) = (Remote::start(&s1), Remote::start(&c1), Remote::start(&c2));
    r2.register("rec", &spawn(Recorder(Vec::new()))).unwrap();
    let r = r1.process::<Rec>("c2", "rec");
    r.send(&big(1)).await.unwrap();
    r.send(&Note::Small(2)).await.unwrap();
    assert_eq!(r.call(&(), T).await.unwrap(), [1, 2]);
}

/// The fenced DOWN through a relay: `p` on client `c2` sends to recorders on client `c1`
/// through the server, whose hop to `c1` is slow on the normal lane, then exits. The
/// relay re-keys each copy and each note with its own table; with the cluster's one
/// table (checked, D431) the copies land on the connections the notes took, and the
/// DOWN comes after them all. With the server on 4 connections of `messages` (clients
/// on 2) and the table check disabled, the DOWN overtook notes (D431).
#[tokio::test(start_paused = true)]
async fn a_down_relayed_through_a_server_comes_after_the_messages_sent_before_it() {
    use foundation_distributed::node::{default_channels, MESSAGES};
    let mut channels = default_channels();
    for spec in &mut channels.channels {
        if spec.name == MESSAGES {
            spec.parallelism = 4;
        }
    }
    for heavy in 0..4 {
        let faults = delay("s1", "messages", Duration::from_millis(20));
        let (s1, c1, c2) = common::client_server_with(Some(faults), channels.clone()).await;
        let (_rs, r1, r2) = (Remote::start(&s1), Remote::start(&c1), Remote::start(&c2));
        let seen =
            notes_seen_at_down_between(("c1", &r1), ("c2", &r2), heavy_then_small(heavy), 4).await;
        assert_eq!(
            seen,
            (1..=33).collect::<Vec<u64>>(),
            "heavy recorder {heavy}"
        );
    }
}
