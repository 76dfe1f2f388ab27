//! `--fail-under` on kept captures: the verdict's exit status (3 below, 4 when it cannot be
//! judged, never 0 on a capture that saw nothing), the report's `gate` object saying what was
//! judged and how, and `--help` documenting the status. Reads files only: no root, no storm.
use std::fs;
use std::path::Path;
use std::time::Duration;

use cfstrace_tests::{Run, at, cfstrace_bin, run_with_timeout, scratch, stdout_json};
use serde_json::Value;

fn report(dir: &Path, cap: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["report", cap.to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    run_with_timeout(&cfstrace_bin(), &args, dir, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn demo() -> std::path::PathBuf {
    cfstrace_tests::workspace_root().join("tests/fixtures/host-6.18-demo.jsonl")
}

/// The demo capture cut to its header and an end line that saw nothing: a capture from a
/// node whose cgroups never throttled (or a wrong node).
fn empty_capture(dir: &Path) -> std::path::PathBuf {
    let text = fs::read_to_string(demo()).expect("the demo fixture");
    let header = text.lines().next().expect("a header");
    let mut end: Value = serde_json::from_str(text.lines().last().expect("an end line")).unwrap();
    assert_eq!(end["kind"], "end");
    for k in [
        "periods",
        "lost",
        "async_unthrottle",
        "irq_spans",
        "kmsg_period_scaling",
    ] {
        end[k] = 0.into();
    }
    let p = dir.join("empty.jsonl");
    fs::write(&p, format!("{header}\n{end}\n")).unwrap();
    p
}

#[test]
fn a_gate_that_cannot_judge_does_not_pass() {
    let dir = scratch!("gate-empty");
    let cap = empty_capture(&dir);
    // No gate asked: a report of nothing is fine.
    let run = report(&dir, &cap, &["--json"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    assert_eq!(at(&stdout_json(&run), "/gate"), &Value::Null);
    // A gate asked: its own status, said on stderr and in the JSON.
    let run = report(&dir, &cap, &["--fail-under", "50"]);
    assert_eq!(run.status.code(), Some(4), "{}", run.describe());
    assert!(
        run.stderr
            .contains("headroom gate NOT JUDGED: no period-timer callback was seen"),
        "{}",
        run.describe()
    );
    let run = report(&dir, &cap, &["--json", "--fail-under", "50"]);
    assert_eq!(run.status.code(), Some(4), "{}", run.describe());
    let g = at(&stdout_json(&run), "/gate").clone();
    assert_eq!(g["verdict"], "not_judged", "{g}");
    assert_eq!(g["fail_under_pct"].as_f64(), Some(50.0), "{g}");
    assert!(g["headroom_pct"].is_null(), "{g}");
    // Watchdog off (thresh 0): nothing to judge against either.
    let text = fs::read_to_string(demo()).unwrap();
    let off = text.replacen("\"thresh_s\":10", "\"thresh_s\":0", 1);
    assert_ne!(off, text);
    let cap = dir.join("off.jsonl");
    fs::write(&cap, off).unwrap();
    let run = report(&dir, &cap, &["--json", "--fail-under", "50"]);
    assert_eq!(run.status.code(), Some(4), "{}", run.describe());
    let why = at(&stdout_json(&run), "/gate/why")
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains("watchdog_thresh unknown or 0"), "{why}");
}

#[test]
fn the_json_records_the_gate() {
    let dir = scratch!("gate-json");
    // The demo's worst span leaves 99.999396 % of watchdog_thresh.
    let run = report(&dir, &demo(), &["--json", "--fail-under", "99.9999"]);
    assert_eq!(run.status.code(), Some(3), "{}", run.describe());
    let r = stdout_json(&run);
    let g = at(&r, "/gate");
    assert_eq!(g["verdict"], "fail", "{g}");
    assert_eq!(g["fail_under_pct"].as_f64(), Some(99.9999), "{g}");
    assert_eq!(g["headroom_pct"].as_f64(), Some(99.999396), "{g}");
    // What was judged is the report's own headroom, not a copy of it.
    assert!(
        g.get("headroom_ns").is_none() && g.get("basis").is_none(),
        "{g}"
    );
    let why = g["why"].as_str().expect("why");
    assert!(why.ends_with("is below 99.9999%"), "{why}");
    assert!(
        run.stderr.contains(&format!("headroom gate FAIL: {why}")),
        "{}",
        run.describe()
    );
    // The highlight is its own threshold, untouched by the gate.
    assert_eq!(at(&r, "/headroom_alert/under_pct").as_f64(), Some(10.0));
    // Passing: recorded too, and status 0.
    let run = report(&dir, &demo(), &["--json", "--fail-under", "50"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.describe());
    assert_eq!(at(&stdout_json(&run), "/gate/verdict"), "pass");
    // The table says it on stderr only; stdout is the usual table.
    let run = report(&dir, &demo(), &["--fail-under", "99.9999"]);
    assert_eq!(run.status.code(), Some(3), "{}", run.describe());
    let said = &run.stderr;
    assert!(said.contains("headroom gate FAIL"), "{said}");
}

#[test]
fn help_documents_the_statuses() {
    let dir = scratch!("gate-help");
    for args in [
        &["--help"][..],
        &["report", "--help"],
        &["record", "--help"],
        &["repro", "--help"],
    ] {
        let run = run_with_timeout(&cfstrace_bin(), args, &dir, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(run.status.success(), "{}", run.describe());
        assert!(
            run.stdout.contains("4 --fail-under could not judge")
                || run.stdout.contains("4    --fail-under could not judge"),
            "{args:?}: {}",
            run.stdout
        );
    }
}
