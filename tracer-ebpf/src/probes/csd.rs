//! The async-unthrottle CSD frame: `__cfsb_csd_unthrottle` (6.3+; earlier kernels unthrottle
//! every cfs_rq inside the period timer), the work a period timer on another CPU queued here
//! instead of doing it with its own IRQs off. Emits `AsyncEvent`s, one per cgroup it
//! unthrottled.
//!
//! With `unthrottle_cfs_rq` probed, each call cuts the CSD into a segment owned by that
//! cfs_rq's cgroup (probe mode). Without it, `rq->cfsb_csd_list` is walked at entry and each
//! still-throttled cfs_rq shares the whole CSD's time (listed mode, `ASYNC_LISTED`).
//!
//! Attached as fentry/fexit, kprobe/kretprobe (both take the rq) or the `csd_function_entry/
//! exit` tracepoints (6.3+ too) filtered on the function, which give `&rq->cfsb_csd`.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use aya_log_ebpf::{info, warn};
use tracer_ebpf::{
    ASYNC_EMPTY, ASYNC_LAST, ASYNC_LISTED, ASYNC_SHARED, ASYNC_TRUNCATED, AsyncEvent, CsdFrame,
    EVENT_ASYNC_UNTHROTTLE, HOW_CGROUP, HOW_FRAME_FENTRY, HOW_FRAME_KPROBE, HOW_FRAME_TRACEPOINT,
    HOW_UNTHROTTLE, KernelLayout, LOSS_CGROUP_READ, LOSS_CSD_MISSED_EXIT, LOSS_CSD_UNMATCHED_EXIT,
    MAX_LISTED, NONE_LISTED, OFFSET_UNAVAILABLE, OPEN_CSD, OPEN_PERIOD, RingState,
};

use crate::shared::{
    NO_CTX, armed, attached_bits, cgroup_of_cfs_rq, closing, count_loss, csd_walk_bound,
    emit_or_count, frames, layout, now, open_frames, read_u32, read_u64, reopening, this_cpu,
};

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
    let mut how = reopening(fs, OPEN_CSD, LOSS_CSD_MISSED_EXIT, how);
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
    // Last, so the probe's own bookkeeping stays out of the measured span.
    let now = now();
    c.start_ns = now;
    c.seg_start_ns = now;
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
    let Some(mut node) = read_u64(head) else {
        warn!(
            &NO_CTX,
            "cpu {}: reading rq->cfsb_csd_list failed: the CSD's cgroups are unnamed",
            this_cpu()
        );
        return None;
    };
    let bound = csd_walk_bound();
    let mut walked: u32 = 0;
    let mut last: u32 = NONE_LISTED;
    for i in 0..MAX_LISTED {
        if node == head || node == 0 || i >= bound {
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
        warn!(
            &NO_CTX,
            "cpu {}: reading the CSD's cfs_rq list failed after {} entries: its cgroups are unnamed",
            this_cpu(),
            walked
        );
    } else if node != head {
        flags |= ASYNC_TRUNCATED;
        info!(
            &NO_CTX,
            "cpu {}: CSD list longer than the walk bound ({} entries): the cgroups past it are \
             unnamed",
            this_cpu(),
            walked
        );
    }
    Some(flags)
}

/// A probed `unthrottle_cfs_rq` inside the CSD: close the running segment (if a cgroup
/// owns it) and start the next one, owned by this cfs_rq's cgroup.
#[inline(always)]
pub(super) fn csd_segment(c: &mut CsdFrame, ring: &mut RingState, cfs_rq: u64) {
    let now = now();
    if c.seg_open != 0 {
        let mut e = segment_event(c, this_cpu(), now, c.seg_cgroup, 0, c.how | c.seg_flags);
        e.flags |= attached_bits();
        emit_async(ring, e);
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
            // Not the cfs_rq's address: from fentry it is a BTF pointer, and formatting it
            // shifts it, which 5.10's verifier refuses.
            warn!(
                &NO_CTX,
                "cpu {}: a cfs_rq unthrottled in the CSD: reading its cgroup failed",
                this_cpu()
            );
            c.seg_cgroup = 0;
            c.seg_flags = 0;
        }
    }
}

#[inline(always)]
fn csd_close(csd_check: Option<u64>) {
    let end = now();
    let Some(fs) = frames() else {
        return;
    };
    // A nested call returns while the timer still runs (the timer's close clears the
    // count, so a lost return cannot swallow a later CSD's close).
    if fs.csd.nested != 0 && fs.open & OPEN_PERIOD != 0 {
        fs.csd.nested -= 1;
        return;
    }
    if !closing(fs, OPEN_CSD, LOSS_CSD_UNMATCHED_EXIT) {
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
    let cpu = this_cpu();
    let csd_ns = end.wrapping_sub(c.start_ns);
    let flags = c.how | attached_bits();
    if c.how & ASYNC_LISTED != 0 && c.listed_last != NONE_LISTED {
        csd_emit_listed(c, ring, cpu, csd_ns, flags);
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
    let flags = flags | seg_bits | ASYNC_LAST;
    emit_async(ring, segment_event(c, cpu, end, cgroup_id, csd_ns, flags));
}

/// Listed mode: one event per still-throttled cfs_rq; the CSD's time and runnable count are
/// shared. Cgroups are read now: the CSD's IRQs-off section still holds the RCU read side,
/// so the task_groups cannot have been freed.
#[inline(always)]
fn csd_emit_listed(c: &CsdFrame, ring: &mut RingState, cpu: u32, csd_ns: u64, flags: u32) {
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
                // Logged here, not counted for after the loop: a count carried across
                // iterations splits the verifier's states on every one of them.
                count_loss(LOSS_CGROUP_READ);
                // Never the cfs_rq's address: a kernel pointer on stderr defeats KASLR.
                warn!(
                    &NO_CTX,
                    "cpu {}: a cfs_rq listed for the CSD: reading its cgroup failed", cpu
                );
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
}

/// The running segment of `c` as an event ending at `end` (probe mode, and the CSD's last).
#[inline(always)]
fn segment_event(
    c: &CsdFrame,
    cpu: u32,
    end: u64,
    cgroup_id: u64,
    csd_ns: u64,
    flags: u32,
) -> AsyncEvent {
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
        flags,
        segment: c.segment,
        _pad: 0,
    }
}

/// An event the caller built; a full ring buffer is a counted loss.
#[inline(always)]
fn emit_async(ring: &mut RingState, e: AsyncEvent) {
    emit_or_count(ring, || e);
}

// ---- kprobe / kretprobe (arg0 is the rq) ----

#[kprobe]
pub fn csd_unthrottle_kprobe(ctx: ProbeContext) -> u32 {
    csd_open(ctx.arg(0).unwrap_or(0), 0, HOW_FRAME_KPROBE);
    0
}

#[kretprobe]
pub fn csd_unthrottle_kretprobe(_ctx: RetProbeContext) -> u32 {
    csd_close(None);
    0
}

// ---- fentry / fexit ----

#[fentry(function = "__cfsb_csd_unthrottle")]
pub fn csd_unthrottle_fentry(ctx: FEntryContext) -> u32 {
    csd_open(ctx.arg(0), 0, HOW_FRAME_FENTRY);
    0
}

#[fexit(function = "__cfsb_csd_unthrottle")]
pub fn csd_unthrottle_fexit(_ctx: FExitContext) -> u32 {
    csd_close(None);
    0
}

// ---- csd_function_entry/exit(func, csd), filtered on the function ----

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
