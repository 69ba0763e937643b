//! Waking the event loop: the group's responder, and the doorbells and ticker that end a
//! blocking read.

use super::*;

/// Something that interrupts a blocked [`Gate::next_batch`].
pub trait Wake: Send + Sync {
    /// Makes the current or next `next_batch` return promptly.
    fn wake(&self);
}

pub(super) struct GroupResponder {
    pub(super) group: Arc<Fanotify>,
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

pub(super) struct EventFdWaker(pub(super) EventFd);

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
pub(super) struct Doorbell {
    file: std::fs::File,
}

impl Doorbell {
    /// An unnamed file (`O_TMPFILE`) in the temporary directory, marked on `group`.
    pub(super) fn new(group: &Fanotify) -> Option<Self> {
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

    pub(super) fn mark(&self, group: &Fanotify) -> nix::Result<()> {
        group.mark(
            MarkFlags::FAN_MARK_ADD,
            MaskFlags::FAN_MODIFY,
            self.file.as_fd(),
            None::<&Path>,
        )
    }

    pub(super) fn ring(&self) {
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
pub(super) struct Ticker {
    bell: Arc<Doorbell>,
    base: std::time::Instant,
    /// Nanoseconds after `base`; `u64::MAX`: none.
    deadline: AtomicU64,
    lock: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Ticker {
    pub(super) fn start(bell: Arc<Doorbell>) -> Option<Arc<Self>> {
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

    pub(super) fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos().min(u128::from(u64::MAX - 1)) as u64
    }

    /// The loop wants to be woken at `at`.
    pub(super) fn wake_at(&self, at: std::time::Instant) {
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
    pub(super) fn stopped(&self) -> std::sync::MutexGuard<'_, bool> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn stop(&self) {
        *self.stopped() = true;
        self.cv.notify_one();
    }

    pub(super) fn run(&self) {
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
