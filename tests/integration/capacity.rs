//! What one image may cost the daemon (issue 26, 5): a crafted image of more files than a
//! baseline may hold is refused cleanly, and every container of one image shares one copy
//! of its baseline in memory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use nix::mount::{MsFlags, mount};

use crate::support::*;

/// Fills `dir` with `n` small executables of distinct content, 500 to a directory.
fn fill(dir: &Path, n: usize) {
    for i in 0..n {
        let sub = dir.join(format!("d{}", i / 500));
        if i % 500 == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        let f = sub.join(format!("p{i}"));
        fs::write(&f, format!("#!/bin/sh\n# {i}\n")).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn tmpfs(at: &Path) {
    fs::create_dir_all(at).unwrap();
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
}

/// Mounts a container's overlay of `lower` at `<sandbox>/<id>/rootfs` and arms it as `id`.
fn arm_overlay_of(sb: &Sandbox, lower: &Path, id: &str) {
    let c = sb.dir.join(id);
    for d in ["upper", "work", "rootfs"] {
        fs::create_dir_all(c.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        c.join("upper").display(),
        c.join("work").display()
    );
    mount(
        Some("overlay"),
        &c.join("rootfs"),
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    let out = sb.client(&[
        "arm",
        "--id",
        id,
        "--rootfs",
        c.join("rootfs").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "arm {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn issue_26_a_crafted_image_is_refused_and_an_image_is_held_once() {
    if !root_or_skip("capacity") {
        return;
    }
    let mut sb = Sandbox::new("capacity");
    sb.start_daemon(&[]);

    // 200,000 executables: refused with a clear error; the daemon serves on.
    let huge = sb.dir.join("huge");
    tmpfs(&huge);
    let t = Instant::now();
    fill(&huge, 200_000);
    eprintln!("200,000 files made in {:.1} s", t.elapsed().as_secs_f64());
    let out = sb.client(&["arm", "--id", "huge", "--rootfs", huge.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an image past the cap is refused");
    assert!(err.contains("more than 100000 executables"), "{err}");
    assert!(
        sb.client(&["status"]).status.success(),
        "the daemon serves on"
    );

    // One image, many containers: its baseline is held once.
    // Where a runtime keeps a layer (containerd's snapshot shape): never changed once
    // unpacked, so its lowerdir alone names the image.
    let lower = sb.dir.join("image/snapshots/1/fs");
    tmpfs(&lower);
    fill(&lower, 20_000);
    let pid = sb.daemon_pid();
    let mut rss = Vec::new();
    for i in 0..30 {
        arm_overlay_of(&sb, &lower, &format!("c{i}"));
        rss.push(rss_kib(pid));
    }
    let growth_mib = (rss[29] as f64 - rss[0] as f64) / 1024.0;
    figure(&format!(
        "daemon memory: one unit of a 20,000-file image {:.1} MiB, 30 units {:.1} MiB (+{growth_mib:.1} MiB for 29 more)",
        rss[0] as f64 / 1024.0,
        rss[29] as f64 / 1024.0
    ));
    assert!(
        growth_mib < 30.0,
        "29 more units of one image grew the daemon by {growth_mib:.1} MiB: {rss:?}"
    );
    // Every unit is judged by that one baseline.
    assert_eq!(exec(&sb.dir.join("c7/rootfs/d0/p0")), Ok(0));
    let dropped = sb.dir.join("c7/rootfs/dropped");
    fs::write(&dropped, "#!/bin/sh\n# not in the image\n").unwrap();
    fs::set_permissions(&dropped, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(exec(&dropped), EPERM);
}

/// The pod's memory limit holds (the DaemonSet's is 256 MiB): a daemon in a memory cgroup
/// of 256 MiB arms 50 containers of one image of 100,000 executables (the most a baseline
/// may hold) and is still serving, with the peak the cgroup saw as a figure.
#[test]
fn a_daemon_held_to_256_mib_serves_50_containers_of_the_largest_image() {
    if !root_or_skip("capacity under a memory limit") {
        return;
    }
    let memory = Path::new("/sys/fs/cgroup/memory");
    if !memory.join("cgroup.procs").exists() {
        eprintln!("skipping the memory-limit test: no cgroup v1 memory controller here");
        return;
    }
    let group = memory.join(format!("driftlock-capacity-{}", std::process::id()));
    fs::create_dir_all(&group).unwrap();
    fs::write(group.join("memory.limit_in_bytes"), "268435456").unwrap();
    let mut sb = Sandbox::new("capacity-256m");
    let enter = format!(
        "echo $$ > {} && exec \"$@\"",
        group.join("cgroup.procs").display()
    );
    sb.start_daemon_via(&["sh", "-c", &enter, "sh"], &[]);
    let lower = sb.dir.join("large/snapshots/1/fs");
    tmpfs(&lower);
    let t = Instant::now();
    fill(&lower, 100_000);
    eprintln!("100,000 files made in {:.1} s", t.elapsed().as_secs_f64());
    let pid = sb.daemon_pid();
    let t = Instant::now();
    for i in 0..50 {
        arm_overlay_of(&sb, &lower, &format!("m{i}"));
    }
    let armed_in = t.elapsed();
    let peak = fs::read_to_string(group.join("memory.max_usage_in_bytes"))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let failcnt = fs::read_to_string(group.join("memory.failcnt")).unwrap_or_default();
    let rss = rss_kib(pid);
    assert!(
        sb.client(&["status"]).status.success(),
        "the daemon serves on"
    );
    assert_eq!(exec(&sb.dir.join("m49/rootfs/d0/p0")), Ok(0));
    let dropped = sb.dir.join("m49/rootfs/dropped");
    fs::write(&dropped, "#!/bin/sh\n# not in the image\n").unwrap();
    fs::set_permissions(&dropped, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(exec(&dropped), EPERM);
    figure(&format!(
        "daemon held to 256 MiB: 50 units of a 100,000-file image armed in {:.1} s; RSS {:.1} MiB, the cgroup's peak {:.1} MiB (limit hits: {})",
        armed_in.as_secs_f64(),
        rss as f64 / 1024.0,
        peak as f64 / 1048576.0,
        failcnt.trim()
    ));
    sb.kill_daemon();
    // The daemon's memfd helper leaves the group a moment after the daemon.
    for _ in 0..100 {
        if fs::remove_dir(&group).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
