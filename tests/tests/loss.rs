//! Exact loss accounting. A storm of throttled cgroups at a 2 ms period is recorded twice, the
//! recorder stopped (SIGSTOP) for 0.4 s mid-run each time, as a reader starved by the storm it
//! watches would be: with `--ring-buffer 4K` the kernel loses events, and then every figure
//! must agree exactly with the kernel's own counters; with the default ring buffer the same
//! stall loses nothing.
//!
//! With `--probes period_timer,irq_span` every event the kernel sends is one the kernel also
//! counts on its own side (period-timer callbacks in each CPU's `cpu_totals.timers` and each
//! cgroup's `unsent_periods`, timer-interrupt spans in `cpu_totals.spans`), so the losses can
//! be checked exactly:
//! - callbacks: period lines + callbacks summed as unsent + `unsent_full` == the kernel's callbacks;
//! - events: `ringbuf_full` == callbacks not sent + spans not sent;
//! - the end line's and the report's `lost` == the last loss line's `ringbuf_full`, and the
//!   report (JSON `events.partial`, its first warning, the table's PARTIAL line) says its
//!   figures are partial, counting N events lost.
//!
//! Each recording is 2 s. Needs root (BPF, cgroups). Never skips.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cfstrace_tests::{cfstrace_bin, run_with_timeout, stdout_json, test_cgroups};
use serde_json::Value;

/// What a capture says, summed the way the kernel counts.
#[derive(Debug)]
struct Tally {
    /// Period and irq_span lines.
    periods: u64,
    spans: u64,
    /// The last `unsent_periods` line of each cgroup, summed.
    unsent: u64,
    /// The last `cpu_totals` line of each CPU, summed.
    kernel_timers: u64,
    kernel_spans: u64,
    /// The last loss line and the end line.
    loss: Value,
    end: Value,
}

fn tally(cap: &Path) -> Tally {
    let text = fs::read_to_string(cap).unwrap_or_else(|e| panic!("{}: {e}", cap.display()));
    let (mut periods, mut spans) = (0, 0);
    let mut unsent = BTreeMap::new();
    let mut cpus = BTreeMap::new();
    let (mut loss, mut end) = (Value::Null, Value::Null);
    for l in text.lines().skip(1) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        match v["kind"].as_str() {
            Some("period") => periods += 1,
            Some("irq_span") => spans += 1,
            Some("unsent_periods") => {
                unsent.insert(n("id"), n("periods"));
            }
            Some("cpu_totals") => {
                cpus.insert(n("cpu"), (n("timers"), n("spans")));
            }
            Some("loss") => loss = v,
            Some("end") => end = v,
            _ => {}
        }
    }
    assert_eq!(end["kind"], "end", "{}: no end line", cap.display());
    assert!(!cpus.is_empty(), "{}: no cpu_totals line", cap.display());
    Tally {
        periods,
        spans,
        unsent: unsent.values().sum(),
        kernel_timers: cpus.values().map(|c| c.0).sum(),
        kernel_spans: cpus.values().map(|c| c.1).sum(),
        loss,
        end,
    }
}

/// `cfstrace record -d 2s --probes period_timer,irq_span -o <dir>/<name> EXTRA...`, stopped
/// for 0.4 s half a second after its header is written.
fn record_with_a_stall(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let cap = dir.join(name);
    let mut child = Command::new(cfstrace_bin())
        .args([
            "record",
            "-q",
            "-d",
            "2s",
            "--probes",
            "period_timer,irq_span",
            "-o",
        ])
        .arg(&cap)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cfstrace record");
    let start = Instant::now();
    while !fs::read_to_string(&cap).is_ok_and(|t| t.contains('\n')) {
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("{name}: cfstrace never wrote the capture's header");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(400));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cap
}

/// `cfstrace report CAP --json` and the table.
fn reports(dir: &Path, cap: &Path) -> (Value, String) {
    let cap = cap.to_str().expect("UTF-8 path");
    let run = |args: &[&str]| {
        let r = run_with_timeout(&cfstrace_bin(), args, dir, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.status.success(), "{}", r.describe());
        r
    };
    let json = stdout_json(&run(&["report", cap, "--json"]));
    (json, run(&["report", cap]).stdout)
}

/// What must hold with or without losses: the kernel's callbacks are exactly those in the
/// capture plus those it summed as lost, its spans those in the capture plus the lost ones,
/// and `lost` everywhere is the kernel's `ringbuf_full`.
fn assert_exact(name: &str, t: &Tally, rep: &Value) {
    let ringbuf_full = t.loss["ringbuf_full"].as_u64().expect("ringbuf_full");
    let unsent_full = t.loss["unsent_full"].as_u64().expect("unsent_full");
    assert_eq!(
        t.periods + t.unsent + unsent_full,
        t.kernel_timers,
        "{name}: period lines + unsent callbacks != the kernel's callbacks: {t:?}"
    );
    assert!(t.spans <= t.kernel_spans, "{name}: {t:?}");
    assert_eq!(
        ringbuf_full,
        (t.kernel_timers - t.periods) + (t.kernel_spans - t.spans),
        "{name}: ringbuf_full != callbacks + spans not sent: {t:?}"
    );
    assert_eq!(t.end["lost"], ringbuf_full, "{name}: end line: {t:?}");
    let e = &rep["events"];
    assert_eq!(e["lost"], ringbuf_full, "{name}: report: {e}");
    assert_eq!(e["ringbuf_full"], ringbuf_full, "{name}: report: {e}");
    assert_eq!(e["periods"], t.periods, "{name}: report: {e}");
    assert_eq!(e["periods_unsent"], t.unsent, "{name}: report: {e}");
    assert_eq!(e["irq_spans"], t.spans, "{name}: report: {e}");
    // Each cgroup's callbacks include its unsent ones: together, every callback.
    let per_cgroup: u64 = rep["cgroups"]
        .as_array()
        .expect("cgroups")
        .iter()
        .map(|c| c["periods"].as_u64().expect("periods"))
        .sum();
    assert_eq!(per_cgroup + unsent_full, t.kernel_timers, "{name}");
}

#[test]
fn a_small_ring_loses_events_counted_exactly_and_the_default_loses_none() {
    // 4 cgroups at a 2 ms period, half of it as quota, one busy loop each: throttled every
    // period, about 2,000 callbacks a second.
    let mut tree = test_cgroups("loss");
    for i in 0..4 {
        let cg = tree.add(&format!("cg{i}"), 2_000, 1_000).expect("a cgroup");
        tree.busy(&cg, 1).expect("a busy loop");
    }
    std::thread::sleep(Duration::from_millis(300));
    let dir = cfstrace_tests::scratch!("loss");

    let small = record_with_a_stall(&dir, "small.jsonl", &["--ring-buffer", "4K"]);
    let t = tally(&small);
    let (rep, text) = reports(&dir, &small);
    let lost = t.loss["ringbuf_full"].as_u64().expect("ringbuf_full");
    eprintln!("4K ring: {t:?}");
    assert!(lost > 0, "a 4K ring stalled for 0.4 s lost nothing: {t:?}");
    assert!(t.unsent > 0, "no lost callback summed by the kernel: {t:?}");
    assert_exact("4K ring", &t, &rep);
    assert_eq!(rep["events"]["partial"], true, "{}", rep["events"]);
    let first = rep["warnings"][0].as_str().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "partial figures: {lost} event(s) lost (the ring buffer was full"
        )) && first.contains("a lower bound"),
        "{first}"
    );
    assert!(
        text.contains(&format!(
            "PARTIAL: {lost} event(s) lost (ring buffer full): figures counted from events are a \
             lower bound"
        )),
        "{text}"
    );

    let default = record_with_a_stall(&dir, "default.jsonl", &[]);
    let t = tally(&default);
    let (rep, text) = reports(&dir, &default);
    eprintln!("default ring: {t:?}");
    assert_eq!(
        t.loss["ringbuf_full"], 0,
        "the default ring lost events: {t:?}"
    );
    assert!(t.periods > 500, "a weak storm: {t:?}");
    assert_exact("default ring", &t, &rep);
    assert_eq!(rep["events"]["partial"], false, "{}", rep["events"]);
    assert!(!text.contains("PARTIAL"), "{text}");
}
