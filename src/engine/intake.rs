//! What comes in: a kernel event becomes an exec (or judged open) to attribute and judge,
//! an invalidation (a close after a write), or nothing; an overlay layer's file is found by
//! its mount; a file just written may be hashed for the mapping gate.

use super::*;

impl<G: Gate> Engine<G> {
    pub(super) fn handle_event(&mut self, ev: RawEvent) {
        self.stats.events += 1;
        if ev.is_overflow() {
            // Invalidations may have been lost: nothing cached can be trusted.
            self.stats.overflows += 1;
            log::error!("fanotify queue overflow: flushing every verdict cache");
            for (_, unit) in self.registry.iter_mut() {
                unit.cache.clear();
            }
            self.pool.taint_all();
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
    pub(super) fn attribute_overlay_layer(
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

    pub(super) fn invalidate(&mut self, stat: &FileStat, fd: BorrowedFd<'_>, tid: i32) {
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
        if self.pool.taint((attr.unit, key)) {
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
        if !self.mapping.watches_unit(unit_h) {
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
        if self.mapping.writers(&self.registry, unit_h, stat) > 0 {
            if let Ok(file) = fd.try_clone_to_owned() {
                self.mapping.wait_for_writers(unit_h, via, *stat, file);
            }
            return;
        }
        self.start_background_hash(unit_h, via, *stat, fd);
    }

    /// Hashes the written files whose writers have let go.
    pub(super) fn retry_mapping_waits(&mut self, now: Instant) {
        for w in self.mapping.released(&self.registry, now) {
            self.start_background_hash(w.unit, w.via, w.stat, w.file.as_fd());
        }
    }
}
