//! The period-timer frame: each `sched_cfs_period_timer` callback, entry to return, with IRQs
//! off. Its close emits one `PeriodEvent` (cgroup, period and quota, and what the counters saw
//! inside), or sums it into `UNSENT_PERIODS` when the ring buffer is full.
//!
//! Three attach styles, on every kernel (5.10 to 7.x): fentry/fexit (needs BTF and BPF
//! trampolines), kprobe/kretprobe, or the `hrtimer_expire_entry/exit` tracepoints filtered on
//! the callback's address (the entry as a BTF tracepoint where the kernel has one, 5.5+).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, raw_tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext,
    },
};
use aya_log_ebpf::warn;
use tracer_ebpf::{
    CGROUP_CACHE, CgroupCacheEntry, EVENT_PERIOD, Frames, HOW_CGROUP, HOW_FRAME_FENTRY,
    HOW_FRAME_KPROBE, HOW_FRAME_TRACEPOINT, HOW_IN_SPAN, HOW_LOOPS, HOW_PERIOD, HOW_QUEUED,
    HOW_SPREAD, HOW_UNTHROTTLE, KernelLayout, LOSS_CGROUP_READ, LOSS_MISSED_EXIT,
    LOSS_RINGBUF_FULL, LOSS_UNMATCHED_EXIT, LOSS_UNSENT_FULL, OFFSET_UNAVAILABLE, OPEN_PERIOD,
    OPEN_SPAN, PeriodEvent, PeriodEventNarrow, PeriodEventWide, PeriodFrame, RingState,
    SPREAD_CPUS, SPREAD_WORDS, log2_bucket,
};

use crate::shared::{
    NO_CTX, UNSENT_PERIODS, ZERO_UNSENT, armed, attached_bits, cgroup_of_timer, closing,
    count_loss, emit, emit_with, frames, layout, now, open_frames, read_u32, read_u64, reopening,
    this_cpu,
};

#[inline(always)]
fn period_open(timer: u64, how: u32) {
    if !armed() {
        return;
    }
    let Some(fs) = frames() else {
        return;
    };
    let how = reopening(fs, OPEN_PERIOD, LOSS_MISSED_EXIT, how);
    let f = &mut fs.period;
    f.timer = timer;
    f.loops = 0;
    f.unthrottled = 0;
    f.enqueued = 0;
    f.runnable = 0;
    f.how = how;
    f.spread_overflow = 0;
    f.queued = 0;
    // Only the words the last callback used are dirty (most machines: word 0 only).
    if f.spread_wide != 0 {
        for w in f.spread_mask.iter_mut() {
            *w = 0;
        }
        f.spread_wide = 0;
    } else {
        f.spread_mask[0] = 0;
    }
    fs.open |= OPEN_PERIOD;
    // Last, so the probe's own bookkeeping stays out of the measured span.
    f.start_ns = now();
}

#[inline(always)]
fn period_close() {
    let end = now();
    let Some(fs) = frames() else {
        return;
    };
    if closing(fs, OPEN_PERIOD, LOSS_UNMATCHED_EXIT) {
        period_emit(fs, end);
    }
}

/// Close this CPU's open period frame at `end` and emit its event. The caller has checked
/// that the frame is open (and, for the tracepoint, that it is this timer's).
#[inline(always)]
fn period_emit(fs: &mut Frames, end: u64) {
    let f = &mut fs.period;
    fs.open &= !OPEN_PERIOD;
    fs.csd.nested = 0;
    let l = layout();
    let mut flags = f.how | attached_bits();
    let (cgroup_id, period_ns, quota_ns) = read_bandwidth(&mut fs.cgroups, f.timer, l, &mut flags);
    let duration_ns = end.wrapping_sub(f.start_ns);
    // The timer interrupt that runs this callback: its span learns what the timers took.
    let mut span_start_ns = 0;
    if fs.open & OPEN_SPAN != 0 {
        fs.span.timers += 1;
        fs.span.timers_ns = fs.span.timers_ns.wrapping_add(duration_ns);
        span_start_ns = fs.span.start_ns;
        flags |= HOW_IN_SPAN;
    }
    if flags & HOW_UNTHROTTLE != 0
        && l.cfs_rq_rq != OFFSET_UNAVAILABLE
        && l.rq_cpu != OFFSET_UNAVAILABLE
    {
        flags |= HOW_SPREAD;
    }
    if flags & HOW_UNTHROTTLE != 0 && l.cfs_rq_h_nr_queued != OFFSET_UNAVAILABLE {
        flags |= HOW_QUEUED;
    }
    let head = PeriodEvent {
        kind: EVENT_PERIOD,
        cpu: this_cpu(),
        start_ns: f.start_ns,
        duration_ns,
        cgroup_id,
        timer: f.timer,
        period_ns,
        quota_ns,
        span_start_ns,
        loops: f.loops,
        unthrottled: f.unthrottled,
        enqueued: f.enqueued,
        runnable: f.runnable,
        flags,
        spread_overflow: f.spread_overflow,
        queued: f.queued,
        spread_words: 1,
    };
    // Most callbacks unthrottle cfs_rqs of CPUs 0-63 only: their record carries one word
    // of the bitmap.
    let sent = if f.spread_wide == 0 {
        let word = f.spread_mask[0];
        emit(&mut fs.ring, || PeriodEventNarrow {
            head,
            spread_mask: [word],
        })
    } else {
        emit_wide(&mut fs.ring, &head, &f.spread_mask)
    };
    if !sent {
        count_loss(LOSS_RINGBUF_FULL);
        add_unsent(&head);
    }
}

/// The timer's cgroup id, period and quota (0 where unread), their `HOW_CGROUP` and
/// `HOW_PERIOD` bits into `flags`.
#[inline(always)]
fn read_bandwidth(
    cache: &mut [CgroupCacheEntry; CGROUP_CACHE],
    timer: u64,
    l: &KernelLayout,
    flags: &mut u32,
) -> (u64, u64, u64) {
    if l.cfsb_period_timer == OFFSET_UNAVAILABLE {
        return (0, 0, 0);
    }
    let cfs_b = timer.wrapping_sub(l.cfsb_period_timer);
    let mut cgroup_id = 0;
    match cgroup_of_timer(cache, timer, cfs_b, l) {
        Some(id) => {
            cgroup_id = id;
            *flags |= HOW_CGROUP;
        }
        None => {
            count_loss(LOSS_CGROUP_READ);
            // Never the timer's address: a kernel pointer on stderr defeats KASLR.
            warn!(
                &NO_CTX,
                "cpu {}: a period timer: reading its cgroup failed",
                this_cpu()
            );
        }
    }
    if l.cfsb_period == OFFSET_UNAVAILABLE || l.cfsb_quota == OFFSET_UNAVAILABLE {
        return (cgroup_id, 0, 0);
    }
    // One read where quota follows period (every kernel in the matrix), else two.
    let pq = if l.cfsb_quota == l.cfsb_period + 8 {
        unsafe { bpf_probe_read_kernel(cfs_b.wrapping_add(l.cfsb_period) as *const [u64; 2]) }
            .ok()
            .map(|v| (v[0], v[1]))
    } else {
        match (
            read_u64(cfs_b.wrapping_add(l.cfsb_period)),
            read_u64(cfs_b.wrapping_add(l.cfsb_quota)),
        ) {
            (Some(p), Some(q)) => Some((p, q)),
            _ => None,
        }
    };
    let Some((period_ns, quota_ns)) = pq else {
        warn!(
            &NO_CTX,
            "cpu {}: period timer of cgroup {}: reading its period and quota failed",
            this_cpu(),
            cgroup_id
        );
        return (cgroup_id, 0, 0);
    };
    *flags |= HOW_PERIOD;
    (cgroup_id, period_ns, quota_ns)
}

#[inline(always)]
fn emit_wide(ring: &mut RingState, head: &PeriodEvent, mask: &[u64; SPREAD_WORDS]) -> bool {
    emit_with::<PeriodEventWide>(ring, |slot| {
        // Field by field into the reserved slot: the wide record is too big for the stack.
        let e = slot.as_mut_ptr();
        unsafe {
            (*e).head = *head;
            (*e).head.spread_words = SPREAD_WORDS as u32;
            for i in 0..SPREAD_WORDS {
                (*e).spread_mask[i] = mask[i];
            }
        }
    })
}

/// A callback whose event was lost, into its cgroup's unsent sums. A cgroup's period timer
/// runs on one CPU at a time, so its entry has one writer and plain adds are exact.
#[inline(always)]
fn add_unsent(e: &PeriodEvent) {
    let id = e.cgroup_id;
    let t = match UNSENT_PERIODS.get_ptr_mut(id) {
        Some(t) => t,
        None => {
            // From a zeroed global, not the stack (the frame is already large). NOEXIST:
            // another CPU may have just added it (then the lookup finds it).
            let _ = UNSENT_PERIODS.insert(id, &ZERO_UNSENT, BPF_NOEXIST as u64);
            match UNSENT_PERIODS.get_ptr_mut(id) {
                Some(t) => t,
                None => {
                    count_loss(LOSS_UNSENT_FULL);
                    warn!(
                        &NO_CTX,
                        "UNSENT_PERIODS is full: a lost callback of cgroup {} is not summed", id
                    );
                    return;
                }
            }
        }
    };
    let u = unsafe { &mut *t };
    let t = &mut u.sums;
    t.periods += 1;
    t.callback_ns_sum = t.callback_ns_sum.wrapping_add(e.duration_ns);
    if e.duration_ns > t.callback_ns_max {
        t.callback_ns_max = e.duration_ns;
    }
    if let Some(b) = u.callback_hist.get_mut(log2_bucket(e.duration_ns)) {
        *b += 1;
    }
    t.unthrottled_sum += u64::from(e.unthrottled);
    t.enqueued_sum += u64::from(e.enqueued);
    if e.unthrottled > t.max_unthrottled {
        t.max_unthrottled = e.unthrottled;
    }
    if e.period_ns != 0 && e.duration_ns >= e.period_ns {
        t.over_period += 1;
    }
    if e.flags & HOW_LOOPS != 0 {
        if e.loops > 1 {
            t.multi_pass += 1;
        }
        if e.loops > t.max_loops {
            t.max_loops = e.loops;
        }
    }
}

/// A probed `unthrottle_cfs_rq` inside the callback: counted, its CPU marked in the bitmap,
/// the tasks it releases added.
#[inline(always)]
pub(super) fn period_unthrottled(f: &mut PeriodFrame, cfs_rq: u64) {
    f.unthrottled += 1;
    mark_cpu(f, cfs_rq);
    add_queued(f, cfs_rq);
}

/// The tasks this unthrottle releases: `cfs_rq->h_nr_queued` (or `h_nr_running`), read
/// before the function moves them back onto the runqueue.
#[inline(always)]
fn add_queued(f: &mut PeriodFrame, cfs_rq: u64) {
    let off = layout().cfs_rq_h_nr_queued;
    if off == OFFSET_UNAVAILABLE || cfs_rq == 0 {
        return;
    }
    if let Some(n) = read_u32(cfs_rq.wrapping_add(off)) {
        f.queued = f.queued.saturating_add(n);
    }
}

/// `cfs_rq->rq->cpu` into the open period frame's CPU bitmap.
#[inline(always)]
fn mark_cpu(f: &mut PeriodFrame, cfs_rq: u64) {
    let l = layout();
    if l.cfs_rq_rq == OFFSET_UNAVAILABLE || l.rq_cpu == OFFSET_UNAVAILABLE || cfs_rq == 0 {
        return;
    }
    let Some(rq) = read_u64(cfs_rq.wrapping_add(l.cfs_rq_rq)) else {
        return;
    };
    if rq == 0 {
        return;
    }
    let Some(cpu) = read_u32(rq.wrapping_add(l.rq_cpu)) else {
        return;
    };
    if cpu >= SPREAD_CPUS {
        f.spread_overflow += 1;
        return;
    }
    if cpu >= 64 {
        f.spread_wide = 1;
    }
    if let Some(w) = f.spread_mask.get_mut((cpu / 64) as usize) {
        *w |= 1u64 << (cpu % 64);
    }
}

// ---- kprobe / kretprobe ----

#[kprobe]
pub fn period_timer_kprobe(ctx: ProbeContext) -> u32 {
    period_open(ctx.arg(0).unwrap_or(0), HOW_FRAME_KPROBE);
    0
}

#[kretprobe]
pub fn period_timer_kretprobe(_ctx: RetProbeContext) -> u32 {
    period_close();
    0
}

// ---- fentry / fexit ----

#[fentry(function = "sched_cfs_period_timer")]
pub fn period_timer_fentry(ctx: FEntryContext) -> u32 {
    period_open(ctx.arg(0), HOW_FRAME_FENTRY);
    0
}

#[fexit(function = "sched_cfs_period_timer")]
pub fn period_timer_fexit(_ctx: FExitContext) -> u32 {
    period_close();
    0
}

// ---- hrtimer tracepoints, filtered on the callback address ----

#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn hrtimer_expire_entry(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let l = layout();
    if l.period_timer_fn == 0 || l.hrtimer_function == OFFSET_UNAVAILABLE {
        return 0;
    }
    if read_u64(timer.wrapping_add(l.hrtimer_function)) == Some(l.period_timer_fn) {
        period_open(timer, HOW_FRAME_TRACEPOINT);
    }
    0
}

/// The same filter as a BTF tracepoint (5.5+, preferred): the verifier knows `timer` is a
/// `struct hrtimer` and the offset is a constant of the frozen `.rodata`, so
/// `timer->function` is a plain load instead of a `bpf_probe_read_kernel` call on every
/// hrtimer of every CPU.
#[btf_tracepoint(function = "hrtimer_expire_entry")]
pub fn hrtimer_expire_entry_btf(ctx: BtfTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    let l = layout();
    if l.period_timer_fn == 0 || l.hrtimer_function == OFFSET_UNAVAILABLE || timer == 0 {
        return 0;
    }
    let function = unsafe { *(timer.wrapping_add(l.hrtimer_function) as *const u64) };
    if function == l.period_timer_fn {
        period_open(timer, HOW_FRAME_TRACEPOINT);
    }
    0
}

#[raw_tracepoint(tracepoint = "hrtimer_expire_exit")]
pub fn hrtimer_expire_exit(ctx: RawTracePointContext) -> i32 {
    let timer: u64 = ctx.arg(0);
    // Cheap test first: most hrtimers expire with no frame open.
    if let Some(f) = open_frames() {
        if f.open & OPEN_PERIOD != 0 && f.period.timer == timer {
            period_emit(f, now());
        }
    }
    0
}
