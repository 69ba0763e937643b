//! What can go wrong on the command line, and its exit status.

use super::*;

/// Errors of CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Running the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A baseline file.
    #[error("{}: {source}", path.display())]
    Baseline {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The daemon's settings.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The quarantine.
    #[error(transparent)]
    Evidence(#[from] crate::audit::evidence::EvidenceError),
    /// A known-bad indicator list.
    #[error(transparent)]
    Indicators(#[from] crate::baseline::indicators::IndicatorError),
    /// Taking a snapshot.
    #[error(transparent)]
    Snapshot(#[from] crate::baseline::SnapshotError),
    /// Writing a file atomically.
    #[error(transparent)]
    Store(#[from] crate::baseline::store::StoreError),
    /// No evidence under this id.
    #[error("no evidence with id {0}")]
    NoEvidence(String),
    /// No armed container matches (`--pod`).
    #[error("{0}")]
    NoSuchUnit(String),
    /// The daemon answered with a reply of another request.
    #[error("unexpected reply from the daemon: {0}")]
    UnexpectedReply(String),
    /// Arguments clap cannot check alone.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit status for this error: 1 a failure, 3 the daemon cannot be reached, 4 the
    /// daemon refused (or no such container or evidence), 5 an invalid configuration.
    /// (0 is success, 1 also a negative answer, 2 a usage error, from clap.)
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(ClientError::Refused { .. })
            | CliError::NoEvidence(_)
            | CliError::NoSuchUnit(_) => 4,
            CliError::Client(_) => 3,
            CliError::Config(_) | CliError::Settings(_) | CliError::Indicators(_) => 5,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The error as a `--json` command prints it on stdout: `{"ok": false, "error": …,
    /// "exit": …}`, and the daemon's error code where it gave one.
    pub fn to_json(&self) -> String {
        let code = match self {
            CliError::Client(ClientError::Refused { code, .. }) => *code,
            _ => None,
        };
        let mut v = serde_json::json!({
            "ok": false,
            "error": self.to_string(),
            "exit": self.exit_code(),
        });
        if let Some(code) = code.and_then(|c| serde_json::to_value(c).ok()) {
            v["code"] = code;
        }
        v.to_string()
    }
}

/// A usage error of the command line (clap's, exit 2) as the JSON error every `--json`
/// command prints, for scripts that parse stdout whatever happened.
pub fn usage_error_json(err: &clap::Error) -> String {
    use clap::error::ErrorKind;
    let message = err.to_string();
    // clap's message starts "error: " and ends with a usage hint: the first line says it.
    let first = message
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string();
    let kind = match err.kind() {
        ErrorKind::UnknownArgument => "unknown-argument",
        ErrorKind::MissingRequiredArgument => "missing-argument",
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => "invalid-value",
        _ => "usage",
    };
    serde_json::json!({"ok": false, "error": first, "exit": 2, "code": kind}).to_string()
}
