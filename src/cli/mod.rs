//! The command line: argument definitions and dispatch (here) and the commands behind
//! them (`commands`).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::Mode;
use crate::baseline::{Baseline, FormatError, format, store::write_atomic};
use crate::daemon::{DaemonConfig, DaemonError};
use crate::escape::escape_bytes;
use crate::ipc::client::{ClientError, request_until};
use crate::ipc::{ArmRequest, Reply, Request};

mod commands;
use commands::*;

/// driftlock: stop container drift.
///
/// A container may execute a program only if the program's content (BLAKE3) is in the
/// baseline snapshotted from its image. The daemon answers fanotify exec permission events
/// for every armed container; `arm` and `disarm` are how units reach it.
#[derive(Debug, Parser)]
#[command(name = "driftlock", version, propagate_version = true)]
pub struct Cli {
    /// Log level for operational logs on stderr (error, warn, info, debug, trace)
    /// [default: info, or `log_level` in the daemon's configuration file].
    #[arg(long, global = true, env = "DRIFTLOCK_LOG")]
    pub log_level: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the enforcement daemon (needs root: CAP_SYS_ADMIN for fanotify).
    Daemon(DaemonArgs),
    /// Protect a unit: snapshot (or load) the baseline of ROOTFS and mark it and every --mount.
    ///
    /// Returns only when the marks are in place. Each path must be a mount point.
    Arm(ArmArgs),
    /// Stop protecting a unit.
    Disarm {
        /// The container (unit) id (`--id` is the same).
        #[arg(
            long = "container",
            visible_alias = "id",
            required_unless_present = "pod"
        )]
        id: Option<String>,
        /// A Kubernetes pod's container instead: NAMESPACE/NAME (with -c NAME when the pod
        /// has several).
        #[arg(long, value_name = "NS/NAME", conflicts_with = "id")]
        pod: Option<String>,
        /// The container's name in the pod (with --pod).
        #[arg(short = 'c', long = "container-name", requires = "pod")]
        container_name: Option<String>,
        /// The daemon's socket.
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Run a command (the daemon) under a keeper that holds its fanotify group across a
    /// crash, as systemd's fd store does: where no service manager runs it (the Kubernetes
    /// pod's first process). A daemon that dies without stopping is started again with the
    /// group; every container's marks stay in the kernel meanwhile and their execs wait.
    Supervise {
        /// Write the daemon's pid here at each start.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// The command, after `--`.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Switch running containers to audit or enforce mode now (break-glass, and back).
    ///
    /// The next exec in each selected container is judged in the new mode. The change is
    /// recorded (a "mode" record: who, when, from, to), kept across a daemon restart, and
    /// reverted by the same command with the other mode. Containers started later follow
    /// the rules of the configuration file as before.
    #[command(after_help = "Examples:
  driftlock mode audit --container 3f2a --reason 'false denials in checkout'
  driftlock mode audit --namespace shop
  driftlock mode audit --pod shop/checkout-7d9f -c web
  driftlock mode enforce --all")]
    Mode {
        /// The mode to switch to.
        #[arg(value_enum)]
        mode: Mode,
        /// A container id, a unique prefix of one, or containerd://ID.
        #[arg(long, visible_alias = "id")]
        container: Option<String>,
        /// Containers of this Kubernetes namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Containers of images matching this name (`*` at the end matches any suffix).
        #[arg(long)]
        image: Option<String>,
        /// A Kubernetes pod's containers: NAMESPACE/NAME (only the one named with -c NAME).
        #[arg(long, value_name = "NS/NAME", conflicts_with_all = ["container", "namespace", "image"])]
        pod: Option<String>,
        /// The container's name in the pod (with --pod).
        #[arg(short = 'c', long = "container-name", requires = "pod")]
        container_name: Option<String>,
        /// Every armed container.
        #[arg(long, conflicts_with_all = ["container", "namespace", "image", "pod"])]
        all: bool,
        /// Why (recorded with the change).
        #[arg(long, default_value = "")]
        reason: String,
        /// Print JSON for tools.
        #[arg(long)]
        json: bool,
        /// The daemon's socket.
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List armed units with their mode and counters.
    Status {
        /// Print JSON for tools.
        #[arg(long)]
        json: bool,
        /// The daemon's socket.
        #[command(flatten)]
        socket: SocketArg,
    },
    /// What this node offers and what driftlock will do here: kernel features, the LSM
    /// list, runtimes pointed at driftlock, the daemon, the state directory, the fd store.
    ///
    /// Changes nothing. Exit status: 0 protection will be full; 1 degraded (each gap is
    /// listed); 2 driftlock cannot protect containers on this node. Run as root: the
    /// fanotify and mount probes need CAP_SYS_ADMIN.
    Doctor {
        /// Print JSON for tools.
        #[arg(long)]
        json: bool,
        /// The state directory.
        #[arg(long, default_value = crate::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The daemon's configuration file (read for library_control).
        #[arg(long, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The daemon's socket.
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Work with baseline files.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The quarantine: bytes of denied and would-deny programs, kept once by SHA-256.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Would this file run in that container, and why (in the baseline, not, loader rule,
    /// allow entry, not covered)? PATH is as the container sees it.
    Explain {
        /// The file.
        path: PathBuf,
        /// The container (unit id).
        #[arg(long = "container", required_unless_present = "pod")]
        container: Option<String>,
        /// A Kubernetes pod's container instead: NAMESPACE/NAME (with -c NAME when the pod
        /// has several).
        #[arg(long, value_name = "NS/NAME", conflicts_with = "container")]
        pod: Option<String>,
        /// The container's name in the pod (with --pod).
        #[arg(short = 'c', long = "container-name", requires = "pod")]
        container_name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's socket.
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Propose allow entries from audit records (deny and would-deny), per image, as a
    /// configuration fragment to review. Reads JSON lines or `journalctl -o json` output.
    Tune {
        /// Record files (`-` or none: standard input).
        files: Vec<PathBuf>,
        /// Instead of proposing, replay the records against this candidate configuration
        /// (with its conf.d): which denials it would lift, and which allowed execs (recorded
        /// with record_misses) it would deny compared with --current.
        #[arg(long, value_name = "CANDIDATE")]
        against: Option<PathBuf>,
        /// The configuration in force, for --against.
        #[arg(long, default_value = crate::config::DEFAULT_CONFIG)]
        current: PathBuf,
        /// Also propose entries for content the records tie to no image and no namespace
        /// (they apply to every container of the node).
        #[arg(long)]
        node_wide: bool,
    },
    /// OCI hook run by runc (added by driftlock-runtime): reads the OCI state on stdin.
    ///
    /// createRuntime arms the container and exits 0 only once it is armed; on failure it
    /// prints one line and exits 1, so container creation fails (unless --fail-open).
    /// poststop disarms it.
    Hook {
        /// The hook stage.
        #[arg(value_enum)]
        stage: crate::runtime::hook::Stage,
        /// Let the container start unprotected when the daemon cannot be reached (logged
        /// and recorded). Without it, FAIL_OPEN in /etc/driftlock/runtime.conf decides.
        #[arg(long)]
        fail_open: bool,
        /// Seconds to keep trying to reach a daemon that is (re)starting.
        #[arg(long, default_value_t = 5)]
        connect_wait_secs: u64,
        /// The daemon's socket (default: SOCKET in /etc/driftlock/runtime.conf, then
        /// $DRIFTLOCK_SOCKET, then /run/driftlock/driftlock.sock), as driftlock-runtime's
        /// hooks and a hooks.d hook (Podman, CRI-O) both read it.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Print an OCI runtime spec with driftlock's hooks added, for a runtime's base spec:
    /// containerd's CRI `base_runtime_spec` then runs the hooks for every container of
    /// that runtime handler with plain runc, no driftlock-runtime in front of it (four
    /// fewer process starts per container).
    ///
    ///   ctr oci spec | driftlock base-spec -o /etc/containerd/driftlock-base-spec.json
    ///
    /// The hooks take the socket and fail-open from /etc/driftlock/runtime.conf as the
    /// wrapper does. Without the wrapper no seccomp filter is added to containers that run
    /// without one: where the mapping gate does not run, require RuntimeDefault.
    BaseSpec {
        /// The spec to start from (default: standard input). Start from the container
        /// runtime's own default (`ctr oci spec`), not an empty object.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Write the spec here (atomically, mode 0644) instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The daemon's socket the hooks use (default: SOCKET in
        /// /etc/driftlock/runtime.conf, then /run/driftlock/driftlock.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The driftlock binary the hooks run (default: DRIFTLOCK in runtime.conf, else
        /// this binary).
        #[arg(long, value_name = "PATH")]
        hook_binary: Option<PathBuf>,
    },
    /// Remove the BPF mapping gate the daemon pinned in /sys/fs/bpf/driftlock: its programs
    /// detach and executable mappings are no longer judged in the kernel. The daemon pins
    /// it so that it keeps enforcing across restarts and crashes; run this after stopping
    /// the daemon for good (the package's removal and `systemctl stop` do).
    GateUnpin {
        /// Run as the unit's ExecStopPost=: unpin only when systemd is stopping the unit
        /// by request (a `stop` job for UNIT), not when the daemon failed (it is restarted
        /// and adopts the gate) or is being restarted.
        #[arg(long, value_name = "UNIT")]
        if_stopped: Option<String>,
    },
}

/// The socket flag shared by client commands.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's socket.
    #[arg(long, default_value = crate::DEFAULT_SOCKET, env = "DRIFTLOCK_SOCKET")]
    pub socket: PathBuf,
}

/// `driftlock daemon` flags. Each has a key of the same name in the configuration file;
/// a flag given here wins over the file, the file over the built-in default.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Configuration file (default: /etc/driftlock/config.toml, if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket to listen on (created mode 0600) [default: /run/driftlock/driftlock.sock].
    #[arg(long, env = "DRIFTLOCK_SOCKET")]
    pub socket: Option<PathBuf>,
    /// State directory: baselines and armed units [default: /var/lib/driftlock].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Mode for containers no rule matches [default: enforce].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Whether a container's own driftlock.io/mode annotation (or Docker label) may choose
    /// its mode: ignore (the operator's rules decide), stricter-only (it may ask for
    /// enforce, never for audit), any (it wins either way). Pod authors write
    /// annotations: under `any` a tenant can switch its own enforcement off
    /// [default: ignore].
    #[arg(long, value_enum)]
    pub annotations: Option<crate::AnnotationPolicy>,
    /// Audit records: `-` for stdout only, or a FILE appended to as well as stdout [default: -].
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Hashing threads for execs that miss the cache (0 = one per core) [default: 0].
    #[arg(long)]
    pub hash_workers: Option<usize>,
    /// How long an exec may wait for its file to be hashed before policy answers (deny in
    /// enforce mode), in milliseconds [default: 2000].
    #[arg(long)]
    pub hash_timeout_ms: Option<u64>,
    /// Files cached per container [default: 65536].
    #[arg(long)]
    pub cache_capacity: Option<usize>,
    /// Threads per baseline snapshot (0 = one per core) [default: 0].
    #[arg(long)]
    pub snapshot_threads: Option<usize>,
    /// Set vm.memfd_noexec=2 in each container's PID namespace, so fileless execution
    /// (memfd_create + fexecve), which no fanotify mark can see, fails there [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    pub memfd_noexec: Option<bool>,
    /// The BPF LSM mapping gate: refuse executable mappings (LD_PRELOAD, ld.so.preload,
    /// dlopen of dropped libraries) and direct loader execs in the kernel, pinned in
    /// /sys/fs/bpf/driftlock so that it keeps enforcing across restarts. Where the kernel
    /// refuses BPF LSM programs, the daemon says so at start and runs on fanotify alone
    /// [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    pub mapping_gate: Option<bool>,
    /// Script control (opt-in): interpreters may not open files on a container's tmpfs
    /// mounts (/tmp, /run, /dev/shm, /dev) whose content is not in the baseline, so
    /// `sh /tmp/x.sh` fails. Every open on those mounts then waits for the daemon; an
    /// interpreter reading data there (not a script) is refused too. See the README.
    #[arg(long)]
    pub script_control: bool,
    /// Library control (opt-in): an open of an ELF shared object on a container's
    /// filesystems (rootfs, tmpfs, volumes) whose content is not in the baseline is refused
    /// in enforce mode and recorded in audit mode, so LD_PRELOAD, /etc/ld.so.preload and
    /// dlopen of a dropped library fail where the mapping gate cannot load. Every open on
    /// those filesystems then waits for the daemon (cost: see BENCHMARKS.md).
    #[arg(long)]
    pub library_control: bool,
    /// Interpreters for --script-control, by process name (comm); `name*` matches a prefix
    /// [default: sh,ash,dash,bash,zsh,ksh,python*,perl*,ruby*,node,php*,lua*,tclsh*].
    #[arg(long, value_delimiter = ',')]
    pub interpreters: Option<Vec<String>>,
    /// Also record every cache miss that was allowed (verbose; for tuning and debugging).
    /// The log level never changes what is recorded.
    #[arg(long)]
    pub record_misses: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) [default: off]. A
    /// non-loopback address (a pod's or node's) needs --metrics-token-file.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Scrapers must send `Authorization: Bearer <token>` with the token in this file (read
    /// at each scrape, so a rotated Kubernetes Secret takes effect without a restart);
    /// others get 401. Required for a non-loopback --metrics-addr [default: none].
    #[arg(long)]
    pub metrics_token_file: Option<PathBuf>,
    /// Reload the configuration file when it changes, as SIGHUP does: for a Kubernetes
    /// ConfigMap, whose files the kubelet replaces by swapping a `..data` symlink
    /// [default: false].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch_config: Option<bool>,
    /// If a daemon already serves --socket, take its fanotify group (with every
    /// container's marks) and its place without a moment unprotected: the way a new
    /// Kubernetes pod replaces the old one in a rolling update. Without a daemon there,
    /// start as usual.
    #[arg(long)]
    pub take_over: bool,
    /// Also post every record, in Falco's alert shape, to Falcosidekick at this http:// URL
    /// (e.g. http://127.0.0.1:2801/) [default: off].
    #[arg(long)]
    pub falcosidekick_url: Option<String>,
    /// Keep the bytes of denied and would-deny programs up to this size in the quarantine
    /// (STATE_DIR/evidence; 0: keep none) [default: 64].
    #[arg(long)]
    pub evidence_max_file_mb: Option<u64>,
    /// Quarantine size; the oldest evidence is evicted first [default: 512].
    #[arg(long)]
    pub evidence_max_total_mb: Option<u64>,
    /// Known-bad indicator list (SHA-256 or MD5 per line, optional name), checked when a
    /// baseline is snapshotted: matching image files are denied (reason known-bad).
    #[arg(long)]
    pub indicators: Option<PathBuf>,
}

/// The default interpreters of the script control.
pub const DEFAULT_INTERPRETERS: &[&str] = crate::settings::defaults::INTERPRETERS;

impl DaemonArgs {
    /// The settings the command line gives (`None` where a flag is absent).
    pub fn settings(&self) -> crate::settings::Settings {
        crate::settings::Settings {
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            mode: self.mode,
            audit_log: self.audit_log.clone(),
            hash_workers: self.hash_workers,
            hash_timeout_ms: self.hash_timeout_ms,
            cache_capacity: self.cache_capacity,
            snapshot_threads: self.snapshot_threads,
            memfd_noexec: self.memfd_noexec,
            mapping_gate: self.mapping_gate,
            script_control: self.script_control.then_some(true),
            library_control: self.library_control.then_some(true),
            interpreters: self.interpreters.clone(),
            record_misses: self.record_misses.then_some(true),
            metrics_addr: self.metrics_addr,
            metrics_token_file: self.metrics_token_file.clone(),
            watch_config: self.watch_config,
            annotations: self.annotations,
            falcosidekick_url: self.falcosidekick_url.clone(),
            indicators: self.indicators.clone(),
            evidence_max_file_mb: self.evidence_max_file_mb,
            evidence_max_total_mb: self.evidence_max_total_mb,
        }
    }

    /// Merges flags, the configuration file and the defaults ([`crate::settings`]).
    pub fn resolve(
        self,
    ) -> Result<(DaemonConfig, crate::config::Config, Option<PathBuf>), CliError> {
        use crate::config::{Config, DEFAULT_CONFIG};
        let (file, path) = match &self.config {
            Some(p) => (Config::load(p)?, Some(p.clone())),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                Config::load(Path::new(DEFAULT_CONFIG))?,
                Some(PathBuf::from(DEFAULT_CONFIG)),
            ),
            None => (Config::default(), None),
        };
        let flags = self.settings();
        let mode_pinned = flags.mode.is_some();
        let mut config = flags
            .over(crate::settings::Settings::from(&file))
            .resolve(log::log_enabled!(log::Level::Debug))?;
        config.take_over = self.take_over;
        config.mode_pinned = mode_pinned;
        Ok((config, file, path))
    }
}

/// `driftlock arm` flags.
#[derive(Debug, clap::Args)]
pub struct ArmArgs {
    /// The container (unit) id: 1-128 characters from A-Z a-z 0-9 . _ - : @ (`--id` is the
    /// same).
    #[arg(long = "container", visible_alias = "id")]
    pub id: String,
    /// The unit's root filesystem (a mount point, e.g. the container's overlay).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Another mount point of the unit (tmpfs, volume, bind mount); repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<PathBuf>,
    /// Mode for this unit (default: the daemon's).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Image key the baseline is stored under (default: an overlay's lower layers; a plain
    /// directory is snapshotted at every arm).
    #[arg(long)]
    pub image_key: Option<String>,
    /// Image name (for per-image modes and allow entries, and records).
    #[arg(long)]
    pub image_name: Option<String>,
    /// A process of the container: ROOTFS and --mount are then paths in its mount
    /// namespace, reached through /proc/PID/root.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Also arm every mount found under ROOTFS (pseudo filesystems excepted).
    #[arg(long)]
    pub discover_mounts: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// `driftlock evidence ...`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// List kept files, oldest first.
    List {
        /// The daemon's state directory.
        #[arg(long, default_value = crate::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show what is known about one (by SHA-256).
    Show {
        /// SHA-256 (hex).
        id: String,
        /// The daemon's state directory.
        #[arg(long, default_value = crate::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Copy one out for analysis (mode 0400).
    Export {
        /// SHA-256 (hex).
        id: String,
        /// Destination file.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The daemon's state directory.
        #[arg(long, default_value = crate::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// `driftlock config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file: exit 0 if valid, else print the line and reason, exit 1.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `driftlock baseline ...`.
#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Snapshot ROOTFS: hash every regular file with an exec bit (no symlinks followed, no
    /// other filesystems entered).
    Snapshot {
        /// Root of the tree.
        rootfs: PathBuf,
        /// Write the baseline here (default: print it to stdout).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Image key recorded in the file (default: the rootfs path).
        #[arg(long)]
        key: Option<String>,
        /// Hashing threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Also check every file against this known-bad indicator list.
        #[arg(long)]
        indicators: Option<PathBuf>,
    },
    /// Print a baseline file for people (verifies it first).
    Show {
        /// The file.
        file: PathBuf,
    },
    /// Compare two baseline files by path; exit status 1 if they differ.
    Diff {
        /// First file.
        a: PathBuf,
        /// Second file.
        b: PathBuf,
    },
}

/// Errors of CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Running the daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A baseline file.
    #[error("{}: {source}", path.display())]
    Baseline {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The daemon's settings.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The quarantine.
    #[error(transparent)]
    Evidence(#[from] crate::audit::evidence::EvidenceError),
    /// A known-bad indicator list.
    #[error(transparent)]
    Indicators(#[from] crate::baseline::indicators::IndicatorError),
    /// Taking a snapshot.
    #[error(transparent)]
    Snapshot(#[from] crate::baseline::SnapshotError),
    /// Writing a file atomically.
    #[error(transparent)]
    Store(#[from] crate::baseline::store::StoreError),
    /// No evidence under this id.
    #[error("no evidence with id {0}")]
    NoEvidence(String),
    /// No armed container matches (`--pod`).
    #[error("{0}")]
    NoSuchUnit(String),
    /// The daemon answered with a reply of another request.
    #[error("unexpected reply from the daemon: {0}")]
    UnexpectedReply(String),
    /// Arguments clap cannot check alone.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit status for this error: 1 a failure, 3 the daemon cannot be reached, 4 the
    /// daemon refused (or no such container or evidence), 5 an invalid configuration.
    /// (0 is success, 1 also a negative answer, 2 a usage error, from clap.)
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(ClientError::Refused { .. })
            | CliError::NoEvidence(_)
            | CliError::NoSuchUnit(_) => 4,
            CliError::Client(_) => 3,
            CliError::Config(_) | CliError::Settings(_) | CliError::Indicators(_) => 5,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl Cli {
    /// The log level in force: the flag, else (for the daemon) the configuration file's
    /// `log_level`, else `info`. A broken file is reported when the daemon loads it.
    pub fn effective_log_level(&self) -> String {
        if let Some(l) = &self.log_level {
            return l.clone();
        }
        if let Command::Daemon(a) = &self.command {
            let path = a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG));
            if let Ok(c) = crate::config::Config::load(&path) {
                if let Some(l) = c.log_level {
                    return l;
                }
            }
        }
        "info".into()
    }
}

/// Runs a parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Daemon(a) => {
            let (config, policy, path) = a.resolve()?;
            crate::daemon::run(config, policy, path)?;
            Ok(0)
        }
        Command::Evidence(e) => evidence(e),
        Command::Explain {
            path,
            container,
            pod,
            container_name,
            json,
            socket,
        } => {
            let id = commands::chosen_unit(
                &socket.socket,
                container,
                pod.as_deref(),
                container_name.as_deref(),
            )?;
            let req = Request::Explain {
                id,
                path: path_arg(&path),
            };
            let reply = ask(&socket.socket, &req, Duration::from_secs(120))?;
            let Reply::Explained(e) = reply else {
                return Err(unexpected(&reply));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
            } else {
                let verdict = serde_json::to_value(e.verdict)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                println!("{} in {} ({} mode): {verdict}", e.path, e.unit, e.mode);
                println!("  {}", e.why);
                match e.mapping {
                    Some(m) => {
                        let m = serde_json::to_value(m)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        println!(
                            "  mapped executable (dlopen, LD_PRELOAD): {m}: {}",
                            e.mapping_why
                        );
                    }
                    None if !e.mapping_why.is_empty() => {
                        println!(
                            "  mapped executable (dlopen, LD_PRELOAD): {}",
                            e.mapping_why
                        );
                    }
                    None => {}
                }
                println!("  sha256 {}", e.sha256.as_deref().unwrap_or("?"));
                println!("  blake3 {}", e.blake3);
            }
            Ok(if e.verdict == crate::verdict::Verdict::Allow {
                0
            } else {
                1
            })
        }
        Command::Tune {
            files,
            against,
            current,
            node_wide,
        } => {
            let mut records = Vec::new();
            let mut skipped = 0;
            let inputs = if files.is_empty() {
                vec![PathBuf::from("-")]
            } else {
                files
            };
            for f in inputs {
                let (r, s) = if f == Path::new("-") {
                    crate::tune::read_records(std::io::stdin().lock())
                } else {
                    let file = std::fs::File::open(&f).map_err(|source| CliError::Io {
                        path: f.clone(),
                        source,
                    })?;
                    crate::tune::read_records(std::io::BufReader::new(file))
                };
                records.extend(r);
                skipped += s;
            }
            if records.is_empty() {
                // Nothing to learn from: the wrong file, or journalctl without `-o json`.
                eprintln!(
                    "no driftlock records read ({skipped} other lines): give audit records (JSON lines: the audit log, or `journalctl -u driftlock -o json`)"
                );
                return Ok(1);
            }
            if let Some(candidate) = against {
                let candidate = crate::config::Config::load(&candidate)?;
                let current = if current.exists() {
                    crate::config::Config::load(&current)?
                } else {
                    crate::config::Config::default()
                };
                let c = crate::tune::compare(&records, &current, &candidate);
                for (unit, path, digest) in &c.newly_allowed {
                    println!("would allow: {unit} {path} {digest}");
                }
                for (unit, path, digest) in &c.newly_denied {
                    println!("would deny: {unit} {path} {digest}");
                }
                println!(
                    "{} records considered: {} denials the candidate lifts, {} allowed execs it denies",
                    c.considered,
                    c.newly_allowed.len(),
                    c.newly_denied.len()
                );
                return Ok(0);
            }
            let proposals = crate::tune::propose_scoped(&records, node_wide);
            print!("{}", crate::tune::render(&proposals));
            eprintln!(
                "{} records read ({skipped} other lines skipped), {} entries proposed",
                records.len(),
                proposals.len()
            );
            Ok(0)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            // Exactly as the daemon resolves it: a file it would refuse fails here too.
            let checked = crate::config::Config::load(&file).and_then(|c| {
                crate::settings::Settings::from(&c)
                    .resolve(false)
                    .map(|_| c)
                    .map_err(|e| crate::config::ConfigError::Invalid {
                        path: file.clone(),
                        message: format!("the daemon would refuse these settings: {e}"),
                    })
            });
            match checked {
                Ok(c) => {
                    for f in &c.delegated {
                        println!("{}: merged", f.display());
                    }
                    for e in &c.delegation_errors {
                        eprintln!("{e}");
                    }
                    let node_wide = c.allow.iter().filter(|a| a.is_node_wide()).count();
                    if node_wide > 0 {
                        eprintln!(
                            "{}: warning: {node_wide} allow entries name no scope (image, repository, namespace or container): they apply to every container of the node",
                            file.display()
                        );
                    }
                    println!(
                        "{}: {} ({} image rules, {} namespace rules, {} allow entries, {} conf.d files merged, {} refused)",
                        file.display(),
                        if c.delegation_errors.is_empty() {
                            "ok"
                        } else {
                            "errors"
                        },
                        c.image.len(),
                        c.namespace.len(),
                        c.allow.len(),
                        c.delegated.len(),
                        c.delegation_errors.len()
                    );
                    Ok(if c.delegation_errors.is_empty() { 0 } else { 1 })
                }
                Err(e) => {
                    eprintln!("driftlock: {e}");
                    Ok(1)
                }
            }
        }
        Command::Arm(a) => arm(a),
        Command::Disarm {
            id,
            pod,
            container_name,
            socket,
        } => {
            let id = commands::chosen_unit(
                &socket.socket,
                id,
                pod.as_deref(),
                container_name.as_deref(),
            )?;
            match ask(
                &socket.socket,
                &Request::Disarm { id },
                Duration::from_secs(30),
            )? {
                Reply::Disarmed(s) => println!(
                    "disarmed {} (allowed {}, denied {}, would-deny {})",
                    s.id, s.counters.allowed, s.counters.denied, s.counters.would_deny
                ),
                other => return Err(unexpected(&other)),
            }
            Ok(0)
        }
        Command::Mode {
            mode,
            container,
            namespace,
            image,
            pod,
            container_name,
            all,
            reason,
            json,
            socket,
        } => {
            if container.is_none()
                && namespace.is_none()
                && image.is_none()
                && pod.is_none()
                && !all
            {
                return Err(CliError::Usage(
                    "say which containers: --container ID, --namespace NS, --image NAME, --pod NS/NAME or --all"
                        .into(),
                ));
            }
            // A pod's containers, by their ids: one request each.
            let containers: Vec<Option<String>> = match &pod {
                Some(pod) => {
                    commands::units_of_pod(&socket.socket, pod, container_name.as_deref(), false)?
                        .into_iter()
                        .map(Some)
                        .collect()
                }
                None => vec![container],
            };
            let mut mode_changes = Vec::new();
            for container in containers {
                let req = Request::SetMode {
                    mode,
                    select: crate::ipc::UnitSelector {
                        container,
                        namespace: namespace.clone(),
                        image: image.clone(),
                        all,
                    },
                    by: commands::requester(),
                    reason: reason.clone(),
                };
                match ask(&socket.socket, &req, Duration::from_secs(30))? {
                    Reply::ModeSet { mode_changes: c } => mode_changes.extend(c),
                    other => return Err(unexpected(&other)),
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&mode_changes).unwrap_or_default()
                );
                return Ok(0);
            }
            for c in &mode_changes {
                if c.from == c.to {
                    println!("{}: already in {} mode", c.id, c.to);
                } else {
                    println!("{}: {} -> {} mode", c.id, c.from, c.to);
                }
            }
            Ok(0)
        }
        Command::Supervise { pid_file, command } => {
            match crate::supervise::supervise(command, pid_file) {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("driftlock supervise: {e}");
                    Ok(1)
                }
            }
        }
        Command::Status { json, socket } => status(&socket.socket, json),
        Command::Doctor {
            json,
            state_dir,
            config,
            socket,
        } => {
            let report = crate::doctor::examine(&socket.socket, &state_dir, &config);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", crate::doctor::render(&report));
            }
            Ok(report.verdict.exit_code())
        }
        Command::Baseline(b) => baseline(b),
        Command::Hook {
            stage,
            fail_open,
            connect_wait_secs,
            socket,
        } => hook(stage, fail_open, connect_wait_secs, socket),
        Command::BaseSpec {
            from,
            output,
            socket,
            hook_binary,
        } => base_spec(from, output, socket, hook_binary),
        Command::GateUnpin { if_stopped } => {
            let dir = std::path::Path::new(crate::kernel::mapping_gate::DEFAULT_PIN_DIR);
            if let Some(unit) = if_stopped {
                let result = std::env::var("SERVICE_RESULT").ok();
                let jobs = crate::service::list_jobs().unwrap_or_default();
                if !crate::service::stopping_for_good(result.as_deref(), &jobs, &unit) {
                    println!(
                        "{unit} is not stopping for good (result {}): the mapping gate stays pinned for its successor",
                        result.as_deref().unwrap_or("unknown")
                    );
                    return Ok(0);
                }
            }
            if crate::kernel::mapping_gate::unpin(dir) {
                println!("removed the mapping gate pinned in {}", dir.display());
            } else {
                println!("no mapping gate pinned in {}", dir.display());
            }
            Ok(0)
        }
    }
}
