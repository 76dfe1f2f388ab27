//! `cargo xtask bench`: the tracer's own cost and limits, measured (issue 9's P1-P5), printed
//! as a table and written to BENCHMARKS.md with the machine, the kernel and the commit.
//!
//! - P1 cost per hit: bpf_stats per program, cfstrace next to a bpftrace peer on the same
//!   attach points in the same run (host tracepoints; 6.1 and 6.12 guests, fentry and kprobe).
//! - P2 added IRQs-off time: directly (interleaved runs, full probe set against the baselines)
//!   and by accounting (run time + dispatch per hit over the window's time), host and 6.1 guest.
//! - P3 reader throughput: the tracer's `reader_bench` example and `report` over 1 M+ lines.
//! - P4 scale: 2,000 cgroups on an 8-vCPU guest; peak RSS of an idle `record` on the host.
//! - P5 time to answer: exec to armed probes, and to `watch` naming the culprit.
//!
//! Benchmarks print figures and never fail on a timing; one that cannot run says why in
//! BENCHMARKS.md. Every cgroup, busy loop, tracer and guest the bench starts is stopped on
//! success, on error and on Ctrl-C. `cargo xtask test` does not run it.

mod bpfstats;
mod capture;
mod guest;
mod host;
mod p1;
mod p2;
mod p3;
mod p45;
mod proc;
mod qemu;
mod report;
mod stats;
mod storm;
mod vmfigs;
mod vms;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::{cmd, setup};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Run only these figures (comma-separated), e.g. `--only p1,p3`. Default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Shorter runs and fewer repeats (about half the time; noisier figures).
    #[arg(long)]
    pub quick: bool,
    /// Skip the qemu guests (their figures say so in BENCHMARKS.md).
    #[arg(long)]
    pub no_vm: bool,
    /// Write the report here instead of BENCHMARKS.md at the repository root.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    P1,
    P2,
    P3,
    P4,
    P5,
}

/// Lengths and repeats.
pub struct Plan {
    pub p1_windows: usize,
    pub p1_window: Duration,
    pub p2_rounds: usize,
    pub p2_run: Duration,
    pub p3_events: usize,
    pub p3_lines: usize,
    pub p4_idle_runs: usize,
    pub p4_idle: Duration,
    pub p4_cgroups: usize,
    pub p4_duration: Duration,
    pub p5_reps: usize,
    pub vm_p2_rounds: usize,
    pub vm_p2_run: Duration,
    pub vm_window: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        let s = Duration::from_secs;
        Plan {
            p1_windows: 3,
            p1_window: s(if quick { 3 } else { 5 }),
            p2_rounds: if quick { 3 } else { 4 },
            p2_run: s(if quick { 5 } else { 8 }),
            p3_events: if quick { 1_000_000 } else { 2_000_000 },
            p3_lines: 1_200_000,
            p4_idle_runs: 3,
            p4_idle: s(5),
            p4_cgroups: 2_000,
            p4_duration: s(10),
            p5_reps: if quick { 2 } else { 3 },
            // Three rounds (the fewest that give a spread): each costs minutes under emulation.
            vm_p2_rounds: 3,
            vm_p2_run: s(if quick { 6 } else { 8 }),
            vm_window: s(4),
        }
    }
}

/// One summary line of a figure.
#[derive(Debug, Clone)]
pub struct Line {
    pub what: String,
    pub value: String,
    pub goal: String,
    /// Whether the goal was reached (None: no goal, or no comparison possible).
    pub met: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Measured {
    pub lines: Vec<Line>,
    /// Markdown: tables and notes.
    pub body: String,
}

/// One figure, measured or not (and then why not).
#[derive(Debug)]
pub struct Section {
    pub id: &'static str,
    /// Orders the sections of one figure in BENCHMARKS.md.
    pub order: u32,
    pub title: String,
    pub goal: &'static str,
    pub method: String,
    pub outcome: Result<Measured, String>,
}

impl Section {
    /// Run `f`, printing what it measures; an error becomes the reason it was not measured.
    pub fn measure(
        id: &'static str,
        order: u32,
        title: &str,
        method: &str,
        f: impl FnOnce() -> Result<Measured>,
    ) -> Section {
        println!("\n==> {id}: {title}");
        let start = Instant::now();
        let outcome = f().map_err(|e| format!("{e:#}"));
        match &outcome {
            Ok(m) => {
                for l in &m.lines {
                    println!("<== {id}: {}: {}", l.what, l.value);
                }
            }
            Err(e) => println!("<== {id}: not measured: {e}"),
        }
        println!("    ({:.0} s)", start.elapsed().as_secs_f64());
        Section::new(id, order, title, method, outcome)
    }

    pub fn missing(id: &'static str, order: u32, title: &str, method: &str, why: &str) -> Section {
        println!("<== {id}: {title}: not measured: {why}");
        Section::new(id, order, title, method, Err(why.to_string()))
    }

    fn new(
        id: &'static str,
        order: u32,
        title: &str,
        method: &str,
        outcome: Result<Measured, String>,
    ) -> Section {
        Section {
            id,
            order,
            title: title.to_string(),
            goal: goal(id),
            method: method.to_string(),
            outcome,
        }
    }
}

/// The goal of a figure (P1 to P5).
fn goal(id: &str) -> &'static str {
    match id {
        "P1" => P1_GOAL,
        "P2" => P2_GOAL,
        "P3" => P3_GOAL,
        "P4" => P4_GOAL,
        _ => P5_GOAL,
    }
}

const P1_GOAL: &str = "every cfstrace program <= the peer's ns/hit on the same attach point";
const P2_GOAL: &str = "<= 2 % added IRQs-off time";
const P3_GOAL: &str = ">= 5 M events/s decode + aggregate on one core; `report` >= 2 M lines/s";
const P4_GOAL: &str = "0 lost, peak RSS < 64 MB, report in seconds";
const P5_GOAL: &str = "culprit named <= 2 s after `watch` starts; attach < 1 s";

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if !cmd::is_root() {
        bail!(
            "cargo xtask bench needs root (cgroups, BPF, bpf_stats): run it as root, e.g. \
             `sudo -E cargo xtask bench`"
        );
    }
    proc::catch_interrupts();
    let start = Instant::now();
    setup::ensure(setup::Needs::Test, true)?;
    println!(
        "bench: needs {} (apt), for the peer and the per-program figures",
        setup::BENCH_APT_PACKAGES.join(" ")
    );
    setup::ensure_apt_packages(setup::BENCH_APT_PACKAGES)?;
    let bin = cmd::build_tracer()?;
    // Before the bench writes anything: the commit it measures.
    let machine = report::Machine::collect();
    let plan = Plan::new(args.quick);
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut sections = Vec::new();

    // Quiet machine first: throughput and idle memory must not share the CPUs with a storm.
    let quiet: [HostFigure; 2] = [
        (
            Part::P3,
            "P3",
            10,
            "reader throughput",
            || p3::METHOD.into(),
            p3::run,
        ),
        (
            Part::P4,
            "P4",
            10,
            "peak RSS of an idle record, host",
            || p45::IDLE_METHOD.into(),
            p45::idle_rss,
        ),
    ];
    measure_all(&quiet, &bin, &plan, &want, &mut sections)?;
    if want(Part::P1) || want(Part::P2) || want(Part::P5) {
        host_storm(&bin, &plan, &want, &mut sections)?;
    }
    proc::check()?;
    if args.no_vm {
        vms::none_run(&want, &mut sections, "skipped: `cargo xtask bench --no-vm`");
    } else if want(Part::P1) || want(Part::P2) || want(Part::P4) {
        vms::run(&bin, &plan, &want, &mut sections);
    }
    proc::check()?;
    sections.sort_by_key(|s| (s.id, s.order));
    let machine = report::Machine {
        load_end: report::loadavg(),
        ..machine
    };
    finish(args, &machine, &sections, start)
}

/// P5, P1 and P2 on the host, under one storm (removed again whatever happens).
fn host_storm(
    bin: &Path,
    plan: &Plan,
    want: &dyn Fn(Part) -> bool,
    out: &mut Vec<Section>,
) -> Result<()> {
    println!("\n==> host storm");
    let s = match storm::Storm::start(bin, storm::HOST) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("the host storm could not start: {e:#}");
            for (id, p) in [("P1", Part::P1), ("P2", Part::P2), ("P5", Part::P5)] {
                if want(p) {
                    out.push(Section::missing(id, 10, "host", "", &why));
                }
            }
            return Ok(());
        }
    };
    // Let every period timer start and the loops settle into throttling.
    proc::sleep(Duration::from_secs(3))?;
    let culprit = s.culprit.clone();
    if want(Part::P5) {
        out.push(Section::measure(
            "P5",
            10,
            "time to answer, host storm",
            p45::P5_METHOD,
            || p45::time_to_answer(bin, &culprit, plan),
        ));
    }
    proc::check()?;
    let storm_figures: [HostFigure; 3] = [
        (
            Part::P1,
            "P1",
            10,
            "cost per hit, host (tracepoints)",
            p1_host_method,
            p1::host,
        ),
        (
            Part::P2,
            "P2",
            10,
            "added IRQs-off time, host storm, directly",
            || p2::DIRECT_METHOD.into(),
            p2::host_direct,
        ),
        (
            Part::P2,
            "P2",
            11,
            "added IRQs-off time, host storm, by accounting",
            || p2::ACCOUNTING_METHOD.into(),
            p2::host_accounting,
        ),
    ];
    measure_all(&storm_figures, bin, plan, want, out)?;
    s.stop()
}

/// A figure measured on the host: (part, id, order, title, method, measurement).
type HostFigure = (
    Part,
    &'static str,
    u32,
    &'static str,
    fn() -> String,
    fn(&Path, &Plan) -> Result<Measured>,
);

/// Measure those of `figures` that are wanted, one after the other (Ctrl-C checked after each).
fn measure_all(
    figures: &[HostFigure],
    bin: &Path,
    plan: &Plan,
    want: &dyn Fn(Part) -> bool,
    out: &mut Vec<Section>,
) -> Result<()> {
    for &(part, id, order, title, method, measure) in figures {
        if want(part) {
            out.push(Section::measure(id, order, title, &method(), || {
                measure(bin, plan)
            }));
        }
        proc::check()?;
    }
    Ok(())
}

fn p1_host_method() -> String {
    let h = storm::HOST;
    format!(
        "{} Host storm: the culprit cgroup ({} busy loops, cpu {}/{} us, {}x the default CPU \
         weight) and {} fillers (one loop, {}/{} us) of `cargo xtask bench`.",
        p1::METHOD,
        h.culprit_workers,
        h.culprit_quota_us,
        h.culprit_period_us,
        storm::CULPRIT_WEIGHT,
        h.fillers,
        h.filler_quota_us,
        h.filler_period_us
    )
}

fn finish(
    args: &BenchArgs,
    machine: &report::Machine,
    sections: &[Section],
    start: Instant,
) -> Result<ExitCode> {
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| cmd::workspace_root().join("BENCHMARKS.md"));
    let text = report::markdown(machine, sections, start.elapsed().as_secs_f64());
    report::write(&path, &text)?;
    println!("\n{}", report::summary(sections).plain());
    println!(
        "wrote {} (commit {}, {:.0} min)",
        path.display(),
        machine.commit,
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(ExitCode::SUCCESS)
}
