//! Counters: work done inside an open period or CSD frame. `distribute_cfs_runtime` passes,
//! `unthrottle_cfs_rq` calls (each also cuts a CSD into segments), entities enqueued
//! (`enqueue_entity`, or `enqueue_task_fair` where that is inlined) and tasks made runnable
//! (`sched_update_nr_running_tp`, a bare tracepoint since 5.9).
//!
//! fentry or kprobe, on every kernel that has the function. These sit on hot paths: one
//! per-CPU lookup, then return at once unless a frame is open. A timer-interrupt span alone
//! is no frame to count in: each counter names the frame it counts for.

use aya_ebpf::{
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use tracer_ebpf::{OPEN_CSD, OPEN_PERIOD};

use super::{csd::csd_segment, period_timer::period_unthrottled};
use crate::shared::open_frames;

#[inline(always)]
fn count_loop() {
    if let Some(f) = open_frames() {
        if f.open & OPEN_PERIOD != 0 {
            f.period.loops += 1;
        }
    }
}

#[inline(always)]
fn count_unthrottle(cfs_rq: u64) {
    if let Some(f) = open_frames() {
        if f.open & OPEN_CSD != 0 {
            csd_segment(&mut f.csd, &mut f.ring, cfs_rq);
        } else if f.open & OPEN_PERIOD != 0 {
            period_unthrottled(&mut f.period, cfs_rq);
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

/// Attached to `enqueue_entity`, or to `enqueue_task_fair` where that one is inlined.
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
