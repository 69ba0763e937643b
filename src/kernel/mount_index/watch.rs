//! What tells the mount index that mounts changed: mountinfo's `POLLPRI`, and fanotify
//! mount notifications where the kernel has them (6.15+).

use std::os::fd::{AsFd, AsRawFd};

use super::statmount::{le_u32, le_u64};

/// What tells the index that mounts changed since it was last brought up to date.
#[derive(Debug)]
pub(super) struct ChangeWatch {
    /// This namespace's mountinfo, polled for `POLLPRI`: set by any mount, unmount, move
    /// or remount since the last poll.
    mountinfo: std::fs::File,
    /// Mount notifications (Linux 6.15+): which mounts were attached or detached since the
    /// last look (a move is both, on the same id).
    pub(super) notify: Option<std::os::fd::OwnedFd>,
}

/// The mounts a [`ChangeWatch`] says changed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Changed {
    Nothing,
    /// These mounts were attached, detached or moved: read them again.
    Mounts(Vec<u64>),
    /// Something changed that no notification names (a remount, a propagation change, a
    /// kernel without mount notifications, a lost notification): read every mount again.
    Unknown,
}

const FAN_REPORT_MNT: u32 = 0x0000_4000;
const FAN_MARK_MNTNS: u32 = 0x0000_0110;
const FAN_MNT_ATTACH: u64 = 0x0100_0000;
const FAN_MNT_DETACH: u64 = 0x0200_0000;
const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
const FAN_EVENT_INFO_TYPE_MNT: u8 = 7;
/// `struct fanotify_event_metadata`.
const FAN_METADATA_LEN: usize = 24;

impl ChangeWatch {
    /// Watches the calling thread's mount namespace (the daemon's threads share one).
    pub(super) fn open(notifications: bool) -> std::io::Result<Self> {
        let mountinfo = std::fs::File::open("/proc/thread-self/mountinfo")?;
        let notify = match notifications.then(mount_notifications) {
            None => None,
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                log::debug!(
                    "mount index: no mount notifications ({e}): every mount is read again after a change"
                );
                None
            }
        };
        Ok(Self { mountinfo, notify })
    }

    pub(super) fn changed(&self) -> std::io::Result<Changed> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.mountinfo.as_fd(), PollFlags::POLLPRI)];
        poll(&mut fds, PollTimeout::ZERO).map_err(std::io::Error::from)?;
        let flagged = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR));
        // Notifications are read even without the flag: a change between the poll and the
        // read leaves the flag for the next look, which reads them again harmlessly.
        let named = match &self.notify {
            Some(fd) => Some(drain_mount_notifications(fd.as_fd())?),
            None => None,
        };
        Ok(match (flagged, named) {
            // Notifications were lost.
            (_, Some(None)) => Changed::Unknown,
            (_, Some(Some(ids))) if !ids.is_empty() => Changed::Mounts(ids),
            (false, _) => Changed::Nothing,
            // A change that no notification names, or no notifications at all.
            (true, _) => Changed::Unknown,
        })
    }
}

/// A mount notification group on the calling thread's mount namespace.
fn mount_notifications() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let ns = std::fs::File::open("/proc/thread-self/ns/mnt")?;
    let flags = FAN_REPORT_MNT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    // SAFETY: plain system call with integer arguments; a non-negative result is a new fd
    // that nothing else owns.
    let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fanotify_init and is owned here alone.
    let group = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: `group` and `ns` are open fds for the call's duration; a NULL path with
    // FAN_MARK_MNTNS marks the namespace `ns` refers to.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | FAN_MARK_MNTNS,
            FAN_MNT_ATTACH | FAN_MNT_DETACH,
            ns.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(group)
}

/// The mounts named by the queued notifications; `None` if some were lost.
fn drain_mount_notifications(
    group: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<Option<Vec<u64>>> {
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match nix::unistd::read(group, &mut buf) {
            Ok(0) => return Ok(Some(ids)),
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => return Ok(Some(ids)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if !parse_mount_notifications(&buf[..n], &mut ids) {
            // Drain the rest; every mount is read again anyway.
            while matches!(nix::unistd::read(group, &mut buf), Ok(n) if n > 0) {}
            return Ok(None);
        }
    }
}

/// Adds the mount ids of `events` to `ids`; `false` on a lost event or a record it cannot
/// read (then nothing it says can be trusted to be complete).
fn parse_mount_notifications(events: &[u8], ids: &mut Vec<u64>) -> bool {
    let mut at = 0;
    while at + FAN_METADATA_LEN <= events.len() {
        let len = le_u32(events, at) as usize;
        let meta_len = usize::from(u16::from_ne_bytes([events[at + 6], events[at + 7]]));
        let mask = le_u64(events, at + 8);
        if len < FAN_METADATA_LEN || at + len > events.len() || meta_len > len {
            return false;
        }
        if mask & FAN_Q_OVERFLOW != 0 {
            return false;
        }
        let mut found = false;
        let mut info = at + meta_len;
        while info + 4 <= at + len {
            let kind = events[info];
            let info_len = usize::from(u16::from_ne_bytes([events[info + 2], events[info + 3]]));
            if info_len < 4 || info + info_len > at + len {
                return false;
            }
            // `struct fanotify_event_info_mnt`: the header, padding to 8, the mount id.
            if kind == FAN_EVENT_INFO_TYPE_MNT && info_len >= 16 {
                ids.push(le_u64(events, info + 8));
                found = true;
            }
            info += info_len;
        }
        if !found && mask & (FAN_MNT_ATTACH | FAN_MNT_DETACH) != 0 {
            return false;
        }
        at += len;
    }
    at == events.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(mask: u64, id: u64) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&40u32.to_ne_bytes()); // event_len
        e.extend_from_slice(&[3, 0]); // vers, reserved
        e.extend_from_slice(&24u16.to_ne_bytes()); // metadata_len
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&(-1i32).to_ne_bytes()); // fd
        e.extend_from_slice(&0i32.to_ne_bytes()); // pid
        e.extend_from_slice(&[FAN_EVENT_INFO_TYPE_MNT, 0]);
        e.extend_from_slice(&16u16.to_ne_bytes());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&id.to_ne_bytes());
        e
    }

    #[test]
    fn mount_notifications_name_their_mounts() {
        let mut events = notification(FAN_MNT_ATTACH, 0x1_0000_0042);
        events.extend(notification(FAN_MNT_ATTACH | FAN_MNT_DETACH, 7));
        let mut ids = Vec::new();
        assert!(parse_mount_notifications(&events, &mut ids));
        assert_eq!(ids, [0x1_0000_0042, 7]);
        // A lost event, a cut record and a mount event without its mount say "read all".
        let mut overflow = notification(FAN_MNT_DETACH, 1);
        overflow.extend(notification(FAN_Q_OVERFLOW, 0));
        assert!(!parse_mount_notifications(&overflow, &mut Vec::new()));
        assert!(!parse_mount_notifications(&events[..34], &mut Vec::new()));
        let mut unnamed = notification(FAN_MNT_ATTACH, 9);
        unnamed[24] = 1; // another kind of record
        assert!(!parse_mount_notifications(&unnamed, &mut Vec::new()));
        let mut short = notification(FAN_MNT_ATTACH, 9);
        short[26..28].copy_from_slice(&2u16.to_ne_bytes());
        assert!(!parse_mount_notifications(&short, &mut Vec::new()));
    }
}
