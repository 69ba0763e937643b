//! The replies of protocol version 1, owned by the protocol: the engine's and registry's
//! own structs may change shape freely, while these change only with the protocol (their
//! JSON is pinned by tests). Paths are in the lossless escaped form, as in requests.

use serde::{Deserialize, Serialize};

use crate::Mode;
use crate::baseline::store::Provenance;
use crate::kernel::MarkKind;
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
    /// What the mapping gate judges of this unit: its filesystems, and those it does not
    /// (a volume marked by mount); absent where no gate runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_gate: Option<String>,
    /// What judges a library dropped in this unit (`mapping gate`, `library control`, both,
    /// or `none`); empty from an older daemon.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub libraries: String,
    /// Whether the container may make its own user namespaces (whose copies of its mounts
    /// carry no mark), read from its first process; empty when not known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_namespaces: String,
    /// The Kubernetes namespace of its pod, if it is a pod's container (from the CRI's
    /// annotations; absent from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its pod's name, if it is a pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Its name in the pod, if it is a pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
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
    /// Permission events on a marked filesystem that no unit claims, denied.
    #[serde(default)]
    pub unattributed_denied: u64,
    /// Overlay layer devices attributed to their unit by mount.
    #[serde(default)]
    pub layer_devices: u64,
    /// Files judged without hashing (no executable of their image and no allow entry has
    /// their size).
    #[serde(default)]
    pub denied_unhashed: u64,
    /// Records a unit's budget held back (each unit has a budget; summaries say how many).
    #[serde(default)]
    pub records_suppressed: u64,
    /// Misses that waited in their unit's backlog (the unit held its share of the pool).
    #[serde(default)]
    pub hash_backlogged: u64,
    /// Misses denied at once because their unit's backlog was full.
    #[serde(default)]
    pub hash_backlog_full: u64,
    /// Executable mappings of armed files the mapping gate checked.
    #[serde(default)]
    pub mapping_checked: u64,
    /// Mappings and loader execs the gate refused.
    #[serde(default)]
    pub mapping_refused: u64,
    /// Mappings the gate would have refused (audit).
    #[serde(default)]
    pub mapping_would_refuse: u64,
    /// Allowed files dropped from the gate by a write-open or truncate.
    #[serde(default)]
    pub mapping_entries_dropped: u64,
    /// Files just written made mappable because their content is allowed.
    #[serde(default)]
    pub mapping_prepared: u64,
}

/// The daemon's state (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon's version (empty from a daemon before it was reported).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The version of this reply's layout: fields are only added within one; a removal or
    /// a change of meaning raises it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema: u32,
    /// Armed units, by id.
    pub units: Vec<UnitReply>,
    /// Counters.
    pub stats: StatsReply,
    /// Files being hashed now.
    pub in_flight: usize,
    /// The daemon's pid (0 from a daemon before it was reported): a new pod's readiness
    /// probe checks that the daemon answering is its own.
    #[serde(default)]
    pub pid: u32,
    /// Configuration reloads applied (SIGHUP, or the watched file changed).
    #[serde(default)]
    pub config_reloads: u64,
    /// Configuration reloads refused (the running configuration was kept).
    #[serde(default)]
    pub config_reload_errors: u64,
    /// Containers that started unprotected (fail-open: their hook could not reach this
    /// daemon), counted since it started.
    #[serde(default)]
    pub fail_open_containers: u64,
    /// Recorded units whose re-arm after a restart failed: kept and retried (their
    /// containers run unprotected, or with every exec denied if the daemon kept its
    /// marks, until one succeeds).
    #[serde(default)]
    pub rearm_pending: Vec<PendingReply>,
    /// The BPF LSM mapping gate: `active (loaded)`, `active (adopted ...)`, `unavailable:
    /// why`, or `off`.
    #[serde(default)]
    pub mapping_gate: String,
    /// The kernel release the daemon runs on (empty from an older daemon).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// What the kernel offers, probed at start: a missing feature is a degradation, said
    /// here with what it leaves uncovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<crate::kernel::features::FeatureState>,
    /// The metrics endpoint: serving, or why not (empty when metrics are off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics: String,
}

/// A unit whose re-arm is being retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReply {
    /// Unit id.
    pub id: String,
    /// Attempts so far.
    pub attempts: u64,
    /// The last attempt's error.
    pub error: String,
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
    /// The verdict an executable mapping of it (`dlopen`, `LD_PRELOAD`) would get from the
    /// mapping gate; absent where the gate does not judge it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Verdict>,
    /// The mapping verdict in words (also why there is none).
    #[serde(default)]
    pub mapping_why: String,
    /// The candidate configuration answered against (escaped path), if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
}

/// A reply payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// After arm.
    Armed(ArmResult),
    /// After disarm: the unit's final state.
    Disarmed(Box<UnitReply>),
    /// After status.
    Status(Box<StatusReply>),
    /// After explain.
    Explained(ExplainReply),
    /// After hand-over: the fanotify group came with this reply. Before [`Reply::Pong`]:
    /// untagged, the first variant whose fields are present wins.
    HandedOver {
        /// The daemon that handed over.
        pid: u32,
        /// Its version.
        version: String,
        /// True when its own successor died holding the group: that successor may have read
        /// events it never answered, which the taker must answer.
        relayed: bool,
    },
    /// After ping.
    Pong {
        /// Daemon version.
        version: String,
    },
    /// After mode-for.
    ModeFor {
        /// The mode a container of that identity would be armed in.
        mode_for: Mode,
    },
    /// After set-mode: each selected unit, with the mode it had.
    ModeSet {
        /// The units.
        mode_changes: Vec<ModeChange>,
    },
}

/// One unit's mode change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// Unit id.
    pub id: String,
    /// The mode it had.
    pub from: Mode,
    /// The mode it has now.
    pub to: Mode,
}

#[cfg(test)]
#[path = "replies_tests.rs"]
mod tests;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The layout version of [`StatusReply`] this build sends.
pub const STATUS_SCHEMA: u32 = 1;
