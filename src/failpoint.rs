//! Named fail points for the crash tests: with the `failpoints` feature, `WHARF_FAILPOINT=name:n`
//! aborts the process the n-th time the point `name` is reached; without it they compile away.
//!
//! Points: `after-write-before-sync`, `after-sync-before-wake` (log/wal.rs, a synced group);
//! `segment-created-before-dir-sync` (log/segment.rs); `segment-removed-before-dir-sync`
//! (log/commit.rs, deletion); `recovery-after-zero-before-sync`, `recovery-replay` (log/recovery/);
//! `mark-created-before-dir-sync`, `mark-written-before-sync` (log/mark.rs, at a clean close);
//! `checkpoint-before-commit`, `checkpoint-after-commit` (checkpoint/run.rs, around the state
//! database's transaction).

/// Marks the fail point `name`; does nothing without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &'static str) {}

/// Marks the fail point `name`: aborts the process the n-th time it is reached when
/// `WHARF_FAILPOINT` is `name:n` (read once per process).
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &'static str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("WHARF_FAILPOINT").ok()?;
        let parsed = spec
            .rsplit_once(':')
            .and_then(|(point, n)| Some((point.to_owned(), n.parse::<u64>().ok()?)));
        if parsed.is_none() {
            eprintln!("wharf: ignoring WHARF_FAILPOINT={spec:?}: expected `name:n`");
        }
        parsed
    });
    if let Some((point, n)) = armed {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("wharf: fail point {name} reached {n} times: aborting");
            std::process::abort();
        }
    }
}
