//! What other threads see of the engine: the commands they send, the handle that sends
//! them and waits for the reply, and what the loop shares without a round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{EngineStatus, Explanation};
use crate::Mode;
use crate::baseline::Baseline;
use crate::kernel::{KernelError, Wake};
use crate::registry::{PlannedMark, UnitStatus};

/// Errors reported to the engine's clients.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Another unit already has this id.
    #[error("a unit with id {0:?} is already armed (disarm it first)")]
    DuplicateId(String),
    /// No unit with this id.
    #[error("no armed unit with id {0:?}")]
    UnknownId(String),
    /// A filesystem or mount is already armed for another unit.
    #[error("{path} is already armed for unit {owner:?}")]
    Conflict {
        /// The mark path (escaped).
        path: String,
        /// The unit that holds it.
        owner: String,
    },
    /// Placing a mark failed (the unit was rolled back).
    #[error(transparent)]
    Mark(#[from] KernelError),
    /// The engine thread is gone.
    #[error("the event loop is not running")]
    Stopped,
    /// The engine did not reply in time.
    #[error("the event loop did not reply within {0:?}")]
    Timeout(Duration),
}

/// What `arm` needs.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// Unit id.
    pub id: String,
    /// Image key.
    pub image_key: Vec<u8>,
    /// Image name, for records.
    pub image_name: Option<String>,
    /// Kubernetes context, for records.
    pub k8s: crate::registry::K8sContext,
    /// The container's first process, where known (ends the process chain in records).
    pub pid: Option<i32>,
    /// Mode.
    pub mode: Mode,
    /// Baseline.
    pub baseline: Arc<Baseline>,
    /// Planned marks.
    pub marks: Vec<PlannedMark>,
    /// Content the operator allowed besides the baseline.
    pub allow: crate::config::AllowList,
    /// The unit's image code objects (executables and shared objects) as the mapping gate
    /// keys them: mappable from the start.
    pub code_files: Vec<crate::kernel::mapping_gate::FileKey>,
    /// The unit's dynamic loaders as the mapping gate keys them: never a main binary.
    pub loader_files: Vec<crate::kernel::mapping_gate::FileKey>,
    /// The container's PID namespace (inode number), where armed by pid: its processes may
    /// not exec memfds, and `memory` says which memory-only code they may not make.
    pub pid_namespace: Option<u32>,
    /// Memory-only code refused in the container's PID namespace (where the gate runs).
    pub memory: crate::kernel::mapping_gate::MemoryRules,
}

/// What `explain` asks the engine: a hashed file in a unit.
#[derive(Debug)]
pub struct ExplainQuery {
    /// The unit.
    pub id: String,
    /// The file's digests and stat.
    pub digests: crate::baseline::FileDigests,
    /// Where it was found, as the unit sees it (allow entries may be scoped to paths).
    pub path: Vec<u8>,
    /// Allow entries of a candidate configuration to answer with instead of the unit's.
    pub candidate: Option<crate::config::AllowList>,
}

/// A request to the engine thread.
pub enum Command {
    /// Arm a unit.
    Arm(Box<UnitSpec>, Sender<Result<Vec<PlannedMark>, EngineError>>),
    /// Disarm a unit (only if it was armed by this pid, when one is given).
    Disarm(String, Option<i32>, Sender<Result<UnitStatus, EngineError>>),
    /// Switch an armed unit to another mode (its marks, its gate entries); replies with
    /// the mode it had.
    SetMode(String, Mode, Sender<Result<Mode, EngineError>>),
    /// Replace a unit's operator allow entries (configuration reload); drops its cache.
    SetAllow(
        String,
        crate::config::AllowList,
        Sender<Result<(), EngineError>>,
    ),
    /// Add marks to an armed unit (mounts that appeared after it started); replies with
    /// the marks placed and, for each one that could not be, why.
    AddMarks(
        String,
        Vec<PlannedMark>,
        Sender<Result<AddedMarks, EngineError>>,
    ),
    /// Explain the verdict for content with these digests and this stat in a unit, at
    /// this path (as the unit sees it).
    Explain(Box<ExplainQuery>, Sender<Result<Explanation, EngineError>>),
    /// Report status.
    Status(Sender<EngineStatus>),
    /// List the units armed by pid, for the container watcher.
    PidUnits(Sender<Vec<PidUnit>>),
    /// The recorded units are re-armed: judge the events parked meanwhile.
    RestoreDone,
    /// Stop after answering everything in flight.
    Shutdown,
}

/// A unit armed by pid, as the container watcher follows it: far less than its
/// [`crate::registry::UnitStatus`], which the watcher would otherwise ask for after every
/// arm (with a thousand units, work on the event loop that delays the next arm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidUnit {
    /// The unit's id.
    pub id: String,
    /// The container's first process.
    pub pid: i32,
    /// The marks in place.
    pub marks: Vec<PlannedMark>,
}

/// The outcome of [`Command::AddMarks`].
#[derive(Debug, Default)]
pub struct AddedMarks {
    /// Marks now in place.
    pub placed: Vec<PlannedMark>,
    /// Marks that could not be placed, with the reason.
    pub failed: Vec<(PlannedMark, String)>,
}

/// A cloneable handle for talking to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) tx: Sender<Command>,
    pub(super) waker: Arc<dyn Wake>,
    pub(super) timeout: Duration,
    pub(super) shared: Arc<LoopShared>,
    /// The instant the loop's heartbeat counts from.
    pub(super) started: Instant,
}

impl EngineHandle {
    pub(super) fn call<T>(
        &self,
        make: impl FnOnce(Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(make(tx)).map_err(|_| EngineError::Stopped)?;
        self.waker.wake();
        rx.recv_timeout(self.timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => EngineError::Timeout(self.timeout),
            crossbeam_channel::RecvTimeoutError::Disconnected => EngineError::Stopped,
        })
    }
    /// Arms a unit; returns once its marks are in place.
    pub fn arm(&self, spec: UnitSpec) -> Result<Vec<PlannedMark>, EngineError> {
        self.call(|tx| Command::Arm(Box::new(spec), tx))?
    }
    /// Disarms a unit; returns its final status.
    pub fn disarm(&self, id: &str) -> Result<UnitStatus, EngineError> {
        self.call(|tx| Command::Disarm(id.to_string(), None, tx))?
    }
    /// Disarms a unit whose container's init, `pid`, exited: only the unit armed by that
    /// pid (an id may be armed again by a new container meanwhile).
    pub fn disarm_exited(&self, id: &str, pid: i32) -> Result<UnitStatus, EngineError> {
        self.call(|tx| Command::Disarm(id.to_string(), Some(pid), tx))?
    }
    /// Switches an armed unit to `mode` at once (the next exec is judged in it); returns
    /// the mode it had.
    pub fn set_mode(&self, id: &str, mode: Mode) -> Result<Mode, EngineError> {
        self.call(|tx| Command::SetMode(id.to_string(), mode, tx))?
    }
    /// Replaces a unit's operator allow entries.
    pub fn set_allow(&self, id: &str, allow: crate::config::AllowList) -> Result<(), EngineError> {
        self.call(|tx| Command::SetAllow(id.to_string(), allow, tx))?
    }
    /// Adds marks to an armed unit.
    pub fn add_marks(&self, id: &str, marks: Vec<PlannedMark>) -> Result<AddedMarks, EngineError> {
        self.call(|tx| Command::AddMarks(id.to_string(), marks, tx))?
    }
    /// Explains the verdict for a hashed file in a unit.
    pub fn explain(&self, query: ExplainQuery) -> Result<Explanation, EngineError> {
        self.call(|tx| Command::Explain(Box::new(query), tx))?
    }
    /// Current status.
    pub fn status(&self) -> Result<EngineStatus, EngineError> {
        self.call(Command::Status)
    }
    /// The units armed by pid (not those leaving), in no order.
    pub fn pid_units(&self) -> Result<Vec<PidUnit>, EngineError> {
        self.call(Command::PidUnits)
    }
    /// Seconds since the event loop last completed an iteration (it iterates at least
    /// once a second); large means stalled.
    pub fn loop_age(&self) -> f64 {
        let last = self
            .shared
            .heartbeat_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(last) as f64 / 1e3
    }

    /// A number that changes whenever a unit is armed, disarmed or given marks: a watcher
    /// asks for the status again only when it moved (a status of a thousand units is work
    /// on the event loop).
    pub fn units_generation(&self) -> u64 {
        self.shared
            .units_changed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ends restore mode (see [`super::Engine::set_restoring`]).
    pub fn restore_done(&self) {
        let _ = self.tx.send(Command::RestoreDone);
        self.waker.wake();
    }
    /// Asks the engine to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        self.waker.wake();
    }
}

/// What the event loop shares with its handles without a round trip through it.
#[derive(Debug, Default)]
pub(super) struct LoopShared {
    /// Milliseconds from the loop's start to its last iteration.
    pub(super) heartbeat_ms: std::sync::atomic::AtomicU64,
    /// Bumped whenever a unit is armed, disarmed or given marks.
    pub(super) units_changed: std::sync::atomic::AtomicU64,
}
