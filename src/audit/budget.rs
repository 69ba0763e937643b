//! Budgets: how many bytes a record may hash, how many records a unit may write.

use super::*;

/// Largest file the audit writer hashes for a record's SHA-256 and evidence.
pub const MAX_RECORD_HASH: u64 = 256 << 20;

/// What one unit may have the writer hash for its records: [`RecordHashBudget::BURST`]
/// bytes, refilled at [`RecordHashBudget::PER_SECOND`]. Past it, records go out without a
/// SHA-256 (the BLAKE3 the verdict was made on is kept), so a container that has large
/// files denied over and over cannot hold the one writer every container's records need.
#[derive(Debug, Default)]
pub struct RecordHashBudget {
    units: std::collections::HashMap<String, (f64, std::time::Instant)>,
}

impl RecordHashBudget {
    /// Bytes a unit may have hashed at once.
    pub const BURST: f64 = 512.0 * 1024.0 * 1024.0;
    /// Bytes per second a unit's budget refills.
    pub const PER_SECOND: f64 = 64.0 * 1024.0 * 1024.0;

    /// True (and the bytes taken) if `unit` may have `bytes` hashed now.
    pub fn take(&mut self, unit: &str, bytes: u64, now: std::time::Instant) -> bool {
        if self.units.len() > 4096 {
            // Units come and go: forget those whose budget is full again.
            self.units.retain(|_, (left, at)| {
                *left + now.saturating_duration_since(*at).as_secs_f64() * Self::PER_SECOND
                    < Self::BURST
            });
        }
        let (left, at) = self
            .units
            .entry(unit.to_string())
            .or_insert((Self::BURST, now));
        *left = (*left + now.saturating_duration_since(*at).as_secs_f64() * Self::PER_SECOND)
            .min(Self::BURST);
        *at = now;
        let bytes = bytes as f64;
        if *left >= bytes {
            *left -= bytes;
            true
        } else {
            false
        }
    }
}

/// How many records one unit may write: a bucket of [`RecordBudget::BURST`] refilled at
/// [`RecordBudget::PER_SECOND`]. Past it, records are counted, not written, and a summary
/// says how many (the verdicts and counters are not affected), so a container that loops
/// denied execs cannot flood the log, the queue or another unit's records.
#[derive(Debug, Clone)]
pub struct RecordBudget {
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
    first_suppressed: Option<String>,
}

impl Default for RecordBudget {
    fn default() -> Self {
        RecordBudget {
            tokens: Self::BURST,
            last: std::time::Instant::now(),
            suppressed: 0,
            first_suppressed: None,
        }
    }
}

impl RecordBudget {
    /// Records a unit may write at once.
    pub const BURST: f64 = 200.0;
    /// Records per second after the burst.
    pub const PER_SECOND: f64 = 50.0;

    fn refill(&mut self, now: std::time::Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * Self::PER_SECOND).min(Self::BURST);
        self.last = now;
    }

    /// True if a record may be written now; otherwise counts it as suppressed.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            if self.first_suppressed.is_none() {
                self.first_suppressed = Some(rfc3339(std::time::SystemTime::now()));
            }
            false
        }
    }

    /// Records suppressed and not yet summarized.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Takes the count of suppressed records for a summary (once the budget has a token
    /// for it): `(count, time of the first)`.
    pub fn take_summary(&mut self, now: std::time::Instant) -> Option<(u64, String)> {
        if self.suppressed == 0 {
            return None;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        let n = std::mem::take(&mut self.suppressed);
        Some((n, self.first_suppressed.take().unwrap_or_default()))
    }
}
