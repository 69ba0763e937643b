//! Audit records for denied, would-deny and recorded execs. Of a denied exec, only its own
//! process is read while it is held (a few capped reads: it may exit as soon as it is
//! answered), its ancestors after the answer; an allowed one is described while it is still
//! held (after the answer, its process is the new program). Every `/proc` read is capped, every record fits
//! [`crate::audit::MAX_RECORD_BYTES`], and each unit's records have a budget.

use super::*;

/// The evidence behind a finding that no rule described on its own.
pub(super) fn default_detail(
    unit: &Unit,
    reason: Reason,
    digest: Option<Digest>,
    size: u64,
) -> Option<String> {
    let what = match digest {
        Some(d) => format!("content blake3:{d}"),
        None => "content not hashed".to_string(),
    };
    Some(match reason {
        Reason::InBaseline => return None,
        Reason::NotInBaseline if digest.is_none() => format!(
            "{size} bytes: no executable of the image (the largest has {} bytes) and no allow entry has this size, so it is not in the baseline; judged without hashing",
            unit.baseline.largest()
        ),
        Reason::NotInBaseline => format!(
            "{what} is not among the {} executables of the image's baseline nor in the unit's allow entries",
            unit.baseline.entries().len()
        ),
        Reason::ScriptNotInBaseline => {
            format!("an interpreter opened a file whose {what} is not in the image's baseline")
        }
        Reason::LibraryNotInBaseline => {
            format!(
                "a shared object was opened whose {what} is not in the image's baseline nor in the unit's allow entries (library control)"
            )
        }
        Reason::KnownBad => {
            format!("{what} matches a known-bad indicator")
        }
        Reason::ChangedDuringHash => {
            format!("the file changed while it was hashed ({what})")
        }
        Reason::HashTimeout => "hashing did not finish within the time budget".to_string(),
        Reason::Unreadable => {
            "the file could not be read through the event's descriptor".to_string()
        }
        r => r.as_str().to_string(),
    })
}

fn process_context(
    unit: &Unit,
    tid: i32,
) -> (
    Option<procfs::ProcessInfo>,
    Option<ProcessRecord>,
    Vec<ProcessRecord>,
) {
    let proc_info = procfs::read_process(tid);
    let me = proc_info.as_ref().map(ProcessRecord::from);
    let mut chain: Vec<ProcessRecord> = me.iter().cloned().collect();
    if let Some(p) = proc_info.as_ref().filter(|p| Some(p.pid) != unit.pid) {
        chain.extend(
            procfs::parent_chain(p.ppid, crate::audit::MAX_CHAIN - 1, unit.pid)
                .iter()
                .map(ProcessRecord::from),
        );
    }
    (proc_info, me, chain)
}

/// The record of a mapping (or loader exec) the mapping gate refused: the process is read
/// from `/proc`, and the file found among its open fds where it still has it open.
pub(super) fn mapping_record(
    unit: &Unit,
    e: &crate::kernel::mapping_gate::GateEvent,
) -> crate::audit::MappingRecord {
    use crate::kernel::mapping_gate::kind;
    let tid = e.tid as i32;
    let (_, me, mut chain) = process_context(unit, tid);
    if me.is_none() && e.ppid != 0 {
        // Gone already (a process refused this way often exits at once): its parent's.
        chain = procfs::parent_chain(e.ppid as i32, crate::audit::MAX_CHAIN, unit.pid)
            .iter()
            .map(ProcessRecord::from)
            .collect();
    }
    // Found by name only: the audit writer reads it (see MappingRecord::source).
    let found = (e.file.ino != 0)
        .then(|| procfs::find_open_file(e.pid as i32, e.file.dev, e.file.ino))
        .flatten();
    // The kernel's name for the thread, when the process was gone before /proc was read.
    let kernel_comm = || {
        let end = e.comm.iter().position(|b| *b == 0).unwrap_or(e.comm.len());
        escape_bytes(&e.comm[..end])
    };
    crate::audit::MappingRecord {
        v: RECORD_VERSION,
        kind: "mapping".into(),
        time: rfc3339(SystemTime::now()),
        unit: unit.id.clone(),
        image_key: escape_bytes(&unit.image_key),
        image_name: unit.image_name.clone(),
        mode: unit.mode,
        verdict: if e.denied {
            Verdict::Deny
        } else {
            Verdict::WouldDeny
        },
        what: match e.kind {
            kind::MMAP => "mmap",
            kind::MPROTECT => "mprotect",
            kind::MEMFD => "memfd",
            kind::WX => "write-and-execute",
            kind::ANON_EXEC => "anonymous-executable-memory",
            kind::PROC_MEM => "proc-mem-write",
            kind::PTRACE => "ptrace-attach",
            kind::FOREIGN if e.detail & crate::kernel::mapping_gate::DETAIL_EXEC == 0 => "mmap",
            _ => "exec",
        }
        .into(),
        rule: match e.kind {
            kind::LOADER_EXEC => "loader",
            kind::WX | kind::ANON_EXEC | kind::PROC_MEM | kind::PTRACE => "memory",
            kind::FOREIGN => "unmarked-filesystem",
            kind::VOLUME_EXEC => "volume",
            _ => "mapping",
        }
        .into(),
        path: found.as_ref().map(|(p, _)| escape_bytes(p)),
        file: if e.file.ino == 0 {
            String::new()
        } else {
            format!(
                "{}:{}:{}",
                e.file.dev >> 20,
                e.file.dev & 0xfffff,
                e.file.ino
            )
        },
        blake3: None,
        size: None,
        source: found.map(|(_, fd_path)| (fd_path, e.file.dev, e.file.ino)),
        tid,
        pid: e.pid as i32,
        comm: me
            .as_ref()
            .map(|m| m.comm.clone())
            .or_else(|| Some(kernel_comm())),
        ppid: (e.ppid != 0).then_some(e.ppid as i32),
        detail: Some(e.detail_words()).filter(|d| !d.is_empty()),
        cmdline: me.map(|m| m.cmdline).unwrap_or_default(),
        chain,
    }
}

/// The record of an exec, its process context read from `/proc` (each read capped).
/// `file` is a duplicate of the event's fd.
pub(super) fn build_record(
    unit: &Unit,
    outcome: &Outcome,
    file: Option<BorrowedFd<'_>>,
    tid: i32,
    digest: Option<Digest>,
    stat: &FileStat,
    read: ProcessNow,
) -> (AuditRecord, crate::audit::ProcessToRead) {
    let (verdict, reason) = (outcome.verdict, outcome.reason);
    let path = file.and_then(procfs::fd_path);
    let process = crate::audit::ProcessToRead { stop: unit.pid };
    let mut record = AuditRecord {
        v: RECORD_VERSION,
        time: rfc3339(SystemTime::now()),
        unit: unit.id.clone(),
        image_key: escape_bytes(&unit.image_key),
        image_name: unit.image_name.clone(),
        k8s_namespace: unit.k8s.namespace.clone(),
        k8s_pod: unit.k8s.pod.clone(),
        k8s_container: unit.k8s.container.clone(),
        identity: unit.k8s.source,
        mode: unit.mode,
        verdict,
        reason,
        path: path.as_deref().map(escape_bytes),
        tid,
        pid: None,
        ppid: None,
        uid: None,
        comm: None,
        cmdline: Vec::new(),
        chain: Vec::new(),
        blake3: digest.map(|d| d.to_string()),
        sha256: None,
        size: Some(stat.size),
        evidence: None,
        rule: (verdict != Verdict::Allow).then(|| reason.rule().to_string()),
        detail: None,
        content_unverified: false,
        truncated: false,
    };
    // The process itself: `read` (read before the answer for a denied exec), now, or
    // `Later` (by the denial-context thread); its ancestors by the record writer.
    match read {
        ProcessNow::Read(info) => fill_process(&mut record, info),
        ProcessNow::ReadHere => fill_process(&mut record, procfs::read_process(tid)),
        ProcessNow::Later => {}
    }
    (record, process)
}

/// When an exec record's own process is read.
pub(super) enum ProcessNow {
    /// Already read (`None`: it had exited).
    Read(Option<procfs::ProcessInfo>),
    /// Read while the record is built.
    ReadHere,
    /// Read later, by whoever answers the held exec.
    Later,
}

/// Fills in the record's process fields from what `/proc` said of it.
pub(super) fn fill_process(record: &mut AuditRecord, info: Option<procfs::ProcessInfo>) {
    let Some(info) = info else { return };
    let me = ProcessRecord::from(&info);
    record.pid = Some(info.pid);
    record.ppid = Some(info.ppid);
    record.uid = Some(info.uid);
    record.comm = Some(me.comm.clone());
    record.cmdline = me.cmdline.clone();
    record.chain = vec![me];
}
