//! The command line: every subcommand and its arguments (clap).

use super::*;

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
    Disarm(DisarmArgs),
    /// Run a command (the daemon) under a keeper that holds its fanotify group across a
    /// crash, as systemd's fd store does: where no service manager runs it (the Kubernetes
    /// pod's first process). A daemon that dies without stopping is started again with the
    /// group; every container's marks stay in the kernel meanwhile and their execs wait.
    Supervise(SuperviseArgs),
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
    Mode(ModeArgs),
    /// List armed units with their mode and counters.
    Status(StatusArgs),
    /// What this node offers and what driftlock will do here: kernel features, the LSM
    /// list, runtimes pointed at driftlock, the daemon, the state directory, the fd store.
    ///
    /// Changes nothing. Exit status: 0 protection will be full; 1 degraded (each gap is
    /// listed); 2 driftlock cannot protect containers on this node. Run as root: the
    /// fanotify and mount probes need CAP_SYS_ADMIN.
    Doctor(DoctorArgs),
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
    Explain(ExplainArgs),
    /// Propose allow entries from audit records (deny and would-deny), per image, as a
    /// configuration fragment to review. Reads JSON lines or `journalctl -o json` output.
    Tune(TuneArgs),
    /// OCI hook run by runc (added by driftlock-runtime): reads the OCI state on stdin.
    ///
    /// createRuntime arms the container and exits 0 only once it is armed; on failure it
    /// prints one line and exits 1, so container creation fails (unless --fail-open).
    /// poststop disarms it (the daemon does so itself when the container's init exits,
    /// where the kernel has pidfds; the wrapper then adds no poststop hook).
    Hook(HookArgs),
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
    BaseSpec(BaseSpecArgs),
    /// Remove the BPF mapping gate the daemon pinned in /sys/fs/bpf/driftlock: its programs
    /// detach and executable mappings are no longer judged in the kernel. The daemon pins
    /// it so that it keeps enforcing across restarts and crashes; run this after stopping
    /// the daemon for good (the package's removal and `systemctl stop` do).
    GateUnpin(GateUnpinArgs),
}
/// The arguments of `driftlock disarm`.
#[derive(Debug, clap::Args)]
pub struct DisarmArgs {
    /// The container (unit) id (`--id` is the same).
    #[arg(
        long = "container",
        visible_alias = "id",
        required_unless_present = "pod"
    )]
    pub id: Option<String>,
    /// A Kubernetes pod's container instead: NAMESPACE/NAME (with -c NAME when the pod
    /// has several).
    #[arg(long, value_name = "NS/NAME", conflicts_with = "id")]
    pub pod: Option<String>,
    /// The container's name in the pod (with --pod).
    #[arg(short = 'c', long = "container-name", requires = "pod")]
    pub container_name: Option<String>,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print JSON for tools (errors too).
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `driftlock supervise`.
#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// Write the daemon's pid here at each start.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// The command, after `--`.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// The arguments of `driftlock mode`.
#[derive(Debug, clap::Args)]
pub struct ModeArgs {
    /// The mode to switch to.
    #[arg(value_enum)]
    pub mode: Mode,
    /// A container id, a unique prefix of one, or containerd://ID.
    #[arg(long, visible_alias = "id")]
    pub container: Option<String>,
    /// Containers of this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Containers of images matching this name (`*` at the end matches any suffix).
    #[arg(long)]
    pub image: Option<String>,
    /// A Kubernetes pod's containers: NAMESPACE/NAME (only the one named with -c NAME).
    #[arg(long, value_name = "NS/NAME", conflicts_with_all = ["container", "namespace", "image"])]
    pub pod: Option<String>,
    /// The container's name in the pod (with --pod).
    #[arg(short = 'c', long = "container-name", requires = "pod")]
    pub container_name: Option<String>,
    /// Every armed container.
    #[arg(long, conflicts_with_all = ["container", "namespace", "image", "pod"])]
    pub all: bool,
    /// Why (recorded with the change).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Print JSON for tools.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The arguments of `driftlock status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON for tools.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The arguments of `driftlock doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON for tools.
    #[arg(long)]
    pub json: bool,
    /// The state directory [default: `state_dir` in the configuration file, else
    /// /var/lib/driftlock].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The daemon's configuration file (read for library_control).
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The arguments of `driftlock explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The file.
    pub path: PathBuf,
    /// The container (unit id).
    #[arg(long = "container", required_unless_present = "pod")]
    pub container: Option<String>,
    /// A Kubernetes pod's container instead: NAMESPACE/NAME (with -c NAME when the pod
    /// has several).
    #[arg(long, value_name = "NS/NAME", conflicts_with = "container")]
    pub pod: Option<String>,
    /// The container's name in the pod (with --pod).
    #[arg(short = 'c', long = "container-name", requires = "pod")]
    pub container_name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Answer under the allow entries this candidate configuration file (with its conf.d)
    /// gives the container, instead of those in force: a dry run before a reload.
    #[arg(long, value_name = "CANDIDATE")]
    pub against: Option<PathBuf>,
    /// The daemon's socket.
    #[command(flatten)]
    pub socket: SocketArg,
}

/// The arguments of `driftlock tune`.
#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Record files (`-` or none: standard input).
    pub files: Vec<PathBuf>,
    /// Instead of proposing, replay the records against this candidate configuration
    /// (with its conf.d): which denials it would lift, and which allowed execs (recorded
    /// with record_misses) it would deny compared with --current.
    #[arg(long, value_name = "CANDIDATE")]
    pub against: Option<PathBuf>,
    /// The configuration in force, for --against.
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG)]
    pub current: PathBuf,
    /// Also propose entries for content the records tie to no image and no namespace
    /// (they apply to every container of the node).
    #[arg(long)]
    pub node_wide: bool,
    /// Print the proposals (or, with --against, the differences) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `driftlock hook`.
#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// The hook stage.
    #[arg(value_enum)]
    pub stage: crate::runtime::hook::Stage,
    /// Let the container start unprotected when the daemon cannot be reached (logged
    /// and recorded). Without it, FAIL_OPEN in /etc/driftlock/runtime.conf decides.
    #[arg(long)]
    pub fail_open: bool,
    /// Seconds to keep trying to reach a daemon that is (re)starting.
    #[arg(long, default_value_t = 5)]
    pub connect_wait_secs: u64,
    /// The daemon's socket (default: SOCKET in /etc/driftlock/runtime.conf, then
    /// $DRIFTLOCK_SOCKET, then /run/driftlock/driftlock.sock), as driftlock-runtime's
    /// hooks and a hooks.d hook (Podman, CRI-O) both read it.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// The arguments of `driftlock base-spec`.
#[derive(Debug, clap::Args)]
pub struct BaseSpecArgs {
    /// The spec to start from (default: standard input). Start from the container
    /// runtime's own default (`ctr oci spec`), not an empty object.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Write the spec here (atomically, mode 0644) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The daemon's socket the hooks use (default: SOCKET in
    /// /etc/driftlock/runtime.conf, then /run/driftlock/driftlock.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The driftlock binary the hooks run (default: DRIFTLOCK in runtime.conf, else
    /// this binary).
    #[arg(long, value_name = "PATH")]
    pub hook_binary: Option<PathBuf>,
}

/// The arguments of `driftlock gate-unpin`.
#[derive(Debug, clap::Args)]
pub struct GateUnpinArgs {
    /// Run as the unit's ExecStopPost=: unpin only when systemd is stopping the unit
    /// by request (a `stop` job for UNIT), not when the daemon failed (it is restarted
    /// and adopts the gate) or is being restarted.
    #[arg(long, value_name = "UNIT")]
    pub if_stopped: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `driftlock evidence ...`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// List kept files, oldest first.
    List {
        /// The daemon's state directory.
        /// [default: `state_dir` in the configuration file, else /var/lib/driftlock]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print JSON for tools (errors too).
        #[arg(long)]
        json: bool,
    },
    /// Show what is known about one (by SHA-256), as JSON.
    Show {
        /// SHA-256 (hex).
        id: String,
        /// The daemon's state directory.
        /// [default: `state_dir` in the configuration file, else /var/lib/driftlock]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Errors as JSON too (the answer is JSON anyway).
        #[arg(long)]
        json: bool,
    },
    /// Copy one out for analysis (mode 0400).
    Export {
        /// SHA-256 (hex).
        id: String,
        /// Destination file.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The daemon's state directory.
        /// [default: `state_dir` in the configuration file, else /var/lib/driftlock]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print what was exported as JSON (errors too).
        #[arg(long)]
        json: bool,
    },
}

/// `driftlock config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file: exit 0 if valid, else print the line and reason, exit 1.
    Check {
        /// The file.
        file: PathBuf,
        /// Print JSON for tools (errors too).
        #[arg(long)]
        json: bool,
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
        /// Print the summary as JSON on stdout (errors too); needs --output.
        #[arg(long, requires = "output")]
        json: bool,
    },
    /// Print a baseline file for people (verifies it first).
    Show {
        /// The file.
        file: PathBuf,
        /// Print JSON for tools (errors too).
        #[arg(long)]
        json: bool,
    },
    /// Compare two baseline files by path; exit status 1 if they differ.
    Diff {
        /// First file.
        a: PathBuf,
        /// Second file.
        b: PathBuf,
        /// Print JSON for tools (errors too).
        #[arg(long)]
        json: bool,
    },
}

/// The socket flag shared by client commands.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's socket [default: `socket` in the configuration file, else
    /// /run/driftlock/driftlock.sock].
    #[arg(long, env = "DRIFTLOCK_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket to talk to: the flag (or `DRIFTLOCK_SOCKET`), else the configuration
    /// file's, else the default.
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| client_config().and_then(|c| c.socket))
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_SOCKET))
    }
}

/// The configuration file a client command reads for the daemon's socket and state
/// directory: `DRIFTLOCK_CONFIG`, else /etc/driftlock/config.toml (`None`: absent or
/// unreadable; the daemon reports a broken file).
pub fn client_config() -> Option<crate::config::Config> {
    let path = std::env::var_os("DRIFTLOCK_CONFIG").map_or_else(
        || PathBuf::from(crate::config::DEFAULT_CONFIG),
        PathBuf::from,
    );
    crate::config::Config::load(&path).ok()
}

/// The state directory a client command reads: the flag, else the configuration file's,
/// else the default.
pub fn state_dir_or_configured(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| client_config().and_then(|c| c.state_dir))
        .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_STATE_DIR))
}
