//! Where a queue's run is read from (`run.rs`): the log's records by position ([`Records`]:
//! the store's segments and staged bytes at run time, the segment images in recovery), and the
//! groups of records a crash left unfinished, which replay never applied ([`Voids`]).
//!
//! Invariant: a record with `MORE` of an epoch that has ended, past the last record of that
//! epoch that closed a group, was never applied; every other record was (or will be, for a
//! group still being read).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::Result;

/// Where the records of a log are, for `run::fill`: the store's segments and staged bytes at run
/// time, the segment images during recovery.
pub(crate) trait Records {
    /// The bytes of the record at `lsn`, at least as many as its length field says, or `None`
    /// at the end of the log.
    fn record(&self, lsn: u64) -> Result<Option<Cow<'_, [u8]>>>;
    /// The first record of the first segment based past `lsn`: where the log goes on after a
    /// seal, or after a segment deleted since the run was read (every member it held was
    /// loaded: its live count kept it).
    fn next_segment(&self, lsn: u64) -> Option<u64>;
    /// The file holding log position `lsn` and its offset there, for an error that names
    /// damage found in it (an empty path where it is not known).
    fn file_of(&self, lsn: u64) -> (std::path::PathBuf, u64) {
        (std::path::PathBuf::new(), lsn)
    }
}

/// The groups of records a crash left unfinished, which replay never applied: for each epoch
/// (an open of the store), the position of the last record that closed a group, or carried a
/// message outside one. A record with `MORE` past it, of an epoch that has ended, was in such
/// a group. The current epoch's groups are whole (staged under one lock).
#[derive(Debug, Default, Clone)]
pub(crate) struct Voids {
    last_close: BTreeMap<u32, u64>,
}

impl Voids {
    /// A record that carries a message and closes its group (or is not in one) was applied at
    /// `lsn` in `epoch`.
    pub(crate) fn closed(&mut self, epoch: u32, lsn: u64) {
        let at = self.last_close.entry(epoch).or_default();
        *at = (*at).max(lsn);
    }

    /// Each epoch with the last record that closed a group in it.
    pub(crate) fn epochs(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.last_close.iter().map(|(&e, &at)| (e, at))
    }

    pub(crate) fn void(&self, epoch: u32, live: u32, lsn: u64) -> bool {
        epoch < live && self.last_close.get(&epoch).is_none_or(|&at| lsn > at)
    }
}
