//! Load the embedded programs and attach them, choosing per probe the best attach style the
//! running kernel offers (fentry, then kprobe, then the hrtimer tracepoints for the frame), and
//! saying for each probe how it was attached or why not.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{FEntry, FExit, KProbe, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tracer_ebpf::{
    ATTACHED_SLOT, HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_RUNNABLE,
    HOW_UNTHROTTLE, LOSS_CGROUP_READ, LOSS_MISSED_EXIT, LOSS_RINGBUF_FULL, LOSS_UNMATCHED_EXIT,
};

use crate::btf_layout::{self, BtfError, LayoutFacts};
use crate::capture::{LossRecord, ProbeStatus};
use crate::kallsyms::{KallsymsError, Symbols};
use crate::privileges::{self, PrivilegeError};

pub const PERIOD_TIMER_FN: &str = "sched_cfs_period_timer";
pub const DISTRIBUTE_FN: &str = "distribute_cfs_runtime";
pub const UNTHROTTLE_FN: &str = "unthrottle_cfs_rq";
pub const ENQUEUE_ENTITY_FN: &str = "enqueue_entity";
pub const ENQUEUE_TASK_FAIR_FN: &str = "enqueue_task_fair";
pub const NR_RUNNING_TP: &str = "sched_update_nr_running_tp";

/// Probe names as they appear in the report's `probes` section.
pub const PROBE_PERIOD_TIMER: &str = "period_timer";
pub const PROBE_DISTRIBUTE: &str = "distribute";
pub const PROBE_UNTHROTTLE: &str = "unthrottle";
pub const PROBE_ENQUEUE: &str = "enqueue";
pub const PROBE_RUNNABLE: &str = "runnable";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Best per probe: fentry, then kprobe, then tracepoints.
    Auto,
    /// kprobe/kretprobe (works back to RHEL 8 kernels).
    Kprobe,
    /// fentry/fexit (cheapest; needs BTF and trampoline support).
    Fentry,
    /// hrtimer_expire_entry/exit tracepoints: callback time and cgroup only.
    Tracepoint,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kprobe => "kprobe",
            Backend::Fentry => "fentry",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Kallsyms(#[from] KallsymsError),
    #[error(
        "{PERIOD_TIMER_FN} is not in /proc/kallsyms: this kernel has no CFS bandwidth control (CONFIG_CFS_BANDWIDTH) to trace"
    )]
    NoPeriodTimer,
    #[error("loading the embedded eBPF object failed: {0}")]
    Load(String),
    #[error("cannot time the period-timer callback with --backend {backend}: {reasons}")]
    NoFrame { backend: &'static str, reasons: String },
    #[error("eBPF object is missing {0} (build mismatch)")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Full error chain on one line: aya's top-level messages alone ("the program could not be
/// loaded") do not say why; the verifier or errno is in the sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    // Verifier logs are long; the first lines and the last say enough in a report.
    if s.len() > 600 {
        let head: String = s.chars().take(400).collect();
        let tail: String = s.chars().rev().take(150).collect::<Vec<_>>().into_iter().rev().collect();
        s = format!("{head} ... {tail}");
    }
    humanize(&s.replace('\n', " "))
}

/// Say what the common refusals mean instead of only quoting the syscall.
fn humanize(s: &str) -> String {
    let s = s.replace(" Verifier output: ", " ").trim_end_matches([' ', ';', '.']).to_string();
    if s.contains("kprobe/type") {
        return format!("this kernel has no kprobe PMU (built without CONFIG_KPROBES) [{s}]");
    }
    if s.contains("BPF_PROG_LOAD") && s.contains("Operation not permitted") {
        return format!("the kernel refused the program (EPERM: BPF trampolines not permitted here) [{s}]");
    }
    s
}

pub struct TracerOptions {
    pub backend: Backend,
    pub btf: Option<PathBuf>,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    pub probes: BTreeMap<String, ProbeStatus>,
    /// How the period-timer frame is timed: `fentry`, `kprobe` or `tracepoint`.
    pub frame_backend: &'static str,
    pub layout: LayoutFacts,
    /// HOW_* bits of the counting probes that are attached.
    pub attached_bits: u32,
}

fn ok(how: &str, target: &str) -> ProbeStatus {
    ProbeStatus {
        attached: true,
        how: Some(how.to_string()),
        target: Some(target.to_string()),
        reason: None,
    }
}

fn not(reason: String) -> ProbeStatus {
    ProbeStatus {
        attached: false,
        how: None,
        target: None,
        reason: Some(reason),
    }
}

impl Tracer {
    pub fn start(opts: &TracerOptions) -> Result<Tracer, ProbeError> {
        privileges::check()?;
        let btf_file = btf_layout::btf_path(opts.btf.as_deref())?;
        let mut layout = btf_layout::read_layout(&btf_file)?;
        let syms = Symbols::load(&[
            PERIOD_TIMER_FN,
            DISTRIBUTE_FN,
            UNTHROTTLE_FN,
            ENQUEUE_ENTITY_FN,
            ENQUEUE_TASK_FAIR_FN,
        ])?;
        let timer_addr = syms.addr(PERIOD_TIMER_FN).ok_or(ProbeError::NoPeriodTimer)?;
        layout.layout.period_timer_fn = timer_addr;

        // fentry resolves its target in the *running* kernel's BTF; --btf only feeds offsets.
        let kernel_btf = Btf::from_sys_fs()
            .or_else(|_| Btf::parse_file(&btf_file, aya::Endianness::default()))
            .ok();
        let mut ebpf = EbpfLoader::new()
            .override_global("LAYOUT", &layout.layout, true)
            .load(crate::EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;

        let mut t = Attacher {
            ebpf: &mut ebpf,
            btf: kernel_btf.as_ref(),
            btf_file: &btf_file,
            syms: &syms,
            probes: BTreeMap::new(),
        };
        let frame_backend = t.attach_frame(opts.backend)?;
        let mut bits = 0;
        if t.attach_counter(opts.backend, PROBE_DISTRIBUTE, DISTRIBUTE_FN, "distribute") {
            bits |= HOW_LOOPS;
        }
        if t.attach_counter(opts.backend, PROBE_UNTHROTTLE, UNTHROTTLE_FN, "unthrottle") {
            bits |= HOW_UNTHROTTLE;
        }
        bits |= t.attach_enqueue(opts.backend);
        if t.attach_runnable() {
            bits |= HOW_RUNNABLE;
        }
        let probes = t.probes;

        let mut attached: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut("ATTACHED").ok_or(ProbeError::Missing("map ATTACHED"))?,
        )
        .map_err(|source| ProbeError::Map {
            name: "ATTACHED",
            source,
        })?;
        attached
            .set(ATTACHED_SLOT, bits, 0)
            .map_err(|source| ProbeError::Map {
                name: "ATTACHED",
                source,
            })?;

        Ok(Tracer {
            ebpf,
            probes,
            frame_backend,
            layout,
            attached_bits: bits,
        })
    }

    /// The ring buffer of period events (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Missing("map EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Kernel-side loss counters summed over CPUs.
    pub fn losses(&self, ts_ns: u64) -> Result<LossRecord, ProbeError> {
        let map = self.ebpf.map("LOSS").ok_or(ProbeError::Missing("map LOSS"))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name: "LOSS", source })?;
        let sum = |slot: u32| -> Result<u64, ProbeError> {
            let v = arr
                .get(&slot, 0)
                .map_err(|source| ProbeError::Map { name: "LOSS", source })?;
            Ok(v.iter().sum())
        };
        Ok(LossRecord {
            ts_ns,
            ringbuf_full: sum(LOSS_RINGBUF_FULL)?,
            unmatched_exit: sum(LOSS_UNMATCHED_EXIT)?,
            missed_exit: sum(LOSS_MISSED_EXIT)?,
            cgroup_read: sum(LOSS_CGROUP_READ)?,
        })
    }
}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: Option<&'a Btf>,
    btf_file: &'a Path,
    syms: &'a Symbols,
    probes: BTreeMap<String, ProbeStatus>,
}

impl Attacher<'_> {
    fn kprobe(&mut self, prog: &str, symbol: &str) -> Result<(), String> {
        let p: &mut KProbe = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        p.load().map_err(|e| chain(&e))?;
        p.attach(symbol, 0).map(|_| ()).map_err(|e| chain(&e))
    }

    fn fentry(&mut self, prog: &str, func: &str) -> Result<(), String> {
        let btf = self
            .btf
            .ok_or_else(|| "no kernel BTF to resolve fentry targets".to_string())?;
        let p: &mut FEntry = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        p.load(func, btf).map_err(|e| chain(&e))?;
        p.attach().map(|_| ()).map_err(|e| chain(&e))
    }

    fn fexit(&mut self, prog: &str, func: &str) -> Result<(), String> {
        let btf = self
            .btf
            .ok_or_else(|| "no kernel BTF to resolve fexit targets".to_string())?;
        let p: &mut FExit = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        p.load(func, btf).map_err(|e| chain(&e))?;
        p.attach().map(|_| ()).map_err(|e| chain(&e))
    }

    fn raw_tp(&mut self, prog: &str, tp: &str) -> Result<(), String> {
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        p.load().map_err(|e| chain(&e))?;
        p.attach(tp).map(|_| ()).map_err(|e| chain(&e))
    }

    /// Detach a half-attached pair (entry attached, exit failed): an open without a close would
    /// leave the counters running outside the callback.
    fn unload(&mut self, prog: &str) {
        use aya::programs::Program;
        // Unloading detaches the program's links first.
        let _ = match self.ebpf.program_mut(prog) {
            Some(Program::KProbe(p)) => p.unload(),
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::RawTracePoint(p)) => p.unload(),
            _ => Ok(()),
        };
    }

    fn try_fentry_frame(&mut self) -> Result<(), String> {
        if !btf_layout::has_func(self.btf_file, PERIOD_TIMER_FN) {
            return Err(format!("{PERIOD_TIMER_FN} has no BTF description"));
        }
        self.fentry("period_timer_fentry", PERIOD_TIMER_FN)?;
        if let Err(e) = self.fexit("period_timer_fexit", PERIOD_TIMER_FN) {
            self.unload("period_timer_fentry");
            return Err(e);
        }
        Ok(())
    }

    fn try_kprobe_frame(&mut self) -> Result<(), String> {
        let sym = self
            .syms
            .symbol(PERIOD_TIMER_FN)
            .ok_or_else(|| format!("{PERIOD_TIMER_FN} is not a symbol"))?
            .to_string();
        self.kprobe("period_timer_kprobe", &sym)?;
        if let Err(e) = self.kprobe("period_timer_kretprobe", &sym) {
            self.unload("period_timer_kprobe");
            return Err(e);
        }
        Ok(())
    }

    fn try_tracepoint_frame(&mut self) -> Result<(), String> {
        self.raw_tp("hrtimer_expire_entry", "hrtimer_expire_entry")?;
        if let Err(e) = self.raw_tp("hrtimer_expire_exit", "hrtimer_expire_exit") {
            self.unload("hrtimer_expire_entry");
            return Err(e);
        }
        Ok(())
    }

    fn attach_frame(&mut self, backend: Backend) -> Result<&'static str, ProbeError> {
        let order: &[&'static str] = match backend {
            Backend::Auto => &["fentry", "kprobe", "tracepoint"],
            Backend::Fentry => &["fentry"],
            Backend::Kprobe => &["kprobe"],
            Backend::Tracepoint => &["tracepoint"],
        };
        let mut reasons = Vec::new();
        for &style in order {
            let r = match style {
                "fentry" => self.try_fentry_frame(),
                "kprobe" => self.try_kprobe_frame(),
                _ => self.try_tracepoint_frame(),
            };
            match r {
                Ok(()) => {
                    let (how, target) = match style {
                        "tracepoint" => (
                            "tracepoint",
                            "hrtimer_expire_entry/exit (raw_tp) filtered on sched_cfs_period_timer"
                                .to_string(),
                        ),
                        s => (s, PERIOD_TIMER_FN.to_string()),
                    };
                    let mut st = ok(how, &target);
                    if !reasons.is_empty() {
                        st.reason = Some(format!("fell back: {}", reasons.join("; ")));
                    }
                    self.probes.insert(PROBE_PERIOD_TIMER.into(), st);
                    return Ok(style);
                }
                Err(e) => reasons.push(format!("{style}: {e}")),
            }
        }
        Err(ProbeError::NoFrame {
            backend: backend.as_str(),
            reasons: reasons.join("; "),
        })
    }

    /// A counting probe on `func`: fentry then kprobe (per the backend). Returns attached.
    fn attach_counter(&mut self, backend: Backend, probe: &str, func: &str, prog: &str) -> bool {
        let status = self.counter_status(backend, func, prog);
        let attached = status.attached;
        self.probes.insert(probe.into(), status);
        attached
    }

    fn counter_status(&mut self, backend: Backend, func: &str, prog: &str) -> ProbeStatus {
        let order: &[&str] = match backend {
            Backend::Auto => &["fentry", "kprobe"],
            Backend::Fentry => &["fentry"],
            Backend::Kprobe => &["kprobe"],
            Backend::Tracepoint => {
                return not(format!(
                    "the tracepoint backend has no probe on {func}; use --backend auto, kprobe or fentry on a kernel with kprobes or BPF trampolines"
                ));
            }
        };
        let Some(symbol) = self.syms.symbol(func).map(str::to_string) else {
            return not(format!(
                "{func} is not in /proc/kallsyms: inlined or absent in this kernel"
            ));
        };
        let mut reasons = Vec::new();
        for &style in order {
            let r = match style {
                "fentry" => self.fentry(&format!("{prog}_fentry"), func),
                _ => self.kprobe(&format!("{prog}_kprobe"), &symbol),
            };
            match r {
                Ok(()) => {
                    let target = if style == "kprobe" { symbol.clone() } else { func.to_string() };
                    let mut st = ok(style, &target);
                    if !reasons.is_empty() {
                        st.reason = Some(format!("fell back: {}", reasons.join("; ")));
                    }
                    return st;
                }
                Err(e) => reasons.push(format!("{style}: {e}")),
            }
        }
        not(reasons.join("; "))
    }

    /// `enqueue_entity` where it is a symbol; where it is inlined (6.18+ task-based throttle),
    /// `enqueue_task_fair`, which the unthrottle calls per task inside the frame.
    fn attach_enqueue(&mut self, backend: Backend) -> u32 {
        let entity = self.syms.symbol(ENQUEUE_ENTITY_FN).is_some();
        let (func, bit) = if entity {
            (ENQUEUE_ENTITY_FN, HOW_ENQUEUE_ENTITY)
        } else {
            (ENQUEUE_TASK_FAIR_FN, HOW_ENQUEUE_TASK_FAIR)
        };
        let mut st = self.counter_status(backend, func, "enqueue");
        if !entity {
            let note = if st.attached {
                format!(
                    "{ENQUEUE_ENTITY_FN} is inlined in this kernel; counting {ENQUEUE_TASK_FAIR_FN} inside the period-timer callback"
                )
            } else {
                format!("{ENQUEUE_ENTITY_FN} is inlined in this kernel; {ENQUEUE_TASK_FAIR_FN}")
            };
            st.reason = Some(match st.reason.take() {
                Some(r) => format!("{note}: {r}"),
                None => note,
            });
        }
        let attached = st.attached;
        self.probes.insert(PROBE_ENQUEUE.into(), st);
        if attached { bit } else { 0 }
    }

    fn attach_runnable(&mut self) -> bool {
        let st = match self.raw_tp("nr_running", NR_RUNNING_TP) {
            Ok(()) => ok("raw_tp", NR_RUNNING_TP),
            Err(e) => not(format!("raw_tp {NR_RUNNING_TP}: {e}")),
        };
        let attached = st.attached;
        self.probes.insert(PROBE_RUNNABLE.into(), st);
        attached
    }
}
