//! The record writer: a thread that completes each record (its process chain, its hash)
//! and writes it to the sinks (stdout, the log file, Falcosidekick, the quarantine).

use super::*;

/// A record on its way to the sinks.
#[derive(Debug)]
pub enum AuditJob {
    /// An exec record, with a duplicate of the event's fd for the SHA-256 (read after the
    /// exec was answered).
    Exec {
        /// The record.
        record: Box<AuditRecord>,
        /// The executed file.
        file: Option<OwnedFd>,
        /// The process context still to be read into the record (by the writer).
        process: Option<ProcessToRead>,
    },
    /// A coverage record.
    Coverage(CoverageRecord),
    /// Records a unit's budget held back.
    Suppressed(SuppressedRecord),
    /// A mapping the gate refused.
    Mapping(Box<MappingRecord>),
    /// A unit's mode changed while it ran.
    Mode(ModeRecord),
}

impl AuditJob {
    /// The unit the record is about (its queue).
    pub fn unit(&self) -> &str {
        match self {
            AuditJob::Exec { record, .. } => &record.unit,
            AuditJob::Coverage(c) => &c.unit,
            AuditJob::Suppressed(s) => &s.unit,
            AuditJob::Mapping(m) => &m.unit,
            AuditJob::Mode(m) => &m.unit,
        }
    }

    /// About how many bytes the job holds while queued.
    pub fn approx_bytes(&self) -> usize {
        match self {
            AuditJob::Exec { record, .. } => record.approx_bytes(),
            AuditJob::Coverage(_) | AuditJob::Suppressed(_) | AuditJob::Mode(_) => 512,
            AuditJob::Mapping(m) => {
                1024 + m.cmdline.iter().map(String::len).sum::<usize>()
                    + m.chain
                        .iter()
                        .map(|p| 128 + p.cmdline.iter().map(String::len).sum::<usize>())
                        .sum::<usize>()
            }
        }
    }
}

/// The part of a record's process context the record writer reads: the process's
/// ancestors (a walk up `/proc` costs the event thread some 200 µs; the process itself is
/// read on the event thread, before a denied exec is answered, as it may be reaped the
/// moment it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessToRead {
    /// The unit's first process: the chain ends with it.
    pub stop: Option<i32>,
}

impl ProcessToRead {
    /// Reads the ancestors of the record's process into its chain, then fits the record to
    /// its budget.
    pub fn read_into(self, record: &mut AuditRecord) {
        if let (Some(pid), Some(ppid)) = (record.pid, record.ppid) {
            if Some(pid) != self.stop {
                let room = MAX_CHAIN.saturating_sub(record.chain.len());
                record.chain.extend(
                    crate::kernel::procfs::parent_chain(ppid, room, self.stop)
                        .iter()
                        .map(ProcessRecord::from),
                );
            }
        }
        record.fit(MAX_RECORD_BYTES);
    }
}

/// Where records go.
#[derive(Debug, Default)]
pub struct AuditSinks {
    /// Write to stdout (journald under systemd).
    pub stdout: bool,
    /// Also append to this file.
    pub file: Option<File>,
    /// Also post exec records, in Falco's alert shape, to Falcosidekick.
    pub falcosidekick: Option<falco::Endpoint>,
    /// Keep the bytes of denied and would-deny programs here.
    pub quarantine: Option<evidence::Quarantine>,
    /// The audit log's path: reopened (after a log rotation) when asked
    /// ([`AuditQueue::reopen_file`]).
    pub file_path: Option<std::path::PathBuf>,
    /// The node's name, put first in every record (`"node"`).
    pub node: Option<String>,
}

/// The node's name for records: `$DRIFTLOCK_NODE_NAME` (Kubernetes' downward API gives the
/// pod `spec.nodeName`), else the host name.
pub fn node_name() -> Option<String> {
    std::env::var("DRIFTLOCK_NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// Alerts waiting for Falcosidekick at most; more are dropped (and counted).
const FALCO_QUEUE: usize = 1024;

fn start_falco_poster(
    endpoint: falco::Endpoint,
    counters: Arc<AuditCounters>,
) -> Option<crossbeam_channel::Sender<serde_json::Value>> {
    let (tx, rx) = crossbeam_channel::bounded::<serde_json::Value>(FALCO_QUEUE);
    std::thread::Builder::new()
        .name("driftlock-falco".into())
        .spawn(move || {
            for alert in rx {
                match falco::post(&endpoint, &alert) {
                    Ok(code) if (200..300).contains(&code) => {
                        counters.falco_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(code) => {
                        counters.falco_failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!("Falcosidekick at {} answered {code}", endpoint.authority);
                    }
                    Err(e) => {
                        counters.falco_failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "cannot post to Falcosidekick at {}: {e}",
                            endpoint.authority
                        );
                    }
                }
            }
        })
        .ok()?;
    Some(tx)
}

/// Starts the writer thread. It ends when every [`AuditQueue`] is dropped.
pub fn start_writer(mut sinks: AuditSinks) -> (AuditQueue, std::thread::JoinHandle<()>) {
    let queue = AuditQueue::new();
    let counters = Arc::clone(&queue.counters);
    let c = Arc::clone(&counters);
    let jobs = Arc::clone(&queue.queue);
    let falco = sinks
        .falcosidekick
        .take()
        .and_then(|e| start_falco_poster(e, Arc::clone(&counters)));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    // Encoded once: every record starts with it.
    let node = sinks
        .node
        .as_ref()
        .and_then(|n| serde_json::to_string(n).ok());
    let handle = std::thread::Builder::new()
        .name("driftlock-audit".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let mut hash_budget = RecordHashBudget::default();
            while let Some(job) = jobs.pop() {
                let job_bytes = job.approx_bytes() as u64;
                let mut line = match job {
                    AuditJob::Exec {
                        mut record,
                        file,
                        process,
                    } => {
                        if let Some(p) = process {
                            p.read_into(&mut record);
                        }
                        complete_exec(
                            &mut record,
                            file.as_ref(),
                            sinks.quarantine.as_ref(),
                            &mut hash_budget,
                            &mut buf,
                        );
                        drop(file);
                        if let Some(tx) = &falco {
                            if tx.try_send(falco::to_falco(&record, &hostname)).is_err() {
                                c.falco_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        record.to_json()
                    }
                    AuditJob::Coverage(c) => serde_json::to_string(&c).unwrap_or_default(),
                    AuditJob::Suppressed(s) => serde_json::to_string(&s).unwrap_or_default(),
                    AuditJob::Mode(m) => serde_json::to_string(&m).unwrap_or_default(),
                    AuditJob::Mapping(mut m) => {
                        m.read_source(&mut hash_budget, &mut buf);
                        serde_json::to_string(&m).unwrap_or_default()
                    }
                };
                if let (Some(node), Some(rest)) = (node.as_deref(), line.strip_prefix('{')) {
                    line = format!("{{\"node\":{node},{rest}");
                }
                line.push('\n');
                write_line(&mut sinks, &line, job_bytes, &c);
            }
        });
    let handle = match handle {
        Ok(h) => h,
        // Spawning fails only when the process is out of threads or memory at startup.
        Err(e) => {
            log::error!("cannot start the audit writer: {e}");
            std::thread::spawn(|| {})
        }
    };
    (queue, handle)
}

/// Completes an exec's record before it is written: the SHA-256 of the content judged
/// (within the hash budget), and the evidence kept in quarantine for a denial.
fn complete_exec(
    record: &mut AuditRecord,
    file: Option<&OwnedFd>,
    quarantine: Option<&evidence::Quarantine>,
    hash_budget: &mut RecordHashBudget,
    buf: &mut Vec<u8>,
) {
    // A file too large to be the image's (judged without hashing) is not
    // hashed here either: an 8 EiB sparse file would hold this thread.
    let small = record.size.is_none_or(|s| s <= MAX_RECORD_HASH)
        && record.sha256.is_none()
        && file.is_some()
        && hash_budget.take(
            &record.unit,
            record.size.unwrap_or(0),
            std::time::Instant::now(),
        );
    if let (Some(fd), None, true) = (file, record.sha256.as_ref(), small) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        if let Ok(d) = hash_fd_content(fd.as_fd(), buf, true, Some(deadline)) {
            // The SHA-256 describes the judged content only if this pass
            // read the same bytes: compare BLAKE3s (metadata may move
            // meanwhile, e.g. the container's removal unlinks the file).
            let blake = d.blake3.to_string();
            match record.blake3.as_ref() {
                Some(judged) if *judged == blake => {
                    record.sha256 = d.sha256.map(hex::encode);
                }
                // Rewritten since the verdict: this pass describes
                // another content; leave it out.
                Some(_) => {}
                // Judged without a digest (too large for the image):
                // what this pass read may not be what was denied.
                None => {
                    record.sha256 = d.sha256.map(hex::encode);
                    record.blake3 = Some(blake);
                    record.content_unverified = true;
                }
            }
        }
    }
    if let (Some(q), Some(fd), Some(sha), true) = (
        quarantine,
        file,
        record.sha256.clone(),
        record.verdict != Verdict::Allow,
    ) {
        let meta = evidence::EvidenceMeta {
            sha256: sha.clone(),
            size: record.size.unwrap_or(0),
            first_seen: record.time.clone(),
            path: record.path.clone(),
            unit: record.unit.clone(),
            image: record
                .image_name
                .clone()
                .unwrap_or_else(|| record.image_key.clone()),
            verdict: record.verdict,
        };
        match q.keep(fd.as_fd(), &sha, record.size.unwrap_or(0), meta) {
            Ok(id) => record.evidence = Some(id),
            Err(e) => log::warn!("evidence of {sha} not kept: {e}"),
        }
    }
}

/// Writes one record's line to the sinks, and counts it.
fn write_line(sinks: &mut AuditSinks, line: &str, job_bytes: u64, c: &AuditCounters) {
    c.queued.fetch_sub(1, Ordering::Relaxed);
    if c.reopen.swap(false, Ordering::Relaxed) {
        if let Some(path) = sinks.file_path.as_ref() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => sinks.file = Some(f),
                Err(e) => log::error!(
                    "cannot reopen the audit log {}: {e}; still writing to the old file",
                    path.display()
                ),
            }
        }
    }
    c.queued_bytes.fetch_sub(job_bytes, Ordering::Relaxed);
    let mut ok = true;
    if sinks.stdout {
        let mut out = std::io::stdout().lock();
        ok &= out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .is_ok();
    }
    if let Some(f) = sinks.file.as_mut() {
        ok &= f.write_all(line.as_bytes()).is_ok();
    }
    if ok {
        c.written.fetch_add(1, Ordering::Relaxed);
    } else {
        c.write_errors.fetch_add(1, Ordering::Relaxed);
    }
}
