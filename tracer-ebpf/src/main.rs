//! Kernel side of cfstrace: per-CPU frames around each `sched_cfs_period_timer` callback,
//! around each async-unthrottle CSD (`__cfsb_csd_unthrottle`, 6.3+), and around each timer
//! interrupt (`hrtimer_interrupt` or x86 `local_timer_entry/exit`), which holds the callbacks.
//!
//! Each frame is opened by one of three attach styles (kprobe, fentry, or tracepoints filtered
//! on the function's address) and closed when the function returns. The counting probes
//! (`distribute_cfs_runtime`, `unthrottle_cfs_rq`, `enqueue_*`, `sched_update_nr_running_tp`)
//! sit on hot paths, so they do one per-CPU array lookup and return at once unless a frame is
//! open. The timer-interrupt span runs on every timer interrupt of every CPU: its entry is one
//! per-CPU lookup and a timestamp, its exit emits an event only if a period timer ran inside.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
        helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
        macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
        maps::{Array, HashMap, PerCpuArray, RingBuf},
        programs::{
            BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
            RetProbeContext,
        },
    };
    use tracer_ebpf::{
        ASYNC_EMPTY, ASYNC_LAST, ASYNC_LISTED, ASYNC_SHARED, ASYNC_TRUNCATED, ATTACHED_ARMED,
        ATTACHED_SLOT, AsyncEvent, CGROUP_CACHE, CgroupCacheEntry, CsdFrame,
        EVENT_ASYNC_UNTHROTTLE, EVENT_IRQ_SPAN, EVENT_PERIOD, Frames, HOW_CGROUP, HOW_FRAME_FENTRY,
        HOW_FRAME_KPROBE, HOW_FRAME_TRACEPOINT, HOW_IN_SPAN, HOW_LOOPS, HOW_PERIOD, HOW_QUEUED,
        HOW_REOPENED, HOW_SPREAD, HOW_UNTHROTTLE, IrqSpanEvent, KernelLayout, LOSS_CGROUP_READ,
        LOSS_CSD_MISSED_EXIT, LOSS_CSD_UNMATCHED_EXIT, LOSS_MISSED_EXIT, LOSS_RINGBUF_FULL,
        LOSS_SLOTS, LOSS_SPAN_MISSED_EXIT, LOSS_SPAN_UNMATCHED_EXIT, LOSS_UNMATCHED_EXIT,
        LOSS_UNSENT_FULL, MAX_LISTED, NONE_LISTED, OFFSET_UNAVAILABLE, OPEN_CSD, OPEN_PERIOD,
        OPEN_SPAN, PeriodEvent, PeriodEventNarrow, PeriodEventWide, PeriodFrame, QUERY_EVERY,
        RINGBUF_BYTES, RingConfig, RingState, SPREAD_CPUS, SPREAD_WORDS, UNSENT_MAX_CGROUPS,
        UnsentPeriods, fine_bucket, log2_bucket,
    };

    /// Written by userspace before load (from the running kernel's BTF and kallsyms).
    #[unsafe(no_mangle)]
    static LAYOUT: KernelLayout = KernelLayout::UNAVAILABLE;

    /// Written by userspace before load (from the ring buffer's size).
    #[unsafe(no_mangle)]
    static RING: RingConfig = RingConfig::DEFAULT;

    #[map]
    static FRAME: PerCpuArray<Frames> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

    #[map]
    static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

    #[map]
    static ATTACHED: Array<u32> = Array::with_max_entries(1, 0);

    /// Per-cgroup sums of the callbacks whose events were lost.
    #[map]
    static UNSENT_PERIODS: HashMap<u64, UnsentPeriods> =
        HashMap::with_max_entries(UNSENT_MAX_CGROUPS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

    static ZERO_UNSENT: UnsentPeriods = UnsentPeriods::ZERO;

    /// Submit flags: no wakeup, unless the unread data has passed the threshold, which wakes
    /// the reader once per CPU per crossing (a reader that keeps up never sees one). Only every
    /// `QUERY_EVERY`th record of a CPU looks at the fill level.
    #[inline(always)]
    fn submit_flags(r: &mut RingState) -> u64 {
        if r.until_query > 0 {
            r.until_query -= 1;
            return BPF_RB_NO_WAKEUP as u64;
        }
        r.until_query = QUERY_EVERY - 1;
        let at = unsafe { core::ptr::read_volatile(&RING.wake_at_bytes) };
        if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < at {
            r.woke = 0;
            return BPF_RB_NO_WAKEUP as u64;
        }
        if r.woke != 0 {
            return BPF_RB_NO_WAKEUP as u64;
        }
        r.woke = 1;
        BPF_RB_FORCE_WAKEUP as u64
    }

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

    /// `ATTACHED` as written by userspace, `ATTACHED_ARMED` included.
    #[inline(always)]
    fn attached_word() -> u32 {
        ATTACHED.get(ATTACHED_SLOT).copied().unwrap_or(0)
    }

    /// The `HOW_*` bits of the attached counting probes, for event flags.
    #[inline(always)]
    fn attached_bits() -> u32 {
        attached_word() & !ATTACHED_ARMED
    }

    #[inline(always)]
    fn armed() -> bool {
        attached_word() & ATTACHED_ARMED != 0
    }

    #[inline(always)]
    fn frames() -> Option<&'static mut Frames> {
        Some(unsafe { &mut *FRAME.get_ptr_mut(0)? })
    }

    /// The frames if a period-timer callback or an async-unthrottle CSD is running here.
    #[inline(always)]
    fn open_frames() -> Option<&'static mut Frames> {
        let f = frames()?;
        if f.open == 0 { None } else { Some(f) }
    }

    #[inline(always)]
    fn read_u64(addr: u64) -> Option<u64> {
        unsafe { bpf_probe_read_kernel(addr as *const u64).ok() }
    }

    #[inline(always)]
    fn read_u32(addr: u64) -> Option<u32> {
        unsafe { bpf_probe_read_kernel(addr as *const u32).ok() }
    }

    /// task_group -> css.cgroup -> kn -> id: the cgroup both frames attribute work to.
    #[inline(always)]
    fn cgroup_of_tg(tg: u64, l: &KernelLayout) -> Option<u64> {
        if l.tg_css_cgroup == OFFSET_UNAVAILABLE
            || l.cgroup_kn == OFFSET_UNAVAILABLE
            || l.kn_id == OFFSET_UNAVAILABLE
            || tg == 0
        {
            return None;
        }
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

    /// The period timer's cgroup id through this CPU's cache: a hit costs one read (the
    /// task_group's css serial number, which a freed and reused task_group does not keep)
    /// instead of the three of the css -> cgroup -> kernfs chain.
    #[inline(always)]
    fn cgroup_of_timer(
        cache: &mut [CgroupCacheEntry; CGROUP_CACHE],
        timer: u64,
        cfs_b: u64,
        l: &KernelLayout,
    ) -> Option<u64> {
        if l.tg_cfs_bandwidth == OFFSET_UNAVAILABLE {
            return None;
        }
        let tg = cfs_b.wrapping_sub(l.tg_cfs_bandwidth);
        if l.tg_css_serial_nr == OFFSET_UNAVAILABLE {
            return cgroup_of_tg(tg, l);
        }
        let serial = read_u64(tg.wrapping_add(l.tg_css_serial_nr)).unwrap_or(0);
        let i = (((timer >> 6) ^ (timer >> 16)) as usize) & (CGROUP_CACHE - 1);
        let e = cache.get_mut(i)?;
        if serial != 0 && e.timer == timer && e.serial == serial {
            return Some(e.cgroup_id);
        }
        let id = cgroup_of_tg(tg, l)?;
        e.timer = timer;
        e.serial = serial;
        e.cgroup_id = id;
        Some(id)
    }

    /// cfs_rq -> tg -> cgroup id.
    #[inline(always)]
    fn cgroup_of_cfs_rq(cfs_rq: u64, l: &KernelLayout) -> Option<u64> {
        if l.cfs_rq_tg == OFFSET_UNAVAILABLE || cfs_rq == 0 {
            return None;
        }
        cgroup_of_tg(read_u64(cfs_rq.wrapping_add(l.cfs_rq_tg))?, l)
    }

    // ---- period-timer frame ----

    #[inline(always)]
    fn period_open(timer: u64, how: u32) {
        if !armed() {
            return;
        }
        let Some(fs) = frames() else {
            return;
        };
        let mut how = how;
        if fs.open & OPEN_PERIOD != 0 {
            count_loss(LOSS_MISSED_EXIT);
            how |= HOW_REOPENED;
        }
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
        f.start_ns = unsafe { bpf_ktime_get_ns() };
    }

    #[inline(always)]
    fn period_close() {
        let end = unsafe { bpf_ktime_get_ns() };
        let Some(fs) = frames() else {
            return;
        };
        if fs.open & OPEN_PERIOD == 0 {
            // Before arming, frames do not open: an exit then is expected, not a loss.
            if armed() {
                count_loss(LOSS_UNMATCHED_EXIT);
            }
            return;
        }
        period_emit(fs, end);
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
        let mut cgroup_id = 0;
        let mut period_ns = 0;
        let mut quota_ns = 0;
        if l.cfsb_period_timer != OFFSET_UNAVAILABLE {
            let cfs_b = f.timer.wrapping_sub(l.cfsb_period_timer);
            match cgroup_of_timer(&mut fs.cgroups, f.timer, cfs_b, l) {
                Some(id) => {
                    cgroup_id = id;
                    flags |= HOW_CGROUP;
                }
                None => count_loss(LOSS_CGROUP_READ),
            }
            if l.cfsb_period != OFFSET_UNAVAILABLE && l.cfsb_quota != OFFSET_UNAVAILABLE {
                // One read where quota follows period (every kernel in the matrix), else two.
                let pq = if l.cfsb_quota == l.cfsb_period + 8 {
                    unsafe {
                        bpf_probe_read_kernel(cfs_b.wrapping_add(l.cfsb_period) as *const [u64; 2])
                    }
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
                if let Some((p, q)) = pq {
                    period_ns = p;
                    quota_ns = q;
                    flags |= HOW_PERIOD;
                }
            }
        }
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
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let head = PeriodEvent {
            kind: EVENT_PERIOD,
            cpu,
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
            emit_period_narrow(&mut fs.ring, &head, f.spread_mask[0])
        } else {
            emit_period_wide(&mut fs.ring, &head, &f.spread_mask)
        };
        if !sent {
            count_loss(LOSS_RINGBUF_FULL);
            add_unsent(&head);
        }
    }

    #[inline(always)]
    fn emit_period_narrow(ring: &mut RingState, head: &PeriodEvent, word: u64) -> bool {
        let Some(mut slot) = EVENTS.reserve::<PeriodEventNarrow>(0) else {
            return false;
        };
        slot.write(PeriodEventNarrow {
            head: *head,
            spread_mask: [word],
        });
        slot.submit(submit_flags(ring));
        true
    }

    #[inline(always)]
    fn emit_period_wide(
        ring: &mut RingState,
        head: &PeriodEvent,
        mask: &[u64; SPREAD_WORDS],
    ) -> bool {
        let Some(mut slot) = EVENTS.reserve::<PeriodEventWide>(0) else {
            return false;
        };
        // Field by field into the reserved slot: the wide record is too big for the stack.
        let e = slot.as_mut_ptr();
        unsafe {
            (*e).head = *head;
            (*e).head.spread_words = SPREAD_WORDS as u32;
            for i in 0..SPREAD_WORDS {
                (*e).spread_mask[i] = mask[i];
            }
        }
        slot.submit(submit_flags(ring));
        true
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
                        return;
                    }
                }
            }
        };
        let t = unsafe { &mut *t };
        t.periods += 1;
        t.callback_ns_sum = t.callback_ns_sum.wrapping_add(e.duration_ns);
        if e.duration_ns > t.callback_ns_max {
            t.callback_ns_max = e.duration_ns;
        }
        if let Some(b) = t.callback_hist.get_mut(log2_bucket(e.duration_ns)) {
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

    /// The tasks this unthrottle releases: `cfs_rq->h_nr_queued` (or `h_nr_running`), read
    /// before the function moves them back onto the runqueue.
    #[inline(always)]
    fn period_add_queued(f: &mut PeriodFrame, cfs_rq: u64) {
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
    fn period_mark_cpu(f: &mut PeriodFrame, cfs_rq: u64) {
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

    // ---- timer-interrupt span frame ----

    /// Runs on every timer interrupt: one lookup, a few stores, a timestamp. Not gated on
    /// arming (that would cost a second lookup): the exit is attached before the entry, so
    /// every span opened here closes, and period frames, which only open once armed, are what
    /// make a span worth an event.
    #[inline(always)]
    fn span_open(how: u32) {
        let Some(fs) = frames() else {
            return;
        };
        let mut how = how;
        if fs.open & OPEN_SPAN != 0 {
            count_loss(LOSS_SPAN_MISSED_EXIT);
            how |= HOW_REOPENED;
        }
        fs.span.timers = 0;
        fs.span.timers_ns = 0;
        fs.span.how = how;
        fs.open |= OPEN_SPAN;
        fs.span.start_ns = unsafe { bpf_ktime_get_ns() };
    }

    #[inline(always)]
    fn span_close() {
        let end = unsafe { bpf_ktime_get_ns() };
        let Some(fs) = frames() else {
            return;
        };
        if fs.open & OPEN_SPAN == 0 {
            // Entries attached before arming open spans, so after it every exit has one.
            if armed() {
                count_loss(LOSS_SPAN_UNMATCHED_EXIT);
            }
            return;
        }
        fs.open &= !OPEN_SPAN;
        let duration_ns = end.wrapping_sub(fs.span.start_ns);
        let t = &mut fs.span.totals;
        t.all += 1;
        t.all_ns = t.all_ns.wrapping_add(duration_ns);
        if duration_ns > t.all_max_ns {
            t.all_max_ns = duration_ns;
        }
        if let Some(b) = t.all_hist.get_mut(fine_bucket(duration_ns)) {
            *b += 1;
        }
        // The common case: an interrupt that ran no period timer costs nothing more.
        if fs.span.timers == 0 {
            return;
        }
        t.spans += 1;
        t.spans_ns = t.spans_ns.wrapping_add(duration_ns);
        t.timers += u64::from(fs.span.timers);
        if duration_ns > t.worst_ns {
            t.worst_ns = duration_ns;
            t.worst_start_ns = fs.span.start_ns;
            t.worst_timers = fs.span.timers;
            t.worst_timers_ns = fs.span.timers_ns;
        }
        if fs.span.timers > t.max_timers {
            t.max_timers = fs.span.timers;
        }
        match EVENTS.reserve::<IrqSpanEvent>(0) {
            Some(mut slot) => {
                slot.write(IrqSpanEvent {
                    kind: EVENT_IRQ_SPAN,
                    cpu: unsafe { bpf_get_smp_processor_id() },
                    start_ns: fs.span.start_ns,
                    duration_ns,
                    timers_ns: fs.span.timers_ns,
                    timers: fs.span.timers,
                    flags: fs.span.how,
                });
                slot.submit(submit_flags(&mut fs.ring));
            }
            None => count_loss(LOSS_RINGBUF_FULL),
        }
    }

    // ---- async-unthrottle CSD frame ----

    #[inline(always)]
    fn emit_async(ring: &mut RingState, e: AsyncEvent) {
        match EVENTS.reserve::<AsyncEvent>(0) {
            Some(mut slot) => {
                slot.write(e);
                slot.submit(submit_flags(ring));
            }
            None => count_loss(LOSS_RINGBUF_FULL),
        }
    }

    /// Listed mode: remember the cfs_rqs on `rq->cfsb_csd_list` that are still throttled
    /// (the CSD unthrottles exactly those). The list is empty by the time the CSD returns, so
    /// this must happen at entry; their cgroups are read at close. Kept lean for the verifier:
    /// the loop counter is the only index, nothing else carried across iterations is used as
    /// one. Returns ASYNC_TRUNCATED / HOW_CGROUP bits, or None if the list cannot be read.
    #[inline(always)]
    fn csd_walk_list(c: &mut CsdFrame, rq: u64, l: &KernelLayout) -> Option<u32> {
        if rq == 0
            || l.rq_cfsb_csd_list == OFFSET_UNAVAILABLE
            || l.cfs_rq_throttled_csd_list == OFFSET_UNAVAILABLE
        {
            return None;
        }
        let head = rq.wrapping_add(l.rq_cfsb_csd_list);
        let mut node = read_u64(head)?;
        let mut walked: u32 = 0;
        let mut last: u32 = NONE_LISTED;
        for i in 0..MAX_LISTED {
            if node == head || node == 0 {
                break;
            }
            let cfs_rq = node.wrapping_sub(l.cfs_rq_throttled_csd_list);
            // cfs_rq_throttled(): entries already unthrottled by someone else are skipped by
            // the CSD too. Without the offset (or the read), count the entry.
            let throttled = l.cfs_rq_throttled == OFFSET_UNAVAILABLE
                || read_u32(cfs_rq.wrapping_add(l.cfs_rq_throttled)).unwrap_or(1) != 0;
            if let Some(slot) = c.listed.get_mut(i as usize) {
                *slot = if throttled { cfs_rq } else { 0 };
            }
            if throttled {
                last = i;
            }
            walked = i + 1;
            node = read_u64(node).unwrap_or(0);
        }
        c.listed_n = walked;
        c.listed_last = last;
        let mut flags = HOW_CGROUP;
        if node == 0 {
            // A failed read cut the walk: what followed is unknown.
            flags = 0;
        } else if node != head {
            flags |= ASYNC_TRUNCATED;
        }
        Some(flags)
    }

    /// `rq`: the CSD's argument (kprobe/fentry) or derived from `&rq->cfsb_csd`; `csd` is what
    /// the tracepoint exit must match (0 for the paired-probe styles).
    #[inline(always)]
    fn csd_open(rq: u64, csd: u64, how: u32) {
        if !armed() {
            return;
        }
        let Some(fs) = frames() else {
            return;
        };
        if fs.open & OPEN_PERIOD != 0 {
            // Called from inside the period timer (7.x kernels unthrottle the timer's own CPU
            // this way): synchronous work of the timer, so the period frame keeps counting it.
            // Only the kprobe/fentry styles see this; the csd tracepoints never fire here.
            fs.csd.nested += 1;
            return;
        }
        let mut how = how;
        if fs.open & OPEN_CSD != 0 {
            count_loss(LOSS_CSD_MISSED_EXIT);
            how |= HOW_REOPENED;
        }
        let c = &mut fs.csd;
        c.csd = csd;
        c.seg_cgroup = 0;
        c.seg_unthrottled = 0;
        c.seg_enqueued = 0;
        c.seg_runnable = 0;
        c.segment = 0;
        c.seg_flags = 0;
        c.seg_open = 0;
        c.nested = 0;
        c.listed_n = 0;
        c.listed_last = NONE_LISTED;
        // Probe mode when `unthrottle_cfs_rq` is probed: it cuts the CSD into segments.
        // Otherwise read the list now: the only moment it holds the CSD's work.
        if attached_bits() & HOW_UNTHROTTLE == 0 {
            how |= ASYNC_LISTED;
            if let Some(bits) = csd_walk_list(c, rq, layout()) {
                c.seg_flags = bits;
            }
        }
        c.how = how;
        fs.open |= OPEN_CSD;
        let now = unsafe { bpf_ktime_get_ns() };
        c.start_ns = now;
        c.seg_start_ns = now;
    }

    /// A probed `unthrottle_cfs_rq` inside the CSD: close the running segment (if a cgroup
    /// owns it) and start the next one, owned by this cfs_rq's cgroup.
    #[inline(always)]
    fn csd_segment(c: &mut CsdFrame, ring: &mut RingState, cfs_rq: u64) {
        let now = unsafe { bpf_ktime_get_ns() };
        if c.seg_open != 0 {
            emit_async(
                ring,
                AsyncEvent {
                    kind: EVENT_ASYNC_UNTHROTTLE,
                    cpu: unsafe { bpf_get_smp_processor_id() },
                    start_ns: c.seg_start_ns,
                    duration_ns: now.wrapping_sub(c.seg_start_ns),
                    cgroup_id: c.seg_cgroup,
                    csd_start_ns: c.start_ns,
                    csd_ns: 0,
                    unthrottled: c.seg_unthrottled,
                    enqueued: c.seg_enqueued,
                    runnable: c.seg_runnable,
                    flags: c.how | c.seg_flags | attached_bits(),
                    segment: c.segment,
                    _pad: 0,
                },
            );
            c.segment += 1;
            c.seg_start_ns = now;
            c.seg_enqueued = 0;
            c.seg_runnable = 0;
            c.seg_unthrottled = 0;
        }
        // The first segment keeps the CSD's start: what ran before it is charged to it.
        c.seg_open = 1;
        c.seg_unthrottled += 1;
        match cgroup_of_cfs_rq(cfs_rq, layout()) {
            Some(id) => {
                c.seg_cgroup = id;
                c.seg_flags = HOW_CGROUP;
            }
            None => {
                count_loss(LOSS_CGROUP_READ);
                c.seg_cgroup = 0;
                c.seg_flags = 0;
            }
        }
    }

    #[inline(always)]
    fn csd_close(csd_check: Option<u64>) {
        let end = unsafe { bpf_ktime_get_ns() };
        let Some(fs) = frames() else {
            return;
        };
        // A nested call returns while the timer still runs (the timer's close clears the
        // count, so a lost return cannot swallow a later CSD's close).
        if fs.csd.nested != 0 && fs.open & OPEN_PERIOD != 0 {
            fs.csd.nested -= 1;
            return;
        }
        if fs.open & OPEN_CSD == 0 {
            if armed() {
                count_loss(LOSS_CSD_UNMATCHED_EXIT);
            }
            return;
        }
        let c = &mut fs.csd;
        let ring = &mut fs.ring;
        if let Some(csd) = csd_check {
            if csd != c.csd {
                return;
            }
        }
        fs.open &= !OPEN_CSD;
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let csd_ns = end.wrapping_sub(c.start_ns);
        let flags = c.how | attached_bits();
        if c.how & ASYNC_LISTED != 0 && c.listed_last != NONE_LISTED {
            // One event per still-throttled cfs_rq; the CSD's time and runnable count are
            // shared. Cgroups are read now: the CSD's IRQs-off section still holds the RCU
            // read side, so the task_groups cannot have been freed.
            let n = c.listed_n;
            let last_i = c.listed_last;
            let base = flags | ASYNC_SHARED | (c.seg_flags & ASYNC_TRUNCATED);
            let l = layout();
            let mut seg: u32 = 0;
            for i in 0..MAX_LISTED {
                if i >= n {
                    break;
                }
                let cfs_rq = match c.listed.get(i as usize) {
                    Some(&p) => p,
                    None => 0,
                };
                if cfs_rq == 0 {
                    continue;
                }
                let mut ev_flags = base;
                let id = match cgroup_of_cfs_rq(cfs_rq, l) {
                    Some(id) => {
                        ev_flags |= HOW_CGROUP;
                        id
                    }
                    None => {
                        count_loss(LOSS_CGROUP_READ);
                        0
                    }
                };
                let mut csd_part = 0;
                if i == last_i {
                    ev_flags |= ASYNC_LAST;
                    csd_part = csd_ns;
                }
                emit_async(
                    ring,
                    AsyncEvent {
                        kind: EVENT_ASYNC_UNTHROTTLE,
                        cpu,
                        start_ns: c.start_ns,
                        duration_ns: csd_ns,
                        cgroup_id: id,
                        csd_start_ns: c.start_ns,
                        csd_ns: csd_part,
                        unthrottled: 1,
                        enqueued: c.seg_enqueued,
                        runnable: c.seg_runnable,
                        flags: ev_flags,
                        segment: seg,
                        _pad: 0,
                    },
                );
                seg += 1;
            }
            return;
        }
        // Probe mode: the open segment ends here. Nothing unthrottled (probe mode without a
        // call, or a complete listed walk that found nothing): one EMPTY event keeps the
        // CSD's time.
        let (cgroup_id, seg_bits) = if c.seg_open != 0 {
            (c.seg_cgroup, c.seg_flags)
        } else if c.how & ASYNC_LISTED != 0
            && (c.seg_flags & HOW_CGROUP == 0 || c.seg_flags & ASYNC_TRUNCATED != 0)
        {
            // Unread or cut-short list: nothing known to be throttled, but not known empty.
            (0, c.seg_flags & ASYNC_TRUNCATED)
        } else {
            (0, ASYNC_EMPTY | (c.seg_flags & ASYNC_TRUNCATED))
        };
        emit_async(
            ring,
            AsyncEvent {
                kind: EVENT_ASYNC_UNTHROTTLE,
                cpu,
                start_ns: c.seg_start_ns,
                duration_ns: end.wrapping_sub(c.seg_start_ns),
                cgroup_id,
                csd_start_ns: c.start_ns,
                csd_ns,
                unthrottled: c.seg_unthrottled,
                enqueued: c.seg_enqueued,
                runnable: c.seg_runnable,
                flags: flags | seg_bits | ASYNC_LAST,
                segment: c.segment,
                _pad: 0,
            },
        );
    }

    // ---- period-timer frame: kprobe / kretprobe ----

    #[kprobe]
    pub fn period_timer_kprobe(ctx: ProbeContext) -> u32 {
        let timer: u64 = ctx.arg(0).unwrap_or(0);
        period_open(timer, HOW_FRAME_KPROBE);
        0
    }

    #[kretprobe]
    pub fn period_timer_kretprobe(_ctx: RetProbeContext) -> u32 {
        period_close();
        0
    }

    // ---- period-timer frame: fentry / fexit ----

    #[fentry(function = "sched_cfs_period_timer")]
    pub fn period_timer_fentry(ctx: FEntryContext) -> u32 {
        let timer: u64 = ctx.arg(0);
        period_open(timer, HOW_FRAME_FENTRY);
        0
    }

    #[fexit(function = "sched_cfs_period_timer")]
    pub fn period_timer_fexit(_ctx: FExitContext) -> u32 {
        period_close();
        0
    }

    // ---- period-timer frame: hrtimer tracepoints, filtered on the callback address ----

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
                let end = unsafe { bpf_ktime_get_ns() };
                period_emit(f, end);
            }
        }
        0
    }

    // ---- CSD frame: kprobe / kretprobe (arg0 is the rq) ----

    #[kprobe]
    pub fn csd_unthrottle_kprobe(ctx: ProbeContext) -> u32 {
        let rq: u64 = ctx.arg(0).unwrap_or(0);
        csd_open(rq, 0, HOW_FRAME_KPROBE);
        0
    }

    #[kretprobe]
    pub fn csd_unthrottle_kretprobe(_ctx: RetProbeContext) -> u32 {
        csd_close(None);
        0
    }

    // ---- CSD frame: fentry / fexit ----

    #[fentry(function = "__cfsb_csd_unthrottle")]
    pub fn csd_unthrottle_fentry(ctx: FEntryContext) -> u32 {
        let rq: u64 = ctx.arg(0);
        csd_open(rq, 0, HOW_FRAME_FENTRY);
        0
    }

    #[fexit(function = "__cfsb_csd_unthrottle")]
    pub fn csd_unthrottle_fexit(_ctx: FExitContext) -> u32 {
        csd_close(None);
        0
    }

    // ---- CSD frame: csd_function_entry/exit(func, csd), filtered on the function ----

    #[raw_tracepoint(tracepoint = "csd_function_entry")]
    pub fn csd_function_entry(ctx: RawTracePointContext) -> i32 {
        let func: u64 = ctx.arg(0);
        let l = layout();
        if l.csd_unthrottle_fn == 0 || func != l.csd_unthrottle_fn {
            return 0;
        }
        let csd: u64 = ctx.arg(1);
        // The CSD is `rq->cfsb_csd`: container_of gives the rq whose list it drains.
        let rq = if l.rq_cfsb_csd == OFFSET_UNAVAILABLE || csd == 0 {
            0
        } else {
            csd.wrapping_sub(l.rq_cfsb_csd)
        };
        csd_open(rq, csd, HOW_FRAME_TRACEPOINT);
        0
    }

    #[raw_tracepoint(tracepoint = "csd_function_exit")]
    pub fn csd_function_exit(ctx: RawTracePointContext) -> i32 {
        let func: u64 = ctx.arg(0);
        if func != layout().csd_unthrottle_fn || func == 0 {
            return 0;
        }
        let csd: u64 = ctx.arg(1);
        // Only a frame this CPU opened: the exit is attached before the entry, so a CSD
        // already running at attach time ends here with no frame, which is no loss.
        if let Some(f) = open_frames() {
            if f.open & OPEN_CSD != 0 {
                csd_close(Some(csd));
            }
        }
        0
    }

    // ---- timer-interrupt span: kprobe / kretprobe on hrtimer_interrupt (the fallback) ----
    // (No fentry/fexit: a trampoline on the timer interrupt only adds live patching of the
    // hottest path; see `attach_irq_span` in the tracer.)

    #[kprobe]
    pub fn irq_span_kprobe(_ctx: ProbeContext) -> u32 {
        span_open(HOW_FRAME_KPROBE);
        0
    }

    #[kretprobe]
    pub fn irq_span_kretprobe(_ctx: RetProbeContext) -> u32 {
        span_close();
        0
    }

    // ---- timer-interrupt span: x86 irq_vectors local_timer_entry/exit(int vector) ----

    #[raw_tracepoint(tracepoint = "local_timer_entry")]
    pub fn local_timer_entry(_ctx: RawTracePointContext) -> i32 {
        span_open(HOW_FRAME_TRACEPOINT);
        0
    }

    #[raw_tracepoint(tracepoint = "local_timer_exit")]
    pub fn local_timer_exit(_ctx: RawTracePointContext) -> i32 {
        span_close();
        0
    }

    // ---- counters: only inside an open frame ----

    #[inline(always)]
    fn count_loop() {
        if let Some(f) = open_frames() {
            if f.open & OPEN_PERIOD != 0 {
                f.period.loops += 1;
            }
        }
    }

    // A timer-interrupt span alone is no frame to count in: each counter names the frame.

    #[inline(always)]
    fn count_unthrottle(cfs_rq: u64) {
        if let Some(f) = open_frames() {
            if f.open & OPEN_CSD != 0 {
                csd_segment(&mut f.csd, &mut f.ring, cfs_rq);
            } else if f.open & OPEN_PERIOD != 0 {
                f.period.unthrottled += 1;
                period_mark_cpu(&mut f.period, cfs_rq);
                period_add_queued(&mut f.period, cfs_rq);
            }
        }
    }

    #[inline(always)]
    fn count_enqueue() {
        if let Some(f) = open_frames() {
            if f.open & OPEN_CSD != 0 {
                f.csd.seg_enqueued += 1;
            } else if f.open & OPEN_PERIOD != 0 {
                f.period.enqueued += 1;
            }
        }
    }

    #[kprobe]
    pub fn distribute_kprobe(_ctx: ProbeContext) -> u32 {
        count_loop();
        0
    }

    #[fentry(function = "distribute_cfs_runtime")]
    pub fn distribute_fentry(_ctx: FEntryContext) -> u32 {
        count_loop();
        0
    }

    #[kprobe]
    pub fn unthrottle_kprobe(ctx: ProbeContext) -> u32 {
        count_unthrottle(ctx.arg(0).unwrap_or(0));
        0
    }

    #[fentry(function = "unthrottle_cfs_rq")]
    pub fn unthrottle_fentry(ctx: FEntryContext) -> u32 {
        count_unthrottle(ctx.arg(0));
        0
    }

    #[kprobe]
    pub fn enqueue_kprobe(_ctx: ProbeContext) -> u32 {
        count_enqueue();
        0
    }

    #[fentry(function = "enqueue_entity")]
    pub fn enqueue_fentry(_ctx: FEntryContext) -> u32 {
        count_enqueue();
        0
    }

    /// `sched_update_nr_running_tp(struct rq *rq, int change)`: tasks made runnable.
    #[raw_tracepoint(tracepoint = "sched_update_nr_running_tp")]
    pub fn nr_running(ctx: RawTracePointContext) -> i32 {
        if let Some(f) = open_frames() {
            let change: u64 = ctx.arg(1);
            let change = change as i32;
            if change > 0 {
                if f.open & OPEN_CSD != 0 {
                    f.csd.seg_runnable += change as u32;
                } else if f.open & OPEN_PERIOD != 0 {
                    f.period.runnable += change as u32;
                }
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
