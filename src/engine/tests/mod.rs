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
use crate::baseline::Baseline;
use crate::baseline::BaselineEntry;
use crate::kernel::exec_name::{LoaderCall, LoaderObservation};
use crate::kernel::{Answer, Gate, KernelError, Mark, RawEvent, Respond, TaskProbe, Wake};
use std::sync::atomic::Ordering;

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
        _now: std::time::Instant,
        deadline: Option<std::time::Instant>,
        out: &mut Vec<RawEvent>,
    ) -> Result<(), KernelError> {
        let first = match deadline {
            Some(at) => self.rx.recv_deadline(at).ok(),
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
    fn switch_mask(&self, mark: &Mark, _from: EventMask) -> Result<(), KernelError> {
        self.log.lock().unwrap().marks.push((mark.clone(), true));
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
        Self::build(name, config, fail_mark_on, probe, false)
    }

    /// An engine that adopted a predecessor's group: unclaimed events are held until
    /// `restore_done`.
    fn restoring(name: &str, config: EngineConfig) -> Self {
        Self::build(
            name,
            config,
            None,
            FakeProbe::new(LoaderCall::ForProgram),
            true,
        )
    }

    fn build(
        name: &str,
        config: EngineConfig,
        fail_mark_on: Option<usize>,
        probe: FakeProbe,
        restoring: bool,
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
            file_path: None,
            node: Some("node-1".into()),
        });
        let (mut engine, handle) = Engine::new(gate, config, audit);
        engine.set_task_probe(Box::new(probe));
        engine.set_restoring(restoring);
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
                    sb_dev: 0,
                },
                PlannedMark {
                    path: "/other".into(),
                    kind: MarkKind::Mount,
                    dev: 1,
                    mnt_id: u64::MAX,
                    fstype: "test".into(),
                    sb_dev: 0,
                },
            ],
            allow: self.allow.clone(),
            code_files: Vec::new(),
            loader_files: Vec::new(),
            pid_namespace: None,
            memory: Default::default(),
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
        self.answer_to(path, libc::FAN_OPEN_EXEC_PERM)
    }

    /// Pushes a permission event of `mask` for `path` and waits for its one answer.
    fn answer_to(&self, path: &Path, mask: u64) -> Answer {
        let before = self.log.lock().unwrap().answers.len();
        let ino = self.push(path, mask, std::process::id() as i32);
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
        library_control: false,
    }
}

mod library;
mod lifecycle;
mod rules;
