//! Protocol version 1, pinned: a renamed or retyped field fails here, not in a client
//! of another version.

use super::*;
use crate::ipc::{ArmRequest, ErrorCode, Request, Response, encode_request};
use serde_json::json;

fn line(req: &Request) -> serde_json::Value {
    serde_json::from_slice(&encode_request(req)).unwrap()
}

#[test]
fn every_request_is_pinned() {
    let arm = Request::Arm(Box::new(ArmRequest {
        id: "c1".into(),
        rootfs: "/run/c1/rootfs".into(),
        mounts: vec!["/run/c1/rootfs/tmp".into()],
        mode: Some(Mode::Audit),
        annotated_mode: None,
        image_key: Some("k".into()),
        pid: Some(42),
        discover_mounts: true,
        host_rootfs: Some("/run/c1/rootfs".into()),
        image_name: Some("docker.io/library/postgres:16".into()),
        namespace: Some("default".into()),
        pod: Some("db-0".into()),
        container_name: Some("postgres".into()),
        identity_source: None,
    }));
    assert_eq!(
        line(&arm),
        json!({"v":1,"op":"arm","id":"c1","rootfs":"/run/c1/rootfs",
               "mounts":["/run/c1/rootfs/tmp"],"mode":"audit","image_key":"k","pid":42,
               "discover_mounts":true,"host_rootfs":"/run/c1/rootfs",
               "image_name":"docker.io/library/postgres:16","namespace":"default",
               "pod":"db-0","container_name":"postgres"})
    );
    assert_eq!(
        line(&Request::Disarm { id: "c1".into() }),
        json!({"v":1,"op":"disarm","id":"c1"})
    );
    assert_eq!(line(&Request::Status), json!({"v":1,"op":"status"}));
    assert_eq!(
        line(&Request::Explain {
            id: "c1".into(),
            path: "/tmp/x".into(),
            against: None,
        }),
        json!({"v":1,"op":"explain","id":"c1","path":"/tmp/x"})
    );
    assert_eq!(line(&Request::Ping), json!({"v":1,"op":"ping"}));
    assert_eq!(
        line(&Request::ModeFor {
            identity: crate::ipc::ContainerIdentity {
                image_name: Some("img".into()),
                namespace: Some("web".into()),
                annotated_mode: None,
                source: None,
            }
        }),
        json!({"v":1,"op":"modefor","image_name":"img","namespace":"web"})
    );
    assert_eq!(
        ok(&Reply::ModeFor {
            mode_for: Mode::Audit
        }),
        json!({"mode_for":"audit"})
    );
}

fn mark() -> MarkReply {
    MarkReply {
        path: "/run/c1/rootfs".into(),
        kind: MarkKind::Filesystem,
        dev: 51,
        mnt_id: 7,
        fstype: "overlay".into(),
    }
}

fn unit() -> UnitReply {
    UnitReply {
        id: "c1".into(),
        image_key: "k".into(),
        image_name: Some("img".into()),
        pid: Some(42),
        mode: Mode::Enforce,
        baseline_contents: 3,
        marks: vec![mark()],
        counters: CountersReply {
            allowed: 1,
            denied: 2,
            would_deny: 3,
            hashed: 4,
            hash_timeouts: 5,
        },
        cache: CacheReply {
            hits: 6,
            misses: 7,
            invalidations: 8,
            racy_skips: 9,
        },
        cache_entries: 10,
        last_deny: Some(LastDenyReply {
            time: "2026-12-01T00:00:00Z".into(),
            path: Some("/tmp/p".into()),
            verdict: Verdict::Deny,
        }),
        mapping_gate: None,
        libraries: String::new(),
        user_namespaces: String::new(),
        namespace: Some("shop".into()),
        pod: Some("checkout-7d9f".into()),
        container_name: Some("web".into()),
    }
}

const MARK: &str =
    r#"{"path":"/run/c1/rootfs","kind":"filesystem","dev":51,"mnt_id":7,"fstype":"overlay"}"#;

fn unit_json() -> serde_json::Value {
    json!({"id":"c1","image_key":"k","image_name":"img","pid":42,"mode":"enforce",
           "baseline_contents":3,"marks":[serde_json::from_str::<serde_json::Value>(MARK).unwrap()],
           "counters":{"allowed":1,"denied":2,"would_deny":3,"hashed":4,"hash_timeouts":5},
           "cache":{"hits":6,"misses":7,"invalidations":8,"racy_skips":9},
           "cache_entries":10,
           "last_deny":{"time":"2026-12-01T00:00:00Z","path":"/tmp/p","verdict":"deny"},
           "namespace":"shop","pod":"checkout-7d9f","container_name":"web"})
}

fn ok(reply: &Reply) -> serde_json::Value {
    let v = serde_json::to_value(Response::ok(reply)).unwrap();
    assert_eq!(v["v"], 1);
    assert_eq!(v["ok"], true);
    assert!(v.get("code").is_none() && v.get("error").is_none());
    // And it reads back as the same reply.
    let back: Reply = serde_json::from_value(v["result"].clone()).unwrap();
    assert_eq!(&back, reply);
    v["result"].clone()
}

#[test]
fn the_status_reply_is_pinned() {
    let mut stats = StatsReply {
        events: 1,
        permission_events: 2,
        exec_notices: 3,
        open_events: 4,
        close_writes: 5,
        overflows: 6,
        unattributed: 7,
        respond_errors: 8,
        stat_errors: 9,
        unanswered_drops: 10,
        records: 11,
        hashed_bytes: 12,
        hash_seconds: 0.5,
        latency_buckets: vec![1, 2],
        latency_seconds: 0.25,
        kernel_allowed_files: 13,
        loader_checks: 14,
        loader_not_blocked_looks: 15,
        loader_waits: 16,
        loader_wait_max_us: 17,
        loader_thread_gone: 18,
        unattributed_denied: 22,
        layer_devices: 23,
        denied_unhashed: 26,
        records_suppressed: 28,
        hash_backlogged: 29,
        hash_backlog_full: 30,
        mapping_checked: 31,
        mapping_refused: 32,
        mapping_would_refuse: 33,
        mapping_entries_dropped: 34,
        mapping_prepared: 35,
        ..Default::default()
    };
    stats.denied_by_reason.insert("not-in-baseline".into(), 19);
    stats
        .would_deny_by_reason
        .insert("direct-loader".into(), 20);
    let status = Reply::Status(Box::new(StatusReply {
        version: String::new(),
        schema: 0,
        units: vec![unit()],
        stats,
        in_flight: 21,
        pid: 36,
        config_reloads: 24,
        config_reload_errors: 25,
        fail_open_containers: 37,
        rearm_pending: vec![PendingReply {
            id: "c9".into(),
            attempts: 27,
            error: "e".into(),
        }],
        mapping_gate: "off".into(),
        kernel: "6.1.0-27-amd64".into(),
        features: vec![crate::kernel::features::FeatureState {
            name: "memfd_noexec".into(),
            available: false,
            core: false,
            detail: "d".into(),
            not_covered: "n".into(),
        }],
        metrics: String::new(),
    }));
    assert_eq!(
        ok(&status),
        json!({"units":[unit_json()],
               "stats":{"events":1,"permission_events":2,"exec_notices":3,"open_events":4,
                        "close_writes":5,"overflows":6,"unattributed":7,"respond_errors":8,
                        "stat_errors":9,"unanswered_drops":10,"records":11,"hashed_bytes":12,
                        "hash_seconds":0.5,"latency_buckets":[1,2],"latency_seconds":0.25,
                        "kernel_allowed_files":13,
                        "denied_by_reason":{"not-in-baseline":19},
                        "would_deny_by_reason":{"direct-loader":20},
                        "loader_checks":14,"loader_not_blocked_looks":15,"loader_waits":16,
                        "loader_wait_max_us":17,"loader_thread_gone":18,
                        "unattributed_denied":22,"layer_devices":23,
                        "denied_unhashed":26,"records_suppressed":28,
                        "hash_backlogged":29,"hash_backlog_full":30,
                        "mapping_checked":31,"mapping_refused":32,"mapping_would_refuse":33,
                        "mapping_entries_dropped":34,"mapping_prepared":35},
               "in_flight":21,"pid":36,"config_reloads":24,"config_reload_errors":25,"fail_open_containers":37,
               "rearm_pending":[{"id":"c9","attempts":27,"error":"e"}],
               "mapping_gate":"off","kernel":"6.1.0-27-amd64",
               "features":[{"name":"memfd_noexec","available":false,"core":false,
                            "detail":"d","not_covered":"n"}]})
    );
}

#[test]
fn every_reply_is_pinned() {
    let armed = Reply::Armed(ArmResult {
        id: "c1".into(),
        mode: Mode::Enforce,
        image_key: "k".into(),
        baseline: Provenance::Stored,
        baseline_contents: 3,
        snapshot_skipped: 0,
        baseline_ms: 1.5,
        arm_ms: 2.5,
        memfd_noexec: true,
        marks: vec![mark()],
    });
    assert_eq!(
        ok(&armed),
        json!({"id":"c1","mode":"enforce","image_key":"k","baseline":"stored",
               "baseline_contents":3,"snapshot_skipped":0,"baseline_ms":1.5,"arm_ms":2.5,
               "memfd_noexec":true,
               "marks":[serde_json::from_str::<serde_json::Value>(MARK).unwrap()]})
    );
    assert_eq!(ok(&Reply::Disarmed(Box::new(unit()))), unit_json());
    let explained = Reply::Explained(ExplainReply {
        unit: "c1".into(),
        mode: Mode::Audit,
        path: "/tmp/x".into(),
        sha256: Some("ab".into()),
        blake3: "cd".into(),
        size: 5,
        covered: true,
        baseline_paths: vec!["/bin/x".into()],
        allowed_by_entry: false,
        loader: false,
        verdict: Verdict::Allow,
        why: "in the image".into(),
        mapping: Some(Verdict::WouldDeny),
        mapping_why: "not admitted".into(),
        against: None,
    });
    assert_eq!(
        ok(&explained),
        json!({"unit":"c1","mode":"audit","path":"/tmp/x","sha256":"ab","blake3":"cd",
               "size":5,"covered":true,"baseline_paths":["/bin/x"],"allowed_by_entry":false,
               "loader":false,"verdict":"allow","why":"in the image",
               "mapping":"would-deny","mapping_why":"not admitted"})
    );
    assert_eq!(
        ok(&Reply::Pong {
            version: "0.1.0".into()
        }),
        json!({"version":"0.1.0"})
    );
}

#[test]
fn failures_carry_a_code_and_old_replies_without_one_still_read() {
    for (code, name) in [
        (ErrorCode::Busy, "busy"),
        (ErrorCode::Conflict, "conflict"),
        (ErrorCode::NotFound, "not-found"),
        (ErrorCode::Invalid, "invalid"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::Internal, "internal"),
    ] {
        assert_eq!(
            serde_json::to_value(Response::err(code, "why")).unwrap(),
            json!({"v":1,"ok":false,"code":name,"error":"why"})
        );
        assert_eq!(code.is_retryable(), name == "busy");
    }
    let old: Response =
        serde_json::from_str(r#"{"v":1,"ok":false,"error":"daemon busy"}"#).unwrap();
    assert_eq!(old.code, None);
}
