//! Reading the state database for `verify` (and salvage): [`read_state`], and [`corruption`],
//! which turns an error of a check into a listed problem.

use std::path::Path;

use crate::checkpoint::Loaded;
use crate::error::{Corruption, Error};
use crate::storage::Storage;

use super::report::StateDbCheck;

/// Times the state database is read when it changes while it is read and shows problems (a
/// store open elsewhere committed a checkpoint meanwhile).
pub(crate) const STATE_ATTEMPTS: usize = 3;
/// Bytes at the start of the state database that every redb commit rewrites (its header).
const STATE_HEADER: u64 = 4096;

/// An error of a check as a problem of `file` (or of the file the error names).
pub(crate) fn corruption(file: &Path, e: Error) -> Corruption {
    match e {
        Error::Corrupted(c) => c,
        Error::UnsupportedVersion { file, found, supported } => Corruption {
            file,
            offset: 0,
            reason: format!(
                "format version {found}, newer than the {supported} this build reads: written by a \
                 newer wharf"
            ),
        },
        Error::ForeignSegment(file) => Corruption {
            file,
            offset: 0,
            reason: "segment of another store: its store id is not the one of the first segment \
                     of the log"
                .into(),
        },
        Error::Io(e) => {
            Corruption { file: file.to_owned(), offset: 0, reason: format!("read error: {e}") }
        }
        e => Corruption { file: file.to_owned(), offset: 0, reason: e.to_string() },
    }
}

/// What reading the state database found.
pub(crate) struct StateCheck {
    pub state: StateDbCheck,
    /// Its checkpoint, when it could be read.
    pub loaded: Option<Loaded>,
    pub problems: Vec<Corruption>,
    /// It changed each time it was read: a store open elsewhere is writing it.
    pub changing: bool,
}

/// Reads and checks the state database at `path`. A store open elsewhere may commit a
/// checkpoint while it is read, and pages of the commit read may then be reused under it: when
/// problems are found and redb's header changed meanwhile, it is read again.
pub(crate) fn read_state(storage: &dyn Storage, path: &Path) -> StateCheck {
    for _ in 0..STATE_ATTEMPTS {
        let before = state_header(storage, path);
        let check = check_state(storage, path);
        if check.problems.is_empty() || state_header(storage, path) == before {
            return check;
        }
    }
    let why = "it changed each time it was read (a store open elsewhere is writing it)";
    let state = StateDbCheck::NotOpened(why.into());
    StateCheck { state, loaded: None, problems: Vec::new(), changing: true }
}

/// The first bytes of the state database, which every commit rewrites (`None`: unreadable).
fn state_header(storage: &dyn Storage, path: &Path) -> Option<Vec<u8>> {
    let file = storage.open_read(path).ok()?;
    let len = usize::try_from(file.len().ok()?.min(STATE_HEADER)).ok()?;
    let mut bytes = vec![0u8; len];
    file.read_at(&mut bytes, 0).ok()?;
    Some(bytes)
}

/// Opens the state database read-only (redb's writes stay in memory), loads its checkpoint and
/// checks every relocated payload, the queues its rows and dedup keys name, and redb's page
/// checksums.
fn check_state(storage: &dyn Storage, path: &Path) -> StateCheck {
    let failed = |e: Error| {
        let c = corruption(path, e);
        StateCheck {
            state: StateDbCheck::NotOpened(c.reason.clone()),
            loaded: None,
            problems: vec![c],
            changing: false,
        }
    };
    let mut db = match crate::checkpoint::StateDb::open_read_only(storage, path) {
        Ok(db) => db,
        Err(e) => return failed(e),
    };
    let loaded = match db.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            db.close_quietly();
            return failed(e);
        }
    };
    let mut problems = Vec::new();
    let mut problem = |why: String| {
        problems.push(Corruption { file: path.to_owned(), offset: 0, reason: why });
    };
    let queues = loaded.queues.len();
    for (id, row) in &loaded.rows {
        if row.queue as usize >= queues {
            problem(format!(
                "relocated message {id:016x} is in queue {}, which its catalog does not hold",
                row.queue
            ));
        }
        // One payload in memory at a time.
        if let Err(e) = db.payload(*id, row.crc, row.len) {
            problem(corruption(path, e).reason);
        }
    }
    for (q, _, id, _) in loaded.dedup.iter() {
        if q as usize >= queues {
            problem(format!(
                "a dedup key of message {id:016x} is in queue {q}, which its catalog does not hold"
            ));
        }
    }
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => problem(
            "the state database fails redb's integrity check (an earlier commit is intact)".into(),
        ),
        Err(e) => problem(corruption(path, e).reason),
    }
    db.close_quietly();
    StateCheck { state: StateDbCheck::Opened, loaded: Some(loaded), problems, changing: false }
}
