//! The daemon's socket: root-only, bounded, never blocking the event loop.
//!
//! Only root may talk to the daemon: the socket is created mode 0600 in a root-owned
//! directory, and each connection's peer credentials (`SO_PEERCRED`) are checked as well,
//! since file modes do not stop a process that inherited an fd. Each connection has its own
//! thread with read and write timeouts and a request size cap, and the number of
//! connections is capped, so garbage, huge or byte-by-byte clients cannot starve others.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{ErrorCode, MAX_REQUEST, Request, Response, parse_request};

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created.
    #[error("cannot create socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on this socket.
    #[error("another driftlock daemon is already listening on {}", .0.display())]
    InUse(PathBuf),
}

/// Connections served at once; more are refused with a message.
pub const MAX_CLIENTS: usize = 64;
/// How long a client may take to send one whole request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the listening socket (mode 0600, parent directory 0755 if created).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(err)?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(err)?;
        } else {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
    }
    // umask-independent: bind under a restrictive umask, then set the mode explicitly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Binds a new socket at `path` in place of a live daemon's: bound under a temporary name
/// beside it, then renamed over it, so that a client connecting meanwhile reaches one
/// daemon or the other, never no socket.
pub fn bind_replacing(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let mut temp = path.as_os_str().to_os_string();
    temp.push(format!(".new-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = fs::remove_file(&temp);
    let listener = bind(&temp)?;
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        err(e)
    })?;
    Ok(listener)
}

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Takes a hand-over request's connection (the reply carries an fd, so it is not a
/// [`Handler`]'s plain [`Response`]); `None`: this daemon does not hand over.
pub type HandOverHook = Arc<dyn Fn(UnixStream) + Send + Sync>;

/// Accepts connections forever, one thread each.
pub fn serve(listener: UnixListener, handler: Handler, hand_over: Option<HandOverHook>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = reply(
                &mut s,
                &Response::err(ErrorCode::Busy, "daemon busy: too many connections, retry"),
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let handler = Arc::clone(&handler);
        let hand_over = hand_over.clone();
        let active2 = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("driftlock-client".into())
            .spawn(move || {
                handle_connection(stream, &handler, hand_over.as_ref());
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn reply(stream: &mut UnixStream, resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line)
}

#[derive(Debug, thiserror::Error)]
enum RequestReadError {
    #[error("request timed out: send one JSON line within {} s", READ_TIMEOUT.as_secs())]
    TimedOut,
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(std::io::Error),
}

/// Reads one request line (newline included) with one deadline for the whole line, so a
/// client trickling a byte at a time cannot hold its connection longer than a fast one.
/// `pending` carries bytes after the line to the next call. `Ok(None)`: the client closed.
fn read_request_line(
    stream: &mut UnixStream,
    pending: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, RequestReadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut scanned = 0;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = pending[scanned..].iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(scanned + at + 1);
            let line = std::mem::replace(pending, rest);
            if line.len() > MAX_REQUEST + 1 {
                return Err(RequestReadError::TooLarge);
            }
            return Ok(Some(line));
        }
        scanned = pending.len();
        if pending.len() > MAX_REQUEST {
            return Err(RequestReadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestReadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(RequestReadError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) if pending.is_empty() => return Ok(None),
            // A last request without its newline is still a request.
            Ok(0) => return Ok(Some(std::mem::take(pending))),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RequestReadError::TimedOut);
            }
            Err(e) => return Err(RequestReadError::Io(e)),
        }
    }
}

fn handle_connection(mut stream: UnixStream, handler: &Handler, hand_over: Option<&HandOverHook>) {
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    match getsockopt(&stream, PeerCredentials) {
        Ok(cred) if cred.uid() == 0 => {}
        Ok(cred) => {
            log::warn!(
                "refused a client with uid {} (pid {})",
                cred.uid(),
                cred.pid()
            );
            let _ = reply(
                &mut stream,
                &Response::err(
                    ErrorCode::Forbidden,
                    format!(
                        "permission denied: only root may use the driftlock socket (your uid is {})",
                        cred.uid()
                    ),
                ),
            );
            return;
        }
        Err(e) => {
            log::warn!("cannot read a client's credentials: {e}");
            return;
        }
    }
    let mut pending = Vec::new();
    loop {
        let mut line = match read_request_line(&mut stream, &mut pending) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(RequestReadError::Io(e)) => {
                log::debug!("client read failed: {e}");
                return;
            }
            Err(e) => {
                let _ = reply(
                    &mut stream,
                    &Response::err(ErrorCode::Invalid, e.to_string()),
                );
                return;
            }
        };
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let resp = match parse_request(&line) {
            Ok(Request::HandOver) => match hand_over {
                Some(hook) => {
                    hook(stream);
                    return;
                }
                None => Response::err(ErrorCode::Invalid, "this daemon does not hand over"),
            },
            Ok(req) => handler(req),
            Err(e) => Response::err(ErrorCode::Invalid, e.to_string()),
        };
        if reply(&mut stream, &resp).is_err() {
            return;
        }
    }
}
