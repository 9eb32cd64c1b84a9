//! Tests on the simulated disk (feature `testing`): deterministic crash-point enumeration,
//! fault sweeps with call-site coverage, and a model-based test of random operations; the log
//! and the checkpointer's `state.redb` crash in one order (`checkpoint.rs`).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod checkpoint;
mod crash_points;
mod jobs;
mod lapse;
mod model;
mod oracle;
mod quota;
mod recycle;
mod redb_crash;
mod salvage;
mod state_damage;
mod threads;
