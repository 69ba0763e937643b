//! The fanotify group: marks, a zero-allocation batch reader, and permission answers.
//!
//! Why not `nix::sys::fanotify::Fanotify::read_events`: it allocates a `Vec` per read and
//! its event type panics in `Drop` if a close fails, and nothing on the event path may
//! panic. nix is still used for `fanotify_init`, `fanotify_mark` and the response write
//! (typed flags, `Result`s); only the metadata parsing is ours.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};

use super::KernelError;

mod event;
mod mark;
mod wake;

pub use event::*;
pub use mark::*;
pub use wake::*;

/// The kernel as the engine sees it.
pub trait Gate: Send + 'static {
    /// Waits up to `timeout` (forever if `None`) for events and appends them to `out`.
    /// Returns with `out` unchanged on timeout or when woken.
    /// Waits for events until `deadline` (`None`: until woken) and appends them to `out`.
    /// `now` is the caller's clock reading of this turn: the loop reads the clock once per
    /// turn and no wait reads it again.
    fn next_batch(
        &mut self,
        now: std::time::Instant,
        deadline: Option<std::time::Instant>,
        out: &mut Vec<RawEvent>,
    ) -> Result<(), KernelError>;
    /// The responder for permission events read from this gate.
    fn responder(&self) -> Arc<dyn Respond>;
    /// A handle that interrupts `next_batch`.
    fn waker(&self) -> Arc<dyn Wake>;
    /// Adds (`add`) or removes a mark.
    fn mark(&self, mark: &Mark, add: bool) -> Result<(), KernelError>;
    /// Changes a mark placed with mask `from` to `mark.mask` with no moment in which an
    /// event both masks share is missing: the new bits are added first, then the bits only
    /// `from` had are removed.
    fn switch_mask(&self, mark: &Mark, from: EventMask) -> Result<(), KernelError>;
    /// Lets the kernel allow later execs of the file behind `fd` without an event: an
    /// evictable inode ignore mark for exec permission. Only for a file whose content can
    /// never change (on a filesystem with no write path at all); undone by
    /// [`Gate::clear_ignored_execs`] or when the kernel evicts the inode.
    fn ignore_exec(&self, fd: BorrowedFd<'_>) -> Result<(), KernelError>;
    /// Removes every mark placed by [`Gate::ignore_exec`] (all inode marks of the group).
    fn clear_ignored_execs(&self) -> Result<(), KernelError>;
    /// True if `path` still leads to the mount with id `mnt_id` (as [`super::stat_fd`]
    /// reports it): false once the unit's mount is gone and the path leads elsewhere.
    fn mark_is_live(&self, path: &std::path::Path, mnt_id: u64) -> bool {
        super::stat_path(path).is_ok_and(|s| s.mnt_id == mnt_id)
    }
}

/// Bytes read per `read(2)` of the group: up to ~340 events, each of which opens an fd.
const READ_BUFFER: usize = 8192;

/// The real gate: one fanotify group of class content.
pub struct FanotifyGate {
    group: Arc<Fanotify>,
    waker: Arc<EventFdWaker>,
    /// Where the loop blocks in `read` alone (see `Doorbell`); else it polls.
    bell: Option<(Arc<Doorbell>, Arc<Ticker>)>,
    buf: Box<[u8; READ_BUFFER]>,
    /// The kernel has `FAN_MARK_EVICTABLE` (5.19). Older kernels ignore the flag instead of
    /// refusing it, so the ignore mark would pin its inode: none is placed there.
    evictable: bool,
}

impl Drop for FanotifyGate {
    fn drop(&mut self) {
        if let Some((_, ticker)) = &self.bell {
            ticker.stop();
        }
    }
}

impl FanotifyGate {
    /// Creates the group (`FAN_CLASS_CONTENT`, thread ids, unlimited queue and marks).
    pub fn new() -> Result<Self, KernelError> {
        let flags = InitFlags::FAN_CLASS_CONTENT
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_UNLIMITED_QUEUE
            | InitFlags::FAN_UNLIMITED_MARKS
            | InitFlags::FAN_REPORT_TID;
        let event_flags = EventFFlags::O_RDONLY
            | EventFFlags::O_LARGEFILE
            | EventFFlags::O_CLOEXEC
            | EventFFlags::O_NOATIME;
        let group = Fanotify::init(flags, event_flags).map_err(|source| KernelError::Init {
            hint: match source {
                Errno::EPERM => "needs CAP_SYS_ADMIN (run the daemon as root)".into(),
                Errno::ENOSYS => "the kernel lacks fanotify (CONFIG_FANOTIFY)".into(),
                Errno::EINVAL => {
                    "the kernel lacks permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS) \
                     or FAN_REPORT_TID (needs Linux 5.9+)"
                        .into()
                }
                Errno::EMFILE => "too many fanotify groups or open files".into(),
                other => other.desc().into(),
            },
            source,
        })?;
        Self::with_group(group)
    }

    fn with_group(group: Fanotify) -> Result<Self, KernelError> {
        let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(KernelError::Poll)?;
        // DRIFTLOCK_EVENT_WAIT=poll keeps the poll loop (a way back, should a filesystem
        // refuse the doorbell's mark in some setup).
        let want_bell = std::env::var("DRIFTLOCK_EVENT_WAIT").map_or(true, |v| v != "poll");
        let bell = want_bell
            .then(|| Doorbell::new(&group))
            .flatten()
            .map(Arc::new)
            .and_then(|b| Some((Arc::clone(&b), Ticker::start(b)?)));
        if bell.is_some() {
            // The loop blocks in read: the group must block.
            let _ = nix::fcntl::fcntl(
                &group,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            );
        } else {
            log::debug!(
                "event loop: poll (no doorbell file in {})",
                std::env::temp_dir().display()
            );
        }
        Ok(Self {
            group: Arc::new(group),
            waker: Arc::new(EventFdWaker(eventfd)),
            bell,
            buf: Box::new([0u8; READ_BUFFER]),
            evictable: super::features::parse_version(&super::features::kernel_release())
                .is_some_and(|v| v >= (5, 19)),
        })
    }

    /// Adopts a group handed over by a previous daemon (through systemd's fd store): its
    /// marks are still in place. Call [`FanotifyGate::answer_orphans`] before reading.
    pub fn adopt(group: OwnedFd) -> Result<Self, KernelError> {
        // Non-blocking reads, as with a group we create ourselves.
        let _ = nix::fcntl::fcntl(
            &group,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        // SAFETY: `group` is an open fanotify group fd that we own; Fanotify takes over the
        // ownership from the OwnedFd (into_raw_fd gives it up).
        let group = unsafe { Fanotify::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(group)) };
        Self::with_group(group)
    }

    /// Answers the permission events a dead predecessor read but never answered. The kernel
    /// matches a response by the event's fd *number* only, so one response is written for
    /// each number the predecessor could have held (one per `write`; the kernel takes one
    /// response per write, and refuses numbers with no pending event with ENOENT). Must run
    /// before this process reads any event, whose fd numbers could collide. Returns how
    /// many were answered.
    pub fn answer_orphans(&self, highest_fd: i32, answer: Answer) -> usize {
        let response = match answer {
            Answer::Allow => libc::FAN_ALLOW,
            Answer::Deny => libc::FAN_DENY,
        };
        let mut answered = 0;
        for fd in 0..=highest_fd {
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&fd.to_ne_bytes());
            bytes[4..].copy_from_slice(&response.to_ne_bytes());
            if nix::unistd::write(self.group.as_fd(), &bytes).is_ok() {
                answered += 1;
            }
        }
        answered
    }

    /// The group's fd (for the service manager's fd store).
    pub fn group_fd(&self) -> BorrowedFd<'_> {
        self.group.as_fd()
    }

    /// Reads whatever is queued (non-blocking) into `out`.
    fn read_available(&mut self, out: &mut Vec<RawEvent>) -> Result<(), KernelError> {
        let n = match nix::unistd::read(self.group.as_fd(), &mut self.buf[..]) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(()),
            Err(err) => return Err(KernelError::Read(err)),
        };
        let parsed = parse_events(&self.buf[..n], out);
        drop_doorbell_rings(out);
        parsed
    }

    /// True if the event loop blocks in `read` on the group alone (see `Doorbell`).
    pub fn blocks_in_read(&self) -> bool {
        self.bell.is_some()
    }
}

impl Gate for FanotifyGate {
    fn next_batch(
        &mut self,
        now: std::time::Instant,
        deadline: Option<std::time::Instant>,
        out: &mut Vec<RawEvent>,
    ) -> Result<(), KernelError> {
        // With the doorbell, block in read alone unless the deadline is (almost) due: that
        // wait is a short poll, not a ring of the doorbell per turn.
        if let Some((_, ticker)) = &self.bell {
            let due_now = deadline
                .is_some_and(|at| at.saturating_duration_since(now) < Duration::from_millis(1));
            if !due_now {
                ticker.wake_at(deadline.unwrap_or(now + Duration::from_secs(60)));
                return self.read_available(out);
            }
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let d = at.saturating_duration_since(now);
                // Rounded up: a deadline a fraction of a millisecond away must not spin the loop.
                PollTimeout::try_from(d.as_micros().div_ceil(1000).min(60_000) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let (group_ready, woken) = {
            let mut fds = [
                PollFd::new(self.group.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.waker.0.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(()),
                Err(err) => return Err(KernelError::Poll(err)),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if woken {
            let _ = self.waker.0.read();
        }
        if group_ready {
            self.read_available(out)?;
        }
        Ok(())
    }

    fn responder(&self) -> Arc<dyn Respond> {
        Arc::new(GroupResponder {
            group: Arc::clone(&self.group),
        })
    }

    fn waker(&self) -> Arc<dyn Wake> {
        match &self.bell {
            Some((bell, _)) => bell.clone(),
            None => self.waker.clone(),
        }
    }

    fn ignore_exec(&self, fd: BorrowedFd<'_>) -> Result<(), KernelError> {
        if !self.evictable {
            return Err(KernelError::Ignore {
                action: "add (no FAN_MARK_EVICTABLE before 5.19)",
                source: nix::Error::ENOTSUP,
            });
        }
        // Evictable: the mark does not pin the inode in memory; once evicted, the next exec
        // raises an event again and is judged (and ignored again) as usual.
        let flags = MarkFlags::FAN_MARK_ADD
            | MarkFlags::FAN_MARK_IGNORED_MASK
            | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY
            | MarkFlags::FAN_MARK_EVICTABLE;
        self.group
            .mark(flags, MaskFlags::FAN_OPEN_EXEC_PERM, fd, None::<&Path>)
            .map_err(|source| KernelError::Ignore {
                action: "add",
                source,
            })
    }

    fn clear_ignored_execs(&self) -> Result<(), KernelError> {
        // A flush with neither FAN_MARK_MOUNT nor FAN_MARK_FILESYSTEM removes the group's
        // inode marks, which only `ignore_exec` places.
        let flushed = self
            .group
            .mark(
                MarkFlags::FAN_MARK_FLUSH,
                MaskFlags::empty(),
                nix::fcntl::AT_FDCWD,
                None::<&Path>,
            )
            .map_err(|source| KernelError::Ignore {
                action: "flush",
                source,
            });
        // The flush took the doorbell's inode mark too: the loop would block unwakeable.
        if let Some((bell, _)) = &self.bell {
            if let Err(e) = bell.mark(&self.group) {
                log::error!(
                    "doorbell mark lost ({e}): ringing still wakes the loop at its next event or tick"
                );
            }
        }
        flushed
    }

    fn mark(&self, mark: &Mark, add: bool) -> Result<(), KernelError> {
        let mut flags = if add {
            MarkFlags::FAN_MARK_ADD
        } else {
            MarkFlags::FAN_MARK_REMOVE
        };
        flags |= match mark.kind {
            MarkKind::Filesystem => MarkFlags::FAN_MARK_FILESYSTEM,
            MarkKind::Mount => MarkFlags::FAN_MARK_MOUNT,
        };
        let cwd = nix::fcntl::AT_FDCWD;
        self.group
            .mark(flags, mark.mask.bits(), cwd, Some(mark.path.as_path()))
            .map_err(|source| KernelError::Mark {
                action: if add { "add" } else { "remove" },
                kind: mark.kind,
                path: mark.path.clone(),
                source,
            })
    }

    fn switch_mask(&self, mark: &Mark, from: EventMask) -> Result<(), KernelError> {
        self.mark(mark, true)?;
        let only_old = from.bits() & !mark.mask.bits();
        if only_old.is_empty() {
            return Ok(());
        }
        let kind = match mark.kind {
            MarkKind::Filesystem => MarkFlags::FAN_MARK_FILESYSTEM,
            MarkKind::Mount => MarkFlags::FAN_MARK_MOUNT,
        };
        self.group
            .mark(
                MarkFlags::FAN_MARK_REMOVE | kind,
                only_old,
                nix::fcntl::AT_FDCWD,
                Some(mark.path.as_path()),
            )
            .map_err(|source| KernelError::Mark {
                action: "remove",
                kind: mark.kind,
                path: mark.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_rings_are_dropped_and_the_rest_keeps_its_order() {
        let ev = |mask: u64, tid: i32| RawEvent {
            mask,
            fd: None,
            tid,
        };
        let mut out = vec![
            ev(libc::FAN_CLOSE_WRITE, 1),
            ev(libc::FAN_MODIFY, 2),
            ev(libc::FAN_OPEN_EXEC_PERM, 3),
            ev(libc::FAN_MODIFY, 4),
            ev(libc::FAN_OPEN_EXEC_PERM, 5),
        ];
        drop_doorbell_rings(&mut out);
        let tids: Vec<i32> = out.iter().map(|e| e.tid).collect();
        assert_eq!(tids, [1, 3, 5]);
    }

    fn meta(mask: u64, fd: i32, pid: i32, vers: u8) -> Vec<u8> {
        let m = libc::fanotify_event_metadata {
            event_len: METADATA_LEN as u32,
            vers,
            reserved: 0,
            metadata_len: METADATA_LEN as u16,
            mask,
            fd,
            pid,
        };
        // SAFETY (test): viewing a POD struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&m as *const libc::fanotify_event_metadata).cast::<u8>(),
                METADATA_LEN,
            )
        };
        bytes.to_vec()
    }

    #[test]
    fn parses_batches_and_overflow() {
        let mut buf = meta(
            libc::FAN_Q_OVERFLOW,
            libc::FAN_NOFD,
            0,
            libc::FANOTIFY_METADATA_VERSION,
        );
        buf.extend(meta(
            libc::FAN_Q_OVERFLOW,
            libc::FAN_NOFD,
            7,
            libc::FANOTIFY_METADATA_VERSION,
        ));
        buf.extend([0u8; 5]); // trailing garbage shorter than a record is ignored
        let mut out = Vec::new();
        parse_events(&buf, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].is_overflow() && out[0].fd.is_none());
        assert_eq!(out[1].tid, 7);
    }

    #[test]
    fn wrong_version_is_an_error_not_a_panic() {
        let buf = meta(libc::FAN_Q_OVERFLOW, libc::FAN_NOFD, 0, 99);
        let mut out = Vec::new();
        assert!(matches!(
            parse_events(&buf, &mut out),
            Err(KernelError::Version { found: 99, .. })
        ));
    }
}
