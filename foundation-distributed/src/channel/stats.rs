//! Read-only numbers of one link's channels, for observers ([`Channels::stats`]).
//!
//! Each connection's sender task keeps four counters (frames, messages and payload bytes
//! written, messages that waited longer than [`LATE_AFTER`] in the queue), single-writer atomics updated with a relaxed load and store; the queue depth is read from the queues
//! themselves when asked. Nothing here runs unless [`Channels::stats`] is called.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Channels, Priority};

/// A message that waited longer than this in its connection's queue (from being queued to
/// the start of the write of its batch, the same span as
/// `foundation_channel_send_seconds`) is counted as *late* ([`ChannelStats::late`]). On
/// a high-priority channel a late message is a head-of-line incident: something held an
/// urgent message back.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

/// Counters of one connection, written only by its sender task (so an increment is a
/// relaxed load and store, no read-modify-write: no lock prefix, no cache line shared
/// with another writer) and read by [`Channels::stats`].
#[derive(Debug, Default)]
pub(crate) struct LiveCounters {
    frames: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    late: AtomicU64,
}

impl LiveCounters {
    /// `copies` copies of a `len`-byte payload were written after waiting `waited`.
    /// Single writer: only the connection's sender task calls it.
    #[inline]
    /// One frame written `copies` times, holding `messages` messages (more than one when
    /// later sends were appended to it while it waited), `len` payload bytes, after
    /// `waited` in the queue.
    pub(crate) fn written(&self, copies: u64, messages: u64, len: u64, waited: Duration) {
        let bump =
            |c: &AtomicU64, by: u64| c.store(c.load(Ordering::Relaxed) + by, Ordering::Relaxed);
        bump(&self.frames, copies);
        bump(&self.messages, copies * messages);
        bump(&self.bytes, len * copies);
        if waited > LATE_AFTER {
            bump(&self.late, 1);
        }
    }

    fn read(&self) -> (u64, u64, u64, u64) {
        (
            self.frames.load(Ordering::Relaxed),
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed),
        )
    }
}

/// One channel of a link to one peer, read now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// The channel's name.
    pub channel: String,
    /// Its priority (`high`, `medium`, `low`).
    pub priority: String,
    /// Connections configured (its parallelism).
    pub parallelism: u16,
    /// Connections open (not closed or failed).
    pub connections: u16,
    /// Messages queued and not yet written, over all its connections.
    pub queued_messages: u64,
    /// Payload bytes queued and not yet written.
    pub queued_bytes: u64,
    /// Messages written since the link came up (copies made by an interposer count).
    pub sent_messages: u64,
    /// Frames written since the link came up: one per message, or fewer when later
    /// messages were appended to a frame while it waited (write-combining, D390).
    pub sent_frames: u64,
    /// Payload bytes written since the link came up.
    pub sent_bytes: u64,
    /// Messages that waited longer than [`LATE_AFTER`] in the queue (of a frame that
    /// later messages were appended to while it waited, its first message: the others
    /// waited less).
    pub late: u64,
}

impl Channels {
    /// Every channel's numbers towards this link's peer, in the channel table's order.
    /// Reads the counters and walks the queues under their locks (at most each queue's
    /// capacity); costs nothing when not called.
    pub fn stats(&self) -> Vec<ChannelStats> {
        self.specs
            .iter()
            .filter_map(|spec| {
                let s = self.by_name.get(&spec.name)?;
                let st = &s.state;
                let (mut queued_messages, mut queued_bytes, mut connections) = (0u64, 0u64, 0u16);
                let (mut sent_messages, mut sent_bytes, mut late) = (0u64, 0u64, 0u64);
                let mut sent_frames = 0u64;
                for q in &st.queues {
                    let (n, b) = q.depth();
                    queued_messages += n as u64;
                    queued_bytes += b;
                    if q.closed().is_none() {
                        connections += 1;
                    }
                    let (f, m, b, l) = q.live.read();
                    sent_frames += f;
                    sent_messages += m;
                    sent_bytes += b;
                    late += l;
                }
                Some(ChannelStats {
                    channel: spec.name.clone(),
                    priority: match spec.priority {
                        Priority::High => "high",
                        Priority::Medium => "medium",
                        Priority::Low => "low",
                    }
                    .to_string(),
                    parallelism: spec.parallelism,
                    connections,
                    queued_messages,
                    queued_bytes,
                    sent_messages,
                    sent_frames,
                    sent_bytes,
                    late,
                })
            })
            .collect()
    }
}
