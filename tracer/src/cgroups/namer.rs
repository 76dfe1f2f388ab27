//! Names cgroup ids of one cpu hierarchy, caching id -> path, with bounded memory and
//! rate-limited walks where file handles do not work.
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::containers::ContainerNames;
use super::handles::{ByHandle, path_by_handle};
use super::hierarchy::dir_of;
use super::processes::busiest_processes;
use super::settings::{bandwidth, parents_of};
use super::{CACHE_CAP, GONE_NOTE, REMOVED_NOTE, RESCAN_INTERVAL, WALK_DUTY};
use crate::model::escape::os_str;
use crate::model::records::{CgroupFacts, CgroupRecord, CpuHierarchy};
use crate::model::workload;

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
    /// Container and pod names from the runtimes' state files.
    containers: ContainerNames,
    /// Read the processes' command lines (off with `--no-cmdline`: comm only).
    cmdlines: bool,
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
            containers: ContainerNames::default(),
            cmdlines: true,
            stats: NamerStats {
                cache_cap: limits.cache_cap,
                ..NamerStats::default()
            },
        }
    }

    /// Leave the processes' command lines out (`--no-cmdline`): they can hold secrets, and a
    /// capture may be shared outside the team. Their comm is kept.
    pub fn without_cmdlines(mut self, without: bool) -> Self {
        self.cmdlines = !without;
        self
    }

    /// Read container and pod names from these runtimes' state (tests; default: the node's).
    pub fn with_container_names(mut self, containers: ContainerNames) -> Self {
        self.containers = containers;
        self
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
                let child = format!("{rel}/{}", os_str(&e.file_name()));
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
                facts: CgroupFacts::unnamed(id),
                note: Some(GONE_NOTE.into()),
                parents: None,
            };
        };
        let mut workload = workload::classify(&path);
        self.containers.add_names(&mut workload);
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
                facts: CgroupFacts {
                    path: Some(path),
                    workload,
                    ..CgroupFacts::unnamed(id)
                },
                note: Some(REMOVED_NOTE.into()),
                parents,
            };
        }
        let (period_us, quota_us) = bandwidth(self.hierarchy.version, &dir);
        CgroupRecord {
            facts: CgroupFacts {
                id,
                path: Some(path),
                workload,
                processes: busiest_processes(&dir, self.cmdlines),
                period_us,
                quota_us,
            },
            note: None,
            parents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{find_cpu_hierarchy, id_of_path};
    use crate::model::workload::WorkloadKind;
    use std::process::{Child, Command};

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
        // `--no-cmdline`: the same process, comm only.
        let bare = CgroupNamer::new(h.clone()).without_cmdlines(true).name(id);
        let p = bare.processes.iter().find(|p| p.pid == pid).expect("sleep");
        assert_eq!((p.comm.as_str(), p.cmdline.as_deref()), ("sleep", None));
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
        /// Holds both; removed on drop.
        _dir: tempfile::TempDir,
    }

    impl FakeTree {
        fn new(name: &str) -> FakeTree {
            let dir = tempfile::Builder::new()
                .prefix(&format!("cfstrace-namer-{name}-"))
                .tempdir()
                .unwrap();
            let (root, graveyard) = (dir.path().join("root"), dir.path().join("graveyard"));
            for d in [&root, &graveyard] {
                fs::create_dir_all(d).unwrap();
            }
            FakeTree {
                root,
                graveyard,
                _dir: dir,
            }
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
