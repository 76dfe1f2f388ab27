//! The host's side of the benchmarks: tracefs for bpftrace, `kernel.bpf_stats_enabled`,
//! bpftool samples, the peer script, and starting `cfstrace record` and bpftrace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::bpfstats::{self, Attachments, Sample};
use super::proc::{self, Guarded};
use crate::cmd;

/// The peer scripts and their helpers, kept in the repository.
pub fn scripts_dir() -> PathBuf {
    cmd::workspace_root().join("xtask").join("bench")
}

/// The bench's scratch directory (captures, the guests' images and consoles).
pub fn scratch() -> Result<PathBuf> {
    let d = cmd::target_dir().join("bench");
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// bpftrace reads tracepoint formats and traceable functions from tracefs: mount it at
/// /sys/kernel/tracing when it is not there (saying so); the guard unmounts what it mounted.
pub struct Tracefs {
    mounted: bool,
}

impl Tracefs {
    pub fn ensure() -> Result<Tracefs> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Tracefs { mounted: false });
        }
        println!("bench: mounting tracefs at {TRACEFS} (bpftrace needs it; unmounted at the end)");
        cmd::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
        Ok(Tracefs { mounted: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(TRACEFS).status();
        }
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while it lives, then the value it had. Statistics cost two
/// clock reads per program run, so the direct IRQs-off runs (P2) are made without it.
pub struct BpfStats {
    old: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(BpfStats { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.old);
    }
}

fn bpftool(args: &[&str]) -> Result<String> {
    cmd::output(Command::new("bpftool").args(args))
}

pub fn sample() -> Result<Sample> {
    bpfstats::parse_progs(&bpftool(&["prog", "show", "--json"])?)
}

/// The peer programs' attachments, as bpftool lists them now.
pub fn attachments() -> Attachments {
    let perf = bpftool(&["perf", "show", "--json"]).unwrap_or_default();
    let links = bpftool(&["link", "show", "--json"]).unwrap_or_default();
    Attachments::parse(&perf, &links)
}

/// What the peer scripts need from the kernel's BTF (btf-offsets.sh, the same script the
/// guests run).
#[derive(Debug, PartialEq, Eq)]
pub struct PeerBtf {
    /// `offsetof(struct cfs_bandwidth, period_timer)`, `offsetof(struct task_group,
    /// cfs_bandwidth)`: the scripts' $1 and $2.
    pub offsets: (u64, u64),
    /// cfs_rq's queued-tasks field (`h_nr_running`, or `h_nr_queued` where renamed).
    pub queued_field: String,
}

pub fn peer_btf() -> Result<PeerBtf> {
    let out = cmd::output(Command::new("sh").arg(scripts_dir().join("btf-offsets.sh")))?;
    parse_peer_btf(&out)
}

pub fn parse_peer_btf(out: &str) -> Result<PeerBtf> {
    let w: Vec<&str> = out.split_whitespace().collect();
    let bad = || format!("btf-offsets.sh printed {out:?}, want two numbers and a field name");
    let [a, b, f] = w[..] else {
        bail!("{}", bad());
    };
    Ok(PeerBtf {
        offsets: (a.parse().with_context(bad)?, b.parse().with_context(bad)?),
        queued_field: f.to_string(),
    })
}

/// The peer script for `style` (tracepoint, fentry, kprobe), with its async-unthrottle part
/// where the kernel has `__cfsb_csd_unthrottle` and the kernel's name of the queued-tasks
/// field, written to `dir`.
pub fn peer_script(style: &str, btf: &PeerBtf, dir: &Path) -> Result<PathBuf> {
    let base = fs::read_to_string(scripts_dir().join(format!("peer-{style}.bt")))?;
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let csd = kallsyms
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("__cfsb_csd_unthrottle"));
    let mut text = base;
    if csd {
        text.push_str(&fs::read_to_string(
            scripts_dir().join(format!("peer-{style}-csd.bt")),
        )?);
    }
    let out = dir.join(format!("peer-{style}.bt"));
    fs::write(&out, text.replace("h_nr_running", &btf.queued_field))?;
    Ok(out)
}

/// Start bpftrace on `script` and wait until its programs are attached: the peer's BEGIN
/// probe, which bpftrace runs once every probe is attached, prints "peer attached".
pub fn start_peer(script: &Path, offsets: (u64, u64), log: &Path) -> Result<Guarded> {
    let logf = fs::File::create(log)?;
    let mut c = Command::new("bpftrace");
    c.arg(script)
        .arg(offsets.0.to_string())
        .arg(offsets.1.to_string())
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    let mut g = Guarded::spawn(&mut c, "bpftrace", libc::SIGINT, libc::SIGTERM)?;
    let start = Instant::now();
    loop {
        if let Some(s) = g.try_wait()? {
            bail!("bpftrace exited ({s}): {}", tail(log));
        }
        if fs::read_to_string(log).is_ok_and(|t| t.contains("peer attached")) {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("bpftrace did not attach in 120 s: {}", tail(log));
        }
        proc::sleep(Duration::from_millis(50))?;
    }
    settle()?;
    Ok(g)
}

/// Wait until no program is loaded for a second (attaching is done).
pub fn settle() -> Result<()> {
    let mut n = sample()?.len();
    loop {
        proc::sleep(Duration::from_secs(1))?;
        let m = sample()?.len();
        if m == n {
            return Ok(());
        }
        n = m;
    }
}

/// The last lines of a log, for error messages.
pub fn tail(log: &Path) -> String {
    let t = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| !l.contains("RLIMIT_MEMLOCK"))
        .collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

/// `cfstrace record -o out ARGS...`, started; the time from exec to its header line (the
/// probes are attached before it is written).
pub fn start_record(
    bin: &Path,
    out: &Path,
    args: &[&str],
    log: &Path,
) -> Result<(Guarded, Duration)> {
    let _ = fs::remove_file(out);
    let logf = fs::File::create(log)?;
    let mut c = Command::new(bin);
    c.arg("record")
        .arg("-o")
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    let start = Instant::now();
    let mut g = Guarded::spawn(&mut c, "cfstrace record", libc::SIGINT, libc::SIGTERM)?;
    let attach = loop {
        if let Ok(d) = proc::wait_first_line(out, start, Duration::from_millis(100)) {
            break d;
        }
        if let Some(s) = g.try_wait()? {
            bail!(
                "cfstrace record exited ({s}) before attaching: {}",
                tail(log)
            );
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("cfstrace record did not attach in 60 s: {}", tail(log));
        }
    };
    Ok((g, attach))
}

/// Run `cfstrace record --duration D -o out ARGS...` to the end; the capture's text.
pub fn record_for(
    bin: &Path,
    out: &Path,
    d: Duration,
    args: &[&str],
    log: &Path,
) -> Result<String> {
    let secs = format!("{}ms", d.as_millis());
    let mut all = vec!["--duration", secs.as_str()];
    all.extend_from_slice(args);
    let (mut g, _) = start_record(bin, out, &all, log)?;
    let status = g.wait_for(d + Duration::from_secs(60))?.with_context(|| {
        format!(
            "cfstrace record did not stop within 60 s of --duration: {}",
            tail(log)
        )
    })?;
    if !status.success() {
        bail!("cfstrace record failed ({status}): {}", tail(log));
    }
    fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_btf_facts() {
        let b = parse_peer_btf("64 456 h_nr_queued\n").unwrap();
        assert_eq!(
            (b.offsets, b.queued_field.as_str()),
            ((64, 456), "h_nr_queued")
        );
        assert!(parse_peer_btf("").is_err());
        assert!(parse_peer_btf("64 456").is_err());
        assert!(parse_peer_btf("64 x h_nr_running").is_err());
    }

    #[test]
    fn every_peer_script_has_its_csd_part() {
        for style in ["tracepoint", "fentry", "kprobe"] {
            for f in [format!("peer-{style}.bt"), format!("peer-{style}-csd.bt")] {
                let text = fs::read_to_string(scripts_dir().join(&f)).unwrap();
                assert!(text.contains("$1") || f.contains("csd"), "{f}");
            }
        }
    }
}
