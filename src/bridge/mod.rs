//! The AMQP bridge (feature `amqp`): a [`Forwarder`] that drains a local queue into a RabbitMQ
//! exchange with publisher confirms, and an [`Ingestor`] that stores a RabbitMQ queue's messages
//! in a local queue before acking them.
//!
//! Invariant: a local message is acked only after the broker confirmed it (`basic.ack`, not
//! returned as unroutable); a broker message is acked only after its local push is durable.
//! Everything else (a nack, a return, a timeout, a closed channel or connection, a crash) leaves
//! the message where it was, to be sent again: delivery is at least once, end to end.
//!
//! Each bridge runs on a thread of its own with a single-threaded tokio runtime it owns, so a
//! synchronous application uses it without knowing about tokio. Connections are made and
//! remade by the bridge itself, with exponential backoff and jitter (lapin's automatic
//! recovery is not used), and carry AMQP heartbeats so that a frozen broker is noticed.
//!
//! Invariant: no wait of a bridge's thread is unbounded. Every call to the broker has a timeout
//! (lapin may never resolve a call on a connection that died), and every wait is raced with the
//! stop request, so `stop` and drop return by their deadline and a short grace in any state;
//! a thread that still has not ended then is left detached, never joined. The thread's runtime
//! is shut down before it reports, which ends lapin's tasks and I/O threads with it.
//!
//! The files: `link.rs` holds what both sides share (options, backoff, the reconnect loop),
//! `wait.rs` the stop request and bounded waits, `thread.rs` the thread and its handle;
//! `forward.rs` (handle) and `publisher.rs` (thread) are the forwarder, `ingest.rs` the
//! ingestor. This file only declares them and re-exports the public names.

mod forward;
mod ingest;
mod link;
mod publisher;
mod thread;
mod wait;

pub use forward::{
    Forwarder, ForwarderBuilder, ForwarderStats, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_WINDOW,
};
pub use ingest::{
    Ingestor, IngestorBuilder, IngestorStats, DEFAULT_DEDUP_WINDOW, DEFAULT_PREFETCH,
};
pub use link::{ConnectionState, DEFAULT_HEARTBEAT, DEFAULT_STOP_DEADLINE};
pub use publisher::ForwardStopReport;
