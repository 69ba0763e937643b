//! The namespace sandbox every root test and benchmark stands in: this thread (and every
//! process it spawns) gets a private mount namespace with a tmpfs of its own, so nothing it
//! mounts or marks is visible to the rest of the machine. Shared by `tests/integration`
//! and `benches/` (included there by path).

use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Enters a private mount namespace and mounts a tmpfs (`options`, e.g. `size=2g`) on a
/// fresh directory named after `name`; returns the directory.
pub fn private_tmpfs(name: &str, options: &str) -> PathBuf {
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    let dir = std::env::temp_dir().join(format!("driftlock-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(options),
    )
    .expect("mount the sandbox tmpfs");
    dir
}

/// The JSON-lines records in `path` (coverage records included), waiting up to `wait`
/// until at least `n` are there.
#[allow(dead_code)]
pub fn read_records(
    path: &std::path::Path,
    n: usize,
    wait: std::time::Duration,
) -> Vec<serde_json::Value> {
    let until = std::time::Instant::now() + wait;
    loop {
        let recs: Vec<serde_json::Value> = std::fs::read(path)
            .unwrap_or_default()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("one JSON object per line"))
            .collect();
        if recs.len() >= n || std::time::Instant::now() > until {
            return recs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
