//! Naming cgroups on a live node: find the hierarchy that holds the cpu controller, map a
//! period timer's cgroup id (the kernfs node id, which is the inode number of the cgroup's
//! directory in that mount, on v1 and v2) to its path, and read its bandwidth settings and
//! busiest processes.
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::capture::{CgroupRecord, CpuHierarchy, ProcessInfo};
use crate::workload;

#[derive(Debug, thiserror::Error)]
pub enum CgroupFsError {
    #[error(
        "no cgroup hierarchy with the cpu controller is mounted; mount cgroup2 or the v1 cpu controller"
    )]
    NoCpuHierarchy,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Most ids the namer remembers; past it the cache is rebuilt by the next rescan.
pub const CACHE_CAP: usize = 65_536;
/// A miss rescans the mount at most this often, so a storm of unknown ids (cgroups created and
/// removed faster than we look) costs one walk per interval, not one per event.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Processes kept per cgroup record.
pub const MAX_PROCESSES: usize = 10;
/// Characters of a command line kept.
pub const CMDLINE_MAX: usize = 256;

const GONE_NOTE: &str = "cgroup gone before it could be named";
const REMOVED_NOTE: &str = "cgroup removed before its settings and processes could be read";

/// One line of /proc/self/mountinfo, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem (`/` unless a subtree is mounted, e.g. in a
    /// cgroup namespace).
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    /// Per-superblock options (for cgroup v1, the controllers: `rw,cpu,cpuacct`).
    pub super_options: Vec<String>,
}

/// Undo mountinfo's octal escapes (`\040` is a space, `\134` a backslash).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Only \000-\377 fit a byte; anything else is kept as written.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/PID/mountinfo text. Malformed lines are skipped.
///
/// Format: `id parent maj:min root mount_point mount_opts [optional...] - fstype source super_opts`.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            // The optional fields vary in number; the separator `-` ends them.
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            let fstype = fields.get(sep + 1)?;
            let super_options = fields
                .get(sep + 3)
                .map_or(Vec::new(), |o| o.split(',').map(str::to_string).collect());
            Some(MountInfo {
                root: unescape(root),
                mount_point: unescape(mount_point),
                fstype: fstype.to_string(),
                super_options,
            })
        })
        .collect()
}

/// Pick the cpu controller's hierarchy: a cgroup v1 mount with `cpu` among its controllers
/// wins (the controller is then not on cgroup2), else a cgroup2 mount whose
/// `cgroup.controllers` lists `cpu` (`cgroup2_has_cpu` answers that for a mount point).
/// Among several mounts of the same kind, one of the whole hierarchy (root `/`) is preferred.
pub fn choose_cpu_hierarchy(
    mounts: &[MountInfo],
    mut cgroup2_has_cpu: impl FnMut(&str) -> bool,
) -> Option<CpuHierarchy> {
    let best = |candidates: Vec<&MountInfo>| {
        candidates
            .iter()
            .find(|m| m.root == "/")
            .or(candidates.first())
            .map(|m| m.mount_point.clone())
    };
    let v1: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == "cpu"))
        .collect();
    if let Some(mount) = best(v1) {
        return Some(CpuHierarchy { version: 1, mount });
    }
    let v2: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && cgroup2_has_cpu(&m.mount_point))
        .collect();
    best(v2).map(|mount| CpuHierarchy { version: 2, mount })
}

/// Find where the cpu controller's hierarchy is mounted (from /proc/self/mountinfo).
pub fn find_cpu_hierarchy() -> Result<CpuHierarchy, CgroupFsError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupFsError::Read {
        path: path.into(),
        source,
    })?;
    choose_cpu_hierarchy(&parse_mountinfo(&text), |mp| {
        fs::read_to_string(Path::new(mp).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_ascii_whitespace().any(|c| c == "cpu"))
    })
    .ok_or(CgroupFsError::NoCpuHierarchy)
}

/// Absolute directory of a path relative to the hierarchy's root (`/` is the root).
fn dir_of(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// The cgroup id (directory inode) of `rel`, e.g. `/kubepods/burstable`.
pub fn id_of_path(hierarchy: &CpuHierarchy, rel: &str) -> Option<u64> {
    fs::metadata(dir_of(Path::new(&hierarchy.mount), rel))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.ino())
}

/// kernfs' file handle type (include/linux/exportfs.h FILEID_KERNFS): the handle is the id.
const FILEID_KERNFS: i32 = 0xfe;

/// Resolve one id without a walk: kernfs (cgroup v1 and v2 hierarchies) exports file handles
/// that are the node id, so open_by_handle_at + readlink names it. Needs CAP_DAC_READ_SEARCH;
/// any failure (old kernel, gone cgroup: ESTALE) is just None.
fn path_by_handle(mount: &Path, id: u64) -> Option<String> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let mount_dir = fs::File::open(mount).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: KernfsHandle is `struct file_handle` with an 8-byte f_handle, as handle_bytes says.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_dir.as_raw_fd(),
            (&raw mut handle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned to us and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let rel = target.strip_prefix(mount).ok()?;
    // Guard against a stale or unreachable dentry (readlink's " (deleted)" and the like).
    if fs::metadata(&target).ok()?.ino() != id {
        return None;
    }
    let rel = rel.to_str()?;
    Some(format!("/{rel}"))
}

/// utime + stime (clock ticks) and comm from /proc/PID/stat. The comm may itself hold `)` or
/// spaces, so the fields are split after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ")": state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    let rest: Vec<&str> = stat[close + 1..].split_ascii_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// /proc/PID/cmdline bytes -> one line: NULs to spaces, at most CMDLINE_MAX characters;
/// None for kernel threads and zombies (empty).
pub fn format_cmdline(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let line: String = text
        .trim_end_matches('\0')
        .chars()
        .map(|c| if c == '\0' { ' ' } else { c })
        .take(CMDLINE_MAX)
        .collect();
    let line = line.trim_end().to_string();
    (!line.is_empty()).then_some(line)
}

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
fn bandwidth(version: u8, dir: &Path) -> (Option<u64>, Option<u64>) {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    if version == 1 {
        let period = read("cpu.cfs_period_us").and_then(|s| s.trim().parse().ok());
        let quota = read("cpu.cfs_quota_us").and_then(|s| parse_v1_quota(&s));
        (period, quota)
    } else {
        read("cpu.max").map_or((None, None), |s| parse_cpu_max(&s))
    }
}

/// Every directory at or below `dir` (the cgroup and its descendants).
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out
}

/// The MAX_PROCESSES busiest processes (by utime + stime) of `dir` and its descendants.
/// Processes that exit while we look are skipped.
pub fn busiest_processes(dir: &Path) -> Vec<ProcessInfo> {
    let pids: BTreeSet<u32> = subtree(dir)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    // One read per pid to rank (stat carries the same comm as /proc/PID/comm: task->comm),
    // the command line only for the ones kept: the root cgroup holds every process.
    let mut ranked: Vec<(u32, String, u64)> = pids
        .into_iter()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (comm, ticks) = parse_stat(&stat)?;
            Some((pid, comm, ticks))
        })
        .collect();
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .filter_map(|(pid, comm, cpu_ticks)| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some(ProcessInfo {
                pid,
                comm,
                cmdline: format_cmdline(&raw),
                cpu_ticks,
            })
        })
        .take(MAX_PROCESSES)
        .collect()
}

/// Names cgroup ids of one cpu hierarchy, caching id -> path.
pub struct CgroupNamer {
    hierarchy: CpuHierarchy,
    mount: PathBuf,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
    scans: u64,
}

impl CgroupNamer {
    pub fn new(hierarchy: CpuHierarchy) -> Self {
        let mount = PathBuf::from(&hierarchy.mount);
        CgroupNamer {
            hierarchy,
            mount,
            paths: HashMap::new(),
            last_scan: None,
            scans: 0,
        }
    }

    pub fn hierarchy(&self) -> &CpuHierarchy {
        &self.hierarchy
    }

    /// Walks of the mount so far (each miss past the rate limit costs one).
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Path of `id` relative to the hierarchy's root (`/` for the root), or None if no such
    /// cgroup exists (it was removed, or is in another hierarchy).
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL);
        if due {
            self.rescan(id);
            if let Some(p) = self.paths.get(&id) {
                return Some(p.clone());
            }
        }
        // A cgroup made since the last walk, inside the rate limit: ask kernfs directly so a
        // young cgroup is not reported gone.
        let p = path_by_handle(&self.mount, id)?;
        if self.paths.len() >= CACHE_CAP {
            self.paths.clear();
        }
        self.paths.insert(id, p.clone());
        Some(p)
    }

    /// Rebuild the cache from a walk of the mount (this also drops removed cgroups). Past
    /// CACHE_CAP entries only `wanted` is still recorded.
    fn rescan(&mut self, wanted: u64) {
        self.scans += 1;
        self.last_scan = Some(Instant::now());
        let mut paths = HashMap::new();
        if let Ok(m) = fs::metadata(&self.mount) {
            paths.insert(m.ino(), "/".to_string());
        }
        let mut stack = vec![(self.mount.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue; // removed while we walk
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = format!("{rel}/{}", e.file_name().to_string_lossy());
                // kernfs reports the node id as d_ino, so no stat per cgroup is needed.
                let ino = e.ino();
                if paths.len() < CACHE_CAP || ino == wanted {
                    paths.insert(ino, child.clone());
                }
                stack.push((e.path(), child));
            }
        }
        self.paths = paths;
    }

    /// Everything we can say about cgroup `id`: path, workload, bandwidth, busiest processes.
    pub fn name(&mut self, id: u64) -> CgroupRecord {
        let Some(path) = self.path_of(id) else {
            return CgroupRecord {
                id,
                path: None,
                workload: workload::classify(""),
                processes: Vec::new(),
                period_us: None,
                quota_us: None,
                note: Some(GONE_NOTE.into()),
            };
        };
        let workload = workload::classify(&path);
        let dir = dir_of(&self.mount, &path);
        // A cached path may outlive its cgroup; then only the name is known.
        if fs::metadata(&dir).map(|m| m.ino()).ok() != Some(id) {
            return CgroupRecord {
                id,
                path: Some(path),
                workload,
                processes: Vec::new(),
                period_us: None,
                quota_us: None,
                note: Some(REMOVED_NOTE.into()),
            };
        }
        let (period_us, quota_us) = bandwidth(self.hierarchy.version, &dir);
        CgroupRecord {
            id,
            path: Some(path),
            workload,
            processes: busiest_processes(&dir),
            period_us,
            quota_us,
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadKind;
    use std::process::{Child, Command};

    const HOST_MOUNTINFO: &str = "\
23 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo(HOST_MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            MountInfo {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/cpu".into(),
                fstype: "cgroup".into(),
                super_options: vec!["rw".into(), "cpu".into()],
            }
        );
        // Several optional fields, an escaped space, and a garbage line.
        let m = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 master:3 - cgroup cgroup rw,cpu,cpuacct\n\
             garbage line\n\
             40 25 0:40 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw,nsdelegate\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(m[0].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(m[1].root, "/a b");
        assert_eq!(m[1].mount_point, "/mnt/my cg");
        assert_eq!(m[1].fstype, "cgroup2");
    }

    #[test]
    fn choose_v1_cpu_over_cgroup2() {
        let m = parse_mountinfo(HOST_MOUNTINFO);
        let h = choose_cpu_hierarchy(&m, |_| true).unwrap();
        assert_eq!(
            h,
            CpuHierarchy {
                version: 1,
                mount: "/sys/fs/cgroup/cpu".into()
            }
        );
        // `cpuacct` alone is not `cpu`.
        let only_acct: Vec<MountInfo> = m
            .iter()
            .filter(|x| x.mount_point != "/sys/fs/cgroup/cpu")
            .cloned()
            .collect();
        let h = choose_cpu_hierarchy(&only_acct, |mp| mp == "/sys/fs/cgroup/unified").unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.mount, "/sys/fs/cgroup/unified");
        // cgroup2 without cpu: nothing.
        assert_eq!(choose_cpu_hierarchy(&only_acct, |_| false), None);
    }

    #[test]
    fn choose_cgroup2_only_and_prefer_whole_hierarchy() {
        let m = parse_mountinfo(
            "29 23 0:26 /kubepods/x /host-cg rw - cgroup2 cgroup2 rw\n\
             30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        let h = choose_cpu_hierarchy(&m, |_| true).unwrap();
        assert_eq!((h.version, h.mount.as_str()), (2, "/sys/fs/cgroup"));
        let none = parse_mountinfo("23 1 0:21 / / rw - ext4 /dev/vda1 rw\n");
        assert_eq!(choose_cpu_hierarchy(&none, |_| true), None);
    }

    #[test]
    fn error_message() {
        assert_eq!(
            CgroupFsError::NoCpuHierarchy.to_string(),
            "no cgroup hierarchy with the cpu controller is mounted; mount cgroup2 or the v1 cpu controller"
        );
    }

    #[test]
    fn stat_and_cmdline() {
        let stat = "4242 (my (odd) comm) R 1 4242 4242 0 -1 4194304 100 0 0 0 1500 250 0 0 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(("my (odd) comm".into(), 1750)));
        assert_eq!(parse_stat("12 (x) R 1"), None);
        assert_eq!(
            format_cmdline(b"python\0-m\0worker\0"),
            Some("python -m worker".into())
        );
        assert_eq!(format_cmdline(b""), None);
        let long = vec![b'a'; 1000];
        assert_eq!(format_cmdline(&long).unwrap().chars().count(), CMDLINE_MAX);
    }

    #[test]
    fn bandwidth_parsers() {
        assert_eq!(parse_cpu_max("max 100000\n"), (Some(100000), None));
        assert_eq!(parse_cpu_max("2000 10000\n"), (Some(10000), Some(2000)));
        assert_eq!(parse_v1_quota("-1\n"), None);
        assert_eq!(parse_v1_quota("50000\n"), Some(50000));
    }

    /// A cgroup tree for a test under the real cpu hierarchy, with a `sleep 30` inside;
    /// Drop kills the child and removes the tree even when the test fails.
    struct TestTree {
        mount: PathBuf,
        /// Created directories, parents first.
        dirs: Vec<PathBuf>,
        child: Option<Child>,
    }

    impl TestTree {
        fn mkdir(&mut self, h: &CpuHierarchy, rel: &str) {
            let dir = dir_of(&self.mount, rel);
            if h.version == 2 {
                let parent = dir.parent().unwrap();
                fs::write(parent.join("cgroup.subtree_control"), "+cpu").unwrap();
            }
            fs::create_dir(&dir).unwrap();
            self.dirs.push(dir);
        }
    }

    impl Drop for TestTree {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for d in self.dirs.iter().rev() {
                for _ in 0..50 {
                    if fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    const CONTAINER: &str = "container_e06_1512098667219_988894_01_000020";
    const DOCKER_ID: &str = "4e3f9b2c1a0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    #[test]
    fn names_a_real_cgroup() {
        let h = find_cpu_hierarchy().expect("this host mounts the cpu controller");
        let top = format!("/cfstrace-unit-{}-namer", std::process::id());
        let container = format!("{top}/yarn/{CONTAINER}");
        let docker = format!("{container}/{DOCKER_ID}");
        let mut t = TestTree {
            mount: PathBuf::from(&h.mount),
            dirs: Vec::new(),
            child: None,
        };
        for rel in [
            top.clone(),
            format!("{top}/yarn"),
            container.clone(),
            docker.clone(),
        ] {
            t.mkdir(&h, &rel);
        }
        let cdir = dir_of(&t.mount, &container);
        if h.version == 1 {
            fs::write(cdir.join("cpu.cfs_period_us"), "100000").unwrap();
            fs::write(cdir.join("cpu.cfs_quota_us"), "50000").unwrap();
        } else {
            fs::write(cdir.join("cpu.max"), "50000 100000").unwrap();
        }
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        t.child = Some(child);
        fs::write(
            dir_of(&t.mount, &docker).join("cgroup.procs"),
            pid.to_string(),
        )
        .unwrap();

        let mut namer = CgroupNamer::new(h.clone());
        let id = id_of_path(&h, &container).unwrap();
        let rec = namer.name(id);
        assert_eq!(rec.id, id);
        assert_eq!(rec.path.as_deref(), Some(container.as_str()));
        assert_eq!(rec.note, None);
        assert_eq!(rec.workload.kind, WorkloadKind::Yarn);
        assert_eq!(
            rec.workload.application.as_deref(),
            Some("application_1512098667219_988894")
        );
        assert_eq!(rec.workload.container.as_deref(), Some(CONTAINER));
        assert_eq!((rec.period_us, rec.quota_us), (Some(100000), Some(50000)));
        // The sleep lives in the docker child: a descendant's processes count.
        let p = rec
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .expect("the sleep");
        assert_eq!(p.comm, "sleep");
        assert_eq!(p.cmdline.as_deref(), Some("sleep 30"));
        assert_eq!(namer.scans(), 1);

        // The docker child: same application, no quota of its own; named from the cache.
        let rec = namer.name(id_of_path(&h, &docker).unwrap());
        assert_eq!(rec.path.as_deref(), Some(docker.as_str()));
        assert_eq!(rec.workload.kind, WorkloadKind::Yarn);
        assert_eq!(rec.quota_us, None);
        assert_eq!(rec.period_us, Some(100000));
        assert_eq!(
            rec.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [pid]
        );
        assert_eq!(namer.scans(), 1);

        // The root.
        let root = id_of_path(&h, "/").unwrap();
        assert_eq!(namer.path_of(root).as_deref(), Some("/"));

        // A cgroup made right after a walk is still named, without a second walk.
        t.mkdir(&h, &format!("{top}/late"));
        let late = id_of_path(&h, &format!("{top}/late")).unwrap();
        assert_eq!(namer.path_of(late), Some(format!("{top}/late")));
        assert_eq!(namer.scans(), 1);

        // Unknown ids: named as gone, and a miss storm walks at most once per interval.
        let rec = namer.name(u64::MAX - 7);
        assert_eq!(rec.path, None);
        assert_eq!(rec.note.as_deref(), Some(GONE_NOTE));
        assert_eq!(rec.workload.kind, WorkloadKind::Cgroup);
        let before = namer.scans();
        for i in 0..100 {
            assert_eq!(namer.path_of(u64::MAX - 100 - i), None);
        }
        assert!(namer.scans() <= before + 1);
        std::thread::sleep(RESCAN_INTERVAL);
        assert_eq!(namer.path_of(u64::MAX - 1), None);
        assert!(namer.scans() > before);

        // A cached cgroup removed later keeps its name, flagged.
        let late_dir = t.dirs.pop().unwrap();
        fs::remove_dir(&late_dir).unwrap();
        let rec = namer.name(late);
        assert_eq!(rec.path, Some(format!("{top}/late")));
        assert_eq!(rec.note.as_deref(), Some(REMOVED_NOTE));
    }
}
