//! The doctor's report in words.

use super::*;

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
