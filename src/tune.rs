//! `driftlock tune`: from audit records to reviewable allow entries.
//!
//! Operators run a workload in audit mode, then read what enforce mode would have denied,
//! grouped per image and content, with where it ran from, how often, the process chain that
//! ran it and when. The output is a configuration fragment; nothing is allowed until the
//! operator adds it to `/etc/driftlock/config.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use crate::audit::AuditRecord;
use crate::verdict::{Reason, Verdict};

/// One proposed allow entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Proposal {
    /// Image name the records name (`*` when they carry none).
    pub image: String,
    /// The entry's repository scope: the image's name without its tag, so an image bump
    /// keeps the entry.
    pub repository: Option<String>,
    /// The entry's namespace scope (Kubernetes records).
    pub namespace: Option<String>,
    /// SHA-256, if the records have it.
    pub sha256: Option<String>,
    /// BLAKE3.
    pub blake3: Option<String>,
    /// Size in bytes (written into the entry, so that misses of other sizes are still
    /// denied without hashing).
    pub size: Option<u64>,
    /// Paths it was executed from.
    pub paths: BTreeSet<String>,
    /// Units it ran in.
    pub units: BTreeSet<String>,
    /// Process chains (outermost first) and how often each ran it.
    pub chains: BTreeMap<String, u64>,
    /// Times seen.
    pub count: u64,
    /// First and last time seen.
    pub first_seen: String,
    /// Last time seen.
    pub last_seen: String,
}

/// An exec record, or a mapping the gate refused (a library the workload maps: proposed
/// like a program, by its BLAKE3 and size; loader execs are never proposed).
fn parse_record(line: &str) -> Option<AuditRecord> {
    if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
        return Some(r);
    }
    let m = serde_json::from_str::<crate::audit::MappingRecord>(line).ok()?;
    if m.kind != "mapping" || m.rule != "mapping" {
        return None;
    }
    Some(AuditRecord {
        v: m.v,
        time: m.time,
        unit: m.unit,
        image_key: m.image_key,
        image_name: m.image_name,
        k8s_namespace: None,
        k8s_pod: None,
        k8s_container: None,
        identity: None,
        mode: m.mode,
        verdict: m.verdict,
        reason: Reason::NotInBaseline,
        path: m.path,
        tid: m.tid,
        pid: Some(m.pid),
        ppid: None,
        uid: None,
        comm: m.comm,
        cmdline: m.cmdline,
        chain: m.chain,
        blake3: m.blake3,
        sha256: None,
        size: m.size,
        evidence: None,
        rule: Some("mapping".into()),
        detail: None,
        content_unverified: false,
        truncated: false,
    })
}

/// Reads records from JSON lines or a `journalctl -o json` export; returns them and the
/// number of lines that were neither.
pub fn read_records(reader: impl BufRead) -> (Vec<AuditRecord>, usize) {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in reader.lines().map_while(Result::ok) {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(r) = parse_record(&line) {
            records.push(r);
            continue;
        }
        let inner = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| {
                v.get("MESSAGE")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .and_then(|m| parse_record(&m));
        match inner {
            Some(r) => records.push(r),
            None => skipped += 1,
        }
    }
    (records, skipped)
}

/// Groups the denied and would-deny records whose content an allow entry could admit.
pub fn propose(records: &[AuditRecord]) -> Vec<Proposal> {
    propose_scoped(records, false)
}

/// Proposals scoped by namespace and repository (never by exact tag); content the records
/// tie to neither is proposed node-wide only when `node_wide` is asked.
pub fn propose_scoped(records: &[AuditRecord], node_wide: bool) -> Vec<Proposal> {
    let mut by_key: BTreeMap<(String, String, String), Proposal> = BTreeMap::new();
    for r in records {
        let allowable = matches!(
            r.reason,
            Reason::NotInBaseline | Reason::ScriptNotInBaseline | Reason::LibraryNotInBaseline
        );
        if r.verdict == Verdict::Allow || !allowable {
            continue;
        }
        let Some(id) = r.sha256.clone().or_else(|| r.blake3.clone()) else {
            continue;
        };
        let image = r.image_name.clone().unwrap_or_else(|| "*".to_string());
        let repository = r
            .image_name
            .as_deref()
            .map(|i| crate::config::repository_of(i).to_string());
        let namespace = r.k8s_namespace.clone();
        if repository.is_none() && namespace.is_none() && !node_wide {
            continue;
        }
        let mut chain: Vec<String> = r.chain.iter().rev().map(|p| p.comm.clone()).collect();
        if let Some(path) = &r.path {
            chain.push(path.rsplit('/').next().unwrap_or(path).to_string());
        }
        let scope = format!(
            "{}\0{}",
            namespace.as_deref().unwrap_or(""),
            repository.as_deref().unwrap_or("")
        );
        let p = by_key
            .entry((scope, id, String::new()))
            .or_insert_with(|| Proposal {
                image,
                repository,
                namespace,
                sha256: r.sha256.clone(),
                blake3: r.blake3.clone(),
                size: r.size,
                paths: BTreeSet::new(),
                units: BTreeSet::new(),
                chains: BTreeMap::new(),
                count: 0,
                first_seen: r.time.clone(),
                last_seen: r.time.clone(),
            });
        p.count += 1;
        p.paths.extend(r.path.clone());
        p.units.insert(r.unit.clone());
        *p.chains.entry(chain.join(" > ")).or_default() += 1;
        if r.time < p.first_seen {
            p.first_seen = r.time.clone();
        }
        if r.time > p.last_seen {
            p.last_seen = r.time.clone();
        }
    }
    let mut out: Vec<Proposal> = by_key.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.image.cmp(&b.image)));
    out
}

/// What a candidate configuration would change over records (`tune --against`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Denied (or would-deny) execs the candidate would allow: (unit, path, digest).
    pub newly_allowed: Vec<(String, String, String)>,
    /// Allowed execs (recorded with `record_misses`) the current configuration allowed by an
    /// entry and the candidate would deny.
    pub newly_denied: Vec<(String, String, String)>,
    /// Records looked at.
    pub considered: usize,
}

/// Whether `config`'s entries permit a record's content in the record's container.
fn permitted(config: &crate::config::Config, r: &AuditRecord) -> bool {
    let list = config.allowed_for(&crate::config::Identity {
        image: r.image_name.as_deref(),
        namespace: r.k8s_namespace.as_deref(),
        container: r.k8s_container.as_deref(),
    });
    let has = |hex: &Option<String>, set: &[crate::baseline::Digest]| {
        hex.as_deref()
            .and_then(|h| h.parse::<crate::baseline::Digest>().ok())
            .is_some_and(|d| set.contains(&d))
    };
    let parse = |hex: &Option<String>| {
        hex.as_deref()
            .and_then(|h| h.parse::<crate::baseline::Digest>().ok())
    };
    let (blake3, sha256) = (parse(&r.blake3), parse(&r.sha256));
    // Records carry paths escaped; a path glob is matched against that form.
    let at_path = r.path.as_deref().is_some_and(|path| {
        list.at_paths.iter().any(|p| {
            let content = blake3.is_some_and(|b| p.is_content(&b, sha256.as_ref()))
                || (p.sha256.is_some() && p.sha256 == sha256);
            content && crate::config::matches(&p.path, path)
        })
    });
    has(&r.blake3, &list.blake3) || has(&r.sha256, &list.sha256) || at_path
}

/// Replays records against a candidate configuration: which denials it would lift, and
/// which allowed execs it would deny (content the current entries allowed, the candidate's
/// do not).
pub fn compare(
    records: &[AuditRecord],
    current: &crate::config::Config,
    candidate: &crate::config::Config,
) -> Comparison {
    let mut out = Comparison::default();
    for r in records {
        let what = || {
            (
                r.unit.clone(),
                r.path.clone().unwrap_or_default(),
                r.sha256
                    .clone()
                    .or_else(|| r.blake3.clone())
                    .unwrap_or_default(),
            )
        };
        match r.verdict {
            Verdict::Deny | Verdict::WouldDeny => {
                let allowable = matches!(
                    r.reason,
                    Reason::NotInBaseline
                        | Reason::ScriptNotInBaseline
                        | Reason::LibraryNotInBaseline
                );
                out.considered += 1;
                if allowable && permitted(candidate, r) {
                    out.newly_allowed.push(what());
                }
            }
            Verdict::Allow => {
                out.considered += 1;
                if permitted(current, r) && !permitted(candidate, r) {
                    out.newly_denied.push(what());
                }
            }
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Renders proposals as a configuration fragment for review.
pub fn render(proposals: &[Proposal]) -> String {
    let mut out = String::from(
        "# Proposed by `driftlock tune`. Review each entry: keep only programs your workload\n\
         # really creates at run time, then add them to /etc/driftlock/config.toml and reload.\n",
    );
    for p in proposals {
        out.push('\n');
        out.push_str(&format!(
            "# seen {} time(s), {} .. {}\n",
            p.count, p.first_seen, p.last_seen
        ));
        out.push_str(&format!(
            "# paths: {}\n",
            p.paths.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        out.push_str(&format!(
            "# units: {}\n",
            p.units.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        for (chain, n) in &p.chains {
            out.push_str(&format!("# run by: {chain} ({n}x)\n"));
        }
        if p.repository.is_none() && p.namespace.is_none() {
            out.push_str(
                "# (the records name no image or namespace: this entry applies to every container of the node)\n",
            );
        }
        out.push_str("[[allow]]\n");
        if let Some(ns) = &p.namespace {
            out.push_str(&format!("namespace = {}\n", toml_str(ns)));
        }
        if let Some(repo) = &p.repository {
            out.push_str(&format!("repository = {}\n", toml_str(repo)));
        }
        match (&p.sha256, &p.blake3) {
            (Some(s), _) => out.push_str(&format!("sha256 = {}\n", toml_str(s))),
            (None, Some(b)) => out.push_str(&format!("blake3 = {}\n", toml_str(b))),
            (None, None) => {}
        }
        if let Some(n) = p.size {
            out.push_str(&format!("size = {n}\n"));
        }
        let first_path = p.paths.iter().next().cloned().unwrap_or_default();
        out.push_str(&format!(
            "comment = {}\n",
            toml_str(&format!("{first_path} (proposed by driftlock tune)"))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;
    use crate::audit::{ProcessRecord, RECORD_VERSION};

    fn rec(
        unit: &str,
        path: &str,
        sha: &str,
        verdict: Verdict,
        reason: Reason,
        time: &str,
    ) -> AuditRecord {
        let p = |comm: &str| ProcessRecord {
            pid: 1,
            ppid: 0,
            uid: 0,
            comm: comm.into(),
            exe: None,
            cmdline: vec![],
            cmdline_truncated: false,
        };
        AuditRecord {
            v: RECORD_VERSION,
            time: time.into(),
            unit: unit.into(),
            image_key: "k".into(),
            image_name: Some("docker.io/library/postgres:15".into()),
            k8s_namespace: None,
            k8s_pod: None,
            k8s_container: None,
            identity: None,
            mode: Mode::Audit,
            verdict,
            reason,
            path: Some(path.into()),
            tid: 1,
            pid: Some(1),
            ppid: Some(0),
            uid: Some(0),
            comm: Some("sh".into()),
            cmdline: vec![],
            chain: vec![p("sh"), p("postgres")],
            blake3: Some("b".repeat(64)),
            sha256: Some(sha.into()),
            size: Some(1),
            evidence: None,
            rule: None,
            detail: None,
            content_unverified: false,
            truncated: false,
        }
    }

    #[test]
    fn groups_by_image_and_content_and_renders_valid_config() {
        let a = "a".repeat(64);
        let c = "c".repeat(64);
        let records = vec![
            rec(
                "pg-1",
                "/tmp/gen",
                &a,
                Verdict::WouldDeny,
                Reason::NotInBaseline,
                "2026-01-01T00:00:02Z",
            ),
            rec(
                "pg-2",
                "/run/gen",
                &a,
                Verdict::WouldDeny,
                Reason::NotInBaseline,
                "2026-01-01T00:00:01Z",
            ),
            rec(
                "pg-1",
                "/tmp/miner",
                &c,
                Verdict::WouldDeny,
                Reason::NotInBaseline,
                "2026-01-01T00:00:03Z",
            ),
            rec(
                "pg-1",
                "/tmp/x",
                &"d".repeat(64),
                Verdict::Deny,
                Reason::DirectLoader,
                "2026-01-01T00:00:04Z",
            ),
            rec(
                "pg-1",
                "/bin/ls",
                &"e".repeat(64),
                Verdict::Allow,
                Reason::InBaseline,
                "2026-01-01T00:00:05Z",
            ),
        ];
        let props = propose(&records);
        assert_eq!(props.len(), 2, "{props:?}");
        assert_eq!(props[0].count, 2);
        assert_eq!(props[0].paths.len(), 2);
        assert_eq!(props[0].first_seen, "2026-01-01T00:00:01Z");
        assert_eq!(
            props[0].chains.keys().next().map(String::as_str),
            Some("postgres > sh > gen")
        );
        let text = render(&props);
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("fragment")).unwrap();
        assert_eq!(cfg.allow.len(), 2);
        assert!(text.contains(&a) && text.contains(&c));
        // Each entry carries its size, so misses of other sizes stay unhashed.
        assert!(cfg.allow.iter().all(|e| e.size == Some(1)), "{text}");
        let list = cfg.allowed_for(&crate::config::Identity {
            image: Some("docker.io/library/postgres:15"),
            ..Default::default()
        });
        assert!(!list.unsized_entries && list.sizes == vec![1, 1]);
    }

    #[test]
    fn reads_json_lines_and_journal_exports() {
        let r = rec(
            "u",
            "/tmp/p",
            &"a".repeat(64),
            Verdict::Deny,
            Reason::NotInBaseline,
            "t",
        );
        let line = r.to_json();
        let journal =
            serde_json::json!({"MESSAGE": line, "_SYSTEMD_UNIT": "driftlock.service"}).to_string();
        // A library the mapping gate refused is proposed like a program; a loader exec is not.
        let mapping = |rule: &str| {
            format!(
                r#"{{"v":1,"kind":"mapping","time":"t","unit":"u","image_key":"k","image_name":"registry.local/app:3","mode":"audit","verdict":"would-deny","what":"mmap","rule":"{rule}","path":"/tmp/gen.so","file":"0:5:9","blake3":"{}","size":7,"tid":1,"pid":1}}"#,
                "c".repeat(64)
            )
        };
        let input = format!(
            "{line}\n{journal}\nnot json\n\n{}\n{}\n",
            mapping("mapping"),
            mapping("loader")
        );
        let (records, skipped) = read_records(input.as_bytes());
        assert_eq!(records.len(), 3);
        assert_eq!(skipped, 2);
        let props = propose(&records);
        let lib = props
            .iter()
            .find(|p| p.blake3.as_deref() == Some(&*"c".repeat(64)))
            .expect("the library is proposed");
        assert_eq!(lib.size, Some(7));
        assert_eq!(lib.repository.as_deref(), Some("registry.local/app"));
    }

    #[test]
    fn a_candidate_shows_which_denials_it_lifts_and_which_allowed_execs_it_denies() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let denied = rec(
            "u",
            "/tmp/agent.so",
            &a,
            Verdict::Deny,
            Reason::NotInBaseline,
            "t",
        );
        let allowed = rec(
            "u",
            "/tmp/jna.so",
            &b,
            Verdict::Allow,
            Reason::InBaseline,
            "t",
        );
        let entry = |sha: &str| {
            format!("[[allow]]\nrepository = \"docker.io/library/postgres\"\nsha256 = \"{sha}\"\n")
        };
        let current = crate::config::Config::parse(&entry(&b), std::path::Path::new("c")).unwrap();
        let candidate =
            crate::config::Config::parse(&entry(&a), std::path::Path::new("n")).unwrap();
        let c = compare(&[denied, allowed], &current, &candidate);
        assert_eq!(c.considered, 2);
        assert_eq!(
            c.newly_allowed,
            vec![("u".into(), "/tmp/agent.so".into(), a.clone())]
        );
        assert_eq!(
            c.newly_denied,
            vec![("u".into(), "/tmp/jna.so".into(), b.clone())]
        );
    }

    #[test]
    fn proposals_are_scoped_by_namespace_and_repository_never_node_wide_unless_asked() {
        let mut r = rec(
            "u",
            "/tmp/x",
            &"a".repeat(64),
            Verdict::WouldDeny,
            Reason::NotInBaseline,
            "t",
        );
        r.k8s_namespace = Some("payments".into());
        let text = render(&propose(std::slice::from_ref(&r)));
        assert!(
            text.contains("namespace = \"payments\"")
                && text.contains("repository = \"docker.io/library/postgres\""),
            "{text}"
        );
        assert!(!text.contains("image ="), "no exact tag: {text}");
        let cfg = crate::config::Config::parse(&text, std::path::Path::new("fragment")).unwrap();
        let who = |image| crate::config::Identity {
            image: Some(image),
            namespace: Some("payments"),
            container: None,
        };
        assert_eq!(
            cfg.allowed_for(&who("docker.io/library/postgres:16"))
                .sha256
                .len(),
            1,
            "an image bump keeps it"
        );
        r.image_name = None;
        r.k8s_namespace = None;
        assert!(propose(std::slice::from_ref(&r)).is_empty());
        let wide = propose_scoped(std::slice::from_ref(&r), true);
        assert!(render(&wide).contains("every container of the node"));
    }
}
