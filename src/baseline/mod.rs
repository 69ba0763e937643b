//! The per-image baseline: which program contents a container may execute.
//!
//! A baseline is the set of BLAKE3 digests of every regular file with an exec bit in the
//! image's rootfs, plus the path, size and mode each was found at (for people: `show`,
//! `diff`, audit context). The verdict depends on content only (DESIGN invariant 2): a copy
//! of an image binary under another name is the same program; a modified image binary is
//! not.

pub mod elf;
pub mod format;
pub mod hash;
pub mod indicators;
pub mod snapshot;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub use format::FormatError;
pub use hash::{FileDigests, HashError, hash_fd, hash_fd_content};
pub use snapshot::{
    Snapshot, SnapshotError, SnapshotFileError, SnapshotLimits, snapshot, snapshot_checked,
    snapshot_limited,
};
pub use store::{BaselineStore, StoreError};

/// A BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Digest(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

/// Digests are uniformly random already: hashing them again is wasted work.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

/// File names of JIT runtimes: an image holding one makes code in memory by design
/// (anonymous executable memory, .NET's memfd double mapping), so memory-only code is not
/// refused in its containers. Matched against each baseline file's name; `*` ends a prefix.
pub const JIT_RUNTIMES: &[&str] = &[
    "libjvm.so",
    "libcoreclr.so",
    "libclrjit.so",
    "libmonosgen-2.0.so*",
    "node",
    "nodejs",
    "libnode.so*",
    "deno",
    "bun",
    "libv8.so*",
    "libv8_libbase.so*",
    "luajit*",
    "libluajit*",
    "pypy*",
    "libpypy*",
    "beam.smp",
    "libmozjs*",
    "libjavascriptcoregtk*",
    "libjulia.so*",
    "libLLVM*",
    "libgccjit.so*",
    "libwasmtime.so*",
    "chrome",
    "chromium",
    "electron",
    "qemu-*",
];

/// File names of runtimes that make closures in executable memory (libffi's, for
/// callbacks): where static trampolines are off (Debian 12's libffi), anonymous executable
/// memory first, then a memfd mapped writable and executable.
pub const CLOSURE_RUNTIMES: &[&str] = &[
    "_ctypes.cpython-*",
    "_ctypes.so",
    "_cffi_backend*",
    "fiddle.so",
    "libgirepository-1.0.so*",
    "libgirepository-2.0.so*",
    "Platypus.so",
];

/// One executable found in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineEntry {
    /// Path relative to the rootfs, starting with `/`, as raw bytes.
    pub path: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// BLAKE3 of the content.
    pub blake3: Digest,
}

/// A dynamic loader named by the image's programs (`PT_INTERP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderEntry {
    /// The interpreter path as the programs name it (e.g. `/lib64/ld-linux-x86-64.so.2`).
    pub path: Vec<u8>,
    /// BLAKE3 of the file it resolves to in the rootfs.
    pub blake3: Digest,
}

/// A per-image baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    key: Vec<u8>,
    source: Vec<u8>,
    created: u64,
    entries: Vec<BaselineEntry>,
    index: HashSet<Digest, BuildHasherDefault<DigestHasher>>,
    loaders: Vec<LoaderEntry>,
    loader_index: HashSet<Digest, BuildHasherDefault<DigestHasher>>,
    known_bad: Vec<indicators::KnownBad>,
    /// The size of the largest executable (known-bad ones included): content any larger
    /// cannot be in the baseline.
    largest: u64,
    /// Every executable's size (known-bad ones included).
    sizes: HashSet<u64>,
    /// Every loader is also among the executables, so `sizes` holds its size too.
    loaders_sized: bool,
}

impl PartialEq for Baseline {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.source == other.source
            && self.created == other.created
            && self.entries == other.entries
            && self.loaders == other.loaders
            && self.known_bad == other.known_bad
    }
}

impl Baseline {
    /// Builds a baseline; entries are sorted by path so the file form is deterministic.
    pub fn new(
        key: Vec<u8>,
        source: Vec<u8>,
        created: u64,
        mut entries: Vec<BaselineEntry>,
    ) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let index = entries.iter().map(|e| e.blake3).collect();
        let largest = entries.iter().map(|e| e.size).max().unwrap_or(0);
        let sizes = entries.iter().map(|e| e.size).collect();
        Self {
            key,
            source,
            created,
            entries,
            index,
            largest,
            sizes,
            loaders_sized: true,
            loaders: Vec::new(),
            loader_index: HashSet::default(),
            known_bad: Vec::new(),
        }
    }

    /// Takes files that matched an indicator out of the allowed contents.
    pub fn with_known_bad(mut self, mut bad: Vec<indicators::KnownBad>) -> Self {
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        for b in &bad {
            self.entries.retain(|e| e.blake3 != b.blake3);
            self.index.remove(&b.blake3);
        }
        self.known_bad = bad;
        self
    }

    /// Files of the image that matched an indicator (denied, reason `known-bad`).
    pub fn known_bad(&self) -> &[indicators::KnownBad] {
        &self.known_bad
    }

    /// True if this content matched an indicator at snapshot time.
    pub fn is_known_bad(&self, digest: &Digest) -> bool {
        self.known_bad.iter().any(|b| b.blake3 == *digest)
    }

    /// Adds the image's dynamic loaders (sorted by path, deduplicated).
    pub fn with_loaders(mut self, mut loaders: Vec<LoaderEntry>) -> Self {
        loaders.sort_by(|a, b| a.path.cmp(&b.path));
        loaders.dedup();
        self.loader_index = loaders.iter().map(|l| l.blake3).collect();
        self.loaders_sized = loaders.iter().all(|l| self.index.contains(&l.blake3));
        self.loaders = loaders;
        self
    }

    /// The image's dynamic loaders.
    pub fn loaders(&self) -> &[LoaderEntry] {
        &self.loaders
    }

    /// True if this content is one of the image's dynamic loaders: an exec of it needs the
    /// direct-invocation check.
    pub fn is_loader(&self, digest: &Digest) -> bool {
        self.loader_index.contains(digest)
    }

    /// The image key the baseline belongs to.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
    /// Names where it was taken from (informational), when the snapshot's root path does
    /// not say (a detached mount of the image's layers).
    pub fn with_source(mut self, source: Vec<u8>) -> Self {
        self.source = source;
        self
    }

    /// The rootfs path it was taken from (informational).
    pub fn source(&self) -> &[u8] {
        &self.source
    }
    /// Creation time, seconds since the epoch.
    pub fn created(&self) -> u64 {
        self.created
    }
    /// The first file of the image that is a JIT runtime (by name, [`JIT_RUNTIMES`]), as a
    /// path.
    pub fn jit_runtime(&self) -> Option<&[u8]> {
        self.first_named(JIT_RUNTIMES)
    }

    /// The first file of the image that makes closures in executable memory (by name,
    /// [`CLOSURE_RUNTIMES`]), as a path.
    pub fn closure_runtime(&self) -> Option<&[u8]> {
        self.first_named(CLOSURE_RUNTIMES)
    }

    /// The first entry whose file name matches one of `patterns` (`*` ends a prefix).
    pub fn first_named(&self, patterns: &[&str]) -> Option<&[u8]> {
        self.entries.iter().map(|e| e.path.as_slice()).find(|p| {
            let name = p.rsplit(|b| *b == b'/').next().unwrap_or(p);
            patterns.iter().any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix.as_bytes()),
                None => name == pat.as_bytes(),
            })
        })
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[BaselineEntry] {
        &self.entries
    }
    /// True if content of `size` bytes could be in the baseline: some executable (or,
    /// where a loader is not an executable of its own and its size is unknown, anything up
    /// to the largest) has that size. Content of any other size is not in it, unread.
    pub fn may_hold_size(&self, size: u64) -> bool {
        if self.loaders_sized {
            self.sizes.contains(&size)
        } else {
            size <= self.largest
        }
    }

    /// Number of distinct contents.
    pub fn distinct_contents(&self) -> usize {
        self.index.len()
    }
    /// The size of the largest executable of the image: a file larger than this cannot
    /// have content that is in the baseline, so it need not be hashed to be judged.
    pub fn largest(&self) -> u64 {
        self.largest
    }
    /// True if a program with this content may run.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.index.contains(digest)
    }
    /// Differences from `self` to `other`, by path.
    pub fn diff<'a>(&'a self, other: &'a Baseline) -> BaselineDiff<'a> {
        let mine: HashMap<&[u8], &BaselineEntry> = self
            .entries
            .iter()
            .map(|e| (e.path.as_slice(), e))
            .collect();
        let theirs: HashMap<&[u8], &BaselineEntry> = other
            .entries
            .iter()
            .map(|e| (e.path.as_slice(), e))
            .collect();
        let mut diff = BaselineDiff::default();
        for e in &self.entries {
            match theirs.get(e.path.as_slice()) {
                None => diff.removed.push(e),
                Some(o) if o.blake3 != e.blake3 || o.mode != e.mode => diff.changed.push((e, o)),
                Some(_) => {}
            }
        }
        for e in &other.entries {
            if !mine.contains_key(e.path.as_slice()) {
                diff.added.push(e);
            }
        }
        diff
    }
}

/// What changed between two baselines.
#[derive(Debug, Default)]
pub struct BaselineDiff<'a> {
    /// Paths only in the second.
    pub added: Vec<&'a BaselineEntry>,
    /// Paths only in the first.
    pub removed: Vec<&'a BaselineEntry>,
    /// Paths in both with different content or mode (first, second).
    pub changed: Vec<(&'a BaselineEntry, &'a BaselineEntry)>,
}

impl BaselineDiff<'_> {
    /// True if the baselines hold the same paths with the same contents.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
pub(crate) fn test_entry(path: &str, content: &[u8]) -> BaselineEntry {
    BaselineEntry {
        path: path.as_bytes().to_vec(),
        size: content.len() as u64,
        mode: 0o755,
        blake3: blake3::hash(content).into(),
    }
}

/// True if the open file is an ELF shared object (`ET_DYN`: a library, or a position-
/// independent program), read from its header through `fd` (a regular file's).
pub fn is_shared_object(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    const ET_DYN: u16 = 3;
    let mut header = [0u8; 18];
    if !matches!(nix::sys::uio::pread(fd, &mut header, 0), Ok(18)) || header[..4] != *b"\x7fELF" {
        return false;
    }
    // e_type follows the 16-byte identification, in the file's byte order (EI_DATA).
    let e_type = match header[5] {
        2 => u16::from_be_bytes([header[16], header[17]]),
        _ => u16::from_le_bytes([header[16], header[17]]),
    };
    e_type == ET_DYN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_that_make_code_in_memory_are_found_by_file_name() {
        let b = |paths: &[&str]| {
            Baseline::new(
                b"k".to_vec(),
                b"/r".to_vec(),
                0,
                paths.iter().map(|p| test_entry(p, p.as_bytes())).collect(),
            )
        };
        let plain = b(&["/bin/sh", "/usr/lib/x86_64-linux-gnu/libffi.so.8"]);
        assert_eq!(plain.jit_runtime(), None);
        assert_eq!(
            plain.closure_runtime(),
            None,
            "libffi alone makes no closures"
        );
        let jvm = b(&["/bin/sh", "/usr/lib/jvm/lib/server/libjvm.so"]);
        assert_eq!(
            jvm.jit_runtime(),
            Some(&b"/usr/lib/jvm/lib/server/libjvm.so"[..])
        );
        let node = b(&["/usr/local/bin/node"]);
        assert!(node.jit_runtime().is_some());
        let nodejs_lib = b(&["/usr/lib/nodejs/x.js"]);
        assert!(
            nodejs_lib.jit_runtime().is_none(),
            "by file name, not directory"
        );
        let py = b(&["/usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so"]);
        assert!(py.jit_runtime().is_none() && py.closure_runtime().is_some());
    }

    #[test]
    fn lookup_is_by_content_not_name() {
        let b = Baseline::new(
            b"k".to_vec(),
            b"/r".to_vec(),
            0,
            vec![test_entry("/bin/sh", b"sh"), test_entry("/bin/ls", b"ls")],
        );
        assert!(b.contains(&blake3::hash(b"sh").into()));
        assert!(!b.contains(&blake3::hash(b"payload").into()));
        let ls: Digest = blake3::hash(b"ls").into();
        assert_eq!(
            b.entries()
                .iter()
                .find(|e| e.blake3 == ls)
                .map(|e| e.path.as_slice()),
            Some(&b"/bin/ls"[..])
        );
        assert_eq!(b.entries()[0].path, b"/bin/ls");
    }

    #[test]
    fn diff_reports_added_removed_changed() {
        let a = Baseline::new(
            vec![],
            vec![],
            0,
            vec![test_entry("/a", b"1"), test_entry("/b", b"2")],
        );
        let b = Baseline::new(
            vec![],
            vec![],
            0,
            vec![test_entry("/b", b"3"), test_entry("/c", b"4")],
        );
        let d = a.diff(&b);
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.changed.len(), 1);
        assert!(a.diff(&a).is_empty());
    }

    #[test]
    fn digest_hex_round_trip() {
        let d: Digest = blake3::hash(b"x").into();
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
