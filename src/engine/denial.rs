//! Recorded denials answered off the event thread: the denied task's own process (a few
//! capped `/proc` reads) must be read while it is still held, since it may exit (and be
//! reaped) the moment it is answered, and so must its ancestors (its parent may end with
//! it). A small thread of its own reads them and answers, so the event thread pays for a
//! recorded denial about what it pays for a hit.

use std::os::fd::OwnedFd;

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::ExecEvent;
use super::record::fill_process;
use crate::audit::{AuditJob, AuditQueue, AuditRecord, ProcessToRead};
use crate::kernel::Answer;
use crate::kernel::procfs;

/// How many denials may wait for their process to be read; past it, the event thread
/// reads and answers itself (as before this thread existed).
const HELD: usize = 64;

/// A denial held until its process is read.
pub(super) struct HeldDenial {
    pub(super) event: ExecEvent,
    pub(super) tid: i32,
    pub(super) record: Box<AuditRecord>,
    pub(super) file: Option<OwnedFd>,
    pub(super) process: ProcessToRead,
}

/// The event thread's end of the denial-context thread.
pub(super) struct DenialReader {
    tx: Sender<HeldDenial>,
    thread: std::thread::JoinHandle<()>,
}

impl DenialReader {
    /// Starts the thread; `None` if it cannot be started (denials are then read inline).
    pub(super) fn spawn(audit: AuditQueue) -> Option<Self> {
        let (tx, rx) = bounded::<HeldDenial>(HELD);
        let thread = std::thread::Builder::new()
            .name("driftlock-denied".into())
            .spawn(move || {
                for mut d in rx {
                    let info = procfs::read_process(d.tid);
                    fill_process(&mut d.record, info);
                    // Its ancestors too, while the exec is held: the parent waiting for it
                    // is there now, and may be gone a few milliseconds after the answer
                    // (a container's shell that ends with the failed command).
                    d.process.read_into(&mut d.record);
                    if let ExecEvent::Permission(p)
                    | ExecEvent::Open(p)
                    | ExecEvent::LibraryOpen(p) = d.event
                    {
                        if let Err(e) = p.answer(Answer::Deny) {
                            log::error!("{e}");
                        }
                    }
                    audit.send(AuditJob::Exec {
                        record: d.record,
                        file: d.file,
                        process: None,
                    });
                }
            })
            .ok()?;
        Some(Self { tx, thread })
    }

    /// Answers every denial handed over (a stopping engine answers all it holds).
    pub(super) fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }

    /// Hands a denial to the thread; gives it back when the thread is busy or gone.
    pub(super) fn hand(&self, d: HeldDenial) -> Result<(), HeldDenial> {
        self.tx.try_send(d).map_err(|e| match e {
            TrySendError::Full(d) | TrySendError::Disconnected(d) => d,
        })
    }
}
