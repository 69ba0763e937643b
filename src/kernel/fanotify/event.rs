//! A permission event and its answer: pending until answered, answered on drop; the raw
//! events read from the group, parsed.

use super::*;

/// The answer to a permission event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Let the exec proceed.
    Allow,
    /// Fail the exec with EPERM.
    Deny,
}

/// Something that can answer a permission event by its fd.
pub trait Respond: Send + Sync {
    /// Writes one response (the kernel takes exactly one per `write`).
    fn respond(&self, fd: BorrowedFd<'_>, answer: Answer) -> Result<(), KernelError>;
}

static UNANSWERED_DROPS: AtomicU64 = AtomicU64::new(0);

/// How many permission events were answered by [`PendingPermission`]'s `Drop` (with the
/// default answer) instead of an explicit decision. Nonzero means a code path forgot an
/// event; the kernel was still answered.
pub fn unanswered_drops() -> u64 {
    UNANSWERED_DROPS.load(Ordering::Relaxed)
}

/// A permission event that must be answered exactly once.
///
/// Answering consumes the value; dropping it unanswered answers with the default chosen
/// when it was created (deny in enforce mode) and counts it in [`unanswered_drops`]. So an
/// event can be neither forgotten nor answered twice. The fd is closed only after the
/// answer is written: the kernel matches a response by fd *number*, and a closed number
/// can be reused by the next event.
pub struct PendingPermission {
    fd: Option<OwnedFd>,
    responder: Arc<dyn Respond>,
    default: Answer,
}

impl std::fmt::Debug for PendingPermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPermission")
            .field("fd", &self.fd)
            .field("default", &self.default)
            .finish()
    }
}

impl PendingPermission {
    /// Wraps the fd of a permission event.
    pub fn new(fd: OwnedFd, responder: Arc<dyn Respond>, default: Answer) -> Self {
        Self {
            fd: Some(fd),
            responder,
            default,
        }
    }

    /// The event's fd (the file being executed, opened by the kernel for us).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Changes the answer given if this value is dropped unanswered.
    pub fn set_default(&mut self, default: Answer) {
        self.default = default;
    }

    /// Answers the event and closes its fd.
    pub fn answer(mut self, answer: Answer) -> Result<(), KernelError> {
        match self.fd.take() {
            Some(fd) => self.responder.respond(fd.as_fd(), answer),
            None => Ok(()),
        }
    }
}

impl Drop for PendingPermission {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            UNANSWERED_DROPS.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.responder.respond(fd.as_fd(), self.default) {
                log::error!("answering a dropped permission event failed: {err}");
            }
        }
    }
}

/// One event as read from the group.
#[derive(Debug)]
pub struct RawEvent {
    /// `FAN_*` bits.
    pub mask: u64,
    /// The event's fd; `None` for a queue overflow.
    pub fd: Option<OwnedFd>,
    /// Thread id of the process that caused the event (`FAN_REPORT_TID`).
    pub tid: i32,
}

impl RawEvent {
    /// A permission event (must be answered).
    pub fn is_permission(&self) -> bool {
        self.mask & libc::FAN_OPEN_EXEC_PERM != 0
    }
    /// An open permission event (script control): must be answered.
    pub fn is_open_permission(&self) -> bool {
        self.mask & libc::FAN_OPEN_PERM != 0
    }
    /// An open notification (library control in audit mode).
    pub fn is_open_notice(&self) -> bool {
        self.mask & libc::FAN_OPEN != 0
    }
    /// An exec notification (audit mode, never blocks the exec).
    pub fn is_exec_notice(&self) -> bool {
        self.mask & libc::FAN_OPEN_EXEC != 0
    }
    /// A file opened for writing was closed: its content may have changed.
    pub fn is_close_write(&self) -> bool {
        self.mask & libc::FAN_CLOSE_WRITE != 0
    }
    /// The kernel dropped events (queue overflow).
    pub fn is_overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }
}

/// Drops the doorbell's rings (ours, or a predecessor's whose mark the group kept): no
/// event to judge (the group marks FAN_MODIFY on nothing else); their fds close as they
/// drop. In place and in order: a write's invalidation must stay ahead of an exec of the
/// same file read in the same batch.
pub(super) fn drop_doorbell_rings(out: &mut Vec<RawEvent>) {
    out.retain(|e| e.mask != libc::FAN_MODIFY);
}

pub(super) const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// Parses the events in `buf`, taking ownership of each event's fd at once so that none
/// leaks even when a later record is malformed.
pub(super) fn parse_events(buf: &[u8], out: &mut Vec<RawEvent>) -> Result<(), KernelError> {
    let mut offset = 0;
    let mut result = Ok(());
    while buf.len() - offset >= METADATA_LEN {
        // SAFETY: at least METADATA_LEN bytes remain at `offset`; read_unaligned copies the
        // plain-old-data struct without alignment requirements.
        let meta: libc::fanotify_event_metadata = unsafe {
            std::ptr::read_unaligned(
                buf.as_ptr()
                    .add(offset)
                    .cast::<libc::fanotify_event_metadata>(),
            )
        };
        let fd = if meta.fd >= 0 {
            // SAFETY: the kernel installed this fd in our table for this event and nothing
            // else refers to it; from here on OwnedFd is its only owner.
            Some(unsafe { OwnedFd::from_raw_fd(meta.fd) })
        } else {
            None
        };
        if meta.vers != libc::FANOTIFY_METADATA_VERSION && result.is_ok() {
            result = Err(KernelError::Version {
                found: meta.vers,
                expected: libc::FANOTIFY_METADATA_VERSION,
            });
        }
        out.push(RawEvent {
            mask: meta.mask,
            fd,
            tid: meta.pid,
        });
        let len = meta.event_len as usize;
        if len < METADATA_LEN {
            break;
        }
        offset = offset.saturating_add(len);
        if offset > buf.len() {
            break;
        }
    }
    result
}
