//! The hash pool: misses go to worker threads (each job holds a duplicate of the
//! event's fd), waiting events are grouped per file (the in-flight table), a file written
//! while it is hashed is hashed again (taint), and each waiter has its own deadline.
//!
//! The pool owns its queue, its workers and its table, and answers with values: an event
//! it cannot take ([`Refused`]), a hash that ended with whoever waits for it, the waiters
//! whose time ran out. It never judges and never answers: the engine does.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::EngineStats;
use crate::kernel::{FileStat, Wake};
use crate::registry::UnitHandle;
use crate::verdict::{FileKey, Reason};

mod flight;
mod worker;

use flight::refused;
pub(super) use flight::{InFlight, Refused, Waiter};

pub(super) use worker::HashDone;
use worker::{HashJob, spawn_hash_worker};

/// Files one unit may have waiting beyond its share; past it, a miss is denied at once
/// (hash-timeout) instead of queueing without bound.
const UNIT_BACKLOG: usize = 1024;

/// How long a worker keeps hashing one file, as a multiple of the exec's time budget: past
/// the budget the exec was answered by policy; the rest lets a slow file's result still be
/// cached for its next exec, and then the worker stops (checked between chunks).
const WORKER_LIMIT_FACTOR: u32 = 2;

/// The pool grows to this many times `hash_workers` when every worker is busy.
const WORKER_GROWTH: usize = 4;

/// The hashing workers and the files they hash.
pub(super) struct HashPool {
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
    waker: Arc<dyn Wake>,
    /// The workers the pool starts with; it grows to `WORKER_GROWTH` times as many.
    base_workers: usize,
    /// An exec's time budget (a job's is `WORKER_LIMIT_FACTOR` times as long).
    hash_timeout: Duration,
    in_flight: HashMap<(UnitHandle, FileKey), InFlight>,
    /// Hash jobs each unit has in the pool (queued or running).
    unit_jobs: HashMap<UnitHandle, usize>,
    /// Files each unit has waiting beyond its share of the pool.
    backlog: HashMap<UnitHandle, VecDeque<(UnitHandle, FileKey)>>,
    next_seq: u64,
}

impl HashPool {
    /// Starts `workers` hashing threads that wake the event loop through `waker`.
    pub(super) fn new(workers: usize, hash_timeout: Duration, waker: Arc<dyn Wake>) -> Self {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<HashJob>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<HashDone>();
        let busy = Arc::new(AtomicUsize::new(0));
        let started = (0..workers)
            .filter_map(|i| spawn_hash_worker(i, &job_rx, &res_tx, &waker, &busy))
            .collect();
        Self {
            jobs: Some(job_tx),
            job_queue: job_rx,
            results: res_rx,
            result_tx: res_tx,
            busy,
            workers: started,
            waker,
            base_workers: workers,
            hash_timeout,
            in_flight: HashMap::new(),
            unit_jobs: HashMap::new(),
            backlog: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Hash jobs one unit may have in the pool at once: its share, so that one container's
    /// slow or huge files cannot keep every worker from another container's misses.
    fn unit_share(&self) -> usize {
        (self.base_workers * WORKER_GROWTH / 2).max(1)
    }

    fn jobs_of(&self, unit: UnitHandle) -> usize {
        self.unit_jobs.get(&unit).copied().unwrap_or(0)
    }

    /// Adds `waiter` to the file's hash already under way; gives it back when there is none.
    pub(super) fn join(
        &mut self,
        key: (UnitHandle, FileKey),
        stat: &FileStat,
        waiter: Waiter,
    ) -> Option<Waiter> {
        let Some(f) = self.in_flight.get_mut(&key) else {
            return Some(waiter);
        };
        if f.stat != *stat && !f.tainted {
            // Same inode, other fingerprint: the file changed since that hash started.
            f.tainted = true;
            f.stat = *stat;
        }
        f.waiters.push(waiter);
        None
    }

    /// Starts hashing a file. One for the mapping gate is skipped when the file is already
    /// hashed or its unit holds its share; an exec's waits in its unit's backlog, or is
    /// refused when that is full or no worker can take it.
    pub(super) fn submit(
        &mut self,
        key: (UnitHandle, FileKey),
        mut flight: InFlight,
        with_sha256: bool,
        stats: &mut EngineStats,
    ) -> Result<(), Refused> {
        let unit = key.0;
        let full = self.jobs_of(unit) >= self.unit_share();
        if flight.for_mapping && (full || self.in_flight.contains_key(&key)) {
            return Ok(());
        }
        flight.seq = self.take_seq();
        if full {
            let backlog = self.backlog.entry(unit).or_default();
            if backlog.len() >= UNIT_BACKLOG {
                stats.hash_backlog_full += 1;
                return Err(refused(unit, &mut flight, Reason::HashTimeout));
            }
            backlog.push_back(key);
            flight.queued = true;
            stats.hash_backlogged += 1;
            self.in_flight.insert(key, flight);
            return Ok(());
        }
        self.dispatch(key, flight, with_sha256)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends the next files of `unit`'s backlog while it is under its share.
    pub(super) fn dispatch_backlog(&mut self, unit: UnitHandle, with_sha256: bool) -> Vec<Refused> {
        let mut out = Vec::new();
        while self.jobs_of(unit) < self.unit_share() {
            let Some(key) = self.backlog.get_mut(&unit).and_then(|b| b.pop_front()) else {
                self.backlog.remove(&unit);
                break;
            };
            let Some(mut flight) = self.in_flight.remove(&key) else {
                continue;
            };
            if flight.waiters.is_empty() {
                // Every waiter was answered by its deadline meanwhile.
                continue;
            }
            flight.queued = false;
            // The hash starts now, on the content as it is now.
            flight.tainted = false;
            if let Err(r) = self.dispatch(key, flight, with_sha256) {
                out.push(r);
            }
        }
        out
    }

    /// Hashes a tainted flight again for whoever still waits (nothing from its last run
    /// is used).
    pub(super) fn rehash(
        &mut self,
        key: (UnitHandle, FileKey),
        mut flight: InFlight,
        with_sha256: bool,
    ) -> Result<(), Refused> {
        if flight.waiters.is_empty() {
            return Ok(());
        }
        flight.tainted = false;
        flight.seq = self.take_seq();
        self.dispatch(key, flight, with_sha256)
    }

    /// Sends a hash job for `flight`; when none can be sent, its waiters are refused
    /// (unreadable).
    fn dispatch(
        &mut self,
        key: (UnitHandle, FileKey),
        mut flight: InFlight,
        with_sha256: bool,
    ) -> Result<(), Refused> {
        let dup = flight
            .waiters
            .first()
            .and_then(|w| w.event.fd())
            .or_else(|| flight.file.as_ref().map(|f| f.as_fd()))
            .and_then(|fd| fd.try_clone_to_owned().ok());
        let sent = match (dup, self.jobs.as_ref()) {
            (Some(fd), Some(jobs)) => jobs
                .send(HashJob {
                    seq: flight.seq,
                    key,
                    fd,
                    deadline: Instant::now() + self.hash_timeout * WORKER_LIMIT_FACTOR,
                    with_sha256,
                })
                .is_ok(),
            _ => false,
        };
        if !sent {
            return Err(refused(key.0, &mut flight, Reason::Unreadable));
        }
        *self.unit_jobs.entry(key.0).or_insert(0) += 1;
        self.in_flight.insert(key, flight);
        self.grow_workers_if_saturated();
        Ok(())
    }

    /// Adds a worker when jobs wait while every worker is hashing, so a huge or slow file
    /// occupies one worker and does not hold every later miss until its time budget runs
    /// out. Bounded; workers added stay for the daemon's life (they sleep when idle).
    ///
    /// As many workers are added as jobs wait (up to the bound), not one per dispatch: a
    /// burst of one unit's jobs queued ahead of another unit's first miss would otherwise
    /// take each new worker first, and that miss would wait for a busy worker past its
    /// budget (seen in CI, under load, as a denied image program).
    fn grow_workers_if_saturated(&mut self) {
        let cap = self.base_workers * WORKER_GROWTH;
        if self.workers.is_empty() {
            return;
        }
        while self.workers.len() < cap {
            let started = self.workers.len();
            let waiting = self.job_queue.len();
            // A worker just added has not taken a job yet: `busy + waiting` is what needs
            // a worker, whatever the new ones are doing.
            if waiting == 0 || self.busy.load(Ordering::Relaxed) + waiting <= started {
                break;
            }
            let Some(w) = spawn_hash_worker(
                started,
                &self.job_queue,
                &self.result_tx,
                &self.waker,
                &self.busy,
            ) else {
                break;
            };
            log::debug!("every hash worker is busy: started worker {}", started + 1);
            self.workers.push(w);
        }
    }

    /// A result the workers sent, if any.
    pub(super) fn try_result(&self) -> Option<HashDone> {
        self.results.try_recv().ok()
    }

    /// Takes a worker's result off the books: its flight, unless the result is stale (the
    /// file was hashed again since, or is back in the backlog).
    pub(super) fn take_result(&mut self, done: &HashDone) -> Option<InFlight> {
        let unit = done.key.0;
        if let Some(n) = self.unit_jobs.get_mut(&unit) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unit_jobs.remove(&unit);
            }
        }
        let flight = self.in_flight.remove(&done.key)?;
        if flight.seq != done.seq || flight.queued {
            self.in_flight.insert(done.key, flight);
            return None;
        }
        Some(flight)
    }

    /// Marks the file's hash under way as describing old content; false if there is none.
    pub(super) fn taint(&mut self, key: (UnitHandle, FileKey)) -> bool {
        match self.in_flight.get_mut(&key) {
            Some(f) => {
                f.tainted = true;
                true
            }
            None => false,
        }
    }

    /// Marks every hash under way as describing old content (invalidations were lost).
    pub(super) fn taint_all(&mut self) {
        for f in self.in_flight.values_mut() {
            f.tainted = true;
        }
    }

    /// The waiters whose deadline has passed, taken off their flights.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<(UnitHandle, Waiter, FileStat)> {
        let mut expired = Vec::new();
        if self.in_flight.is_empty() {
            // A table that once held many keeps its buckets: not scanned on a warm turn.
            return expired;
        }
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
        expired
    }

    /// The earliest deadline of a waiting event.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.in_flight.is_empty() {
            return None;
        }
        self.in_flight
            .values()
            .flat_map(|f| f.waiters.iter().map(|w| w.deadline))
            .min()
    }

    /// Files being hashed or queued.
    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Some event waits for a hash.
    pub(super) fn has_waiters(&self) -> bool {
        self.in_flight.values().any(|f| !f.waiters.is_empty())
    }

    /// Some event of `unit` waits for a hash (queued or running).
    pub(super) fn has_waiters_for(&self, unit: UnitHandle) -> bool {
        self.in_flight
            .iter()
            .any(|(k, f)| k.0 == unit && !f.waiters.is_empty())
    }

    /// Waits up to `timeout` for a worker's result.
    pub(super) fn recv_timeout(&self, timeout: Duration) -> Option<HashDone> {
        self.results.recv_timeout(timeout).ok()
    }

    /// Stops taking jobs and forgets every flight; joins the workers that are idle (one
    /// stuck on a slow file is left behind: the process is exiting).
    pub(super) fn stop(&mut self) {
        self.in_flight.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}
