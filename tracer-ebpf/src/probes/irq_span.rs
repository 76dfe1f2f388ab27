//! The timer-interrupt span: the whole IRQs-off interrupt that runs the period-timer callbacks,
//! which is what the hard-lockup watchdog sees. Every span is summed into this CPU's
//! `SpanTotals` (in `FRAME`); one that ran a period timer also emits an `IrqSpanEvent`.
//!
//! x86 `local_timer_entry/exit` raw tracepoints (every kernel in the matrix), or
//! kprobe/kretprobe on `hrtimer_interrupt` elsewhere. No fentry/fexit: a trampoline on the
//! timer interrupt only adds live patching of the hottest path (see the tracer's irq-span
//! attach). This runs on every timer interrupt of every CPU, so the entry is one lookup and a
//! timestamp, the exit a few adds unless a period timer ran inside.

use aya_ebpf::{
    macros::{kprobe, kretprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use tracer_ebpf::{
    EVENT_IRQ_SPAN, HOW_FRAME_KPROBE, HOW_FRAME_TRACEPOINT, IrqSpanEvent, LOSS_SPAN_MISSED_EXIT,
    LOSS_SPAN_UNMATCHED_EXIT, OPEN_SPAN, fine_bucket,
};

use crate::shared::{closing, emit_or_count, frames, now, reopening, this_cpu};

/// One lookup, a few stores, a timestamp. Not gated on arming (that would cost a second
/// lookup): the exit is attached before the entry, so every span opened here closes, and
/// period frames, which only open once armed, are what make a span worth an event.
#[inline(always)]
fn span_open(how: u32) {
    let Some(fs) = frames() else {
        return;
    };
    let how = reopening(fs, OPEN_SPAN, LOSS_SPAN_MISSED_EXIT, how);
    fs.span.timers = 0;
    fs.span.timers_ns = 0;
    fs.span.how = how;
    fs.open |= OPEN_SPAN;
    // Last, so the probe's own bookkeeping stays out of the measured span.
    fs.span.start_ns = now();
}

#[inline(always)]
fn span_close() {
    let end = now();
    let Some(fs) = frames() else {
        return;
    };
    if !closing(fs, OPEN_SPAN, LOSS_SPAN_UNMATCHED_EXIT) {
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
    let span = &fs.span;
    emit_or_count(&mut fs.ring, || IrqSpanEvent {
        kind: EVENT_IRQ_SPAN,
        cpu: this_cpu(),
        start_ns: span.start_ns,
        duration_ns,
        timers_ns: span.timers_ns,
        timers: span.timers,
        flags: span.how,
    });
}

// ---- kprobe / kretprobe on hrtimer_interrupt (the fallback) ----

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

// ---- x86 irq_vectors local_timer_entry/exit(int vector) ----

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
