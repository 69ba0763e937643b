//! Library control: opens of shared objects judged by content (issue 25, 5).

use super::*;

/// An ELF header of type `e_type` (3: a shared object, 2: a fixed-address program),
/// followed by `tag` so that contents differ.
fn elf(e_type: u16, tag: &[u8]) -> Vec<u8> {
    let mut b = vec![0x7f, b'E', b'L', b'F', 2, 1, 1];
    b.resize(16, 0);
    b.extend_from_slice(&e_type.to_le_bytes());
    b.resize(64, 0);
    b.extend_from_slice(tag);
    b
}

fn library_cfg() -> EngineConfig {
    EngineConfig {
        library_control: true,
        ..cfg()
    }
}

#[test]
fn library_control_refuses_opens_of_dropped_shared_objects_only() {
    let h = Harness::new("library-enforce", library_cfg(), None);
    let image_lib = elf(3, b"image library");
    let lib = h.file("libimage.so", &image_lib);
    let evil = h.file("evil.so", &elf(3, b"dropped library"));
    let data = h.file("data.txt", b"not code at all");
    let fixed = h.file("fixed", &elf(2, b"a non-PIE program, read not loaded"));
    h.arm("c1", Mode::Enforce, &[&image_lib]).unwrap();
    {
        let log = h.log.lock().unwrap();
        assert!(
            log.marks
                .iter()
                .all(|(m, add)| *add && m.mask == EventMask::EnforceWithOpens),
            "every filesystem of the unit, volumes too: {:?}",
            log.marks
        );
    }
    assert_eq!(h.answer_to(&lib, libc::FAN_OPEN_PERM), Answer::Allow);
    assert_eq!(h.answer_to(&evil, libc::FAN_OPEN_PERM), Answer::Deny);
    assert_eq!(h.answer_to(&data, libc::FAN_OPEN_PERM), Answer::Allow);
    assert_eq!(h.answer_to(&fixed, libc::FAN_OPEN_PERM), Answer::Allow);
    // Again, from the cache: the same answers.
    assert_eq!(h.answer_to(&lib, libc::FAN_OPEN_PERM), Answer::Allow);
    assert_eq!(h.answer_to(&evil, libc::FAN_OPEN_PERM), Answer::Deny);
    let recs = h.records(2);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r.reason, Reason::LibraryNotInBaseline);
        assert_eq!(r.rule.as_deref(), Some("library"));
        assert_eq!(r.verdict, Verdict::Deny);
    }
    let stats = h.handle.status().unwrap().stats;
    assert_eq!(
        stats.denied_by_reason.get("library-not-in-baseline"),
        Some(&2)
    );
    // Execs are judged as before.
    assert_eq!(h.exec(&evil), Answer::Deny);
}

#[test]
fn library_control_in_audit_mode_records_without_holding_opens() {
    let h = Harness::new("library-audit", library_cfg(), None);
    let image_lib = elf(3, b"image library");
    let evil = h.file("evil.so", &elf(3, b"dropped library"));
    let tool = h.file("tool", b"image program");
    h.arm("c1", Mode::Audit, &[&image_lib, b"image program"])
        .unwrap();
    assert!(
        h.log
            .lock()
            .unwrap()
            .marks
            .iter()
            .all(|(m, _)| m.mask == EventMask::AuditWithOpens)
    );
    // A notification: nothing to answer, a would-deny record.
    h.push(&evil, libc::FAN_OPEN, 1);
    let recs = h.records(1);
    assert_eq!(recs[0].reason, Reason::LibraryNotInBaseline);
    assert_eq!(recs[0].verdict, Verdict::WouldDeny);
    assert!(
        h.log.lock().unwrap().answers.is_empty(),
        "audit holds no open"
    );
    drop(tool);
}

#[test]
fn without_library_control_opens_are_not_judged() {
    let h = Harness::new("library-off", cfg(), None);
    let evil = h.file("evil.so", &elf(3, b"dropped library"));
    h.arm("c1", Mode::Enforce, &[b"image"]).unwrap();
    assert!(
        h.log
            .lock()
            .unwrap()
            .marks
            .iter()
            .all(|(m, _)| m.mask == EventMask::Enforce)
    );
    assert_eq!(h.answer_to(&evil, libc::FAN_OPEN_PERM), Answer::Allow);
}

#[test]
fn while_restoring_the_daemons_own_library_opens_are_not_held_behind_it() {
    // The re-arm reads the image's files itself; with library control its opens raise
    // held events too, which must not wait for the re-arm they are part of.
    let h = Harness::restoring("library-restoring", library_cfg());
    let lib = h.file("libimage.so", &elf(3, b"image library"));
    let own = nix::unistd::gettid().as_raw();
    h.push(&lib, libc::FAN_OPEN_PERM, own);
    let answered = |n: usize| {
        (0..200).any(|_| {
            if h.log.lock().unwrap().answers.len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            false
        })
    };
    assert!(answered(1), "the daemon's own open was held");
    assert_eq!(h.log.lock().unwrap().answers[0].1, Answer::Allow);
    // A tenant's open of an unclaimed file waits for the restore, as an exec does.
    h.push(&lib, libc::FAN_OPEN_PERM, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        h.log.lock().unwrap().answers.len(),
        1,
        "held until restored"
    );
    h.handle.restore_done();
    assert!(answered(2), "answered once restored");
}
