//! `listmount` and `statmount`: the raw calls and the layout of `struct statmount`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::kernel::mountinfo::MountEntry;

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

pub(super) fn list_once(last: u64, ids: &mut [u64]) -> std::io::Result<usize> {
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
pub(super) fn list_mounts() -> std::io::Result<Vec<u64>> {
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
pub(super) fn stat_mount(id: u64, buf: &mut Vec<u64>) -> std::io::Result<()> {
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
pub(super) fn reply_bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: a `[u64]` is readable as `8 * len` bytes of the same allocation, and `u8`
    // has no alignment or validity requirement.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
    let size = le_u32(bytes, 0) as usize;
    bytes.get(..size).unwrap_or(bytes)
}

pub(super) fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

pub(super) fn le_u64(b: &[u8], at: usize) -> u64 {
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
pub(super) fn entry_from(reply: &[u8]) -> Option<MountEntry> {
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
        super_options: crate::kernel::mountinfo::unescape_octal(&options),
    })
}

/// A mount as `statmount` gives it now; `None` if it is no longer mounted here.
pub(super) fn read_mount(id: u64, buf: &mut Vec<u64>) -> std::io::Result<Option<MountEntry>> {
    match stat_mount(id, buf) {
        Ok(()) => entry_from(reply_bytes(buf))
            .map(Some)
            .ok_or_else(|| std::io::Error::other("statmount left out a field mountinfo has")),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
