//! The hashing threads: each takes a job (a duplicate of the event's fd), hashes it within
//! the job's deadline and sends the result back, waking the event loop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::baseline::{HashError, hash_fd};
use crate::kernel::Wake;
use crate::registry::UnitHandle;
use crate::verdict::FileKey;
use crate::verdict::cache::now as wall_now;

/// A file to hash.
pub(in crate::engine) struct HashJob {
    pub(super) seq: u64,
    pub(super) key: (UnitHandle, FileKey),
    pub(super) fd: OwnedFd,
    pub(super) deadline: Instant,
    /// The unit allows content by SHA-256: compute it too.
    pub(super) with_sha256: bool,
}

/// A hash that ended (or failed).
pub(in crate::engine) struct HashDone {
    pub(in crate::engine) seq: u64,
    pub(in crate::engine) key: (UnitHandle, FileKey),
    pub(in crate::engine) started: crate::kernel::Timestamp,
    pub(in crate::engine) elapsed: Duration,
    pub(in crate::engine) result: Result<crate::baseline::FileDigests, HashError>,
}

/// Starts hashing thread `i`; `None` (logged) if the system refuses a thread.
pub(super) fn spawn_hash_worker(
    i: usize,
    jobs: &Receiver<HashJob>,
    results: &Sender<HashDone>,
    waker: &Arc<dyn Wake>,
    busy: &Arc<AtomicUsize>,
) -> Option<std::thread::JoinHandle<()>> {
    let (jobs, results, waker, busy) = (
        jobs.clone(),
        results.clone(),
        Arc::clone(waker),
        Arc::clone(busy),
    );
    std::thread::Builder::new()
        .name(format!("driftlock-hash-{i}"))
        .spawn(move || hash_worker(jobs, results, waker, busy))
        .map_err(|e| log::error!("cannot start hash worker {i}: {e}"))
        .ok()
}

fn hash_worker(
    jobs: Receiver<HashJob>,
    results: Sender<HashDone>,
    waker: Arc<dyn Wake>,
    busy: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    for job in jobs {
        busy.fetch_add(1, Ordering::Relaxed);
        let started = wall_now();
        let clock = Instant::now();
        let result = hash_fd(
            job.fd.as_fd(),
            &mut buf,
            job.with_sha256,
            Some(job.deadline),
        );
        let elapsed = clock.elapsed();
        drop(job.fd);
        busy.fetch_sub(1, Ordering::Relaxed);
        if results
            .send(HashDone {
                seq: job.seq,
                key: job.key,
                started,
                elapsed,
                result,
            })
            .is_err()
        {
            break;
        }
        waker.wake();
    }
}
