//! Cgroups named to break things, throttled for real on this host: a quote, a backslash and a
//! tab; an OSC retitle (`ESC ] 0 ; pwned BEL`); a clear screen, a cursor home, a cursor move,
//! a bare CR and a C1 CSI; 255 bytes (NAME_MAX); bytes that are not UTF-8. Each has a quota
//! and a busy loop. Then every output: `report --json` (the real names back, the bytes that
//! are not UTF-8 as `\xNN`), /metrics (parsed by the strict OpenMetrics parser, each name a
//! label value back exactly), and the terminal: `report` and `watch` under a real
//! pseudo-terminal, where each name must show escaped (`\x1b]0;pwned\x07`) and none of its
//! bytes may arrive raw; cfstrace's own escape sequences (colours, the alternate screen, the
//! cursor) are allowed, so the check is against the names' bytes.
//!
//! Needs root (cgroups, BPF) and python3 with prometheus_client. Never skips. Runs a real
//! throttling storm: wrap the run in `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cfstrace_tests::{
    CgroupTree, at, cfstrace_bin, run_in_pty_bytes, run_with_timeout, stdout_json, test_cgroups,
};
use serde_json::Value;

/// One hostile name: its bytes, how JSON and /metrics give it back, how a terminal shows it,
/// and byte sequences of it that must never reach the terminal raw.
struct Name {
    raw: Vec<u8>,
    /// The path's last component as text (JSON, /metrics).
    text: String,
    /// As a terminal shows it.
    shown: String,
    raw_marks: Vec<Vec<u8>>,
}

fn names() -> Vec<Name> {
    let long: String = format!("long-{}", "0123456789".repeat(25));
    assert_eq!(long.len(), 255);
    let name = |raw: &[u8], text: &str, shown: &str, marks: &[&[u8]]| Name {
        raw: raw.to_vec(),
        text: text.to_string(),
        shown: shown.to_string(),
        raw_marks: marks.iter().map(|m| m.to_vec()).collect(),
    };
    vec![
        name(
            b"q\"uo\\te\ttab",
            "q\"uo\\te\ttab",
            "q\"uo\\te\\ttab",
            &[b"te\ttab"],
        ),
        name(
            b"\x1b]0;pwned\x07",
            "\x1b]0;pwned\x07",
            "\\x1b]0;pwned\\x07",
            &[b"\x1b]", b"\x07"],
        ),
        name(
            "cls\x1b[2J\x1b[H\x1b[3A\rX\u{9b}1m".as_bytes(),
            "cls\x1b[2J\x1b[H\x1b[3A\rX\u{9b}1m",
            "cls\\x1b[2J\\x1b[H\\x1b[3A\\rX\\u{9b}1m",
            &[b"cls\x1b", b"\x1b[3A", b"\rX", "\u{9b}".as_bytes()],
        ),
        name(long.as_bytes(), &long, &long, &[]),
        name(
            b"bad\xff\xfe-name",
            "bad\\xff\\xfe-name",
            "bad\\xff\\xfe-name",
            &[b"\xff\xfe"],
        ),
    ]
}

/// A comm and a command line of the same kind, on a busy loop of the first cgroup.
const COMM: &str = "\x1b]2;comm\x07";
const ARG: &str = "arg\x1b[2J\x1b]2;cmd\x07";

/// A child killed and reaped on drop (before the tree removes its cgroup).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Storm {
    _odd: Reaped,
    tree: CgroupTree,
    names: Vec<Name>,
    /// The top's directory name: what `--cgroup` selects.
    top: String,
    dir: cfstrace_tests::Scratch,
}

fn storm() -> Storm {
    let mut tree = test_cgroups("cfstrace-hostile");
    let names = names();
    let mut odd = None;
    for n in &names {
        let d = tree
            .add_path(Path::new(OsStr::from_bytes(&n.raw)), 10_000, 1_000)
            .unwrap_or_else(|e| panic!("{:?}: {e}", n.text));
        if odd.is_some() {
            tree.busy(&d, 1).unwrap();
            continue;
        }
        // `sh -c SCRIPT ARG`: ARG is $0, in /proc/PID/cmdline. Only a process itself may
        // write its comm: the shell's builtin printf does.
        let script = r"printf '\033]2;comm\007' > /proc/$$/comm; while :; do :; done";
        let child = Command::new("sh")
            .args(["-c", script, ARG])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        odd = Some(Reaped(child));
        std::fs::write(d.join("cgroup.procs"), &pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
            != format!("{COMM}\n")
        {
            assert!(
                Instant::now() < deadline,
                "the busy loop did not take its comm"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let top = tree.top.file_name().unwrap().to_str().unwrap().to_string();
    Storm {
        _odd: odd.unwrap(),
        tree,
        names,
        top,
        dir: cfstrace_tests::scratch!("cfstrace-hostile"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The terminal's bytes made readable for a failure message (the tail).
fn visible(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(&out[out.len().saturating_sub(6000)..]);
    s.escape_debug().to_string()
}

/// Every name shown escaped in what the terminal got (whole, or its tip where a column cut
/// it in the middle), and none of its raw marks there.
fn assert_terminal(what: &str, out: &[u8], names: &[Name], whole: bool) {
    for n in names {
        for m in &n.raw_marks {
            assert!(
                find(out, m).is_none(),
                "{what}: the raw bytes {m:?} of {:?} reached the terminal:\n{}",
                n.text,
                visible(out)
            );
        }
        let tip = &n.shown[n.shown.len().saturating_sub(if whole { 400 } else { 12 })..];
        assert!(
            find(out, tip.as_bytes()).is_some(),
            "{what}: {tip:?} (of {:?}) is not on the terminal:\n{}",
            n.text,
            visible(out)
        );
    }
    // Nor of the comm and the command line.
    for m in [b"\x1b]2;".as_slice(), b"\x1b[2Jcmd"] {
        assert!(
            find(out, m).is_none(),
            "{what}: {m:?} raw:\n{}",
            visible(out)
        );
    }
    // Nothing of cfstrace's making retitles a terminal or rings its bell either.
    assert!(find(out, b"\x1b]").is_none() && !out.contains(&0x07));
}

/// The strict OpenMetrics parser's view of a /metrics body: each callback series' `cgroup`.
/// The file is read with `newline=""`: Python's universal newlines would cut a line at the CR
/// a label value may hold raw (OpenMetrics escapes only `\`, `"` and LF).
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(open(sys.argv[1], encoding="utf-8", newline="").read()):
    for s in f.samples:
        if s.name == "cfstrace_callback_seconds_count":
            out.append(s.labels["cgroup"])
print(json.dumps(out))
"#;

fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("/metrics is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn hostile_names_in_every_output() {
    let s = storm();
    let bin = cfstrace_bin();
    let limit = Duration::from_secs(90);
    let path_of = |n: &Name| format!("{}/{}", s.tree.cgroup_path(&s.tree.top), n.text);

    // 1. A capture, and its report as JSON: every name back as it is (serde_json escapes it).
    let cap = s.dir.join("hostile.jsonl");
    let cap = cap.to_str().unwrap();
    let rec = run_with_timeout(&bin, &["record", "-d", "2s", "-o", cap], &s.dir, limit).unwrap();
    assert!(rec.status.success(), "{}", rec.describe());
    let rep = run_with_timeout(&bin, &["report", cap, "--json"], &s.dir, limit).unwrap();
    assert!(rep.status.success(), "{}", rep.describe());
    let report = stdout_json(&rep);
    let cgroups = at(&report, "/cgroups").as_array().expect("cgroups");
    for n in &s.names {
        let want = path_of(n);
        let c = cgroups
            .iter()
            .find(|c| c["path"] == want.as_str())
            .unwrap_or_else(|| panic!("{want:?} is not in the report:\n{}", rep.describe()));
        assert!(c["periods"].as_u64().unwrap() > 0, "{c}");
        // Its quota was read from its own directory, even where the name is not UTF-8.
        assert_eq!(
            (&c["period_us"], &c["quota_us"]),
            (&Value::from(10_000), &Value::from(1_000))
        );
    }

    // The hostile comm and command line, back exactly.
    let first = path_of(&s.names[0]);
    let c = cgroups
        .iter()
        .find(|c| c["path"] == first.as_str())
        .unwrap();
    let procs = c["processes"].as_array().expect("processes");
    assert!(
        procs
            .iter()
            .any(|p| p["comm"] == COMM && p["cmdline"].as_str().is_some_and(|l| l.contains(ARG))),
        "{COMM:?} / {ARG:?} not in {c}"
    );

    // 2. The same report on a terminal: shown escaped, never obeyed.
    let (status, out) = run_in_pty_bytes(&bin, &["report", cap], (400, 100), limit).unwrap();
    std::fs::write(s.dir.join("report.pty"), &out).unwrap();
    assert!(status.success(), "{}", visible(&out));
    assert_terminal("report", &out, &s.names, false);
    let comm = "\\x1b]2;comm\\x07";
    assert!(
        find(&out, comm.as_bytes()).is_some(),
        "the comm is not shown as {comm}:\n{}",
        visible(&out)
    );

    // 3. The live view on a terminal.
    let (status, out) = run_in_pty_bytes(
        &bin,
        &[
            "watch",
            "--interval",
            "1s",
            "--duration",
            "3s",
            "--top",
            "10",
            "--cgroup",
            &s.top,
        ],
        (400, 60),
        limit,
    )
    .unwrap();
    std::fs::write(s.dir.join("watch.pty"), &out).unwrap();
    assert!(status.success(), "{}", visible(&out));
    assert!(
        find(&out, b"\x1b[?1049h").is_some(),
        "the view was not drawn"
    );
    assert_terminal("watch", &out, &s.names, false);

    // 4. /metrics: each name a label value, back exactly through the strict parser.
    let err = s.dir.join("metrics.stderr");
    let mut w = Command::new(&bin)
        .args(["watch", "--prometheus", "127.0.0.1:0", "--interval", "1s"])
        .args(["--duration", "4s", "--cgroup", &s.top])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let e = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(rest) = e.split("serving Prometheus metrics on http://").nth(1) {
            break rest.split("/metrics").next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "not serving:\n{e}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(2500));
    let body = scrape(&addr);
    let _ = w.wait();
    let file = s.dir.join("metrics.txt");
    std::fs::write(&file, &body).unwrap();
    // The system interpreter the apt package installs into, as tests/tests/prometheus.rs.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let py = Command::new(python)
        .args(["-c", PARSE, file.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&py.stderr)
    );
    let labels: Vec<String> = serde_json::from_slice(&py.stdout).unwrap();
    for n in &s.names {
        let want = path_of(n);
        assert!(
            labels.contains(&want),
            "{want:?} is not a cgroup label: {labels:?}\n{body}"
        );
    }
}
