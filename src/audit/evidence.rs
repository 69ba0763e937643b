//! The quarantine: a denied or would-deny binary's bytes, kept once, outside the container.
//!
//! The attacker deletes the payload and the logs inside the container; incident response
//! wants the bytes. Each file is stored once under `STATE_DIR/evidence/<sha256>` (content
//! addressed, so a payload run a thousand times costs one copy), with a small JSON sidecar.
//! The directory is root-only (0700, files 0400). Its size is bounded per file, in total
//! and in file count. Past a bound, the unit holding the most (bytes, or files when the
//! count is over) loses its oldest entry first: one container flooding the quarantine with
//! large or many tiny payloads evicts its own evidence, never another's that holds less.

use std::fs;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::Digest as _;

/// Quarantine limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file kept, bytes.
    pub max_file: u64,
    /// Most bytes kept in total.
    pub max_total: u64,
    /// Most files kept.
    pub max_files: usize,
}

/// Files the quarantine keeps at most by default.
pub const DEFAULT_MAX_FILES: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file: 64 << 20,
            max_total: 512 << 20,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// What is known about one quarantined file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvidenceMeta {
    /// SHA-256 (hex): the id.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was first kept.
    pub first_seen: String,
    /// Path it was executed from (escaped), first time.
    pub path: Option<String>,
    /// Unit it was executed in, first time.
    pub unit: String,
    /// Image name or key, first time.
    pub image: String,
    /// Verdict, first time.
    pub verdict: crate::verdict::Verdict,
}

/// Why something could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// I/O.
    #[error("quarantine {}: {source}", path.display())]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// Larger than the per-file limit.
    #[error("{size} bytes is over the per-file limit of {limit}")]
    TooLarge {
        /// Size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The bytes read do not hash to the expected SHA-256 (the file changed).
    #[error("content changed while being copied")]
    Changed,
    /// No such evidence.
    #[error("no evidence with id {0}")]
    Unknown(String),
}

/// The quarantine directory.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
    limits: Limits,
}

fn valid_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Quarantine {
    /// Opens (creating, 0700) `<state_dir>/evidence`.
    pub fn open(state_dir: &Path, limits: Limits) -> Result<Self, EvidenceError> {
        let dir = state_dir.join("evidence");
        let io = |source| EvidenceError::Io {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { dir, limits })
    }

    /// Opens an existing quarantine for reading (the client commands): creates nothing,
    /// and a state directory or quarantine that does not exist is an error.
    pub fn open_existing(state_dir: &Path, limits: Limits) -> Result<Self, EvidenceError> {
        let dir = state_dir.join("evidence");
        if !state_dir.is_dir() {
            return Err(EvidenceError::Io {
                path: state_dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such state directory (is --state-dir right?)",
                ),
            });
        }
        Ok(Self { dir, limits })
    }

    /// The file holding evidence `id`.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, EvidenceError> {
        if !valid_id(id) {
            return Err(EvidenceError::Unknown(id.chars().take(80).collect()));
        }
        let p = self.dir.join(id);
        if !p.exists() {
            return Err(EvidenceError::Unknown(id.into()));
        }
        Ok(p)
    }

    /// Keeps the bytes behind `fd` (expected SHA-256 `sha256`, `size` bytes) unless they
    /// are kept already. Returns the id.
    pub fn keep(
        &self,
        fd: BorrowedFd<'_>,
        sha256: &str,
        size: u64,
        meta: EvidenceMeta,
    ) -> Result<String, EvidenceError> {
        if !valid_id(sha256) {
            return Err(EvidenceError::Unknown(sha256.into()));
        }
        if size > self.limits.max_file {
            return Err(EvidenceError::TooLarge {
                size,
                limit: self.limits.max_file,
            });
        }
        let target = self.dir.join(sha256);
        if target.exists() {
            return Ok(sha256.to_string());
        }
        let tmp = self.dir.join(format!(".{sha256}.tmp"));
        let io = |source| EvidenceError::Io {
            path: tmp.clone(),
            source,
        };
        let copy = || -> Result<(), EvidenceError> {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o400)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(io)?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut offset: u64 = 0;
            loop {
                let pos = i64::try_from(offset).map_err(|_| EvidenceError::Changed)?;
                let n = match nix::sys::uio::pread(fd, &mut buf, pos) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(io(std::io::Error::from(e))),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io)?;
                offset += n as u64;
                if offset > self.limits.max_file {
                    return Err(EvidenceError::TooLarge {
                        size: offset,
                        limit: self.limits.max_file,
                    });
                }
            }
            if hex::encode(hasher.finalize()) != sha256 {
                return Err(EvidenceError::Changed);
            }
            out.sync_all().map_err(io)
        };
        if let Err(e) = copy() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let meta_path = self.dir.join(format!("{sha256}.json"));
        let _ = fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        );
        let _ = fs::set_permissions(&meta_path, fs::Permissions::from_mode(0o400));
        fs::rename(&tmp, &target).map_err(|source| EvidenceError::Io {
            path: target.clone(),
            source,
        })?;
        self.evict();
        Ok(sha256.to_string())
    }

    /// Every kept file with its metadata, oldest first.
    pub fn list(&self) -> Vec<(EvidenceMeta, SystemTime)> {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !valid_id(&name) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let info = fs::read(self.dir.join(format!("{name}.json")))
                .ok()
                .and_then(|d| serde_json::from_slice::<EvidenceMeta>(&d).ok())
                .unwrap_or(EvidenceMeta {
                    sha256: name.clone(),
                    size: meta.len(),
                    first_seen: String::new(),
                    path: None,
                    unit: String::new(),
                    image: String::new(),
                    verdict: crate::verdict::Verdict::Deny,
                });
            out.push((info, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        out.sort_by_key(|(m, t)| (*t, m.sha256.clone()));
        out
    }

    /// Total bytes kept.
    pub fn total(&self) -> u64 {
        self.list().iter().map(|(m, _)| m.size).sum()
    }

    /// Evicts until the total and the count are within the limits: each time the oldest
    /// entry of the unit that holds the most (files when the count is over, else bytes).
    fn evict(&self) {
        let mut entries = self.list();
        let mut total: u64 = entries.iter().map(|(m, _)| m.size).sum();
        while total > self.limits.max_total || entries.len() > self.limits.max_files {
            let by_count = entries.len() > self.limits.max_files;
            let mut held: std::collections::HashMap<&str, (u64, usize)> = Default::default();
            for (m, _) in &entries {
                let h = held.entry(m.unit.as_str()).or_default();
                h.0 += m.size;
                h.1 += 1;
            }
            let Some(top) = held
                .iter()
                .max_by_key(|(u, (bytes, files))| {
                    (
                        if by_count { *files as u64 } else { *bytes },
                        std::cmp::Reverse(**u),
                    )
                })
                .map(|(u, _)| u.to_string())
            else {
                break;
            };
            // Entries are oldest first: the first of that unit goes.
            let Some(i) = entries.iter().position(|(m, _)| m.unit == top) else {
                break;
            };
            let (m, _) = entries.remove(i);
            let _ = fs::remove_file(self.dir.join(&m.sha256));
            let _ = fs::remove_file(self.dir.join(format!("{}.json", m.sha256)));
            total = total.saturating_sub(m.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn meta(sha: &str, size: u64) -> EvidenceMeta {
        meta_of("u", sha, size)
    }

    fn meta_of(unit: &str, sha: &str, size: u64) -> EvidenceMeta {
        EvidenceMeta {
            sha256: sha.into(),
            size,
            first_seen: "t".into(),
            path: Some("/tmp/p".into()),
            unit: unit.into(),
            image: "i".into(),
            verdict: crate::verdict::Verdict::Deny,
        }
    }

    fn payload(dir: &Path, n: usize, size: usize) -> (fs::File, String) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + n * 13) as u8).collect();
        let p = dir.join(format!("payload-{n}"));
        fs::write(&p, &data).unwrap();
        (
            fs::File::open(&p).unwrap(),
            hex::encode(sha2::Sha256::digest(&data)),
        )
    }

    #[test]
    fn kept_once_root_only_and_bounded() {
        let base = std::env::temp_dir().join(format!("driftlock-evidence-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let q = Quarantine::open(
            &base.join("state"),
            Limits {
                max_file: 100_000,
                max_total: 250_000,
                max_files: 100,
            },
        )
        .unwrap();
        let (f, sha) = payload(&base, 0, 60_000);
        assert_eq!(
            q.keep(f.as_fd(), &sha, 60_000, meta(&sha, 60_000)).unwrap(),
            sha
        );
        assert_eq!(
            q.keep(f.as_fd(), &sha, 60_000, meta(&sha, 60_000)).unwrap(),
            sha,
            "kept once"
        );
        let kept = q.path_of(&sha).unwrap();
        assert_eq!(fs::read(&kept).unwrap().len(), 60_000);
        assert_eq!(
            fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(
            fs::metadata(base.join("state/evidence"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );

        // Many large payloads: the total stays under the cap, the oldest go first.
        let mut shas = vec![sha.clone()];
        for n in 1..20 {
            let (f, sha) = payload(&base, n, 60_000);
            q.keep(f.as_fd(), &sha, 60_000, meta(&sha, 60_000)).unwrap();
            shas.push(sha);
            assert!(q.total() <= 250_000, "total {} over the cap", q.total());
        }
        assert!(q.path_of(&shas[0]).is_err(), "the oldest was evicted");
        assert!(q.path_of(&shas[19]).is_ok(), "the newest is kept");
        // Over the per-file limit: refused, nothing written.
        let (f, big) = payload(&base, 99, 150_000);
        assert!(matches!(
            q.keep(f.as_fd(), &big, 150_000, meta(&big, 150_000)),
            Err(EvidenceError::TooLarge { .. })
        ));
        assert!(q.path_of(&big).is_err());
        // Content that does not match the id is refused.
        let (f, _) = payload(&base, 50, 1000);
        let wrong = "0".repeat(64);
        assert!(matches!(
            q.keep(f.as_fd(), &wrong, 1000, meta(&wrong, 1000)),
            Err(EvidenceError::Changed)
        ));
        assert!(q.path_of("../../etc/passwd").is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    /// Issue 14 (7): one container flooding the quarantine (a few large payloads, then many
    /// tiny ones) evicts its own evidence, never another's.
    #[test]
    fn a_flooding_unit_evicts_its_own_evidence_not_anothers() {
        let base =
            std::env::temp_dir().join(format!("driftlock-evidence-fair-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let q = Quarantine::open(
            &base.join("state"),
            Limits {
                max_file: 100_000,
                max_total: 300_000,
                max_files: 40,
            },
        )
        .unwrap();
        let (f, victim) = payload(&base, 0, 50_000);
        q.keep(
            f.as_fd(),
            &victim,
            50_000,
            meta_of("billing", &victim, 50_000),
        )
        .unwrap();
        for n in 1..=8 {
            let (f, sha) = payload(&base, n, 90_000);
            q.keep(f.as_fd(), &sha, 90_000, meta_of("attacker", &sha, 90_000))
                .unwrap();
            assert!(q.total() <= 300_000);
        }
        assert!(
            q.path_of(&victim).is_ok(),
            "large payloads evicted another's evidence"
        );
        for n in 100..300 {
            let (f, sha) = payload(&base, n, 64);
            q.keep(f.as_fd(), &sha, 64, meta_of("attacker", &sha, 64))
                .unwrap();
        }
        let kept = q.list();
        assert!(kept.len() <= 40, "{}", kept.len());
        assert!(
            q.path_of(&victim).is_ok(),
            "tiny payloads evicted another's evidence"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
