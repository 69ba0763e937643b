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
//! The rooms, each an owner of its state: this file is the loop and the cache hit (`run`
//! → `handle_event` → `judge`); `intake` turns a kernel event into an `ExecEvent`
//! (or an invalidation); `misses` sends misses to the `pool` (the workers, the in-flight
//! table, the deadlines) and judges what comes back; `answer` asks the rule book and
//! performs its decision (`finish` → `conclude`); `loader` the loader rule's bounded wait
//! for the exec'ing thread; `mapping` the mapping gate's entries; `control` the commands
//! from the socket side and a clean stop, sent through a [`handle::EngineHandle`];
//! `explain`, `stats` and `record` what is said about it all.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;

use crate::Mode;
use crate::audit::{AuditJob, AuditQueue, AuditRecord, ProcessRecord, RECORD_VERSION, rfc3339};
use crate::baseline::hash::same_content_fingerprint;
use crate::baseline::{Digest, HashError};
use crate::escape::escape_bytes;
use crate::kernel::{
    Answer, EventMask, FileStat, Gate, KernelError, Mark, MarkKind, PendingPermission,
    ProcTaskProbe, RawEvent, Respond, TaskProbe, is_overlay, legacy_mount_id, procfs, stat_fd,
    unanswered_drops,
};
use crate::registry::{Allowed, PlannedMark, Registry, Unit, UnitCounters, UnitHandle, UnitStatus};
use crate::verdict::{
    Decision, EventKind, Facts, FileKey, Finding, Outcome, Reason, Verdict, VerdictCache,
    content_finding, judge, judge_unobserved,
};

mod answer;
mod config;
mod control;
mod denial;
mod exec;
mod explain;
mod handle;
mod intake;
mod loader;
mod mapping;
mod misses;
mod pool;
mod record;
mod stats;

pub use config::{
    DEFAULT_CACHE_CAPACITY, DEFAULT_HASH_TIMEOUT, DEFAULT_LOADER_WAIT, EngineConfig, threads,
};
use exec::{Claimed, ExecEvent, Judgement};
pub use explain::Explanation;
use handle::LoopShared;
pub use handle::{AddedMarks, Command, EngineError, EngineHandle, ExplainQuery, PidUnit, UnitSpec};
use loader::{LOADER_INLINE_LOOKS, LoaderWait, LoaderWaits};
use mapping::{GateUnit, MappingSide};
use pool::{HashDone, HashPool, InFlight, Waiter};
use record::*;
use stats::bump;
pub use stats::{EngineStats, EngineStatus, LATENCY_BUCKETS};

/// The event loop.
pub struct Engine<G: Gate> {
    gate: G,
    responder: Arc<dyn Respond>,
    registry: Registry,
    commands: Receiver<Command>,
    /// Misses being hashed, and the workers hashing them.
    pool: HashPool,
    /// The BPF LSM mapping gate's entries, where the kernel runs it.
    mapping: MappingSide,
    /// Loader execs waiting for their thread to be seen blocked.
    loader: LoaderWaits,
    /// Where records go.
    records: Records,
    /// The batch being processed.
    turn: Turn,
    /// Events held while a predecessor's units are re-armed.
    restore: Restore,
    /// What shows the loop is alive.
    liveness: Liveness,
    stats: EngineStats,
    config: EngineConfig,
}

/// The batch of kernel events being processed, and when it was read.
struct Turn {
    batch: Vec<RawEvent>,
    /// When the batch was read (decision latency is measured from it).
    read_at: Instant,
    /// Permission events answered in the turn that read them, not yet counted in the
    /// latency histogram.
    answered: u32,
}

/// Where records go: the audit writer, and the thread that reads a denied task's process
/// while it is held.
struct Records {
    audit: AuditQueue,
    /// Reads a recorded denial's process and answers it, off this thread.
    denials: Option<denial::DenialReader>,
    /// Some unit's record budget holds records back (a summary is due).
    suppressed: bool,
}

/// Adopted a predecessor's group whose marks outlive the registry: until the recorded
/// units are re-armed, an event on no known unit is held, not allowed.
#[derive(Default)]
struct Restore {
    active: bool,
    parked: Vec<(ExecEvent, i32, FileStat)>,
}

/// The loop's heartbeat: a function called every turn (the systemd watchdog feeds on it)
/// and the time of the last turn, shared with the handles.
struct Liveness {
    heartbeat: Option<Box<dyn FnMut(Instant) + Send>>,
    /// Milliseconds from `started` to the last loop iteration, shared with the handle.
    shared: Arc<LoopShared>,
    started: Instant,
}

impl<G: Gate> Engine<G> {
    /// Builds the engine and its hashing workers.
    pub fn new(gate: G, config: EngineConfig, audit: AuditQueue) -> (Self, EngineHandle) {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let waker = gate.waker();
        let pool = HashPool::new(config.hash_workers, config.hash_timeout, Arc::clone(&waker));
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
            pool,
            mapping: MappingSide::default(),
            loader: LoaderWaits::new(Box::new(ProcTaskProbe)),
            records: Records {
                audit,
                denials,
                suppressed: false,
            },
            turn: Turn {
                batch: Vec::with_capacity(512),
                read_at: Instant::now(),
                answered: 0,
            },
            restore: Restore::default(),
            liveness: Liveness {
                heartbeat: None,
                shared,
                started,
            },
            stats: EngineStats::default(),
            config,
        };
        (engine, handle)
    }

    /// Holds events on unknown units until [`EngineHandle::restore_done`] (after adopting a
    /// predecessor's fanotify group, whose marks are in place before the units are known).
    pub fn set_restoring(&mut self, restoring: bool) {
        self.restore.active = restoring;
        if restoring {
            // The predecessor's ignore marks were made against its units.
            self.clear_ignored_execs();
        }
    }

    /// Drops every kernel-side allow ([`Gate::ignore_exec`]); they are placed again as
    /// files are judged anew.
    fn clear_ignored_execs(&mut self) {
        if self.stats.kernel_allowed_files > 0 || self.restore.active {
            if let Err(e) = self.gate.clear_ignored_execs() {
                log::error!("{e}");
            }
        }
    }

    /// Hands the engine the mapping gate: allowed execs are made mappable before they are
    /// answered, and the fanotify-side loader check gives way to the gate's exact one.
    pub fn set_mapping_gate(&mut self, gate: crate::kernel::mapping_gate::MappingGate) {
        self.mapping.set_gate(gate);
    }

    /// Replaces how exec'ing tasks are looked at (tests use a fake).
    pub fn set_task_probe(&mut self, probe: Box<dyn TaskProbe>) {
        self.loader.set_probe(probe);
    }

    /// Sets a function called once per loop iteration.
    pub fn set_heartbeat(&mut self, f: Box<dyn FnMut(Instant) + Send>) {
        self.liveness.heartbeat = Some(f);
    }

    /// Runs until [`EngineHandle::shutdown`]; answers everything in flight before returning.
    pub fn run(mut self) -> Result<(), KernelError> {
        // The clock is read twice per turn: when a batch arrives (its events' arrival) and
        // once after it, for the answers' latency, the housekeeping, the next deadline and
        // the heartbeat alike.
        let mut now = Instant::now();
        loop {
            let deadline = self.next_deadline(now);
            match self
                .gate
                .next_batch(now, Some(deadline), &mut self.turn.batch)
            {
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
            while let Some(done) = self.pool.try_result() {
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
            self.beat(now);
        }
    }

    fn beat(&mut self, now: Instant) {
        let live = &mut self.liveness;
        if let Some(hb) = live.heartbeat.as_mut() {
            hb(now);
        }
        let alive_ms = now.saturating_duration_since(live.started).as_millis() as u64;
        live.shared
            .heartbeat_ms
            .store(alive_ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn process_batch(&mut self) {
        if !self.turn.batch.is_empty() {
            self.turn.read_at = Instant::now();
        }
        let mut batch = std::mem::take(&mut self.turn.batch);
        for ev in batch.drain(..) {
            self.handle_event(ev);
        }
        self.turn.batch = batch;
    }

    /// Counts the answers given in the turn that read their events (cache hits, denials
    /// without reading): their latency is at most the turn's, measured once for all.
    fn observe_batch_latency(&mut self, now: Instant) {
        if self.turn.answered == 0 {
            return;
        }
        let took = now.saturating_duration_since(self.turn.read_at);
        for _ in 0..std::mem::take(&mut self.turn.answered) {
            self.observe_latency(took);
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        // A written file waits for its writer's release, which follows its close at once.
        let tick = if self.mapping.has_waits() {
            Duration::from_millis(2)
        } else {
            Duration::from_secs(1)
        };
        self.pool
            .next_deadline()
            .into_iter()
            .chain(self.loader.next_look())
            .fold(now + tick, Instant::min)
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
            self.judge_unattributed(event, tid, stat);
            return;
        };
        let claim = Claimed {
            unit: attr.unit,
            event,
            tid,
            stat,
        };
        // Only a filesystem mark sees every writer of the file (a mount mark misses writes
        // through other mounts of the same filesystem), so only there is a cached finding safe.
        if attr.via == MarkKind::Filesystem {
            if let Some(unit) = self.registry.get_mut(attr.unit) {
                if let Some(hit) = unit.cache.lookup(&stat) {
                    let generation = self
                        .mapping
                        .key(&self.registry, attr.unit, &stat)
                        .map(|(_, g)| g);
                    let judged = Judgement {
                        finding: hit.finding,
                        digest: Some(hit.blake3),
                        from_cache: true,
                        arrived: self.turn.read_at,
                        generation,
                    };
                    self.finish(claim, judged);
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
            let judged = Judgement::hashed(Finding::NotInBaseline, None, self.turn.read_at);
            self.finish(claim, judged);
            return;
        }
        self.start_hash(claim, attr.via);
    }

    /// An event on no known unit: held while a predecessor's units are re-armed, else
    /// answered as unclaimed.
    fn judge_unattributed(&mut self, event: ExecEvent, tid: i32, stat: FileStat) {
        if self.restore.active
            && !matches!(event, ExecEvent::Notice(_) | ExecEvent::LibraryNotice(_))
        {
            // The re-arm itself reads the image's files (the mapping gate's check of what
            // a container changed): with library control those opens are held too, and
            // parking the daemon's own would wait on itself.
            if matches!(event, ExecEvent::LibraryOpen(_)) && procfs::is_own_thread(tid) {
                self.answer(event, Answer::Allow);
                return;
            }
            self.restore.parked.push((event, tid, stat));
            return;
        }
        self.stats.unattributed += 1;
        self.answer_unclaimed(event);
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
