//! Record framing: the bytes of one log record, encoded and decoded without I/O.
//!
//! Invariant: `decode` never panics and never allocates, whatever bytes it is given.
//!
//! Every record is laid out as (all integers little-endian):
//!
//! ```text
//! offset size field
//!  0     4    len      total length of the record, header included (so never 0)
//!  4     4    crc      CRC-32C of bytes [0, 4) followed by bytes [8, len)
//!  8     8    lsn      log position of the record's first byte
//! 16     4    synced   lsn minus the log's durable end when the record was staged
//!                      (u32::MAX: unknown); tells a torn tail from mid-log damage
//! 20     1    kind     see `Kind`
//! 21     1    flags    bit 0 `MORE`: the record is not the last of its group (format 3)
//! 22     2    reserved zero
//! 24     ...  body     by kind, below
//! ```
//!
//! Bodies: `Push` = queue u32, id u64, payload; `Ack`, `Nack` = queue u32, id u64;
//! `Deliver` = queue u32, id u64, attempt u32; `Queue` = queue u32, name bytes;
//! `Epoch` = epoch u32; `Seal` = nothing; `PushEx` = queue u32, id u64, priority u8, zero u8,
//! key length u16, not-before u64, expires u64, pushed u64 (Unix ms, 0 = none), key, payload;
//! `Retry` = queue u32, id u64, due u64 (Unix ms), error text; `DeadLetter` = queue u32, id u64,
//! to u32, reason u8, zero ×3, error text; `Requeue` = queue u32, id u64, to u32; `Config` =
//! queue u32, config bytes (`config.rs`); `Anchor` = start u64, checkpoint u64; `Acks`
//! (format 5) = queue u32, count u32 (1 to [`MAX_ACKS`]), then count × id u64: the acks of
//! several messages of one queue, each as an `Ack` of it.
//!
//! A group is a run of records written by one call as one step (a batch of pushes, the
//! dead letters a full queue makes room with and the push that needed the room): each record
//! of it but the last carries `MORE`. Replay applies a group only once its last record is
//! read, so a crash keeps all of it or none (`crate::log::Group`); a seal and the next segment's
//! preamble may come between its records.

/// Bytes of the fixed record header.
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Bytes of a `Push` record before its payload.
pub(crate) const PUSH_OVERHEAD: usize = RECORD_HEADER_LEN + 12;
/// Bytes of a `PushEx` record before its key.
pub(crate) const PUSH_EX_OVERHEAD: usize = RECORD_HEADER_LEN + 40;
/// Bytes of a `Seal` record.
pub(crate) const SEAL_LEN: usize = RECORD_HEADER_LEN;
/// Bytes of an `Anchor` record.
pub(crate) const ANCHOR_LEN: usize = RECORD_HEADER_LEN + 16;
/// Bytes every segment keeps free at its end for the records that must always fit: its `Seal`,
/// and the `Anchor` that must be durable before a settled segment is deleted (deleting is what
/// makes room on a full disk, so it must never wait for room itself).
pub(crate) const TAIL_RESERVE: usize = SEAL_LEN + ANCHOR_LEN;
/// Flag bit: the record is not the last of its group.
const MORE: u8 = 1;
/// The most ids one `Acks` record holds (a larger batch is several records in one group).
pub(crate) const MAX_ACKS: usize = 1024;

/// The type of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Push = 1,
    Ack = 2,
    Deliver = 3,
    Nack = 4,
    Queue = 5,
    Epoch = 6,
    Seal = 7,
    PushEx = 8,
    Retry = 9,
    DeadLetter = 10,
    Requeue = 11,
    Config = 12,
    Anchor = 13,
    Acks = 14,
}

impl Kind {
    /// The kind in words, for error messages.
    fn name(self) -> &'static str {
        match self {
            Kind::Push | Kind::PushEx => "push",
            Kind::Ack => "ack",
            Kind::Deliver => "delivery",
            Kind::Nack => "release",
            Kind::Queue => "queue catalog",
            Kind::Epoch => "epoch",
            Kind::Seal => "seal",
            Kind::Retry => "retry",
            Kind::DeadLetter => "dead-letter",
            Kind::Requeue => "requeue",
            Kind::Config => "queue config",
            Kind::Anchor => "anchor",
            Kind::Acks => "batch ack",
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Push,
            2 => Kind::Ack,
            3 => Kind::Deliver,
            4 => Kind::Nack,
            5 => Kind::Queue,
            6 => Kind::Epoch,
            7 => Kind::Seal,
            8 => Kind::PushEx,
            9 => Kind::Retry,
            10 => Kind::DeadLetter,
            11 => Kind::Requeue,
            12 => Kind::Config,
            13 => Kind::Anchor,
            14 => Kind::Acks,
            _ => return None,
        })
    }
}

/// The decoded fields of a record; payloads and names borrow from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    Push {
        queue: u32,
        id: u64,
        payload: &'a [u8],
    },
    Ack {
        queue: u32,
        id: u64,
    },
    Deliver {
        queue: u32,
        id: u64,
        attempt: u32,
    },
    Nack {
        queue: u32,
        id: u64,
    },
    Queue {
        queue: u32,
        name: &'a [u8],
    },
    Epoch {
        epoch: u32,
    },
    Seal,
    /// A push with options: `priority` (higher first), wall-clock times in Unix ms (0: none).
    PushEx {
        queue: u32,
        id: u64,
        priority: u8,
        not_before: u64,
        expires: u64,
        pushed: u64,
        key: &'a [u8],
        payload: &'a [u8],
    },
    /// A failed delivery: the message waits until `due` (Unix ms; 0: ready at once).
    Retry {
        queue: u32,
        id: u64,
        due: u64,
        error: &'a [u8],
    },
    /// The message moves from `queue` to queue `to` (the same message, the same payload).
    DeadLetter {
        queue: u32,
        id: u64,
        to: u32,
        reason: u8,
        error: &'a [u8],
    },
    /// A dead letter moves back from `queue` to `to`, its attempts counted from zero again.
    Requeue {
        queue: u32,
        id: u64,
        to: u32,
    },
    /// The queue's configuration from now on.
    Config {
        queue: u32,
        config: &'a [u8],
    },
    /// Where the log must start (the base of its oldest segment: none below it may be
    /// missing) and the checkpoint the state database holds at least. Every segment's preamble
    /// states it, and so does a record made durable before segments are deleted.
    Anchor {
        start: u64,
        checkpoint: u64,
    },
    /// Acks of messages of `queue`, each exactly as an `Ack` of it (format 5).
    Acks {
        queue: u32,
        ids: Ids<'a>,
    },
}

/// The message ids of an `Acks` record: the bytes decoding read (`count` × u64, little-endian,
/// their length checked), or the values to encode. Equal when they hold the same ids.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ids<'a> {
    Bytes(&'a [u8]),
    Values(&'a [u64]),
}

impl<'a> Ids<'a> {
    /// How many ids.
    pub(crate) fn len(self) -> usize {
        match self {
            Ids::Bytes(b) => b.len() / 8,
            Ids::Values(v) => v.len(),
        }
    }

    /// The ids, in record order.
    pub(crate) fn iter(self) -> impl Iterator<Item = u64> + 'a {
        let (bytes, values): (&[u8], &[u64]) = match self {
            Ids::Bytes(b) => (b, &[]),
            Ids::Values(v) => (&[], v),
        };
        let read = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        bytes.chunks_exact(8).map(read).chain(values.iter().copied())
    }
}

impl PartialEq for Ids<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Ids<'_> {}

impl<'a> Body<'a> {
    /// The messages the record is about: one, several (`Acks`), or none (a preamble record or
    /// a seal).
    pub(crate) fn message_ids(&self) -> impl Iterator<Item = u64> + 'a {
        let (one, many) = match *self {
            Body::Push { id, .. }
            | Body::PushEx { id, .. }
            | Body::Deliver { id, .. }
            | Body::Ack { id, .. }
            | Body::Nack { id, .. }
            | Body::Retry { id, .. }
            | Body::DeadLetter { id, .. }
            | Body::Requeue { id, .. } => (Some(id), None),
            Body::Acks { ids, .. } => (None, Some(ids)),
            Body::Epoch { .. }
            | Body::Queue { .. }
            | Body::Config { .. }
            | Body::Anchor { .. }
            | Body::Seal => (None, None),
        };
        one.into_iter().chain(many.into_iter().flat_map(Ids::iter))
    }

    /// Whether the record is about messages (not a preamble record or a seal): such a record
    /// without `MORE` closes a group.
    pub(crate) fn about_messages(&self) -> bool {
        !matches!(
            self,
            Body::Epoch { .. }
                | Body::Queue { .. }
                | Body::Config { .. }
                | Body::Anchor { .. }
                | Body::Seal
        )
    }

    fn kind(&self) -> Kind {
        match self {
            Body::Push { .. } => Kind::Push,
            Body::Ack { .. } => Kind::Ack,
            Body::Deliver { .. } => Kind::Deliver,
            Body::Nack { .. } => Kind::Nack,
            Body::Queue { .. } => Kind::Queue,
            Body::Epoch { .. } => Kind::Epoch,
            Body::Seal => Kind::Seal,
            Body::PushEx { .. } => Kind::PushEx,
            Body::Retry { .. } => Kind::Retry,
            Body::DeadLetter { .. } => Kind::DeadLetter,
            Body::Requeue { .. } => Kind::Requeue,
            Body::Config { .. } => Kind::Config,
            Body::Anchor { .. } => Kind::Anchor,
            Body::Acks { .. } => Kind::Acks,
        }
    }

    /// Where the payload starts in a push record (either kind) of this body.
    pub(crate) fn payload_offset(&self) -> usize {
        match self {
            Body::PushEx { key, .. } => PUSH_EX_OVERHEAD + key.len(),
            _ => PUSH_OVERHEAD,
        }
    }

    /// Length of the whole record this body encodes into.
    pub(crate) fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN
            + match self {
                Body::Push { payload, .. } => 12 + payload.len(),
                Body::Ack { .. } | Body::Nack { .. } => 12,
                Body::Deliver { .. } => 16,
                Body::Queue { name, .. } => 4 + name.len(),
                Body::Epoch { .. } => 4,
                Body::Seal => 0,
                Body::PushEx { key, payload, .. } => 40 + key.len() + payload.len(),
                Body::Retry { error, .. } => 20 + error.len(),
                Body::DeadLetter { error, .. } => 20 + error.len(),
                Body::Requeue { .. } => 16,
                Body::Config { config, .. } => 4 + config.len(),
                Body::Anchor { .. } => 16,
                Body::Acks { ids, .. } => 8 + 8 * ids.len(),
            }
    }
}

/// A record decoded from bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    /// Total length in bytes.
    pub len: usize,
    /// The log's durable end when this record was staged (0 when unknown).
    pub synced: u64,
    /// The record is not the last of its group (see the module docs).
    pub more: bool,
    pub body: Body<'a>,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The length field is zero: the end of written data in a preallocated segment.
    Zero,
    /// Fewer bytes than the header or the length field says.
    Truncated,
    /// The length is too small for the kind, or the kind or reserved bytes are unknown.
    Malformed,
    /// The checksum does not match.
    BadChecksum,
    /// The record's own lsn is not the position it was read at.
    WrongPosition,
}

impl DecodeError {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            DecodeError::Zero => "unexpected end of records",
            DecodeError::Truncated => "truncated record",
            DecodeError::Malformed => "malformed record",
            DecodeError::BadChecksum => "record checksum mismatch",
            DecodeError::WrongPosition => "record at the wrong position",
        }
    }
}

/// Why the bytes at log position `lsn` are not a valid record, naming the check that failed and
/// the values found: a zero length, a length past the end of the segment (`room`: the bytes
/// left in it from `lsn`) or below a header's, a checksum mismatch (and whether the header
/// still reads as one written for this position, which places the damage in the body), an
/// intact record written for another position, or an unknown kind. `bytes` holds at least the
/// record's header when the segment has one, as many bytes as its length field claims if it
/// has them. Never panics.
pub(crate) fn explain(bytes: &[u8], lsn: u64, room: usize) -> String {
    let at = format!("the record at log position {lsn}");
    let Some(len) = u32_at(bytes, 0) else {
        return format!("{at} is cut: the segment ends {room} bytes into its header");
    };
    let len = len as usize;
    let kind = bytes.get(20).copied();
    let named = kind.and_then(Kind::from_u8).map(Kind::name);
    match decode(bytes, lsn) {
        Ok(_) => format!("{at} is valid when read again (it changed while it was read)"),
        Err(DecodeError::Zero) => {
            format!("{at} is missing: its length field is zero, as in space never written")
        }
        Err(DecodeError::Malformed) if len < RECORD_HEADER_LEN => format!(
            "{at} has a length field of {len} bytes, shorter than a record header \
             ({RECORD_HEADER_LEN}): its header is damaged"
        ),
        Err(DecodeError::Truncated) => format!(
            "{at} has a length field of {len} bytes, past the end of its segment ({room} bytes \
             left): its length field is damaged"
        ),
        Err(DecodeError::BadChecksum) => {
            let rec = bytes.get(..len).unwrap_or(bytes);
            let stored = u32_at(rec, 4).unwrap_or(0);
            let computed = checksum(rec);
            let found_lsn = u64_at(rec, 8);
            let reserved_zero = matches!(rec.get(21..24), Some([0 | MORE, 0, 0]));
            let mismatch = format!(
                "checksum mismatch in {at} ({len} bytes by its length field): it stores \
                 {stored:08x}, its bytes give {computed:08x}"
            );
            match (found_lsn, &named) {
                (Some(l), Some(k)) if l == lsn && reserved_zero => format!(
                    "{mismatch}; its header looks intact (kind {k}, written for this \
                     position), so the damage is in its body or payload"
                ),
                (Some(l), _) if l != lsn => format!(
                    "{mismatch}; its header is damaged too (its position field says {l}), or \
                     other bytes were written over it"
                ),
                _ => format!("{mismatch}; its header is damaged too (kind or reserved bytes)"),
            }
        }
        Err(DecodeError::WrongPosition) => format!(
            "{at} is intact but was written for log position {}: a misdirected write, or bytes \
             copied from elsewhere",
            u64_at(bytes, 8).unwrap_or(0)
        ),
        Err(DecodeError::Malformed) => match (kind, named) {
            (Some(k), None) => format!(
                "{at} passes its checksum but has the unknown kind {k} (written by a newer \
                 version?)"
            ),
            (_, Some(k)) => format!(
                "{at} passes its checksum but is not a valid record of kind {k} ({len} bytes, \
                 or unknown flags or reserved bytes not zero)"
            ),
            (None, None) => format!("{at} passes its checksum but is malformed"),
        },
    }
}

/// Appends the encoding of `body`, placed at log position `lsn`, to `out`.
/// `durable` is the log's durable end at the time of staging (at most `lsn`).
pub(crate) fn encode(out: &mut Vec<u8>, lsn: u64, durable: u64, body: &Body<'_>) {
    encode_in_group(out, lsn, durable, body, false);
}

/// [`encode`], with `more` set when the record is not the last of its group.
pub(crate) fn encode_in_group(
    out: &mut Vec<u8>,
    lsn: u64,
    durable: u64,
    body: &Body<'_>,
    more: bool,
) {
    let start = out.len();
    let len = body.encoded_len();
    out.reserve(len);
    let synced = u32::try_from(lsn.saturating_sub(durable)).unwrap_or(u32::MAX);
    // The header in one piece (the crc field is filled in last).
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    head[8..16].copy_from_slice(&lsn.to_le_bytes());
    head[16..20].copy_from_slice(&synced.to_le_bytes());
    head[20] = body.kind() as u8;
    head[21] = if more { MORE } else { 0 };
    out.extend_from_slice(&head);
    match *body {
        Body::Push { queue, id, payload } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(payload);
        }
        Body::Ack { queue, id } | Body::Nack { queue, id } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        Body::Deliver { queue, id, attempt } => {
            let mut fixed = [0u8; 16];
            fixed[..4].copy_from_slice(&queue.to_le_bytes());
            fixed[4..12].copy_from_slice(&id.to_le_bytes());
            fixed[12..].copy_from_slice(&attempt.to_le_bytes());
            out.extend_from_slice(&fixed);
        }
        Body::Queue { queue, name } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(name);
        }
        Body::Epoch { epoch } => out.extend_from_slice(&epoch.to_le_bytes()),
        Body::Seal => {}
        Body::PushEx { queue, id, priority, not_before, expires, pushed, key, payload } => {
            // The fixed fields in one piece, as the header.
            let mut fixed = [0u8; 40];
            fixed[..4].copy_from_slice(&queue.to_le_bytes());
            fixed[4..12].copy_from_slice(&id.to_le_bytes());
            fixed[12] = priority;
            fixed[14..16]
                .copy_from_slice(&u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes());
            fixed[16..24].copy_from_slice(&not_before.to_le_bytes());
            fixed[24..32].copy_from_slice(&expires.to_le_bytes());
            fixed[32..40].copy_from_slice(&pushed.to_le_bytes());
            out.extend_from_slice(&fixed);
            out.extend_from_slice(key);
            out.extend_from_slice(payload);
        }
        Body::Retry { queue, id, due, error } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&due.to_le_bytes());
            out.extend_from_slice(error);
        }
        Body::DeadLetter { queue, id, to, reason, error } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&to.to_le_bytes());
            out.extend_from_slice(&[reason, 0, 0, 0]);
            out.extend_from_slice(error);
        }
        Body::Requeue { queue, id, to } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&to.to_le_bytes());
        }
        Body::Config { queue, config } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(config);
        }
        Body::Anchor { start, checkpoint } => {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&checkpoint.to_le_bytes());
        }
        Body::Acks { queue, ids } => {
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_le_bytes());
            for id in ids.iter() {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
    let rec = &mut out[start..];
    let crc = checksum(rec);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32C of a whole record: its length field, then everything after the crc field.
fn checksum(rec: &[u8]) -> u32 {
    let head = rec.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok());
    let head = head.map_or_else(|| crc32c::crc32c(&[]), crate::crc::crc32c_4);
    crc32c::crc32c_append(head, rec.get(8..).unwrap_or(&[]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Reads the lsn field of a record that would start at `bytes[0]`, without validating anything.
/// Recovery uses it as a cheap filter when it looks for records past a damaged one.
pub(crate) fn peek_lsn(bytes: &[u8]) -> Option<u64> {
    u64_at(bytes, 8)
}

/// Decodes the record at the start of `bytes`, which must sit at log position `lsn`.
pub(crate) fn decode(bytes: &[u8], lsn: u64) -> Result<Record<'_>, DecodeError> {
    let len = u32_at(bytes, 0).ok_or(DecodeError::Truncated)? as usize;
    if len == 0 {
        return Err(DecodeError::Zero);
    }
    if len < RECORD_HEADER_LEN {
        return Err(DecodeError::Malformed);
    }
    let rec = bytes.get(..len).ok_or(DecodeError::Truncated)?;
    let crc = u32_at(rec, 4).ok_or(DecodeError::Truncated)?;
    if checksum(rec) != crc {
        return Err(DecodeError::BadChecksum);
    }
    if u64_at(rec, 8) != Some(lsn) {
        return Err(DecodeError::WrongPosition);
    }
    let synced_delta = u32_at(rec, 16).ok_or(DecodeError::Truncated)?;
    let synced =
        if synced_delta == u32::MAX { 0 } else { lsn.saturating_sub(u64::from(synced_delta)) };
    let kind = rec.get(20).copied().and_then(Kind::from_u8).ok_or(DecodeError::Malformed)?;
    let more = match rec.get(21..24) {
        Some([0, 0, 0]) => false,
        Some([MORE, 0, 0]) if kind != Kind::Seal => true,
        _ => return Err(DecodeError::Malformed),
    };
    let body = rec.get(RECORD_HEADER_LEN..).ok_or(DecodeError::Truncated)?;
    let queue = u32_at(body, 0);
    let id = u64_at(body, 4);
    let body = match kind {
        Kind::Push => Body::Push {
            queue: queue.ok_or(DecodeError::Malformed)?,
            id: id.ok_or(DecodeError::Malformed)?,
            payload: body.get(12..).ok_or(DecodeError::Malformed)?,
        },
        Kind::Ack | Kind::Nack | Kind::Deliver => {
            let want = if kind == Kind::Deliver { 16 } else { 12 };
            if body.len() != want {
                return Err(DecodeError::Malformed);
            }
            let queue = queue.ok_or(DecodeError::Malformed)?;
            let id = id.ok_or(DecodeError::Malformed)?;
            match kind {
                Kind::Ack => Body::Ack { queue, id },
                Kind::Nack => Body::Nack { queue, id },
                _ => Body::Deliver {
                    queue,
                    id,
                    attempt: u32_at(body, 12).ok_or(DecodeError::Malformed)?,
                },
            }
        }
        Kind::Queue => Body::Queue {
            queue: queue.ok_or(DecodeError::Malformed)?,
            name: body.get(4..).ok_or(DecodeError::Malformed)?,
        },
        Kind::Epoch => {
            if body.len() != 4 {
                return Err(DecodeError::Malformed);
            }
            Body::Epoch { epoch: queue.ok_or(DecodeError::Malformed)? }
        }
        Kind::Seal => {
            if !body.is_empty() {
                return Err(DecodeError::Malformed);
            }
            Body::Seal
        }
        Kind::PushEx => {
            let m = DecodeError::Malformed;
            let key_len = body.get(14..16).ok_or(m)?;
            let key_len = usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
            if body.get(13) != Some(&0) {
                return Err(m);
            }
            Body::PushEx {
                queue: queue.ok_or(m)?,
                id: id.ok_or(m)?,
                priority: body.get(12).copied().ok_or(m)?,
                not_before: u64_at(body, 16).ok_or(m)?,
                expires: u64_at(body, 24).ok_or(m)?,
                pushed: u64_at(body, 32).ok_or(m)?,
                key: body.get(40..40 + key_len).ok_or(m)?,
                payload: body.get(40 + key_len..).ok_or(m)?,
            }
        }
        Kind::Retry => {
            let m = DecodeError::Malformed;
            Body::Retry {
                queue: queue.ok_or(m)?,
                id: id.ok_or(m)?,
                due: u64_at(body, 12).ok_or(m)?,
                error: body.get(20..).ok_or(m)?,
            }
        }
        Kind::DeadLetter => {
            let m = DecodeError::Malformed;
            if body.get(17..20) != Some(&[0, 0, 0][..]) {
                return Err(m);
            }
            Body::DeadLetter {
                queue: queue.ok_or(m)?,
                id: id.ok_or(m)?,
                to: u32_at(body, 12).ok_or(m)?,
                reason: body.get(16).copied().ok_or(m)?,
                error: body.get(20..).ok_or(m)?,
            }
        }
        Kind::Requeue => {
            let m = DecodeError::Malformed;
            if body.len() != 16 {
                return Err(m);
            }
            Body::Requeue {
                queue: queue.ok_or(m)?,
                id: id.ok_or(m)?,
                to: u32_at(body, 12).ok_or(m)?,
            }
        }
        Kind::Config => Body::Config {
            queue: queue.ok_or(DecodeError::Malformed)?,
            config: body.get(4..).ok_or(DecodeError::Malformed)?,
        },
        Kind::Anchor => {
            if body.len() != 16 {
                return Err(DecodeError::Malformed);
            }
            Body::Anchor {
                start: u64_at(body, 0).ok_or(DecodeError::Malformed)?,
                checkpoint: u64_at(body, 8).ok_or(DecodeError::Malformed)?,
            }
        }
        Kind::Acks => {
            let m = DecodeError::Malformed;
            let count = u32_at(body, 4).ok_or(m)? as usize;
            let ids = body.get(8..).ok_or(m)?;
            if !(1..=MAX_ACKS).contains(&count) || ids.len() != count * 8 {
                return Err(m);
            }
            Body::Acks { queue: queue.ok_or(m)?, ids: Ids::Bytes(ids) }
        }
    };
    Ok(Record { len, synced, more, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Body<'static>> {
        vec![
            Body::Push { queue: 3, id: 77, payload: b"hello" },
            Body::Push { queue: 0, id: u64::MAX, payload: b"" },
            Body::Ack { queue: 1, id: 2 },
            Body::Nack { queue: 1, id: 2 },
            Body::Deliver { queue: 9, id: 5, attempt: 4 },
            Body::Queue { queue: 2, name: b"emails" },
            Body::Epoch { epoch: 12 },
            Body::Seal,
            Body::PushEx {
                queue: 1,
                id: 9,
                priority: 7,
                not_before: 1_700_000_000_000,
                expires: 0,
                pushed: 1_699_999_999_000,
                key: b"order-17",
                payload: b"ship it",
            },
            Body::PushEx {
                queue: 0,
                id: 1,
                priority: 0,
                not_before: 0,
                expires: 5,
                pushed: 0,
                key: b"",
                payload: b"",
            },
            Body::Retry { queue: 2, id: 3, due: 99, error: b"timeout talking to smtp" },
            Body::Retry { queue: 2, id: 3, due: 0, error: b"" },
            Body::DeadLetter { queue: 2, id: 3, to: 4, reason: 2, error: b"boom" },
            Body::Requeue { queue: 4, id: 3, to: 2 },
            Body::Config { queue: 1, config: b"\x01abc" },
            Body::Anchor { start: 1 << 26, checkpoint: 3 << 26 },
            Body::Anchor { start: 0, checkpoint: u64::MAX },
            Body::Acks { queue: 2, ids: Ids::Values(&[7]) },
            Body::Acks { queue: 0, ids: Ids::Values(&[1, u64::MAX, 1 << 40, 3]) },
        ]
    }

    /// An `Acks` record at position 64 with `count` in its count field and `ids` after it,
    /// checksummed as if it were valid.
    fn acks_bytes(queue: u32, count: u32, ids: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&queue.to_le_bytes());
        body.extend_from_slice(&count.to_le_bytes());
        ids.iter().for_each(|id| body.extend_from_slice(&id.to_le_bytes()));
        let mut buf = Vec::new();
        let len = (RECORD_HEADER_LEN + body.len()) as u32;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&64u64.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&[Kind::Acks as u8, 0, 0, 0]);
        buf.extend_from_slice(&body);
        let crc = checksum(&buf);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    #[test]
    fn acks_decode_their_ids_and_refuse_a_bad_count() {
        let ids: Vec<u64> = (1..=MAX_ACKS as u64).map(|i| i << 20).collect();
        let full = acks_bytes(3, MAX_ACKS as u32, &ids);
        let rec = decode(&full, 64).unwrap();
        assert_eq!(rec.body, Body::Acks { queue: 3, ids: Ids::Values(&ids) });
        assert_eq!(rec.body.encoded_len(), full.len());
        assert_eq!(rec.body.message_ids().collect::<Vec<_>>(), ids);
        assert!(rec.body.about_messages());
        let mut again = Vec::new();
        encode(&mut again, 64, 64, &rec.body);
        assert_eq!(again[20..], full[20..], "re-encoded from the bytes it was decoded from");
        // A count of zero, over the maximum, or that does not match the length: malformed,
        // though the checksum holds.
        let over: Vec<u64> = (0..=MAX_ACKS as u64).collect();
        for (count, ids) in [
            (0, &[][..]),
            (0, &[5][..]),
            (MAX_ACKS as u32 + 1, &over[..]),
            (u32::MAX, &[5][..]),
            (2, &[5][..]),
            (1, &[5, 6][..]),
        ] {
            let bad = acks_bytes(3, count, ids);
            assert_eq!(decode(&bad, 64), Err(DecodeError::Malformed), "count {count}");
            assert!(explain(&bad, 64, bad.len()).contains("not a valid record of kind batch ack"));
        }
        // A body cut inside an id, or shorter than queue and count.
        for cut in [RECORD_HEADER_LEN + 4, RECORD_HEADER_LEN + 8 + 3] {
            let mut bad = acks_bytes(3, 1, &[5]);
            bad.truncate(cut);
            let len = cut as u32;
            bad[..4].copy_from_slice(&len.to_le_bytes());
            let crc = checksum(&bad);
            bad[4..8].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&bad, 64), Err(DecodeError::Malformed), "cut at {cut}");
        }
    }

    #[test]
    fn round_trip_every_kind() {
        for body in samples() {
            let mut buf = Vec::new();
            encode(&mut buf, 4096, 1000, &body);
            assert_eq!(buf.len(), body.encoded_len());
            let rec = decode(&buf, 4096).unwrap();
            assert_eq!(rec.body, body);
            assert_eq!(rec.len, buf.len());
            assert_eq!(rec.synced, 1000);
            assert!(!rec.more);
            if body != Body::Seal {
                let mut grouped = Vec::new();
                encode_in_group(&mut grouped, 4096, 1000, &body, true);
                let rec = decode(&grouped, 4096).unwrap();
                assert_eq!((rec.body, rec.more), (body, true));
            }
        }
    }

    #[test]
    fn a_seal_never_belongs_to_a_group_and_unknown_flags_are_refused() {
        let mut buf = Vec::new();
        encode_in_group(&mut buf, 64, 64, &Body::Seal, true);
        assert_eq!(decode(&buf, 64), Err(DecodeError::Malformed));
        for flags in [2u8, 0x80, 0xff] {
            let mut buf = Vec::new();
            encode(&mut buf, 64, 64, &Body::Ack { queue: 1, id: 2 });
            buf[21] = flags;
            let crc = checksum(&buf);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode(&buf, 64), Err(DecodeError::Malformed), "flags {flags:#x}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for body in samples() {
            let mut buf = Vec::new();
            encode(&mut buf, 64, 64, &body);
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&bad, 64).is_err(), "flip of bit {bit} in {body:?} undetected");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 64, 0, &Body::Push { queue: 1, id: 1, payload: &[7; 100] });
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], 64).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn zero_length_means_end_and_wrong_position_is_refused() {
        assert_eq!(decode(&[0; 64], 0), Err(DecodeError::Zero));
        let mut buf = Vec::new();
        encode(&mut buf, 100, 0, &Body::Seal);
        assert_eq!(decode(&buf, 101), Err(DecodeError::WrongPosition));
    }

    #[test]
    fn explain_names_the_check_that_failed() {
        let mut buf = Vec::new();
        encode(&mut buf, 4096, 0, &Body::Push { queue: 1, id: 1, payload: &[7; 100] });
        let n = buf.len();
        let say = |b: &[u8], lsn: u64| explain(b, lsn, b.len());
        assert!(say(&[0; 64], 4096).contains("length field is zero"));
        assert!(say(&buf[..2], 4096).contains("ends 2 bytes into its header"));
        // A flip in the payload: the header still reads as a push written here.
        let mut bad = buf.clone();
        bad[n - 3] ^= 1;
        let why = say(&bad, 4096);
        assert!(why.contains("checksum mismatch") && why.contains("in its body"), "{why}");
        // A flip in the position field: the header is damaged.
        let mut bad = buf.clone();
        bad[9] ^= 1;
        let why = say(&bad, 4096);
        assert!(why.contains("checksum mismatch") && why.contains("position field"), "{why}");
        // Intact, read at another position.
        let why = say(&buf, 8192);
        assert!(why.contains("written for log position 4096"), "{why}");
        // A length past the end, and below a header's.
        let mut bad = buf.clone();
        bad[..4].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(say(&bad, 4096).contains("100000 bytes, past the end"), "{}", say(&bad, 4096));
        bad[..4].copy_from_slice(&5u32.to_le_bytes());
        assert!(say(&bad, 4096).contains("shorter than a record header"));
        // Never panics on any prefix or flip.
        for cut in 0..n {
            assert!(!say(&buf[..cut], 4096).is_empty());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: decode must return, never panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut buf = vec![0u8; (x % 80) as usize];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if buf.len() >= 4 && x.is_multiple_of(3) {
                let len = (x % 90) as u32;
                buf[..4].copy_from_slice(&len.to_le_bytes());
            }
            let _ = decode(&buf, x % 128);
        }
    }
}
