//! The exposition text: every metric, from the engine's status, the arm counters and the
//! audit queue.

use super::node::{render_delivery, render_node};
use super::*;

/// Renders the exposition text.
pub fn render(
    s: &EngineStatus,
    armer: &Armer,
    audit: &AuditCounters,
    loop_age: f64,
    watchdog: bool,
) -> String {
    let mut out = String::new();
    render_execs(&mut out, s);
    render_events(&mut out, s);
    render_node(&mut out, s, armer);
    render_daemon(&mut out, s, armer, audit, (loop_age, watchdog));
    render_delivery(&mut out, armer, audit);
    out
}

/// Writes one metric's help, type and lines.
pub(super) fn section(out: &mut String, name: &str, kind: &str, help: &str, lines: Vec<String>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for l in lines {
        let _ = writeln!(out, "{name}{l}");
    }
}

/// Execs by verdict (all and per unit), the cache, hashing and the decision latency.
fn render_execs(out: &mut String, s: &EngineStatus) {
    let _ = writeln!(
        out,
        "# HELP driftlock_execs_total Execs judged in the armed units, by verdict.\n# TYPE driftlock_execs_total counter"
    );
    // Units that are gone still count: these are counters, and must never fall.
    let retired = s.stats.retired;
    let (mut allow, mut deny, mut would) = (retired.allowed, retired.denied, retired.would_deny);
    for u in &s.units {
        allow += u.counters.allowed;
        deny += u.counters.denied;
        would += u.counters.would_deny;
    }
    let _ = writeln!(out, "driftlock_execs_total{{verdict=\"allow\"}} {allow}");
    let _ = writeln!(out, "driftlock_execs_total{{verdict=\"deny\"}} {deny}");
    let _ = writeln!(
        out,
        "driftlock_execs_total{{verdict=\"would-deny\"}} {would}"
    );
    section(
        out,
        "driftlock_unit_execs_total",
        "counter",
        "Execs judged per armed unit, by verdict.",
        s.units
            .iter()
            .flat_map(|u| {
                let id = label(&u.id);
                [
                    format!("{{unit=\"{id}\",verdict=\"allow\"}} {}", u.counters.allowed),
                    format!("{{unit=\"{id}\",verdict=\"deny\"}} {}", u.counters.denied),
                    format!(
                        "{{unit=\"{id}\",verdict=\"would-deny\"}} {}",
                        u.counters.would_deny
                    ),
                ]
            })
            .collect(),
    );
    let hits: u64 = retired.cache_hits + s.units.iter().map(|u| u.cache.hits).sum::<u64>();
    let misses: u64 = retired.cache_misses + s.units.iter().map(|u| u.cache.misses).sum::<u64>();
    section(
        out,
        "driftlock_cache_hits_total",
        "counter",
        "Execs answered from the verdict cache.",
        vec![format!(" {hits}")],
    );
    section(
        out,
        "driftlock_cache_misses_total",
        "counter",
        "Execs that needed hashing.",
        vec![format!(" {misses}")],
    );
    section(
        out,
        "driftlock_hash_bytes_total",
        "counter",
        "Bytes hashed at exec time.",
        vec![format!(" {}", s.stats.hashed_bytes)],
    );
    section(
        out,
        "driftlock_hash_seconds_total",
        "counter",
        "Time spent hashing at exec time.",
        vec![format!(" {}", s.stats.hash_seconds)],
    );
    let mut cumulative = 0;
    let mut lines = Vec::new();
    for (i, count) in s.stats.latency_buckets.iter().enumerate() {
        cumulative += count;
        let le = LATENCY_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        lines.push(format!("_bucket{{le=\"{le}\"}} {cumulative}"));
    }
    lines.push(format!("_sum {}", s.stats.latency_seconds));
    lines.push(format!("_count {cumulative}"));
    section(
        out,
        "driftlock_decision_latency_seconds",
        "histogram",
        "Time from reading a permission event to answering it.",
        lines,
    );
}

/// The kernel's events, the denials by reason, the loader checks, the armed units.
fn render_events(out: &mut String, s: &EngineStatus) {
    section(
        out,
        "driftlock_events_total",
        "counter",
        "fanotify events read, by kind.",
        vec![
            format!("{{kind=\"exec-permission\"}} {}", s.stats.permission_events),
            format!("{{kind=\"exec-notice\"}} {}", s.stats.exec_notices),
            format!("{{kind=\"open-permission\"}} {}", s.stats.open_events),
            format!("{{kind=\"close-write\"}} {}", s.stats.close_writes),
        ],
    );
    section(
        out,
        "driftlock_queue_overflows_total",
        "counter",
        "fanotify queue overflows (caches flushed).",
        vec![format!(" {}", s.stats.overflows)],
    );
    section(
        out,
        "driftlock_unanswered_drops_total",
        "counter",
        "Permission events answered by drop (a bug if nonzero).",
        vec![format!(" {}", s.stats.unanswered_drops)],
    );
    section(
        out,
        "driftlock_kernel_allowed_files_total",
        "counter",
        "Files on immutable filesystems whose later execs the kernel allows without an event.",
        vec![format!(" {}", s.stats.kernel_allowed_files)],
    );
    // Every (verdict, reason) pair is always present, at zero if need be, so that a rate
    // or an alert on one reason works before its first denial.
    section(
        out,
        "driftlock_denials_total",
        "counter",
        "Denials (enforce) and would-denials (audit), by the reason the rule gave.",
        crate::verdict::Reason::ALL
            .iter()
            .filter(|r| **r != crate::verdict::Reason::InBaseline)
            .flat_map(|r| {
                let name = r.as_str();
                let n =
                    |m: &std::collections::BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
                [
                    format!(
                        "{{verdict=\"deny\",reason=\"{name}\",rule=\"{}\"}} {}",
                        r.rule(),
                        n(&s.stats.denied_by_reason)
                    ),
                    format!(
                        "{{verdict=\"would-deny\",reason=\"{name}\",rule=\"{}\"}} {}",
                        r.rule(),
                        n(&s.stats.would_deny_by_reason)
                    ),
                ]
            })
            .collect(),
    );
    section(
        out,
        "driftlock_loader_checks_total",
        "counter",
        "Loader execs whose thread was asked what it executes.",
        vec![format!(" {}", s.stats.loader_checks)],
    );
    section(
        out,
        "driftlock_loader_not_blocked_looks_total",
        "counter",
        "Looks at a loader exec's thread that found it not yet blocked (it was looked at again).",
        vec![format!(" {}", s.stats.loader_not_blocked_looks)],
    );
    section(
        out,
        "driftlock_loader_waits_total",
        "counter",
        "Loader checks that waited off the event path for their thread to block.",
        vec![format!(" {}", s.stats.loader_waits)],
    );
    section(
        out,
        "driftlock_loader_wait_max_seconds",
        "gauge",
        "Longest wait of one loader check for its thread to block.",
        vec![format!(" {}", s.stats.loader_wait_max_us as f64 / 1e6)],
    );
    section(
        out,
        "driftlock_armed_units",
        "gauge",
        "Armed units (containers).",
        vec![format!(" {}", s.units.len())],
    );
}

/// Arms, the hash pool, the audit queue and the loop's health (`(loop age, watchdog)`).
fn render_daemon(
    out: &mut String,
    s: &EngineStatus,
    armer: &Armer,
    audit: &AuditCounters,
    (loop_age, watchdog): (f64, bool),
) {
    use std::sync::atomic::Ordering::Relaxed;
    section(
        out,
        "driftlock_fail_open_containers_total",
        "counter",
        "Containers that started unprotected because their hook could not reach the daemon (fail-open).",
        vec![format!(" {}", armer.stats.fail_open.load(Relaxed))],
    );
    let armed = armer.stats.armed.load(Relaxed);
    section(
        out,
        "driftlock_arms_total",
        "counter",
        "Arm requests, by result.",
        vec![
            format!("{{result=\"ok\"}} {armed}"),
            format!("{{result=\"error\"}} {}", armer.stats.failed.load(Relaxed)),
        ],
    );
    section(
        out,
        "driftlock_arm_seconds_total",
        "counter",
        "Time spent arming (successful arms).",
        vec![format!(
            " {}",
            armer.stats.micros.load(Relaxed) as f64 / 1e6
        )],
    );
    section(
        out,
        "driftlock_in_flight",
        "gauge",
        "Files being hashed for waiting execs.",
        vec![format!(" {}", s.in_flight)],
    );
    section(
        out,
        "driftlock_audit_queue",
        "gauge",
        "Records waiting for the audit writer.",
        vec![format!(" {}", audit.queued.load(Relaxed))],
    );
    section(
        out,
        "driftlock_audit_dropped_total",
        "counter",
        "Records dropped because the audit queue was full.",
        vec![format!(" {}", audit.dropped.load(Relaxed))],
    );
    section(
        out,
        "driftlock_event_loop_age_seconds",
        "gauge",
        "Seconds since the event loop last iterated (at least once a second when healthy).",
        vec![format!(" {loop_age}")],
    );
    section(
        out,
        "driftlock_watchdog_enabled",
        "gauge",
        "1 if systemd's watchdog is fed by the event loop.",
        vec![format!(" {}", u8::from(watchdog))],
    );
}

pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
