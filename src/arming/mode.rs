//! Break-glass: switching running units to another mode (`driftlock mode`), at once, on
//! record, and kept across a daemon restart.

use super::{ArmError, Armer};
use super::{ModeSwitch, Selector};
use crate::Mode;
use crate::audit::{AuditJob, ModeRecord, RECORD_VERSION, rfc3339};
use crate::registry::UnitStatus;

/// Why a mode switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// No selector at all: `--all` must be said.
    #[error("say which containers: --container ID, --namespace NS, --image NAME or --all")]
    NoSelector,
    /// Nothing armed matches.
    #[error("no armed container matches {0}")]
    NoMatch(String),
    /// A prefix that names more than one unit.
    #[error("{prefix:?} names {count} containers ({examples}): give more of the id")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many units it names.
        count: usize,
        /// Some of them.
        examples: String,
    },
    /// The engine refused or is gone.
    #[error(transparent)]
    Arm(#[from] ArmError),
}

/// The units `select` names among `units`.
pub fn select<'a>(
    units: &'a [UnitStatus],
    select: &Selector,
) -> Result<Vec<&'a UnitStatus>, ModeError> {
    if select.container.is_none()
        && select.namespace.is_none()
        && select.image.is_none()
        && !select.all
    {
        return Err(ModeError::NoSelector);
    }
    let mut chosen: Vec<&UnitStatus> = units.iter().collect();
    if let Some(c) = &select.container {
        let id = c.split_once("://").map_or(c.as_str(), |(_, id)| id);
        let exact: Vec<&UnitStatus> = chosen.iter().copied().filter(|u| u.id == id).collect();
        chosen = if exact.is_empty() {
            let by_prefix: Vec<&UnitStatus> = chosen
                .iter()
                .copied()
                .filter(|u| !id.is_empty() && u.id.starts_with(id))
                .collect();
            if by_prefix.len() > 1 {
                return Err(ModeError::Ambiguous {
                    prefix: id.to_string(),
                    count: by_prefix.len(),
                    examples: by_prefix
                        .iter()
                        .take(3)
                        .map(|u| u.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            by_prefix
        } else {
            exact
        };
    }
    if let Some(ns) = &select.namespace {
        chosen.retain(|u| u.namespace.as_deref() == Some(ns.as_str()));
    }
    if let Some(image) = &select.image {
        chosen.retain(|u| {
            u.image_name
                .as_deref()
                .is_some_and(|n| crate::config::matches(image, n))
        });
    }
    if chosen.is_empty() {
        return Err(ModeError::NoMatch(describe(select)));
    }
    Ok(chosen)
}

fn describe(s: &Selector) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &s.container {
        parts.push(format!("container {c:?}"));
    }
    if let Some(n) = &s.namespace {
        parts.push(format!("namespace {n:?}"));
    }
    if let Some(i) = &s.image {
        parts.push(format!("image {i:?}"));
    }
    if parts.is_empty() {
        "--all".into()
    } else {
        parts.join(" and ")
    }
}

impl Armer {
    /// Switches the units `sel` names to `mode` now: the next exec in each is judged in the
    /// new mode, the change is recorded (`"kind": "mode"`), and the unit's record keeps it
    /// so a restarted daemon arms the container in it again. Switching back is the same call.
    pub fn set_mode(
        &self,
        sel: &Selector,
        mode: Mode,
        by: &str,
        reason: &str,
    ) -> Result<Vec<ModeSwitch>, ModeError> {
        let status = self.engine.status().map_err(ArmError::from)?;
        let chosen = select(&status.units, sel)?;
        let mut changes = Vec::new();
        for u in chosen {
            let from = self.engine.set_mode(&u.id, mode).map_err(ArmError::from)?;
            if from != mode {
                if let (Mode::Enforce, Some(pid)) = (mode, u.pid) {
                    if self.memfd_noexec.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Err(e) =
                            self.block_fileless_exec(&u.id, pid, super::ArmOrigin::Rearm)
                        {
                            log::warn!("unit {:?}: vm.memfd_noexec not set: {e}", u.id);
                        }
                    }
                }
                self.audit_mode_change(&u.id, from, mode, by, reason);
            }
            self.keep_mode(&u.id, mode);
            changes.push(ModeSwitch {
                id: u.id.clone(),
                from,
                to: mode,
            });
        }
        Ok(changes)
    }

    /// The unit's record arms it in `mode` from now on (the operator's choice wins over
    /// every rule, as `driftlock arm --mode` does).
    fn keep_mode(&self, id: &str, mode: Mode) {
        let Some(mut record) = self.load_record(id) else {
            return;
        };
        if record.request.mode == Some(mode) {
            return;
        }
        record.request.mode = Some(mode);
        if let Err(e) = self.save_record(&record) {
            log::error!(
                "unit {id:?}: its {mode} mode holds until the daemon restarts, not after: {e}"
            );
        }
    }

    fn audit_mode_change(&self, id: &str, from: Mode, to: Mode, by: &str, reason: &str) {
        log::warn!(
            "unit {id:?}: mode {from} -> {to} by {by}{}",
            if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            }
        );
        self.audit(AuditJob::Mode(ModeRecord {
            v: RECORD_VERSION,
            kind: "mode".into(),
            time: rfc3339(std::time::SystemTime::now()),
            unit: id.to_string(),
            from,
            to,
            by: by.to_string(),
            reason: reason.to_string(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, ns: Option<&str>, image: Option<&str>) -> UnitStatus {
        let mut u: UnitStatus = serde_json::from_value(serde_json::json!({
            "id": id, "image_key": "", "mode": "enforce", "baseline_contents": 0,
            "marks": [], "cache_entries": 0,
            "counters": crate::registry::UnitCounters::default(),
            "cache": crate::verdict::cache::CacheStats::default(),
        }))
        .unwrap();
        u.namespace = ns.map(str::to_string);
        u.image_name = image.map(str::to_string);
        u
    }

    fn ids(r: Result<Vec<&UnitStatus>, ModeError>) -> Vec<String> {
        r.unwrap().iter().map(|u| u.id.clone()).collect()
    }

    #[test]
    fn selectors_name_units_by_id_prefix_namespace_and_image() {
        let units = vec![
            unit("abc123", Some("web"), Some("nginx:1")),
            unit("abd456", Some("web"), Some("redis:7")),
            unit("ffff", Some("batch"), Some("nginx:2")),
        ];
        let sel = |c: Option<&str>, n: Option<&str>, i: Option<&str>, all| Selector {
            container: c.map(str::to_string),
            namespace: n.map(str::to_string),
            image: i.map(str::to_string),
            all,
        };
        assert_eq!(
            ids(select(&units, &sel(Some("abc"), None, None, false))),
            ["abc123"]
        );
        assert_eq!(
            ids(select(
                &units,
                &sel(Some("containerd://ffff"), None, None, false)
            )),
            ["ffff"]
        );
        assert!(matches!(
            select(&units, &sel(Some("ab"), None, None, false)),
            Err(ModeError::Ambiguous { count: 2, .. })
        ));
        assert_eq!(
            ids(select(&units, &sel(None, Some("web"), None, false))),
            ["abc123", "abd456"]
        );
        assert_eq!(
            ids(select(&units, &sel(None, None, Some("nginx:*"), false))),
            ["abc123", "ffff"]
        );
        assert_eq!(
            ids(select(
                &units,
                &sel(None, Some("web"), Some("nginx:*"), false)
            )),
            ["abc123"]
        );
        assert_eq!(ids(select(&units, &sel(None, None, None, true))).len(), 3);
        assert!(matches!(
            select(&units, &sel(None, None, None, false)),
            Err(ModeError::NoSelector)
        ));
        assert!(matches!(
            select(&units, &sel(Some("zzz"), None, None, false)),
            Err(ModeError::NoMatch(_))
        ));
    }
}
