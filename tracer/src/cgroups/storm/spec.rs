//! What a storm is made of: its cgroups, their quotas and workers, the demo's preset, and the
//! checks that keep a spec inside its parent directory.
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::StormError;

/// What to make: cgroups under `<mount>/<tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormSpec {
    pub cgroups: Vec<StormCgroup>,
    /// Name of the parent directory, unique per run (e.g. `cfstrace-demo-<pid>`).
    pub tag: String,
    /// How the quotas are written (see [`QuotaWrites`]).
    pub writes: QuotaWrites,
}

/// How a storm writes its quotas. Each write starts (or restarts) that cgroup's period timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaWrites {
    /// Back to back, once every cgroup exists: the timers start together.
    #[default]
    Aligned,
    /// Spread evenly across one period (the longest in the spec): the i-th of n written
    /// i/n of a period after the first.
    Staggered,
}

impl QuotaWrites {
    /// When each of `n` quotas is written, from the first write.
    pub fn offsets(self, n: usize, period_us: u64) -> Vec<Duration> {
        (0..n)
            .map(|i| match self {
                QuotaWrites::Aligned => Duration::ZERO,
                QuotaWrites::Staggered => {
                    Duration::from_micros(period_us * i as u64 / n.max(1) as u64)
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormCgroup {
    /// Under the storm's parent; may be nested (`hadoop-yarn/container_e06_..._000020`).
    pub rel_path: String,
    pub period_us: u64,
    pub quota_us: u64,
    /// Busy processes put in this cgroup.
    pub workers: usize,
    /// Their command name (what `ps` and the report show).
    pub comm: String,
}

/// The cgroup that mirrors the incident's.
pub const INCIDENT_CONTAINER: &str = "container_e06_1512098667219_988894_01_000020";
const DEMO_POD_UID: &str = "3f1c2a8e-6b7d-4e59-9a1c-0d2e4f6a8b90";
const DEMO_CONTAINER_ID: &str = "9d2b6c1e4f3a5b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

/// The demo's storm for a machine of `ncpus` CPUs. The YARN container is built to be the
/// worst period timer: shortest period (most callbacks) and twice as many runnable workers as
/// CPUs under a tight quota (a throttled cfs_rq on every CPU, two tasks each, to unthrottle
/// each period). Quotas add up to half the machine, so it stays usable.
/// Demo storms live in `<mount>/cfstrace-demo-<pid>`.
pub const DEMO_PREFIX: &str = "cfstrace-demo-";

/// `cfstrace storm` storms live in `<mount>/cfstrace-storm-<pid>`.
pub const STORM_PREFIX: &str = "cfstrace-storm-";

/// The shape of a `cfstrace storm`: `cgroups` cgroups of `threads` busy workers each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormShape {
    pub cgroups: usize,
    pub threads: usize,
    pub period_us: u64,
    pub quota_us: u64,
    /// 1: the cgroups sit right under the storm's parent; D: under D-1 shared intermediate
    /// cgroups (`n1/n2/.../cg0007`), which get no quota of their own, so the storm has
    /// exactly `cgroups` period timers.
    pub depth: usize,
    pub writes: QuotaWrites,
}

/// The workers' command name (what `ps` and the report show).
pub const STORM_COMM: &str = "cfstrace-storm";

/// A `cfstrace storm`'s spec: generated names only (`cg0001`, `n1`), so no name from outside
/// reaches the hierarchy.
pub fn storm_spec(shape: &StormShape) -> StormSpec {
    let width = shape.cgroups.saturating_sub(1).to_string().len().max(4);
    let parents: String = (1..shape.depth.max(1)).map(|d| format!("n{d}/")).collect();
    StormSpec {
        tag: format!("{STORM_PREFIX}{}", std::process::id()),
        writes: shape.writes,
        cgroups: (0..shape.cgroups)
            .map(|i| StormCgroup {
                rel_path: format!("{parents}cg{i:0width$}"),
                period_us: shape.period_us,
                quota_us: shape.quota_us,
                workers: shape.threads,
                comm: STORM_COMM.into(),
            })
            .collect(),
    }
}

pub fn demo_spec(ncpus: u32) -> StormSpec {
    let n = u64::from(ncpus.max(1));
    let workers = ncpus.max(1) as usize;
    // `share` of the whole machine per period, but never below the kernel's 1 ms minimum.
    let quota =
        |period_us: u64, share_percent: u64| (n * period_us * share_percent / 100).max(1000);
    StormSpec {
        tag: format!("{DEMO_PREFIX}{}", std::process::id()),
        writes: QuotaWrites::Aligned,
        cgroups: vec![
            StormCgroup {
                rel_path: format!("hadoop-yarn/{INCIDENT_CONTAINER}"),
                period_us: 5_000,
                quota_us: quota(5_000, 20),
                workers: 2 * workers,
                comm: "python".into(),
            },
            StormCgroup {
                rel_path: format!("kubepods/burstable/pod{DEMO_POD_UID}/{DEMO_CONTAINER_ID}"),
                period_us: 10_000,
                quota_us: quota(10_000, 20),
                workers,
                comm: "java".into(),
            },
            StormCgroup {
                rel_path: "batch.slice/etl.service".into(),
                period_us: 20_000,
                quota_us: quota(20_000, 10),
                workers: (workers / 2).max(1),
                comm: "etl".into(),
            },
        ],
    }
}

/// How to start one worker. `{comm}` in the arguments is replaced by the cgroup's comm.
/// A bare path (`&Path`, `&PathBuf`) converts to [`WorkerCommand::spin`] of that binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl From<&Path> for WorkerCommand {
    fn from(exe: &Path) -> Self {
        WorkerCommand::spin(exe)
    }
}

impl From<&PathBuf> for WorkerCommand {
    fn from(exe: &PathBuf) -> Self {
        WorkerCommand::spin(exe)
    }
}

impl From<&WorkerCommand> for WorkerCommand {
    fn from(w: &WorkerCommand) -> Self {
        w.clone()
    }
}

impl WorkerCommand {
    pub const COMM_PLACEHOLDER: &str = "{comm}";

    /// `<exe> __spin --comm {comm}`: cfstrace's own busy loop (see [`spin_worker`]).
    pub fn spin(exe: &Path) -> Self {
        WorkerCommand {
            program: exe.to_path_buf(),
            args: ["__spin", "--comm", Self::COMM_PLACEHOLDER]
                .map(String::from)
                .to_vec(),
        }
    }

    pub(super) fn command(&self, comm: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(
            self.args
                .iter()
                .map(|a| a.replace(Self::COMM_PLACEHOLDER, comm)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let parent = std::process::id();
        // SAFETY: only async-signal-safe syscalls, no allocation, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Busy loops must not outlive us, whatever the worker program is. The signal
                // comes when the *thread* that spawned us exits: start and stop a storm from
                // one long-lived thread.
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // We may have been orphaned before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Path components of a spec path, refusing anything that would leave the storm's parent.
pub(super) fn components(rel: &str) -> Result<Vec<&str>, StormError> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() || comps.iter().any(|c| *c == "." || *c == "..") {
        return Err(StormError::Spec(format!(
            "cgroup path {rel:?} must name a directory below the storm's parent"
        )));
    }
    Ok(comps)
}

pub(super) fn validate(spec: &StormSpec) -> Result<Vec<Vec<&str>>, StormError> {
    let bad = |m: String| Err(StormError::Spec(m));
    if spec.tag.is_empty() || spec.tag.contains('/') || spec.tag == "." || spec.tag == ".." {
        return bad(format!("tag {:?} must be a plain directory name", spec.tag));
    }
    let mut leaves = Vec::new();
    for c in &spec.cgroups {
        let comps = components(&c.rel_path)?;
        // The kernel's limits (1 ms minimum period and quota, 1 s maximum period).
        if !(1_000..=1_000_000).contains(&c.period_us) {
            return bad(format!(
                "{}: period {} us is outside 1000..=1000000",
                c.rel_path, c.period_us
            ));
        }
        if c.quota_us < 1_000 {
            return bad(format!(
                "{}: quota {} us is below 1000",
                c.rel_path, c.quota_us
            ));
        }
        leaves.push(comps);
    }
    // cgroup v2 keeps processes in leaves only, so no worker cgroup may contain another.
    for (i, a) in leaves.iter().enumerate() {
        for b in leaves.iter().skip(i + 1) {
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                return bad(format!(
                    "{} and {} nest or repeat; worker cgroups must be distinct leaves",
                    a.join("/"),
                    b.join("/")
                ));
            }
        }
    }
    Ok(leaves)
}

#[cfg(test)]
mod tests {
    use super::super::tests::tiny_spec;
    use super::*;
    use crate::model::workload::{WorkloadKind, classify};

    #[test]
    fn demo_spec_makes_yarn_the_worst() {
        for ncpus in [1, 2, 48, 384] {
            let spec = demo_spec(ncpus);
            assert!(spec.tag.starts_with("cfstrace-demo-"));
            validate(&spec).unwrap();
            let yarn = &spec.cgroups[0];
            assert_eq!(yarn.comm, "python");
            assert_eq!(yarn.workers, 2 * ncpus as usize);
            for other in &spec.cgroups[1..] {
                assert!(yarn.period_us < other.period_us);
                assert!(yarn.workers > other.workers);
            }
            // Throttled: the quota is well below what the workers want.
            for c in &spec.cgroups {
                assert!(c.quota_us >= 1000);
                assert!(c.quota_us < c.period_us * c.workers as u64 / 2, "{c:?}");
            }
            let kinds: Vec<WorkloadKind> = spec
                .cgroups
                .iter()
                .map(|c| classify(&format!("/{}/{}", spec.tag, c.rel_path)).kind)
                .collect();
            assert_eq!(
                kinds,
                [
                    WorkloadKind::Yarn,
                    WorkloadKind::Kubernetes,
                    WorkloadKind::Systemd
                ]
            );
        }
        let w = classify(&format!("/x/{}", demo_spec(2).cgroups[0].rel_path));
        assert_eq!(
            w.application.as_deref(),
            Some("application_1512098667219_988894")
        );
    }

    fn shape(cgroups: usize, depth: usize, writes: QuotaWrites) -> StormShape {
        StormShape {
            cgroups,
            threads: 3,
            period_us: 5_000,
            quota_us: 1_000,
            depth,
            writes,
        }
    }

    #[test]
    fn storm_spec_names_and_nests() {
        let s = storm_spec(&shape(3, 1, QuotaWrites::Aligned));
        assert!(s.tag.starts_with(STORM_PREFIX));
        let paths: Vec<&str> = s.cgroups.iter().map(|c| c.rel_path.as_str()).collect();
        assert_eq!(paths, ["cg0000", "cg0001", "cg0002"]);
        assert!(s.cgroups.iter().all(|c| c.workers == 3
            && c.period_us == 5_000
            && c.quota_us == 1_000
            && c.comm == STORM_COMM));
        validate(&s).unwrap();
        // Depth 3: two shared parents above every leaf.
        let s = storm_spec(&shape(2, 3, QuotaWrites::Staggered));
        let paths: Vec<&str> = s.cgroups.iter().map(|c| c.rel_path.as_str()).collect();
        assert_eq!(paths, ["n1/n2/cg0000", "n1/n2/cg0001"]);
        assert_eq!(s.writes, QuotaWrites::Staggered);
        assert_eq!(validate(&s).unwrap()[1], ["n1", "n2", "cg0001"]);
        // Depth 0 is taken as 1; wide storms get wider names, still sorted.
        assert_eq!(
            storm_spec(&shape(1, 0, QuotaWrites::Aligned)).cgroups[0].rel_path,
            "cg0000"
        );
        let wide = storm_spec(&shape(12_000, 1, QuotaWrites::Aligned));
        assert_eq!(wide.cgroups[11_999].rel_path, "cg11999");
        assert_eq!(wide.cgroups[7].rel_path, "cg00007");
    }

    #[test]
    fn quota_write_schedules() {
        let ms = Duration::from_millis;
        assert_eq!(QuotaWrites::Aligned.offsets(3, 5_000), [Duration::ZERO; 3]);
        // Four writes across a 4 ms period: one every millisecond, the last before it ends.
        assert_eq!(
            QuotaWrites::Staggered.offsets(4, 4_000),
            [ms(0), ms(1), ms(2), ms(3)]
        );
        assert_eq!(QuotaWrites::Staggered.offsets(1, 4_000), [ms(0)]);
        assert!(QuotaWrites::Staggered.offsets(0, 4_000).is_empty());
    }

    #[test]
    fn spec_validation() {
        let mut s = tiny_spec("v");
        s.cgroups[0].quota_us = 999;
        assert!(matches!(validate(&s), Err(StormError::Spec(_))));
        let mut s = tiny_spec("v");
        s.cgroups[0].rel_path = "../escape".into();
        assert!(validate(&s).is_err());
        let mut s = tiny_spec("v");
        s.tag = "a/b".into();
        assert!(validate(&s).is_err());
        let mut s = tiny_spec("v");
        let mut nested = s.cgroups[0].clone();
        nested.rel_path = format!("{}/child", nested.rel_path);
        s.cgroups.push(nested);
        assert!(validate(&s).is_err());
        let mut s = tiny_spec("v");
        let mut sibling = s.cgroups[0].clone();
        sibling.rel_path = "hadoop-yarn/other".into();
        s.cgroups.push(sibling);
        assert!(validate(&s).is_ok());
    }
}
