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
    "io.kubernetes.cri-o.ImageName",
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

/// Where hooks leave notes of containers started unprotected (fail-open), beside the
/// daemon's socket; the daemon records and counts them ([`collect_fail_open_notes`]).
pub fn fail_open_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/run/driftlock"))
        .join("fail-open")
}

/// A note left by a hook that let a container start unprotected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailOpenNote {
    /// The container.
    pub id: String,
    /// When (RFC 3339).
    pub time: String,
    /// Why the daemon could not arm it.
    pub reason: String,
}

/// Says, where an operator looks, that a container started unprotected: syslog at once,
/// and a note the daemon records (audit record, `status`, metrics) when it runs again.
pub fn note_fail_open(socket: &Path, id: &str, reason: &str) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let text = format!("container {id} started UNPROTECTED (fail-open): {reason}");
    // daemon facility (3), warning (4); the hook runs with no environment, so no tag config.
    let line = format!("<28>driftlock-hook[{}]: {text}", std::process::id());
    // (DRIFTLOCK_SYSLOG_SOCKET: tests; runc gives hooks no environment.)
    let syslog = std::env::var_os("DRIFTLOCK_SYSLOG_SOCKET")
        .map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
    if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = sock.send_to(line.as_bytes(), &syslog);
    }
    let dir = fail_open_dir(socket);
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let note = FailOpenNote {
        id: id.to_string(),
        time: crate::audit::rfc3339(std::time::SystemTime::now()),
        reason: reason.to_string(),
    };
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("{name}.{nanos}.{}.json", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                serde_json::to_string(&note).unwrap_or_default().as_bytes(),
            )
        });
    if let Err(e) = written {
        eprintln!(
            "driftlock: cannot leave the fail-open note {}: {e}",
            path.display()
        );
    }
}

/// Takes the hooks' fail-open notes (oldest first), removing them; unreadable ones are
/// removed and reported with what is known.
pub fn collect_fail_open_notes(dir: &Path) -> Vec<FailOpenNote> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let note = read_limited_file(&p).and_then(|b| {
                serde_json::from_slice::<FailOpenNote>(&b).map_err(|e| e.to_string())
            });
            let _ = std::fs::remove_file(&p);
            note.unwrap_or_else(|e| FailOpenNote {
                id: p
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .split('.')
                            .next()
                            .unwrap_or("")
                            .to_string()
                    })
                    .unwrap_or_default(),
                time: crate::audit::rfc3339(std::time::SystemTime::now()),
                reason: format!("unreadable note: {e}"),
            })
        })
        .collect()
}

fn read_limited_file(p: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    f.take(64 << 10)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(data)
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

/// Docker's record of container `id` (`<data-root>/containers/<id>/config.v2.json`): the
/// source of the container's `/etc/hostname` mount lives in that directory.
fn docker_config_path(config: &Value, id: &str) -> Option<PathBuf> {
    let mounts = config.pointer("/mounts")?.as_array()?;
    let source = mounts.iter().find_map(|m| {
        (m.get("destination")?.as_str()? == "/etc/hostname")
            .then(|| m.get("source")?.as_str())
            .flatten()
    })?;
    let dir = normal(Path::new(source))?.parent()?.to_path_buf();
    let named_for_id = dir
        .file_name()
        .is_some_and(|n| n.as_bytes() == id.as_bytes());
    let in_containers = dir
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "containers");
    (named_for_id && in_containers).then(|| dir.join("config.v2.json"))
}

/// The image name Podman (containers/storage) recorded for container `id`, whose bundle is
/// `<graphroot>/<driver>-containers/<id>/userdata`: the container's entry in that
/// directory's `containers.json` has it in its metadata (`image-name`).
fn storage_image_name(
    bundle: &Path,
    id: &str,
    read: &impl Fn(&Path) -> Result<Vec<u8>, String>,
) -> Option<String> {
    let by_id = bundle.parent()?;
    let store = by_id.parent()?;
    let layout_ok = bundle.file_name()? == "userdata"
        && by_id.file_name()?.as_bytes() == id.as_bytes()
        && store.file_name()?.as_bytes().ends_with(b"-containers");
    if !layout_ok {
        return None;
    }
    let list: Value = serde_json::from_slice(&read(&store.join("containers.json")).ok()?).ok()?;
    let entry = list
        .as_array()?
        .iter()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
    let metadata: Value = serde_json::from_str(entry.get("metadata")?.as_str()?).ok()?;
    metadata
        .get("image-name")?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The annotation `key` of a bundle's config, if it is a string.
fn annotation_of(config: &Value, key: &str) -> Option<String> {
    config
        .pointer("/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether the Kubernetes annotations of a container can be the kubelet's: not for a
/// container Podman made (`io.container.manager=libpod`: whoever runs `podman run
/// --annotation` writes them) nor one Docker made (containerd namespace `moby`). A
/// namespace read from them would choose the namespace's mode rules and exemptions.
fn kubernetes_annotations_trusted(bundle: &Path, config: &Value) -> bool {
    if annotation_of(config, "io.container.manager").as_deref() == Some("libpod") {
        return false;
    }
    let parts: Vec<&std::ffi::OsStr> = bundle.iter().collect();
    !parts.windows(2).any(|w| {
        w[0] == std::ffi::OsStr::new("io.containerd.runtime.v2.task")
            && w[1] == std::ffi::OsStr::new("moby")
    })
}

/// What selects a container's mode (its image, namespace and own annotation), from its
/// bundle's `config.json` and the runtime's own records: the hook sends it at arm, and the
/// runtime wrapper asks the daemon with it before the container is created.
pub fn container_identity(
    bundle: &Path,
    id: &str,
    config: &Value,
    read_config: &impl Fn(&Path) -> Result<Vec<u8>, String>,
) -> Result<crate::ipc::ContainerIdentity, String> {
    let annotation = |key: &str| annotation_of(config, key);
    // Docker (20.10) passes no annotations: its own record of the container, found
    // through the container's /etc/hostname mount, has the image name and the labels.
    let docker = docker_config_path(config, id)
        .and_then(|p| read_config(&p).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let docker_label = |key: &str| -> Option<String> {
        docker
            .as_ref()?
            .pointer("/Config/Labels")?
            .get(key)?
            .as_str()
            .map(str::to_string)
    };
    let mode_setting = annotation(MODE_ANNOTATION).or_else(|| docker_label(MODE_ANNOTATION));
    let mode = match mode_setting.as_deref() {
        None => None,
        Some("audit") => Some(Mode::Audit),
        Some("enforce") => Some(Mode::Enforce),
        Some(other) => {
            return Err(format!(
                "annotation {MODE_ANNOTATION}={other:?}: use audit or enforce"
            ));
        }
    };
    let image_name = IMAGE_NAME_ANNOTATIONS
        .iter()
        .find_map(|k| annotation(k))
        .or_else(|| {
            docker
                .as_ref()?
                .pointer("/Config/Image")?
                .as_str()
                .map(str::to_string)
        })
        .or_else(|| storage_image_name(bundle, id, read_config));
    let namespace = if kubernetes_annotations_trusted(bundle, config) {
        NAMESPACE_ANNOTATIONS.iter().find_map(|k| annotation(k))
    } else {
        None
    };
    Ok(crate::ipc::ContainerIdentity {
        image_name,
        namespace,
        annotated_mode: mode,
    })
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
    let annotation = |key: &str| annotation_of(&config, key);
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
    })
}

/// True only for an older daemon's refusal of the `annotated_mode` field itself: its
/// request decoder's words at the start of an `invalid` (or, from the first release,
/// uncoded) refusal. Any other refusal may echo a container's path or name, and a path
/// holding those words must not turn the annotation's mode into the operator's.
fn refuses_annotated_mode(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused { code: None | Some(crate::ipc::ErrorCode::Invalid), message }
        if message.starts_with("malformed request: unknown field `annotated_mode`"))
}

/// The request as a daemon before the annotation policy reads it: the annotation's mode
/// in `mode`.
fn legacy_request(req: &ArmRequest) -> ArmRequest {
    let mut old = req.clone();
    old.mode = old.mode.or(old.annotated_mode.take());
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
                Err(e) if refuses_annotated_mode(&e) => arm(&legacy_request(&req)),
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
            with_retry(opts, Duration::from_secs(20), |left| {
                request(&opts.socket, &Request::Disarm { id: id.clone() }, left)
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
        let dir = std::env::temp_dir().join(format!("driftlock-exempt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"{}"}}"#,
            dir.display()
        );
        let opts = HookOptions {
            socket: PathBuf::from("/nonexistent/driftlock.sock"),
            connect_wait: Duration::from_millis(10),
            arm_timeout: Duration::from_millis(50),
            exempt_namespaces: vec!["kube-*".into()],
        };
        let write = |extra: &str| {
            std::fs::write(
                dir.join("config.json"),
                format!(
                    r#"{{"root":{{"path":"rootfs"}},"annotations":{{"io.kubernetes.cri.sandbox-namespace":"kube-system"{extra}}}}}"#
                ),
            )
            .unwrap();
        };
        write("");
        let r = run(Stage::CreateRuntime, &opts, state.as_bytes()).unwrap();
        assert!(r.contains("not armed") && r.contains("kube-system"), "{r}");
        // The same claim on a Podman container: armed (here: no daemon, so it fails).
        write(r#","io.container.manager":"libpod""#);
        assert!(run(Stage::CreateRuntime, &opts, state.as_bytes()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
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
        let old = legacy_request(&req);
        assert_eq!((old.mode, old.annotated_mode), (Some(Mode::Audit), None));
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
