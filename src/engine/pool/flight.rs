//! A file being hashed (a flight), the events waiting for it, and the waiters the pool
//! hands back when it cannot hash for them.

use std::os::fd::OwnedFd;
use std::time::Instant;

use crate::engine::ExecEvent;
use crate::kernel::{FileStat, MarkKind};
use crate::registry::UnitHandle;
use crate::verdict::Reason;

/// An event waiting for its file's hash.
pub(in crate::engine) struct Waiter {
    pub(in crate::engine) event: ExecEvent,
    pub(in crate::engine) tid: i32,
    pub(in crate::engine) deadline: Instant,
    pub(in crate::engine) arrived: Instant,
}

/// A file being hashed (or queued for it), and who waits for it.
pub(in crate::engine) struct InFlight {
    pub(super) seq: u64,
    pub(in crate::engine) stat: FileStat,
    pub(in crate::engine) via: MarkKind,
    /// A close-after-write was seen while hashing: the result may describe old content.
    pub(in crate::engine) tainted: bool,
    /// Waiting in its unit's backlog (the unit holds its share of the pool), not yet sent
    /// to a worker.
    pub(super) queued: bool,
    /// Hashed for the mapping gate (a file just written), not for an exec: an allowed
    /// result makes it mappable.
    pub(in crate::engine) for_mapping: bool,
    /// A duplicate of the file's fd, for a flight without waiters (for the mapping gate).
    pub(super) file: Option<OwnedFd>,
    /// The file's write generation in the mapping gate, read before it was hashed.
    pub(in crate::engine) mapping_generation: u64,
    pub(in crate::engine) waiters: Vec<Waiter>,
}

impl InFlight {
    /// A file about to be hashed because `waiter` waits for it.
    pub(in crate::engine) fn for_exec(
        stat: FileStat,
        via: MarkKind,
        generation: u64,
        waiter: Waiter,
    ) -> Self {
        let mut f = Self::new(stat, via, generation);
        f.waiters.push(waiter);
        f
    }

    /// A file just written, hashed so the mapping gate can admit it; nobody waits.
    pub(in crate::engine) fn for_mapping(
        stat: FileStat,
        via: MarkKind,
        generation: u64,
        file: OwnedFd,
    ) -> Self {
        let mut f = Self::new(stat, via, generation);
        f.for_mapping = true;
        f.file = Some(file);
        f
    }

    pub(super) fn new(stat: FileStat, via: MarkKind, mapping_generation: u64) -> Self {
        InFlight {
            seq: 0,
            stat,
            via,
            tainted: false,
            queued: false,
            for_mapping: false,
            file: None,
            mapping_generation,
            waiters: Vec::new(),
        }
    }
}

/// Waiters the pool could not take, and why: the engine answers them by policy.
pub(in crate::engine) struct Refused {
    pub(in crate::engine) unit: UnitHandle,
    pub(in crate::engine) stat: FileStat,
    pub(in crate::engine) waiters: Vec<Waiter>,
    pub(in crate::engine) reason: Reason,
}

/// The waiters of a flight that cannot be hashed.
pub(super) fn refused(unit: UnitHandle, flight: &mut InFlight, reason: Reason) -> Refused {
    Refused {
        unit,
        stat: flight.stat,
        waiters: std::mem::take(&mut flight.waiters),
        reason,
    }
}
