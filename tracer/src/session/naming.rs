//! Cgroup naming off the drain path. Naming a new cgroup can walk the whole hierarchy and read
//! /proc; done inline it would stall draining during exactly the churn that fills the ring
//! buffer. So the namer runs on a blocking thread behind bounded channels, and the drain only
//! queues ids.
//!
//! The capture's order is kept exactly: lines queue behind the first line of a cgroup still
//! being named and go out, in the drain's order, once its naming line has gone out. (Order
//! matters beyond names: a callback line precedes the line of the timer interrupt that ran
//! it.) The queue is bounded ([`MAX_HELD_LINES`]); past that, and for a name that never comes,
//! the oldest lines go out ahead of their naming line, which follows. Readers resolve names by
//! id wherever the naming line stands (the report and the live view do).
use std::collections::VecDeque;
use std::time::Duration;

use rustc_hash::FxHashSet;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::capture::{CaptureLine, CgroupRecord};
use crate::cgroups::CgroupNamer;

/// Naming requests in flight before the drain keeps the rest in its own backlog.
const REQUESTS: usize = 1024;
/// Names ready before the namer waits for the drain to take them.
const RESULTS: usize = 1024;
/// Lines waiting for names, at most (about 200 bytes each).
pub const MAX_HELD_LINES: usize = 16_384;
/// How long the end of a session waits for names still being worked out.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// The drain's side of the naming thread.
pub struct Naming {
    requests: mpsc::Sender<u64>,
    results: mpsc::Receiver<CgroupRecord>,
    /// Ids the channel had no room for, sent as it empties.
    backlog: VecDeque<u64>,
    /// Requests sent and not yet answered.
    outstanding: usize,
    /// Ids ever asked for.
    seen: FxHashSet<u64>,
    /// Ids asked for the first time and not yet named: their lines wait.
    unnamed: FxHashSet<u64>,
    /// Lines waiting, in the drain's order, each with its cgroup id when that is unnamed.
    queue: VecDeque<(u64, CaptureLine)>,
    /// Lines that went out before their cgroup's naming line (queue over its bound, or a name
    /// that never came).
    pub unheld: u64,
}

impl Naming {
    /// Start the namer on a blocking thread of the current runtime.
    pub fn start(mut namer: CgroupNamer) -> Naming {
        Naming::start_with(move |id| namer.name(id))
    }

    /// The same with any naming function (tests name without a hierarchy).
    pub fn start_with(mut name: impl FnMut(u64) -> CgroupRecord + Send + 'static) -> Naming {
        let (requests, mut rx) = mpsc::channel::<u64>(REQUESTS);
        let (tx, results) = mpsc::channel(RESULTS);
        tokio::task::spawn_blocking(move || {
            while let Some(id) = rx.blocking_recv() {
                if tx.blocking_send(name(id)).is_err() {
                    break;
                }
            }
        });
        Naming {
            requests,
            results,
            backlog: VecDeque::new(),
            outstanding: 0,
            seen: FxHashSet::default(),
            unnamed: FxHashSet::default(),
            queue: VecDeque::new(),
            unheld: 0,
        }
    }

    /// A line of cgroup `id` (0: no cgroup) from the drain; `renamed`: its period changed.
    /// Never waits.
    pub fn line<E>(
        &mut self,
        id: u64,
        renamed: bool,
        line: CaptureLine,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        if id != 0 {
            if self.seen.insert(id) {
                self.unnamed.insert(id);
                self.ask(id);
            } else if renamed {
                self.ask(id);
            }
        }
        let wait = if self.unnamed.contains(&id) { id } else { 0 };
        if wait == 0 && self.queue.is_empty() {
            return sink(&line);
        }
        self.queue.push_back((wait, line));
        self.release(sink)
    }

    /// Let out the lines at the head of the queue that no longer wait (and the oldest over
    /// the bound).
    fn release<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some((wait, _)) = self.queue.front() {
            if *wait != 0 && self.unnamed.contains(wait) {
                if self.queue.len() <= MAX_HELD_LINES {
                    break;
                }
                self.unheld += 1;
            }
            if let Some((_, l)) = self.queue.pop_front() {
                sink(&l)?;
            }
        }
        Ok(())
    }

    fn ask(&mut self, id: u64) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(id);
            return;
        }
        match self.requests.try_send(id) {
            Ok(()) => self.outstanding += 1,
            Err(TrySendError::Full(id)) => self.backlog.push_back(id),
            // The namer is gone (it panicked): its lines go out unnamed.
            Err(TrySendError::Closed(id)) => {
                self.unnamed.remove(&id);
            }
        }
    }

    /// Send what the backlog holds while the channel has room.
    fn pump(&mut self) {
        while let Some(&id) = self.backlog.front() {
            match self.requests.try_send(id) {
                Ok(()) => {
                    self.outstanding += 1;
                    self.backlog.pop_front();
                }
                Err(TrySendError::Full(_)) => return,
                Err(TrySendError::Closed(_)) => {
                    for id in self.backlog.drain(..) {
                        self.unnamed.remove(&id);
                    }
                    return;
                }
            }
        }
    }

    /// The next name (cancel-safe: nothing is lost if the wait is dropped).
    pub async fn next(&mut self) -> Option<CgroupRecord> {
        self.results.recv().await
    }

    /// A name arrived: its line, then the lines that waited for it.
    pub fn named<E>(
        &mut self,
        rec: CgroupRecord,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.unnamed.remove(&rec.id);
        sink(&CaptureLine::Cgroup(Box::new(rec)))?;
        self.release(sink)?;
        self.pump();
        Ok(())
    }

    /// At the end: wait (up to [`FINISH_WAIT`]) for the names still being worked out, then let
    /// every waiting line go.
    pub async fn finish<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        let deadline = tokio::time::Instant::now() + FINISH_WAIT;
        while self.outstanding > 0 || !self.backlog.is_empty() {
            self.pump();
            match tokio::time::timeout_at(deadline, self.results.recv()).await {
                Ok(Some(rec)) => self.named(rec, sink)?,
                _ => break,
            }
        }
        while let Some((wait, l)) = self.queue.pop_front() {
            if wait != 0 && self.unnamed.contains(&wait) {
                self.unheld += 1;
            }
            sink(&l)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CgroupFacts, IrqSpanRecord};

    fn period(cgroup_id: u64, ts_ns: u64) -> CaptureLine {
        CaptureLine::Period(crate::report::fixtures::rec(cgroup_id, 0, ts_ns, 1, 0))
    }

    fn span(ts_ns: u64) -> CaptureLine {
        CaptureLine::IrqSpan(IrqSpanRecord {
            ts_ns,
            cpu: 0,
            duration_ns: 1,
            timers: 1,
            timers_ns: 1,
            flags: 0,
        })
    }

    /// (kind, id or ts) of each line a sink was handed, for comparing orders.
    #[derive(Default)]
    struct Shapes(Vec<(&'static str, u64)>);

    impl Shapes {
        fn sink(&mut self) -> impl FnMut(&CaptureLine) -> Result<(), ()> + '_ {
            |l| {
                self.0.push(shape(l));
                Ok(())
            }
        }
    }

    fn shape(l: &CaptureLine) -> (&'static str, u64) {
        match l {
            CaptureLine::Cgroup(c) => ("cgroup", c.id),
            CaptureLine::Period(p) => ("period", p.ts_ns),
            CaptureLine::IrqSpan(x) => ("span", x.ts_ns),
            _ => ("other", 0),
        }
    }

    fn slow_namer(id: u64) -> CgroupRecord {
        // Slower than the drain: lines must wait, not go out ahead.
        std::thread::sleep(Duration::from_millis(20));
        CgroupRecord {
            facts: CgroupFacts::unnamed(id),
            note: None,
            parents: None,
        }
    }

    #[tokio::test]
    async fn a_naming_line_precedes_its_cgroup_and_order_is_kept() {
        let mut n = Naming::start_with(slow_namer);
        let mut out = Shapes::default();
        let mut sink = out.sink();
        // cgroup 7's callback, its span, then cgroup 8's, then a span of nothing new.
        n.line(7, false, period(7, 1), &mut sink).unwrap();
        n.line(0, false, span(2), &mut sink).unwrap();
        n.line(8, false, period(8, 3), &mut sink).unwrap();
        n.line(7, false, period(7, 4), &mut sink).unwrap();
        // Nothing goes out yet: everything waits behind cgroup 7's first line.
        assert_eq!(n.queue.len(), 4);
        while let Some(rec) = n.next().await {
            n.named(rec, &mut sink).unwrap();
            if n.outstanding == 0 {
                break;
            }
        }
        n.finish(&mut sink).await.unwrap();
        drop(sink);
        assert_eq!(
            out.0,
            vec![
                ("cgroup", 7),
                ("period", 1),
                ("span", 2),
                ("cgroup", 8),
                ("period", 3),
                ("period", 4),
            ]
        );
        assert_eq!(n.unheld, 0);
    }

    #[tokio::test]
    async fn a_full_queue_lets_the_oldest_go_ahead_of_its_name() {
        let mut n = Naming::start_with(slow_namer);
        let mut out = Shapes::default();
        let mut sink = out.sink();
        for ts in 0..(MAX_HELD_LINES as u64 + 3) {
            n.line(9, false, period(9, ts), &mut sink).unwrap();
        }
        // Bounded: the three oldest went out unnamed, the rest wait.
        assert_eq!(n.queue.len(), MAX_HELD_LINES);
        assert_eq!(n.unheld, 3);
        n.finish(&mut sink).await.unwrap();
        drop(sink);
        assert_eq!(out.0[3], ("cgroup", 9));
        assert_eq!(out.0.len(), MAX_HELD_LINES + 4);
        assert_eq!(n.unheld, 3, "the name came in time for the rest");
    }
}
