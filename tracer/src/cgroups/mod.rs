//! Naming cgroups on a live node: find the hierarchy that holds the cpu controller, map a
//! period timer's cgroup id (the kernfs node id, which is the inode number of the cgroup's
//! directory in that mount, on v1 and v2) to its path, and read its bandwidth settings and
//! busiest processes.
pub mod storm;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::capture::{CgroupRecord, CpuHierarchy, ParentRecord, ProcessInfo};
use crate::model::workload;

#[derive(Debug, thiserror::Error)]
pub enum CgroupFsError {
    #[error(
        "no cgroup hierarchy with the cpu controller is mounted; mount cgroup2 or the v1 cpu controller"
    )]
    NoCpuHierarchy,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Most ids the namer remembers (~100 bytes a path: ~2 MB at most). A name is written to the
/// capture once, and a miss costs one open_by_handle_at where kernfs handles work, so the cache
/// only saves syscalls: past the cap, entries of removed cgroups go first, then the least
/// recently used half.
pub const CACHE_CAP: usize = 16_384;
/// Where a cgroup cannot be looked up by handle, a miss walks the whole mount, at most this
/// often, so a storm of unknown ids (cgroups created and removed faster than we look) costs one
/// walk per interval, not one per event.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// ...and at most 1/WALK_DUTY of the recorder's time: after a walk that took `d`, the next one
/// waits at least `WALK_DUTY * d` (a node with 100k cgroups is not walked 5 times a second).
pub const WALK_DUTY: u32 = 10;
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

/// What a lookup by file handle says about one id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ByHandle {
    /// Its path relative to the mount (`/` for the root).
    Found(String),
    /// The kernel says no such node (ESTALE/ENOENT), it was removed while we looked, or it
    /// lies outside what this mount shows (a cgroup namespace): a walk would not find it either.
    Gone,
    /// Handles do not work here (no CAP_DAC_READ_SEARCH, not kernfs, old kernel) or a transient
    /// error (EMFILE, ENOMEM): only a walk can tell.
    Failed,
}

/// Resolve one id without a walk: kernfs (cgroup v1 and v2 hierarchies) exports file handles
/// that are the node id, so open_by_handle_at + readlink names it. Needs CAP_DAC_READ_SEARCH.
/// `mount_dir` is the mount point, opened once.
fn path_by_handle(mount_dir: &fs::File, mount: &Path, id: u64) -> ByHandle {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
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
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT) => ByHandle::Gone,
            _ => ByHandle::Failed,
        };
    }
    // SAFETY: fd was just returned to us and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let Ok(target) = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return ByHandle::Failed;
    };
    // A node removed after the open reads as "<path> (deleted)" (or its name is already taken
    // by a new cgroup): the path must still lead to this very id.
    if !fs::metadata(&target).is_ok_and(|m| m.ino() == id) {
        return ByHandle::Gone;
    }
    match target.strip_prefix(mount).ok().and_then(|r| r.to_str()) {
        Some(rel) => ByHandle::Found(format!("/{rel}")),
        None => ByHandle::Gone,
    }
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

/// The namer's bounds: how many ids it caches and how often it may walk the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamerLimits {
    /// Most cached ids (at least 2).
    pub cache_cap: usize,
    /// Least time between two walks.
    pub walk_interval: Duration,
    /// After a walk that took `d`, the next waits at least `walk_duty * d`.
    pub walk_duty: u32,
}

impl Default for NamerLimits {
    fn default() -> Self {
        NamerLimits {
            cache_cap: CACHE_CAP,
            walk_interval: RESCAN_INTERVAL,
            walk_duty: WALK_DUTY,
        }
    }
}

/// What the namer did so far, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamerStats {
    /// `path_of` calls.
    pub lookups: u64,
    /// ... answered from the cache.
    pub cache_hits: u64,
    /// ... answered by open_by_handle_at (found).
    pub handle_hits: u64,
    /// ... where the kernel said the id is gone (no walk follows).
    pub handle_gone: u64,
    /// Walks of the whole mount.
    pub walks: u64,
    /// Misses that needed a walk but came inside the rate limit (answered None).
    pub walks_refused: u64,
    /// Entries dropped to keep the cache under its cap, or because their cgroup was removed.
    pub evictions: u64,
    pub cache_len: usize,
    /// Largest the cache has been.
    pub cache_peak: usize,
    pub cache_cap: usize,
    /// Whether lookups by kernfs file handle work on this mount (None: not tried yet).
    pub handles: Option<bool>,
}

/// Whether kernfs file handles work on this mount, found out at the first miss.
enum Handles {
    Untested,
    /// The mount point, opened once for open_by_handle_at.
    Work(fs::File),
    Unsupported,
}

struct CacheEntry {
    path: String,
    /// Tick of the last use; 0 for an entry a walk put in speculatively (evicted first).
    used: u64,
}

/// Names cgroup ids of one cpu hierarchy, caching id -> path.
///
/// A miss is answered by one open_by_handle_at (kernfs handles are the node id) where that
/// works; only where it does not (or fails for another reason than "gone") does the namer walk
/// the mount, rate-limited (NamerLimits), so a burst of unknown ids costs at most one walk per
/// interval. The cache never holds more than `cache_cap` ids: when full, ids whose cgroup was
/// removed go first (their names are in the capture already), then the least recently used.
pub struct CgroupNamer {
    hierarchy: CpuHierarchy,
    mount: PathBuf,
    limits: NamerLimits,
    paths: HashMap<u64, CacheEntry>,
    tick: u64,
    handles: Handles,
    /// Earliest time of the next walk.
    next_walk: Option<Instant>,
    stats: NamerStats,
}

impl CgroupNamer {
    pub fn new(hierarchy: CpuHierarchy) -> Self {
        Self::with_limits(hierarchy, NamerLimits::default())
    }

    pub fn with_limits(hierarchy: CpuHierarchy, limits: NamerLimits) -> Self {
        let mount = PathBuf::from(&hierarchy.mount);
        let limits = NamerLimits {
            cache_cap: limits.cache_cap.max(2),
            ..limits
        };
        CgroupNamer {
            hierarchy,
            mount,
            limits,
            paths: HashMap::new(),
            tick: 0,
            handles: Handles::Untested,
            next_walk: None,
            stats: NamerStats {
                cache_cap: limits.cache_cap,
                ..NamerStats::default()
            },
        }
    }

    pub fn hierarchy(&self) -> &CpuHierarchy {
        &self.hierarchy
    }

    /// Walks of the mount so far (only misses that kernfs handles cannot answer cost one).
    pub fn scans(&self) -> u64 {
        self.stats.walks
    }

    pub fn stats(&self) -> NamerStats {
        NamerStats {
            cache_len: self.paths.len(),
            handles: match self.handles {
                Handles::Untested => None,
                Handles::Work(_) => Some(true),
                Handles::Unsupported => Some(false),
            },
            ..self.stats
        }
    }

    #[cfg(test)]
    fn cached(&self, id: u64) -> bool {
        self.paths.contains_key(&id)
    }

    /// Path of `id` relative to the hierarchy's root (`/` for the root), or None if no such
    /// cgroup exists (it was removed, or is in another hierarchy) or, where only a walk can
    /// name it, the last walk was too recent.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        self.stats.lookups += 1;
        self.tick += 1;
        if let Some(e) = self.paths.get_mut(&id) {
            e.used = self.tick;
            self.stats.cache_hits += 1;
            return Some(e.path.clone());
        }
        match self.by_handle(id) {
            ByHandle::Found(p) => {
                self.stats.handle_hits += 1;
                self.remember(id, p.clone());
                return Some(p);
            }
            ByHandle::Gone => {
                self.stats.handle_gone += 1;
                return None;
            }
            ByHandle::Failed => {}
        }
        if self.next_walk.is_some_and(|t| Instant::now() < t) {
            self.stats.walks_refused += 1;
            return None;
        }
        let p = self.walk(id)?;
        self.remember(id, p.clone());
        Some(p)
    }

    fn by_handle(&mut self, id: u64) -> ByHandle {
        if let Handles::Untested = self.handles {
            // Works iff the root names itself: on anything but kernfs (or without the
            // capability) the same handle fails for every id.
            self.handles = match (fs::File::open(&self.mount), fs::metadata(&self.mount)) {
                (Ok(dir), Ok(m))
                    if path_by_handle(&dir, &self.mount, m.ino())
                        == ByHandle::Found("/".into()) =>
                {
                    Handles::Work(dir)
                }
                _ => Handles::Unsupported,
            };
        }
        match &self.handles {
            Handles::Work(dir) => path_by_handle(dir, &self.mount, id),
            _ => ByHandle::Failed,
        }
    }

    /// Cache `id` -> `path`, making room first when full.
    fn remember(&mut self, id: u64, path: String) {
        if !self.paths.contains_key(&id) && self.paths.len() >= self.limits.cache_cap {
            self.make_room();
        }
        self.paths.insert(
            id,
            CacheEntry {
                path,
                used: self.tick,
            },
        );
        self.stats.cache_peak = self.stats.cache_peak.max(self.paths.len());
    }

    /// Drop the entries of removed cgroups; if that leaves the cache over 3/4 full, keep only
    /// the most recently used half. One stat per entry, at most once per cap/4 insertions.
    fn make_room(&mut self) {
        let before = self.paths.len();
        let mount = &self.mount;
        self.paths
            .retain(|id, e| fs::metadata(dir_of(mount, &e.path)).is_ok_and(|m| m.ino() == *id));
        let cap = self.limits.cache_cap;
        if self.paths.len() > cap * 3 / 4 {
            let mut by_age: Vec<(u64, u64)> =
                self.paths.iter().map(|(id, e)| (e.used, *id)).collect();
            by_age.sort_unstable();
            let drop = by_age.len() - cap / 2;
            for (_, id) in &by_age[..drop] {
                self.paths.remove(id);
            }
        }
        self.stats.evictions += (before - self.paths.len()) as u64;
    }

    /// Walk the whole mount for `wanted`, filling the cache with what it passes while there is
    /// room (so the rest of a burst of new cgroups is answered without another walk).
    fn walk(&mut self, wanted: u64) -> Option<String> {
        let start = Instant::now();
        self.stats.walks += 1;
        let cap = self.limits.cache_cap;
        let mut found = None;
        let mut fill = |paths: &mut HashMap<u64, CacheEntry>, ino: u64, path: &str| {
            if ino == wanted {
                found = Some(path.to_string());
            } else if paths.len() < cap {
                paths.entry(ino).or_insert_with(|| CacheEntry {
                    path: path.to_string(),
                    used: 0,
                });
            }
        };
        if let Ok(m) = fs::metadata(&self.mount) {
            fill(&mut self.paths, m.ino(), "/");
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
                fill(&mut self.paths, e.ino(), &child);
                stack.push((e.path(), child));
            }
        }
        self.stats.cache_peak = self.stats.cache_peak.max(self.paths.len());
        let took = start.elapsed();
        let gap = self.limits.walk_interval.max(took * self.limits.walk_duty);
        self.next_walk = Some(Instant::now() + gap);
        found
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
                parents: None,
            };
        };
        let workload = workload::classify(&path);
        let dir = dir_of(&self.mount, &path);
        // Read now, while the ancestors exist: a record keeps them after they are gone.
        let parents = Some(parents_of(&self.hierarchy, &path));
        // A cached path may outlive its cgroup; then only the name is known, and the entry
        // goes: this record carries the name from now on.
        if fs::metadata(&dir).map(|m| m.ino()).ok() != Some(id) {
            if self.paths.remove(&id).is_some() {
                self.stats.evictions += 1;
            }
            return CgroupRecord {
                id,
                path: Some(path),
                workload,
                processes: Vec::new(),
                period_us: None,
                quota_us: None,
                note: Some(REMOVED_NOTE.into()),
                parents,
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
            parents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::WorkloadKind;
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
        // Named by handle: kernfs handles work here (root, CAP_DAC_READ_SEARCH), no walk.
        assert_eq!(namer.stats().handles, Some(true));
        assert_eq!(namer.scans(), 0);
        // Its parents: `{top}/yarn` and `{top}`, no quota on either.
        let parents = rec.parents.as_ref().expect("parents resolved");
        assert_eq!(
            parents.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
            [format!("{top}/yarn"), top.clone()]
        );
        assert_eq!(parents[0].id, id_of_path(&h, &format!("{top}/yarn")));
        assert!(
            parents
                .iter()
                .all(|p| p.quota_us.is_none() && p.period_us.is_none())
        );

        // The docker child: same application, no quota of its own; named by handle too.
        let rec = namer.name(id_of_path(&h, &docker).unwrap());
        assert_eq!(rec.path.as_deref(), Some(docker.as_str()));
        assert_eq!(rec.workload.kind, WorkloadKind::Yarn);
        assert_eq!(rec.quota_us, None);
        assert_eq!(rec.period_us, Some(100000));
        assert_eq!(
            rec.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [pid]
        );
        assert_eq!(namer.scans(), 0);
        // Its nearest parent is the container, with the container's quota.
        let parents = rec.parents.as_ref().expect("parents resolved");
        assert_eq!(parents.len(), 3);
        assert_eq!(parents[0].path, container);
        assert_eq!(parents[0].id, Some(id));
        assert_eq!(
            (parents[0].period_us, parents[0].quota_us),
            (Some(100000), Some(50000))
        );

        // The root.
        let root = id_of_path(&h, "/").unwrap();
        assert_eq!(namer.path_of(root).as_deref(), Some("/"));

        // A cgroup made just now is named, without a walk; then from the cache.
        t.mkdir(&h, &format!("{top}/late"));
        let late = id_of_path(&h, &format!("{top}/late")).unwrap();
        assert_eq!(namer.path_of(late), Some(format!("{top}/late")));
        let hits = namer.stats().cache_hits;
        assert_eq!(namer.path_of(late), Some(format!("{top}/late")));
        assert_eq!(namer.stats().cache_hits, hits + 1);
        assert_eq!(namer.scans(), 0);

        // Unknown ids: named as gone, and a miss storm never walks (the kernel's ESTALE is
        // final), however long it lasts.
        let rec = namer.name(u64::MAX - 7);
        assert_eq!(rec.path, None);
        assert_eq!(rec.note.as_deref(), Some(GONE_NOTE));
        assert_eq!(rec.workload.kind, WorkloadKind::Cgroup);
        for i in 0..100 {
            assert_eq!(namer.path_of(u64::MAX - 100 - i), None);
        }
        std::thread::sleep(RESCAN_INTERVAL);
        assert_eq!(namer.path_of(u64::MAX - 1), None);
        assert_eq!(namer.scans(), 0);
        assert_eq!(namer.stats().handle_gone, 102);

        // A cached cgroup removed later keeps its name, flagged.
        let late_dir = t.dirs.pop().unwrap();
        fs::remove_dir(&late_dir).unwrap();
        let rec = namer.name(late);
        assert_eq!(rec.path, Some(format!("{top}/late")));
        assert_eq!(rec.note.as_deref(), Some(REMOVED_NOTE));
        // ...and leaves the cache: its record carries the name now.
        assert!(!namer.cached(late));
        assert_eq!(namer.path_of(late), None);
    }

    /// A plain directory tree in a temp dir, standing in for a cgroup mount: ids are inode
    /// numbers, and kernfs handles do not work on it, so the namer falls back to walks.
    /// "Removed" directories are moved out to a graveyard beside it, so their inode numbers
    /// are not reused (kernfs ids never are, on 64-bit).
    struct FakeTree {
        root: PathBuf,
        graveyard: PathBuf,
    }

    impl FakeTree {
        fn new(name: &str) -> FakeTree {
            let root =
                std::env::temp_dir().join(format!("cfstrace-namer-{}-{name}", std::process::id()));
            let graveyard = root.with_extension("graveyard");
            for d in [&root, &graveyard] {
                let _ = fs::remove_dir_all(d);
                fs::create_dir_all(d).unwrap();
            }
            FakeTree { root, graveyard }
        }

        fn hierarchy(&self) -> CpuHierarchy {
            CpuHierarchy {
                version: 2,
                mount: self.root.to_str().unwrap().into(),
            }
        }

        /// mkdir `rel` (e.g. `/a/b`), returning its id.
        fn add(&self, rel: &str) -> u64 {
            let dir = dir_of(&self.root, rel);
            fs::create_dir_all(&dir).unwrap();
            fs::metadata(&dir).unwrap().ino()
        }

        fn remove(&self, rel: &str) {
            let dir = dir_of(&self.root, rel);
            let ino = fs::metadata(&dir).unwrap().ino();
            fs::rename(&dir, self.graveyard.join(ino.to_string())).unwrap();
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
            let _ = fs::remove_dir_all(&self.graveyard);
        }
    }

    fn limits(cache_cap: usize, walk_interval: Duration) -> NamerLimits {
        NamerLimits {
            cache_cap,
            walk_interval,
            walk_duty: 0,
        }
    }

    #[test]
    fn walk_fallback_is_rate_limited() {
        let t = FakeTree::new("rate");
        let ids: Vec<(u64, String)> = (0..20)
            .map(|i| {
                let rel = format!("/g{}/c{i}", i % 3);
                (t.add(&rel), rel)
            })
            .collect();
        // One walk allowed per hour.
        let mut namer =
            CgroupNamer::with_limits(t.hierarchy(), limits(1000, Duration::from_secs(3600)));
        for (id, rel) in &ids {
            assert_eq!(namer.path_of(*id).as_deref(), Some(rel.as_str()));
        }
        let s = namer.stats();
        assert_eq!(s.handles, Some(false), "a plain directory is not kernfs");
        // The first miss walked and cached the whole (small) tree: the rest were hits.
        assert_eq!(s.walks, 1);
        assert_eq!(s.cache_hits, 19);
        assert_eq!(s.cache_len, 1 + 3 + 20);
        let root = fs::metadata(&t.root).unwrap().ino();
        assert_eq!(namer.path_of(root).as_deref(), Some("/"));

        // A burst of unknown ids (and a cgroup made after the walk) inside the interval: no
        // walk at all, each miss is refused.
        let young = t.add("/young");
        assert_eq!(namer.path_of(young), None);
        for i in 0..1000 {
            assert_eq!(namer.path_of(u64::MAX - i), None);
        }
        let s = namer.stats();
        assert_eq!(s.walks, 1);
        assert_eq!(s.walks_refused, 1001);

        // Past the interval the next miss walks again (once) and finds the young cgroup.
        let mut namer =
            CgroupNamer::with_limits(t.hierarchy(), limits(1000, Duration::from_millis(50)));
        assert_eq!(namer.path_of(u64::MAX), None);
        let younger = t.add("/younger");
        assert_eq!(namer.path_of(younger), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(namer.path_of(younger).as_deref(), Some("/younger"));
        assert_eq!(namer.path_of(young).as_deref(), Some("/young"));
        assert_eq!(namer.scans(), 2);
    }

    #[test]
    fn walk_gap_grows_with_walk_cost() {
        let t = FakeTree::new("duty");
        for i in 0..200 {
            t.add(&format!("/d{i}"));
        }
        let mut namer = CgroupNamer::with_limits(
            t.hierarchy(),
            NamerLimits {
                cache_cap: 16,
                walk_interval: Duration::ZERO,
                walk_duty: 1_000_000,
            },
        );
        assert_eq!(namer.path_of(u64::MAX), None);
        // The walk took some microseconds: a million times that is seconds.
        for i in 0..100 {
            assert_eq!(namer.path_of(u64::MAX - 1 - i), None);
        }
        assert_eq!(namer.scans(), 1);
        assert_eq!(namer.stats().walks_refused, 100);
    }

    #[test]
    fn cache_drops_removed_cgroups_first_then_least_recently_used() {
        let t = FakeTree::new("evict");
        let root = fs::metadata(&t.root).unwrap().ino();
        // Root + a0..a6: exactly the cap.
        let a: Vec<u64> = (0..7).map(|i| t.add(&format!("/a{i}"))).collect();
        let mut namer = CgroupNamer::with_limits(t.hierarchy(), limits(8, Duration::ZERO));
        assert_eq!(namer.path_of(a[0]).as_deref(), Some("/a0"));
        assert_eq!(namer.stats().cache_len, 8);
        for (i, id) in a.iter().enumerate() {
            assert_eq!(namer.path_of(*id), Some(format!("/a{i}")));
        }
        assert_eq!(namer.scans(), 1);

        // Two removed, one new: room is made by dropping exactly the removed ones.
        t.remove("/a0");
        t.remove("/a1");
        let b0 = t.add("/b0");
        assert_eq!(namer.path_of(b0).as_deref(), Some("/b0"));
        let s = namer.stats();
        assert_eq!((s.evictions, s.cache_len), (2, 7));
        assert!(!namer.cached(a[0]) && !namer.cached(a[1]));
        assert!(a[2..].iter().all(|id| namer.cached(*id)) && namer.cached(root));

        // All live now: the least recently used go (root and c1, never used, then a2, a3),
        // down to half the cap before the new one.
        for id in a[2..].iter().chain([&b0]) {
            namer.path_of(*id).unwrap();
        }
        let c0 = t.add("/c0");
        let c1 = t.add("/c1");
        assert_eq!(namer.path_of(c0).as_deref(), Some("/c0"));
        let s = namer.stats();
        assert_eq!((s.evictions, s.cache_len, s.cache_peak), (6, 5, 8));
        for gone in [root, c1, a[2], a[3]] {
            assert!(!namer.cached(gone), "{gone}");
        }
        for kept in [a[4], a[5], a[6], b0, c0] {
            assert!(namer.cached(kept), "{kept}");
        }
        assert_eq!(namer.scans(), 3);
    }

    #[test]
    fn cache_stays_bounded_under_churn() {
        let t = FakeTree::new("churn");
        let mut namer = CgroupNamer::with_limits(t.hierarchy(), limits(16, Duration::ZERO));
        let mut live = std::collections::VecDeque::new();
        for i in 0..500 {
            let rel = format!("/churn/c{i}");
            let id = t.add(&rel);
            assert_eq!(namer.path_of(id), Some(rel.clone()), "{i}");
            assert_eq!(namer.path_of(id), Some(rel.clone()), "{i}");
            live.push_back(rel);
            if live.len() > 10 {
                t.remove(&live.pop_front().unwrap());
            }
            let s = namer.stats();
            assert!(s.cache_len <= 16, "{s:?}");
        }
        let s = namer.stats();
        assert!(s.cache_peak <= 16, "{s:?}");
        assert!(s.evictions >= 500 - 16, "{s:?}");
        // Every second lookup of an id was a hit.
        assert!(s.cache_hits >= 500, "{s:?}");
    }

    /// Real cgroups, made and removed in waves: every one is named by handle the moment it
    /// exists, no walk ever happens, and the cache never passes its cap.
    #[test]
    fn names_real_cgroups_under_churn_by_handle() {
        let h = find_cpu_hierarchy().expect("this host mounts the cpu controller");
        let top = format!("/cfstrace-unit-{}-churn", std::process::id());
        let mut t = TestTree {
            mount: PathBuf::from(&h.mount),
            dirs: Vec::new(),
            child: None,
        };
        t.mkdir(&h, &top);
        let cap = 64;
        let mut namer = CgroupNamer::with_limits(h.clone(), limits(cap, RESCAN_INTERVAL));
        let mut named = Vec::new();
        for wave in 0..3 {
            let mut ids = Vec::new();
            for i in 0..100 {
                let rel = format!("{top}/w{wave}-{i}");
                t.mkdir(&h, &rel);
                let id = id_of_path(&h, &rel).unwrap();
                assert_eq!(namer.path_of(id), Some(rel.clone()));
                ids.push((id, rel));
            }
            // Remove the wave (ours are the last dirs pushed).
            for _ in 0..100 {
                fs::remove_dir(t.dirs.pop().unwrap()).unwrap();
            }
            named.extend(ids);
            assert!(namer.stats().cache_len <= cap, "{:?}", namer.stats());
        }
        // Gone: an id still cached answers with its old name, the others are gone; never a
        // walk, whatever the burst.
        for (id, rel) in &named {
            if let Some(p) = namer.path_of(*id) {
                assert_eq!(&p, rel);
            }
        }
        let s = namer.stats();
        assert_eq!(s.handles, Some(true));
        assert_eq!(s.walks, 0, "{s:?}");
        assert_eq!(s.handle_hits, 300, "{s:?}");
        assert!(s.cache_peak <= cap && s.evictions > 0, "{s:?}");
    }
}
