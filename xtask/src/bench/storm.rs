//! The host's throttling storm: one culprit cgroup (many busy loops, short period) and filler
//! cgroups (one loop each) under `<cpu hierarchy>/cfstrace-bench-<pid>/`, on cgroup v1's `cpu`
//! controller or cgroup2's `cpu.max`. The busy loops are cfstrace's own `__spin` workers. Dropping
//! the storm kills the loops and removes every directory it made.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::proc::Guarded;

const PREFIX: &str = "cfstrace-bench-";

/// The storm's shape (periods and quotas in microseconds).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub culprit_workers: usize,
    pub culprit_period_us: u64,
    pub culprit_quota_us: u64,
    pub fillers: usize,
    pub filler_period_us: u64,
    pub filler_quota_us: u64,
}

/// The host storm of P1, P2 and P5: about 1.7 of 2 CPUs of demand (so the bench, bpftool and
/// the tracer's reader still get CPU) and one culprit whose period timer fires ten times as
/// often as any filler's. With 6.18's task-based throttle a callback costs about the same
/// whatever the cgroup holds, so the culprit is made by the count of its callbacks: 500 a
/// second against 50, which outweighs a filler's in every 1 s `watch` interval. That needs
/// the culprit's loops to use their quota every period (a period timer with no runtime used
/// and nothing throttled goes idle): at the default weight, 24 fillers crowded them out and
/// its timer ran about 50 times a second, no more than a filler's (measured on the 6.18
/// host); so the culprit gets [`CULPRIT_WEIGHT`] times the default CPU weight.
/// The culprit's CPU weight over the default (cgroup v1 `cpu.shares` 1024, v2 `cpu.weight`
/// 100): its loops run whenever it is not throttled.
pub const CULPRIT_WEIGHT: u64 = 10;

pub const HOST: Shape = Shape {
    culprit_workers: 8,
    culprit_period_us: 2_000,
    culprit_quota_us: 1_000,
    fillers: 24,
    filler_period_us: 20_000,
    filler_quota_us: 1_000,
};

/// The cpu controller's hierarchy: cgroup v1 `cpu` mount, else cgroup2 with `cpu`.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub v2: bool,
}

pub fn find_hierarchy() -> Result<Hierarchy> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    parse_hierarchy(&mounts).context(
        "no cpu controller: neither a cgroup v1 `cpu` mount nor cgroup2 with the cpu controller",
    )
}

fn parse_hierarchy(mounts: &str) -> Option<Hierarchy> {
    let mut v2 = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [_, dir, fstype, opts, ..] = f[..] else {
            continue;
        };
        if fstype == "cgroup" && opts.split(',').any(|o| o == "cpu") {
            return Some(Hierarchy {
                mount: dir.into(),
                v2: false,
            });
        }
        if fstype == "cgroup2" && v2.is_none() {
            let controllers =
                fs::read_to_string(Path::new(dir).join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                v2 = Some(Hierarchy {
                    mount: dir.into(),
                    v2: true,
                });
            }
        }
    }
    v2
}

pub struct Storm {
    pub hierarchy: Hierarchy,
    /// Directories made, parents first.
    dirs: Vec<PathBuf>,
    workers: Vec<Guarded>,
    /// The culprit's path as cfstrace names it (relative to the hierarchy's root).
    pub culprit: String,
    root_cpu_enabled: Option<PathBuf>,
}

impl Storm {
    pub fn start(cfstrace: &Path, shape: Shape) -> Result<Storm> {
        let h = find_hierarchy()?;
        remove_stale(&h);
        let tag = format!("{PREFIX}{}", std::process::id());
        let mut s = Storm {
            hierarchy: h.clone(),
            dirs: Vec::new(),
            workers: Vec::new(),
            culprit: format!("/{tag}/culprit"),
            root_cpu_enabled: None,
        };
        if h.v2 {
            let control = h.mount.join("cgroup.subtree_control");
            let on = fs::read_to_string(&control).unwrap_or_default();
            if !on.split_whitespace().any(|c| c == "cpu") {
                write(&control, "+cpu")?;
                s.root_cpu_enabled = Some(control);
            }
        }
        let parent = h.mount.join(&tag);
        s.mkdir(&parent)?;
        if h.v2 {
            write(&parent.join("cgroup.subtree_control"), "+cpu")?;
        }
        println!(
            "storm: {} (culprit: {} loops at {}/{} us, {CULPRIT_WEIGHT}x the CPU weight; {} \
             fillers: 1 loop at {}/{} us)",
            parent.display(),
            shape.culprit_workers,
            shape.culprit_quota_us,
            shape.culprit_period_us,
            shape.fillers,
            shape.filler_quota_us,
            shape.filler_period_us
        );
        let culprit = s.cgroup(
            &parent,
            "culprit",
            shape.culprit_period_us,
            shape.culprit_quota_us,
        )?;
        if h.v2 {
            write(
                &culprit.join("cpu.weight"),
                &(100 * CULPRIT_WEIGHT).to_string(),
            )?;
        } else {
            write(
                &culprit.join("cpu.shares"),
                &(1024 * CULPRIT_WEIGHT).to_string(),
            )?;
        }
        s.spawn(cfstrace, &culprit, shape.culprit_workers)?;
        for i in 0..shape.fillers {
            let d = s.cgroup(
                &parent,
                &format!("f{i}"),
                shape.filler_period_us,
                shape.filler_quota_us,
            )?;
            s.spawn(cfstrace, &d, 1)?;
        }
        Ok(s)
    }

    fn mkdir(&mut self, d: &Path) -> Result<()> {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        self.dirs.push(d.to_path_buf());
        Ok(())
    }

    fn cgroup(&mut self, parent: &Path, name: &str, period: u64, quota: u64) -> Result<PathBuf> {
        let d = parent.join(name);
        self.mkdir(&d)?;
        if self.hierarchy.v2 {
            write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
        } else {
            write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
            write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(d)
    }

    fn spawn(&mut self, cfstrace: &Path, dir: &Path, n: usize) -> Result<()> {
        for _ in 0..n {
            let mut c = Command::new(cfstrace);
            c.args(["__spin", "--comm", "bench-spin"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let g = Guarded::spawn_quiet(&mut c, "busy loop", libc::SIGKILL, libc::SIGKILL)?;
            write(&dir.join("cgroup.procs"), &g.pid().to_string())?;
            self.workers.push(g);
        }
        Ok(())
    }

    /// Kill the loops, remove the directories.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        self.workers.clear();
        let mut first = None;
        for d in self.dirs.drain(..).rev() {
            if let Err(e) = rmdir_retry(&d) {
                first.get_or_insert(e);
            }
        }
        if let Some(c) = self.root_cpu_enabled.take() {
            // Best effort: the kernel refuses if someone else started using it meanwhile.
            let _ = fs::write(c, "-cpu");
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: cleaning up the storm: {e:#}");
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// rmdir, retrying while the killed loops leave the cgroup (EBUSY for a moment).
fn rmdir_retry(d: &Path) -> Result<()> {
    for _ in 0..100 {
        match fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {
                kill_members(d);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    fs::remove_dir(d).with_context(|| format!("removing {}", d.display()))
}

fn kill_members(d: &Path) {
    let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: plain syscall; only pids inside a cgroup this bench made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Storms of benches that died without cleaning up (their pid is gone): remove them.
fn remove_stale(h: &Hierarchy) {
    let Ok(entries) = fs::read_dir(&h.mount) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        println!("storm: removing the stale {}", e.path().display());
        let children: Vec<PathBuf> = fs::read_dir(e.path())
            .map(|r| {
                r.flatten()
                    .filter(|c| c.path().is_dir())
                    .map(|c| c.path())
                    .collect()
            })
            .unwrap_or_default();
        for c in children {
            let _ = rmdir_retry(&c);
        }
        let _ = rmdir_retry(&e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_cpu_mount_wins_over_cgroup2() {
        let m = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                 cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n\
                 cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n";
        let h = parse_hierarchy(m).unwrap();
        assert_eq!(h.mount, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert!(!h.v2);
        assert!(parse_hierarchy("proc /proc proc rw 0 0\n").is_none());
    }

    #[test]
    fn host_storm_leaves_cpu_to_spare() {
        let s = HOST;
        let demand = s.culprit_quota_us as f64 / s.culprit_period_us as f64
            + s.fillers as f64 * s.filler_quota_us as f64 / s.filler_period_us as f64;
        assert!(demand < 2.0, "{demand}");
    }
}
