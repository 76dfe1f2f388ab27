//! The files cfstrace writes, and what is in them, on this host: a real short `record` of a
//! throttled cgroup gives a capture of mode 0600 (also over a file that was 0644), `report
//! --svg` a plot of mode 0600; `-o` naming a symlink is refused with one clear line and the
//! link's target is left alone; no number or hex string in the capture, the report's JSON,
//! the SVG, `watch --json`, /metrics or stderr reads as a kernel address (the period lines
//! carry `timer_id`, an opaque per-run id, where they carried the hrtimer's address); and
//! `--no-cmdline` leaves every process's command line out (comm only), `record -- CMD`'s
//! arguments too.
//!
//! Needs root (cgroups, BPF) and the built binary; it fails, never skips, without them. Runs
//! one throttled cgroup for two 2-second recordings and a 3-second watch made at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cfstrace_tests::{Run, Scratch, cfstrace_bin, run_with_timeout, stdout_json, test_cgroups};
use serde_json::Value;

/// The lowest kernel address on x86-64 (the start of the direct map's half): no count, id or
/// time in a capture comes near it, every kernel pointer is at or above it.
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// Something a kernel-side `-- CMD` argument would carry: with `--no-cmdline` it must appear
/// nowhere in the capture.
const SECRET: &str = "cfstrace-files-secret-arg";

struct Recorded {
    dir: Scratch,
    /// Throttled cgroup, as cfstrace names it.
    cgroup: String,
    /// `record` over a file that was 0644, and its run (`--log-level trace`).
    capture: PathBuf,
    record: Run,
    /// `record --no-cmdline ... -- sh -c 'sleep 2' SECRET`, and its run.
    bare: PathBuf,
    bare_record: Run,
    /// `report --json --svg` of `capture`, over an SVG that was 0644.
    svg: PathBuf,
    report: Run,
    /// `watch --json --prometheus` during the recordings: its stdout and stderr, and a scrape
    /// of its /metrics.
    watch: Watched,
}

struct Watched {
    stdout: String,
    stderr: String,
    metrics: String,
}

/// One throttled cgroup per test binary, shared by the tests.
fn recorded() -> &'static Recorded {
    static RUN: OnceLock<Result<Recorded, String>> = OnceLock::new();
    cfstrace_tests::shared(&RUN, "the files recordings", record)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `path` with `text`, mode 0644 (what a capture used to be made with).
fn world_readable(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn record() -> Result<Recorded, String> {
    let mut tree = test_cgroups("cfstrace-files");
    // 2 ms of every 10 ms for two busy loops: throttled every period.
    let cg = tree.add("job", 10_000, 2_000)?;
    tree.busy(&cg, 2)?;
    let cgroup = tree.cgroup_path(&cg);
    let dir = cfstrace_tests::scratch!("files");
    let capture = dir.join("capture.jsonl");
    world_readable(&capture, "an older file, readable by anyone\n")?;
    let bare = dir.join("bare.jsonl");
    let bin = cfstrace_bin();
    let limit = Duration::from_secs(60);
    // All at once: each attaches its own programs and sees the same callbacks.
    let (record, bare_record, watch) = std::thread::scope(|scope| {
        let watch = scope.spawn(|| watch_and_scrape(&bin, &dir));
        let full = scope.spawn(|| {
            run_with_timeout(
                &bin,
                &[
                    "record",
                    "-d",
                    "2s",
                    "--log-level",
                    "trace",
                    "-o",
                    s(&capture),
                ],
                &dir,
                limit,
            )
        });
        let bare = run_with_timeout(
            &bin,
            &[
                "record",
                "--no-cmdline",
                "-d",
                "5s",
                "-o",
                s(&bare),
                "--",
                "sh",
                "-c",
                "sleep 2",
                SECRET,
            ],
            &dir,
            limit,
        );
        (
            full.join().expect("record thread"),
            bare,
            watch.join().expect("watch thread"),
        )
    });
    let (record, bare_record, watch) = (record?, bare_record?, watch?);
    drop(tree);
    let svg = dir.join("plot.svg");
    world_readable(&svg, "<svg/>\n")?;
    let report = run_with_timeout(
        &bin,
        &["report", s(&capture), "--json", "--svg", s(&svg)],
        &dir,
        limit,
    )?;
    Ok(Recorded {
        dir,
        cgroup,
        capture,
        record,
        bare,
        bare_record,
        svg,
        report,
        watch,
    })
}

/// `cfstrace watch --json --prometheus 127.0.0.1:0 -d 3s`, its /metrics scraped once after
/// two intervals, then left to end by itself.
fn watch_and_scrape(bin: &Path, dir: &Path) -> Result<Watched, String> {
    let (out, err) = (dir.join("watch.stdout"), dir.join("watch.stderr"));
    let file = |p: &Path| fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = Command::new(bin)
        .args(["watch", "--json", "--prometheus", "127.0.0.1:0", "-i", "1s"])
        .args(["-d", "3s"])
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("starting cfstrace watch: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = (|| {
        let addr = loop {
            let said = fs::read_to_string(&err).unwrap_or_default();
            if let Some(rest) = said.split("serving Prometheus metrics on http://").nth(1) {
                break rest.split("/metrics").next().unwrap_or("").to_string();
            }
            if let Ok(Some(s)) = child.try_wait() {
                return Err(format!("watch exited {s} before serving:\n{said}"));
            }
            if Instant::now() > deadline {
                return Err(format!("watch never served /metrics:\n{said}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(2200));
        let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("GET /metrics: {e}"))?;
        let mut metrics = String::new();
        s.read_to_string(&mut metrics)
            .map_err(|e| format!("reading /metrics: {e}"))?;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => return Err("watch did not end".into()),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(metrics)
    })();
    let _ = child.kill();
    let _ = child.wait();
    Ok(Watched {
        metrics: result?,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    })
}

/// Every token of `text` that reads as a kernel address: a decimal number at or above
/// [`KERNEL_SPACE`] (bar u64::MAX, which a capture writes for "no quota"), or a hex run of 12
/// to 16 digits starting `ffff8`..`ffffffff` (with or without `0x`).
fn kernel_addresses(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|t| {
            if t.bytes().all(|b| b.is_ascii_digit()) {
                // Past u64: no address either.
                t.parse::<u64>()
                    .is_ok_and(|v| v >= KERNEL_SPACE && v != u64::MAX)
            } else {
                let t = t.to_ascii_lowercase();
                (12..=16).contains(&t.len()) && t.starts_with("ffff") && t.as_bytes()[4] >= b'8'
            }
        })
        .map(str::to_string)
        .collect()
}

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn assert_ok(run: &Run) {
    assert!(run.status.success(), "{}", run.describe());
}

/// The scanner below finds what it is meant to: without this the address checks could pass
/// on a scanner that finds nothing.
#[test]
fn the_address_scanner_finds_kernel_addresses() {
    let text = r##"{"timer":18446612687065327048,"x":"ffff8881043a2b48","y":"0xffffffff81000000","quota_ns":18446744073709551615,"ts_ns":1796194174462823462,"fill":"#FFFFFF"}"##;
    assert_eq!(
        kernel_addresses(text),
        [
            "18446612687065327048",
            "ffff8881043a2b48",
            "ffffffff81000000"
        ]
    );
    // A capture written before `timer_id`, kept as a fixture, is caught.
    let old = cfstrace_tests::workspace_root().join("tests/fixtures/host-6.18-demo.jsonl");
    let old = fs::read_to_string(&old).expect("fixture");
    assert!(!kernel_addresses(&old).is_empty());
}

#[test]
fn captures_and_plots_are_private() {
    let r = recorded();
    assert_ok(&r.record);
    assert_ok(&r.bare_record);
    assert_ok(&r.report);
    // The capture was 0644 before: made 0600, and replaced.
    assert_eq!(mode(&r.capture), 0o600, "{}", r.capture.display());
    let text = fs::read_to_string(&r.capture).unwrap();
    assert!(
        text.starts_with(r#"{"schema":"cfstrace.capture/1""#),
        "not replaced"
    );
    assert_eq!(mode(&r.bare), 0o600, "{}", r.bare.display());
    assert_eq!(mode(&r.svg), 0o600, "{}", r.svg.display());
    assert!(
        fs::read_to_string(&r.svg).unwrap().len() > 1000,
        "plot not written"
    );
}

#[test]
fn an_output_symlink_is_refused_and_its_target_untouched() {
    let dir = cfstrace_tests::scratch!("files-symlink");
    let target = dir.join("precious");
    world_readable(&target, "keep me\n").unwrap();
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let bin = cfstrace_bin();
    let fixture = cfstrace_tests::workspace_root().join("tests/fixtures/host-6.18-demo.jsonl");
    for args in [
        vec!["record", "-d", "1s", "-o", s(&link)],
        vec!["report", s(&fixture), "--svg", s(&link)],
    ] {
        let run = run_with_timeout(&bin, &args, &dir, Duration::from_secs(30)).unwrap();
        assert_eq!(run.status.code(), Some(1), "{}", run.describe());
        let said: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(said.len(), 1, "one line: {}", run.describe());
        assert!(
            said[0].starts_with("cfstrace: error: ")
                && said[0].contains(s(&link))
                && said[0].contains("is a symbolic link"),
            "{}",
            run.describe()
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep me\n");
        assert_eq!(mode(&target), 0o644);
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}

#[test]
fn no_kernel_address_in_any_output() {
    let r = recorded();
    assert_ok(&r.record);
    assert_ok(&r.report);
    let caps = [&r.capture, &r.bare];
    for (what, text) in [
        ("capture", fs::read_to_string(&r.capture).unwrap()),
        ("bare capture", fs::read_to_string(&r.bare).unwrap()),
        ("report JSON", r.report.stdout.clone()),
        ("SVG", fs::read_to_string(&r.svg).unwrap()),
        ("record's stderr", r.record.stderr.clone()),
        ("bare record's stderr", r.bare_record.stderr.clone()),
        ("report's stderr", r.report.stderr.clone()),
        ("watch --json", r.watch.stdout.clone()),
        ("watch's stderr", r.watch.stderr.clone()),
        ("/metrics", r.watch.metrics.clone()),
    ] {
        let found = kernel_addresses(&text);
        assert!(found.is_empty(), "{what} holds kernel addresses {found:?}");
    }
    // Not vacuous: the scans read the callbacks of the throttled cgroup.
    let rep = stdout_json(&r.report);
    let ours = rep["cgroups"]
        .as_array()
        .expect("cgroups")
        .iter()
        .find(|c| c["path"] == r.cgroup.as_str())
        .unwrap_or_else(|| panic!("{} not in the report: {}", r.cgroup, r.dir.display()));
    assert!(ours["periods"].as_u64() > Some(50), "{ours}");
    assert!(
        r.watch.stdout.contains(&r.cgroup) && r.watch.metrics.contains(&r.cgroup),
        "watch and /metrics name the throttled cgroup:\n{}\n{}",
        r.watch.stdout,
        r.watch.metrics
    );
    // Each period line carries an id instead: 1, 2, ... in order of first appearance, one
    // per timer (the cgroup's own, whatever CPU it fired on), and no `timer`.
    for cap in caps {
        let mut first_seen = Vec::new();
        let mut by_cgroup: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for l in lines(cap).iter().filter(|l| l["kind"] == "period") {
            assert!(l.get("timer").is_none(), "{l}");
            let id = l["timer_id"].as_u64().unwrap_or_else(|| panic!("{l}"));
            if !first_seen.contains(&id) {
                first_seen.push(id);
            }
            by_cgroup
                .entry(l["cgroup_id"].as_u64().unwrap())
                .or_default()
                .insert(id);
        }
        let want: Vec<u64> = (1..=first_seen.len() as u64).collect();
        assert_eq!(first_seen, want, "{}", cap.display());
        let id = ours["id"].as_u64().unwrap();
        assert_eq!(
            by_cgroup.get(&id).map(BTreeSet::len),
            Some(1),
            "{}: {by_cgroup:?}",
            cap.display()
        );
    }
}

#[test]
fn no_cmdline_leaves_command_lines_out() {
    let r = recorded();
    assert_ok(&r.record);
    assert_ok(&r.bare_record);
    // (cgroup path, comm, cmdline) of every process on a cgroup line.
    let processes = |cap: &Path| -> Vec<(String, String, Option<String>)> {
        lines(cap)
            .iter()
            .filter(|l| l["kind"] == "cgroup")
            .flat_map(|l| {
                let path = l["path"].as_str().unwrap_or("").to_string();
                l["processes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| {
                        (
                            path.clone(),
                            p["comm"].as_str().unwrap_or("").to_string(),
                            p.get("cmdline").and_then(|c| c.as_str()).map(String::from),
                        )
                    })
            })
            .collect()
    };
    // Without the flag the busy loops' command lines are there: what the flag must remove.
    let full = processes(&r.capture);
    assert!(
        full.iter().any(|(path, comm, cmd)| path == &r.cgroup
            && comm == "sh"
            && cmd.as_deref() == Some("sh -c while :; do :; done")),
        "{full:?}"
    );
    let bare = processes(&r.bare);
    assert!(
        bare.iter()
            .any(|(path, comm, _)| path == &r.cgroup && comm == "sh"),
        "the throttled cgroup's processes are still named by comm: {bare:?}"
    );
    let with_cmdline: Vec<_> = bare.iter().filter(|p| p.2.is_some()).collect();
    assert!(with_cmdline.is_empty(), "{with_cmdline:?}");
    // Nowhere else either: not the busy loops' script, not CMD's arguments (the header keeps
    // CMD's program alone).
    let text = fs::read_to_string(&r.bare).unwrap();
    assert!(!text.contains("while :") && !text.contains(SECRET));
    let header = &lines(&r.bare)[0];
    assert_eq!(header["command"], serde_json::json!(["sh"]), "{header}");
    assert_eq!(
        lines(&r.capture)[0].get("command"),
        None,
        "no CMD, no command"
    );
}
