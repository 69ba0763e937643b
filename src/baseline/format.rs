//! The on-disk baseline format, version 1 (documented in `baselines/README.md`).
//!
//! A line-oriented text file, so people can read, grep and diff it:
//!
//! ```text
//! driftlock-baseline 1
//! key <escaped image key>
//! source <escaped rootfs path>
//! created <unix seconds>
//! count <number of entries>
//! f <blake3 hex> <size> <mode octal> <escaped path>
//! ...
//! l <blake3 hex> <escaped interpreter path>     (dynamic loaders; optional, after the f lines)
//! k <blake3 hex> <indicator hex> <escaped path>  (files that matched a known-bad indicator)
//! end <blake3 hex of every byte before this line>
//! ```
//!
//! Byte strings use [`crate::escape`], so no field can contain a newline. The trailer's
//! checksum detects truncation and corruption; the count detects lost lines even if the
//! checksum were recomputed by hand.

use super::{Baseline, BaselineEntry, Digest, LoaderEntry};
use crate::escape::{escape_bytes, unescape};

/// The magic first line.
pub const MAGIC: &str = "driftlock-baseline";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why a baseline file was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The file is not valid UTF-8 (escaped fields are always ASCII or UTF-8).
    #[error("not a driftlock baseline: invalid UTF-8 at byte {0}")]
    NotText(usize),
    /// Missing or wrong first line.
    #[error("not a driftlock baseline (first line must be '{MAGIC} {VERSION}')")]
    Magic,
    /// A version this build cannot read.
    #[error("baseline format version {0} is not supported (this build reads version {VERSION})")]
    Version(String),
    /// A malformed line.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No `end` line: the file was cut short.
    #[error("truncated: no 'end' trailer (the file was cut short)")]
    Truncated,
    /// The checksum in the trailer does not match.
    #[error("checksum mismatch: the file is corrupt (expected {expected}, computed {computed})")]
    Checksum {
        /// From the trailer.
        expected: String,
        /// Over the content.
        computed: String,
    },
    /// The entry count does not match.
    #[error("count says {declared} entries but {found} were found")]
    Count {
        /// From the header.
        declared: usize,
        /// Lines present.
        found: usize,
    },
}

/// Writes a baseline in format version 1.
pub fn encode(baseline: &Baseline) -> Vec<u8> {
    let mut body = String::new();
    body.push_str(&format!("{MAGIC} {VERSION}\n"));
    body.push_str(&format!("key {}\n", escape_bytes(baseline.key())));
    body.push_str(&format!("source {}\n", escape_bytes(baseline.source())));
    body.push_str(&format!("created {}\n", baseline.created()));
    body.push_str(&format!("count {}\n", baseline.entries().len()));
    for e in baseline.entries() {
        body.push_str(&format!(
            "f {} {} {:o} {}\n",
            e.blake3,
            e.size,
            e.mode,
            escape_bytes(&e.path)
        ));
    }
    for l in baseline.loaders() {
        body.push_str(&format!("l {} {}\n", l.blake3, escape_bytes(&l.path)));
    }
    for k in baseline.known_bad() {
        body.push_str(&format!(
            "k {} {} {}\n",
            k.blake3,
            k.indicator,
            escape_bytes(&k.path)
        ));
    }
    let sum = blake3::hash(body.as_bytes());
    body.push_str(&format!("end {}\n", sum.to_hex()));
    body.into_bytes()
}

/// Parses and verifies a baseline file.
pub fn decode(data: &[u8]) -> Result<Baseline, FormatError> {
    let text = std::str::from_utf8(data).map_err(|e| FormatError::NotText(e.valid_up_to()))?;
    let line_err = |line: usize, reason: &str| FormatError::Line {
        line,
        reason: reason.to_string(),
    };
    // (byte offset of the line, the line without its newline); a last line without a
    // newline means the file was cut short.
    let mut lines = Vec::new();
    let mut offset = 0usize;
    for raw in text.split_inclusive('\n') {
        let Some(line) = raw.strip_suffix('\n') else {
            return Err(if lines.is_empty() {
                FormatError::Magic
            } else {
                FormatError::Truncated
            });
        };
        lines.push((offset, line));
        offset += raw.len();
    }

    let first = lines.first().map(|l| l.1).ok_or(FormatError::Magic)?;
    let version = first
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(FormatError::Magic)?;
    if version != VERSION.to_string() {
        return Err(FormatError::Version(version.chars().take(20).collect()));
    }

    let header = |idx: usize, name: &str| -> Result<&str, FormatError> {
        let (_, line) = lines.get(idx).ok_or(FormatError::Truncated)?;
        line.strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| line_err(idx + 1, &format!("expected '{name} ...'")))
    };
    let key = unescape(header(1, "key")?).map_err(|e| line_err(2, &e.to_string()))?;
    let source = unescape(header(2, "source")?).map_err(|e| line_err(3, &e.to_string()))?;
    let created: u64 = header(3, "created")?
        .parse()
        .map_err(|_| line_err(4, "created is not a number"))?;
    let declared: usize = header(4, "count")?
        .parse()
        .map_err(|_| line_err(5, "count is not a number"))?;

    let mut entries = Vec::with_capacity(declared.min(1 << 20));
    let mut loaders = Vec::new();
    let mut known_bad = Vec::new();
    let mut idx = 5;
    loop {
        let &(start, line) = lines.get(idx).ok_or(FormatError::Truncated)?;
        let n = idx + 1;
        if let Some(sum) = line.strip_prefix("end ") {
            let computed = blake3::hash(&data[..start]).to_hex().to_string();
            if sum != computed {
                return Err(FormatError::Checksum {
                    expected: sum.chars().take(64).collect(),
                    computed,
                });
            }
            if idx + 1 != lines.len() {
                return Err(line_err(n + 1, "data after the 'end' trailer"));
            }
            break;
        }
        if let Some(rest) = line.strip_prefix("k ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(hash), Some(indicator), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(line_err(
                    n,
                    "a known-bad entry needs: blake3 indicator path",
                ));
            };
            if !indicator.bytes().all(|b| b.is_ascii_hexdigit())
                || !matches!(indicator.len(), 32 | 64)
            {
                return Err(line_err(n, "the indicator must be 32 or 64 hex digits"));
            }
            known_bad.push(super::indicators::KnownBad {
                blake3: hash
                    .parse()
                    .map_err(|_| line_err(n, "blake3 must be 64 hex digits"))?,
                indicator: indicator.to_string(),
                path: unescape(path).map_err(|e| line_err(n, &e.to_string()))?,
            });
            idx += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("l ") {
            let (hash, path) = rest
                .split_once(' ')
                .ok_or_else(|| line_err(n, "a loader needs: blake3 path"))?;
            loaders.push(LoaderEntry {
                blake3: hash
                    .parse()
                    .map_err(|_| line_err(n, "blake3 must be 64 hex digits"))?,
                path: unescape(path).map_err(|e| line_err(n, &e.to_string()))?,
            });
            idx += 1;
            continue;
        }
        if !loaders.is_empty() || !known_bad.is_empty() {
            return Err(line_err(n, "'f' lines must come before 'l' and 'k' lines"));
        }
        let rest = line
            .strip_prefix("f ")
            .ok_or_else(|| line_err(n, "expected 'f ...', 'l ...' or 'end ...'"))?;
        let mut parts = rest.splitn(4, ' ');
        let (Some(hash), Some(size), Some(mode), Some(path)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(line_err(n, "an entry needs: blake3 size mode path"));
        };
        let blake3: Digest = hash
            .parse()
            .map_err(|_| line_err(n, "blake3 must be 64 hex digits"))?;
        let size: u64 = size.parse().map_err(|_| line_err(n, "bad size"))?;
        let mode = u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| line_err(n, "bad mode (octal, at most 7777)"))?;
        let path = unescape(path).map_err(|e| line_err(n, &e.to_string()))?;
        if path.is_empty() {
            return Err(line_err(n, "empty path"));
        }
        entries.push(BaselineEntry {
            path,
            size,
            mode,
            blake3,
        });
        idx += 1;
    }
    if entries.len() != declared {
        return Err(FormatError::Count {
            declared,
            found: entries.len(),
        });
    }
    // Known-bad contents were taken out of the entries when the snapshot was taken.
    let mut b = Baseline::new(key, source, created, entries).with_loaders(loaders);
    if !known_bad.is_empty() {
        b = b.with_known_bad(known_bad);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::test_entry;

    fn sample() -> Baseline {
        let mut hostile = test_entry("/x", b"hostile");
        hostile.path = b"/tmp/evil\nname\xff with space\\".to_vec();
        Baseline::new(
            b"overlay:/l1:/l2".to_vec(),
            b"/run/rootfs".to_vec(),
            1_700_000_000,
            vec![test_entry("/bin/sh", b"sh"), hostile],
        )
        .with_loaders(vec![LoaderEntry {
            path: b"/lib64/ld-linux-x86-64.so.2".to_vec(),
            blake3: blake3::hash(b"ld").into(),
        }])
    }

    #[test]
    fn round_trip_with_hostile_paths() {
        let b = sample();
        let bytes = encode(&b);
        assert_eq!(bytes.iter().filter(|c| **c == b'\n').count(), 9);
        assert_eq!(decode(&bytes).unwrap(), b);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {i} was accepted");
        }
    }

    #[test]
    fn the_documented_example_decodes() {
        let b = decode(include_bytes!("../../baselines/example.baseline")).unwrap();
        assert_eq!(b.entries().len(), 3);
        assert_eq!(b.entries()[0].path, b"/bin/odd\nname");
        assert!(b.key().starts_with(b"overlay-lower:"));
        assert_eq!(
            encode(&b),
            include_bytes!("../../baselines/example.baseline")
        );
    }

    #[test]
    fn clear_errors() {
        assert_eq!(decode(b"hello\n"), Err(FormatError::Magic));
        assert_eq!(
            decode(b"driftlock-baseline 9\n"),
            Err(FormatError::Version("9".into()))
        );
        let mut extra = encode(&sample());
        extra.extend_from_slice(b"f junk\n");
        assert!(matches!(decode(&extra), Err(FormatError::Line { .. })));
    }
}
