//! `driftlock explain`: why a file would or would not run in a unit, as the rule book
//! and the mapping gate would judge it.

use super::*;

/// Why a file would or would not run in a unit (`driftlock explain`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// Unit.
    pub unit: String,
    /// Unit mode.
    pub mode: Mode,
    /// Path as asked (escaped).
    pub path: String,
    /// SHA-256 (hex).
    pub sha256: Option<String>,
    /// BLAKE3 (hex).
    pub blake3: String,
    /// Size.
    pub size: u64,
    /// The file is on a filesystem or mount the unit has marked (else its exec is not
    /// checked at all).
    pub covered: bool,
    /// Paths in the image with this content (empty: not in the baseline).
    pub baseline_paths: Vec<String>,
    /// An operator allow entry admits this content.
    pub allowed_by_entry: bool,
    /// This content is one of the image's dynamic loaders (a direct invocation is denied).
    pub loader: bool,
    /// The verdict an exec of it would get.
    pub verdict: Verdict,
    /// In words.
    pub why: String,
    /// The verdict an executable mapping of it (`dlopen`, `LD_PRELOAD`, `mmap` or
    /// `mprotect` with `PROT_EXEC`) would get from the mapping gate now; absent where the
    /// gate does not judge it (unavailable, or not on a filesystem it watches for the unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Verdict>,
    /// The mapping verdict in words (also why there is none).
    #[serde(default)]
    pub mapping_why: String,
    /// The candidate configuration answered against (escaped path), if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
}

impl<G: Gate> Engine<G> {
    pub(super) fn explain(
        &self,
        id: &str,
        d: &crate::baseline::FileDigests,
        path: &[u8],
        candidate: Option<&Allowed>,
    ) -> Result<Explanation, EngineError> {
        let handle = self
            .registry
            .find_id(id)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let unit = self
            .registry
            .get(handle)
            .ok_or_else(|| EngineError::UnknownId(id.to_string()))?;
        let covered = self
            .registry
            .attribute(&d.stat)
            .is_some_and(|a| a.unit == handle);
        let baseline_paths: Vec<String> = unit
            .baseline
            .entries()
            .iter()
            .filter(|e| e.blake3 == d.blake3)
            .map(|e| escape_bytes(&e.path))
            .collect();
        let allow = candidate.unwrap_or(&unit.allow);
        let allowed_by_entry = allow.permits(d) || allow.permits_at(d, path);
        let loader = unit.baseline.is_loader(&d.blake3);
        let known_bad = unit.baseline.is_known_bad(&d.blake3);
        let finding = content_finding(known_bad, !baseline_paths.is_empty(), allowed_by_entry);
        // As the rule book would judge an exec of it by name (a loader: when a program
        // asks for it).
        let verdict = judge_unobserved(&Facts {
            mode: unit.mode,
            event: EventKind::Exec,
            finding,
            is_loader: loader,
            loader_call: Some(crate::kernel::exec_name::LoaderCall::ForProgram),
            immutable_fs: false,
            from_cache: false,
            record_misses: false,
        })
        .verdict;
        let why = match (
            covered,
            !baseline_paths.is_empty(),
            allowed_by_entry,
            loader,
        ) {
            (false, ..) => {
                "not on a filesystem this unit has marked: its exec would not be checked"
                    .to_string()
            }
            _ if known_bad => {
                "matches a known-bad indicator: denied even though it is in the image".to_string()
            }
            (true, true, _, true) => format!(
                "a dynamic loader of the image ({}): runs for programs; a direct invocation is denied",
                baseline_paths.join(", ")
            ),
            (true, true, ..) => {
                format!("same content as the image's {}", baseline_paths.join(", "))
            }
            (true, false, true, _) => "not in the image, allowed by an operator entry".to_string(),
            (true, false, false, _) => "not in the image's baseline and no allow entry".to_string(),
        };
        let (mapping, mapping_why) =
            self.mapping
                .explain(&self.registry, handle, unit.mode, d, finding);
        Ok(Explanation {
            mapping,
            mapping_why,
            against: None,
            unit: unit.id.clone(),
            mode: unit.mode,
            path: String::new(),
            sha256: d.sha256.map(hex::encode),
            blake3: d.blake3.to_string(),
            size: d.stat.size,
            covered,
            baseline_paths,
            allowed_by_entry,
            loader,
            verdict: if covered { verdict } else { Verdict::Allow },
            why,
        })
    }
}
