//! The kernel interface: the only module that holds `unsafe` or makes raw system calls.
//!
//! Everything above this module talks to the kernel through the [`Gate`] trait (read a batch
//! of events, answer one, place or remove a mark) and a few plain functions (`statx` on an
//! fd or a path, `/proc` readers, mount table). The engine is generic over [`Gate`], so its
//! verdict logic, cache invalidation and answer-exactly-once guarantee are unit-tested with
//! a fake gate and no root; the root tests under `tests/` exercise [`FanotifyGate`].
#![allow(unsafe_code)]

pub mod dirwatch;
pub mod exec_name;
mod fanotify;
pub mod fdpass;
pub mod features;
pub mod mapping_gate;
pub mod mount_index;
pub mod mountinfo;
pub mod ns;
pub mod overlay;
pub mod pidfd;
pub mod procfs;
pub mod ring;
mod stat;

pub use fanotify::{
    Answer, EventMask, FanotifyGate, Gate, Mark, MarkKind, PendingPermission, RawEvent, Respond,
    Wake, unanswered_drops,
};
pub use stat::{
    FileStat, PathStat, Timestamp, is_overlay, legacy_mount_id, mount_id_at, stat_fd, stat_path,
};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// True while this process has a single thread (`Threads:` in `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

/// Takes the fds passed by the service manager (`LISTEN_PID` = us, `LISTEN_FDS` = n, from
/// fd 3, names in `LISTEN_FDNAMES`) and clears those variables so no child inherits them.
pub fn take_listen_fds() -> Vec<(Option<String>, OwnedFd)> {
    let ours = std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // Changing the environment is only sound while no other thread can read it: checked
    // here rather than trusted, since the caller cannot prove it.
    if single_threaded() {
        // SAFETY: this is the process's only thread (just checked), and only it could start
        // another; nothing reads the environment concurrently.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
    } else {
        log::warn!(
            "LISTEN_* left in the environment: threads were started before the fds were taken"
        );
    }
    if !ours || !(1..=64).contains(&n) {
        return Vec::new();
    }
    (0..n)
        // SAFETY: F_GETFD on a number only queries whether it is open.
        .filter(|i| unsafe { libc::fcntl(3 + i, libc::F_GETFD) } >= 0)
        .map(|i| {
            // SAFETY: the service manager passed fd 3+i to us (LISTEN_PID is our pid) and it
            // is open (F_GETFD succeeded); nothing else in this process owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i) };
            // SAFETY: setting close-on-exec on an fd we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            (names.get(i as usize).cloned(), fd)
        })
        .collect()
}

/// True if `fd` is a fanotify group.
pub fn is_fanotify(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[fanotify]")
}

use std::path::PathBuf;

/// Errors from the kernel interface.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `fanotify_init` failed.
    #[error("fanotify_init failed: {hint}")]
    Init {
        /// What the operator can do about it.
        hint: String,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// An inode ignore mark could not be placed or the inode marks flushed.
    #[error("cannot {action} exec ignore marks: {source}")]
    Ignore {
        /// Add or flush.
        action: &'static str,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// A mark could not be placed or removed.
    #[error("cannot {action} {kind} mark on {path}: {source}", path = crate::escape::escape_bytes(path.as_os_str().as_encoded_bytes()))]
    Mark {
        /// "add" or "remove".
        action: &'static str,
        /// Filesystem or mount.
        kind: MarkKind,
        /// The marked path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// Reading events from the fanotify group failed.
    #[error("reading fanotify events failed: {0}")]
    Read(#[source] nix::Error),
    /// The kernel speaks a fanotify metadata version this build does not know.
    #[error("fanotify metadata version {found}, expected {expected}")]
    Version {
        /// Version in the event.
        found: u8,
        /// Version compiled in.
        expected: u8,
    },
    /// Writing a permission response failed.
    #[error("answering a permission event failed: {0}")]
    Respond(#[source] nix::Error),
    /// `poll` on the group failed.
    #[error("waiting for fanotify events failed: {0}")]
    Poll(#[source] nix::Error),
    /// `statx` failed.
    #[error("statx failed: {0}")]
    Stat(#[source] nix::Error),
    /// Acting in a container's namespace failed.
    #[error("in the namespaces of pid {pid}: {step} failed")]
    Namespace {
        /// The container process.
        pid: i32,
        /// What failed.
        step: &'static str,
    },
    /// A sysctl the kernel does not have (an older kernel): a missing feature, not a fault.
    #[error("the kernel has no {name} (before {since})")]
    SysctlMissing {
        /// The sysctl.
        name: &'static str,
        /// The first kernel that has it.
        since: &'static str,
    },
}

/// What the engine asks about the task behind an exec event (`/proc` reads), behind a
/// trait so the rules that depend on it are unit-tested without real tasks.
pub trait TaskProbe: Send {
    /// One look at thread `tid`, which raised an exec event for the loader `loader`
    /// (device, inode): did it ask to run another program, or the loader itself?
    fn loader_call(&self, tid: i32, loader: (u64, u64)) -> exec_name::LoaderObservation;
}

/// The real probe: `/proc/<tid>/syscall`, `/proc/<tid>/mem` and the task's root.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcTaskProbe;

impl TaskProbe for ProcTaskProbe {
    fn loader_call(&self, tid: i32, loader: (u64, u64)) -> exec_name::LoaderObservation {
        exec_name::loader_call(tid, loader)
    }
}

/// Checks that `openat2` can be called: every snapshot and in-root open goes through it.
/// A seccomp filter may answer it with ENOSYS (systemd's `RestrictSUIDSGID=` does, as it
/// cannot inspect its flags; so do some container profiles), which would skip every file
/// of every image: the daemon refuses to start instead.
pub fn probe_openat2() -> nix::Result<()> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH);
    openat2(nix::fcntl::AT_FDCWD, "/", how)
        .map(drop)
        .or_else(|e| match e {
            // "/" is not beneath the cwd: the call itself works.
            nix::Error::EXDEV => Ok(()),
            e => Err(e),
        })
}

/// Opens `path` for reading as process `pid` sees it: resolved inside its root
/// (`openat2` with `RESOLVE_IN_ROOT`, so `..` and absolute symlinks cannot leave it).
pub fn open_in_root_of(pid: i32, path: &[u8]) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let root = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    openat2(root.as_fd(), std::ffi::OsStr::from_bytes(rel), how)
}
