//! The capture file: JSON Lines. First line is the header (`"schema":"cfstrace.capture/1"` and
//! the host facts), then one line per period-timer callback, per cgroup naming, loss counters,
//! and an end line. A truncated last line is reported and skipped, never fatal.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::host::HostFacts;
use crate::workload::Workload;

pub const CAPTURE_SCHEMA: &str = "cfstrace.capture/1";

/// How one probe was attached, or why not.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub attached: bool,
    /// `kprobe`, `fentry`, `tracepoint` (with the tracepoint's name in `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// The kernel function or tracepoint it sits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why it is not attached (or degraded), in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where the cpu controller's hierarchy is mounted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CpuHierarchy {
    /// 1 for a cgroup v1 `cpu` mount, 2 for cgroup2.
    pub version: u8,
    pub mount: String,
}

/// First line of a capture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CaptureHeader {
    pub schema: String,
    pub tool_version: String,
    pub host: HostFacts,
    /// Backend asked for (`auto`, `kprobe`, `fentry`, `tracepoint`).
    pub backend_requested: String,
    /// What the period-timer frame ended up using (`kprobe`, `fentry`, `tracepoint`).
    pub backend: String,
    /// Probe name (`period_timer`, `distribute`, `unthrottle`, `enqueue`, `runnable`) -> status.
    pub probes: BTreeMap<String, ProbeStatus>,
    #[serde(default)]
    pub cpu_hierarchy: Option<CpuHierarchy>,
    /// Wall clock at start, and CLOCK_MONOTONIC at the same instant (the events' clock).
    pub started_unix_ns: u64,
    pub started_mono_ns: u64,
    /// The command recorded around (`record -- CMD`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// One period-timer callback (mirrors `tracer_ebpf::PeriodEvent`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeriodRecord {
    pub ts_ns: u64,
    pub cpu: u32,
    pub duration_ns: u64,
    pub cgroup_id: u64,
    pub timer: u64,
    pub loops: u32,
    pub unthrottled: u32,
    pub enqueued: u32,
    pub runnable: u32,
    /// 0 when the kernel layout does not give it.
    pub period_ns: u64,
    /// `u64::MAX` is no quota.
    pub quota_ns: u64,
    /// `tracer_ebpf::HOW_*` bits.
    pub flags: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// utime + stime in clock ticks when named (how busy it is).
    #[serde(default)]
    pub cpu_ticks: u64,
}

/// A cgroup's name, resolved while recording so a cgroup deleted before `report` keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    pub id: u64,
    /// Path relative to the cpu hierarchy's root (`/` for the root); None if the cgroup was
    /// gone before it could be named.
    pub path: Option<String>,
    pub workload: Workload,
    /// Busiest processes of the cgroup and its descendants.
    pub processes: Vec<ProcessInfo>,
    /// From cpu.max / cpu.cfs_period_us when named.
    pub period_us: Option<u64>,
    /// None is no quota ("max" / -1).
    pub quota_us: Option<u64>,
    /// Why naming was partial, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Cumulative loss counters (kernel-side LOSS map summed over CPUs, plus userspace drops).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LossRecord {
    pub ts_ns: u64,
    /// Events the kernel could not reserve in the ring buffer.
    pub ringbuf_full: u64,
    /// Callback closes without an open (tracer attached mid-callback).
    pub unmatched_exit: u64,
    /// Callback opens while a frame was open (a close was missed).
    pub missed_exit: u64,
    /// Timer -> cgroup reads that failed.
    pub cgroup_read: u64,
}

impl LossRecord {
    /// Events lost outright (the others are degraded, not lost).
    pub fn lost(&self) -> u64 {
        self.ringbuf_full
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndRecord {
    pub ts_ns: u64,
    pub duration_ns: u64,
    /// `duration`, `interrupted`, `command_exited`.
    pub reason: String,
    pub periods: u64,
    pub lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status: Option<i32>,
}

/// Every line after the header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaptureLine {
    Period(PeriodRecord),
    Cgroup(CgroupRecord),
    Loss(LossRecord),
    End(EndRecord),
}
