//! What the armer is asked and answers, in its own terms: a container to arm, which armed
//! units a mode switch names, a container's identity for the mode rules; an armed unit
//! and a mode switched. The daemon maps the protocol's messages to and from these.

use serde::{Deserialize, Serialize};

use crate::Mode;
use crate::baseline::store::Provenance;
use crate::registry::PlannedMark;

/// What arming a container needs: its id, where its filesystems are, who it is. The unit's
/// record keeps it (the same fields and JSON as the protocol's arm request, which the
/// daemon maps to it), so a restarted daemon arms the container again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRequest {
    /// Unit id.
    pub id: String,
    /// Rootfs mount point (escaped bytes).
    pub rootfs: String,
    /// Further mount points of the unit (escaped bytes).
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Mode chosen by the operator (`driftlock arm --mode`); wins over every rule.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Mode the container's own annotation asks for (sent by the hook): counts only as far
    /// as the daemon's annotation policy lets it ([`crate::AnnotationPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_mode: Option<Mode>,
    /// Image key (escaped bytes); derived from the rootfs if absent.
    #[serde(default)]
    pub image_key: Option<String>,
    /// A process of the container (runc init at `createRuntime`): `rootfs` and `mounts`
    /// are then paths in its mount namespace, reached through `/proc/<pid>/root`.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Also arm every mount under `rootfs` found in the mount table (pseudo filesystems
    /// such as proc and sysfs excepted).
    #[serde(default)]
    pub discover_mounts: bool,
    /// Where the host mounted the container's rootfs (escaped), in the daemon's namespace.
    #[serde(default)]
    pub host_rootfs: Option<String>,
    /// Image name for records (e.g. from `io.kubernetes.cri.image-name`).
    #[serde(default)]
    pub image_name: Option<String>,
    /// Kubernetes namespace (for per-namespace modes).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kubernetes pod name (for records).
    #[serde(default)]
    pub pod: Option<String>,
    /// Container name in the pod (for records).
    #[serde(default)]
    pub container_name: Option<String>,
    /// Where the image name and namespace came from (for records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<crate::IdentitySource>,
}

impl UnitRequest {
    /// A request that carries only a container's identity (for the mode rules).
    pub fn of_identity(identity: &Identity) -> Self {
        UnitRequest {
            annotated_mode: identity.annotated_mode,
            image_name: identity.image_name.clone(),
            namespace: identity.namespace.clone(),
            ..Default::default()
        }
    }
}

/// What selects a container's mode: its image, its namespace, its own annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Image name, if known.
    pub image_name: Option<String>,
    /// Kubernetes namespace, if known.
    pub namespace: Option<String>,
    /// The mode the container's own annotation asks for.
    pub annotated_mode: Option<Mode>,
}

/// Which armed units a mode switch names. At least one selector must be given; units must
/// match every one given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// A unit id, a unique prefix of one, or `containerd://ID` (as Kubernetes shows it).
    pub container: Option<String>,
    /// Units of this Kubernetes namespace.
    pub namespace: Option<String>,
    /// Units of images matching this name (`*` at the end matches any suffix).
    pub image: Option<String>,
    /// Every armed unit.
    pub all: bool,
}

/// A unit switched to another mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSwitch {
    /// Unit id.
    pub id: String,
    /// The mode it had.
    pub from: Mode,
    /// The mode it has now.
    pub to: Mode,
}

/// A unit armed.
#[derive(Debug, Clone)]
pub struct Armed {
    /// Unit id.
    pub id: String,
    /// Mode in force.
    pub mode: Mode,
    /// Image key (escaped).
    pub image_key: String,
    /// Where the baseline came from.
    pub baseline: Provenance,
    /// Distinct executable contents in the baseline.
    pub baseline_contents: usize,
    /// Files the snapshot skipped (they will be denied).
    pub snapshot_skipped: usize,
    /// Time spent obtaining the baseline, ms.
    pub baseline_ms: f64,
    /// Whole arm time (mount discovery, baseline, marks), ms.
    pub arm_ms: f64,
    /// `vm.memfd_noexec` was set to 2 in the container's PID namespace.
    pub memfd_noexec: bool,
    /// Marks placed.
    pub marks: Vec<PlannedMark>,
}
