//! Drop-in files (`conf.d`): the teams' own files merged into the configuration.

use super::*;

/// A file of `conf.d/`: a team's rules for the namespaces it speaks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Delegated {
    /// The namespaces (names or globs) this file may speak for.
    pub(super) namespaces: Vec<String>,
    /// Mode rules for those namespaces.
    #[serde(default)]
    pub(super) namespace: Vec<ModeRule>,
    /// Allow entries, each scoped to one of those namespaces.
    #[serde(default)]
    pub(super) allow: Vec<AllowEntry>,
}

impl Delegated {
    /// True if this file may speak for namespace `pattern` (a name its globs match, or one
    /// of its globs itself).
    pub(super) fn covers(&self, pattern: &str) -> bool {
        self.namespaces
            .iter()
            .any(|d| d == pattern || (!pattern.contains(['*', '?']) && matches(d, pattern)))
    }

    /// The first rule that reaches outside the file's namespaces, as (line, reason).
    pub(super) fn overreach(&self, text: &str) -> Option<(usize, String)> {
        if self.namespaces.is_empty() {
            return Some((
                1,
                "names no namespaces (`namespaces = [\"team-a\"]`)".into(),
            ));
        }
        for (i, r) in self.namespace.iter().enumerate() {
            if !self.covers(&r.name) {
                return Some((
                    line_of_table(text, "[[namespace]]", i),
                    format!(
                        "a mode rule for namespace {:?}, which this file does not speak for",
                        r.name
                    ),
                ));
            }
        }
        for (i, a) in self.allow.iter().enumerate() {
            let why = match &a.namespace {
                None => "an allow entry with no namespace (it would apply to every namespace)"
                    .to_string(),
                Some(ns) if !self.covers(ns) => {
                    format!(
                        "an allow entry for namespace {ns:?}, which this file does not speak for"
                    )
                }
                Some(_) => continue,
            };
            return Some((line_of_table(text, "[[allow]]", i), why));
        }
        None
    }
}

/// The line (from 1) of the `n`-th (from 0) `header` table in `text`.
pub(super) fn line_of_table(text: &str, header: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(header))
        .nth(n)
        .map_or(1, |(i, _)| i + 1)
}
