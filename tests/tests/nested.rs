//! Nested quotas on this host, for real: a parent cgroup with a quota and a child with its own
//! tighter quota each have their own period timer. `cfstrace record` must attribute both timers'
//! callbacks to the right cgroup (each with its own period and quota, as the kernel had them),
//! and the report must show each cgroup's parent chain with the parents' quotas. The same
//! capture checks `report --highlight-under` against `--fail-under`.
//!
//! Needs root (cgroups, BPF) and the built binary; it fails, never skips, without them.

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

use cfstrace_tests::{
    CgroupTree, Run, Scratch, Version, at, cfstrace_bin, cpu_hierarchy, run_with_timeout,
    stdout_json,
};
use serde_json::Value;

/// The parent: 20 ms period, 10 ms quota (half a CPU for the whole subtree).
const PARENT_PERIOD_US: u64 = 20_000;
const PARENT_QUOTA_US: u64 = 10_000;
/// The child: its own, tighter 10 ms period with a 2 ms quota.
const CHILD_PERIOD_US: u64 = 10_000;
const CHILD_QUOTA_US: u64 = 2_000;

struct Nested {
    dir: Scratch,
    capture: String,
    /// Paths as cfstrace prints them (relative to the cpu hierarchy's mount).
    top: String,
    parent: String,
    child: String,
    record: Run,
    report: Run,
}

/// One storm per test binary, shared by the tests (two storms would fight for the CPUs).
fn nested() -> &'static Nested {
    static RUN: OnceLock<Result<Nested, String>> = OnceLock::new();
    cfstrace_tests::shared(&RUN, "nested-quota storm", run_nested)
}

fn run_nested() -> Result<Nested, String> {
    let bin = cfstrace_bin();
    let hierarchy = cpu_hierarchy().ok_or("no cgroup hierarchy with the cpu controller")?;
    let dir = Scratch::fixed(env!("CARGO_TARGET_TMPDIR"), "cfstrace-nested");
    let capture = dir.join("cap.jsonl");
    let capture = capture
        .to_str()
        .ok_or("non-UTF-8 scratch path")?
        .to_string();

    // Dropped on every way out: kills the loops, removes the cgroups.
    let mut tree = CgroupTree::new(
        hierarchy,
        &format!("cfstrace-nested-{}", std::process::id()),
    )?;
    let parent = tree.add("parent", PARENT_PERIOD_US, PARENT_QUOTA_US)?;
    let child = tree.add("parent/child", CHILD_PERIOD_US, CHILD_QUOTA_US)?;
    // Load the parent only limits, so its own quota runs out too.
    let free = tree.add("parent/free", CHILD_PERIOD_US, CHILD_QUOTA_US)?;
    let (file, unlimited) = match tree.hierarchy.version {
        Version::V1 => ("cpu.cfs_quota_us", "-1"),
        Version::V2 => ("cpu.max", "max"),
    };
    fs::write(free.join(file), unlimited)
        .map_err(|e| format!("lifting the quota of {}: {e}", free.display()))?;
    tree.busy(&child, 2)?;
    tree.busy(&free, 2)?;
    std::thread::sleep(Duration::from_millis(200));

    let record = run_with_timeout(
        &bin,
        &["record", "--duration", "4s", "-o", &capture],
        &dir,
        Duration::from_secs(90),
    )?;
    let (top, parent, child) = (
        tree.cgroup_path(&tree.top.clone()),
        tree.cgroup_path(&parent),
        tree.cgroup_path(&child),
    );
    // The report comes from the capture alone: the cgroups are gone by then, so the parent
    // chain must have been resolved while recording.
    drop(tree);
    let report = run_with_timeout(
        &bin,
        &["report", &capture, "--json"],
        &dir,
        Duration::from_secs(60),
    )?;
    Ok(Nested {
        dir,
        capture,
        top,
        parent,
        child,
        record,
        report,
    })
}

fn cgroup<'a>(r: &'a Value, path: &str, ctx: &str) -> &'a Value {
    at(r, "/cgroups")
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["path"] == path))
        .unwrap_or_else(|| panic!("no cgroup {path} in the report; {ctx}"))
}

/// Its callbacks are its own: more than zero periods, and the period and quota read from the
/// cgroup's files and from its timer's cfs_bandwidth are the ones it was given.
fn assert_own_timer(c: &Value, path: &str, period_us: u64, quota_us: u64, ctx: &str) {
    let periods = at(c, "/periods").as_u64().unwrap_or(0);
    assert!(periods > 0, "{path}: no period-timer callbacks; {ctx}");
    // `kernel_*`: what the kernel's timer itself carried, which proves these callbacks are
    // this cgroup's timer.
    for (key, want) in [
        ("callback_ns/count", periods),
        ("period_us", period_us),
        ("quota_us", quota_us),
        ("kernel_period_us", period_us),
        ("kernel_quota_us", quota_us),
    ] {
        assert_eq!(
            at(c, &format!("/{key}")).as_u64(),
            Some(want),
            "{path}: {key}; {ctx}"
        );
    }
}

#[test]
fn parent_and_child_quotas_each_have_their_own_timer_and_chain() {
    cfstrace_tests::require_root("the nested test");
    let n = nested();
    assert!(n.record.status.success(), "{}", n.record.describe());
    assert!(n.report.status.success(), "{}", n.report.describe());
    let r = stdout_json(&n.report);
    let ctx = format!(
        "report:\n{}",
        serde_json::to_string_pretty(&r).unwrap_or_default()
    );

    let parent = cgroup(&r, &n.parent, &ctx);
    let child = cgroup(&r, &n.child, &ctx);
    assert_ne!(parent["id"], child["id"], "{ctx}");
    assert_own_timer(parent, &n.parent, PARENT_PERIOD_US, PARENT_QUOTA_US, &ctx);
    assert_own_timer(child, &n.child, CHILD_PERIOD_US, CHILD_QUOTA_US, &ctx);

    // The child's chain: the parent with its quota, then the test's top (no quota). Nothing
    // above: the top sits right under the hierarchy's root, which is not listed.
    let chain = at(child, "/parents")
        .as_array()
        .unwrap_or_else(|| panic!("{}: no parents; {ctx}", n.child));
    assert_eq!(chain.len(), 2, "{}: parents {chain:?}", n.child);
    assert_eq!(chain[0]["path"], n.parent.as_str(), "{ctx}");
    assert_eq!(chain[0]["id"], parent["id"], "{ctx}");
    assert_eq!(
        chain[0]["period_us"].as_u64(),
        Some(PARENT_PERIOD_US),
        "{ctx}"
    );
    assert_eq!(
        chain[0]["quota_us"].as_u64(),
        Some(PARENT_QUOTA_US),
        "{ctx}"
    );
    assert_eq!(chain[1]["path"], n.top.as_str(), "{ctx}");
    assert!(chain[1]["quota_us"].is_null(), "{ctx}");
    assert!(chain[1]["period_us"].is_null(), "{ctx}");
    // The parent's chain: just the top.
    let chain = at(parent, "/parents")
        .as_array()
        .unwrap_or_else(|| panic!("{}: no parents; {ctx}", n.parent));
    assert_eq!(chain.len(), 1, "{}: parents {chain:?}", n.parent);
    assert_eq!(chain[0]["path"], n.top.as_str(), "{ctx}");

    // The table says it too.
    let text = run_with_timeout(
        &cfstrace_bin(),
        &["report", &n.capture],
        &n.dir,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(text.status.success(), "{}", text.describe());
    let want = format!(
        "under {} (quota {}ms/{}ms) <- {} <- /",
        n.parent,
        PARENT_QUOTA_US / 1000,
        PARENT_PERIOD_US / 1000,
        n.top
    );
    assert!(
        text.stdout.contains(&want),
        "no `{want}` line: {}",
        text.describe()
    );
}

fn report_args(n: &Nested, extra: &[&str]) -> Run {
    let mut args = vec!["report", n.capture.as_str()];
    args.extend_from_slice(extra);
    run_with_timeout(&cfstrace_bin(), &args, &n.dir, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn highlight_under_flags_the_alert_like_fail_under() {
    cfstrace_tests::require_root("the nested test");
    let n = nested();
    assert!(n.record.status.success(), "{}", n.record.describe());

    // Default: 10 %, and this host's headroom is nearly all of watchdog_thresh.
    let r = stdout_json(&n.report);
    assert_eq!(
        at(&r, "/headroom_alert/under_pct").as_f64(),
        Some(10.0),
        "{r}"
    );
    assert_eq!(at(&r, "/headroom_alert/alert"), false, "{r}");

    // 100 %: headroom is always below the whole threshold.
    let run = report_args(n, &["--json", "--highlight-under", "100"]);
    assert!(run.status.success(), "{}", run.describe());
    let r = stdout_json(&run);
    let a = at(&r, "/headroom_alert");
    assert_eq!(a["under_pct"].as_f64(), Some(100.0), "{a}");
    assert_eq!(a["alert"], true, "{a}");
    let pct = a["headroom_pct"]
        .as_f64()
        .unwrap_or_else(|| panic!("no headroom_pct: {a}"));
    assert!(pct > 0.0 && pct < 100.0, "{a}");
    // The same figure as the node's headroom_ns against watchdog_thresh.
    let hr = at(&r, "/headroom_ns").as_f64().expect("headroom_ns");
    let thresh = at(&r, "/watchdog/thresh_s").as_f64().expect("thresh_s");
    assert!(
        (pct - hr * 100.0 / (thresh * 1e9)).abs() < 1e-5,
        "{a} vs headroom_ns {hr}"
    );

    // 0 %: never.
    let run = report_args(n, &["--json", "--highlight-under", "0"]);
    assert!(run.status.success(), "{}", run.describe());
    let r = stdout_json(&run);
    assert_eq!(at(&r, "/headroom_alert/alert"), false, "{r}");
    assert_eq!(
        at(&r, "/headroom_alert/under_pct").as_f64(),
        Some(0.0),
        "{r}"
    );

    // The table: a marked line, no colour (stdout is a file, not a terminal).
    let run = report_args(n, &["--highlight-under", "100"]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.stdout.contains("!! HEADROOM ALERT: node headroom"),
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains('\x1b'), "{}", run.describe());
    let run = report_args(n, &["--highlight-under", "0"]);
    assert!(!run.stdout.contains("HEADROOM ALERT"), "{}", run.describe());

    // --fail-under at the same share judges the same figure: exit 3, and it says the same pct.
    let run = report_args(
        n,
        &["--json", "--highlight-under", "100", "--fail-under", "100"],
    );
    assert_eq!(run.status.code(), Some(3), "{}", run.describe());
    // The JSON records the gate, on the alert's figure, in the sentence stderr says.
    let g = at(&stdout_json(&run), "/gate").clone();
    assert_eq!(g["verdict"], "fail", "{g}");
    assert_eq!(g["fail_under_pct"].as_f64(), Some(100.0), "{g}");
    assert_eq!(
        g["headroom_pct"].as_f64(),
        Some(pct),
        "gate and alert disagree on the figure: {g}"
    );
    let why = g["why"].as_str().expect("gate.why");
    assert!(
        run.stderr.contains(&format!("headroom gate FAIL: {why}")),
        "{}",
        run.describe()
    );
    let run = report_args(
        n,
        &["--json", "--highlight-under", "0", "--fail-under", "0"],
    );
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    assert_eq!(at(&stdout_json(&run), "/gate/verdict"), "pass");
}
