//! What the benches share: where they put their files and on what file system, the memory and
//! CPU time of a process, child processes, and the table that gathers rounds into medians.

// Each bench uses a part of this module.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Where a bench puts its stores and files: `WHARF_BENCH_DIR`, else `default`. Keep it off
/// tmpfs, or every durable figure and floor means nothing.
pub fn bench_dir(default: &Path) -> PathBuf {
    std::env::var_os("WHARF_BENCH_DIR").map_or_else(|| default.to_path_buf(), PathBuf::from)
}

/// The file system holding `dir`, from the longest matching mount point, and whether it is in
/// memory (tmpfs, ramfs).
pub fn file_system(dir: &Path) -> (String, bool) {
    let Ok(dir) = dir.canonicalize() else {
        return ("unknown".into(), false);
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return (format!("{} (unknown file system)", dir.display()), false);
    };
    let mut best: Option<(usize, String, bool)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mp), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if dir.starts_with(mp) && best.as_ref().is_none_or(|(len, ..)| mp.len() >= *len) {
            let text = format!("{} ({ty} on {dev}, mounted at {mp})", dir.display());
            best = Some((mp.len(), text, ty == "tmpfs" || ty == "ramfs"));
        }
    }
    best.map_or_else(|| (dir.display().to_string(), false), |(_, text, mem)| (text, mem))
}

/// Writes `len` bytes of zeros and syncs them: overwrites later touch no file metadata.
pub fn fill_zeros(file: &File, len: u64) -> BoxResult<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        file.write_all_at(&zeros, off)?;
        off += zeros.len() as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// The anonymous resident memory of this process in bytes (`RssAnon` of /proc/self/status):
/// the heap and stacks, not the pages of mapped segment files (those are the page cache's,
/// shared and reclaimable).
pub fn rss() -> BoxResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or("no RssAnon in /proc/self/status")?
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// CPU time (user + system) of this whole process, all its threads, in nanoseconds.
pub fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

fn child_command(args: &[&str]) -> BoxResult<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--child").args(args);
    Ok(cmd)
}

/// Runs this bench's own executable again as `--child ARGS` and returns what it printed. An
/// exit other than success is an error, unless `may_fail` (a child that aborts on purpose).
pub fn run_child(args: &[&str], may_fail: bool) -> BoxResult<String> {
    let out = child_command(args)?.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !may_fail {
        return Err(
            format!("child {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into()
        );
    }
    Ok(stdout)
}

/// Runs `--child ARGS` until it prints its first line, then kills it with SIGKILL, as
/// `kill -9` would, and returns that line. The child is expected to wait after it (a child
/// that exits first is an error: it was not killed).
pub fn run_child_then_kill(args: &[&str]) -> BoxResult<String> {
    let mut child = child_command(args)?.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("child without stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    if line.is_empty() {
        let status = child.wait()?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        return Err(format!("child {args:?} printed nothing ({status}): {err}").into());
    }
    // `Child::kill` sends SIGKILL on Unix.
    child.kill()?;
    child.wait()?;
    Ok(line)
}

/// The whitespace-separated numbers of `line`.
pub fn nums(line: &str) -> BoxResult<Vec<f64>> {
    Ok(line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?)
}

/// Every round's value of one metric.
pub struct Row {
    pub label: String,
    pub unit: &'static str,
    pub vals: Vec<f64>,
}

impl Row {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.vals.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// The metrics of a run, round by round.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Records one round's value of a metric; rows keep the order they were first seen in.
    pub fn record(&mut self, label: &str, unit: &'static str, value: f64) {
        match self.rows.iter_mut().find(|r| r.label == label) {
            Some(row) => row.vals.push(value),
            None => self.rows.push(Row { label: label.to_owned(), unit, vals: vec![value] }),
        }
    }
    /// Records one round's values of several metrics: `(label, unit, value)`.
    pub fn record_all(&mut self, sample: Vec<(String, &'static str, f64)>) {
        for (label, unit, value) in sample {
            self.record(&label, unit, value);
        }
    }
    pub fn row(&self, label: &str) -> BoxResult<&Row> {
        self.rows
            .iter()
            .find(|r| r.label == label)
            .ok_or_else(|| format!("no metric {label:?}").into())
    }
    pub fn median(&self, label: &str) -> BoxResult<f64> {
        Ok(self.row(label)?.median())
    }
    pub fn print(&self) {
        println!("| metric | median | min–max | unit |");
        println!("|---|---:|---:|---|");
        for r in &self.rows {
            let (lo, hi) = (num(r.min()), num(r.max()));
            println!("| {} | {} | {lo} – {hi} | {} |", r.label, num(r.median()), r.unit);
        }
    }
}

/// A number for the table: thousands separated, two or three significant digits when small.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
