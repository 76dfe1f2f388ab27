//! `cfstrace record -o FILE -- CMD` and `cfstrace repro -- CMD` on this host: the recording
//! stops when CMD exits and cfstrace exits with CMD's status (128+N for signal N); at
//! `--duration` CMD's process group is sent SIGTERM and the status is 124 (as timeout(1)); a
//! command that cannot run is a clear error (status 1) and leaves no capture behind. Every
//! capture ends with an end line saying why it stopped.
//!
//! Needs root (BPF). Never skips. Runs no throttling storm of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cfstrace_tests::{Run, cfstrace_bin, is_root, run_with_timeout};
use serde_json::Value;

/// `cfstrace OPTS... -o CAP -- CMD...`: a run that records to CAP while CMD runs.
fn cmd_args<'a>(opts: &[&'a str], cap: &'a Path, cmd: &[&'a str]) -> Vec<&'a str> {
    let cap = cap.to_str().expect("a UTF-8 capture path");
    [opts, &["-o", cap, "--"], cmd].concat()
}

/// A finished `cfstrace OPTS... -o CAP -- CMD...`: the run, how long it took, and CAP.
struct CmdRun {
    run: Run,
    took: Duration,
    cap: PathBuf,
}

/// Run `cfstrace OPTS... -o <dir>/c.jsonl -- CMD...` (as root, 90 s at most).
fn cfstrace_cmd(dir: &Path, opts: &[&str], cmd: &[&str]) -> CmdRun {
    assert!(is_root(), "this test needs root (BPF); it never skips");
    let cap = dir.join("c.jsonl");
    let start = Instant::now();
    let run = run_with_timeout(
        &cfstrace_bin(),
        &cmd_args(opts, &cap, cmd),
        dir,
        Duration::from_secs(90),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    CmdRun {
        run,
        took: start.elapsed(),
        cap,
    }
}

/// The capture's end line (the last line), checked to be a complete capture.
fn end_line(cap: &Path) -> Value {
    let text = fs::read_to_string(cap).unwrap_or_else(|e| panic!("{}: {e}", cap.display()));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert_eq!(lines[0]["schema"], "cfstrace.capture/1");
    let end = lines.last().expect("lines").clone();
    assert_eq!(end["kind"], "end", "capture does not end with an end line");
    end
}

#[test]
fn record_stops_when_cmd_exits_with_its_status() {
    let dir = cfstrace_tests::scratch!("record_cmd_exit");
    let CmdRun { run, took, cap } = cfstrace_cmd(
        &dir,
        &["record", "-d", "60s"],
        &["sh", "-c", "sleep 2; exit 7"],
    );
    assert_eq!(run.status.code(), Some(7), "{}", run.describe());
    // 2 s of CMD plus attach/detach: well before the 60 s duration.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let end = end_line(&cap);
    assert_eq!(end["reason"], "command_exited", "{end}");
    assert_eq!(end["command_status"], 7, "{end}");
    assert!(
        end["duration_ns"].as_u64().unwrap() >= 1_900_000_000,
        "{end}"
    );
    assert!(
        run.stderr.contains("stopped: command exited"),
        "{}",
        run.describe()
    );
}

#[test]
fn record_cmd_killed_by_a_signal_is_128_plus_n() {
    let dir = cfstrace_tests::scratch!("record_cmd_signal");
    let CmdRun { run, cap, .. } = cfstrace_cmd(&dir, &["record"], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(run.status.code(), Some(143), "{}", run.describe());
    let end = end_line(&cap);
    assert_eq!(end["reason"], "command_exited", "{end}");
    assert_eq!(end["command_status"], 143, "{end}");
}

#[test]
fn duration_stops_cmd_and_exits_124() {
    let dir = cfstrace_tests::scratch!("record_cmd_duration");
    let marker = dir.join("child-still-running");
    // A child of CMD's too: the whole process group is stopped, not only CMD.
    let script = format!(
        "sleep 30 & wait; touch {m}; sleep 30; touch {m}",
        m = marker.display()
    );
    let CmdRun { run, took, cap } = cfstrace_cmd(
        &dir,
        &["record", "--duration", "2s"],
        &["sh", "-c", &script],
    );
    assert_eq!(run.status.code(), Some(124), "{}", run.describe());
    assert!(
        took < Duration::from_secs(15),
        "took {took:?}: CMD not stopped"
    );
    assert!(
        run.stderr.contains("--duration 2s reached") && run.stderr.contains("SIGTERM"),
        "cfstrace does not say what it did to CMD: {}",
        run.describe()
    );
    let end = end_line(&cap);
    assert_eq!(end["reason"], "duration", "{end}");
    assert_eq!(end["command_status"], 143, "CMD died of the SIGTERM: {end}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "CMD went on after the SIGTERM");
    // `sleep 30` under CMD got it too.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &script])
        .output()
        .expect("pgrep");
    assert!(ps.stdout.is_empty(), "CMD still running");
}

#[test]
fn repro_prints_the_report_and_returns_cmd_status() {
    let dir = cfstrace_tests::scratch!("repro_cmd");
    let CmdRun { run, cap, .. } =
        cfstrace_cmd(&dir, &["repro", "--json"], &["sh", "-c", "sleep 1; exit 3"]);
    assert_eq!(run.status.code(), Some(3), "{}", run.describe());
    let rep: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("no JSON report on stdout ({e}): {}", run.describe()));
    assert_eq!(rep["schema"], "cfstrace.report/1");
    assert!(
        run.stderr.contains(cap.to_str().unwrap()),
        "capture not named"
    );
    assert_eq!(end_line(&cap)["command_status"], 3);

    // Without -o: cfstrace-repro-<time>.jsonl in the current directory; a table on stdout.
    let cwd = cfstrace_tests::scratch!("repro_cmd_default");
    let start = Instant::now();
    let run = std::process::Command::new(cfstrace_bin())
        .args(["repro", "--", "true"])
        .current_dir(&cwd)
        .output()
        .expect("cfstrace repro");
    assert!(start.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let made: Vec<String> = fs::read_dir(&cwd)
        .expect("cwd")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        made.len() == 1 && made[0].starts_with("cfstrace-repro-") && made[0].ends_with(".jsonl"),
        "{made:?}"
    );
    assert!(stderr.contains(&made[0]), "capture name not said: {stderr}");
    assert!(!run.stdout.is_empty(), "no report printed");
    end_line(&cwd.join(&made[0]));
}

#[test]
fn missing_command_is_a_clear_error_and_no_capture() {
    let dir = cfstrace_tests::scratch!("record_cmd_missing");
    for sub in ["record", "repro"] {
        let CmdRun { run, cap, .. } =
            cfstrace_cmd(&dir, &[sub], &["no-such-command-cfstrace", "x"]);
        assert_eq!(run.status.code(), Some(1), "{}", run.describe());
        assert!(
            run.stderr.contains("no-such-command-cfstrace") && run.stderr.contains("not found"),
            "{}",
            run.describe()
        );
        assert!(!cap.exists(), "{sub}: a capture was left behind");
    }
}

#[test]
fn ctrl_c_is_forwarded_to_cmd_and_the_capture_ends_cleanly() {
    assert!(is_root(), "this test needs root (BPF); it never skips");
    let dir = cfstrace_tests::scratch!("record_cmd_sigint");
    let cap = dir.join("c.jsonl");
    let ready = dir.join("ready");
    // CMD says when its trap is set; on SIGINT it exits 5.
    let script = format!(
        "trap 'exit 5' INT; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let mut child = std::process::Command::new(cfstrace_bin())
        .args(cmd_args(&["record"], &cap, &["sh", "-c", &script]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cfstrace record");
    let start = Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "CMD never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cfstrace did not stop after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("forwarded SIGINT to CMD"), "{stderr}");
    let end = end_line(&cap);
    assert_eq!(end["reason"], "interrupted", "{end}");
    assert_eq!(end["command_status"], 5, "{end}");
}
