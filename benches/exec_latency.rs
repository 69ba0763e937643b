//! Exec latency with and without driftlock, measured in one run (needs root).
//!
//! `cargo bench --bench exec_latency`. In a private mount namespace it builds two tmpfs
//! mounts holding the same programs: one is never marked (the baseline: no listener), the
//! other is armed in a driftlock daemon in enforce mode. Rounds alternate between the two,
//! so machine noise hits both sides alike; it reports the median and p99 per exec and the
//! paired ratio. Programs: a static binary (built with `cc -static` when available) and a
//! dynamically linked one (`/usr/bin/true`). Every driftlock exec after the first is a
//! warm-cache hit. Environment: `DRIFTLOCK_BENCH_ROUNDS` (default 40), `..._PER_ROUND` (50).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

const BIN: &str = env!("CARGO_BIN_EXE_driftlock");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program to time: its path, and the root to chroot into first (so that a dynamic
/// program's loader is the one in that root, on the measured filesystem).
#[derive(Clone)]
struct Target {
    path: PathBuf,
    chroot: Option<PathBuf>,
}

fn per_exec(t: &Target, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let mut cmd = Command::new(&t.path);
            cmd.stdout(Stdio::null());
            if let Some(root) = t.chroot.clone() {
                use std::os::unix::process::CommandExt;
                // SAFETY (bench): chroot and chdir are async-signal-safe syscalls.
                unsafe {
                    cmd.pre_exec(move || {
                        nix::unistd::chroot(&root)?;
                        nix::unistd::chdir("/")?;
                        Ok(())
                    });
                }
            }
            let start = Instant::now();
            let st = cmd.status().unwrap();
            assert!(st.success(), "{} failed", t.path.display());
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Copies a dynamic program with its loader and libraries into `root` (same paths).
fn install_with_libs(program: &str, root: &Path) {
    let out = Command::new("ldd").arg(program).output().unwrap();
    let mut files = vec![PathBuf::from(program)];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
    }
    for f in files {
        let dst = root.join(f.strip_prefix("/").unwrap());
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(&f, &dst).unwrap();
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn static_binary(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("true.c");
    fs::write(&src, "int main(void){return 0;}\n").ok()?;
    let out = dir.join("static-true");
    let ok = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?
        .success();
    ok.then_some(out)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("exec_latency: skipped, needs root (fanotify marks and mounts)");
        return;
    }
    let rounds = env_usize("DRIFTLOCK_BENCH_ROUNDS", 40);
    let per_round = env_usize("DRIFTLOCK_BENCH_PER_ROUND", 50);
    unshare(CloneFlags::CLONE_NEWNS).unwrap();
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let base = std::env::temp_dir().join(format!("driftlock-bench-exec-{}", std::process::id()));
    fs::create_dir_all(&base).unwrap();
    mount(
        Some("tmpfs"),
        &base,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let plain = base.join("plain");
    let marked = base.join("marked");
    for d in [&plain, &marked] {
        fs::create_dir_all(d).unwrap();
        mount(
            Some("tmpfs"),
            d,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }
    let mut programs = vec![("dynamic /usr/bin/true", PathBuf::from("/usr/bin/true"))];
    if let Some(s) = static_binary(&base) {
        programs.insert(0, ("static", s));
    }
    for (_, src) in &programs {
        for d in [&plain, &marked] {
            let dst = d.join(src.file_name().unwrap());
            fs::copy(src, &dst).unwrap();
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for d in [&plain, &marked] {
        install_with_libs("/usr/bin/true", &d.join("root"));
    }
    let sock = base.join("d.sock");
    let _daemon = Daemon(
        Command::new(BIN)
            .args(["daemon", "--log-level", "warn", "--socket"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(base.join("state"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The racily-clean rule keeps just-written files out of the cache; let them age.
    std::thread::sleep(Duration::from_millis(50));
    let armed = Command::new(BIN)
        .args(["arm", "--id", "bench", "--rootfs"])
        .arg(&marked)
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        armed.status.success(),
        "{}",
        String::from_utf8_lossy(&armed.stderr)
    );

    println!(
        "exec latency, {rounds} rounds x {per_round} execs per side, alternating (µs per fork+exec+wait)"
    );
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "program", "none med", "driftlock med", "none p99", "driftlock p99", "ratio"
    );
    let mut targets: Vec<(&str, Target, Target)> = programs
        .iter()
        .map(|(name, src)| {
            let file = src.file_name().unwrap();
            let t = |d: &Path| Target {
                path: d.join(file),
                chroot: None,
            };
            (*name, t(&plain), t(&marked))
        })
        .collect();
    // The loader and libc on the marked filesystem: each exec raises a program event and a
    // loader event, and the loader event gets the direct-invocation check.
    let in_root = |d: &Path| Target {
        path: PathBuf::from("/usr/bin/true"),
        chroot: Some(d.join("root")),
    };
    targets.push(("dynamic, loader checked", in_root(&plain), in_root(&marked)));
    for (name, a, b) in &targets {
        per_exec(a, 20);
        per_exec(b, 20); // first exec hashes; the rest are warm
        let (mut none, mut dl) = (Vec::new(), Vec::new());
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let mut x = per_exec(a, per_round);
            let mut y = per_exec(b, per_round);
            let (mx, my) = (pct(&mut x, 0.5), pct(&mut y, 0.5));
            ratios.push(my / mx);
            none.extend(x);
            dl.extend(y);
        }
        let (n50, d50) = (pct(&mut none, 0.5), pct(&mut dl, 0.5));
        let (n99, d99) = (pct(&mut none, 0.99), pct(&mut dl, 0.99));
        println!(
            "{name:<24} {n50:>12.1} {d50:>12.1} {n99:>12.1} {d99:>12.1} {:>8.3}x  (overhead {:+.1} µs)",
            pct(&mut ratios, 0.5),
            d50 - n50
        );
    }
    let status = Command::new(BIN)
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&status.stdout));
    drop(_daemon);
    let _ = umount2(&base, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&base);
}
