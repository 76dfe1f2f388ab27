//! Facts about the node: kernel, CPUs, the hard-lockup watchdog's settings.
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WatchdogFacts {
    /// /proc/sys/kernel/watchdog_thresh (seconds); None if unreadable.
    pub thresh_s: Option<u64>,
    /// /proc/sys/kernel/watchdog (or nmi_watchdog) != 0.
    pub enabled: bool,
    /// /proc/sys/kernel/nmi_watchdog, if present.
    #[serde(default)]
    pub nmi_watchdog: Option<bool>,
    /// /proc/sys/kernel/hardlockup_panic, if present.
    #[serde(default)]
    pub hardlockup_panic: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    /// uname release, e.g. `6.18.44-fc-v657`.
    pub kernel: String,
    pub ncpus: u32,
    pub watchdog: WatchdogFacts,
}

/// Read the node's facts from /proc and uname.
pub fn host_facts() -> HostFacts {
    todo!("helper")
}
