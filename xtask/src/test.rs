//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.
//! The last line is `N passed, M failed` over the top-level steps and VM kernels (CI reads it).

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
            Box::new(|| setup::ensure(false)),
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
            "cargo build --release -p tracer (cfstrace with its eBPF object)",
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
        if !t.step(name, what, f) {
            return Ok(t.finish());
        }
    }

    println!(
        "\n==> vm: boot Debian's bookworm cloud kernel under qemu, run cfstrace (backend auto), check the report"
    );
    let args = VmArgs {
        cfstrace: Some(bin),
        ..VmArgs::default()
    };
    match vm::run(&args) {
        Ok(outcomes) => {
            for o in outcomes {
                if o.passed {
                    t.passed += 1;
                } else {
                    t.failed += 1;
                    println!("<== vm: FAILED: {}", o.label);
                }
            }
        }
        Err(e) => {
            println!("<== vm: FAILED: {e:#}");
            t.failed += 1;
        }
    }
    Ok(t.finish())
}
