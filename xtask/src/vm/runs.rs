//! `cargo xtask vm`'s boots: the accelerator (KVM where it works, else TCG), each boot's time
//! limits, and one kernel's boots with their retries (a boot flake before cfstrace ran, a
//! suspected emulation artefact after), each run handed to [`super::judge`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use cfstrace_tests::expect::Facts;

use super::boot::{Boot, Engine, Limits, Machine, WALL_BACKSTOP, Watch, run};
use super::console::{Console, GuestRun, analyze, emulation_suspect, excerpt, kernel_problem};
use super::guest::{FINDINGS_RUN, M_INIT};
use super::judge::{self, Outcome};
use super::kernels::{self, Kernel};
use super::{Accel, Job, VmArgs};

/// The accelerator actually used (decided on the first boot: KVM, else TCG).
static KVM_WORKS: OnceLock<bool> = OnceLock::new();
/// A KVM guest that has not reached /init by then is stuck (seen under nested virtualisation,
/// where TCG reaches /init in about 4 s): kill it and use TCG. Wall time, and no verdict: it
/// only chooses the accelerator (a slow KVM boot costs a TCG boot, never a failure).
const KVM_INIT_DEADLINE: Duration = Duration::from_secs(20);

/// A guest silent this long is hung (doctor's 20 attach cycles print nothing for up to ~3 min
/// under TCG on the 7.x kernel; the recorder prints every second). Counted in the guest's
/// progress (qemu's CPU time, see [`super::boot`]), not wall time: on a loaded host those 3 minutes
/// of emulation take longer, and a wall-clock limit would call a slow guest hung.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(300);

pub fn kvm_decided() -> bool {
    KVM_WORKS.get().copied().unwrap_or(false)
}

fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boot a VM test guest (2 vCPUs, 1 GiB) with kernel parameters `extra`: KVM where it works
/// (`--accel`), else TCG.
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    extra: &str,
    log: &Path,
    timeout: Duration,
    args: &VmArgs,
) -> Result<Boot> {
    let try_kvm = match args.accel {
        Accel::Tcg => false,
        Accel::Kvm => true,
        Accel::Auto => *KVM_WORKS.get().unwrap_or(&kvm_usable()),
    };
    let tcg = if args.mttcg {
        Engine::Mttcg
    } else {
        Engine::Tcg
    };
    let m = |engine| Machine {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        cpus: 2,
        mem_mb: 1024,
        append: extra,
        engine,
    };
    let w = guest_watch(
        log,
        timeout,
        (args.accel == Accel::Auto).then_some(KVM_INIT_DEADLINE),
    );
    if !try_kvm {
        return run(&m(tcg), &w);
    }
    let b = run(&m(Engine::Kvm), &w)?;
    let kvm_failed = b.lines.is_empty()
        && b.exit.is_some_and(|s| !s.success())
        && b.stderr.to_ascii_lowercase().contains("kvm");
    if !(kvm_failed || b.kvm_hung) || args.accel == Accel::Kvm {
        let _ = KVM_WORKS.set(true);
        return Ok(b);
    }
    if b.kvm_hung {
        println!(
            "qemu: the KVM guest did not reach /init in {}s (nested KVM?); falling back to TCG",
            KVM_INIT_DEADLINE.as_secs()
        );
    } else {
        println!(
            "qemu: KVM failed ({}); falling back to TCG",
            b.stderr.trim()
        );
    }
    let _ = KVM_WORKS.set(false);
    run(&m(tcg), &w)
}

/// How a VM test guest is watched: its time limit, the silence limit, our /init's marker.
fn guest_watch(log: &Path, timeout: Duration, kvm_init_deadline: Option<Duration>) -> Watch<'_> {
    Watch {
        log,
        limits: Limits {
            timeout,
            silence: SILENCE_LIMIT,
            wall_factor: WALL_BACKSTOP,
        },
        init_marker: M_INIT,
        idle_line: Watch::never,
        echo: Watch::never,
        cancelled: Watch::not_cancelled,
        kvm_init_deadline,
    }
}

/// Per-boot limit: boot + facts + per backend doctor (20 attach cycles) and an 8 s record,
/// plus the co-firing storm (setting up its cgroups, record, report, digest). Like
/// [`SILENCE_LIMIT`], counted in the guest's progress (see [`super::boot`]), so a host busy with
/// other work slows the guest without failing it.
pub fn boot_timeout(args: &VmArgs, backends: usize, cofire: bool, kvm: bool) -> Duration {
    if let Some(t) = args.timeout {
        return Duration::from_secs(t);
    }
    let per = if kvm { 120 } else { 360 };
    let storm = match (cofire, kvm) {
        (false, _) => 0,
        (true, true) => 120,
        (true, false) => 300,
    };
    Duration::from_secs(60 + per * backends as u64 + storm)
}

/// The storm ramps' share of a boot's limit (two ramps of four 3 s steps under TCG).
const STORM_TIME: Duration = Duration::from_secs(300);

/// The comparisons' boot: three 5 s records and their reports, and two diffs, on 1 vCPU whose
/// clock counts instructions (about 2.5 min of emulation).
const DIFF_TIME: Duration = Duration::from_secs(600);

/// `cfstrace diff` in a boot of its own ([`super::guest::DIFF_SUITE`]): one storm recorded in
/// three phases, compared twice (see `init_diff`). 1 vCPU under TCG with the guest's clock
/// counted in instructions ([`Engine::TcgIcount`], even where KVM works), so each capture's
/// spans are its work's, not the host's stalls: the fix's fall is then the kernel's, and a
/// rerun gives the same figures within a few per cent.
pub fn run_diff(kernel: &Kernel, initrd: &Path) -> Outcome {
    let log = kernels::suite_dir(&kernel.suite).join("console-diff.log");
    let params =
        "cfstrace.backends= cfstrace.findings=0 cfstrace.cofire=0 cfstrace.storm=0 cfstrace.diff=1";
    let m = Machine {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        cpus: 1,
        mem_mb: 1024,
        append: params,
        engine: Engine::TcgIcount,
    };
    let w = guest_watch(&log, DIFF_TIME, None);
    let b = run(&m, &w);
    if let Ok(b) = &b {
        println!(
            "{}: diff boot: tcg icount, 1 vCPU, init {}, total {} (console: {})",
            kernel.suite,
            b.t_init.map_or("-".into(), secs),
            secs(b.total),
            log.display()
        );
    }
    judge::judge_diff(kernel, b)
}

/// `cargo xtask soak`'s guest: only the soak (see [`crate::soak::init_soak`]) for `seconds`,
/// on 2 vCPUs; its limit is the soak's own time plus the attach cycles, in emulation.
pub fn boot_soak(
    kernel: &Kernel,
    initrd: &Path,
    seconds: u64,
) -> std::result::Result<Boot, String> {
    let log = kernels::suite_dir(&kernel.suite).join("console-soak.log");
    let params = format!(
        "cfstrace.backends= cfstrace.findings=0 cfstrace.cofire=0 cfstrace.storm=0 \
         cfstrace.diff=0 cfstrace.soak={seconds}"
    );
    let m = Machine {
        vmlinuz: &kernel.vmlinuz,
        initrd,
        cpus: 2,
        mem_mb: 1024,
        append: &params,
        engine: Engine::Tcg,
    };
    let w = guest_watch(&log, Duration::from_secs(seconds * 3 + 1800), None);
    println!("{}: soak boot (console: {})", kernel.suite, log.display());
    run(&m, &w).map_err(|e| format!("{e:#}"))
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Boot `kernel` as often as needed to run every backend: one boot normally; after a crash the
/// runs that did not happen get a fresh boot (at most two more boots than runs). A boot in
/// which nothing of ours ran is a boot flake, retried once; a run that died of a suspected
/// emulation artefact is retried once in a fresh boot.
pub fn run_kernel(kernel: &Kernel, initrd: &Path, args: &VmArgs) -> Vec<Outcome> {
    let mut pending = args.jobs();
    // The storm ramps run in one kernel whose timers co-fire (before 6.4), after the
    // co-firing run (and only where that runs).
    if kernel.suite == super::guest::STORM_SUITE && pending.contains(&Job::Cofire) {
        pending.push(Job::Storm);
    }
    let mut k = KernelBoots {
        kernel,
        initrd,
        args,
        dir: kernels::suite_dir(&kernel.suite),
        pending,
        outcomes: Vec::new(),
        boot_retry_used: false,
        flake_retried: Vec::new(),
        warnings: Vec::new(),
        boots: 0,
    };
    let max_boots = k.pending.len() + 2;
    while !k.pending.is_empty() {
        if k.boots == max_boots {
            let why = format!("not run: the guest kept breaking ({} boots)", k.boots);
            k.fail_pending(&why);
            break;
        }
        k.boots += 1;
        if !k.boot_once() {
            break;
        }
    }
    if let Some(first) = k.outcomes.first_mut() {
        first.warnings.extend(k.warnings);
    }
    k.outcomes
}

/// The state of one kernel's boots.
struct KernelBoots<'a> {
    kernel: &'a Kernel,
    initrd: &'a Path,
    args: &'a VmArgs,
    dir: PathBuf,
    /// The runs still to do, in boot order.
    pending: Vec<Job>,
    outcomes: Vec<Outcome>,
    boot_retry_used: bool,
    flake_retried: Vec<Job>,
    warnings: Vec<String>,
    boots: usize,
}

impl KernelBoots<'_> {
    fn label(&self, j: Job) -> String {
        let k = self.kernel;
        match j {
            Job::Backend(b) => format!("{} {} backend={}", k.suite, k.release, b.name()),
            Job::Cofire => format!(
                "{} {} cofire ({} cgroups, backend auto)",
                k.suite, k.release, self.args.cofire
            ),
            Job::Storm => format!("{} {} storm (ramp, forecast, guard)", k.suite, k.release),
        }
    }

    /// Every pending run fails for `why`.
    fn fail_pending(&mut self, why: &str) {
        for j in std::mem::take(&mut self.pending) {
            let l = self.label(j);
            println!("FAIL: {l}: {why}");
            self.outcomes.push(judge::fail(l));
        }
    }

    /// The guest's kernel parameters for the pending runs.
    fn params(&self) -> String {
        let a = self.args;
        let backends: Vec<&str> = self
            .pending
            .iter()
            .filter_map(|j| match j {
                Job::Backend(b) => Some(b.name()),
                Job::Cofire | Job::Storm => None,
            })
            .collect();
        let cofire = self.pending.contains(&Job::Cofire);
        let storm = self.pending.contains(&Job::Storm);
        format!(
            "cfstrace.backends={} cfstrace.cycles={} cfstrace.duration={} cfstrace.cpumax={} cfstrace.busy={} cfstrace.cofire={} cfstrace.cofiremax={} cfstrace.savecap={} cfstrace.loglevel={} cfstrace.storm={}",
            backends.join(","),
            a.cycles,
            a.duration,
            a.cpu_max,
            a.busy,
            if cofire { a.cofire } else { 0 },
            a.cofire_cpu_max,
            u8::from(a.save_captures.is_some()),
            a.log_level,
            u8::from(storm),
        )
    }

    /// One boot for the pending runs, each judged; false when no boot can follow.
    fn boot_once(&mut self) -> bool {
        let boots = self.boots;
        let log = self.dir.join(format!("console-{boots}.log"));
        let names: Vec<&str> = self.pending.iter().map(|j| j.name()).collect();
        let backends = self
            .pending
            .iter()
            .filter(|j| matches!(j, Job::Backend(_)))
            .count();
        let cofire = self.pending.contains(&Job::Cofire);
        let storm = self.pending.contains(&Job::Storm);
        let timeout = boot_timeout(self.args, backends, cofire, kvm_decided())
            + if storm { STORM_TIME } else { Duration::ZERO };
        let params = self.params();
        let b = match boot(self.kernel, self.initrd, &params, &log, timeout, self.args) {
            Ok(b) => b,
            Err(e) => {
                self.fail_pending(&format!("{e:#}"));
                return false;
            }
        };
        let con = analyze(&b.lines);
        let timing = format!(
            "{}, boot {boots}, init {}, total {}",
            b.accel,
            b.t_init.map_or("-".into(), secs),
            secs(b.total)
        );
        println!(
            "{}: boot {boots}: {} ({timing}; console: {})",
            self.kernel.suite,
            names.join(" "),
            log.display()
        );
        if con.runs.is_empty() {
            return self.boot_flake(&b, &con, &log, &timing);
        }
        let facts = Facts::from_map(&con.facts);
        if let Some(out) = &self.args.save_captures {
            save_captures(out, self.kernel, &con.runs);
        }
        self.judge_findings(&con);
        for run in &con.runs {
            self.judge_run(run, &b, &facts, &timing, &log);
        }
        true
    }

    /// Nothing of ours ran (an oops or panic in early boot, an emulation hang): retried once;
    /// false when it was the retry.
    fn boot_flake(&mut self, b: &Boot, con: &Console, log: &Path, timing: &str) -> bool {
        let why = match con.early_problem {
            Some(i) => format!(
                "kernel problem \"{}\" before cfstrace ran",
                kernel_problem(&b.lines[i]).unwrap_or("?")
            ),
            None if b.timed_out => "timeout before cfstrace ran".into(),
            None => "the guest stopped before cfstrace ran".into(),
        };
        let ex = excerpt(&b.lines, con.early_problem, 30);
        if self.boot_retry_used {
            self.fail_pending(&format!(
                "{why} ({timing}; console: {}):\n{ex}",
                log.display()
            ));
            return false;
        }
        self.boot_retry_used = true;
        let first = self.dir.join(format!("console-{}.flake.log", self.boots));
        let _ = fs::rename(log, &first);
        let w = format!(
            "{} {}: {why}: boot flake, retried once (console: {})",
            self.kernel.suite,
            self.kernel.release,
            first.display()
        );
        println!("\n!!!! RETRY: {w}:\n{ex}");
        self.warnings.push(w);
        true
    }

    /// The findings run (`doctor --json`), judged once per kernel, from the first boot that
    /// reached the backends; a boot that did without it fails it.
    fn judge_findings(&mut self, con: &Console) {
        let k = self.kernel;
        let label = format!("{} {} findings (doctor --json)", k.suite, k.release);
        if self.outcomes.iter().any(|o| o.label == label) {
            return;
        }
        let o = match con.runs.iter().find(|r| r.backend == FINDINGS_RUN) {
            Some(run) => judge::findings(label, run, &con.facts, &self.dir),
            None if con
                .runs
                .iter()
                .any(|r| Job::from_name(&r.backend).is_some()) =>
            {
                println!("FAIL: {label}: the guest ran no doctor --json");
                judge::fail(label)
            }
            None => return,
        };
        self.outcomes.push(o);
    }

    /// Judge one run of a boot, or put it back for a fresh boot after a suspected emulation
    /// flake.
    fn judge_run(&mut self, run: &GuestRun, b: &Boot, facts: &Facts, timing: &str, log: &Path) {
        let Some(job) = Job::from_name(&run.backend) else {
            return;
        };
        let Some(pos) = self.pending.iter().position(|p| *p == job) else {
            return;
        };
        self.pending.remove(pos);
        let l = self.label(job);
        if let Some(p) = run.problem
            && let Some(what) = emulation_suspect(&b.lines, p)
            && !self.flake_retried.contains(&job)
        {
            self.flake_retried.push(job);
            let kept = self.dir.join(format!("console-{}.int3.log", self.boots));
            let _ = fs::copy(log, &kept);
            let w = format!(
                "{l}: guest {what} (suspected TCG text-patching artefact, see xtask/src/vm/boot.rs): \
                 retried once in a fresh boot (console: {})",
                kept.display()
            );
            println!("\n!!!! RETRY: {w}\n{}", excerpt(&b.lines, Some(p), 25));
            self.warnings.push(w);
            self.pending.insert(0, job);
            return;
        }
        let ctx = format!(
            "{}; console: {}",
            run_timing(run, b, job, timing),
            log.display()
        );
        let target = judge::Target {
            kernel: self.kernel,
            dir: &self.dir,
            args: self.args,
        };
        let mut o = judge::judge(&target, job, run, b, facts, &ctx);
        o.label = l;
        if self.flake_retried.contains(&job) {
            o.warnings.push(format!(
                "{}: {} after a retry (see above)",
                o.label,
                if o.passed { "passed" } else { "FAILED" }
            ));
        }
        self.outcomes.push(o);
    }
}

/// How long a run and its parts took, from the times its markers arrived.
fn run_timing(run: &GuestRun, b: &Boot, job: Job, timing: &str) -> String {
    let t = |i: Option<usize>| i.map_or(b.total, |i| b.times[i]);
    let elapsed = t(run.end).saturating_sub(t(Some(run.start)));
    let record_took = t(run.end).saturating_sub(t(run.record_start));
    if matches!(job, Job::Cofire | Job::Storm) {
        return format!(
            "{timing}, run {} (record+report+digest {})",
            secs(elapsed),
            secs(record_took)
        );
    }
    let doctor_took = t(run.doctor.end).saturating_sub(t(Some(run.start)));
    let cpu = run
        .doctor
        .cpu
        .as_ref()
        .map_or(String::new(), |(user, sys)| {
            format!(": user {user}s sys {sys}s")
        });
    format!(
        "{timing}, run {} (doctor {}{cpu}, record+report {})",
        secs(elapsed),
        secs(doctor_took),
        secs(record_took)
    )
}

/// `--save-captures`: each run's capture as the guest printed it, whole ones only.
fn save_captures(out: &Path, kernel: &Kernel, runs: &[GuestRun]) {
    if let Err(e) = fs::create_dir_all(out) {
        println!("warning: cannot create {}: {e}", out.display());
        return;
    }
    for run in runs.iter().filter(|r| r.capture_file.done) {
        let path = out.join(format!(
            "{}-{}-{}.jsonl",
            kernel.suite, kernel.release, run.backend
        ));
        let mut text = run.capture_file.lines.join("\n");
        text.push('\n');
        match fs::write(&path, text) {
            Ok(()) => println!("saved capture {}", path.display()),
            Err(e) => println!("warning: cannot write {}: {e}", path.display()),
        }
    }
}
