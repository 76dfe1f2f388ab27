//! `cfstrace watch --prometheus` on this host, during a real throttling storm whose busiest
//! cgroup is named with a double quote, a backslash and a newline. /metrics is scraped several
//! times and parsed by an independent parser (the OpenMetrics parser of the `prometheus_client`
//! Python package, apt `python3-prometheus-client`): histogram buckets cumulative and monotone
//! with `+Inf` == `_count`, series cumulative from one scrape to the next, the hostile path back
//! exactly, no line swallowed or injected, and `--max-cgroups 1` folding the rest into
//! `cgroup="other"`. Then the server itself: 50 scrapes in parallel beside an idle connection,
//! each answered within 200 ms; `/`, 404, HEAD and 405; the idle connection closed at the
//! request-head timeout.
//!
//! Needs root (cgroups, BPF) and python3 with prometheus_client. Never skips. Runs a real
//! throttling storm: wrap the run in `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cfstrace_tests::{CgroupTree, cfstrace_bin, cpu_hierarchy, is_root};
use serde_json::Value;

/// A leaf name no label value can carry unescaped. Linux refuses a newline in a cgroup name
/// (cgroup_mkdir: EINVAL, v1 and v2 alike), so when mkdir says so the name keeps the quote
/// and the backslashes (`\n` included, a backslash then `n`); the unit tests of
/// tracer/src/prometheus.rs cover a real newline.
const HOSTILE_NL: &str = "ev\"il\\na\nme";
const HOSTILE: &str = "ev\"il\\na\\nme";

/// The families cfstrace exports (as the parser names them: counters without `_total`).
const FAMILIES: &[(&str, &str)] = &[
    ("cfstrace_callback_seconds", "histogram"),
    ("cfstrace_unthrottled_per_period", "histogram"),
    ("cfstrace_irq_span_seconds", "histogram"),
    ("cfstrace_watchdog_thresh_seconds", "gauge"),
    ("cfstrace_headroom_seconds", "gauge"),
    ("cfstrace_headroom_min_seconds", "gauge"),
    ("cfstrace_cpu_headroom_seconds", "gauge"),
    ("cfstrace_cgroup_period_seconds", "gauge"),
    ("cfstrace_cgroup_precursors", "counter"),
    ("cfstrace_events", "counter"),
    ("cfstrace_lost_events", "counter"),
];

const CGROUP_LABELS: &[&str] = &[
    "cgroup",
    "kind",
    "application",
    "container",
    "pod_uid",
    "unit",
];

/// What cfstrace serves /metrics as (prometheus-client's encoder writes OpenMetrics text).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Parse each file named on the command line with the strict OpenMetrics parser (it requires
/// `# EOF`, `_total` counters, integral buckets and `+Inf` == `_count`); one list a file.
const PARSE: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for path in sys.argv[1:]:
    fams = []
    for f in text_string_to_metric_families(open(path, encoding="utf-8").read()):
        fams.append({"name": f.name, "type": f.type, "samples": [
            {"name": s.name, "labels": s.labels, "value": repr(float(s.value))} for s in f.samples]})
    out.append(fams)
print(json.dumps(out))
"#;

/// The tests of this file one at a time: each runs a storm, and two would fight for the CPUs
/// (and the busiest cgroup of one would be the other's).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Its turn (two storms at once would starve each other on this host), then a cgroup tree of
/// its own, `name-PID`, for a storm: its name and the tree.
fn storm_tree(name: &str) -> (MutexGuard<'static, ()>, String, CgroupTree) {
    let turn = serial();
    assert!(
        is_root(),
        "this test throttles real cgroups and attaches BPF programs: run it as root"
    );
    let hierarchy = cpu_hierarchy().expect("no cgroup hierarchy with the cpu controller");
    let top = format!("{name}-{}", std::process::id());
    let tree = CgroupTree::new(hierarchy, &top).unwrap();
    (turn, top, tree)
}

struct Watcher {
    child: Child,
    stderr: PathBuf,
    addr: String,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cfstrace watch --prometheus 127.0.0.1:0 ...` and read the address it serves on.
fn start(dir: &std::path::Path, tag: &str, extra: &[&str]) -> Watcher {
    let stderr = dir.join(format!("{tag}.stderr"));
    let stdout = dir.join(format!("{tag}.stdout"));
    let child = Command::new(cfstrace_bin())
        .args(["watch", "--prometheus", "127.0.0.1:0", "--interval", "1s"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("starting cfstrace");
    let mut w = Watcher {
        child,
        stderr,
        addr: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let err = fs::read_to_string(&w.stderr).unwrap_or_default();
        if let Some(rest) = err.split("serving Prometheus metrics on http://").nth(1) {
            w.addr = rest.split("/metrics").next().unwrap().to_string();
            return w;
        }
        if let Ok(Some(s)) = w.child.try_wait() {
            panic!("cfstrace watch exited {s} before serving:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address on stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP response as a bare client read it.
struct Response {
    status: u16,
    /// Header names lowercased.
    headers: BTreeMap<String, String>,
    body: String,
}

/// `METHOD path` with a bare HTTP/1.1 client (`Connection: close`), read to the end.
fn request(addr: &str, method: &str, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text, \
         text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if method != "HEAD" {
        let len: usize = headers["content-length"].parse().unwrap();
        assert_eq!(len, body.len(), "Content-Length");
    }
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// GET /metrics: (content type, body).
fn scrape(addr: &str) -> (String, String) {
    let r = request(addr, "GET", "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    (r.headers["content-type"].clone(), r.body)
}

/// One sample as the independent parser read it.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The system interpreter the apt package installs into (a pyenv or venv `python3` earlier on
/// PATH would not see it), else whatever `python3` is.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn parse(dir: &std::path::Path, body: &str) -> Vec<Sample> {
    parse_many(dir, &[body.to_string()]).pop().unwrap()
}

/// Parse every body in one run of the parser.
fn parse_many(dir: &std::path::Path, bodies: &[String]) -> Vec<Vec<Sample>> {
    let files: Vec<PathBuf> = (0..bodies.len())
        .map(|i| dir.join(format!("scrape{i}.txt")))
        .collect();
    for (file, body) in files.iter().zip(bodies) {
        fs::write(file, body).unwrap();
    }
    let out = Command::new(python())
        .args(["-c", PARSE])
        .args(&files)
        .output()
        .expect("python3 (apt-get install python3-prometheus-client, or cargo xtask setup)");
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected /metrics: {}\n--- first body ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        bodies[0]
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parsed = parsed.as_array().unwrap();
    assert_eq!(parsed.len(), bodies.len());
    parsed
        .iter()
        .zip(bodies)
        .map(|(families, body)| samples_of(families, body))
        .collect()
}

fn samples_of(families: &Value, body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for f in families.as_array().unwrap() {
        let (name, ty) = (f["name"].as_str().unwrap(), f["type"].as_str().unwrap());
        assert!(
            FAMILIES.contains(&(name, ty)),
            "unexpected family {name} ({ty})\n--- body ---\n{body}"
        );
        for s in f["samples"].as_array().unwrap() {
            samples.push(Sample {
                family: name.to_string(),
                name: s["name"].as_str().unwrap().to_string(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                value: s["value"].as_str().unwrap().parse().unwrap(),
            });
        }
    }
    // Every sample line of the text is one parsed sample: none swallowed, none injected.
    let lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(lines, samples.len(), "--- body ---\n{body}");
    samples
}

/// A histogram series: its labels without `le`.
type SeriesKey = BTreeMap<String, String>;

#[derive(Debug, Default, Clone)]
struct HistSeries {
    buckets: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

/// Check every histogram's shape; returns them by family and series.
fn histograms(samples: &[Sample]) -> BTreeMap<String, BTreeMap<SeriesKey, HistSeries>> {
    let mut out: BTreeMap<String, BTreeMap<SeriesKey, HistSeries>> = BTreeMap::new();
    for s in samples {
        let Some(&(_, "histogram")) = FAMILIES.iter().find(|(n, _)| *n == s.family) else {
            continue;
        };
        let mut key = s.labels.clone();
        let le = key.remove("le");
        let h = out
            .entry(s.family.clone())
            .or_default()
            .entry(key)
            .or_default();
        match s.name.strip_prefix(&s.family) {
            Some("_bucket") => {
                let le = le.expect("a bucket without le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                h.buckets.push((le, s.value));
            }
            Some("_sum") => h.sum = Some(s.value),
            Some("_count") => h.count = Some(s.value),
            _ => panic!("unexpected sample {} in {}", s.name, s.family),
        }
    }
    for (family, series) in &out {
        let mut nbuckets = BTreeSet::new();
        for (labels, h) in series {
            let what = format!("{family}{labels:?}");
            assert!(h.buckets.len() >= 2, "{what}: {:?}", h.buckets);
            assert!(
                h.buckets.windows(2).all(|w| w[0].0 < w[1].0),
                "{what}: le not increasing {:?}",
                h.buckets
            );
            assert!(
                h.buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{what}: buckets not cumulative {:?}",
                h.buckets
            );
            let (last_le, last) = *h.buckets.last().unwrap();
            assert!(last_le.is_infinite(), "{what}: no +Inf bucket");
            assert_eq!(Some(last), h.count, "{what}: +Inf != _count");
            assert!(h.sum.is_some_and(|s| s >= 0.0), "{what}: no _sum");
            nbuckets.insert(h.buckets.len());
            if family != "cfstrace_irq_span_seconds" {
                let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
                let mut want = CGROUP_LABELS.to_vec();
                want.sort();
                assert_eq!(keys, want, "{what}: label names");
            } else {
                assert!(labels.keys().eq(["cpu"]), "{what}");
            }
        }
        assert_eq!(nbuckets.len(), 1, "{family}: bucket layouts differ");
    }
    out
}

fn value(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .unwrap_or_else(|| panic!("no {name}{{{}={:?}}}", label.0, label.1))
        .value
}

fn callback_counts(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == "cfstrace_callback_seconds_count")
        .map(|s| (s.labels["cgroup"].clone(), s.value))
        .collect()
}

/// Every callback is in exactly one series: the series' counts add up to the callbacks counted.
fn assert_one_series_a_callback(samples: &[Sample], counts: &BTreeMap<String, f64>, body: &str) {
    let total: f64 = counts.values().sum();
    let callbacks = value(
        samples,
        "cfstrace_events_total",
        ("kind", "period_callback"),
    );
    assert_eq!(total, callbacks, "{body}");
}

/// A cgroup's CFS period in seconds, read from its own file (`cpu.max` on v2,
/// `cpu.cfs_period_us` on v1), not from cfstrace.
fn file_period_s(dir: &std::path::Path) -> f64 {
    let us = match fs::read_to_string(dir.join("cpu.max")) {
        Ok(max) => max.split_whitespace().nth(1).map(str::to_string),
        Err(_) => fs::read_to_string(dir.join("cpu.cfs_period_us")).ok(),
    };
    let us: u64 = us
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CFS period in {}", dir.display()));
    us as f64 / 1e6
}

/// One cgroup's period gauge and precursor counters (by precursor), checked for their labels
/// and integral, non-negative counts.
fn cgroup_figures(samples: &[Sample], cgroup: &str) -> (Option<f64>, BTreeMap<String, f64>) {
    let mut period = None;
    let mut precursors = BTreeMap::new();
    let mut want = CGROUP_LABELS.to_vec();
    want.sort();
    for s in samples
        .iter()
        .filter(|s| s.labels.get("cgroup").map(String::as_str) == Some(cgroup))
    {
        let mut keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        match s.name.as_str() {
            "cfstrace_cgroup_period_seconds" => {
                assert_eq!(keys, want, "{s:?}: label names");
                assert!(
                    period.replace(s.value).is_none(),
                    "two periods for {cgroup}"
                );
            }
            "cfstrace_cgroup_precursors_total" => {
                keys.retain(|k| *k != "precursor");
                assert_eq!(keys, want, "{s:?}: label names");
                assert!(s.value >= 0.0 && s.value.fract() == 0.0, "{s:?}");
                let p = s.labels["precursor"].clone();
                assert!(precursors.insert(p, s.value).is_none(), "{s:?} twice");
            }
            _ => {}
        }
    }
    (period, precursors)
}

#[test]
fn metrics_parse_escape_accumulate_and_fold() {
    let dir = cfstrace_tests::scratch!("cfstrace-prometheus");
    let (_serial, top, mut tree) = storm_tree("cfstrace-prom");
    // The hostile cgroup is the busiest (the tighter quota on more workers), so it is ranked
    // first for the one slot of --max-cgroups 1.
    let evil = match tree.add(HOSTILE_NL, 5_000, 1_000) {
        Ok(d) => d,
        Err(e) if e.contains("Invalid argument") => {
            eprintln!("this kernel refuses a newline in a cgroup name ({e}): using {HOSTILE:?}");
            tree.add(HOSTILE, 5_000, 1_000).unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    tree.busy(&evil, 3).unwrap();
    let plain = tree.add("plain", 20_000, 2_000).unwrap();
    tree.busy(&plain, 1).unwrap();
    let evil_path = tree.cgroup_path(&evil);
    let plain_path = tree.cgroup_path(&plain);
    assert!(evil_path.contains('"') && evil_path.contains("\\n"));
    let evil_period = file_period_s(&evil);
    let plain_period = file_period_s(&plain);
    assert_eq!((evil_period, plain_period), (0.005, 0.02));
    let mut previous_precursors: Option<BTreeMap<String, f64>> = None;

    // 1. Every cgroup of the tree has its own series.
    let w = start(&dir, "all", &["--duration", "12s", "--cgroup", &top]);
    let mut previous: Option<BTreeMap<String, f64>> = None;
    let mut grew = false;
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..4 {
        let (ctype, body) = scrape(&w.addr);
        assert_eq!(ctype, CONTENT_TYPE);
        let samples = parse(&dir, &body);
        let hists = histograms(&samples);
        let cb = &hists["cfstrace_callback_seconds"];
        assert!(hists.contains_key("cfstrace_irq_span_seconds"), "{body}");
        let cgroups: BTreeSet<&str> = cb.keys().map(|k| k["cgroup"].as_str()).collect();
        // Only the tree's cgroups, and `other` for whatever else on this host had callbacks.
        for c in &cgroups {
            assert!(
                *c == evil_path || *c == plain_path || *c == "other",
                "unexpected series cgroup={c:?}\n{body}"
            );
        }
        assert!(
            cgroups.contains(evil_path.as_str()),
            "hostile path not back exactly:\n{body}"
        );
        assert!(cgroups.contains(plain_path.as_str()), "{body}");
        let counts = callback_counts(&samples);
        assert_one_series_a_callback(&samples, &counts, &body);
        assert!(counts[&evil_path] > 0.0);
        // Each cgroup's period is its file's; nobody wrote it and its callbacks take
        // microseconds, so the kernel never changed or scaled it.
        for (path, file_period) in [(&evil_path, evil_period), (&plain_path, plain_period)] {
            let (period, pre) = cgroup_figures(&samples, path);
            assert_eq!(period, Some(file_period), "{path:?} period:\n{body}");
            let kinds: Vec<&str> = pre.keys().map(String::as_str).collect();
            assert!(
                kinds == ["over_period", "period_changed", "period_scaled"]
                    || kinds
                        == [
                            "multi_pass",
                            "over_period",
                            "period_changed",
                            "period_scaled"
                        ],
                "{path:?} precursors {kinds:?}:\n{body}"
            );
            assert_eq!(pre["period_changed"], 0.0, "{path:?}:\n{body}");
            assert_eq!(pre["period_scaled"], 0.0, "{path:?}:\n{body}");
            for (k, n) in &pre {
                assert!(
                    *n <= counts[path.as_str()],
                    "{path:?} {k} {n} > its callbacks"
                );
            }
        }
        let (_, pre) = cgroup_figures(&samples, &evil_path);
        if let Some(prev) = &previous_precursors {
            for (k, n) in prev {
                assert!(pre[k] >= *n, "{evil_path:?} {k}: {n} -> {}", pre[k]);
            }
        }
        previous_precursors = Some(pre);
        let thresh = samples
            .iter()
            .find(|s| s.name == "cfstrace_watchdog_thresh_seconds")
            .map(|s| s.value);
        if let Some(t) = thresh {
            let h = samples
                .iter()
                .find(|s| s.name == "cfstrace_headroom_seconds")
                .expect("node headroom gauge")
                .value;
            assert!(h > 0.0 && h <= t, "headroom {h} of {t}");
            assert!(
                samples
                    .iter()
                    .any(|s| s.name == "cfstrace_cpu_headroom_seconds")
            );
        }
        assert!(
            samples
                .iter()
                .any(|s| s.name == "cfstrace_lost_events_total")
        );
        // Cumulative over the run: no series goes down between scrapes.
        if let Some(prev) = &previous {
            for (c, n) in prev {
                let now = counts.get(c).copied().unwrap_or(0.0);
                assert!(now >= *n, "{c:?}: _count went from {n} to {now}");
                grew |= now > *n;
            }
        }
        previous = Some(counts);
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(grew, "the counts never grew between scrapes");
    drop(w);

    // 2. --max-cgroups 1: the busiest cgroup keeps a series, the rest are `other`.
    let w = start(&dir, "folded", &["--duration", "8s", "--max-cgroups", "1"]);
    std::thread::sleep(Duration::from_millis(2500));
    let mut previous_other = 0.0;
    for _ in 0..3 {
        let (_, body) = scrape(&w.addr);
        let samples = parse(&dir, &body);
        let hists = histograms(&samples);
        let cb = &hists["cfstrace_callback_seconds"];
        assert_eq!(cb.len(), 2, "one cgroup and other:\n{body}");
        let counts = callback_counts(&samples);
        assert!(counts.contains_key("other"), "{body}");
        assert!(
            counts.contains_key(evil_path.as_str()),
            "the busiest cgroup keeps its series:\n{body}"
        );
        assert!(!counts.contains_key(plain_path.as_str()), "{body}");
        let other = counts["other"];
        assert!(
            other > 0.0 && other >= previous_other,
            "other: {previous_other} -> {other}"
        );
        previous_other = other;
        // The busiest keeps its period; `other` is no one cgroup: counted precursors, no period.
        assert_eq!(cgroup_figures(&samples, &evil_path).0, Some(evil_period));
        let (period, pre) = cgroup_figures(&samples, "other");
        assert_eq!(period, None, "{body}");
        assert!(pre.contains_key("over_period"), "{body}");
        assert!(!body.contains(&format!("{plain_path}\"")), "{body}");
        let other_labels = cb.keys().find(|k| k["cgroup"] == "other").unwrap();
        assert!(
            other_labels
                .iter()
                .all(|(k, v)| k == "cgroup" || v.is_empty()),
            "{other_labels:?}"
        );
        assert_one_series_a_callback(&samples, &counts, &body);
        std::thread::sleep(Duration::from_millis(1500));
    }
    drop(w);
    drop(tree);
}

#[test]
fn fifty_parallel_scrapes_beside_an_idle_connection() {
    let dir = cfstrace_tests::scratch!("cfstrace-prometheus-parallel");
    let (_serial, top, mut tree) = storm_tree("cfstrace-prom-par");
    let storm = tree.add("storm", 5_000, 1_000).unwrap();
    tree.busy(&storm, 2).unwrap();
    let storm_path = tree.cgroup_path(&storm);
    let w = start(&dir, "parallel", &["--duration", "40s", "--cgroup", &top]);

    // The storm is in /metrics before the scrapes start.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = scrape(&w.addr);
        let counts = callback_counts(&parse(&dir, &body));
        if counts.get(&storm_path).is_some_and(|&n| n > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no storm callbacks:\n{body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // A connection that never sends a byte, held open through the scrapes.
    let mut idle = TcpStream::connect(&w.addr).unwrap();
    let idle_since = Instant::now();
    std::thread::sleep(Duration::from_millis(300));

    const SCRAPES: usize = 50;
    let barrier = Arc::new(Barrier::new(SCRAPES));
    let threads: Vec<_> = (0..SCRAPES)
        .map(|_| {
            let (barrier, addr) = (Arc::clone(&barrier), w.addr.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let r = request(&addr, "GET", "/metrics");
                (t.elapsed(), r)
            })
        })
        .collect();
    let results: Vec<(Duration, Response)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ms: Vec<f64> = results.iter().map(|(d, _)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    eprintln!(
        "{SCRAPES} parallel scrapes beside an idle connection: min {:.1} ms, median {:.1} ms, \
         p90 {:.1} ms, max {:.1} ms",
        ms[0],
        ms[SCRAPES / 2],
        ms[SCRAPES * 9 / 10],
        ms[SCRAPES - 1]
    );
    for (took, r) in &results {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["content-type"], CONTENT_TYPE);
        assert!(
            *took < Duration::from_millis(200),
            "a scrape took {took:?} (all, ms: {ms:?})"
        );
    }
    let bodies: Vec<String> = results.into_iter().map(|(_, r)| r.body).collect();
    for samples in parse_many(&dir, &bodies) {
        histograms(&samples);
        assert!(callback_counts(&samples)[&storm_path] > 0.0);
    }

    // The rest of the server: a page at /, 404 elsewhere, HEAD without a body, 405.
    let index = request(&w.addr, "GET", "/");
    assert_eq!(index.status, 200);
    assert!(index.headers["content-type"].starts_with("text/html"));
    assert!(index.body.contains("href=\"/metrics\""), "{}", index.body);
    for path in ["/nope", "/metrics/", "/index.html"] {
        assert_eq!(request(&w.addr, "GET", path).status, 404, "{path}");
    }
    let head = request(&w.addr, "HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.headers["content-length"].parse::<usize>().unwrap() > 0);
    let post = request(&w.addr, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");

    // The idle connection is closed at the request-head timeout (5 s), not held forever.
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = idle.read_to_end(&mut rest);
    let after = idle_since.elapsed();
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "idle connection: {closed:?} after {after:?}"
    );
    assert!(
        after > Duration::from_secs(4) && after < Duration::from_secs(10),
        "the idle connection closed after {after:?}"
    );
    eprintln!(
        "idle connection closed by the server after {:.1} s ({} bytes sent to it)",
        after.as_secs_f64(),
        rest.len()
    );
    drop(w);
    drop(tree);
}
