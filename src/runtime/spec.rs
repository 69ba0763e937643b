//! The container's OCI spec, patched: driftlock's hooks added, and in enforce mode a filter
//! that refuses new user namespaces.

use super::wrapper::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub(super) fn hook_entry(cfg: &RuntimeConfig, stage: &str, timeout: u64) -> Value {
    let mut args = vec![
        "driftlock".to_string(),
        "hook".to_string(),
        stage.to_string(),
        "--socket".to_string(),
        cfg.socket.to_string_lossy().into_owned(),
    ];
    if cfg.fail_open && stage == "createRuntime" {
        args.push("--fail-open".into());
    }
    // No "env": runc runs the hook with an empty environment.
    json!({ "path": cfg.driftlock.to_string_lossy(), "args": args, "timeout": timeout })
}

/// True if `entry` is the hook this wrapper would add: the configured binary itself, not
/// any program whose name ends in "driftlock" (a bundle's author could otherwise plant a
/// look-alike and have the real hook left out).
pub(super) fn is_ours(entry: &Value, stage: &str, cfg: &RuntimeConfig) -> bool {
    let args = entry.get("args").and_then(Value::as_array);
    args.is_some_and(|a| {
        a.get(1).and_then(Value::as_str) == Some("hook")
            && a.get(2).and_then(Value::as_str) == Some(stage)
    }) && entry
        .get("path")
        .and_then(Value::as_str)
        .is_some_and(|p| Path::new(p) == cfg.driftlock)
}

/// True if the config gives the container a PID namespace of its own (a `pid` namespace
/// with no `path` to join).
fn has_own_pid_namespace(config: &Value) -> bool {
    config
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(Value::as_str) == Some("pid")
                    && n.get("path")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
            })
        })
}

/// Adds driftlock's hooks to a runtime config (idempotent). Returns whether it changed.
pub fn add_hooks(config: &mut Value, cfg: &RuntimeConfig) -> Result<bool, PatchError> {
    let own_pid_namespace = has_own_pid_namespace(config);
    let root = config.as_object_mut().ok_or(PatchError::NotAnObject)?;
    let hooks = root.entry("hooks").or_insert_with(|| json!({}));
    let hooks = hooks.as_object_mut().ok_or(PatchError::HooksNotAnObject)?;
    let mut changed = false;
    // The daemon disarms a container when its init exits (its pidfd), where that init is
    // its own PID namespace's (its exit ends every process of the container): a poststop
    // hook, one process more per container, is added where the kernel has no pidfd, or
    // the container shares a PID namespace (its processes may outlive the init).
    let stages: &[(&str, u64, bool)] = if !cfg.poststop_hook && own_pid_namespace {
        &[("createRuntime", CREATE_HOOK_TIMEOUT, true)]
    } else {
        &[
            ("createRuntime", CREATE_HOOK_TIMEOUT, true),
            ("poststop", 30, false),
        ]
    };
    for &(stage, timeout, first) in stages {
        let list = hooks.entry(stage).or_insert_with(|| json!([]));
        let list = list
            .as_array_mut()
            .ok_or(PatchError::StageNotAnArray(stage))?;
        if list.iter().any(|e| is_ours(e, stage, cfg)) {
            continue;
        }
        let entry = hook_entry(cfg, stage, timeout);
        // Arm first, before any other createRuntime hook can start something.
        if first {
            list.insert(0, entry)
        } else {
            list.push(entry)
        }
        changed = true;
    }
    Ok(changed)
}

/// Clone flag of a new user namespace.
pub(super) const CLONE_NEWUSER: u64 = 0x1000_0000;

/// Gives a container with no seccomp profile one that refuses new user namespaces
/// (`unshare` and `clone` with `CLONE_NEWUSER`: `EPERM`; `clone3`, whose flags a filter
/// cannot read: `ENOSYS`, so the C library falls back to `clone`), as Docker's and
/// containerd's default profiles do for a container without `CAP_SYS_ADMIN`. Kubernetes runs
/// pods `Unconfined` by default; there a tenant could make its own user and mount
/// namespaces, whose copies of the container's mounts carry no mount mark, and exec from
/// them. Everything else is allowed. Returns whether `config` changed.
pub fn add_user_namespace_filter(config: &mut Value) -> bool {
    let Some(root) = config.as_object_mut() else {
        return false;
    };
    let linux = root.entry("linux").or_insert_with(|| json!({}));
    let Some(linux) = linux.as_object_mut() else {
        return false;
    };
    if linux.get("seccomp").is_some_and(|s| !s.is_null()) {
        return false;
    }
    let newuser = json!([{
        "index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"
    }]);
    linux.insert(
        "seccomp".into(),
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["unshare", "clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": newuser},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}
            ]
        }),
    );
    true
}

/// The mode the daemon would arm this container in, if it can be asked (an older daemon,
/// or none: `None`, and the container is not restricted; its hook decides the rest).
pub(super) fn daemon_mode_for(
    bundle: &Path,
    config: &Value,
    cfg: &RuntimeConfig,
) -> Option<crate::Mode> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| e.to_string());
    let identity = super::hook::container_identity(bundle, "", config, &read).ok()?;
    match crate::ipc::client::request(
        &cfg.socket,
        &crate::ipc::Request::ModeFor { identity },
        std::time::Duration::from_secs(2),
    ) {
        Ok(crate::ipc::Reply::ModeFor { mode_for }) => Some(mode_for),
        _ => None,
    }
}

/// Patches `<bundle>/config.json` in place (temp file + rename, same mode).
pub fn patch_bundle(bundle: &Path, cfg: &RuntimeConfig) -> Result<bool, RuntimeError> {
    let path = bundle.join("config.json");
    let err = |reason: String| RuntimeError::Config {
        path: path.clone(),
        reason,
    };
    let data = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
    let mut value: Value =
        serde_json::from_slice(&data).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let patched = add_hooks(&mut value, cfg).map_err(|source| RuntimeError::Patch {
        path: path.clone(),
        source,
    })?;
    let restricted = cfg.refuse_user_namespaces
        && value.pointer("/linux/seccomp").is_none_or(Value::is_null)
        && daemon_mode_for(bundle, &value, cfg) == Some(crate::Mode::Enforce)
        && add_user_namespace_filter(&mut value);
    if !patched && !restricted {
        return Ok(false);
    }
    let out = serde_json::to_vec(&value).map_err(|e| err(e.to_string()))?;
    let mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644);
    // Not synced: a bundle does not outlive the node (runtimes keep it under /run), and
    // the rename alone is atomic for runc, which reads it next.
    write_replacing(&path, &out, mode).map_err(|e| err(e.to_string()))?;
    Ok(true)
}

/// Replaces `path` with `data` at once: written to a new file beside it (`O_EXCL`, so
/// nothing planted there is followed or reused; readable by root alone until it has
/// `mode`), then renamed over it.
pub fn write_replacing(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.driftlock.{}.{nanos:09}",
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A runtime spec (`data`, JSON) with driftlock's hooks added, for a base runtime spec
/// (containerd's CRI `base_runtime_spec`): the runtime handler's containers run the hooks
/// with no wrapper in front of runc. Refuses what is not a spec: an empty object, or one
/// without `process` and `root`, would make every container of the handler fail.
pub fn base_spec(data: &[u8], cfg: &RuntimeConfig) -> Result<String, String> {
    let mut spec: Value =
        serde_json::from_slice(data).map_err(|e| format!("not a JSON runtime spec: {e}"))?;
    for field in ["ociVersion", "process", "root", "linux"] {
        if spec.get(field).is_none() {
            return Err(format!(
                "the spec has no \"{field}\": start from the runtime's own default (`ctr oci spec`)"
            ));
        }
    }
    add_hooks(&mut spec, cfg).map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())
}
