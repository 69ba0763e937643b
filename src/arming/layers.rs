//! Where a baseline is taken from: never a container's writable state.
//!
//! A container on an overlay is snapshotted through its lower layers alone (the image as
//! unpacked), mounted read-only and detached: what the container wrote into its upper layer,
//! before a restart or before a re-arm, never enters its baseline.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::escape::escape_bytes;
use crate::kernel::mountinfo::MountEntry;

/// The overlay mounted exactly at `rootfs` (the unit's root mount), if it is one.
pub(super) fn overlay_at<'a>(
    rootfs: &Path,
    mounts: &'a [MountEntry],
    mnt_id_legacy: u64,
) -> Option<&'a MountEntry> {
    let entry = mounts.iter().rev().find(|m| m.mount_id == mnt_id_legacy)?;
    (entry.fstype == "overlay" && entry.mount_point == rootfs && entry.root == Path::new("/"))
        .then_some(entry)
}

/// The value of `name=` among an overlay's super options. Options are separated by commas
/// that no backslash escapes: overlay writes a `,` (and a `:`) inside a layer path as `\,`.
fn option<'a>(entry: &'a MountEntry, name: &[u8]) -> Option<&'a [u8]> {
    split_options(&entry.super_options).find_map(|opt| {
        opt.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

/// The value of `name=` as a path: overlay's backslash escapes removed.
pub(super) fn option_path(entry: &MountEntry, name: &[u8]) -> Option<Vec<u8>> {
    let raw = option(entry, name)?;
    let mut out = Vec::with_capacity(raw.len());
    let mut escaped = false;
    for &b in raw {
        if escaped || b != b'\\' {
            out.push(b);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    Some(out)
}

/// Splits a super-options string at its unescaped commas (escapes are kept).
fn split_options(options: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, &b) in options.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b',' => {
                cuts.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push((start, options.len()));
    cuts.into_iter().map(move |(a, b)| &options[a..b])
}

/// The overlay's lower layers, uppermost first, as the mounter wrote them. Data-only
/// layers (after `::`) are taken as ordinary ones: they hold image content too.
pub(super) fn lower_dirs(entry: &MountEntry) -> Vec<Vec<u8>> {
    let Some(lower) = option(entry, b"lowerdir") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut escaped = false;
    for &b in lower {
        match b {
            _ if escaped => {
                cur.push(b);
                escaped = false;
            }
            b'\\' => escaped = true,
            b':' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(b),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `path` as this daemon reaches it: as is, else through the host's root (`/proc/1/root`,
/// for a daemon in a mount namespace of its own). A relative layer path (Docker's, when
/// the option string would not fit a page) is relative to the directory the mounter
/// worked in, an ancestor of the upper layer.
fn reachable(path: &[u8], upper: Option<&[u8]>) -> Option<PathBuf> {
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if p.is_absolute() {
        candidates.push(p.to_path_buf());
    } else if let Some(up) = upper.map(|u| Path::new(std::ffi::OsStr::from_bytes(u))) {
        candidates.extend(
            up.ancestors()
                .skip(1)
                .filter(|a| a.is_absolute())
                .map(|a| a.join(p)),
        );
    }
    let host = Path::new("/proc/1/root");
    let via_host: Vec<PathBuf> = candidates
        .iter()
        .filter_map(|c| c.strip_prefix("/").ok().map(|r| host.join(r)))
        .collect();
    candidates.into_iter().chain(via_host).find(|c| c.is_dir())
}

/// Mounts the overlay's lower layers alone, read-only and detached, with the options
/// that decide how they read (`metacopy`, `redirect_dir`, `userxattr`).
pub(super) fn mount_lower_view(entry: &MountEntry) -> Result<OwnedFd, String> {
    let dirs = lower_dirs(entry);
    if dirs.is_empty() {
        return Err("the overlay shows no lowerdir".into());
    }
    let upper = option_path(entry, b"upperdir");
    let mut layers = Vec::with_capacity(dirs.len());
    for d in &dirs {
        match reachable(d, upper.as_deref()) {
            Some(p) => layers.push(p),
            None => {
                return Err(format!(
                    "image layer {} is not reachable from the daemon (mount the runtime's \
                     snapshot directory into the daemon's namespace at the same path)",
                    escape_bytes(d)
                ));
            }
        }
    }
    if let [only] = layers.as_slice() {
        // Overlay needs two lower layers without an upper one; a single layer is the
        // image as it is.
        return nix::fcntl::open(
            only,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| {
            format!(
                "cannot open image layer {}: {e}",
                escape_bytes(only.as_os_str().as_bytes())
            )
        });
    }
    let mut options: Vec<(&str, &str)> = Vec::new();
    if option(entry, b"metacopy") == Some(b"on") {
        options.push(("metacopy", "on"));
    }
    if matches!(option(entry, b"redirect_dir"), Some(b"on" | b"follow")) {
        options.push(("redirect_dir", "follow"));
    }
    if entry
        .super_options
        .split(|b| *b == b',')
        .any(|o| o == b"userxattr")
    {
        options.push(("userxattr", ""));
    }
    crate::kernel::overlay::mount_lower_layers(&layers, &options).map_err(|e| e.to_string())
}

/// True if `dir` (a lowerdir as the mounter wrote it) is a layer of a runtime's layer store,
/// which the runtime never changes once unpacked: containerd's `…/snapshots/<n>/fs`,
/// Docker's `…/overlay2/<id>/diff` and containers/storage's `…/overlay/<id>/diff`, and the
/// short links both keep in `…/l/<id>` (Docker's long form names them relative, `l/<id>`).
pub(super) fn in_layer_store(dir: &[u8]) -> bool {
    let parts: Vec<&[u8]> = dir
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let store = |p: &[u8]| p == b"overlay2" || p == b"overlay";
    match parts.as_slice() {
        [.., snapshots, n, fs]
            if *snapshots == b"snapshots"
                && *fs == b"fs"
                && !n.is_empty()
                && n.iter().all(u8::is_ascii_digit) =>
        {
            true
        }
        [.., s, id, diff] if store(s) && *diff == b"diff" && *id != b"l" => true,
        [.., s, l, _] if store(s) && *l == b"l" => true,
        [l, _] if *l == b"l" && !dir.starts_with(b"/") => true,
        _ => false,
    }
}

/// Entries of mutable layers walked at most, per arm.
const LAYER_STATE_MAX_ENTRIES: usize = 1_000_000;

/// The state of an overlay's layers that are not in a runtime's layer store (a directory a
/// user made a container's lower layer: Podman's `--rootfs DIR:O`, or a hand-made overlay),
/// which may change between two containers of the same lowerdir string: a digest of every
/// entry's path, inode and change time (a change of content or metadata moves the change
/// time, which no one can set back). `Ok(None)`: every layer is a store's (the lowerdir
/// string alone names the image). Costs a `statx` per entry, no read of content.
pub(super) fn mutable_layers_state(entry: &MountEntry) -> Result<Option<String>, String> {
    let dirs: Vec<Vec<u8>> = lower_dirs(entry)
        .into_iter()
        .filter(|d| !in_layer_store(d))
        .collect();
    if dirs.is_empty() {
        return Ok(None);
    }
    let upper = option_path(entry, b"upperdir");
    let mut hasher = blake3::Hasher::new();
    let mut seen = 0usize;
    for d in &dirs {
        let root = reachable(d, upper.as_deref())
            .ok_or_else(|| format!("image layer {} is not reachable", escape_bytes(d)))?;
        hasher.update(d);
        hasher.update(b"\0");
        walk_state(&root, &root, &mut hasher, &mut seen)?;
    }
    Ok(Some(hasher.finalize().to_hex().to_string()))
}

fn walk_state(
    root: &Path,
    dir: &Path,
    hasher: &mut blake3::Hasher,
    seen: &mut usize,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| {
            format!(
                "cannot read {}: {e}",
                escape_bytes(dir.as_os_str().as_bytes())
            )
        })?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        *seen += 1;
        if *seen > LAYER_STATE_MAX_ENTRIES {
            return Err(format!(
                "more than {LAYER_STATE_MAX_ENTRIES} entries in a layer outside a runtime's layer store"
            ));
        }
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(rel.as_os_str().as_bytes());
        hasher.update(
            format!(
                "\0{}:{}:{}.{}:{}\n",
                md.mode(),
                md.ino(),
                md.ctime(),
                md.ctime_nsec(),
                md.size()
            )
            .as_bytes(),
        );
        if md.is_dir() {
            walk_state(root, &path, hasher, seen)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mountinfo::parse_mountinfo;

    #[test]
    fn a_comma_in_a_layer_path_does_not_end_the_option() {
        let m = parse_mountinfo(
            b"50 1 0:50 / /c rw - overlay overlay rw,lowerdir=/l/a\\,b:/l/c\\:d,upperdir=/u/x\\,y/diff,workdir=/u/w\n",
        )
        .unwrap();
        assert_eq!(
            lower_dirs(&m[0]),
            vec![b"/l/a,b".to_vec(), b"/l/c:d".to_vec()]
        );
        assert_eq!(option(&m[0], b"upperdir"), Some(&b"/u/x\\,y/diff"[..]));
        assert_eq!(
            option_path(&m[0], b"upperdir"),
            Some(b"/u/x,y/diff".to_vec())
        );
        assert_eq!(option(&m[0], b"workdir"), Some(&b"/u/w"[..]));
    }

    #[test]
    fn layers_of_runtime_stores_are_told_from_other_directories() {
        let table: [(&[u8], bool); 11] = [
            (
                b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs",
                true,
            ),
            (b"/var/lib/docker/overlay2/0123abcd/diff", true),
            (b"/var/lib/docker/overlay2/l/ABCDEFGH", true),
            (b"l/ABCDEFGH", true),
            (b"/var/lib/containers/storage/overlay/0123abcd/diff", true),
            (b"/var/lib/containers/storage/overlay/l/ABCDEFGH", true),
            (b"/home/me/rootfs", false),
            (b"/srv/snapshots/x/fs", false),
            (b"/srv/overlay2/l/diff/x", false),
            (b"/l/ABC", false),
            (b"/tmp/it/lower", false),
        ];
        for (dir, store) in table {
            assert_eq!(in_layer_store(dir), store, "{}", escape_bytes(dir));
        }
    }

    #[test]
    fn the_state_of_a_mutable_layer_follows_its_content() {
        let dir =
            std::env::temp_dir().join(format!("driftlock-layer-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/a"), b"one").unwrap();
        let line = format!(
            "5 1 0:41 / /r rw - overlay overlay rw,lowerdir={},upperdir=/u,workdir=/w\n",
            dir.display()
        );
        let m = crate::kernel::mountinfo::parse_mountinfo(line.as_bytes()).unwrap();
        let first = mutable_layers_state(&m[0]).unwrap().unwrap();
        assert_eq!(mutable_layers_state(&m[0]).unwrap().unwrap(), first);
        std::fs::write(dir.join("bin/b"), b"two").unwrap();
        let added = mutable_layers_state(&m[0]).unwrap().unwrap();
        assert_ne!(added, first, "a program added");
        // Same size, new content: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("bin/a"), b"ONE").unwrap();
        assert_ne!(
            mutable_layers_state(&m[0]).unwrap().unwrap(),
            added,
            "a program changed"
        );
        let _ = std::fs::remove_dir_all(&dir);
        let store = crate::kernel::mountinfo::parse_mountinfo(
            b"5 1 0:41 / /r rw - overlay overlay rw,lowerdir=/s/snapshots/2/fs:/s/snapshots/1/fs,upperdir=/u,workdir=/w\n",
        )
        .unwrap();
        assert_eq!(mutable_layers_state(&store[0]).unwrap(), None);
    }

    #[test]
    fn lower_dirs_are_split_with_escapes_and_data_only_layers() {
        let m = parse_mountinfo(
            b"5 1 0:41 / /r rw - overlay overlay rw,lowerdir=/l/2:/l/a\\:b::/d,upperdir=/u/x/diff,workdir=/w\n",
        )
        .unwrap();
        assert_eq!(
            lower_dirs(&m[0]),
            vec![b"/l/2".to_vec(), b"/l/a:b".to_vec(), b"/d".to_vec()]
        );
        assert_eq!(option(&m[0], b"upperdir"), Some(&b"/u/x/diff"[..]));
        assert!(overlay_at(Path::new("/r"), &m, 5).is_some());
        assert!(overlay_at(Path::new("/other"), &m, 5).is_none());
    }

    #[test]
    fn relative_layers_resolve_against_the_upper_layers_ancestors() {
        let dir = std::env::temp_dir().join(format!("dl-layers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("l/ABC")).unwrap();
        std::fs::create_dir_all(dir.join("id1/diff")).unwrap();
        let upper = dir.join("id1/diff");
        let found = reachable(b"l/ABC", Some(upper.as_os_str().as_bytes()));
        assert_eq!(found, Some(dir.join("l/ABC")));
        assert_eq!(
            reachable(b"l/none", Some(upper.as_os_str().as_bytes())),
            None
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
