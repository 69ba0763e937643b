//! `/proc/self/mountinfo`: which mounts exist, so marks can be chosen safely.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Legacy mount id.
    pub mount_id: u64,
    /// Parent mount id.
    pub parent_id: u64,
    /// Device (makedev(major, minor)).
    pub dev: u64,
    /// Root of the mount within its filesystem.
    pub root: PathBuf,
    /// Mount point in the reader's namespace.
    pub mount_point: PathBuf,
    /// Filesystem type (`overlay`, `tmpfs`, ...).
    pub fstype: String,
    /// Mount source.
    pub source: Vec<u8>,
    /// Superblock options (for overlay: `lowerdir=...`).
    pub super_options: Vec<u8>,
}

/// Malformed mountinfo.
#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    /// The file could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Io(#[from] std::io::Error),
    /// A line did not parse.
    #[error("mountinfo line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read_mountinfo() -> Result<Vec<MountEntry>, MountInfoError> {
    let data = std::fs::read("/proc/self/mountinfo")?;
    parse_mountinfo(&data)
}

/// Reads and parses the mount table of process `pid` (its mount namespace, with mount
/// points relative to its root directory).
pub fn read_mountinfo_of(pid: i32) -> Result<Vec<MountEntry>, MountInfoError> {
    let data = std::fs::read(format!("/proc/{pid}/mountinfo"))?;
    parse_mountinfo(&data)
}

/// Parses mountinfo text.
pub fn parse_mountinfo(data: &[u8]) -> Result<Vec<MountEntry>, MountInfoError> {
    let mut out = Vec::new();
    for (idx, line) in data.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |reason| MountInfoError::Parse {
            line: idx + 1,
            reason,
        };
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == b"-")
            .ok_or_else(|| err("no ' - ' separator"))?;
        if sep < 6 || fields.len() < sep + 4 {
            return Err(err("too few fields"));
        }
        let num = |f: &[u8], what| {
            std::str::from_utf8(f)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| err(what))
        };
        let (major, minor) = {
            let mm = fields[2];
            let colon = mm
                .iter()
                .position(|b| *b == b':')
                .ok_or_else(|| err("bad major:minor"))?;
            (
                num(&mm[..colon], "bad major")?,
                num(&mm[colon + 1..], "bad minor")?,
            )
        };
        out.push(MountEntry {
            mount_id: num(fields[0], "bad mount id")?,
            parent_id: num(fields[1], "bad parent id")?,
            dev: libc::makedev(major as u32, minor as u32),
            root: PathBuf::from(OsString::from_vec(unescape_octal(fields[3]))),
            mount_point: PathBuf::from(OsString::from_vec(unescape_octal(fields[4]))),
            fstype: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
            source: unescape_octal(fields[sep + 2]),
            super_options: unescape_octal(fields[sep + 3]),
        });
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(oct) = field.get(i + 1..i + 4) {
                if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = u32::from(oct[0] - b'0') * 64
                        + u32::from(oct[1] - b'0') * 8
                        + u32::from(oct[2] - b'0');
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// True if `path` is `dir` or lies below it (component-wise).
pub fn is_within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// Waits up to `timeout` for a change in any of the mount tables open as `tables` (each a
/// `/proc/<pid>/mountinfo`, which reports a change in its namespace as `POLLPRI`); returns
/// the indices of those that changed (or went away).
pub fn wait_for_mount_changes(
    tables: &[&std::fs::File],
    timeout: std::time::Duration,
) -> Vec<usize> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    if tables.is_empty() {
        std::thread::sleep(timeout);
        return Vec::new();
    }
    let mut fds: Vec<PollFd<'_>> = tables
        .iter()
        .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLPRI))
        .collect();
    let timeout =
        PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => fds
            .iter()
            .enumerate()
            .filter(|(_, fd)| {
                fd.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR))
            })
            .map(|(i, _)| i)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        90 22 0:50 / /tmp/t rw - tmpfs tmpfs rw,size=1024k\n\
        91 90 0:51 / /tmp/t/root\\040fs rw - overlay overlay rw,lowerdir=/tmp/t/l1:/tmp/t/l2,upperdir=/tmp/t/u,workdir=/tmp/t/w\n\
        92 91 0:50 /vol /tmp/t/root\\040fs/vol rw master:3 - tmpfs tmpfs rw\n";

    #[test]
    fn parses_entries_with_escapes_and_optional_fields() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[2].mount_point, Path::new("/tmp/t/root fs"));
        assert_eq!(m[2].fstype, "overlay");
        assert!(m[2].super_options.starts_with(b"rw,lowerdir=/tmp/t/l1"));
        assert_eq!(m[3].root, Path::new("/vol"));
        assert_eq!(m[3].dev, m[1].dev);
        assert_eq!(m[3].parent_id, 91);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_mountinfo(b"1 2 3\n").is_err());
        assert!(parse_mountinfo(b"x 1 0:1 / / rw - tmpfs t rw\n").is_err());
        assert!(parse_mountinfo(b"1 1 01 / / rw - tmpfs t rw\n").is_err());
    }

    #[test]
    fn within_is_component_wise() {
        assert!(is_within(Path::new("/a/b/c"), Path::new("/a/b")));
        assert!(is_within(Path::new("/a/b"), Path::new("/a/b")));
        assert!(!is_within(Path::new("/a/bc"), Path::new("/a/b")));
    }
}
