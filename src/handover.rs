//! Handing the fanotify group from a running daemon to its successor, so that replacing the
//! daemon (a Kubernetes rolling update, where no service manager keeps the group) leaves
//! no moment unprotected.
//!
//! The successor (`driftlock daemon --take-over`) connects to the running daemon's socket
//! and asks for a hand-over. The running daemon then refuses new arm and disarm requests
//! as busy (clients retry), lets those under way finish, stops reading events and answers
//! every one it has read, and sends a copy of its group fd with its reply (`SCM_RIGHTS`).
//! Every container's marks belong to the group, so they never leave the kernel: execs
//! that come meanwhile wait in the kernel until the successor reads them. The successor
//! re-arms the recorded units, starts reading, and renames its own socket over the old
//! one. The old daemon keeps its copy of the group and idles until it is stopped: should
//! the successor die before it is done, the group (and the marks) still live, and the
//! next successor is handed the same group, with the events the dead one read answered
//! (`relayed`; the old daemon listens at [`predecessor_socket`] for that). A running daemon
//! that cannot hand over (a version before this protocol) is not waited for: the successor
//! starts beside it with a group of its own and takes the socket, so its containers are
//! judged by both until it stops (and rebinds the socket if the old one removes it as it
//! exits). Only one process ever reads the group at a time: the kernel matches a
//! response to its event by fd number alone.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::ipc::{Reply, Request, Response, encode_request};

/// How long a successor waits for the running daemon to finish what it is doing (arms
/// under way, hashes in flight) and hand over.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(90);

/// What asking the daemon at a socket for its group gave.
#[derive(Debug)]
pub enum TakeOver {
    /// No daemon answers there.
    NoDaemon,
    /// The group, handed over.
    Taken {
        /// The fanotify group.
        group: OwnedFd,
        /// The daemon that handed it over.
        pid: u32,
        /// Its version.
        version: String,
        /// Events read by a dead successor may wait unanswered in the group.
        relayed: bool,
    },
    /// A daemon answers but does not hand over (an older version, or one busy handing
    /// over to another).
    Refused(String),
}

/// Errors talking to the running daemon.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// The connection failed midway.
    #[error("hand-over from the daemon at {path} failed: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The reply made no sense.
    #[error("hand-over from the daemon at {path}: {message}")]
    Protocol {
        /// The socket.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// Asks the daemon at `socket` for its fanotify group.
pub fn request_group(socket: &Path, timeout: Duration) -> Result<TakeOver, HandOverError> {
    let path = crate::escape::escape_bytes(socket.as_os_str().as_encoded_bytes());
    let io = |source| HandOverError::Io {
        path: path.clone(),
        source,
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(TakeOver::NoDaemon);
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    std::io::Write::write_all(&mut &stream, &encode_request(&Request::HandOver)).map_err(io)?;
    let (line, fd) = crate::kernel::fdpass::recv_line_with_fd(&stream, 1 << 20).map_err(io)?;
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    if line.is_empty() {
        return Err(HandOverError::Protocol {
            path,
            message: "the daemon closed the connection without answering".into(),
        });
    }
    let resp: Response = serde_json::from_slice(line).map_err(|e| HandOverError::Protocol {
        path: path.clone(),
        message: format!("unreadable reply: {e}"),
    })?;
    if !resp.ok {
        return Ok(TakeOver::Refused(
            resp.error.unwrap_or_else(|| "hand-over refused".into()),
        ));
    }
    let reply: Reply = resp
        .result
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| HandOverError::Protocol {
            path: path.clone(),
            message: "a reply without a hand-over result".into(),
        })?;
    let Reply::HandedOver {
        pid,
        version,
        relayed,
    } = reply
    else {
        return Err(HandOverError::Protocol {
            path,
            message: "a reply that is not a hand-over".into(),
        });
    };
    let group = fd.ok_or_else(|| HandOverError::Protocol {
        path: path.clone(),
        message: "the reply came without the fanotify group".into(),
    })?;
    if !crate::kernel::is_fanotify(&group) {
        return Err(HandOverError::Protocol {
            path,
            message: "the fd handed over is not a fanotify group".into(),
        });
    }
    Ok(TakeOver::Taken {
        group,
        pid,
        version,
        relayed,
    })
}

/// Where a daemon that handed over stays reachable for a relay (its successor's socket
/// has taken `socket`'s name).
pub fn predecessor_socket(socket: &Path) -> std::path::PathBuf {
    let mut p = socket.as_os_str().to_os_string();
    p.push(".predecessor");
    p.into()
}

/// Asks the daemon at `socket` for its group, and if none answers there, a predecessor
/// that still holds the group of a successor that died ([`predecessor_socket`]).
pub fn take_over(socket: &Path, timeout: Duration) -> Result<TakeOver, HandOverError> {
    match request_group(socket, timeout)? {
        TakeOver::NoDaemon => match request_group(&predecessor_socket(socket), timeout)? {
            // A predecessor that still runs its own loop never listens there.
            TakeOver::Refused(_) => Ok(TakeOver::NoDaemon),
            other => Ok(other),
        },
        other => Ok(other),
    }
}
