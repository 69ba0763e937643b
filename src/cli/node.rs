//! The commands about the node: `supervise`, `doctor`, `tune`, `hook`, `base-spec`,
//! `gate-unpin`, `config check`.

use super::*;

/// `driftlock supervise`.
pub(super) fn supervise_cmd(args: SuperviseArgs) -> Result<i32, CliError> {
    let SuperviseArgs { pid_file, command } = args;
    match crate::supervise::supervise(command, pid_file) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("driftlock supervise: {e}");
            Ok(1)
        }
    }
}

/// `driftlock doctor`.
pub(super) fn doctor_cmd(args: DoctorArgs) -> Result<i32, CliError> {
    let DoctorArgs {
        json,
        state_dir,
        config,
        socket,
    } = args;
    let state_dir = state_dir_or_configured(state_dir);
    let report = crate::doctor::examine(&socket.path(), &state_dir, &config);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", crate::doctor::render(&report));
    }
    Ok(report.verdict.exit_code())
}

/// `driftlock tune`.
pub(super) fn tune_cmd(args: TuneArgs) -> Result<i32, CliError> {
    let TuneArgs {
        files,
        against,
        current,
        node_wide,
        json,
    } = args;
    let mut records = Vec::new();
    let mut skipped = 0;
    let inputs = if files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        files
    };
    for f in inputs {
        let (r, s) = if f == Path::new("-") {
            crate::tune::read_records(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(&f).map_err(|source| CliError::Io {
                path: f.clone(),
                source,
            })?;
            crate::tune::read_records(std::io::BufReader::new(file))
        };
        records.extend(r);
        skipped += s;
    }
    if records.is_empty() {
        // Nothing to learn from: the wrong file, or journalctl without `-o json`.
        let message = format!(
            "no driftlock records read ({skipped} other lines): give audit records (JSON lines: the audit log, or `journalctl -u driftlock -o json`)"
        );
        eprintln!("driftlock: {message}");
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": message, "exit": 1})
            );
        }
        return Ok(1);
    }
    if let Some(candidate) = against {
        let candidate = crate::config::Config::load(&candidate)?;
        let current = if current.exists() {
            crate::config::Config::load(&current)?
        } else {
            crate::config::Config::default()
        };
        let c = crate::tune::compare(&records, &current, &candidate);
        if json {
            let list = |l: &[(String, String, String)]| -> Vec<serde_json::Value> {
                l.iter()
                    .map(|(unit, path, digest)| {
                        serde_json::json!({"unit": unit, "path": path, "digest": digest})
                    })
                    .collect()
            };
            let out = serde_json::json!({
                "ok": true,
                "considered": c.considered,
                "newly_allowed": list(&c.newly_allowed),
                "newly_denied": list(&c.newly_denied),
            });
            println!("{out}");
            return Ok(0);
        }
        for (unit, path, digest) in &c.newly_allowed {
            println!("would allow: {unit} {path} {digest}");
        }
        for (unit, path, digest) in &c.newly_denied {
            println!("would deny: {unit} {path} {digest}");
        }
        println!(
            "{} records considered: {} denials the candidate lifts, {} allowed execs it denies",
            c.considered,
            c.newly_allowed.len(),
            c.newly_denied.len()
        );
        return Ok(0);
    }
    let proposals = crate::tune::propose_scoped(&records, node_wide);
    if json {
        let out = serde_json::json!({"ok": true, "records": records.len(), "proposals": proposals});
        println!("{out}");
    } else {
        print!("{}", crate::tune::render(&proposals));
    }
    eprintln!(
        "{} records read ({skipped} other lines skipped), {} entries proposed",
        records.len(),
        proposals.len()
    );
    Ok(0)
}

/// `driftlock hook`.
pub(super) fn hook_cmd(args: HookArgs) -> Result<i32, CliError> {
    let HookArgs {
        stage,
        fail_open,
        connect_wait_secs,
        socket,
    } = args;
    hook(stage, fail_open, connect_wait_secs, socket)
}

/// `driftlock base-spec`.
pub(super) fn base_spec_cmd(args: BaseSpecArgs) -> Result<i32, CliError> {
    let BaseSpecArgs {
        from,
        output,
        socket,
        hook_binary,
    } = args;
    base_spec(from, output, socket, hook_binary)
}

/// `driftlock gate-unpin`.
pub(super) fn gate_unpin_cmd(args: GateUnpinArgs) -> Result<i32, CliError> {
    let GateUnpinArgs { if_stopped, json } = args;
    let dir = std::path::Path::new(crate::kernel::mapping_gate::DEFAULT_PIN_DIR);
    let shown = escape_bytes(dir.as_os_str().as_bytes());
    let say = |unpinned: bool, kept: bool, message: String| {
        if json {
            let out = serde_json::json!({
                "ok": true,
                "pin_dir": shown,
                "unpinned": unpinned,
                "kept_for_successor": kept,
                "message": message,
            });
            println!("{out}");
        } else {
            println!("{message}");
        }
    };
    if let Some(unit) = if_stopped {
        let result = std::env::var("SERVICE_RESULT").ok();
        let jobs = crate::service::list_jobs().unwrap_or_default();
        if !crate::service::stopping_for_good(result.as_deref(), &jobs, &unit) {
            say(
                false,
                true,
                format!(
                    "{unit} is not stopping for good (result {}): the mapping gate stays pinned for its successor",
                    result.as_deref().unwrap_or("unknown")
                ),
            );
            return Ok(0);
        }
    }
    if crate::kernel::mapping_gate::unpin(dir) {
        say(
            true,
            false,
            format!("removed the mapping gate pinned in {shown}"),
        );
    } else {
        say(false, false, format!("no mapping gate pinned in {shown}"));
    }
    Ok(0)
}

pub(super) fn config_check(file: &Path, json: bool) -> Result<i32, CliError> {
    // Exactly as the daemon resolves it: a file it would refuse fails here too.
    let checked = crate::config::Config::load(file).and_then(|c| {
        crate::settings::Settings::from(&c)
            .resolve(false)
            .map(|_| c)
            .map_err(|e| crate::config::ConfigError::Invalid {
                path: file.to_path_buf(),
                message: format!("the daemon would refuse these settings: {e}"),
            })
    });
    // Paths as the rest of driftlock writes them: escaped bytes, never assumed UTF-8.
    let shown = |p: &Path| escape_bytes(p.as_os_str().as_bytes());
    let c = match checked {
        Ok(c) => c,
        Err(e) if json => {
            let out = serde_json::json!({"file": shown(file), "ok": false, "error": e.to_string()});
            println!("{out}");
            return Ok(1);
        }
        Err(e) => {
            eprintln!("driftlock: {e}");
            return Ok(1);
        }
    };
    let node_wide = c.allow.iter().filter(|a| a.is_node_wide()).count();
    let unmatchable = c.unmatchable_patterns();
    let ok = c.delegation_errors.is_empty();
    if json {
        let out = serde_json::json!({
            "file": shown(file),
            "ok": ok,
            "image_rules": c.image.len(),
            "namespace_rules": c.namespace.len(),
            "allow_entries": c.allow.len(),
            "node_wide_allow_entries": node_wide,
            "merged": c.delegated.iter().map(|p| shown(p)).collect::<Vec<_>>(),
            "refused": c.delegation_errors,
            "warnings": unmatchable,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(if ok { 0 } else { 1 });
    }
    for f in &c.delegated {
        println!("{}: merged", f.display());
    }
    for e in &c.delegation_errors {
        eprintln!("{e}");
    }
    for why in &unmatchable {
        eprintln!("{}: warning: {why}", file.display());
    }
    if node_wide > 0 {
        eprintln!(
            "{}: warning: {node_wide} allow entries name no scope (image, repository, namespace or container): they apply to every container of the node",
            file.display()
        );
    }
    println!(
        "{}: {} ({} image rules, {} namespace rules, {} allow entries, {} conf.d files merged, {} refused)",
        file.display(),
        if ok { "ok" } else { "errors" },
        c.image.len(),
        c.namespace.len(),
        c.allow.len(),
        c.delegated.len(),
        c.delegation_errors.len()
    );
    Ok(if ok { 0 } else { 1 })
}
