//! Where a message's bytes are and how they are read: a slice of a segment's map, a copy of
//! bytes not written yet, or a row of the state database; each checked against its CRC before
//! use.

use std::sync::Arc;

use super::{Entry, RELOCATED};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::log::Segment;
use crate::record::{self, Body};
use crate::store::{Shared, State};

/// Where a delivery's payload bytes are.
pub(crate) enum Payload {
    /// A slice of a segment's read-only map, kept alive by the `Arc`.
    Mapped { seg: Arc<Segment>, start: usize, len: usize },
    /// A record copied into memory; the payload starts at `start`.
    Owned { bytes: Vec<u8>, start: usize },
}

impl Payload {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Mapped { seg, start, len } => {
                seg.mapped().and_then(|m| m.get(*start..start + len)).unwrap_or(&[])
            }
            Payload::Owned { bytes, start } => bytes.get(*start..).unwrap_or(&[]),
        }
    }
}

/// A leased message taken under the lock, before its payload is read.
pub(crate) struct Taken {
    pub id: u64,
    pub entry: Entry,
    pub source: Source,
}

pub(crate) enum Source {
    Segment(Arc<Segment>),
    Copied(Vec<u8>),
    /// Relocated into the state database: read from there, checked against this CRC; pushed
    /// at this Unix ms (0: not recorded).
    Relocated {
        crc: u32,
        pushed: u64,
    },
}

/// Where the bytes of a message's push record are: its segment, or a copy of bytes not yet
/// written.
pub(crate) fn source_of(g: &State, id: u64, entry: &Entry) -> Result<Source> {
    let rec_len = entry.record_len();
    let source = if entry.lsn == RELOCATED {
        g.wal()
            .log()
            .relocated()
            .get(&id)
            .map(|row| Source::Relocated { crc: row.crc, pushed: row.pushed })
    } else if entry.lsn + rec_len as u64 <= g.wal().written() {
        g.wal().log().segment_of(entry.lsn).map(|s| Source::Segment(Arc::clone(s)))
    } else {
        g.wal().copy_unwritten(entry.lsn, rec_len).map(Source::Copied)
    };
    source.ok_or_else(|| Error::Internal(format!("message {id:x} has no bytes in the log")))
}

/// What a push record says besides the payload: its wall-clock time (0: not recorded) and
/// dedup key.
#[derive(Default)]
pub(crate) struct PushMeta {
    pub pushed: u64,
    pub key: Option<Vec<u8>>,
}

/// Reads and checks the push record of a taken message, and returns its payload, also filling
/// in `meta` from the push record when asked.
pub(crate) fn load_with(
    t: Taken,
    shared: &Shared,
    mut meta: Option<&mut PushMeta>,
) -> Result<Payload> {
    let rec_len = t.entry.record_len();
    let off = t.entry.off as usize;
    let lsn = t.entry.lsn;
    let mut check = |bytes: &[u8], seg: Option<&Segment>| -> Result<()> {
        let fail = |why: &str| {
            let (file, offset) =
                seg.map_or_else(Default::default, |s| (s.path().to_path_buf(), lsn - s.base()));
            Error::Corrupted(crate::error::Corruption { file, offset, reason: why.into() })
        };
        match record::decode(bytes, lsn) {
            // Ids are unique in the store; a dead letter's record names the queue it was pushed to.
            Ok(r) if matches!(r.body, Body::Push { id, .. } | Body::PushEx { id, .. } if id == t.id) =>
            {
                if let (Some(m), Body::PushEx { pushed, key, .. }) = (meta.as_deref_mut(), r.body) {
                    m.pushed = pushed;
                    m.key = (!key.is_empty()).then(|| key.to_vec());
                }
                Ok(())
            }
            Ok(_) => Err(fail("a different record where a message was expected")),
            Err(e) => Err(fail(e.describe())),
        }
    };
    match t.source {
        Source::Segment(seg) => {
            let start = usize::try_from(lsn - seg.base()).unwrap_or(usize::MAX);
            let in_map = seg.mapped().and_then(|m| m.get(start..start.saturating_add(rec_len)));
            let mapped = match in_map {
                Some(bytes) => check(bytes, Some(&seg)).map(|()| true)?,
                None => false,
            };
            if mapped {
                Ok(Payload::Mapped { seg, start: start + off, len: t.entry.len as usize })
            } else {
                let bytes = seg.read(lsn, rec_len)?;
                check(&bytes, Some(&seg))?;
                Ok(Payload::Owned { bytes, start: off })
            }
        }
        Source::Copied(bytes) => {
            check(&bytes, None)?;
            Ok(Payload::Owned { bytes, start: off })
        }
        Source::Relocated { crc, pushed } => {
            if let Some(m) = meta {
                m.pushed = pushed;
            }
            let db = checkpoint::state_db(shared)?;
            let bytes = db.payload(t.id, crc, t.entry.len).inspect_err(|e| {
                if matches!(e, Error::Io(_)) {
                    checkpoint::state_db_failed(shared, &db, false);
                }
            })?;
            Ok(Payload::Owned { bytes, start: 0 })
        }
    }
}
