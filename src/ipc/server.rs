//! The daemon's socket: root-only, bounded, never blocking the event loop.
//!
//! Only root may talk to the daemon: the socket is created mode 0600 in a root-owned
//! directory, and each connection's peer credentials (`SO_PEERCRED`) are checked as well,
//! since file modes do not stop a process that inherited an fd. Each connection has its own
//! thread with read and write timeouts and a request size cap, and the number of
//! connections is capped, so garbage, huge or byte-by-byte clients cannot starve others.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{MAX_REQUEST, Request, Response, parse_request};

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
/// How long a client may take to send a request line.
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

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Accepts connections forever, one thread each.
pub fn serve(listener: UnixListener, handler: Handler) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
            let mut s = stream;
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = reply(
                &mut s,
                &Response::err("daemon busy: too many connections, retry"),
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let handler = Arc::clone(&handler);
        let active2 = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("driftlock-client".into())
            .spawn(move || {
                handle_connection(stream, &handler);
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

fn handle_connection(mut stream: UnixStream, handler: &Handler) {
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
                &Response::err(format!(
                    "permission denied: only root may use the driftlock socket (your uid is {})",
                    cred.uid()
                )),
            );
            return;
        }
        Err(e) => {
            log::warn!("cannot read a client's credentials: {e}");
            return;
        }
    }
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut line = Vec::new();
        let n = match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    log::debug!("client read failed: {e}");
                } else {
                    let _ = reply(
                        &mut stream,
                        &Response::err("request timed out: send one JSON line"),
                    );
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        if line.len() > MAX_REQUEST {
            let _ = reply(
                &mut stream,
                &Response::err(format!("request larger than {MAX_REQUEST} bytes")),
            );
            return;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let resp = match parse_request(&line) {
            Ok(req) => handler(req),
            Err(e) => Response::err(e.to_string()),
        };
        if reply(&mut stream, &resp).is_err() {
            return;
        }
    }
}
