//! End-to-end on this host: real CFS throttling of a YARN-named cgroup, the built `cfstrace`
//! binary records it and reports the container as the culprit.
//!
//! Needs root (cgroups, BPF). Never skips: a missing binary or missing root is a failure.
//! The storm (cgroups + busy loops + `cfstrace record`) runs once per test binary and is shared
//! by the tests that need a capture, so two storms never fight for the CPUs.

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cfstrace_tests::expect::{self, Culprit, Doctor, Facts, Floors, Verdict};
use cfstrace_tests::{
    APPLICATION, CONTAINER, CgroupTree, Run, Scratch, at, cfstrace_bin, cpu_hierarchy,
    kprobes_available, run_with_timeout, scratch, stdout_json,
};
use serde_json::Value;

const PERIOD_US: u64 = 10_000;
const QUOTA_US: u64 = 2_000;
/// `cfstrace doctor --attach-cycles`: the same count the VM matrix uses.
const ATTACH_CYCLES: u32 = 20;
/// The host's per-period floors. Only `runnable` (and async unthrottle) exist on this
/// tracepoint-only host, and with a 2 ms quota many periods have nothing to wake: the host test
/// asks for the figures to be there and non-zero somewhere, the VM matrix (5 ms quota) for means.
const HOST_FLOORS: Floors = Floors {
    unthrottled_mean: 0.0,
    unthrottled_total_mean: 0.0,
    enqueued_mean: 0.0,
    runnable_mean: 0.0,
    max_loops: 1.0,
    async_per_period: 0.0,
};

struct Storm {
    dir: Scratch,
    capture: PathBuf,
    top_name: String,
    busy_pids: Vec<u32>,
    record: Run,
    report: Run,
}

fn storm() -> &'static Storm {
    static STORM: OnceLock<Result<Storm, String>> = OnceLock::new();
    cfstrace_tests::shared(&STORM, "storm setup", run_storm)
}

/// The storm's recorded report, for a test that needs root and a successful record.
fn recorded() -> (&'static Storm, Value) {
    cfstrace_tests::require_root("the host test");
    let s = storm();
    assert!(
        s.record.status.success(),
        "record failed: {}",
        s.record.describe()
    );
    (s, stdout_json(&s.report))
}

fn run_storm() -> Result<Storm, String> {
    let bin = cfstrace_bin();
    let hierarchy = cpu_hierarchy().ok_or(
        "no cgroup hierarchy with the cpu controller (neither a v1 cgroup mount with cpu nor \
         cgroup2 with cpu in cgroup.controllers)",
    )?;
    // A fixed directory: `cargo xtask test` reads its report.json.
    let dir = Scratch::fixed(env!("CARGO_TARGET_TMPDIR"), "cfstrace-hosttest");
    let capture = dir.join("cap.jsonl");
    let top_name = format!("cfstrace-hosttest-{}", std::process::id());

    // The guard kills the busy loops and removes the cgroups on every way out of this function.
    let mut tree = CgroupTree::new(hierarchy, &top_name)?;
    let leaf = tree.add(&format!("hadoop-yarn/{CONTAINER}"), PERIOD_US, QUOTA_US)?;
    let quiet = tree.add("quiet", 100_000, 1_000_000)?;
    let busy_pids = tree.busy(&leaf, 3)?;
    tree.busy(&quiet, 1)?;
    std::thread::sleep(Duration::from_millis(200));

    let cap = capture.to_str().ok_or("non-UTF-8 scratch path")?;
    let record = run_with_timeout(
        &bin,
        &["record", "--duration", "6s", "-o", cap],
        &dir,
        Duration::from_secs(90),
    )?;
    // Report while the cgroups still exist (the capture should not need them, but be fair).
    let report = run_with_timeout(
        &bin,
        &["report", cap, "--json"],
        &dir,
        Duration::from_secs(60),
    )?;
    drop(tree);
    // For `cargo xtask test`'s matrix table (the host's row).
    let _ = fs::write(dir.join("report.json"), &report.stdout);
    Ok(Storm {
        dir,
        capture,
        top_name,
        busy_pids,
        record,
        report,
    })
}

/// A number at a JSON pointer, or a panic naming it.
fn num(v: &Value, pointer: &str) -> f64 {
    at(v, pointer)
        .as_f64()
        .unwrap_or_else(|| panic!("{pointer} is not a number: {}", at(v, pointer)))
}

/// The oracle's verdict: its notes printed, and no failure (else the failures, then `ctx`).
fn assert_passes(v: &Verdict, ctx: &str) {
    for n in &v.notes {
        eprintln!("note: {n}");
    }
    assert!(
        v.failures.is_empty(),
        "{} check(s) failed:\n  - {}\n{ctx}",
        v.failures.len(),
        v.failures.join("\n  - ")
    );
}

#[test]
fn storm_names_the_yarn_container() {
    let (s, r) = recorded();
    assert!(
        s.report.status.success(),
        "report failed: {}",
        s.report.describe()
    );
    let pretty = serde_json::to_string_pretty(&r).unwrap();
    let ctx = format!("report:\n{pretty}");

    assert_eq!(at(&r, "/schema"), "cfstrace.report/1", "{ctx}");
    assert!(
        num(&r, "/events/periods") > 0.0,
        "no periods recorded; {ctx}"
    );

    let pt = at(&r, "/probes/period_timer");
    assert_eq!(
        at(pt, "/attached"),
        true,
        "period_timer probe not attached: {pt}"
    );
    let how = at(pt, "/how").as_str().unwrap_or("");
    if kprobes_available() {
        assert!(
            ["kprobe", "fentry", "tracepoint"].contains(&how),
            "period_timer attached as {how:?}"
        );
    } else {
        // This CI host: no kprobes, fentry EPERM -> the hrtimer tracepoints.
        assert_eq!(
            how, "tracepoint",
            "period_timer attached as {how:?} on a host without kprobes"
        );
    }

    let c = at(&r, "/culprit");
    assert!(!c.is_null(), "no culprit; {ctx}");
    let path = at(c, "/path").as_str().unwrap_or("");
    assert!(
        path.ends_with(&format!("hadoop-yarn/{CONTAINER}")) && path.contains(&s.top_name),
        "culprit is {path:?}, want .../{}/hadoop-yarn/{CONTAINER}; {ctx}",
        s.top_name
    );
    assert_eq!(at(c, "/workload/kind"), "yarn", "{ctx}");
    assert_eq!(at(c, "/workload/application"), APPLICATION, "{ctx}");

    let procs = at(c, "/processes").as_array().cloned().unwrap_or_default();
    assert!(!procs.is_empty(), "culprit.processes is empty; {ctx}");
    for p in &procs {
        assert_eq!(at(p, "/comm"), "sh", "culprit process {p}; {ctx}");
        let pid = at(p, "/pid").as_u64().unwrap_or(0) as u32;
        assert!(
            s.busy_pids.contains(&pid),
            "culprit process {p} is not one of the busy loops {:?}",
            s.busy_pids
        );
    }

    assert!(num(c, "/callback_ns/count") > 0.0, "{ctx}");
    assert!(num(c, "/callback_ns/max") > 0.0, "{ctx}");
    assert_eq!(num(c, "/period_us"), PERIOD_US as f64, "{ctx}");
    assert_eq!(num(c, "/quota_us"), QUOTA_US as f64, "{ctx}");
    let headroom = num(c, "/headroom_ns");
    assert!(
        headroom > 0.0 && headroom < 10e9,
        "headroom_ns {headroom}; {ctx}"
    );
}

/// The same oracle as the VM matrix: each probe attached exactly as this kernel allows (read from
/// kallsyms, ftrace and the kprobe PMU, not from cfstrace), or unattached with a reason; each
/// figure available exactly where its probe is.
#[test]
fn host_reports_what_this_kernel_can_measure() {
    let (_, r) = recorded();
    let facts = Facts::host();
    let path = format!("hadoop-yarn/{CONTAINER}");
    let culprit = Culprit {
        path_suffix: &path,
        kind: "yarn",
        application: APPLICATION,
    };
    let v = expect::check_report(&facts, "auto", &r, &culprit, &HOST_FLOORS);
    let ctx = format!(
        "on this host ({facts:?}), report:\n{}",
        serde_json::to_string_pretty(&r).unwrap()
    );
    assert_passes(&v, &ctx);
    if at(&r, "/figures/runnable/available") == true {
        assert!(
            num(&r, "/culprit/runnable_per_period/max") >= 1.0,
            "runnable is available but the culprit never woke a task: {}",
            at(&r, "/culprit/runnable_per_period")
        );
    }
}

/// The interrupt frame's tracepoint path: on this x86 host (no kprobes) the timer-interrupt
/// span is timed with the `irq_vectors:local_timer_entry/exit` raw tracepoints; every CPU that
/// ran a period timer saw it inside such spans, and its headroom is measured from the worst of
/// them. The spans and callbacks also match the capture line for line.
#[test]
fn irq_spans_via_the_local_timer_tracepoints() {
    let (s, r) = recorded();
    let pretty = serde_json::to_string_pretty(&r).unwrap();
    let ctx = format!("report:\n{pretty}");

    // The oracle's view of this kernel: the local_timer tracepoints exist (x86).
    let facts = Facts::host();
    let st =
        expect::probe_state(&r, "irq_span").unwrap_or_else(|| panic!("no probes.irq_span; {ctx}"));
    let w = expect::want(&facts, "auto", "irq_span", &st.attempts);
    assert_eq!(
        w.style,
        Some("tracepoint"),
        "this host should offer the {} tracepoint ({:?})",
        expect::LOCAL_TIMER_TP,
        w.why_not
    );
    assert!(
        st.attached
            && st.how.as_deref() == Some("tracepoint")
            && st
                .target
                .as_deref()
                .is_some_and(|t| t.contains(expect::LOCAL_TIMER_TP)),
        "probes.irq_span is {st:?}, want attached via tracepoint on {}; {ctx}",
        expect::LOCAL_TIMER_TP
    );
    assert_eq!(at(&r, "/figures/irq_span/available"), true, "{ctx}");
    assert!(
        num(&r, "/events/irq_spans") > 0.0 && num(&r, "/events/periods_in_span") > 0.0,
        "no callback ran inside a traced timer interrupt; {ctx}"
    );

    let cpus = at(&r, "/cpus").as_array().cloned().unwrap_or_default();
    let with_timers: Vec<&Value> = cpus
        .iter()
        .filter(|c| at(c, "/period_timers").as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(!with_timers.is_empty(), "no CPU ran a period timer; {ctx}");
    for c in with_timers {
        let cpu = at(c, "/cpu");
        assert!(
            num(c, "/irq_spans") > 0.0,
            "cpu {cpu} ran period timers but no timer-interrupt span: {c}"
        );
        let w = at(c, "/worst_irq_span");
        assert!(
            num(w, "/timers") >= 1.0 && num(w, "/timers_ns") <= num(w, "/duration_ns"),
            "cpu {cpu}: worst_irq_span {w} should hold at least one period timer, and their \
             time no more than the span's"
        );
        assert_eq!(
            num(w, "/duration_ns"),
            num(c, "/max_irq_span_ns"),
            "cpu {cpu}: {c}"
        );
        // The span holds the callbacks (they run inside the timer interrupt), so it is never
        // shorter than the longest callback. A CSD is its own interrupt: on a noisy host one
        // can outlast the span, and then headroom is judged from it. Which is longest is
        // timing; that the headroom follows the longest is the check.
        let span = num(w, "/duration_ns");
        assert!(
            span >= num(c, "/max_callback_ns"),
            "cpu {cpu}: the worst span is shorter than a callback it should hold: {c}"
        );
        let csd = num(c, "/max_async_ns");
        let (basis, worst) = if csd > span {
            ("async_csd", csd)
        } else {
            ("irq_span", span)
        };
        assert_eq!(
            at(c, "/headroom_basis"),
            basis,
            "cpu {cpu}: headroom should come from its longest IRQs-off span: {c}"
        );
        assert_eq!(
            num(c, "/headroom_ns"),
            num(&r, "/watchdog/thresh_s") * 1e9 - worst,
            "cpu {cpu}: headroom_ns is not watchdog_thresh - the longest IRQs-off span: {c}"
        );
    }
    let bad = expect::consistency(&r);
    assert!(
        bad.is_empty(),
        "the report's own figures disagree:\n  - {}\n{ctx}",
        bad.join("\n  - ")
    );

    // The report against the capture it was built from.
    let capture =
        fs::read_to_string(&s.capture).unwrap_or_else(|e| panic!("{}: {e}", s.capture.display()));
    let digest = expect::CaptureDigest::from_capture(&capture);
    let v = expect::check_capture(&r, &digest);
    assert_passes(&v, &format!("report vs capture {}", s.capture.display()));
}

/// `cfstrace doctor --attach-cycles 20`: attach and detach 20 times, nothing left behind, and
/// what it attaches agrees with the storm's report. Runs after the storm (never beside a
/// recording tracer, whose objects the leak count would see).
#[test]
fn doctor_attach_cycles_leave_nothing_behind() {
    cfstrace_tests::require_root("the host test");
    let s = storm();
    let dir = scratch!("cfstrace-hosttest-doctor");
    let cycles = ATTACH_CYCLES.to_string();
    let run = run_with_timeout(
        &cfstrace_bin(),
        &["doctor", "--attach-cycles", &cycles],
        &dir,
        Duration::from_secs(240),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let d = Doctor::parse(&run.stdout);
    let report = serde_json::from_str::<Value>(&s.report.stdout).ok();
    let bad = d.check(
        run.status.code().unwrap_or(-1).into(),
        ATTACH_CYCLES,
        report.as_ref(),
    );
    assert!(
        bad.is_empty(),
        "doctor:\n  - {}\n{}",
        bad.join("\n  - "),
        run.describe()
    );
}

#[test]
fn report_survives_a_truncated_last_line() {
    let (s, _) = recorded();
    let data = fs::read(&s.capture).unwrap_or_else(|e| panic!("{}: {e}", s.capture.display()));
    assert!(data.len() > 5, "capture is only {} bytes", data.len());
    let truncated = s.dir.join("truncated.jsonl");
    fs::write(&truncated, &data[..data.len() - 5]).unwrap();

    let run = run_with_timeout(
        &cfstrace_bin(),
        &["report", truncated.to_str().unwrap(), "--json"],
        &s.dir,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        run.status.success(),
        "a truncated last line must not be fatal: {}",
        run.describe()
    );
    let r = stdout_json(&run);
    assert_eq!(at(&r, "/schema"), "cfstrace.report/1");
    // One warning saying what was recovered and that the cut last line was skipped.
    let said = format!("{}\n{}", run.stdout, run.stderr).to_ascii_lowercase();
    assert!(
        said.contains("recovered the header") && said.contains("skipped its cut last line"),
        "no warning about the truncated line: {}",
        run.describe()
    );
}

#[test]
fn report_of_a_missing_file_names_it() {
    let dir = scratch!("cfstrace-hosttest-missing");
    let run = run_with_timeout(
        &cfstrace_bin(),
        &["report", "/nonexistent", "--json"],
        &dir,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        !run.status.success(),
        "report of /nonexistent succeeded: {}",
        run.describe()
    );
    assert!(
        run.stderr.contains("/nonexistent") || run.stdout.contains("/nonexistent"),
        "the error does not name the file: {}",
        run.describe()
    );
}
