//! The event loop's side of the commands from the socket side (arm, disarm, mode, allow,
//! marks, status), and a clean stop.

use super::*;

/// The longest a clean stop waits for hashes in progress.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl<G: Gate> Engine<G> {
    fn units_changed(&self) {
        self.liveness
            .shared
            .units_changed
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Arm(spec, reply) => {
                let r = self.arm(*spec);
                self.units_changed();
                let _ = reply.send(r);
            }
            Command::Disarm(id, pid, reply) => {
                let r = self.disarm(&id, pid);
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
            Command::PidUnits(reply) => {
                let _ = reply.send(self.pid_units());
            }
            Command::Explain(q, reply) => {
                let candidate = q.candidate.map(Allowed::from);
                let _ = reply.send(self.explain(&q.id, &q.digests, &q.path, candidate.as_ref()));
            }
            Command::RestoreDone => {
                self.restore.active = false;
                self.mapping.restore_done();
                for (event, tid, stat) in std::mem::take(&mut self.restore.parked) {
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
        self.mapping.arm(
            handle,
            &GateUnit {
                id: &spec.id,
                mode: spec.mode,
                marks: &marks,
                code_files: &spec.code_files,
                loader_files: &spec.loader_files,
                pid_namespace: spec.pid_namespace,
                memory: spec.memory,
            },
        );
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
        self.mapping.set_mode(handle, id, mode);
        log::warn!("unit {id:?}: {was} mode -> {mode} mode");
        Ok(was)
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
        self.mapping.late_marks(handle, mode, &out.placed);
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

    /// Disarms unit `id` (only the one armed by `armed_by`, when given): its marks and
    /// gate entries go at once; execs of its still waiting for a hash are answered, and
    /// recorded, by its rules before it is forgotten (a container's init may exit while
    /// the payload it ran is being hashed).
    pub(super) fn disarm(
        &mut self,
        id: &str,
        armed_by: Option<i32>,
    ) -> Result<UnitStatus, EngineError> {
        let unknown = || EngineError::UnknownId(id.to_string());
        let handle = self.registry.find_id(id).ok_or_else(unknown)?;
        let unit = self.registry.get(handle).ok_or_else(unknown)?;
        if armed_by.is_some_and(|p| unit.pid != Some(p)) {
            return Err(unknown());
        }
        let (pid, mode, marks) = (unit.pid, unit.mode, unit.marks.clone());
        self.registry.retire(handle);
        self.mapping.disarm(handle, &self.registry);
        for m in marks {
            let m = &self.reachable_mark(pid, m);
            // Only remove a mark if the path still leads to the mount we marked: a path
            // whose mount is gone may now lead to another filesystem.
            if self.gate.mark_is_live(&m.path, m.mnt_id) {
                if let Err(e) = self.gate.mark(&self.mark_of(m, mode), false) {
                    log::warn!("{e}");
                }
            }
        }
        let status = self.registry.get(handle).map(Unit::status);
        if self.pool.has_waiters_for(handle) {
            log::info!("disarmed unit {id:?} (kept until the execs it is hashing are answered)");
        } else {
            self.forget_unit(handle);
            log::info!("disarmed unit {id:?}");
        }
        status.ok_or_else(unknown)
    }

    /// Drops a unit for good, its counters kept in the node's totals.
    fn forget_unit(&mut self, handle: UnitHandle) {
        if let Some(u) = self.registry.remove(handle) {
            self.stats.retired.add(&u);
        }
    }

    /// Forgets the disarmed units whose last waiting execs have been answered.
    pub(super) fn forget_answered_units(&mut self) {
        if self.registry.leaving().is_empty() {
            return;
        }
        let done: Vec<UnitHandle> = self
            .registry
            .leaving()
            .iter()
            .copied()
            .filter(|h| !self.pool.has_waiters_for(*h))
            .collect();
        for h in done {
            self.forget_unit(h);
        }
    }

    pub(super) fn pid_units(&self) -> Vec<super::handle::PidUnit> {
        self.registry
            .iter()
            .filter(|(h, _)| !self.registry.is_leaving(**h))
            .filter_map(|(_, u)| {
                Some(super::handle::PidUnit {
                    id: u.id.clone(),
                    pid: u.pid?,
                    marks: u.marks.clone(),
                })
            })
            .collect()
    }

    pub(super) fn status(&self) -> EngineStatus {
        let mut units: Vec<UnitStatus> = self
            .registry
            .iter()
            .filter(|(h, _)| !self.registry.is_leaving(**h))
            .map(|(h, u)| {
                let mut st = u.status();
                st.mapping_gate = self.mapping.coverage(*h, u);
                st.libraries = self
                    .mapping
                    .library_coverage(*h, u, self.config.library_control);
                st
            })
            .collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        let mut stats = self.stats.clone();
        stats.unanswered_drops = unanswered_drops();
        if let Some([checked, refused, would, dropped]) = self.mapping.counters() {
            stats.mapping_checked = checked;
            stats.mapping_refused = refused;
            stats.mapping_would_refuse = would;
            stats.mapping_entries_dropped = dropped;
        }
        EngineStatus {
            units,
            stats,
            in_flight: self.pool.len(),
        }
    }

    pub(super) fn drain_for_shutdown(&mut self) {
        // Give running hashes a short while to finish, then answer the rest by policy.
        let until = Instant::now() + self.config.hash_timeout.min(SHUTDOWN_GRACE);
        while self.pool.has_waiters() && Instant::now() < until {
            if let Some(done) = self.pool.recv_timeout(Duration::from_millis(50)) {
                self.handle_result(done);
            }
        }
        self.expire(Instant::now() + Duration::from_secs(3600));
        // One last look at each waiting loader exec; what is still not seen is answered by
        // policy (deny in enforce mode) as its pending event drops.
        for w in self.loader.take_all() {
            self.look_at_loader(w, 1);
        }
        for mut w in self.loader.take_all() {
            w.facts.loader_call = None;
            let outcome = judge_unobserved(&w.facts);
            let detail = format!("daemon stopping: thread {} not seen blocked", w.claim.tid);
            self.conclude_wait(w, outcome, detail);
        }
        if let Some(denials) = self.records.denials.take() {
            denials.finish();
        }
        self.pool.stop();
    }
}
