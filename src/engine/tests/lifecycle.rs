//! Verdicts, the cache, audit mode, time budgets, rollback and answering exactly once.

use super::*;

#[test]
fn content_decides_and_hits_come_from_the_cache() {
    let h = Harness::new("content", cfg(), None);
    let sh = h.file("sh", b"image shell");
    let copy = h.file("renamed-copy", b"image shell");
    // The size of an image program, so that its content must be read to be judged.
    let payload = h.file("payload", b"kdevtmpfsi2");
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
        Some(blake3::hash(b"kdevtmpfsi2").to_hex().as_str())
    );
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"kdevtmpfsi2"));
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
fn unattributed_execs_are_refused_and_disarm_drops_the_unit() {
    let h = Harness::new("disarm", cfg(), None);
    let f = h.file("x", b"payload");
    // Only an enforce-mode unit's marks hold execs: one no unit claims is refused, never
    // silently allowed (issue 14: a unit that went away or could not be re-armed).
    assert_eq!(h.exec(&f), Answer::Deny, "no unit armed");
    let stats = h.handle.status().unwrap().stats;
    assert_eq!((stats.unattributed, stats.unattributed_denied), (1, 1));
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
    assert_eq!(h.exec(&f), Answer::Deny, "its unit is gone");
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

/// A container's init may exit while the payload it ran is still being hashed: the disarm
/// takes the unit's marks and its id at once, and the exec is still judged and recorded by
/// its rules before the unit is forgotten.
#[test]
fn a_unit_disarmed_while_hashing_still_records_its_exec() {
    let h = Harness::new(
        "leaving",
        EngineConfig {
            // No worker takes the job: the exec waits until its budget runs out.
            hash_workers: 0,
            hash_timeout: Duration::from_millis(300),
            ..cfg()
        },
        None,
    );
    let payload = h.file("payload", b"miner");
    h.arm("a1", Mode::Audit, &[b"image"]).unwrap();
    h.push(&payload, libc::FAN_OPEN_EXEC, std::process::id() as i32);
    for _ in 0..200 {
        if h.handle.status().unwrap().in_flight == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.handle.status().unwrap().in_flight, 1);
    h.handle.disarm("a1").unwrap();
    let st = h.handle.status().unwrap();
    assert!(st.units.is_empty(), "disarmed at once: {:?}", st.units);
    assert!(matches!(
        h.handle.disarm("a1"),
        Err(EngineError::UnknownId(_))
    ));
    // The id and the filesystem are free for the container's next start.
    h.arm("a1", Mode::Enforce, &[b"image"]).unwrap();
    h.handle.disarm("a1").unwrap();
    let recs = h.records(1);
    assert_eq!(recs[0].unit, "a1");
    assert_eq!(recs[0].verdict, Verdict::WouldDeny);
    assert_eq!(recs[0].reason, Reason::HashTimeout);
    // Then it is gone, its counters in the node's totals.
    for _ in 0..200 {
        if h.handle.status().unwrap().stats.retired.would_deny == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = h.handle.status().unwrap();
    assert!(st.units.is_empty());
    assert_eq!(st.stats.retired.would_deny, 1, "{:?}", st.stats.retired);
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
        at_paths: vec![],
        // Sized entries (as `tune` writes them): "payload" has a size neither the image
        // nor an entry has, and is denied without hashing.
        sizes: vec![19, 19],
        unsized_entries: false,
    };
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    assert_eq!(h.exec(&by_blake), Answer::Allow);
    assert_eq!(h.exec(&by_sha), Answer::Allow);
    assert_eq!(h.exec(&other), Answer::Deny);
    assert_eq!(
        h.unit("c1").counters.hashed,
        2,
        "the payload's size is in no entry: denied unread"
    );
    // A reload that removes the entries applies to the armed unit (its cache is dropped).
    h.handle.set_allow("c1", Default::default()).unwrap();
    assert_eq!(h.exec(&by_blake), Answer::Deny);
    h.handle
        .set_allow(
            "c1",
            crate::config::AllowList {
                blake3: vec![blake3::hash(b"payload").into()],
                sha256: vec![],
                at_paths: vec![],
                sizes: vec![],
                // An entry without a size: every miss is hashed.
                unsized_entries: true,
            },
        )
        .unwrap();
    assert_eq!(h.exec(&other), Answer::Allow);
}

/// Content allowed at a path only: allowed each time it is exec'd there (never from a
/// cached verdict of the content), denied at any other path, and by SHA-256 too.
#[test]
fn a_path_scoped_allow_entry_is_judged_by_the_path_of_each_exec() {
    let mut h = Harness::new("allow-path", cfg(), None);
    fs::create_dir_all(h.dir.join("jna-1")).unwrap();
    let there = h.file("jna-1/libjnidispatch.so", b"jna native library");
    let elsewhere = h.file("libjnidispatch.so", b"jna native library");
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"jna native library").into();
    h.allow = crate::config::AllowList {
        at_paths: vec![crate::config::PathScoped {
            blake3: None,
            sha256: Some(crate::baseline::Digest(sha)),
            path: "*/jna-*/libjnidispatch.so".into(),
        }],
        sizes: vec![18],
        ..Default::default()
    };
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    for round in 0..3 {
        assert_eq!(h.exec(&there), Answer::Allow, "round {round}");
        assert_eq!(h.exec(&elsewhere), Answer::Deny, "round {round}");
    }
    assert_eq!(
        h.unit("c1").counters.hashed,
        6,
        "judged per exec: the content's verdict is not cached"
    );
}
