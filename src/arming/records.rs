//! Unit records: what a restarted daemon needs to arm each running container again,
//! saved atomically in `STATE_DIR/units/<id>.json`.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::UnitRequest;
use super::paths::{decode_path, rootfs_by_dev, valid_id};
use super::{ArmError, Armer};
use crate::baseline::store::{StoreError, write_atomic_unsynced};
use crate::escape::escape_bytes;
use crate::kernel::mountinfo::{MountInfoError, read_mountinfo_of};
use crate::kernel::{procfs, stat_path};

/// What a restarted daemon needs to arm a unit again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnitRecord {
    /// Record format version.
    pub v: u32,
    /// The request as armed (with the image key filled in).
    pub request: UnitRequest,
    /// Start time of `request.pid`, to tell the container from a reused pid.
    pub start_time: Option<u64>,
    /// Device of the rootfs, to find it again after the container's `pivot_root`.
    pub rootfs_dev: u64,
    /// Mount id of the rootfs (for units armed by path).
    pub rootfs_mnt_id: u64,
    /// Inode of the rootfs directory (for units armed by path): with the device, what
    /// identifies it in a successor whose mount namespace is new (systemd gives each start
    /// of a sandboxed unit one, with new mount ids).
    #[serde(default)]
    pub rootfs_ino: Option<u64>,
    /// `request.pid` was the init of a PID namespace of its own when armed: its exit ends
    /// the container (its unit is disarmed then, with no poststop hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace_init: Option<bool>,
    /// For an init that shares its PID namespace: the `cgroup.procs` files of its cgroups
    /// when armed. The container ends when one of them empties, not at the init's exit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<PathBuf>,
}

/// Re-arms at start stop after this long; the rest are retried once the daemon serves
/// (systemd's `TimeoutStartSec` is 120 s).
const STARTUP_REARM_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`Armer::rearm_recorded`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RearmSummary {
    /// Units armed again.
    pub rearmed: usize,
    /// Records of containers that are gone, deleted.
    pub forgotten: usize,
    /// Units whose re-arm failed: kept and retried.
    pub pending: usize,
}

/// A recorded unit whose re-arm failed, retried until armed or gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUnit {
    /// The unit.
    pub id: String,
    /// Attempts so far.
    pub attempts: u64,
    /// The last attempt's error.
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RearmOutcome {
    Armed,
    Forgotten,
    Pending,
}

/// Why a recorded unit was not armed again (a failed arm keeps the record; the other
/// reasons mean the container is gone, and the record is forgotten).
#[derive(Debug, thiserror::Error)]
pub enum RearmError {
    /// The record could not be read or parsed.
    #[error("unreadable record")]
    Unreadable,
    /// The container's process is gone (or its pid was reused).
    #[error("container process {0} is gone")]
    ProcessGone(i32),
    /// The container's mount table could not be read.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// The rootfs is no longer mounted.
    #[error("its rootfs is no longer mounted")]
    RootfsGone,
    /// Arming failed.
    #[error(transparent)]
    Arm(#[from] ArmError),
}

impl Armer {
    pub(super) fn record_path(&self, id: &str) -> PathBuf {
        self.units_dir.join(format!("{id}.json"))
    }

    pub(super) fn save_record(&self, record: &UnitRecord) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.units_dir).map_err(|source| StoreError::Io {
            path: self.units_dir.clone(),
            source,
        })?;
        // A record that cannot be encoded must fail the arm, not be stored empty (a restart
        // would then drop the unit without a word).
        let data = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Io {
            path: self.record_path(&record.request.id),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        write_atomic_unsynced(&self.record_path(&record.request.id), &data)
    }

    /// Forgets a unit's record (after disarm), and stops retrying its re-arm.
    pub fn forget(&self, id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if valid_id(id) {
            let _ = std::fs::remove_file(self.record_path(id));
        }
    }

    /// Re-arms every recorded unit whose container still runs (same pid and start time)
    /// and forgets the ones that are gone. A unit whose re-arm fails is kept, recorded and
    /// pending: [`Armer::retry_pending`] tries it again until it is armed or its container
    /// is gone (a container's root must not be able to end its protection by making one
    /// re-arm fail). Returns what happened.
    pub fn rearm_recorded(&self) -> RearmSummary {
        let mut summary = RearmSummary::default();
        let Ok(dir) = std::fs::read_dir(&self.units_dir) else {
            return summary;
        };
        let mut ids: Vec<String> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?;
                valid_id(id).then(|| id.to_string())
            })
            .collect();
        ids.sort();
        let started = std::time::Instant::now();
        for id in ids {
            if started.elapsed() > STARTUP_REARM_BUDGET {
                // The service manager would kill a start that takes too long (and each
                // arm is bounded by its snapshot's deadline): the rest are armed by the
                // retry thread, after the socket serves new containers.
                log::warn!(
                    "unit {id:?}: re-arm deferred (restart re-arms took over {STARTUP_REARM_BUDGET:?})"
                );
                self.pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(id.clone())
                    .or_insert_with(|| PendingUnit {
                        id: id.clone(),
                        attempts: 0,
                        error: "deferred: the daemon's start took too long".into(),
                    });
                summary.pending += 1;
                continue;
            }
            match self.rearm_id(&id) {
                RearmOutcome::Armed => summary.rearmed += 1,
                RearmOutcome::Forgotten => summary.forgotten += 1,
                RearmOutcome::Pending => summary.pending += 1,
            }
        }
        summary
    }

    /// Tries every pending unit again; returns how many are still pending.
    pub fn retry_pending(&self) -> usize {
        let ids: Vec<String> = self.pending_units().into_iter().map(|p| p.id).collect();
        ids.iter()
            .filter(|id| self.rearm_id(id) == RearmOutcome::Pending)
            .count()
    }

    /// Units whose re-arm failed and is being retried.
    pub fn pending_units(&self) -> Vec<PendingUnit> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn rearm_id(&self, id: &str) -> RearmOutcome {
        let path = self.record_path(id);
        let outcome = std::fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice::<UnitRecord>(&d).ok())
            .ok_or(RearmError::Unreadable)
            .and_then(|rec| self.rearm_one(rec));
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(id) => {
                log::info!("re-armed unit {id:?}");
                pending.remove(&id);
                RearmOutcome::Armed
            }
            Err(RearmError::Arm(e)) => {
                let entry = pending
                    .entry(id.to_string())
                    .or_insert_with(|| PendingUnit {
                        id: id.to_string(),
                        attempts: 0,
                        error: String::new(),
                    });
                entry.attempts += 1;
                entry.error = e.to_string();
                log::error!(
                    "unit {id:?}: re-arm failed (attempt {}), kept and retried: {e}",
                    entry.attempts
                );
                RearmOutcome::Pending
            }
            Err(why) => {
                log::info!("forgetting {}: {why}", path.display());
                let _ = std::fs::remove_file(&path);
                pending.remove(id);
                RearmOutcome::Forgotten
            }
        }
    }

    fn rearm_one(&self, rec: UnitRecord) -> Result<String, RearmError> {
        let mut req = rec.request;
        match req.pid {
            Some(pid) => {
                if procfs::start_time(pid) != rec.start_time || rec.start_time.is_none() {
                    return Err(RearmError::ProcessGone(pid));
                }
                let mounts = read_mountinfo_of(pid)?;
                let rootfs =
                    rootfs_by_dev(&mounts, rec.rootfs_dev).ok_or(RearmError::RootfsGone)?;
                req.rootfs = escape_bytes(rootfs.as_os_str().as_bytes());
                // Mounts named explicitly were in the old view; discovery finds them again.
                req.mounts.clear();
                req.discover_mounts = true;
            }
            None => {
                let rootfs = decode_path("rootfs", &req.rootfs, true)?;
                let live = stat_path(&rootfs).is_ok_and(|s| {
                    s.mnt_id == rec.rootfs_mnt_id
                        || (s.dev == rec.rootfs_dev && rec.rootfs_ino == Some(s.ino))
                });
                if !live {
                    return Err(RearmError::RootfsGone);
                }
            }
        }
        Ok(self.arm_as(req, super::ArmOrigin::Rearm)?.id)
    }

    pub(super) fn load_record(&self, id: &str) -> Option<UnitRecord> {
        let data = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}
