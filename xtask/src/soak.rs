//! `cargo xtask soak`: `cfstrace record` over a throttling storm whose cgroups never stop
//! changing, for 10 minutes on this host and in a VM kernel, then 100 attach/detach cycles.
//! Reports RSS over time (growth per cgroup made, slope with no churn), live cgroups left
//! unnamed, lost events, kernel oopses and warnings, and BPF objects left behind; exit 1 when
//! any is out of bounds ([`SoakLimits`]). The host half is `cfstrace_tests::soak`, whose
//! 2-minute run is in `cargo test`; the guest half is [`init_soak`], judged here from the
//! console.
use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cfstrace_tests::soak::{self, SoakConfig, SoakLimits, SoakReport, WARM_UP_S};
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::vm::console::{kernel_message, kernel_problem, named_block};
use crate::vm::{guest, kernels, runs};
use crate::{cmd, setup};

const M_SOAK_RSS: &str = "@@CFSTRACE-SOAK-RSS ";
const M_SOAK_LIVE: &str = "@@CFSTRACE-SOAK-LIVE ";
const M_SOAK_END: &str = "@@CFSTRACE-SOAK-END ";
const M_SOAK_LOSS: &str = "@@CFSTRACE-SOAK-LOSS ";
const M_SOAK_DOCTOR_BEGIN: &str = "@@CFSTRACE-SOAK-DOCTOR-BEGIN ";
const M_SOAK_DOCTOR_END: &str = "@@CFSTRACE-SOAK-DOCTOR-END ";
/// Cgroups alive at once in the guest (2 emulated vCPUs): each 1 ms of every 10 ms.
const GUEST_LIVE: u32 = 8;
/// The guest replaces one cgroup a second (its shell is slow under emulation).
const GUEST_CHURN_S: f64 = 1.0;
const ATTACH_CYCLES: u32 = 100;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Place {
    Host,
    Vm,
    Both,
}

#[derive(Args)]
pub struct SoakArgs {
    /// How long each soak records.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Where to soak.
    #[arg(long = "where", value_enum, default_value_t = Place::Both)]
    place: Place,
    /// The VM's Debian kernel (suite).
    #[arg(long, default_value = "bookworm")]
    kernel: String,
}

pub fn run(args: &SoakArgs) -> Result<ExitCode> {
    setup::ensure(setup::Needs::Test, true)?;
    let bin = cmd::build_tracer()?;
    // SAFETY: CFSTRACE_BIN is read by cfstrace_tests on this thread only, set before any use.
    unsafe { std::env::set_var("CFSTRACE_BIN", &bin) };
    let seconds = args.minutes * 60;
    let limits = SoakLimits::default();
    let mut failed = false;
    if matches!(args.place, Place::Host | Place::Both) {
        let cfg = SoakConfig::for_duration(Duration::from_secs(seconds));
        let dir = tempfile_dir("cfstrace-soak-host")?;
        let hierarchy = cfstrace_tests::cpu_hierarchy().context("no cpu cgroup hierarchy")?;
        let mut tree = cfstrace_tests::CgroupTree::new(
            hierarchy,
            &format!("cfstrace-soak-{}", std::process::id()),
        )
        .map_err(anyhow::Error::msg)?;
        println!("soak on this host: {} min", args.minutes);
        let r = soak::run(&cfg, &mut tree, &dir).map_err(anyhow::Error::msg)?;
        failed |= verdict("host", &r, &limits);
    }
    if matches!(args.place, Place::Vm | Place::Both) {
        let kernel = kernels::fetch(&args.kernel, false)?;
        let initrd = cmd::target_dir()
            .join("vm-cache")
            .join(format!("initramfs-soak-{}.cpio", std::process::id()));
        guest::build(Some(&bin))?.write(&initrd)?;
        println!(
            "soak in {} ({}): {} min",
            kernel.suite, kernel.release, args.minutes
        );
        let boot = runs::boot_soak(&kernel, &initrd, seconds);
        let _ = fs::remove_file(&initrd);
        let boot = boot.map_err(anyhow::Error::msg)?;
        let r = guest_report(&boot.lines, seconds as f64)
            .with_context(|| format!("{}: the soak's console", kernel.suite))?;
        failed |= verdict(&kernel.suite, &r, &limits);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn tempfile_dir(prefix: &str) -> Result<std::path::PathBuf> {
    let d = cmd::target_dir().join(format!("{prefix}-{}", std::process::id()));
    fs::create_dir_all(&d)?;
    Ok(d)
}

/// Print a soak's figures and problems; true when it failed.
fn verdict(place: &str, r: &SoakReport, limits: &SoakLimits) -> bool {
    println!("{place}: {}", r.summary());
    let problems = r.problems(limits);
    for p in &problems {
        println!("FAIL: {place}: {p}");
    }
    if problems.is_empty() {
        println!("ok: {place}: soak passed");
    }
    !problems.is_empty()
}

/// The value of a `MARKER value@@` line.
fn marker<'a>(line: &'a str, m: &str) -> Option<&'a str> {
    let rest = &line[line.find(m)? + m.len()..];
    Some(rest.find("@@").map_or(rest, |e| &rest[..e]).trim())
}

/// The guest soak's report from its console lines.
pub fn guest_report(lines: &[String], seconds: f64) -> Result<SoakReport> {
    let mut rss = Vec::new();
    let (mut record_status, mut made, mut ended, mut callbacks) = (None, 0usize, false, 0u64);
    let (mut live_with_callbacks, mut unnamed_live, mut lost) = (0usize, Vec::new(), 0u64);
    let mut oops = Vec::new();
    for l in lines {
        if let Some(msg) = kernel_message(l)
            && (kernel_problem(l).is_some() || soak::is_kernel_problem(msg))
        {
            oops.push(msg.trim().to_string());
        }
        if let Some(v) = marker(l, M_SOAK_RSS) {
            let mut it = v.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(t)), Some(Ok(k))) = (it.next(), it.next()) {
                rss.push((t as f64, k));
            }
        } else if let Some(v) = marker(l, M_SOAK_END) {
            for kv in v.split_whitespace() {
                match kv.split_once('=') {
                    Some(("record", s)) => record_status = s.parse().ok(),
                    Some(("made", s)) => made = s.parse().unwrap_or(0),
                    Some(("callbacks", s)) => callbacks = s.parse().unwrap_or(0),
                    Some(("ended", s)) => ended = s == "1",
                    _ => {}
                }
            }
        } else if let Some(v) = marker(l, M_SOAK_LIVE) {
            let f: Vec<&str> = v.split_whitespace().collect();
            if let [_, called, named, name] = f[..]
                && called == "1"
            {
                live_with_callbacks += 1;
                if named != "1" {
                    unnamed_live.push(name.to_string());
                }
            }
        } else if let Some(v) = marker(l, M_SOAK_LOSS) {
            let loss: Value = serde_json::from_str(v).unwrap_or(Value::Null);
            lost = loss["ringbuf_full"].as_u64().unwrap_or(0)
                + loss["unsent_full"].as_u64().unwrap_or(0);
        }
    }
    let leakcheck = named_block(lines, M_SOAK_DOCTOR_BEGIN, M_SOAK_DOCTOR_END, "doctor")
        .and_then(|(body, _)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|d| d.pointer("/checks/leakcheck").cloned())
        .unwrap_or_else(|| Value::String("no doctor output on the console".into()));
    let churn_end = seconds * 3.0 / 4.0;
    let churned = (churn_end - WARM_UP_S) / GUEST_CHURN_S;
    let (tail_slope_kib_per_min, kib_per_cgroup) = soak::rss_figures(&rss, churn_end, churned);
    Ok(SoakReport {
        seconds,
        tail_slope_kib_per_min,
        kib_per_cgroup,
        peak_rss_kib: rss.iter().map(|r| r.1).max().unwrap_or(0),
        rss,
        cgroups_made: made,
        record_status,
        callbacks,
        live_with_callbacks,
        unnamed_live,
        lost,
        capture_ended: ended,
        oops,
        leakcheck,
    })
}

/// The guest's soak, when the kernel command line says `cfstrace.soak=SECONDS`: the storm's
/// cgroups (cgroup v2) replaced one a second for the first three quarters of the record, RSS
/// every 5 s, then what the capture says of the cgroups alive at the end, its losses, and
/// `doctor --attach-cycles`.
pub fn init_soak() -> String {
    format!(
        r#"# soak: record over a churning storm (cargo xtask soak).
if [ "$SOAK" -gt 0 ]; then
  SK=/sys/fs/cgroup/soak
  mkdir -p "$SK"
  echo +cpu > "$SK/cgroup.subtree_control"
  n=0
  LIVE=
  mk() {{
    n=$((n + 1))
    mkdir "$SK/c$n"
    echo "1000 10000" > "$SK/c$n/cpu.max"
    sh -c 'while :; do :; done' &
    echo $! > "$SK/c$n/cgroup.procs"
    LIVE="$LIVE c$n:$!"
  }}
  rmoldest() {{
    set -- $LIVE
    first=$1
    shift
    LIVE="$*"
    kill -9 "${{first#*:}}" 2>/dev/null
    wait "${{first#*:}}" 2>/dev/null
    rmdir "$SK/${{first%%:*}}" 2>/dev/null || {{ sleep 1; rmdir "$SK/${{first%%:*}}"; }}
  }}
  i=0
  while [ $i -lt {GUEST_LIVE} ]; do mk; i=$((i + 1)); done
  cfstrace -q record --duration "${{SOAK}}s" -o /tmp/soak.jsonl &
  RP=$!
  start=$(cut -d. -f1 /proc/uptime)
  churn_until=$((start + SOAK * 3 / 4))
  next=$((start + 5))
  while [ -e /proc/$RP ] && ! grep -q '^State:.*Z' /proc/$RP/status 2>/dev/null; do
    now=$(cut -d. -f1 /proc/uptime)
    if [ "$now" -lt "$churn_until" ]; then rmoldest; mk; fi
    if [ "$now" -ge "$next" ]; then
      rss=$(awk '/^VmRSS:/ {{print $2}}' /proc/$RP/status 2>/dev/null)
      [ -n "$rss" ] && echo "{M_SOAK_RSS}$((now - start)) $rss@@"
      next=$((next + 5))
    fi
    sleep 1
  done
  wait $RP
  src=$?
  for e in $LIVE; do
    id=$(stat -c %i "$SK/${{e%%:*}}")
    called=0
    named=0
    grep -q "\"cgroup_id\":$id," /tmp/soak.jsonl && called=1
    grep -q "\"kind\":\"cgroup\",\"id\":$id,\"path\":" /tmp/soak.jsonl && named=1
    echo "{M_SOAK_LIVE}$id $called $named ${{e%%:*}}@@"
  done
  echo "{M_SOAK_LOSS}$(grep '"kind":"loss"' /tmp/soak.jsonl | tail -n 1)@@"
  cbs=$(grep -c '"kind":"period"' /tmp/soak.jsonl)
  ended=0
  grep -q '"kind":"end"' /tmp/soak.jsonl && ended=1
  echo "{M_SOAK_END}record=$src made=$n callbacks=$cbs ended=$ended@@"
  for e in $LIVE; do kill -9 "${{e#*:}}" 2>/dev/null; done
  sleep 1
  for e in $LIVE; do rmdir "$SK/${{e%%:*}}" 2>/dev/null; done
  echo "{M_SOAK_DOCTOR_BEGIN}doctor@@"
  cfstrace doctor --json --attach-cycles {ATTACH_CYCLES}
  echo
  echo "{M_SOAK_DOCTOR_END}doctor rc=$?@@"
fi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console as the guest prints it, kernel messages in between, read back.
    #[test]
    fn guest_console_is_read_back() {
        let text = format!(
            "{M_SOAK_RSS}5 16000@@\n{M_SOAK_RSS}10 16100@@\n[   12.5] random: crng init done\n\
             {M_SOAK_RSS}15 16200@@\n{M_SOAK_RSS}20 16200@@\n{M_SOAK_RSS}25 16210@@\n\
             {M_SOAK_LIVE}41 1 1 c40@@\n{M_SOAK_LIVE}42 1 0 c41@@\n{M_SOAK_LIVE}43 0 0 c42@@\n\
             {M_SOAK_LOSS}{{\"kind\":\"loss\",\"ringbuf_full\":3,\"unsent_full\":1}}@@\n\
             {M_SOAK_END}record=0 made=50 callbacks=900 ended=1@@\n\
             [   30.1] WARNING: CPU: 0 PID: 1 at kernel/sched/fair.c:1 x\n\
             {M_SOAK_DOCTOR_BEGIN}doctor@@\n{{\"checks\":{{\"leakcheck\":{{\"ok\":true,\"leaked\":false}}}}}}\n\
             {M_SOAK_DOCTOR_END}doctor rc=0@@\n"
        );
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let r = guest_report(&lines, 24.0).unwrap();
        assert_eq!(r.rss.len(), 5);
        assert_eq!(r.record_status, Some(0));
        assert_eq!(
            (r.cgroups_made, r.callbacks, r.capture_ended),
            (50, 900, true)
        );
        assert_eq!(r.live_with_callbacks, 2);
        assert_eq!(r.unnamed_live, ["c41"]);
        assert_eq!(r.lost, 4);
        assert_eq!(r.oops.len(), 1, "{:?}", r.oops);
        assert_eq!(r.leakcheck["ok"], true);
        let problems = r.problems(&SoakLimits::default());
        assert!(
            problems.iter().any(|p| p.contains("unnamed")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("lost")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("kernel log")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_guest_script_is_in_init() {
        assert!(guest::init_script().contains("cfstrace.soak=*) SOAK="));
        assert!(guest::init_script().contains(M_SOAK_END));
    }
}
