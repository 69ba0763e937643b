//! `driftlock daemon`: wires the store, the kernel gate, the engine, the audit writer and
//! the socket together, and stops cleanly on SIGTERM/SIGINT.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::Mode;
use crate::audit::{AuditSinks, start_writer};
use crate::baseline::store::{Provenance, StoreError};
use crate::baseline::{BaselineStore, snapshot};
use crate::engine::{Engine, EngineConfig, EngineError, EngineHandle, UnitSpec};
use crate::escape::{escape_bytes, unescape};
use crate::ipc::server::{Handler, ServerError, bind, serve};
use crate::ipc::{ArmRequest, ArmResult, Reply, Request, Response};
use crate::kernel::mountinfo::{MountEntry, MountInfoError, read_mountinfo};
use crate::kernel::{FanotifyGate, KernelError, stat_path};
use crate::registry::{PlanError, plan_marks};

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
}

/// Why an arm request failed.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// Bad id.
    #[error("invalid unit id {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - : @")]
    BadId(String),
    /// A path field is not in the escaped form.
    #[error("invalid {field}: {reason}")]
    BadPath {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A path does not exist or cannot be resolved.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// statx failed.
    #[error("{}: {source}", escape_bytes(path.as_os_str().as_bytes()))]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: KernelError,
    },
    /// Mount table.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// Marks.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Baseline.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the request handlers share.
struct Context {
    engine: EngineHandle,
    store: BaselineStore,
    default_mode: Mode,
    snapshot_threads: usize,
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b))
}

fn decode_path(field: &'static str, text: &str) -> Result<PathBuf, ArmError> {
    let bytes = unescape(text).map_err(|e| ArmError::BadPath {
        field,
        reason: e.to_string(),
    })?;
    if bytes.first() != Some(&b'/') {
        return Err(ArmError::BadPath {
            field,
            reason: format!("{} is not an absolute path", escape_bytes(&bytes)),
        });
    }
    let path = PathBuf::from(OsString::from_vec(bytes));
    path.canonicalize()
        .map_err(|source| ArmError::Resolve { path, source })
}

/// The image key of a rootfs: for an overlay, its lower layers (identical images share
/// them, and lower layers are immutable, so a stored baseline stays valid); otherwise
/// `None`, and the directory is snapshotted at every arm.
pub fn derive_image_key(
    rootfs: &Path,
    mounts: &[MountEntry],
    mnt_id_legacy: u64,
) -> Option<Vec<u8>> {
    let entry = mounts.iter().rev().find(|m| m.mount_id == mnt_id_legacy)?;
    if entry.fstype != "overlay" || entry.mount_point != rootfs {
        return None;
    }
    let lower = entry
        .super_options
        .split(|b| *b == b',')
        .find_map(|opt| opt.strip_prefix(b"lowerdir="))?;
    let mut key = b"overlay-lower:".to_vec();
    key.extend_from_slice(lower);
    Some(key)
}

fn arm_unit(ctx: &Context, req: ArmRequest) -> Result<ArmResult, ArmError> {
    if !valid_id(&req.id) {
        return Err(ArmError::BadId(req.id.chars().take(200).collect()));
    }
    let rootfs = decode_path("rootfs", &req.rootfs)?;
    let mut paths = vec![rootfs.clone()];
    for m in &req.mounts {
        paths.push(decode_path("mount", m)?);
    }
    let mut stats = Vec::with_capacity(paths.len());
    for p in paths {
        let st = stat_path(&p).map_err(|source| ArmError::Stat {
            path: p.clone(),
            source,
        })?;
        stats.push((p, st));
    }
    let mounts = read_mountinfo()?;
    let marks = plan_marks(&stats, &mounts)?;
    let mode = req.mode.unwrap_or(ctx.default_mode);

    let started = Instant::now();
    let explicit_key = match req.image_key.as_deref() {
        Some(k) => Some(unescape(k).map_err(|e| ArmError::BadPath {
            field: "image_key",
            reason: e.to_string(),
        })?),
        None => derive_image_key(&rootfs, &mounts, stats[0].1.mnt_id_legacy),
    };
    let (baseline, provenance, skipped) = match explicit_key {
        Some(key) => {
            let (b, prov, snap) =
                ctx.store
                    .load_or_snapshot(&key, &rootfs, ctx.snapshot_threads)?;
            (b, prov, snap.map_or(0, |s| s.errors.len()))
        }
        None => {
            let mut key = b"rootfs:".to_vec();
            key.extend_from_slice(rootfs.as_os_str().as_bytes());
            let snap = snapshot(&rootfs, key, ctx.snapshot_threads).map_err(StoreError::from)?;
            ctx.store.save(&snap.baseline)?;
            (snap.baseline, Provenance::Snapshotted, snap.errors.len())
        }
    };
    if skipped > 0 {
        log::warn!(
            "unit {:?}: the snapshot skipped {skipped} files (they will be denied); see `driftlock baseline snapshot` for details",
            req.id
        );
    }
    let baseline_ms = started.elapsed().as_secs_f64() * 1e3;
    let image_key = escape_bytes(baseline.key());
    let contents = baseline.distinct_contents();
    let placed = ctx.engine.arm(UnitSpec {
        id: req.id.clone(),
        image_key: baseline.key().to_vec(),
        mode,
        baseline: Arc::new(baseline),
        marks,
    })?;
    Ok(ArmResult {
        id: req.id,
        mode,
        image_key,
        baseline: provenance,
        baseline_contents: contents,
        snapshot_skipped: skipped,
        baseline_ms,
        marks: placed,
    })
}

fn handle_request(ctx: &Context, req: Request) -> Response {
    match req {
        Request::Ping => Response::ok(&Reply::Pong {
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        Request::Status => match ctx.engine.status() {
            Ok(s) => Response::ok(&Reply::Status(s)),
            Err(e) => Response::err(e.to_string()),
        },
        Request::Disarm { id } => match ctx.engine.disarm(&id) {
            Ok(s) => Response::ok(&Reply::Disarmed(s)),
            Err(e) => Response::err(e.to_string()),
        },
        Request::Arm(req) => {
            let id = req.id.clone();
            match arm_unit(ctx, req) {
                Ok(r) => Response::ok(&Reply::Armed(r)),
                Err(e) => {
                    log::warn!(
                        "arm {:?} failed: {e}",
                        id.chars().take(128).collect::<String>()
                    );
                    Response::err(format!("arm failed: {e}"))
                }
            }
        }
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
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

    let store = BaselineStore::open(&config.state_dir)?;
    let gate = FanotifyGate::new()?;
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
    let (audit, audit_thread) = start_writer(AuditSinks { stdout: true, file });
    let (engine, handle) = Engine::new(gate, config.engine.clone(), audit);
    let listener = bind(&config.socket)?;
    let engine_thread = std::thread::Builder::new()
        .name("driftlock-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| DaemonError::Setup(e.to_string()))?;

    let ctx = Arc::new(Context {
        engine: handle.clone(),
        store,
        default_mode: config.mode,
        snapshot_threads: config.snapshot_threads,
    });
    let handler: Handler = Arc::new(move |req| handle_request(&ctx, req));
    std::thread::Builder::new()
        .name("driftlock-accept".into())
        .spawn(move || serve(listener, handler))
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    log::info!(
        "driftlock daemon ready: socket {}, state {}, default mode {}",
        config.socket.display(),
        config.state_dir.display(),
        config.mode
    );

    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => log::info!("SIGHUP: nothing to reload yet"),
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
    use crate::kernel::mountinfo::parse_mountinfo;

    #[test]
    fn ids_are_restricted() {
        assert!(valid_id("c0ffee:web-1.a_b@x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a\nb"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn overlay_key_comes_from_the_lower_layers() {
        let m = parse_mountinfo(
            b"5 1 0:41 / /t/rootfs rw - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u,workdir=/w\n\
              6 1 0:42 / /t/plain rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        assert_eq!(
            derive_image_key(Path::new("/t/rootfs"), &m, 5).unwrap(),
            b"overlay-lower:/l/2:/l/1".to_vec()
        );
        assert_eq!(derive_image_key(Path::new("/t/plain"), &m, 6), None);
    }

    #[test]
    fn relative_and_malformed_paths_are_refused() {
        assert!(matches!(
            decode_path("rootfs", "relative"),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/bad\\q"),
            Err(ArmError::BadPath { .. })
        ));
        assert!(matches!(
            decode_path("rootfs", "/nonexistent/x"),
            Err(ArmError::Resolve { .. })
        ));
    }
}
