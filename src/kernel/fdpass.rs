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
