//! `cargo xtask vm`: boot real Debian cloud kernels under qemu with cfstrace in the initramfs,
//! throttle a YARN container with cpu.max, and check what cfstrace measures there, per backend.
//!
//! One boot per kernel: the guest prints facts about its kernel (kallsyms, ftrace, kprobe PMU,
//! BTF: read without cfstrace), starts the storm, then for each backend (auto, kprobe, fentry,
//! tracepoint) runs `cfstrace doctor --attach-cycles 20` (attach/detach 20 times, nothing left
//! behind) and `cfstrace record` + `report --json`, between console markers. Each report is checked
//! against what the facts say that style can truly measure on that kernel
//! (`cfstrace_tests::expect`). A kernel problem before cfstrace first runs is a boot flake (the
//! boot is retried once); one after it fails the run it happened in, with the console excerpt, and
//! the backends not run yet get a fresh boot. Then, where `auto` is among the backends, the
//! co-firing storm (`--cofire N`, default 120): N cgroups with the same period whose timers
//! expire together and run back to back in one timer interrupt; its report is checked for
//! interrupt spans holding many period timers, against its own headroom and spread arithmetic,
//! and against a digest of its capture (`expect::check_cofire`). One line per kernel x backend
//! and per co-firing run (`ok:`/`FAIL:`), then the matrix table and the co-firing table.
//!
//! The room: [`kernels`] fetches the Debian kernels, [`guest`] writes the guest's initramfs and
//! its /init, `boot` runs qemu and holds a guest to its time limits, `runs` chooses the
//! accelerator and boots each kernel as often as its runs need (the retries),
//! `console` reads the console back into runs, `judge` checks them and draws the tables; this
//! file is the CLI. The bench boots its guests through the same code.

pub mod boot;
pub mod console;
pub mod guest;
mod judge;
pub mod kernels;
pub(crate) mod runs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use cfstrace_tests::expect;
use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::{cmd, setup};
pub use boot::{Engine, Limits, Machine, Watch};
use guest::COFIRE_RUN;
use judge::{CofireRow, cofire_table, table};
pub use judge::{Outcome, Row};
use kernels::Kernel;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
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

pub const ALL_SUITES: [Suite; 4] = [Suite::Bullseye, Suite::Bookworm, Suite::Trixie, Suite::Sid];

/// A cfstrace `--backend`, by the name the tracer takes (the oracle's `expect::BACKENDS`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Backend(&'static str);

impl Backend {
    pub const AUTO: Backend = Backend("auto");

    pub fn name(self) -> &'static str {
        self.0
    }

    fn from_name(s: &str) -> Option<Backend> {
        ALL_BACKENDS.iter().copied().find(|b| b.0 == s)
    }
}

impl ValueEnum for Backend {
    fn value_variants<'a>() -> &'a [Self] {
        &ALL_BACKENDS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0))
    }
}

pub const ALL_BACKENDS: [Backend; 4] = {
    let b = expect::BACKENDS;
    [Backend(b[0]), Backend(b[1]), Backend(b[2]), Backend(b[3])]
};

/// One run in a boot: a backend's doctor + record, or the co-firing storm.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Job {
    Backend(Backend),
    Cofire,
    /// `cfstrace storm`: a ramp checking the forecast, and a ramp the guard stops (one kernel).
    Storm,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Backend(b) => b.name(),
            Job::Cofire => COFIRE_RUN,
            Job::Storm => guest::STORM_RUN,
        }
    }

    fn from_name(s: &str) -> Option<Job> {
        if s == COFIRE_RUN {
            return Some(Job::Cofire);
        }
        if s == guest::STORM_RUN {
            return Some(Job::Storm);
        }
        Backend::from_name(s).map(Job::Backend)
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
    /// Debian suite whose newest cloud kernel to boot (repeatable; default: all four).
    #[arg(long = "kernel", value_name = "SUITE", value_enum, num_args = 1..)]
    pub kernels: Vec<Suite>,
    /// cfstrace backends to run in each kernel, in this order, in one boot (repeatable; default:
    /// auto kprobe fentry tracepoint).
    #[arg(long = "backend", value_enum, num_args = 1..)]
    pub backends: Vec<Backend>,
    /// Keep the initramfs and the extracted kernel packages for inspection.
    #[arg(long)]
    pub keep: bool,
    /// qemu accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Multi-threaded TCG (one host thread per vCPU) instead of the default single-threaded TCG.
    /// For diagnosis only: with it, kernel text patching (ftrace, jump labels; every attach and
    /// detach) breaks the guest kernels within a few hundred patches (`--poke-stress 300`).
    #[arg(long)]
    pub mttcg: bool,
    /// Wall-clock limit per boot in seconds (default: 60 + 120 per backend with TCG).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Only boot and print each kernel's facts (BTF, kallsyms, ftrace, kprobes); needs no cfstrace.
    #[arg(long, alias = "smoke")]
    pub facts: bool,
    /// Diagnosis: no cfstrace; run N rounds of kernel text patching (a tracepoint's static key and
    /// the ftrace site of sched_cfs_period_timer switched on and off) under the storm.
    #[arg(long, value_name = "N")]
    pub poke_stress: Option<u32>,
    /// Kernels booted at once (default: the host's CPU count; each single-threaded TCG guest
    /// keeps one host core busy).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Boot each kernel this many times (flake and statistics hunting).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: u32,
    /// Attach/detach cycles of `cfstrace doctor --attach-cycles` per backend.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub cycles: u32,
    /// `cfstrace record --duration` per backend.
    #[arg(long, value_name = "DURATION", default_value = "8s")]
    pub duration: String,
    /// The container's cpu.max in the guest, as QUOTA,PERIOD in microseconds (experiments only:
    /// the checks are tuned for the default). Not 2000,10000: Debian kernels tick every 4 ms,
    /// so a 2 ms quota is overrun by up to a tick and the debt often takes two periods to repay,
    /// leaving half the callbacks with nothing to unthrottle.
    #[arg(long, value_name = "QUOTA,PERIOD", default_value = DEFAULT_CPU_MAX)]
    pub cpu_max: String,
    /// Busy loops in the container.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub busy: u32,
    /// Cgroups in the co-firing storm, run once per kernel after the backends, with the auto
    /// backend (only when `auto` is among them); 0 skips it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_COFIRE)]
    pub cofire: u32,
    /// The co-firing cgroups' cpu.max, as QUOTA,PERIOD in microseconds (the same for all).
    #[arg(long, value_name = "QUOTA,PERIOD", default_value = DEFAULT_COFIRE_CPU_MAX)]
    pub cofire_cpu_max: String,
    /// Skip the `cfstrace diff` boot (bookworm, with the co-firing run: one storm recorded in
    /// three phases on 1 vCPU with an instruction-counted clock, and two diffs).
    #[arg(long)]
    pub no_diff: bool,
    /// Use this cfstrace binary (it must be static) instead of building
    /// target/x86_64-unknown-linux-musl/release/cfstrace.
    #[arg(long, value_name = "PATH")]
    pub cfstrace: Option<PathBuf>,
    /// Also save each backend run's whole capture as DIR/<suite>-<release>-<backend>.jsonl
    /// (printed on the console by the guest: keep --duration short).
    #[arg(long, value_name = "DIR")]
    pub save_captures: Option<PathBuf>,
    /// `cfstrace doctor` and `record --log-level` in the guest: `debug` has each kernel's
    /// verifier check the programs with their log calls kept (the messages go to the console).
    #[arg(long, value_name = "LEVEL", default_value = "off",
          value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

const DEFAULT_CPU_MAX: &str = "5000,10000";
/// 120 cgroups: past the "100+", on 2 vCPUs under TCG (about 1.2 CPUs of busy loops
/// between their throttles, one interrupt of 120 callbacks every period).
const DEFAULT_COFIRE: u32 = 120;
/// The kernel's default period (100 ms) and its smallest quota (1 ms): every loop overruns it
/// to the next tick and stays throttled for a few periods, so every timer stays armed.
const DEFAULT_COFIRE_CPU_MAX: &str = "1000,100000";

impl Default for VmArgs {
    fn default() -> Self {
        VmArgs {
            kernels: ALL_SUITES.to_vec(),
            backends: ALL_BACKENDS.to_vec(),
            keep: false,
            accel: Accel::Auto,
            mttcg: false,
            timeout: None,
            facts: false,
            poke_stress: None,
            jobs: None,
            repeat: 1,
            cycles: 20,
            duration: "8s".into(),
            cpu_max: DEFAULT_CPU_MAX.into(),
            busy: 4,
            cofire: DEFAULT_COFIRE,
            cofire_cpu_max: DEFAULT_COFIRE_CPU_MAX.into(),
            no_diff: false,
            cfstrace: None,
            save_captures: None,
            log_level: "off".into(),
        }
    }
}

impl VmArgs {
    fn kernels(&self) -> Vec<Suite> {
        if self.kernels.is_empty() {
            ALL_SUITES.to_vec()
        } else {
            self.kernels.clone()
        }
    }

    fn backends(&self) -> Vec<Backend> {
        if self.backends.is_empty() {
            ALL_BACKENDS.to_vec()
        } else {
            self.backends.clone()
        }
    }

    /// The runs of one kernel, in boot order: the backends, then the co-firing storm.
    fn jobs(&self) -> Vec<Job> {
        let backends = self.backends();
        let cofire = self.cofire > 0 && backends.contains(&Backend::AUTO);
        let mut jobs: Vec<Job> = backends.into_iter().map(Job::Backend).collect();
        if cofire {
            jobs.push(Job::Cofire);
        }
        jobs
    }
}

pub fn run_cli(args: &VmArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let outcomes = run(args)?;
    let failed = print_summary(&outcomes, &[]);
    println!(
        "vm: {} passed, {failed} failed ({:.0}s)",
        outcomes.len() - failed,
        start.elapsed().as_secs_f64()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Print the outcome list, the warnings and the table (with `extra_rows`, e.g. the host's).
/// Returns the number of failed outcomes.
pub fn print_summary(outcomes: &[Outcome], extra_rows: &[Row]) -> usize {
    println!();
    for o in outcomes {
        println!("  {} {}", if o.passed { "ok  " } else { "FAIL" }, o.label);
    }
    let warnings: Vec<&String> = outcomes.iter().flat_map(|o| &o.warnings).collect();
    if !warnings.is_empty() {
        println!("\n!!!! {} warning(s) !!!!", warnings.len());
        for w in warnings {
            println!("!!!! {w}");
        }
    }
    let mut rows: Vec<Row> = outcomes.iter().filter_map(|o| o.row.clone()).collect();
    rows.extend(extra_rows.iter().cloned());
    if !rows.is_empty() {
        println!("\nmatrix (from this run's reports):\n\n{}", table(&rows));
    }
    let cofire: Vec<CofireRow> = outcomes.iter().filter_map(|o| o.cofire.clone()).collect();
    if !cofire.is_empty() {
        println!(
            "co-firing period timers (backend auto):\n\n{}",
            cofire_table(&cofire)
        );
    }
    outcomes.iter().filter(|o| !o.passed).count()
}

/// Run every requested kernel x backend; an error is returned only for problems before any boot
/// (setup, build); per-kernel problems become failed outcomes.
pub fn run(args: &VmArgs) -> Result<Vec<Outcome>> {
    let valid = |s: &str| {
        s.split_once(',')
            .is_some_and(|(q, p)| q.parse::<u64>().is_ok() && p.parse::<u64>().is_ok())
    };
    if !valid(&args.cpu_max) {
        bail!("--cpu-max wants QUOTA,PERIOD in microseconds, e.g. 5000,10000");
    }
    if !valid(&args.cofire_cpu_max) {
        bail!("--cofire-cpu-max wants QUOTA,PERIOD in microseconds, e.g. 1000,100000");
    }
    setup::ensure(setup::Needs::Test, true)?;
    let no_cfstrace = args.facts || args.poke_stress.is_some();
    let bin = match (&args.cfstrace, no_cfstrace) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(cmd::build_tracer()?),
    };
    let cache = cmd::target_dir().join("vm-cache");
    fs::create_dir_all(&cache)?;
    let archive = guest::build(bin.as_deref())?;
    let initrd = cache.join(format!("initramfs-{}.cpio", std::process::id()));
    let size = archive.write(&initrd)?;
    println!(
        "initramfs: {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / (1 << 20) as f64
    );
    // Kernels first (apt, sequential), then the boots.
    let mut outcomes = Vec::new();
    let mut ready: Vec<Kernel> = Vec::new();
    for suite in args.kernels() {
        let suite = suite.name();
        match kernels::fetch(suite, args.keep) {
            Ok(k) => {
                println!("{suite}: {} ({})", k.release, k.package);
                ready.push(k);
            }
            Err(e) => {
                let label = format!("{suite}: kernel download");
                println!("FAIL: {label}: {e:#}");
                outcomes.push(judge::fail(label));
            }
        }
    }
    outcomes.extend(boot_all(&ready, &initrd, args));
    if args.keep {
        println!("kept {}", initrd.display());
    } else {
        let _ = fs::remove_file(&initrd);
    }
    Ok(outcomes)
}

/// Every kernel's boots, `--jobs` kernels at a time (each single-threaded TCG guest keeps one
/// host core busy); the outcomes in the kernels' order.
fn boot_all(ready: &[Kernel], initrd: &Path, args: &VmArgs) -> Vec<Outcome> {
    let jobs = args
        .jobs
        .unwrap_or_else(default_jobs)
        .clamp(1, ready.len().max(1));
    if ready.len() > 1 {
        println!("booting {} kernel(s), {jobs} at a time", ready.len());
    }
    // Newest kernel first (they take longest), so the lanes end together: pop() takes the last.
    let mut queue: Vec<usize> = (0..ready.len()).collect();
    queue.sort_by(|&a, &b| kernels::version_cmp(&ready[a].release, &ready[b].release));
    let queue = std::sync::Mutex::new(queue);
    let results: std::sync::Mutex<Vec<(usize, Vec<Outcome>)>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for _ in 0..jobs {
            sc.spawn(|| {
                while let Some(i) = queue.lock().expect("queue").pop() {
                    let out = boot_kernel(&ready[i], initrd, args);
                    results.lock().expect("results").push((i, out));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().flat_map(|(_, o)| o).collect()
}

/// One kernel, `--repeat` times.
fn boot_kernel(kernel: &Kernel, initrd: &Path, args: &VmArgs) -> Vec<Outcome> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for round in 1..=args.repeat.max(1) {
        if args.repeat > 1 {
            println!("{}: round {round}/{}", kernel.suite, args.repeat);
        }
        if args.facts {
            out.push(judge::facts_only(kernel, initrd, args));
        } else if let Some(n) = args.poke_stress {
            out.push(judge::poke_stress(kernel, initrd, args, n));
        } else {
            out.extend(runs::run_kernel(kernel, initrd, args));
            if kernel.suite == guest::DIFF_SUITE
                && !args.no_diff
                && args.jobs().contains(&Job::Cofire)
            {
                out.push(runs::run_diff(kernel, initrd));
            }
        }
    }
    println!(
        "{}: done in {:.0}s",
        kernel.suite,
        t0.elapsed().as_secs_f64()
    );
    out
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cofire_runs_after_auto_only() {
        let mut a = VmArgs::default();
        assert_eq!(a.jobs().last(), Some(&Job::Cofire));
        a.backends = vec![Backend::from_name("kprobe").unwrap()];
        assert!(!a.jobs().contains(&Job::Cofire));
        a.backends = vec![Backend::AUTO];
        a.cofire = 0;
        assert_eq!(a.jobs(), [Job::Backend(Backend::AUTO)]);
    }
}
