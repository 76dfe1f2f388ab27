//! Types that cross the kernel/user boundary. `#[repr(C)]` with explicit padding so the
//! layout is identical in the BPF object and in the `cfstrace` binary.
//!
//! Plain data, constants and the bucket functions both sides must agree on: no maps, no
//! helpers, no aya-ebpf (the programs are in `main.rs` and `probes/`). The `user` feature,
//! for the reader only, implements `aya::Pod`.
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

/// One `sched_cfs_period_timer` callback, emitted when its frame closes. The record is this
/// head followed by `spread_words` words of the CPU bitmap: one word ([`PeriodEventNarrow`])
/// when every unthrottled cfs_rq was on CPUs 0-63, all [`SPREAD_WORDS`] ([`PeriodEventWide`])
/// otherwise, so the common record is less than half the size of the wide one.
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
    /// Start of the timer-interrupt span this callback ran in (`HOW_IN_SPAN`), else 0.
    pub span_start_ns: u64,
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
    /// Unthrottles on CPUs >= `SPREAD_CPUS` (calls, not distinct CPUs).
    pub spread_overflow: u32,
    /// Tasks queued under the cfs_rqs it unthrottled, read at each unthrottle
    /// (`cfs_rq.h_nr_queued`, `h_nr_running` before 6.14): the tasks released back to the
    /// runqueues. Real only with `HOW_QUEUED`.
    pub queued: u32,
    /// Words of the CPU bitmap that follow this head: 1 or `SPREAD_WORDS`. Bit `c` set: the
    /// cfs_rq of CPU `c` (`cfs_rq->rq->cpu`) was unthrottled in the callback (real only with
    /// `HOW_SPREAD`); the distinct CPUs are counted by the reader.
    pub spread_words: u32,
}

/// A [`PeriodEvent`] whose unthrottled cfs_rqs were all on CPUs 0-63.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodEventNarrow {
    pub head: PeriodEvent,
    pub spread_mask: [u64; 1],
}

/// A [`PeriodEvent`] with the whole CPU bitmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodEventWide {
    pub head: PeriodEvent,
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
/// Period event: the spread bitmap is real (`unthrottle_cfs_rq` probed and the BTF gives
/// `cfs_rq.rq` and `rq.cpu`).
pub const HOW_SPREAD: u32 = 1 << 17;
/// Period event: `queued` is real (`unthrottle_cfs_rq` probed and the BTF gives
/// `cfs_rq.h_nr_queued` or `h_nr_running`).
pub const HOW_QUEUED: u32 = 1 << 18;

/// Most `rq->cfsb_csd_list` entries walked at CSD entry (a bounded loop for the verifier).
pub const MAX_LISTED: u32 = 32;

/// Buckets of the in-kernel log2 histograms ([`log2_bucket`]).
pub const TOTALS_BUCKETS: usize = 40;

/// The log2 histogram bucket of `v`: 0 for 0, else the number of significant bits (bucket `b`
/// holds `2^(b-1) <= v < 2^b`), capped at the last bucket. Shared by the programs and the
/// reader so both sides agree on the bounds.
#[inline(always)]
pub fn log2_bucket(v: u64) -> usize {
    let mut b: usize = 0;
    let mut x = v;
    // Written out, not as a loop: the 6.1 verifier loses the bounds of a looped version
    // and refuses the histogram index that follows.
    if x >= 1 << 32 {
        b += 32;
        x >>= 32;
    }
    if x >= 1 << 16 {
        b += 16;
        x >>= 16;
    }
    if x >= 1 << 8 {
        b += 8;
        x >>= 8;
    }
    if x >= 1 << 4 {
        b += 4;
        x >>= 4;
    }
    if x >= 1 << 2 {
        b += 2;
        x >>= 2;
    }
    if x >= 1 << 1 {
        b += 1;
        x >>= 1;
    }
    let b = b + x as usize;
    if b >= TOTALS_BUCKETS {
        TOTALS_BUCKETS - 1
    } else {
        b
    }
}

/// One cgroup's period-timer callbacks whose events the ring buffer had no room for, summed in
/// the kernel (`UNSENT_PERIODS`, keyed by cgroup id). The reader adds them to what it decoded,
/// so callback counts, times and the worst callback stay exact when events are lost, at no
/// cost while the ring buffer keeps up (the map is touched only when a reserve fails).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsentPeriods {
    pub sums: PeriodSums,
    /// Callback time, [`log2_bucket`] of ns.
    pub callback_hist: [u32; TOTALS_BUCKETS],
}

/// A cgroup's lost callbacks summed: what the reader adds to the callbacks it decoded. The
/// capture's `unsent_periods` line carries it as is (hence serde in userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct PeriodSums {
    pub periods: u64,
    pub callback_ns_sum: u64,
    pub callback_ns_max: u64,
    /// Sums of the per-callback counts (real where the frame's flags say so).
    pub unthrottled_sum: u64,
    pub enqueued_sum: u64,
    /// Callbacks that took at least their own period.
    pub over_period: u64,
    /// Callbacks with more than one `distribute_cfs_runtime` pass.
    pub multi_pass: u64,
    pub max_loops: u32,
    pub max_unthrottled: u32,
}

impl UnsentPeriods {
    pub const ZERO: Self = Self {
        sums: PeriodSums {
            periods: 0,
            callback_ns_sum: 0,
            callback_ns_max: 0,
            unthrottled_sum: 0,
            enqueued_sum: 0,
            over_period: 0,
            multi_pass: 0,
            max_loops: 0,
            max_unthrottled: 0,
        },
        callback_hist: [0; TOTALS_BUCKETS],
    };
}

/// Sub-buckets per power of two of [`fine_bucket`]: bucket widths are 1/16 of their lower
/// bound (6 %), fine enough to compare the same span's time between two runs.
pub const FINE_SUB_BITS: u32 = 4;
/// [`fine_bucket`] resolves 2^FINE_MIN_LOG2 ns (1 us) to 2^FINE_MAX_LOG2 ns (1 s).
pub const FINE_MIN_LOG2: u32 = 10;
pub const FINE_MAX_LOG2: u32 = 30;
pub const FINE_BUCKETS: usize =
    2 + ((FINE_MAX_LOG2 - FINE_MIN_LOG2) as usize) * (1 << FINE_SUB_BITS as usize);

/// Log-linear bucket of `v` ns: 0 below 1 us, the last at 1 s and above, 16 buckets for each
/// power of two between. Bucket `i`'s bounds are [`fine_bucket_low`] of `i` and of `i + 1`.
#[inline(always)]
pub fn fine_bucket(v: u64) -> usize {
    if v < 1 << FINE_MIN_LOG2 {
        return 0;
    }
    // floor(log2 v) >= FINE_MIN_LOG2.
    let l = (log2_bucket(v) - 1) as u32;
    if l >= FINE_MAX_LOG2 {
        return FINE_BUCKETS - 1;
    }
    let sub = ((v >> (l - FINE_SUB_BITS)) & ((1 << FINE_SUB_BITS) - 1)) as usize;
    1 + ((l - FINE_MIN_LOG2) as usize) * (1 << FINE_SUB_BITS as usize) + sub
}

/// The lower bound in ns of [`fine_bucket`] `i` (0 for bucket 0).
pub fn fine_bucket_low(i: usize) -> u64 {
    if i == 0 {
        return 0;
    }
    if i >= FINE_BUCKETS - 1 {
        return 1 << FINE_MAX_LOG2;
    }
    let per = 1usize << FINE_SUB_BITS;
    let l = FINE_MIN_LOG2 + ((i - 1) / per) as u32;
    let sub = ((i - 1) % per) as u64;
    (1u64 << l) + (sub << (l - FINE_SUB_BITS))
}

/// One CPU's timer interrupts, summed in the kernel at every span close (in the CPU's
/// `FRAME` value, so no second lookup): all of them, for the node's baseline and the
/// tracer's own-cost accounting, and those that ran period timers, whose worst span, and so
/// the watchdog's headroom, stays exact whatever the ring buffer drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanTotals {
    /// Every timer interrupt: count, time, longest.
    pub all: u64,
    pub all_ns: u64,
    pub all_max_ns: u64,
    /// Spans that ran at least one period timer.
    pub spans: u64,
    /// Their time, and the period timers run in them.
    pub spans_ns: u64,
    pub timers: u64,
    pub worst_ns: u64,
    pub worst_start_ns: u64,
    /// The worst span's period-timer time and count.
    pub worst_timers_ns: u64,
    pub worst_timers: u32,
    /// Most period timers in one span.
    pub max_timers: u32,
    /// Every timer interrupt's time, [`fine_bucket`] of ns.
    pub all_hist: [u32; FINE_BUCKETS],
}

impl SpanTotals {
    pub const ZERO: Self = Self {
        all: 0,
        all_ns: 0,
        all_max_ns: 0,
        spans: 0,
        spans_ns: 0,
        timers: 0,
        worst_ns: 0,
        worst_start_ns: 0,
        worst_timers_ns: 0,
        worst_timers: 0,
        max_timers: 0,
        all_hist: [0; FINE_BUCKETS],
    };
}

impl Default for UnsentPeriods {
    fn default() -> Self {
        Self::ZERO
    }
}

impl Default for SpanTotals {
    fn default() -> Self {
        Self::ZERO
    }
}

// ---- the per-CPU frames (kernel-side state; the reader reads only `SpanFrame::totals`) ----

/// `Frames::open` bits.
pub const OPEN_PERIOD: u32 = 1 << 0;
pub const OPEN_CSD: u32 = 1 << 1;
pub const OPEN_SPAN: u32 = 1 << 2;

/// The open period-timer callback of this CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeriodFrame {
    pub start_ns: u64,
    pub timer: u64,
    pub loops: u32,
    pub unthrottled: u32,
    pub enqueued: u32,
    pub runnable: u32,
    pub how: u32,
    /// Unthrottles on CPUs beyond the bitmap.
    pub spread_overflow: u32,
    /// Tasks queued under the unthrottled cfs_rqs (`h_nr_queued` at each unthrottle).
    pub queued: u32,
    /// A CPU >= 64 was marked: the bitmap's other words are in use (and must be cleared).
    pub spread_wide: u32,
    /// CPUs whose cfs_rqs were unthrottled (`cfs_rq->rq->cpu`).
    pub spread_mask: [u64; SPREAD_WORDS],
}

/// The open timer interrupt of this CPU and the period timers that ran inside it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SpanFrame {
    pub start_ns: u64,
    pub timers_ns: u64,
    pub timers: u32,
    pub how: u32,
    /// This CPU's span totals, kept here so the span's close needs no second lookup; the
    /// reader reads them from the `FRAME` map.
    pub totals: SpanTotals,
}

/// The open async-unthrottle CSD of this CPU and its current segment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CsdFrame {
    pub start_ns: u64,
    /// What the exit must match: `&rq->cfsb_csd` for the tracepoints (0 otherwise).
    pub csd: u64,
    pub seg_start_ns: u64,
    pub seg_cgroup: u64,
    pub seg_unthrottled: u32,
    pub seg_enqueued: u32,
    pub seg_runnable: u32,
    /// Events emitted so far for this CSD.
    pub segment: u32,
    pub how: u32,
    /// HOW_CGROUP if the current segment's cgroup was read.
    pub seg_flags: u32,
    /// A probed `unthrottle_cfs_rq` has started a segment (probe mode).
    pub seg_open: u32,
    /// `__cfsb_csd_unthrottle` calls made inside the period timer (the timer's own work,
    /// counted there) that have not returned yet.
    pub nested: u32,
    /// Listed mode: entries walked at entry, and the index of the last still-throttled
    /// one (`NONE_LISTED` if none).
    pub listed_n: u32,
    pub listed_last: u32,
    /// Listed mode: the cfs_rqs on the list at entry, by position; 0 for those no longer
    /// throttled (the CSD skips them too).
    pub listed: [u64; MAX_LISTED as usize],
}

pub const NONE_LISTED: u32 = u32::MAX;

/// Entries of each CPU's cache of period timer -> cgroup id (a power of two).
pub const CGROUP_CACHE: usize = 256;

/// A period timer whose cgroup id this CPU has read: valid while the timer's task_group still
/// has the css `serial` (a freed and reused task_group gets another).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupCacheEntry {
    pub timer: u64,
    pub serial: u64,
    pub cgroup_id: u64,
}

/// Records a CPU submits between two looks at the ring buffer's fill level (a helper call
/// saved on the other records; the threshold is passed by at most this many records a CPU).
pub const QUERY_EVERY: u32 = 8;

/// One CPU's view of the ring buffer's fill level, for the wakeup rule (`RingConfig`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RingState {
    /// Records to submit before the next look.
    pub until_query: u32,
    /// This CPU has woken the reader since it last saw the buffer below the threshold.
    pub woke: u32,
}

/// All frames of one CPU (the `FRAME` per-CPU map) in one value, so a hot-path probe needs a
/// single lookup and a single load of `open` to know it has nothing to do. Hard IRQs do not
/// nest and the period timer and the CSD both run with IRQs off, so at most one of those two
/// is open at a time on a CPU; the period frame opens inside the timer-interrupt span that
/// runs it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frames {
    pub open: u32,
    pub _pad: u32,
    pub ring: RingState,
    /// Period timer -> cgroup id: one read to validate instead of three to resolve.
    pub cgroups: [CgroupCacheEntry; CGROUP_CACHE],
    pub period: PeriodFrame,
    pub csd: CsdFrame,
    pub span: SpanFrame,
}

/// Entries of `UNSENT_PERIODS` (not preallocated: memory follows the cgroups that lost events).
pub const UNSENT_MAX_CGROUPS: u32 = 16_384;

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
    /// offsetof(struct task_group, css) + offsetof(struct cgroup_subsys_state, serial_nr): a
    /// number no other css ever gets, which validates the per-CPU cgroup cache.
    pub tg_css_serial_nr: u64,
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
        tg_css_serial_nr: OFFSET_UNAVAILABLE,
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
/// A callback whose event was lost could not be summed either: `UNSENT_PERIODS` was full.
pub const LOSS_UNSENT_FULL: u32 = 8;
pub const LOSS_SLOTS: u32 = 9;

/// Index in the `ATTACHED` array map: userspace writes the `HOW_*` bits of the probes it
/// attached, so every event says how its figures were obtained.
pub const ATTACHED_SLOT: u32 = 0;
/// In `ATTACHED`: written by userspace once every program is attached. Frames open only
/// after it, so no frame starts before its exit probe is live or before the `HOW_*` bits are
/// final, and an exit seen before it is no loss. Never copied into event flags.
pub const ATTACHED_ARMED: u32 = 1 << 31;

/// The ring buffer's size in the object; the reader resizes it at load from the CPU count.
pub const RINGBUF_BYTES: u32 = 1 << 22;

/// Ring-buffer tuning written by userspace before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Unread bytes past which a submit wakes the reader. Below it events are submitted with
    /// `BPF_RB_NO_WAKEUP`: a wakeup is an irq_work (a self-IPI, a VM exit when virtualised)
    /// raised from inside the IRQs-off window being measured, so the reader drains on its own
    /// timer instead and is woken only when the buffer is filling faster than that.
    pub wake_at_bytes: u64,
}

impl RingConfig {
    pub const DEFAULT: Self = Self {
        wake_at_bytes: RINGBUF_BYTES as u64 / 2,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integers, no implicit padding (checked by the size tests).
    unsafe impl aya::Pod for super::PeriodEvent {}
    unsafe impl aya::Pod for super::AsyncEvent {}
    unsafe impl aya::Pod for super::IrqSpanEvent {}
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::RingConfig {}
    unsafe impl aya::Pod for super::UnsentPeriods {}
    unsafe impl aya::Pod for super::SpanTotals {}
    // Read by the reader only for `span.totals`; integers only, no implicit padding.
    unsafe impl aya::Pod for super::Frames {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(size_of::<PeriodEvent>(), 8 + 7 * 8 + 8 * 4);
        assert_eq!(size_of::<PeriodEventNarrow>(), size_of::<PeriodEvent>() + 8);
        assert_eq!(
            size_of::<PeriodEventWide>(),
            size_of::<PeriodEvent>() + SPREAD_WORDS * 8
        );
        assert_eq!(
            size_of::<UnsentPeriods>(),
            7 * 8 + 2 * 4 + TOTALS_BUCKETS * 4
        );
        assert_eq!(size_of::<SpanTotals>(), 9 * 8 + 2 * 4 + FINE_BUCKETS * 4);
        assert_eq!(FINE_BUCKETS % 2, 0, "keeps SpanTotals 8-byte aligned");
        assert_eq!(size_of::<AsyncEvent>(), 8 + 5 * 8 + 6 * 4);
        assert_eq!(size_of::<IrqSpanEvent>(), 8 + 3 * 8 + 2 * 4);
        assert_eq!(size_of::<KernelLayout>(), 20 * 8);
        assert_eq!(core::mem::offset_of!(IrqSpanEvent, kind), 0);
        // The reader dispatches on the leading kind.
        assert_eq!(core::mem::offset_of!(PeriodEvent, kind), 0);
        assert_eq!(core::mem::offset_of!(AsyncEvent, kind), 0);
    }

    #[test]
    fn fine_buckets() {
        assert_eq!(fine_bucket(0), 0);
        assert_eq!(fine_bucket(1023), 0);
        assert_eq!(fine_bucket(1024), 1);
        assert_eq!(fine_bucket(1024 + 63), 1);
        assert_eq!(fine_bucket(1024 + 64), 2);
        assert_eq!(fine_bucket(2047), 16);
        assert_eq!(fine_bucket(2048), 17);
        assert_eq!(fine_bucket(1 << 30), FINE_BUCKETS - 1);
        assert_eq!(fine_bucket(u64::MAX), FINE_BUCKETS - 1);
        // Every value lies within its bucket's bounds, and the bounds only grow.
        for v in (0..40_000u64).chain((1..2000).map(|k| k * 524_287)) {
            let b = fine_bucket(v);
            assert!(fine_bucket_low(b) <= v, "{v} below bucket {b}");
            if b + 1 < FINE_BUCKETS {
                assert!(v < fine_bucket_low(b + 1), "{v} above bucket {b}");
            }
        }
        for i in 1..FINE_BUCKETS {
            assert!(fine_bucket_low(i) > fine_bucket_low(i - 1));
            assert_eq!(fine_bucket(fine_bucket_low(i)), i);
        }
    }

    #[test]
    fn log2_buckets() {
        for i in 0..64 {
            let p = 1u64 << i;
            for v in [p, p + 1, p.wrapping_mul(2).wrapping_sub(1)] {
                let bits = (64 - v.leading_zeros()) as usize;
                assert_eq!(log2_bucket(v), bits.min(TOTALS_BUCKETS - 1), "{v}");
            }
        }
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(2), 2);
        assert_eq!(log2_bucket(3), 2);
        assert_eq!(log2_bucket(4), 3);
        assert_eq!(log2_bucket(1023), 10);
        assert_eq!(log2_bucket(1024), 11);
        assert_eq!(log2_bucket(1 << 38), TOTALS_BUCKETS - 1);
        assert_eq!(log2_bucket(u64::MAX), TOTALS_BUCKETS - 1);
        for b in 1..TOTALS_BUCKETS - 1 {
            assert_eq!(log2_bucket(1 << (b - 1)), b);
            assert_eq!(log2_bucket((1 << b) - 1), b);
        }
    }
}
