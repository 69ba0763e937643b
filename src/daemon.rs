//! `driftlock daemon`: wires the store, the kernel gate, the engine, the audit writer and
//! the socket together, and stops cleanly on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Mode;
use crate::arming::Armer;
use crate::audit::{AuditSinks, start_writer};
use crate::baseline::BaselineStore;
use crate::baseline::store::StoreError;
use crate::engine::{Engine, EngineConfig};
use crate::ipc::server::{Handler, ServerError, bind, serve};
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
    /// Serve Prometheus metrics here (loopback only).
    pub metrics_addr: Option<std::net::SocketAddr>,
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

fn handle_request(ctx: &Armer, req: Request) -> Response {
    match req {
        Request::Ping => Response::ok(&Reply::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        Request::Status => match ctx.engine.status() {
            Ok(s) => {
                use std::sync::atomic::Ordering::Relaxed;
                let mut reply = StatusReply::from(&s);
                reply.config_reloads = ctx.stats.reloads.load(Relaxed);
                reply.config_reload_errors = ctx.stats.reload_errors.load(Relaxed);
                reply.mapping_gate = mapping_gate_state();
                reply.rearm_pending = ctx
                    .pending_units()
                    .into_iter()
                    .map(|p| crate::ipc::PendingReply {
                        id: p.id,
                        attempts: p.attempts,
                        error: p.error,
                    })
                    .collect();
                Response::ok(&Reply::Status(reply))
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
                Ok(s) => Response::ok(&Reply::Disarmed(UnitReply::from(&s))),
                Err(e) => Response::err(ErrorCode::from(&e), e.to_string()),
            }
        }
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

/// What the mapping gate is doing, in words (for `status`).
static MAPPING_GATE_STATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The mapping gate's state in words.
pub fn mapping_gate_state() -> String {
    MAPPING_GATE_STATE
        .get()
        .cloned()
        .unwrap_or_else(|| "not loaded".into())
}

fn load_mapping_gate() -> Option<crate::kernel::mapping_gate::MappingGate> {
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
            MAPPING_GATE_STATE.set(format!("active ({how})")).ok();
            Some(g)
        }
        Err(e) => {
            log::warn!(
                "mapping gate unavailable: {e}. Running on fanotify alone: code mapped without an exec (LD_PRELOAD, /etc/ld.so.preload, dlopen of a dropped library) is not stopped; direct loader execs are judged from the blocked task's kernel stack"
            );
            MAPPING_GATE_STATE.set(format!("unavailable: {e}")).ok();
            None
        }
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
    signals
        .thread_block()
        .map_err(|e| DaemonError::Setup(format!("cannot block signals: {e}")))?;
    raise_fd_limit();
    crate::kernel::probe_openat2().map_err(|e| {
        DaemonError::Setup(format!(
            "openat2 fails ({e}): a seccomp filter blocks it (systemd's RestrictSUIDSGID=, or a container's seccomp profile); every snapshot would skip every file and every container's execs would be denied. Remove the filter (driftlock's own unit sets none)"
        ))
    })?;

    let store = BaselineStore::open(&config.state_dir)?;
    // A group kept in systemd's fd store by a predecessor still holds every container's
    // marks: execs waited in the kernel meanwhile. Take it back, and first answer the
    // events the predecessor read but never answered (they cannot be judged now: deny).
    let adopted = crate::service::take_stored_group();
    let restoring = adopted.is_some();
    let gate = match adopted {
        Some(group) => {
            let gate = FanotifyGate::adopt(group)?;
            let orphans = gate.answer_orphans(ORPHAN_FD_SCAN, crate::kernel::Answer::Deny);
            log::warn!(
                "took over the fanotify group from the previous daemon; denied {orphans} exec(s) it had read but not answered"
            );
            gate
        }
        None => FanotifyGate::new()?,
    };
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
    let mapping_gate = if config.mapping_gate {
        load_mapping_gate()
    } else {
        MAPPING_GATE_STATE
            .set("off (--mapping-gate false)".into())
            .ok();
        None
    };
    let mapping_active = mapping_gate.is_some();
    if let Some(g) = mapping_gate {
        engine.set_mapping_gate(g);
    }
    let audit_for_metrics = audit.counters_handle();
    engine.set_restoring(restoring);
    let mut watchdog = crate::service::Watchdog::from_env();
    let watchdog_enabled = watchdog.enabled();
    if watchdog.enabled() {
        engine.set_heartbeat(Box::new(move || watchdog.tick()));
    }
    let engine_thread = std::thread::Builder::new()
        .name("driftlock-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| DaemonError::Setup(e.to_string()))?;

    let armer = Arc::new(Armer {
        engine: handle.clone(),
        store,
        default_mode: config.mode,
        snapshot_threads: config.snapshot_threads,
        memfd_noexec: config.memfd_noexec,
        units_dir: config.state_dir.join("units"),
        policy: std::sync::RwLock::new(policy),
        stats: Default::default(),
        indicators: config.indicators.clone(),
        mapping_gate: mapping_active,
        pending: Default::default(),
    });
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
    let listener = bind(&config.socket)?;
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    if let Some(addr) = config.metrics_addr {
        crate::metrics::serve(
            addr,
            Arc::clone(&armer),
            audit_for_metrics,
            watchdog_enabled,
        )?;
        log::info!("metrics on http://{addr}/metrics");
    }
    let handler: Handler = Arc::new(move |req| handle_request(&armer, req));
    std::thread::Builder::new()
        .name("driftlock-accept".into())
        .spawn(move || serve(listener, handler))
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
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
            Ok(Signal::SIGHUP) => match &policy_path {
                None => log::info!("SIGHUP: no configuration file to reload"),
                Some(path) => match crate::config::Config::load(path) {
                    Ok(c) => {
                        let n = reloader.apply_policy(c);
                        reloader
                            .stats
                            .reloads
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        log::info!(
                            "SIGHUP: reloaded {}; allow entries updated for {n} armed units",
                            path.display()
                        );
                    }
                    Err(e) => {
                        reloader
                            .stats
                            .reload_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        log::error!("SIGHUP: keeping the running configuration: {e}");
                    }
                },
            },
            Ok(sig) => {
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
