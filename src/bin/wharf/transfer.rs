//! `wharf export` and `wharf import`: a queue's waiting messages as JSON lines, payloads in
//! base64, so a store can be moved or looked at with other tools.
//!
//! A line holds what an import can give a new message exactly: the payload, the priority and,
//! when set, the due time, the expiry time (Unix ms) and the dedup key. Ids, attempts, push
//! times and dead-letter notes are not exported: an import makes new messages (new ids,
//! attempts from zero). Lines are written in delivery order with a fixed field order, so an
//! export of an import of an export is the same bytes, as long as no due or expiry time passed
//! in between.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use wharf::{Peeked, PushOptions};

use crate::store::{self, CliError};

/// One exported message.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Line {
    /// The payload, base64 (standard alphabet, padded).
    payload: String,
    #[serde(default)]
    priority: u8,
    /// When it becomes ready, in Unix ms, if it is delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    due_ms: Option<u64>,
    /// When its time-to-live runs out, in Unix ms, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
    /// Its dedup key, base64, if it was pushed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedup_key: Option<String>,
}

impl Line {
    fn of(m: &Peeked) -> Line {
        Line {
            payload: STANDARD.encode(&m.payload),
            priority: m.priority,
            due_ms: m.due.map(store::unix_ms),
            expires_ms: m.expires.map(store::unix_ms),
            dedup_key: m.dedup_key.as_ref().map(|k| STANDARD.encode(k)),
        }
    }
}

/// A line ready to push.
struct Decoded {
    payload: Vec<u8>,
    priority: u8,
    due_ms: Option<u64>,
    expires_ms: Option<u64>,
    /// `due_ms` and `expires_ms` as times.
    due: Option<SystemTime>,
    expires: Option<SystemTime>,
    key: Option<Vec<u8>>,
}

/// The time `ms` Unix milliseconds stand for, if this platform can hold it.
fn at(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

impl Decoded {
    fn options(&self) -> PushOptions {
        let mut opts = PushOptions::new().priority(self.priority);
        if let Some(due) = self.due {
            opts = opts.not_before(due);
        }
        if let Some(exp) = self.expires {
            opts = opts.expires_at(exp);
        }
        if let Some(k) = &self.key {
            opts = opts.dedup_key(k);
        }
        opts
    }

    /// Whether `other` can share this message's batch (same options, no dedup key).
    fn batches_with(&self, other: &Decoded) -> bool {
        self.key.is_none()
            && other.key.is_none()
            && (self.priority, self.due_ms, self.expires_ms)
                == (other.priority, other.due_ms, other.expires_ms)
    }
}

fn decode(n: usize, text: &str) -> Result<Decoded, CliError> {
    let bad = |why: String| CliError::failed(format!("standard input, line {n}: {why}"));
    let line: Line =
        serde_json::from_str(text).map_err(|e| bad(format!("not an export line: {e}")))?;
    let payload =
        STANDARD.decode(&line.payload).map_err(|e| bad(format!("payload is not base64: {e}")))?;
    let key = match &line.dedup_key {
        Some(k) => {
            Some(STANDARD.decode(k).map_err(|e| bad(format!("dedup_key is not base64: {e}")))?)
        }
        None => None,
    };
    if line.priority > wharf::MAX_PRIORITY {
        return Err(bad(format!("priority {} is above {}", line.priority, wharf::MAX_PRIORITY)));
    }
    let time = |what: &str, ms: Option<u64>| match ms {
        None => Ok(None),
        Some(ms) => at(ms)
            .map(Some)
            .ok_or_else(|| bad(format!("{what} {ms} is past the latest time this system holds"))),
    };
    Ok(Decoded {
        payload,
        priority: line.priority,
        due_ms: line.due_ms,
        expires_ms: line.expires_ms,
        due: time("due_ms", line.due_ms)?,
        expires: time("expires_ms", line.expires_ms)?,
        key,
    })
}

/// Messages an import pushes with one group commit.
const BATCH: usize = 1024;

/// `wharf export DIR QUEUE`: JSON lines to standard output.
pub fn export(dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store::existing_queue(&store, name)?;
    // One message in memory at a time: the ids first (8 bytes each), then each message.
    let ids = q.waiting_ids().map_err(fail)?;
    let bar = store::progress(
        Some(ids.len() as u64),
        "exporting [{bar:40}] {human_pos}/{human_len} messages ({eta})",
    );
    let io = |e: std::io::Error| CliError::io("standard output", &e);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut exported = 0u64;
    for id in ids {
        // Every id is still waiting: the store is this process's alone.
        if let Some(m) = q.peek_id(id).map_err(fail)? {
            serde_json::to_writer(&mut out, &Line::of(&m)).map_err(|e| {
                match e.io_error_kind() {
                    Some(kind) => io(kind.into()),
                    None => CliError::failed(e.to_string()),
                }
            })?;
            out.write_all(b"\n").map_err(io)?;
            exported += 1;
        }
        bar.inc(1);
    }
    out.flush().map_err(io)?;
    bar.finish_and_clear();
    drop(out);
    store::close(store)?;
    eprintln!("exported {exported} messages from {name}");
    Ok(ExitCode::SUCCESS)
}

/// `wharf import DIR QUEUE`: JSON lines from standard input. Every line is checked before
/// anything is pushed, so a bad file imports nothing.
pub fn import(dir: &Path, name: &str) -> Result<ExitCode, CliError> {
    store::check_name(name)?;
    let mut lines = Vec::new();
    for (i, text) in std::io::stdin().lock().lines().enumerate() {
        let text = text.map_err(|e| CliError::io("standard input", &e))?;
        if !text.trim().is_empty() {
            lines.push(decode(i + 1, &text)?);
        }
    }
    let store = store::open_or_create(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store.queue(name).map_err(fail)?;
    let bar = store::progress(
        Some(lines.len() as u64),
        "importing [{bar:40}] {human_pos}/{human_len} messages ({eta})",
    );
    let mut rest = lines.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take(BATCH).take_while(|l| first.batches_with(l)).count().max(1);
        let (batch, after) = rest.split_at(n.min(rest.len()));
        if first.key.is_some() {
            q.push_with(&first.payload, first.options()).map_err(fail)?;
        } else {
            q.push_batch_with(batch.iter().map(|l| &l.payload), first.options()).map_err(fail)?;
        }
        bar.inc(batch.len() as u64);
        rest = after;
    }
    bar.finish_and_clear();
    store::close(store)?;
    eprintln!("imported {} messages into {name}", lines.len());
    Ok(ExitCode::SUCCESS)
}
