//! Armed units (containers) and how a file identity is attributed to one.
//!
//! Mark choice. A filesystem mark covers every mount of a superblock in every namespace,
//! which is what a container's overlay rootfs and its private tmpfs mounts need (the
//! container sees them through mounts in its own namespace). It is used only when every
//! mount of that filesystem visible to the daemon lies inside the unit; otherwise (a bind
//! mount of a host directory shares the host's superblock) only that mount is marked, so
//! nothing outside the container is gated. The host's root filesystem is never given a
//! filesystem mark, and its root mount is never marked at all.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Mode;
use crate::baseline::Baseline;
use crate::escape::escape_bytes;
use crate::kernel::mountinfo::{MountEntry, is_within};
use crate::kernel::{FileStat, MarkKind, PathStat};
use crate::verdict::VerdictCache;
use crate::verdict::cache::CacheStats;
use crate::verdict::cache::KeyHasher;

/// Per-unit counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitCounters {
    /// Execs allowed.
    pub allowed: u64,
    /// Execs denied.
    pub denied: u64,
    /// Execs enforce mode would have denied (audit mode).
    pub would_deny: u64,
    /// Files hashed at exec time.
    pub hashed: u64,
    /// Decisions made by policy because hashing exceeded its time budget.
    pub hash_timeouts: u64,
}

/// The last deny (or would-deny) of a unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastDeny {
    /// When.
    pub time: String,
    /// What (escaped path).
    pub path: Option<String>,
    /// Verdict.
    pub verdict: crate::verdict::Verdict,
}

/// An armed unit.
#[derive(Debug)]
pub struct Unit {
    /// Operator-chosen id (container id).
    pub id: String,
    /// The image key its baseline belongs to.
    pub image_key: Vec<u8>,
    /// Image name (from the container's annotations), if known.
    pub image_name: Option<String>,
    /// Kubernetes context (from the container's annotations).
    pub k8s: K8sContext,
    /// The container's first process, if armed by pid.
    pub pid: Option<i32>,
    /// Enforce or audit.
    pub mode: Mode,
    /// The baseline.
    pub baseline: Arc<Baseline>,
    /// Marks placed for it.
    pub marks: Vec<PlannedMark>,
    /// Its verdict cache.
    pub cache: VerdictCache,
    /// Its counters.
    pub counters: UnitCounters,
    /// Content the operator allowed besides the baseline.
    pub allow: Allowed,
    /// The last deny or would-deny.
    pub last_deny: Option<LastDeny>,
    /// How many records the unit may still write now.
    pub records: crate::audit::RecordBudget,
}

/// Where a container sits in Kubernetes, when the kubelet says, and where its identity
/// (this and its image name) was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct K8sContext {
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Where the identity came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::IdentitySource>,
}

/// A unit's operator allow entries, as sets.
#[derive(Debug, Default, Clone)]
pub struct Allowed {
    /// By BLAKE3.
    pub blake3: std::collections::HashSet<crate::baseline::Digest>,
    /// By SHA-256.
    pub sha256: std::collections::HashSet<crate::baseline::Digest>,
    /// Content allowed only at some paths (judged at each exec, never cached).
    pub at_paths: Vec<crate::config::PathScoped>,
    /// Sizes the entries give.
    pub sizes: std::collections::HashSet<u64>,
    /// Some entry gives no size.
    pub unsized_entries: bool,
}

impl From<crate::config::AllowList> for Allowed {
    fn from(l: crate::config::AllowList) -> Self {
        Self {
            blake3: l.blake3.into_iter().collect(),
            sha256: l.sha256.into_iter().collect(),
            at_paths: l.at_paths,
            sizes: l.sizes.into_iter().collect(),
            unsized_entries: l.unsized_entries,
        }
    }
}

impl Allowed {
    /// True if the operator allowed nothing beyond the baseline.
    pub fn is_empty(&self) -> bool {
        self.blake3.is_empty() && self.sha256.is_empty() && self.at_paths.is_empty()
    }

    /// True if some entry gives a SHA-256 (the hash workers must compute it too).
    pub fn needs_sha256(&self) -> bool {
        !self.sha256.is_empty() || self.at_paths.iter().any(|p| p.sha256.is_some())
    }

    /// True if some entry allows this content at some paths only: its verdict depends on
    /// the path of each exec.
    pub fn scoped_to_paths(&self, d: &crate::baseline::FileDigests) -> bool {
        let sha = d.sha256.map(crate::baseline::Digest);
        self.at_paths
            .iter()
            .any(|p| p.is_content(&d.blake3, sha.as_ref()))
    }

    /// True if an entry allows this content at `path` (as the container sees it).
    pub fn permits_at(&self, d: &crate::baseline::FileDigests, path: &[u8]) -> bool {
        let sha = d.sha256.map(crate::baseline::Digest);
        self.at_paths
            .iter()
            .any(|p| p.is_content(&d.blake3, sha.as_ref()) && p.admits_path(path))
    }

    /// True if some entry could allow content of `size` bytes.
    pub fn may_hold_size(&self, size: u64) -> bool {
        !self.is_empty() && (self.unsized_entries || self.sizes.contains(&size))
    }

    /// True if an operator entry allows content with these digests.
    pub fn permits(&self, d: &crate::baseline::FileDigests) -> bool {
        self.blake3.contains(&d.blake3)
            || d.sha256
                .is_some_and(|s| self.sha256.contains(&crate::baseline::Digest(s)))
    }
}

/// Handle of a unit inside the registry (stable while the unit is armed).
pub type UnitHandle = u64;

/// Armed units, with the maps that attribute an event's file to one of them.
#[derive(Debug, Default)]
pub struct Registry {
    // Looked up several times per event: the multiply-xorshift hasher, not SipHash (handles
    // are ours, not attacker-chosen).
    units: HashMap<UnitHandle, Unit, BuildHasherDefault<KeyHasher>>,
    by_dev: HashMap<u64, UnitHandle, BuildHasherDefault<KeyHasher>>,
    by_mnt: HashMap<u64, UnitHandle, BuildHasherDefault<KeyHasher>>,
    /// Units disarmed while execs of theirs still waited for a hash: attributed no more
    /// and not found by id (the id may be armed again), kept until those execs are
    /// answered, and recorded, by the unit's own rules.
    leaving: Vec<UnitHandle>,
    next: UnitHandle,
}

/// How an event was attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// The unit.
    pub unit: UnitHandle,
    /// Through a filesystem mark (all writers visible) or a mount mark.
    pub via: MarkKind,
}

impl Registry {
    /// The unit an event's file belongs to. A mount mark is more specific than a
    /// filesystem mark, so it is looked up first.
    pub fn attribute(&self, stat: &FileStat) -> Option<Attribution> {
        if let Some(u) = self.by_mnt.get(&stat.mnt_id) {
            return Some(Attribution {
                unit: *u,
                via: MarkKind::Mount,
            });
        }
        self.by_dev.get(&stat.dev).map(|u| Attribution {
            unit: *u,
            via: MarkKind::Filesystem,
        })
    }

    /// The unit with a filesystem mark on device `dev`.
    pub fn attribute_filesystem(&self, dev: u64) -> Option<Attribution> {
        self.by_dev.get(&dev).map(|u| Attribution {
            unit: *u,
            via: MarkKind::Filesystem,
        })
    }

    /// Attributes device `dev` (an overlay layer's own device number) to `unit`'s
    /// filesystem mark, until the unit is removed.
    pub fn add_layer_device(&mut self, dev: u64, unit: UnitHandle) {
        if self.units.contains_key(&unit) {
            self.by_dev.entry(dev).or_insert(unit);
        }
    }

    /// The unit that already claims one of `marks`, if any.
    pub fn conflict(&self, marks: &[PlannedMark]) -> Option<UnitHandle> {
        marks.iter().find_map(|m| match m.kind {
            MarkKind::Filesystem => self.by_dev.get(&m.dev).copied(),
            MarkKind::Mount => self.by_mnt.get(&m.mnt_id).copied(),
        })
    }

    /// Adds a unit and its attribution entries.
    pub fn insert(&mut self, unit: Unit) -> UnitHandle {
        let handle = self.next;
        self.next += 1;
        for m in &unit.marks {
            match m.kind {
                MarkKind::Filesystem => self.by_dev.insert(m.dev, handle),
                MarkKind::Mount => self.by_mnt.insert(m.mnt_id, handle),
            };
        }
        self.units.insert(handle, unit);
        handle
    }

    /// Adds marks to an armed unit (a mount that appeared after it started).
    pub fn add_marks(&mut self, handle: UnitHandle, marks: &[PlannedMark]) {
        let Some(unit) = self.units.get_mut(&handle) else {
            return;
        };
        for m in marks {
            match m.kind {
                MarkKind::Filesystem => self.by_dev.insert(m.dev, handle),
                MarkKind::Mount => self.by_mnt.insert(m.mnt_id, handle),
            };
            unit.marks.push(m.clone());
        }
    }

    /// Removes a unit (with its cache).
    pub fn remove(&mut self, handle: UnitHandle) -> Option<Unit> {
        let unit = self.units.remove(&handle)?;
        self.by_dev.retain(|_, h| *h != handle);
        self.by_mnt.retain(|_, h| *h != handle);
        self.leaving.retain(|h| *h != handle);
        Some(unit)
    }

    /// Takes a unit out of attribution and of lookups by id, and keeps it (its rules, its
    /// counters, its record budget) until [`Registry::remove`]: see `leaving`.
    pub fn retire(&mut self, handle: UnitHandle) {
        if !self.units.contains_key(&handle) || self.leaving.contains(&handle) {
            return;
        }
        self.by_dev.retain(|_, h| *h != handle);
        self.by_mnt.retain(|_, h| *h != handle);
        self.leaving.push(handle);
    }

    /// True if the unit was disarmed and waits only for its last answers.
    pub fn is_leaving(&self, handle: UnitHandle) -> bool {
        self.leaving.contains(&handle)
    }

    /// The units disarmed but kept for their last answers.
    pub fn leaving(&self) -> &[UnitHandle] {
        &self.leaving
    }

    /// The armed (not leaving) unit with this id.
    pub fn find_id(&self, id: &str) -> Option<UnitHandle> {
        self.units
            .iter()
            .find(|(h, u)| u.id == id && !self.leaving.contains(h))
            .map(|(h, _)| *h)
    }

    /// A unit by handle.
    pub fn get(&self, handle: UnitHandle) -> Option<&Unit> {
        self.units.get(&handle)
    }

    /// A unit by handle, mutably.
    pub fn get_mut(&mut self, handle: UnitHandle) -> Option<&mut Unit> {
        self.units.get_mut(&handle)
    }

    /// All units.
    pub fn iter(&self) -> impl Iterator<Item = (&UnitHandle, &Unit)> {
        self.units.iter()
    }

    /// All units, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&UnitHandle, &mut Unit)> {
        self.units.iter_mut()
    }

    /// Number of armed units (not counting those leaving).
    pub fn len(&self) -> usize {
        self.units.len() - self.leaving.len()
    }

    /// True if nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A unit's status, for `driftlock status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnitStatus {
    /// Id.
    pub id: String,
    /// Image key (escaped).
    pub image_key: String,
    /// Image name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// The container's first process, if armed by pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Mode.
    pub mode: Mode,
    /// Distinct contents in the baseline.
    pub baseline_contents: usize,
    /// Marks.
    pub marks: Vec<PlannedMark>,
    /// Counters.
    pub counters: UnitCounters,
    /// Cache counters.
    pub cache: CacheStats,
    /// Cache entries.
    pub cache_entries: usize,
    /// The last deny or would-deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deny: Option<LastDeny>,
    /// What the mapping gate judges of this unit (`None`: no gate runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_gate: Option<String>,
    /// What judges a library dropped in this unit: `mapping gate`, `library control`, both,
    /// or `none` (with where).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub libraries: String,
    /// Kubernetes namespace, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Container name in its pod, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Kubernetes pod name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Unit {
    /// True if this unit has a filesystem mark on device `dev` and that filesystem is one
    /// of [`IMMUTABLE_FILESYSTEMS`].
    pub fn content_is_immutable(&self, dev: u64) -> bool {
        self.marks.iter().any(|m| {
            m.dev == dev
                && m.kind == MarkKind::Filesystem
                && IMMUTABLE_FILESYSTEMS.contains(&m.fstype.as_str())
        })
    }

    /// The unit's status.
    pub fn status(&self) -> UnitStatus {
        UnitStatus {
            id: self.id.clone(),
            image_key: escape_bytes(&self.image_key),
            image_name: self.image_name.clone(),
            pid: self.pid,
            mode: self.mode,
            baseline_contents: self.baseline.distinct_contents(),
            marks: self.marks.clone(),
            counters: self.counters,
            cache: self.cache.stats(),
            cache_entries: self.cache.len(),
            last_deny: self.last_deny.clone(),
            mapping_gate: None,
            libraries: String::new(),
            namespace: self.k8s.namespace.clone(),
            container_name: self.k8s.container.clone(),
            pod: self.k8s.pod.clone(),
        }
    }
}

mod plan;
pub use plan::*;

#[cfg(test)]
mod tests;
