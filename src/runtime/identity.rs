//! A container's identity from its bundle: image name, Kubernetes namespace, pod and
//! container name, its own mode annotation (trusted only as far as the runtime says).

use crate::Mode;
use serde_json::Value;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

/// Removes `.` components and trailing slashes; refuses `..` (a path runc resolved
/// never holds one, so it is a sign of a crafted config).
pub(super) fn normal(path: &Path) -> Option<PathBuf> {
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
pub(super) fn docker_config_path(config: &Value, id: &str) -> Option<PathBuf> {
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
pub(super) fn storage_image_name(
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
pub(super) fn annotation_of(config: &Value, key: &str) -> Option<String> {
    config
        .pointer("/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether the Kubernetes annotations of a container are the kubelet's: a container of
/// containerd's CRI (its bundle in containerd namespace `k8s.io`) or of CRI-O
/// (`io.container.manager=cri-o`). Not a container Podman made (`libpod`: whoever runs
/// `podman run --annotation` writes them), Docker made (namespace `moby`) or `ctr run`
/// made in another namespace. A namespace read from them chooses the namespace's mode
/// rules, allow entries and exemptions.
pub(super) fn kubernetes_annotations_trusted(bundle: &Path, config: &Value) -> bool {
    match annotation_of(config, "io.container.manager").as_deref() {
        Some("libpod") => return false,
        Some("cri-o") => return true,
        _ => {}
    }
    let parts: Vec<&std::ffi::OsStr> = bundle.iter().collect();
    parts.windows(2).any(|w| {
        w[0] == std::ffi::OsStr::new("io.containerd.runtime.v2.task")
            && w[1] == std::ffi::OsStr::new("k8s.io")
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
    let from_annotations = IMAGE_NAME_ANNOTATIONS.iter().find_map(|k| annotation(k));
    let from_docker = docker
        .as_ref()
        .and_then(|d| d.pointer("/Config/Image")?.as_str().map(str::to_string));
    let trusted = kubernetes_annotations_trusted(bundle, config);
    // The runtime's own record first; annotations name the image only where the kubelet
    // wrote them, or where no record exists (`ctr run`: root on the node wrote them).
    let (image_name, source) = if let (true, Some(name)) = (trusted, from_annotations.clone()) {
        (Some(name), Some(crate::IdentitySource::Kubelet))
    } else if let Some(name) = from_docker {
        (Some(name), Some(crate::IdentitySource::Docker))
    } else if let Some(name) = storage_image_name(bundle, id, read_config) {
        (Some(name), Some(crate::IdentitySource::Podman))
    } else if let Some(name) = from_annotations {
        // Not the kubelet's (the first branch took those): the creator's own words.
        (Some(name), Some(crate::IdentitySource::Annotations))
    } else {
        (None, None)
    };
    let namespace = if trusted {
        NAMESPACE_ANNOTATIONS.iter().find_map(|k| annotation(k))
    } else {
        None
    };
    let source = match (source, &namespace) {
        (None, Some(_)) => Some(crate::IdentitySource::Kubelet),
        (s, _) => s,
    };
    Ok(crate::ipc::ContainerIdentity {
        image_name,
        namespace,
        annotated_mode: mode,
        source,
    })
}
