//! A real full disk (CRASH-TESTING.md 2.3, ENOSPC): a store on a small tmpfs, and on a small
//! loop-mounted ext4 image. A push that needs a segment the disk has no room for fails with
//! `Error::NoSpace`, never a panic or a poisoned store; everything pushed before is still there;
//! once acks let segments be deleted, pushing works again.
//!
//! Needs root (to mount); otherwise, or when mounting fails, each test prints `skipped: <why>`
//! and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wharf::{Error, Queue, Wharf};

use crate::payload;

/// Whether this process runs as root (effective uid 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Runs a command; its stdout, or why it failed.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd} {}: {} {}", args.join(" "), out.status, err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A file system mounted for one test; unmounted (and its loop device detached) on drop, also
/// when the test fails.
struct Mount {
    dir: PathBuf,
    loop_dev: Option<String>,
    /// Holds the mount point (and the ext4 image); removed after the unmount.
    _root: tempfile::TempDir,
}

impl Mount {
    /// A tmpfs of `size` (as `mount -o size=` takes it).
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = root.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let opts = format!("size={size}");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()])?;
        Ok(Mount { dir, loop_dev: None, _root: root })
    }

    /// An ext4 file system of `mib` MiB in an image file on a loop device.
    fn ext4(mib: u64) -> Result<Mount, String> {
        for tool in ["mkfs.ext4", "losetup"] {
            run("sh", &["-c", &format!("command -v {tool}")])
                .map_err(|_| format!("{tool} not found"))?;
        }
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = root.path().join("ext4.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(mib << 20).map_err(|e| e.to_string())?;
        drop(file);
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        let dev = run("losetup", &["--find", "--show", image.to_str().unwrap()])?;
        let dir = root.path().join("mnt");
        let mut m = Mount { dir: dir.clone(), loop_dev: Some(dev.clone()), _root: root };
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        if let Err(e) = run("mount", &["-t", "ext4", &dev, dir.to_str().unwrap()]) {
            m.dir = PathBuf::new(); // nothing to unmount; the drop only detaches the device
            return Err(e);
        }
        Ok(m)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let dir = self.dir.to_str().unwrap_or_default();
            if let Err(e) = run("umount", &[dir]) {
                eprintln!("{e}; unmounting lazily");
                let _ = run("umount", &["-l", dir]);
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = run("losetup", &["-d", dev]);
        }
    }
}

/// Mounts with `mount`, or prints why the test is skipped.
fn mounted(what: &str, mount: impl FnOnce() -> Result<Mount, String>) -> Option<Mount> {
    if !is_root() {
        println!("skipped: {what}: not running as root");
        return None;
    }
    match mount() {
        Ok(m) => Some(m),
        Err(e) => {
            println!("skipped: {what}: {e}");
            None
        }
    }
}

/// Retries `op` while it fails with `NoSpace`, for at most a few seconds: space comes back only
/// when the background thread deletes a settled segment.
fn retry_on_no_space<T>(what: &str, mut op: impl FnMut() -> wharf::Result<T>) -> T {
    let started = Instant::now();
    loop {
        match op() {
            Ok(v) => return v,
            Err(Error::NoSpace) if started.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Pops and acks `want` in order, comparing payloads.
fn pop_and_ack_all(q: &Queue, want: &[Vec<u8>], label: &str) {
    for (k, p) in want.iter().enumerate() {
        let d = retry_on_no_space(&format!("{label}: pop {k}"), || q.try_pop())
            .unwrap_or_else(|| panic!("{label}: message {k} of {} missing", want.len()));
        assert!(d.payload() == p.as_slice(), "{label}: message {k} differs");
        // An ack that fails consumes the delivery; `Immediate` makes it durable before the next.
        d.ack_with(wharf::Durability::Immediate)
            .unwrap_or_else(|e| panic!("{label}: ack of message {k}: {e}"));
    }
}

/// Waits until the store is down to at most `segments` segment files (spares included).
fn wait_for_deletion(w: &Wharf, segments: usize, label: &str) {
    let started = Instant::now();
    while w.stats().segments > segments {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{label}: still {} segments after every message was acked",
            w.stats().segments
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Small segments, so that a small file system holds a few of them.
fn builder() -> wharf::WharfBuilder {
    Wharf::builder().segment_bytes(256 << 10)
}

/// Fills the disk under `dir` with pushes of `len`-byte payloads until one fails, and checks
/// the failure and the recovery from it.
fn fill_and_recover(dir: &Path, len: usize, label: &str) {
    let w = crate::sweeps::open_retrying(&builder(), dir).unwrap();
    let q = w.queue("q").unwrap();
    let mut pushed = Vec::new();
    let err = loop {
        let p = payload(pushed.len(), len);
        match q.push(&p) {
            Ok(_) => pushed.push(p),
            Err(e) => break e,
        }
        assert!(pushed.len() < 1_000_000, "{label}: the disk never filled up");
    };
    let segments = w.stats().segments;
    // What is left of the last segment: popping and acking needs 76 bytes per message until
    // the oldest segment is settled and deleted.
    let last = crate::segments(dir).pop().unwrap();
    let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let room = base + (256 << 10) - w.stats().durable_lsn;
    println!(
        "{label}: push {} of {len} bytes failed with `{err}` ({segments} segments of 256 KiB, \
         {room} bytes left in the last one)",
        pushed.len()
    );
    assert!(matches!(err, Error::NoSpace), "{label}: expected NoSpace, got {err:?}");
    // Not poisoned: the failure wrote nothing, and the store still syncs and pushes (NoSpace).
    w.sync().unwrap_or_else(|e| panic!("{label}: sync after NoSpace: {e}"));
    let again = q.push(payload(pushed.len(), len)).unwrap_err();
    assert!(matches!(again, Error::NoSpace), "{label}: second push: {again:?}");

    pop_and_ack_all(&q, &pushed, label);
    assert!(q.try_pop().unwrap().is_none(), "{label}: nothing beyond what was pushed");
    wait_for_deletion(&w, 3, label); // the active segment, one ready, one in reserve

    // Space is back: a disk's worth of pushes more than fits in the active segment.
    let base = pushed.len();
    let more: Vec<Vec<u8>> = (0..segments.max(3) * (256 << 10) / 2 / (len + 64))
        .map(|i| payload(base + i, len))
        .collect();
    for (i, p) in more.iter().enumerate() {
        retry_on_no_space(&format!("{label}: push {i} after the acks"), || q.push(p));
    }
    pop_and_ack_all(&q, &more, label);
    w.close().unwrap();
    let w = crate::sweeps::open_retrying(&builder(), dir).unwrap();
    assert_eq!(w.queue("q").unwrap().depth().unwrap().ready, 0, "{label}: after reopen");
    println!("{label}: all {} messages back, acked; {} more pushed and acked", base, more.len());
}

#[test]
fn a_full_tmpfs_fails_pushes_with_no_space_and_recovers_after_acks() {
    let Some(m) = mounted("tmpfs of 2 MiB", || Mount::tmpfs("2m")) else { return };
    fill_and_recover(&m.dir, 20_000, "tmpfs, 20 kB payloads");
}

/// With small payloads the oldest segment holds hundreds of messages, and their delivery and
/// ack records (76 bytes each) need more than what is left of the last segment: they go to the
/// segment the store keeps in reserve for settlements, so a full store can be drained.
#[test]
fn a_full_disk_can_still_be_drained_with_small_payloads() {
    let Some(m) = mounted("tmpfs of 2 MiB", || Mount::tmpfs("2m")) else { return };
    fill_and_recover(&m.dir, 1_000, "tmpfs, 1 kB payloads");
}

#[test]
fn a_full_ext4_fails_pushes_with_no_space_and_recovers_after_acks() {
    let Some(m) = mounted("ext4 image of 8 MiB", || Mount::ext4(8)) else { return };
    fill_and_recover(&m.dir, 20_000, "ext4, 20 kB payloads");
}
