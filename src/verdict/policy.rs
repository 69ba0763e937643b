//! The policy: a pure function from (mode, finding) to verdict and answer.

use crate::Mode;
use crate::kernel::Answer;

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
    /// not be resolved, so a direct invocation could not be ruled out.
    LoaderUnverified,
    /// An interpreter opened a file whose content is not in the baseline (script control).
    ScriptNotInBaseline,
    /// The file is in the image but matched a known-bad indicator when it was snapshotted.
    KnownBad,
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
}
