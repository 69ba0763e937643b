//! Resolving a unit's paths and mounts: one implementation of each lookup (the view
//! through `/proc/<pid>/root`, finding a rootfs again by device, the daemon's own path to a
//! container's rootfs), shared by arming, re-arming and the mount watcher.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::ArmError;
use super::UnitRequest;
use crate::escape::{escape_bytes, unescape};
use crate::kernel::mount_index::{daemon_mount_table, daemon_mount_table_read_again};
use crate::kernel::mountinfo::{MountEntry, read_mountinfo_of};
use crate::kernel::{PathStat, procfs, stat_path};
use crate::registry::{MountTables, PlannedMark, discover_mounts, plan_marks};

pub(super) fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b))
}

/// How the daemon reaches a unit's paths: a unit armed by pid is seen through
/// `/proc/<pid>/root` (its paths are in its own mount namespace); one armed by path is in
/// the daemon's namespace.
#[derive(Debug, Clone)]
pub(super) struct UnitView {
    prefix: Option<PathBuf>,
}

impl UnitView {
    /// The view of a unit armed by `pid` (or by path when `None`).
    pub(super) fn of(pid: Option<i32>) -> Self {
        UnitView {
            prefix: pid.map(|p| PathBuf::from(format!("/proc/{p}/root"))),
        }
    }

    /// The daemon's path to `p`, a path as the unit sees it.
    pub(super) fn access(&self, p: &Path) -> PathBuf {
        match &self.prefix {
            Some(pre) => pre.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    }

    /// The unit's own path for a path the daemon reached it by (for records).
    pub(super) fn shown(&self, p: &Path) -> PathBuf {
        match &self.prefix {
            Some(pre) => p
                .strip_prefix(pre)
                .map(|rest| Path::new("/").join(rest))
                .unwrap_or_else(|_| p.to_path_buf()),
            None => p.to_path_buf(),
        }
    }

    /// True for a unit armed by path, in the daemon's own namespace.
    pub(super) fn in_daemon_ns(&self) -> bool {
        self.prefix.is_none()
    }
}

/// Checks that `pid` names a live process and returns its start time (with the pid, it
/// tells the container from a reused pid later).
pub(super) fn container_start_time(pid: Option<i32>) -> Result<Option<u64>, ArmError> {
    match pid {
        Some(p) if p > 0 => Ok(Some(procfs::start_time(p).ok_or(ArmError::NoProcess(p))?)),
        Some(p) => Err(ArmError::NoProcess(p)),
        None => Ok(None),
    }
}

/// A container's rootfs found again by its device: after `pivot_root` it is `/` in the
/// container's view, the shallowest mount of that filesystem.
pub(super) fn rootfs_by_dev(mounts: &[MountEntry], dev: u64) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.dev == dev)
        .map(|m| m.mount_point.clone())
        .min_by_key(|p| p.components().count())
}

/// Where the daemon itself sees the container's rootfs (before `pivot_root` the container's
/// path is the host's): the daemon's own mounts under it belong to the container.
pub(super) fn daemon_inside(host_rootfs: Option<&str>) -> Result<Vec<PathBuf>, ArmError> {
    Ok(match host_rootfs {
        Some(h) => vec![decode_path("host_rootfs", h, false)?],
        None => Vec::new(),
    })
}

/// A unit's filesystems, resolved.
pub(super) struct ResolvedUnit {
    /// The rootfs as the unit sees it.
    pub(super) rootfs: PathBuf,
    /// Its stat (device and mount id are recorded for re-arming).
    pub(super) rootfs_stat: PathStat,
    /// The unit's mount table.
    pub(super) mounts: std::sync::Arc<Vec<MountEntry>>,
    /// The marks that cover it.
    pub(super) marks: Vec<PlannedMark>,
}

/// Resolves the rootfs and mounts of a request (discovering mounts under the rootfs when
/// asked) and plans the marks that cover them.
pub(super) fn resolve_unit(req: &UnitRequest, view: &UnitView) -> Result<ResolvedUnit, ArmError> {
    match resolve_unit_with(req, view, daemon_mount_table()?) {
        // The daemon's table kept as an index may lag behind a rename above a mount point
        // (a mount point it no longer finds there, or a path that is gone): once more with
        // every mount read again. A unit armed by pid is planned from its own namespace's
        // mountinfo, read fresh: its errors are not the index's.
        Err(e @ (ArmError::Plan(_) | ArmError::Stat { .. })) if view.in_daemon_ns() => {
            match daemon_mount_table_read_again() {
                Some(fresh) => {
                    log::debug!("arm: {e}: planning again with the mount table read anew");
                    resolve_unit_with(req, view, fresh)
                }
                None => Err(e),
            }
        }
        resolved => resolved,
    }
}

fn resolve_unit_with(
    req: &UnitRequest,
    view: &UnitView,
    daemon_mounts: std::sync::Arc<Vec<MountEntry>>,
) -> Result<ResolvedUnit, ArmError> {
    let in_daemon_ns = view.in_daemon_ns();
    let rootfs = decode_path("rootfs", &req.rootfs, in_daemon_ns)?;
    let unit_mounts = match req.pid {
        Some(p) if !in_daemon_ns => std::sync::Arc::new(read_mountinfo_of(p)?),
        _ => std::sync::Arc::clone(&daemon_mounts),
    };
    let mut paths = vec![rootfs.clone()];
    for m in &req.mounts {
        paths.push(decode_path("mount", m, in_daemon_ns)?);
    }
    if req.discover_mounts {
        for m in discover_mounts(&unit_mounts, &rootfs) {
            if !paths.contains(&m) {
                paths.push(m);
            }
        }
    }
    let mut stats = Vec::with_capacity(paths.len());
    for p in paths {
        let st = stat_path(&view.access(&p)).map_err(|source| ArmError::Stat {
            path: p.clone(),
            source,
        })?;
        stats.push((p, st));
    }
    let inside = daemon_inside(req.host_rootfs.as_deref())?;
    let tables = MountTables {
        // The very same table when the unit is in the daemon's namespace: the planner
        // tells the two cases apart by identity.
        unit: if in_daemon_ns {
            &daemon_mounts
        } else {
            &unit_mounts
        },
        daemon: &daemon_mounts,
        daemon_inside: &inside,
    };
    let marks = plan_marks(&stats, &tables, &|p: &Path| view.access(p))?;
    let rootfs_stat = stats[0].1;
    Ok(ResolvedUnit {
        rootfs,
        rootfs_stat,
        mounts: unit_mounts,
        marks,
    })
}

/// The mounts now under a container's rootfs (armed by `pid`), with their marks planned;
/// mounts that change while they are looked at are left out. `None` if the container or its
/// rootfs is gone.
pub(super) fn current_mount_plan(
    pid: i32,
    rootfs_dev: u64,
    host_rootfs: Option<&str>,
) -> Option<Vec<PlannedMark>> {
    let view = UnitView::of(Some(pid));
    let (unit_mounts, daemon_mounts) = (read_mountinfo_of(pid).ok()?, daemon_mount_table().ok()?);
    let rootfs = rootfs_by_dev(&unit_mounts, rootfs_dev)?;
    let stats: Vec<_> = discover_mounts(&unit_mounts, &rootfs)
        .into_iter()
        .filter_map(|p| stat_path(&view.access(&p)).ok().map(|st| (p, st)))
        .filter(|(p, st)| {
            unit_mounts
                .iter()
                .rev()
                .find(|m| m.mount_id == st.mnt_id_legacy)
                .is_some_and(|m| m.mount_point == *p)
        })
        .collect();
    let inside = daemon_inside(host_rootfs).ok()?;
    let tables = MountTables {
        unit: &unit_mounts,
        daemon: &daemon_mounts,
        daemon_inside: &inside,
    };
    plan_marks(&stats, &tables, &|p: &Path| view.access(p)).ok()
}

/// Decodes an escaped absolute path. In the daemon's namespace it is canonicalized; in a
/// container's it must already be normal (no `.`, `..` or empty components), since it is
/// matched against that namespace's mount table as written.
pub(super) fn decode_path(
    field: &'static str,
    text: &str,
    canonicalize: bool,
) -> Result<PathBuf, ArmError> {
    let bytes = unescape(text).map_err(|e| ArmError::BadPath {
        field,
        reason: e.to_string(),
    })?;
    let bad = |reason: String| ArmError::BadPath { field, reason };
    if bytes.first() != Some(&b'/') {
        return Err(bad(format!(
            "{} is not an absolute path",
            escape_bytes(&bytes)
        )));
    }
    let path = PathBuf::from(OsString::from_vec(bytes));
    if canonicalize {
        return path
            .canonicalize()
            .map_err(|source| ArmError::Resolve { path, source });
    }
    let abnormal = path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .skip(1)
        .any(|c| c == b"." || c == b"..")
        || (path.as_os_str().len() > 1 && path.as_os_str().as_bytes().ends_with(b"/"));
    if abnormal {
        return Err(bad(format!(
            "{} is not a normal path",
            escape_bytes(path.as_os_str().as_bytes())
        )));
    }
    Ok(path)
}

/// The image key of a rootfs: for an overlay, its lower layers (identical images share
/// them, and lower layers are immutable, so a stored baseline stays valid); otherwise
/// `None`, and the directory is snapshotted at every arm.
pub fn derive_image_key(
    rootfs: &Path,
    mounts: &[MountEntry],
    mnt_id_legacy: u64,
) -> Option<Vec<u8>> {
    let entry = mounts.iter().rev().find(|m| m.mount_id == mnt_id_legacy)?;
    if entry.fstype != "overlay" || entry.mount_point != rootfs {
        return None;
    }
    let lower = entry
        .super_options
        .split(|b| *b == b',')
        .find_map(|opt| opt.strip_prefix(b"lowerdir="))?;
    let mut key = b"overlay-lower:".to_vec();
    key.extend_from_slice(lower);
    Some(key)
}

/// The store key of a rootfs without image layers: the container and the very directory
/// (device and inode) it was first armed with, so that a restart of that container finds
/// its first baseline again, and a new container made at the same path does not.
pub(super) fn container_key(req: &UnitRequest, unit: &ResolvedUnit) -> Vec<u8> {
    let mut key = b"rootfs:".to_vec();
    key.extend_from_slice(unit.rootfs.as_os_str().as_bytes());
    key.extend_from_slice(
        format!(
            "\0unit:{}\0dir:{}:{}",
            req.id, unit.rootfs_stat.dev, unit.rootfs_stat.ino
        )
        .as_bytes(),
    );
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mountinfo::parse_mountinfo;
    use std::path::Path;

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("c0ffee:web-1.a_b@x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a\nb"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn overlay_key_comes_from_the_lower_layers() {
        let m = parse_mountinfo(
            b"5 1 0:41 / /t/rootfs rw - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u,workdir=/w\n\
              6 1 0:42 / /t/plain rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(
            derive_image_key(Path::new("/t/rootfs"), &m, 5).unwrap(),
            b"overlay-lower:/l/2:/l/1".to_vec()
        );
        assert_eq!(derive_image_key(Path::new("/t/plain"), &m, 6), None);
    }

    #[test]
    fn paths_are_checked() {
        assert!(matches!(
            decode_path("rootfs", "relative", true),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/bad\\q", true),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/nonexistent/x", true),
            Err(ArmError::Resolve { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/a/../b", false),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/a/./b", false),
            Err(ArmError::BadPath { .. })
        ));
        assert_eq!(
            decode_path("rootfs", "/a/b", false).unwrap(),
            Path::new("/a/b")
        );
        assert_eq!(decode_path("rootfs", "/", false).unwrap(), Path::new("/"));
    }
}
