//! A queue's dedup keys: which message each key names and until when it holds once that
//! message is settled, and what changed since the last checkpoint took them.
//!
//! Invariant: a key is held while its message is unsettled (the index says so, through the
//! `holds` the caller passes) or its window has not passed; pruning drops only keys that hold
//! neither way, and every key dropped or added is reported to the next checkpoint.

use std::collections::HashMap;

/// A dedup key, its message id and the Unix ms until which it holds once settled.
pub(crate) type DedupEntry = (Box<[u8]>, u64, u64);

#[derive(Debug, Default)]
pub(crate) struct DedupKeys {
    /// Dedup key → (message id, Unix ms until which the key holds even once it is settled).
    keys: HashMap<Box<[u8]>, (u64, u64)>,
    pruned_at: usize,
    /// Keys added and forgotten since the last checkpoint took them.
    added: Vec<Box<[u8]>>,
    gone: Vec<Box<[u8]>>,
}

impl DedupKeys {
    /// The message `key` refers to, if the key still holds at `now_ms`: its message is
    /// unsettled (`holds`), or its window has not passed. A key that no longer holds is
    /// forgotten.
    pub(crate) fn hit(
        &mut self,
        key: &[u8],
        now_ms: u64,
        holds: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let &(id, until) = self.keys.get(key)?;
        if holds(id) || now_ms < until {
            return Some(id);
        }
        if let Some((k, _)) = self.keys.remove_entry(key) {
            self.gone.push(k);
        }
        None
    }

    /// Remembers a key; prunes keys that no longer hold once the map has doubled.
    pub(crate) fn insert(
        &mut self,
        key: &[u8],
        id: u64,
        until: u64,
        now_ms: u64,
        holds: impl Fn(u64) -> bool,
    ) {
        self.keys.insert(key.into(), (id, until));
        self.added.push(key.into());
        if self.keys.len() >= 2 * self.pruned_at.max(512) {
            let gone = &mut self.gone;
            self.keys.retain(|k, &mut (id, until)| {
                let keep = now_ms < until || holds(id);
                if !keep {
                    gone.push(k.clone());
                }
                keep
            });
            self.pruned_at = self.keys.len();
        }
    }

    /// Checkpoint: the keys added and forgotten since the last call, with the current value of
    /// each added key that is still held. The checkpoint writes these to the state database.
    pub(crate) fn take_changes(&mut self) -> (Vec<DedupEntry>, Vec<Box<[u8]>>) {
        let added = std::mem::take(&mut self.added);
        let mut gone = std::mem::take(&mut self.gone);
        let mut put = Vec::with_capacity(added.len());
        for key in added {
            match self.keys.get(&key) {
                Some(&(id, until)) => put.push((key, id, until)),
                None => gone.push(key),
            }
        }
        gone.retain(|k| !self.keys.contains_key(k));
        (put, gone)
    }

    /// Every key held now, with its message and window end.
    pub(crate) fn all(&self) -> Vec<DedupEntry> {
        self.keys.iter().map(|(k, &(id, until))| (k.clone(), id, until)).collect()
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}
