//! The daemon's own mount table without reading `/proc/self/mountinfo` at each arm.
//!
//! With a thousand containers a node has three thousand mounts, and mountinfo prints every
//! overlay's layer list: reading it costs 10–20 ms, at every arm. Where the kernel has
//! `listmount` and `statmount` with mount options (Linux 6.10+), the table is kept as an
//! index by unique mount id (never reused): an arm with no mount change since the last
//! reads nothing (mountinfo's `POLLPRI` says so); after a change it lists the ids (a
//! fraction of a millisecond) and asks `statmount` about the new ones, and about those that
//! moved: a mount notification (6.15+) names each attached, detached or moved mount; where
//! there is none, or a change no notification names (a remount), every mount is read
//! again. Elsewhere mountinfo is read as before.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use super::mountinfo::{MountEntry, MountInfoError, read_mountinfo};

const SYS_STATMOUNT: libc::c_long = 457;
const SYS_LISTMOUNT: libc::c_long = 458;
const LSMT_ROOT: u64 = u64::MAX;
const MNT_ID_REQ_SIZE_VER0: u32 = 24;

const STATMOUNT_SB_BASIC: u64 = 0x1;
const STATMOUNT_MNT_BASIC: u64 = 0x2;
const STATMOUNT_MNT_ROOT: u64 = 0x8;
const STATMOUNT_MNT_POINT: u64 = 0x10;
const STATMOUNT_FS_TYPE: u64 = 0x20;
const STATMOUNT_MNT_OPTS: u64 = 0x80;
const STATMOUNT_FS_SUBTYPE: u64 = 0x100;
const STATMOUNT_SB_SOURCE: u64 = 0x200;
/// What every reply has. A string the kernel has nothing for (no options, no subtype, no
/// source) is left out of the reply's mask, so those read as empty when absent; options
/// are there from 6.10 on (checked by version), the subtype and source from 6.13.
const NEEDED: u64 = STATMOUNT_SB_BASIC
    | STATMOUNT_MNT_BASIC
    | STATMOUNT_MNT_ROOT
    | STATMOUNT_MNT_POINT
    | STATMOUNT_FS_TYPE;
const ASKED: u64 = NEEDED | STATMOUNT_MNT_OPTS | STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE;
/// The first kernel whose `statmount` gives mount options.
const FIRST_KERNEL: (u32, u32) = (6, 10);

// The superblock flags mountinfo prints among the super options (`show_sb_opts`).
const SB_RDONLY: u32 = 1;
const SB_SYNCHRONOUS: u32 = 1 << 4;
const SB_DIRSYNC: u32 = 1 << 7;
const SB_LAZYTIME: u32 = 1 << 25;

/// `struct mnt_id_req`, version 0.
#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    param: u64,
}

// Offsets in `struct statmount` (include/uapi/linux/mount.h); its strings follow the
// fixed 512 bytes.
const SM_FIXED: usize = 512;
const SM_MNT_OPTS: usize = 4;
const SM_MASK: usize = 8;
const SM_DEV_MAJOR: usize = 16;
const SM_DEV_MINOR: usize = 20;
const SM_SB_FLAGS: usize = 32;
const SM_FS_TYPE: usize = 36;
const SM_MNT_ID_OLD: usize = 56;
const SM_MNT_PARENT_ID_OLD: usize = 60;
const SM_MNT_ROOT: usize = 104;
const SM_MNT_POINT: usize = 108;
const SM_FS_SUBTYPE: usize = 120;
const SM_SB_SOURCE: usize = 124;

fn list_once(last: u64, ids: &mut [u64]) -> std::io::Result<usize> {
    let req = MntIdReq {
        size: MNT_ID_REQ_SIZE_VER0,
        spare: 0,
        mnt_id: LSMT_ROOT,
        param: last,
    };
    // SAFETY: `req` is a valid version-0 `mnt_id_req`; `ids` is writable for `ids.len()`
    // u64s, the count passed; the kernel writes at most that many.
    let n = unsafe {
        libc::syscall(
            SYS_LISTMOUNT,
            &req as *const MntIdReq,
            ids.as_mut_ptr(),
            ids.len(),
            0u32,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// The unique ids of every mount in this process's mount namespace (below its root).
fn list_mounts() -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u64; 4096];
    loop {
        let last = out.last().copied().unwrap_or(0);
        let n = list_once(last, &mut chunk)?;
        out.extend_from_slice(&chunk[..n.min(chunk.len())]);
        if n < chunk.len() {
            return Ok(out);
        }
    }
}

/// `statmount` of mount `id` into `buf` (grown while the kernel says it is too small).
fn stat_mount(id: u64, buf: &mut Vec<u64>) -> std::io::Result<()> {
    loop {
        let req = MntIdReq {
            size: MNT_ID_REQ_SIZE_VER0,
            spare: 0,
            mnt_id: id,
            param: ASKED,
        };
        let bytes = buf.len() * 8;
        // SAFETY: `req` is a valid version-0 `mnt_id_req`; `buf` is writable for `bytes`
        // bytes (u64-aligned, as `struct statmount` needs), the size passed.
        let rc = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                bytes,
                0u32,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EOVERFLOW) && bytes < (16 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(err);
    }
}

/// The bytes of a `statmount` reply held in `buf`, as long as the reply says it is.
fn reply_bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: a `[u64]` is readable as `8 * len` bytes of the same allocation, and `u8`
    // has no alignment or validity requirement.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
    let size = le_u32(bytes, 0) as usize;
    bytes.get(..size).unwrap_or(bytes)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The string at offset field `at` of a `statmount` reply (`None` if it is out of range).
fn sm_string(b: &[u8], at: usize) -> Option<&[u8]> {
    let start = SM_FIXED.checked_add(le_u32(b, at) as usize)?;
    let rest = b.get(start..)?;
    let end = rest.iter().position(|c| *c == 0)?;
    Some(&rest[..end])
}

/// A `statmount` reply as the mountinfo line it stands for (`None` if the kernel left out
/// a field mountinfo has).
fn entry_from(reply: &[u8]) -> Option<MountEntry> {
    let mask = le_u64(reply, SM_MASK);
    if mask & NEEDED != NEEDED {
        return None;
    }
    let mut fstype = String::from_utf8_lossy(sm_string(reply, SM_FS_TYPE)?).into_owned();
    if mask & STATMOUNT_FS_SUBTYPE != 0 {
        if let Some(sub) = sm_string(reply, SM_FS_SUBTYPE).filter(|s| !s.is_empty()) {
            fstype.push('.');
            fstype.push_str(&String::from_utf8_lossy(sub));
        }
    }
    let sb_flags = le_u32(reply, SM_SB_FLAGS);
    let mut options: Vec<u8> = if sb_flags & SB_RDONLY != 0 {
        b"ro".to_vec()
    } else {
        b"rw".to_vec()
    };
    for (flag, name) in [
        (SB_SYNCHRONOUS, b",sync".as_slice()),
        (SB_DIRSYNC, b",dirsync"),
        (SB_LAZYTIME, b",lazytime"),
    ] {
        if sb_flags & flag != 0 {
            options.extend_from_slice(name);
        }
    }
    let opts = if mask & STATMOUNT_MNT_OPTS != 0 {
        sm_string(reply, SM_MNT_OPTS)?
    } else {
        b""
    };
    if !opts.is_empty() {
        options.push(b',');
        options.extend_from_slice(opts);
    }
    let source = if mask & STATMOUNT_SB_SOURCE != 0 {
        sm_string(reply, SM_SB_SOURCE).unwrap_or_default().to_vec()
    } else {
        Vec::new()
    };
    Some(MountEntry {
        mount_id: u64::from(le_u32(reply, SM_MNT_ID_OLD)),
        parent_id: u64::from(le_u32(reply, SM_MNT_PARENT_ID_OLD)),
        dev: libc::makedev(le_u32(reply, SM_DEV_MAJOR), le_u32(reply, SM_DEV_MINOR)),
        root: PathBuf::from(OsString::from_vec(sm_string(reply, SM_MNT_ROOT)?.to_vec())),
        mount_point: PathBuf::from(OsString::from_vec(sm_string(reply, SM_MNT_POINT)?.to_vec())),
        fstype,
        source,
        super_options: super::mountinfo::unescape_octal(&options),
    })
}

/// The daemon's mount table, kept by unique mount id.
/// What tells the index that mounts changed since it was last brought up to date.
#[derive(Debug)]
struct ChangeWatch {
    /// This namespace's mountinfo, polled for `POLLPRI`: set by any mount, unmount, move
    /// or remount since the last poll.
    mountinfo: std::fs::File,
    /// Mount notifications (Linux 6.15+): which mounts were attached or detached since the
    /// last look (a move is both, on the same id).
    notify: Option<std::os::fd::OwnedFd>,
}

/// The mounts a [`ChangeWatch`] says changed.
#[derive(Debug, PartialEq, Eq)]
enum Changed {
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
    fn open(notifications: bool) -> std::io::Result<Self> {
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

    fn changed(&self) -> std::io::Result<Changed> {
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

/// The daemon's mount table kept by unique mount id: a mount is read (`statmount`) when it
/// first appears and again when a notification says it moved; nothing is read while no
/// change is flagged.
#[derive(Debug, Default)]
pub struct MountIndex {
    /// Unique ids in ascending order, one per entry of `table`.
    ids: Vec<u64>,
    table: Arc<Vec<MountEntry>>,
    watch: Option<ChangeWatch>,
    /// Never asks for mount notifications (as on kernels before 6.15).
    no_notifications: bool,
}

impl MountIndex {
    /// An empty index of the calling thread's mount namespace: the first
    /// [`MountIndex::table`] reads every mount.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index that does without mount notifications, as on kernels before 6.15 (every
    /// mount is read again after a change): for tests of that path on newer kernels.
    pub fn without_notifications() -> Self {
        Self {
            no_notifications: true,
            ..Self::default()
        }
    }

    /// True where the kernel names the mounts that changed (Linux 6.15+ mount
    /// notifications); elsewhere every mount is read again after any change.
    pub fn has_notifications(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.notify.is_some())
    }

    /// The mount table now, in mount order (`Err` where the kernel lacks the calls).
    pub fn table(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        self.refresh()
    }

    fn refresh(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        let refreshed = self.bring_up_to_date();
        if refreshed.is_err() {
            // Half brought up to date: the next look reads every mount again.
            self.watch = None;
        }
        refreshed
    }

    /// Brings the index up to date: lists the ids, asks about new (or moved) ones, drops
    /// gone ones.
    fn bring_up_to_date(&mut self) -> std::io::Result<Arc<Vec<MountEntry>>> {
        match &self.watch {
            None => {
                // Watching first: a change from here on is flagged for the next look.
                self.watch = Some(ChangeWatch::open(!self.no_notifications)?);
                self.read_every_mount()?;
            }
            Some(watch) => match watch.changed()? {
                Changed::Nothing => {}
                Changed::Mounts(ids) => self.read_again(ids)?,
                Changed::Unknown => self.read_every_mount()?,
            },
        }
        Ok(Arc::clone(&self.table))
    }

    fn read_every_mount(&mut self) -> std::io::Result<()> {
        let ids = list_mounts()?;
        let mut buf = vec![0u64; 8192];
        let mut kept = Vec::with_capacity(ids.len());
        let mut table = Vec::with_capacity(ids.len());
        for id in ids {
            // `None`: unmounted between the listing and now.
            if let Some(entry) = read_mount(id, &mut buf)? {
                kept.push(id);
                table.push(entry);
            }
        }
        self.ids = kept;
        self.table = Arc::new(table);
        Ok(())
    }

    /// Reads the mounts a notification named (attached, detached or moved) and, below a
    /// moved one, every mount it carried along (their mount points changed with it, and no
    /// notification names them).
    fn read_again(&mut self, mut named: Vec<u64>) -> std::io::Result<()> {
        named.sort_unstable();
        named.dedup();
        let mut buf = vec![0u64; 8192];
        let mut read: Vec<(u64, Option<MountEntry>)> = Vec::with_capacity(named.len());
        let mut moved: Vec<u64> = Vec::new();
        for id in named {
            let now = read_mount(id, &mut buf)?;
            if let (Some(e), Ok(at)) = (&now, self.ids.binary_search(&id)) {
                if self.table[at].mount_point != e.mount_point
                    || self.table[at].parent_id != e.parent_id
                {
                    moved.push(self.table[at].mount_id);
                }
            }
            read.push((id, now));
        }
        let carried = self.below(&moved);
        let table = Arc::make_mut(&mut self.table);
        for at in carried {
            let id = self.ids[at];
            if read.iter().all(|(r, _)| *r != id) {
                read.push((id, read_mount(id, &mut buf)?));
            }
        }
        for (id, now) in read {
            match (self.ids.binary_search(&id), now) {
                (Ok(at), Some(e)) => table[at] = e,
                (Ok(at), None) => {
                    self.ids.remove(at);
                    table.remove(at);
                }
                (Err(at), Some(e)) => {
                    self.ids.insert(at, id);
                    table.insert(at, e);
                }
                (Err(_), None) => {}
            }
        }
        Ok(())
    }

    /// The positions of the mounts below the mounts with these (legacy) ids, at any depth.
    fn below(&self, parents: &[u64]) -> Vec<usize> {
        let mut inside: std::collections::HashSet<u64> = parents.iter().copied().collect();
        let mut found = Vec::new();
        if inside.is_empty() {
            return found;
        }
        // A child may have a lower id than its parent (mounted before a move): look again
        // until a pass finds nothing new.
        loop {
            let before = found.len();
            for (at, e) in self.table.iter().enumerate() {
                if inside.contains(&e.parent_id) && inside.insert(e.mount_id) {
                    found.push(at);
                }
            }
            if found.len() == before {
                return found;
            }
        }
    }
}

/// A mount as `statmount` gives it now; `None` if it is no longer mounted here.
fn read_mount(id: u64, buf: &mut Vec<u64>) -> std::io::Result<Option<MountEntry>> {
    match stat_mount(id, buf) {
        Ok(()) => entry_from(reply_bytes(buf))
            .map(Some)
            .ok_or_else(|| std::io::Error::other("statmount left out a field mountinfo has")),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the index is used: decided once, by comparing it with mountinfo.
enum Source {
    Unknown,
    Index(MountIndex),
    MountInfo,
}

static DAEMON_TABLE: Mutex<Source> = Mutex::new(Source::Unknown);

/// This process's mount table, as `read_mountinfo` gives it (in mount order), from the
/// index where the kernel has `listmount` and `statmount` with options, else from
/// `/proc/self/mountinfo`.
pub fn daemon_mount_table() -> Result<Arc<Vec<MountEntry>>, MountInfoError> {
    let mut source = DAEMON_TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if matches!(*source, Source::Unknown) {
        *source = first_use();
    }
    if let Source::Index(index) = &mut *source {
        match index.refresh() {
            Ok(table) => return Ok(table),
            Err(e) => {
                log::warn!("mount index: {e}: reading /proc/self/mountinfo from now on");
                *source = Source::MountInfo;
            }
        }
    }
    drop(source);
    read_mountinfo().map(Arc::new)
}

/// The daemon's mount table read anew, every mount (`None` where the index is not used:
/// mountinfo is read fresh each time anyway). For a caller whose paths disagree with the
/// table: a directory renamed above a mount point changes its mount point, and neither
/// mountinfo's `POLLPRI` nor a notification says so.
pub fn daemon_mount_table_read_again() -> Option<Arc<Vec<MountEntry>>> {
    let mut source = DAEMON_TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let Source::Index(index) = &mut *source else {
        return None;
    };
    match index.read_every_mount() {
        Ok(()) => Some(Arc::clone(&index.table)),
        Err(e) => {
            log::warn!("mount index: {e}: reading /proc/self/mountinfo from now on");
            *source = Source::MountInfo;
            drop(source);
            read_mountinfo().ok().map(Arc::new)
        }
    }
}

/// Builds the index and checks it against mountinfo once (the same mounts, field by
/// field, where neither changed in between); a kernel without the calls, or whose index
/// differs, keeps mountinfo.
fn first_use() -> Source {
    let release = super::features::kernel_release();
    if super::features::parse_version(&release).is_none_or(|v| v < FIRST_KERNEL) {
        log::debug!("mount index: kernel {release} before 6.10: reading /proc/self/mountinfo");
        return Source::MountInfo;
    }
    for _ in 0..3 {
        let mut index = MountIndex::default();
        let table = match index.refresh() {
            Ok(t) => t,
            Err(e) => {
                log::debug!("mount index unavailable ({e}): reading /proc/self/mountinfo");
                return Source::MountInfo;
            }
        };
        let Ok(text) = read_mountinfo() else {
            return Source::MountInfo;
        };
        if list_mounts().is_ok_and(|ids| ids != index.ids) {
            continue; // mounts changed meanwhile: compare again
        }
        return match differences(&table, &text) {
            None => {
                log::debug!("mount index: listmount/statmount ({} mounts)", table.len());
                Source::Index(index)
            }
            Some(why) => {
                log::info!("mount index differs from mountinfo ({why}): reading mountinfo");
                Source::MountInfo
            }
        };
    }
    Source::MountInfo
}

/// What differs between two mount tables, ignoring order and, where one of them lacks it,
/// the mount source.
pub fn differences(index: &[MountEntry], mountinfo: &[MountEntry]) -> Option<String> {
    if index.len() != mountinfo.len() {
        return Some(format!(
            "{} mounts listed, {} in mountinfo",
            index.len(),
            mountinfo.len()
        ));
    }
    let by_id: HashMap<u64, &MountEntry> = mountinfo.iter().map(|m| (m.mount_id, m)).collect();
    for m in index {
        let Some(other) = by_id.get(&m.mount_id) else {
            return Some(format!("mount {} is not in mountinfo", m.mount_id));
        };
        let mut same = (*other).clone();
        if m.source.is_empty() {
            same.source.clear();
        }
        if *m != same {
            return Some(format!("mount {}: {m:?} against {other:?}", m.mount_id));
        }
    }
    None
}

/// `Ok` if `listmount` answers here (Linux 6.8+, no seccomp filter refusing it).
pub fn listmount_works() -> std::io::Result<()> {
    let mut one = [0u64; 1];
    list_once(0, &mut one).map(|_| ())
}

/// The mount table through `listmount`/`statmount` alone (no fallback), for tests and
/// `doctor`: `Err` where the kernel lacks them.
pub fn table_by_statmount() -> std::io::Result<Vec<MountEntry>> {
    let mut index = MountIndex::default();
    index.refresh().map(|t| t.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_the_mount_table_of_mountinfo() {
        let release = crate::kernel::features::kernel_release();
        if list_mounts().is_err()
            || crate::kernel::features::parse_version(&release).is_none_or(|v| v < FIRST_KERNEL)
        {
            eprintln!("skipping: kernel {release} has no listmount or statmount options");
            return;
        }
        let mut last = None;
        for _ in 0..5 {
            let index = table_by_statmount().expect("statmount of every mount");
            let text = read_mountinfo().expect("mountinfo");
            assert!(
                index.iter().any(|m| m.super_options.contains(&b'=')),
                "no mount has options: {index:?}"
            );
            match differences(&index, &text) {
                None => return,
                Some(why) => last = Some(why),
            }
        }
        panic!("the index differs from mountinfo: {last:?}");
    }

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

    #[test]
    fn a_reply_without_the_needed_fields_is_refused() {
        let mut reply = vec![0u8; SM_FIXED + 16];
        reply[SM_MASK..SM_MASK + 8].copy_from_slice(&STATMOUNT_SB_BASIC.to_ne_bytes());
        assert!(entry_from(&reply).is_none());
        // Offsets past the reply are refused, not read.
        reply[SM_MASK..SM_MASK + 8].copy_from_slice(&NEEDED.to_ne_bytes());
        reply[SM_FS_TYPE..SM_FS_TYPE + 4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(entry_from(&reply).is_none());
    }
}
