//! Row 3: what an idle store takes on disk.
//!
//! Every file under the store's directory, two ways: the sum of file sizes, and the blocks
//! allocated to them (`st_blocks * 512`: preallocated space counts, holes do not). Measured
//! for a brand new store after open + close, the same while open (idle 2 s), and a store
//! through which `volume` bytes of 4 KiB messages were pushed and acked (batches of 100:
//! `push_batch`, `pop_batch`, an ack each; durability `None`), while open after 2 s idle and
//! after close. The target is 8 MiB.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use wharf::{Durability, Wharf};

use crate::common::{BoxResult, Report};
use crate::Tier;

/// How long a store sits idle before it is measured while open.
const IDLE: Duration = Duration::from_secs(2);
const LARGE: usize = 4096;

/// Bytes of every file under `dir`: `(sizes, allocated)`.
pub fn usage(dir: &Path) -> BoxResult<(u64, u64)> {
    let (mut len, mut blocks) = (0, 0);
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            let (l, b) = usage(&e.path())?;
            len += l;
            blocks += b;
        } else {
            len += m.len();
            blocks += m.blocks() * 512;
        }
    }
    Ok((len, blocks))
}

fn record(r: &mut Report, what: &str, dir: &Path) -> BoxResult<()> {
    let (len, blocks) = usage(dir)?;
    r.record(&format!("disk {what} size"), "MiB", len as f64 / f64::from(1u32 << 20));
    r.record(&format!("disk {what} allocated"), "MiB", blocks as f64 / f64::from(1u32 << 20));
    Ok(())
}

fn builder() -> wharf::WharfBuilder {
    Wharf::builder().push_durability(Durability::None).ack_durability(Durability::None)
}

/// Row 3, with `volume` bytes pushed and acked for the used store.
pub fn measure(r: &mut Report, tier: &Tier, volume: u64) -> BoxResult<()> {
    eprintln!("disk: a new store");
    let dir = tier.tempdir()?;
    builder().open(dir.path())?.close()?;
    record(r, "new, closed", dir.path())?;
    let w = builder().open(dir.path())?;
    std::thread::sleep(IDLE);
    record(r, "new, open and idle", dir.path())?;
    w.close()?;
    drop(dir);

    eprintln!("disk: {} MiB of 4 KiB messages pushed and acked", volume >> 20);
    let dir = tier.tempdir()?;
    let w = builder().open(dir.path())?;
    let q = w.queue("q")?;
    let batch = vec![[0x5Au8; LARGE]; 100];
    let mut done = 0u64;
    while done < volume {
        q.push_batch(&batch)?;
        for d in q.pop_batch(batch.len(), Duration::ZERO)? {
            d.ack()?;
        }
        done += (batch.len() * LARGE) as u64;
    }
    if q.depth()?.ready != 0 {
        return Err("messages left after the workload".into());
    }
    std::thread::sleep(IDLE);
    record(r, "used, open and idle", dir.path())?;
    drop(q);
    w.close()?;
    record(r, "used, closed", dir.path())?;
    Ok(())
}
