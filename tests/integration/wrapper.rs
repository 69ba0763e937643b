//! Issue 19 (3): driftlock-runtime cannot wedge runc. Each case fails fast with a clear
//! message, or passes through to runc, instead of hanging or breaking `kill`/`delete`.
//! These run the wrapper with a scratch bundle and never create a container.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{BIN, root_or_skip};

const RUNTIME: &str = env!("CARGO_BIN_EXE_driftlock-runtime");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("driftlock-wrapper-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the wrapper with `env` and a settings file that does not exist (so only `env`
/// counts), killing it if it runs past 10 s (a wedge).
fn wrapper(env: &[(&str, &str)], args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "10", RUNTIME])
        .args(args)
        .env("DRIFTLOCK_RUNTIME_CONF", "/nonexistent/runtime.conf")
        .env_remove("DRIFTLOCK_RUNC")
        .env_remove("DRIFTLOCK_BIN")
        .env_remove("DRIFTLOCK_FAIL_OPEN")
        .env_remove("DRIFTLOCK_RUNTIME_ACTIVE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out, started.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    fs::create_dir_all(&b).unwrap();
    fs::write(
        b.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    fs::set_permissions(b.join("config.json"), fs::Permissions::from_mode(0o644)).unwrap();
    b
}

#[test]
fn runc_pointing_at_the_wrapper_fails_fast() {
    let dir = scratch("self");
    let (out, took) = wrapper(&[("DRIFTLOCK_RUNC", RUNTIME)], &["--version"]);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        stderr(&out).contains("is driftlock-runtime itself"),
        "{}",
        stderr(&out)
    );
    // A script around the wrapper, which no inode check sees: caught on the way back in.
    let script = dir.join("runc");
    fs::write(&script, format!("#!/bin/sh\nexec {RUNTIME} \"$@\"\n")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let (out, took) = wrapper(
        &[("DRIFTLOCK_RUNC", script.to_str().unwrap())],
        &["--version"],
    );
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        stderr(&out).contains("driftlock-runtime itself"),
        "{}",
        stderr(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_settings_still_let_runc_stop_containers_but_not_create_them() {
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("skipping: runc is not installed (.ci/run installs it)");
        return;
    }
    let dir = scratch("broken");
    let broken = [("DRIFTLOCK_FAIL_OPEN", "maybe")];
    let (out, took) = wrapper(&broken, &["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("runc version"));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5));
    // kill and delete reach runc (which answers for itself about the unknown container).
    let root = dir.join("runc-root");
    for sub in [
        vec!["kill", "nosuch", "KILL"],
        vec!["delete", "--force", "nosuch"],
    ] {
        let mut a = vec!["--root", root.to_str().unwrap()];
        a.extend(sub.iter().copied());
        let (out, _) = wrapper(&broken, &a);
        let e = stderr(&out);
        assert!(e.contains("passing this call to runc"), "{e}");
        // runc answered for itself: kill says the container does not exist, a forced
        // delete of none succeeds.
        assert!(
            e.contains("does not exist") || (sub[0] == "delete" && out.status.success()),
            "runc itself answered: {e}"
        );
    }
    // create is refused, with the reason.
    let b = bundle(&dir);
    let (out, _) = wrapper(&broken, &["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("DRIFTLOCK_FAIL_OPEN"),
        "{}",
        stderr(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_untrustworthy_hook_binary_is_never_written_into_a_config() {
    if !root_or_skip("wrapper hook binary") {
        return;
    }
    let dir = scratch("hookbin");
    let b = bundle(&dir);
    let loose = dir.join("driftlock");
    fs::copy(BIN, &loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
    for (bin, why) in [
        (loose.to_str().unwrap(), "writable by group or others"),
        ("/nonexistent/driftlock", "No such file"),
    ] {
        let (out, _) = wrapper(
            &[("DRIFTLOCK_RUNC", "/bin/true"), ("DRIFTLOCK_BIN", bin)],
            &["create", "--bundle", b.to_str().unwrap(), "c1"],
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        let config = fs::read_to_string(b.join("config.json")).unwrap();
        assert!(!config.contains("hooks"), "{config}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// `runc restore` starts a checkpointed container: armed like `create` (here with `true`
/// playing runc, the bundle is patched with the hooks).
#[test]
fn restore_is_armed_like_create() {
    if !root_or_skip("wrapper restore") {
        return;
    }
    let dir = scratch("restore");
    let b = bundle(&dir);
    let (out, _) = wrapper(
        &[("DRIFTLOCK_RUNC", "/bin/true"), ("DRIFTLOCK_BIN", BIN)],
        &[
            "restore",
            "--image-path",
            "/ckpt",
            "--bundle",
            b.to_str().unwrap(),
            "c1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["hooks"]["createRuntime"][0]["args"][2], "createRuntime");
    assert_eq!(v["hooks"]["createRuntime"][0]["path"], BIN);
    let mode = fs::metadata(b.join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644, "the config keeps its mode");
    assert_eq!(
        fs::read_dir(&b).unwrap().count(),
        1,
        "no temporary file left"
    );
    fs::remove_dir_all(&dir).unwrap();
}
