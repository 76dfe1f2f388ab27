//! Load the embedded programs and attach them, choosing per probe the best attach style the
//! running kernel offers (fentry, then kprobe, then tracepoints for the three frames: the
//! period timer, the async-unthrottle CSD and the timer-interrupt span), and saying for each
//! probe how it was attached or why not.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tracer_ebpf::{
    ATTACHED_ARMED, ATTACHED_SLOT, Frames, HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS,
    HOW_RUNNABLE, HOW_UNTHROTTLE, LOSS_CGROUP_READ, LOSS_CSD_MISSED_EXIT, LOSS_CSD_UNMATCHED_EXIT,
    LOSS_MISSED_EXIT, LOSS_RINGBUF_FULL, LOSS_SPAN_MISSED_EXIT, LOSS_SPAN_UNMATCHED_EXIT,
    LOSS_UNMATCHED_EXIT, LOSS_UNSENT_FULL, OFFSET_UNAVAILABLE, RingConfig, SpanTotals,
    UnsentPeriods,
};

use crate::bpf::btf::{self, BtfError, KernelBtf, LayoutFacts};
use crate::bpf::kallsyms::{KallsymsError, Symbols};
use crate::bpf::privileges::{self, PrivilegeError};
use crate::capture::{LossRecord, ProbeStatus};

pub const PERIOD_TIMER_FN: &str = "sched_cfs_period_timer";
pub const DISTRIBUTE_FN: &str = "distribute_cfs_runtime";
pub const UNTHROTTLE_FN: &str = "unthrottle_cfs_rq";
pub const ENQUEUE_ENTITY_FN: &str = "enqueue_entity";
pub const ENQUEUE_TASK_FAIR_FN: &str = "enqueue_task_fair";
pub const NR_RUNNING_TP: &str = "sched_update_nr_running_tp";
/// The CSD that unthrottles a CPU's remote-queued cfs_rqs (6.3+, commit 8ad075c2eb1f).
pub const CSD_UNTHROTTLE_FN: &str = "__cfsb_csd_unthrottle";
pub const CSD_ENTRY_TP: &str = "csd_function_entry";
pub const CSD_EXIT_TP: &str = "csd_function_exit";
/// The timer interrupt's handler: its span holds every period-timer callback it runs.
pub const HRTIMER_INTERRUPT_FN: &str = "hrtimer_interrupt";
/// x86 `irq_vectors` tracepoints around the local APIC timer interrupt.
pub const LOCAL_TIMER_ENTRY_TP: &str = "local_timer_entry";
pub const LOCAL_TIMER_EXIT_TP: &str = "local_timer_exit";

/// Probe names as they appear in the report's `probes` section.
pub const PROBE_PERIOD_TIMER: &str = "period_timer";
pub const PROBE_DISTRIBUTE: &str = "distribute";
pub const PROBE_UNTHROTTLE: &str = "unthrottle";
pub const PROBE_ENQUEUE: &str = "enqueue";
pub const PROBE_RUNNABLE: &str = "runnable";
pub const PROBE_ASYNC_UNTHROTTLE: &str = "async_unthrottle";
pub const PROBE_IRQ_SPAN: &str = "irq_span";

/// The probe families `--probes` chooses from, named as in the report's `probes` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ProbeFamily {
    /// The period-timer callback's frame: its IRQs-off time, CPU, cgroup, period and quota.
    PeriodTimer,
    /// The timer interrupt around the callbacks (the watchdog's headroom).
    IrqSpan,
    /// `distribute_cfs_runtime` passes per callback (needs period_timer).
    Distribute,
    /// cfs_rqs unthrottled per callback, their CPUs and queued tasks (needs period_timer).
    Unthrottle,
    /// Entities enqueued per callback (needs period_timer).
    Enqueue,
    /// Tasks made runnable per callback (needs period_timer).
    Runnable,
    /// The async-unthrottle CSD of 6.3+ kernels.
    AsyncUnthrottle,
}

impl ProbeFamily {
    pub const ALL: [ProbeFamily; 7] = [
        ProbeFamily::PeriodTimer,
        ProbeFamily::IrqSpan,
        ProbeFamily::Distribute,
        ProbeFamily::Unthrottle,
        ProbeFamily::Enqueue,
        ProbeFamily::Runnable,
        ProbeFamily::AsyncUnthrottle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeFamily::PeriodTimer => PROBE_PERIOD_TIMER,
            ProbeFamily::IrqSpan => PROBE_IRQ_SPAN,
            ProbeFamily::Distribute => PROBE_DISTRIBUTE,
            ProbeFamily::Unthrottle => PROBE_UNTHROTTLE,
            ProbeFamily::Enqueue => PROBE_ENQUEUE,
            ProbeFamily::Runnable => PROBE_RUNNABLE,
            ProbeFamily::AsyncUnthrottle => PROBE_ASYNC_UNTHROTTLE,
        }
    }

    /// The counting probes count inside the period-timer frame: without it they count nothing.
    fn needs_period_timer(self) -> bool {
        matches!(
            self,
            ProbeFamily::Distribute
                | ProbeFamily::Unthrottle
                | ProbeFamily::Enqueue
                | ProbeFamily::Runnable
        )
    }
}

/// Which probe families to attach (`--probes`); every one by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSet {
    chosen: Vec<ProbeFamily>,
    /// Given by the user (then the families left out say so).
    requested: bool,
}

impl Default for ProbeSet {
    fn default() -> Self {
        Self {
            chosen: ProbeFamily::ALL.to_vec(),
            requested: false,
        }
    }
}

impl ProbeSet {
    /// `--probes LIST`: a counting probe without the period-timer frame counts nothing, so
    /// asking for one alone is an error rather than a silent empty figure.
    pub fn requested(list: &[ProbeFamily]) -> Result<Self, String> {
        if list.is_empty() {
            return Err("--probes needs at least one probe family".into());
        }
        if !list.contains(&ProbeFamily::PeriodTimer)
            && let Some(p) = list.iter().find(|p| p.needs_period_timer())
        {
            return Err(format!(
                "--probes {}: it counts inside the period-timer callback; add period_timer",
                p.as_str()
            ));
        }
        let mut chosen = list.to_vec();
        chosen.sort();
        chosen.dedup();
        Ok(Self {
            chosen,
            requested: true,
        })
    }

    pub fn has(&self, p: ProbeFamily) -> bool {
        self.chosen.contains(&p)
    }

    /// The report line of a family left out by `--probes`.
    fn left_out(&self) -> String {
        format!(
            "left out by request (--probes {})",
            self.chosen
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    pub fn is_requested(&self) -> bool {
        self.requested
    }
}

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
    NoFrame {
        backend: &'static str,
        reasons: String,
    },
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
        let tail: String = s
            .chars()
            .rev()
            .take(150)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        s = format!("{head} ... {tail}");
    }
    humanize(&s.replace('\n', " "))
}

/// Say what the common refusals mean instead of only quoting the syscall.
fn humanize(s: &str) -> String {
    let s = s
        .replace(" Verifier output: ", " ")
        .trim_end_matches([' ', ';', '.'])
        .to_string();
    if s.contains("kprobe/type") {
        return format!("this kernel has no kprobe PMU (built without CONFIG_KPROBES) [{s}]");
    }
    if s.contains("BPF_PROG_LOAD") && s.contains("Operation not permitted") {
        return format!(
            "the kernel refused the program (EPERM: BPF trampolines not permitted here) [{s}]"
        );
    }
    s
}

pub struct TracerOptions {
    pub backend: Backend,
    pub btf: Option<PathBuf>,
    pub probes: ProbeSet,
    /// SCHED_FIFO priority of the reader (0: a normal task).
    pub rt_priority: u8,
    /// Ring-buffer bytes; None: [`ringbuf_bytes`] of the CPU count.
    pub ring_buffer: Option<u64>,
}

/// The reader's default real-time priority: the lowest, above every normal task (the storm's
/// busy loops) and below the kernel's own RT threads.
pub const DEFAULT_RT_PRIORITY: u8 = 1;

impl TracerOptions {
    pub fn new(backend: Backend, btf: Option<PathBuf>) -> Self {
        Self {
            backend,
            btf,
            probes: ProbeSet::default(),
            rt_priority: DEFAULT_RT_PRIORITY,
            ring_buffer: None,
        }
    }
}

/// Ring-buffer bytes per CPU: with the reader draining every [`crate::session::DRAIN_INTERVAL`]
/// and woken at half full, a buffer this size per CPU holds well over a second of a co-firing
/// storm's events per CPU.
pub const RINGBUF_BYTES_PER_CPU: u64 = 128 << 10;
pub const RINGBUF_MIN_BYTES: u64 = 4 << 20;
pub const RINGBUF_MAX_BYTES: u64 = 64 << 20;

/// The ring buffer's size for `ncpus` CPUs: a power of two (the kernel's rule) between 4 and
/// 64 MiB.
pub fn ringbuf_bytes(ncpus: u32) -> u64 {
    (u64::from(ncpus.max(1)) * RINGBUF_BYTES_PER_CPU)
        .next_power_of_two()
        .clamp(RINGBUF_MIN_BYTES, RINGBUF_MAX_BYTES)
}

/// Loaded and attached programs. Dropping it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    pub probes: BTreeMap<String, ProbeStatus>,
    /// How the period-timer frame is timed: `fentry`, `kprobe` or `tracepoint`.
    pub frame_backend: &'static str,
    /// How the async-unthrottle CSD frame is timed; None where it is not traced.
    pub async_backend: Option<&'static str>,
    /// How timer-interrupt spans are timed; None where they are not traced.
    pub span_backend: Option<&'static str>,
    pub layout: LayoutFacts,
    /// HOW_* bits of the counting probes that are attached.
    pub attached_bits: u32,
    /// The ring buffer's size.
    pub ringbuf_bytes: u64,
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
        let btf_file = btf::btf_path(opts.btf.as_deref())?;
        // Read and parsed once for the offsets and the fentry checks.
        let kbtf = KernelBtf::read(&btf_file)?;
        let mut layout = kbtf.layout()?;
        let syms = Symbols::load(&[
            PERIOD_TIMER_FN,
            DISTRIBUTE_FN,
            UNTHROTTLE_FN,
            ENQUEUE_ENTITY_FN,
            ENQUEUE_TASK_FAIR_FN,
            CSD_UNTHROTTLE_FN,
            HRTIMER_INTERRUPT_FN,
        ])?;
        let timer_addr = syms
            .addr(PERIOD_TIMER_FN)
            .ok_or(ProbeError::NoPeriodTimer)?;
        layout.layout.period_timer_fn = timer_addr;
        layout.layout.csd_unthrottle_fn = syms.addr(CSD_UNTHROTTLE_FN).unwrap_or(0);

        // fentry resolves its target in the *running* kernel's BTF; --btf only feeds offsets.
        // aya parses the bytes already in memory when they are the running kernel's, and is
        // handed the result so its loader does not parse vmlinux again.
        let kernel_btf = if btf_file == Path::new(btf::SYSFS_VMLINUX_BTF) {
            Btf::parse(kbtf.bytes(), aya::Endianness::default()).ok()
        } else {
            Btf::from_sys_fs()
                .or_else(|_| Btf::parse(kbtf.bytes(), aya::Endianness::default()))
                .ok()
        };
        let ncpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1);
        let ringbuf_bytes = opts.ring_buffer.unwrap_or_else(|| ringbuf_bytes(ncpus));
        let ring = RingConfig {
            wake_at_bytes: ringbuf_bytes / 2,
        };
        let mut ebpf = EbpfLoader::new()
            .btf(kernel_btf.as_ref())
            .override_global("LAYOUT", &layout.layout, true)
            .override_global("RING", &ring, true)
            .map_max_entries("EVENTS", ringbuf_bytes as u32)
            .load(crate::EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;

        let mut t = Attacher {
            ebpf: &mut ebpf,
            btf: kernel_btf.as_ref(),
            kbtf: &kbtf,
            syms: &syms,
            probes: BTreeMap::new(),
        };
        let set = &opts.probes;
        let left_out = set.left_out();
        let skip = |t: &mut Attacher<'_>, p: ProbeFamily| {
            t.probes.insert(p.as_str().into(), not(left_out.clone()));
        };
        let frame_backend = if set.has(ProbeFamily::PeriodTimer) {
            t.attach_frame(opts.backend)?
        } else {
            skip(&mut t, ProbeFamily::PeriodTimer);
            "none"
        };
        let span_backend = if set.has(ProbeFamily::IrqSpan) {
            t.attach_irq_span(opts.backend)
        } else {
            skip(&mut t, ProbeFamily::IrqSpan);
            None
        };
        let mut bits = 0;
        for (family, func, prog, bit) in [
            (
                ProbeFamily::Distribute,
                DISTRIBUTE_FN,
                "distribute",
                HOW_LOOPS,
            ),
            (
                ProbeFamily::Unthrottle,
                UNTHROTTLE_FN,
                "unthrottle",
                HOW_UNTHROTTLE,
            ),
        ] {
            if !set.has(family) {
                skip(&mut t, family);
            } else if t.attach_counter(opts.backend, family.as_str(), func, prog) {
                bits |= bit;
            }
        }
        if set.has(ProbeFamily::Enqueue) {
            bits |= t.attach_enqueue(opts.backend);
        } else {
            skip(&mut t, ProbeFamily::Enqueue);
        }
        if !set.has(ProbeFamily::Runnable) {
            skip(&mut t, ProbeFamily::Runnable);
        } else if t.attach_runnable() {
            bits |= HOW_RUNNABLE;
        }
        let async_backend = if set.has(ProbeFamily::AsyncUnthrottle) {
            t.attach_async(opts.backend, bits & HOW_UNTHROTTLE != 0, &layout)
        } else {
            skip(&mut t, ProbeFamily::AsyncUnthrottle);
            None
        };
        let probes = t.probes;

        let mut attached: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut("ATTACHED")
                .ok_or(ProbeError::Missing("map ATTACHED"))?,
        )
        .map_err(|source| ProbeError::Map {
            name: "ATTACHED",
            source,
        })?;
        // Last: arming lets frames open, now that every exit is live and the bits are final.
        attached
            .set(ATTACHED_SLOT, bits | ATTACHED_ARMED, 0)
            .map_err(|source| ProbeError::Map {
                name: "ATTACHED",
                source,
            })?;

        Ok(Tracer {
            ebpf,
            probes,
            frame_backend,
            async_backend,
            span_backend,
            layout,
            attached_bits: bits,
            ringbuf_bytes,
        })
    }

    /// Every cgroup's callbacks whose events were lost, as the kernel summed them (cumulative).
    pub fn unsent_periods(&self) -> Result<Vec<(u64, UnsentPeriods)>, ProbeError> {
        let map = self
            .ebpf
            .map("UNSENT_PERIODS")
            .ok_or(ProbeError::Missing("map UNSENT_PERIODS"))?;
        let m: BpfHashMap<&MapData, u64, UnsentPeriods> =
            BpfHashMap::try_from(map).map_err(|source| ProbeError::Map {
                name: "UNSENT_PERIODS",
                source,
            })?;
        // An entry added or removed during the walk is skipped, never an error.
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// Every CPU's in-kernel timer-interrupt totals (cumulative since attach), by CPU.
    pub fn span_totals(&self) -> Result<Vec<SpanTotals>, ProbeError> {
        let map = self
            .ebpf
            .map("FRAME")
            .ok_or(ProbeError::Missing("map FRAME"))?;
        let arr: PerCpuArray<&MapData, Frames> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: "FRAME",
                source,
            })?;
        let v = arr.get(&0, 0).map_err(|source| ProbeError::Map {
            name: "FRAME",
            source,
        })?;
        Ok(v.iter().map(|f| f.span.totals).collect())
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
        let map = self
            .ebpf
            .map("LOSS")
            .ok_or(ProbeError::Missing("map LOSS"))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: "LOSS",
                source,
            })?;
        let sum = |slot: u32| -> Result<u64, ProbeError> {
            let v = arr.get(&slot, 0).map_err(|source| ProbeError::Map {
                name: "LOSS",
                source,
            })?;
            Ok(v.iter().sum())
        };
        Ok(LossRecord {
            ts_ns,
            ringbuf_full: sum(LOSS_RINGBUF_FULL)?,
            unmatched_exit: sum(LOSS_UNMATCHED_EXIT)?,
            missed_exit: sum(LOSS_MISSED_EXIT)?,
            cgroup_read: sum(LOSS_CGROUP_READ)?,
            csd_unmatched_exit: sum(LOSS_CSD_UNMATCHED_EXIT)?,
            csd_missed_exit: sum(LOSS_CSD_MISSED_EXIT)?,
            span_unmatched_exit: sum(LOSS_SPAN_UNMATCHED_EXIT)?,
            span_missed_exit: sum(LOSS_SPAN_MISSED_EXIT)?,
            unsent_full: sum(LOSS_UNSENT_FULL)?,
        })
    }
}

/// How the async events name their cgroups on this run, when it is not the full story
/// (per-cgroup segments from a probe on `unthrottle_cfs_rq`).
fn async_attribution_note(
    style: &str,
    probed: bool,
    l: &tracer_ebpf::KernelLayout,
) -> Option<String> {
    let missing = |fields: &[(&str, u64)]| -> Vec<String> {
        fields
            .iter()
            .filter(|(_, v)| *v == OFFSET_UNAVAILABLE)
            .map(|(n, _)| n.to_string())
            .collect()
    };
    let chain = [
        ("cfs_rq.tg", l.cfs_rq_tg),
        ("task_group.css.cgroup", l.tg_css_cgroup),
        ("cgroup.kn", l.cgroup_kn),
        ("kernfs_node.id", l.kn_id),
    ];
    if probed {
        let m = missing(&chain);
        return (!m.is_empty()).then(|| {
            format!(
                "the BTF lacks {}: CSD time and counts only, cgroups unresolved",
                m.join(", ")
            )
        });
    }
    let mut fields = vec![
        ("rq.cfsb_csd_list", l.rq_cfsb_csd_list),
        ("cfs_rq.throttled_csd_list", l.cfs_rq_throttled_csd_list),
    ];
    if style == "tracepoint" {
        fields.insert(0, ("rq.cfsb_csd", l.rq_cfsb_csd));
    }
    fields.extend(chain);
    let m = missing(&fields);
    if !m.is_empty() {
        return Some(format!(
            "{UNTHROTTLE_FN} is not probed and the BTF lacks {}: CSD time only, cgroups unresolved",
            m.join(", ")
        ));
    }
    Some(format!(
        "{UNTHROTTLE_FN} is not probed here: cgroups are listed from rq->cfsb_csd_list at CSD \
         entry (up to {} a CSD), and each CSD's time and runnable count are shared by its cgroups",
        tracer_ebpf::MAX_LISTED
    ))
}

struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: Option<&'a Btf>,
    kbtf: &'a KernelBtf,
    syms: &'a Symbols,
    probes: BTreeMap<String, ProbeStatus>,
}

/// Where one program goes, by attach style.
enum Hook<'s> {
    /// kprobe or kretprobe (the program's section says which) on a symbol.
    Kprobe(&'s str),
    Fentry(&'s str),
    Fexit(&'s str),
    RawTp(&'s str),
    /// A BTF-typed raw tracepoint (`tp_btf`, 5.5+): its pointer arguments can be read directly.
    BtfTp(&'s str),
}

impl Attacher<'_> {
    fn load(&mut self, prog: &str, hook: &Hook<'_>) -> Result<(), String> {
        let btf = self.btf;
        let p = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?;
        let conv = |e: aya::programs::ProgramError| chain(&e);
        let no_btf = || "no kernel BTF to resolve fentry/fexit targets".to_string();
        match hook {
            Hook::Kprobe(_) => <&mut KProbe>::try_from(p).map_err(conv)?.load(),
            Hook::Fentry(f) => <&mut FEntry>::try_from(p)
                .map_err(conv)?
                .load(f, btf.ok_or_else(no_btf)?),
            Hook::Fexit(f) => <&mut FExit>::try_from(p)
                .map_err(conv)?
                .load(f, btf.ok_or_else(no_btf)?),
            Hook::RawTp(_) => <&mut RawTracePoint>::try_from(p).map_err(conv)?.load(),
            Hook::BtfTp(tp) => <&mut BtfTracePoint>::try_from(p)
                .map_err(conv)?
                .load(tp, btf.ok_or_else(no_btf)?),
        }
        .map_err(|e| chain(&e))
    }

    fn attach(&mut self, prog: &str, hook: &Hook<'_>) -> Result<(), String> {
        let p = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("program {prog} missing from the object"))?;
        let conv = |e: aya::programs::ProgramError| chain(&e);
        let r = match hook {
            Hook::Kprobe(sym) => <&mut KProbe>::try_from(p)
                .map_err(conv)?
                .attach(*sym, 0)
                .map(drop),
            Hook::Fentry(_) => <&mut FEntry>::try_from(p).map_err(conv)?.attach().map(drop),
            Hook::Fexit(_) => <&mut FExit>::try_from(p).map_err(conv)?.attach().map(drop),
            Hook::RawTp(tp) => <&mut RawTracePoint>::try_from(p)
                .map_err(conv)?
                .attach(tp)
                .map(drop),
            Hook::BtfTp(_) => <&mut BtfTracePoint>::try_from(p)
                .map_err(conv)?
                .attach()
                .map(drop),
        };
        r.map_err(|e| chain(&e))
    }

    /// A program that loaded but could not attach is unloaded again: nothing idle stays in
    /// the kernel of the node we are diagnosing.
    fn load_attach(&mut self, prog: &str, hook: &Hook<'_>) -> Result<(), String> {
        self.load(prog, hook)?;
        self.attach(prog, hook).inspect_err(|_| self.unload(prog))
    }

    fn kprobe(&mut self, prog: &str, symbol: &str) -> Result<(), String> {
        self.load_attach(prog, &Hook::Kprobe(symbol))
    }

    fn fentry(&mut self, prog: &str, func: &str) -> Result<(), String> {
        self.load_attach(prog, &Hook::Fentry(func))
    }

    fn raw_tp(&mut self, prog: &str, tp: &str) -> Result<(), String> {
        self.load_attach(prog, &Hook::RawTp(tp))
    }

    /// A frame's entry/exit pair. Both are loaded (verified) first so that the exit and the
    /// entry go live back to back, exit first: a frame opened before its exit is attached
    /// would never close and would leave the counters running outside the function, while an
    /// exit without an open only bumps a counter.
    fn pair(&mut self, exit: (&str, Hook<'_>), entry: (&str, Hook<'_>)) -> Result<(), String> {
        self.load(exit.0, &exit.1)?;
        if let Err(e) = self.load(entry.0, &entry.1) {
            self.unload(exit.0);
            return Err(e);
        }
        if let Err(e) = self.attach(exit.0, &exit.1) {
            self.unload(exit.0);
            self.unload(entry.0);
            return Err(e);
        }
        if let Err(e) = self.attach(entry.0, &entry.1) {
            self.unload(exit.0);
            self.unload(entry.0);
            return Err(e);
        }
        Ok(())
    }

    /// Unload (and so detach) one program of a pair that did not come up whole.
    fn unload(&mut self, prog: &str) {
        use aya::programs::Program;
        // Unloading detaches the program's links first.
        let _ = match self.ebpf.program_mut(prog) {
            Some(Program::KProbe(p)) => p.unload(),
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::FExit(p)) => p.unload(),
            Some(Program::RawTracePoint(p)) => p.unload(),
            Some(Program::BtfTracePoint(p)) => p.unload(),
            _ => Ok(()),
        };
    }

    fn try_fentry_frame(&mut self) -> Result<(), String> {
        if !self.kbtf.has_func(PERIOD_TIMER_FN) {
            return Err(format!("{PERIOD_TIMER_FN} has no BTF description"));
        }
        self.pair(
            ("period_timer_fexit", Hook::Fexit(PERIOD_TIMER_FN)),
            ("period_timer_fentry", Hook::Fentry(PERIOD_TIMER_FN)),
        )
    }

    fn try_kprobe_frame(&mut self) -> Result<(), String> {
        let sym = self
            .syms
            .symbol(PERIOD_TIMER_FN)
            .ok_or_else(|| format!("{PERIOD_TIMER_FN} is not a symbol"))?
            .to_string();
        self.pair(
            ("period_timer_kretprobe", Hook::Kprobe(&sym)),
            ("period_timer_kprobe", Hook::Kprobe(&sym)),
        )
    }

    /// The entry as a BTF tracepoint where the kernel offers one (a direct load of
    /// `timer->function` on every hrtimer), else a raw tracepoint. Returns the entry's style.
    fn try_tracepoint_frame(&mut self) -> Result<&'static str, String> {
        let exit = ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit"));
        let btf = self.pair(
            ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit")),
            (
                "hrtimer_expire_entry_btf",
                Hook::BtfTp("hrtimer_expire_entry"),
            ),
        );
        if btf.is_ok() {
            return Ok("tp_btf");
        }
        self.pair(
            exit,
            ("hrtimer_expire_entry", Hook::RawTp("hrtimer_expire_entry")),
        )
        .map(|()| "raw_tp")
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
                "fentry" => self.try_fentry_frame().map(|()| ""),
                "kprobe" => self.try_kprobe_frame().map(|()| ""),
                _ => self.try_tracepoint_frame(),
            };
            match r {
                Ok(entry) => {
                    let (how, target) = match style {
                        "tracepoint" => (
                            "tracepoint",
                            format!(
                                "hrtimer_expire_entry/exit ({entry}/raw_tp) filtered on \
                                 sched_cfs_period_timer"
                            ),
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

    fn try_fentry_csd(&mut self) -> Result<(), String> {
        if !self.kbtf.has_func(CSD_UNTHROTTLE_FN) {
            return Err(format!("{CSD_UNTHROTTLE_FN} has no BTF description"));
        }
        self.pair(
            ("csd_unthrottle_fexit", Hook::Fexit(CSD_UNTHROTTLE_FN)),
            ("csd_unthrottle_fentry", Hook::Fentry(CSD_UNTHROTTLE_FN)),
        )
    }

    fn try_kprobe_csd(&mut self) -> Result<(), String> {
        let sym = self
            .syms
            .symbol(CSD_UNTHROTTLE_FN)
            .ok_or_else(|| format!("{CSD_UNTHROTTLE_FN} is not a symbol"))?
            .to_string();
        self.pair(
            ("csd_unthrottle_kretprobe", Hook::Kprobe(&sym)),
            ("csd_unthrottle_kprobe", Hook::Kprobe(&sym)),
        )
    }

    fn try_tracepoint_csd(&mut self) -> Result<(), String> {
        self.pair(
            ("csd_function_exit", Hook::RawTp(CSD_EXIT_TP)),
            ("csd_function_entry", Hook::RawTp(CSD_ENTRY_TP)),
        )
        .map_err(|e| format!("raw_tp {CSD_ENTRY_TP}/exit (6.3+): {e}"))
    }

    /// The async-unthrottle CSD frame, same style order as the period timer. Never fatal: a
    /// kernel without it (pre-6.3) unthrottles everything inside the period timer, which the
    /// period frame already measures. `probed`: `unthrottle_cfs_rq` is attached, so the
    /// kernel side cuts each CSD into per-cgroup segments instead of listing its cfs_rqs.
    fn attach_async(
        &mut self,
        backend: Backend,
        probed: bool,
        layout: &LayoutFacts,
    ) -> Option<&'static str> {
        let (style, st) = self.async_status(backend, probed, layout);
        self.probes.insert(PROBE_ASYNC_UNTHROTTLE.into(), st);
        style
    }

    fn async_status(
        &mut self,
        backend: Backend,
        probed: bool,
        layout: &LayoutFacts,
    ) -> (Option<&'static str>, ProbeStatus) {
        if self.syms.symbol(CSD_UNTHROTTLE_FN).is_none() {
            return (
                None,
                not(format!(
                    "{CSD_UNTHROTTLE_FN} is not in /proc/kallsyms: this kernel unthrottles remote \
                     cfs_rqs inside the period timer (pre-6.3), which the period_timer probe measures"
                )),
            );
        }
        let order: &[&'static str] = match backend {
            Backend::Auto => &["fentry", "kprobe", "tracepoint"],
            Backend::Fentry => &["fentry"],
            Backend::Kprobe => &["kprobe"],
            Backend::Tracepoint => &["tracepoint"],
        };
        let mut reasons = Vec::new();
        for &style in order {
            let r = match style {
                "fentry" => self.try_fentry_csd(),
                "kprobe" => self.try_kprobe_csd(),
                _ => self.try_tracepoint_csd(),
            };
            match r {
                Ok(()) => {
                    let (how, target) = match style {
                        "tracepoint" => (
                            "tracepoint",
                            format!("{CSD_ENTRY_TP}/exit (raw_tp) filtered on {CSD_UNTHROTTLE_FN}"),
                        ),
                        s => (s, CSD_UNTHROTTLE_FN.to_string()),
                    };
                    let mut st = ok(how, &target);
                    let mut notes = Vec::new();
                    if !reasons.is_empty() {
                        notes.push(format!("fell back: {}", reasons.join("; ")));
                    }
                    if let Some(n) = async_attribution_note(style, probed, &layout.layout) {
                        notes.push(n);
                    }
                    if !notes.is_empty() {
                        st.reason = Some(notes.join("; "));
                    }
                    return (Some(style), st);
                }
                Err(e) => reasons.push(format!("{style}: {e}")),
            }
        }
        (None, not(reasons.join("; ")))
    }

    fn try_kprobe_span(&mut self) -> Result<(), String> {
        let sym = self
            .syms
            .symbol(HRTIMER_INTERRUPT_FN)
            .ok_or_else(|| format!("{HRTIMER_INTERRUPT_FN} is not a symbol"))?
            .to_string();
        self.pair(
            ("irq_span_kretprobe", Hook::Kprobe(&sym)),
            ("irq_span_kprobe", Hook::Kprobe(&sym)),
        )
    }

    fn try_tracepoint_span(&mut self) -> Result<(), String> {
        self.pair(
            ("local_timer_exit", Hook::RawTp(LOCAL_TIMER_EXIT_TP)),
            ("local_timer_entry", Hook::RawTp(LOCAL_TIMER_ENTRY_TP)),
        )
        .map_err(|e| format!("raw_tp {LOCAL_TIMER_ENTRY_TP}/exit (x86 irq_vectors): {e}"))
    }

    /// The timer-interrupt span frame. Never fatal: without it headroom falls back to the
    /// worst single callback (and CSD).
    ///
    /// The x86 `local_timer_entry/exit` raw tracepoints come first, also under `auto`: they
    /// bracket the whole timer interrupt (tick work included, in any timer mode), are the
    /// cheapest hook, and attaching them flips two static keys once, where a probe on
    /// `hrtimer_interrupt`'s ftrace site is re-patched on every ftrace change (each fentry
    /// attach or detach elsewhere) while every CPU keeps running it. Under multi-threaded TCG
    /// that re-patching hung Debian 6.1 guests within 20 attach/detach cycles (kprobe span +
    /// fentry elsewhere, and fentry span alike; single-threaded TCG passed, so an emulation
    /// race, but the patching of the hottest path is real); the tracepoints never did.
    /// kprobe/kretprobe is the fallback (non-x86, or no such tracepoints). fentry/fexit is not
    /// used here: a BPF trampoline on the timer interrupt buys nothing over the tracepoints
    /// and adds exactly that patching; `--backend fentry` gets the tracepoints and says so.
    fn attach_irq_span(&mut self, backend: Backend) -> Option<&'static str> {
        let order: &[&'static str] = match backend {
            Backend::Auto => &["tracepoint", "kprobe"],
            Backend::Fentry | Backend::Tracepoint => &["tracepoint"],
            Backend::Kprobe => &["kprobe"],
        };
        let mut notes = Vec::new();
        if backend == Backend::Fentry {
            notes.push(format!(
                "--backend fentry: no BPF trampoline on {HRTIMER_INTERRUPT_FN} (the timer \
                 interrupt), timed with the local_timer tracepoints instead"
            ));
        }
        let mut failed = Vec::new();
        for &style in order {
            let r = match style {
                "kprobe" => self.try_kprobe_span(),
                _ => self.try_tracepoint_span(),
            };
            match r {
                Ok(()) => {
                    let target = match style {
                        "tracepoint" => format!(
                            "{LOCAL_TIMER_ENTRY_TP}/exit (raw_tp, irq_vectors): the whole local \
                             APIC timer interrupt"
                        ),
                        _ => HRTIMER_INTERRUPT_FN.to_string(),
                    };
                    let mut st = ok(style, &target);
                    if !failed.is_empty() {
                        notes.push(format!("fell back: {}", failed.join("; ")));
                    }
                    if !notes.is_empty() {
                        st.reason = Some(notes.join("; "));
                    }
                    self.probes.insert(PROBE_IRQ_SPAN.into(), st);
                    return Some(style);
                }
                Err(e) => failed.push(format!("{style}: {e}")),
            }
        }
        notes.extend(failed);
        notes.push("headroom falls back to the worst single callback".into());
        self.probes
            .insert(PROBE_IRQ_SPAN.into(), not(notes.join("; ")));
        None
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
                    let target = if style == "kprobe" {
                        symbol.clone()
                    } else {
                        func.to_string()
                    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sets() {
        let all = ProbeSet::default();
        assert!(ProbeFamily::ALL.iter().all(|&p| all.has(p)));
        assert!(!all.is_requested());
        let min = ProbeSet::requested(&[ProbeFamily::IrqSpan, ProbeFamily::PeriodTimer]).unwrap();
        assert!(min.has(ProbeFamily::PeriodTimer) && min.has(ProbeFamily::IrqSpan));
        assert!(!min.has(ProbeFamily::Unthrottle));
        assert_eq!(
            min.left_out(),
            "left out by request (--probes period_timer,irq_span)"
        );
        // The P2 baseline: the span alone.
        assert!(ProbeSet::requested(&[ProbeFamily::IrqSpan]).is_ok());
        // A counter without the frame it counts in is refused, not silently empty.
        let e = ProbeSet::requested(&[ProbeFamily::IrqSpan, ProbeFamily::Enqueue]).unwrap_err();
        assert!(e.contains("enqueue") && e.contains("period_timer"), "{e}");
        assert!(ProbeSet::requested(&[]).is_err());
    }

    #[test]
    fn ring_buffer_follows_the_cpu_count() {
        assert_eq!(ringbuf_bytes(1), 4 << 20);
        assert_eq!(ringbuf_bytes(8), 4 << 20);
        assert_eq!(ringbuf_bytes(64), 8 << 20);
        assert_eq!(ringbuf_bytes(100), 16 << 20);
        assert_eq!(ringbuf_bytes(384), 64 << 20);
        assert_eq!(ringbuf_bytes(10_000), 64 << 20);
        for n in [1, 3, 48, 100, 384] {
            assert!(ringbuf_bytes(n).is_power_of_two());
        }
    }
}
