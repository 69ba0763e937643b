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
    ProcTaskProbe, RawEvent, Respond, TaskProbe, Wake, procfs, stat_fd, unanswered_drops,
};
use crate::registry::{Allowed, PlannedMark, Registry, Unit, UnitCounters, UnitHandle, UnitStatus};
use crate::verdict::cache::now as wall_now;
use crate::verdict::policy::loader_finding;
use crate::verdict::{FileKey, Finding, Reason, Verdict, VerdictCache, decide};

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hash_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            hash_timeout: Duration::from_secs(2),
            cache_capacity: 65_536,
            record_misses: false,
            interpreters: Vec::new(),
            loader_wait: Duration::from_secs(10),
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
}

/// Whole-engine counters.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    /// Events read.
    pub events: u64,
    /// Permission events answered.
    pub permission_events: u64,
    /// Exec notifications (audit mode).
    pub exec_notices: u64,
    /// Open permission events (script control).
    pub open_events: u64,
    /// Close-after-write notifications.
    pub close_writes: u64,
    /// Queue overflows (every cache was flushed).
    pub overflows: u64,
    /// Events on no armed unit (a unit disarmed meanwhile); allowed.
    pub unattributed: u64,
    /// Failures to answer (the kernel refused the response).
    pub respond_errors: u64,
    /// Events whose file could not be stat'ed.
    pub stat_errors: u64,
    /// Permission events answered by drop instead of an explicit decision.
    pub unanswered_drops: u64,
    /// Records queued for the audit writer.
    pub records: u64,
    /// Bytes hashed at exec time.
    pub hashed_bytes: u64,
    /// Time spent hashing at exec time, seconds.
    pub hash_seconds: f64,
    /// Permission events answered, by decision latency (read → answer): counts per bucket
    /// of [`LATENCY_BUCKETS`] (the last is +Inf).
    pub latency_buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of decision latencies, seconds.
    pub latency_seconds: f64,
    /// Files on immutable filesystems whose later execs the kernel now allows without an
    /// event (inode ignore marks placed).
    #[serde(default)]
    pub kernel_allowed_files: u64,
    /// Denials (enforce mode) by reason (`not-in-baseline`, `direct-loader`, ...).
    #[serde(default)]
    pub denied_by_reason: std::collections::BTreeMap<String, u64>,
    /// Would-denials (audit mode) by reason.
    #[serde(default)]
    pub would_deny_by_reason: std::collections::BTreeMap<String, u64>,
    /// Loader execs whose thread was asked what it executes (the loader rule).
    #[serde(default)]
    pub loader_checks: u64,
    /// Looks at a loader exec's thread that found it not yet blocked (looked again).
    #[serde(default)]
    pub loader_not_blocked_looks: u64,
    /// Loader checks that had to wait for their thread past the first looks.
    #[serde(default)]
    pub loader_waits: u64,
    /// Longest wait of one loader check for its thread to be blocked, microseconds.
    #[serde(default)]
    pub loader_wait_max_us: u64,
    /// Loader checks whose thread was gone (its exec could not go on; allowed).
    #[serde(default)]
    pub loader_thread_gone: u64,
}

/// Upper bounds of the decision-latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.001, 0.01, 0.1, 1.0, 5.0,
];

/// A snapshot of the engine for `driftlock status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineStatus {
    /// Armed units.
    pub units: Vec<UnitStatus>,
    /// Counters.
    pub stats: EngineStats,
    /// Files being hashed now.
    pub in_flight: usize,
}

/// A request to the engine thread.
pub enum Command {
    /// Arm a unit.
    Arm(UnitSpec, Sender<Result<Vec<PlannedMark>, EngineError>>),
    /// Disarm a unit.
    Disarm(String, Sender<Result<UnitStatus, EngineError>>),
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
    tx: Sender<Command>,
    waker: Arc<dyn Wake>,
    timeout: Duration,
    heartbeat_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl EngineHandle {
    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, EngineError> {
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
        let last = self.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_sub(last) as f64 / 1e3
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

/// An exec event waiting for a verdict.
enum ExecEvent {
    /// Enforce mode: the exec is blocked until answered.
    Permission(PendingPermission),
    /// Audit mode: the exec already proceeds; the fd is kept for the record.
    Notice(OwnedFd),
    /// Script control: an interpreter's open of a file, blocked until answered.
    Open(PendingPermission),
}

impl ExecEvent {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            ExecEvent::Permission(p) | ExecEvent::Open(p) => p.fd(),
            ExecEvent::Notice(fd) => Some(fd.as_fd()),
        }
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
}

impl Judgement {
    fn hashed(finding: Finding, digest: Option<Digest>, arrived: Instant) -> Self {
        Self {
            finding,
            digest,
            from_cache: false,
            arrived,
        }
    }
}

struct Waiter {
    event: ExecEvent,
    tid: i32,
    deadline: Instant,
    arrived: Instant,
}

struct InFlight {
    seq: u64,
    stat: FileStat,
    via: MarkKind,
    /// A close-after-write was seen while hashing: the result may describe old content.
    tainted: bool,
    waiters: Vec<Waiter>,
}

struct HashJob {
    seq: u64,
    key: (UnitHandle, FileKey),
    fd: OwnedFd,
    deadline: Instant,
    /// The unit allows content by SHA-256: compute it too.
    with_sha256: bool,
}

struct HashDone {
    seq: u64,
    key: (UnitHandle, FileKey),
    started: crate::kernel::Timestamp,
    elapsed: Duration,
    result: Result<crate::baseline::FileDigests, HashError>,
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
    audit: AuditQueue,
    batch: Vec<RawEvent>,
    stats: EngineStats,
    config: EngineConfig,
    next_seq: u64,
    /// Called after every loop iteration (the systemd watchdog feeds on it).
    heartbeat: Option<Box<dyn FnMut() + Send>>,
    /// Adopted a predecessor's group whose marks outlive the registry: until the recorded
    /// units are re-armed, an event on no known unit is held, not allowed.
    restoring: bool,
    parked: Vec<(ExecEvent, i32, FileStat)>,
    /// When the batch being processed was read (decision latency is measured from it).
    batch_read_at: Instant,
    /// Wall-clock milliseconds of the last loop iteration, shared with the handle.
    heartbeat_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Asks exec'ing tasks what they named (the loader rule).
    probe: Box<dyn TaskProbe>,
    /// Loader execs whose thread was not yet seen blocked: looked at again shortly.
    loader_waits: Vec<LoaderWait>,
}

/// A loader exec waiting until its thread is seen blocked in the exec.
struct LoaderWait {
    unit: UnitHandle,
    event: ExecEvent,
    tid: i32,
    judged: Judgement,
    stat: FileStat,
    since: Instant,
    looks: u32,
    next: Instant,
}

/// Looks at a loader exec's thread on the event path before it waits off the loop: most
/// transient states (the thread about to sleep, or woken for a moment by an answer to
/// another event) last microseconds.
const LOADER_INLINE_LOOKS: u32 = 4;

/// First and longest pause between later looks.
const LOADER_RETRY_FIRST: Duration = Duration::from_micros(100);
const LOADER_RETRY_MAX: Duration = Duration::from_millis(10);

/// The longest a clean stop waits for hashes in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a worker keeps hashing one file after its exec was answered by policy.
const WORKER_HARD_LIMIT: Duration = Duration::from_secs(120);

/// The pool grows to this many times `hash_workers` when every worker is busy.
const WORKER_GROWTH: usize = 4;

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
        let heartbeat_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handle = EngineHandle {
            tx: cmd_tx,
            waker,
            timeout: Duration::from_secs(60),
            heartbeat_ms: Arc::clone(&heartbeat_ms),
        };
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
            audit,
            batch: Vec::with_capacity(512),
            stats: EngineStats::default(),
            config,
            next_seq: 0,
            heartbeat: None,
            restoring: false,
            parked: Vec::new(),
            batch_read_at: Instant::now(),
            heartbeat_ms,
            probe: Box::new(ProcTaskProbe),
            loader_waits: Vec::new(),
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

    /// Replaces how exec'ing tasks are looked at (tests use a fake).
    pub fn set_task_probe(&mut self, probe: Box<dyn TaskProbe>) {
        self.probe = probe;
    }

    /// Sets a function called once per loop iteration.
    pub fn set_heartbeat(&mut self, f: Box<dyn FnMut() + Send>) {
        self.heartbeat = Some(f);
    }

    /// Runs until [`EngineHandle::shutdown`]; answers everything in flight before returning.
    pub fn run(mut self) -> Result<(), KernelError> {
        loop {
            let timeout = self.next_timeout();
            match self.gate.next_batch(timeout, &mut self.batch) {
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
            self.expire(Instant::now());
            self.look_at_waiting_loaders(Instant::now());
            while let Ok(cmd) = self.commands.try_recv() {
                if matches!(cmd, Command::Shutdown) {
                    self.drain_for_shutdown();
                    return Ok(());
                }
                self.handle_command(cmd);
            }
            if let Some(hb) = self.heartbeat.as_mut() {
                hb();
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.heartbeat_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
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

    fn next_timeout(&self) -> Option<Duration> {
        let earliest = self
            .in_flight
            .values()
            .flat_map(|f| f.waiters.iter().map(|w| w.deadline))
            .min();
        let earliest = earliest
            .into_iter()
            .chain(self.loader_waits.iter().map(|w| w.next))
            .min();
        let tick = Duration::from_secs(1);
        Some(match earliest {
            Some(d) => d.saturating_duration_since(Instant::now()).min(tick),
            None => tick,
        })
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
        let Some(fd) = ev.fd else { return };
        let event = if open {
            self.stats.open_events += 1;
            let pending = PendingPermission::new(fd, Arc::clone(&self.responder), Answer::Deny);
            if !self.is_interpreter(ev.tid) {
                // Not an interpreter: nothing to judge.
                self.answer(ExecEvent::Open(pending), Answer::Allow);
                return;
            }
            Some(ExecEvent::Open(pending))
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
                self.invalidate(&stat);
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
            self.invalidate(&stat);
        }
        if matches!(event, ExecEvent::Open(_)) && !stat.is_regular() {
            self.answer(event, Answer::Allow);
            return;
        }
        self.judge(event, ev.tid, stat);
    }

    /// Attributes an exec (or script open) to its unit and answers from the cache or
    /// starts hashing.
    fn judge(&mut self, event: ExecEvent, tid: i32, stat: FileStat) {
        let Some(attr) = self.registry.attribute(&stat) else {
            if self.restoring && !matches!(event, ExecEvent::Notice(_)) {
                self.parked.push((event, tid, stat));
                return;
            }
            self.stats.unattributed += 1;
            self.answer(event, Answer::Allow);
            return;
        };
        // Only a filesystem mark sees every writer of the file (a mount mark misses writes
        // through other mounts of the same filesystem), so only there is a cached finding safe.
        if attr.via == MarkKind::Filesystem {
            if let Some(unit) = self.registry.get_mut(attr.unit) {
                if let Some(hit) = unit.cache.lookup(&stat) {
                    self.finish(
                        attr.unit,
                        event,
                        tid,
                        Judgement {
                            finding: hit.finding,
                            digest: Some(hit.blake3),
                            from_cache: true,
                            arrived: self.batch_read_at,
                        },
                        &stat,
                    );
                    return;
                }
            }
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

    fn invalidate(&mut self, stat: &FileStat) {
        let Some(attr) = self.registry.attribute(stat) else {
            return;
        };
        let key = FileKey::from(stat);
        if let Some(unit) = self.registry.get_mut(attr.unit) {
            unit.cache.invalidate(key);
        }
        if let Some(f) = self.in_flight.get_mut(&(attr.unit, key)) {
            f.tainted = true;
        }
    }

    fn start_hash(
        &mut self,
        unit: UnitHandle,
        via: MarkKind,
        stat: FileStat,
        event: ExecEvent,
        tid: i32,
    ) {
        let key = (unit, FileKey::from(&stat));
        let deadline = Instant::now() + self.config.hash_timeout;
        let waiter = Waiter {
            event,
            tid,
            deadline,
            arrived: self.batch_read_at,
        };
        if let Some(f) = self.in_flight.get_mut(&key) {
            if f.stat == stat || f.tainted {
                f.waiters.push(waiter);
                return;
            }
            // Same inode, other fingerprint: the file changed since that hash started.
            f.tainted = true;
            f.stat = stat;
            f.waiters.push(waiter);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut flight = InFlight {
            seq,
            stat,
            via,
            tainted: false,
            waiters: vec![waiter],
        };
        if !self.dispatch(key, &mut flight) {
            return;
        }
        self.in_flight.insert(key, flight);
    }

    /// Sends a hash job for `flight`; on failure answers its waiters (unreadable).
    fn dispatch(&mut self, key: (UnitHandle, FileKey), flight: &mut InFlight) -> bool {
        let dup = flight
            .waiters
            .first()
            .and_then(|w| w.event.fd())
            .and_then(|fd| fd.try_clone_to_owned().ok());
        let with_sha256 = self
            .registry
            .get(key.0)
            .is_some_and(|u| !u.allow.sha256.is_empty());
        let sent = match (dup, self.jobs.as_ref()) {
            (Some(fd), Some(jobs)) => jobs
                .send(HashJob {
                    seq: flight.seq,
                    key,
                    fd,
                    deadline: Instant::now() + WORKER_HARD_LIMIT,
                    with_sha256,
                })
                .is_ok(),
            _ => false,
        };
        if sent {
            self.grow_workers_if_saturated();
        } else {
            let stat = flight.stat;
            for w in flight.waiters.drain(..) {
                self.finish(
                    key.0,
                    w.event,
                    w.tid,
                    Judgement::hashed(Finding::Unverifiable(Reason::Unreadable), None, w.arrived),
                    &stat,
                );
            }
        }
        sent
    }

    /// Adds a worker when jobs wait while every worker is hashing, so a huge or slow file
    /// occupies one worker and does not hold every later miss until its time budget runs
    /// out. Bounded; workers added stay for the daemon's life (they sleep when idle).
    fn grow_workers_if_saturated(&mut self) {
        let started = self.workers.len();
        let cap = self.config.hash_workers * WORKER_GROWTH;
        if started == 0 || started >= cap {
            return;
        }
        let waiting = self.job_queue.len();
        if waiting > 0 && self.busy.load(Ordering::Relaxed) + waiting > started {
            let waker = self.gate.waker();
            if let Some(w) = spawn_hash_worker(
                started,
                &self.job_queue,
                &self.result_tx,
                &waker,
                &self.busy,
            ) {
                log::debug!("every hash worker is busy: started worker {}", started + 1);
                self.workers.push(w);
            }
        }
    }

    fn handle_result(&mut self, done: HashDone) {
        let Some(mut flight) = self.in_flight.remove(&done.key) else {
            return;
        };
        if flight.seq != done.seq {
            self.in_flight.insert(done.key, flight);
            return;
        }
        let (unit_h, file_key) = done.key;
        if let Some(unit) = self.registry.get_mut(unit_h) {
            unit.counters.hashed += 1;
        }
        self.stats.hash_seconds += done.elapsed.as_secs_f64();
        if let Ok(d) = &done.result {
            self.stats.hashed_bytes += d.stat.size;
        }
        if flight.tainted {
            // The content may have changed after the hash began: hash again for whoever
            // still waits, and cache nothing from this run.
            if flight.waiters.is_empty() {
                return;
            }
            flight.tainted = false;
            flight.seq = self.next_seq;
            self.next_seq += 1;
            if self.dispatch(done.key, &mut flight) {
                self.in_flight.insert(done.key, flight);
            }
            return;
        }
        let (finding, digest) = match &done.result {
            Ok(d)
                if d.stat.ino == file_key.ino
                    && same_content_fingerprint(&d.stat, &flight.stat) =>
            {
                let found = self
                    .registry
                    .get(unit_h)
                    .map(|u| u.baseline.contains(&d.blake3) || u.allow.permits(d));
                let bad = self
                    .registry
                    .get(unit_h)
                    .is_some_and(|u| u.baseline.is_known_bad(&d.blake3));
                match found {
                    _ if bad => (Finding::Unverifiable(Reason::KnownBad), Some(d.blake3)),
                    Some(true) => (Finding::InBaseline, Some(d.blake3)),
                    Some(false) => (Finding::NotInBaseline, Some(d.blake3)),
                    None => (Finding::InBaseline, Some(d.blake3)), // unit disarmed meanwhile
                }
            }
            // Changed between the exec event and the hash (or during it): deny.
            Ok(d) => (
                Finding::Unverifiable(Reason::ChangedDuringHash),
                Some(d.blake3),
            ),
            Err(HashError::Changed) => (Finding::Unverifiable(Reason::ChangedDuringHash), None),
            Err(HashError::Deadline(_)) => (Finding::Unverifiable(Reason::HashTimeout), None),
            Err(e) => {
                log::warn!("hashing an exec'd file failed: {e}");
                (Finding::Unverifiable(Reason::Unreadable), None)
            }
        };
        if flight.via == MarkKind::Filesystem {
            if let (Some(unit), Some(d)) = (self.registry.get_mut(unit_h), digest) {
                unit.cache.insert(&flight.stat, finding, d, done.started);
            }
        }
        let stat = flight.stat;
        for w in flight.waiters.drain(..) {
            self.finish(
                unit_h,
                w.event,
                w.tid,
                Judgement::hashed(finding, digest, w.arrived),
                &stat,
            );
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.in_flight.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        for (key, f) in self.in_flight.iter_mut() {
            let mut i = 0;
            while i < f.waiters.len() {
                if f.waiters[i].deadline <= now {
                    expired.push((key.0, f.waiters.swap_remove(i), f.stat));
                } else {
                    i += 1;
                }
            }
        }
        for (unit, w, stat) in expired {
            if let Some(u) = self.registry.get_mut(unit) {
                u.counters.hash_timeouts += 1;
            }
            self.finish(
                unit,
                w.event,
                w.tid,
                Judgement::hashed(Finding::Unverifiable(Reason::HashTimeout), None, w.arrived),
                &stat,
            );
        }
    }

    fn observe_latency(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.stats.latency_buckets.get_mut(bucket) {
            *b += 1;
        }
        self.stats.latency_seconds += secs;
    }

    fn answer(&mut self, event: ExecEvent, answer: Answer) {
        if let ExecEvent::Permission(p) | ExecEvent::Open(p) = event {
            if let Err(e) = p.answer(answer) {
                self.stats.respond_errors += 1;
                log::error!("{e}");
            }
        }
    }

    /// Decides for one event, answers it, and records a deny / would-deny. A loader exec
    /// first waits (bounded) until its thread can be asked what it named.
    fn finish(
        &mut self,
        unit_h: UnitHandle,
        event: ExecEvent,
        tid: i32,
        mut judged: Judgement,
        stat: &FileStat,
    ) {
        let Some(unit) = self.registry.get(unit_h) else {
            // Disarmed while the file was hashed: the container is going away.
            self.conclude(unit_h, event, tid, judged, stat, None);
            return;
        };
        let script = matches!(event, ExecEvent::Open(_));
        if script && judged.finding == Finding::NotInBaseline {
            judged.finding = Finding::Unverifiable(Reason::ScriptNotInBaseline);
        }
        // A loader's content is in the baseline, but invoking it directly runs a program
        // that raises no exec event of its own: ask the blocked task what it executes. An
        // audit notification's task has moved on, so nothing can be asked there.
        let loader = !script
            && judged.finding == Finding::InBaseline
            && judged.digest.is_some_and(|d| unit.baseline.is_loader(&d))
            && matches!(event, ExecEvent::Permission(_));
        if !loader {
            self.conclude(unit_h, event, tid, judged, stat, None);
            return;
        }
        self.stats.loader_checks += 1;
        let now = Instant::now();
        let wait = LoaderWait {
            unit: unit_h,
            event,
            tid,
            judged,
            stat: *stat,
            since: now,
            looks: 0,
            next: now,
        };
        self.look_at_loader(wait, LOADER_INLINE_LOOKS);
    }

    /// Looks at a loader exec's thread up to `looks` times. A thread that raised a
    /// permission event cannot go on without our answer, so a state read while it is not
    /// yet asleep (or was woken for a moment by an answer to another event: every waiter of
    /// the group shares one wait queue) must not decide: look again shortly, up to the
    /// loader wait budget, and only then fail closed with `loader-unobservable`.
    fn look_at_loader(&mut self, mut w: LoaderWait, looks: u32) {
        for i in 0..looks {
            if i > 0 {
                std::thread::yield_now();
            }
            let seen = self.probe.loader_call(w.tid, (w.stat.dev, w.stat.ino));
            w.looks += 1;
            let Some(finding) = loader_finding(seen.call) else {
                self.stats.loader_not_blocked_looks += 1;
                continue;
            };
            let waited = w.since.elapsed();
            self.stats.loader_wait_max_us =
                self.stats.loader_wait_max_us.max(waited.as_micros() as u64);
            if seen.call == crate::kernel::exec_name::LoaderCall::Gone {
                self.stats.loader_thread_gone += 1;
            }
            let detail = if w.looks > 1 {
                format!(
                    "{}; thread seen blocked at look {} after {} us",
                    seen.evidence,
                    w.looks,
                    waited.as_micros()
                )
            } else {
                seen.evidence
            };
            w.judged.finding = finding;
            self.conclude(w.unit, w.event, w.tid, w.judged, &w.stat, Some(detail));
            return;
        }
        let waited = w.since.elapsed();
        if waited >= self.config.loader_wait {
            log::warn!(
                "loader exec of thread {} answered by policy: the thread was never seen blocked in {} looks over {} ms",
                w.tid,
                w.looks,
                waited.as_millis()
            );
            let detail = format!(
                "thread {} never seen blocked in its exec: {} looks over {} ms",
                w.tid,
                w.looks,
                waited.as_millis()
            );
            w.judged.finding = Finding::Unverifiable(Reason::LoaderUnobservable);
            self.conclude(w.unit, w.event, w.tid, w.judged, &w.stat, Some(detail));
            return;
        }
        if w.looks <= LOADER_INLINE_LOOKS {
            self.stats.loader_waits += 1;
        }
        let later = w.looks.saturating_sub(LOADER_INLINE_LOOKS).min(8);
        let pause = LOADER_RETRY_FIRST
            .saturating_mul(1 << later)
            .min(LOADER_RETRY_MAX);
        w.next = Instant::now() + pause;
        self.loader_waits.push(w);
    }

    /// Looks again at the loader execs whose pause has passed.
    fn look_at_waiting_loaders(&mut self, now: Instant) {
        if self.loader_waits.iter().all(|w| w.next > now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.loader_waits)
            .into_iter()
            .partition(|w| w.next <= now);
        self.loader_waits = later;
        for w in due {
            self.look_at_loader(w, 1);
        }
    }

    /// Answers one event with its final finding and records a deny / would-deny.
    fn conclude(
        &mut self,
        unit_h: UnitHandle,
        event: ExecEvent,
        tid: i32,
        judged: Judgement,
        stat: &FileStat,
        detail: Option<String>,
    ) {
        let Judgement {
            finding,
            digest,
            from_cache,
            arrived,
        } = judged;
        if matches!(event, ExecEvent::Permission(_)) {
            self.observe_latency(arrived.elapsed());
        }
        let Some(unit) = self.registry.get_mut(unit_h) else {
            self.answer(event, Answer::Allow);
            return;
        };
        let script = matches!(event, ExecEvent::Open(_));
        let (verdict, answer) = decide(unit.mode, finding);
        bump(&mut unit.counters, verdict);
        // Beyond the round trip: on a filesystem with no write path the content of this
        // inode is fixed, so the kernel may allow its next execs itself. Never a loader
        // (a direct invocation must still be seen) and never a script open.
        if answer == Answer::Allow
            && unit.content_is_immutable(stat.dev)
            && !script
            && matches!(event, ExecEvent::Permission(_))
            && digest.is_some_and(|d| !unit.baseline.is_loader(&d))
        {
            if let Some(fd) = event.fd() {
                match self.gate.ignore_exec(fd) {
                    Ok(()) => self.stats.kernel_allowed_files += 1,
                    Err(e) => log::debug!("{e}"),
                }
            }
        }
        if verdict == Verdict::Allow && (from_cache || !self.config.record_misses) {
            self.answer(event, answer);
            return;
        }
        // Off the hot path: gather the context while the exec is still held.
        let mut record = build_record(unit, verdict, finding.reason(), &event, tid, digest, stat);
        record.detail = detail.or_else(|| default_detail(unit, finding, digest));
        if verdict != Verdict::Allow {
            unit.last_deny = Some(crate::registry::LastDeny {
                time: record.time.clone(),
                path: record.path.clone(),
                verdict,
            });
            let by_reason = if verdict == Verdict::Deny {
                &mut self.stats.denied_by_reason
            } else {
                &mut self.stats.would_deny_by_reason
            };
            let name = finding.reason().as_str();
            match by_reason.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    by_reason.insert(name.to_string(), 1);
                }
            }
        }
        let file = event.fd().and_then(|fd| fd.try_clone_to_owned().ok());
        self.answer(event, answer);
        self.stats.records += 1;
        self.audit.send(AuditJob::Exec {
            record: Box::new(record),
            file,
        });
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Arm(spec, reply) => {
                let r = self.arm(spec);
                let _ = reply.send(r);
            }
            Command::Disarm(id, reply) => {
                let r = self.disarm(&id);
                // Another unit could arm the same filesystem with another baseline.
                self.clear_ignored_execs();
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
                for (event, tid, stat) in std::mem::take(&mut self.parked) {
                    self.judge(event, tid, stat);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn mark_of(&self, planned: &PlannedMark, mode: Mode) -> Mark {
        // Script control gates opens on the scratch filesystems (tmpfs) only, where dropped
        // scripts land; the image's own files are never held on open.
        let opens = !self.config.interpreters.is_empty() && planned.fstype == "tmpfs";
        Mark {
            path: planned.path.clone(),
            kind: planned.kind,
            mask: match (mode, opens) {
                (Mode::Enforce, true) => EventMask::EnforceWithOpens,
                (Mode::Enforce, false) => EventMask::Enforce,
                (Mode::Audit, _) => EventMask::Audit,
            },
        }
    }

    fn arm(&mut self, spec: UnitSpec) -> Result<Vec<PlannedMark>, EngineError> {
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
        log::info!(
            "armed unit {:?} ({} mode, {} marks)",
            spec.id,
            spec.mode,
            marks.len()
        );
        Ok(marks)
    }

    fn explain(
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
        let finding = if !baseline_paths.is_empty() || allowed_by_entry {
            Finding::InBaseline
        } else {
            Finding::NotInBaseline
        };
        let (verdict, _) = decide(unit.mode, finding);
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
        Ok(Explanation {
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

    fn add_marks(&mut self, id: &str, marks: Vec<PlannedMark>) -> Result<AddedMarks, EngineError> {
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
        Ok(out)
    }

    fn disarm(&mut self, id: &str) -> Result<UnitStatus, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let Some(unit) = self.registry.remove(handle) else {
            return Err(EngineError::UnknownId(id.to_string()));
        };
        for m in &unit.marks {
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

    fn status(&self) -> EngineStatus {
        let mut units: Vec<UnitStatus> = self.registry.iter().map(|(_, u)| u.status()).collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        let mut stats = self.stats.clone();
        stats.unanswered_drops = unanswered_drops();
        EngineStatus {
            units,
            stats,
            in_flight: self.in_flight.len(),
        }
    }

    fn drain_for_shutdown(&mut self) {
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
        for w in std::mem::take(&mut self.loader_waits) {
            let mut judged = w.judged;
            judged.finding = Finding::Unverifiable(Reason::LoaderUnobservable);
            let detail = format!("daemon stopping: thread {} not seen blocked", w.tid);
            self.conclude(w.unit, w.event, w.tid, judged, &w.stat, Some(detail));
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

fn bump(c: &mut UnitCounters, v: Verdict) {
    match v {
        Verdict::Allow => c.allowed += 1,
        Verdict::Deny => c.denied += 1,
        Verdict::WouldDeny => c.would_deny += 1,
    }
}

/// The evidence behind a finding that no rule described on its own.
fn default_detail(unit: &Unit, finding: Finding, digest: Option<Digest>) -> Option<String> {
    let what = match digest {
        Some(d) => format!("content blake3:{d}"),
        None => "content not hashed".to_string(),
    };
    Some(match finding {
        Finding::InBaseline => return None,
        Finding::NotInBaseline => format!(
            "{what} is not among the {} executables of the image's baseline nor in the unit's allow entries",
            unit.baseline.entries().len()
        ),
        Finding::Unverifiable(Reason::ScriptNotInBaseline) => {
            format!("an interpreter opened a file whose {what} is not in the image's baseline")
        }
        Finding::Unverifiable(Reason::KnownBad) => {
            format!("{what} matches a known-bad indicator")
        }
        Finding::Unverifiable(Reason::ChangedDuringHash) => {
            format!("the file changed while it was hashed ({what})")
        }
        Finding::Unverifiable(Reason::HashTimeout) => {
            "hashing did not finish within the time budget".to_string()
        }
        Finding::Unverifiable(Reason::Unreadable) => {
            "the file could not be read through the event's descriptor".to_string()
        }
        Finding::Unverifiable(r) => r.as_str().to_string(),
    })
}

fn build_record(
    unit: &Unit,
    verdict: Verdict,
    reason: Reason,
    event: &ExecEvent,
    tid: i32,
    digest: Option<Digest>,
    stat: &FileStat,
) -> AuditRecord {
    let path = event.fd().and_then(procfs::fd_path);
    let proc_info = procfs::read_process(tid);
    let chain: Vec<ProcessRecord> = proc_info
        .as_ref()
        .map(|p| procfs::parent_chain(p.pid, crate::audit::MAX_CHAIN, unit.pid))
        .unwrap_or_default()
        .iter()
        .map(ProcessRecord::from)
        .collect();
    let me = proc_info.as_ref().map(ProcessRecord::from);
    AuditRecord {
        v: RECORD_VERSION,
        time: rfc3339(SystemTime::now()),
        unit: unit.id.clone(),
        image_key: escape_bytes(&unit.image_key),
        image_name: unit.image_name.clone(),
        k8s_namespace: unit.k8s.namespace.clone(),
        k8s_pod: unit.k8s.pod.clone(),
        k8s_container: unit.k8s.container.clone(),
        mode: unit.mode,
        verdict,
        reason,
        path: path.as_deref().map(escape_bytes),
        tid,
        pid: proc_info.as_ref().map(|p| p.pid),
        ppid: proc_info.as_ref().map(|p| p.ppid),
        uid: proc_info.as_ref().map(|p| p.uid),
        comm: me.as_ref().map(|m| m.comm.clone()),
        cmdline: me.map(|m| m.cmdline).unwrap_or_default(),
        chain,
        blake3: digest.map(|d| d.to_string()),
        sha256: None,
        size: Some(stat.size),
        evidence: None,
        rule: (verdict != Verdict::Allow).then(|| reason.rule().to_string()),
        detail: None,
    }
}

fn spawn_hash_worker(
    i: usize,
    jobs: &Receiver<HashJob>,
    results: &Sender<HashDone>,
    waker: &Arc<dyn Wake>,
    busy: &Arc<AtomicUsize>,
) -> Option<std::thread::JoinHandle<()>> {
    let (jobs, results, waker, busy) = (
        jobs.clone(),
        results.clone(),
        Arc::clone(waker),
        Arc::clone(busy),
    );
    std::thread::Builder::new()
        .name(format!("driftlock-hash-{i}"))
        .spawn(move || hash_worker(jobs, results, waker, busy))
        .map_err(|e| log::error!("cannot start hash worker {i}: {e}"))
        .ok()
}

fn hash_worker(
    jobs: Receiver<HashJob>,
    results: Sender<HashDone>,
    waker: Arc<dyn Wake>,
    busy: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    for job in jobs {
        busy.fetch_add(1, Ordering::Relaxed);
        let started = wall_now();
        let clock = Instant::now();
        let result = hash_fd(
            job.fd.as_fd(),
            &mut buf,
            job.with_sha256,
            Some(job.deadline),
        );
        let elapsed = clock.elapsed();
        drop(job.fd);
        busy.fetch_sub(1, Ordering::Relaxed);
        if results
            .send(HashDone {
                seq: job.seq,
                key: job.key,
                started,
                elapsed,
                result,
            })
            .is_err()
        {
            break;
        }
        waker.wake();
    }
}

#[cfg(test)]
mod tests;
