//! Relocation: the stragglers a checkpoint copies out of old segments into the state database
//! (a few unsettled messages that would otherwise keep a whole segment), and the rows that
//! hold a relocated message's state as the index has it now.

use std::sync::Arc;

use super::rows::Row;
use crate::log::{Segment, STRAGGLERS_MAX_SHARE};
use crate::queue::{Entry, RunWant, RELOCATED};
use crate::record::{self, Body};
use crate::store::State;

/// A straggler chosen for relocation.
pub(crate) struct Move {
    pub id: u64,
    pub queue: u32,
    pub entry: Entry,
    pub row: Row,
    seg: Arc<Segment>,
}

/// The queue holding message `id` (trying queue `hint` first), its entry and due time.
pub(crate) fn find(g: &State, (id, hint): (u64, u32)) -> Option<(u32, Entry, u64)> {
    if let Some((e, due)) = g.get_queue(hint).and_then(|q| q.index().get(id)) {
        return Some((hint, e, due));
    }
    g.queues().iter().enumerate().find_map(|(q, qs)| {
        let (e, due) = qs.index().get(id)?;
        Some((u32::try_from(q).ok()?, e, due))
    })
}

/// The row of a message as the index holds it now (`old` gives its payload's length and CRC),
/// or `None` if it was settled.
pub(crate) fn current_row(g: &State, id: u64, old: &Row) -> Option<Row> {
    let (q, entry, due) = find(g, (id, old.queue))?;
    Some(Row { pushed: old.pushed, ..row_of(g, q, id, &entry, due, old.len, old.crc) })
}

fn row_of(g: &State, q: u32, id: u64, entry: &Entry, due: u64, len: u32, crc: u32) -> Row {
    let note = g.get_queue(q).and_then(|qs| qs.index().note(id));
    Row {
        queue: q,
        attempts: entry.attempts,
        priority: entry.priority,
        expires: entry.expires,
        due,
        origin: note.and_then(|n| n.origin),
        reason: note.map_or(0, |n| n.reason),
        error: note.map_or_else(Default::default, |n| n.error.clone()),
        len,
        crc,
        leased: if g.get_queue(q).is_some_and(|qs| qs.index().delivered(id)) {
            g.wal().epoch()
        } else {
            0
        },
        // Filled in from the push record when it is read.
        pushed: 0,
    }
}

/// The stragglers to relocate so that old segments covered by a checkpoint at `c` can go:
/// walking from the oldest segment, those of each segment with only a few unsettled messages,
/// until one holds a backlog.
pub(crate) fn stragglers(g: &mut State, c: u64, segment_bytes: u64, max_bytes: u64) -> Vec<Move> {
    let log = g.wal().log();
    let mut segs: Vec<(u64, Arc<Segment>)> = Vec::new();
    let count = log.segment_count();
    for (i, info) in log.segments().enumerate() {
        if i + 1 == count || info.seg().end() > c {
            break;
        }
        if info.live() == 0 {
            continue;
        }
        if !info.few_stragglers() {
            break;
        }
        segs.push((info.seg().base(), Arc::clone(info.seg())));
    }
    let (Some((from, _)), Some((_, last))) = (segs.first(), segs.last()) else {
        return Vec::new();
    };
    let (from, to) = (*from, last.end());
    // Members of a queue's run in these segments are read into its index first. One that
    // fails to (an internal error, reported where the queue is popped) stays where it is,
    // and so does its segment: its live count keeps it.
    for q in 0..u32::try_from(g.queues().len()).unwrap_or(u32::MAX) {
        let _ = g.fill(q, RunWant::Before(to));
    }
    let mut found: Vec<(u64, u32, Entry, u64)> = Vec::new();
    for (q, qs) in g.queues().iter().enumerate() {
        let q = u32::try_from(q).unwrap_or(u32::MAX);
        qs.index().each_in(from, to, |id, e, due| found.push((id, q, e, due)));
    }
    found.sort_unstable_by_key(|&(_, _, e, _)| e.lsn);
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut it = found.into_iter().peekable();
    for (base, seg) in segs {
        let mut these = Vec::new();
        let mut bytes = 0u64;
        while let Some((id, q, e, due)) = it.next_if(|&(_, _, e, _)| e.lsn < seg.end()) {
            if e.lsn < base {
                continue;
            }
            bytes += u64::from(e.len);
            these.push((id, q, e, due));
        }
        if bytes > segment_bytes / STRAGGLERS_MAX_SHARE || total + bytes > max_bytes {
            break;
        }
        total += bytes;
        for (id, q, e, due) in these {
            // The CRC is filled in once the payload is read.
            let row = row_of(g, q, id, &e, due, e.len, 0);
            out.push(Move { id, queue: q, entry: e, row, seg: Arc::clone(&seg) });
        }
    }
    out
}

/// Reads and checks a straggler's push record; returns its payload and push time.
pub(crate) fn read_payload(m: &Move) -> Option<(Vec<u8>, u64)> {
    if m.entry.lsn == RELOCATED {
        return None;
    }
    let len = m.entry.record_len();
    let start = usize::try_from(m.entry.lsn.checked_sub(m.seg.base())?).ok()?;
    let owned;
    let bytes = match m.seg.mapped().and_then(|b| b.get(start..start.checked_add(len)?)) {
        Some(b) => b,
        None => {
            owned = m.seg.read(m.entry.lsn, len).ok()?;
            &owned[..]
        }
    };
    let rec = record::decode(bytes, m.entry.lsn).ok()?;
    match rec.body {
        Body::Push { id, payload, .. } if id == m.id => Some((payload.to_vec(), 0)),
        Body::PushEx { id, payload, pushed, .. } if id == m.id => Some((payload.to_vec(), pushed)),
        _ => None,
    }
}
