//! The walk of a rootfs: directories depth-first, each executable (or library-named) file
//! of the rootfs's own filesystem queued to be hashed.

use super::*;

/// Walks `root`, queueing files on `jobs`; false when it stopped early (its deadline, the
/// entry limit, or the hashing threads gone).
pub(super) fn walk(
    root: &OwnedFd,
    jobs: &crossbeam_channel::Sender<Job>,
    errors: &mut Vec<SnapshotFileError>,
    limits: &SnapshotLimits,
    deadline: Instant,
    queued: &mut usize,
) -> bool {
    let mut walker = Walker {
        root,
        jobs,
        errors,
        limits,
        queued,
        root_dev: nix::sys::stat::fstat(root.as_fd()).map(|s| s.st_dev).ok(),
        root_mount: crate::kernel::mount_id_at(root.as_fd(), OsStr::new(".")),
    };
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(dir_rel) = stack.pop() {
        if Instant::now() > deadline {
            return false;
        }
        if !walker.read_dir(&dir_rel, &mut stack) {
            return false;
        }
    }
    true
}

struct Walker<'a> {
    root: &'a OwnedFd,
    jobs: &'a crossbeam_channel::Sender<Job>,
    errors: &'a mut Vec<SnapshotFileError>,
    limits: &'a SnapshotLimits,
    queued: &'a mut usize,
    root_dev: Option<u64>,
    root_mount: Option<u64>,
}

impl Walker<'_> {
    fn skip(&mut self, rel: &[u8], reason: String) {
        self.errors.push(SnapshotFileError {
            path: display_path(rel),
            reason,
        });
    }

    /// A file on another device is either bind mounted over the rootfs (another mount:
    /// covered by its own mark) or an overlay file whose layer is on another filesystem
    /// (overlay then gives each layer's files a device number of its own): its mount tells.
    fn on_root_filesystem(&self, st_dev: u64, dir: &OwnedFd, name: &[u8]) -> bool {
        Some(st_dev) == self.root_dev
            || (self.root_mount.is_some()
                && crate::kernel::mount_id_at(dir.as_fd(), OsStr::from_bytes(name))
                    == self.root_mount)
    }

    /// Reads one directory: its subdirectories onto `stack`, its files considered. False:
    /// stop the walk.
    fn read_dir(&mut self, dir_rel: &[u8], stack: &mut Vec<Vec<u8>>) -> bool {
        let dir_fd = match open_beneath(self.root, dir_rel, OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            // A mount point inside the rootfs: another filesystem, covered by its own mark.
            Err(nix::Error::EXDEV) => return true,
            Err(e) => {
                self.skip(dir_rel, format!("cannot open directory: {e}"));
                return true;
            }
        };
        let Ok(dup) = dir_fd.try_clone() else {
            self.skip(dir_rel, "cannot duplicate directory fd".into());
            return true;
        };
        let mut dir = match Dir::from_fd(dup) {
            Ok(d) => d,
            Err(e) => {
                self.skip(dir_rel, format!("cannot read directory: {e}"));
                return true;
            }
        };
        for entry in dir.iter() {
            let Ok(entry) = entry else {
                self.skip(dir_rel, "error while reading directory".into());
                break;
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match entry_kind(&dir_fd, entry.file_type(), name) {
                Some(Type::Directory) => stack.push(rel_of(dir_rel, name)),
                Some(Type::File) if !self.consider_file(&dir_fd, dir_rel, name) => return false,
                _ => {}
            }
        }
        true
    }

    /// Queues a regular file if it is code of the rootfs's own filesystem: an executable
    /// (stat here to avoid queueing data files), or a shared object by name. False: stop.
    fn consider_file(&mut self, dir_fd: &OwnedFd, dir_rel: &[u8], name: &[u8]) -> bool {
        let st = match fstatat(
            dir_fd.as_fd(),
            OsStr::from_bytes(name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(e) => {
                self.skip(&rel_of(dir_rel, name), format!("cannot stat: {e}"));
                return true;
            }
        };
        let size = st.st_size as u64;
        let executable = is_executable(&st);
        let library = !executable && looks_like_library(name) && size <= self.limits.max_file;
        if !(executable || library) || !self.on_root_filesystem(st.st_dev, dir_fd, name) {
            return true;
        }
        if executable && size > self.limits.max_file {
            let reason = format!(
                "{size} bytes, over the snapshot's per-file limit of {} bytes: not hashed",
                self.limits.max_file
            );
            self.skip(&rel_of(dir_rel, name), reason);
            return true;
        }
        *self.queued += 1;
        if *self.queued > self.limits.max_entries {
            return false;
        }
        let rel = rel_of(dir_rel, name);
        self.jobs.send(Job { rel, library }).is_ok()
    }
}

/// A directory entry's type, from the directory itself or (where it does not say) a stat.
fn entry_kind(dir_fd: &OwnedFd, listed: Option<Type>, name: &[u8]) -> Option<Type> {
    if listed.is_some() {
        return listed;
    }
    fstatat(
        dir_fd.as_fd(),
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()
    .map(
        |st| match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Type::Directory,
            SFlag::S_IFREG => Type::File,
            _ => Type::Symlink,
        },
    )
}

/// The relative path of `name` in `dir_rel`: built only for what is kept (most entries are
/// data files).
fn rel_of(dir_rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = Vec::with_capacity(dir_rel.len() + 1 + name.len());
    rel.extend_from_slice(dir_rel);
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}
