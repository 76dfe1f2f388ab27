//! Types that cross the kernel/user boundary. `#[repr(C)]` with explicit padding so the
//! layout is identical in the BPF object and in the `cfstrace` binary.
#![no_std]

/// `kind` of a [`PeriodEvent`]: every ring-buffer record starts with a `u32` kind so the
/// reader can tell the record types apart without trusting sizes alone.
pub const EVENT_PERIOD: u32 = 1;
/// `kind` of an [`AsyncEvent`].
pub const EVENT_ASYNC_UNTHROTTLE: u32 = 2;
/// `kind` of an [`IrqSpanEvent`].
pub const EVENT_IRQ_SPAN: u32 = 3;

/// Words of the per-period CPU bitmap: CPUs 0..`SPREAD_CPUS` get a bit; unthrottles on higher
/// CPUs are counted in `spread_overflow` (a fixed size keeps the frame and event bounded).
pub const SPREAD_WORDS: usize = 16;
pub const SPREAD_CPUS: u32 = SPREAD_WORDS as u32 * 64;

/// One `sched_cfs_period_timer` callback, emitted when its frame closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodEvent {
    /// `EVENT_PERIOD`.
    pub kind: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the callback started.
    pub start_ns: u64,
    /// IRQs-off time of the callback: entry to return.
    pub duration_ns: u64,
    /// kernfs id of the task_group's cgroup (= inode of its directory); 0 if unresolved.
    pub cgroup_id: u64,
    /// Address of the hrtimer (identifies the cfs_bandwidth while it lives).
    pub timer: u64,
    /// `cfs_bandwidth.period` read at frame close; 0 if the kernel layout lacks it.
    pub period_ns: u64,
    /// `cfs_bandwidth.quota`; `u64::MAX` is RUNTIME_INF (no quota).
    pub quota_ns: u64,
    /// `distribute_cfs_runtime` passes inside this callback.
    pub loops: u32,
    /// `unthrottle_cfs_rq` calls inside this callback.
    pub unthrottled: u32,
    /// Entities enqueued inside this callback (`enqueue_entity`, or `enqueue_task_fair`).
    pub enqueued: u32,
    /// Tasks made runnable inside this callback (`sched_update_nr_running_tp`, positive deltas).
    pub runnable: u32,
    /// `HOW_*` bits: how the frame was opened and which figures were counted.
    pub flags: u32,
    /// Distinct CPUs whose cfs_rqs this callback unthrottled (bits set in `spread_mask`);
    /// real only with `HOW_SPREAD`.
    pub spread: u32,
    /// Start of the timer-interrupt span this callback ran in (`HOW_IN_SPAN`), else 0.
    pub span_start_ns: u64,
    /// Unthrottles on CPUs >= `SPREAD_CPUS` (calls, not distinct CPUs).
    pub spread_overflow: u32,
    /// Tasks queued under the cfs_rqs it unthrottled, read at each unthrottle
    /// (`cfs_rq.h_nr_queued`, `h_nr_running` before 6.14): the tasks released back to the
    /// runqueues. Real only with `HOW_QUEUED`.
    pub queued: u32,
    /// Bit `c` set: the cfs_rq of CPU `c` (`cfs_rq->rq->cpu`) was unthrottled in the callback.
    pub spread_mask: [u64; SPREAD_WORDS],
}

/// One timer interrupt (`hrtimer_interrupt`, or `local_timer_entry/exit` on x86) that ran at
/// least one period-timer callback: the whole IRQs-off span around the callbacks, emitted when
/// the span closes. Spans without a period timer are closed silently (no event).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqSpanEvent {
    /// `EVENT_IRQ_SPAN`.
    pub kind: u32,
    pub cpu: u32,
    pub start_ns: u64,
    /// Entry to exit of the interrupt handler.
    pub duration_ns: u64,
    /// Sum of the period-timer callbacks' times inside the span.
    pub timers_ns: u64,
    /// Period-timer callbacks inside the span.
    pub timers: u32,
    /// `HOW_FRAME_*` (how the span was opened), `HOW_REOPENED`.
    pub flags: u32,
}

/// One cgroup's share of an async-unthrottle CSD (`__cfsb_csd_unthrottle`, 6.3+): the work a
/// period timer on another CPU queued here instead of doing it with its own IRQs off.
///
/// With a probe on `unthrottle_cfs_rq` a CSD is cut into segments, one per `unthrottle_cfs_rq`
/// call: the first runs from CSD entry (so the rq lock and clock update are charged to it and
/// the segments of one CSD add up to the whole CSD), each later one from its own
/// `unthrottle_cfs_rq` to the next call or the CSD's return. Without that probe
/// (`ASYNC_LISTED`), `rq->cfsb_csd_list` is walked at CSD entry and each still-throttled
/// cfs_rq on it gets one event whose `duration_ns` and `runnable` are the whole CSD's, shared
/// with the other events of the CSD (`ASYNC_SHARED`). A CSD that unthrottles nothing emits
/// one `ASYNC_EMPTY` event with `cgroup_id` 0. The last event of each CSD has `ASYNC_LAST` and
/// the whole CSD's time in `csd_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncEvent {
    /// `EVENT_ASYNC_UNTHROTTLE`.
    pub kind: u32,
    pub cpu: u32,
    /// Start of this segment (listed mode: of the CSD).
    pub start_ns: u64,
    /// This segment's time (listed mode: the whole CSD's, shared).
    pub duration_ns: u64,
    /// kernfs id of `cfs_rq->tg`'s cgroup, as for the period timer; 0 if unresolved or empty.
    pub cgroup_id: u64,
    /// When the CSD started: the segments of one CSD share it.
    pub csd_start_ns: u64,
    /// The whole CSD (entry to return), on its `ASYNC_LAST` event; 0 on the others.
    pub csd_ns: u64,
    /// cfs_rqs unthrottled in this segment (listed mode: 1, the cfs_rq was throttled at entry).
    pub unthrottled: u32,
    /// Entities enqueued in this segment (`enqueue_entity` / `enqueue_task_fair` probes).
    pub enqueued: u32,
    /// Tasks made runnable in this segment (listed mode: in the whole CSD, shared).
    pub runnable: u32,
    /// `HOW_*` and `ASYNC_*` bits.
    pub flags: u32,
    /// Index of this event within its CSD (0-based).
    pub segment: u32,
    pub _pad: u32,
}

/// The frame was opened/closed by a kprobe/kretprobe pair.
pub const HOW_FRAME_KPROBE: u32 = 1 << 0;
/// ... by fentry/fexit.
pub const HOW_FRAME_FENTRY: u32 = 1 << 1;
/// ... by the `hrtimer_expire_entry/exit` tracepoints filtered on the callback address.
pub const HOW_FRAME_TRACEPOINT: u32 = 1 << 2;
/// `loops` is a real count (a probe on `distribute_cfs_runtime` was attached).
pub const HOW_LOOPS: u32 = 1 << 3;
/// `unthrottled` is a real count (a probe on `unthrottle_cfs_rq` was attached).
pub const HOW_UNTHROTTLE: u32 = 1 << 4;
/// `enqueued` counts `enqueue_entity`.
pub const HOW_ENQUEUE_ENTITY: u32 = 1 << 5;
/// `enqueued` counts `enqueue_task_fair` (where `enqueue_entity` is inlined).
pub const HOW_ENQUEUE_TASK_FAIR: u32 = 1 << 6;
/// `runnable` is a real count (`sched_update_nr_running_tp` attached).
pub const HOW_RUNNABLE: u32 = 1 << 7;
/// `cgroup_id` was read from the timer's task_group.
pub const HOW_CGROUP: u32 = 1 << 8;
/// `period_ns` / `quota_ns` were read from the cfs_bandwidth.
pub const HOW_PERIOD: u32 = 1 << 9;
/// The frame was already open when a new callback started: the previous close was missed.
pub const HOW_REOPENED: u32 = 1 << 10;
/// Async event: the cgroup was read from `rq->cfsb_csd_list` at CSD entry, not from a probe
/// on `unthrottle_cfs_rq` (which this kernel or backend cannot probe).
pub const ASYNC_LISTED: u32 = 1 << 11;
/// Async event: `duration_ns` and `runnable` are the whole CSD's, shared with the CSD's other
/// events (listed mode cannot split them).
pub const ASYNC_SHARED: u32 = 1 << 12;
/// Async event: the last of its CSD; `csd_ns` holds the whole CSD's time.
pub const ASYNC_LAST: u32 = 1 << 13;
/// Async event: the CSD unthrottled nothing (no cfs_rq was still throttled).
pub const ASYNC_EMPTY: u32 = 1 << 14;
/// Async event: the list walk stopped at `MAX_LISTED` entries; the CSD had more.
pub const ASYNC_TRUNCATED: u32 = 1 << 15;

/// Period event: the callback closed inside an open timer-interrupt span (`span_start_ns`).
pub const HOW_IN_SPAN: u32 = 1 << 16;
/// Period event: `spread`/`spread_mask` are real (`unthrottle_cfs_rq` probed and the BTF gives
/// `cfs_rq.rq` and `rq.cpu`).
pub const HOW_SPREAD: u32 = 1 << 17;
/// Period event: `queued` is real (`unthrottle_cfs_rq` probed and the BTF gives
/// `cfs_rq.h_nr_queued` or `h_nr_running`).
pub const HOW_QUEUED: u32 = 1 << 18;

/// Most `rq->cfsb_csd_list` entries walked at CSD entry (a bounded loop for the verifier).
pub const MAX_LISTED: u32 = 32;

/// Offsets into kernel structures, read by userspace from the running kernel's BTF and
/// written into the object's `.rodata` before load. `OFFSET_UNAVAILABLE` marks a missing field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// Address of `sched_cfs_period_timer` (tracepoint filter); 0 if unknown.
    pub period_timer_fn: u64,
    /// offsetof(struct hrtimer, function)
    pub hrtimer_function: u64,
    /// offsetof(struct cfs_bandwidth, period_timer)
    pub cfsb_period_timer: u64,
    /// offsetof(struct cfs_bandwidth, period)
    pub cfsb_period: u64,
    /// offsetof(struct cfs_bandwidth, quota)
    pub cfsb_quota: u64,
    /// offsetof(struct task_group, cfs_bandwidth)
    pub tg_cfs_bandwidth: u64,
    /// offsetof(struct task_group, css) + offsetof(struct cgroup_subsys_state, cgroup)
    pub tg_css_cgroup: u64,
    /// offsetof(struct cgroup, kn)
    pub cgroup_kn: u64,
    /// offsetof(struct kernfs_node, id)
    pub kn_id: u64,
    /// Mask applied to the 64-bit id read: all ones for a plain u64, the low 32 bits for the
    /// pre-5.5 `union kernfs_node_id` whose `ino` is the low half.
    pub kn_id_mask: u64,
    /// Address of `__cfsb_csd_unthrottle` (csd tracepoint filter); 0 if unknown.
    pub csd_unthrottle_fn: u64,
    /// offsetof(struct rq, cfsb_csd): the csd tracepoints give `&rq->cfsb_csd`.
    pub rq_cfsb_csd: u64,
    /// offsetof(struct rq, cfsb_csd_list)
    pub rq_cfsb_csd_list: u64,
    /// offsetof(struct cfs_rq, throttled_csd_list)
    pub cfs_rq_throttled_csd_list: u64,
    /// offsetof(struct cfs_rq, tg)
    pub cfs_rq_tg: u64,
    /// offsetof(struct cfs_rq, throttled) (an int)
    pub cfs_rq_throttled: u64,
    /// offsetof(struct cfs_rq, rq): the rq a cfs_rq belongs to (FAIR_GROUP_SCHED).
    pub cfs_rq_rq: u64,
    /// offsetof(struct rq, cpu) (an int; SMP kernels).
    pub rq_cpu: u64,
    /// offsetof(struct cfs_rq, h_nr_queued), or `h_nr_running` before 6.14 (an unsigned int).
    pub cfs_rq_h_nr_queued: u64,
}

pub const OFFSET_UNAVAILABLE: u64 = u64::MAX;

impl KernelLayout {
    pub const UNAVAILABLE: Self = Self {
        period_timer_fn: 0,
        hrtimer_function: OFFSET_UNAVAILABLE,
        cfsb_period_timer: OFFSET_UNAVAILABLE,
        cfsb_period: OFFSET_UNAVAILABLE,
        cfsb_quota: OFFSET_UNAVAILABLE,
        tg_cfs_bandwidth: OFFSET_UNAVAILABLE,
        tg_css_cgroup: OFFSET_UNAVAILABLE,
        cgroup_kn: OFFSET_UNAVAILABLE,
        kn_id: OFFSET_UNAVAILABLE,
        kn_id_mask: u64::MAX,
        csd_unthrottle_fn: 0,
        rq_cfsb_csd: OFFSET_UNAVAILABLE,
        rq_cfsb_csd_list: OFFSET_UNAVAILABLE,
        cfs_rq_throttled_csd_list: OFFSET_UNAVAILABLE,
        cfs_rq_tg: OFFSET_UNAVAILABLE,
        cfs_rq_throttled: OFFSET_UNAVAILABLE,
        cfs_rq_rq: OFFSET_UNAVAILABLE,
        rq_cpu: OFFSET_UNAVAILABLE,
        cfs_rq_h_nr_queued: OFFSET_UNAVAILABLE,
    };
}

/// Indexes of the per-CPU `LOSS` counters.
pub const LOSS_RINGBUF_FULL: u32 = 0;
/// A close without an open (e.g. the tracer attached mid-callback).
pub const LOSS_UNMATCHED_EXIT: u32 = 1;
/// An open while a frame was open: the earlier callback's close was missed.
pub const LOSS_MISSED_EXIT: u32 = 2;
/// A kernel read on the timer -> cgroup chain failed.
pub const LOSS_CGROUP_READ: u32 = 3;
/// An async-unthrottle CSD close without an open.
pub const LOSS_CSD_UNMATCHED_EXIT: u32 = 4;
/// An async-unthrottle CSD open while one was open (its close was missed; its events are lost).
pub const LOSS_CSD_MISSED_EXIT: u32 = 5;
/// A timer-interrupt span close without an open (after arming).
pub const LOSS_SPAN_UNMATCHED_EXIT: u32 = 6;
/// A timer-interrupt span open while one was open (its close was missed).
pub const LOSS_SPAN_MISSED_EXIT: u32 = 7;
pub const LOSS_SLOTS: u32 = 8;

/// Index in the `ATTACHED` array map: userspace writes the `HOW_*` bits of the probes it
/// attached, so every event says how its figures were obtained.
pub const ATTACHED_SLOT: u32 = 0;
/// In `ATTACHED`: written by userspace once every program is attached. Frames open only
/// after it, so no frame starts before its exit probe is live or before the `HOW_*` bits are
/// final, and an exit seen before it is no loss. Never copied into event flags.
pub const ATTACHED_ARMED: u32 = 1 << 31;

pub const RINGBUF_BYTES: u32 = 1 << 22;

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integers, no implicit padding (checked by the size tests).
    unsafe impl aya::Pod for super::PeriodEvent {}
    unsafe impl aya::Pod for super::AsyncEvent {}
    unsafe impl aya::Pod for super::IrqSpanEvent {}
    unsafe impl aya::Pod for super::KernelLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(
            size_of::<PeriodEvent>(),
            8 + 6 * 8 + 6 * 4 + 8 + 2 * 4 + SPREAD_WORDS * 8
        );
        assert_eq!(size_of::<AsyncEvent>(), 8 + 5 * 8 + 6 * 4);
        assert_eq!(size_of::<IrqSpanEvent>(), 8 + 3 * 8 + 2 * 4);
        assert_eq!(size_of::<KernelLayout>(), 19 * 8);
        assert_eq!(core::mem::offset_of!(IrqSpanEvent, kind), 0);
        // The reader dispatches on the leading kind.
        assert_eq!(core::mem::offset_of!(PeriodEvent, kind), 0);
        assert_eq!(core::mem::offset_of!(AsyncEvent, kind), 0);
    }
}
