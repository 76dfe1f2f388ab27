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
//!
//! A cgroup is often named before its processes arrive: container runtimes write the quota
//! (which fires the period timer at once) and only then move the process in. So a cgroup named
//! with no processes is read again on the namer thread, about every second and a bounded
//! number per round, until some show up; and at the end every named cgroup that still exists is
//! read once more. Either makes a new naming line when the processes (pids) or the workload
//! differ from what the capture last said: a later line for the same id, which readers take
//! over the earlier one. A re-read that finds no processes never makes a line once some were
//! named: a process that exited before the end does not erase what was seen.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::capture::{CaptureLine, CgroupRecord};
use crate::cgroups::CgroupNamer;
use crate::model::bounded::IdMap;
use crate::model::records::ProcessInfo;
use crate::model::workload::Workload;

/// Naming requests in flight before the drain keeps the rest in its own backlog.
const REQUESTS: usize = 1024;
/// Names ready before the namer waits for the drain to take them.
const RESULTS: usize = 1024;
/// Lines waiting for names, at most (about 200 bytes each).
pub const MAX_HELD_LINES: usize = 16_384;
/// How long the end of a session waits for names still being worked out and the last
/// re-reads, together.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);
/// How often, while recording, cgroups named with no processes are read again.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(1);
/// Re-reads sent per round, and in flight, at most: 2,000 cgroups without processes cost 64
/// reads a second on the namer thread (each read again about every half minute), never a stall.
pub const MAX_REREADS_PER_ROUND: usize = 64;
/// Cgroups read once more at the end, at most (those still without processes first).
pub const MAX_FINAL_REREADS: usize = 4096;
/// Cgroups whose last naming line is remembered for re-reads, at most; past it the oldest are
/// forgotten (their lines stand, they are just not read again).
pub const MAX_SHOWN: usize = 16_384;

/// What the drain asks the namer thread.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// A cgroup seen for the first time, or whose period changed.
    Name(u64),
    /// A named cgroup read again for its processes and workload.
    Reread(u64),
}

/// A record from the namer thread, and whether it answers a re-read.
#[derive(Debug)]
pub struct Answer {
    record: CgroupRecord,
    reread: bool,
}

/// What the capture last said of a named cgroup that existed then: what a re-read is compared
/// with.
struct Shown {
    /// Sorted.
    pids: Vec<u32>,
    workload: Workload,
    /// In the re-read rotation (queued or in flight): it was named with no processes.
    rotating: bool,
}

/// Sorted pids: the processes' order (by CPU time) changes between reads, the set is what
/// counts.
fn pids_of(processes: &[ProcessInfo]) -> Vec<u32> {
    let mut pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    pids
}

/// The drain's side of the naming thread.
pub struct Naming {
    requests: mpsc::Sender<Ask>,
    results: mpsc::Receiver<Answer>,
    /// Ids the channel had no room for, sent as it empties.
    backlog: VecDeque<u64>,
    /// Naming requests sent and not yet answered.
    outstanding: usize,
    /// Ids asked for, the [`MAX_TRACKED`](crate::model::bounded::MAX_TRACKED) most recent: one forgotten and seen again is named
    /// again (a repeated naming line, which readers take as the latest).
    seen: IdMap<()>,
    /// Ids asked for the first time and not yet named: their lines wait.
    unnamed: FxHashSet<u64>,
    /// Lines waiting, in the drain's order, each with its cgroup id when that is unnamed.
    queue: VecDeque<(u64, CaptureLine)>,
    /// Lines that went out before their cgroup's naming line (queue over its bound, or a name
    /// that never came).
    pub unheld: u64,
    /// Named cgroups that existed when named, by id (at most [`MAX_SHOWN`]).
    shown: FxHashMap<u64, Shown>,
    /// The ids of `shown`, oldest first (with ids since forgotten, pruned now and then).
    shown_order: VecDeque<u64>,
    /// Cgroups named with no processes, read again round-robin until some show up.
    rotation: VecDeque<u64>,
    /// Re-reads sent and not yet answered.
    rereads_out: usize,
    /// When the next round of re-reads is due (None: now).
    next_round: Option<Instant>,
    /// Naming lines a re-read made.
    pub reread_lines: u64,
}

impl Naming {
    /// Start the namer on a blocking thread of the current runtime.
    pub fn start(mut namer: CgroupNamer) -> Naming {
        Naming::start_with(move |id| namer.name(id))
    }

    /// The same with any naming function (tests name without a hierarchy).
    pub fn start_with(mut name: impl FnMut(u64) -> CgroupRecord + Send + 'static) -> Naming {
        let (requests, mut rx) = mpsc::channel::<Ask>(REQUESTS);
        let (tx, results) = mpsc::channel(RESULTS);
        // Every filesystem read (a first naming or a re-read) happens here, never in the drain.
        tokio::task::spawn_blocking(move || {
            while let Some(ask) = rx.blocking_recv() {
                let answer = match ask {
                    Ask::Name(id) => Answer {
                        record: name(id),
                        reread: false,
                    },
                    Ask::Reread(id) => Answer {
                        record: name(id),
                        reread: true,
                    },
                };
                if tx.blocking_send(answer).is_err() {
                    break;
                }
            }
        });
        Naming {
            requests,
            results,
            backlog: VecDeque::new(),
            outstanding: 0,
            seen: IdMap::default(),
            unnamed: FxHashSet::default(),
            queue: VecDeque::new(),
            unheld: 0,
            shown: FxHashMap::default(),
            shown_order: VecDeque::new(),
            rotation: VecDeque::new(),
            rereads_out: 0,
            next_round: None,
            reread_lines: 0,
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
            if self.seen.insert_new(id) {
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
        match self.requests.try_send(Ask::Name(id)) {
            Ok(()) => self.outstanding += 1,
            Err(TrySendError::Full(_)) => self.backlog.push_back(id),
            // The namer is gone (it panicked): its lines go out unnamed.
            Err(TrySendError::Closed(_)) => {
                self.unnamed.remove(&id);
            }
        }
    }

    /// Send what the backlog holds while the channel has room.
    fn pump(&mut self) {
        while let Some(&id) = self.backlog.front() {
            match self.requests.try_send(Ask::Name(id)) {
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

    /// The next name or re-read (cancel-safe: nothing is lost if the wait is dropped).
    pub async fn next(&mut self) -> Option<Answer> {
        self.results.recv().await
    }

    /// A name arrived: its line, then the lines that waited for it. A re-read arrived: a new
    /// line for its cgroup if it found something the capture has not said.
    pub fn named<E>(
        &mut self,
        answer: Answer,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        let Answer { record, reread } = answer;
        if reread {
            self.rereads_out = self.rereads_out.saturating_sub(1);
            if let Some(rec) = self.reread(record) {
                self.reread_lines += 1;
                // Its first naming line went out before it was re-read: order holds.
                sink(&CaptureLine::Cgroup(Box::new(rec)))?;
            }
            self.pump();
            return Ok(());
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        self.unnamed.remove(&record.id);
        self.remember(&record);
        sink(&CaptureLine::Cgroup(Box::new(record)))?;
        self.release(sink)?;
        self.pump();
        Ok(())
    }

    /// Note what a naming line said; one without processes puts its cgroup in the rotation.
    fn remember(&mut self, rec: &CgroupRecord) {
        if rec.path.is_none() || rec.note.is_some() {
            // Gone, or removed while being named: nothing left to read.
            self.shown.remove(&rec.id);
            return;
        }
        let pids = pids_of(&rec.processes);
        let empty = pids.is_empty();
        match self.shown.get_mut(&rec.id) {
            Some(s) => {
                s.pids = pids;
                s.workload = rec.workload.clone();
                if empty && !s.rotating {
                    s.rotating = true;
                    self.rotation.push_back(rec.id);
                }
            }
            None => {
                self.shown.insert(
                    rec.id,
                    Shown {
                        pids,
                        workload: rec.workload.clone(),
                        rotating: empty,
                    },
                );
                self.shown_order.push_back(rec.id);
                if empty {
                    self.rotation.push_back(rec.id);
                }
                self.forget_oldest();
            }
        }
    }

    /// Keep `shown` within [`MAX_SHOWN`], and its order list within twice that.
    fn forget_oldest(&mut self) {
        while self.shown.len() > MAX_SHOWN {
            match self.shown_order.pop_front() {
                Some(id) => {
                    self.shown.remove(&id);
                }
                None => break,
            }
        }
        if self.shown_order.len() > 2 * MAX_SHOWN {
            let shown = &self.shown;
            self.shown_order.retain(|id| shown.contains_key(id));
        }
        // Forgotten ids leave the rotation only when a round reaches them; a round stops at
        // its re-read budget, so under churn prune here too.
        if self.rotation.len() > 2 * MAX_SHOWN {
            let shown = &self.shown;
            self.rotation.retain(|id| shown.contains_key(id));
        }
    }

    /// The line a re-read makes, if any: only when it found processes (pids) or a workload
    /// the capture has not said. The merge rule: a read with no processes never replaces
    /// a line that named some (they may have exited since; what was seen stands).
    fn reread(&mut self, rec: CgroupRecord) -> Option<CgroupRecord> {
        let id = rec.id;
        let shown = self.shown.get_mut(&id)?;
        if rec.path.is_none() || rec.note.is_some() {
            // Gone since: the capture keeps what it said.
            self.shown.remove(&id);
            return None;
        }
        let pids = pids_of(&rec.processes);
        if pids.is_empty() {
            if shown.rotating {
                self.rotation.push_back(id);
            }
            if !shown.pids.is_empty() || shown.workload == rec.workload {
                return None;
            }
        } else {
            shown.rotating = false;
            if shown.pids == pids && shown.workload == rec.workload {
                return None;
            }
        }
        shown.pids = pids;
        shown.workload = rec.workload.clone();
        Some(rec)
    }

    /// While recording (called at each drain): every [`REREAD_INTERVAL`], send the next
    /// cgroups of the rotation to be read again, at most [`MAX_REREADS_PER_ROUND`] in flight.
    /// First namings go first: nothing is sent while they wait for room.
    pub fn reread_round(&mut self, now: Instant) {
        if self.next_round.is_some_and(|t| now < t) {
            return;
        }
        self.next_round = Some(now + REREAD_INTERVAL);
        if !self.backlog.is_empty() {
            return;
        }
        // Each id looked at once per round at most.
        let mut left = self.rotation.len();
        while left > 0 && self.rereads_out < MAX_REREADS_PER_ROUND {
            left -= 1;
            let Some(id) = self.rotation.pop_front() else {
                break;
            };
            let Some(shown) = self.shown.get_mut(&id) else {
                continue; // forgotten or gone
            };
            if !shown.pids.is_empty() {
                // Renamed with processes since.
                shown.rotating = false;
                continue;
            }
            match self.requests.try_send(Ask::Reread(id)) {
                Ok(()) => self.rereads_out += 1,
                Err(TrySendError::Full(_)) => {
                    self.rotation.push_front(id);
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    self.rotation.clear();
                    break;
                }
            }
        }
    }

    /// At the end: wait (up to [`FINISH_WAIT`]) for the names still being worked out, let
    /// every waiting line go, then, in what is left of that time, read every named cgroup that
    /// still exists once more (at most [`MAX_FINAL_REREADS`], those without processes first).
    pub async fn finish<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), E> {
        let deadline = tokio::time::Instant::now() + FINISH_WAIT;
        while self.outstanding > 0 || !self.backlog.is_empty() {
            self.pump();
            match tokio::time::timeout_at(deadline, self.results.recv()).await {
                Ok(Some(answer)) => self.named(answer, sink)?,
                _ => break,
            }
        }
        while let Some((wait, l)) = self.queue.pop_front() {
            if wait != 0 && self.unnamed.contains(&wait) {
                self.unheld += 1;
            }
            sink(&l)?;
        }
        self.rotation.clear();
        let mut last: Vec<(bool, u64)> = self
            .shown
            .iter()
            .map(|(id, s)| (!s.pids.is_empty(), *id))
            .collect();
        last.sort_unstable();
        last.truncate(MAX_FINAL_REREADS);
        let mut last: VecDeque<u64> = last.into_iter().map(|(_, id)| id).collect();
        while !last.is_empty() || self.rereads_out > 0 {
            while let Some(&id) = last.front() {
                match self.requests.try_send(Ask::Reread(id)) {
                    Ok(()) => {
                        self.rereads_out += 1;
                        last.pop_front();
                    }
                    Err(TrySendError::Full(_)) => break,
                    Err(TrySendError::Closed(_)) => {
                        last.clear();
                        break;
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.results.recv()).await {
                Ok(Some(answer)) => self.named(answer, sink)?,
                _ => break,
            }
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

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: "yes".into(),
            cmdline: Some("yes".into()),
            cpu_ticks: 1,
        }
    }

    /// A fake namer: cgroup `id` at `/cg<id>` with the processes `reads(id, n)` gives at its
    /// `n`th read (0: the first naming); every read's id logged in order.
    fn namer_with(
        reads: impl Fn(u64, usize) -> Vec<ProcessInfo> + Send + 'static,
    ) -> (
        impl FnMut(u64) -> CgroupRecord + Send + 'static,
        std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    ) {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let name = move |id| {
            let n = seen
                .lock()
                .map(|mut l| {
                    let n = l.iter().filter(|i| **i == id).count();
                    l.push(id);
                    n
                })
                .unwrap_or(0);
            CgroupRecord {
                facts: CgroupFacts {
                    path: Some(format!("/cg{id}")),
                    processes: reads(id, n),
                    ..CgroupFacts::unnamed(id)
                },
                note: None,
                parents: None,
            }
        };
        (name, log)
    }

    /// The lines a sink was handed.
    #[derive(Default)]
    struct Lines(Vec<CaptureLine>);

    impl Lines {
        fn sink(&mut self) -> impl FnMut(&CaptureLine) -> Result<(), ()> + '_ {
            |l| {
                self.0.push(l.clone());
                Ok(())
            }
        }

        /// Each cgroup line's id and sorted pids, in order.
        fn cgroups(&self) -> Vec<(u64, Vec<u32>)> {
            self.0
                .iter()
                .filter_map(|l| match l {
                    CaptureLine::Cgroup(c) => Some((c.id, pids_of(&c.processes))),
                    _ => None,
                })
                .collect()
        }
    }

    /// Take the namer's answers until none is in flight.
    async fn settle(n: &mut Naming, sink: &mut impl FnMut(&CaptureLine) -> Result<(), ()>) {
        while n.outstanding > 0 || n.rereads_out > 0 {
            let Some(answer) = n.next().await else {
                break;
            };
            n.named(answer, sink).unwrap();
        }
    }

    #[tokio::test]
    async fn a_cgroup_named_before_its_processes_is_named_again_when_they_arrive() {
        // The quota written first: the first read finds nobody; the process comes after.
        let (name, _) = namer_with(|_, n| if n == 0 { vec![] } else { vec![process(42)] });
        let mut n = Naming::start_with(name);
        let mut out = Lines::default();
        let mut sink = out.sink();
        n.line(7, false, period(7, 1), &mut sink).unwrap();
        settle(&mut n, &mut sink).await;
        let t0 = Instant::now();
        n.reread_round(t0);
        assert_eq!(n.rereads_out, 1);
        settle(&mut n, &mut sink).await;
        // Found: out of the rotation, never read again while recording.
        n.reread_round(t0 + REREAD_INTERVAL);
        assert_eq!(n.rereads_out, 0);
        n.line(7, false, period(7, 2), &mut sink).unwrap();
        drop(sink);
        assert_eq!(out.cgroups(), vec![(7, vec![]), (7, vec![42])]);
        // The re-read line is a later line: after the first naming line and its callback.
        assert!(matches!(out.0[1], CaptureLine::Period(_)));
        assert!(matches!(out.0[3], CaptureLine::Period(_)));
        assert_eq!(n.reread_lines, 1);
    }

    #[tokio::test]
    async fn at_the_end_an_empty_reread_keeps_the_processes_a_changed_one_replaces() {
        // 7's process exits before the end; 8 gains one; 9 is unchanged.
        let (name, log) = namer_with(|id, n| match (id, n) {
            (7, 0) => vec![process(70)],
            (7, _) => vec![],
            (8, 0) => vec![process(80)],
            (8, _) => vec![process(81), process(80)],
            _ => vec![process(90)],
        });
        let mut n = Naming::start_with(name);
        let mut out = Lines::default();
        let mut sink = out.sink();
        for id in [7, 8, 9] {
            n.line(id, false, period(id, id), &mut sink).unwrap();
        }
        settle(&mut n, &mut sink).await;
        n.finish(&mut sink).await.unwrap();
        drop(sink);
        assert_eq!(
            out.cgroups(),
            vec![
                (7, vec![70]),
                (8, vec![80]),
                (9, vec![90]),
                (8, vec![80, 81])
            ]
        );
        // Each was read once more at the end.
        let mut reads = log.lock().map(|l| l.clone()).unwrap_or_default();
        reads.sort_unstable();
        assert_eq!(reads, vec![7, 7, 8, 8, 9, 9]);
    }

    #[tokio::test]
    async fn rereads_go_round_robin_and_are_bounded_per_round() {
        let (name, log) = namer_with(|_, _| vec![]);
        let mut n = Naming::start_with(name);
        let mut out = Lines::default();
        let mut sink = out.sink();
        const CGROUPS: u64 = 200;
        for id in 1..=CGROUPS {
            n.line(id, false, period(id, id), &mut sink).unwrap();
        }
        settle(&mut n, &mut sink).await;
        let rereads = |log: &std::sync::Mutex<Vec<u64>>| {
            log.lock()
                .map(|l| l[CGROUPS as usize..].to_vec())
                .unwrap_or_default()
        };
        let t0 = Instant::now();
        n.reread_round(t0);
        assert_eq!(n.rereads_out, MAX_REREADS_PER_ROUND);
        settle(&mut n, &mut sink).await;
        // Not due again within the interval, whatever the drain does meanwhile.
        n.reread_round(t0 + REREAD_INTERVAL / 2);
        assert_eq!(n.rereads_out, 0);
        n.reread_round(t0 + REREAD_INTERVAL);
        assert_eq!(n.rereads_out, MAX_REREADS_PER_ROUND);
        settle(&mut n, &mut sink).await;
        let r = rereads(&log);
        let want: Vec<u64> = (1..=2 * MAX_REREADS_PER_ROUND as u64).collect();
        assert_eq!(r, want, "round-robin: the second round takes the next ones");
        // Still nobody there: no new lines, and everyone still in the rotation.
        drop(sink);
        assert_eq!(out.cgroups().len(), CGROUPS as usize);
        assert_eq!(n.rotation.len(), CGROUPS as usize);
        assert_eq!(n.reread_lines, 0);
    }

    /// Hours of churn in one go: every id new, named with no processes (so each joins the
    /// re-read rotation). Nothing that grows with the ids seen passes its cap.
    #[tokio::test]
    async fn churn_keeps_every_per_id_set_bounded() {
        const IDS: u64 = crate::model::bounded::MAX_TRACKED as u64 + 10_000;
        let (name, log) = namer_with(|_, _| Vec::new());
        let mut n = Naming::start_with(name);
        let mut lines = 0u64;
        let mut sink = |_: &CaptureLine| -> Result<(), ()> {
            lines += 1;
            Ok(())
        };
        for id in 1..=IDS {
            n.line(id, false, period(id, id), &mut sink).unwrap();
            while n.outstanding > 0 {
                let rec = n.next().await.expect("the namer answers");
                n.named(rec, &mut sink).unwrap();
            }
            log.lock().unwrap().clear();
            assert!(n.seen.len() <= crate::model::bounded::MAX_TRACKED);
            assert!(n.shown.len() <= MAX_SHOWN);
            assert!(n.shown_order.len() <= 2 * MAX_SHOWN + 1);
            assert!(n.rotation.len() <= 2 * MAX_SHOWN + 1);
        }
        assert_eq!(
            n.seen.evicted(),
            IDS - crate::model::bounded::MAX_TRACKED as u64
        );
        assert!(n.unnamed.is_empty() && n.queue.is_empty() && n.backlog.is_empty());
        assert_eq!(n.unheld, 0);
        assert_eq!(lines, 2 * IDS, "a naming line and a period line per id");
    }
}
