//! A throwaway "container" for root tests: a private mount namespace for the test thread,
//! a tmpfs holding lower/upper/work, an overlay rootfs, a tmpfs on rootfs/tmp, and a
//! daemon started inside the namespace and killed (by PID) when the sandbox drops, so no
//! exec can stay blocked even if the test fails.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub const BIN: &str = env!("CARGO_BIN_EXE_driftlock");

/// Where the root tests leave the figures they measured (`scripts/test` prints them).
pub fn figures_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("driftlock-figures.txt")
}

/// Prints a measured figure and keeps it for the end of the test run's output.
pub fn figure(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(figures_path())
    {
        let _ = writeln!(f, "{line}");
    }
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "skipping {test}: needs root (fanotify permission events and mounts); CI runs it as root"
    );
    false
}

/// Programs copied into the image's lower layer (dynamically linked; the loader lives on the
/// host's root filesystem, which is never marked).
pub const IMAGE: &[&str] = &[
    "/usr/bin/true",
    "/usr/bin/cat",
    "/usr/bin/cp",
    "/usr/bin/sh",
];
/// A program that is not in the image: the "payload".
pub const PAYLOAD_SOURCE: &str = "/usr/bin/id";

pub struct Sandbox {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub tmp: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub audit: PathBuf,
    daemon: Option<Child>,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Sandbox {
    pub fn new(name: &str) -> Self {
        let dir = crate::private_ns::private_tmpfs(&format!("it-{name}"), "mode=0755,size=2g");
        for d in ["lower/bin", "upper", "work", "rootfs", "state", "host-vol"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        for src in IMAGE {
            let name = Path::new(src).file_name().unwrap();
            fs::copy(src, dir.join("lower/bin").join(name)).unwrap();
        }
        fs::write(dir.join("lower/bin/data.txt"), b"not executable").unwrap();
        let rootfs = dir.join("rootfs");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            dir.join("lower").display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .expect("mount overlay");
        let tmp = rootfs.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        mount(
            Some("tmpfs"),
            &tmp,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=1777"),
        )
        .expect("mount rootfs/tmp");
        Sandbox {
            socket: dir.join("driftlock.sock"),
            state: dir.join("state"),
            audit: dir.join("audit.jsonl"),
            rootfs,
            tmp,
            dir,
            daemon: None,
        }
    }

    pub fn start_daemon(&mut self, extra: &[&str]) {
        self.start_daemon_via(&[], extra);
    }

    /// Starts the daemon through `prefix` (a program that restricts it, then runs it).
    pub fn start_daemon_via(&mut self, prefix: &[&str], extra: &[&str]) {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--audit-log")
            .arg(&self.audit)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.client(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up");
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map(|c| c.id()).unwrap()
    }

    pub fn signal_daemon(&self, sig: nix::sys::signal::Signal) {
        let pid = self.daemon.as_ref().map(|c| c.id() as i32).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    /// SIGKILL, as a crash or the OOM killer would, and reap it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn daemon_alive(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run client")
    }

    pub fn arm(&self, id: &str, extra: &[&str]) -> Output {
        let mut args = vec!["arm", "--id", id, "--rootfs"];
        let rootfs = self.rootfs.to_str().unwrap().to_string();
        let tmp = self.tmp.to_str().unwrap().to_string();
        args.push(&rootfs);
        args.push("--mount");
        args.push(&tmp);
        args.extend_from_slice(extra);
        let out = self.client(&args);
        assert!(
            out.status.success(),
            "arm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Makes `path` executable (mode 0755).
    pub fn install_mode(&self, path: &Path) {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Installs the payload (a program not in the image) as `tmp/payload` and returns its
    /// path.
    pub fn install_payload(&self) -> PathBuf {
        let payload = self.tmp.join("payload");
        self.install(PAYLOAD_SOURCE, &payload);
        payload
    }

    /// Copies `src` to `dst` with mode 0755.
    pub fn install(&self, src: &str, dst: &Path) {
        fs::copy(src, dst).unwrap();
        fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Audit records written so far, waiting until at least `n` exist.
    pub fn records(&self, n: usize) -> Vec<serde_json::Value> {
        crate::private_ns::read_records(&self.audit, n, Duration::from_secs(10))
    }

    /// Waits (up to 10 s) until the daemon's status satisfies `ok`.
    pub fn wait_for_status(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !ok(&self.status_json()) {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = run_ok(
            Command::new(BIN)
                .args(["status", "--json", "--socket"])
                .arg(&self.socket),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // Killing the daemon closes its fanotify group; the kernel then allows anything
            // still pending, so nothing stays blocked even if the test panicked.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Executes `path` and returns its exit code, or the OS error of the exec.
pub fn exec(path: &Path) -> Result<i32, i32> {
    match Command::new(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) => Ok(s.code().unwrap_or(-1)),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}

pub const EPERM: Result<i32, i32> = Err(libc::EPERM);

/// The path bytes of a record (unescaped).
pub fn record_path(rec: &serde_json::Value) -> Vec<u8> {
    driftlock::escape::unescape(rec["path"].as_str().unwrap()).unwrap()
}

pub fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Runs `bin hook ARGS` as runc would: the OCI state of container `id` (status `creating`
/// or `stopped`, runc init's `pid`, `bundle`) on stdin, with `env` added; waits for it.
pub fn run_hook(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
    (id, status, pid, bundle): (&str, &str, u32, &Path),
) -> Output {
    use std::io::Write;
    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"{id}","status":"{status}","pid":{pid},"bundle":"{}"}}"#,
        bundle.display()
    );
    let mut cmd = Command::new(bin);
    cmd.arg("hook").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A loopback address with a free port, for a daemon's metrics.
pub fn free_metrics_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A free TCP port for a daemon to listen on, chosen below the kernel's ephemeral range: a
/// port taken from the ephemeral range and released could be handed at once to another
/// test's listener bound to port 0 (a payload server), and a scrape would read that.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_000);
    let (first, span) = (10_000u32, low - 10_000);
    let start = std::process::id() * 7919 % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + n * 97) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// One scrape of the metrics endpoint at `addr` (`None`: it does not answer).
pub fn scrape_metrics(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of one series (name and labels, as exposed) in a scrape of `addr`; `None`
/// when the endpoint does not answer or has no such series.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    scrape_metrics(addr)?
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The labels of the first series of metric `name` in a scrape of `addr` (`{...}`).
pub fn metric_labels(addr: &str, name: &str) -> Option<String> {
    scrape_metrics(addr)?
        .lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with('{')))
        .and_then(|rest| rest.split_once(' '))
        .map(|(labels, _)| labels.to_string())
}
