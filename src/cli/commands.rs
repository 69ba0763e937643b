//! The commands behind the command line: client requests, `status`, `baseline`,
//! `evidence` and the OCI hook's exit policy.

use super::*;

pub(super) fn base_spec(
    from: Option<PathBuf>,
    output: Option<PathBuf>,
    socket: Option<PathBuf>,
    hook_binary: Option<PathBuf>,
) -> Result<i32, CliError> {
    use std::io::Read as _;
    let mut settings = crate::runtime::wrapper::RuntimeConfig::load()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(s) = socket {
        settings.socket = s;
    }
    if let Some(b) = hook_binary {
        settings.driftlock = b;
    }
    let io = |path: &Path, source: std::io::Error| CliError::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = match &from {
        Some(p) => std::fs::read(p).map_err(|e| io(p, e))?,
        None => {
            let mut d = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut d)
                .map_err(|e| io(Path::new("<stdin>"), e))?;
            d
        }
    };
    let spec = crate::runtime::wrapper::base_spec(&data, &settings)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    match output {
        None => println!("{spec}"),
        Some(out) => crate::runtime::wrapper::write_replacing(&out, spec.as_bytes(), 0o644)
            .map_err(|e| io(&out, e))?,
    }
    Ok(0)
}

pub(super) fn hook(
    stage: crate::runtime::hook::Stage,
    fail_open: bool,
    wait: u64,
    socket: Option<PathBuf>,
) -> Result<i32, CliError> {
    use crate::runtime::hook::{HookOptions, Stage, run};
    // The same settings as driftlock-runtime (runtime.conf, then the environment), so a
    // hooks.d hook (Podman, CRI-O), which runs with no flags, finds a moved socket and
    // fails open where the node says so. A broken file fails closed with its reason.
    let settings = match crate::runtime::wrapper::RuntimeConfig::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("driftlock: {e}");
            return Ok(1);
        }
    };
    let socket = socket.unwrap_or(settings.socket);
    let fail_open = fail_open || settings.fail_open;
    let opts = HookOptions {
        socket: socket.clone(),
        connect_wait: Duration::from_secs(wait),
        // Connecting counts against the same budget: the answer comes before runc's timeout.
        arm_timeout: crate::runtime::hook::hook_budget(),
        exempt_namespaces: settings.exempt_namespaces,
    };
    match run(stage, &opts, std::io::stdin().lock()) {
        Ok(msg) => {
            log::debug!("{msg}");
            Ok(0)
        }
        // runc shows the hook's stderr in its error: keep it to one line.
        Err(e) if stage == Stage::Poststop => {
            eprintln!("driftlock hook poststop: warning: {e}");
            Ok(0)
        }
        // Fail-open covers a daemon that cannot be reached or does not answer in time,
        // never a refusal or a bad config (which a workload could cause on purpose).
        Err(e) if fail_open && e.daemon_unavailable().is_some() => {
            if let Some((id, why)) = e.daemon_unavailable() {
                crate::runtime::hook::note_fail_open(&socket, id, &why);
            }
            eprintln!("driftlock: WARNING: container runs UNPROTECTED (fail-open): {e}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("driftlock: {e}");
            Ok(1)
        }
    }
}

pub(super) fn evidence(cmd: EvidenceCommand) -> Result<i32, CliError> {
    use crate::audit::evidence::{Limits, Quarantine};
    // Read-only commands create nothing: a state directory that is not there is an error.
    let open = |dir: Option<PathBuf>| {
        Quarantine::open_existing(&state_dir_or_configured(dir), Limits::default())
    };
    match cmd {
        EvidenceCommand::List { state_dir, json } => {
            let q = open(state_dir)?;
            let list = q.list();
            if json {
                let metas: Vec<_> = list.iter().map(|(m, _)| m).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&metas).unwrap_or_default()
                );
                return Ok(0);
            }
            if list.is_empty() {
                println!("no evidence kept");
            }
            for (m, _) in &list {
                println!(
                    "{}  {:>10}  {:<10}  {:<20}  {}  {}",
                    m.sha256,
                    m.size,
                    serde_json::to_value(m.verdict)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    m.unit,
                    m.first_seen,
                    m.path.as_deref().unwrap_or("")
                );
            }
            Ok(0)
        }
        EvidenceCommand::Show { id, state_dir, .. } => {
            let q = open(state_dir)?;
            q.path_of(&id)?;
            match q.list().into_iter().find(|(m, _)| m.sha256 == id) {
                Some((m, _)) => {
                    println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default())
                }
                None => return Err(CliError::NoEvidence(id)),
            }
            Ok(0)
        }
        EvidenceCommand::Export {
            id,
            output,
            state_dir,
            json,
        } => {
            let q = open(state_dir)?;
            let src = q.path_of(&id)?;
            let data = std::fs::read(&src).map_err(|source| CliError::Io {
                path: src.clone(),
                source,
            })?;
            write_atomic(&output, &data)?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o400));
            if json {
                let out = serde_json::json!({
                    "ok": true,
                    "sha256": id,
                    "bytes": data.len(),
                    "output": path_arg(&output),
                });
                println!("{out}");
            } else {
                println!(
                    "exported {} bytes to {} (mode 0400; it is a payload: do not run it)",
                    data.len(),
                    output.display()
                );
            }
            Ok(0)
        }
    }
}

pub(super) fn unexpected(reply: &Reply) -> CliError {
    CliError::UnexpectedReply(format!("{reply:?}"))
}

pub(super) fn path_arg(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_bytes())
}

pub(super) fn arm(a: ArmArgs) -> Result<i32, CliError> {
    let req = Request::Arm(Box::new(ArmRequest {
        id: a.id,
        rootfs: path_arg(&a.rootfs),
        mounts: a.mounts.iter().map(|p| path_arg(p)).collect(),
        mode: a.mode,
        annotated_mode: None,
        image_key: a.image_key.map(|k| escape_bytes(k.as_bytes())),
        pid: a.pid,
        discover_mounts: a.discover_mounts,
        host_rootfs: None,
        identity_source: a
            .image_name
            .is_some()
            .then_some(crate::IdentitySource::Operator),
        image_name: a.image_name,
        namespace: None,
        pod: None,
        container_name: None,
    }));
    // A first snapshot of a large image can take a while.
    let reply = ask(&a.socket.path(), &req, Duration::from_secs(600))?;
    let Reply::Armed(r) = reply else {
        return Err(unexpected(&reply));
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "armed {} ({} mode): baseline {:?} with {} contents in {:.1} ms{}",
        r.id,
        r.mode,
        r.baseline,
        r.baseline_contents,
        r.baseline_ms,
        if r.snapshot_skipped > 0 {
            format!(", {} files skipped", r.snapshot_skipped)
        } else {
            String::new()
        }
    );
    for m in &r.marks {
        println!("  {} mark on {} ({})", m.kind, m.path, m.fstype);
    }
    Ok(0)
}

/// One request; a daemon that says it is busy is asked again until `timeout` has passed.
pub(super) fn ask(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    request_until(socket, req, timeout, std::time::Instant::now() + timeout)
}

pub(super) fn read_baseline(path: &Path) -> Result<Baseline, CliError> {
    let data = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    format::decode(&data).map_err(|source| CliError::Baseline {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn baseline(cmd: BaselineCommand) -> Result<i32, CliError> {
    match cmd {
        BaselineCommand::Snapshot {
            rootfs,
            output,
            key,
            threads,
            indicators,
            json,
        } => baseline_snapshot(&rootfs, output, key, threads, indicators, json),
        BaselineCommand::Show { file, json } => baseline_show(&file, json),
        BaselineCommand::Diff { a, b, json } => baseline_diff(&a, &b, json),
    }
}

/// `driftlock baseline snapshot`.
fn baseline_snapshot(
    rootfs: &Path,
    output: Option<PathBuf>,
    key: Option<String>,
    threads: usize,
    indicators: Option<PathBuf>,
    json: bool,
) -> Result<i32, CliError> {
    let indicators = match indicators {
        Some(p) => Some(crate::baseline::indicators::Indicators::load(&p)?),
        None => None,
    };
    let key = key.map_or_else(
        || rootfs.as_os_str().as_bytes().to_vec(),
        String::into_bytes,
    );
    let snap = crate::baseline::snapshot_checked(rootfs, key, threads, indicators.as_ref())?;
    for bad in snap.baseline.known_bad() {
        eprintln!(
            "KNOWN BAD: {} matches indicator {}",
            escape_bytes(&bad.path),
            bad.indicator
        );
    }
    for e in &snap.errors {
        eprintln!("skipped {e}");
    }
    let secs = snap.elapsed.as_secs_f64();
    eprintln!(
        "{} executables, {} distinct, {:.1} MB in {:.3} s ({:.0} MB/s), {} skipped",
        snap.baseline.entries().len(),
        snap.baseline.distinct_contents(),
        snap.bytes as f64 / 1e6,
        secs,
        snap.bytes as f64 / 1e6 / secs.max(1e-9),
        snap.errors.len()
    );
    let bytes = format::encode(&snap.baseline);
    match &output {
        Some(path) => write_atomic(path, &bytes)?,
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(|source| CliError::Io {
                path: "-".into(),
                source,
            })?,
    }
    if let (true, Some(path)) = (json, &output) {
        let known_bad: Vec<_> = snap
            .baseline
            .known_bad()
            .iter()
            .map(|b| serde_json::json!({"path": escape_bytes(&b.path), "indicator": b.indicator}))
            .collect();
        let out = serde_json::json!({
            "ok": true,
            "output": path_arg(path),
            "executables": snap.baseline.entries().len(),
            "distinct": snap.baseline.distinct_contents(),
            "bytes_hashed": snap.bytes,
            "seconds": secs,
            "skipped": snap.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "known_bad": known_bad,
        });
        println!("{out}");
    }
    Ok(0)
}

/// `driftlock baseline show`: a baseline file for people, or for tools (`--json`).
fn baseline_show(file: &Path, json: bool) -> Result<i32, CliError> {
    let b = read_baseline(file)?;
    if json {
        let entries: Vec<_> = b
            .entries()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "path": escape_bytes(&e.path),
                    "blake3": e.blake3.to_string(),
                    "size": e.size,
                    "mode": e.mode,
                })
            })
            .collect();
        let out = serde_json::json!({
            "key": escape_bytes(b.key()),
            "source": escape_bytes(b.source()),
            "created": crate::audit::rfc3339(
                std::time::UNIX_EPOCH + Duration::from_secs(b.created())
            ),
            "distinct_contents": b.distinct_contents(),
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(0);
    }
    println!("key:      {}", escape_bytes(b.key()));
    println!("source:   {}", escape_bytes(b.source()));
    println!(
        "created:  {}",
        crate::audit::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(b.created()))
    );
    println!(
        "entries:  {} ({} distinct contents)",
        b.entries().len(),
        b.distinct_contents()
    );
    for e in b.entries() {
        println!(
            "{}  {:>10}  {:04o}  {}",
            e.blake3,
            e.size,
            e.mode,
            escape_bytes(&e.path)
        );
    }
    Ok(0)
}

/// `driftlock baseline diff`: two baseline files compared by path (exit 1 if they differ).
fn baseline_diff(a: &Path, b: &Path, json: bool) -> Result<i32, CliError> {
    let (ba, bb) = (read_baseline(a)?, read_baseline(b)?);
    let d = ba.diff(&bb);
    if json {
        let one = |e: &&crate::baseline::BaselineEntry| serde_json::json!({"path": escape_bytes(&e.path), "blake3": e.blake3.to_string()});
        let out = serde_json::json!({
            "removed": d.removed.iter().map(one).collect::<Vec<_>>(),
            "added": d.added.iter().map(one).collect::<Vec<_>>(),
            "changed": d.changed.iter().map(|(x, y)| serde_json::json!({
                "path": escape_bytes(&x.path),
                "from": x.blake3.to_string(),
                "to": y.blake3.to_string(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(if d.is_empty() { 0 } else { 1 });
    }
    for e in &d.removed {
        println!("- {}  {}", e.blake3, escape_bytes(&e.path));
    }
    for e in &d.added {
        println!("+ {}  {}", e.blake3, escape_bytes(&e.path));
    }
    for (x, y) in &d.changed {
        println!("~ {} -> {}  {}", x.blake3, y.blake3, escape_bytes(&x.path));
    }
    eprintln!(
        "{} removed, {} added, {} changed",
        d.removed.len(),
        d.added.len(),
        d.changed.len()
    );
    Ok(if d.is_empty() { 0 } else { 1 })
}

/// Who is asking, for the daemon's record: the user (and the one `sudo` ran for), the
/// process and the host.
pub(super) fn requester() -> String {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let sudo = std::env::var("SUDO_USER")
        .map(|u| format!(" (sudo by {u})"))
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{user}{sudo} on {host}, pid {}", std::process::id())
}
