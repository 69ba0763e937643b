//! Engine statistics: counters, the decision-latency histogram, denials by reason.

use super::*;

/// Whole-engine counters.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
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
    /// Events on no armed unit (a unit disarmed meanwhile); allowed.
    pub unattributed: u64,
    /// Failures to answer (the kernel refused the response).
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
    /// Permission events answered, by decision latency (read → answer): counts per bucket
    /// of [`LATENCY_BUCKETS`] (the last is +Inf).
    pub latency_buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of decision latencies, seconds.
    pub latency_seconds: f64,
    /// Files on immutable filesystems whose later execs the kernel now allows without an
    /// event (inode ignore marks placed).
    #[serde(default)]
    pub kernel_allowed_files: u64,
    /// Denials (enforce mode) by reason (`not-in-baseline`, `direct-loader`, ...).
    #[serde(default)]
    pub denied_by_reason: std::collections::BTreeMap<String, u64>,
    /// Would-denials (audit mode) by reason.
    #[serde(default)]
    pub would_deny_by_reason: std::collections::BTreeMap<String, u64>,
    /// Loader execs whose thread was asked what it executes (the loader rule).
    #[serde(default)]
    pub loader_checks: u64,
    /// Looks at a loader exec's thread that found it not yet blocked (looked again).
    #[serde(default)]
    pub loader_not_blocked_looks: u64,
    /// Loader checks that had to wait for their thread past the first looks.
    #[serde(default)]
    pub loader_waits: u64,
    /// Longest wait of one loader check for its thread to be blocked, microseconds.
    #[serde(default)]
    pub loader_wait_max_us: u64,
    /// Loader checks whose thread was gone (its exec could not go on; allowed).
    #[serde(default)]
    pub loader_thread_gone: u64,
    /// Permission events on a marked filesystem that no unit claims, denied.
    #[serde(default)]
    pub unattributed_denied: u64,
    /// Overlay layer devices attributed to their unit by mount (layers on different
    /// filesystems).
    #[serde(default)]
    pub layer_devices: u64,
    /// Files judged without hashing: no executable of their image and no allow entry has
    /// their size.
    #[serde(default)]
    pub denied_unhashed: u64,
    /// Records a unit's budget held back (counted in "suppressed" summaries).
    #[serde(default)]
    pub records_suppressed: u64,
    /// Misses that waited in their unit's backlog (the unit held its share of the pool).
    #[serde(default)]
    pub hash_backlogged: u64,
    /// Misses denied at once because their unit's backlog was full.
    #[serde(default)]
    pub hash_backlog_full: u64,
    /// Executable mappings of armed files the mapping gate checked (BPF LSM).
    #[serde(default)]
    pub mapping_checked: u64,
    /// Executable mappings and loader execs the gate refused (enforce).
    #[serde(default)]
    pub mapping_refused: u64,
    /// Executable mappings the gate would have refused (audit).
    #[serde(default)]
    pub mapping_would_refuse: u64,
    /// Allowed files the gate dropped because they were opened for writing or truncated.
    #[serde(default)]
    pub mapping_entries_dropped: u64,
    /// Gate entries a unit gave up because it made more than its budget while running.
    #[serde(default)]
    pub mapping_budget_evictions: u64,
    /// Gate refusals no armed unit could be found for (not recorded).
    #[serde(default)]
    pub mapping_unattributed: u64,
    /// Files just written whose content was judged allowed and made mappable before any
    /// mapping (copies of image libraries, content named by allow entries).
    #[serde(default)]
    pub mapping_prepared: u64,
    /// Counters of units disarmed (or dropped) since the daemon started: the node-wide
    /// totals are these plus the armed units', so they never fall when a container exits.
    #[serde(default)]
    pub retired: RetiredCounters,
}

/// What units that are gone had counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetiredCounters {
    /// Execs allowed.
    pub allowed: u64,
    /// Execs denied.
    pub denied: u64,
    /// Execs that would have been denied (audit).
    pub would_deny: u64,
    /// Verdict cache hits.
    pub cache_hits: u64,
    /// Verdict cache misses.
    pub cache_misses: u64,
}

impl RetiredCounters {
    /// Adds a unit that is going away.
    pub fn add(&mut self, unit: &crate::registry::Unit) {
        let cache = unit.cache.stats();
        self.allowed += unit.counters.allowed;
        self.denied += unit.counters.denied;
        self.would_deny += unit.counters.would_deny;
        self.cache_hits += cache.hits;
        self.cache_misses += cache.misses;
    }
}

/// Upper bounds of the decision-latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.001, 0.01, 0.1, 1.0, 5.0,
];

/// A snapshot of the engine for `driftlock status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineStatus {
    /// Armed units.
    pub units: Vec<UnitStatus>,
    /// Counters.
    pub stats: EngineStats,
    /// Files being hashed now.
    pub in_flight: usize,
}

impl EngineStats {
    /// Counts a deny or would-deny under its reason.
    pub(super) fn count_denial(&mut self, verdict: Verdict, reason: Reason) {
        let by_reason = match verdict {
            Verdict::Deny => &mut self.denied_by_reason,
            Verdict::WouldDeny => &mut self.would_deny_by_reason,
            Verdict::Allow => return,
        };
        match by_reason.get_mut(reason.as_str()) {
            Some(n) => *n += 1,
            None => {
                by_reason.insert(reason.as_str().to_string(), 1);
            }
        }
    }
}

pub(super) fn bump(c: &mut UnitCounters, v: Verdict) {
    match v {
        Verdict::Allow => c.allowed += 1,
        Verdict::Deny => c.denied += 1,
        Verdict::WouldDeny => c.would_deny += 1,
    }
}

impl<G: Gate> Engine<G> {
    pub(super) fn observe_latency(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.stats.latency_buckets.get_mut(bucket) {
            *b += 1;
        }
        self.stats.latency_seconds += secs;
    }
}
