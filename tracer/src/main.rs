use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use cfstrace::cli::{Cli, Commands, TraceArgs};
use cfstrace::probes::TracerOptions;
use cfstrace::{demo, doctor, gate, record, report, storm, watch};

fn tracer_options(t: &TraceArgs) -> TracerOptions {
    TracerOptions {
        backend: t.backend,
        btf: t.btf.clone(),
    }
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
                tracer: tracer_options(&trace),
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
            if let Some(status) = out.command_status {
                // Like a shell: the command's code, or 128 + the signal that killed it.
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(1)
                });
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Report {
            file,
            json,
            fail_under,
            highlight_under,
        } => {
            let mut rep = report::report_from_capture(&file)?;
            rep.set_highlight_under(highlight_under);
            if json {
                println!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                let color = std::io::IsTerminal::is_terminal(&std::io::stdout())
                    && std::env::var_os("NO_COLOR").is_none();
                print!("{}", report::render_text(&rep, color));
            }
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
            trace,
        } => {
            let opts = watch::WatchOptions {
                tracer: tracer_options(&trace),
                interval,
                duration,
                json,
                highlight_under,
            };
            watch::watch(&opts, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Doctor {
            trace,
            attach_cycles,
        } => doctor::doctor(&tracer_options(&trace), attach_cycles),
        Commands::Demo {
            duration,
            output,
            json,
            trace,
        } => {
            let opts = demo::DemoOptions {
                tracer: tracer_options(&trace),
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
