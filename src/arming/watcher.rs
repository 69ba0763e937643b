//! The mount watcher: mounts that appear in a container after it started are armed
//! within milliseconds and recorded (`mount-armed`, or `mount-not-armed` with the reason).

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::Armer;
use super::paths::{UnitView, current_mount_plan};
use crate::audit::{AuditJob, AuditQueue, CoverageEvent, CoverageRecord, RECORD_VERSION, rfc3339};
use crate::escape::escape_bytes;
use crate::kernel::mountinfo::wait_for_mount_changes;

impl Armer {
    /// Marks every mount of container `id` (armed by `pid`) that is not covered yet, and
    /// returns a coverage record for each mount it found new.
    pub fn refresh_mounts(
        &self,
        id: &str,
        pid: i32,
        covered: &[crate::registry::PlannedMark],
    ) -> Vec<CoverageRecord> {
        let Some(rec) = self.load_record(id) else {
            return Vec::new();
        };
        let Some(plan) =
            current_mount_plan(pid, rec.rootfs_dev, rec.request.host_rootfs.as_deref())
        else {
            return Vec::new();
        };
        let is_covered = |m: &crate::registry::PlannedMark| {
            covered.iter().any(|c| match (c.kind, m.kind) {
                (crate::kernel::MarkKind::Filesystem, _) => c.dev == m.dev,
                (crate::kernel::MarkKind::Mount, crate::kernel::MarkKind::Mount) => {
                    c.mnt_id == m.mnt_id
                }
                _ => false,
            })
        };
        let new: Vec<_> = plan.into_iter().filter(|m| !is_covered(m)).collect();
        if new.is_empty() {
            return Vec::new();
        }
        let view = UnitView::of(Some(pid));
        let record = |m: &crate::registry::PlannedMark, event, mark, error| CoverageRecord {
            v: RECORD_VERSION,
            kind: "coverage".into(),
            time: rfc3339(std::time::SystemTime::now()),
            unit: id.to_string(),
            event,
            path: escape_bytes(view.shown(&m.path).as_os_str().as_bytes()),
            fstype: m.fstype.clone(),
            mark,
            error,
        };
        match self.engine.add_marks(id, new.clone()) {
            Ok(added) => added
                .placed
                .iter()
                .map(|m| record(m, CoverageEvent::MountArmed, Some(m.kind), None))
                .chain(added.failed.iter().map(|(m, why)| {
                    record(m, CoverageEvent::MountNotArmed, None, Some(why.clone()))
                }))
                .collect(),
            Err(e) => new
                .iter()
                .map(|m| record(m, CoverageEvent::MountNotArmed, None, Some(e.to_string())))
                .collect(),
        }
    }
}

/// How often the mount watcher looks for newly armed or disarmed containers.
const WATCH_TICK: Duration = Duration::from_millis(250);

/// Watches the mount table of every container armed by pid and arms mounts that appear
/// after start (a privileged container mounting a tmpfs, `nsenter` adding a mount).
/// `/proc/<pid>/mountinfo` reports any change in that namespace as `POLLPRI`; between the
/// mount and its mark an exec from it is unchecked for a few milliseconds, and a mount that
/// cannot be marked is recorded as `mount-not-armed`.
pub fn watch_mounts(
    armer: std::sync::Arc<Armer>,
    audit: AuditQueue,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::collections::HashMap;
    use std::io::{Read, Seek};
    let mut watched: HashMap<String, (i32, std::fs::File)> = HashMap::new();
    let drain = |f: &mut std::fs::File| {
        let mut sink = Vec::new();
        let _ = f.rewind();
        let _ = f.read_to_end(&mut sink);
    };
    // The status is asked for again only when the units changed: with a thousand units
    // armed it is real work on the event loop, four times a second otherwise.
    let mut seen: Option<(u64, crate::engine::EngineStatus)> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let generation = armer.engine.units_generation();
        if seen.as_ref().is_none_or(|(g, _)| *g != generation) {
            match armer.engine.status() {
                Ok(s) => seen = Some((generation, s)),
                Err(_) => {
                    std::thread::sleep(WATCH_TICK);
                    continue;
                }
            }
        }
        let Some((_, status)) = seen.as_ref() else {
            continue;
        };
        watched.retain(|id, (pid, _)| {
            status
                .units
                .iter()
                .any(|u| u.id == *id && u.pid == Some(*pid))
        });
        for u in &status.units {
            let Some(pid) = u.pid else { continue };
            if watched.contains_key(&u.id) {
                continue;
            }
            if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/mountinfo")) {
                drain(&mut f);
                watched.insert(u.id.clone(), (pid, f));
                // Mounts made between arming and now.
                for rec in armer.refresh_mounts(&u.id, pid, &u.marks) {
                    audit.send(AuditJob::Coverage(rec));
                }
            }
        }
        let ids: Vec<String> = watched.keys().cloned().collect();
        let changed: Vec<String> = {
            let files: Vec<&std::fs::File> = ids
                .iter()
                .filter_map(|id| watched.get(id))
                .map(|(_, f)| f)
                .collect();
            wait_for_mount_changes(&files, WATCH_TICK)
                .into_iter()
                .filter_map(|i| ids.get(i).cloned())
                .collect()
        };
        for id in changed {
            let Some((pid, f)) = watched.get_mut(&id) else {
                continue;
            };
            drain(f);
            let pid = *pid;
            let marks = status
                .units
                .iter()
                .find(|u| u.id == id)
                .map(|u| u.marks.clone())
                .unwrap_or_default();
            for rec in armer.refresh_mounts(&id, pid, &marks) {
                audit.send(AuditJob::Coverage(rec));
            }
        }
    }
}
