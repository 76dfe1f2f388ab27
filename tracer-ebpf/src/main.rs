//! Kernel side of cfstrace: per-CPU frames around each `sched_cfs_period_timer` callback,
//! around each async-unthrottle CSD (`__cfsb_csd_unthrottle`, 6.3+), and around each timer
//! interrupt (`hrtimer_interrupt` or x86 `local_timer_entry/exit`), which holds the callbacks.
//!
//! This file holds what every probe family shares: the maps, the globals userspace writes
//! before load, the helpers (frame lookup, kernel reads, loss counting, the ring-buffer submit
//! rule, cgroup resolution), the panic handler and the license. The programs live in
//! `probes/`, one file per family; they touch each other only through the per-CPU `Frames`.
//!
//! Each frame is opened by one of three attach styles (kprobe, fentry, or tracepoints filtered
//! on the function's address) and closed when the function returns. Opening takes the
//! timestamp last and closing takes it first, so the probe's own bookkeeping stays out of the
//! measured span. The counting probes sit on hot paths: one per-CPU lookup, then nothing more
//! unless a frame is open.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod probes;

/// Maps, globals and helpers of all probe families (BPF only: the host build is an empty bin).
#[cfg(target_arch = "bpf")]
mod shared {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
        helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
        macros::map,
        maps::{Array, HashMap, PerCpuArray, RingBuf},
    };
    use aya_log_ebpf::warn;
    use core::mem::MaybeUninit;
    use tracer_ebpf::{
        ATTACHED_ARMED, ATTACHED_SLOT, CGROUP_CACHE, CgroupCacheEntry, Frames, HOW_REOPENED,
        KernelLayout, LOSS_RINGBUF_FULL, LOSS_SLOTS, MAX_LISTED, OFFSET_UNAVAILABLE, OPEN_CSD,
        OPEN_PERIOD, QUERY_EVERY, RINGBUF_BYTES, RingConfig, RingState, UNSENT_MAX_CGROUPS,
        UnsentPeriods,
    };

    // ---- globals written by userspace before load (the object's frozen `.rodata`) ----

    /// From the running kernel's BTF and kallsyms.
    #[unsafe(no_mangle)]
    static LAYOUT: KernelLayout = KernelLayout::UNAVAILABLE;

    /// From the ring buffer's size.
    #[unsafe(no_mangle)]
    static RING: RingConfig = RingConfig::DEFAULT;

    /// Entries of a CSD's cfs_rq list walked at its entry: `MAX_LISTED`, lowered only by the
    /// hidden `--csd-walk-bound` test knob (so a test can overflow the walk on demand).
    #[unsafe(no_mangle)]
    static CSD_WALK_BOUND: u32 = MAX_LISTED;

    // aya-log-ebpf's `AYA_LOG_LEVEL` (in the same frozen `.rodata`) is written by userspace
    // from `--log-level`: 0 (off) by default, so the verifier sees every log call's level test
    // as a constant false and drops the call. Its `AYA_LOGS` ring buffer is submitted with the
    // default (adaptive) wakeup: only when the user asked for messages.

    /// The context argument of aya-log-ebpf 0.2's macros, which they never read (`let _ =
    /// ctx`): the helpers that log on rare paths have no program context at hand.
    pub const NO_CTX: () = ();

    // ---- maps (userspace finds them by these names) ----

    /// This CPU's frames (and its span totals, which the reader reads).
    #[map]
    pub static FRAME: PerCpuArray<Frames> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

    #[map]
    pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

    #[map]
    pub static ATTACHED: Array<u32> = Array::with_max_entries(1, 0);

    /// Per-cgroup sums of the callbacks whose events were lost.
    #[map]
    pub static UNSENT_PERIODS: HashMap<u64, UnsentPeriods> =
        HashMap::with_max_entries(UNSENT_MAX_CGROUPS, BPF_F_NO_PREALLOC);

    /// A new `UNSENT_PERIODS` entry is inserted from here, not from the stack.
    pub static ZERO_UNSENT: UnsentPeriods = UnsentPeriods::ZERO;

    // ---- the ring-buffer submit rule ----

    /// Submit flags: no wakeup, unless the unread data has passed the threshold, which wakes
    /// the reader once per CPU per crossing (a reader that keeps up never sees one). Only every
    /// `QUERY_EVERY`th record of a CPU looks at the fill level.
    #[inline(always)]
    pub fn submit_flags(r: &mut RingState) -> u64 {
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

    /// Reserves a `T` in `EVENTS`, lets `fill` write it, submits it under the wakeup rule.
    /// False if the ring buffer is full (the caller counts the loss).
    #[inline(always)]
    pub fn emit_with<T: 'static>(
        ring: &mut RingState,
        fill: impl FnOnce(&mut MaybeUninit<T>),
    ) -> bool {
        let Some(mut slot) = EVENTS.reserve::<T>(0) else {
            return false;
        };
        fill(&mut slot);
        slot.submit(submit_flags(ring));
        true
    }

    /// [`emit_with`] of the record `event` builds; it runs after the reserve, so what it reads
    /// is not held across the helper call.
    #[inline(always)]
    pub fn emit<T: 'static>(ring: &mut RingState, event: impl FnOnce() -> T) -> bool {
        emit_with(ring, |slot: &mut MaybeUninit<T>| {
            slot.write(event());
        })
    }

    /// [`emit`], a full ring buffer counted as a loss.
    #[inline(always)]
    pub fn emit_or_count<T: 'static>(ring: &mut RingState, event: impl FnOnce() -> T) {
        if !emit(ring, event) {
            count_loss(LOSS_RINGBUF_FULL);
        }
    }

    // ---- globals and per-CPU state ----

    #[inline(always)]
    pub fn layout() -> &'static KernelLayout {
        // read_volatile keeps the compiler from folding the default values in.
        unsafe { &*core::ptr::read_volatile(&&LAYOUT) }
    }

    #[inline(always)]
    pub fn csd_walk_bound() -> u32 {
        unsafe { core::ptr::read_volatile(&CSD_WALK_BOUND) }
    }

    #[inline(always)]
    pub fn count_loss(slot: u32) {
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
    pub fn attached_bits() -> u32 {
        attached_word() & !ATTACHED_ARMED
    }

    #[inline(always)]
    pub fn armed() -> bool {
        attached_word() & ATTACHED_ARMED != 0
    }

    #[inline(always)]
    pub fn frames() -> Option<&'static mut Frames> {
        Some(unsafe { &mut *FRAME.get_ptr_mut(0)? })
    }

    /// The frames if a period-timer callback or an async-unthrottle CSD is running here.
    #[inline(always)]
    pub fn open_frames() -> Option<&'static mut Frames> {
        let f = frames()?;
        if f.open == 0 { None } else { Some(f) }
    }

    /// The frame an `OPEN_*` bit stands for, in log messages.
    #[inline(always)]
    fn frame_name(open_bit: u32) -> &'static str {
        match open_bit {
            OPEN_PERIOD => "period-timer",
            OPEN_CSD => "async-unthrottle CSD",
            _ => "timer-interrupt span",
        }
    }

    /// `how` for a frame `open_bit` about to open: if it is still open, its close was missed.
    #[inline(always)]
    pub fn reopening(fs: &Frames, open_bit: u32, missed_loss: u32, how: u32) -> u32 {
        let mut how = how;
        if fs.open & open_bit != 0 {
            count_loss(missed_loss);
            how |= HOW_REOPENED;
            // Only while armed: the span frame opens before arming and after the disarm that
            // starts a detach, when a half-detached pair is expected, not news.
            if armed() {
                warn!(
                    &NO_CTX,
                    "cpu {}: {} frame reopened: the exit of the last one was missed",
                    this_cpu(),
                    frame_name(open_bit)
                );
            }
        }
        how
    }

    /// Whether the frame `open_bit` a close is for is open. An exit without one is a loss once
    /// armed; before, it is expected (period and CSD frames do not open yet, and every exit is
    /// attached before its entry).
    #[inline(always)]
    pub fn closing(fs: &Frames, open_bit: u32, unmatched_loss: u32) -> bool {
        if fs.open & open_bit != 0 {
            return true;
        }
        if armed() {
            count_loss(unmatched_loss);
            warn!(
                &NO_CTX,
                "cpu {}: {} exit without an open frame",
                this_cpu(),
                frame_name(open_bit)
            );
        }
        false
    }

    /// Frame timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC): taken last on open, first on
    /// close.
    #[inline(always)]
    pub fn now() -> u64 {
        unsafe { bpf_ktime_get_ns() }
    }

    #[inline(always)]
    pub fn this_cpu() -> u32 {
        unsafe { bpf_get_smp_processor_id() }
    }

    // ---- kernel reads and cgroup resolution ----

    #[inline(always)]
    pub fn read_u64(addr: u64) -> Option<u64> {
        unsafe { bpf_probe_read_kernel(addr as *const u64).ok() }
    }

    #[inline(always)]
    pub fn read_u32(addr: u64) -> Option<u32> {
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
    pub fn cgroup_of_timer(
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
    pub fn cgroup_of_cfs_rq(cfs_rq: u64, l: &KernelLayout) -> Option<u64> {
        if l.cfs_rq_tg == OFFSET_UNAVAILABLE || cfs_rq == 0 {
            return None;
        }
        cgroup_of_tg(read_u64(cfs_rq.wrapping_add(l.cfs_rq_tg))?, l)
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
