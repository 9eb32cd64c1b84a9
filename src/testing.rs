//! Test support (feature `testing`): the simulated disk and deterministic hooks, for wharf's
//! own crash tests and fuzz targets. Not a stable API.

use std::path::Path;
use std::sync::Arc;

pub use crate::storage::sim::{CrashPolicy, Fault, OpKind, Rng, SimFs, SiteCount};
use crate::{Result, Wharf, WharfBuilder};

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

/// Runs the background thread's duties once, now: a spare segment, a sync of everything
/// staged, deletion of settled segments.
///
/// # Errors
/// Whatever the storage returns; a failed write or sync poisons the store.
pub fn maintain(wharf: &Wharf) -> Result<()> {
    wharf.shared().maintain()
}
