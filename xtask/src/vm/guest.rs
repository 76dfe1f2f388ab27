//! A newc cpio initramfs written directly (no root needed for /dev nodes): busybox-static, the
//! static cfstrace binary (the very file the README ships, no shared library), and an /init
//! shell script.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The YARN container the guest throttles (`cfstrace_tests::CONTAINER`, the container from the
/// original incident, of `cfstrace_tests::APPLICATION`), under the cgroup2 root.
pub const CGROUP: &str = "storm/hadoop-yarn/container_e06_1512098667219_988894_01_000020";

/// Console markers the init prints and `super::console` parses. Those that carry a value end in `@@`.
pub const M_INIT: &str = "@@CFSTRACE-INIT@@";
/// `@@CFSTRACE-FACT key=value@@`: a fact about the guest kernel, read without cfstrace.
pub const M_FACT: &str = "@@CFSTRACE-FACT ";
/// `@@CFSTRACE-RUN <backend>@@`: cfstrace is about to run with this backend (the first one marks
/// the point after which a kernel problem is ours, not a boot flake).
pub const M_RUN: &str = "@@CFSTRACE-RUN ";
pub const M_DOCTOR_BEGIN: &str = "@@CFSTRACE-DOCTOR-BEGIN ";
/// `@@CFSTRACE-DOCTOR-END <backend> rc=N@@`
pub const M_DOCTOR_END: &str = "@@CFSTRACE-DOCTOR-END ";
/// `@@CFSTRACE-RECORD <backend>@@`: `cfstrace record` starts.
pub const M_RECORD: &str = "@@CFSTRACE-RECORD ";
pub const M_BEGIN: &str = "@@CFSTRACE-REPORT-BEGIN ";
pub const M_END: &str = "@@CFSTRACE-REPORT-END ";
/// `@@CFSTRACE-RC <backend> record=N report=N@@`
pub const M_RC: &str = "@@CFSTRACE-RC ";
pub const M_DONE: &str = "@@CFSTRACE-DONE@@";
/// `@@CFSTRACE-POKES n@@`: text-poke stress rounds done so far.
pub const M_POKES: &str = "@@CFSTRACE-POKES ";
/// Between these (`... cofire@@`): the co-firing run's capture digest: its `irq_span` lines
/// verbatim, `P <cpu> <span_ts_ns> <callbacks> <sum of duration_ns> <distinct cgroups>` per
/// timer-interrupt span (span_ts_ns 0: callbacks outside any span) and `G <cgroup id>
/// <callbacks>` per cgroup, reduced from the `period` lines by awk in the guest
/// (`cfstrace_tests::expect::CaptureDigest`).
pub const M_CAPTURE_BEGIN: &str = "@@CFSTRACE-CAPTURE-BEGIN ";
pub const M_CAPTURE_END: &str = "@@CFSTRACE-CAPTURE-END ";
/// Between these (`... <backend>@@`): a backend run's whole capture, verbatim (only with
/// `cfstrace.savecap=1`, for `cargo xtask vm --save-captures`).
pub const M_CAPFILE_BEGIN: &str = "@@CFSTRACE-CAPFILE-BEGIN ";
pub const M_CAPFILE_END: &str = "@@CFSTRACE-CAPFILE-END ";
/// Between these (`... <comparison>@@`, `... <comparison> diff=N@@`): `cfstrace diff --json`
/// of one comparison of the `cfstrace.diff=1` boot ([`init_diff`]).
pub const M_DIFF_BEGIN: &str = "@@CFSTRACE-DIFF-BEGIN ";
pub const M_DIFF_END: &str = "@@CFSTRACE-DIFF-END ";
/// Between these (`... <phase>@@`, `... <phase> record=N report=N@@`): the `report --json` of
/// one phase's capture in that boot.
pub const M_DIFF_REPORT_BEGIN: &str = "@@CFSTRACE-DIFF-REPORT-BEGIN ";
pub const M_DIFF_REPORT_END: &str = "@@CFSTRACE-DIFF-REPORT-END ";
/// The suite whose guest runs the comparisons: timers co-fire there (before 6.4), so each
/// interrupt holds every throttled cgroup's callback. One kernel is enough: they test `diff`,
/// not the kernel.
pub const DIFF_SUITE: &str = "bookworm";
/// The comparisons' cgroups (2 % of a CPU each: 0.48 of the one vCPU), and how many of them the
/// `lifted` phase frees of their quota.
pub const DIFF_CGROUPS: u32 = 24;
pub const DIFF_LIFTED: u32 = 16;

/// Between these (`... rc=N@@` at the end): `cfstrace doctor --json`, once a boot, in a run
/// of its own named [`FINDINGS_RUN`], judged by `cfstrace_tests::expect::check_findings`.
pub const M_DOCTORJSON_BEGIN: &str = "@@CFSTRACE-DOCTORJSON-BEGIN ";
pub const M_DOCTORJSON_END: &str = "@@CFSTRACE-DOCTORJSON-END ";
pub const FINDINGS_RUN: &str = "findings";
/// A quota'd cgroup with a 4 ms period, made for the findings run only.
const SHORT_PERIOD_CGROUP: &str = "cfstrace-short-period";

/// The co-firing run's name in the RUN/RECORD/REPORT/RC markers.
pub const COFIRE_RUN: &str = "cofire";
/// The storm ramps' name in the RUN/RECORD/REPORT/RC markers; their "report" is one JSON
/// object: both ramps' `cfstrace.storm/1` summaries, exit statuses, and what was left behind.
pub const STORM_RUN: &str = "storm";
/// The kernel the storm ramps run in: timers co-fire there (before 6.4), so a ramp grows the
/// work in one interrupt.
pub const STORM_SUITE: &str = "bookworm";

/// The parent of the co-firing cgroups (under the cgroup2 root): `cofire/c0` .. `cofire/cN-1`.
pub const COFIRE_PARENT: &str = "cofire";

const BUSYBOX: &str = "/bin/busybox";

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// An in-memory archive; paths are stored without the leading '/'.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn norm(path: &str) -> String {
        path.trim_start_matches('/')
            .trim_end_matches('/')
            .to_string()
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            self.entries.entry(acc.clone()).or_insert(Entry::Dir);
        }
    }

    pub fn dir(&mut self, path: &str) {
        let p = Self::norm(path);
        self.parents(&p);
        self.entries.entry(p).or_insert(Entry::Dir);
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let p = Self::norm(path);
        self.parents(&p);
        self.entries.insert(p, Entry::File { data, mode });
    }

    /// Copy a host file (following symlinks) to `path`, keeping its permission bits.
    pub fn copy(&mut self, path: &str, src: &Path) -> Result<()> {
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mode = fs::metadata(src)?.permissions().mode() & 0o7777;
        self.file(path, data, mode);
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let p = Self::norm(path);
        self.parents(&p);
        self.entries.insert(p, Entry::Symlink(target.to_string()));
    }

    pub fn chardev(&mut self, path: &str, major: u32, minor: u32) {
        let p = Self::norm(path);
        self.parents(&p);
        self.entries.insert(p, Entry::CharDev { major, minor });
    }

    /// The archive in newc format (parents sort before children in a BTreeMap).
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, e)) in (1u32..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir) { 2 } else { 1 };
            write_entry(&mut out, ino, mode, nlink, rdev, name, data);
        }
        write_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }

    pub fn write(&self, path: &Path) -> Result<u64> {
        let data = self.to_newc();
        let mut f =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&data)?;
        Ok(data.len() as u64)
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: reproducible archives
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Absolute paths of the shared libraries (and loader) `ldd` names for `bin`; empty if static.
pub fn shared_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", bin.display(), err.trim());
    }
    Ok(parse_ldd(&text))
}

pub fn parse_ldd(text: &str) -> Vec<String> {
    let mut libs = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if l.contains("not found") {
            continue;
        }
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/'))
            && !libs.iter().any(|x| x == p)
        {
            libs.push(p.to_string());
        }
    }
    libs
}

/// What makes an ELF executable dynamic: its interpreter (`PT_INTERP`) and the libraries it
/// needs (`DT_NEEDED`); empty for a static (or static-pie) executable.
pub fn dynamic_needs(data: &[u8]) -> Result<Vec<String>> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = elf.endian();
    let mut needs = Vec::new();
    for ph in elf.elf_program_headers() {
        if let Some(interp) = ph.interpreter(endian, data)? {
            needs.push(format!("interpreter {}", String::from_utf8_lossy(interp)));
        }
    }
    let dynamic = elf.elf_section_table().dynamic_table(endian, data)?;
    for d in &dynamic {
        if d.tag == object::elf::DT_NEEDED {
            needs.push(format!(
                "needs {}",
                String::from_utf8_lossy(dynamic.string(d)?)
            ));
        }
    }
    Ok(needs)
}

/// What the guest needs: busybox, /dev/console, an /init, and (optionally) the static cfstrace.
pub fn build(cfstrace: Option<&Path>) -> Result<Archive> {
    let mut a = Archive::default();
    for d in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/etc",
        "/root",
        "/run",
    ] {
        a.dir(d);
    }
    a.chardev("/dev/console", 5, 1);
    a.chardev("/dev/null", 1, 3);
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (cargo xtask setup)");
    }
    if !dynamic_needs(&fs::read(busybox)?)?.is_empty() {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static, not busybox");
    }
    a.copy(BUSYBOX, busybox)?;
    a.symlink("/bin/sh", "busybox");
    a.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    a.file("/etc/group", b"root:x:0:\n".to_vec(), 0o644);
    if let Some(bin) = cfstrace {
        // No libraries copied: the guest runs the file a node gets, so a dynamic one would hide
        // what a node without the build host's libc would see.
        let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        let needs = dynamic_needs(&data)
            .with_context(|| format!("reading {} as an ELF executable", bin.display()))?;
        if !needs.is_empty() {
            bail!(
                "{} is dynamically linked ({}): the guests boot the static binary only, \
                 target/{}/release/cfstrace (cargo build --release -p tracer --target {})",
                bin.display(),
                needs.join(", "),
                crate::cmd::STATIC_TARGET,
                crate::cmd::STATIC_TARGET
            );
        }
        a.copy("/usr/bin/cfstrace", bin)?;
    }
    a.file("/init", init_script().into_bytes(), 0o755);
    Ok(a)
}

/// The start of every guest's /init after its `#!` line (the bench guests' too): busybox's
/// applets installed, PATH, and proc, sys, dev, tmp, tracefs, debugfs, bpf and cgroup2 mounted.
pub const INIT_MOUNTS: &str = "/bin/busybox mkdir -p /proc\n\
/bin/busybox mount -t proc proc /proc\n\
/bin/busybox --install -s\n\
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root\n\
mount -t sysfs sysfs /sys\n\
mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
mount -t tmpfs tmpfs /tmp\n\
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null\n\
mount -t bpf bpf /sys/fs/bpf\n\
mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
";

/// The guest's /init, driven by the kernel command line:
/// - `cfstrace.mode=scenario` (default): print the kernel's facts, throttle the YARN container,
///   then for each backend of `cfstrace.backends=B1,B2,...` (default auto) run
///   `cfstrace doctor --backend B --attach-cycles N` (`cfstrace.cycles=N`, default 20) and
///   `cfstrace record --backend B` (`cfstrace.duration=D`, default 8s) + `report --json`, one
///   after the other in this boot, each between markers;
/// - `cfstrace.mode=facts`: print the facts and power off;
/// - `cfstrace.mode=pokestress`: the storm plus `cfstrace.pokes=N` rounds of kernel text patching
///   without cfstrace (a tracepoint's static key and the ftrace site of sched_cfs_period_timer
///   switched on and off), to tell kernel/emulator text-patching trouble from ours;
/// - `cfstrace.cpumax=QUOTA,PERIOD` (default 5000,10000) is the container's cpu.max;
/// - `cfstrace.busy=N` (default 4) busy loops run in the container;
/// - `cfstrace.loglevel=L` (default off): every doctor and record runs with `--log-level L`;
/// - `cfstrace.cofire=N` (default 0: none): after the backends, the co-firing storm: the YARN
///   loops stop, N cgroups under `cofire/` get one busy loop each and then, in one tight loop,
///   the same cpu.max (`cfstrace.cofiremax=QUOTA,PERIOD`, default 1000,100000), and
///   `cfstrace record --backend auto` + `report --json` run, plus the capture digest.
pub fn init_script() -> String {
    format!(
        "{}{}{}{}{}{}finish\n",
        init_head(),
        init_runs(),
        init_cofire(),
        init_diff(),
        init_storm(),
        crate::soak::init_soak()
    )
}

/// The /init's start: the mounts, the kernel command line, its helpers and the kernel's facts.
fn init_head() -> String {
    let functions = cfstrace_tests::expect::FUNCTIONS.join("|");
    let direct = cfstrace_tests::expect::DIRECT_CALL_FNS.join("|");
    let raw_tps = cfstrace_tests::expect::RAW_TPS.join("|");
    format!(
        r#"#!/bin/sh
# cfstrace VM init (generated by cargo xtask vm)
{INIT_MOUNTS}echo "{M_INIT} $(uname -r)"

BACKENDS=auto
MODE=scenario
CPUMAX="5000 10000"
BUSY=4
CYCLES=20
DURATION=8s
POKES=200
COFIRE=0
COFIREMAX="1000 100000"
SAVECAP=0
LOGLEVEL=off
STORM=0
DIFF=0
SOAK=0
FINDINGS=1
for w in $(cat /proc/cmdline); do
  case "$w" in
    cfstrace.backends=*) BACKENDS="$(echo "${{w#cfstrace.backends=}}" | tr , ' ')" ;;
    cfstrace.mode=*) MODE="${{w#cfstrace.mode=}}" ;;
    cfstrace.cpumax=*) CPUMAX="$(echo "${{w#cfstrace.cpumax=}}" | tr , ' ')" ;;
    cfstrace.busy=*) BUSY="${{w#cfstrace.busy=}}" ;;
    cfstrace.cycles=*) CYCLES="${{w#cfstrace.cycles=}}" ;;
    cfstrace.duration=*) DURATION="${{w#cfstrace.duration=}}" ;;
    cfstrace.pokes=*) POKES="${{w#cfstrace.pokes=}}" ;;
    cfstrace.cofire=*) COFIRE="${{w#cfstrace.cofire=}}" ;;
    cfstrace.cofiremax=*) COFIREMAX="$(echo "${{w#cfstrace.cofiremax=}}" | tr , ' ')" ;;
    cfstrace.savecap=*) SAVECAP="${{w#cfstrace.savecap=}}" ;;
    cfstrace.loglevel=*) LOGLEVEL="${{w#cfstrace.loglevel=}}" ;;
    cfstrace.storm=*) STORM="${{w#cfstrace.storm=}}" ;;
    cfstrace.diff=*) DIFF="${{w#cfstrace.diff=}}" ;;
    cfstrace.soak=*) SOAK="${{w#cfstrace.soak=}}" ;;
    cfstrace.findings=*) FINDINGS="${{w#cfstrace.findings=}}" ;;
  esac
done

finish() {{
  echo "{M_DONE}"
  sync
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
}}

# Facts about this kernel, read without cfstrace (the harness's oracle).
T=/sys/kernel/tracing
fact() {{ echo "{M_FACT}$1=$2@@"; }}

# Run $1 (a backend, or the co-firing run): record DURATION with --backend $2 to
# /tmp/cap.jsonl, then print its report between markers; $rc and $rrc are their exit statuses.
record_report() {{
  echo "{M_RECORD}$1@@"
  cfstrace record --duration "$DURATION" -o /tmp/cap.jsonl --backend "$2" --log-level "$LOGLEVEL"
  rc=$?
  cfstrace report /tmp/cap.jsonl --json > /tmp/report.json 2> /tmp/report.err
  rrc=$?
  echo "{M_BEGIN}$1@@"
  cat /tmp/report.json
  echo
  echo "{M_END}$1@@"
  cat /tmp/report.err
}}
yn() {{ if "$@"; then echo yes; else echo no; fi; }}
fact release "$(uname -r)"
fact ncpus "$(grep -c '^processor' /proc/cpuinfo)"
fact btf "$(yn test -e /sys/kernel/btf/vmlinux)"
fact kprobe_pmu "$(yn test -e /sys/bus/event_source/devices/kprobe)"
fact watchdog_thresh "$(cat /proc/sys/kernel/watchdog_thresh 2>/dev/null)"
awk 'NF == 3 && ($2 == "t" || $2 == "T") {{ n = $3; sub(/\.(isra|constprop|part|lto_priv)\.[0-9]+$/, "", n); print n }}' /proc/kallsyms \
  | grep -xE '{functions}|{direct}|(__traceiter_|__bpf_trace_)({raw_tps})' | sort -u > /tmp/ksyms
awk '{{ print $1 }}' $T/available_filter_functions 2>/dev/null | grep -xE '{functions}' | sort -u > /tmp/fsyms
for f in $(echo '{functions}' | tr '|' ' '); do
  fact "symbol.$f" "$(yn grep -qx "$f" /tmp/ksyms)"
  fact "ftrace.$f" "$(yn grep -qx "$f" /tmp/fsyms)"
done
fact direct_calls "$(yn grep -qxE '{direct}' /tmp/ksyms)"
for t in $(echo '{raw_tps}' | tr '|' ' '); do
  fact "raw_tp.$t" "$(yn grep -qxE "(__traceiter_|__bpf_trace_)$t" /tmp/ksyms)"
done
[ "$MODE" = facts ] && finish

"#
    )
}

/// The storm, the poke stress, and each backend's doctor, record and report.
fn init_runs() -> String {
    let findings = init_findings();
    format!(
        r#"# Real throttling: cpu.max "5000 10000" (default) on a YARN container with busy loops in it.
C=/sys/fs/cgroup/{CGROUP}
echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p "$C"
echo +cpu > /sys/fs/cgroup/storm/cgroup.subtree_control
echo +cpu > /sys/fs/cgroup/storm/hadoop-yarn/cgroup.subtree_control
echo "$CPUMAX" > "$C/cpu.max"
PIDS=
i=0
while [ $i -lt "$BUSY" ]; do
  sh -c 'while :; do :; done' &
  echo $! > "$C/cgroup.procs"
  PIDS="$PIDS $!"
  i=$((i + 1))
done
echo "cfstrace-vm: cpu.max=$(cat "$C/cpu.max") procs=$(cat "$C/cgroup.procs" | tr '\n' ' ')"

if [ "$MODE" = pokestress ]; then
  echo "{M_RUN}pokestress@@"
  echo sched_cfs_period_timer > $T/set_ftrace_filter
  i=0
  while [ $i -lt "$POKES" ]; do
    echo 1 > $T/events/sched/sched_switch/enable
    echo function > $T/current_tracer
    echo 0 > $T/events/sched/sched_switch/enable
    echo nop > $T/current_tracer
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "{M_POKES}$i@@"
  done
  kill -9 $PIDS 2>/dev/null
  finish
fi

if [ "$FINDINGS" = 1 ]; then
{findings}fi
for B in $BACKENDS; do
  echo "{M_RUN}$B@@"
  echo "{M_DOCTOR_BEGIN}$B@@"
  time -o /tmp/time -f '%e %U %S' cfstrace doctor --backend "$B" --attach-cycles "$CYCLES" --log-level "$LOGLEVEL" 2>&1
  drc=$?
  echo "{M_DOCTOR_END}$B rc=$drc cpu=$(tail -n 1 /tmp/time | tr ' ' ,)@@"
  record_report "$B" "$B"
  if [ "$SAVECAP" = 1 ]; then
    echo "{M_CAPFILE_BEGIN}$B@@"
    cat /tmp/cap.jsonl
    echo "{M_CAPFILE_END}$B@@"
  fi
  echo "{M_RC}$B record=$rc report=$rrc@@"
  rm -f /tmp/cap.jsonl /tmp/report.json /tmp/report.err
done
kill -9 $PIDS 2>/dev/null

"#
    )
}

/// `cfstrace doctor --json` once, while the container ($C) is throttled, between the facts its
/// findings are judged by: kallsyms, the burst file, the watchdog sysctls, the cgroups with a
/// quota and their shortest period, and whether $C was throttled across doctor's run.
fn init_findings() -> String {
    format!(
        r#"echo "{M_RUN}{FINDINGS_RUN}@@"
# Two warn paths every kernel here can show: a quota whose period is under 5 ms, and
# hardlockup_panic on while cgroups are throttled (both undone after doctor's run).
mkdir -p /sys/fs/cgroup/{SHORT_PERIOD_CGROUP}
echo "1000 4000" > /sys/fs/cgroup/{SHORT_PERIOD_CGROUP}/cpu.max
HP=$(cat /proc/sys/kernel/hardlockup_panic 2>/dev/null)
[ -n "$HP" ] && echo 1 > /proc/sys/kernel/hardlockup_panic
sleep 1
fact findings.csd_unthrottle "$(grep -c ' __cfsb_csd_unthrottle$' /proc/kallsyms)"
fact findings.throttle_work "$(grep -c ' throttle_cfs_rq_work$' /proc/kallsyms)"
fact findings.burst_file "$(yn test -e "$C/cpu.max.burst")"
for k in hardlockup_panic nmi_watchdog watchdog_thresh; do
  fact "findings.$k" "$(cat /proc/sys/kernel/$k 2>/dev/null)"
done
nq=0
minp=
for f in $(find /sys/fs/cgroup -name cpu.max); do
  read q p < "$f"
  [ "$q" = max ] && continue
  nq=$((nq + 1))
  if [ -z "$minp" ] || [ "$p" -lt "$minp" ]; then minp=$p; fi
done
fact findings.quota_cgroups "$nq"
fact findings.shortest_period_us "$minp"
fact findings.own_quota "/{CGROUP}"
t0=$(awk '$1 == "nr_throttled" {{ print $2 }}' "$C/cpu.stat")
echo "{M_DOCTORJSON_BEGIN}{FINDINGS_RUN}@@"
cfstrace doctor --json --sample 2s 2>/tmp/doctor.err
djrc=$?
echo "{M_DOCTORJSON_END}{FINDINGS_RUN} rc=$djrc@@"
cat /tmp/doctor.err
t1=$(awk '$1 == "nr_throttled" {{ print $2 }}' "$C/cpu.stat")
[ "$t1" -gt "$t0" ] && fact findings.own_throttled "/{CGROUP}"
rmdir /sys/fs/cgroup/{SHORT_PERIOD_CGROUP}
[ -n "$HP" ] && echo "$HP" > /proc/sys/kernel/hardlockup_panic
echo "{M_RC}{FINDINGS_RUN} record=0 report=0@@"
"#
    )
}

/// The co-firing storm and the end.
fn init_cofire() -> String {
    format!(
        r#"# Co-firing: many cgroups with the same period. A period timer is (re)armed with
# hrtimer_forward_now() from its previous expiry (0 when the cgroup is created), so every
# timer of one period expires at the same multiples of it on CLOCK_MONOTONIC, and all those
# pinned to one CPU run back to back in one timer interrupt. The loops go in first (the parent's
# cpu.weight 1 keeps this shell and the recorder ahead of them), then the quotas are written
# together: every timer starts now, on this CPU. A timer stays armed while its cgroup is
# throttled or asked for runtime in the last period: a 1 ms quota is overrun to the next 4 ms
# tick, so each loop runs about a tick and stays throttled for a few periods, 120 of them
# need about 1.2 of the 2 CPUs, and every timer keeps running.
if [ "$COFIRE" -gt 0 ]; then
  sleep 1
  echo "{M_RUN}{COFIRE_RUN}@@"
  CF=/sys/fs/cgroup/{COFIRE_PARENT}
  mkdir -p "$CF"
  echo 1 > "$CF/cpu.weight"
  echo +cpu > "$CF/cgroup.subtree_control"
  CPIDS=
  i=0
  while [ $i -lt "$COFIRE" ]; do
    mkdir "$CF/c$i"
    sh -c 'while :; do :; done' &
    echo $! > "$CF/c$i/cgroup.procs"
    CPIDS="$CPIDS $!"
    i=$((i + 1))
  done
  i=0
  while [ $i -lt "$COFIRE" ]; do
    echo "$COFIREMAX" > "$CF/c$i/cpu.max"
    i=$((i + 1))
  done
  sleep 1
  echo "cfstrace-vm: cofire: $COFIRE cgroups, cpu.max=$(cat "$CF/c0/cpu.max"), $(cat "$CF"/c*/cgroup.procs | wc -l) loops"
  record_report {COFIRE_RUN} auto
  echo "{M_CAPTURE_BEGIN}{COFIRE_RUN}@@"
  awk '
    function v(k,  i, s) {{
      i = index($0, "\"" k "\":"); if (i == 0) return "0"
      s = substr($0, i + length(k) + 3); match(s, /^[0-9]+/); return substr(s, 1, RLENGTH)
    }}
    index($0, "{{\"kind\":\"irq_span\",") == 1 {{ print; next }}
    index($0, "{{\"kind\":\"period\",") == 1 {{
      key = v("cpu") " " v("span_ts_ns"); id = v("cgroup_id")
      n[key]++; d[key] += v("duration_ns"); g[id]++
      if (!((key " " id) in seen)) {{ seen[key " " id] = 1; c[key]++ }}
    }}
    END {{
      for (k in n) printf "P %s %d %.0f %d\n", k, n[k], d[k], c[k]
      for (k in g) printf "G %s %d\n", k, g[k]
    }}' /tmp/cap.jsonl
  echo "{M_CAPTURE_END}{COFIRE_RUN}@@"
  echo "{M_RC}{COFIRE_RUN} record=$rc report=$rrc@@"
  kill -9 $CPIDS 2>/dev/null
fi
"#
    )
}

/// `cfstrace.storm=1`: two `cfstrace storm` ramps of the same shape. The first
/// runs its course (default guard): from its third step its summary checks the forecast. The
/// second has its guard at the mean interrupt span the first ramp measured at its third step
/// (a worst span is the emulator's noise as much as the work: a guard at one was passed only
/// at the last step once), so a span of the second ramp passes it by its third step at the
/// latest and the guard stops it;
/// then no storm cgroup and no worker may be left.
fn init_storm() -> String {
    format!(
        r#"if [ "$STORM" = 1 ]; then
  sleep 1
  echo "{M_RUN}{STORM_RUN}@@"
  echo "{M_RECORD}{STORM_RUN}@@"
  SHAPE="--ramp 8:16:56 --threads 1 --period 50ms --quota 1ms --duration 3s"
  cfstrace storm $SHAPE -o /tmp/ramp.jsonl --json > /tmp/ramp.json 2> /tmp/ramp.err
  rc=$?
  cat /tmp/ramp.err
  THRESH=$(cat /proc/sys/kernel/watchdog_thresh)
  GUARD=$(awk -v t="$THRESH" '/"measured_ns"/ {{ v = $0; gsub(/[^0-9.]/, "", v); printf "%.6f", v / (t * 1e9) * 100; exit }}' /tmp/ramp.json)
  echo "cfstrace-vm: storm: guard at ${{GUARD:-?}} % of watchdog_thresh"
  cfstrace storm $SHAPE --guard "${{GUARD:-0.0001}}" -o /tmp/guard.jsonl --json > /tmp/guard.json 2> /tmp/guard.err
  grc=$?
  cat /tmp/guard.err
  LEFT_CG=$(ls -d /sys/fs/cgroup/cfstrace-storm-* 2>/dev/null | wc -l)
  LEFT_W=$(grep -l '_[_]spin' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)
  echo "{M_BEGIN}{STORM_RUN}@@"
  echo "{{\"ramp_rc\":$rc,\"guard_rc\":$grc,\"guard_pct_asked\":\"${{GUARD}}\",\"left_cgroups\":$LEFT_CG,\"left_workers\":$LEFT_W,\"ramp\":"
  cat /tmp/ramp.json || echo null
  echo ",\"guard\":"
  cat /tmp/guard.json || echo null
  echo "}}"
  echo "{M_END}{STORM_RUN}@@"
  echo "{M_RC}{STORM_RUN} record=$rc report=$grc@@"
fi
"#
    )
}

/// The comparisons of `cfstrace diff` (`cfstrace.diff=1`, one kernel, its own boot on 1 vCPU
/// with the guest's clock counted in instructions: see [`super::boot::Engine::TcgIcount`]).
/// [`DIFF_CGROUPS`] cgroups under `diffstorm/`, one busy loop each, are made afresh for each
/// phase with the same paths (so `diff` pairs them by path and their timers start together),
/// recorded for 5 s, and reported (`report --json` between markers, for the judge):
/// - `short`: every cgroup `1000 50000`;
/// - `lifted`: the same with the quota lifted (`max`) on [`DIFF_LIFTED`] of them, the fix
///   doctor advises: their timers stop, so each interrupt holds a third of the work;
/// - `long`: every cgroup `5000 250000`, the same share with a five times longer period.
///
/// Then `diff short lifted` (`fix`) and `diff short long` (`period`) between markers.
fn init_diff() -> String {
    format!(
        r#"# diff: one storm in three phases, then cfstrace diff of the fix and of the period.
if [ "$DIFF" = 1 ]; then
  DF=/sys/fs/cgroup/diffstorm
  mkdir -p "$DF"
  echo 1 > "$DF/cpu.weight"
  echo +cpu > "$DF/cgroup.subtree_control"
  for phase in "short 1000 50000 0" "lifted 1000 50000 {DIFF_LIFTED}" "long 5000 250000 0"; do
    set -- $phase
    DPIDS=
    i=0
    while [ $i -lt {DIFF_CGROUPS} ]; do
      mkdir "$DF/c$i"
      sh -c 'while :; do :; done' &
      echo $! > "$DF/c$i/cgroup.procs"
      DPIDS="$DPIDS $!"
      i=$((i + 1))
    done
    i=0
    while [ $i -lt {DIFF_CGROUPS} ]; do
      if [ $i -lt "$4" ]; then echo "max $3" > "$DF/c$i/cpu.max"; else echo "$2 $3" > "$DF/c$i/cpu.max"; fi
      i=$((i + 1))
    done
    sleep 1
    cfstrace -q record --duration 5s -o "/tmp/diff-$1.jsonl"
    drc=$?
    kill -9 $DPIDS 2>/dev/null
    sleep 1
    i=0
    while [ $i -lt {DIFF_CGROUPS} ]; do rmdir "$DF/c$i" 2>/dev/null; i=$((i + 1)); done
    cfstrace report "/tmp/diff-$1.jsonl" --json > /tmp/diff-report.json
    rrc=$?
    echo "{M_DIFF_REPORT_BEGIN}$1@@"
    cat /tmp/diff-report.json
    echo
    echo "{M_DIFF_REPORT_END}$1 record=$drc report=$rrc@@"
  done
  for cmp in "fix short lifted" "period short long"; do
    set -- $cmp
    echo "{M_DIFF_BEGIN}$1@@"
    cfstrace diff "/tmp/diff-$2.jsonl" "/tmp/diff-$3.jsonl" --json
    drc=$?
    echo
    echo "{M_DIFF_END}$1 diff=$drc@@"
    NO_COLOR=1 cfstrace diff "/tmp/diff-$2.jsonl" "/tmp/diff-$3.jsonl" | head -n 14
  done
fi
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_parses() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    /// The refusal's reading of ELF files, on real ones: this test binary (linked like the
    /// glibc build, dynamic) and busybox-static.
    #[test]
    fn dynamic_needs_tells_static_from_dynamic() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = dynamic_needs(&me).unwrap();
        assert!(
            needs.iter().any(|n| n.starts_with("interpreter /")),
            "{needs:?}"
        );
        assert!(
            needs.iter().any(|n| n.starts_with("needs libc.so")),
            "{needs:?}"
        );
        let busybox = fs::read(BUSYBOX).expect("busybox-static (cargo xtask setup)");
        assert_eq!(dynamic_needs(&busybox).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn cgroup_is_the_incident_container() {
        assert!(CGROUP.ends_with(&format!("/{}", cfstrace_tests::CONTAINER)));
    }

    /// The guest's capture digest (awk, as generated into /init) says what the oracle's own
    /// reading of the capture says.
    #[test]
    fn capture_digest_awk_matches_the_oracle() {
        let script = init_script();
        let start = script.find("  awk '\n").expect("awk in /init") + "  awk '".len();
        let end = script[start..].find("' /tmp/cap.jsonl").expect("awk's end") + start;
        let program = &script[start..end];
        let capture = "{\"schema\":\"cfstrace.capture/1\",\"host\":{\"cpu\":9}}\n\
            {\"kind\":\"period\",\"ts_ns\":28726123227697,\"cpu\":1,\"duration_ns\":7411,\"cgroup_id\":8291,\"timer\":18446612686530656520,\"flags\":66436,\"span_ts_ns\":28726123226685,\"spread\":0,\"spread_cpus\":\"0-1\"}\n\
            {\"kind\":\"period\",\"ts_ns\":28726123237697,\"cpu\":1,\"duration_ns\":2000,\"cgroup_id\":8292,\"span_ts_ns\":28726123226685}\n\
            {\"kind\":\"period\",\"ts_ns\":28726123247697,\"cpu\":1,\"duration_ns\":1000,\"cgroup_id\":8292,\"span_ts_ns\":28726123226685}\n\
            {\"kind\":\"irq_span\",\"ts_ns\":28726123226685,\"cpu\":1,\"duration_ns\":20751,\"timers\":3,\"timers_ns\":10411,\"flags\":4}\n\
            {\"kind\":\"period\",\"ts_ns\":5,\"cpu\":0,\"duration_ns\":100,\"cgroup_id\":8291,\"span_ts_ns\":0}\n";
        let dir = tempdir();
        let cap = dir.join("cap.jsonl");
        fs::write(&cap, capture).unwrap();
        let out = Command::new(BUSYBOX)
            .args(["awk", program])
            .arg(&cap)
            .output()
            .expect("busybox awk");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let guest = cfstrace_tests::expect::CaptureDigest::parse(&lines);
        assert!(guest.garbled.is_empty(), "{text}");
        assert_eq!(
            guest,
            cfstrace_tests::expect::CaptureDigest::from_capture(capture)
        );
        assert_eq!(guest.by_span[&(1, 28726123226685)], (3, 10411, 2));
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("cfstrace-awk-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.file("/a/b", b"hello".to_vec(), 0o644);
        let out = a.to_newc();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // "a" (dir) precedes "a/b" (file).
        let s = String::from_utf8_lossy(&out);
        let dir = s.find("a\0").unwrap();
        let file = s.find("a/b\0").unwrap();
        assert!(dir < file);
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
    }
}
