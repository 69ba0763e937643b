//! Loading the gate: the object, its programs and maps verified, pinned on bpffs (and
//! found there again by a successor), its ring read; sweeping a filesystem's entries.

use super::*;

/// The compiled gate (empty when clang was missing at build time).
// Aligned: the ELF parser reads 64-bit headers in place.
pub(super) const OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate.bpf.o"));

/// Programs and the LSM hooks they attach to.
pub(super) const PROGRAMS: &[(&str, &str)] = &[
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
pub(super) const MAPS: &[&str] = &[
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

pub(super) fn refused(what: impl Into<String>, e: impl std::fmt::Display) -> GateError {
    GateError::Refused {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// An error with its causes (aya keeps the system error in the source chain).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
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
pub(super) fn lsm_listed() -> Result<(), GateError> {
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
pub(super) fn load_verified() -> Result<aya::Ebpf, GateError> {
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
pub(super) fn lsm_program<'a>(
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
pub(super) fn has_backing_files(btf: &aya::Btf) -> bool {
    btf.id_by_type_name_kind("backing_file", aya_obj::btf::BtfKind::Struct)
        .is_ok()
}

/// Maps the gate's event ring; `None` (records are then not read, refusals still happen)
/// if the kernel refuses the mapping.
pub(super) fn ring_reader(events: MapData) -> Option<RingReader> {
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
pub(super) fn sweep_filesystems(pin_dir: &Path, devs: &[u64]) {
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

pub(super) fn map_data(map: &Map) -> &MapData {
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
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), String> {
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

impl std::fmt::Debug for MappingGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingGate")
            .field("adopted", &self.adopted)
            .field("pin_dir", &self.pin_dir)
            .finish()
    }
}
