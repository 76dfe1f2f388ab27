//! What a kernel offers, read without cfstrace: the functions and raw tracepoints the probes
//! need (kallsyms, `available_filter_functions`), the kprobe PMU, BTF and BPF trampolines. Every
//! expectation of the oracle starts from these [`Facts`]; none of it is taken from the tracer.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// `period_timer`: the CFS period timer's hrtimer callback, the IRQs-off time under judgement.
pub const PERIOD_TIMER_FN: &str = "sched_cfs_period_timer";
/// `distribute`: hands the new period's runtime out (its passes are the callback's loops).
pub const DISTRIBUTE_FN: &str = "distribute_cfs_runtime";
/// `unthrottle`: one throttled cfs_rq put back.
pub const UNTHROTTLE_FN: &str = "unthrottle_cfs_rq";
/// `enqueue` while the kernel has it as a symbol (inlined with 6.18's task-based throttle).
pub const ENQUEUE_ENTITY_FN: &str = "enqueue_entity";
/// `enqueue` where `enqueue_entity` is inlined.
pub const ENQUEUE_TASK_FAIR_FN: &str = "enqueue_task_fair";
/// `async_unthrottle`: the CSD that unthrottles a remote CPU's cfs_rqs (6.3+).
pub const CSD_UNTHROTTLE_FN: &str = "__cfsb_csd_unthrottle";
/// `irq_span`: the timer interrupt's handler (the probe's kprobe target).
pub const HRTIMER_INTERRUPT_FN: &str = "hrtimer_interrupt";

/// (probe, kernel function): the functions whose presence decides the probes, the oracle's own
/// reading of the kernel source. `enqueue` has two, the first where the kernel has it
/// ([`Facts::enqueue_fn`]); `runnable` has none (a raw tracepoint, [`NR_RUNNING_TP`]).
pub const PROBE_FUNCTIONS: [(&str, &str); 7] = [
    ("period_timer", PERIOD_TIMER_FN),
    ("irq_span", HRTIMER_INTERRUPT_FN),
    ("distribute", DISTRIBUTE_FN),
    ("unthrottle", UNTHROTTLE_FN),
    ("enqueue", ENQUEUE_ENTITY_FN),
    ("enqueue", ENQUEUE_TASK_FAIR_FN),
    ("async_unthrottle", CSD_UNTHROTTLE_FN),
];

/// The functions of [`PROBE_FUNCTIONS`], looked up in kallsyms and ftrace.
pub const FUNCTIONS: [&str; PROBE_FUNCTIONS.len()] = {
    let mut names = [""; PROBE_FUNCTIONS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = PROBE_FUNCTIONS[i].1;
        i += 1;
    }
    names
};

/// Raw tracepoints cfstrace can use (present when kallsyms has `__traceiter_<name>`, 5.10+, or
/// `__bpf_trace_<name>`; events of a class have only the class's `__bpf_trace_`).
pub const HRTIMER_TP: &str = "hrtimer_expire_entry";
pub const NR_RUNNING_TP: &str = "sched_update_nr_running_tp";
pub const CSD_TP: &str = "csd_function_entry";
/// x86 `irq_vectors` tracepoint at the start of the local APIC timer interrupt (its class is
/// `x86_irq_vector`, so only `__traceiter_local_timer_entry` names it).
pub const LOCAL_TIMER_TP: &str = "local_timer_entry";
pub const RAW_TPS: [&str; 4] = [HRTIMER_TP, NR_RUNNING_TP, CSD_TP, LOCAL_TIMER_TP];
/// Kernel functions BPF trampolines (fentry/fexit) attach through.
pub const DIRECT_CALL_FNS: [&str; 2] = ["register_ftrace_direct", "register_ftrace_direct_multi"];

/// Facts about a kernel, gathered without cfstrace, kept as the `key=yes` pairs that cross the
/// guest console (the VM's /init prints them, [`Facts::from_map`] reads them);
/// [`Facts::host`] reads the same keys from this machine.
///
/// | key | present when | read from |
/// | --- | --- | --- |
/// | `btf` | the kernel has BTF | /sys/kernel/btf/vmlinux |
/// | `kprobe_pmu` | kprobes can attach (what cfstrace's go through) | /sys/bus/event_source/devices/kprobe |
/// | `direct_calls` | BPF trampolines exist | kallsyms has one of [`DIRECT_CALL_FNS`] |
/// | `symbol.<fn>` | a function of [`FUNCTIONS`] exists | /proc/kallsyms |
/// | `ftrace.<fn>` | it is fentry-able | tracing/available_filter_functions |
/// | `raw_tp.<tp>` | a raw tracepoint of [`RAW_TPS`] exists | kallsyms `__traceiter_<tp>`, `__bpf_trace_<tp>` |
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub release: String,
    pub ncpus: u32,
    /// The keys above that hold here.
    pub present: BTreeSet<String>,
}

impl Facts {
    /// From `key=value` facts (the guest's `@@CFSTRACE-FACT key=value@@` lines).
    pub fn from_map(m: &BTreeMap<String, String>) -> Facts {
        Facts {
            release: m.get("release").cloned().unwrap_or_default(),
            ncpus: m.get("ncpus").and_then(|n| n.parse().ok()).unwrap_or(0),
            present: m
                .iter()
                .filter(|(_, v)| *v == "yes")
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// This machine's facts. Names are enough, so no root is needed for kallsyms.
    pub fn host() -> Facts {
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let names: BTreeSet<&str> = kallsyms
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        let filter = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|d| fs::read_to_string(Path::new(d).join("available_filter_functions")).ok())
            .unwrap_or_default();
        let ftrace_names: BTreeSet<&str> = filter
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut f = Facts {
            release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            ncpus: fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count() as u32,
            present: BTreeSet::new(),
        };
        f.set("btf", Path::new("/sys/kernel/btf/vmlinux").exists());
        let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
        f.set("kprobe_pmu", pmu);
        let direct = DIRECT_CALL_FNS.iter().any(|d| names.contains(d));
        f.set("direct_calls", direct);
        for func in FUNCTIONS {
            f.set(&format!("symbol.{func}"), names.contains(func));
            f.set(&format!("ftrace.{func}"), ftrace_names.contains(func));
        }
        for tp in RAW_TPS {
            // A raw tracepoint's own iterator (5.10+), or its class's BPF entry.
            let has = ["__traceiter_", "__bpf_trace_"]
                .iter()
                .any(|p| names.contains(format!("{p}{tp}").as_str()));
            f.set(&format!("raw_tp.{tp}"), has);
        }
        f
    }

    /// Whether the fact `key` (a key of the table above) holds.
    pub fn has(&self, key: &str) -> bool {
        self.present.contains(key)
    }

    /// Make the fact `key` hold or not.
    pub fn set(&mut self, key: &str, holds: bool) {
        if holds {
            self.present.insert(key.to_string());
        } else {
            self.present.remove(key);
        }
    }

    /// The kernel has the function `func` (kallsyms).
    pub fn symbol(&self, func: &str) -> bool {
        self.has(&format!("symbol.{func}"))
    }

    /// fentry can attach to `func` (available_filter_functions).
    pub fn ftrace(&self, func: &str) -> bool {
        self.has(&format!("ftrace.{func}"))
    }

    /// The kernel has the raw tracepoint `tp`.
    pub fn raw_tp(&self, tp: &str) -> bool {
        self.has(&format!("raw_tp.{tp}"))
    }

    /// (major, minor) of the release, e.g. (6, 12) for `6.12.117+deb13-cloud-amd64`.
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut it = self.release.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// Whether the kernel gives each cgroup's period timer a random phase (upstream
    /// 41abdba93747, 6.4: "sched: Interleave cfs bandwidth timers ..."; `init_cfs_bandwidth`
    /// sets the timer's first expiry to a random time below the period). Before it the first
    /// expiry is 0, and `hrtimer_forward_now` keeps every timer of one period on the same
    /// multiples of it: timers of the same period expire together.
    pub fn interleaved_period_timers(&self) -> bool {
        self.version().is_some_and(|v| v >= (6, 4))
    }

    /// The function the `enqueue` probe counts on this kernel.
    pub fn enqueue_fn(&self) -> &'static str {
        if self.symbol(ENQUEUE_ENTITY_FN) {
            ENQUEUE_ENTITY_FN
        } else {
            ENQUEUE_TASK_FAIR_FN
        }
    }

    /// Whether `style` can attach to `func` here, or why not.
    pub(super) fn possible(&self, style: &str, func: &str) -> Result<(), String> {
        match style {
            "fentry" => {
                if !self.has("btf") {
                    Err("no kernel BTF".into())
                } else if !self.has("direct_calls") {
                    Err("no BPF trampolines (no register_ftrace_direct)".into())
                } else if !self.ftrace(func) {
                    Err(format!("{func} is not in available_filter_functions"))
                } else {
                    Ok(())
                }
            }
            "kprobe" => {
                if !self.has("kprobe_pmu") {
                    Err("no kprobe PMU (CONFIG_KPROBES off)".into())
                } else if !self.symbol(func) {
                    Err(format!("{func} is not in kallsyms"))
                } else {
                    Ok(())
                }
            }
            // The timer-interrupt span: the x86 local_timer tracepoints bracket the whole
            // interrupt, no function filter.
            "tracepoint" if func == HRTIMER_INTERRUPT_FN => {
                if self.raw_tp(LOCAL_TIMER_TP) {
                    Ok(())
                } else {
                    Err(format!(
                        "no raw tracepoint {LOCAL_TIMER_TP} (x86 irq_vectors)"
                    ))
                }
            }
            // The period timer's and the CSD's tracepoint frames filter on the function's address.
            "tracepoint" => {
                let tp = if func == CSD_UNTHROTTLE_FN {
                    CSD_TP
                } else {
                    HRTIMER_TP
                };
                if !self.raw_tp(tp) {
                    Err(format!("no raw tracepoint {tp}"))
                } else if !self.symbol(func) {
                    Err(format!("{func} is not in kallsyms"))
                } else {
                    Ok(())
                }
            }
            "raw_tp" => {
                if self.raw_tp(func) {
                    Ok(())
                } else {
                    Err(format!("no raw tracepoint {func}"))
                }
            }
            other => Err(format!("unknown style {other}")),
        }
    }
}
