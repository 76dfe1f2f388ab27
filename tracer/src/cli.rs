//! Command line (clap derive). Every flag says what it does; `--help` shows the examples.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bpf::loader::{ProbeSet, TracerOptions};
use crate::bpf::logs::LogLevel;
use crate::model::probe::{Backend, Probe};

const EXAMPLES: &str = "\
Examples:
  Live, on a suspect node (the SRE at 3 a.m.):
    sudo cfstrace watch                        # top cgroups, headroom, histogram; Ctrl-C stops
    sudo cfstrace record -d 10m -o node.jsonl  # keep the evidence...
    cfstrace report node.jsonl --svg node.svg  # ...read it anywhere, and plot it
  Around a reproduction (the kernel engineer):
    sudo cfstrace repro -- ./repro.sh          # record while it runs, then the report
    sudo cfstrace repro -d 5m --fail-under 50 -- stress-ng --cpu 64 --timeout 4m
    sudo cfstrace record -o run.jsonl -- ./repro.sh --scale 10
  See it work on this machine (makes throttled cgroups, traces them, cleans up):
    sudo cfstrace demo
  Check the kernel first:
    sudo cfstrace doctor

Around a command (`record -- CMD`, `repro -- CMD`): tracing starts before CMD and stops when it
exits. CMD runs in its own process group with stdin from /dev/null when stdin is a terminal.
Ctrl-C (or SIGTERM) is forwarded to CMD's process group; cfstrace keeps recording until CMD exits
(a second Ctrl-C, or 5 s, sends SIGKILL). At --duration, CMD's process group gets SIGTERM (SIGKILL
5 s later) and cfstrace exits 124, as timeout(1) does. The capture is complete either way.

Headroom below --highlight-under PCT % of watchdog_thresh (default 10) is highlighted in `watch`,
`report` and `repro`; --fail-under PCT (record, report, repro) turns it into exit status 3, and
into 4 when it cannot be judged (no callback seen, watchdog_thresh unknown or 0): a gate that
cannot judge does not pass. `report --json` and `repro --json` record it in the `gate` object.
A closed stdout (`| head`) ends the output quietly; the exit status is unchanged.

Exit status:
  0    success
  1    error (message on stderr), e.g. no permission to trace, CMD not found
  2    bad usage
  3    headroom below --fail-under (wins over CMD's status); diff --fail-worse: a worse verdict
  4    --fail-under could not judge: no callback seen, or watchdog_thresh unknown or 0
       (wins over CMD's status); diff --fail-worse: the node not comparable
  7    storm/demo: the guard stopped the storm (a span past --guard PCT of watchdog_thresh,
       or a callback longer than its period)
  N    record/repro -- CMD: CMD's exit status; 128+S when signal S killed it (130 Ctrl-C)
  124  record/repro -- CMD: --duration ran out and CMD was stopped";

/// `cfstrace 0.1.0 (git abc1234, 2026-12-02)`: the commit and its date come from build.rs,
/// `(git unknown)` when built outside a git checkout.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CFSTRACE_GIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "cfstrace",
    version = VERSION,
    about = "Names the cgroup whose CFS bandwidth period timer eats the hard-lockup watchdog's headroom",
    long_about = "cfstrace times every sched_cfs_period_timer callback (hard-IRQ context, interrupts off), counts the \
cfs_rqs it unthrottles and the entities it enqueues, and names the cgroup and application (YARN, docker, \
kubernetes, systemd, processes) whose period timer drives it hardest.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Quiet: no informational lines on stderr (progress, "wrote ...", "serving ...", the
    /// demo's chatter). Errors and warnings are still printed.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Verbose: more detail, e.g. every probe's attach reasons in full (the report shows
    /// reasons repeated across probes once, as numbered notes).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Commands,
}

impl Cli {
    pub fn verbosity(&self) -> crate::verbosity::Verbosity {
        crate::verbosity::Verbosity::from_flags(self.quiet, self.verbose)
    }
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// How to attach: auto picks, per probe, fentry then kprobe then tracepoints.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Kernel BTF to read structure offsets from, when /sys/kernel/btf/vmlinux is missing.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Attach only these probe families (comma-separated): the least overhead for a
    /// production node, e.g. `--probes period_timer,irq_span`. The report says which were
    /// left out by request. Default: all of them.
    #[arg(long, value_name = "LIST", value_enum, value_delimiter = ',')]
    pub probes: Option<Vec<Probe>>,
    /// Run the reader at this SCHED_FIFO priority so it keeps up on a node saturated by the
    /// storm it watches (as `perf record -r`); 0 runs it as a normal task.
    #[arg(long, value_name = "N", default_value_t = crate::bpf::loader::DEFAULT_RT_PRIORITY,
          value_parser = clap::value_parser!(u8).range(0..=99))]
    pub rt_priority: u8,
    /// Size of the ring buffer (e.g. 256K, 16M; a power of two of at least 4K). Default: 128K
    /// per CPU, between 4M and 64M. Callbacks whose events do not fit are still counted, from
    /// the kernel's own sums; the report says how many.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_buffer: Option<u64>,
    /// Print the programs' own messages from rare kernel-side paths on stderr (a failed kernel
    /// read, a reopened frame, a CSD list longer than the walk bound), up to this level. Off
    /// by default: the verifier then removes every log call.
    #[arg(long, value_enum, value_name = "LEVEL", default_value = "off")]
    pub log_level: LogLevel,
    /// Leave the processes' command lines out of the capture and the reports (their comm
    /// and pid stay; `record -- CMD` keeps only CMD's program): for a capture shared outside
    /// the team, as command lines can hold secrets.
    #[arg(long)]
    pub no_cmdline: bool,
    /// Test knob: walk at most N entries of an async-unthrottle CSD's cfs_rq list (default
    /// and maximum: the built-in bound), so a test can overflow the walk on demand.
    #[arg(long, value_name = "N", hide = true,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tracer_ebpf::MAX_LISTED)))]
    pub csd_walk_bound: Option<u32>,
}

impl TraceArgs {
    /// The tracer's options; a `--probes` list the tracer cannot honour is bad usage (exit 2),
    /// like any other argument error.
    pub fn options(&self) -> TracerOptions {
        let probes = match &self.probes {
            Some(list) => ProbeSet::requested(list).unwrap_or_else(|e| {
                <Cli as clap::CommandFactory>::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, e)
                    .exit()
            }),
            None => ProbeSet::default(),
        };
        TracerOptions {
            backend: self.backend,
            btf: self.btf.clone(),
            probes,
            rt_priority: self.rt_priority,
            ring_buffer: self.ring_buffer,
            log_level: self.log_level,
            csd_walk_bound: self.csd_walk_bound,
            no_cmdline: self.no_cmdline,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Trace and write a capture file (JSON Lines, cfstrace.capture/1), optionally while a
    /// command runs.
    #[command(
        long_about = "Trace and write a capture file (JSON Lines, cfstrace.capture/1) for `cfstrace report`.\n\n\
Without CMD it records until --duration or Ctrl-C. With `-- CMD ARGS...` it starts CMD once the \
probes are attached, records while CMD runs, stops when CMD exits and exits with CMD's status. \
On a terminal, stderr shows elapsed time, callbacks, async unthrottles and lost events.",
        after_help = "Examples:\n  sudo cfstrace record -d 60s -o node.jsonl\n  \
sudo cfstrace record -o repro.jsonl -- ./repro.sh --scale 10\n  \
sudo cfstrace record -d 5m -o run.jsonl -- stress-ng --cpu 64   # CMD stopped at 5 min, exit 124\n\n\
Exit status: 0 ok (without CMD); CMD's status (128+N if signal N killed it); 124 when --duration \
stopped CMD; 3 headroom below --fail-under; 4 --fail-under could not judge (no callback, \
watchdog_thresh unknown or 0); 1 error (CMD not found: no capture is written); 2 usage."
    )]
    Record(RecordArgs),
    /// Read a capture and print the report (table, or --json); --svg also draws it.
    #[command(after_help = "Examples:\n  cfstrace report node.jsonl\n  \
cfstrace report node.jsonl --json | jq .culprit\n  \
cfstrace report node.jsonl --svg node.svg       # open node.svg in a browser\n  \
cfstrace report node.jsonl --fail-under 50      # exit 3 when headroom < 50 %\n\n\
Exit status: 0 ok; 3 headroom below --fail-under; 4 --fail-under could not judge (no callback, \
watchdog_thresh unknown or 0); 1 error (unreadable capture); 2 usage.")]
    Report(ReportArgs),
    /// Compare two captures (before and after a kernel upgrade, a quota change, a fix): the
    /// node and each cgroup's figures side by side, and a verdict for each.
    #[command(
        long_about = "Compare two captures (before and after a kernel upgrade, a quota change, a fix).\n\n\
The node's headers are compared (host, kernel, CPUs, watchdog); cgroups are matched by path, else by \
workload identity (container id, container name, pod, YARN application, systemd unit), each pair saying \
how; cgroups only one side has are listed. Each figure is shown before and after with its change: worst \
IRQs-off span, headroom, callback p50/p99/max, unthrottled per period, spread, precursors, lost events. \
A change under --noise PCT % of the before value (or within the figure's resolution) is unchanged; the \
verdict (better, worse, unchanged, not comparable) is the first of worst span, precursors, callback \
max, p99, p50 that changed.",
        after_help = "Examples:\n  cfstrace diff before.jsonl after.jsonl\n  \
cfstrace diff before.jsonl after.jsonl --json | jq .node.verdict\n  \
cfstrace diff old-kernel.jsonl new-kernel.jsonl --fail-worse   # exit 3 when anything got worse\n\n\
Exit status: 0 ok (whatever the verdicts, without --fail-worse); with --fail-worse 3 when the node's or a \
matched cgroup's verdict is worse, 4 when the node is not comparable (no callback on a side); 1 error \
(a missing or unreadable capture); 2 usage."
    )]
    Diff(DiffArgs),
    /// Run a reproduction command, record while it runs, then print the report.
    #[command(
        long_about = "Run a reproduction command (after `--`), record while it runs, then print the report \
(table, or --json) and exit with the command's status.\n\n\
The capture is kept: -o FILE, by default cfstrace-repro-<UTC time>.jsonl in the current directory \
(its name is printed on stderr), for `cfstrace report` later. CMD is started, stopped and forwarded \
Ctrl-C exactly as by `record -- CMD`.",
        after_help = "Examples:\n  sudo cfstrace repro -- ./repro.sh\n  \
sudo cfstrace repro -d 5m --svg repro.svg -- stress-ng --cpu 64 --timeout 4m\n  \
sudo cfstrace repro --json --fail-under 50 -- ./repro.sh > report.json   # a CI gate\n\n\
Exit status: CMD's status (128+N if signal N killed it); 124 when --duration stopped CMD; 3 headroom \
below --fail-under (wins); 4 --fail-under could not judge (no callback, watchdog_thresh unknown or \
0; wins); 1 error (CMD not found: no capture is written); 2 usage."
    )]
    Repro(ReproArgs),
    /// Trace live: a full-screen view on a terminal (plain tables otherwise, or --json),
    /// refreshed every interval until Ctrl-C; optionally a Prometheus /metrics endpoint.
    Watch(WatchArgs),
    /// Check what this kernel offers (privileges, BTF offsets, symbols, each probe's attach)
    /// and judge the node: the known CFS-bandwidth fixes, its exposure now, findings.
    #[command(after_help = "Examples:\n  \
sudo cfstrace doctor\n  \
sudo cfstrace doctor --json --sample 3s > doctor.json\n  \
sudo cfstrace doctor --attach-cycles 20\n\n\
Findings have a severity: ok, info, warn, risk (the rules are in the README).\n\n\
Exit status: 0 ready, worst finding ok or info; 5 worst finding warn; 6 worst finding risk; \
1 cfstrace cannot trace here (a check failed, or a leak with --attach-cycles; wins over 5 \
and 6); 2 usage.")]
    Doctor(DoctorArgs),
    /// Run a built-in throttling storm on this machine, trace it, print the report, clean up.
    #[command(
        after_help = "The demo is a preset of `cfstrace storm`: three incident-shaped cgroups, \
traced with the same guard (on by default: --guard 10).\n\n\
Exit status: 0 ok (also after Ctrl-C); 7 the guard stopped the storm; 1 error; 2 usage."
    )]
    Demo(DemoArgs),
    /// Make a throttling storm of N cgroups x M busy workers, record it (a ramp of growing N,
    /// one capture a step), report it, and stop at once when the guard sees danger.
    #[command(
        long_about = "Make a throttling storm on this machine and record it: --cgroups N cgroups, each with \
--threads M busy worker processes under a CFS quota (--quota of --period), nested --depth deep, \
under <cpu mount>/cfstrace-storm-<pid>. It records itself for --duration into --output (default \
cfstrace-storm-<UTC time>.jsonl) and prints the report. --ramp START:STEP:END grows N step by step, \
one capture a step (FILE-nN.jsonl), and prints a table of the steps (--json: the cfstrace.storm/1 \
summary).\n\n\
The guard is on by default: while recording, the first timer-interrupt span longer than --guard PCT \
% of watchdog_thresh (default 10), or the first period-timer callback longer than its period, \
stops the storm at once (every quota lifted, every worker killed), says why, and exits 7. \
--no-guard lets a storm run into a hard lockup: only on a machine you can lose.\n\n\
Every cgroup and worker is removed on success, on error, on Ctrl-C and on SIGTERM; a run killed \
outright (SIGKILL) leaves its storm behind, and the next run removes it.",
        after_help = "Examples:\n  sudo cfstrace storm --cgroups 16 --threads 2 --period 5ms --quota 1ms\n  \
sudo cfstrace storm --ramp 8:8:64 -o storm.jsonl --json > ramp.json   # storm-n8.jsonl ... storm-n64.jsonl\n  \
sudo cfstrace storm --cgroups 100 --depth 3 --stagger --guard 1\n\n\
Exit status: 0 ok (also after Ctrl-C); 7 the guard stopped the storm; 1 error; 2 usage."
    )]
    Storm(StormArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:\n  \
source <(cfstrace completions bash)                              # this shell\n  \
cfstrace completions bash > /etc/bash_completion.d/cfstrace      # every new bash\n  \
cfstrace completions zsh > \"${fpath[1]}/_cfstrace\"\n  \
cfstrace completions fish > ~/.config/fish/completions/cfstrace.fish")]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) of cfstrace and its subcommands on stdout, or write
    /// cfstrace.1 and cfstrace-<command>.1 to --out DIR.
    #[command(after_help = "Examples:\n  \
cfstrace man | man -l -\n  \
cfstrace man --out /usr/local/share/man/man1 && mandb -q && man cfstrace-record")]
    Man(ManArgs),
    /// Busy-loop worker of the demo storm (internal).
    #[command(name = "__spin", hide = true)]
    Spin(SpinArgs),
}

/// How a report is shown (`report`, `repro`).
#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// Print the cfstrace.report/1 JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Highlight (and flag in the JSON's `headroom_alert`) headroom below PCT % of
    /// watchdog_thresh.
    #[arg(long, value_name = "PCT", default_value = "10", value_parser = crate::analysis::headroom::parse_pct)]
    pub highlight_under: f64,
    /// Also draw the capture as an SVG (opens in any browser): callback time over time for
    /// the top 5 cgroups and the worst timer-interrupt spans, log scale, lines at each
    /// cgroup's period and at watchdog_thresh, the culprit marked; and the callback-time
    /// histogram. The table or JSON is printed as usual.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: Option<PathBuf>,
}

/// The headroom gate (`record`, `report`, `repro`).
#[derive(Args, Debug, Clone, Copy)]
pub struct GateArgs {
    /// Exit with status 3 if the watchdog's headroom fell below PCT % of watchdog_thresh,
    /// 4 if it cannot be judged (no callback seen, watchdog_thresh unknown or 0); either wins
    /// over CMD's status. The report's JSON records the verdict in `gate`.
    #[arg(long, value_name = "PCT", value_parser = crate::analysis::headroom::parse_pct)]
    pub fail_under: Option<f64>,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 8s, 2m). Default: until Ctrl-C, or until CMD exits.
    /// With CMD still running then, CMD's process group gets SIGTERM (SIGKILL 5 s later)
    /// and the exit status is 124, as timeout(1).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Capture file to write (replaced if it exists).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Command (after `--`) to run while recording: recording stops when it exits and
    /// cfstrace exits with its status. Ctrl-C is forwarded to it.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Capture file written by `cfstrace record` (or `repro`).
    pub file: PathBuf,
    #[command(flatten)]
    pub show: ShowArgs,
    #[command(flatten)]
    pub gate: GateArgs,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The capture before the change (written by `cfstrace record`, `repro` or `demo`).
    pub before: PathBuf,
    /// The capture after it (the same file twice is allowed: everything unchanged).
    pub after: PathBuf,
    /// Print the cfstrace.diff/1 JSON document instead of the text.
    #[arg(long)]
    pub json: bool,
    /// A change under PCT % of the before value is "unchanged" (the figure's quantile
    /// resolution and a floor of 1 us or 1 count apply too).
    #[arg(long, value_name = "PCT", default_value = "10", value_parser = crate::analysis::headroom::parse_pct)]
    pub noise: f64,
    /// Exit with status 3 when the node's or any matched cgroup's verdict is worse, 4 when
    /// the node is not comparable (no callback on a side).
    #[arg(long)]
    pub fail_worse: bool,
}

#[derive(Args, Debug)]
pub struct ReproArgs {
    /// Stop after this long even if CMD still runs: CMD's process group gets SIGTERM
    /// (SIGKILL 5 s later), the report is printed, exit status 124. Default: until CMD exits.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Capture file to write. Default: cfstrace-repro-<UTC time>.jsonl in the current
    /// directory.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub show: ShowArgs,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// The reproduction command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Length of each interval (e.g. 1s, 500ms).
    #[arg(long, short = 'i', default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this long. Default: until Ctrl-C.
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// JSON Lines (`cfstrace.watch/1`) instead of the view: a `start` line with the static
    /// facts, one `interval` line per interval (wall-clock bounds, `partial` for the one the
    /// run ends in), `figures` lines when those change, an `end` line. --cgroup and --top cut
    /// `cgroups` the same way; node figures stay node-wide.
    #[arg(long)]
    pub json: bool,
    /// Highlight (and flag in the JSON's `headroom_alert`) headroom below PCT % of
    /// watchdog_thresh.
    #[arg(long, value_name = "PCT", default_value = "10", value_parser = crate::analysis::headroom::parse_pct)]
    pub highlight_under: f64,
    /// Show only cgroups whose path matches REGEX (e.g. 'kubepods', '^/yarn/'). Headroom,
    /// events and the per-CPU figures still cover the whole node.
    #[arg(long, value_name = "REGEX", value_parser = parse_regex)]
    pub cgroup: Option<regex::Regex>,
    /// Show the N cgroups with the most IRQs-off time in the interval.
    #[arg(long, value_name = "N", default_value_t = crate::commands::watch::DEFAULT_TOP,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u64).range(1..=10_000), |n| n as usize))]
    pub top: usize,
    /// Serve Prometheus metrics (OpenMetrics text 1.0.0) at http://ADDR/metrics: `:9090` or
    /// `9090` listen on 127.0.0.1 only, `0.0.0.0:9090` on every interface. Histograms and
    /// counters are cumulative since start. Default: off.
    #[arg(long, value_name = "ADDR", value_parser = crate::render::prometheus::parse_listen_addr)]
    pub prometheus: Option<std::net::SocketAddr>,
    /// Cgroups with their own Prometheus series; later or quieter ones (and those --cgroup
    /// does not match) are summed into one cgroup="other" series.
    #[arg(long, value_name = "N", default_value_t = crate::render::prometheus::DEFAULT_MAX_CGROUPS,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u64).range(1..=100_000), |n| n as usize))]
    pub max_cgroups: usize,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Also attach and detach N times and check that no BPF program, map or link is left
    /// behind (counted through the bpf syscalls). Exit status 1 on a leak.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub attach_cycles: Option<u32>,
    /// Print the cfstrace.doctor/1 JSON document (checks, probes, fixes, exposure, findings,
    /// verdict) instead of the lines.
    #[arg(long)]
    pub json: bool,
    /// How long to watch the quota'd cgroups' cpu.stat for throttling.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub sample: Duration,
}

/// The storm's guard rail (`storm`, `demo`).
#[derive(Args, Debug, Clone, Copy)]
pub struct GuardArgs {
    /// Stop the storm at once when a timer-interrupt span passes PCT % of watchdog_thresh
    /// (or a callback outlasts its period). Above 0, at most 100; e.g. 0.001 is 100 us of
    /// a 10 s watchdog_thresh.
    #[arg(long, value_name = "PCT", default_value = "10", value_parser = parse_guard_pct)]
    pub guard: f64,
    /// No guard: the storm runs its course, into a hard lockup if it gets there. Only on a
    /// machine you can lose.
    #[arg(long, conflicts_with = "guard")]
    pub no_guard: bool,
}

/// `--guard`: a percentage above 0.
pub fn parse_guard_pct(s: &str) -> Result<f64, String> {
    let v = crate::analysis::headroom::parse_pct(s)?;
    if v <= 0.0 {
        return Err("must be above 0 (use --no-guard to turn the guard off)".into());
    }
    Ok(v)
}

/// `--quota`: a time per period, or a share of the period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuotaArg {
    Time(Duration),
    /// % of the period.
    Share(f64),
}

impl QuotaArg {
    /// In microseconds, for a period of `period_us`.
    pub fn us(self, period_us: u64) -> u64 {
        match self {
            QuotaArg::Time(d) => d.as_micros() as u64,
            QuotaArg::Share(pct) => (period_us as f64 * pct / 100.0).round() as u64,
        }
    }
}

/// `--quota 1ms` or `--quota 20%` (of the period).
pub fn parse_quota(s: &str) -> Result<QuotaArg, String> {
    if let Some(pct) = s.strip_suffix('%') {
        let v: f64 = pct.parse().map_err(|_| {
            format!("`{s}` is neither a time (1ms) nor a share of the period (20%)")
        })?;
        if !(v > 0.0 && v.is_finite()) {
            return Err(format!("share {v}% must be above 0"));
        }
        return Ok(QuotaArg::Share(v));
    }
    parse_duration(s).map(QuotaArg::Time)
}

/// A ramp's cgroup counts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp(pub Vec<usize>);

/// `--ramp START:STEP:END`: the cgroup counts of a ramp, START, START+STEP, ... up to END.
pub fn parse_ramp(s: &str) -> Result<Ramp, String> {
    let bad = || format!("`{s}` is not START:STEP:END (e.g. 8:8:64, counts of cgroups)");
    let parts: Vec<usize> = s
        .split(':')
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [start, step, end] = parts[..] else {
        return Err(bad());
    };
    if start == 0 || step == 0 || end < start {
        return Err(format!(
            "`{s}`: START and STEP must be at least 1 and END at least START"
        ));
    }
    if end > 100_000 {
        return Err(format!("`{s}`: at most 100000 cgroups"));
    }
    Ok(Ramp((start..=end).step_by(step).collect()))
}

#[derive(Args, Debug)]
pub struct StormArgs {
    /// Cgroups in the storm (each with its own quota and period timer).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub cgroups: u32,
    /// Busy worker processes in each cgroup (one thread each).
    #[arg(long, short = 't', value_name = "M", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub threads: u32,
    /// Each cgroup's CFS period (1ms to 1s).
    #[arg(long, value_name = "DURATION", default_value = "5ms", value_parser = parse_duration)]
    pub period: Duration,
    /// Each cgroup's quota per period: a time (1ms; at least 1ms) or a share of the period
    /// (20%).
    #[arg(long, value_name = "DURATION|PCT%", default_value = "20%", value_parser = parse_quota)]
    pub quota: QuotaArg,
    /// Nesting: each cgroup under DEPTH-1 shared intermediate cgroups (n1/n2/.../cg0007);
    /// only the leaves get quotas.
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=32))]
    pub depth: u32,
    /// Spread the quota writes evenly across one period instead of writing them back to back.
    #[arg(long)]
    pub stagger: bool,
    /// How long to record (each step of a ramp).
    #[arg(long, short = 'd', default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Capture file (a ramp inserts -nN before the extension: storm-n8.jsonl). Default:
    /// cfstrace-storm-<UTC time>.jsonl in the current directory.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Grow the storm: START:STEP:END cgroups (8:8:64 is 8, 16, ..., 64), one recording and
    /// one capture a step, stopping at the first step the guard stops.
    #[arg(long, value_name = "START:STEP:END", value_parser = parse_ramp, conflicts_with = "cgroups")]
    pub ramp: Option<Ramp>,
    /// Print the cfstrace.storm/1 summary (the spec, each step's capture and figures, and why
    /// it stopped) instead of the report or the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How long to trace the storm.
    #[arg(long, short = 'd', default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Keep the capture here (default: a temporary file, removed afterwards).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page a command (cfstrace.1, cfstrace-record.1, ...) into DIR instead of
    /// printing them all on stdout.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SpinArgs {
    #[arg(long, default_value = "spin")]
    pub comm: String,
}

pub fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| e.to_string())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 8s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// `--ring-buffer`: bytes with an optional K or M (binary) suffix; the kernel wants a power
/// of two of whole pages.
pub fn parse_ring_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let mul: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        _ => return Err(format!("unknown unit {unit:?} (examples: 256K, 16M)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 256K, 16M)"))?;
    let bytes = n
        .checked_mul(mul)
        .filter(|b| *b <= 1 << 30)
        .ok_or_else(|| "at most 1G".to_string())?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!(
            "{bytes} bytes: the ring buffer must be a power of two of at least 4K"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_syntax() {
        assert_eq!(parse_ramp("8:8:32"), Ok(Ramp(vec![8, 16, 24, 32])));
        // END need not be on the grid: the last step is the last one at or below it.
        assert_eq!(parse_ramp("1:5:12"), Ok(Ramp(vec![1, 6, 11])));
        assert_eq!(parse_ramp("4:1:4"), Ok(Ramp(vec![4])));
        for bad in [
            "8:8",
            "8,16",
            "0:1:4",
            "4:0:8",
            "8:1:4",
            "a:1:2",
            "1:1:200000",
            "",
        ] {
            assert!(parse_ramp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quota_is_a_time_or_a_share() {
        assert_eq!(
            parse_quota("1ms"),
            Ok(QuotaArg::Time(Duration::from_millis(1)))
        );
        assert_eq!(parse_quota("20%"), Ok(QuotaArg::Share(20.0)));
        assert_eq!(parse_quota("20%").unwrap().us(5_000), 1_000);
        assert_eq!(parse_quota("1500us").unwrap().us(5_000), 1_500);
        for bad in ["0%", "-5%", "x%", "fast", "0s"] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
        assert!(parse_guard_pct("0").is_err());
        assert_eq!(parse_guard_pct("0.001"), Ok(0.001));
    }
    use clap::CommandFactory;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("256K"), Ok(256 << 10));
        assert_eq!(parse_ring_size("16m"), Ok(16 << 20));
        assert_eq!(parse_ring_size("16MiB"), Ok(16 << 20));
        assert!(parse_ring_size("3000").is_err(), "not a power of two");
        assert!(parse_ring_size("2K").is_err(), "below a page");
        assert!(parse_ring_size("4G").is_err());
        assert!(parse_ring_size("12X").is_err());
        assert!(parse_ring_size("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_commit() {
        let re = regex::Regex::new(
            r"^\d+\.\d+\.\d+ \(git ([0-9a-f]{7,40}, \d{4}-\d{2}-\d{2}|unknown)\)$",
        )
        .unwrap();
        assert!(re.is_match(VERSION), "{VERSION:?}");
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        let shown = Cli::command().render_version();
        assert_eq!(shown.trim_end(), format!("cfstrace {VERSION}"));
    }

    #[test]
    fn quiet_and_verbose_are_global_and_exclusive() {
        use crate::verbosity::Verbosity;
        let v = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.verbosity());
        assert_eq!(v(&["cfstrace", "report", "x"]).unwrap(), Verbosity::Normal);
        assert_eq!(
            v(&["cfstrace", "-q", "report", "x"]).unwrap(),
            Verbosity::Quiet
        );
        assert_eq!(
            v(&["cfstrace", "report", "x", "-q"]).unwrap(),
            Verbosity::Quiet
        );
        assert_eq!(
            v(&["cfstrace", "report", "-vv", "x"]).unwrap(),
            Verbosity::Verbose
        );
        assert!(v(&["cfstrace", "report", "-q", "-v", "x"]).is_err());
        // After `--` they belong to CMD.
        let c = Cli::try_parse_from(["cfstrace", "record", "-o", "x", "--", "grep", "-q", "a"])
            .unwrap();
        assert_eq!(c.verbosity(), Verbosity::Normal);
        let Commands::Record(a) = c.command else {
            panic!("not record")
        };
        assert_eq!(a.command, vec!["grep", "-q", "a"]);
        match Cli::try_parse_from(["cfstrace", "completions", "zsh"])
            .unwrap()
            .command
        {
            Commands::Completions(a) => assert_eq!(a.shell, clap_complete::Shell::Zsh),
            _ => panic!("not completions"),
        }
        assert!(Cli::try_parse_from(["cfstrace", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn record_with_command() {
        let c = Cli::try_parse_from([
            "cfstrace",
            "record",
            "-o",
            "x.jsonl",
            "--duration",
            "8s",
            "--",
            "sleep",
            "1",
        ])
        .unwrap();
        match c.command {
            Commands::Record(a) => {
                assert_eq!(a.duration, Some(Duration::from_secs(8)));
                assert_eq!(a.command, vec!["sleep", "1"]);
            }
            _ => panic!("not record"),
        }
        assert!(parse_duration("0s").is_err());
        for (args, want) in [
            (&["cfstrace", "report", "x.jsonl"][..], 10.0),
            (
                &["cfstrace", "report", "x.jsonl", "--highlight-under", "25%"][..],
                25.0,
            ),
        ] {
            match Cli::try_parse_from(args).unwrap().command {
                Commands::Report(a) => assert_eq!(a.show.highlight_under, want),
                _ => panic!("not report"),
            }
        }
        match Cli::try_parse_from(["cfstrace", "watch", "--highlight-under", "0"])
            .unwrap()
            .command
        {
            Commands::Watch(a) => assert_eq!(a.highlight_under, 0.0),
            _ => panic!("not watch"),
        }
        match Cli::try_parse_from(["cfstrace", "watch"]).unwrap().command {
            Commands::Watch(a) => {
                assert_eq!(a.highlight_under, crate::report::DEFAULT_HIGHLIGHT_PCT)
            }
            _ => panic!("not watch"),
        }
        assert!(
            Cli::try_parse_from(["cfstrace", "report", "x", "--highlight-under", "101"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["cfstrace", "record"]).is_err(),
            "-o is required"
        );
        match Cli::try_parse_from(["cfstrace", "repro", "-d", "2s", "--", "sh", "-c", "exit 3"])
            .unwrap()
            .command
        {
            Commands::Repro(a) => {
                assert_eq!(a.duration, Some(Duration::from_secs(2)));
                assert_eq!(a.output, None);
                assert_eq!(a.command, vec!["sh", "-c", "exit 3"]);
            }
            _ => panic!("not repro"),
        }
        assert!(
            Cli::try_parse_from(["cfstrace", "repro"]).is_err(),
            "repro needs CMD"
        );
        match Cli::try_parse_from(["cfstrace", "report", "x", "--svg", "x.svg"])
            .unwrap()
            .command
        {
            Commands::Report(a) => assert_eq!(a.show.svg, Some(PathBuf::from("x.svg"))),
            _ => panic!("not report"),
        }
    }
}
