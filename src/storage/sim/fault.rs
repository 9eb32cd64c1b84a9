//! The knobs of the simulated disk a test turns: which operations to fail ([`Fault`], by
//! [`OpKind`]), what a crash keeps ([`CrashPolicy`]), the deterministic generator behind every
//! random choice ([`Rng`]), and the per-call-site counts it reports ([`SiteCount`]).

/// The kind of a storage operation, for fault targeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `create_dir_all`
    Mkdir,
    /// `list`
    List,
    /// `open` of an existing file
    Open,
    /// `open` creating a file
    Create,
    /// `rename`
    Rename,
    /// `remove`
    Remove,
    /// directory sync
    DirSync,
    /// `lock`
    Lock,
    /// `len`
    Len,
    /// `read_at`
    Read,
    /// `write_at`
    Write,
    /// `sync_data`
    Sync,
    /// `allocate`
    Allocate,
    /// `set_len`
    SetLen,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 14] = [
        OpKind::Mkdir,
        OpKind::List,
        OpKind::Open,
        OpKind::Create,
        OpKind::Rename,
        OpKind::Remove,
        OpKind::DirSync,
        OpKind::Lock,
        OpKind::Len,
        OpKind::Read,
        OpKind::Write,
        OpKind::Sync,
        OpKind::Allocate,
        OpKind::SetLen,
    ];
}

/// What a crash keeps of the writes and directory changes that were not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Everything written survives (a process kill: the page cache stays).
    KeepAll,
    /// Nothing unsynced survives.
    DropAllUnsynced,
    /// File contents survive, directory changes not covered by a directory sync do not.
    DropUnsyncedDirOps,
    /// Each unsynced write independently survives, vanishes, is torn at a sector boundary or
    /// has some sectors replaced by garbage (where the disk held only zeros) or left as they
    /// were; each unsynced directory entry change survives or not. Later writes may survive
    /// where earlier ones did not.
    RandomSubset,
    /// Size changes survive but unsynced data does not: files grow with garbage.
    GrowWithGarbage,
}

impl CrashPolicy {
    /// The deterministic policies (one image each).
    pub const DETERMINISTIC: [CrashPolicy; 4] = [
        CrashPolicy::KeepAll,
        CrashPolicy::DropAllUnsynced,
        CrashPolicy::DropUnsyncedDirOps,
        CrashPolicy::GrowWithGarbage,
    ];
}

/// An injected fault: the `nth` (from 1) operation of `kind` fails, once or from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The kind of operation to fail.
    pub kind: OpKind,
    /// Which one, counting from 1, among the operations of that kind after the fault was set.
    pub nth: u64,
    /// `StorageFull` (ENOSPC) rather than a generic I/O error (EIO).
    pub no_space: bool,
    /// Every later operation of the kind fails too.
    pub persistent: bool,
}

/// Counts of one call site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteCount {
    /// Operations issued from the site.
    pub calls: u64,
    /// Of those, operations that failed by injection.
    pub injected: u64,
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}
