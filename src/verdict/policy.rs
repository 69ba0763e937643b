//! The policy: a pure function from (mode, finding) to verdict and answer.

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
