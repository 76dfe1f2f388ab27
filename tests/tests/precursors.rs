//! Lockup precursors on the host, for real: a period rewritten while `cfstrace record` runs is a
//! period change the report attributes to a write (the cgroup file shows it), and a forged
//! "period too short" line written to /dev/kmsg by a process is not taken for the kernel's.
//!
//! Needs root and a cpu hierarchy; it fails, never skips, without them.

use std::fs;
use std::time::Duration;

use cfstrace_tests::{cfstrace_bin, run_with_timeout, test_cgroups};
use serde_json::Value;

const PERIOD_US: u64 = 10_000;
const QUOTA_US: u64 = 2_000;
const NEW_PERIOD_US: u64 = 20_000;
const NEW_QUOTA_US: u64 = 4_000;

#[test]
fn period_written_mid_record_is_a_write_and_forged_kmsg_is_ignored() {
    let mut tree = test_cgroups("cfstrace-precursors");
    let bin = cfstrace_bin();
    let dir = cfstrace_tests::scratch!("cfstrace-precursors");
    let leaf = tree.add("svc", PERIOD_US, QUOTA_US).unwrap();
    tree.busy(&leaf, 2).unwrap();
    let path = tree.cgroup_path(&leaf);
    let cap = dir.join("cap.jsonl");
    let cap_s = cap.to_str().unwrap().to_string();

    // The recorder runs in a thread; this thread rewrites the period half way through.
    let rec = {
        let (bin, dir, cap_s) = (bin.clone(), dir.to_path_buf(), cap_s.clone());
        std::thread::spawn(move || {
            run_with_timeout(
                &bin,
                &["record", "--duration", "6s", "-o", &cap_s],
                &dir,
                Duration::from_secs(90),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    tree.add("svc", NEW_PERIOD_US, NEW_QUOTA_US).unwrap();
    // What an unprivileged imitation of the kernel's fix would log (facility LOG_USER).
    fs::write(
        "/dev/kmsg",
        format!(
            "cfs_period_timer[cpu0]: period too short, scaling up (new cfs_period_us = \
             {NEW_PERIOD_US}, cfs_quota_us = {NEW_QUOTA_US})\n"
        ),
    )
    .expect("writing to /dev/kmsg");
    let record = rec.join().unwrap().unwrap();
    assert!(record.status.success(), "{}", record.describe());
    let report = run_with_timeout(
        &bin,
        &["report", &cap_s, "--json"],
        &dir,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(report.status.success(), "{}", report.describe());
    drop(tree);
    let r: Value = serde_json::from_str(&report.stdout).expect("report JSON");

    let c = r["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == path.as_str())
        .unwrap_or_else(|| panic!("{path} not in the report:\n{}", report.stdout));
    let changes = c["precursors"]["period_changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no precursors for {path}: {}", c["precursors"]));
    let change = changes
        .iter()
        .find(|x| x["from_us"] == PERIOD_US && x["to_us"] == NEW_PERIOD_US)
        .unwrap_or_else(|| {
            panic!("the {PERIOD_US} -> {NEW_PERIOD_US} us change is missing: {changes:?}")
        });
    assert_eq!(
        change["by"], "write",
        "a period written to the cgroup file is not the kernel's doing: {change}"
    );
    assert_eq!(
        r["precursors"]["period_changes_by_kernel"], 0,
        "{}",
        r["precursors"]
    );
    assert!(
        r["precursors"]["period_changes_by_write"].as_u64() >= Some(1),
        "{}",
        r["precursors"]
    );
    // The forged line reached the log but is not the kernel's word.
    assert_eq!(
        r["precursors"]["kernel_messages"], 0,
        "a process's /dev/kmsg line was taken for the kernel's: {}",
        r["precursors"]
    );
    assert_eq!(
        r["probes"]["kmsg"]["attached"], true,
        "/dev/kmsg not read: {}",
        r["probes"]["kmsg"]
    );
}
