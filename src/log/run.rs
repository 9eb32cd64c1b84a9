//! A queue's run: the plain pushes of a FIFO backlog that the index counts instead of holding
//! (see `QueueIndex`), read back from the log as the queue drains.
//!
//! A *plain* push ([`plain_push`]) is a `Push` record, or a `PushEx` without a priority, a due
//! time, an expiry or a dedup key. Once a queue's index holds its window of ready messages,
//! every later plain push of the queue joins its run: the index keeps the run's start in the
//! log, how many messages it holds and their bytes, nothing per message. [`fill`] walks the
//! log from the run's start and moves the next members into the index, in push order.
//!
//! Invariant: the members of a run are exactly the plain pushes of its queue at or past its
//! start that were applied (a group the crash left unfinished never was: see [`Voids`]) and
//! are not relocated; every member's id is above the index's run floor.

use std::collections::HashMap;

use crate::checkpoint::Row;
use crate::error::{Error, Result};
use crate::queue::{Entry, QueueIndex, RunWant};
use crate::record::{self, Body};

use super::source::{Records, Voids};
use super::wal::SEQ_BITS;

/// Members moved into the index by one [`fill`] at most, when the pop side asks for its head.
const FILL_CHUNK: usize = 1024;

/// The message of a plain push record: its queue, id and entry (not delivered yet).
pub(crate) fn plain_push(lsn: u64, body: &Body<'_>) -> Option<(u32, u64, Entry)> {
    let (queue, id, payload, off) = match *body {
        Body::Push { queue, id, payload } => (queue, id, payload, record::PUSH_OVERHEAD),
        Body::PushEx {
            queue,
            id,
            priority: 0,
            not_before: 0,
            expires: 0,
            key: [],
            payload,
            ..
        } => (queue, id, payload, record::PUSH_EX_OVERHEAD),
        _ => return None,
    };
    let len = u32::try_from(payload.len()).ok()?;
    let off = u32::try_from(off).ok()?;
    Some((queue, id, Entry { lsn, len, off, attempts: 0, priority: 0, expires: 0 }))
}

/// What [`fill`] may skip besides voided groups: messages relocated into the state database
/// (their rows hold them), and which epoch is current.
pub(crate) struct Context<'a> {
    pub live_epoch: u32,
    pub voids: &'a Voids,
    pub relocated: &'a HashMap<u64, Row>,
}

/// Moves members of `ix`'s run (queue `queue`) into the index until `want` holds or the run is
/// empty. A run that counts more members than the log holds is an internal error (the run is
/// dropped, so that the queue goes on with what it has).
pub(crate) fn fill(
    ix: &mut QueueIndex,
    queue: u32,
    src: &impl Records,
    cx: &Context<'_>,
    want: RunWant,
) -> Result<()> {
    if ix.run_satisfies(want) {
        return Ok(());
    }
    let mut lsn = ix.run_next();
    let mut loaded = 0usize;
    // Loads members from `lsn` on; returns where to go on from (the first member not
    // loaded), or `None` at the end of the log.
    let stop = loop {
        let Some(bytes) = src.record(lsn)? else {
            match src.next_segment(lsn) {
                Some(next) => {
                    lsn = next;
                    continue;
                }
                None => break None,
            }
        };
        // Damage below the checkpoint an open started from is found here, when it is read.
        let rec = record::decode(&bytes, lsn).map_err(|e| {
            let (file, offset) = src.file_of(lsn);
            Error::Corrupted(crate::error::Corruption {
                file,
                offset,
                reason: format!(
                    "queue {queue}'s run reads an invalid record at log position {lsn}: {}",
                    e.describe()
                ),
            })
        })?;
        if rec.body == Body::Seal {
            match src.next_segment(lsn) {
                Some(next) => {
                    lsn = next;
                    continue;
                }
                None => break None,
            }
        }
        let next = lsn + rec.len as u64;
        let member = plain_push(lsn, &rec.body).filter(|&(q, id, _)| {
            let epoch = u32::try_from(id >> SEQ_BITS).unwrap_or(u32::MAX);
            q == queue
                && !(rec.more && cx.voids.void(epoch, cx.live_epoch, lsn))
                && !cx.relocated.contains_key(&id)
        });
        if let Some((_, id, entry)) = member {
            // A member past what was asked for stays in the run.
            match want {
                RunWant::Id(x) if id > x => break Some(lsn),
                RunWant::Before(limit) if lsn >= limit => break Some(lsn),
                _ => {}
            }
            if !ix.run_load(id, entry, next) {
                // Not a member after all (at or below the floor): already in the index.
                lsn = next;
                continue;
            }
            loaded += 1;
            if ix.run_len() == 0 {
                break Some(next);
            }
            // A pop reads ahead, up to a chunk or the window; the others read what they need.
            let more = want == RunWant::Head && loaded < FILL_CHUNK && ix.run_room() > 0;
            if !more && ix.run_satisfies(want) {
                break Some(next);
            }
        }
        lsn = next;
    };
    match stop {
        Some(next) => {
            ix.run_set_next(next);
            Ok(())
        }
        None if ix.run_len() == 0 => Ok(()),
        None => {
            let left = ix.run_len();
            ix.run_drop();
            Err(Error::Internal(format!(
                "queue {queue}'s run counts {left} more messages than the log holds"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// One segment's records in memory, from position 0.
    struct Mem(Vec<u8>);

    impl Records for Mem {
        fn record(&self, lsn: u64) -> Result<Option<Cow<'_, [u8]>>> {
            Ok(self.0.get(lsn as usize..).filter(|b| b.len() >= 4).map(Cow::Borrowed))
        }
        fn next_segment(&self, _: u64) -> Option<u64> {
            None
        }
    }

    fn id(epoch: u64, seq: u64) -> u64 {
        epoch << SEQ_BITS | seq
    }

    /// Pushes (queue 0 unless noted) as records; `more` marks those inside a group.
    fn log(records: &[(Body<'_>, bool)]) -> (Mem, Vec<u64>) {
        let mut buf = Vec::new();
        let mut lsns = Vec::new();
        for (body, more) in records {
            let lsn = buf.len() as u64;
            lsns.push(lsn);
            record::encode_in_group(&mut buf, lsn, 0, body, *more);
        }
        (Mem(buf), lsns)
    }

    fn push(queue: u32, id: u64) -> Body<'static> {
        let (priority, not_before, expires, pushed, key) = (0, 0, 0, 1, &[][..]);
        Body::PushEx { queue, id, priority, not_before, expires, pushed, key, payload: b"p" }
    }

    /// Replays the pushes of `records` into an index of window 1, as recovery would.
    fn replayed(
        records: &[(Body<'_>, bool)],
        voids: &Voids,
        skip: &[u64],
        live: u32,
    ) -> QueueIndex {
        let (_, lsns) = log(records);
        let mut ix = QueueIndex::default();
        ix.set_window(1);
        for ((body, more), lsn) in records.iter().zip(lsns) {
            let Some((0, id, entry)) = plain_push(lsn, body) else { continue };
            let voided = *more && voids.void((id >> SEQ_BITS) as u32, live, lsn);
            if !voided && !skip.contains(&id) {
                ix.push(id, entry, 0, true);
            }
        }
        ix
    }

    fn drain(ix: &mut QueueIndex, mem: &Mem, cx: &Context<'_>) -> Vec<u64> {
        let mut out = Vec::new();
        let now = std::time::Instant::now();
        loop {
            fill(ix, 0, mem, cx, RunWant::Head).unwrap();
            let Some((id, _)) = ix.head() else { break };
            ix.lease(id, now, std::time::Duration::from_secs(60)).unwrap();
            ix.take(id, 1, now).unwrap();
            out.push(id);
        }
        out
    }

    #[test]
    fn a_run_yields_its_queue_s_plain_pushes_in_order_and_nothing_else() {
        let keyed = Body::PushEx {
            queue: 0,
            id: id(1, 4),
            priority: 0,
            not_before: 0,
            expires: 0,
            pushed: 1,
            key: b"k",
            payload: b"p",
        };
        let records = [
            (Body::Epoch { epoch: 1 }, false),
            (push(0, id(1, 1)), false),
            (push(0, id(1, 2)), false),
            (push(1, id(1, 3)), false),
            (keyed, false),
            (Body::Ack { queue: 1, id: id(1, 3) }, false),
            (Body::Push { queue: 0, id: id(1, 5), payload: b"old" }, false),
            (push(0, id(1, 6)), true),
            (push(0, id(1, 7)), false),
        ];
        let (mem, _) = log(&records);
        let voids = Voids::default();
        let relocated = HashMap::new();
        let cx = Context { live_epoch: 1, voids: &voids, relocated: &relocated };
        let mut ix = replayed(&records, &voids, &[], 1);
        let (_, lsns) = log(&records);
        let entry = Entry { lsn: lsns[4], len: 1, off: 0, attempts: 0, priority: 0, expires: 0 };
        ix.push(id(1, 4), entry, 0, plain_push(lsns[4], &records[4].0).is_some());
        // The keyed push is indexed (it was not plain); the rest of queue 0 is a run.
        assert_eq!(ix.run_len(), 4);
        assert_eq!(ix.ready_len(), 6, "1 held, the keyed one, 4 in the run");
        let order = drain(&mut ix, &mem, &cx);
        assert_eq!(order, [id(1, 1), id(1, 2), id(1, 4), id(1, 5), id(1, 6), id(1, 7)]);
    }

    #[test]
    fn a_group_a_crash_left_unfinished_is_skipped_and_relocated_messages_too() {
        // Epoch 1 ends inside a group (its last two pushes); epoch 2 goes on.
        let records = [
            (Body::Epoch { epoch: 1 }, false),
            (push(0, id(1, 1)), false),
            (push(0, id(1, 2)), true),
            (push(0, id(1, 3)), false),
            (push(0, id(1, 4)), true),
            (push(0, id(1, 5)), true),
            (Body::Epoch { epoch: 2 }, false),
            (push(0, id(2, 1)), true),
            (push(0, id(2, 2)), false),
            (push(0, id(2, 3)), false),
        ];
        let (mem, lsns) = log(&records);
        let mut voids = Voids::default();
        voids.closed(1, lsns[3]);
        voids.closed(2, lsns[9]);
        let relocated: HashMap<u64, Row> = [(id(2, 2), Row::default())].into();
        let cx = Context { live_epoch: 2, voids: &voids, relocated: &relocated };
        let mut ix = replayed(&records, &voids, &[id(2, 2)], 3);
        assert_eq!(ix.run_len(), 4, "2 and 3 of epoch 1, 1 and 3 of epoch 2");
        let order = drain(&mut ix, &mem, &cx);
        assert_eq!(order, [id(1, 1), id(1, 2), id(1, 3), id(2, 1), id(2, 3)]);
    }

    #[test]
    fn a_run_that_counts_more_than_the_log_holds_is_an_error_not_a_hang() {
        let records = [(push(0, id(1, 1)), false), (push(0, id(1, 2)), false)];
        let (mem, _) = log(&records);
        let voids = Voids::default();
        let relocated = HashMap::new();
        let cx = Context { live_epoch: 1, voids: &voids, relocated: &relocated };
        let mut ix = replayed(&records, &voids, &[], 1);
        let beyond = Entry { lsn: 1 << 20, len: 1, off: 0, attempts: 0, priority: 0, expires: 0 };
        ix.push(id(1, 3), beyond, 0, true);
        assert_eq!(ix.run_len(), 2);
        fill(&mut ix, 0, &mem, &cx, RunWant::All).unwrap_err();
        assert_eq!(ix.run_len(), 0, "the run is dropped");
    }

    #[test]
    fn an_id_past_the_run_loads_only_what_comes_before_it() {
        let records: Vec<_> = (1..=10).map(|s| (push(0, id(1, s)), false)).collect();
        let (mem, _) = log(&records);
        let voids = Voids::default();
        let relocated = HashMap::new();
        let cx = Context { live_epoch: 1, voids: &voids, relocated: &relocated };
        let mut ix = replayed(&records, &voids, &[], 1);
        assert_eq!(ix.run_len(), 9);
        fill(&mut ix, 0, &mem, &cx, RunWant::Id(id(1, 4))).unwrap();
        assert_eq!(ix.run_len(), 6, "2, 3 and 4 read");
        fill(&mut ix, 0, &mem, &cx, RunWant::Id(id(1, 4) + (1 << 30))).unwrap();
        assert_eq!(ix.run_len(), 0, "an id past the last member reads them all");
        assert_eq!(ix.ready_len(), 10);
    }
}
