//! Compiles the BPF LSM mapping gate (`bpf/gate.bpf.c`) with clang. Without clang the
//! daemon is built without the gate (it says so at start and runs on fanotify alone).

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=bpf/gate.bpf.c");
    println!("cargo:rerun-if-changed=bpf/kernel_types.h");
    println!("cargo:rustc-check-cfg=cfg(driftlock_gate_built)");
    // The source revision for `driftlock_build_info` (none outside a git checkout).
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    if let Ok(out) = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
    {
        let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !rev.is_empty() && rev.len() < 64 {
            println!("cargo:rustc-env=DRIFTLOCK_REVISION={rev}");
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);
    let object = out.join("gate.bpf.o");
    let clang = std::env::var("DRIFTLOCK_CLANG").unwrap_or_else(|_| "clang".into());
    let built = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Ibpf",
            "-c",
        ])
        .arg("bpf/gate.bpf.c")
        .arg("-o")
        .arg(&object)
        .status()
        .is_ok_and(|s| s.success());
    if built {
        println!("cargo:rustc-cfg=driftlock_gate_built");
    } else {
        println!(
            "cargo:warning=clang could not compile bpf/gate.bpf.c (install clang and libbpf-dev): the mapping gate is left out"
        );
        std::fs::write(&object, b"")?;
    }
    Ok(())
}
