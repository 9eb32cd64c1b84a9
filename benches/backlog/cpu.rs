//! Row 5: CPU per message of buffered (never synced) work, against `Plain`, the minimal
//! append-only queue of `plain.rs`, which does the same calls without fsyncs.
//!
//! - `push`: `push_batch` of 100 × 128 B, durability `None`;
//! - `push+pop+ack`: the same, then `pop_batch` of 100 and one `ack_many` of the batch (one
//!   `Acks` record; before format 5 it was an `ack` of each delivery, one `Ack` record each,
//!   so rows measured before then are not comparable).
//!
//! Each run moves a fixed number of messages through a fresh store (opening it is not timed)
//! and takes the wall time and the CPU time of the whole process (all its threads: wharf's
//! background and checkpointer threads count). Wharf and `Plain` alternate within a round;
//! the ratio of a round is wharf's CPU per message over `Plain`'s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wharf::{Durability, Wharf};

use super::plain::Plain;
use crate::common::{cpu_ns, BoxResult, Report};
use crate::{Tier, SMALL};

const BATCH: usize = 100;

/// What one run measured: messages per second (wall), and CPU nanoseconds per message.
struct Run {
    rate: f64,
    cpu_per_msg: f64,
}

fn timed(n: u64, f: impl FnOnce() -> BoxResult<()>) -> BoxResult<Run> {
    let (t, cpu) = (Instant::now(), cpu_ns());
    f()?;
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_ns() - cpu);
    Ok(Run { rate: n as f64 / secs, cpu_per_msg: cpu as f64 / n as f64 })
}

fn wharf(tier: &Tier, n: u64, cycle: bool) -> BoxResult<Run> {
    let dir = tier.tempdir()?;
    let w = Wharf::builder()
        .push_durability(Durability::None)
        .ack_durability(Durability::None)
        .open(dir.path())?;
    let q = w.queue("q")?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    let run = timed(n, || {
        for _ in 0..n / BATCH as u64 {
            q.push_batch(&batch)?;
            if cycle {
                let got = q.pop_batch(BATCH, Duration::ZERO)?;
                if got.len() != BATCH {
                    return Err(format!("pop_batch returned {} of {BATCH}", got.len()).into());
                }
                for d in &got {
                    black_box(d.payload().first());
                }
                let acked = q.ack_many(got)?.acked;
                if acked != BATCH {
                    return Err(format!("ack_many acked {acked} of {BATCH}").into());
                }
            }
        }
        Ok(())
    })?;
    drop(q);
    w.close()?;
    Ok(run)
}

fn plain(tier: &Tier, n: u64, cycle: bool) -> BoxResult<Run> {
    let dir = tier.tempdir()?;
    let mut p = Plain::open(dir.path())?;
    let batch = vec![[0x42u8; SMALL]; BATCH];
    timed(n, || {
        let mut acks = Vec::with_capacity(BATCH);
        for _ in 0..n / BATCH as u64 {
            p.push_batch(&batch)?;
            if cycle {
                acks.clear();
                let got = p.pop_batch(BATCH, |payload, upto| {
                    black_box(payload.first());
                    acks.push(upto);
                })?;
                if got != BATCH {
                    return Err(format!("pop_batch returned {got} of {BATCH}").into());
                }
                for &upto in &acks {
                    p.ack(upto)?;
                }
            }
        }
        Ok(())
    })
}

/// One round of row 5: both shapes, wharf and `Plain` alternating.
pub fn round(r: &mut Report, tier: &Tier, round: usize) -> BoxResult<()> {
    for (cycle, name, n) in [(false, "push", tier.cpu_push), (true, "push+pop+ack", tier.cpu_cycle)]
    {
        eprintln!("cpu: {name}, {n} messages");
        let (w, p) = if round.is_multiple_of(2) {
            let w = wharf(tier, n, cycle)?;
            (w, plain(tier, n, cycle)?)
        } else {
            let p = plain(tier, n, cycle)?;
            (wharf(tier, n, cycle)?, p)
        };
        r.record(&format!("cpu {name} wharf rate"), "msgs/s", w.rate);
        r.record(&format!("cpu {name} plain rate"), "msgs/s", p.rate);
        r.record(&format!("cpu {name} wharf"), "ns/msg", w.cpu_per_msg);
        r.record(&format!("cpu {name} plain"), "ns/msg", p.cpu_per_msg);
        r.record(&format!("cpu {name} ratio"), "×", w.cpu_per_msg / p.cpu_per_msg);
    }
    Ok(())
}
