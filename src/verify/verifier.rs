//! The check itself: `Wharf::verify`, which lists the segments, replays the log from the
//! state database's checkpoint and collects every problem in a [`VerifyReport`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::checkpoint::{Loaded, Snapshot, STATE_FILE, STATE_TMP_FILE};
use crate::clock::unix_ms;
use crate::error::{Corruption, Error, Result};
use crate::log::{
    mark_wrong_len, parse_mark, parse_segment_name, read_segment_header, segment_file_name,
    segment_gap, Mark, MARK_FILE, MARK_LEN, MARK_TMP_FILE,
};
use crate::log::{End, Ending, Replay};
use crate::log::{SegmentName, HEADER_LEN};
use crate::queue::RELOCATED;
use crate::record::{self, Body, Record};
use crate::storage::{Storage, StorageFile};

use super::report::{QueueSummary, VerifyReport};
use super::state_check::{corruption, read_state, STATE_ATTEMPTS};
use super::window::{after_seal, written_since, Window, CHUNK};
use crate::log::{below_mark, damaged, explain_at, judge_end, record_at, scan, Group};

/// Problems listed in a report; later ones are only counted.
const MAX_PROBLEMS: usize = 1000;

/// Verifies the store in `dir` on `storage` (the state database is read through it too).
pub(crate) fn verify_on(storage: &dyn Storage, dir: &Path) -> Result<VerifyReport> {
    verify_with(storage, dir, None)
}

/// [`verify_on`], reporting the bytes of the log read to `progress`.
pub(crate) fn verify_with(
    storage: &dyn Storage,
    dir: &Path,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<VerifyReport> {
    let top = storage.list(dir)?;
    let mut v = Verifier { state_path: dir.join(STATE_FILE), ..Verifier::default() };
    v.progress.report = progress;
    if top.iter().any(|n| n == STATE_TMP_FILE) {
        v.report.temporary_files.push(STATE_TMP_FILE.to_owned());
    }
    if top.iter().any(|n| n == STATE_FILE) {
        let check = read_state(storage, &v.state_path);
        v.report.state = check.state;
        for p in check.problems {
            v.push(p);
        }
        if let Some(loaded) = check.loaded {
            v.start_from(loaded);
        }
    }
    let log_dir = dir.join("log");
    match storage.list(&log_dir) {
        Ok(names) => v.log(storage, &log_dir, names),
        Err(e) => v.problem(&log_dir, 0, format!("no readable log directory: {e}")),
    }
    Ok(v.report)
}

/// One segment whose header passed its checks.
struct Seg {
    path: PathBuf,
    base: u64,
    len: u64,
    /// The header's unsynced bound (`Segment::unsynced_bound`).
    unsynced: Option<u64>,
    file: Arc<dyn StorageFile>,
    /// The file's length when it was opened.
    file_len: u64,
}

impl Seg {
    /// Whether a store open elsewhere deleted this segment since it was opened and made its
    /// file into a new segment (`Segment::recycle`): the file was cut or extended, or its
    /// header names another segment. Either comes before any other change to its bytes, so a
    /// file for which this is false after a read held this segment's bytes in that read.
    fn recycled(&self) -> bool {
        let len = self.file.len().ok();
        len != Some(self.file_len)
            || read_segment_header(&*self.file, &self.path, self.base, None)
                .map_or(true, |h| h.len != self.len)
    }
}

/// Where the scan of the log is, for a progress callback.
#[derive(Default)]
struct Progress<'a> {
    report: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Bytes of the segments found.
    total: u64,
    /// Bytes of the segments scanned (or skipped) before the current one.
    before: u64,
    /// `done` when the callback was last called.
    told: u64,
}

impl Progress<'_> {
    /// Tells the callback `done` bytes are read, if a MiB passed since it was last told (or
    /// `force`).
    fn tell(&mut self, done: u64, force: bool) {
        if let Some(f) = self.report.as_deref_mut() {
            if force || done >= self.told + CHUNK as u64 {
                self.told = done;
                f(done.min(self.total), self.total);
            }
        }
    }
}

#[derive(Default)]
struct Verifier<'a> {
    progress: Progress<'a>,
    report: VerifyReport,
    /// `state.redb` in the store directory.
    state_path: PathBuf,
    /// The store id the state database names, if it was read.
    state_store_id: Option<u128>,
    /// The log position its checkpoint covers (0: none).
    checkpoint: u64,
    replay: Replay,
    /// The id of the latest push: ids only grow in log order.
    last_push: Option<u64>,
    /// Where the seal of the segment being scanned is.
    seal_at: Option<u64>,
    /// The group of records the log is inside of, carried from one segment to the next.
    group: Group,
    /// The segment files by base.
    paths: HashMap<u64, PathBuf>,
    /// The checkpoint's snapshot of the index, until it is checked against the replay at the
    /// checkpoint, and its relocated messages per queue.
    snapshot: Option<(Snapshot, HashMap<u32, u64>)>,
}

impl Verifier<'_> {
    fn problem(&mut self, file: &Path, offset: u64, reason: impl Into<String>) {
        self.push(Corruption { file: file.to_owned(), offset, reason: reason.into() });
    }

    fn push(&mut self, c: Corruption) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(c);
        } else {
            self.report.more_problems += 1;
        }
    }

    /// Records an error of a check as a problem of `file`.
    fn error(&mut self, file: &Path, e: Error) {
        self.push(corruption(file, e));
    }

    /// Starts the replay from the checkpoint the state database holds, as recovery does.
    fn start_from(&mut self, mut loaded: Loaded) {
        let r = &mut self.report;
        r.checkpoint = Some(loaded.checkpoint);
        r.relocated = loaded.rows.len() as u64;
        r.relocated_bytes = loaded.rows.iter().map(|(_, row)| u64::from(row.len)).sum();
        r.dedup_keys = loaded.dedup.len() as u64;
        self.checkpoint = loaded.checkpoint;
        self.state_store_id = loaded.store_id;
        // Rows and keys of queues missing from the catalog were reported already: the replay
        // starts without them rather than without the whole checkpoint.
        let queues = loaded.queues.len();
        if let Some(snap) = loaded.snapshot.take() {
            let mut rows: HashMap<u32, u64> = HashMap::new();
            for (_, row) in &loaded.rows {
                *rows.entry(row.queue).or_default() += 1;
            }
            self.snapshot = Some((snap, rows));
        }
        loaded.rows.retain(|(_, row)| (row.queue as usize) < queues);
        loaded.dedup.retain_queues(queues);
        match Replay::from_checkpoint(&loaded, &self.state_path) {
            Ok(replay) => self.replay = replay,
            Err(e) => {
                let path = self.state_path.clone();
                self.error(&path, e);
            }
        }
    }

    /// Checks the log directory holding `names`.
    fn log(&mut self, storage: &dyn Storage, log_dir: &Path, names: Vec<String>) {
        let mut bases = Vec::new();
        let mut has_mark = false;
        for name in names {
            if name == MARK_FILE {
                has_mark = true;
                continue;
            }
            if name == MARK_TMP_FILE {
                self.report.temporary_files.push(name);
                continue;
            }
            match parse_segment_name(&name) {
                SegmentName::Segment(base) => bases.push(base),
                SegmentName::Temporary => self.report.temporary_files.push(name),
                SegmentName::Foreign => self.report.ignored_files.push(name),
            }
        }
        bases.sort_unstable();
        self.report.temporary_files.sort_unstable();
        self.report.ignored_files.sort_unstable();

        let (segs, store_id) = self.open_segments(storage, log_dir, &bases);
        self.progress.total = segs.iter().map(|s| s.len).sum();
        self.progress.tell(0, true);
        if let (Some(log_id), Some(db_id)) = (store_id, self.state_store_id) {
            if log_id != db_id {
                let path = self.state_path.clone();
                self.problem(&path, 0, "the state database belongs to another store");
            }
        }
        let store_id = store_id.or(self.state_store_id);
        let mark_end = if has_mark { self.mark(storage, log_dir, store_id) } else { 0 };
        // Which segments start with a record, read before any is scanned: a store open
        // elsewhere writes a segment only after it sealed the one before, so a later segment
        // seen with records here means the earlier one was sealed when it is read.
        let starts: Vec<bool> = segs.iter().map(|s| self.starts_with_record(s)).collect();

        let mut log_end = None;
        for (i, seg) in segs.iter().enumerate() {
            let past_end = log_end.is_some();
            if !past_end || starts.get(i).copied().unwrap_or(false) {
                let later = starts.get(i + 1..).is_some_and(|s| s.contains(&true));
                if let Some(at) = self.segment(seg, mark_end, later) {
                    log_end.get_or_insert(at);
                }
            } // else a spare past the end of the log
            self.progress.before += seg.len;
            let done = self.progress.before;
            self.progress.tell(done, true);
        }
        if let (None, Some(last)) = (log_end, segs.last()) {
            let end = last.base + last.len;
            // A store open elsewhere may have rolled into segments made after the listing (and
            // even deleted some of them since): the log then goes on past `end` now.
            let next = log_dir.join(segment_file_name(end));
            let later = storage
                .list(log_dir)
                .unwrap_or_default()
                .iter()
                .any(|n| matches!(parse_segment_name(n), SegmentName::Segment(b) if b >= end));
            if !later {
                let why = format!(
                "segment file missing: the log continues at position {end} after the seal of the \
                 last segment"
            );
                self.problem(&next, 0, why);
            }
        }
        if let Some(anchor) = self.replay.anchor() {
            let first = segs.first().map(|s| s.base);
            let state = self.state_path.clone();
            if let Some(c) = anchor.check(log_dir, first, &state, self.checkpoint) {
                // A store open elsewhere may have taken a checkpoint since the state database
                // was read, and stated it in the log read after: then it is there now, or the
                // store is writing the file still (each read raced a commit), and nothing says
                // it is stale. A copy put back, or a file gone, reads the same every time.
                let caught_up = || {
                    (0..STATE_ATTEMPTS).any(|_| {
                        let now = read_state(storage, &state);
                        now.changing
                            || now.loaded.is_some_and(|l| l.checkpoint >= anchor.checkpoint)
                    })
                };
                if c.file != state || !caught_up() {
                    self.push(c);
                }
            }
        }
        // A log that ends at the end of its last segment file (sealed, or no segment at all)
        // lost the files after it, if anything says it went on.
        let ran_out = log_end.is_none();
        let log_end = log_end.or_else(|| segs.last().map(|s| s.base + s.len)).unwrap_or(0);
        let missing = |log_end: u64| {
            if segs.is_empty() {
                "no segment file is left".to_owned()
            } else {
                format!(
                    "segment file {} is missing after the last one, which ends at log position \
                     {log_end}",
                    segment_file_name(log_end)
                )
            }
        };
        // (A log that ends inside a segment below the mark was reported with that segment.)
        if ran_out && log_end < mark_end {
            let file = segs.last().map_or_else(|| log_dir.join(MARK_FILE), |s| s.path.clone());
            let why = format!("{}: {}", missing(log_end), below_mark(log_end, mark_end));
            self.problem(&file, 0, why);
        }
        if log_end < self.checkpoint {
            // Named as recovery names it: the last segment, or the state database.
            let file = segs.last().map_or_else(|| self.state_path.clone(), |s| s.path.clone());
            let covers = format!(
                "the log ends at position {log_end}, but the state database's checkpoint covers \
                 it up to {}",
                self.checkpoint
            );
            let why = if ran_out {
                format!("{}: {covers}", missing(log_end))
            } else {
                format!(
                    "{covers}: records below the checkpoint are gone from the log, or the state \
                     database comes from a later copy of the store"
                )
            };
            self.problem(&file, 0, why);
        }
        self.check_snapshot();
        self.relocated_in_log();
        self.summarise();
    }

    /// Compares the checkpoint's snapshot with the replay, which has applied every record
    /// below the checkpoint and none after: each queue holds as many unsettled messages by
    /// both. Skipped where the snapshot is not one an open uses (a segment it needs is gone).
    fn check_snapshot(&mut self) {
        let Some((snap, rows)) = self.snapshot.take() else { return };
        let present = |base: u64| self.paths.contains_key(&base);
        if !snap.segments.iter().all(|&(base, live, _)| live == 0 || present(base)) {
            return;
        }
        let state = self.state_path.clone();
        if snap.queues.len() != self.replay.queues().len() {
            let why = format!(
                "the snapshot of the checkpoint holds {} queues, the catalog {}",
                snap.queues.len(),
                self.replay.queues().len()
            );
            return self.problem(&state, 0, why);
        }
        let mut wrong = Vec::new();
        for (n, ((name, index), q)) in self.replay.queues().iter().zip(&snap.queues).enumerate() {
            let relocated = u32::try_from(n).ok().and_then(|n| rows.get(&n)).copied().unwrap_or(0);
            let by_snap = q.run_count + q.messages.len() as u64 + relocated;
            let by_log = index.waiting_len() as u64;
            if by_snap != by_log {
                wrong.push(format!(
                    "the snapshot of the checkpoint at {} holds {by_snap} unsettled messages of \
                     queue {name:?}, the log {by_log}",
                    snap.position
                ));
            }
        }
        for why in wrong {
            self.problem(&state, 0, why);
        }
    }

    /// A relocated message is unsettled through its row, never through a push in the log too:
    /// the replay skips its records below the checkpoint, and no push after it has its id.
    fn relocated_in_log(&mut self) {
        let mut found: Vec<(u64, String)> = Vec::new();
        for &id in self.replay.relocated().keys() {
            for (name, index) in self.replay.queues() {
                if index.get(id).is_some_and(|(e, _)| e.lsn != RELOCATED) {
                    found.push((id, name.clone()));
                }
            }
        }
        found.sort_unstable();
        let path = self.state_path.clone();
        for (id, queue) in found {
            let why = format!(
                "relocated message {id:016x} is also unsettled in the log (queue {queue:?})"
            );
            self.problem(&path, 0, why);
        }
    }

    /// Opens the segments at `bases` and checks their headers and their chain; returns those
    /// that passed, and the store id (of the first).
    fn open_segments(
        &mut self,
        storage: &dyn Storage,
        log_dir: &Path,
        bases: &[u64],
    ) -> (Vec<Seg>, Option<u128>) {
        let mut segs: Vec<Seg> = Vec::new();
        let mut store_id = None;
        let mut prev_end = None;
        for &base in bases {
            let path = log_dir.join(segment_file_name(base));
            let file = match storage.open_read(&path) {
                Ok(f) => f,
                // Deleted since the listing, by a store open elsewhere: it was settled, and so
                // were the ones before it (segments go oldest first), which it may have deleted
                // after this opened them: the log now starts after it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.report.segments = self.report.segments.saturating_sub(segs.len());
                    self.paths.clear();
                    segs.clear();
                    prev_end = None;
                    continue;
                }
                Err(e) => {
                    self.error(&path, e.into());
                    prev_end = None;
                    continue;
                }
            };
            self.report.segments += 1;
            // Before the header: a recycling store cuts or extends the file before it writes it.
            let file_len = file.len().unwrap_or(0);
            let header = match read_segment_header(&*file, &path, base, store_id) {
                Ok(h) => h,
                Err(e) => {
                    self.error(&path, e);
                    prev_end = None;
                    continue;
                }
            };
            store_id.get_or_insert(header.store_id);
            if let Some(end) = prev_end.filter(|&end| end != base) {
                self.problem(&path, 0, segment_gap(end, base));
            }
            prev_end = Some(base + header.len);
            self.paths.insert(base, path.clone());
            let unsynced = header.unsynced.map(u64::from);
            segs.push(Seg { path, base, len: header.len, unsynced, file, file_len });
        }
        (segs, store_id)
    }

    /// Checks the durable mark; returns its end (0 when it is damaged).
    fn mark(&mut self, storage: &dyn Storage, log_dir: &Path, store_id: Option<u128>) -> u64 {
        let path = log_dir.join(MARK_FILE);
        let read = || -> Result<Mark> {
            let file = storage.open_read(&path)?;
            let len = file.len()?;
            if len != MARK_LEN {
                return Err(mark_wrong_len(&path, len));
            }
            let mut bytes = [0u8; MARK_LEN as usize];
            file.read_at(&mut bytes, 0)?;
            parse_mark(&bytes, &path, store_id)
        };
        match read() {
            Ok(m) => {
                self.report.mark_end = Some(m.end);
                m.end
            }
            Err(e) => {
                self.error(&path, e);
                0
            }
        }
    }

    fn starts_with_record(&mut self, seg: &Seg) -> bool {
        let mut img = Window::new(&*seg.file, seg.len);
        let first = HEADER_LEN as usize;
        match record_at(&mut img, first) {
            Ok(rec) => record::decode(rec, seg.base + HEADER_LEN).is_ok(),
            Err(e) => {
                self.error(&seg.path, e);
                false
            }
        }
    }

    /// Scans one segment; returns where its records end when it is not sealed. `later`: a later
    /// segment starts with a record.
    fn segment(&mut self, seg: &Seg, mark_end: u64, later: bool) -> Option<u64> {
        let mut img = Window::new(&*seg.file, seg.len);
        self.seal_at = None;
        let mut group = std::mem::take(&mut self.group);
        let end = scan(
            &mut img,
            seg.base,
            crate::log::HEADER_LEN,
            u64::MAX,
            &mut group,
            |base, lsn, rec| {
                self.record(seg, base, lsn, rec);
                Ok(())
            },
        );
        self.group = group;
        let at = match end {
            Ok(End::Open { at, .. }) => at,
            Ok(End::Sealed) => {
                let after = self.seal_at.map_or(0, |s| s + record::SEAL_LEN as u64 - seg.base);
                let after = usize::try_from(after).unwrap_or(usize::MAX);
                match after_seal(&mut img, seg.base, after) {
                    Ok(Some(_)) if seg.recycled() => {}
                    Ok(Some((off, what))) => self.problem(&seg.path, off as u64, what),
                    Ok(None) => {}
                    Err(e) => self.error(&seg.path, e),
                }
                return None;
            }
            Err(_) if seg.recycled() => return None,
            Err(e) => {
                self.error(&seg.path, e);
                return None;
            }
        };
        let off = at - seg.base;
        if seg.recycled() {
            // Deleted by a store open elsewhere while it was read, its file made into a new
            // segment: the log now starts after it, and it ends here for this scan.
            return None;
        }
        match judge_end(&mut img, seg.base, at, mark_end, seg.unsynced, || Ok(later)) {
            Ok(Ending::BelowMark) => {
                let why = explain_at(&mut img, seg.base, at);
                self.problem(&seg.path, off, format!("{why}; {}", below_mark(at, mark_end)));
            }
            Ok(Ending::Damaged) => {
                if !written_since(&mut img, seg.base, at) {
                    self.problem(&seg.path, off, damaged(&mut img, seg.base, at));
                }
            }
            Ok(Ending::Torn { dirty: Some(len) }) => {
                self.report.torn_tail_bytes = len;
                self.report.torn_tail_at = Some((seg.path.clone(), off));
            }
            Ok(Ending::Torn { dirty: None }) => {}
            Err(e) => self.error(&seg.path, e),
        }
        Some(at)
    }

    /// One valid record, at `lsn` of the segment based at `base`: `seg`, being scanned, or an
    /// earlier one that holds the first records of a group.
    fn record(&mut self, seg: &Seg, base: u64, lsn: u64, rec: &Record<'_>) {
        let done = self.progress.before + lsn.saturating_sub(seg.base);
        self.progress.tell(done, false);
        self.report.records.add(&rec.body);
        let path = match self.paths.get(&base) {
            Some(p) if base != seg.base => p.clone(),
            _ => seg.path.clone(),
        };
        let offset = lsn.saturating_sub(base);
        match rec.body {
            Body::Push { id, .. } | Body::PushEx { id, .. } => {
                if let Some(prev) = self.last_push.filter(|&prev| id <= prev) {
                    let what = format!(
                        "message id {id:016x} is not above the id {prev:016x} of an earlier push: \
                         ids only grow along the log, so this push was copied here from elsewhere"
                    );
                    self.problem(&path, offset, what);
                }
                self.last_push = Some(self.last_push.map_or(id, |prev| prev.max(id)));
            }
            Body::Seal => self.seal_at = Some(lsn),
            _ => {}
        }
        if lsn >= self.checkpoint {
            self.check_snapshot();
        }
        if let Err(e) = self.replay.apply(&path, base, lsn, rec) {
            self.error(&path, e);
        }
    }

    /// Fills in the queues from the rebuilt index.
    fn summarise(&mut self) {
        let now = unix_ms(SystemTime::now());
        let mut in_flight: HashMap<u32, u64> = HashMap::new();
        let last = self.replay.epoch();
        for (&(q, _), _) in self.replay.leased().iter().filter(|(_, &e)| e == last) {
            *in_flight.entry(q).or_default() += 1;
        }
        let queues = self.replay.take_queues();
        for (i, (name, mut index)) in queues.into_iter().enumerate() {
            index.promote(now);
            let q = u32::try_from(i).unwrap_or(u32::MAX);
            self.report.queues.push(QueueSummary {
                name,
                ready: index.ready_len() as u64,
                delayed: index.delayed_len() as u64,
                in_flight: in_flight.get(&q).copied().unwrap_or(0),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{QueueRow, Row};

    /// Replays a push of message 7 at `lsn` after a checkpoint at 1000 that relocated it.
    fn replay_after_relocation(lsn: u64) -> Verifier<'static> {
        let row = Row { queue: 0, len: 3, ..Row::default() };
        let loaded = Loaded {
            checkpoint: 1000,
            queues: vec![QueueRow { name: "q".into(), config: None }],
            rows: vec![(7, row)],
            ..Loaded::default()
        };
        let mut v = Verifier { state_path: PathBuf::from("state.redb"), ..Verifier::default() };
        v.start_from(loaded);
        let mut buf = Vec::new();
        record::encode(&mut buf, lsn, lsn, &Body::Push { queue: 0, id: 7, payload: b"abc" });
        let rec = record::decode(&buf, lsn).unwrap();
        v.replay.apply(Path::new("log/x.seg"), 0, lsn, &rec).unwrap();
        v.relocated_in_log();
        v
    }

    #[test]
    fn a_relocated_message_unsettled_in_the_log_too_is_a_problem() {
        // Below the checkpoint, its records are in its row: the replay skips them.
        let v = replay_after_relocation(500);
        assert!(v.report.problems.is_empty(), "{:?}", v.report.problems);
        assert_eq!(v.report.relocated, 1);
        // Past it, a push of the same id is a second copy of the message.
        let v = replay_after_relocation(2000);
        let [p] = &v.report.problems[..] else { panic!("{:?}", v.report.problems) };
        assert_eq!((p.file.as_path(), p.offset), (Path::new("state.redb"), 0));
        assert!(p.reason.contains("0000000000000007 is also unsettled in the log"), "{p}");
    }
}
