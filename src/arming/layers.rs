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
