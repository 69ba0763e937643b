//! `driftlock daemon`: the composition root. It takes the kernel's group, starts the
//! engine, the audit writer, the armer and the socket, and stops cleanly on SIGTERM/SIGINT
//! or hands its group to a successor.
//!
//! The rooms: `config` the settings and errors; `startup` what is checked and taken before
//! serving (features, the mapping gate, the group); `control` the socket's requests;
//! `admission` the giving side of a hand-over; `tasks` the background threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use nix::sys::signal::{SigSet, Signal};

use crate::arming::Armer;
use crate::baseline::BaselineStore;
use crate::engine::{Engine, EngineHandle};
use crate::ipc::server::{HandOverHook, Handler, bind, bind_replacing, serve};
use crate::kernel::KernelError;

mod admission;
mod config;
mod control;
mod startup;
mod tasks;
mod wire;

use admission::Admission;
pub use config::{DaemonConfig, DaemonError};
use startup::raise_fd_limit;
use tasks::{Reload, keep_socket, record_fail_opens, retry_rearms, watch_config};

type EngineThread = std::thread::JoinHandle<Result<(), KernelError>>;

/// Runs the daemon until SIGTERM or SIGINT. `policy` holds the mode rules and allow
/// entries of the configuration file at `policy_path` (read again on SIGHUP).
pub fn run(
    config: DaemonConfig,
    policy: crate::config::Config,
    policy_path: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    let signals = block_signals()?;
    raise_fd_limit();
    let memfd_setter = startup::start_memfd_setter(&config);
    log_delegation(&policy);
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
    startup::refuse_without_core_features(&features)?;
    let store = BaselineStore::open(&config.state_dir)?;
    // Loaded (or found refused, which takes a while) before any group is taken over: a
    // predecessor's execs wait in the kernel from the hand-over until we read them.
    let (mapping_gate, mapping_gate_state) = startup::mapping_gate(&config, &mut features);
    let started = Instant::now();
    let group = startup::take_group(&config, started)?;
    let (audit, audit_thread) = startup::start_audit(&config)?;
    let audit_counters = audit.counters_handle();
    let mapping_active = mapping_gate.is_some();
    let (engine_thread, handle, watchdog_enabled) =
        start_engine(&config, group.gate, group.restoring, mapping_gate, &audit)?;
    let config_digest = policy_path
        .as_deref()
        .map_or_else(|| "none".to_string(), |p| policy.files_digest(p));
    let armer = Arc::new(Armer {
        engine: handle.clone(),
        store,
        default_mode: std::sync::Mutex::new(config.mode),
        annotations: config.annotations,
        snapshot_threads: config.snapshot_threads,
        memfd_noexec: AtomicBool::new(config.memfd_noexec),
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
        config_digest: std::sync::Mutex::new(config_digest),
    });
    if config.memfd_noexec {
        if let Some(f) = features
            .get(crate::kernel::features::name::MEMFD_NOEXEC)
            .filter(|f| !f.available)
        {
            armer.memfd_noexec_unavailable(&f.detail);
        }
    }
    let stop_watch = Arc::new(AtomicBool::new(false));
    let running = Running {
        listener_replaces: group.took_over_from.is_some() || group.beside,
        engine_thread,
        handle,
        armer,
        group_copy: group.copy,
        stop_watch,
        admission: Arc::new(Admission::default()),
    };
    let serving = running.serve(&config, audit, group.took_over_from, started)?;
    running.start_tasks(
        &config,
        &policy_path,
        &reload,
        audit_counters,
        watchdog_enabled,
    )?;
    if let Err(e) = crate::service::notify("READY=1", &[]) {
        log::warn!("cannot notify the service manager: {e}");
    }
    log::info!(
        "driftlock daemon ready: socket {}, state {}, default mode {}",
        config.socket.display(),
        config.state_dir.display(),
        config.mode
    );
    running.until_stopped(
        signals,
        &config,
        &policy_path,
        &reload,
        serving,
        audit_thread,
    )
}

/// Says which drop-in files were merged into the configuration, and which could not be.
fn log_delegation(policy: &crate::config::Config) {
    for e in &policy.delegation_errors {
        log::error!("configuration: {e}; the rest of the configuration is in force");
    }
    for f in &policy.delegated {
        log::info!("configuration: merged {}", f.display());
    }
}

/// Starts the event loop on the group, with the mapping gate where it loaded; fed to the
/// systemd watchdog where one is asked for (true then).
fn start_engine(
    config: &DaemonConfig,
    gate: crate::kernel::FanotifyGate,
    restoring: bool,
    mapping_gate: Option<crate::kernel::mapping_gate::MappingGate>,
    audit: &crate::audit::AuditQueue,
) -> Result<(EngineThread, EngineHandle, bool), DaemonError> {
    let (mut engine, handle) = Engine::new(gate, config.engine.clone(), audit.clone());
    if let Some(g) = mapping_gate {
        engine.set_mapping_gate(g);
    }
    engine.set_restoring(restoring);
    let mut watchdog = crate::service::Watchdog::from_env();
    let watchdog_enabled = watchdog.enabled();
    if watchdog.enabled() {
        engine.set_heartbeat(Box::new(move |now| watchdog.tick(now)));
    }
    let thread = std::thread::Builder::new()
        .name("driftlock-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok((thread, handle, watchdog_enabled))
}

/// Blocks the stop signals in every thread (threads inherit the mask); the main thread
/// takes them synchronously with sigwait, so no handler runs in async-signal context.
fn block_signals() -> Result<SigSet, DaemonError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    // Raised by our own socket thread when a successor asks for a hand-over.
    signals.add(Signal::SIGUSR1);
    signals
        .thread_block()
        .map_err(|e| DaemonError::Setup(format!("cannot block signals: {e}")))?;
    Ok(signals)
}

/// The socket's request handler and the hand-over hook, shared by every thread that
/// accepts connections.
struct Serving {
    handler: Handler,
    hand_over: HandOverHook,
}

/// The daemon once its engine runs.
struct Running {
    engine_thread: EngineThread,
    handle: EngineHandle,
    armer: Arc<Armer>,
    group_copy: Arc<std::os::fd::OwnedFd>,
    /// Tells the background threads to stop.
    stop_watch: Arc<AtomicBool>,
    admission: Arc<Admission>,
    /// A predecessor still serves the socket's path: ours replaces it in one rename.
    listener_replaces: bool,
}

impl Running {
    /// Re-arms the recorded containers, then binds the socket and serves it. Containers
    /// that ran on while the daemon was down are protected again before the socket
    /// accepts a request (hooks retry their connection meanwhile).
    fn serve(
        &self,
        config: &DaemonConfig,
        audit: crate::audit::AuditQueue,
        took_over_from: Option<u32>,
        started: Instant,
    ) -> Result<Serving, DaemonError> {
        let rearm = self.armer.rearm_recorded();
        if rearm != Default::default() {
            log::info!(
                "restart: re-armed {} units, forgot {} that are gone, {} failed and are retried",
                rearm.rearmed,
                rearm.forgotten,
                rearm.pending
            );
        }
        self.handle.restore_done();
        let listener = if self.listener_replaces {
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
        let (armer, stop) = (Arc::clone(&self.armer), Arc::clone(&self.stop_watch));
        let (audit2, dir) = (
            audit.clone(),
            crate::runtime::hook::fail_open_dir(&config.socket),
        );
        spawn("driftlock-fail-open", move || {
            record_fail_opens(&armer, &audit2, &dir, &stop)
        })?;
        let (armer, stop) = (Arc::clone(&self.armer), Arc::clone(&self.stop_watch));
        spawn("driftlock-containers", move || {
            crate::arming::watch_containers(armer, audit, stop)
        })?;
        let handler: Handler = {
            let (admission, armer) = (Arc::clone(&self.admission), Arc::clone(&self.armer));
            Arc::new(move |req| admission.handle(&armer, req))
        };
        let hand_over: HandOverHook = {
            let (admission, group) = (Arc::clone(&self.admission), Arc::clone(&self.group_copy));
            Arc::new(move |stream| admission.hand_over_requested(stream, &group))
        };
        let (h, o) = (Arc::clone(&handler), Arc::clone(&hand_over));
        spawn("driftlock-accept", move || serve(listener, h, Some(o)))?;
        let (h, o) = (Arc::clone(&handler), Arc::clone(&hand_over));
        let (path, stop) = (config.socket.clone(), Arc::clone(&self.stop_watch));
        spawn("driftlock-socket", move || keep_socket(&path, &stop, h, o))?;
        Ok(Serving { handler, hand_over })
    }

    /// Starts the re-arm retries, the configuration watcher and the metrics endpoint.
    fn start_tasks(
        &self,
        config: &DaemonConfig,
        policy_path: &Option<std::path::PathBuf>,
        reload: &Reload,
        audit: Arc<crate::audit::AuditCounters>,
        watchdog_enabled: bool,
    ) -> Result<(), DaemonError> {
        let (armer, stop) = (Arc::clone(&self.armer), Arc::clone(&self.stop_watch));
        spawn("driftlock-rearm", move || retry_rearms(&armer, &stop))?;
        match (config.watch_config, policy_path) {
            (true, Some(path)) => {
                let (armer, stop) = (Arc::clone(&self.armer), Arc::clone(&self.stop_watch));
                let (path, reload) = (path.clone(), reload.clone());
                log::info!(
                    "reloading {} whenever it changes (--watch-config)",
                    path.display()
                );
                spawn("driftlock-config", move || {
                    watch_config(&armer, &reload, &path, &stop)
                })?;
            }
            (true, None) => log::warn!("--watch-config: no configuration file to watch"),
            (false, _) => {}
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
            let armer = Arc::clone(&self.armer);
            crate::metrics::serve(addr, token, armer, audit, watchdog_enabled)?;
            log::info!("metrics on http://{addr}/metrics{auth} (bound in the background)");
        }
        Ok(())
    }

    /// Serves until a stop signal (or a hand-over, then until stopped); then answers what
    /// is in flight and stops.
    fn until_stopped(
        mut self,
        signals: SigSet,
        config: &DaemonConfig,
        policy_path: &Option<std::path::PathBuf>,
        reload: &Reload,
        serving: Serving,
        audit_thread: std::thread::JoinHandle<()>,
    ) -> Result<(), DaemonError> {
        let predecessor = crate::handover::predecessor_socket(&config.socket);
        loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => {
                    // After a log rotation (logrotate's postrotate sends it).
                    self.armer.reopen_audit_file();
                    match policy_path {
                        None => log::info!("SIGHUP: no configuration file to reload"),
                        Some(path) => reload.apply(&self.armer, path, "SIGHUP"),
                    }
                }
                Ok(Signal::SIGUSR1) => self.hand_over(&predecessor, &serving),
                Ok(sig) => {
                    if self.admission.handed_over() {
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
        self.stop_watch.store(true, Ordering::Relaxed);
        self.handle.shutdown();
        let result = match self.engine_thread.join() {
            Ok(r) => r.map_err(DaemonError::from),
            Err(_) => Err(DaemonError::Setup("the event loop panicked".into())),
        };
        drop(self.handle);
        let _ = std::fs::remove_file(&config.socket);
        self.armer.close_audit();
        // The writer ends once the engine (the last queue holder) is gone.
        let _ = audit_thread.join();
        result
    }
}

/// Starts a named daemon thread.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(), DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| DaemonError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::startup::{MAX_FDS, ORPHAN_FD_SCAN};
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
