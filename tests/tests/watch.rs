//! `cfstrace watch` on this host, during a real throttling storm, in its three outputs: the live
//! view under a pseudo-terminal (the cgroup, block-character histograms, colours unless
//! NO_COLOR, and the terminal given back at the end and on Ctrl-C), plain lines without a
//! terminal, and `--json` (the `cfstrace.watch/1` stream, every line parsed), each ending on a
//! Ctrl-C or a `--duration` inside an interval with that interval marked partial.
//!
//! Needs root (cgroups, BPF). Never skips. Runs a real throttling storm: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cfstrace_tests::{CgroupTree, Run, Scratch, cfstrace_bin, run_with_timeout, test_cgroups};
use serde_json::Value;

/// One storm at a time: the tests of this file run one after the other.
static STORM: Mutex<()> = Mutex::new(());

const ENTER_ALT: &str = "\x1b[?1049h";
const LEAVE_ALT: &str = "\x1b[?1049l";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";
/// The cursor to the top-left corner, as crossterm writes it.
const HOME: &str = "\x1b[1;1H";
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A throttled cgroup `<top>/svc` (2 ms every 10 ms) with two busy loops, one storm at a time;
/// dropping it ends the storm (the loops killed, the cgroups removed).
struct Storm {
    _tree: CgroupTree,
    /// The throttled cgroup, as cfstrace shows it.
    path: String,
    /// The top's directory name: what `--cgroup` selects.
    name: String,
    dir: Scratch,
    _one: MutexGuard<'static, ()>,
}

fn storm(name: &str) -> Storm {
    let one = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = test_cgroups(name);
    let leaf = tree.add("svc", 10_000, 2_000).unwrap();
    tree.busy(&leaf, 2).unwrap();
    let path = tree.cgroup_path(&leaf);
    let top = tree.top.file_name().unwrap().to_str().unwrap().to_string();
    Storm {
        _tree: tree,
        path,
        name: top,
        dir: cfstrace_tests::scratch!(name),
        _one: one,
    }
}

impl Storm {
    /// `cfstrace watch ARGS --cgroup <top>` without a terminal; it must succeed.
    fn watch(&self, args: &[&str]) -> Run {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--cgroup", &self.name]);
        let run = run_with_timeout(&cfstrace_bin(), &all, &self.dir, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(run.status.success(), "{}", run.describe());
        run
    }
}

/// Run `bin args` with stdin, stdout and stderr on a new pseudo-terminal of `cols` x `rows`;
/// optionally send SIGINT after `interrupt`. Returns the status and everything it wrote.
fn run_in_pty(
    bin: &Path,
    args: &[&str],
    no_color: bool,
    interrupt: Option<Duration>,
    limit: Duration,
) -> (ExitStatus, String) {
    run_in_pty_sized(bin, args, no_color, interrupt, limit, (200, 50))
}

/// [`run_in_pty`] on a terminal of `size` (columns, rows).
fn run_in_pty_sized(
    bin: &Path,
    args: &[&str],
    no_color: bool,
    interrupt: Option<Duration>,
    limit: Duration,
    size: (u16, u16),
) -> (ExitStatus, String) {
    let ws = nix::pty::Winsize {
        ws_row: size.1,
        ws_col: size.0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).expect("openpty");
    let (master, slave) = (pty.master, pty.slave);
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let mut child = cmd.spawn().expect("starting cfstrace");
    // The command holds the only copies of the slave now: when it exits, reads end (EIO).
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut f = fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let start = Instant::now();
    let mut interrupted = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(after) = interrupt
            && !interrupted
            && start.elapsed() >= after
        {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            interrupted = true;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`cfstrace {}` did not finish in {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// Escape sequences made readable for assertion messages.
fn visible(s: &str) -> String {
    let tail: String = s
        .chars()
        .rev()
        .take(3000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    tail.replace('\x1b', "<ESC>")
}

/// SGR sequences (`ESC [ ... m`) other than the plain reset.
fn colour_codes(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("\x1b[") {
        let after = &rest[i + 2..];
        let end = after
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let params = &after[..end];
        if after[end..].starts_with('m') && params != "0" && !params.is_empty() {
            out.push(params.to_string());
        }
        rest = &after[end..];
    }
    out
}

fn assert_restored(out: &str) {
    let enter = out
        .rfind(ENTER_ALT)
        .unwrap_or_else(|| panic!("never entered the alternate screen:\n{}", visible(out)));
    let leave = out.rfind(LEAVE_ALT).unwrap_or(0);
    assert!(
        leave > enter,
        "the alternate screen was not left at the end:\n{}",
        visible(out)
    );
    assert!(out.contains(HIDE_CURSOR), "{}", visible(out));
    assert!(
        out.rfind(SHOW_CURSOR).unwrap_or(0) > out.rfind(HIDE_CURSOR).unwrap(),
        "the cursor was not shown again:\n{}",
        visible(out)
    );
}

#[test]
fn live_view_under_a_pseudo_terminal() {
    let s = storm("cfstrace-watch-pty");
    let (bin, path, name) = (cfstrace_bin(), s.path.as_str(), s.name.as_str());

    // Ends by itself (--duration): the view, then the terminal given back.
    let (status, out) = run_in_pty(
        &bin,
        &[
            "watch",
            "--interval",
            "1s",
            "--duration",
            "4s",
            "--cgroup",
            name,
        ],
        false,
        None,
        Duration::from_secs(90),
    );
    assert!(status.success(), "exit {status}:\n{}", visible(&out));
    assert_restored(&out);
    let enter = out.find(ENTER_ALT).unwrap();
    let view = &out[enter..out.rfind(LEAVE_ALT).unwrap()];
    assert!(
        view.contains(path),
        "the cgroup is not in the view:\n{}",
        visible(&out)
    );
    assert!(
        view.chars().any(|c| BLOCKS.contains(&c)),
        "no block characters in the view:\n{}",
        visible(&out)
    );
    for want in [
        "% of watchdog_thresh",
        "worst IRQs-off",
        "CB p50",
        "UNTHR/P",
        "cpu0",
    ] {
        assert!(
            view.contains(want),
            "no {want:?} in the view:\n{}",
            visible(&out)
        );
    }
    assert!(
        !colour_codes(view).is_empty(),
        "a terminal without NO_COLOR gets colours:\n{}",
        visible(&out)
    );
    // Several frames (one an interval), each redrawn from the top (crossterm's `MoveTo(0, 0)`).
    assert!(view.matches(HOME).count() >= 3, "{}", visible(&out));
    // The last frame stays on the normal screen; --duration 4s is whole intervals.
    let after = &out[out.rfind(LEAVE_ALT).unwrap()..];
    assert!(after.contains(path), "{}", visible(&out));
    assert!(!after.contains("partial interval"), "{}", visible(&out));

    // Ctrl-C (SIGINT) and NO_COLOR: ends cleanly, terminal given back, no colour at all.
    let (status, out) = run_in_pty(
        &bin,
        &["watch", "--cgroup", name],
        true,
        Some(Duration::from_millis(3500)),
        Duration::from_secs(90),
    );
    assert!(
        status.success(),
        "exit {status} after Ctrl-C:\n{}",
        visible(&out)
    );
    assert_restored(&out);
    assert!(out.contains(path), "{}", visible(&out));
    // Ctrl-C came inside an interval: the frame kept on screen says it covers only part.
    let kept = &out[out.rfind(LEAVE_ALT).unwrap()..];
    assert!(
        kept.contains("(partial interval: "),
        "the last frame is not marked partial:\n{}",
        visible(&out)
    );
    assert_eq!(
        colour_codes(&out),
        Vec::<String>::new(),
        "NO_COLOR is set:\n{}",
        visible(&out)
    );
}

/// How far past the terminal's edges the emulator reaches: a line drawn too long or too low
/// lands there instead of being wrapped or scrolled out of sight.
const SPILL: u16 = 40;

/// The full-screen view's frames as a terminal of `cols` x `rows` shows them: each frame
/// (from the cursor going home to the next) fed to a vt100 emulator [`SPILL`] larger each
/// way, then its screen as rows of text, spill included.
fn frames_on(out: &str, cols: u16, rows: u16) -> Vec<Vec<String>> {
    let enter = out.find(ENTER_ALT).expect("the alternate screen");
    let leave = out.rfind(LEAVE_ALT).expect("left the alternate screen");
    let view = &out[enter..leave];
    let size = |n: u16| std::num::NonZeroU16::new(n + SPILL).expect("SPILL is not 0");
    let mut parser = vt100::Parser::new(size(rows), size(cols), 0);
    let mut frames = Vec::new();
    let mut starts: Vec<usize> = view.match_indices(HOME).map(|(i, _)| i).collect();
    starts.push(view.len());
    parser.process(&view.as_bytes()[..starts[0]]);
    for w in starts.windows(2) {
        parser.process(&view.as_bytes()[w[0]..w[1]]);
        frames.push(
            parser
                .screen()
                .rows(0, cols + SPILL)
                .collect::<Vec<String>>(),
        );
    }
    frames
}

/// The view on a terminal of `cols` x `rows` during a storm: its frames as the terminal shows
/// them (ended by --duration, the terminal given back).
fn storm_frames(s: &Storm, cols: u16, rows: u16) -> Vec<Vec<String>> {
    let args = [
        "watch",
        "--interval",
        "1s",
        "--duration",
        "4s",
        "--cgroup",
        s.name.as_str(),
    ];
    let (status, out) = run_in_pty_sized(
        &cfstrace_bin(),
        &args,
        true,
        None,
        Duration::from_secs(90),
        (cols, rows),
    );
    assert!(status.success(), "exit {status}:\n{}", visible(&out));
    assert_restored(&out);
    let frames = frames_on(&out, cols, rows);
    assert!(
        frames.len() >= 3,
        "{} frames:\n{}",
        frames.len(),
        visible(&out)
    );
    frames
}

/// A frame's rows, numbered, for assertion messages.
fn show(frame: &[String]) -> String {
    frame
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.trim().is_empty())
        .map(|(i, r)| format!("{i:>3}|{}", r.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last frame whose table has a row for the storm's cgroup (the first may come before
/// its first period).
fn frame_with<'a>(frames: &'a [Vec<String>], tip: &str) -> &'a [String] {
    frames
        .iter()
        .rev()
        .find(|f| f.iter().any(|r| r.starts_with('/') && r.contains(tip)))
        .unwrap_or_else(|| {
            panic!(
                "no frame shows {tip:?}; the last:\n{}",
                show(frames.last().map_or(&[][..], |f| &f[..]))
            )
        })
}

/// The header row of the cgroup table.
fn header_row(frame: &[String]) -> &str {
    frame
        .iter()
        .find(|r| r.starts_with("CGROUP "))
        .unwrap_or_else(|| panic!("no table header:\n{}", show(frame)))
}

#[test]
fn live_view_fits_80x24_and_shows_more_at_200x50() {
    let s = storm("cfstrace-watch-size");
    // The cgroup's tip: a narrow column keeps the end of a path.
    let tip = s.path.rsplit_once('/').map_or(s.path.as_str(), |(_, t)| t);
    let tip = format!("/{tip}");

    let small = storm_frames(&s, 80, 24);
    for f in &small {
        for (i, r) in f.iter().enumerate() {
            let spill: String = r.chars().skip(80).collect();
            assert!(
                spill.trim().is_empty(),
                "row {i} is wider than 80 columns:\n{}",
                show(f)
            );
            assert!(
                i < 24 || r.trim().is_empty(),
                "row {i} is below row 24:\n{}",
                show(f)
            );
        }
    }
    let f = frame_with(&small, &tip);
    // Seen with --nocapture, or under a failure.
    eprintln!("80x24:\n{}", show(f));
    let text = f.join("\n");
    assert!(f[0].starts_with("cfstrace watch"), "{}", show(f));
    assert!(
        text.contains("headroom ") && text.contains("% of watchdog_thresh"),
        "{}",
        show(f)
    );
    assert!(text.contains("worst IRQs-off per CPU: "), "{}", show(f));
    let head = header_row(f);
    for col in ["CGROUP", "IRQOFF", "CB max", "HEADROOM", "QUOTA"] {
        assert!(head.contains(col), "no {col} at 80x24:\n{}", show(f));
    }
    // Its table row (the CULPRIT line names it too).
    let row = f
        .iter()
        .find(|r| r.starts_with('/') && r.contains(&tip))
        .unwrap_or_else(|| panic!("no row for the storm:\n{}", show(f)));
    assert!(row.contains("2ms/10ms"), "the storm's quota: {row}");

    let big = storm_frames(&s, 200, 50);
    let f = frame_with(&big, &s.path);
    eprintln!("200x50:\n{}", show(f));
    let big_head = header_row(f);
    for col in ["WORKLOAD", "CB p50", "CB p99", "CPUS/P", "COMM"] {
        assert!(big_head.contains(col), "no {col} at 200x50:\n{}", show(f));
        assert!(!head.contains(col), "{col} fits 80 columns?\n{head}");
    }
    assert!(
        f.iter().any(|r| r.chars().any(|c| BLOCKS.contains(&c))),
        "a histogram at 200 columns:\n{}",
        show(f)
    );
    // The same names on both: every column of the small table is in the big one.
    let names = [
        "CGROUP", "WORKLOAD", "IRQOFF", "PERIODS", "CB p50", "CB p99", "CB max", "UNTHR/P",
        "ENQ/P", "RUN/P", "CPUS/P", "ASYNC", "QUOTA", "HEADROOM", "COMM",
    ];
    for col in names.iter().filter(|c| head.contains(*c)) {
        assert!(
            big_head.contains(col),
            "{col:?} renamed:\n{head}\n{big_head}"
        );
    }
}

#[test]
fn plain_lines_without_a_terminal() {
    let s = storm("cfstrace-watch-plain");
    let path = s.path.as_str();
    let run = s.watch(&["--interval", "1s", "--duration", "2500ms"]);
    assert!(
        !run.stdout.contains('\x1b'),
        "escape sequences in a pipe:\n{}",
        run.describe()
    );
    let headings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("--- "))
        .collect();
    assert_eq!(headings.len(), 3, "{}", run.describe());
    // --duration ends inside the third interval: only that one is marked, with its length.
    assert!(
        headings[..2].iter().all(|h| !h.contains("partial")),
        "{headings:?}"
    );
    assert!(
        headings[2].contains("(partial interval: 0.5 s)"),
        "{headings:?}"
    );
    assert!(run.stdout.contains(path), "{}", run.describe());
    assert!(run.stdout.contains("CULPRIT"), "{}", run.describe());
}

/// `cfstrace watch ARGS --cgroup <top>` without a terminal, SIGINT after `after`; it must end
/// by itself with status 0. Output through files (a chatty child never blocks on a pipe).
fn watch_interrupted(s: &Storm, args: &[&str], after: Duration) -> Run {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cgroup", &s.name]);
    let (out_path, err_path) = (s.dir.join("watch.stdout"), s.dir.join("watch.stderr"));
    let mut child = Command::new(cfstrace_bin())
        .args(&all)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("starting cfstrace watch");
    std::thread::sleep(after);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let limit = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`cfstrace {}` did not end after SIGINT", all.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        command: format!("cfstrace {}", all.join(" ")),
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(run.status.success(), "{}", run.describe());
    run
}

/// Every line of a `watch --json` run, parsed.
fn json_lines(run: &Run) -> Vec<(&str, Value)> {
    run.stdout
        .lines()
        .map(|l| {
            let v = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", run.describe()));
            (l, v)
        })
        .collect()
}

/// An RFC 3339 time as nanoseconds since the epoch.
fn rfc3339_ns(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let t = humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

const MS: u64 = 1_000_000;

/// The checks every `watch --json --interval 1s` run passes: the start line first with the
/// static facts; then interval lines (each after the figures line that applies to it, when
/// there is one) numbered in order, contiguous, a second wide but the last, small and without
/// the static facts, the culprit and the storm's figures named; and the end line last, with
/// the run's totals. Returns the interval lines.
fn check_stream(run: &Run, s: &Storm, reason: &str) -> Vec<Value> {
    let lines = json_lines(run);
    assert!(lines.len() >= 4, "{}", run.describe());
    let (_, start) = &lines[0];
    assert_eq!(start["kind"], "start", "{}", run.describe());
    assert_eq!(start["schema"], "cfstrace.watch/1");
    for key in ["hostname", "kernel", "ncpus", "watchdog"] {
        assert!(!start["host"][key].is_null(), "no host.{key}: {start}");
    }
    assert!(
        start["probes"]["period_timer"]["attached"] == true,
        "probes in the start line: {start}"
    );
    assert!(start["backend"].is_string());
    assert_eq!(start["interval_s"], 1.0);
    assert_eq!(start["cgroup_filter"], s.name.as_str());
    let started_ns = start["started_unix_ns"].as_u64().unwrap();
    assert!(started_ns.abs_diff(rfc3339_ns(&start["started"])) < MS);

    let (_, end) = lines.last().unwrap();
    assert_eq!(end["kind"], "end", "the last line: {}", run.describe());
    assert_eq!(end["reason"], reason);

    let mut intervals: Vec<&Value> = Vec::new();
    let mut figures_for: Vec<u64> = Vec::new();
    for (l, v) in &lines[1..lines.len() - 1] {
        match v["kind"].as_str() {
            Some("figures") => {
                assert_eq!(v["seq"].as_u64(), Some(intervals.len() as u64), "{l}");
                assert!(v["figures"]["callback_ns"]["available"].is_boolean(), "{l}");
                figures_for.push(intervals.len() as u64);
            }
            Some("interval") => {
                for fact in ["probes", "host", "hostname", "kernel", "figures", "schema"] {
                    assert!(v.get(fact).is_none(), "{fact} repeated in an interval: {l}");
                }
                // ~14 KB with the static facts in every line (probes 4.8 KB, figures 3.7 KB,
                // the culprit's figures twice); now bounded by the cgroups and CPUs it shows,
                // plus the forecast's three fits (a fixed size: their moments are 13 numbers).
                let ncpus = v["cpus"].as_array().unwrap().len();
                let ncgroups = v["cgroups"].as_array().unwrap().len();
                for fit in ["callback", "csd", "span"] {
                    let status = v["forecast"][fit]["status"].as_str();
                    assert!(
                        matches!(status, Some("fitted" | "unavailable")),
                        "{fit}: {l}"
                    );
                }
                let forecast = v["forecast"].to_string().len();
                assert!(
                    forecast < 2048,
                    "a {forecast} B forecast: {}",
                    v["forecast"]
                );
                let budget = 1536 + forecast + 2048 * ncgroups + 600 * ncpus;
                assert!(
                    l.len() < budget,
                    "a {} B interval line (budget {budget} B for {ncgroups} cgroups, {ncpus} \
                     CPUs): {l}",
                    l.len()
                );
                intervals.push(v);
            }
            other => panic!("a {other:?} line between start and end: {l}"),
        }
    }
    assert_eq!(
        figures_for.first(),
        Some(&0),
        "figures before the first interval"
    );
    assert!(intervals.len() >= 3, "{}", run.describe());
    assert_eq!(end["intervals"].as_u64(), Some(intervals.len() as u64));

    let mut named = 0;
    let (mut periods, mut lost) = (0, 0);
    let mut prev_end = started_ns;
    for (seq, v) in intervals.iter().enumerate() {
        assert_eq!(v["seq"].as_u64(), Some(seq as u64), "{v}");
        let (a, b) = (
            v["start_unix_ns"].as_u64().unwrap(),
            v["end_unix_ns"].as_u64().unwrap(),
        );
        assert!(a < b, "bounds {a}..{b}");
        assert!(
            a.abs_diff(prev_end) <= MS,
            "interval {seq} starts at {a}, the previous one ended at {prev_end}"
        );
        prev_end = b;
        assert!(a.abs_diff(rfc3339_ns(&v["start"])) < MS, "{v}");
        assert!(b.abs_diff(rfc3339_ns(&v["end"])) < MS, "{v}");
        let d = v["duration_s"].as_f64().unwrap();
        assert!(
            ((b - a) as f64 / 1e9 - d).abs() < 0.05,
            "duration_s {d} vs bounds"
        );
        let last = seq == intervals.len() - 1;
        if !last {
            assert_eq!(v["partial"], false, "{v}");
            assert!((0.9..1.1).contains(&d), "interval {seq} is {d} s wide");
        }
        periods += v["events"]["periods"].as_u64().unwrap();
        lost += v["events"]["lost"].as_u64().unwrap();
        let cgroups = v["cgroups"].as_array().unwrap();
        assert!(cgroups.len() <= 2, "--top 2: {v}");
        for c in cgroups {
            let p = c["path"].as_str().unwrap_or("");
            assert!(p.contains(&s.name), "--cgroup {} let {p} through", s.name);
        }
        if v["culprit"]["path"] == s.path.as_str() {
            assert!(v["culprit"]["reason"].is_string());
            let c = cgroups
                .iter()
                .find(|c| c["path"] == s.path.as_str())
                .unwrap_or_else(|| panic!("the culprit's figures are not in `cgroups`: {v}"));
            assert!(c["periods"].as_u64().unwrap() > 0);
            assert!(c["callback_ns"]["p99"].is_u64());
            named += 1;
        }
    }
    assert!(
        named >= 2,
        "the throttled cgroup is the culprit in {named} intervals:\n{}",
        run.describe()
    );
    // Nothing lost silently: the end line's totals are the intervals', the last included.
    assert_eq!(end["periods"].as_u64(), Some(periods));
    assert_eq!(end["lost"].as_u64(), Some(lost));
    assert!(end["ended_unix_ns"].as_u64().unwrap().abs_diff(prev_end) <= MS);
    intervals.into_iter().cloned().collect()
}

#[test]
fn json_stream_ended_by_ctrl_c() {
    let s = storm("cfstrace-watch-json");
    let run = watch_interrupted(
        &s,
        &["--json", "--interval", "1s", "--top", "2"],
        Duration::from_millis(4500),
    );
    let intervals = check_stream(&run, &s, "interrupted");
    // SIGINT came inside an interval: the last one is there, marked, with its real length.
    let last = intervals.last().unwrap();
    assert_eq!(last["partial"], true, "{last}");
    let d = last["duration_s"].as_f64().unwrap();
    assert!(d > 0.0 && d < 1.0, "a partial interval of {d} s");
}

#[test]
fn json_stream_ended_by_duration() {
    let s = storm("cfstrace-watch-json-duration");
    let run = s.watch(&[
        "--json",
        "--interval",
        "1s",
        "--duration",
        "3500ms",
        "--top",
        "2",
    ]);
    let intervals = check_stream(&run, &s, "duration");
    assert_eq!(intervals.len(), 4, "{}", run.describe());
    let last = intervals.last().unwrap();
    assert_eq!(last["partial"], true, "{last}");
    let d = last["duration_s"].as_f64().unwrap();
    assert!(
        (0.4..0.6).contains(&d),
        "--duration 3500ms: a last interval of {d} s"
    );
}
