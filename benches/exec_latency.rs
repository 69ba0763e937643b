//! Exec latency, side by side in one run (needs root): `cargo bench --bench exec_latency`.
//!
//! In a private mount namespace, one tmpfs per side holds the same programs:
//! - `none`: never marked (no listener);
//! - `floor`: marked by a minimal allow-all `FAN_OPEN_EXEC_PERM` responder in a process of
//!   its own (`benches/floor.c`: one read, one write, one close per event), the floor any
//!   fanotify enforcer pays;
//! - `driftlock warm`: armed in enforce mode, every exec after the first a cache hit;
//! - `driftlock cold`: armed in enforce mode, every exec a new file (hashed);
//! - `driftlock audit`: armed in audit mode (exec notifications, never held);
//! - `fapolicyd permissive`: fapolicyd (Debian's 1.1.7, when installed) with Debian's
//!   configuration made permissive, in a mount namespace of its own (see [`Fapolicyd`]);
//! - `driftlock warm, erofs`: armed in enforce mode on an erofs image (when mkfs.erofs is
//!   installed): after a file's first allowed exec the kernel allows it without an event;
//! - `driftlock cold deny`: armed in enforce mode, every exec a new file whose size no
//!   executable of the image has: denied without being read (the exec fails, so its
//!   latency is fork + failed exec; its listener CPU per exec is the figure to compare
//!   with a warm hit's);
//! - `reference warm`: with `DRIFTLOCK_BENCH_REFERENCE_BIN=PATH` (a `driftlock` binary of
//!   another build, say the last release), that build's daemon armed in enforce mode on
//!   its own tmpfs, so a change is compared with its predecessor in the same run, round by
//!   round (`DRIFTLOCK_BENCH_REFERENCE_ENV="NAME=value ..."` sets its environment: the same
//!   binary with `DRIFTLOCK_EVENT_WAIT=poll` compares the event loop's two waits).
//!
//! Rounds alternate between the sides, each starting at another side, so machine noise
//! hits all alike; each row gives the
//! median and p99 per fork+exec+wait, the paired ratio to `none` (median of per-round
//! ratios), the paired overhead in µs (median of per-round differences to `none`), the
//! overhead relative to the floor's, and the CPU its listener used per exec, from
//! `/proc/<pid>/task/*/schedstat`, against the floor's: the floor's process, fapolicyd's
//! threads, the daemon's event thread (its record writer and hash workers are left out:
//! one daemon serves several sides, and a side's batch would inherit the records of the
//! last; a miss's hashing shows in the cold side's latency). Programs: a static
//! binary (`cc -static`), dynamic `/usr/bin/true` (loader on the host), and dynamic
//! `/usr/bin/true` run in a chroot whose loader and libc are on the side's filesystem (two
//! events per exec and the loader check). `DRIFTLOCK_BENCH_ROUNDS` (default 30),
//! `DRIFTLOCK_BENCH_PER_ROUND` (40), `DRIFTLOCK_BENCH_FORMAT=markdown` for a table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

const BIN: &str = env!("CARGO_BIN_EXE_driftlock");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);

impl Daemon {
    /// Starts the daemon `bin` on `sock` and waits for its socket.
    fn start(bin: &str, sock: &Path, state: &Path) -> Self {
        Self::start_with(bin, sock, state, &[])
    }

    /// [`Daemon::start`] with `env` (`NAME=value`) added to the daemon's environment.
    fn start_with(bin: &str, sock: &Path, state: &Path, env: &[(String, String)]) -> Self {
        let d = Daemon(
            Command::new(bin)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .args(["daemon", "--log-level", "warn", "--socket"])
                .arg(sock)
                .arg("--state-dir")
                .arg(state)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }
}

/// Arms `dir` as unit `id` in `mode` with the daemon of `bin` on `sock`.
fn arm(bin: &str, sock: &Path, id: &str, mode: &str, dir: &Path) {
    let armed = Command::new(bin)
        .args(["arm", "--id", id, "--mode", mode, "--rootfs"])
        .arg(dir)
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap();
    assert!(
        armed.status.success(),
        "{}",
        String::from_utf8_lossy(&armed.stderr)
    );
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The floor: `benches/floor.c`, a minimal allow-all responder in a process of its own
/// (one read, one write and one close per event), built here with cc and killed by PID.
struct Floor(Child);

impl Floor {
    fn start(base: &Path, dir: &Path) -> Self {
        use std::io::BufRead;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/floor.c");
        let bin = base.join("floor");
        let built = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            built,
            "exec_latency: cannot build {} (needs cc)",
            src.display()
        );
        let mut child = Command::new(&bin)
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the floor did not start");
        Floor(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (ns) the threads of `listener` have run (the first field of each task's
/// schedstat): every thread, or those whose name starts with the given prefix.
fn cpu_ns(listener: (i32, Option<&str>)) -> u64 {
    let (pid, only) = listener;
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            only.is_none_or(|prefix| {
                fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
            })
        })
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The daemon's thread that reads and answers the events (its other threads write
/// records, hash misses, serve the socket: work a side's batch may inherit from the last).
const ENGINE_THREAD: &str = "driftlock-engin";

/// Puts every thread of process `pid` on CPU `cpu` alone (threads it starts later inherit
/// the affinity of the thread that starts them).
fn pin_process(pid: i32, cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        {
            let _ = sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
        }
    }
}

/// What to execute: a path, optionally inside a chroot.
#[derive(Clone)]
struct Target {
    path: PathBuf,
    chroot: Option<PathBuf>,
    /// The mount namespace to exec in: the bench's own, or fapolicyd's for its side.
    ns: Arc<std::os::fd::OwnedFd>,
}

fn run_once(t: &Target) -> f64 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&t.path);
    cmd.stdout(Stdio::null());
    let ns = t.ns.as_raw_fd();
    let root = t
        .chroot
        .as_ref()
        .map(|r| std::ffi::CString::new(r.as_os_str().as_encoded_bytes()).unwrap());
    // SAFETY (bench): setns, chroot and chdir are async-signal-safe syscalls on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(root) = &root {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let st = cmd.status().unwrap();
    assert!(st.success(), "{} failed", t.path.display());
    start.elapsed().as_secs_f64() * 1e6
}

/// fork + an exec the listener denies + wait (the cold-deny side): the spawn fails EPERM.
fn run_denied(t: &Target) -> f64 {
    let start = Instant::now();
    let err = Command::new(&t.path)
        .stdout(Stdio::null())
        .status()
        .expect_err("a denied exec");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    start.elapsed().as_secs_f64() * 1e6
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

fn install(src: &Path, dst: &Path) {
    fs::copy(src, dst).unwrap();
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
}

const SIDES: [&str; 9] = [
    "none",
    "floor",
    "driftlock warm",
    "driftlock cold",
    "driftlock audit",
    "fapolicyd permissive",
    "driftlock warm, erofs",
    "reference warm",
    "driftlock cold deny",
];
/// The side where every exec is a new file of a size no executable of the image has:
/// denied without being read (its exec fails: compare its listener CPU per exec).
const COLD_DENY: usize = 8;
/// The side of `DRIFTLOCK_BENCH_REFERENCE_BIN`'s daemon.
const REFERENCE: usize = 7;
/// The side whose programs sit on an erofs image: after the first exec of a file, the
/// kernel allows it without an event (no round trip at all).
const IMMUTABLE: usize = 6;
/// The fapolicyd side's index.
const FAPOLICYD: usize = 5;

/// fapolicyd in permissive mode, as Debian configures it (watching every mount of its
/// usual filesystem types, the host root included), run in a mount namespace of its own:
/// its marks are on that namespace's copies of the mounts, so only execs made from inside
/// it (the fapolicyd side's) meet it, and the machine and the other sides never do. Its
/// configuration, run and state directories are bind-mounted there, never changed on the
/// host. Stopped by PID on drop.
struct Fapolicyd {
    child: Child,
    pid: nix::unistd::Pid,
    /// Its mount namespace, which the fapolicyd side's execs enter.
    ns: Option<std::os::fd::OwnedFd>,
    /// Its stderr.
    log: PathBuf,
}

impl Fapolicyd {
    fn start(base: &Path) -> Option<Self> {
        let exe = ["/usr/sbin/fapolicyd", "/sbin/fapolicyd"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let etc = base.join("fapolicyd-etc");
        let run = base.join("fapolicyd-run");
        let lib = base.join("fapolicyd-lib");
        for d in [
            etc.join("rules.d"),
            etc.join("trust.d"),
            run.join("fapolicyd"),
            lib.clone(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        // Debian's defaults made permissive, trusting a file list, and staying root (some
        // sandboxes refuse its switch to the fapolicyd user). Mount marks only: a
        // filesystem mark would reach past its namespace.
        fs::write(
            etc.join("fapolicyd.conf"),
            "permissive = 1\nnice_val = 14\nq_size = 640\nuid = root\ngid = root\n\
             do_stat_report = 1\ndetailed_report = 1\ndb_max_size = 50\n\
             subj_cache_size = 1549\nobj_cache_size = 8191\n\
             watch_fs = ext2,ext3,ext4,tmpfs,xfs,vfat,iso9660,btrfs\n\
             trust = file\nintegrity = none\n\
             syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust\n\
             rpm_sha256_only = 0\nallow_filesystem_mark = 0\n",
        )
        .unwrap();
        // Debian's shipped rule: deny (and audit) the execution of anything untrusted.
        let rules = "deny_audit perm=execute all : all\n";
        for f in [
            "rules.d/90-deny-execute.rules",
            "compiled.rules",
            "fapolicyd.rules",
        ] {
            fs::write(etc.join(f), rules).unwrap();
        }
        fs::write(etc.join("fapolicyd.trust"), "").unwrap();
        // In the foreground (`--debug-deny`: a daemonized fapolicyd 1.1.7 was seen placing
        // its marks outside its namespace); it logs each denial, as its daemon syslogs them.
        let script = format!(
            "mount --bind '{}' /etc/fapolicyd && mount --bind '{}' /run && \
             mount --bind '{}' /var/lib/fapolicyd && exec {exe} --permissive --debug-deny",
            etc.display(),
            run.display(),
            lib.display()
        );
        let log = base.join("fapolicyd.log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).ok()?)
            .spawn()
            .ok()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut me = Fapolicyd {
            child,
            pid,
            ns: None,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(me.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if run.join("fapolicyd/fapolicyd.fifo").exists() {
                me.ns = Some(fs::File::open(format!("/proc/{pid}/ns/mnt")).ok()?.into());
                // Its marks are placed around the time its fifo appears: give it a moment.
                std::thread::sleep(Duration::from_millis(500));
                return Some(me);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let why = fs::read_to_string(&me.log).unwrap_or_default();
        eprintln!("exec_latency: fapolicyd did not start; its side is skipped\n{why}");
        None
    }
}

impl Fapolicyd {
    /// Stops it and returns the decision counts from its end-of-run report.
    fn stop(self) -> String {
        let log = self.log.clone();
        drop(self);
        let report = fs::read_to_string(log).unwrap_or_default();
        report
            .lines()
            .filter(|l| l.contains("ccesses") || l.contains("decisions"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Fapolicyd {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "../tests/integration/private_ns.rs"]
mod private_ns;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("exec_latency: skipped, needs root (fanotify marks and mounts)");
        return;
    }
    let rounds = env_usize("DRIFTLOCK_BENCH_ROUNDS", 30);
    let per_round = env_usize("DRIFTLOCK_BENCH_PER_ROUND", 40);
    let markdown = std::env::var("DRIFTLOCK_BENCH_FORMAT").is_ok_and(|f| f == "markdown");
    let base = private_ns::private_tmpfs("bench-exec", "mode=0755");
    let dirs: Vec<PathBuf> = (0..SIDES.len())
        .map(|i| base.join(format!("side{i}")))
        .collect();
    for d in &dirs {
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
    let mut programs: Vec<(&str, PathBuf)> =
        vec![("dynamic /usr/bin/true", PathBuf::from("/usr/bin/true"))];
    if let Some(s) = static_binary(&base) {
        programs.insert(0, ("static", s));
    }
    for (_, src) in &programs {
        for d in &dirs {
            install(src, &d.join(src.file_name().unwrap()));
        }
    }
    for d in &dirs {
        install_with_libs("/usr/bin/true", &d.join("root"));
    }

    // The immutable side: its files, as installed above, packed into an erofs image
    // mounted over its directory.
    let image = base.join("side.erofs");
    let immutable = Command::new("mkfs.erofs")
        .arg(&image)
        .arg(&dirs[IMMUTABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mount")
            .args(["-t", "erofs", "-o", "ro"])
            .arg(&image)
            .arg(&dirs[IMMUTABLE])
            .status()
            .is_ok_and(|s| s.success());
    if !immutable {
        eprintln!(
            "exec_latency: no erofs side (needs mkfs.erofs from erofs-utils, and erofs in the kernel)"
        );
    }
    let fapolicyd = Fapolicyd::start(&base);
    if fapolicyd.is_none() {
        eprintln!(
            "exec_latency: fapolicyd is not installed (apt-get install fapolicyd); its side is skipped"
        );
    }
    let floor = Floor::start(&base, &dirs[1]);
    let sock = base.join("d.sock");
    let daemon = Daemon::start(BIN, &sock, &base.join("state"));
    // The racily-clean rule keeps just-written files out of the cache; let them age.
    std::thread::sleep(Duration::from_millis(50));
    let mut armed_sides = vec![
        (2, "enforce"),
        (3, "enforce"),
        (4, "audit"),
        (COLD_DENY, "enforce"),
    ];
    if immutable {
        armed_sides.push((IMMUTABLE, "enforce"));
    }
    // Another build's daemon, on its own socket and state, guarding the reference side.
    let reference_bin = std::env::var("DRIFTLOCK_BENCH_REFERENCE_BIN").ok();
    // DRIFTLOCK_BENCH_REFERENCE_ENV="NAME=value ...": the reference daemon's own settings
    // (say DRIFTLOCK_EVENT_WAIT=poll, to compare the event loop's two waits in one run).
    let reference_env: Vec<(String, String)> = std::env::var("DRIFTLOCK_BENCH_REFERENCE_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let reference_sock = base.join("ref.sock");
    let _reference = reference_bin.as_ref().map(|bin| {
        let d = Daemon::start_with(
            bin,
            &reference_sock,
            &base.join("ref-state"),
            &reference_env,
        );
        arm(
            bin,
            &reference_sock,
            "reference",
            "enforce",
            &dirs[REFERENCE],
        );
        d
    });
    for (i, mode) in armed_sides {
        arm(BIN, &sock, &format!("side{i}"), mode, &dirs[i]);
    }
    // The process that answers each side's events, whose CPU per exec is measured.
    let listener: Vec<Option<(i32, Option<&str>)>> = (0..SIDES.len())
        .map(|s| match s {
            0 => None,
            1 => Some((floor.pid(), None)),
            FAPOLICYD => fapolicyd.as_ref().map(|f| (f.pid.as_raw(), None)),
            REFERENCE => _reference
                .as_ref()
                .map(|d| (d.0.id() as i32, Some(ENGINE_THREAD))),
            _ => Some((daemon.0.id() as i32, Some(ENGINE_THREAD))),
        })
        .collect();

    // DRIFTLOCK_BENCH_CPU=N: every listener's threads and this process (so each exec's
    // task) on CPU N alone. On a VM, whether the exec's task and its listener share a
    // vCPU decides the response's cost (a wakeup across vCPUs is an IPI to a halted vCPU);
    // on one CPU that noise is gone and each listener's own work is compared.
    let pinned = std::env::var("DRIFTLOCK_BENCH_CPU")
        .ok()
        .and_then(|c| c.parse::<usize>().ok());
    if let Some(cpu) = pinned {
        let mut pids: Vec<i32> = vec![std::process::id() as i32];
        pids.extend(listener.iter().flatten().map(|(pid, _)| *pid));
        for pid in pids {
            pin_process(pid, cpu);
        }
    }
    let samples_out = std::env::var_os("DRIFTLOCK_BENCH_SAMPLES").map(PathBuf::from);
    let mut samples_csv = String::from("program,side,us\n");
    println!(
        "exec latency: {rounds} rounds x {per_round} execs per side, sides alternating; µs per fork+exec+wait{}",
        match pinned {
            Some(c) => format!("; the execs and every listener on CPU {c} alone"),
            None => String::from("; all CPUs"),
        }
    );
    if markdown {
        println!(
            "\n| program | side | median µs | p99 µs | ratio to none | overhead µs (paired) | overhead / floor's | listener CPU µs/exec | CPU / floor's |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    let own_ns: Arc<std::os::fd::OwnedFd> =
        Arc::new(fs::File::open("/proc/self/ns/mnt").unwrap().into());
    let fapolicyd_ns = fapolicyd
        .as_ref()
        .and_then(|f| f.ns.as_ref())
        .map(|ns| Arc::new(ns.try_clone().unwrap()));
    let ns_of = |side: usize| match (&fapolicyd_ns, side) {
        (Some(ns), FAPOLICYD) => Arc::clone(ns),
        _ => Arc::clone(&own_ns),
    };
    let mut targets: Vec<(String, Vec<Target>, Option<PathBuf>)> = programs
        .iter()
        .map(|(name, src)| {
            let file = src.file_name().unwrap();
            let t: Vec<Target> = dirs
                .iter()
                .enumerate()
                .map(|(i, d)| Target {
                    path: d.join(file),
                    chroot: None,
                    ns: ns_of(i),
                })
                .collect();
            (name.to_string(), t, Some(src.clone()))
        })
        .collect();
    targets.push((
        "dynamic, loader checked".to_string(),
        dirs.iter()
            .enumerate()
            .map(|(i, d)| Target {
                path: PathBuf::from("/usr/bin/true"),
                chroot: Some(d.join("root")),
                ns: ns_of(i),
            })
            .collect(),
        None,
    ));
    for (name, sides, src) in &targets {
        for t in sides {
            for _ in 0..10 {
                run_once(t);
            }
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
        // Per round: the side's median minus none's (paired), and its listener's CPU per
        // exec (µs).
        let mut deltas: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
        for round in 0..rounds {
            // Cold: a new file for every exec (same content), created here on the cold side's
            // own tmpfs and removed after the round. A chroot target has no cold side.
            let cold: Option<Vec<Target>> =
                src.as_ref()
                    .filter(|_| sides[3].chroot.is_none())
                    .map(|src| {
                        (0..per_round)
                            .map(|i| {
                                let p = dirs[3].join(format!("cold-{round}-{i}"));
                                install(src, &p);
                                Target {
                                    path: p,
                                    chroot: None,
                                    ns: Arc::clone(&own_ns),
                                }
                            })
                            .collect()
                    });
            // Cold deny: new files, each a byte longer than the last (no size of the image).
            let denied: Option<Vec<Target>> = src
                .as_ref()
                .filter(|_| sides[COLD_DENY].chroot.is_none())
                .map(|src| {
                    let content = fs::read(src).unwrap();
                    (0..per_round)
                        .map(|i| {
                            let p = dirs[COLD_DENY].join(format!("deny-{round}-{i}"));
                            let mut c = content.clone();
                            c.extend(std::iter::repeat_n(0u8, 1 + round * per_round + i));
                            fs::write(&p, c).unwrap();
                            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
                            Target {
                                path: p,
                                chroot: None,
                                ns: Arc::clone(&own_ns),
                            }
                        })
                        .collect()
                });
            let mut medians = [0.0; SIDES.len()];
            // Each round starts at another side, so whatever the start of a round costs
            // (the cold side's files were just written) falls on every side alike.
            for s in (0..sides.len()).map(|k| (k + round) % sides.len()) {
                let t = &sides[s];
                let cpu_before = listener[s].map(cpu_ns);
                let mut v: Vec<f64> = match (s, &cold) {
                    (3, Some(cold)) => cold.iter().map(run_once).collect(),
                    (3, None) => continue,
                    (COLD_DENY, Some(_)) => denied.iter().flatten().map(run_denied).collect(),
                    (COLD_DENY, None) => continue,
                    (FAPOLICYD, _) if fapolicyd.is_none() => continue,
                    (IMMUTABLE, _) if !immutable => continue,
                    (REFERENCE, _) if reference_bin.is_none() => continue,
                    _ => (0..per_round).map(|_| run_once(t)).collect(),
                };
                if let (Some(l), Some(before)) = (listener[s], cpu_before) {
                    let used = cpu_ns(l).saturating_sub(before) as f64 / 1e3;
                    cpu[s].push(used / v.len().max(1) as f64);
                }
                medians[s] = pct(&mut v, 0.5);
                samples[s].extend(v);
            }
            for s in 0..SIDES.len() {
                if !samples[s].is_empty() && medians[s] > 0.0 {
                    ratios[s].push(medians[s] / medians[0]);
                    deltas[s].push(medians[s] - medians[0]);
                }
            }
            for c in denied.into_iter().flatten() {
                if c.path.starts_with(&dirs[COLD_DENY]) {
                    let _ = fs::remove_file(c.path);
                }
            }
            for c in cold.into_iter().flatten() {
                // Only files this loop created, on the cold side's tmpfs.
                if c.path.starts_with(&dirs[3]) {
                    let _ = fs::remove_file(c.path);
                }
            }
        }
        let med: Vec<f64> = samples
            .iter_mut()
            .map(|v| if v.is_empty() { 0.0 } else { pct(v, 0.5) })
            .collect();
        let p99: Vec<f64> = samples
            .iter_mut()
            .map(|v| if v.is_empty() { 0.0 } else { pct(v, 0.99) })
            .collect();
        let paired: Vec<f64> = deltas
            .iter_mut()
            .map(|v| if v.is_empty() { 0.0 } else { pct(v, 0.5) })
            .collect();
        let cpu_per_exec: Vec<Option<f64>> = cpu
            .iter_mut()
            .map(|v| (!v.is_empty()).then(|| pct(v, 0.5)))
            .collect();
        for (s, v) in samples.iter().enumerate() {
            for us in v {
                samples_csv.push_str(&format!("\"{name}\",\"{}\",{us:.1}\n", SIDES[s]));
            }
        }
        let floor_overhead = paired[1];
        let floor_cpu = cpu_per_exec[1];
        if !markdown {
            println!("\n{name}");
            println!(
                "  {:<22} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10} {:>9}",
                "side", "median", "p99", "ratio", "overhead", "vs floor", "cpu/exec", "vs floor"
            );
        }
        for s in 0..SIDES.len() {
            // A chroot target always runs the same path: there is no cold side for it.
            if samples[s].is_empty() {
                if markdown {
                    println!("| {name} | {} | n/a | | | | | | |", SIDES[s]);
                } else {
                    println!("  {:<18} {:>10}", SIDES[s], "n/a");
                }
                continue;
            }
            let ratio = pct(&mut ratios[s], 0.5);
            let overhead = paired[s];
            let vs_floor = if s == 0 || floor_overhead <= 0.0 {
                String::from("-")
            } else {
                format!("{:.2}x", overhead / floor_overhead)
            };
            let (cpu_text, cpu_vs) = match (cpu_per_exec[s], floor_cpu) {
                (Some(c), Some(f)) if f > 0.0 => (format!("{c:.1}"), format!("{:.2}x", c / f)),
                (Some(c), _) => (format!("{c:.1}"), String::from("-")),
                _ => (String::from("-"), String::from("-")),
            };
            if markdown {
                println!(
                    "| {name} | {} | {:.1} | {:.1} | {ratio:.3}x | {overhead:+.1} | {vs_floor} | {cpu_text} | {cpu_vs} |",
                    SIDES[s], med[s], p99[s]
                );
            } else {
                println!(
                    "  {:<22} {:>9.1} {:>9.1} {:>7.3}x {:>+10.1} {:>9} {:>10} {:>9}",
                    SIDES[s], med[s], p99[s], ratio, overhead, vs_floor, cpu_text, cpu_vs
                );
            }
        }
    }
    if let Some(path) = samples_out {
        fs::write(&path, samples_csv).unwrap();
    }
    let status = Command::new(BIN)
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    if !markdown {
        print!("\n{}", String::from_utf8_lossy(&status.stdout));
    }
    drop(floor);
    if let Some(f) = fapolicyd {
        let report = f.stop();
        if !markdown {
            println!("fapolicyd: {report}");
        }
    }
    drop(daemon);
    let _ = umount2(&base, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&base);
}
