//! Stop signals during `cfstrace record`: SIGINT, SIGTERM and SIGHUP end the recording, without
//! CMD (exit 0) and with `-- CMD` (forwarded to CMD, whose death by it is the exit status,
//! 128+N), with the capture's end line (`reason` `interrupted`) written, then the capture
//! fsync'd before cfstrace exits — seen from outside, under strace: the capture's last write
//! comes before an fsync of it. SIGKILL leaves a capture without an end line: `report` reads it
//! up to its last complete line, counts every one of them, and says so in one warning.
//!
//! Each run records at most ~2 s. Needs root (BPF) and strace. Never skips.

use std::fs;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cfstrace_tests::{cfstrace_bin, is_root, run_with_timeout, stdout_json, test_cgroups};
use serde_json::Value;

/// How long after the capture's header (the probes attached) the signal is sent: past the
/// first 1 s flush.
const SIGNAL_AFTER: Duration = Duration::from_millis(1500);
/// A stop signal ends the recording within this (the settle, the last drain and names, fsync).
const PROMPT: Duration = Duration::from_secs(5);

/// `cfstrace record -d 30s -o <dir>/c.jsonl [-- CMD]` under strace (the capture's writes and
/// fsyncs, paths shown), signalled with `sig` 1.5 s after its header is written. Returns the
/// exit status (strace's is its child's), the time from the signal to the exit, the capture,
/// strace's log and cfstrace's stderr.
struct Signalled {
    status: ExitStatus,
    took: Duration,
    cap: PathBuf,
    trace: String,
    stderr: String,
}

fn record_and_signal(dir: &Path, sig: i32, cmd: &[&str]) -> Signalled {
    assert!(is_root(), "this test needs root (BPF); it never skips");
    let cap = dir.join("c.jsonl");
    let trace = dir.join("strace.txt");
    let err = dir.join("stderr.txt");
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-s",
            "0",
            "-e",
            "trace=write,fsync,fdatasync",
            "-o",
        ])
        .arg(&trace)
        .arg(cfstrace_bin())
        .args(["record", "-d", "30s", "-o"])
        .arg(&cap)
        .args(if cmd.is_empty() {
            vec![]
        } else {
            [&["--"], cmd].concat()
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("strace (it must be installed; `cargo xtask setup`): {e}"));
    let pid = traced_pid(&mut child);
    wait_for_header(&cap, &mut child);
    std::thread::sleep(SIGNAL_AFTER);
    // SAFETY: kill(2) on the process strace started for us.
    unsafe { libc::kill(pid, sig) };
    let sent = Instant::now();
    let status = wait_limited(&mut child, Duration::from_secs(30));
    Signalled {
        status,
        took: sent.elapsed(),
        cap,
        trace: fs::read_to_string(&trace).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// The pid of the cfstrace strace runs: its child once that has exec'd cfstrace (strace forks
/// short-lived children of its own first, to probe what ptrace offers).
fn traced_pid(strace: &mut Child) -> i32 {
    let file = format!("/proc/{0}/task/{0}/children", strace.id());
    let bin = cfstrace_bin().canonicalize().expect("the cfstrace binary");
    let start = Instant::now();
    loop {
        let children = fs::read_to_string(&file).unwrap_or_default();
        let traced = children
            .split_whitespace()
            .find(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == bin));
        if let Some(pid) = traced {
            return pid.parse().expect("a pid");
        }
        if start.elapsed() > Duration::from_secs(10) || strace.try_wait().ok().flatten().is_some() {
            let _ = strace.kill();
            panic!("strace started no cfstrace");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Until the capture's first line is on disk: the probes are attached and recording.
fn wait_for_header(cap: &Path, child: &mut Child) {
    let start = Instant::now();
    while !fs::read_to_string(cap).is_ok_and(|t| t.contains('\n')) {
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("cfstrace never wrote the capture's header");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_limited(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("cfstrace did not stop within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every complete line of a capture, parsed; the header first. A last line without its
/// newline is complete if it parses (cut right before the newline), else it is the cut one.
fn complete_lines(cap: &Path) -> Vec<Value> {
    let text = fs::read_to_string(cap).unwrap_or_else(|e| panic!("{}: {e}", cap.display()));
    text.split_inclusive('\n')
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(v) => Some(v),
            Err(_) if !l.ends_with('\n') => None,
            Err(e) => panic!("bad line {l:?}: {e}"),
        })
        .collect()
}

/// strace's lines about the capture's file descriptor: the last write to it must come before
/// an fsync of it, and nothing be written after.
fn assert_synced_after_last_write(s: &Signalled) {
    let name = s.cap.to_str().expect("UTF-8 path");
    let on_cap: Vec<&str> = s.trace.lines().filter(|l| l.contains(name)).collect();
    let last_write = on_cap.iter().rposition(|l| l.contains(" write("));
    let last_sync = on_cap
        .iter()
        .rposition(|l| l.contains(" fsync(") || l.contains(" fdatasync("));
    match (last_write, last_sync) {
        (Some(w), Some(f)) if f > w => {
            assert!(on_cap[f].ends_with("= 0"), "fsync failed: {}", on_cap[f]);
        }
        _ => panic!(
            "no fsync of the capture after its last write; strace saw:\n{}",
            on_cap.join("\n")
        ),
    }
}

/// The checks every stop signal shares: prompt exit with `status`, the end line last with
/// reason `interrupted` (and CMD's status), the capture fsync'd after it was written.
fn stop_case(name: &str, sig: i32, cmd: &[&str], status: i32) {
    let dir = cfstrace_tests::scratch!(name);
    let s = record_and_signal(&dir, sig, cmd);
    assert_eq!(s.status.code(), Some(status), "{name}: {}", s.stderr);
    assert!(
        s.took < PROMPT,
        "{name}: took {:?} after the signal",
        s.took
    );
    let lines = complete_lines(&s.cap);
    assert_eq!(lines[0]["schema"], "cfstrace.capture/1");
    let end = lines.last().expect("lines");
    assert_eq!(
        end["kind"], "end",
        "{name}: the capture does not end with its end line"
    );
    assert_eq!(end["reason"], "interrupted", "{name}: {end}");
    let cmd_status = if cmd.is_empty() {
        Value::Null
    } else {
        Value::from(status)
    };
    assert_eq!(end["command_status"], cmd_status, "{name}: {end}");
    assert_eq!(
        lines[lines.len() - 2]["kind"],
        "loss",
        "{name}: the loss counters come right before the end line"
    );
    assert_synced_after_last_write(&s);
    eprintln!("{name}: exited {:?} after the signal", s.took);
}

#[test]
fn sigint_ends_the_capture_cleanly() {
    stop_case("signal_int", libc::SIGINT, &[], 0);
}

#[test]
fn sigterm_ends_the_capture_cleanly() {
    stop_case("signal_term", libc::SIGTERM, &[], 0);
}

#[test]
fn sighup_ends_the_capture_cleanly() {
    stop_case("signal_hup", libc::SIGHUP, &[], 0);
}

#[test]
fn sigint_is_forwarded_to_cmd_and_the_capture_ends_cleanly() {
    stop_case(
        "signal_cmd_int",
        libc::SIGINT,
        &["sleep", "30"],
        128 + libc::SIGINT,
    );
}

#[test]
fn sigterm_is_forwarded_to_cmd_and_the_capture_ends_cleanly() {
    stop_case(
        "signal_cmd_term",
        libc::SIGTERM,
        &["sleep", "30"],
        128 + libc::SIGTERM,
    );
}

#[test]
fn sighup_is_forwarded_to_cmd_and_the_capture_ends_cleanly() {
    stop_case(
        "signal_cmd_hup",
        libc::SIGHUP,
        &["sleep", "30"],
        128 + libc::SIGHUP,
    );
}

#[test]
fn sigkill_leaves_a_capture_report_reads_to_its_last_complete_line() {
    // One throttled cgroup, so the cut capture holds period lines to count.
    let mut tree = test_cgroups("signal_kill");
    let cg = tree.add("svc", 10_000, 2_000).expect("a cgroup");
    tree.busy(&cg, 1).expect("a busy process");
    let dir = cfstrace_tests::scratch!("signal_kill");
    let s = record_and_signal(&dir, libc::SIGKILL, &[]);
    assert_eq!(s.status.signal(), Some(libc::SIGKILL), "{}", s.stderr);
    let lines = complete_lines(&s.cap);
    assert!(
        lines.iter().all(|l| l["kind"] != "end"),
        "a SIGKILLed recorder wrote an end line"
    );
    let count = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count() as u64;
    let periods = count("period");
    assert!(periods > 0, "no period line was flushed before the SIGKILL");

    let cap = s.cap.to_str().expect("UTF-8 path");
    let run = run_with_timeout(
        &cfstrace_bin(),
        &["report", cap, "--json"],
        &dir,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(run.status.success(), "{}", run.describe());
    let rep = stdout_json(&run);
    // Every complete line counted, none made up.
    assert_eq!(rep["events"]["periods"], periods, "{}", rep["events"]);
    assert_eq!(
        rep["events"]["irq_spans"],
        count("irq_span"),
        "{}",
        rep["events"]
    );
    let cut: Vec<&str> = rep["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .filter(|w| w.contains("end line"))
        .collect();
    let kept = lines.len() - 1;
    assert_eq!(cut.len(), 1, "one warning about the cut capture: {cut:?}");
    assert!(
        cut[0].starts_with("capture has no end line: the recording was cut short")
            && cut[0].contains(&format!("recovered the header and {kept} complete line(s)")),
        "{}",
        cut[0]
    );
    // The table says it too.
    let text = run_with_timeout(
        &cfstrace_bin(),
        &["report", cap],
        &dir,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(text.status.success(), "{}", text.describe());
    assert!(
        text.stdout.contains("capture has no end line"),
        "{}",
        text.describe()
    );
}
