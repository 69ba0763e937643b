//! Hashing a file through an already-open fd.
//!
//! Why through the fd and never by re-opening the path: at an exec event the fd is the very
//! file being executed; a path can be swapped (rename, symlink) between the event and our
//! open. `pread` leaves the fd's offset alone and no `mmap` is used, so a file truncated
//! while we read it yields a short read, not a SIGBUS that would kill the daemon.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use sha2::Digest as _;

use super::Digest;
use crate::kernel::{FileStat, KernelError, stat_fd};

/// The digests of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigests {
    /// BLAKE3 of the content.
    pub blake3: Digest,
    /// SHA-256, when asked for (audit records: responders look payloads up by SHA-256).
    pub sha256: Option<[u8; 32]>,
    /// The file's stat before reading (identity and fingerprint).
    pub stat: FileStat,
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// `statx` on the fd failed.
    #[error("stat failed: {0}")]
    Stat(#[from] KernelError),
    /// A read failed.
    #[error("read failed at offset {offset}: {source}")]
    Read {
        /// Where.
        offset: u64,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// The content or metadata changed while being read.
    #[error("file changed while being hashed")]
    Changed,
    /// Not a regular file.
    #[error("not a regular file")]
    NotRegular,
    /// The time budget ran out.
    #[error("hash time budget exceeded after {0} bytes")]
    Deadline(u64),
}

/// Size of the read buffer: large enough for BLAKE3's SIMD paths.
pub const HASH_BUFFER: usize = 256 * 1024;

/// Hashes the regular file behind `fd` with BLAKE3 (and SHA-256 if `with_sha256`).
///
/// The file is stat'ed before and after reading; if the size, mtime or ctime moved, or the
/// bytes read differ from the size, the result is [`HashError::Changed`]. `buf` is reused
/// across calls to avoid an allocation per file. `deadline` bounds the time spent.
pub fn hash_fd(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    with_sha256: bool,
    deadline: Option<Instant>,
) -> Result<FileDigests, HashError> {
    hash_fd_checked(fd, buf, with_sha256, deadline, true)
}

/// Like [`hash_fd`] but without the before/after metadata check, for callers that verify
/// the content another way (the audit writer compares the BLAKE3 of its pass with the
/// digest the verdict was made on: an unlink during its read moves the ctime, not the
/// content).
pub fn hash_fd_content(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    with_sha256: bool,
    deadline: Option<Instant>,
) -> Result<FileDigests, HashError> {
    hash_fd_checked(fd, buf, with_sha256, deadline, false)
}

fn hash_fd_checked(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    with_sha256: bool,
    deadline: Option<Instant>,
    check_metadata: bool,
) -> Result<FileDigests, HashError> {
    let before = stat_fd(fd)?;
    if !before.is_regular() {
        return Err(HashError::NotRegular);
    }
    if buf.len() < HASH_BUFFER {
        buf.resize(HASH_BUFFER, 0);
    }
    let mut blake = blake3::Hasher::new();
    let mut sha = with_sha256.then(sha2::Sha256::new);
    let mut offset: u64 = 0;
    loop {
        if let Some(d) = deadline {
            if Instant::now() > d {
                return Err(HashError::Deadline(offset));
            }
        }
        let Ok(pos) = i64::try_from(offset) else {
            return Err(HashError::Changed);
        };
        let n = match nix::sys::uio::pread(fd, &mut buf[..], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(source) => return Err(HashError::Read { offset, source }),
        };
        blake.update(&buf[..n]);
        if let Some(s) = sha.as_mut() {
            s.update(&buf[..n]);
        }
        offset += n as u64;
    }
    if check_metadata {
        let after = stat_fd(fd)?;
        if offset != before.size || !same_content_fingerprint(&before, &after) {
            return Err(HashError::Changed);
        }
    }
    Ok(FileDigests {
        blake3: blake.finalize().into(),
        sha256: sha.map(|s| s.finalize().into()),
        stat: before,
    })
}

/// Files at least this large are hashed in parallel parts by [`hash_fd_split`].
pub const SPLIT_HASH_MIN: u64 = 8 << 20;

/// Like [`hash_fd`] (BLAKE3 only, metadata checked), but a file of at least
/// [`SPLIT_HASH_MIN`] bytes is split into up to `parts` subtrees of the BLAKE3 tree, hashed
/// on scoped threads and merged: the digest is the same, and a large file no longer keeps
/// one core busy while the others wait for it at the end of a snapshot.
pub fn hash_fd_split(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    parts: usize,
) -> Result<FileDigests, HashError> {
    use blake3::hazmat::{Mode, left_subtree_len, merge_subtrees_root};
    let before = stat_fd(fd)?;
    if !before.is_regular() {
        return Err(HashError::NotRegular);
    }
    let len = before.size;
    if parts < 2 || len < SPLIT_HASH_MIN {
        return hash_fd(fd, buf, false, None);
    }
    let left = left_subtree_len(len);
    let (l, r) = std::thread::scope(|s| {
        let right = s.spawn(|| subtree_chaining_value(fd, left, len - left, parts / 2));
        let l = subtree_chaining_value(fd, 0, left, parts - parts / 2);
        (l, right.join().unwrap_or(Err(HashError::Changed)))
    });
    let blake3 = merge_subtrees_root(&l?, &r?, Mode::Hash);
    let after = stat_fd(fd)?;
    if !same_content_fingerprint(&before, &after) {
        return Err(HashError::Changed);
    }
    Ok(FileDigests {
        blake3: blake3.into(),
        sha256: None,
        stat: before,
    })
}

/// The chaining value of the BLAKE3 subtree covering `len` bytes at `offset` (a subtree
/// boundary), split further across `parts` threads while the parts stay large.
fn subtree_chaining_value(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    parts: usize,
) -> Result<blake3::hazmat::ChainingValue, HashError> {
    use blake3::hazmat::{HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};
    if parts >= 2 && len >= SPLIT_HASH_MIN {
        let left = left_subtree_len(len);
        let (l, r) = std::thread::scope(|s| {
            let right =
                s.spawn(|| subtree_chaining_value(fd, offset + left, len - left, parts / 2));
            let l = subtree_chaining_value(fd, offset, left, parts - parts / 2);
            (l, right.join().unwrap_or(Err(HashError::Changed)))
        });
        return Ok(merge_subtrees_non_root(&l?, &r?, Mode::Hash));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut done: u64 = 0;
    while done < len {
        let want = usize::try_from((len - done).min(HASH_BUFFER as u64)).unwrap_or(HASH_BUFFER);
        let pos = i64::try_from(offset + done).map_err(|_| HashError::Changed)?;
        let n = match nix::sys::uio::pread(fd, &mut buf[..want], pos) {
            // Shorter than its stat said: it changed.
            Ok(0) => return Err(HashError::Changed),
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(source) => {
                return Err(HashError::Read {
                    offset: offset + done,
                    source,
                });
            }
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hasher.finalize_non_root())
}

/// True if nothing visible in `stat` says the content changed between `a` and `b`.
pub fn same_content_fingerprint(a: &FileStat, b: &FileStat) -> bool {
    a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.mtime == b.mtime && a.ctime == b.ctime
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn split_hashing_matches_the_plain_digest() {
        // Sizes around the split threshold and the subtree boundaries below it.
        let sizes = [
            SPLIT_HASH_MIN - 1,
            SPLIT_HASH_MIN,
            SPLIT_HASH_MIN + 1,
            SPLIT_HASH_MIN + 1023,
            SPLIT_HASH_MIN * 2 + 1025,
            SPLIT_HASH_MIN * 3 + 5,
        ];
        for size in sizes {
            let mut f = tempfile();
            let data: Vec<u8> = (0..size)
                .map(|i| (i % 253) as u8 ^ (i >> 13) as u8)
                .collect();
            f.write_all(&data).unwrap();
            for parts in [1, 2, 3, 4, 8] {
                let d = hash_fd_split(f.as_fd(), &mut Vec::new(), parts).unwrap();
                assert_eq!(
                    d.blake3,
                    Digest::from(blake3::hash(&data)),
                    "size {size}, {parts} parts"
                );
            }
        }
    }

    #[test]
    fn hashes_match_reference() {
        let mut f = tempfile();
        let data: Vec<u8> = (0..(HASH_BUFFER * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        f.write_all(&data).unwrap();
        let mut buf = Vec::new();
        let d = hash_fd(f.as_fd(), &mut buf, true, None).unwrap();
        assert_eq!(d.blake3, blake3::hash(&data).into());
        let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(d.sha256, Some(sha));
        assert_eq!(d.stat.size, data.len() as u64);
    }

    #[test]
    fn expired_deadline_is_an_error() {
        let mut f = tempfile();
        f.write_all(b"abc").unwrap();
        let past = Instant::now() - std::time::Duration::from_secs(1);
        assert!(matches!(
            hash_fd(f.as_fd(), &mut Vec::new(), false, Some(past)),
            Err(HashError::Deadline(0))
        ));
    }

    #[test]
    fn directory_is_not_regular() {
        let d = std::fs::File::open("/").unwrap();
        assert!(matches!(
            hash_fd(d.as_fd(), &mut Vec::new(), false, None),
            Err(HashError::NotRegular)
        ));
    }

    pub(crate) fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "driftlock-hash-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
