//! `[[memory]]` rules: which memory-only code an image may make where the mapping gate runs.

use super::*;

/// Lets containers of an image make code in memory the gate otherwise refuses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRule {
    /// Image name; `*` at the end matches any suffix.
    pub image: String,
    /// A JIT runtime the baseline does not show: anonymous and memfd executable memory,
    /// and W^X on mappings, are not judged.
    #[serde(default)]
    pub jit: bool,
    /// A debugger: writes through `/proc/<pid>/mem` are allowed.
    #[serde(default)]
    pub debugger: bool,
    /// Every memory rule, whatever runtimes the image holds (an image whose Python makes no
    /// ctypes callbacks, say).
    #[serde(default)]
    pub strict: bool,
    /// The workload runs code from filesystems it mounts itself (an image builder, a
    /// nested container runtime): such code is not judged (it is refused otherwise, where
    /// the mapping gate runs).
    #[serde(default)]
    pub own_filesystems: bool,
}

/// What the `[[memory]]` rules say for one image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryChoice {
    /// A rule says the image has a JIT.
    pub jit: bool,
    /// A rule lets debuggers write through `/proc/<pid>/mem`.
    pub debugger: bool,
    /// A rule asks for every memory rule.
    pub strict: bool,
    /// A rule lets the workload run code from filesystems it mounts itself.
    pub own_filesystems: bool,
}

pub(super) fn every() -> String {
    "*".into()
}
