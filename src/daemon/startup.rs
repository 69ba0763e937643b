//! What the daemon checks and takes before it serves: the kernel's features, the mapping
//! gate, the file descriptor limit.

use super::DaemonError;

/// Loads (or adopts) the mapping gate; with what it is doing, in words (for `status`).
pub(super) fn load_mapping_gate(
    library_control: bool,
) -> (Option<crate::kernel::mapping_gate::MappingGate>, String) {
    use crate::kernel::mapping_gate::{DEFAULT_PIN_DIR, MappingGate};
    match MappingGate::load(std::path::Path::new(DEFAULT_PIN_DIR)) {
        Ok(g) => {
            let adopted = if g.adopted() {
                "adopted from the previous daemon"
            } else {
                "loaded"
            };
            let how = if g.follows_backing_files() {
                format!("{adopted}; overlay mprotect judged")
            } else {
                format!("{adopted}; overlay mprotect not judged: no backing files before 6.6")
            };
            log::info!(
                "mapping gate active ({how}, pinned in {DEFAULT_PIN_DIR}): executable mappings and direct loader execs are judged in the kernel"
            );
            (Some(g), format!("active ({how})"))
        }
        Err(e) => {
            let libraries = if library_control {
                "dropped libraries (LD_PRELOAD, /etc/ld.so.preload, dlopen) are judged by library control when opened"
            } else {
                "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library) is not stopped (library_control = true judges it)"
            };
            log::warn!(
                "mapping gate unavailable: {e}. Running on fanotify alone: {libraries}; direct loader execs are judged from the blocked task's kernel stack"
            );
            (None, format!("unavailable: {e}"))
        }
    }
}

/// Refuses to start, in one line, where the core guarantee cannot hold.
pub(super) fn refuse_without_core_features(
    features: &crate::kernel::features::KernelFeatures,
) -> Result<(), DaemonError> {
    let missing: Vec<String> = features
        .missing_core()
        .map(|f| format!("{} ({})", f.name, f.detail))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DaemonError::Setup(format!(
        "driftlock cannot protect containers on kernel {}: it needs Linux {} or later with fanotify exec permission events, filesystem marks and openat2; missing: {}",
        features.kernel,
        crate::kernel::features::MINIMUM_KERNEL,
        missing.join("; ")
    )))
}

/// The mapping gate as a feature: what the daemon found, not only what the kernel lists.
pub(super) fn gate_feature(
    loaded: bool,
    wanted: bool,
    state: &str,
) -> crate::kernel::features::FeatureState {
    crate::kernel::features::FeatureState {
        name: crate::kernel::features::name::MAPPING_GATE.into(),
        available: loaded,
        core: false,
        detail: state.to_string(),
        not_covered: match (loaded, wanted) {
            (true, _) => String::new(),
            (false, true) => "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library) and, without vm.memfd_noexec, fileless execution; direct loader execs are judged by fanotify from the blocked task".into(),
            (false, false) => "turned off (--mapping-gate false): code mapped without an exec is not judged".into(),
        },
    }
}

/// One warning at start for each optional feature this kernel lacks.
pub(super) fn warn_degradations(features: &crate::kernel::features::KernelFeatures) {
    use crate::kernel::features::name;
    for f in features.degraded() {
        // The gate's absence has its own warning (load_mapping_gate); a feature only the
        // gate needs is folded into it.
        if [
            name::MAPPING_GATE,
            name::BTF,
            name::BPF_LSM,
            name::BACKING_FILES,
            name::BPF_MEMCG_ACCOUNTING,
        ]
        .contains(&f.name.as_str())
        {
            continue;
        }
        // vm.memfd_noexec has its own (Armer::memfd_noexec_unavailable).
        if f.name == name::MEMFD_NOEXEC {
            continue;
        }
        log::warn!(
            "kernel {}: {} unavailable ({}); not covered: {}",
            features.kernel,
            f.name,
            f.detail,
            f.not_covered
        );
    }
}

pub(super) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let soft = hard.min(MAX_FDS);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
    }
}

/// The daemon's own fd limit: every fd number it can hold is below it, so a successor's
/// orphan scan ([`ORPHAN_FD_SCAN`]) covers every event fd a dead predecessor could have held
/// unanswered, whatever `LimitNOFILE` says.
pub(super) const MAX_FDS: u64 = 65_536;

/// Fd numbers checked for events a dead predecessor left unanswered: all it could hold.
pub(super) const ORPHAN_FD_SCAN: i32 = (MAX_FDS - 1) as i32;

/// The fanotify group the daemon serves, and how it came by it.
pub(super) struct Group {
    pub(super) gate: crate::kernel::FanotifyGate,
    /// Adopted a predecessor's group: its marks outlive our registry until the recorded
    /// units are re-armed.
    pub(super) restoring: bool,
    /// The daemon that handed it over.
    pub(super) took_over_from: Option<u32>,
    /// Another daemon serves the socket and would not hand over: we run beside it.
    pub(super) beside: bool,
    /// Our own copy of the group: handed to a successor (see crate::handover), and held
    /// until we exit so that the marks outlive a successor that dies early.
    pub(super) copy: std::sync::Arc<std::os::fd::OwnedFd>,
}

/// Takes the group to serve. A group kept in systemd's fd store by a predecessor still
/// holds every container's marks: execs waited in the kernel meanwhile. Take it back, and
/// first answer the events the predecessor read but never answered (they cannot be
/// judged now: deny). Else a running daemon hands its group over, or a new one is made.
pub(super) fn take_group(
    config: &super::DaemonConfig,
    started: std::time::Instant,
) -> Result<Group, DaemonError> {
    use crate::handover::TakeOver;
    let mut took_over_from = None;
    let mut beside = false;
    let adopted = match crate::service::take_stored_group() {
        Some(group) => Some((group, true)),
        None if config.take_over => {
            match crate::handover::take_over(&config.socket, crate::handover::HAND_OVER_TIMEOUT)
                .map_err(|e| DaemonError::Setup(e.to_string()))?
            {
                TakeOver::Taken {
                    group,
                    pid,
                    version,
                    relayed,
                } => {
                    log::info!(
                        "took over the fanotify group from the daemon at pid {pid} (driftlock {version}) after {} ms: every container's marks stayed in the kernel",
                        started.elapsed().as_millis()
                    );
                    took_over_from = Some(pid);
                    Some((group, relayed))
                }
                TakeOver::NoDaemon => None,
                TakeOver::Refused(why) => {
                    // Waiting for it to stop would stall a rolling update (the old pod goes
                    // only once this one is ready), and stopping it first would leave its
                    // containers unprotected: run beside it with a group of our own. Until
                    // it stops, every exec of its containers is judged by both.
                    log::warn!(
                        "the daemon at {} cannot hand over ({why}): starting beside it with a fanotify group of our own and taking its socket; its containers are judged by both daemons until it stops",
                        config.socket.display()
                    );
                    beside = true;
                    None
                }
            }
        }
        None => None,
    };
    let restoring = adopted.is_some();
    let gate = match adopted {
        Some((group, orphans_possible)) => {
            let gate = crate::kernel::FanotifyGate::adopt(group)?;
            if orphans_possible {
                let orphans = gate.answer_orphans(ORPHAN_FD_SCAN, crate::kernel::Answer::Deny);
                log::warn!(
                    "took over the fanotify group from the previous daemon; denied {orphans} exec(s) it had read but not answered"
                );
            }
            gate
        }
        None => crate::kernel::FanotifyGate::new()?,
    };
    let copy = std::sync::Arc::new(
        gate.group_fd()
            .try_clone_to_owned()
            .map_err(|e| DaemonError::Setup(format!("cannot copy the fanotify group: {e}")))?,
    );
    match crate::service::store_group(gate.group_fd()) {
        Ok(true) => log::info!("fanotify group kept in the service manager's fd store"),
        Ok(false) => {}
        Err(e) => log::warn!("cannot store the fanotify group with the service manager: {e}"),
    }
    Ok(Group {
        gate,
        restoring,
        took_over_from,
        beside,
        copy,
    })
}

/// Loads the mapping gate where it is wanted; with what it is doing, in words. Recorded
/// among the node's features.
pub(super) fn mapping_gate(
    config: &super::DaemonConfig,
    features: &mut crate::kernel::features::KernelFeatures,
) -> (Option<crate::kernel::mapping_gate::MappingGate>, String) {
    let (gate, state) = if config.mapping_gate {
        if !features.has(crate::kernel::features::name::BPF_MEMCG_ACCOUNTING) {
            // Before 5.11 BPF maps are charged to the memory-lock limit (64 KiB by default).
            let limit = crate::kernel::features::raise_memlock_limit();
            log::info!("kernel before 5.11: RLIMIT_MEMLOCK for the mapping gate's maps is {limit}");
        }
        load_mapping_gate(config.engine.library_control)
    } else {
        (None, "off (--mapping-gate false)".to_string())
    };
    features.set(gate_feature(gate.is_some(), config.mapping_gate, &state));
    warn_degradations(features);
    (gate, state)
}

/// The audit writer, with the sinks the settings name.
pub(super) fn start_audit(
    config: &super::DaemonConfig,
) -> Result<(crate::audit::AuditQueue, std::thread::JoinHandle<()>), DaemonError> {
    let file = match &config.audit_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| DaemonError::AuditLog {
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let quarantine = match config.evidence {
        Some(limits) => Some(
            crate::audit::evidence::Quarantine::open(&config.state_dir, limits)
                .map_err(|e| DaemonError::Setup(e.to_string()))?,
        ),
        None => None,
    };
    Ok(crate::audit::start_writer(crate::audit::AuditSinks {
        stdout: true,
        file,
        file_path: config.audit_log.clone(),
        node: crate::audit::node_name(),
        falcosidekick: config.falcosidekick.clone(),
        quarantine,
    }))
}

/// Forked now, while the daemon is small: its fork per arm copies its page tables, not a
/// grown daemon's. Only where there is a sysctl to set.
pub(super) fn start_memfd_setter(
    config: &super::DaemonConfig,
) -> Option<crate::kernel::ns::MemfdSetter> {
    (config.memfd_noexec && std::path::Path::new(crate::arming::MEMFD_NOEXEC_SYSCTL).exists())
        .then(crate::kernel::ns::MemfdSetter::start)
        .and_then(|r| {
            r.inspect_err(|e| log::warn!("{e}: vm.memfd_noexec is set by a fork per arm"))
                .ok()
        })
}
