//! The engine's side of the mapping gate (the BPF LSM programs, where the kernel runs
//! them): which filesystems each unit has the gate watch, which volumes it judges, which
//! PID namespace it scopes, the entries each unit made (its budget, and what its disarm
//! removes), and written files waiting for their writers to let go before they are hashed.
//!
//! Every method is a no-op where no gate runs. Failures are logged here: the gate is a
//! second line behind fanotify, and a unit is armed without it rather than refused.

use std::collections::HashMap;

use crate::Mode;
use crate::baseline::Digest;
use crate::kernel::mapping_gate::{
    FileKey, GateError, GateMode, MappingGate, MemoryRules, kernel_dev,
};
use crate::kernel::{FileStat, MarkKind};
use crate::registry::{PlannedMark, Registry, UnitHandle};

mod events;
mod explain;
mod keys;
mod volumes;
mod waits;

use keys::GateKeys;
use volumes::{GateVolumes, VolumeChange};
pub(super) use waits::MappingWait;

/// What the engine hands the gate about a unit at its arm.
pub(super) struct GateUnit<'a> {
    pub(super) id: &'a str,
    pub(super) mode: Mode,
    pub(super) marks: &'a [PlannedMark],
    /// The image's code objects: mappable from the start.
    pub(super) code_files: &'a [FileKey],
    /// The image's dynamic loaders: never a main binary.
    pub(super) loader_files: &'a [FileKey],
    pub(super) pid_namespace: Option<u32>,
    pub(super) memory: MemoryRules,
}

/// The gate, and what each unit has in it.
#[derive(Default)]
pub(super) struct MappingSide {
    gate: Option<MappingGate>,
    /// Filesystems each unit had the gate watch.
    devs: HashMap<UnitHandle, Vec<u64>>,
    /// Each unit's entries in the gate (its budget, and what its disarm removes).
    keys: HashMap<UnitHandle, GateKeys>,
    /// The volumes (filesystems marked by mount) the gate judges for each unit.
    volumes: GateVolumes,
    /// The PID namespace each unit had the gate scope, with its memory rules.
    pid_ns: HashMap<UnitHandle, (u32, MemoryRules)>,
    /// Files closed after a write whose writer the gate still counts: hashed for mapping
    /// once it has let go (its release advances the file's generation).
    waits: Vec<MappingWait>,
}

/// The gate's mode for a unit's mode.
pub(super) fn gate_mode_of(mode: Mode) -> GateMode {
    match mode {
        Mode::Enforce => GateMode::Enforce,
        Mode::Audit => GateMode::Audit,
    }
}

fn mark_dev(m: &PlannedMark) -> u64 {
    kernel_dev(m.superblock_dev())
}

impl MappingSide {
    /// Hands over the gate: from now on units are given entries in it.
    pub(super) fn set_gate(&mut self, gate: MappingGate) {
        self.gate = Some(gate);
    }

    /// A gate runs.
    pub(super) fn is_active(&self) -> bool {
        self.gate.is_some()
    }

    /// The gate watches some filesystem of this unit.
    pub(super) fn watches_unit(&self, unit: UnitHandle) -> bool {
        self.gate.is_some() && self.devs.contains_key(&unit)
    }

    /// The kernel's key of the filesystem of a unit's file: for an overlay the overlay's
    /// superblock, which its mount root reports (a file's own st_dev may be its layer's).
    fn dev_of(registry: &Registry, unit: UnitHandle, stat: &FileStat) -> u64 {
        let dev = registry
            .get(unit)
            .and_then(|u| u.marks.iter().find(|m| m.mnt_id == stat.mnt_id))
            .map_or(stat.dev, |m| m.superblock_dev());
        kernel_dev(dev)
    }

    /// The gate's key of a file of a unit, and its write generation now.
    pub(super) fn key(
        &self,
        registry: &Registry,
        unit: UnitHandle,
        stat: &FileStat,
    ) -> Option<(FileKey, u64)> {
        let gate = self.gate.as_ref()?;
        let key = FileKey {
            dev: Self::dev_of(registry, unit, stat),
            ino: stat.ino,
        };
        Some((key, gate.generation(&key)))
    }

    /// The file's write generation now (0 where no gate runs).
    pub(super) fn generation(&self, registry: &Registry, unit: UnitHandle, stat: &FileStat) -> u64 {
        self.key(registry, unit, stat).map_or(0, |(_, g)| g)
    }

    /// Writers the gate counts on a unit's file.
    pub(super) fn writers(&self, registry: &Registry, unit: UnitHandle, stat: &FileStat) -> u64 {
        self.key(registry, unit, stat)
            .zip(self.gate.as_ref())
            .map_or(0, |((key, _), gate)| gate.writers(&key))
    }

    /// True if the gate judges mappings and loader execs of this unit's file.
    pub(super) fn covers(&self, registry: &Registry, unit: UnitHandle, stat: &FileStat) -> bool {
        self.gate.is_some()
            && self
                .devs
                .get(&unit)
                .is_some_and(|devs| devs.contains(&Self::dev_of(registry, unit, stat)))
    }

    /// Makes a unit's file mappable (its content was judged allowed), as of write
    /// generation `judged` (`None`: now); a loader's is also entered as a loader. Returns
    /// true if the unit's budget dropped its oldest entry for it.
    pub(super) fn make_mappable(
        &mut self,
        registry: &Registry,
        unit: UnitHandle,
        stat: &FileStat,
        digest: Option<Digest>,
        judged: Option<u64>,
    ) -> bool {
        let Some(gate) = self.gate.as_mut() else {
            return false;
        };
        let key = FileKey {
            dev: Self::dev_of(registry, unit, stat),
            ino: stat.ino,
        };
        let judged = judged.unwrap_or_else(|| gate.generation(&key));
        if let Err(e) = gate.allow_at(key, judged) {
            log::warn!("mapping gate: {e}");
        }
        let evicted = self.keys.entry(unit).or_default().add(key);
        if let Some(oldest) = evicted {
            gate.forget_keys(&[oldest]);
        }
        let loader = match (registry.get(unit), digest) {
            (Some(u), Some(d)) => u.baseline.is_loader(&d),
            _ => false,
        };
        if loader {
            if let Err(e) = gate.add_loader(key) {
                log::warn!("mapping gate: {e}");
            }
        }
        evicted.is_some()
    }

    /// Gives the gate a newly armed unit: its image's code, its own filesystems watched,
    /// its PID namespace scoped, its volumes judged.
    pub(super) fn arm(&mut self, handle: UnitHandle, unit: &GateUnit<'_>) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        let mode = gate_mode_of(unit.mode);
        // Only the unit's own filesystems: a mount mark covers a filesystem shared with
        // the host, whose other users the gate must not judge.
        let devs: Vec<u64> = unit
            .marks
            .iter()
            .filter(|m| m.kind == MarkKind::Filesystem)
            .map(mark_dev)
            .collect();
        let mut failed = None;
        let image = || unit.code_files.iter().chain(unit.loader_files);
        self.keys.insert(handle, GateKeys::pinned(image().copied()));
        for f in image() {
            if let Err(e) = gate.allow(*f) {
                failed = Some(e);
            }
        }
        for f in unit.loader_files {
            if let Err(e) = gate.add_loader(*f) {
                failed = Some(e);
            }
        }
        for d in &devs {
            if let Err(e) = gate.watch(*d, mode) {
                failed = Some(e);
            }
        }
        if let Some(ns) = unit.pid_namespace {
            self.pid_ns.insert(handle, (ns, unit.memory));
            if let Err(e) = self.rescope(ns, mode) {
                failed = Some(e);
            }
        }
        let volumes = unit
            .marks
            .iter()
            .filter(|m| m.kind == MarkKind::Mount)
            .map(mark_dev);
        let changes = self.volumes.add(handle, unit.pid_namespace, volumes, mode);
        if let Err(e) = self.apply_volume_changes(&changes) {
            failed = Some(e);
        }
        if let Some(e) = failed {
            log::error!("unit {:?}: the mapping gate is incomplete: {e}", unit.id);
        }
        self.devs.insert(handle, devs);
    }

    /// Moves a unit's entries to `mode`.
    pub(super) fn set_mode(&mut self, handle: UnitHandle, id: &str, mode: Mode) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        let gate_mode = gate_mode_of(mode);
        for d in self.devs.get(&handle).into_iter().flatten() {
            if let Err(e) = gate.watch(*d, gate_mode) {
                log::error!("unit {id:?}: the mapping gate keeps its old mode: {e}");
            }
        }
        if let Some((ns, _)) = self.pid_ns.get(&handle).copied() {
            if let Err(e) = self.rescope(ns, gate_mode) {
                log::error!("unit {id:?}: the mapping gate keeps its old mode: {e}");
            }
        }
        let changes = self.volumes.set_mode(handle, gate_mode);
        if let Err(e) = self.apply_volume_changes(&changes) {
            log::error!("unit {id:?}: the mapping gate keeps its old mode on volumes: {e}");
        }
    }

    /// Gives the gate the marks a unit gained after its arm (mounts the watcher found): a
    /// filesystem of its own is watched, a volume judged, as at arm.
    pub(super) fn late_marks(&mut self, handle: UnitHandle, mode: Mode, placed: &[PlannedMark]) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        if placed.is_empty() {
            return;
        }
        let gate_mode = gate_mode_of(mode);
        let (own, volumes): (Vec<_>, Vec<_>) =
            placed.iter().partition(|m| m.kind == MarkKind::Filesystem);
        let own: Vec<u64> = own.into_iter().map(mark_dev).collect();
        for d in &own {
            if let Err(e) = gate.watch(*d, gate_mode) {
                log::error!("mapping gate: a late mount is not watched: {e}");
            }
        }
        self.devs.entry(handle).or_default().extend(own);
        let ns = self.pid_ns.get(&handle).map(|(n, _)| *n);
        let changes = self
            .volumes
            .add(handle, ns, volumes.into_iter().map(mark_dev), gate_mode);
        if let Err(e) = self.apply_volume_changes(&changes) {
            log::error!("mapping gate: a late volume is not judged: {e}");
        }
    }

    /// Removes a disarmed unit's entries: its own, not a scan of the shared maps (on the
    /// event loop: every exec waits for it); the kernel's per-file write counts on its
    /// filesystems are swept by a thread of their own. `registry` no longer has the unit.
    pub(super) fn disarm(&mut self, handle: UnitHandle, registry: &Registry) {
        let keys = self.keys.remove(&handle);
        if let (Some(gate), Some(devs)) = (self.gate.as_mut(), self.devs.remove(&handle)) {
            if let Some(keys) = keys {
                let own: Vec<_> = keys.all().copied().collect();
                gate.forget_keys(&own);
            }
            gate.forget_filesystems(&devs);
        }
        let changes = self.volumes.remove(handle);
        if let Err(e) = self.apply_volume_changes(&changes) {
            log::warn!("mapping gate: {e}");
        }
        let Some((ns, _)) = self.pid_ns.remove(&handle) else {
            return;
        };
        // A pod's containers may share a PID namespace: keep it while another unit has it.
        let other = self
            .pid_ns
            .iter()
            .find(|(_, (n, _))| *n == ns)
            .and_then(|(h, _)| registry.get(*h))
            .map(|u| u.mode);
        match other {
            Some(mode) => {
                if let Err(e) = self.rescope(ns, gate_mode_of(mode)) {
                    log::warn!("mapping gate: {e}");
                }
            }
            None => {
                if let Some(gate) = self.gate.as_mut() {
                    gate.unscope_pid_namespace(ns);
                }
            }
        }
    }

    /// After a restart's re-arms: drops the volume entries the predecessor left for
    /// containers that are gone.
    pub(super) fn restore_done(&mut self) {
        if let Some(gate) = self.gate.as_mut() {
            let (tracked, judged) = self.volumes.wanted();
            gate.retain_volumes(&tracked, &judged);
        }
    }

    /// Makes the gate's volume maps follow the units' volumes (see `volumes`). Every
    /// change is tried; the first failure is returned.
    fn apply_volume_changes(&mut self, changes: &[VolumeChange]) -> Result<(), GateError> {
        let Some(gate) = self.gate.as_mut() else {
            return Ok(());
        };
        let mut first = None;
        let mut untracked = Vec::new();
        for c in changes {
            let done = match *c {
                VolumeChange::Track(dev) => gate.track_volume(dev),
                VolumeChange::Judge(ns, dev, mode) => gate.judge_volume(ns, dev, mode),
                VolumeChange::Unjudge(ns, dev) => {
                    gate.unjudge_volume(ns, dev);
                    Ok(())
                }
                VolumeChange::Untrack(dev) => {
                    untracked.push(dev);
                    Ok(())
                }
            };
            if let Err(e) = done {
                first.get_or_insert(e);
            }
        }
        gate.untrack_volumes(&untracked);
        first.map_or(Ok(()), Err)
    }

    /// Scopes PID namespace `ns` in the gate with the memory rules every unit in it
    /// allows (containers of a pod may share one: a JIT in any of them relaxes them).
    fn rescope(&mut self, ns: u32, mode: GateMode) -> Result<(), GateError> {
        let memory = self
            .pid_ns
            .values()
            .filter(|(n, _)| *n == ns)
            .fold(MemoryRules::STRICT, |m, (_, r)| m.and(*r));
        match self.gate.as_mut() {
            Some(gate) => gate.scope_pid_namespace(ns, mode, memory),
            None => Ok(()),
        }
    }

    /// The gate's counters: checked, refused, would refuse, entries dropped.
    pub(super) fn counters(&self) -> Option<[u64; 4]> {
        self.gate.as_ref().map(|g| g.counters())
    }
}
