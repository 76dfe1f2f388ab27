//! The node's side of the findings: the cpu hierarchy walked (bounded), its quota'd cgroups'
//! `cpu.stat` sampled, and the cgroup file that says whether the kernel has CFS burst.
use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::exposure::{QuotaCgroup, Walked, parse_cpu_stat};
use crate::cgroups::{parse_cpu_max, parse_v1_quota};
use crate::model::records::CpuHierarchy;

/// Most cgroup directories walked: a node with 100k cgroups is judged on the first ones (said
/// in `exposure.walk`), never walked whole. A directory costs two or three small reads.
pub const WALK_CAP: usize = 20_000;
/// Most quota'd cgroups whose cpu.stat is sampled (two reads each).
pub const SAMPLE_CAP: usize = 5_000;

/// The burst files, v1 then cgroup2.
const BURST_FILES: [&str; 2] = ["cpu.cfs_burst_us", "cpu.max.burst"];

/// (period_us, quota_us) of a cgroup with a quota.
fn quota_of(version: u8, dir: &Path) -> Option<(u64, u64)> {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    let (period, quota) = if version == 1 {
        (
            read("cpu.cfs_period_us").and_then(|s| s.trim().parse().ok()),
            read("cpu.cfs_quota_us").and_then(|s| parse_v1_quota(&s)),
        )
    } else {
        read("cpu.max").map_or((None, None), |s| parse_cpu_max(&s))
    };
    Some((period?, quota?))
}

/// Walk `h` breadth first (the root included), at most `cap` directories, and note each
/// cgroup with a quota and how many quota'd cgroups its chain holds.
pub fn walk(h: &CpuHierarchy, cap: usize) -> Walked {
    let root = PathBuf::from(&h.mount);
    let mut w = Walked {
        hierarchy: h.mount.clone(),
        cgroup_version: h.version,
        walk_cap: cap,
        ..Walked::default()
    };
    let mut queue: VecDeque<(PathBuf, String, u32)> = VecDeque::from([(root, "/".into(), 0)]);
    while let Some((dir, rel, above)) = queue.pop_front() {
        if w.cgroups_walked >= cap {
            w.walk_capped = true;
            break;
        }
        w.cgroups_walked += 1;
        let mut depth = above;
        if let Some((period_us, quota_us)) = quota_of(h.version, &dir) {
            depth += 1;
            w.quota.push(QuotaCgroup {
                path: rel.clone(),
                period_us,
                quota_us,
                quota_depth: depth,
                before: None,
                after: None,
            });
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = crate::model::escape::os_str(&e.file_name());
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                queue.push_back((e.path(), child, depth));
            }
        }
    }
    w
}

/// Read every quota'd cgroup's cpu.stat (up to [`SAMPLE_CAP`]), wait `d`, read them again.
pub fn sample(h: &CpuHierarchy, w: &mut Walked, d: Duration) {
    let root = Path::new(&h.mount);
    let stat = |rel: &str| {
        fs::read_to_string(root.join(rel.trim_start_matches('/')).join("cpu.stat"))
            .ok()
            .and_then(|t| parse_cpu_stat(&t))
    };
    let n = w.quota.len().min(SAMPLE_CAP);
    w.sample_capped = w.quota.len() > n;
    let start = Instant::now();
    for c in &mut w.quota[..n] {
        c.before = stat(&c.path);
    }
    std::thread::sleep(d);
    for c in &mut w.quota[..n] {
        c.after = stat(&c.path);
    }
    w.sample_s = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
}

/// The burst file in the hierarchy's root (v1 has it there) or in its first child cgroup
/// (the cgroup2 root has no cpu.max.burst); None when there is no cgroup to ask.
pub fn burst_file(h: &CpuHierarchy) -> Option<Option<String>> {
    let root = Path::new(&h.mount);
    let has = |dir: &Path| {
        BURST_FILES
            .iter()
            .find(|f| dir.join(f).exists())
            .map(|f| f.to_string())
    };
    if h.version == 1 {
        return Some(has(root));
    }
    let child = fs::read_dir(root)
        .ok()?
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join("cpu.max").exists())?;
    Some(has(&child.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_is_bounded_and_counts_nested_quotas() {
        let dir = std::env::temp_dir().join(format!("cfstrace-doctor-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A fake v1 tree: /a (quota) / b (quota) / c (no quota), /d (no quota).
        for (p, quota) in [("a", "5000"), ("a/b", "1000"), ("a/b/c", "-1"), ("d", "-1")] {
            let d = dir.join(p);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cpu.cfs_period_us"), "10000\n").unwrap();
            fs::write(d.join("cpu.cfs_quota_us"), format!("{quota}\n")).unwrap();
        }
        fs::write(dir.join("a/b/cpu.stat"), "nr_periods 3\nnr_throttled 1\n").unwrap();
        let h = CpuHierarchy {
            version: 1,
            mount: dir.to_string_lossy().into_owned(),
        };
        let w = walk(&h, 100);
        assert_eq!(w.cgroups_walked, 5);
        assert!(!w.walk_capped);
        let paths: Vec<(&str, u32)> = w
            .quota
            .iter()
            .map(|c| (c.path.as_str(), c.quota_depth))
            .collect();
        assert_eq!(paths, [("/a", 1), ("/a/b", 2)]);
        let capped = walk(&h, 2);
        assert!(capped.walk_capped);
        assert_eq!(capped.cgroups_walked, 2);
        let mut w = w;
        sample(&h, &mut w, Duration::from_millis(1));
        assert!(w.quota[1].before.is_some() && w.quota[0].before.is_none());
        assert_eq!(burst_file(&h), Some(None));
        fs::write(dir.join("cpu.cfs_burst_us"), "0\n").unwrap();
        assert_eq!(burst_file(&h), Some(Some("cpu.cfs_burst_us".into())));
        fs::remove_dir_all(&dir).unwrap();
    }
}
