//! Reopen and recovery: what survives, what comes back, and how a torn tail is cut.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use wharf::{Durability, Wharf};

use crate::{as_if_crashed, copy_store, drain_payloads, payload, segments, small};

#[test]
fn messages_survive_reopen_across_queues_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = small().open(dir.path()).unwrap();
        let mut held = Vec::new();
        for name in ["a", "b", "c"] {
            let q = w.queue(name).unwrap();
            q.push_batch((0..400).map(|i| payload(i, 200))).unwrap();
            // Ack the first 100 durably, hold 10 in flight, leave the rest ready.
            for _ in 0..100 {
                q.try_pop().unwrap().unwrap().ack_with(Durability::Immediate).unwrap();
            }
            held.extend((0..10).map(|_| q.try_pop().unwrap().unwrap()));
        }
        // Closed while 30 deliveries are in flight: they are never settled.
        w.close().unwrap();
        drop(held);
    }
    assert!(segments(dir.path()).len() > 3, "the workload spans several segments");
    let w = small().open(dir.path()).unwrap();
    let report = w.recovery_report().clone();
    assert_eq!(report.messages, 3 * 300);
    assert_eq!(report.in_flight_at_crash, 3 * 10);
    assert_eq!(report.bytes_truncated, 0);
    for name in ["a", "b", "c"] {
        let q = w.queue(name).unwrap();
        let got = drain_payloads(&q);
        let want: Vec<_> = (100..400).map(|i| payload(i, 200)).collect();
        assert_eq!(got, want, "queue {name}: acked gone, unacked back, in order");
        let first = q.try_pop().unwrap().unwrap();
        // Delivered once before the reopen (held in flight), released once by drain, so the
        // attempt count remembers both.
        assert_eq!(first.attempt(), 3);
    }
}

/// Byte range of the record whose payload is the unique `marker`, in `file`.
fn record_range(file: &[u8], marker: &[u8]) -> (usize, usize) {
    let at = file.windows(marker.len()).rposition(|w| w == marker).expect("marker in the segment");
    // A push record (a `PushEx` without a key) is a 24-byte header and 40 bytes of queue, id,
    // options and push time before its payload.
    (at - 64, at + marker.len())
}

#[test]
fn a_torn_last_record_is_cut_at_every_offset_and_nothing_else_is_lost() {
    let pristine = tempfile::tempdir().unwrap();
    let n = 20;
    {
        let w = small().open(pristine.path()).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..n {
            q.push(payload(i, 100)).unwrap();
        }
        w.close().unwrap();
    }
    as_if_crashed(pristine.path());
    let seg_name = segments(pristine.path())[0].file_name().unwrap().to_owned();
    let original = std::fs::read(segments(pristine.path())[0].clone()).unwrap();
    let (start, end) = record_range(&original, &payload(n - 1, 100));
    for cut in start..end {
        for garbage in [false, true] {
            let dir = copy_store(pristine.path());
            let seg = dir.path().join("log").join(&seg_name);
            let mut bytes = original.clone();
            let fill_end = if garbage { end + 64 } else { end };
            for (k, b) in bytes[cut..fill_end].iter_mut().enumerate() {
                *b = if garbage { (k as u8).wrapping_mul(31) | 1 } else { 0 };
            }
            std::fs::write(&seg, &bytes).unwrap();
            let w = small()
                .open(dir.path())
                .unwrap_or_else(|e| panic!("cut {cut} garbage {garbage}: {e}"));
            let report = w.recovery_report();
            if garbage {
                assert_eq!(report.bytes_truncated as usize, fill_end - start, "cut {cut}");
            } else {
                assert!(report.bytes_truncated as usize <= cut - start, "cut {cut}");
                assert_eq!(
                    report.bytes_truncated == 0,
                    original[start..cut].iter().all(|&b| b == 0)
                );
            }
            if report.bytes_truncated > 0 {
                let (file, offset) = report.truncated_at.clone().unwrap();
                assert_eq!(
                    (file.file_name().unwrap(), offset as usize),
                    (seg_name.as_os_str(), start)
                );
            }
            let got = drain_payloads(&w.queue("q").unwrap());
            let want: Vec<_> = (0..n - 1).map(|i| payload(i, 100)).collect();
            assert_eq!(got, want, "cut {cut} garbage {garbage}");
            // The store goes on: a new push lands where the torn record was, and survives.
            w.queue("q").unwrap().push(b"after").unwrap();
            drop(w);
            let w = small().open(dir.path()).unwrap();
            assert_eq!(w.recovery_report().bytes_truncated, 0);
            assert_eq!(drain_payloads(&w.queue("q").unwrap()).last().unwrap(), b"after");
        }
    }
}

#[test]
fn a_crash_cut_tail_never_makes_ids_reused() {
    let pristine = tempfile::tempdir().unwrap();
    let first_ids = {
        let w = small().open(pristine.path()).unwrap();
        let q = w.queue("q").unwrap();
        let ids: Vec<_> = (0..5).map(|i| q.push(payload(i, 50)).unwrap()).collect();
        w.close().unwrap();
        ids
    };
    as_if_crashed(pristine.path());
    // Cut the last two records, as a power loss might.
    let seg = segments(pristine.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let (start, _) = record_range(&bytes, &payload(3, 50));
    bytes[start..start + 400].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let w = small().open(pristine.path()).unwrap();
    let q = w.queue("q").unwrap();
    let new_ids: Vec<_> = (0..5).map(|i| q.push(payload(100 + i, 50)).unwrap()).collect();
    for id in &new_ids {
        assert!(!first_ids.contains(id), "id {id} reused after the tail was cut");
        assert!(id > first_ids.last().unwrap(), "ids keep increasing");
    }
}

/// The child side of `kill_9_loses_nothing_that_was_acknowledged`.
#[test]
#[ignore = "run as a child process by kill_9_loses_nothing_that_was_acknowledged"]
fn kill_child() {
    let Ok(dir) = std::env::var("WHARF_KILL_CHILD_DIR") else {
        return;
    };
    let w = small().open(&dir).unwrap();
    let q = w.queue("q").unwrap();
    let base: usize = std::env::var("WHARF_KILL_CHILD_BASE").unwrap().parse().unwrap();
    for i in base.. {
        q.push(payload(i, 80)).unwrap();
        println!("pushed {i}");
        if i % 3 == 0 {
            if let Some(d) = q.try_pop().unwrap() {
                let text = String::from_utf8(d.payload().to_vec()).unwrap();
                println!("acking {}", &text[8..16]);
                d.ack_with(Durability::Immediate).unwrap();
                println!("acked {}", &text[8..16]);
            }
        }
    }
}

#[test]
fn kill_9_loses_nothing_that_was_acknowledged() {
    crate::with_deadline(crate::TEST_LIMIT, "kill_9_loses_nothing_that_was_acknowledged", || {
        let dir = tempfile::tempdir().unwrap();
        let mut pushed = std::collections::BTreeSet::new();
        let mut acked = std::collections::BTreeSet::new();
        let mut acking = std::collections::BTreeSet::new();
        let mut next = 0usize;
        for round in 0..6 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "recovery::kill_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("WHARF_KILL_CHILD_DIR", dir.path())
                .env("WHARF_KILL_CHILD_BASE", next.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            // Let it run for a varying number of acknowledged operations, then kill it mid-flight.
            let stop_after = 50 + round * 37;
            let mut seen = 0;
            let mut killed = false;
            // After the kill, the rest of what the child wrote is still read: an ack it reported
            // after the parent stopped counting is still an ack.
            while let Some(Ok(line)) = lines.next() {
                if let Some(i) = line.strip_prefix("pushed ") {
                    pushed.insert(i.parse::<usize>().unwrap());
                    next = next.max(i.parse::<usize>().unwrap() + 1);
                    seen += 1;
                } else if let Some(i) = line.strip_prefix("acking ") {
                    acking.insert(i.parse::<usize>().unwrap());
                } else if let Some(i) = line.strip_prefix("acked ") {
                    acked.insert(i.parse::<usize>().unwrap());
                }
                if seen >= stop_after && !killed {
                    child.kill().unwrap(); // SIGKILL
                    killed = true;
                }
            }
            if !killed {
                child.kill().unwrap();
            }
            child.wait().unwrap();
            let w = small().open(dir.path()).unwrap();
            let got = drain_payloads(&w.queue("q").unwrap());
            let got: std::collections::BTreeSet<usize> = got
                .iter()
                .map(|p| std::str::from_utf8(&p[8..16]).unwrap().parse().unwrap())
                .collect();
            for i in pushed.difference(&acking) {
                assert!(got.contains(i), "round {round}: acknowledged push {i} lost");
            }
            for i in &acked {
                assert!(!got.contains(i), "round {round}: durably acked {i} came back");
            }
            // Settle what is left so the next round starts from the report's numbers alone.
            let q = w.queue("q").unwrap();
            while let Some(d) = q.try_pop().unwrap() {
                let i: usize = std::str::from_utf8(&d.payload()[8..16]).unwrap().parse().unwrap();
                acked.insert(i);
                acking.insert(i);
                pushed.insert(i);
                d.ack_with(Durability::Immediate).unwrap();
            }
        }
        assert!(pushed.len() > 300);
    });
}

#[test]
fn nothing_durable_depends_on_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = Wharf::open(dir.path()).unwrap();
        w.queue("q").unwrap().push(b"kept").unwrap();
    }
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    assert_eq!(drain_payloads(&w.queue("q").unwrap()), vec![b"kept".to_vec()]);
}
