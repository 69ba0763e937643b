//! Answering: the facts of one claimed event go to the rule book (`finish`), and its
//! decision is performed (`conclude`): the answer, the kernel-side allow, the mapping
//! gate's entry, the counters and the record. Also the gate's own refusals, recorded.

use super::*;

impl<G: Gate> Engine<G> {
    pub(super) fn answer(&mut self, event: ExecEvent, answer: Answer) {
        if let ExecEvent::Permission(p) | ExecEvent::Open(p) | ExecEvent::LibraryOpen(p) = event {
            if let Err(e) = p.answer(answer) {
                self.stats.respond_errors += 1;
                log::error!("{e}");
            }
        }
    }

    /// Gathers the facts for one event and asks the rule book; a loader exec first waits
    /// (bounded) until its thread can be asked what it named.
    pub(super) fn finish(&mut self, claim: Claimed, judged: Judgement) {
        let Some(unit) = self.registry.get(claim.unit) else {
            // Disarmed while the file was hashed: the container is going away.
            self.observe_answer_latency(&claim.event, judged.arrived);
            self.answer_unclaimed(claim.event);
            return;
        };
        let facts = Facts {
            mode: unit.mode,
            event: claim.event.kind(),
            finding: judged.finding,
            // Where the mapping gate watches the file's filesystem, the kernel refuses a
            // loader as a main binary itself; elsewhere (a volume marked by mount) the loader
            // rule still asks.
            is_loader: !self.mapping.covers(&self.registry, claim.unit, &claim.stat)
                && judged.digest.is_some_and(|d| unit.baseline.is_loader(&d)),
            loader_call: None,
            immutable_fs: unit.content_is_immutable(claim.stat.dev),
            from_cache: judged.from_cache,
            record_misses: self.config.record_misses,
        };
        match judge(&facts) {
            Decision::Answer(outcome) => self.conclude(claim, judged, outcome, None),
            Decision::AskTask => {
                self.stats.loader_checks += 1;
                let wait = LoaderWait::new(claim, judged, facts);
                self.look_at_loader(wait, LOADER_INLINE_LOOKS);
            }
        }
    }

    /// Answers an event that no unit claims (its unit went away meanwhile, or could not be
    /// re-armed). Every event comes from one of our marks, and only an enforce-mode unit's
    /// marks hold execs: such an exec is refused, never silently allowed. A script open is
    /// let through (script control is a speed bump, not a boundary).
    pub(super) fn answer_unclaimed(&mut self, event: ExecEvent) {
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
        if arrived == self.turn.read_at {
            self.turn.answered += 1;
        } else {
            self.observe_latency(arrived.elapsed());
        }
    }

    /// Performs what the rule book decided: the answer, the kernel-side allow, the counters
    /// and the record (a denial is answered before its context is read; an allowed exec
    /// that is recorded is described while still held).
    pub(super) fn conclude(
        &mut self,
        claim: Claimed,
        judged: Judgement,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        self.observe_answer_latency(&claim.event, judged.arrived);
        if self.registry.get(claim.unit).is_none() {
            self.answer_unclaimed(claim.event);
            return;
        }
        if outcome.ignore_mark {
            if let Some(fd) = claim.event.fd() {
                match self.gate.ignore_exec(fd) {
                    Ok(()) => self.stats.kernel_allowed_files += 1,
                    Err(e) => log::debug!("{e}"),
                }
            }
        }
        if outcome.verdict != Verdict::Allow {
            self.stats.count_denial(outcome.verdict, outcome.reason);
        }
        // An allowed library open is as good a judgement for the mapping gate as an exec.
        if outcome.answer == Answer::Allow
            && matches!(
                claim.event,
                ExecEvent::Permission(_) | ExecEvent::LibraryOpen(_)
            )
        {
            self.make_mappable(claim.unit, &claim.stat, judged.digest, judged.generation);
        }
        let recorded = outcome.record
            && self
                .registry
                .get_mut(claim.unit)
                .is_some_and(|u| u.records.take(Instant::now()));
        if outcome.record && !recorded {
            self.stats.records_suppressed += 1;
            self.records.suppressed = true;
        }
        if !recorded {
            self.answer(claim.event, outcome.answer);
            if let Some(unit) = self.registry.get_mut(claim.unit) {
                bump(&mut unit.counters, outcome.verdict);
            }
            return;
        }
        self.conclude_recorded(claim, judged.digest, outcome, detail);
    }

    /// Performs a decision that is recorded. A denied task may exit (and be reaped) the
    /// moment it is answered: its own process (a few capped reads) is read while it is
    /// held, by the denial-context thread, which reads its ancestors too before answering
    /// (or here, when that thread is busy; the ancestors are then read by the record
    /// writer). An allowed one is described before its answer.
    fn conclude_recorded(
        &mut self,
        claim: Claimed,
        digest: Option<Digest>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let Claimed {
            unit: unit_h,
            event,
            tid,
            stat,
        } = claim;
        let file = event.fd().and_then(|fd| fd.try_clone_to_owned().ok());
        let denied = outcome.answer == Answer::Deny;
        let read_now = match (denied, self.records.denials.is_some()) {
            (true, false) => ProcessNow::Read(procfs::read_process(tid)),
            (true, true) => ProcessNow::Later,
            (false, _) => ProcessNow::ReadHere,
        };
        let later = matches!(read_now, ProcessNow::Later);
        let Some(unit) = self.registry.get_mut(unit_h) else {
            self.answer_unclaimed(event);
            return;
        };
        bump(&mut unit.counters, outcome.verdict);
        let file_fd = file.as_ref().map(|f| f.as_fd());
        let (mut record, process) =
            build_record(unit, &outcome, file_fd, tid, digest, &stat, read_now);
        record.detail = detail.or_else(|| default_detail(unit, outcome.reason, digest, stat.size));
        if outcome.verdict != Verdict::Allow {
            unit.last_deny = Some(crate::registry::LastDeny {
                time: record.time.clone(),
                path: record.path.clone(),
                verdict: outcome.verdict,
            });
        }
        self.stats.records += 1;
        let (event, mut record, file, process) = match (later, self.records.denials.as_ref()) {
            (true, Some(denials)) => {
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
                        (d.event, *d.record, d.file, d.process)
                    }
                }
            }
            _ => (event, record, file, process),
        };
        record.fit(crate::audit::MAX_RECORD_BYTES);
        self.answer(event, outcome.answer);
        self.records.audit.send(AuditJob::Exec {
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
    pub(super) fn make_mappable(
        &mut self,
        unit_h: UnitHandle,
        stat: &FileStat,
        digest: Option<Digest>,
        judged: Option<u64>,
    ) {
        // A disarmed unit's gate entries are gone: none is made for it again.
        if self.registry.is_leaving(unit_h) {
            return;
        }
        if self
            .mapping
            .make_mappable(&self.registry, unit_h, stat, digest, judged)
        {
            self.stats.mapping_budget_evictions += 1;
        }
    }

    /// Records what the mapping gate refused (or would have, in audit mode) since the last
    /// look, within each unit's record budget.
    pub(super) fn record_mapping_events(&mut self) {
        if !self.mapping.is_active() {
            return;
        }
        for (unit_h, e) in self.mapping.drain_events() {
            let Some(unit_h) = unit_h else {
                self.stats.mapping_unattributed += 1;
                continue;
            };
            let verdict = if e.denied {
                Verdict::Deny
            } else {
                Verdict::WouldDeny
            };
            self.stats.count_denial(verdict, mapping_reason(e.kind));
            let Some(unit) = self.registry.get_mut(unit_h) else {
                continue;
            };
            if !unit.records.take(Instant::now()) {
                self.stats.records_suppressed += 1;
                self.records.suppressed = true;
                continue;
            }
            let record = record::mapping_record(unit, &e);
            self.stats.records += 1;
            self.records.audit.send(AuditJob::Mapping(Box::new(record)));
        }
    }

    /// Writes a summary for each unit whose budget held records back, once it has room.
    pub(super) fn summarize_suppressed(&mut self, now: Instant) {
        if !self.records.suppressed {
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
        self.records.suppressed = left;
        for s in summaries {
            self.records.audit.send(AuditJob::Suppressed(s));
        }
    }
}
