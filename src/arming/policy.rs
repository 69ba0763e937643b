//! The configuration in force: the default mode, the mode and allow entries a unit gets,
//! the memory rules of the mapping gate, and a reload applied to the armed units.

use super::*;

impl Armer {
    /// The mode of containers no rule, annotation or request chooses one for.
    pub fn default_mode(&self) -> Mode {
        *self
            .default_mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the default mode for containers armed from now on; returns the previous one.
    pub fn set_default_mode(&self, mode: Mode) -> Mode {
        std::mem::replace(
            &mut *self
                .default_mode
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            mode,
        )
    }

    /// The mode a container of `identity` would be armed in now.
    pub fn mode_for(&self, identity: &Identity) -> Mode {
        let req = UnitRequest::of_identity(identity);
        self.policy_for(&req).0
    }

    /// The unit's mode and allow entries under the configuration in force.
    pub(super) fn policy_for(&self, req: &UnitRequest) -> (Mode, crate::config::AllowList) {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let admitted = self.annotations.admit(req.annotated_mode);
        if let (Some(asked), None) = (req.annotated_mode, admitted) {
            log::info!(
                "{:?}: its annotation asks for {asked} mode; set aside (annotations = {}): the operator's rules decide",
                req.id.chars().take(128).collect::<String>(),
                self.annotations
            );
        }
        (
            policy.mode_for(
                req.mode.or(admitted),
                req.image_name.as_deref(),
                req.namespace.as_deref(),
                self.default_mode(),
            ),
            policy.allowed_for(&crate::config::Identity {
                image: req.image_name.as_deref(),
                namespace: req.namespace.as_deref(),
                container: req.container_name.as_deref(),
            }),
        )
    }

    /// Replaces the policy and pushes each armed unit's allow entries to the engine.
    /// Returns how many units were updated.
    pub fn apply_policy(&self, policy: crate::config::Config) -> usize {
        let Ok(status) = self.engine.status() else {
            return 0;
        };
        let mut updated = 0;
        for u in &status.units {
            let list = policy.allowed_for(&crate::config::Identity {
                image: u.image_name.as_deref(),
                namespace: u.namespace.as_deref(),
                container: u.container_name.as_deref(),
            });
            if self.engine.set_allow(&u.id, list).is_ok() {
                updated += 1;
            }
        }
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
        updated
    }

    /// Which memory-only code the gate refuses in a container: all of it, unless the image
    /// holds a JIT runtime (no memory rule but `/proc/<pid>/mem`) or a runtime that makes
    /// closures (anonymous and memfd executable memory allowed), or a `[[memory]]` rule
    /// says otherwise.
    pub(super) fn memory_rules(
        &self,
        id: &str,
        baseline: &Baseline,
        image: Option<&str>,
    ) -> crate::kernel::mapping_gate::MemoryRules {
        let choice = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .memory_for(image);
        let jit = baseline.jit_runtime();
        let closures = baseline.closure_runtime();
        let (wx, anon) = if choice.strict {
            (true, true)
        } else if choice.jit || jit.is_some() {
            (false, false)
        } else {
            (true, closures.is_none())
        };
        if self.mapping_gate && !choice.strict {
            if let Some(path) = jit {
                log::info!(
                    "unit {id:?}: the image holds a JIT runtime ({}): code it makes in memory (anonymous or memfd executable memory, W^X) is not judged",
                    escape_bytes(path)
                );
            } else if let Some(path) = closures {
                log::info!(
                    "unit {id:?}: the image holds a runtime that makes closures ({}): anonymous and memfd executable memory is not judged (W^X on file mappings is; a [[memory]] rule with strict = true judges all)",
                    escape_bytes(path)
                );
            }
        }
        crate::kernel::mapping_gate::MemoryRules {
            wx,
            anon,
            proc_mem: !choice.debugger,
            foreign: !choice.own_filesystems,
        }
    }
}
