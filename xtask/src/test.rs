//! `cargo xtask test`: everything CI checks, in order: setup, fmt, clippy, build, cargo test (unit
//! tests and the host end-to-end test: the 6.18 host's row of the matrix, tracepoints only), then
//! the kernel matrix (`cargo xtask vm`: 4 Debian kernels x 4 backends, and per kernel the
//! co-firing storm of 120 cgroups with backend auto). Only a setup or build
//! failure stops it early. The last line is `N passed, M failed` over the steps and the
//! kernel x backend runs (CI reads it).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use crate::cmd;
use crate::setup;
use crate::vm::{self, VmArgs};

/// (name, what it does, the step).
type Step<'a> = (
    &'static str,
    &'static str,
    Box<dyn FnOnce() -> Result<()> + 'a>,
);

struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn step(&mut self, name: &str, what: &str, f: impl FnOnce() -> Result<()>) -> bool {
        println!("\n==> {name}: {what}");
        let start = Instant::now();
        match f() {
            Ok(()) => {
                println!("<== {name}: ok ({:.1}s)", start.elapsed().as_secs_f64());
                self.passed += 1;
                true
            }
            Err(e) => {
                println!(
                    "<== {name}: FAILED ({:.1}s): {e:#}",
                    start.elapsed().as_secs_f64()
                );
                self.failed += 1;
                false
            }
        }
    }

    fn finish(&self) -> ExitCode {
        println!();
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

pub fn run() -> Result<ExitCode> {
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    let root = cmd::workspace_root();
    let bin = cmd::cfstrace_bin();

    let steps: Vec<Step> = vec![
        (
            "setup",
            "check the toolchain, install what is missing",
            Box::new(|| setup::ensure(setup::Needs::Test, false)),
        ),
        (
            "fmt",
            "cargo fmt --all -- --check (formatting)",
            Box::new(|| cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))),
        ),
        (
            "clippy",
            "cargo clippy --workspace --all-targets -- -D warnings (lints, warnings are errors)",
            Box::new(|| {
                cmd::run(cmd::cargo().args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ),
        (
            "build",
            "cargo build --release -p tracer --target x86_64-unknown-linux-musl (the static \
             cfstrace with its eBPF object: the shipped file, run by the host tests and the VMs)",
            Box::new(|| cmd::build_tracer().map(|_| ())),
        ),
        (
            "cargo-test",
            "cargo test --workspace --release (unit tests + the host end-to-end test against real throttling)",
            Box::new(|| {
                cmd::run(
                    cmd::cargo()
                        .env("CFSTRACE_BIN", &bin)
                        .current_dir(&root)
                        .args(["test", "--workspace", "--release"]),
                )
            }),
        ),
    ];
    for (name, what, f) in steps {
        let ok = t.step(name, what, f);
        // Without the toolchain or the binary nothing after can run; a fmt, clippy or cargo test
        // failure does not stop the VM matrix (CI then reports everything at once).
        if !ok && (name == "setup" || name == "build") {
            return Ok(t.finish());
        }
    }

    let args = VmArgs {
        cfstrace: Some(bin),
        ..VmArgs::default()
    };
    println!(
        "\n==> vm: the kernel matrix under qemu: {} x backends {}, then {} co-firing cgroups \
         (backend auto), one boot per kernel",
        args.kernels
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" "),
        args.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(" "),
        args.cofire
    );
    let start = Instant::now();
    match vm::run(&args) {
        Ok(outcomes) => {
            let host = host_row();
            let failed = vm::print_summary(&outcomes, host.as_slice());
            t.passed += outcomes.len() - failed;
            t.failed += failed;
            println!(
                "<== vm: {} passed, {failed} failed ({:.0}s)",
                outcomes.len() - failed,
                start.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            println!("<== vm: FAILED: {e:#}");
            t.failed += 1;
        }
    }
    Ok(t.finish())
}

/// The host's row of the matrix, from the report the host test saved.
fn host_row() -> Option<vm::Row> {
    let path = cmd::target_dir().join("tmp/cfstrace-hosttest/report.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let kernel = r.get("kernel").and_then(|k| k.as_str()).unwrap_or("?");
    Some(vm::Row::from_report(
        &format!("{kernel} (host)"),
        "auto",
        &r,
    ))
}
