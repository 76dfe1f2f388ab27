use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use cfstrace::analysis::headroom as gate;
use cfstrace::bpf::loader::{ProbeSet, TracerOptions};
use cfstrace::cgroups::storm;
use cfstrace::cli::{Cli, Commands, TraceArgs};
use cfstrace::commands::{demo, doctor, repro, watch};
use cfstrace::report;
use cfstrace::session as record;

fn tracer_options(t: &TraceArgs) -> Result<TracerOptions> {
    let probes = match &t.probes {
        // A bad combination is bad usage (exit 2), like any other argument error.
        Some(list) => ProbeSet::requested(list).unwrap_or_else(|e| {
            <Cli as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit()
        }),
        None => ProbeSet::default(),
    };
    Ok(TracerOptions {
        backend: t.backend,
        btf: t.btf.clone(),
        probes,
        rt_priority: t.rt_priority,
        ring_buffer: t.ring_buffer,
    })
}

/// Say the gate's verdict on stderr; false when it fails.
fn gate_passes(rep: &report::Report, pct: f64) -> bool {
    match gate::judge(rep, pct) {
        gate::Verdict::Pass { headroom_pct } => {
            eprintln!("cfstrace: headroom {headroom_pct:.4}% of watchdog_thresh >= {pct}%: pass");
            true
        }
        gate::Verdict::Fail { headroom_pct } => {
            eprintln!("cfstrace: headroom {headroom_pct:.4}% of watchdog_thresh < {pct}%: FAIL");
            false
        }
        gate::Verdict::Unknown { why } => {
            eprintln!("cfstrace: headroom gate not judged: {why}");
            true
        }
    }
}

fn run(cli: Cli, stop: &AtomicBool) -> Result<ExitCode> {
    match cli.command {
        Commands::Record {
            duration,
            output,
            trace,
            fail_under,
            command,
        } => {
            let opts = record::RecordOptions {
                tracer: tracer_options(&trace)?,
                duration,
                output: output.clone(),
                command,
                progress: true,
            };
            let out = record::record(&opts, stop)
                .with_context(|| format!("recording to {}", output.display()))?;
            eprintln!(
                "cfstrace: wrote {} ({} period-timer callbacks, {} async unthrottles in {:.1}s, {} lost, stopped: {})",
                output.display(),
                out.periods,
                out.async_events,
                out.duration.as_secs_f64(),
                out.lost,
                out.reason.replace('_', " ")
            );
            if let Some(pct) = fail_under {
                let rep = report::report_from_capture(&output)?;
                if !gate_passes(&rep, pct) {
                    return Ok(ExitCode::from(gate::EXIT_HEADROOM));
                }
            }
            // CMD's status like a shell (128 + N for signal N), or 124 when --duration stopped it.
            Ok(ExitCode::from(out.exit_code.unwrap_or(0)))
        }
        Commands::Report {
            file,
            json,
            fail_under,
            highlight_under,
            svg,
        } => {
            let rep = print_report(&file, json, highlight_under, svg.as_deref())?;
            if let Some(pct) = fail_under
                && !gate_passes(&rep, pct)
            {
                return Ok(ExitCode::from(gate::EXIT_HEADROOM));
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Watch {
            interval,
            duration,
            json,
            highlight_under,
            cgroup,
            top,
            prometheus,
            max_cgroups,
            trace,
        } => {
            let opts = watch::WatchOptions {
                tracer: tracer_options(&trace)?,
                interval,
                duration,
                json,
                highlight_under,
                cgroup,
                top,
                prometheus,
                max_cgroups,
            };
            watch::watch(&opts, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Repro {
            duration,
            output,
            json,
            fail_under,
            highlight_under,
            svg,
            trace,
            command,
        } => {
            if let Some(prog) = command.first() {
                record::resolve_command(prog)?;
            }
            let output =
                output.unwrap_or_else(|| repro::default_capture_name(std::time::SystemTime::now()));
            eprintln!(
                "cfstrace: recording to {} while `{}` runs",
                output.display(),
                command.join(" ")
            );
            let opts = record::RecordOptions {
                tracer: tracer_options(&trace)?,
                duration,
                output: output.clone(),
                command,
                progress: true,
            };
            let out = record::record(&opts, stop)
                .with_context(|| format!("recording to {}", output.display()))?;
            eprintln!(
                "cfstrace: capture kept in {} ({} callbacks in {:.1}s, {} lost, stopped: {}); \
                 read it again with `cfstrace report {}`",
                output.display(),
                out.periods,
                out.duration.as_secs_f64(),
                out.lost,
                out.reason.replace('_', " "),
                output.display()
            );
            let rep = print_report(&output, json, highlight_under, svg.as_deref())?;
            if let Some(pct) = fail_under
                && !gate_passes(&rep, pct)
            {
                return Ok(ExitCode::from(gate::EXIT_HEADROOM));
            }
            Ok(ExitCode::from(out.exit_code.unwrap_or(0)))
        }
        Commands::Doctor {
            trace,
            attach_cycles,
        } => doctor::doctor(&tracer_options(&trace)?, attach_cycles),
        Commands::Demo {
            duration,
            output,
            json,
            trace,
        } => {
            let opts = demo::DemoOptions {
                tracer: tracer_options(&trace)?,
                duration,
                output,
                json,
            };
            demo::demo(&opts, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Spin { comm } => storm::spin_worker(&comm),
    }
}

/// Read a capture, print its report (JSON or table) on stdout, and draw it to `svg` if asked.
fn print_report(
    file: &std::path::Path,
    json: bool,
    highlight_under: f64,
    svg: Option<&std::path::Path>,
) -> Result<report::Report> {
    let (mut rep, plot) = match svg {
        Some(_) => {
            let (r, p) = cfstrace::render::svg::report_with_plot(file)?;
            (r, Some(p))
        }
        None => (report::report_from_capture(file)?, None),
    };
    rep.set_highlight_under(highlight_under);
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report::render_text(&rep, color));
    }
    if let (Some(out), Some(plot)) = (svg, plot) {
        cfstrace::render::svg::write_svg(&rep, &plot, out)?;
        eprintln!("cfstrace: wrote plot {}", out.display());
    }
    Ok(rep)
}

/// The error and its causes on one line, without repeating a cause that a message already
/// quotes (our thiserror messages embed their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = match record::stop_flag() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cfstrace: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, &stop) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cfstrace: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
