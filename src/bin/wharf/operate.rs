//! `wharf push`, `pop`, `dlq requeue` and `purge`: changing what a store holds.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use wharf::{MessageId, PushOptions};

use crate::store::{self, say, CliError, EMPTY};

/// Options of `wharf push`.
pub struct PushArgs {
    pub delay: Option<Duration>,
    pub priority: Option<u8>,
    pub key: Option<String>,
    pub lines: bool,
}

/// Messages `--lines` pushes with one group commit.
const LINE_BATCH: usize = 1024;

/// `wharf push DIR QUEUE [PAYLOAD] [--delay D] [--priority P] [--key K] [--lines]`.
pub fn push(
    dir: &Path,
    name: &str,
    payload: Option<String>,
    args: &PushArgs,
) -> Result<ExitCode, CliError> {
    store::check_name(name)?;
    let mut opts = PushOptions::new();
    if let Some(d) = args.delay {
        opts = opts.delay(d);
    }
    if let Some(p) = args.priority {
        opts = opts.priority(p);
    }
    if let Some(k) = &args.key {
        opts = opts.dedup_key(k);
    }
    // Read the input before opening: a store is not held while a producer writes slowly.
    let stdin = std::io::stdin();
    let input = |e: std::io::Error| CliError::io("standard input", &e);
    let messages: Vec<Vec<u8>> = if args.lines {
        let mut lines = Vec::new();
        for line in stdin.lock().split(b'\n') {
            let mut line = line.map_err(input)?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.is_empty() {
                lines.push(line);
            }
        }
        lines
    } else if let Some(p) = payload {
        vec![p.into_bytes()]
    } else {
        if stdin.is_terminal() {
            eprintln!("reading the payload from standard input (end with Ctrl-D)");
        }
        let mut bytes = Vec::new();
        stdin.lock().read_to_end(&mut bytes).map_err(input)?;
        vec![bytes]
    };
    let store = store::open_or_create(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store.queue(name).map_err(fail)?;
    let mut ids: Vec<MessageId> = Vec::with_capacity(messages.len());
    if args.lines {
        for batch in messages.chunks(LINE_BATCH) {
            ids.extend(q.push_batch_with(batch, opts.clone()).map_err(fail)?);
        }
    } else {
        for m in &messages {
            ids.push(q.push_with(m, opts.clone()).map_err(fail)?);
        }
    }
    store::close(store)?;
    let mut out = std::io::stdout().lock();
    for id in &ids {
        writeln!(out, "{id}").map_err(|e| CliError::io("standard output", &e))?;
    }
    if args.lines {
        eprintln!("pushed {} messages to {name}", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `wharf pop DIR QUEUE [--ack]`: the payload to standard output, its id to standard error.
pub fn pop(dir: &Path, name: &str, ack: bool) -> Result<ExitCode, CliError> {
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store::existing_queue(&store, name)?;
    let Some(d) = q.try_pop().map_err(fail)? else {
        eprintln!("queue {name:?} has no ready message");
        store::close(store)?;
        return Ok(ExitCode::from(EMPTY));
    };
    let mut out = std::io::stdout().lock();
    out.write_all(d.payload())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("standard output", &e))?;
    drop(out);
    let (id, attempt) = (d.id(), d.attempt());
    if ack {
        d.ack().map_err(fail)?;
        eprintln!("message {id} (attempt {attempt}) acked");
    } else {
        d.release().map_err(fail)?;
        eprintln!("message {id} (attempt {attempt}) released: it is ready again");
    }
    store::close(store)?;
    Ok(ExitCode::SUCCESS)
}

/// `wharf dlq requeue DIR QUEUE [--all | ID...]`.
pub fn requeue(dir: &Path, name: &str, all: bool, ids: &[String]) -> Result<ExitCode, CliError> {
    let ids: Vec<u64> = ids.iter().map(|s| store::parse_id(s)).collect::<Result<_, _>>()?;
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store::existing_queue(&store, name)?;
    let dlq = q.dead_letter_queue_name().map_err(fail)?;
    let dead = match dlq.filter(|d| store.queue_names().contains(d)) {
        Some(d) => store.queue(&d).map_err(fail)?,
        // QUEUE may name a dead-letter queue itself: its messages say where they came from.
        None if q
            .peek(1)
            .map_err(fail)?
            .first()
            .is_some_and(|m| m.dead_lettered_from.is_some()) =>
        {
            q
        }
        None => {
            say(&format!("requeued 0 messages: {name:?} has no dead letters"))?;
            store::close(store)?;
            let code =
                if ids.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(store::FAILED) };
            return Ok(code);
        }
    };
    let dlq = dead.name().to_owned();
    let code = if all {
        let n = dead.requeue_all().map_err(fail)?;
        say(&format!("requeued {n} messages from {dlq} to where they came from"))?;
        ExitCode::SUCCESS
    } else {
        let mut missing = Vec::new();
        let mut moved = 0;
        // Ids are typed: the ones a peek shows are the ones `requeue` takes.
        let letters: Vec<MessageId> = dead.waiting_ids().map_err(fail)?;
        for id in ids {
            match letters.iter().find(|m| m.get() == id) {
                Some(&m) if dead.requeue(m).map_err(fail)? => moved += 1,
                _ => missing.push(format!("{id:016x}")),
            }
        }
        say(&format!("requeued {moved} messages from {dlq}"))?;
        if missing.is_empty() {
            ExitCode::SUCCESS
        } else {
            eprintln!("wharf: not dead letters of {name:?}: {}", missing.join(", "));
            ExitCode::from(store::FAILED)
        }
    };
    store::close(store)?;
    Ok(code)
}

/// `wharf purge DIR QUEUE [--yes]`.
pub fn purge(dir: &Path, name: &str, yes: bool) -> Result<ExitCode, CliError> {
    let store = store::open_existing(dir)?;
    let fail = |e: wharf::Error| CliError::store(dir, &e);
    let q = store::existing_queue(&store, name)?;
    let depth = q.depth().map_err(fail)?;
    let waiting = depth.ready + depth.delayed;
    if !yes {
        eprint!(
            "remove the {waiting} waiting messages of queue {name:?} in {} for good? [y/N] ",
            dir.display()
        );
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::io("standard input", &e))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            eprintln!("nothing removed");
            store::close(store)?;
            return Ok(ExitCode::from(store::FAILED));
        }
    }
    let n = q.purge().map_err(fail)?;
    store::close(store)?;
    say(&format!("purged {n} messages from {name}"))?;
    Ok(ExitCode::SUCCESS)
}
