//! Prometheus text exposition (format 0.0.4), off by default: on a loopback address, or
//! on any address (a pod's, for a cluster's Prometheus) when scrapers must present a
//! bearer token ([`TokenFile`]).
//!
//! Counters come from the event loop's status (one channel round trip per scrape, never a
//! lock on the exec path), the arm counters and the audit queue.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::arming::Armer;
use crate::audit::AuditCounters;
use crate::engine::{EngineStatus, LATENCY_BUCKETS};

mod node;
mod render;
pub use render::render;

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Not a loopback address, and no token to authenticate scrapers.
    #[error(
        "metrics address {0} is not a loopback address: use 127.0.0.1 or [::1], or give --metrics-token-file so that scrapers must authenticate"
    )]
    NotLoopback(SocketAddr),
    /// Bind failed.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The bearer token scrapers must present, read from its file at each scrape (a rotated
/// Kubernetes Secret takes effect at once). A missing, unreadable or empty file refuses
/// every scrape: metrics are never served unauthenticated by accident.
#[derive(Debug, Clone)]
pub struct TokenFile(pub std::path::PathBuf);

impl TokenFile {
    fn token(&self) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(&self.0)
            .map_err(|e| format!("cannot read the metrics token {}: {e}", self.0.display()))?;
        let token = bytes.trim_ascii().to_vec();
        if token.is_empty() {
            return Err(format!(
                "the metrics token file {} is empty",
                self.0.display()
            ));
        }
        Ok(token)
    }
}

/// True when the request head carries `Authorization: Bearer <token>` with this token
/// (compared in constant time).
pub fn authorized(request: &[u8], token: &[u8]) -> bool {
    let head = match request.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &request[..end],
        None => request,
    };
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if !name.trim_ascii().eq_ignore_ascii_case(b"authorization") || value.len() < 7 {
            return false;
        }
        let (scheme, credentials) = value.split_at(6);
        scheme.eq_ignore_ascii_case(b"bearer")
            && credentials.first() == Some(&b' ')
            && constant_time_eq(credentials[1..].trim_ascii(), token)
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes one HTTP/1.0 response (`status` may carry further header lines) and its body.
fn respond(s: &mut std::net::TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()));
}

/// Reads a request head: up to the blank line, 8 KiB, or the socket's timeout.
/// Reads a request head of at most 8 KiB, within `budget` in all (a client that trickles
/// bytes cannot hold a connection longer).
fn read_head(s: &mut std::net::TcpStream, budget: Duration) -> Vec<u8> {
    let until = std::time::Instant::now() + budget;
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    head
}

/// Scrapes served at once; one more is answered 503 at once.
const MAX_SCRAPES: usize = 8;

/// Serves `/metrics` (any path) on `addr` until the process exits. With `token`, a scrape
/// without that bearer token gets 401.
///
/// Metrics never stop enforcement: an address that cannot be bound (another process
/// holds the port) is retried in the background, and `state` says so (`status`, the log).
pub fn serve(
    addr: SocketAddr,
    token: Option<TokenFile>,
    armer: Arc<Armer>,
    audit: Arc<AuditCounters>,
    watchdog: bool,
) -> Result<(), MetricsError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(MetricsError::NotLoopback(addr));
    }
    let endpoint = Arc::new(Endpoint {
        token,
        armer,
        audit,
        watchdog,
        busy: std::sync::atomic::AtomicUsize::new(0),
        last_problem: std::sync::Mutex::new(String::new()),
    });
    // Bound before the daemon says it is ready, as a scraper expects; only a port that is
    // taken is waited for, in the background.
    let first = TcpListener::bind(addr).ok();
    if first.is_some() {
        endpoint
            .armer
            .set_metrics_state(format!("serving on http://{addr}/metrics"));
    }
    std::thread::Builder::new()
        .name("driftlock-metrics".into())
        .spawn(move || {
            let listener = match first {
                Some(l) => l,
                None => bind_until_free(addr, &endpoint.armer),
            };
            for conn in listener.incoming() {
                let Ok(s) = conn else { continue };
                endpoint.accept(s);
            }
        })
        .map(|_| ())
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Binds `addr`, retrying (1 s, doubling to 30 s) while it is taken; says each change in the
/// log and in `armer.metrics_state`.
fn bind_until_free(addr: SocketAddr, armer: &Armer) -> TcpListener {
    let mut wait = Duration::from_secs(1);
    let mut said = false;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => {
                if said {
                    log::warn!("metrics: bound {addr} at last; serving");
                }
                armer.set_metrics_state(format!("serving on http://{addr}/metrics"));
                return l;
            }
            Err(e) => {
                let why = format!(
                    "cannot bind {addr} ({e}): retrying every {}s; enforcement is not affected",
                    wait.as_secs()
                );
                if !said {
                    log::error!("metrics: {why}");
                    said = true;
                }
                armer.set_metrics_state(why);
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The endpoint's shared state.
struct Endpoint {
    token: Option<TokenFile>,
    armer: Arc<Armer>,
    audit: Arc<AuditCounters>,
    watchdog: bool,
    busy: std::sync::atomic::AtomicUsize,
    last_problem: std::sync::Mutex<String>,
}

impl Endpoint {
    /// Serves one connection on a thread of its own, up to [`MAX_SCRAPES`] at once.
    fn accept(self: &Arc<Self>, mut s: std::net::TcpStream) {
        use std::sync::atomic::Ordering::SeqCst;
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        if self.busy.fetch_add(1, SeqCst) >= MAX_SCRAPES {
            self.busy.fetch_sub(1, SeqCst);
            respond(&mut s, "503 Service Unavailable", "text/plain", "busy\n");
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("driftlock-scrape".into())
            .spawn(move || {
                me.scrape(s);
                me.busy.fetch_sub(1, SeqCst);
            });
        if spawned.is_err() {
            self.busy.fetch_sub(1, SeqCst);
        }
    }

    fn scrape(&self, mut s: std::net::TcpStream) {
        let req = read_head(&mut s, Duration::from_secs(2));
        if let Some(t) = &self.token {
            let verdict = t.token().map(|tok| authorized(&req, &tok));
            {
                let mut last = self
                    .last_problem
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match &verdict {
                    // Said once per distinct problem, not at every scrape.
                    Err(problem) if *problem != *last => {
                        log::error!("{problem}: every metrics scrape is refused");
                        *last = problem.clone();
                    }
                    Err(_) => {}
                    Ok(_) => last.clear(),
                }
            }
            if verdict != Ok(true) {
                respond(
                    &mut s,
                    "401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"driftlock\"",
                    "text/plain",
                    "401 unauthorized: send Authorization: Bearer <token>\n",
                );
                return;
            }
        }
        let body = match self.armer.engine.status() {
            Ok(st) => render(
                &st,
                &self.armer,
                &self.audit,
                self.armer.engine.loop_age(),
                self.watchdog,
            ),
            Err(e) => format!("# event loop unavailable: {e}\n"),
        };
        respond(&mut s, "200 OK", "text/plain; version=0.0.4", &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_authorized() {
        let tok = b"s3cret-token";
        let req = |h: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{h}\r\n\r\n");
        assert!(authorized(
            req("Authorization: Bearer s3cret-token").as_bytes(),
            tok
        ));
        assert!(authorized(
            req("authorization:bearer  s3cret-token ").as_bytes(),
            tok
        ));
        assert!(authorized(
            req("AUTHORIZATION: bearer s3cret-token").as_bytes(),
            tok
        ));
        assert!(!authorized(
            req("Authorization: Bearer s3cret-tokeN").as_bytes(),
            tok
        ));
        assert!(!authorized(
            req("Authorization: Bearer s3cret").as_bytes(),
            tok
        ));
        assert!(!authorized(
            req("Authorization: Basic s3cret-token").as_bytes(),
            tok
        ));
        assert!(!authorized(
            req("X-Authorization: Bearer s3cret-token").as_bytes(),
            tok
        ));
        assert!(!authorized(req("").as_bytes(), tok));
        // A header after the blank line is body, not head.
        let smuggled = "GET / HTTP/1.1\r\n\r\nAuthorization: Bearer s3cret-token\r\n";
        assert!(!authorized(smuggled.as_bytes(), tok));
        // The request line itself is not a header.
        assert!(!authorized(
            b"Authorization: Bearer s3cret-token\r\n\r\n",
            tok
        ));
    }

    #[test]
    fn a_token_file_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("driftlock-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "abc\n").unwrap();
        assert_eq!(TokenFile(f.clone()).token().unwrap(), b"abc");
        std::fs::write(&f, " \n").unwrap();
        assert!(TokenFile(f.clone()).token().unwrap_err().contains("empty"));
        std::fs::remove_file(&f).unwrap();
        assert!(TokenFile(f).token().unwrap_err().contains("cannot read"));
        std::fs::remove_dir(&dir).unwrap();
    }
}
