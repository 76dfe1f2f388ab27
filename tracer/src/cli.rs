//! Command line (clap derive). Every flag says what it does; `--help` shows the examples.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::probes::Backend;

const EXAMPLES: &str = "\
Examples:
  Live, on a suspect node:
    sudo cfstrace watch                      # figures every second until Ctrl-C
  Capture during a reproduction, then read it anywhere:
    sudo cfstrace record --duration 60s -o storm.jsonl
    sudo cfstrace record -o repro.jsonl -- ./run-repro.sh
    cfstrace report storm.jsonl              # table;  --json for the cfstrace.report/1 document
  See it work on this machine (makes throttled cgroups, traces them, cleans up):
    sudo cfstrace demo

Headroom below --highlight-under PCT % of watchdog_thresh (default 10) is highlighted in
`watch` and `report`; --fail-under PCT (record, report) turns it into exit status 3.

Exit status: 0 success; 1 error (message on stderr); 2 bad usage; 3 headroom below
--fail-under. `record -- CMD` exits with CMD's status when CMD ran to completion (unless the
--fail-under gate fails, which wins).";

#[derive(Parser, Debug)]
#[command(
    name = "cfstrace",
    version,
    about = "Names the cgroup whose CFS bandwidth period timer eats the hard-lockup watchdog's headroom",
    long_about = "cfstrace times every sched_cfs_period_timer callback (hard-IRQ context, interrupts off), counts the \
cfs_rqs it unthrottles and the entities it enqueues, and names the cgroup and application (YARN, docker, \
kubernetes, systemd, processes) whose period timer drives it hardest.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// How to attach: auto picks, per probe, fentry then kprobe then tracepoints.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Kernel BTF to read structure offsets from, when /sys/kernel/btf/vmlinux is missing.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Trace and write a capture file (JSON Lines, cfstrace.capture/1).
    Record {
        /// Stop after this long (e.g. 8s, 2m). Default: until Ctrl-C or until CMD exits.
        #[arg(long, short = 'd', value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Capture file to write.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        trace: TraceArgs,
        /// Exit with status 3 if the watchdog's headroom fell below PCT % of watchdog_thresh.
        #[arg(long, value_name = "PCT", value_parser = crate::gate::parse_pct)]
        fail_under: Option<f64>,
        /// Command to run while recording; recording stops when it exits.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Read a capture and print the report (table, or --json).
    Report {
        /// Capture file written by `cfstrace record`.
        file: PathBuf,
        /// Print the cfstrace.report/1 JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Exit with status 3 if the watchdog's headroom fell below PCT % of watchdog_thresh.
        #[arg(long, value_name = "PCT", value_parser = crate::gate::parse_pct)]
        fail_under: Option<f64>,
        /// Highlight (and flag in the JSON's `headroom_alert`) headroom below PCT % of
        /// watchdog_thresh.
        #[arg(long, value_name = "PCT", default_value = "10", value_parser = crate::gate::parse_pct)]
        highlight_under: f64,
    },
    /// Trace live and print the figures every interval until Ctrl-C.
    Watch {
        /// Length of each interval (e.g. 1s, 500ms).
        #[arg(long, short = 'i', default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this long. Default: until Ctrl-C.
        #[arg(long, short = 'd', value_parser = parse_duration)]
        duration: Option<Duration>,
        /// One JSON report per interval (JSON Lines) instead of the table.
        #[arg(long)]
        json: bool,
        /// Highlight (and flag in the JSON's `headroom_alert`) headroom below PCT % of
        /// watchdog_thresh.
        #[arg(long, value_name = "PCT", default_value = "10", value_parser = crate::gate::parse_pct)]
        highlight_under: f64,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Check what this kernel offers: privileges, BTF offsets, symbols, and each probe's attach.
    Doctor {
        #[command(flatten)]
        trace: TraceArgs,
        /// Also attach and detach N times and check that no BPF program, map or link is left
        /// behind (counted through the bpf syscalls). Exit status 1 on a leak.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        attach_cycles: Option<u32>,
    },
    /// Run a built-in throttling storm on this machine, trace it, print the report, clean up.
    Demo {
        /// How long to trace the storm.
        #[arg(long, short = 'd', default_value = "8s", value_parser = parse_duration)]
        duration: Duration,
        /// Keep the capture here (default: a temporary file, removed afterwards).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Busy-loop worker of the demo storm (internal).
    #[command(name = "__spin", hide = true)]
    Spin {
        #[arg(long, default_value = "spin")]
        comm: String,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 8s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
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
            Commands::Record {
                duration, command, ..
            } => {
                assert_eq!(duration, Some(Duration::from_secs(8)));
                assert_eq!(command, vec!["sleep", "1"]);
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
                Commands::Report {
                    highlight_under, ..
                } => assert_eq!(highlight_under, want),
                _ => panic!("not report"),
            }
        }
        match Cli::try_parse_from(["cfstrace", "watch", "--highlight-under", "0"])
            .unwrap()
            .command
        {
            Commands::Watch {
                highlight_under, ..
            } => assert_eq!(highlight_under, 0.0),
            _ => panic!("not watch"),
        }
        match Cli::try_parse_from(["cfstrace", "watch"]).unwrap().command {
            Commands::Watch {
                highlight_under, ..
            } => assert_eq!(highlight_under, crate::report::DEFAULT_HIGHLIGHT_PCT),
            _ => panic!("not watch"),
        }
        assert!(
            Cli::try_parse_from(["cfstrace", "report", "x", "--highlight-under", "101"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["cfstrace", "record"]).is_err(),
            "-o is required"
        );
    }
}
