//! P4 on the host (peak RSS of an idle `record`) and P5, time to answer on the host storm:
//! exec to armed probes, and exec to the first `watch --json` frame naming the culprit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::proc::{self, Guarded};
use super::report::Table;
use super::stats::{Spread, ns};
use super::{Line, Measured, Plan, host};

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// Peak RSS (VmHWM) of `record --duration D` on an idle host, read until it exits.
pub fn idle_rss(bin: &Path, plan: &Plan) -> Result<Measured> {
    let dir = host::scratch()?;
    let mut peaks = Spread::default();
    for i in 0..plan.p4_idle_runs {
        let out = dir.join(format!("p4-idle-{i}.jsonl"));
        let secs = format!("{}s", plan.p4_idle.as_secs());
        let (mut g, _) =
            host::start_record(bin, &out, &["--duration", &secs], &dir.join("p4-idle.log"))?;
        let mut peak = 0;
        let pid = g.pid();
        while g.try_wait()?.is_none() {
            if let Some(h) = proc::vm_hwm(pid) {
                peak = peak.max(h);
            }
            proc::sleep(Duration::from_millis(20))?;
        }
        if peak == 0 {
            bail!("could not read VmHWM of cfstrace record (pid {pid})");
        }
        peaks.push(peak as f64);
    }
    let shown = peaks.show(mb, "runs");
    Ok(Measured {
        lines: vec![Line {
            what: "host: peak RSS of an idle `record`".into(),
            value: shown.clone(),
            goal: "< 64 MB (59 MB before issue 9)".into(),
            met: Some(peaks.max() < 64e6),
        }],
        body: format!(
            "Host, no storm: `cfstrace record --duration {}s`, {} runs: peak RSS {shown}.",
            plan.p4_idle.as_secs(),
            peaks.len()
        ),
    })
}

pub const IDLE_METHOD: &str = "`VmHWM` from `/proc/<pid>/status` of `cfstrace record`, read \
    every 20 ms until it exits (VmHWM only grows, so the last reading is the peak).";

/// Exec -> header line of `record` (written once every probe is attached), `reps` times.
fn attach_times(bin: &Path, reps: usize) -> Result<Spread> {
    let dir = host::scratch()?;
    let mut s = Spread::default();
    for _ in 0..reps {
        let out = dir.join("p5-attach.jsonl");
        let (g, t) = host::start_record(bin, &out, &[], &dir.join("p5-record.log"))?;
        s.push(t.as_nanos() as f64);
        g.stop(Duration::from_secs(10))?;
    }
    Ok(s)
}

/// Exec -> first `watch --json` interval line whose culprit's path is `culprit` (and the first
/// interval line at all).
fn culprit_time(bin: &Path, culprit: &str) -> Result<(Duration, Duration)> {
    let mut c = Command::new(bin);
    c.args(["watch", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut g = Guarded::spawn(&mut c, "cfstrace watch", libc::SIGINT, libc::SIGTERM)?;
    let stdout = g.stdout().context("watch's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((start.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    let mut first = None;
    let mut last_named = String::from("none");
    let limit = Duration::from_secs(30);
    loop {
        proc::check()?;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((t, line)) => {
                let v: Value = serde_json::from_str(&line).context("watch --json: not JSON")?;
                // The start and figures lines come at once; a frame is an interval line.
                if v["kind"] != "interval" {
                    continue;
                }
                first.get_or_insert(t);
                // The storm makes its culprit by the count of its callbacks (6.18's throttle
                // costs the same whatever a cgroup holds), so it is the busiest by total; the
                // headroom culprit is whichever timer the node's noisiest interrupt ran. Either
                // naming it answers.
                let named = v.pointer("/culprit/path").and_then(Value::as_str);
                let busiest = v
                    .pointer("/culprit/busiest_by_total/path")
                    .and_then(Value::as_str)
                    .or(named);
                if named == Some(culprit) || busiest == Some(culprit) {
                    g.stop(Duration::from_secs(10))?;
                    return Ok((first.unwrap_or(t), t));
                }
                last_named = named.unwrap_or("none").to_string();
            }
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < limit => {}
            Err(_) => bail!(
                "no `watch --json` frame named {culprit} within {}s (the last named {last_named})",
                limit.as_secs()
            ),
        }
    }
}

pub fn time_to_answer(bin: &Path, culprit: &str, plan: &Plan) -> Result<Measured> {
    let attach = attach_times(bin, plan.p5_reps)?;
    let (mut first, mut named) = (Spread::default(), Spread::default());
    for _ in 0..plan.p5_reps {
        let (f, n) = culprit_time(bin, culprit)?;
        first.push(f.as_nanos() as f64);
        named.push(n.as_nanos() as f64);
    }
    let mut t = Table::new(&["from exec to", "time", "goal"]);
    t.row(vec![
        "probes armed (`record` header line)".into(),
        attach.show(ns, "runs"),
        "< 1 s".into(),
    ]);
    t.row(vec![
        "first `watch --json` frame".into(),
        first.show(ns, "runs"),
        "-".into(),
    ]);
    t.row(vec![
        format!("first frame naming `{culprit}`"),
        named.show(ns, "runs"),
        "<= 2 s".into(),
    ]);
    Ok(Measured {
        lines: vec![
            Line {
                what: "host: exec -> probes armed".into(),
                value: attach.show(ns, "runs"),
                goal: "< 1 s".into(),
                met: Some(attach.median() < 1e9),
            },
            Line {
                what: "host: exec -> culprit named (`watch --json`)".into(),
                value: named.show(ns, "runs"),
                goal: "<= 2 s".into(),
                met: Some(named.median() <= 2e9),
            },
        ],
        body: format!(
            "Host storm (see P1), {} runs each; `watch` at its default 1 s interval.\n\n{}",
            plan.p5_reps,
            t.markdown()
        ),
    })
}

pub const P5_METHOD: &str = "Attach: the time from spawning `cfstrace record -o FILE` to the \
    capture's first line, which record writes (and flushes) once every probe is attached. \
    Culprit: the time from spawning `cfstrace watch --json` (default interval, 1 s) to the first \
    interval line that names the storm's culprit cgroup as its `culprit` or, when the node's \
    worst interrupt ran another cgroup's timer, as the culprit's `busiest_by_total`, read from \
    its stdout as it comes. The storm makes its culprit by the count of its callbacks (on 6.18 a \
    callback costs about the same whatever the cgroup holds), so which cgroup's timer lands in \
    the noisiest timer interrupt is chance.";
