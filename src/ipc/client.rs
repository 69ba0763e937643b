//! The client side: `driftlock arm | disarm | status` and the OCI hook.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{MAX_REQUEST, Reply, Request, Response, encode_request};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to the driftlock daemon at {}: {source} (is `driftlock daemon` running?)", path.display())]
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
    #[error("{0}")]
    Refused(String),
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
        return Err(ClientError::Refused(
            resp.error.unwrap_or_else(|| "request refused".into()),
        ));
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
        };
        let err = request(&path, &big, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert!(
            err.to_string().contains("permission denied: only root"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
