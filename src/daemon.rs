//! `driftlock daemon`: wires the store, the kernel gate, the engine, the audit writer and
//! the socket together, and stops cleanly on SIGTERM/SIGINT.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Mode;
use crate::arming::Armer;
use crate::audit::{AuditSinks, start_writer};
use crate::baseline::BaselineStore;
use crate::baseline::store::StoreError;
use crate::engine::{Engine, EngineConfig};
use crate::ipc::server::{HandOverHook, Handler, ServerError, bind, bind_replacing, serve};
use crate::ipc::{ErrorCode, ExplainReply, Reply, Request, Response, StatusReply, UnitReply};
use crate::kernel::{FanotifyGate, KernelError};

/// Daemon settings (every one has a flag; defaults are embedded).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// State directory (baselines).
    pub state_dir: PathBuf,
    /// Mode for units that do not ask for one.
    pub mode: Mode,
    /// The command line set `mode`: a reload of the file does not change it.
    pub mode_pinned: bool,
    /// Also append audit records to this file (they always go to stdout).
    pub audit_log: Option<PathBuf>,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Threads per snapshot (0 = one per core).
    pub snapshot_threads: usize,
    /// Set `vm.memfd_noexec=2` in the PID namespace of each container armed by pid.
    pub memfd_noexec: bool,
    /// Load (or adopt) the BPF LSM mapping gate where the kernel allows it.
    pub mapping_gate: bool,
    /// Serve Prometheus metrics here (loopback, or any with a token file).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Scrapers must send the bearer token in this file.
    pub metrics_token_file: Option<PathBuf>,
    /// Reload the configuration file when it changes.
    pub watch_config: bool,
    /// Take the fanotify group and the socket of a daemon already serving it.
    pub take_over: bool,
    /// How far a container's mode annotation counts.
    pub annotations: crate::AnnotationPolicy,
    /// Also post records to Falcosidekick here.
    pub falcosidekick: Option<crate::audit::falco::Endpoint>,
    /// Quarantine limits; `None`: keep no evidence.
    pub evidence: Option<crate::audit::evidence::Limits>,
    /// Known-bad indicators checked at snapshot.
    pub indicators: Option<crate::baseline::indicators::Indicators>,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Kernel interface.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Socket.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Baseline store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log file.
    #[error("cannot open audit log {}: {source}", path.display())]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Threads or signals.
    #[error("daemon setup failed: {0}")]
    Setup(String),
    /// The metrics endpoint.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Who may still change the daemon's state: closed while it hands over to a successor.
#[derive(Default)]
struct Admission {
    /// Set when a hand-over starts: arm and disarm are refused as busy from then on.
    closing: std::sync::atomic::AtomicBool,
    /// Arm and disarm requests under way.
    changing: std::sync::atomic::AtomicUsize,
    /// The successor's connection, waiting for the main thread.
    pending: std::sync::Mutex<Option<std::os::unix::net::UnixStream>>,
    /// The pid the group was handed to (0: not handed over).
    successor: std::sync::atomic::AtomicU32,
    /// That process's start time, so that a reused pid is not taken for it.
    successor_start: std::sync::atomic::AtomicU64,
}

impl Admission {
    fn handle(&self, armer: &Armer, req: Request) -> Response {
        use std::sync::atomic::Ordering::SeqCst;
        let successor = self.successor.load(SeqCst);
        if successor != 0 {
            return Response::err(
                ErrorCode::Busy,
                format!("this daemon handed over to pid {successor}: retry"),
            );
        }
        if !matches!(req, Request::Arm(_) | Request::Disarm { .. }) {
            return handle_request(armer, req);
        }
        self.changing.fetch_add(1, SeqCst);
        let resp = if self.closing.load(SeqCst) {
            Response::err(
                ErrorCode::Busy,
                "the daemon is handing over to its successor: retry",
            )
        } else {
            handle_request(armer, req)
        };
        self.changing.fetch_sub(1, SeqCst);
        resp
    }

    /// Closes to arm and disarm, and waits for those under way (they record their unit,
    /// which the successor re-arms from the state directory).
    fn close_and_drain(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.closing.store(true, SeqCst);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.changing.load(SeqCst) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn handed_over(&self) -> bool {
        self.successor.load(std::sync::atomic::Ordering::SeqCst) != 0
    }

    fn take_pending(&self) -> Option<std::os::unix::net::UnixStream> {
        self.pending.lock().ok()?.take()
    }

    /// A successor asks for the group (on a socket thread).
    fn hand_over_requested(&self, mut stream: std::os::unix::net::UnixStream, group: &OwnedFd) {
        use std::sync::atomic::Ordering::SeqCst;
        let refuse = |stream: &mut std::os::unix::net::UnixStream, msg: String| {
            let mut line =
                serde_json::to_vec(&Response::err(ErrorCode::Conflict, msg)).unwrap_or_default();
            line.push(b'\n');
            let _ = std::io::Write::write_all(stream, &line);
        };
        let successor = self.successor.load(SeqCst);
        if successor != 0 {
            // Handed over before: the group can go again only if that successor died (the
            // same pid with another start time is another process).
            let started = self.successor_start.load(SeqCst);
            if crate::kernel::procfs::start_time(successor as i32)
                .is_some_and(|t| started == 0 || t == started)
            {
                refuse(
                    &mut stream,
                    format!("the fanotify group was handed over to pid {successor}, which runs"),
                );
                return;
            }
            log::warn!(
                "the daemon the group was handed to (pid {successor}) is gone; handing the group on"
            );
            self.send_group(stream, group, true);
            return;
        }
        if self.closing.swap(true, SeqCst) {
            refuse(&mut stream, "a hand-over is already under way".into());
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(stream);
        }
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGUSR1);
    }

    /// Sends the reply with the group attached, and remembers who took it.
    fn send_group(&self, stream: std::os::unix::net::UnixStream, group: &OwnedFd, relayed: bool) {
        use std::os::fd::AsFd;
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map_or(0, |c| c.pid() as u32);
        let reply = Response::ok(&Reply::HandedOver {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            relayed,
        });
        let mut line = serde_json::to_vec(&reply).unwrap_or_default();
        line.push(b'\n');
        if let Err(e) = crate::kernel::fdpass::send_with_fd(&stream, &line, group.as_fd()) {
            log::error!(
                "handing the fanotify group to pid {peer} failed ({e}); holding it (execs wait in the kernel) until a successor takes it"
            );
        }
        // Recorded even if sending failed: the next successor is handed the group as a
        // relay, with unanswered events answered.
        self.successor_start.store(
            crate::kernel::procfs::start_time(peer as i32).unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.successor
            .store(peer.max(1), std::sync::atomic::Ordering::SeqCst);
    }
}

fn handle_request(ctx: &Armer, req: Request) -> Response {
    match req {
        Request::Ping => Response::ok(&Reply::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        Request::Status => match ctx.engine.status() {
            Ok(s) => {
                use std::sync::atomic::Ordering::Relaxed;
                let mut reply = StatusReply::from(&s);
                for u in &mut reply.units {
                    let gated = u.mapping_gate.is_some();
                    u.user_namespaces = u
                        .pid
                        .map(|p| user_namespaces_of(p, gated))
                        .unwrap_or_default();
                }
                reply.pid = std::process::id();
                reply.version = env!("CARGO_PKG_VERSION").into();
                reply.schema = crate::ipc::STATUS_SCHEMA;
                reply.config_reloads = ctx.stats.reloads.load(Relaxed);
                reply.config_reload_errors = ctx.stats.reload_errors.load(Relaxed);
                reply.fail_open_containers = ctx.stats.fail_open.load(Relaxed);
                reply.mapping_gate = ctx.mapping_gate_state.clone();
                let features = ctx
                    .features
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                reply.kernel = features.kernel.clone();
                reply.features = features.features.clone();
                reply.metrics = ctx
                    .metrics_state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                reply.rearm_pending = ctx
                    .pending_units()
                    .into_iter()
                    .map(|p| crate::ipc::PendingReply {
                        id: p.id,
                        attempts: p.attempts,
                        error: p.error,
                    })
                    .collect();
                Response::ok(&Reply::Status(Box::new(reply)))
            }
            Err(e) => Response::err(ErrorCode::from(&e), e.to_string()),
        },
        Request::Explain { id, path } => match ctx.explain(&id, &path) {
            Ok(e) => Response::ok(&Reply::Explained(ExplainReply::from(&e))),
            Err(e) => Response::err(e.code(), e.to_string()),
        },
        Request::Disarm { id } => {
            let result = ctx.engine.disarm(&id);
            if result.is_ok() {
                ctx.forget(&id);
            }
            match result {
                Ok(s) => Response::ok(&Reply::Disarmed(Box::new(UnitReply::from(&s)))),
                Err(e) => Response::err(ErrorCode::from(&e), e.to_string()),
            }
        }
        Request::HandOver => Response::err(ErrorCode::Invalid, "hand-over is not a plain request"),
        Request::SetMode {
            mode,
            select,
            by,
            reason,
        } => match ctx.set_mode(&select, mode, &by, &reason) {
            Ok(mode_changes) => Response::ok(&Reply::ModeSet { mode_changes }),
            Err(e) => {
                let code = match &e {
                    crate::arming::ModeError::NoSelector => ErrorCode::Invalid,
                    crate::arming::ModeError::NoMatch(_)
                    | crate::arming::ModeError::Ambiguous { .. } => ErrorCode::NotFound,
                    crate::arming::ModeError::Arm(a) => a.code(),
                };
                Response::err(code, e.to_string())
            }
        },
        Request::ModeFor { identity } => Response::ok(&Reply::ModeFor {
            mode_for: ctx.mode_for(&identity),
        }),
        Request::Arm(req) => {
            let id = req.id.clone();
            match ctx.arm(*req) {
                Ok(r) => Response::ok(&Reply::Armed(r)),
                Err(e) => {
                    log::warn!(
                        "arm {:?} failed: {e}",
                        id.chars().take(128).collect::<String>()
                    );
                    Response::err(e.code(), format!("arm failed: {e}"))
                }
            }
        }
    }
}

/// Retries failed re-arms, at first every second, backing off to every 30 s while some
/// keep failing.
fn retry_rearms(armer: &Armer, stop: &std::sync::atomic::AtomicBool) {
    use std::time::Duration;
    let mut interval = Duration::from_secs(1);
    let mut waited = Duration::ZERO;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        waited += Duration::from_millis(200);
        if waited < interval {
            continue;
        }
        waited = Duration::ZERO;
        if armer.pending_units().is_empty() {
            interval = Duration::from_secs(1);
            continue;
        }
        if armer.retry_pending() > 0 {
            interval = (interval * 2).min(Duration::from_secs(30));
        }
    }
}

/// What a reload of the configuration file compares with and may change.
#[derive(Clone)]
struct Reload {
    /// The file's daemon settings at start, its policy rules cleared.
    started: crate::config::Config,
    /// The command line chose the default mode: the file's `mode` does not apply.
    mode_pinned: bool,
}

impl Reload {
    /// Reads the configuration file again and applies its mode rules, allow entries and
    /// default mode (unless the command line set it); a broken file is refused and the
    /// running configuration kept. Other settings take effect at the next start.
    fn apply(&self, armer: &Armer, path: &std::path::Path, why: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        match crate::config::Config::load(path) {
            Ok(c) => {
                for e in &c.delegation_errors {
                    log::error!("{why}: {e}; the rest of the configuration is in force");
                }
                if !c.delegation_errors.is_empty() {
                    armer.stats.reload_errors.fetch_add(1, Relaxed);
                }
                let (mut now, mut then) = (c.without_policy(), self.started.clone());
                if !self.mode_pinned {
                    let mode = c.mode.unwrap_or(Mode::Enforce);
                    let was = armer.set_default_mode(mode);
                    if was != mode {
                        log::warn!(
                            "{why}: default mode {was} -> {mode}: containers without a rule or annotation are armed in {mode} mode from now on (running ones keep theirs: `driftlock mode` changes them)"
                        );
                    }
                    (now.mode, then.mode) = (None, None);
                }
                if now != then {
                    log::warn!(
                        "{why}: {} changes daemon settings (socket, metrics, hashing, ...), which take effect at the next start; mode rules, allow entries and the default mode apply now",
                        path.display()
                    );
                }
                let n = armer.apply_policy(c);
                armer.stats.reloads.fetch_add(1, Relaxed);
                log::info!(
                    "{why}: reloaded {}; allow entries updated for {n} armed units",
                    path.display()
                );
            }
            Err(e) => {
                armer.stats.reload_errors.fetch_add(1, Relaxed);
                log::error!("{why}: keeping the running configuration: {e}");
            }
        }
    }
}

/// What identifies one version of the configuration file (following symlinks: a
/// ConfigMap's `config.toml -> ..data/config.toml`, whose `..data` the kubelet swaps).
fn config_version(path: &std::path::Path) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Reloads the configuration file whenever it changes: woken by inotify on its directory,
/// and compared every two seconds in any case (an edit inside a symlinked directory, or
/// a directory inotify cannot watch).
fn watch_config(
    armer: &Armer,
    reload: &Reload,
    path: &std::path::Path,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::time::Duration;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let watch = match crate::kernel::dirwatch::DirWatch::new(&dir) {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                "cannot watch {} ({e}): the configuration is compared every 2 s instead",
                dir.display()
            );
            None
        }
    };
    let mut last = config_version(path);
    let mut missing_said = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match &watch {
            Some(w) => {
                if w.wait(Duration::from_secs(2)) {
                    // A swap is a few renames: let it finish before reading.
                    std::thread::sleep(Duration::from_millis(50));
                    w.wait(Duration::ZERO);
                }
            }
            None => std::thread::sleep(Duration::from_secs(2)),
        }
        let now = config_version(path);
        if now.is_none() {
            if !missing_said {
                log::warn!(
                    "configuration file {} is gone; the running configuration is kept",
                    path.display()
                );
                missing_said = true;
            }
            continue;
        }
        missing_said = false;
        if now != last {
            last = now;
            reload.apply(armer, path, "configuration file changed");
        }
    }
}

/// Binds the socket again if its path disappears while we run: a daemon we started beside
/// (one that could not hand over) removes the path when it stops, and an operator may
/// delete it by mistake. A path that another socket took (a successor's) is left alone.
fn keep_socket(
    path: &std::path::Path,
    stop: &std::sync::atomic::AtomicBool,
    handler: Handler,
    hand_over: HandOverHook,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(250));
        if stop.load(Relaxed) || std::fs::symlink_metadata(path).is_ok() {
            continue;
        }
        match bind(path) {
            Ok(listener) => {
                log::warn!(
                    "the socket {} was removed (by the daemon this one started beside?): listening there again",
                    path.display()
                );
                let (handler, hand_over) = (Arc::clone(&handler), Arc::clone(&hand_over));
                if let Err(e) = std::thread::Builder::new()
                    .name("driftlock-accept".into())
                    .spawn(move || serve(listener, handler, Some(hand_over)))
                {
                    log::error!("cannot serve the socket again: {e}");
                }
            }
            Err(e) => log::error!("the socket was removed and cannot be made again: {e}"),
        }
    }
}

/// Records and counts the containers hooks let start unprotected (fail-open), from the
/// notes they left beside the socket, once a second.
fn record_fail_opens(
    armer: &Armer,
    audit: &crate::audit::AuditQueue,
    dir: &std::path::Path,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        for note in crate::runtime::hook::collect_fail_open_notes(dir) {
            armer.stats.fail_open.fetch_add(1, Relaxed);
            log::error!(
                "container {:?} started UNPROTECTED at {} (fail-open: its hook could not reach the daemon: {})",
                note.id,
                note.time,
                note.reason
            );
            audit.send(crate::audit::AuditJob::Coverage(
                crate::audit::CoverageRecord {
                    v: crate::audit::RECORD_VERSION,
                    kind: "coverage".into(),
                    time: note.time,
                    unit: note.id,
                    event: crate::audit::CoverageEvent::StartedUnprotected,
                    path: "/".into(),
                    fstype: String::new(),
                    mark: None,
                    error: Some(format!("fail-open: {}", note.reason)),
                },
            ));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Whether the container whose first process is `pid` can make its own user namespaces,
/// in words: a seccomp filter in force (driftlock-runtime's refuses them in enforce mode, as
/// Docker's and containerd's default profiles do without `CAP_SYS_ADMIN`), or none; and
/// whether the mapping gate (`gated`) judges code from the mounts such a namespace holds.
fn user_namespaces_of(pid: i32, gated: bool) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    match status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
    {
        Some("2") => "a seccomp filter is in force (driftlock-runtime's refuses new user namespaces; so do Docker's and containerd's default profiles without CAP_SYS_ADMIN)".into(),
        Some("0") if gated => "not refused: no seccomp filter; the container may make its own user and mount namespaces, whose mounts no mark covers: the mapping gate judges code from them (see its line)".into(),
        Some("0") => "not refused: no seccomp filter; the container may make its own user and mount namespaces, whose mounts no mark covers (exec from them is not judged)".into(),
        _ => String::new(),
    }
}

/// Loads (or adopts) the mapping gate; with what it is doing, in words (for `status`).
fn load_mapping_gate(
    library_control: bool,
) -> (Option<crate::kernel::mapping_gate::MappingGate>, String) {
    use crate::kernel::mapping_gate::{DEFAULT_PIN_DIR, MappingGate};
    match MappingGate::load(std::path::Path::new(DEFAULT_PIN_DIR)) {
        Ok(g) => {
            let adopted = if g.adopted() {
                "adopted from the previous daemon"
            } else {
                "loaded"
            };
            let how = if g.follows_backing_files() {
                format!("{adopted}; overlay mprotect judged")
            } else {
                format!("{adopted}; overlay mprotect not judged: no backing files before 6.6")
            };
            log::info!(
                "mapping gate active ({how}, pinned in {DEFAULT_PIN_DIR}): executable mappings and direct loader execs are judged in the kernel"
            );
            (Some(g), format!("active ({how})"))
        }
        Err(e) => {
            let libraries = if library_control {
                "dropped libraries (LD_PRELOAD, /etc/ld.so.preload, dlopen) are judged by library control when opened"
            } else {
                "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library) is not stopped (library_control = true judges it)"
            };
            log::warn!(
                "mapping gate unavailable: {e}. Running on fanotify alone: {libraries}; direct loader execs are judged from the blocked task's kernel stack"
            );
            (None, format!("unavailable: {e}"))
        }
    }
}

/// Refuses to start, in one line, where the core guarantee cannot hold.
fn refuse_without_core_features(
    features: &crate::kernel::features::KernelFeatures,
) -> Result<(), DaemonError> {
    let missing: Vec<String> = features
        .missing_core()
        .map(|f| format!("{} ({})", f.name, f.detail))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DaemonError::Setup(format!(
        "driftlock cannot protect containers on kernel {}: it needs Linux {} or later with fanotify exec permission events, filesystem marks and openat2; missing: {}",
        features.kernel,
        crate::kernel::features::MINIMUM_KERNEL,
        missing.join("; ")
    )))
}

/// The mapping gate as a feature: what the daemon found, not only what the kernel lists.
fn gate_feature(loaded: bool, wanted: bool, state: &str) -> crate::kernel::features::FeatureState {
    crate::kernel::features::FeatureState {
        name: crate::kernel::features::name::MAPPING_GATE.into(),
        available: loaded,
        core: false,
        detail: state.to_string(),
        not_covered: match (loaded, wanted) {
            (true, _) => String::new(),
            (false, true) => "code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library) and, without vm.memfd_noexec, fileless execution; direct loader execs are judged by fanotify from the blocked task".into(),
            (false, false) => "turned off (--mapping-gate false): code mapped without an exec is not judged".into(),
        },
    }
}

/// One warning at start for each optional feature this kernel lacks.
fn warn_degradations(features: &crate::kernel::features::KernelFeatures) {
    use crate::kernel::features::name;
    for f in features.degraded() {
        // The gate's absence has its own warning (load_mapping_gate); a feature only the
        // gate needs is folded into it.
        if [
            name::MAPPING_GATE,
            name::BTF,
            name::BPF_LSM,
            name::BACKING_FILES,
            name::BPF_MEMCG_ACCOUNTING,
        ]
        .contains(&f.name.as_str())
        {
            continue;
        }
        // vm.memfd_noexec has its own (Armer::memfd_noexec_unavailable).
        if f.name == name::MEMFD_NOEXEC {
            continue;
        }
        log::warn!(
            "kernel {}: {} unavailable ({}); not covered: {}",
            features.kernel,
            f.name,
            f.detail,
            f.not_covered
        );
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let soft = hard.min(MAX_FDS);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
    }
}

/// The daemon's own fd limit: every fd number it can hold is below it, so a successor's
/// orphan scan ([`ORPHAN_FD_SCAN`]) covers every event fd a dead predecessor could have held
/// unanswered, whatever `LimitNOFILE` says.
const MAX_FDS: u64 = 65_536;

/// Fd numbers checked for events a dead predecessor left unanswered: all it could hold.
const ORPHAN_FD_SCAN: i32 = (MAX_FDS - 1) as i32;

/// Runs the daemon until SIGTERM or SIGINT. `policy` holds the mode rules and allow
/// entries of the configuration file at `policy_path` (read again on SIGHUP).
pub fn run(
    config: DaemonConfig,
    policy: crate::config::Config,
    policy_path: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    use nix::sys::signal::{SigSet, Signal};
    // Block the stop signals in every thread (threads inherit the mask); the main thread
    // takes them synchronously with sigwait, so no handler runs in async-signal context.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    // Raised by our own socket thread when a successor asks for a hand-over.
    signals.add(Signal::SIGUSR1);
    signals
        .thread_block()
        .map_err(|e| DaemonError::Setup(format!("cannot block signals: {e}")))?;
    raise_fd_limit();
    // Forked now, while the daemon is small: its fork per arm copies its page tables, not
    // a grown daemon's. Only where there is a sysctl to set.
    let memfd_setter = (config.memfd_noexec
        && std::path::Path::new(crate::arming::MEMFD_NOEXEC_SYSCTL).exists())
    .then(crate::kernel::ns::MemfdSetter::start)
    .and_then(|r| {
        r.inspect_err(|e| log::warn!("{e}: vm.memfd_noexec is set by a fork per arm"))
            .ok()
    });
    for e in &policy.delegation_errors {
        log::error!("configuration: {e}; the rest of the configuration is in force");
    }
    for f in &policy.delegated {
        log::info!("configuration: merged {}", f.display());
    }
    let reload = Reload {
        started: policy.without_policy(),
        mode_pinned: config.mode_pinned,
    };
    crate::kernel::probe_openat2().map_err(|e| {
        DaemonError::Setup(format!(
            "openat2 fails ({e}): a seccomp filter blocks it (systemd's RestrictSUIDSGID=, or a container's seccomp profile); every snapshot would skip every file and every container's execs would be denied. Remove the filter (driftlock's own unit sets none)"
        ))
    })?;

    let mut features = crate::kernel::features::probe();
    refuse_without_core_features(&features)?;

    let store = BaselineStore::open(&config.state_dir)?;
    // Loaded (or found refused, which takes a while) before any group is taken over: a
    // predecessor's execs wait in the kernel from the hand-over until we read them.
    let (mapping_gate, mapping_gate_state) = if config.mapping_gate {
        if !features.has(crate::kernel::features::name::BPF_MEMCG_ACCOUNTING) {
            // Before 5.11 BPF maps are charged to the memory-lock limit (64 KiB by default).
            let limit = crate::kernel::features::raise_memlock_limit();
            log::info!("kernel before 5.11: RLIMIT_MEMLOCK for the mapping gate's maps is {limit}");
        }
        load_mapping_gate(config.engine.library_control)
    } else {
        (None, "off (--mapping-gate false)".to_string())
    };
    features.set(gate_feature(
        mapping_gate.is_some(),
        config.mapping_gate,
        &mapping_gate_state,
    ));
    warn_degradations(&features);
    // A group kept in systemd's fd store by a predecessor still holds every container's
    // marks: execs waited in the kernel meanwhile. Take it back, and first answer the
    // events the predecessor read but never answered (they cannot be judged now: deny).
    let started = std::time::Instant::now();
    let mut took_over_from = None;
    let mut beside = false;
    let adopted = match crate::service::take_stored_group() {
        Some(group) => Some((group, true)),
        None if config.take_over => {
            match crate::handover::take_over(&config.socket, crate::handover::HAND_OVER_TIMEOUT)
                .map_err(|e| DaemonError::Setup(e.to_string()))?
            {
                crate::handover::TakeOver::Taken {
                    group,
                    pid,
                    version,
                    relayed,
                } => {
                    log::info!(
                        "took over the fanotify group from the daemon at pid {pid} (driftlock {version}) after {} ms: every container's marks stayed in the kernel",
                        started.elapsed().as_millis()
                    );
                    took_over_from = Some(pid);
                    Some((group, relayed))
                }
                crate::handover::TakeOver::NoDaemon => None,
                crate::handover::TakeOver::Refused(why) => {
                    // Waiting for it to stop would stall a rolling update (the old pod goes
                    // only once this one is ready), and stopping it first would leave its
                    // containers unprotected: run beside it with a group of our own. Until
                    // it stops, every exec of its containers is judged by both.
                    log::warn!(
                        "the daemon at {} cannot hand over ({why}): starting beside it with a fanotify group of our own and taking its socket; its containers are judged by both daemons until it stops",
                        config.socket.display()
                    );
                    beside = true;
                    None
                }
            }
        }
        None => None,
    };
    let restoring = adopted.is_some();
    let gate = match adopted {
        Some((group, orphans_possible)) => {
            let gate = FanotifyGate::adopt(group)?;
            if orphans_possible {
                let orphans = gate.answer_orphans(ORPHAN_FD_SCAN, crate::kernel::Answer::Deny);
                log::warn!(
                    "took over the fanotify group from the previous daemon; denied {orphans} exec(s) it had read but not answered"
                );
            }
            gate
        }
        None => FanotifyGate::new()?,
    };
    // Our own copy of the group: handed to a successor (see crate::handover), and held
    // until we exit so that the marks outlive a successor that dies early.
    let group_copy = Arc::new(
        gate.group_fd()
            .try_clone_to_owned()
            .map_err(|e| DaemonError::Setup(format!("cannot copy the fanotify group: {e}")))?,
    );
    match crate::service::store_group(gate.group_fd()) {
        Ok(true) => log::info!("fanotify group kept in the service manager's fd store"),
        Ok(false) => {}
        Err(e) => log::warn!("cannot store the fanotify group with the service manager: {e}"),
    }
    let file = match &config.audit_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| DaemonError::AuditLog {
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let (audit, audit_thread) = start_writer(AuditSinks {
        stdout: true,
        file,
        file_path: config.audit_log.clone(),
        node: crate::audit::node_name(),
        falcosidekick: config.falcosidekick.clone(),
        quarantine: match config.evidence {
            Some(limits) => Some(
                crate::audit::evidence::Quarantine::open(&config.state_dir, limits)
                    .map_err(|e| DaemonError::Setup(e.to_string()))?,
            ),
            None => None,
        },
    });
    let (mut engine, handle) = Engine::new(gate, config.engine.clone(), audit.clone());
    let mapping_active = mapping_gate.is_some();
    if let Some(g) = mapping_gate {
        engine.set_mapping_gate(g);
    }
    let audit_for_metrics = audit.counters_handle();
    engine.set_restoring(restoring);
    let mut watchdog = crate::service::Watchdog::from_env();
    let watchdog_enabled = watchdog.enabled();
    if watchdog.enabled() {
        engine.set_heartbeat(Box::new(move |now| watchdog.tick(now)));
    }
    let mut engine_thread = std::thread::Builder::new()
        .name("driftlock-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| DaemonError::Setup(e.to_string()))?;

    let armer = Arc::new(Armer {
        engine: handle.clone(),
        store,
        default_mode: std::sync::Mutex::new(config.mode),
        annotations: config.annotations,
        snapshot_threads: config.snapshot_threads,
        memfd_noexec: std::sync::atomic::AtomicBool::new(config.memfd_noexec),
        features: std::sync::RwLock::new(features.clone()),
        metrics_state: Default::default(),
        shared_baselines: Default::default(),
        units_dir: config.state_dir.join("units"),
        policy: std::sync::RwLock::new(policy),
        stats: Default::default(),
        indicators: config.indicators.clone(),
        mapping_gate: mapping_active,
        mapping_gate_state,
        audit: std::sync::Mutex::new(Some(audit.clone())),
        pending: Default::default(),
        memfd_setter,
    });
    if config.memfd_noexec {
        if let Some(f) = features
            .get(crate::kernel::features::name::MEMFD_NOEXEC)
            .filter(|f| !f.available)
        {
            armer.memfd_noexec_unavailable(&f.detail);
        }
    }
    let reloader = Arc::clone(&armer);
    // Containers that ran on while the daemon was down are protected again before the
    // socket accepts a request (hooks retry their connection meanwhile).
    let rearm = armer.rearm_recorded();
    if rearm != Default::default() {
        log::info!(
            "restart: re-armed {} units, forgot {} that are gone, {} failed and are retried",
            rearm.rearmed,
            rearm.forgotten,
            rearm.pending
        );
    }
    handle.restore_done();
    let listener = if took_over_from.is_some() || beside {
        // The predecessor still serves the path; ours replaces it in one rename.
        bind_replacing(&config.socket)?
    } else {
        bind(&config.socket)?
    };
    if let Some(pid) = took_over_from {
        log::info!(
            "hand-over from pid {pid} done in {} ms (execs waited in the kernel meanwhile; none ran unjudged)",
            started.elapsed().as_millis()
        );
    }
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (armer, stop, audit) = (Arc::clone(&armer), Arc::clone(&stop_watch), audit.clone());
        let dir = crate::runtime::hook::fail_open_dir(&config.socket);
        std::thread::Builder::new()
            .name("driftlock-fail-open".into())
            .spawn(move || record_fail_opens(&armer, &audit, &dir, &stop))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    {
        let (armer, stop) = (Arc::clone(&armer), Arc::clone(&stop_watch));
        std::thread::Builder::new()
            .name("driftlock-mounts".into())
            .spawn(move || crate::arming::watch_mounts(armer, audit, stop))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    {
        let (armer, stop) = (Arc::clone(&armer), Arc::clone(&stop_watch));
        std::thread::Builder::new()
            .name("driftlock-rearm".into())
            .spawn(move || retry_rearms(&armer, &stop))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    if config.watch_config {
        match &policy_path {
            Some(path) => {
                let (armer, stop, path, reload) = (
                    Arc::clone(&armer),
                    Arc::clone(&stop_watch),
                    path.clone(),
                    reload.clone(),
                );
                log::info!(
                    "reloading {} whenever it changes (--watch-config)",
                    path.display()
                );
                std::thread::Builder::new()
                    .name("driftlock-config".into())
                    .spawn(move || watch_config(&armer, &reload, &path, &stop))
                    .map_err(|e| DaemonError::Setup(e.to_string()))?;
            }
            None => log::warn!("--watch-config: no configuration file to watch"),
        }
    }
    if let Some(addr) = config.metrics_addr {
        let token = config
            .metrics_token_file
            .clone()
            .map(crate::metrics::TokenFile);
        let auth = match &token {
            Some(t) => format!(" (bearer token from {})", t.0.display()),
            None => String::new(),
        };
        crate::metrics::serve(
            addr,
            token,
            Arc::clone(&armer),
            audit_for_metrics,
            watchdog_enabled,
        )?;
        log::info!("metrics on http://{addr}/metrics{auth} (bound in the background)");
    }
    let admission = Arc::new(Admission::default());
    let handler: Handler = {
        let admission = Arc::clone(&admission);
        Arc::new(move |req| admission.handle(&armer, req))
    };
    let hand_over: HandOverHook = {
        let (admission, group) = (Arc::clone(&admission), Arc::clone(&group_copy));
        Arc::new(move |stream| admission.hand_over_requested(stream, &group))
    };
    {
        let (handler, hand_over) = (Arc::clone(&handler), Arc::clone(&hand_over));
        std::thread::Builder::new()
            .name("driftlock-accept".into())
            .spawn(move || serve(listener, handler, Some(hand_over)))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    {
        let (handler, hand_over) = (Arc::clone(&handler), Arc::clone(&hand_over));
        let (path, stop) = (config.socket.clone(), Arc::clone(&stop_watch));
        std::thread::Builder::new()
            .name("driftlock-socket".into())
            .spawn(move || keep_socket(&path, &stop, handler, hand_over))
            .map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    let predecessor = crate::handover::predecessor_socket(&config.socket);
    if let Err(e) = crate::service::notify("READY=1", &[]) {
        log::warn!("cannot notify the service manager: {e}");
    }
    log::info!(
        "driftlock daemon ready: socket {}, state {}, default mode {}",
        config.socket.display(),
        config.state_dir.display(),
        config.mode
    );

    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                // After a log rotation (logrotate's postrotate sends it).
                reloader.reopen_audit_file();
                match &policy_path {
                    None => log::info!("SIGHUP: no configuration file to reload"),
                    Some(path) => reload.apply(&reloader, path, "SIGHUP"),
                }
            }
            Ok(Signal::SIGUSR1) => {
                let Some(stream) = admission.take_pending() else {
                    continue;
                };
                if engine_thread.is_finished() || admission.handed_over() {
                    continue;
                }
                let began = std::time::Instant::now();
                admission.close_and_drain();
                stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
                handle.shutdown();
                let stopped = std::mem::replace(
                    &mut engine_thread,
                    std::thread::spawn(|| Ok::<(), KernelError>(())),
                )
                .join();
                if !matches!(stopped, Ok(Ok(()))) {
                    log::error!("the event loop did not stop cleanly before the hand-over");
                }
                // Reachable for a relay once the successor's socket takes the name.
                match bind(&predecessor) {
                    Ok(l) => {
                        let (handler, hand_over) = (Arc::clone(&handler), Arc::clone(&hand_over));
                        let _ = std::thread::Builder::new()
                            .name("driftlock-predecessor".into())
                            .spawn(move || serve(l, handler, Some(hand_over)));
                    }
                    Err(e) => log::warn!(
                        "{e}: should the successor die, the next one cannot be handed the group"
                    ),
                }
                admission.send_group(stream, &group_copy, false);
                // A keeper holding the group (the pod's first process) must not start this
                // daemon again should it die now: the successor has the group.
                let _ = crate::service::notify("STOPPING=1", &[]);
                log::info!(
                    "stopped reading events and handed the fanotify group over in {} ms; idle until stopped",
                    began.elapsed().as_millis()
                );
            }
            Ok(sig) => {
                if admission.handed_over() {
                    log::info!("{sig}: stopping (the fanotify group was handed over)");
                    let _ = std::fs::remove_file(&predecessor);
                    return Ok(());
                }
                log::info!("{sig}: answering in-flight events and stopping");
                break;
            }
            Err(e) => {
                log::error!("sigwait failed: {e}");
                break;
            }
        }
    }
    let _ = crate::service::notify("STOPPING=1", &[]);
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    handle.shutdown();
    let result = match engine_thread.join() {
        Ok(r) => r.map_err(DaemonError::from),
        Err(_) => Err(DaemonError::Setup("the event loop panicked".into())),
    };
    drop(handle);
    let _ = std::fs::remove_file(&config.socket);
    reloader.close_audit();
    // The writer ends once the engine (the last queue holder) is gone.
    let _ = audit_thread.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (8): the orphan scan must cover every fd number the daemon can hold.
    #[test]
    fn the_orphan_scan_covers_every_fd_the_daemon_can_hold() {
        raise_fd_limit();
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert!(soft <= MAX_FDS, "{soft}");
        assert_eq!(i64::from(ORPHAN_FD_SCAN) + 1, MAX_FDS as i64);
    }
}
