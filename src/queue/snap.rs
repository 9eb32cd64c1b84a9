//! A queue's index as a checkpoint's snapshot holds it ([`QueueSnap`]), and back: the run
//! stands for the FIFO backlog, whatever its length, and only the rest is listed.
//!
//! The run of a snapshot starts at the first message of the index's *tail* (see
//! `QueueIndex::tail_from`) that nothing sets apart: from there on, every plain push of the
//! queue is ready, never delivered, and a member of the tail or of the run, so the log alone
//! says what they are. Invariant: every unsettled message of the queue that is not relocated
//! is either listed or a member of the snapshot's run, never both.

use super::index::{Entry, Note, QueueIndex, RELOCATED};
use super::run::Run;
use super::slot::Slot;
use crate::checkpoint::{QueueSnap, SnapMessage};

impl QueueIndex {
    /// This queue as a snapshot holds it. `held_elsewhere(id)`: the message will be in a row
    /// of the state database (relocated by the checkpoint taking this snapshot), so it must
    /// be listed, not left to the run; `epoch`: the current one (what a lease is listed
    /// with). `None` if it would list more than `max` messages: they are counted before any is
    /// copied, so a backlog of delayed or leased messages past the limit costs a checkpoint
    /// no memory.
    pub(crate) fn snapshot(
        &self,
        epoch: u32,
        held_elsewhere: &dyn Fn(u64) -> bool,
        max: usize,
    ) -> Option<QueueSnap> {
        // The tail's members that nothing sets apart: those after the last one that is.
        let tail = || self.ready[0].range(self.tail_from..);
        let apart = |(&id, slot): (&u64, &Slot)| {
            slot.attempts() != 0
                || slot.priority() != 0
                || slot.lsn == RELOCATED
                || self.notes.contains_key(&id)
                || self.extra.get(&id).is_some_and(|x| x.expires != 0)
                || held_elsewhere(id)
        };
        let first = match tail().rfind(|&e| apart(e)) {
            Some((&id, _)) => id.saturating_add(1),
            None => self.tail_from,
        };
        let kept = |s: &Slot| s.lsn != RELOCATED;
        let ready = self.ready[0].range(..first).map(|(_, s)| s);
        let ready = ready.chain(self.ready.iter().skip(1).flat_map(|m| m.values()));
        let listed = ready.filter(|s| kept(s)).count()
            + self.delayed.iter().filter(|(.., s)| kept(s)).count()
            + self.leased.iter().filter(|(_, s)| kept(s)).count();
        if listed > max {
            return None;
        }
        let mut snap = QueueSnap {
            run_next: self.run.next,
            run_count: self.run.count,
            run_bytes: self.run.bytes,
            run_floor: self.run.floor,
            messages: Vec::with_capacity(listed),
        };
        if let Some((&id, slot)) = self.ready[0].range(first..).next() {
            let (count, bytes) = self.ready[0]
                .range(first..)
                .fold((0u64, 0u64), |(n, b), (_, s)| (n + 1, b + u64::from(s.len)));
            snap.run_next = slot.lsn;
            snap.run_count += count;
            snap.run_bytes += bytes;
            snap.run_floor = id.saturating_sub(1);
        }
        let mut list = |id: u64, slot: Slot, due: u64, leased: u32| {
            if slot.lsn == RELOCATED {
                return;
            }
            let e = self.entry(id, slot);
            let note = self.notes.get(&id).map(|n| (n.origin, n.reason, n.error.clone()));
            snap.messages.push(SnapMessage {
                id,
                lsn: e.lsn,
                len: e.len,
                off: e.off,
                attempts: e.attempts,
                priority: e.priority,
                expires: e.expires,
                due,
                leased,
                note,
            });
        };
        for (&id, &slot) in self.ready[0].range(..first) {
            list(id, slot, 0, 0);
        }
        for level in self.ready.iter().skip(1) {
            for (&id, &slot) in level {
                list(id, slot, 0, 0);
            }
        }
        for (id, due, slot) in self.delayed.by_due() {
            list(id, slot, due, 0);
        }
        for (id, slot) in self.leased.iter() {
            list(id, slot, 0, epoch);
        }
        Some(snap)
    }

    /// Adds what a snapshot lists and takes its run (to a queue with nothing else yet but
    /// relocated messages). A message leased when the snapshot was taken is ready again.
    pub(crate) fn load_snapshot(&mut self, snap: &QueueSnap) {
        for m in &snap.messages {
            let entry = Entry {
                lsn: m.lsn,
                len: m.len,
                off: m.off,
                attempts: m.attempts,
                priority: m.priority,
                expires: m.expires,
            };
            self.insert(m.id, entry, m.due);
            if let Some((origin, reason, error)) = &m.note {
                let note = Note { origin: *origin, reason: *reason, error: error.clone() };
                self.set_note(m.id, note);
            }
        }
        self.run = Run {
            next: snap.run_next,
            count: snap.run_count,
            bytes: snap.run_bytes,
            floor: snap.run_floor,
        };
        // Nothing is in the tail until the run is read back.
        if let Some((&id, _)) = self.ready[0].last_key_value() {
            self.tail_from = self.tail_from.max(id.saturating_add(1));
        }
    }
}
