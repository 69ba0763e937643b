//! The queue between the event loop and the record writer: bounded in records and bytes,
//! counted, never blocking the event loop.

use super::*;

/// Counters of the audit writer.
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Write failures.
    pub write_errors: AtomicU64,
    /// Records waiting to be written.
    pub queued: AtomicU64,
    /// About how many bytes they hold.
    pub queued_bytes: AtomicU64,
    /// Set to have the writer reopen the audit log file before its next record.
    pub reopen: AtomicBool,
    /// Alerts Falcosidekick took (a 2xx answer).
    pub falco_sent: AtomicU64,
    /// Alerts it refused (another answer) or could not be given (no connection).
    pub falco_failed: AtomicU64,
    /// Alerts dropped because the queue to Falcosidekick was full.
    pub falco_dropped: AtomicU64,
}

/// The sending side used by the engine (and the arming side): records go to their unit's
/// queue, and the writer serves the units in turn.
pub struct AuditQueue {
    pub(super) queue: Arc<fair::FairQueue>,
    pub(super) counters: Arc<AuditCounters>,
}

impl std::fmt::Debug for AuditQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditQueue")
            .field("counters", &self.counters)
            .finish()
    }
}

impl Clone for AuditQueue {
    fn clone(&self) -> Self {
        self.queue.add_sender();
        AuditQueue {
            queue: Arc::clone(&self.queue),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl Drop for AuditQueue {
    fn drop(&mut self) {
        self.queue.remove_sender();
    }
}

impl AuditQueue {
    pub(super) fn new() -> Self {
        let queue = Arc::new(fair::FairQueue::default());
        queue.add_sender();
        AuditQueue {
            queue,
            counters: Arc::new(AuditCounters::default()),
        }
    }

    /// Queues a record; never blocks (a full queue, the unit's own, all of them, or by
    /// bytes, drops and counts).
    pub fn send(&self, job: AuditJob) {
        let bytes = job.approx_bytes() as u64;
        let held = self
            .counters
            .queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if held + bytes > QUEUE_BYTES as u64 || !self.queue.push(job, QUEUE_CAPACITY) {
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A view of the counters that does not keep the writer alive.
    pub fn counters_handle(&self) -> Arc<AuditCounters> {
        Arc::clone(&self.counters)
    }

    /// The writer's counters.
    pub fn counters(&self) -> &AuditCounters {
        &self.counters
    }

    /// Has the writer reopen the audit log file (after logrotate moved it) before it writes
    /// its next record.
    pub fn reopen_file(&self) {
        self.counters.reopen.store(true, Ordering::Relaxed);
    }
}

/// Records waiting at most (bounded memory).
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// Bytes of records waiting at most.
pub const QUEUE_BYTES: usize = 16 << 20;
