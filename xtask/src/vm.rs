//! `cargo xtask vm`: boot real Debian cloud kernels under qemu with cfstrace in the initramfs,
//! throttle a YARN container with cpu.max, and check the report cfstrace prints in the guest.
//!
//! One line per kernel x backend, like aya's xtask run: `ok: ...` or `FAIL: ...`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

use crate::cmd;
use crate::initramfs::{
    self, APPLICATION, CONTAINER, M_ATTACHED, M_BEGIN, M_DONE, M_END, M_INIT, M_RC, M_SMOKE,
};
use crate::kernels::{self, Kernel};
use crate::setup;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Bullseye,
    Bookworm,
    Trixie,
    Sid,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Auto,
    Kprobe,
    Fentry,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kprobe => "kprobe",
            Backend::Fentry => "fentry",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// Debian suite whose newest cloud kernel to boot (repeatable).
    #[arg(long = "kernel", value_name = "SUITE", value_enum, default_values_t = [Suite::Bookworm])]
    pub kernels: Vec<Suite>,
    /// cfstrace backend to force in the guest (repeatable).
    #[arg(long = "backend", value_enum, default_values_t = [Backend::Auto])]
    pub backends: Vec<Backend>,
    /// Keep the initramfs and the extracted kernel packages for inspection.
    #[arg(long)]
    pub keep: bool,
    /// qemu accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Wall-clock limit per boot in seconds (default 60 with KVM, 120 with TCG).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Only boot and print kernel facts (BTF, kallsyms, kprobes); needs no cfstrace binary.
    #[arg(long)]
    pub smoke: bool,
    /// The container's cpu.max in the guest, as QUOTA,PERIOD in microseconds (experiments only:
    /// the checks are tuned for the default). Not 2000,10000: Debian kernels tick every 4 ms,
    /// so a 2 ms quota is overrun by up to a tick and the debt often takes two periods to repay,
    /// leaving half the callbacks with nothing to unthrottle.
    #[arg(long, value_name = "QUOTA,PERIOD", default_value = DEFAULT_CPU_MAX)]
    pub cpu_max: String,
    /// Busy loops in the container.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub busy: u32,
    /// Use this cfstrace binary instead of building target/release/cfstrace.
    #[arg(long, value_name = "PATH")]
    pub cfstrace: Option<PathBuf>,
}

const DEFAULT_CPU_MAX: &str = "5000,10000";

impl Default for VmArgs {
    fn default() -> Self {
        VmArgs {
            kernels: vec![Suite::Bookworm],
            backends: vec![Backend::Auto],
            keep: false,
            accel: Accel::Auto,
            timeout: None,
            smoke: false,
            cpu_max: DEFAULT_CPU_MAX.into(),
            busy: 4,
            cfstrace: None,
        }
    }
}

/// One kernel x backend result.
pub struct Outcome {
    pub label: String,
    pub passed: bool,
}

pub fn run_cli(args: &VmArgs) -> Result<ExitCode> {
    let outcomes = run(args)?;
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    println!();
    for o in &outcomes {
        println!("  {} {}", if o.passed { "ok  " } else { "FAIL" }, o.label);
    }
    println!("vm: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Run every requested kernel x backend; an error is returned only for problems before any boot
/// (setup, build); per-kernel problems become failed outcomes.
pub fn run(args: &VmArgs) -> Result<Vec<Outcome>> {
    let valid_cpu_max = args
        .cpu_max
        .split_once(',')
        .is_some_and(|(q, p)| q.parse::<u64>().is_ok() && p.parse::<u64>().is_ok());
    if !valid_cpu_max {
        bail!("--cpu-max wants QUOTA,PERIOD in microseconds, e.g. 2000,10000");
    }
    setup::ensure(true)?;
    let bin = match (&args.cfstrace, args.smoke) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(cmd::build_tracer()?),
    };
    let cache = cmd::target_dir().join("vm-cache");
    fs::create_dir_all(&cache)?;
    let archive = initramfs::build(bin.as_deref())?;
    let initrd = cache.join(format!("initramfs-{}.cpio", std::process::id()));
    let size = archive.write(&initrd)?;
    println!(
        "initramfs: {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / (1 << 20) as f64
    );

    let mut outcomes = Vec::new();
    for suite in &args.kernels {
        let suite = suite.name();
        let kernel = match kernels::fetch(suite, args.keep) {
            Ok(k) => k,
            Err(e) => {
                let label = format!("{suite}: kernel download");
                println!("FAIL: {label}: {e:#}");
                outcomes.push(Outcome {
                    label,
                    passed: false,
                });
                continue;
            }
        };
        println!("{suite}: {} ({})", kernel.release, kernel.package);
        if args.smoke {
            outcomes.push(smoke(&kernel, &initrd, args));
            continue;
        }
        for backend in &args.backends {
            outcomes.push(scenario(&kernel, *backend, &initrd, args));
        }
    }
    if args.keep {
        println!("kept {}", initrd.display());
    } else {
        let _ = fs::remove_file(&initrd);
    }
    Ok(outcomes)
}

// ---------------------------------------------------------------------------------------------
// qemu

/// The accelerator actually used (decided on the first boot: KVM, else TCG).
static KVM_WORKS: OnceLock<bool> = OnceLock::new();
/// A KVM guest that has not reached /init by then is stuck (seen under nested virtualisation,
/// where TCG reaches /init in about 4 s): kill it and use TCG.
const KVM_INIT_DEADLINE: Duration = Duration::from_secs(20);

struct Boot {
    lines: Vec<String>,
    accel: &'static str,
    timed_out: bool,
    /// KVM guest killed for not reaching /init within KVM_INIT_DEADLINE.
    kvm_hung: bool,
    exit: Option<std::process::ExitStatus>,
    stderr: String,
    t_init: Option<Duration>,
    t_attached: Option<Duration>,
    total: Duration,
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn boot(kernel: &Kernel, initrd: &Path, extra: &str, log: &Path, args: &VmArgs) -> Result<Boot> {
    let try_kvm = match args.accel {
        Accel::Tcg => false,
        Accel::Kvm => true,
        Accel::Auto => *KVM_WORKS.get().unwrap_or(&kvm_usable()),
    };
    if try_kvm {
        let b = boot_once(kernel, initrd, extra, log, true, args)?;
        let kvm_failed = b.lines.is_empty()
            && b.exit.is_some_and(|s| !s.success())
            && b.stderr.to_ascii_lowercase().contains("kvm");
        if !(kvm_failed || b.kvm_hung) || args.accel == Accel::Kvm {
            let _ = KVM_WORKS.set(true);
            return Ok(b);
        }
        if b.kvm_hung {
            println!(
                "qemu: the KVM guest did not reach /init in {}s (nested KVM?); falling back to TCG",
                KVM_INIT_DEADLINE.as_secs()
            );
        } else {
            println!(
                "qemu: KVM failed ({}); falling back to TCG",
                b.stderr.trim()
            );
        }
        let _ = KVM_WORKS.set(false);
    }
    boot_once(kernel, initrd, extra, log, false, args)
}

fn boot_once(
    kernel: &Kernel,
    initrd: &Path,
    extra: &str,
    log: &Path,
    kvm: bool,
    args: &VmArgs,
) -> Result<Boot> {
    let timeout = Duration::from_secs(args.timeout.unwrap_or(if kvm { 60 } else { 120 }));
    let mut c = Command::new("qemu-system-x86_64");
    if kvm {
        // CFSTRACE_VM_KVM_CPU overrides `-cpu host` (e.g. "host,-arch-capabilities").
        let cpu = std::env::var("CFSTRACE_VM_KVM_CPU").unwrap_or_else(|_| "host".into());
        c.args(["-enable-kvm", "-cpu", &cpu]);
    } else {
        c.args(["-accel", "tcg", "-cpu", "max"]);
    }
    c.args([
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg(format!("console=ttyS0 panic=-1 oops=panic quiet {extra}"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let accel = if kvm { "kvm" } else { "tcg" };
    println!("+ {}", cmd::display(&c));
    let mut logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = c
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let mut b = Boot {
        lines: Vec::new(),
        accel,
        timed_out: false,
        kvm_hung: false,
        exit: None,
        stderr: String::new(),
        t_init: None,
        t_attached: None,
        total: Duration::ZERO,
    };
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            b.timed_out = true;
            let _ = child.kill();
            break;
        }
        let wait = if kvm && b.t_init.is_none() && args.accel == Accel::Auto {
            let to_deadline = KVM_INIT_DEADLINE.saturating_sub(start.elapsed());
            if to_deadline.is_zero() {
                b.kvm_hung = true;
                let _ = child.kill();
                break;
            }
            left.min(to_deadline)
        } else {
            left
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let _ = writeln!(logf, "{line}");
                if b.t_init.is_none() && line.contains(M_INIT) {
                    b.t_init = Some(start.elapsed());
                }
                if b.t_attached.is_none() && line.contains(M_ATTACHED) {
                    b.t_attached = Some(start.elapsed());
                }
                b.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    b.exit = Some(child.wait()?);
    b.total = start.elapsed();
    // Lines still in flight after a kill.
    let _ = reader.join();
    for line in rx.try_iter() {
        let _ = writeln!(logf, "{line}");
        b.lines.push(line);
    }
    b.stderr = err_reader.join().unwrap_or_default();
    if !b.stderr.trim().is_empty() {
        let _ = writeln!(logf, "--- qemu stderr ---\n{}", b.stderr.trim_end());
    }
    if b.timed_out {
        let _ = writeln!(
            logf,
            "--- killed after {}s (timeout) ---",
            timeout.as_secs()
        );
    }
    Ok(b)
}

// ---------------------------------------------------------------------------------------------
// Console analysis

/// Kernel messages that mean the guest kernel is broken.
const KERNEL_PROBLEMS: &[&str] = &[
    "Oops",
    "BUG:",
    "Kernel panic",
    "RCU stall",
    "rcu_sched self-detected stall",
    "rcu_preempt self-detected stall",
    "self-detected stall on CPU",
    "soft lockup",
    "hard LOCKUP",
];

/// The text after a printk timestamp (`[   12.345678] `) in a line, if it has one. Only kernel
/// lines are scanned for problems, so cfstrace's own output ("hard LOCKUP" in a reason) is not.
fn kernel_message(line: &str) -> Option<&str> {
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        let after = &rest[i + 1..];
        if let Some(j) = after.find(']') {
            let ts = after[..j].trim();
            let is_ts = ts.contains('.')
                && !ts.is_empty()
                && ts.chars().all(|c| c.is_ascii_digit() || c == '.');
            if is_ts {
                return Some(&after[j + 1..]);
            }
        }
        rest = after;
    }
    None
}

fn kernel_problem(line: &str) -> Option<&'static str> {
    let msg = kernel_message(line)?;
    KERNEL_PROBLEMS.iter().copied().find(|p| msg.contains(p))
}

#[derive(Debug, Default)]
struct Console {
    init: bool,
    attached: Option<usize>,
    done: bool,
    /// First kernel problem before ATTACHED (a boot flake) and after it (a failure).
    early_problem: Option<usize>,
    late_problem: Option<usize>,
    report: Option<std::result::Result<Value, String>>,
    rc: Option<(i64, i64)>,
}

fn analyze(lines: &[String]) -> Console {
    let mut c = Console::default();
    let mut in_report = false;
    let mut report_lines: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(M_INIT) {
            c.init = true;
        }
        if l.contains(M_ATTACHED) && c.attached.is_none() {
            c.attached = Some(i);
        }
        if l.contains(M_DONE) {
            c.done = true;
        }
        if l.contains(M_BEGIN) {
            in_report = true;
            continue;
        }
        if l.contains(M_END) {
            in_report = false;
            c.report = Some(parse_report(&report_lines));
            continue;
        }
        if in_report {
            report_lines.push(l);
        } else if let Some(rest) = l.find(M_RC).map(|p| &l[p + M_RC.len()..]) {
            c.rc = parse_rc(rest);
        }
        if kernel_problem(l).is_some() {
            if c.attached.is_none() {
                c.early_problem.get_or_insert(i);
            } else {
                c.late_problem.get_or_insert(i);
            }
        }
    }
    if in_report {
        c.report = Some(Err("no end marker after the report".into()));
    }
    c
}

fn parse_report(lines: &[&str]) -> std::result::Result<Value, String> {
    let all = lines.join("\n");
    if all.trim().is_empty() {
        return Err("cfstrace report printed nothing".into());
    }
    match serde_json::from_str(&all) {
        Ok(v) => Ok(v),
        Err(first) => {
            // A printk may have landed in the middle of the JSON: drop kernel lines and retry.
            let cleaned: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| kernel_message(l).is_none())
                .collect();
            serde_json::from_str(&cleaned.join("\n"))
                .map_err(|_| format!("report is not JSON: {first}"))
        }
    }
}

/// ` record=N report=N@@`
fn parse_rc(rest: &str) -> Option<(i64, i64)> {
    let mut rec = None;
    let mut rep = None;
    for w in rest.trim_end_matches('@').split_whitespace() {
        let w = w.trim_end_matches('@');
        if let Some(v) = w.strip_prefix("record=") {
            rec = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("report=") {
            rep = v.parse().ok();
        }
    }
    Some((rec?, rep?))
}

fn excerpt(lines: &[String], around: Option<usize>, n: usize) -> String {
    let (from, to) = match around {
        Some(i) => (i.saturating_sub(5), (i + n).min(lines.len())),
        None => (lines.len().saturating_sub(n), lines.len()),
    };
    lines[from..to]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Expectations: one row per backend. A later issue adds forced-backend runs by extending this.

#[derive(Debug)]
struct Expect {
    backend: Backend,
    /// Allowed `probes.period_timer.how`.
    period_timer_how: &'static [&'static str],
    /// `probes.unthrottle.attached` must be true.
    unthrottle_attached: bool,
    /// `probes.enqueue.attached` must be true.
    enqueue_attached: bool,
    /// `culprit.unthrottled_per_period.p50 >= 1` (not null).
    unthrottled_counted: bool,
    /// `culprit.enqueued_per_period.p50 >= 1` (not null).
    enqueued_counted: bool,
}

const EXPECTATIONS: &[Expect] = &[
    Expect {
        backend: Backend::Auto,
        period_timer_how: &["kprobe", "fentry"],
        unthrottle_attached: true,
        enqueue_attached: true,
        unthrottled_counted: true,
        enqueued_counted: true,
    },
    Expect {
        backend: Backend::Kprobe,
        period_timer_how: &["kprobe"],
        unthrottle_attached: true,
        enqueue_attached: true,
        unthrottled_counted: true,
        enqueued_counted: true,
    },
    Expect {
        backend: Backend::Fentry,
        period_timer_how: &["fentry"],
        unthrottle_attached: true,
        enqueue_attached: true,
        unthrottled_counted: true,
        enqueued_counted: true,
    },
    Expect {
        backend: Backend::Tracepoint,
        period_timer_how: &["tracepoint"],
        unthrottle_attached: false,
        enqueue_attached: false,
        unthrottled_counted: false,
        enqueued_counted: false,
    },
];

fn expectation(backend: Backend) -> &'static Expect {
    EXPECTATIONS
        .iter()
        .find(|e| e.backend == backend)
        .expect("every backend has a row")
}

fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer).filter(|x| !x.is_null())
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    at(v, pointer).and_then(Value::as_f64)
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    at(v, pointer).and_then(Value::as_str)
}

/// Every failed check, as a readable line.
fn check_report(r: &Value, e: &Expect) -> Vec<String> {
    let mut bad = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    need(
        text(r, "/schema") == Some("cfstrace.report/1"),
        format!(
            "schema is {:?}, want \"cfstrace.report/1\"",
            at(r, "/schema")
        ),
    );
    let pt_attached = at(r, "/probes/period_timer/attached").and_then(Value::as_bool) == Some(true);
    need(
        pt_attached,
        format!(
            "probes.period_timer not attached: {}",
            at(r, "/probes/period_timer")
                .map(Value::to_string)
                .unwrap_or("missing".into())
        ),
    );
    let how = text(r, "/probes/period_timer/how");
    need(
        how.is_some_and(|h| e.period_timer_how.contains(&h)),
        format!(
            "probes.period_timer.how is {how:?}, want one of {:?}",
            e.period_timer_how
        ),
    );
    for (probe, wanted) in [
        ("unthrottle", e.unthrottle_attached),
        ("enqueue", e.enqueue_attached),
    ] {
        if wanted {
            let ok =
                at(r, &format!("/probes/{probe}/attached")).and_then(Value::as_bool) == Some(true);
            need(
                ok,
                format!(
                    "probes.{probe} not attached: {}",
                    at(r, &format!("/probes/{probe}"))
                        .map(Value::to_string)
                        .unwrap_or("missing".into())
                ),
            );
        }
    }
    let periods = num(r, "/events/periods").unwrap_or(0.0);
    need(
        periods > 0.0,
        format!("events.periods is {:?}, want > 0", at(r, "/events/periods")),
    );

    let Some(c) = at(r, "/culprit") else {
        need(false, "culprit is null".into());
        return bad;
    };
    let path = text(c, "/path").unwrap_or("");
    need(
        path.ends_with(CONTAINER),
        format!("culprit.path is {path:?}, want .../{CONTAINER}"),
    );
    need(
        text(c, "/workload/kind") == Some("yarn"),
        format!(
            "culprit.workload.kind is {:?}, want \"yarn\"",
            at(c, "/workload/kind")
        ),
    );
    need(
        text(c, "/workload/application") == Some(APPLICATION),
        format!(
            "culprit.workload.application is {:?}, want {APPLICATION:?}",
            at(c, "/workload/application")
        ),
    );
    let procs = at(c, "/processes")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    need(procs > 0, "culprit.processes is empty".into());
    for (field, wanted) in [
        ("unthrottled_per_period", e.unthrottled_counted),
        ("enqueued_per_period", e.enqueued_counted),
    ] {
        if wanted {
            let p50 = num(c, &format!("/{field}/p50"));
            need(
                p50.is_some_and(|p| p >= 1.0),
                format!("culprit.{field}.p50 is {p50:?}, want >= 1"),
            );
        }
    }
    let count = num(c, "/callback_ns/count").unwrap_or(0.0);
    need(
        count > 0.0,
        format!("culprit.callback_ns.count is {count}, want > 0"),
    );
    bad
}

fn summary(r: &Value) -> String {
    let c = at(r, "/culprit");
    let get = |p: &str| {
        c.and_then(|c| at(c, p))
            .map(|v| v.to_string())
            .unwrap_or("-".into())
    };
    format!(
        "period_timer via {}, {} periods, culprit callback p50 {} ns max {} ns, unthrottled p50 {}, enqueued p50 {}",
        text(r, "/probes/period_timer/how").unwrap_or("?"),
        num(r, "/events/periods").unwrap_or(0.0),
        get("/callback_ns/p50"),
        get("/callback_ns/max"),
        get("/unthrottled_per_period/p50"),
        get("/enqueued_per_period/p50"),
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// Runs

fn scenario(kernel: &Kernel, backend: Backend, initrd: &Path, args: &VmArgs) -> Outcome {
    let label = format!(
        "{} {} backend={}",
        kernel.suite,
        kernel.release,
        backend.name()
    );
    match scenario_inner(kernel, backend, initrd, args) {
        Ok(detail) => {
            println!("ok: {label}: {detail}");
            Outcome {
                label,
                passed: true,
            }
        }
        Err(e) => {
            println!("FAIL: {label}: {e:#}");
            Outcome {
                label,
                passed: false,
            }
        }
    }
}

fn scenario_inner(
    kernel: &Kernel,
    backend: Backend,
    initrd: &Path,
    args: &VmArgs,
) -> Result<String> {
    let dir = kernels::suite_dir(&kernel.suite);
    let log = dir.join(format!("console-{}.log", backend.name()));
    let extra = format!(
        "cfstrace.backend={} cfstrace.cpumax={} cfstrace.busy={}",
        backend.name(),
        args.cpu_max,
        args.busy
    );
    let mut attempt = 1;
    let (b, con) = loop {
        let b = boot(kernel, initrd, &extra, &log, args)?;
        let con = analyze(&b.lines);
        // Emulation flakes oops the guest before anything of ours runs: retry those once.
        let flake =
            con.attached.is_none() && (con.early_problem.is_some() || (b.timed_out && !con.init));
        if flake && attempt == 1 {
            let first = dir.join(format!("console-{}.try1.log", backend.name()));
            let _ = fs::rename(&log, &first);
            println!(
                "retry: {} {}: guest broke before cfstrace started (console: {}):\n{}",
                kernel.suite,
                backend.name(),
                first.display(),
                excerpt(&b.lines, con.early_problem, 20)
            );
            attempt += 1;
            continue;
        }
        break (b, con);
    };
    let timing = format!(
        "{}, init {}, attached {}, total {}",
        b.accel,
        secs(b.t_init),
        secs(b.t_attached),
        secs(Some(b.total))
    );
    let where_ = format!("console: {}", log.display());
    if let Some(i) = con.early_problem.or(con.late_problem) {
        bail!(
            "kernel problem \"{}\" ({timing}; {where_}):\n{}",
            kernel_problem(&b.lines[i]).unwrap_or("?"),
            excerpt(&b.lines, Some(i), 30)
        );
    }
    if con.attached.is_none() {
        bail!(
            "cfstrace never started{} ({timing}; {where_}):\n{}",
            if b.timed_out { " (timeout)" } else { "" },
            excerpt(&b.lines, None, 30)
        );
    }
    let Some(rc) = con.rc else {
        bail!(
            "no exit statuses from the guest{} ({timing}; {where_}):\n{}",
            if b.timed_out { " (timeout)" } else { "" },
            excerpt(&b.lines, None, 40)
        );
    };
    let report = match con.report {
        Some(Ok(v)) => v,
        Some(Err(e)) => bail!(
            "{e}; record={} report={} ({timing}; {where_}):\n{}",
            rc.0,
            rc.1,
            excerpt(&b.lines, None, 40)
        ),
        None => bail!("no report markers ({timing}; {where_})"),
    };
    let mut bad = Vec::new();
    if rc != (0, 0) {
        bad.push(format!(
            "exit statuses record={} report={}, want 0 and 0",
            rc.0, rc.1
        ));
    }
    if !con.done {
        bad.push("no DONE marker (guest did not finish)".into());
    }
    bad.extend(check_report(&report, expectation(backend)));
    let json = dir.join(format!("report-{}.json", backend.name()));
    let _ = fs::write(
        &json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    if !bad.is_empty() {
        bail!(
            "{} check(s) failed ({timing}; {where_}; report: {}):\n{}",
            bad.len(),
            json.display(),
            bad.iter()
                .map(|b| format!("    - {b}\n"))
                .collect::<String>()
        );
    }
    Ok(format!("{} [{timing}]", summary(&report)))
}

fn smoke(kernel: &Kernel, initrd: &Path, args: &VmArgs) -> Outcome {
    let label = format!("{} {} smoke", kernel.suite, kernel.release);
    let log = kernels::suite_dir(&kernel.suite).join("console-smoke.log");
    let res = (|| -> Result<String> {
        let mut attempt = 1;
        loop {
            let b = boot(kernel, initrd, "cfstrace.mode=smoke", &log, args)?;
            let con = analyze(&b.lines);
            let facts: Vec<String> = b
                .lines
                .iter()
                .filter_map(|l| {
                    l.find(M_SMOKE).map(|p| {
                        l[p + M_SMOKE.len()..]
                            .trim()
                            .trim_end_matches('@')
                            .to_string()
                    })
                })
                .collect();
            if (!con.done || con.early_problem.is_some()) && attempt == 1 {
                println!(
                    "retry: {} smoke: guest did not finish:\n{}",
                    kernel.suite,
                    excerpt(&b.lines, con.early_problem, 20)
                );
                attempt += 1;
                continue;
            }
            if !con.done {
                bail!(
                    "guest did not finish (console: {}):\n{}",
                    log.display(),
                    excerpt(&b.lines, None, 30)
                );
            }
            let cfg = |n: &str| {
                kernel
                    .config_value(n)
                    .map(|v| if v.is_empty() { "n".to_string() } else { v })
            };
            let config: Vec<String> = [
                "CONFIG_KPROBES",
                "CONFIG_FUNCTION_TRACER",
                "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
                "CONFIG_DEBUG_INFO_BTF",
                "CONFIG_CFS_BANDWIDTH",
                "CONFIG_HARDLOCKUP_DETECTOR",
            ]
            .iter()
            .filter_map(|n| cfg(n).map(|v| format!("{}={v}", n.trim_start_matches("CONFIG_"))))
            .collect();
            return Ok(format!(
                "[{}, init {}, total {}]\n    guest: {}\n    config: {}",
                b.accel,
                secs(b.t_init),
                secs(Some(b.total)),
                facts.join(" "),
                if config.is_empty() {
                    "(no config file in the package)".into()
                } else {
                    config.join(" ")
                }
            ));
        }
    })();
    match res {
        Ok(d) => {
            println!("ok: {label}: {d}");
            Outcome {
                label,
                passed: true,
            }
        }
        Err(e) => {
            println!("FAIL: {label}: {e:#}");
            Outcome {
                label,
                passed: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn kernel_lines_only() {
        assert_eq!(
            kernel_problem("[    3.123456] BUG: unable to handle page fault"),
            Some("BUG:")
        );
        assert_eq!(
            kernel_problem("[   12.000001] watchdog: BUG: soft lockup - CPU#0 stuck"),
            Some("BUG:")
        );
        assert_eq!(
            kernel_problem("reason: eats 3% of the hard LOCKUP headroom"),
            None
        );
        assert_eq!(kernel_problem("[x] Oops"), None);
    }

    #[test]
    fn console_with_report() {
        let con = analyze(&lines(
            "[    0.000000] Linux version 6.1\n@@CFSTRACE-INIT@@ 6.1\n@@CFSTRACE-ATTACHED@@\n\
             @@CFSTRACE-REPORT-BEGIN@@\n{\"schema\":\n[    9.100000] random: crng init done\n\
             \"cfstrace.report/1\"}\n\n@@CFSTRACE-REPORT-END@@\n@@CFSTRACE-RC record=0 report=0@@\n\
             @@CFSTRACE-DONE@@\n",
        ));
        assert!(con.init && con.done);
        assert_eq!(con.attached, Some(2));
        assert_eq!(con.rc, Some((0, 0)));
        assert!(con.early_problem.is_none() && con.late_problem.is_none());
        let r = con.report.unwrap().unwrap();
        assert_eq!(r["schema"], "cfstrace.report/1");
    }

    #[test]
    fn early_and_late_problems() {
        let early = analyze(&lines("[    1.000000] Oops: 0000 [#1] SMP\n"));
        assert_eq!(early.early_problem, Some(0));
        let late = analyze(&lines(
            "@@CFSTRACE-ATTACHED@@\n[   20.000000] watchdog: Watchdog detected hard LOCKUP on cpu 1\n",
        ));
        assert_eq!(late.late_problem, Some(1));
        assert!(late.early_problem.is_none());
    }

    fn good_report() -> Value {
        serde_json::json!({
            "schema": "cfstrace.report/1",
            "probes": {
                "period_timer": {"attached": true, "how": "kprobe"},
                "unthrottle": {"attached": true, "how": "kprobe"},
                "enqueue": {"attached": true, "how": "kprobe"}
            },
            "events": {"periods": 700, "lost": 0},
            "culprit": {
                "path": "/storm/hadoop-yarn/container_e06_1512098667219_988894_01_000020",
                "workload": {"kind": "yarn", "application": "application_1512098667219_988894"},
                "processes": [{"pid": 90, "comm": "sh"}],
                "unthrottled_per_period": {"p50": 1},
                "enqueued_per_period": {"p50": 2},
                "callback_ns": {"count": 700}
            }
        })
    }

    #[test]
    fn assertions_pass_and_fail() {
        let r = good_report();
        assert!(check_report(&r, expectation(Backend::Auto)).is_empty());
        assert_eq!(check_report(&r, expectation(Backend::Fentry)).len(), 1);
        let mut worse = r.clone();
        worse["culprit"]["enqueued_per_period"] = Value::Null;
        worse["probes"]["period_timer"]["how"] = "tracepoint".into();
        let bad = check_report(&worse, expectation(Backend::Auto));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(check_report(&worse, expectation(Backend::Tracepoint)).is_empty());
    }
}
