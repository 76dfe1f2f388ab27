//! Nothing panics when stdout is closed: `cfstrace doctor | head -1`,
//! `cfstrace report --json FILE | head -c 100` and `cfstrace report FILE | head` end their
//! output quietly (Rust ignores SIGPIPE, so a write to a closed pipe is EPIPE, on which
//! `println!` panics with status 101), and exit with the status they would have had.
//!
//! Reads kept captures (tests/fixtures); `doctor` attaches and detaches the probes once where
//! it may (as root), and without root still prints its lines and exits 1. No storm.
use std::io::{PipeReader, Read as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use cfstrace_tests::{cfstrace_bin, run_with_timeout, scratch};

fn fixture(name: &str) -> String {
    let p: PathBuf = cfstrace_tests::workspace_root()
        .join("tests/fixtures")
        .join(name);
    p.to_str().expect("a UTF-8 path").to_string()
}

/// How stdout's reader goes away.
#[derive(Clone, Copy, Debug)]
enum Close {
    /// Before the child writes anything: its first write fails.
    AtOnce,
    /// After reading the first bytes, as `head -c 100` does. The pipe holds one page, so an
    /// output longer than that is still being written when the reader goes.
    AfterFirstBytes,
}

/// Run `cfstrace ARGS...` with stdout a pipe closed as `close` says; its status and stderr.
fn run_closed(args: &[&str], close: Close) -> (ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    shrink(&reader);
    let child = Command::new(cfstrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cfstrace");
    match close {
        Close::AtOnce => drop(reader),
        Close::AfterFirstBytes => {
            let mut reader = reader;
            let mut first = [0u8; 100];
            let n = reader.read(&mut first).expect("reading stdout");
            assert!(n > 0, "cfstrace {args:?} printed nothing");
            drop(reader);
        }
    }
    let out = child.wait_with_output().expect("waiting for cfstrace");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One page of pipe buffer (F_SETPIPE_SZ), so a report longer than that cannot be written
/// whole before the reader goes.
fn shrink(reader: &PipeReader) {
    // SAFETY: fcntl on a pipe fd we own; F_SETPIPE_SZ takes an int and only resizes it.
    let r = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        r >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

/// The status of the same command with stdout a file, read to the end.
fn status_when_read(args: &[&str]) -> ExitStatus {
    let dir = scratch!("pipes");
    run_with_timeout(&cfstrace_bin(), args, &dir, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"))
        .status
}

fn assert_quiet_end(args: &[&str], close: Close, want: ExitStatus) {
    let (status, stderr) = run_closed(args, close);
    assert_ne!(
        status.code(),
        Some(101),
        "cfstrace {args:?} ({close:?}) panicked: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "cfstrace {args:?} ({close:?}): {stderr}"
    );
    assert_eq!(
        status, want,
        "cfstrace {args:?} ({close:?}): a closed stdout changed the exit status: {stderr}"
    );
}

#[test]
fn report_json_into_a_closed_pipe() {
    // 42 KB of JSON, ten pages.
    let cap = fixture("host-6.18-lossy.jsonl");
    let args = ["report", "--json", cap.as_str()];
    let want = status_when_read(&args);
    assert!(want.success(), "{want}");
    for close in [Close::AtOnce, Close::AfterFirstBytes] {
        assert_quiet_end(&args, close, want);
    }
}

#[test]
fn report_table_into_a_closed_pipe() {
    // The lossy capture's table is about 5 KB: more than the pipe's page.
    let cap = fixture("host-6.18-lossy.jsonl");
    let args = ["report", cap.as_str()];
    let want = status_when_read(&args);
    for close in [Close::AtOnce, Close::AfterFirstBytes] {
        assert_quiet_end(&args, close, want);
    }
}

#[test]
fn a_gate_still_judges_with_stdout_closed() {
    let cap = fixture("host-6.18-demo.jsonl");
    let args = ["report", "--json", "--fail-under", "99.9999", cap.as_str()];
    let want = status_when_read(&args);
    assert_eq!(want.code(), Some(3), "the demo's headroom is 99.9994 %");
    for close in [Close::AtOnce, Close::AfterFirstBytes] {
        assert_quiet_end(&args, close, want);
    }
}

#[test]
fn doctor_into_a_closed_pipe() {
    // Without root: its lines and exit status 1; as root: the probes' attach too.
    let want = status_when_read(&["doctor"]);
    for close in [Close::AtOnce, Close::AfterFirstBytes] {
        assert_quiet_end(&["doctor"], close, want);
    }
}
