//! Segment files of the durable event store.
//!
//! A store directory holds segment files named `events-<id>.seg`, `<id>` a zero-padded
//! decimal that grows by one per segment. Each file is:
//!
//! ```text
//! header  : magic "FEVS" (4 bytes) | format version u16 BE (= 1) | reserved u16 (= 0)
//! record* : length u32 BE | crc32 u32 BE | body (length bytes)
//! ```
//!
//! `body` is the event in MessagePack (`rmp_serde::to_vec_named`, the serde form of
//! [`Event`]); `crc32` is CRC-32 (IEEE) over the four length bytes followed by the body, so
//! a damaged length is caught as well as a damaged body. A record is written with a single
//! `write` call and never rewritten.
//!
//! On open every segment is scanned. A record is valid when its length is at most the
//! configured maximum, it lies within the file, its checksum matches and its body
//! decodes as an [`Event`]. At the first invalid record the scanner looks for the next
//! offset where a valid record starts: if there is one, the bytes between are a corrupt
//! region that is skipped (left in the file) and reported; if there is none, the rest of
//! the file is a damaged tail that is truncated and reported — as
//! [`DamageKind::TornTail`] when the last record runs past the end of the file (a write
//! cut short by a crash), as [`DamageKind::BadChecksum`] or [`DamageKind::Undecodable`]
//! otherwise. A segment whose header is wrong is reported and left untouched; one
//! shorter than a header (a crash right after creation) is rewritten empty.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use super::event::Event;
use super::store::{FsyncPolicy, StoreOptions};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"FEVS";
const VERSION: u16 = 1;
const HEADER_LEN: u64 = 8;
const RECORD_HEADER: usize = 8;

/// What was wrong at a damaged place of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DamageKind {
    /// The last record runs past the end of the file, or the file ends inside a record
    /// header: a write cut short.
    TornTail,
    /// A record's checksum does not match, or its length is impossible.
    BadChecksum,
    /// A record's checksum matches but its body is not an event.
    Undecodable,
    /// The segment header has the wrong magic or an unknown version.
    BadHeader,
}

/// What recovery did about a damaged place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// The file was cut at `offset`; the bytes after it are gone.
    Truncated,
    /// The damaged bytes stay in the file and are skipped on every open.
    Skipped,
}

/// One damaged place found when opening a durable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the damage in the file.
    pub offset: u64,
    /// Damaged bytes (truncated or skipped).
    pub bytes: u64,
    /// What was wrong.
    pub kind: DamageKind,
    /// What was done.
    pub action: Recovery,
}

/// What [`EventStore::open`](super::EventStore::open) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files read.
    pub segments: usize,
    /// Events now held (after retention).
    pub restored: usize,
    /// Valid events dropped at once by retention (too many or too old).
    pub pruned_on_open: usize,
    /// Every damaged place, in file order. Empty for a clean store.
    pub problems: Vec<Damage>,
}

impl OpenReport {
    /// Whether no damage was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An opened log, the restored events with their segment ids, and the report.
pub(crate) type Opened = (Log, Vec<(u64, Event)>, OpenReport);

pub(crate) struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    /// Ids of the segment files in use, ascending; the last is the active one. A file with
    /// a bad header is not listed, so it is never written to or deleted.
    segments: Vec<u64>,
    active: File,
    active_len: u64,
    unsynced: u32,
    oldest_unsynced: Option<Instant>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("events-{id:020}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("events-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_be_bytes());
    h
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// The record for `event` (header and body), refused if the body exceeds `max` bytes.
/// Done before the store's lock is taken.
pub(crate) fn encode(event: &Event, max: u32) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    rmp_serde::encode::write_named(&mut buf, event).map_err(|e| Error::Encode {
        path: format!("event {}", event.id),
        detail: e.to_string(),
    })?;
    let len = buf.len() - RECORD_HEADER;
    if len > max as usize {
        return Err(Error::EventTooLarge {
            id: event.id.to_string(),
            size: len,
            max: max as usize,
        });
    }
    let len_bytes = (len as u32).to_be_bytes();
    let crc = checksum(&len_bytes, &buf[RECORD_HEADER..]);
    buf[..4].copy_from_slice(&len_bytes);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// A valid record at `pos`: its total length and event.
fn record_at(data: &[u8], pos: usize, max: u32) -> std::result::Result<(usize, Event), DamageKind> {
    let rest = &data[pos..];
    if rest.len() < RECORD_HEADER {
        return Err(DamageKind::TornTail);
    }
    let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > max {
        return Err(DamageKind::BadChecksum);
    }
    let Some(body) = rest.get(RECORD_HEADER..RECORD_HEADER + len as usize) else {
        return Err(DamageKind::TornTail);
    };
    if checksum(&rest[..4], body) != crc {
        return Err(DamageKind::BadChecksum);
    }
    match rmp_serde::from_slice::<Event>(body) {
        Ok(e) => Ok((RECORD_HEADER + len as usize, e)),
        Err(_) => Err(DamageKind::Undecodable),
    }
}

/// Scans one segment's bytes: the valid events, the damage, and the length of the valid
/// prefix to keep (`None` when the file is to be kept whole).
fn scan(
    path: &Path,
    data: &[u8],
    max: u32,
    events: &mut Vec<Event>,
    problems: &mut Vec<Damage>,
) -> Option<u64> {
    let mut pos = HEADER_LEN as usize;
    while pos < data.len() {
        match record_at(data, pos, max) {
            Ok((n, e)) => {
                events.push(e);
                pos += n;
            }
            Err(kind) => {
                let next = (pos + 1..data.len().saturating_sub(RECORD_HEADER - 1))
                    .find(|&q| record_at(data, q, max).is_ok());
                match next {
                    Some(q) => {
                        problems.push(Damage {
                            segment: path.to_path_buf(),
                            offset: pos as u64,
                            bytes: (q - pos) as u64,
                            kind,
                            action: Recovery::Skipped,
                        });
                        pos = q;
                    }
                    None => {
                        problems.push(Damage {
                            segment: path.to_path_buf(),
                            offset: pos as u64,
                            bytes: (data.len() - pos) as u64,
                            kind,
                            action: Recovery::Truncated,
                        });
                        return Some(pos as u64);
                    }
                }
            }
        }
    }
    None
}

impl Log {
    /// Opens the directory, recovering every segment; returns the log, the restored
    /// events with their segment ids (in store order) and the report.
    pub(crate) fn open(dir: &Path, opts: &StoreOptions) -> Result<Opened> {
        std::fs::create_dir_all(dir).map_err(io(format!(
            "creating event store directory {}",
            dir.display()
        )))?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))? {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut report = OpenReport {
            segments: ids.len(),
            ..OpenReport::default()
        };
        let mut restored = Vec::new();
        let mut segments = Vec::new();
        let mut last_usable = false;
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io(format!("reading {}", path.display())))?;
            let is_last = i + 1 == ids.len();
            last_usable = false;
            if data.len() < HEADER_LEN as usize {
                // Created but its header never fully written: nothing in it was acknowledged.
                if !data.is_empty() || !is_last {
                    report.problems.push(Damage {
                        segment: path.clone(),
                        offset: 0,
                        bytes: data.len() as u64,
                        kind: DamageKind::TornTail,
                        action: Recovery::Truncated,
                    });
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(io(format!("rewriting {}", path.display())))?;
                f.write_all(&header())
                    .and_then(|()| f.sync_data())
                    .map_err(io(format!("rewriting {}", path.display())))?;
                segments.push(id);
                last_usable = true;
                continue;
            }
            if data[..HEADER_LEN as usize] != header() {
                report.problems.push(Damage {
                    segment: path.clone(),
                    offset: 0,
                    bytes: data.len() as u64,
                    kind: DamageKind::BadHeader,
                    action: Recovery::Skipped,
                });
                continue;
            }
            let mut events = Vec::new();
            if let Some(keep) = scan(
                &path,
                &data,
                opts.max_record_bytes,
                &mut events,
                &mut report.problems,
            ) {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(format!("truncating {}", path.display())))?;
                f.set_len(keep)
                    .and_then(|()| f.sync_data())
                    .map_err(io(format!("truncating {}", path.display())))?;
            }
            restored.extend(events.into_iter().map(|e| (id, e)));
            segments.push(id);
            last_usable = true;
        }
        let (active, active_len) = match segments.last().copied() {
            Some(id) if last_usable => {
                let path = segment_path(dir, id);
                let f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io(format!("opening {}", path.display())))?;
                let len = f
                    .metadata()
                    .map_err(io(format!("reading {}", path.display())))?
                    .len();
                (f, len)
            }
            _ => {
                // After every file present, including a skipped one with a bad header.
                let id = ids.last().map_or(0, |id| id + 1);
                segments.push(id);
                (new_segment(dir, id, opts.fsync)?, HEADER_LEN)
            }
        };
        let log = Log {
            dir: dir.to_path_buf(),
            segment_bytes: opts.segment_bytes.max(HEADER_LEN + 1),
            fsync: opts.fsync,
            segments,
            active,
            active_len,
            unsynced: 0,
            oldest_unsynced: None,
        };
        Ok((log, restored, report))
    }

    /// Appends one record made by [`encode`]; returns the id of the segment it went to.
    /// Writes one record (one `write`) without syncing; returns its segment. `now` is the
    /// append time on the caller's (tokio) clock, for the batch delay.
    pub(crate) fn append_unsynced(&mut self, record: &[u8], now: Instant) -> Result<u64> {
        if self.active_len > HEADER_LEN
            && self.active_len + record.len() as u64 > self.segment_bytes
        {
            self.roll()?;
        }
        let id = *self.segments.last().expect("an active segment");
        if let Err(source) = self.active.write_all(record) {
            // Cut off a partly written record so later appends stay readable.
            let _ = self.active.set_len(self.active_len);
            return Err(Error::Io {
                context: format!("appending to {}", segment_path(&self.dir, id).display()),
                source,
            });
        }
        self.active_len += record.len() as u64;
        self.unsynced += 1;
        self.oldest_unsynced.get_or_insert(now);
        Ok(id)
    }

    /// Syncs as the policy asks after appends: `Always` now (once for a whole group of
    /// records — group commit), `Batch` when its count or delay is reached.
    pub(crate) fn sync_by_policy(&mut self) -> Result<()> {
        match self.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::Batch { max_records, .. } if self.unsynced >= max_records.max(1) => {
                self.sync()
            }
            FsyncPolicy::Batch { .. } => self.sync_if_due(),
            FsyncPolicy::Never => Ok(()),
        }
    }

    fn roll(&mut self) -> Result<()> {
        if self.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let next = self.segments.last().map_or(0, |id| id + 1);
        self.active = new_segment(&self.dir, next, self.fsync)?;
        self.active_len = HEADER_LEN;
        self.segments.push(next);
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.unsynced > 0 {
            self.active
                .sync_data()
                .map_err(io(format!("syncing {}", self.dir.display())))?;
        }
        self.unsynced = 0;
        self.oldest_unsynced = None;
        Ok(())
    }

    pub(crate) fn sync_if_due(&mut self) -> Result<()> {
        if let FsyncPolicy::Batch { max_delay, .. } = self.fsync {
            if self
                .oldest_unsynced
                .is_some_and(|t| t.elapsed() >= max_delay)
            {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Deletes closed segments older than `oldest_live` (all closed ones when `None`).
    pub(crate) fn delete_segments_before(&mut self, oldest_live: Option<u64>) -> Result<()> {
        let active = *self.segments.last().expect("an active segment");
        let bound = oldest_live.unwrap_or(active).min(active);
        while self.segments.first().is_some_and(|&id| id < bound) {
            let id = self.segments.remove(0);
            let path = segment_path(&self.dir, id);
            std::fs::remove_file(&path).map_err(io(format!("deleting {}", path.display())))?;
        }
        Ok(())
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Creates segment `id` with its header (synced, with its directory entry, unless the
/// policy is `Never`).
fn new_segment(dir: &Path, id: u64, fsync: FsyncPolicy) -> Result<File> {
    let path = segment_path(dir, id);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(&header())
        .map_err(io(format!("writing {}", path.display())))?;
    if fsync != FsyncPolicy::Never {
        f.sync_data()
            .map_err(io(format!("syncing {}", path.display())))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_with(events: &[Event]) -> Vec<u8> {
        let mut data = header().to_vec();
        for e in events {
            let body = rmp_serde::to_vec_named(e).unwrap();
            let len = (body.len() as u32).to_be_bytes();
            data.extend_from_slice(&len);
            data.extend_from_slice(&checksum(&len, &body).to_be_bytes());
            data.extend_from_slice(&body);
        }
        data
    }

    #[test]
    fn scan_skips_a_corrupt_middle_record_and_cuts_a_torn_tail() {
        let evs: Vec<Event> = (0..4).map(|i| Event::new("user", &i).unwrap()).collect();
        let mut data = data_with(&evs);
        let first_len = data_with(&evs[..1]).len();
        let third_len = data_with(&evs[..3]).len();
        data[first_len + 12] ^= 0xff; // inside the second record's body
        data.truncate(data.len() - 3); // the fourth record is torn
        let (mut got, mut problems) = (Vec::new(), Vec::new());
        let keep = scan(Path::new("s"), &data, 1 << 20, &mut got, &mut problems);
        assert_eq!(got, vec![evs[0].clone(), evs[2].clone()]);
        assert_eq!(keep, Some(third_len as u64));
        assert_eq!(problems.len(), 2);
        assert_eq!(
            (problems[0].kind, problems[0].action),
            (DamageKind::BadChecksum, Recovery::Skipped)
        );
        assert_eq!(problems[0].offset, first_len as u64);
        assert_eq!(
            (problems[1].kind, problems[1].action),
            (DamageKind::TornTail, Recovery::Truncated)
        );
    }

    /// Record boundaries of `data_with(events)`: (start, end) per event.
    fn bounds(events: &[Event]) -> Vec<(usize, usize)> {
        (0..events.len())
            .map(|i| {
                (
                    data_with(&events[..i]).len(),
                    data_with(&events[..=i]).len(),
                )
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A cut anywhere keeps exactly the records that end before it, and reports a
        /// truncation unless the cut falls on a record boundary.
        #[test]
        fn truncation_keeps_exactly_the_complete_records(n in 1usize..6, at in 0.0f64..1.0) {
            let events: Vec<Event> = (0..n).map(|i| Event::new("p", &(i, "x".repeat(i * 7))).unwrap()).collect();
            let data = data_with(&events);
            let cut = HEADER_LEN as usize + ((data.len() - HEADER_LEN as usize) as f64 * at) as usize;
            let (mut got, mut problems) = (Vec::new(), Vec::new());
            let keep = scan(Path::new("s"), &data[..cut], 1 << 20, &mut got, &mut problems);
            let b = bounds(&events);
            let complete = b.iter().filter(|(_, end)| *end <= cut).count();
            proptest::prop_assert_eq!(&got[..], &events[..complete]);
            let on_boundary = cut == HEADER_LEN as usize || b.iter().any(|(_, end)| *end == cut);
            proptest::prop_assert_eq!(problems.is_empty(), on_boundary);
            proptest::prop_assert_eq!(keep.is_none(), on_boundary);
        }

        /// One flipped bit anywhere in the records loses exactly the record it hit; the
        /// others are kept and nothing is invented.
        #[test]
        fn a_flipped_bit_loses_exactly_one_record(n in 1usize..6, at in 0.0f64..1.0, bit in 0u8..8) {
            let events: Vec<Event> = (0..n).map(|i| Event::new("p", &(i, "y".repeat(i * 5))).unwrap()).collect();
            let mut data = data_with(&events);
            let pos = HEADER_LEN as usize + ((data.len() - HEADER_LEN as usize) as f64 * at) as usize;
            let pos = pos.min(data.len() - 1);
            data[pos] ^= 1 << bit;
            let (mut got, mut problems) = (Vec::new(), Vec::new());
            scan(Path::new("s"), &data, 1 << 20, &mut got, &mut problems);
            let hit = bounds(&events).iter().position(|(s, e)| (*s..*e).contains(&pos)).unwrap();
            let mut expect = events.clone();
            expect.remove(hit);
            proptest::prop_assert_eq!(got, expect);
            proptest::prop_assert_eq!(problems.len(), 1);
            let last = hit + 1 == n;
            proptest::prop_assert_eq!(problems[0].action, if last { Recovery::Truncated } else { Recovery::Skipped });
        }
    }

    #[test]
    fn a_damaged_length_is_caught_by_the_checksum() {
        let evs: Vec<Event> = (0..2).map(|i| Event::new("user", &i).unwrap()).collect();
        let mut data = data_with(&evs);
        data[HEADER_LEN as usize + 3] ^= 0x01; // low byte of the first record's length
        let (mut got, mut problems) = (Vec::new(), Vec::new());
        scan(Path::new("s"), &data, 1 << 20, &mut got, &mut problems);
        assert_eq!(
            got,
            vec![evs[1].clone()],
            "resynchronised on the second record"
        );
        assert_eq!(problems[0].action, Recovery::Skipped);
    }
}
