//! `vm.memfd_noexec` in a container's PID namespace: memfd execs refused where the kernel
//! has the sysctl, and said so where it has not.

use super::*;

/// The sysctl that refuses executable memfds (per PID namespace, 6.3 and later).
pub const MEMFD_NOEXEC_SYSCTL: &str = "/proc/sys/vm/memfd_noexec";

impl Armer {
    /// Sets `vm.memfd_noexec=2` in the PID namespace of `pid`; true if it was set. A kernel
    /// without the sysctl is a degradation (said once, in the log, `status` and metrics),
    /// never a refused container.
    pub(super) fn block_fileless_exec(
        &self,
        id: &str,
        pid: i32,
        origin: ArmOrigin,
    ) -> Result<bool, ArmError> {
        use crate::kernel::KernelError;
        use crate::kernel::procfs::pid_namespace;
        // A container that shares the host's PID namespace (hostPID, --pid=host): the sysctl
        // would refuse executable memfds to every process of the node.
        let ours = pid_namespace(std::process::id() as i32);
        let theirs = pid_namespace(pid);
        if theirs.is_none() || theirs == ours {
            log::warn!(
                "unit {id:?} shares the node's PID namespace: vm.memfd_noexec is not set for it (it would apply to the whole node); fileless execution there is judged only where the mapping gate runs"
            );
            return Ok(false);
        }
        let set = match self.memfd_setter.as_ref().map(|h| h.set(pid, 2)) {
            Some(Ok(())) => Ok(()),
            Some(Err(Some(e))) => Err(e),
            // The helper is gone or stuck (killed): done here, as without it.
            Some(Err(None)) | None => ns::set_memfd_noexec(pid, 2),
        };
        match set {
            Ok(()) => Ok(true),
            // The helper's word alone is not trusted: the sysctl must be missing for the
            // daemon too (its file is the kernel's, whatever the PID namespace).
            Err(e @ KernelError::SysctlMissing { .. })
                if !std::path::Path::new(MEMFD_NOEXEC_SYSCTL).exists() =>
            {
                self.memfd_noexec_unavailable(&e.to_string());
                Ok(false)
            }
            // Set at the first arm already (the namespace keeps it); a container's root
            // must not be able to turn a re-arm into no protection at all by killing the
            // helper that writes it.
            Err(e) if origin == ArmOrigin::Rearm => {
                log::warn!("unit {id:?}: re-armed without setting vm.memfd_noexec again: {e}");
                Ok(false)
            }
            Err(e) => Err(ArmError::Memfd(e)),
        }
    }

    /// Stops trying `vm.memfd_noexec` (the kernel lacks it) and says so once.
    pub fn memfd_noexec_unavailable(&self, why: &str) {
        use crate::kernel::features::{FeatureState, name};
        let was = self
            .memfd_noexec
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let covered_by_gate = self.mapping_gate;
        let not_covered = if covered_by_gate {
            "nothing: the mapping gate refuses fileless execution (memfd exec and executable memfd mappings) in armed containers"
        } else {
            "fileless execution (memfd_create + fexecve) in containers: neither vm.memfd_noexec nor the mapping gate is available"
        };
        if was {
            log::warn!(
                "vm.memfd_noexec unavailable ({why}): containers are armed without it; not covered: {not_covered}"
            );
        }
        self.features
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set(FeatureState {
                name: name::MEMFD_NOEXEC.into(),
                available: false,
                core: false,
                detail: why.to_string(),
                not_covered: not_covered.into(),
            });
    }
}
