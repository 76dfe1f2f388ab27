//! Kernel side of cfstrace: a per-CPU frame around each `sched_cfs_period_timer` callback.
//!
//! The frame is opened by one of three attach styles (kprobe, fentry, or the hrtimer
//! tracepoints filtered on the callback's address) and closed when the callback returns.
//! The counting probes (`distribute_cfs_runtime`, `unthrottle_cfs_rq`, `enqueue_*`,
//! `sched_update_nr_running_tp`) sit on hot paths, so they do one per-CPU array lookup and
//! return at once unless the frame is open.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
        macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
        maps::{Array, PerCpuArray, RingBuf},
        programs::{
            FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        },
    };
    use tracer_ebpf::{
        ATTACHED_SLOT, HOW_CGROUP, HOW_FRAME_FENTRY, HOW_FRAME_KPROBE, HOW_FRAME_TRACEPOINT,
        HOW_PERIOD, HOW_REOPENED, KernelLayout, LOSS_CGROUP_READ, LOSS_MISSED_EXIT,
        LOSS_RINGBUF_FULL, LOSS_SLOTS, LOSS_UNMATCHED_EXIT, OFFSET_UNAVAILABLE, PeriodEvent,
        RINGBUF_BYTES,
    };

    /// Written by userspace before load (from the running kernel's BTF and kallsyms).
    #[unsafe(no_mangle)]
    static LAYOUT: KernelLayout = KernelLayout::UNAVAILABLE;

    /// The open frame of this CPU. `active == 0` means no callback is running.
    #[repr(C)]
    pub struct Frame {
        start_ns: u64,
        timer: u64,
        loops: u32,
        unthrottled: u32,
        enqueued: u32,
        runnable: u32,
        active: u32,
        how: u32,
    }

    #[map]
    static FRAME: PerCpuArray<Frame> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

    #[map]
    static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

    #[map]
    static ATTACHED: Array<u32> = Array::with_max_entries(1, 0);

    #[inline(always)]
    fn layout() -> &'static KernelLayout {
        // read_volatile keeps the compiler from folding the default values in.
        unsafe { &*core::ptr::read_volatile(&&LAYOUT) }
    }

    #[inline(always)]
    fn count_loss(slot: u32) {
        if let Some(p) = LOSS.get_ptr_mut(slot) {
            unsafe { *p += 1 };
        }
    }

    /// The frame if a period-timer callback is running on this CPU.
    #[inline(always)]
    fn open_frame() -> Option<&'static mut Frame> {
        let f = unsafe { &mut *FRAME.get_ptr_mut(0)? };
        if f.active == 0 { None } else { Some(f) }
    }

    #[inline(always)]
    fn frame_open(timer: u64, how: u32) {
        let Some(p) = FRAME.get_ptr_mut(0) else {
            return;
        };
        let f = unsafe { &mut *p };
        let mut how = how;
        if f.active != 0 {
            count_loss(LOSS_MISSED_EXIT);
            how |= HOW_REOPENED;
        }
        f.timer = timer;
        f.loops = 0;
        f.unthrottled = 0;
        f.enqueued = 0;
        f.runnable = 0;
        f.how = how;
        f.active = 1;
        // Last, so the probe's own bookkeeping stays out of the measured span.
        f.start_ns = unsafe { bpf_ktime_get_ns() };
    }

    #[inline(always)]
    fn read_u64(addr: u64) -> Option<u64> {
        unsafe { bpf_probe_read_kernel(addr as *const u64).ok() }
    }

    /// hrtimer -> cfs_bandwidth -> task_group -> css.cgroup -> kn -> id.
    #[inline(always)]
    fn cgroup_of(cfs_b: u64, l: &KernelLayout) -> Option<u64> {
        if l.tg_cfs_bandwidth == OFFSET_UNAVAILABLE
            || l.tg_css_cgroup == OFFSET_UNAVAILABLE
            || l.cgroup_kn == OFFSET_UNAVAILABLE
            || l.kn_id == OFFSET_UNAVAILABLE
        {
            return None;
        }
        let tg = cfs_b.wrapping_sub(l.tg_cfs_bandwidth);
        let cgrp = read_u64(tg.wrapping_add(l.tg_css_cgroup))?;
        if cgrp == 0 {
            return None;
        }
        let kn = read_u64(cgrp.wrapping_add(l.cgroup_kn))?;
        if kn == 0 {
            return None;
        }
        Some(read_u64(kn.wrapping_add(l.kn_id))? & l.kn_id_mask)
    }

    #[inline(always)]
    fn frame_close(timer_check: Option<u64>) {
        let end = unsafe { bpf_ktime_get_ns() };
        let Some(p) = FRAME.get_ptr_mut(0) else {
            return;
        };
        let f = unsafe { &mut *p };
        if f.active == 0 {
            count_loss(LOSS_UNMATCHED_EXIT);
            return;
        }
        if let Some(t) = timer_check {
            // Tracepoint exit fires for every hrtimer: only ours closes the frame.
            if t != f.timer {
                return;
            }
        }
        f.active = 0;
        let l = layout();
        let mut flags = f.how;
        if let Some(a) = ATTACHED.get(ATTACHED_SLOT) {
            flags |= *a;
        }
        let mut cgroup_id = 0;
        let mut period_ns = 0;
        let mut quota_ns = 0;
        if l.cfsb_period_timer != OFFSET_UNAVAILABLE {
            let cfs_b = f.timer.wrapping_sub(l.cfsb_period_timer);
            match cgroup_of(cfs_b, l) {
                Some(id) => {
                    cgroup_id = id;
                    flags |= HOW_CGROUP;
                }
                None => count_loss(LOSS_CGROUP_READ),
            }
            if l.cfsb_period != OFFSET_UNAVAILABLE && l.cfsb_quota != OFFSET_UNAVAILABLE {
                if let (Some(p), Some(q)) = (
                    read_u64(cfs_b.wrapping_add(l.cfsb_period)),
                    read_u64(cfs_b.wrapping_add(l.cfsb_quota)),
                ) {
                    period_ns = p;
                    quota_ns = q;
                    flags |= HOW_PERIOD;
                }
            }
        }
        match EVENTS.reserve::<PeriodEvent>(0) {
            Some(mut slot) => {
                slot.write(PeriodEvent {
                    start_ns: f.start_ns,
                    duration_ns: end.wrapping_sub(f.start_ns),
                    cgroup_id,
                    timer: f.timer,
                    period_ns,
                    quota_ns,
                    cpu: unsafe { bpf_get_smp_processor_id() },
                    loops: f.loops,
                    unthrottled: f.unthrottled,
                    enqueued: f.enqueued,
                    runnable: f.runnable,
                    flags,
                });
                slot.submit(0);
            }
            None => count_loss(LOSS_RINGBUF_FULL),
        }
    }

    // ---- frame: kprobe / kretprobe ----

    #[kprobe]
    pub fn period_timer_kprobe(ctx: ProbeContext) -> u32 {
        let timer: u64 = ctx.arg(0).unwrap_or(0);
        frame_open(timer, HOW_FRAME_KPROBE);
        0
    }

    #[kretprobe]
    pub fn period_timer_kretprobe(_ctx: RetProbeContext) -> u32 {
        frame_close(None);
        0
    }

    // ---- frame: fentry / fexit ----

    #[fentry(function = "sched_cfs_period_timer")]
    pub fn period_timer_fentry(ctx: FEntryContext) -> u32 {
        let timer: u64 = ctx.arg(0);
        frame_open(timer, HOW_FRAME_FENTRY);
        0
    }

    #[fexit(function = "sched_cfs_period_timer")]
    pub fn period_timer_fexit(_ctx: FExitContext) -> u32 {
        frame_close(None);
        0
    }

    // ---- frame: hrtimer tracepoints, filtered on the callback address ----

    #[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
    pub fn hrtimer_expire_entry(ctx: RawTracePointContext) -> i32 {
        let timer: u64 = ctx.arg(0);
        let l = layout();
        if l.period_timer_fn == 0 || l.hrtimer_function == OFFSET_UNAVAILABLE {
            return 0;
        }
        if read_u64(timer.wrapping_add(l.hrtimer_function)) == Some(l.period_timer_fn) {
            frame_open(timer, HOW_FRAME_TRACEPOINT);
        }
        0
    }

    #[raw_tracepoint(tracepoint = "hrtimer_expire_exit")]
    pub fn hrtimer_expire_exit(ctx: RawTracePointContext) -> i32 {
        let timer: u64 = ctx.arg(0);
        // Cheap test first: most hrtimers expire with no frame open.
        if let Some(f) = open_frame() {
            if f.timer == timer {
                frame_close(Some(timer));
            }
        }
        0
    }

    // ---- counters: only inside an open frame ----

    #[kprobe]
    pub fn distribute_kprobe(_ctx: ProbeContext) -> u32 {
        if let Some(f) = open_frame() {
            f.loops += 1;
        }
        0
    }

    #[fentry(function = "distribute_cfs_runtime")]
    pub fn distribute_fentry(_ctx: FEntryContext) -> u32 {
        if let Some(f) = open_frame() {
            f.loops += 1;
        }
        0
    }

    #[kprobe]
    pub fn unthrottle_kprobe(_ctx: ProbeContext) -> u32 {
        if let Some(f) = open_frame() {
            f.unthrottled += 1;
        }
        0
    }

    #[fentry(function = "unthrottle_cfs_rq")]
    pub fn unthrottle_fentry(_ctx: FEntryContext) -> u32 {
        if let Some(f) = open_frame() {
            f.unthrottled += 1;
        }
        0
    }

    #[kprobe]
    pub fn enqueue_kprobe(_ctx: ProbeContext) -> u32 {
        if let Some(f) = open_frame() {
            f.enqueued += 1;
        }
        0
    }

    #[fentry(function = "enqueue_entity")]
    pub fn enqueue_fentry(_ctx: FEntryContext) -> u32 {
        if let Some(f) = open_frame() {
            f.enqueued += 1;
        }
        0
    }

    /// `sched_update_nr_running_tp(struct rq *rq, int change)`: tasks made runnable.
    #[raw_tracepoint(tracepoint = "sched_update_nr_running_tp")]
    pub fn nr_running(ctx: RawTracePointContext) -> i32 {
        if let Some(f) = open_frame() {
            let change: u64 = ctx.arg(1);
            let change = change as i32;
            if change > 0 {
                f.runnable += change as u32;
            }
        }
        0
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}
