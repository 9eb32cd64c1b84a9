//! The write-ahead log: segment files, the ordered set of them, staging and group commit, the
//! durable mark of a clean close.
//!
//! Everything that writes or syncs a log file is here; the layers above stage records through
//! [`Wal`] and wait for durability through the group commit.

mod commit;
mod mark;
mod segment;
mod segments;

pub use self::commit::Stats;
pub(crate) use self::commit::{
    background, CatalogEntry, Room, Wal, MAX_EPOCH, READY_SPARES, SEQ_BITS,
};
pub(crate) use self::mark::{
    parse as parse_mark, read as read_mark, write as write_mark, wrong_len as mark_wrong_len, Mark,
    FILE as MARK_FILE, LEN as MARK_LEN, TMP_FILE as MARK_TMP_FILE,
};
pub use self::segment::FORMAT_VERSION;
pub(crate) use self::segment::{
    file_name as segment_file_name, gap as segment_gap, parse_name as parse_segment_name,
    read_header as read_segment_header, Header, Name as SegmentName, Segment, HEADER_LEN,
};
pub(crate) use self::segments::{first_record, Log, SegInfo};
