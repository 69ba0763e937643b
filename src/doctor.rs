//! `driftlock doctor`: what this node offers and what driftlock will do here.
//!
//! Reads the kernel (through [`crate::kernel::features`], and a trial load of the mapping
//! gate that attaches and pins nothing), the container runtimes' configuration, and the
//! daemon's socket and state directory. Changes nothing on the node.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::kernel::features::{FeatureState, KernelFeatures, name};

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

/// `library_control` as the daemon would read it from `config`.
fn library_control_configured(config: &Path) -> Result<bool, String> {
    if !config.exists() {
        return Ok(false);
    }
    crate::config::Config::load(config)
        .map(|c| c.library_control.unwrap_or(false))
        .map_err(|e| e.to_string())
}

fn libraries_finding(gate: bool, library_control: &Result<bool, String>) -> Finding {
    match (gate, library_control) {
        (_, Err(e)) => Finding {
            ok: None,
            detail: format!("cannot read the configuration: {e}"),
        },
        (true, Ok(true)) => Finding {
            ok: Some(true),
            detail: "the mapping gate and library control (every filesystem of a container, volumes too)".into(),
        },
        (true, Ok(false)) => Finding {
            ok: Some(true),
            detail: "the mapping gate (a container's own filesystems; a volume shared with the host is not judged: turn on library_control)".into(),
        },
        (false, Ok(true)) => Finding {
            ok: Some(true),
            detail: "library control (opens of shared objects, every filesystem of a container)".into(),
        },
        (false, Ok(false)) => Finding {
            ok: Some(false),
            detail: "nothing: LD_PRELOAD, /etc/ld.so.preload and dlopen of a dropped library run (no mapping gate here; set library_control = true)".into(),
        },
    }
}

/// Whether the gate's memory rules can hold here.
fn memory_code_finding(gate: bool) -> Finding {
    if gate {
        Finding {
            ok: Some(true),
            detail: "refused by the mapping gate in containers armed by pid (W^X on file mappings, anonymous and memfd executable memory, /proc/<pid>/mem writes), by what each image holds (a JIT or closure runtime lifts some; `driftlock status` says which per container)".into(),
        }
    } else {
        Finding {
            ok: Some(false),
            detail: "not refused: the mapping gate cannot load here (W^X, anonymous and memfd executable memory and /proc/<pid>/mem writes are not judged; memfd exec is, by vm.memfd_noexec where the kernel has it)".into(),
        }
    }
}

/// A missing feature as a gap in coverage, or `None` when nothing is uncovered by it.
fn gap_of(f: &FeatureState, kernel: &KernelFeatures, library_control: bool) -> Option<String> {
    let gate = kernel.has(name::MAPPING_GATE);
    if f.name == name::MAPPING_GATE && library_control {
        return Some(format!(
            "{}: dropped libraries are judged by library control; not covered: executable memfd mappings{}, and mprotect of written pages ({})",
            f.name,
            if kernel.has(name::MEMFD_NOEXEC) {
                ""
            } else {
                " and memfd execs"
            },
            f.detail
        ));
    }
    match f.name.as_str() {
        // Only slower, or a rare layout: not a gap in what is judged.
        n if n == name::EVICTABLE_MARKS
            || n == name::MOUNT_ID_UNIQUE
            || n == name::OVERLAY_LOWERDIR_PLUS =>
        {
            None
        }
        // What the gate needs is said once, by the gate's own line.
        n if n == name::BTF || n == name::BPF_LSM || n == name::BPF_MEMCG_ACCOUNTING => None,
        n if n == name::MEMFD_NOEXEC && gate => None,
        n if n == name::BACKING_FILES && !gate => None,
        _ => Some(format!("{}: {} ({})", f.name, f.not_covered, f.detail)),
    }
}

/// The gate as `doctor` can know it: pinned (a daemon runs it), or a trial load.
fn gate_finding(kernel: &KernelFeatures) -> FeatureState {
    use crate::kernel::mapping_gate::{DEFAULT_PIN_DIR, MappingGate};
    let result = if MappingGate::pinned(Path::new(DEFAULT_PIN_DIR)) {
        Ok(format!("pinned in {DEFAULT_PIN_DIR} (a daemon loaded it)"))
    } else {
        MappingGate::probe_load()
            .map(|()| "its programs load and verify here (trial load, nothing attached)".into())
            .map_err(|e| {
                let mut why = e.to_string();
                if !kernel.has(name::BPF_MEMCG_ACCOUNTING) {
                    why.push_str(&format!(
                        "; before 5.11 the daemon needs RLIMIT_MEMLOCK raised (the unit sets LimitMEMLOCK=infinity; here {})",
                        crate::kernel::features::memlock_limit()
                    ));
                }
                why
            })
    };
    let available = result.is_ok();
    FeatureState {
        name: name::MAPPING_GATE.into(),
        available,
        core: false,
        detail: result.unwrap_or_else(|e| e),
        not_covered: if available {
            String::new()
        } else if kernel.has(name::MEMFD_NOEXEC) {
            "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library); direct loader execs are judged by fanotify".into()
        } else {
            "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library), and fileless execution (no vm.memfd_noexec either)".into()
        },
    }
}

fn lsm() -> Lsm {
    let list = crate::kernel::features::lsm_list().unwrap_or_default();
    let bpf = list.split(',').any(|l| l == "bpf");
    Lsm {
        add_with: (!bpf && !list.is_empty()).then(|| format!("lsm={list},bpf")),
        list,
        bpf,
    }
}

/// The value of `proc_mem.force_override=` on the kernel command line, or `always`.
fn proc_mem_force_override() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|a| a.strip_prefix("proc_mem.force_override="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "always".into())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn user_namespaces() -> Finding {
    let max = read_trimmed("/proc/sys/user/max_user_namespaces");
    let debian = read_trimmed("/proc/sys/kernel/unprivileged_userns_clone");
    let apparmor = read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
    let mut why = Vec::new();
    let mut allowed = Some(true);
    if max.as_deref() == Some("0") {
        allowed = Some(false);
        why.push("user.max_user_namespaces=0".to_string());
    }
    if debian.as_deref() == Some("0") {
        allowed = Some(false);
        why.push("kernel.unprivileged_userns_clone=0".to_string());
    }
    if apparmor.as_deref() == Some("1") {
        allowed = Some(false);
        why.push("kernel.apparmor_restrict_unprivileged_userns=1".to_string());
    }
    if max.is_none() {
        allowed = None;
        why.push("no /proc/sys/user/max_user_namespaces".into());
    }
    Finding {
        ok: allowed,
        detail: if why.is_empty() {
            format!(
                "allowed (user.max_user_namespaces={}): a container process may make its own user and mount namespaces unless its seccomp profile refuses them",
                max.unwrap_or_default()
            )
        } else {
            why.join(", ")
        },
    }
}

/// Whether `path` exists and its text mentions driftlock.
fn mentions_driftlock(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("driftlock"))
}

fn any_mentions(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| mentions_driftlock(p))
}

fn installed(program: &str) -> bool {
    [
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/bin",
        "/sbin",
    ]
    .iter()
    .any(|d| Path::new(d).join(program).exists())
}

fn runtimes() -> Vec<Runtime> {
    let mut out = Vec::new();
    let hooks_dirs = [
        "/usr/share/containers/oci/hooks.d",
        "/etc/containers/oci/hooks.d",
    ];
    let hook = hooks_dirs.iter().find_map(|d| any_mentions(Path::new(d)));
    if installed("containerd") {
        let found = [
            Path::new("/etc/containerd/config.toml").to_path_buf(),
            PathBuf::from("/etc/containerd/conf.d"),
            PathBuf::from("/etc/containerd/config.d"),
        ]
        .iter()
        .find_map(|p| {
            if p.is_dir() {
                any_mentions(p)
            } else {
                mentions_driftlock(p).then(|| p.clone())
            }
        });
        out.push(Runtime {
            name: "containerd".into(),
            uses_driftlock: found.is_some(),
            detail: match found {
                Some(p) => format!(
                    "{} names driftlock (driftlock-runtime, or a base runtime spec with its hooks)",
                    p.display()
                ),
                None => "no containerd configuration names driftlock (merge containerd-cri-base-spec.toml or containerd-cri.toml)".into(),
            },
        });
    }
    if installed("dockerd") {
        let ok = mentions_driftlock(Path::new("/etc/docker/daemon.json"));
        out.push(Runtime {
            name: "docker".into(),
            uses_driftlock: ok,
            detail: if ok {
                "/etc/docker/daemon.json names driftlock-runtime".into()
            } else {
                "/etc/docker/daemon.json does not name driftlock-runtime (merge docker-daemon.json)"
                    .into()
            },
        });
    }
    for (name, program) in [("podman", "podman"), ("cri-o", "crio")] {
        if installed(program) {
            out.push(Runtime {
                name: name.into(),
                uses_driftlock: hook.is_some(),
                detail: match &hook {
                    Some(p) => format!("OCI hook {}", p.display()),
                    None => format!("no driftlock hook in {}", hooks_dirs.join(" or ")),
                },
            });
        }
    }
    out
}

fn daemon(socket: &Path) -> Finding {
    match crate::ipc::client::request(
        socket,
        &crate::ipc::Request::Ping,
        std::time::Duration::from_secs(5),
    ) {
        Ok(crate::ipc::Reply::Pong { version }) => Finding {
            ok: Some(true),
            detail: format!("driftlock {version} answers on {}", socket.display()),
        },
        Ok(other) => Finding {
            ok: Some(false),
            detail: format!("unexpected answer on {}: {other:?}", socket.display()),
        },
        Err(e) => Finding {
            ok: Some(false),
            detail: format!("no daemon answers on {}: {e}", socket.display()),
        },
    }
}

fn state_dir_finding(dir: &Path) -> Finding {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Finding {
            ok: Some(true),
            detail: format!("{} exists", dir.display()),
        },
        Ok(_) => Finding {
            ok: Some(false),
            detail: format!("{} is not a directory", dir.display()),
        },
        Err(e) => Finding {
            ok: None,
            detail: format!("{}: {e} (the daemon creates it)", dir.display()),
        },
    }
}

fn fd_store() -> Finding {
    let unit = [
        "/etc/systemd/system/driftlock.service",
        "/lib/systemd/system/driftlock.service",
        "/usr/lib/systemd/system/driftlock.service",
    ]
    .iter()
    .find(|p| Path::new(p).exists());
    match unit {
        Some(p) => {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let ok = text.lines().any(|l| {
                l.trim()
                    .strip_prefix("FileDescriptorStoreMax=")
                    .is_some_and(|v| v.trim() != "0")
            });
            Finding {
                ok: Some(ok),
                detail: if ok {
                    format!("{p} keeps the fanotify group across restarts")
                } else {
                    format!("{p} sets no FileDescriptorStoreMax=: a restart drops every mark")
                },
            }
        }
        None => Finding {
            ok: None,
            detail: "no driftlock.service installed (Kubernetes: the pod hands the group over)"
                .into(),
        },
    }
}

/// The report in words, for `doctor` without `--json`.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "driftlock {} on kernel {}", r.version, r.kernel.kernel);
    let _ = writeln!(out, "\nkernel features:");
    for f in &r.kernel.features {
        let mark = if f.available { "yes" } else { "NO " };
        let core = if f.core { " (core)" } else { "" };
        let _ = writeln!(out, "  {mark} {}{core}: {}", f.name, f.detail);
    }
    let _ = writeln!(
        out,
        "\nLSMs: {}{}",
        if r.lsm.list.is_empty() {
            "(unreadable)"
        } else {
            &r.lsm.list
        },
        r.lsm
            .add_with
            .as_deref()
            .map(|p| format!(" — bpf missing: boot with {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "proc_mem.force_override: {}",
        r.proc_mem_force_override
    );
    let _ = writeln!(
        out,
        "unprivileged user namespaces: {}",
        r.unprivileged_user_namespaces.detail
    );
    let _ = writeln!(out, "\nruntimes:");
    if r.runtimes.is_empty() {
        let _ = writeln!(out, "  none found");
    }
    for rt in &r.runtimes {
        let mark = if rt.uses_driftlock { "yes" } else { "NO " };
        let _ = writeln!(out, "  {mark} {}: {}", rt.name, rt.detail);
    }
    let _ = writeln!(
        out,
        "  real runc: {}",
        r.runc
            .as_deref()
            .map_or("not found".into(), |p| p.display().to_string())
    );
    let _ = writeln!(out, "\ndaemon: {}", r.daemon.detail);
    let _ = writeln!(out, "state directory: {}", r.state_dir.detail);
    let _ = writeln!(out, "dropped libraries judged by: {}", r.libraries.detail);
    let _ = writeln!(out, "code made in memory: {}", r.memory_code.detail);
    let _ = writeln!(out, "fd store: {}", r.fd_store.detail);
    let _ = writeln!(
        out,
        "\nverdict: {}",
        match r.verdict {
            Verdict::Full => "full protection",
            Verdict::Degraded => "degraded",
            Verdict::CannotProtect => "driftlock cannot protect containers on this node",
        }
    );
    for g in &r.gaps {
        let _ = writeln!(out, "  - {g}");
    }
    out
}
