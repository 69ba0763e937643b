//! Which file did a task blocked in `execve`/`execveat` ask to execute?
//!
//! During an exec event the task is inside the syscall, so `/proc/<tid>/syscall` shows its
//! number and arguments, and the name it passed can be read from `/proc/<tid>/mem`. When
//! the event's file is a dynamic loader this tells a normal dynamic exec (the name is
//! another program, which the kernel mapped first) from a direct invocation
//! (`ld.so /tmp/payload`: the name is the loader itself), without relying on the order of
//! events or on any cache.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Longest name read from the task's memory.
const MAX_NAME: usize = 4096;
/// Symlinks followed at most (the kernel's limit).
const MAX_LINKS: usize = 40;

/// What the task asked to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecTarget {
    /// A path, relative to the task's cwd (`dirfd: None`), to one of its fds, or absolute.
    Path {
        /// The fd an `execveat` name is relative to.
        dirfd: Option<i32>,
        /// The name.
        name: Vec<u8>,
    },
    /// `execveat(fd, "", AT_EMPTY_PATH)` (also `fexecve`): the file open as `fd`.
    Fd(i32),
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Parses `/proc/<tid>/syscall` text into (number, arguments).
pub fn parse_syscall(text: &str) -> Option<(i64, [u64; 6])> {
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = parse_hex(it.next()?)?;
    }
    Some((nr, args))
}

fn read_name(tid: i32, addr: u64) -> Option<Vec<u8>> {
    let mem = std::fs::File::open(format!("/proc/{tid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    while out.len() < MAX_NAME {
        let at = i64::try_from(addr.checked_add(out.len() as u64)?).ok()?;
        let n = nix::sys::uio::pread(mem.as_fd(), &mut chunk, at).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(nul) = chunk[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
    None
}

/// The target of the exec that thread `tid` is blocked in; `None` if it is not in
/// `execve`/`execveat` (or is gone).
pub fn exec_target(tid: i32) -> Option<ExecTarget> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).ok()?;
    let (nr, args) = parse_syscall(&text)?;
    if nr == libc::SYS_execve {
        return Some(ExecTarget::Path {
            dirfd: None,
            name: read_name(tid, args[0])?,
        });
    }
    if nr == libc::SYS_execveat {
        let dirfd = args[0] as i32;
        let name = read_name(tid, args[1])?;
        let flags = args[4] as i32;
        if name.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            return Some(ExecTarget::Fd(dirfd));
        }
        return Some(ExecTarget::Path {
            dirfd: (dirfd != libc::AT_FDCWD).then_some(dirfd),
            name,
        });
    }
    None
}

fn id(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn open_path(dir: &OwnedFd, name: &[u8], flags: OFlag) -> Option<OwnedFd> {
    openat(
        dir.as_fd(),
        OsStr::from_bytes(name),
        flags | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Resolves `name` the way task `tid` would: absolute names from its root, relative ones
/// from `start`, symlinks followed *inside its root* (a walk through `/proc/<tid>/root`
/// alone would resolve an absolute symlink against the daemon's root instead).
fn resolve_in_root(root: &OwnedFd, start: OwnedFd, name: &[u8]) -> Option<(u64, u64)> {
    let root_id = id(&fstat(root.as_fd()).ok()?);
    let mut todo: VecDeque<Vec<u8>> = name.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
    let mut cur = if name.first() == Some(&b'/') {
        root.try_clone().ok()?
    } else {
        start
    };
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c.is_empty() || c == b"." {
            continue;
        }
        if c == b".." {
            if id(&fstat(cur.as_fd()).ok()?) != root_id {
                cur = open_path(&cur, b"..", OFlag::O_DIRECTORY)?;
            }
            continue;
        }
        let st = fstatat(
            cur.as_fd(),
            OsStr::from_bytes(&c),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = readlinkat(cur.as_fd(), OsStr::from_bytes(&c)).ok()?;
            let target = target.as_bytes();
            if target.first() == Some(&b'/') {
                cur = root.try_clone().ok()?;
            }
            for part in target.split(|b| *b == b'/').rev() {
                todo.push_front(part.to_vec());
            }
            continue;
        }
        cur = open_path(&cur, &c, OFlag::O_NOFOLLOW)?;
    }
    Some(id(&fstat(cur.as_fd()).ok()?))
}

/// `/proc/self/fd/N` and `/proc/thread-self/fd/N` name one of the task's own fds (how
/// glibc's `fexecve` falls back); seen from the daemon, `self` would be the daemon.
fn own_fd(name: &[u8]) -> Option<i32> {
    let rest = name
        .strip_prefix(b"/proc/self/fd/")
        .or_else(|| name.strip_prefix(b"/proc/thread-self/fd/"))?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// How a loader was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderCall {
    /// The task asked to execute another program; the kernel maps the loader for it.
    ForProgram,
    /// The task asked to execute the loader itself (`ld.so /tmp/payload`).
    Direct,
    /// The task is not in an exec, or its exec target cannot be resolved.
    Unknown,
}

/// Tells a normal dynamic exec from a direct invocation of the loader `loader` (the
/// event's file, by device and inode), for thread `tid` blocked in the exec.
pub fn loader_call(tid: i32, loader: (u64, u64)) -> LoaderCall {
    let Some(target) = exec_target(tid) else {
        return LoaderCall::Unknown;
    };
    match exec_target_identity(tid, &target) {
        Some(named) if named == loader => LoaderCall::Direct,
        Some(_) => LoaderCall::ForProgram,
        None => LoaderCall::Unknown,
    }
}

/// The (device, inode) of the file thread `tid` asked to execute.
pub fn exec_target_identity(tid: i32, target: &ExecTarget) -> Option<(u64, u64)> {
    if let ExecTarget::Path { dirfd: None, name } = target {
        if let Some(fd) = own_fd(name) {
            return exec_target_identity(tid, &ExecTarget::Fd(fd));
        }
    }
    let proc_open = |what: &str| -> Option<OwnedFd> {
        nix::fcntl::open(
            format!("/proc/{tid}/{what}").as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
    };
    match target {
        ExecTarget::Fd(fd) => {
            let st = nix::sys::stat::stat(format!("/proc/{tid}/fd/{fd}").as_str()).ok()?;
            Some(id(&st))
        }
        ExecTarget::Path { dirfd, name } => {
            let root = proc_open("root")?;
            let start = match dirfd {
                Some(fd) => proc_open(&format!("fd/{fd}"))?,
                None => proc_open("cwd")?,
            };
            resolve_in_root(&root, start, name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn own_fd_names() {
        assert_eq!(own_fd(b"/proc/self/fd/7"), Some(7));
        assert_eq!(own_fd(b"/proc/thread-self/fd/12"), Some(12));
        assert_eq!(own_fd(b"/proc/1/fd/7"), None);
        assert_eq!(own_fd(b"/proc/self/fd/x"), None);
    }

    #[test]
    fn parses_syscall_lines() {
        let (nr, args) =
            parse_syscall("59 0x55d0 0x7ffd1 0x7ffd2 0x0 0x0 0x0 0x7ffd0 0x7f12\n").unwrap();
        assert_eq!(nr, 59);
        assert_eq!(args[..3], [0x55d0, 0x7ffd1, 0x7ffd2]);
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x1 0x2\n"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_given_root() {
        let base = std::env::temp_dir().join(format!("driftlock-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("lib/x86_64")).unwrap();
        std::fs::create_dir_all(base.join("lib64")).unwrap();
        std::fs::create_dir_all(base.join("tmp")).unwrap();
        std::fs::write(base.join("lib/x86_64/ld.so"), b"loader").unwrap();
        // An absolute symlink: must resolve inside `base`, not the host.
        symlink("/lib/x86_64/ld.so", base.join("lib64/ld.so")).unwrap();
        symlink("../lib64/ld.so", base.join("tmp/rel")).unwrap();
        let open = |p: &std::path::Path| {
            nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
        };
        let want = id(&nix::sys::stat::stat(&base.join("lib/x86_64/ld.so")).unwrap());
        let root = open(&base);
        assert_eq!(
            resolve_in_root(&root, open(&base), b"/lib64/ld.so"),
            Some(want)
        );
        assert_eq!(
            resolve_in_root(&root, open(&base.join("tmp")), b"rel"),
            Some(want)
        );
        assert_eq!(
            resolve_in_root(
                &root,
                open(&base.join("tmp")),
                b"../../../../lib64//./ld.so"
            ),
            Some(want)
        );
        assert_eq!(resolve_in_root(&root, open(&base), b"/missing"), None);
        symlink("loop", base.join("tmp/loop")).unwrap();
        assert_eq!(
            resolve_in_root(&root, open(&base.join("tmp")), b"loop"),
            None
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
