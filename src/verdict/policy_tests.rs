use super::*;

#[test]
fn table() {
    use Finding::*;
    assert_eq!(
        decide(Mode::Enforce, InBaseline),
        (Verdict::Allow, Answer::Allow)
    );
    assert_eq!(
        decide(Mode::Audit, InBaseline),
        (Verdict::Allow, Answer::Allow)
    );
    assert_eq!(
        decide(Mode::Enforce, NotInBaseline),
        (Verdict::Deny, Answer::Deny)
    );
    assert_eq!(
        decide(Mode::Audit, NotInBaseline),
        (Verdict::WouldDeny, Answer::Allow)
    );
    for r in [
        Reason::HashTimeout,
        Reason::ChangedDuringHash,
        Reason::Unreadable,
    ] {
        assert_eq!(decide(Mode::Enforce, Unverifiable(r)).1, Answer::Deny);
        assert_eq!(
            decide(Mode::Audit, Unverifiable(r)),
            (Verdict::WouldDeny, Answer::Allow)
        );
        assert_eq!(Unverifiable(r).reason(), r);
    }
}

fn facts() -> Facts {
    Facts {
        mode: Mode::Enforce,
        event: EventKind::Exec,
        finding: Finding::InBaseline,
        is_loader: false,
        loader_call: None,
        immutable_fs: false,
        from_cache: true,
        record_misses: false,
    }
}

fn outcome(f: Facts) -> Outcome {
    match judge(&f) {
        Decision::Answer(o) => o,
        Decision::AskTask => panic!("asked the task for {f:?}"),
    }
}

#[test]
fn content_rule_precedence() {
    use Finding::*;
    // (known_bad, in_baseline, allowed_by_entry)
    let table = [
        ((false, true, false), InBaseline),
        ((false, false, true), InBaseline),
        ((false, true, true), InBaseline),
        ((false, false, false), NotInBaseline),
        ((true, true, false), Unverifiable(Reason::KnownBad)),
        ((true, true, true), Unverifiable(Reason::KnownBad)),
        ((true, false, true), Unverifiable(Reason::KnownBad)),
    ];
    for ((bad, base, allow), want) in table {
        assert_eq!(
            content_finding(bad, base, allow),
            want,
            "{bad} {base} {allow}"
        );
    }
}

#[test]
fn every_rule_and_precedence() {
    use Finding::*;
    let deny = |reason| (Verdict::Deny, Answer::Deny, reason);
    let allow = (Verdict::Allow, Answer::Allow, Reason::InBaseline);
    let would = |reason| (Verdict::WouldDeny, Answer::Allow, reason);
    let not_in = Reason::NotInBaseline;
    // (mode, event, finding, is_loader, loader_call) -> (verdict, answer, reason)
    let table: &[(Mode, EventKind, Finding, bool, Option<LoaderCall>, _)] = &[
        (
            Mode::Enforce,
            EventKind::Exec,
            InBaseline,
            false,
            None,
            allow,
        ),
        (
            Mode::Enforce,
            EventKind::Exec,
            NotInBaseline,
            false,
            None,
            deny(not_in),
        ),
        (
            Mode::Audit,
            EventKind::ExecNotice,
            NotInBaseline,
            false,
            None,
            would(not_in),
        ),
        (
            Mode::Audit,
            EventKind::Exec,
            NotInBaseline,
            false,
            None,
            would(not_in),
        ),
        // Script control: a file not in the baseline, read by an interpreter.
        (
            Mode::Enforce,
            EventKind::ScriptOpen,
            NotInBaseline,
            false,
            None,
            deny(Reason::ScriptNotInBaseline),
        ),
        (
            Mode::Enforce,
            EventKind::ScriptOpen,
            InBaseline,
            false,
            None,
            allow,
        ),
        (
            Mode::Audit,
            EventKind::ScriptOpen,
            NotInBaseline,
            false,
            None,
            would(Reason::ScriptNotInBaseline),
        ),
        // Known-bad beats everything, the loader rule included.
        (
            Mode::Enforce,
            EventKind::Exec,
            Unverifiable(Reason::KnownBad),
            true,
            None,
            deny(Reason::KnownBad),
        ),
        // The loader rule, once the task was asked.
        (
            Mode::Enforce,
            EventKind::Exec,
            InBaseline,
            true,
            Some(LoaderCall::ForProgram),
            allow,
        ),
        (
            Mode::Enforce,
            EventKind::Exec,
            InBaseline,
            true,
            Some(LoaderCall::Direct),
            deny(Reason::DirectLoader),
        ),
        (
            Mode::Audit,
            EventKind::Exec,
            InBaseline,
            true,
            Some(LoaderCall::Direct),
            would(Reason::DirectLoader),
        ),
        (
            Mode::Enforce,
            EventKind::Exec,
            InBaseline,
            true,
            Some(LoaderCall::Unresolved),
            deny(Reason::LoaderUnverified),
        ),
        (
            Mode::Enforce,
            EventKind::Exec,
            InBaseline,
            true,
            Some(LoaderCall::Gone),
            allow,
        ),
        // A notification's task cannot be asked: the loader is allowed as content.
        (
            Mode::Audit,
            EventKind::ExecNotice,
            InBaseline,
            true,
            None,
            allow,
        ),
        // A loader that is not in the baseline is judged as content first.
        (
            Mode::Enforce,
            EventKind::Exec,
            NotInBaseline,
            true,
            None,
            deny(not_in),
        ),
        // Unverifiable content is denied in enforce mode, recorded in audit mode.
        (
            Mode::Enforce,
            EventKind::Exec,
            Unverifiable(Reason::HashTimeout),
            false,
            None,
            deny(Reason::HashTimeout),
        ),
        (
            Mode::Audit,
            EventKind::Exec,
            Unverifiable(Reason::ChangedDuringHash),
            false,
            None,
            would(Reason::ChangedDuringHash),
        ),
        (
            Mode::Enforce,
            EventKind::Exec,
            Unverifiable(Reason::LoaderUnobservable),
            true,
            None,
            deny(Reason::LoaderUnobservable),
        ),
    ];
    for (mode, event, finding, is_loader, loader_call, want) in table.iter().copied() {
        let f = Facts {
            mode,
            event,
            finding,
            is_loader,
            loader_call,
            ..facts()
        };
        let o = outcome(f);
        assert_eq!((o.verdict, o.answer, o.reason), want, "{f:?}");
        assert_eq!(o.record, o.verdict != Verdict::Allow, "{f:?}");
    }
}

#[test]
fn the_loader_rule_asks_the_task_until_it_is_seen() {
    let f = Facts {
        is_loader: true,
        ..facts()
    };
    assert_eq!(judge(&f), Decision::AskTask);
    let f = Facts {
        loader_call: Some(LoaderCall::NotBlocked),
        ..f
    };
    assert_eq!(judge(&f), Decision::AskTask);
}

#[test]
fn an_unobserved_task_fails_closed_only_where_the_loader_rule_asks() {
    let asks = Facts {
        is_loader: true,
        ..facts()
    };
    let o = judge_unobserved(&asks);
    assert_eq!(
        (o.verdict, o.reason, o.record),
        (Verdict::Deny, Reason::LoaderUnobservable, true)
    );
    let audit = judge_unobserved(&Facts {
        mode: Mode::Audit,
        ..asks
    });
    assert_eq!(
        (audit.verdict, audit.answer),
        (Verdict::WouldDeny, Answer::Allow)
    );
    assert_eq!(judge_unobserved(&facts()).verdict, Verdict::Allow);
}

#[test]
fn effects() {
    // The kernel may allow repeats only of an allowed, non-loader exec on an immutable
    // filesystem.
    let immutable = Facts {
        immutable_fs: true,
        ..facts()
    };
    assert!(outcome(immutable).ignore_mark);
    assert!(!outcome(facts()).ignore_mark);
    for f in [
        Facts {
            is_loader: true,
            loader_call: Some(LoaderCall::ForProgram),
            ..immutable
        },
        Facts {
            event: EventKind::ScriptOpen,
            ..immutable
        },
        Facts {
            event: EventKind::ExecNotice,
            ..immutable
        },
        Facts {
            finding: Finding::NotInBaseline,
            mode: Mode::Audit,
            ..immutable
        },
    ] {
        assert!(!outcome(f).ignore_mark, "{f:?}");
    }
    // Records: every deny and would-deny; allowed misses only on request, hits never.
    let miss = Facts {
        from_cache: false,
        ..facts()
    };
    assert!(!outcome(miss).record);
    let recorded = Facts {
        record_misses: true,
        ..miss
    };
    assert!(outcome(recorded).record);
    assert!(
        !outcome(Facts {
            from_cache: true,
            ..recorded
        })
        .record
    );
}

#[test]
fn loader_rule_table() {
    use Finding::*;
    let cases = [
        (LoaderCall::ForProgram, Some(InBaseline)),
        (LoaderCall::Direct, Some(Unverifiable(Reason::DirectLoader))),
        (
            LoaderCall::Unresolved,
            Some(Unverifiable(Reason::LoaderUnverified)),
        ),
        (
            LoaderCall::NotInExec,
            Some(Unverifiable(Reason::LoaderUnverified)),
        ),
        (LoaderCall::Gone, Some(InBaseline)),
        (LoaderCall::NotBlocked, None),
    ];
    for (call, want) in cases {
        assert_eq!(loader_finding(call), want, "{call:?}");
    }
}

#[test]
fn reasons_have_stable_names_matching_serde() {
    for r in Reason::ALL {
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{}\"", r.as_str()));
    }
    assert_eq!(Reason::LoaderUnobservable.rule(), "loader");
}
