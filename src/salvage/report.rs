//! The salvage report: what was kept, what was lost, where the damaged files went; and its
//! file (`salvage.swap`, then `damaged-<time>/salvage-report.txt`), a line-per-item text that a
//! person can read and an interrupted salvage reads back.
//!
//! Invariant: `decode(encode(r)) == r`; `decode` never panics and refuses text whose checksum
//! line does not match.

use std::fmt;
use std::path::PathBuf;

use crate::error::Corruption;
use crate::queue::MessageId;

/// What [salvage](crate::WharfBuilder::salvage) kept and what it could not.
///
/// Ids are dense within an epoch (`id = epoch << 40 | seq`, `seq` counting from 1 at each
/// open) and every record carries its own log position, so a damaged range between two intact
/// pushes of one epoch held exactly the ids between theirs: those are named one by one in
/// [`lost`](Self::lost). Where a range's end is unknown (a missing last segment, a log cut
/// below its durable mark) or crosses an epoch, [`lost_ranges`](Self::lost_ranges) gives the
/// id span instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// Unsettled messages kept, every one with intact records and a payload that matches its
    /// checksum.
    pub kept: u64,
    /// Of those, per queue (name, count), in catalog order.
    pub kept_per_queue: Vec<(String, u64)>,
    /// Messages lost, or kept but possibly settled already, by id.
    pub lost: Vec<LostMessage>,
    /// Ranges of the log (or files) that held no valid record where records were expected,
    /// with the ids their pushes could have had.
    pub lost_ranges: Vec<LostRange>,
    /// Where the damaged files were moved (`DIR/damaged-<unix time>/`, holding `log/`,
    /// `state.redb` and `salvage-report.txt`), when the store was salvaged in place.
    pub damaged_dir: Option<PathBuf>,
    /// Everything found wrong, with its file and offset.
    pub problems: Vec<Corruption>,
}

impl SalvageReport {
    /// Whether nothing was lost and nothing may come back: no lost message, no lost range.
    pub fn is_lossless(&self) -> bool {
        self.lost.is_empty() && self.lost_ranges.is_empty()
    }

    /// The messages with fate [`Fate::Lost`].
    pub fn lost_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.lost.iter().filter(|m| m.fate == Fate::Lost).map(|m| m.id)
    }

    /// The messages with fate [`Fate::MayBeRedelivered`].
    pub fn may_be_redelivered(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.lost.iter().filter(|m| m.fate == Fate::MayBeRedelivered).map(|m| m.id)
    }
}

/// One message salvage could not keep, or kept without knowing whether it was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostMessage {
    /// Its id.
    pub id: MessageId,
    /// Its queue, when a surviving record names it.
    pub queue: Option<String>,
    /// What became of it.
    pub fate: Fate,
}

/// What became of a message in the loss list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// Not kept: its push record (or relocated payload) is damaged or gone, and no surviving
    /// record settles it. It may also have been acked by a record in the same damaged range.
    Lost,
    /// Kept, but a damaged range after its last surviving record may have held its ack: it may
    /// be delivered again although it was done (at least once, never silently).
    MayBeRedelivered,
}

/// A range that held no valid record where records were expected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostRange {
    /// The file: a segment, the name a missing segment would have had, or `state.redb`.
    pub file: PathBuf,
    /// Byte offsets in `file`; `to` is `None` when nothing says where the range ends.
    pub from: u64,
    /// See `from`.
    pub to: Option<u64>,
    /// The ids the pushes in it could have had.
    pub ids: IdSpan,
    /// Why it is lost.
    pub reason: String,
}

/// The ids of the messages pushed in a lost range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdSpan {
    /// No message was pushed in it (the pushes on both sides have consecutive ids); it held
    /// only other records (acks, deliveries, ...).
    None,
    /// Exactly the ids `first..=last` were pushed in it (each one is also listed in
    /// [`SalvageReport::lost`] unless kept or settled by a surviving record).
    Exact {
        /// The first id.
        first: MessageId,
        /// The last id.
        last: MessageId,
    },
    /// Ids from `first` on, up to `last` when it is known; not every number between is an id
    /// (the range spans epochs, or its end is unknown).
    Within {
        /// The lowest id it could hold.
        first: MessageId,
        /// The highest, if known.
        last: Option<MessageId>,
    },
    /// Nothing says which (a state database that cannot be read held relocated messages).
    Unknown,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fate::Lost => "lost",
            Fate::MayBeRedelivered => "may be redelivered",
        })
    }
}

impl fmt::Display for IdSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSpan::None => f.write_str("no message pushed"),
            IdSpan::Exact { first, last } => write!(f, "ids {first}..={last}"),
            IdSpan::Within { first, last: Some(last) } => write!(f, "ids within {first}..={last}"),
            IdSpan::Within { first, last: None } => write!(f, "ids from {first} on"),
            IdSpan::Unknown => f.write_str("ids unknown"),
        }
    }
}

impl fmt::Display for SalvageReport {
    /// The report for people: a summary, then one line per lost message, range and problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lost = self.lost_ids().count();
        let maybe = self.may_be_redelivered().count();
        writeln!(f, "kept {} messages; {lost} lost; {maybe} may be redelivered", self.kept)?;
        for (q, n) in &self.kept_per_queue {
            writeln!(f, "  kept {n} in {q}")?;
        }
        if let Some(d) = &self.damaged_dir {
            writeln!(f, "damaged files moved to {}", d.display())?;
        }
        for m in &self.lost {
            let q = m.queue.as_deref().unwrap_or("queue unknown");
            writeln!(f, "  {}: message {} ({q})", m.fate, m.id)?;
        }
        for r in &self.lost_ranges {
            let to = r.to.map_or_else(|| "end unknown".into(), |t| t.to_string());
            writeln!(
                f,
                "  lost range {} [{}, {to}): {}; {}",
                r.file.display(),
                r.from,
                r.ids,
                r.reason
            )?;
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        Ok(())
    }
}

const HEAD: &str = "wharf salvage report 1";

/// Escapes tabs, newlines and backslashes so that a field stays on its line.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => {}
        }
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn id_hex(id: MessageId) -> String {
    format!("{:016x}", id.0)
}

/// The report and the swap's plan as text: `damaged` is the directory (a name in the store
/// directory) the damaged files go to, `bases` the new segments.
pub(crate) fn encode(r: &SalvageReport, damaged: Option<&str>, bases: &[u64]) -> String {
    let mut t = format!(
        "{HEAD}\n# what salvage kept and lost; see README.md, \"When a store is damaged\"\n"
    );
    t += &format!("kept\t{}\n", r.kept);
    t += &format!("damaged-dir\t{}\n", damaged.map_or_else(|| "-".into(), esc));
    for b in bases {
        t += &format!("new-segment\t{b}\n");
    }
    for (q, n) in &r.kept_per_queue {
        t += &format!("kept-in\t{n}\t{}\n", esc(q));
    }
    for m in &r.lost {
        let fate = match m.fate {
            Fate::Lost => "lost",
            Fate::MayBeRedelivered => "may-be-redelivered",
        };
        let q = m.queue.as_deref().map_or_else(|| "-".into(), |q| format!("={}", esc(q)));
        t += &format!("message\t{}\t{fate}\t{q}\n", id_hex(m.id));
    }
    for l in &r.lost_ranges {
        let ids = match l.ids {
            IdSpan::None => "none".into(),
            IdSpan::Exact { first, last } => format!("exact {} {}", id_hex(first), id_hex(last)),
            IdSpan::Within { first, last } => {
                format!("within {} {}", id_hex(first), last.map_or_else(|| "-".into(), id_hex))
            }
            IdSpan::Unknown => "unknown".into(),
        };
        t += &format!(
            "range\t{}\t{}\t{ids}\t{}\t{}\n",
            l.from,
            opt(l.to),
            esc(&l.file.to_string_lossy()),
            esc(&l.reason)
        );
    }
    for p in &r.problems {
        t += &format!(
            "problem\t{}\t{}\t{}\n",
            p.offset,
            esc(&p.file.to_string_lossy()),
            esc(&p.reason)
        );
    }
    let crc = crc32c::crc32c(t.as_bytes());
    t += &format!("crc\t{crc:08x}\n");
    t
}

/// What a report file holds.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub report: SalvageReport,
    pub damaged: Option<String>,
    pub bases: Vec<u64>,
}

/// Reads back what [`encode`] wrote; `None` if the text is not such a report or its checksum
/// fails.
pub(crate) fn decode(text: &str) -> Option<Decoded> {
    let body_end = text.rfind("crc\t")?;
    let (body, crc_line) = text.split_at(body_end);
    let crc = u32::from_str_radix(crc_line.strip_prefix("crc\t")?.trim_end(), 16).ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc || !body.starts_with(HEAD) {
        return None;
    }
    let mut d = Decoded::default();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok().map(MessageId);
    let num = |s: &str| s.parse::<u64>().ok();
    for line in body.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["kept", n] => d.report.kept = num(n)?,
            ["damaged-dir", "-"] => d.damaged = None,
            ["damaged-dir", name] => d.damaged = Some(unesc(name)),
            ["new-segment", b] => d.bases.push(num(b)?),
            ["kept-in", n, q] => d.report.kept_per_queue.push((unesc(q), num(n)?)),
            ["message", id, fate, q] => d.report.lost.push(LostMessage {
                id: hex(id)?,
                fate: match *fate {
                    "lost" => Fate::Lost,
                    "may-be-redelivered" => Fate::MayBeRedelivered,
                    _ => return None,
                },
                queue: q.strip_prefix('=').map(unesc),
            }),
            ["range", from, to, ids, file, reason] => {
                let w: Vec<&str> = ids.split(' ').collect();
                let ids = match w.as_slice() {
                    ["none"] => IdSpan::None,
                    ["unknown"] => IdSpan::Unknown,
                    ["exact", a, b] => IdSpan::Exact { first: hex(a)?, last: hex(b)? },
                    ["within", a, "-"] => IdSpan::Within { first: hex(a)?, last: None },
                    ["within", a, b] => IdSpan::Within { first: hex(a)?, last: Some(hex(b)?) },
                    _ => return None,
                };
                d.report.lost_ranges.push(LostRange {
                    file: PathBuf::from(unesc(file)),
                    from: num(from)?,
                    to: if *to == "-" { None } else { Some(num(to)?) },
                    ids,
                    reason: unesc(reason),
                });
            }
            ["problem", off, file, reason] => d.report.problems.push(Corruption {
                file: PathBuf::from(unesc(file)),
                offset: num(off)?,
                reason: unesc(reason),
            }),
            [c, ..] if c.starts_with('#') => {}
            _ => return None,
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_round_trips_and_a_changed_byte_is_refused() {
        let r = SalvageReport {
            kept: 3,
            kept_per_queue: vec![("jobs".into(), 3)],
            lost: vec![
                LostMessage {
                    id: MessageId(1 << 40 | 5),
                    queue: Some("jobs".into()),
                    fate: Fate::Lost,
                },
                LostMessage {
                    id: MessageId(1 << 40 | 6),
                    queue: None,
                    fate: Fate::MayBeRedelivered,
                },
            ],
            lost_ranges: vec![
                LostRange {
                    file: "log/x\tweird\nname.seg".into(),
                    from: 64,
                    to: None,
                    ids: IdSpan::Within { first: MessageId(7), last: None },
                    reason: "a \\ reason".into(),
                },
                LostRange {
                    file: "state.redb".into(),
                    from: 0,
                    to: Some(10),
                    ids: IdSpan::Exact { first: MessageId(1), last: MessageId(2) },
                    reason: "r".into(),
                },
            ],
            damaged_dir: None,
            problems: vec![Corruption { file: "f".into(), offset: 9, reason: "bad".into() }],
        };
        let text = encode(&r, Some("damaged-1"), &[640, 1280]);
        let d = decode(&text).unwrap();
        assert_eq!(d.report, r);
        assert_eq!(d.damaged.as_deref(), Some("damaged-1"));
        assert_eq!(d.bases, vec![640, 1280]);
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 1;
            if let Ok(s) = String::from_utf8(b) {
                assert!(decode(&s).is_none_or(|d| d.report == r), "byte {i}");
            }
        }
    }
}
