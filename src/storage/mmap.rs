//! The one place where wharf creates a memory map, and the only `unsafe` code in the crate.
//!
//! A mapping of a segment is sound because these invariants hold for as long as it lives:
//!
//! 1. **Exclusive directory.** The store's directory is locked (`LOCK`, an exclusive `flock`)
//!    by the one handle that maps its files, so no other wharf process writes them. Edits by
//!    other programs are outside the contract (see `docs/format.md`, "Assumptions").
//! 2. **Never shrunk.** A segment is preallocated to its final length before it is mapped and
//!    is never truncated or shortened afterwards: recovery repairs a torn tail by writing zeros
//!    in place, and a deleted segment is only unlinked, which keeps the pages of a live mapping.
//!    So every byte of the mapping stays backed by the file, and reading it cannot fault with
//!    `SIGBUS` unless the disk itself fails to read (a documented limit of the map read mode).
//! 3. **Read-only, length taken once.** The map is read-only and covers exactly the length the
//!    file had when it was mapped. Bytes may change underneath it only through `pwrite` by this
//!    process, and readers look only at bytes below the log's written end, each record checked
//!    against its CRC-32C before use, so a concurrent write never yields wrong data.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapOptions};

/// Maps all of `file` read-only.
pub(super) fn map_read_only(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is a segment of a locked store directory, preallocated and never
    // shrunk while mapped, and only read below its written end (invariants 1–3 above).
    unsafe { MmapOptions::new().map(file) }
}
