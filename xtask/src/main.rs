//! `cargo xtask`: toolchain setup, the demo, the tests, and real Debian kernels under qemu.
//!
//! ```text
//! cargo xtask setup                      install what is missing (apt packages, nightly rust-src, bpf-linker)
//! cargo xtask demo [-- ARGS...]          build cfstrace and run `cfstrace demo ARGS...` as root
//! cargo xtask vm [--kernel SUITE...]     boot Debian cloud kernels, run cfstrace in them per backend, check
//! cargo xtask test                       fmt, clippy, build, cargo test (host test), the kernel matrix
//! cargo xtask bench [--only p1,p3]       measure the tracer's own cost (P1-P5), write BENCHMARKS.md
//! ```

mod bench;
mod cmd;
mod demo;
mod setup;
mod soak;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "cfstrace development tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the toolchain and install only what is missing (idempotent).
    Setup {
        /// Only check; exit non-zero if something is missing.
        #[arg(long)]
        check: bool,
    },
    /// Build cfstrace (release) and run `cfstrace demo` as root.
    Demo {
        /// Extra arguments for `cfstrace demo` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian cloud kernels under qemu (default: bullseye bookworm trixie sid) and check what
    /// cfstrace measures in each, per backend (default: auto kprobe fentry tracepoint).
    Vm(Box<vm::VmArgs>),
    /// Run every check CI runs: fmt, clippy, build, cargo test (host test), the kernel matrix.
    Test,
    /// Measure the tracer's own cost and limits (issue 9's P1-P5) and write BENCHMARKS.md;
    /// installs bpftrace and bpftool. Figures only: never fails on a timing.
    Bench(bench::BenchArgs),
    /// Soak: `cfstrace record` over a storm with constant cgroup churn for 10 minutes, on this
    /// host and in a VM kernel, then 100 attach/detach cycles; RSS over time, unnamed live
    /// cgroups, lost events, kernel oopses, objects left behind. Exit 1 on any.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    cmd::add_cargo_bin_to_path();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup { check } => if check {
            setup::check()
        } else {
            setup::ensure(setup::Needs::Test, false)
        }
        .map(|()| ExitCode::SUCCESS),
        Command::Demo { args } => demo::run(&args),
        Command::Vm(args) => vm::run_cli(&args),
        Command::Test => test::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => soak::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
