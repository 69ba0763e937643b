//! systemd integration: readiness, watchdog, and the file-descriptor store.
//!
//! A fanotify group's marks live as long as the group's fd. Handing that fd to systemd's
//! fd store (`FDSTORE=1`) keeps the group, and so every container's marks, alive while the
//! daemon is replaced (upgrade, crash, watchdog kill): execs wait in the kernel instead of
//! running unchecked, and the next daemon takes the fd back (`LISTEN_FDS`) and answers
//! them. Without systemd (no `NOTIFY_SOCKET`) every call here is a no-op, and a restarted
//! daemon re-arms from the state directory instead.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
};

/// The name the fanotify group is stored under.
pub const FANOTIFY_FDNAME: &str = "fanotify";

fn notify_addr() -> Option<UnixAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = path.as_bytes();
    match bytes.first() {
        Some(b'@') => UnixAddr::new_abstract(&bytes[1..]).ok(),
        Some(b'/') => UnixAddr::new(std::path::Path::new(&path)).ok(),
        _ => None,
    }
}

/// Sends a notification (`READY=1`, `WATCHDOG=1`, ...) with optional fds to the service
/// manager. Returns false when there is none.
pub fn notify(state: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<bool> {
    let Some(addr) = notify_addr() else {
        return Ok(false);
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(true)
}

/// Stores the fanotify group in the service manager's fd store.
pub fn store_group(group: BorrowedFd<'_>) -> std::io::Result<bool> {
    notify(&format!("FDSTORE=1\nFDNAME={FANOTIFY_FDNAME}"), &[group])
}

/// The fanotify group handed back by the service manager (`LISTEN_FDS`), if any.
pub fn take_stored_group() -> Option<OwnedFd> {
    crate::kernel::take_listen_fds()
        .into_iter()
        .find(|(name, fd)| {
            name.as_deref().is_none_or(|n| n == FANOTIFY_FDNAME) && crate::kernel::is_fanotify(fd)
        })
        .map(|(_, fd)| fd)
}

/// Feeds the watchdog at half its interval (`WATCHDOG_USEC`); called by the event loop on
/// every iteration, so a stalled loop stops the pings and systemd restarts the daemon.
pub struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    /// From the environment.
    pub fn from_env() -> Self {
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string())
            })
            .map(|us| Duration::from_micros(us / 2));
        Self {
            every,
            last: Instant::now() - Duration::from_secs(3600),
        }
    }

    /// Pings if due (`now`: the caller's clock reading).
    pub fn tick(&mut self, now: Instant) {
        if let Some(every) = self.every {
            if now.saturating_duration_since(self.last) >= every {
                let _ = notify("WATCHDOG=1", &[]);
                self.last = now;
            }
        }
    }

    /// True if the service manager expects pings.
    pub fn enabled(&self) -> bool {
        self.every.is_some()
    }
}

/// Whether a service that just stopped is stopping for good (an `ExecStopPost=` decides
/// whether to take down what must outlive restarts, like the pinned mapping gate).
///
/// `service_result` is systemd's `$SERVICE_RESULT`; `jobs` is `systemctl list-jobs
/// --no-legend --plain` output, in which `unit` has a job while it is being stopped or
/// restarted by request. Only a requested stop (a `stop` job) is for good: a failure
/// (crash, watchdog, SIGKILL) or a clean exit without a job is followed by `Restart=`, and a
/// `restart` job by the new instance, which adopts what was kept.
pub fn stopping_for_good(service_result: Option<&str>, jobs: &str, unit: &str) -> bool {
    if service_result.is_some_and(|r| r != "success") {
        return false;
    }
    jobs.lines().any(|line| {
        let mut cols = line.split_whitespace();
        let (_id, name, kind) = (cols.next(), cols.next(), cols.next());
        name == Some(unit) && kind == Some("stop")
    })
}

/// The jobs systemd has queued or running (`systemctl list-jobs`), or `None` where
/// systemctl cannot be run.
pub fn list_jobs() -> Option<String> {
    let out = std::process::Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--plain", "--no-pager"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod stop_tests {
    use super::stopping_for_good;

    const UNIT: &str = "driftlock.service";

    #[test]
    fn only_a_requested_stop_is_for_good() {
        let stop = "1234 driftlock.service stop running\n";
        let restart = "1235 driftlock.service restart running\n";
        let other = "1236 nginx.service stop running\n";
        assert!(stopping_for_good(Some("success"), stop, UNIT));
        assert!(stopping_for_good(None, stop, UNIT));
        assert!(!stopping_for_good(Some("success"), restart, UNIT));
        assert!(!stopping_for_good(Some("success"), other, UNIT));
        assert!(!stopping_for_good(Some("success"), "", UNIT));
        // A crash is followed by Restart=: the successor adopts.
        assert!(!stopping_for_good(Some("signal"), stop, UNIT));
        assert!(!stopping_for_good(Some("watchdog"), stop, UNIT));
        assert!(!stopping_for_good(Some("core-dump"), "", UNIT));
    }
}
