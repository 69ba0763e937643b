//! Real clients (issue 16): Docker (Debian's docker.io, dockerd started by the test with
//! its own roots on the node's containerd) through `systemd/docker-daemon.json`, and
//! Podman through the package's hooks.d file (`systemd/hooks.d/driftlock.json`), with no
//! wrapper at all. Each skips with a printed reason when its program is not installed
//! (`.ci/run` installs both).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::node::{Node, RUNTIME, images, text, wait_for};
use crate::support::BIN;

fn installed(program: &str, test: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping {test}: {program} is not installed (.ci/run installs it)");
    }
    ok
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The exec records of unit `id`, waiting until `n` are there.
fn records_of(node: &Node, id: &str, n: usize) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let recs: Vec<_> = node
            .records(0)
            .into_iter()
            .filter(|r| r["unit"] == id)
            .collect();
        if recs.len() >= n || Instant::now() > until {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn armed(node: &Node, id: &str) -> bool {
    node.status()["units"]
        .as_array()
        .is_some_and(|u| u.iter().any(|u| u["id"] == id))
}

/// dockerd on the node's containerd, with its own data root, exec root, pidfile and socket,
/// configured by the repository's `systemd/docker-daemon.json` (the runtime's path put in).
struct Docker {
    node: Node,
    dockerd: Option<Child>,
    host: String,
}

impl Docker {
    fn new(name: &str) -> Option<Self> {
        if !installed("dockerd", name) || !installed("docker", name) {
            return None;
        }
        let node = Node::new(name)?;
        let dir = node.dir.join("docker");
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::create_dir_all(dir.join("exec")).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(repo("systemd/docker-daemon.json")).unwrap()).unwrap();
        config["runtimes"]["driftlock"]["path"] = RUNTIME.into();
        fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
        let socket = dir.join("docker.sock");
        let dockerd = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&node.socket)
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .unwrap();
        let docker = Docker {
            node,
            dockerd: Some(dockerd),
            host: format!("unix://{}", socket.display()),
        };
        wait_for("dockerd", Duration::from_secs(60), || {
            docker.docker(&["version"]).status.success()
        });
        let images = images().expect("test images");
        let archive = dir.join("glibc.tar");
        let out = Command::new("bash")
            .arg(repo("testdata/oci-to-docker-archive.sh"))
            .arg(images.join("glibc.tar"))
            .arg(&archive)
            .arg("driftlock/glibc:latest")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let out = docker.docker(&["load", "-i", archive.to_str().unwrap()]);
        assert!(out.status.success(), "docker load: {}", text(&out));
        Some(docker)
    }

    /// Runs a docker command, killed after 120 s: dockerd has been seen to wedge on a
    /// `rm -f` of a hundred containers at once (plain runc, no driftlock involved; every
    /// later command then hung too), and a test must fail, not hang the suite.
    fn docker(&self, args: &[&str]) -> Output {
        let mut child = Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(120);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > until {
                // Killed: its status says failure, and the caller's assertion names it (a
                // panic here could be one inside Drop, which aborts).
                let _ = child.kill();
                eprintln!("docker {args:?} did not finish in 120 s (dockerd wedged?): killed");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// `docker run -d` through the driftlock runtime; returns the full container id once
    /// the container is armed.
    fn run_detached(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "run",
            "-d",
            "--runtime",
            "driftlock",
            "--network",
            "host",
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["driftlock/glibc:latest", "sleep", "600"]);
        let out = self.docker(&args);
        assert!(out.status.success(), "docker run: {}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id.len(), 64, "{id}");
        wait_for(&format!("{name} armed"), Duration::from_secs(20), || {
            armed(&self.node, &id)
        });
        id
    }

    fn exec(&self, name: &str, script: &str) -> String {
        text(&self.docker(&["exec", name, "sh", "-c", script]))
    }

    /// `docker rm -f` of every container.
    /// Removes every container, in batches of ten: a single `rm -f` of a hundred at once
    /// is what wedged dockerd.
    fn remove_all(&self) {
        let out = self.docker(&["ps", "-aq"]);
        let ids = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for batch in ids.chunks(10) {
            let mut rm = vec!["rm", "-f"];
            rm.extend(batch);
            let _ = self.docker(&rm);
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.remove_all();
        if let Some(mut d) = self.dockerd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until && d.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        // Docker's overlay2 mounts live in this test's mount namespace, under the node's
        // tmpfs, which the node unmounts (detached) when it drops.
    }
}

fn drop_and_run(url: &str, path: &str) -> String {
    format!("wget -q -O {path} {url} && chmod +x {path}; {path} >/dev/null 2>&1; echo rc=$?")
}

/// In container `id` (reached through `exec`): an image program runs, and the payload
/// dropped in /tmp is denied, with a record naming the unit and `image`.
fn image_runs_and_payload_is_denied(
    node: &Node,
    id: &str,
    exec: impl Fn(&str) -> String,
    image: &str,
) {
    let t = exec("hello-dyn");
    assert!(t.contains("hello from a dynamically"), "{t}");
    let t = exec(&drop_and_run(&node.payload_url(), "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=126"), "{t}");
    let recs = records_of(node, id, 1);
    let rec = recs
        .iter()
        .find(|r| r["path"] == "/tmp/kdevtmpfsi")
        .unwrap_or_else(|| panic!("no record of the payload: {recs:?}"));
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["image_name"], image, "{rec}");
}

/// In audit-mode container `id`: the payload runs and is recorded as would-deny.
fn payload_runs_and_is_recorded_would_deny(node: &Node, id: &str, exec: impl Fn(&str) -> String) {
    let t = exec(&drop_and_run(&node.payload_url(), "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=0"), "audit mode must not deny: {t}");
    let recs = records_of(node, id, 1);
    assert!(
        recs.iter()
            .any(|r| r["path"] == "/tmp/kdevtmpfsi" && r["verdict"] == "would-deny"),
        "{recs:?}"
    );
}

#[test]
fn docker_run_through_the_driftlock_runtime_denies_the_drop_and_keeps_it_across_restart() {
    let Some(docker) = Docker::new("docker") else {
        return;
    };
    let url = docker.node.payload_url();
    let id = docker.run_detached("web", &[]);
    // `docker exec` is gated like the container's own processes.
    image_runs_and_payload_is_denied(
        &docker.node,
        &id,
        |script| docker.exec("web", script),
        "driftlock/glibc:latest",
    );

    // Dropped in the writable layer before a restart: the restart must not baseline it.
    let t = docker.exec(
        "web",
        "cp /usr/share/dormant /root/k && chmod +x /root/k; /root/k >/dev/null 2>&1; echo rc=$?",
    );
    assert!(t.contains("rc=126"), "{t}");
    let out = docker.docker(&["restart", "-t", "1", "web"]);
    assert!(out.status.success(), "docker restart: {}", text(&out));
    wait_for(
        "web re-armed after restart",
        Duration::from_secs(20),
        || {
            armed(&docker.node, &id)
                && docker
                    .docker(&["inspect", "-f", "{{.State.Running}}", "web"])
                    .stdout
                    .starts_with(b"true")
        },
    );
    let t = docker.exec("web", "/root/k >/dev/null 2>&1; echo rc=$?");
    assert!(t.contains("rc=126"), "the pre-restart drop ran: {t}");
    let t = docker.exec("web", &drop_and_run(&url, "/tmp/again"));
    assert!(t.contains("rc=126"), "{t}");
    assert!(
        docker
            .exec("web", "hello-dyn")
            .contains("hello from a dynamically")
    );

    // Stopped: disarmed.
    let out = docker.docker(&["rm", "-f", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("web disarmed", Duration::from_secs(20), || {
        !armed(&docker.node, &id)
    });
}

#[test]
fn docker_audit_mode_by_label_records_would_deny() {
    let Some(docker) = Docker::new("docker-audit") else {
        return;
    };
    let id = docker.run_detached("tuned", &["--label", "driftlock.io/mode=audit"]);
    let unit = docker.node.status()["units"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == id.as_str()).cloned())
        .unwrap();
    assert_eq!(unit["mode"], "audit", "{unit}");
    payload_runs_and_is_recorded_would_deny(&docker.node, &id, |script| {
        docker.exec("tuned", script)
    });
}

/// Podman with a private storage root, arming through the package's hooks.d file.
struct Podman {
    node: Node,
    args: Vec<String>,
}

impl Podman {
    fn new(name: &str) -> Option<Self> {
        if !installed("podman", name) {
            return None;
        }
        let node = Node::new(name)?;
        let dir = node.dir.join("podman");
        for d in ["storage", "run", "hooks", "tmp"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        // The package's file, pointed at this build and this node's daemon.
        let mut hook: serde_json::Value =
            serde_json::from_slice(&fs::read(repo("systemd/hooks.d/driftlock.json")).unwrap())
                .unwrap();
        // The hook runs with no flags: it reads the node's runtime.conf, as driftlock-runtime
        // does (here a file of this test's, with this node's socket).
        hook["hook"]["path"] = BIN.into();
        let conf = dir.join("runtime.conf");
        fs::write(&conf, format!("SOCKET={}\n", node.dl_socket.display())).unwrap();
        hook["hook"]["env"] =
            serde_json::json!([format!("DRIFTLOCK_RUNTIME_CONF={}", conf.display())]);
        fs::write(dir.join("hooks/driftlock.json"), hook.to_string()).unwrap();
        let d = |s: &str| dir.join(s).to_string_lossy().into_owned();
        let args = vec![
            "--root".to_string(),
            d("storage"),
            "--runroot".into(),
            d("run"),
            "--tmpdir".into(),
            d("tmp"),
            "--storage-driver".into(),
            "overlay".into(),
            "--runtime".into(),
            "runc".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
            "--hooks-dir".into(),
            d("hooks"),
        ];
        let podman = Podman { node, args };
        let images = images().expect("test images");
        let out = podman.podman(&[
            "load",
            "-q",
            "-i",
            images.join("glibc.tar").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "podman load: {}", text(&out));
        // The OCI layout names only the tag: give the image its name.
        let loaded = String::from_utf8_lossy(&out.stdout)
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let out = podman.podman(&["tag", &loaded, "localhost/driftlock/glibc:latest"]);
        assert!(out.status.success(), "podman tag: {}", text(&out));
        Some(podman)
    }

    /// Replaces the runtime.conf the hook reads.
    fn set_runtime_conf(&self, text: &str) {
        fs::write(self.node.dir.join("podman/runtime.conf"), text).unwrap();
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(&self.args)
            .args(args)
            .output()
            .unwrap()
    }

    /// `podman run` arguments common to the tests: this machine's bounding set lacks
    /// CAP_SYS_RESOURCE, so Podman's default rlimits (raised to the host's maximum) cannot
    /// be set: ask for ones below them.
    const RUN: &'static [&'static str] = &[
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ];

    fn run_detached(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(Self::RUN);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["localhost/driftlock/glibc:latest", "sleep", "600"]);
        let out = self.podman(&args);
        assert!(out.status.success(), "podman run: {}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id.len(), 64, "{id}");
        // createRuntime holds creation until armed: armed as soon as run returns.
        assert!(armed(&self.node, &id), "{}", self.node.status());
        id
    }

    fn exec(&self, name: &str, script: &str) -> String {
        text(&self.podman(&["exec", name, "sh", "-c", script]))
    }
}

impl Podman {
    /// The processes this Podman left (conmon, and the `podman container cleanup` it runs):
    /// their command lines name its private directory.
    fn our_leftovers(&self) -> Vec<i32> {
        let needle = self.node.dir.join("podman").to_string_lossy().into_owned();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        // conmon outlives `rm`: it writes the exit file and runs `podman container cleanup`,
        // which writes into the tmpdir. Done after the node's tmpfs is gone, that recreated
        // the directory on the host's /tmp; wait for them (then kill what is left).
        let until = Instant::now() + Duration::from_secs(10);
        while !self.our_leftovers().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.our_leftovers() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn podman_arms_through_the_packages_hooks_d_file_with_no_wrapper() {
    let Some(podman) = Podman::new("podman") else {
        return;
    };
    let url = podman.node.payload_url();
    let id = podman.run_detached("pod-web", &[]);
    image_runs_and_payload_is_denied(
        &podman.node,
        &id,
        |script| podman.exec("pod-web", script),
        "localhost/driftlock/glibc:latest",
    );
    // poststop, from the same file: disarmed when the container goes.
    let out = podman.podman(&["rm", "-f", "-t", "0", "pod-web"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("pod-web disarmed", Duration::from_secs(20), || {
        !armed(&podman.node, &id)
    });

    // Audit mode by annotation.
    let id = podman.run_detached("pod-audit", &["--annotation", "driftlock.io/mode=audit"]);
    payload_runs_and_is_recorded_would_deny(&podman.node, &id, |script| {
        podman.exec("pod-audit", script)
    });

    // Kubernetes annotations a podman user writes select no rule: a namespace the
    // operator audits and an image name given that way are not the container's.
    fs::write(
        podman.node.config_path(),
        "[[namespace]]\nname = \"tuning\"\nmode = \"audit\"\n[[image]]\nname = \"registry.local/spoof*\"\nmode = \"audit\"\n",
    )
    .unwrap();
    let reloads = podman.node.status()["config_reloads"].as_u64().unwrap_or(0);
    podman.node.signal_daemon(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        podman.node.status()["config_reloads"].as_u64().unwrap_or(0) > reloads
    });
    let id = podman.run_detached(
        "pod-claims-tuning",
        &[
            "--annotation",
            "io.kubernetes.cri.sandbox-namespace=tuning",
            "--annotation",
            "io.kubernetes.cri.image-name=registry.local/spoof:1",
        ],
    );
    image_runs_and_payload_is_denied(
        &podman.node,
        &id,
        |script| podman.exec("pod-claims-tuning", script),
        "localhost/driftlock/glibc:latest",
    );
    let unit = podman.node.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(unit["mode"], "enforce", "{unit}");
    assert!(unit["namespace"].is_null(), "{unit}");
    let rec = records_of(&podman.node, &id, 1)
        .into_iter()
        .find(|r| r["path"] == "/tmp/kdevtmpfsi")
        .expect("the denial's record");
    assert_eq!(rec["identity"], "podman", "{rec}");
    assert_eq!(
        rec["image_name"], "localhost/driftlock/glibc:latest",
        "{rec}"
    );

    // A `podman run --rm` that drops and runs at once.
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(Podman::RUN);
    let script = drop_and_run(&url, "/tmp/p");
    args.extend_from_slice(&["localhost/driftlock/glibc:latest", "sh", "-c", &script]);
    let t = text(&podman.podman(&args));
    assert!(t.contains("rc=126"), "{t}");
}

/// How many containers a burst creates at once (`DRIFTLOCK_BURST`, default 100).
fn burst_size() -> usize {
    std::env::var("DRIFTLOCK_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn median_and_max(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    (median, ms.last().copied().unwrap_or(0.0))
}

/// Runs `create(i)` for `n` containers at once; returns each one's wall time (ms).
fn burst(n: usize, create: impl Fn(usize) -> Output + Sync) -> Vec<f64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let create = &create;
                s.spawn(move || {
                    let t = Instant::now();
                    let out = create(i);
                    assert!(out.status.success(), "container {i}: {}", text(&out));
                    t.elapsed().as_secs_f64() * 1e3
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each container's first program drops and runs a payload and keeps its exit status:
/// 126 in every one shows each was armed before its first exec.
const FIRST_EXEC: &str = "cp /usr/share/dormant /tmp/p; chmod +x /tmp/p; /tmp/p >/dev/null 2>&1; echo $? > /tmp/rc; sleep 600";

#[test]
fn a_burst_of_containers_through_containerd_is_armed_before_each_first_exec() {
    let Some(node) = Node::new("burst-ctr") else {
        return;
    };
    let n = burst_size();
    let run = |runtime: Option<&str>, id: String| {
        let mut args = vec!["run", "-d", "--net-host"];
        if let Some(r) = runtime {
            args.extend_from_slice(&["--runc-binary", r]);
        }
        args.extend_from_slice(&[crate::node::GLIBC, &id, "sh", "-c", FIRST_EXEC]);
        node.ctr(&args)
    };
    let kill_all = |prefix: &str| {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            let _ = node.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        }
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            let _ = node.ctr(&["tasks", "delete", "-f", &id]);
            let _ = node.ctr(&["containers", "delete", &id]);
        }
    };
    // Without driftlock first (plain runc), then through the wrapper.
    let plain = burst(n, |i| run(None, format!("plain-{i}")));
    kill_all("plain");
    let armed_ms = burst(n, |i| run(Some(RUNTIME), format!("dl-{i}")));
    let units = node.status()["units"].as_array().map_or(0, Vec::len);
    assert_eq!(units, n, "every container of the burst is armed");
    for i in 0..n {
        let id = format!("dl-{i}");
        let mut rc = String::new();
        wait_for(
            &format!("{id}'s first exec"),
            Duration::from_secs(60),
            || {
                rc = text(&node.ctr(&["tasks", "exec", "--exec-id", "rc", &id, "cat", "/tmp/rc"]));
                !rc.trim().is_empty() && !rc.contains("No such file")
            },
        );
        assert_eq!(
            rc.trim(),
            "126",
            "{id} ran its payload: not armed before its first exec"
        );
    }
    kill_all("dl");
    wait_for(
        "every stopped container disarmed",
        Duration::from_secs(60),
        || node.status()["units"].as_array().is_some_and(Vec::is_empty),
    );
    let (pm, px) = median_and_max(plain);
    let (dm, dx) = median_and_max(armed_ms);
    crate::support::figure(&format!(
        "burst of {n} containers through containerd (ctr run -d, all at once): creation median {pm:.0} ms / max {px:.0} ms with runc, {dm:.0} ms / {dx:.0} ms through driftlock ({:.2}x median)",
        dm / pm.max(1.0)
    ));
}

#[test]
fn a_burst_of_containers_through_docker_is_armed_before_each_first_exec() {
    let Some(docker) = Docker::new("burst-docker") else {
        return;
    };
    let n = burst_size();
    let run = |runtime: &str, name: String| {
        docker.docker(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--network",
            "host",
            "--name",
            &name,
            "driftlock/glibc:latest",
            "sh",
            "-c",
            FIRST_EXEC,
        ])
    };
    let plain = burst(n, |i| run("runc", format!("plain-{i}")));
    docker.remove_all();
    let armed_ms = burst(n, |i| run("driftlock", format!("dl-{i}")));
    let status = docker.node.status();
    let armed: Vec<String> = status["units"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter_map(|u| u["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if armed.len() != n {
        // Which container is missing, and what became of it (CI saw 99 of 100 once, under
        // four test threads; not reproduced alone or with the containerd burst beside it).
        for i in 0..n {
            let name = format!("dl-{i}");
            let id = text(&docker.docker(&["inspect", "-f", "{{.Id}}", &name]));
            if !armed.iter().any(|a| id.trim() == a) {
                let state = text(&docker.docker(&[
                    "inspect",
                    "-f",
                    "{{.State.Status}} exit={{.State.ExitCode}} started={{.State.StartedAt}} finished={{.State.FinishedAt}} error={{.State.Error}}",
                    &name,
                ]));
                eprintln!("{name} ({}) is not armed: {state}", id.trim());
            }
        }
        eprintln!("status: {status}");
    }
    assert_eq!(armed.len(), n, "every container of the burst is armed");
    for i in 0..n {
        let name = format!("dl-{i}");
        let mut rc = String::new();
        wait_for(
            &format!("{name}'s first exec"),
            Duration::from_secs(60),
            || {
                rc = docker.exec(&name, "cat /tmp/rc 2>/dev/null");
                !rc.trim().is_empty()
            },
        );
        assert_eq!(
            rc.trim(),
            "126",
            "{name} ran its payload: not armed before its first exec"
        );
    }
    docker.remove_all();
    wait_for(
        "every stopped container disarmed",
        Duration::from_secs(60),
        || {
            docker.node.status()["units"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    );
    let (pm, px) = median_and_max(plain);
    let (dm, dx) = median_and_max(armed_ms);
    crate::support::figure(&format!(
        "burst of {n} containers through Docker (docker run -d, all at once): creation median {pm:.0} ms / max {px:.0} ms with runc, {dm:.0} ms / {dx:.0} ms through driftlock ({:.2}x median)",
        dm / pm.max(1.0)
    ));
}

/// Start overhead per runtime, one container at a time: `run --rm ... true`, 20 each way,
/// alternating so that the machine's noise falls on both sides.
#[test]
fn container_start_overhead_per_runtime() {
    const RUNS: usize = 20;
    let time = |f: &dyn Fn() -> Output| {
        let t = Instant::now();
        let out = f();
        assert!(out.status.success(), "{}", text(&out));
        t.elapsed().as_secs_f64() * 1e3
    };
    let report = |runtime: &str, plain: Vec<f64>, armed: Vec<f64>| {
        let (pm, _) = median_and_max(plain);
        let (dm, _) = median_and_max(armed);
        crate::support::figure(&format!(
            "container start ({runtime}, run --rm true, median of {RUNS}): {pm:.0} ms without driftlock, {dm:.0} ms with ({:+.0} ms, {:.2}x)",
            dm - pm,
            dm / pm.max(1.0)
        ));
    };
    if let Some(node) = Node::new("start-ctr") {
        let (mut plain, mut armed) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            plain.push(time(&|| {
                node.ctr(&[
                    "run",
                    "--rm",
                    "--net-host",
                    crate::node::GLIBC,
                    &format!("p{i}"),
                    "true",
                ])
            }));
            armed.push(time(&|| {
                node.run_argv(crate::node::GLIBC, &format!("d{i}"), &[], &["true"])
            }));
        }
        report("containerd/ctr", plain, armed);
    }
    if let Some(docker) = Docker::new("start-docker") {
        let (mut plain, mut armed) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            for (runtime, v) in [("runc", &mut plain), ("driftlock", &mut armed)] {
                v.push(time(&|| {
                    docker.docker(&[
                        "run",
                        "--rm",
                        "--runtime",
                        runtime,
                        "--network",
                        "none",
                        "driftlock/glibc:latest",
                        "true",
                    ])
                }));
            }
        }
        report("Docker", plain, armed);
    }
    if let Some(podman) = Podman::new("start-podman") {
        // Without the hook: the same storage, an empty hooks directory.
        let empty = podman.node.dir.join("podman/no-hooks");
        fs::create_dir_all(&empty).unwrap();
        let hooks_arg = podman.args.iter().position(|a| a == "--hooks-dir").unwrap() + 1;
        let mut bare = podman.args.clone();
        bare[hooks_arg] = empty.to_string_lossy().into_owned();
        let run = |args: &[String]| {
            let mut c = Command::new("podman");
            c.args(args).args(["run", "--rm"]).args(Podman::RUN);
            c.args(["localhost/driftlock/glibc:latest", "true"]);
            c.output().unwrap()
        };
        let (mut plain, mut armed) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            plain.push(time(&|| run(&bare)));
            armed.push(time(&|| run(&podman.args)));
        }
        report("Podman", plain, armed);
    }
}

/// The hooks.d hook reads the node's runtime.conf like driftlock-runtime: a moved socket is
/// found (every test above), FAIL_OPEN lets a container start when no daemon answers (and
/// leaves the note the daemon records), and EXEMPT_NAMESPACES applies to Kubernetes'
/// namespaces only: a Podman container its user annotated kube-system is still armed.
#[test]
fn podman_hooks_d_hook_follows_runtime_conf_fail_open_and_exemptions() {
    let Some(podman) = Podman::new("podman-conf") else {
        return;
    };
    // A socket no daemon listens on, beside the real one: a fail-open note left there is
    // collected and counted by the daemon serving that directory.
    let gone = podman.node.dl_socket.with_file_name("moved.sock");
    podman.set_runtime_conf(&format!("SOCKET={}\n", gone.display()));
    let mut args = vec!["run", "-d", "--name", "closed"];
    args.extend_from_slice(Podman::RUN);
    args.extend_from_slice(&["localhost/driftlock/glibc:latest", "sleep", "600"]);
    let out = podman.podman(&args);
    assert!(
        !out.status.success(),
        "fail-closed without a daemon: {}",
        text(&out)
    );
    let _ = podman.podman(&["rm", "-f", "-t", "0", "closed"]);

    podman.set_runtime_conf(&format!("SOCKET={}\nFAIL_OPEN=true\n", gone.display()));
    args[3] = "open";
    let out = podman.podman(&args);
    assert!(out.status.success(), "fail-open: {}", text(&out));
    wait_for(
        "the fail-open note recorded",
        Duration::from_secs(20),
        || podman.node.status()["fail_open_containers"] == 1,
    );

    podman.set_runtime_conf(&format!(
        "SOCKET={}\nEXEMPT_NAMESPACES=kube-system, calico-*\n",
        podman.node.dl_socket.display()
    ));
    let mut args = vec!["run", "-d", "--name", "exempt"];
    args.extend_from_slice(Podman::RUN);
    args.extend_from_slice(&[
        "--annotation",
        "io.kubernetes.pod.namespace=kube-system",
        "localhost/driftlock/glibc:latest",
        "sleep",
        "600",
    ]);
    let out = podman.podman(&args);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A namespace only podman's user wrote is not Kubernetes': no exemption by it.
    assert!(
        armed(&podman.node, &id),
        "a podman annotation does not make a container kube-system's: {}",
        podman.node.status()
    );
}
