//! The image's code objects as the mapping gate keys them: each baseline entry (executables
//! and shared objects) found in the unit's own view of its rootfs, with the device and inode
//! a mapping of it will carry. A file the container changed is entered only if its content
//! still is the baseline's.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::baseline::Baseline;
use crate::kernel::mapping_gate::{FileKey, kernel_dev};
use crate::kernel::mountinfo::MountEntry;

/// (code files, loader files) of `baseline` under `root` (the rootfs as the daemon reaches
/// it). `upper`: the overlay's upper layer, where the container's changes are (a file not
/// there is the image's, unread); without one, every file is hashed.
pub(super) fn code_files(
    baseline: &Baseline,
    root: &Path,
    upper: Option<&Path>,
) -> (Vec<FileKey>, Vec<FileKey>) {
    // The kernel keys by superblock: the rootfs mount's own device (a file's st_dev may be
    // its overlay layer's), for files on that mount.
    let root_stat = crate::kernel::stat_path(root).ok();
    let mut code = Vec::with_capacity(baseline.entries().len());
    let mut loaders = Vec::new();
    let mut buf = Vec::new();
    // The container may have changed any file of the upper layer (a 16 TiB sparse file in
    // place of /usr/bin/env): what is read is bounded like an exec's hash, and a file not
    // entered here stays unmappable until an exec or a close judges it.
    let deadline = std::time::Instant::now() + CODE_FILES_BUDGET;
    let mut late = 0usize;
    for e in baseline.entries() {
        let rel = e.path.strip_prefix(b"/").unwrap_or(&e.path);
        let rel = Path::new(std::ffi::OsStr::from_bytes(rel));
        let path = root.join(rel);
        let Ok(st) = crate::kernel::stat_path(&path) else {
            continue;
        };
        // A size other than the entry's cannot hold its content; only regular files are
        // read (a FIFO or a device in place of a program is not code).
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() != e.size {
            continue;
        }
        let unchanged = match upper {
            Some(up) => std::fs::symlink_metadata(up.join(rel)).is_err(),
            None => false,
        };
        if !unchanged {
            if std::time::Instant::now() >= deadline {
                late += 1;
                continue;
            }
            let same = nix::fcntl::open(
                &path,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_NONBLOCK
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
            .and_then(|fd| {
                crate::baseline::hash_fd(
                    std::os::fd::AsFd::as_fd(&fd),
                    &mut buf,
                    false,
                    Some(deadline),
                )
                .ok()
            })
            .is_some_and(|d| d.blake3 == e.blake3);
            if !same {
                continue;
            }
        }
        let dev = match root_stat {
            Some(r) if r.mnt_id == st.mnt_id => r.dev,
            _ => st.dev,
        };
        let key = FileKey {
            dev: kernel_dev(dev),
            ino: st.ino,
        };
        if baseline.is_loader(&e.blake3) {
            loaders.push(key);
        } else {
            code.push(key);
        }
    }
    if late > 0 {
        log::warn!(
            "{late} changed file(s) of the image were not checked within {CODE_FILES_BUDGET:?}: they stay unmappable until an exec or a close judges them"
        );
    }
    (code, loaders)
}

/// How long an arm may spend hashing the image's files a container changed.
const CODE_FILES_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// The upper layer of the overlay `entry`, as this daemon reaches it.
pub(super) fn upper_dir(entry: &MountEntry) -> Option<std::path::PathBuf> {
    let upper = super::layers::option_path(entry, b"upperdir")?;
    let p = Path::new(std::ffi::OsStr::from_bytes(&upper));
    if p.is_dir() {
        return Some(p.to_path_buf());
    }
    let via_host = Path::new("/proc/1/root").join(p.strip_prefix("/").ok()?);
    via_host.is_dir().then_some(via_host)
}
