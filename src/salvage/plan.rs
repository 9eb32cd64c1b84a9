//! Salvage's plan: replay every valid record the tolerant scan finds, exactly as recovery would
//! (`crate::log::Replay`, from the state database's checkpoint when it can be read), decide which
//! messages are kept, and name what was lost.
//!
//! Invariant: reads only. A message is kept only if its push record (or relocated payload)
//! passes its checksum; a message is listed lost only if it is not kept and no surviving record
//! settles it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::checkpoint::Loaded;
use crate::config::QueueConfig;
use crate::error::{Corruption, Error, Result};
use crate::limits::valid_name;
use crate::log::Replay;
use crate::log::{MAX_EPOCH, SEQ_BITS};
use crate::queue::MessageId;
use crate::queue::{Entry, Note, RELOCATED};
use crate::record::{self, Body, Record};
use crate::storage::Storage;
use crate::verify::{self, corruption};

use super::report::{Fate, IdSpan, LostMessage, LostRange, SalvageReport};
use super::scan::{self, Gap, Seen, SegFile};
use crate::checkpoint::{StateDb, STATE_FILE};
use crate::log::{read_mark, MARK_FILE};

/// Epochs skipped when the log's end is lost: opens of the store whose `Epoch` records may have
/// been in the lost range, so that no id of theirs is handed out again.
pub(crate) const EPOCH_MARGIN: u32 = 1024;
/// Ids of an exact lost range listed one by one, at most (the range is listed whole anyway).
const MAX_NAMED: u64 = 1 << 20;

/// One message the new log keeps.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub id: u64,
    pub queue: u32,
    /// Where it lives in the old store (`entry.lsn`, or `RELOCATED`), its attempts, priority
    /// and expiry as replayed.
    pub entry: Entry,
    /// Unix ms it waits until (0: ready).
    pub due: u64,
    pub note: Option<Note>,
    /// A relocated message's dedup key and push time (a log message's are in its push record).
    pub key: Option<Box<[u8]>>,
    pub pushed: u64,
    /// A relocated payload's CRC-32C (its row's).
    pub crc: u32,
}

/// What the new log will hold, and the report.
#[derive(Debug)]
pub(crate) struct Plan {
    pub kept: Vec<Kept>,
    pub queues: Vec<(String, Option<QueueConfig>)>,
    pub epoch: u32,
    /// The first log position of the new log: above every position the old files claim.
    pub base: u64,
    pub seg_len: u64,
    pub segs: Vec<SegFile>,
    /// The old store's state database, when relocated payloads are read from it.
    pub state_path: Option<PathBuf>,
    pub report: SalvageReport,
}

/// The last record about a message.
#[derive(Debug, Clone, Copy)]
struct Last {
    lsn: u64,
    queue: u32,
    settled: bool,
}

/// Whether the lost range `g`, whose pushes had the ids `ids`, may have held an ack. Not when its
/// bytes still read as exactly one record of a kind that settles nothing (only its checksum
/// fails): a push of the one id the range is missing, a delivery, a retry, a move, a catalog,
/// epoch, anchor or seal record. A release (`Nack`) has an ack's length and is two bits from one:
/// it is not trusted, nor is anything else (an `Acks` record holds acks).
fn may_hold_ack(g: &Gap, ids: IdSpan) -> bool {
    match g.claimed {
        Some((1 | 8, Some(id))) => {
            !matches!(ids, IdSpan::Exact { first, last } if first == last && first.0 == id)
        }
        Some((3 | 5 | 6 | 7 | 9 | 10 | 11 | 12 | 13, _)) => false,
        _ => true,
    }
}

/// A record of a group held back until the group is whole.
#[derive(Debug)]
struct Pending {
    path: PathBuf,
    base: u64,
    lsn: u64,
    raw: Vec<u8>,
}

/// The second pass over the log: the replay, and what each record says about its message.
#[derive(Default)]
struct Pass {
    replay: Replay,
    last: HashMap<u64, Last>,
    /// (position, id) of every push, in log order.
    pushes: Vec<(u64, u64)>,
    /// (position, epoch) of every epoch record.
    epochs: Vec<(u64, u32)>,
    problems: Vec<Corruption>,
    /// A group's records read so far (`record::Record::more`), applied once it is whole, as
    /// recovery applies them.
    pending: Vec<Pending>,
    epoch: u32,
}

impl Pass {
    fn see(&mut self, seen: &Seen<'_>) {
        if seen.after_gap && !self.pending.is_empty() {
            // The group's end is in the damaged range: it was whole before the damage.
            self.flush();
        }
        if let Body::Epoch { epoch } = seen.rec.body {
            if epoch > self.epoch {
                // A new run: a group the last one left unfinished never returned `Ok`.
                self.epoch = epoch;
                self.pending.clear();
            }
        }
        let closes = seen.rec.body.about_messages();
        if seen.rec.more || (closes && !self.pending.is_empty()) {
            self.pending.push(Pending {
                path: seen.path.to_owned(),
                base: seen.base,
                lsn: seen.lsn,
                raw: seen.raw.to_vec(),
            });
            if !seen.rec.more {
                self.flush();
            }
            return;
        }
        self.apply(seen.path, seen.base, seen.lsn, seen.rec);
    }

    /// Applies the records of the group held back.
    fn flush(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            if let Ok(rec) = record::decode(&p.raw, p.lsn) {
                self.apply(&p.path, p.base, p.lsn, &rec);
            }
        }
    }

    fn apply(&mut self, path: &Path, base: u64, lsn: u64, rec: &Record<'_>) {
        if let Err(e) = self.replay.apply(path, base, lsn, rec) {
            self.problems.push(corruption(path, e));
        }
        let (id, queue, settled) = match rec.body {
            Body::Push { queue, id, .. } | Body::PushEx { queue, id, .. } => {
                self.pushes.push((lsn, id));
                (id, queue, false)
            }
            Body::Ack { queue, id } => (id, queue, true),
            Body::Acks { queue, ids } => {
                for id in ids.iter() {
                    self.last.insert(id, Last { lsn, queue, settled: true });
                }
                return;
            }
            Body::Deliver { queue, id, .. }
            | Body::Nack { queue, id }
            | Body::Retry { queue, id, .. } => (id, queue, false),
            Body::DeadLetter { to, id, .. } | Body::Requeue { to, id, .. } => (id, to, false),
            Body::Epoch { epoch } => {
                self.epochs.push((lsn, epoch));
                return;
            }
            Body::Queue { .. } | Body::Config { .. } | Body::Anchor { .. } | Body::Seal => return,
        };
        self.last.insert(id, Last { lsn, queue, settled });
    }
}

/// Reads the store in `dir` and plans its salvage.
pub(crate) fn plan(storage: &dyn Storage, dir: &Path, segment_bytes: Option<u64>) -> Result<Plan> {
    let state_path = dir.join(STATE_FILE);
    let log_dir = dir.join("log");
    let mut report = SalvageReport::default();
    let top = storage.list(dir)?;

    // The checkpoint, if the state database can be read.
    let mut loaded: Option<Loaded> = None;
    if top.iter().any(|n| n == STATE_FILE) {
        let check = verify::read_state(storage, &state_path);
        report.problems.extend(check.problems);
        loaded = check.loaded;
        if loaded.is_none() {
            let len = storage.open_read(&state_path).and_then(|f| f.len()).ok();
            report.lost_ranges.push(LostRange {
                file: state_path.clone(),
                from: 0,
                to: len,
                ids: IdSpan::Unknown,
                reason: "the state database cannot be read: relocated messages that no later \
                         record names are lost with it"
                    .into(),
            });
        }
    }
    let mut replay = Replay::default();
    // Relocated messages of queues the catalog does not hold: lost, by id.
    let mut orphans = Vec::new();
    if let Some(l) = loaded.as_mut() {
        let queues = l.queues.len();
        orphans
            .extend(l.rows.iter().filter(|(_, r)| r.queue as usize >= queues).map(|(id, _)| *id));
        l.rows.retain(|(_, row)| (row.queue as usize) < queues);
        l.dedup.retain_queues(queues);
        match Replay::from_checkpoint(l, &state_path) {
            Ok(r) => replay = r,
            Err(e) => {
                report.problems.push(corruption(&state_path, e));
                report.lost_ranges.push(LostRange {
                    file: state_path.clone(),
                    from: 0,
                    to: None,
                    ids: IdSpan::Unknown,
                    reason: "the state database's checkpoint cannot be used: relocated messages \
                             that no later record names are lost with it"
                        .into(),
                });
            }
        }
    }
    let checkpoint = loaded.as_ref().map_or(0, |l| l.checkpoint);
    let store_hint = loaded.as_ref().and_then(|l| l.store_id);

    // First pass: the catalog, from every queue record found anywhere.
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    scan::scan_log(storage, &log_dir, store_hint, &mut |seen: Seen<'_>| {
        if let Body::Queue { queue, name } = seen.rec.body {
            if let Some(name) = std::str::from_utf8(name).ok().filter(|n| valid_name(n)) {
                names.entry(queue).or_insert_with(|| name.to_owned());
            }
        }
    })?;
    // Queue numbers are dense: a catalog of n queues numbers them below n.
    let bound = replay.queues().len() + names.len();
    names.retain(|&q, _| (q as usize) < bound);
    if let Some((&max, _)) = names.last_key_value() {
        for q in replay.queues().len() as u64..=u64::from(max) {
            let q = u32::try_from(q).unwrap_or(u32::MAX);
            let taken = |n: &str| replay.queues().iter().any(|(m, _)| m == n);
            let name = match names.get(&q) {
                Some(n) if !taken(n) => n.clone(),
                _ => format!("lost-queue-{q}"),
            };
            replay.seed_queue(name);
        }
    }

    // Second pass: replay, and note each message's last record, the pushes and the epochs.
    let mut pass = Pass { replay, ..Pass::default() };
    let mut scanned = scan::scan_log(storage, &log_dir, store_hint, &mut |seen| pass.see(&seen))?;
    report.problems.append(&mut scanned.problems);

    // Something durable says the log went further than it does now.
    let store_id = scanned.store_id;
    let mut durable_end = checkpoint;
    let mut mark_damaged = false;
    match read_mark(storage, &log_dir, store_id) {
        Ok(Some(m)) if m.end > durable_end => {
            durable_end = m.end;
        }
        Ok(_) => {}
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(Error::Io(e)) => return Err(Error::Io(e)),
        Err(e) => {
            report.problems.push(corruption(&log_dir.join(MARK_FILE), e));
            mark_damaged = true;
        }
    }
    let why = format!(
        "the log ends at position {}, but it was durable up to {durable_end} (the durable mark \
         of the last clean close, or the state database's checkpoint)",
        scanned.log_end.unwrap_or(0)
    );
    scan::lost_end(&mut scanned, &log_dir, durable_end, why);
    // Without the mark, a torn tail cannot be told from durable records damaged at the end of
    // the log: when the bytes after the last record are not all zeros (as a clean close leaves
    // them), what followed is reported as possibly lost.
    let tail_dirty =
        scanned.segs.iter().rev().find(|s| s.has_records).is_some_and(|s| s.dirty_tail > 0);
    if mark_damaged && tail_dirty {
        let why = format!(
            "the durable mark is damaged: whether the log went on past position {} cannot be \
             checked (what a clean close made durable after it may be lost with the mark)",
            scanned.log_end.unwrap_or(0)
        );
        scan::unknown_end(&mut scanned, &log_dir, why);
    }
    // The log's anchors say where it starts and what checkpoint the state database holds.
    if let Some(a) = pass.replay.anchor() {
        let first = scanned.segs.first().map(|s| s.base);
        if let Some(first) = first.filter(|&f| f > a.start) {
            let file = log_dir.join(crate::log::segment_file_name(a.start));
            let why = format!(
                "segment file(s) missing: the log must start at position {}, but its oldest \
                 segment starts at {first}",
                a.start
            );
            report.problems.push(Corruption { file: file.clone(), offset: 0, reason: why.clone() });
            scanned.gaps.push(Gap {
                file,
                from: 0,
                to: Some(first - a.start),
                lsn_from: a.start,
                lsn_to: Some(first),
                why,
                claimed: None,
            });
            scanned.gaps.sort_by_key(|g| g.lsn_from);
        }
        let unread = report.lost_ranges.iter().any(|r| r.file == state_path);
        if checkpoint < a.checkpoint && !unread {
            let why = format!(
                "the state database is missing or older than the log: it covers the log up to \
                 {checkpoint}, the log recorded a checkpoint up to {}; relocated messages that \
                 no later record names are lost with it",
                a.checkpoint
            );
            report.problems.push(Corruption {
                file: state_path.clone(),
                offset: 0,
                reason: why.clone(),
            });
            report.lost_ranges.push(LostRange {
                file: state_path.clone(),
                from: 0,
                to: None,
                ids: IdSpan::Unknown,
                reason: why,
            });
        }
    }
    // A group the log ends inside: whole if a lost range may hold its end, else cut by a crash
    // before it was acknowledged (recovery voids it too).
    let group_start = pass.pending.first().map(|p| p.lsn);
    if group_start.is_some_and(|start| scanned.gaps.iter().any(|g| g.lsn_from > start)) {
        pass.flush();
    }
    let Pass { replay, last, mut pushes, mut epochs, problems, .. } = pass;
    // A group is applied when whole: its pushes may come after a preamble read in between.
    pushes.sort_unstable();
    epochs.sort_unstable();
    report.problems.extend(problems);
    report.problems.append(&mut scanned.problems);

    // The kept messages: unsettled after the replay, with a payload that checks.
    let mut keys: HashMap<u64, Box<[u8]>> = HashMap::new();
    for (_, q) in replay.queues() {
        q.all_dedup(|key, id, _| {
            keys.insert(id, key.into());
        });
    }
    let db = if replay.relocated().is_empty() {
        None
    } else {
        match StateDb::open_read_only(storage, &state_path) {
            Ok(db) => Some(db),
            Err(e) => {
                report.problems.push(corruption(&state_path, e));
                None
            }
        }
    };
    let mut kept = Vec::new();
    let mut lost: BTreeMap<u64, LostMessage> = BTreeMap::new();
    let name_of = |q: u32| replay.queues().get(q as usize).map(|(n, _)| n.clone());
    for (qi, (_, index)) in replay.queues().iter().enumerate() {
        let queue = u32::try_from(qi).unwrap_or(u32::MAX);
        for w in index.waiting(usize::MAX) {
            let mut k = Kept {
                id: w.id,
                queue,
                entry: w.entry,
                due: w.due.unwrap_or(0),
                note: index.note(w.id).cloned(),
                key: None,
                pushed: 0,
                crc: 0,
            };
            if w.entry.lsn == RELOCATED {
                let row = replay.relocated().get(&w.id);
                let ok = match (db.as_ref(), row) {
                    (Some(db), Some(row)) => match db.payload(w.id, row.crc, row.len) {
                        Ok(_) => true,
                        Err(e) => {
                            report.problems.push(corruption(&state_path, e));
                            false
                        }
                    },
                    _ => false,
                };
                if !ok {
                    let queue = name_of(queue);
                    lost.insert(w.id, LostMessage { id: MessageId(w.id), queue, fate: Fate::Lost });
                    continue;
                }
                k.key = keys.get(&w.id).cloned();
                k.pushed = row.map_or(0, |r| r.pushed);
                k.crc = row.map_or(0, |r| r.crc);
            }
            kept.push(k);
        }
    }
    if let Some(db) = db {
        db.close_quietly();
    }
    kept.sort_by_key(|k| k.id);
    let kept_ids: HashSet<u64> = kept.iter().map(|k| k.id).collect();

    for id in orphans {
        lost.insert(id, LostMessage { id: MessageId(id), queue: None, fate: Fate::Lost });
    }
    // Named by a surviving record, not settled, not kept: lost.
    for (&id, l) in &last {
        if !l.settled && !kept_ids.contains(&id) {
            lost.entry(id).or_insert(LostMessage {
                id: MessageId(id),
                queue: name_of(l.queue),
                fate: Fate::Lost,
            });
        }
    }
    // The ids of the pushes each damaged range could have held.
    // The end of the last range that may have held an ack.
    let mut latest_ack_range: Option<u64> = None;
    for g in &scanned.gaps {
        let i = pushes.partition_point(|&(lsn, _)| lsn < g.lsn_from);
        let prev = i.checked_sub(1).and_then(|i| pushes.get(i)).map(|&(_, id)| id);
        let next = match g.lsn_to {
            Some(to) => pushes.get(pushes.partition_point(|&(lsn, _)| lsn < to)).map(|p| p.1),
            None => None,
        };
        // With no epoch record before the range, its pushes may be of any epoch up to the
        // first one seen after it (the checkpoint's epoch is the one when it was taken; older
        // unsettled messages lie below it): from the first id there is.
        let epoch_then =
            epochs.iter().take_while(|&&(lsn, _)| lsn < g.lsn_from).map(|&(_, e)| e).max();
        let first = prev.map_or(u64::from(epoch_then.unwrap_or(0)) << SEQ_BITS | 1, |p| p + 1);
        let ids = match (prev, next) {
            (Some(_), Some(n)) if n >> SEQ_BITS == first >> SEQ_BITS => {
                if n <= first {
                    IdSpan::None
                } else {
                    IdSpan::Exact { first: MessageId(first), last: MessageId(n - 1) }
                }
            }
            (_, Some(n)) if n <= first => IdSpan::None,
            (_, Some(n)) => {
                IdSpan::Within { first: MessageId(first), last: Some(MessageId(n - 1)) }
            }
            (_, None) => IdSpan::Within { first: MessageId(first), last: None },
        };
        if let IdSpan::Exact { first, last: end } = ids {
            if end.0 - first.0 < MAX_NAMED {
                for id in first.0..=end.0 {
                    let settled = last.get(&id).is_some_and(|l| l.settled);
                    if !settled && !kept_ids.contains(&id) {
                        let queue = last.get(&id).and_then(|l| name_of(l.queue));
                        lost.entry(id).or_insert(LostMessage {
                            id: MessageId(id),
                            queue,
                            fate: Fate::Lost,
                        });
                    }
                }
            }
        }
        if may_hold_ack(g, ids) {
            let end = g.lsn_to.unwrap_or(u64::MAX);
            latest_ack_range = Some(latest_ack_range.map_or(end, |e| e.max(end)));
        }
        report.lost_ranges.push(LostRange {
            file: g.file.clone(),
            from: g.from,
            to: g.to,
            ids,
            reason: g.why.clone(),
        });
    }
    // Kept, but a damaged range after its last surviving record may have held its ack.
    for k in &kept {
        let mut seen = last.get(&k.id).map_or(0, |l| l.lsn);
        if k.entry.lsn == RELOCATED {
            seen = seen.max(checkpoint);
        }
        if latest_ack_range.is_some_and(|end| end > seen) {
            lost.insert(
                k.id,
                LostMessage {
                    id: MessageId(k.id),
                    queue: name_of(k.queue),
                    fate: Fate::MayBeRedelivered,
                },
            );
        }
    }

    // The new log's epoch: above every epoch used, and further when the end was lost.
    let last_epoch_lsn = epochs.last().map_or(0, |&(lsn, _)| lsn);
    let end_lost = scanned.gaps.iter().any(|g| g.lsn_to.is_none_or(|to| to > last_epoch_lsn));
    let max_id = pushes.iter().map(|p| p.1).chain(last.keys().copied()).max().unwrap_or(0);
    let used = replay.epoch().max(u32::try_from(max_id >> SEQ_BITS).unwrap_or(MAX_EPOCH));
    let epoch = used
        .checked_add(if end_lost { EPOCH_MARGIN } else { 1 })
        .filter(|&e| e <= MAX_EPOCH)
        .ok_or_else(|| Error::Internal("the store has used up its id epochs".into()))?;

    let mut per_queue = vec![0u64; replay.queues().len()];
    for k in &kept {
        if let Some(n) = per_queue.get_mut(k.queue as usize) {
            *n += 1;
        }
    }
    report.kept = kept.len() as u64;
    report.kept_per_queue = replay
        .queues()
        .iter()
        .map(|(n, _)| n.clone())
        .zip(per_queue)
        .filter(|(_, n)| *n > 0)
        .collect();
    report.lost = lost.into_values().collect();
    let queues = replay
        .queues()
        .iter()
        .map(|(n, _)| n.clone())
        .zip(replay.configs().iter().cloned())
        .collect();
    let gap_end = scanned.gaps.iter().filter_map(|g| g.lsn_to).max().unwrap_or(0);
    let base = scanned.max_end.max(durable_end).max(gap_end);
    if base > scan::MAX_POSITION {
        return Err(Error::InvalidOption("the log's positions are exhausted".into()));
    }
    let seg_len =
        segment_bytes.or(scanned.seg_len).unwrap_or(crate::options::DEFAULT_SEGMENT_BYTES);
    Ok(Plan {
        kept,
        queues,
        epoch,
        base,
        seg_len,
        segs: scanned.segs,
        state_path: (!replay.relocated().is_empty()).then_some(state_path),
        report,
    })
}
