//! driftlock: container drift prevention.
//!
//! A container may execute a program only if the program's *content* (BLAKE3) is in the
//! baseline snapshotted from its image. The data flows through the rooms (modules) in this
//! order; each room imports only rooms below it (`tests/layering.rs` keeps it so):
//!
//! 0. [`runtime`]: `driftlock-runtime` wraps runc and adds driftlock's OCI hooks to each
//!    container; the `createRuntime` hook holds the container until it is armed.
//! 1. [`ipc`]: the hook (or `driftlock arm`) asks the daemon to protect a unit (a
//!    container: its rootfs and mounts) over a root-only Unix socket, in a versioned
//!    protocol of plain data (pinned JSON) that knows nothing of its server; failures
//!    carry a code (`busy` is retried). [`daemon`] maps the request to the armer's terms,
//!    and [`arming`] turns it into marks and a baseline (its rooms: a unit's paths and
//!    mounts, the baseline, the policy in force, unit records and re-arming, the mount
//!    watcher), under the policy of [`config`] (the configuration file's schema).
//! 2. [`registry`]: plans the marks for a unit (filesystem mark where every mount of the
//!    filesystem lies inside the unit, mount mark elsewhere, never the host root) and maps
//!    file identities back to units.
//! 3. [`baseline`]: the per-image baseline: snapshot (walk + parallel hash), the on-disk
//!    format, the atomic, verified store.
//! 4. [`kernel`]: the only `unsafe`: fanotify group, marks, pending permission events that
//!    answer on drop, `statx`, `/proc` and mount table readers, the BPF mapping gate; what
//!    the engine asks of an exec'ing task goes through the [`kernel::TaskProbe`] trait.
//!    [`escape`] writes paths (bytes) losslessly for JSON and logs.
//! 5. [`verdict`]: the verdict cache (identity → verdict, invalidated by content changes)
//!    and the rule book: [`verdict::judge`], a pure function from plain facts (mode,
//!    content, loader evidence, filesystem) to the answer, the reason and the effects.
//! 6. [`engine`]: the event loop and hot path (read a batch → attribute to a unit → cache
//!    → gather facts → judge → answer → audit); each concern an owner of its state: the
//!    hash pool, the mapping gate's entries, the loader rule's bounded wait, the commands.
//! 7. [`audit`]: versioned JSON-lines records for deny / would-deny (each naming its rule
//!    and evidence), written off the event thread; [`tune`] turns audit records into allow
//!    entries.
//! 8. [`daemon`]: the composition root: it takes the fanotify group (from [`service`]'s fd
//!    store, or handed over by a predecessor through [`handover`]), starts the engine,
//!    the audit writer, the armer, the socket and [`metrics`], and maps the wire to the
//!    owners' types. [`supervise`] keeps the group across a crash where no service
//!    manager runs; [`doctor`] checks a node; `robustness` holds the failure-injection
//!    tests. [`settings`] resolves flags, the configuration file and the defaults (in one
//!    place); [`cli`] is the command line.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod arming;
pub mod audit;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod escape;
pub mod handover;
pub mod ipc;
pub mod kernel;
pub mod metrics;
pub mod registry;
mod robustness;
pub mod runtime;
pub mod service;
pub mod settings;
pub mod supervise;
pub mod tune;
pub mod verdict;

/// Default path of the daemon's socket.
pub const DEFAULT_SOCKET: &str = "/run/driftlock/driftlock.sock";
/// Default state directory (baselines, armed units).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/driftlock";

/// Protection mode of a unit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny execs whose content is not in the baseline.
    Enforce,
    /// Allow everything, record what enforce mode would deny.
    Audit,
}

/// Whether a container's own `driftlock.io/mode` annotation (or Docker label) may choose
/// its mode. Whoever creates a pod writes its annotations: a tenant whose workload was
/// hijacked, or who wants to run a miner, would annotate it `audit`. The operator's rules
/// (image, namespace, default) are the policy; annotations are ignored unless the operator
/// says otherwise.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum AnnotationPolicy {
    /// Annotations never change a mode (the default).
    #[default]
    Ignore,
    /// An annotation may make a container stricter (`enforce` where the rules say audit),
    /// never weaker.
    StricterOnly,
    /// An annotation wins over the rules, either way (a cluster whose pod authors are
    /// trusted as much as its operators).
    Any,
}

impl AnnotationPolicy {
    /// The annotated mode this policy lets count.
    pub fn admit(self, annotated: Option<Mode>) -> Option<Mode> {
        match self {
            AnnotationPolicy::Ignore => None,
            AnnotationPolicy::StricterOnly => annotated.filter(|m| *m == Mode::Enforce),
            AnnotationPolicy::Any => annotated,
        }
    }
}

/// Where a container's identity (image name, Kubernetes namespace, pod) came from: the
/// rules it selects are only as good as that source. Records carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The kubelet's CRI annotations, on a container of containerd's CRI (`k8s.io`) or of
    /// CRI-O: written by the kubelet, not by the pod.
    Kubelet,
    /// Docker's own record of the container (`config.v2.json`).
    Docker,
    /// Podman's own record of the container (containers-storage `containers.json`).
    Podman,
    /// The container's OCI annotations alone (`ctr run --annotation`): whoever created the
    /// container wrote them; they name an image, never a namespace.
    Annotations,
    /// The operator's `driftlock arm` flags.
    Operator,
}

impl std::fmt::Display for AnnotationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnnotationPolicy::Ignore => "ignore",
            AnnotationPolicy::StricterOnly => "stricter-only",
            AnnotationPolicy::Any => "any",
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

#[cfg(test)]
mod annotation_policy_tests {
    use super::*;

    #[test]
    fn only_what_the_policy_admits_counts() {
        use AnnotationPolicy::*;
        for asked in [None, Some(Mode::Audit), Some(Mode::Enforce)] {
            assert_eq!(Ignore.admit(asked), None);
            assert_eq!(Any.admit(asked), asked);
        }
        assert_eq!(StricterOnly.admit(Some(Mode::Audit)), None, "never weaker");
        assert_eq!(StricterOnly.admit(Some(Mode::Enforce)), Some(Mode::Enforce));
        assert_eq!(AnnotationPolicy::default(), Ignore);
        let parsed: AnnotationPolicy = toml::from_str::<
            std::collections::BTreeMap<String, AnnotationPolicy>,
        >("a = \"stricter-only\"")
        .unwrap()["a"];
        assert_eq!(parsed, StricterOnly);
        assert_eq!(StricterOnly.to_string(), "stricter-only");
    }
}
