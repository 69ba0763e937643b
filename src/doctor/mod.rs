//! `driftlock doctor`: what this node offers and what driftlock will do here.
//!
//! Reads the kernel (through [`crate::kernel::features`], and a trial load of the mapping
//! gate that attaches and pins nothing), the container runtimes' configuration, and the
//! daemon's socket and state directory. Changes nothing on the node.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::kernel::features::{FeatureState, KernelFeatures, name};

mod findings;
mod render;

use findings::*;
pub use render::render;

/// What `doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// driftlock's version.
    pub version: String,
    /// `full`, `degraded` or `cannot-protect`.
    pub verdict: Verdict,
    /// Kernel release and its features.
    #[serde(flatten)]
    pub kernel: KernelFeatures,
    /// The active LSM list, and whether `bpf` is in it.
    pub lsm: Lsm,
    /// `proc_mem.force_override` as booted (`always` when not set: the kernel's default).
    pub proc_mem_force_override: String,
    /// Whether unprivileged processes may create user namespaces, and from what.
    pub unprivileged_user_namespaces: Finding,
    /// Container runtimes on the node and whether they reach driftlock.
    pub runtimes: Vec<Runtime>,
    /// The real runc the wrapper would run.
    pub runc: Option<PathBuf>,
    /// The daemon's socket.
    pub daemon: Finding,
    /// The state directory.
    pub state_dir: Finding,
    /// What judges a library dropped in a container here: the mapping gate, library
    /// control (`library_control` in the configuration), both, or nothing.
    pub libraries: Finding,
    /// Whether code made in memory (W^X, anonymous and memfd executable memory,
    /// `/proc/<pid>/mem` writes) is refused in containers here.
    pub memory_code: Finding,
    /// systemd's fd store for the group (the unit's `FileDescriptorStoreMax=`).
    pub fd_store: Finding,
    /// Every gap in protection, in words (empty when protection is full).
    pub gaps: Vec<String>,
}

/// The overall answer (and `doctor`'s exit status: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every feature driftlock uses is there.
    Full,
    /// Containers are protected, with the gaps listed.
    Degraded,
    /// driftlock cannot protect containers on this node.
    CannotProtect,
}

impl Verdict {
    /// The exit status.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Full => 0,
            Verdict::Degraded => 1,
            Verdict::CannotProtect => 2,
        }
    }
}

/// The LSM list.
#[derive(Debug, Clone, Serialize)]
pub struct Lsm {
    /// As the kernel lists it (empty if unreadable).
    pub list: String,
    /// `bpf` is in it.
    pub bpf: bool,
    /// The boot parameter that adds `bpf`, when it is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_with: Option<String>,
}

/// A yes/no finding with its detail.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The answer (`None`: could not tell).
    pub ok: Option<bool>,
    /// What was found.
    pub detail: String,
}

/// A container runtime found on the node.
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    /// containerd, docker, podman, cri-o.
    pub name: String,
    /// Whether its containers reach driftlock (the wrapper or the OCI hook).
    pub uses_driftlock: bool,
    /// Where that was read.
    pub detail: String,
}

/// Examines the node. `socket` and `state_dir` are the daemon's; `config` its
/// configuration file (absent: built-in defaults).
pub fn examine(socket: &Path, state_dir: &Path, config: &Path) -> Report {
    let mut kernel = crate::kernel::features::probe();
    let gate = gate_finding(&kernel);
    kernel.set(gate);
    let library_control = library_control_configured(config);
    let libraries = libraries_finding(kernel.has(name::MAPPING_GATE), &library_control);
    let lsm = lsm();
    let runtimes = runtimes();
    let daemon = daemon(socket);
    let mut gaps: Vec<String> = Vec::new();
    for f in kernel.degraded() {
        if let Some(gap) = gap_of(f, &kernel, library_control == Ok(true)) {
            gaps.push(gap);
        }
    }
    for r in runtimes.iter().filter(|r| !r.uses_driftlock) {
        gaps.push(format!(
            "{}: its containers do not reach driftlock ({})",
            r.name, r.detail
        ));
    }
    if daemon.ok == Some(false) {
        gaps.push(format!("daemon: {}", daemon.detail));
    }
    let verdict = if kernel.missing_core().next().is_some() {
        Verdict::CannotProtect
    } else if gaps.is_empty() {
        Verdict::Full
    } else {
        Verdict::Degraded
    };
    for f in kernel.missing_core() {
        gaps.insert(0, format!("{}: {} ({})", f.name, f.not_covered, f.detail));
    }
    Report {
        version: env!("CARGO_PKG_VERSION").into(),
        verdict,
        lsm,
        proc_mem_force_override: proc_mem_force_override(),
        unprivileged_user_namespaces: user_namespaces(),
        runtimes,
        runc: crate::runtime::wrapper::resolve_runc(
            &crate::runtime::wrapper::RuntimeConfig::defaults(),
        )
        .ok(),
        daemon,
        state_dir: state_dir_finding(state_dir),
        memory_code: memory_code_finding(kernel.has(name::MAPPING_GATE)),
        libraries,
        fd_store: fd_store(),
        gaps,
        kernel,
    }
}
