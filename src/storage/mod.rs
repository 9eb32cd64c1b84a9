//! The crate-private storage trait: every file operation wharf makes goes through it.
//!
//! Invariant: nothing outside this module touches `std::fs`, so a simulated disk can stand in
//! for the real one and see (and fail, or drop) every write, sync and directory change.
//!
//! The traits are in `traits.rs`; this file only declares the modules and re-exports.

#[cfg(test)]
pub(crate) mod faulty;
mod mmap;
mod real;
pub(crate) mod redb_backend;
#[cfg(feature = "testing")]
pub(crate) mod sim;
mod traits;

pub(crate) use real::RealFs;
pub(crate) use traits::{LockGuard, MapView, Storage, StorageFile};
