//! The 2-minute soak (`cargo xtask soak` runs the same for 10 minutes, on the host and in a VM
//! kernel): `cfstrace record` over a throttling storm whose cgroups are replaced four times a
//! second, then 100 attach/detach cycles. Its RSS levels off, every live cgroup with callbacks
//! is named, nothing is lost, the kernel logs no oops or warning, and no BPF object is left.
//!
//! Needs root (cgroups, BPF). Never skips.

use std::time::Duration;

use cfstrace_tests::soak::{self, SoakConfig, SoakLimits};
use cfstrace_tests::{Scratch, test_cgroups};

#[test]
fn two_minutes_of_churn_level_off_name_everything_and_leave_nothing() {
    let scratch = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "soak");
    let mut tree = test_cgroups("soak");
    let cfg = SoakConfig::for_duration(Duration::from_secs(120));
    let report = soak::run(&cfg, &mut tree, scratch.path()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", report.summary());
    let problems = report.problems(&SoakLimits::default());
    assert!(problems.is_empty(), "{problems:#?}\n{}", report.summary());
    assert!(
        report.cgroups_made > 300,
        "too little churn to judge: {}",
        report.summary()
    );
}
