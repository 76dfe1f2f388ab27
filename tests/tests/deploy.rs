//! deploy/: the alerting rules and the Kubernetes manifests, checked by the real tools.
//!
//! - `promtool check rules` on deploy/prometheus/cfstrace-rules.yml, and `promtool test rules`
//!   on its unit tests (every rule firing and not firing; a rule whose threshold is changed
//!   must make them fail).
//! - deploy/kubernetes validated offline against the Kubernetes schema by kubernetes-validate
//!   (PyPI, installed by `cargo xtask setup` into target/pytools), strict: a manifest with a
//!   misspelt field or a wrong type must fail. The PodMonitor (a CRD: no schema there) is
//!   checked against the DaemonSet: selector, namespace, port; and the scrape annotations.
//! - The DaemonSet's privileges for real: `cfstrace watch` under podman (runc) with exactly its
//!   capabilities, hostPID, seccomp and read-only mounts traces and names a throttled cgroup's
//!   process; without each (but SYS_NICE, a warning) it cannot.
//! - End to end: a real Prometheus server (Debian's `prometheus`) on loopback scrapes `cfstrace
//!   watch --prometheus` every second during a real throttling storm, with the rules loaded at
//!   a headroom threshold the storm crosses, and its HTTP API must show CfstraceHeadroomLow
//!   firing with the labels of the culprit `watch --json` names (a YARN container).
//!
//! Needs root (cgroups, BPF), promtool, prometheus, podman and runc (apt), kubernetes-validate
//! (pip, venv):
//! all from `cargo xtask setup`. Never skips: a missing tool fails the test, saying so.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cfstrace_tests::{APPLICATION, CONTAINER, cfstrace_bin, scratch, test_cgroups, workspace_root};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const RULES: &str = "deploy/prometheus/cfstrace-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/cfstrace-rules.test.yml";
const DAEMONSET: &str = "deploy/kubernetes/cfstrace-daemonset.yml";
const PODMONITOR: &str = "deploy/kubernetes/cfstrace-podmonitor.yml";
/// The headroom rule's threshold as the file has it (twice: with and without a named cgroup).
const HEADROOM_CLAUSE: &str =
    "100 * cfstrace_headroom_seconds / cfstrace_watchdog_thresh_seconds < 10\n";

fn tool(path: &str, what: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{} missing: {what} (run `cargo xtask setup`)",
        p.display()
    );
    p
}

fn kubernetes_validate() -> PathBuf {
    let p = workspace_root().join("target/pytools/bin/kubernetes-validate");
    assert!(
        p.is_file(),
        "{} missing: kubernetes-validate is installed by `cargo xtask setup` (pip, venv \
         target/pytools)",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The rules file and its unit tests copied into `dir` (the test file names the rules
/// file by its bare name), the rules rewritten by `edit`.
fn rules_in(dir: &Path, edit: impl FnOnce(String) -> String) -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let rules = dir.join("cfstrace-rules.yml");
    let tests = dir.join("cfstrace-rules.test.yml");
    fs::write(&rules, edit(fs::read_to_string(root.join(RULES)).unwrap())).unwrap();
    fs::copy(root.join(RULES_TEST), &tests).unwrap();
    (rules, tests)
}

/// The headroom threshold (10 %) rewritten to `pct`; both of its occurrences.
fn with_headroom_threshold(rules: String, pct: &str) -> String {
    assert_eq!(
        rules.matches(HEADROOM_CLAUSE).count(),
        2,
        "the headroom rule's expression changed: update HEADROOM_CLAUSE"
    );
    rules.replace(
        HEADROOM_CLAUSE,
        &HEADROOM_CLAUSE.replace("< 10\n", &format!("< {pct}\n")),
    )
}

/// The alert names of the rules file (`- alert: NAME` lines).
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn promtool_checks_the_rules() {
    let promtool = tool(PROMTOOL, "promtool (apt prometheus)");
    let root = workspace_root();
    let names = alert_names(&fs::read_to_string(root.join(RULES)).unwrap());
    let o = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root.join(RULES)));
    assert!(o.status.success(), "promtool check rules: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool found another number of rules than the {} alerts {names:?}: {out}",
        names.len()
    );
    for wanted in [
        "CfstraceHeadroomLow",
        "CfstraceCallbackOverPeriod",
        "CfstracePeriodScaledUp",
        "CfstraceEventsLost",
        "CfstraceDown",
        "CfstraceAbsent",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing: {names:?}"
        );
    }
}

/// Every rule is tested both ways: some `alertname: X` entry with `exp_alerts: []` (not
/// firing) and one with expected alerts (firing).
#[test]
fn every_rule_has_a_firing_and_a_quiet_unit_test() {
    let root = workspace_root();
    let names = alert_names(&fs::read_to_string(root.join(RULES)).unwrap());
    let tests = fs::read_to_string(root.join(RULES_TEST)).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for name in &names {
        let (mut quiet, mut firing) = (false, false);
        for (i, l) in lines.iter().enumerate() {
            if *l != format!("- alertname: {name}") {
                continue;
            }
            let exp = lines[i + 1..]
                .iter()
                .find(|l| l.starts_with("exp_alerts:"))
                .unwrap_or_else(|| panic!("{name}: an entry without exp_alerts"));
            if *exp == "exp_alerts: []" {
                quiet = true;
            } else {
                firing = true;
            }
        }
        assert!(quiet, "{name}: no unit test where it does not fire");
        assert!(firing, "{name}: no unit test where it fires");
    }
}

#[test]
fn promtool_unit_tests_pass_and_catch_a_changed_rule() {
    let promtool = tool(PROMTOOL, "promtool (apt prometheus)");
    let dir = scratch!("deploy-promtool");
    let (_, tests) = rules_in(&dir, |r| r);
    let o = run(Command::new(&promtool).args(["test", "rules"]).arg(&tests));
    assert!(o.status.success(), "promtool test rules: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("SUCCESS"),
        "{}",
        text(&o)
    );

    // A threshold of 1 % no longer fires for node-a's 5 %: the unit tests must see it.
    let (_, tests) = rules_in(&dir, |r| with_headroom_threshold(r, "1"));
    let o = run(Command::new(&promtool).args(["test", "rules"]).arg(&tests));
    assert!(
        !o.status.success(),
        "promtool test rules passed a rules file whose headroom threshold was changed: {}",
        text(&o)
    );
    // promtool writes its failures on stderr.
    assert!(
        text(&o).contains("alertname: CfstraceHeadroomLow"),
        "{}",
        text(&o)
    );
}

#[test]
fn manifests_validate_against_the_kubernetes_schema() {
    let validate = kubernetes_validate();
    let file = workspace_root().join(DAEMONSET);
    let o = run(Command::new(&validate).arg("--strict").arg(&file));
    let out = text(&o);
    assert!(o.status.success(), "kubernetes-validate: {out}");
    // A kind without a schema only warns (exit 0): every object must really be checked.
    assert!(!out.contains("Couldn't find schema"), "{out}");
    for object in [
        "namespace/cfstrace",
        "serviceaccount/cfstrace",
        "daemonset/cfstrace",
    ] {
        assert!(
            out.contains(&format!("passed for resource {object}")),
            "{object} not validated: {out}"
        );
    }

    // Broken copies must fail: a misspelt field (strict: no unknown properties) and a wrong type.
    let dir = scratch!("deploy-validate");
    let good = fs::read_to_string(&file).unwrap();
    for (what, from, to) in [
        (
            "misspelt field",
            "      hostPID: true\n",
            "      hostPid: true\n",
        ),
        (
            "wrong type",
            "              containerPort: 9848\n",
            "              containerPort: nine\n",
        ),
    ] {
        assert_eq!(good.matches(from).count(), 1, "{from:?} in {DAEMONSET}");
        let broken = dir.join("broken.yml");
        fs::write(&broken, good.replace(from, to)).unwrap();
        let o = run(Command::new(&validate).arg("--strict").arg(&broken));
        assert!(
            !o.status.success(),
            "kubernetes-validate accepted a {what}: {}",
            text(&o)
        );
    }
}

/// Every YAML document of each file, as JSON, read by PyYAML (kubernetes-validate's own
/// dependency, in the same venv).
fn yaml_documents(files: &[&str]) -> Vec<Vec<Value>> {
    let python = workspace_root().join("target/pytools/bin/python");
    assert!(
        python.is_file(),
        "{} missing: the venv of `cargo xtask setup`",
        python.display()
    );
    let o = run(Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))",
        ])
        .args(files.iter().map(|f| workspace_root().join(f))));
    assert!(o.status.success(), "reading the manifests: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// kubernetes-validate has no schema for the PodMonitor (a CRD): check what it must agree on
/// with the DaemonSet instead, and the scrape annotations against the container's port.
#[test]
fn podmonitor_and_annotations_point_at_the_daemonsets_port() {
    let docs = yaml_documents(&[DAEMONSET, PODMONITOR]);
    let ds = docs[0]
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pm = &docs[1][0];
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let port = &container["ports"][0];

    // The PodMonitor selects the DaemonSet's pods, in its namespace, on its named port.
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "PodMonitor selector {k}={v} vs pod labels {labels:?}"
        );
    }
    let ns = &ds["metadata"]["namespace"];
    assert!(
        pm["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .unwrap()
            .contains(ns),
        "PodMonitor namespaces vs {ns}"
    );
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(endpoint["path"], "/metrics");

    // The annotations name the same port, and cfstrace listens on it on every address.
    let number = port["containerPort"].as_u64().unwrap();
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], number.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "watch");
    let at = args
        .iter()
        .position(|a| *a == "--prometheus")
        .expect("--prometheus");
    assert_eq!(args[at + 1], format!("0.0.0.0:{number}"));
}

/// The two tests with a storm one at a time: each wants its own cgroup to be the busiest.
fn storm_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from `addr` with a bare HTTP/1.1 client: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    // Prometheus answers small bodies whole, larger ones chunked: undo the chunking.
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n + 2..)?;
    }
}

/// Percent-encode a query parameter (everything but unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A loopback port free now (the kernel's choice; Prometheus binds it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// Wait for `cfstrace watch --prometheus 127.0.0.1:0` to say where it serves.
fn metrics_addr(child: &mut Child, stderr: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let err = fs::read_to_string(stderr).unwrap_or_default();
        if let Some(rest) = err.split("serving Prometheus metrics on http://").nth(1) {
            return rest.split("/metrics").next().unwrap().to_string();
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("cfstrace watch exited {s} before serving:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address on stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The culprit paths of `watch --json`'s interval lines so far, in order.
fn culprits(stdout: &Path) -> Vec<String> {
    fs::read_to_string(stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "interval")
        .filter_map(|v| v["culprit"]["path"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_real_prometheus_fires_the_headroom_alert_with_the_culprits_labels() {
    let prometheus = tool(PROMETHEUS, "the Prometheus server (apt prometheus)");
    let dir = scratch!("deploy-e2e");
    let _turn = storm_turn();

    // The storm: a YARN container at a 5 ms period throttled hard, beside a service at 100 ms
    // whose quota (2 CPUs) its one loop never reaches: its period timer fires too, cheaply, so
    // the rule must pick one cgroup of two.
    let mut tree = test_cgroups("deploy-e2e");
    let yarn = tree
        .add(&format!("hadoop-yarn/{CONTAINER}"), 5_000, 1_000)
        .unwrap();
    tree.busy(&yarn, 2).unwrap();
    let quiet = tree.add("quiet", 100_000, 200_000).unwrap();
    tree.busy(&quiet, 1).unwrap();
    let yarn_path = tree.cgroup_path(&yarn);

    let (stdout, stderr) = (dir.join("watch.jsonl"), dir.join("watch.stderr"));
    let mut watch = Proc(
        Command::new(cfstrace_bin())
            .args([
                "watch",
                "--json",
                "--prometheus",
                "127.0.0.1:0",
                "--interval",
                "1s",
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting cfstrace watch"),
    );
    let metrics = metrics_addr(&mut watch.0, &stderr);

    // The rules as shipped but for the headroom threshold: 99.99999 % of watchdog_thresh
    // (1 us of 10 s), which any period-timer span of the storm crosses.
    let (rules, _) = rules_in(&dir, |r| with_headroom_threshold(r, "99.99999"));
    let port = free_port();
    let web = format!("127.0.0.1:{port}");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: cfstrace\n    static_configs:\n      - targets: ['{metrics}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let prom_log = dir.join("prometheus.log");
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&prom_log).unwrap())
            .spawn()
            .expect("starting prometheus"),
    );
    let log = || fs::read_to_string(&prom_log).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    let start = Instant::now();
    let alert = loop {
        assert!(
            Instant::now() < deadline,
            "no firing CfstraceHeadroomLow for {yarn_path} within 60 s; last /api/v1/alerts: \
             {:?}\n--- prometheus log ---\n{}",
            get(&web, "/api/v1/alerts"),
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
        let Some((200, body)) = get(&web, "/api/v1/alerts") else {
            continue;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        let found = v["data"]["alerts"].as_array().and_then(|alerts| {
            alerts
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "CfstraceHeadroomLow"
                        && a["state"] == "firing"
                        && a["labels"]["cgroup"] == yarn_path.as_str()
                })
                .cloned()
        });
        if let Some(a) = found {
            break a;
        }
    };
    eprintln!(
        "CfstraceHeadroomLow firing after {:.1} s: {alert}",
        start.elapsed().as_secs_f64()
    );

    // The labels and the summary name the cgroup and its YARN application.
    assert_eq!(alert["labels"]["kind"], "yarn", "{alert}");
    assert_eq!(alert["labels"]["application"], APPLICATION, "{alert}");
    assert_eq!(alert["labels"]["job"], "cfstrace", "{alert}");
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains(&yarn_path) && summary.contains(APPLICATION),
        "summary: {summary}"
    );

    // The cgroup the alert names is the culprit cfstrace itself reports in most intervals
    // (the report's culprit is the cgroup of each interval's worst span, which another
    // cgroup's timer can win now and then).
    let named = culprits(&stdout);
    let yarn_intervals = named.iter().filter(|c| **c == yarn_path).count();
    assert!(
        yarn_intervals * 2 > named.len(),
        "watch --json's culprits {named:?}, the alert's {yarn_path}"
    );

    // The series the rules select exist as cfstrace serves them (a misspelt name or label
    // value would only make a rule silent).
    for selector in [
        "cfstrace_headroom_seconds",
        "cfstrace_watchdog_thresh_seconds",
        "cfstrace_callback_seconds_sum",
        "cfstrace_callback_seconds_count",
        "cfstrace_cgroup_period_seconds",
        r#"cfstrace_cgroup_precursors_total{precursor="over_period"}"#,
        r#"cfstrace_cgroup_precursors_total{precursor="period_scaled"}"#,
        r#"cfstrace_lost_events_total{reason="ringbuf_full"}"#,
        r#"cfstrace_lost_events_total{reason="unsent_full"}"#,
        r#"up{job="cfstrace"}"#,
    ] {
        let (status, body) = get(
            &web,
            &format!("/api/v1/query?query=count({})", url_encode(selector)),
        )
        .expect("/api/v1/query");
        assert_eq!(status, 200, "{selector}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"]["result"].as_array().map(Vec::len),
            Some(1),
            "no series {selector} in Prometheus: {body}"
        );
    }

    // Every rule evaluated against the real series without an error.
    let (status, body) = get(&web, "/api/v1/rules").expect("/api/v1/rules");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 6, "{body}");
    for r in rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed to evaluate: {r}",
            r["name"]
        );
    }
    assert!(
        !log().contains("level=error"),
        "prometheus logged errors:\n{}",
        log()
    );
}

const PODMAN: &str = "/usr/bin/podman";

/// What the DaemonSet grants, read from the manifest.
struct Grant {
    caps: Vec<String>,
    host_pid: bool,
    read_only_root: bool,
    seccomp: String,
    /// (host path, mount path), every mount read-only.
    mounts: Vec<(String, String)>,
}

fn grant() -> Grant {
    let docs = yaml_documents(&[DAEMONSET]);
    let ds = docs[0].iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["runAsUser"], 0);
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["readOnly"], true, "{m}");
            let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
            let host = v["hostPath"]["path"].as_str().unwrap().to_string();
            (host, m["mountPath"].as_str().unwrap().to_string())
        })
        .collect();
    Grant {
        caps: sc["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("CAP_{}", c.as_str().unwrap()))
            .collect(),
        host_pid: pod["hostPID"] == true,
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        seccomp: sc["seccompProfile"]["type"].as_str().unwrap().to_string(),
        mounts,
    }
}

/// A root filesystem holding the binary under test and the shared libraries it links (none
/// for the static build).
fn cfstrace_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["usr/bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let bin = cfstrace_bin();
    fs::copy(&bin, root.join("usr/bin/cfstrace")).unwrap();
    let ldd = run(Command::new("ldd").arg(&bin));
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(lib, &to).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
    }
    root
}

/// `cfstrace watch --duration 3s --json` in a podman container given `g` (rootfs `root`).
fn watch_in_podman(root: &Path, g: &Grant, dir: &Path, tag: &str) -> (Output, Vec<Value>) {
    let mut cmd = Command::new(PODMAN);
    // runc and cgroupfs as tests/tests/containers.rs (crun refuses this host's hybrid cgroups;
    // no systemd); ulimits no higher than a process without CAP_SYS_RESOURCE may set.
    cmd.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--rm",
    ])
    .args(["--network", "none", "--user", "0:0"])
    .args([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ])
    .args(["--cap-drop", "all", "--security-opt", "no-new-privileges"]);
    if !g.caps.is_empty() {
        cmd.arg("--cap-add").arg(g.caps.join(","));
    }
    if g.host_pid {
        cmd.arg("--pid=host");
    }
    if g.read_only_root {
        cmd.arg("--read-only");
    }
    if g.seccomp == "Unconfined" {
        cmd.args(["--security-opt", "seccomp=unconfined"]);
    }
    for (host, at) in &g.mounts {
        // The kubelet's log directories exist only on a kubernetes node (DirectoryOrCreate).
        if Path::new(host).exists() {
            cmd.arg("-v").arg(format!("{host}:{at}:ro"));
        }
    }
    cmd.arg("--rootfs")
        .arg(format!("{}:O", root.display()))
        .args(["/usr/bin/cfstrace", "watch", "--duration", "3s", "--json"]);
    let o = run(&mut cmd);
    fs::write(dir.join(format!("{tag}.out")), text(&o)).unwrap();
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (o, lines)
}

/// The manifest's privileges, for real: cfstrace run by podman (runc) with exactly the
/// DaemonSet's capabilities, hostPID, seccomp, read-only root and read-only mounts traces a
/// throttled cgroup and names its process; without each capability (but SYS_NICE, whose loss
/// is only a warning), without hostPID, or under podman's default seccomp profile it cannot.
#[test]
fn the_daemonsets_privileges_are_enough_and_each_is_needed() {
    assert!(
        Path::new(PODMAN).is_file(),
        "{PODMAN} missing: install podman and runc (cargo xtask setup)"
    );
    let dir = scratch!("deploy-podman");
    let g = grant();
    let root = cfstrace_rootfs(&dir);
    let _turn = storm_turn();
    let mut tree = test_cgroups("deploy-podman");
    let cg = tree.add("svc", 5_000, 1_000).unwrap();
    let pids = tree.busy(&cg, 1).unwrap();
    let path = tree.cgroup_path(&cg);

    // The culprit's process ids in the run's intervals.
    let culprit_pids = |lines: &[Value]| -> Vec<u64> {
        lines
            .iter()
            .filter(|v| v["kind"] == "interval" && v["culprit"]["path"] == path.as_str())
            .flat_map(|v| {
                let id = v["culprit"]["id"].clone();
                v["cgroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(move |c| c["id"] == id)
                    .cloned()
            })
            .flat_map(|c| c["processes"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["pid"].as_u64())
            .collect()
    };

    let (o, lines) = watch_in_podman(&root, &g, &dir, "granted");
    assert!(
        o.status.success(),
        "with the DaemonSet's privileges: {}",
        text(&o)
    );
    let start = lines
        .iter()
        .find(|v| v["kind"] == "start")
        .expect("a start line");
    assert_eq!(start["probes"]["period_timer"]["attached"], true, "{start}");
    assert!(
        culprit_pids(&lines).contains(&u64::from(pids[0])),
        "with hostPID the culprit {path} must list the busy loop {}: {}",
        pids[0],
        text(&o)
    );

    for cap in g.caps.iter().filter(|c| *c != "CAP_SYS_NICE") {
        let less = Grant {
            caps: g.caps.iter().filter(|c| *c != cap).cloned().collect(),
            mounts: g.mounts.clone(),
            seccomp: g.seccomp.clone(),
            ..g
        };
        let (o, _) = watch_in_podman(&root, &less, &dir, cap);
        // cfstrace itself must be what failed, not podman, naming what it lacks.
        assert!(
            !o.status.success()
                && text(&o).contains("cfstrace: error:")
                && text(&o).contains(&format!("missing capability {cap}")),
            "cfstrace without {cap}: {}",
            text(&o)
        );
    }
    let no_nice = Grant {
        caps: g
            .caps
            .iter()
            .filter(|c| *c != "CAP_SYS_NICE")
            .cloned()
            .collect(),
        mounts: g.mounts.clone(),
        seccomp: g.seccomp.clone(),
        ..g
    };
    let (o, _) = watch_in_podman(&root, &no_nice, &dir, "no-sys-nice");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot run the reader at real-time priority"),
        "{}",
        text(&o)
    );

    let private_pid = Grant {
        host_pid: false,
        caps: g.caps.clone(),
        mounts: g.mounts.clone(),
        seccomp: g.seccomp.clone(),
        ..g
    };
    let (o, lines) = watch_in_podman(&root, &private_pid, &dir, "private-pid");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        culprit_pids(&lines).is_empty(),
        "without hostPID no host process should be named: {}",
        text(&o)
    );

    let default_seccomp = Grant {
        seccomp: "RuntimeDefault".into(),
        caps: g.caps.clone(),
        mounts: g.mounts.clone(),
        ..g
    };
    let (o, _) = watch_in_podman(&root, &default_seccomp, &dir, "default-seccomp");
    assert!(
        !o.status.success()
            && text(&o).contains("cfstrace: error:")
            && text(&o).contains("Operation not permitted"),
        "under podman's default seccomp profile: {}",
        text(&o)
    );
}
