//! Salvage's new log: segments named `<base>.seg.salvage` (foreign to an open, until the swap
//! renames them), each opening with a preamble (a new epoch, an anchor at the new log's start,
//! the whole catalog with configs),
//! then, per kept message in id order, its push with its original id and options and the
//! records that restore its state, so that a normal recovery of the new log rebuilds exactly
//! the state the plan kept. Relocated payloads are written into the log: the new store needs no
//! state database.
//!
//! Invariant: every file is written whole, preallocated and synced, and the directory synced,
//! before `write_log` returns; nothing else in the store changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::StateDb;
use crate::error::{Corruption, Error, Result};
use crate::log::new_store_id;
use crate::log::MIN_SEGMENT_BYTES;
use crate::log::{unsynced_bound, Header, HEADER_LEN};
use crate::queue::RELOCATED;
use crate::record::{self, Body, PUSH_EX_OVERHEAD, TAIL_RESERVE};
use crate::storage::{Storage, StorageFile};

use super::plan::{Kept, Plan};
use crate::log::segment_file_name;

/// The suffix of a segment written by salvage, until the swap renames it.
pub(crate) const SUFFIX: &str = ".salvage";

/// The name of the new segment at `base` while it is being made.
pub(crate) fn temp_name(base: u64) -> String {
    format!("{}{SUFFIX}", segment_file_name(base))
}

/// Writes the new log into `log_dir`; returns the bases of its segments.
pub(crate) fn write_log(storage: &dyn Storage, log_dir: &Path, plan: &Plan) -> Result<Vec<u64>> {
    let configs: Vec<Option<Vec<u8>>> =
        plan.queues.iter().map(|(_, c)| c.as_ref().map(|c| c.encode())).collect();
    // The new log starts at its first segment and needs no state database.
    let anchor = Body::Anchor { start: plan.base, checkpoint: 0 };
    let mut preamble = vec![Body::Epoch { epoch: plan.epoch }, anchor];
    for (i, ((name, _), config)) in plan.queues.iter().zip(&configs).enumerate() {
        let queue = u32::try_from(i).unwrap_or(u32::MAX);
        preamble.push(Body::Queue { queue, name: name.as_bytes() });
        if let Some(config) = config {
            preamble.push(Body::Config { queue, config });
        }
    }
    let preamble_len: usize = preamble.iter().map(Body::encoded_len).sum();
    let largest = plan.kept.iter().map(upper_bound).max().unwrap_or(0);
    let need = HEADER_LEN + (preamble_len + largest + TAIL_RESERVE) as u64;
    let seg_len = plan.seg_len.max(need.div_ceil(4096) * 4096).max(MIN_SEGMENT_BYTES);
    if seg_len > u64::from(u32::MAX) {
        return Err(Error::InvalidOption("a kept message needs a segment over 4 GiB".into()));
    }
    storage.create_dir_all(log_dir)?;
    let mut out = Out {
        storage,
        log_dir,
        store_id: new_store_id(),
        seg_len,
        base: plan.base,
        buf: Vec::new(),
        bases: Vec::new(),
        preamble: &preamble,
    };
    out.begin();
    let mut files: HashMap<PathBuf, Arc<dyn StorageFile>> = HashMap::new();
    let db = match &plan.state_path {
        Some(p) => Some(StateDb::open_read_only(storage, p)?),
        None => None,
    };
    let result = (|| {
        for k in &plan.kept {
            let (payload, key, pushed) = payload_of(storage, plan, db.as_ref(), &mut files, k)?;
            out.add(&bodies(k, &payload, &key, pushed))?;
        }
        out.flush()?;
        storage.sync_dir(log_dir)?;
        Ok(std::mem::take(&mut out.bases))
    })();
    if let Some(db) = db {
        db.close_quietly();
    }
    result
}

/// At most the bytes of a kept message's records: sized by the records themselves, with its
/// payload's length and the longest key it may have (read with the payload later).
fn upper_bound(k: &Kept) -> usize {
    let key = (k.entry.off as usize).saturating_sub(PUSH_EX_OVERHEAD);
    let key = vec![0; key.max(k.key.as_ref().map_or(0, |k| k.len()))];
    let records: usize = bodies(k, &[], &key, 0).iter().map(Body::encoded_len).sum();
    records + k.entry.len as usize
}

/// The records that restore message `k`: its push (into the queue it was dead-lettered from,
/// then the dead letter), its attempts (a delivery, released at once) and its due time and
/// last error (a retry).
fn bodies<'a>(k: &'a Kept, payload: &'a [u8], key: &'a [u8], pushed: u64) -> Vec<Body<'a>> {
    let (id, queue) = (k.id, k.queue);
    let note = k.note.as_ref();
    let error = note.map_or(&[][..], |n| n.error.as_bytes());
    let mut out = Vec::with_capacity(5);
    let origin = note.and_then(|n| n.origin);
    match origin {
        Some(from) => {
            out.push(Body::PushEx {
                queue: from,
                id,
                priority: 0,
                not_before: 0,
                expires: 0,
                pushed,
                key,
                payload,
            });
            let reason = note.map_or(0, |n| n.reason);
            out.push(Body::DeadLetter { queue: from, id, to: queue, reason, error });
        }
        None => out.push(Body::PushEx {
            queue,
            id,
            priority: k.entry.priority,
            not_before: k.due,
            expires: k.entry.expires,
            pushed,
            key,
            payload,
        }),
    }
    if k.entry.attempts > 0 {
        out.push(Body::Deliver { queue, id, attempt: k.entry.attempts });
        out.push(Body::Nack { queue, id });
    }
    match origin {
        Some(_) if k.due != 0 => out.push(Body::Retry { queue, id, due: k.due, error: &[] }),
        None if !error.is_empty() => out.push(Body::Retry { queue, id, due: k.due, error }),
        _ => {}
    }
    out
}

/// The payload, dedup key and push time of a kept message, read again and checked.
fn payload_of(
    storage: &dyn Storage,
    plan: &Plan,
    db: Option<&StateDb>,
    files: &mut HashMap<PathBuf, Arc<dyn StorageFile>>,
    k: &Kept,
) -> Result<(Vec<u8>, Vec<u8>, u64)> {
    if k.entry.lsn == RELOCATED {
        let db = db.ok_or_else(|| {
            Error::Internal("a relocated message without its state database".into())
        })?;
        let payload = db.payload(k.id, k.crc, k.entry.len)?;
        return Ok((payload, k.key.as_deref().unwrap_or(&[]).to_vec(), k.pushed));
    }
    let lsn = k.entry.lsn;
    // The segment with the highest base at or below `lsn` (segments are in base order; a file
    // longer than its header says may reach past the next one's base).
    let seg = plan.segs.iter().rev().find(|s| s.base <= lsn && lsn < s.end());
    let changed = |why: &str| {
        let file = seg.map_or_else(PathBuf::new, |s| s.path.clone());
        let offset = seg.map_or(0, |s| lsn - s.base);
        Error::Corrupted(Corruption {
            file,
            offset,
            reason: format!("changed during salvage: {why}"),
        })
    };
    let seg = seg.ok_or_else(|| changed("no segment"))?;
    let file = match files.get(&seg.path) {
        Some(f) => Arc::clone(f),
        None => {
            let f = storage.open_read(&seg.path)?;
            files.insert(seg.path.clone(), Arc::clone(&f));
            f
        }
    };
    let mut bytes = vec![0u8; k.entry.record_len()];
    file.read_at(&mut bytes, lsn - seg.base)?;
    match record::decode(&bytes, lsn).map(|r| r.body) {
        Ok(Body::PushEx { key, payload, pushed, .. }) => {
            Ok((payload.to_vec(), key.to_vec(), pushed))
        }
        Ok(Body::Push { payload, .. }) => Ok((payload.to_vec(), Vec::new(), 0)),
        Ok(_) => Err(changed("not a push record")),
        Err(why) => Err(changed(why.describe())),
    }
}

/// The segment being filled.
struct Out<'a> {
    storage: &'a dyn Storage,
    log_dir: &'a Path,
    store_id: u128,
    seg_len: u64,
    base: u64,
    buf: Vec<u8>,
    bases: Vec<u64>,
    preamble: &'a [Body<'a>],
}

impl Out<'_> {
    fn begin(&mut self) {
        self.buf.clear();
        let header = Header {
            store_id: self.store_id,
            base: self.base,
            len: self.seg_len,
            unsynced: Some(unsynced_bound(self.seg_len)),
        };
        self.buf.extend_from_slice(&header.encode());
        for b in self.preamble {
            self.put(b);
        }
    }

    /// Appends one record. Its `synced` field says everything before it was durable: true of
    /// the new log as a whole before anything reads it (the swap needs it synced first).
    fn put(&mut self, body: &Body<'_>) {
        let lsn = self.base + self.buf.len() as u64;
        record::encode(&mut self.buf, lsn, lsn, body);
    }

    /// Appends one message's records, in a new segment if they do not fit in this one.
    fn add(&mut self, bodies: &[Body<'_>]) -> Result<()> {
        let need: usize = bodies.iter().map(Body::encoded_len).sum();
        // Every segment keeps `TAIL_RESERVE` free: its seal, and an anchor before a deletion.
        if (self.buf.len() + need + TAIL_RESERVE) as u64 > self.seg_len {
            self.put(&Body::Seal);
            self.flush()?;
            self.base += self.seg_len;
            self.begin();
        }
        for b in bodies {
            self.put(b);
        }
        Ok(())
    }

    /// Writes the segment: created under its salvage name, preallocated, written, synced.
    fn flush(&mut self) -> Result<()> {
        let path = self.log_dir.join(temp_name(self.base));
        let _ = self.storage.remove(&path);
        let file = self.storage.open(&path, true)?;
        file.allocate(self.seg_len)?;
        file.write_at(&self.buf, 0)?;
        file.sync_data()?;
        self.bases.push(self.base);
        Ok(())
    }
}
