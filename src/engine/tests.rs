//! The engine against a fake gate: real files, fake kernel queue.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::*;
use crate::audit::{AuditSinks, start_writer};
use crate::baseline::BaselineEntry;
use crate::kernel::exec_name::{LoaderCall, LoaderObservation};
use crate::kernel::{Answer, Gate, KernelError, Mark, RawEvent, Respond, TaskProbe, Wake};

enum Feed {
    Event(RawEvent),
    Wake,
}

#[derive(Default)]
struct Log {
    answers: Vec<(u64, Answer)>,
    marks: Vec<(Mark, bool)>,
    /// Inodes given an exec ignore mark, and how many flushes there were.
    ignored: Vec<u64>,
    flushes: usize,
}

struct FakeGate {
    rx: Receiver<Feed>,
    tx: Sender<Feed>,
    log: Arc<Mutex<Log>>,
    fail_mark_on: Option<usize>,
}

struct FakeResponder(Arc<Mutex<Log>>);
impl Respond for FakeResponder {
    fn respond(&self, fd: std::os::fd::BorrowedFd<'_>, answer: Answer) -> Result<(), KernelError> {
        let ino = stat_fd(fd).map(|s| s.ino).unwrap_or(0);
        self.0.lock().unwrap().answers.push((ino, answer));
        Ok(())
    }
}

struct FakeWaker(Sender<Feed>);
impl Wake for FakeWaker {
    fn wake(&self) {
        let _ = self.0.send(Feed::Wake);
    }
}

impl Gate for FakeGate {
    fn next_batch(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<RawEvent>,
    ) -> Result<(), KernelError> {
        let first = match timeout {
            Some(t) => self.rx.recv_timeout(t).ok(),
            None => self.rx.recv().ok(),
        };
        for feed in first.into_iter().chain(self.rx.try_iter()) {
            if let Feed::Event(e) = feed {
                out.push(e);
            }
        }
        Ok(())
    }
    fn responder(&self) -> Arc<dyn Respond> {
        Arc::new(FakeResponder(Arc::clone(&self.log)))
    }
    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(FakeWaker(self.tx.clone()))
    }
    fn mark(&self, mark: &Mark, add: bool) -> Result<(), KernelError> {
        let mut log = self.log.lock().unwrap();
        if add && Some(log.marks.iter().filter(|m| m.1).count()) == self.fail_mark_on {
            return Err(KernelError::Mark {
                action: "add",
                kind: mark.kind,
                path: mark.path.clone(),
                source: nix::Error::EINVAL,
            });
        }
        log.marks.push((mark.clone(), add));
        Ok(())
    }
    fn mark_is_live(&self, _: &Path, _: u64) -> bool {
        true
    }
    fn ignore_exec(&self, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), KernelError> {
        let ino = stat_fd(fd).map(|s| s.ino).unwrap_or(0);
        self.log.lock().unwrap().ignored.push(ino);
        Ok(())
    }
    fn clear_ignored_execs(&self) -> Result<(), KernelError> {
        let mut log = self.log.lock().unwrap();
        log.ignored.clear();
        log.flushes += 1;
        Ok(())
    }
}

struct Harness {
    dir: PathBuf,
    tx: Sender<Feed>,
    log: Arc<Mutex<Log>>,
    handle: EngineHandle,
    thread: Option<std::thread::JoinHandle<Result<(), KernelError>>>,
    audit_path: PathBuf,
    dev: u64,
    allow: crate::config::AllowList,
}

fn write_exec(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A scripted look at exec'ing tasks: each look takes the next scripted answer, then
/// `then` for ever.
#[derive(Clone)]
struct FakeProbe {
    script: Arc<Mutex<std::collections::VecDeque<LoaderCall>>>,
    then: Arc<Mutex<LoaderCall>>,
    looks: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeProbe {
    fn new(then: LoaderCall) -> Self {
        Self {
            script: Default::default(),
            then: Arc::new(Mutex::new(then)),
            looks: Default::default(),
        }
    }

    fn script(&self, calls: &[LoaderCall], then: LoaderCall) {
        *self.script.lock().unwrap() = calls.iter().copied().collect();
        *self.then.lock().unwrap() = then;
        self.looks.store(0, Ordering::SeqCst);
    }
}

impl TaskProbe for FakeProbe {
    fn loader_call(&self, _tid: i32, _loader: (u64, u64)) -> LoaderObservation {
        self.looks.fetch_add(1, Ordering::SeqCst);
        let call = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*self.then.lock().unwrap());
        LoaderObservation {
            call,
            evidence: format!("fake: {}", call.as_str()),
        }
    }
}

impl Harness {
    fn new(name: &str, config: EngineConfig, fail_mark_on: Option<usize>) -> Self {
        Self::with_probe(
            name,
            config,
            fail_mark_on,
            FakeProbe::new(LoaderCall::ForProgram),
        )
    }

    fn with_probe(
        name: &str,
        config: EngineConfig,
        fail_mark_on: Option<usize>,
        probe: FakeProbe,
    ) -> Self {
        let dir =
            std::env::temp_dir().join(format!("driftlock-engine-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let log = Arc::new(Mutex::new(Log::default()));
        let gate = FakeGate {
            rx,
            tx: tx.clone(),
            log: Arc::clone(&log),
            fail_mark_on,
        };
        let audit_path = dir.join("audit.jsonl");
        let file = fs::File::create(&audit_path).unwrap();
        let (audit, _) = start_writer(AuditSinks {
            falcosidekick: None,
            quarantine: None,
            stdout: false,
            file: Some(file),
        });
        let (mut engine, handle) = Engine::new(gate, config, audit);
        engine.set_task_probe(Box::new(probe));
        let thread = Some(std::thread::spawn(move || engine.run()));
        let dev = fs::metadata(&dir)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .unwrap();
        Self {
            dir,
            tx,
            log,
            handle,
            thread,
            audit_path,
            dev,
            allow: Default::default(),
        }
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        write_exec(&p, data);
        p
    }

    fn arm(&self, id: &str, mode: Mode, image: &[&[u8]]) -> Result<Vec<PlannedMark>, EngineError> {
        self.arm_on("test", id, mode, image, &[])
    }

    /// Arms with the harness directory's filesystem reported as `fstype`, and `loaders`
    /// (content) as the image's dynamic loaders.
    fn arm_on(
        &self,
        fstype: &str,
        id: &str,
        mode: Mode,
        image: &[&[u8]],
        loaders: &[&[u8]],
    ) -> Result<Vec<PlannedMark>, EngineError> {
        let entries = image
            .iter()
            .enumerate()
            .map(|(i, c)| BaselineEntry {
                path: format!("/bin/{i}").into_bytes(),
                size: c.len() as u64,
                mode: 0o755,
                blake3: blake3::hash(c).into(),
            })
            .collect();
        let dir_stat = crate::kernel::stat_path(&self.dir).unwrap();
        self.handle.arm(UnitSpec {
            id: id.into(),
            image_key: b"img".to_vec(),
            image_name: None,
            k8s: Default::default(),
            pid: None,
            mode,
            baseline: Arc::new(
                Baseline::new(b"img".to_vec(), vec![], 0, entries).with_loaders(
                    loaders
                        .iter()
                        .map(|c| crate::baseline::LoaderEntry {
                            path: b"/lib/ld.so".to_vec(),
                            blake3: blake3::hash(c).into(),
                        })
                        .collect(),
                ),
            ),
            marks: vec![
                PlannedMark {
                    path: self.dir.clone(),
                    kind: MarkKind::Filesystem,
                    dev: self.dev,
                    mnt_id: dir_stat.mnt_id,
                    fstype: fstype.into(),
                },
                PlannedMark {
                    path: "/other".into(),
                    kind: MarkKind::Mount,
                    dev: 1,
                    mnt_id: u64::MAX,
                    fstype: "test".into(),
                },
            ],
            allow: self.allow.clone(),
        })
    }

    fn push(&self, path: &Path, mask: u64, tid: i32) -> u64 {
        let f = fs::File::open(path).unwrap();
        let ino = stat_fd(f.as_fd()).unwrap().ino;
        let fd: OwnedFd = f.into();
        self.tx
            .send(Feed::Event(RawEvent {
                mask,
                fd: Some(fd),
                tid,
            }))
            .unwrap();
        ino
    }

    fn exec(&self, path: &Path) -> Answer {
        let before = self.log.lock().unwrap().answers.len();
        let ino = self.push(path, libc::FAN_OPEN_EXEC_PERM, std::process::id() as i32);
        for _ in 0..500 {
            {
                let log = self.log.lock().unwrap();
                if log.answers.len() > before {
                    assert_eq!(log.answers.len(), before + 1, "answered more than once");
                    assert_eq!(log.answers[before].0, ino);
                    return log.answers[before].1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("exec of {} was never answered", path.display());
    }

    fn unit(&self, id: &str) -> UnitStatus {
        self.handle
            .status()
            .unwrap()
            .units
            .into_iter()
            .find(|u| u.id == id)
            .unwrap()
    }

    fn records(&self, n: usize) -> Vec<crate::audit::AuditRecord> {
        for _ in 0..400 {
            let mut s = String::new();
            fs::File::open(&self.audit_path)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            let recs: Vec<_> = s
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if recs.len() >= n {
                return recs;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("expected {n} audit records");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn settle() {
    // Past the racily-clean window, so findings for the files just written are cached.
    std::thread::sleep(Duration::from_millis(30));
}

fn cfg() -> EngineConfig {
    EngineConfig {
        hash_workers: 2,
        hash_timeout: Duration::from_secs(5),
        cache_capacity: 100,
        record_misses: false,
        interpreters: Vec::new(),
        loader_wait: Duration::from_secs(5),
    }
}

#[test]
fn content_decides_and_hits_come_from_the_cache() {
    let h = Harness::new("content", cfg(), None);
    let sh = h.file("sh", b"image shell");
    let copy = h.file("renamed-copy", b"image shell");
    let payload = h.file("payload", b"kdevtmpfsi");
    settle();
    h.arm("c1", Mode::Enforce, &[b"image shell"]).unwrap();
    assert_eq!(h.exec(&sh), Answer::Allow);
    assert_eq!(h.exec(&sh), Answer::Allow);
    assert_eq!(
        h.exec(&copy),
        Answer::Allow,
        "a copy under another name is the same program"
    );
    assert_eq!(h.exec(&payload), Answer::Deny);
    assert_eq!(h.exec(&payload), Answer::Deny);
    let u = h.unit("c1");
    assert_eq!((u.counters.allowed, u.counters.denied), (3, 2));
    assert_eq!(u.counters.hashed, 3, "repeats must be cache hits");
    assert_eq!(u.cache.hits, 2);

    let recs = h.records(2);
    assert_eq!(recs[0].verdict, Verdict::Deny);
    assert_eq!(recs[0].reason, Reason::NotInBaseline);
    assert_eq!(recs[0].unit, "c1");
    assert!(recs[0].path.as_deref().unwrap().ends_with("/payload"));
    assert_eq!(
        recs[0].blake3.as_deref(),
        Some(blake3::hash(b"kdevtmpfsi").to_hex().as_str())
    );
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"kdevtmpfsi"));
    assert_eq!(recs[0].sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(recs[0].pid, Some(std::process::id() as i32));
    assert!(!recs[0].chain.is_empty());
}

#[test]
fn a_changed_file_is_judged_again() {
    let h = Harness::new("changed", cfg(), None);
    let f = h.file("tool", b"image tool");
    settle();
    h.arm("c1", Mode::Enforce, &[b"image tool"]).unwrap();
    assert_eq!(h.exec(&f), Answer::Allow);
    assert_eq!(h.exec(&f), Answer::Allow);
    assert_eq!(h.unit("c1").counters.hashed, 1);

    // write(2) in place: the fingerprint moves.
    fs::write(&f, b"trojaned tool").unwrap();
    assert_eq!(h.exec(&f), Answer::Deny);

    // A close-after-write alone (as after a shared-mmap write on tmpfs, which moves no
    // timestamp) drops the entry: the next exec is hashed again.
    fs::write(&f, b"image tool").unwrap();
    settle();
    assert_eq!(h.exec(&f), Answer::Allow);
    let hashed = h.unit("c1").counters.hashed;
    assert_eq!(h.exec(&f), Answer::Allow);
    assert_eq!(h.unit("c1").counters.hashed, hashed, "cached");
    h.push(&f, libc::FAN_CLOSE_WRITE, 1);
    assert_eq!(h.exec(&f), Answer::Allow);
    assert_eq!(
        h.unit("c1").counters.hashed,
        hashed + 1,
        "close-write must invalidate"
    );
}

#[test]
fn racily_clean_files_are_not_cached() {
    let h = Harness::new("racy", cfg(), None);
    h.arm("c1", Mode::Enforce, &[b"fresh"]).unwrap();
    let f = h.file("fresh", b"fresh");
    assert_eq!(h.exec(&f), Answer::Allow);
    assert_eq!(h.exec(&f), Answer::Allow);
    let u = h.unit("c1");
    assert_eq!(u.counters.hashed, 2);
    assert!(u.cache.racy_skips >= 1);
}

#[test]
fn audit_mode_answers_nothing_and_records_would_deny() {
    let h = Harness::new("audit", cfg(), None);
    let payload = h.file("payload", b"miner");
    h.arm("a1", Mode::Audit, &[b"other"]).unwrap();
    h.push(&payload, libc::FAN_OPEN_EXEC, std::process::id() as i32);
    let recs = h.records(1);
    assert_eq!(recs[0].verdict, Verdict::WouldDeny);
    assert_eq!(recs[0].mode, Mode::Audit);
    assert!(
        h.log.lock().unwrap().answers.is_empty(),
        "notifications are never answered"
    );
    assert_eq!(h.unit("a1").counters.would_deny, 1);
    let marks = &h.log.lock().unwrap().marks;
    assert!(marks.iter().all(|(m, _)| m.mask == EventMask::Audit));
}

#[test]
fn a_hash_past_its_budget_is_denied_not_left_hanging() {
    let h = Harness::new(
        "timeout",
        EngineConfig {
            hash_workers: 0,
            hash_timeout: Duration::from_millis(50),
            ..cfg()
        },
        None,
    );
    let f = h.file("slow", b"image");
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    assert_eq!(h.exec(&f), Answer::Deny);
    assert_eq!(h.unit("c1").counters.hash_timeouts, 1);
    assert_eq!(h.records(1)[0].reason, Reason::HashTimeout);
}

#[test]
fn unattributed_events_are_allowed_and_disarm_drops_the_unit() {
    let h = Harness::new("disarm", cfg(), None);
    let f = h.file("x", b"payload");
    assert_eq!(h.exec(&f), Answer::Allow, "no unit armed");
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    assert!(matches!(
        h.arm("c1", Mode::Enforce, &[]),
        Err(EngineError::DuplicateId(_))
    ));
    assert!(matches!(
        h.arm("c2", Mode::Enforce, &[]),
        Err(EngineError::Conflict { .. })
    ));
    assert_eq!(h.exec(&f), Answer::Deny);
    let last = h.handle.disarm("c1").unwrap();
    assert_eq!(last.counters.denied, 1);
    assert_eq!(h.exec(&f), Answer::Allow);
    assert!(h.handle.status().unwrap().units.is_empty());
    let removed = h
        .log
        .lock()
        .unwrap()
        .marks
        .iter()
        .filter(|(_, add)| !add)
        .count();
    assert_eq!(removed, 2);
    assert!(matches!(
        h.handle.disarm("c1"),
        Err(EngineError::UnknownId(_))
    ));
}

#[test]
fn a_failed_mark_rolls_the_unit_back() {
    let h = Harness::new("rollback", cfg(), Some(1));
    assert!(matches!(
        h.arm("c1", Mode::Enforce, &[]),
        Err(EngineError::Mark(_))
    ));
    let log = h.log.lock().unwrap();
    assert_eq!(log.marks.len(), 2, "first mark added then removed");
    assert!(log.marks[0].1 && !log.marks[1].1);
    drop(log);
    assert!(h.handle.status().unwrap().units.is_empty());
}

#[test]
fn overflow_flushes_caches() {
    let h = Harness::new("overflow", cfg(), None);
    let f = h.file("tool", b"image");
    settle();
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    h.exec(&f);
    assert_eq!(h.unit("c1").cache_entries, 1);
    h.tx.send(Feed::Event(RawEvent {
        mask: libc::FAN_Q_OVERFLOW,
        fd: None,
        tid: 0,
    }))
    .unwrap();
    for _ in 0..200 {
        if h.unit("c1").cache_entries == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.unit("c1").cache_entries, 0);
    assert_eq!(h.handle.status().unwrap().stats.overflows, 1);
}

#[test]
fn shutdown_answers_everything_in_flight() {
    let mut h = Harness::new(
        "shutdown",
        EngineConfig {
            hash_workers: 0,
            hash_timeout: Duration::from_secs(30),
            ..cfg()
        },
        None,
    );
    let f = h.file("x", b"image");
    let g = h.file("y", b"image");
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    h.push(&f, libc::FAN_OPEN_EXEC_PERM, 1);
    h.push(&f, libc::FAN_OPEN_EXEC_PERM, 1);
    h.push(&g, libc::FAN_OPEN_EXEC_PERM, 1);
    for _ in 0..400 {
        if h.handle.status().unwrap().in_flight == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        h.handle.status().unwrap().in_flight,
        2,
        "two files, three waiters"
    );
    assert!(h.log.lock().unwrap().answers.is_empty());
    let started = std::time::Instant::now();
    h.handle.shutdown();
    h.thread.take().unwrap().join().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let answers: Vec<Answer> = h.log.lock().unwrap().answers.iter().map(|a| a.1).collect();
    assert_eq!(
        answers,
        vec![Answer::Deny; 3],
        "every waiter answered once, by policy"
    );
}

#[test]
fn pending_permission_answers_exactly_once_even_when_dropped() {
    let log = Arc::new(Mutex::new(Log::default()));
    let responder: Arc<dyn Respond> = Arc::new(FakeResponder(Arc::clone(&log)));
    let f: OwnedFd = fs::File::open("/proc/self/exe").unwrap().into();
    let before = crate::kernel::unanswered_drops();
    drop(PendingPermission::new(
        f,
        Arc::clone(&responder),
        Answer::Deny,
    ));
    let f: OwnedFd = fs::File::open("/proc/self/exe").unwrap().into();
    PendingPermission::new(f, responder, Answer::Deny)
        .answer(Answer::Allow)
        .unwrap();
    let answers: Vec<Answer> = log.lock().unwrap().answers.iter().map(|a| a.1).collect();
    assert_eq!(answers, vec![Answer::Deny, Answer::Allow]);
    assert!(crate::kernel::unanswered_drops() > before);
}

#[test]
fn operator_allow_entries_by_blake3_and_sha256_and_their_reload() {
    let mut h = Harness::new("allow", cfg(), None);
    let by_blake = h.file("generated-a", b"runtime generated a");
    let by_sha = h.file("generated-b", b"runtime generated b");
    let other = h.file("payload", b"payload");
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"runtime generated b").into();
    h.allow = crate::config::AllowList {
        blake3: vec![blake3::hash(b"runtime generated a").into()],
        sha256: vec![crate::baseline::Digest(sha)],
    };
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    assert_eq!(h.exec(&by_blake), Answer::Allow);
    assert_eq!(h.exec(&by_sha), Answer::Allow);
    assert_eq!(h.exec(&other), Answer::Deny);
    // A reload that removes the entries applies to the armed unit (its cache is dropped).
    h.handle.set_allow("c1", Default::default()).unwrap();
    assert_eq!(h.exec(&by_blake), Answer::Deny);
    h.handle
        .set_allow(
            "c1",
            crate::config::AllowList {
                blake3: vec![blake3::hash(b"payload").into()],
                sha256: vec![],
            },
        )
        .unwrap();
    assert_eq!(h.exec(&other), Answer::Allow);
}

#[test]
fn allowed_execs_on_an_immutable_filesystem_are_left_to_the_kernel() {
    let h = Harness::new("immutable", cfg(), None);
    let tool = h.file("tool", b"image");
    let loader = h.file("ld.so", b"loader");
    let payload = h.file("payload", b"payload");
    h.arm_on(
        "erofs",
        "c1",
        Mode::Enforce,
        &[b"image", b"loader"],
        &[b"loader"],
    )
    .unwrap();
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(h.exec(&tool), Answer::Allow);
    assert_eq!(h.exec(&payload), Answer::Deny);
    // A loader's exec event must keep coming (a direct invocation is denied).
    assert_eq!(h.exec(&loader), Answer::Allow);
    assert_eq!(h.log.lock().unwrap().ignored, vec![ino(&tool)]);
    assert_eq!(h.handle.status().unwrap().stats.kernel_allowed_files, 1);
    // Disarming forgets them all: another unit could arm this filesystem with another
    // baseline.
    h.handle.disarm("c1").unwrap();
    let log = h.log.lock().unwrap();
    assert!(log.ignored.is_empty());
    assert_eq!(log.flushes, 1);
}

#[test]
fn nothing_is_left_to_the_kernel_on_a_writable_filesystem() {
    let h = Harness::new("writable", cfg(), None);
    let tool = h.file("tool", b"image");
    h.arm_on("tmpfs", "c1", Mode::Enforce, &[b"image"], &[])
        .unwrap();
    assert_eq!(h.exec(&tool), Answer::Allow);
    settle();
    assert_eq!(h.exec(&tool), Answer::Allow);
    assert!(h.log.lock().unwrap().ignored.is_empty());
    h.handle.disarm("c1").unwrap();
    assert_eq!(h.log.lock().unwrap().flushes, 0, "nothing to flush");
}

#[test]
fn loader_rule_waits_until_the_thread_is_blocked_and_records_its_evidence() {
    let probe = FakeProbe::new(LoaderCall::ForProgram);
    let h = Harness::with_probe("loader-wait", cfg(), None, probe.clone());
    let loader = h.file("ld.so", b"loader");
    h.arm_on("test", "c1", Mode::Enforce, &[b"loader"], &[b"loader"])
        .unwrap();
    // Not yet asleep for a while (more looks than are made on the event path): the
    // answer waits for the thread instead of deciding on a transient state.
    probe.script(&[LoaderCall::NotBlocked; 12], LoaderCall::ForProgram);
    assert_eq!(h.exec(&loader), Answer::Allow);
    assert_eq!(probe.looks.load(Ordering::SeqCst), 13);
    let stats = h.handle.status().unwrap().stats;
    assert_eq!(stats.loader_checks, 1);
    assert_eq!(stats.loader_not_blocked_looks, 12);
    assert_eq!(stats.loader_waits, 1);
    assert!(stats.denied_by_reason.is_empty());
    // A direct invocation is denied, and the record says what was read.
    probe.script(&[LoaderCall::NotBlocked], LoaderCall::Direct);
    assert_eq!(h.exec(&loader), Answer::Deny);
    let recs = h.records(1);
    let r = &recs[0];
    assert_eq!(r.reason, Reason::DirectLoader);
    assert_eq!(r.rule.as_deref(), Some("loader"));
    let detail = r.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("fake: direct; thread seen blocked at look 2"),
        "{detail}"
    );
    // A task that is gone cannot go on with its exec: allowed, counted.
    probe.script(&[], LoaderCall::Gone);
    assert_eq!(h.exec(&loader), Answer::Allow);
    // An exec name that cannot be resolved: a direct invocation cannot be ruled out.
    probe.script(&[], LoaderCall::Unresolved);
    assert_eq!(h.exec(&loader), Answer::Deny);
    let stats = h.handle.status().unwrap().stats;
    assert_eq!(stats.loader_thread_gone, 1);
    assert_eq!(stats.denied_by_reason.get("direct-loader"), Some(&1));
    assert_eq!(stats.denied_by_reason.get("loader-unverified"), Some(&1));
    let recs = h.records(2);
    assert_eq!(recs[1].reason, Reason::LoaderUnverified);
    assert_eq!(recs[1].detail.as_deref(), Some("fake: unresolved"));
}

#[test]
fn loader_rule_fails_closed_only_after_the_time_budget_and_says_so() {
    let probe = FakeProbe::new(LoaderCall::NotBlocked);
    let config = EngineConfig {
        loader_wait: Duration::from_millis(300),
        ..cfg()
    };
    let h = Harness::with_probe("loader-unobservable", config, None, probe.clone());
    let loader = h.file("ld.so", b"loader");
    let tool = h.file("tool", b"image");
    h.arm_on(
        "test",
        "c1",
        Mode::Enforce,
        &[b"loader", b"image"],
        &[b"loader"],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let waiting = {
        let before = h.log.lock().unwrap().answers.len();
        h.push(&loader, libc::FAN_OPEN_EXEC_PERM, 1);
        before
    };
    // Other execs are answered while the loader exec waits for its thread.
    assert_eq!(h.exec(&tool), Answer::Allow);
    assert!(started.elapsed() < Duration::from_millis(250));
    for _ in 0..200 {
        if h.log.lock().unwrap().answers.len() > waiting + 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    let answers = h.log.lock().unwrap().answers.clone();
    assert_eq!(answers.len(), waiting + 2, "answered exactly once");
    assert_eq!(answers[waiting + 1].1, Answer::Deny);
    let recs = h.records(1);
    assert_eq!(recs[0].reason, Reason::LoaderUnobservable);
    let detail = recs[0].detail.as_deref().unwrap();
    assert!(detail.contains("never seen blocked"), "{detail}");
    let stats = h.handle.status().unwrap().stats;
    assert_eq!(stats.denied_by_reason.get("loader-unobservable"), Some(&1));
    assert!(
        probe.looks.load(Ordering::SeqCst) > 10,
        "looked again and again"
    );
}
