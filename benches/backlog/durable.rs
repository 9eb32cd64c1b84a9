//! Row 4: durable bandwidth against the disk's floors, for three shapes of durable push.
//!
//! - `single 4 KiB`: one producer, `push` of 4 KiB with `Durability::Immediate`;
//! - `batch 100 × 128 B` and `batch 100 × 4 KiB`: `push_batch` of 100, `Immediate`.
//!
//! Each shape's floor does the same payload bytes per `fdatasync` with `std` only: a `pwrite`
//! of them at increasing offsets, then `File::sync_data`. The floor proper writes into a file
//! that was preallocated and then fully written once and synced (its blocks are allocated and
//! initialised: a sync commits no extent conversion); it wraps to its start at its end. The
//! floor for reference appends into a fresh `fallocate`d file, never written (every sync also
//! commits the conversion of the extents it wrote from unwritten to written, as for a fresh
//! wharf segment). Wharf pushes into a fresh store each run. Within a round every shape runs
//! floor, wharf, reference floor, each for the same time; the ratio of a round is wharf's
//! messages per second over the floor's, and the table gives the median of the rounds.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use tempfile::TempDir;
use wharf::{Durability, Wharf};

use crate::common::{fill_zeros, BoxResult, Report};
use crate::Tier;

/// A shape of durable push: messages per call and bytes per message; `acked`: each call's
/// messages are popped and acked (`Durability::None`, written with the next push) right after
/// it, so segments settle and go, and their files are recycled.
#[derive(Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub batch: usize,
    pub len: usize,
    pub acked: bool,
}

pub const SHAPES: [Shape; 5] = [
    Shape { name: "single 4 KiB", batch: 1, len: 4096, acked: false },
    Shape { name: "batch 100 × 128 B", batch: 100, len: 128, acked: false },
    Shape { name: "batch 100 × 4 KiB", batch: 100, len: 4096, acked: false },
    Shape { name: "single 4 KiB, acked", batch: 1, len: 4096, acked: true },
    Shape { name: "batch 100 × 128 B, acked", batch: 100, len: 128, acked: true },
];

/// Bytes this process has caused to be written to storage (`write_bytes` of `/proc/self/io`),
/// if the kernel tells.
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|n| n.trim().parse().ok())
}

fn create(path: &Path) -> BoxResult<File> {
    Ok(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?)
}

/// The floor's file: preallocated, then written through once and synced.
pub struct Written {
    _dir: TempDir,
    file: File,
    len: u64,
}

impl Written {
    pub fn new(tier: &Tier) -> BoxResult<Written> {
        let dir = tier.tempdir()?;
        let file = create(&dir.path().join("written.dat"))?;
        let len = tier.floor_file;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)?;
        fill_zeros(&file, len)?;
        Ok(Written { _dir: dir, file, len })
    }
}

/// `pwrite` of `bytes` at increasing offsets + `fdatasync`, until `tier.secs` passed or the
/// offset reaches `limit` (`wrap`: back to 0 instead); syncs per second.
fn sync_loop(file: &File, bytes: usize, limit: u64, wrap: bool, tier: &Tier) -> BoxResult<f64> {
    let buf = vec![0x5Au8; bytes];
    let (mut off, mut n) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + tier.secs;
    while Instant::now() < deadline {
        if off + bytes as u64 > limit {
            if !wrap {
                break;
            }
            off = 0;
        }
        file.write_all_at(&buf, off)?;
        file.sync_data()?;
        off += bytes as u64;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The floor for `shape`: messages per second.
fn floor(w: &Written, shape: Shape, tier: &Tier) -> BoxResult<f64> {
    Ok(sync_loop(&w.file, shape.batch * shape.len, w.len, true, tier)? * shape.batch as f64)
}

/// The reference floor for `shape`, into a fresh `fallocate`d file: messages per second.
fn fallocated(shape: Shape, tier: &Tier) -> BoxResult<f64> {
    let dir = tier.tempdir()?;
    let file = create(&dir.path().join("fallocated.dat"))?;
    let len = tier.fallocated_file;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len)?;
    file.sync_all()?;
    Ok(sync_loop(&file, shape.batch * shape.len, len, false, tier)? * shape.batch as f64)
}

/// Wharf, `Immediate` pushes of `shape` into a fresh store: messages per second, and the
/// bytes written to storage per payload byte (close included), if the kernel tells.
fn wharf(shape: Shape, tier: &Tier) -> BoxResult<(f64, Option<f64>)> {
    let dir = tier.tempdir()?;
    let w = Wharf::open(dir.path())?;
    let q = w.queue("q")?;
    let batch = vec![vec![0x42u8; shape.len]; shape.batch];
    for _ in 0..10 {
        q.push_batch(&batch)?;
    }
    if shape.acked {
        for d in q.pop_batch(10 * shape.batch, std::time::Duration::ZERO)? {
            d.ack_with(Durability::None)?;
        }
    }
    let before = written_bytes();
    let (mut n, start) = (0u64, Instant::now());
    let deadline = start + tier.secs;
    while Instant::now() < deadline {
        if shape.batch == 1 {
            q.push(&batch[0])?;
        } else {
            q.push_batch(&batch)?;
        }
        if shape.acked {
            for d in q.pop_batch(shape.batch, std::time::Duration::ZERO)? {
                d.ack_with(Durability::None)?;
            }
        }
        n += shape.batch as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(q);
    w.close()?;
    let per_byte = match (before, written_bytes()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / (n as f64 * shape.len as f64)),
        _ => None,
    };
    Ok((rate, per_byte))
}

/// One round of row 4: every shape, floor, wharf and reference floor in turn.
pub fn round(r: &mut Report, tier: &Tier, written: &Written) -> BoxResult<()> {
    for shape in SHAPES {
        eprintln!("durable: {}", shape.name);
        let f = floor(written, shape, tier)?;
        let (w, per_byte) = wharf(shape, tier)?;
        let a = fallocated(shape, tier)?;
        let name = shape.name;
        r.record(&format!("durable {name} wharf"), "msgs/s", w);
        if let Some(b) = per_byte {
            r.record(&format!("durable {name} disk bytes per payload byte"), "×", b);
        }
        r.record(&format!("durable {name} floor"), "msgs/s", f);
        r.record(&format!("durable {name} fallocated floor"), "msgs/s", a);
        r.record(&format!("durable {name} ratio"), "×", w / f);
        r.record(&format!("durable {name} ratio to fallocated"), "×", w / a);
    }
    Ok(())
}
