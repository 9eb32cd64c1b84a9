//! Test support (feature `testing`): the simulated disk and deterministic hooks, for wharf's
//! own crash tests and fuzz targets. Not a stable API.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::queue::{Wharf, WharfBuilder};
pub use crate::storage::sim::{CrashPolicy, Fault, OpKind, Rng, SimFs, SiteCount};

/// Opens a store on the simulated disk. The background thread is off: call [`maintain`] where
/// it would have done its work, so that the same calls always issue the same disk operations.
///
/// # Errors
/// As [`WharfBuilder::open`].
pub fn open(builder: WharfBuilder, sim: &SimFs, dir: &Path) -> Result<Wharf> {
    let mut opts = builder.into_options()?;
    opts.background = false;
    Wharf::open_on(Arc::new(sim.clone()), dir, opts)
}

/// Opens a store on the simulated disk with its background and checkpointer threads running,
/// as on the real file system: for tests of those threads (how they wait, what an injected
/// fault does to them), which cannot be deterministic.
///
/// # Errors
/// As [`WharfBuilder::open`].
pub fn open_threaded(builder: WharfBuilder, sim: &SimFs, dir: &Path) -> Result<Wharf> {
    Wharf::open_on(Arc::new(sim.clone()), dir, builder.into_options()?)
}

pub use crate::clock::ManualClock;
pub use crate::store::Thread;

/// Makes `thread` of the store panic the next time it looks at its work (at once if it is
/// asleep): for tests of what such a bug does, which is poison the store, naming the thread.
/// Does nothing on a store opened without its threads ([`open`]).
pub fn panic_in(wharf: &Wharf, thread: Thread) {
    wharf.shared().arm_panic(thread);
}

/// [`Wharf::verify`] on the simulated disk; `state.redb`, if present, is read through it too
/// (read-only, as on the real file system).
///
/// # Errors
/// As [`Wharf::verify`].
pub fn verify(sim: &SimFs, dir: &Path) -> Result<crate::verify::VerifyReport> {
    crate::verify::verify_on(sim, dir)
}

/// Drops the snapshot of the index from the state database of the closed store at `dir` (on
/// the real file system), so that its next open replays the whole log, as for a store written
/// before snapshots; returns whether it had one.
///
/// # Errors
/// If the state database cannot be opened or written.
pub fn drop_snapshot(dir: &Path) -> Result<bool> {
    let storage = crate::storage::RealFs;
    match crate::checkpoint::StateDb::open_existing(&storage, dir)? {
        Some(db) => db.drop_snapshot(),
        None => Ok(false),
    }
}

/// Counts one more member in queue 0's run in the snapshot of the closed store at `dir`, as a
/// bug could (for tests of [`Wharf::verify`]'s check of the snapshot); returns whether it had
/// one.
///
/// # Errors
/// If the state database cannot be opened or written.
pub fn skew_snapshot(dir: &Path) -> Result<bool> {
    let storage = crate::storage::RealFs;
    match crate::checkpoint::StateDb::open_existing(&storage, dir)? {
        Some(db) => db.skew_snapshot(),
        None => Ok(false),
    }
}

/// Runs the background thread's duties once, now: a spare segment, a sync of everything
/// staged, deletion of settled segments.
///
/// # Errors
/// Whatever the storage returns; a failed write or sync poisons the store.
pub fn maintain(wharf: &Wharf) -> Result<()> {
    crate::store::maintain(wharf.shared())
}

/// Decodes the record at the start of `bytes`, which sits at log position `lsn`: its length,
/// or why it is not a valid record. Never panics (the decoder fuzz target checks it).
///
/// # Errors
/// A short reason when the bytes are not a valid record.
pub fn decode_record(bytes: &[u8], lsn: u64) -> std::result::Result<usize, &'static str> {
    crate::record::decode(bytes, lsn).map(|r| r.len).map_err(crate::record::DecodeError::describe)
}

/// Encodes a push record at `lsn` (for seed corpora and round-trip checks).
pub fn encode_push(lsn: u64, queue: u32, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::record::encode(&mut out, lsn, lsn, &crate::record::Body::Push { queue, id, payload });
    out
}

/// Encodes a batch-ack record (`Acks`, format 5) of `ids` of queue `queue` at `lsn` (for seed
/// corpora and round-trip checks); `None` unless there are 1 to 1,024 ids.
pub fn encode_acks(lsn: u64, queue: u32, ids: &[u64]) -> Option<Vec<u8>> {
    use crate::record::{Body, Ids, MAX_ACKS};
    if ids.is_empty() || ids.len() > MAX_ACKS {
        return None;
    }
    let mut out = Vec::new();
    crate::record::encode(&mut out, lsn, lsn, &Body::Acks { queue, ids: Ids::Values(ids) });
    Some(out)
}

/// The 64-byte header of a segment of `len` bytes at log position `base` of store `store_id`.
pub fn segment_header(store_id: u128, base: u64, len: u64) -> Vec<u8> {
    crate::log::Header { store_id, base, len, unsynced: Some(crate::log::unsynced_bound(len)) }
        .encode()
        .to_vec()
}

/// The file name of the segment at log position `base` (`<base:020>.seg`).
pub fn segment_file_name(base: u64) -> String {
    crate::log::segment_file_name(base)
}

/// A redb database in a file of the simulated disk holding one counter: for tests that crash
/// redb on the simulated disk (through wharf's storage trait, as the state database is) and
/// check that every committed transaction survives.
pub struct RedbCounter(redb::Database);

/// The counter's table: one key, 0.
const COUNTER: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("counter");

impl RedbCounter {
    /// Opens the database in `path`. A missing file is created the way the state database
    /// must be: initialised under a temporary name, synced, renamed into place and the
    /// directory synced (redb's own creation is not atomic: a crash during it leaves a file
    /// redb refuses).
    ///
    /// # Errors
    /// The file cannot be opened or created, or redb refuses it.
    pub fn open(sim: &SimFs, path: &Path) -> std::result::Result<RedbCounter, String> {
        redb_on_sim(sim, path).map(RedbCounter)
    }

    /// Sets the counter to `value` in one committed write transaction.
    ///
    /// # Errors
    /// Whatever redb returns (the transaction did not commit, or may not have).
    pub fn set(&self, value: u64) -> std::result::Result<(), String> {
        let tx = self.0.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = tx.open_table(COUNTER).map_err(|e| e.to_string())?;
            t.insert(0, value).map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())
    }

    /// The counter as last committed; 0 if it never was.
    ///
    /// # Errors
    /// Whatever redb returns reading it.
    pub fn get(&self) -> std::result::Result<u64, String> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read().map_err(|e| e.to_string())?;
        let t = match tx.open_table(COUNTER) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        Ok(t.get(0).map_err(|e| e.to_string())?.map_or(0, |v| v.value()))
    }
}

impl std::fmt::Debug for RedbCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbCounter").finish_non_exhaustive()
    }
}

fn redb_on_sim(sim: &SimFs, path: &Path) -> std::result::Result<redb::Database, String> {
    use crate::storage::redb_backend::RedbBackend;
    use crate::storage::Storage;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let file = match sim.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            let tmp = path.with_extension("redb.tmp");
            sim.create_dir_all(dir).map_err(|e| err(&e))?;
            let _ = sim.remove(&tmp);
            let file = sim.open(&tmp, true).map_err(|e| err(&e))?;
            let db = redb::Database::builder()
                .create_with_backend(RedbBackend::unlimited(file))
                .map_err(|e| err(&e))?;
            drop(db);
            sim.rename(&tmp, path).map_err(|e| err(&e))?;
            sim.sync_dir(dir).map_err(|e| err(&e))?;
            sim.open(path, false).map_err(|e| err(&e))?
        }
        Err(e) => return Err(e.to_string()),
    };
    redb::Database::builder().create_with_backend(RedbBackend::unlimited(file)).map_err(|e| err(&e))
}
