//! Processes that arrive after their cgroup is named, on this host: container runtimes write the
//! quota first (which fires the period timer at once) and only then move the process in, so the
//! cgroup is named with no processes. `cfstrace record` must read it again while recording and
//! write a later naming line with the processes, and `report` must name them.
//!
//! Here: the cgroup exists without a quota when the record starts; once the record is attached
//! the quota is written (the timer fires, the cgroup is named with nobody in it), and two busy
//! loops are moved in 2 s later.
//!
//! Needs root (cgroups, BPF). Never skips. Runs a (small) throttling storm: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cfstrace_tests::{
    Scratch, Version, at, cfstrace_bin, run_with_timeout, stdout_json, test_cgroups,
};
use serde_json::Value;

/// 2 ms every 10 ms: two busy loops are throttled in every period.
const PERIOD_US: u64 = 10_000;
const QUOTA_US: u64 = 2_000;
const RECORD: &str = "8s";
/// From the quota write to the processes' arrival: longer than a period, so the first naming
/// certainly finds nobody, and short of the end, so a re-read while recording finds them.
const LATE_BY: Duration = Duration::from_secs(2);

/// Write `value` into `file` of `dir`, or fail naming both.
fn write(dir: &Path, file: &str, value: &str) {
    fs::write(dir.join(file), value)
        .unwrap_or_else(|e| panic!("writing {value:?} to {}/{file}: {e}", dir.display()));
}

/// Wait until the record has written its header (it does right after attaching).
fn wait_attached(capture: &Path, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if fs::read_to_string(capture).is_ok_and(|s| s.contains('\n')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no capture header in {} after {}s",
        capture.display(),
        limit.as_secs()
    );
}

#[test]
fn processes_moved_in_after_the_quota_are_named() {
    let mut tree = test_cgroups("cfstrace-late");
    // Created with the quota, which is lifted again at once: the timer must first fire while
    // the record runs.
    let dir = tree
        .add("ux-bad", PERIOD_US, QUOTA_US)
        .unwrap_or_else(|e| panic!("{e}"));
    let (file, unlimited, limited) = match tree.hierarchy.version {
        Version::V1 => ("cpu.cfs_quota_us", "-1".to_string(), QUOTA_US.to_string()),
        Version::V2 => (
            "cpu.max",
            format!("max {PERIOD_US}"),
            format!("{QUOTA_US} {PERIOD_US}"),
        ),
    };
    write(&dir, file, &unlimited);
    let id = fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .ino();
    let path = tree.cgroup_path(&dir);

    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-late");
    let capture = scratch.join("cap.jsonl");
    let capture_arg = capture.to_str().expect("UTF-8 scratch path").to_string();
    let bin = cfstrace_bin();
    let record = {
        let (bin, dir, capture) = (bin.clone(), scratch.to_path_buf(), capture_arg.clone());
        std::thread::spawn(move || {
            run_with_timeout(
                &bin,
                &["record", "--duration", RECORD, "-o", &capture],
                &dir,
                Duration::from_secs(90),
            )
        })
    };
    wait_attached(&capture, Duration::from_secs(60));
    // The runtime's order: the quota first, the processes after.
    write(&dir, file, &limited);
    std::thread::sleep(LATE_BY);
    let busy = tree.busy(&dir, 2).unwrap_or_else(|e| panic!("{e}"));
    let record = record
        .join()
        .unwrap_or_else(|_| panic!("the record thread panicked"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(record.status.success(), "{}", record.describe());
    drop(tree);

    // The capture: a first naming line with nobody, then a later one with the busy loops.
    let text = fs::read_to_string(&capture).unwrap_or_else(|e| panic!("{capture_arg}: {e}"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let naming: Vec<(usize, &Value)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l["kind"] == "cgroup" && l["id"].as_u64() == Some(id))
        .collect();
    let pids_of = |l: &Value| -> Vec<u64> {
        let mut p: Vec<u64> = at(l, "/processes")
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
            .unwrap_or_default();
        p.sort_unstable();
        p
    };
    let ctx = format!(
        "naming lines of {path} (id {id}): {:#?}",
        naming.iter().map(|(i, l)| (i, l)).collect::<Vec<_>>()
    );
    let mut want: Vec<u64> = busy.iter().map(|p| u64::from(*p)).collect();
    want.sort_unstable();
    let (first_at, first) = naming.first().unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(
        pids_of(first),
        Vec::<u64>::new(),
        "the first naming must come before the processes (else this test tests nothing); {ctx}"
    );
    let first_period = lines
        .iter()
        .position(|l| l["kind"] == "period" && l["cgroup_id"].as_u64() == Some(id))
        .unwrap_or_else(|| panic!("no period line for {path}; {ctx}"));
    assert!(
        *first_at < first_period,
        "the naming line precedes the first callback; {ctx}"
    );
    let (later_at, later) = naming.last().unwrap_or_else(|| panic!("{ctx}"));
    assert!(later_at > first_at, "no re-read line; {ctx}");
    assert_eq!(pids_of(later), want, "{ctx}");
    assert_eq!(at(later, "/path"), path.as_str(), "{ctx}");
    assert_eq!(at(later, "/quota_us").as_u64(), Some(QUOTA_US), "{ctx}");

    // The report takes the last naming line: the culprit names the busy loops.
    let report = run_with_timeout(
        &bin,
        &["report", &capture_arg, "--json"],
        &scratch,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.status.success(), "{}", report.describe());
    let r = stdout_json(&report);
    let c = at(&r, "/cgroups")
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["path"] == path.as_str()))
        .unwrap_or_else(|| panic!("no cgroup {path} in the report: {r:#}"));
    let procs = at(c, "/processes").as_array().cloned().unwrap_or_default();
    assert_eq!(
        pids_of(c),
        want,
        "the report's processes of {path}: {procs:#?}"
    );
    for p in &procs {
        assert_eq!(at(p, "/comm"), "sh", "{p}");
    }
}
