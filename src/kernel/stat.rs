//! `statx(2)` on an event's fd (identity and fingerprint in one call) or on a path.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use super::KernelError;

/// A file timestamp as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

impl Timestamp {
    /// Nanoseconds since the epoch (saturating).
    pub fn as_nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// Identity and content fingerprint of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStat {
    /// Device of the filesystem (makedev(major, minor)).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Mount id of the mount the file was opened through: the 64-bit unique id where the
    /// kernel has it (6.8+), else the reusable legacy id.
    pub mnt_id: u64,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode`.
    pub mode: u32,
    /// Last content modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
}

impl FileStat {
    /// True for a regular file.
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// What the mark planner needs to know about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStat {
    /// Device of the filesystem.
    pub dev: u64,
    /// Legacy mount id, as `/proc/self/mountinfo` shows it.
    pub mnt_id_legacy: u64,
    /// The id [`stat_fd`] reports for files opened through this mount.
    pub mnt_id: u64,
    /// Inode number (with `dev`, tells a directory from another made at the same path).
    pub ino: u64,
}

fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

fn ts(t: libc::statx_timestamp) -> Timestamp {
    Timestamp {
        sec: t.tv_sec,
        nsec: t.tv_nsec,
    }
}

fn statx_raw(
    dirfd: i32,
    path: &std::ffi::CStr,
    flags: i32,
    mask: u32,
) -> Result<libc::statx, KernelError> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string, `buf` points to writable memory of
    // the size statx(2) fills; the kernel writes at most that struct.
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, buf.as_mut_ptr()) };
    Errno::result(rc).map_err(KernelError::Stat)?;
    // SAFETY: statx returned success, so it initialized the struct (it was zeroed anyway).
    Ok(unsafe { buf.assume_init() })
}

const WANTED: u32 = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE;

/// `statx` of an open fd (`AT_EMPTY_PATH`): identity, mount and fingerprint in one call.
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<FileStat, KernelError> {
    let st = statx_raw(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
        WANTED,
    )?;
    Ok(FileStat {
        dev: makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mnt_id: st.stx_mnt_id,
        size: st.stx_size,
        mode: u32::from(st.stx_mode),
        mtime: ts(st.stx_mtime),
        ctime: ts(st.stx_ctime),
    })
}

/// The legacy mount id (the one `mountinfo` shows) of the mount an open fd was opened
/// through.
pub fn legacy_mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    statx_raw(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_MNT_ID)
        .ok()
        .map(|st| st.stx_mnt_id)
}

/// The mount id (unique where the kernel has it) of `name` in directory `dir`, not
/// following a final symlink: tells a file of the directory's own mount from a file bind
/// mounted over it, where device numbers cannot (overlay gives each layer's files a device
/// number of its own when the layers are on different filesystems).
pub fn mount_id_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<u64> {
    let c = CString::new(name.as_bytes()).ok()?;
    statx_raw(
        dir.as_raw_fd(),
        &c,
        libc::AT_SYMLINK_NOFOLLOW,
        libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE,
    )
    .ok()
    .map(|st| st.stx_mnt_id)
}

/// True if the open fd is a file of an overlay filesystem (`OVERLAYFS_SUPER_MAGIC`).
pub fn is_overlay(fd: BorrowedFd<'_>) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// `statx` of a path (following symlinks), for planning marks.
pub fn stat_path(path: &Path) -> Result<PathStat, KernelError> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| KernelError::Stat(Errno::EINVAL))?;
    let unique = statx_raw(libc::AT_FDCWD, &c, 0, WANTED)?;
    let legacy = statx_raw(libc::AT_FDCWD, &c, 0, libc::STATX_MNT_ID)?;
    Ok(PathStat {
        dev: makedev(unique.stx_dev_major, unique.stx_dev_minor),
        mnt_id_legacy: legacy.stx_mnt_id,
        mnt_id: unique.stx_mnt_id,
        ino: unique.stx_ino,
    })
}
