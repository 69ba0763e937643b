//! The wire and the domain: every mapping between the protocol's plain data (`ipc`) and
//! the owners' types (engine, registry, arming) lives here, at the composition root, so
//! the protocol knows nothing of its server and the owners nothing of the wire.

use crate::arming::{
    ArmError, Armed, ExplainError, Identity, ModeError, ModeSwitch, Selector, UnitRequest,
};
use crate::engine::{EngineError, EngineStats, EngineStatus, Explanation};
use crate::escape::escape_bytes;
use crate::ipc::{
    ArmRequest, ArmResult, CacheReply, ContainerIdentity, CountersReply, ErrorCode, ExplainReply,
    LastDenyReply, MarkReply, ModeChange, StatsReply, StatusReply, UnitReply, UnitSelector,
};
use crate::registry::{PlannedMark, UnitStatus};

impl From<&EngineError> for ErrorCode {
    fn from(e: &EngineError) -> Self {
        use EngineError as E;
        match e {
            E::DuplicateId(_) | E::Conflict { .. } => ErrorCode::Conflict,
            E::UnknownId(_) => ErrorCode::NotFound,
            E::Timeout(_) => ErrorCode::Busy,
            E::Mark(_) | E::Stopped => ErrorCode::Internal,
        }
    }
}

impl From<&PlannedMark> for MarkReply {
    fn from(m: &PlannedMark) -> Self {
        use std::os::unix::ffi::OsStrExt;
        MarkReply {
            path: escape_bytes(m.path.as_os_str().as_bytes()),
            kind: m.kind,
            dev: m.dev,
            mnt_id: m.mnt_id,
            fstype: m.fstype.clone(),
        }
    }
}

impl From<&UnitStatus> for UnitReply {
    fn from(u: &UnitStatus) -> Self {
        UnitReply {
            id: u.id.clone(),
            image_key: u.image_key.clone(),
            image_name: u.image_name.clone(),
            pid: u.pid,
            mode: u.mode,
            baseline_contents: u.baseline_contents,
            marks: u.marks.iter().map(MarkReply::from).collect(),
            counters: CountersReply {
                allowed: u.counters.allowed,
                denied: u.counters.denied,
                would_deny: u.counters.would_deny,
                hashed: u.counters.hashed,
                hash_timeouts: u.counters.hash_timeouts,
            },
            cache: CacheReply {
                hits: u.cache.hits,
                misses: u.cache.misses,
                invalidations: u.cache.invalidations,
                racy_skips: u.cache.racy_skips,
            },
            cache_entries: u.cache_entries,
            last_deny: u.last_deny.as_ref().map(|d| LastDenyReply {
                time: d.time.clone(),
                path: d.path.clone(),
                verdict: d.verdict,
            }),
            mapping_gate: u.mapping_gate.clone(),
            libraries: u.libraries.clone(),
            user_namespaces: String::new(),
            namespace: u.namespace.clone(),
            pod: u.pod.clone(),
            container_name: u.container_name.clone(),
        }
    }
}

impl From<&EngineStats> for StatsReply {
    fn from(s: &EngineStats) -> Self {
        StatsReply {
            events: s.events,
            permission_events: s.permission_events,
            exec_notices: s.exec_notices,
            open_events: s.open_events,
            close_writes: s.close_writes,
            overflows: s.overflows,
            unattributed: s.unattributed,
            respond_errors: s.respond_errors,
            stat_errors: s.stat_errors,
            unanswered_drops: s.unanswered_drops,
            records: s.records,
            hashed_bytes: s.hashed_bytes,
            hash_seconds: s.hash_seconds,
            latency_buckets: s.latency_buckets.to_vec(),
            latency_seconds: s.latency_seconds,
            kernel_allowed_files: s.kernel_allowed_files,
            denied_by_reason: s.denied_by_reason.clone(),
            would_deny_by_reason: s.would_deny_by_reason.clone(),
            loader_checks: s.loader_checks,
            loader_not_blocked_looks: s.loader_not_blocked_looks,
            loader_waits: s.loader_waits,
            loader_wait_max_us: s.loader_wait_max_us,
            loader_thread_gone: s.loader_thread_gone,
            unattributed_denied: s.unattributed_denied,
            layer_devices: s.layer_devices,
            denied_unhashed: s.denied_unhashed,
            records_suppressed: s.records_suppressed,
            hash_backlogged: s.hash_backlogged,
            hash_backlog_full: s.hash_backlog_full,
            mapping_checked: s.mapping_checked,
            mapping_refused: s.mapping_refused,
            mapping_would_refuse: s.mapping_would_refuse,
            mapping_entries_dropped: s.mapping_entries_dropped,
            mapping_prepared: s.mapping_prepared,
        }
    }
}

impl From<&EngineStatus> for StatusReply {
    fn from(s: &EngineStatus) -> Self {
        StatusReply {
            version: String::new(),
            schema: 0,
            units: s.units.iter().map(UnitReply::from).collect(),
            stats: StatsReply::from(&s.stats),
            in_flight: s.in_flight,
            pid: 0,
            config_reloads: 0,
            config_reload_errors: 0,
            fail_open_containers: 0,
            rearm_pending: Vec::new(),
            mapping_gate: String::new(),
            kernel: String::new(),
            features: Vec::new(),
            metrics: String::new(),
        }
    }
}

impl From<&Explanation> for ExplainReply {
    fn from(e: &Explanation) -> Self {
        ExplainReply {
            unit: e.unit.clone(),
            mode: e.mode,
            path: e.path.clone(),
            sha256: e.sha256.clone(),
            blake3: e.blake3.clone(),
            size: e.size,
            covered: e.covered,
            baseline_paths: e.baseline_paths.clone(),
            allowed_by_entry: e.allowed_by_entry,
            loader: e.loader,
            verdict: e.verdict,
            mapping: e.mapping,
            mapping_why: e.mapping_why.clone(),
            why: e.why.clone(),
            against: e.against.clone(),
        }
    }
}

/// The protocol's error code for an arm that failed.
pub(super) fn arm_error_code(e: &ArmError) -> ErrorCode {
    match e {
        ArmError::BadId(_) | ArmError::BadPath { .. } | ArmError::Plan(_) => ErrorCode::Invalid,
        ArmError::NoProcess(_) | ArmError::Resolve { .. } => ErrorCode::NotFound,
        ArmError::Engine(e) => ErrorCode::from(e),
        ArmError::Stat { .. }
        | ArmError::MountInfo(_)
        | ArmError::Store(_)
        | ArmError::StateDir(_)
        | ArmError::Memfd(_)
        | ArmError::Layers(_)
        | ArmError::BaselineGone { .. } => ErrorCode::Internal,
    }
}

/// The protocol's error code for an explain that failed.
pub(super) fn explain_error_code(e: &ExplainError) -> ErrorCode {
    match e {
        ExplainError::UnknownId(_) => ErrorCode::NotFound,
        ExplainError::BadPath(_) | ExplainError::Candidate(_) => ErrorCode::Invalid,
        ExplainError::Open { source, .. } if *source == nix::Error::ENOENT => ErrorCode::NotFound,
        ExplainError::Open { .. } | ExplainError::Hash { .. } => ErrorCode::Internal,
        ExplainError::Engine(e) => ErrorCode::from(e),
    }
}

/// The protocol's error code for a mode switch that failed.
pub(super) fn mode_error_code(e: &ModeError) -> ErrorCode {
    match e {
        ModeError::NoSelector => ErrorCode::Invalid,
        ModeError::NoMatch(_) | ModeError::Ambiguous { .. } => ErrorCode::NotFound,
        ModeError::Arm(a) => arm_error_code(a),
    }
}

impl From<ArmRequest> for UnitRequest {
    fn from(r: ArmRequest) -> Self {
        UnitRequest {
            id: r.id,
            rootfs: r.rootfs,
            mounts: r.mounts,
            mode: r.mode,
            annotated_mode: r.annotated_mode,
            image_key: r.image_key,
            pid: r.pid,
            discover_mounts: r.discover_mounts,
            host_rootfs: r.host_rootfs,
            image_name: r.image_name,
            namespace: r.namespace,
            pod: r.pod,
            container_name: r.container_name,
            identity_source: r.identity_source,
        }
    }
}

impl From<Armed> for ArmResult {
    fn from(a: Armed) -> Self {
        ArmResult {
            id: a.id,
            mode: a.mode,
            image_key: a.image_key,
            baseline: a.baseline,
            baseline_contents: a.baseline_contents,
            snapshot_skipped: a.snapshot_skipped,
            baseline_ms: a.baseline_ms,
            arm_ms: a.arm_ms,
            memfd_noexec: a.memfd_noexec,
            marks: a.marks.iter().map(MarkReply::from).collect(),
        }
    }
}

impl From<UnitSelector> for Selector {
    fn from(s: UnitSelector) -> Self {
        Selector {
            container: s.container,
            namespace: s.namespace,
            image: s.image,
            all: s.all,
        }
    }
}

impl From<ContainerIdentity> for Identity {
    fn from(i: ContainerIdentity) -> Self {
        Identity {
            image_name: i.image_name,
            namespace: i.namespace,
            annotated_mode: i.annotated_mode,
        }
    }
}

impl From<ModeSwitch> for ModeChange {
    fn from(m: ModeSwitch) -> Self {
        ModeChange {
            id: m.id,
            from: m.from,
            to: m.to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The armer's request is the wire's, field for field: the unit record keeps the one
    /// in the JSON of the other, so a field added to one and not the other fails here.
    #[test]
    fn the_unit_request_is_the_arm_request_in_the_armers_terms() {
        let wire = ArmRequest {
            id: "c1".into(),
            rootfs: "/run/c1/rootfs".into(),
            mounts: vec!["/run/c1/rootfs/tmp".into()],
            mode: Some(crate::Mode::Audit),
            annotated_mode: Some(crate::Mode::Enforce),
            image_key: Some("k".into()),
            pid: Some(7),
            discover_mounts: true,
            host_rootfs: Some("/run/c1/rootfs".into()),
            image_name: Some("img".into()),
            namespace: Some("ns".into()),
            pod: Some("p".into()),
            container_name: Some("c".into()),
            identity_source: Some(crate::IdentitySource::Kubelet),
        };
        let domain = UnitRequest::from(wire.clone());
        assert_eq!(
            serde_json::to_value(&domain).unwrap(),
            serde_json::to_value(&wire).unwrap()
        );
        let back: ArmRequest =
            serde_json::from_value(serde_json::to_value(&domain).unwrap()).unwrap();
        assert_eq!(back, wire);
    }

    #[test]
    fn engine_errors_map_to_codes() {
        use EngineError as E;
        let code = |e: E| ErrorCode::from(&e);
        assert_eq!(code(E::DuplicateId("x".into())), ErrorCode::Conflict);
        assert_eq!(code(E::UnknownId("x".into())), ErrorCode::NotFound);
        assert_eq!(
            code(E::Timeout(std::time::Duration::from_secs(1))),
            ErrorCode::Busy
        );
        assert_eq!(code(E::Stopped), ErrorCode::Internal);
    }

    #[test]
    fn a_mark_path_that_is_not_utf8_is_escaped() {
        use std::os::unix::ffi::OsStrExt;
        let m = PlannedMark {
            path: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/run/\xff\n")),
            kind: crate::kernel::MarkKind::Mount,
            dev: 1,
            mnt_id: 2,
            fstype: "tmpfs".into(),
            sb_dev: 0,
        };
        assert_eq!(MarkReply::from(&m).path, "/run/\\xff\\x0a");
    }
}
