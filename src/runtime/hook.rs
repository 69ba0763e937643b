//! `driftlock hook createRuntime|poststop`: runc runs these with the OCI state on stdin
//! and an empty environment.
//!
//! At `createRuntime` the state's `pid` is runc init in the host PID namespace, every mount
//! of the container is in place and `pivot_root` has not happened: the container's
//! mounts are `/proc/<pid>/root<rootfs>/<dest>`. The hook asks the daemon to arm the
//! container by that pid, and exits 0 only once it is armed.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::State;
use serde_json::Value;

use crate::escape::escape_bytes;
use crate::ipc::client::{ClientError, request};
use crate::ipc::{ArmRequest, Reply, Request};

pub use super::identity::*;
pub use super::notes::*;

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

/// The whole time the createRuntime hook may take: runc kills it at
/// [`crate::runtime::wrapper::CREATE_HOOK_TIMEOUT`], and it must answer (fail-open or not)
/// before that, with a margin for starting up and printing.
pub fn hook_budget() -> Duration {
    Duration::from_secs(crate::runtime::wrapper::CREATE_HOOK_TIMEOUT).saturating_sub(HOOK_MARGIN)
}

/// Kept between the hook's own budget and runc's timeout.
pub const HOOK_MARGIN: Duration = Duration::from_secs(5);

impl HookError {
    /// The container id and why, when no daemon answered in time: the only failure
    /// fail-open lets a container start through. A bad config (a workload's own
    /// annotations) or a refusal by the daemon fails the container whatever the setting.
    pub fn daemon_unavailable(&self) -> Option<(&str, String)> {
        match self {
            HookError::Daemon { id, source } if source.daemon_unavailable() => {
                Some((id.as_str(), source.to_string()))
            }
            _ => None,
        }
    }
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
    /// Either, by the OCI state's status ("creating": createRuntime, "stopped":
    /// poststop): one hooks.d file (Podman, CRI-O) registers the hook for both stages.
    #[value(name = "oci")]
    FromState,
}

/// What the hook needs besides stdin.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// How long to keep trying to reach a daemon that is (re)starting.
    pub connect_wait: Duration,
    /// How long arming may take in all (a first snapshot of a large image), connecting
    /// included: below runc's timeout for the hook ([`hook_budget`]).
    pub arm_timeout: Duration,
    /// Kubernetes namespaces whose containers are not armed (what repairs a node, such as
    /// kube-system and the CNI's, must start while the daemon is down).
    pub exempt_namespaces: Vec<String>,
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

/// Builds the arm request for a container from its OCI state and bundle config.
pub fn arm_request(
    state_json: &[u8],
    read_config: impl Fn(&Path) -> Result<Vec<u8>, String>,
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
    let identity = container_identity(bundle, &id, &config, &read_config).map_err(cfg_err)?;
    // The pod and container names are the kubelet's only where the namespace is: a
    // container-scoped allow entry must not be reached by a name its creator wrote.
    let trusted = kubernetes_annotations_trusted(bundle, &config);
    let annotation = |key: &str| annotation_of(&config, key).filter(|_| trusted);
    let pod = annotation("io.kubernetes.cri.sandbox-name")
        .or_else(|| annotation("io.kubernetes.pod.name"));
    let container_name = annotation("io.kubernetes.cri.container-name")
        .or_else(|| annotation("io.kubernetes.container.name"));
    let rootfs_text = escape_bytes(rootfs.as_os_str().as_bytes());
    Ok(ArmRequest {
        id,
        rootfs: rootfs_text.clone(),
        mounts: Vec::new(),
        mode: None,
        annotated_mode: identity.annotated_mode,
        image_key: None,
        pid: Some(pid),
        discover_mounts: true,
        // Before pivot_root the container's view of its rootfs path is the host's.
        host_rootfs: Some(rootfs_text),
        image_name: identity.image_name,
        namespace: identity.namespace,
        pod,
        container_name,
        identity_source: identity.source,
    })
}

/// Which newer field an older daemon refused, if that is what it did: its request
/// decoder's words at the start of an `invalid` (or, from the first release, uncoded)
/// refusal. Any other refusal may echo a container's path or name, and a path holding
/// those words must not turn the annotation's mode into the operator's.
fn refused_newer_field(e: &ClientError) -> Option<&'static str> {
    let ClientError::Refused {
        code: None | Some(crate::ipc::ErrorCode::Invalid),
        message,
    } = e
    else {
        return None;
    };
    ["annotated_mode", "identity_source"]
        .into_iter()
        .find(|f| message.starts_with(&format!("malformed request: unknown field `{f}`")))
}

/// True only for an older daemon's refusal of the `annotated_mode` field itself.
#[cfg(test)]
fn refuses_annotated_mode(e: &ClientError) -> bool {
    refused_newer_field(e) == Some("annotated_mode")
}

/// The request as an older daemon reads it: without the identity's source, and for a
/// daemon before the annotation policy (it refused `annotated_mode`), the annotation's
/// mode in `mode`.
fn legacy_request(req: &ArmRequest, refused: &str) -> ArmRequest {
    let mut old = req.clone();
    old.identity_source = None;
    if refused == "annotated_mode" {
        old.mode = old.mode.or(old.annotated_mode.take());
    }
    old
}

/// The stage a hook registered for several is run at, from the OCI state's status.
fn stage_of(state: &[u8]) -> Result<Stage, HookError> {
    let v: Value = serde_json::from_slice(state).map_err(|e| HookError::State(e.to_string()))?;
    match v.get("status").and_then(Value::as_str) {
        Some("creating") => Ok(Stage::CreateRuntime),
        Some("stopped") => Ok(Stage::Poststop),
        other => Err(HookError::State(format!(
            "status {other:?}: register this hook for createRuntime and poststop only"
        ))),
    }
}

/// Runs `f` (given the time it may take) until it gets an answer, all within `budget`: a
/// daemon not listening yet is waited for up to `connect_wait`, and a daemon that says it
/// is busy (every client slot taken during a burst of container creations) is asked again
/// with backoff. Any other answer, a refusal included, is final. Nothing runs past the
/// budget, so the hook answers before runc's own timeout kills it.
fn with_retry<T>(
    opts: &HookOptions,
    budget: Duration,
    f: impl Fn(Duration) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    let connect_until = started + opts.connect_wait.min(budget);
    let busy_until = started + budget;
    let mut pause = Duration::from_millis(20);
    loop {
        let left = busy_until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match f(left) {
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
    let stage = match stage {
        Stage::FromState => stage_of(&state)?,
        s => s,
    };
    match stage {
        Stage::FromState => Err(HookError::State("no stage".into())),
        Stage::CreateRuntime => {
            let req = arm_request(&state, |p| {
                read_limited(
                    std::fs::File::open(p).map_err(|e| e.to_string())?,
                    "config.json",
                )
            })?;
            let id = req.id.clone();
            if let Some(ns) = req.namespace.as_deref().filter(|ns| {
                opts.exempt_namespaces
                    .iter()
                    .any(|e| crate::config::matches(e, ns))
            }) {
                return Ok(format!(
                    "{id}: not armed: namespace {ns} is exempt (EXEMPT_NAMESPACES in runtime.conf)"
                ));
            }
            let arm = |req: &ArmRequest| {
                with_retry(opts, opts.arm_timeout, |left| {
                    request(&opts.socket, &Request::Arm(Box::new(req.clone())), left)
                })
            };
            let reply = match arm(&req) {
                // A daemon one version older knows no `annotated_mode` (and lets every
                // annotation win): ask it the way it understands.
                Err(e) => match refused_newer_field(&e) {
                    Some(field) => arm(&legacy_request(&req, field)),
                    None => Err(e),
                },
                other => other,
            }
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
            let disarmed = with_retry(opts, Duration::from_secs(20), |left| {
                request(&opts.socket, &Request::Disarm { id: id.clone() }, left)
            });
            match disarmed {
                Ok(_) => Ok(format!("disarmed {id}")),
                // The daemon saw the container's init exit and disarmed it first.
                Err(ClientError::Refused {
                    code: Some(crate::ipc::ErrorCode::NotFound),
                    ..
                }) => Ok(format!("{id} was disarmed already")),
                Err(source) => Err(HookError::Daemon {
                    id: id.clone(),
                    source,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    /// Issue 19 (2): the hook answers within its budget, which is below runc's timeout for
    /// it, whether the daemon never listens or stays busy: a slow arm fails (or fails
    /// open) before runc kills the hook.
    #[test]
    fn the_hook_answers_within_its_budget() {
        assert!(
            hook_budget() + HOOK_MARGIN
                <= Duration::from_secs(crate::runtime::wrapper::CREATE_HOOK_TIMEOUT)
        );
        let opts = HookOptions {
            socket: PathBuf::from("/nonexistent/driftlock.sock"),
            connect_wait: Duration::from_secs(10),
            arm_timeout: Duration::from_millis(300),
            exempt_namespaces: Vec::new(),
        };
        let started = Instant::now();
        let r: Result<(), _> = with_retry(&opts, opts.arm_timeout, |left| {
            assert!(left <= Duration::from_millis(300));
            Err(ClientError::Connect {
                path: opts.socket.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        });
        assert!(r.unwrap_err().daemon_unavailable());
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let r: Result<(), _> = with_retry(&opts, opts.arm_timeout, |_| {
            Err(ClientError::Refused {
                code: Some(crate::ipc::ErrorCode::Busy),
                message: "busy".into(),
            })
        });
        assert!(
            r.unwrap_err().daemon_unavailable(),
            "busy to the end: unavailable"
        );
        assert!(started.elapsed() < Duration::from_millis(800));
        let refused = ClientError::Refused {
            code: Some(crate::ipc::ErrorCode::Invalid),
            message: "no".into(),
        };
        assert!(!refused.daemon_unavailable(), "a refusal is an answer");
    }

    #[test]
    fn exempt_namespaces_are_kubernetes_and_never_a_podman_users_word() {
        let top = std::env::temp_dir().join(format!("driftlock-exempt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        // A container of containerd's CRI: its bundle in containerd namespace k8s.io.
        let dir = top.join("io.containerd.runtime.v2.task/k8s.io/c1");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let state_of = |dir: &Path| {
            format!(
                r#"{{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"{}"}}"#,
                dir.display()
            )
        };
        let state = state_of(&dir);
        let opts = HookOptions {
            socket: PathBuf::from("/nonexistent/driftlock.sock"),
            connect_wait: Duration::from_millis(10),
            arm_timeout: Duration::from_millis(50),
            exempt_namespaces: vec!["kube-*".into()],
        };
        let write_in = |dir: &Path, extra: &str| {
            std::fs::write(
                dir.join("config.json"),
                format!(
                    r#"{{"root":{{"path":"rootfs"}},"annotations":{{"io.kubernetes.cri.sandbox-namespace":"kube-system"{extra}}}}}"#
                ),
            )
            .unwrap();
        };
        write_in(&dir, "");
        let r = run(Stage::CreateRuntime, &opts, state.as_bytes()).unwrap();
        assert!(r.contains("not armed") && r.contains("kube-system"), "{r}");
        // The same claim on a Podman container: armed (here: no daemon, so it fails).
        write_in(&dir, r#","io.container.manager":"libpod""#);
        assert!(run(Stage::CreateRuntime, &opts, state.as_bytes()).is_err());
        // And on a container `ctr run` made in another containerd namespace.
        let other = top.join("io.containerd.runtime.v2.task/default/c1");
        std::fs::create_dir_all(other.join("rootfs")).unwrap();
        write_in(&other, "");
        assert!(run(Stage::CreateRuntime, &opts, state_of(&other).as_bytes()).is_err());
        let _ = std::fs::remove_dir_all(&top);
    }

    /// Issue 19: a daemon one version older rejects the new field by name; the hook then
    /// sends the annotation's mode where that daemon reads it.
    #[test]
    fn an_older_daemon_is_asked_the_old_way() {
        let line = br#"{"v":1,"op":"arm","id":"c","rootfs":"/r","newer_field":"audit"}"#;
        let err = crate::ipc::parse_request(line).unwrap_err().to_string();
        assert!(err.contains("unknown field `newer_field`"), "{err}");
        let req = ArmRequest {
            id: "c".into(),
            rootfs: "/r".into(),
            mounts: Vec::new(),
            mode: None,
            annotated_mode: Some(Mode::Audit),
            image_key: None,
            pid: None,
            discover_mounts: false,
            host_rootfs: None,
            image_name: None,
            namespace: None,
            pod: None,
            container_name: None,
            identity_source: None,
        };
        // Only the decoder's own refusal asks the old way: a refusal that merely names the
        // field (a path can hold any words) does not.
        let decoder = |code, message: &str| ClientError::Refused {
            code,
            message: message.into(),
        };
        let old_daemon = err.replace("newer_field", "annotated_mode");
        assert!(
            refuses_annotated_mode(&decoder(None, &old_daemon)),
            "{old_daemon}"
        );
        assert!(refuses_annotated_mode(&decoder(
            Some(crate::ipc::ErrorCode::Invalid),
            &old_daemon
        )));
        assert!(!refuses_annotated_mode(&decoder(
            Some(crate::ipc::ErrorCode::NotFound),
            "cannot stat /run/x/malformed request: unknown field `annotated_mode`"
        )));
        assert!(!refuses_annotated_mode(&decoder(
            Some(crate::ipc::ErrorCode::Invalid),
            "rootfs /a/unknown field `annotated_mode`/b is not a directory"
        )));
        let old = legacy_request(&req, "annotated_mode");
        assert_eq!((old.mode, old.annotated_mode), (Some(Mode::Audit), None));
        // A daemon that knows the annotation policy but not the identity's source.
        let newer = decoder(None, &err.replace("newer_field", "identity_source"));
        assert_eq!(refused_newer_field(&newer), Some("identity_source"));
        let mut with_source = req.clone();
        with_source.identity_source = Some(crate::IdentitySource::Kubelet);
        let old_source = legacy_request(&with_source, "identity_source");
        assert_eq!(old_source.identity_source, None);
        assert_eq!(old_source.annotated_mode, req.annotated_mode, "kept");
        let wire =
            String::from_utf8(crate::ipc::encode_request(&Request::Arm(Box::new(old)))).unwrap();
        assert!(!wire.contains("annotated_mode"), "{wire}");
    }

    const STATE: &str = r#"{"ociVersion":"1.0.2","id":"web-1","status":"creating","pid":4242,"bundle":"/run/containerd/io.containerd.runtime.v2.task/default/web-1"}"#;

    fn config(extra: &str) -> impl Fn(&Path) -> Result<Vec<u8>, String> {
        let text = format!(r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}}{extra}}}"#);
        move |p: &Path| {
            assert!(p.ends_with("web-1/config.json"));
            Ok(text.clone().into_bytes())
        }
    }

    #[test]
    fn docker_containers_get_their_image_name_and_mode_label_from_dockers_record() {
        let state = r#"{"ociVersion":"1.0.2","id":"c5c0","status":"creating","pid":7,"bundle":"/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/c5c0"}"#;
        let config = r#"{"ociVersion":"1.0.2","root":{"path":"/var/lib/docker/overlay2/x/merged"},
            "mounts":[{"destination":"/proc","source":"proc"},
                      {"destination":"/etc/hostname","source":"/var/lib/docker/containers/c5c0/hostname"}]}"#;
        let v2 = r#"{"ID":"c5c0","Config":{"Image":"driftlock/glibc:latest","Labels":{"driftlock.io/mode":"audit"}}}"#;
        let read = |p: &Path| -> Result<Vec<u8>, String> {
            if p.ends_with("config.json") {
                Ok(config.as_bytes().to_vec())
            } else if p == Path::new("/var/lib/docker/containers/c5c0/config.v2.json") {
                Ok(v2.as_bytes().to_vec())
            } else {
                Err(format!("unexpected read of {}", p.display()))
            }
        };
        let req = arm_request(state.as_bytes(), read).unwrap();
        assert_eq!(req.image_name.as_deref(), Some("driftlock/glibc:latest"));
        assert_eq!(req.annotated_mode, Some(Mode::Audit));
        // A hostname mount that is not Docker's (another id, or not under containers/)
        // is not read.
        for source in [
            "/var/lib/docker/containers/other/hostname",
            "/var/lib/elsewhere/c5c0/hostname",
            "/var/lib/docker/containers/../c5c0/hostname",
        ] {
            let cfg = config.replace("/var/lib/docker/containers/c5c0/hostname", source);
            let req = arm_request(state.as_bytes(), |p: &Path| {
                if p.ends_with("config.json") {
                    Ok(cfg.as_bytes().to_vec())
                } else {
                    Err(format!("unexpected read of {}", p.display()))
                }
            })
            .unwrap();
            assert_eq!(req.image_name, None, "{source}");
            assert_eq!(req.annotated_mode, None, "{source}");
        }
    }

    #[test]
    fn podman_containers_get_their_image_name_from_containers_storage() {
        let state = r#"{"ociVersion":"1.0.2","id":"803c","status":"creating","pid":7,"bundle":"/var/lib/containers/storage/overlay-containers/803c/userdata"}"#;
        let list = r#"[{"id":"0000","metadata":"{\"image-name\":\"other\"}"},
                       {"id":"803c","names":["x"],"metadata":"{\"image-name\":\"localhost/driftlock/glibc:latest\",\"name\":\"x\"}"}]"#;
        let read = |p: &Path| -> Result<Vec<u8>, String> {
            if p.ends_with("userdata/config.json") {
                Ok(br#"{"ociVersion":"1.0.2","root":{"path":"/x/merged"}}"#.to_vec())
            } else if p
                == Path::new("/var/lib/containers/storage/overlay-containers/containers.json")
            {
                Ok(list.as_bytes().to_vec())
            } else {
                Err(format!("unexpected read of {}", p.display()))
            }
        };
        let req = arm_request(state.as_bytes(), read).unwrap();
        assert_eq!(
            req.image_name.as_deref(),
            Some("localhost/driftlock/glibc:latest")
        );
        // Another layout is not read.
        let elsewhere = state.replace("overlay-containers/803c/userdata", "803c");
        let req = arm_request(elsewhere.as_bytes(), |p: &Path| {
            if p.ends_with("config.json") {
                Ok(br#"{"ociVersion":"1.0.2","root":{"path":"/x/merged"}}"#.to_vec())
            } else {
                Err(format!("unexpected read of {}", p.display()))
            }
        })
        .unwrap();
        assert_eq!(req.image_name, None);
    }

    /// The identity that selects rules comes from the kubelet where it wrote it, else from
    /// the runtime's own record, and each request says which; annotations a container's
    /// creator wrote name no namespace, pod or container, and lose to the runtime's record.
    #[test]
    fn identity_comes_from_the_runtime_that_cannot_be_told_otherwise() {
        use crate::IdentitySource;
        let cri = r#","annotations":{"io.kubernetes.cri.image-name":"registry.local/app:1","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-name":"web-7d9f","io.kubernetes.cri.container-name":"app"}"#;
        // containerd's CRI (namespace k8s.io): the kubelet's annotations.
        let kubelet = STATE.replace("/default/", "/k8s.io/");
        let req = arm_request(kubelet.as_bytes(), config(cri)).unwrap();
        assert_eq!(req.identity_source, Some(IdentitySource::Kubelet));
        assert_eq!(req.namespace.as_deref(), Some("shop"));
        assert_eq!(req.pod.as_deref(), Some("web-7d9f"));
        assert_eq!(req.container_name.as_deref(), Some("app"));
        // The same annotations from `ctr run` in another namespace: an image name at
        // most, marked as the annotations', and no namespace, pod or container.
        let req = arm_request(STATE.as_bytes(), config(cri)).unwrap();
        assert_eq!(req.identity_source, Some(IdentitySource::Annotations));
        assert_eq!(req.image_name.as_deref(), Some("registry.local/app:1"));
        assert_eq!(
            (req.namespace, req.pod, req.container_name),
            (None, None, None)
        );
        // Podman with the same annotations: its own record names the image.
        let state = r#"{"ociVersion":"1.0.2","id":"803c","status":"creating","pid":7,"bundle":"/var/lib/containers/storage/overlay-containers/803c/userdata"}"#;
        let list =
            r#"[{"id":"803c","metadata":"{\"image-name\":\"localhost/driftlock/glibc:latest\"}"}]"#;
        let spoofed = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"/x/merged"}}{}}}"#,
            cri.replace("{\"", "{\"io.container.manager\":\"libpod\",\"")
        );
        let req = arm_request(state.as_bytes(), |p: &Path| {
            if p.ends_with("userdata/config.json") {
                Ok(spoofed.clone().into_bytes())
            } else if p.ends_with("overlay-containers/containers.json") {
                Ok(list.as_bytes().to_vec())
            } else {
                Err(format!("unexpected read of {}", p.display()))
            }
        })
        .unwrap();
        assert_eq!(req.identity_source, Some(IdentitySource::Podman));
        assert_eq!(
            req.image_name.as_deref(),
            Some("localhost/driftlock/glibc:latest")
        );
        assert_eq!(req.namespace, None);
    }

    #[test]
    fn one_hook_for_both_stages_goes_by_the_status() {
        assert_eq!(stage_of(STATE.as_bytes()).unwrap(), Stage::CreateRuntime);
        let stopped = STATE.replace("creating", "stopped");
        assert_eq!(stage_of(stopped.as_bytes()).unwrap(), Stage::Poststop);
        let running = STATE.replace("creating", "running");
        assert!(stage_of(running.as_bytes()).is_err());
        assert!(stage_of(b"{").is_err());
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
        assert_eq!(req.annotated_mode, Some(Mode::Audit));
        assert_eq!(
            req.image_name.as_deref(),
            Some("docker.io/library/postgres:16")
        );
        assert!(req.discover_mounts);
        let plain = arm_request(STATE.as_bytes(), config("")).unwrap();
        assert_eq!(plain.annotated_mode, None);
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
