//! The hash pool: misses go to worker threads (each job holds a duplicate of the
//! event's fd), waiting events are grouped per file (the in-flight table), a file written
//! while it is hashed is hashed again (taint), and each waiter has its own deadline.

use super::*;

pub(super) struct Waiter {
    pub(super) event: ExecEvent,
    pub(super) tid: i32,
    pub(super) deadline: Instant,
    pub(super) arrived: Instant,
}

pub(super) struct InFlight {
    pub(super) seq: u64,
    pub(super) stat: FileStat,
    pub(super) via: MarkKind,
    /// A close-after-write was seen while hashing: the result may describe old content.
    pub(super) tainted: bool,
    /// Waiting in its unit's backlog (the unit holds its share of the pool), not yet sent
    /// to a worker.
    pub(super) queued: bool,
    /// Hashed for the mapping gate (a file just written), not for an exec: an allowed
    /// result makes it mappable.
    pub(super) for_mapping: bool,
    /// A duplicate of the file's fd, for a flight without waiters (for the mapping gate).
    pub(super) file: Option<OwnedFd>,
    /// The file's write generation in the mapping gate, read before it was hashed.
    pub(super) mapping_generation: u64,
    pub(super) waiters: Vec<Waiter>,
}

impl InFlight {
    /// A file about to be hashed, with nobody waiting yet.
    pub(super) fn new(seq: u64, stat: FileStat, via: MarkKind) -> Self {
        InFlight {
            seq,
            stat,
            via,
            tainted: false,
            queued: false,
            for_mapping: false,
            file: None,
            mapping_generation: 0,
            waiters: Vec::new(),
        }
    }
}

/// Hash jobs one unit may have in the pool at once: its share, so that one container's
/// slow or huge files cannot keep every worker from another container's misses.
pub(super) fn unit_share(config: &EngineConfig) -> usize {
    (config.hash_workers * WORKER_GROWTH / 2).max(1)
}

/// Files one unit may have waiting beyond its share; past it, a miss is denied at once
/// (hash-timeout) instead of queueing without bound.
pub(super) const UNIT_BACKLOG: usize = 1024;

pub(super) struct HashJob {
    pub(super) seq: u64,
    pub(super) key: (UnitHandle, FileKey),
    pub(super) fd: OwnedFd,
    pub(super) deadline: Instant,
    /// The unit allows content by SHA-256: compute it too.
    pub(super) with_sha256: bool,
}

pub(super) struct HashDone {
    pub(super) seq: u64,
    pub(super) key: (UnitHandle, FileKey),
    pub(super) started: crate::kernel::Timestamp,
    pub(super) elapsed: Duration,
    pub(super) result: Result<crate::baseline::FileDigests, HashError>,
}

/// How long a worker keeps hashing one file, as a multiple of the exec's time budget: past
/// the budget the exec was answered by policy; the rest lets a slow file's result still be
/// cached for its next exec, and then the worker stops (checked between chunks).
pub(super) const WORKER_LIMIT_FACTOR: u32 = 2;

/// The pool grows to this many times `hash_workers` when every worker is busy.
pub(super) const WORKER_GROWTH: usize = 4;

pub(super) fn spawn_hash_worker(
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

pub(super) fn hash_worker(
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

impl<G: Gate> Engine<G> {
    pub(super) fn start_hash(
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
        let mut flight = InFlight::new(seq, stat, via);
        flight.mapping_generation = self.mapping_key(unit, &stat).map_or(0, |(_, g)| g);
        flight.waiters.push(waiter);
        let share = unit_share(&self.config);
        if self.unit_jobs.get(&unit).copied().unwrap_or(0) >= share {
            let backlog = self.backlog.entry(unit).or_default();
            if backlog.len() >= UNIT_BACKLOG {
                self.stats.hash_backlog_full += 1;
                for w in flight.waiters.drain(..) {
                    self.finish(
                        unit,
                        w.event,
                        w.tid,
                        Judgement::hashed(
                            Finding::Unverifiable(Reason::HashTimeout),
                            None,
                            w.arrived,
                        ),
                        &stat,
                    );
                }
                return;
            }
            backlog.push_back(key);
            flight.queued = true;
            self.stats.hash_backlogged += 1;
            self.in_flight.insert(key, flight);
            return;
        }
        if !self.dispatch(key, &mut flight) {
            return;
        }
        self.in_flight.insert(key, flight);
    }

    /// Hashes a file no exec waits for (see `judge_for_mapping`), within the unit's share.
    pub(super) fn start_background_hash(
        &mut self,
        unit: UnitHandle,
        via: MarkKind,
        stat: FileStat,
        fd: BorrowedFd<'_>,
    ) {
        let key = (unit, FileKey::from(&stat));
        if self.in_flight.contains_key(&key)
            || self.unit_jobs.get(&unit).copied().unwrap_or(0) >= unit_share(&self.config)
        {
            return;
        }
        let Ok(file) = fd.try_clone_to_owned() else {
            return;
        };
        let mapping_generation = self.mapping_key(unit, &stat).map_or(0, |(_, g)| g);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut flight = InFlight::new(seq, stat, via);
        flight.for_mapping = true;
        flight.file = Some(file);
        flight.mapping_generation = mapping_generation;
        if self.dispatch(key, &mut flight) {
            self.in_flight.insert(key, flight);
        }
    }

    /// Sends the next files of `unit`'s backlog while it is under its share.
    pub(super) fn dispatch_backlog(&mut self, unit: UnitHandle) {
        let share = unit_share(&self.config);
        while self.unit_jobs.get(&unit).copied().unwrap_or(0) < share {
            let Some(key) = self.backlog.get_mut(&unit).and_then(|b| b.pop_front()) else {
                self.backlog.remove(&unit);
                return;
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
            if self.dispatch(key, &mut flight) {
                self.in_flight.insert(key, flight);
            }
        }
    }

    /// Sends a hash job for `flight`; on failure answers its waiters (unreadable).
    pub(super) fn dispatch(&mut self, key: (UnitHandle, FileKey), flight: &mut InFlight) -> bool {
        let dup = flight
            .waiters
            .first()
            .and_then(|w| w.event.fd())
            .or_else(|| flight.file.as_ref().map(|f| f.as_fd()))
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
                    deadline: Instant::now() + self.config.hash_timeout * WORKER_LIMIT_FACTOR,
                    with_sha256,
                })
                .is_ok(),
            _ => false,
        };
        if sent {
            *self.unit_jobs.entry(key.0).or_insert(0) += 1;
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
    ///
    /// As many workers are added as jobs wait (up to the bound), not one per dispatch: a
    /// burst of one unit's jobs queued ahead of another unit's first miss would otherwise
    /// take each new worker first, and that miss would wait for a busy worker past its
    /// budget (seen in CI, under load, as a denied image program).
    pub(super) fn grow_workers_if_saturated(&mut self) {
        let cap = self.config.hash_workers * WORKER_GROWTH;
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
            let waker = self.gate.waker();
            let Some(w) = spawn_hash_worker(
                started,
                &self.job_queue,
                &self.result_tx,
                &waker,
                &self.busy,
            ) else {
                break;
            };
            log::debug!("every hash worker is busy: started worker {}", started + 1);
            self.workers.push(w);
        }
    }

    pub(super) fn handle_result(&mut self, done: HashDone) {
        let unit = done.key.0;
        if let Some(n) = self.unit_jobs.get_mut(&unit) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unit_jobs.remove(&unit);
            }
        }
        self.handle_result_of_unit(done);
        self.dispatch_backlog(unit);
    }

    fn handle_result_of_unit(&mut self, done: HashDone) {
        let Some(mut flight) = self.in_flight.remove(&done.key) else {
            return;
        };
        if flight.seq != done.seq || flight.queued {
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
                let finding = match self.registry.get(unit_h) {
                    Some(u) => content_finding(
                        u.baseline.is_known_bad(&d.blake3),
                        u.baseline.contains(&d.blake3),
                        u.allow.permits(d),
                    ),
                    // Disarmed meanwhile: nothing is answered by this unit's rules.
                    None => Finding::InBaseline,
                };
                (finding, Some(d.blake3))
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
        if flight.for_mapping && finding == Finding::InBaseline {
            self.stats.mapping_prepared += 1;
            self.make_mappable_at(
                unit_h,
                &flight.stat,
                digest,
                Some(flight.mapping_generation),
            );
        }
        let stat = flight.stat;
        let generation = flight.mapping_generation;
        for w in flight.waiters.drain(..) {
            self.finish(
                unit_h,
                w.event,
                w.tid,
                Judgement {
                    generation: Some(generation),
                    ..Judgement::hashed(finding, digest, w.arrived)
                },
                &stat,
            );
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
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
}
