//! Realism suite (issue 12): real distribution images built offline from Debian's packages,
//! run through driftlock-runtime under containerd and runc, with real concurrency, and no
//! false denial allowed.
//!
//! A *false denial* is a deny or would-deny record of content that is in the image (each
//! record's BLAKE3 is checked against every file of the image itself), or the failure of a
//! command that runs only image programs. Enforce-mode workloads run image programs only,
//! so there every deny record is one; the audit-mode workload (GNU hello's `./configure &&
//! make && make check`) creates and runs programs by design, and only those may be
//! recorded.
//!
//! The Debian image is built by `testdata/build-debian-image.sh` once per version of that
//! script and cached in `/var/cache/driftlock-realism` (CI keeps it between runs on a
//! machine); the busybox-static and musl images come from `testdata/build-images.sh`.
//! `DRIFTLOCK_REALISM_N` scales the workloads (default 1000 pipelines per loop).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::node::*;
use crate::support::figure;

const DEBIAN: &str = "localhost/driftlock/debian:latest";
const CACHE: &str = "/var/cache/driftlock-realism";

/// The Debian image tar, built once per version of its build script.
fn debian_image() -> Option<&'static PathBuf> {
    static IMAGE: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/build-debian-image.sh");
            let key = blake3::hash(&fs::read(&script).ok()?).to_hex();
            let tar = Path::new(CACHE).join(format!("debian-{}.tar", &key[..12]));
            if tar.exists() {
                return Some(tar);
            }
            fs::create_dir_all(CACHE).ok()?;
            let started = Instant::now();
            let out = Command::new("bash").arg(&script).arg(&tar).output().ok()?;
            if !out.status.success() {
                panic!(
                    "building the Debian image failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            figure(&format!(
                "realism: Debian image built in {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            Some(tar)
        })
        .as_ref()
}

/// BLAKE3 of every regular file of an OCI layout tar's image (unpacked with umoci).
fn image_digests(tar: &Path) -> HashSet<String> {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, HashSet<String>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().unwrap().get(tar) {
        return d.clone();
    }
    let work = tempdir("digests");
    let layout = work.join("layout");
    fs::create_dir_all(&layout).unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-xf")
            .arg(tar)
            .status()
            .unwrap()
            .success()
    );
    let bundle = work.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut digests = HashSet::new();
    let mut todo = vec![bundle.join("rootfs")];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                if let Ok(bytes) = fs::read(e.path()) {
                    digests.insert(blake3::hash(&bytes).to_hex().to_string());
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&work);
    cache
        .lock()
        .unwrap()
        .insert(tar.to_path_buf(), digests.clone());
    digests
}

fn tempdir(what: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "realism-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn scale() -> usize {
    std::env::var("DRIFTLOCK_REALISM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Exec events the daemon has answered or been told of so far.
fn exec_events(node: &Node) -> u64 {
    let s = node.status();
    s["stats"]["permission_events"].as_u64().unwrap_or(0)
        + s["stats"]["exec_notices"].as_u64().unwrap_or(0)
}

/// Every `RESULT name failures` line of a workload's output; panics unless each is 0 and
/// the workload reached its end.
fn check_results(what: &str, out: &std::process::Output) -> usize {
    let t = text(out);
    // The last line can be missing from ctr's copy of the container's output (seen once
    // under the full suite's load); a workload's exit status of 0 (that of its last
    // command, `echo WORKLOAD-DONE`) says as well that it reached its end.
    assert!(
        t.contains("WORKLOAD-DONE") || out.status.success(),
        "{what} did not finish (exit {:?}): {t}",
        out.status
    );
    let mut n = 0;
    for line in t.lines().filter(|l| l.starts_with("RESULT ")) {
        let mut it = line.split_whitespace().skip(1);
        let (name, fails) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(fails, "0", "{what}: {name} failed ({line}): {t}");
        n += 1;
    }
    assert!(n > 0, "{what}: no results: {t}");
    assert!(
        !t.contains("Operation not permitted"),
        "{what}: an image program was refused: {t}"
    );
    n
}

/// Asserts that no record denies content of the image; returns (records, would-deny).
fn assert_no_false_denials(what: &str, node: &Node, image: &Path, enforce: bool) -> (usize, usize) {
    let digests = image_digests(image);
    let recs = node.records(0);
    let mut would_deny = 0;
    for r in &recs {
        let verdict = r["verdict"].as_str().unwrap_or("");
        if verdict == "allow" {
            continue;
        }
        let d = r["blake3"].as_str().unwrap_or("");
        assert!(
            !digests.contains(d),
            "{what}: false denial of an image program: {r}"
        );
        assert!(
            !enforce,
            "{what}: enforce workloads run image programs only, yet: {r}"
        );
        assert!(
            r["rule"].is_string() && r["detail"].is_string(),
            "every deny record names its rule and evidence: {r}"
        );
        would_deny += 1;
    }
    (recs.len(), would_deny)
}

/// The enforce workload for the Debian image: pipelines on both cores, command
/// substitutions inside pipelines, xargs -P fan-outs, parallel python3 and perl that
/// spawn children, sh -c trees, and Python's own subprocess regression tests.
const DEBIAN_WORKLOAD: &str = r#"
set -o pipefail
N=$1
res() { echo "RESULT $1 $2"; }
pipes() { local f=0 i; for i in $(seq "$N"); do /usr/bin/echo x | /usr/bin/cat | /usr/bin/tr x y >/dev/null || f=$((f+1)); done; res "pipelines-$1" "$f"; }
subst() { local f=0 i v; for i in $(seq $((N/10))); do v=$(/usr/bin/python3 -c 'print(1)' | /usr/bin/cat) && [ "$v" = 1 ] || f=$((f+1)); done; res python-in-pipeline "$f"; }
pipes a & pipes b & subst & wait
f=0; seq 1 "$N" | xargs -P 8 -I{} sh -c 'echo {} | md5sum | cut -c1-4 >/dev/null' || f=1; res xargs-fanout "$f"
f=0; pids=(); for i in $(seq 24); do
  python3 -c 'import subprocess,sys; sys.exit(subprocess.run(["/usr/bin/true"]).returncode)' & pids+=($!)
  perl -e 'exit(system("/bin/true") >> 8)' & pids+=($!)
done; for p in "${pids[@]}"; do wait "$p" || f=$((f+1)); done; res python-perl-parallel "$f"
f=0; for i in $(seq $((N/10))); do sh -c 'sh -c "ls / | wc -l" | cat; bash -c "true | true"' >/dev/null || f=$((f+1)); done; res sh-trees "$f"
f=0; for i in $(seq $((N/20))); do curl --version | head -1 | grep -q curl || f=$((f+1)); done; res curl-pipeline "$f"
# Exec names the daemon must resolve as the task would: /proc/self/... is the task, not
# the daemon, and /dev/fd/N and /proc/self/exe are magic links.
f=0; for i in $(seq 20); do python3 -c 'import os; os.execv("/proc/self/exe", ["python3", "-c", "pass"])' || f=$((f+1)); done; res proc-self-exe "$f"
f=0; for i in $(seq 20); do bash -c 'exec 3</usr/bin/true; /dev/fd/3' || f=$((f+1)); done; res dev-fd-exec "$f"
f=0; for i in $(seq 20); do (cd /usr/bin && ./true && ../bin/true) || f=$((f+1)); done; res relative-names "$f"
if [ "${2:-}" = testsuite ]; then
  # Two tests write a new shell script to /tmp and run it: drift by design, denied in
  # enforce mode (as they must be); the audit workload covers programs made at run time.
  python3 -m test -W -i test_args_string -i test_call_string test_subprocess >/tmp/pytest.log 2>&1; rc=$?; [ $rc = 0 ] || grep -E -B2 -A25 "^(ERROR|FAIL):" /tmp/pytest.log | head -120; res python-test_subprocess "$rc"
fi
echo WORKLOAD-DONE
"#;

/// The same shapes with busybox (static: every applet is /bin/busybox) or a musl program.
const SMALL_WORKLOAD: &str = r#"
N=$1; PROG=$2
res() { echo "RESULT $1 $2"; }
pipes() { f=0; i=0; while [ $i -lt "$N" ]; do i=$((i+1)); $PROG | cat | tr a b >/dev/null || f=$((f+1)); done; res "pipelines-$1" "$f"; }
pipes a & pipes b & wait
f=0; seq 1 "$N" | xargs -P 8 -n 1 sh -c "$PROG | cat >/dev/null" || f=1; res xargs-fanout "$f"
f=0; i=0; while [ $i -lt $((N/10)) ]; do i=$((i+1)); sh -c "sh -c '$PROG | wc -l' | cat" >/dev/null || f=$((f+1)); done; res sh-trees "$f"
echo WORKLOAD-DONE
"#;

fn run_debian_enforce(record_misses: bool) {
    let (name, args): (&str, &[&str]) = if record_misses {
        ("realism-debian-misses", &["--record-misses"])
    } else {
        ("realism-debian", &[])
    };
    run_debian_enforce_with(name, args, !record_misses);
}

/// The Debian enforce workload under daemon `args`; `testsuite`: Python's subprocess tests
/// too.
fn run_debian_enforce_with(name: &str, args: &[&str], testsuite: bool) {
    let Some(node) = Node::with_daemon_args(name, args) else {
        return;
    };
    let image = debian_image().expect("Debian image");
    node.import("localhost/driftlock/debian", image);
    let n = scale();
    let before = exec_events(&node);
    let started = Instant::now();
    let suite = if testsuite { "testsuite" } else { "" };
    let out = node.run_argv(
        DEBIAN,
        name,
        &[],
        &[
            "bash",
            "-c",
            DEBIAN_WORKLOAD,
            "workload",
            &n.to_string(),
            suite,
        ],
    );
    let results = check_results(name, &out);
    assert!(out.status.success(), "{}", text(&out));
    let execs = exec_events(&node) - before;
    let (records, _) = assert_no_false_denials(name, &node, image, true);
    let status = node.status();
    assert_eq!(
        status["stats"]["denied_by_reason"],
        serde_json::json!({}),
        "{status}"
    );
    figure(&format!(
        "realism: Debian enforce{}: {results} workloads, {execs} exec events, {} opens judged, 0 false denials, {records} records, {:.0} s; loader checks {}, looks at a thread not yet blocked {}, longest wait {} us",
        if args.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.join(" "))
        },
        status["stats"]["open_events"],
        started.elapsed().as_secs_f64(),
        status["stats"]["loader_checks"],
        status["stats"]["loader_not_blocked_looks"],
        status["stats"]["loader_wait_max_us"],
    ));
}

#[test]
fn debian_image_programs_are_never_denied_under_concurrency() {
    run_debian_enforce(false);
}

#[test]
fn debian_image_programs_are_never_denied_with_record_misses() {
    run_debian_enforce(true);
}

/// Library control (issue 25, 5): every open on the container's filesystems waits for the
/// daemon, and every shared object the workloads load is judged by content; none may be
/// refused.
#[test]
fn debian_image_programs_and_libraries_are_never_denied_with_library_control() {
    run_debian_enforce_with("realism-debian-libctl", &["--library-control"], true);
}

#[test]
fn static_and_musl_images_programs_are_never_denied_under_concurrency() {
    let Some(node) = Node::new("realism-small") else {
        return;
    };
    let images = images().expect("test images");
    let n = scale();
    for (image, tar, prog) in [
        (BUSYBOX, "busybox.tar", "echo"),
        (MUSL, "musl.tar", "/usr/bin/hello-musl"),
    ] {
        let before = exec_events(&node);
        let id = format!("small-{}", tar.trim_end_matches(".tar"));
        let out = node.run_argv(
            image,
            &id,
            &[],
            &["sh", "-c", SMALL_WORKLOAD, "workload", &n.to_string(), prog],
        );
        let results = check_results(&id, &out);
        assert!(out.status.success(), "{}", text(&out));
        let (records, _) = assert_no_false_denials(&id, &node, &images.join(tar), true);
        assert_eq!(records, 0, "no record for image programs");
        figure(&format!(
            "realism: {id} enforce: {results} workloads, {} exec events, 0 false denials",
            exec_events(&node) - before
        ));
    }
}

/// The rollout phase: audit mode on a workload that creates and runs programs by design.
/// GNU hello's configure scripts, conftest programs and the built `hello` are drift
/// (would-deny); no image program may be, and nothing may fail.
fn run_autotools_audit(record_misses: bool) {
    let name = if record_misses {
        "realism-hello-misses"
    } else {
        "realism-hello"
    };
    let mut args = vec!["--mode", "audit"];
    if record_misses {
        args.push("--record-misses");
    }
    let Some(node) = Node::with_daemon_args(name, &args) else {
        return;
    };
    let image = debian_image().expect("Debian image");
    node.import("localhost/driftlock/debian", image);
    // With --record-misses: a tool the workload writes at start is allowed by an entry, so
    // the records hold allowed-by-entry execs for `tune --against` below.
    if record_misses {
        std::fs::write(
            node.config_path(),
            format!(
                "[[allow]]\nimage = \"*\"\nblake3 = \"{}\"\ncomment = \"the workload's own tool\"\n",
                blake3::hash(ALLOWED_TOOL.as_bytes()).to_hex()
            ),
        )
        .unwrap();
        node.signal_daemon(nix::sys::signal::Signal::SIGHUP);
        wait_for("the reload", std::time::Duration::from_secs(10), || {
            node.status()["config_reloads"] == 1
        });
    }
    let before = exec_events(&node);
    let started = Instant::now();
    let script = "set -e; printf '#!/bin/sh\\nexit 0\\n' > /tmp/allowed-tool; chmod +x /tmp/allowed-tool; \
                  /tmp/allowed-tool; /tmp/allowed-tool; \
                  cp -a /src/hello /tmp/hello; cd /tmp/hello; \
                  ./configure --quiet >/tmp/configure.log 2>&1 || { tail -30 /tmp/configure.log; exit 1; }; \
                  make -j2 >/tmp/make.log 2>&1 || { tail -30 /tmp/make.log; exit 1; }; \
                  make -j2 check >/tmp/check.log 2>&1 || { tail -40 /tmp/check.log; exit 1; }; \
                  ./hello | grep -q 'Hello, world!'; echo RESULT hello-build 0; echo WORKLOAD-DONE";
    // Named as the kubelet names a pod's image (containerd's CRI namespace), so that
    // records carry it and `tune` can scope entries by repository.
    let named = [
        "--annotation",
        "io.kubernetes.cri.image-name=localhost/driftlock/debian:latest",
    ];
    let out = node.run_argv(DEBIAN, name, &named, &["bash", "-c", script]);
    check_results(name, &out);
    assert!(out.status.success(), "{}", text(&out));
    let execs = exec_events(&node) - before;
    let (records, would_deny) = assert_no_false_denials(name, &node, image, false);
    assert!(
        would_deny > 0,
        "the build's own programs are drift and must be recorded"
    );
    let recs = node.records(0);
    assert!(
        recs.iter().any(|r| r["verdict"] == "would-deny"
            && r["path"].as_str().is_some_and(|p| p.ends_with("/hello"))),
        "the built hello is recorded as would-deny"
    );
    if record_misses {
        tune_against_replays_the_build(&node, &recs);
    }
    figure(&format!(
        "realism: GNU hello configure+make+check in audit{}: {execs} exec events, {would_deny} would-deny (all build products), {records} records, 0 false denials, {:.0} s",
        if record_misses {
            " (--record-misses)"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    ));
}

/// The tool the audit workload writes and runs at start (allowed by an entry there).
const ALLOWED_TOOL: &str = "#!/bin/sh\nexit 0\n";

/// `tune --against` over the build's records: a candidate that adds an entry for the built
/// `hello` and drops the one for the workload's tool lifts exactly hello's would-deny
/// records and would deny exactly the tool's allowed execs.
fn tune_against_replays_the_build(node: &Node, recs: &[serde_json::Value]) {
    let tool = blake3::hash(ALLOWED_TOOL.as_bytes()).to_hex().to_string();
    let hello = recs
        .iter()
        .find(|r| {
            r["verdict"] == "would-deny"
                && r["path"].as_str().is_some_and(|p| p.ends_with("/hello"))
        })
        .and_then(|r| r["blake3"].as_str())
        .expect("hello's would-deny record has a BLAKE3")
        .to_string();
    // `tune --against` names content as records do: SHA-256 where the record has one.
    let key = |r: &serde_json::Value| {
        r["sha256"]
            .as_str()
            .or(r["blake3"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let keys_of = |verdict: &str, digest: &str| -> HashSet<String> {
        recs.iter()
            .filter(|r| r["verdict"] == verdict && r["blake3"] == digest)
            .map(key)
            .collect()
    };
    let count = |verdict: &str, digest: &str| {
        recs.iter()
            .filter(|r| r["verdict"] == verdict && r["blake3"] == digest)
            .count()
    };
    let (hello_denials, tool_allowed) = (count("would-deny", &hello), count("allow", &tool));
    let (hello_keys, tool_keys) = (keys_of("would-deny", &hello), keys_of("allow", &tool));
    assert!(
        tool_allowed >= 2,
        "the tool's execs are recorded as allowed (record_misses): {tool_allowed}"
    );
    let candidate = node.dir.join("dl/candidate.toml");
    std::fs::write(
        &candidate,
        format!("[[allow]]\nrepository = \"localhost/driftlock/debian\"\nblake3 = \"{hello}\"\n"),
    )
    .unwrap();
    let out = Command::new(crate::support::BIN)
        .args(["tune", "--json", "--against"])
        .arg(&candidate)
        .arg("--current")
        .arg(node.config_path())
        .arg(&node.audit)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digests = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["digest"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (allowed, denied) = (digests("newly_allowed"), digests("newly_denied"));
    assert_eq!(allowed.len(), hello_denials, "{v}");
    assert!(
        allowed.iter().all(|d| hello_keys.contains(d)),
        "only hello is lifted: {v}"
    );
    assert_eq!(denied.len(), tool_allowed, "{v}");
    assert!(
        denied.iter().all(|d| tool_keys.contains(d)),
        "only the tool would be denied: {v}"
    );
    figure(&format!(
        "realism: tune --against over {} records: {} denials lifted (hello), {} allowed execs newly denied (the dropped entry)",
        v["considered"],
        allowed.len(),
        denied.len()
    ));
}

#[test]
fn autotools_build_in_audit_mode_records_only_its_own_programs() {
    run_autotools_audit(false);
}

#[test]
fn autotools_build_in_audit_mode_with_record_misses() {
    run_autotools_audit(true);
}
