//! The built-in throttling storm of `cfstrace demo` (and of tests): cgroups with tight CFS
//! quotas full of busy workers, so every CPU holds throttled cfs_rqs and each cgroup's period
//! timer has unthrottling to do. Everything lives under one parent directory named by the
//! spec's tag, and stop() or Drop removes it.
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::model::records::CpuHierarchy;

pub mod guard;
mod spec;
use spec::validate;
pub use spec::{
    DEMO_PREFIX, INCIDENT_CONTAINER, QuotaWrites, STORM_COMM, STORM_PREFIX, StormCgroup,
    StormShape, StormSpec, WorkerCommand, demo_spec, storm_spec,
};

#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error("bad storm spec: {0}")]
    Spec(String),
    #[error(
        "{0} already exists (a storm with this tag is running, or an earlier one was not cleaned up: rmdir it, children first)"
    )]
    Exists(PathBuf),
    #[error("creating {path}: {}", os_error(source))]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {}", os_error(source))]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("reading {path}: {}", os_error(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("starting worker {program}: {}", os_error(source))]
    Spawn { program: PathBuf, source: io::Error },
    #[error("waiting for worker {pid}: {}", os_error(source))]
    Wait { pid: u32, source: io::Error },
    #[error("removing {path}: {}", os_error(source))]
    RemoveDir { path: PathBuf, source: io::Error },
}

/// `Device or resource busy (EBUSY, os error 16)`: cgroup writes fail with terse errnos whose
/// symbolic name is what people search for.
fn os_error(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ESRCH) => "ESRCH",
        _ => return e.to_string(),
    };
    let text = e.to_string();
    match text.rsplit_once(" (os error") {
        Some((msg, rest)) => format!("{msg} ({name}, os error{rest}"),
        None => format!("{text} ({name})"),
    }
}

/// Check a spec as [`Storm::start`] would, without making anything.
pub fn validate_spec(spec: &StormSpec) -> Result<(), StormError> {
    validate(spec).map(|_| ())
}

/// Counters from a cgroup's `cpu.stat` (v1 and v2 both have them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub nr_periods: u64,
    pub nr_throttled: u64,
    /// v2 `throttled_usec`, or v1 `throttled_time` (ns) / 1000.
    pub throttled_us: u64,
}

pub fn parse_cpu_stat(text: &str) -> CpuStat {
    let mut s = CpuStat::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "nr_periods" => s.nr_periods = v,
            "nr_throttled" => s.nr_throttled = v,
            "throttled_usec" => s.throttled_us = v,
            "throttled_time" => s.throttled_us = v / 1000,
            _ => {}
        }
    }
    s
}

/// Read `<dir>/cpu.stat`.
pub fn cpu_stat(dir: &Path) -> Result<CpuStat, StormError> {
    let path = dir.join("cpu.stat");
    fs::read_to_string(&path)
        .map(|t| parse_cpu_stat(&t))
        .map_err(|source| StormError::Read { path, source })
}

fn write(path: PathBuf, value: &str) -> Result<(), StormError> {
    fs::write(&path, value).map_err(|source| StormError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// A running storm. Dropping it stops it (errors ignored); stop() reports them.
#[derive(Debug)]
pub struct Storm {
    parent: PathBuf,
    /// Directories we made, parents first (removed in reverse).
    created: Vec<PathBuf>,
    /// Worker cgroups, in spec order: absolute, and relative to the hierarchy's root.
    leaves: Vec<PathBuf>,
    leaf_paths: Vec<String>,
    workers: Vec<Child>,
    /// The mount root's cgroup.subtree_control if we had to turn `+cpu` on there (v2).
    root_cpu_enabled: Option<PathBuf>,
    v2: bool,
    /// Cgroups whose quota we wrote and have not lifted yet.
    limited: Vec<PathBuf>,
}

impl Storm {
    /// Make the cgroups, set their quotas, start the workers. `worker` is cfstrace's own
    /// binary (`&Path`: workers run `__spin`) or any [`WorkerCommand`]. On failure,
    /// everything made so far is removed again.
    pub fn start(
        hierarchy: &CpuHierarchy,
        spec: &StormSpec,
        worker: impl Into<WorkerCommand>,
    ) -> Result<Storm, StormError> {
        let worker = worker.into();
        let leaves = validate(spec)?;
        let mount = PathBuf::from(&hierarchy.mount);
        let parent = mount.join(&spec.tag);
        if parent.exists() {
            return Err(StormError::Exists(parent));
        }
        // From here on, an early return drops `storm`, which undoes what it holds.
        let mut storm = Storm {
            parent: parent.clone(),
            created: Vec::new(),
            leaves: Vec::new(),
            leaf_paths: Vec::new(),
            workers: Vec::new(),
            root_cpu_enabled: None,
            v2: hierarchy.version == 2,
            limited: Vec::new(),
        };
        let v2 = storm.v2;
        let mut cpu_enabled: HashSet<PathBuf> = HashSet::new();
        if v2 {
            let control = mount.join("cgroup.subtree_control");
            let on = fs::read_to_string(&control).map_err(|source| StormError::Read {
                path: control.clone(),
                source,
            })?;
            if !on.split_ascii_whitespace().any(|c| c == "cpu") {
                write(control.clone(), "+cpu")?;
                storm.root_cpu_enabled = Some(control);
            }
            cpu_enabled.insert(mount.clone());
        }
        storm.mkdir(&parent)?;
        // Every directory first, so the quota writes below can follow their schedule.
        for comps in &leaves {
            let mut dir = parent.clone();
            for comp in comps {
                // v2: a child only gets cpu.max if its parent enables the controller.
                if v2 && cpu_enabled.insert(dir.clone()) {
                    write(dir.join("cgroup.subtree_control"), "+cpu")?;
                }
                dir.push(comp);
                if !storm.created.contains(&dir) {
                    storm.mkdir(&dir)?;
                }
            }
            storm
                .leaf_paths
                .push(format!("/{}/{}", spec.tag, comps.join("/")));
            storm.leaves.push(dir);
        }
        // Each write starts that cgroup's period timer: back to back, or spread over a period.
        let longest = spec.cgroups.iter().map(|c| c.period_us).max().unwrap_or(0);
        let offsets = spec.writes.offsets(spec.cgroups.len(), longest);
        let first = Instant::now();
        for ((c, dir), at) in spec.cgroups.iter().zip(storm.leaves.clone()).zip(offsets) {
            if let Some(wait) = (first + at).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if v2 {
                write(
                    dir.join("cpu.max"),
                    &format!("{} {}", c.quota_us, c.period_us),
                )?;
            } else {
                // Period first: a fresh cgroup has no quota, so any period is accepted.
                write(dir.join("cpu.cfs_period_us"), &c.period_us.to_string())?;
                write(dir.join("cpu.cfs_quota_us"), &c.quota_us.to_string())?;
            }
            storm.limited.push(dir);
        }
        for (c, dir) in spec.cgroups.iter().zip(storm.leaves.clone()) {
            for _ in 0..c.workers {
                let child =
                    worker
                        .command(&c.comm)
                        .spawn()
                        .map_err(|source| StormError::Spawn {
                            program: worker.program.clone(),
                            source,
                        })?;
                let pid = child.id();
                storm.workers.push(child);
                write(dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(storm)
    }

    fn mkdir(&mut self, dir: &Path) -> Result<(), StormError> {
        fs::create_dir(dir).map_err(|source| StormError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        self.created.push(dir.to_path_buf());
        Ok(())
    }

    /// The storm's parent directory (`<mount>/<tag>`).
    pub fn parent_dir(&self) -> &Path {
        &self.parent
    }

    /// Worker cgroups' directories, in spec order.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// Worker cgroups' paths relative to the hierarchy's root (as the namer reports them).
    pub fn cgroup_paths(&self) -> &[String] {
        &self.leaf_paths
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Child::id).collect()
    }

    /// Kill and reap the workers, remove the cgroups.
    pub fn stop(mut self) -> Result<(), StormError> {
        self.teardown()
    }

    /// The emergency brake, for the guard: every quota lifted (the unlimited value written
    /// back, so no period timer has anything left to unthrottle), then every worker killed
    /// and reaped. The cgroups stay until [`Storm::stop`]. Keeps going past errors and
    /// returns the first; idempotent.
    pub fn relax(&mut self) -> Result<(), StormError> {
        let mut first: Option<StormError> = None;
        for dir in self.limited.drain(..) {
            let lifted = if self.v2 {
                // "max" alone keeps the period and lifts the quota.
                write(dir.join("cpu.max"), "max")
            } else {
                write(dir.join("cpu.cfs_quota_us"), "-1")
            };
            if let Err(e) = lifted
                && !matches!(&e, StormError::Write { source, .. } if source.kind() == io::ErrorKind::NotFound)
            {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.kill_workers() {
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Kill and reap every worker (already exited is fine; wait() still reaps it).
    fn kill_workers(&mut self) -> Result<(), StormError> {
        let mut first: Option<StormError> = None;
        for mut child in self.workers.drain(..) {
            let pid = child.id();
            let _ = child.kill();
            if let Err(source) = child.wait() {
                first.get_or_insert(StormError::Wait { pid, source });
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Idempotent: what it undoes is taken out of `self`. Keeps going past errors and
    /// returns the first.
    fn teardown(&mut self) -> Result<(), StormError> {
        let mut first: Option<StormError> = self.kill_workers().err();
        self.limited.clear();
        // Strays (a worker's own children) would keep the directories busy.
        for dir in &self.created {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: plain syscall; the pid is in a cgroup only we populate.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for dir in self.created.drain(..).rev() {
            if let Err(e) = rmdir_retry(&dir) {
                first.get_or_insert(e);
            }
        }
        self.leaves.clear();
        self.leaf_paths.clear();
        if let Some(control) = self.root_cpu_enabled.take() {
            // Best effort: put the root back as we found it; if someone else started using the
            // controller meanwhile the kernel refuses, which is right.
            let _ = fs::write(control, "-cpu");
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// Remove storms left by a `cfstrace demo` that was killed outright (SIGKILL skips every
/// cleanup): top-level `<prefix><pid>` directories whose pid no longer runs. Returns what was
/// removed; directories still holding processes are left alone and reported as errors.
pub fn remove_stale(hierarchy: &CpuHierarchy, prefix: &str) -> (Vec<PathBuf>, Vec<StormError>) {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = fs::read_dir(&hierarchy.mount) else {
        return (removed, errors);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // its owner is alive: not ours to touch
        }
        match remove_tree(&e.path()) {
            Ok(()) => removed.push(e.path()),
            Err(err) => errors.push(err),
        }
    }
    (removed, errors)
}

/// Post-order rmdir of a cgroup tree (cgroup directories only hold kernel files, which go
/// with their directory).
fn remove_tree(dir: &Path) -> Result<(), StormError> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    rmdir_retry(dir)
}

/// rmdir, retried for about a second: a cgroup whose tasks are still exiting is briefly busy.
fn rmdir_retry(dir: &Path) -> Result<(), StormError> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(StormError::RemoveDir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Body of the hidden `cfstrace __spin --comm NAME` subcommand: a storm worker. Names itself,
/// dies with its parent, and burns CPU forever.
pub fn spin_worker(comm: &str) -> ! {
    // The kernel keeps 15 bytes of a comm; NULs cannot be passed.
    let name: Vec<u8> = comm.bytes().filter(|&b| b != 0).take(15).collect();
    let name = CString::new(name).unwrap_or_default();
    // SAFETY: prctl with a valid NUL-terminated string and plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        // Storm::start sets it before exec too; this covers a worker started by other means.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // PR_SET_NAME names the calling thread; ps and /proc/PID/stat show the main thread's
    // name, so name that too in case we are not on it.
    let _ = fs::write("/proc/self/comm", name.as_bytes());
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cgroups::{self, CgroupNamer};
    use crate::model::workload::WorkloadKind;

    pub(super) fn busy_loop() -> WorkerCommand {
        WorkerCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "while :; do :; done".into(), "{comm}".into()],
        }
    }

    pub(super) fn tiny_spec(name: &str) -> StormSpec {
        StormSpec {
            tag: format!("cfstrace-unit-{}-{name}", std::process::id()),
            cgroups: vec![StormCgroup {
                rel_path: format!("hadoop-yarn/{INCIDENT_CONTAINER}"),
                period_us: 10_000,
                quota_us: 2_000,
                workers: 2,
                comm: "spin".into(),
            }],
            writes: QuotaWrites::Aligned,
        }
    }

    pub(super) fn hierarchy() -> CpuHierarchy {
        cgroups::find_cpu_hierarchy().expect("this host mounts the cpu controller")
    }

    /// A tiny storm of busy loops, started.
    fn tiny_storm(name: &str) -> (Storm, StormSpec) {
        let spec = tiny_spec(name);
        (
            Storm::start(&hierarchy(), &spec, busy_loop()).unwrap(),
            spec,
        )
    }

    #[test]
    fn tiny_storm_throttles_and_cleans_up() {
        let (storm, spec) = tiny_storm("storm");
        let parent = storm.parent_dir().to_path_buf();
        let dirs = storm.cgroup_dirs().to_vec();
        let pids = storm.worker_pids();
        assert_eq!(dirs.len(), 1);
        assert_eq!(pids.len(), 2);
        let expected_path = format!("/{}/hadoop-yarn/{INCIDENT_CONTAINER}", spec.tag);
        assert_eq!(storm.cgroup_paths(), std::slice::from_ref(&expected_path));

        // Workers sit in the leaf, which has the quota.
        let procs = fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
        for pid in &pids {
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} in {procs}"
            );
        }
        let h = hierarchy();
        let mut namer = CgroupNamer::new(h.clone());
        let rec = namer.name(cgroups::id_of_path(&h, &expected_path).unwrap());
        assert_eq!((rec.period_us, rec.quota_us), (Some(10_000), Some(2_000)));
        assert_eq!(rec.workload.kind, WorkloadKind::Yarn);

        let deadline = Instant::now() + Duration::from_secs(5);
        let throttled = loop {
            std::thread::sleep(Duration::from_millis(250));
            let s = cpu_stat(&dirs[0]).unwrap();
            if s.nr_throttled > 0 || Instant::now() > deadline {
                break s;
            }
        };
        assert!(throttled.nr_throttled > 0, "{throttled:?}");

        storm.stop().unwrap();
        assert!(!parent.exists(), "{parent:?} left behind");
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "worker {pid} not reaped"
            );
        }
    }

    #[test]
    fn failed_start_removes_what_it_made() {
        let h = hierarchy();
        let spec = tiny_spec("fail");
        let worker = WorkerCommand {
            program: "/nonexistent/cfstrace-worker".into(),
            args: vec![],
        };
        let err = Storm::start(&h, &spec, worker).unwrap_err();
        assert!(matches!(err, StormError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("ENOENT"), "{err}");
        assert!(!Path::new(&h.mount).join(&spec.tag).exists());
    }

    #[test]
    fn existing_parent_is_refused_and_kept() {
        let h = hierarchy();
        let spec = tiny_spec("exists");
        let parent = Path::new(&h.mount).join(&spec.tag);
        fs::create_dir(&parent).unwrap();
        let err = Storm::start(&h, &spec, busy_loop()).unwrap_err();
        let kept = parent.exists();
        fs::remove_dir(&parent).unwrap();
        assert!(matches!(err, StormError::Exists(_)), "{err}");
        assert!(kept);
    }

    #[test]
    fn relax_lifts_quotas_and_kills_workers_at_once() {
        let (mut storm, _) = tiny_storm("relax");
        let dir = storm.cgroup_dirs()[0].clone();
        let pids = storm.worker_pids();
        storm.relax().unwrap();
        let lifted = match hierarchy().version {
            2 => fs::read_to_string(dir.join("cpu.max"))
                .unwrap()
                .starts_with("max "),
            _ => {
                fs::read_to_string(dir.join("cpu.cfs_quota_us"))
                    .unwrap()
                    .trim()
                    == "-1"
            }
        };
        assert!(lifted, "quota still set in {dir:?}");
        for pid in &pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} alive");
        }
        // The cgroups stay until stop(), and a second relax is harmless.
        assert!(dir.exists());
        storm.relax().unwrap();
        let parent = storm.parent_dir().to_path_buf();
        storm.stop().unwrap();
        assert!(!parent.exists());
    }

    #[test]
    fn drop_stops_the_storm() {
        let (storm, _) = tiny_storm("drop");
        let parent = storm.parent_dir().to_path_buf();
        let pids = storm.worker_pids();
        drop(storm);
        assert!(!parent.exists());
        for pid in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists());
        }
    }

    /// Not a test on its own: the body of the spin workers started by
    /// `spin_worker_names_itself_and_throttles` (this test binary re-executed). Without the
    /// marker argument it returns at once.
    #[test]
    #[ignore = "worker entry point for spin_worker_names_itself_and_throttles"]
    fn spin_entry() {
        if let Some(comm) =
            std::env::args().find_map(|a| a.strip_prefix(SPIN_MARKER).map(String::from))
        {
            spin_worker(&comm);
        }
    }

    const SPIN_MARKER: &str = "cfstrace-spin-as=";

    #[test]
    fn spin_worker_names_itself_and_throttles() {
        let h = hierarchy();
        let mut spec = tiny_spec("spin");
        spec.cgroups[0].comm = "python".into();
        // libtest runs spin_entry on a thread of its own: spin_worker must still name the
        // process.
        let worker = WorkerCommand {
            program: std::env::current_exe().unwrap(),
            args: [
                "--exact",
                "--ignored",
                "--test-threads=1",
                // libtest names tests by their path without the crate.
                &format!(
                    "{}::spin_entry",
                    module_path!().split_once("::").map_or("", |(_, m)| m)
                ),
                &format!("{SPIN_MARKER}{}", WorkerCommand::COMM_PLACEHOLDER),
            ]
            .map(String::from)
            .to_vec(),
        };
        let storm = Storm::start(&h, &spec, worker).unwrap();
        let dir = storm.cgroup_dirs()[0].clone();
        let pids = storm.worker_pids();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let comms: Vec<String> = pids
                .iter()
                .map(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
                .collect();
            let throttled = cpu_stat(&dir).unwrap().nr_throttled;
            if comms.iter().all(|c| c.trim() == "python") && throttled > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "comms {comms:?}, nr_throttled {throttled}"
            );
        }
        storm.stop().unwrap();
        for pid in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists());
        }
    }

    #[test]
    fn stale_storms_of_dead_owners_are_removed() {
        let h = hierarchy();
        // pid 0x7fff_fff0 cannot be running (above pid_max's ceiling).
        let dir = PathBuf::from(&h.mount).join("cfstrace-unit-stale-2147483632");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        let (removed, errors) = remove_stale(&h, "cfstrace-unit-stale-");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(removed, vec![dir.clone()]);
        assert!(!dir.exists());
        // A live owner's storm is kept.
        let live =
            PathBuf::from(&h.mount).join(format!("cfstrace-unit-stale-{}", std::process::id()));
        fs::create_dir_all(&live).unwrap();
        let (removed, _) = remove_stale(&h, "cfstrace-unit-stale-");
        assert!(removed.is_empty());
        fs::remove_dir(&live).unwrap();
    }

    #[test]
    fn cpu_stat_both_versions() {
        let v1 = "nr_periods 12\nnr_throttled 7\nthrottled_time 3000000\nnr_bursts 0\n";
        assert_eq!(
            parse_cpu_stat(v1),
            CpuStat {
                nr_periods: 12,
                nr_throttled: 7,
                throttled_us: 3000
            }
        );
        let v2 = "usage_usec 100\nnr_periods 5\nnr_throttled 4\nthrottled_usec 250\n";
        assert_eq!(
            parse_cpu_stat(v2),
            CpuStat {
                nr_periods: 5,
                nr_throttled: 4,
                throttled_us: 250
            }
        );
    }

    #[test]
    fn errors_name_file_and_errno() {
        let e = StormError::Write {
            path: "/sys/fs/cgroup/x/cpu.max".into(),
            value: "500 1000".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            e.to_string(),
            "writing \"500 1000\" to /sys/fs/cgroup/x/cpu.max: Invalid argument (EINVAL, os error 22)"
        );
    }
}
