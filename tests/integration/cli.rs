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
