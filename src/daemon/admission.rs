//! The giving side of a hand-over: who may still change the daemon's state, closed while
//! it hands its fanotify group to a successor.

use std::os::fd::OwnedFd;

use super::control::handle_request;
use crate::arming::Armer;
use crate::ipc::server::{bind, serve};
use crate::ipc::{ErrorCode, Reply, Request, Response};
use crate::kernel::KernelError;

use super::{Running, Serving, spawn};

/// Who may still change the daemon's state: closed while it hands over to a successor.
#[derive(Default)]
pub(super) struct Admission {
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
    pub(super) fn handle(&self, armer: &Armer, req: Request) -> Response {
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
    pub(super) fn close_and_drain(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.closing.store(true, SeqCst);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.changing.load(SeqCst) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub(super) fn handed_over(&self) -> bool {
        self.successor.load(std::sync::atomic::Ordering::SeqCst) != 0
    }

    pub(super) fn take_pending(&self) -> Option<std::os::unix::net::UnixStream> {
        self.pending.lock().ok()?.take()
    }

    /// A successor asks for the group (on a socket thread).
    pub(super) fn hand_over_requested(
        &self,
        mut stream: std::os::unix::net::UnixStream,
        group: &OwnedFd,
    ) {
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
    pub(super) fn send_group(
        &self,
        stream: std::os::unix::net::UnixStream,
        group: &OwnedFd,
        relayed: bool,
    ) {
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

impl Running {
    /// A successor asked for the group: stop reading events, stay reachable for a relay,
    /// and send the group; then idle until stopped.
    pub(super) fn hand_over(&mut self, predecessor: &std::path::Path, serving: &Serving) {
        let Some(stream) = self.admission.take_pending() else {
            return;
        };
        if self.engine_thread.is_finished() || self.admission.handed_over() {
            return;
        }
        let began = std::time::Instant::now();
        self.admission.close_and_drain();
        self.stop_watch
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.shutdown();
        let stopped = std::mem::replace(
            &mut self.engine_thread,
            std::thread::spawn(|| Ok::<(), KernelError>(())),
        )
        .join();
        if !matches!(stopped, Ok(Ok(()))) {
            log::error!("the event loop did not stop cleanly before the hand-over");
        }
        // Reachable for a relay once the successor's socket takes the name.
        match bind(predecessor) {
            Ok(l) => {
                let (h, o) = (
                    std::sync::Arc::clone(&serving.handler),
                    std::sync::Arc::clone(&serving.hand_over),
                );
                let _ = spawn("driftlock-predecessor", move || serve(l, h, Some(o)));
            }
            Err(e) => {
                log::warn!("{e}: should the successor die, the next one cannot be handed the group")
            }
        }
        self.admission.send_group(stream, &self.group_copy, false);
        // A keeper holding the group (the pod's first process) must not start this daemon
        // again should it die now: the successor has the group.
        let _ = crate::service::notify("STOPPING=1", &[]);
        log::info!(
            "stopped reading events and handed the fanotify group over in {} ms; idle until stopped",
            began.elapsed().as_millis()
        );
    }
}
