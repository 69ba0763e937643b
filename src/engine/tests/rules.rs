//! The rule book through the engine: kernel-side allows on immutable filesystems and the
//! loader rule's wait for the exec'ing thread.

use super::*;
use std::sync::atomic::Ordering;

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
