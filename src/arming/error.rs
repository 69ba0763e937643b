//! Why arming, or an explain, failed.

use super::*;

/// Why an arm request failed.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// Bad id.
    #[error("invalid unit id {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - : @")]
    BadId(String),
    /// A path field is not in the escaped form or not absolute.
    #[error("invalid {field}: {reason}")]
    BadPath {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The container process is gone.
    #[error("container process {0} does not exist (did the container exit?)")]
    NoProcess(i32),
    /// A path does not exist or cannot be resolved.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// statx failed.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: KernelError,
    },
    /// Mount table.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// Marks.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Baseline.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state directory cannot be written (full, read-only, quota): the unit is not
    /// armed, since its baseline or its record (which a restart re-arms from) would be lost.
    #[error(
        "{0}; the unit was not armed: the state directory must be writable (free space or remount it read-write)"
    )]
    StateDir(#[source] StoreError),
    /// `vm.memfd_noexec` could not be set.
    #[error("cannot block fileless execution: {0}")]
    Memfd(#[source] KernelError),
    /// The image's layers could not be snapshotted on their own.
    #[error(
        "cannot snapshot the image's layers: {0}; a baseline is never taken of a container's writable layer"
    )]
    Layers(String),
    /// A restarted or re-armed container without image layers has lost its baseline.
    #[error(
        "the stored baseline {key} of unit {id:?} is gone; a rootfs without image layers is never snapshotted again once its container has run (it may hold what the container wrote): restore the baseline file or re-create the container"
    )]
    BaselineGone {
        /// The unit.
        id: String,
        /// The store key (escaped).
        key: String,
    },
    /// Engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Why `explain` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No such unit.
    #[error("no armed unit with id {0:?}")]
    UnknownId(String),
    /// The path is not in the escaped form.
    #[error("invalid path: {0}")]
    BadPath(String),
    /// The file could not be opened (as the container sees it).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path (escaped).
        path: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The file could not be hashed.
    #[error("cannot hash {path}: {source}")]
    Hash {
        /// The path (escaped).
        path: String,
        /// The error.
        #[source]
        source: crate::baseline::HashError,
    },
    /// The candidate configuration could not be read.
    #[error("the candidate configuration: {0}")]
    Candidate(String),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Classifies a store error: a state directory that cannot be written gets its own
/// message, so an operator sees at once what to fix.
pub(super) fn state_dir_error(e: StoreError) -> ArmError {
    let unwritable = |source: &std::io::Error| {
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EACCES | libc::EPERM)
        )
    };
    match e {
        StoreError::Io { ref source, .. } if unwritable(source) => ArmError::StateDir(e),
        e => ArmError::Store(e),
    }
}
