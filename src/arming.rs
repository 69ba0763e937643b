//! Arming a unit: from a request to marks in place.
//!
//! A unit is either a set of mount points in the daemon's namespace (`driftlock arm
//! --rootfs DIR --mount PATH`), or a container reached through one of its processes
//! (`pid`, as the OCI hook sends it): then the paths are in the container's mount
//! namespace, reached through `/proc/<pid>/root`, and every mount under the rootfs is
//! found in `/proc/<pid>/mountinfo`. Each armed unit is recorded in the state directory, so
//! a restarted daemon re-arms the containers that still run, before it serves requests.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Mode;
use crate::audit::{AuditJob, AuditQueue, CoverageEvent, CoverageRecord, RECORD_VERSION, rfc3339};
use crate::baseline::BaselineStore;
use crate::baseline::store::{Provenance, StoreError, write_atomic};
use crate::engine::{EngineError, EngineHandle, UnitSpec};
use crate::escape::{escape_bytes, unescape};
use crate::ipc::{ArmRequest, ArmResult, ErrorCode, MarkReply};
use crate::kernel::mountinfo::{MountEntry, MountInfoError, read_mountinfo, read_mountinfo_of};
use crate::kernel::{KernelError, ns, procfs, stat_path};
use crate::registry::{MountTables, PlanError, discover_mounts, plan_marks};

/// Why an arm request failed.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// Bad id.
    #[error("invalid unit id {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - : @")]
    BadId(String),
    /// A path field is not in the escaped form or not absolute.
    #[error("invalid {field}: {reason}")]
    BadPath {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The container process is gone.
    #[error("container process {0} does not exist (did the container exit?)")]
    NoProcess(i32),
    /// A path does not exist or cannot be resolved.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// statx failed.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: KernelError,
    },
    /// Mount table.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// Marks.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Baseline.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state directory cannot be written (full, read-only, quota): the unit is not
    /// armed, since its baseline or its record (which a restart re-arms from) would be lost.
    #[error(
        "{0}; the unit was not armed: the state directory must be writable (free space or remount it read-write)"
    )]
    StateDir(#[source] StoreError),
    /// `vm.memfd_noexec` could not be set.
    #[error("cannot block fileless execution: {0}")]
    Memfd(#[source] KernelError),
    /// Engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ArmError {
    /// The protocol's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ArmError::BadId(_) | ArmError::BadPath { .. } | ArmError::Plan(_) => ErrorCode::Invalid,
            ArmError::NoProcess(_) | ArmError::Resolve { .. } => ErrorCode::NotFound,
            ArmError::Engine(e) => ErrorCode::from(e),
            ArmError::Stat { .. }
            | ArmError::MountInfo(_)
            | ArmError::Store(_)
            | ArmError::StateDir(_)
            | ArmError::Memfd(_) => ErrorCode::Internal,
        }
    }
}

/// Why `explain` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No such unit.
    #[error("no armed unit with id {0:?}")]
    UnknownId(String),
    /// The path is not in the escaped form.
    #[error("invalid path: {0}")]
    BadPath(String),
    /// The file could not be opened (as the container sees it).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path (escaped).
        path: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The file could not be hashed.
    #[error("cannot hash {path}: {source}")]
    Hash {
        /// The path (escaped).
        path: String,
        /// The error.
        #[source]
        source: crate::baseline::HashError,
    },
    /// The engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ExplainError {
    /// The protocol's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ExplainError::UnknownId(_) => ErrorCode::NotFound,
            ExplainError::BadPath(_) => ErrorCode::Invalid,
            ExplainError::Open { source, .. } if *source == nix::Error::ENOENT => {
                ErrorCode::NotFound
            }
            ExplainError::Open { .. } | ExplainError::Hash { .. } => ErrorCode::Internal,
            ExplainError::Engine(e) => ErrorCode::from(e),
        }
    }
}

/// Classifies a store error: a state directory that cannot be written gets its own
/// message, so an operator sees at once what to fix.
fn state_dir_error(e: StoreError) -> ArmError {
    let unwritable = |source: &std::io::Error| {
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EACCES | libc::EPERM)
        )
    };
    match e {
        StoreError::Io { ref source, .. } if unwritable(source) => ArmError::StateDir(e),
        e => ArmError::Store(e),
    }
}

/// What arming needs from the daemon.
pub struct Armer {
    /// The event loop.
    pub engine: EngineHandle,
    /// The baseline store.
    pub store: BaselineStore,
    /// Mode for requests without one.
    pub default_mode: Mode,
    /// Threads per snapshot.
    pub snapshot_threads: usize,
    /// Set `vm.memfd_noexec=2` in each container's PID namespace.
    pub memfd_noexec: bool,
    /// Where unit records live (`STATE_DIR/units`).
    pub units_dir: PathBuf,
    /// Mode rules and allow entries from the configuration file (replaced on SIGHUP).
    pub policy: std::sync::RwLock<crate::config::Config>,
    /// Arm counters for metrics.
    pub stats: ArmStats,
    /// Known-bad indicators checked at snapshot.
    pub indicators: Option<crate::baseline::indicators::Indicators>,
}

/// Arm counters.
#[derive(Debug, Default)]
pub struct ArmStats {
    /// Successful arms.
    pub armed: std::sync::atomic::AtomicU64,
    /// Failed arms.
    pub failed: std::sync::atomic::AtomicU64,
    /// Total time of successful arms, microseconds.
    pub micros: std::sync::atomic::AtomicU64,
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b))
}

/// Decodes an escaped absolute path. In the daemon's namespace it is canonicalized; in a
/// container's it must already be normal (no `.`, `..` or empty components), since it is
/// matched against that namespace's mount table as written.
fn decode_path(field: &'static str, text: &str, canonicalize: bool) -> Result<PathBuf, ArmError> {
    let bytes = unescape(text).map_err(|e| ArmError::BadPath {
        field,
        reason: e.to_string(),
    })?;
    let bad = |reason: String| ArmError::BadPath { field, reason };
    if bytes.first() != Some(&b'/') {
        return Err(bad(format!(
            "{} is not an absolute path",
            escape_bytes(&bytes)
        )));
    }
    let path = PathBuf::from(OsString::from_vec(bytes));
    if canonicalize {
        return path
            .canonicalize()
            .map_err(|source| ArmError::Resolve { path, source });
    }
    let abnormal = path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .skip(1)
        .any(|c| c == b"." || c == b"..")
        || (path.as_os_str().len() > 1 && path.as_os_str().as_bytes().ends_with(b"/"));
    if abnormal {
        return Err(bad(format!(
            "{} is not a normal path",
            escape_bytes(path.as_os_str().as_bytes())
        )));
    }
    Ok(path)
}

/// The image key of a rootfs: for an overlay, its lower layers (identical images share
/// them, and lower layers are immutable, so a stored baseline stays valid); otherwise
/// `None`, and the directory is snapshotted at every arm.
pub fn derive_image_key(
    rootfs: &Path,
    mounts: &[MountEntry],
    mnt_id_legacy: u64,
) -> Option<Vec<u8>> {
    let entry = mounts.iter().rev().find(|m| m.mount_id == mnt_id_legacy)?;
    if entry.fstype != "overlay" || entry.mount_point != rootfs {
        return None;
    }
    let lower = entry
        .super_options
        .split(|b| *b == b',')
        .find_map(|opt| opt.strip_prefix(b"lowerdir="))?;
    let mut key = b"overlay-lower:".to_vec();
    key.extend_from_slice(lower);
    Some(key)
}

/// What a restarted daemon needs to arm a unit again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnitRecord {
    /// Record format version.
    pub v: u32,
    /// The request as armed (with the image key filled in).
    pub request: ArmRequest,
    /// Start time of `request.pid`, to tell the container from a reused pid.
    pub start_time: Option<u64>,
    /// Device of the rootfs, to find it again after the container's `pivot_root`.
    pub rootfs_dev: u64,
    /// Mount id of the rootfs (for units armed by path).
    pub rootfs_mnt_id: u64,
}

impl Armer {
    /// Arms a unit; returns once its marks are in place, and records it.
    pub fn arm(&self, req: ArmRequest) -> Result<ArmResult, ArmError> {
        use std::sync::atomic::Ordering::Relaxed;
        let result = self.arm_inner(req);
        match &result {
            Ok(r) => {
                self.stats.armed.fetch_add(1, Relaxed);
                self.stats
                    .micros
                    .fetch_add((r.arm_ms * 1e3) as u64, Relaxed);
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Relaxed);
            }
        }
        result
    }

    fn arm_inner(&self, mut req: ArmRequest) -> Result<ArmResult, ArmError> {
        let started = Instant::now();
        if !valid_id(&req.id) {
            return Err(ArmError::BadId(req.id.chars().take(200).collect()));
        }
        let pid = req.pid;
        let start_time = match pid {
            Some(p) if p > 0 => Some(procfs::start_time(p).ok_or(ArmError::NoProcess(p))?),
            Some(p) => return Err(ArmError::NoProcess(p)),
            None => None,
        };
        let prefix = pid.map(|p| PathBuf::from(format!("/proc/{p}/root")));
        let access = |p: &Path| -> PathBuf {
            match &prefix {
                Some(pre) => pre.join(p.strip_prefix("/").unwrap_or(p)),
                None => p.to_path_buf(),
            }
        };
        let in_daemon_ns = pid.is_none();
        let rootfs = decode_path("rootfs", &req.rootfs, in_daemon_ns)?;
        let daemon_mounts = read_mountinfo()?;
        let ns_mounts = match pid {
            Some(p) => read_mountinfo_of(p)?,
            None => daemon_mounts.clone(),
        };
        let mut paths = vec![rootfs.clone()];
        for m in &req.mounts {
            paths.push(decode_path("mount", m, in_daemon_ns)?);
        }
        if req.discover_mounts {
            for m in discover_mounts(&ns_mounts, &rootfs) {
                if !paths.contains(&m) {
                    paths.push(m);
                }
            }
        }
        let mut stats = Vec::with_capacity(paths.len());
        for p in paths {
            let st = stat_path(&access(&p)).map_err(|source| ArmError::Stat {
                path: p.clone(),
                source,
            })?;
            stats.push((p, st));
        }
        let daemon_inside = match &req.host_rootfs {
            Some(h) => vec![decode_path("host_rootfs", h, false)?],
            None => Vec::new(),
        };
        let tables = MountTables {
            unit: if in_daemon_ns {
                &daemon_mounts
            } else {
                &ns_mounts
            },
            daemon: &daemon_mounts,
            daemon_inside: &daemon_inside,
        };
        let marks = plan_marks(&stats, &tables, &access)?;
        let (mode, allow) = {
            let policy = self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                policy.mode_for(
                    req.mode,
                    req.image_name.as_deref(),
                    req.namespace.as_deref(),
                    self.default_mode,
                ),
                policy.allowed_for(req.image_name.as_deref()),
            )
        };

        let baseline_started = Instant::now();
        let explicit_key = match req.image_key.as_deref() {
            Some(k) => Some(unescape(k).map_err(|e| ArmError::BadPath {
                field: "image_key",
                reason: e.to_string(),
            })?),
            None => derive_image_key(&rootfs, &ns_mounts, stats[0].1.mnt_id_legacy),
        };
        let snapshot_root = access(&rootfs);
        let indicators = self.indicators.as_ref();
        // A new indicator list means new snapshots: it is part of the store key.
        let explicit_key = explicit_key.map(|mut k| {
            if let Some(i) = indicators {
                k.extend_from_slice(format!("\0indicators:{}", i.digest()).as_bytes());
            }
            k
        });
        let (baseline, provenance, skipped) = match explicit_key {
            Some(key) => {
                let (b, prov, snap) = self
                    .store
                    .load_or_snapshot(&key, &snapshot_root, self.snapshot_threads, indicators)
                    .map_err(state_dir_error)?;
                (b, prov, snap.map_or(0, |s| s.errors.len()))
            }
            None => {
                let mut key = b"rootfs:".to_vec();
                key.extend_from_slice(rootfs.as_os_str().as_bytes());
                let snap = crate::baseline::snapshot_checked(
                    &snapshot_root,
                    key,
                    self.snapshot_threads,
                    indicators,
                )
                .map_err(StoreError::from)?;
                self.store.save(&snap.baseline).map_err(state_dir_error)?;
                (snap.baseline, Provenance::Snapshotted, snap.errors.len())
            }
        };
        for bad in baseline.known_bad() {
            log::error!(
                "unit {:?}: {} in the image matches known-bad indicator {}; its execution will be denied",
                req.id,
                escape_bytes(&bad.path),
                bad.indicator
            );
        }
        if skipped > 0 {
            log::warn!(
                "unit {:?}: the snapshot skipped {skipped} files (they will be denied)",
                req.id
            );
        }
        let baseline_ms = baseline_started.elapsed().as_secs_f64() * 1e3;
        let memfd_noexec = match pid {
            Some(p) if self.memfd_noexec => {
                ns::set_memfd_noexec(p, 2).map_err(ArmError::Memfd)?;
                true
            }
            _ => false,
        };
        req.image_key = Some(escape_bytes(baseline.key()));
        let image_key = escape_bytes(baseline.key());
        let contents = baseline.distinct_contents();
        let placed = self.engine.arm(UnitSpec {
            id: req.id.clone(),
            image_key: baseline.key().to_vec(),
            image_name: req.image_name.clone(),
            k8s: crate::registry::K8sContext {
                namespace: req.namespace.clone(),
                pod: req.pod.clone(),
                container: req.container_name.clone(),
            },
            pid,
            mode,
            baseline: Arc::new(baseline),
            marks,
            allow,
        })?;
        let record = UnitRecord {
            v: 1,
            request: req.clone(),
            start_time,
            rootfs_dev: stats[0].1.dev,
            rootfs_mnt_id: stats[0].1.mnt_id,
        };
        if let Err(e) = self.save_record(&record) {
            // Armed but unrecorded, a restart would drop the unit's protection without a
            // word: undo it, and let the hook's fail-closed/fail-open setting decide.
            if let Err(undo) = self.engine.disarm(&req.id) {
                log::error!("unit {:?}: cannot undo the arm: {undo}", req.id);
            }
            return Err(state_dir_error(e));
        }
        Ok(ArmResult {
            id: req.id,
            mode,
            image_key,
            baseline: provenance,
            baseline_contents: contents,
            snapshot_skipped: skipped,
            baseline_ms,
            arm_ms: started.elapsed().as_secs_f64() * 1e3,
            memfd_noexec,
            marks: placed.iter().map(MarkReply::from).collect(),
        })
    }

    /// Replaces the policy and pushes each armed unit's allow entries to the engine.
    /// Returns how many units were updated.
    pub fn apply_policy(&self, policy: crate::config::Config) -> usize {
        let Ok(status) = self.engine.status() else {
            return 0;
        };
        let mut updated = 0;
        for u in &status.units {
            let list = policy.allowed_for(u.image_name.as_deref());
            if self.engine.set_allow(&u.id, list).is_ok() {
                updated += 1;
            }
        }
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
        updated
    }

    /// Hashes `path` (escaped, as unit `id` sees it) and asks the engine why it would or
    /// would not run there.
    pub fn explain(
        &self,
        id: &str,
        path: &str,
    ) -> Result<crate::engine::Explanation, ExplainError> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        use std::os::fd::AsFd;
        let status = self.engine.status()?;
        let unit = status
            .units
            .iter()
            .find(|u| u.id == id)
            .ok_or_else(|| ExplainError::UnknownId(id.to_string()))?;
        let bytes = unescape(path).map_err(|e| ExplainError::BadPath(e.to_string()))?;
        let shown = escape_bytes(&bytes);
        let open_err = |source: nix::Error| ExplainError::Open {
            path: shown.clone(),
            source,
        };
        let fd = match unit.pid {
            // As the container sees it: resolved inside its root.
            Some(pid) => {
                let root = nix::fcntl::open(
                    format!("/proc/{pid}/root").as_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(open_err)?;
                let rel = bytes.strip_prefix(b"/").unwrap_or(&bytes);
                let how = OpenHow::new()
                    .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT);
                openat2(root.as_fd(), std::ffi::OsStr::from_bytes(rel), how).map_err(open_err)?
            }
            None => nix::fcntl::open(
                std::ffi::OsStr::from_bytes(&bytes),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(open_err)?,
        };
        let d = crate::baseline::hash_fd(fd.as_fd(), &mut Vec::new(), true, None).map_err(
            |source| ExplainError::Hash {
                path: shown.clone(),
                source,
            },
        )?;
        let mut e = self.engine.explain(id, d)?;
        e.path = shown;
        Ok(e)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.units_dir.join(format!("{id}.json"))
    }

    fn save_record(&self, record: &UnitRecord) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.units_dir).map_err(|source| StoreError::Io {
            path: self.units_dir.clone(),
            source,
        })?;
        let data = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&self.record_path(&record.request.id), &data)
    }

    /// Forgets a unit's record (after disarm).
    pub fn forget(&self, id: &str) {
        if valid_id(id) {
            let _ = std::fs::remove_file(self.record_path(id));
        }
    }

    /// Re-arms every recorded unit whose container still runs (same pid and start time)
    /// and forgets the rest. Returns (re-armed, forgotten).
    pub fn rearm_recorded(&self) -> (usize, usize) {
        let Ok(dir) = std::fs::read_dir(&self.units_dir) else {
            return (0, 0);
        };
        let (mut rearmed, mut forgotten) = (0, 0);
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension() != Some(std::ffi::OsStr::new("json")) {
                continue;
            }
            let outcome = std::fs::read(&path)
                .ok()
                .and_then(|d| serde_json::from_slice::<UnitRecord>(&d).ok())
                .ok_or_else(|| "unreadable record".to_string())
                .and_then(|rec| self.rearm_one(rec));
            match outcome {
                Ok(id) => {
                    log::info!("re-armed unit {id:?} after restart");
                    rearmed += 1;
                }
                Err(why) => {
                    log::info!("forgetting {}: {why}", path.display());
                    let _ = std::fs::remove_file(&path);
                    forgotten += 1;
                }
            }
        }
        (rearmed, forgotten)
    }

    fn rearm_one(&self, rec: UnitRecord) -> Result<String, String> {
        let mut req = rec.request;
        match req.pid {
            Some(pid) => {
                if procfs::start_time(pid) != rec.start_time || rec.start_time.is_none() {
                    return Err(format!("container process {pid} is gone"));
                }
                // After pivot_root the rootfs is "/" in the container's view: find it again
                // by its device, as the shallowest mount of that filesystem.
                let mounts = read_mountinfo_of(pid).map_err(|e| e.to_string())?;
                let rootfs = mounts
                    .iter()
                    .filter(|m| m.dev == rec.rootfs_dev)
                    .map(|m| m.mount_point.clone())
                    .min_by_key(|p| p.components().count())
                    .ok_or("its rootfs is no longer mounted")?;
                req.rootfs = escape_bytes(rootfs.as_os_str().as_bytes());
                // Mounts named explicitly were in the old view; discovery finds them again.
                req.mounts.clear();
                req.discover_mounts = true;
            }
            None => {
                let rootfs = decode_path("rootfs", &req.rootfs, true).map_err(|e| e.to_string())?;
                let live = stat_path(&rootfs).is_ok_and(|s| s.mnt_id == rec.rootfs_mnt_id);
                if !live {
                    return Err("its rootfs mount is gone".into());
                }
            }
        }
        self.arm(req).map(|r| r.id).map_err(|e| e.to_string())
    }
}

impl Armer {
    fn load_record(&self, id: &str) -> Option<UnitRecord> {
        let data = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Marks every mount of container `id` (armed by `pid`) that is not covered yet, and
    /// returns a coverage record for each mount it found new.
    pub fn refresh_mounts(
        &self,
        id: &str,
        pid: i32,
        covered: &[crate::registry::PlannedMark],
    ) -> Vec<CoverageRecord> {
        let Some(rec) = self.load_record(id) else {
            return Vec::new();
        };
        let (Ok(ns_mounts), Ok(daemon_mounts)) = (read_mountinfo_of(pid), read_mountinfo()) else {
            return Vec::new();
        };
        let Some(rootfs) = ns_mounts
            .iter()
            .filter(|m| m.dev == rec.rootfs_dev)
            .map(|m| m.mount_point.clone())
            .min_by_key(|p| p.components().count())
        else {
            return Vec::new();
        };
        let prefix = PathBuf::from(format!("/proc/{pid}/root"));
        let access = |p: &Path| prefix.join(p.strip_prefix("/").unwrap_or(p));
        // Mounts can come and go while we look: keep the ones that still stat as listed.
        let stats: Vec<_> = discover_mounts(&ns_mounts, &rootfs)
            .into_iter()
            .filter_map(|p| stat_path(&access(&p)).ok().map(|st| (p, st)))
            .filter(|(p, st)| {
                ns_mounts
                    .iter()
                    .rev()
                    .find(|m| m.mount_id == st.mnt_id_legacy)
                    .is_some_and(|m| m.mount_point == *p)
            })
            .collect();
        let daemon_inside = match &rec.request.host_rootfs {
            Some(h) => decode_path("host_rootfs", h, false)
                .ok()
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        let tables = MountTables {
            unit: &ns_mounts,
            daemon: &daemon_mounts,
            daemon_inside: &daemon_inside,
        };
        let Ok(plan) = plan_marks(&stats, &tables, &access) else {
            return Vec::new();
        };
        let is_covered = |m: &crate::registry::PlannedMark| {
            covered.iter().any(|c| match (c.kind, m.kind) {
                (crate::kernel::MarkKind::Filesystem, _) => c.dev == m.dev,
                (crate::kernel::MarkKind::Mount, crate::kernel::MarkKind::Mount) => {
                    c.mnt_id == m.mnt_id
                }
                _ => false,
            })
        };
        let new: Vec<_> = plan.into_iter().filter(|m| !is_covered(m)).collect();
        if new.is_empty() {
            return Vec::new();
        }
        let shown = |m: &crate::registry::PlannedMark| {
            let inner = m
                .path
                .strip_prefix(&prefix)
                .map(|p| Path::new("/").join(p))
                .unwrap_or_else(|_| m.path.clone());
            escape_bytes(inner.as_os_str().as_bytes())
        };
        let record = |m: &crate::registry::PlannedMark, event, mark, error| CoverageRecord {
            v: RECORD_VERSION,
            kind: "coverage".into(),
            time: rfc3339(std::time::SystemTime::now()),
            unit: id.to_string(),
            event,
            path: shown(m),
            fstype: m.fstype.clone(),
            mark,
            error,
        };
        match self.engine.add_marks(id, new.clone()) {
            Ok(added) => added
                .placed
                .iter()
                .map(|m| record(m, CoverageEvent::MountArmed, Some(m.kind), None))
                .chain(added.failed.iter().map(|(m, why)| {
                    record(m, CoverageEvent::MountNotArmed, None, Some(why.clone()))
                }))
                .collect(),
            Err(e) => new
                .iter()
                .map(|m| record(m, CoverageEvent::MountNotArmed, None, Some(e.to_string())))
                .collect(),
        }
    }
}

/// How often the mount watcher looks for newly armed or disarmed containers.
const WATCH_TICK: Duration = Duration::from_millis(250);

/// Watches the mount table of every container armed by pid and arms mounts that appear
/// after start (a privileged container mounting a tmpfs, `nsenter` adding a mount).
/// `/proc/<pid>/mountinfo` reports any change in that namespace as `POLLPRI`; between the
/// mount and its mark an exec from it is unchecked for a few milliseconds, and a mount that
/// cannot be marked is recorded as `mount-not-armed`.
pub fn watch_mounts(
    armer: std::sync::Arc<Armer>,
    audit: AuditQueue,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::collections::HashMap;
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let mut watched: HashMap<String, (i32, std::fs::File)> = HashMap::new();
    let drain = |f: &mut std::fs::File| {
        let mut sink = Vec::new();
        let _ = f.rewind();
        let _ = f.read_to_end(&mut sink);
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(status) = armer.engine.status() else {
            std::thread::sleep(WATCH_TICK);
            continue;
        };
        watched.retain(|id, (pid, _)| {
            status
                .units
                .iter()
                .any(|u| u.id == *id && u.pid == Some(*pid))
        });
        for u in &status.units {
            let Some(pid) = u.pid else { continue };
            if watched.contains_key(&u.id) {
                continue;
            }
            if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/mountinfo")) {
                drain(&mut f);
                watched.insert(u.id.clone(), (pid, f));
                // Mounts made between arming and now.
                for rec in armer.refresh_mounts(&u.id, pid, &u.marks) {
                    audit.send(AuditJob::Coverage(rec));
                }
            }
        }
        let ids: Vec<String> = watched.keys().cloned().collect();
        let changed: Vec<String> = {
            let mut fds: Vec<PollFd<'_>> = ids
                .iter()
                .filter_map(|id| watched.get(id))
                .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLPRI))
                .collect();
            let timeout =
                PollTimeout::try_from(WATCH_TICK.as_millis() as i32).unwrap_or(PollTimeout::NONE);
            if fds.is_empty() {
                drop(fds);
                std::thread::sleep(WATCH_TICK);
                continue;
            }
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => ids
                    .iter()
                    .zip(fds.iter())
                    .filter(|(_, fd)| {
                        fd.revents()
                            .is_some_and(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR))
                    })
                    .map(|(id, _)| id.clone())
                    .collect(),
                _ => Vec::new(),
            }
        };
        for id in changed {
            let Some((pid, f)) = watched.get_mut(&id) else {
                continue;
            };
            drain(f);
            let pid = *pid;
            let marks = status
                .units
                .iter()
                .find(|u| u.id == id)
                .map(|u| u.marks.clone())
                .unwrap_or_default();
            for rec in armer.refresh_mounts(&id, pid, &marks) {
                audit.send(AuditJob::Coverage(rec));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::mountinfo::parse_mountinfo;

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("c0ffee:web-1.a_b@x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a\nb"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn overlay_key_comes_from_the_lower_layers() {
        let m = parse_mountinfo(
            b"5 1 0:41 / /t/rootfs rw - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u,workdir=/w\n\
              6 1 0:42 / /t/plain rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(
            derive_image_key(Path::new("/t/rootfs"), &m, 5).unwrap(),
            b"overlay-lower:/l/2:/l/1".to_vec()
        );
        assert_eq!(derive_image_key(Path::new("/t/plain"), &m, 6), None);
    }

    #[test]
    fn paths_are_checked() {
        assert!(matches!(
            decode_path("rootfs", "relative", true),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/bad\\q", true),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/nonexistent/x", true),
            Err(ArmError::Resolve { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/a/../b", false),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/a/./b", false),
            Err(ArmError::BadPath { .. })
        ));
        assert_eq!(
            decode_path("rootfs", "/a/b", false).unwrap(),
            Path::new("/a/b")
        );
        assert_eq!(decode_path("rootfs", "/", false).unwrap(), Path::new("/"));
    }
}
