//! The records a capture holds, one per line after its header, and the header itself. They
//! are what every room passes along: the session makes them from kernel events, the capture
//! writes and reads them, analysis adds them up.
use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cpuset::CpuSet;
use super::host::HostFacts;
use super::probe::{Backend, Probe, ProbeStatus, StopReason, Style};
use super::workload::Workload;

pub const CAPTURE_SCHEMA: &str = "cfstrace.capture/1";

/// Events whose timer could not be mapped to a cgroup carry id 0 and are kept under it.
pub const UNRESOLVED_ID: u64 = 0;
pub const UNRESOLVED_NAME: &str = "(unresolved)";

/// The one display-name rule for a cgroup: its path; `(unresolved)` for the callbacks whose
/// cgroup could not be read (id 0); `(cgroup <id>)` for one that was never named. Escaping for
/// a terminal or a label format is the renderer's business, on top of this.
pub fn cgroup_name(id: u64, path: Option<&str>) -> Cow<'_, str> {
    match path {
        Some(p) => Cow::Borrowed(p),
        None if id == UNRESOLVED_ID => Cow::Borrowed(UNRESOLVED_NAME),
        None => Cow::Owned(format!("(cgroup {id})")),
    }
}

impl PeriodRecord {
    /// The cfs_rqs it unthrottled, when the unthrottle probe counted them (`HOW_UNTHROTTLE`);
    /// a zero from a missing probe is no figure.
    pub fn counted_unthrottled(&self) -> Option<u32> {
        (self.flags & tracer_ebpf::HOW_UNTHROTTLE != 0).then_some(self.unthrottled)
    }

    /// Its `distribute_cfs_runtime` passes, when the kernel side counted them (`HOW_LOOPS`).
    pub fn counted_loops(&self) -> Option<u32> {
        (self.flags & tracer_ebpf::HOW_LOOPS != 0).then_some(self.loops)
    }
}

// A record is its facts plus how naming went: read through to them.
impl std::ops::Deref for CgroupRecord {
    type Target = CgroupFacts;

    fn deref(&self) -> &CgroupFacts {
        &self.facts
    }
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
    /// Backend asked for.
    pub backend_requested: Backend,
    /// What the period-timer frame ended up using (`none` when `--probes` left it out).
    pub backend: Style,
    /// How each probe was attached, or why not.
    pub probes: BTreeMap<Probe, ProbeStatus>,
    #[serde(default)]
    pub cpu_hierarchy: Option<CpuHierarchy>,
    /// Wall clock at start, and CLOCK_MONOTONIC at the same instant (the events' clock).
    pub started_unix_ns: u64,
    pub started_mono_ns: u64,
    /// The command recorded around (`record -- CMD`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// One period-timer callback (mirrors `tracer_ebpf::PeriodEvent`). In memory a figure the
/// kernel did not give is 0 with its `HOW_*` bit unset; in a capture it is `null`
/// ([`PeriodWire`]), so no reader takes it for a zero.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(into = "PeriodWire", from = "PeriodWire")]
pub struct PeriodRecord {
    pub ts_ns: u64,
    pub cpu: u32,
    pub duration_ns: u64,
    pub cgroup_id: u64,
    /// The callback's period timer as an opaque per-run id (see `model::timers`), never its
    /// kernel address; 0 when not known.
    pub timer_id: u32,
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
    /// Start of the timer-interrupt span (`irq_span` line on the same CPU with this `ts_ns`)
    /// the callback ran in; 0 when not in a traced span (`HOW_IN_SPAN` unset).
    pub span_ts_ns: u64,
    /// Distinct CPUs whose cfs_rqs the callback unthrottled (real with `HOW_SPREAD`).
    pub spread: u32,
    /// Unthrottles on CPUs beyond the bitmap (calls, not CPUs).
    pub spread_overflow: u32,
    /// Tasks queued under the cfs_rqs it unthrottled (real with `HOW_QUEUED`).
    pub queued: u32,
    /// Those CPUs as a kernel CPU list (`0-3,8`); absent when none.
    pub spread_cpus: CpuSet,
}

/// One timer interrupt that ran at least one period-timer callback (mirrors
/// `tracer_ebpf::IrqSpanEvent`). Its callbacks' period lines come before it and carry its
/// `ts_ns` in their `span_ts_ns`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqSpanRecord {
    /// Start of the interrupt.
    pub ts_ns: u64,
    pub cpu: u32,
    /// The whole interrupt, IRQs off.
    pub duration_ns: u64,
    /// Period-timer callbacks inside it.
    pub timers: u32,
    /// Their summed time.
    pub timers_ns: u64,
    /// `HOW_FRAME_*` (how the span was timed), `HOW_REOPENED`.
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

/// One ancestor of a named cgroup, with its own CFS quota: nested quotas each have their own
/// period timer, so the chain says which limits sit above a throttled cgroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ParentRecord {
    /// Path relative to the cpu hierarchy's root.
    pub path: String,
    /// Its cgroup id (directory inode) when it could be read.
    #[serde(default)]
    pub id: Option<u64>,
    /// Its period when it has a quota of its own (None: no quota, or unreadable).
    #[serde(default)]
    pub period_us: Option<u64>,
    /// Its quota (None: no quota — `max` / -1 — or unreadable).
    #[serde(default)]
    pub quota_us: Option<u64>,
}

/// What naming found about a cgroup: its path, workload, busiest processes and bandwidth.
/// A capture's cgroup line and the report's cgroup entry both carry it, flattened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupFacts {
    /// kernfs id (= inode of the cgroup's directory).
    pub id: u64,
    /// Path relative to the cpu hierarchy's root (`/` for the root); None if the cgroup was
    /// gone before it could be named.
    pub path: Option<String>,
    pub workload: Workload,
    /// Busiest processes of the cgroup and its descendants.
    pub processes: Vec<ProcessInfo>,
    /// From cpu.max / cpu.cfs_period_us when named.
    pub period_us: Option<u64>,
    /// None is no quota ("max" / -1), or not named.
    pub quota_us: Option<u64>,
}

impl CgroupFacts {
    /// A cgroup known only by its id.
    pub fn unnamed(id: u64) -> Self {
        CgroupFacts {
            id,
            path: None,
            workload: Workload::plain(),
            processes: Vec::new(),
            period_us: None,
            quota_us: None,
        }
    }

    /// This cgroup's display name ([`cgroup_name`]).
    pub fn name(&self) -> Cow<'_, str> {
        cgroup_name(self.id, self.path.as_deref())
    }
}

/// A cgroup's name, resolved while recording so a cgroup deleted before `report` keeps it. A
/// later record for the same id (what a re-read found: processes that came after the naming)
/// replaces an earlier one for readers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    #[serde(flatten)]
    pub facts: CgroupFacts,
    /// Why naming was partial, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its ancestors, nearest first, up to (excluding) the hierarchy's root, at most
    /// `cgroups::MAX_PARENTS`; resolved at naming time. Empty for a top-level cgroup; None
    /// when not resolved (the cgroup was gone, or an older capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<ParentRecord>>,
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
    /// Async-unthrottle CSD closes without an open.
    #[serde(default)]
    pub csd_unmatched_exit: u64,
    /// Async-unthrottle CSD opens while one was open (the earlier CSD's events are lost).
    #[serde(default)]
    pub csd_missed_exit: u64,
    /// Timer-interrupt span closes without an open.
    #[serde(default)]
    pub span_unmatched_exit: u64,
    /// Timer-interrupt span opens while one was open (a span's end was missed).
    #[serde(default)]
    pub span_missed_exit: u64,
    /// Lost callbacks the kernel's unsent-sums map had no room for either (counted nowhere
    /// else: the report's figures are short by these).
    #[serde(default)]
    pub unsent_full: u64,
}

/// Applies a macro to every counter of [`LossRecord`] (all but `ts_ns`), so the list of
/// counters is written once.
macro_rules! loss_counters {
    ($m:ident) => {
        $m!(
            ringbuf_full,
            unmatched_exit,
            missed_exit,
            cgroup_read,
            csd_unmatched_exit,
            csd_missed_exit,
            span_unmatched_exit,
            span_missed_exit,
            unsent_full
        )
    };
}

impl LossRecord {
    /// Events lost outright (the others are degraded, not lost).
    pub fn lost(&self) -> u64 {
        self.ringbuf_full
    }

    /// Each counter by its name (the capture's key), in the record's order.
    pub fn counters(&self) -> [(&'static str, u64); 9] {
        macro_rules! named {
            ($($f:ident),+) => { [$((stringify!($f), self.$f)),+] };
        }
        loss_counters!(named)
    }

    /// Counter by counter `f(self, other)`, stamped `ts_ns`.
    pub fn combine(&self, other: &Self, ts_ns: u64, f: impl Fn(u64, u64) -> u64) -> Self {
        macro_rules! each {
            ($($c:ident),+) => { LossRecord { ts_ns, $($c: f(self.$c, other.$c)),+ } };
        }
        loss_counters!(each)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndRecord {
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub reason: StopReason,
    pub periods: u64,
    pub lost: u64,
    /// `record -- CMD`: CMD's exit status as a shell gives it (128 + N when signal N killed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status: Option<i32>,
    /// Async-unthrottle lines written (0 in captures that predate them).
    #[serde(default)]
    pub async_unthrottle: u64,
    /// Timer-interrupt span lines written (0 in captures that predate them).
    #[serde(default)]
    pub irq_spans: u64,
    /// Kernel "period too short" message lines written.
    #[serde(default)]
    pub kmsg_period_scaling: u64,
}

/// One cgroup's share of an async-unthrottle CSD (mirrors `tracer_ebpf::AsyncEvent`; see
/// there for segments, listed mode and the `ASYNC_*` flags). Absent from captures of kernels
/// before 6.3 and of older cfstrace versions. `enqueued` and `runnable` are `null` in a
/// capture where their probe did not count them ([`AsyncWire`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(into = "AsyncWire", from = "AsyncWire")]
pub struct AsyncRecord {
    /// Start of the segment (listed mode: of the CSD).
    pub ts_ns: u64,
    /// The CPU whose cfs_rqs the CSD unthrottled (not the period timer's).
    pub cpu: u32,
    /// The segment's time (listed mode, `ASYNC_SHARED`: the whole CSD's).
    pub duration_ns: u64,
    pub cgroup_id: u64,
    /// Start of the CSD: the segments of one CSD share it.
    pub csd_ts_ns: u64,
    /// The whole CSD's time, on its last event (`ASYNC_LAST`); 0 on the others.
    pub csd_ns: u64,
    /// Index of the event within its CSD.
    pub segment: u32,
    pub unthrottled: u32,
    pub enqueued: u32,
    pub runnable: u32,
    /// `tracer_ebpf::HOW_*` and `ASYNC_*` bits.
    pub flags: u32,
}

/// `"kind":"unsent_periods"`: one cgroup's period-timer callbacks whose events the ring buffer
/// had no room for, as the kernel summed them, cumulative since attach (mirrors
/// `tracer_ebpf::UnsentPeriods`). Added to the callbacks decoded, they keep the report's counts,
/// times and worst callback exact when events are lost. Written about every 10 s and at the
/// end, for the cgroups whose sums changed (none while the ring buffer keeps up); the last
/// line of a cgroup holds its sums.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct UnsentPeriodsRecord {
    pub ts_ns: u64,
    pub id: u64,
    #[serde(flatten)]
    pub sums: tracer_ebpf::PeriodSums,
    /// Callback time as `[bucket, count]` pairs of non-empty log2 buckets
    /// (`tracer_ebpf::log2_bucket`: bucket b holds 2^(b-1) <= ns < 2^b).
    pub callback_log2: Vec<(u32, u32)>,
}

/// `"kind":"cpu_totals"`: one CPU's timer interrupts as the kernel summed them, cumulative
/// since attach (mirrors `tracer_ebpf::SpanTotals`): every interrupt (the node's baseline and
/// the tracer's own-cost accounting) and those that ran period timers, with the worst one,
/// exact when events are lost. Written about every 10 s and at the end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CpuTotalsRecord {
    pub ts_ns: u64,
    pub cpu: u32,
    /// Every timer interrupt: count, time, longest.
    pub interrupts: u64,
    pub interrupts_ns: u64,
    pub interrupt_max_ns: u64,
    /// Interrupts that ran period timers: count, time, period timers run.
    pub spans: u64,
    pub spans_ns: u64,
    pub timers: u64,
    /// The longest of them: its time, start, period timers and their time.
    pub worst_ns: u64,
    pub worst_ts_ns: u64,
    pub worst_timers: u32,
    pub worst_timers_ns: u64,
    pub max_timers: u32,
    /// Every interrupt's time as `[bucket, count]` pairs of non-empty log-linear buckets
    /// (`tracer_ebpf::fine_bucket`: 16 a power of two from 1 us to 1 s).
    pub interrupt_hist: Vec<(u32, u32)>,
}

/// Every line after the header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaptureLine {
    Period(PeriodRecord),
    /// `"kind":"async_unthrottle"`.
    AsyncUnthrottle(AsyncRecord),
    /// `"kind":"irq_span"`.
    IrqSpan(IrqSpanRecord),
    /// `"kind":"kmsg_period_scaling"`: the kernel rescaled (or could not rescale) a period.
    KmsgPeriodScaling(PeriodScaling),
    /// Boxed: one line per cgroup, while every period line would otherwise be as large as a
    /// cgroup record (its path, workload names and processes).
    Cgroup(Box<CgroupRecord>),
    Loss(LossRecord),
    /// `"kind":"unsent_periods"`.
    UnsentPeriods(UnsentPeriodsRecord),
    /// `"kind":"cpu_totals"`.
    CpuTotals(CpuTotalsRecord),
    End(EndRecord),
}

/// One "period too short" message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeriodScaling {
    /// Kernel timestamp of the message (CLOCK_MONOTONIC µs, /dev/kmsg's own field).
    pub ts_us: u64,
    pub cpu: u32,
    /// true: the kernel doubled period and quota; false: it could not (at the 1 s cap).
    pub scaled_up: bool,
    /// The period after the change (or the unchanged one when it could not scale).
    pub period_us: u64,
    pub quota_us: u64,
}

/// A capture header for tests: a 48-CPU 6.18 node, `watchdog_thresh` 10 s, the period timer
/// on tracepoints.
#[cfg(test)]
pub(crate) fn test_header() -> CaptureHeader {
    let mut probes = BTreeMap::new();
    probes.insert(
        super::probe::Probe::PeriodTimer,
        ProbeStatus::attached(super::probe::Style::Tracepoint, "hrtimer_expire_entry/exit"),
    );
    CaptureHeader {
        schema: CAPTURE_SCHEMA.to_string(),
        tool_version: "0.1.0".into(),
        host: super::host::HostFacts {
            hostname: "node1".into(),
            kernel: "6.18.44".into(),
            ncpus: 48,
            watchdog: super::host::WatchdogFacts {
                thresh_s: Some(10),
                enabled: true,
                nmi_watchdog: Some(true),
                hardlockup_panic: None,
            },
        },
        backend_requested: super::probe::Backend::Auto,
        backend: super::probe::Style::Tracepoint,
        probes,
        cpu_hierarchy: Some(CpuHierarchy {
            version: 2,
            mount: "/sys/fs/cgroup".into(),
        }),
        started_unix_ns: 1,
        started_mono_ns: 2,
        command: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_rule() {
        assert_eq!(cgroup_name(7, Some("/a/b")), "/a/b");
        assert_eq!(cgroup_name(UNRESOLVED_ID, None), "(unresolved)");
        assert_eq!(cgroup_name(7, None), "(cgroup 7)");
        // A path wins even for id 0 (the root's id is never 0, but the rule is the path's).
        assert_eq!(cgroup_name(UNRESOLVED_ID, Some("/x")), "/x");
    }
}

/// The `HOW_*` bits a period line's counted figures need: without them the figure is `null`.
pub const LOOPS_FROM: u32 = tracer_ebpf::HOW_LOOPS;
pub const UNTHROTTLED_FROM: u32 = tracer_ebpf::HOW_UNTHROTTLE;
pub const ENQUEUED_FROM: u32 = tracer_ebpf::HOW_ENQUEUE_ENTITY | tracer_ebpf::HOW_ENQUEUE_TASK_FAIR;
pub const RUNNABLE_FROM: u32 = tracer_ebpf::HOW_RUNNABLE;
pub const BANDWIDTH_FROM: u32 = tracer_ebpf::HOW_PERIOD;
pub const SPREAD_FROM: u32 = tracer_ebpf::HOW_SPREAD;
pub const QUEUED_FROM: u32 = tracer_ebpf::HOW_QUEUED;

/// `v` when one of `bits` is in `flags`: a figure its probe counted.
fn counted<T>(flags: u32, bits: u32, v: T) -> Option<T> {
    (flags & bits != 0).then_some(v)
}

/// A period line as written: the figures the kernel did not give are `null` (an older
/// capture's `0` with the bit unset reads the same). The hand codec
/// (`capture::codec`) writes and reads exactly this shape.
#[derive(Serialize, Deserialize)]
pub struct PeriodWire {
    ts_ns: u64,
    cpu: u32,
    duration_ns: u64,
    cgroup_id: u64,
    /// Absent from captures written before it (they carry `timer`, the kernel address, which
    /// this struct ignores: the capture reader maps it to an id).
    #[serde(default)]
    timer_id: u32,
    loops: Option<u32>,
    unthrottled: Option<u32>,
    enqueued: Option<u32>,
    runnable: Option<u32>,
    period_ns: Option<u64>,
    quota_ns: Option<u64>,
    flags: u32,
    #[serde(default)]
    span_ts_ns: u64,
    #[serde(default)]
    spread: Option<u32>,
    #[serde(default)]
    spread_overflow: Option<u32>,
    #[serde(default)]
    queued: Option<u32>,
    #[serde(default, skip_serializing_if = "CpuSet::is_empty")]
    spread_cpus: CpuSet,
}

impl From<PeriodRecord> for PeriodWire {
    fn from(p: PeriodRecord) -> Self {
        let f = p.flags;
        PeriodWire {
            ts_ns: p.ts_ns,
            cpu: p.cpu,
            duration_ns: p.duration_ns,
            cgroup_id: p.cgroup_id,
            timer_id: p.timer_id,
            loops: counted(f, LOOPS_FROM, p.loops),
            unthrottled: counted(f, UNTHROTTLED_FROM, p.unthrottled),
            enqueued: counted(f, ENQUEUED_FROM, p.enqueued),
            runnable: counted(f, RUNNABLE_FROM, p.runnable),
            period_ns: counted(f, BANDWIDTH_FROM, p.period_ns),
            quota_ns: counted(f, BANDWIDTH_FROM, p.quota_ns),
            flags: f,
            span_ts_ns: p.span_ts_ns,
            spread: counted(f, SPREAD_FROM, p.spread),
            spread_overflow: counted(f, SPREAD_FROM, p.spread_overflow),
            queued: counted(f, QUEUED_FROM, p.queued),
            spread_cpus: p.spread_cpus,
        }
    }
}

impl From<PeriodWire> for PeriodRecord {
    fn from(w: PeriodWire) -> Self {
        PeriodRecord {
            ts_ns: w.ts_ns,
            cpu: w.cpu,
            duration_ns: w.duration_ns,
            cgroup_id: w.cgroup_id,
            timer_id: w.timer_id,
            loops: w.loops.unwrap_or(0),
            unthrottled: w.unthrottled.unwrap_or(0),
            enqueued: w.enqueued.unwrap_or(0),
            runnable: w.runnable.unwrap_or(0),
            period_ns: w.period_ns.unwrap_or(0),
            quota_ns: w.quota_ns.unwrap_or(0),
            flags: w.flags,
            span_ts_ns: w.span_ts_ns,
            spread: w.spread.unwrap_or(0),
            spread_overflow: w.spread_overflow.unwrap_or(0),
            queued: w.queued.unwrap_or(0),
            spread_cpus: w.spread_cpus,
        }
    }
}

/// An async line as written: `enqueued` and `runnable` `null` where not counted.
#[derive(Serialize, Deserialize)]
pub struct AsyncWire {
    ts_ns: u64,
    cpu: u32,
    duration_ns: u64,
    cgroup_id: u64,
    csd_ts_ns: u64,
    csd_ns: u64,
    segment: u32,
    unthrottled: u32,
    enqueued: Option<u32>,
    runnable: Option<u32>,
    flags: u32,
}

impl From<AsyncRecord> for AsyncWire {
    fn from(a: AsyncRecord) -> Self {
        AsyncWire {
            ts_ns: a.ts_ns,
            cpu: a.cpu,
            duration_ns: a.duration_ns,
            cgroup_id: a.cgroup_id,
            csd_ts_ns: a.csd_ts_ns,
            csd_ns: a.csd_ns,
            segment: a.segment,
            unthrottled: a.unthrottled,
            enqueued: counted(a.flags, ENQUEUED_FROM, a.enqueued),
            runnable: counted(a.flags, RUNNABLE_FROM, a.runnable),
            flags: a.flags,
        }
    }
}

impl From<AsyncWire> for AsyncRecord {
    fn from(w: AsyncWire) -> Self {
        AsyncRecord {
            ts_ns: w.ts_ns,
            cpu: w.cpu,
            duration_ns: w.duration_ns,
            cgroup_id: w.cgroup_id,
            csd_ts_ns: w.csd_ts_ns,
            csd_ns: w.csd_ns,
            segment: w.segment,
            unthrottled: w.unthrottled,
            enqueued: w.enqueued.unwrap_or(0),
            runnable: w.runnable.unwrap_or(0),
            flags: w.flags,
        }
    }
}
