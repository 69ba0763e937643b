//! The node's part of the exposition: the build, the kernel's features, the mapping gate,
//! re-arms, the configuration in force and what reached Falcosidekick.

use super::render::{label, section};
use super::*;

/// The build, the kernel's features, the mapping gate, re-arms, and what the engine did
/// without hashing or on its budgets.
pub(super) fn render_node(out: &mut String, s: &EngineStatus, armer: &Armer) {
    section(
        out,
        "driftlock_build_info",
        "gauge",
        "The running daemon's version and source revision (always 1).",
        vec![format!(
            "{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            option_env!("DRIFTLOCK_REVISION").unwrap_or("unknown")
        )],
    );
    section(
        out,
        "driftlock_kernel_feature",
        "gauge",
        "1 if the kernel offers the feature driftlock uses (probed at start), 0 if not: protection is then degraded (see `driftlock status` or `driftlock doctor`).",
        armer
            .features
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .features
            .iter()
            .map(|f| {
                format!(
                    "{{feature=\"{}\"}} {}",
                    label(&f.name),
                    u8::from(f.available)
                )
            })
            .collect(),
    );
    section(
        out,
        "driftlock_mapping_gate_active",
        "gauge",
        "1 if the BPF LSM mapping gate is active (executable mappings judged in the kernel).",
        vec![format!(
            " {}",
            u8::from(armer.mapping_gate_state.starts_with("active"))
        )],
    );
    section(
        out,
        "driftlock_mapping_total",
        "counter",
        "Executable mappings of armed files the mapping gate checked, refused, or would refuse (audit).",
        vec![
            format!("{{result=\"checked\"}} {}", s.stats.mapping_checked),
            format!("{{result=\"refused\"}} {}", s.stats.mapping_refused),
            format!(
                "{{result=\"would-refuse\"}} {}",
                s.stats.mapping_would_refuse
            ),
        ],
    );
    section(
        out,
        "driftlock_rearm_pending_units",
        "gauge",
        "Recorded units whose re-arm after a restart failed and is being retried.",
        vec![format!(" {}", armer.pending_units().len())],
    );
    section(
        out,
        "driftlock_denied_unhashed_total",
        "counter",
        "Files denied without hashing: no executable of their image and no allow entry has their size.",
        vec![format!(" {}", s.stats.denied_unhashed)],
    );
    section(
        out,
        "driftlock_unattributed_denied_total",
        "counter",
        "Execs on a marked filesystem that no unit claims, denied.",
        vec![format!(" {}", s.stats.unattributed_denied)],
    );
    section(
        out,
        "driftlock_hash_backlog_total",
        "counter",
        "Misses that waited in their unit's backlog (the unit held its share of the hash pool), and misses denied because that backlog was full.",
        vec![
            format!("{{result=\"queued\"}} {}", s.stats.hash_backlogged),
            format!("{{result=\"full\"}} {}", s.stats.hash_backlog_full),
        ],
    );
    section(
        out,
        "driftlock_records_suppressed_total",
        "counter",
        "Records a unit's record budget held back (summarized in \"suppressed\" lines).",
        vec![format!(" {}", s.stats.records_suppressed)],
    );
}

/// The configuration in force and its reloads, and what reached Falcosidekick.
pub(super) fn render_delivery(out: &mut String, armer: &Armer, audit: &AuditCounters) {
    use std::sync::atomic::Ordering::Relaxed;
    let digest = armer
        .config_digest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    section(
        out,
        "driftlock_config_info",
        "gauge",
        "The configuration in force: a digest of the file and its drop-ins, \"none\" without a file (always 1).",
        vec![format!("{{digest=\"{}\"}} 1", label(&digest))],
    );
    section(
        out,
        "driftlock_config_reloads_total",
        "counter",
        "Reloads of the configuration file (SIGHUP, --watch-config), by result (error: the running configuration was kept, or a drop-in was refused).",
        vec![
            format!("{{result=\"ok\"}} {}", armer.stats.reloads.load(Relaxed)),
            format!(
                "{{result=\"error\"}} {}",
                armer.stats.reload_errors.load(Relaxed)
            ),
        ],
    );
    section(
        out,
        "driftlock_falcosidekick_alerts_total",
        "counter",
        "Alerts posted to Falcosidekick, by result (failed: another answer than 2xx, or no connection; dropped: its queue was full).",
        vec![
            format!("{{result=\"sent\"}} {}", audit.falco_sent.load(Relaxed)),
            format!("{{result=\"failed\"}} {}", audit.falco_failed.load(Relaxed)),
            format!(
                "{{result=\"dropped\"}} {}",
                audit.falco_dropped.load(Relaxed)
            ),
        ],
    );
}
