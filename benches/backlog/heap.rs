//! Row 2: heap per unsettled message, by the kind of message.
//!
//! Each kind runs in a child process: an empty store is opened (durability `None`, leases of a
//! day), its `RssAnon` taken, `n` messages of 128 B pushed into one queue in batches of 1,000
//! and made durable (`Wharf::sync`), and `RssAnon` taken again: the growth divided by `n` is
//! the heap per message after the pushes. The child then exits without closing (the store
//! as a crash leaves it); another child reopens it, and the growth of its `RssAnon` over the
//! open, divided by `n`, is the heap per message after a reopen (as `benches/footprint.rs`
//! measures it: the empty store's own buffers are a few bytes per message at `n` = 1 M).
//!
//! - `fifo`: plain pushes.
//! - `delayed`: `not_before` a day ahead (all due at the same time).
//! - `priority`: a mixed queue: `n` plain messages first, then `n` more with priorities 1 to 9
//!   in turn, batch by batch; the heap of the second `n`. After the reopen, the heap of all
//!   `2n` less `n` times the `fifo` kind's figure of the same run.
//! - `leased`: `n` plain pushes, then all popped (`pop_batch` of 1,000) and never settled;
//!   each `Delivery` is forgotten (`mem::forget`), so that the child's own handles cost
//!   nothing and the lease stays. After a reopen leases are gone (they are in memory only):
//!   the messages are ready again, each with a recorded attempt.
//! - `keyed`: single pushes, each with its own 14-byte `dedup_key` (`job-0000000042`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use wharf::{Durability, PushOptions, Wharf};

use crate::common::{nums, rss, run_child, BoxResult, Report};
use crate::{in_batches, Tier, SMALL};

/// A delay that outlasts any run.
const DAY: Duration = Duration::from_secs(86_400);
const BATCH: usize = 1000;

/// The kinds of message, in the order they are measured (`fifo` first: `priority` uses it).
pub const KINDS: [&str; 5] = ["fifo", "delayed", "priority", "leased", "keyed"];

fn builder() -> wharf::WharfBuilder {
    Wharf::builder()
        .push_durability(Durability::None)
        .ack_durability(Durability::None)
        .visibility_timeout(DAY)
}

/// Pushes `n` messages into `q` in batches, `opts(i)` giving the options of the `i`-th batch.
fn push_n(q: &wharf::Queue, n: u64, opts: impl Fn(u64) -> PushOptions) -> BoxResult<()> {
    in_batches(n, |i, batch| Ok(q.push_batch_with(batch, opts(i)).map(drop)?))
}

/// Child: `n` messages of `kind` into a fresh store in `dir`; prints the heap they added, in
/// bytes, and exits without closing.
pub fn child_push(kind: &str, dir: &Path, n: u64) -> BoxResult<()> {
    let w = builder().open(dir)?;
    let q = w.queue("q")?;
    let mut base = rss()?;
    match kind {
        "fifo" => push_n(&q, n, |_| PushOptions::new())?,
        "delayed" => {
            let due = SystemTime::now() + DAY;
            push_n(&q, n, |_| PushOptions::new().not_before(due))?;
        }
        "priority" => {
            push_n(&q, n, |_| PushOptions::new())?;
            w.sync()?;
            base = rss()?;
            push_n(&q, n, |i| PushOptions::new().priority(1 + (i % 9) as u8))?;
        }
        "leased" => {
            push_n(&q, n, |_| PushOptions::new())?;
            // Written before the pops, so that each payload is a slice of the map, not a copy.
            w.sync()?;
            let mut popped = 0;
            while popped < n {
                let got = q.pop_batch(BATCH, Duration::ZERO)?;
                if got.is_empty() {
                    return Err(format!("popped {popped} of {n}").into());
                }
                popped += got.len() as u64;
                // The lease outlives its handle: a dropped `Delivery` would give it back.
                got.into_iter().for_each(std::mem::forget);
            }
        }
        "keyed" => {
            let payload = [0x42u8; SMALL];
            for i in 0..n {
                q.push_with(payload, PushOptions::new().dedup_key(format!("job-{i:010}")))?;
            }
        }
        _ => return Err(format!("no kind {kind:?}").into()),
    }
    w.sync()?;
    let grown = rss()?.saturating_sub(base);
    println!("{grown}");
    // The store as a crash leaves it (everything synced): a close would have to wait for the
    // forgotten deliveries' handles.
    std::process::exit(0);
}

/// Child: reopens `dir`; prints the heap the open added, in bytes, and the messages found.
pub fn child_open(dir: &Path) -> BoxResult<()> {
    let before = rss()?;
    let w = builder().open(dir)?;
    let d = w.queue("q")?.depth()?;
    let after = rss()?;
    println!("{} {}", after.saturating_sub(before), d.ready + d.delayed + d.in_flight);
    w.close()?;
    Ok(())
}

/// Row 2: every kind at `n` messages; records `heap {kind} push` and `heap {kind} reopen` in
/// bytes per message (and `{name}` as a prefix instead of `heap` when given).
pub fn measure(r: &mut Report, tier: &Tier, name: &str, kinds: &[&str], n: u64) -> BoxResult<()> {
    for kind in kinds {
        eprintln!("{name}: {n} messages, {kind}");
        let dir = tier.tempdir()?;
        let d = dir.path().to_str().ok_or("path")?;
        let pushed = nums(&run_child(&["heap", kind, d, &n.to_string()], false)?)?;
        let opened = nums(&run_child(&["heap-open", d], false)?)?;
        let (Some(&pushed), &[grown, found]) = (pushed.first(), &opened[..]) else {
            return Err(format!("heap children printed {pushed:?} and {opened:?}").into());
        };
        let want = if *kind == "priority" { 2 * n } else { n };
        if found as u64 != want {
            return Err(format!("{kind}: the reopen found {found} of {want} messages").into());
        }
        let reopened = if *kind == "priority" {
            grown - n as f64 * r.median(&format!("{name} fifo reopen"))?
        } else {
            grown
        };
        r.record(&format!("{name} {kind} push"), "B/msg", pushed / n as f64);
        r.record(&format!("{name} {kind} reopen"), "B/msg", reopened / n as f64);
    }
    Ok(())
}
