//! Facts about the node: kernel, CPUs, the hard-lockup watchdog's settings.
use std::ffi::CStr;
use std::path::Path;

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("bad CPU list {0:?} (expected e.g. \"0-47\" or \"0-3,8-11\")")]
    BadCpuList(String),
}

/// A kernel CPU list (`/sys/devices/system/cpu/possible`, `cpuset.cpus`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuList {
    /// CPUs listed.
    pub count: u32,
    /// Highest CPU id listed.
    pub max: u32,
}

/// Parse a kernel CPU list such as `0-47` or `0-3,8-11` (an empty list is an error).
pub fn parse_cpu_list(s: &str) -> Result<CpuList, HostError> {
    let bad = || HostError::BadCpuList(s.to_string());
    let mut count = 0u32;
    let mut max = None::<u32>;
    for part in s.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo {
            return Err(bad());
        }
        count = count.checked_add(hi - lo + 1).ok_or_else(bad)?;
        max = Some(max.map_or(hi, |m| m.max(hi)));
    }
    Ok(CpuList {
        count,
        max: max.ok_or_else(bad)?,
    })
}

/// A sysctl switch (`0`, `1`, or a count): None when it does not parse.
pub fn parse_switch(s: &str) -> Option<bool> {
    s.trim().parse::<i64>().ok().map(|v| v != 0)
}

fn read_switch(path: &str) -> Option<bool> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| parse_switch(&s))
}

/// Number of CPU ids the kernel may use. BPF per-CPU maps and `bpf_get_smp_processor_id()`
/// range over the *possible* CPUs (not the online ones), so size by the highest possible id
/// + 1; with the usual contiguous `0-N` list that is also the count.
fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(&s).ok())
        .map(|l| l.max + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

fn watchdog_facts(sysctl: &Path) -> WatchdogFacts {
    let read = |name: &str| read_switch(&sysctl.join(name).to_string_lossy());
    let nmi_watchdog = read("nmi_watchdog");
    WatchdogFacts {
        thresh_s: std::fs::read_to_string(sysctl.join("watchdog_thresh"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        // `watchdog` (3.13+) is the master switch; older kernels only have nmi_watchdog.
        enabled: read("watchdog").or(nmi_watchdog).unwrap_or(false),
        nmi_watchdog,
        hardlockup_panic: read("hardlockup_panic"),
    }
}

/// (nodename, release) from uname(2).
fn uname() -> (String, String) {
    // SAFETY: utsname is plain bytes; uname fills it and NUL-terminates every field.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: the kernel NUL-terminates each field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&u.nodename), field(&u.release))
}

/// Read the node's facts from /proc and uname.
pub fn host_facts() -> HostFacts {
    let (hostname, kernel) = uname();
    HostFacts {
        hostname,
        kernel,
        ncpus: possible_cpus(),
        watchdog: watchdog_facts(Path::new("/proc/sys/kernel")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-47\n"), Ok(CpuList { count: 48, max: 47 }));
        assert_eq!(
            parse_cpu_list("0-3,8-11"),
            Ok(CpuList { count: 8, max: 11 })
        );
        assert_eq!(parse_cpu_list("0"), Ok(CpuList { count: 1, max: 0 }));
        assert_eq!(parse_cpu_list("5,0-1"), Ok(CpuList { count: 3, max: 5 }));
        for bad in ["", "\n", "a", "3-1", "0-", "0,,1", "-1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn switches() {
        assert_eq!(parse_switch("1\n"), Some(true));
        assert_eq!(parse_switch("0\n"), Some(false));
        assert_eq!(parse_switch("2"), Some(true));
        assert_eq!(parse_switch(""), None);
        assert_eq!(parse_switch("on"), None);
    }

    #[test]
    fn watchdog_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, v: &str| std::fs::write(dir.path().join(name), v).unwrap();
        // Old kernel: only nmi_watchdog, no hardlockup_panic.
        w("nmi_watchdog", "1\n");
        w("watchdog_thresh", "10\n");
        let f = watchdog_facts(dir.path());
        assert_eq!(
            f,
            WatchdogFacts {
                thresh_s: Some(10),
                enabled: true,
                nmi_watchdog: Some(true),
                hardlockup_panic: None
            }
        );
        // The master switch wins over nmi_watchdog.
        w("watchdog", "0\n");
        w("hardlockup_panic", "1\n");
        let f = watchdog_facts(dir.path());
        assert!(!f.enabled);
        assert_eq!(f.hardlockup_panic, Some(true));
        // Nothing readable.
        let empty = tempfile::tempdir().unwrap();
        let f = watchdog_facts(empty.path());
        assert_eq!((f.thresh_s, f.enabled, f.nmi_watchdog), (None, false, None));
    }

    #[test]
    fn this_host() {
        let h = host_facts();
        assert!(h.ncpus >= 1);
        assert!(!h.kernel.is_empty() && h.kernel != "unknown");
        assert!(h.ncpus as usize >= std::thread::available_parallelism().unwrap().get());
    }
}
