//! `wharf verify`: the read-only integrity check, with a progress bar over the log it reads.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use wharf::{StateDb, Wharf};

use crate::store::{self, short_bytes, CliError};

/// `wharf verify DIR`: exit status 1 if any problem is found.
pub fn verify(dir: &Path) -> Result<ExitCode, CliError> {
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

    let mut t = format!("store {}\n", dir.display());
    let r = &report.records;
    t += &format!(
        "  log: {} segment files, {} valid records ({} pushes, {} acks, {} deliveries, {} \
         dead letters)\n",
        report.segments,
        r.total(),
        r.push + r.push_ex,
        r.ack,
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
        StateDb::Absent => "  state database: none (no checkpoint yet)\n".to_owned(),
        StateDb::Opened => format!(
            "  state database: checkpoint at {}, {} relocated messages ({}), {} dedup keys\n",
            report.checkpoint.unwrap_or(0),
            report.relocated,
            short_bytes(report.relocated_bytes),
            report.dedup_keys
        ),
        StateDb::NotOpened(why) => format!("  state database: not read: {why}\n"),
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
    let healthy = report.is_healthy();
    if healthy {
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
    }
    std::io::stdout()
        .lock()
        .write_all(t.as_bytes())
        .map_err(|e| CliError::io("standard output", &e))?;
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(store::FAILED) })
}
