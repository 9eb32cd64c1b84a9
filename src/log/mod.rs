//! The write-ahead log: segment files, the ordered set of them, staging, group commit, the
//! durable mark of a clean close, and recovery (scan, replay, torn-tail cut).
//!
//! Everything that writes, syncs or deletes a log file is here. The layers above stage records
//! through [`Wal`] and wait for durability through [`GroupCommit`], reaching the store's state
//! through [`LogHost`]; nothing here names a queue or a checkpoint.

mod commit;
mod flush;
mod mark;
mod recovery;
mod run;
mod segment;
mod segments;
mod source;
mod stats;
mod wal;

pub(crate) use self::commit::{GroupCommit, LogHost};
pub(crate) use self::mark::{
    parse as parse_mark, read as read_mark, write as write_mark, wrong_len as mark_wrong_len, Mark,
    FILE as MARK_FILE, LEN as MARK_LEN, TMP_FILE as MARK_TMP_FILE,
};
pub use self::recovery::RecoveryReport;
pub(crate) use self::recovery::{
    below_mark, damaged, explain_at, judge_end, last_nonzero, new_store_id, record_at, recover,
    scan, End, Ending, Group, Image, Replay,
};
pub(crate) use self::run::{fill, plain_push, Context as RunContext};
pub(crate) use self::segment::{
    file_name as segment_file_name, gap as segment_gap, parse_name as parse_segment_name,
    read_header as read_segment_header, unsynced_bound, Header, Name as SegmentName, Plan, Segment,
    HEADER_LEN,
};
pub use self::segment::{FORMAT_VERSION, MIN_SEGMENT_BYTES};
pub(crate) use self::segments::{first_record, Log, SegInfo, STRAGGLERS_MAX_SHARE};
pub use self::stats::Stats;
pub(crate) use self::wal::{CatalogEntry, Room, Wal, MAX_EPOCH, READY_SPARES, SEQ_BITS};
