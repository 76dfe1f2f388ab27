//! Lockup precursors: what the kernel's own fix (2e8e19226398) reacts to. Period changes are
//! told apart by who made them: the kernel (a "period too short, scaling up" message with the
//! new period, matched here in time) or a write to the cgroup's file.
use std::collections::HashMap;

use super::model::{CgroupReport, NodePrecursors, PeriodChangeReport, PrecursorReport};
use super::prose::human_ns;
use crate::analysis::precursors::PeriodChange;
use crate::analysis::{Aggregator, CgroupView, UNRESOLVED_ID};

/// How far a kernel message may be from the period change it explains: it is logged in the
/// callback that scales, the new period shows in the next callback, and /dev/kmsg's clock
/// (local_clock) and the events' (CLOCK_MONOTONIC) may differ a little.
const KMSG_WINDOW_NS: u64 = 5_000_000_000;

/// Which kernel messages explain which period changes, and which cgroups they concern.
#[derive(Default)]
struct KmsgMatch {
    /// (cgroup, index of the change) -> index of the message.
    changes: HashMap<(u64, usize), usize>,
    /// cgroup -> indexes of its messages.
    by_cgroup: HashMap<u64, Vec<usize>>,
    unattributed: Vec<usize>,
}

impl KmsgMatch {
    fn of(agg: &Aggregator) -> KmsgMatch {
        let mut km = KmsgMatch::default();
        for i in 0..agg.kmsgs().len() {
            km.attribute(agg, i);
        }
        km
    }

    /// Give message `i` to the period change it explains, else to the timer it is about.
    fn attribute(&mut self, agg: &Aggregator, i: usize) {
        let m = &agg.kmsgs()[i];
        if m.scaled_up
            && let Some((id, j)) = self.change_for(agg, m.ts_us.saturating_mul(1_000), m.period_us)
        {
            self.changes.insert((id, j), i);
            self.by_cgroup.entry(id).or_default().push(i);
            return;
        }
        // Otherwise (it could not scale, or the change predates the recording): a timer on
        // that CPU whose period is the message's; the busiest if several.
        let new_ns = m.period_us.saturating_mul(1_000);
        let owner = agg
            .cgroups()
            .filter(|v| {
                v.id != UNRESOLVED_ID
                    && v.stats.period_ns() == Some(new_ns)
                    && v.stats.cpus().contains(m.cpu)
            })
            .max_by_key(|v| (v.stats.total_callback_ns(), std::cmp::Reverse(v.id)))
            .map(|v| v.id);
        match owner {
            Some(id) => self.by_cgroup.entry(id).or_default().push(i),
            None => self.unattributed.push(i),
        }
    }

    /// A change to exactly this period, nearest in time and not explained yet: (cgroup, index).
    fn change_for(&self, agg: &Aggregator, m_ts: u64, period_us: u64) -> Option<(u64, usize)> {
        let new_ns = period_us.saturating_mul(1_000);
        let mut best: Option<(u64, u64, usize)> = None;
        for v in agg.cgroups().filter(|v| v.id != UNRESOLVED_ID) {
            let Some(pr) = v.stats.precursors() else {
                continue;
            };
            for (j, c) in pr.changes().iter().enumerate() {
                let d = c.ts_ns.abs_diff(m_ts);
                if c.to_ns == new_ns
                    && d <= KMSG_WINDOW_NS
                    && !self.changes.contains_key(&(v.id, j))
                    && best.is_none_or(|b| (d, v.id) < (b.0, b.1))
                {
                    best = Some((d, v.id, j));
                }
            }
        }
        best.map(|(_, id, j)| (id, j))
    }
}

/// The evidence the precursor reports weigh: the kernel's messages matched to period changes.
pub(crate) struct Evidence<'a> {
    agg: &'a Aggregator,
    km: KmsgMatch,
    /// /dev/kmsg was read: a change without a message was not the kernel's.
    kmsg_read: bool,
    /// The loop count is measured (`figures.loops`).
    loops: bool,
}

impl<'a> Evidence<'a> {
    pub(crate) fn new(agg: &'a Aggregator, kmsg_read: bool, loops: bool) -> Self {
        Evidence {
            agg,
            km: KmsgMatch::of(agg),
            kmsg_read,
            loops,
        }
    }

    /// A cgroup's precursors; None for a cgroup without callbacks.
    pub(crate) fn cgroup(&self, v: &CgroupView<'_>) -> Option<PrecursorReport> {
        if v.stats.periods() == 0 {
            return None;
        }
        let mut r = PrecursorReport {
            multi_pass_callbacks: self.loops.then_some(0),
            ..Default::default()
        };
        if let Some(pr) = v.stats.precursors() {
            r.period_changes = pr
                .changes()
                .iter()
                .enumerate()
                .map(|(j, c)| self.change(v.id, j, c))
                .collect();
            r.period_changes_dropped = pr.changes_dropped();
            r.callbacks_over_period = pr.over_period();
            r.multi_pass_callbacks = self.loops.then_some(pr.multi_pass());
        }
        if let Some(ix) = self.km.by_cgroup.get(&v.id) {
            r.kernel_messages = ix.iter().map(|&i| self.agg.kmsgs()[i].clone()).collect();
        }
        Some(r)
    }

    /// Change `j` of cgroup `id`, and who made it.
    fn change(&self, id: u64, j: usize, c: &PeriodChange) -> PeriodChangeReport {
        let us = |ns: u64| ns / 1_000;
        let quota = |q: u64| (q != u64::MAX && q > 0).then_some(q / 1_000);
        let (by, evidence) = match self.km.changes.get(&(id, j)) {
            Some(&i) => {
                let m = &self.agg.kmsgs()[i];
                (
                    "kernel",
                    format!(
                        "kernel message at {} on cpu{}: period too short, scaling up (new \
                         cfs_period_us = {}, cfs_quota_us = {})",
                        human_ns(m.ts_us.saturating_mul(1_000)),
                        m.cpu,
                        m.period_us,
                        m.quota_us
                    ),
                )
            }
            None => self.unexplained(id, c, quota),
        };
        PeriodChangeReport {
            ts_ns: c.ts_ns,
            cpu: c.cpu,
            from_us: us(c.from_ns),
            to_us: us(c.to_ns),
            from_quota_us: quota(c.from_quota_ns),
            to_quota_us: quota(c.to_quota_ns),
            by: by.to_string(),
            evidence,
        }
    }

    /// A change no kernel message explains: a write when the cgroup's file showed it.
    fn unexplained(
        &self,
        id: u64,
        c: &PeriodChange,
        quota: impl Fn(u64) -> Option<u64>,
    ) -> (&'static str, String) {
        let base = if self.kmsg_read {
            "no kernel \"period too short\" message with this period"
        } else {
            "/dev/kmsg was not read"
        };
        let doubled = c.to_ns == c.from_ns.saturating_mul(2)
            && quota(c.from_quota_ns).is_some()
            && c.to_quota_ns == c.from_quota_ns.saturating_mul(2);
        let dbl = if doubled {
            " (period and quota both doubled, as the kernel's own fix does: its message may \
             have been rate-limited)"
        } else {
            ""
        };
        if self.agg.file_periods(id).contains(&(c.to_ns / 1_000)) {
            (
                "write",
                format!("{base}; the cgroup file shows the new period{dbl}"),
            )
        } else {
            (
                "unknown",
                format!("{base}; the cgroup file was not seen with the new period{dbl}"),
            )
        }
    }

    /// The node's summary over every cgroup's precursors.
    pub(crate) fn node(&self, cgroups: &[CgroupReport]) -> NodePrecursors {
        let agg = self.agg;
        let mut n = NodePrecursors {
            kernel_messages: agg.kmsgs().len() as u64 + agg.kmsgs_dropped(),
            unattributed_messages: self
                .km
                .unattributed
                .iter()
                .map(|&i| agg.kmsgs()[i].clone())
                .collect(),
            ..Default::default()
        };
        for c in cgroups {
            let Some(p) = &c.precursors else {
                continue;
            };
            let by = |who: &str| p.period_changes.iter().filter(|x| x.by == who).count() as u64;
            n.period_changes += p.period_changes.len() as u64 + p.period_changes_dropped;
            n.period_changes_by_kernel += by("kernel");
            n.period_changes_by_write += by("write");
            n.callbacks_over_period += p.callbacks_over_period;
            if let Some(m) = p.multi_pass_callbacks {
                *n.multi_pass_callbacks.get_or_insert(0) += m;
            }
            if p.any() {
                n.cgroups.push(c.id);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::analysis::Aggregator;
    use crate::report::build_report;
    use crate::report::fixtures::*;

    #[test]
    fn precursors_say_who_changed_the_period() {
        let a = precursor_agg();
        let r = build_report(&kmsg_header(), &a, 1, vec![]);
        assert!(r.figures.kernel_messages.available);
        let y = r.cgroups.iter().find(|c| c.id == 20).unwrap();
        let p = y.precursors.clone().unwrap();
        assert_eq!(p.callbacks_over_period, 1);
        assert_eq!(
            p.multi_pass_callbacks, None,
            "loops are unavailable in this header"
        );
        assert_eq!(p.period_changes.len(), 1);
        let c = &p.period_changes[0];
        assert_eq!(
            (
                c.from_us,
                c.to_us,
                c.from_quota_us,
                c.to_quota_us,
                c.by.as_str()
            ),
            (1_000, 2_000, Some(500), Some(1_000), "kernel")
        );
        assert!(
            c.evidence.contains("scaling up (new cfs_period_us = 2000"),
            "{}",
            c.evidence
        );
        assert_eq!(p.kernel_messages.len(), 1);
        let cr = r.cgroups.iter().find(|c| c.id == 30).unwrap();
        let pc = &cr.precursors.as_ref().unwrap().period_changes;
        assert_eq!(
            pc.iter().map(|c| c.by.as_str()).collect::<Vec<_>>(),
            vec!["write", "unknown"]
        );
        assert!(
            pc[0]
                .evidence
                .contains("the cgroup file shows the new period")
        );
        let np = r.precursors.clone().unwrap();
        assert_eq!(
            (
                np.period_changes,
                np.period_changes_by_kernel,
                np.period_changes_by_write,
                np.callbacks_over_period,
                np.kernel_messages
            ),
            (3, 1, 1, 1, 2)
        );
        assert_eq!(np.unattributed_messages.len(), 1);
        assert_eq!(np.cgroups.len(), 2);
        let reason = &r.culprit.as_ref().unwrap().reason;
        assert!(
            reason.contains(
                "lockup precursors: period changed 1 time by the kernel (1.00 ms -> 2.00 ms), \
                 1 callback at least their period, 1 kernel message \"period too short\""
            ),
            "{reason}"
        );
        // Without a kmsg reader nothing is "kernel", and the evidence says why.
        let r = build_report(&header(), &a, 1, vec![]);
        assert!(!r.figures.kernel_messages.available || !a.kmsgs().is_empty());
        let y = r.cgroups.iter().find(|c| c.id == 20).unwrap();
        let c = &y.precursors.as_ref().unwrap().period_changes[0];
        // The capture holds messages even so (an older header): they still match.
        assert_eq!(c.by, "kernel");
        let mut b = Aggregator::new();
        b.add_period(&with_period(20, 1, 10, 1_000_000, 500_000));
        b.add_period(&with_period(20, 2, 10, 2_000_000, 1_000_000));
        let r = build_report(&header(), &b, 1, vec![]);
        let c = &r.cgroups[0].precursors.as_ref().unwrap().period_changes[0];
        assert_eq!(c.by, "unknown");
        assert!(
            c.evidence.starts_with("/dev/kmsg was not read"),
            "{}",
            c.evidence
        );
        assert!(c.evidence.contains("both doubled"), "{}", c.evidence);
    }
}
