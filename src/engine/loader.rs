//! The loader rule's wait: a loader exec is answered once its thread has been seen
//! blocked in the exec (never on a transient state), looking again off the event path.

use super::*;

/// A loader exec waiting until its thread is seen blocked in the exec.
pub(super) struct LoaderWait {
    pub(super) unit: UnitHandle,
    pub(super) event: ExecEvent,
    pub(super) tid: i32,
    pub(super) judged: Judgement,
    /// The facts the rule book asked about; `loader_call` is filled in by each look.
    pub(super) facts: Facts,
    pub(super) stat: FileStat,
    pub(super) since: Instant,
    pub(super) looks: u32,
    pub(super) next: Instant,
}

/// Looks at a loader exec's thread on the event path before it waits off the loop: most
/// transient states (the thread about to sleep, or woken for a moment by an answer to
/// another event) last microseconds.
pub(super) const LOADER_INLINE_LOOKS: u32 = 4;

/// First and longest pause between later looks.
pub(super) const LOADER_RETRY_FIRST: Duration = Duration::from_micros(100);

pub(super) const LOADER_RETRY_MAX: Duration = Duration::from_millis(10);

impl<G: Gate> Engine<G> {
    /// Looks at a loader exec's thread up to `looks` times. A thread that raised a
    /// permission event cannot go on without our answer, so a state read while it is not
    /// yet asleep (or was woken for a moment by an answer to another event: every waiter of
    /// the group shares one wait queue) must not decide: look again shortly, up to the
    /// loader wait budget, and only then fail closed with `loader-unobservable`.
    pub(super) fn look_at_loader(&mut self, mut w: LoaderWait, looks: u32) {
        for i in 0..looks {
            if i > 0 {
                std::thread::yield_now();
            }
            let seen = self.probe.loader_call(w.tid, (w.stat.dev, w.stat.ino));
            w.looks += 1;
            w.facts.loader_call = Some(seen.call);
            let Decision::Answer(outcome) = judge(&w.facts) else {
                self.stats.loader_not_blocked_looks += 1;
                continue;
            };
            let waited = w.since.elapsed();
            self.stats.loader_wait_max_us =
                self.stats.loader_wait_max_us.max(waited.as_micros() as u64);
            if seen.call == crate::kernel::exec_name::LoaderCall::Gone {
                self.stats.loader_thread_gone += 1;
            }
            let detail = if w.looks > 1 {
                format!(
                    "{}; thread seen blocked at look {} after {} us",
                    seen.evidence,
                    w.looks,
                    waited.as_micros()
                )
            } else {
                seen.evidence
            };
            self.conclude_wait(w, outcome, detail);
            return;
        }
        let waited = w.since.elapsed();
        if waited >= self.config.loader_wait {
            log::warn!(
                "loader exec of thread {} answered by policy: the thread was never seen blocked in {} looks over {} ms",
                w.tid,
                w.looks,
                waited.as_millis()
            );
            let detail = format!(
                "thread {} never seen blocked in its exec: {} looks over {} ms",
                w.tid,
                w.looks,
                waited.as_millis()
            );
            w.facts.loader_call = None;
            let outcome = judge_unobserved(&w.facts);
            self.conclude_wait(w, outcome, detail);
            return;
        }
        if w.looks <= LOADER_INLINE_LOOKS {
            self.stats.loader_waits += 1;
        }
        let later = w.looks.saturating_sub(LOADER_INLINE_LOOKS).min(8);
        let pause = LOADER_RETRY_FIRST
            .saturating_mul(1 << later)
            .min(LOADER_RETRY_MAX);
        w.next = Instant::now() + pause;
        self.loader_waits.push(w);
    }

    /// Answers a waiting loader exec with the rule book's outcome and the evidence.
    pub(super) fn conclude_wait(&mut self, w: LoaderWait, outcome: Outcome, detail: String) {
        self.conclude(
            w.unit,
            w.event,
            w.tid,
            w.judged,
            &w.stat,
            outcome,
            Some(detail),
        );
    }

    /// Looks again at the loader execs whose pause has passed.
    pub(super) fn look_at_waiting_loaders(&mut self, now: Instant) {
        if self.loader_waits.iter().all(|w| w.next > now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.loader_waits)
            .into_iter()
            .partition(|w| w.next <= now);
        self.loader_waits = later;
        for w in due {
            self.look_at_loader(w, 1);
        }
    }
}
