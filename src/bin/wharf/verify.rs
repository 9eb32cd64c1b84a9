//! `wharf verify`: the read-only integrity check, with a progress bar over the log it reads.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use wharf::{StateDbCheck, VerifyReport, Wharf};

use crate::store::{self, short_bytes, CliError};

/// `wharf verify DIR [--json]`: exit status 1 if any problem is found.
pub fn verify(dir: &Path, as_json: bool) -> Result<ExitCode, CliError> {
    store::check_exists(dir)?;
    let bar = store::progress(
        Some(0),
        "verifying [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    );
    let report = Wharf::verify_with_progress(dir, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(|e| CliError::store(dir, &e));
    bar.finish_and_clear();
    let report = report?;
    let healthy = report.is_healthy();
    let code = if healthy { ExitCode::SUCCESS } else { ExitCode::from(store::FAILED) };
    let text = if as_json { json(dir, &report)? } else { summary(dir, &report) };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| CliError::io("standard output", &e))?;
    Ok(code)
}

/// The report as one JSON document.
fn json(dir: &Path, report: &VerifyReport) -> Result<String, CliError> {
    let r = &report.records;
    let doc = serde_json::json!({
        "dir": dir.display().to_string(),
        "healthy": report.is_healthy(),
        "segments": report.segments,
        "records": {
            "total": r.total(), "push": r.push, "push_ex": r.push_ex, "deliver": r.deliver,
            "ack": r.ack, "acks": r.acks, "nack": r.nack, "retry": r.retry, "dead_letter": r.dead_letter,
            "requeue": r.requeue, "queue": r.queue, "config": r.config, "epoch": r.epoch,
            "seal": r.seal,
            "anchor": r.anchor,
        },
        "queues": report.queues.iter().map(|q| serde_json::json!({
            "name": q.name, "ready": q.ready, "delayed": q.delayed, "in_flight": q.in_flight,
        })).collect::<Vec<_>>(),
        "torn_tail_bytes": report.torn_tail_bytes,
        "torn_tail_at": report.torn_tail_at.as_ref().map(|(f, off)| serde_json::json!({
            "file": f.display().to_string(), "offset": off,
        })),
        "mark_end": report.mark_end,
        "checkpoint": report.checkpoint,
        "relocated": report.relocated,
        "relocated_bytes": report.relocated_bytes,
        "dedup_keys": report.dedup_keys,
        "temporary_files": report.temporary_files,
        "ignored_files": report.ignored_files,
        "problems": report.problems.iter().map(|p| serde_json::json!({
            "file": p.file.display().to_string(), "offset": p.offset, "reason": p.reason,
        })).collect::<Vec<_>>(),
        "more_problems": report.more_problems,
    });
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| CliError::failed(e.to_string()))
}

/// The report for people.
fn summary(dir: &Path, report: &VerifyReport) -> String {
    let mut t = format!("store {}\n", dir.display());
    let r = &report.records;
    t += &format!(
        "  log: {} segment files, {} valid records ({} pushes, {} acks, {} batch acks, {} \
         deliveries, {} dead letters)\n",
        report.segments,
        r.total(),
        r.push + r.push_ex,
        r.ack,
        r.acks,
        r.deliver,
        r.dead_letter
    );
    let unsettled: u64 = report.queues.iter().map(wharf::QueueSummary::unsettled).sum();
    t += &format!("  queues: {}, {unsettled} unsettled messages\n", report.queues.len());
    for q in &report.queues {
        t += &format!(
            "    {}: {} ready, {} delayed ({} of them in flight when it stopped)\n",
            q.name, q.ready, q.delayed, q.in_flight
        );
    }
    t += &match &report.state {
        StateDbCheck::Absent => "  state database: none (no checkpoint yet)\n".to_owned(),
        StateDbCheck::Opened => format!(
            "  state database: checkpoint at {}, {} relocated messages ({}), {} dedup keys\n",
            report.checkpoint.unwrap_or(0),
            report.relocated,
            short_bytes(report.relocated_bytes),
            report.dedup_keys
        ),
        StateDbCheck::NotOpened(why) => format!("  state database: not read: {why}\n"),
        _ => "  state database: unknown\n".to_owned(),
    };
    if report.torn_tail_bytes > 0 {
        let at = report
            .torn_tail_at
            .as_ref()
            .map_or_else(String::new, |(f, off)| format!(" in {} at offset {off}", f.display()));
        t += &format!(
            "  torn tail: {} bytes{at} (not damage: the next open cuts it)\n",
            report.torn_tail_bytes
        );
    }
    if let Some(end) = report.mark_end {
        t += &format!("  clean-close mark: durable to {end}\n");
    }
    for f in &report.temporary_files {
        t += &format!("  temporary file {f} (the next open removes it)\n");
    }
    for f in &report.ignored_files {
        t += &format!("  ignored file log/{f} (not wharf's)\n");
    }
    if report.is_healthy() {
        t += "healthy: no problem found\n";
    } else {
        let n = report.problems.len() as u64 + report.more_problems;
        t += &format!("DAMAGED: {n} problem{}\n", if n == 1 { "" } else { "s" });
        for p in &report.problems {
            t += &format!("  {}: offset {}: {}\n", p.file.display(), p.offset, p.reason);
        }
        if report.more_problems > 0 {
            t += &format!("  ... and {} more\n", report.more_problems);
        }
        t += &format!(
            "`wharf salvage {}` keeps the intact messages and lists the lost ones\n",
            dir.display()
        );
    }
    t
}
