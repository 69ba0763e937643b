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

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .unwrap()
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
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ps = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ps.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
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

#[test]
fn docker_run_through_the_driftlock_runtime_denies_the_drop_and_keeps_it_across_restart() {
    let Some(docker) = Docker::new("docker") else {
        return;
    };
    let url = docker.node.payload_url();
    let id = docker.run_detached("web", &[]);
    // Image programs run; `docker exec` is gated like the container's own processes.
    assert!(
        docker
            .exec("web", "hello-dyn")
            .contains("hello from a dynamically")
    );
    let t = docker.exec("web", &drop_and_run(&url, "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=126"), "{t}");
    let recs = records_of(&docker.node, &id, 1);
    let rec = recs
        .iter()
        .find(|r| r["path"] == "/tmp/kdevtmpfsi")
        .unwrap_or_else(|| panic!("no record of the payload: {recs:?}"));
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["image_name"], "driftlock/glibc:latest", "{rec}");

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
    let url = docker.node.payload_url();
    let id = docker.run_detached("tuned", &["--label", "driftlock.io/mode=audit"]);
    let unit = docker.node.status()["units"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == id.as_str()).cloned())
        .unwrap();
    assert_eq!(unit["mode"], "audit", "{unit}");
    let t = docker.exec("tuned", &drop_and_run(&url, "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=0"), "audit mode must not deny: {t}");
    let recs = records_of(&docker.node, &id, 1);
    assert!(
        recs.iter()
            .any(|r| r["path"] == "/tmp/kdevtmpfsi" && r["verdict"] == "would-deny"),
        "{recs:?}"
    );
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
        hook["hook"]["path"] = BIN.into();
        hook["hook"]["env"] =
            serde_json::json!([format!("DRIFTLOCK_SOCKET={}", node.dl_socket.display())]);
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

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
    }
}

#[test]
fn podman_arms_through_the_packages_hooks_d_file_with_no_wrapper() {
    let Some(podman) = Podman::new("podman") else {
        return;
    };
    let url = podman.node.payload_url();
    let id = podman.run_detached("pod-web", &[]);
    assert!(
        podman
            .exec("pod-web", "hello-dyn")
            .contains("hello from a dynamically")
    );
    let t = podman.exec("pod-web", &drop_and_run(&url, "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=126"), "{t}");
    let recs = records_of(&podman.node, &id, 1);
    let rec = recs
        .iter()
        .find(|r| r["path"] == "/tmp/kdevtmpfsi")
        .unwrap_or_else(|| panic!("no record of the payload: {recs:?}"));
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(
        rec["image_name"], "localhost/driftlock/glibc:latest",
        "{rec}"
    );
    // poststop, from the same file: disarmed when the container goes.
    let out = podman.podman(&["rm", "-f", "-t", "0", "pod-web"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("pod-web disarmed", Duration::from_secs(20), || {
        !armed(&podman.node, &id)
    });

    // Audit mode by annotation.
    let id = podman.run_detached("pod-audit", &["--annotation", "driftlock.io/mode=audit"]);
    let t = podman.exec("pod-audit", &drop_and_run(&url, "/tmp/kdevtmpfsi"));
    assert!(t.contains("rc=0"), "audit mode must not deny: {t}");
    let recs = records_of(&podman.node, &id, 1);
    assert!(
        recs.iter()
            .any(|r| r["path"] == "/tmp/kdevtmpfsi" && r["verdict"] == "would-deny"),
        "{recs:?}"
    );

    // A `podman run --rm` that drops and runs at once.
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(Podman::RUN);
    let script = drop_and_run(&url, "/tmp/p");
    args.extend_from_slice(&["localhost/driftlock/glibc:latest", "sh", "-c", &script]);
    let t = text(&podman.podman(&args));
    assert!(t.contains("rc=126"), "{t}");
}
