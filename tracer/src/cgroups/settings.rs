//! A cgroup's CFS bandwidth settings (cpu.max, or cpu.cfs_period_us/cpu.cfs_quota_us on v1)
//! and the quotas of its ancestors: nested quotas each have their own period timer.
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::hierarchy::dir_of;
use crate::model::records::{CpuHierarchy, ParentRecord};

/// cgroup2 `cpu.max` (`"<quota|max> <period>"`) -> (period_us, quota_us).
pub fn parse_cpu_max(s: &str) -> (Option<u64>, Option<u64>) {
    let mut it = s.split_ascii_whitespace();
    let quota = it.next().and_then(|q| q.parse().ok());
    let period = it.next().and_then(|p| p.parse().ok());
    (period, quota)
}

/// cgroup v1 `cpu.cfs_quota_us`: `-1` (or anything negative) is no quota.
pub fn parse_v1_quota(s: &str) -> Option<u64> {
    s.trim()
        .parse::<i64>()
        .ok()
        .and_then(|q| u64::try_from(q).ok())
}

/// (period_us, quota_us) of a cgroup directory; None where unreadable (the cgroup2 root has no
/// cpu.max).
pub(super) fn bandwidth(version: u8, dir: &Path) -> (Option<u64>, Option<u64>) {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    if version == 1 {
        let period = read("cpu.cfs_period_us").and_then(|s| s.trim().parse().ok());
        let quota = read("cpu.cfs_quota_us").and_then(|s| parse_v1_quota(&s));
        (period, quota)
    } else {
        read("cpu.max").map_or((None, None), |s| parse_cpu_max(&s))
    }
}

/// Ancestors kept per cgroup record (nearest first): a deeper chain is cut there, so a record
/// stays small whatever the hierarchy's depth.
pub const MAX_PARENTS: usize = 16;

/// The ancestors of `path` (relative to the hierarchy's root), nearest first, up to but
/// excluding the root, at most MAX_PARENTS: `/a/b/c` -> [`/a/b`, `/a`]. Empty for `/` and for
/// a top-level cgroup.
pub fn ancestor_paths(path: &str) -> Vec<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    (1..comps.len())
        .rev()
        .take(MAX_PARENTS)
        .map(|n| format!("/{}", comps[..n].join("/")))
        .collect()
}

/// The parent chain of `path`, nearest first: each ancestor with its id and, when it has a
/// quota of its own, its period and quota. `read(ancestor)` answers (id, period_us, quota_us).
pub fn parent_chain(
    path: &str,
    mut read: impl FnMut(&str) -> (Option<u64>, Option<u64>, Option<u64>),
) -> Vec<ParentRecord> {
    ancestor_paths(path)
        .into_iter()
        .map(|p| {
            let (id, period_us, quota_us) = read(&p);
            ParentRecord {
                path: p,
                id,
                period_us: quota_us.and(period_us),
                quota_us,
            }
        })
        .collect()
}

/// `path`'s parent chain as the live hierarchy has it now (an ancestor already gone keeps its
/// path, without id or quota).
pub fn parents_of(hierarchy: &CpuHierarchy, path: &str) -> Vec<ParentRecord> {
    let mount = Path::new(&hierarchy.mount);
    parent_chain(path, |p| {
        let dir = dir_of(mount, p);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {
                let (period, quota) = bandwidth(hierarchy.version, &dir);
                (Some(m.ino()), period, quota)
            }
            _ => (None, None, None),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_parsers() {
        assert_eq!(parse_cpu_max("max 100000\n"), (Some(100000), None));
        assert_eq!(parse_cpu_max("2000 10000\n"), (Some(10000), Some(2000)));
        assert_eq!(parse_v1_quota("-1\n"), None);
        assert_eq!(parse_v1_quota("50000\n"), Some(50000));
    }

    #[test]
    fn parent_chains_from_paths_and_quotas() {
        assert_eq!(ancestor_paths("/"), Vec::<String>::new());
        assert_eq!(ancestor_paths("/a"), Vec::<String>::new());
        assert_eq!(ancestor_paths("/a/b/c"), ["/a/b", "/a"]);
        assert_eq!(ancestor_paths("a//b/"), ["/a"]);
        // Bounded: a deep path keeps the nearest MAX_PARENTS.
        let deep: String = (0..100).map(|i| format!("/d{i}")).collect();
        let chain = ancestor_paths(&deep);
        assert_eq!(chain.len(), MAX_PARENTS);
        assert_eq!(
            chain[0],
            (0..99).map(|i| format!("/d{i}")).collect::<String>()
        );

        // /p has a quota, /p/q none (v1 reports a period all the same: dropped), /p/q/r is
        // the cgroup itself and is not read.
        let mut asked = Vec::new();
        let chain = parent_chain("/p/q/r", |p| {
            asked.push(p.to_string());
            match p {
                "/p" => (Some(10), Some(100_000), Some(20_000)),
                "/p/q" => (Some(11), Some(100_000), None),
                _ => unreachable!("{p}"),
            }
        });
        assert_eq!(asked, ["/p/q", "/p"]);
        assert_eq!(
            chain,
            [
                ParentRecord {
                    path: "/p/q".into(),
                    id: Some(11),
                    period_us: None,
                    quota_us: None,
                },
                ParentRecord {
                    path: "/p".into(),
                    id: Some(10),
                    period_us: Some(100_000),
                    quota_us: Some(20_000),
                },
            ]
        );
    }
}
