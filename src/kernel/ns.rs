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
    memfd_status(pid, libc::WEXITSTATUS(status))
}

/// What a memfd helper's status code means.
fn memfd_status(pid: i32, code: libc::c_int) -> Result<(), KernelError> {
    let fail = |step: &'static str| KernelError::Namespace { pid, step };
    match code {
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

/// A small process of the daemon's, forked once while the daemon is small, that sets
/// `vm.memfd_noexec` in a PID namespace on request. Setting it needs a process inside the
/// namespace, forked by one that joined it; forked from a grown daemon that fork copies the
/// daemon's page tables (1.4 ms per arm measured on a daemon of 60 MB), forked from this
/// helper it copies the helper's few. Requests go over a `SOCK_SEQPACKET` pair: the
/// namespace's fd (`SCM_RIGHTS`) and the value; the answer is the status byte of
/// [`set_memfd_noexec`]'s helper. The helper exits when the daemon's end closes (the daemon
/// exiting closes it too) and keeps no other fd of the daemon's.
pub struct MemfdSetter {
    sock: std::os::fd::OwnedFd,
    pid: libc::pid_t,
    lock: std::sync::Mutex<()>,
}

impl MemfdSetter {
    /// Forks the helper.
    pub fn start() -> Result<Self, KernelError> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let fail = |step: &'static str| KernelError::Namespace { pid: 0, step };
        let mut pair = [0 as libc::c_int; 2];
        // SAFETY: `pair` is a valid out array of two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(fail("socketpair for the memfd helper"));
        }
        // SAFETY: both fds were just made by socketpair and are owned here alone.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let theirs_raw = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        // A raw clone (no fork handlers): the child makes raw system calls only (no
        // allocation, no lock), so the daemon's other threads do not matter.
        // SAFETY: plain fork semantics; the child never returns into Rust code (it ends in
        // exit_group inside memfd_setter_loop).
        let child =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
        if child == 0 {
            // SAFETY: in the child; raw system calls on its own copy of the fd table.
            unsafe { memfd_setter_loop(theirs_raw) };
        }
        drop(theirs);
        if child < 0 {
            return Err(fail("fork of the memfd helper"));
        }
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setting a receive timeout on our socket; `timeout` is a valid timeval.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&ours),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Self {
            sock: ours,
            pid: child as libc::pid_t,
            lock: std::sync::Mutex::new(()),
        })
    }

    /// Sets `vm.memfd_noexec` to `value` in the PID namespace of process `pid` (as
    /// [`set_memfd_noexec`] does, through the helper). `Err(None)`: the helper is gone or
    /// did not answer, and the caller should do it itself.
    pub fn set(&self, pid: i32, value: u8) -> Result<(), Option<KernelError>> {
        use std::os::fd::AsRawFd;
        let fail = |step: &'static str| Some(KernelError::Namespace { pid, step });
        if value > 2 {
            return Err(fail("value must be 0, 1 or 2"));
        }
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/pid"))
            .map_err(|_| fail("open /proc/<pid>/ns/pid (has the process exited?)"))?;
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut byte = [value];
        let mut cmsg = [0u64; 4];
        // SAFETY: the msghdr points to `byte` and `cmsg`, which outlive the call; CMSG_*
        // compute offsets inside `cmsg`, which is large enough for one fd.
        let sent = unsafe {
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), ns.as_raw_fd());
            libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if sent != 1 {
            return Err(None);
        }
        let mut answer = [0u8; 1];
        // SAFETY: reading one byte into `answer`.
        let got = unsafe { libc::recv(self.sock.as_raw_fd(), answer.as_mut_ptr().cast(), 1, 0) };
        if got != 1 {
            // No answer in time: a helper stuck on a namespace is killed (it is ours, by
            // pid), and the caller does it itself.
            // SAFETY: signalling the helper process this value started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            return Err(None);
        }
        memfd_status(pid, libc::c_int::from(answer[0])).map_err(Some)
    }
}

impl Drop for MemfdSetter {
    fn drop(&mut self) {
        // SAFETY: shutting down our end makes the helper's recvmsg return 0 and it exits;
        // then it is reaped (it is this value's child).
        unsafe {
            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.sock), libc::SHUT_RDWR);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The memfd helper process: keeps only its end of the pair (as fd 3), then serves
/// requests until that end closes. Raw system calls only.
///
/// # Safety
/// Only in the child of the raw clone in [`MemfdSetter::start`]; never returns.
unsafe fn memfd_setter_loop(sock: libc::c_int) -> ! {
    // SAFETY: raw system calls on this process's own fd table and stack memory.
    unsafe {
        if sock != 3 && libc::dup3(sock, 3, libc::O_CLOEXEC) != 3 {
            libc::syscall(libc::SYS_exit_group, 1 as libc::c_long);
        }
        let sock = 3;
        // Not the daemon's other fds: a kept fanotify group would outlive the daemon.
        if libc::syscall(
            libc::SYS_close_range,
            4 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) != 0
        {
            for fd in 4..65536 {
                libc::close(fd);
            }
        }
        loop {
            let mut byte = [0u8; 1];
            let mut cmsg = [0u64; 4];
            let mut iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n <= 0 {
                libc::syscall(libc::SYS_exit_group, 0 as libc::c_long);
            }
            let c = libc::CMSG_FIRSTHDR(&msg);
            let code: u8 = if c.is_null()
                || (*c).cmsg_level != libc::SOL_SOCKET
                || (*c).cmsg_type != libc::SCM_RIGHTS
            {
                8
            } else {
                let nsfd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                let helper = MemfdHelper {
                    nsfd,
                    sysctl: c"/proc/sys/vm/memfd_noexec".as_ptr(),
                    payload: [b'0' + byte[0].min(2), b'\n'],
                };
                let code = memfd_helper_child((&helper as *const MemfdHelper).cast_mut().cast());
                libc::close(nsfd);
                code as u8
            };
            libc::send(sock, (&code as *const u8).cast(), 1, libc::MSG_NOSIGNAL);
        }
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
