//! The rule book: pure functions from plain facts to a decision. The engine gathers the
//! facts (hashes, baseline membership, what the exec'ing task named) and performs the
//! effects a decision asks for (answer, cache, ignore mark, record); every rule and every
//! precedence between rules is here, and is tested here, without a kernel.
//!
//! The rules, in order:
//! 1. **Content** ([`content_finding`]): a known-bad indicator beats an allow entry, which
//!    is as good as the baseline; content that cannot be established (changed while
//!    hashed, too slow, unreadable) is treated like content that is not there.
//! 2. **Script control**: an interpreter reading a file that is not in the baseline is
//!    refused like an exec of it (`script-not-in-baseline`).
//! 3. **Loader**: an exec of a dynamic loader of the image is only allowed once the
//!    exec'ing task has been asked what it named ([`loader_finding`]).
//! 4. **Mode** ([`decide`]): enforce denies what is not in the baseline, audit allows and
//!    records `would-deny`.
//! 5. **Effects**: an allowed exec on a filesystem with no write path may be left to the
//!    kernel (never a loader, a script open or a notification); allowed execs are recorded
//!    only when misses are recorded, and never from the cache.

use crate::Mode;
use crate::kernel::Answer;
use crate::kernel::exec_name::LoaderCall;

/// Why a verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The content's digest is in the unit's baseline.
    InBaseline,
    /// The content's digest is not in the baseline.
    NotInBaseline,
    /// The file changed while it was being hashed (or between hash and answer).
    ChangedDuringHash,
    /// Hashing took longer than the time budget.
    HashTimeout,
    /// The file could not be read or stat'ed.
    Unreadable,
    /// The image's dynamic loader was executed directly (`ld.so /tmp/payload`): the program
    /// it would load raises no exec event, so the invocation itself is denied.
    DirectLoader,
    /// The image's dynamic loader was executed and the name the task asked to execute could
    /// not be read or resolved, so a direct invocation could not be ruled out.
    LoaderUnverified,
    /// The image's dynamic loader was executed and the exec'ing thread was never seen
    /// blocked in its exec within the time budget (it is blocked until answered, so this
    /// means the daemon could not look; the record's `detail` says how long and how often).
    LoaderUnobservable,
    /// An interpreter opened a file whose content is not in the baseline (script control).
    ScriptNotInBaseline,
    /// A shared object (ELF `ET_DYN`) was opened whose content is not in the baseline
    /// (library control: `LD_PRELOAD`, `/etc/ld.so.preload`, `dlopen` of a dropped library).
    LibraryNotInBaseline,
    /// The file is in the image but matched a known-bad indicator when it was snapshotted.
    KnownBad,
    /// A file was mapped executable (`LD_PRELOAD`, `dlopen`, `mmap`/`mprotect` with
    /// `PROT_EXEC`) whose content was never judged allowed (the mapping gate).
    MappingNotAllowed,
    /// Code made in memory without a file: a mapping writable and executable (at once or
    /// one after the other), anonymous or memfd memory made executable, or a write through
    /// `/proc/<pid>/mem` (the mapping gate, in a container whose image has no JIT runtime).
    MemoryCode,
}

impl Reason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [Reason; 13] = [
        Reason::InBaseline,
        Reason::NotInBaseline,
        Reason::ChangedDuringHash,
        Reason::HashTimeout,
        Reason::Unreadable,
        Reason::DirectLoader,
        Reason::LoaderUnverified,
        Reason::LoaderUnobservable,
        Reason::ScriptNotInBaseline,
        Reason::KnownBad,
        Reason::MappingNotAllowed,
        Reason::LibraryNotInBaseline,
        Reason::MemoryCode,
    ];

    /// The name used in records, `status` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InBaseline => "in-baseline",
            Reason::NotInBaseline => "not-in-baseline",
            Reason::ChangedDuringHash => "changed-during-hash",
            Reason::HashTimeout => "hash-timeout",
            Reason::Unreadable => "unreadable",
            Reason::DirectLoader => "direct-loader",
            Reason::LoaderUnverified => "loader-unverified",
            Reason::LoaderUnobservable => "loader-unobservable",
            Reason::ScriptNotInBaseline => "script-not-in-baseline",
            Reason::KnownBad => "known-bad",
            Reason::MappingNotAllowed => "mapping-not-allowed",
            Reason::LibraryNotInBaseline => "library-not-in-baseline",
            Reason::MemoryCode => "memory-code",
        }
    }

    /// The rule that reached this reason (what a deny record names).
    pub fn rule(self) -> &'static str {
        match self {
            Reason::InBaseline | Reason::NotInBaseline => "baseline",
            Reason::ChangedDuringHash | Reason::HashTimeout | Reason::Unreadable => "hash",
            Reason::DirectLoader | Reason::LoaderUnverified | Reason::LoaderUnobservable => {
                "loader"
            }
            Reason::ScriptNotInBaseline => "script",
            Reason::KnownBad => "known-bad",
            Reason::MappingNotAllowed => "mapping",
            Reason::LibraryNotInBaseline => "library",
            Reason::MemoryCode => "memory",
        }
    }
}

/// The loader rule: a dynamic loader's content is in the image, but a direct invocation
/// (`ld.so /tmp/payload`) runs a program that raises no exec event, so the exec'ing task is
/// asked what it named. `None`: the task was not seen blocked yet, look again (it cannot
/// proceed without our answer, so a transient state must never decide).
pub fn loader_finding(call: LoaderCall) -> Option<Finding> {
    match call {
        LoaderCall::ForProgram => Some(Finding::InBaseline),
        LoaderCall::Direct => Some(Finding::Unverifiable(Reason::DirectLoader)),
        // Blocked in an exec we cannot read, or (impossible for the thread that raised the
        // event) in another call: a direct invocation cannot be ruled out.
        LoaderCall::Unresolved | LoaderCall::NotInExec => {
            Some(Finding::Unverifiable(Reason::LoaderUnverified))
        }
        // The exec cannot go on once its thread is gone: the answer changes nothing, and
        // allowing keeps a dying image program out of the deny records.
        LoaderCall::Gone => Some(Finding::InBaseline),
        LoaderCall::NotBlocked => None,
    }
}

/// What is known about a file's content with respect to a unit's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// In the baseline.
    InBaseline,
    /// Not in the baseline.
    NotInBaseline,
    /// Could not be established, for the given reason.
    Unverifiable(Reason),
}

impl Finding {
    /// The reason recorded for this finding.
    pub fn reason(self) -> Reason {
        match self {
            Finding::InBaseline => Reason::InBaseline,
            Finding::NotInBaseline => Reason::NotInBaseline,
            Finding::Unverifiable(r) => r,
        }
    }
}

/// What kind of event is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An exec held until answered (enforce mode's permission event).
    Exec,
    /// An exec already under way (audit mode's notification): the task cannot be asked.
    ExecNotice,
    /// An interpreter opening a file (script control), held until answered.
    ScriptOpen,
    /// A shared object opened (library control): held until answered in enforce mode, a
    /// notification in audit mode.
    LibraryOpen,
}

/// Everything the rules look at for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The unit's mode.
    pub mode: Mode,
    /// What is judged.
    pub event: EventKind,
    /// What is known of the content ([`content_finding`], or a reason it is unknown).
    pub finding: Finding,
    /// The content is one of the image's dynamic loaders.
    pub is_loader: bool,
    /// What the exec'ing task named, once it has been asked (the loader rule).
    pub loader_call: Option<LoaderCall>,
    /// The file is on a filesystem with no write path at all (erofs, squashfs, ...).
    pub immutable_fs: bool,
    /// The finding came from the verdict cache.
    pub from_cache: bool,
    /// Allowed misses are recorded too (`--record-misses`).
    pub record_misses: bool,
}

/// The answer to one event and the effects that go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The recorded verdict.
    pub verdict: Verdict,
    /// The answer to the kernel.
    pub answer: Answer,
    /// Why.
    pub reason: Reason,
    /// Let the kernel allow this file's later execs itself (an inode ignore mark).
    pub ignore_mark: bool,
    /// Write an audit record.
    pub record: bool,
}

/// What the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The loader rule needs the exec'ing task's answer (or a better look at it) first.
    AskTask,
    /// Final.
    Answer(Outcome),
}

/// Rule 1: what content with these properties amounts to.
pub fn content_finding(known_bad: bool, in_baseline: bool, allowed_by_entry: bool) -> Finding {
    if known_bad {
        Finding::Unverifiable(Reason::KnownBad)
    } else if in_baseline || allowed_by_entry {
        Finding::InBaseline
    } else {
        Finding::NotInBaseline
    }
}

/// Applies the rules to `facts`.
pub fn judge(facts: &Facts) -> Decision {
    let mut finding = facts.finding;
    if facts.event == EventKind::ScriptOpen && finding == Finding::NotInBaseline {
        finding = Finding::Unverifiable(Reason::ScriptNotInBaseline);
    }
    if facts.event == EventKind::LibraryOpen && finding == Finding::NotInBaseline {
        finding = Finding::Unverifiable(Reason::LibraryNotInBaseline);
    }
    // Only a held exec can be asked; an audit notification's task has moved on.
    if facts.event == EventKind::Exec && finding == Finding::InBaseline && facts.is_loader {
        match facts.loader_call.and_then(loader_finding) {
            Some(f) => finding = f,
            None => return Decision::AskTask,
        }
    }
    let (verdict, answer) = decide(facts.mode, finding);
    Decision::Answer(Outcome {
        verdict,
        answer,
        reason: finding.reason(),
        // A loader's event must keep coming (a direct invocation is judged each time), and
        // a script open or a notification is not an exec the kernel could skip.
        // Only what is allowed outright: an audit-mode would-deny is answered "allow" too,
        // and each of its execs must still be recorded.
        ignore_mark: verdict == Verdict::Allow
            && facts.immutable_fs
            && facts.event == EventKind::Exec
            && !facts.is_loader,
        record: verdict != Verdict::Allow || (facts.record_misses && !facts.from_cache),
    })
}

/// Applies the rules when the exec'ing task could not be seen within its budget: where the
/// loader rule would still ask, the answer is `loader-unobservable` (fail closed).
pub fn judge_unobserved(facts: &Facts) -> Outcome {
    match judge(facts) {
        Decision::Answer(o) => o,
        Decision::AskTask => {
            let finding = Finding::Unverifiable(Reason::LoaderUnobservable);
            let (verdict, answer) = decide(facts.mode, finding);
            Outcome {
                verdict,
                answer,
                reason: finding.reason(),
                ignore_mark: false,
                record: true,
            }
        }
    }
}

/// The verdict recorded for an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied (enforce mode).
    Deny,
    /// Allowed, but enforce mode would have denied it (audit mode).
    WouldDeny,
}

/// Decides an exec: only content in the baseline runs in enforce mode; anything that
/// cannot be verified is treated like content that is not in it (fail closed).
pub fn decide(mode: Mode, finding: Finding) -> (Verdict, Answer) {
    match (finding, mode) {
        (Finding::InBaseline, _) => (Verdict::Allow, Answer::Allow),
        (_, Mode::Enforce) => (Verdict::Deny, Answer::Deny),
        (_, Mode::Audit) => (Verdict::WouldDeny, Answer::Allow),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
