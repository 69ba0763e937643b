//! The client side: `driftlock arm | disarm | status` and the OCI hook.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ErrorCode, MAX_REQUEST, Reply, Request, Response, encode_request};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("{}", connect_message(path, source))]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// I/O on the connection failed.
    #[error("talking to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection without an answer.
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    /// The reply did not parse.
    #[error("unreadable reply from the daemon: {0}")]
    BadReply(String),
    /// The daemon refused the request.
    #[error("{message}")]
    Refused {
        /// What kind of failure (absent from a daemon of the first release).
        code: Option<ErrorCode>,
        /// The daemon's message.
        message: String,
    },
}

/// Why a connection failed, in words an operator can act on.
fn connect_message(path: &Path, source: &std::io::Error) -> String {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "permission denied on the driftlock socket {} ({source}): its clients must be root",
            path.display()
        )
    } else {
        format!(
            "cannot connect to the driftlock daemon at {}: {source} (is `driftlock daemon` running?)",
            path.display()
        )
    }
}

impl ClientError {
    /// True when the daemon said it is busy: the same request may succeed later.
    pub fn is_busy(&self) -> bool {
        matches!(self, ClientError::Refused { code: Some(c), .. } if c.is_retryable())
    }

    /// True when no daemon answered in time (not running, not listening, too slow, too
    /// busy): what fail-open covers. A refusal is an answer, and never is.
    pub fn daemon_unavailable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::NoAnswer => true,
            ClientError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            ),
            ClientError::Refused { .. } => self.is_busy(),
            ClientError::BadReply(_) => false,
        }
    }
}

/// First and longest pause between attempts of a request the daemon was too busy for.
const BUSY_BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Like [`request`], but a `busy` reply is retried with backoff until `deadline`; each
/// attempt waits at most `timeout` (and never past the deadline) for its reply.
pub fn request_until(
    socket: &Path,
    req: &Request,
    timeout: Duration,
    deadline: Instant,
) -> Result<Reply, ClientError> {
    let mut pause = BUSY_BACKOFF_FIRST;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = request(socket, req, timeout.min(left).max(Duration::from_millis(1)));
        match attempt {
            Err(e) if e.is_busy() && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(BUSY_BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

/// Sends one request and waits up to `timeout` for the reply.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // The daemon may answer before reading (it refuses a non-root peer at once and closes):
    // a failed write must not hide the reply that is already waiting.
    let written = stream.write_all(&encode_request(req));
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 * 16);
    let mut line = Vec::new();
    let read = reader.read_until(b'\n', &mut line);
    if line.is_empty() {
        written?;
        read?;
        return Err(ClientError::NoAnswer);
    }
    let resp: Response =
        serde_json::from_slice(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if !resp.ok {
        return Err(ClientError::Refused {
            code: resp.code,
            message: resp.error.unwrap_or_else(|| "request refused".into()),
        });
    }
    let value = resp
        .result
        .ok_or_else(|| ClientError::BadReply("no result".into()))?;
    serde_json::from_value(value).map_err(|e| ClientError::BadReply(e.to_string()))
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Regression: the daemon refuses a non-root peer before reading its request and closes;
    /// the client's write then fails (EPIPE), and the refusal must still be reported.
    #[test]
    fn a_reply_sent_before_the_request_was_read_is_reported() {
        let path =
            std::env::temp_dir().join(format!("driftlock-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"v\":1,\"ok\":false,\"error\":\"permission denied: only root\"}\n")
                .unwrap();
            // Closing with the request unread.
        });
        // A request larger than the socket buffer, so the write cannot complete before the close.
        let big = Request::Explain {
            id: "x".into(),
            path: "/".repeat(4 << 20),
            against: None,
        };
        let err = request(&path, &big, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert!(
            err.to_string().contains("permission denied: only root"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }

    /// A daemon whose client slots are all taken answers `busy`: the request is sent
    /// again with backoff and succeeds once a slot is free; a refusal is not retried.
    #[test]
    fn busy_replies_are_retried_until_the_deadline_refusals_are_not() {
        let path = std::env::temp_dir().join(format!("driftlock-busy-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let busy = b"{\"v\":1,\"ok\":false,\"code\":\"busy\",\"error\":\"daemon busy: too many connections, retry\"}\n";
            for _ in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(busy).unwrap();
            }
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.contains("\"op\":\"ping\""), "{line}");
            s.write_all(b"{\"v\":1,\"ok\":true,\"result\":{\"version\":\"x\"}}\n")
                .unwrap();
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(
                b"{\"v\":1,\"ok\":false,\"code\":\"not-found\",\"error\":\"no armed unit\"}\n",
            )
            .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = request_until(&path, &Request::Ping, Duration::from_secs(5), deadline);
        assert!(matches!(reply, Ok(Reply::Pong { .. })), "{reply:?}");
        let started = Instant::now();
        let err =
            request_until(&path, &Request::Status, Duration::from_secs(5), deadline).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Refused {
                    code: Some(ErrorCode::NotFound),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_busy());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a refusal is final"
        );
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
