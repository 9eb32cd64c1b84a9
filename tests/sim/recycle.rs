//! Recycled segments on the simulated disk: a settled segment's file is made into a spare and
//! keeps its old records past what the log writes in it (the disk keeps a file's bytes through
//! renames, and its crash images keep them past the durable end). The scenario makes those old
//! records valid-looking pushes of the same queue, of the same sizes at the same offsets as the
//! new ones, whose acks are in another segment: replaying any of them would bring back a
//! message acked for good, which the oracle refuses at every crash point.

use std::path::Path;

use wharf::testing::{self, CrashPolicy, SimFs};
use wharf::Durability;

use crate::crash_points::small;
use crate::oracle::{recover_and_check, Ctx, Step, DIR};

/// Four segments of pushes only (11 × 5,000 bytes each), all acked in a fifth: the four settle
/// and go, and the log keeps two of their files. Then the same pushes again, into spares made
/// of those files; crash points from there on.
pub fn recycled_segments(c: &mut Ctx) -> Step {
    c.open()?;
    for _ in 0..4 {
        assert!(c.push_batch_or_full("q", 11, 5000)?);
    }
    let n = c.pop_batch("q", 44)?;
    for _ in 0..n {
        c.ack(Durability::None)?;
    }
    c.maintain()?;
    c.crash_points_from_here();
    for _ in 0..3 {
        assert!(c.push_batch_or_full("q", 11, 5000)?);
    }
    c.push("q", 5000, Durability::Immediate)?;
    c.pop("q")?;
    c.ack(Durability::Immediate)
}

/// Records in `bytes` (a segment file based at `base`) that are valid at a position of their
/// own below `base`: an older segment's, left in its recycled file. Returns how many are
/// pushes (`PushEx`, kind 8).
fn old_pushes(bytes: &[u8], base: u64) -> usize {
    let mut n = 0;
    for off in 64..bytes.len().saturating_sub(24) {
        let lsn = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().unwrap());
        if lsn < base && testing::decode_record(&bytes[off..], lsn).is_ok() && bytes[off + 20] == 8
        {
            n += 1;
        }
    }
    n
}

#[test]
fn recycled_files_keep_old_pushes_of_the_same_queue_and_none_is_ever_replayed() {
    let sim = SimFs::new();
    let mut c = Ctx::new(sim.clone(), small());
    recycled_segments(&mut c).unwrap();
    let log = Path::new(DIR).join("log");
    let mut stale = 0;
    for name in sim.names(&log) {
        let Some(base) = name.strip_suffix(".seg").and_then(|b| b.parse::<u64>().ok()) else {
            continue;
        };
        stale += old_pushes(&sim.read_file(&log.join(&name)).unwrap(), base);
    }
    assert!(stale >= 10, "the log's segments were made of deleted ones' files: {stale} old pushes");
    let record = c.record();
    drop(c);
    // Power lost now, with nothing unsynced: every old push past the end of the records is
    // still there to be misread.
    let image = sim.crash_image(CrashPolicy::DropAllUnsynced, 0);
    recover_and_check(&small(), &image, &record, false, "recycled, no crash");
    // Crashed at every disk operation, and swept with injected errors, with the other
    // scenarios (`crash_points::scenarios`).
}
