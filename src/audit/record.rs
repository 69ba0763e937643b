//! The records driftlock writes (schema version [`RECORD_VERSION`]): an exec judged, a
//! mapping the gate refused, records held back by a budget, a coverage event, a mode
//! switch; and the process context they carry.

use super::*;

/// Processes kept in a record's chain.
pub const MAX_CHAIN: usize = 8;

/// Version of the record format.
pub const RECORD_VERSION: u32 = 1;

/// One process in the chain that led to an exec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// User id.
    pub uid: u32,
    /// comm (escaped).
    pub comm: String,
    /// Executable (escaped), if readable.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exe: Option<String>,
    /// Arguments (each escaped), at most [`MAX_CMDLINE`] bytes of them.
    pub cmdline: Vec<String>,
    /// True if `cmdline` was cut at [`MAX_CMDLINE`] bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cmdline_truncated: bool,
}

impl From<&ProcessInfo> for ProcessRecord {
    fn from(p: &ProcessInfo) -> Self {
        ProcessRecord {
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            comm: escape_bytes(&p.comm),
            exe: p.exe.as_deref().map(escape_bytes),
            cmdline: if p.cmdline.is_empty() {
                Vec::new()
            } else {
                p.cmdline[..p.cmdline.len().min(MAX_CMDLINE)]
                    .split(|b| *b == 0)
                    .map(escape_bytes)
                    .collect()
            },
            cmdline_truncated: p.cmdline.len() > MAX_CMDLINE,
        }
    }
}

/// An audit record (format version [`RECORD_VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Format version.
    pub v: u32,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Unit (container) id.
    pub unit: String,
    /// Image key (escaped).
    pub image_key: String,
    /// Image name, if the container's annotations gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Kubernetes namespace, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes pod, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_pod: Option<String>,
    /// Container name in the pod, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_container: Option<String>,
    /// Where the image name and Kubernetes fields came from (`kubelet`, `docker`, `podman`,
    /// `annotations`, `operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::IdentitySource>,
    /// Unit mode.
    pub mode: Mode,
    /// Verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Path of the executed file as the daemon sees it (escaped; " (deleted)" for unlinked).
    pub path: Option<String>,
    /// Thread that called exec.
    pub tid: i32,
    /// Its process (the program that asked to exec, before the exec).
    pub pid: Option<i32>,
    /// Parent process id.
    pub ppid: Option<i32>,
    /// User id.
    pub uid: Option<u32>,
    /// comm of the exec'ing process (escaped).
    pub comm: Option<String>,
    /// Command line of the exec'ing process (escaped arguments, at most [`MAX_CMDLINE`] bytes).
    pub cmdline: Vec<String>,
    /// The exec'ing process and its ancestors, nearest first (at most [`MAX_CHAIN`]).
    pub chain: Vec<ProcessRecord>,
    /// BLAKE3 of the content (hex).
    pub blake3: Option<String>,
    /// SHA-256 of the content (hex).
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Id of the copy kept in the quarantine (`driftlock evidence show ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The rule that denied (`baseline`, `loader`, `script`, `hash`, `known-bad`); absent
    /// on allow records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The evidence the rule decided on, in words (for the loader rule: the exec name read
    /// from the task and what it resolved to, or why none could be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// True if the SHA-256 (and the BLAKE3, when the verdict was made without one) was read
    /// after the verdict from a file that may have changed since: it may not describe what
    /// was judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content_unverified: bool,
    /// True if command lines were left out to keep the record under [`MAX_RECORD_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A record is at most about this large: command lines are dropped (farthest ancestor
/// first) until it fits. Below journald's default `LineMax=` (48 KiB), which would split a
/// longer line into pieces no JSON reader parses.
pub const MAX_RECORD_BYTES: usize = 46 * 1024;

impl AuditRecord {
    /// The JSON line (without newline).
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// About how many bytes the record takes (its strings, plus the fixed part).
    pub fn approx_bytes(&self) -> usize {
        let args = |a: &[String]| a.iter().map(|s| s.len() + 4).sum::<usize>();
        512 + self.path.as_ref().map_or(0, String::len)
            + self.image_key.len()
            + self.detail.as_ref().map_or(0, String::len)
            + args(&self.cmdline)
            + self
                .chain
                .iter()
                .map(|p| {
                    128 + p.comm.len() + p.exe.as_ref().map_or(0, String::len) + args(&p.cmdline)
                })
                .sum::<usize>()
    }

    /// Drops command lines, farthest ancestor first, until the record fits `max` bytes.
    pub fn fit(&mut self, max: usize) {
        let mut i = self.chain.len();
        while self.approx_bytes() > max && i > 0 {
            i -= 1;
            if !self.chain[i].cmdline.is_empty() {
                self.chain[i].cmdline.clear();
                self.chain[i].cmdline_truncated = true;
                self.truncated = true;
            }
        }
        if self.approx_bytes() > max && !self.cmdline.is_empty() {
            self.cmdline.clear();
            self.truncated = true;
        }
    }
}

/// A refused (or, in audit mode, would-be-refused) executable mapping or loader exec,
/// reported by the mapping gate (`"kind": "mapping"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MappingRecord {
    /// Format version.
    pub v: u32,
    /// Always "mapping".
    pub kind: String,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Unit (container) id.
    pub unit: String,
    /// Image key (escaped).
    pub image_key: String,
    /// Image name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Unit mode.
    pub mode: Mode,
    /// `deny` or `would-deny`.
    pub verdict: Verdict,
    /// `mmap`, `mprotect` (an executable mapping of a file not judged allowed) or `exec`
    /// (a dynamic loader as the main binary of an exec).
    pub what: String,
    /// The rule: `mapping` or `loader`.
    pub rule: String,
    /// The file's path (escaped), where the process still had it open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file as the kernel keys it: device (major:minor) and inode.
    pub file: String,
    /// BLAKE3 of the file, where it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Its size, where it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Thread and process.
    pub tid: i32,
    /// Process id.
    pub pid: i32,
    /// comm of the process (escaped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The parent process, as the kernel had it when it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<i32>,
    /// What was asked, for code made in memory (`mprotect to r-x of a rw- private mapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Command line (escaped arguments).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// The process and its ancestors, nearest first.
    #[serde(default)]
    pub chain: Vec<ProcessRecord>,
    /// Where the writer reads the file to fill `blake3` and `size` (the process's
    /// `/proc/<pid>/fd/N`) and the (kernel device, inode) it must be: the event thread
    /// never opens or reads it (an open of a marked file can raise an event only it answers,
    /// and a huge file would stall it).
    #[serde(skip)]
    pub source: Option<(std::path::PathBuf, u64, u64)>,
}

impl MappingRecord {
    /// Fills `blake3` and `size` from `source`, within `budget` and 10 s.
    pub(super) fn read_source(&mut self, budget: &mut RecordHashBudget, buf: &mut Vec<u8>) {
        use nix::fcntl::OFlag;
        let Some((path, dev, ino)) = self.source.take() else {
            return;
        };
        let Ok(fd) = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        ) else {
            return;
        };
        let Ok(st) = crate::kernel::stat_fd(fd.as_fd()) else {
            return;
        };
        if !st.is_regular()
            || crate::kernel::mapping_gate::kernel_dev(st.dev) != dev
            || st.ino != ino
            || !budget.take(&self.unit, st.size, std::time::Instant::now())
        {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        if let Ok(d) = hash_fd_content(fd.as_fd(), buf, false, Some(deadline)) {
            self.blake3 = Some(d.blake3.to_string());
            self.size = Some(d.stat.size);
        }
    }
}

/// A summary of records a unit's budget held back (`"kind": "suppressed"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SuppressedRecord {
    /// Format version.
    pub v: u32,
    /// Always "suppressed".
    pub kind: String,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Unit (container) id.
    pub unit: String,
    /// Records not written.
    pub records: u64,
    /// When the first of them happened.
    pub since: String,
}

/// What happened to a unit's coverage after it was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoverageEvent {
    /// A mount that appeared after the container started is now marked.
    MountArmed,
    /// A mount that appeared after the container started could not be marked: execs from
    /// it are not checked.
    MountNotArmed,
    /// The container started unprotected: its hook could not reach the daemon and the node
    /// is configured fail-open. Reported by the hook, recorded when the daemon next runs.
    StartedUnprotected,
}

/// A coverage record (`"kind": "coverage"`), written to the same sinks as exec records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoverageRecord {
    /// Format version.
    pub v: u32,
    /// Always "coverage" (exec records have no `kind`).
    pub kind: String,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Unit (container) id.
    pub unit: String,
    /// What happened.
    pub event: CoverageEvent,
    /// The mount point in the container's view (escaped).
    pub path: String,
    /// Filesystem type.
    pub fstype: String,
    /// The mark placed, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mark: Option<crate::kernel::MarkKind>,
    /// Why it could not be marked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// An operator changed a running unit's mode (`"kind": "mode"`): who, when, from and to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModeRecord {
    /// Format version.
    pub v: u32,
    /// Always "mode".
    pub kind: String,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Unit (container) id.
    pub unit: String,
    /// The mode it had.
    pub from: Mode,
    /// The mode it has now.
    pub to: Mode,
    /// Who asked, as the client said (`driftlock mode` sends the user and the host).
    pub by: String,
    /// Why, as the operator wrote it (may be empty).
    pub reason: String,
}

/// Formats a wall-clock time as RFC 3339 UTC with microseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}
