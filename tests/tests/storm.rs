//! `cfstrace storm` on this host: a small storm whose guard is set low enough to trip for real
//! (exit 7, the stop's reason in text and JSON, nothing left behind: no cgroup under the
//! storm's parent, no worker alive), a two-step ramp writing two valid captures, and SIGTERM
//! in the middle of a storm cleaning up as well.
//!
//! Needs root (BPF, cgroups). Never skips.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cfstrace_tests::{Scratch, cfstrace_bin, cpu_hierarchy, require_root, run_with_timeout};
use serde_json::Value;

fn lines(cap: &Path) -> Vec<Value> {
    let text = fs::read_to_string(cap).unwrap_or_else(|e| panic!("{}: {e}", cap.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The storm's directory name (`cfstrace-storm-<pid>`), as cfstrace's stderr says it
/// (`... under /sys/fs/cgroup/cpu/cfstrace-storm-123 (cgroup v1) ...`). The tests run in
/// parallel, so a capture also holds the other tests' storms.
fn tag_of(stderr: &str) -> String {
    stderr
        .split(|c: char| c.is_whitespace() || c == '/')
        .find(|w| w.starts_with("cfstrace-storm-") && w[15..].chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no storm directory named on stderr:\n{stderr}"))
        .to_string()
}

/// The storm's parent directory and worker pids, as the capture's cgroup lines name them.
fn storm_of(cap: &[Value], tag: &str) -> (PathBuf, Vec<u64>) {
    let mut pids = Vec::new();
    let prefix = format!("/{tag}/");
    for l in cap.iter().filter(|l| l["kind"] == "cgroup") {
        if l["path"].as_str().is_some_and(|p| p.starts_with(&prefix)) {
            pids.extend(
                l["processes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["pid"].as_u64()),
            );
        }
    }
    let mount = cpu_hierarchy().expect("a cpu hierarchy").mount;
    (mount.join(tag), pids)
}

/// Nothing of the storm is left: its parent directory is gone and no worker survives.
fn assert_cleaned_up(cap: &[Value], tag: &str) {
    let (parent, pids) = storm_of(cap, tag);
    assert!(!parent.exists(), "{} left behind", parent.display());
    assert!(!pids.is_empty(), "the capture names the storm's workers");
    for pid in pids {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "cfstrace-storm", "worker {pid} survived");
    }
}

fn report_json(cap: &Path, dir: &Path) -> Value {
    let run = run_with_timeout(
        &cfstrace_bin(),
        &["report", "--json", cap.to_str().unwrap()],
        dir,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    serde_json::from_str(&run.stdout).expect("report JSON")
}

#[test]
fn the_guard_stops_the_storm_at_once_and_leaves_nothing() {
    require_root("storm guard test");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-storm-guard");
    let cap = dir.join("g.jsonl");
    let started = Instant::now();
    // 0.0001 % of watchdog_thresh (10 us of 10 s): the first timer-interrupt span that runs a
    // period timer passes it.
    let run = run_with_timeout(
        &cfstrace_bin(),
        &[
            "storm",
            "--cgroups",
            "4",
            "--threads",
            "2",
            "--duration",
            "30s",
            "--guard",
            "0.0001",
            "-o",
            cap.to_str().unwrap(),
            "--json",
        ],
        &dir,
        Duration::from_secs(90),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(run.status.code(), Some(7), "{}", run.describe());
    assert!(
        took < Duration::from_secs(20),
        "the guard stopped a 30 s storm only after {took:?}"
    );
    let sum: Value = serde_json::from_str(&run.stdout).expect("cfstrace.storm/1 JSON");
    assert_eq!(sum["schema"], "cfstrace.storm/1");
    assert_eq!(sum["spec"]["cgroups"], serde_json::json!([4]));
    assert_eq!(sum["spec"]["guard"]["span_limit_ns"], 10_000);
    let stopped = &sum["stopped"];
    assert_eq!(stopped["reason"], "guard", "{sum:#}");
    assert_eq!(stopped["step"], 0);
    let g = &stopped["guard"];
    match g["kind"].as_str() {
        Some("irq_span") => {
            assert!(g["duration_ns"].as_u64().unwrap() > 10_000, "{g}");
            assert_eq!(g["limit_ns"], 10_000);
        }
        Some("callback_over_period") => {
            assert!(g["duration_ns"].as_u64() > g["period_ns"].as_u64(), "{g}");
        }
        other => panic!("unknown guard kind {other:?}: {g}"),
    }
    let why = stopped["why"].as_str().unwrap();
    assert!(why.contains("GUARD STOPPED"), "{why}");
    assert!(
        run.stderr.contains(why),
        "stderr says why: {}",
        run.describe()
    );
    assert!(why.contains(&format!("cpu{}", g["cpu"])), "{why}");
    assert_eq!(sum["steps"][0]["end"], "guard");

    // The capture is whole, ends with the guard, and reads as a report.
    let cap_lines = lines(&cap);
    let tag = tag_of(&run.stderr);
    assert_eq!(cap_lines[0]["schema"], "cfstrace.capture/1");
    let end = cap_lines.last().unwrap();
    assert_eq!(end["kind"], "end");
    assert_eq!(end["reason"], "guard");
    if let Some(path) = g["cgroup"].as_str() {
        // Another test's storm may be the one that tripped it.
        assert!(path.starts_with("/cfstrace-storm-"), "{path}");
    }
    let rep = report_json(&cap, &dir);
    assert!(rep["events"]["periods"].as_u64().unwrap() > 0);
    assert_cleaned_up(&cap_lines, &tag);
}

#[test]
fn a_two_step_ramp_writes_two_valid_captures() {
    require_root("storm ramp test");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-storm-ramp");
    let base = dir.join("r.jsonl");
    let run = run_with_timeout(
        &cfstrace_bin(),
        &[
            "storm",
            "--ramp",
            "2:2:4",
            "--threads",
            "1",
            "--period",
            "10ms",
            "--quota",
            "2ms",
            "--depth",
            "2",
            "--stagger",
            "--duration",
            "2s",
            "-o",
            base.to_str().unwrap(),
            "--json",
        ],
        &dir,
        Duration::from_secs(90),
    )
    .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    let sum: Value = serde_json::from_str(&run.stdout).expect("cfstrace.storm/1 JSON");
    assert!(sum["stopped"].is_null(), "{sum:#}");
    assert_eq!(sum["spec"]["writes"], "staggered");
    assert_eq!(sum["spec"]["depth"], 2);
    let tag = tag_of(&run.stderr);
    let steps = sum["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for (step, n) in steps.iter().zip([2usize, 4]) {
        let cap = dir.join(format!("r-n{n}.jsonl"));
        assert_eq!(step["cgroups"], n);
        assert_eq!(step["capture"], cap.to_str().unwrap());
        assert_eq!(step["end"], "duration");
        let cap_lines = lines(&cap);
        assert_eq!(cap_lines.last().unwrap()["reason"], "duration");
        let rep = report_json(&cap, &dir);
        assert_eq!(rep["events"]["periods"], step["callbacks"]);
        // Every cgroup of the step, nested one deep, with its own quota, made callbacks.
        let mut seen: Vec<String> = rep["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["path"].as_str())
            .filter(|p| p.starts_with(&format!("/{tag}/")))
            .map(String::from)
            .collect();
        seen.sort();
        let want: Vec<String> = (0..n).map(|i| format!("/{tag}/n1/cg{i:04}")).collect();
        assert_eq!(seen, want);
        for c in rep["cgroups"].as_array().unwrap() {
            if c["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("/{tag}/")))
            {
                assert_eq!(
                    (c["period_us"].as_u64(), c["quota_us"].as_u64()),
                    (Some(10_000), Some(2_000))
                );
            }
        }
        assert_cleaned_up(&cap_lines, &tag);
    }
}

#[test]
fn sigterm_mid_storm_cleans_up() {
    require_root("storm SIGTERM test");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-storm-term");
    let cap = dir.join("t.jsonl");
    let mut child = Command::new(cfstrace_bin())
        .args([
            "storm",
            "--cgroups",
            "3",
            "--duration",
            "60s",
            "--no-guard",
            "-o",
        ])
        .arg(&cap)
        .current_dir(&*dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the recording has begun (the capture's header is written once probes are armed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::metadata(&cap).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "no capture after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "storm still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let cap_lines = lines(&cap);
    assert_eq!(cap_lines.last().unwrap()["reason"], "interrupted");
    assert_cleaned_up(&cap_lines, &format!("cfstrace-storm-{}", child.id()));
}
