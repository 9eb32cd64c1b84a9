//! `QueueRef`: one queue of an open store, what every operation on a queue starts from.

use std::sync::Arc;

use parking_lot::Condvar;

use crate::store::{Core, Shared};

/// One queue of an open store: the store, the queue's id, its name, and the condition
/// variable its blocked pops wait on.
#[derive(Clone)]
pub(crate) struct QueueRef {
    core: Arc<Core>,
    id: u32,
    name: Arc<str>,
    cv: Arc<Condvar>,
}

impl QueueRef {
    pub(crate) fn new(core: Arc<Core>, id: u32, name: Arc<str>, cv: Arc<Condvar>) -> QueueRef {
        QueueRef { core, id, name, cv }
    }

    /// The open store.
    #[inline]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The state of the open store.
    #[inline]
    pub(crate) fn shared(&self) -> &Shared {
        self.core.shared()
    }

    /// The queue's id (its position in the catalog).
    #[inline]
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The queue's name.
    #[inline]
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The condition variable blocked pops of this queue wait on.
    #[inline]
    pub(crate) fn cv(&self) -> &Condvar {
        &self.cv
    }
}
