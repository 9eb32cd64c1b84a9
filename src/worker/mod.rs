//! `Worker`: a pool of threads that pop a queue's messages, run a handler on each, and settle
//! each message by the handler's outcome.
//!
//! Invariant: every delivery a worker thread pops is settled by that thread exactly once (ack,
//! nack, dead letter, or release if shutdown began before its handler started), except one
//! whose handler outlives a shutdown deadline: `shutdown` ends its lease, so it is delivered
//! again, and the late outcome is discarded. While a handler runs, the pool's keeper thread
//! renews its lease; it renews a delivery only while the delivery sits in `Pool::busy`, under
//! `Inner::pool`, so never after the handler returned. Lock order: `Inner::pool` before the
//! store's lock; the only store call made while `Inner::pool` is held is the keeper's renewal,
//! which does no I/O.
//!
//! The files: `handle.rs` holds the running pool's handle (`Worker`) and its shutdown,
//! `builder.rs` the options and the start, `run.rs` the worker and keeper threads and the
//! state they share with the handle, `signal.rs` the shutdown signal handlers watch.

mod builder;
mod handle;
mod run;
mod signal;

pub use builder::{TypedWorkerBuilder, WorkerBuilder, DEFAULT_POLL_TIMEOUT};
pub use handle::{ShutdownReport, Worker, DEFAULT_DROP_DEADLINE};
pub use run::WorkerStats;
pub use signal::ShutdownSignal;
