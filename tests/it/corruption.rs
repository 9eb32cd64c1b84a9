//! Damage below the durable end of the log is an error naming the file and offset, never a
//! panic and never a silent cut; foreign files and foreign segments are clear errors too.

use wharf::{Error, Wharf};

use crate::{copy_store, flip_a_bit_under_later_durable_records, payload, segments, small};

/// A store whose log spans several segments, closed cleanly.
fn multi_segment_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = w.queue("q").unwrap();
    q.push_batch((0..600).map(|i| payload(i, 300))).unwrap();
    w.close().unwrap();
    assert!(segments(dir.path()).len() >= 4);
    dir
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_fails_the_open_naming_the_file() {
    let pristine = multi_segment_store();
    let first = segments(pristine.path())[0].clone();
    let original = std::fs::read(&first).unwrap();
    // Every 61st byte of the records area of the first (sealed) segment, and the header.
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let mut offsets: Vec<usize> = (0..64).step_by(7).collect();
    offsets.extend((64..used).step_by(61));
    for &off in &offsets {
        let dir = copy_store(pristine.path());
        let seg = dir.path().join("log").join(first.file_name().unwrap());
        let mut bytes = original.clone();
        bytes[off] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        match Wharf::open(dir.path()) {
            Err(Error::Corrupted(c)) => {
                assert_eq!(c.file, seg, "offset {off}");
                assert!(c.offset <= off as u64, "reported {} for damage at {off}", c.offset);
                assert!(Error::Corrupted(c).to_string().contains("offset"));
            }
            Err(e) => panic!("offset {off}: unexpected error {e}"),
            Ok(_) => panic!("offset {off}: corruption not detected"),
        }
    }
}

#[test]
fn damage_under_a_later_durable_record_of_the_active_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = flip_a_bit_under_later_durable_records(dir.path());
    match Wharf::open(dir.path()) {
        Err(Error::Corrupted(c)) => assert_eq!(c.file, seg),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_gap_in_the_segments_is_corruption() {
    let dir = multi_segment_store();
    std::fs::remove_file(&segments(dir.path())[1]).unwrap();
    let err = Wharf::open(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::Corrupted(c) if c.reason.contains("gap")), "{err}");
}

#[test]
fn a_segment_of_another_store_is_refused() {
    let a = multi_segment_store();
    let b = multi_segment_store();
    let last_b = segments(b.path()).last().unwrap().clone();
    let target = segments(a.path()).last().unwrap().clone();
    // Same name and length, different store id.
    std::fs::copy(&last_b, &target).unwrap();
    let err = Wharf::open(a.path()).unwrap_err();
    assert!(matches!(err, Error::ForeignSegment(_)), "{err}");
}

#[test]
fn a_newer_format_version_is_a_clear_error() {
    let dir = multi_segment_store();
    let seg = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32c_of(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let err = Wharf::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 9, supported: wharf::FORMAT_VERSION, .. }),
        "{err}"
    );
}

/// CRC-32C (Castagnoli), bitwise: the tests do not depend on the crate's implementation.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn foreign_and_temporary_files_are_reported_not_fatal() {
    let dir = multi_segment_store();
    std::fs::write(dir.path().join("log").join("README.txt"), b"hello").unwrap();
    std::fs::write(dir.path().join("log").join("00000000000099999999.seg.tmp"), b"partial")
        .unwrap();
    let w = Wharf::open(dir.path()).unwrap();
    let r = w.recovery_report();
    assert_eq!(r.ignored_files, vec!["README.txt".to_string()]);
    assert_eq!(r.removed_files, vec!["00000000000099999999.seg.tmp".to_string()]);
    assert_eq!(w.queue("q").unwrap().depth().unwrap().ready, 600);
}

#[test]
fn truncated_and_empty_segment_files_are_errors_not_panics() {
    let pristine = multi_segment_store();
    let first = segments(pristine.path())[0].clone();
    let len = std::fs::metadata(&first).unwrap().len();
    for cut in [0, 10, 63, 64, 65, 1000, len / 2, len - 1] {
        let dir = copy_store(pristine.path());
        let seg = dir.path().join("log").join(first.file_name().unwrap());
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let err = Wharf::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupted(_)), "cut {cut}: {err}");
    }
}

/// The last records of a cleanly closed store, zeroed (a lost or misdirected write): without
/// the durable mark this looks exactly like a torn tail, and the messages would vanish quietly.
#[test]
fn erasing_the_last_records_of_a_closed_store_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = Wharf::open(dir.path()).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..10 {
            q.push(payload(i, 100)).unwrap();
        }
        w.close().unwrap();
    }
    let seg = segments(dir.path())[0].clone();
    let pristine = std::fs::read(&seg).unwrap();
    let last = pristine.windows(16).position(|w| w == &payload(9, 100)[..16]).unwrap();
    let end = pristine.iter().rposition(|&b| b != 0).unwrap() + 1;
    // Zero from inside the last push to the end, and from the start of the one before it.
    for from in [last, last - 24 - 100 - 12] {
        let mut bytes = pristine.clone();
        bytes[from..end].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        match Wharf::open(dir.path()) {
            Err(Error::Corrupted(c)) => {
                assert_eq!(c.file, seg);
                assert!(c.reason.contains("durable up to"), "{}", c.reason);
            }
            Err(e) => panic!("zeroed from {from}: unexpected error {e}"),
            Ok(_) => panic!("zeroed from {from}: the loss went unnoticed"),
        }
    }
    // Undamaged, it opens with all ten messages; a damaged slot of the mark falls back to the
    // other one, both damaged is corruption.
    std::fs::write(&seg, &pristine).unwrap();
    let mark = dir.path().join("log").join("mark");
    let good = std::fs::read(&mark).unwrap();
    assert_eq!(good.len(), 128);
    for (flip, opens) in [(vec![3], true), (vec![64 + 3], true), (vec![3, 64 + 3], false)] {
        let mut bytes = good.clone();
        for &at in &flip {
            bytes[at] ^= 1;
        }
        std::fs::write(&mark, &bytes).unwrap();
        match Wharf::open(dir.path()) {
            Ok(w) => {
                assert!(opens, "flips {flip:?}: opened");
                assert_eq!(w.queue("q").unwrap().depth().unwrap().ready, 10);
            }
            Err(Error::Corrupted(c)) => {
                assert!(!opens, "flips {flip:?}: {c}");
                assert_eq!(c.file, mark);
            }
            Err(e) => panic!("flips {flip:?}: unexpected error {e}"),
        }
        std::fs::write(&mark, &good).unwrap();
    }
}

/// A store closed twice, its second run's records then erased (zeroed) together with one slot
/// of the durable mark. The mark must not lose the newest durable end with one slot: if the
/// other slot still held the first close's end, the erased records would look like a torn tail
/// behind it, and the acked messages of the second run would come back unreported (I2, I9).
#[test]
fn one_damaged_slot_of_the_mark_still_knows_where_the_last_close_ended() {
    let pristine = tempfile::tempdir().unwrap();
    {
        let w = Wharf::open(pristine.path()).unwrap();
        let q = w.queue("q").unwrap();
        for i in 0..10 {
            q.push(payload(i, 100)).unwrap();
        }
        w.close().unwrap();
    }
    let seg = segments(pristine.path())[0].clone();
    let first_end = std::fs::read(&seg).unwrap().iter().rposition(|&b| b != 0).unwrap() + 1;
    {
        let w = Wharf::open(pristine.path()).unwrap();
        let q = w.queue("q").unwrap();
        for _ in 0..5 {
            q.pop().unwrap().ack().unwrap();
        }
        w.close().unwrap();
    }
    let name = seg.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(end > first_end, "the second run wrote records");
    // The second run's records (its epoch record and the deliveries and acks) zeroed, and a byte
    // of one slot of the mark flipped; each slot in turn, then neither.
    for slot in [Some(0), Some(1), None] {
        let dir = copy_store(pristine.path());
        let seg = dir.path().join("log").join(&name);
        let mut erased = bytes.clone();
        erased[first_end..end].fill(0);
        std::fs::write(&seg, &erased).unwrap();
        let mark = dir.path().join("log").join("mark");
        let mut m = std::fs::read(&mark).unwrap();
        if let Some(s) = slot {
            m[s * 64 + 3] ^= 1;
        }
        std::fs::write(&mark, &m).unwrap();
        match Wharf::open(dir.path()) {
            Err(Error::Corrupted(c)) => {
                assert_eq!(c.file, seg, "slot {slot:?}");
                assert!(c.reason.contains("durable up to"), "slot {slot:?}: {}", c.reason);
            }
            Err(e) => panic!("slot {slot:?} damaged: unexpected error {e}"),
            Ok(w) => panic!(
                "slot {slot:?} damaged: the erased records went unnoticed ({} ready, {:?})",
                w.queue("q").unwrap().depth().unwrap().ready,
                w.recovery_report().truncated_at
            ),
        }
    }
}
