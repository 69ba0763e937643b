//! The CLI without root: baseline snapshot, show and diff.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::BIN;

#[test]
fn snapshot_show_and_diff() {
    let dir = std::env::temp_dir().join(format!("driftlock-cli-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("root/bin")).unwrap();
    let exe = |p: &str, data: &[u8]| {
        fs::write(dir.join(p), data).unwrap();
        fs::set_permissions(dir.join(p), fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe("root/bin/a", b"a");
    exe("root/bin/b", b"b");
    let a = dir.join("a.baseline");
    let out = Command::new(BIN)
        .args(["baseline", "snapshot"])
        .arg(dir.join("root"))
        .arg("-o")
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 executables"));

    let show = Command::new(BIN)
        .args(["baseline", "show"])
        .arg(&a)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("/bin/a") && text.contains(&blake3::hash(b"b").to_hex().to_string()),
        "{text}"
    );

    exe("root/bin/b", b"b2");
    exe("root/bin/c", b"c");
    let b = dir.join("b.baseline");
    assert!(
        Command::new(BIN)
            .args(["baseline", "snapshot"])
            .arg(dir.join("root"))
            .arg("-o")
            .arg(&b)
            .status()
            .unwrap()
            .success()
    );
    let diff = Command::new(BIN)
        .args(["baseline", "diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(diff.status.code(), Some(1));
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        text.contains("+ ") && text.contains("/bin/c") && text.contains("~ "),
        "{text}"
    );
    let same = Command::new(BIN)
        .args(["baseline", "diff"])
        .arg(&a)
        .arg(&a)
        .status()
        .unwrap();
    assert_eq!(same.code(), Some(0));
    // Issue 29: the same for tools, with --json.
    let run_json = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), v)
    };
    let (code, v) = run_json(&[
        "baseline".as_ref(),
        "show".as_ref(),
        "--json".as_ref(),
        a.as_os_str(),
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["entries"][0]["path"], "/bin/a");
    let (code, v) = run_json(&[
        "baseline".as_ref(),
        "diff".as_ref(),
        "--json".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(v["added"][0]["path"], "/bin/c", "{v}");
    assert_eq!(v["changed"][0]["path"], "/bin/b", "{v}");
    assert_eq!(
        v["changed"][0]["to"],
        blake3::hash(b"b2").to_hex().to_string()
    );

    // A corrupt file is refused with the reason.
    let data = fs::read(&a).unwrap();
    fs::write(&a, &data[..data.len() - 3]).unwrap();
    let bad = Command::new(BIN)
        .args(["baseline", "show"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let (code, v) = run_json(&[
        "baseline".as_ref(),
        "show".as_ref(),
        "--json".as_ref(),
        a.as_os_str(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(v["ok"], false);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_check_reports_the_line_and_the_reason() {
    let dir = std::env::temp_dir().join(format!("driftlock-cfg-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    fs::write(
        &good,
        "mode = \"audit\"\n[[image]]\nname = \"nginx*\"\nmode = \"enforce\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 image rules"));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.toml");
    assert!(
        Command::new(BIN)
            .args(["config", "check", shipped])
            .status()
            .unwrap()
            .success()
    );

    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "mode = \"audit\"\nhash_timeout_ms = 100\nmdoe = \"enforce\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("mdoe"), "{err}");
    // The daemon refuses to start on it, with the same message.
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    fs::remove_dir_all(&dir).unwrap();
}

/// Renders a kustomization with `kubectl kustomize` (offline); `None` when kubectl is
/// missing (.ci/run installs Debian's kubernetes-client).
fn kustomize(dir: &std::path::Path) -> Option<Vec<serde_yaml::Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(o) => o,
        Err(_) => return None,
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
            .collect(),
    )
}

/// Issue 18: the base, each overlay and the monitoring kustomization render with kubectl
/// (Debian 12's 1.20 and newer ones), and what they render fits together: every mount has
/// its volume, the ConfigMap's config.toml is one the daemon accepts with the modes the
/// overlay promises, the rolling update surges, the probes use the image's entry point,
/// and the PodMonitor scrapes the port and Secret the DaemonSet has.
#[test]
fn kustomize_overlays_render_and_fit_together() {
    use driftlock::Mode;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let Some(base) = kustomize(&root.join("base")) else {
        eprintln!("skipping: kubectl is not installed (.ci/run installs kubernetes-client)");
        return;
    };
    let find = |docs: &[serde_yaml::Value], kind: &str| -> serde_yaml::Value {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let config_of = |docs: &[serde_yaml::Value]| -> driftlock::config::Config {
        let cm = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some("ConfigMap")
                    && d["metadata"]["name"].as_str() == Some("driftlock-config")
            })
            .expect("the driftlock-config ConfigMap");
        let text = cm["data"]["config.toml"].as_str().expect("config.toml");
        driftlock::config::Config::parse(text, std::path::Path::new("config.toml"))
            .unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"))
    };
    let mode = |c: &driftlock::config::Config, ns: &str| {
        c.mode_for(
            None,
            Some("registry.example/app:1"),
            Some(ns),
            Mode::Enforce,
        )
    };
    for d in &base {
        for key in ["apiVersion", "kind"] {
            assert!(d[key].as_str().is_some(), "no {key} in {d:?}");
        }
        assert!(d["metadata"]["name"].as_str().is_some());
        if !matches!(d["kind"].as_str(), Some("Namespace" | "RuntimeClass")) {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some("driftlock-system"),
                "{:?}",
                d["kind"]
            );
        }
    }
    let ds = find(&base, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    assert!(
        spec["runtimeClassName"].is_null(),
        "the daemon's own pod must never run through driftlock-runtime"
    );
    assert_ne!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "pod network: the metrics port is the pod's, two pods overlap in an update"
    );
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"].as_i64(), Some(1));
    assert_eq!(rolling["maxUnavailable"].as_i64(), Some(0));
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let volumes: Vec<&str> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let daemon = &spec["containers"][0];
    for c in spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_sequence().unwrap())
    {
        assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
        // The image's name only: ../site sets it, for every overlay.
        assert_eq!(c["image"].as_str(), Some("driftlock"));
        for m in c["volumeMounts"].as_sequence().unwrap() {
            let name = m["name"].as_str().unwrap();
            assert!(volumes.contains(&name), "mount {name} has no volume");
        }
    }
    assert_eq!(
        spec["initContainers"][0]["args"][0].as_str(),
        Some("install")
    );
    assert_eq!(daemon["args"][0].as_str(), Some("daemon"));
    assert_eq!(
        daemon["readinessProbe"]["exec"]["command"][1].as_str(),
        Some("ready")
    );
    let mounts = daemon["volumeMounts"].as_sequence().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing mounted at {path} (driftlock-pod reads it)"))
    };
    let volume = |name: &str| {
        spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap()
            .clone()
    };
    assert_eq!(
        volume(mount_of("/etc/driftlock/config"))["configMap"]["name"].as_str(),
        Some("driftlock-config")
    );
    let secret = volume(mount_of("/etc/driftlock/metrics"))["secret"]["secretName"]
        .as_str()
        .unwrap()
        .to_string();
    let port = daemon["ports"][0].clone();
    assert_eq!(port["containerPort"].as_i64(), Some(9464));
    assert!(
        daemon["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("--metrics-addr=0.0.0.0:9464"))
    );
    // The base enforces; the overlays: everything audit, everything enforce, per namespace.
    assert_eq!(mode(&config_of(&base), "default"), Mode::Enforce);
    let overlay = |name: &str| kustomize(&root.join("overlays").join(name)).unwrap();
    let audit = config_of(&overlay("audit"));
    assert_eq!(mode(&audit, "default"), Mode::Audit);
    assert_eq!(mode(&audit, "payments"), Mode::Audit);
    let enforce = config_of(&overlay("enforce"));
    assert_eq!(mode(&enforce, "default"), Mode::Enforce);
    let per_ns = overlay("per-namespace");
    let c = config_of(&per_ns);
    assert_eq!(mode(&c, "payments"), Mode::Enforce);
    assert_eq!(mode(&c, "web-shop"), Mode::Enforce);
    assert_eq!(mode(&c, "default"), Mode::Audit);
    assert_eq!(
        per_ns
            .iter()
            .filter(|d| d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"].as_str() == Some("driftlock-config"))
            .count(),
        1,
        "the overlay replaces the base's ConfigMap"
    );
    assert_eq!(
        find(&per_ns, "DaemonSet"),
        find(&overlay("enforce"), "DaemonSet"),
        "only the configuration differs"
    );
    // The admission policy requires the RuntimeClass the base ships, in labeled namespaces.
    let admission = kustomize(&root.join("admission")).unwrap();
    let policy = find(&admission, "ValidatingAdmissionPolicy");
    let runtime_class = find(&base, "RuntimeClass");
    let rc_name = runtime_class["metadata"]["name"].as_str().unwrap();
    let expr = policy["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        expr.contains("runtimeClassName") && expr.contains(&format!("'{rc_name}'")),
        "{expr}"
    );
    let binding = find(&admission, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["driftlock.io/enforce"]
            .as_str(),
        Some("true")
    );
    // The PodMonitor scrapes the DaemonSet's port with the Secret the daemon reads.
    let monitoring = kustomize(&root.join("monitoring")).unwrap();
    let pm = find(&monitoring, "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        ds["spec"]["selector"]["matchLabels"]
    );
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(
        endpoint["authorization"]["credentials"]["name"].as_str(),
        Some(secret.as_str())
    );
    assert_eq!(
        endpoint["authorization"]["credentials"]["key"].as_str(),
        Some("token")
    );
    let np = find(&monitoring, "NetworkPolicy");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], port["name"]);
    // The RuntimeClass names the runtime the containerd drop-in adds.
    let rc = find(&base, "RuntimeClass");
    assert_eq!(rc["metadata"]["name"].as_str(), Some("driftlock"));
    let handler = rc["handler"].as_str().unwrap();
    let drop_in: toml::Value =
        toml::from_str(&fs::read_to_string(root.join("base/containerd-driftlock.toml")).unwrap())
            .unwrap();
    let runtime =
        &drop_in["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][handler];
    assert_eq!(
        runtime["options"]["BinaryName"].as_str(),
        Some("/usr/local/bin/driftlock-runtime")
    );
    let cri: toml::Value = toml::from_str(
        &fs::read_to_string(root.join("../../systemd/containerd-cri.toml")).unwrap(),
    )
    .unwrap();
    assert!(
        cri["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
            ["BinaryName"]
            .is_str()
    );
    let base: toml::Value = toml::from_str(
        &fs::read_to_string(root.join("../../systemd/containerd-cri-base-spec.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        base["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
            ["base_runtime_spec"]
            .as_str(),
        Some("/etc/containerd/driftlock-base-spec.json")
    );
}

/// The image and the node's layout are set once, in `site/`, and every overlay renders
/// them: a changed image reaches each overlay's DaemonSet (both containers), and the
/// node settings are a ConfigMap both containers read, with the names driftlock-pod reads.
#[test]
fn the_image_and_node_layout_are_set_once_for_every_overlay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let copy = std::env::temp_dir().join(format!("driftlock-site-{}", std::process::id()));
    let _ = fs::remove_dir_all(&copy);
    let status = Command::new("cp")
        .arg("-r")
        .arg(&root)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let site = copy.join("site/kustomization.yaml");
    let text = fs::read_to_string(&site).unwrap();
    assert!(text.contains("newName: localhost/driftlock") && text.contains("newTag: 0.1.0"));
    fs::write(
        &site,
        text.replace(
            "newName: localhost/driftlock",
            "newName: registry.example/ops/driftlock",
        )
        .replace("newTag: 0.1.0", "newTag: 9.9.9"),
    )
    .unwrap();
    let pod_script = fs::read_to_string(root.join("../image/driftlock-pod")).unwrap();
    for name in ["audit", "enforce", "per-namespace"] {
        let Some(docs) = kustomize(&copy.join("overlays").join(name)) else {
            eprintln!("skipping: kubectl is not installed (.ci/run installs kubernetes-client)");
            let _ = fs::remove_dir_all(&copy);
            return;
        };
        let ds = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("DaemonSet"))
            .unwrap();
        let spec = &ds["spec"]["template"]["spec"];
        let node = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some("ConfigMap")
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("driftlock-node"))
            })
            .unwrap_or_else(|| panic!("{name}: no driftlock-node ConfigMap"));
        let node_name = node["metadata"]["name"].as_str().unwrap();
        let keys: Vec<&str> = node["data"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        for key in [
            "DRIFTLOCK_HOST_BIN",
            "DRIFTLOCK_CONTAINERD_DROPIN_DIR",
            "DRIFTLOCK_CONTAINERD_CONFIG_VERSION",
            "DRIFTLOCK_RUNC",
            "DRIFTLOCK_FAIL_OPEN",
            "DRIFTLOCK_EXEMPT_NAMESPACES",
            "DRIFTLOCK_CRI_HOOKS",
            "DRIFTLOCK_CRI_DEFAULT_SPEC",
        ] {
            assert!(
                keys.contains(&key),
                "{name}: the node ConfigMap lacks {key}"
            );
        }
        for key in &keys {
            assert!(
                pod_script.contains(&format!("${{{key}:-")),
                "driftlock-pod does not read {key}"
            );
        }
        for c in spec["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_sequence().unwrap())
        {
            assert_eq!(
                c["image"].as_str(),
                Some("registry.example/ops/driftlock:9.9.9"),
                "{name}: {}",
                c["name"].as_str().unwrap_or("?")
            );
            assert_eq!(
                c["envFrom"][0]["configMapRef"]["name"].as_str(),
                Some(node_name),
                "{name}: {} does not read the node settings",
                c["name"].as_str().unwrap_or("?")
            );
        }
        let host_root = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("host-root"))
            .unwrap();
        assert_eq!(host_root["hostPath"]["path"].as_str(), Some("/"));
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0]["mountPath"].as_str(),
            Some("/host"),
            "driftlock-pod install finds the host's / at /host"
        );
    }
    fs::remove_dir_all(&copy).unwrap();
}

/// Issue 29: read-only commands create nothing; a state directory that is not there is
/// an error, not an empty answer.
#[test]
fn evidence_list_of_a_missing_state_dir_fails_and_creates_nothing() {
    let base = std::env::temp_dir().join(format!("driftlock-nostate-{}", std::process::id()));
    let state = base.join("state");
    let out = std::process::Command::new(crate::support::BIN)
        .args(["evidence", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such state directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!base.exists(), "nothing was created");
}

/// Issue 29: exit codes scripts can trust, and a permission error that says so.
#[test]
fn exit_codes_say_what_went_wrong() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    // 3: no daemon there.
    let out = run(&["status", "--socket", "/nonexistent/driftlock.sock"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // 2: usage.
    assert_eq!(run(&["status", "--no-such-flag"]).status.code(), Some(2));
    // 5: a configuration the daemon refuses.
    let dir = std::env::temp_dir().join(format!("driftlock-exit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    fs::write(&bad, "no_such_key = 1\n").unwrap();
    let out = run(&[
        "daemon",
        "--config",
        bad.to_str().unwrap(),
        "--socket",
        "/nonexistent/x.sock",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // config check refuses what the daemon refuses (1: a negative answer).
    let open_metrics = dir.join("metrics.toml");
    fs::write(&open_metrics, "metrics_addr = \"0.0.0.0:9464\"\n").unwrap();
    let out = run(&["config", "check", open_metrics.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would refuse"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing_indicators = dir.join("ind.toml");
    fs::write(
        &missing_indicators,
        "indicators = \"/nonexistent/indicators.txt\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", missing_indicators.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // tune with nothing to learn from: a negative answer, not an empty proposal.
    let not_records = dir.join("not-records.txt");
    fs::write(&not_records, "hello\nworld\n").unwrap();
    let out = run(&["tune", not_records.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no driftlock records"));
    fs::remove_dir_all(&dir).unwrap();
    if !crate::support::root_or_skip("exit codes against a daemon") {
        return;
    }
    let mut sb = crate::support::Sandbox::new("exit-codes");
    sb.start_daemon(&[]);
    // 4: refused (no such container).
    let out = sb.client(&["explain", "/bin/true", "--container", "no-such-unit"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // A client that is not root: told so, exit 3.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "status",
            "--socket",
        ])
        .arg(&sb.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied on the driftlock socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 29: `--json` output a script can parse, errors included (on stdout, with the exit
/// status in it), for the commands that report.
#[test]
fn json_output_is_json_errors_included() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let json_of = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    // No daemon: exit 3, and the error as JSON.
    let out = run(&[
        "status",
        "--json",
        "--socket",
        "/nonexistent/driftlock.sock",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit"], 3);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    // A usage error (clap's, exit 2): JSON too, with the usage on stderr.
    let out = run(&["status", "--json", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json_of(&out);
    assert_eq!(
        (v["ok"].clone(), v["exit"].clone()),
        (false.into(), 2.into())
    );
    assert_eq!(v["code"], "unknown-argument");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"));
    // --help is no error, JSON asked for or not.
    let out = run(&["status", "--json", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    // gate-unpin as a unit's ExecStopPost= for a daemon that failed: kept, said as JSON,
    // nothing touched.
    let out = Command::new(BIN)
        .args(["gate-unpin", "--if-stopped", "driftlock.service", "--json"])
        .env("SERVICE_RESULT", "exit-code")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v = json_of(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["kept_for_successor"], true);
    assert_eq!(v["unpinned"], false);
    // A missing state directory: an error, as JSON, and nothing created.
    let dir = std::env::temp_dir().join(format!("driftlock-json-{}", std::process::id()));
    let out = run(&[
        "evidence",
        "list",
        "--json",
        "--state-dir",
        dir.join("state").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(json_of(&out)["ok"], false);
    assert!(!dir.exists());
    // config check: the verdict and the counts, or the reason it is refused.
    fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    fs::write(
        &good,
        "mode = \"audit\"\n[[namespace]]\nname = \"shop\"\nmode = \"enforce\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", "--json", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_of(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["namespace_rules"], 1);
    assert_eq!(v["file"], good.to_str().unwrap());
    let bad = dir.join("bad.toml");
    fs::write(&bad, "metrics_addr = \"0.0.0.0:9464\"\n").unwrap();
    let out = run(&["config", "check", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("would refuse")),
        "{v}"
    );
    // tune: no record read is exit 1, as JSON; records give the proposals as JSON.
    let empty = dir.join("empty.log");
    fs::write(&empty, "not a record\n").unwrap();
    let out = run(&["tune", "--json", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["ok"], false);
    let records = dir.join("records.log");
    fs::write(
        &records,
        r#"{"v":1,"time":"2026-12-01T00:00:00Z","unit":"u1","image_key":"k","image_name":"registry.example/app:1","k8s_namespace":"shop","mode":"audit","verdict":"would-deny","reason":"not-in-baseline","path":"/tmp/x","tid":1,"pid":1,"cmdline":[],"chain":[],"blake3":"aa","sha256":"bb","size":3}"#.to_string() + "\n",
    )
    .unwrap();
    let out = run(&["tune", "--json", records.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_of(&out);
    assert_eq!(v["records"], 1, "{v}");
    assert_eq!(v["proposals"][0]["sha256"], "bb", "{v}");
    assert_eq!(v["proposals"][0]["namespace"], "shop", "{v}");
    // baseline snapshot --json: the summary on stdout, the baseline in --output.
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("prog"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(tree.join("prog")).unwrap().permissions(),
        0o755,
    );
    Command::new("chmod")
        .arg("0755")
        .arg(tree.join("prog"))
        .status()
        .unwrap();
    let out_file = dir.join("tree.baseline");
    let out = run(&[
        "baseline",
        "snapshot",
        "--json",
        "-o",
        out_file.to_str().unwrap(),
        tree.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_of(&out);
    assert_eq!(v["executables"], 1, "{v}");
    assert!(out_file.exists());
    fs::remove_dir_all(&dir).unwrap();
    if !crate::support::root_or_skip("json against a daemon") {
        return;
    }
    let mut sb = crate::support::Sandbox::new("json-out");
    sb.start_daemon(&[]);
    sb.arm("j1", &[]);
    // Refused by the daemon: exit 4, its code in the JSON.
    let out = sb.client(&["disarm", "--json", "--container", "no-such-unit"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v = json_of(&out);
    assert_eq!(v["exit"], 4);
    assert_eq!(v["code"], "not-found", "{v}");
    let out = sb.client(&["disarm", "--json", "--container", "j1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["id"], "j1");
}

/// Issue 29: client commands read the daemon's socket and state directory from the
/// configuration file (`DRIFTLOCK_CONFIG`, else /etc/driftlock/config.toml) when no flag
/// names them; a flag wins.
#[test]
fn clients_read_the_socket_and_state_dir_from_the_configuration_file() {
    let dir = std::env::temp_dir().join(format!("driftlock-clientconf-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    fs::write(
        &config,
        "socket = \"/nonexistent/from-config.sock\"\nstate_dir = \"/nonexistent/state-from-config\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("DRIFTLOCK_CONFIG", &config)
            .env_remove("DRIFTLOCK_SOCKET")
            .output()
            .unwrap()
    };
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/from-config.sock"), "{err}");
    let out = run(&["status", "--socket", "/nonexistent/flag.sock"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/flag.sock"),
        "the flag wins: {err}"
    );
    let out = run(&["evidence", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/state-from-config"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
