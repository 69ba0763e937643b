//! Issue 18: what a Kubernetes deployment relies on, with the components that run here (no
//! kubelet): a rolling update's hand-over of the fanotify group from the old pod's daemon
//! to the new one's, a ConfigMap swapped the way the kubelet swaps it, metrics that need a
//! bearer token off the loopback, and a real Prometheus scraping them.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a daemon the way a new pod's container does (`--take-over`), its log in `log`.
fn start_successor(sb: &Sandbox, log: &Path) -> KillOnDrop {
    let err = fs::File::create(log).unwrap();
    KillOnDrop(
        Command::new(BIN)
            .arg("daemon")
            .arg("--socket")
            .arg(&sb.socket)
            .arg("--state-dir")
            .arg(&sb.state)
            .arg("--audit-log")
            .arg(&sb.audit)
            .arg("--take-over")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

/// Waits (up to 60 s) until `log` holds `what`; returns the line.
fn wait_for_log(log: &Path, what: &str) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(what)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < until,
            "no {what:?} in the successor's log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Execs `path` in a loop until `stop`; returns (result, latency) of each.
fn exec_loop(
    path: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Result<i32, i32>, Duration)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let r = exec(&path);
            out.push((r, t.elapsed()));
        }
        out
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// A rolling update with surge: the new pod's daemon starts while the old one runs, takes
/// its fanotify group (every container's marks stay in the kernel), and the old one is
/// stopped afterwards. Image programs and a payload are exec'd in a loop on both cores
/// throughout: no image exec fails, no payload exec runs — the unprotected window is 0.
#[test]
fn rolling_update_hands_the_group_over_without_a_window() {
    if !root_or_skip("rolling-update") {
        return;
    }
    let mut sb = Sandbox::new("rolling-update");
    sb.start_daemon(&["--take-over"]);
    sb.arm("c1", &[]);
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
    let stop = Arc::new(AtomicBool::new(false));
    let image_loop = exec_loop(sb.rootfs.join("bin/true"), Arc::clone(&stop));
    let payload_loop = exec_loop(payload.clone(), Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));

    let log = sb.dir.join("successor.log");
    let started = Instant::now();
    let successor = start_successor(&sb, &log);
    let done = wait_for_log(&log, "hand-over from pid");
    let handed_over = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    // The old pod is deleted once the new one is ready.
    let old_pid = sb.daemon_pid();
    sb.signal_daemon(nix::sys::signal::Signal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(10);
    while sb.daemon_alive() {
        assert!(Instant::now() < until, "the old daemon did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let images = image_loop.join().unwrap();
    let payloads = payload_loop.join().unwrap();

    let image_failures: Vec<_> = images.iter().filter(|(r, _)| *r != Ok(0)).collect();
    assert!(
        image_failures.is_empty(),
        "image execs failed during the update: {image_failures:?}"
    );
    let ran: Vec<_> = payloads.iter().filter(|(r, _)| *r != EPERM).collect();
    assert!(
        ran.is_empty(),
        "payload execs not denied during the update: {ran:?}"
    );
    assert!(images.len() > 20 && payloads.len() > 20, "the loops ran");
    // The successor serves the socket and judges: a fresh payload is denied by it.
    assert!(
        sb.socket.exists(),
        "the old daemon left the successor's socket"
    );
    assert!(
        !driftlock::handover::predecessor_socket(&sb.socket).exists(),
        "the old daemon removed its relay socket"
    );
    let before = sb.status_json()["units"][0]["counters"]["denied"]
        .as_u64()
        .unwrap();
    assert_eq!(exec(&payload), EPERM);
    sb.wait_for_status("the successor's denial", |s| {
        s["units"][0]["counters"]["denied"].as_u64() == Some(before + 1)
    });
    let old_log = fs::read_to_string(&log).unwrap();
    assert!(
        old_log.contains(&format!("from the daemon at pid {old_pid}")),
        "{old_log}"
    );
    let longest = images
        .iter()
        .chain(&payloads)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let typical = median(images.iter().map(|(_, d)| *d).collect());
    figure(&format!(
        "rolling update (hand-over): unprotected window 0 ({} image execs all ran, {} payload execs all denied); successor start to serving {:.0} ms, of which execs waited in the kernel {} ms; longest exec during it {:.1} ms (median {:.2} ms)",
        images.len(),
        payloads.len(),
        millis(handed_over),
        done.split(" done in ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .unwrap_or("?"),
        millis(longest),
        millis(typical)
    ));
    if std::env::var_os("DRIFTLOCK_SHOW_LOG").is_some() {
        eprintln!("{old_log}");
    }
    drop(successor);
}

/// The successor dies right after taking the group: the old daemon still holds it (execs
/// wait, none runs), and the next successor is handed the same group by the old daemon
/// (its relay socket), answers what waited, and protects again.
#[test]
fn a_successor_that_dies_is_replaced_through_the_old_daemon() {
    if !root_or_skip("relay") {
        return;
    }
    let mut sb = Sandbox::new("relay");
    sb.start_daemon(&["--take-over"]);
    sb.arm("c1", &[]);
    let payload = sb.install_payload();
    let first_log = sb.dir.join("first.log");
    let mut first = start_successor(&sb, &first_log);
    wait_for_log(&first_log, "hand-over from pid");
    // The successor crashes (SIGKILL); the old pod is still there.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let exec_via_sh = |p: PathBuf| {
        std::thread::spawn(move || {
            Command::new("sh")
                .args(["-c", "exec \"$0\" 2>/dev/null"])
                .arg(&p)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .code()
        })
    };
    let waiting_payload = exec_via_sh(payload.clone());
    let waiting_image = exec_via_sh(sb.rootfs.join("bin/true"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting_payload.is_finished(),
        "with the group held and no reader, the exec must wait, not run"
    );
    let second_log = sb.dir.join("second.log");
    let second = start_successor(&sb, &second_log);
    wait_for_log(&second_log, "hand-over from pid");
    assert_eq!(waiting_payload.join().unwrap(), Some(126), "denied");
    assert_eq!(waiting_image.join().unwrap(), Some(0), "allowed");
    assert_eq!(exec(&payload), EPERM);
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    let text = fs::read_to_string(&second_log).unwrap();
    assert!(text.contains("had read but not answered"), "{text}");
    drop(second);
}

/// Writes a ConfigMap volume as the kubelet does: the data in a timestamped directory,
/// `..data` pointing at it (swapped by renaming `..data_tmp` over it), and each key a
/// symlink through `..data`.
fn write_configmap(dir: &Path, generation: u32, config: &str) {
    let data = format!("..2026_12_01_12_00_0{generation}.000000001");
    fs::create_dir_all(dir.join(&data)).unwrap();
    fs::write(dir.join(&data).join("config.toml"), config).unwrap();
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if !dir.join("config.toml").exists() {
        std::os::unix::fs::symlink("..data/config.toml", dir.join("config.toml")).unwrap();
    }
    if generation > 1 {
        let old = format!("..2026_12_01_12_00_0{}.000000001", generation - 1);
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// The ConfigMap changes: the kubelet swaps `..data`, the daemon (`--watch-config`, reading
/// it through the directory fd the pod's entry point passes, as in the DaemonSet) reloads,
/// and the new allow entry is live without a restart; a broken version is refused.
#[test]
fn a_configmap_swap_is_reloaded_without_a_restart() {
    if !root_or_skip("configmap") {
        return;
    }
    let mut sb = Sandbox::new("configmap");
    let cm = sb.dir.join("configmap");
    fs::create_dir_all(&cm).unwrap();
    write_configmap(&cm, 1, "mode = \"enforce\"\n");
    let cm_arg = cm.to_str().unwrap().to_string();
    sb.start_daemon_via(
        &["sh", "-c", "exec 3<\"$0\"; exec \"$@\"", &cm_arg],
        &["--config", "/proc/self/fd/3/config.toml", "--watch-config"],
    );
    sb.arm("c1", &["--image-name", "registry.local/app:1"]);
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fs::read(PAYLOAD_SOURCE).unwrap(),
    ));
    let pid = sb.daemon_pid();
    let swapped = Instant::now();
    write_configmap(
        &cm,
        2,
        &format!(
            "mode = \"enforce\"\n[[allow]]\nimage = \"registry.local/app:*\"\nsha256 = \"{sha}\"\ncomment = \"from the ConfigMap\"\n"
        ),
    );
    sb.wait_for_status("the reload", |s| s["config_reloads"] == 1);
    let reloaded = swapped.elapsed();
    assert_eq!(exec(&payload), Ok(0), "the new allow entry is live");
    assert_eq!(sb.daemon_pid(), pid, "no restart");
    let other = sb.tmp.join("other");
    sb.install("/usr/bin/env", &other);
    assert_eq!(exec(&other), EPERM, "only the allowed content");
    write_configmap(&cm, 3, "mode = \"sometimes\"\n");
    sb.wait_for_status("the refused reload", |s| s["config_reload_errors"] == 1);
    assert!(sb.daemon_alive());
    assert_eq!(exec(&payload), Ok(0), "the running configuration is kept");
    figure(&format!(
        "ConfigMap swap (..data) to reload applied: {:.0} ms",
        millis(reloaded)
    ));
}

fn free_port() -> u16 {
    crate::support::free_port()
}

fn http_get(addr: &str, auth: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let header = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{header}\r\n").as_bytes())
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Off the loopback (all addresses, as in a pod), metrics need the bearer token from the
/// mounted Secret, read at each scrape (a rotated Secret applies at once); without a token
/// file such an address is refused at start.
#[test]
fn metrics_off_the_loopback_need_the_bearer_token() {
    if !root_or_skip("metrics-token") {
        return;
    }
    let mut sb = Sandbox::new("metrics-token");
    let port = free_port();
    let token = sb.dir.join("token");
    fs::write(&token, "first-token\n").unwrap();
    sb.start_daemon(&[
        "--metrics-addr",
        &format!("0.0.0.0:{port}"),
        "--metrics-token-file",
        token.to_str().unwrap(),
    ]);
    let addr = format!("127.0.0.1:{port}");
    let denied = http_get(&addr, None);
    assert!(denied.starts_with("HTTP/1.0 401"), "{denied}");
    assert!(denied.contains("WWW-Authenticate: Bearer"), "{denied}");
    assert!(
        !denied.contains("driftlock_"),
        "no figures without the token"
    );
    assert!(http_get(&addr, Some("wrong")).starts_with("HTTP/1.0 401"));
    let ok = http_get(&addr, Some("first-token"));
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
    assert!(ok.contains("driftlock_execs_total"));
    fs::write(&token, "second-token").unwrap();
    assert!(http_get(&addr, Some("first-token")).starts_with("HTTP/1.0 401"));
    assert!(http_get(&addr, Some("second-token")).starts_with("HTTP/1.0 200"));
    fs::remove_file(&token).unwrap();
    assert!(
        http_get(&addr, Some("second-token")).starts_with("HTTP/1.0 401"),
        "a missing token file refuses every scrape"
    );
    let out = Command::new(BIN)
        .args(["daemon", "--metrics-addr", "0.0.0.0:9464", "--socket"])
        .arg(sb.dir.join("x.sock"))
        .arg("--state-dir")
        .arg(sb.dir.join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--metrics-token-file"),
        "{err}"
    );
}

/// A GET on loopback; returns the body.
fn get_body(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of an instant query through Prometheus's HTTP API (the first series).
fn prometheus_value(addr: &str, query: &str) -> Option<String> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get_body(addr, &format!("/api/v1/query?query={encoded}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

/// Issue 18: a real Prometheus (Debian's package) scrapes the daemon with the bearer token,
/// as a cluster's Prometheus does through the PodMonitor, and a counter is read back
/// through Prometheus's HTTP API; a job without the token is refused (its target is down).
#[test]
fn prometheus_scrapes_with_the_bearer_token() {
    if !root_or_skip("prometheus") {
        return;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping prometheus: it is not installed (.ci/run installs it)");
        return;
    }
    let mut sb = Sandbox::new("prometheus");
    let token = sb.dir.join("token");
    fs::write(&token, "a-scrape-token\n").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    sb.start_daemon(&[
        "--metrics-addr",
        &metrics,
        "--metrics-token-file",
        token.to_str().unwrap(),
    ]);
    sb.arm("c1", &[]);
    for _ in 0..3 {
        assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    }
    let payload = sb.install_payload();
    for _ in 0..2 {
        assert_eq!(exec(&payload), EPERM);
    }
    let config = sb.dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: driftlock\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{metrics}']\n  - job_name: no-token\n    static_configs:\n      - targets: ['{metrics}']\n",
            token.display()
        ),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                sb.dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(sb.dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(60);
    let deny = loop {
        if let Some(v) = prometheus_value(&web, "driftlock_execs_total{verdict=\"deny\"}") {
            break v;
        }
        assert!(
            Instant::now() < until,
            "Prometheus never had the counter; its log:\n{}",
            fs::read_to_string(sb.dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(deny, "2", "the denials, read back through Prometheus");
    assert_eq!(
        prometheus_value(&web, "driftlock_execs_total{verdict=\"allow\"}").as_deref(),
        Some("3")
    );
    assert_eq!(
        prometheus_value(&web, "up{job=\"driftlock\"}").as_deref(),
        Some("1")
    );
    let no_token = loop {
        if let Some(v) = prometheus_value(&web, "up{job=\"no-token\"}") {
            break v;
        }
        assert!(Instant::now() < until, "the no-token job was never scraped");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(no_token, "0", "a scrape without the token is refused");
    let targets = get_body(&web, "/api/v1/targets").unwrap();
    assert!(targets.contains("401"), "{targets}");
    figure(&format!(
        "Prometheus {}: first counter queryable {:.1} s after its start (bearer token; no-token job down with 401)",
        String::from_utf8_lossy(
            &Command::new("prometheus")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .split_whitespace()
        .nth(2)
        .unwrap_or("?"),
        started.elapsed().as_secs_f64()
    ));
}

/// Upgrading from a daemon that cannot hand over (a version before the protocol): the new
/// one does not wait for it (the rolling update would stall) but starts beside it with its
/// own group, re-arms the recorded containers and takes the socket; when the old one exits
/// and removes the socket path, as it does, the new one listens there again.
#[test]
fn a_daemon_that_cannot_hand_over_is_joined_not_waited_for() {
    use std::os::unix::net::UnixListener;
    if !root_or_skip("no-hand-over") {
        return;
    }
    let mut sb = Sandbox::new("no-hand-over");
    sb.start_daemon(&[]);
    sb.arm("c1", &[]);
    let payload = sb.install_payload();
    assert_eq!(exec(&payload), EPERM);
    // The unit stays recorded in the state directory; an old daemon answers the socket and
    // refuses the request it does not know.
    sb.kill_daemon();
    let _ = fs::remove_file(&sb.socket);
    let old = UnixListener::bind(&sb.socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let old_thread = {
        let stop = Arc::clone(&stop);
        old.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match old.accept() {
                    Ok((mut s, _)) => {
                        let mut buf = [0u8; 4096];
                        let _ = s.set_nonblocking(false);
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"{\"v\":1,\"ok\":false,\"code\":\"invalid\",\"error\":\"malformed request: unknown variant `handover`\"}\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let log = sb.dir.join("new.log");
    let _new = start_successor(&sb, &log);
    wait_for_log(&log, "cannot hand over");
    wait_for_log(&log, "driftlock daemon ready");
    assert_eq!(
        exec(&payload),
        EPERM,
        "the recorded container is armed again"
    );
    assert_eq!(exec(&sb.rootfs.join("bin/true")), Ok(0));
    assert!(sb.status_json()["units"][0]["id"] == "c1");
    // The old daemon exits and removes the socket path.
    stop.store(true, Ordering::Relaxed);
    old_thread.join().unwrap();
    fs::remove_file(&sb.socket).unwrap();
    wait_for_log(&log, "listening there again");
    sb.wait_for_status("the socket again", |s| s["units"][0]["id"] == "c1");
    assert_eq!(exec(&payload), EPERM);
}
