//! `wharf salvage`: open a damaged store past its damage, keeping every intact message, and
//! print what was kept and what was lost.

use std::path::Path;
use std::process::ExitCode;

use wharf::{Fate, IdSpan, SalvageReport, Wharf};

use crate::store::{self, CliError};

/// `wharf salvage DIR [--into NEW] [--json]`: exit status 0 once the salvaged store is durable
/// (the loss list says what could not be kept), 1 if salvage itself failed.
pub fn salvage(dir: &Path, into: Option<&Path>, as_json: bool) -> Result<ExitCode, CliError> {
    store::check_exists(dir)?;
    let report = match into {
        Some(new) => Some(Wharf::salvage_into(dir, new).map_err(|e| CliError::store(dir, &e))?),
        None => {
            let w =
                Wharf::builder().salvage(true).open(dir).map_err(|e| CliError::store(dir, &e))?;
            let report = w.recovery_report().salvage.clone();
            store::close(w)?;
            report
        }
    };
    let target = into.unwrap_or(dir);
    let text = match (&report, as_json) {
        (_, true) => json(dir, target, report.as_ref())?,
        (Some(r), false) => summary(target, r),
        (None, false) => format!(
            "store {}: healthy; opened as it was, nothing lost, nothing moved\n",
            dir.display()
        ),
    };
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| CliError::io("standard output", &e))?;
    Ok(ExitCode::SUCCESS)
}

fn span(ids: IdSpan) -> serde_json::Value {
    match ids {
        IdSpan::None => serde_json::json!({ "kind": "none" }),
        IdSpan::Exact { first, last } => {
            serde_json::json!({ "kind": "exact", "first": first.to_string(), "last": last.to_string() })
        }
        IdSpan::Within { first, last } => serde_json::json!({
            "kind": "within", "first": first.to_string(), "last": last.map(|l| l.to_string()),
        }),
        _ => serde_json::json!({ "kind": "unknown" }),
    }
}

/// The report as one JSON document (`salvaged: false` for a healthy store).
fn json(dir: &Path, target: &Path, r: Option<&SalvageReport>) -> Result<String, CliError> {
    let doc = match r {
        None => serde_json::json!({ "dir": dir.display().to_string(), "salvaged": false }),
        Some(r) => serde_json::json!({
            "dir": dir.display().to_string(),
            "salvaged": true,
            "store": target.display().to_string(),
            "kept": r.kept,
            "kept_per_queue": r.kept_per_queue.iter().map(|(q, n)| serde_json::json!({
                "queue": q, "kept": n,
            })).collect::<Vec<_>>(),
            "lost": r.lost.iter().map(|m| serde_json::json!({
                "id": m.id.to_string(),
                "queue": m.queue,
                "fate": if m.fate == Fate::Lost { "lost" } else { "may_be_redelivered" },
            })).collect::<Vec<_>>(),
            "lost_ranges": r.lost_ranges.iter().map(|l| serde_json::json!({
                "file": l.file.display().to_string(), "from": l.from, "to": l.to,
                "ids": span(l.ids), "reason": l.reason,
            })).collect::<Vec<_>>(),
            "damaged_dir": r.damaged_dir.as_ref().map(|d| d.display().to_string()),
            "problems": r.problems.iter().map(|p| serde_json::json!({
                "file": p.file.display().to_string(), "offset": p.offset, "reason": p.reason,
            })).collect::<Vec<_>>(),
        }),
    };
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| CliError::failed(e.to_string()))
}

/// The report for people.
fn summary(target: &Path, r: &SalvageReport) -> String {
    let mut t = format!("salvaged into {}: a healthy store\n{r}", target.display());
    if r.is_lossless() {
        t += "nothing was lost\n";
    }
    if r.may_be_redelivered().next().is_some() {
        t += "messages that \"may be redelivered\" are kept: a damaged range may have held their ack\n";
    }
    t
}
