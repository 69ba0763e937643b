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
    /// The file is in the image but matched a known-bad indicator when it was snapshotted.
    KnownBad,
}

impl Reason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [Reason; 10] = [
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
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Finding::*;
        assert_eq!(
            decide(Mode::Enforce, InBaseline),
            (Verdict::Allow, Answer::Allow)
        );
        assert_eq!(
            decide(Mode::Audit, InBaseline),
            (Verdict::Allow, Answer::Allow)
        );
        assert_eq!(
            decide(Mode::Enforce, NotInBaseline),
            (Verdict::Deny, Answer::Deny)
        );
        assert_eq!(
            decide(Mode::Audit, NotInBaseline),
            (Verdict::WouldDeny, Answer::Allow)
        );
        for r in [
            Reason::HashTimeout,
            Reason::ChangedDuringHash,
            Reason::Unreadable,
        ] {
            assert_eq!(decide(Mode::Enforce, Unverifiable(r)).1, Answer::Deny);
            assert_eq!(
                decide(Mode::Audit, Unverifiable(r)),
                (Verdict::WouldDeny, Answer::Allow)
            );
            assert_eq!(Unverifiable(r).reason(), r);
        }
    }

    fn facts() -> Facts {
        Facts {
            mode: Mode::Enforce,
            event: EventKind::Exec,
            finding: Finding::InBaseline,
            is_loader: false,
            loader_call: None,
            immutable_fs: false,
            from_cache: true,
            record_misses: false,
        }
    }

    fn outcome(f: Facts) -> Outcome {
        match judge(&f) {
            Decision::Answer(o) => o,
            Decision::AskTask => panic!("asked the task for {f:?}"),
        }
    }

    #[test]
    fn content_rule_precedence() {
        use Finding::*;
        // (known_bad, in_baseline, allowed_by_entry)
        let table = [
            ((false, true, false), InBaseline),
            ((false, false, true), InBaseline),
            ((false, true, true), InBaseline),
            ((false, false, false), NotInBaseline),
            ((true, true, false), Unverifiable(Reason::KnownBad)),
            ((true, true, true), Unverifiable(Reason::KnownBad)),
            ((true, false, true), Unverifiable(Reason::KnownBad)),
        ];
        for ((bad, base, allow), want) in table {
            assert_eq!(
                content_finding(bad, base, allow),
                want,
                "{bad} {base} {allow}"
            );
        }
    }

    #[test]
    fn every_rule_and_precedence() {
        use Finding::*;
        let deny = |reason| (Verdict::Deny, Answer::Deny, reason);
        let allow = (Verdict::Allow, Answer::Allow, Reason::InBaseline);
        let would = |reason| (Verdict::WouldDeny, Answer::Allow, reason);
        let not_in = Reason::NotInBaseline;
        // (mode, event, finding, is_loader, loader_call) -> (verdict, answer, reason)
        let table: &[(Mode, EventKind, Finding, bool, Option<LoaderCall>, _)] = &[
            (
                Mode::Enforce,
                EventKind::Exec,
                InBaseline,
                false,
                None,
                allow,
            ),
            (
                Mode::Enforce,
                EventKind::Exec,
                NotInBaseline,
                false,
                None,
                deny(not_in),
            ),
            (
                Mode::Audit,
                EventKind::ExecNotice,
                NotInBaseline,
                false,
                None,
                would(not_in),
            ),
            (
                Mode::Audit,
                EventKind::Exec,
                NotInBaseline,
                false,
                None,
                would(not_in),
            ),
            // Script control: a file not in the baseline, read by an interpreter.
            (
                Mode::Enforce,
                EventKind::ScriptOpen,
                NotInBaseline,
                false,
                None,
                deny(Reason::ScriptNotInBaseline),
            ),
            (
                Mode::Enforce,
                EventKind::ScriptOpen,
                InBaseline,
                false,
                None,
                allow,
            ),
            (
                Mode::Audit,
                EventKind::ScriptOpen,
                NotInBaseline,
                false,
                None,
                would(Reason::ScriptNotInBaseline),
            ),
            // Known-bad beats everything, the loader rule included.
            (
                Mode::Enforce,
                EventKind::Exec,
                Unverifiable(Reason::KnownBad),
                true,
                None,
                deny(Reason::KnownBad),
            ),
            // The loader rule, once the task was asked.
            (
                Mode::Enforce,
                EventKind::Exec,
                InBaseline,
                true,
                Some(LoaderCall::ForProgram),
                allow,
            ),
            (
                Mode::Enforce,
                EventKind::Exec,
                InBaseline,
                true,
                Some(LoaderCall::Direct),
                deny(Reason::DirectLoader),
            ),
            (
                Mode::Audit,
                EventKind::Exec,
                InBaseline,
                true,
                Some(LoaderCall::Direct),
                would(Reason::DirectLoader),
            ),
            (
                Mode::Enforce,
                EventKind::Exec,
                InBaseline,
                true,
                Some(LoaderCall::Unresolved),
                deny(Reason::LoaderUnverified),
            ),
            (
                Mode::Enforce,
                EventKind::Exec,
                InBaseline,
                true,
                Some(LoaderCall::Gone),
                allow,
            ),
            // A notification's task cannot be asked: the loader is allowed as content.
            (
                Mode::Audit,
                EventKind::ExecNotice,
                InBaseline,
                true,
                None,
                allow,
            ),
            // A loader that is not in the baseline is judged as content first.
            (
                Mode::Enforce,
                EventKind::Exec,
                NotInBaseline,
                true,
                None,
                deny(not_in),
            ),
            // Unverifiable content is denied in enforce mode, recorded in audit mode.
            (
                Mode::Enforce,
                EventKind::Exec,
                Unverifiable(Reason::HashTimeout),
                false,
                None,
                deny(Reason::HashTimeout),
            ),
            (
                Mode::Audit,
                EventKind::Exec,
                Unverifiable(Reason::ChangedDuringHash),
                false,
                None,
                would(Reason::ChangedDuringHash),
            ),
            (
                Mode::Enforce,
                EventKind::Exec,
                Unverifiable(Reason::LoaderUnobservable),
                true,
                None,
                deny(Reason::LoaderUnobservable),
            ),
        ];
        for (mode, event, finding, is_loader, loader_call, want) in table.iter().copied() {
            let f = Facts {
                mode,
                event,
                finding,
                is_loader,
                loader_call,
                ..facts()
            };
            let o = outcome(f);
            assert_eq!((o.verdict, o.answer, o.reason), want, "{f:?}");
            assert_eq!(o.record, o.verdict != Verdict::Allow, "{f:?}");
        }
    }

    #[test]
    fn the_loader_rule_asks_the_task_until_it_is_seen() {
        let f = Facts {
            is_loader: true,
            ..facts()
        };
        assert_eq!(judge(&f), Decision::AskTask);
        let f = Facts {
            loader_call: Some(LoaderCall::NotBlocked),
            ..f
        };
        assert_eq!(judge(&f), Decision::AskTask);
    }

    #[test]
    fn an_unobserved_task_fails_closed_only_where_the_loader_rule_asks() {
        let asks = Facts {
            is_loader: true,
            ..facts()
        };
        let o = judge_unobserved(&asks);
        assert_eq!(
            (o.verdict, o.reason, o.record),
            (Verdict::Deny, Reason::LoaderUnobservable, true)
        );
        let audit = judge_unobserved(&Facts {
            mode: Mode::Audit,
            ..asks
        });
        assert_eq!(
            (audit.verdict, audit.answer),
            (Verdict::WouldDeny, Answer::Allow)
        );
        assert_eq!(judge_unobserved(&facts()).verdict, Verdict::Allow);
    }

    #[test]
    fn effects() {
        // The kernel may allow repeats only of an allowed, non-loader exec on an immutable
        // filesystem.
        let immutable = Facts {
            immutable_fs: true,
            ..facts()
        };
        assert!(outcome(immutable).ignore_mark);
        assert!(!outcome(facts()).ignore_mark);
        for f in [
            Facts {
                is_loader: true,
                loader_call: Some(LoaderCall::ForProgram),
                ..immutable
            },
            Facts {
                event: EventKind::ScriptOpen,
                ..immutable
            },
            Facts {
                event: EventKind::ExecNotice,
                ..immutable
            },
            Facts {
                finding: Finding::NotInBaseline,
                mode: Mode::Audit,
                ..immutable
            },
        ] {
            assert!(!outcome(f).ignore_mark, "{f:?}");
        }
        // Records: every deny and would-deny; allowed misses only on request, hits never.
        let miss = Facts {
            from_cache: false,
            ..facts()
        };
        assert!(!outcome(miss).record);
        let recorded = Facts {
            record_misses: true,
            ..miss
        };
        assert!(outcome(recorded).record);
        assert!(
            !outcome(Facts {
                from_cache: true,
                ..recorded
            })
            .record
        );
    }

    #[test]
    fn loader_rule_table() {
        use Finding::*;
        let cases = [
            (LoaderCall::ForProgram, Some(InBaseline)),
            (LoaderCall::Direct, Some(Unverifiable(Reason::DirectLoader))),
            (
                LoaderCall::Unresolved,
                Some(Unverifiable(Reason::LoaderUnverified)),
            ),
            (
                LoaderCall::NotInExec,
                Some(Unverifiable(Reason::LoaderUnverified)),
            ),
            (LoaderCall::Gone, Some(InBaseline)),
            (LoaderCall::NotBlocked, None),
        ];
        for (call, want) in cases {
            assert_eq!(loader_finding(call), want, "{call:?}");
        }
    }

    #[test]
    fn reasons_have_stable_names_matching_serde() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(Reason::LoaderUnobservable.rule(), "loader");
    }
}
