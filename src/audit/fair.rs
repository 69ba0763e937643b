//! The records' way to the writer: one queue per unit, served in turn, so a container that
//! makes records faster than the writer can write them fills its own queue, never the
//! others' (their deny, coverage and fail-open records still get through).

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, PoisonError};

use super::AuditJob;

/// Records one unit may have waiting; past it its new records are dropped (and counted).
pub const UNIT_QUEUE: usize = 2048;

#[derive(Default)]
struct Queues {
    by_unit: HashMap<String, VecDeque<AuditJob>>,
    /// Units with records waiting, in the order they are served.
    turn: VecDeque<String>,
    waiting: usize,
    senders: usize,
}

/// Per-unit queues served round-robin by one writer.
#[derive(Default)]
pub struct FairQueue {
    queues: Mutex<Queues>,
    ready: Condvar,
}

impl FairQueue {
    /// Adds `job` to its unit's queue unless that queue (or all of them, `total`) is full;
    /// false (and the job dropped) then.
    pub fn push(&self, job: AuditJob, total: usize) -> bool {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if q.waiting >= total {
            return false;
        }
        let unit = job.unit().to_string();
        let queue = q.by_unit.entry(unit.clone()).or_default();
        if queue.len() >= UNIT_QUEUE {
            return false;
        }
        let first = queue.is_empty();
        queue.push_back(job);
        if first {
            q.turn.push_back(unit);
        }
        q.waiting += 1;
        drop(q);
        self.ready.notify_one();
        true
    }

    /// The next record, from the unit whose turn it is; waits for one. `None` once every
    /// sender is gone and nothing waits.
    pub fn pop(&self) -> Option<AuditJob> {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            while let Some(unit) = q.turn.pop_front() {
                let Some(queue) = q.by_unit.get_mut(&unit) else {
                    continue;
                };
                let Some(job) = queue.pop_front() else {
                    q.by_unit.remove(&unit);
                    continue;
                };
                if queue.is_empty() {
                    q.by_unit.remove(&unit);
                } else {
                    q.turn.push_back(unit);
                }
                q.waiting -= 1;
                return Some(job);
            }
            if q.senders == 0 {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A sender appeared.
    pub fn add_sender(&self) {
        self.queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .senders += 1;
    }

    /// A sender went away; the writer ends when the last has and the queues are empty.
    pub fn remove_sender(&self) {
        let mut q = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        q.senders = q.senders.saturating_sub(1);
        drop(q);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{CoverageEvent, CoverageRecord, RECORD_VERSION};

    fn job(unit: &str) -> AuditJob {
        AuditJob::Coverage(CoverageRecord {
            v: RECORD_VERSION,
            kind: "coverage".into(),
            time: String::new(),
            unit: unit.into(),
            event: CoverageEvent::MountArmed,
            path: "/".into(),
            fstype: String::new(),
            mark: None,
            error: None,
        })
    }

    #[test]
    fn a_flooding_unit_fills_its_own_queue_and_others_are_served_in_turn() {
        let q = FairQueue::default();
        q.add_sender();
        let mut dropped = 0;
        for _ in 0..UNIT_QUEUE + 100 {
            if !q.push(job("flood"), 16 * 1024) {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 100, "the flood loses its own records only");
        assert!(q.push(job("quiet"), 16 * 1024));
        assert!(q.push(job("other"), 16 * 1024));
        let order: Vec<String> = (0..4)
            .filter_map(|_| q.pop())
            .map(|j| j.unit().to_string())
            .collect();
        assert_eq!(order, ["flood", "quiet", "other", "flood"]);
        q.remove_sender();
        let rest = std::iter::from_fn(|| q.pop()).count();
        assert_eq!(rest, UNIT_QUEUE - 2, "drained, then the end");
    }
}
