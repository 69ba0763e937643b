//! A keeper for the daemon where no service manager keeps its fanotify group (a Kubernetes
//! pod): the pod's first process runs the daemon as a child and speaks the part of
//! systemd's notify protocol the daemon uses (`FDSTORE=1` with `FDNAME=`, `FDSTOREREMOVE=1`,
//! `STOPPING=1`). When the daemon dies without stopping (a crash, the OOM killer, `kill -9`),
//! the keeper still holds the group, so every container's marks stay in the kernel and
//! their execs wait instead of running unjudged; it starts the daemon again with the group
//! (`LISTEN_FDS`), which answers what waited. Like systemd's start limit, a daemon that
//! keeps dying (5 times in 2 minutes) makes the keeper let the group go, so the node is not
//! held forever: said loudly, and the daemon is still restarted, without it.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

/// Deaths within [`DEATH_WINDOW`] after which the group is let go.
pub const DEATHS_BEFORE_RELEASE: usize = 5;
/// The window deaths are counted in.
pub const DEATH_WINDOW: Duration = Duration::from_secs(120);

/// Why the keeper cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Nothing to run.
    #[error("no command to run (driftlock supervise -- driftlock daemon ...)")]
    NoCommand,
    /// The notify socket, the signals or the first start.
    #[error("{what}: {source}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> SuperviseError {
    move |source| SuperviseError::Setup { what, source }
}

/// What the daemon told the keeper in one notification.
#[derive(Debug, Default, PartialEq, Eq)]
struct Notice {
    store: bool,
    remove: bool,
    stopping: bool,
    name: Option<String>,
}

fn parse_notice(text: &[u8]) -> Notice {
    let mut n = Notice::default();
    for line in String::from_utf8_lossy(text).lines() {
        match line.split_once('=') {
            Some(("FDSTORE", "1")) => n.store = true,
            Some(("FDSTOREREMOVE", "1")) => n.remove = true,
            Some(("STOPPING", "1")) => n.stopping = true,
            Some(("FDNAME", name)) => n.name = Some(name.to_string()),
            _ => {}
        }
    }
    n
}

/// The fds the daemon stored, by name.
#[derive(Default)]
struct Store {
    fds: Vec<(String, OwnedFd)>,
}

impl Store {
    fn apply(&mut self, n: &Notice, fds: Vec<OwnedFd>) {
        let name = n.name.clone().unwrap_or_else(|| "stored".into());
        if n.remove {
            self.fds.retain(|(k, _)| *k != name);
        }
        if n.store {
            self.fds.retain(|(k, _)| *k != name);
            for fd in fds {
                self.fds.push((name.clone(), fd));
            }
        }
    }
}

struct Keeper {
    cmd: Vec<OsString>,
    socket: UnixDatagram,
    socket_name: String,
    pid_file: Option<std::path::PathBuf>,
    store: Store,
    child: Option<Child>,
    stopping: bool,
    deaths: Vec<Instant>,
}

impl Keeper {
    fn start(&mut self) -> std::io::Result<()> {
        // LISTEN_PID must be the daemon's pid: the shell sets it to its own, then execs.
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"")
            .arg("sh")
            .args(&self.cmd)
            .env("NOTIFY_SOCKET", &self.socket_name);
        let fds: Vec<OwnedFd> = self
            .store
            .fds
            .iter()
            .filter_map(|(_, f)| f.try_clone().ok())
            .collect();
        if fds.is_empty() {
            c.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
        } else {
            let names: Vec<&str> = self.store.fds.iter().map(|(n, _)| n.as_str()).collect();
            c.env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        let child = crate::kernel::fdpass::spawn_with_fds(&mut c, &fds)?;
        log::info!(
            "keeper: started the daemon (pid {}){}",
            child.id(),
            if fds.is_empty() {
                String::new()
            } else {
                " with the stored fanotify group: every container's marks stayed in the kernel"
                    .to_string()
            }
        );
        if let Some(p) = &self.pid_file {
            let _ = std::fs::write(p, format!("{}\n", child.id()));
        }
        self.child = Some(child);
        Ok(())
    }

    fn read_notices(&mut self) {
        loop {
            match crate::kernel::fdpass::recv_datagram_with_fds(&self.socket) {
                Ok((text, fds)) => {
                    let n = parse_notice(&text);
                    if n.stopping {
                        // The daemon stops by choice (asked to, or it handed the group to a
                        // successor): nothing to keep, nothing to restart.
                        self.stopping = true;
                        self.store.fds.clear();
                    }
                    self.store.apply(&n, fds);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("keeper: reading a notification: {e}");
                    return;
                }
            }
        }
    }

    /// The child exited: its status, and whether to start it again.
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn died(&mut self, status: std::process::ExitStatus) {
        let now = Instant::now();
        self.deaths
            .retain(|t| now.duration_since(*t) < DEATH_WINDOW);
        self.deaths.push(now);
        if self.deaths.len() >= DEATHS_BEFORE_RELEASE && !self.store.fds.is_empty() {
            log::error!(
                "keeper: the daemon died {} times in {} s ({status}): letting the fanotify group go so held execs are not held forever; every container runs UNPROTECTED until the daemon starts again and re-arms them",
                self.deaths.len(),
                DEATH_WINDOW.as_secs()
            );
            self.store.fds.clear();
        } else {
            log::error!(
                "keeper: the daemon died ({status}) without stopping; starting it again{}",
                if self.store.fds.is_empty() {
                    ""
                } else {
                    " with the stored fanotify group (execs wait in the kernel meanwhile)"
                }
            );
        }
    }
}

/// Runs `cmd` (the daemon) and keeps it and its stored fds as described above. Returns the
/// exit status to leave with: the daemon's, once it stopped by choice or was asked to.
pub fn supervise(
    cmd: Vec<OsString>,
    pid_file: Option<std::path::PathBuf>,
) -> Result<i32, SuperviseError> {
    if cmd.is_empty() {
        return Err(SuperviseError::NoCommand);
    }
    let socket_name = format!("@driftlock-keeper-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            &socket_name.as_bytes()[1..],
        )
        .map_err(setup("the notify socket"))?;
    let socket = UnixDatagram::bind_addr(&addr).map_err(setup("the notify socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(setup("the notify socket"))?;
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| setup("blocking signals")(e.into()))?;
    let signal_fd = nix::sys::signalfd::SignalFd::with_flags(
        &signals,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|e| setup("a signalfd")(e.into()))?;
    let mut k = Keeper {
        cmd,
        socket,
        socket_name,
        pid_file,
        store: Store::default(),
        child: None,
        stopping: false,
        deaths: Vec::new(),
    };
    k.start().map_err(setup("starting the daemon"))?;
    let mut restart_at: Option<Instant> = None;
    loop {
        let timeout = restart_at.map_or(1000, |t| {
            t.saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as u16
        });
        let mut fds = [
            nix::poll::PollFd::new(k.socket.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(signal_fd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout));
        k.read_notices();
        while let Ok(Some(info)) = signal_fd.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            if let Some(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)) = sig {
                if s != Signal::SIGHUP {
                    k.stopping = true;
                }
                if let Some(c) = &k.child {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), s);
                } else if k.stopping {
                    return Ok(0);
                }
            }
        }
        if let Some(status) = k.reap() {
            k.read_notices();
            if k.stopping {
                return Ok(status.code().unwrap_or(1));
            }
            k.died(status);
            // Backoff: at once the first time, then up to 10 s.
            let wait = Duration::from_millis(200 * (1 << k.deaths.len().min(6)) as u64)
                .min(Duration::from_secs(10));
            restart_at = Some(
                Instant::now()
                    + if k.deaths.len() <= 1 {
                        Duration::ZERO
                    } else {
                        wait
                    },
            );
        }
        if let Some(t) = restart_at {
            if Instant::now() >= t && k.child.is_none() {
                restart_at = None;
                if let Err(e) = k.start() {
                    log::error!("keeper: cannot start the daemon again: {e}");
                    restart_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_store_remove_and_stop() {
        let n = parse_notice(b"FDSTORE=1\nFDNAME=fanotify");
        assert!(n.store && !n.remove && n.name.as_deref() == Some("fanotify"));
        let n = parse_notice(b"FDSTOREREMOVE=1\nFDNAME=fanotify\n");
        assert!(n.remove && !n.store);
        assert!(parse_notice(b"STOPPING=1").stopping);
        assert_eq!(parse_notice(b"READY=1\nWATCHDOG=1"), Notice::default());
        let mut store = Store::default();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        store.apply(&parse_notice(b"FDSTORE=1\nFDNAME=fanotify"), vec![a.into()]);
        store.apply(&parse_notice(b"FDSTORE=1\nFDNAME=fanotify"), vec![b.into()]);
        assert_eq!(store.fds.len(), 1, "a name is stored once");
        store.apply(&parse_notice(b"FDSTOREREMOVE=1\nFDNAME=fanotify"), vec![]);
        assert!(store.fds.is_empty());
    }
}
