//! `cfstrace`: parse the command line, run the subcommand on the runtime, and turn its outcome
//! into an exit status (documented in `--help` and the README).
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use cfstrace::cgroups::storm;
use cfstrace::cli::{Cli, Commands};
use cfstrace::commands::{
    completions, demo, diff, doctor, man, record, report, repro, storm as storm_cmd, watch,
};
use cfstrace::verbosity;

async fn run(command: Commands) -> Result<ExitCode> {
    match command {
        Commands::Record(a) => record::run(a).await,
        Commands::Report(a) => report::run(a),
        Commands::Diff(a) => diff::run(&a),
        Commands::Repro(a) => repro::run(a).await,
        Commands::Watch(a) => watch::run(&a).await,
        Commands::Doctor(a) => doctor::run(&a),
        Commands::Demo(a) => demo::run(&a).await,
        Commands::Storm(a) => storm_cmd::run(&a).await,
        Commands::Completions(a) => completions::run(&a),
        Commands::Man(a) => man::run(&a),
        Commands::Spin(a) => storm::spin_worker(&a.comm),
    }
}

/// One thread runs everything that waits (ring buffer, signals, CMD, timers, /metrics); the
/// cgroup namer gets a blocking thread of its own. Enough for a reader that must stay small.
fn runtime(command: Commands) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let code = rt.block_on(run(command));
    // The namer's thread ends with its session; nothing else may hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
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
    // Once, before anything prints (see `verbosity` for why it is not passed down).
    verbosity::set(cli.verbosity());
    // The storm's busy loops and the generated texts need no runtime.
    let outcome = match cli.command {
        Commands::Spin(a) => storm::spin_worker(&a.comm),
        Commands::Completions(a) => completions::run(&a),
        Commands::Man(a) => man::run(&a),
        Commands::Diff(a) => diff::run(&a),
        command => runtime(command),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            // An error may quote a name or a file's bytes: escaped for the terminal.
            let text = error_chain(&e);
            eprintln!(
                "cfstrace: error: {}",
                cfstrace::model::escape::terminal_lines(&text)
            );
            ExitCode::FAILURE
        }
    }
}
