//! Passing a file descriptor over a Unix socket (`SCM_RIGHTS`): how a daemon hands its
//! fanotify group to its successor.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Writes `bytes` with `fd` attached to their first byte.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let raw = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let mut sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    while sent < bytes.len() {
        sent += sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&bytes[sent..])],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
    }
    Ok(())
}

/// Reads up to and including the first newline (at most `max` bytes), keeping the first fd
/// that came with them (any further fds are closed).
pub fn recv_line_with_fd(
    stream: &UnixStream,
    max: usize,
) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') && line.len() < max {
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let n = msg.bytes;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in our table for this message
                    // (SCM_RIGHTS); nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    Ok((line, fd))
}

/// Receives one datagram (a service-manager notification) with the fds that came with it.
pub fn recv_datagram_with_fds(
    socket: &std::os::unix::net::UnixDatagram,
) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 16]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message
                // (SCM_RIGHTS); nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    buf.truncate(n);
    Ok((buf, fds))
}

/// Starts `cmd` with `fds` as its fds 3, 4, ... (as systemd passes stored fds: the child
/// finds them through `LISTEN_FDS`, which the caller sets), with no signal blocked.
pub fn spawn_with_fds(
    cmd: &mut std::process::Command,
    fds: &[OwnedFd],
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (sigprocmask, fcntl, dup2, close) on numbers the parent
    // owns open; it allocates nothing (`raw` was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // The caller may block signals to read them from a signalfd: the child must not
            // inherit that.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // First above the target range, so a source numbered 3.. is not overwritten.
            let mut high = [0i32; 64];
            for (i, fd) in raw.iter().enumerate().take(64) {
                let h = libc::fcntl(*fd, libc::F_DUPFD, 3 + 64);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high[i] = h;
            }
            for (i, h) in high.iter().enumerate().take(raw.len().min(64)) {
                if libc::dup2(*h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*h);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn an_fd_crosses_with_its_line() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        send_with_fd(&a, b"{\"ok\":", file.as_fd()).unwrap();
        a.try_clone().unwrap().write_all(b"true}\nrest").unwrap();
        let (line, fd) = recv_line_with_fd(&b, 1 << 16).unwrap();
        assert!(line.starts_with(b"{\"ok\":true}\n"), "{line:?}");
        let fd = fd.expect("the fd came along");
        let got = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(got.ends_with("status"), "{got:?}");
        drop(a);
        let _ = b.flush();
        let (rest, none) = recv_line_with_fd(&b, 1 << 16).unwrap();
        assert!(none.is_none());
        assert!(rest.is_empty() || rest == b"rest", "{rest:?}");
    }
}
