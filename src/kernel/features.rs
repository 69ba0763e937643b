//! What the running kernel offers driftlock, probed once (at daemon start, or by `doctor`).
//!
//! Each probe asks the kernel itself (a flag it refuses with `EINVAL`, a file that exists or
//! not); the release string is only shown. No probe places a mark: the fanotify probes
//! *remove* a mark that does not exist, which the kernel answers `ENOENT` once it has
//! accepted the flags and `EINVAL` when it does not know them.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// The kernel below which the core guarantee cannot hold: exec permission events (5.0),
/// filesystem marks (4.20), `openat2` (5.6, every in-root open of a snapshot).
pub const MINIMUM_KERNEL: &str = "5.6";

/// One kernel feature as probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    /// Stable name (metrics label, JSON key).
    pub name: String,
    /// The kernel offers it (for the daemon: and driftlock uses it).
    pub available: bool,
    /// Without it driftlock cannot protect any container on this node.
    pub core: bool,
    /// How it was found, or why it is unavailable.
    pub detail: String,
    /// What is not covered without it (empty when available or when nothing is lost).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_covered: String,
}

/// Every probed feature, with the kernel release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub kernel: String,
    /// Probed features, core ones first.
    pub features: Vec<FeatureState>,
}

impl KernelFeatures {
    /// The feature called `name`.
    pub fn get(&self, name: &str) -> Option<&FeatureState> {
        self.features.iter().find(|f| f.name == name)
    }

    /// True if the feature called `name` was found available.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some_and(|f| f.available)
    }

    /// Core features the kernel lacks: driftlock cannot protect containers here.
    pub fn missing_core(&self) -> impl Iterator<Item = &FeatureState> {
        self.features.iter().filter(|f| f.core && !f.available)
    }

    /// Optional features the kernel lacks: protection is degraded, each says how.
    pub fn degraded(&self) -> impl Iterator<Item = &FeatureState> {
        self.features.iter().filter(|f| !f.core && !f.available)
    }

    /// Replaces (or adds) the state of one feature: the daemon knows more than a probe
    /// (whether the mapping gate really loaded, and why not).
    pub fn set(&mut self, state: FeatureState) {
        match self.features.iter_mut().find(|f| f.name == state.name) {
            Some(f) => *f = state,
            None => self.features.push(state),
        }
    }
}

/// Feature names (the metric's label values).
pub mod name {
    /// `FAN_OPEN_EXEC_PERM` (5.0).
    pub const EXEC_PERMISSION_EVENTS: &str = "exec_permission_events";
    /// `FAN_MARK_FILESYSTEM` (4.20).
    pub const FILESYSTEM_MARKS: &str = "filesystem_marks";
    /// `openat2` (5.6).
    pub const OPENAT2: &str = "openat2";
    /// `FAN_MARK_EVICTABLE` (5.19).
    pub const EVICTABLE_MARKS: &str = "evictable_marks";
    /// `fsconfig(lowerdir+)` (6.8).
    pub const OVERLAY_LOWERDIR_PLUS: &str = "overlay_lowerdir_plus";
    /// `STATX_MNT_ID_UNIQUE` (6.8).
    pub const MOUNT_ID_UNIQUE: &str = "mount_id_unique";
    /// `vm.memfd_noexec` (6.3).
    pub const MEMFD_NOEXEC: &str = "memfd_noexec";
    /// `listmount` and `statmount` with mount options (6.10): the mount table as an index.
    pub const MOUNT_INDEX: &str = "mount_index";
    /// BTF at `/sys/kernel/btf/vmlinux`.
    pub const BTF: &str = "btf";
    /// The BPF LSM in the active LSM list.
    pub const BPF_LSM: &str = "bpf_lsm";
    /// The mapping gate loaded (daemon only).
    pub const MAPPING_GATE: &str = "mapping_gate";
    /// Overlay backing files (6.6).
    pub const BACKING_FILES: &str = "backing_files";
    /// BPF maps charged to memory cgroups, not `RLIMIT_MEMLOCK` (5.11).
    pub const BPF_MEMCG_ACCOUNTING: &str = "bpf_memcg_accounting";
}

/// Probes every feature (needs `CAP_SYS_ADMIN` for the fanotify and mount probes; without
/// it those say so).
pub fn probe() -> KernelFeatures {
    let release = kernel_release();
    let version = parse_version(&release);
    let at_least = |want: (u32, u32)| version.is_some_and(|v| v >= want);
    let mut features = Vec::new();
    let (exec, fs) = probe_fanotify();
    features.push(core(
        name::EXEC_PERMISSION_EVENTS,
        exec,
        "no exec can be judged",
    ));
    features.push(core(
        name::FILESYSTEM_MARKS,
        fs,
        "a container's filesystems cannot be marked",
    ));
    features.push(core(
        name::OPENAT2,
        super::probe_openat2()
            .map(|()| "openat2 works".to_string())
            .map_err(|e| format!("openat2 fails: {e} (kernel before 5.6, or a seccomp filter)")),
        "snapshots cannot open image files safely",
    ));
    // Before 5.19 fanotify does not check mark flags, and before 6.5 overlay takes any key
    // until create: a probe alone would say yes there, so the release must agree.
    let since = |want: (u32, u32), what: &str| -> Result<(), String> {
        if at_least(want) {
            Ok(())
        } else {
            Err(format!(
                "kernel {release} is before {}.{}, which {what}",
                want.0, want.1
            ))
        }
    };
    features.push(optional(
        name::EVICTABLE_MARKS,
        probe_evictable().and_then(|ok| since((5, 19), "added FAN_MARK_EVICTABLE").map(|()| ok)),
        "execs on read-only root filesystems are answered by the daemon each time (slower; nothing uncovered)",
    ));
    features.push(optional(
        name::OVERLAY_LOWERDIR_PLUS,
        probe_lowerdir_plus().and_then(|ok| since((6, 8), "added lowerdir+").map(|()| ok)),
        "image layers are passed to overlay in one lowerdir string (layer paths with ',' or ':' cannot be snapshotted)",
    ));
    features.push(optional(
        name::MOUNT_ID_UNIQUE,
        probe_mount_id_unique(),
        "mounts are told apart by their reusable mount ids",
    ));
    features.push(optional(
        name::MOUNT_INDEX,
        since((6, 10), "added statmount's mount options").and_then(|()| {
            super::mount_index::listmount_works()
                .map(|()| {
                    if at_least((6, 15)) {
                        "listmount and statmount (the mount table kept by mount id; mount notifications name the mounts that change)".into()
                    } else {
                        "listmount and statmount (the mount table kept by mount id; every mount read again after a change: no mount notifications before 6.15)".into()
                    }
                })
                .map_err(|e| format!("listmount fails: {e}"))
        }),
        "each arm reads the whole mount table as text (slower on nodes with thousands of mounts; nothing uncovered)",
    ));
    features.push(optional(
        name::MEMFD_NOEXEC,
        if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() {
            Ok("/proc/sys/vm/memfd_noexec exists".into())
        } else {
            Err("no /proc/sys/vm/memfd_noexec (kernel before 6.3)".into())
        },
        "fileless execution (memfd_create + fexecve) is refused only where the mapping gate runs",
    ));
    features.push(optional(
        name::BTF,
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("/sys/kernel/btf/vmlinux".into())
        } else {
            Err("no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off)".into())
        },
        "the mapping gate cannot load",
    ));
    features.push(optional(
        name::BPF_LSM,
        lsm_list().and_then(|list| {
            if list.split(',').any(|l| l == "bpf") {
                Ok(format!("active LSMs: {list}"))
            } else {
                Err(format!(
                    "active LSMs: {list}; add bpf with the boot parameter lsm={list},bpf"
                ))
            }
        }),
        "the mapping gate cannot load",
    ));
    features.push(optional(
        name::BACKING_FILES,
        if at_least((6, 6)) {
            Ok(format!("kernel {release} (6.6 or later)"))
        } else {
            Err(format!("kernel {release} is before 6.6"))
        },
        "with the gate: an overlay file mapped read-only, then mprotect'ed executable, is not judged",
    ));
    features.push(optional(
        name::BPF_MEMCG_ACCOUNTING,
        if at_least((5, 11)) {
            Ok(format!("kernel {release} (5.11 or later)"))
        } else {
            Err(format!(
                "kernel {release} charges BPF maps to RLIMIT_MEMLOCK (memlock limit now {})",
                memlock_limit()
            ))
        },
        "the mapping gate needs RLIMIT_MEMLOCK raised (LimitMEMLOCK=infinity in the unit; the daemon raises it itself when it holds CAP_SYS_RESOURCE)",
    ));
    KernelFeatures {
        kernel: release,
        features,
    }
}

fn core(name: &str, result: Result<String, String>, not_covered: &str) -> FeatureState {
    let mut f = optional(name, result, not_covered);
    f.core = true;
    f
}

fn optional(name: &str, result: Result<String, String>, not_covered: &str) -> FeatureState {
    let available = result.is_ok();
    FeatureState {
        name: name.into(),
        available,
        core: false,
        detail: result.unwrap_or_else(|e| e),
        not_covered: if available {
            String::new()
        } else {
            not_covered.into()
        },
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of a release string such as `6.1.0-27-amd64`.
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The active LSM list. Where securityfs is not mounted, it is read from a child that
/// mounts it in a private mount namespace of its own (the node's mounts are untouched).
pub fn lsm_list() -> Result<String, String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    match std::fs::read_to_string(LSM) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) => lsm_list_privately().ok_or_else(|| {
            format!(
                "cannot read {LSM} ({e}; is securityfs mounted? run as root to mount it privately)"
            )
        }),
    }
}

/// Reads the LSM list in a forked child that mounts securityfs in its own mount namespace.
fn lsm_list_privately() -> Option<String> {
    use nix::unistd::{ForkResult, fork, pipe};
    // fork is only sound to use freely in the child of a single-threaded process.
    if !super::single_threaded() || !nix::unistd::geteuid().is_root() {
        return None;
    }
    let (read_end, write_end) = pipe().ok()?;
    // SAFETY: the process has one thread (checked above), so the child is a full copy with
    // no lock held by another thread; it makes system calls and exits with _exit.
    match unsafe { fork() }.ok()? {
        ForkResult::Child => {
            drop(read_end);
            let list = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .ok()
                .and_then(|()| {
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .ok()
                })
                .and_then(|()| {
                    nix::mount::mount(
                        Some("securityfs"),
                        "/sys/kernel/security",
                        Some("securityfs"),
                        nix::mount::MsFlags::empty(),
                        None::<&str>,
                    )
                    .ok()
                })
                .and_then(|()| std::fs::read("/sys/kernel/security/lsm").ok())
                .unwrap_or_default();
            let _ = nix::unistd::write(&write_end, &list);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(read_end), &mut out);
            let _ = nix::sys::wait::waitpid(child, None);
            let text = String::from_utf8_lossy(&out).trim().to_string();
            (!text.is_empty()).then_some(text)
        }
    }
}

/// The soft `RLIMIT_MEMLOCK`, in words.
pub fn memlock_limit() -> String {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => "unlimited".into(),
        Ok((soft, _)) => format!("{} KiB", soft / 1024),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Raises `RLIMIT_MEMLOCK` to unlimited where allowed (`CAP_SYS_RESOURCE`, or a hard limit
/// already unlimited): kernels before 5.11 charge BPF maps to it, and the mapping gate's maps
/// need far more than the usual 64 KiB. Returns the limit in force after the attempt.
pub fn raise_memlock_limit() -> String {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        libc::RLIM_INFINITY,
        libc::RLIM_INFINITY,
    );
    memlock_limit()
}

/// A new fanotify group for probing, or why not.
fn probe_group() -> Result<OwnedFd, String> {
    // SAFETY: fanotify_init takes two flag words and returns a new fd or -1.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = nix::errno::Errno::last();
        return Err(match e {
            nix::errno::Errno::EPERM => {
                "cannot probe: fanotify needs CAP_SYS_ADMIN (run as root)".into()
            }
            e => format!("fanotify_init(FAN_CLASS_CONTENT) fails: {e}"),
        });
    }
    // SAFETY: fanotify_init returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes a mark that does not exist: `ENOENT` means the kernel accepted the flags.
fn remove_probe(group: &OwnedFd, flags: libc::c_uint, mask: u64) -> Result<(), nix::errno::Errno> {
    // SAFETY: a valid group fd and a NUL-terminated path; FAN_MARK_REMOVE places nothing.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_REMOVE | flags,
            mask,
            libc::AT_FDCWD,
            c"/".as_ptr(),
        )
    };
    match nix::errno::Errno::result(rc) {
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn probe_fanotify() -> (Result<String, String>, Result<String, String>) {
    let group = match probe_group() {
        Ok(g) => g,
        Err(e) => return (Err(e.clone()), Err(e)),
    };
    let exec = remove_probe(&group, 0, libc::FAN_OPEN_EXEC_PERM)
        .map(|()| "FAN_OPEN_EXEC_PERM accepted".to_string())
        .map_err(|e| format!("FAN_OPEN_EXEC_PERM refused ({e}): kernel before 5.0"));
    let fs = remove_probe(&group, libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC_PERM)
        .map(|()| "FAN_MARK_FILESYSTEM accepted".to_string())
        .map_err(|e| format!("FAN_MARK_FILESYSTEM refused ({e}): kernel before 4.20"));
    (exec, fs)
}

/// `FAN_MARK_EVICTABLE` (5.19) as the exec path uses it: an ignore mark on an inode.
fn probe_evictable() -> Result<String, String> {
    const FAN_MARK_EVICTABLE: libc::c_uint = 0x200;
    let group = probe_group()?;
    remove_probe(
        &group,
        FAN_MARK_EVICTABLE | libc::FAN_MARK_IGNORED_MASK,
        libc::FAN_OPEN_EXEC_PERM,
    )
    .map(|()| "FAN_MARK_EVICTABLE accepted".to_string())
    .map_err(|e| format!("FAN_MARK_EVICTABLE refused ({e}): kernel before 5.19"))
}

fn probe_lowerdir_plus() -> Result<String, String> {
    const FSOPEN_CLOEXEC: libc::c_long = 1;
    const FSCONFIG_SET_STRING: libc::c_long = 1;
    // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if raw < 0 {
        return Err(match nix::errno::Errno::last() {
            nix::errno::Errno::EPERM => "cannot probe: fsopen needs CAP_SYS_ADMIN".into(),
            nix::errno::Errno::ENOSYS => "no new mount API (kernel before 5.2)".into(),
            e => format!("fsopen(overlay) fails: {e}"),
        });
    }
    // SAFETY: fsopen returned a new fd that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let key = CString::new("lowerdir+").map_err(|e| e.to_string())?;
    // SAFETY: a valid fs context fd and two NUL-terminated strings; the context is never
    // created (closed on drop), so nothing is mounted.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            c"/".as_ptr(),
            0,
        )
    };
    if rc == 0 {
        Ok("fsconfig(lowerdir+) accepted".into())
    } else {
        Err(format!(
            "fsconfig(lowerdir+) refused ({}): kernel before 6.8",
            nix::errno::Errno::last()
        ))
    }
}

fn probe_mount_id_unique() -> Result<String, String> {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the size statx fills.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c"/".as_ptr(),
            0,
            STATX_MNT_ID_UNIQUE,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!("statx fails: {}", nix::errno::Errno::last()));
    }
    // SAFETY: statx succeeded and filled the (zeroed) buffer.
    let st = unsafe { buf.assume_init() };
    if st.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
        Ok("STATX_MNT_ID_UNIQUE returned".into())
    } else {
        Err("STATX_MNT_ID_UNIQUE not returned: kernel before 6.8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_distribution_release_strings() {
        assert_eq!(parse_version("6.1.0-27-amd64"), Some((6, 1)));
        assert_eq!(parse_version("5.10.0-33-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_version("5.14.0-427.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn core_and_degraded_features_are_told_apart() {
        let mut k = KernelFeatures::default();
        k.set(core("a", Ok("ok".into()), "x"));
        k.set(core("b", Err("no".into()), "y"));
        k.set(optional("c", Err("no".into()), "z"));
        k.set(optional("d", Ok("ok".into()), "w"));
        assert_eq!(
            k.missing_core()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            k.degraded().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(k.has("d") && !k.has("c") && !k.has("nope"));
        assert_eq!(k.get("c").map(|f| f.not_covered.as_str()), Some("z"));
        assert_eq!(k.get("d").map(|f| f.not_covered.as_str()), Some(""));
        k.set(optional("c", Ok("now".into()), "z"));
        assert!(k.has("c"));
        assert_eq!(k.features.len(), 4);
    }

    #[test]
    fn this_kernel_is_probed_as_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the fanotify and mount probes need root");
            return;
        }
        let k = probe();
        assert_eq!(k.missing_core().count(), 0, "{k:#?}");
        // This machine's kernel (6.18) has every optional feature but the gate's load.
        if parse_version(&k.kernel).is_some_and(|v| v >= (6, 8)) {
            for f in [
                name::EVICTABLE_MARKS,
                name::OVERLAY_LOWERDIR_PLUS,
                name::MOUNT_ID_UNIQUE,
                name::MEMFD_NOEXEC,
                name::BPF_MEMCG_ACCOUNTING,
            ] {
                assert!(k.has(f), "{f}: {:?}", k.get(f));
            }
        }
    }
}
