//! The verdict cache: file identity → what its content was found to be.
//!
//! A cached finding must never outlive a change of the file's content (DESIGN invariant 4).
//! Three mechanisms together make that hold:
//!
//! 1. **Fingerprint check on every hit.** The entry keeps the size, mtime and ctime seen
//!    when the content was hashed; `write(2)`, truncate (even by path, with no open fd),
//!    overlay copy-up (a new upper inode, new ctime) and rename-over (another inode or new
//!    ctime) all move one of them.
//! 2. **Invalidation on `FAN_CLOSE_WRITE`.** A write through a shared `mmap` on tmpfs moves
//!    no timestamp (measured). But every writer holds a write-open file, exec fails with
//!    ETXTBSY while one is open, and the close event is queued before the writer count drops,
//!    so the engine reads it before the event of any exec that can succeed afterwards.
//! 3. **Racily clean entries are not stored** (git's rule): if the ctime is within the
//!    timestamp granularity of the moment hashing started, a later change could leave the
//!    fingerprint unchanged, so the finding is not cached.
//!
//! The cache lives inside one unit; disarming the unit drops it, since device numbers of
//! overlay and tmpfs filesystems are reused by the next container.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::policy::Finding;
use crate::baseline::Digest;
use crate::kernel::{FileStat, Timestamp};

/// The identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl From<&FileStat> for FileKey {
    fn from(s: &FileStat) -> Self {
        FileKey {
            dev: s.dev,
            ino: s.ino,
        }
    }
}

/// A fast, allocation-free hasher for `(dev, ino)` keys (multiply-xorshift).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What the cache stores about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedFinding {
    size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
    /// The finding (in baseline or not).
    pub finding: Finding,
    /// BLAKE3 of the content that was found.
    pub blake3: Digest,
}

/// Timestamps can be this coarse (a jiffy at HZ=100, plus margin).
pub const RACY_WINDOW_NS: i128 = 20_000_000;

/// Counters of a cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that needed hashing.
    pub misses: u64,
    /// Entries dropped because the file changed.
    pub invalidations: u64,
    /// Findings not stored because they were racily clean.
    pub racy_skips: u64,
}

/// The per-unit verdict cache.
#[derive(Debug)]
pub struct VerdictCache {
    map: HashMap<FileKey, CachedFinding, BuildHasherDefault<KeyHasher>>,
    capacity: usize,
    stats: CacheStats,
}

impl VerdictCache {
    /// A cache holding at most `capacity` files.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            capacity: capacity.max(1),
            stats: CacheStats::default(),
        }
    }

    /// The cached finding for the file with this stat, if its fingerprint still matches.
    /// A stale entry is dropped.
    pub fn lookup(&mut self, stat: &FileStat) -> Option<CachedFinding> {
        let key = FileKey::from(stat);
        match self.map.get(&key) {
            Some(e) if e.size == stat.size && e.mtime == stat.mtime && e.ctime == stat.ctime => {
                self.stats.hits += 1;
                Some(*e)
            }
            Some(_) => {
                self.map.remove(&key);
                self.stats.invalidations += 1;
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores a finding for the content hashed from a file with stat `stat`, unless the
    /// entry would be racily clean with respect to `hash_started` (wall clock).
    pub fn insert(
        &mut self,
        stat: &FileStat,
        finding: Finding,
        blake3: Digest,
        hash_started: Timestamp,
    ) -> bool {
        if matches!(finding, Finding::Unverifiable(_)) {
            return false;
        }
        if stat.ctime.as_nanos() + RACY_WINDOW_NS >= hash_started.as_nanos()
            || stat.mtime.as_nanos() + RACY_WINDOW_NS >= hash_started.as_nanos()
        {
            self.stats.racy_skips += 1;
            return false;
        }
        if self.map.len() >= self.capacity {
            // Evict an arbitrary entry: bounded memory matters more than the hit rate of a
            // cache this full.
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(
            FileKey::from(stat),
            CachedFinding {
                size: stat.size,
                mtime: stat.mtime,
                ctime: stat.ctime,
                finding,
                blake3,
            },
        );
        true
    }

    /// Drops the entry of a file whose content may have changed.
    pub fn invalidate(&mut self, key: FileKey) {
        if self.map.remove(&key).is_some() {
            self.stats.invalidations += 1;
        }
    }

    /// Drops everything (after a queue overflow: invalidations may have been lost).
    pub fn clear(&mut self) {
        self.stats.invalidations += self.map.len() as u64;
        self.map.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

/// Current wall-clock time as a [`Timestamp`].
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nsec: d.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, size: u64, t: i64) -> FileStat {
        FileStat {
            dev: 7,
            ino,
            mnt_id: 1,
            size,
            mode: libc::S_IFREG | 0o755,
            mtime: Timestamp { sec: t, nsec: 0 },
            ctime: Timestamp { sec: t, nsec: 0 },
        }
    }
    const LATER: Timestamp = Timestamp { sec: 1000, nsec: 0 };
    fn d(b: &[u8]) -> Digest {
        blake3::hash(b).into()
    }

    #[test]
    fn hit_requires_same_fingerprint() {
        let mut c = VerdictCache::new(10);
        let s = stat(1, 10, 100);
        assert!(c.lookup(&s).is_none());
        assert!(c.insert(&s, Finding::InBaseline, d(b"a"), LATER));
        assert_eq!(c.lookup(&s).map(|e| e.finding), Some(Finding::InBaseline));
        // write(2) / truncate: size or times move -> miss, entry dropped.
        assert!(c.lookup(&stat(1, 11, 100)).is_none());
        assert!(c.lookup(&s).is_none());
        c.insert(&s, Finding::InBaseline, d(b"a"), LATER);
        assert!(c.lookup(&stat(1, 10, 101)).is_none());
        assert_eq!(c.stats().hits, 1);
    }

    #[test]
    fn close_write_invalidates_even_without_timestamp_change() {
        // Shared mmap write on tmpfs: same size, same times; only the close event tells.
        let mut c = VerdictCache::new(10);
        let s = stat(1, 10, 100);
        c.insert(&s, Finding::InBaseline, d(b"a"), LATER);
        c.invalidate(FileKey::from(&s));
        assert!(c.lookup(&s).is_none());
    }

    #[test]
    fn racily_clean_and_unverifiable_findings_are_not_stored() {
        let mut c = VerdictCache::new(10);
        let s = stat(1, 10, 100);
        let just_after = Timestamp {
            sec: 100,
            nsec: 5_000_000,
        };
        assert!(!c.insert(&s, Finding::InBaseline, d(b"a"), just_after));
        assert!(!c.insert(
            &s,
            Finding::Unverifiable(super::super::Reason::HashTimeout),
            d(b"a"),
            LATER
        ));
        assert!(c.is_empty());
        assert_eq!(c.stats().racy_skips, 1);
    }

    #[test]
    fn capacity_is_bounded_and_clear_empties() {
        let mut c = VerdictCache::new(3);
        for i in 0..10 {
            c.insert(&stat(i, 1, 1), Finding::NotInBaseline, d(b"x"), LATER);
        }
        assert_eq!(c.len(), 3);
        c.clear();
        assert!(c.is_empty());
    }
}
