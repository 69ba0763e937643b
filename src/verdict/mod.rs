//! Verdicts: the cache of what was found about a file, and the policy that turns a finding
//! into an answer for a unit's mode.

pub mod cache;
pub mod policy;

pub use cache::{FileKey, VerdictCache};
pub use policy::{
    Decision, EventKind, Facts, Finding, Outcome, Reason, Verdict, content_finding, decide, judge,
    judge_unobserved,
};
