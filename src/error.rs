//! The one public error type of the crate, and `Result`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// `Result` with wharf's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where on disk damage was found: the file and the byte offset inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte offset of the damaged record or header inside `file`.
    pub offset: u64,
    /// What is wrong, in a few words.
    pub reason: String,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {} of {}", self.reason, self.offset, self.file.display())
    }
}

/// Everything that can go wrong in wharf.
///
/// An empty queue is not an error: `try_pop` returns `Ok(None)`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed. On the write path this also poisons the store (see [`Error::Poisoned`]).
    Io(io::Error),
    /// A file of the store is damaged below the durable end of the log.
    Corrupted(Corruption),
    /// An earlier write or `fdatasync` failed, so the page cache can no longer be trusted, or one
    /// of the store's threads panicked (the text names it). Every call fails with this error
    /// until the store is reopened, which recovers from disk.
    Poisoned(String),
    /// Another handle, in this process or another, has the directory open.
    Locked(PathBuf),
    /// A payload is larger than the store's `max_payload` (or than a segment can hold).
    PayloadTooLarge {
        /// The payload's length in bytes.
        len: usize,
        /// The largest accepted payload in bytes.
        max: usize,
    },
    /// A queue name is empty, too long, or has a character outside `[A-Za-z0-9._-]`.
    InvalidName(String),
    /// An option given to the builder is out of range.
    InvalidOption(String),
    /// The lease of this delivery ran out (the message may have been delivered again since),
    /// or it was already settled: nothing was changed.
    LeaseExpired,
    /// The store was closed.
    Closed,
    /// There is no space left on the device for a new segment: the push wrote nothing. Pops,
    /// acks and nacks go on in a segment kept in reserve for them, so the store can be drained,
    /// and pushes work again once settled segments are deleted.
    NoSpace,
    /// The directory was written by a newer version of wharf.
    UnsupportedVersion {
        /// The file with the unknown format version.
        file: PathBuf,
        /// The version found in it.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The directory holds a segment that belongs to another store.
    ForeignSegment(PathBuf),
    /// The store holds its configured maximum of disk
    /// ([`WharfBuilder::max_disk_bytes`](crate::WharfBuilder::max_disk_bytes)): the push wrote
    /// nothing. Pops and acks go on, and pushes work again once acked segments are deleted.
    Full {
        /// The limit in bytes.
        max_disk_bytes: u64,
    },
    /// The queue holds its configured maximum of waiting messages and its overflow policy is
    /// [`Overflow::Reject`](crate::Overflow::Reject): nothing was stored.
    QueueFull {
        /// The queue's name.
        queue: String,
        /// Its limit.
        max_len: u64,
    },
    /// A typed payload could not be encoded or decoded (wrong type, or bytes from another
    /// producer); the message is untouched and can be dead-lettered.
    Codec(String),
    /// An internal invariant or limit of wharf failed, not the disk: a bug (a thread that
    /// panicked, a message with no bytes where the index says), or a limit no ordinary use
    /// reaches (the message ids of one open, or the id epochs of a store, are used up).
    Internal(String),
}

impl Error {
    /// [`Error::NoSpace`], for `ok_or_else` on the hot paths: `ok_or(Error::NoSpace)` builds
    /// the error and drops it again on every success.
    pub(crate) fn no_space() -> Error {
        Error::NoSpace
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Corrupted(c) => write!(f, "corrupt store: {c}"),
            Error::Poisoned(why) => {
                write!(f, "store is poisoned by an earlier failure ({why}); reopen it")
            }
            Error::Locked(dir) => {
                write!(f, "{} is already open in another handle or process", dir.display())
            }
            Error::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes is larger than the maximum of {max} bytes")
            }
            Error::InvalidName(name) => write!(
                f,
                "invalid queue name {name:?}: use 1 to {} characters from A-Z a-z 0-9 . _ -",
                crate::limits::MAX_NAME_LEN
            ),
            Error::InvalidOption(why) => write!(f, "invalid option: {why}"),
            Error::LeaseExpired => write!(f, "the lease of this delivery has expired"),
            Error::Closed => write!(f, "the store is closed"),
            Error::NoSpace => write!(f, "no space left on device for a new log segment"),
            Error::UnsupportedVersion { file, found, supported } => write!(
                f,
                "{} has format version {found}, this build reads up to {supported}",
                file.display()
            ),
            Error::ForeignSegment(file) => {
                write!(f, "{} belongs to another store", file.display())
            }
            Error::Full { max_disk_bytes } => {
                write!(f, "the store is full: its files may take at most {max_disk_bytes} bytes")
            }
            Error::QueueFull { queue, max_len } => {
                write!(f, "queue {queue:?} is full: it holds its maximum of {max_len} messages")
            }
            Error::Codec(why) => write!(f, "payload codec: {why}"),
            Error::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::StorageFull {
            Error::NoSpace
        } else {
            Error::Io(e)
        }
    }
}
