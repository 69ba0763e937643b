//! A read-only view of an overlay's lower layers alone: the image as it was unpacked,
//! without the container's writable layer. Built with the new mount API as a detached mount
//! (no mount point, nothing to clean up but the fd), so it needs no mount namespace of its
//! own and no other process can see it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why the lower-layer view could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A step of the new mount API failed.
    #[error("cannot mount the image's layers read-only ({step}): {source}")]
    Mount {
        /// Which call.
        step: &'static str,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// A layer path holds a NUL byte.
    #[error("layer path with a NUL byte")]
    Nul,
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

fn cstr(b: &[u8]) -> Result<CString, OverlayError> {
    CString::new(b).map_err(|_| OverlayError::Nul)
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CString>,
    value: Option<&CString>,
    step: &'static str,
) -> Result<(), OverlayError> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: `fs` is an open fs context fd; `key` and `value` are null or NUL-terminated
    // strings that outlive the call; the kernel copies them.
    let rc = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, 0) };
    if rc < 0 {
        return Err(OverlayError::Mount {
            step,
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Mounts `layers` (uppermost first, as in `lowerdir=`) as a read-only, detached overlay
/// with `flags` (e.g. `metacopy=on`, copied from the container's mount so that its layers
/// read the same) and returns the mount's root directory fd.
pub fn mount_lower_layers(
    layers: &[PathBuf],
    options: &[(&str, &str)],
) -> Result<OwnedFd, OverlayError> {
    // `lowerdir+` (Linux 6.8) takes one layer at a time, so no path needs escaping; older
    // kernels get the joined form with `:` and `\` escaped. Before 6.5 overlay parses its
    // options only at create (the legacy context accepts any key): a refusal there is
    // retried with the joined form too.
    let fs = match overlay_context(layers, options, true) {
        Ok(fs) => fs,
        Err(OverlayError::Mount {
            step: "lowerdir+" | "create",
            ..
        }) => overlay_context(layers, options, false)?,
        Err(e) => return Err(e),
    };
    let attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    // SAFETY: `fs` is a created fs context; fsmount returns a new mount fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if raw < 0 {
        return Err(OverlayError::Mount {
            step: "fsmount",
            source: nix::Error::last(),
        });
    }
    // SAFETY: fsmount returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// A created overlay context of `layers` with `options`, layers passed one by one
/// (`lowerdir+`) or joined (`lowerdir`).
fn overlay_context(
    layers: &[PathBuf],
    options: &[(&str, &str)],
    one_by_one: bool,
) -> Result<OwnedFd, OverlayError> {
    // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if raw < 0 {
        return Err(OverlayError::Mount {
            step: "fsopen",
            source: nix::Error::last(),
        });
    }
    // SAFETY: fsopen returned a new fd that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    if one_by_one {
        let plus = cstr(b"lowerdir+")?;
        for layer in layers {
            let value = cstr(layer.as_os_str().as_bytes())?;
            fsconfig(
                &fs,
                FSCONFIG_SET_STRING,
                Some(&plus),
                Some(&value),
                "lowerdir+",
            )?;
        }
    } else {
        let mut joined = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            if i > 0 {
                joined.push(b':');
            }
            for &b in layer.as_os_str().as_bytes() {
                if b == b':' || b == b'\\' {
                    joined.push(b'\\');
                }
                joined.push(b);
            }
        }
        fsconfig(
            &fs,
            FSCONFIG_SET_STRING,
            Some(&cstr(b"lowerdir")?),
            Some(&cstr(&joined)?),
            "lowerdir",
        )?;
    }
    for (key, value) in options {
        let key = cstr(key.as_bytes())?;
        if value.is_empty() {
            fsconfig(&fs, FSCONFIG_SET_FLAG, Some(&key), None, "option")?;
        } else {
            fsconfig(
                &fs,
                FSCONFIG_SET_STRING,
                Some(&key),
                Some(&cstr(value.as_bytes())?),
                "option",
            )?;
        }
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None, "create")?;
    Ok(fs)
}

/// The path through which this process reaches `fd`'s directory (`/proc/self/fd/N`).
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string())
}
