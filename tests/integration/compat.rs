//! Issue 19 (4): the protocol across one version step, both ways, with the previous
//! version's real binaries (`scripts/build-previous`, passed as DRIFTLOCK_PREVIOUS_DIR by
//! scripts/test): a newer hook arms through an older daemon and the reverse, poststop
//! disarms, and each side's `status` reads the other's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn previous() -> Option<PathBuf> {
    match std::env::var_os("DRIFTLOCK_PREVIOUS_DIR") {
        Some(d) if Path::new(&d).join("driftlock").exists() => Some(PathBuf::from(d)),
        _ => {
            eprintln!(
                "skipping: no previous version (DRIFTLOCK_PREVIOUS_DIR; scripts/test builds it with scripts/build-previous)"
            );
            None
        }
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, sb: &Sandbox, state: &Path) -> Daemon {
    let child = Daemon(
        Command::new(bin)
            .arg("daemon")
            .arg("--socket")
            .arg(&sb.socket)
            .arg("--state-dir")
            .arg(state)
            .arg("--audit-log")
            .arg(&sb.audit)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if Command::new(bin)
            .args(["status", "--socket"])
            .arg(&sb.socket)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not come up", bin.display());
}

/// Runs `bin hook STAGE` for container `id` (its config's annotations ask for audit).
fn hook(bin: &Path, sb: &Sandbox, stage: &str, id: &str, pid: u32) -> std::process::Output {
    let bundle = sb.dir.join(format!("bundle-{id}"));
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},"annotations":{{"driftlock.io/mode":"audit","io.kubernetes.cri.image-name":"registry.local/app:1"}}}}"#,
            sb.rootfs.display()
        ),
    )
    .unwrap();
    let status = if stage == "createRuntime" {
        "creating"
    } else {
        "stopped"
    };
    run_hook(
        bin,
        &[stage, "--socket", sb.socket.to_str().unwrap()],
        &[],
        (id, status, pid, &bundle),
    )
}

fn status(bin: &Path, sb: &Sandbox) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(&sb.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} status: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn hooks_and_daemons_one_version_apart_work_together() {
    if !root_or_skip("compat") {
        return;
    }
    let Some(prev) = previous() else {
        return;
    };
    let old = prev.join("driftlock");
    let new = PathBuf::from(BIN);
    let sb = Sandbox::new("compat");
    let payload = sb.install_payload();
    let mut init = Command::new("sleep").arg("60").spawn().unwrap();
    for (daemon, hook_bin, what) in [
        (&old, &new, "a newer hook with an older daemon"),
        (&new, &old, "an older hook with a newer daemon"),
    ] {
        let state = sb.dir.join(format!("state-{}", what.len()));
        let d = start(daemon, &sb, &state);
        let out = hook(hook_bin, &sb, "createRuntime", "c1", init.id());
        assert!(
            out.status.success(),
            "{what}: arm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each side reads the other's status.
        for reader in [&old, &new] {
            let s = status(reader, &sb);
            let unit = s["units"]
                .as_array()
                .and_then(|u| u.iter().find(|u| u["id"] == "c1").cloned())
                .unwrap_or_else(|| panic!("{what}: c1 not armed: {s}"));
            assert!(
                unit["mode"] == "audit" || unit["mode"] == "enforce",
                "{unit}"
            );
        }
        assert!(
            exec(&sb.rootfs.join("bin/true")) == Ok(0),
            "{what}: the image runs"
        );
        let _ = exec(&payload);
        let out = hook(hook_bin, &sb, "poststop", "c1", init.id());
        assert!(out.status.success(), "{what}: disarm failed");
        assert!(
            status(&new, &sb)["units"].as_array().unwrap().is_empty(),
            "{what}: disarmed"
        );
        drop(d);
        let _ = fs::remove_file(&sb.socket);
    }
    let _ = init.kill();
    let _ = init.wait();
}
