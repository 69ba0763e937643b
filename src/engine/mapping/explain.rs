//! The mapping gate in words: what it judges of a unit (`status`), what judges a library
//! dropped in one, and what it would do with a mapping of a given file (`explain`).

use super::MappingSide;
use crate::Mode;
use crate::baseline::FileDigests;
use crate::escape::escape_bytes;
use crate::kernel::mapping_gate::kernel_dev;
use crate::registry::{PlannedMark, Registry, Unit, UnitHandle};
use crate::verdict::{Finding, Verdict};

impl MappingSide {
    /// What the mapping gate judges of a unit, in words (`None`: no gate runs).
    pub(in crate::engine) fn coverage(&self, handle: UnitHandle, unit: &Unit) -> Option<String> {
        self.gate.as_ref()?;
        let devs = self.devs.get(&handle);
        let (covered, not): (Vec<_>, Vec<_>) = unit
            .marks
            .iter()
            .partition(|m| devs.is_some_and(|d| d.contains(&kernel_dev(m.superblock_dev()))));
        let paths = |ms: &[&PlannedMark]| {
            ms.iter()
                .map(|m| escape_bytes(m.path.as_os_str().as_encoded_bytes()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "judges mappings on {}",
            if covered.is_empty() {
                "nothing".into()
            } else {
                paths(&covered)
            }
        );
        let (judged, not): (Vec<_>, Vec<_>) = not
            .into_iter()
            .partition(|m| self.volumes.judges(handle, kernel_dev(m.superblock_dev())));
        if !judged.is_empty() {
            let strict = judged.iter().any(|m| {
                self.gate
                    .as_ref()
                    .is_some_and(|g| g.volume_strict(kernel_dev(m.superblock_dev())))
            });
            out.push_str(&format!(
                "; on volumes {} (shared with the host) judges what a container wrote there since it was armed{}; a loader exec'd from there is judged by fanotify",
                paths(&judged),
                if strict {
                    " (strict: the gate could not record a write, so every mapping from there must be admitted)"
                } else {
                    ""
                }
            ));
        }
        if !not.is_empty() {
            out.push_str(&format!(
                "; not on {} (marked by mount, and the container shares the node's PID namespace: a library mapped from there is not judged, a loader exec'd from there is judged by fanotify)",
                paths(&not)
            ));
        }
        if let Some(keys) = self.keys.get(&handle) {
            out.push_str(&format!(
                "; {} entries ({} made while running, of {})",
                keys.len(),
                keys.runtime_len(),
                super::keys::RUNTIME_BUDGET
            ));
        }
        if let Some((_, memory)) = self.pid_ns.get(&handle) {
            out.push_str("; in its PID namespace: memfd exec refused");
            out.push_str(if memory.wx {
                ", W^X on file mappings"
            } else {
                ", W^X not judged (a JIT runtime in the image, or a rule)"
            });
            out.push_str(if memory.anon {
                ", no anonymous or memfd executable memory"
            } else {
                ", anonymous and memfd executable memory allowed (a JIT or closure runtime in the image, or a rule)"
            });
            out.push_str(if memory.proc_mem {
                ", no writes through /proc/<pid>/mem or ptrace"
            } else {
                ", writes through /proc/<pid>/mem and ptrace allowed (a rule)"
            });
            out.push_str(if memory.foreign {
                ", no code from filesystems no unit marked (its own mounts in a namespace of its own), and a file a container wrote on a volume is exec'd only once judged"
            } else {
                ", code from filesystems it mounts itself allowed (a rule: not judged)"
            });
        }
        Some(out)
    }

    /// What judges a library dropped in a unit, in a few words.
    pub(in crate::engine) fn library_coverage(
        &self,
        handle: UnitHandle,
        unit: &Unit,
        library_control: bool,
    ) -> String {
        let devs = self.devs.get(&handle);
        let gated = |m: &PlannedMark| {
            let dev = kernel_dev(m.superblock_dev());
            self.gate.is_some()
                && (devs.is_some_and(|d| d.contains(&dev)) || self.volumes.judges(handle, dev))
        };
        let all_gated = !unit.marks.is_empty() && unit.marks.iter().all(gated);
        let some_gated = unit.marks.iter().any(gated);
        match (library_control, all_gated, some_gated) {
            (true, _, true) => "mapping gate and library control".into(),
            (true, _, false) => "library control".into(),
            (false, true, _) => "mapping gate".into(),
            (false, false, true) => {
                "mapping gate on its own filesystems; none on volumes marked by mount (turn on library_control)".into()
            }
            (false, false, false) => {
                "none: no mapping gate on this kernel and library_control is off".into()
            }
        }
    }

    /// What the mapping gate would do with an executable mapping of the file `d` describes.
    pub(in crate::engine) fn explain(
        &self,
        registry: &Registry,
        handle: UnitHandle,
        mode: Mode,
        d: &FileDigests,
        finding: Finding,
    ) -> (Option<Verdict>, String) {
        let Some(gate) = self.gate.as_ref() else {
            return (
                None,
                "the mapping gate is not active: executable mappings are not judged".into(),
            );
        };
        // Keyed as the kernel keys it (an overlay file by the overlay's superblock, which a
        // file's own st_dev may not be): as for every exec.
        let Some((key, _)) = self.key(registry, handle, &d.stat) else {
            return (None, "the mapping gate is not active".into());
        };
        let watched = self
            .devs
            .get(&handle)
            .is_some_and(|devs| devs.contains(&key.dev));
        let volume = !watched && self.volumes.judges(handle, key.dev);
        if volume
            && !gate.admits(&key)
            && gate.generation(&key) == 0
            && gate.writers(&key) == 0
            && !gate.volume_strict(key.dev)
        {
            return (
                Some(Verdict::Allow),
                "on a volume shared with the host, and no container wrote it since this one was armed: it maps (an exec of it is judged by content)".into(),
            );
        }
        if !watched && !volume {
            return (
                None,
                "not on a filesystem the mapping gate watches for this unit: its mappings are not judged".into(),
            );
        }
        if gate.admits(&key) {
            return (
                Some(Verdict::Allow),
                "admitted: its content was judged allowed and it has not been written since".into(),
            );
        }
        let refused = match mode {
            Mode::Enforce => Verdict::Deny,
            Mode::Audit => Verdict::WouldDeny,
        };
        match finding {
            Finding::InBaseline => (
                Some(refused),
                "its content is allowed, but the gate holds no entry for this file as it is now (written or still open for writing; it is admitted once closed and hashed)".into(),
            ),
            _ => (
                Some(refused),
                "not admitted: its content is neither in the image's baseline nor allowed by an entry".into(),
            ),
        }
    }
}
