//! The enforcement core against the real kernel (issue 2).

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;

use nix::mount::{MsFlags, mount};

use crate::support::*;

#[test]
fn image_binary_runs_payload_in_tmp_is_denied_copy_runs_modified_is_denied() {
    if !root_or_skip("core") {
        return;
    }
    let mut sb = Sandbox::new("core");
    sb.start_daemon(&[]);
    let out = sb.arm("c1", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("filesystem mark on"), "{text}");

    assert_eq!(
        exec(&sb.rootfs.join("bin/true")),
        Ok(0),
        "image binary must run"
    );
    assert_eq!(
        exec(&sb.rootfs.join("bin/true")),
        Ok(0),
        "and again, from the cache"
    );

    let payload = sb.tmp.join("kdevtmpfsi");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM, "a new binary in /tmp must get EPERM");

    let copy = sb.tmp.join("renamed-true");
    sb.install("/usr/bin/true", &copy);
    assert_eq!(
        exec(&copy),
        Ok(0),
        "a copy of an image binary is the same program"
    );

    // A new file in the rootfs itself (overlay upper layer).
    let dropped = sb.rootfs.join("bin/dropped");
    sb.install(PAYLOAD_SOURCE, &dropped);
    assert_eq!(exec(&dropped), EPERM);

    // An image binary modified after arming (copy-up + write).
    let cat = sb.rootfs.join("bin/cat");
    fs::write(&cat, fs::read(PAYLOAD_SOURCE).unwrap()).unwrap();
    assert_eq!(
        exec(&cat),
        EPERM,
        "a modified image binary is not the image's program"
    );

    let recs = sb.records(3);
    assert_eq!(recs.len(), 3, "one record per deny: {recs:?}");
    let first = &recs[0];
    assert_eq!(first["verdict"], "deny");
    assert_eq!(first["reason"], "not-in-baseline");
    assert_eq!(first["unit"], "c1");
    assert_eq!(first["mode"], "enforce");
    assert_eq!(record_path(first), bytes(&payload));
    let payload_bytes = fs::read(PAYLOAD_SOURCE).unwrap();
    assert_eq!(
        first["blake3"],
        blake3::hash(&payload_bytes).to_hex().as_str()
    );
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&payload_bytes));
    assert_eq!(first["sha256"], sha.as_str());
    assert_eq!(first["size"], payload_bytes.len() as u64);
    // The exec happens in the child the test forked; its parent is the test process.
    assert_eq!(first["ppid"], std::process::id());
    assert_eq!(first["chain"][1]["pid"], std::process::id());
    assert!(first["chain"].as_array().unwrap().len() >= 2);
    assert!(
        first["image_key"]
            .as_str()
            .unwrap()
            .starts_with("overlay-lower:")
    );

    let status = sb.status_json();
    let unit = &status["units"][0];
    assert_eq!(unit["counters"]["denied"], 3);
    assert!(unit["counters"]["allowed"].as_u64().unwrap() >= 3);
    assert_eq!(status["stats"]["unanswered_drops"], 0);
    assert!(sb.daemon_alive());

    // Disarm: the same payload runs again.
    assert!(sb.client(&["disarm", "--id", "c1"]).status.success());
    assert_eq!(exec(&payload), Ok(0));
}

#[test]
fn audit_mode_runs_the_payload_and_records_would_deny() {
    if !root_or_skip("audit") {
        return;
    }
    let mut sb = Sandbox::new("audit");
    sb.start_daemon(&[]);
    sb.arm("a1", &["--mode", "audit"]);
    let payload = sb.tmp.join("miner");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), Ok(0), "audit mode never blocks");
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    let recs = sb.records(1);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["verdict"], "would-deny");
    assert_eq!(recs[0]["mode"], "audit");
    assert_eq!(record_path(&recs[0]), bytes(&payload));
    let status = sb.status_json();
    assert_eq!(status["units"][0]["counters"]["would_deny"], 1);
    assert_eq!(
        status["stats"]["permission_events"], 0,
        "audit mode takes no permission events"
    );
}

#[test]
fn hostile_file_name_is_denied_and_logged_faithfully() {
    if !root_or_skip("hostile") {
        return;
    }
    let mut sb = Sandbox::new("hostile");
    sb.start_daemon(&[]);
    sb.arm("c1", &[]);
    let name = OsStr::from_bytes(b"evil\nname\xff\x1b[31m \\x41");
    let payload = sb.tmp.join(name);
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);
    let long: Vec<u8> = std::iter::repeat_n(b'A', 255).collect();
    let deep = (0..12).fold(sb.tmp.clone(), |p, _| p.join(OsStr::from_bytes(&long)));
    fs::create_dir_all(&deep).unwrap();
    let deep_payload = deep.join(OsStr::from_bytes(&long[..200]));
    sb.install(PAYLOAD_SOURCE, &deep_payload);
    assert!(bytes(&deep_payload).len() > 3000);
    assert_eq!(exec(&deep_payload), EPERM);

    let recs = sb.records(2);
    let raw = fs::read(&sb.audit).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        raw.iter().filter(|b| **b == b'\n').count(),
        2,
        "each record is exactly one line"
    );
    assert_eq!(record_path(&recs[0]), bytes(&payload), "lossless path");
    assert_eq!(record_path(&recs[1]), bytes(&deep_payload));
    assert!(sb.daemon_alive());
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0), "still serving");
}

#[test]
fn bind_mount_of_a_host_directory_gets_a_mount_mark_only() {
    if !root_or_skip("bind") {
        return;
    }
    let mut sb = Sandbox::new("bind");
    let host_vol = sb.dir.join("host-vol");
    let vol = sb.rootfs.join("vol");
    fs::create_dir_all(&vol).unwrap();
    mount(
        Some(&host_vol),
        &vol,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    sb.start_daemon(&[]);
    let out = sb.arm("c1", &["--mount", vol.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("mount mark on {}", vol.display())),
        "{text}"
    );

    let inside = vol.join("payload");
    sb.install(PAYLOAD_SOURCE, &inside);
    assert_eq!(
        exec(&inside),
        EPERM,
        "the volume as the container sees it is covered"
    );
    // The same file through the host's path is not gated: the host filesystem is not marked.
    assert_eq!(exec(&host_vol.join("payload")), Ok(0));
}

#[test]
fn refuses_the_host_root_and_non_mount_points() {
    if !root_or_skip("refuse") {
        return;
    }
    let mut sb = Sandbox::new("refuse");
    sb.start_daemon(&[]);
    let out = sb.client(&["arm", "--id", "x", "--rootfs", "/"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host's root mount"), "{err}");
    let bin = sb.rootfs.join("bin");
    let out = sb.client(&["arm", "--id", "x", "--rootfs", bin.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a mount point"));
    let out = sb.client(&[
        "arm",
        "--id",
        "bad/id",
        "--rootfs",
        sb.rootfs.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid unit id"));
    assert!(sb.status_json()["units"].as_array().unwrap().is_empty());
    assert!(sb.daemon_alive());
}

#[test]
fn socket_refuses_non_root_and_survives_garbage() {
    if !root_or_skip("socket") {
        return;
    }
    let mut sb = Sandbox::new("socket");
    sb.start_daemon(&[]);
    let mode = fs::metadata(&sb.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);

    // Garbage, a wrong version, an oversized line: each gets a clear error.
    let mut s = UnixStream::connect(&sb.socket).unwrap();
    s.write_all(b"\xff\xfe not json\n{\"v\":9,\"op\":\"status\"}\n")
        .unwrap();
    // Both replies, each on its line, the connection kept open between them.
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(&mut s));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["code"], "invalid", "{first}");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("malformed request"),
        "{first}"
    );
    assert_eq!(second["code"], "invalid", "{second}");
    let said = second["error"].as_str().unwrap();
    assert!(
        said.contains("protocol version Some(9)") && said.contains("speaks version 1"),
        "{said}"
    );
    drop(lines);
    drop(s);

    // Non-root: the socket's mode stops it at connect ...
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .arg("--socket")
            .arg(&sb.socket)
            .output()
            .unwrap()
    };
    let out = nobody(&["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // ... and if the mode were loosened, the peer-credential check still refuses.
    fs::set_permissions(
        &sb.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = nobody(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only root may use the driftlock socket"),
        "{err}"
    );
    assert!(sb.daemon_alive());
    assert!(sb.client(&["status"]).status.success());
}

/// Arms the rootfs alone (no /tmp) and returns the JSON result.
fn arm_rootfs_only(sb: &Sandbox) -> serde_json::Value {
    let rootfs = sb.rootfs.to_str().unwrap();
    let out = sb.client(&["arm", "--id", "c1", "--rootfs", rootfs, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn baseline_store_survives_corruption_and_is_reused() {
    if !root_or_skip("store") {
        return;
    }
    let mut sb = Sandbox::new("store");
    sb.start_daemon(&[]);
    let first = arm_rootfs_only(&sb);
    assert_eq!(first["baseline"], "snapshotted");
    assert_eq!(first["baseline_contents"], IMAGE.len());
    assert!(sb.client(&["disarm", "--id", "c1"]).status.success());

    let second = arm_rootfs_only(&sb);
    assert_eq!(second["baseline"], "stored");
    assert!(sb.client(&["disarm", "--id", "c1"]).status.success());

    let stored: Vec<PathBuf> = fs::read_dir(sb.state.join("baselines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1);
    let data = fs::read(&stored[0]).unwrap();
    fs::write(&stored[0], &data[..data.len() / 2]).unwrap();
    let third = arm_rootfs_only(&sb);
    assert_eq!(third["baseline"], "replaced-corrupt");
    assert_eq!(exec(&sb.rootfs.join("bin/cat")), Ok(0));
    let payload = sb.rootfs.join("p");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);
    // This unit was armed without --mount for /tmp: that tmpfs is not covered.
    let uncovered = sb.tmp.join("p");
    sb.install(PAYLOAD_SOURCE, &uncovered);
    assert_eq!(exec(&uncovered), Ok(0));
}

/// DESIGN invariant 4: on tmpfs a write through a shared mapping moves no timestamp, so
/// only the close-after-write event can tell the cache that a cached file changed.
#[test]
fn shared_mmap_write_on_tmpfs_invalidates_a_cached_verdict() {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    use std::os::unix::fs::MetadataExt;
    if !root_or_skip("mmap") {
        return;
    }
    let mut sb = Sandbox::new("mmap");
    sb.start_daemon(&[]);
    sb.arm("c1", &[]);
    let file = sb.tmp.join("tool");
    sb.install("/usr/bin/true", &file);
    // Past the racily-clean window, so the verdict is cached.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(exec(&file), Ok(0));
    assert_eq!(exec(&file), Ok(0));
    let hits = |sb: &Sandbox| {
        sb.status_json()["units"][0]["cache"]["hits"]
            .as_u64()
            .unwrap()
    };
    assert!(hits(&sb) >= 1, "the second exec must be a cache hit");

    let before = fs::metadata(&file).unwrap();
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let len = std::num::NonZeroUsize::new(before.len() as usize).unwrap();
        // SAFETY (test): a fresh shared mapping of a file we own, unmapped before close.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &f,
                0,
            )
        }
        .unwrap();
        // SAFETY (test): the mapping is `len` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts_mut(map.as_ptr().cast::<u8>(), len.get()) };
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xff;
        }
        // SAFETY (test): unmapping the mapping created above.
        unsafe { munmap(map, len.get()) }.unwrap();
    }
    let after = fs::metadata(&file).unwrap();
    assert_eq!(
        (
            before.mtime(),
            before.mtime_nsec(),
            before.ctime(),
            before.ctime_nsec(),
            before.len()
        ),
        (
            after.mtime(),
            after.mtime_nsec(),
            after.ctime(),
            after.ctime_nsec(),
            after.len()
        ),
        "the scenario needs a content change that no timestamp shows"
    );
    assert_eq!(
        exec(&file),
        EPERM,
        "changed content must be judged again and denied"
    );
}

/// Issue 5: the fanotify group survives the daemon in systemd's fd store, so a payload
/// exec'd while no daemon runs waits (it is not allowed), and the next daemon takes the
/// group back, re-arms and answers it. The test plays systemd's notify socket and fd store.
#[test]
fn fd_store_hand_over_leaves_no_unprotected_window() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    if !root_or_skip("handover") {
        return;
    }
    let sb = Sandbox::new("handover");
    let notify_path = sb.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let spawn = |sb: &Sandbox, group: Option<&OwnedFd>| {
        let mut cmd = Command::new("sh");
        let daemon = format!(
            "{} exec \"$0\" daemon --socket \"$1\" --state-dir \"$2\" --audit-log \"$3\"",
            if group.is_some() {
                "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=fanotify"
            } else {
                ""
            }
        );
        cmd.arg("-c")
            .arg(daemon)
            .arg(BIN)
            .arg(&sb.socket)
            .arg(&sb.state)
            .arg(&sb.audit);
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdout(std::process::Stdio::null());
        if let Some(g) = group {
            let raw = g.as_raw_fd();
            // SAFETY (test): dup2 and fcntl are async-signal-safe. They put the group at
            // fd 3 without close-on-exec: when it is fd 3 already, dup2 would be a no-op
            // that leaves the flag set (and the daemon would start with no group).
            unsafe {
                cmd.pre_exec(move || {
                    let rc = if raw == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(raw, 3)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        KillOnDrop(cmd.spawn().unwrap())
    };
    // Receives notifications until `want` arrives; returns the fd passed with it, if any.
    let wait_for = |want: &str| -> Option<OwnedFd> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([i32; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                notify.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::Error::EINTR) => continue,
                other => other.unwrap(),
            };
            let mut fd = None;
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY (test): the kernel installed these fds for us.
                    fd = fds.first().map(|f| unsafe { OwnedFd::from_raw_fd(*f) });
                }
            }
            let text = String::from_utf8_lossy(iov[0].as_ref()).into_owned();
            if text.contains(want) {
                return fd;
            }
        }
        panic!("no {want} from the daemon");
    };

    let mut first = spawn(&sb, None);
    let group = wait_for("FDSTORE=1").expect("the group fd");
    wait_for("READY=1");
    sb.arm("c1", &[]);
    let payload = sb.tmp.join("p");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);

    // The daemon dies; the fd store (this test) keeps the group and its marks.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // The held execs come from `sh -c 'exec ...'`: a child forked by this process would
    // hold the group (this process is the fd store) while blocked in execve, so if the test
    // failed no close could ever release it. sh drops the fd at its own exec.
    let exec_via_sh = |p: PathBuf| {
        std::thread::spawn(move || {
            let st = Command::new("sh")
                .args(["-c", "exec \"$0\" 2>/dev/null"])
                .arg(&p)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            st.code()
        })
    };
    let waiting_payload = exec_via_sh(payload.clone());
    let waiting_image = exec_via_sh(sb.rootfs.join("bin/cat"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting_payload.is_finished(),
        "with no daemon the exec must wait, not run"
    );
    assert!(!waiting_image.is_finished());

    let started = Instant::now();
    let second = spawn(&sb, Some(&group));
    wait_for("READY=1");
    assert_eq!(
        waiting_payload.join().unwrap(),
        Some(126),
        "the queued payload is denied by the successor (sh: not executable)"
    );
    assert_eq!(
        waiting_image.join().unwrap(),
        Some(0),
        "the queued image exec is allowed"
    );
    figure(&format!(
        "hand-over: successor ready and queued execs answered in {:?}",
        started.elapsed()
    ));
    assert_eq!(exec(&payload), EPERM);
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    drop(second);
    drop(group);
}

/// A child process killed (by its PID) and reaped when dropped, so a failing test leaves no
/// daemon holding a fanotify group behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Configuration: an allow entry (by sha256, scoped to the image) added to the file and
/// applied with SIGHUP lets that content run in an armed container; marks stay.
#[test]
fn sighup_reloads_allow_entries_without_dropping_marks() {
    if !root_or_skip("reload") {
        return;
    }
    let mut sb = Sandbox::new("reload");
    let config = sb.dir.join("config.toml");
    fs::write(&config, "mode = \"enforce\"\n").unwrap();
    let metrics = free_metrics_addr();
    sb.start_daemon(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-addr",
        &metrics,
    ]);
    sb.arm("c1", &["--image-name", "registry.local/app:1"]);
    let digest_at_start = metric_labels(&metrics, "driftlock_config_info").unwrap();
    let payload = sb.tmp.join("generated");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs::read(PAYLOAD_SOURCE).unwrap(),
    ));
    fs::write(
        &config,
        format!("mode = \"enforce\"\n[[allow]]\nimage = \"registry.local/app:*\"\nsha256 = \"{sha}\"\ncomment = \"generated at start\"\n"),
    )
    .unwrap();
    sb.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    sb.wait_for_status("the reload", |s| s["config_reloads"] == 1);
    assert_eq!(exec(&payload), Ok(0), "the allow entry applies");
    // Issue 29: metrics say which configuration is in force, and how its reloads went.
    let digest_reloaded = metric_labels(&metrics, "driftlock_config_info").unwrap();
    assert_ne!(
        digest_reloaded, digest_at_start,
        "the digest follows the file"
    );
    assert_eq!(
        metric(&metrics, "driftlock_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    let other = sb.tmp.join("other");
    sb.install("/usr/bin/env", &other);
    assert_eq!(exec(&other), EPERM, "only the allowed content");
    // A broken file is refused and the running configuration kept.
    fs::write(&config, "mode = \"sometimes\"\n").unwrap();
    sb.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    sb.wait_for_status("the refused reload", |s| s["config_reload_errors"] == 1);
    assert!(sb.daemon_alive());
    assert_eq!(
        metric(&metrics, "driftlock_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_labels(&metrics, "driftlock_config_info").unwrap(),
        digest_reloaded,
        "a refused file is not the configuration in force"
    );
    assert_eq!(exec(&payload), Ok(0));
    assert_eq!(exec(&other), EPERM);
    // The entry removed: the running container denies it again at its next exec.
    fs::write(&config, "mode = \"enforce\"\n").unwrap();
    sb.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    sb.wait_for_status("the reload", |s| s["config_reloads"] == 2);
    assert_eq!(exec(&payload), EPERM, "a removed entry denies at once");
    assert_eq!(
        metric_labels(&metrics, "driftlock_config_info").unwrap(),
        digest_at_start,
        "the same file, the same digest"
    );
}

/// An allow entry scoped to a path admits its content there only: the same bytes copied
/// elsewhere in the container are denied, and the allowed path keeps running (the verdict
/// is judged per exec, not cached for the content). `explain` says the same per path.
#[test]
fn a_path_scoped_entry_admits_the_content_at_its_path_only() {
    if !root_or_skip("path-scoped allow entry") {
        return;
    }
    let mut sb = Sandbox::new("pathscope");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs::read(PAYLOAD_SOURCE).unwrap(),
    ));
    let config = sb.dir.join("config.toml");
    fs::write(
        &config,
        format!("mode = \"enforce\"\n[[allow]]\nimage = \"registry.local/app:*\"\npath = \"*/jna-*/libpayload\"\nsha256 = \"{sha}\"\ncomment = \"unpacked by JNA at start\"\n"),
    )
    .unwrap();
    sb.start_daemon(&["--config", config.to_str().unwrap()]);
    sb.arm("c1", &["--image-name", "registry.local/app:1"]);
    let allowed_dir = sb.tmp.join("jna-4711");
    let other_dir = sb.tmp.join("elsewhere");
    fs::create_dir_all(&allowed_dir).unwrap();
    fs::create_dir_all(&other_dir).unwrap();
    let allowed = allowed_dir.join("libpayload");
    let elsewhere = other_dir.join("libpayload");
    sb.install(PAYLOAD_SOURCE, &allowed);
    sb.install(PAYLOAD_SOURCE, &elsewhere);
    for round in 0..3 {
        assert_eq!(exec(&allowed), Ok(0), "round {round}: at its path");
        assert_eq!(
            exec(&elsewhere),
            EPERM,
            "round {round}: the same bytes elsewhere"
        );
    }
    let explain_with = |p: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "explain",
            p.to_str().unwrap(),
            "--container",
            "c1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = sb.client(&args);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let explain = |p: &std::path::Path| explain_with(p, &[]);
    assert_eq!(explain(&allowed)["allowed_by_entry"], true);
    assert_eq!(explain(&elsewhere)["allowed_by_entry"], false);
    // Against a candidate without the entry, and one that moves it: a dry run.
    let candidate = sb.dir.join("candidate.toml");
    fs::write(&candidate, "mode = \"enforce\"\n").unwrap();
    let against =
        |p: &std::path::Path| explain_with(p, &["--against", candidate.to_str().unwrap()]);
    let v = against(&allowed);
    assert_eq!(v["allowed_by_entry"], false, "{v}");
    assert_eq!(v["verdict"], "deny", "{v}");
    assert_eq!(v["against"], candidate.to_str().unwrap(), "{v}");
    fs::write(
        &candidate,
        format!("[[allow]]\npath = \"*/elsewhere/*\"\nsha256 = \"{sha}\"\n"),
    )
    .unwrap();
    assert_eq!(against(&elsewhere)["verdict"], "allow");
    assert_eq!(against(&allowed)["verdict"], "deny");
    assert_eq!(exec(&allowed), Ok(0), "a dry run changes nothing in force");
    // The path is judged at each exec: the denied copy moved into the allowed directory
    // under another name is still denied, and under the allowed name it runs.
    let moved = allowed_dir.join("moved");
    fs::rename(&elsewhere, &moved).unwrap();
    assert_eq!(exec(&moved), EPERM, "not the allowed name");
    let second = sb.tmp.join("jna-2");
    fs::create_dir_all(&second).unwrap();
    fs::rename(&moved, second.join("libpayload")).unwrap();
    assert_eq!(
        exec(&second.join("libpayload")),
        Ok(0),
        "now at an allowed path"
    );
}

/// A container's init in a PID namespace of its own (`unshare --pid --fork sleep`): its
/// exit ends every process of that namespace, as a container's does.
struct NamespaceInit {
    unshare: std::process::Child,
    pid: i32,
}

impl NamespaceInit {
    fn start() -> Self {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "60"])
            .spawn()
            .unwrap();
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let mut pid = 0;
        for _ in 0..400 {
            let text = fs::read_to_string(&children).unwrap_or_default();
            if let Some(p) = text.split_whitespace().next() {
                pid = p.parse().unwrap();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(pid > 0, "unshare started no child");
        Self { unshare, pid }
    }

    fn pid(&self) -> String {
        self.pid.to_string()
    }

    /// Kills the init (and so its namespace) and reaps `unshare`.
    fn kill(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.wait();
    }
}

/// A container's init that shares the host's PID namespace, in a cgroup of its own with a
/// child (in a cgroup below it) that outlives it (as `--pid host` or a shared-namespace pod leaves processes
/// running until the runtime kills the cgroup).
struct SharedNamespaceInit {
    init: std::process::Child,
    child: i32,
    cgroup: std::path::PathBuf,
}

impl SharedNamespaceInit {
    /// `None` (with the reason printed) where no cgroup can be made here.
    fn start(name: &str) -> Option<Self> {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/pids"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|r| r.join("cgroup.procs").exists() && fs::metadata(r).is_ok())?;
        let cgroup = root.join(format!("driftlock-it-{name}-{}", std::process::id()));
        if let Err(e) = fs::create_dir(&cgroup) {
            eprintln!("skipping the shared PID namespace part: cannot make a cgroup: {e}");
            return None;
        }
        let child_file =
            std::env::temp_dir().join(format!("driftlock-it-{name}-{}.child", std::process::id()));
        let _ = fs::remove_file(&child_file);
        let init = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && { sleep 60 & echo $! > "$2.tmp"; mv "$2.tmp" "$2"; exec sleep 61; }"#)
            .arg("sh")
            .arg(&cgroup)
            .arg(&child_file)
            .spawn()
            .unwrap();
        let mut child = 0;
        for _ in 0..400 {
            if let Ok(text) = fs::read_to_string(&child_file) {
                child = text.trim().parse().unwrap_or(0);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = fs::remove_file(&child_file);
        // Dropped (init killed, cgroup removed) should the child not have started.
        let started = Self {
            init,
            child,
            cgroup,
        };
        assert!(child > 0, "the shared-namespace init started no child");
        // The child in a cgroup below the container's (as a container running its own
        // cgroups has): the container's own cgroup.procs then lists the init alone.
        let below = started.cgroup.join("below");
        fs::create_dir(&below).unwrap();
        fs::write(below.join("cgroup.procs"), child.to_string()).unwrap();
        Some(started)
    }

    fn pid(&self) -> String {
        self.init.id().to_string()
    }

    fn kill_init(&mut self) {
        let _ = self.init.kill();
        let _ = self.init.wait();
    }

    fn kill_child(&mut self) {
        if self.child <= 0 {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for SharedNamespaceInit {
    fn drop(&mut self) {
        self.kill_init();
        self.kill_child();
        for _ in 0..200 {
            let _ = fs::remove_dir(self.cgroup.join("below"));
            if fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for NamespaceInit {
    fn drop(&mut self) {
        self.kill();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// A container armed by its init's pid is disarmed when that process exits, where the
/// init is its own PID namespace's, with no poststop hook (the daemon holds its pidfd),
/// and its record is forgotten; a unit armed again under the same id by another process
/// is not disarmed by the first one's exit. An init in a shared (here the host's) PID
/// namespace may leave processes running when it exits: its unit waits for the poststop
/// hook's disarm.
#[test]
fn a_unit_is_disarmed_when_its_init_exits() {
    if !root_or_skip("pidfd disarm") {
        return;
    }
    if !driftlock::kernel::pidfd::pidfd_supported() {
        eprintln!("skipping: no pidfd on this kernel (the poststop hook disarms there)");
        return;
    }
    let mut sb = Sandbox::new("pidfd");
    sb.start_daemon(&[]);
    let no_units = |s: &serde_json::Value| s["units"].as_array().is_some_and(|u| u.is_empty());
    // The host's PID namespace: its exit does not disarm.
    let mut shared = Command::new("sleep").arg("60").spawn().unwrap();
    sb.arm("h1", &["--pid", &shared.id().to_string()]);
    shared.kill().unwrap();
    shared.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(
        sb.status_json()["units"].as_array().unwrap().len(),
        1,
        "an init that shares its PID namespace was disarmed at its exit"
    );
    let out = sb.client(&["disarm", "--id", "h1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same in a cgroup of its own: the unit stays armed while a process of the
    // container outlives the init, and is disarmed once the cgroup is empty.
    if let Some(mut shared) = SharedNamespaceInit::start("pidfd") {
        sb.arm("h2", &["--pid", &shared.pid()]);
        shared.kill_init();
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert_eq!(
            sb.status_json()["units"].as_array().unwrap().len(),
            1,
            "disarmed while a process of the container still runs"
        );
        shared.kill_child();
        sb.wait_for_status("the disarm once the cgroup is empty", no_units);
    }

    let mut init = NamespaceInit::start();
    sb.arm("c1", &["--pid", &init.pid()]);
    let record = sb.dir.join("state/units/c1.json");
    assert!(record.exists(), "{}", record.display());
    let mut second = NamespaceInit::start();
    let started = std::time::Instant::now();
    init.kill();
    sb.wait_for_status("the disarm", no_units);
    let took = started.elapsed();
    assert!(!record.exists(), "the record is forgotten");
    crate::support::figure(&format!(
        "pidfd disarm: unit gone {:.0} ms after its init was killed",
        took.as_secs_f64() * 1000.0
    ));
    // The same id armed again by another process: the first one is long gone, and only
    // this one's exit disarms it.
    sb.arm("c1", &["--pid", &second.pid()]);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(sb.status_json()["units"].as_array().unwrap().len(), 1);
    second.kill();
    sb.wait_for_status("the second disarm", no_units);
    // A container restarted under the same id at once (Docker's restart): the arm does
    // not wait for the watcher to see the old init's exit, and is never refused for it.
    let mut third = NamespaceInit::start();
    let mut fourth = NamespaceInit::start();
    sb.arm("c2", &["--pid", &third.pid()]);
    third.kill();
    sb.arm("c2", &["--pid", &fourth.pid()]);
    let units = sb.status_json()["units"].clone();
    assert_eq!(units.as_array().unwrap().len(), 1, "{units}");
    assert_eq!(units[0]["pid"], fourth.pid, "{units}");
    fourth.kill();
    sb.wait_for_status("the last disarm", no_units);
}

/// Break-glass: `driftlock mode audit` relaxes a running container at once (the next exec
/// of a payload runs and is recorded as would-deny), the change is recorded with who asked,
/// survives a daemon crash and restart, and `driftlock mode enforce` puts it back.
#[test]
fn mode_switches_a_running_container_both_ways_and_survives_a_restart() {
    if !root_or_skip("mode switch") {
        return;
    }
    let mut sb = Sandbox::new("modeswitch");
    sb.start_daemon(&[]);
    sb.arm("shop-1", &[]);
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);

    let out = sb.client(&["mode", "audit"]);
    assert_eq!(out.status.code(), Some(2), "a selector is required");
    let out = sb.client(&["mode", "audit", "--container", "nope"]);
    assert_eq!(out.status.code(), Some(4), "no such container");

    let out = sb.client(&[
        "mode",
        "audit",
        "--container",
        "shop",
        "--reason",
        "false denials",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("shop-1: enforce -> audit mode"));
    assert_eq!(exec(&payload), Ok(0), "audit mode: the payload runs");
    let status = sb.status_json();
    assert_eq!(status["units"][0]["mode"], "audit");
    assert_eq!(status["schema"], 1, "status --json names its layout");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let recs = sb.records(2);
    let change = recs
        .iter()
        .find(|r| r["kind"] == "mode")
        .expect("a mode record");
    assert_eq!(change["unit"], "shop-1");
    assert_eq!(
        (change["from"].as_str(), change["to"].as_str()),
        (Some("enforce"), Some("audit"))
    );
    assert_eq!(change["reason"], "false denials");
    assert!(
        change["by"].as_str().is_some_and(|b| b.starts_with("root")),
        "{change}"
    );
    assert!(
        recs.iter().any(|r| r["verdict"] == "would-deny"),
        "the payload's exec is recorded as would-deny: {recs:?}"
    );

    // A crash and a new daemon: the container is armed again in the mode it was switched to.
    sb.kill_daemon();
    sb.start_daemon(&[]);
    sb.wait_for_status("the re-arm", |s| s["units"][0]["mode"] == "audit");
    assert_eq!(exec(&payload), Ok(0));

    let out = sb.client(&["mode", "enforce", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changes[0]["from"], "audit");
    assert_eq!(exec(&payload), EPERM, "back in enforce mode");
    let image_ok = sb.rootfs.join("bin/true");
    assert_eq!(exec(&image_ok), Ok(0));
    // A clean stop still ends (the mode switch's record queue is let go at shutdown).
    sb.signal_daemon(nix::sys::signal::Signal::SIGTERM);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sb.daemon_alive() {
        assert!(
            std::time::Instant::now() < until,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Records name the node they come from, and SIGHUP reopens the audit log after a rotation
/// (logrotate moves the file, then signals).
#[test]
fn records_name_the_node_and_sighup_reopens_a_rotated_audit_log() {
    if !root_or_skip("audit log rotation") {
        return;
    }
    let mut sb = Sandbox::new("rotate");
    sb.start_daemon(&[]);
    sb.arm("r1", &[]);
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
    let first = sb.records(1);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(first[0]["node"], host.trim(), "{}", first[0]);
    let rotated = sb.audit.with_extension("1");
    fs::rename(&sb.audit, &rotated).unwrap();
    sb.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    // The reopen happens before the writer's next record: make one.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(exec(&payload), EPERM);
    let fresh = sb.records(1);
    assert_eq!(fresh.len(), 1, "the new file holds the new record only");
    assert_eq!(
        fs::read_to_string(&rotated).unwrap().lines().count(),
        1,
        "the rotated file keeps the old one"
    );
}

/// The node's default mode is reloaded with the file: a rollout goes from audit to enforce
/// with a SIGHUP, no restart; containers already armed keep their mode.
#[test]
fn sighup_reloads_the_default_mode_for_new_containers() {
    if !root_or_skip("default mode reload") {
        return;
    }
    let mut sb = Sandbox::new("modereload");
    let config = sb.dir.join("config.toml");
    fs::write(&config, "mode = \"audit\"\n").unwrap();
    sb.start_daemon(&["--config", config.to_str().unwrap()]);
    sb.arm("early", &[]);
    assert_eq!(sb.status_json()["units"][0]["mode"], "audit");
    sb.client(&["disarm", "--id", "early"]);
    fs::write(&config, "mode = \"enforce\"\n").unwrap();
    sb.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    sb.wait_for_status("the reload", |s| s["config_reloads"] == 1);
    sb.arm("late", &[]);
    assert_eq!(sb.status_json()["units"][0]["mode"], "enforce");
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
}

/// Issue 5: the metrics endpoint, scraped during a test, counts the events generated.
#[test]
fn metrics_count_the_execs_generated() {
    if !root_or_skip("metrics") {
        return;
    }
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sb = Sandbox::new("metrics");
    sb.start_daemon(&["--metrics-addr", &addr]);
    sb.arm("m1", &[]);
    for _ in 0..3 {
        assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    }
    let payload = sb.tmp.join("p");
    sb.install(PAYLOAD_SOURCE, &payload);
    for _ in 0..2 {
        assert_eq!(exec(&payload), EPERM);
    }
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let body = scrape();
    let value = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    assert!(body.starts_with("HTTP/1.0 200 OK"));
    assert_eq!(value("driftlock_execs_total{verdict=\"allow\"}"), 3.0);
    assert_eq!(value("driftlock_execs_total{verdict=\"deny\"}"), 2.0);
    assert_eq!(
        value("driftlock_unit_execs_total{unit=\"m1\",verdict=\"deny\"}"),
        2.0
    );
    assert_eq!(value("driftlock_armed_units"), 1.0);
    // Issue 12: denials by reason, every reason present from the start.
    assert_eq!(
        value(
            "driftlock_denials_total{verdict=\"deny\",reason=\"not-in-baseline\",rule=\"baseline\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            "driftlock_denials_total{verdict=\"deny\",reason=\"loader-unverified\",rule=\"loader\"}"
        ),
        0.0
    );
    assert_eq!(value("driftlock_arms_total{result=\"ok\"}"), 1.0);
    assert_eq!(
        value("driftlock_events_total{kind=\"exec-permission\"}"),
        5.0
    );
    assert_eq!(value("driftlock_decision_latency_seconds_count"), 5.0);
    assert_eq!(
        value("driftlock_cache_hits_total") + value("driftlock_cache_misses_total"),
        5.0
    );
    assert!(value("driftlock_hash_bytes_total") > 0.0);
    // The payload's size is no image program's: denied unread (issue 14).
    assert_eq!(value("driftlock_denied_unhashed_total"), 2.0);
    assert_eq!(value("driftlock_rearm_pending_units"), 0.0);
    assert_eq!(value("driftlock_records_suppressed_total"), 0.0);
    assert!(value("driftlock_event_loop_age_seconds") < 5.0);
    assert!(
        body.contains("driftlock_build_info{version=\"") && body.contains("revision=\""),
        "{body}"
    );
    assert_eq!(value("driftlock_config_reloads_total{result=\"ok\"}"), 0.0);
    assert_eq!(
        value("driftlock_falcosidekick_alerts_total{result=\"sent\"}"),
        0.0
    );
    assert!(body.contains("\ndriftlock_config_info{digest=\""), "{body}");
    // Issue 29: counters never fall, not even when the container that counted goes away.
    let out = sb.client(&["disarm", "--id", "m1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = scrape();
    let after = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    assert_eq!(after("driftlock_armed_units"), 0.0);
    assert_eq!(after("driftlock_execs_total{verdict=\"allow\"}"), 3.0);
    assert_eq!(after("driftlock_execs_total{verdict=\"deny\"}"), 2.0);
    assert_eq!(
        after("driftlock_cache_hits_total") + after("driftlock_cache_misses_total"),
        5.0
    );
    // Off the loopback it is refused.
    let out = Command::new(BIN)
        .args(["daemon", "--metrics-addr", "0.0.0.0:9464", "--socket"])
        .arg(sb.dir.join("x.sock"))
        .arg("--state-dir")
        .arg(sb.dir.join("x"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

/// Issue 5: records reach Falcosidekick as Falco alerts (a loopback listener plays it).
#[test]
fn denied_execs_are_posted_to_falcosidekick_as_falco_alerts() {
    if !root_or_skip("falco") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                if body.len() >= len {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                    return (head.to_string(), body.to_string());
                }
            }
            assert!(n > 0, "connection closed early");
        }
    });
    let mut sb = Sandbox::new("falco");
    let metrics = free_metrics_addr();
    sb.start_daemon(&["--falcosidekick-url", &url, "--metrics-addr", &metrics]);
    sb.arm("f1", &["--image-name", "docker.io/library/postgres:15"]);
    let payload = sb.tmp.join("kdevtmpfsi");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);
    let (head, body) = receiver.join().unwrap();
    assert!(head.starts_with("POST / HTTP/1.1"), "{head}");
    let alert: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["priority"], "Critical");
    assert_eq!(alert["rule"], driftlock::audit::falco::RULE);
    assert_eq!(alert["source"], "driftlock");
    assert_eq!(alert["output_fields"]["container.id"], "f1");
    assert_eq!(
        alert["output_fields"]["container.image.repository"],
        "docker.io/library/postgres:15"
    );
    assert_eq!(
        alert["output_fields"]["proc.exepath"].as_str().unwrap(),
        payload.to_str().unwrap()
    );
    assert!(
        alert["output"]
            .as_str()
            .unwrap()
            .starts_with("Drift prevented:")
    );
    assert!(alert["time"].as_str().unwrap().ends_with('Z'));
    // Issue 29: the delivery is counted (once Falcosidekick's answer is read).
    let sent = "driftlock_falcosidekick_alerts_total{result=\"sent\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&metrics, sent).unwrap_or(0.0) < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(metric(&metrics, sent), Some(1.0));
}

/// Issue 8: the daemon never blocks on itself. Its state directory (baselines, unit
/// records, the evidence it writes for every deny) is a filesystem it has armed; it keeps
/// writing there and answering.
#[test]
fn the_daemon_keeps_answering_with_its_own_state_on_a_marked_filesystem() {
    if !root_or_skip("self") {
        return;
    }
    let mut sb = Sandbox::new("self");
    mount(
        Some("tmpfs"),
        &sb.state,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    sb.start_daemon(&[]);
    let state = sb.state.to_str().unwrap().to_string();
    sb.arm("c1", &["--mount", &state]);
    let payload = sb.tmp.join("p");
    sb.install(PAYLOAD_SOURCE, &payload);
    for _ in 0..3 {
        assert_eq!(exec(&payload), EPERM);
        assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    }
    // Evidence of the payload was written to the marked filesystem.
    let recs = sb.records(3);
    let id = recs[0]["evidence"]
        .as_str()
        .expect("evidence kept")
        .to_string();
    assert!(sb.state.join("evidence").join(&id).exists());
    // Re-arming writes the unit record and reads the stored baseline there.
    assert!(sb.client(&["disarm", "--id", "c1"]).status.success());
    sb.arm("c1", &["--mount", &state]);
    // A payload dropped into the daemon's own state directory is judged like any other.
    let inside = sb.state.join("dropped");
    sb.install(PAYLOAD_SOURCE, &inside);
    assert_eq!(exec(&inside), EPERM);
    assert!(sb.daemon_alive());
    assert_eq!(sb.status_json()["stats"]["unanswered_drops"], 0);
}

/// Issue 8: a bounded soak. Several units armed, one exec loop per unit over repeated and
/// distinct allowed binaries with payloads mixed in, and a fifth unit armed and disarmed
/// meanwhile. Every payload must be denied, every image binary allowed, every permission
/// event answered (the units' counters equal the execs made), no exec may wait longer than
/// the hash time budget, and the daemon's memory must stay flat.
/// `DRIFTLOCK_SOAK_SECS` sets the length (default 20).
#[test]
fn soak_many_units_mixed_execs_and_churn() {
    use std::time::{Duration, Instant};
    if !root_or_skip("soak") {
        return;
    }
    let secs: u64 = std::env::var("DRIFTLOCK_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut sb = Sandbox::new("soak");
    sb.start_daemon(&[]);
    let units: Vec<PathBuf> = (0..5).map(|i| sb.dir.join(format!("unit{i}"))).collect();
    for u in &units {
        fs::create_dir_all(u).unwrap();
        mount(
            Some("tmpfs"),
            u,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        for p in IMAGE {
            let name = std::path::Path::new(p).file_name().unwrap();
            sb.install(p, &u.join(name));
        }
    }
    std::thread::sleep(Duration::from_millis(50));
    for (i, u) in units.iter().enumerate().take(4) {
        let out = sb.client(&[
            "arm",
            "--id",
            &format!("u{i}"),
            "--rootfs",
            u.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Payloads and many distinct names for allowed content, added after the snapshot.
        sb.install(PAYLOAD_SOURCE, &u.join("payload"));
        for n in 0..40 {
            sb.install("/usr/bin/true", &u.join(format!("true-{n}")));
        }
    }
    let armed = sb.status_json();
    assert_eq!(armed["units"].as_array().unwrap().len(), 4);
    let rss = |sb: &Sandbox| -> u64 {
        let pid = sb.daemon_pid();
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let rss_start = rss(&sb);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = units
        .iter()
        .take(4)
        .cloned()
        .enumerate()
        .map(|(i, u)| {
            std::thread::spawn(move || {
                let (mut allowed, mut denied, mut worst) = (0u64, 0u64, Duration::ZERO);
                let mut n = i;
                while Instant::now() < deadline {
                    n += 1;
                    let (path, expect_ok) = match n % 7 {
                        0 => (u.join("payload"), false),
                        1 | 2 => (u.join("true"), true),
                        3 => (u.join("cat"), true),
                        _ => (u.join(format!("true-{}", n % 40)), true),
                    };
                    let started = Instant::now();
                    let mut cmd = Command::new(&path);
                    if path.ends_with("cat") {
                        cmd.arg("--version");
                    }
                    let result = cmd.stdout(std::process::Stdio::null()).status();
                    worst = worst.max(started.elapsed());
                    match (result, expect_ok) {
                        (Ok(s), true) => {
                            assert!(s.success(), "{} failed", path.display());
                            allowed += 1;
                        }
                        (Err(e), false) => {
                            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{}", path.display());
                            denied += 1;
                        }
                        (r, _) => panic!("{}: unexpected {r:?}", path.display()),
                    }
                }
                (allowed, denied, worst)
            })
        })
        .collect();
    // Churn: a fifth unit armed and disarmed while the others run.
    let mut churns = 0;
    while Instant::now() < deadline {
        let u = units[4].to_str().unwrap();
        assert!(
            sb.client(&["arm", "--id", "churn", "--rootfs", u])
                .status
                .success()
        );
        assert_eq!(exec(&units[4].join("true")), Ok(0));
        assert!(sb.client(&["disarm", "--id", "churn"]).status.success());
        churns += 1;
    }
    let results: Vec<(u64, u64, Duration)> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    let status = sb.status_json();
    let rss_end = rss(&sb);
    let mut total = 0;
    for (i, (allowed, denied, _)) in results.iter().enumerate() {
        let unit = status["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == format!("u{i}"))
            .unwrap();
        assert_eq!(
            unit["counters"]["allowed"].as_u64().unwrap(),
            *allowed,
            "u{i}: every allowed exec answered once"
        );
        assert_eq!(
            unit["counters"]["denied"].as_u64().unwrap(),
            *denied,
            "u{i}: every payload denied"
        );
        total += allowed + denied;
    }
    let worst = results.iter().map(|r| r.2).max().unwrap();
    assert_eq!(status["stats"]["unanswered_drops"], 0);
    // The bound: a miss waits for one hash (of at most 1 MB here) behind at most a few
    // others; the hash budget (2 s) is the longest any exec may be held.
    assert!(worst < Duration::from_secs(2), "worst exec wait {worst:?}");
    assert!(
        rss_end < rss_start + 20 * 1024,
        "daemon RSS grew from {rss_start} kB to {rss_end} kB"
    );
    figure(&format!(
        "soak: {secs} s, {total} execs in 4 units ({} events read), {churns} arm/disarm cycles, worst exec {worst:?}, RSS {} → {} MB",
        status["stats"]["events"],
        rss_start / 1024,
        rss_end / 1024
    ));
}

#[test]
fn on_an_immutable_filesystem_the_kernel_allows_repeat_execs_itself() {
    if !root_or_skip("immutable filesystem") {
        return;
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        eprintln!("skipping: mkfs.erofs (erofs-utils) is not installed; .ci/run installs it");
        return;
    }
    let mut sb = Sandbox::new("erofs");
    let src = sb.dir.join("erofs-src");
    let loader = "/lib64/ld-linux-x86-64.so.2";
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("lib64")).unwrap();
    sb.install("/usr/bin/true", &src.join("bin/true"));
    sb.install(loader, &src.join("lib64/ld-linux-x86-64.so.2"));
    let image = sb.dir.join("image.erofs");
    let mnt = sb.dir.join("erofs");
    fs::create_dir_all(&mnt).unwrap();
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(Command::new("mkfs.erofs").arg(&image).arg(&src));
    ok(Command::new("mount")
        .args(["-t", "erofs", "-o", "ro"])
        .arg(&image)
        .arg(&mnt));
    sb.start_daemon(&[]);
    let tmp = sb.tmp.to_str().unwrap().to_string();
    let arm = |sb: &Sandbox| {
        let out = sb.client(&[
            "arm",
            "--id",
            "ro",
            "--rootfs",
            mnt.to_str().unwrap(),
            "--mount",
            &tmp,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    arm(&sb);
    let events = |sb: &Sandbox| {
        sb.status_json()["stats"]["permission_events"]
            .as_u64()
            .unwrap()
    };
    let before = events(&sb);
    for _ in 0..5 {
        assert_eq!(exec(&mnt.join("bin/true")), Ok(0));
    }
    assert_eq!(
        events(&sb) - before,
        1,
        "only the first exec reached the daemon; the kernel allowed the rest"
    );
    assert_eq!(sb.status_json()["stats"]["kernel_allowed_files"], 1);
    // The image's loader is never left to the kernel: each direct invocation is judged.
    let before = events(&sb);
    for _ in 0..2 {
        let out = Command::new(mnt.join("lib64/ld-linux-x86-64.so.2"))
            .arg(mnt.join("bin/true"))
            .output();
        assert_eq!(
            out.map_err(|e| e.raw_os_error()).map(|o| o.status.code()),
            Err(Some(libc::EPERM))
        );
    }
    assert_eq!(events(&sb) - before, 2);
    // Writable filesystems of the same unit are judged on every exec, as always.
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
    let copy = sb.tmp.join("true-copy");
    sb.install("/usr/bin/true", &copy);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let before = events(&sb);
    for _ in 0..3 {
        assert_eq!(exec(&copy), Ok(0));
    }
    assert_eq!(events(&sb) - before, 3);
    // Disarm forgets the kernel's allows: re-armed, the first exec is judged again.
    assert!(sb.client(&["disarm", "--id", "ro"]).status.success());
    arm(&sb);
    let before = events(&sb);
    assert_eq!(exec(&mnt.join("bin/true")), Ok(0));
    assert_eq!(exec(&mnt.join("bin/true")), Ok(0));
    assert_eq!(events(&sb) - before, 1);
    assert!(sb.client(&["disarm", "--id", "ro"]).status.success());
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
}
