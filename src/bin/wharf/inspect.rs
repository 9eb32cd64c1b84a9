//! `wharf stats` and `wharf peek`: what a store holds, without changing any message.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::json;
use wharf::{DeadReason, Peeked, Queue, Wharf, FORMAT_VERSION};

use crate::store::{self, short_bytes, short_duration, utc, CliError};

/// One queue's line of `stats`.
struct QueueLine {
    name: String,
    ready: usize,
    delayed: usize,
    in_flight: usize,
    dead_letter_queue: Option<String>,
    dead_lettered: usize,
    /// The oldest message's id and, when its push record carries it, its push time.
    oldest: Option<(String, Option<SystemTime>)>,
    bytes: u64,
}

fn queue_line(store: &Wharf, q: &Queue) -> wharf::Result<QueueLine> {
    let s = q.stats()?;
    let names = store.queue_names();
    let dlq = q.dead_letter_queue_name()?;
    let dead_lettered = match dlq.as_deref().filter(|d| names.iter().any(|n| n == d)) {
        Some(d) => {
            let s = store.queue(d)?.stats()?;
            s.ready + s.delayed + s.in_flight
        }
        None => 0,
    };
    Ok(QueueLine {
        name: q.name().to_owned(),
        ready: s.ready,
        delayed: s.delayed,
        in_flight: s.in_flight,
        dead_letter_queue: dlq,
        dead_lettered,
        oldest: q.oldest()?.map(|m| (m.id.to_string(), m.pushed_at)),
        bytes: q.payload_bytes()?,
    })
}

/// `wharf stats DIR [--json]`.
pub fn stats(dir: &Path, as_json: bool) -> Result<ExitCode, CliError> {
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let mut lines = Vec::new();
    for name in store.queue_names() {
        let q = store.queue(&name).map_err(fail)?;
        lines.push(queue_line(&store, &q).map_err(fail)?);
    }
    let s = store.stats();
    let now = SystemTime::now();
    let age = |t: &Option<SystemTime>| t.map(|t| now.duration_since(t).unwrap_or_default());
    let mut out = std::io::stdout().lock();
    let text = if as_json {
        let queues: Vec<_> = lines
            .iter()
            .map(|l| {
                let (oldest_id, pushed) = l.oldest.clone().unzip();
                let pushed = pushed.flatten();
                json!({
                    "name": l.name,
                    "ready": l.ready,
                    "delayed": l.delayed,
                    "in_flight": l.in_flight,
                    "dead_letter_queue": l.dead_letter_queue,
                    "dead_lettered": l.dead_lettered,
                    "oldest_id": oldest_id,
                    "oldest_pushed_ms": pushed.map(store::unix_ms),
                    "oldest_age_ms": age(&pushed).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    "bytes": l.bytes,
                })
            })
            .collect();
        let doc = json!({
            "dir": dir.display().to_string(),
            "store": {
                "segments": s.segments,
                "disk_bytes": s.disk_bytes,
                "checkpoint_lsn": s.checkpoint_lsn,
                "durable_lsn": s.durable_lsn,
                "format_version": FORMAT_VERSION,
            },
            "queues": queues,
        });
        serde_json::to_string_pretty(&doc).map_err(|e| CliError::failed(e.to_string()))? + "\n"
    } else {
        let mut t = format!(
            "store {}: {} segments, {} on disk, checkpoint at {}, durable to {}, format \
             version {FORMAT_VERSION}\n",
            dir.display(),
            s.segments,
            short_bytes(s.disk_bytes),
            s.checkpoint_lsn,
            s.durable_lsn,
        );
        let w = lines.iter().map(|l| l.name.len()).max().unwrap_or(0).max(5);
        t += &format!(
            "{:<w$}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>10}\n",
            "queue", "ready", "delayed", "in flight", "dead", "oldest", "bytes"
        );
        for l in &lines {
            let oldest = match &l.oldest {
                None => "-".to_owned(),
                Some((_, t)) => age(t).map_or_else(|| "?".to_owned(), short_duration),
            };
            let dead = if l.dead_letter_queue.is_some() {
                l.dead_lettered.to_string()
            } else {
                "-".to_owned()
            };
            t += &format!(
                "{:<w$}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>10}\n",
                l.name,
                l.ready,
                l.delayed,
                l.in_flight,
                dead,
                oldest,
                short_bytes(l.bytes)
            );
        }
        if lines.is_empty() {
            t += "(no queues)\n";
        }
        if lines.iter().any(|l| matches!(l.oldest, Some((_, None)))) {
            t += "oldest \"?\": pushed by an older version, whose plain pushes record no time\n";
        }
        t
    };
    out.write_all(text.as_bytes()).map_err(|e| CliError::io("standard output", &e))?;
    drop(out);
    store::close(store)?;
    Ok(ExitCode::SUCCESS)
}

/// The payload as text when it is printable UTF-8, else as hex; cut to `max` characters.
pub fn preview(payload: &[u8], max: usize) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let mut s: String = text.chars().flat_map(char::escape_debug).take(max).collect();
            if text.chars().flat_map(char::escape_debug).nth(max).is_some() {
                s.push('…');
            }
            s
        }
        _ => {
            let bytes = payload.len().min(max / 2);
            let mut s = String::from("hex:");
            for b in payload.iter().take(bytes) {
                s += &format!("{b:02x}");
            }
            if payload.len() > bytes {
                s.push('…');
            }
            s
        }
    }
}

fn reason(r: DeadReason) -> &'static str {
    match r {
        DeadReason::Explicit => "dead-lettered by a consumer",
        DeadReason::MaxAttempts => "out of attempts",
        DeadReason::Expired => "expired",
        DeadReason::Overflow => "queue overflow",
        _ => "dead-lettered",
    }
}

/// `wharf peek DIR QUEUE [-n N] [--dead] [--raw]`.
pub fn peek(dir: &Path, name: &str, n: usize, dead: bool, raw: bool) -> Result<ExitCode, CliError> {
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let mut q = store::existing_queue(&store, name)?;
    if dead {
        let dlq = q.dead_letter_queue_name().map_err(fail)?.ok_or_else(|| {
            CliError::usage(format!(
                "queue {name:?} drops its dead letters: it has no dead-letter queue"
            ))
        })?;
        if !store.queue_names().contains(&dlq) {
            eprintln!(
                "queue {name:?} has no dead letters (its dead-letter queue {dlq:?} was never made)"
            );
            store::close(store)?;
            return Ok(ExitCode::SUCCESS);
        }
        q = store.queue(&dlq).map_err(fail)?;
    }
    let messages = q.peek(n).map_err(fail)?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| CliError::io("standard output", &e);
    if raw {
        for m in &messages {
            out.write_all(&m.payload).map_err(io)?;
            out.write_all(b"\n").map_err(io)?;
        }
    } else {
        let depth = q.depth().map_err(fail)?;
        writeln!(
            out,
            "{}: {} ready, {} delayed, {} in flight; showing {}",
            q.name(),
            depth.ready,
            depth.delayed,
            depth.in_flight,
            messages.len()
        )
        .map_err(io)?;
        if !messages.is_empty() {
            writeln!(
                out,
                "{:<16}  {:>8}  {:<20}  {:<20}  {:>4}  {:>8}  payload",
                "id", "attempts", "pushed", "due", "prio", "size"
            )
            .map_err(io)?;
        }
        for m in &messages {
            writeln!(out, "{}", row(m)).map_err(io)?;
        }
    }
    drop(out);
    store::close(store)?;
    Ok(ExitCode::SUCCESS)
}

fn row(m: &Peeked) -> String {
    let time = |t: Option<SystemTime>| t.map_or_else(|| "-".to_owned(), utc);
    let mut line = format!(
        "{:<16}  {:>8}  {:<20}  {:<20}  {:>4}  {:>8}  {}",
        m.id,
        m.attempts,
        time(m.pushed_at),
        time(m.due),
        m.priority,
        m.payload.len(),
        preview(&m.payload, 60)
    );
    if let Some((from, why)) = &m.dead_lettered_from {
        line += &format!("  [from {from}: {}]", reason(*why));
    }
    if let Some(e) = &m.last_error {
        line += &format!("  [last error: {}]", preview(e.as_bytes(), 60));
    }
    line
}
