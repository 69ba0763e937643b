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

/// Something that interrupts a blocked [`Gate::next_batch`].
pub trait Wake: Send + Sync {
    /// Makes the current or next `next_batch` return promptly.
    fn wake(&self);
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

/// What a mark is placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// The whole filesystem (superblock): every mount of it, in every namespace.
    Filesystem,
    /// One mount only (a bind mount of a host directory shares the host's superblock).
    Mount,
}

impl std::fmt::Display for MarkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MarkKind::Filesystem => "filesystem",
            MarkKind::Mount => "mount",
        })
    }
}

/// Which events a mark asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMask {
    /// `FAN_OPEN_EXEC_PERM`: every exec waits for our answer.
    Enforce,
    /// `FAN_OPEN_EXEC` notifications: audit mode records what enforce would deny and never
    /// holds an exec, so an audit rollout cannot stall a node.
    Audit,
    /// Enforce plus `FAN_OPEN_PERM`: every open waits for our answer too, so reads of
    /// scripts by interpreters and opens of shared objects can be judged (the opt-in script
    /// and library controls).
    EnforceWithOpens,
    /// Audit plus `FAN_OPEN` notifications: opens of shared objects are recorded, never held
    /// (library control in audit mode).
    AuditWithOpens,
}

impl EventMask {
    fn bits(self) -> MaskFlags {
        // FAN_CLOSE_WRITE in both modes: every writer, including one writing through a
        // shared mmap (which on tmpfs changes no timestamp), must close before the file can
        // be executed (exec fails with ETXTBSY while a writer is open), and its close event
        // is queued before the exec's event, so the cache sees it first.
        match self {
            EventMask::Enforce => MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE,
            EventMask::Audit => MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_CLOSE_WRITE,
            EventMask::EnforceWithOpens => {
                MaskFlags::FAN_OPEN_EXEC_PERM
                    | MaskFlags::FAN_OPEN_PERM
                    | MaskFlags::FAN_CLOSE_WRITE
            }
            EventMask::AuditWithOpens => {
                MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_OPEN | MaskFlags::FAN_CLOSE_WRITE
            }
        }
    }
}

/// A mark request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// A mount point in the daemon's mount namespace.
    pub path: PathBuf,
    /// Filesystem or mount mark.
    pub kind: MarkKind,
    /// Events wanted.
    pub mask: EventMask,
}

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

struct GroupResponder {
    group: Arc<Fanotify>,
}

impl Respond for GroupResponder {
    fn respond(&self, fd: BorrowedFd<'_>, answer: Answer) -> Result<(), KernelError> {
        let response = match answer {
            Answer::Allow => Response::FAN_ALLOW,
            Answer::Deny => Response::FAN_DENY,
        };
        self.group
            .write_response(FanotifyResponse::new(fd, response))
            .map_err(KernelError::Respond)
    }
}

struct EventFdWaker(EventFd);

impl Wake for EventFdWaker {
    fn wake(&self) {
        // EAGAIN means the counter is already nonzero: the engine is being woken anyway.
        let _ = self.0.write(1);
    }
}

/// A file of no name whose writes are events of the group itself (an inode mark for
/// `FAN_MODIFY`): ringing it makes a blocked `read` of the group return. With it the event
/// loop blocks in `read` on the group alone, as the floor does, instead of `poll` on the
/// group and an eventfd and then `read`: one system call fewer per event.
struct Doorbell {
    file: std::fs::File,
}

impl Doorbell {
    /// An unnamed file (`O_TMPFILE`) in the temporary directory, marked on `group`.
    fn new(group: &Fanotify) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(std::env::temp_dir())
            .ok()?;
        // Its one byte is written now, before the mark: a ring then only rewrites it, and a
        // full filesystem cannot fail a ring later and leave the loop blocked unwoken.
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&[0], 0).ok()?;
        }
        let bell = Doorbell { file };
        bell.mark(group).ok()?;
        Some(bell)
    }

    fn mark(&self, group: &Fanotify) -> nix::Result<()> {
        group.mark(
            MarkFlags::FAN_MARK_ADD,
            MaskFlags::FAN_MODIFY,
            self.file.as_fd(),
            None::<&Path>,
        )
    }

    fn ring(&self) {
        use std::os::unix::fs::FileExt;
        let _ = self.file.write_at(&[1], 0);
    }
}

impl Wake for Doorbell {
    fn wake(&self) {
        self.ring();
    }
}

/// Rings the doorbell when the event loop's timeout is due: the loop's `read` has none.
/// The loop publishes its next deadline on every turn (an atomic store; a later deadline
/// than the last needs nothing else, an earlier one wakes this thread through `cv`).
struct Ticker {
    bell: Arc<Doorbell>,
    base: std::time::Instant,
    /// Nanoseconds after `base`; `u64::MAX`: none.
    deadline: AtomicU64,
    lock: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Ticker {
    fn start(bell: Arc<Doorbell>) -> Option<Arc<Self>> {
        let t = Arc::new(Ticker {
            bell,
            base: std::time::Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            lock: std::sync::Mutex::new(false),
            cv: std::sync::Condvar::new(),
        });
        let run = Arc::clone(&t);
        std::thread::Builder::new()
            .name("driftlock-ticker".into())
            .spawn(move || run.run())
            .ok()?;
        Some(t)
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64
    }

    /// The loop wants to be woken at `at`.
    fn wake_at(&self, at: std::time::Instant) {
        let when = at
            .saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64;
        let before = self.deadline.swap(when, Ordering::AcqRel);
        if when < before {
            // Taken after the store: the ticker either sees the new deadline before it
            // waits, or is waiting and gets this notification.
            let _g = self.stopped();
            self.cv.notify_one();
        }
    }

    /// The stop flag's lock (a poisoned lock still guards a plain bool).
    fn stopped(&self) -> std::sync::MutexGuard<'_, bool> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stop(&self) {
        *self.stopped() = true;
        self.cv.notify_one();
    }

    fn run(&self) {
        let mut stopped = self.stopped();
        while !*stopped {
            let due = self.deadline.load(Ordering::Acquire);
            let now = self.now_ns();
            if due <= now {
                if self
                    .deadline
                    .compare_exchange(due, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.bell.ring();
                }
                continue;
            }
            let wait = Duration::from_nanos((due - now).min(60_000_000_000));
            stopped = self
                .cv
                .wait_timeout(stopped, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Bytes read per `read(2)` of the group: up to ~340 events, each of which opens an fd.
const READ_BUFFER: usize = 8192;

/// The real gate: one fanotify group of class content.
pub struct FanotifyGate {
    group: Arc<Fanotify>,
    waker: Arc<EventFdWaker>,
    /// Where the loop blocks in `read` alone (see [`Doorbell`]); else it polls.
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

    /// True if the event loop blocks in `read` on the group alone (see [`Doorbell`]).
    pub fn blocks_in_read(&self) -> bool {
        self.bell.is_some()
    }
}

/// Drops the doorbell's rings (ours, or a predecessor's whose mark the group kept): no
/// event to judge (the group marks FAN_MODIFY on nothing else); their fds close as they
/// drop. In place and in order: a write's invalidation must stay ahead of an exec of the
/// same file read in the same batch.
fn drop_doorbell_rings(out: &mut Vec<RawEvent>) {
    out.retain(|e| e.mask != libc::FAN_MODIFY);
}

const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// Parses the events in `buf`, taking ownership of each event's fd at once so that none
/// leaks even when a later record is malformed.
fn parse_events(buf: &[u8], out: &mut Vec<RawEvent>) -> Result<(), KernelError> {
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
