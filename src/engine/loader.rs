//! The loader rule's wait: a loader exec is answered once its thread has been seen
//! blocked in the exec (never on a transient state), looking again off the event path.

use super::*;

/// A loader exec waiting until its thread is seen blocked in the exec.
pub(super) struct LoaderWait {
    pub(super) claim: Claimed,
    judged: Judgement,
    /// The facts the rule book asked about; `loader_call` is filled in by each look.
    pub(super) facts: Facts,
    since: Instant,
    looks: u32,
    next: Instant,
}

impl LoaderWait {
    /// A loader exec the rule book asked about, not yet looked at.
    pub(super) fn new(claim: Claimed, judged: Judgement, facts: Facts) -> Self {
        let now = Instant::now();
        Self {
            claim,
            judged,
            facts,
            since: now,
            looks: 0,
            next: now,
        }
    }
}

/// The loader execs waiting to be looked at again, and how a task is looked at.
pub(super) struct LoaderWaits {
    waits: Vec<LoaderWait>,
    /// Asks exec'ing tasks what they named (the loader rule).
    probe: Box<dyn TaskProbe>,
}

impl LoaderWaits {
    pub(super) fn new(probe: Box<dyn TaskProbe>) -> Self {
        Self {
            waits: Vec::new(),
            probe,
        }
    }

    /// Replaces how exec'ing tasks are looked at (tests use a fake).
    pub(super) fn set_probe(&mut self, probe: Box<dyn TaskProbe>) {
        self.probe = probe;
    }

    /// When the next wait is due for a look.
    pub(super) fn next_look(&self) -> Option<Instant> {
        self.waits.iter().map(|w| w.next).min()
    }

    /// Every waiting loader exec, taken off the list.
    pub(super) fn take_all(&mut self) -> Vec<LoaderWait> {
        std::mem::take(&mut self.waits)
    }
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
            let stat = &w.claim.stat;
            let seen = self
                .loader
                .probe
                .loader_call(w.claim.tid, (stat.dev, stat.ino));
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
                w.claim.tid,
                w.looks,
                waited.as_millis()
            );
            let detail = format!(
                "thread {} never seen blocked in its exec: {} looks over {} ms",
                w.claim.tid,
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
        self.loader.waits.push(w);
    }

    /// Answers a waiting loader exec with the rule book's outcome and the evidence.
    pub(super) fn conclude_wait(&mut self, w: LoaderWait, outcome: Outcome, detail: String) {
        self.conclude(w.claim, w.judged, outcome, Some(detail));
    }

    /// Looks again at the loader execs whose pause has passed.
    pub(super) fn look_at_waiting_loaders(&mut self, now: Instant) {
        if self.loader.waits.iter().all(|w| w.next > now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.loader.waits)
            .into_iter()
            .partition(|w| w.next <= now);
        self.loader.waits = later;
        for w in due {
            self.look_at_loader(w, 1);
        }
    }
}
