//! wharf's test oracles, one copy for `tests/` and `fuzz/`: which states of a store may survive
//! a crash ([`oracle`]), what every call of the job semantics must return ([`jobs`]), and small
//! helpers on a store's files ([`files`]).
//!
//! They drive a store through its public API only, so this crate needs none of wharf's
//! features; the simulated disk, scenarios and operation languages stay with their tests.
#![allow(clippy::unwrap_used)] // a failed check must abort

pub mod files;
pub mod jobs;
pub mod oracle;

pub use files::segments;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest error text a message keeps (`nack_with(..error)`, `dead_letter`).
pub const MAX_ERROR_LEN: usize = 4096;

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `t` in Unix milliseconds (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// The error text a message keeps of `s`: its first [`MAX_ERROR_LEN`] bytes.
pub fn clip(s: &str) -> &str {
    &s[..s.len().min(MAX_ERROR_LEN)]
}

/// The dead-letter queue of `queue`.
pub fn dlq(queue: &str) -> String {
    format!("{queue}.dlq")
}
