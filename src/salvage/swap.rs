//! Salvage's swap: the new log takes the old one's place, crash-safely.
//!
//! 1. The new segments are written in `log/` as `<base>.seg.salvage` (names an open ignores),
//!    synced, and `log/` synced (`write.rs`).
//! 2. The commit point: `salvage.swap` (the report, the damaged directory's name, the new
//!    segments' bases, a checksum) is written as `salvage.swap.tmp`, synced, renamed, and the
//!    store directory synced.
//! 3. `finish`: every other file of `log/` (old segments, `mark`, anything foreign) and
//!    `state.redb` are renamed into `damaged-<time>/`, which is synced before the directories
//!    they left; the report is written there; the new segments are renamed to `<base>.seg`;
//!    `log/` and the store directory are synced; `salvage.swap` is removed and the directory
//!    synced.
//!
//! Invariant: every step of `finish` can be repeated; every open runs it first while
//! `salvage.swap` exists (and removes `salvage.swap.tmp` and `*.seg.salvage` when it does not),
//! so a crash at any point ends in the same store with the same report.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use crate::error::{Corruption, Error, Result};
use crate::storage::Storage;

use super::report::{self, SalvageReport};
use super::write::{temp_name, SUFFIX};
use crate::checkpoint::{STATE_FILE, STATE_TMP_FILE};
use crate::log::segment_file_name;

/// The commit marker in the store directory.
pub(crate) const MARKER: &str = "salvage.swap";
const MARKER_TMP: &str = "salvage.swap.tmp";
/// The report's name in the damaged directory (or in a store made by `salvage_into`).
pub(crate) const REPORT: &str = "salvage-report.txt";

fn names(storage: &dyn Storage, dir: &Path) -> Result<Vec<String>> {
    match storage.list(dir) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Finishes a salvage interrupted after its commit point and returns its report, or removes
/// what one interrupted before it left behind.
pub(crate) fn finish_interrupted(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<SalvageReport>> {
    if names(storage, dir)?.iter().any(|n| n == MARKER) {
        return finish(storage, dir).map(Some);
    }
    remove_leftovers(storage, dir)?;
    Ok(None)
}

/// Removes the files of a salvage that crashed before its commit point.
pub(crate) fn remove_leftovers(storage: &dyn Storage, dir: &Path) -> Result<()> {
    if names(storage, dir)?.iter().any(|n| n == MARKER_TMP) {
        storage.remove(&dir.join(MARKER_TMP))?;
        storage.sync_dir(dir)?;
    }
    let log = dir.join("log");
    let stale: Vec<String> =
        names(storage, &log)?.into_iter().filter(|n| n.ends_with(SUFFIX)).collect();
    for name in &stale {
        storage.remove(&log.join(name))?;
    }
    if !stale.is_empty() {
        storage.sync_dir(&log)?;
    }
    Ok(())
}

/// A name in `dir` for the damaged files, `damaged-<unix seconds>` (made unique).
pub(crate) fn damaged_dir_name(storage: &dyn Storage, dir: &Path) -> Result<String> {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let taken = names(storage, dir)?;
    let mut name = format!("damaged-{secs}");
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("damaged-{secs}-{n}");
        n += 1;
    }
    Ok(name)
}

/// Writes a small file whole and syncs it (not its directory).
fn write_file(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    match storage.remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let file = storage.open(path, true)?;
    file.write_at(bytes, 0)?;
    file.sync_data()?;
    Ok(())
}

/// The commit point: from here on the salvage is finished by whoever opens the store next.
pub(crate) fn commit(
    storage: &dyn Storage,
    dir: &Path,
    damaged: Option<&str>,
    bases: &[u64],
    report: &SalvageReport,
) -> Result<()> {
    let text = report::encode(report, damaged, bases);
    let tmp = dir.join(MARKER_TMP);
    write_file(storage, &tmp, text.as_bytes())?;
    storage.rename(&tmp, &dir.join(MARKER))?;
    storage.sync_dir(dir)?;
    Ok(())
}

/// Reads the marker and carries out the swap it describes (again, if it was begun).
pub(crate) fn finish(storage: &dyn Storage, dir: &Path) -> Result<SalvageReport> {
    let marker = dir.join(MARKER);
    let file = storage.open_read(&marker)?;
    let mut bytes = vec![0u8; usize::try_from(file.len()?).unwrap_or(0)];
    file.read_at(&mut bytes, 0)?;
    drop(file);
    let decoded = std::str::from_utf8(&bytes).ok().and_then(report::decode).ok_or_else(|| {
        Error::Corrupted(Corruption {
            file: marker.clone(),
            offset: 0,
            reason: "the marker of an interrupted salvage cannot be read; its new log is in \
                     log/*.seg.salvage and the old files are where it left them"
                .into(),
        })
    })?;
    let log = dir.join("log");
    storage.create_dir_all(&log)?;
    let new: HashSet<String> =
        decoded.bases.iter().flat_map(|&b| [temp_name(b), segment_file_name(b)]).collect();
    let report_path = match decoded.damaged.as_deref() {
        Some(d) => {
            let aside = dir.join(d);
            let aside_log = aside.join("log");
            storage.create_dir_all(&aside_log)?;
            for name in names(storage, &log)? {
                if !new.contains(&name) {
                    storage.rename(&log.join(&name), &aside_log.join(&name))?;
                }
            }
            let top = names(storage, dir)?;
            for name in [STATE_FILE, STATE_TMP_FILE] {
                if top.iter().any(|n| n == name) {
                    storage.rename(&dir.join(name), &aside.join(name))?;
                }
            }
            // The damaged files are durable where they went before they leave where they were.
            storage.sync_dir(&aside_log)?;
            storage.sync_dir(&aside)?;
            aside.join(REPORT)
        }
        None => dir.join(REPORT),
    };
    write_file(storage, &report_path, &bytes)?;
    let present = names(storage, &log)?;
    for &b in &decoded.bases {
        let temp = temp_name(b);
        if present.contains(&temp) {
            storage.rename(&log.join(&temp), &log.join(segment_file_name(b)))?;
        }
    }
    storage.sync_dir(&log)?;
    if let Some(parent) = report_path.parent() {
        storage.sync_dir(parent)?;
    }
    storage.sync_dir(dir)?;
    storage.remove(&marker)?;
    storage.sync_dir(dir)?;
    let mut out = decoded.report;
    out.damaged_dir = decoded.damaged.map(|d| dir.join(d));
    Ok(out)
}
