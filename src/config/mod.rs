//! `/etc/driftlock/config.toml`: one file for every daemon setting, per-image and
//! per-namespace modes, and operator allow entries.
//!
//! Every key is optional (defaults are built in), unknown keys and bad values are refused
//! with their line, and command-line flags override the file. On SIGHUP the daemon reads
//! the file again and applies the mode rules to containers armed from then on and the
//! allow entries to every armed container; marks are never dropped.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Mode;
use crate::baseline::Digest;

mod allow;
mod delegated;
mod memory;

pub use allow::*;
use delegated::*;
pub use memory::*;

/// Default location.
pub const DEFAULT_CONFIG: &str = "/etc/driftlock/config.toml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Syntax, an unknown key or a bad value (the message names the line).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
}

/// A mode rule: containers whose image (or namespace) matches `name` get `mode`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRule {
    /// Image name or Kubernetes namespace; `*` at the end matches any suffix.
    pub name: String,
    /// The mode.
    pub mode: Mode,
}

fn de_log_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = String::deserialize(d)?;
    match v.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" | "off" => Ok(Some(v)),
        _ => Err(serde::de::Error::custom(format!(
            "{v:?}: use error, warn, info, debug, trace or off"
        ))),
    }
}

fn de_abs_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if !p.is_absolute() && p != Path::new("-") {
        return Err(serde::de::Error::custom(format!(
            "{} is not an absolute path",
            p.display()
        )));
    }
    Ok(Some(p))
}

/// The file's contents. Every daemon flag has a key of the same name (with `_`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--log-level` (error, warn, info, debug, trace).
    #[serde(default, deserialize_with = "de_log_level")]
    pub log_level: Option<String>,
    /// `--socket`.
    #[serde(default, deserialize_with = "de_abs_path")]
    pub socket: Option<PathBuf>,
    /// `--state-dir`.
    #[serde(default, deserialize_with = "de_abs_path")]
    pub state_dir: Option<PathBuf>,
    /// `--mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// `--annotations` (ignore, stricter-only, any).
    #[serde(default)]
    pub annotations: Option<crate::AnnotationPolicy>,
    /// `--audit-log` (`-` for stdout only).
    #[serde(default, deserialize_with = "de_abs_path")]
    pub audit_log: Option<PathBuf>,
    /// `--hash-workers`.
    #[serde(default)]
    pub hash_workers: Option<usize>,
    /// `--hash-timeout-ms`.
    #[serde(default, deserialize_with = "de_positive")]
    pub hash_timeout_ms: Option<u64>,
    /// `--cache-capacity`.
    #[serde(default)]
    pub cache_capacity: Option<usize>,
    /// `--snapshot-threads`.
    #[serde(default)]
    pub snapshot_threads: Option<usize>,
    /// `--memfd-noexec`.
    #[serde(default)]
    pub memfd_noexec: Option<bool>,
    /// `--mapping-gate`.
    #[serde(default)]
    pub mapping_gate: Option<bool>,
    /// `--script-control`.
    #[serde(default)]
    pub script_control: Option<bool>,
    /// `--library-control`.
    #[serde(default)]
    pub library_control: Option<bool>,
    /// `--interpreters`.
    #[serde(default)]
    pub interpreters: Option<Vec<String>>,
    /// `--record-misses`.
    #[serde(default)]
    pub record_misses: Option<bool>,
    /// `--metrics-addr`.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--metrics-token-file`.
    #[serde(default, deserialize_with = "de_abs_path")]
    pub metrics_token_file: Option<PathBuf>,
    /// `--watch-config`.
    #[serde(default)]
    pub watch_config: Option<bool>,
    /// `--falcosidekick-url`.
    #[serde(default)]
    pub falcosidekick_url: Option<String>,
    /// `--indicators`.
    #[serde(default, deserialize_with = "de_abs_path")]
    pub indicators: Option<PathBuf>,
    /// `--evidence-max-file-mb` (0: keep no evidence).
    #[serde(default)]
    pub evidence_max_file_mb: Option<u64>,
    /// `--evidence-max-total-mb`.
    #[serde(default)]
    pub evidence_max_total_mb: Option<u64>,
    /// Per-image modes (first match wins).
    #[serde(default)]
    pub image: Vec<ModeRule>,
    /// Per-namespace modes (first match wins; an image rule wins over a namespace rule).
    #[serde(default)]
    pub namespace: Vec<ModeRule>,
    /// Operator allow entries.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// Images whose containers may make memory-only code (where the mapping gate runs).
    #[serde(default)]
    pub memory: Vec<MemoryRule>,
    /// Files of `conf.d/` merged in (see [`Config::load`]).
    #[serde(skip)]
    pub delegated: Vec<PathBuf>,
    /// Files of `conf.d/` refused, each with its reason (the rest is in force).
    #[serde(skip)]
    pub delegation_errors: Vec<String>,
}

impl Config {
    /// Parses configuration text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        for (i, a) in cfg.allow.iter().enumerate() {
            if a.blake3.is_none() && a.sha256.is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "[[allow]] entry {} (image {:?}) needs blake3 or sha256",
                        i + 1,
                        a.image
                    ),
                });
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a file, then merges the files of `conf.d/` beside it (`*.toml`, in
    /// name order): each names the namespaces it speaks for and holds mode rules and allow
    /// entries for those only. A file that cannot be read, parsed, or reaches outside its
    /// namespaces (or claims one another file claimed) is refused, with its name and line,
    /// in [`Config::delegation_errors`]; the rest is in force. Rules of the main file come
    /// first (a mode rule there wins).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        if let Some(dir) = path.parent().map(|d| d.join("conf.d")) {
            cfg.merge_delegated(&dir);
        }
        Ok(cfg)
    }

    fn merge_delegated(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut claimed: Vec<(String, PathBuf)> = Vec::new();
        for f in files {
            let refuse =
                |line: usize, why: String| format!("{}:{line}: refused: {why}", f.display());
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    self.delegation_errors.push(refuse(1, e.to_string()));
                    continue;
                }
            };
            let d: Delegated = match toml::from_str(&text) {
                Ok(d) => d,
                Err(e) => {
                    let line = e.span().map_or(1, |sp| {
                        text[..sp.start.min(text.len())].lines().count().max(1)
                    });
                    self.delegation_errors
                        .push(refuse(line, e.message().trim_end().replace('\n', " ")));
                    continue;
                }
            };
            if let Some((line, why)) = d.overreach(&text) {
                self.delegation_errors.push(refuse(line, why));
                continue;
            }
            if let Some((ns, other)) = d.namespaces.iter().find_map(|ns| {
                claimed
                    .iter()
                    .find(|(c, _)| c == ns || matches(c, ns) || matches(ns, c))
                    .map(|(_, other)| (ns.clone(), other.clone()))
            }) {
                self.delegation_errors.push(refuse(
                    line_of_table(&text, "namespaces", 0),
                    format!(
                        "namespace {ns:?} is already spoken for by {}",
                        other.display()
                    ),
                ));
                continue;
            }
            if let Some(i) = d
                .allow
                .iter()
                .position(|a| a.blake3.is_none() && a.sha256.is_none())
            {
                self.delegation_errors.push(refuse(
                    line_of_table(&text, "[[allow]]", i),
                    "an allow entry needs blake3 or sha256".into(),
                ));
                continue;
            }
            claimed.extend(d.namespaces.iter().map(|n| (n.clone(), f.clone())));
            self.namespace.extend(d.namespace);
            self.allow.extend(d.allow);
            self.delegated.push(f);
        }
    }

    /// The mode for a container: its annotation, else the first matching image rule, else
    /// the first matching namespace rule, else `default`.
    pub fn mode_for(
        &self,
        annotated: Option<Mode>,
        image: Option<&str>,
        namespace: Option<&str>,
        default: Mode,
    ) -> Mode {
        annotated
            .or_else(|| {
                image.and_then(|i| {
                    self.image
                        .iter()
                        .find(|r| matches(&r.name, i))
                        .map(|r| r.mode)
                })
            })
            .or_else(|| {
                namespace.and_then(|n| {
                    self.namespace
                        .iter()
                        .find(|r| matches(&r.name, n))
                        .map(|r| r.mode)
                })
            })
            .unwrap_or(default)
    }

    /// A digest of the configuration loaded from `path`: the file and every drop-in merged
    /// into it, each by path and content (BLAKE3, the first 16 hex digits). Metrics carry it,
    /// so a fleet shows which nodes run which configuration.
    pub fn files_digest(&self, path: &Path) -> String {
        let mut h = blake3::Hasher::new();
        for p in std::iter::once(path).chain(self.delegated.iter().map(PathBuf::as_path)) {
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            match std::fs::read(p) {
                Ok(bytes) => {
                    h.update(&(bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(_) => {
                    h.update(b"unreadable");
                }
            }
        }
        h.finalize().to_hex()[..16].to_string()
    }

    /// This file without its policy rules (mode rules, allow entries): the daemon settings
    /// alone, which a reload compares.
    pub fn without_policy(&self) -> Config {
        Config {
            image: Vec::new(),
            namespace: Vec::new(),
            allow: Vec::new(),
            memory: Vec::new(),
            delegated: Vec::new(),
            delegation_errors: Vec::new(),
            ..self.clone()
        }
    }

    /// What the `[[memory]]` rules say for a container of `image` (every matching rule).
    pub fn memory_for(&self, image: Option<&str>) -> MemoryChoice {
        let Some(image) = image else {
            return MemoryChoice::default();
        };
        self.memory
            .iter()
            .filter(|r| matches(&r.image, image))
            .fold(MemoryChoice::default(), |c, r| MemoryChoice {
                jit: c.jit || r.jit,
                debugger: c.debugger || r.debugger,
                strict: c.strict || r.strict,
                own_filesystems: c.own_filesystems || r.own_filesystems,
            })
    }

    /// Patterns that can match nothing, each with why (`config check` warns of them).
    pub fn unmatchable_patterns(&self) -> Vec<String> {
        let rules = self
            .namespace
            .iter()
            .filter_map(|r| unmatchable_namespace(&r.name));
        let entries = self.allow.iter().enumerate().filter_map(|(i, a)| {
            a.unmatchable()
                .map(|why| format!("allow entry {}: {why}", i + 1))
        });
        rules.chain(entries).collect()
    }

    /// The allow entries that apply to the container `who`.
    pub fn allowed_for(&self, who: &Identity<'_>) -> AllowList {
        let mut list = AllowList::default();
        for a in &self.allow {
            if a.applies_to(who) {
                match &a.path {
                    None => {
                        list.blake3.extend(a.blake3);
                        list.sha256.extend(a.sha256);
                    }
                    Some(path) => list.at_paths.push(PathScoped {
                        blake3: a.blake3,
                        sha256: a.sha256,
                        path: path.clone(),
                    }),
                }
                match a.size {
                    Some(n) => list.sizes.push(n),
                    None => list.unsized_entries = true,
                }
            }
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conf_d_file_speaks_for_its_namespaces_only_and_a_bad_one_leaves_the_rest() {
        let dir = std::env::temp_dir().join(format!("driftlock-confd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let main = dir.join("config.toml");
        std::fs::write(&main, "mode = \"enforce\"\n").unwrap();
        let a = "a".repeat(64);
        std::fs::write(
            dir.join("conf.d/10-payments.toml"),
            format!("namespaces = [\"payments\", \"payments-*\"]\n\n[[namespace]]\nname = \"payments-batch\"\nmode = \"audit\"\n\n[[allow]]\nnamespace = \"payments\"\nrepository = \"registry.local/api\"\nsha256 = \"{a}\"\n"),
        )
        .unwrap();
        // Reaches into `web` on its second entry (line 9).
        std::fs::write(
            dir.join("conf.d/20-sneaky.toml"),
            format!("namespaces = [\"search\"]\n\n[[allow]]\nnamespace = \"search\"\nsha256 = \"{a}\"\n\n\n\n[[allow]]\nnamespace = \"web\"\nsha256 = \"{a}\"\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("conf.d/30-again.toml"),
            format!("namespaces = [\"payments-api\"]\n[[allow]]\nnamespace = \"payments-api\"\nsha256 = \"{a}\"\n"),
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/40-broken.toml"), "namespaces = [\"x\"\n").unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!(c.delegated.len(), 1, "{:?}", c.delegation_errors);
        assert_eq!(c.allow.len(), 1);
        assert_eq!(c.delegation_errors.len(), 3, "{:?}", c.delegation_errors);
        assert!(
            c.delegation_errors[0].contains("20-sneaky.toml:9: refused"),
            "{:?}",
            c.delegation_errors
        );
        assert!(c.delegation_errors[0].contains("\"web\""));
        assert!(
            c.delegation_errors[1].contains("30-again.toml")
                && c.delegation_errors[1].contains("already spoken for")
        );
        assert!(c.delegation_errors[2].contains("40-broken.toml"));
        let who = |ns| Identity {
            image: Some("registry.local/api:7"),
            namespace: Some(ns),
            container: None,
        };
        assert_eq!(c.allowed_for(&who("payments")).sha256.len(), 1);
        assert!(c.allowed_for(&who("web")).sha256.is_empty());
        assert_eq!(
            c.mode_for(None, None, Some("payments-batch"), Mode::Enforce),
            Mode::Audit
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn img(image: &str) -> Identity<'_> {
        Identity {
            image: Some(image),
            ..Default::default()
        }
    }

    #[test]
    fn globs_match_anywhere() {
        assert!(matches("*postgres*", "docker.io/library/postgres:16"));
        assert!(matches("app:1.?", "app:1.2") && !matches("app:1.?", "app:1.23"));
        assert!(matches("*", "") && matches("a*b*c", "axxbyyc") && !matches("a*b*c", "axxbyy"));
        assert!(matches("name*", "name") && !matches("name", "names"));
    }

    #[test]
    fn repositories_drop_the_tag_and_digest_not_the_registry_port() {
        assert_eq!(
            repository_of("registry:5000/team/app:1.2"),
            "registry:5000/team/app"
        );
        assert_eq!(
            repository_of("docker.io/library/postgres@sha256:ab"),
            "docker.io/library/postgres"
        );
        assert_eq!(repository_of("app"), "app");
        assert_eq!(repository_of("registry:5000/app"), "registry:5000/app");
    }

    #[test]
    fn scoped_entries_apply_only_where_every_scope_matches() {
        let c = Config::parse(
            "[[allow]]\nnamespace = \"payments\"\nrepository = \"registry.local/api\"\nsha256 = \"{}\"\n[[allow]]\ncontainer = \"agent-*\"\nblake3 = \"{}\"\n"
                .replacen("{}", &"a".repeat(64), 1)
                .replacen("{}", &"b".repeat(64), 1)
                .as_str(),
            Path::new("c.toml"),
        )
        .unwrap();
        let who = |image, ns, ctr| Identity {
            image: Some(image),
            namespace: Some(ns),
            container: Some(ctr),
        };
        // The repository entry survives a tag change, in its namespace only.
        assert_eq!(
            c.allowed_for(&who("registry.local/api:1", "payments", "api"))
                .sha256
                .len(),
            1
        );
        assert_eq!(
            c.allowed_for(&who("registry.local/api:2", "payments", "api"))
                .sha256
                .len(),
            1
        );
        assert!(
            c.allowed_for(&who("registry.local/api:2", "web", "api"))
                .sha256
                .is_empty()
        );
        assert!(
            c.allowed_for(&who("registry.local/web:2", "payments", "api"))
                .sha256
                .is_empty()
        );
        assert_eq!(c.allowed_for(&who("x", "y", "agent-apm")).blake3.len(), 1);
        assert!(c.allowed_for(&who("x", "y", "app")).blake3.is_empty());
        assert!(!c.allow[0].is_node_wide());
    }

    #[test]
    fn path_scoped_entries_are_kept_apart_and_unmatchable_patterns_are_named() {
        let a = "a".repeat(64);
        let c = Config::parse(
            &format!("[[namespace]]\nname = \"Payments\"\nmode = \"audit\"\n[[allow]]\npath = \"/tmp/jna*/libjnidispatch.so\"\nsha256 = \"{a}\"\nsize = 9\n[[allow]]\nrepository = \"registry.local/api:1\"\nsha256 = \"{a}\"\n[[allow]]\npath = \"tmp/x\"\nsha256 = \"{a}\"\n"),
            Path::new("c.toml"),
        )
        .unwrap();
        let list = c.allowed_for(&Identity::default());
        assert!(
            list.sha256.is_empty(),
            "a path-scoped entry is not content anywhere"
        );
        assert_eq!(list.at_paths.len(), 2);
        assert!(list.needs_sha256());
        let scoped = &list.at_paths[0];
        assert!(scoped.admits_path(b"/tmp/jna123/libjnidispatch.so"));
        assert!(!scoped.admits_path(b"/var/tmp/libjnidispatch.so"));
        assert!(scoped.is_content(&Digest([1; 32]), Some(&a.parse().unwrap())));
        let warnings = c.unmatchable_patterns();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("\"Payments\""), "{warnings:?}");
        assert!(
            warnings[1].starts_with("allow entry 2: repository"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].starts_with("allow entry 3: path"),
            "{warnings:?}"
        );
    }

    #[test]
    fn memory_rules_match_images_and_combine() {
        let c = Config::parse(
            "[[memory]]\nimage = \"app:*\"\nstrict = true\n[[memory]]\nimage = \"app:debug\"\ndebugger = true\n[[memory]]\nimage = \"jit\"\njit = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let m = c.memory_for(Some("app:debug"));
        assert!(m.strict && m.debugger && !m.jit);
        assert!(c.memory_for(Some("jit")).jit);
        assert!(!c.memory_for(Some("jit")).own_filesystems);
        assert_eq!(c.memory_for(None), MemoryChoice::default());
        let builder = Config::parse(
            "[[memory]]\nimage = \"buildkit*\"\nown_filesystems = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(builder.memory_for(Some("buildkit:0.12")).own_filesystems);
        assert!(c.without_policy().memory.is_empty());
        assert!(
            Config::parse(
                "[[memory]]\nimage = \"x\"\nfast = true\n",
                Path::new("c.toml")
            )
            .is_err()
        );
    }

    const GOOD: &str = r#"
socket = "/run/x.sock"
mode = "enforce"
hash_timeout_ms = 500
interpreters = ["sh", "python*"]

[[image]]
name = "docker.io/library/postgres:*"
mode = "audit"

[[namespace]]
name = "kube-system"
mode = "audit"

[[allow]]
image = "docker.io/library/postgres:*"
sha256 = "a3d987dd3f9ec0610dc13b7fdccef84895628065434f44247a65ef0d2a341b3c"
comment = "pg_upgrade helper built at runtime"
"#;

    #[test]
    fn parses_and_resolves_modes_and_allow_entries() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.hash_timeout_ms, Some(500));
        assert_eq!(
            c.mode_for(
                None,
                Some("docker.io/library/postgres:16"),
                None,
                Mode::Enforce
            ),
            Mode::Audit
        );
        assert_eq!(
            c.mode_for(
                Some(Mode::Enforce),
                Some("docker.io/library/postgres:16"),
                None,
                Mode::Enforce
            ),
            Mode::Enforce
        );
        assert_eq!(
            c.mode_for(None, Some("nginx"), Some("kube-system"), Mode::Enforce),
            Mode::Audit
        );
        assert_eq!(
            c.mode_for(None, Some("nginx"), Some("default"), Mode::Enforce),
            Mode::Enforce
        );
        assert_eq!(
            c.allowed_for(&img("docker.io/library/postgres:15"))
                .sha256
                .len(),
            1
        );
        assert!(c.allowed_for(&img("nginx")).is_empty());
        assert!(c.allowed_for(&Identity::default()).is_empty());
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, Path::new("/etc/driftlock/config.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let e = error_of("mode = \"enforce\"\nbogus_key = 1\n");
        assert!(e.contains("line 2") && e.contains("bogus_key"), "{e}");
        let e = error_of("\n\nmode = \"off\"\n");
        assert!(e.contains("line 3") && e.contains("off"), "{e}");
        let e = error_of("hash_timeout_ms = 0\n");
        assert!(e.contains("line 1") && e.contains("greater than 0"), "{e}");
        let e = error_of("socket = \"relative\"\n");
        assert!(e.contains("line 1") && e.contains("absolute"), "{e}");
        let e = error_of("[[allow]]\nimage = \"x\"\nsha256 = \"zz\"\n");
        assert!(e.contains("line 3") && e.contains("64 hex"), "{e}");
        let e = error_of("[[allow]]\nimage = \"x\"\n");
        assert!(e.contains("needs blake3 or sha256"), "{e}");
        let e = error_of("mode = \n");
        assert!(e.contains("line 1"), "{e}");
        assert!(e.starts_with("/etc/driftlock/config.toml: "), "{e}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../systemd/config.toml");
        Config::parse(text, Path::new("systemd/config.toml")).unwrap();
    }
}
