//! The arguments of `driftlock daemon` and `driftlock arm`.

use super::*;

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
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub memfd_noexec: Option<bool>,
    /// Off, over the configuration file: the same as --memfd-noexec=false.
    #[arg(long = "no-memfd-noexec", conflicts_with = "memfd_noexec")]
    pub no_memfd_noexec: bool,
    /// The BPF LSM mapping gate: refuse executable mappings (LD_PRELOAD, ld.so.preload,
    /// dlopen of dropped libraries) and direct loader execs in the kernel, pinned in
    /// /sys/fs/bpf/driftlock so that it keeps enforcing across restarts. Where the kernel
    /// refuses BPF LSM programs, the daemon says so at start and runs on fanotify alone
    /// [default: true].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub mapping_gate: Option<bool>,
    /// Off, over the configuration file: the same as --mapping-gate=false.
    #[arg(long = "no-mapping-gate", conflicts_with = "mapping_gate")]
    pub no_mapping_gate: bool,
    /// Script control (opt-in): interpreters may not open files on a container's tmpfs
    /// mounts (/tmp, /run, /dev/shm, /dev) whose content is not in the baseline, so
    /// `sh /tmp/x.sh` fails. Every open on those mounts then waits for the daemon; an
    /// interpreter reading data there (not a script) is refused too. See the README
    /// [default: false].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub script_control: Option<bool>,
    /// Off, over the configuration file: the same as --script-control=false.
    #[arg(long = "no-script-control", conflicts_with = "script_control")]
    pub no_script_control: bool,
    /// Library control (opt-in): an open of an ELF shared object on a container's
    /// filesystems (rootfs, tmpfs, volumes) whose content is not in the baseline is refused
    /// in enforce mode and recorded in audit mode, so LD_PRELOAD, /etc/ld.so.preload and
    /// dlopen of a dropped library fail where the mapping gate cannot load. Every open on
    /// those filesystems then waits for the daemon (cost: see BENCHMARKS.md)
    /// [default: false].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub library_control: Option<bool>,
    /// Off, over the configuration file: the same as --library-control=false.
    #[arg(long = "no-library-control", conflicts_with = "library_control")]
    pub no_library_control: bool,
    /// Interpreters for --script-control, by process name (comm); `name*` matches a prefix
    /// [default: sh, ash, dash, bash, zsh, ksh, python*, perl*, ruby*, node, php*, lua*, tclsh*].
    #[arg(long, value_delimiter = ',')]
    pub interpreters: Option<Vec<String>>,
    /// Also record every cache miss that was allowed (verbose; for tuning and debugging).
    /// The log level never changes what is recorded [default: false].
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub record_misses: Option<bool>,
    /// Off, over the configuration file: the same as --record-misses=false.
    #[arg(long = "no-record-misses", conflicts_with = "record_misses")]
    pub no_record_misses: bool,
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
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub watch_config: Option<bool>,
    /// Off, over the configuration file: the same as --watch-config=false.
    #[arg(long = "no-watch-config", conflicts_with = "watch_config")]
    pub no_watch_config: bool,
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

/// A boolean setting from `--x[=BOOL]` and `--no-x` (which clap keeps apart).
fn switch(on: Option<bool>, off: bool) -> Option<bool> {
    if off { Some(false) } else { on }
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
            memfd_noexec: switch(self.memfd_noexec, self.no_memfd_noexec),
            mapping_gate: switch(self.mapping_gate, self.no_mapping_gate),
            script_control: switch(self.script_control, self.no_script_control),
            library_control: switch(self.library_control, self.no_library_control),
            interpreters: self.interpreters.clone(),
            record_misses: switch(self.record_misses, self.no_record_misses),
            metrics_addr: self.metrics_addr,
            metrics_token_file: self.metrics_token_file.clone(),
            watch_config: switch(self.watch_config, self.no_watch_config),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> crate::settings::Settings {
        let argv = ["driftlock", "daemon"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Daemon(d)) => d.settings(),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn every_boolean_setting_is_on_off_or_given() {
        let none = settings(&[]);
        for (on, off, value, get) in [
            (
                "--mapping-gate",
                "--no-mapping-gate",
                "=false",
                (|s: &crate::settings::Settings| s.mapping_gate) as fn(&_) -> _,
            ),
            ("--memfd-noexec", "--no-memfd-noexec", "=false", |s| {
                s.memfd_noexec
            }),
            ("--script-control", "--no-script-control", "=true", |s| {
                s.script_control
            }),
            ("--library-control", "--no-library-control", "=true", |s| {
                s.library_control
            }),
            ("--record-misses", "--no-record-misses", "=true", |s| {
                s.record_misses
            }),
            ("--watch-config", "--no-watch-config", "=false", |s| {
                s.watch_config
            }),
        ] {
            assert_eq!(get(&none), None, "{on}: absent leaves it to the file");
            assert_eq!(get(&settings(&[on])), Some(true), "{on}");
            assert_eq!(get(&settings(&[off])), Some(false), "{off}");
            let given = format!("{on}{value}");
            assert_eq!(get(&settings(&[&given])), Some(value == "=true"), "{given}");
            let argv = ["driftlock", "daemon", on, off];
            assert!(Cli::try_parse_from(argv).is_err(), "{on} {off} conflict");
        }
        // The older spelling, a separate value, still reads.
        assert_eq!(
            settings(&["--mapping-gate", "false"]).mapping_gate,
            Some(false)
        );
    }
}
