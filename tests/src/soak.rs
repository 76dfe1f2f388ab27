//! The soak: `cfstrace record` left running over a throttling storm whose cgroups never stop
//! changing (one removed and one made every `churn_every`), then 100 attach/detach cycles.
//! Shared by the 2-minute test (tests/tests/soak.rs) and `cargo xtask soak` (10 minutes).
//!
//! What it measures, each a way a long run on a real node goes wrong:
//! - the recorder's RSS every few seconds, and its slope after warm-up (a leak per event or per
//!   cgroup shows as a steady climb; bounded maps level off);
//! - cgroups alive at the end whose callbacks are in the capture without a naming line with a
//!   path (the namer fell behind or lost them);
//! - events lost (the capture's last loss line);
//! - kernel oopses, BUGs, WARNINGs and lockups logged during the run (/dev/kmsg);
//! - BPF programs, maps or links left behind by 100 attach/detach cycles (`doctor --attach-cycles`).
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{CgroupTree, cfstrace_bin, remove_cgroup, run_with_timeout, spawn_busy_in, status_kib};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub duration: Duration,
    /// Throttled cgroups alive at any time, each with one busy loop.
    pub live: usize,
    /// One cgroup removed and a new one made this often.
    pub churn_every: Duration,
    pub period_us: u64,
    pub quota_us: u64,
    pub sample_every: Duration,
    /// The last part of the run, storm on but churn off: a leak per event shows as a climb
    /// there, while per-cgroup state (bounded, but growing until its caps) cannot.
    pub quiet_tail: Duration,
    pub attach_cycles: u32,
}

impl SoakConfig {
    pub fn for_duration(duration: Duration) -> SoakConfig {
        SoakConfig {
            duration,
            live: 24,
            churn_every: Duration::from_millis(250),
            // 1 ms every 10 ms: each cgroup throttled every period, a timer firing 100 times a
            // second per cgroup.
            period_us: 10_000,
            quota_us: 1_000,
            sample_every: Duration::from_secs(2),
            quiet_tail: duration / 4,
            attach_cycles: 100,
        }
    }
}

/// What a soak can tolerate. In the quiet tail a leak of 32 bytes an event (at the storm's
/// ~750 callbacks a second) climbs 1.4 MiB a minute; RSS noise is a few hundred KiB. Per
/// cgroup made, the state kept (naming, caches: each capped at 16,384 cgroups) measured about
/// 4-6 KiB on this host.
#[derive(Debug, Clone)]
pub struct SoakLimits {
    pub tail_slope_kib_per_min: f64,
    pub kib_per_cgroup: f64,
    pub peak_rss_kib: u64,
}

impl Default for SoakLimits {
    fn default() -> Self {
        SoakLimits {
            tail_slope_kib_per_min: 1024.0,
            kib_per_cgroup: 12.0,
            peak_rss_kib: 64 * 1024,
        }
    }
}

#[derive(Debug)]
pub struct SoakReport {
    pub seconds: f64,
    /// (seconds since the record started, VmRSS KiB).
    pub rss: Vec<(f64, u64)>,
    /// Least squares over the samples of the quiet tail (storm, no churn).
    pub tail_slope_kib_per_min: f64,
    /// RSS growth over the churn (after a 10 s warm-up: BTF parse, maps) per cgroup made.
    pub kib_per_cgroup: f64,
    pub peak_rss_kib: u64,
    pub cgroups_made: usize,
    pub record_status: Option<i32>,
    pub callbacks: u64,
    /// Cgroups alive at the end with callbacks in the capture.
    pub live_with_callbacks: usize,
    /// Of those, the ones without a naming line carrying their path.
    pub unnamed_live: Vec<String>,
    /// The last loss line's counters that lose events (`ringbuf_full`, `unsent_full`).
    pub lost: u64,
    pub capture_ended: bool,
    /// Kernel log lines that say something broke.
    pub oops: Vec<String>,
    /// `doctor --attach-cycles N --json`'s leak check.
    pub leakcheck: Value,
}

impl SoakReport {
    /// What went wrong; empty when the soak passed.
    pub fn problems(&self, limits: &SoakLimits) -> Vec<String> {
        let mut p = Vec::new();
        if self.record_status != Some(0) {
            p.push(format!("record exited {:?}", self.record_status));
        }
        if !self.capture_ended {
            p.push("the capture has no end line".into());
        }
        if self.rss.len() < 4 {
            p.push(format!("only {} RSS samples", self.rss.len()));
        }
        if self.tail_slope_kib_per_min > limits.tail_slope_kib_per_min {
            p.push(format!(
                "RSS climbs {:.0} KiB/min with no churn (limit {:.0})",
                self.tail_slope_kib_per_min, limits.tail_slope_kib_per_min
            ));
        }
        if self.kib_per_cgroup > limits.kib_per_cgroup {
            p.push(format!(
                "RSS grows {:.1} KiB per cgroup made (limit {:.1})",
                self.kib_per_cgroup, limits.kib_per_cgroup
            ));
        }
        if self.peak_rss_kib > limits.peak_rss_kib {
            p.push(format!(
                "peak RSS {} KiB (limit {})",
                self.peak_rss_kib, limits.peak_rss_kib
            ));
        }
        if self.callbacks == 0 || self.live_with_callbacks == 0 {
            p.push(format!(
                "nothing to judge: {} callbacks, {} live cgroups with callbacks",
                self.callbacks, self.live_with_callbacks
            ));
        }
        if !self.unnamed_live.is_empty() {
            p.push(format!(
                "{} live cgroups unnamed: {:?}",
                self.unnamed_live.len(),
                self.unnamed_live
            ));
        }
        if self.lost > 0 {
            p.push(format!("{} events lost", self.lost));
        }
        if !self.oops.is_empty() {
            p.push(format!("kernel log: {:?}", self.oops));
        }
        if self.leakcheck["ok"] != true || self.leakcheck["leaked"] != false {
            p.push(format!("leak check: {}", self.leakcheck));
        }
        p
    }

    pub fn summary(&self) -> String {
        let rss: Vec<String> = self
            .rss
            .iter()
            .map(|(t, k)| format!("{t:.0}s:{}", k / 1024))
            .collect();
        format!(
            "soak {:.0}s: {} cgroups made, {} callbacks, {} live cgroups with callbacks, {} unnamed, \
             {} lost, RSS MiB [{}], {:.1} KiB per cgroup made, {:.0} KiB/min with no churn, \
             peak {} KiB, kernel log problems {}, leak check {}",
            self.seconds,
            self.cgroups_made,
            self.callbacks,
            self.live_with_callbacks,
            self.unnamed_live.len(),
            self.lost,
            rss.join(" "),
            self.kib_per_cgroup,
            self.tail_slope_kib_per_min,
            self.peak_rss_kib,
            self.oops.len(),
            self.leakcheck
        )
    }
}

/// Least-squares slope of `(x, y)` points (y per unit of x); 0 for fewer than two.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// Seconds of a run before RSS is judged: the BTF parse and the maps.
pub const WARM_UP_S: f64 = 10.0;

/// From RSS samples `(seconds, KiB)` of a run whose churn ended at `churn_end` after making
/// `churned` cgroups past the warm-up: the slope in the quiet tail (KiB/min) and the growth
/// per cgroup made (KiB; infinite without the samples to tell).
pub fn rss_figures(rss: &[(f64, u64)], churn_end: f64, churned: f64) -> (f64, f64) {
    let tail: Vec<(f64, f64)> = rss
        .iter()
        .filter(|(t, _)| *t >= churn_end + 2.0)
        .map(|(t, k)| (*t / 60.0, *k as f64))
        .collect();
    let at = |t: f64| rss.iter().find(|(s, _)| *s >= t).map(|r| r.1 as f64);
    let per_cgroup = match (at(WARM_UP_S), at(churn_end)) {
        (Some(a), Some(b)) => (b - a).max(0.0) / churned.max(1.0),
        _ => f64::INFINITY,
    };
    (slope(&tail), per_cgroup)
}

/// Kernel log lines that mean something broke (what `dmesg` would show after an incident).
pub fn is_kernel_problem(line: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "Oops",
        "BUG:",
        "WARNING:",
        "Kernel panic",
        "soft lockup",
        "hard LOCKUP",
        "general protection fault",
        "Call Trace",
    ];
    SIGNS.iter().any(|s| line.contains(s))
}

/// /dev/kmsg from now on: opened at its end, read without blocking.
struct KernelLog(fs::File);

impl KernelLog {
    fn from_now() -> Result<KernelLog, String> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        f.seek(SeekFrom::End(0))
            .map_err(|e| format!("/dev/kmsg: {e}"))?;
        Ok(KernelLog(f))
    }

    /// Every record logged since, as its message text.
    fn since(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                    out.push(msg.lines().next().unwrap_or("").to_string());
                }
                // EPIPE: records overwritten while we read; carry on from the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// One churn cgroup: its directory, id and busy loop.
struct Member {
    dir: PathBuf,
    id: u64,
    busy: Child,
}

impl Member {
    fn stop(mut self) {
        let _ = self.busy.kill();
        let _ = self.busy.wait();
        let _ = remove_cgroup(&self.dir, Duration::from_secs(5));
    }
}

/// Run the soak in `dir` on the cgroups of `tree` (removed by the caller's guard).
pub fn run(cfg: &SoakConfig, tree: &mut CgroupTree, dir: &Path) -> Result<SoakReport, String> {
    let mut kmsg = KernelLog::from_now()?;
    let mut made = 0usize;
    let mut make = |tree: &mut CgroupTree| -> Result<Member, String> {
        made += 1;
        let d = tree.add(&format!("soak{made}"), cfg.period_us, cfg.quota_us)?;
        let id = fs::metadata(&d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .ino();
        let busy = spawn_busy_in(&d)?;
        Ok(Member { dir: d, id, busy })
    };
    let mut live: VecDeque<Member> = VecDeque::new();
    for _ in 0..cfg.live {
        live.push_back(make(tree)?);
    }

    let capture = dir.join("soak.jsonl");
    let secs = format!("{}s", cfg.duration.as_secs());
    let mut record = Command::new(cfstrace_bin())
        .args(["-q", "record", "--duration", &secs, "-o"])
        .arg(&capture)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            fs::File::create(dir.join("record.stderr")).map_err(|e| format!("stderr file: {e}"))?,
        )
        .spawn()
        .map_err(|e| format!("starting cfstrace record: {e}"))?;
    let pid = record.id();
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut next_sample = start + cfg.sample_every;
    let mut next_churn = start + cfg.churn_every;
    // Churn stops a little before the record ends, so the cgroups alive at the end are the
    // ones the record's final naming sees.
    let churn_for = cfg.duration.saturating_sub(cfg.quiet_tail);
    let churn_until = start + churn_for;
    let status = loop {
        if let Some(s) = record.try_wait().map_err(|e| format!("waiting: {e}"))? {
            break s;
        }
        let now = Instant::now();
        if now >= next_sample {
            if let Some(k) = status_kib(pid, "VmRSS") {
                rss.push((start.elapsed().as_secs_f64(), k));
            }
            next_sample += cfg.sample_every;
        }
        if now >= next_churn && now < churn_until {
            if let Some(old) = live.pop_front() {
                old.stop();
            }
            live.push_back(make(tree)?);
            next_churn += cfg.churn_every;
        }
        if start.elapsed() > cfg.duration + Duration::from_secs(120) {
            let _ = record.kill();
            return Err("cfstrace record did not end 120 s after its --duration".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = start.elapsed().as_secs_f64();
    let live_ids: BTreeMap<u64, String> = live
        .iter()
        .map(|m| (m.id, tree.cgroup_path(&m.dir)))
        .collect();
    for m in live.drain(..) {
        m.stop();
    }

    let text = fs::read_to_string(&capture).map_err(|e| format!("{}: {e}", capture.display()))?;
    let mut named: BTreeSet<u64> = BTreeSet::new();
    let mut called: BTreeSet<u64> = BTreeSet::new();
    let (mut callbacks, mut lost, mut ended) = (0u64, 0u64, false);
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).map_err(|e| format!("capture line: {e}"))?;
        match v["kind"].as_str() {
            Some("period") => {
                callbacks += 1;
                called.insert(v["cgroup_id"].as_u64().unwrap_or(0));
            }
            Some("cgroup") if v["path"].is_string() => {
                named.insert(v["id"].as_u64().unwrap_or(0));
            }
            Some("loss") => {
                lost = v["ringbuf_full"].as_u64().unwrap_or(0)
                    + v["unsent_full"].as_u64().unwrap_or(0);
            }
            Some("end") => ended = true,
            _ => {}
        }
    }
    let live_called: Vec<(&u64, &String)> = live_ids
        .iter()
        .filter(|(id, _)| called.contains(id))
        .collect();
    let unnamed_live = live_called
        .iter()
        .filter(|(id, _)| !named.contains(id))
        .map(|(_, p)| (*p).clone())
        .collect();

    let cycles = cfg.attach_cycles.to_string();
    let doctor = run_with_timeout(
        &cfstrace_bin(),
        &["doctor", "--json", "--attach-cycles", &cycles],
        dir,
        Duration::from_secs(60 + 10 * u64::from(cfg.attach_cycles)),
    )?;
    let leakcheck = serde_json::from_str::<Value>(&doctor.stdout)
        .ok()
        .and_then(|d| d.pointer("/checks/leakcheck").cloned())
        .unwrap_or_else(|| Value::String(format!("no leak check in: {}", doctor.describe())));
    let oops = kmsg
        .since()
        .into_iter()
        .filter(|l| is_kernel_problem(l))
        .collect();

    let churn_end = churn_for.as_secs_f64();
    // Cgroups made between the warm-up's end and the churn's.
    let churned = (churn_end - WARM_UP_S) / cfg.churn_every.as_secs_f64();
    let (tail_slope_kib_per_min, kib_per_cgroup) = rss_figures(&rss, churn_end, churned);
    Ok(SoakReport {
        seconds,
        tail_slope_kib_per_min,
        kib_per_cgroup,
        peak_rss_kib: rss.iter().map(|r| r.1).max().unwrap_or(0),
        rss,
        cgroups_made: made,
        record_status: status.code(),
        callbacks,
        live_with_callbacks: live_called.len(),
        unnamed_live,
        lost,
        capture_ended: ended,
        oops,
        leakcheck,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(0.0, 7.0)]), 0.0);
        assert!(slope(&[(0.0, 5.0), (1.0, 4.0), (2.0, 5.0), (3.0, 4.0)]).abs() < 0.5);
    }

    #[test]
    fn rss_figures_tell_churn_growth_from_a_leak() {
        // 1 MiB over 100 cgroups made, then flat.
        let rss: Vec<(f64, u64)> = (0..=30)
            .map(|i| {
                let t = f64::from(i) * 2.0;
                let k = if t < 10.0 {
                    16_000
                } else if t < 40.0 {
                    16_000 + ((t - 10.0) / 30.0 * 1024.0) as u64
                } else {
                    17_024
                };
                (t, k)
            })
            .collect();
        let (tail, per) = rss_figures(&rss, 40.0, 100.0);
        assert!(tail.abs() < 1.0, "{tail}");
        assert!((per - 10.24).abs() < 0.5, "{per}");
        // No samples: nothing can be told, and that fails the limit.
        assert!(rss_figures(&[], 40.0, 100.0).1.is_infinite());
    }

    #[test]
    fn kernel_problems_are_recognised() {
        assert!(is_kernel_problem(
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s!"
        ));
        assert!(is_kernel_problem(
            "NMI watchdog: Watchdog detected hard LOCKUP on cpu 3"
        ));
        assert!(is_kernel_problem(
            "WARNING: CPU: 0 PID: 1 at kernel/sched/fair.c:5000"
        ));
        assert!(!is_kernel_problem(
            "cfs_period_timer[cpu1]: period too short, scaling up"
        ));
    }
}
