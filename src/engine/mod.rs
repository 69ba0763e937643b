//! The event loop: read a batch → attribute to a unit → cache → hash workers on a miss →
//! decide → answer → audit.
//!
//! One thread owns the registry, every unit's cache and the in-flight table, so the hot
//! path takes no lock: arm, disarm and status requests arrive as [`Command`]s on a channel
//! and wake the loop. An allowed cache hit costs one `statx`, two hash-map lookups and the
//! response `write`; it allocates nothing, reads no `/proc` file and logs nothing.
//!
//! Misses go to hashing workers over a channel (each gets a duplicate of the event's fd),
//! so a slow or huge file never holds up other execs. Each waiting event has its own
//! deadline; when it passes, the event is answered by policy (deny in enforce mode) and
//! the worker's late result is still used to fill the cache. Every permission event is
//! a [`PendingPermission`], which answers on drop: no path can leave one unanswered.
//!
//! The rooms: this file is the event loop and the hot path, readable top to bottom
//! (`run` → `handle_event` → `judge` → `finish` → `conclude`); `hash_pool` holds misses,
//! workers, the in-flight table and deadlines; `loader` the loader rule's bounded wait for
//! the exec'ing thread; `control` the commands from the socket side (arm, disarm, allow,
//! explain, status) and a clean stop; `stats` the counters; `record` the audit records.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::Mode;
use crate::audit::{AuditJob, AuditQueue, AuditRecord, ProcessRecord, RECORD_VERSION, rfc3339};
use crate::baseline::hash::same_content_fingerprint;
use crate::baseline::{Baseline, Digest, HashError, hash_fd};
use crate::escape::escape_bytes;
use crate::kernel::{
    Answer, EventMask, FileStat, Gate, KernelError, Mark, MarkKind, PendingPermission,
    ProcTaskProbe, RawEvent, Respond, TaskProbe, Wake, is_overlay, legacy_mount_id, procfs,
    stat_fd, unanswered_drops,
};
use crate::registry::{Allowed, PlannedMark, Registry, Unit, UnitCounters, UnitHandle, UnitStatus};
use crate::verdict::cache::now as wall_now;
use crate::verdict::{
    Decision, EventKind, Facts, FileKey, Finding, Outcome, Reason, Verdict, VerdictCache,
    content_finding, judge, judge_unobserved,
};

mod control;
mod denial;
mod gate_keys;
mod gate_volumes;
mod hash_pool;
mod loader;
mod record;
mod stats;

use control::LoopShared;
pub use control::{
    AddedMarks, Command, DEFAULT_CACHE_CAPACITY, DEFAULT_HASH_TIMEOUT, DEFAULT_LOADER_WAIT,
    EngineConfig, EngineError, EngineHandle, Explanation, UnitSpec, threads,
};
use hash_pool::*;
use loader::*;
use record::*;
use stats::bump;
pub use stats::{EngineStats, EngineStatus, LATENCY_BUCKETS};

/// An exec event waiting for a verdict.
enum ExecEvent {
    /// Enforce mode: the exec is blocked until answered.
    Permission(PendingPermission),
    /// Audit mode: the exec already proceeds; the fd is kept for the record.
    Notice(OwnedFd),
    /// Script control: an interpreter's open of a file, blocked until answered.
    Open(PendingPermission),
    /// Library control, enforce mode: an open, blocked until answered (a shared object's
    /// is judged; any other is allowed once its header is read).
    LibraryOpen(PendingPermission),
    /// Library control, audit mode: an open already under way.
    LibraryNotice(OwnedFd),
}

impl ExecEvent {
    fn kind(&self) -> EventKind {
        match self {
            ExecEvent::Permission(_) => EventKind::Exec,
            ExecEvent::Notice(_) => EventKind::ExecNotice,
            ExecEvent::Open(_) => EventKind::ScriptOpen,
            ExecEvent::LibraryOpen(_) | ExecEvent::LibraryNotice(_) => EventKind::LibraryOpen,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            ExecEvent::Permission(p) | ExecEvent::Open(p) | ExecEvent::LibraryOpen(p) => p.fd(),
            ExecEvent::Notice(fd) | ExecEvent::LibraryNotice(fd) => Some(fd.as_fd()),
        }
    }

    /// An open (script or library control), not an exec.
    fn is_open(&self) -> bool {
        matches!(
            self,
            ExecEvent::Open(_) | ExecEvent::LibraryOpen(_) | ExecEvent::LibraryNotice(_)
        )
    }
}

/// What was established about a file's content, and how.
#[derive(Clone, Copy)]
struct Judgement {
    finding: Finding,
    digest: Option<Digest>,
    /// Answered from the cache (never recorded when allowed).
    from_cache: bool,
    /// When the event was read.
    arrived: Instant,
    /// The file's write generation in the mapping gate, read before its content was judged
    /// (`None`: read when the file is made mappable).
    generation: Option<u64>,
}

impl Judgement {
    fn hashed(finding: Finding, digest: Option<Digest>, arrived: Instant) -> Self {
        Self {
            finding,
            digest,
            from_cache: false,
            arrived,
            generation: None,
        }
    }
}

/// The event loop.
pub struct Engine<G: Gate> {
    gate: G,
    responder: Arc<dyn Respond>,
    registry: Registry,
    commands: Receiver<Command>,
    jobs: Option<Sender<HashJob>>,
    /// The jobs' receiving end: kept so sending never fails (even with no workers), and
    /// read for its length to grow the pool and to hand to new workers.
    job_queue: Receiver<HashJob>,
    results: Receiver<HashDone>,
    /// For workers added later.
    result_tx: Sender<HashDone>,
    /// Workers hashing right now.
    busy: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<()>>,
    in_flight: HashMap<(UnitHandle, FileKey), InFlight>,
    /// The BPF LSM mapping gate, where the kernel runs it.
    mapping: Option<crate::kernel::mapping_gate::MappingGate>,
    /// Filesystems each unit had the mapping gate watch.
    mapping_devs: HashMap<UnitHandle, Vec<u64>>,
    /// Each unit's entries in the gate (its budget, and what its disarm removes).
    mapping_keys: HashMap<UnitHandle, gate_keys::GateKeys>,
    /// The volumes (filesystems marked by mount) the gate judges for each unit.
    mapping_volumes: gate_volumes::GateVolumes,
    /// The PID namespace each unit had the mapping gate scope.
    mapping_pid_ns: HashMap<UnitHandle, (u32, crate::kernel::mapping_gate::MemoryRules)>,
    /// Hash jobs each unit has in the pool (queued or running).
    unit_jobs: HashMap<UnitHandle, usize>,
    /// Files each unit has waiting beyond its share of the pool.
    backlog: HashMap<UnitHandle, std::collections::VecDeque<(UnitHandle, FileKey)>>,
    audit: AuditQueue,
    batch: Vec<RawEvent>,
    stats: EngineStats,
    config: EngineConfig,
    next_seq: u64,
    /// Called after every loop iteration (the systemd watchdog feeds on it).
    heartbeat: Option<Box<dyn FnMut(Instant) + Send>>,
    /// Adopted a predecessor's group whose marks outlive the registry: until the recorded
    /// units are re-armed, an event on no known unit is held, not allowed.
    restoring: bool,
    /// Some unit's record budget holds records back (a summary is due).
    suppressed_units: bool,
    parked: Vec<(ExecEvent, i32, FileStat)>,
    /// When the batch being processed was read (decision latency is measured from it).
    batch_read_at: Instant,
    /// Milliseconds from `started` to the last loop iteration, shared with the handle.
    shared: Arc<LoopShared>,
    started: Instant,
    /// Permission events answered in the turn that read them, not yet counted in the
    /// latency histogram.
    answered_in_batch: u32,
    /// Asks exec'ing tasks what they named (the loader rule).
    probe: Box<dyn TaskProbe>,
    /// Reads a recorded denial's process and answers it, off this thread.
    denials: Option<denial::DenialReader>,
    /// Loader execs whose thread was not yet seen blocked: looked at again shortly.
    loader_waits: Vec<LoaderWait>,
    /// Files closed after a write whose writer the mapping gate still counts: hashed for
    /// mapping once it has let go (its release advances the file's generation).
    mapping_waits: Vec<MappingWait>,
}

/// A written file waiting for its writers to let go before it is hashed for mapping.
struct MappingWait {
    unit: UnitHandle,
    via: MarkKind,
    stat: FileStat,
    file: std::os::fd::OwnedFd,
    since: Instant,
}

/// How long a written file waits for its writers before it is left unmappable (a later
/// exec or close judges it again).
const MAPPING_WAIT: Duration = Duration::from_millis(500);

impl<G: Gate> Engine<G> {
    /// Builds the engine and its hashing workers.
    pub fn new(gate: G, config: EngineConfig, audit: AuditQueue) -> (Self, EngineHandle) {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<HashJob>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<HashDone>();
        let waker = gate.waker();
        let busy = Arc::new(AtomicUsize::new(0));
        let workers = (0..config.hash_workers)
            .filter_map(|i| spawn_hash_worker(i, &job_rx, &res_tx, &waker, &busy))
            .collect();
        let shared = Arc::new(LoopShared::default());
        let started = Instant::now();
        let handle = EngineHandle {
            started,
            tx: cmd_tx,
            waker,
            timeout: Duration::from_secs(60),
            shared: Arc::clone(&shared),
        };
        let denials = denial::DenialReader::spawn(audit.clone());
        let engine = Self {
            responder: gate.responder(),
            gate,
            registry: Registry::default(),
            commands: cmd_rx,
            jobs: Some(job_tx),
            job_queue: job_rx,
            results: res_rx,
            result_tx: res_tx,
            busy,
            workers,
            in_flight: HashMap::new(),
            mapping: None,
            mapping_devs: HashMap::new(),
            mapping_keys: HashMap::new(),
            mapping_volumes: Default::default(),
            mapping_pid_ns: HashMap::new(),
            unit_jobs: HashMap::new(),
            backlog: HashMap::new(),
            audit,
            batch: Vec::with_capacity(512),
            stats: EngineStats::default(),
            config,
            next_seq: 0,
            heartbeat: None,
            restoring: false,
            suppressed_units: false,
            parked: Vec::new(),
            batch_read_at: Instant::now(),
            shared,
            started,
            answered_in_batch: 0,
            probe: Box::new(ProcTaskProbe),
            denials,
            loader_waits: Vec::new(),
            mapping_waits: Vec::new(),
        };
        (engine, handle)
    }

    /// Holds events on unknown units until [`EngineHandle::restore_done`] (after adopting a
    /// predecessor's fanotify group, whose marks are in place before the units are known).
    pub fn set_restoring(&mut self, restoring: bool) {
        self.restoring = restoring;
        if restoring {
            // The predecessor's ignore marks were made against its units.
            self.clear_ignored_execs();
        }
    }

    /// Drops every kernel-side allow ([`Gate::ignore_exec`]); they are placed again as
    /// files are judged anew.
    fn clear_ignored_execs(&mut self) {
        if self.stats.kernel_allowed_files > 0 || self.restoring {
            if let Err(e) = self.gate.clear_ignored_execs() {
                log::error!("{e}");
            }
        }
    }

    /// Hands the engine the mapping gate: allowed execs are made mappable before they are
    /// answered, and the fanotify-side loader check gives way to the gate's exact one.
    pub fn set_mapping_gate(&mut self, gate: crate::kernel::mapping_gate::MappingGate) {
        self.mapping = Some(gate);
    }

    /// Replaces how exec'ing tasks are looked at (tests use a fake).
    pub fn set_task_probe(&mut self, probe: Box<dyn TaskProbe>) {
        self.probe = probe;
    }

    /// Sets a function called once per loop iteration.
    pub fn set_heartbeat(&mut self, f: Box<dyn FnMut(Instant) + Send>) {
        self.heartbeat = Some(f);
    }

    /// Runs until [`EngineHandle::shutdown`]; answers everything in flight before returning.
    pub fn run(mut self) -> Result<(), KernelError> {
        // The clock is read twice per turn: when a batch arrives (its events' arrival) and
        // once after it, for the answers' latency, the housekeeping, the next deadline and
        // the heartbeat alike.
        let mut now = Instant::now();
        loop {
            let deadline = self.next_deadline(now);
            match self.gate.next_batch(now, Some(deadline), &mut self.batch) {
                Ok(()) => {}
                Err(err @ KernelError::Version { .. }) => {
                    self.process_batch();
                    return Err(err);
                }
                Err(err) => {
                    // EMFILE and the like: answer what we have, back off, keep serving.
                    log::error!("{err}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.process_batch();
            while let Ok(done) = self.results.try_recv() {
                self.handle_result(done);
            }
            now = Instant::now();
            self.observe_batch_latency(now);
            // Each part returns at once when it has nothing due, as on a warm hit.
            self.expire(now);
            self.look_at_waiting_loaders(now);
            self.summarize_suppressed(now);
            self.record_mapping_events();
            self.retry_mapping_waits(now);
            while let Ok(cmd) = self.commands.try_recv() {
                if matches!(cmd, Command::Shutdown) {
                    self.drain_for_shutdown();
                    return Ok(());
                }
                self.handle_command(cmd);
            }
            if let Some(hb) = self.heartbeat.as_mut() {
                hb(now);
            }
            let alive_ms = now.saturating_duration_since(self.started).as_millis() as u64;
            self.shared
                .heartbeat_ms
                .store(alive_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn process_batch(&mut self) {
        if !self.batch.is_empty() {
            self.batch_read_at = Instant::now();
        }
        let mut batch = std::mem::take(&mut self.batch);
        for ev in batch.drain(..) {
            self.handle_event(ev);
        }
        self.batch = batch;
    }

    /// Counts the answers given in the turn that read their events (cache hits, denials
    /// without reading): their latency is at most the turn's, measured once for all.
    fn observe_batch_latency(&mut self, now: Instant) {
        if self.answered_in_batch == 0 {
            return;
        }
        let took = now.saturating_duration_since(self.batch_read_at);
        for _ in 0..std::mem::take(&mut self.answered_in_batch) {
            self.observe_latency(took);
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        // A written file waits for its writer's release, which follows its close at once.
        let tick = if self.mapping_waits.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(2)
        };
        self.in_flight
            .values()
            .flat_map(|f| f.waiters.iter().map(|w| w.deadline))
            .chain(self.loader_waits.iter().map(|w| w.next))
            .fold(now + tick, Instant::min)
    }

    fn handle_event(&mut self, ev: RawEvent) {
        self.stats.events += 1;
        if ev.is_overflow() {
            // Invalidations may have been lost: nothing cached can be trusted.
            self.stats.overflows += 1;
            log::error!("fanotify queue overflow: flushing every verdict cache");
            for (_, unit) in self.registry.iter_mut() {
                unit.cache.clear();
            }
            for f in self.in_flight.values_mut() {
                f.tainted = true;
            }
            return;
        }
        let (permission, notice, close_write) =
            (ev.is_permission(), ev.is_exec_notice(), ev.is_close_write());
        let open = ev.is_open_permission() && !permission;
        let open_notice =
            self.config.library_control && ev.is_open_notice() && !permission && !notice;
        let Some(fd) = ev.fd else { return };
        let event = if open {
            self.stats.open_events += 1;
            let pending = PendingPermission::new(fd, Arc::clone(&self.responder), Answer::Deny);
            if self.is_interpreter(ev.tid) {
                Some(ExecEvent::Open(pending))
            } else if self.config.library_control {
                Some(ExecEvent::LibraryOpen(pending))
            } else {
                // Not an interpreter: nothing to judge.
                self.answer(ExecEvent::Open(pending), Answer::Allow);
                return;
            }
        } else if open_notice {
            self.stats.open_events += 1;
            Some(ExecEvent::LibraryNotice(fd))
        } else if permission {
            self.stats.permission_events += 1;
            Some(ExecEvent::Permission(PendingPermission::new(
                fd,
                Arc::clone(&self.responder),
                Answer::Deny,
            )))
        } else if notice {
            self.stats.exec_notices += 1;
            Some(ExecEvent::Notice(fd))
        } else {
            // A pure close-after-write: only the invalidation below matters.
            let stat = stat_fd(fd.as_fd());
            if let Ok(stat) = stat {
                self.stats.close_writes += 1;
                self.invalidate(&stat, fd.as_fd(), ev.tid);
            } else {
                self.stats.stat_errors += 1;
            }
            return;
        };
        let Some(event) = event else { return };
        let Some(stat) = event.fd().and_then(|fd| stat_fd(fd).ok()) else {
            // Cannot identify the file, so cannot tell its unit or mode: fail closed.
            self.stats.stat_errors += 1;
            self.answer(event, Answer::Deny);
            return;
        };
        if close_write {
            self.stats.close_writes += 1;
            if let Some(fd) = event.fd() {
                self.invalidate(&stat, fd, ev.tid);
            }
        }
        if event.is_open() && !stat.is_regular() {
            self.answer(event, Answer::Allow);
            return;
        }
        // Library control judges shared objects only: any other open is let through once its
        // ELF header is read (a regular file, so the read cannot block).
        if matches!(
            event,
            ExecEvent::LibraryOpen(_) | ExecEvent::LibraryNotice(_)
        ) && !event.fd().is_some_and(crate::baseline::is_shared_object)
        {
            self.answer(event, Answer::Allow);
            return;
        }
        self.judge(event, ev.tid, stat);
    }

    /// Attributes an exec (or script open) to its unit and answers from the cache or
    /// starts hashing.
    fn judge(&mut self, event: ExecEvent, tid: i32, stat: FileStat) {
        let attr = match self.registry.attribute(&stat) {
            Some(a) => Some(a),
            None => match event.fd() {
                Some(fd) => self.attribute_overlay_layer(fd, tid, &stat),
                None => None,
            },
        };
        let Some(attr) = attr else {
            if self.restoring
                && !matches!(event, ExecEvent::Notice(_) | ExecEvent::LibraryNotice(_))
            {
                // The re-arm itself reads the image's files (the mapping gate's check of
                // what a container changed): with library control those opens are held
                // too, and parking the daemon's own would wait on itself.
                if matches!(event, ExecEvent::LibraryOpen(_)) && procfs::is_own_thread(tid) {
                    self.answer(event, Answer::Allow);
                    return;
                }
                self.parked.push((event, tid, stat));
                return;
            }
            self.stats.unattributed += 1;
            self.answer_unclaimed(event);
            return;
        };
        // Only a filesystem mark sees every writer of the file (a mount mark misses writes
        // through other mounts of the same filesystem), so only there is a cached finding safe.
        if attr.via == MarkKind::Filesystem {
            if let Some(unit) = self.registry.get_mut(attr.unit) {
                if let Some(hit) = unit.cache.lookup(&stat) {
                    let generation = self.mapping_key(attr.unit, &stat).map(|(_, g)| g);
                    self.finish(
                        attr.unit,
                        event,
                        tid,
                        Judgement {
                            finding: hit.finding,
                            digest: Some(hit.blake3),
                            from_cache: true,
                            arrived: self.batch_read_at,
                            generation,
                        },
                        &stat,
                    );
                    return;
                }
            }
        }
        // Content whose size no executable of the image and no allow entry has cannot be
        // allowed: judged without reading a byte, so a huge (or sparse, 8 EiB) file, or
        // any payload of another size, costs nothing. Allow entries without a size keep
        // every miss of their units hashed.
        let unhashed = self.registry.get(attr.unit).is_some_and(|u| {
            !u.baseline.may_hold_size(stat.size) && !u.allow.may_hold_size(stat.size)
        });
        if unhashed {
            self.stats.denied_unhashed += 1;
            let judged = Judgement::hashed(Finding::NotInBaseline, None, self.batch_read_at);
            self.finish(attr.unit, event, tid, judged, &stat);
            return;
        }
        self.start_hash(attr.unit, attr.via, stat, event, tid);
    }

    fn is_interpreter(&self, tid: i32) -> bool {
        !self.config.interpreters.is_empty()
            && procfs::comm(tid).is_some_and(|c| {
                self.config
                    .interpreters
                    .iter()
                    .any(|i| match i.strip_suffix(b"*") {
                        Some(prefix) => c.starts_with(prefix),
                        None => *i == c,
                    })
            })
    }

    /// Overlay with layers on different filesystems (no `xino`) gives each layer's files a
    /// device number of its own, not the overlay's: such a file is found by its mount
    /// instead (the task's mount table names the overlay's device), and its device is
    /// remembered for the unit, so the next event is an ordinary hit.
    fn attribute_overlay_layer(
        &mut self,
        fd: BorrowedFd<'_>,
        tid: i32,
        stat: &FileStat,
    ) -> Option<crate::registry::Attribution> {
        if !is_overlay(fd) {
            return None;
        }
        let mnt = legacy_mount_id(fd)?;
        let mounts = crate::kernel::mountinfo::read_mountinfo_of(tid).ok()?;
        let overlay_dev = mounts.iter().rev().find(|m| m.mount_id == mnt)?.dev;
        let attr = self.registry.attribute_filesystem(overlay_dev)?;
        self.registry.add_layer_device(stat.dev, attr.unit);
        self.stats.layer_devices += 1;
        log::debug!(
            "overlay layer device {}:{} belongs to the unit armed on {}:{}",
            libc::major(stat.dev),
            libc::minor(stat.dev),
            libc::major(overlay_dev),
            libc::minor(overlay_dev)
        );
        Some(attr)
    }

    fn invalidate(&mut self, stat: &FileStat, fd: BorrowedFd<'_>, tid: i32) {
        let attr = self
            .registry
            .attribute(stat)
            .or_else(|| self.attribute_overlay_layer(fd, tid, stat));
        let Some(attr) = attr else {
            return;
        };
        let key = FileKey::from(stat);
        if let Some(unit) = self.registry.get_mut(attr.unit) {
            unit.cache.invalidate(key);
        }
        if let Some(f) = self.in_flight.get_mut(&(attr.unit, key)) {
            f.tainted = true;
            return;
        }
        self.judge_for_mapping(attr.unit, attr.via, stat, fd);
    }

    /// A file just written on a unit's filesystem may be mapped next (a copied library, a
    /// generated one an allow entry names): with the mapping gate, an ELF file whose size
    /// the unit's baseline or allow entries have is hashed now, and made mappable if its
    /// content is allowed. A mapping that comes before the hash ends is judged without it.
    fn judge_for_mapping(
        &mut self,
        unit_h: UnitHandle,
        via: MarkKind,
        stat: &FileStat,
        fd: BorrowedFd<'_>,
    ) {
        if self.mapping.is_none() || !self.mapping_devs.contains_key(&unit_h) {
            return;
        }
        let Some(unit) = self.registry.get(unit_h) else {
            return;
        };
        if !stat.is_regular()
            || !(unit.baseline.may_hold_size(stat.size) || unit.allow.may_hold_size(stat.size))
        {
            return;
        }
        let mut magic = [0u8; 4];
        if !matches!(nix::sys::uio::pread(fd, &mut magic, 0), Ok(4)) || magic != *b"\x7fELF" {
            return;
        }
        let writers = self
            .mapping_key(unit_h, stat)
            .zip(self.mapping.as_ref())
            .map_or(0, |((key, _), gate)| gate.writers(&key));
        if writers > 0 {
            if let Ok(file) = fd.try_clone_to_owned() {
                self.mapping_waits.push(MappingWait {
                    unit: unit_h,
                    via,
                    stat: *stat,
                    file,
                    since: Instant::now(),
                });
            }
            return;
        }
        self.start_background_hash(unit_h, via, *stat, fd);
    }

    /// Hashes the written files whose writers have let go; drops those that waited too long.
    fn retry_mapping_waits(&mut self, now: Instant) {
        if self.mapping_waits.is_empty() {
            return;
        }
        let waits = std::mem::take(&mut self.mapping_waits);
        for w in waits {
            if self.registry.get(w.unit).is_none() {
                continue;
            }
            let writers = self
                .mapping_key(w.unit, &w.stat)
                .zip(self.mapping.as_ref())
                .map_or(0, |((key, _), gate)| gate.writers(&key));
            if writers == 0 {
                self.start_background_hash(w.unit, w.via, w.stat, w.file.as_fd());
            } else if now.saturating_duration_since(w.since) < MAPPING_WAIT {
                self.mapping_waits.push(w);
            }
        }
    }

    fn answer(&mut self, event: ExecEvent, answer: Answer) {
        if let ExecEvent::Permission(p) | ExecEvent::Open(p) | ExecEvent::LibraryOpen(p) = event {
            if let Err(e) = p.answer(answer) {
                self.stats.respond_errors += 1;
                log::error!("{e}");
            }
        }
    }

    /// Gathers the facts for one event and asks the rule book; a loader exec first waits
    /// (bounded) until its thread can be asked what it named.
    fn finish(
        &mut self,
        unit_h: UnitHandle,
        event: ExecEvent,
        tid: i32,
        judged: Judgement,
        stat: &FileStat,
    ) {
        let Some(unit) = self.registry.get(unit_h) else {
            // Disarmed while the file was hashed: the container is going away.
            self.observe_answer_latency(&event, judged.arrived);
            self.answer_unclaimed(event);
            return;
        };
        let facts = Facts {
            mode: unit.mode,
            event: event.kind(),
            finding: judged.finding,
            // Where the mapping gate watches the file's filesystem, the kernel refuses a
            // loader as a main binary itself; elsewhere (a volume marked by mount) the loader
            // rule still asks.
            is_loader: !self.gate_covers(unit_h, stat)
                && judged.digest.is_some_and(|d| unit.baseline.is_loader(&d)),
            loader_call: None,
            immutable_fs: unit.content_is_immutable(stat.dev),
            from_cache: judged.from_cache,
            record_misses: self.config.record_misses,
        };
        match judge(&facts) {
            Decision::Answer(outcome) => {
                self.conclude(unit_h, event, tid, judged, stat, outcome, None);
            }
            Decision::AskTask => {
                self.stats.loader_checks += 1;
                let now = Instant::now();
                let wait = LoaderWait {
                    unit: unit_h,
                    event,
                    tid,
                    judged,
                    facts,
                    stat: *stat,
                    since: now,
                    looks: 0,
                    next: now,
                };
                self.look_at_loader(wait, LOADER_INLINE_LOOKS);
            }
        }
    }

    /// Answers an event that no unit claims (its unit went away meanwhile, or could not be
    /// re-armed). Every event comes from one of our marks, and only an enforce-mode unit's
    /// marks hold execs: such an exec is refused, never silently allowed. A script open is
    /// let through (script control is a speed bump, not a boundary).
    fn answer_unclaimed(&mut self, event: ExecEvent) {
        let answer = if matches!(event, ExecEvent::Permission(_)) {
            self.stats.unattributed_denied += 1;
            log::debug!("exec on a marked filesystem that no unit claims: denied");
            Answer::Deny
        } else {
            Answer::Allow
        };
        self.answer(event, answer);
    }

    fn observe_answer_latency(&mut self, event: &ExecEvent, arrived: Instant) {
        if !matches!(event, ExecEvent::Permission(_)) {
            return;
        }
        if arrived == self.batch_read_at {
            self.answered_in_batch += 1;
        } else {
            self.observe_latency(arrived.elapsed());
        }
    }

    /// Performs what the rule book decided: the answer, the kernel-side allow, the counters
    /// and the record (a denial is answered before its context is read; an allowed exec
    /// that is recorded is described while still held).
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &mut self,
        unit_h: UnitHandle,
        event: ExecEvent,
        tid: i32,
        judged: Judgement,
        stat: &FileStat,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        self.observe_answer_latency(&event, judged.arrived);
        if self.registry.get(unit_h).is_none() {
            self.answer_unclaimed(event);
            return;
        }
        if outcome.ignore_mark {
            if let Some(fd) = event.fd() {
                match self.gate.ignore_exec(fd) {
                    Ok(()) => self.stats.kernel_allowed_files += 1,
                    Err(e) => log::debug!("{e}"),
                }
            }
        }
        let (verdict, reason, digest) = (outcome.verdict, outcome.reason, judged.digest);
        if verdict != Verdict::Allow {
            self.stats.count_denial(verdict, reason);
        }
        // An allowed library open is as good a judgement for the mapping gate as an exec.
        if outcome.answer == Answer::Allow
            && matches!(event, ExecEvent::Permission(_) | ExecEvent::LibraryOpen(_))
        {
            self.make_mappable_at(unit_h, stat, digest, judged.generation);
        }
        let recorded = outcome.record
            && self
                .registry
                .get_mut(unit_h)
                .is_some_and(|u| u.records.take(Instant::now()));
        if outcome.record && !recorded {
            self.stats.records_suppressed += 1;
            self.suppressed_units = true;
        }
        let file = if recorded {
            event.fd().and_then(|fd| fd.try_clone_to_owned().ok())
        } else {
            None
        };
        // A denied task may exit (and be reaped) the moment it is answered: its own process
        // (a few capped reads) is read while it is held, by the denial-context thread (or
        // here, when that thread is busy); its ancestors by the record writer.
        let denied_recorded = recorded && outcome.answer == Answer::Deny;
        let read_now = if denied_recorded && self.denials.is_none() {
            ProcessNow::Read(procfs::read_process(tid))
        } else if denied_recorded {
            ProcessNow::Later
        } else {
            ProcessNow::ReadHere
        };
        let held = if (outcome.answer == Answer::Deny && !denied_recorded) || !recorded {
            self.answer(event, outcome.answer);
            None
        } else {
            Some(event)
        };
        let Some(unit) = self.registry.get_mut(unit_h) else {
            if let Some(event) = held {
                self.answer_unclaimed(event);
            }
            return;
        };
        bump(&mut unit.counters, verdict);
        if !recorded {
            return;
        }
        let later = matches!(read_now, ProcessNow::Later);
        let (mut record, process) = build_record(
            unit,
            verdict,
            reason,
            file.as_ref().map(|f| f.as_fd()),
            tid,
            digest,
            stat,
            read_now,
        );
        record.detail = detail.or_else(|| default_detail(unit, reason, digest, stat.size));
        if verdict != Verdict::Allow {
            unit.last_deny = Some(crate::registry::LastDeny {
                time: record.time.clone(),
                path: record.path.clone(),
                verdict,
            });
        }
        self.stats.records += 1;
        let (event, record, file, process) = match (held, later, self.denials.as_ref()) {
            (Some(event), true, Some(denials)) => {
                let held = denial::HeldDenial {
                    event,
                    tid,
                    record: Box::new(record),
                    file,
                    process,
                };
                match denials.hand(held) {
                    Ok(()) => return,
                    // Busy: read and answer here.
                    Err(mut d) => {
                        record::fill_process(&mut d.record, procfs::read_process(tid));
                        (Some(d.event), *d.record, d.file, d.process)
                    }
                }
            }
            (held, _, _) => (held, record, file, process),
        };
        let mut record = record;
        record.fit(crate::audit::MAX_RECORD_BYTES);
        if let Some(event) = event {
            self.answer(event, outcome.answer);
        }
        self.audit.send(AuditJob::Exec {
            record: Box::new(record),
            file,
            process: Some(process),
        });
    }

    /// Before an exec is allowed, its file must be mappable: the kernel maps a program and
    /// its interpreter with `PROT_EXEC` after the exec's point of no return, where a refusal
    /// is a SIGSEGV. Done on every allowed exec (a write may have dropped the entry in the
    /// kernel since); a loader's content is also entered as a loader.
    ///
    /// `judged`: the file's write generation read before its content was judged; `None`:
    /// read now. A writer that opened (or closed) since advanced it, and the entry is then
    /// never admitted; none is made while a writer holds the file.
    fn make_mappable_at(
        &mut self,
        unit_h: UnitHandle,
        stat: &FileStat,
        digest: Option<Digest>,
        judged: Option<u64>,
    ) {
        if self.mapping.is_none() {
            return;
        }
        let key = crate::kernel::mapping_gate::FileKey {
            dev: self.mapping_dev(unit_h, stat),
            ino: stat.ino,
        };
        let Some(gate) = self.mapping.as_mut() else {
            return;
        };
        // The generation read before the judgement; read now only when none was.
        let judged = judged.unwrap_or_else(|| gate.generation(&key));
        if let Err(e) = gate.allow_at(key, judged) {
            log::warn!("mapping gate: {e}");
        }
        if let Some(oldest) = self.mapping_keys.entry(unit_h).or_default().add(key) {
            gate.forget_keys(&[oldest]);
            self.stats.mapping_budget_evictions += 1;
        }
        let loader = match (self.registry.get(unit_h), digest) {
            (Some(u), Some(d)) => u.baseline.is_loader(&d),
            _ => false,
        };
        if loader {
            if let Err(e) = gate.add_loader(key) {
                log::warn!("mapping gate: {e}");
            }
        }
    }

    /// Records what the mapping gate refused (or would have, in audit mode) since the last
    /// look, within each unit's record budget.
    fn record_mapping_events(&mut self) {
        let Some(gate) = self.mapping.as_mut() else {
            return;
        };
        let events = gate.drain_events();
        for e in events {
            // A refusal by scope names the PID namespace that refused it: attributed even when
            // the process is gone; one by file, the unit watching its filesystem.
            let in_ns = |ns: u32| {
                self.mapping_pid_ns
                    .iter()
                    .find(|(_, (n, _))| *n == ns)
                    .map(|(h, _)| *h)
            };
            let by_volume = || self.mapping_volumes.unit_judging(e.scope, e.file.dev);
            let by_scope = (e.scope != 0)
                .then(|| by_volume().or_else(|| in_ns(e.scope)))
                .flatten();
            let by_dev = || {
                self.mapping_devs
                    .iter()
                    .find(|(_, devs)| devs.contains(&e.file.dev))
                    .map(|(h, _)| *h)
            };
            let by_proc = || crate::kernel::procfs::pid_namespace(e.pid as i32).and_then(in_ns);
            let Some(unit_h) = by_scope.or_else(by_dev).or_else(by_proc) else {
                self.stats.mapping_unattributed += 1;
                continue;
            };
            if e.denied {
                self.stats
                    .count_denial(Verdict::Deny, mapping_reason(e.kind));
            } else {
                self.stats
                    .count_denial(Verdict::WouldDeny, mapping_reason(e.kind));
            }
            let Some(unit) = self.registry.get_mut(unit_h) else {
                continue;
            };
            if !unit.records.take(Instant::now()) {
                self.stats.records_suppressed += 1;
                self.suppressed_units = true;
                continue;
            }
            let record = record::mapping_record(unit, &e);
            self.stats.records += 1;
            self.audit.send(AuditJob::Mapping(Box::new(record)));
        }
    }

    /// True if the mapping gate judges mappings and loader execs of this unit's file.
    fn gate_covers(&self, unit_h: UnitHandle, stat: &FileStat) -> bool {
        self.mapping.is_some()
            && self
                .mapping_devs
                .get(&unit_h)
                .is_some_and(|devs| devs.contains(&self.mapping_dev(unit_h, stat)))
    }

    /// The kernel's key of the filesystem of a unit's file: for an overlay the overlay's
    /// superblock, which its mount root reports (a file's own st_dev may be its layer's).
    fn mapping_dev(&self, unit_h: UnitHandle, stat: &FileStat) -> u64 {
        let dev = self
            .registry
            .get(unit_h)
            .and_then(|u| u.marks.iter().find(|m| m.mnt_id == stat.mnt_id))
            .map_or(stat.dev, |m| m.superblock_dev());
        crate::kernel::mapping_gate::kernel_dev(dev)
    }

    /// The mapping gate's key of a file of a unit, and its write generation now.
    pub(super) fn mapping_key(
        &self,
        unit_h: UnitHandle,
        stat: &FileStat,
    ) -> Option<(crate::kernel::mapping_gate::FileKey, u64)> {
        let gate = self.mapping.as_ref()?;
        let key = crate::kernel::mapping_gate::FileKey {
            dev: self.mapping_dev(unit_h, stat),
            ino: stat.ino,
        };
        let generation = gate.generation(&key);
        Some((key, generation))
    }

    /// Writes a summary for each unit whose budget held records back, once it has room.
    fn summarize_suppressed(&mut self, now: Instant) {
        if !self.suppressed_units {
            return;
        }
        let mut left = false;
        let mut summaries = Vec::new();
        for (_, unit) in self.registry.iter_mut() {
            if let Some((records, since)) = unit.records.take_summary(now) {
                summaries.push(crate::audit::SuppressedRecord {
                    v: RECORD_VERSION,
                    kind: "suppressed".into(),
                    time: rfc3339(SystemTime::now()),
                    unit: unit.id.clone(),
                    records,
                    since,
                });
            }
            left |= unit.records.suppressed() > 0;
        }
        self.suppressed_units = left;
        for s in summaries {
            self.audit.send(AuditJob::Suppressed(s));
        }
    }
}

/// The reason counted for a mapping gate event.
fn mapping_reason(kind: u32) -> Reason {
    use crate::kernel::mapping_gate::kind;
    match kind {
        kind::LOADER_EXEC => Reason::DirectLoader,
        kind::WX | kind::ANON_EXEC | kind::PROC_MEM | kind::PTRACE => Reason::MemoryCode,
        _ => Reason::MappingNotAllowed,
    }
}

#[cfg(test)]
mod tests;
