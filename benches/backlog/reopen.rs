//! Row 1: reopen and first pop after `kill -9` with a backlog of `n` unsettled messages.
//!
//! A child pushes `n` plain 128 B messages into one queue (batches of 1,000, durability
//! `None`), makes them durable with one `Wharf::sync`, takes a `Wharf::checkpoint`, and is
//! killed with SIGKILL. Then, round after round, a fresh child times `Wharf::open` plus the
//! `try_pop` of the first message (wall and CPU time of the whole process, its threads
//! included), and is killed too, so that every round reopens a crashed store. The baseline
//! gets the same `n` records in `Plain` (synced, cursor at 0) and its reopen is the same: open
//! both files, read the cursor, read and check the first record. The two alternate within each
//! round; the page cache is warm for both (the data was just written or read).

use std::path::Path;
use std::time::{Duration, Instant};

use wharf::{Durability, Wharf};

use super::plain::Plain;
use crate::common::{cpu_ns, nums, run_child_then_kill, BoxResult, Report};
use crate::{in_batches, Tier, SMALL};

/// Bytes a wharf log takes per 128 B message (its `PushEx` record).
pub const WHARF_RECORD: u64 = 164;

/// Child: fills `dir` with `n` messages for `which` ("wharf" or "plain"), prints `ready` and
/// waits to be killed.
pub fn child_fill(which: &str, dir: &Path, n: u64) -> BoxResult<()> {
    match which {
        "wharf" => {
            let w = Wharf::builder()
                .push_durability(Durability::None)
                .ack_durability(Durability::None)
                .open(dir)?;
            let q = w.queue("q")?;
            in_batches(n, |_, batch| Ok(q.push_batch(batch).map(drop)?))?;
            w.sync()?;
            w.checkpoint()?;
            ready_then_wait(&w)
        }
        "plain" => {
            let mut p = Plain::open(dir)?;
            p.ack(0)?;
            in_batches(n, |_, batch| p.push_batch(batch))?;
            p.sync()?;
            ready_then_wait(&p)
        }
        _ => Err(format!("no queue {which:?}").into()),
    }
}

/// Child: reopens `dir` and pops its first message; prints `total_ms cpu_ms open_ms`, then
/// waits to be killed (the message stays leased: the store is left as a crash leaves it).
pub fn child_open(which: &str, dir: &Path) -> BoxResult<()> {
    let (t, cpu) = (Instant::now(), cpu_ns());
    match which {
        "wharf" => {
            let w = Wharf::open(dir)?;
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let d = w.queue("q")?.try_pop()?.ok_or("the reopened store has nothing to pop")?;
            if d.payload().len() != SMALL {
                return Err("the first message is not the one pushed".into());
            }
            print_open(t, cpu, open_ms);
            ready_then_wait(&(w, d))
        }
        "plain" => {
            let mut p = Plain::open(dir)?;
            let open_ms = t.elapsed().as_secs_f64() * 1e3;
            let mut len = 0;
            p.pop_batch(1, |payload, _| len = payload.len())?;
            if len != SMALL {
                return Err("the first record is not the one pushed".into());
            }
            print_open(t, cpu, open_ms);
            ready_then_wait(&p)
        }
        _ => Err(format!("no queue {which:?}").into()),
    }
}

fn print_open(t: Instant, cpu: u64, open_ms: f64) {
    let total_ms = t.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = (cpu_ns() - cpu) as f64 / 1e6;
    println!("{total_ms} {cpu_ms} {open_ms}");
}

/// Tells the parent the child is ready, then waits for its SIGKILL, keeping `_held` alive.
fn ready_then_wait<T>(_held: &T) -> BoxResult<()> {
    use std::io::Write;
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Fills a store of `which` in `dir` with `n` messages in a child that is then killed.
fn fill(which: &str, dir: &Path, n: u64) -> BoxResult<f64> {
    let t = Instant::now();
    let d = dir.to_str().ok_or("path")?;
    let line = run_child_then_kill(&["fill", which, d, &n.to_string()])?;
    if line.trim() != "ready" {
        return Err(format!("fill child printed {line:?}").into());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// One reopen of `which` in `dir`, in a fresh child: `[total_ms, cpu_ms, open_ms]`.
fn reopen(which: &str, dir: &Path) -> BoxResult<Vec<f64>> {
    let d = dir.to_str().ok_or("path")?;
    let v = nums(&run_child_then_kill(&["open", which, d])?)?;
    if v.len() != 3 {
        return Err(format!("open child printed {v:?}").into());
    }
    Ok(v)
}

/// Records one reopen's figures under `{name} {which}`.
fn record(r: &mut Report, name: &str, which: &str, v: &[f64]) {
    r.record(&format!("{name} {which} ms"), "ms", v[0]);
    r.record(&format!("{name} {which} CPU ms"), "ms", v[1]);
    r.record(&format!("{name} {which} open ms"), "ms", v[2]);
}

/// Row 1 at `n` messages, both stores on disk at once, reopens interleaved round by round.
pub fn measure(r: &mut Report, tier: &Tier, name: &str, n: u64) -> BoxResult<()> {
    let (w, p) = (tier.tempdir()?, tier.tempdir()?);
    eprintln!("{name}: filling wharf and the plain queue with {n} messages");
    let fill_w = fill("wharf", w.path(), n)?;
    let fill_p = fill("plain", p.path(), n)?;
    r.record(&format!("{name} fill wharf s"), "s", fill_w);
    r.record(&format!("{name} fill plain s"), "s", fill_p);
    for round in 0..tier.reopen_rounds {
        eprintln!("{name}: reopen round {}/{}", round + 1, tier.reopen_rounds);
        let order: [&str; 2] =
            if round.is_multiple_of(2) { ["wharf", "plain"] } else { ["plain", "wharf"] };
        let mut got = [Vec::new(), Vec::new()];
        for (i, which) in order.iter().enumerate() {
            let dir = if *which == "wharf" { w.path() } else { p.path() };
            got[i] = reopen(which, dir)?;
            record(r, name, which, &got[i]);
        }
        let (vw, vp) = if order[0] == "wharf" { (&got[0], &got[1]) } else { (&got[1], &got[0]) };
        r.record(&format!("{name} ratio"), "×", vw[0] / vp[0]);
        r.record(&format!("{name} CPU ratio"), "×", vw[1] / vp[1]);
    }
    Ok(())
}

/// Row 1 at `n` messages one store at a time (the long tier: the two would not fit together
/// in the disk it asks for): wharf's reopens, its store deleted, then the baseline's.
pub fn measure_sequential(r: &mut Report, tier: &Tier, name: &str, n: u64) -> BoxResult<()> {
    let mut medians = Vec::new();
    for which in ["wharf", "plain"] {
        let dir = tier.tempdir()?;
        eprintln!("{name}: filling {which} with {n} messages");
        let secs = fill(which, dir.path(), n)?;
        r.record(&format!("{name} fill {which} s"), "s", secs);
        for round in 0..tier.reopen_rounds {
            eprintln!("{name}: {which} reopen round {}/{}", round + 1, tier.reopen_rounds);
            record(r, name, which, &reopen(which, dir.path())?);
        }
        medians.push((
            r.median(&format!("{name} {which} ms"))?,
            r.median(&format!("{name} {which} CPU ms"))?,
        ));
    }
    r.record(&format!("{name} ratio"), "×", medians[0].0 / medians[1].0);
    r.record(&format!("{name} CPU ratio"), "×", medians[0].1 / medians[1].1);
    Ok(())
}
