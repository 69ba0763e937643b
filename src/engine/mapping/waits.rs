//! Files closed after a write whose writer the gate still counts: hashed for mapping once
//! it has let go (its release advances the file's generation), or dropped after a while.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::MappingSide;
use crate::kernel::{FileStat, MarkKind};
use crate::registry::{Registry, UnitHandle};

/// A written file waiting for its writers to let go before it is hashed for mapping.
pub(in crate::engine) struct MappingWait {
    pub(in crate::engine) unit: UnitHandle,
    pub(in crate::engine) via: MarkKind,
    pub(in crate::engine) stat: FileStat,
    pub(in crate::engine) file: OwnedFd,
    pub(super) since: Instant,
}

/// How long a written file waits for its writers before it is left unmappable (a later
/// exec or close judges it again).
const MAPPING_WAIT: Duration = Duration::from_millis(500);

impl MappingSide {
    /// Keeps a written file until its writers let go.
    pub(in crate::engine) fn wait_for_writers(
        &mut self,
        unit: UnitHandle,
        via: MarkKind,
        stat: FileStat,
        file: OwnedFd,
    ) {
        self.waits.push(MappingWait {
            unit,
            via,
            stat,
            file,
            since: Instant::now(),
        });
    }

    /// Some written file waits for its writers (the loop looks again within milliseconds).
    pub(in crate::engine) fn has_waits(&self) -> bool {
        !self.waits.is_empty()
    }

    /// The waiting files whose writers have let go; drops those that waited too long or
    /// whose unit is gone.
    pub(in crate::engine) fn released(
        &mut self,
        registry: &Registry,
        now: Instant,
    ) -> Vec<MappingWait> {
        if self.waits.is_empty() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        for w in std::mem::take(&mut self.waits) {
            if registry.get(w.unit).is_none() {
                continue;
            }
            if self.writers(registry, w.unit, &w.stat) == 0 {
                ready.push(w);
            } else if now.saturating_duration_since(w.since) < MAPPING_WAIT {
                self.waits.push(w);
            }
        }
        ready
    }
}
