//! The mapping gate: a BPF LSM program (`bpf/gate.bpf.c`) that refuses `PROT_EXEC` mappings
//! of files whose content was not judged allowed, and execs whose main binary is a unit's
//! dynamic loader. Loaded with aya (pure Rust: no C library in the daemon, and the object's
//! CO-RE relocations are resolved against the running kernel's BTF).
//!
//! Its links and maps are pinned in bpffs, so a crashed or upgraded daemon leaves it
//! enforcing with the last map state, and the successor adopts them. Where the kernel
//! refuses BPF LSM programs (this project's CI machine does), lacks BTF or the hooks,
//! [`MappingGate::load`] says why, and the daemon runs on fanotify alone.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData};

use super::ring::RingReader;

/// The compiled gate (empty when clang was missing at build time).
// Aligned: the ELF parser reads 64-bit headers in place.
const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate.bpf.o"));

/// Programs and the LSM hooks they attach to.
const PROGRAMS: &[(&str, &str)] = &[
    ("driftlock_mmap_file", "mmap_file"),
    ("driftlock_file_mprotect", "file_mprotect"),
    ("driftlock_bprm_check", "bprm_check_security"),
    ("driftlock_file_open", "file_open"),
    ("driftlock_file_free", "file_free_security"),
    ("driftlock_path_truncate", "path_truncate"),
    ("driftlock_ptrace_access_check", "ptrace_access_check"),
    ("driftlock_ptrace_traceme", "ptrace_traceme"),
];

/// Maps pinned beside the links.
const MAPS: &[&str] = &[
    "watched",
    // Added with the judgement of volumes shared with the host: a gate pinned by an older
    // daemon lacks them and is replaced, as for `scopes`.
    "tracked",
    "volumes",
    "allowed",
    "generation",
    "writers",
    "loaders",
    // Renamed from `memfd_scopes` when scopes gained flags: a gate pinned by an older
    // daemon lacks it, is not adopted, and is replaced by this version's programs.
    "scopes",
    "shmem_dev",
    "counters",
    "events",
];

/// Where the gate is pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/driftlock";

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

// SAFETY: FileKey is repr(C), two u64 fields and no padding: every bit pattern is valid and
// it has the layout of `struct file_key` in gate.bpf.c.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FileKey {}

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
const TRACK_STRICT: u32 = 2;

/// A volume as one armed container's processes see it (gate.bpf.c `struct volume_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
struct VolumeKey {
    inum: u32,
    pad: u32,
    dev: u64,
}

// SAFETY: VolumeKey is repr(C): two u32 then a u64, no implicit padding (the explicit `pad`
// field fills it); every bit pattern is valid and it has the layout of `struct volume_key`.
#[allow(unsafe_code)]
unsafe impl aya::Pod for VolumeKey {}

/// Scope flags (gate.bpf.c `SCOPE_*`), above the mode byte.
const SCOPE_WX: u32 = 1 << 8;
const SCOPE_PROC_MEM: u32 = 1 << 9;
const SCOPE_ANON: u32 = 1 << 10;
const SCOPE_FOREIGN: u32 = 1 << 11;

impl MemoryRules {
    /// Every rule on.
    pub const STRICT: MemoryRules = MemoryRules {
        wx: true,
        anon: true,
        proc_mem: true,
        foreign: true,
    };

    fn scope_value(self, mode: GateMode) -> u32 {
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

/// The loaded (or adopted) gate.
pub struct MappingGate {
    watched: HashMap<MapData, u64, u32>,
    tracked: HashMap<MapData, u64, u32>,
    volumes: HashMap<MapData, VolumeKey, u32>,
    allowed: HashMap<MapData, FileKey, u64>,
    generation: HashMap<MapData, FileKey, u64>,
    writers: HashMap<MapData, FileKey, u64>,
    loaders: HashMap<MapData, FileKey, u8>,
    scopes: HashMap<MapData, u32, u32>,
    counters: Array<MapData, u64>,
    events: Option<RingReader>,
    adopted: bool,
    follows_backing_files: bool,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for MappingGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingGate")
            .field("adopted", &self.adopted)
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}

fn refused(what: impl Into<String>, e: impl std::fmt::Display) -> GateError {
    GateError::Refused {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// An error with its causes (aya keeps the system error in the source chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string().trim_end_matches(['.', ' ']).to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Fails only when the kernel's LSM list is readable and lacks `bpf` (securityfs may not be
/// mounted: then loading tells).
fn lsm_listed() -> Result<(), GateError> {
    let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm") else {
        return Ok(());
    };
    if list.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(GateError::LsmInactive(format!(
            "active LSMs: {}",
            list.trim()
        )))
    }
}

/// The gate's object with every program loaded into the kernel (verified), none attached.
fn load_verified() -> Result<aya::Ebpf, GateError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| GateError::NoBtf(e.to_string()))?;
    lsm_listed()?;
    let mut ebpf = aya::EbpfLoader::new()
        .btf(Some(&btf))
        .load(OBJECT)
        .map_err(|e| refused("object", chain(&e)))?;
    for (name, hook) in PROGRAMS {
        lsm_program(&mut ebpf, name)?
            .load(hook, &btf)
            .map_err(|e| refused(*name, chain(&e)))?;
    }
    Ok(ebpf)
}

/// The LSM program `name` of the gate's object.
fn lsm_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Lsm, GateError> {
    ebpf.program_mut(name)
        .ok_or_else(|| refused(name, "missing from the object"))?
        .try_into()
        .map_err(|e| refused(name, e))
}

/// True if the running kernel has backing files (6.6 and later): the layer file an overlay
/// puts in a mapping, which the gate follows back to the overlay inode at `mprotect`.
fn has_backing_files(btf: &aya::Btf) -> bool {
    btf.id_by_type_name_kind("backing_file", aya_obj::btf::BtfKind::Struct)
        .is_ok()
}

impl MappingGate {
    /// Adopts the gate pinned in `pin_dir` by a predecessor, or loads, attaches and pins a
    /// new one there.
    pub fn load(pin_dir: &Path) -> Result<Self, GateError> {
        if OBJECT.is_empty() {
            return Err(GateError::NotBuilt);
        }
        if pin_dir.join("links").is_dir() && pin_dir.join("maps/allowed").exists() {
            match Self::adopt(pin_dir) {
                Ok(g) => return Ok(g),
                Err(e) => {
                    log::warn!("cannot adopt the pinned mapping gate ({e}); loading a new one");
                    unpin(pin_dir);
                }
            }
        }
        let mut ebpf = load_verified()?;
        let mut links = Vec::new();
        for (name, _) in PROGRAMS {
            let prog = lsm_program(&mut ebpf, name)?;
            let id = prog.attach().map_err(|e| refused(*name, chain(&e)))?;
            let link = prog.take_link(id).map_err(|e| refused(*name, e))?;
            links.push((*name, aya::programs::links::FdLink::from(link)));
        }
        let pin_err = |reason: String| GateError::Pin {
            dir: pin_dir.to_path_buf(),
            reason,
        };
        ensure_bpffs(pin_dir).map_err(pin_err)?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(|e| pin_err(e.to_string()))?;
        std::fs::create_dir_all(pin_dir.join("maps")).map_err(|e| pin_err(e.to_string()))?;
        for name in MAPS {
            let map = ebpf
                .map(name)
                .ok_or_else(|| refused(*name, "missing from the object"))?;
            map_data(map)
                .pin(pin_dir.join("maps").join(name))
                .map_err(|e| pin_err(e.to_string()))?;
        }
        for (name, link) in links {
            let pinned = link
                .pin(pin_dir.join("links").join(name))
                .map_err(|e| pin_err(e.to_string()))?;
            // The pin keeps the program attached; the fd is not needed.
            drop(pinned);
        }
        drop(ebpf);
        let gate = Self::adopt(pin_dir)?;
        // memfds and shared anonymous memory live on one internal shmem mount: its device.
        let shm = nix::sys::memfd::memfd_create(
            c"driftlock-shmem-probe",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .ok()
        .and_then(|fd| super::stat_fd(std::os::fd::AsFd::as_fd(&fd)).ok())
        .map(|st| kernel_dev(st.dev));
        if let Some(dev) = shm {
            let mut arr: Array<MapData, u64> = Array::try_from(Map::Array(
                MapData::from_pin(pin_dir.join("maps/shmem_dev"))
                    .map_err(|e| refused("shmem_dev", e))?,
            ))
            .map_err(|e| refused("shmem_dev", e))?;
            arr.set(0, dev, 0).map_err(|e| refused("shmem_dev", e))?;
        }
        let mut gate = gate;
        gate.adopted = false;
        Ok(gate)
    }

    /// Whether the gate would load here: the object and every program are loaded and
    /// verified, then dropped; nothing is attached or pinned (`driftlock doctor`).
    pub fn probe_load() -> Result<(), GateError> {
        if OBJECT.is_empty() {
            return Err(GateError::NotBuilt);
        }
        load_verified().map(drop)
    }

    /// True if a gate is pinned in `pin_dir` (a daemon runs it, or a dead one left it).
    pub fn pinned(pin_dir: &Path) -> bool {
        pin_dir.join("links").is_dir() && pin_dir.join("maps/allowed").exists()
    }

    fn adopt(pin_dir: &Path) -> Result<Self, GateError> {
        let map = |name: &str| -> Result<MapData, GateError> {
            MapData::from_pin(pin_dir.join("maps").join(name)).map_err(|e| refused(name, e))
        };
        for (name, _) in PROGRAMS {
            if !pin_dir.join("links").join(name).exists() {
                return Err(refused(*name, "link not pinned"));
            }
        }
        Ok(MappingGate {
            watched: HashMap::try_from(Map::HashMap(map("watched")?))
                .map_err(|e| refused("watched", e))?,
            tracked: HashMap::try_from(Map::HashMap(map("tracked")?))
                .map_err(|e| refused("tracked", e))?,
            volumes: HashMap::try_from(Map::HashMap(map("volumes")?))
                .map_err(|e| refused("volumes", e))?,
            allowed: HashMap::try_from(Map::HashMap(map("allowed")?))
                .map_err(|e| refused("allowed", e))?,
            generation: HashMap::try_from(Map::HashMap(map("generation")?))
                .map_err(|e| refused("generation", e))?,
            writers: HashMap::try_from(Map::HashMap(map("writers")?))
                .map_err(|e| refused("writers", e))?,
            loaders: HashMap::try_from(Map::HashMap(map("loaders")?))
                .map_err(|e| refused("loaders", e))?,
            scopes: HashMap::try_from(Map::HashMap(map("scopes")?))
                .map_err(|e| refused("scopes", e))?,
            counters: Array::try_from(Map::Array(map("counters")?))
                .map_err(|e| refused("counters", e))?,
            events: ring_reader(map("events")?),
            adopted: true,
            follows_backing_files: aya::Btf::from_sys_fs()
                .map(|btf| has_backing_files(&btf))
                .unwrap_or(false),
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// True if this gate was left pinned by a predecessor and adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// True if an `mprotect(PROT_EXEC)` of an overlay file mapped without it is judged
    /// (the kernel has backing files, 6.6 and later); false on older kernels, where such a
    /// mapping holds the layer's file and is not followed back to the overlay.
    pub fn follows_backing_files(&self) -> bool {
        self.follows_backing_files
    }

    /// Gates `PROT_EXEC` mappings on the filesystem `dev` (kernel encoding).
    pub fn watch(&mut self, dev: u64, mode: GateMode) -> Result<(), GateError> {
        self.watched
            .insert(dev, mode as u32, 0)
            .map_err(|e| refused("watched", e))
    }

    /// Stops gating the filesystem `dev`.
    pub fn unwatch(&mut self, dev: u64) {
        let _ = self.watched.remove(&dev);
    }

    /// Tracks containers' writes on the volume `dev` (a filesystem a unit marks by mount,
    /// shared with the host): from now on a file a container writes there maps only once
    /// admitted, for the containers [`MappingGate::judge_volume`] names.
    pub fn track_volume(&mut self, dev: u64) -> Result<(), GateError> {
        if self.tracked.get(&dev, 0).is_ok() {
            return Ok(());
        }
        self.tracked
            .insert(dev, 1, 0)
            .map_err(|e| refused("tracked", e))
    }

    /// Stops tracking writes on the volume `dev` and sweeps its files' write counts (on a
    /// thread of its own, as [`MappingGate::forget_filesystems`]).
    pub fn untrack_volumes(&mut self, devs: &[u64]) {
        for d in devs {
            let _ = self.tracked.remove(d);
        }
        self.sweep(devs);
    }

    /// True if a container's write to the volume `dev` could not be recorded (a map was
    /// full): every mapping of it by its containers must be admitted since.
    pub fn volume_strict(&self, dev: u64) -> bool {
        self.tracked
            .get(&dev, 0)
            .is_ok_and(|v| v & TRACK_STRICT != 0)
    }

    /// Judges executable mappings of files containers wrote on the volume `dev`, for the
    /// processes of PID namespace `inum` (an armed container's), in `mode`.
    pub fn judge_volume(&mut self, inum: u32, dev: u64, mode: GateMode) -> Result<(), GateError> {
        self.volumes
            .insert(VolumeKey { inum, pad: 0, dev }, mode as u32, 0)
            .map_err(|e| refused("volumes", e))
    }

    /// Stops judging the volume `dev` for PID namespace `inum`.
    pub fn unjudge_volume(&mut self, inum: u32, dev: u64) {
        let _ = self.volumes.remove(&VolumeKey { inum, pad: 0, dev });
    }

    /// Drops the volume entries a predecessor left for containers that are gone: every
    /// tracked device not in `tracked`, every judged pair not in `judged`. Their files'
    /// write counts are kept: a unit whose re-arm is retried later tracks its volume again
    /// and finds what its container wrote still recorded.
    pub fn retain_volumes(
        &mut self,
        tracked: &std::collections::BTreeSet<u64>,
        judged: &std::collections::HashSet<(u32, u64)>,
    ) {
        let stale: Vec<VolumeKey> = self
            .volumes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !judged.contains(&(k.inum, k.dev)))
            .collect();
        for k in stale {
            let _ = self.volumes.remove(&k);
        }
        let gone: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(Result::ok)
            .filter(|d| !tracked.contains(d))
            .collect();
        for d in gone {
            let _ = self.tracked.remove(&d);
        }
    }

    /// Lets `file` be mapped executable: its content, as it is now, was judged allowed.
    pub fn allow(&mut self, file: FileKey) -> Result<(), GateError> {
        let now = self.generation(&file);
        self.allow_at(file, now)
    }

    /// Lets `file` be mapped executable as long as no write-open or truncate came after
    /// generation `judged` (read before its content was judged).
    pub fn allow_at(&mut self, file: FileKey, judged: u64) -> Result<(), GateError> {
        // Never while a writer holds the file: what was judged may not be what it maps.
        // (A writer that opens after this check advances the generation past `judged`.)
        if self.writers(&file) > 0 {
            return Ok(());
        }
        self.allowed
            .insert(file, judged, 0)
            .map_err(|e| refused("allowed", e))
    }

    /// True if the gate would admit an executable mapping of `file` now (the mirror of the
    /// kernel program's check: an entry as new as the last write, and no open writer).
    pub fn admits(&self, file: &FileKey) -> bool {
        match self.allowed.get(file, 0) {
            Ok(judged) => {
                judged == self.generation(file) && self.writers.get(file, 0).unwrap_or(0) == 0
            }
            Err(_) => false,
        }
    }

    /// How many writers hold `file` open now.
    pub fn writers(&self, file: &FileKey) -> u64 {
        self.writers.get(file, 0).unwrap_or(0)
    }

    /// How many write-opens, writer releases and truncates `file` has seen.
    pub fn generation(&self, file: &FileKey) -> u64 {
        self.generation.get(file, 0).unwrap_or(0)
    }

    /// Marks `file` as a dynamic loader: an exec of it as the main binary is refused.
    pub fn add_loader(&mut self, file: FileKey) -> Result<(), GateError> {
        self.loaders
            .insert(file, 1, 0)
            .map_err(|e| refused("loaders", e))
    }

    /// Scopes PID namespace `inum` (an armed container's) and the namespaces below it:
    /// its processes may not exec memfds, and by `memory` may not make memory-only code.
    pub fn scope_pid_namespace(
        &mut self,
        inum: u32,
        mode: GateMode,
        memory: MemoryRules,
    ) -> Result<(), GateError> {
        self.scopes
            .insert(inum, memory.scope_value(mode), 0)
            .map_err(|e| refused("scopes", e))
    }

    /// Stops scoping PID namespace `inum`.
    pub fn unscope_pid_namespace(&mut self, inum: u32) {
        let _ = self.scopes.remove(&inum);
    }

    /// Drops these entries from `allowed` and `loaders` (a unit's own, at its disarm, or
    /// one past its budget).
    pub fn forget_keys(&mut self, keys: &[FileKey]) {
        for k in keys {
            let _ = self.allowed.remove(k);
            let _ = self.loaders.remove(k);
        }
    }

    /// Stops watching filesystems `devs` (a unit's disarm) and sweeps the kernel's write
    /// counts for their files on a thread of its own: those entries are the kernel's, so
    /// only a walk of the maps finds them, and it must not hold up the event loop. An entry
    /// whose filesystem is watched again by then (a new unit given the same device number)
    /// is left alone.
    pub fn forget_filesystems(&mut self, devs: &[u64]) {
        for d in devs {
            self.unwatch(*d);
        }
        self.sweep(devs);
    }

    fn sweep(&self, devs: &[u64]) {
        if devs.is_empty() {
            return;
        }
        let (devs, pin_dir) = (devs.to_vec(), self.pin_dir.clone());
        let spawned = std::thread::Builder::new()
            .name("driftlock-gate-sweep".into())
            .spawn(move || sweep_filesystems(&pin_dir, &devs));
        if let Err(e) = spawned {
            log::warn!("mapping gate: cannot start the sweep of a disarmed unit's entries: {e}");
        }
    }

    /// Counters: mappings checked, refused, would-refuse, entries dropped by writes.
    pub fn counters(&self) -> [u64; 4] {
        let mut out = [0; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.counters.get(&(i as u32), 0).unwrap_or(0);
        }
        out
    }

    /// Reported refusals since the last call.
    pub fn drain_events(&mut self) -> Vec<GateEvent> {
        let mut out = Vec::new();
        let Some(ring) = self.events.as_mut() else {
            return out;
        };
        ring.drain(DRAIN_MAX, |b| {
            if let Some(e) = GateEvent::parse(b) {
                out.push(e);
            }
        });
        out
    }
}

/// Records taken from the ring per drain: the loop drains again at its next turn.
const DRAIN_MAX: usize = 4096;

impl GateEvent {
    /// Decodes a record as `struct gate_event` in gate.bpf.c lays it out.
    fn parse(b: &[u8]) -> Option<GateEvent> {
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

/// Maps the gate's event ring; `None` (records are then not read, refusals still happen)
/// if the kernel refuses the mapping.
fn ring_reader(events: MapData) -> Option<RingReader> {
    let size = events.info().ok()?.max_entries() as usize;
    match RingReader::new(std::os::fd::AsFd::as_fd(events.fd()), size) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("mapping gate: cannot map its event ring ({e}): refusals are not recorded");
            None
        }
    }
}

/// Removes the kernel's write counts (`generation`, `writers`) for files on `devs`, through
/// the pinned maps, skipping a filesystem watched or tracked again meanwhile.
fn sweep_filesystems(pin_dir: &Path, devs: &[u64]) {
    let open = |name: &str| {
        MapData::from_pin(pin_dir.join("maps").join(name))
            .ok()
            .and_then(|m| HashMap::<MapData, FileKey, u64>::try_from(Map::HashMap(m)).ok())
    };
    let devices = |name: &str| {
        MapData::from_pin(pin_dir.join("maps").join(name))
            .ok()
            .and_then(|m| HashMap::<MapData, u64, u32>::try_from(Map::HashMap(m)).ok())
    };
    let (watched, tracked) = (devices("watched"), devices("tracked"));
    let in_use = |dev: &u64| {
        [&watched, &tracked]
            .iter()
            .any(|m| m.as_ref().is_some_and(|m| m.get(dev, 0).is_ok()))
    };
    for name in ["generation", "writers"] {
        let Some(mut map) = open(name) else { continue };
        let stale: Vec<FileKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| devs.contains(&k.dev))
            .collect();
        for k in stale {
            if in_use(&k.dev) {
                continue;
            }
            let _ = map.remove(&k);
        }
    }
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::RingBuf(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::BloomFilter(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::LpmTrie(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::XskMap(m)
        | Map::Unsupported(m) => m,
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), String> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
    });
    if mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount bpffs at /sys/fs/bpf: {e}"))
}

/// Removes the pinned gate (links first: the programs detach): `systemctl stop` and package
/// removal. Returns whether anything was pinned.
pub fn unpin(pin_dir: &Path) -> bool {
    let mut any = false;
    for sub in ["links", "maps"] {
        if let Ok(dir) = std::fs::read_dir(pin_dir.join(sub)) {
            for e in dir.flatten() {
                any |= std::fs::remove_file(e.path()).is_ok();
            }
        }
        let _ = std::fs::remove_dir(pin_dir.join(sub));
    }
    let _ = std::fs::remove_dir(pin_dir);
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_bytes(kind: u32, detail: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [kind, 1] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [0x0070_0001u64, 42] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [101u32, 100, 1, 4026532000, 99, detail] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"memcode");
        b.extend_from_slice(&comm);
        b
    }

    #[test]
    fn a_gate_event_carries_the_scope_parent_name_and_detail() {
        let e = GateEvent::parse(&event_bytes(
            kind::WX,
            0x5 | (0x73 << 8) | DETAIL_MPROTECT | DETAIL_WRITTEN,
        ))
        .unwrap();
        assert_eq!((e.kind, e.tid, e.pid, e.denied), (kind::WX, 101, 100, true));
        assert_eq!((e.scope, e.ppid), (4026532000, 99));
        assert_eq!(&e.comm[..8], b"memcode\0");
        assert_eq!(
            e.detail_words(),
            "mprotect to r-x of a rw- private mapping with written pages"
        );
        let e = GateEvent::parse(&event_bytes(kind::ANON_EXEC, 0x7)).unwrap();
        assert_eq!(e.detail_words(), "mmap rwx");
        let e = GateEvent::parse(&event_bytes(kind::FOREIGN, DETAIL_EXEC)).unwrap();
        assert!(
            e.detail_words()
                .starts_with("exec of a file on a filesystem no armed unit marked")
        );
        let e = GateEvent::parse(&event_bytes(kind::FOREIGN, 0)).unwrap();
        assert!(e.detail_words().starts_with("executable mapping"));
        assert!(
            GateEvent::parse(&event_bytes(kind::WX, 0)[..60]).is_none(),
            "short record"
        );
    }

    #[test]
    fn memory_rules_become_scope_flags_above_the_mode() {
        assert_eq!(MemoryRules::default().scope_value(GateMode::Audit), 2);
        assert_eq!(
            MemoryRules::STRICT.scope_value(GateMode::Enforce),
            1 | SCOPE_WX | SCOPE_ANON | SCOPE_PROC_MEM | SCOPE_FOREIGN
        );
        let closures = MemoryRules {
            wx: true,
            anon: false,
            proc_mem: true,
            foreign: true,
        };
        assert_eq!(closures.and(MemoryRules::STRICT), closures);
        assert_eq!(closures.and(MemoryRules::default()), MemoryRules::default());
    }
}
