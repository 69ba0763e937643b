//! Process file descriptors: a container's init process, watched for its exit without a
//! hook process (Linux 5.3+).

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A pidfd of process `pid`: readable once the process has exited. `ENOSYS` on kernels
/// before 5.3; `ESRCH` if no such process.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, nix::Error> {
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new fd or -1 with errno;
    // no pointer is passed.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(nix::Error::last());
    }
    let fd = i32::try_from(raw).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True if this kernel has `pidfd_open` (this process's own pidfd opens).
pub fn pidfd_supported() -> bool {
    pidfd_open(std::process::id() as i32).is_ok()
}

/// Waits up to `timeout` for a change in some mount tables (`/proc/<pid>/mountinfo`,
/// `POLLPRI`) or the exit of some processes (their pidfds turn readable). Returns the
/// indices of the tables that changed and of the processes that exited; an interrupted
/// or failed wait returns none.
pub fn wait_for_mounts_or_exits(
    tables: &[&std::fs::File],
    pidfds: &[&OwnedFd],
    timeout: Duration,
) -> (Vec<usize>, Vec<usize>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    if tables.is_empty() && pidfds.is_empty() {
        std::thread::sleep(timeout);
        return (Vec::new(), Vec::new());
    }
    let mut fds: Vec<PollFd<'_>> = tables
        .iter()
        .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLPRI))
        .chain(
            pidfds
                .iter()
                .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
        )
        .collect();
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
        return (Vec::new(), Vec::new());
    }
    let fired = |p: &PollFd<'_>, flags: PollFlags| p.revents().is_some_and(|r| r.intersects(flags));
    let changed = fds[..tables.len()]
        .iter()
        .enumerate()
        .filter(|(_, p)| fired(p, PollFlags::POLLPRI | PollFlags::POLLERR))
        .map(|(i, _)| i)
        .collect();
    let exited = fds[tables.len()..]
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            fired(
                p,
                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
            )
        })
        .map(|(i, _)| i)
        .collect();
    (changed, exited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        if !pidfd_supported() {
            eprintln!("skipping: no pidfd_open on this kernel");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        let wait = |t| wait_for_mounts_or_exits(&[], &[&fd], t).1;
        assert!(wait(Duration::from_millis(10)).is_empty());
        assert_eq!(wait(Duration::from_secs(5)), vec![0]);
        child.wait().unwrap();
        assert_eq!(pidfd_open(-5).unwrap_err(), nix::Error::EINVAL);
    }
}
