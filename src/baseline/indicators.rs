//! Known-bad hashes: malware baked into an image is "in the baseline", so an indicator list
//! (SHA-256 or MD5, as threat reports publish them; DreamBus reports give MD5s such as
//! Kinsing 648effa354b3cbaad87b45f48d59c616) is checked when a baseline is snapshotted, and
//! matching files are taken out of the allowed contents.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::Digest;

/// Why an indicator list was refused.
#[derive(Debug, thiserror::Error)]
pub enum IndicatorError {
    /// Unreadable.
    #[error("cannot read indicators {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A bad line.
    #[error("indicators {} line {line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// An indicator list.
#[derive(Debug, Clone, Default)]
pub struct Indicators {
    sha256: HashMap<[u8; 32], String>,
    md5: HashMap<[u8; 16], String>,
    digest: String,
}

impl Indicators {
    /// Parses `HASH [name]` lines (64 hex digits: SHA-256, 32: MD5; `#` comments).
    pub fn parse(text: &str, path: &Path) -> Result<Self, IndicatorError> {
        let mut out = Indicators {
            digest: blake3::hash(text.as_bytes()).to_hex()[..16].to_string(),
            ..Default::default()
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (hash, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let name = if name.trim().is_empty() {
                hash.to_lowercase()
            } else {
                name.trim().to_string()
            };
            let err = |reason: &str| IndicatorError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason: reason.into(),
            };
            let bytes = hex::decode(hash).map_err(|_| err("not a hex hash"))?;
            match bytes.len() {
                32 => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&bytes);
                    out.sha256.insert(k, name);
                }
                16 => {
                    let mut k = [0u8; 16];
                    k.copy_from_slice(&bytes);
                    out.md5.insert(k, name);
                }
                _ => return Err(err("expected a SHA-256 (64 hex digits) or an MD5 (32)")),
            }
        }
        Ok(out)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, IndicatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| IndicatorError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// A short digest of the list (part of the store key: a new list means new snapshots).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of indicators.
    pub fn len(&self) -> usize {
        self.sha256.len() + self.md5.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The indicator the file behind `fd` matches: (hash hex, name).
    pub fn check(&self, fd: BorrowedFd<'_>) -> Option<(String, String)> {
        // pread, not read: the fd's offset is shared with whoever else holds it.
        let mut sha = sha2::Sha256::new();
        let mut md5 = <md5::Md5 as md5::Digest>::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut offset: i64 = 0;
        loop {
            let n = match nix::sys::uio::pread(fd, &mut buf, offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(_) => return None,
            };
            sha.update(&buf[..n]);
            md5::Digest::update(&mut md5, &buf[..n]);
            offset += n as i64;
        }
        let s: [u8; 32] = sha.finalize().into();
        if let Some(name) = self.sha256.get(&s) {
            return Some((hex::encode(s), name.clone()));
        }
        let m: [u8; 16] = md5::Digest::finalize(md5).into();
        self.md5.get(&m).map(|name| (hex::encode(m), name.clone()))
    }
}

/// A file of the image that matched an indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownBad {
    /// Path in the image.
    pub path: Vec<u8>,
    /// Its BLAKE3 (denied with reason `known-bad`).
    pub blake3: Digest,
    /// The matching indicator (hex).
    pub indicator: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parses_and_matches_sha256_and_md5() {
        let data = b"kinsing payload";
        let sha = hex::encode(sha2::Sha256::digest(data));
        let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(data));
        let list = format!(
            "# DreamBus\n648effa354b3cbaad87b45f48d59c616 kinsing\n{md5} test-md5\n\n{sha}\n"
        );
        let ind = Indicators::parse(&list, Path::new("i.txt")).unwrap();
        assert_eq!(ind.len(), 3);
        let p = std::env::temp_dir().join(format!("driftlock-ind-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(
            ind.check(f.as_fd()).map(|m| m.0),
            Some(sha.clone()),
            "SHA-256 wins"
        );
        let only_md5 = Indicators::parse(&format!("{md5} test-md5\n"), Path::new("i.txt")).unwrap();
        assert_eq!(only_md5.check(f.as_fd()), Some((md5, "test-md5".into())));
        std::fs::write(&p, b"clean").unwrap();
        assert_eq!(ind.check(std::fs::File::open(&p).unwrap().as_fd()), None);
        std::fs::remove_file(&p).unwrap();
        let e = Indicators::parse("abc\n", Path::new("i.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
