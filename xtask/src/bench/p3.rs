//! P3, reader throughput: the tracer's `reader_bench` example (decode -> aggregate -> capture
//! write from an in-memory buffer of raw kernel records, one core), then `cfstrace report
//! --json` over the capture it generated.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::report::Table;
use super::stats::{Spread, rate};
use super::{Line, Measured, Plan, host, proc};
use crate::cmd;

/// `cargo build --release -p tracer --example reader_bench`; its path.
pub fn build_example() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "tracer",
        "--example",
        "reader_bench",
    ]))?;
    let bin = cmd::target_dir()
        .join("release")
        .join("examples")
        .join("reader_bench");
    if !bin.is_file() {
        bail!("cargo built the example but {} is missing", bin.display());
    }
    Ok(bin)
}

fn spread_of(v: &Value, key: &str) -> Spread {
    Spread(
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
    )
}

pub fn run(cfstrace: &Path, plan: &Plan) -> Result<Measured> {
    let example = build_example()?;
    let cap = host::scratch()?.join("p3-report.jsonl");
    let mut c = Command::new(&example);
    c.args([
        "--events",
        &plan.p3_events.to_string(),
        "--reps",
        "5",
        "--lines",
    ])
    .arg(plan.p3_lines.to_string())
    .arg("--capture")
    .arg(&cap);
    println!("+ {}", cmd::display(&c));
    let out = cmd::output(&mut c)?;
    let v: Value = serde_json::from_str(out.trim()).context("reader_bench printed no JSON")?;
    proc::check()?;
    let lines = v
        .pointer("/capture/lines")
        .and_then(Value::as_u64)
        .context("reader_bench wrote no capture")?;
    let mut report = Spread::default();
    for _ in 0..3 {
        let t = Instant::now();
        let status = Command::new(cfstrace)
            .arg("report")
            .arg(&cap)
            .arg("--json")
            .stdout(Stdio::null())
            .status()
            .context("running cfstrace report")?;
        if !status.success() {
            bail!("cfstrace report {} failed: {status}", cap.display());
        }
        report.push(lines as f64 / t.elapsed().as_secs_f64());
        proc::check()?;
    }
    let bytes = fs::metadata(&cap).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&cap);
    Ok(measured(&v, &report, lines, bytes))
}

fn measured(v: &Value, report: &Spread, lines: u64, bytes: u64) -> Measured {
    let events = v.get("events").and_then(Value::as_u64).unwrap_or(0);
    let stages = [
        (
            "decode -> aggregate (watch's path)",
            "decode_aggregate_eps",
            Some(5e6),
        ),
        (
            "decode -> capture write (record's path)",
            "decode_write_eps",
            None,
        ),
        (
            "decode -> aggregate -> capture write",
            "decode_aggregate_write_eps",
            None,
        ),
    ];
    let mut t = Table::new(&["stage", "events/s", "goal"]);
    let mut out = Vec::new();
    for (what, key, goal) in stages {
        let s = spread_of(v, key);
        let shown = s.show(rate, "passes");
        t.row(vec![
            what.into(),
            shown.clone(),
            goal.map_or("-".into(), |g| format!(">= {}", rate(g))),
        ]);
        out.push(Line {
            what: format!("reader: {what}"),
            value: shown,
            goal: goal.map_or("-".into(), |g| format!(">= {} on one core", rate(g))),
            met: goal.map(|g| s.median() >= g),
        });
    }
    let shown = report.show(rate, "runs");
    t.row(vec![
        format!(
            "`cfstrace report --json` ({lines} lines, {} MB)",
            bytes / 1_000_000
        ),
        format!("{shown} (lines)"),
        ">= 2 M/s".into(),
    ]);
    out.push(Line {
        what: "report --json over a generated capture".into(),
        value: format!("{shown} lines"),
        goal: ">= 2 M lines/s".into(),
        met: Some(report.median() >= 2e6),
    });
    let body = format!(
        "{events} raw records ({} period-timer callbacks of {} cgroups on 48 CPUs, the rest \
         timer-interrupt spans) per pass, 5 passes; `report` 3 runs.\n\n{}",
        v.get("period_records").and_then(Value::as_u64).unwrap_or(0),
        v.get("cgroups").and_then(Value::as_u64).unwrap_or(0),
        t.markdown()
    );
    Measured { lines: out, body }
}

pub const METHOD: &str = "`tracer/examples/reader_bench.rs` (run as `cargo run --release -p \
    tracer --example reader_bench`): raw records built from the `tracer_ebpf` types the \
    programs submit (`PeriodEventNarrow` heads with a one-word CPU bitmap, `IrqSpanEvent`), \
    laid out in one buffer, then per record `cfstrace::session::decode::decode`, the session's per-event \
    bookkeeping (cgroups seen, periods seen; a naming line before a cgroup's first record, built \
    up front: the namer's filesystem reads are not timed), the `CaptureLine`, and \
    `Aggregator::feed` and/or `CaptureWriter::write_line` into `io::sink()`. One thread; \
    events/s per pass over the buffer, each pass with a fresh aggregator and writer. The \
    callbacks unthrottle 0-47 cfs_rqs on a run of CPUs each. An example rather than an xtask \
    binary because xtask cannot link the tracer library (building it builds the eBPF object). \
    `report`: the same example writes a capture of >= 1 M period lines (plus their irq_span, \
    cgroup, loss and end lines) with the `CaptureWriter`, so it is byte-identical to what \
    `record` writes; `cfstrace report FILE --json > /dev/null` is timed end to end (lines / \
    wall time).";
