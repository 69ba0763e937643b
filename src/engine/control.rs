//! Control commands from the socket side (arm, disarm, allow, explain, status), the
//! handle that sends them to the event loop, and a clean stop.

use super::*;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hashing threads. Zero starts none, so every miss is answered by its time budget
    /// (used by tests to make timeouts deterministic).
    pub hash_workers: usize,
    /// How long an exec may wait for its file to be hashed before policy answers.
    pub hash_timeout: Duration,
    /// Files cached per unit.
    pub cache_capacity: usize,
    /// Emit an `allow` record for every miss (debug aid).
    pub record_misses: bool,
    /// Script control (opt-in): the `comm` names of interpreters whose opens of files on a
    /// unit's tmpfs mounts are judged like execs. Empty: off.
    pub interpreters: Vec<Vec<u8>>,
    /// How long a loader exec may wait for its thread to be seen blocked before policy
    /// answers (`loader-unobservable`). The thread cannot proceed without the answer; on a
    /// saturated node it may wait for a CPU to go back to sleep (up to ~0.1 s measured on
    /// two busy cores), so this is far longer than any such wait.
    pub loader_wait: Duration,
    /// Library control (opt-in): opens of shared objects on a unit's filesystems are judged
    /// by content like execs (`FAN_OPEN_PERM`; notifications in audit mode).
    pub library_control: bool,
}

/// How long an exec may wait for its file to be hashed.
pub const DEFAULT_HASH_TIMEOUT: Duration = Duration::from_millis(2000);
/// Files cached per container.
pub const DEFAULT_CACHE_CAPACITY: usize = 65_536;
/// How long a loader exec may wait for its thread to be seen blocked.
pub const DEFAULT_LOADER_WAIT: Duration = Duration::from_secs(10);

/// Threads for a setting of `n`: 0 (and the default) means one per core.
pub fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hash_workers: threads(0),
            hash_timeout: DEFAULT_HASH_TIMEOUT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            record_misses: false,
            interpreters: Vec::new(),
            loader_wait: DEFAULT_LOADER_WAIT,
            library_control: false,
        }
    }
}

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

/// A request to the engine thread.
pub enum Command {
    /// Arm a unit.
    Arm(UnitSpec, Sender<Result<Vec<PlannedMark>, EngineError>>),
    /// Disarm a unit.
    Disarm(String, Sender<Result<UnitStatus, EngineError>>),
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
    /// Explain the verdict for content with these digests and this stat in a unit.
    Explain(
        String,
        crate::baseline::FileDigests,
        Sender<Result<Explanation, EngineError>>,
    ),
    /// Report status.
    Status(Sender<EngineStatus>),
    /// The recorded units are re-armed: judge the events parked meanwhile.
    RestoreDone,
    /// Stop after answering everything in flight.
    Shutdown,
}

/// Why a file would or would not run in a unit (`driftlock explain`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// Unit.
    pub unit: String,
    /// Unit mode.
    pub mode: Mode,
    /// Path as asked (escaped).
    pub path: String,
    /// SHA-256 (hex).
    pub sha256: Option<String>,
    /// BLAKE3 (hex).
    pub blake3: String,
    /// Size.
    pub size: u64,
    /// The file is on a filesystem or mount the unit has marked (else its exec is not
    /// checked at all).
    pub covered: bool,
    /// Paths in the image with this content (empty: not in the baseline).
    pub baseline_paths: Vec<String>,
    /// An operator allow entry admits this content.
    pub allowed_by_entry: bool,
    /// This content is one of the image's dynamic loaders (a direct invocation is denied).
    pub loader: bool,
    /// The verdict an exec of it would get.
    pub verdict: Verdict,
    /// In words.
    pub why: String,
    /// The verdict an executable mapping of it (`dlopen`, `LD_PRELOAD`, `mmap` or
    /// `mprotect` with `PROT_EXEC`) would get from the mapping gate now; absent where the
    /// gate does not judge it (unavailable, or not on a filesystem it watches for the unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Verdict>,
    /// The mapping verdict in words (also why there is none).
    #[serde(default)]
    pub mapping_why: String,
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
        self.call(|tx| Command::Arm(spec, tx))?
    }
    /// Disarms a unit; returns its final status.
    pub fn disarm(&self, id: &str) -> Result<UnitStatus, EngineError> {
        self.call(|tx| Command::Disarm(id.to_string(), tx))?
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
    pub fn explain(
        &self,
        id: &str,
        digests: crate::baseline::FileDigests,
    ) -> Result<Explanation, EngineError> {
        self.call(|tx| Command::Explain(id.to_string(), digests, tx))?
    }
    /// Current status.
    pub fn status(&self) -> Result<EngineStatus, EngineError> {
        self.call(Command::Status)
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

    /// Ends restore mode (see [`Engine::set_restoring`]).
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

/// The longest a clean stop waits for hashes in progress.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl<G: Gate> Engine<G> {
    fn units_changed(&self) {
        self.shared
            .units_changed
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Arm(spec, reply) => {
                let r = self.arm(spec);
                self.units_changed();
                let _ = reply.send(r);
            }
            Command::Disarm(id, reply) => {
                let r = self.disarm(&id);
                self.units_changed();
                // Another unit could arm the same filesystem with another baseline.
                self.clear_ignored_execs();
                let _ = reply.send(r);
            }
            Command::SetMode(id, mode, reply) => {
                let r = self.set_mode(&id, mode);
                let _ = reply.send(r);
            }
            Command::SetAllow(id, allow, reply) => {
                let r = match self
                    .registry
                    .find_id(&id)
                    .and_then(|h| self.registry.get_mut(h))
                {
                    Some(unit) => {
                        unit.allow = Allowed::from(allow);
                        // Findings were made against the old entries, and so were the
                        // kernel's ignore marks.
                        unit.cache.clear();
                        self.clear_ignored_execs();
                        Ok(())
                    }
                    None => Err(EngineError::UnknownId(id)),
                };
                let _ = reply.send(r);
            }
            Command::AddMarks(id, marks, reply) => {
                let r = self.add_marks(&id, marks);
                self.units_changed();
                let _ = reply.send(r);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Explain(id, d, reply) => {
                let _ = reply.send(self.explain(&id, &d));
            }
            Command::RestoreDone => {
                self.restoring = false;
                if let Some(gate) = self.mapping.as_mut() {
                    let (tracked, judged) = self.mapping_volumes.wanted();
                    gate.retain_volumes(&tracked, &judged);
                }
                for (event, tid, stat) in std::mem::take(&mut self.parked) {
                    self.judge(event, tid, stat);
                }
            }
            Command::Shutdown => {}
        }
    }

    pub(super) fn mark_of(&self, planned: &PlannedMark, mode: Mode) -> Mark {
        // Script control gates opens on the scratch filesystems (tmpfs) only, where dropped
        // scripts land; the image's own files are never held on open.
        // Library control gates opens on every filesystem of the unit: a library can be
        // dropped in the rootfs, a tmpfs or a volume.
        let opens = self.config.library_control
            || (!self.config.interpreters.is_empty() && planned.fstype == "tmpfs");
        Mark {
            path: planned.path.clone(),
            kind: planned.kind,
            mask: match (mode, opens) {
                (Mode::Enforce, true) => EventMask::EnforceWithOpens,
                (Mode::Enforce, false) => EventMask::Enforce,
                (Mode::Audit, true) if self.config.library_control => EventMask::AuditWithOpens,
                (Mode::Audit, _) => EventMask::Audit,
            },
        }
    }

    pub(super) fn arm(&mut self, spec: UnitSpec) -> Result<Vec<PlannedMark>, EngineError> {
        if self.registry.find_id(&spec.id).is_some() {
            return Err(EngineError::DuplicateId(spec.id));
        }
        while let Some(owner) = self.registry.conflict(&spec.marks) {
            let stale = self.registry.get(owner).is_some_and(|u| {
                !u.marks
                    .iter()
                    .all(|m| self.gate.mark_is_live(&m.path, m.mnt_id))
            });
            if !stale {
                let owner_id = self
                    .registry
                    .get(owner)
                    .map(|u| u.id.clone())
                    .unwrap_or_default();
                let path = spec
                    .marks
                    .iter()
                    .find(|m| self.registry.conflict(std::slice::from_ref(m)) == Some(owner))
                    .map(|m| escape_bytes(m.path.as_os_str().as_encoded_bytes()))
                    .unwrap_or_default();
                return Err(EngineError::Conflict {
                    path,
                    owner: owner_id,
                });
            }
            // Its filesystems are gone (the container exited without a disarm) and their
            // device numbers were reused: drop the stale unit and its cache.
            if let Some(u) = self.registry.remove(owner) {
                self.stats.retired.add(&u);
                log::warn!(
                    "unit {:?} was stale (its mounts are gone); dropped it",
                    u.id
                );
            }
        }
        let marks = spec.marks.clone();
        let unit = Unit {
            id: spec.id.clone(),
            image_key: spec.image_key,
            image_name: spec.image_name,
            k8s: spec.k8s,
            pid: spec.pid,
            mode: spec.mode,
            baseline: spec.baseline,
            marks: marks.clone(),
            cache: VerdictCache::new(self.config.cache_capacity),
            counters: UnitCounters::default(),
            allow: Allowed::from(spec.allow),
            last_deny: None,
            records: Default::default(),
        };
        // Registered before marking, so the first event can be attributed.
        let handle = self.registry.insert(unit);
        for (i, m) in marks.iter().enumerate() {
            if let Err(e) = self.gate.mark(&self.mark_of(m, spec.mode), true) {
                for placed in &marks[..i] {
                    let _ = self.gate.mark(&self.mark_of(placed, spec.mode), false);
                }
                self.registry.remove(handle);
                return Err(e.into());
            }
        }
        if let Some(gate) = self.mapping.as_mut() {
            let mode = match spec.mode {
                Mode::Enforce => crate::kernel::mapping_gate::GateMode::Enforce,
                Mode::Audit => crate::kernel::mapping_gate::GateMode::Audit,
            };
            // Only the unit's own filesystems: a mount mark covers a filesystem shared with
            // the host, whose other users the gate must not judge.
            let devs: Vec<u64> = marks
                .iter()
                .filter(|m| m.kind == MarkKind::Filesystem)
                .map(|m| crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()))
                .collect();
            let mut failed = None;
            self.mapping_keys.insert(
                handle,
                super::gate_keys::GateKeys::pinned(
                    spec.code_files.iter().chain(&spec.loader_files).copied(),
                ),
            );
            for f in spec.code_files.iter().chain(&spec.loader_files) {
                if let Err(e) = gate.allow(*f) {
                    failed = Some(e);
                }
            }
            for f in &spec.loader_files {
                if let Err(e) = gate.add_loader(*f) {
                    failed = Some(e);
                }
            }
            for d in &devs {
                if let Err(e) = gate.watch(*d, mode) {
                    failed = Some(e);
                }
            }
            if let Some(ns) = spec.pid_namespace {
                self.mapping_pid_ns.insert(handle, (ns, spec.memory));
                if let Err(e) = self.rescope(ns, mode) {
                    failed = Some(e);
                }
            }
            let volumes = marks
                .iter()
                .filter(|m| m.kind == MarkKind::Mount)
                .map(|m| crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()));
            let changes = self
                .mapping_volumes
                .add(handle, spec.pid_namespace, volumes, mode);
            if let Err(e) = self.apply_volume_changes(&changes) {
                failed = Some(e);
            }
            if let Some(e) = failed {
                log::error!("unit {:?}: the mapping gate is incomplete: {e}", spec.id);
            }
            self.mapping_devs.insert(handle, devs);
        }
        log::info!(
            "armed unit {:?} ({} mode, {} marks)",
            spec.id,
            spec.mode,
            marks.len()
        );
        Ok(marks)
    }

    /// Moves a unit to `mode`: each mark gets the new mode's mask before the old one's
    /// own bits go (no event is missed meanwhile), then the gate's entries follow.
    pub(super) fn set_mode(&mut self, id: &str, mode: Mode) -> Result<Mode, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let (was, marks, pid) = match self.registry.get(handle) {
            Some(u) => (u.mode, u.marks.clone(), u.pid),
            None => return Err(EngineError::UnknownId(id.to_string())),
        };
        if was == mode {
            return Ok(was);
        }
        let marks: Vec<PlannedMark> = marks
            .into_iter()
            .map(|m| self.reachable_mark(pid, m))
            .collect();
        for (i, m) in marks.iter().enumerate() {
            let old = self.mark_of(m, was);
            if let Err(e) = self.gate.switch_mask(&self.mark_of(m, mode), old.mask) {
                // Back to the old mode on the marks already switched: one mode per unit.
                for done in &marks[..i] {
                    let _ = self
                        .gate
                        .switch_mask(&self.mark_of(done, was), self.mark_of(done, mode).mask);
                }
                return Err(e.into());
            }
        }
        if let Some(u) = self.registry.get_mut(handle) {
            u.mode = mode;
            // The paths that lead to the mounts now, for the next switch or the disarm.
            u.marks = marks;
        }
        if let Some(gate) = self.mapping.as_mut() {
            let gate_mode = match mode {
                Mode::Enforce => crate::kernel::mapping_gate::GateMode::Enforce,
                Mode::Audit => crate::kernel::mapping_gate::GateMode::Audit,
            };
            for d in self.mapping_devs.get(&handle).into_iter().flatten() {
                if let Err(e) = gate.watch(*d, gate_mode) {
                    log::error!("unit {id:?}: the mapping gate keeps its old mode: {e}");
                }
            }
            if let Some((ns, _)) = self.mapping_pid_ns.get(&handle).copied() {
                if let Err(e) = self.rescope(ns, gate_mode) {
                    log::error!("unit {id:?}: the mapping gate keeps its old mode: {e}");
                }
            }
            let changes = self.mapping_volumes.set_mode(handle, gate_mode);
            if let Err(e) = self.apply_volume_changes(&changes) {
                log::error!("unit {id:?}: the mapping gate keeps its old mode on volumes: {e}");
            }
        }
        log::warn!("unit {id:?}: {was} mode -> {mode} mode");
        Ok(was)
    }

    /// Makes the gate's volume maps follow the units' volumes (see `gate_volumes`). Every
    /// change is tried; the first failure is returned.
    fn apply_volume_changes(
        &mut self,
        changes: &[super::gate_volumes::VolumeChange],
    ) -> Result<(), crate::kernel::mapping_gate::GateError> {
        use super::gate_volumes::VolumeChange;
        let Some(gate) = self.mapping.as_mut() else {
            return Ok(());
        };
        let mut first = None;
        let mut untracked = Vec::new();
        for c in changes {
            let done = match *c {
                VolumeChange::Track(dev) => gate.track_volume(dev),
                VolumeChange::Judge(ns, dev, mode) => gate.judge_volume(ns, dev, mode),
                VolumeChange::Unjudge(ns, dev) => {
                    gate.unjudge_volume(ns, dev);
                    Ok(())
                }
                VolumeChange::Untrack(dev) => {
                    untracked.push(dev);
                    Ok(())
                }
            };
            if let Err(e) = done {
                first.get_or_insert(e);
            }
        }
        gate.untrack_volumes(&untracked);
        first.map_or(Ok(()), Err)
    }

    /// Scopes PID namespace `ns` in the gate with the memory rules every unit in it
    /// allows (containers of a pod may share one: a JIT in any of them relaxes them).
    fn rescope(
        &mut self,
        ns: u32,
        mode: crate::kernel::mapping_gate::GateMode,
    ) -> Result<(), crate::kernel::mapping_gate::GateError> {
        let memory = self.mapping_pid_ns.values().filter(|(n, _)| *n == ns).fold(
            crate::kernel::mapping_gate::MemoryRules::STRICT,
            |m, (_, r)| m.and(*r),
        );
        match self.mapping.as_mut() {
            Some(gate) => gate.scope_pid_namespace(ns, mode, memory),
            None => Ok(()),
        }
    }

    pub(super) fn explain(
        &self,
        id: &str,
        d: &crate::baseline::FileDigests,
    ) -> Result<Explanation, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let unit = self
            .registry
            .get(handle)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let covered = self
            .registry
            .attribute(&d.stat)
            .is_some_and(|a| a.unit == handle);
        let baseline_paths: Vec<String> = unit
            .baseline
            .entries()
            .iter()
            .filter(|e| e.blake3 == d.blake3)
            .map(|e| escape_bytes(&e.path))
            .collect();
        let allowed_by_entry = unit.allow.permits(d);
        let loader = unit.baseline.is_loader(&d.blake3);
        let known_bad = unit.baseline.is_known_bad(&d.blake3);
        let finding = content_finding(known_bad, !baseline_paths.is_empty(), allowed_by_entry);
        // As the rule book would judge an exec of it by name (a loader: when a program
        // asks for it).
        let verdict = judge_unobserved(&Facts {
            mode: unit.mode,
            event: EventKind::Exec,
            finding,
            is_loader: loader,
            loader_call: Some(crate::kernel::exec_name::LoaderCall::ForProgram),
            immutable_fs: false,
            from_cache: false,
            record_misses: false,
        })
        .verdict;
        let why = match (
            covered,
            !baseline_paths.is_empty(),
            allowed_by_entry,
            loader,
        ) {
            (false, ..) => {
                "not on a filesystem this unit has marked: its exec would not be checked"
                    .to_string()
            }
            _ if known_bad => {
                "matches a known-bad indicator: denied even though it is in the image".to_string()
            }
            (true, true, _, true) => format!(
                "a dynamic loader of the image ({}): runs for programs; a direct invocation is denied",
                baseline_paths.join(", ")
            ),
            (true, true, ..) => {
                format!("same content as the image's {}", baseline_paths.join(", "))
            }
            (true, false, true, _) => "not in the image, allowed by an operator entry".to_string(),
            (true, false, false, _) => "not in the image's baseline and no allow entry".to_string(),
        };
        let (mapping, mapping_why) = self.explain_mapping(handle, unit.mode, d, finding);
        Ok(Explanation {
            mapping,
            mapping_why,
            unit: unit.id.clone(),
            mode: unit.mode,
            path: String::new(),
            sha256: d.sha256.map(hex::encode),
            blake3: d.blake3.to_string(),
            size: d.stat.size,
            covered,
            baseline_paths,
            allowed_by_entry,
            loader,
            verdict: if covered { verdict } else { Verdict::Allow },
            why,
        })
    }

    /// What the mapping gate judges of a unit, in words (`None`: no gate runs).
    fn gate_coverage(&self, handle: UnitHandle, unit: &crate::registry::Unit) -> Option<String> {
        self.mapping.as_ref()?;
        let devs = self.mapping_devs.get(&handle);
        let (covered, not): (Vec<_>, Vec<_>) = unit.marks.iter().partition(|m| {
            devs.is_some_and(|d| {
                d.contains(&crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()))
            })
        });
        let paths = |ms: &[&crate::registry::PlannedMark]| {
            ms.iter()
                .map(|m| crate::escape::escape_bytes(m.path.as_os_str().as_encoded_bytes()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "judges mappings on {}",
            if covered.is_empty() {
                "nothing".into()
            } else {
                paths(&covered)
            }
        );
        let (judged, not): (Vec<_>, Vec<_>) = not.into_iter().partition(|m| {
            self.mapping_volumes.judges(
                handle,
                crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()),
            )
        });
        if !judged.is_empty() {
            let strict = judged.iter().any(|m| {
                self.mapping.as_ref().is_some_and(|g| {
                    g.volume_strict(crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()))
                })
            });
            out.push_str(&format!(
                "; on volumes {} (shared with the host) judges what a container wrote there since it was armed{}; a loader exec'd from there is judged by fanotify",
                paths(&judged),
                if strict {
                    " (strict: the gate could not record a write, so every mapping from there must be admitted)"
                } else {
                    ""
                }
            ));
        }
        if !not.is_empty() {
            out.push_str(&format!(
                "; not on {} (marked by mount, and the container shares the node's PID namespace: a library mapped from there is not judged, a loader exec'd from there is judged by fanotify)",
                paths(&not)
            ));
        }
        if let Some(keys) = self.mapping_keys.get(&handle) {
            out.push_str(&format!(
                "; {} entries ({} made while running, of {})",
                keys.len(),
                keys.runtime_len(),
                super::gate_keys::RUNTIME_BUDGET
            ));
        }
        if let Some((_, memory)) = self.mapping_pid_ns.get(&handle) {
            out.push_str("; in its PID namespace: memfd exec refused");
            out.push_str(if memory.wx {
                ", W^X on file mappings"
            } else {
                ", W^X not judged (a JIT runtime in the image, or a rule)"
            });
            out.push_str(if memory.anon {
                ", no anonymous or memfd executable memory"
            } else {
                ", anonymous and memfd executable memory allowed (a JIT or closure runtime in the image, or a rule)"
            });
            out.push_str(if memory.proc_mem {
                ", no writes through /proc/<pid>/mem or ptrace"
            } else {
                ", writes through /proc/<pid>/mem and ptrace allowed (a rule)"
            });
            out.push_str(if memory.foreign {
                ", no code from filesystems no unit marked (its own mounts in a namespace of its own), and a file a container wrote on a volume is exec'd only once judged"
            } else {
                ", code from filesystems it mounts itself allowed (a rule: not judged)"
            });
        }
        Some(out)
    }

    /// What judges a library dropped in a unit, in a few words.
    fn library_coverage(&self, handle: UnitHandle, unit: &crate::registry::Unit) -> String {
        let devs = self.mapping_devs.get(&handle);
        let gated = |m: &crate::registry::PlannedMark| {
            let dev = crate::kernel::mapping_gate::kernel_dev(m.superblock_dev());
            self.mapping.is_some()
                && (devs.is_some_and(|d| d.contains(&dev))
                    || self.mapping_volumes.judges(handle, dev))
        };
        let all_gated = !unit.marks.is_empty() && unit.marks.iter().all(gated);
        let some_gated = unit.marks.iter().any(gated);
        match (self.config.library_control, all_gated, some_gated) {
            (true, _, true) => "mapping gate and library control".into(),
            (true, _, false) => "library control".into(),
            (false, true, _) => "mapping gate".into(),
            (false, false, true) => {
                "mapping gate on its own filesystems; none on volumes marked by mount (turn on library_control)".into()
            }
            (false, false, false) => {
                "none: no mapping gate on this kernel and library_control is off".into()
            }
        }
    }

    /// What the mapping gate would do with an executable mapping of the file `d` describes.
    fn explain_mapping(
        &self,
        handle: UnitHandle,
        mode: Mode,
        d: &crate::baseline::FileDigests,
        finding: Finding,
    ) -> (Option<Verdict>, String) {
        let Some(gate) = self.mapping.as_ref() else {
            return (
                None,
                "the mapping gate is not active: executable mappings are not judged".into(),
            );
        };
        // Keyed as the kernel keys it (an overlay file by the overlay's superblock, which a
        // file's own st_dev may not be): as for every exec.
        let Some((key, _)) = self.mapping_key(handle, &d.stat) else {
            return (None, "the mapping gate is not active".into());
        };
        let watched = self
            .mapping_devs
            .get(&handle)
            .is_some_and(|devs| devs.contains(&key.dev));
        let volume = !watched && self.mapping_volumes.judges(handle, key.dev);
        if volume
            && !gate.admits(&key)
            && gate.generation(&key) == 0
            && gate.writers(&key) == 0
            && !gate.volume_strict(key.dev)
        {
            return (
                Some(Verdict::Allow),
                "on a volume shared with the host, and no container wrote it since this one was armed: it maps (an exec of it is judged by content)".into(),
            );
        }
        if !watched && !volume {
            return (
                None,
                "not on a filesystem the mapping gate watches for this unit: its mappings are not judged".into(),
            );
        }
        if gate.admits(&key) {
            return (
                Some(Verdict::Allow),
                "admitted: its content was judged allowed and it has not been written since".into(),
            );
        }
        let refused = match mode {
            Mode::Enforce => Verdict::Deny,
            Mode::Audit => Verdict::WouldDeny,
        };
        match finding {
            Finding::InBaseline => (
                Some(refused),
                "its content is allowed, but the gate holds no entry for this file as it is now (written or still open for writing; it is admitted once closed and hashed)".into(),
            ),
            _ => (
                Some(refused),
                "not admitted: its content is neither in the image's baseline nor allowed by an entry".into(),
            ),
        }
    }

    pub(super) fn add_marks(
        &mut self,
        id: &str,
        marks: Vec<PlannedMark>,
    ) -> Result<AddedMarks, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let mode = self.registry.get(handle).map_or(Mode::Enforce, |u| u.mode);
        let mut out = AddedMarks::default();
        for m in marks {
            if let Some(owner) = self.registry.conflict(std::slice::from_ref(&m)) {
                if owner != handle {
                    out.failed
                        .push((m, "already armed for another unit".into()));
                }
                continue;
            }
            match self.gate.mark(&self.mark_of(&m, mode), true) {
                Ok(()) => {
                    self.registry.add_marks(handle, std::slice::from_ref(&m));
                    out.placed.push(m);
                }
                Err(e) => out.failed.push((m, e.to_string())),
            }
        }
        self.gate_late_marks(handle, mode, &out.placed);
        Ok(out)
    }

    /// The mark with a path that leads to its mount now. A container armed at creation
    /// had its mounts reached through its first process before that process changed its
    /// root (`/proc/<pid>/root/<bundle>/rootfs/...`), a path that leads nowhere once the
    /// container runs: its mount is then found among that process's mounts (the same
    /// mounts, seen from its new root) by its mount id. Unchanged when the path still
    /// leads to the mount or none is found.
    fn reachable_mark(&self, pid: Option<i32>, mut m: PlannedMark) -> PlannedMark {
        let Some(pid) = pid else { return m };
        if self.gate.mark_is_live(&m.path, m.mnt_id) {
            return m;
        }
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        let Ok(mounts) = crate::kernel::mountinfo::read_mountinfo_of(pid) else {
            return m;
        };
        // The last mount at a point is the one a path leads to. Only mounts of the mark's
        // filesystem are looked at: a stat of another (a stuck FUSE server's) could block
        // the event loop.
        let sb_dev = m.superblock_dev();
        for e in mounts.iter().rev().filter(|e| e.dev == sb_dev) {
            let at = root.join(e.mount_point.strip_prefix("/").unwrap_or(&e.mount_point));
            if self.gate.mark_is_live(&at, m.mnt_id) {
                m.path = at;
                break;
            }
        }
        m
    }

    /// Gives the mapping gate the marks a unit gained after its arm (mounts the watcher
    /// found): a filesystem of its own is watched, a volume judged, as at arm.
    fn gate_late_marks(&mut self, handle: UnitHandle, mode: Mode, placed: &[PlannedMark]) {
        if self.mapping.is_none() || placed.is_empty() {
            return;
        }
        let gate_mode = gate_mode_of(mode);
        let (own, volumes): (Vec<_>, Vec<_>) =
            placed.iter().partition(|m| m.kind == MarkKind::Filesystem);
        let own: Vec<u64> = own
            .iter()
            .map(|m| crate::kernel::mapping_gate::kernel_dev(m.superblock_dev()))
            .collect();
        if let Some(gate) = self.mapping.as_mut() {
            for d in &own {
                if let Err(e) = gate.watch(*d, gate_mode) {
                    log::error!("mapping gate: a late mount is not watched: {e}");
                }
            }
        }
        self.mapping_devs.entry(handle).or_default().extend(own);
        let ns = self.mapping_pid_ns.get(&handle).map(|(n, _)| *n);
        let changes = self.mapping_volumes.add(
            handle,
            ns,
            volumes
                .iter()
                .map(|m| crate::kernel::mapping_gate::kernel_dev(m.superblock_dev())),
            gate_mode,
        );
        if let Err(e) = self.apply_volume_changes(&changes) {
            log::error!("mapping gate: a late volume is not judged: {e}");
        }
    }

    pub(super) fn disarm(&mut self, id: &str) -> Result<UnitStatus, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let Some(unit) = self.registry.remove(handle) else {
            return Err(EngineError::UnknownId(id.to_string()));
        };
        self.stats.retired.add(&unit);
        let keys = self.mapping_keys.remove(&handle);
        if let (Some(gate), Some(devs)) = (self.mapping.as_mut(), self.mapping_devs.remove(&handle))
        {
            // Its own entries, not a scan of the shared maps (on this thread: every exec
            // waits for it); the kernel's per-file write counts on its filesystems are
            // swept by a thread of their own.
            if let Some(keys) = keys {
                let own: Vec<_> = keys.all().copied().collect();
                gate.forget_keys(&own);
            }
            gate.forget_filesystems(&devs);
        }
        let changes = self.mapping_volumes.remove(handle);
        if let Err(e) = self.apply_volume_changes(&changes) {
            log::warn!("mapping gate: {e}");
        }
        if let Some((ns, _)) = self.mapping_pid_ns.remove(&handle) {
            // A pod's containers may share a PID namespace: keep it while another unit has it.
            let other = self
                .mapping_pid_ns
                .iter()
                .find(|(_, (n, _))| *n == ns)
                .and_then(|(h, _)| self.registry.get(*h))
                .map(|u| u.mode);
            match other {
                Some(mode) => {
                    if let Err(e) = self.rescope(ns, gate_mode_of(mode)) {
                        log::warn!("mapping gate: {e}");
                    }
                }
                None => {
                    if let Some(gate) = self.mapping.as_mut() {
                        gate.unscope_pid_namespace(ns);
                    }
                }
            }
        }
        for m in &unit.marks {
            let m = &self.reachable_mark(unit.pid, m.clone());
            // Only remove a mark if the path still leads to the mount we marked: a path
            // whose mount is gone may now lead to another filesystem.
            if self.gate.mark_is_live(&m.path, m.mnt_id) {
                if let Err(e) = self.gate.mark(&self.mark_of(m, unit.mode), false) {
                    log::warn!("{e}");
                }
            }
        }
        log::info!("disarmed unit {id:?}");
        Ok(unit.status())
    }

    pub(super) fn status(&self) -> EngineStatus {
        let mut units: Vec<UnitStatus> = self
            .registry
            .iter()
            .map(|(h, u)| {
                let mut st = u.status();
                st.mapping_gate = self.gate_coverage(*h, u);
                st.libraries = self.library_coverage(*h, u);
                st
            })
            .collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        let mut stats = self.stats.clone();
        stats.unanswered_drops = unanswered_drops();
        if let Some(g) = self.mapping.as_ref() {
            let [checked, refused, would, dropped] = g.counters();
            stats.mapping_checked = checked;
            stats.mapping_refused = refused;
            stats.mapping_would_refuse = would;
            stats.mapping_entries_dropped = dropped;
        }
        EngineStatus {
            units,
            stats,
            in_flight: self.in_flight.len(),
        }
    }

    pub(super) fn drain_for_shutdown(&mut self) {
        // Give running hashes a short while to finish, then answer the rest by policy.
        let until = Instant::now() + self.config.hash_timeout.min(SHUTDOWN_GRACE);
        while self.in_flight.values().any(|f| !f.waiters.is_empty()) && Instant::now() < until {
            if let Ok(done) = self.results.recv_timeout(Duration::from_millis(50)) {
                self.handle_result(done);
            }
        }
        self.expire(Instant::now() + Duration::from_secs(3600));
        self.in_flight.clear();
        // One last look at each waiting loader exec; what is still not seen is answered by
        // policy (deny in enforce mode) as its pending event drops.
        for w in std::mem::take(&mut self.loader_waits) {
            self.look_at_loader(w, 1);
        }
        for mut w in std::mem::take(&mut self.loader_waits) {
            w.facts.loader_call = None;
            let outcome = judge_unobserved(&w.facts);
            let detail = format!("daemon stopping: thread {} not seen blocked", w.tid);
            self.conclude_wait(w, outcome, detail);
        }
        if let Some(denials) = self.denials.take() {
            denials.finish();
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            // Workers stuck on a slow file are left behind; the process is exiting.
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// The gate's mode for a unit's mode.
pub(super) fn gate_mode_of(mode: Mode) -> crate::kernel::mapping_gate::GateMode {
    match mode {
        Mode::Enforce => crate::kernel::mapping_gate::GateMode::Enforce,
        Mode::Audit => crate::kernel::mapping_gate::GateMode::Audit,
    }
}
