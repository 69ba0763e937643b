//! What a warm exec costs the daemon's event thread (issue 31): its system calls, counted
//! by `strace -c` on that thread alone over a run of cached execs. A hit reads the event,
//! identifies the file (`statx`), answers and closes the event's descriptor; it never reads
//! `/proc`, opens a file, or asks the kernel for memory.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Cached execs counted under strace.
const EXECS: u64 = 1000;

/// System calls a hit must never make: a file opened (a `/proc` read is one), memory asked
/// of (or given back to) the kernel. A lock waited on is counted with the other calls: the
/// loop's once-a-second tick or a command may meet another thread now and then (one
/// `futex` in 1,000 execs under the full suite), a lock per exec would not fit their budget.
const NEVER_ON_A_HIT: &[&str] = &[
    "open", "openat", "openat2", "brk", "mmap", "munmap", "mremap", "madvise",
];

/// The thread named `name` (its comm, which the kernel cuts to 15 bytes) of process `pid`.
fn thread_named(pid: u32, name: &str) -> Option<u32> {
    let comm = &name.as_bytes()[..name.len().min(15)];
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            fs::read(t.path().join("comm"))
                .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == comm)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// Whether `tid` has a tracer attached (`TracerPid` in its status).
fn traced(tid: u32) -> bool {
    fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .is_some_and(|v| v.trim() != "0")
    })
}

/// `strace -c` attached to `tid` alone (no `-f`: the daemon's other threads are not
/// counted), its table written to `out`.
fn count_syscalls_of(tid: u32, out: &Path) -> Child {
    let child = Command::new("strace")
        .args(["-c", "-qq", "-o"])
        .arg(out)
        .args(["-p", &tid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start strace");
    let until = Instant::now() + Duration::from_secs(10);
    while !traced(tid) {
        assert!(Instant::now() < until, "strace did not attach to {tid}");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// The calls column of `strace -c`'s table, by system call name.
fn calls_by_name(table: &str) -> Vec<(String, u64)> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.last()?;
            if f.len() < 5 || *name == "total" || *name == "syscall" {
                return None;
            }
            Some((name.to_string(), f.get(3)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_warm_exec_costs_the_event_thread_a_read_a_statx_a_write_and_a_close() {
    if !root_or_skip("hot_path") {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipping hot_path: strace is not installed (CI installs it)");
        return;
    }
    let mut sb = Sandbox::new("hot-path");
    sb.start_daemon(&[]);
    sb.arm("c1", &[]);
    let program = sb.rootfs.join("bin/true");
    for _ in 0..20 {
        assert_eq!(exec(&program), Ok(0), "an image program runs");
    }
    let tid = thread_named(sb.daemon_pid(), "driftlock-engine").expect("the event thread");
    let table = sb.dir.join("strace.txt");
    let mut strace = count_syscalls_of(tid, &table);
    for _ in 0..EXECS {
        assert_eq!(exec(&program), Ok(0), "an image program runs");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    strace.wait().unwrap();
    let text = fs::read_to_string(&table).unwrap();
    let calls = calls_by_name(&text);
    let count = |name: &str| calls.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    for call in NEVER_ON_A_HIT {
        assert_eq!(count(call), 0, "{call} on the hit path:\n{text}");
    }
    // One event per exec: each is identified, answered and closed. A read may carry
    // several events, so reads are at most one per exec.
    for call in ["statx", "write", "close"] {
        assert!(
            (EXECS..EXECS + EXECS / 10).contains(&count(call)),
            "{call}: {} for {EXECS} execs:\n{text}",
            count(call)
        );
    }
    assert!(count("read") <= EXECS + EXECS / 10, "{text}");
    // A debug build's standard library checks that a descriptor is open before closing it
    // (`fcntl(F_GETFD)`, one per close); a release build makes no such call.
    let debug_checks = if cfg!(debug_assertions) {
        count("fcntl").min(count("close"))
    } else {
        0
    };
    // The loop's housekeeping may call now and then; per exec, nothing else.
    let others: u64 = calls
        .iter()
        .filter(|(n, _)| !["read", "statx", "write", "close"].contains(&n.as_str()))
        .map(|(_, c)| c)
        .sum::<u64>()
        - debug_checks;
    assert!(others <= EXECS / 20, "{others} other calls:\n{text}");
    figure(&format!(
        "hot path: event thread over {EXECS} warm execs: read {}, statx {}, write {}, close {}, other {others}",
        count("read"),
        count("statx"),
        count("write"),
        count("close")
    ));
}
