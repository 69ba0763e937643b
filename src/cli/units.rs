//! The commands about armed containers: `disarm`, `mode`, `status`, `explain`.

use super::*;

/// `driftlock disarm`.
pub(super) fn disarm_cmd(args: DisarmArgs) -> Result<i32, CliError> {
    let DisarmArgs {
        id,
        pod,
        container_name,
        socket,
        json,
    } = args;
    let id = chosen_unit(
        &socket.path(),
        id,
        pod.as_deref(),
        container_name.as_deref(),
    )?;
    match ask(
        &socket.path(),
        &Request::Disarm { id },
        Duration::from_secs(30),
    )? {
        Reply::Disarmed(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
        }
        Reply::Disarmed(s) => println!(
            "disarmed {} (allowed {}, denied {}, would-deny {})",
            s.id, s.counters.allowed, s.counters.denied, s.counters.would_deny
        ),
        other => return Err(unexpected(&other)),
    }
    Ok(0)
}

/// `driftlock mode`: break-glass switches.
pub(super) fn mode_cmd(args: ModeArgs) -> Result<i32, CliError> {
    let ModeArgs {
        mode,
        container,
        namespace,
        image,
        pod,
        container_name,
        all,
        reason,
        json,
        socket,
    } = args;
    if container.is_none() && namespace.is_none() && image.is_none() && pod.is_none() && !all {
        return Err(CliError::Usage(
                "say which containers: --container ID, --namespace NS, --image NAME, --pod NS/NAME or --all"
                    .into(),
            ));
    }
    // A pod's containers, by their ids: one request each.
    let containers: Vec<Option<String>> = match &pod {
        Some(pod) => units_of_pod(&socket.path(), pod, container_name.as_deref(), false)?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![container],
    };
    let mut mode_changes = Vec::new();
    for container in containers {
        let req = Request::SetMode {
            mode,
            select: crate::ipc::UnitSelector {
                container,
                namespace: namespace.clone(),
                image: image.clone(),
                all,
            },
            by: commands::requester(),
            reason: reason.clone(),
        };
        match ask(&socket.path(), &req, Duration::from_secs(30))? {
            Reply::ModeSet { mode_changes: c } => mode_changes.extend(c),
            other => return Err(unexpected(&other)),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&mode_changes).unwrap_or_default()
        );
        return Ok(0);
    }
    for c in &mode_changes {
        if c.from == c.to {
            println!("{}: already in {} mode", c.id, c.to);
        } else {
            println!("{}: {} -> {} mode", c.id, c.from, c.to);
        }
    }
    Ok(0)
}

/// `driftlock status`.
pub(super) fn status_cmd(args: StatusArgs) -> Result<i32, CliError> {
    let StatusArgs { json, socket } = args;
    status(&socket.path(), json)
}

/// `driftlock explain`.
pub(super) fn explain_cmd(args: ExplainArgs) -> Result<i32, CliError> {
    let ExplainArgs {
        path,
        container,
        pod,
        container_name,
        json,
        against,
        socket,
    } = args;
    let id = chosen_unit(
        &socket.path(),
        container,
        pod.as_deref(),
        container_name.as_deref(),
    )?;
    // The daemon reads the candidate: name it absolutely, as this command's directory.
    let against = match against {
        Some(file) => Some(path_arg(&std::path::absolute(&file).map_err(|source| {
            CliError::Io {
                path: file.clone(),
                source,
            }
        })?)),
        None => None,
    };
    let req = Request::Explain {
        id,
        path: path_arg(&path),
        against,
    };
    let reply = ask(&socket.path(), &req, Duration::from_secs(120))?;
    let Reply::Explained(e) = reply else {
        return Err(unexpected(&reply));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        let verdict = serde_json::to_value(e.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{} in {} ({} mode): {verdict}", e.path, e.unit, e.mode);
        if let Some(candidate) = &e.against {
            println!("  under the allow entries of {candidate} (not those in force)");
        }
        println!("  {}", e.why);
        match e.mapping {
            Some(m) => {
                let m = serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                println!(
                    "  mapped executable (dlopen, LD_PRELOAD): {m}: {}",
                    e.mapping_why
                );
            }
            None if !e.mapping_why.is_empty() => {
                println!(
                    "  mapped executable (dlopen, LD_PRELOAD): {}",
                    e.mapping_why
                );
            }
            None => {}
        }
        println!("  sha256 {}", e.sha256.as_deref().unwrap_or("?"));
        println!("  blake3 {}", e.blake3);
    }
    Ok(if e.verdict == crate::verdict::Verdict::Allow {
        0
    } else {
        1
    })
}

/// The unit ids of pod `NS/NAME`'s armed containers (only the one named `container`, if
/// given), from the daemon's status. None armed is an error that says so; `one` asks for
/// exactly one and names the pod's containers when there are several.
pub(super) fn units_of_pod(
    socket: &Path,
    pod: &str,
    container: Option<&str>,
    one: bool,
) -> Result<Vec<String>, CliError> {
    let Some((ns, name)) = pod
        .split_once('/')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
    else {
        return Err(CliError::Usage(format!(
            "--pod {pod:?}: write it as NAMESPACE/NAME"
        )));
    };
    let reply = ask(socket, &Request::Status, Duration::from_secs(30))?;
    let Reply::Status(s) = reply else {
        return Err(unexpected(&reply));
    };
    let of_pod: Vec<_> = s
        .units
        .iter()
        .filter(|u| u.namespace.as_deref() == Some(ns) && u.pod.as_deref() == Some(name))
        .collect();
    let chosen: Vec<String> = of_pod
        .iter()
        .filter(|u| container.is_none_or(|c| u.container_name.as_deref() == Some(c)))
        .map(|u| u.id.clone())
        .collect();
    let names = || {
        of_pod
            .iter()
            .map(|u| u.container_name.clone().unwrap_or_else(|| u.id.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if chosen.is_empty() {
        let why = if of_pod.is_empty() {
            format!("no armed container of pod {ns}/{name}")
        } else {
            format!(
                "pod {ns}/{name} has no armed container {:?} (it has: {})",
                container.unwrap_or_default(),
                names()
            )
        };
        return Err(CliError::NoSuchUnit(why));
    }
    if one && chosen.len() > 1 {
        return Err(CliError::Usage(format!(
            "pod {ns}/{name} has {} armed containers ({}): choose one with -c NAME",
            chosen.len(),
            names()
        )));
    }
    Ok(chosen)
}

/// The one container a command is about: `--container ID`, or `--pod NS/NAME [-c NAME]`.
pub(super) fn chosen_unit(
    socket: &Path,
    id: Option<String>,
    pod: Option<&str>,
    container: Option<&str>,
) -> Result<String, CliError> {
    match (id, pod) {
        (Some(id), _) => Ok(id),
        (None, Some(pod)) => units_of_pod(socket, pod, container, true)?
            .into_iter()
            .next()
            .ok_or_else(|| CliError::NoSuchUnit(format!("no armed container of pod {pod}"))),
        (None, None) => Err(CliError::Usage(
            "say which container: --container ID or --pod NS/NAME".into(),
        )),
    }
}

pub(super) fn status(socket: &Path, json: bool) -> Result<i32, CliError> {
    let reply = ask(socket, &Request::Status, Duration::from_secs(30))?;
    let Reply::Status(s) = reply else {
        return Err(unexpected(&reply));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(0);
    }
    if s.units.is_empty() {
        println!("no armed units");
    } else {
        println!(
            "{:<24} {:<8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>6}  IMAGE",
            "UNIT", "MODE", "ALLOWED", "DENIED", "WOULD-DENY", "HITS", "MISSES", "MARKS"
        );
        for u in &s.units {
            print_unit(u);
        }
    }
    println!(
        "events {} (permission {}, audit notices {}, close-write {}), overflows {}, unattributed {}, in flight {}, unanswered drops {}",
        s.stats.events,
        s.stats.permission_events,
        s.stats.exec_notices,
        s.stats.close_writes,
        s.stats.overflows,
        s.stats.unattributed,
        s.in_flight,
        s.stats.unanswered_drops
    );
    if !s.mapping_gate.is_empty() {
        println!("mapping gate: {}", s.mapping_gate);
    }
    print_degradations(&s.kernel, &s.features);
    if !s.metrics.is_empty() {
        println!("metrics: {}", s.metrics);
    }
    if s.stats.mapping_checked + s.stats.mapping_refused + s.stats.mapping_would_refuse > 0 {
        println!(
            "mapping gate: {} executable mappings checked, {} refused, {} would be refused, {} allowed files dropped by writes",
            s.stats.mapping_checked,
            s.stats.mapping_refused,
            s.stats.mapping_would_refuse,
            s.stats.mapping_entries_dropped
        );
    }
    for p in &s.rearm_pending {
        println!(
            "re-arm pending for {} ({} attempts, retried): {}",
            p.id, p.attempts, p.error
        );
    }
    if s.stats.kernel_allowed_files > 0 {
        println!(
            "files on immutable filesystems allowed by the kernel without an event: {}",
            s.stats.kernel_allowed_files
        );
    }
    for (what, by_reason) in [
        ("denied", &s.stats.denied_by_reason),
        ("would deny", &s.stats.would_deny_by_reason),
    ] {
        if !by_reason.is_empty() {
            let parts: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!("{what} by reason: {}", parts.join(", "));
        }
    }
    if s.stats.loader_checks > 0 {
        println!(
            "loader checks {} (threads not yet blocked at a look {}, waited {}, longest wait {} us, thread gone {})",
            s.stats.loader_checks,
            s.stats.loader_not_blocked_looks,
            s.stats.loader_waits,
            s.stats.loader_wait_max_us,
            s.stats.loader_thread_gone
        );
    }
    Ok(0)
}

/// One unit's line of `driftlock status`, and what more is said of it.
fn print_unit(u: &crate::ipc::UnitReply) {
    println!(
        "{:<24} {:<8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>6}  {}",
        u.id,
        u.mode.to_string(),
        u.counters.allowed,
        u.counters.denied,
        u.counters.would_deny,
        u.cache.hits,
        u.cache.misses,
        u.marks.len(),
        u.image_name.as_deref().unwrap_or(&u.image_key)
    );
    if let Some(d) = &u.last_deny {
        let what = serde_json::to_value(d.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "{:<24} last {what}: {} at {}",
            "",
            d.path.as_deref().unwrap_or("?"),
            d.time
        );
    }
    if let Some(g) = &u.mapping_gate {
        println!("{:<24} mapping gate: {g}", "");
    }
    if !u.libraries.is_empty() {
        println!("{:<24} dropped libraries judged by: {}", "", u.libraries);
    }
    if !u.user_namespaces.is_empty() {
        println!("{:<24} its own user namespaces: {}", "", u.user_namespaces);
    }
}

/// The kernel features this node lacks, each with what it leaves uncovered (`status`).
fn print_degradations(kernel: &str, features: &[crate::kernel::features::FeatureState]) {
    let missing: Vec<_> = features.iter().filter(|f| !f.available).collect();
    if features.is_empty() {
        return;
    }
    if missing.is_empty() {
        println!("kernel {kernel}: every feature driftlock uses is available");
        return;
    }
    println!(
        "kernel {kernel}: degraded ({} feature(s) unavailable):",
        missing.len()
    );
    for f in missing {
        println!("  {}: {}", f.name, f.detail);
        if !f.not_covered.is_empty() {
            println!("    not covered: {}", f.not_covered);
        }
    }
}
