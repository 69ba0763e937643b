//! `driftlock hook createRuntime|poststop`: runc runs these with the OCI state on stdin
//! and an empty environment.
//!
//! At `createRuntime` the state's `pid` is runc init in the host PID namespace, every mount
//! of the container is in place and `pivot_root` has not happened: the container's
//! mounts are `/proc/<pid>/root<rootfs>/<dest>`. The hook asks the daemon to arm the
//! container by that pid, and exits 0 only once it is armed.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::State;
use serde_json::Value;

use crate::Mode;
use crate::escape::escape_bytes;
use crate::ipc::client::{ClientError, request};
use crate::ipc::{ArmRequest, Reply, Request};

/// Annotation that sets a container's mode.
pub const MODE_ANNOTATION: &str = "driftlock.io/mode";
/// Annotations that name the image, in order of preference.
pub const IMAGE_NAME_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.image-name",
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];
/// Annotations that name the Kubernetes namespace.
pub const NAMESPACE_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
];
/// Largest OCI state or config accepted.
const MAX_INPUT: u64 = 16 << 20;

/// Hook errors (each is one line on stderr).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The OCI state on stdin is unusable.
    #[error("bad OCI state on stdin: {0}")]
    State(String),
    /// The bundle's config is unusable.
    #[error("bad bundle config {}: {reason}", path.display())]
    Config {
        /// config.json.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon refused or could not be reached.
    #[error("container {id} was not armed: {source}")]
    Daemon {
        /// Container id.
        id: String,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// The hook stages driftlock uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Arm the container (runs before pivot_root; holds container creation).
    #[value(name = "createRuntime")]
    CreateRuntime,
    /// Disarm the container.
    #[value(name = "poststop")]
    Poststop,
}

/// What the hook needs besides stdin.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// How long to keep trying to reach a daemon that is (re)starting.
    pub connect_wait: Duration,
    /// How long arming may take (a first snapshot of a large image).
    pub arm_timeout: Duration,
}

fn read_limited(mut r: impl Read, what: &str) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    (&mut r)
        .take(MAX_INPUT + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading {what}: {e}"))?;
    if data.len() as u64 > MAX_INPUT {
        return Err(format!("{what} is larger than {MAX_INPUT} bytes"));
    }
    Ok(data)
}

/// Removes `.` components and trailing slashes; refuses `..` (a path runc resolved
/// never holds one, so it is a sign of a crafted config).
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Builds the arm request for a container from its OCI state and bundle config.
pub fn arm_request(
    state_json: &[u8],
    read_config: impl FnOnce(&Path) -> Result<Vec<u8>, String>,
) -> Result<ArmRequest, HookError> {
    let state: State =
        serde_json::from_slice(state_json).map_err(|e| HookError::State(e.to_string()))?;
    let id = state.id().to_string();
    if id.is_empty() {
        return Err(HookError::State("no container id".into()));
    }
    let pid = state.pid().filter(|p| *p > 0).ok_or_else(|| {
        HookError::State("no pid (is this hook registered as createRuntime?)".into())
    })?;
    let bundle = state.bundle();
    if !bundle.is_absolute() {
        return Err(HookError::State(format!(
            "bundle {} is not absolute",
            bundle.display()
        )));
    }
    let config_path = bundle.join("config.json");
    let cfg_err = |reason: String| HookError::Config {
        path: config_path.clone(),
        reason,
    };
    let config: Value = serde_json::from_slice(&read_config(&config_path).map_err(cfg_err)?)
        .map_err(|e| cfg_err(format!("not valid JSON: {e}")))?;
    let root = config
        .pointer("/root/path")
        .and_then(Value::as_str)
        .ok_or_else(|| cfg_err("no root.path".into()))?;
    let rootfs = normal(&bundle.join(root))
        .ok_or_else(|| cfg_err(format!("root.path {root:?} is not a plain path")))?;
    let annotation = |key: &str| -> Option<String> {
        config
            .pointer("/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mode = match annotation(MODE_ANNOTATION).as_deref() {
        None => None,
        Some("audit") => Some(Mode::Audit),
        Some("enforce") => Some(Mode::Enforce),
        Some(other) => {
            return Err(cfg_err(format!(
                "annotation {MODE_ANNOTATION}={other:?}: use audit or enforce"
            )));
        }
    };
    let image_name = IMAGE_NAME_ANNOTATIONS.iter().find_map(|k| annotation(k));
    let namespace = NAMESPACE_ANNOTATIONS.iter().find_map(|k| annotation(k));
    let pod = annotation("io.kubernetes.cri.sandbox-name")
        .or_else(|| annotation("io.kubernetes.pod.name"));
    let container_name = annotation("io.kubernetes.cri.container-name")
        .or_else(|| annotation("io.kubernetes.container.name"));
    let rootfs_text = escape_bytes(rootfs.as_os_str().as_bytes());
    Ok(ArmRequest {
        id,
        rootfs: rootfs_text.clone(),
        mounts: Vec::new(),
        mode,
        image_key: None,
        pid: Some(pid),
        discover_mounts: true,
        // Before pivot_root the container's view of its rootfs path is the host's.
        host_rootfs: Some(rootfs_text),
        image_name,
        namespace,
        pod,
        container_name,
    })
}

/// Runs `f` until it gets an answer: a daemon not listening yet is waited for up to
/// `connect_wait`, and a daemon that says it is busy (every client slot taken during a
/// burst of container creations) is asked again with backoff for up to `busy_wait`. Any
/// other answer, a refusal included, is final.
fn with_retry<T>(
    opts: &HookOptions,
    busy_wait: Duration,
    f: impl Fn() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    let connect_until = started + opts.connect_wait;
    let busy_until = started + busy_wait;
    let mut pause = Duration::from_millis(20);
    loop {
        match f() {
            Err(ClientError::Connect { .. }) if Instant::now() < connect_until => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) if e.is_busy() && Instant::now() + pause < busy_until => {
                log::debug!("{e}: asking again in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Runs a hook stage with the OCI state read from `stdin`.
pub fn run(stage: Stage, opts: &HookOptions, stdin: impl Read) -> Result<String, HookError> {
    let state = read_limited(stdin, "stdin").map_err(HookError::State)?;
    match stage {
        Stage::CreateRuntime => {
            let req = arm_request(&state, |p| {
                read_limited(
                    std::fs::File::open(p).map_err(|e| e.to_string())?,
                    "config.json",
                )
            })?;
            let id = req.id.clone();
            let reply = with_retry(opts, opts.arm_timeout, || {
                request(
                    &opts.socket,
                    &Request::Arm(Box::new(req.clone())),
                    opts.arm_timeout,
                )
            })
            .map_err(|source| HookError::Daemon {
                id: id.clone(),
                source,
            })?;
            Ok(match reply {
                Reply::Armed(r) => format!(
                    "armed {} ({} mode, {} marks, {:.1} ms)",
                    r.id,
                    r.mode,
                    r.marks.len(),
                    r.arm_ms
                ),
                _ => format!("armed {id}"),
            })
        }
        Stage::Poststop => {
            let state: State =
                serde_json::from_slice(&state).map_err(|e| HookError::State(e.to_string()))?;
            let id = state.id().to_string();
            with_retry(opts, Duration::from_secs(20), || {
                request(
                    &opts.socket,
                    &Request::Disarm { id: id.clone() },
                    Duration::from_secs(20),
                )
            })
            .map_err(|source| HookError::Daemon {
                id: id.clone(),
                source,
            })?;
            Ok(format!("disarmed {id}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = r#"{"ociVersion":"1.0.2","id":"web-1","status":"creating","pid":4242,"bundle":"/run/containerd/io.containerd.runtime.v2.task/default/web-1"}"#;

    fn config(extra: &str) -> impl FnOnce(&Path) -> Result<Vec<u8>, String> {
        let text = format!(r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}}{extra}}}"#);
        move |p: &Path| {
            assert!(p.ends_with("web-1/config.json"));
            Ok(text.into_bytes())
        }
    }

    #[test]
    fn builds_the_request_from_state_and_config() {
        let annotations = r#","annotations":{"driftlock.io/mode":"audit","io.kubernetes.cri.image-name":"docker.io/library/postgres:16"}"#;
        let req = arm_request(STATE.as_bytes(), config(annotations)).unwrap();
        assert_eq!(req.id, "web-1");
        assert_eq!(req.pid, Some(4242));
        assert_eq!(
            req.rootfs,
            "/run/containerd/io.containerd.runtime.v2.task/default/web-1/rootfs"
        );
        assert_eq!(req.mode, Some(Mode::Audit));
        assert_eq!(
            req.image_name.as_deref(),
            Some("docker.io/library/postgres:16")
        );
        assert!(req.discover_mounts);
        let plain = arm_request(STATE.as_bytes(), config("")).unwrap();
        assert_eq!(plain.mode, None);
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        assert!(matches!(
            arm_request(b"garbage", config("")),
            Err(HookError::State(_))
        ));
        let no_pid = STATE.replace(r#""pid":4242,"#, "");
        let e = arm_request(no_pid.as_bytes(), config("")).unwrap_err();
        assert!(e.to_string().contains("no pid"), "{e}");
        let e = arm_request(
            STATE.as_bytes(),
            config(r#","annotations":{"driftlock.io/mode":"off"}"#),
        )
        .unwrap_err();
        assert!(e.to_string().contains("use audit or enforce"), "{e}");
        let escape = |_: &Path| Ok(br#"{"root":{"path":"../../etc"}}"#.to_vec());
        assert!(matches!(
            arm_request(STATE.as_bytes(), escape),
            Err(HookError::Config { .. })
        ));
        let missing = |_: &Path| Err("No such file".to_string());
        assert!(matches!(
            arm_request(STATE.as_bytes(), missing),
            Err(HookError::Config { .. })
        ));
    }
}
