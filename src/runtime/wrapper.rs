//! `driftlock-runtime`: a runc wrapper that sniffs, patches `config.json`, and `execv`s.
//!
//! It never parses runc's command line beyond what it needs: the subcommand and
//! `--bundle`/`-b`. Everything else is passed to runc exactly as received.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

pub use super::runtime_error::*;
pub use super::spec::*;

/// Default location of the wrapper's settings (`KEY=VALUE` lines).
pub const CONFIG_FILE: &str = "/etc/driftlock/runtime.conf";
/// The hook's time limit given to runc, seconds (a first snapshot of a large image).
pub const CREATE_HOOK_TIMEOUT: u64 = 120;

/// The wrapper's settings: defaults, then `/etc/driftlock/runtime.conf`, then the
/// environment (`DRIFTLOCK_RUNC`, `DRIFTLOCK_BIN`, `DRIFTLOCK_SOCKET`, `DRIFTLOCK_FAIL_OPEN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The real runc (absolute); searched for if unset.
    pub runc: Option<PathBuf>,
    /// The `driftlock` binary the hooks run.
    pub driftlock: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Let a container start unprotected (with a warning) when arming fails.
    pub fail_open: bool,
    /// Refuse new user namespaces to enforce-mode containers that run without a seccomp
    /// profile (a tenant's own user and mount namespaces hold mounts no mark covers).
    pub refuse_user_namespaces: bool,
    /// Kubernetes namespaces whose containers are not armed (`*` ends a prefix).
    pub exempt_namespaces: Vec<String>,
    /// Add a poststop hook that disarms the container: only where the kernel has no
    /// pidfd, through which the daemon sees the container's init exit by itself.
    pub poststop_hook: bool,
}

impl RuntimeConfig {
    /// Defaults: `driftlock` next to this executable, the default socket, fail-closed.
    pub fn defaults() -> Self {
        let driftlock = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("driftlock")))
            .unwrap_or_else(|| PathBuf::from("/usr/bin/driftlock"));
        Self {
            runc: None,
            driftlock,
            socket: PathBuf::from(crate::DEFAULT_SOCKET),
            fail_open: false,
            refuse_user_namespaces: true,
            exempt_namespaces: Vec::new(),
            poststop_hook: !crate::kernel::pidfd::pidfd_supported(),
        }
    }

    /// Applies `KEY=VALUE` settings (`RUNC`, `DRIFTLOCK`, `SOCKET`, `FAIL_OPEN`,
    /// `USER_NAMESPACES`, `EXEMPT_NAMESPACES`).
    pub fn apply_settings(&mut self, text: &str) -> Result<(), RuntimeError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason| RuntimeError::Settings {
                file: PathBuf::from(CONFIG_FILE),
                line: i + 1,
                reason,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(SettingError::NotKeyValue))?;
            self.set(key.trim(), value.trim()).map_err(err)?;
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let abs = |v: &str| {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(SettingError::NotAbsolute(key.to_string()))
            }
        };
        match key {
            "RUNC" => self.runc = Some(abs(value)?),
            "DRIFTLOCK" => self.driftlock = abs(value)?,
            "SOCKET" => self.socket = abs(value)?,
            "FAIL_OPEN" => {
                self.fail_open = match value {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(SettingError::NotABool),
                }
            }
            "USER_NAMESPACES" => {
                self.refuse_user_namespaces = match value {
                    "refuse" => true,
                    "allow" => false,
                    _ => return Err(SettingError::NotRefuseOrAllow),
                }
            }
            "EXEMPT_NAMESPACES" => {
                self.exempt_namespaces = value
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            _ => return Err(SettingError::Unknown(key.to_string())),
        }
        Ok(())
    }

    /// Defaults, the settings file (if present) and the environment.
    pub fn load() -> Result<Self, RuntimeError> {
        let mut cfg = Self::defaults();
        let file = std::env::var_os("DRIFTLOCK_RUNTIME_CONF")
            .map_or(PathBuf::from(CONFIG_FILE), PathBuf::from);
        if let Ok(text) = std::fs::read_to_string(&file) {
            cfg.apply_settings(&text).map_err(|e| match e {
                RuntimeError::Settings { line, reason, .. } => RuntimeError::Settings {
                    file: file.clone(),
                    line,
                    reason,
                },
                other => other,
            })?;
        }
        for (env, key) in [
            ("DRIFTLOCK_RUNC", "RUNC"),
            ("DRIFTLOCK_BIN", "DRIFTLOCK"),
            ("DRIFTLOCK_SOCKET", "SOCKET"),
            ("DRIFTLOCK_FAIL_OPEN", "FAIL_OPEN"),
            ("DRIFTLOCK_USER_NAMESPACES", "USER_NAMESPACES"),
            ("DRIFTLOCK_EXEMPT_NAMESPACES", "EXEMPT_NAMESPACES"),
        ] {
            if let Ok(v) = std::env::var(env) {
                cfg.set(key, &v)
                    .map_err(|reason| RuntimeError::Env { var: env, reason })?;
            }
        }
        Ok(cfg)
    }
}

/// What the wrapper needs to know about a runc invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `create`, `run` or `restore` (a checkpointed container starting again): the bundle
    /// to patch.
    Create {
        /// The bundle directory (`--bundle`, or the current directory).
        bundle: PathBuf,
    },
    /// Anything else: passed through.
    Other,
}

/// runc's global options that take a value (as separate argument).
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

fn flag_name(arg: &[u8]) -> &[u8] {
    let name = arg.split(|b| *b == b'=').next().unwrap_or(arg);
    // urfave/cli accepts both -flag and --flag.
    name.strip_prefix(b"--")
        .or_else(|| name.strip_prefix(b"-"))
        .unwrap_or(name)
}

/// Finds the subcommand and, for `create`/`run`, the bundle (argv without `argv[0]`).
pub fn sniff(args: &[OsString]) -> Invocation {
    let mut i = 0;
    let sub = loop {
        let Some(arg) = args.get(i) else {
            return Invocation::Other;
        };
        let b = arg.as_bytes();
        if b.starts_with(b"-") {
            let takes_value = GLOBAL_WITH_VALUE
                .iter()
                .any(|g| flag_name(g.as_bytes()) == flag_name(b) && !b.contains(&b'='));
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        break b;
    };
    if sub != b"create" && sub != b"run" && sub != b"restore" {
        return Invocation::Other;
    }
    let rest = &args[i + 1..];
    let mut bundle = None;
    let mut j = 0;
    while j < rest.len() {
        let b = rest[j].as_bytes();
        if b == b"--" {
            break;
        }
        if b.starts_with(b"-") && matches!(flag_name(b), b"bundle" | b"b") {
            if let Some(eq) = b.iter().position(|c| *c == b'=') {
                bundle = Some(PathBuf::from(OsStr::from_bytes(&b[eq + 1..])));
            } else if let Some(v) = rest.get(j + 1) {
                bundle = Some(PathBuf::from(v));
                j += 1;
            }
        }
        j += 1;
    }
    Invocation::Create {
        bundle: bundle.unwrap_or_else(|| PathBuf::from(".")),
    }
}

/// Where to look for the real runc when none is configured.
pub const RUNC_CANDIDATES: &[&str] = &[
    "/usr/sbin/runc",
    "/usr/bin/runc",
    "/usr/local/sbin/runc",
    "/usr/local/bin/runc",
];

/// Set in runc's environment by the wrapper: runc never runs a runtime, so finding it set
/// means the "runc" we ran is (a script around) this wrapper.
pub const ACTIVE_ENV: &str = "DRIFTLOCK_RUNTIME_ACTIVE";

/// The real runc: configured (and not this wrapper), or the first candidate that is not
/// this wrapper.
pub fn resolve_runc(cfg: &RuntimeConfig) -> Result<PathBuf, RuntimeError> {
    let me = std::fs::metadata("/proc/self/exe")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if let Some(r) = &cfg.runc {
        if std::fs::metadata(r).is_ok_and(|m| Some((m.dev(), m.ino())) == me) {
            return Err(RuntimeError::RuncIsSelf(r.display().to_string()));
        }
        return Ok(r.clone());
    }
    RUNC_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && Some((m.dev(), m.ino())) != me))
        .ok_or_else(|| RuntimeError::NoRunc(RUNC_CANDIDATES.join(", ")))
}

/// Checks that the hook binary may be written into every container's config: runc runs it
/// as root at each creation, so it must be a root-owned regular file nobody else can
/// write, and executable.
pub fn check_hook_binary(path: &Path) -> Result<(), RuntimeError> {
    let err = |reason: String| RuntimeError::HookBinary {
        path: path.to_path_buf(),
        reason,
    };
    let m = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !m.is_file() {
        return Err(err("not a regular file".into()));
    }
    if m.uid() != 0 {
        return Err(err(format!("owned by uid {}, not root", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(err(format!(
            "mode {:o}: writable by group or others",
            m.mode() & 0o7777
        )));
    }
    if m.mode() & 0o100 == 0 {
        return Err(err("not executable".into()));
    }
    Ok(())
}

/// Runs the wrapper: patch if needed, then `execv` runc. Returns only on failure.
///
/// Only a container creation (`create`, `run`, `restore`) needs the wrapper's settings
/// and the hook: every other subcommand (`state`, `kill`, `delete`, ...) reaches runc even
/// when the settings are broken (with a warning), so containers can still be stopped.
pub fn run(argv: Vec<OsString>) -> RuntimeError {
    let args: Vec<OsString> = argv.into_iter().skip(1).collect();
    if std::env::var_os(ACTIVE_ENV).is_some() {
        return RuntimeError::RuncIsSelf(format!(
            "the runc this wrapper ran ({})",
            std::env::var(ACTIVE_ENV).unwrap_or_default()
        ));
    }
    let invocation = sniff(&args);
    let creates = matches!(invocation, Invocation::Create { .. });
    let cfg = match RuntimeConfig::load() {
        Ok(c) => c,
        Err(e) if creates => return e,
        Err(e) => {
            eprintln!(
                "driftlock-runtime: warning: {e}; passing this call to runc with the default settings"
            );
            RuntimeConfig::defaults()
        }
    };
    let runc = match resolve_runc(&cfg) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Invocation::Create { bundle } = invocation {
        if let Err(e) = check_hook_binary(&cfg.driftlock) {
            return e;
        }
        // Fail-open is for a daemon that cannot be reached (the hook decides that); a
        // bundle that cannot carry the hook fails the container whatever the setting.
        if let Err(e) = patch_bundle(&bundle, &cfg) {
            return e;
        }
    }
    let err = std::process::Command::new(&runc)
        .arg0("runc")
        .args(&args)
        .env(ACTIVE_ENV, &runc)
        .exec();
    RuntimeError::Exec {
        path: runc,
        source: err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn sniffs_containerd_style_create() {
        let a = args(&[
            "--root",
            "/run/containerd/runc/default",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "c1",
        ]);
        assert_eq!(
            sniff(&a),
            Invocation::Create {
                bundle: "/b".into()
            }
        );
        assert_eq!(
            sniff(&args(&["run", "-b=/x", "id"])),
            Invocation::Create {
                bundle: "/x".into()
            }
        );
        assert_eq!(
            sniff(&args(&["--debug", "run", "-bundle", "/y", "id"])),
            Invocation::Create {
                bundle: "/y".into()
            }
        );
        assert_eq!(
            sniff(&args(&["--root=/r", "create", "id"])),
            Invocation::Create { bundle: ".".into() }
        );
        assert_eq!(
            sniff(&args(&["--root", "/r", "start", "c1"])),
            Invocation::Other
        );
        assert_eq!(
            sniff(&args(&["--log", "create", "state", "c1"])),
            Invocation::Other,
            "a value, not the subcommand"
        );
        assert_eq!(sniff(&args(&[])), Invocation::Other);
        assert_eq!(sniff(&args(&["--version"])), Invocation::Other);
    }

    fn cfg() -> RuntimeConfig {
        RuntimeConfig {
            runc: None,
            driftlock: "/usr/bin/driftlock".into(),
            socket: "/run/driftlock/driftlock.sock".into(),
            fail_open: false,
            refuse_user_namespaces: true,
            exempt_namespaces: Vec::new(),
            poststop_hook: true,
        }
    }

    #[test]
    fn a_container_without_a_profile_gets_one_refusing_new_user_namespaces_only() {
        let mut v: Value =
            serde_json::from_str(r#"{"linux":{"namespaces":[{"type":"pid"}]}}"#).unwrap();
        assert!(add_user_namespace_filter(&mut v));
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = sc["syscalls"].as_array().unwrap();
        assert_eq!(rules[0]["names"], json!(["unshare", "clone"]));
        assert_eq!(rules[0]["args"][0]["value"], CLONE_NEWUSER);
        assert_eq!(rules[0]["args"][0]["valueTwo"], CLONE_NEWUSER);
        assert_eq!(rules[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(rules[1]["errnoRet"], libc::ENOSYS);
        assert_eq!(
            v["linux"]["namespaces"][0]["type"], "pid",
            "the rest survives"
        );
        // A profile of the runtime's own (Docker's, RuntimeDefault) is left as it is.
        let mut docker: Value =
            serde_json::from_str(r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO"}}}"#)
                .unwrap();
        assert!(!add_user_namespace_filter(&mut docker));
        assert_eq!(
            docker["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        // No "linux" at all: one is made.
        let mut bare = json!({});
        assert!(add_user_namespace_filter(&mut bare));
        assert!(bare["linux"]["seccomp"].is_object());
        let mut cfg = RuntimeConfig::defaults();
        cfg.apply_settings("USER_NAMESPACES=allow\n").unwrap();
        assert!(!cfg.refuse_user_namespaces);
        assert!(cfg.apply_settings("USER_NAMESPACES=maybe\n").is_err());
    }

    #[test]
    fn a_planted_look_alike_hook_does_not_keep_ours_out() {
        // A bundle whose author put its own "driftlock" hook first: ours is still added.
        let mut v: Value = serde_json::from_str(
            r#"{"hooks":{"createRuntime":[{"path":"/tmp/x/driftlock","args":["driftlock","hook","createRuntime"]}],
                         "poststop":[{"path":"/tmp/x/driftlock","args":["driftlock","hook","poststop"]}]}}"#,
        )
        .unwrap();
        assert!(add_hooks(&mut v, &cfg()).unwrap());
        let first = &v["hooks"]["createRuntime"][0];
        assert_eq!(first["path"], "/usr/bin/driftlock");
        assert_eq!(v["hooks"]["createRuntime"].as_array().unwrap().len(), 2);
        assert!(
            v["hooks"]["poststop"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["path"] == "/usr/bin/driftlock")
        );
        // Ours already there: nothing changes.
        assert!(!add_hooks(&mut v, &cfg()).unwrap());
    }

    #[test]
    fn hooks_are_added_once_and_unknown_fields_survive() {
        let mut v: Value = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","x-vendor":{"keep":[1,2]},"process":{"args":["sh"]},
                "hooks":{"createRuntime":[{"path":"/other/hook"}],"prestart":[{"path":"/p"}]}}"#,
        )
        .unwrap();
        assert!(add_hooks(&mut v, &cfg()).unwrap());
        assert!(!add_hooks(&mut v, &cfg()).unwrap(), "idempotent");
        let create = v["hooks"]["createRuntime"].as_array().unwrap();
        assert_eq!(create.len(), 2);
        assert_eq!(create[0]["path"], "/usr/bin/driftlock");
        assert_eq!(create[0]["args"][2], "createRuntime");
        assert!(create[0].get("env").is_none(), "hooks get no environment");
        assert_eq!(create[1]["path"], "/other/hook");
        assert_eq!(v["hooks"]["poststop"][0]["args"][2], "poststop");
        assert_eq!(v["x-vendor"]["keep"][1], 2);
        assert_eq!(v["hooks"]["prestart"][0]["path"], "/p");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "ociVersion", "key order kept");
        // Where the daemon watches the container's init by pidfd and that init is its own
        // PID namespace's: no poststop process.
        let own = json!({"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "pid"}]}});
        let mut v = own.clone();
        let pidfd = RuntimeConfig {
            poststop_hook: false,
            ..cfg()
        };
        assert!(add_hooks(&mut v, &pidfd).unwrap());
        assert!(v["hooks"].get("poststop").is_none(), "{v}");
        assert_eq!(v["hooks"]["createRuntime"][0]["args"][2], "createRuntime");
        // A shared (or the host's) PID namespace: the container's processes may outlive its
        // init, so the poststop hook disarms it.
        for linux in [
            json!({"namespaces": [{"type": "pid", "path": "/proc/42/ns/pid"}]}),
            json!({"namespaces": [{"type": "mount"}]}),
            json!({}),
        ] {
            let mut v = json!({"ociVersion": "1.0.2", "linux": linux});
            assert!(add_hooks(&mut v, &pidfd).unwrap());
            assert_eq!(v["hooks"]["poststop"][0]["args"][2], "poststop", "{v}");
        }
    }

    #[test]
    fn malformed_configs_are_refused() {
        assert!(add_hooks(&mut json!([1]), &cfg()).is_err());
        assert!(add_hooks(&mut json!({"hooks": 3}), &cfg()).is_err());
        assert!(add_hooks(&mut json!({"hooks": {"poststop": {}}}), &cfg()).is_err());
    }

    #[test]
    fn settings_file() {
        let mut c = cfg();
        c.apply_settings("# comment\nRUNC=/opt/runc\nFAIL_OPEN=true\n\nSOCKET = /s\n")
            .unwrap();
        assert_eq!(c.runc.as_deref(), Some(Path::new("/opt/runc")));
        assert!(c.fail_open);
        assert_eq!(c.socket, Path::new("/s"));
        assert!(matches!(
            c.apply_settings("RUNC=relative"),
            Err(RuntimeError::Settings { line: 1, .. })
        ));
        assert!(matches!(
            c.apply_settings("\nBOGUS=1"),
            Err(RuntimeError::Settings { line: 2, .. })
        ));
        assert!(c.apply_settings("novalue").is_err());
    }

    #[test]
    fn bundle_is_patched_atomically_with_its_mode() {
        let dir = std::env::temp_dir().join(format!("driftlock-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), br#"{"ociVersion":"1.0.2"}"#).unwrap();
        std::fs::set_permissions(
            dir.join("config.json"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(patch_bundle(&dir, &cfg()).unwrap());
        assert!(!patch_bundle(&dir, &cfg()).unwrap());
        let meta = std::fs::metadata(dir.join("config.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["hooks"]["createRuntime"][0]["args"][1], "hook");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::write(dir.join("config.json"), b"{not json").unwrap();
        assert!(matches!(
            patch_bundle(&dir, &cfg()),
            Err(RuntimeError::Config { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
