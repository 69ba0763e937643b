//! What the gate's maps and ring hold, in Rust terms: a file's key, a mode, the memory rules
//! of a scope, a refusal event; and its errors.

use super::*;

/// A file as the kernel keys it: the superblock's `s_dev` (`major << 20 | minor`) and the
/// inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FileKey {
    /// Kernel device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// The kernel's encoding of a device number from glibc's (`makedev`).
pub fn kernel_dev(glibc_dev: u64) -> u64 {
    let major = libc::major(glibc_dev) as u64;
    let minor = libc::minor(glibc_dev) as u64;
    (major << 20) | minor
}

/// How the gate treats a watched filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// Refuse.
    Enforce = 1,
    /// Report only.
    Audit = 2,
}

/// Which memory-only code a container's processes may not make (where the gate runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryRules {
    /// W^X on file mappings: never writable and executable at once or one after the other
    /// (off for images with a JIT runtime).
    pub wx: bool,
    /// No anonymous or memfd memory made executable (off for images with a JIT runtime or
    /// a runtime that makes closures: Python's ctypes, cffi).
    pub anon: bool,
    /// No write-open of `/proc/<pid>/mem` and no ptrace attach (code written into a
    /// process): off only for containers that run debuggers.
    pub proc_mem: bool,
    /// No exec or executable mapping of a file on a filesystem no armed unit marked (a
    /// tmpfs or overlay the container mounted in a namespace of its own, a detached
    /// mount): off for workloads that run code from mounts of their own (a rule).
    pub foreign: bool,
}

/// In `tracked` (gate.bpf.c `TRACK_STRICT`): a container's write to the volume could not be
/// recorded, so every mapping of it by its containers must be admitted.
pub(super) const TRACK_STRICT: u32 = 2;

/// A volume as one armed container's processes see it (gate.bpf.c `struct volume_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub(super) struct VolumeKey {
    pub(super) inum: u32,
    pub(super) pad: u32,
    pub(super) dev: u64,
}

/// Scope flags (gate.bpf.c `SCOPE_*`), above the mode byte.
pub(super) const SCOPE_WX: u32 = 1 << 8;

pub(super) const SCOPE_PROC_MEM: u32 = 1 << 9;

pub(super) const SCOPE_ANON: u32 = 1 << 10;

pub(super) const SCOPE_FOREIGN: u32 = 1 << 11;

impl MemoryRules {
    /// Every rule on.
    pub const STRICT: MemoryRules = MemoryRules {
        wx: true,
        anon: true,
        proc_mem: true,
        foreign: true,
    };

    pub(super) fn scope_value(self, mode: GateMode) -> u32 {
        let mut v = mode as u32;
        if self.wx {
            v |= SCOPE_WX;
        }
        if self.anon {
            v |= SCOPE_ANON;
        }
        if self.proc_mem {
            v |= SCOPE_PROC_MEM;
        }
        if self.foreign {
            v |= SCOPE_FOREIGN;
        }
        v
    }

    /// The rules both `self` and `other` keep (containers sharing a PID namespace).
    pub fn and(self, other: MemoryRules) -> MemoryRules {
        MemoryRules {
            wx: self.wx && other.wx,
            anon: self.anon && other.anon,
            proc_mem: self.proc_mem && other.proc_mem,
            foreign: self.foreign && other.foreign,
        }
    }
}

/// In [`GateEvent::detail`]: the mapping had written (copy-on-write) pages.
pub const DETAIL_WRITTEN: u32 = 1 << 16;

/// In [`GateEvent::detail`]: asked by `mprotect` (else by `mmap`).
pub const DETAIL_MPROTECT: u32 = 1 << 17;

/// In [`GateEvent::detail`]: an exec (else a mapping), for [`kind::FOREIGN`].
pub const DETAIL_EXEC: u32 = 1 << 18;

impl GateEvent {
    /// The memory refusal's detail in words (`mprotect to r-x of a rw- private mapping
    /// with written pages`); empty when there is none.
    pub fn detail_words(&self) -> String {
        match self.kind {
            kind::FOREIGN => {
                return if self.detail & DETAIL_EXEC != 0 {
                    "exec of a file on a filesystem no armed unit marked (a mount of the container's own)"
                } else {
                    "executable mapping of a file on a filesystem no armed unit marked (a mount of the container's own)"
                }
                .into();
            }
            kind::VOLUME_EXEC => {
                return "exec of a file a container wrote on a volume, not judged, that no mark saw (a copy of the volume's mount)".into();
            }
            _ => {}
        }
        if self.detail == 0 {
            return String::new();
        }
        let rwx = |bits: u32| {
            format!(
                "{}{}{}",
                if bits & 1 != 0 { 'r' } else { '-' },
                if bits & 2 != 0 { 'w' } else { '-' },
                if bits & 4 != 0 { 'x' } else { '-' }
            )
        };
        let asked = rwx(self.detail & 0xff);
        if self.detail & DETAIL_MPROTECT == 0 {
            return format!("mmap {asked}");
        }
        let before = (self.detail >> 8) & 0xff;
        format!(
            "mprotect to {asked} of a {}{} mapping{}",
            rwx(before),
            if before & 0x8 != 0 {
                " shared"
            } else {
                " private"
            },
            if self.detail & DETAIL_WRITTEN != 0 {
                " with written pages"
            } else {
                ""
            }
        )
    }
}

/// What the gate reported, by kind (`GateEvent::kind`).
pub mod kind {
    /// An executable mapping of a file not judged allowed.
    pub const MMAP: u32 = 1;
    /// `mprotect(PROT_EXEC)` of a file mapping not judged allowed.
    pub const MPROTECT: u32 = 2;
    /// An exec of a loader as the main program.
    pub const LOADER_EXEC: u32 = 3;
    /// A memfd exec'd, or mapped executable.
    pub const MEMFD: u32 = 4;
    /// A mapping writable and executable at once, or one after the other (W^X).
    pub const WX: u32 = 5;
    /// Anonymous memory made executable.
    pub const ANON_EXEC: u32 = 6;
    /// `/proc/<pid>/mem` opened for writing.
    pub const PROC_MEM: u32 = 7;
    /// Another process attached with ptrace (or PTRACE_TRACEME).
    pub const PTRACE: u32 = 8;
    /// An exec or executable mapping of a file on a filesystem no armed unit marked (the
    /// container's own mount in a namespace of its own, a detached mount).
    pub const FOREIGN: u32 = 9;
    /// An exec of a file a container wrote on a volume, not judged allowed, that no mark
    /// saw (through a copy of the volume's mount in a namespace of the container's own).
    pub const VOLUME_EXEC: u32 = 10;
}

/// What the gate reported (a refused or would-be-refused mapping or loader exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateEvent {
    /// What was refused: see [`kind`].
    pub kind: u32,
    /// The unit's mode.
    pub mode: u32,
    /// The file.
    pub file: FileKey,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// Refused (enforce) or only reported (audit).
    pub denied: bool,
    /// The PID namespace (inode number) of the scope that refused it; 0 for a refusal by
    /// file.
    pub scope: u32,
    /// The process's parent, as the kernel had it.
    pub ppid: u32,
    /// What was asked, for memory refusals: the protection asked for (`PROT_*`, low byte),
    /// the mapping's `VM_*` flags before (next byte), [`DETAIL_WRITTEN`] and
    /// [`DETAIL_MPROTECT`].
    pub detail: u32,
    /// The thread's name, as the kernel had it (the process may be gone by the time the
    /// record is written).
    pub comm: [u8; 16],
}

/// Why the gate is not active.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Built without clang.
    #[error("the daemon was built without the BPF gate (clang was missing at build time)")]
    NotBuilt,
    /// No BTF.
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(String),
    /// The BPF LSM is not enabled.
    #[error("the BPF LSM is not active (add `bpf` to the lsm= boot parameter): {0}")]
    LsmInactive(String),
    /// Loading or attaching failed.
    #[error("the kernel refused the gate's {what}: {reason}")]
    Refused {
        /// Program or map.
        what: String,
        /// The error.
        reason: String,
    },
    /// bpffs.
    #[error("cannot pin the gate in {}: {reason}", dir.display())]
    Pin {
        /// The pin directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

impl GateEvent {
    /// Decodes a record as `struct gate_event` in gate.bpf.c lays it out.
    pub(super) fn parse(b: &[u8]) -> Option<GateEvent> {
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        Some(GateEvent {
            kind: u32_at(0)?,
            mode: u32_at(4)?,
            file: FileKey {
                dev: u64_at(8)?,
                ino: u64_at(16)?,
            },
            tid: u32_at(24)?,
            pid: u32_at(28)?,
            denied: u32_at(32)? != 0,
            scope: u32_at(36)?,
            ppid: u32_at(40)?,
            detail: u32_at(44)?,
            comm: b.get(48..64)?.try_into().ok()?,
        })
    }
}
