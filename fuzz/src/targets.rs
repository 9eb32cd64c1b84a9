//! One function per fuzz target; each panics on a violated property.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use wharf::testing::{self, CrashPolicy, ManualClock, SimFs};
use wharf::{Error, NackOptions, PushOptions, Wharf, WharfBuilder};

use crate::ops::{self, Config, Dur, FaultSpec, JobOpts, Op, Policy, MAX_OPS};
use crate::oracle::{Ctx, DIR};
use crate::scan::{self, Rec};
use crate::stats;
use crate::workload::{self, log_dir, state_path, Store};
use wharf_check::jobs::Model;

/// The store id of hand-made segments.
pub const STORE_ID: u128 = 0x5748_4152_465f_4655_5a5a_0000_0000_0001;

/// Open findings that the targets stop exploring when `WHARF_FUZZ_SKIP_KNOWN=1` (see README,
/// "Known open findings"), so a run can look for other bugs until the library is fixed. A target
/// checks it before an input that would reach a listed finding (`if skip_known() && <condition>
/// { return; }`), or leaves out the one check the finding fails.
pub fn skip_known() -> bool {
    match SKIP_KNOWN.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            static SKIP: OnceLock<bool> = OnceLock::new();
            *SKIP
                .get_or_init(|| std::env::var_os("WHARF_FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
        }
    }
}

/// [`skip_known`] as set by [`set_skip_known`] (0: from the environment).
static SKIP_KNOWN: AtomicU8 = AtomicU8::new(0);

/// Makes [`skip_known`] return `skip` in this process, whatever the environment says: for a
/// typed test that sweeps inputs some of which reach an open finding (which `tests/known.rs`
/// reproduces on its own).
pub fn set_skip_known(skip: bool) {
    SKIP_KNOWN.store(if skip { 2 } else { 1 }, Ordering::Relaxed);
}

/// redb panics on some damaged files; wharf runs it under `catch_unwind` where it reads one
/// and reports the damage as `Error::Corrupted` (`src/state.rs`). libFuzzer's panic hook aborts
/// on every panic, caught or not: this hook lets a panic raised in redb's own code unwind to
/// wharf's `catch_unwind` (silently, counted in `stats`), and hands every other panic to the
/// hook it replaces. One that wharf did not catch still fails the input (libFuzzer aborts on
/// a panic that reaches the target).
pub fn tolerate_redb_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
            if in_redb {
                stats::note_redb_panic();
            } else {
                previous(info);
            }
        }));
    });
}

fn u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn builder() -> WharfBuilder {
    Config::new(Dur::Default, Dur::Default).builder()
}

fn dir() -> &'static Path {
    Path::new(DIR)
}

/// An error open may return for bad files on a healthy disk (I6: typed, never a panic).
fn assert_open_error(e: &Error, what: &str) {
    match e {
        Error::Corrupted(c) => {
            assert!(
                c.file.starts_with(log_dir()) || c.file == workload::state_path(),
                "{what}: corruption names {:?}",
                c.file
            );
            assert!(!c.reason.is_empty(), "{what}: corruption without a reason");
        }
        Error::UnsupportedVersion { .. } | Error::ForeignSegment(_) => {}
        // Running out of id epochs is reported as an I/O error.
        Error::Io(io) if io.to_string().contains("epoch") => {}
        e => panic!("{what}: unexpected error from open: {e:?}"),
    }
}

/// The messages of a store by (queue, id), with payloads, delayed ones included; checks the
/// delivery order of each queue (ready ones by priority, then id; then delayed ones).
fn contents(w: &Wharf) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut out = BTreeMap::new();
    for queue in w.queue_names() {
        let list = w
            .queue(&queue)
            .and_then(|q| q.peek(usize::MAX))
            .unwrap_or_else(|e| panic!("peek of {queue} in a recovered store failed: {e}"));
        let ready: Vec<(u8, u64)> = list
            .iter()
            .take_while(|p| p.due.is_none())
            .map(|p| (u8::MAX - p.priority, p.id.get()))
            .collect();
        assert!(ready.windows(2).all(|p| p[0] < p[1]), "I4: {queue} out of order");
        for p in list {
            let id = p.id.get();
            assert!(out.insert((queue.clone(), id), p.payload).is_none(), "id {id:x} twice");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// record_decode

/// Raw bytes: `[mode][record bytes...]`. The record is decoded at its own position (the lsn
/// field it carries) or, for modes from 0xf0, at a wrong one.
pub fn record_decode(data: &[u8]) {
    let Some((&mode, rec)) = data.split_first() else { return };
    let own = rec.get(8..16).map_or(0, u64_le);
    let lsn = if mode < 0xf0 { own } else { own ^ (1 << (mode & 0x3f)) };
    match testing::decode_record(rec, lsn) {
        Ok(len) => {
            assert!(
                (scan::RECORD_HEADER_LEN..=rec.len()).contains(&len),
                "length {len} out of range"
            );
            assert_eq!(own, lsn, "accepted a record at a position it does not name");
            let whole = &rec[..len];
            let parsed = scan::parse(whole);
            // The record stands alone: trailing bytes do not matter, a cut one is refused.
            assert_eq!(testing::decode_record(whole, lsn), Ok(len));
            for cut in [0, 4, len / 2, len - 1] {
                assert!(
                    testing::decode_record(&whole[..cut], lsn).is_err(),
                    "cut at {cut} accepted"
                );
            }
            // Re-encoding reproduces a push or a batch ack, except its `synced` field (and so
            // its checksum) and its group flag.
            let again = match parsed {
                Rec::Push { queue, id, payload } => {
                    Some(testing::encode_push(lsn, queue, id, &payload))
                }
                Rec::Acks { queue, ids } => testing::encode_acks(lsn, queue, &ids),
                _ => None,
            };
            if let Some(again) = again {
                assert_eq!(again.len(), len);
                assert_eq!(again[..4], whole[..4]);
                assert_eq!(again[8..16], whole[8..16]);
                assert_eq!(again[20], whole[20]);
                assert_eq!(again[22..], whole[22..]);
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
    // Round trip of a push built from the same bytes.
    let mut u = Unstructured::new(data);
    let Ok((lsn, queue, id, payload)) = <(u64, u32, u64, &[u8])>::arbitrary(&mut u) else { return };
    let enc = testing::encode_push(lsn, queue, id, payload);
    assert_eq!(testing::decode_record(&enc, lsn), Ok(enc.len()), "round trip failed");
    assert_eq!(scan::parse(&enc), Rec::Push { queue, id, payload: payload.to_vec() });
    let mut longer = enc.clone();
    longer.extend_from_slice(data);
    assert_eq!(testing::decode_record(&longer, lsn), Ok(enc.len()));
    assert!(testing::decode_record(&enc, lsn ^ 1).is_err(), "accepted at the wrong position");
    assert!(testing::decode_record(&enc[..enc.len() - 1], lsn).is_err(), "accepted truncated");
    // Any single bit flip past the length field is detected (CRC-32C catches every one).
    let bit = 32 + usize::from(mode) * 131 % (enc.len() * 8 - 32);
    let mut bad = enc.clone();
    bad[bit / 8] ^= 1 << (bit % 8);
    assert!(testing::decode_record(&bad, lsn).is_err(), "flip of bit {bit} undetected");
    // Round trip of a batch ack of ids taken from the same bytes (1 to 1,024 of them); any
    // cut of it is refused.
    let ids: Vec<u64> = data.chunks_exact(8).take(1024).map(u64_le).collect();
    if let Some(enc) = testing::encode_acks(lsn, queue, &ids) {
        assert_eq!(enc.len(), 32 + 8 * ids.len());
        assert_eq!(testing::decode_record(&enc, lsn), Ok(enc.len()), "batch ack round trip");
        assert_eq!(scan::parse(&enc), Rec::Acks { queue, ids: ids.clone() });
        for cut in [enc.len() - 8, enc.len() - 1] {
            assert!(testing::decode_record(&enc[..cut], lsn).is_err(), "cut batch ack accepted");
        }
    }
    assert!(testing::encode_acks(lsn, queue, &[]).is_none());
}

// ---------------------------------------------------------------------------------------------
// segment_recover

/// Raw bytes: `[mode][bytes...]`. Mode bit 0 clear: the bytes are the records area behind a
/// valid header of a segment at position 0, padded with zeros to at least 64 KiB (the smallest
/// segment wharf accepts; bits 1-2 pick extra padding); set: the bytes are the whole file. Bit 3: also crash the first recovery at an operation
/// chosen by bits 5-7 and recover again (bit 4 picks the crash image).
pub fn segment_recover(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let file = if mode & 1 == 0 {
        let pad = match (mode >> 1) & 3 {
            0 => 0,
            1 => 64,
            2 => 1024,
            _ => 4096,
        };
        let len = (64 + body.len() + pad).max(64 << 10);
        let mut f = testing::segment_header(STORE_ID, 0, len as u64);
        f.extend_from_slice(body);
        f.resize(len, 0);
        f
    } else {
        body.to_vec()
    };
    let sim = SimFs::new();
    let path = log_dir().join(testing::segment_file_name(0));
    sim.create_file(&path, &file).expect("create");
    let pristine = sim.crash_image(CrashPolicy::KeepAll, 0);
    let w = match testing::open(builder(), &sim, dir()) {
        Ok(w) => w,
        Err(e) => {
            assert_open_error(&e, "segment_recover");
            if let Error::Corrupted(c) = &e {
                assert_eq!(c.file, path);
                assert!(c.offset <= file.len() as u64, "offset {} past the file", c.offset);
            }
            return;
        }
    };
    // What a replay of the records must leave, read independently of the library.
    let (recs, _) = scan::records(&file, 0);
    let live = scan::replay(&file, &recs).expect("open accepted records that replay must refuse");
    let names = scan::catalog(&recs);
    let expect: BTreeMap<(String, u64), Vec<u8>> = live
        .into_iter()
        .map(|((q, id), p)| {
            let name = String::from_utf8(names[q as usize].clone()).expect("valid name");
            ((name, id), p)
        })
        .collect();
    assert_eq!(w.recovery_report().messages, expect.len() as u64, "report counts messages");
    assert_eq!(contents(&w), expect, "recovered messages differ from the records");
    drop(w);
    // I8: recovering the recovered disk again finds the same messages and nothing to cut.
    let w = testing::open(builder(), &sim, dir()).expect("second open of a recovered store");
    assert_eq!(w.recovery_report().bytes_truncated, 0, "second recovery cut bytes");
    assert_eq!(contents(&w), expect, "second recovery differs");
    drop(w);
    if mode & 8 != 0 {
        // I8: a crash during recovery, then recovery again.
        let copy = pristine.crash_image(CrashPolicy::KeepAll, 0);
        copy.crash_at(1 + u64::from(mode >> 5) * 3);
        drop(testing::open(builder(), &copy, dir()));
        let policy =
            if mode & 16 == 0 { CrashPolicy::DropAllUnsynced } else { CrashPolicy::KeepAll };
        let image = copy.crash_image(policy, 0);
        let w = testing::open(builder(), &image, dir()).expect("open after a crashed recovery");
        assert_eq!(contents(&w), expect, "recovery after a crashed recovery differs");
    }
}

// ---------------------------------------------------------------------------------------------
// dir_open

/// A file name in the image.
#[derive(Arbitrary, Debug)]
pub enum NameKind {
    /// The name of the k-th segment of the base store.
    Segment(u8),
    /// A segment name at any position.
    SegmentAt(u64),
    /// A temporary segment name.
    Temp(u8),
    /// One of a list of names wharf must ignore.
    Foreign(u8),
    /// Any name (slashes replaced).
    Custom(String),
    /// The lock file, with contents.
    Lock,
    /// The state database, `state.redb` (in the store directory).
    State,
    /// Its temporary name while it is created.
    StateTmp,
}

/// A file's contents.
#[derive(Arbitrary, Debug)]
pub enum Content {
    /// A copy of the k-th segment of the base store.
    Real(u8),
    /// A prefix of it.
    Truncated(u8, u16),
    Empty,
    /// A valid header (base of segment k) and zeros: a spare, of any length.
    HeaderOnly {
        seg: u8,
        len: u16,
        other_store: bool,
    },
    WrongMagic(u8),
    WrongVersion(u8, u32),
    /// Segment k with the header of another store.
    ForeignStore(u8),
    Flip {
        seg: u8,
        pos: u16,
        bit: u8,
    },
    Zeros(u16),
    Raw(Vec<u8>),
    /// The records of segment k behind a valid header for the base of segment `to`.
    Moved {
        seg: u8,
        to: u8,
    },
    /// The base store's state database (its checkpoint, relocated messages, dedup keys).
    State,
    /// A prefix of it.
    StateTruncated(u32),
    /// It with one bit flipped (in its used part unless `pos`'s top bit is set).
    StateFlip {
        pos: u32,
        bit: u8,
    },
    /// It with bytes written over it.
    StateGarbage {
        pos: u32,
        bytes: Vec<u8>,
    },
    /// The state database of an earlier checkpoint of the base store.
    StateEarlier,
}

#[derive(Arbitrary, Debug)]
pub struct FileSpec {
    pub name: NameKind,
    pub content: Content,
}

/// The input of `dir_open`.
#[derive(Arbitrary, Debug)]
pub struct DirImage {
    pub files: Vec<FileSpec>,
}

/// Names wharf must leave alone in the log directory.
pub const FOREIGN_NAMES: [&str; 10] = [
    "notes.txt",
    "00000000000000000000.seg.bak",
    "64.seg",
    "99999999999999999999.seg",
    "000000000000000000000.seg",
    "0000000000000000000a.seg",
    ".seg",
    "00000000000000000000.SEG",
    "00000000000000000000.seg.tmp.tmp",
    "+0000000000000000064.seg",
];

/// The store the directory images are made from: three queues over several segments, and a
/// state database whose checkpoint relocated stragglers out of segments since deleted.
pub struct Base {
    pub store: Store,
    /// Segment files (name, base, bytes), in log order.
    pub segs: Vec<(String, u64, Vec<u8>)>,
    pub store_id: u128,
    pub seg_len: u64,
    /// `state.redb`, one past its last non-zero byte, and the file as an earlier checkpoint
    /// left it.
    pub state: Vec<u8>,
    pub state_used: usize,
    pub state_earlier: Vec<u8>,
}

fn base_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

impl Base {
    fn new(store: Store, state_earlier: Vec<u8>) -> Base {
        let segs: Vec<_> = store
            .files
            .iter()
            .filter_map(|(n, b)| base_of(n).map(|base| (n.clone(), base, b.clone())))
            .collect();
        let first = &segs.first().expect("a segment").2;
        let mut id = [0u8; 16];
        id.copy_from_slice(&first[16..32]);
        let seg_len = segs[0].2.len() as u64;
        let state = store.state.clone().expect("the base store took checkpoints");
        let state_used = state.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        let store_id = u128::from_le_bytes(id);
        Base { store, segs, store_id, seg_len, state, state_used, state_earlier }
    }

    fn seg(&self, k: u8) -> &(String, u64, Vec<u8>) {
        &self.segs[usize::from(k) % self.segs.len()]
    }
}

/// The workload behind `dir_open`: stragglers of every kind in each queue, a segment of
/// settled messages behind them, two checkpoints (which relocate the stragglers and delete
/// their segments); then pushes that span three segments, some settled.
pub fn dir_base_script() -> (Vec<Op>, Vec<Op>) {
    use crate::ops::Len;
    let mut first = Vec::new();
    for q in 0..3 {
        first.extend(workload::stragglers(q, 200, q, q));
        first.push(Op::Churn { queue: q, n: 60, len: Len::Small(200), durability: Dur::None });
    }
    first.push(Op::Churn { queue: 0, n: 40, len: Len::Large(40), durability: Dur::None });
    first.push(Op::Checkpoint);
    let mut ops = vec![Op::Checkpoint];
    for i in 0..24u8 {
        ops.push(Op::Push { queue: i % 3, len: Len::Large(i * 7), durability: Dur::None });
        if i % 5 == 4 {
            ops.push(Op::Pop { queue: i % 3 });
            ops.push(Op::Ack { pick: 0, durability: Dur::Default });
        }
    }
    ops.push(Op::Pop { queue: 1 });
    ops.push(Op::Sync);
    (first, ops)
}

fn dir_base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let sim = SimFs::new();
        let mut ctx = Ctx::new(sim.clone(), Config::new(Dur::Default, Dur::Default));
        ctx.open().expect("open");
        let (first, then) = dir_base_script();
        for op in first {
            ctx.apply(op).expect("base workload");
        }
        let earlier = workload::state_file(&sim).expect("a checkpoint made state.redb");
        for op in then {
            ctx.apply(op).expect("base workload");
        }
        ctx.close().expect("close");
        let files = workload::files(&sim);
        let state = workload::state_file(&sim);
        Base::new(Store { sim, oracle: ctx.o, files, state }, earlier)
    })
}

/// A header of `base`/`len` of `store_id` with its version replaced, checksum fixed.
fn header_with_version(store_id: u128, base: u64, len: u64, version: u32) -> Vec<u8> {
    let mut h = testing::segment_header(store_id, base, len);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn make_content(b: &Base, c: &Content) -> Vec<u8> {
    match c {
        Content::Real(k) => b.seg(*k).2.clone(),
        Content::Truncated(k, len) => {
            let s = &b.seg(*k).2;
            s[..usize::from(*len) % s.len()].to_vec()
        }
        Content::Empty => Vec::new(),
        Content::HeaderOnly { seg, len, other_store } => {
            // Mostly a spare of an accepted length, sometimes one too short to append to.
            let len = match *len {
                n @ 0..=1023 => 65 + u64::from(n),
                n => (64 << 10) + u64::from(n % 4096),
            };
            let id = if *other_store { STORE_ID } else { b.store_id };
            let mut f = testing::segment_header(id, b.seg(*seg).1, len);
            f.resize(len as usize, 0);
            f
        }
        Content::WrongMagic(k) => {
            let mut f = b.seg(*k).2.clone();
            f[..8].copy_from_slice(b"WHARFLOX");
            f
        }
        Content::WrongVersion(k, v) => {
            let (_, base, bytes) = b.seg(*k);
            let mut f = bytes.clone();
            f[..64].copy_from_slice(&header_with_version(b.store_id, *base, b.seg_len, *v));
            f
        }
        Content::ForeignStore(k) => {
            let (_, base, bytes) = b.seg(*k);
            let mut f = bytes.clone();
            f[..64].copy_from_slice(&testing::segment_header(STORE_ID, *base, b.seg_len));
            f
        }
        Content::Flip { seg, pos, bit } => {
            let mut f = b.seg(*seg).2.clone();
            let at = usize::from(*pos) % f.len();
            f[at] ^= 1 << (bit % 8);
            f
        }
        Content::Zeros(n) => vec![0; usize::from(*n)],
        Content::Raw(v) => v.iter().copied().take(4096).collect(),
        Content::Moved { seg, to } => {
            let mut f = b.seg(*seg).2.clone();
            f[..64].copy_from_slice(&testing::segment_header(b.store_id, b.seg(*to).1, b.seg_len));
            f
        }
        Content::State => b.state.clone(),
        Content::StateTruncated(len) => {
            b.state[..(*len as usize % (b.state_used + 64)).min(b.state.len())].to_vec()
        }
        Content::StateFlip { pos, bit } => {
            let mut f = b.state.clone();
            let at = position(*pos, b.state_used, f.len());
            f[at] ^= 1 << (bit % 8);
            f
        }
        Content::StateGarbage { pos, bytes } => {
            let mut f = b.state.clone();
            let at = position(*pos, b.state_used, f.len());
            let l = bytes.len().min(64).min(f.len() - at);
            f[at..at + l].copy_from_slice(&bytes[..l]);
            f
        }
        Content::StateEarlier => b.state_earlier.clone(),
    }
}

fn make_name(b: &Base, n: &NameKind) -> Option<PathBuf> {
    let log = log_dir();
    Some(match n {
        NameKind::Segment(k) => log.join(&b.seg(*k).0),
        NameKind::SegmentAt(base) => log.join(testing::segment_file_name(*base)),
        NameKind::Temp(k) => log.join(format!("{}.tmp", b.seg(*k).0)),
        NameKind::Foreign(k) => log.join(FOREIGN_NAMES[usize::from(*k) % FOREIGN_NAMES.len()]),
        NameKind::Custom(s) => {
            let s: String =
                s.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
            if s.is_empty() || s == "." || s == ".." {
                return None;
            }
            log.join(s)
        }
        NameKind::Lock => Path::new(DIR).join("LOCK"),
        NameKind::State => state_path(),
        NameKind::StateTmp => Path::new(DIR).join("state.redb.tmp"),
    })
}

/// An arbitrary directory image: open never panics; if it succeeds, draining ends, delivers
/// only payloads that were pushed, under their own ids, and a second open agrees.
pub fn dir_open(data: &[u8]) {
    if let Ok(img) = DirImage::arbitrary_take_rest(Unstructured::new(data)) {
        run_dir_open(&img);
    }
}

/// [`dir_open`] on a decoded input (for regression tests written by hand).
pub fn run_dir_open(img: &DirImage) {
    tolerate_redb_panics();
    let b = dir_base();
    let sim = SimFs::new();
    for spec in img.files.iter().take(8) {
        if let Some(path) = make_name(b, &spec.name) {
            let content = make_content(b, &spec.content);
            let _ = sim.create_file(&path, &content);
        }
    }
    let w = match testing::open(builder(), &sim, dir()) {
        Ok(w) => w,
        Err(e) => return assert_open_error(&e, "dir_open"),
    };
    let got = contents(&w);
    for ((queue, id), payload) in &got {
        let i = b.store.oracle.find(queue, payload);
        assert_eq!(b.store.oracle.msgs[i].id, Some(*id), "I5: message {i} under another id");
    }
    drop(w);
    let w = testing::open(builder(), &sim, dir()).expect("second open of a recovered directory");
    assert_eq!(contents(&w), got, "second recovery differs");
}

// ---------------------------------------------------------------------------------------------
// ops_model

/// The input of `ops_model`.
#[derive(Arbitrary, Debug)]
pub struct ModelInput {
    pub cfg: Config,
    pub ops: Vec<Op>,
}

/// Operations on a healthy simulated disk: the store behaves exactly like a FIFO model.
pub fn ops_model(data: &[u8]) {
    if let Ok(input) = ModelInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_ops_model(&input);
    }
}

/// [`ops_model`] on a decoded input (for regression tests written by hand).
pub fn run_ops_model(input: &ModelInput) {
    tolerate_redb_panics();
    let sim = SimFs::new();
    let clock = ManualClock::new();
    let builder = input.cfg.builder().clock(Arc::new(clock.clone()));
    let w = testing::open(builder.clone(), &sim, dir()).expect("open on a healthy disk");
    let m = Model::new(clock.clone(), &ops::QUEUES);
    let mut run = ModelRun { cfg: input.cfg, sim, clock, builder, w: Some(w), m };
    for (k, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        run.apply(*op);
        // Not right after a clock advance: the checks make due messages ready, and the next
        // call must find them as the clock left them.
        if !matches!(op, Op::Advance { .. }) {
            run.m.check(run.w(), &format!("after op {k} {op:?}"));
        }
    }
    run.m.check(run.w(), "at the end");
}

/// The store of an `ops_model` run and its model.
struct ModelRun {
    cfg: Config,
    sim: SimFs,
    clock: ManualClock,
    builder: WharfBuilder,
    w: Option<Wharf>,
    m: Model,
}

impl ModelRun {
    fn w(&self) -> &Wharf {
        self.w.as_ref().expect("open")
    }

    fn open(&self) -> Wharf {
        testing::open(self.builder.clone(), &self.sim, dir()).expect("open on a healthy disk")
    }

    /// Runs one operation on the store and the model; every call must return what the model
    /// says.
    fn apply(&mut self, op: Op) {
        let cfg = self.cfg;
        let none = JobOpts { delay: 0, priority: 0, ttl: 0, key: None };
        let (m, w) = (&mut self.m, self.w.as_ref().expect("open"));
        match op {
            Op::Push { queue, len, durability } => {
                model_push(m, w, cfg, (queue, len, durability), none);
            }
            Op::PushJob { queue, len, durability, opts } => {
                model_push(m, w, cfg, (queue, len, durability), opts);
            }
            Op::PushBatch { queue, n, len, durability } => {
                let q = ops::queue_index(queue);
                let h = m.queue(w, q);
                let ps: Vec<Vec<u8>> =
                    (0..ops::batch_len(n)).map(|k| m.payload(q, len.bytes() / (k + 1))).collect();
                let opts = PushOptions::new().durability(durability.resolve(cfg.push_default()));
                let got = h.push_batch_with(&ps, opts);
                m.pushed(q, ps, none.job(), got.map(|ids| ids.iter().map(|id| id.get()).collect()));
            }
            Op::Pop { queue } => {
                let q = ops::queue_index(queue);
                let h = m.queue(w, q);
                m.popped(q, false, h.try_pop().expect("pop"));
            }
            Op::PopDead { queue } => {
                let q = ops::queue_index(queue);
                if let Some(h) = m.dlq(w, q) {
                    m.popped(q, true, h.try_pop().expect("pop of a dead-letter queue"));
                }
            }
            Op::PopBatch { queue, max } => {
                let q = ops::queue_index(queue);
                let h = m.queue(w, q);
                let max = usize::from(max % 5);
                let got = h.pop_batch(max, Duration::ZERO).expect("pop_batch");
                assert!(got.len() <= max, "pop_batch returned more than asked");
                let short = got.len() < max;
                for d in got {
                    m.popped(q, false, Some(d));
                }
                if short {
                    m.popped(q, false, None); // nothing more was ready
                }
            }
            Op::Ack { pick, durability } => {
                if !m.held.is_empty() {
                    let (id, dead, d) = m.held.remove(usize::from(pick) % m.held.len());
                    d.ack_with(durability.resolve(cfg.ack_default())).expect("ack");
                    m.acked(id, dead);
                }
            }
            Op::AckMany { pick, n, durability } => {
                if m.held.is_empty() {
                    return;
                }
                let first = usize::from(pick) % m.held.len();
                let (id, dead) = (m.held[first].0, m.held[first].1);
                let q = m.queue_of(id).expect("a held message is known");
                let mut batch = vec![m.held.remove(first)];
                let mut k = 0;
                while k < m.held.len() && batch.len() < ops::ack_many_len(n) {
                    let (other, other_dead) = (m.held[k].0, m.held[k].1);
                    if other_dead == dead && m.queue_of(other) == Some(q) {
                        batch.push(m.held.remove(k));
                    } else {
                        k += 1;
                    }
                }
                let h = if dead { m.dlq_or_create(w, q) } else { m.queue(w, q) };
                let ids: Vec<u64> = batch.iter().map(|b| b.0).collect();
                let d = durability.resolve(cfg.ack_default());
                let report = h.ack_many_with(batch.into_iter().map(|b| b.2), d).expect("ack_many");
                assert_eq!((report.acked, report.lapsed.len()), (ids.len(), 0), "{report:?}");
                for id in ids {
                    m.acked(id, dead);
                }
            }
            Op::Nack { pick } => {
                if !m.held.is_empty() {
                    let (id, dead, d) = m.held.remove(usize::from(pick) % m.held.len());
                    let attempt = d.attempt();
                    d.nack().expect("nack");
                    m.nacked(id, dead, attempt, None, "");
                }
            }
            Op::NackWith { pick, delay, error } => {
                if !m.held.is_empty() {
                    let (id, dead, d) = m.held.remove(usize::from(pick) % m.held.len());
                    let attempt = d.attempt();
                    let delay = delay.map(ops::ticks);
                    let text = if error { "nacked by the fuzzer" } else { "" };
                    let mut opts = NackOptions::new().error(text);
                    if let Some(t) = delay {
                        opts = opts.delay(t);
                    }
                    d.nack_with(opts).expect("nack_with");
                    m.nacked(id, dead, attempt, delay, text);
                }
            }
            Op::Release { pick } => {
                if !m.held.is_empty() {
                    let (id, _, d) = m.held.remove(usize::from(pick) % m.held.len());
                    drop(d);
                    m.dropped(id);
                }
            }
            Op::DeadLetter { pick } => {
                let mains: Vec<usize> = (0..m.held.len()).filter(|&k| !m.held[k].1).collect();
                if !mains.is_empty() {
                    let (id, _, d) = m.held.remove(mains[usize::from(pick) % mains.len()]);
                    d.dead_letter("dead-lettered by the fuzzer").expect("dead_letter");
                    m.dead_lettered(id, "dead-lettered by the fuzzer");
                }
            }
            Op::Extend { pick } => {
                if !m.held.is_empty() {
                    let n = m.held.len();
                    m.held[usize::from(pick) % n]
                        .2
                        .extend(Duration::from_secs(3600))
                        .expect("extend");
                }
            }
            Op::Requeue { queue, all, pick } => {
                let q = ops::queue_index(queue);
                let Some(h) = m.dlq(w, q) else { return };
                let waiting = m.dead_waiting(q);
                if all {
                    assert_eq!(h.requeue_all().expect("requeue_all"), waiting.len(), "requeued");
                    for id in waiting {
                        m.requeued(id);
                    }
                } else {
                    let peeked = h.peek(usize::MAX).expect("peek");
                    let k = usize::from(pick) % (waiting.len() + 1);
                    if let Some(p) = peeked.get(k) {
                        assert!(h.requeue(p.id).expect("requeue"), "a waiting dead letter refused");
                        m.requeued(p.id.get());
                    } else {
                        // Not a dead letter: a message waiting in a queue, if there is one.
                        let main = m.queue(w, q);
                        if let Some(p) = main.peek(1).expect("peek").first() {
                            assert!(!h.requeue(p.id).expect("requeue"), "requeued a live message");
                        }
                    }
                }
            }
            Op::Advance { by } => self.clock.advance(ops::ticks(by)),
            Op::SetConfig { queue, cfg: c } => {
                let q = ops::queue_index(queue);
                let h = m.queue(w, q);
                let c = c.get();
                h.set_config(&c).expect("set_config");
                m.set_config(q, c);
            }
            Op::Sync => w.sync().expect("sync"),
            Op::Maintain => testing::maintain(w).expect("maintain"),
            Op::Reopen { release_first } => {
                let held: Vec<_> = m.held.drain(..).collect();
                // Dropped deliveries logged nothing since: in flight at the close too.
                let in_flight = m.lapsed() + if release_first { 0 } else { held.len() as u64 };
                if release_first {
                    for (id, _, d) in held {
                        d.release().expect("release");
                        m.released(id);
                    }
                    w.clone().close().expect("close");
                } else {
                    w.clone().close().expect("close");
                    drop(held);
                }
                // Without `release_first`, the old handle (closed) is dropped only after the
                // new one opened, as a program may keep a clone around.
                if release_first {
                    self.w = None;
                    self.w = Some(self.open());
                } else {
                    let new = self.open();
                    self.w = Some(new);
                }
                let (m, w) = (&mut self.m, self.w.as_ref().expect("open"));
                m.reopened();
                let report = w.recovery_report();
                assert_eq!(report.messages, m.unsettled() as u64, "recovered message count");
                assert_eq!(report.in_flight_at_crash, in_flight, "recovered in-flight count");
                assert_eq!(report.bytes_truncated, 0, "a clean close left a tail to cut");
                assert!(report.removed_files.is_empty(), "a clean close left temporary files");
            }
            Op::Checkpoint => {
                let report = w.checkpoint().expect("checkpoint on a healthy disk");
                stats::note_checkpoint(&report);
                assert!(report.position > 0, "a checkpoint at position 0: {report:?}");
            }
            Op::Churn { queue, n, len, durability } => {
                for _ in 0..ops::churn_rounds(n) {
                    self.apply(ops::churn_push(queue, len, durability));
                    let before = self.m.held.len();
                    self.apply(Op::Pop { queue });
                    if self.m.held.len() > before {
                        self.apply(ops::churn_ack(self.m.held.len()));
                    }
                }
            }
            Op::BadQueue { pick } => {
                let name = ops::BAD_NAMES[usize::from(pick) % ops::BAD_NAMES.len()];
                assert!(matches!(w.queue(name), Err(Error::InvalidName(_))), "{name:?} accepted");
            }
        }
    }
}

/// A push (plain or with options) into the model's store.
fn model_push(
    m: &mut Model,
    w: &Wharf,
    cfg: Config,
    (queue, len, d): (u8, ops::Len, Dur),
    o: JobOpts,
) {
    let q = ops::queue_index(queue);
    let h = m.queue(w, q);
    let p = m.payload(q, len.bytes());
    let got = h.push_with(&p, o.get(d.resolve(cfg.push_default())));
    m.pushed(q, vec![p], o.job(), got.map(|id| vec![id.get()]));
}

// ---------------------------------------------------------------------------------------------
// ops_crash

/// One crash: armed once `wait % 64` more operations (the first open counts as one) ran since
/// the previous crash or the start, it comes after `after` more disk operations: a power loss
/// under `policy`. Optionally the first recovery crashes too, at its `recovery.0`-th disk
/// operation. Arming at the start of an operation lets a crash land anywhere inside one that
/// issues many disk operations (a churn, a checkpoint after it) whatever came before.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct CrashPoint {
    pub wait: u8,
    pub after: u8,
    pub policy: Policy,
    pub seed: u8,
    pub recovery: Option<(u8, Policy)>,
}

/// The input of `ops_crash`.
#[derive(Arbitrary, Debug)]
pub struct CrashInput {
    pub cfg: Config,
    pub crashes: Vec<CrashPoint>,
    pub ops: Vec<Op>,
}

/// Operations with up to four crashes; after each, the recovered store satisfies I1–I5 and
/// the run goes on with it.
pub fn ops_crash(data: &[u8]) {
    if let Ok(input) = CrashInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_ops_crash(&input);
    }
}

/// [`ops_crash`] on a decoded input (for regression tests written by hand).
pub fn run_ops_crash(input: &CrashInput) {
    tolerate_redb_panics();
    let crashes: Vec<CrashPoint> = input.crashes.iter().copied().take(4).collect();
    let mut ctx = Ctx::new(SimFs::new(), input.cfg);
    // The next crash, and the step (0: the first open, k + 1: operation k) from which it is
    // armed; `armed` once its disk operation is set.
    let mut next = 0;
    let mut arm_at = crashes.first().map_or(usize::MAX, |c| usize::from(c.wait % 64));
    let mut armed = false;
    ctx.sim.crash_at(u64::MAX);
    let ops: Vec<Op> = input.ops.iter().copied().take(MAX_OPS).collect();
    for pos in 0..=ops.len() {
        if !armed && pos >= arm_at {
            ctx.sim.crash_at(ctx.sim.ops() + 1 + u64::from(crashes[next].after));
            armed = true;
        }
        let (r, what) = match pos {
            0 => (ctx.open(), "the first open".to_owned()),
            _ => {
                let op = ops[pos - 1];
                (ctx.apply(op).map(|_| ()), format!("op {} {op:?}", pos - 1))
            }
        };
        if ctx.sim.crashed() {
            let c = crashes[next];
            let what = format!("crash {next} ({c:?}) in {what}");
            ctx.abandon();
            let mut image = ctx.sim.crash_image(c.policy.get(), u64::from(c.seed));
            if let Some((j, p2)) = c.recovery {
                image.crash_at(1 + u64::from(j));
                drop(testing::open(ctx.builder(), &image, dir()));
                image = image.crash_image(p2.get(), u64::from(c.seed));
            }
            // A process crash keeps what was written (a crashed recovery only adds to it).
            let keep_all = c.policy == Policy::KeepAll;
            ctx.recover_and_check(image, keep_all, &what);
            next += 1;
            armed = false;
            arm_at = crashes.get(next).map_or(usize::MAX, |c| pos + 1 + usize::from(c.wait % 64));
            ctx.sim.crash_at(u64::MAX);
        } else if let Err(e) = r {
            panic!("{what} failed without a crash: {e}");
        }
    }
    ctx.sim.crash_at(u64::MAX);
    if let Err(e) = ctx.close() {
        panic!("the final close failed without a crash: {e}");
    }
    // Everything is durable after a clean close: even a power loss keeps it all.
    let image = ctx.sim.crash_image(CrashPolicy::DropAllUnsynced, 0);
    ctx.recover_and_check(image, false, "power loss after the final close");
}

// ---------------------------------------------------------------------------------------------
// ops_faults

/// How the run ends once the fault is removed.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum End {
    /// Reopen on the same disk (the process lives on).
    SameDisk,
    /// A crash image.
    Image(Policy, u8),
}

/// The input of `ops_faults`.
#[derive(Arbitrary, Debug)]
pub struct FaultInput {
    pub cfg: Config,
    pub fault: FaultSpec,
    /// The fault is set before operation number `arm_at` (0: before the first open).
    pub arm_at: u8,
    pub end: End,
    pub ops: Vec<Op>,
}

/// Injected failures at call sites in library files whose path contains one of `files`.
fn faults_in(sim: &SimFs, files: &[&str]) -> u64 {
    if !sim.fault_fired() {
        return 0;
    }
    let sites = sim.sites();
    let hit = sites.iter().filter(|(s, _)| files.iter().any(|f| s.contains(f)));
    hit.map(|(_, c)| c.injected).sum()
}

/// Injected failures at the log's write and sync call sites (a group commit's I/O, in
/// `src/log/flush.rs`; `wal.rs` held it before).
fn log_faults(sim: &SimFs) -> u64 {
    faults_in(sim, &["src/log/flush.rs", "src/log/wal.rs"])
}

/// Injected failures where the log deletes or recycles settled segments, or spares to make
/// room for the state database under a quota (`src/log/commit.rs`, `src/log/commit/`), which
/// poisons the store too.
fn deletion_faults(sim: &SimFs) -> u64 {
    faults_in(sim, &["src/log/commit.rs", "src/log/commit/"])
}

/// Injected failures in calls on the state database (`state.redb`: redb's own reads, writes
/// and syncs, and its creation): they fail a checkpoint (or a read of a relocated payload)
/// without poisoning the store.
fn state_faults(sim: &SimFs) -> u64 {
    faults_in(sim, &["src/checkpoint/", "src/storage/redb_backend.rs"])
}

/// Operations with one injected fault: no panic; a failed log write or sync poisons the store
/// (every later call fails until reopen); a transient fault elsewhere leaves it usable; after
/// the fault is removed and the store reopened, I1–I5 hold.
pub fn ops_faults(data: &[u8]) {
    if let Ok(input) = FaultInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_ops_faults(&input);
    }
}

/// [`ops_faults`] on a decoded input (for regression tests written by hand).
pub fn run_ops_faults(input: &FaultInput) {
    tolerate_redb_panics();
    let ops: Vec<Op> = input.ops.iter().copied().take(MAX_OPS).collect();
    let fault = input.fault.get();
    let arm_at = usize::from(input.arm_at) % (ops.len() + 1);
    let sim = SimFs::new();
    let mut ctx = Ctx::new(sim.clone(), input.cfg);
    if arm_at == 0 {
        sim.set_fault(Some(fault));
    }
    if let Err(e) = ctx.open() {
        assert!(sim.fault_fired(), "open failed without a fault: {e}");
    }
    for (k, op) in ops.iter().enumerate() {
        if k + 1 == arm_at {
            sim.set_fault(Some(fault));
        }
        if ctx.wharf.is_none() {
            // An open failed under the fault: try again.
            if let Err(e) = ctx.open() {
                assert!(sim.fault_fired(), "open failed without a fault: {e}");
                continue;
            }
        }
        let was_poisoned = ctx.poisoned;
        let fired_before = sim.fault_fired();
        let before = (log_faults(&sim), deletion_faults(&sim), state_faults(&sim));
        let r = ctx.apply(*op);
        let hit_log = log_faults(&sim) > before.0;
        let hit_deletion = deletion_faults(&sim) > before.1;
        let hit_state = state_faults(&sim) > before.2;
        let what = format!("op {k} {op:?} under {fault:?}");
        if hit_log {
            assert!(matches!(r, Err(Error::Poisoned(_))), "{what}: a failed log write gave {r:?}");
        }
        if let Err(Error::Poisoned(_)) = &r {
            assert!(
                was_poisoned || hit_log || hit_deletion,
                "{what}: poisoned without a failed log write or segment deletion{}",
                if hit_state { " (a state database call failed)" } else { "" }
            );
        }
        if was_poisoned && !matches!(op, Op::Reopen { .. }) {
            assert!(!matches!(r, Ok(true)), "{what}: I7 succeeded on a poisoned store");
        }
        match &r {
            Err(e) if !sim.fault_fired() => panic!("{what}: failed without a fault: {e}"),
            // After a transient fault fired (and did not poison), the store works again.
            Err(e) if fired_before && !fault.persistent && !was_poisoned => {
                panic!("{what}: failed after a transient fault was over: {e}")
            }
            _ => {}
        }
    }
    sim.set_fault(None);
    let _ = ctx.close();
    let end = input.end;
    // A reopen in the same process cuts what a failed sync left in doubt, written or not.
    let (image, keep_all) = match end {
        End::SameDisk => (sim.clone(), false),
        End::Image(p, seed) => (sim.crash_image(p.get(), u64::from(seed)), p == Policy::KeepAll),
    };
    ctx.recover_and_check(image, keep_all, &format!("reopen after {fault:?}, {:?}", input.end));
}

// ---------------------------------------------------------------------------------------------
// corrupt_then_recover

/// One kind of damage to a file of the durable image. Positions fall in the used part of the
/// file (records and a little after) unless their top bit is set.
#[derive(Arbitrary, Debug, Clone)]
pub enum Corruption {
    BitFlip {
        file: u8,
        pos: u32,
        bit: u8,
    },
    ZeroSector {
        file: u8,
        sector: u16,
    },
    Truncate {
        file: u8,
        len: u32,
    },
    /// A misdirected write: a range copied to another offset of the same file.
    CopyRange {
        file: u8,
        src: u32,
        dst: u32,
        len: u16,
    },
    /// A range of one file copied into another.
    CopyAcross {
        from: u8,
        to: u8,
        src: u32,
        dst: u32,
        len: u16,
    },
    Garbage {
        file: u8,
        pos: u32,
        bytes: Vec<u8>,
    },
    Extend {
        file: u8,
        by: u16,
    },
}

/// The input of `corrupt_then_recover`.
#[derive(Arbitrary, Debug)]
pub struct CorruptInput {
    pub workload: u8,
    pub corruptions: Vec<Corruption>,
}

/// How many seeded workloads the target draws from: 16 of every operation but explicit
/// checkpoints, then 16 of checkpoints ([`workload::checkpoint_script`]) whose state
/// database is damaged like the log files.
pub const WORKLOADS: usize = 32;

/// A closed store of a seeded workload, and where each push and ack record is.
pub struct Pristine {
    pub store: Store,
    /// The files damage may hit (name, bytes): the log files, and `state.redb` for a workload
    /// of checkpoints.
    pub files: Vec<(String, Vec<u8>)>,
    /// Per message id: the file and offset of its push record.
    pub push_at: HashMap<u64, (String, usize)>,
    /// Per message id: the file and offset of its last ack record.
    pub ack_at: HashMap<u64, (String, usize)>,
    /// Per file: one past its last non-zero byte.
    pub used: HashMap<String, usize>,
}

/// The store of workload `w % WORKLOADS`, made once per process. The workload run is the one
/// of the slot, not `w` itself: otherwise whichever input first reached a slot would decide
/// its store, and an input's outcome would depend on the inputs run before it in the process.
fn pristine(w: usize) -> &'static Pristine {
    static P: [OnceLock<Pristine>; WORKLOADS] = [const { OnceLock::new() }; WORKLOADS];
    let w = w % WORKLOADS;
    P[w].get_or_init(|| {
        let store = workload::run(w as u64);
        let mut push_at = HashMap::new();
        let mut ack_at = HashMap::new();
        let mut used = HashMap::new();
        let mut files = store.files.clone();
        if workload::checkpoints(w as u64) {
            let state = store.state.clone().expect("a workload of checkpoints made state.redb");
            files.push((workload::STATE.to_owned(), state));
        }
        for (name, bytes) in &files {
            used.insert(name.clone(), bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1));
            let Some(base) = base_of(name) else { continue };
            for (off, rec) in scan::records(bytes, base).0 {
                match rec {
                    Rec::Push { id, .. } | Rec::PushEx { id, .. } => {
                        push_at.insert(id, (name.clone(), off));
                    }
                    Rec::Ack { id, .. } => {
                        ack_at.insert(id, (name.clone(), off));
                    }
                    Rec::Acks { ids, .. } => {
                        for id in ids {
                            ack_at.insert(id, (name.clone(), off));
                        }
                    }
                    _ => {}
                }
            }
        }
        Pristine { store, files, push_at, ack_at, used }
    })
}

fn position(pos: u32, used: usize, len: usize) -> usize {
    if len == 0 {
        0
    } else if pos >> 31 == 1 {
        pos as usize % len
    } else {
        (pos as usize % (used + 64)).min(len - 1)
    }
}

fn corrupt(sim: &SimFs, p: &Pristine, c: &Corruption) {
    let names: Vec<&String> = p.files.iter().map(|(n, _)| n).collect();
    if names.is_empty() {
        return;
    }
    let pick = |k: u8| names[usize::from(k) % names.len()];
    let path = |n: &str| if n == workload::STATE { state_path() } else { log_dir().join(n) };
    let load = |n: &str| sim.read_file(&path(n)).expect("file of the image");
    let used = |n: &str| p.used.get(n).copied().unwrap_or(0);
    let edit = |n: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = load(n);
        f(&mut bytes);
        sim.write_file(&path(n), &bytes).expect("write");
    };
    match c {
        Corruption::BitFlip { file, pos, bit } => {
            let n = pick(*file);
            edit(n, &|b| {
                if !b.is_empty() {
                    let at = position(*pos, used(n), b.len());
                    b[at] ^= 1 << (bit % 8);
                }
            });
        }
        Corruption::ZeroSector { file, sector } => {
            let n = pick(*file);
            edit(n, &|b| {
                let start = (usize::from(*sector) * 512).min(b.len());
                let end = (start + 512).min(b.len());
                b[start..end].fill(0);
            });
        }
        Corruption::Truncate { file, len } => {
            let n = pick(*file);
            edit(n, &|b| {
                let to = position(*len, used(n), b.len());
                b.truncate(to);
            });
        }
        Corruption::CopyRange { file, src, dst, len } => {
            let n = pick(*file);
            edit(n, &|b| {
                if b.is_empty() {
                    return;
                }
                let s = position(*src, used(n), b.len());
                let d = position(*dst, used(n), b.len());
                let l = usize::from(*len).min(b.len() - s).min(b.len() - d);
                b.copy_within(s..s + l, d);
            });
        }
        Corruption::CopyAcross { from, to, src, dst, len } => {
            let (a, t) = (pick(*from), pick(*to));
            let source = load(a);
            edit(t, &|b| {
                if b.is_empty() || source.is_empty() {
                    return;
                }
                let s = position(*src, used(a), source.len());
                let d = position(*dst, used(t), b.len());
                let l = usize::from(*len).min(source.len() - s).min(b.len() - d);
                b[d..d + l].copy_from_slice(&source[s..s + l]);
            });
        }
        Corruption::Garbage { file, pos, bytes } => {
            let n = pick(*file);
            edit(n, &|b| {
                if b.is_empty() {
                    return;
                }
                let at = position(*pos, used(n), b.len());
                let l = bytes.len().min(64).min(b.len() - at);
                b[at..at + l].copy_from_slice(&bytes[..l]);
            });
        }
        Corruption::Extend { file, by } => {
            edit(pick(*file), &|b| b.resize(b.len() + 1 + usize::from(*by), 0xa5));
        }
    }
}

/// A seeded workload, then damage to its durable image: open fails with a typed error, or
/// it succeeds and never delivers a payload that was not pushed (I3); what it loses lies at or
/// after the point where it reports cutting the log, and a second open agrees.
pub fn corrupt_then_recover(data: &[u8]) {
    if let Ok(input) = CorruptInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_corrupt_then_recover(&input);
    }
}

/// [`corrupt_then_recover`] on a decoded input (for regression tests written by hand).
pub fn run_corrupt_then_recover(input: &CorruptInput) {
    tolerate_redb_panics();
    let p = pristine(usize::from(input.workload));
    let sim = p.store.sim.crash_image(CrashPolicy::KeepAll, 0);
    for c in input.corruptions.iter().take(8) {
        corrupt(&sim, p, c);
    }
    let w = match testing::open(builder(), &sim, dir()) {
        Ok(w) => w,
        Err(e) => return assert_open_error(&e, "corrupt_then_recover"),
    };
    // An open that started from a checkpoint's snapshot does not read the records below it:
    // damage there is found when a queue reads them, and must be reported as such (I6).
    for queue in w.queue_names() {
        match w.queue(&queue).and_then(|q| q.peek(usize::MAX)) {
            Ok(_) => {}
            Err(e @ Error::Corrupted(_)) => {
                assert!(w.recovery_report().from_snapshot, "{queue}: {e} after a full replay");
                return assert_open_error(&e, "corrupt_then_recover: a read after the open");
            }
            Err(e) => panic!("peek of {queue} in a recovered store failed: {e}"),
        }
    }
    let o = &p.store.oracle;
    let got = contents(&w);
    let mut present = BTreeSet::new();
    for ((queue, id), payload) in &got {
        let i = o.find(queue, payload);
        assert_eq!(o.msgs[i].id, Some(*id), "I5: message {i} under another id");
        present.insert(i);
    }
    let cut = w.recovery_report().truncated_at.clone();
    let after_cut = |at: Option<&(String, usize)>| match (&cut, at) {
        (Some((file, off)), Some((name, rec_off))) => {
            file.file_name().is_some_and(|f| f == name.as_str()) && *rec_off as u64 >= *off
        }
        _ => false,
    };
    for (i, m) in o.msgs.iter().enumerate() {
        let id = m.id.expect("every workload push returned an id");
        let acked = m.ack != crate::oracle::St::No;
        if !acked && !present.contains(&i) {
            assert!(
                after_cut(p.push_at.get(&id)),
                "I9: message {i} lost without being at or after the cut {cut:?} (push at {:?})",
                p.push_at.get(&id)
            );
        }
        if acked && present.contains(&i) {
            assert!(
                after_cut(p.ack_at.get(&id)),
                "I2: acked message {i} came back, its ack not at or after the cut {cut:?} ({:?})",
                p.ack_at.get(&id)
            );
        }
    }
    drop(w);
    let w = testing::open(builder(), &sim, dir()).expect("second open of a recovered image");
    assert_eq!(contents(&w), got, "second recovery differs");
}

// ---------------------------------------------------------------------------------------------
// salvage

/// A seeded workload, damage to its durable image, then an open with `salvage(true)`: it
/// succeeds or fails with a typed error; every message it keeps was pushed, under its id, byte
/// for byte (I3, I5); every unsettled message is kept or accounted for by the report (listed
/// lost, or in a lost range that may hold its id), never silently gone (I9); an acked message
/// that is back is listed "may be redelivered" (or its ack lay at or after a torn tail the
/// strict open cut, when no salvage was needed); the salvaged store then opens strictly with the
/// same messages.
pub fn salvage(data: &[u8]) {
    if let Ok(input) = CorruptInput::arbitrary_take_rest(Unstructured::new(data)) {
        run_salvage(&input);
    }
}

/// [`salvage`] on a decoded input (for regression tests written by hand).
pub fn run_salvage(input: &CorruptInput) {
    tolerate_redb_panics();
    let p = pristine(usize::from(input.workload));
    let sim = p.store.sim.crash_image(CrashPolicy::KeepAll, 0);
    for c in input.corruptions.iter().take(8) {
        corrupt(&sim, p, c);
    }
    let w = match testing::open(builder().salvage(true), &sim, dir()) {
        Ok(w) => w,
        Err(e) => return assert_open_error(&e, "salvage"),
    };
    let o = &p.store.oracle;
    let got = contents(&w);
    let mut present = BTreeSet::new();
    for ((queue, id), payload) in &got {
        let i = o.find(queue, payload);
        assert_eq!(o.msgs[i].id, Some(*id), "I5: message {i} kept under another id");
        present.insert(i);
    }
    let report = w.recovery_report().clone();
    let cut = report.truncated_at.clone();
    let after_cut = |at: Option<&(String, usize)>| match (&cut, at) {
        (Some((file, off)), Some((name, rec_off))) => {
            file.file_name().is_some_and(|f| f == name.as_str()) && *rec_off as u64 >= *off
        }
        _ => false,
    };
    let salvage = report.salvage.as_ref();
    let listed = |id: u64| salvage.is_some_and(|s| s.lost_ids().any(|l| l.get() == id));
    let in_range = |id: u64| {
        salvage.is_some_and(|s| {
            s.lost_ranges.iter().any(|r| match r.ids {
                wharf::IdSpan::None => false,
                wharf::IdSpan::Exact { first, last } => (first.get()..=last.get()).contains(&id),
                wharf::IdSpan::Within { first, last } => {
                    (first.get()..=last.map_or(u64::MAX, |l| l.get())).contains(&id)
                }
                wharf::IdSpan::Unknown => true,
                _ => true,
            })
        })
    };
    let redelivered =
        |id: u64| salvage.is_some_and(|s| s.may_be_redelivered().any(|m| m.get() == id));
    for (i, m) in o.msgs.iter().enumerate() {
        let id = m.id.expect("every workload push returned an id");
        let acked = m.ack != crate::oracle::St::No;
        if !acked && !present.contains(&i) {
            assert!(
                listed(id) || in_range(id) || after_cut(p.push_at.get(&id)),
                "I9: unsettled message {i} (id {id:x}) gone and not in the loss report {salvage:#?}"
            );
        }
        // Known open finding 1 (README.md): salvage can keep an acked message whose ack it
        // lost without listing it as "may be redelivered".
        if acked && present.contains(&i) && !skip_known() {
            assert!(
                redelivered(id) || after_cut(p.ack_at.get(&id)),
                "I2: acked message {i} (id {id:x}) back without being listed as may be redelivered"
            );
        }
    }
    drop(w);
    let w = testing::open(builder(), &sim, dir()).expect("a strict open of a salvaged store");
    assert_eq!(contents(&w), got, "the salvaged store reads otherwise when opened again");
}
