//! An independent reading of segment files, written from `docs/format.md`: which records a
//! segment holds, as recovery must see them. Validity of a record is wharf's own decoder
//! (`testing::decode_record`); the fields are read here by hand.

use std::collections::BTreeMap;

use wharf::testing;

/// Bytes of a segment header.
pub const HEADER_LEN: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 24;

/// One record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Push {
        queue: u32,
        id: u64,
        payload: Vec<u8>,
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
        name: Vec<u8>,
    },
    Epoch {
        epoch: u32,
    },
    Seal,
    /// A push with options (times in Unix ms, 0: none).
    PushEx {
        queue: u32,
        id: u64,
        priority: u8,
        not_before: u64,
        expires: u64,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    Retry {
        queue: u32,
        id: u64,
        due: u64,
    },
    /// The message moves from `queue` to queue `to`.
    DeadLetter {
        queue: u32,
        id: u64,
        to: u32,
        reason: u8,
    },
    /// A dead letter moves back from `queue` to `to`.
    Requeue {
        queue: u32,
        id: u64,
        to: u32,
    },
    Config {
        queue: u32,
    },
    /// Where the log must start and the checkpoint `state.redb` must hold (format 3).
    Anchor {
        start: u64,
        checkpoint: u64,
    },
    /// Acks of 1 to 1,024 messages of `queue`, each as an `Ack` (format 5).
    Acks {
        queue: u32,
        ids: Vec<u64>,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fields of a record that wharf's decoder accepted (`rec` is exactly the record).
///
/// # Panics
/// If the decoder accepted bytes that do not follow the documented format.
pub fn parse(rec: &[u8]) -> Rec {
    assert!(rec.len() >= RECORD_HEADER_LEN, "accepted record shorter than its header");
    assert_eq!(u32_at(rec, 0) as usize, rec.len(), "accepted record with another length");
    assert!(rec[21] <= 1, "accepted record with unknown flags {}", rec[21]);
    assert!(rec[21] == 0 || rec[20] != 7, "accepted a seal inside a group");
    assert_eq!(&rec[22..24], &[0, 0], "accepted record with reserved bytes set");
    let body = &rec[RECORD_HEADER_LEN..];
    let queue = || u32_at(body, 0);
    let id = || u64_at(body, 4);
    match rec[20] {
        1 => {
            assert!(body.len() >= 12, "accepted push without its fields");
            Rec::Push { queue: queue(), id: id(), payload: body[12..].to_vec() }
        }
        2 | 4 => {
            assert_eq!(body.len(), 12, "accepted ack/nack of the wrong length");
            if rec[20] == 2 {
                Rec::Ack { queue: queue(), id: id() }
            } else {
                Rec::Nack { queue: queue(), id: id() }
            }
        }
        3 => {
            assert_eq!(body.len(), 16, "accepted delivery of the wrong length");
            Rec::Deliver { queue: queue(), id: id(), attempt: u32_at(body, 12) }
        }
        5 => {
            assert!(body.len() >= 4, "accepted queue record without its id");
            Rec::Queue { queue: queue(), name: body[4..].to_vec() }
        }
        6 => {
            assert_eq!(body.len(), 4, "accepted epoch of the wrong length");
            Rec::Epoch { epoch: queue() }
        }
        7 => {
            assert!(body.is_empty(), "accepted seal with a body");
            Rec::Seal
        }
        8 => {
            assert!(body.len() >= 40, "accepted push with options without its fields");
            assert_eq!(body[13], 0, "accepted push with options with its zero byte set");
            let key_len = usize::from(u16::from_le_bytes([body[14], body[15]]));
            assert!(40 + key_len <= body.len(), "accepted push with a key past its end");
            Rec::PushEx {
                queue: queue(),
                id: id(),
                priority: body[12],
                not_before: u64_at(body, 16),
                expires: u64_at(body, 24),
                key: body[40..40 + key_len].to_vec(),
                payload: body[40 + key_len..].to_vec(),
            }
        }
        9 => {
            assert!(body.len() >= 20, "accepted retry without its fields");
            Rec::Retry { queue: queue(), id: id(), due: u64_at(body, 12) }
        }
        10 => {
            assert!(body.len() >= 20, "accepted dead letter without its fields");
            assert_eq!(&body[17..20], &[0, 0, 0], "accepted dead letter with reserved bytes set");
            Rec::DeadLetter { queue: queue(), id: id(), to: u32_at(body, 12), reason: body[16] }
        }
        11 => {
            assert_eq!(body.len(), 16, "accepted requeue of the wrong length");
            Rec::Requeue { queue: queue(), id: id(), to: u32_at(body, 12) }
        }
        12 => {
            assert!(body.len() >= 4, "accepted config without its queue");
            Rec::Config { queue: queue() }
        }
        13 => {
            assert_eq!(body.len(), 16, "accepted anchor of the wrong length");
            Rec::Anchor { start: u64_at(body, 0), checkpoint: u64_at(body, 8) }
        }
        14 => {
            assert!(body.len() >= 8, "accepted batch ack without its count");
            let count = u32_at(body, 4) as usize;
            assert!((1..=1024).contains(&count), "accepted batch ack of {count} ids");
            assert_eq!(body.len(), 8 + 8 * count, "accepted batch ack of the wrong length");
            let ids = (0..count).map(|k| u64_at(body, 8 + 8 * k)).collect();
            Rec::Acks { queue: queue(), ids }
        }
        k => panic!("accepted record of unknown kind {k}"),
    }
}

/// The records of a segment file whose first byte is log position `base`, in order, with their
/// offsets: from the end of the header to the first position holding no valid record, or
/// through a seal. Returns the records and the offset where they end.
pub fn records(file: &[u8], base: u64) -> (Vec<(usize, Rec)>, usize) {
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    while off < file.len() {
        let Ok(len) = testing::decode_record(&file[off..], base + off as u64) else { break };
        assert!(len >= RECORD_HEADER_LEN && off + len <= file.len(), "decoder length out of range");
        let rec = parse(&file[off..off + len]);
        let seal = rec == Rec::Seal;
        out.push((off, rec));
        off += len;
        if seal {
            break;
        }
    }
    (out, off)
}

/// Whether the record at `off` of `file` is not the last of its group (its `MORE` flag).
pub fn more(file: &[u8], off: usize) -> bool {
    file.get(off + 21).is_some_and(|f| f & 1 == 1)
}

/// What a clean replay of `records` (read from `file`) leaves: the unsettled messages, by
/// (queue id, message id), with their payloads; `None` if replay must fail (a record names an
/// unknown queue or the catalog is out of order, which recovery reports as corruption). The
/// records of a group (`MORE`) count only once a record about a message without `MORE` closes
/// it; a newer epoch voids an unfinished group, and so does the end of the records.
pub fn replay(file: &[u8], records: &[(usize, Rec)]) -> Option<BTreeMap<(u32, u64), Vec<u8>>> {
    let mut ordered: Vec<&Rec> = Vec::new();
    let mut group: Vec<&Rec> = Vec::new();
    let mut epoch = 0;
    for (off, r) in records {
        if let Rec::Epoch { epoch: e } = r {
            if *e > epoch {
                epoch = *e;
                group.clear();
            }
        }
        let about_a_message = !matches!(
            r,
            Rec::Queue { .. }
                | Rec::Epoch { .. }
                | Rec::Seal
                | Rec::Config { .. }
                | Rec::Anchor { .. }
        );
        if more(file, *off) || (about_a_message && !group.is_empty()) {
            group.push(r);
            if !more(file, *off) {
                ordered.append(&mut group);
            }
        } else {
            ordered.push(r);
        }
    }
    let mut queues: Vec<Vec<u8>> = Vec::new();
    let mut live = BTreeMap::new();
    let known = |q: u32, queues: &Vec<Vec<u8>>| (q as usize) < queues.len();
    for r in ordered {
        match r {
            Rec::Queue { queue, name } => match queues.get(*queue as usize) {
                _ if !valid_name(name) => return None,
                Some(existing) if existing == name => {}
                None if *queue as usize == queues.len() => queues.push(name.clone()),
                _ => return None,
            },
            Rec::Push { queue, id, payload } | Rec::PushEx { queue, id, payload, .. } => {
                if !known(*queue, &queues) {
                    return None;
                }
                live.insert((*queue, *id), payload.clone());
            }
            Rec::DeadLetter { queue, id, to, .. } | Rec::Requeue { queue, id, to } => {
                if !known(*queue, &queues) || !known(*to, &queues) || queue == to {
                    return None;
                }
                if let Some(p) = live.remove(&(*queue, *id)) {
                    live.insert((*to, *id), p);
                }
            }
            Rec::Retry { queue, .. } | Rec::Config { queue } => {
                if !known(*queue, &queues) {
                    return None;
                }
            }
            Rec::Ack { queue, id } => {
                if !known(*queue, &queues) {
                    return None;
                }
                live.remove(&(*queue, *id));
            }
            Rec::Acks { queue, ids } => {
                if !known(*queue, &queues) {
                    return None;
                }
                for id in ids {
                    live.remove(&(*queue, *id));
                }
            }
            Rec::Deliver { queue, .. } | Rec::Nack { queue, .. } => {
                if !known(*queue, &queues) {
                    return None;
                }
            }
            Rec::Epoch { .. } | Rec::Seal | Rec::Anchor { .. } => {}
        }
    }
    Some(live)
}

/// A queue name as wharf accepts it: 1 to 128 bytes of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &[u8]) -> bool {
    (1..=128).contains(&name.len())
        && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The queue names a list of records declares, by queue id.
pub fn catalog(records: &[(usize, Rec)]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (_, r) in records {
        if let Rec::Queue { queue, name } = r {
            if *queue as usize == out.len() {
                out.push(name.clone());
            }
        }
    }
    out
}
