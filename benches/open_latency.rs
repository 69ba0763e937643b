//! The cost of library control per open (needs root): `cargo bench --bench open_latency`.
//!
//! In a private mount namespace, one tmpfs per side holds the same two files: an image
//! library (a copy of the host's libz or libc: ELF `ET_DYN`, in the baseline) and a data
//! file. Sides:
//! - `none`: never marked;
//! - `driftlock`: armed in enforce mode without library control (exec events only: opens
//!   raise no event);
//! - `library control`: armed in enforce mode by a daemon with `--library-control`: every
//!   open waits for the daemon; the library's is answered from the verdict cache (warm),
//!   the data file's once its ELF header is read.
//!
//! Rounds alternate between the sides, each starting at another, so machine noise hits all
//! alike. Each row: the median per open+close, the paired overhead against `none` (the
//! median of per-round differences) and the p99. `DRIFTLOCK_BENCH_ROUNDS` (default 30),
//! `DRIFTLOCK_BENCH_PER_ROUND` (2000 opens).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

const BIN: &str = env!("CARGO_BIN_EXE_driftlock");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A daemon, killed (by pid) on drop: no open may stay held.
struct Daemon(Child);

impl Daemon {
    fn start(sock: &Path, state: &Path, extra: &[&str]) -> Self {
        let d = Daemon(
            Command::new(BIN)
                .args(["daemon", "--log-level", "error", "--socket"])
                .arg(sock)
                .arg("--state-dir")
                .arg(state)
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = Command::new(BIN)
                .args(["status", "--socket"])
                .arg(sock)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Side {
    name: &'static str,
    dir: PathBuf,
}

fn library_source() -> PathBuf {
    for p in [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no libz or libc to copy");
}

fn side(root: &Path, name: &'static str) -> Side {
    let dir = root.join(name.replace(' ', "-"));
    fs::create_dir_all(&dir).unwrap();
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    fs::copy(library_source(), dir.join("libimage.so")).unwrap();
    fs::write(dir.join("data.txt"), b"configuration, not code\n").unwrap();
    Side { name, dir }
}

fn arm(sock: &Path, id: &str, dir: &Path) {
    let out = Command::new(BIN)
        .args(["arm", "--id", id, "--rootfs"])
        .arg(dir)
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "arm {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens and closes `path` `n` times; returns µs per open+close.
fn opens(path: &Path, n: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        drop(fs::File::open(path).unwrap());
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("open_latency: skipped (needs root: fanotify and mounts)");
        return;
    }
    // This process is single-threaded here: its own mount namespace, private, so nothing
    // this bench mounts or marks is seen by the node.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap();
    let rounds = env_usize("DRIFTLOCK_BENCH_ROUNDS", 30);
    let per_round = env_usize("DRIFTLOCK_BENCH_PER_ROUND", 2000);
    let root = std::env::temp_dir().join(format!("driftlock-open-bench-{}", std::process::id()));
    fs::create_dir_all(&root).unwrap();
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=256m"),
    )
    .unwrap();
    let sides = [
        side(&root, "none"),
        side(&root, "driftlock"),
        side(&root, "library control"),
    ];
    for d in ["plain", "libctl"] {
        fs::create_dir_all(root.join(format!("state-{d}"))).unwrap();
    }
    let (plain_sock, lib_sock) = (root.join("plain.sock"), root.join("libctl.sock"));
    let plain = Daemon::start(&plain_sock, &root.join("state-plain"), &[]);
    let libctl = Daemon::start(
        &lib_sock,
        &root.join("state-libctl"),
        &["--library-control"],
    );
    arm(&plain_sock, "plain", &sides[1].dir);
    arm(&lib_sock, "libctl", &sides[2].dir);
    let files = ["libimage.so", "data.txt"];
    // Warm every verdict first.
    for s in &sides {
        for f in files {
            opens(&s.dir.join(f), 10);
        }
    }
    // samples[file][side] per round.
    let mut samples = vec![vec![Vec::new(); sides.len()]; files.len()];
    for round in 0..rounds {
        for (fi, f) in files.iter().enumerate() {
            for k in 0..sides.len() {
                let si = (round + k) % sides.len();
                samples[fi][si].push(opens(&sides[si].dir.join(f), per_round));
            }
        }
    }
    println!("| file | side | median µs per open | p99 of rounds µs | overhead µs (paired) |");
    println!("|---|---|---|---|---|");
    for (fi, f) in files.iter().enumerate() {
        for (si, s) in sides.iter().enumerate() {
            let mut diffs: Vec<f64> = samples[fi][si]
                .iter()
                .zip(&samples[fi][0])
                .map(|(a, b)| a - b)
                .collect();
            let mut v = samples[fi][si].clone();
            let what = if *f == "libimage.so" {
                "image library (ELF, cached)"
            } else {
                "data file (header read)"
            };
            println!(
                "| {what} | {} | {:.2} | {:.2} | {:+.2} |",
                s.name,
                median(&mut v),
                p99(&mut v),
                median(&mut diffs)
            );
        }
    }
    println!(
        "\n{rounds} rounds of {per_round} opens per file and side, kernel {}.",
        driftlock::kernel::features::kernel_release()
    );
    drop(plain);
    drop(libctl);
    for s in &sides {
        let _ = umount2(&s.dir, MntFlags::MNT_DETACH);
    }
    let _ = umount2(&root, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir_all(&root);
}
