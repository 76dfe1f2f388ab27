//! `cfstrace diff` end to end.
//!
//! On this host: one throttled cgroup recorded twice, with a short period (2 ms) and a long
//! one (100 ms) at the same quota share (50 %), then diffed both ways. The diff's figures and
//! verdicts (text and `--json`) are checked against the two captures' own reports (`cfstrace
//! report --json`) by the oracle (`expect::diff`), never against numbers written here. And on
//! the kept captures (no root): two kernels' captures, the same file twice, and bad input.
//!
//! The host test needs root (cgroups, BPF). Never skips. Runs a small throttling storm: wrap
//! the run in `flock /tmp/cfstrace-host.lock` where other storms may run.
use std::fs;
use std::path::Path;
use std::time::Duration;

use cfstrace_tests::expect::{check_diff, check_diff_against_reports};
use cfstrace_tests::{
    Scratch, Version, cfstrace_bin, require_root, run_with_timeout, stdout_json, test_cgroups,
    workspace_root,
};
use serde_json::Value;

const RECORD: &str = "4s";
/// (period, quota) in us: the same 50 % share.
const SHORT: (u64, u64) = (2_000, 1_000);
const LONG: (u64, u64) = (100_000, 50_000);

fn run(args: &[&str], dir: &Path) -> cfstrace_tests::Run {
    run_with_timeout(&cfstrace_bin(), args, dir, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn report_json(capture: &str, dir: &Path) -> Value {
    let r = run(&["report", capture, "--json"], dir);
    assert!(r.status.success(), "{}", r.describe());
    stdout_json(&r)
}

/// `cfstrace diff` both ways (text and JSON) against the two reports.
fn diff_checked(before: &str, after: &str, dir: &Path) -> Value {
    let (rb, ra) = (report_json(before, dir), report_json(after, dir));
    let j = run(&["diff", before, after, "--json"], dir);
    assert!(j.status.success(), "{}", j.describe());
    let d = stdout_json(&j);
    let v = check_diff_against_reports(&d, &rb, &ra);
    assert!(v.failures.is_empty(), "{:#?}\n{d:#}", v.failures);
    // The text says the same verdicts, in 80 columns.
    let t = run(&["diff", before, after], dir);
    assert!(t.status.success(), "{}", t.describe());
    for l in t.stdout.lines() {
        assert!(l.chars().count() <= 80, "over 80 columns: {l:?}");
    }
    let word = |v: &Value| v.as_str().unwrap_or("?").replace('_', " ");
    let node = format!("NODE: {}:", word(&d["node"]["verdict"]["verdict"]));
    assert!(t.stdout.contains(&node), "no {node:?} in\n{}", t.stdout);
    for c in d["cgroups"].as_array().into_iter().flatten() {
        let line = format!(
            "CGROUP {}\n  {}:",
            c["before"]["name"].as_str().unwrap_or("?"),
            word(&c["verdict"]["verdict"])
        );
        assert!(t.stdout.contains(&line), "no {line:?} in\n{}", t.stdout);
    }
    d
}

fn set_quota(dir: &Path, v: Version, (period, quota): (u64, u64)) {
    let w = |f: &str, s: String| {
        fs::write(dir.join(f), &s).unwrap_or_else(|e| panic!("{}/{f} <- {s}: {e}", dir.display()))
    };
    match v {
        Version::V1 => {
            w("cpu.cfs_quota_us", "-1".into());
            w("cpu.cfs_period_us", period.to_string());
            w("cpu.cfs_quota_us", quota.to_string());
        }
        Version::V2 => w("cpu.max", format!("{quota} {period}")),
    }
}

#[test]
fn short_and_long_period_captures_diff_as_their_reports_say() {
    require_root("diff");
    let mut tree = test_cgroups("cfstrace-diff");
    let dir = tree
        .add("svc", SHORT.0, SHORT.1)
        .unwrap_or_else(|e| panic!("{e}"));
    let version = tree.hierarchy.version;
    let path = tree.cgroup_path(&dir);
    tree.busy(&dir, 2).unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-diff");
    let short = scratch.join("short.jsonl").to_string_lossy().into_owned();
    let long = scratch.join("long.jsonl").to_string_lossy().into_owned();
    for (capture, quota) in [(&short, SHORT), (&long, LONG)] {
        set_quota(&dir, version, quota);
        let r = run(&["record", "--duration", RECORD, "-o", capture], &scratch);
        assert!(r.status.success(), "{}", r.describe());
    }
    drop(tree);

    let d = diff_checked(&short, &long, &scratch);
    // The cgroup is in both, matched by its path, with callbacks on both sides.
    let pair = d["cgroups"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["before"]["path"] == path.as_str()))
        .unwrap_or_else(|| panic!("{path} not paired: {d:#}"));
    assert_eq!(pair["matched_by"], "path", "{pair:#}");
    assert_ne!(pair["verdict"]["verdict"], "not_comparable", "{pair:#}");
    assert_ne!(d["node"]["verdict"]["verdict"], "not_comparable", "{d:#}");
    // The other way round: the same pairs, every change negated.
    let back = diff_checked(&long, &short, &scratch);
    let f = |d: &Value, n: &str| {
        d["node"]["figures"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["figure"] == n))
            .and_then(|f| f["change"].as_f64())
    };
    assert_eq!(f(&d, "worst_span").map(|c| -c), f(&back, "worst_span"));

    // --fail-worse: 3 exactly when some verdict is worse, else 0.
    let any_worse = |d: &Value| {
        d["node"]["verdict"]["verdict"] == "worse"
            || d["cgroups"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["verdict"]["verdict"] == "worse")
    };
    for (b, a, doc) in [(&short, &long, &d), (&long, &short, &back)] {
        let r = run(&["diff", b, a, "--fail-worse"], &scratch);
        let want = if any_worse(doc) { 3 } else { 0 };
        assert_eq!(r.status.code(), Some(want), "{}", r.describe());
    }
}

fn fixture(name: &str) -> String {
    workspace_root()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn kept_captures_diff_as_their_reports_say() {
    let dir = std::env::temp_dir();
    let (b, a) = (
        fixture("vm-6.1-bookworm-auto.jsonl"),
        fixture("vm-6.12-trixie-auto.jsonl"),
    );
    let d = diff_checked(&b, &a, &dir);
    assert_eq!(d["node"]["same_kernel"], false);
    // The same file twice: every pair by path, everything unchanged, exit 0 even failing worse.
    let same = diff_checked(&b, &b, &dir);
    assert_eq!(same["node"]["verdict"]["verdict"], "unchanged", "{same:#}");
    for c in same["cgroups"].as_array().into_iter().flatten() {
        assert_eq!(c["matched_by"], "path");
        assert_eq!(c["verdict"]["verdict"], "unchanged", "{c:#}");
    }
    let r = run(&["diff", &b, &b, "--fail-worse"], &dir);
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    assert!(check_diff(&same).failures.is_empty());
}

#[test]
fn bad_captures_are_clear_errors() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-diff-bad");
    let good = fixture("host-6.18-demo.jsonl");
    let missing = scratch.join("missing.jsonl").to_string_lossy().into_owned();
    let r = run(&["diff", &good, &missing], &scratch);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr.contains("after capture") && r.stderr.contains("missing.jsonl"),
        "{}",
        r.describe()
    );
    let hostile = scratch.join("hostile.jsonl");
    fs::write(
        &hostile,
        "{\"schema\":\"not-cfstrace\"}\n\u{1b}[2J garbage\n",
    )
    .unwrap();
    let hostile = hostile.to_string_lossy().into_owned();
    let r = run(&["diff", &hostile, &good], &scratch);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains("before capture"), "{}", r.describe());
    assert!(r.stdout.is_empty(), "{}", r.describe());
    let r = run(&["diff", &good], &scratch);
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
}
