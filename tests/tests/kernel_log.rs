//! Kernel-side messages (`--log-level`), on this host: a rare path is made to happen on demand
//! and its aya-log message must reach stderr at `--log-level debug`, and nothing at the default.
//!
//! The rare path: an async-unthrottle CSD whose cfs_rq list is longer than the walk bound. This
//! tracepoint-only 6.18 host cannot probe `unthrottle_cfs_rq`, so every CSD is listed at entry;
//! the hidden `--csd-walk-bound 0` makes any non-empty list overflow the walk, and a throttled
//! cgroup with loops on both CPUs makes CSDs (its period timer unthrottles the other CPU's cfs_rq
//! through one). The capture's `ASYNC_TRUNCATED` flags show the path ran in both records.
//!
//! Needs root (cgroups, BPF). Never skips. Runs a real throttling storm: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cfstrace_tests::{Run, cfstrace_bin, run_with_timeout, scratch, test_cgroups};
use serde_json::Value;

/// `tracer_ebpf::ASYNC_TRUNCATED`: the CSD's list walk stopped at the bound.
const ASYNC_TRUNCATED: u64 = 1 << 15;
/// The prefix of every kernel message line on stderr.
const KERNEL_LINE: &str = "cfstrace: kernel ";
const PERIOD_US: u64 = 10_000;
const QUOTA_US: u64 = 2_000;

/// `record` for 4 s with `extra` arguments; its capture's async events with ASYNC_TRUNCATED.
fn record(dir: &Path, name: &str, extra: &[&str]) -> (Run, usize) {
    let cap = dir.join(format!("{name}.jsonl"));
    let cap = cap.to_str().expect("UTF-8 scratch path");
    let mut args = vec![
        "record",
        "--duration",
        "4s",
        "-o",
        cap,
        "--csd-walk-bound",
        "0",
    ];
    args.extend_from_slice(extra);
    let run = run_with_timeout(&cfstrace_bin(), &args, dir, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(run.status.success(), "{name}: {}", run.describe());
    let truncated = fs::read_to_string(cap)
        .expect("capture")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "async_unthrottle")
        .filter(|v| {
            v["flags"]
                .as_u64()
                .is_some_and(|f| f & ASYNC_TRUNCATED != 0)
        })
        .count();
    (run, truncated)
}

#[test]
fn a_csd_list_past_the_walk_bound_is_told_at_debug_and_not_by_default() {
    let mut tree = test_cgroups("cfstrace-klogtest");
    let leaf = tree
        .add("overflow", PERIOD_US, QUOTA_US)
        .expect("test cgroup");
    // Three loops on two CPUs: throttled on both, so the timer's CPU unthrottles the other's.
    tree.busy(&leaf, 3).expect("busy loops");
    std::thread::sleep(Duration::from_millis(200));
    let dir = scratch!("cfstrace-klogtest");

    let (quiet, quiet_truncated) = record(&dir, "default", &[]);
    let (debug, debug_truncated) = record(&dir, "debug", &["--log-level", "debug"]);
    drop(tree);

    // The path ran in both records (else "no message" would prove nothing).
    assert!(
        quiet_truncated > 0 && debug_truncated > 0,
        "no CSD overflowed the walk (default: {quiet_truncated}, debug: {debug_truncated}): the \
         storm made no async unthrottle\n{}\n{}",
        quiet.describe(),
        debug.describe()
    );
    let told: Vec<&str> = debug
        .stderr
        .lines()
        .filter(|l| l.starts_with(KERNEL_LINE))
        .collect();
    assert!(
        told.iter()
            .any(|l| l.contains("probes::csd") && l.contains("longer than the walk bound")),
        "no kernel message about the CSD list at --log-level debug:\n{}",
        debug.describe()
    );
    assert!(
        !quiet.stderr.contains(KERNEL_LINE),
        "kernel messages at the default level:\n{}",
        quiet.describe()
    );
}
