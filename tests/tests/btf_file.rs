//! A node without `/sys/kernel/btf/vmlinux` (a kernel built without CONFIG_DEBUG_INFO_BTF, as
//! many RHEL 8 and Ubuntu 20.04 kernels are): cfstrace says so in one line naming `--btf`, and
//! with `--btf FILE` (the kernel's BTF as a file, as BTFHub ships them) it records as usual.
//!
//! The node is made here: `unshare -m` gives cfstrace a mount namespace of its own with an
//! empty tmpfs over /sys/kernel/btf, so only its view of the file goes (the kernel, and every
//! other process, keep theirs). The file is the raw BTF copied out of sysfs before that: the
//! same bytes a BTFHub `.btf` file for this kernel holds.
//!
//! Needs root (BPF, mounts). Never skips.

use std::fs;
use std::path::Path;
use std::time::Duration;

use cfstrace_tests::{Run, Scratch, cfstrace_bin, run_with_timeout, test_cgroups};
use serde_json::Value;

const SYSFS_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `cfstrace ARGS...` in a mount namespace where /sys/kernel/btf is an empty tmpfs.
fn without_sysfs_btf(dir: &Path, args: &[&str]) -> Run {
    let bin = cfstrace_bin();
    let bin = bin.to_str().expect("a UTF-8 binary path");
    let script =
        "mount -t tmpfs none /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux && exec \"$@\"";
    let argv: Vec<&str> = [
        &[
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            bin,
        ][..],
        args,
    ]
    .concat();
    run_with_timeout(Path::new("unshare"), &argv, dir, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn no_sysfs_btf_is_one_line_naming_btf_and_a_btf_file_records() {
    assert!(
        Path::new(SYSFS_BTF).exists(),
        "this host has no {SYSFS_BTF} to copy the test's BTF file from"
    );
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "btf_file");
    let dir = scratch.path();
    let btf = dir.join("vmlinux.btf");
    fs::copy(SYSFS_BTF, &btf).expect("copying the kernel's BTF");
    let mut cg = test_cgroups("btf_file");
    let svc = cg.add("svc", 10_000, 2_000).expect("a quota'd cgroup");
    cg.busy(&svc, 1).expect("a busy loop");

    // Without sysfs BTF and without --btf: exit 1, one line on stderr, naming --btf.
    let cap = dir.join("none.jsonl");
    let r = without_sysfs_btf(
        dir,
        &["record", "--duration", "2s", "-o", cap.to_str().unwrap()],
    );
    let err_lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert_eq!(err_lines.len(), 1, "want one line: {}", r.describe());
    assert!(
        err_lines[0].contains("--btf") && err_lines[0].contains(SYSFS_BTF),
        "the line should name {SYSFS_BTF} and --btf: {}",
        r.describe()
    );
    assert!(!cap.exists(), "a failed start left a capture behind");

    // With --btf FILE: a capture of the throttled cgroup, its BTF said to come from the file.
    let cap = dir.join("file.jsonl");
    let r = without_sysfs_btf(
        dir,
        &[
            "record",
            "--duration",
            "3s",
            "--btf",
            btf.to_str().unwrap(),
            "-o",
            cap.to_str().unwrap(),
        ],
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    let text = fs::read_to_string(&cap).expect("the capture");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["schema"], "cfstrace.capture/1");
    let path = cg.cgroup_path(&svc);
    let id = lines
        .iter()
        .find(|l| l["kind"] == "cgroup" && l["path"] == path.as_str())
        .and_then(|l| l["id"].as_u64())
        .unwrap_or_else(|| panic!("no cgroup line for {path} in the capture"));
    let periods = lines
        .iter()
        .filter(|l| l["kind"] == "period" && l["cgroup_id"].as_u64() == Some(id))
        .count();
    assert!(periods > 0, "no period of {path} recorded with --btf");
    assert_eq!(lines.last().unwrap()["kind"], "end");

    // doctor names the file it read the BTF from.
    let r = without_sysfs_btf(dir, &["doctor", "--btf", btf.to_str().unwrap()]);
    assert!(
        r.stdout.contains(btf.to_str().unwrap()),
        "doctor does not name the BTF file: {}",
        r.describe()
    );
}
