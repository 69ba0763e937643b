//! Volumes the mapping gate judges for a unit: the filesystems a unit marks by mount
//! (shared with the host, so never watched whole). The gate tracks containers' writes on
//! such a device while any unit has it, and judges mappings of what a container wrote there
//! for the processes of each unit's PID namespace; containers of a pod may share a
//! namespace and a volume, and then the strictest mode of those units holds. A unit in the
//! node's PID namespace has no scope, so nothing is tracked for it.

use std::collections::{BTreeSet, HashMap};

use crate::kernel::mapping_gate::GateMode;
use crate::registry::UnitHandle;

/// One unit's volumes in the gate.
#[derive(Debug, Clone)]
struct UnitVolumes {
    /// Its PID namespace (none: the node's, which the gate never scopes).
    pid_ns: Option<u32>,
    devs: BTreeSet<u64>,
    mode: GateMode,
}

/// What the gate's `tracked` and `volumes` maps should hold, from the units' volumes.
#[derive(Debug, Default)]
pub struct GateVolumes {
    units: HashMap<UnitHandle, UnitVolumes>,
}

/// A change to make in the gate, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeChange {
    /// Start tracking writes on a device.
    Track(u64),
    /// Judge the device for a PID namespace in this mode.
    Judge(u32, u64, GateMode),
    /// Stop judging the device for a PID namespace.
    Unjudge(u32, u64),
    /// Stop tracking writes on a device (no unit has it any more).
    Untrack(u64),
}

impl GateVolumes {
    /// Notes `unit`'s volumes (added to any it had); returns the changes for the gate.
    pub fn add(
        &mut self,
        unit: UnitHandle,
        pid_ns: Option<u32>,
        devs: impl IntoIterator<Item = u64>,
        mode: GateMode,
    ) -> Vec<VolumeChange> {
        let before = self.snapshot();
        let entry = self.units.entry(unit).or_insert(UnitVolumes {
            pid_ns,
            devs: BTreeSet::new(),
            mode,
        });
        entry.devs.extend(devs);
        entry.mode = mode;
        self.changes_since(&before)
    }

    /// Moves `unit` to `mode`; returns the changes for the gate.
    pub fn set_mode(&mut self, unit: UnitHandle, mode: GateMode) -> Vec<VolumeChange> {
        let before = self.snapshot();
        if let Some(u) = self.units.get_mut(&unit) {
            u.mode = mode;
        }
        self.changes_since(&before)
    }

    /// Forgets `unit`; returns the changes for the gate.
    pub fn remove(&mut self, unit: UnitHandle) -> Vec<VolumeChange> {
        let before = self.snapshot();
        self.units.remove(&unit);
        self.changes_since(&before)
    }

    /// True if the gate judges mappings on `dev` for `unit`'s processes.
    pub fn judges(&self, unit: UnitHandle, dev: u64) -> bool {
        self.units
            .get(&unit)
            .is_some_and(|u| u.pid_ns.is_some() && u.devs.contains(&dev))
    }

    /// The unit (among those with the PID namespace `ns`) that judges `dev`, if any.
    pub fn unit_judging(&self, ns: u32, dev: u64) -> Option<UnitHandle> {
        self.units
            .iter()
            .find(|(_, u)| u.pid_ns == Some(ns) && u.devs.contains(&dev))
            .map(|(h, _)| *h)
    }

    /// The devices to track and the (namespace, device) pairs to judge: what a gate adopted
    /// from a predecessor keeps once every unit is armed again.
    pub fn wanted(&self) -> (BTreeSet<u64>, std::collections::HashSet<(u32, u64)>) {
        let (tracked, judged) = self.snapshot();
        (tracked, judged.into_keys().collect())
    }

    /// Tracked devices and the (namespace, device) entries with their modes: enforce wins
    /// over audit where units share both.
    fn snapshot(&self) -> (BTreeSet<u64>, HashMap<(u32, u64), GateMode>) {
        let mut tracked = BTreeSet::new();
        let mut judged: HashMap<(u32, u64), GateMode> = HashMap::new();
        for u in self.units.values() {
            // The node's namespace is never scoped: nothing would judge what it tracked.
            let Some(ns) = u.pid_ns else { continue };
            tracked.extend(u.devs.iter().copied());
            for d in &u.devs {
                let mode = judged.entry((ns, *d)).or_insert(u.mode);
                if u.mode == GateMode::Enforce {
                    *mode = GateMode::Enforce;
                }
            }
        }
        (tracked, judged)
    }

    fn changes_since(
        &self,
        (tracked_before, judged_before): &(BTreeSet<u64>, HashMap<(u32, u64), GateMode>),
    ) -> Vec<VolumeChange> {
        let (tracked, judged) = self.snapshot();
        let mut out: Vec<VolumeChange> = tracked
            .difference(tracked_before)
            .map(|d| VolumeChange::Track(*d))
            .collect();
        let mut set: Vec<_> = judged
            .iter()
            .filter(|(k, m)| judged_before.get(k) != Some(m))
            .map(|(&(ns, d), &m)| VolumeChange::Judge(ns, d, m))
            .collect();
        set.sort_by_key(|c| format!("{c:?}"));
        out.extend(set);
        let mut unset: Vec<_> = judged_before
            .keys()
            .filter(|k| !judged.contains_key(k))
            .map(|&(ns, d)| VolumeChange::Unjudge(ns, d))
            .collect();
        unset.sort_by_key(|c| format!("{c:?}"));
        out.extend(unset);
        out.extend(
            tracked_before
                .difference(&tracked)
                .map(|d| VolumeChange::Untrack(*d)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handles(n: usize) -> Vec<UnitHandle> {
        (1..=n as UnitHandle).collect()
    }

    #[test]
    fn a_volume_is_tracked_while_any_unit_has_it_and_judged_per_namespace() {
        let h = handles(2);
        let mut v = GateVolumes::default();
        assert_eq!(
            v.add(h[0], Some(7), [100], GateMode::Enforce),
            vec![
                VolumeChange::Track(100),
                VolumeChange::Judge(7, 100, GateMode::Enforce)
            ]
        );
        // A second container with the same host directory, in its own namespace.
        assert_eq!(
            v.add(h[1], Some(8), [100], GateMode::Audit),
            vec![VolumeChange::Judge(8, 100, GateMode::Audit)]
        );
        assert!(v.judges(h[0], 100) && v.judges(h[1], 100) && !v.judges(h[0], 101));
        assert_eq!(v.remove(h[0]), vec![VolumeChange::Unjudge(7, 100)]);
        assert_eq!(
            v.remove(h[1]),
            vec![VolumeChange::Unjudge(8, 100), VolumeChange::Untrack(100)]
        );
    }

    #[test]
    fn units_sharing_a_namespace_and_a_volume_keep_the_strictest_mode() {
        let h = handles(2);
        let mut v = GateVolumes::default();
        v.add(h[0], Some(7), [100], GateMode::Audit);
        assert_eq!(
            v.add(h[1], Some(7), [100], GateMode::Enforce),
            vec![VolumeChange::Judge(7, 100, GateMode::Enforce)]
        );
        // The enforcing unit goes to audit: both audit now.
        assert_eq!(
            v.set_mode(h[1], GateMode::Audit),
            vec![VolumeChange::Judge(7, 100, GateMode::Audit)]
        );
        assert_eq!(v.set_mode(h[1], GateMode::Enforce).len(), 1);
        // The enforcing unit leaves: the other's audit mode holds.
        assert_eq!(
            v.remove(h[1]),
            vec![VolumeChange::Judge(7, 100, GateMode::Audit)]
        );
    }

    #[test]
    fn a_unit_in_the_nodes_namespace_has_nothing_judged_or_tracked() {
        let h = handles(1);
        let mut v = GateVolumes::default();
        assert_eq!(v.add(h[0], None, [100], GateMode::Enforce), vec![]);
        assert!(!v.judges(h[0], 100));
        assert_eq!(v.remove(h[0]), vec![]);
    }
}
