//! Audit records: one JSON object per line for every deny and would-deny (and, at debug
//! level, every miss), written by a thread of their own so a slow sink (a full pipe to
//! journald) never holds up an exec.
//!
//! Records are not logs: they are a versioned, documented struct ([`AuditRecord`], field
//! `v`) meant for machines (SIEM, `driftlock tune`); operational logs go to stderr through
//! `log` and can be filtered or dropped. Every byte string (paths, command lines, comm) is
//! in the lossless escaped form of [`crate::escape`], so a hostile file name can neither
//! break the line nor hide its real bytes.

pub mod evidence;
mod fair;
pub mod falco;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::Mode;
use crate::baseline::hash_fd_content;
use crate::escape::escape_bytes;
use crate::kernel::procfs::ProcessInfo;
use crate::verdict::{Reason, Verdict};

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

/// Largest file the audit writer hashes for a record's SHA-256 and evidence.
pub const MAX_RECORD_HASH: u64 = 256 << 20;

/// What one unit may have the writer hash for its records: [`RecordHashBudget::BURST`]
/// bytes, refilled at [`RecordHashBudget::PER_SECOND`]. Past it, records go out without a
/// SHA-256 (the BLAKE3 the verdict was made on is kept), so a container that has large
/// files denied over and over cannot hold the one writer every container's records need.
#[derive(Debug, Default)]
pub struct RecordHashBudget {
    units: std::collections::HashMap<String, (f64, std::time::Instant)>,
}

impl RecordHashBudget {
    /// Bytes a unit may have hashed at once.
    pub const BURST: f64 = 512.0 * 1024.0 * 1024.0;
    /// Bytes per second a unit's budget refills.
    pub const PER_SECOND: f64 = 64.0 * 1024.0 * 1024.0;

    /// True (and the bytes taken) if `unit` may have `bytes` hashed now.
    pub fn take(&mut self, unit: &str, bytes: u64, now: std::time::Instant) -> bool {
        if self.units.len() > 4096 {
            // Units come and go: forget those whose budget is full again.
            self.units.retain(|_, (left, at)| {
                *left + now.saturating_duration_since(*at).as_secs_f64() * Self::PER_SECOND
                    < Self::BURST
            });
        }
        let (left, at) = self
            .units
            .entry(unit.to_string())
            .or_insert((Self::BURST, now));
        *left = (*left + now.saturating_duration_since(*at).as_secs_f64() * Self::PER_SECOND)
            .min(Self::BURST);
        *at = now;
        let bytes = bytes as f64;
        if *left >= bytes {
            *left -= bytes;
            true
        } else {
            false
        }
    }
}

/// Bytes of a command line kept in a record (some programs carry huge argument lists).
pub use crate::kernel::procfs::MAX_CMDLINE;

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

/// How many records one unit may write: a bucket of [`RecordBudget::BURST`] refilled at
/// [`RecordBudget::PER_SECOND`]. Past it, records are counted, not written, and a summary
/// says how many (the verdicts and counters are not affected), so a container that loops
/// denied execs cannot flood the log, the queue or another unit's records.
#[derive(Debug, Clone)]
pub struct RecordBudget {
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
    first_suppressed: Option<String>,
}

impl Default for RecordBudget {
    fn default() -> Self {
        RecordBudget {
            tokens: Self::BURST,
            last: std::time::Instant::now(),
            suppressed: 0,
            first_suppressed: None,
        }
    }
}

impl RecordBudget {
    /// Records a unit may write at once.
    pub const BURST: f64 = 200.0;
    /// Records per second after the burst.
    pub const PER_SECOND: f64 = 50.0;

    fn refill(&mut self, now: std::time::Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * Self::PER_SECOND).min(Self::BURST);
        self.last = now;
    }

    /// True if a record may be written now; otherwise counts it as suppressed.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            if self.first_suppressed.is_none() {
                self.first_suppressed = Some(rfc3339(std::time::SystemTime::now()));
            }
            false
        }
    }

    /// Records suppressed and not yet summarized.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Takes the count of suppressed records for a summary (once the budget has a token
    /// for it): `(count, time of the first)`.
    pub fn take_summary(&mut self, now: std::time::Instant) -> Option<(u64, String)> {
        if self.suppressed == 0 {
            return None;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        let n = std::mem::take(&mut self.suppressed);
        Some((n, self.first_suppressed.take().unwrap_or_default()))
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
    fn read_source(&mut self, budget: &mut RecordHashBudget, buf: &mut Vec<u8>) {
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

/// A record on its way to the sinks.
#[derive(Debug)]
pub enum AuditJob {
    /// An exec record, with a duplicate of the event's fd for the SHA-256 (read after the
    /// exec was answered).
    Exec {
        /// The record.
        record: Box<AuditRecord>,
        /// The executed file.
        file: Option<OwnedFd>,
        /// The process context still to be read into the record (by the writer).
        process: Option<ProcessToRead>,
    },
    /// A coverage record.
    Coverage(CoverageRecord),
    /// Records a unit's budget held back.
    Suppressed(SuppressedRecord),
    /// A mapping the gate refused.
    Mapping(Box<MappingRecord>),
    /// A unit's mode changed while it ran.
    Mode(ModeRecord),
}

impl AuditJob {
    /// The unit the record is about (its queue).
    pub fn unit(&self) -> &str {
        match self {
            AuditJob::Exec { record, .. } => &record.unit,
            AuditJob::Coverage(c) => &c.unit,
            AuditJob::Suppressed(s) => &s.unit,
            AuditJob::Mapping(m) => &m.unit,
            AuditJob::Mode(m) => &m.unit,
        }
    }

    /// About how many bytes the job holds while queued.
    pub fn approx_bytes(&self) -> usize {
        match self {
            AuditJob::Exec { record, .. } => record.approx_bytes(),
            AuditJob::Coverage(_) | AuditJob::Suppressed(_) | AuditJob::Mode(_) => 512,
            AuditJob::Mapping(m) => {
                1024 + m.cmdline.iter().map(String::len).sum::<usize>()
                    + m.chain
                        .iter()
                        .map(|p| 128 + p.cmdline.iter().map(String::len).sum::<usize>())
                        .sum::<usize>()
            }
        }
    }
}

/// The part of a record's process context the record writer reads: the process's
/// ancestors (a walk up `/proc` costs the event thread some 200 µs; the process itself is
/// read on the event thread, before a denied exec is answered, as it may be reaped the
/// moment it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessToRead {
    /// The unit's first process: the chain ends with it.
    pub stop: Option<i32>,
}

impl ProcessToRead {
    /// Reads the ancestors of the record's process into its chain, then fits the record to
    /// its budget.
    pub fn read_into(self, record: &mut AuditRecord) {
        if let (Some(pid), Some(ppid)) = (record.pid, record.ppid) {
            if Some(pid) != self.stop {
                let room = MAX_CHAIN.saturating_sub(record.chain.len());
                record.chain.extend(
                    crate::kernel::procfs::parent_chain(ppid, room, self.stop)
                        .iter()
                        .map(ProcessRecord::from),
                );
            }
        }
        record.fit(MAX_RECORD_BYTES);
    }
}

/// Where records go.
#[derive(Debug, Default)]
pub struct AuditSinks {
    /// Write to stdout (journald under systemd).
    pub stdout: bool,
    /// Also append to this file.
    pub file: Option<File>,
    /// Also post exec records, in Falco's alert shape, to Falcosidekick.
    pub falcosidekick: Option<falco::Endpoint>,
    /// Keep the bytes of denied and would-deny programs here.
    pub quarantine: Option<evidence::Quarantine>,
    /// The audit log's path: reopened (after a log rotation) when asked
    /// ([`AuditQueue::reopen_file`]).
    pub file_path: Option<std::path::PathBuf>,
    /// The node's name, put first in every record (`"node"`).
    pub node: Option<String>,
}

/// The node's name for records: `$DRIFTLOCK_NODE_NAME` (Kubernetes' downward API gives the
/// pod `spec.nodeName`), else the host name.
pub fn node_name() -> Option<String> {
    std::env::var("DRIFTLOCK_NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// Alerts waiting for Falcosidekick at most; more are dropped (and counted).
const FALCO_QUEUE: usize = 1024;

fn start_falco_poster(
    endpoint: falco::Endpoint,
    counters: Arc<AuditCounters>,
) -> Option<crossbeam_channel::Sender<serde_json::Value>> {
    let (tx, rx) = crossbeam_channel::bounded::<serde_json::Value>(FALCO_QUEUE);
    std::thread::Builder::new()
        .name("driftlock-falco".into())
        .spawn(move || {
            for alert in rx {
                match falco::post(&endpoint, &alert) {
                    Ok(code) if (200..300).contains(&code) => {}
                    Ok(code) => {
                        counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!("Falcosidekick at {} answered {code}", endpoint.authority);
                    }
                    Err(e) => {
                        counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "cannot post to Falcosidekick at {}: {e}",
                            endpoint.authority
                        );
                    }
                }
            }
        })
        .ok()?;
    Some(tx)
}

/// Counters of the audit writer.
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Write failures.
    pub write_errors: AtomicU64,
    /// Records waiting to be written.
    pub queued: AtomicU64,
    /// About how many bytes they hold.
    pub queued_bytes: AtomicU64,
    /// Set to have the writer reopen the audit log file before its next record.
    pub reopen: AtomicBool,
}

/// The sending side used by the engine (and the arming side): records go to their unit's
/// queue, and the writer serves the units in turn.
pub struct AuditQueue {
    queue: Arc<fair::FairQueue>,
    counters: Arc<AuditCounters>,
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditQueue")
            .field("counters", &self.counters)
            .finish()
    }
}

impl Clone for AuditQueue {
    fn clone(&self) -> Self {
        self.queue.add_sender();
        AuditQueue {
            queue: Arc::clone(&self.queue),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl Drop for AuditQueue {
    fn drop(&mut self) {
        self.queue.remove_sender();
    }
}

impl AuditQueue {
    fn new() -> Self {
        let queue = Arc::new(fair::FairQueue::default());
        queue.add_sender();
        AuditQueue {
            queue,
            counters: Arc::new(AuditCounters::default()),
        }
    }

    /// Queues a record; never blocks (a full queue, the unit's own, all of them, or by
    /// bytes, drops and counts).
    pub fn send(&self, job: AuditJob) {
        let bytes = job.approx_bytes() as u64;
        let held = self
            .counters
            .queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if held + bytes > QUEUE_BYTES as u64 || !self.queue.push(job, QUEUE_CAPACITY) {
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A view of the counters that does not keep the writer alive.
    pub fn counters_handle(&self) -> Arc<AuditCounters> {
        Arc::clone(&self.counters)
    }

    /// The writer's counters.
    pub fn counters(&self) -> &AuditCounters {
        &self.counters
    }

    /// Has the writer reopen the audit log file (after logrotate moved it) before it writes
    /// its next record.
    pub fn reopen_file(&self) {
        self.counters.reopen.store(true, Ordering::Relaxed);
    }
}

/// Records waiting at most (bounded memory).
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// Bytes of records waiting at most.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Starts the writer thread. It ends when every [`AuditQueue`] is dropped.
pub fn start_writer(mut sinks: AuditSinks) -> (AuditQueue, std::thread::JoinHandle<()>) {
    let queue = AuditQueue::new();
    let counters = Arc::clone(&queue.counters);
    let c = Arc::clone(&counters);
    let jobs = Arc::clone(&queue.queue);
    let falco = sinks
        .falcosidekick
        .take()
        .and_then(|e| start_falco_poster(e, Arc::clone(&counters)));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // Encoded once: every record starts with it.
    let node = sinks
        .node
        .as_ref()
        .and_then(|n| serde_json::to_string(n).ok());
    let handle = std::thread::Builder::new()
        .name("driftlock-audit".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let mut hash_budget = RecordHashBudget::default();
            while let Some(job) = jobs.pop() {
                let job_bytes = job.approx_bytes() as u64;
                let mut line = match job {
                    AuditJob::Exec {
                        mut record,
                        file,
                        process,
                    } => {
                        if let Some(p) = process {
                            p.read_into(&mut record);
                        }
                        // A file too large to be the image's (judged without hashing) is not
                        // hashed here either: an 8 EiB sparse file would hold this thread.
                        let small = record.size.is_none_or(|s| s <= MAX_RECORD_HASH)
                            && record.sha256.is_none()
                            && file.is_some()
                            && hash_budget.take(
                                &record.unit,
                                record.size.unwrap_or(0),
                                std::time::Instant::now(),
                            );
                        if let (Some(fd), None, true) =
                            (file.as_ref(), record.sha256.as_ref(), small)
                        {
                            let deadline =
                                std::time::Instant::now() + std::time::Duration::from_secs(10);
                            if let Ok(d) =
                                hash_fd_content(fd.as_fd(), &mut buf, true, Some(deadline))
                            {
                                // The SHA-256 describes the judged content only if this pass
                                // read the same bytes: compare BLAKE3s (metadata may move
                                // meanwhile, e.g. the container's removal unlinks the file).
                                let blake = d.blake3.to_string();
                                match record.blake3.as_ref() {
                                    Some(judged) if *judged == blake => {
                                        record.sha256 = d.sha256.map(hex::encode);
                                    }
                                    // Rewritten since the verdict: this pass describes
                                    // another content; leave it out.
                                    Some(_) => {}
                                    // Judged without a digest (too large for the image):
                                    // what this pass read may not be what was denied.
                                    None => {
                                        record.sha256 = d.sha256.map(hex::encode);
                                        record.blake3 = Some(blake);
                                        record.content_unverified = true;
                                    }
                                }
                            }
                        }
                        if let (Some(q), Some(fd), Some(sha), true) = (
                            sinks.quarantine.as_ref(),
                            file.as_ref(),
                            record.sha256.clone(),
                            record.verdict != Verdict::Allow,
                        ) {
                            let meta = evidence::EvidenceMeta {
                                sha256: sha.clone(),
                                size: record.size.unwrap_or(0),
                                first_seen: record.time.clone(),
                                path: record.path.clone(),
                                unit: record.unit.clone(),
                                image: record
                                    .image_name
                                    .clone()
                                    .unwrap_or_else(|| record.image_key.clone()),
                                verdict: record.verdict,
                            };
                            match q.keep(fd.as_fd(), &sha, record.size.unwrap_or(0), meta) {
                                Ok(id) => record.evidence = Some(id),
                                Err(e) => log::warn!("evidence of {sha} not kept: {e}"),
                            }
                        }
                        drop(file);
                        if let Some(tx) = &falco {
                            if tx.try_send(falco::to_falco(&record, &hostname)).is_err() {
                                c.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        record.to_json()
                    }
                    AuditJob::Coverage(c) => serde_json::to_string(&c).unwrap_or_default(),
                    AuditJob::Suppressed(s) => serde_json::to_string(&s).unwrap_or_default(),
                    AuditJob::Mode(m) => serde_json::to_string(&m).unwrap_or_default(),
                    AuditJob::Mapping(mut m) => {
                        m.read_source(&mut hash_budget, &mut buf);
                        serde_json::to_string(&m).unwrap_or_default()
                    }
                };
                if let (Some(node), Some(rest)) = (node.as_deref(), line.strip_prefix('{')) {
                    line = format!("{{\"node\":{node},{rest}");
                }
                line.push('\n');
                c.queued.fetch_sub(1, Ordering::Relaxed);
                if c.reopen.swap(false, Ordering::Relaxed) {
                    if let Some(path) = sinks.file_path.as_ref() {
                        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                            Ok(f) => sinks.file = Some(f),
                            Err(e) => log::error!(
                                "cannot reopen the audit log {}: {e}; still writing to the old file",
                                path.display()
                            ),
                        }
                    }
                }
                c.queued_bytes.fetch_sub(job_bytes, Ordering::Relaxed);
                let mut ok = true;
                if sinks.stdout {
                    let mut out = std::io::stdout().lock();
                    ok &= out
                        .write_all(line.as_bytes())
                        .and_then(|_| out.flush())
                        .is_ok();
                }
                if let Some(f) = sinks.file.as_mut() {
                    ok &= f.write_all(line.as_bytes()).is_ok();
                }
                if ok {
                    c.written.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    let handle = match handle {
        Ok(h) => h,
        // Spawning fails only when the process is out of threads or memory at startup.
        Err(e) => {
            log::error!("cannot start the audit writer: {e}");
            std::thread::spawn(|| {})
        }
    };
    (queue, handle)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_record_is_read_by_the_writer_only_if_it_is_still_the_same_file() {
        let dir = std::env::temp_dir().join(format!("driftlock-maprec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("lib.so");
        std::fs::write(&f, b"code").unwrap();
        let st = crate::kernel::stat_path(&f).unwrap();
        let dev = crate::kernel::mapping_gate::kernel_dev(st.dev);
        let record = |source| MappingRecord {
            v: 1,
            kind: "mapping".into(),
            time: "t".into(),
            unit: "u".into(),
            image_key: "k".into(),
            image_name: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            what: "mmap".into(),
            rule: "mapping".into(),
            path: None,
            file: String::new(),
            blake3: None,
            size: None,
            tid: 1,
            pid: 1,
            comm: None,
            ppid: None,
            detail: None,
            cmdline: Vec::new(),
            chain: Vec::new(),
            source,
        };
        let (mut budget, mut buf) = (RecordHashBudget::default(), Vec::new());
        let mut same = record(Some((f.clone(), dev, st.ino)));
        same.read_source(&mut budget, &mut buf);
        assert_eq!(same.blake3, Some(blake3::hash(b"code").to_string()));
        assert_eq!(same.size, Some(4));
        assert!(same.source.is_none(), "read once");
        let mut other = record(Some((f.clone(), dev, st.ino + 1)));
        other.read_source(&mut budget, &mut buf);
        assert_eq!(other.blake3, None, "another file now: not described");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_units_record_hashing_is_bounded_and_others_keep_theirs() {
        let mut b = RecordHashBudget::default();
        let t0 = std::time::Instant::now();
        let big = 200 << 20;
        // A burst, then nothing until it refills.
        assert!(b.take("flood", big, t0));
        assert!(b.take("flood", big, t0));
        assert!(!b.take("flood", big, t0));
        assert!(b.take("other", big, t0), "another unit has its own budget");
        // 64 MiB/s: after 4 s, 256 MiB more.
        let later = t0 + std::time::Duration::from_secs(4);
        assert!(b.take("flood", big, later));
        assert!(!b.take("flood", big, later));
    }
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn hostile_bytes_stay_on_one_line_and_round_trip() {
        let p = ProcessInfo {
            pid: 5,
            ppid: 1,
            uid: 0,
            comm: b"a\nb".to_vec(),
            cmdline: b"sh\0-c\0x\ny\xff".to_vec(),
            exe: None,
        };
        let rec = AuditRecord {
            v: RECORD_VERSION,
            time: rfc3339(UNIX_EPOCH),
            unit: "u".into(),
            image_key: escape_bytes(b"k"),
            image_name: None,
            k8s_namespace: None,
            k8s_pod: None,
            k8s_container: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            reason: Reason::NotInBaseline,
            path: Some(escape_bytes(b"/tmp/evil\nname\xff")),
            tid: 5,
            pid: Some(5),
            ppid: Some(1),
            uid: Some(0),
            comm: Some(escape_bytes(&p.comm)),
            cmdline: ProcessRecord::from(&p).cmdline,
            chain: vec![ProcessRecord::from(&p)],
            blake3: None,
            sha256: None,
            size: None,
            evidence: None,
            rule: None,
            detail: None,
            content_unverified: false,
            truncated: false,
        };
        let line = rec.to_json();
        assert!(!line.contains('\n'));
        assert!(line.contains("\"verdict\":\"deny\""));
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, rec);
        let path = crate::escape::unescape(back.path.as_deref().unwrap()).unwrap();
        assert_eq!(path, b"/tmp/evil\nname\xff");
        assert_eq!(back.cmdline, vec!["sh", "-c", "x\\x0ay\\xff"]);
        let long = ProcessInfo {
            cmdline: vec![b'a'; MAX_CMDLINE * 3],
            ..p
        };
        let r = ProcessRecord::from(&long);
        assert!(r.cmdline_truncated && r.cmdline[0].len() == MAX_CMDLINE);

        // Issue 14 (5): nine processes with 4 KiB command lines of bytes that escape to four
        // times their size fit one record of at most MAX_RECORD_BYTES, nearest kept first.
        let hostile = ProcessInfo {
            cmdline: vec![0xff; MAX_CMDLINE * 2],
            ..long
        };
        let mut big = rec.clone();
        big.cmdline = ProcessRecord::from(&hostile).cmdline;
        big.chain = vec![ProcessRecord::from(&hostile); MAX_CHAIN + 1];
        assert!(big.to_json().len() > MAX_RECORD_BYTES);
        big.fit(MAX_RECORD_BYTES);
        assert!(big.truncated);
        assert!(
            big.to_json().len() <= MAX_RECORD_BYTES,
            "{}",
            big.to_json().len()
        );
        assert!(
            !big.chain[0].cmdline.is_empty(),
            "the nearest process keeps its command line"
        );
        assert!(big.chain[MAX_CHAIN].cmdline.is_empty());
    }

    #[test]
    fn a_units_record_budget_holds_a_flood_back_and_summarizes_it() {
        let t0 = std::time::Instant::now();
        let mut b = RecordBudget::default();
        let written = (0..10_000).filter(|_| b.take(t0)).count();
        assert_eq!(written, RecordBudget::BURST as usize);
        assert_eq!(b.suppressed(), 10_000 - written as u64);
        assert_eq!(b.take_summary(t0), None, "no room for a summary yet");
        let later = t0 + std::time::Duration::from_secs(1);
        let (n, since) = b.take_summary(later).unwrap();
        assert_eq!(n, 10_000 - written as u64);
        assert!(since.ends_with('Z'));
        assert_eq!(b.suppressed(), 0);
        // One second refills PER_SECOND records (one went to the summary).
        let again = (0..1000).filter(|_| b.take(later)).count();
        assert_eq!(again, RecordBudget::PER_SECOND as usize - 1);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let queue = AuditQueue::new();
        let p = ProcessInfo {
            pid: 5,
            ppid: 1,
            uid: 0,
            comm: b"sh".to_vec(),
            cmdline: vec![b'a'; MAX_CMDLINE],
            exe: None,
        };
        let mut rec = AuditRecord {
            v: RECORD_VERSION,
            time: rfc3339(UNIX_EPOCH),
            unit: "u".into(),
            image_key: "k".into(),
            image_name: None,
            k8s_namespace: None,
            k8s_pod: None,
            k8s_container: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            reason: Reason::NotInBaseline,
            path: None,
            tid: 5,
            pid: None,
            ppid: None,
            uid: None,
            comm: None,
            cmdline: ProcessRecord::from(&p).cmdline,
            chain: vec![ProcessRecord::from(&p); MAX_CHAIN],
            blake3: None,
            sha256: None,
            size: None,
            evidence: None,
            rule: None,
            detail: None,
            content_unverified: false,
            truncated: false,
        };
        rec.fit(MAX_RECORD_BYTES);
        let each = rec.approx_bytes();
        for _ in 0..QUEUE_CAPACITY {
            queue.send(AuditJob::Exec {
                record: Box::new(rec.clone()),
                file: None,
                process: None,
            });
        }
        let queued = queue.counters().queued.load(Ordering::Relaxed) as usize;
        assert!(queued * each <= QUEUE_BYTES, "{queued} x {each}");
        assert!(queued < QUEUE_CAPACITY);
        assert_eq!(
            queue.counters().dropped.load(Ordering::Relaxed) as usize,
            QUEUE_CAPACITY - queued
        );
    }
}
