//! The CLI without root: baseline snapshot, show and diff.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::BIN;

#[test]
fn snapshot_show_and_diff() {
    let dir = std::env::temp_dir().join(format!("driftlock-cli-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("root/bin")).unwrap();
    let exe = |p: &str, data: &[u8]| {
        fs::write(dir.join(p), data).unwrap();
        fs::set_permissions(dir.join(p), fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe("root/bin/a", b"a");
    exe("root/bin/b", b"b");
    let a = dir.join("a.baseline");
    let out = Command::new(BIN)
        .args(["baseline", "snapshot"])
        .arg(dir.join("root"))
        .arg("-o")
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 executables"));

    let show = Command::new(BIN)
        .args(["baseline", "show"])
        .arg(&a)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("/bin/a") && text.contains(&blake3::hash(b"b").to_hex().to_string()),
        "{text}"
    );

    exe("root/bin/b", b"b2");
    exe("root/bin/c", b"c");
    let b = dir.join("b.baseline");
    assert!(
        Command::new(BIN)
            .args(["baseline", "snapshot"])
            .arg(dir.join("root"))
            .arg("-o")
            .arg(&b)
            .status()
            .unwrap()
            .success()
    );
    let diff = Command::new(BIN)
        .args(["baseline", "diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(1));
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        text.contains("+ ") && text.contains("/bin/c") && text.contains("~ "),
        "{text}"
    );
    let same = Command::new(BIN)
        .args(["baseline", "diff"])
        .arg(&a)
        .arg(&a)
        .status()
        .unwrap();
    assert_eq!(same.code(), Some(0));

    // A corrupt file is refused with the reason.
    let data = fs::read(&a).unwrap();
    fs::write(&a, &data[..data.len() - 3]).unwrap();
    let bad = Command::new(BIN)
        .args(["baseline", "show"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_check_reports_the_line_and_the_reason() {
    let dir = std::env::temp_dir().join(format!("driftlock-cfg-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    fs::write(
        &good,
        "mode = \"audit\"\n[[image]]\nname = \"nginx*\"\nmode = \"enforce\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 image rules"));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.toml");
    assert!(
        Command::new(BIN)
            .args(["config", "check", shipped])
            .status()
            .unwrap()
            .success()
    );

    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "mode = \"audit\"\nhash_timeout_ms = 100\nmdoe = \"enforce\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("mdoe"), "{err}");
    // The daemon refuses to start on it, with the same message.
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kubernetes_manifests_and_containerd_drop_in_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut kinds = Vec::new();
    for file in ["daemonset.yaml", "runtimeclass.yaml"] {
        let text = fs::read_to_string(dir.join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            for key in ["apiVersion", "kind"] {
                assert!(
                    v.get(key).and_then(|x| x.as_str()).is_some(),
                    "{file}: no {key}"
                );
            }
            assert!(
                v["metadata"]["name"].as_str().is_some(),
                "{file}: no metadata.name"
            );
            kinds.push((v["kind"].as_str().unwrap().to_string(), v.clone()));
        }
    }
    let rc = &kinds.iter().find(|(k, _)| k == "RuntimeClass").unwrap().1;
    assert_eq!(rc["metadata"]["name"].as_str(), Some("driftlock"));
    let handler = rc["handler"].as_str().unwrap();
    let ds = &kinds.iter().find(|(k, _)| k == "DaemonSet").unwrap().1;
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    assert_eq!(
        spec["containers"][0]["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    // The drop-in registers the runtime the RuntimeClass names.
    let drop_in: toml::Value =
        toml::from_str(&fs::read_to_string(dir.join("containerd-driftlock.toml")).unwrap())
            .unwrap();
    let runtime =
        &drop_in["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][handler];
    assert_eq!(
        runtime["options"]["BinaryName"].as_str(),
        Some("/usr/local/bin/driftlock-runtime")
    );
    let cri: toml::Value =
        toml::from_str(&fs::read_to_string(dir.join("../../systemd/containerd-cri.toml")).unwrap())
            .unwrap();
    assert!(cri["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]["BinaryName"].is_str());
}
