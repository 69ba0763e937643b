//! The baseline store: one verified file per image key under `<state>/baselines/`.
//!
//! Files are written to a temporary name, fsync'ed, renamed over the final name and the
//! directory fsync'ed, so a crash leaves either the old or the new baseline, never half of
//! one. Every load re-checks the format's checksum and that the stored key is the one asked
//! for; a file that fails is reported and never trusted (the caller re-snapshots).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::format::{self, FormatError};
use super::indicators::Indicators;
use super::{Baseline, Snapshot, SnapshotError, snapshot_checked};
use crate::escape::escape_bytes;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error.
    #[error("baseline store {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The stored file failed verification.
    #[error("stored baseline {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// The stored file belongs to another key (a hash collision or a copied file).
    #[error("stored baseline {} belongs to key {found}, not the one requested", path.display())]
    WrongKey {
        /// The file.
        path: PathBuf,
        /// The key found in it.
        found: String,
    },
    /// Taking a fresh snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a baseline came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    /// Loaded from the store.
    Stored,
    /// Snapshotted now (no stored baseline).
    Snapshotted,
    /// Snapshotted now because the stored one was corrupt.
    ReplacedCorrupt,
}

/// Baselines kept under a state directory.
#[derive(Debug, Clone)]
pub struct BaselineStore {
    dir: PathBuf,
    /// One lock per image key being obtained: concurrent arms of one image (a Deployment
    /// scaled up) wait for the first one's snapshot and load it, instead of each walking
    /// the image and racing to store it.
    in_progress: KeyLocks,
}

/// A lock per image key whose baseline is being obtained.
type KeyLocks = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::sync::Arc<std::sync::Mutex<()>>>>,
>;

impl BaselineStore {
    /// Opens (creating, mode 0700) `<state_dir>/baselines`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("baselines");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        Ok(Self {
            dir,
            in_progress: Default::default(),
        })
    }

    /// The file that holds the baseline of `key`.
    pub fn path_for(&self, key: &[u8]) -> PathBuf {
        let name = blake3::hash(key).to_hex();
        self.dir.join(format!("{}.baseline", &name[..32]))
    }

    /// Loads the baseline of `key`: `Ok(None)` if there is none.
    pub fn load(&self, key: &[u8]) -> Result<Option<Baseline>, StoreError> {
        let path = self.path_for(key);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let baseline = format::decode(&data).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if baseline.key() != key {
            return Err(StoreError::WrongKey {
                path,
                found: escape_bytes(baseline.key()),
            });
        }
        Ok(Some(baseline))
    }

    /// Saves atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, baseline: &Baseline) -> Result<PathBuf, StoreError> {
        let path = self.path_for(baseline.key());
        write_atomic(&path, &format::encode(baseline))?;
        Ok(path)
    }

    /// Loads the baseline of `key`, or snapshots `rootfs` and stores it when there is none
    /// or the stored one fails verification.
    pub fn load_or_snapshot(
        &self,
        key: &[u8],
        rootfs: &Path,
        threads: usize,
        indicators: Option<&Indicators>,
    ) -> Result<(Baseline, Provenance, Option<Snapshot>), StoreError> {
        self.load_or_else(
            key,
            || Ok(snapshot_checked(rootfs, key.to_vec(), threads, indicators)?),
            |e| e,
        )
    }

    /// Loads the baseline of `key`, or stores the one `take` snapshots when there is none
    /// or the stored one fails verification. One caller per key snapshots at a time; the
    /// others then load what it stored. The store's own errors become `E` through `store_err`.
    pub fn load_or_else<E>(
        &self,
        key: &[u8],
        take: impl FnOnce() -> Result<Snapshot, E>,
        store_err: impl Fn(StoreError) -> E,
    ) -> Result<(Baseline, Provenance, Option<Snapshot>), E> {
        let key_lock = {
            let mut map = self
                .in_progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::sync::Arc::clone(map.entry(key.to_vec()).or_default())
        };
        let result = {
            let _one_at_a_time = key_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.load_or_else_locked(key, take, store_err)
        };
        // Forget the lock once nobody else holds it (the map stays small).
        let mut map = self
            .in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::sync::Arc::strong_count(&key_lock) <= 2 {
            map.remove(key);
        }
        result
    }

    fn load_or_else_locked<E>(
        &self,
        key: &[u8],
        take: impl FnOnce() -> Result<Snapshot, E>,
        store_err: impl Fn(StoreError) -> E,
    ) -> Result<(Baseline, Provenance, Option<Snapshot>), E> {
        let provenance = match self.load(key) {
            Ok(Some(b)) => return Ok((b, Provenance::Stored, None)),
            Ok(None) => Provenance::Snapshotted,
            Err(err @ (StoreError::Corrupt { .. } | StoreError::WrongKey { .. })) => {
                log::error!("{err}; taking a new snapshot");
                Provenance::ReplacedCorrupt
            }
            Err(err) => return Err(store_err(err)),
        };
        let snap = take()?;
        self.save(&snap.baseline).map_err(store_err)?;
        Ok((snap.baseline.clone(), provenance, Some(snap)))
    }
}

/// Writes `data` to `path` atomically and durably (synced before and after the rename),
/// mode 0600. The temporary name is unique to the call (process and sequence number), so
/// concurrent writers of one path never rename each other's file away (each rename is
/// atomic; the last one wins).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    write_replacing(path, data, true)
}

/// Writes `data` to `path` atomically against a crash of this process, but not synced: for
/// state that a crash of the node makes moot anyway (a unit's record names a container,
/// which dies with the node), where two syncs per container start would cost milliseconds
/// on a disk.
pub fn write_atomic_unsynced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    write_replacing(path, data, false)
}

fn write_replacing(path: &Path, data: &[u8], durable: bool) -> Result<(), StoreError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        if durable {
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        if durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::test_entry;

    fn state_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("driftlock-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// Issue 14 (burst): concurrent arms of one image raced in the store ("No such file or
    /// directory" when one writer renamed another's temporary file away) and each took its
    /// own snapshot. Now one snapshot is taken and the others load it.
    #[test]
    fn concurrent_arms_of_one_image_take_one_snapshot_and_all_succeed() {
        let d = state_dir("burst");
        let rootfs = d.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        for i in 0..50 {
            let p = rootfs.join(format!("bin/tool{i}"));
            fs::write(&p, format!("tool {i}")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let store = BaselineStore::open(&d).unwrap();
        let provenances: Vec<Provenance> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..32)
                .map(|_| s.spawn(|| store.load_or_snapshot(b"one-image", &rootfs, 1, None)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap().unwrap().1)
                .collect()
        });
        let snapshots = provenances
            .iter()
            .filter(|p| **p == Provenance::Snapshotted)
            .count();
        assert_eq!(snapshots, 1, "{provenances:?}");
        // Plain concurrent writers of one path: every rename succeeds.
        let path = d.join("same");
        std::thread::scope(|s| {
            for i in 0..32u8 {
                let path = &path;
                s.spawn(move || write_atomic(path, &[i; 64]).unwrap());
            }
        });
        assert_eq!(fs::read(&path).unwrap().len(), 64);
        let leftovers = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .count();
        assert_eq!(leftovers, 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn save_load_round_trip_and_missing() {
        let d = state_dir("rt");
        let store = BaselineStore::open(&d).unwrap();
        let b = Baseline::new(
            b"img\n1".to_vec(),
            b"/r".to_vec(),
            5,
            vec![test_entry("/bin/sh", b"x")],
        );
        assert!(store.load(b"img\n1").unwrap().is_none());
        let path = store.save(&b).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(store.load(b"img\n1").unwrap().unwrap(), b);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_files_are_refused_and_replaced() {
        let d = state_dir("corrupt");
        let rootfs = d.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/tool"), b"tool").unwrap();
        fs::set_permissions(rootfs.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        let store = BaselineStore::open(&d).unwrap();
        let (b, prov, _) = store.load_or_snapshot(b"key", &rootfs, 1, None).unwrap();
        assert_eq!(prov, Provenance::Snapshotted);
        assert_eq!(b.entries().len(), 1);
        let (_, prov, _) = store.load_or_snapshot(b"key", &rootfs, 1, None).unwrap();
        assert_eq!(prov, Provenance::Stored);

        let path = store.path_for(b"key");
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 10]).unwrap();
        assert!(matches!(
            store.load(b"key"),
            Err(StoreError::Corrupt { .. })
        ));
        let (b2, prov, _) = store.load_or_snapshot(b"key", &rootfs, 1, None).unwrap();
        assert_eq!(prov, Provenance::ReplacedCorrupt);
        assert_eq!(b2.entries(), b.entries());
        assert!(store.load(b"key").unwrap().is_some());

        // A valid file stored under another key's name is not trusted either.
        fs::copy(&path, store.path_for(b"other")).unwrap();
        assert!(matches!(
            store.load(b"other"),
            Err(StoreError::WrongKey { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }
}
