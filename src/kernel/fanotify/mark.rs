//! What a mark is: its kind, its events, its path.

use super::*;

/// What a mark is placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// The whole filesystem (superblock): every mount of it, in every namespace.
    Filesystem,
    /// One mount only (a bind mount of a host directory shares the host's superblock).
    Mount,
}

impl std::fmt::Display for MarkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MarkKind::Filesystem => "filesystem",
            MarkKind::Mount => "mount",
        })
    }
}

/// Which events a mark asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMask {
    /// `FAN_OPEN_EXEC_PERM`: every exec waits for our answer.
    Enforce,
    /// `FAN_OPEN_EXEC` notifications: audit mode records what enforce would deny and never
    /// holds an exec, so an audit rollout cannot stall a node.
    Audit,
    /// Enforce plus `FAN_OPEN_PERM`: every open waits for our answer too, so reads of
    /// scripts by interpreters and opens of shared objects can be judged (the opt-in script
    /// and library controls).
    EnforceWithOpens,
    /// Audit plus `FAN_OPEN` notifications: opens of shared objects are recorded, never held
    /// (library control in audit mode).
    AuditWithOpens,
}

impl EventMask {
    pub(super) fn bits(self) -> MaskFlags {
        // FAN_CLOSE_WRITE in both modes: every writer, including one writing through a
        // shared mmap (which on tmpfs changes no timestamp), must close before the file can
        // be executed (exec fails with ETXTBSY while a writer is open), and its close event
        // is queued before the exec's event, so the cache sees it first.
        match self {
            EventMask::Enforce => MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE,
            EventMask::Audit => MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_CLOSE_WRITE,
            EventMask::EnforceWithOpens => {
                MaskFlags::FAN_OPEN_EXEC_PERM
                    | MaskFlags::FAN_OPEN_PERM
                    | MaskFlags::FAN_CLOSE_WRITE
            }
            EventMask::AuditWithOpens => {
                MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_OPEN | MaskFlags::FAN_CLOSE_WRITE
            }
        }
    }
}

/// A mark request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// A mount point in the daemon's mount namespace.
    pub path: PathBuf,
    /// Filesystem or mount mark.
    pub kind: MarkKind,
    /// Events wanted.
    pub mask: EventMask,
}
