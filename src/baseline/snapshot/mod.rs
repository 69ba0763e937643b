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

mod hashing;
mod walk;

use hashing::*;
use walk::walk;

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
                hash_jobs(
                    job_rx,
                    out_tx,
                    root_fd,
                    deadline,
                    cut_short,
                    (indicators, threads),
                )
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

    let Gathered {
        entries,
        mut errors,
        bytes,
        interpreters,
        known_bad,
    } = gather(out_rx, walk_errors);
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

/// What the hashing threads found.
struct Gathered {
    entries: Vec<BaselineEntry>,
    errors: Vec<SnapshotFileError>,
    bytes: u64,
    /// The interpreters (dynamic loaders) the programs name, each once.
    interpreters: Vec<Vec<u8>>,
    known_bad: Vec<KnownBad>,
}

/// Collects the hashing threads' outcomes (after the walk's own errors).
fn gather(
    out_rx: crossbeam_channel::Receiver<(Outcome, u64)>,
    walk_errors: Vec<SnapshotFileError>,
) -> Gathered {
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
    Gathered {
        entries,
        errors,
        bytes,
        interpreters,
        known_bad,
    }
}

/// A hashing thread: hashes queued files until the queue closes or the deadline passes
/// (then the snapshot is cut short). `(indicators, threads)`: the known-bad list to check
/// against, and how many threads share the work.
fn hash_jobs(
    job_rx: crossbeam_channel::Receiver<Job>,
    out_tx: crossbeam_channel::Sender<(Outcome, u64)>,
    root_fd: &OwnedFd,
    deadline: Instant,
    cut_short: &std::sync::atomic::AtomicBool,
    (indicators, threads): (Option<&Indicators>, usize),
) {
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
}

fn is_executable(st: &NixStat) -> bool {
    st.st_mode & 0o111 != 0
}

pub(super) fn display_path(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
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
