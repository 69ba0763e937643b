//! Planning a unit's marks: a filesystem mark where every mount of the filesystem lies
//! inside the unit, a mount mark elsewhere, never the host root; and the mounts a rootfs
//! holds.

use super::*;

/// Why a unit's marks cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The path is not a mount point: marking its mount would gate unrelated files.
    #[error(
        "{} is not a mount point; driftlock marks whole mounts (mount the rootfs, tmpfs or volume there first)",
        show(path)
    )]
    NotAMountPoint {
        /// The path.
        path: PathBuf,
    },
    /// The path is the host's root mount.
    #[error(
        "refusing to mark {}: it is the host's root mount (every exec on the node would wait for driftlock)",
        show(path)
    )]
    HostRoot {
        /// The path.
        path: PathBuf,
    },
    /// The mount was not found in the mount table.
    #[error(
        "{} is not in /proc/self/mountinfo (is it in another mount namespace?)",
        show(path)
    )]
    UnknownMount {
        /// The path.
        path: PathBuf,
    },
}

fn show(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_encoded_bytes())
}

/// One mark of a unit, as planned and as placed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedMark {
    /// Mount point (daemon's namespace).
    pub path: PathBuf,
    /// Filesystem or mount mark.
    pub kind: MarkKind,
    /// Device of the filesystem.
    pub dev: u64,
    /// Mount id reported by `statx` on event fds (unique id on 6.8+).
    pub mnt_id: u64,
    /// Filesystem type.
    pub fstype: String,
    /// The filesystem's device as its superblock has it (mountinfo's `major:minor`), which
    /// `statx` may not report (a btrfs subvolume shows a device of its own): what the
    /// mapping gate keys filesystems by. 0 when not known (then `dev`).
    #[serde(default)]
    pub sb_dev: u64,
}

impl PlannedMark {
    /// The device the kernel's superblock has (`sb_dev`, else `dev`), glibc-encoded.
    pub fn superblock_dev(&self) -> u64 {
        if self.sb_dev != 0 {
            self.sb_dev
        } else {
            self.dev
        }
    }
}

/// Filesystems with no write path at all (not even a remount read-write): a file's content
/// there never changes, so an allowed exec may be left to the kernel from then on.
pub const IMMUTABLE_FILESYSTEMS: &[&str] = &["erofs", "squashfs", "iso9660", "cramfs", "romfs"];

/// Filesystems that hold no files a program could be written to and executed from.
pub const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "fusectl",
    "configfs",
    "pstore",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "rpc_pipefs",
];

/// Every mount point under `rootfs` (itself included) in a mount table, except pseudo
/// filesystems: what a container can write a program to.
pub fn discover_mounts(mounts: &[MountEntry], rootfs: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for m in mounts {
        if is_within(&m.mount_point, rootfs)
            && !PSEUDO_FILESYSTEMS.contains(&m.fstype.as_str())
            && !out.contains(&m.mount_point)
        {
            out.push(m.mount_point.clone());
        }
    }
    // The rootfs first, then parents before children.
    out.sort_by_key(|p| p.components().count());
    out
}

/// The mount tables a plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct MountTables<'a> {
    /// The namespace the unit's paths are written in (the daemon's own for `driftlock arm`
    /// with paths, the container's for an arm by pid).
    pub unit: &'a [MountEntry],
    /// The daemon's namespace.
    pub daemon: &'a [MountEntry],
    /// Paths in the daemon's namespace that belong to the unit besides `paths` (where the
    /// host mounted the container's rootfs).
    pub daemon_inside: &'a [PathBuf],
}

/// Plans the marks for a unit whose paths are `paths` (each with the `statx` of its
/// access path); `access` turns a unit path into the path the daemon opens
/// (`/proc/<pid>/root/...` for a container).
pub fn plan_marks(
    paths: &[(PathBuf, PathStat)],
    tables: &MountTables<'_>,
    access: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<PlannedMark>, PlanError> {
    let host_root_dev = tables
        .daemon
        .iter()
        .find(|m| m.mount_point == Path::new("/"))
        .map(|m| m.dev);
    let unit_paths: Vec<&Path> = paths.iter().map(|(p, _)| p.as_path()).collect();
    let same_table = std::ptr::eq(tables.unit, tables.daemon);
    let mut plan: Vec<PlannedMark> = Vec::new();
    for (path, st) in paths {
        let entry = tables
            .unit
            .iter()
            .rev() // the last mount on a mount point is the visible one
            .find(|m| m.mount_id == st.mnt_id_legacy)
            .ok_or_else(|| PlanError::UnknownMount { path: path.clone() })?;
        if entry.mount_point == Path::new("/") && Some(entry.dev) == host_root_dev {
            return Err(PlanError::HostRoot { path: path.clone() });
        }
        if entry.mount_point != *path {
            return Err(PlanError::NotAMountPoint { path: path.clone() });
        }
        let inside_unit = tables
            .unit
            .iter()
            .filter(|m| m.dev == entry.dev)
            .all(|m| unit_paths.iter().any(|u| is_within(&m.mount_point, u)));
        let inside_daemon = same_table
            || tables
                .daemon
                .iter()
                .filter(|m| m.dev == entry.dev)
                .all(|m| {
                    tables
                        .daemon_inside
                        .iter()
                        .any(|u| is_within(&m.mount_point, u))
                });
        let kind = if inside_unit && inside_daemon && Some(entry.dev) != host_root_dev {
            MarkKind::Filesystem
        } else {
            MarkKind::Mount
        };
        let duplicate = plan.iter().any(|p| match (p.kind, kind) {
            (MarkKind::Filesystem, MarkKind::Filesystem) => p.dev == st.dev,
            (MarkKind::Mount, MarkKind::Mount) => p.mnt_id == st.mnt_id,
            _ => false,
        });
        if !duplicate {
            plan.push(PlannedMark {
                path: access(path),
                kind,
                dev: st.dev,
                mnt_id: st.mnt_id,
                fstype: entry.fstype.clone(),
                sb_dev: entry.dev,
            });
        }
    }
    Ok(plan)
}
