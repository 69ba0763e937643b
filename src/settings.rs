//! Daemon settings: one struct for what the command line and the configuration file may
//! set ([`Settings`], every field optional: "not given"), the defaults in one place
//! ([`defaults`]), and one resolution ([`Settings::resolve`]) into the [`DaemonConfig`] the
//! daemon runs with. Flags win over the file, the file over the defaults; all of it is
//! tested here without clap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Mode;
use crate::daemon::DaemonConfig;
use crate::engine::EngineConfig;

/// The built-in defaults (what `--help` and the README show).
pub mod defaults {
    use std::time::Duration;

    /// The daemon's socket.
    pub const SOCKET: &str = crate::DEFAULT_SOCKET;
    /// The state directory.
    pub const STATE_DIR: &str = crate::DEFAULT_STATE_DIR;
    /// Mode for containers with no annotation or rule.
    pub const MODE: crate::Mode = crate::Mode::Enforce;
    /// Audit records to stdout only.
    pub const AUDIT_LOG: &str = "-";
    /// How long an exec may wait for its file to be hashed.
    pub const HASH_TIMEOUT: Duration = crate::engine::DEFAULT_HASH_TIMEOUT;
    /// Files cached per container.
    pub const CACHE_CAPACITY: usize = crate::engine::DEFAULT_CACHE_CAPACITY;
    /// Block fileless execution in each container's PID namespace.
    pub const MEMFD_NOEXEC: bool = true;
    /// Largest program kept as evidence, MiB (0: keep none).
    pub const EVIDENCE_MAX_FILE_MB: u64 = 64;
    /// Quarantine size, MiB.
    pub const EVIDENCE_MAX_TOTAL_MB: u64 = 512;
    /// How long a loader exec may wait for its thread to be seen blocked.
    pub const LOADER_WAIT: Duration = crate::engine::DEFAULT_LOADER_WAIT;
    /// Interpreters of the script control.
    pub const INTERPRETERS: &[&str] = &[
        "sh", "ash", "dash", "bash", "zsh", "ksh", "python*", "perl*", "ruby*", "node", "php*",
        "lua*", "tclsh*",
    ];

    pub use crate::engine::threads;
}

/// Every daemon setting as one source gives it (`None`: not given there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Default mode.
    pub mode: Option<Mode>,
    /// Audit log file (`-`: stdout only).
    pub audit_log: Option<PathBuf>,
    /// Hashing threads (0: one per core).
    pub hash_workers: Option<usize>,
    /// Hash time budget, ms.
    pub hash_timeout_ms: Option<u64>,
    /// Files cached per container.
    pub cache_capacity: Option<usize>,
    /// Threads per snapshot (0: one per core).
    pub snapshot_threads: Option<usize>,
    /// Block fileless execution.
    pub memfd_noexec: Option<bool>,
    /// The BPF LSM mapping gate.
    pub mapping_gate: Option<bool>,
    /// Script control on.
    pub script_control: Option<bool>,
    /// Library control on.
    pub library_control: Option<bool>,
    /// Interpreters of the script control.
    pub interpreters: Option<Vec<String>>,
    /// Record allowed misses too.
    pub record_misses: Option<bool>,
    /// Metrics address (loopback, or any with a token file).
    pub metrics_addr: Option<SocketAddr>,
    /// File holding the bearer token metrics scrapers must send.
    pub metrics_token_file: Option<PathBuf>,
    /// Reload the configuration file when it changes (a Kubernetes ConfigMap).
    pub watch_config: Option<bool>,
    /// How far a container's mode annotation counts.
    pub annotations: Option<crate::AnnotationPolicy>,
    /// Falcosidekick URL.
    pub falcosidekick_url: Option<String>,
    /// Known-bad indicator list.
    pub indicators: Option<PathBuf>,
    /// Largest evidence file, MiB.
    pub evidence_max_file_mb: Option<u64>,
    /// Quarantine size, MiB.
    pub evidence_max_total_mb: Option<u64>,
}

impl From<&crate::config::Config> for Settings {
    /// The daemon settings a configuration file gives (its policy rules aside).
    fn from(c: &crate::config::Config) -> Settings {
        Settings {
            socket: c.socket.clone(),
            state_dir: c.state_dir.clone(),
            mode: c.mode,
            audit_log: c.audit_log.clone(),
            hash_workers: c.hash_workers,
            hash_timeout_ms: c.hash_timeout_ms,
            cache_capacity: c.cache_capacity,
            snapshot_threads: c.snapshot_threads,
            memfd_noexec: c.memfd_noexec,
            mapping_gate: c.mapping_gate,
            script_control: c.script_control,
            library_control: c.library_control,
            interpreters: c.interpreters.clone(),
            record_misses: c.record_misses,
            metrics_addr: c.metrics_addr,
            metrics_token_file: c.metrics_token_file.clone(),
            annotations: c.annotations,
            watch_config: c.watch_config,
            falcosidekick_url: c.falcosidekick_url.clone(),
            indicators: c.indicators.clone(),
            evidence_max_file_mb: c.evidence_max_file_mb,
            evidence_max_total_mb: c.evidence_max_total_mb,
        }
    }
}

/// Why settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The metrics address is not a loopback address.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The indicator list cannot be read.
    #[error(transparent)]
    Indicators(#[from] crate::baseline::indicators::IndicatorError),
    /// The Falcosidekick URL is not usable.
    #[error(transparent)]
    Falcosidekick(#[from] crate::audit::falco::EndpointError),
}

impl Settings {
    /// These settings, with `lower`'s where these give none.
    pub fn over(self, lower: Settings) -> Settings {
        Settings {
            socket: self.socket.or(lower.socket),
            state_dir: self.state_dir.or(lower.state_dir),
            mode: self.mode.or(lower.mode),
            audit_log: self.audit_log.or(lower.audit_log),
            hash_workers: self.hash_workers.or(lower.hash_workers),
            hash_timeout_ms: self.hash_timeout_ms.or(lower.hash_timeout_ms),
            cache_capacity: self.cache_capacity.or(lower.cache_capacity),
            snapshot_threads: self.snapshot_threads.or(lower.snapshot_threads),
            memfd_noexec: self.memfd_noexec.or(lower.memfd_noexec),
            mapping_gate: self.mapping_gate.or(lower.mapping_gate),
            script_control: self.script_control.or(lower.script_control),
            library_control: self.library_control.or(lower.library_control),
            interpreters: self.interpreters.or(lower.interpreters),
            record_misses: self.record_misses.or(lower.record_misses),
            metrics_addr: self.metrics_addr.or(lower.metrics_addr),
            metrics_token_file: self.metrics_token_file.or(lower.metrics_token_file),
            watch_config: self.watch_config.or(lower.watch_config),
            annotations: self.annotations.or(lower.annotations),
            falcosidekick_url: self.falcosidekick_url.or(lower.falcosidekick_url),
            indicators: self.indicators.or(lower.indicators),
            evidence_max_file_mb: self.evidence_max_file_mb.or(lower.evidence_max_file_mb),
            evidence_max_total_mb: self.evidence_max_total_mb.or(lower.evidence_max_total_mb),
        }
    }

    /// Fills in the defaults and checks what can be checked before the daemon starts.
    /// `_debug_logging`: the log level (it changes nothing that is recorded).
    pub fn resolve(self, _debug_logging: bool) -> Result<DaemonConfig, SettingsError> {
        use defaults as d;
        if let Some(addr) = self.metrics_addr {
            if !addr.ip().is_loopback() && self.metrics_token_file.is_none() {
                return Err(crate::metrics::MetricsError::NotLoopback(addr).into());
            }
        }
        let audit_log = self.audit_log.unwrap_or_else(|| d::AUDIT_LOG.into());
        let interpreters = match self.script_control {
            Some(true) => self
                .interpreters
                .unwrap_or_else(|| d::INTERPRETERS.iter().map(|s| s.to_string()).collect())
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            _ => Vec::new(),
        };
        let evidence_file_mb = self.evidence_max_file_mb.unwrap_or(d::EVIDENCE_MAX_FILE_MB);
        let evidence_total_mb = self
            .evidence_max_total_mb
            .unwrap_or(d::EVIDENCE_MAX_TOTAL_MB);
        Ok(DaemonConfig {
            socket: self.socket.unwrap_or_else(|| d::SOCKET.into()),
            state_dir: self.state_dir.unwrap_or_else(|| d::STATE_DIR.into()),
            mode: self.mode.unwrap_or(d::MODE),
            mode_pinned: false,
            audit_log: (audit_log != Path::new("-")).then_some(audit_log),
            engine: EngineConfig {
                hash_workers: d::threads(self.hash_workers.unwrap_or(0)),
                hash_timeout: self
                    .hash_timeout_ms
                    .map_or(d::HASH_TIMEOUT, |ms| Duration::from_millis(ms.max(1))),
                cache_capacity: self.cache_capacity.unwrap_or(d::CACHE_CAPACITY),
                // Logging never changes what is recorded: allowed misses are recorded only
                // when asked for (they would use up the unit's record budget).
                record_misses: self.record_misses.unwrap_or(false),
                interpreters,
                loader_wait: d::LOADER_WAIT,
                library_control: self.library_control.unwrap_or(false),
            },
            snapshot_threads: self.snapshot_threads.unwrap_or(0),
            memfd_noexec: self.memfd_noexec.unwrap_or(d::MEMFD_NOEXEC),
            mapping_gate: self.mapping_gate.unwrap_or(true),
            metrics_addr: self.metrics_addr,
            metrics_token_file: self.metrics_token_file,
            watch_config: self.watch_config.unwrap_or(false),
            annotations: self.annotations.unwrap_or_default(),
            take_over: false,
            indicators: match self.indicators {
                Some(p) => Some(crate::baseline::indicators::Indicators::load(&p)?),
                None => None,
            },
            evidence: (evidence_file_mb > 0).then_some(crate::audit::evidence::Limits {
                max_file: evidence_file_mb << 20,
                max_total: evidence_total_mb << 20,
                max_files: crate::audit::evidence::DEFAULT_MAX_FILES,
            }),
            falcosidekick: match self.falcosidekick_url {
                Some(url) => Some(url.parse()?),
                None => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_nothing_gives() {
        let c = Settings::default().resolve(false).unwrap();
        assert_eq!(c.socket, Path::new(defaults::SOCKET));
        assert_eq!(c.state_dir, Path::new(defaults::STATE_DIR));
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.audit_log, None);
        assert_eq!(c.engine.hash_timeout, defaults::HASH_TIMEOUT);
        assert_eq!(c.engine.cache_capacity, defaults::CACHE_CAPACITY);
        assert_eq!(c.engine.hash_workers, defaults::threads(0));
        assert!(
            c.engine.hash_workers >= 1,
            "0 means one per core, never none"
        );
        assert!(c.engine.interpreters.is_empty(), "script control is opt-in");
        assert!(!c.engine.record_misses);
        assert!(c.memfd_noexec);
        assert_eq!(
            c.evidence.map(|l| (l.max_file, l.max_total)),
            Some((64 << 20, 512 << 20))
        );
        // The engine's own defaults are the same numbers.
        let e = EngineConfig::default();
        assert_eq!(
            (e.hash_timeout, e.cache_capacity, e.loader_wait),
            (
                c.engine.hash_timeout,
                c.engine.cache_capacity,
                c.engine.loader_wait
            )
        );
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let flags = Settings {
            socket: Some("/flag.sock".into()),
            hash_workers: Some(3),
            ..Default::default()
        };
        let file = Settings {
            socket: Some("/file.sock".into()),
            state_dir: Some("/file-state".into()),
            mode: Some(Mode::Audit),
            hash_timeout_ms: Some(0),
            script_control: Some(true),
            record_misses: Some(true),
            evidence_max_file_mb: Some(0),
            ..Default::default()
        };
        let c = flags.over(file).resolve(false).unwrap();
        assert_eq!(c.socket, Path::new("/flag.sock"));
        assert_eq!(c.state_dir, Path::new("/file-state"));
        assert_eq!(c.mode, Mode::Audit);
        assert_eq!(c.engine.hash_workers, 3);
        assert_eq!(c.engine.hash_timeout, Duration::from_millis(1));
        assert_eq!(c.engine.interpreters.len(), defaults::INTERPRETERS.len());
        assert!(c.engine.record_misses);
        assert!(c.evidence.is_none(), "0 MiB keeps no evidence");
    }

    #[test]
    fn debug_logging_changes_no_record_and_bad_values_are_refused() {
        assert!(
            !Settings::default()
                .resolve(true)
                .unwrap()
                .engine
                .record_misses,
            "log_level = debug must not turn on record_misses"
        );
        let e = Settings {
            metrics_addr: Some("0.0.0.0:9464".parse().unwrap()),
            ..Default::default()
        }
        .resolve(false)
        .unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let c = Settings {
            metrics_addr: Some("0.0.0.0:9464".parse().unwrap()),
            metrics_token_file: Some("/run/secrets/token".into()),
            ..Default::default()
        }
        .resolve(false)
        .unwrap();
        assert_eq!(
            c.metrics_token_file.as_deref(),
            Some(Path::new("/run/secrets/token")),
            "any address serves metrics once scrapers must authenticate"
        );
        let e = Settings {
            falcosidekick_url: Some("https://x/".into()),
            ..Default::default()
        }
        .resolve(false)
        .unwrap_err();
        assert!(matches!(e, SettingsError::Falcosidekick(_)), "{e}");
    }
}
