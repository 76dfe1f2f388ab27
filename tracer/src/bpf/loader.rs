//! Load the embedded object with the running kernel's offsets, attach every probe family the
//! user asked for through the one ladder ([`super::attach`]) over the compat table
//! ([`super::compat`]), arm the frames, and hand out the maps the session reads.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::{Btf, Ebpf, EbpfLoader};
use tracer_ebpf::{
    ATTACHED_ARMED, ATTACHED_SLOT, Frames, HOW_UNTHROTTLE, LOSS_CGROUP_READ, LOSS_CSD_MISSED_EXIT,
    LOSS_CSD_UNMATCHED_EXIT, LOSS_MISSED_EXIT, LOSS_RINGBUF_FULL, LOSS_SPAN_MISSED_EXIT,
    LOSS_SPAN_UNMATCHED_EXIT, LOSS_UNMATCHED_EXIT, LOSS_UNSENT_FULL, OFFSET_UNAVAILABLE, OPEN_CSD,
    OPEN_PERIOD, OPEN_SPAN, RingConfig, SpanTotals, UnsentPeriods,
};

use super::attach::{self, Attacher};
use super::btf::{self, BtfError, KernelBtf, LayoutFacts};
use super::compat::{self, CSD_UNTHROTTLE_FN, Family, PERIOD_TIMER_FN, UNTHROTTLE_FN};
use super::kallsyms::{KallsymsError, Symbols};
use super::logs::{self, KernelLog, LogError, LogLevel};
use super::privileges::{self, PrivilegeError};
use crate::model::probe::{Backend, Probe, ProbeStatus, Style};
use crate::model::records::LossRecord;

/// Which probe families to attach (`--probes`); every one by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSet {
    chosen: Vec<Probe>,
}

impl Default for ProbeSet {
    fn default() -> Self {
        Self {
            chosen: Probe::FAMILIES.to_vec(),
        }
    }
}

impl ProbeSet {
    /// `--probes LIST`: a counting probe without the period-timer frame counts nothing, so
    /// asking for one alone is an error rather than a silent empty figure.
    pub fn requested(list: &[Probe]) -> Result<Self, String> {
        if list.is_empty() {
            return Err("--probes needs at least one probe family".into());
        }
        if !list.contains(&Probe::PeriodTimer)
            && let Some(p) = list.iter().find(|p| p.needs_period_timer())
        {
            return Err(format!(
                "--probes {p}: it counts inside the period-timer callback; add period_timer"
            ));
        }
        let mut chosen: Vec<Probe> = Probe::FAMILIES
            .into_iter()
            .filter(|p| list.contains(p))
            .collect();
        chosen.dedup();
        Ok(Self { chosen })
    }

    pub fn has(&self, p: Probe) -> bool {
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
    NoFrame { backend: Backend, reasons: String },
    #[error("eBPF object is missing map {0} (build mismatch)")]
    Missing(&'static str),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[derive(Clone, Debug)]
pub struct TracerOptions {
    pub backend: Backend,
    pub btf: Option<PathBuf>,
    pub probes: ProbeSet,
    /// SCHED_FIFO priority of the reader (0: a normal task).
    pub rt_priority: u8,
    /// Ring-buffer bytes; None: [`ringbuf_bytes`] of the CPU count.
    pub ring_buffer: Option<u64>,
    /// Kernel-side messages kept (`--log-level`); off by default.
    pub log_level: LogLevel,
    /// Test knob: entries of a CSD's cfs_rq list walked (None: `tracer_ebpf::MAX_LISTED`).
    pub csd_walk_bound: Option<u32>,
    /// Name cgroups without their processes' command lines (`--no-cmdline`).
    pub no_cmdline: bool,
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
            log_level: LogLevel::Off,
            csd_walk_bound: None,
            no_cmdline: false,
        }
    }
}

/// Ring-buffer bytes per CPU: with the reader draining every 50 ms (the session's drain interval)
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
    pub probes: BTreeMap<Probe, ProbeStatus>,
    /// How the period-timer frame is timed (`None` when `--probes` left it out).
    pub frame_backend: Style,
    /// How the async-unthrottle CSD frame is timed; None where it is not traced.
    pub async_backend: Option<Style>,
    /// How timer-interrupt spans are timed; None where they are not traced.
    pub span_backend: Option<Style>,
    pub layout: LayoutFacts,
    /// HOW_* bits of the counting probes that are attached.
    pub attached_bits: u32,
    /// The ring buffer's size.
    pub ringbuf_bytes: u64,
    log_level: LogLevel,
}

impl Tracer {
    pub fn start(opts: &TracerOptions) -> Result<Tracer, ProbeError> {
        privileges::check()?;
        let btf_file = btf::btf_path(opts.btf.as_deref())?;
        // Read and parsed once for the offsets and the fentry checks.
        let kbtf = KernelBtf::read(&btf_file)?;
        let mut layout = kbtf.layout()?;
        let syms = Symbols::load(&compat::FUNCTIONS)?;
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
        let log_level = opts.log_level.kernel_value();
        let walk_bound = opts
            .csd_walk_bound
            .unwrap_or(tracer_ebpf::MAX_LISTED)
            .min(tracer_ebpf::MAX_LISTED);
        let mut loader = EbpfLoader::new();
        loader
            .btf(kernel_btf.as_ref())
            .override_global("LAYOUT", &layout.layout, true)
            .override_global("RING", &ring, true)
            .override_global("CSD_WALK_BOUND", &walk_bound, true)
            // aya-log-ebpf's default keeps every level: `off` must be written, not assumed.
            .override_global(aya_log::LEVEL, &log_level, true)
            .map_max_entries("EVENTS", ringbuf_bytes as u32);
        if opts.log_level == LogLevel::Off {
            // Nothing will write to it: one page instead of aya-log's 128 KiB.
            loader.map_max_entries(logs::MAP, page_size());
        }
        let mut ebpf = loader
            .load(crate::EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(attach::message(&e)))?;

        let mut t = Attacher {
            ebpf: &mut ebpf,
            btf: kernel_btf.as_ref(),
            kbtf: &kbtf,
            syms: &syms,
        };
        let mut run = Run {
            set: &opts.probes,
            backend: opts.backend,
            probes: BTreeMap::new(),
            bits: 0,
        };
        let frame = run.family(&mut t, &compat::PERIOD_TIMER);
        if opts.probes.has(Probe::PeriodTimer) && frame.is_none() {
            let reasons = run.probes[&Probe::PeriodTimer].reason.clone();
            return Err(ProbeError::NoFrame {
                backend: opts.backend,
                reasons: reasons.unwrap_or_default(),
            });
        }
        let span_backend = run.family(&mut t, &compat::IRQ_SPAN);
        if opts.backend == Backend::Fentry && opts.probes.has(Probe::IrqSpan) {
            run.note(
                Probe::IrqSpan,
                format!(
                    "--backend fentry: no BPF trampoline on {} (the timer interrupt), timed \
                     with the local_timer tracepoints instead",
                    compat::HRTIMER_INTERRUPT_FN
                ),
            );
        }
        if span_backend.is_none() && opts.probes.has(Probe::IrqSpan) {
            run.note(
                Probe::IrqSpan,
                "headroom falls back to the worst single callback".into(),
            );
        }
        run.family(&mut t, &compat::DISTRIBUTE);
        run.family(&mut t, &compat::UNTHROTTLE);
        run.enqueue(&mut t, &syms);
        run.family(&mut t, &compat::RUNNABLE);
        let async_backend = run.async_unthrottle(&mut t, &syms, &layout);
        let (probes, bits) = (run.probes, run.bits);

        let mut attached: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut("ATTACHED")
                .ok_or(ProbeError::Missing("ATTACHED"))?,
        )
        .map_err(map_error("ATTACHED"))?;
        // Last: arming lets frames open, now that every exit is live and the bits are final.
        attached
            .set(ATTACHED_SLOT, bits | ATTACHED_ARMED, 0)
            .map_err(map_error("ATTACHED"))?;

        Ok(Tracer {
            ebpf,
            probes,
            frame_backend: frame.unwrap_or(Style::None),
            async_backend,
            span_backend,
            layout,
            attached_bits: bits,
            ringbuf_bytes,
            log_level: opts.log_level,
        })
    }

    /// The programs' log messages at `--log-level` (None when it is off). Can be taken once.
    pub fn take_logger(&mut self) -> Result<Option<KernelLog>, ProbeError> {
        Ok(KernelLog::start(&mut self.ebpf, self.log_level)?)
    }

    /// The map `name` as its typed view.
    fn map<'a, M>(&'a self, name: &'static str) -> Result<M, ProbeError>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(ProbeError::Missing(name))?;
        M::try_from(map).map_err(map_error(name))
    }

    /// Every cgroup's callbacks whose events were lost, as the kernel summed them (cumulative).
    pub fn unsent_periods(&self) -> Result<Vec<(u64, UnsentPeriods)>, ProbeError> {
        let m: BpfHashMap<&MapData, u64, UnsentPeriods> = self.map("UNSENT_PERIODS")?;
        // An entry added or removed during the walk is skipped, never an error.
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// Every CPU's in-kernel timer-interrupt totals (cumulative since attach), by CPU.
    pub fn span_totals(&self) -> Result<Vec<SpanTotals>, ProbeError> {
        let arr: PerCpuArray<&MapData, Frames> = self.map("FRAME")?;
        let v = arr.get(&0, 0).map_err(map_error("FRAME"))?;
        Ok(v.iter().map(|f| f.span.totals).collect())
    }

    /// Stop opening frames: the programs stay attached, but no new callback, CSD or span
    /// with period timers in it is counted or sent from now on. The end of a recording
    /// disarms first, so the kernel's counters and the ring buffer read after it tell the same
    /// story (see [`Tracer::settled`]).
    pub fn disarm(&mut self) -> Result<(), ProbeError> {
        let mut attached: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut("ATTACHED")
                .ok_or(ProbeError::Missing("ATTACHED"))?,
        )
        .map_err(map_error("ATTACHED"))?;
        attached
            .set(ATTACHED_SLOT, self.attached_bits, 0)
            .map_err(map_error("ATTACHED"))
    }

    /// After [`Tracer::disarm`]: true once no CPU is inside a callback or CSD it opened, nor
    /// in a timer interrupt that ran one (whose span is still to be summed and sent).
    pub fn settled(&self) -> Result<bool, ProbeError> {
        let arr: PerCpuArray<&MapData, Frames> = self.map("FRAME")?;
        let v = arr.get(&0, 0).map_err(map_error("FRAME"))?;
        Ok(v.iter().all(|f| {
            f.open & (OPEN_PERIOD | OPEN_CSD) == 0
                && (f.open & OPEN_SPAN == 0 || f.span.timers == 0)
        }))
    }

    /// The ring buffer of period events (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(map_error("EVENTS"))
    }

    /// Kernel-side loss counters summed over CPUs.
    pub fn losses(&self, ts_ns: u64) -> Result<LossRecord, ProbeError> {
        let arr: PerCpuArray<&MapData, u64> = self.map("LOSS")?;
        let sum = |slot: u32| -> Result<u64, ProbeError> {
            let v = arr.get(&slot, 0).map_err(map_error("LOSS"))?;
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

impl Drop for Tracer {
    /// Disarm before the programs detach (in no set order): a half-detached entry/exit pair
    /// then neither counts losses nor logs reopened frames and unmatched exits.
    fn drop(&mut self) {
        if let Some(m) = self.ebpf.map_mut("ATTACHED")
            && let Ok(mut a) = Array::<&mut MapData, u32>::try_from(m)
        {
            let _ = a.set(ATTACHED_SLOT, 0, 0);
        }
    }
}

/// The smallest ring buffer the kernel takes: one page.
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// One attach run: the families in order, their statuses and the counting bits so far.
struct Run<'s> {
    set: &'s ProbeSet,
    backend: Backend,
    probes: BTreeMap<Probe, ProbeStatus>,
    bits: u32,
}

impl Run<'_> {
    /// Walk one family (or mark it left out by request); its style when it attached.
    fn family(&mut self, t: &mut Attacher<'_>, family: &Family) -> Option<Style> {
        self.with_status(t, family, |_| {})
    }

    fn with_status(
        &mut self,
        t: &mut Attacher<'_>,
        family: &Family,
        adjust: impl FnOnce(&mut ProbeStatus),
    ) -> Option<Style> {
        if !self.set.has(family.probe) {
            self.probes
                .insert(family.probe, ProbeStatus::not_attached(self.set.left_out()));
            return None;
        }
        let mut out = t.attach(family, self.backend);
        adjust(&mut out.status);
        let style = out.way.map(|w| w.style);
        if style.is_some() {
            self.bits |= family.bits;
        }
        self.probes.insert(family.probe, out.status);
        style
    }

    /// Add a note to a probe's reason.
    fn note(&mut self, probe: Probe, note: String) {
        if let Some(st) = self.probes.get_mut(&probe) {
            st.reason = Some(match st.reason.take() {
                Some(r) => format!("{note}; {r}"),
                None => note,
            });
        }
    }

    /// `enqueue_entity` where it is a symbol; where it is inlined (6.18+ task-based throttle),
    /// `enqueue_task_fair`, which the unthrottle calls per task inside the frame.
    fn enqueue(&mut self, t: &mut Attacher<'_>, syms: &Symbols) {
        if syms.symbol(compat::ENQUEUE_ENTITY_FN).is_some() {
            self.family(t, &compat::ENQUEUE_ENTITY);
            return;
        }
        self.with_status(t, &compat::ENQUEUE_TASK_FAIR, |st| {
            let note = if st.attached {
                format!(
                    "{} is inlined in this kernel; counting {} inside the period-timer callback",
                    compat::ENQUEUE_ENTITY_FN,
                    compat::ENQUEUE_TASK_FAIR_FN
                )
            } else {
                format!(
                    "{} is inlined in this kernel; {}",
                    compat::ENQUEUE_ENTITY_FN,
                    compat::ENQUEUE_TASK_FAIR_FN
                )
            };
            st.reason = Some(match st.reason.take() {
                Some(r) => format!("{note}: {r}"),
                None => note,
            });
        });
    }

    /// The async-unthrottle CSD frame. Never fatal: a kernel without it (pre-6.3) unthrottles
    /// everything inside the period timer, which the period frame already measures.
    fn async_unthrottle(
        &mut self,
        t: &mut Attacher<'_>,
        syms: &Symbols,
        layout: &LayoutFacts,
    ) -> Option<Style> {
        let probe = Probe::AsyncUnthrottle;
        if self.set.has(probe) && syms.symbol(CSD_UNTHROTTLE_FN).is_none() {
            self.probes.insert(
                probe,
                ProbeStatus::not_attached(format!(
                    "{CSD_UNTHROTTLE_FN} is not in /proc/kallsyms: this kernel unthrottles remote \
                     cfs_rqs inside the period timer (pre-6.3), which the period_timer probe measures"
                )),
            );
            return None;
        }
        // With `unthrottle_cfs_rq` probed the kernel side cuts each CSD into per-cgroup
        // segments; without, it lists the CSD's cfs_rqs.
        let probed = self.bits & HOW_UNTHROTTLE != 0;
        let style = self.family(t, &compat::ASYNC_UNTHROTTLE)?;
        if let Some(n) = async_attribution_note(style, probed, &layout.layout) {
            let st = self.probes.get_mut(&probe)?;
            st.reason = Some(match st.reason.take() {
                Some(r) => format!("{r}; {n}"),
                None => n,
            });
        }
        Some(style)
    }
}

/// How the async events name their cgroups on this run, when it is not the full story
/// (per-cgroup segments from a probe on `unthrottle_cfs_rq`).
fn async_attribution_note(
    style: Style,
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
    if style == Style::Tracepoint {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sets() {
        let all = ProbeSet::default();
        assert!(Probe::FAMILIES.iter().all(|&p| all.has(p)));
        assert!(!all.has(Probe::Kmsg), "not a BPF family");
        let min = ProbeSet::requested(&[Probe::IrqSpan, Probe::PeriodTimer]).unwrap();
        assert!(min.has(Probe::PeriodTimer) && min.has(Probe::IrqSpan));
        assert!(!min.has(Probe::Unthrottle));
        assert_eq!(
            min.left_out(),
            "left out by request (--probes period_timer,irq_span)"
        );
        // The P2 baseline: the span alone.
        assert!(ProbeSet::requested(&[Probe::IrqSpan]).is_ok());
        // A counter without the frame it counts in is refused, not silently empty.
        let e = ProbeSet::requested(&[Probe::IrqSpan, Probe::Enqueue]).unwrap_err();
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
