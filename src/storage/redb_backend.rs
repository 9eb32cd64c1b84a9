//! redb on wharf's storage trait: the state database runs on the same files, real or
//! simulated, as the log, so that both crash in one order in the simulated-disk tests.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::StorageFile;

/// A redb `StorageBackend` over one storage file.
pub(crate) struct RedbBackend {
    file: Arc<dyn StorageFile>,
}

impl RedbBackend {
    pub(crate) fn new(file: Arc<dyn StorageFile>) -> RedbBackend {
        RedbBackend { file }
    }
}

impl fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedbBackend")
    }
}

impl redb::StorageBackend for RedbBackend {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_at(data, offset)
    }
}
