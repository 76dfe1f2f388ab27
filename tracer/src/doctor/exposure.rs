//! The node's exposure now, from the quota'd cgroups of the cpu hierarchy and a short sample of
//! their `cpu.stat`: how many there are, the shortest period, how deep quotas nest, which were
//! throttled during the sample, and the work one period-timer interrupt could hold where
//! timers of one period expire together. Pure: the walk and the sample are in `gather`.
use std::collections::BTreeMap;

use serde::Serialize;

/// `cpu.stat`'s period counters (v1 and cgroup2 name them alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodStats {
    pub nr_periods: u64,
    pub nr_throttled: u64,
}

/// Parse `cpu.stat`; None when it has no `nr_periods`/`nr_throttled` (no CFS bandwidth).
pub fn parse_cpu_stat(text: &str) -> Option<PeriodStats> {
    let mut periods = None;
    let mut throttled = None;
    for l in text.lines() {
        let mut it = l.split_ascii_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("nr_periods"), Some(v)) => periods = Some(v),
            (Some("nr_throttled"), Some(v)) => throttled = Some(v),
            _ => {}
        }
    }
    Some(PeriodStats {
        nr_periods: periods?,
        nr_throttled: throttled?,
    })
}

/// One cgroup with a quota, as walked and sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCgroup {
    /// Path relative to the hierarchy's root (`/kubepods/pod1`).
    pub path: String,
    pub period_us: u64,
    pub quota_us: u64,
    /// Quota'd cgroups on its chain from the root, itself included (1: no quota'd ancestor).
    pub quota_depth: u32,
    /// cpu.stat at the start and the end of the sample (None where unreadable or gone).
    pub before: Option<PeriodStats>,
    pub after: Option<PeriodStats>,
}

impl QuotaCgroup {
    /// Periods it was throttled in during the sample, and periods its timer ran.
    pub fn sampled(&self) -> Option<PeriodStats> {
        let (b, a) = (self.before?, self.after?);
        Some(PeriodStats {
            nr_periods: a.nr_periods.saturating_sub(b.nr_periods),
            nr_throttled: a.nr_throttled.saturating_sub(b.nr_throttled),
        })
    }

    pub fn throttled(&self) -> bool {
        self.sampled().is_some_and(|s| s.nr_throttled > 0)
    }
}

/// A throttled cgroup, for the evidence (the busiest few).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThrottledCgroup {
    pub path: String,
    pub period_us: u64,
    pub quota_us: u64,
    /// Over the sample.
    pub nr_periods: u64,
    pub nr_throttled: u64,
}

/// Throttled cgroups listed in the JSON, most throttled first.
pub const THROTTLED_LISTED: usize = 10;

/// The exposure figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exposure {
    /// The cpu hierarchy walked (`/sys/fs/cgroup/cpu`, cgroup v1).
    pub hierarchy: String,
    pub cgroup_version: u8,
    /// Cgroups walked (directories, the root included).
    pub cgroups_walked: usize,
    /// The walk stopped at its cap: every figure below covers only the cgroups walked.
    pub walk_capped: bool,
    pub walk_cap: usize,
    pub quota_cgroups: usize,
    pub shortest_period_us: Option<u64>,
    /// Deepest nesting of quota'd cgroups (each level has its own period timer).
    pub max_quota_depth: u32,
    pub sample_s: f64,
    /// Quota'd cgroups sampled (at most the sample cap).
    pub sampled_cgroups: usize,
    pub sample_capped: bool,
    pub throttled_cgroups: usize,
    /// The shortest period among the throttled cgroups.
    pub shortest_throttled_period_us: Option<u64>,
    /// The period shared by the most throttled cgroups, and how many share it.
    pub busiest_period_us: Option<u64>,
    pub throttled_sharing_period: usize,
    pub ncpus: u32,
    /// ncpus x throttled_sharing_period: the cfs_rqs one period-timer interrupt could
    /// unthrottle where timers of one period expire together (before 6.4).
    pub cpu_cgroup_work: u64,
    pub throttled: Vec<ThrottledCgroup>,
}

/// What the walk and the sample gave, for [`exposure`].
#[derive(Debug, Clone, Default)]
pub struct Walked {
    pub hierarchy: String,
    pub cgroup_version: u8,
    pub cgroups_walked: usize,
    pub walk_capped: bool,
    pub walk_cap: usize,
    pub quota: Vec<QuotaCgroup>,
    pub sample_s: f64,
    pub sample_capped: bool,
}

pub fn exposure(w: &Walked, ncpus: u32) -> Exposure {
    let throttled: Vec<&QuotaCgroup> = w.quota.iter().filter(|c| c.throttled()).collect();
    let mut by_period: BTreeMap<u64, usize> = BTreeMap::new();
    for c in &throttled {
        *by_period.entry(c.period_us).or_default() += 1;
    }
    // Most cgroups first; the shorter period on a tie (its timer fires more often).
    let busiest = by_period
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(p, n)| (*p, *n));
    let mut listed: Vec<ThrottledCgroup> = throttled
        .iter()
        .map(|c| {
            let s = c.sampled().unwrap_or_default();
            ThrottledCgroup {
                path: c.path.clone(),
                period_us: c.period_us,
                quota_us: c.quota_us,
                nr_periods: s.nr_periods,
                nr_throttled: s.nr_throttled,
            }
        })
        .collect();
    listed.sort_by(|a, b| {
        b.nr_throttled
            .cmp(&a.nr_throttled)
            .then(a.path.cmp(&b.path))
    });
    listed.truncate(THROTTLED_LISTED);
    let sharing = busiest.map_or(0, |b| b.1);
    Exposure {
        hierarchy: w.hierarchy.clone(),
        cgroup_version: w.cgroup_version,
        cgroups_walked: w.cgroups_walked,
        walk_capped: w.walk_capped,
        walk_cap: w.walk_cap,
        quota_cgroups: w.quota.len(),
        shortest_period_us: w.quota.iter().map(|c| c.period_us).min(),
        max_quota_depth: w.quota.iter().map(|c| c.quota_depth).max().unwrap_or(0),
        sample_s: w.sample_s,
        sampled_cgroups: w.quota.iter().filter(|c| c.before.is_some()).count(),
        sample_capped: w.sample_capped,
        throttled_cgroups: throttled.len(),
        shortest_throttled_period_us: throttled.iter().map(|c| c.period_us).min(),
        busiest_period_us: busiest.map(|b| b.0),
        throttled_sharing_period: sharing,
        ncpus,
        cpu_cgroup_work: u64::from(ncpus) * sharing as u64,
        throttled: listed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(path: &str, period: u64, depth: u32, throttled: u64) -> QuotaCgroup {
        QuotaCgroup {
            path: path.into(),
            period_us: period,
            quota_us: period / 2,
            quota_depth: depth,
            before: Some(PeriodStats {
                nr_periods: 100,
                nr_throttled: 50,
            }),
            after: Some(PeriodStats {
                nr_periods: 110,
                nr_throttled: 50 + throttled,
            }),
        }
    }

    #[test]
    fn cpu_stat() {
        let v1 = "nr_periods 12\nnr_throttled 3\nthrottled_time 999\n";
        assert_eq!(
            parse_cpu_stat(v1),
            Some(PeriodStats {
                nr_periods: 12,
                nr_throttled: 3
            })
        );
        let v2 = "usage_usec 5\nuser_usec 4\nsystem_usec 1\nnr_periods 7\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\n";
        assert_eq!(parse_cpu_stat(v2).unwrap().nr_periods, 7);
        assert_eq!(parse_cpu_stat("usage_usec 5\n"), None);
    }

    #[test]
    fn figures() {
        let mut gone = cg("/gone", 1000, 1, 0);
        gone.after = None;
        let w = Walked {
            hierarchy: "/sys/fs/cgroup".into(),
            cgroup_version: 2,
            cgroups_walked: 9,
            walk_cap: 100,
            quota: vec![
                cg("/a", 100_000, 1, 4),
                cg("/a/b", 10_000, 2, 3),
                cg("/c", 10_000, 1, 9),
                cg("/d", 100_000, 1, 0),
                cg("/e", 100_000, 3, 2),
                gone,
            ],
            sample_s: 1.0,
            ..Walked::default()
        };
        let e = exposure(&w, 48);
        assert_eq!(e.quota_cgroups, 6);
        assert_eq!(e.shortest_period_us, Some(1000));
        assert_eq!(e.max_quota_depth, 3);
        assert_eq!(e.throttled_cgroups, 4);
        assert_eq!(e.shortest_throttled_period_us, Some(10_000));
        // Two throttled at 100 ms and two at 10 ms: the tie goes to the shorter period.
        assert_eq!(e.busiest_period_us, Some(10_000));
        assert_eq!(e.throttled_sharing_period, 2);
        assert_eq!(e.cpu_cgroup_work, 96);
        assert_eq!(e.throttled[0].path, "/c");
        assert_eq!(e.throttled[0].nr_throttled, 9);
        assert_eq!(e.throttled[0].nr_periods, 10);
        assert_eq!(e.sampled_cgroups, 6);
    }

    #[test]
    fn nothing_quota_d() {
        let e = exposure(&Walked::default(), 4);
        assert_eq!(e.shortest_period_us, None);
        assert_eq!(e.throttled_cgroups, 0);
        assert_eq!(e.cpu_cgroup_work, 0);
        assert_eq!(e.busiest_period_us, None);
    }
}
