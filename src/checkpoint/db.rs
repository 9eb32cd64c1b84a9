//! `state.redb`: what the checkpointer keeps outside the log, and the only module that touches
//! redb (the rows it holds are in `rows.rs`).
//!
//! A checkpoint records the log position `C` it covers (every record below `C` is reflected in
//! it), the queue catalog and configs, the id epoch, the dedup keys, and the *relocated*
//! messages: stragglers whose payloads were copied out of old segments so that those segments
//! could be deleted. Each relocated message has a row (its state as of `C`) and a payload.
//!
//! Invariants: a checkpoint is one redb write transaction, committed durably; `C` never passes
//! the log's durable end when it is written; the state database is created whole (under a
//! temporary name, synced, renamed, directory synced), so a crash never leaves a half-made one.
//! Decoders never panic on any bytes. redb is given an existing file only after an open that
//! verifies every page checksum first, in memory, has passed ([`precheck`]): a plain redb open
//! of a damaged file can panic. redb is still run under `catch_unwind` where it reads a file
//! that may be damaged, as a second line.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::rows::{Delta, Loaded, QueueRow, Row};
use super::snapshot::{QueueSnap, Snapshot};
use crate::error::{Corruption, Error, Result};
use crate::storage::redb_backend::{ReadOnlyBackend, RedbBackend};
use crate::storage::Storage;

/// The state database's file name in the store directory.
pub(crate) const FILE: &str = "state.redb";
/// Its temporary name while it is created.
pub(crate) const TMP_FILE: &str = "state.redb.tmp";

/// Layout version of the tables below: 2 added `snapshot` (a layout-1 database, which has
/// none, is read as one whose snapshot is missing: its open replays the log from its anchors).
const VERSION: u32 = 2;
/// Layout versions this code reads.
const READS: [u32; 2] = [1, 2];

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const QUEUES: TableDefinition<u32, &[u8]> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Payloads by (message id, chunk number), in chunks of at most [`CHUNK`] bytes: redb gives a
/// large value a power-of-two run of pages, which would waste up to half of it.
const PAYLOADS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("payloads");
const CHUNK: usize = 16 * 1024 - 256;
const DEDUP: TableDefinition<(u32, &[u8]), (u64, u64)> = TableDefinition::new("dedup");
/// The snapshot of the index at the checkpoint (`snapshot.rs`): the store's part under
/// [`SNAPSHOT_HEAD`], each queue's under its number.
const SNAPSHOT: TableDefinition<u32, &[u8]> = TableDefinition::new("snapshot");
const SNAPSHOT_HEAD: u32 = u32::MAX;

/// Memory redb may use for its page cache: the state is small and read once at open.
const CACHE_BYTES: usize = 4 << 20;

/// The open state database.
pub(crate) struct StateDb {
    db: redb::Database,
    path: PathBuf,
    /// The length redb may grow the file to (see [`set_limit`](Self::set_limit)).
    limit: Arc<AtomicU64>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

/// An I/O error from redb: one that says the bytes are not a database is damage.
fn io_err(path: &Path, e: std::io::Error) -> Error {
    if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) {
        damaged(path, e)
    } else {
        Error::Io(e)
    }
}

/// A redb error (or a panic inside redb) reading or writing `path`, as wharf's error.
fn damaged(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Corrupted(Corruption {
        file: path.to_owned(),
        offset: 0,
        reason: format!("the state database cannot be read: {why}"),
    })
}

impl StateDb {
    /// Opens `dir/state.redb` on `storage` if it exists (a leftover temporary file of an
    /// interrupted creation is removed). One that a failed transaction of this process left in
    /// doubt is [rebuilt](Self::rebuild) first.
    pub(crate) fn open_existing(storage: &dyn Storage, dir: &Path) -> Result<Option<StateDb>> {
        let names = storage.list(dir)?;
        remove_tmp(storage, dir, &names)?;
        if names.iter().any(|n| n == FILE) {
            Self::open_or_rebuild(storage, dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// What an open reads of `dir/state.redb`, if it exists (a leftover temporary file is
    /// removed): its checkpoint, read through a read-only backend, page checksums and redb's
    /// integrity check first, as `verify` reads it. The repair of a database not closed cleanly
    /// (after a crash redb rewrites its allocator state, with several fsyncs) is left to the
    /// first checkpoint, off the open's path. One that a failed transaction of this process
    /// left in doubt is [rebuilt](Self::rebuild) and returned open, as before.
    pub(crate) fn load_existing(
        storage: &dyn Storage,
        dir: &Path,
    ) -> Result<(Option<StateDb>, Loaded)> {
        let names = storage.list(dir)?;
        remove_tmp(storage, dir, &names)?;
        if !names.iter().any(|n| n == FILE) {
            return Ok((None, Loaded::default()));
        }
        let path = dir.join(FILE);
        if storage.suspect(&path).is_some() {
            let db = Self::open_or_rebuild(storage, dir)?;
            let loaded = db.load()?;
            return Ok((Some(db), loaded));
        }
        // As `open` does before the file is used (its name must survive a power loss).
        storage.sync_dir(dir)?;
        let mut db = Self::open_read_only(storage, &path)?;
        if !db.check_integrity()? {
            return Err(damaged(&path, "it fails redb's integrity check"));
        }
        let loaded = db.load();
        db.close_quietly();
        Ok((None, loaded?))
    }

    /// Opens `dir/state.redb` on `storage` (creating it if missing), or rebuilds it if a failed
    /// transaction of this process left it in doubt (see [`set_in_doubt`](Self::set_in_doubt)).
    pub(crate) fn open_or_rebuild(storage: &dyn Storage, dir: &Path) -> Result<StateDb> {
        let path = dir.join(FILE);
        if storage.suspect(&path).is_none() {
            return Self::open(storage, dir);
        }
        let db = Self::rebuild(storage, dir)?;
        storage.set_suspect(&path, None);
        Ok(db)
    }

    /// Remembers for as long as this process lives that a transaction on this database failed.
    /// What the page cache now shows of the file may never reach the disk (after a failed
    /// fsync the kernel drops the pages it could not write: fsyncgate), and redb, opening it
    /// again, would take the failed commit for a committed one and make its header durable:
    /// the next open in this process [rebuilds](Self::rebuild) the file instead.
    pub(crate) fn set_in_doubt(&self, storage: &dyn Storage) {
        storage.set_suspect(&self.path, Some(0));
    }

    /// Writes the state database anew: what this process reads of its last commit (the one
    /// redb sees in the file as it is cached now) is copied into a new file, created whole
    /// (temporary name, durable commit, rename, directory sync), which replaces the old one.
    /// The copy is durable whatever became of the old file's unsynced pages, and it is a
    /// checkpoint that was valid when written: its position was durable in the log first.
    pub(crate) fn rebuild(storage: &dyn Storage, dir: &Path) -> Result<StateDb> {
        let path = dir.join(FILE);
        let tmp = dir.join(TMP_FILE);
        remove_tmp(storage, dir, &storage.list(dir)?)?;
        let mut src = Self::open_read_only(storage, &path)?;
        let checked = src.check_integrity();
        if !matches!(checked, Ok(true)) {
            src.close_quietly();
            checked?;
            return Err(damaged(&path, "it fails redb's integrity check"));
        }
        let file = match storage.open(&tmp, true) {
            Ok(f) => f,
            Err(e) => {
                src.close_quietly();
                return Err(e.into());
            }
        };
        let copied = catch_unwind(AssertUnwindSafe(|| {
            let db = Self::builder().create_with_backend(RedbBackend::unlimited(file))?;
            let from = src.db.begin_read()?;
            let to = db.begin_write()?;
            copy_table(&from, &to, META)?;
            copy_table(&from, &to, QUEUES)?;
            copy_table(&from, &to, MESSAGES)?;
            copy_table(&from, &to, PAYLOADS)?;
            copy_table(&from, &to, DEDUP)?;
            to.commit()?;
            drop(from);
            db.close()?;
            Ok::<_, redb::Error>(())
        }));
        src.close_quietly();
        match copied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(write_err(&tmp, e)),
            Err(_) => return Err(damaged(&path, "redb panicked copying it")),
        }
        storage.rename(&tmp, &path)?;
        storage.sync_dir(dir)?;
        Self::open(storage, dir)
    }

    /// Opens `dir/state.redb` on `storage`, creating it whole if it does not exist. A leftover
    /// temporary file of an interrupted creation is removed first.
    pub(crate) fn open(storage: &dyn Storage, dir: &Path) -> Result<StateDb> {
        let path = dir.join(FILE);
        let tmp = dir.join(TMP_FILE);
        remove_tmp(storage, dir, &storage.list(dir)?)?;
        let file = match storage.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = storage.open(&tmp, true)?;
                let made = catch_unwind(AssertUnwindSafe(|| {
                    let db = Self::builder().create_with_backend(RedbBackend::unlimited(file))?;
                    let tx = db.begin_write()?;
                    {
                        let mut meta = tx.open_table(META)?;
                        meta.insert("version", VERSION.to_le_bytes().as_slice())?;
                    }
                    tx.commit()?;
                    Ok::<_, redb::Error>(())
                }));
                match made {
                    Ok(Ok(())) => {}
                    Ok(Err(redb::Error::Io(e))) => return Err(Error::Io(e)),
                    Ok(Err(e)) => return Err(Error::Io(std::io::Error::other(e.to_string()))),
                    Err(_) => return Err(damaged(&tmp, "redb panicked creating it")),
                }
                storage.rename(&tmp, &path)?;
                storage.sync_dir(dir)?;
                storage.open(&path, false)?
            }
            Err(e) => return Err(e.into()),
        };
        // The file may be one whose creation or rebuild failed at its directory sync: its name
        // would not survive a power loss, and the log states checkpoints made in it (anchors),
        // so that a lost name would make the store refuse to open. The directory is synced
        // before the database is used.
        storage.sync_dir(dir)?;
        // redb would make a new database in an empty file: here that is a lost one.
        if file.len()? == 0 {
            return Err(damaged(&path, "the file is empty"));
        }
        precheck(storage, &path)?;
        let limit = no_limit();
        let backend = RedbBackend::new(file, Arc::clone(&limit));
        let opened =
            catch_unwind(AssertUnwindSafe(|| Self::builder().create_with_backend(backend)));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => {
                return Err(io_err(&path, e))
            }
            Ok(Err(e)) => return Err(damaged(&path, e)),
            Err(_) => return Err(damaged(&path, "redb panicked opening it")),
        };
        // The pre-check verified the pages; redb's integrity check says whether the file is as
        // redb left it. A committed checkpoint that fails it cannot be given up for an earlier
        // one (the segments it covered may be gone): that is damage too.
        let mut db = StateDb { db, path, limit };
        if !db.check_integrity()? {
            return Err(damaged(&db.path, "it fails redb's integrity check"));
        }
        Ok(db)
    }

    /// Opens the state database at `path` on `storage` for reading only, as `verify` does: the
    /// file is never written, created, removed or locked, so it may be open in a store at the
    /// same time; what redb writes (the repair of a database that store holds open, or one not
    /// shut down cleanly) stays in memory. Use it with [`load`](Self::load),
    /// [`payload`](Self::payload) and [`check_integrity`](Self::check_integrity).
    pub(crate) fn open_read_only(storage: &dyn Storage, path: &Path) -> Result<StateDb> {
        let file = storage.open_read(path)?;
        // redb would make a new database in an empty file: here that is a lost one.
        if file.len()? == 0 {
            return Err(damaged(path, "the file is empty"));
        }
        precheck(storage, path)?;
        let backend = ReadOnlyBackend::new(file)?;
        let opened =
            catch_unwind(AssertUnwindSafe(|| Self::builder().create_with_backend(backend)));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => {
                return Err(io_err(path, e))
            }
            Ok(Err(e)) => return Err(damaged(path, e)),
            Err(_) => return Err(damaged(path, "redb panicked opening it")),
        };
        Ok(StateDb { db, path: path.to_owned(), limit: no_limit() })
    }

    /// Runs redb's integrity check (every page checksum of the committed trees): `Ok(true)`
    /// when it passes, `Ok(false)` when it failed but redb could repair it (by going back to an
    /// earlier commit). Meant for a database opened with
    /// [`open_read_only`](Self::open_read_only): on it, the repair stays in memory.
    pub(crate) fn check_integrity(&mut self) -> Result<bool> {
        let path = self.path.clone();
        let db = &mut self.db;
        match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
            Ok(Ok(clean)) => Ok(clean),
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => {
                Err(io_err(&path, e))
            }
            Ok(Err(e)) => Err(damaged(&path, e)),
            Err(_) => Err(damaged(&path, "redb panicked checking it")),
        }
    }

    /// Closes the database; a panic in redb while it does is caught (and ignored: a database
    /// opened read-only has nothing to lose).
    pub(crate) fn close_quietly(self) {
        let _ = catch_unwind(AssertUnwindSafe(move || drop(self)));
    }

    fn builder() -> redb::Builder {
        let mut b = redb::Database::builder();
        b.set_cache_size(CACHE_BYTES);
        b
    }

    /// Reads the whole checkpoint.
    pub(crate) fn load(&self) -> Result<Loaded> {
        let path = &self.path;
        let read = catch_unwind(AssertUnwindSafe(|| self.load_inner()));
        match read {
            Ok(Ok(Ok(l))) => Ok(l),
            Ok(Ok(Err(why))) => Err(damaged(path, why)),
            Ok(Err(redb::Error::Io(e))) => Err(io_err(path, e)),
            Ok(Err(e)) => Err(damaged(path, e)),
            Err(_) => Err(damaged(path, "redb panicked reading it")),
        }
    }

    fn load_inner(&self) -> std::result::Result<std::result::Result<Loaded, String>, redb::Error> {
        let tx = self.db.begin_read()?;
        let mut out = Loaded::default();
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Ok(out)),
            Err(e) => return Err(e.into()),
        };
        let get = |k: &str| -> std::result::Result<Option<Vec<u8>>, redb::Error> {
            Ok(meta.get(k)?.map(|v| v.value().to_vec()))
        };
        match get("version")? {
            Some(v) if READS.iter().any(|r| v == r.to_le_bytes()) => {}
            Some(v) => return Ok(Err(format!("unknown state version {v:?}"))),
            None => return Ok(Err("no version".into())),
        }
        let u64_of = |v: Option<Vec<u8>>| v.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes);
        out.checkpoint = match get("checkpoint")? {
            None => 0,
            Some(v) => match u64_of(Some(v)) {
                Some(c) => c,
                None => return Ok(Err("bad checkpoint position".into())),
            },
        };
        out.store_id = get("store_id")?.and_then(|v| v.try_into().ok()).map(u128::from_le_bytes);
        out.epoch = get("epoch")?.and_then(|v| v.try_into().ok()).map_or(0, u32::from_le_bytes);
        if let Some(t) = open_read(&tx, QUEUES)? {
            for item in t.iter()? {
                let (k, v) = item?;
                let (n, row) = (k.value(), QueueRow::decode(v.value()));
                match row {
                    Some(row) if n as usize == out.queues.len() => out.queues.push(row),
                    _ => return Ok(Err(format!("bad catalog row {n}"))),
                }
            }
        }
        if let Some(t) = open_read(&tx, MESSAGES)? {
            for item in t.iter()? {
                let (k, v) = item?;
                match Row::decode(v.value()) {
                    Some(row) => out.rows.push((k.value(), row)),
                    None => return Ok(Err(format!("bad row of message {:x}", k.value()))),
                }
            }
        }
        if let Some(t) = open_read(&tx, DEDUP)? {
            for item in t.iter()? {
                let (k, v) = item?;
                let (q, key) = k.value();
                let (id, until) = v.value();
                out.dedup.push(q, key, id, until);
            }
        }
        if let Some(t) = open_read(&tx, SNAPSHOT)? {
            out.snapshot = match read_snapshot(&t, out.checkpoint)? {
                Ok(s) => s,
                Err(why) => return Ok(Err(why)),
            };
        }
        Ok(Ok(out))
    }

    /// Writes one checkpoint in one durable transaction.
    pub(crate) fn apply(&self, d: &Delta) -> Result<()> {
        let path = &self.path;
        let done = catch_unwind(AssertUnwindSafe(|| self.apply_inner(d)));
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(path, e)),
            Err(_) => Err(damaged(path, "redb panicked writing it")),
        }
    }

    fn apply_inner(&self, d: &Delta) -> std::result::Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("version", VERSION.to_le_bytes().as_slice())?;
            meta.insert("checkpoint", d.checkpoint.to_le_bytes().as_slice())?;
            meta.insert("store_id", d.store_id.to_le_bytes().as_slice())?;
            meta.insert("epoch", d.epoch.to_le_bytes().as_slice())?;
            let mut queues = tx.open_table(QUEUES)?;
            for (n, q) in d.queues.iter().enumerate() {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                let bytes = q.encode();
                let same = queues.get(n)?.is_some_and(|v| v.value() == bytes.as_slice());
                if !same {
                    queues.insert(n, bytes.as_slice())?;
                }
            }
            let mut rows = tx.open_table(MESSAGES)?;
            let mut payloads = tx.open_table(PAYLOADS)?;
            if d.full {
                let put: std::collections::HashSet<u64> = d.put.iter().map(|p| p.0).collect();
                let mut stale = Vec::new();
                for item in rows.iter()? {
                    let id = item?.0.value();
                    if !d.keep.contains(&id) && !put.contains(&id) {
                        stale.push(id);
                    }
                }
                for id in stale {
                    rows.remove(id)?;
                    payloads.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
                }
            }
            for &id in &d.delete {
                rows.remove(id)?;
                payloads.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
            }
            for (id, row, payload) in &d.put {
                rows.insert(id, row.encode().as_slice())?;
                if let Some(p) = payload {
                    for (n, chunk) in p.chunks(CHUNK).enumerate() {
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        payloads.insert((*id, n), chunk)?;
                    }
                }
            }
            let mut dedup = tx.open_table(DEDUP)?;
            if d.full {
                dedup.retain(|_, _| false)?;
            }
            for (q, key) in &d.dedup_delete {
                dedup.remove((*q, &key[..]))?;
            }
            for (q, key, id, until) in d.dedup_put.iter() {
                dedup.insert((q, key), (id, until))?;
            }
            // The snapshot is replaced whole, or dropped when this checkpoint has none (its
            // open then replays the log from its anchors).
            let mut snap = tx.open_table(SNAPSHOT)?;
            snap.retain(|_, _| false)?;
            if let Some(s) = &d.snapshot {
                snap.insert(SNAPSHOT_HEAD, s.encode_head().as_slice())?;
                for (n, q) in s.queues.iter().enumerate() {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    snap.insert(n, q.encode().as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the snapshot of the index, as a database written before snapshots has none:
    /// the next open replays the log from its anchors (for tests that compare the two).
    #[cfg(feature = "testing")]
    pub(crate) fn drop_snapshot(&self) -> Result<bool> {
        let run = || -> std::result::Result<bool, redb::Error> {
            let tx = self.db.begin_write()?;
            let had = {
                let mut snap = tx.open_table(SNAPSHOT)?;
                let had = !redb::ReadableTableMetadata::is_empty(&snap)?;
                snap.retain(|_, _| false)?;
                had
            };
            tx.commit()?;
            Ok(had)
        };
        run().map_err(|e| write_err(&self.path, e))
    }

    /// Counts one more member in queue 0's run of the snapshot, as a bug could (for tests of
    /// `verify`'s check of it); false if there is no snapshot.
    #[cfg(feature = "testing")]
    pub(crate) fn skew_snapshot(&self) -> Result<bool> {
        let run = || -> std::result::Result<bool, redb::Error> {
            let tx = self.db.begin_write()?;
            let skewed = {
                let mut snap = tx.open_table(SNAPSHOT)?;
                let q = snap.get(0)?.and_then(|v| QueueSnap::decode(v.value()));
                match q {
                    Some(mut q) => {
                        q.run_count += 1;
                        snap.insert(0, q.encode().as_slice())?;
                        true
                    }
                    None => false,
                }
            };
            tx.commit()?;
            Ok(skewed)
        };
        run().map_err(|e| write_err(&self.path, e))
    }

    /// The payload of relocated message `id`, checked against its CRC.
    pub(crate) fn payload(&self, id: u64, crc: u32, len: u32) -> Result<Vec<u8>> {
        let path = &self.path;
        let read = catch_unwind(AssertUnwindSafe(|| -> std::result::Result<_, redb::Error> {
            let tx = self.db.begin_read()?;
            let Some(t) = open_read(&tx, PAYLOADS)? else { return Ok(None) };
            let mut out = Vec::with_capacity(len as usize);
            let mut chunks = 0;
            for item in t.range((id, 0)..=(id, u32::MAX))? {
                let (k, v) = item?;
                if k.value().1 != chunks {
                    return Ok(None);
                }
                out.extend_from_slice(v.value());
                chunks += 1;
            }
            Ok((chunks > 0 || len == 0).then_some(out))
        }));
        let bytes = match read {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => return Err(damaged(path, format!("message {id:x} has no payload"))),
            Ok(Err(e)) => return Err(write_err(path, e)),
            Err(_) => return Err(damaged(path, "redb panicked reading it")),
        };
        if bytes.len() != len as usize || crc32c::crc32c(&bytes) != crc {
            return Err(damaged(path, format!("the payload of message {id:x} fails its checksum")));
        }
        Ok(bytes)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lets redb grow the file to at most `bytes` (`u64::MAX`: no limit); a transaction that
    /// needs more fails with an I/O error whose source is
    /// [`QuotaRefused`](crate::storage::redb_backend::QuotaRefused).
    pub(crate) fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Release);
    }
}

/// Checks that redb can open the state database at `path` without reading a byte that no
/// checksum vouches for, before it is opened for use (or read by `verify`).
///
/// A plain redb open trusts the file. If the last commit was made in two phases (as a clean
/// close makes it) it looks up the allocator state that commit saved in the system tree and
/// loads it, verifying no checksum on the way: a damaged system-tree leaf panics (a table name
/// that is not UTF-8, an unknown type class: `unreachable!`, an entry offset out of the page),
/// and so does a damaged allocator state in builds with debug assertions ("Malformed
/// allocator state"); such builds also walk the data tree at open, unverified. A read before
/// redb's integrity check (as `verify` loads the checkpoint) panics on any damaged leaf.
///
/// Opened with redb's integrity check on open, as here, redb instead verifies the checksum of
/// every page of the committed trees, each page's before it reads what the page points to,
/// starting from the root checksums in the commit slot (which has its own), and rebuilds the
/// allocator state from them; damage is an error. This open is made on a [`ReadOnlyBackend`],
/// so the repair it commits stays in memory. When it passes, every page the open for use reads
/// is one it verified: the same header picks the same commit, and the saved allocator state is
/// a table of the system tree. The open for use then judges the file as before
/// ([`check_integrity`](StateDb::check_integrity) refuses one that is not as redb left it).
///
/// Costs one more pass over the file's committed pages per open (about 1 ms per MiB of
/// `state.redb` from the page cache), nothing per checkpoint. Panics of redb are still caught
/// here and in the open for use: this check is the first line, not the only one.
fn precheck(storage: &dyn Storage, path: &Path) -> Result<()> {
    let backend = ReadOnlyBackend::new(storage.open_read(path)?)?;
    let mut builder = StateDb::builder();
    builder.set_check_integrity_on_open(true);
    let opened = catch_unwind(AssertUnwindSafe(|| builder.create_with_backend(backend)));
    match opened {
        Ok(Ok(db)) => {
            // Its close commits the allocator state, to memory.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
            Ok(())
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => Err(io_err(path, e)),
        Ok(Err(e)) => Err(damaged(path, e)),
        Err(_) => Err(damaged(path, "redb panicked checking it")),
    }
}

fn no_limit() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(u64::MAX))
}

/// Removes the temporary file of an interrupted creation or rebuild, if `names` (of `dir`)
/// holds one.
fn remove_tmp(storage: &dyn Storage, dir: &Path, names: &[String]) -> Result<()> {
    if names.iter().any(|n| n == TMP_FILE) {
        storage.remove(&dir.join(TMP_FILE))?;
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// Copies every row of table `def` (if `from` has it) into `to`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> std::result::Result<(), redb::Error> {
    let Some(src) = open_read(from, def)? else { return Ok(()) };
    let mut dst = to.open_table(def)?;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// A redb error writing (or reading, for a write) the state database at `path`. I/O errors,
/// including one redb latched earlier, are I/O errors: the file may be fine.
fn write_err(path: &Path, e: redb::Error) -> Error {
    match e {
        redb::Error::Io(e) => Error::Io(e),
        redb::Error::Corrupted(why) => damaged(path, why),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => Error::Io(std::io::Error::other(
            "an earlier I/O error on the state database: it is reopened at the next use",
        )),
        e => Error::Io(std::io::Error::other(format!("writing the state database failed: {e}"))),
    }
}

/// The snapshot of the state at `checkpoint`, if the table holds one of it (one of another
/// position, written by an older version of wharf that knew no snapshots and then moved the
/// checkpoint, is ignored); `Err` if its bytes are not a snapshot.
fn read_snapshot(
    t: &redb::ReadOnlyTable<u32, &[u8]>,
    checkpoint: u64,
) -> std::result::Result<std::result::Result<Option<Snapshot>, String>, redb::Error> {
    let Some(head) = t.get(SNAPSHOT_HEAD)? else { return Ok(Ok(None)) };
    let Some((mut snap, queues)) = Snapshot::decode_head(head.value()) else {
        return Ok(Err("bad snapshot".into()));
    };
    if snap.position != checkpoint {
        return Ok(Ok(None));
    }
    for n in 0..queues {
        let Some(q) = t.get(n)?.and_then(|v| QueueSnap::decode(v.value())) else {
            return Ok(Err(format!("bad snapshot of queue {n}")));
        };
        snap.queues.push(q);
    }
    Ok(Ok(Some(snap)))
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> std::result::Result<Option<redb::ReadOnlyTable<K, V>>, redb::Error> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
