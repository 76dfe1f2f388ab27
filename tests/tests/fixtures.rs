//! Captures kept as fixtures, and the `report --json` each gave when it was kept: the report of a
//! capture must not change unless a change means it to (then regenerate the expected reports
//! with `CFSTRACE_BLESS=1 cargo test -p cfstrace-tests --test fixtures` and say why in the commit).
//!
//! The fixtures are real captures: the host's demo storm (6.18, tracepoints), the same storm with
//! the reader stopped for a second (events lost, the kernel's sums in `unsent_periods`), a capture
//! written by an older cfstrace (stop 7: the older fields load), and Debian kernels under qemu
//! (`cargo xtask vm --save-captures`: 6.1 with fentry counters, 6.12 with async unthrottle).
//! Needs no root: it only reads files.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    cfstrace_tests::workspace_root().join("tests/fixtures")
}

/// `cfstrace report FILE --json`, its stdout.
fn report_json(capture: &Path) -> String {
    let out = Command::new(cfstrace_tests::cfstrace_bin())
        .arg("report")
        .arg(capture)
        .arg("--json")
        .output()
        .unwrap_or_else(|e| panic!("running cfstrace report: {e}"));
    assert!(
        out.status.success(),
        "cfstrace report {} failed: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the report is UTF-8")
}

#[test]
fn reports_of_kept_captures_are_unchanged() {
    let bless = std::env::var_os("CFSTRACE_BLESS").is_some();
    let mut captures: Vec<PathBuf> = fs::read_dir(fixtures())
        .expect("tests/fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    captures.sort();
    assert!(
        captures.len() >= 4,
        "expected the host and VM fixtures in tests/fixtures, found {captures:?}"
    );
    let mut changed = Vec::new();
    for cap in &captures {
        let got = report_json(cap);
        let want_path = cap.with_extension("report.json");
        if bless {
            fs::write(&want_path, &got).expect("writing the expected report");
            continue;
        }
        let want = fs::read_to_string(&want_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (generate it with CFSTRACE_BLESS=1)",
                want_path.display()
            )
        });
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            changed.push(format!(
                "{}: first difference at line {}:\n  now:    {}\n  before: {}",
                cap.display(),
                line + 1,
                got.lines().nth(line).unwrap_or("(end)"),
                want.lines().nth(line).unwrap_or("(end)")
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "the report of a kept capture changed:\n{}",
        changed.join("\n")
    );
}

/// The same capture gives the same report twice: nothing in it depends on hash order or time.
#[test]
fn a_report_is_deterministic() {
    let cap = fixtures().join("host-6.18-demo.jsonl");
    assert_eq!(report_json(&cap), report_json(&cap));
}
