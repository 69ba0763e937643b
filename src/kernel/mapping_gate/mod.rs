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

mod load;
mod types;

pub use load::unpin;
use load::*;
pub use types::*;

/// Where the gate is pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/driftlock";

// SAFETY: FileKey is repr(C), two u64 fields and no padding: every bit pattern is valid and
// it has the layout of `struct file_key` in gate.bpf.c.
#[allow(unsafe_code)]
unsafe impl aya::Pod for FileKey {}

// SAFETY: VolumeKey is repr(C): two u32 then a u64, no implicit padding (the explicit `pad`
// field fills it); every bit pattern is valid and it has the layout of `struct volume_key`.
#[allow(unsafe_code)]
unsafe impl aya::Pod for VolumeKey {}

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
