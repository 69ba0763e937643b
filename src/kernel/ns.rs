//! Acting inside a container's namespaces.

use std::ffi::CString;

use super::KernelError;

/// Sets `vm.memfd_noexec` to `value` in the PID namespace of process `pid`.
///
/// The sysctl is per PID namespace and applies to the namespace of the task that writes
/// it. `setns(CLONE_NEWPID)` changes only the namespace of a caller's future children, so
/// a child joins the namespace and forks a grandchild, which lives in it and writes the
/// value. With 2, `memfd_create` refuses executable memfds, so fileless execution
/// (memfd + `fexecve`), which no fanotify mark can see, fails in that container only.
pub fn set_memfd_noexec(pid: i32, value: u8) -> Result<(), KernelError> {
    let fail = |step: &'static str| KernelError::Namespace { pid, step };
    if value > 2 {
        return Err(fail("value must be 0, 1 or 2"));
    }
    let ns_path = CString::new(format!("/proc/{pid}/ns/pid")).map_err(|_| fail("ns path"))?;
    let sysctl = c"/proc/sys/vm/memfd_noexec";
    let payload = [b'0' + value, b'\n'];
    // SAFETY: a valid NUL-terminated path; the fd is closed below on every path.
    let nsfd = unsafe { libc::open(ns_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if nsfd < 0 {
        return Err(fail("open /proc/<pid>/ns/pid (has the process exited?)"));
    }
    // SAFETY: fork in a multi-threaded process. The child and grandchild call only
    // async-signal-safe functions (setns, fork, open, write, waitpid, _exit) on memory
    // prepared before the fork, and never return into Rust code.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: see above; every path ends in _exit.
        unsafe {
            if libc::setns(nsfd, libc::CLONE_NEWPID) != 0 {
                libc::_exit(2);
            }
            let grandchild = libc::fork();
            if grandchild == 0 {
                let fd = libc::open(sysctl.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    libc::_exit(3);
                }
                let n = libc::write(fd, payload.as_ptr().cast(), payload.len());
                libc::_exit(if n == payload.len() as isize { 0 } else { 4 });
            }
            if grandchild < 0 {
                libc::_exit(5);
            }
            let mut status = 0;
            if libc::waitpid(grandchild, &mut status, 0) != grandchild {
                libc::_exit(6);
            }
            libc::_exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                7
            });
        }
    }
    // SAFETY: closing the fd opened above, in the parent.
    unsafe { libc::close(nsfd) };
    if child < 0 {
        return Err(fail("fork"));
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    if waited != child || !libc::WIFEXITED(status) {
        return Err(fail("the helper process did not finish"));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        2 => Err(fail("setns into the PID namespace")),
        3 => Err(fail("open /proc/sys/vm/memfd_noexec (kernel before 6.3?)")),
        4 => Err(fail(
            "write vm.memfd_noexec (a parent namespace may hold a higher value)",
        )),
        _ => Err(fail("fork inside the namespace")),
    }
}
