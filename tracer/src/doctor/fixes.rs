//! Which of the known CFS-bandwidth fixes the running kernel has, decided from what the kernel
//! itself shows (kallsyms, BTF, cgroup files) wherever a fix left a mark there, else from the
//! release string and a small table of distribution backports. Pure: the caller gathers the
//! [`KernelMarks`].
use std::collections::BTreeSet;

use serde::Serialize;

/// A kernel release as `uname -r` gives it, split into what the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Upstream base (major, minor, patch): `4.18.0-80.5.1.el8_0.x86_64` -> (4, 18, 0).
    pub base: (u32, u32, u32),
    /// A RHEL-style build (`80.5.1`) and its distribution tag (`el8`), when the release has one.
    pub distro: Option<(String, Vec<u32>)>,
}

/// Parse `uname -r`. None when it does not start with `major.minor`.
pub fn parse_release(s: &str) -> Option<Release> {
    let s = s.trim();
    let (head, rest) = s.split_once('-').unwrap_or((s, ""));
    let mut nums = head.split('.').map(|n| n.parse::<u32>().ok());
    let major = nums.next()??;
    let minor = nums.next()??;
    let patch = nums.next().flatten().unwrap_or(0);
    // `80.5.1.el8_0.x86_64`: the numbers before the `elN` tag are the distribution's build.
    let parts: Vec<&str> = rest.split('.').collect();
    let distro = parts.iter().position(|p| is_el_tag(p)).and_then(|i| {
        let build: Option<Vec<u32>> = parts[..i].iter().map(|p| p.parse().ok()).collect();
        let tag = parts[i].split('_').next().unwrap_or(parts[i]).to_string();
        build.filter(|b| !b.is_empty()).map(|b| (tag, b))
    });
    Some(Release {
        base: (major, minor, patch),
        distro,
    })
}

fn is_el_tag(p: &str) -> bool {
    p.strip_prefix("el")
        .and_then(|r| r.split('_').next())
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The known fixes and features, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// c06f04c70489 (v3.17): `distribute_cfs_runtime` hands out a bounded runtime budget instead
    /// of looping near-forever over the throttled list.
    DistributeLoop,
    /// 2e8e19226398 (v5.1; RHEL 8 4.18.0-80.5.1): the period timer's overrun loop is bounded,
    /// "period too short, scaling up".
    PeriodOverrun,
    /// 8ad075c2eb1f (v6.3): remote CPUs' cfs_rqs are unthrottled in a CSD.
    AsyncUnthrottle,
    /// 41abdba93747 (v6.4): period timers start at a random phase per cgroup, no longer aligned.
    InterleavedTimers,
    /// e1fad12dcb66 (v6.18): throttling per task at return to user.
    TaskThrottle,
    /// cfs burst (v5.14): `cpu.max.burst` / `cpu.cfs_burst_us`.
    Burst,
}

impl Fix {
    pub const ALL: [Fix; 6] = [
        Fix::DistributeLoop,
        Fix::PeriodOverrun,
        Fix::AsyncUnthrottle,
        Fix::InterleavedTimers,
        Fix::TaskThrottle,
        Fix::Burst,
    ];

    /// The upstream commit (12 digits), or "" for a feature series.
    pub fn commit(self) -> &'static str {
        match self {
            Fix::DistributeLoop => "c06f04c70489",
            Fix::PeriodOverrun => "2e8e19226398",
            Fix::AsyncUnthrottle => "8ad075c2eb1f",
            Fix::InterleavedTimers => "41abdba93747",
            Fix::TaskThrottle => "e1fad12dcb66",
            Fix::Burst => "",
        }
    }

    /// The first upstream release with it.
    pub fn upstream(self) -> (u32, u32) {
        match self {
            Fix::DistributeLoop => (3, 17),
            Fix::PeriodOverrun => (5, 1),
            Fix::AsyncUnthrottle => (6, 3),
            Fix::InterleavedTimers => (6, 4),
            Fix::TaskThrottle => (6, 18),
            Fix::Burst => (5, 14),
        }
    }

    /// The finding id (`fix.distribute_loop`).
    pub fn id(self) -> &'static str {
        match self {
            Fix::DistributeLoop => "fix.distribute_loop",
            Fix::PeriodOverrun => "fix.period_overrun",
            Fix::AsyncUnthrottle => "fix.async_unthrottle",
            Fix::InterleavedTimers => "fix.interleaved_timers",
            Fix::TaskThrottle => "fix.task_throttle",
            Fix::Burst => "fix.burst",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Fix::DistributeLoop => "distribute_cfs_runtime loop bounded by a runtime budget",
            Fix::PeriodOverrun => {
                "period-timer overrun loop bounded (\"period too short, scaling up\")"
            }
            Fix::AsyncUnthrottle => "remote cfs_rqs unthrottled asynchronously (CSD)",
            Fix::InterleavedTimers => "period timers interleaved (random phase per cgroup)",
            Fix::TaskThrottle => "task-based throttle (at return to user)",
            Fix::Burst => "CFS burst (cpu.max.burst / cpu.cfs_burst_us)",
        }
    }
}

/// Where each fix left a mark in the kernel: the symbols and BTF fields looked for.
pub const CSD_UNTHROTTLE_SYM: &str = "__cfsb_csd_unthrottle";
pub const THROTTLE_WORK_SYM: &str = "throttle_cfs_rq_work";
/// (struct, field) pairs read from BTF.
pub const CSD_LIST_FIELD: (&str, &str) = ("cfs_rq", "throttled_csd_list");
pub const TASK_THROTTLE_FIELD: (&str, &str) = ("task_struct", "throttle_node");
pub const BURST_FIELD: (&str, &str) = ("cfs_bandwidth", "burst");
/// Every symbol and BTF field [`decide`] may consult, for the caller to look up.
pub const SYMBOLS: [&str; 2] = [CSD_UNTHROTTLE_SYM, THROTTLE_WORK_SYM];
pub const FIELDS: [(&str, &str); 3] = [CSD_LIST_FIELD, TASK_THROTTLE_FIELD, BURST_FIELD];

/// What the kernel shows, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct KernelMarks {
    /// `uname -r`.
    pub release: String,
    /// Text symbols of [`SYMBOLS`] present in kallsyms; None when kallsyms could not be read.
    pub symbols: Option<BTreeSet<String>>,
    /// `struct.field` of [`FIELDS`] present in BTF; None without BTF.
    pub btf_fields: Option<BTreeSet<String>>,
    /// The burst file found in a cgroup of the cpu hierarchy (`cpu.max.burst` or
    /// `cpu.cfs_burst_us`), Some(None) when cgroups were looked at and none had one, None when
    /// no cgroup could say (cgroup2 with no child cgroup: the root has no cpu.max.burst).
    pub burst_file: Option<Option<String>>,
}

impl KernelMarks {
    fn sym(&self, s: &str) -> Option<bool> {
        self.symbols.as_ref().map(|set| set.contains(s))
    }
    fn field(&self, (s, f): (&str, &str)) -> Option<bool> {
        self.btf_fields
            .as_ref()
            .map(|set| set.contains(&format!("{s}.{f}")))
    }
}

/// Whether the kernel has a fix, and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixState {
    pub fix: Fix,
    /// None: cannot tell.
    pub present: Option<bool>,
    /// What decided: `kallsyms: __cfsb_csd_unthrottle`, `btf: cfs_rq.throttled_csd_list absent`,
    /// `release: 6.18.44 >= 6.4`, `backport: RHEL el8 4.18.0-80.5.1`.
    pub basis: String,
}

/// A distribution kernel line known to carry a fix on an older base.
#[derive(Debug, Clone, Copy)]
pub struct Backport {
    pub fix: Fix,
    /// The release's distribution tag (`el8`).
    pub tag: &'static str,
    pub base: (u32, u32, u32),
    /// The first build with it (`80.5.1` of `4.18.0-80.5.1.el8_0`).
    pub first: &'static [u32],
}

pub const BACKPORTS: &[Backport] = &[Backport {
    fix: Fix::PeriodOverrun,
    tag: "el8",
    base: (4, 18, 0),
    first: &[80, 5, 1],
}];

/// Decide every fix.
pub fn decide(m: &KernelMarks) -> Vec<FixState> {
    Fix::ALL.iter().map(|&f| decide_one(f, m)).collect()
}

fn decide_one(fix: Fix, m: &KernelMarks) -> FixState {
    let state = |present: Option<bool>, basis: String| FixState {
        fix,
        present,
        basis,
    };
    // The kernel's own marks first: a symbol or field the fix added.
    let marks: (&[(&str, &str)], &[&str]) = match fix {
        Fix::AsyncUnthrottle => (&[CSD_LIST_FIELD], &[CSD_UNTHROTTLE_SYM]),
        Fix::TaskThrottle => (&[TASK_THROTTLE_FIELD], &[THROTTLE_WORK_SYM]),
        Fix::Burst => (&[BURST_FIELD], &[]),
        _ => (&[], &[]),
    };
    if fix == Fix::Burst
        && let Some(file) = &m.burst_file
    {
        return match file {
            Some(f) => state(Some(true), format!("cgroup file: {f}")),
            None => state(
                Some(false),
                "cgroup file: neither cpu.max.burst nor cpu.cfs_burst_us".into(),
            ),
        };
    }
    for &f in marks.0 {
        if m.field(f) == Some(true) {
            return state(Some(true), format!("btf: {}.{}", f.0, f.1));
        }
    }
    for &s in marks.1 {
        if m.sym(s) == Some(true) {
            return state(Some(true), format!("kallsyms: {s}"));
        }
    }
    // Absent from a kernel that shows its BTF: the fix is not there, whatever the release says
    // (a vendor backport would have brought its field).
    if let Some(&f) = marks.0.first()
        && m.field(f) == Some(false)
    {
        let also = marks
            .1
            .iter()
            .filter(|s| m.sym(s) == Some(false))
            .map(|s| format!(", kallsyms has no {s}"))
            .collect::<String>();
        return state(Some(false), format!("btf: no {}.{}{also}", f.0, f.1));
    }
    release_rule(fix, &m.release).map_or_else(
        || state(None, format!("release {:?} not understood", m.release)),
        |(p, b)| state(Some(p), b),
    )
}

/// The release rule: a distribution backport from [`BACKPORTS`], else the upstream version.
fn release_rule(fix: Fix, release: &str) -> Option<(bool, String)> {
    let r = parse_release(release)?;
    let (maj, min) = fix.upstream();
    let (a, mi, c) = r.base;
    if (a, mi) >= (maj, min) {
        return Some((true, format!("release: {a}.{mi}.{c} >= {maj}.{min}")));
    }
    if let Some((tag, build)) = &r.distro {
        for b in BACKPORTS {
            if b.fix == fix && b.tag == tag && b.base == r.base {
                let has = build.as_slice() >= b.first;
                let first = join(b.first);
                return Some((
                    has,
                    format!(
                        "backport: {tag} {a}.{mi}.{c}-{first} {} (this is -{})",
                        if has {
                            "or later has it"
                        } else {
                            "first has it"
                        },
                        join(build)
                    ),
                ));
            }
        }
    }
    Some((
        false,
        format!("release: {a}.{mi}.{c} < {maj}.{min}, no known backport"),
    ))
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Option<BTreeSet<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    fn get(states: &[FixState], f: Fix) -> &FixState {
        states.iter().find(|s| s.fix == f).unwrap()
    }

    #[test]
    fn releases() {
        let r = parse_release("6.18.44-fc-v1045").unwrap();
        assert_eq!(r.base, (6, 18, 44));
        assert_eq!(r.distro, None);
        let r = parse_release("4.18.0-80.5.1.el8_0.x86_64").unwrap();
        assert_eq!(r.base, (4, 18, 0));
        assert_eq!(r.distro, Some(("el8".into(), vec![80, 5, 1])));
        assert_eq!(
            parse_release("5.10.0-35-cloud-amd64").unwrap().base,
            (5, 10, 0)
        );
        assert_eq!(parse_release("7.0").unwrap().base, (7, 0, 0));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn kernel_marks_win_over_the_release() {
        // An old release string with the CSD symbol: a backport, said by the kernel itself.
        let m = KernelMarks {
            release: "5.10.0-35-cloud-amd64".into(),
            symbols: set(&[CSD_UNTHROTTLE_SYM]),
            btf_fields: None,
            burst_file: Some(Some("cpu.cfs_burst_us".into())),
        };
        let s = decide(&m);
        let a = get(&s, Fix::AsyncUnthrottle);
        assert_eq!(a.present, Some(true));
        assert_eq!(a.basis, "kallsyms: __cfsb_csd_unthrottle");
        assert_eq!(get(&s, Fix::Burst).basis, "cgroup file: cpu.cfs_burst_us");
        // No BTF: task throttle falls back to the release.
        let t = get(&s, Fix::TaskThrottle);
        assert_eq!(t.present, Some(false));
        assert!(t.basis.starts_with("release: 5.10.0 < 6.18"), "{}", t.basis);
    }

    #[test]
    fn btf_fields_decide_both_ways() {
        let m = KernelMarks {
            release: "9.9.9".into(),
            symbols: set(&[]),
            btf_fields: set(&["task_struct.throttle_node"]),
            burst_file: None,
        };
        let s = decide(&m);
        assert_eq!(get(&s, Fix::TaskThrottle).present, Some(true));
        assert_eq!(
            get(&s, Fix::TaskThrottle).basis,
            "btf: task_struct.throttle_node"
        );
        // BTF without the field: absent, whatever the (new) release says.
        let a = get(&s, Fix::AsyncUnthrottle);
        assert_eq!(a.present, Some(false));
        assert_eq!(
            a.basis,
            "btf: no cfs_rq.throttled_csd_list, kallsyms has no __cfsb_csd_unthrottle"
        );
        assert_eq!(get(&s, Fix::Burst).present, Some(false));
        // Fixes that left no mark: the release.
        assert_eq!(get(&s, Fix::InterleavedTimers).present, Some(true));
    }

    #[test]
    fn rhel_backport_of_the_overrun_fix() {
        let m = |r: &str| KernelMarks {
            release: r.into(),
            ..KernelMarks::default()
        };
        let s = decide(&m("4.18.0-80.5.1.el8_0.x86_64"));
        let p = get(&s, Fix::PeriodOverrun);
        assert_eq!(p.present, Some(true), "{}", p.basis);
        assert!(
            p.basis.starts_with("backport: el8 4.18.0-80.5.1"),
            "{}",
            p.basis
        );
        assert_eq!(
            get(&decide(&m("4.18.0-147.el8.x86_64")), Fix::PeriodOverrun).present,
            Some(true)
        );
        let old = decide(&m("4.18.0-80.el8.x86_64"));
        assert_eq!(get(&old, Fix::PeriodOverrun).present, Some(false));
        assert_eq!(get(&old, Fix::DistributeLoop).present, Some(true));
        // Upstream 4.18 has no such backport.
        let up = decide(&m("4.18.20"));
        assert_eq!(get(&up, Fix::PeriodOverrun).present, Some(false));
        assert_eq!(
            get(&decide(&m("5.1.0")), Fix::PeriodOverrun).present,
            Some(true)
        );
        assert_eq!(
            get(&decide(&m("3.16.0")), Fix::DistributeLoop).present,
            Some(false)
        );
        assert_eq!(get(&decide(&m("??")), Fix::DistributeLoop).present, None);
    }
}
