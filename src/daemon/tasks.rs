//! The daemon's background tasks: failed re-arms retried, the configuration file reloaded
//! (on SIGHUP or as it changes), the socket kept in place, fail-open notes recorded.

use std::sync::Arc;

use crate::Mode;
use crate::arming::Armer;
use crate::ipc::server::{HandOverHook, Handler, bind, serve};

/// Retries failed re-arms, at first every second, backing off to every 30 s while some
/// keep failing.
pub(super) fn retry_rearms(armer: &Armer, stop: &std::sync::atomic::AtomicBool) {
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
pub(super) struct Reload {
    /// The file's daemon settings at start, its policy rules cleared.
    pub(super) started: crate::config::Config,
    /// The command line chose the default mode: the file's `mode` does not apply.
    pub(super) mode_pinned: bool,
}

impl Reload {
    /// Reads the configuration file again and applies its mode rules, allow entries and
    /// default mode (unless the command line set it); a broken file is refused and the
    /// running configuration kept. Other settings take effect at the next start.
    pub(super) fn apply(&self, armer: &Armer, path: &std::path::Path, why: &str) {
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
                let digest = c.files_digest(path);
                let n = armer.apply_policy(c);
                *armer
                    .config_digest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = digest;
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
pub(super) fn config_version(path: &std::path::Path) -> Option<(u64, u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Reloads the configuration file whenever it changes: woken by inotify on its directory,
/// and compared every two seconds in any case (an edit inside a symlinked directory, or
/// a directory inotify cannot watch).
pub(super) fn watch_config(
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
pub(super) fn keep_socket(
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
pub(super) fn record_fail_opens(
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
