//! The replies of protocol version 1, owned by the protocol: the engine's and registry's
//! own structs may change shape freely, while these change only with the protocol (their
//! JSON is pinned by tests). Paths are in the lossless escaped form, as in requests.

use serde::{Deserialize, Serialize};

use crate::Mode;
use crate::baseline::store::Provenance;
use crate::engine::{EngineStats, EngineStatus, Explanation};
use crate::escape::escape_bytes;
use crate::kernel::MarkKind;
use crate::registry::{PlannedMark, UnitStatus};
use crate::verdict::Verdict;

/// A mark placed for a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkReply {
    /// Mount point in the daemon's namespace (escaped).
    pub path: String,
    /// Filesystem or mount mark.
    pub kind: MarkKind,
    /// Device of the filesystem.
    pub dev: u64,
    /// Mount id.
    pub mnt_id: u64,
    /// Filesystem type.
    pub fstype: String,
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

/// The result of a successful `arm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
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
    pub marks: Vec<MarkReply>,
}

/// A unit's exec counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersReply {
    /// Execs allowed.
    pub allowed: u64,
    /// Execs denied.
    pub denied: u64,
    /// Execs that enforce mode would have denied (audit mode).
    pub would_deny: u64,
    /// Files hashed at exec time.
    pub hashed: u64,
    /// Decisions made by policy because hashing exceeded its time budget.
    pub hash_timeouts: u64,
}

/// A unit's verdict-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReply {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that needed hashing.
    pub misses: u64,
    /// Entries dropped because the file changed.
    pub invalidations: u64,
    /// Findings not stored because they were racily clean.
    pub racy_skips: u64,
}

/// The last deny (or would-deny) of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDenyReply {
    /// When (RFC 3339).
    pub time: String,
    /// What (escaped path).
    pub path: Option<String>,
    /// Verdict.
    pub verdict: Verdict,
}

/// One armed unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitReply {
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
    pub marks: Vec<MarkReply>,
    /// Exec counters.
    pub counters: CountersReply,
    /// Cache counters.
    pub cache: CacheReply,
    /// Cache entries.
    pub cache_entries: usize,
    /// The last deny or would-deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deny: Option<LastDenyReply>,
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
        }
    }
}

/// Whole-daemon counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Events read.
    pub events: u64,
    /// Permission events answered.
    pub permission_events: u64,
    /// Exec notifications (audit mode).
    pub exec_notices: u64,
    /// Open permission events (script control).
    pub open_events: u64,
    /// Close-after-write notifications.
    pub close_writes: u64,
    /// Queue overflows (every cache was flushed).
    pub overflows: u64,
    /// Events on no armed unit; allowed.
    pub unattributed: u64,
    /// Failures to answer.
    pub respond_errors: u64,
    /// Events whose file could not be stat'ed.
    pub stat_errors: u64,
    /// Permission events answered by drop instead of an explicit decision.
    pub unanswered_drops: u64,
    /// Records queued for the audit writer.
    pub records: u64,
    /// Bytes hashed at exec time.
    pub hashed_bytes: u64,
    /// Time spent hashing at exec time, seconds.
    pub hash_seconds: f64,
    /// Decision latencies: counts per bucket of [`crate::engine::LATENCY_BUCKETS`] (the
    /// last is +Inf).
    pub latency_buckets: Vec<u64>,
    /// Sum of decision latencies, seconds.
    pub latency_seconds: f64,
    /// Files on immutable filesystems whose later execs the kernel allows itself.
    #[serde(default)]
    pub kernel_allowed_files: u64,
    /// Denials (enforce mode) by reason.
    #[serde(default)]
    pub denied_by_reason: std::collections::BTreeMap<String, u64>,
    /// Would-denials (audit mode) by reason.
    #[serde(default)]
    pub would_deny_by_reason: std::collections::BTreeMap<String, u64>,
    /// Loader execs whose thread was asked what it executes.
    #[serde(default)]
    pub loader_checks: u64,
    /// Looks at a loader exec's thread that found it not yet blocked.
    #[serde(default)]
    pub loader_not_blocked_looks: u64,
    /// Loader checks that waited off the event path for their thread.
    #[serde(default)]
    pub loader_waits: u64,
    /// Longest wait of one loader check, microseconds.
    #[serde(default)]
    pub loader_wait_max_us: u64,
    /// Loader checks whose thread was gone.
    #[serde(default)]
    pub loader_thread_gone: u64,
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
        }
    }
}

/// The daemon's state (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Armed units, by id.
    pub units: Vec<UnitReply>,
    /// Counters.
    pub stats: StatsReply,
    /// Files being hashed now.
    pub in_flight: usize,
}

impl From<&EngineStatus> for StatusReply {
    fn from(s: &EngineStatus) -> Self {
        StatusReply {
            units: s.units.iter().map(UnitReply::from).collect(),
            stats: StatsReply::from(&s.stats),
            in_flight: s.in_flight,
        }
    }
}

/// Why a file would or would not run in a unit (`explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReply {
    /// Unit.
    pub unit: String,
    /// Unit mode.
    pub mode: Mode,
    /// Path as asked (escaped).
    pub path: String,
    /// SHA-256 (hex).
    pub sha256: Option<String>,
    /// BLAKE3 (hex).
    pub blake3: String,
    /// Size.
    pub size: u64,
    /// The file is on a filesystem or mount the unit has marked.
    pub covered: bool,
    /// Paths in the image with this content (empty: not in the baseline).
    pub baseline_paths: Vec<String>,
    /// An operator allow entry admits this content.
    pub allowed_by_entry: bool,
    /// This content is one of the image's dynamic loaders.
    pub loader: bool,
    /// The verdict an exec of it would get.
    pub verdict: Verdict,
    /// In words.
    pub why: String,
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
            why: e.why.clone(),
        }
    }
}

/// A reply payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// After arm.
    Armed(ArmResult),
    /// After disarm: the unit's final state.
    Disarmed(UnitReply),
    /// After status.
    Status(StatusReply),
    /// After explain.
    Explained(ExplainReply),
    /// After ping.
    Pong {
        /// Daemon version.
        version: String,
    },
}

#[cfg(test)]
mod tests {
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
            image_key: Some("k".into()),
            pid: Some(42),
            discover_mounts: true,
            host_rootfs: Some("/run/c1/rootfs".into()),
            image_name: Some("docker.io/library/postgres:16".into()),
            namespace: Some("default".into()),
            pod: Some("db-0".into()),
            container_name: Some("postgres".into()),
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
                path: "/tmp/x".into()
            }),
            json!({"v":1,"op":"explain","id":"c1","path":"/tmp/x"})
        );
        assert_eq!(line(&Request::Ping), json!({"v":1,"op":"ping"}));
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
               "last_deny":{"time":"2026-12-01T00:00:00Z","path":"/tmp/p","verdict":"deny"}})
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
        assert_eq!(ok(&Reply::Disarmed(unit())), unit_json());
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
            ..Default::default()
        };
        stats.denied_by_reason.insert("not-in-baseline".into(), 19);
        stats
            .would_deny_by_reason
            .insert("direct-loader".into(), 20);
        let status = Reply::Status(StatusReply {
            units: vec![unit()],
            stats,
            in_flight: 21,
        });
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
                            "loader_wait_max_us":17,"loader_thread_gone":18},
                   "in_flight":21})
        );
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
        });
        assert_eq!(
            ok(&explained),
            json!({"unit":"c1","mode":"audit","path":"/tmp/x","sha256":"ab","blake3":"cd",
                   "size":5,"covered":true,"baseline_paths":["/bin/x"],"allowed_by_entry":false,
                   "loader":false,"verdict":"allow","why":"in the image"})
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

    #[test]
    fn engine_errors_map_to_codes() {
        use crate::engine::EngineError as E;
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
            kind: MarkKind::Mount,
            dev: 1,
            mnt_id: 2,
            fstype: "tmpfs".into(),
        };
        assert_eq!(MarkReply::from(&m).path, "/run/\\xff\\x0a");
    }
}
