//! What the doctor looks at: the kernel's features and LSMs, user namespaces, the runtimes
//! and their hooks, the daemon, the state directory, the fd store.

use super::*;

/// `library_control` as the daemon would read it from `config`.
pub(super) fn library_control_configured(config: &Path) -> Result<bool, String> {
    if !config.exists() {
        return Ok(false);
    }
    crate::config::Config::load(config)
        .map(|c| c.library_control.unwrap_or(false))
        .map_err(|e| e.to_string())
}

pub(super) fn libraries_finding(gate: bool, library_control: &Result<bool, String>) -> Finding {
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
pub(super) fn memory_code_finding(gate: bool) -> Finding {
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
pub(super) fn gap_of(
    f: &FeatureState,
    kernel: &KernelFeatures,
    library_control: bool,
) -> Option<String> {
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
            || n == name::MOUNT_INDEX
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
pub(super) fn gate_finding(kernel: &KernelFeatures) -> FeatureState {
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

pub(super) fn lsm() -> Lsm {
    let list = crate::kernel::features::lsm_list().unwrap_or_default();
    let bpf = list.split(',').any(|l| l == "bpf");
    Lsm {
        add_with: (!bpf && !list.is_empty()).then(|| format!("lsm={list},bpf")),
        list,
        bpf,
    }
}

/// The value of `proc_mem.force_override=` on the kernel command line, or `always`.
pub(super) fn proc_mem_force_override() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|a| a.strip_prefix("proc_mem.force_override="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "always".into())
}

pub(super) fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub(super) fn user_namespaces() -> Finding {
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
pub(super) fn mentions_driftlock(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("driftlock"))
}

pub(super) fn any_mentions(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| mentions_driftlock(p))
}

pub(super) fn installed(program: &str) -> bool {
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

pub(super) fn runtimes() -> Vec<Runtime> {
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

pub(super) fn daemon(socket: &Path) -> Finding {
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

pub(super) fn state_dir_finding(dir: &Path) -> Finding {
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

pub(super) fn fd_store() -> Finding {
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
