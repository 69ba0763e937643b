//! The engine's side of the hash pool: a miss is sent to be hashed, a finished hash is
//! judged against its unit's baseline and answers whoever waits, and an event whose time
//! ran out (or that the pool could not take) is answered by policy.

use super::pool::Refused;
use super::*;

impl<G: Gate> Engine<G> {
    /// The unit allows content by SHA-256: its files' hashes must compute it too.
    fn with_sha256(&self, unit: UnitHandle) -> bool {
        self.registry
            .get(unit)
            .is_some_and(|u| u.allow.needs_sha256())
    }

    /// Hashes the claimed file (or joins the hash of it already under way).
    pub(super) fn start_hash(&mut self, claim: Claimed, via: MarkKind) {
        let Claimed {
            unit,
            event,
            tid,
            stat,
        } = claim;
        let key = (unit, FileKey::from(&stat));
        let waiter = Waiter {
            event,
            tid,
            deadline: Instant::now() + self.config.hash_timeout,
            arrived: self.turn.read_at,
        };
        let Some(waiter) = self.pool.join(key, &stat, waiter) else {
            return;
        };
        let generation = self.mapping.generation(&self.registry, unit, &stat);
        let flight = InFlight::for_exec(stat, via, generation, waiter);
        let with_sha256 = self.with_sha256(unit);
        if let Err(r) = self.pool.submit(key, flight, with_sha256, &mut self.stats) {
            self.refuse(r);
        }
    }

    /// Hashes a file no exec waits for (see `judge_for_mapping`), within the unit's share.
    pub(super) fn start_background_hash(
        &mut self,
        unit: UnitHandle,
        via: MarkKind,
        stat: FileStat,
        fd: BorrowedFd<'_>,
    ) {
        let Ok(file) = fd.try_clone_to_owned() else {
            return;
        };
        let generation = self.mapping.generation(&self.registry, unit, &stat);
        let flight = InFlight::for_mapping(stat, via, generation, file);
        let key = (unit, FileKey::from(&stat));
        let with_sha256 = self.with_sha256(unit);
        // Nobody waits: a flight the pool cannot take is simply not hashed.
        let _ = self.pool.submit(key, flight, with_sha256, &mut self.stats);
    }

    /// Answers by policy the waiters the pool could not take.
    fn refuse(&mut self, r: Refused) {
        for w in r.waiters {
            let judged = Judgement::hashed(Finding::Unverifiable(r.reason), None, w.arrived);
            self.finish(
                Claimed {
                    unit: r.unit,
                    event: w.event,
                    tid: w.tid,
                    stat: r.stat,
                },
                judged,
            );
        }
    }

    /// Takes a worker's result: counted, judged, cached, and answered to its waiters; then
    /// the unit's backlog moves on.
    pub(super) fn handle_result(&mut self, done: HashDone) {
        let (unit_h, file_key) = done.key;
        let with_sha256 = self.with_sha256(unit_h);
        if let Some(flight) = self.pool.take_result(&done) {
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
                if let Err(r) = self.pool.rehash(done.key, flight, with_sha256) {
                    self.refuse(r);
                }
            } else {
                self.conclude_hash(unit_h, file_key, flight, &done);
            }
        }
        for r in self.pool.dispatch_backlog(unit_h, with_sha256) {
            self.refuse(r);
        }
        self.forget_answered_units();
    }

    /// Judges a finished hash's content in its unit and answers whoever waits for it.
    fn conclude_hash(
        &mut self,
        unit_h: UnitHandle,
        file_key: FileKey,
        mut flight: InFlight,
        done: &HashDone,
    ) {
        // Content some entry allows at some paths only: judged per exec, never cached.
        let mut at_paths = None;
        let (finding, digest) = match &done.result {
            Ok(d)
                if d.stat.ino == file_key.ino
                    && same_content_fingerprint(&d.stat, &flight.stat) =>
            {
                let finding = match self.registry.get(unit_h) {
                    Some(u) => {
                        let f = content_finding(
                            u.baseline.is_known_bad(&d.blake3),
                            u.baseline.contains(&d.blake3),
                            u.allow.permits(d),
                        );
                        if f == Finding::NotInBaseline && u.allow.scoped_to_paths(d) {
                            at_paths = Some(*d);
                        }
                        f
                    }
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
        if flight.via == MarkKind::Filesystem && at_paths.is_none() {
            if let (Some(unit), Some(d)) = (self.registry.get_mut(unit_h), digest) {
                unit.cache.insert(&flight.stat, finding, d, done.started);
            }
        }
        // Each waiter's finding: the content's, or allowed at the path it came by.
        let waiters: Vec<(Waiter, Finding)> = flight
            .waiters
            .drain(..)
            .map(|w| match &at_paths {
                Some(d) if self.allowed_at_its_path(unit_h, d, &w.event) => {
                    (w, Finding::InBaseline)
                }
                _ => (w, finding),
            })
            .collect();
        let mappable = finding == Finding::InBaseline
            || waiters.iter().any(|(_, f)| *f == Finding::InBaseline);
        if flight.for_mapping && mappable {
            self.stats.mapping_prepared += 1;
            let generation = Some(flight.mapping_generation);
            self.make_mappable(unit_h, &flight.stat, digest, generation);
        }
        let stat = flight.stat;
        let generation = Some(flight.mapping_generation);
        for (w, finding) in waiters {
            let judged = Judgement {
                generation,
                ..Judgement::hashed(finding, digest, w.arrived)
            };
            let claim = Claimed {
                unit: unit_h,
                event: w.event,
                tid: w.tid,
                stat,
            };
            self.finish(claim, judged);
        }
    }

    /// True if an entry of the unit allows this content at the path the event's file was
    /// reached by (as the exec'ing container sees it).
    fn allowed_at_its_path(
        &self,
        unit: UnitHandle,
        d: &crate::baseline::FileDigests,
        event: &ExecEvent,
    ) -> bool {
        let Some(path) = event.fd().and_then(procfs::fd_path) else {
            return false;
        };
        self.registry
            .get(unit)
            .is_some_and(|u| u.allow.permits_at(d, &path))
    }

    /// Answers by policy the waiters whose time budget ran out (a late result still fills
    /// the cache).
    pub(super) fn expire(&mut self, now: Instant) {
        for (unit, w, stat) in self.pool.expired(now) {
            if let Some(u) = self.registry.get_mut(unit) {
                u.counters.hash_timeouts += 1;
            }
            let judged =
                Judgement::hashed(Finding::Unverifiable(Reason::HashTimeout), None, w.arrived);
            let claim = Claimed {
                unit,
                event: w.event,
                tid: w.tid,
                stat,
            };
            self.finish(claim, judged);
        }
        self.forget_answered_units();
    }
}
