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

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition text.
pub fn render(
    s: &EngineStatus,
    armer: &Armer,
    audit: &AuditCounters,
    loop_age: f64,
    watchdog: bool,
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP driftlock_execs_total Execs judged in the armed units, by verdict.\n# TYPE driftlock_execs_total counter"
    );
    // Units that are gone still count: these are counters, and must never fall.
    let retired = s.stats.retired;
    let (mut allow, mut deny, mut would) = (retired.allowed, retired.denied, retired.would_deny);
    for u in &s.units {
        allow += u.counters.allowed;
        deny += u.counters.denied;
        would += u.counters.would_deny;
    }
    let _ = writeln!(out, "driftlock_execs_total{{verdict=\"allow\"}} {allow}");
    let _ = writeln!(out, "driftlock_execs_total{{verdict=\"deny\"}} {deny}");
    let _ = writeln!(
        out,
        "driftlock_execs_total{{verdict=\"would-deny\"}} {would}"
    );
    let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{name}{l}");
        }
    };
    section(
        "driftlock_unit_execs_total",
        "counter",
        "Execs judged per armed unit, by verdict.",
        s.units
            .iter()
            .flat_map(|u| {
                let id = label(&u.id);
                [
                    format!("{{unit=\"{id}\",verdict=\"allow\"}} {}", u.counters.allowed),
                    format!("{{unit=\"{id}\",verdict=\"deny\"}} {}", u.counters.denied),
                    format!(
                        "{{unit=\"{id}\",verdict=\"would-deny\"}} {}",
                        u.counters.would_deny
                    ),
                ]
            })
            .collect(),
    );
    let hits: u64 = retired.cache_hits + s.units.iter().map(|u| u.cache.hits).sum::<u64>();
    let misses: u64 = retired.cache_misses + s.units.iter().map(|u| u.cache.misses).sum::<u64>();
    section(
        "driftlock_cache_hits_total",
        "counter",
        "Execs answered from the verdict cache.",
        vec![format!(" {hits}")],
    );
    section(
        "driftlock_cache_misses_total",
        "counter",
        "Execs that needed hashing.",
        vec![format!(" {misses}")],
    );
    section(
        "driftlock_hash_bytes_total",
        "counter",
        "Bytes hashed at exec time.",
        vec![format!(" {}", s.stats.hashed_bytes)],
    );
    section(
        "driftlock_hash_seconds_total",
        "counter",
        "Time spent hashing at exec time.",
        vec![format!(" {}", s.stats.hash_seconds)],
    );
    let mut cumulative = 0;
    let mut lines = Vec::new();
    for (i, count) in s.stats.latency_buckets.iter().enumerate() {
        cumulative += count;
        let le = LATENCY_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        lines.push(format!("_bucket{{le=\"{le}\"}} {cumulative}"));
    }
    lines.push(format!("_sum {}", s.stats.latency_seconds));
    lines.push(format!("_count {cumulative}"));
    section(
        "driftlock_decision_latency_seconds",
        "histogram",
        "Time from reading a permission event to answering it.",
        lines,
    );
    section(
        "driftlock_events_total",
        "counter",
        "fanotify events read, by kind.",
        vec![
            format!("{{kind=\"exec-permission\"}} {}", s.stats.permission_events),
            format!("{{kind=\"exec-notice\"}} {}", s.stats.exec_notices),
            format!("{{kind=\"open-permission\"}} {}", s.stats.open_events),
            format!("{{kind=\"close-write\"}} {}", s.stats.close_writes),
        ],
    );
    section(
        "driftlock_queue_overflows_total",
        "counter",
        "fanotify queue overflows (caches flushed).",
        vec![format!(" {}", s.stats.overflows)],
    );
    section(
        "driftlock_unanswered_drops_total",
        "counter",
        "Permission events answered by drop (a bug if nonzero).",
        vec![format!(" {}", s.stats.unanswered_drops)],
    );
    section(
        "driftlock_kernel_allowed_files_total",
        "counter",
        "Files on immutable filesystems whose later execs the kernel allows without an event.",
        vec![format!(" {}", s.stats.kernel_allowed_files)],
    );
    // Every (verdict, reason) pair is always present, at zero if need be, so that a rate
    // or an alert on one reason works before its first denial.
    section(
        "driftlock_denials_total",
        "counter",
        "Denials (enforce) and would-denials (audit), by the reason the rule gave.",
        crate::verdict::Reason::ALL
            .iter()
            .filter(|r| **r != crate::verdict::Reason::InBaseline)
            .flat_map(|r| {
                let name = r.as_str();
                let n =
                    |m: &std::collections::BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
                [
                    format!(
                        "{{verdict=\"deny\",reason=\"{name}\",rule=\"{}\"}} {}",
                        r.rule(),
                        n(&s.stats.denied_by_reason)
                    ),
                    format!(
                        "{{verdict=\"would-deny\",reason=\"{name}\",rule=\"{}\"}} {}",
                        r.rule(),
                        n(&s.stats.would_deny_by_reason)
                    ),
                ]
            })
            .collect(),
    );
    section(
        "driftlock_loader_checks_total",
        "counter",
        "Loader execs whose thread was asked what it executes.",
        vec![format!(" {}", s.stats.loader_checks)],
    );
    section(
        "driftlock_loader_not_blocked_looks_total",
        "counter",
        "Looks at a loader exec's thread that found it not yet blocked (it was looked at again).",
        vec![format!(" {}", s.stats.loader_not_blocked_looks)],
    );
    section(
        "driftlock_loader_waits_total",
        "counter",
        "Loader checks that waited off the event path for their thread to block.",
        vec![format!(" {}", s.stats.loader_waits)],
    );
    section(
        "driftlock_loader_wait_max_seconds",
        "gauge",
        "Longest wait of one loader check for its thread to block.",
        vec![format!(" {}", s.stats.loader_wait_max_us as f64 / 1e6)],
    );
    section(
        "driftlock_armed_units",
        "gauge",
        "Armed units (containers).",
        vec![format!(" {}", s.units.len())],
    );
    section(
        "driftlock_build_info",
        "gauge",
        "The running daemon's version and source revision (always 1).",
        vec![format!(
            "{{version=\"{}\",revision=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            option_env!("DRIFTLOCK_REVISION").unwrap_or("unknown")
        )],
    );
    section(
        "driftlock_kernel_feature",
        "gauge",
        "1 if the kernel offers the feature driftlock uses (probed at start), 0 if not: protection is then degraded (see `driftlock status` or `driftlock doctor`).",
        armer
            .features
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .features
            .iter()
            .map(|f| {
                format!(
                    "{{feature=\"{}\"}} {}",
                    label(&f.name),
                    u8::from(f.available)
                )
            })
            .collect(),
    );
    section(
        "driftlock_mapping_gate_active",
        "gauge",
        "1 if the BPF LSM mapping gate is active (executable mappings judged in the kernel).",
        vec![format!(
            " {}",
            u8::from(armer.mapping_gate_state.starts_with("active"))
        )],
    );
    section(
        "driftlock_mapping_total",
        "counter",
        "Executable mappings of armed files the mapping gate checked, refused, or would refuse (audit).",
        vec![
            format!("{{result=\"checked\"}} {}", s.stats.mapping_checked),
            format!("{{result=\"refused\"}} {}", s.stats.mapping_refused),
            format!(
                "{{result=\"would-refuse\"}} {}",
                s.stats.mapping_would_refuse
            ),
        ],
    );
    section(
        "driftlock_rearm_pending_units",
        "gauge",
        "Recorded units whose re-arm after a restart failed and is being retried.",
        vec![format!(" {}", armer.pending_units().len())],
    );
    section(
        "driftlock_denied_unhashed_total",
        "counter",
        "Files denied without hashing: no executable of their image and no allow entry has their size.",
        vec![format!(" {}", s.stats.denied_unhashed)],
    );
    section(
        "driftlock_unattributed_denied_total",
        "counter",
        "Execs on a marked filesystem that no unit claims, denied.",
        vec![format!(" {}", s.stats.unattributed_denied)],
    );
    section(
        "driftlock_hash_backlog_total",
        "counter",
        "Misses that waited in their unit's backlog (the unit held its share of the hash pool), and misses denied because that backlog was full.",
        vec![
            format!("{{result=\"queued\"}} {}", s.stats.hash_backlogged),
            format!("{{result=\"full\"}} {}", s.stats.hash_backlog_full),
        ],
    );
    section(
        "driftlock_records_suppressed_total",
        "counter",
        "Records a unit's record budget held back (summarized in \"suppressed\" lines).",
        vec![format!(" {}", s.stats.records_suppressed)],
    );
    section(
        "driftlock_fail_open_containers_total",
        "counter",
        "Containers that started unprotected because their hook could not reach the daemon (fail-open).",
        vec![format!(" {}", armer.stats.fail_open.load(Relaxed))],
    );
    let armed = armer.stats.armed.load(Relaxed);
    section(
        "driftlock_arms_total",
        "counter",
        "Arm requests, by result.",
        vec![
            format!("{{result=\"ok\"}} {armed}"),
            format!("{{result=\"error\"}} {}", armer.stats.failed.load(Relaxed)),
        ],
    );
    section(
        "driftlock_arm_seconds_total",
        "counter",
        "Time spent arming (successful arms).",
        vec![format!(
            " {}",
            armer.stats.micros.load(Relaxed) as f64 / 1e6
        )],
    );
    section(
        "driftlock_in_flight",
        "gauge",
        "Files being hashed for waiting execs.",
        vec![format!(" {}", s.in_flight)],
    );
    section(
        "driftlock_audit_queue",
        "gauge",
        "Records waiting for the audit writer.",
        vec![format!(" {}", audit.queued.load(Relaxed))],
    );
    section(
        "driftlock_audit_dropped_total",
        "counter",
        "Records dropped because the audit queue was full.",
        vec![format!(" {}", audit.dropped.load(Relaxed))],
    );
    section(
        "driftlock_event_loop_age_seconds",
        "gauge",
        "Seconds since the event loop last iterated (at least once a second when healthy).",
        vec![format!(" {loop_age}")],
    );
    section(
        "driftlock_watchdog_enabled",
        "gauge",
        "1 if systemd's watchdog is fed by the event loop.",
        vec![format!(" {}", u8::from(watchdog))],
    );
    out
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
