//! What can go wrong in the runtime wrapper.

use super::wrapper::*;
use std::path::PathBuf;

/// Errors of the wrapper.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No real runc found.
    #[error(
        "cannot find the real runc (set DRIFTLOCK_RUNC or RUNC= in {CONFIG_FILE}); looked in {0}"
    )]
    NoRunc(String),
    /// The bundle's config could not be read or written.
    #[error("bundle config {}: {reason}", path.display())]
    Config {
        /// config.json.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bundle's config has no room for hooks.
    #[error("bundle config {}: {source}", path.display())]
    Patch {
        /// config.json.
        path: PathBuf,
        /// Why.
        #[source]
        source: PatchError,
    },
    /// The settings file is malformed.
    #[error("{} line {line}: {reason}", file.display())]
    Settings {
        /// The file read (`/etc/driftlock/runtime.conf` or `DRIFTLOCK_RUNTIME_CONF`).
        file: PathBuf,
        /// Line.
        line: usize,
        /// Why.
        #[source]
        reason: SettingError,
    },
    /// An environment variable holds a bad value.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Why.
        #[source]
        reason: SettingError,
    },
    /// The configured runc is this wrapper (or runs it again): every call would exec
    /// itself forever.
    #[error(
        "{0} is driftlock-runtime itself, not runc: set RUNC= in {CONFIG_FILE} (or DRIFTLOCK_RUNC) to the real runc, e.g. /usr/sbin/runc"
    )]
    RuncIsSelf(String),
    /// The hook binary cannot be trusted to run as root in every container's creation.
    #[error("the hook binary {}: {reason} (set DRIFTLOCK= in {CONFIG_FILE} to driftlock, owned by root and writable by root only)", path.display())]
    HookBinary {
        /// The binary.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `execv` failed.
    #[error("cannot execute {}: {source}", path.display())]
    Exec {
        /// runc.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one wrapper setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not `KEY=VALUE`.
    #[error("expected KEY=VALUE")]
    NotKeyValue,
    /// A path setting that is not absolute.
    #[error("{0} must be an absolute path")]
    NotAbsolute(String),
    /// `FAIL_OPEN` that is not a boolean.
    #[error("FAIL_OPEN must be true or false")]
    NotABool,
    /// `USER_NAMESPACES` that is neither `refuse` nor `allow`.
    #[error("USER_NAMESPACES must be refuse or allow")]
    NotRefuseOrAllow,
    /// An unknown key.
    #[error("unknown setting {0} (RUNC, DRIFTLOCK, SOCKET, FAIL_OPEN, USER_NAMESPACES)")]
    Unknown(String),
}

/// Why driftlock's hooks cannot be added to a bundle's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The document is not an object.
    #[error("config.json is not a JSON object")]
    NotAnObject,
    /// `hooks` is not an object.
    #[error("\"hooks\" is not an object")]
    HooksNotAnObject,
    /// A stage's hook list is not an array.
    #[error("\"hooks.{0}\" is not an array")]
    StageNotAnArray(&'static str),
}
