//! The container watcher: mounts that appear in a container after it started are armed
//! within milliseconds and recorded (`mount-armed`, or `mount-not-armed` with the reason),
//! and a container whose init exits is disarmed at once (its pidfd), with no hook process.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::Armer;
use super::paths::{UnitView, current_mount_plan};
use crate::audit::{AuditJob, AuditQueue, CoverageEvent, CoverageRecord, RECORD_VERSION, rfc3339};
use crate::engine::PidUnit;
use crate::escape::escape_bytes;
use crate::kernel::pidfd::{pidfd_open, wait_for_mounts_or_exits};

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

/// One container the watcher follows: its init's pid, mount table and pidfd.
struct Watched {
    pid: i32,
    /// `None` once the init exited (the namespace may outlive it, but is no longer
    /// reachable through it).
    mountinfo: Option<std::fs::File>,
    /// `None` where the kernel has no pidfd (before 5.3), or once the init exited: the
    /// poststop hook disarms.
    exit: Option<std::os::fd::OwnedFd>,
    /// Where the init shares its PID namespace, its other processes may outlive it: the
    /// container's cgroups (their `cgroup.procs`), and whether the init has exited. The
    /// unit is disarmed once one of them is empty.
    cgroups: Vec<std::path::PathBuf>,
    init_exited: bool,
}

impl Watched {
    /// The container is over: its init exited, and nothing of it can still run.
    fn is_over(&self) -> bool {
        self.init_exited
            && (self.cgroups.is_empty()
                || self
                    .cgroups
                    .iter()
                    .any(|c| crate::kernel::procfs::cgroup_is_empty(c)))
    }
}

impl Armer {
    /// Disarms unit `id` because its container's init (`pid`) exited, and forgets its
    /// record, as the poststop hook would.
    pub fn disarm_exited(&self, id: &str, pid: i32) {
        match self.engine.disarm_exited(id, pid) {
            Ok(_) => {
                self.forget(id);
                log::info!("unit {id:?}: its container's init (pid {pid}) exited: disarmed");
            }
            // Disarmed already (a poststop hook, the operator), or armed again meanwhile.
            Err(e) => log::debug!("unit {id:?}: init (pid {pid}) exited: {e}"),
        }
    }

    /// Disarms unit `id` if the init it was armed by is gone, before the same id is armed
    /// again (a restarted container may come back before the watcher saw its exit).
    pub(super) fn disarm_if_exited(&self, id: &str) {
        let Some(record) = self.load_record(id) else {
            return;
        };
        let Some(pid) = record.request.pid else {
            return;
        };
        let gone = match super::container_start_time(Some(pid)) {
            Ok(now) => record.start_time.is_some() && now != record.start_time,
            Err(_) => true,
        };
        if gone {
            self.disarm_exited(id, pid);
        }
    }

    /// The pidfd of unit `id`'s init `pid`, if that process is still the container's (its
    /// start time is the recorded one): `Err` when the container is gone already.
    fn init_pidfd(&self, id: &str, pid: i32) -> Result<Option<std::os::fd::OwnedFd>, ()> {
        let fd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(nix::Error::ESRCH) => return Err(()),
            Err(_) => return Ok(None),
        };
        // Opened by pid: the recorded start time says it is still the container's init.
        let recorded = self.load_record(id).and_then(|r| r.start_time);
        match (recorded, super::container_start_time(Some(pid))) {
            (Some(r), Ok(Some(now))) if r != now => Err(()),
            (_, Err(_)) => Err(()),
            _ => Ok(Some(fd)),
        }
    }
}

/// Watches every container armed by pid: arms mounts that appear after start (a
/// privileged container mounting a tmpfs, `nsenter` adding a mount) and disarms the
/// container when its init exits. `/proc/<pid>/mountinfo` reports any change in that
/// namespace as `POLLPRI`; between the mount and its mark an exec from it is unchecked for
/// a few milliseconds, and a mount that cannot be marked is recorded as
/// `mount-not-armed`. The init's pidfd turns readable when it exits.
pub fn watch_containers(
    armer: std::sync::Arc<Armer>,
    audit: AuditQueue,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut watched: HashMap<String, Watched> = HashMap::new();
    // The units are asked for again only when they changed, and only those armed by pid
    // (id, pid, marks): the event loop answers between two arms, and a full status of a
    // thousand units there delayed the next arm.
    let mut seen: Option<(u64, HashMap<String, PidUnit>)> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let generation = armer.engine.units_generation();
        if seen.as_ref().is_none_or(|(g, _)| *g != generation) {
            match armer.engine.pid_units() {
                Ok(units) => {
                    let by_id = units.into_iter().map(|u| (u.id.clone(), u)).collect();
                    seen = Some((generation, by_id));
                }
                Err(_) => {
                    std::thread::sleep(WATCH_TICK);
                    continue;
                }
            }
        }
        let Some((_, units)) = seen.as_ref() else {
            continue;
        };
        follow_new_units(&armer, &audit, units, &mut watched);
        let (changed, exited) = wait_round(&watched);
        for id in exited {
            if let Some(w) = watched.get_mut(&id) {
                w.init_exited = true;
                w.exit = None;
                w.mountinfo = None;
            }
        }
        let over: Vec<String> = watched
            .iter()
            .filter(|(_, w)| w.is_over())
            .map(|(id, _)| id.clone())
            .collect();
        for id in over {
            if let Some(w) = watched.remove(&id) {
                armer.disarm_exited(&id, w.pid);
            }
        }
        for id in changed {
            let Some(w) = watched.get_mut(&id) else {
                continue;
            };
            let Some(mountinfo) = w.mountinfo.as_mut() else {
                continue;
            };
            drain(mountinfo);
            let pid = w.pid;
            let marks = units
                .get(&id)
                .map(|u| u.marks.as_slice())
                .unwrap_or_default();
            for rec in armer.refresh_mounts(&id, pid, marks) {
                audit.send(AuditJob::Coverage(rec));
            }
        }
    }
}

/// Reads a mount table to its end, so that its next change is reported again.
fn drain(f: &mut std::fs::File) {
    use std::io::{Read, Seek};
    let mut sink = Vec::new();
    let _ = f.rewind();
    let _ = f.read_to_end(&mut sink);
}

/// Follows the units of `status` armed by pid and not followed yet (a container whose
/// init is gone already is disarmed), and stops following units no longer armed.
fn follow_new_units(
    armer: &Armer,
    audit: &AuditQueue,
    units: &HashMap<String, PidUnit>,
    watched: &mut HashMap<String, Watched>,
) {
    watched.retain(|id, w| units.get(id).is_some_and(|u| u.pid == w.pid));
    for u in units.values() {
        let pid = u.pid;
        if watched.contains_key(&u.id) {
            continue;
        }
        // Only the init of a PID namespace of its own takes the container with it when it
        // exits; any other init (a shared or the host's PID namespace) may leave processes
        // running until the runtime kills them: its container ends when its cgroup empties
        // (or at its poststop hook, which the wrapper adds for such a spec).
        let record = armer.load_record(&u.id);
        let own_namespace = record.as_ref().and_then(|r| r.pid_namespace_init) != Some(false);
        let cgroups = record.map(|r| r.cgroups).unwrap_or_default();
        if !own_namespace && cgroups.is_empty() {
            log::info!(
                "unit {:?}: its init shares a PID namespace and its cgroup is not visible \
                 here: disarmed at the init's exit or by the poststop hook",
                u.id
            );
        }
        let exit = match armer.init_pidfd(&u.id, pid) {
            Ok(fd) => fd,
            Err(()) => {
                let gone = Watched {
                    pid,
                    mountinfo: None,
                    exit: None,
                    cgroups: if own_namespace { Vec::new() } else { cgroups },
                    init_exited: true,
                };
                if gone.is_over() {
                    armer.disarm_exited(&u.id, pid);
                } else {
                    watched.insert(u.id.clone(), gone);
                }
                continue;
            }
        };
        if let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/mountinfo")) {
            drain(&mut f);
            let w = Watched {
                pid,
                mountinfo: Some(f),
                exit,
                cgroups: if own_namespace { Vec::new() } else { cgroups },
                init_exited: false,
            };
            watched.insert(u.id.clone(), w);
            // Mounts made between arming and now.
            for rec in armer.refresh_mounts(&u.id, pid, &u.marks) {
                audit.send(AuditJob::Coverage(rec));
            }
        }
    }
}

/// Waits one tick for mount changes and exits: the ids whose mount table changed, and
/// those whose init exited.
fn wait_round(watched: &HashMap<String, Watched>) -> (Vec<String>, Vec<String>) {
    let with_table: Vec<(&String, &std::fs::File)> = watched
        .iter()
        .filter_map(|(id, w)| Some((id, w.mountinfo.as_ref()?)))
        .collect();
    let files: Vec<&std::fs::File> = with_table.iter().map(|(_, f)| *f).collect();
    let with_pidfd: Vec<(&String, &std::os::fd::OwnedFd)> = watched
        .iter()
        .filter_map(|(id, w)| Some((id, w.exit.as_ref()?)))
        .collect();
    let pidfds: Vec<&std::os::fd::OwnedFd> = with_pidfd.iter().map(|(_, fd)| *fd).collect();
    let (changed, exited) = wait_for_mounts_or_exits(&files, &pidfds, WATCH_TICK);
    (
        changed
            .into_iter()
            .filter_map(|i| with_table.get(i).map(|(id, _)| (*id).clone()))
            .collect(),
        exited
            .into_iter()
            .filter_map(|i| with_pidfd.get(i).map(|(id, _)| (*id).clone()))
            .collect(),
    )
}
