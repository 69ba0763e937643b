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

/// What one read of `/proc/<tid>/syscall` showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyscallRead {
    /// Blocked in `execve`/`execveat` with this target.
    Exec(ExecTarget),
    /// Blocked in `execve`/`execveat`, but the name could not be read from its memory.
    ExecNameUnreadable,
    /// On a CPU or runnable: the kernel reports `running`. A thread that has just queued a
    /// permission event is still running until it goes to sleep, and every answer to any
    /// event of the group wakes every waiting thread for a moment (one wait queue), so this
    /// is transient: read again.
    Running,
    /// Blocked in another system call (number).
    OtherSyscall(i64),
    /// The thread is gone.
    Gone,
    /// `/proc/<tid>/syscall` exists but cannot be read (for example without
    /// `CAP_SYS_PTRACE`): nothing can be said.
    Unreadable(String),
}

/// One read of what thread `tid` is executing.
pub fn read_exec(tid: i32) -> SyscallRead {
    // fanotify reports 0 for a task outside the listener's pid namespace: nothing can be
    // read, and "gone" (allowed) would let every loader exec through unchecked.
    if tid <= 0 {
        return SyscallRead::Unreadable(format!(
            "no thread id ({tid}): the task is outside the daemon's pid namespace (run the daemon in the host's)"
        ));
    }
    let text = match std::fs::read_to_string(format!("/proc/{tid}/syscall")) {
        Ok(text) => text,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return SyscallRead::Gone;
        }
        Err(e) => return SyscallRead::Unreadable(e.to_string()),
    };
    if text.trim() == "running" {
        return SyscallRead::Running;
    }
    let Some((nr, args)) = parse_syscall(&text) else {
        return SyscallRead::Gone;
    };
    if nr == libc::SYS_execve {
        return match read_name(tid, args[0]) {
            Some(name) => SyscallRead::Exec(ExecTarget::Path { dirfd: None, name }),
            None => SyscallRead::ExecNameUnreadable,
        };
    }
    if nr == libc::SYS_execveat {
        let dirfd = args[0] as i32;
        let Some(name) = read_name(tid, args[1]) else {
            return SyscallRead::ExecNameUnreadable;
        };
        let flags = args[4] as i32;
        if name.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            return SyscallRead::Exec(ExecTarget::Fd(dirfd));
        }
        return SyscallRead::Exec(ExecTarget::Path {
            dirfd: (dirfd != libc::AT_FDCWD).then_some(dirfd),
            name,
        });
    }
    SyscallRead::OtherSyscall(nr)
}

/// The target of the exec that thread `tid` is blocked in; `None` if it is not in
/// `execve`/`execveat` right now (running, in another call, or gone).
pub fn exec_target(tid: i32) -> Option<ExecTarget> {
    match read_exec(tid) {
        SyscallRead::Exec(t) => Some(t),
        _ => None,
    }
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
///
/// On a procfs (the container's `/proc`, or `/dev/fd` which links there) two things differ:
/// `self` and `thread-self` mean the *task*, in that procfs's pid namespace, not the
/// daemon; and the per-process links (`exe`, `fd/N`, `cwd`, `root`) are magic links whose
/// text is not a path inside the task's root, so the kernel follows them for us.
fn resolve_in_root(
    root: &OwnedFd,
    start: OwnedFd,
    name: &[u8],
    task: Option<TaskIds>,
) -> Option<(u64, u64)> {
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
        let on_proc = is_procfs(&cur);
        if on_proc && (c == b"self" || c == b"thread-self") {
            let ids = task?;
            let own = if c == b"self" {
                format!("{}", ids.tgid)
            } else {
                format!("{}/task/{}", ids.tgid, ids.tid)
            };
            for part in own.as_bytes().split(|b| *b == b'/').rev() {
                todo.push_front(part.to_vec());
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
            if on_proc {
                cur = open_path(&cur, &c, OFlag::empty())?;
                continue;
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

fn is_procfs(fd: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// A task's ids in its innermost pid namespace (what its own `/proc` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskIds {
    tgid: i64,
    tid: i64,
}

fn task_ids(tid: i32) -> Option<TaskIds> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let last = |key: &str| -> Option<i64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    Some(TaskIds {
        tgid: last("NStgid:")?,
        tid: last("NSpid:")?,
    })
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
    /// The task has not gone to sleep yet (or was woken for a moment): its state cannot be
    /// read now. Transient: ask again.
    NotBlocked,
    /// The task is blocked in an exec, but what it names could not be read or resolved.
    Unresolved,
    /// The task is blocked in another system call: this is not its exec.
    NotInExec,
    /// The task is gone: its exec cannot go on, whatever the answer.
    Gone,
}

impl LoaderCall {
    /// A short name for records and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            LoaderCall::ForProgram => "for-program",
            LoaderCall::Direct => "direct",
            LoaderCall::NotBlocked => "not-blocked",
            LoaderCall::Unresolved => "unresolved",
            LoaderCall::NotInExec => "not-in-exec",
            LoaderCall::Gone => "gone",
        }
    }
}

/// What one look at a task in a loader exec showed, and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderObservation {
    /// The conclusion.
    pub call: LoaderCall,
    /// What was read (the exec name, escaped, and what it resolved to), for records.
    pub evidence: String,
}

fn syscall_name(target: &ExecTarget) -> String {
    match target {
        ExecTarget::Fd(fd) => format!("execveat(fd {fd}, \"\", AT_EMPTY_PATH)"),
        ExecTarget::Path { dirfd: None, name } => {
            format!("execve(\"{}\")", crate::escape::escape_bytes(name))
        }
        ExecTarget::Path {
            dirfd: Some(fd),
            name,
        } => format!(
            "execveat(fd {fd}, \"{}\")",
            crate::escape::escape_bytes(name)
        ),
    }
}

/// Tells a normal dynamic exec from a direct invocation of the loader `loader` (the
/// event's file, by device and inode), for thread `tid` blocked in the exec. One look:
/// [`LoaderCall::NotBlocked`] asks the caller to look again.
pub fn loader_call(tid: i32, loader: (u64, u64)) -> LoaderObservation {
    let seen = |call, evidence: String| LoaderObservation { call, evidence };
    // Every legitimate dynamic exec on a marked filesystem comes here: the kernel stack
    // alone settles it (held in the exec event under load_elf_binary), one read instead of
    // the syscall, the exec name in the task's memory and then the stack. Anything else
    // (a direct exec, another format's interpreter, a transient state) takes the full look.
    if tid > 0 && exec_stack(tid) == ExecStack::Interpreter {
        return seen(
            LoaderCall::ForProgram,
            "kernel stack: opened by load_elf_binary as the interpreter of the program being executed"
                .into(),
        );
    }
    match read_exec(tid) {
        SyscallRead::Running => seen(LoaderCall::NotBlocked, "thread not blocked yet".into()),
        SyscallRead::Gone => seen(LoaderCall::Gone, "thread gone".into()),
        SyscallRead::Unreadable(e) => seen(
            LoaderCall::Unresolved,
            format!("cannot read /proc/{tid}/syscall: {e}"),
        ),
        SyscallRead::OtherSyscall(nr) => seen(
            LoaderCall::NotInExec,
            format!("thread blocked in syscall {nr}, not an exec"),
        ),
        SyscallRead::ExecNameUnreadable => seen(
            LoaderCall::Unresolved,
            "blocked in an exec whose name could not be read from the task's memory".into(),
        ),
        SyscallRead::Exec(target) => {
            let what = syscall_name(&target);
            // The kernel's own call chain says who opens the loader, and no thread of the
            // task can rewrite it (the exec name in the task's memory can be, while we
            // read it): prefer it, and fall back to the name where it cannot be read.
            match exec_stack(tid) {
                ExecStack::Interpreter => {
                    return seen(
                        LoaderCall::ForProgram,
                        format!(
                            "kernel stack: opened by load_elf_binary as the interpreter of the program being executed ({what})"
                        ),
                    );
                }
                ExecStack::Direct => {
                    return seen(
                        LoaderCall::Direct,
                        format!("kernel stack: the loader is the file being executed ({what})"),
                    );
                }
                ExecStack::OtherInterpreter(by) => {
                    return seen(
                        LoaderCall::Direct,
                        format!(
                            "kernel stack: opened by {by} (the loader as the interpreter of a script or a registered format would load a file the gate never sees) ({what})"
                        ),
                    );
                }
                ExecStack::NotHeld => {
                    return seen(
                        LoaderCall::NotBlocked,
                        "kernel stack: not held in the exec event yet".into(),
                    );
                }
                ExecStack::Unavailable => {}
            }
            match exec_target_identity(tid, &target) {
                Some(named) if named == loader => seen(
                    LoaderCall::Direct,
                    format!("{what} names the loader itself"),
                ),
                Some(named) => seen(
                    LoaderCall::ForProgram,
                    format!("{what} names {}:{}, not the loader", named.0, named.1),
                ),
                None => seen(
                    LoaderCall::Unresolved,
                    format!("{what} could not be resolved in the task's root"),
                ),
            }
        }
    }
}

/// Who opens the file of an exec permission event, as the kernel's stack of the blocked
/// thread shows it (`/proc/<tid>/stack`, which needs CAP_SYS_ADMIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStack {
    /// `open_exec` from `load_elf_binary`: the interpreter of an ELF program being executed.
    Interpreter,
    /// `open_exec` from another binary format (`load_script`, `load_misc_binary`).
    OtherInterpreter(String),
    /// The file named by the exec system call itself (`alloc_bprm`).
    Direct,
    /// The thread is not (or no longer) blocked in a fanotify permission event.
    NotHeld,
    /// The stack cannot be read here (no permission, or a kernel without it).
    Unavailable,
}

/// Reads and classifies the kernel stack of thread `tid`.
pub fn exec_stack(tid: i32) -> ExecStack {
    if tid <= 0 {
        return ExecStack::Unavailable;
    }
    // One open and reads into a buffer on the stack (no size probe, no allocation for the
    // text): this is read on every loader exec.
    let Ok(fd) = nix::fcntl::open(
        format!("/proc/{tid}/stack").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return ExecStack::Unavailable;
    };
    let mut buf = [0u8; 16 * 1024];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExecStack::Unavailable,
        }
    }
    classify_exec_stack(&buf[..len])
}

/// Classifies a `/proc/<tid>/stack` text (innermost frame first).
pub fn classify_exec_stack(text: &[u8]) -> ExecStack {
    let frames: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let start = line.iter().position(|b| *b == b']')? + 1;
            let rest = line.get(start..)?.trim_ascii_start();
            let end = rest.iter().position(|b| *b == b'+').unwrap_or(rest.len());
            Some(&rest[..end])
        })
        .collect();
    if !frames.iter().any(|f| f.starts_with(b"fanotify_")) {
        return ExecStack::NotHeld;
    }
    for f in &frames {
        if f.ends_with(b"load_elf_binary") {
            return ExecStack::Interpreter;
        }
        if f.starts_with(b"load_") && f.ends_with(b"_binary") || *f == b"load_script" {
            return ExecStack::OtherInterpreter(String::from_utf8_lossy(f).into_owned());
        }
        if *f == b"alloc_bprm" || f.starts_with(b"do_execveat_common") {
            return ExecStack::Direct;
        }
    }
    ExecStack::Unavailable
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
            resolve_in_root(&root, start, name, task_ids(tid))
        }
    }
}

#[cfg(test)]
mod tests {

    /// Issue 14 (6): stacks as Linux 6.18 shows them for a loader opened by the kernel for
    /// a program, directly, and as a script's interpreter.
    #[test]
    fn the_kernel_stack_tells_who_opens_the_loader() {
        let head = "[<0>] fanotify_handle_event+0xb93/0x1b70\n[<0>] fsnotify+0x392/0xfb0\n\
                    [<0>] fsnotify_open_perm_and_set_mode+0x13a/0x2c0\n[<0>] do_dentry_open+0x144/0x430\n\
                    [<0>] do_filp_open+0xc3/0x180\n[<0>] do_open_execat+0x5d/0x120\n";
        let tail = "[<0>] __x64_sys_execve+0x34/0x50\n[<0>] do_syscall_64+0x71/0x280\n";
        let interp = format!(
            "{head}[<0>] open_exec+0x26/0x60\n[<0>] load_elf_binary+0x1b1/0x18a0\n\
             [<0>] bprm_execve+0x2bf/0x510\n[<0>] do_execveat_common.isra.0+0x1a6/0x1b0\n{tail}"
        );
        let direct = format!(
            "{head}[<0>] alloc_bprm+0x20/0x220\n[<0>] do_execveat_common.isra.0+0x8d/0x1b0\n{tail}"
        );
        let script = format!(
            "{head}[<0>] open_exec+0x26/0x60\n[<0>] load_script+0x1ed/0x310\n\
             [<0>] bprm_execve+0x2bf/0x510\n[<0>] do_execveat_common.isra.0+0x1a6/0x1b0\n{tail}"
        );
        assert_eq!(
            classify_exec_stack(interp.as_bytes()),
            ExecStack::Interpreter
        );
        assert_eq!(classify_exec_stack(direct.as_bytes()), ExecStack::Direct);
        assert_eq!(
            classify_exec_stack(script.as_bytes()),
            ExecStack::OtherInterpreter("load_script".into())
        );
        assert_eq!(
            classify_exec_stack(
                b"[<0>] hrtimer_nanosleep+0x74/0xf0\n[<0>] do_syscall_64+0x71/0x280\n"
            ),
            ExecStack::NotHeld
        );
        assert_eq!(classify_exec_stack(b""), ExecStack::NotHeld);
    }

    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn own_fd_names() {
        assert_eq!(own_fd(b"/proc/self/fd/7"), Some(7));
        assert_eq!(own_fd(b"/proc/thread-self/fd/12"), Some(12));
        assert_eq!(own_fd(b"/proc/1/fd/7"), None);
        assert_eq!(own_fd(b"/proc/self/fd/x"), None);
    }

    /// A task the daemon cannot see (thread id 0 from fanotify) is never taken for one
    /// that is gone: that would allow its loader exec unchecked.
    #[test]
    fn an_invisible_task_is_unreadable_not_gone() {
        for tid in [0, -1] {
            assert!(matches!(read_exec(tid), SyscallRead::Unreadable(_)));
            assert_eq!(loader_call(tid, (1, 1)).call, LoaderCall::Unresolved);
        }
        assert_eq!(read_exec(i32::MAX), SyscallRead::Gone);
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
            resolve_in_root(&root, open(&base), b"/lib64/ld.so", None),
            Some(want)
        );
        assert_eq!(
            resolve_in_root(&root, open(&base.join("tmp")), b"rel", None),
            Some(want)
        );
        assert_eq!(
            resolve_in_root(
                &root,
                open(&base.join("tmp")),
                b"../../../../lib64//./ld.so",
                None
            ),
            Some(want)
        );
        assert_eq!(resolve_in_root(&root, open(&base), b"/missing", None), None);
        symlink("loop", base.join("tmp/loop")).unwrap();
        assert_eq!(
            resolve_in_root(&root, open(&base.join("tmp")), b"loop", None),
            None
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
