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
    let helper = MemfdHelper {
        nsfd,
        sysctl: sysctl.as_ptr(),
        payload,
    };
    // The child shares the daemon's memory (CLONE_VM, the daemon's thread suspended until
    // it exits: CLONE_VFORK), so the daemon's page tables are not copied for it; the
    // grandchild, which must live in the container's PID namespace, cannot share it (the
    // kernel refuses CLONE_VM across PID namespaces) and is a plain fork of its own.
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack grows down from its end, 16-byte aligned, inside `stack`, which
    // outlives the child (CLONE_VFORK returns only once the child has exited); `helper`
    // also outlives it. The child runs `memfd_helper_child`, which makes raw system calls
    // only (no allocation, no lock, no unwinding) on memory prepared here.
    let child = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            memfd_helper_child,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&helper as *const MemfdHelper).cast_mut().cast(),
        )
    };
    drop(stack);
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
        3 => Err(KernelError::SysctlMissing {
            name: "vm.memfd_noexec",
            since: "6.3",
        }),
        4 => Err(fail(
            "write vm.memfd_noexec (a parent namespace may hold a higher value)",
        )),
        _ => Err(fail("fork inside the namespace")),
    }
}

/// What the memfd helper's child needs, prepared before it starts.
struct MemfdHelper {
    nsfd: libc::c_int,
    sysctl: *const libc::c_char,
    payload: [u8; 2],
}

/// The memfd helper's child: joins the PID namespace for its children, forks a grandchild
/// there (a raw `clone`, without glibc's fork handlers, which must not run on the memory the
/// child shares with the daemon) that writes the sysctl, and returns the grandchild's
/// status as its own exit status.
extern "C" fn memfd_helper_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the MemfdHelper that set_memfd_noexec keeps alive until this
    // child has exited; only raw system calls follow, on that memory and the stack.
    unsafe {
        let h = &*(arg as *const MemfdHelper);
        if libc::setns(h.nsfd, libc::CLONE_NEWPID) != 0 {
            return 2;
        }
        let grandchild = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
        if grandchild == 0 {
            let fd = libc::open(h.sysctl, libc::O_WRONLY | libc::O_CLOEXEC);
            let code = if fd < 0 {
                3
            } else if libc::write(fd, h.payload.as_ptr().cast(), h.payload.len())
                == h.payload.len() as isize
            {
                0
            } else {
                4
            };
            libc::syscall(libc::SYS_exit_group, code as libc::c_long);
            return code;
        }
        if grandchild < 0 {
            return 5;
        }
        let mut status = 0;
        if libc::waitpid(grandchild as libc::pid_t, &mut status, 0) != grandchild as libc::pid_t {
            return 6;
        }
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            7
        }
    }
}
