//! Snapshot: walk a rootfs and hash every executable, on all cores.
//!
//! The walk opens every directory and file with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` relative to the rootfs, so it never follows a
//! symlink (not even in a parent component swapped during the walk) and never crosses into
//! another mount: a tmpfs or bind mount inside the rootfs is covered by its own mark, not
//! by the image's baseline. One thread walks while the others hash, so directory I/O and
//! hashing overlap.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::dir::{Dir, Type};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat as NixStat, Mode as NixMode, SFlag, fstatat};

use super::hash::{HashError, hash_fd, hash_fd_split};
use super::indicators::{Indicators, KnownBad};
use super::{Baseline, BaselineEntry, LoaderEntry, elf};
use crate::escape::escape_bytes;

/// A file that could not be taken into the baseline (it will be denied if executed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFileError {
    /// Path relative to the rootfs.
    pub path: Vec<u8>,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", escape_bytes(&self.path), self.reason)
    }
}

/// A snapshot that could not be taken at all.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The rootfs could not be opened.
    #[error("cannot open rootfs {}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Root {
        /// The rootfs.
        path: PathBuf,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// The snapshot ran past its deadline (a huge or slow image, or files made to be slow
    /// to read): it is abandoned rather than stored half done.
    #[error(
        "snapshot abandoned after {secs} s (the deadline): {files} files hashed, {bytes} bytes"
    )]
    Deadline {
        /// The deadline, seconds.
        secs: u64,
        /// Files hashed by then.
        files: usize,
        /// Bytes hashed by then.
        bytes: u64,
    },
    /// The image holds more executables and libraries than a baseline may (a crafted image
    /// would cost every container of it memory, and the daemon with it).
    #[error(
        "the image holds more than {limit} executables and libraries: refused (a baseline that large would cost every container of this image its memory)"
    )]
    TooManyFiles {
        /// The cap.
        limit: usize,
    },
}

/// Bounds on one snapshot, so an image (or a container that writes into its own rootfs
/// before a snapshot) cannot hold an arm, or a restarted daemon's start, indefinitely.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// Executables larger than this are not hashed: left out of the baseline (denied if
    /// executed) and listed among the skipped files.
    pub max_file: u64,
    /// The snapshot is abandoned after this long.
    pub deadline: std::time::Duration,
    /// At most this many files are taken (executables and libraries); an image with more
    /// is refused.
    pub max_entries: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits {
            max_file: 4 << 30,
            deadline: std::time::Duration::from_secs(90),
            max_entries: MAX_BASELINE_ENTRIES,
        }
    }
}

/// The most files a baseline may hold. Real images hold a few thousand to a few tens of
/// thousands (a full Debian with compilers and Python: about 5,000).
pub const MAX_BASELINE_ENTRIES: usize = 100_000;

/// The result of a snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// The baseline.
    pub baseline: Baseline,
    /// Files skipped with a reason.
    pub errors: Vec<SnapshotFileError>,
    /// Bytes hashed.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_XDEV);

fn open_beneath(root: &OwnedFd, rel: &[u8], extra: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | extra)
        .resolve(RESOLVE);
    // The root itself is "."; every other path is relative ("bin/sh").
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    openat2(root.as_fd(), OsStr::from_bytes(rel), how)
}

struct Job {
    rel: Vec<u8>,
    /// A shared object without an exec bit: kept if it is ELF (its code is mapped, not
    /// exec'd; the mapping gate needs it).
    library: bool,
}

/// True for names of shared objects (`libc.so.6`, `x.so`, `_ssl.cpython-311-x86_64-linux-gnu.so`,
/// and Node's native addons, `x.node`).
fn looks_like_library(name: &[u8]) -> bool {
    name.ends_with(b".so") || name.ends_with(b".node") || name.windows(4).any(|w| w == b".so.")
}

enum Outcome {
    /// A program, with the interpreter it names (if dynamically linked) and the known-bad
    /// indicator it matched (if any).
    Entry(BaselineEntry, Option<Vec<u8>>, Option<String>),
    Skipped(SnapshotFileError),
    /// Named like a library but not ELF: not code.
    Ignored,
}

/// Walks `root` and hashes every regular file with an exec bit. `threads` hashing threads
/// (0 = one per core) run beside the walker.
pub fn snapshot(root: &Path, key: Vec<u8>, threads: usize) -> Result<Snapshot, SnapshotError> {
    snapshot_checked(root, key, threads, None)
}

/// Like [`snapshot`], also checking every file against a known-bad indicator list (this
/// reads each file a second time for SHA-256 and MD5).
pub fn snapshot_checked(
    root: &Path,
    key: Vec<u8>,
    threads: usize,
    indicators: Option<&Indicators>,
) -> Result<Snapshot, SnapshotError> {
    snapshot_limited(root, key, threads, indicators, SnapshotLimits::default())
}

/// Like [`snapshot_checked`], within `limits`.
pub fn snapshot_limited(
    root: &Path,
    key: Vec<u8>,
    threads: usize,
    indicators: Option<&Indicators>,
    limits: SnapshotLimits,
) -> Result<Snapshot, SnapshotError> {
    let started = Instant::now();
    let deadline = started + limits.deadline;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
    .map_err(|source| SnapshotError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        threads
    };
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(1024);
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<(Outcome, u64)>();

    let mut walk_errors = Vec::new();
    let cut_short = std::sync::atomic::AtomicBool::new(false);
    let mut queued = 0usize;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let out_tx = out_tx.clone();
            let root_fd = &root_fd;
            let cut_short = &cut_short;
            scope.spawn(move || {
                let mut buf = Vec::new();
                for job in job_rx {
                    if Instant::now() > deadline {
                        cut_short.store(true, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    let result = hash_one(
                        root_fd,
                        &job.rel,
                        job.library,
                        &mut buf,
                        indicators,
                        threads,
                    );
                    if out_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(out_tx);
        if !walk(
            &root_fd,
            &job_tx,
            &mut walk_errors,
            &limits,
            deadline,
            &mut queued,
        ) {
            cut_short.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(job_tx);
    });

    let mut entries = Vec::new();
    let mut errors = walk_errors;
    let mut bytes = 0;
    let mut interpreters: Vec<Vec<u8>> = Vec::new();
    let mut known_bad = Vec::new();
    for (outcome, n) in out_rx.try_iter() {
        bytes += n;
        match outcome {
            Outcome::Entry(e, interp, bad) => {
                if let Some(indicator) = bad {
                    known_bad.push(KnownBad {
                        path: e.path.clone(),
                        blake3: e.blake3,
                        indicator,
                    });
                }
                entries.push(e);
                if let Some(i) = interp {
                    if !interpreters.contains(&i) {
                        interpreters.push(i);
                    }
                }
            }
            Outcome::Skipped(e) => errors.push(e),
            Outcome::Ignored => {}
        }
    }
    if queued > limits.max_entries {
        return Err(SnapshotError::TooManyFiles {
            limit: limits.max_entries,
        });
    }
    if cut_short.into_inner() {
        return Err(SnapshotError::Deadline {
            secs: limits.deadline.as_secs(),
            files: entries.len(),
            bytes,
        });
    }
    let loaders = resolve_loaders(&root_fd, &interpreters, &mut errors);
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Snapshot {
        baseline: Baseline::new(key, root.as_os_str().as_bytes().to_vec(), created, entries)
            .with_loaders(loaders)
            .with_known_bad(known_bad),
        errors,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Resolves each interpreter path inside the rootfs (symlinks followed within it, as the
/// kernel would for the container) and hashes the file it names.
fn resolve_loaders(
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

fn is_executable(st: &NixStat) -> bool {
    st.st_mode & 0o111 != 0
}

fn walk(
    root: &OwnedFd,
    jobs: &crossbeam_channel::Sender<Job>,
    errors: &mut Vec<SnapshotFileError>,
    limits: &SnapshotLimits,
    deadline: Instant,
    queued: &mut usize,
) -> bool {
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    let root_dev = nix::sys::stat::fstat(root.as_fd()).map(|s| s.st_dev).ok();
    let root_mount = crate::kernel::mount_id_at(root.as_fd(), OsStr::new("."));
    // A file on another device is either bind mounted over the rootfs (another mount:
    // covered by its own mark) or an overlay file whose layer is on another filesystem
    // (overlay then gives each layer's files a device number of its own): its mount tells.
    let same_mount = |dir: &OwnedFd, name: &[u8]| {
        root_mount.is_some()
            && crate::kernel::mount_id_at(dir.as_fd(), OsStr::from_bytes(name)) == root_mount
    };
    while let Some(dir_rel) = stack.pop() {
        if Instant::now() > deadline {
            return false;
        }
        let skip = |errors: &mut Vec<SnapshotFileError>, rel: &[u8], reason: String| {
            errors.push(SnapshotFileError {
                path: display_path(rel),
                reason,
            })
        };
        let dir_fd = match open_beneath(root, &dir_rel, OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            // A mount point inside the rootfs: another filesystem, covered by its own mark.
            Err(nix::Error::EXDEV) => continue,
            Err(e) => {
                skip(errors, &dir_rel, format!("cannot open directory: {e}"));
                continue;
            }
        };
        let Ok(dup) = dir_fd.try_clone() else {
            skip(errors, &dir_rel, "cannot duplicate directory fd".into());
            continue;
        };
        let mut dir = match Dir::from_fd(dup) {
            Ok(d) => d,
            Err(e) => {
                skip(errors, &dir_rel, format!("cannot read directory: {e}"));
                continue;
            }
        };
        for entry in dir.iter() {
            let Ok(entry) = entry else {
                skip(errors, &dir_rel, "error while reading directory".into());
                break;
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            // The relative path is built only for what is kept: most entries are data files.
            let rel_of = |name: &[u8]| {
                let mut rel = Vec::with_capacity(dir_rel.len() + 1 + name.len());
                rel.extend_from_slice(&dir_rel);
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name);
                rel
            };
            let kind = match entry.file_type() {
                Some(t) => Some(t),
                None => fstatat(
                    dir_fd.as_fd(),
                    OsStr::from_bytes(name),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()
                .map(|st| {
                    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                        SFlag::S_IFDIR => Type::Directory,
                        SFlag::S_IFREG => Type::File,
                        _ => Type::Symlink,
                    }
                }),
            };
            match kind {
                Some(Type::Directory) => stack.push(rel_of(name)),
                Some(Type::File) => {
                    // Only files with an exec bit: stat here to avoid queuing data files.
                    match fstatat(
                        dir_fd.as_fd(),
                        OsStr::from_bytes(name),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st)
                            if is_executable(&st)
                                && (Some(st.st_dev) == root_dev || same_mount(&dir_fd, name))
                                && st.st_size as u64 > limits.max_file =>
                        {
                            skip(
                                errors,
                                &rel_of(name),
                                format!(
                                    "{} bytes, over the snapshot's per-file limit of {} bytes: not hashed",
                                    st.st_size, limits.max_file
                                ),
                            );
                        }
                        Ok(st)
                            if is_executable(&st)
                                && (Some(st.st_dev) == root_dev || same_mount(&dir_fd, name)) =>
                        {
                            *queued += 1;
                            if *queued > limits.max_entries {
                                return false;
                            }
                            if jobs
                                .send(Job {
                                    rel: rel_of(name),
                                    library: false,
                                })
                                .is_err()
                            {
                                return false;
                            }
                        }
                        Ok(st)
                            if looks_like_library(name)
                                && st.st_size as u64 <= limits.max_file
                                && (Some(st.st_dev) == root_dev || same_mount(&dir_fd, name)) =>
                        {
                            *queued += 1;
                            if *queued > limits.max_entries {
                                return false;
                            }
                            if jobs
                                .send(Job {
                                    rel: rel_of(name),
                                    library: true,
                                })
                                .is_err()
                            {
                                return false;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => skip(errors, &rel_of(name), format!("cannot stat: {e}")),
                    }
                }
                _ => {}
            }
        }
    }
    true
}

fn display_path(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
}

fn hash_one(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "driftlock-snap-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin/sub")).unwrap();
        let write = |p: &str, data: &[u8], mode: u32| {
            let path = dir.join(p);
            std::fs::write(&path, data).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("bin/sh", b"shell", 0o755);
        write("bin/sub/tool", b"tool", 0o700);
        write("bin/data", b"data", 0o644);
        write("bin/odd\nname\u{7f}", b"odd", 0o755);
        symlink("/bin/true", dir.join("bin/link")).unwrap();
        symlink("../..", dir.join("bin/up")).unwrap();
        dir
    }

    #[test]
    fn takes_executables_only_and_never_follows_symlinks() {
        let dir = tree();
        let snap = snapshot(&dir, b"k".to_vec(), 2).unwrap();
        let paths: Vec<&[u8]> = snap
            .baseline
            .entries()
            .iter()
            .map(|e| e.path.as_slice())
            .collect();
        assert_eq!(
            paths,
            vec![&b"/bin/odd\nname\x7f"[..], b"/bin/sh", b"/bin/sub/tool"]
        );
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert!(snap.baseline.contains(&blake3::hash(b"shell").into()));
        assert_eq!(snap.baseline.entries()[2].mode, 0o700);
        assert_eq!(snap.bytes, 3 + 5 + 4);
        assert!(snap.baseline.loaders().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_image_with_more_files_than_the_cap_is_refused() {
        let dir = tree();
        let limits = SnapshotLimits {
            max_entries: 2,
            ..SnapshotLimits::default()
        };
        let err = snapshot_limited(&dir, b"k".to_vec(), 2, None, limits).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TooManyFiles { limit: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 2 executables"), "{err}");
        let limits = SnapshotLimits {
            max_entries: 3,
            ..SnapshotLimits::default()
        };
        assert_eq!(
            snapshot_limited(&dir, b"k".to_vec(), 2, None, limits)
                .unwrap()
                .baseline
                .entries()
                .len(),
            3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_loader_of_dynamic_programs_is_found_through_symlinks_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("driftlock-snap-ld-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let interp = {
            let f = std::fs::File::open("/usr/bin/true").unwrap();
            elf::interpreter(f.as_fd()).unwrap()
        };
        let interp_path = std::path::Path::new(OsStr::from_bytes(&interp));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::copy("/usr/bin/true", dir.join("bin/true")).unwrap();
        // The loader lives elsewhere in the image; PT_INTERP reaches it through an absolute
        // symlink that must resolve inside the rootfs, not on the host.
        std::fs::write(dir.join("real/ld.so"), b"not the host's loader").unwrap();
        std::fs::set_permissions(
            dir.join("real/ld.so"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let link = dir.join(interp_path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink("/real/ld.so", &link).unwrap();
        let snap = snapshot(&dir, vec![], 1).unwrap();
        assert_eq!(snap.baseline.loaders().len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.baseline.loaders()[0].path, interp);
        assert!(
            snap.baseline
                .is_loader(&blake3::hash(b"not the host's loader").into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(snapshot(Path::new("/nonexistent/driftlock"), vec![], 1).is_err());
    }
}
