//! What each probe family can attach to, in which styles, and what each way needs: a table the
//! one attach ladder ([`super::attach`]) walks. Nothing here runs; it says what to try, in
//! which order for a backend, and how the report names it (kunai's compat table is the model).
use tracer_ebpf::{
    HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_RUNNABLE, HOW_UNTHROTTLE,
};

use crate::model::probe::{Backend, Probe, Style};

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

/// Every kernel function the table names, for one pass over kallsyms.
pub const FUNCTIONS: [&str; 7] = [
    PERIOD_TIMER_FN,
    DISTRIBUTE_FN,
    UNTHROTTLE_FN,
    ENQUEUE_ENTITY_FN,
    ENQUEUE_TASK_FAIR_FN,
    CSD_UNTHROTTLE_FN,
    HRTIMER_INTERRUPT_FN,
];

/// Where one program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// kprobe or kretprobe (the program's section says which) on a function, attached to its
    /// symbol in kallsyms (which may carry a `.isra.0`-style suffix).
    Kprobe(&'static str),
    Fentry(&'static str),
    Fexit(&'static str),
    RawTp(&'static str),
    /// A BTF-typed raw tracepoint: its pointer arguments can be read directly.
    BtfTp(&'static str),
}

/// One way to attach a family: its programs, exit first (an exit goes live before its entry,
/// so no frame opens that cannot close; a lone counter has one program).
#[derive(Clone, Copy, Debug)]
pub struct Way {
    pub style: Style,
    pub programs: &'static [(&'static str, Hook)],
    /// How the report names where it sits (the function, or the tracepoints and their filter).
    pub target: &'static str,
}

/// A probe family: the ways to attach it, best first within each style.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub probe: Probe,
    pub ways: &'static [Way],
    /// The kernel function it stands for, which must be a symbol (None: tracepoints only).
    pub function: Option<&'static str>,
    /// `HOW_*` bits the events carry when it is attached (the counting probes).
    pub bits: u32,
}

impl Family {
    /// The styles to try for `backend`, in order.
    pub fn order(&self, backend: Backend) -> &'static [Style] {
        use Style::{Fentry, Kprobe, RawTp, Tracepoint};
        match (self.probe, backend) {
            (Probe::Runnable, _) => &[RawTp],
            // The timer interrupt: the local_timer tracepoints first, also under auto (the
            // cheapest hook, the whole interrupt, and no live patching of the hottest path's
            // ftrace site on every later attach or detach, which hung Debian 6.1 guests under
            // multi-threaded TCG); kprobe where they are missing; never a BPF trampoline.
            (Probe::IrqSpan, Backend::Auto) => &[Tracepoint, Kprobe],
            (Probe::IrqSpan, Backend::Kprobe) => &[Kprobe],
            (Probe::IrqSpan, _) => &[Tracepoint],
            (_, Backend::Auto) => &[Fentry, Kprobe, Tracepoint],
            (_, Backend::Fentry) => &[Fentry],
            (_, Backend::Kprobe) => &[Kprobe],
            (_, Backend::Tracepoint) => &[Tracepoint],
        }
    }

    pub fn ways_of(&self, style: Style) -> impl Iterator<Item = &'static Way> + '_ {
        self.ways.iter().filter(move |w| w.style == style)
    }
}

/// One way: a style, what the report calls its target, and its programs (name, hook), exit
/// first.
macro_rules! way {
    // A frame on a function: fexit/fentry or kretprobe/kprobe.
    (fentry $func:expr, $exit:expr, $entry:expr) => {
        way!(Fentry, $func, ($exit, Hook::Fexit($func)), ($entry, Hook::Fentry($func)))
    };
    (kprobe $func:expr, $exit:expr, $entry:expr) => {
        way!(Kprobe, $func, ($exit, Hook::Kprobe($func)), ($entry, Hook::Kprobe($func)))
    };
    ($style:ident, $target:expr, $(($name:expr, $hook:expr)),+ $(,)?) => {
        Way {
            style: Style::$style,
            programs: &[$(($name, $hook)),+],
            target: $target,
        }
    };
}

/// A counting probe: one program, by fentry or kprobe, on `func`.
macro_rules! counter {
    ($probe:expr, $func:expr, $fentry:literal, $kprobe:literal, $bits:expr) => {
        Family {
            probe: $probe,
            ways: &[
                way!(Fentry, $func, ($fentry, Hook::Fentry($func))),
                way!(Kprobe, $func, ($kprobe, Hook::Kprobe($func))),
            ],
            function: Some($func),
            bits: $bits,
        }
    };
}

/// A family timed as a frame on `func`: fexit/fentry, kretprobe/kprobe (programs
/// `<prefix>_fexit`, ...), then its tracepoint ways.
macro_rules! frame_family {
    ($probe:expr, $func:expr, $prefix:literal, $($tracepoint:expr),+ $(,)?) => {
        Family {
            probe: $probe,
            ways: &[
                way!(fentry $func, concat!($prefix, "_fexit"), concat!($prefix, "_fentry")),
                way!(kprobe $func, concat!($prefix, "_kretprobe"), concat!($prefix, "_kprobe")),
                $($tracepoint),+
            ],
            function: Some($func),
            bits: 0,
        }
    };
}

pub const PERIOD_TIMER: Family = frame_family!(
    Probe::PeriodTimer,
    PERIOD_TIMER_FN,
    "period_timer",
    // The entry as a BTF tracepoint where the kernel offers one (a direct load of
    // `timer->function` on every hrtimer), else a raw tracepoint.
    way!(
        Tracepoint,
        "hrtimer_expire_entry/exit (tp_btf/raw_tp) filtered on sched_cfs_period_timer",
        ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit")),
        (
            "hrtimer_expire_entry_btf",
            Hook::BtfTp("hrtimer_expire_entry")
        ),
    ),
    way!(
        Tracepoint,
        "hrtimer_expire_entry/exit (raw_tp/raw_tp) filtered on sched_cfs_period_timer",
        ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit")),
        ("hrtimer_expire_entry", Hook::RawTp("hrtimer_expire_entry")),
    ),
);

pub const IRQ_SPAN: Family = Family {
    probe: Probe::IrqSpan,
    ways: &[
        way!(
            Tracepoint,
            "local_timer_entry/exit (raw_tp, irq_vectors): the whole local APIC timer interrupt",
            ("local_timer_exit", Hook::RawTp(LOCAL_TIMER_EXIT_TP)),
            ("local_timer_entry", Hook::RawTp(LOCAL_TIMER_ENTRY_TP)),
        ),
        way!(kprobe HRTIMER_INTERRUPT_FN, "irq_span_kretprobe", "irq_span_kprobe"),
    ],
    function: None,
    bits: 0,
};

pub const DISTRIBUTE: Family = counter!(
    Probe::Distribute,
    DISTRIBUTE_FN,
    "distribute_fentry",
    "distribute_kprobe",
    HOW_LOOPS
);

pub const UNTHROTTLE: Family = counter!(
    Probe::Unthrottle,
    UNTHROTTLE_FN,
    "unthrottle_fentry",
    "unthrottle_kprobe",
    HOW_UNTHROTTLE
);

/// `enqueue_entity`, where it is a symbol.
pub const ENQUEUE_ENTITY: Family = counter!(
    Probe::Enqueue,
    ENQUEUE_ENTITY_FN,
    "enqueue_fentry",
    "enqueue_kprobe",
    HOW_ENQUEUE_ENTITY
);

/// Where `enqueue_entity` is inlined (6.18+ task-based throttle): `enqueue_task_fair`, which
/// the unthrottle calls per task inside the frame. The same programs, another target.
pub const ENQUEUE_TASK_FAIR: Family = counter!(
    Probe::Enqueue,
    ENQUEUE_TASK_FAIR_FN,
    "enqueue_fentry",
    "enqueue_kprobe",
    HOW_ENQUEUE_TASK_FAIR
);

pub const RUNNABLE: Family = Family {
    probe: Probe::Runnable,
    ways: &[way!(
        RawTp,
        NR_RUNNING_TP,
        ("nr_running", Hook::RawTp(NR_RUNNING_TP))
    )],
    function: None,
    bits: HOW_RUNNABLE,
};

pub const ASYNC_UNTHROTTLE: Family = frame_family!(
    Probe::AsyncUnthrottle,
    CSD_UNTHROTTLE_FN,
    "csd_unthrottle",
    way!(
        Tracepoint,
        "csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle",
        ("csd_function_exit", Hook::RawTp(CSD_EXIT_TP)),
        ("csd_function_entry", Hook::RawTp(CSD_ENTRY_TP)),
    ),
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program the table names is in the embedded object, in the section its hook needs
    /// (a typo in the table would otherwise surface only as a kernel that "refused" it).
    #[test]
    fn every_program_in_the_table_is_in_the_object() {
        let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("embedded object");
        let families = [
            PERIOD_TIMER,
            IRQ_SPAN,
            DISTRIBUTE,
            UNTHROTTLE,
            ENQUEUE_ENTITY,
            ENQUEUE_TASK_FAIR,
            RUNNABLE,
            ASYNC_UNTHROTTLE,
        ];
        let mut seen = 0;
        for way in families.iter().flat_map(|f| f.ways) {
            for (name, hook) in way.programs {
                let prog = obj
                    .programs
                    .get(*name)
                    .unwrap_or_else(|| panic!("{name} is not in the eBPF object"));
                let section = format!("{:?}", prog.section);
                let want: &[&str] = match hook {
                    Hook::Kprobe(_) => &["KProbe", "KRetProbe"],
                    Hook::Fentry(_) => &["FEntry"],
                    Hook::Fexit(_) => &["FExit"],
                    Hook::RawTp(_) => &["RawTracePoint"],
                    Hook::BtfTp(_) => &["BtfTracePoint"],
                };
                assert!(
                    want.iter().any(|w| section.starts_with(w)),
                    "{name}: {section}, want {want:?}"
                );
                seen += 1;
            }
        }
        assert!(seen >= 20, "{seen} programs");
    }
}
