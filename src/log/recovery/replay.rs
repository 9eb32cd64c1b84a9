//! [`Replay`]: the index rebuilt from a checkpoint and the log, record by record.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{Loaded, Row};
use crate::config::QueueConfig;
use crate::error::{Corruption, Error, Result};
use crate::limits::valid_name;
use crate::log::run::{fill, plain_push, Context};
use crate::log::source::{Records, Voids};
use crate::log::{first_record, Segment};
use crate::queue::{Entry, Note, QueueIndex, RunWant, RELOCATED};
use crate::record::{self, Body};

use super::anchor::Anchor;

pub(super) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupted(Corruption { file: file.to_owned(), offset, reason: reason.into() })
}

/// A queue's name and its rebuilt index.
pub(crate) type NamedIndex = (String, QueueIndex);

/// Replay state: the index rebuilt from the log, record by record.
#[derive(Default)]
pub(crate) struct Replay {
    /// The position the checkpoint covers: records below it about a relocated message are
    /// already in its row.
    floor: u64,
    /// Relocated messages (rows of the state database) by id.
    relocated: HashMap<u64, Row>,
    queues: Vec<(String, QueueIndex)>,
    configs: Vec<Option<QueueConfig>>,
    /// Messages delivered and not settled since, with the epoch (run) that delivered them:
    /// those of the last run were in flight when the log ends.
    leased: HashMap<(u32, u64), u32>,
    /// The highest epoch seen in the log so far: the run whose records are being replayed (a
    /// preamble restates it at the start of every segment).
    max_epoch: u32,
    /// The checkpoint's epoch: epochs up to it were used, whatever the log still holds.
    checkpoint_epoch: u32,
    /// Unsettled messages per segment base.
    live: BTreeMap<u64, u64>,
    /// Messages pushed per segment base.
    pushed: BTreeMap<u64, u64>,
    records: u64,
    /// The first record at or past the checkpoint that the state database must see before
    /// its segment may go (as `Log::note_record` finds them): a push with a dedup key, or a
    /// record about a relocated message. `u64::MAX` if none.
    first_sensitive: u64,
    /// The latest anchor of the log (`Body::Anchor`): where it must start, and the checkpoint
    /// the state database must hold at least; `None` in a log written before anchors.
    anchor: Option<Anchor>,
    /// Ready messages each queue's index holds before its plain pushes join its run (0: all,
    /// as `verify` and salvage replay).
    window: usize,
    /// The segments being replayed, where a run's members are read back from.
    segs: Vec<Arc<Segment>>,
    /// Where the groups of earlier runs that a crash left unfinished are.
    voids: Voids,
    /// Where replay starts: the checkpoint, when its snapshot holds the state there; else 0
    /// (the whole log).
    start: u64,
}

/// The queue a record about a pushed message takes it from or acts on in (not a push).
fn settled_from(body: &Body<'_>) -> Option<u32> {
    match *body {
        Body::Deliver { queue, .. }
        | Body::Ack { queue, .. }
        | Body::Nack { queue, .. }
        | Body::Retry { queue, .. }
        | Body::DeadLetter { queue, .. }
        | Body::Requeue { queue, .. }
        | Body::Acks { queue, .. } => Some(queue),
        _ => None,
    }
}

/// The segments of a recovery, read by log position for a run's members.
struct Segs<'a>(&'a [Arc<Segment>]);

impl Segs<'_> {
    fn holding(&self, lsn: u64) -> Option<&Arc<Segment>> {
        let i = self.0.partition_point(|s| s.base() <= lsn).checked_sub(1)?;
        self.0.get(i).filter(|s| lsn < s.end())
    }
}

impl Records for Segs<'_> {
    fn record(&self, lsn: u64) -> Result<Option<Cow<'_, [u8]>>> {
        match self.holding(lsn) {
            Some(seg) => Ok(Some(seg.record(lsn)?)),
            None => Ok(None),
        }
    }

    fn next_segment(&self, lsn: u64) -> Option<u64> {
        let i = self.0.partition_point(|s| s.base() <= lsn);
        self.0.get(i).map(|s| first_record(s))
    }

    fn file_of(&self, lsn: u64) -> (std::path::PathBuf, u64) {
        self.holding(lsn).map_or_else(
            || (std::path::PathBuf::new(), lsn),
            |s| (s.path().to_path_buf(), lsn - s.base()),
        )
    }
}

impl Replay {
    /// Applies the record at `lsn` of the segment `file` based at `base`. A record the index
    /// cannot take (an unknown queue, a bad name or config) is corruption and changes nothing.
    pub(crate) fn apply(
        &mut self,
        file: &Path,
        base: u64,
        lsn: u64,
        rec: &record::Record<'_>,
    ) -> Result<()> {
        self.records += 1;
        // A map lookup per record only while it can matter: below the checkpoint, and past it
        // until the first sensitive record (records come in log order).
        let relocated = |body: &Body<'_>, map: &HashMap<u64, Row>| {
            !map.is_empty() && body.message_ids().any(|id| map.contains_key(&id))
        };
        // Even a record skipped below is one its epoch applied (a run's read skips only the
        // records of groups a crash left unfinished).
        if rec.body.about_messages() && !rec.more {
            self.voids.closed(self.max_epoch, lsn);
        }
        if lsn < self.floor {
            // An `Acks` record skips only the ids of relocated messages (below).
            if !matches!(rec.body, Body::Acks { .. }) && relocated(&rec.body, &self.relocated) {
                return Ok(());
            }
        } else if self.first_sensitive == u64::MAX {
            let keyed = matches!(rec.body, Body::PushEx { key, .. } if !key.is_empty());
            if keyed || relocated(&rec.body, &self.relocated) {
                self.first_sensitive = lsn;
            }
        }
        let bad = |why: &str| corrupt(file, lsn - base, why);
        let known = |q: u32, queues: &Vec<(String, QueueIndex)>| (q as usize) < queues.len();
        if let Some(queue) = settled_from(&rec.body) {
            for id in rec.body.message_ids() {
                self.reach(queue, id)?;
            }
        }
        match rec.body {
            Body::Epoch { epoch } => {
                // A new epoch is a new run of the store: the leases of earlier runs ended with
                // them (see `in_flight`); a preamble restates the current epoch.
                self.max_epoch = self.max_epoch.max(epoch);
            }
            Body::Queue { queue, name } => {
                let name = std::str::from_utf8(name)
                    .ok()
                    .filter(|n| valid_name(n))
                    .ok_or_else(|| bad("invalid queue name in catalog record"))?;
                match self.queues.get(queue as usize) {
                    Some((existing, _)) if existing == name => {}
                    None if queue as usize == self.queues.len() => {
                        let mut index = QueueIndex::default();
                        index.set_window(self.window);
                        self.queues.push((name.to_owned(), index));
                        self.configs.push(None);
                    }
                    _ => return Err(bad("queue catalog record out of order")),
                }
            }
            Body::Push { queue, id, payload } => {
                let len = u32::try_from(payload.len()).map_err(|_| bad("payload too long"))?;
                let off = record::PUSH_OVERHEAD as u32;
                let entry = Entry { lsn, len, off, attempts: 0, priority: 0, expires: 0 };
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("push to an unknown queue"))?;
                q.push(id, entry, 0, true);
                *self.live.entry(base).or_default() += 1;
                *self.pushed.entry(base).or_default() += 1;
            }
            Body::PushEx { queue, id, priority, not_before, expires, pushed, key, payload } => {
                let len = u32::try_from(payload.len()).map_err(|_| bad("payload too long"))?;
                let off = u32::try_from(rec.body.payload_offset()).unwrap_or(u32::MAX);
                let entry = Entry { lsn, len, off, attempts: 0, priority, expires };
                let window = self.window(queue);
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("push to an unknown queue"))?;
                q.push(id, entry, not_before, plain_push(lsn, &rec.body).is_some());
                if !key.is_empty() {
                    q.dedup_insert(key, id, pushed.saturating_add(window), 0);
                }
                *self.live.entry(base).or_default() += 1;
                *self.pushed.entry(base).or_default() += 1;
            }
            Body::Deliver { queue, id, attempt } => {
                if !known(queue, &self.queues) {
                    return Err(bad("delivery in an unknown queue"));
                }
                if let Some((_, q)) = self.queues.get_mut(queue as usize) {
                    if q.replay_delivered(id, attempt) {
                        self.leased.insert((queue, id), self.max_epoch);
                    }
                }
            }
            Body::Ack { queue, id } => {
                if !known(queue, &self.queues) {
                    return Err(bad("ack in an unknown queue"));
                }
                self.ack(queue, id);
            }
            Body::Acks { queue, ids } => {
                if !known(queue, &self.queues) {
                    return Err(bad("batch ack in an unknown queue"));
                }
                // Each id as an `Ack` of it; below the checkpoint, a relocated message's row
                // already says where it was.
                let below = lsn < self.floor;
                for id in ids.iter() {
                    if !(below && self.relocated.contains_key(&id)) {
                        self.ack(queue, id);
                    }
                }
            }
            Body::Nack { queue, id } => {
                if !known(queue, &self.queues) {
                    return Err(bad("nack in an unknown queue"));
                }
                self.leased.remove(&(queue, id));
            }
            Body::Retry { queue, id, due, error } => {
                let (_, q) = self
                    .queues
                    .get_mut(queue as usize)
                    .ok_or_else(|| bad("retry in an unknown queue"))?;
                if q.replay_retry(id, due) {
                    q.set_error(id, &String::from_utf8_lossy(error));
                }
                self.leased.remove(&(queue, id));
            }
            Body::DeadLetter { queue, id, to, reason, error } => {
                if !known(queue, &self.queues) || !known(to, &self.queues) || queue == to {
                    return Err(bad("dead letter between unknown queues"));
                }
                if let (Some(e), Some((_, dst))) = self.take_for_move(queue, id, to) {
                    dst.insert(id, Entry { expires: 0, priority: 0, ..e }, 0);
                    let error = String::from_utf8_lossy(error).into();
                    dst.set_note(id, Note { origin: Some(queue), reason, error });
                }
            }
            Body::Requeue { queue, id, to } => {
                if !known(queue, &self.queues) || !known(to, &self.queues) || queue == to {
                    return Err(bad("requeue between unknown queues"));
                }
                if let (Some(e), Some((_, dst))) = self.take_for_move(queue, id, to) {
                    dst.insert(id, Entry { attempts: 0, ..e }, 0);
                }
            }
            Body::Config { queue, config } => {
                if !known(queue, &self.queues) {
                    return Err(bad("config of an unknown queue"));
                }
                let config =
                    QueueConfig::decode(config).ok_or_else(|| bad("invalid queue config"))?;
                if let Some(c) = self.configs.get_mut(queue as usize) {
                    *c = Some(config);
                }
            }
            Body::Anchor { start, checkpoint } => {
                let a = self.anchor.get_or_insert_default();
                a.start = a.start.max(start);
                a.checkpoint = a.checkpoint.max(checkpoint);
            }
            Body::Seal => {}
        }
        Ok(())
    }

    /// Applies the ack of message `id` of queue `q` (a known queue): it leaves the index and
    /// its segment's live count.
    fn ack(&mut self, queue: u32, id: u64) {
        if let Some((_, q)) = self.queues.get_mut(queue as usize) {
            if let Some(e) = q.remove(id) {
                q.forget(id);
                // A relocated message holds no segment.
                let live = self.live.range_mut(..=e.lsn).next_back().filter(|_| e.lsn != RELOCATED);
                if let Some((_, n)) = live {
                    *n = n.saturating_sub(1);
                }
            }
        }
        self.leased.remove(&(queue, id));
    }

    /// Starts from a checkpoint of the state database: its catalog, configs, dedup keys and
    /// relocated messages. The log's own records then restate (and extend) the catalog.
    pub(crate) fn from_checkpoint(loaded: &Loaded, file: &Path) -> Result<Replay> {
        let bad = |why: String| corrupt(file, 0, why);
        let mut r = Replay {
            floor: loaded.checkpoint,
            checkpoint_epoch: loaded.epoch,
            first_sensitive: u64::MAX,
            ..Replay::default()
        };
        for q in &loaded.queues {
            if !valid_name(&q.name) {
                return Err(bad(format!("invalid queue name {:?} in the catalog", q.name)));
            }
            let config = match &q.config {
                Some(c) => Some(
                    QueueConfig::decode(c)
                        .ok_or_else(|| bad(format!("invalid config of queue {:?}", q.name)))?,
                ),
                None => None,
            };
            r.queues.push((q.name.clone(), QueueIndex::default()));
            r.configs.push(config);
        }
        for (id, row) in &loaded.rows {
            let Some((_, q)) = r.queues.get_mut(row.queue as usize) else {
                return Err(bad(format!("message {id:x} is in an unknown queue")));
            };
            let entry = Entry {
                lsn: RELOCATED,
                len: row.len,
                off: 0,
                attempts: row.attempts,
                priority: row.priority,
                expires: row.expires,
            };
            q.insert(*id, entry, row.due);
            if row.origin.is_some() || !row.error.is_empty() {
                q.set_note(
                    *id,
                    Note { origin: row.origin, reason: row.reason, error: row.error.clone() },
                );
            }
            if row.leased != 0 {
                r.leased.insert((row.queue, *id), row.leased);
            }
            r.relocated.insert(*id, row.clone());
        }
        for (queue, key, id, until) in loaded.dedup.iter() {
            let Some((_, q)) = r.queues.get_mut(queue as usize) else {
                return Err(bad(format!("a dedup key of an unknown queue {queue}")));
            };
            q.dedup_insert(key, id, until, 0);
        }
        Ok(r)
    }

    /// Starts from a checkpoint as [`from_checkpoint`](Self::from_checkpoint) does, and, if the
    /// checkpoint has a snapshot of the index, from that too: then only the log from the
    /// checkpoint on is to be replayed (see [`start`](Self::start)).
    pub(crate) fn resume(loaded: &Loaded, file: &Path) -> Result<Replay> {
        let mut r = Replay::from_checkpoint(loaded, file)?;
        let Some(snap) = &loaded.snapshot else { return Ok(r) };
        if snap.queues.len() != r.queues.len() {
            let why = format!(
                "the snapshot holds {} queues, the catalog {}",
                snap.queues.len(),
                r.queues.len()
            );
            return Err(corrupt(file, 0, why));
        }
        for (n, ((_, q), s)) in r.queues.iter_mut().zip(&snap.queues).enumerate() {
            q.load_snapshot(s);
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            for m in s.messages.iter().filter(|m| m.leased != 0) {
                r.leased.insert((n, m.id), m.leased);
            }
        }
        for &(base, live, pushed) in &snap.segments {
            r.live.insert(base, live);
            r.pushed.insert(base, pushed);
        }
        for &(epoch, at) in &snap.voids {
            r.voids.closed(epoch, at);
        }
        r.max_epoch = snap.epoch;
        r.anchor = Some(Anchor { start: snap.log_start, checkpoint: 0 });
        r.start = snap.position;
        Ok(r)
    }

    /// Where replay starts (0: at the log's first record).
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Holds up to `window` ready messages per queue in memory (0: all) and reads the members of
    /// queues' runs back from `segs`, the segments being replayed.
    pub(crate) fn set_runs(&mut self, window: usize, segs: Vec<Arc<Segment>>) {
        self.window = window;
        self.segs = segs;
        for (_, q) in &mut self.queues {
            q.set_window(window);
        }
    }

    /// Moves message `id` of `queue` into the index if it is a member of the queue's run not
    /// read yet: a record about to be applied names it.
    fn reach(&mut self, queue: u32, id: u64) -> Result<()> {
        let Some((_, q)) = self.queues.get_mut(queue as usize) else { return Ok(()) };
        if !q.run_may_hold(id) {
            return Ok(());
        }
        let cx =
            Context { live_epoch: self.max_epoch, voids: &self.voids, relocated: &self.relocated };
        fill(q, queue, &Segs(&self.segs), &cx, RunWant::Id(id))
    }

    /// Where the groups that crashes left unfinished are (for the runs' reads at run time).
    pub(crate) fn voids(&self) -> &Voids {
        &self.voids
    }

    /// Adds queue `name` to the catalog before any record is replayed (salvage names every
    /// queue it found anywhere in the log first, so that a lost catalog record costs nothing).
    pub(crate) fn seed_queue(&mut self, name: String) {
        self.queues.push((name, QueueIndex::default()));
        self.configs.push(None);
    }

    /// Relocated messages (rows of the state database) by id.
    #[inline]
    pub(crate) fn relocated(&self) -> &HashMap<u64, Row> {
        &self.relocated
    }

    /// Each queue's name and rebuilt index, by id.
    #[inline]
    pub(crate) fn queues(&self) -> &[(String, QueueIndex)] {
        &self.queues
    }

    /// The rebuilt queues, taken (what is left is empty).
    pub(crate) fn take_queues(&mut self) -> Vec<(String, QueueIndex)> {
        std::mem::take(&mut self.queues)
    }

    /// Messages delivered and not settled since, with the epoch that delivered them.
    pub(crate) fn leased(&self) -> &HashMap<(u32, u64), u32> {
        &self.leased
    }

    /// The latest anchor of the log, if it has one.
    pub(crate) fn anchor(&self) -> Option<Anchor> {
        self.anchor
    }

    /// Records replayed.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The first record past the checkpoint that the state database must see (see the field).
    pub(crate) fn first_sensitive(&self) -> u64 {
        self.first_sensitive
    }

    /// Unsettled and pushed messages of the segment based at `base`.
    pub(crate) fn segment_counts(&self, base: u64) -> (u64, u64) {
        let get = |m: &BTreeMap<u64, u64>| m.get(&base).copied().unwrap_or(0);
        (get(&self.live), get(&self.pushed))
    }

    /// The rebuilt queues (name, index, config) and the relocated rows, taken.
    pub(crate) fn into_parts(
        self,
    ) -> (Vec<NamedIndex>, Vec<Option<QueueConfig>>, HashMap<u64, Row>) {
        (self.queues, self.configs, self.relocated)
    }

    /// Each queue's configuration as replayed so far.
    pub(crate) fn configs(&self) -> &[Option<QueueConfig>] {
        &self.configs
    }

    /// The last epoch used: by the log's records or by the checkpoint.
    pub(crate) fn epoch(&self) -> u32 {
        self.max_epoch.max(self.checkpoint_epoch)
    }

    /// Messages in flight when the log ends: delivered by the last run and not settled since
    /// (the leases of earlier runs ended when the run after them began).
    pub(crate) fn in_flight(&self) -> u64 {
        let last = self.epoch();
        self.leased.values().filter(|&&e| e == last).count() as u64
    }

    /// A move of message `id` from queue `from` to queue `to`: takes it out of `from` (if it
    /// is still there) and returns it with the destination.
    fn take_for_move(
        &mut self,
        from: u32,
        id: u64,
        to: u32,
    ) -> (Option<Entry>, Option<&mut (String, QueueIndex)>) {
        self.leased.remove(&(from, id));
        let moved = self.queues.get_mut(from as usize).and_then(|(_, q)| {
            let e = q.remove(id)?;
            q.forget(id);
            Some(e)
        });
        (moved, self.queues.get_mut(to as usize))
    }

    /// The dedup window of queue `q` as configured so far.
    fn window(&self, q: u32) -> u64 {
        let cfg = self.configs.get(q as usize).and_then(Option::as_ref);
        cfg.map_or(0, |c| crate::clock::millis(c.dedup_window))
    }
}
