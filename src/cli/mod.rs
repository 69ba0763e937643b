//! The command line: argument definitions and dispatch (here) and the commands behind
//! them (`commands`).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::Mode;
use crate::baseline::{Baseline, FormatError, format, store::write_atomic};
use crate::daemon::{DaemonConfig, DaemonError};
use crate::escape::escape_bytes;
use crate::ipc::client::{ClientError, request_until};
use crate::ipc::{ArmRequest, Reply, Request};

mod args;
mod commands;
mod daemon_args;
mod error;
mod node;
mod units;
pub use args::*;
use commands::*;
pub use daemon_args::*;
pub use error::{CliError, usage_error_json};
use node::*;
use units::*;

impl Cli {
    /// The command asked for JSON output: its errors are printed as JSON too.
    pub fn json_output(&self) -> bool {
        match &self.command {
            Command::Status(a) => a.json,
            Command::Mode(a) => a.json,
            Command::Explain(a) => a.json,
            Command::Doctor(a) => a.json,
            Command::Disarm(a) => a.json,
            Command::Arm(a) => a.json,
            Command::GateUnpin(a) => a.json,
            Command::Tune(a) => a.json,
            Command::Evidence(
                EvidenceCommand::List { json, .. }
                | EvidenceCommand::Show { json, .. }
                | EvidenceCommand::Export { json, .. },
            ) => *json,
            Command::Baseline(BaselineCommand::Snapshot { json, .. }) => *json,
            Command::Config(ConfigCommand::Check { json, .. }) => *json,
            Command::Baseline(BaselineCommand::Show { json, .. })
            | Command::Baseline(BaselineCommand::Diff { json, .. }) => *json,
            _ => false,
        }
    }

    /// The log level in force: the flag, else (for the daemon) the configuration file's
    /// `log_level`, else `info`. A broken file is reported when the daemon loads it.
    pub fn effective_log_level(&self) -> String {
        if let Some(l) = &self.log_level {
            return l.clone();
        }
        if let Command::Daemon(a) = &self.command {
            let path = a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG));
            if let Ok(c) = crate::config::Config::load(&path) {
                if let Some(l) = c.log_level {
                    return l;
                }
            }
        }
        "info".into()
    }
}

/// Runs a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Daemon(a) => {
            let (config, policy, path) = a.resolve()?;
            crate::daemon::run(config, policy, path)?;
            Ok(0)
        }
        Command::Evidence(e) => evidence(e),
        Command::Explain(a) => explain_cmd(a),
        Command::Tune(a) => tune_cmd(a),
        Command::Config(ConfigCommand::Check { file, json }) => config_check(&file, json),
        Command::Arm(a) => arm(a),
        Command::Disarm(a) => disarm_cmd(a),
        Command::Mode(a) => mode_cmd(a),
        Command::Supervise(a) => supervise_cmd(a),
        Command::Status(a) => status_cmd(a),
        Command::Doctor(a) => doctor_cmd(a),
        Command::Baseline(b) => baseline(b),
        Command::Hook(a) => hook_cmd(a),
        Command::BaseSpec(a) => base_spec_cmd(a),
        Command::GateUnpin(a) => gate_unpin_cmd(a),
    }
}
