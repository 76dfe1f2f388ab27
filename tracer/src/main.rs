//! `cfstrace`: parse the command line, install the Ctrl-C handling, run the subcommand, and turn
//! its outcome into an exit status (documented in `--help` and the README).
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::Parser as _;

use cfstrace::cgroups::storm;
use cfstrace::cli::{Cli, Commands};
use cfstrace::commands::{demo, doctor, record, report, repro, watch};
use cfstrace::session::signals;

fn run(cli: Cli, stop: &AtomicBool) -> Result<ExitCode> {
    match cli.command {
        Commands::Record(a) => record::run(a, stop),
        Commands::Report(a) => report::run(a),
        Commands::Repro(a) => repro::run(a, stop),
        Commands::Watch(a) => watch::run(&a, stop),
        Commands::Doctor(a) => doctor::run(&a),
        Commands::Demo(a) => demo::run(&a, stop),
        Commands::Spin(a) => storm::spin_worker(&a.comm),
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
    let stop = match signals::stop_flag() {
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
