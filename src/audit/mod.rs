//! Audit records: one JSON object per line for every deny and would-deny (and, at debug
//! level, every miss), written by a thread of their own so a slow sink (a full pipe to
//! journald) never holds up an exec.
//!
//! Records are not logs: they are a versioned, documented struct ([`AuditRecord`], field
//! `v`) meant for machines (SIEM, `driftlock tune`); operational logs go to stderr through
//! `log` and can be filtered or dropped. Every byte string (paths, command lines, comm) is
//! in the lossless escaped form of [`crate::escape`], so a hostile file name can neither
//! break the line nor hide its real bytes.

mod budget;
pub mod evidence;
mod fair;
pub mod falco;
mod queue;
mod record;
mod writer;

pub use budget::*;
pub use queue::*;
pub use record::*;
pub use writer::*;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::Mode;
use crate::baseline::hash_fd_content;
use crate::escape::escape_bytes;
use crate::kernel::procfs::ProcessInfo;
use crate::verdict::{Reason, Verdict};

/// Bytes of a command line kept in a record (some programs carry huge argument lists).
pub use crate::kernel::procfs::MAX_CMDLINE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_record_is_read_by_the_writer_only_if_it_is_still_the_same_file() {
        let dir = std::env::temp_dir().join(format!("driftlock-maprec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("lib.so");
        std::fs::write(&f, b"code").unwrap();
        let st = crate::kernel::stat_path(&f).unwrap();
        let dev = crate::kernel::mapping_gate::kernel_dev(st.dev);
        let record = |source| MappingRecord {
            v: 1,
            kind: "mapping".into(),
            time: "t".into(),
            unit: "u".into(),
            image_key: "k".into(),
            image_name: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            what: "mmap".into(),
            rule: "mapping".into(),
            path: None,
            file: String::new(),
            blake3: None,
            size: None,
            tid: 1,
            pid: 1,
            comm: None,
            ppid: None,
            detail: None,
            cmdline: Vec::new(),
            chain: Vec::new(),
            source,
        };
        let (mut budget, mut buf) = (RecordHashBudget::default(), Vec::new());
        let mut same = record(Some((f.clone(), dev, st.ino)));
        same.read_source(&mut budget, &mut buf);
        assert_eq!(same.blake3, Some(blake3::hash(b"code").to_string()));
        assert_eq!(same.size, Some(4));
        assert!(same.source.is_none(), "read once");
        let mut other = record(Some((f.clone(), dev, st.ino + 1)));
        other.read_source(&mut budget, &mut buf);
        assert_eq!(other.blake3, None, "another file now: not described");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_units_record_hashing_is_bounded_and_others_keep_theirs() {
        let mut b = RecordHashBudget::default();
        let t0 = std::time::Instant::now();
        let big = 200 << 20;
        // A burst, then nothing until it refills.
        assert!(b.take("flood", big, t0));
        assert!(b.take("flood", big, t0));
        assert!(!b.take("flood", big, t0));
        assert!(b.take("other", big, t0), "another unit has its own budget");
        // 64 MiB/s: after 4 s, 256 MiB more.
        let later = t0 + std::time::Duration::from_secs(4);
        assert!(b.take("flood", big, later));
        assert!(!b.take("flood", big, later));
    }
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn hostile_bytes_stay_on_one_line_and_round_trip() {
        let p = ProcessInfo {
            pid: 5,
            ppid: 1,
            uid: 0,
            comm: b"a\nb".to_vec(),
            cmdline: b"sh\0-c\0x\ny\xff".to_vec(),
            exe: None,
        };
        let rec = AuditRecord {
            v: RECORD_VERSION,
            time: rfc3339(UNIX_EPOCH),
            unit: "u".into(),
            image_key: escape_bytes(b"k"),
            image_name: None,
            k8s_namespace: None,
            k8s_pod: None,
            k8s_container: None,
            identity: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            reason: Reason::NotInBaseline,
            path: Some(escape_bytes(b"/tmp/evil\nname\xff")),
            tid: 5,
            pid: Some(5),
            ppid: Some(1),
            uid: Some(0),
            comm: Some(escape_bytes(&p.comm)),
            cmdline: ProcessRecord::from(&p).cmdline,
            chain: vec![ProcessRecord::from(&p)],
            blake3: None,
            sha256: None,
            size: None,
            evidence: None,
            rule: None,
            detail: None,
            content_unverified: false,
            truncated: false,
        };
        let line = rec.to_json();
        assert!(!line.contains('\n'));
        assert!(line.contains("\"verdict\":\"deny\""));
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, rec);
        let path = crate::escape::unescape(back.path.as_deref().unwrap()).unwrap();
        assert_eq!(path, b"/tmp/evil\nname\xff");
        assert_eq!(back.cmdline, vec!["sh", "-c", "x\\x0ay\\xff"]);
        let long = ProcessInfo {
            cmdline: vec![b'a'; MAX_CMDLINE * 3],
            ..p
        };
        let r = ProcessRecord::from(&long);
        assert!(r.cmdline_truncated && r.cmdline[0].len() == MAX_CMDLINE);

        // Issue 14 (5): nine processes with 4 KiB command lines of bytes that escape to four
        // times their size fit one record of at most MAX_RECORD_BYTES, nearest kept first.
        let hostile = ProcessInfo {
            cmdline: vec![0xff; MAX_CMDLINE * 2],
            ..long
        };
        let mut big = rec.clone();
        big.cmdline = ProcessRecord::from(&hostile).cmdline;
        big.chain = vec![ProcessRecord::from(&hostile); MAX_CHAIN + 1];
        assert!(big.to_json().len() > MAX_RECORD_BYTES);
        big.fit(MAX_RECORD_BYTES);
        assert!(big.truncated);
        assert!(
            big.to_json().len() <= MAX_RECORD_BYTES,
            "{}",
            big.to_json().len()
        );
        assert!(
            !big.chain[0].cmdline.is_empty(),
            "the nearest process keeps its command line"
        );
        assert!(big.chain[MAX_CHAIN].cmdline.is_empty());
    }

    #[test]
    fn a_units_record_budget_holds_a_flood_back_and_summarizes_it() {
        let t0 = std::time::Instant::now();
        let mut b = RecordBudget::default();
        let written = (0..10_000).filter(|_| b.take(t0)).count();
        assert_eq!(written, RecordBudget::BURST as usize);
        assert_eq!(b.suppressed(), 10_000 - written as u64);
        assert_eq!(b.take_summary(t0), None, "no room for a summary yet");
        let later = t0 + std::time::Duration::from_secs(1);
        let (n, since) = b.take_summary(later).unwrap();
        assert_eq!(n, 10_000 - written as u64);
        assert!(since.ends_with('Z'));
        assert_eq!(b.suppressed(), 0);
        // One second refills PER_SECOND records (one went to the summary).
        let again = (0..1000).filter(|_| b.take(later)).count();
        assert_eq!(again, RecordBudget::PER_SECOND as usize - 1);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let queue = AuditQueue::new();
        let p = ProcessInfo {
            pid: 5,
            ppid: 1,
            uid: 0,
            comm: b"sh".to_vec(),
            cmdline: vec![b'a'; MAX_CMDLINE],
            exe: None,
        };
        let mut rec = AuditRecord {
            v: RECORD_VERSION,
            time: rfc3339(UNIX_EPOCH),
            unit: "u".into(),
            image_key: "k".into(),
            image_name: None,
            k8s_namespace: None,
            k8s_pod: None,
            k8s_container: None,
            identity: None,
            mode: Mode::Enforce,
            verdict: Verdict::Deny,
            reason: Reason::NotInBaseline,
            path: None,
            tid: 5,
            pid: None,
            ppid: None,
            uid: None,
            comm: None,
            cmdline: ProcessRecord::from(&p).cmdline,
            chain: vec![ProcessRecord::from(&p); MAX_CHAIN],
            blake3: None,
            sha256: None,
            size: None,
            evidence: None,
            rule: None,
            detail: None,
            content_unverified: false,
            truncated: false,
        };
        rec.fit(MAX_RECORD_BYTES);
        let each = rec.approx_bytes();
        for _ in 0..QUEUE_CAPACITY {
            queue.send(AuditJob::Exec {
                record: Box::new(rec.clone()),
                file: None,
                process: None,
            });
        }
        let queued = queue.counters().queued.load(Ordering::Relaxed) as usize;
        assert!(queued * each <= QUEUE_BYTES, "{queued} x {each}");
        assert!(queued < QUEUE_CAPACITY);
        assert_eq!(
            queue.counters().dropped.load(Ordering::Relaxed) as usize,
            QUEUE_CAPACITY - queued
        );
    }
}
