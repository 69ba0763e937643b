//! The daemon's settings and its errors.

use std::path::PathBuf;

use crate::Mode;
use crate::baseline::store::StoreError;
use crate::engine::EngineConfig;
use crate::ipc::server::ServerError;
use crate::kernel::KernelError;

/// Daemon settings (every one has a flag; defaults are embedded).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// State directory (baselines).
    pub state_dir: PathBuf,
    /// Mode for units that do not ask for one.
    pub mode: Mode,
    /// The command line set `mode`: a reload of the file does not change it.
    pub mode_pinned: bool,
    /// Also append audit records to this file (they always go to stdout).
    pub audit_log: Option<PathBuf>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Threads per snapshot (0 = one per core).
    pub snapshot_threads: usize,
    /// Set `vm.memfd_noexec=2` in the PID namespace of each container armed by pid.
    pub memfd_noexec: bool,
    /// Load (or adopt) the BPF LSM mapping gate where the kernel allows it.
    pub mapping_gate: bool,
    /// Serve Prometheus metrics here (loopback, or any with a token file).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Scrapers must send the bearer token in this file.
    pub metrics_token_file: Option<PathBuf>,
    /// Reload the configuration file when it changes.
    pub watch_config: bool,
    /// Take the fanotify group and the socket of a daemon already serving it.
    pub take_over: bool,
    /// How far a container's mode annotation counts.
    pub annotations: crate::AnnotationPolicy,
    /// Also post records to Falcosidekick here.
    pub falcosidekick: Option<crate::audit::falco::Endpoint>,
    /// Quarantine limits; `None`: keep no evidence.
    pub evidence: Option<crate::audit::evidence::Limits>,
    /// Known-bad indicators checked at snapshot.
    pub indicators: Option<crate::baseline::indicators::Indicators>,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Kernel interface.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Socket.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Baseline store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log file.
    #[error("cannot open audit log {}: {source}", path.display())]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Threads or signals.
    #[error("daemon setup failed: {0}")]
    Setup(String),
    /// The metrics endpoint.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}
