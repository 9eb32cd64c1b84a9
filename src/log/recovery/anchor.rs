//! [`Anchor`]: what the anchor records of a log say, checked against its oldest segment and the
//! state database's checkpoint.

use std::path::Path;

use crate::error::Corruption;
use crate::log::segment_file_name;

/// What the anchors of a log say (the highest of each field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Anchor {
    pub start: u64,
    pub checkpoint: u64,
}

impl Anchor {
    /// The damage, if the log's segments (the oldest based at `first`, if any) and the state
    /// database (its checkpoint `checkpoint`) do not match what the log's anchors say: a
    /// missing oldest segment, or a state database older than the log's last checkpoint.
    pub(crate) fn check(
        &self,
        log_dir: &Path,
        first: Option<u64>,
        state_file: &Path,
        checkpoint: u64,
    ) -> Option<Corruption> {
        if let Some(first) = first.filter(|&f| f > self.start) {
            return Some(Corruption {
                file: log_dir.join(segment_file_name(self.start)),
                offset: 0,
                reason: format!(
                    "segment file missing: the log must start at position {}, but its oldest \
                     segment starts at {first}",
                    self.start
                ),
            });
        }
        (checkpoint < self.checkpoint).then(|| Corruption {
            file: state_file.to_owned(),
            offset: 0,
            reason: format!(
                "the state database is missing or older than the log: it covers the log up to \
                 position {checkpoint}, but the log recorded a checkpoint up to {} (a lost file \
                 or a stale copy)",
                self.checkpoint
            ),
        })
    }
}
