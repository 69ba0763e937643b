//! What the gate refused, attributed to the units whose rules refused it.

use super::MappingSide;
use crate::kernel::mapping_gate::GateEvent;
use crate::registry::UnitHandle;

impl MappingSide {
    /// What the gate refused (or would have, in audit mode) since the last look, each
    /// with the unit it is attributed to: a refusal by scope to the unit of the PID
    /// namespace (or volume) that refused it, even when the process is gone; one by file
    /// to the unit watching its filesystem; else by the process's namespace.
    pub(in crate::engine) fn drain_events(&mut self) -> Vec<(Option<UnitHandle>, GateEvent)> {
        let Some(gate) = self.gate.as_mut() else {
            return Vec::new();
        };
        let events = gate.drain_events();
        events
            .into_iter()
            .map(|e| {
                let in_ns = |ns: u32| {
                    self.pid_ns
                        .iter()
                        .find(|(_, (n, _))| *n == ns)
                        .map(|(h, _)| *h)
                };
                let by_volume = || self.volumes.unit_judging(e.scope, e.file.dev);
                let by_scope = (e.scope != 0)
                    .then(|| by_volume().or_else(|| in_ns(e.scope)))
                    .flatten();
                let by_dev = || {
                    self.devs
                        .iter()
                        .find(|(_, devs)| devs.contains(&e.file.dev))
                        .map(|(h, _)| *h)
                };
                let by_proc = || crate::kernel::procfs::pid_namespace(e.pid as i32).and_then(in_ns);
                (by_scope.or_else(by_dev).or_else(by_proc), e)
            })
            .collect()
    }
}
