//! The values the hot path carries: an exec (or judged open) event, the unit that claims
//! it, and what was established about its file's content.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::baseline::Digest;
use crate::kernel::{FileStat, PendingPermission};
use crate::registry::UnitHandle;
use crate::verdict::{EventKind, Finding};

/// An exec event waiting for a verdict.
pub(super) enum ExecEvent {
    /// Enforce mode: the exec is blocked until answered.
    Permission(PendingPermission),
    /// Audit mode: the exec already proceeds; the fd is kept for the record.
    Notice(OwnedFd),
    /// Script control: an interpreter's open of a file, blocked until answered.
    Open(PendingPermission),
    /// Library control, enforce mode: an open, blocked until answered (a shared object's
    /// is judged; any other is allowed once its header is read).
    LibraryOpen(PendingPermission),
    /// Library control, audit mode: an open already under way.
    LibraryNotice(OwnedFd),
}

impl ExecEvent {
    pub(super) fn kind(&self) -> EventKind {
        match self {
            ExecEvent::Permission(_) => EventKind::Exec,
            ExecEvent::Notice(_) => EventKind::ExecNotice,
            ExecEvent::Open(_) => EventKind::ScriptOpen,
            ExecEvent::LibraryOpen(_) | ExecEvent::LibraryNotice(_) => EventKind::LibraryOpen,
        }
    }

    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            ExecEvent::Permission(p) | ExecEvent::Open(p) | ExecEvent::LibraryOpen(p) => p.fd(),
            ExecEvent::Notice(fd) | ExecEvent::LibraryNotice(fd) => Some(fd.as_fd()),
        }
    }

    /// An open (script or library control), not an exec.
    pub(super) fn is_open(&self) -> bool {
        matches!(
            self,
            ExecEvent::Open(_) | ExecEvent::LibraryOpen(_) | ExecEvent::LibraryNotice(_)
        )
    }
}

/// What was established about a file's content, and how.
#[derive(Clone, Copy)]
pub(super) struct Judgement {
    pub(super) finding: Finding,
    pub(super) digest: Option<Digest>,
    /// Answered from the cache (never recorded when allowed).
    pub(super) from_cache: bool,
    /// When the event was read.
    pub(super) arrived: Instant,
    /// The file's write generation in the mapping gate, read before its content was judged
    /// (`None`: read when the file is made mappable).
    pub(super) generation: Option<u64>,
}

impl Judgement {
    pub(super) fn hashed(finding: Finding, digest: Option<Digest>, arrived: Instant) -> Self {
        Self {
            finding,
            digest,
            from_cache: false,
            arrived,
            generation: None,
        }
    }
}

/// An event a unit claims: the file's unit, the event, the exec'ing thread, the file.
pub(super) struct Claimed {
    pub(super) unit: UnitHandle,
    pub(super) event: ExecEvent,
    pub(super) tid: i32,
    pub(super) stat: FileStat,
}
