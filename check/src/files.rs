//! A store's files as the tests look at them from outside.

use std::path::{Path, PathBuf};

/// The segment files of the store in `dir`, oldest first.
///
/// # Panics
/// If `dir/log` cannot be listed.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
