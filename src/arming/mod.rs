//! Arming a unit: from a request to marks in place.
//!
//! A unit is either a set of mount points in the daemon's namespace (`driftlock arm
//! --rootfs DIR --mount PATH`), or a container reached through one of its processes
//! (`pid`, as the OCI hook sends it): then the paths are in the container's mount
//! namespace, reached through `/proc/<pid>/root`, and every mount under the rootfs is
//! found in `/proc/<pid>/mountinfo`. Each armed unit is recorded in the state directory, so
//! a restarted daemon re-arms the containers that still run, before it serves requests.
//!
//! The rooms: this file arms (request → baseline → marks → record); `paths` resolves a
//! unit's paths and mounts; `records` saves, loads and re-arms unit records; `watcher`
//! arms mounts that appear after a container started.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::Mode;
use crate::baseline::store::{Provenance, StoreError};
use crate::baseline::{Baseline, BaselineStore};
use crate::engine::{EngineError, EngineHandle, UnitSpec};
use crate::escape::{escape_bytes, unescape};
use crate::kernel::mountinfo::MountInfoError;
use crate::kernel::{KernelError, ns};
use crate::registry::PlanError;

mod code;
mod layers;
mod mode;
mod paths;
mod records;
mod request;
mod watcher;

pub use mode::{ModeError, select};
pub use paths::derive_image_key;
use paths::{ResolvedUnit, UnitView, container_start_time, resolve_unit, valid_id};
pub use records::{PendingUnit, RearmError, RearmSummary, UnitRecord};
pub use request::{Armed, Identity, ModeSwitch, Selector, UnitRequest};
pub use watcher::watch_mounts;

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
    /// The image's layers could not be snapshotted on their own.
    #[error(
        "cannot snapshot the image's layers: {0}; a baseline is never taken of a container's writable layer"
    )]
    Layers(String),
    /// A restarted or re-armed container without image layers has lost its baseline.
    #[error(
        "the stored baseline {key} of unit {id:?} is gone; a rootfs without image layers is never snapshotted again once its container has run (it may hold what the container wrote): restore the baseline file or re-create the container"
    )]
    BaselineGone {
        /// The unit.
        id: String,
        /// The store key (escaped).
        key: String,
    },
    /// Engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
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

/// Why a unit is being armed: a request, or the daemon re-arming a unit it recorded
/// (after a restart, or retrying a re-arm that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArmOrigin {
    /// A hook or an operator asked.
    Request,
    /// A recorded unit armed again: its image key is the exact store key it was armed with,
    /// and its container has run, so its rootfs may hold what it wrote.
    Rearm,
}

/// The store key of a rootfs without image layers: the container and the very directory
/// (device and inode) it was first armed with, so that a restart of that container finds
/// its first baseline again, and a new container made at the same path does not.
fn container_key(req: &UnitRequest, unit: &ResolvedUnit) -> Vec<u8> {
    let mut key = b"rootfs:".to_vec();
    key.extend_from_slice(unit.rootfs.as_os_str().as_bytes());
    key.extend_from_slice(
        format!(
            "\0unit:{}\0dir:{}:{}",
            req.id, unit.rootfs_stat.dev, unit.rootfs_stat.ino
        )
        .as_bytes(),
    );
    key
}

/// How long `explain` may spend hashing the file it is asked about.
const EXPLAIN_HASH_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// The sysctl that refuses executable memfds (per PID namespace, 6.3 and later).
pub const MEMFD_NOEXEC_SYSCTL: &str = "/proc/sys/vm/memfd_noexec";

/// What arming needs from the daemon.
pub struct Armer {
    /// The event loop.
    pub engine: EngineHandle,
    /// The baseline store.
    pub store: BaselineStore,
    /// Mode for requests without one (the configuration file's, reloaded with it).
    pub default_mode: std::sync::Mutex<Mode>,
    /// How far a container's own mode annotation counts.
    pub annotations: crate::AnnotationPolicy,
    /// Threads per snapshot.
    pub snapshot_threads: usize,
    /// Set `vm.memfd_noexec=2` in each container's PID namespace (cleared, with a warning,
    /// when the kernel turns out not to have it).
    pub memfd_noexec: std::sync::atomic::AtomicBool,
    /// What the kernel offers, as probed at start (and corrected by what arming finds).
    pub features: std::sync::RwLock<crate::kernel::features::KernelFeatures>,
    /// The metrics endpoint, in words (`status`); empty when metrics are off.
    pub metrics_state: std::sync::Mutex<String>,
    /// Baselines in use, by store key: every unit of an image shares one copy in memory.
    pub shared_baselines:
        std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::sync::Weak<Baseline>>>,
    /// Where unit records live (`STATE_DIR/units`).
    pub units_dir: PathBuf,
    /// Mode rules and allow entries from the configuration file (replaced on SIGHUP).
    pub policy: std::sync::RwLock<crate::config::Config>,
    /// Arm counters for metrics.
    pub stats: ArmStats,
    /// Known-bad indicators checked at snapshot.
    pub indicators: Option<crate::baseline::indicators::Indicators>,
    /// The mapping gate is active: arms enter the image's code objects into it.
    pub mapping_gate: bool,
    /// What the mapping gate is doing, in words (`status`, metrics).
    pub mapping_gate_state: String,
    /// Where operator actions (mode switches) are recorded; taken at shutdown, so the
    /// writer can end.
    pub audit: std::sync::Mutex<Option<crate::audit::AuditQueue>>,
    /// Recorded units whose re-arm failed, by id: retried.
    pub pending: std::sync::Mutex<std::collections::BTreeMap<String, PendingUnit>>,
    /// The resident helper that sets `vm.memfd_noexec` in containers (`None`: a fork per
    /// arm does it).
    pub memfd_setter: Option<crate::kernel::ns::MemfdSetter>,
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
    /// Configuration reloads applied (SIGHUP).
    pub reloads: std::sync::atomic::AtomicU64,
    /// Configuration reloads refused (the file was broken; the running one kept).
    pub reload_errors: std::sync::atomic::AtomicU64,
    /// Containers that started unprotected (fail-open), as their hooks reported.
    pub fail_open: std::sync::atomic::AtomicU64,
}

impl Armer {
    /// Arms a unit; returns once its marks are in place, and records it.
    pub fn arm(&self, req: UnitRequest) -> Result<Armed, ArmError> {
        self.arm_as(req, ArmOrigin::Request)
    }

    pub(crate) fn arm_as(&self, req: UnitRequest, origin: ArmOrigin) -> Result<Armed, ArmError> {
        use std::sync::atomic::Ordering::Relaxed;
        let result = self.arm_inner(req, origin);
        match &result {
            Ok(r) => {
                self.pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&r.id);
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

    fn arm_inner(&self, mut req: UnitRequest, origin: ArmOrigin) -> Result<Armed, ArmError> {
        let started = Instant::now();
        if !valid_id(&req.id) {
            return Err(ArmError::BadId(req.id.chars().take(200).collect()));
        }
        let pid = req.pid;
        let start_time = container_start_time(pid)?;
        let view = UnitView::of(pid);
        let unit = resolve_unit(&req, &view)?;
        let (mode, allow) = self.policy_for(&req);
        let baseline_started = Instant::now();
        let resolve_ms = ms_between(started, baseline_started);
        let (baseline, provenance, skipped) = self.obtain_baseline(&req, &unit, &view, origin)?;
        let baseline = self.share(baseline);
        let baseline_ms = baseline_started.elapsed().as_secs_f64() * 1e3;
        let memfd_started = Instant::now();
        let memfd_noexec = match pid {
            // Audit mode never blocks: the sysctl would refuse executable memfds outright.
            Some(p)
                if mode == crate::Mode::Enforce
                    && self.memfd_noexec.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                self.block_fileless_exec(&req.id, p, origin)?
            }
            _ => false,
        };
        let marks_started = Instant::now();
        req.image_key = Some(escape_bytes(baseline.key()));
        let image_key = escape_bytes(baseline.key());
        let contents = baseline.distinct_contents();
        let (code_files, loader_files) = if self.mapping_gate {
            let overlay =
                layers::overlay_at(&unit.rootfs, &unit.mounts, unit.rootfs_stat.mnt_id_legacy);
            let upper = overlay.and_then(code::upper_dir);
            code::code_files(&baseline, &view.access(&unit.rootfs), upper.as_deref())
        } else {
            (Vec::new(), Vec::new())
        };
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
            baseline: Arc::clone(&baseline),
            marks: unit.marks,
            allow,
            code_files,
            loader_files,
            // Never the daemon's own namespace (a container sharing the host's PIDs): that
            // would judge every process on the node.
            pid_namespace: pid
                .and_then(crate::kernel::procfs::pid_namespace)
                .filter(|ns| {
                    Some(*ns) != crate::kernel::procfs::pid_namespace(std::process::id() as i32)
                }),
            memory: self.memory_rules(&req.id, &baseline, req.image_name.as_deref()),
        })?;
        let record_started = Instant::now();
        let record = UnitRecord {
            v: 1,
            request: req.clone(),
            start_time,
            rootfs_dev: unit.rootfs_stat.dev,
            rootfs_mnt_id: unit.rootfs_stat.mnt_id,
            rootfs_ino: Some(unit.rootfs_stat.ino),
        };
        if let Err(e) = self.save_record(&record) {
            // Armed but unrecorded, a restart would drop the unit's protection without a
            // word: undo it, and let the hook's fail-closed/fail-open setting decide.
            if let Err(undo) = self.engine.disarm(&req.id) {
                log::error!("unit {:?}: cannot undo the arm: {undo}", req.id);
            }
            return Err(state_dir_error(e));
        }
        let done = Instant::now();
        log::info!(
            "arm of {:?} took {:.2} ms: mounts {:.2}, baseline {:.2}, memfd_noexec {:.2}, marks {:.2}, record {:.2}",
            req.id,
            ms_between(started, done),
            resolve_ms,
            baseline_ms,
            ms_between(memfd_started, marks_started),
            ms_between(marks_started, record_started),
            ms_between(record_started, done)
        );
        Ok(Armed {
            id: req.id,
            mode,
            image_key,
            baseline: provenance,
            baseline_contents: contents,
            snapshot_skipped: skipped,
            baseline_ms,
            arm_ms: started.elapsed().as_secs_f64() * 1e3,
            memfd_noexec,
            marks: placed,
        })
    }

    /// Which memory-only code the gate refuses in a container: all of it, unless the image
    /// holds a JIT runtime (no memory rule but `/proc/<pid>/mem`) or a runtime that makes
    /// closures (anonymous and memfd executable memory allowed), or a `[[memory]]` rule
    /// says otherwise.
    fn memory_rules(
        &self,
        id: &str,
        baseline: &Baseline,
        image: Option<&str>,
    ) -> crate::kernel::mapping_gate::MemoryRules {
        let choice = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .memory_for(image);
        let jit = baseline.jit_runtime();
        let closures = baseline.closure_runtime();
        let (wx, anon) = if choice.strict {
            (true, true)
        } else if choice.jit || jit.is_some() {
            (false, false)
        } else {
            (true, closures.is_none())
        };
        if self.mapping_gate && !choice.strict {
            if let Some(path) = jit {
                log::info!(
                    "unit {id:?}: the image holds a JIT runtime ({}): code it makes in memory (anonymous or memfd executable memory, W^X) is not judged",
                    escape_bytes(path)
                );
            } else if let Some(path) = closures {
                log::info!(
                    "unit {id:?}: the image holds a runtime that makes closures ({}): anonymous and memfd executable memory is not judged (W^X on file mappings is; a [[memory]] rule with strict = true judges all)",
                    escape_bytes(path)
                );
            }
        }
        crate::kernel::mapping_gate::MemoryRules {
            wx,
            anon,
            proc_mem: !choice.debugger,
            foreign: !choice.own_filesystems,
        }
    }

    /// Sets `vm.memfd_noexec=2` in the PID namespace of `pid`; true if it was set. A kernel
    /// without the sysctl is a degradation (said once, in the log, `status` and metrics),
    /// never a refused container.
    fn block_fileless_exec(&self, id: &str, pid: i32, origin: ArmOrigin) -> Result<bool, ArmError> {
        use crate::kernel::KernelError;
        use crate::kernel::procfs::pid_namespace;
        // A container that shares the host's PID namespace (hostPID, --pid=host): the sysctl
        // would refuse executable memfds to every process of the node.
        let ours = pid_namespace(std::process::id() as i32);
        let theirs = pid_namespace(pid);
        if theirs.is_none() || theirs == ours {
            log::warn!(
                "unit {id:?} shares the node's PID namespace: vm.memfd_noexec is not set for it (it would apply to the whole node); fileless execution there is judged only where the mapping gate runs"
            );
            return Ok(false);
        }
        let set = match self.memfd_setter.as_ref().map(|h| h.set(pid, 2)) {
            Some(Ok(())) => Ok(()),
            Some(Err(Some(e))) => Err(e),
            // The helper is gone or stuck (killed): done here, as without it.
            Some(Err(None)) | None => ns::set_memfd_noexec(pid, 2),
        };
        match set {
            Ok(()) => Ok(true),
            // The helper's word alone is not trusted: the sysctl must be missing for the
            // daemon too (its file is the kernel's, whatever the PID namespace).
            Err(e @ KernelError::SysctlMissing { .. })
                if !std::path::Path::new(MEMFD_NOEXEC_SYSCTL).exists() =>
            {
                self.memfd_noexec_unavailable(&e.to_string());
                Ok(false)
            }
            // Set at the first arm already (the namespace keeps it); a container's root
            // must not be able to turn a re-arm into no protection at all by killing the
            // helper that writes it.
            Err(e) if origin == ArmOrigin::Rearm => {
                log::warn!("unit {id:?}: re-armed without setting vm.memfd_noexec again: {e}");
                Ok(false)
            }
            Err(e) => Err(ArmError::Memfd(e)),
        }
    }

    /// The copy of `baseline` other units of its image already hold, or a new shared one:
    /// fifty containers of one large image hold its baseline once.
    fn share(&self, baseline: Baseline) -> Arc<Baseline> {
        let mut shared = self
            .shared_baselines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = shared
            .get(baseline.key())
            .and_then(std::sync::Weak::upgrade)
        {
            if *existing == baseline {
                return existing;
            }
        }
        let arc = Arc::new(baseline);
        shared.insert(arc.key().to_vec(), Arc::downgrade(&arc));
        arc
    }

    /// The mode of containers no rule, annotation or request chooses one for.
    pub fn default_mode(&self) -> Mode {
        *self
            .default_mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the default mode for containers armed from now on; returns the previous one.
    pub fn set_default_mode(&self, mode: Mode) -> Mode {
        std::mem::replace(
            &mut *self
                .default_mode
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            mode,
        )
    }

    /// Sends a record to the audit writer (none after shutdown began).
    pub fn audit(&self, job: crate::audit::AuditJob) {
        if let Some(q) = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            q.send(job);
        }
    }

    /// Lets go of the audit writer (at shutdown: it ends when its last queue goes).
    pub fn close_audit(&self) {
        self.audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Has the audit writer reopen its log file (after a log rotation, on SIGHUP).
    pub fn reopen_audit_file(&self) {
        if let Some(q) = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            q.reopen_file();
        }
    }

    /// Records what the metrics endpoint is doing (`status` reports it).
    pub fn set_metrics_state(&self, state: String) {
        *self
            .metrics_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// Stops trying `vm.memfd_noexec` (the kernel lacks it) and says so once.
    pub fn memfd_noexec_unavailable(&self, why: &str) {
        use crate::kernel::features::{FeatureState, name};
        let was = self
            .memfd_noexec
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let covered_by_gate = self.mapping_gate;
        let not_covered = if covered_by_gate {
            "nothing: the mapping gate refuses fileless execution (memfd exec and executable memfd mappings) in armed containers"
        } else {
            "fileless execution (memfd_create + fexecve) in containers: neither vm.memfd_noexec nor the mapping gate is available"
        };
        if was {
            log::warn!(
                "vm.memfd_noexec unavailable ({why}): containers are armed without it; not covered: {not_covered}"
            );
        }
        self.features
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set(FeatureState {
                name: name::MEMFD_NOEXEC.into(),
                available: false,
                core: false,
                detail: why.to_string(),
                not_covered: not_covered.into(),
            });
    }

    /// The mode a container of `identity` would be armed in now.
    pub fn mode_for(&self, identity: &Identity) -> Mode {
        let req = UnitRequest::of_identity(identity);
        self.policy_for(&req).0
    }

    /// The unit's mode and allow entries under the configuration in force.
    fn policy_for(&self, req: &UnitRequest) -> (Mode, crate::config::AllowList) {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let admitted = self.annotations.admit(req.annotated_mode);
        if let (Some(asked), None) = (req.annotated_mode, admitted) {
            log::info!(
                "{:?}: its annotation asks for {asked} mode; set aside (annotations = {}): the operator's rules decide",
                req.id.chars().take(128).collect::<String>(),
                self.annotations
            );
        }
        (
            policy.mode_for(
                req.mode.or(admitted),
                req.image_name.as_deref(),
                req.namespace.as_deref(),
                self.default_mode(),
            ),
            policy.allowed_for(&crate::config::Identity {
                image: req.image_name.as_deref(),
                namespace: req.namespace.as_deref(),
                container: req.container_name.as_deref(),
            }),
        )
    }

    /// The unit's baseline: the stored one for its image key, or a snapshot (stored under
    /// that key) of the image, never of the container's writable state: an overlay rootfs is
    /// snapshotted through its lower layers alone; any other rootfs is snapshotted at its
    /// container's first arm only, and that baseline is reused at every later arm of the same
    /// container (a restart), never taken again. Returns the baseline, where it came from,
    /// and how many files the snapshot skipped.
    fn obtain_baseline(
        &self,
        req: &UnitRequest,
        unit: &ResolvedUnit,
        view: &UnitView,
        origin: ArmOrigin,
    ) -> Result<(Baseline, Provenance, usize), ArmError> {
        let indicators = self.indicators.as_ref();
        // A new indicator list means new snapshots: it is part of the store key.
        let with_indicators = |mut k: Vec<u8>| {
            if let Some(i) = indicators {
                k.extend_from_slice(format!("\0indicators:{}", i.digest()).as_bytes());
            }
            k
        };
        let requested = match req.image_key.as_deref() {
            Some(k) => Some(unescape(k).map_err(|e| ArmError::BadPath {
                field: "image_key",
                reason: e.to_string(),
            })?),
            None => None,
        };
        let overlay =
            layers::overlay_at(&unit.rootfs, &unit.mounts, unit.rootfs_stat.mnt_id_legacy);
        if origin == ArmOrigin::Rearm {
            if let Some(exact) = &requested {
                if let Some(b) = self.store.load(exact).map_err(state_dir_error)? {
                    return Ok(self.checked_baseline(req, b, Provenance::Stored, 0));
                }
                if overlay.is_none() {
                    return Err(ArmError::BaselineGone {
                        id: req.id.clone(),
                        key: escape_bytes(exact),
                    });
                }
                log::warn!(
                    "unit {:?}: its stored baseline is gone; snapshotting its image layers again",
                    req.id
                );
            }
        }
        let key = match (origin, requested) {
            (ArmOrigin::Request, Some(k)) => with_indicators(k),
            _ => match overlay {
                Some(entry) => {
                    let mut key = derive_image_key(
                        &unit.rootfs,
                        &unit.mounts,
                        unit.rootfs_stat.mnt_id_legacy,
                    )
                    .ok_or_else(|| ArmError::Layers("the overlay shows no lowerdir".into()))?;
                    // A lower layer outside a runtime's layer store may have changed since
                    // another container of the same lowerdir was snapshotted.
                    match layers::mutable_layers_state(entry) {
                        Ok(None) => {}
                        Ok(Some(state)) => {
                            key.extend_from_slice(b"\0layers-state:");
                            key.extend_from_slice(state.as_bytes());
                        }
                        Err(e) => {
                            log::warn!(
                                "unit {:?}: {e}; its layers are snapshotted for it alone",
                                req.id
                            );
                            key.extend_from_slice(b"\0");
                            key.extend_from_slice(&container_key(req, unit));
                        }
                    }
                    with_indicators(key)
                }
                None if origin == ArmOrigin::Rearm => {
                    return Err(ArmError::BaselineGone {
                        id: req.id.clone(),
                        key: "(none recorded)".into(),
                    });
                }
                None => with_indicators(container_key(req, unit)),
            },
        };
        let limits = crate::baseline::SnapshotLimits::default();
        let threads = self.snapshot_threads;
        let take = || -> Result<crate::baseline::Snapshot, ArmError> {
            let snapshot = |root: &std::path::Path| {
                crate::baseline::snapshot_limited(root, key.clone(), threads, indicators, limits)
                    .map_err(|e| ArmError::Store(e.into()))
            };
            match overlay {
                Some(entry) => {
                    let lower = layers::mount_lower_view(entry).map_err(ArmError::Layers)?;
                    let mut snap = snapshot(&crate::kernel::overlay::fd_path(&lower))?;
                    let mut source = unit.rootfs.as_os_str().as_bytes().to_vec();
                    source.extend_from_slice(b" (image layers)");
                    snap.baseline = snap.baseline.with_source(source);
                    Ok(snap)
                }
                None => snapshot(&view.access(&unit.rootfs)),
            }
        };
        let (baseline, provenance, snap) = self.store.load_or_else(&key, take, state_dir_error)?;
        let skipped = snap.as_ref().map_or(0, |s| s.errors.len());
        // Each skipped file with its reason (a few: the count says the rest).
        for e in snap.iter().flat_map(|s| s.errors.iter()).take(10) {
            log::warn!("unit {:?}: snapshot skipped {e}", req.id);
        }
        Ok(self.checked_baseline(req, baseline, provenance, skipped))
    }

    /// Logs what an operator must know about a unit's baseline, and passes it on.
    fn checked_baseline(
        &self,
        req: &UnitRequest,
        baseline: Baseline,
        provenance: Provenance,
        skipped: usize,
    ) -> (Baseline, Provenance, usize) {
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
        (baseline, provenance, skipped)
    }

    /// Replaces the policy and pushes each armed unit's allow entries to the engine.
    /// Returns how many units were updated.
    pub fn apply_policy(&self, policy: crate::config::Config) -> usize {
        let Ok(status) = self.engine.status() else {
            return 0;
        };
        let mut updated = 0;
        for u in &status.units {
            let list = policy.allowed_for(&crate::config::Identity {
                image: u.image_name.as_deref(),
                namespace: u.namespace.as_deref(),
                container: u.container_name.as_deref(),
            });
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
        use nix::fcntl::OFlag;
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
            Some(pid) => crate::kernel::open_in_root_of(pid, &bytes).map_err(open_err)?,
            None => nix::fcntl::open(
                std::ffi::OsStr::from_bytes(&bytes),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(open_err)?,
        };
        // Bounded like an exec's hash: a client must not hold an arming thread on a huge file.
        let deadline = Some(Instant::now() + EXPLAIN_HASH_BUDGET);
        let d = crate::baseline::hash_fd(fd.as_fd(), &mut Vec::new(), true, deadline).map_err(
            |source| ExplainError::Hash {
                path: shown.clone(),
                source,
            },
        )?;
        let mut e = self.engine.explain(id, d)?;
        e.path = shown;
        Ok(e)
    }
}

/// Milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1e3
}
