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

mod baseline;
mod code;
mod error;
mod explain;
mod layers;
mod memfd;
mod mode;
mod paths;
mod policy;
mod records;
mod request;
mod watcher;

use error::state_dir_error;
pub use error::{ArmError, ExplainError};
pub use memfd::MEMFD_NOEXEC_SYSCTL;
pub use mode::{ModeError, select};
pub use paths::derive_image_key;
use paths::{ResolvedUnit, UnitView, container_key, container_start_time, resolve_unit, valid_id};
pub use records::{PendingUnit, RearmError, RearmSummary, UnitRecord};
pub use request::{Armed, Identity, ModeSwitch, Selector, UnitRequest};
pub use watcher::watch_containers;

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
    /// The configuration in force ([`crate::config::Config::files_digest`]; `none`: no
    /// file), for metrics.
    pub config_digest: std::sync::Mutex<String>,
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

    /// Keeps the unit's record. Armed but unrecorded, a restart would drop the unit's
    /// protection without a word: the arm is undone, and the hook's fail-closed/fail-open
    /// setting decides.
    fn record_armed(
        &self,
        req: &UnitRequest,
        start_time: Option<u64>,
        unit: &ResolvedUnit,
    ) -> Result<(), ArmError> {
        let pid_namespace_init = req
            .pid
            .and_then(crate::kernel::procfs::is_pid_namespace_init);
        let record = UnitRecord {
            v: 1,
            request: req.clone(),
            start_time,
            rootfs_dev: unit.rootfs_stat.dev,
            rootfs_mnt_id: unit.rootfs_stat.mnt_id,
            rootfs_ino: Some(unit.rootfs_stat.ino),
            pid_namespace_init,
            cgroups: match (req.pid, pid_namespace_init) {
                (Some(pid), Some(false)) => crate::kernel::procfs::cgroup_procs_files(pid),
                _ => Vec::new(),
            },
        };
        if let Err(e) = self.save_record(&record) {
            if let Err(undo) = self.engine.disarm(&req.id) {
                log::error!("unit {:?}: cannot undo the arm: {undo}", req.id);
            }
            return Err(state_dir_error(e));
        }
        Ok(())
    }

    fn arm_inner(&self, mut req: UnitRequest, origin: ArmOrigin) -> Result<Armed, ArmError> {
        let started = Instant::now();
        if !valid_id(&req.id) {
            return Err(ArmError::BadId(req.id.chars().take(200).collect()));
        }
        if origin == ArmOrigin::Request {
            self.disarm_if_exited(&req.id);
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
                source: req.identity_source,
            },
            pid,
            mode,
            baseline: Arc::clone(&baseline),
            marks: unit.marks.clone(),
            allow,
            code_files,
            loader_files,
            pid_namespace: container_pid_namespace(pid),
            memory: self.memory_rules(&req.id, &baseline, req.image_name.as_deref()),
        })?;
        let record_started = Instant::now();
        self.record_armed(&req, start_time, &unit)?;
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
}

/// The container's PID namespace, where the gate may scope it: never the daemon's own (a
/// container sharing the host's PIDs), which would judge every process on the node.
fn container_pid_namespace(pid: Option<i32>) -> Option<u32> {
    let own = crate::kernel::procfs::pid_namespace(std::process::id() as i32);
    pid.and_then(crate::kernel::procfs::pid_namespace)
        .filter(|ns| Some(*ns) != own)
}

/// Milliseconds from `a` to `b`.
fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1e3
}
