//! Opening a store for a command, the command's error type and its exit codes, and the
//! formatting the commands share.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf::{Error, Queue, Wharf};

/// The operation failed or found a problem.
pub const FAILED: u8 = 1;
/// A bad argument, a missing directory or store, an unknown queue.
pub const USAGE: u8 = 2;
/// `pop` found the queue empty.
pub const EMPTY: u8 = 3;

/// What a command tells the user before exiting with `code`.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { code: USAGE, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> CliError {
        CliError { code: FAILED, message: message.into() }
    }

    /// A library error met while working on the store at `dir`.
    pub fn store(dir: &Path, e: &Error) -> CliError {
        let dir = dir.display();
        let message = match e {
            Error::Locked(_) => format!(
                "the store at {dir} is in use by another process (a running application holds \
                 its lock); stop it first, or use `wharf verify`, which takes no lock"
            ),
            Error::Corrupted(c) => format!(
                "the store at {dir} is corrupt: {} in {} at offset {}; run `wharf verify {dir}` \
                 for every problem, `wharf salvage {dir}` to keep every intact message",
                c.reason,
                c.file.display(),
                c.offset
            ),
            Error::InvalidName(_) | Error::InvalidOption(_) | Error::PayloadTooLarge { .. } => {
                return CliError::usage(e.to_string());
            }
            other => format!("{dir}: {other}"),
        };
        CliError::failed(message)
    }

    /// An I/O error on standard input or output, or on a file the command reads. A closed
    /// pipe (`wharf export DIR q | head`) ends the command quietly, with status 0.
    pub fn io(what: &str, e: &std::io::Error) -> CliError {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return CliError { code: 0, message: String::new() };
        }
        CliError::failed(format!("{what}: {e}"))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Writes a line to standard output (`println!` would panic on a closed pipe).
pub fn say(line: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| CliError::io("standard output", &e))
}

/// Checks that `dir` holds a store, without creating anything: a directory with a `log/`.
pub fn check_exists(dir: &Path) -> Result<(), CliError> {
    if !dir.exists() {
        return Err(CliError::usage(format!("{}: no such directory", dir.display())));
    }
    if !dir.is_dir() {
        return Err(CliError::usage(format!("{}: not a directory", dir.display())));
    }
    if !dir.join("log").is_dir() {
        return Err(CliError::usage(format!(
            "{}: no wharf store here (it has no log/ directory)",
            dir.display()
        )));
    }
    Ok(())
}

/// Opens the existing store at `dir`; never creates one.
pub fn open_existing(dir: &Path) -> Result<Wharf, CliError> {
    check_exists(dir)?;
    let store = Wharf::open(dir).map_err(|e| CliError::store(dir, &e))?;
    tell_recovery(&store);
    Ok(store)
}

/// Says on standard error what opening the store repaired, if anything: an operator should
/// know that a command cut a torn tail or found deliveries of a crashed run.
fn tell_recovery(store: &Wharf) {
    let r = store.recovery_report();
    if let Some((file, offset)) = &r.truncated_at {
        eprintln!(
            "note: opening cut a torn write of {} bytes at the end of the log ({} at offset \
             {offset}): the last run did not close the store",
            r.bytes_truncated,
            file.display()
        );
    }
    if r.in_flight_at_crash > 0 {
        eprintln!(
            "note: {} messages were in flight when the store last stopped; they are ready again",
            r.in_flight_at_crash
        );
    }
    for f in &r.removed_files {
        eprintln!("note: opening removed the temporary file {f} of an interrupted run");
    }
}

/// Refuses a queue name the library would refuse, before a store is created for it.
pub fn check_name(name: &str) -> Result<(), CliError> {
    let ok = (1..=wharf::MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CliError::usage(Error::InvalidName(name.to_owned()).to_string()))
    }
}

/// Opens the store at `dir`, creating the directory and the store if needed.
pub fn open_or_create(dir: &Path) -> Result<Wharf, CliError> {
    if dir.exists() && !dir.is_dir() {
        return Err(CliError::usage(format!("{}: not a directory", dir.display())));
    }
    let store = Wharf::open(dir).map_err(|e| CliError::store(dir, &e))?;
    tell_recovery(&store);
    Ok(store)
}

/// The existing queue `name`; never creates one.
pub fn existing_queue(store: &Wharf, name: &str) -> Result<Queue, CliError> {
    if !store.queue_names().iter().any(|n| n == name) {
        let known = store.queue_names().join(", ");
        let known = if known.is_empty() { "none".to_owned() } else { known };
        return Err(CliError::usage(format!(
            "no queue named {name:?} in {} (queues: {known})",
            store.path().display()
        )));
    }
    store.queue(name).map_err(|e| CliError::store(store.path(), &e))
}

/// Closes the store, reporting a failure of its final sync.
pub fn close(store: Wharf) -> Result<(), CliError> {
    let dir = store.path().to_owned();
    store.close().map_err(|e| CliError::store(&dir, &e))
}

/// Parses `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time in UTC as `YYYY-MM-DDThh:mm:ssZ`.
pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// A duration, shortly: `850ms`, `42s`, `5m12s`, `3h04m`, `2d03h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// Bytes, shortly: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn short_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)] // a display rounding
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
}

/// Parses a message id as `peek` shows it (hex, 16 digits or fewer).
pub fn parse_id(s: &str) -> Result<u64, CliError> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| CliError::usage(format!("{s:?} is not a message id (hex, as peek shows it)")))
}

/// A progress bar on standard error (drawn only when it is a terminal): over `len` units, or a
/// spinner counting them when the length is unknown.
pub fn progress(len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
