//! A container node for end-to-end tests: in the test thread's private mount namespace, a
//! tmpfs holding containerd's root and state, containerd 1.6 on its own socket, the
//! driftlock daemon, a loopback HTTP server serving the payload, and the test images
//! (built offline by testdata/build-images.sh, once per test run). Everything started is
//! killed by PID when the node drops, shims included (found by their containerd address).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};

use crate::support::{BIN, root_or_skip};

pub const RUNTIME: &str = env!("CARGO_BIN_EXE_driftlock-runtime");
pub const BUSYBOX: &str = "localhost/driftlock/busybox:latest";
pub const GLIBC: &str = "localhost/driftlock/glibc:latest";
pub const MUSL: &str = "localhost/driftlock/musl:latest";
const TOOLS: &[&str] = &[
    "containerd",
    "ctr",
    "runc",
    "umoci",
    "busybox",
    "cc",
    "musl-gcc",
];

/// The static payload built with the images (runs in any image, glibc or not).
pub fn payload_path() -> PathBuf {
    images().expect("test images").join("payload")
}

/// The test images, built once and kept in cargo's test scratch directory, keyed by the
/// build script's content so a changed script rebuilds them.
pub fn images() -> Option<&'static PathBuf> {
    static IMAGES: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/build-images.sh");
            let mut hasher = blake3::Hasher::new();
            hasher.update(&fs::read(&script).ok()?);
            hasher.update(&fs::read(script.with_file_name("src/exec-paths.c")).ok()?);
            let key = hasher.finalize().to_hex();
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("images-{}", &key[..12]));
            if dir.join("payload").exists() {
                return Some(dir);
            }
            let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
            let out = Command::new("bash").arg(&script).arg(&tmp).output().ok()?;
            if !out.status.success() {
                eprintln!(
                    "building test images failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return None;
            }
            // Another test process may have won the race; either copy is complete.
            if fs::rename(&tmp, &dir).is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            Some(dir)
        })
        .as_ref()
}

/// A loopback HTTP server that answers every GET with the payload.
/// A one-file HTTP server on the loopback (what an attacker downloads from).
pub struct Http {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Http {
    /// Serves `body` at every path.
    pub fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        // Read the whole request head: closing with unread bytes would
                        // send a reset that can cut the client's download short.
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(&body);
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        let _ = s.read(&mut buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Http { port, stop }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub struct Node {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub dl_socket: PathBuf,
    pub dl_state: PathBuf,
    pub audit: PathBuf,
    containerd: Option<Child>,
    daemon: Option<Child>,
    daemon_args: Vec<String>,
    daemon_prefix: Vec<String>,
    http: Http,
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

impl Node {
    /// A node, or `None` (with the reason printed) when not root or a tool is missing.
    pub fn new(name: &str) -> Option<Self> {
        Self::with_daemon_args(name, &[])
    }

    /// A node whose daemon gets `args` as well.
    pub fn with_daemon_args(name: &str, args: &[&str]) -> Option<Self> {
        Self::with_daemon(name, &[], args)
    }

    /// A node whose daemon is started through `prefix` (e.g. `setpriv ...`) with `args`.
    pub fn with_daemon(name: &str, prefix: &[&str], args: &[&str]) -> Option<Self> {
        if !root_or_skip(name) {
            return None;
        }
        if let Some(missing) = TOOLS.iter().find(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        }) {
            eprintln!("skipping {name}: {missing} is not installed (.ci/run installs it)");
            return None;
        }
        let images = images().expect("test images");
        // A size limit, not an allocation: the realism suite imports a Debian image.
        let dir = crate::private_ns::private_tmpfs(&format!("node-{name}"), "mode=0755,size=8g");
        for d in ["root", "state", "dl", "vol"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            dir.display(),
            socket.display()
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let dl_socket = dir.join("dl/driftlock.sock");
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            // The shim, and so runc and driftlock-runtime, inherit this environment.
            .env("DRIFTLOCK_SOCKET", &dl_socket)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let payload = fs::read(images.join("payload")).unwrap();
        let mut node = Node {
            socket,
            dl_state: dir.join("dl/state"),
            audit: dir.join("dl/audit.jsonl"),
            dl_socket,
            containerd: Some(containerd),
            daemon: None,
            // The fixtures' workloads pick audit mode by annotation, as a cluster whose pod
            // authors are trusted (`--annotations any`) does; the default policy, which
            // ignores them, has its own tests (annotations_*).
            daemon_args: if args.iter().any(|a| a.starts_with("--annotations")) {
                args.iter().map(|a| a.to_string()).collect()
            } else {
                std::iter::once("--annotations=any".to_string())
                    .chain(args.iter().map(|a| a.to_string()))
                    .collect()
            },
            daemon_prefix: prefix.iter().map(|a| a.to_string()).collect(),
            http: Http::start(payload),
            dir,
        };
        let sock = node.socket.clone();
        wait_for("containerd", Duration::from_secs(20), || sock.exists());
        for (base, file) in [
            ("localhost/driftlock/busybox", "busybox.tar"),
            ("localhost/driftlock/glibc", "glibc.tar"),
            ("localhost/driftlock/musl", "musl.tar"),
        ] {
            let out = node.ctr(&[
                "images",
                "import",
                "--base-name",
                base,
                images.join(file).to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(node.config_path(), "# test node\n").unwrap();
        node.start_daemon();
        Some(node)
    }

    /// Extra daemon arguments for the next [`Node::start_daemon`].
    pub fn set_daemon_args(&mut self, args: &[&str]) {
        self.daemon_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Where `http` serves its file.
    pub fn url_of(http: &Http) -> String {
        format!("http://127.0.0.1:{}/file", http.port)
    }

    pub fn payload_url(&self) -> String {
        format!("http://127.0.0.1:{}/payload", self.http.port)
    }

    pub fn start_daemon(&mut self) {
        let mut cmd = match self.daemon_prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["daemon", "--log-level", "warn", "--socket"])
            .arg(&self.dl_socket)
            .arg("--state-dir")
            .arg(&self.dl_state)
            .arg("--audit-log")
            .arg(&self.audit)
            .arg("--config")
            .arg(self.config_path())
            .args(&self.daemon_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let sock = self.dl_socket.clone();
        wait_for("the driftlock daemon", Duration::from_secs(20), || {
            Command::new(BIN)
                .args(["status", "--socket"])
                .arg(&sock)
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// The daemon's configuration file (empty at start).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("dl/config.toml")
    }

    /// Sends a signal to the daemon (SIGHUP: reload the configuration).
    pub fn signal_daemon(&self, sig: nix::sys::signal::Signal) {
        let pid = self.status_pid() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    /// The daemon's pid.
    pub fn status_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `ctr` in containerd's CRI namespace (`k8s.io`), where the Kubernetes annotations the
    /// tests give stand for the kubelet's (in any other namespace they name nothing).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Imports an OCI layout tar as `base:latest`.
    pub fn import(&self, base: &str, tar: &Path) {
        let out = self.ctr(&[
            "images",
            "import",
            "--base-name",
            base,
            tar.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "import {}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ctr run --rm --net-host` through driftlock-runtime of `argv`; returns the output.
    pub fn run_argv(&self, image: &str, id: &str, extra: &[&str], argv: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--net-host", "--runc-binary", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(argv);
        self.ctr(&args)
    }

    /// The bind mount (`/.out`) through which [`Node::run_logged`] and
    /// [`Node::exec_logged`] read a script's output.
    pub fn out_mount(&self) -> String {
        let dir = self.dir.join("out");
        fs::create_dir_all(&dir).unwrap();
        format!("type=bind,src={},dst=/.out,options=rbind:rw", dir.display())
    }

    /// Runs `script` in a new container (with [`Node::out_mount`]) and returns what it
    /// printed, read from a file it wrote: `ctr run --rm` can lose the tail of a task's
    /// stdout when the task exits at once (its FIFO copy is cut when the task is deleted),
    /// and a test must not read a lost `echo` as a verdict. Panics if `ctr` fails.
    pub fn run_logged(&self, image: &str, id: &str, extra: &[&str], script: &str) -> String {
        let mount = self.out_mount();
        let mut args: Vec<&str> = vec!["--mount", &mount];
        args.extend_from_slice(extra);
        let wrapped = format!("{{\n{script}\n}} >/.out/{id} 2>&1");
        let out = self.run(image, id, &args, &wrapped);
        let printed = fs::read_to_string(self.dir.join("out").join(id)).unwrap_or_default();
        assert!(
            out.status.success(),
            "ctr run {id}: {}\n{printed}",
            text(&out)
        );
        printed
    }

    /// Runs `script` in the running container `id` (started with [`Node::out_mount`]) as
    /// exec `exec_id`, and returns what it printed (see [`Node::run_logged`]).
    pub fn exec_logged(&self, id: &str, exec_id: &str, script: &str) -> String {
        let file = format!("{id}-{exec_id}");
        let wrapped = format!("{{\n{script}\n}} >/.out/{file} 2>&1");
        let out = self.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            exec_id,
            id,
            "sh",
            "-c",
            &wrapped,
        ]);
        let printed = fs::read_to_string(self.dir.join("out").join(&file)).unwrap_or_default();
        assert!(
            out.status.success(),
            "ctr tasks exec {id}: {}\n{printed}",
            text(&out)
        );
        printed
    }

    /// `ctr run --rm --net-host` through driftlock-runtime; returns the output.
    pub fn run(&self, image: &str, id: &str, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--rm", "--net-host", "--runc-binary", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id, "sh", "-c", script]);
        self.ctr(&args)
    }

    /// Starts a detached container (`sleep 600`) and waits until it is armed; returns its
    /// unit status.
    pub fn run_detached(&self, image: &str, id: &str) -> serde_json::Value {
        self.run_detached_with(image, id, &[])
    }

    /// [`Node::run_detached`] with `extra` arguments to `ctr run` (mounts).
    pub fn run_detached_with(&self, image: &str, id: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["run", "-d", "--net-host", "--runc-binary", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id, "sleep", "600"]);
        let out = self.ctr(&args);
        assert!(out.status.success(), "{}", text(&out));
        let unit = || {
            self.status()["units"]
                .as_array()
                .and_then(|u| u.iter().find(|u| u["id"] == id).cloned())
        };
        wait_for(&format!("{id} armed"), Duration::from_secs(20), || {
            unit().is_some()
        });
        unit().unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(&self.dl_socket)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Exec records (not coverage records), waiting until at least `n` exist.
    pub fn records(&self, n: usize) -> Vec<serde_json::Value> {
        let exec_records = || -> Vec<serde_json::Value> {
            crate::private_ns::read_records(&self.audit, 0, Duration::ZERO)
                .into_iter()
                .filter(|r| r.get("kind").is_none())
                .collect()
        };
        let mut recs = exec_records();
        let until = Instant::now() + Duration::from_secs(20);
        while recs.len() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            recs = exec_records();
        }
        recs
    }

    /// Coverage records (mounts armed after start), waiting until one matches `want`.
    pub fn coverage_record(
        &self,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let found = crate::private_ns::read_records(&self.audit, 0, Duration::ZERO)
                .into_iter()
                .find(|r| r["kind"] == "coverage" && want(r));
            if found.is_some() || Instant::now() > until {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn our_shims(&self) -> Vec<i32> {
        let needle = self.socket.to_string_lossy().into_owned();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains("containerd-shim")
                        && String::from_utf8_lossy(&c).contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "-f", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        self.kill_daemon();
        for pid in self.our_shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.dir);
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
