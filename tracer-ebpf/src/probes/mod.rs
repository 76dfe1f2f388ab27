//! The programs, one file per probe family. Userspace attaches them by their `pub fn` names,
//! and the leak check and benchmarks count them by those names: never rename one.
//!
//! - `period_timer`: the frame around each `sched_cfs_period_timer` callback.
//! - `irq_span`: the timer interrupt that runs the callbacks.
//! - `csd`: the async-unthrottle CSD (`__cfsb_csd_unthrottle`, 6.3+).
//! - `counters`: work counted inside an open period or CSD frame.
//!
//! A family reaches another only for what a frame shares: the period frame feeds the span it
//! runs in, and the counters call into the frame they count in.

mod counters;
mod csd;
mod irq_span;
mod period_timer;
