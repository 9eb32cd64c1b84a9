//! A simulated disk: deterministic, in memory, with the failure modes of a real one.
//!
//! Invariant: every file keeps what reads see (`data`) apart from what a power loss would keep
//! (`durable`, as of its last successful sync), and every directory keeps its visible entries
//! apart from its durable ones (as of its last directory sync). A crash image is built from the
//! durable state plus a policy's choice of what was not yet synced; nothing else survives.
//!
//! Every call counts as one operation with a global index and the caller's source location
//! (`#[track_caller]` through the storage traits), which is what lets tests crash at every
//! operation index and prove that every call site received an injected error.
//!
//! The files: `fault.rs` holds the knobs a test turns (operation kinds, faults, crash
//! policies, the generator), `disk.rs` the machine's state and its bookkeeping of every
//! operation, `fs.rs` the `SimFs` handle and its directory operations, `file.rs` an open file,
//! `crash.rs` the crash images.

mod crash;
mod disk;
mod fault;
mod file;
mod fs;

pub use fault::{CrashPolicy, Fault, OpKind, Rng, SiteCount};
pub use fs::SimFs;
