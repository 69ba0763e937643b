//! Hashing one file of a rootfs (opened beneath it, never following a symlink), and the
//! dynamic loaders its programs name.

use super::*;

pub(super) enum Outcome {
    /// A program, with the interpreter it names (if dynamically linked) and the known-bad
    /// indicator it matched (if any).
    Entry(BaselineEntry, Option<Vec<u8>>, Option<String>),
    Skipped(SnapshotFileError),
    /// Named like a library but not ELF: not code.
    Ignored,
}

/// Resolves each interpreter path inside the rootfs (symlinks followed within it, as the
/// kernel would for the container) and hashes the file it names.
pub(super) fn resolve_loaders(
    root: &OwnedFd,
    interpreters: &[Vec<u8>],
    errors: &mut Vec<SnapshotFileError>,
) -> Vec<LoaderEntry> {
    let mut buf = Vec::new();
    let mut loaders = Vec::new();
    for interp in interpreters {
        let rel: &[u8] = interp.strip_prefix(b"/").unwrap_or(interp);
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        let fd = match openat2(root.as_fd(), OsStr::from_bytes(rel), how) {
            // Programs naming a loader the image lacks cannot run at all: nothing to check.
            Err(nix::Error::ENOENT) => continue,
            other => other,
        };
        let result = fd
            .map_err(|e| format!("interpreter named by the image's programs cannot be opened: {e}"))
            .and_then(|fd| hash_fd(fd.as_fd(), &mut buf, false, None).map_err(|e| e.to_string()));
        match result {
            Ok(d) => loaders.push(LoaderEntry {
                path: interp.clone(),
                blake3: d.blake3,
            }),
            Err(reason) => errors.push(SnapshotFileError {
                path: interp.clone(),
                reason,
            }),
        }
    }
    loaders
}

pub(super) fn hash_one(
    root: &OwnedFd,
    rel: &[u8],
    library: bool,
    buf: &mut Vec<u8>,
    indicators: Option<&Indicators>,
    parts: usize,
) -> (Outcome, u64) {
    let path = display_path(rel);
    let skipped = |reason: String| {
        (
            Outcome::Skipped(SnapshotFileError {
                path: path.clone(),
                reason,
            }),
            0,
        )
    };
    // O_NONBLOCK: a FIFO swapped in for the file must not block the open.
    let fd = match open_beneath(root, rel, OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return skipped(format!("cannot open: {e}")),
    };
    if library {
        let mut magic = [0u8; 4];
        if !matches!(nix::sys::uio::pread(fd.as_fd(), &mut magic, 0), Ok(4)) || magic != *b"\x7fELF"
        {
            return (Outcome::Ignored, 0);
        }
    }
    match hash_fd_split(fd.as_fd(), buf, parts) {
        Ok(d) if library || d.stat.mode & 0o111 != 0 => (
            Outcome::Entry(
                BaselineEntry {
                    path: path.clone(),
                    size: d.stat.size,
                    mode: d.stat.mode & 0o7777,
                    blake3: d.blake3,
                },
                elf::interpreter(fd.as_fd()),
                indicators
                    .and_then(|i| i.check(fd.as_fd()))
                    .map(|(hash, _)| hash),
            ),
            d.stat.size,
        ),
        Ok(_) => skipped("exec bit removed during the snapshot".into()),
        Err(HashError::NotRegular) => {
            skipped("replaced by a non-regular file during the snapshot".into())
        }
        Err(e) => skipped(e.to_string()),
    }
}
