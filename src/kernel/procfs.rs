//! `/proc` readers for audit context. Never on the allow hot path: only for denied,
//! would-deny and (at debug level) missed execs. Every read tolerates the process having
//! gone away; the record then says what is known.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What `/proc` tells about one thread's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread group id (the process id).
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Real user id.
    pub uid: u32,
    /// `comm` (raw bytes, at most 15).
    pub comm: Vec<u8>,
    /// Command line, arguments separated by NUL.
    pub cmdline: Vec<u8>,
    /// Target of `/proc/<pid>/exe`.
    pub exe: Option<Vec<u8>>,
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

fn trim_newline(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

/// Bytes read from one `/proc` file for a record: a process may carry megabytes of
/// arguments, and nesting such processes must not make each record a memory and time
/// bomb on the event path. One more byte than records keep, so they can say "truncated".
pub const MAX_PROC_READ: u64 = MAX_CMDLINE as u64 + 1;

/// Bytes of a command line a record keeps (some programs carry huge argument lists).
pub const MAX_CMDLINE: usize = 4096;

fn read_capped(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PROC_READ)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Reads the process context of thread `tid`; `None` if it has exited.
pub fn read_process(tid: i32) -> Option<ProcessInfo> {
    if tid <= 0 {
        return None;
    }
    let base = format!("/proc/{tid}");
    let status = read_capped(&format!("{base}/status")).ok()?;
    let status = String::from_utf8_lossy(&status);
    let num = |k| status_field(&status, k).and_then(|v| v.parse::<i32>().ok());
    let uid = status_field(&status, "Uid")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    // A process reaped between the two reads is gone: no half-read entry with an empty name.
    let comm = std::fs::read(format!("{base}/comm"))
        .ok()
        .map(trim_newline)?;
    Some(ProcessInfo {
        pid: num("Tgid").unwrap_or(tid),
        ppid: num("PPid").unwrap_or(0),
        uid,
        comm,
        cmdline: read_capped(&format!("{base}/cmdline"))
            .map(|mut v| {
                while v.last() == Some(&0) {
                    v.pop();
                }
                v
            })
            .unwrap_or_default(),
        exe: std::fs::read_link(format!("{base}/exe"))
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec()),
    })
}

/// The start time of a process (clock ticks since boot, field 22 of `/proc/<pid>/stat`):
/// with the pid, it identifies a process across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) is in parentheses and may itself contain ") ": split at the last one.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// The `comm` of thread `tid` (what an interpreter is called, e.g. `sh`, `python3`).
pub fn comm(tid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{tid}/comm"))
        .ok()
        .map(trim_newline)
}

/// Walks parents from `pid` upwards, at most `max` steps, stopping at pid 1 or at `stop`.
pub fn parent_chain(mut pid: i32, max: usize, stop: Option<i32>) -> Vec<ProcessInfo> {
    let mut chain = Vec::new();
    while pid > 1 && chain.len() < max {
        let Some(info) = read_process(pid) else { break };
        let next = info.ppid;
        chain.push(info);
        if Some(pid) == stop {
            break;
        }
        pid = next;
    }
    chain
}

/// The path the kernel reports for one of our fds (`/proc/self/fd/N`), as bytes. A file
/// that was unlinked carries the kernel's " (deleted)" suffix.
pub fn fd_path(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec())
}

/// True if `tid` is a thread of this process (its own open of a marked file).
pub fn is_own_thread(tid: i32) -> bool {
    tid > 0 && std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// The inode number of process `pid`'s PID namespace.
pub fn pid_namespace(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// True if process `pid` is the init (pid 1) of its own PID namespace: when it exits, the
/// kernel kills every other process of that namespace. `None` if its status is unreadable
/// (gone, or a kernel before 4.1 without `NSpid`).
pub fn is_pid_namespace_init(pid: i32) -> Option<bool> {
    let status = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    nspid_is_init(&status)
}

fn nspid_is_init(status: &[u8]) -> Option<bool> {
    let line = status
        .split(|b| *b == b'\n')
        .find_map(|l| l.strip_prefix(b"NSpid:"))?;
    let last = line
        .split(|b| *b == b' ' || *b == b'\t')
        .rfind(|f| !f.is_empty())?;
    Some(last == b"1")
}

/// The `cgroup.procs` files of the cgroups process `pid` is in, other than a hierarchy's
/// root, as this process sees them under `/sys/fs/cgroup` (cgroup v2, or v1's
/// controllers): a container's processes live in cgroups of their own, which empty when the
/// last of them exits. Each is checked to list `pid`, so a path from another cgroup
/// namespace (not visible here) is left out. Empty if none is found.
pub fn cgroup_procs_files(pid: i32) -> Vec<std::path::PathBuf> {
    let Ok(table) = std::fs::read(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let me = pid.to_string();
    let lists_pid = |procs: &std::path::Path| {
        std::fs::read(procs)
            .is_ok_and(|text| text.split(|b| *b == b'\n').any(|l| l == me.as_bytes()))
    };
    let mut out = Vec::new();
    for (controllers, path) in table.split(|b| *b == b'\n').filter_map(parse_cgroup_line) {
        if path == b"/" || !path.starts_with(b"/") || path.windows(3).any(|w| w == b"/..") {
            continue;
        }
        let roots: Vec<Vec<u8>> = if controllers.is_empty() {
            vec![
                b"/sys/fs/cgroup".to_vec(),
                b"/sys/fs/cgroup/unified".to_vec(),
            ]
        } else {
            let name = controllers.strip_prefix(b"name=").unwrap_or(controllers);
            vec![[b"/sys/fs/cgroup/".as_slice(), name].concat()]
        };
        for root in roots {
            let procs = std::path::PathBuf::from(std::ffi::OsString::from_vec(
                [root.as_slice(), path, b"/cgroup.procs"].concat(),
            ));
            if !out.contains(&procs) && lists_pid(&procs) {
                out.push(procs);
                break;
            }
        }
    }
    out
}

/// `hierarchy-id:controllers:path` of `/proc/<pid>/cgroup`: the controllers and the path.
fn parse_cgroup_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut fields = line.splitn(3, |b| *b == b':');
    let _id = fields.next()?;
    Some((fields.next()?, fields.next()?))
}

/// True if a cgroup listed by [`cgroup_procs_files`] holds no process any more, in itself or
/// in any cgroup below it (a container may make cgroups of its own), or is gone. cgroup v2
/// says so in `cgroup.events` (`populated`); v1 is walked (at most 4,096 cgroups; past that
/// it counts as not empty). An unreadable cgroup counts as not empty.
pub fn cgroup_is_empty(procs: &std::path::Path) -> bool {
    let Some(dir) = procs.parent() else {
        return false;
    };
    match std::fs::read(dir.join("cgroup.events")) {
        Ok(events) => {
            return events.split(|b| *b == b'\n').any(|l| l == b"populated 0");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => return true,
        Err(_) => {}
    }
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = pending.pop() {
        seen += 1;
        if seen > 4096 {
            return false;
        }
        match std::fs::read(d.join("cgroup.procs")) {
            Ok(text) if !text.iter().all(u8::is_ascii_whitespace) => return false,
            Ok(_) => {}
            // Removed while walked: nothing of it can run.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return false,
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
    }
    true
}

/// Finds the file `(dev, ino)` (kernel device encoding) among the open fds of process
/// `pid` (the first 1,024): its path as the process sees it, and its `/proc/<pid>/fd/N`.
/// Opens nothing (an open of a marked file may raise an event).
pub fn find_open_file(pid: i32, dev: u64, ino: u64) -> Option<(Vec<u8>, std::path::PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for entry in dir.flatten().take(1024) {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let kdev = ((libc::major(meta.dev()) as u64) << 20) | libc::minor(meta.dev()) as u64;
        if kdev == dev && meta.ino() == ino && meta.is_file() {
            let target = std::fs::read_link(&path).ok()?;
            return Some((target.as_os_str().as_bytes().to_vec(), path));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_give_controllers_and_path() {
        assert_eq!(
            parse_cgroup_line(b"0::/kubepods/pod1/abc"),
            Some((b"".as_slice(), b"/kubepods/pod1/abc".as_slice()))
        );
        assert_eq!(
            parse_cgroup_line(b"4:cpu,cpuacct:/docker/a:b"),
            Some((b"cpu,cpuacct".as_slice(), b"/docker/a:b".as_slice()))
        );
        assert_eq!(parse_cgroup_line(b""), None);
        // Whatever this process's cgroups, each file found lists it and is not yet empty.
        for procs in cgroup_procs_files(std::process::id() as i32) {
            assert!(!cgroup_is_empty(&procs), "{}", procs.display());
        }
        assert!(cgroup_is_empty(std::path::Path::new(
            "/sys/fs/cgroup/driftlock-no-such-cgroup/cgroup.procs"
        )));
    }

    #[test]
    fn a_pid_namespace_init_is_told_from_its_nspid() {
        assert_eq!(nspid_is_init(b"Name:\tsh\nNSpid:\t4242\t1\n"), Some(true));
        assert_eq!(nspid_is_init(b"NSpid:\t4242\t17\n"), Some(false));
        assert_eq!(nspid_is_init(b"NSpid:\t1\n"), Some(true));
        assert_eq!(nspid_is_init(b"Name:\tsh\n"), None);
        // This test runs in no PID namespace of its own.
        assert_eq!(
            is_pid_namespace_init(std::process::id() as i32),
            Some(false)
        );
    }

    #[test]
    fn reads_own_process() {
        let me = read_process(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(!me.comm.is_empty());
        assert!(me.exe.is_some());
        let chain = parent_chain(me.pid, 4, None);
        assert_eq!(chain.first().map(|p| p.pid), Some(me.pid));
    }

    #[test]
    fn start_time_is_stable_and_distinguishes_processes() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert!(start_time(1).unwrap() <= t);
        assert_eq!(start_time(i32::MAX), None);
    }

    /// Issue 14 (5): a multi-megabyte argument list is read only as far as records keep.
    #[test]
    fn huge_command_lines_are_read_capped() {
        // 15 arguments of 100 KB (one argument may not exceed 128 KiB, all of them 2 MiB).
        let long = "x".repeat(100_000);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .args(std::iter::repeat_n(&long, 15))
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is its parent's (or empty).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut info = read_process(child.id() as i32).unwrap();
        while !info.cmdline.starts_with(b"sleep") && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
            info = read_process(child.id() as i32).unwrap();
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(info.cmdline.len() as u64, MAX_PROC_READ);
        assert!(info.cmdline.starts_with(b"sleep\x005\x00xxx"));
    }

    #[test]
    fn missing_process_is_none() {
        assert!(read_process(-1).is_none());
        assert!(read_process(i32::MAX).is_none());
    }
}
